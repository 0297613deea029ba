//! IP and UDP header helpers for the worker: reading what ESP needs from an inner packet and
//! writing outer headers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_NONE: u8 = 59;

/// What the tunnel needs to know about an inner IP packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InnerInfo {
    pub v6: bool,
    /// Length from the IP header's own length field.
    pub len: usize,
    /// Traffic class / TOS byte (DSCP + ECN), copied to the outer header (RFC 4301 5.1.2).
    pub dscp_ecn: u8,
    /// IPv4 don't-fragment bit.
    pub df: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// Parses the start of an IPv4 or IPv6 packet; `None` if it is not a consistent one.
pub fn inner_info(p: &[u8]) -> Option<InnerInfo> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < 20 {
                return None;
            }
            let ihl = (p[0] & 0x0f) as usize * 4;
            let len = u16::from_be_bytes([p[2], p[3]]) as usize;
            if ihl < 20 || len < ihl || len > p.len() {
                return None;
            }
            Some(InnerInfo {
                v6: false,
                len,
                dscp_ecn: p[1],
                df: p[6] & 0x40 != 0,
                src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
                dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let len = 40 + u16::from_be_bytes([p[4], p[5]]) as usize;
            if len > p.len() {
                return None;
            }
            let a = |o: usize| -> [u8; 16] { p[o..o + 16].try_into().expect("16 bytes") };
            Some(InnerInfo {
                v6: true,
                len,
                dscp_ecn: (p[0] << 4) | (p[1] >> 4),
                df: true,
                src: IpAddr::V6(Ipv6Addr::from(a(8))),
                dst: IpAddr::V6(Ipv6Addr::from(a(24))),
            })
        }
        _ => None,
    }
}

/// RFC 1071 one's-complement sum of 16-bit big-endian words (an odd last byte is padded),
/// neither folded nor inverted (see [`fold`]).
pub(crate) fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

/// Folds a [`sum16`] into 16 bits (not inverted).
pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

pub fn ipv4_checksum(h: &[u8]) -> u16 {
    !fold(sum16(0, h))
}

#[allow(clippy::too_many_arguments)]
pub fn write_ipv4_header(
    h: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    total_len: usize,
    ttl: u8,
    tos: u8,
    df: bool,
    id: u16,
) {
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(&h[..20]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

pub fn write_ipv6_header(
    h: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    payload_len: usize,
    hop_limit: u8,
    tclass: u8,
) {
    h[0] = 0x60 | (tclass >> 4);
    h[1] = tclass << 4;
    h[2] = 0;
    h[3] = 0;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = proto;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
}

/// Writes the UDP header at `off` for a datagram of `len` bytes (header included) that is
/// already in place after it. IPv4: checksum 0, as RFC 3948 2.1 allows; IPv6: computed.
pub fn write_udp_header(
    p: &mut [u8],
    off: usize,
    sport: u16,
    dport: u16,
    len: usize,
    src: &IpAddr,
    dst: &IpAddr,
) {
    p[off..off + 2].copy_from_slice(&sport.to_be_bytes());
    p[off + 2..off + 4].copy_from_slice(&dport.to_be_bytes());
    p[off + 4..off + 6].copy_from_slice(&(len as u16).to_be_bytes());
    p[off + 6..off + 8].copy_from_slice(&[0, 0]);
    if let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) {
        let mut acc = sum16(0, &s.octets());
        acc = sum16(acc, &d.octets());
        acc += len as u32 + IPPROTO_UDP as u32;
        acc = sum16(acc, &p[off..off + len]);
        let mut c = !fold(acc);
        if c == 0 {
            c = 0xffff;
        }
        p[off + 6..off + 8].copy_from_slice(&c.to_be_bytes());
    }
}

/// Verifies a UDP checksum over IPv6 (for tests and for the worker's receive path).
pub fn udp6_checksum_ok(src: &Ipv6Addr, dst: &Ipv6Addr, udp: &[u8]) -> bool {
    let mut acc = sum16(0, &src.octets());
    acc = sum16(acc, &dst.octets());
    acc += udp.len() as u32 + IPPROTO_UDP as u32;
    acc = sum16(acc, udp);
    fold(acc) == 0xffff
}
