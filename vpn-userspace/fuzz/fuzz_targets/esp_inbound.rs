//! The AF_XDP worker's wire-side path over (XdpMeta, frame) (`worker::receive_wire_frame`,
//! the code `poll_wire` runs for each frame): metadata checks, SA lookup, replay window, ESP
//! decapsulation, fragment reassembly, selectors, and re-tagging toward the tenant.
//!
//! The input is a sequence of records. A raw record is metadata and frame as given. A sealed
//! record is a plaintext (an inner packet, with or without the ESP trailer, as the input says)
//! that the harness encrypts as the peer would, with the SA's key, so the decrypted path
//! (padding, next header, inner packet, selectors, VLAN/VXLAN re-tagging) is fuzzed and not
//! only the ICV check; optionally a byte is flipped after sealing, or the outer IPv4 packet is
//! fragmented and its fragments delivered in either order.

#![no_main]

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
};

use libfuzzer_sys::fuzz_target;
use vpn_common::{
    DropReason, ReplayWindow, XdpMeta,
    meta::{META_F_IPV6, META_F_UDP_ENCAP, META_KIND_ESP_IN, META_KIND_FRAGMENT, META_MAGIC},
};
use vpn_userspace::{
    config::parse_prefix,
    dataplane::{
        ReplayTable, SaTables,
        worker::{InboundState, Selector, Tenant, TenantLink, TxRing, receive_wire_frame},
    },
    esp::{
        InboundSa,
        crypto::{Cipher, SaKey},
        packet::{inner_info, write_ipv4_header, write_ipv6_header, write_udp_header},
        pmtu::fragment_v4,
        reassembly::{Limits, Reassembler},
    },
};

/// The inbound SAs: (SPI, cipher, ESN, tenant).
const SAS: [(u32, Cipher, bool, u32); 2] = [
    (0x1000, Cipher::Aes128Gcm16, false, 1),
    (0x2000, Cipher::Aes256Gcm16, true, 2),
];

struct Fixture {
    tables: SaTables,
    keys: Vec<SaKey>,
    tenants: HashMap<u32, Tenant>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tables = SaTables::new();
        let mut keys = vec![];
        for (slot, (spi, cipher, esn, tenant)) in SAS.into_iter().enumerate() {
            let keymat: Vec<u8> = (0..cipher.keymat_len())
                .map(|i| i as u8 ^ spi as u8)
                .collect();
            let key = SaKey::from_keymat(cipher, &keymat).unwrap();
            let p = |s| parse_prefix(s).unwrap();
            // The first SA carries 10.2.0.0/24 -> 10.1.0.0/24 only; the second, anything.
            let selectors = if slot == 0 {
                vec![Selector {
                    src: p("10.2.0.0/24"),
                    dst: p("10.1.0.0/24"),
                }]
            } else {
                vec![]
            };
            tables.insert_inbound(InboundState {
                sa: InboundSa::new(spi, &key, esn),
                slot: slot as u32,
                tenant,
                selectors,
            });
            keys.push(key);
        }
        let tenant = |link| Tenant {
            link,
            gateway_mac: [2, 0, 0, 0, 0, 1],
            default_host_mac: [2, 0, 0, 0, 0, 2],
            iface_mac: [2, 0, 0, 0, 0, 3],
            gateway_v4: None,
            gateway_v6: None,
            local_subnets: vec![],
        };
        let tenants = HashMap::from([
            (1, tenant(TenantLink::Vlan(100))),
            (
                2,
                tenant(TenantLink::Vxlan {
                    vni: 5000,
                    local_vtep: Ipv4Addr::new(10, 9, 0, 1),
                    remote_vtep: Ipv4Addr::new(10, 9, 0, 2),
                    vtep_mac: [2, 0, 0, 0, 0, 4],
                }),
            ),
        ]);
        Fixture {
            tables,
            keys,
            tenants,
        }
    })
}

/// The tenant side: frames as the worker wrote them, in UMEM-sized buffers.
#[derive(Default)]
struct Sink(Vec<Vec<u8>>);

impl TxRing for Sink {
    fn send(&mut self, f: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        // As `XskSocket::send`: a frame that does not fit is given back, and counted.
        let mut buf = vec![0u8; 2048];
        match f(&mut buf) {
            Some(n) if n <= buf.len() => {
                buf.truncate(n);
                self.0.push(buf);
                true
            }
            _ => false,
        }
    }
}

/// Reads the input front to back; short reads give zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }
}

