//! Table-driven fixtures for `esp_ingress` and `tenant_ingress` through BPF_PROG_TEST_RUN.
//! Root only. Each table loads its own instance (unique pin directory, removed afterwards)
//! and binds real AF_XDP sockets on a veth in a namespace of its own, so XSKMAP redirects can
//! succeed or, with the socket removed, fail.

use std::net::IpAddr;

use anyhow::Result;
use vpn_common::{
    Counter, DropReason, Outcome, ReplayWindow, XdpMeta,
    maps::{
        IfaceConfig, NO_TENANT, PEER_F_AFXDP, PEER_F_KERNEL, POLICY_BYPASS, POLICY_DISCARD,
        POLICY_KERNEL, POLICY_PROTECT, PeerKey, PolicyValue, SA_F_KERNEL, SaIn, VtepPair,
        WIRE_F_UNKNOWN_SPI_PASS, WireConfig, programs,
    },
    meta::{
        META_F_FROM_VLAN, META_F_FROM_VXLAN, META_F_IPV6, META_F_UDP_ENCAP, META_KIND_ARP,
        META_KIND_ESP_IN, META_KIND_FRAGMENT, META_KIND_OUTBOUND, META_MAGIC, NO_SLOT,
    },
};
use vpn_tests::{
    fixture::{Expect, Fixture, meta_area_len, run_table, with_carrier},
    netns::{NetNs, require_root, unique},
    pkt::{IPPROTO_TCP, IPV6_FRAGMENT, IPV6_HOPOPTS, Packet},
};
use vpn_userspace::dataplane::{
    Carrier, CarrierChoice, Dataplane, LoadOptions, Side, xsk::XskSocket,
};

const SPI_A: u32 = 0x0000_1000; // slot 1, tenant 7, window 64
const SPI_ESN: u32 = 0x0000_2000; // slot 2, ESN, window 128
const SPI_SMALL: u32 = 0x0000_3000; // slot 3, window 32
const SPI_KERNEL: u32 = 0x0000_4000; // slot 4, tenant 7, kernel backend (SA_F_KERNEL)

fn load(prefix: &str, carrier: Carrier) -> Result<Dataplane> {
    let mut o = LoadOptions::new(unique(prefix));
    o.sa_slots = 1024;
    o.sa_in_entries = 1024;
    o.carrier = CarrierChoice::Forced(carrier);
    let dp = Dataplane::load(&o)?;
    assert_eq!(dp.carrier().carrier, carrier);
    Ok(dp)
}

/// A namespace with a veth pair and an AF_XDP socket bound on `x0` queue 0.
fn xsk_env() -> Result<(NetNs, XskSocket)> {
    let ns = NetNs::new("vpnfix")?;
    ns.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"])?;
    ns.ip(&["link", "set", "x0", "up"])?;
    ns.ip(&["link", "set", "x1", "up"])?;
    let _in = ns.enter()?;
    let sock = XskSocket::bind("x0", 0, 256)?;
    Ok((ns, sock))
}

fn esp_meta(flags: u8, slot: u32, tenant: u32, l3_off: u16, esp_off: u16) -> XdpMeta {
    XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_ESP_IN,
        flags,
        slot,
        tenant,
        l3_off,
        esp_off,
    }
}

fn frag_meta(flags: u8, l3_off: u16) -> XdpMeta {
    XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_FRAGMENT,
        flags,
        slot: NO_SLOT,
        tenant: 0,
        l3_off,
        esp_off: 0,
    }
}

fn redirect(meta: XdpMeta, frame: &[u8]) -> Expect {
    Expect::Redirect {
        meta,
        frame: frame.to_vec(),
    }
}

fn drop_(r: DropReason) -> Counter {
    Counter::Drop(r)
}

fn out(o: Outcome) -> Counter {
    Counter::Outcome(o)
}

const V4_PEER: &str = "192.0.2.1";
const V4_US: &str = "192.0.2.2";
const V6_PEER: &str = "2001:db8::1";
const V6_US: &str = "2001:db8::2";
/// Peers with only kernel-backend SAs (`PEER_F_KERNEL`), and one with SAs of both backends.
const V4_KERNEL_PEER: &str = "198.51.100.1";
const V6_KERNEL_PEER: &str = "2001:db8::11";
const V4_BOTH_PEER: &str = "198.51.100.2";

/// An IPv4 packet from `src` with the MF bit set (a first fragment) carrying ESP.
fn esp_v4_fragment_from(src: &str, seq: u32) -> Vec<u8> {
    Packet::eth()
        .ipv4_with(src, V4_US, |h| h.frag = 0x2000)
        .esp(SPI_A, seq)
        .payload_len(48)
        .build()
}

/// A later IPv4 fragment (offset 185 * 8) of a UDP datagram from `src`.
fn udp_v4_later_fragment_from(src: &str) -> Vec<u8> {
    Packet::eth()
        .ipv4_with(src, V4_US, |h| {
            h.frag = 185;
            h.proto = Some(17)
        })
        .payload_len(64)
        .build()
}

fn esp_v4(spi: u32, seq: u32) -> Vec<u8> {
    Packet::eth()
        .ipv4(V4_PEER, V4_US)
        .esp(spi, seq)
        .payload_len(48)
        .build()
}

#[test]
fn esp_ingress_fixtures_adjust_meta() -> Result<()> {
    require_root();
    with_carrier(Carrier::Meta, esp_ingress_fixtures)
}

#[test]
fn esp_ingress_fixtures_shim() -> Result<()> {
    require_root();
    with_carrier(Carrier::Shim, esp_ingress_fixtures)
}

