//! A small packet builder for fixtures, in the spirit of katran's `Eth().IPv4().UDP()`:
//! layers are listed outside-in and assembled inside-out, so lengths, next-protocol fields and
//! the IPv4 header checksum come out right unless a test overrides them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

#[derive(Clone, Debug)]
enum Layer {
    Eth { ethertype: Option<u16> },
    Vlan { tpid: u16, vid: u16 },
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    Udp { sport: u16, dport: u16 },
    Vxlan { flags: u8, vni: u32 },
    Esp { spi: u32, seq: u32 },
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: Option<u8>,
    pub options: Vec<u8>,
    /// Flags (3 bits) and fragment offset (13 bits, in 8-byte units).
    pub frag: u16,
    /// Override of the IHL nibble (to build broken headers).
    pub ihl: Option<u8>,
    /// Override of the total length.
    pub tot_len: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next: Option<u8>,
    /// Extension headers, outside-in: (type, body). Bodies are padded to 8-byte multiples
    /// (fragment headers are 8 bytes with `body` = offset/M field + id).
    pub ext: Vec<(u8, Vec<u8>)>,
}

#[derive(Clone, Debug, Default)]
pub struct Packet {
    layers: Vec<Layer>,
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ESP: u8 = 50;
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_FRAGMENT: u8 = 44;

impl Packet {
    pub fn eth() -> Packet {
        Packet {
            layers: vec![Layer::Eth { ethertype: None }],
        }
    }

    /// Ethernet with a fixed ethertype (ARP and such).
    pub fn eth_type(ethertype: u16) -> Packet {
        Packet {
            layers: vec![Layer::Eth {
                ethertype: Some(ethertype),
            }],
        }
    }

    pub fn vlan(mut self, vid: u16) -> Packet {
        self.layers.push(Layer::Vlan { tpid: 0x8100, vid });
        self
    }

    pub fn qinq(mut self, outer: u16) -> Packet {
        self.layers.push(Layer::Vlan {
            tpid: 0x88a8,
            vid: outer,
        });
        self
    }

    pub fn ipv4(self, src: &str, dst: &str) -> Packet {
        self.ipv4_with(src, dst, |_| {})
    }

    pub fn ipv4_with(mut self, src: &str, dst: &str, f: impl FnOnce(&mut Ipv4)) -> Packet {
        let mut h = Ipv4 {
            src: src.parse().expect("IPv4 src"),
            dst: dst.parse().expect("IPv4 dst"),
            proto: None,
            options: vec![],
            frag: 0,
            ihl: None,
            tot_len: None,
        };
        f(&mut h);
        self.layers.push(Layer::Ipv4(h));
        self
    }

    pub fn ipv6(self, src: &str, dst: &str) -> Packet {
        self.ipv6_with(src, dst, |_| {})
    }

