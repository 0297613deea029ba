//! Traffic selectors (RFC 7296 2.9): the subnets of a connection as TS payloads, narrowing
//! as responder, and the check that a responder's narrowing stays inside what we offered.
//!
//! The data plane classifies by address prefix only (the XDP policy table is an LPM on the
//! destination), so selectors with a protocol or port range are not installable: as responder
//! we skip them (TS_UNACCEPTABLE when nothing else fits), and we always offer any protocol and
//! all ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{TrafficSelector, Ts};
use crate::dataplane::worker::Prefix;

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

fn bits(v4: bool) -> u32 {
    if v4 { 32 } else { 128 }
}

/// The first and last address of a prefix.
pub fn prefix_range(p: &Prefix) -> (IpAddr, IpAddr) {
    let v4 = p.addr.is_ipv4();
    let host_bits = bits(v4) - p.len as u32;
    let mask: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let start = to_u128(p.addr) & !mask;
    (from_u128(start, v4), from_u128(start | mask, v4))
}

/// The smallest set of prefixes covering exactly `start..=end` (same family).
pub fn range_prefixes(start: IpAddr, end: IpAddr) -> Vec<Prefix> {
    let v4 = start.is_ipv4();
    if v4 != end.is_ipv4() {
        return vec![];
    }
    let (mut lo, hi) = (to_u128(start), to_u128(end));
    let mut out = vec![];
    let width = bits(v4);
    while lo <= hi {
        // Largest block aligned at lo that does not pass hi.
        let mut size = if lo == 0 {
            width
        } else {
            lo.trailing_zeros().min(width)
        };
        while size > 0 {
            let last = lo
                | if size >= 128 {
                    u128::MAX
                } else {
                    (1u128 << size) - 1
                };
            if last <= hi {
                break;
            }
            size -= 1;
        }
        out.push(Prefix {
            addr: from_u128(lo, v4),
            len: (width - size) as u8,
        });
        let span_last = lo
            | if size >= 128 {
                u128::MAX
            } else {
                (1u128 << size) - 1
            };
        if span_last >= hi || span_last == u128::MAX {
            break;
        }
        lo = span_last + 1;
    }
    out
}

/// Our subnets as TS payload entries: any protocol, all ports.
pub fn to_ts(prefixes: &[Prefix]) -> Vec<Ts> {
    prefixes
        .iter()
        .map(|p| {
            let (start, end) = prefix_range(p);
            Ts::Range(TrafficSelector {
                ip_proto: 0,
                start_port: 0,
                end_port: 65535,
                start,
                end,
            })
        })
        .collect()
}

fn any_port(t: &TrafficSelector) -> bool {
    t.ip_proto == 0 && t.start_port == 0 && t.end_port == 65535
}

/// The selectors of one side split into more prefixes than the per-CHILD_SA limit
/// (`[ike] max_selectors`). Unbounded, a peer's ragged ranges become thousands of prefixes:
/// their cross product is scanned per decrypted packet and each one takes a node-wide policy
/// slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TooMany;

/// Responder narrowing: the intersection of the offered selectors with our prefixes, as at
/// most `max` prefixes. Empty means TS_UNACCEPTABLE; so does `TooMany` (we do not pick a
/// subset on the peer's behalf).
pub fn narrow(offered: &[Ts], ours: &[Prefix], max: usize) -> Result<Vec<Prefix>, TooMany> {
    let mut out: Vec<Prefix> = vec![];
    for t in offered {
        let Ts::Range(t) = t else { continue };
        if !any_port(t) {
            continue;
        }
        for p in ours {
            if p.addr.is_ipv4() != t.start.is_ipv4() {
                continue;
            }
            let (ps, pe) = prefix_range(p);
            let lo = to_u128(ps).max(to_u128(t.start));
            let hi = to_u128(pe).min(to_u128(t.end));
            if lo > hi {
                continue;
            }
            let v4 = p.addr.is_ipv4();
            for q in range_prefixes(from_u128(lo, v4), from_u128(hi, v4)) {
                if !out.contains(&q) {
                    out.push(q);
                }
            }
            // Checked as we go: the scan of `out` above stays short.
            if out.len() > max {
                return Err(TooMany);
            }
        }
    }
    Ok(out)
}

/// Why the initiator refuses a responder's selectors.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Outside what we offered, not installable, or none.
    Outside,
    /// More than `max` prefixes.
    TooMany,
}