fn esp_ingress_fixtures(carrier: Carrier) -> Result<()> {
    let (_ns, sock) = xsk_env()?;
    let mut dp = load("vpnfix-wire", carrier)?;
    dp.set_wire_xsk(0, sock.fd())?;
    let min = SaIn::min_esp_len_for(8, 16);
    dp.add_sa_in(
        SPI_A,
        SaIn {
            slot: 1,
            tenant: 7,
            flags: 0,
            min_esp_len: min,
            _pad: 0,
        },
        ReplayWindow::new(64, false),
    )?;
    dp.add_sa_in(
        SPI_ESN,
        SaIn {
            slot: 2,
            tenant: 8,
            flags: 0,
            min_esp_len: min,
            _pad: 0,
        },
        ReplayWindow::new(128, true),
    )?;
    dp.add_sa_in(
        SPI_SMALL,
        SaIn {
            slot: 3,
            tenant: 7,
            flags: 0,
            min_esp_len: min,
            _pad: 0,
        },
        ReplayWindow::new(32, false),
    )?;
    dp.add_sa_in(
        SPI_KERNEL,
        SaIn {
            slot: 4,
            tenant: 7,
            flags: SA_F_KERNEL,
            min_esp_len: min,
            _pad: 0,
        },
        ReplayWindow::new(64, false),
    )?;
    dp.add_peer(PeerKey::v4([192, 0, 2, 1]))?;
    dp.set_peer_flags(PeerKey::v4([198, 51, 100, 1]), PEER_F_KERNEL)?;
    dp.set_peer_flags(
        PeerKey::v6(V6_KERNEL_PEER.parse::<std::net::Ipv6Addr>()?.octets()),
        PEER_F_KERNEL,
    )?;
    dp.set_peer_flags(PeerKey::v4([198, 51, 100, 2]), PEER_F_AFXDP | PEER_F_KERNEL)?;

    let v4 = esp_v4(SPI_A, 1);
    let v6 = Packet::eth()
        .ipv6(V6_PEER, V6_US)
        .esp(SPI_A, 2)
        .payload_len(48)
        .build();
    let udp4 = Packet::eth()
        .ipv4(V4_PEER, V4_US)
        .udp(4500, 4500)
        .esp(SPI_A, 3)
        .payload_len(48)
        .build();
    let udp6 = Packet::eth()
        .ipv6(V6_PEER, V6_US)
        .udp(4500, 4500)
        .esp(SPI_A, 4)
        .payload_len(48)
        .build();
    let vlan = Packet::eth()
        .vlan(42)
        .ipv4(V4_PEER, V4_US)
        .esp(SPI_A, 5)
        .payload_len(48)
        .build();
    let qinq = Packet::eth()
        .qinq(10)
        .vlan(42)
        .ipv4(V4_PEER, V4_US)
        .esp(SPI_A, 6)
        .payload_len(48)
        .build();
    let opts = Packet::eth()
        .ipv4_with(V4_PEER, V4_US, |h| h.options = vec![1; 8])
        .esp(SPI_A, 7)
        .payload_len(48)
        .build();
    let hbh6 = Packet::eth()
        .ipv6_with(V6_PEER, V6_US, |h| {
            h.ext.push((IPV6_HOPOPTS, vec![1, 4, 0, 0, 0, 0]))
        })
        .esp(SPI_A, 8)
        .payload_len(48)
        .build();
    // ESP sizes the SA stats count: the IP packet.
    let ip4 = (20 + 8 + 48) as u64;
    let ip6 = (40 + 8 + 48) as u64;

    let mut table = vec![
        Fixture::new(
            "esp_v4",
            v4.clone(),
            redirect(esp_meta(0, 1, 7, 14, 34), &v4),
            out(Outcome::WireRedirectEsp),
        )
        .sa(1, ip4),
        Fixture::new(
            "esp_v6",
            v6.clone(),
            redirect(esp_meta(META_F_IPV6, 1, 7, 14, 54), &v6),
            out(Outcome::WireRedirectEsp),
        )
        .sa(1, ip6),
        Fixture::new(
            "esp_in_udp_v4",
            udp4.clone(),
            redirect(esp_meta(META_F_UDP_ENCAP, 1, 7, 14, 42), &udp4),
            out(Outcome::WireRedirectEspUdp),
        )
        .sa(1, ip4 + 8),
        Fixture::new(
            "esp_in_udp_v6",
            udp6.clone(),
            redirect(
                esp_meta(META_F_UDP_ENCAP | META_F_IPV6, 1, 7, 14, 62),
                &udp6,
            ),
            out(Outcome::WireRedirectEspUdp),
        )
        .sa(1, ip6 + 8),
        Fixture::new(
            "esp_vlan_tagged",
            vlan.clone(),
            redirect(esp_meta(0, 1, 7, 18, 38), &vlan),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "esp_qinq",
            qinq.clone(),
            redirect(esp_meta(0, 1, 7, 22, 42), &qinq),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "esp_ipv4_options",
            opts.clone(),
            redirect(esp_meta(0, 1, 7, 14, 42), &opts),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "esp_v6_hop_by_hop",
            hbh6.clone(),
            redirect(esp_meta(META_F_IPV6, 1, 7, 14, 62), &hbh6),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "ike_udp_500",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .udp(500, 500)
                .payload_len(40)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassIke),
        ),
        Fixture::new(
            "ike_udp_4500_non_esp_marker",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .udp(4500, 4500)
                .payload(&[0, 0, 0, 0, 0x11, 0x22])
                .payload_len(40)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassIke),
        ),
        Fixture::new(
            "nat_keepalive",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .udp(4500, 4500)
                .payload(&[0xff])
                .build(),
            Expect::Drop,
            drop_(DropReason::NatKeepalive),
        ),
        Fixture::new(
            "udp_4500_two_bytes",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .udp(4500, 4500)
                .payload(&[1, 2])
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedEsp),
        ),
        Fixture::new(
            "udp_other_port",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .udp(5353, 53)
                .payload_len(20)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassNotEsp),
        ),
        Fixture::new(
            "tcp",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.proto = Some(IPPROTO_TCP))
                .payload_len(20)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassNotEsp),
        ),
        Fixture::new(
            "arp",
            Packet::eth_type(0x0806).payload_len(28).build(),
            Expect::Pass,
            out(Outcome::WirePassNotEsp),
        ),
        Fixture::new(
            "unknown_spi",
            esp_v4(0xdead_beef, 1),
            Expect::Drop,
            drop_(DropReason::UnknownSpi),
        ),
        Fixture::new(
            "unknown_spi_passed_for_coexistence",
            esp_v4(0xdead_beef, 1),
            Expect::Pass,
            out(Outcome::WirePassUnknownSpi),
        )
        .prepare(|dp| {
            dp.set_wire_config(WireConfig {
                flags: WIRE_F_UNKNOWN_SPI_PASS,
                _pad: 0,
            })
        })
        .cleanup(|dp| dp.set_wire_config(WireConfig::default())),
        Fixture::new(
            "replay_duplicate",
            esp_v4(SPI_A, 5),
            Expect::Drop,
            drop_(DropReason::ReplayDuplicate),
        )
        .prepare(|dp| dp.replay().advance(1, 5)),
        Fixture::new(
            "replay_too_old",
            esp_v4(SPI_A, 100),
            Expect::Drop,
            drop_(DropReason::ReplayTooOld),
        )
        .prepare(|dp| dp.replay().advance(1, 200)),
        Fixture::new(
            "replay_window_left_edge_inside",
            esp_v4(SPI_A, 137),
            redirect(esp_meta(0, 1, 7, 14, 34), &esp_v4(SPI_A, 137)),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "replay_window_left_edge_outside",
            esp_v4(SPI_A, 136),
            Expect::Drop,
            drop_(DropReason::ReplayTooOld),
        ),
        Fixture::new(
            "replay_ahead_of_window",
            esp_v4(SPI_A, 100_000),
            redirect(esp_meta(0, 1, 7, 14, 34), &esp_v4(SPI_A, 100_000)),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "replay_small_window_edge",
            esp_v4(SPI_SMALL, 68),
            Expect::Drop,
            drop_(DropReason::ReplayTooOld),
        )
        .prepare(|dp| dp.replay().advance(3, 100)),
        Fixture::new(
            "seq_zero",
            esp_v4(SPI_A, 0),
            Expect::Drop,
            drop_(DropReason::ReplaySeqZero),
        ),
        Fixture::new(
            "esn_wrap_into_next_epoch",
            esp_v4(SPI_ESN, 3),
            redirect(esp_meta(0, 2, 8, 14, 34), &esp_v4(SPI_ESN, 3)),
            out(Outcome::WireRedirectEsp),
        )
        .prepare(|dp| dp.replay().advance(2, 0xffff_fff0)),
        // RFC 4303 A2.2: with ESN, a number left of the window is taken for the next epoch;
        // the pre-check lets it through and the ICV (over the inferred high bits) rejects it.
        Fixture::new(
            "esn_left_of_window_taken_as_next_epoch",
            esp_v4(SPI_ESN, 0xffff_ff00),
            redirect(esp_meta(0, 2, 8, 14, 34), &esp_v4(SPI_ESN, 0xffff_ff00)),
            out(Outcome::WireRedirectEsp),
        ),
        Fixture::new(
            "esn_duplicate_across_wrap",
            esp_v4(SPI_ESN, 2),
            Expect::Drop,
            drop_(DropReason::ReplayDuplicate),
        )
        .prepare(|dp| dp.replay().advance(2, 0x1_0000_0002)),
        Fixture::new(
            "esn_before_sequence_zero_too_old",
            esp_v4(SPI_ESN, 0xffff_ff90),
            Expect::Drop,
            drop_(DropReason::ReplayTooOld),
        )
        .prepare(|dp| {
            dp.replay().init(2, ReplayWindow::new(128, true))?;
            dp.replay().advance(2, 5)
        }),
        Fixture::new(
            "esp_runt",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .esp(SPI_A, 9)
                .payload_len(10)
                .build(),
            Expect::Drop,
            drop_(DropReason::EspRunt),
        ),
        Fixture::new(
            "truncated_vlan",
            Packet::eth().vlan(42).build()[..16].to_vec(),
            Expect::Drop,
            drop_(DropReason::TruncatedVlan),
        ),
        Fixture::new(
            "truncated_ipv4",
            v4[..14 + 12].to_vec(),
            Expect::Drop,
            drop_(DropReason::TruncatedIpv4),
        ),
        Fixture::new(
            "truncated_ipv4_options",
            opts[..14 + 24].to_vec(),
            Expect::Drop,
            drop_(DropReason::TruncatedIpv4),
        ),
        Fixture::new(
            "ipv4_total_length_beyond_frame",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.tot_len = Some(1500))
                .esp(SPI_A, 10)
                .payload_len(48)
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedIpv4),
        ),
        // The largest length field: beyond any frame (and beyond the bound the 6.1 verifier
        // needs before the length meets a packet pointer).
        Fixture::new(
            "ipv4_total_length_65535",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.tot_len = Some(0xffff))
                .esp(SPI_A, 10)
                .payload_len(48)
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedIpv4),
        ),
        Fixture::new(
            "ipv6_payload_length_65535",
            {
                let mut f = Packet::eth()
                    .ipv6(V6_PEER, V6_US)
                    .esp(SPI_A, 10)
                    .payload_len(48)
                    .build();
                // Ethernet 14 + the IPv6 payload length at bytes 4..6.
                f[18..20].copy_from_slice(&0xffffu16.to_be_bytes());
                f
            },
            Expect::Drop,
            drop_(DropReason::TruncatedIpv6),
        ),
        Fixture::new(
            "ipv4_ihl_below_5",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.ihl = Some(4))
                .esp(SPI_A, 11)
                .payload_len(48)
                .build(),
            Expect::Drop,
            drop_(DropReason::BadIpv4Header),
        ),
        Fixture::new(
            "truncated_ipv6",
            v6[..14 + 30].to_vec(),
            Expect::Drop,
            drop_(DropReason::TruncatedIpv6),
        ),
        Fixture::new(
            "truncated_udp",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.proto = Some(17))
                .payload(&[0x11, 0x94])
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedUdp),
        ),
        Fixture::new(
            "truncated_esp",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.proto = Some(50))
                .payload(&[0, 0, 0x10, 0, 0, 0])
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedEsp),
        ),
        Fixture::new(
            "esp_v4_fragment",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| h.frag = 0x2000)
                .esp(SPI_A, 12)
                .payload_len(48)
                .build(),
            redirect(
                frag_meta(0, 14),
                &Packet::eth()
                    .ipv4_with(V4_PEER, V4_US, |h| h.frag = 0x2000)
                    .esp(SPI_A, 12)
                    .payload_len(48)
                    .build(),
            ),
            out(Outcome::WireRedirectFragment),
        ),
        Fixture::new(
            "udp_later_fragment_from_peer",
            Packet::eth()
                .ipv4_with(V4_PEER, V4_US, |h| {
                    h.frag = 185;
                    h.proto = Some(17)
                })
                .payload_len(64)
                .build(),
            redirect(
                frag_meta(0, 14),
                &Packet::eth()
                    .ipv4_with(V4_PEER, V4_US, |h| {
                        h.frag = 185;
                        h.proto = Some(17)
                    })
                    .payload_len(64)
                    .build(),
            ),
            out(Outcome::WireRedirectFragment),
        ),
        Fixture::new(
            "udp_fragment_from_stranger",
            Packet::eth()
                .ipv4_with("198.51.100.9", V4_US, |h| {
                    h.frag = 185;
                    h.proto = Some(17)
                })
                .payload_len(64)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassNotEsp),
        ),
        Fixture::new(
            "esp_v6_fragment",
            Packet::eth()
                .ipv6_with(V6_PEER, V6_US, |h| {
                    h.ext.push((IPV6_FRAGMENT, vec![0, 1, 0, 0, 0, 9]))
                })
                .esp(SPI_A, 13)
                .payload_len(48)
                .build(),
            redirect(
                frag_meta(META_F_IPV6, 14),
                &Packet::eth()
                    .ipv6_with(V6_PEER, V6_US, |h| {
                        h.ext.push((IPV6_FRAGMENT, vec![0, 1, 0, 0, 0, 9]))
                    })
                    .esp(SPI_A, 13)
                    .payload_len(48)
                    .build(),
            ),
            out(Outcome::WireRedirectFragment),
        ),
        // ---- SAs of the kernel backend (SA_F_KERNEL): pre-checked, counted, to the stack ----
        Fixture::new(
            "kernel_sa_esp_v4",
            esp_v4(SPI_KERNEL, 1),
            Expect::Pass,
            out(Outcome::WirePassKernel),
        )
        .sa(4, ip4),
        Fixture::new(
            "kernel_sa_esp_v6",
            Packet::eth()
                .ipv6(V6_PEER, V6_US)
                .esp(SPI_KERNEL, 2)
                .payload_len(48)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassKernel),
        )
        .sa(4, ip6),
        Fixture::new(
            "kernel_sa_esp_in_udp_v4",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .udp(4500, 4500)
                .esp(SPI_KERNEL, 3)
                .payload_len(48)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassKernel),
        )
        .sa(4, ip4 + 8),
        Fixture::new(
            // Left to xfrm: with ESN, 0 is a valid low half of the sequence number.
            "kernel_sa_seq_zero_is_xfrms_call",
            esp_v4(SPI_KERNEL, 0),
            Expect::Pass,
            out(Outcome::WirePassKernel),
        ),
        Fixture::new(
            "kernel_sa_esp_runt",
            Packet::eth()
                .ipv4(V4_PEER, V4_US)
                .esp(SPI_KERNEL, 4)
                .payload_len(10)
                .build(),
            Expect::Drop,
            drop_(DropReason::EspRunt),
        ),
        // Nobody advances the window of a kernel SA; with its top far ahead, a normal SA
        // would drop seq 5 as too old. Passed: the window is not consulted.
        Fixture::new(
            "kernel_sa_skips_replay_window",
            esp_v4(SPI_KERNEL, 5),
            Expect::Pass,
            out(Outcome::WirePassKernel),
        )
        .sa(4, ip4)
        .prepare(|dp| dp.replay().advance(4, 1_000_000))
        .cleanup(|dp| dp.replay().init(4, ReplayWindow::new(64, false))),
        // ---- outer fragments by the source's PEERS flags ----
        Fixture::new(
            "esp_fragment_from_kernel_only_peer",
            esp_v4_fragment_from(V4_KERNEL_PEER, 15),
            Expect::Pass,
            out(Outcome::WirePassKernelFragment),
        ),
        Fixture::new(
            "esp_v6_fragment_from_kernel_only_peer",
            Packet::eth()
                .ipv6_with(V6_KERNEL_PEER, V6_US, |h| {
                    h.ext.push((IPV6_FRAGMENT, vec![0, 1, 0, 0, 0, 9]))
                })
                .esp(SPI_A, 16)
                .payload_len(48)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassKernelFragment),
        ),
        Fixture::new(
            "esp_fragment_from_peer_with_both_backends",
            esp_v4_fragment_from(V4_BOTH_PEER, 17),
            redirect(frag_meta(0, 14), &esp_v4_fragment_from(V4_BOTH_PEER, 17)),
            out(Outcome::WireRedirectFragment),
        ),
        Fixture::new(
            "esp_fragment_from_stranger",
            esp_v4_fragment_from("198.51.100.9", 18),
            redirect(frag_meta(0, 14), &esp_v4_fragment_from("198.51.100.9", 18)),
            out(Outcome::WireRedirectFragment),
        ),
        Fixture::new(
            "udp_fragment_from_kernel_only_peer",
            udp_v4_later_fragment_from(V4_KERNEL_PEER),
            Expect::Pass,
            out(Outcome::WirePassKernelFragment),
        ),
        Fixture::new(
            "udp_fragment_from_peer_with_both_backends",
            udp_v4_later_fragment_from(V4_BOTH_PEER),
            redirect(frag_meta(0, 14), &udp_v4_later_fragment_from(V4_BOTH_PEER)),
            out(Outcome::WireRedirectFragment),
        ),
        Fixture::new(
            "ipv6_extension_chain_too_long",
            Packet::eth()
                .ipv6_with(V6_PEER, V6_US, |h| {
                    for _ in 0..5 {
                        h.ext.push((60, vec![1, 4, 0, 0, 0, 0]));
                    }
                })
                .esp(SPI_A, 14)
                .payload_len(48)
                .build(),
            Expect::Pass,
            out(Outcome::WirePassUnparsed),
        ),
        Fixture::new(
            "no_xsk_socket_on_queue",
            esp_v4(SPI_A, 100_001),
            Expect::Drop,
            drop_(DropReason::NoXskSocket),
        )
        .prepare(|dp| dp.unset_wire_xsk(0)),
    ];
    // Re-bind for anything after the last fixture (nothing now; keeps the table reorderable).
    table.shrink_to_fit();
    run_table(&mut dp, programs::ESP_INGRESS, Side::Wire, table)?;
    drop(sock);
    Ok(())
}