    pub fn ipv6_with(mut self, src: &str, dst: &str, f: impl FnOnce(&mut Ipv6)) -> Packet {
        let mut h = Ipv6 {
            src: src.parse().expect("IPv6 src"),
            dst: dst.parse().expect("IPv6 dst"),
            next: None,
            ext: vec![],
        };
        f(&mut h);
        self.layers.push(Layer::Ipv6(h));
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Packet {
        self.layers.push(Layer::Udp { sport, dport });
        self
    }

    pub fn vxlan(self, vni: u32) -> Packet {
        self.vxlan_flags(0x08, vni)
    }

    pub fn vxlan_flags(mut self, flags: u8, vni: u32) -> Packet {
        self.layers.push(Layer::Vxlan { flags, vni });
        self
    }

    /// VXLAN's inner Ethernet header.
    pub fn inner_eth(mut self) -> Packet {
        self.layers.push(Layer::Eth { ethertype: None });
        self
    }

    pub fn esp(mut self, spi: u32, seq: u32) -> Packet {
        self.layers.push(Layer::Esp { spi, seq });
        self
    }

    pub fn payload(mut self, bytes: &[u8]) -> Packet {
        self.layers.push(Layer::Raw(bytes.to_vec()));
        self
    }

    /// `n` bytes of a recognisable pattern.
    pub fn payload_len(self, n: usize) -> Packet {
        let p: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        self.payload(&p)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        // What the layer below the current one is, for next-protocol fields.
        let mut below: Option<&Layer> = None;
        for layer in self.layers.iter().rev() {
            let mut out = Vec::new();
            match layer {
                Layer::Eth { ethertype } => {
                    out.extend_from_slice(&MAC_B);
                    out.extend_from_slice(&MAC_A);
                    let t = ethertype.unwrap_or_else(|| ethertype_of(below));
                    out.extend_from_slice(&t.to_be_bytes());
                }
                Layer::Vlan { tpid, vid } => {
                    // The TPID belongs in the header before us: emitted by Eth via ethertype_of.
                    let _ = tpid;
                    out.extend_from_slice(&vid.to_be_bytes());
                    out.extend_from_slice(&ethertype_of(below).to_be_bytes());
                }
                Layer::Ipv4(h) => {
                    let ihl = h.ihl.unwrap_or((5 + h.options.len().div_ceil(4)) as u8);
                    let hlen = 20 + h.options.len().div_ceil(4) * 4;
                    let tot = h.tot_len.unwrap_or((hlen + inner.len()) as u16);
                    out.push(0x40 | (ihl & 0x0f));
                    out.push(0);
                    out.extend_from_slice(&tot.to_be_bytes());
                    out.extend_from_slice(&0x1234u16.to_be_bytes());
                    out.extend_from_slice(&h.frag.to_be_bytes());
                    out.push(64);
                    out.push(h.proto.unwrap_or_else(|| proto_of(below)));
                    out.extend_from_slice(&[0, 0]);
                    out.extend_from_slice(&h.src.octets());
                    out.extend_from_slice(&h.dst.octets());
                    out.extend_from_slice(&h.options);
                    out.resize(hlen, 0);
                    let c = checksum(&out);
                    out[10..12].copy_from_slice(&c.to_be_bytes());
                }
                Layer::Ipv6(h) => {
                    let mut ext = Vec::new();
                    let mut next = h.next.unwrap_or_else(|| proto_of(below));
                    for (ty, body) in h.ext.iter().rev() {
                        let mut e = vec![next];
                        if *ty == IPV6_FRAGMENT {
                            e.push(0);
                            e.extend_from_slice(body);
                            e.resize(8, 0);
                        } else {
                            let len = (2 + body.len()).div_ceil(8) * 8;
                            e.push((len / 8 - 1) as u8);
                            e.extend_from_slice(body);
                            e.resize(len, 0);
                        }
                        e.extend_from_slice(&ext);
                        ext = e;
                        next = *ty;
                    }
                    out.extend_from_slice(&[0x60, 0, 0, 0]);
                    out.extend_from_slice(&((ext.len() + inner.len()) as u16).to_be_bytes());
                    out.push(next);
                    out.push(64);
                    out.extend_from_slice(&h.src.octets());
                    out.extend_from_slice(&h.dst.octets());
                    out.extend_from_slice(&ext);
                }
                Layer::Udp { sport, dport } => {
                    out.extend_from_slice(&sport.to_be_bytes());
                    out.extend_from_slice(&dport.to_be_bytes());
                    out.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
                    out.extend_from_slice(&[0, 0]);
                }
                Layer::Vxlan { flags, vni } => {
                    out.extend_from_slice(&[*flags, 0, 0, 0]);
                    out.extend_from_slice(&(vni << 8).to_be_bytes());
                }
                Layer::Esp { spi, seq } => {
                    out.extend_from_slice(&spi.to_be_bytes());
                    out.extend_from_slice(&seq.to_be_bytes());
                }
                Layer::Raw(b) => out.extend_from_slice(b),
            }
            out.extend_from_slice(&inner);
            inner = out;
            below = Some(layer);
        }
        inner
    }
}

fn ethertype_of(below: Option<&Layer>) -> u16 {
    match below {
        Some(Layer::Vlan { tpid, .. }) => *tpid,
        Some(Layer::Ipv4(_)) => 0x0800,
        Some(Layer::Ipv6(_)) => 0x86dd,
        _ => 0x88b5, // IEEE local experimental
    }
}

fn proto_of(below: Option<&Layer>) -> u8 {
    match below {
        Some(Layer::Udp { .. }) => IPPROTO_UDP,
        Some(Layer::Esp { .. }) => IPPROTO_ESP,
        _ => 253, // RFC 3692 experimental
    }
}

/// RFC 1071 Internet checksum.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_in_ipv4_layout() {
        let p = Packet::eth()
            .ipv4("192.0.2.1", "192.0.2.2")
            .esp(0x1000, 7)
            .payload_len(4)
            .build();
        assert_eq!(p.len(), 14 + 20 + 8 + 4);
        assert_eq!(&p[12..14], &[0x08, 0x00]);
        assert_eq!(p[14], 0x45);
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 32);
        assert_eq!(p[23], 50);
        assert_eq!(checksum(&p[14..34]), 0, "header checksum verifies");
        assert_eq!(&p[34..42], &[0, 0, 0x10, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn vlan_and_vxlan_layout() {
        let p = Packet::eth().vlan(100).ipv4("10.0.0.1", "10.0.0.2").build();
        assert_eq!(&p[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        let v = Packet::eth()
            .ipv4("1.1.1.1", "2.2.2.2")
            .udp(1, 4789)
            .vxlan(0x123456)
            .inner_eth()
            .ipv4("10.0.0.1", "10.0.0.2")
            .build();
        assert_eq!(&v[42..50], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&v[62..64], &[0x08, 0x00]);
    }

    #[test]
    fn ipv6_extension_chain() {
        let p = Packet::eth()
            .ipv6_with("2001:db8::1", "2001:db8::2", |h| {
                h.ext.push((IPV6_HOPOPTS, vec![1, 4, 0, 0, 0, 0]))
            })
            .esp(0x1000, 1)
            .build();
        // next header of the fixed header is hop-by-hop, which points at ESP.
        assert_eq!(p[14 + 6], IPV6_HOPOPTS);
        assert_eq!(p[54], IPPROTO_ESP);
        assert_eq!(u16::from_be_bytes([p[18], p[19]]), 8 + 8);
    }
}