/// Initiator: every selector the responder returned must lie inside one we offered and be
/// installable, and they must make at most `max` prefixes.
pub fn accept(returned: &[Ts], offered: &[Prefix], max: usize) -> Result<Vec<Prefix>, Refused> {
    let mut out = vec![];
    for t in returned {
        let Ts::Range(t) = t else {
            return Err(Refused::Outside);
        };
        if !any_port(t) || t.start.is_ipv4() != t.end.is_ipv4() {
            return Err(Refused::Outside);
        }
        let inside = offered.iter().any(|p| {
            let (ps, pe) = prefix_range(p);
            p.addr.is_ipv4() == t.start.is_ipv4()
                && to_u128(t.start) >= to_u128(ps)
                && to_u128(t.end) <= to_u128(pe)
        });
        if !inside {
            return Err(Refused::Outside);
        }
        out.extend(range_prefixes(t.start, t.end));
        if out.len() > max {
            return Err(Refused::TooMany);
        }
    }
    if out.is_empty() {
        return Err(Refused::Outside);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        crate::config::parse_prefix(s).unwrap()
    }

    #[test]
    fn ranges_and_prefixes() {
        assert_eq!(
            prefix_range(&p("10.1.0.0/24")),
            ("10.1.0.0".parse().unwrap(), "10.1.0.255".parse().unwrap())
        );
        assert_eq!(
            prefix_range(&p("0.0.0.0/0")),
            (
                "0.0.0.0".parse().unwrap(),
                "255.255.255.255".parse().unwrap()
            )
        );
        assert_eq!(
            range_prefixes("10.0.0.1".parse().unwrap(), "10.0.0.6".parse().unwrap()),
            vec![
                p("10.0.0.1/32"),
                p("10.0.0.2/31"),
                p("10.0.0.4/31"),
                p("10.0.0.6/32")
            ]
        );
        assert_eq!(
            range_prefixes(
                "::".parse().unwrap(),
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()
            ),
            vec![p("::/0")]
        );
        assert_eq!(
            range_prefixes(
                "0.0.0.0".parse().unwrap(),
                "255.255.255.255".parse().unwrap()
            ),
            vec![p("0.0.0.0/0")]
        );
    }

    #[test]
    fn narrowing_as_responder() {
        // The initiator asks for 10.0.0.0/8; we allow 10.2.0.0/24 and 2001:db8::/64.
        let offered = to_ts(&[p("10.0.0.0/8")]);
        assert_eq!(
            narrow(&offered, &[p("10.2.0.0/24"), p("2001:db8::/64")], 16),
            Ok(vec![p("10.2.0.0/24")])
        );
        // Nothing in common.
        assert_eq!(
            narrow(&to_ts(&[p("192.168.0.0/16")]), &[p("10.2.0.0/24")], 16),
            Ok(vec![])
        );
        // Port-specific selectors are not installable and are skipped.
        let tcp = vec![Ts::Range(TrafficSelector {
            ip_proto: 6,
            start_port: 0,
            end_port: 65535,
            start: "10.2.0.0".parse().unwrap(),
            end: "10.2.0.255".parse().unwrap(),
        })];
        assert_eq!(narrow(&tcp, &[p("10.2.0.0/24")], 16), Ok(vec![]));
    }

    #[test]
    fn initiator_checks_narrowed_result() {
        let offered = [p("10.1.0.0/16")];
        assert_eq!(
            accept(&to_ts(&[p("10.1.2.0/24")]), &offered, 16),
            Ok(vec![p("10.1.2.0/24")])
        );
        assert_eq!(
            accept(&to_ts(&[p("10.0.0.0/8")]), &offered, 16),
            Err(Refused::Outside)
        );
        assert_eq!(accept(&[], &offered, 16), Err(Refused::Outside));
    }

    /// Issue 14 (H1): ragged ranges split into many prefixes; past the limit both sides
    /// refuse instead of building (and later sending) hundreds of them.
    #[test]
    fn prefix_limit_per_side() {
        // 10.1.0.1 - 10.1.15.254 is 22 prefixes; sixteen such ranges are 352, more than a TS
        // payload's count octet holds.
        let ragged: Vec<Ts> = (0..16u32)
            .map(|i| {
                let base = 0x0a01_0000 + (i << 12);
                Ts::Range(TrafficSelector::range(
                    IpAddr::V4(Ipv4Addr::from(base + 1)),
                    IpAddr::V4(Ipv4Addr::from(base + 4094)),
                ))
            })
            .collect();
        let Ts::Range(r) = &ragged[0] else {
            unreachable!()
        };
        assert_eq!(range_prefixes(r.start, r.end).len(), 22);
        let ours = [p("10.1.0.0/16")];
        assert_eq!(narrow(&ragged, &ours, 16), Err(TooMany));
        assert_eq!(accept(&ragged, &ours, 16), Err(Refused::TooMany));
        assert_eq!(narrow(&ragged, &ours, 352).map(|v| v.len()), Ok(352));
        assert_eq!(accept(&ragged, &ours, 352).map(|v| v.len()), Ok(352));
        assert_eq!(narrow(&ragged[..1], &ours, 22).map(|v| v.len()), Ok(22));
        assert_eq!(narrow(&ragged[..1], &ours, 21), Err(TooMany));
    }
}