const TENANT_VLAN_A: u16 = 100; // tenant 7
const TENANT_VLAN_B: u16 = 200; // tenant 8
const VNI_B: u32 = 5001; // tenant 8, VTEPs 172.24.4.10 (theirs) -> 172.24.4.226 (ours)
const VNI_B6: u32 = 5002; // tenant 8, VTEPs fd00::10 (theirs) -> fd00::226 (ours)

fn vteps_b() -> VtepPair {
    VtepPair::v4([172, 24, 4, 226], [172, 24, 4, 10])
}

fn vteps_b6() -> VtepPair {
    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("IPv6").octets();
    VtepPair::v6(a("fd00::226"), a("fd00::10"))
}

/// A VXLAN frame of `vni` between the given outer addresses (IPv4 or IPv6), with a tenant
/// IPv4 packet to `dst` inside.
fn vxlan_between(src: &str, outer_dst: &str, vni: u32, dst: &str) -> Vec<u8> {
    let p = if src.contains(':') {
        Packet::eth().ipv6(src, outer_dst)
    } else {
        Packet::eth().ipv4(src, outer_dst)
    };
    p.udp(49152, 4789)
        .vxlan(vni)
        .inner_eth()
        .ipv4("10.1.0.5", dst)
        .payload_len(32)
        .build()
}

