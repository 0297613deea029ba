//! Traffic selectors from a peer (a TSi/TSr body, as `parse_ts` decodes it) against our
//! configured prefixes: responder narrowing (`ts::narrow`) and the initiator's check of a
//! responder's answer (`ts::accept`), each followed by emitting the result as a TS payload,
//! as the endpoint does in its answer or at the next rekey.
//!
//! The contract: whatever the peer sends, each step either refuses (no selectors:
//! TS_UNACCEPTABLE) or yields selectors inside both sides' ranges that emit and parse back to
//! the same list, which `accept` then takes as the very prefixes, never more than the limit
//! (`[ike] max_selectors`, here its largest value). A panic in the encoder (more than 255
//! selectors, issue 14 H1, before the limit) is a crash here.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use vpn_userspace::{
    dataplane::worker::Prefix,
    ike::{
        ts,
        wire::{Payload, Ts, emit_chain, parse_chain, parse_ts},
    },
};

/// `[ike] max_selectors` at its largest.
const MAX: usize = 64;

/// Our side: up to four prefixes, 18 bytes each (family, length, address).
fn ours(b: &[u8]) -> Vec<Prefix> {
    b.chunks_exact(18)
        .take(4)
        .map(|c| {
            let addr = if c[0] & 1 == 0 {
                IpAddr::V4(Ipv4Addr::new(c[2], c[3], c[4], c[5]))
            } else {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&c[2..18]).unwrap()))
            };
            let max = if addr.is_ipv4() { 33 } else { 129 };
            Prefix {
                addr,
                len: c[1] % max,
            }
        })
        .collect()
}

fn inside(p: &Prefix, start: IpAddr, end: IpAddr) -> bool {
    let (s, e) = ts::prefix_range(p);
    let n = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    s.is_ipv4() == start.is_ipv4() && n(s) >= n(start) && n(e) <= n(end)
}

/// Emits `prefixes` as a TS payload, parses it back, and checks `accept` takes them as they are.
fn emit_round_trip(prefixes: &[Prefix]) {
    let sel = ts::to_ts(prefixes);
    let mut out = Vec::new();
    let first = emit_chain(&[Payload::TsR(sel.clone())], &mut out).expect("at most MAX encode");
    let chain = parse_chain(first, &out).expect("our own TS payload parses");
    let [raw] = &chain[..] else {
        panic!("one payload emitted, {} parsed", chain.len())
    };
    let Ok(Payload::TsR(back)) = Payload::decode(raw) else {
        panic!("our own TS payload does not decode")
    };
    assert_eq!(back, sel);
    assert_eq!(ts::accept(&back, prefixes, MAX).as_deref(), Ok(prefixes));
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let split = (usize::from(n % 5) * 18).min(rest.len());
    let (our_bytes, body) = rest.split_at(split);
    let ours = ours(our_bytes);
    let Ok(offered) = parse_ts(body) else { return };

    // Responder: what we would answer.
    let narrowed = ts::narrow(&offered, &ours, MAX).unwrap_or_default();
    assert!(narrowed.len() <= MAX);
    for q in &narrowed {
        assert!(ours.iter().any(|p| {
            let (s, e) = ts::prefix_range(p);
            inside(q, s, e)
        }));
        assert!(offered.iter().any(|t| match t {
            Ts::Range(t) => inside(q, t.start, t.end),
            Ts::Unknown { .. } => false,
        }));
    }
    if !narrowed.is_empty() {
        emit_round_trip(&narrowed);
    }

    // Initiator: the offered list as a responder's answer to our prefixes.
    if let Ok(accepted) = ts::accept(&offered, &ours, MAX) {
        assert!(accepted.len() <= MAX);
        for q in &accepted {
            assert!(ours.iter().any(|p| {
                let (s, e) = ts::prefix_range(p);
                inside(q, s, e)
            }));
        }
        emit_round_trip(&accepted);
    }
});
