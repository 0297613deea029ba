//! Plain tenant frames for the generator: Ethernet, an optional 802.1Q tag, IPv4 or IPv6, UDP
//! and a zero payload, with correct lengths and checksums (IPv4 header, UDP over the
//! pseudo-header for both families).
//!
//! Sizes are Ethernet frame lengths without the FCS, as a veth carries them and as the other
//! benchmarks count them (a "64-byte frame" is 14 + 20 + 8 + 22 bytes of payload).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use crate::esp::packet::{
    IPPROTO_UDP, fold, ipv4_checksum, sum16, write_ipv4_header, write_ipv6_header,
};

/// The simple IMIX: 7 : 4 : 1 frames of 64, 570 and 1518 bytes (mean 353.8 bytes).
pub const IMIX: [(usize, u32); 3] = [(64, 7), (570, 4), (1518, 1)];
/// One period of the IMIX in the order the generators send it (the large frames spread out).
pub const IMIX_ORDER: [usize; 12] = [64, 570, 64, 64, 570, 64, 1518, 64, 570, 64, 570, 64];
pub const MIN_SIZE: usize = 64;
pub const MAX_SIZE: usize = 1518;

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const UDP_LEN: usize = 8;

/// Frame size: one length, or the IMIX.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Size {
    Fixed(usize),
    Imix,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Size::Imix);
        }
        let n: usize = s.trim_end_matches(['B', 'b']).parse().map_err(|_| {
            format!("{s:?}: a frame size in bytes ({MIN_SIZE}..={MAX_SIZE}) or imix")
        })?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&n) {
            return Err(format!(
                "{n}: frame sizes are {MIN_SIZE}..={MAX_SIZE} bytes (Ethernet, no FCS)"
            ));
        }
        Ok(Size::Fixed(n))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Fixed(n) => write!(f, "{n}B"),
            Size::Imix => f.write_str("imix"),
        }
    }
}

impl Size {
    /// (length, weight) of each frame length in the mix.
    pub fn classes(&self) -> Vec<(usize, u32)> {
        match self {
            Size::Fixed(n) => vec![(*n, 1)],
            Size::Imix => IMIX.to_vec(),
        }
    }

    /// One period of the lengths, in sending order.
    pub fn sequence(&self) -> Vec<usize> {
        match self {
            Size::Fixed(n) => vec![*n],
            Size::Imix => IMIX_ORDER.to_vec(),
        }
    }

    /// Mean frame length.
    pub fn mean(&self) -> f64 {
        let c = self.classes();
        let w: u32 = c.iter().map(|(_, w)| w).sum();
        c.iter().map(|(l, w)| *l as f64 * *w as f64).sum::<f64>() / w as f64
    }

    /// The same mix with every length limited to `max` (and raised to `min`).
    pub fn clamp(&self, min: usize, max: usize) -> Vec<(usize, u32)> {
        self.classes()
            .into_iter()
            .map(|(l, w)| (l.clamp(min, max.max(min)), w))
            .collect()
    }
}

/// One period of frame lengths with the weights of `classes`, the large ones spread out
/// (for the IMIX classes this is `frame::IMIX_ORDER`).
pub fn sequence(classes: &[(usize, u32)]) -> Vec<usize> {
    if classes.len() == 3 && classes.iter().map(|c| c.1).eq(IMIX.map(|c| c.1)) {
        // The IMIX order, with the lengths as given (they may have been capped).
        return IMIX_ORDER
            .iter()
            .map(|l| classes[IMIX.iter().position(|c| c.0 == *l).expect("IMIX length")].0)
            .collect();
    }
    classes
        .iter()
        .flat_map(|(l, w)| std::iter::repeat_n(*l, *w as usize))
        .collect()
}

/// The headers of one stream of UDP frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// The UDP checksum of `udp` (header with a zero checksum field, and payload) between `src`
/// and `dst` (RFC 768, RFC 8200 8.1); 0 comes out as 0xffff.
pub fn udp_checksum(src: &IpAddr, dst: &IpAddr, udp: &[u8]) -> u16 {
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        (s, d) => {
            let v6 = |a: &IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            sum16(sum16(0, &v6(s)), &v6(d))
        }
    };
    acc += udp.len() as u32 + IPPROTO_UDP as u32;
    acc = sum16(acc, udp);
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether a UDP datagram's checksum verifies (for tests and the sink side).
pub fn udp_checksum_ok(src: &IpAddr, dst: &IpAddr, udp: &[u8]) -> bool {
    let mut z = udp.to_vec();
    if z.len() < UDP_LEN {
        return false;
    }
    let want = u16::from_be_bytes([z[6], z[7]]);
    z[6] = 0;
    z[7] = 0;
    want == udp_checksum(src, dst, &z)
}

/// Whether an IPv4 header's checksum verifies.
pub fn ipv4_header_ok(h: &[u8]) -> bool {
    h.len() >= 20 && ipv4_checksum(&h[..(h[0] & 0x0f) as usize * 4]) == 0
}

impl UdpFrame {
    fn ip_header_len(&self) -> usize {
        if self.src.is_ipv6() { 40 } else { 20 }
    }

    /// Bytes in front of the IP header (Ethernet and the tag).
    pub fn l2_len(&self) -> usize {
        ETH_LEN + if self.vlan.is_some() { VLAN_LEN } else { 0 }
    }

    /// The smallest frame: headers and no payload.
    pub fn min_len(&self) -> usize {
        self.l2_len() + self.ip_header_len() + UDP_LEN
    }