/// IPv6 from a tenant host to `dst` behind `n` destination-options headers (the fast path
/// walks four).
fn ipv6_ext_chain(vid: Option<u16>, n: usize, dst: &str) -> Vec<u8> {
    let p = match vid {
        Some(v) => Packet::eth().vlan(v),
        None => Packet::eth(),
    };
    p.ipv6_with("2001:db8:1::5", dst, |h| {
        for _ in 0..n {
            h.ext.push((60, vec![1, 4, 0, 0, 0, 0]));
        }
    })
    .payload_len(32)
    .build()
}

fn out_meta(flags: u8, slot: u32, tenant: u32) -> XdpMeta {
    XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_OUTBOUND,
        flags,
        slot,
        tenant,
        l3_off: 14,
        esp_off: 0,
    }
}

fn arp_meta(flags: u8, tenant: u32) -> XdpMeta {
    XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_ARP,
        flags,
        slot: NO_SLOT,
        tenant,
        l3_off: 14,
        esp_off: 0,
    }
}

/// A VXLAN frame whose inner frame is the builder's ARP frame.
fn vxlan_arp(vni: u32) -> Vec<u8> {
    let inner = Packet::eth_type(0x0806).payload_len(28).build();
    let mut f = Packet::eth()
        .ipv4("172.24.4.10", "172.24.4.226")
        .udp(49152, 4789)
        .vxlan(vni)
        .payload(&inner)
        .build();
    // The builder has no "raw inner frame" layer; the payload is exactly the inner frame.
    f.truncate(50 + inner.len());
    f
}

/// Inserts an 802.1Q tag after the MAC addresses.
trait SpliceVlan {
    fn splice_vlan(self, vid: u16) -> Vec<u8>;
}

impl SpliceVlan for Vec<u8> {
    fn splice_vlan(mut self, vid: u16) -> Vec<u8> {
        let tag = [0x81, 0x00, (vid >> 8) as u8, vid as u8];
        self.splice(12..12, tag);
        self
    }
}

/// Sets the default tenant of the interface `BPF_PROG_TEST_RUN` delivers on (loopback, 1).
fn default_tenant(dp: &mut Dataplane, tenant: u32) -> Result<()> {
    dp.set_iface(
        1,
        IfaceConfig {
            default_tenant: tenant,
            xsk_base: 0,
        },
    )
}

fn protect(slot: u32) -> PolicyValue {
    PolicyValue {
        sa_slot: slot,
        action: POLICY_PROTECT,
    }
}

fn kernel(slot: u32) -> PolicyValue {
    PolicyValue {
        sa_slot: slot,
        action: POLICY_KERNEL,
    }
}

/// The frame the worker should see: plain Ethernet + the inner IP packet.
fn plain(dst: &str) -> Vec<u8> {
    Packet::eth().ipv4("10.1.0.5", dst).payload_len(32).build()
}

fn vlan_frame(vid: u16, dst: &str) -> Vec<u8> {
    Packet::eth()
        .vlan(vid)
        .ipv4("10.1.0.5", dst)
        .payload_len(32)
        .build()
}

fn vxlan_frame(vni: u32, dst: &str) -> Vec<u8> {
    Packet::eth()
        .ipv4("172.24.4.10", "172.24.4.226")
        .udp(49152, 4789)
        .vxlan(vni)
        .inner_eth()
        .ipv4("10.1.0.5", dst)
        .payload_len(32)
        .build()
}

#[test]
fn tenant_ingress_fixtures_adjust_meta() -> Result<()> {
    require_root();
    with_carrier(Carrier::Meta, tenant_ingress_fixtures)
}

#[test]
fn tenant_ingress_fixtures_shim() -> Result<()> {
    require_root();
    with_carrier(Carrier::Shim, tenant_ingress_fixtures)
}

