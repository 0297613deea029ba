//! Two network nodes ("East" and "West") in their own namespaces joined by a wire veth, each
//! with the XDP programs attached and an AF_XDP worker running manual-keyed SAs. East's tenant
//! network is VLAN 100, West's is VXLAN VNI 5001. Frames are injected and captured with
//! AF_PACKET on the tenant-side veth peers, so every byte on the way is checked:
//! tenant VLAN frame -> ESP on the wire -> VXLAN frame at the other site, and back (ESP in
//! UDP/4500 that way). Then replays and a tampered packet injected on the wire.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use vpn_common::{
    Counter, DropReason, Outcome, ReplayWindow,
    maps::{POLICY_PROTECT, PolicyValue, SaIn, VtepPair},
};
use vpn_tests::{
    netns::{NetNs, require_root, unique},
    pkt::Packet,
    raw::RawSocket,
};
use vpn_userspace::{
    dataplane::{
        Dataplane, LoadOptions, Side,
        worker::{
            InboundState, NextHop, OutboundState, Prefix, Selector, Tenant, TenantLink, Worker,
            WorkerStats,
        },
    },
    esp::{Cipher, InboundSa, OutboundSa, Outer, SaKey},
};

const MAC_WIRE_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];
const MAC_WIRE_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
const MAC_TEN_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x02];
const MAC_TEN_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
const MAC_HOST_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x10];
const MAC_VTEP_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x10];
const MAC_HOST_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x11];
const GW_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0xfe];
const GW_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];

const SPI_EW: u32 = 0x0000_e0f0; // East -> West, raw ESP
const SPI_WE: u32 = 0x0000_f0e0; // West -> East, ESP in UDP/4500
const SPI_EW6: u32 = 0x0000_e6f6; // East -> West over IPv6 outer headers (4-in-6)
const KEY_EW: [u8; 20] = [0x11; 20];
const KEY_WE: [u8; 36] = [0x22; 36];

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn prefix6(a: &str, len: u8) -> Prefix {
    Prefix {
        addr: IpAddr::V6(a.parse().expect("IPv6 prefix")),
        len,
    }
}

/// What SPI_EW carries, East's outbound SA and West's inbound one alike: 10.1/24 to 10.2/24,
/// and IPv6 inside (6-in-4).
fn ew_selectors() -> Vec<Selector> {
    vec![
        Selector {
            src: prefix([10, 1, 0, 0], 24),
            dst: prefix([10, 2, 0, 0], 24),
        },
        Selector {
            src: prefix6("2001:db8:1::", 48),
            dst: prefix6("2001:db8:2::", 48),
        },
    ]
}

fn prefix(a: [u8; 4], len: u8) -> Prefix {
    Prefix {
        addr: IpAddr::V4(Ipv4Addr::from(a)),
        len,
    }
}

struct Node {
    dp: Dataplane,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<WorkerStats>>,
}

impl Node {
    fn stop(&mut self) -> WorkerStats {
        self.stop.store(true, Ordering::Relaxed);
        self.worker
            .take()
            .expect("running")
            .join()
            .expect("worker thread")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Runs the node's workers, one thread per queue pair (veth has one rx queue per CPU), and
/// returns a handle that yields their summed stats.
fn spawn(w: Worker) -> (Arc<AtomicBool>, JoinHandle<WorkerStats>) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = w
        .split()
        .into_iter()
        .map(|mut w| {
            let s = stop.clone();
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if w.poll() == 0 {
                        w.wait(5);
                    }
                }
                w.stats
            })
        })
        .collect();
    let h = std::thread::spawn(move || {
        let mut total = WorkerStats::default();
        for t in threads {
            total.merge(&t.join().expect("worker thread"));
        }
        total
    });
    (stop, h)
}

fn setup_ns(ns: &NetNs, links: &[(&str, &[u8; 6], &str, &[u8; 6])]) -> Result<()> {
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
    for (a, ma, b, mb) in links {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        ns.ip(&["link", "set", a, "address", &mac(ma), "up"])?;
        ns.ip(&["link", "set", b, "address", &mac(mb), "up"])?;
    }
    Ok(())
}