    /// The IP packet (header, UDP, zero payload) of a frame of `frame_len` bytes.
    pub fn ip_packet(&self, frame_len: usize) -> Vec<u8> {
        let ip_len = frame_len.max(self.min_len()) - self.l2_len();
        let mut p = vec![0u8; ip_len];
        let hl = self.ip_header_len();
        let udp_len = ip_len - hl;
        p[hl..hl + 2].copy_from_slice(&self.sport.to_be_bytes());
        p[hl + 2..hl + 4].copy_from_slice(&self.dport.to_be_bytes());
        p[hl + 4..hl + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let c = udp_checksum(&self.src, &self.dst, &p[hl..]);
        p[hl + 6..hl + 8].copy_from_slice(&c.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                write_ipv4_header(&mut p[..20], s, d, IPPROTO_UDP, ip_len, 64, 0, false, 0)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                write_ipv6_header(&mut p[..40], s, d, IPPROTO_UDP, udp_len, 64, 0)
            }
            // Mixed families are rejected by the option parser; keep the frame well formed.
            (s, _) => {
                let v4 = |a: IpAddr| match a {
                    IpAddr::V4(a) => a,
                    IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                write_ipv4_header(
                    &mut p[..20],
                    v4(s),
                    v4(s),
                    IPPROTO_UDP,
                    ip_len,
                    64,
                    0,
                    false,
                    0,
                )
            }
        }
        p
    }

    /// The whole frame, `frame_len` bytes (at least [`UdpFrame::min_len`]).
    pub fn build(&self, frame_len: usize) -> Vec<u8> {
        let ip = self.ip_packet(frame_len);
        let mut f = Vec::with_capacity(self.l2_len() + ip.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let ethertype: u16 = if self.src.is_ipv6() { 0x86dd } else { 0x0800 };
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v6: bool, vlan: Option<u16>) -> UdpFrame {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            ("fd00:1::5".parse().unwrap(), "fd00:2::9".parse().unwrap())
        } else {
            ("10.1.0.5".parse().unwrap(), "10.2.0.9".parse().unwrap())
        };
        UdpFrame {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            src,
            dst,
            sport: 10_000,
            dport: 9,
        }
    }

    #[test]
    fn ipv4_frame_lengths_and_checksums() {
        for (vlan, len) in [(None, 64), (Some(100), 64), (None, 1514), (Some(7), 1518)] {
            let s = spec(false, vlan);
            let f = s.build(len);
            assert_eq!(f.len(), len);
            let l3 = s.l2_len();
            if let Some(v) = vlan {
                assert_eq!(&f[12..14], &[0x81, 0x00]);
                assert_eq!(u16::from_be_bytes([f[14], f[15]]), v);
                assert_eq!(&f[16..18], &[0x08, 0x00]);
            } else {
                assert_eq!(&f[12..14], &[0x08, 0x00]);
            }
            let ip = &f[l3..];
            assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, len - l3);
            assert_eq!(ip[9], IPPROTO_UDP);
            assert!(ipv4_header_ok(ip), "IPv4 header checksum");
            let udp = &ip[20..];
            assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
            assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 10_000);
            assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 9);
            assert!(udp_checksum_ok(&s.src, &s.dst, udp), "UDP checksum");
            assert_ne!(&udp[6..8], &[0, 0], "IPv4 UDP checksum filled in");
        }
    }

    #[test]
    fn ipv6_frame_lengths_and_checksums() {
        for (vlan, len) in [(None, 64), (Some(100), 66), (Some(100), 1518)] {
            let s = spec(true, vlan);
            let f = s.build(len);
            assert_eq!(f.len(), len);
            let ip = &f[s.l2_len()..];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(ip[6], IPPROTO_UDP);
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, ip.len() - 40);
            let udp = &ip[40..];
            assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
            assert!(udp_checksum_ok(&s.src, &s.dst, udp));
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksums() {
        let s = spec(false, None);
        let mut f = s.build(100);
        f[14 + 20 + 8 + 3] ^= 0x10;
        assert!(!udp_checksum_ok(&s.src, &s.dst, &f[34..]));
        f[14 + 8] ^= 1; // TTL
        assert!(!ipv4_header_ok(&f[14..]));
    }

    #[test]
    fn too_short_frames_grow_to_the_headers() {
        let s = spec(true, Some(100));
        assert_eq!(s.min_len(), 14 + 4 + 40 + 8);
        assert_eq!(s.build(64).len(), 66);
        assert_eq!(s.ip_packet(64).len(), 48);
    }

    #[test]
    fn imix_is_7_4_1_of_64_570_1518() {
        let seq = Size::Imix.sequence();
        assert_eq!(seq.len(), 12);
        for (len, w) in IMIX {
            assert_eq!(seq.iter().filter(|l| **l == len).count() as u32, w);
        }
        assert!((Size::Imix.mean() - 4246.0 / 12.0).abs() < 1e-9);
        assert_eq!("imix".parse::<Size>(), Ok(Size::Imix));
        assert_eq!("1400".parse::<Size>(), Ok(Size::Fixed(1400)));
        assert_eq!("64B".parse::<Size>(), Ok(Size::Fixed(64)));
        assert!("63".parse::<Size>().is_err());
        assert!("1519".parse::<Size>().is_err());
        assert_eq!(
            Size::Imix.clamp(66, 1514),
            vec![(66, 7), (570, 4), (1514, 1)]
        );
    }
}