fn tenant_ingress_fixtures(carrier: Carrier) -> Result<()> {
    let (_ns, sock) = xsk_env()?;
    let mut dp = load("vpnfix-tenant", carrier)?;
    default_tenant(&mut dp, 9)?;
    dp.set_tenant_xsk(0, sock.fd())?;
    dp.set_vlan_tenant(TENANT_VLAN_A, 7)?;
    dp.set_vlan_tenant(TENANT_VLAN_B, 8)?;
    dp.set_vni_tenant(VNI_B, 8, vteps_b())?;
    dp.set_vni_tenant(VNI_B6, 8, vteps_b6())?;
    // Same CIDR in three tenants, each to its own SA.
    dp.set_policy_v4(7, "10.2.0.0".parse()?, 24, protect(10))?;
    dp.set_policy_v4(8, "10.2.0.0".parse()?, 24, protect(11))?;
    dp.set_policy_v4(9, "10.2.0.0".parse()?, 24, protect(14))?;
    dp.set_policy_v4(7, "10.2.0.128".parse()?, 25, protect(12))?;
    dp.set_policy_v4(
        7,
        "10.9.0.0".parse()?,
        16,
        PolicyValue {
            sa_slot: 0,
            action: POLICY_BYPASS,
        },
    )?;
    dp.set_policy_v4(
        7,
        "10.66.0.0".parse()?,
        16,
        PolicyValue {
            sa_slot: 0,
            action: POLICY_DISCARD,
        },
    )?;
    dp.set_policy_v6(7, "2001:db8:2::".parse()?, 48, protect(13))?;
    dp.set_policy_v6(8, "2001:db8:2::".parse()?, 48, protect(11))?;
    dp.set_policy_v6(9, "2001:db8:2::".parse()?, 48, protect(14))?;
    // A DPD hold (RFC 3706: the peer is gone, its traffic is held back, not sent in clear).
    dp.set_policy_v6(
        7,
        "2001:db8:66::".parse()?,
        48,
        PolicyValue {
            sa_slot: 0,
            action: POLICY_DISCARD,
        },
    )?;
    // SAs in the kernel (action KERNEL): tagged tenant 7, untagged default tenant 9, VXLAN
    // tenant 8, and IPv6 in tenant 7.
    dp.set_policy_v4(7, "10.77.0.0".parse()?, 16, kernel(15))?;
    dp.set_policy_v4(9, "10.77.0.0".parse()?, 16, kernel(16))?;
    dp.set_policy_v4(8, "10.77.0.0".parse()?, 16, kernel(17))?;
    dp.set_policy_v6(7, "2001:db8:77::".parse()?, 48, kernel(18))?;

    let v6_vlan = Packet::eth()
        .vlan(TENANT_VLAN_A)
        .ipv6("2001:db8:1::5", "2001:db8:2::7")
        .payload_len(32)
        .build();
    let v6_plain = Packet::eth()
        .ipv6("2001:db8:1::5", "2001:db8:2::7")
        .payload_len(32)
        .build();
    let vxlan6 = Packet::eth()
        .ipv6("fd00::10", "fd00::226")
        .udp(49152, 4789)
        .vxlan(VNI_B6)
        .inner_eth()
        .ipv4("10.1.0.5", "10.2.0.5")
        .payload_len(32)
        .build();
    let inner_len = (20 + 32) as u64;

    let table = vec![
        Fixture::new(
            "vlan_v4_to_sa",
            vlan_frame(TENANT_VLAN_A, "10.2.0.5"),
            redirect(out_meta(META_F_FROM_VLAN, 10, 7), &plain("10.2.0.5")),
            out(Outcome::TenantRedirect),
        )
        .sa(10, inner_len),
        Fixture::new(
            "vlan_overlapping_cidr_other_tenant",
            vlan_frame(TENANT_VLAN_B, "10.2.0.5"),
            redirect(out_meta(META_F_FROM_VLAN, 11, 8), &plain("10.2.0.5")),
            out(Outcome::TenantRedirect),
        )
        .sa(11, inner_len),
        Fixture::new(
            "vlan_longest_prefix_wins",
            vlan_frame(TENANT_VLAN_A, "10.2.0.200"),
            redirect(out_meta(META_F_FROM_VLAN, 12, 7), &plain("10.2.0.200")),
            out(Outcome::TenantRedirect),
        ),
        Fixture::new(
            "vxlan_v4_underlay",
            vxlan_frame(VNI_B, "10.2.0.5"),
            redirect(out_meta(META_F_FROM_VXLAN, 11, 8), &plain("10.2.0.5")),
            out(Outcome::TenantRedirect),
        )
        .sa(11, inner_len),
        Fixture::new(
            "vxlan_v6_underlay",
            vxlan6,
            redirect(out_meta(META_F_FROM_VXLAN, 11, 8), &plain("10.2.0.5")),
            out(Outcome::TenantRedirect),
        ),
        Fixture::new(
            "untagged_default_tenant",
            plain("10.2.0.5"),
            redirect(out_meta(0, 14, 9), &plain("10.2.0.5")),
            out(Outcome::TenantRedirect),
        ),
        Fixture::new(
            "vlan_inner_ipv6",
            v6_vlan,
            redirect(out_meta(META_F_FROM_VLAN | META_F_IPV6, 13, 7), &v6_plain),
            out(Outcome::TenantRedirect),
        ),
        Fixture::new(
            "vlan_unknown",
            vlan_frame(300, "10.2.0.5"),
            Expect::Pass,
            out(Outcome::TenantPassNoTenant),
        ),
        // Not a VNI of ours: the untagged tenant's own UDP, classified by its destination.
        Fixture::new(
            "vxlan_unknown_vni",
            vxlan_frame(77, "10.2.0.5"),
            Expect::Pass,
            out(Outcome::TenantPassNoPolicy),
        ),
        Fixture::new(
            // Found by the mutation run: passed in clear while the default tenant protects
            // 10.2.0.0/24.
            "untagged_udp_4789_unknown_vni_to_protected",
            vxlan_between("10.1.0.5", "10.2.0.5", 77, "10.2.0.6"),
            redirect(
                out_meta(0, 14, 9),
                &vxlan_between("10.1.0.5", "10.2.0.5", 77, "10.2.0.6"),
            ),
            out(Outcome::TenantRedirect),
        ),
        Fixture::new(
            "vxlan_unknown_vni_without_default_tenant",
            vxlan_frame(77, "10.2.0.5"),
            Expect::Pass,
            out(Outcome::TenantPassNoTenant),
        )
        .prepare(|dp| default_tenant(dp, NO_TENANT))
        .cleanup(|dp| default_tenant(dp, 9)),
        Fixture::new(
            "untagged_without_default_tenant",
            plain("10.2.0.5"),
            Expect::Pass,
            out(Outcome::TenantPassNoTenant),
        )
        .prepare(|dp| default_tenant(dp, NO_TENANT))
        .cleanup(|dp| default_tenant(dp, 9)),
        Fixture::new(
            "no_policy",
            vlan_frame(TENANT_VLAN_A, "192.0.2.9"),
            Expect::Pass,
            out(Outcome::TenantPassNoPolicy),
        ),
        Fixture::new(
            "policy_bypass",
            vlan_frame(TENANT_VLAN_A, "10.9.1.1"),
            Expect::Pass,
            out(Outcome::TenantPassBypass),
        ),
        Fixture::new(
            "policy_discard",
            vlan_frame(TENANT_VLAN_A, "10.66.1.1"),
            Expect::Drop,
            drop_(DropReason::PolicyDiscard),
        ),
        // The kernel's VLAN device / routing takes the frame as it came, tag and all.
        Fixture::new(
            "policy_kernel_vlan",
            vlan_frame(TENANT_VLAN_A, "10.77.1.1"),
            Expect::Pass,
            out(Outcome::TenantPassKernel),
        ),
        Fixture::new(
            "policy_kernel_untagged",
            plain("10.77.1.1"),
            Expect::Pass,
            out(Outcome::TenantPassKernel),
        ),
        Fixture::new(
            "policy_kernel_vxlan",
            vxlan_frame(VNI_B, "10.77.1.1"),
            Expect::Pass,
            out(Outcome::TenantPassKernel),
        ),
        Fixture::new(
            "policy_kernel_vlan_inner_ipv6",
            Packet::eth()
                .vlan(TENANT_VLAN_A)
                .ipv6("2001:db8:1::5", "2001:db8:77::7")
                .payload_len(32)
                .build(),
            Expect::Pass,
            out(Outcome::TenantPassKernel),
        ),
        Fixture::new(
            "arp_on_vlan",
            Packet::eth_type(0x0806).payload_len(28).build(),
            Expect::Pass,
            out(Outcome::TenantPassNotIp),
        ),
        Fixture::new(
            "arp_on_tenant_vlan_to_worker",
            Packet::eth_type(0x0806)
                .payload_len(28)
                .build()
                .splice_vlan(TENANT_VLAN_A),
            redirect(
                arp_meta(META_F_FROM_VLAN, 7),
                &Packet::eth_type(0x0806).payload_len(28).build(),
            ),
            out(Outcome::TenantRedirectArp),
        ),
        Fixture::new(
            "arp_on_tenant_vxlan_to_worker",
            vxlan_arp(VNI_B),
            redirect(
                arp_meta(META_F_FROM_VXLAN, 8),
                &Packet::eth_type(0x0806).payload_len(28).build(),
            ),
            out(Outcome::TenantRedirectArp),
        ),
        Fixture::new(
            "vxlan_without_i_flag",
            Packet::eth()
                .ipv4("172.24.4.10", "172.24.4.226")
                .udp(49152, 4789)
                .vxlan_flags(0, VNI_B)
                .inner_eth()
                .ipv4("10.1.0.5", "10.2.0.5")
                .build(),
            Expect::Drop,
            drop_(DropReason::BadVxlan),
        ),
        Fixture::new(
            "truncated_vxlan",
            Packet::eth()
                .ipv4("172.24.4.10", "172.24.4.226")
                .udp(49152, 4789)
                .payload(&[0x08, 0, 0, 0])
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedVxlan),
        ),
        Fixture::new(
            "truncated_udp_header",
            Packet::eth()
                .ipv4_with("172.24.4.10", "172.24.4.226", |h| h.proto = Some(17))
                .payload(&[0xc0, 0, 0x12])
                .build(),
            Expect::Drop,
            drop_(DropReason::TruncatedUdp),
        ),
        Fixture::new(
            "truncated_vlan_tag",
            vlan_frame(TENANT_VLAN_A, "10.2.0.5")[..15].to_vec(),
            Expect::Drop,
            drop_(DropReason::TruncatedVlan),
        ),
        Fixture::new(
            "truncated_inner_ipv4",
            vlan_frame(TENANT_VLAN_A, "10.2.0.5")[..18 + 12].to_vec(),
            Expect::Drop,
            drop_(DropReason::TruncatedIpv4),
        ),
        // ---- VXLAN only between the VNI's VTEPs (a spoofed frame would inject into the
        //      tenant its VNI names) ----
        Fixture::new(
            "vxlan_spoofed_vtep_source",
            vxlan_between("172.24.4.99", "172.24.4.226", VNI_B, "10.2.0.5"),
            Expect::Drop,
            drop_(DropReason::VxlanSourceNotVtep),
        ),
        Fixture::new(
            "vxlan_wrong_vtep_destination",
            vxlan_between("172.24.4.10", "172.24.4.227", VNI_B, "10.2.0.5"),
            Expect::Drop,
            drop_(DropReason::VxlanDestNotVtep),
        ),
        Fixture::new(
            // The source of another VNI's VTEP pair is no better.
            "vxlan_vtep_pair_of_another_vni",
            vxlan_between("fd00::10", "fd00::226", VNI_B, "10.2.0.5"),
            Expect::Drop,
            drop_(DropReason::VxlanSourceNotVtep),
        ),
        Fixture::new(
            "vxlan_v6_spoofed_vtep_source",
            vxlan_between("fd00::11", "fd00::226", VNI_B6, "10.2.0.5"),
            Expect::Drop,
            drop_(DropReason::VxlanSourceNotVtep),
        ),
        Fixture::new(
            // Differs from our VTEP in the last word only.
            "vxlan_v6_wrong_vtep_destination",
            vxlan_between("fd00::10", "fd00::227", VNI_B6, "10.2.0.5"),
            Expect::Drop,
            drop_(DropReason::VxlanDestNotVtep),
        ),
        Fixture::new(
            // ARP too: the worker would learn the sender as a host of the VNI's tenant.
            "vxlan_arp_spoofed_vtep_source",
            {
                let mut f = vxlan_arp(VNI_B);
                // Outer IPv4 source (checksum not checked here).
                f[26..30].copy_from_slice(&[172, 24, 4, 99]);
                f
            },
            Expect::Drop,
            drop_(DropReason::VxlanSourceNotVtep),
        ),
        Fixture::new(
            "vxlan_vni_without_vteps",
            vxlan_frame(VNI_B, "10.2.0.5"),
            Expect::Drop,
            drop_(DropReason::VxlanNoVtep),
        )
        .prepare(|dp| dp.remove_vni_vteps(VNI_B).map(|_| ()))
        .cleanup(|dp| dp.set_vni_vteps(VNI_B, vteps_b())),
        // ---- IPv6 with more extension headers than the fast path walks: classified by the
        //      fixed header's destination, never passed in clear toward a protected prefix ----
        Fixture::new(
            "vlan_ipv6_five_ext_headers_to_protected",
            ipv6_ext_chain(Some(TENANT_VLAN_A), 5, "2001:db8:2::7"),
            Expect::Drop,
            drop_(DropReason::Ipv6UnparsedProtected),
        ),
        Fixture::new(
            "vlan_ipv6_five_ext_headers_to_unprotected",
            ipv6_ext_chain(Some(TENANT_VLAN_A), 5, "2001:db8:99::7"),
            Expect::Pass,
            out(Outcome::TenantPassNoPolicy),
        ),
        Fixture::new(
            "vlan_ipv6_five_ext_headers_to_dpd_hold",
            ipv6_ext_chain(Some(TENANT_VLAN_A), 5, "2001:db8:66::7"),
            Expect::Drop,
            drop_(DropReason::PolicyDiscard),
        ),
        Fixture::new(
            "vlan_ipv6_five_ext_headers_to_kernel_sa",
            ipv6_ext_chain(Some(TENANT_VLAN_A), 5, "2001:db8:77::7"),
            Expect::Pass,
            out(Outcome::TenantPassKernel),
        ),
        Fixture::new(
            "vlan_ipv6_four_ext_headers_to_protected",
            ipv6_ext_chain(Some(TENANT_VLAN_A), 4, "2001:db8:2::7"),
            redirect(
                out_meta(META_F_FROM_VLAN | META_F_IPV6, 13, 7),
                &ipv6_ext_chain(None, 4, "2001:db8:2::7"),
            ),
            out(Outcome::TenantRedirect),
        ),
        Fixture::new(
            "untagged_ipv6_five_ext_headers_to_protected",
            ipv6_ext_chain(None, 5, "2001:db8:2::7"),
            Expect::Drop,
            drop_(DropReason::Ipv6UnparsedProtected),
        ),
        Fixture::new(
            "untagged_ipv6_five_ext_headers_without_default_tenant",
            ipv6_ext_chain(None, 5, "2001:db8:2::7"),
            Expect::Pass,
            out(Outcome::TenantPassNoTenant),
        )
        .prepare(|dp| default_tenant(dp, NO_TENANT))
        .cleanup(|dp| default_tenant(dp, 9)),
        Fixture::new(
            "vxlan_inner_ipv6_five_ext_headers_to_protected",
            {
                let inner = ipv6_ext_chain(None, 5, "2001:db8:2::7");
                let mut f = Packet::eth()
                    .ipv4("172.24.4.10", "172.24.4.226")
                    .udp(49152, 4789)
                    .vxlan(VNI_B)
                    .payload(&inner)
                    .build();
                f.truncate(50 + inner.len());
                f
            },
            Expect::Drop,
            drop_(DropReason::Ipv6UnparsedProtected),
        ),
        Fixture::new(
            // An extension header whose length runs past the packet: not walked either.
            "vlan_ipv6_ext_header_past_the_packet_to_protected",
            {
                let mut f = ipv6_ext_chain(Some(TENANT_VLAN_A), 1, "2001:db8:2::7");
                // The header's length field (8-octet units beyond the first 8).
                f[18 + 40 + 1] = 200;
                f
            },
            Expect::Drop,
            drop_(DropReason::Ipv6UnparsedProtected),
        ),
        Fixture::new(
            "no_tenant_xsk_socket",
            vlan_frame(TENANT_VLAN_A, "10.2.0.6"),
            Expect::Drop,
            drop_(DropReason::NoXskSocket),
        )
        .prepare(|dp| dp.unset_tenant_xsk(0)),
    ];
    run_table(&mut dp, programs::TENANT_INGRESS, Side::Tenant, table)?;
    drop(sock);
    Ok(())
}

