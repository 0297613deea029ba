//! Path MTU through the tunnel: an inner packet that would not fit the wire after
//! encapsulation is either answered with ICMP "fragmentation needed" / ICMPv6 "packet too
//! big" (it may not be fragmented: IPv4 DF, or IPv6), so path MTU discovery works through the
//! tunnel (RFC 1191, RFC 8201, RFC 4301 8.2), or fragmented before encryption, as RFC 4459
//! prefers to fragmenting the ESP packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::packet::{InnerInfo, ipv4_checksum};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// RFC 1812 4.3.2.3: an ICMP error holds as much of the packet as fits in 576 bytes.
const ICMP4_MAX: usize = 576;
/// RFC 4443 2.4 (c): as much as fits in the minimum IPv6 MTU.
const ICMP6_MAX: usize = 1280;

fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    let mut c = b.chunks_exact(2);
    for w in &mut c {
        acc += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [last] = c.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The ICMP(v6) error telling the sender of `orig` to use at most `mtu` bytes. `from` is the
/// gateway address it comes from (same family as `orig`). Returns the IP packet.
pub fn too_big(orig: &[u8], info: &InnerInfo, mtu: u16, from: IpAddr) -> Option<Vec<u8>> {
    match (info.src, from) {
        (IpAddr::V4(dst), IpAddr::V4(src)) => Some(frag_needed_v4(orig, src, dst, mtu)),
        (IpAddr::V6(dst), IpAddr::V6(src)) => Some(packet_too_big_v6(orig, src, dst, mtu)),
        _ => None,
    }
}

fn frag_needed_v4(orig: &[u8], src: Ipv4Addr, dst: Ipv4Addr, mtu: u16) -> Vec<u8> {
    let quote = &orig[..orig.len().min(ICMP4_MAX - 28)];
    let total = 28 + quote.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[1] = 0xc0; // network control
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = IPPROTO_ICMP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 3; // destination unreachable
    p[21] = 4; // fragmentation needed and DF set
    p[26..28].copy_from_slice(&mtu.to_be_bytes()); // RFC 1191 next-hop MTU
    p[28..].copy_from_slice(quote);
    let c = fold(sum16(0, &p[20..]));
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn packet_too_big_v6(orig: &[u8], src: Ipv6Addr, dst: Ipv6Addr, mtu: u16) -> Vec<u8> {
    let quote = &orig[..orig.len().min(ICMP6_MAX - 48)];
    let len = 8 + quote.len();
    let mut p = vec![0u8; 40 + len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = IPPROTO_ICMPV6;
    p[7] = 255;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40] = 2; // packet too big
    p[44..48].copy_from_slice(&(mtu as u32).to_be_bytes());
    p[48..].copy_from_slice(quote);
    let mut acc = sum16(0, &src.octets());
    acc = sum16(acc, &dst.octets());
    acc += len as u32 + IPPROTO_ICMPV6 as u32;
    acc = sum16(acc, &p[40..]);
    let c = fold(acc);
    p[42..44].copy_from_slice(&c.to_be_bytes());
    p
}

/// Splits an IPv4 packet (DF clear) into fragments of at most `max_len` bytes each
/// (RFC 791). Options are copied only where RFC 791 says so (the copy bit); a first
/// fragment keeps them all. Calls `f` with each fragment; returns how many.
pub fn fragment_v4(p: &[u8], max_len: usize, mut f: impl FnMut(&[u8])) -> Option<usize> {
    let ihl = (p.first()? & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([*p.get(2)?, *p.get(3)?]) as usize;
    if ihl < 20 || total > p.len() || total <= ihl {
        return None;
    }
    let orig_frag = u16::from_be_bytes([p[6], p[7]]);
    if orig_frag & 0x4000 != 0 {
        return None; // DF: must not fragment
    }
    // Options copied into later fragments: those with the copied flag (RFC 791 3.1).
    let mut later_opts = Vec::new();
    let mut i = 20;
    while i < ihl {
        match p[i] {
            0 => break,
            1 => i += 1,
            t => {
                let l = *p.get(i + 1)? as usize;
                if l < 2 || i + l > ihl {
                    return None;
                }
                if t & 0x80 != 0 {
                    later_opts.extend_from_slice(&p[i..i + l]);
                }
                i += l;
            }
        }
    }
    while later_opts.len() % 4 != 0 {
        later_opts.push(0);
    }
    let payload = &p[ihl..total];
    let base_off = (orig_frag & 0x1fff) as usize * 8;
    let last_mf = orig_frag & 0x2000 != 0;
    let mut off = 0;
    let mut n = 0;
    let mut buf = Vec::with_capacity(max_len);
    while off < payload.len() {
        let hlen = if off == 0 { ihl } else { 20 + later_opts.len() };
        let room = max_len.checked_sub(hlen)? & !7;
        if room == 0 {
            return None;
        }
        let len = (payload.len() - off).min(room);
        let more = off + len < payload.len() || last_mf;
        buf.clear();
        buf.extend_from_slice(&p[..20]);
        if off == 0 {
            buf.extend_from_slice(&p[20..ihl]);
        } else {
            buf.extend_from_slice(&later_opts);
            buf[0] = 0x40 | (hlen / 4) as u8;
        }
        buf.extend_from_slice(&payload[off..off + len]);
        let fo = ((base_off + off) / 8) as u16 | if more { 0x2000 } else { 0 };
        buf[2..4].copy_from_slice(&((hlen + len) as u16).to_be_bytes());
        buf[6..8].copy_from_slice(&fo.to_be_bytes());
        buf[10..12].copy_from_slice(&[0, 0]);
        let c = ipv4_checksum(&buf[..hlen]);
        buf[10..12].copy_from_slice(&c.to_be_bytes());
        f(&buf);
        n += 1;
        off += len;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::{super::packet::inner_info, *};
    use crate::esp::reassembly::{FragResult, Limits, Reassembler};

    fn v4_packet(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        if df {
            p[6] = 0x40;
        }
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 1, 0, 5]);
        p[16..20].copy_from_slice(&[10, 2, 0, 9]);
        let c = ipv4_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = (i * 11) as u8;
        }
        p
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        for len in [100, 1401, 1500, 3000, 9000] {
            let p = v4_packet(len, false);
            let mut r = Reassembler::new(Limits::default());
            let mut done = None;
            let n = fragment_v4(&p, 1400, |f| {
                assert!(f.len() <= 1400);
                assert_eq!(ipv4_checksum(&f[..20]), 0);
                if let FragResult::Complete(x) = r.push(f, 0) {
                    done = Some(x);
                }
            })
            .unwrap();
            if len <= 1400 {
                assert_eq!(n, 1);
            } else {
                assert_eq!(done.expect("reassembled"), p, "len {len}");
            }
        }
        assert!(
            fragment_v4(&v4_packet(1500, true), 1400, |_| {}).is_none(),
            "DF"
        );
    }

    #[test]
    fn icmp_frag_needed_is_well_formed() {
        let orig = v4_packet(1500, true);
        let info = inner_info(&orig).unwrap();
        let icmp = too_big(&orig, &info, 1438, "10.1.0.1".parse().unwrap()).unwrap();
        assert_eq!(icmp.len(), 576);
        assert_eq!(ipv4_checksum(&icmp[..20]), 0);
        assert_eq!(fold(sum16(0, &icmp[20..])), 0, "ICMP checksum");
        assert_eq!((icmp[20], icmp[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1438);
        assert_eq!(&icmp[16..20], &[10, 1, 0, 5], "back to the sender");
        assert_eq!(&icmp[28..48], &orig[..20], "quotes the header");
    }

    #[test]
    fn icmpv6_packet_too_big_is_well_formed() {
        let mut orig = vec![0u8; 1500];
        orig[0] = 0x60;
        orig[4..6].copy_from_slice(&1460u16.to_be_bytes());
        orig[6] = 17;
        let s: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
        orig[8..24].copy_from_slice(&s.octets());
        let info = inner_info(&orig).unwrap();
        let from: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let icmp = too_big(&orig, &info, 1430, IpAddr::V6(from)).unwrap();
        assert_eq!(icmp.len(), 1280);
        assert_eq!(icmp[40], 2);
        assert_eq!(u32::from_be_bytes(icmp[44..48].try_into().unwrap()), 1430);
        let mut acc = sum16(0, &from.octets());
        acc = sum16(acc, &s.octets());
        acc += (icmp.len() - 40) as u32 + 58;
        assert_eq!(fold(sum16(acc, &icmp[40..])), 0, "ICMPv6 checksum");
    }
}