#[test]
fn east_vlan_to_west_vxlan_and_back_through_esp() -> Result<()> {
    require_root();
    let east = NetNs::new("vpn2e")?;
    let west = NetNs::new("vpn2w")?;
    setup_ns(&east, &[("ten", &MAC_TEN_E, "host", &MAC_HOST_E)])?;
    setup_ns(&west, &[("ten", &MAC_TEN_W, "host", &MAC_VTEP_W)])?;
    // The wire: one veth pair across the two namespaces.
    let wire_e = unique("w");
    east.ip(&[
        "link", "add", "wire", "type", "veth", "peer", "name", &wire_e,
    ])?;
    east.ip(&["link", "set", &wire_e, "netns", west.name()])?;
    west.ip(&["link", "set", &wire_e, "name", "wire"])?;
    east.ip(&["link", "set", "wire", "address", &mac(&MAC_WIRE_E), "up"])?;
    west.ip(&["link", "set", "wire", "address", &mac(&MAC_WIRE_W), "up"])?;

    let key_ew = SaKey::from_keymat(Cipher::Aes128Gcm16, &KEY_EW)?;
    let key_we = SaKey::from_keymat(Cipher::Aes256Gcm16, &KEY_WE)?;
    let e_addr = IpAddr::V4(Ipv4Addr::new(172, 24, 4, 226));
    let w_addr = IpAddr::V4(Ipv4Addr::new(172, 24, 4, 233));
    let out_ew = Outer {
        src: e_addr,
        dst: w_addr,
        udp: None,
        ttl: 64,
    };
    let out_we = Outer {
        src: w_addr,
        dst: e_addr,
        udp: Some((4500, 4500)),
        ttl: 64,
    };
    let out_ew6 = Outer {
        src: IpAddr::V6("2001:db8:ff::226".parse()?),
        dst: IpAddr::V6("2001:db8:ff::233".parse()?),
        udp: None,
        ttl: 64,
    };
    let sa_in = |slot, tenant| SaIn {
        slot,
        tenant,
        flags: 0,
        min_esp_len: SaIn::min_esp_len_for(8, 16),
        _pad: 0,
    };

    // ---- East: tenant 1 on VLAN 100, 10.1.0.0/24 ----
    let (mut east_node, e_host) = {
        let _in = east.enter()?;
        let mut o = LoadOptions::new(unique("vpn2e"));
        o.sa_slots = 64;
        o.sa_in_entries = 64;
        let mut dp = Dataplane::load(&o)?;
        dp.attach_wire("wire", XdpMode::Driver)?;
        dp.attach_tenant("ten", XdpMode::Driver)?;
        let wire = dp.bind_sockets(Side::Wire, "wire", 0, 1024)?;
        let ten = dp.bind_sockets(Side::Tenant, "ten", 0, 1024)?;
        dp.set_vlan_tenant(100, 1)?;
        dp.set_policy_v4(
            1,
            "10.2.0.0".parse()?,
            24,
            PolicyValue {
                sa_slot: 10,
                action: POLICY_PROTECT,
            },
        )?;
        // IPv6 tenant traffic through the same (IPv4-outer) SA: 6-in-4.
        dp.set_policy_v6(
            1,
            "2001:db8:2::".parse()?,
            48,
            PolicyValue {
                sa_slot: 10,
                action: POLICY_PROTECT,
            },
        )?;
        dp.add_sa_in(SPI_WE, sa_in(20, 1), ReplayWindow::new(128, false))?;
        let mut w = Worker::new(wire, ten, dp.replay_shared());
        w.add_inbound(InboundState {
            sa: InboundSa::new(SPI_WE, &key_we, false),
            slot: 20,
            tenant: 1,
            selectors: vec![Selector {
                src: prefix([10, 2, 0, 0], 24),
                dst: prefix([10, 1, 0, 0], 24),
            }],
        });
        w.add_outbound(
            10,
            OutboundState {
                sa: Arc::new(OutboundSa::new(SPI_EW, &key_ew, false, out_ew.clone())),
                dst_mac: NextHop::new(MAC_WIRE_W),
                src_mac: MAC_WIRE_E,
                mtu: None,
                selectors: ew_selectors(),
            },
        );
        dp.set_policy_v4(
            1,
            "10.3.0.0".parse()?,
            24,
            PolicyValue {
                sa_slot: 11,
                action: POLICY_PROTECT,
            },
        )?;
        w.add_outbound(
            11,
            OutboundState {
                sa: Arc::new(OutboundSa::new(SPI_EW6, &key_ew, true, out_ew6.clone())),
                dst_mac: NextHop::new(MAC_WIRE_W),
                src_mac: MAC_WIRE_E,
                mtu: None,
                selectors: vec![Selector {
                    src: prefix([10, 1, 0, 0], 24),
                    dst: prefix([10, 3, 0, 0], 24),
                }],
            },
        );
        w.add_tenant(
            1,
            Tenant {
                link: TenantLink::Vlan(100),
                gateway_mac: GW_E,
                default_host_mac: [0x02, 0, 0, 0, 0, 0x99],
                iface_mac: MAC_TEN_E,
                gateway_v4: None,
                gateway_v6: None,
                local_subnets: vec![prefix([10, 1, 0, 0], 24), prefix6("2001:db8:1::", 48)],
            },
        );
        let host = RawSocket::new(east.ifindex("host")?)?;
        let (stop, h) = spawn(w);
        (
            Node {
                dp,
                stop,
                worker: Some(h),
            },
            host,
        )
    };

    // ---- West: tenant 5 on VXLAN 5001 (VTEP 192.168.100.2), 10.2.0.0/24 ----
    let (mut west_node, w_host) = {
        let _in = west.enter()?;
        let mut o = LoadOptions::new(unique("vpn2w"));
        o.sa_slots = 64;
        o.sa_in_entries = 64;
        let mut dp = Dataplane::load(&o)?;
        dp.attach_wire("wire", XdpMode::Driver)?;
        dp.attach_tenant("ten", XdpMode::Driver)?;
        let wire = dp.bind_sockets(Side::Wire, "wire", 0, 1024)?;
        let ten = dp.bind_sockets(Side::Tenant, "ten", 0, 1024)?;
        dp.set_vni_tenant(
            5001,
            5,
            VtepPair::v4([192, 168, 100, 1], [192, 168, 100, 2]),
        )?;
        dp.set_policy_v4(
            5,
            "10.1.0.0".parse()?,
            24,
            PolicyValue {
                sa_slot: 10,
                action: POLICY_PROTECT,
            },
        )?;
        dp.add_sa_in(SPI_EW, sa_in(20, 5), ReplayWindow::new(128, false))?;
        dp.add_sa_in(SPI_EW6, sa_in(21, 5), ReplayWindow::new(128, true))?;
        let mut w = Worker::new(wire, ten, dp.replay_shared());
        w.add_inbound(InboundState {
            sa: InboundSa::new(SPI_EW6, &key_ew, true),
            slot: 21,
            tenant: 5,
            selectors: vec![Selector {
                src: prefix([10, 1, 0, 0], 24),
                dst: prefix([10, 3, 0, 0], 24),
            }],
        });
        w.add_inbound(InboundState {
            sa: InboundSa::new(SPI_EW, &key_ew, false),
            slot: 20,
            tenant: 5,
            selectors: ew_selectors(),
        });
        w.add_outbound(
            10,
            OutboundState {
                sa: Arc::new(OutboundSa::new(SPI_WE, &key_we, false, out_we)),
                dst_mac: NextHop::new(MAC_WIRE_E),
                src_mac: MAC_WIRE_W,
                mtu: None,
                selectors: vec![Selector {
                    src: prefix([10, 2, 0, 0], 24),
                    dst: prefix([10, 1, 0, 0], 24),
                }],
            },
        );
        w.add_tenant(
            5,
            Tenant {
                link: TenantLink::Vxlan {
                    vni: 5001,
                    local_vtep: Ipv4Addr::new(192, 168, 100, 1),
                    remote_vtep: Ipv4Addr::new(192, 168, 100, 2),
                    vtep_mac: MAC_VTEP_W,
                },
                gateway_mac: GW_W,
                default_host_mac: MAC_HOST_W,
                iface_mac: MAC_TEN_W,
                gateway_v4: None,
                gateway_v6: None,
                local_subnets: vec![prefix([10, 2, 0, 0], 24)],
            },
        );
        let host = RawSocket::new(west.ifindex("host")?)?;
        let (stop, h) = spawn(w);
        (
            Node {
                dp,
                stop,
                worker: Some(h),
            },
            host,
        )
    };
    // East's end of the wire, for injecting what an attacker would.
    let e_wire = {
        let _in = east.enter()?;
        RawSocket::new(east.ifindex("wire")?)?
    };

    let inner_ew = Packet::eth()
        .ipv4("10.1.0.5", "10.2.0.9")
        .udp(40000, 7)
        .payload_len(300)
        .build()[14..]
        .to_vec();
    let is_vxlan_with = |inner: &[u8]| {
        let inner = inner.to_vec();
        move |f: &[u8]| {
            f.len() > 64 && f[12..14] == [8, 0] && f[36..38] == [0x12, 0xb5] && f[64..] == inner[..]
        }
    };

    // 1. East tenant host -> VLAN 100 -> ESP -> West -> VXLAN 5001 to the VTEP.
    let mut vlan_frame = Vec::new();
    vlan_frame.extend_from_slice(&GW_E);
    vlan_frame.extend_from_slice(&MAC_HOST_E);
    vlan_frame.extend_from_slice(&[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
    vlan_frame.extend_from_slice(&inner_ew);
    e_host.send(&vlan_frame)?;
    let got = w_host
        .recv_matching(Duration::from_secs(3), is_vxlan_with(&inner_ew))
        .context("no VXLAN frame at West's VTEP")?;
    assert_eq!(&got[..6], &MAC_VTEP_W, "outer dst MAC: the VTEP");
    assert_eq!(&got[26..30], &[192, 168, 100, 1], "outer src: our VTEP");
    assert_eq!(
        &got[30..34],
        &[192, 168, 100, 2],
        "outer dst: the tenant's VTEP"
    );
    assert_eq!(&got[46..49], &[0x00, 0x13, 0x89], "VNI 5001");
    assert_eq!(&got[50..56], &MAC_HOST_W, "inner dst: tenant host");
    assert_eq!(&got[56..62], &GW_W, "inner src: the gateway");
    assert_eq!(
        west_node
            .dp
            .counter(Side::Wire, Counter::Outcome(Outcome::WireRedirectEsp))?,
        1,
        "the wire carried raw ESP"
    );

    // 2. West tenant host (VXLAN) -> ESP in UDP -> East -> VLAN 100, to the MAC East learned.
    let inner_we = Packet::eth()
        .ipv4("10.2.0.9", "10.1.0.5")
        .udp(7, 40000)
        .payload_len(200)
        .build()[14..]
        .to_vec();
    let vx = Packet::eth()
        .ipv4("192.168.100.2", "192.168.100.1")
        .udp(50000, 4789)
        .vxlan(5001)
        .inner_eth()
        .payload(&inner_we)
        .build();
    let mut vx = vx;
    vx[..6].copy_from_slice(&MAC_TEN_W);
    vx[6..12].copy_from_slice(&MAC_VTEP_W);
    // The builder's inner Ethernet header: dst gateway, src host.
    vx[50..56].copy_from_slice(&GW_W);
    vx[56..62].copy_from_slice(&MAC_HOST_W);
    vx[62..64].copy_from_slice(&[0x08, 0x00]);
    w_host.send(&vx)?;
    let want = inner_we.clone();
    let got = e_host.recv_matching(Duration::from_secs(3), move |f| {
        f.len() > 18 && f[12..14] == [0x81, 0x00] && f[18..] == want[..]
    });
    let Some(got) = got else {
        for (n, node) in [("east", &east_node), ("west", &west_node)] {
            for side in [Side::Wire, Side::Tenant] {
                let c: Vec<_> = node
                    .dp
                    .counters(side)?
                    .into_iter()
                    .filter(|c| c.1 > 0)
                    .collect();
                eprintln!("{n} {side:?}: {c:?}");
            }
        }
        eprintln!("east: {:?}", east_node.stop());
        eprintln!("west: {:?}", west_node.stop());
        anyhow::bail!("no VLAN frame at East's tenant host");
    };
    assert_eq!(
        &got[..6],
        &MAC_HOST_E,
        "dst MAC learned from the host's own traffic"
    );
    assert_eq!(&got[6..12], &GW_E);
    assert_eq!(&got[14..16], &[0x00, 100], "VLAN 100");
    assert_eq!(
        east_node
            .dp
            .counter(Side::Wire, Counter::Outcome(Outcome::WireRedirectEspUdp))?,
        1,
        "the wire carried ESP in UDP"
    );
    for (node, name) in [(&east_node, "East"), (&west_node, "West")] {
        assert_eq!(
            node.dp
                .counter(Side::Wire, Counter::Outcome(Outcome::WirePassNotEsp))?,
            0,
            "{name}: nothing but ESP on the wire"
        );
    }

    // 2b. IPv6 inside the IPv4 tunnel (6-in-4), VLAN at East to VXLAN at West.
    let inner6 = Packet::eth()
        .ipv6("2001:db8:1::5", "2001:db8:2::9")
        .udp(40000, 7)
        .payload_len(200)
        .build()[14..]
        .to_vec();
    let mut vlan6 = Vec::new();
    vlan6.extend_from_slice(&GW_E);
    vlan6.extend_from_slice(&MAC_HOST_E);
    vlan6.extend_from_slice(&[0x81, 0x00, 0x00, 100, 0x86, 0xdd]);
    vlan6.extend_from_slice(&inner6);
    e_host.send(&vlan6)?;
    let want6 = inner6.clone();
    let got = w_host
        .recv_matching(Duration::from_secs(3), move |f| {
            f.len() > 64 && f[36..38] == [0x12, 0xb5] && f[64..] == want6[..]
        })
        .context("IPv6 inner packet not delivered through the IPv4 tunnel")?;
    assert_eq!(&got[62..64], &[0x86, 0xdd], "inner ethertype IPv6");

    // 2b'. An IPv6 packet too big for the wire once encapsulated: ICMPv6 "packet too big"
    //      back to the host (IPv6 is never fragmented on the way, RFC 8200 5).
    let big6 = Packet::eth()
        .ipv6("2001:db8:1::5", "2001:db8:2::9")
        .udp(40000, 7)
        .payload_len(1452)
        .build()[14..]
        .to_vec();
    assert_eq!(big6.len(), 1500);
    let mut vlan_big6 = Vec::new();
    vlan_big6.extend_from_slice(&GW_E);
    vlan_big6.extend_from_slice(&MAC_HOST_E);
    vlan_big6.extend_from_slice(&[0x81, 0x00, 0x00, 100, 0x86, 0xdd]);
    vlan_big6.extend_from_slice(&big6);
    e_host.send(&vlan_big6)?;
    let ptb = e_host
        .recv_matching(Duration::from_secs(3), |f| {
            f.len() > 18 + 48 && f[16..18] == [0x86, 0xdd] && f[18 + 6] == 58 && f[18 + 40] == 2
        })
        .context("no ICMPv6 packet too big came back")?;
    assert_eq!(&ptb[..6], &MAC_HOST_E, "to the sender");
    assert_eq!(&ptb[14..16], &[0x00, 100], "on its VLAN");
    let mtu = u32::from_be_bytes(ptb[18 + 44..18 + 48].try_into()?);
    assert_eq!(
        mtu, 1446,
        "the largest inner packet that fits a 1500-byte wire"
    );
    assert_eq!(
        &ptb[18 + 48..18 + 48 + 40],
        &big6[..40],
        "quotes the packet"
    );

    // 2c. IPv4 inside IPv6 outer headers (4-in-6), with ESN, through a second SA.
    let inner46 = Packet::eth()
        .ipv4("10.1.0.5", "10.3.0.9")
        .udp(40000, 7)
        .payload_len(120)
        .build()[14..]
        .to_vec();
    let mut vlan46 = Vec::new();
    vlan46.extend_from_slice(&GW_E);
    vlan46.extend_from_slice(&MAC_HOST_E);
    vlan46.extend_from_slice(&[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
    vlan46.extend_from_slice(&inner46);
    e_host.send(&vlan46)?;
    w_host
        .recv_matching(Duration::from_secs(3), is_vxlan_with(&inner46))
        .context("4-in-6 packet not delivered")?;
    assert_eq!(
        west_node.dp.sa_stats(21)?.packets,
        1,
        "came in on the IPv6 SA"
    );

    // 2d. A tenant host sending from an address outside the SA's local selectors (another
    //     subnet's, or another tenant's): the XDP policy matched its destination, the worker
    //     drops it instead of encrypting it (H2).
    let spoofed = Packet::eth()
        .ipv4("10.9.0.5", "10.2.0.9")
        .udp(40000, 7)
        .payload_len(64)
        .build()[14..]
        .to_vec();
    let mut vlan_spoofed = vlan_frame[..18].to_vec();
    vlan_spoofed.extend_from_slice(&spoofed);
    e_host.send(&vlan_spoofed)?;
    assert!(
        w_host
            .recv_matching(Duration::from_millis(500), is_vxlan_with(&spoofed))
            .is_none(),
        "a packet from outside the SA's selectors went through the tunnel"
    );

    // 3. An attacker on the wire: a valid packet, its replay, a tampered one.
    let attacker = OutboundSa::new(SPI_EW, &key_ew, false, out_ew);
    let esp_frame = |seq: u64| -> Vec<u8> {
        attacker.set_seq(seq - 1);
        let mut f = vec![0u8; 2048];
        f[..6].copy_from_slice(&MAC_WIRE_W);
        f[6..12].copy_from_slice(&MAC_WIRE_E);
        f[12..14].copy_from_slice(&[8, 0]);
        let n = attacker
            .encapsulate(&inner_ew, &mut f[14..])
            .expect("encapsulate");
        f.truncate(14 + n);
        f
    };
    let good = esp_frame(1000);
    e_wire.send(&good)?;
    w_host
        .recv_matching(Duration::from_secs(3), is_vxlan_with(&inner_ew))
        .context("seq 1000 not delivered")?;
    e_wire.send(&good)?;
    wait_for(|| {
        west_node
            .dp
            .counter(Side::Wire, Counter::Drop(DropReason::ReplayDuplicate))
            .map(|v| v == 1)
    })?;
    let mut tampered = esp_frame(2000);
    let last = tampered.len() - 20;
    tampered[last] ^= 0x01;
    e_wire.send(&tampered)?;
    assert!(
        w_host
            .recv_matching(Duration::from_millis(300), is_vxlan_with(&inner_ew))
            .is_none(),
        "a tampered packet was delivered"
    );
    assert_eq!(
        west_node.dp.replay().get(20)?.top(),
        1000,
        "a packet failing the ICV must not move the window"
    );
    e_wire.send(&esp_frame(2000))?;
    w_host
        .recv_matching(Duration::from_secs(3), is_vxlan_with(&inner_ew))
        .context("seq 2000 not delivered after the tampered copy")?;
    assert_eq!(west_node.dp.replay().get(20)?.top(), 2000);

    // 4. The same, fragmented on the way (as strongSwan's peers do near the MTU): the XDP
    //    program hands the fragments over, the worker reassembles and decrypts.
    let whole = esp_frame(3000);
    let frags = fragment_v4(&whole, 256);
    assert!(frags.len() >= 2);
    for f in frags.iter().rev() {
        e_wire.send(f)?;
    }
    w_host
        .recv_matching(Duration::from_secs(3), is_vxlan_with(&inner_ew))
        .context("fragmented ESP not delivered")?;
    assert_eq!(
        west_node
            .dp
            .counter(Side::Wire, Counter::Outcome(Outcome::WireRedirectFragment))?,
        frags.len() as u64
    );

    let east_stats = east_node.stop();
    let west_stats = west_node.stop();
    assert_eq!(west_stats.dropped(DropReason::BadIcv), 1, "{west_stats:?}");
    assert_eq!(west_stats.decrypted, 6, "{west_stats:?}");
    assert_eq!(west_stats.fragments_seen, frags.len() as u64);
    assert_eq!(east_stats.decrypted, 1, "{east_stats:?}");
    assert_eq!(east_stats.encrypted, 3, "{east_stats:?}");
    assert_eq!(east_stats.icmp_too_big, 1, "{east_stats:?}");
    assert_eq!(
        east_stats.dropped(DropReason::SourceNotInSelectors),
        1,
        "{east_stats:?}"
    );
    assert_eq!(west_stats.encrypted, 1, "{west_stats:?}");
    Ok(())
}

/// Splits an Ethernet + IPv4 frame into IPv4 fragments of at most `mtu` bytes of payload
/// (a multiple of 8).
fn fragment_v4(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let hlen = (ip[0] & 0x0f) as usize * 4;
    let payload = &ip[hlen..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let n = (payload.len() - off).min(mtu);
        let more = off + n < payload.len();
        let mut h = ip[..hlen].to_vec();
        h[2..4].copy_from_slice(&((hlen + n) as u16).to_be_bytes());
        let frag = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = vpn_tests::pkt::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = eth.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(&payload[off..off + n]);
        out.push(f);
        off += n;
    }
    out
}

fn wait_for(mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("condition not reached within 3 s")
}