/// The mutation run (issue 14): seeded, structured mutations of tenant and wire frames
/// through both programs. Each mutation starts from a generated tenant frame (untagged, VLAN
/// of a known, unknown or random VID, VXLAN over IPv4 or IPv6 outers from the right VTEPs or
/// spoofed ones, or a tenant host's own UDP to port 4789 of a protected host, with known,
/// unknown or random VNIs; inner IPv4 with options and fragments, or IPv6 behind an
/// extension-header chain of random length and kinds; ARP) or from one of the wire seeds
/// (ESP, ESP in UDP, fragments), then gets random next-header values, bit flips biased to
/// the headers and truncations. Whatever the bytes:
/// - the verdict is pass, drop or redirect, and `test_run` never fails;
/// - a passed frame is untouched, a redirected one carries our metadata;
/// - the counters add up: every run moves exactly one counter of its program, and the drop
///   counters move by the number of drops (checked per chunk, to keep the run fast);
/// - no tenant frame is passed in clear toward a PROTECT or DISCARD prefix of its tenant, as
///   an independent reading of the frame finds them (tenant from the VLAN tag, the VXLAN
///   header between the VNI's VTEPs, or the interface's default tenant; destination from
///   the fixed IP header). This is the invariant H3 broke (IPv6 with five extension headers
///   passed unclassified): with that bug put back, the run failed after 22 to 1,596
///   mutations (five seeds), well inside its 200,000; with the unknown-VNI leak put back
///   (UDP to port 4789 with a VNI not ours passed in clear), after 4 to 30.
///
/// `VPN_MUTATIONS` (default 200,000 per carrier: 2.5 s on an idle 2-vCPU machine, about
/// 12 s on a loaded one) and `VPN_MUTATION_SEED` repeat or widen a run; the seed is printed.
#[test]
fn mutated_frames_always_get_one_counted_verdict_adjust_meta() -> Result<()> {
    require_root();
    with_carrier(Carrier::Meta, mutated_frames)
}

#[test]
fn mutated_frames_always_get_one_counted_verdict_shim() -> Result<()> {
    require_root();
    with_carrier(Carrier::Shim, mutated_frames)
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// A tenant IP packet (no Ethernet header) and the offsets of its next-header fields.
fn mutant_ip(rng: &mut Rng) -> (Vec<u8>, u16, Vec<usize>) {
    let src = ["10.1.0.5", "2001:db8:1::5"];
    if rng.below(2) == 0 {
        let dst = match rng.below(5) {
            0 => std::net::Ipv4Addr::from(rng.next() as u32).to_string(),
            i => ["10.2.0.5", "10.66.0.5", "10.77.1.1", "10.9.0.1"][i - 1].to_string(),
        };
        let (opts, frag) = (rng.below(3) * 4, rng.pick(&[0, 0, 0, 0x2000, 185]));
        let r = rng.next() as u8;
        let proto = rng.pick(&[6, 17, 1, 50, r]);
        let p = Packet::eth()
            .ipv4_with(src[0], &dst, |h| {
                h.options = vec![1; opts];
                h.frag = frag;
                h.proto = Some(proto);
            })
            .payload_len(rng.below(64))
            .build();
        return (p[14..].to_vec(), 0x0800, vec![9]);
    }
    let dst: std::net::Ipv6Addr = match rng.below(5) {
        0 => (rng.next() as u128 | (rng.next() as u128) << 64).into(),
        i => [
            "2001:db8:2::7",
            "2001:db8:66::7",
            "2001:db8:77::7",
            "2001:db8:99::7",
        ][i - 1]
            .parse()
            .expect("IPv6"),
    };
    let src: std::net::Ipv6Addr = src[1].parse().expect("IPv6");
    // Chains around what the programs walk (four): 0 to 8 headers of the four kinds walked,
    // now and then another kind (AH, mobility) the walk stops at.
    let exts: Vec<u8> = (0..rng.below(9))
        .map(|_| rng.pick(&[0, 43, 44, 60, 60, 51, 135]))
        .collect();
    let proto = rng.pick(&[6, 17, 58, 59]);
    let mut p = vec![
        0x60,
        0,
        0,
        0,
        0,
        0,
        exts.first().copied().unwrap_or(proto),
        64,
    ];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut nh = vec![6];
    for (i, &ty) in exts.iter().enumerate() {
        let next = exts.get(i + 1).copied().unwrap_or(proto);
        nh.push(p.len());
        if ty == IPV6_FRAGMENT {
            p.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 9]);
        } else {
            let units = rng.below(3);
            p.extend_from_slice(&[next, units as u8]);
            p.resize(p.len() + 6 + 8 * units, 0);
        }
    }
    p.resize(p.len() + rng.below(64), 0xa5);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    (p, 0x86dd, nh)
}