/// An Ethernet frame with one ESP packet sealed by the peer of SA `slot`, and its metadata.
fn sealed(slot: usize, seq: u64, plain: &[u8], udp: bool, v6: bool) -> (XdpMeta, Vec<u8>) {
    let f = fixture();
    let (spi, _, esn, _) = SAS[slot];
    let key = &f.keys[slot];
    let l3 = 14;
    let ip_len = if v6 { 40 } else { 20 };
    let esp_off = l3 + ip_len + if udp { 8 } else { 0 };
    let iv = seq.to_be_bytes();
    let mut frame = vec![0u8; esp_off];
    frame[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    frame.extend_from_slice(&spi.to_be_bytes());
    frame.extend_from_slice(&(seq as u32).to_be_bytes());
    frame.extend_from_slice(&iv);
    // RFC 4106: nonce = salt || IV; AAD = SPI || sequence number (64 bits with ESN).
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&key.salt());
    nonce[4..].copy_from_slice(&iv);
    let mut aad = spi.to_be_bytes().to_vec();
    if esn {
        aad.extend_from_slice(&seq.to_be_bytes());
    } else {
        aad.extend_from_slice(&(seq as u32).to_be_bytes());
    }
    let mut ct = plain.to_vec();
    let icv = key.aead().seal(&nonce, &aad, &mut ct);
    frame.extend_from_slice(&ct);
    frame.extend_from_slice(&icv);
    let total = frame.len() - l3;
    let (src, dst) = if v6 {
        let s = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        let d = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        write_ipv6_header(
            &mut frame[l3..],
            s,
            d,
            if udp { 17 } else { 50 },
            total - 40,
            64,
            0,
        );
        (IpAddr::V6(s), IpAddr::V6(d))
    } else {
        let (s, d) = (Ipv4Addr::new(198, 51, 100, 2), Ipv4Addr::new(192, 0, 2, 1));
        write_ipv4_header(
            &mut frame[l3..],
            s,
            d,
            if udp { 17 } else { 50 },
            total,
            64,
            0,
            false,
            seq as u16,
        );
        (IpAddr::V4(s), IpAddr::V4(d))
    };
    if udp {
        let udp_len = total - ip_len;
        write_udp_header(&mut frame[l3..], ip_len, 4500, 4500, udp_len, &src, &dst);
    }
    let meta = XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_ESP_IN,
        flags: if udp { META_F_UDP_ENCAP } else { 0 } | if v6 { META_F_IPV6 } else { 0 },
        slot: slot as u32,
        tenant: SAS[slot].3,
        l3_off: l3 as u16,
        esp_off: esp_off as u16,
    };
    (meta, frame)
}

/// The inner packet with the ESP trailer the sender adds (padding 1, 2, ..., next header).
fn with_trailer(inner: &[u8]) -> Vec<u8> {
    let mut p = inner.to_vec();
    let pad = (4 - (inner.len() + 2) % 4) % 4;
    p.extend((1..=pad as u8).collect::<Vec<_>>());
    p.push(pad as u8);
    p.push(if inner.first().map(|b| b >> 4) == Some(6) {
        41
    } else {
        4
    });
    p
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let replay = ReplayTable::anonymous(SAS.len() as u32).unwrap();
    for (slot, (_, _, esn, _)) in SAS.into_iter().enumerate() {
        replay
            .init(slot as u32, ReplayWindow::new(64, esn))
            .unwrap();
    }
    let mut reassembler = Reassembler::new(Limits::default());
    let mut input = Input(data);
    let mut now = 0;
    while !input.0.is_empty() {
        let kind = input.u8();
        now += u64::from(kind >> 4) * 1_000_000;
        let mut frames = vec![];
        // Sealed by the peer, untouched: the ICV must verify.
        let mut authentic = None;
        if kind & 3 == 0 {
            let meta: [u8; 16] = input.bytes(16).try_into().unwrap_or([0; 16]);
            let mut meta = XdpMeta::from_bytes(&meta);
            if kind & 4 != 0 {
                meta.magic = META_MAGIC;
            }
            let len = usize::from(input.u16() % 2048);
            frames.push((meta, input.bytes(len).to_vec()));
        } else {
            let slot = usize::from(kind & 4 != 0);
            let seq = u64::from(input.u32())
                | if SAS[slot].2 {
                    u64::from(input.u8() % 2) << 32
                } else {
                    0
                };
            let flags = input.u8();
            let len = usize::from(input.u16() % 1600);
            let inner = input.bytes(len).to_vec();
            let plain = if flags & 1 != 0 {
                with_trailer(&inner)
            } else {
                inner.clone()
            };
            let (meta, mut frame) = sealed(slot, seq, &plain, flags & 2 != 0, flags & 4 != 0);
            if flags & 8 != 0 {
                let at = usize::from(input.u16()) % frame.len();
                frame[at] ^= input.u8() | 1;
            } else if flags & 1 != 0
                && replay
                    .get(slot as u32)
                    .unwrap()
                    .check(seq as u32)
                    .map_or(true, |s| s == seq)
            {
                // Untouched, and (with ESN) the receiver infers the high half we sealed with.
                authentic = Some(inner);
            }
            if kind & 3 == 2 && flags & 4 == 0 {
                // Outer IPv4 fragments of at most 68..=1100 bytes, as a router would cut.
                let max = 68 + usize::from(input.u16() % 1033);
                let mut frags = vec![];
                fragment_v4(&frame[14..], max, |p| {
                    let mut fr = frame[..14].to_vec();
                    fr.extend_from_slice(p);
                    let m = XdpMeta {
                        kind: META_KIND_FRAGMENT,
                        esp_off: 0,
                        ..meta
                    };
                    frags.push((m, fr));
                });
                if flags & 16 != 0 {
                    frags.reverse();
                }
                frames.extend(frags);
            } else {
                frames.push((meta, frame));
            }
        }
        for (meta, mut frame) in frames {
            let mut sink = Sink::default();
            let r = receive_wire_frame(
                &f.tables,
                &replay,
                &f.tenants,
                &mut reassembler,
                now,
                meta,
                &mut frame,
                &mut sink,
            );
            if authentic.is_some() {
                assert_ne!(r, Err(DropReason::BadIcv), "the peer's own packet");
            }
            match r {
                Ok(Some(())) => {
                    let [out] = &sink.0[..] else {
                        panic!("delivered {} frames", sink.0.len())
                    };
                    if let Some(inner) = &authentic {
                        let info = inner_info(inner).expect("it was accepted");
                        assert!(out.ends_with(&inner[..info.len]));
                    }
                }
                _ => assert!(sink.0.is_empty()),
            }
        }
        reassembler.expire(now);
    }
});
