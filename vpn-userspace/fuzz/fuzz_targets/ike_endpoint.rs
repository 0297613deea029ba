//! The IKE endpoint (`ike::endpoint::Endpoint`) after a real handshake, fed messages that an
//! authenticated peer sends: the plaintext payload chains come from the input and are sealed
//! with the established IKE SA's keys (`Endpoint::forge_from_peer`), so every decrypted-payload
//! handler is fuzzed (CREATE_CHILD_SA new/rekey child and rekey IKE, INFORMATIONAL with
//! deletes and notifies, a stray IKE_AUTH), not only the outer parser.
//!
//! Two endpoints, A (initiator) and B (responder only), establish an IKE SA and a CHILD_SA in
//! memory. Then each operation of the input is one of:
//! - a request to B, or to A, from its peer, with the message ID it expects;
//! - B starts an exchange (rekey CHILD, rekey IKE, delete CHILD) and, instead of A's answer,
//!   gets a response with the input's payloads;
//! - time passes (retransmissions, DPD, lifetimes).
//!
//! Whatever the peer sends, neither endpoint may panic nor answer without end.
//! Operation layout: kind, exchange type, first payload type, length (u16 BE), chain.

#![no_main]

mod common;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vpn_userspace::ike::{
    conn::Initiator,
    endpoint::{ConnStatus, Endpoint, Settings},
    wire::{ExchangeType, Header, PayloadType},
};

/// Delivers whatever the endpoints send each other (bounded: a storm is a finding too).
fn settle(a: &mut Endpoint, b: &mut Endpoint, now: Instant) {
    for _ in 0..64 {
        let mut moved = false;
        if let Some(t) = a.poll_transmit() {
            b.handle(now, t.dst, t.src, &t.data);
            moved = true;
        }
        if let Some(t) = b.poll_transmit() {
            a.handle(now, t.dst, t.src, &t.data);
            moved = true;
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        if !moved {
            return;
        }
    }
}

fn established() -> (Endpoint, Endpoint, Instant) {
    let esp = "aes128gcm16-ecp256";
    let mut a = Endpoint::new(Settings::default());
    a.add_conn(common::conn(
        "a",
        common::A,
        common::B,
        esp,
        Initiator::BiDirectional,
    ));
    let mut b = Endpoint::new(Settings::default());
    b.add_conn(common::conn(
        "b",
        common::B,
        common::A,
        esp,
        Initiator::ResponseOnly,
    ));
    let now = Instant::now();
    a.start(now);
    b.start(now);
    settle(&mut a, &mut b, now);
    assert_eq!(a.conn_status(0), ConnStatus::Active, "handshake failed");
    assert_eq!(b.conn_status(0), ConnStatus::Active, "handshake failed");
    (a, b, now)
}

fuzz_target!(|data: &[u8]| {
    let (mut a, mut b, mut now) = established();
    let mut rest = data;
    while let Some((&[kind, exchange, first, l0, l1], tail)) = rest.split_first_chunk::<5>() {
        let len = usize::from(u16::from_be_bytes([l0, l1])).min(tail.len());
        let (chain, tail) = tail.split_at(len);
        rest = tail;
        let (exchange, first) = (ExchangeType(exchange), PayloadType(first));
        match kind % 4 {
            // A request from the peer (B's or A's).
            0 | 1 => {
                let victim = if kind % 4 == 0 { &mut b } else { &mut a };
                if let Some((local, remote, msg)) =
                    victim.forge_from_peer(0, exchange, false, first, chain)
                {
                    victim.handle(now, local, remote, &msg);
                }
            }
            // B asks; the answer is the input's.
            2 => {
                let child = b.conn_children(0).first().map(|c| c.0);
                match (kind >> 2) % 3 {
                    0 => child.into_iter().for_each(|c| b.rekey_child(c, now)),
                    1 => b.rekey_ike(0, now),
                    _ => child.into_iter().for_each(|c| b.delete_child(c, now)),
                }
                // B's request goes nowhere; its exchange type is the response's.
                let asked = b.poll_transmit().and_then(|t| Header::parse(&t.data).ok());
                let exchange = asked.map_or(exchange, |h| h.exchange);
                if let Some((local, remote, msg)) =
                    b.forge_from_peer(0, exchange, true, first, chain)
                {
                    b.handle(now, local, remote, &msg);
                }
            }
            // Time passes: retransmissions, DPD, rekeys, expiries.
            _ => {
                now += Duration::from_secs(u64::from(exchange.0));
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
        }
        settle(&mut a, &mut b, now);
    }
});