/// A generated tenant frame, before the byte-level mutations, and where its next-header
/// fields are.
fn mutant_tenant_frame(rng: &mut Rng) -> (Vec<u8>, Vec<usize>) {
    let (ip, ethertype, nh) = if rng.below(10) == 0 {
        // ARP request (Ethernet/IPv4) from a tenant host.
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 5, 10, 1, 0, 5];
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&[10, 1, 0, 1]);
        (a, 0x0806, vec![])
    } else {
        mutant_ip(rng)
    };
    let eth = |et: u16| {
        let mut e = [0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a].to_vec();
        e.extend_from_slice(&et.to_be_bytes());
        e
    };
    let mut f = match rng.below(5) {
        0 => eth(ethertype),
        1 => {
            let r = rng.next() as u16;
            let vid = rng.pick(&[TENANT_VLAN_A, TENANT_VLAN_A, TENANT_VLAN_B, 300, r]);
            let mut e = eth(0x8100);
            e.extend_from_slice(&vid.to_be_bytes());
            e.extend_from_slice(&ethertype.to_be_bytes());
            e
        }
        n => {
            let v6 = n == 4;
            let (ours, theirs, vni) = if v6 {
                ("fd00::226", "fd00::10", VNI_B6)
            } else {
                ("172.24.4.226", "172.24.4.10", VNI_B)
            };
            let src = [theirs, theirs, if v6 { "fd00::11" } else { "172.24.4.99" }];
            // Or a default-tenant host's own UDP to port 4789 of a protected host.
            let protected = if v6 { "2001:db8:2::7" } else { "10.2.0.5" };
            let (src, dst) = (rng.pick(&src), rng.pick(&[ours, ours, theirs, protected]));
            let r = rng.next() as u32 & 0xff_ffff;
            let vni = rng.pick(&[vni, vni, VNI_B6, 77, r]);
            let flags = rng.pick(&[0x08, 0x08, 0x08, 0]);
            let mut inner = eth(ethertype);
            inner.extend_from_slice(&ip);
            let p = if v6 {
                Packet::eth().ipv6(src, dst)
            } else {
                Packet::eth().ipv4(src, dst)
            };
            let mut f = p
                .udp(49152, 4789)
                .vxlan_flags(flags, vni)
                .payload(&inner)
                .build();
            f.truncate(f.len() - ip.len());
            f
        }
    };
    let at = f.len();
    f.extend_from_slice(&ip);
    (f, nh.into_iter().map(|o| at + o).collect())
}

/// Random next-header values, bit flips biased to the headers, truncation.
fn mutate(f: &mut Vec<u8>, nh: &[usize], rng: &mut Rng) {
    if !nh.is_empty() && rng.below(3) == 0 {
        let at = nh[rng.below(nh.len())];
        let r = rng.next() as u8;
        f[at] = rng.pick(&[0, 43, 44, 60, 6, 17, 50, 51, 58, 59, 135, r]);
    }
    if rng.below(2) == 0 {
        for _ in 0..1 + rng.below(4) {
            let span = if rng.below(5) == 0 {
                f.len()
            } else {
                f.len().min(110)
            };
            let at = rng.below(span);
            f[at] ^= 1 << rng.below(8);
        }
    }
    if rng.below(5) == 0 {
        let keep = 14 + rng.below(f.len() - 13);
        f.truncate(keep);
    }
}

/// Which (tenant, destination) a tenant frame belongs to, read without the program: the tenant
/// from the VLAN tag, from the VXLAN header of a VNI of ours between its VTEPs, or the
/// interface's default tenant (9); the destination from the fixed IP header.
fn tenant_and_dst(f: &[u8]) -> Option<(u32, IpAddr)> {
    let be16 = |o: usize| Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]));
    let (tenant, l3, et) = match be16(12)? {
        0x8100 => match be16(14)? & 0x0fff {
            TENANT_VLAN_A => (7, 18, be16(16)?),
            TENANT_VLAN_B => (8, 18, be16(16)?),
            _ => return None,
        },
        et => vxlan_of_ours(f).unwrap_or((9, 14, et)),
    };
    let addr = |o: usize, n: usize| f.get(l3 + o..l3 + o + n);
    match et {
        0x0800 => Some((tenant, <[u8; 4]>::try_from(addr(16, 4)?).ok()?.into())),
        0x86dd => Some((tenant, <[u8; 16]>::try_from(addr(24, 16)?).ok()?.into())),
        _ => None,
    }
}

/// (tenant, inner L3 offset, inner ethertype) of VXLAN that `tenant_ingress` must take as a
/// VNI's: UDP to 4789 (outer IPv4 not fragmented, or IPv6 without extension headers), I flag,
/// VNI 5001 or 5002 from and to its VTEPs.
fn vxlan_of_ours(f: &[u8]) -> Option<(u32, usize, u16)> {
    let (l4, src, dst) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ihl = (*f.get(14)? & 0x0f) as usize * 4;
            let frag = u16::from_be_bytes([*f.get(20)?, *f.get(21)?]) & 0x3fff;
            if *f.get(23)? != 17 || frag != 0 {
                return None;
            }
            (14 + ihl, f.get(26..30)?, f.get(30..34)?)
        }
        0x86dd if *f.get(20)? == 17 => (54, f.get(22..38)?, f.get(38..54)?),
        _ => return None,
    };
    let vx = f.get(l4..l4 + 16)?;
    if vx[2..4] != [0x12, 0xb5] || vx[8] & 0x08 == 0 {
        return None;
    }
    let vteps = match u32::from_be_bytes([0, vx[12], vx[13], vx[14]]) {
        VNI_B => vteps_b(),
        VNI_B6 => vteps_b6(),
        _ => return None,
    };
    let n = src.len();
    if src != &vteps.remote[..n] || dst != &vteps.local[..n] {
        return None;
    }
    let inner_eth = l4 + 16;
    Some((
        8,
        inner_eth + 14,
        u16::from_be_bytes([*f.get(inner_eth + 12)?, *f.get(inner_eth + 13)?]),
    ))
}

fn mutated_frames(carrier: Carrier) -> Result<()> {
    use vpn_tests::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT, run_once};
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let runs = env("VPN_MUTATIONS").unwrap_or(200_000) as usize;
    let seed = env("VPN_MUTATION_SEED").unwrap_or(0x2545_f491_4f6c_dd1d) | 1;

    let (_ns, sock) = xsk_env()?;
    let mut dp = load("vpnfix-fuzz", carrier)?;
    let meta_len = meta_area_len(&dp);
    default_tenant(&mut dp, 9)?;
    dp.set_wire_xsk(0, sock.fd())?;
    dp.set_tenant_xsk(0, sock.fd())?;
    dp.add_sa_in(
        SPI_A,
        SaIn {
            slot: 1,
            tenant: 7,
            flags: 0,
            min_esp_len: SaIn::min_esp_len_for(8, 16),
            _pad: 0,
        },
        ReplayWindow::new(64, true),
    )?;
    dp.add_sa_in(
        SPI_KERNEL,
        SaIn {
            slot: 4,
            tenant: 7,
            flags: SA_F_KERNEL,
            min_esp_len: SaIn::min_esp_len_for(8, 16),
            _pad: 0,
        },
        ReplayWindow::new(64, false),
    )?;
    dp.add_peer(PeerKey::v4([192, 0, 2, 1]))?;
    dp.set_peer_flags(PeerKey::v4([198, 51, 100, 1]), PEER_F_KERNEL)?;
    dp.set_vlan_tenant(TENANT_VLAN_A, 7)?;
    dp.set_vlan_tenant(TENANT_VLAN_B, 8)?;
    dp.set_vni_tenant(VNI_B, 8, vteps_b())?;
    dp.set_vni_tenant(VNI_B6, 8, vteps_b6())?;
    let hold = PolicyValue {
        sa_slot: 0,
        action: POLICY_DISCARD,
    };
    for t in [7, 8, 9] {
        dp.set_policy_v4(t, "10.2.0.0".parse()?, 24, protect(10 + t))?;
        dp.set_policy_v6(t, "2001:db8:2::".parse()?, 48, protect(10 + t))?;
        // A DPD hold (RFC 3706) and SAs in the kernel.
        dp.set_policy_v4(t, "10.66.0.0".parse()?, 16, hold)?;
        dp.set_policy_v6(t, "2001:db8:66::".parse()?, 48, hold)?;
        dp.set_policy_v4(t, "10.77.0.0".parse()?, 16, kernel(20 + t))?;
        dp.set_policy_v6(t, "2001:db8:77::".parse()?, 48, kernel(20 + t))?;
    }

    let wire_seeds = [
        esp_v4(SPI_A, 1),
        Packet::eth()
            .ipv6_with(V6_PEER, V6_US, |h| {
                h.ext.push((IPV6_HOPOPTS, vec![1, 4, 0, 0, 0, 0]))
            })
            .esp(SPI_A, 2)
            .payload_len(48)
            .build(),
        Packet::eth()
            .qinq(10)
            .vlan(42)
            .ipv4_with(V4_PEER, V4_US, |h| h.options = vec![1; 8])
            .udp(4500, 4500)
            .esp(SPI_A, 3)
            .payload_len(48)
            .build(),
        Packet::eth()
            .ipv4_with(V4_PEER, V4_US, |h| {
                h.frag = 185;
                h.proto = Some(17)
            })
            .payload_len(64)
            .build(),
        Packet::eth()
            .ipv4(V4_PEER, V4_US)
            .udp(4500, 4500)
            .esp(SPI_KERNEL, 9)
            .payload_len(48)
            .build(),
        esp_v4_fragment_from(V4_KERNEL_PEER, 10),
    ];

    println!("mutation run: {runs} mutations, seed {seed:#x}");
    let started = std::time::Instant::now();
    let mut rng = Rng(seed);
    let sides = [
        (programs::ESP_INGRESS, Side::Wire),
        (programs::TENANT_INGRESS, Side::Tenant),
    ];
    // Counted beside an outcome, not instead of one.
    let beside = [
        Counter::Outcome(Outcome::WireMetaRefusedShim),
        Counter::Outcome(Outcome::TenantMetaRefusedShim),
    ];
    let totals = |dp: &Dataplane, side: Side| -> Result<(u64, u64)> {
        let c = dp.counters(side)?;
        let all = c.iter().filter(|(k, _)| !beside.contains(k)).map(|c| c.1);
        let drops = c.iter().filter(|(k, _)| matches!(k, Counter::Drop(_)));
        Ok((all.sum(), drops.map(|c| c.1).sum()))
    };
    let (mut verdicts, mut held_back, mut long_chains) = ([0u64; 5], 0u64, 0u64);
    let mut done = 0;
    while done < runs {
        let chunk = (runs - done).min(2000);
        let before = [totals(&dp, Side::Wire)?, totals(&dp, Side::Tenant)?];
        let mut drops = [0u64; 2];
        for i in done..done + chunk {
            let (mut f, nh) = if i % 4 == 3 {
                (wire_seeds[rng.below(wire_seeds.len())].clone(), vec![])
            } else {
                mutant_tenant_frame(&mut rng)
            };
            long_chains += (nh.len() > 5) as u64;
            mutate(&mut f, &nh, &mut rng);
            for (s, (prog, _)) in sides.iter().enumerate() {
                let r = run_once(&dp, prog, &f)?;
                let ctx = || format!("mutation {i} (seed {seed:#x}), {prog} on {f:02x?}");
                if *prog == programs::TENANT_INGRESS
                    && let Some((tenant, dst)) = tenant_and_dst(&f)
                    && let Some(p) = match dst {
                        IpAddr::V4(a) => dp.lookup_policy_v4(tenant, a)?,
                        IpAddr::V6(a) => dp.lookup_policy_v6(tenant, a)?,
                    }
                    && (p.action == POLICY_PROTECT || p.action == POLICY_DISCARD)
                {
                    assert_ne!(
                        r.action,
                        XDP_PASS,
                        "passed in clear toward {dst} of tenant {tenant} ({p:?}): {}",
                        ctx()
                    );
                    held_back += 1;
                }
                match r.action {
                    XDP_PASS => assert_eq!(r.out, f, "passed frame modified: {}", ctx()),
                    XDP_DROP => drops[s] += 1,
                    XDP_REDIRECT => {
                        assert_eq!(r.meta_len, meta_len, "{}", ctx());
                        let m = XdpMeta::from_bytes(r.out[..XdpMeta::LEN].try_into()?);
                        assert_eq!(m.magic, META_MAGIC, "{}", ctx());
                    }
                    a => panic!("unexpected action {a}: {}", ctx()),
                }
                verdicts[r.action as usize] += 1;
            }
        }
        for (s, (prog, side)) in sides.iter().enumerate() {
            let (all, dropped) = totals(&dp, *side)?;
            assert_eq!(
                all - before[s].0,
                chunk as u64,
                "{prog}: one counter per run, mutations {done}..{}",
                done + chunk
            );
            assert_eq!(
                dropped - before[s].1,
                drops[s],
                "{prog}: a drop counter per drop"
            );
        }
        done += chunk;
    }
    let took = started.elapsed();
    // The mutations must reach every verdict and the cases they are for, or this test checks
    // less than it claims.
    println!(
        "mutation run: {runs} mutations x 2 programs in {took:.1?}; verdicts (aborted, drop, \
         pass, tx, redirect) {verdicts:?}; {held_back} tenant frames toward protected or held \
         prefixes, none passed; {long_chains} with more than four extension headers"
    );
    assert!(verdicts[XDP_PASS as usize] > 0 && verdicts[XDP_DROP as usize] > 0);
    assert!(verdicts[XDP_REDIRECT as usize] > 0);
    assert!(
        held_back as usize > runs / 20,
        "only {held_back} frames met the policy check"
    );
    assert!(
        long_chains as usize > runs / 20,
        "only {long_chains} long extension chains"
    );
    drop(sock);
    Ok(())
}

/// The carrier is a load-time constant the verifier knows, so it drops the other carrier's
/// code: with the shim, the programs the kernel keeps call `bpf_xdp_adjust_meta` nowhere (a
/// kernel that refuses the helper never sees it); with the metadata area, both call it.
fn only_the_chosen_carrier_is_loaded(carrier: Carrier) -> Result<()> {
    use std::os::fd::AsFd;
    let dp = load("vpnfix-prune", carrier)?;
    let adjust_meta = vpn_userspace::probe::bpf::helper_call_imm("bpf_xdp_adjust_meta")?;
    let adjust_head = vpn_userspace::probe::bpf::helper_call_imm("bpf_xdp_adjust_head")?;
    for prog in [programs::ESP_INGRESS, programs::TENANT_INGRESS] {
        let fd = dp.program(prog)?.fd()?;
        let calls = vpn_userspace::probe::bpf::xlated_helper_calls(fd.as_fd())?;
        let meta = calls.contains(&adjust_meta);
        assert_eq!(
            meta,
            carrier == Carrier::Meta,
            "{prog} with the {carrier} carrier: bpf_xdp_adjust_meta {} in the loaded code",
            if meta { "is" } else { "is not" }
        );
        // Both carriers prepend with adjust_head: the shim always, the metadata carrier as the
        // run-time fallback.
        assert!(
            calls.contains(&adjust_head),
            "{prog}: no bpf_xdp_adjust_head call"
        );
    }
    Ok(())
}

#[test]
fn only_the_chosen_carrier_is_loaded_adjust_meta() -> Result<()> {
    require_root();
    with_carrier(Carrier::Meta, only_the_chosen_carrier_is_loaded)
}

#[test]
fn only_the_chosen_carrier_is_loaded_shim() -> Result<()> {
    require_root();
    with_carrier(Carrier::Shim, only_the_chosen_carrier_is_loaded)
}
