//! `[ike.limits]` in the two-endpoint harness: half-open caps per peer and in all, cookie
//! secret rotation, CHILD_SA and IKE SA caps per connection, and the half-open accounting.

use super::*;
use crate::ike::{
    crypto::{DhGroup, DhSecret},
    limits::Limits,
};

/// A second peer with a connection on B, and a third.
const C: &str = "203.0.113.9";
const D: &str = "203.0.113.10";

fn sock(s: &str) -> SocketAddr {
    SocketAddr::new(ip(s), 500)
}

fn responder_only() -> ConnOpts {
    ConnOpts {
        initiator: Initiator::ResponseOnly,
        ..Default::default()
    }
}

/// B, response-only towards each of `peers`.
fn responder(limits: Limits, cookie_threshold: usize, peers: &[&str]) -> Endpoint {
    let mut s = settings();
    s.limits = limits;
    s.cookie_threshold = cookie_threshold;
    let mut b = Endpoint::new(s);
    for p in peers {
        b.add_conn(conn(B, p, &responder_only()));
    }
    b
}

fn ke() -> Vec<u8> {
    DhSecret::generate(DhGroup::Ecp256)
        .unwrap()
        .public()
        .to_vec()
}

/// An IKE_SA_INIT request with a valid P-256 public value, as any peer could send.
fn init(spi: u64, ni: &[u8], ke: &[u8], cookie: Option<&[u8]>) -> Vec<u8> {
    let p = IkeProposal::parse("aes256gcm16-prfsha256-ecp256").unwrap();
    let h = Header {
        ispi: spi,
        rspi: 0,
        next_payload: PayloadType::NONE,
        major: 2,
        minor: 0,
        exchange: ExchangeType::IKE_SA_INIT,
        flags: flags::INITIATOR,
        message_id: 0,
        length: 0,
    };
    let mut payloads = vec![];
    if let Some(c) = cookie {
        payloads.push(Payload::Notify(wire::Notify::new(NotifyType::COOKIE, c)));
    }
    payloads.push(Payload::Sa(vec![p.to_wire(1, vec![])]));
    payloads.push(Payload::Ke(wire::Ke {
        group: 19,
        data: ke,
    }));
    payloads.push(Payload::Nonce(ni));
    wire::emit_message(&h, &payloads).unwrap()
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// IKE_SA_INIT answered: a half-open SA (and a DH) spent on it.
    Accepted,
    Cookie(Vec<u8>),
    Notify(NotifyType),
    Nothing,
}

fn answer(b: &mut Endpoint, now: Instant, from: &str, data: &[u8]) -> Answer {
    b.handle(now, sock(B), sock(from), data);
    let Some(t) = b.poll_transmit() else {
        return Answer::Nothing;
    };
    assert!(b.poll_transmit().is_none(), "one answer per request");
    let m = Message::parse(&t.data).unwrap();
    if m.header.rspi != 0 {
        return Answer::Accepted;
    }
    let n = wire::Notify::parse(m.payloads[0].body).unwrap();
    match n.ntype {
        NotifyType::COOKIE => Answer::Cookie(n.data.to_vec()),
        t => Answer::Notify(t),
    }
}

/// Sends `count` IKE_SA_INITs (SPIs from `first`) from `from`; how many got an SA.
fn flood(b: &mut Endpoint, now: Instant, from: &str, first: u64, count: u64) -> usize {
    let ke = ke();
    (first..first + count)
        .filter(|spi| {
            let a = answer(b, now, from, &init(*spi, &[*spi as u8; 32], &ke, None));
            b.check_half_open();
            a == Answer::Accepted
        })
        .count()
}

/// A with `copies` identical connections to `b`, started.
fn started(b: Endpoint, copies: usize) -> Net {
    let mut a = Endpoint::new(settings());
    for _ in 0..copies {
        a.add_conn(conn(A, B, &ConnOpts::default()));
    }
    let mut n = Net::from_endpoints(a, b);
    n.start();
    n
}

/// B allowing `n` IKE SAs per connection, towards A.
fn ike_limited(n: usize) -> Endpoint {
    let limits = Limits {
        ike_sas_per_conn: n,
        ..Limits::default()
    };
    responder(limits, 30, &[A])
}

#[test]
fn a_peer_at_its_half_open_cap_is_dropped_and_others_still_connect() {
    let limits = Limits {
        half_open_per_peer: 3,
        ..Limits::default()
    };
    let mut b = responder(limits, 100, &[A, C]);
    let now = Instant::now();
    assert_eq!(flood(&mut b, now, C, 1, 10), 3);
    assert_eq!(b.ike_sa_count(), (3, 0));
    assert_eq!(b.stats.limits.half_open_per_peer, 7);
    // A, with its own allowance, still connects.
    let mut n = started(b, 1);
    assert!(n.tunnel_up());
    n.b.ep.check_half_open();
    // C's SAs time out; the accounting follows.
    n.run(Duration::from_secs(31));
    n.b.ep.check_half_open();
    assert_eq!(n.b.ep.ike_sa_count(), (1, 1));
    assert_eq!(flood(&mut n.b.ep, n.now, C, 100, 1), 1);
}

#[test]
fn half_open_total_cap_and_the_accounting_through_expiry() {
    let limits = Limits {
        half_open_per_peer: 3,
        half_open_total: 5,
        ..Limits::default()
    };
    let mut b = responder(limits, 100, &[C, D]);
    let now = Instant::now();
    assert_eq!(flood(&mut b, now, C, 1, 4), 3);
    assert_eq!(flood(&mut b, now, D, 1, 4), 2);
    assert_eq!(b.stats.limits.half_open_per_peer, 1);
    assert_eq!(b.stats.limits.half_open_total, 2);
    b.handle_timeout(now + Duration::from_secs(31));
    b.check_half_open();
    assert_eq!(b.ike_sa_count(), (0, 0));
    let later = now + Duration::from_secs(32);
    assert_eq!(flood(&mut b, later, D, 100, 4), 3);
}

#[test]
fn cookie_secret_rotates_and_an_old_cookie_lasts_only_the_grace_period() {
    let limits = Limits {
        cookie_secret_lifetime: 60,
        cookie_grace: 10,
        ..Limits::default()
    };
    // Threshold 0: every request must return a cookie.
    let mut b = responder(limits, 0, &[A]);
    let (ke, t0, s) = (ke(), Instant::now(), Duration::from_secs);
    let (n1, n2) = ([1u8; 32], [2u8; 32]);
    let Answer::Cookie(c1) = answer(&mut b, t0, A, &init(1, &n1, &ke, None)) else {
        panic!("no cookie demanded");
    };
    let Answer::Cookie(c2) = answer(&mut b, t0, A, &init(2, &n2, &ke, None)) else {
        panic!("no cookie demanded");
    };
    // The secret is replaced at 60 s; its cookies still count until 70 s.
    let with_c1 = init(1, &n1, &ke, Some(&c1));
    assert_eq!(answer(&mut b, t0 + s(65), A, &with_c1), Answer::Accepted);
    assert_eq!(b.stats.limits.cookie_rotations, 1);
    // Past the grace period: refused, a cookie of the new secret is demanded.
    let with_c2 = init(2, &n2, &ke, Some(&c2));
    let Answer::Cookie(c3) = answer(&mut b, t0 + s(71), A, &with_c2) else {
        panic!("an expired cookie was accepted");
    };
    assert_ne!(c3[0], c2[0], "a new secret version");
    assert_eq!(b.stats.limits.cookies_stale, 1);
    let with_c3 = init(2, &n2, &ke, Some(&c3));
    assert_eq!(answer(&mut b, t0 + s(72), A, &with_c3), Answer::Accepted);
    // A forged cookie is no better.
    let mut forged = c3.clone();
    *forged.last_mut().unwrap() ^= 1;
    let with_forged = init(3, &n2, &ke, Some(&forged));
    assert!(matches!(
        answer(&mut b, t0 + s(72), A, &with_forged),
        Answer::Cookie(_)
    ));
    b.check_half_open();
}

#[test]
fn dh_rate_demands_cookies_then_drops() {
    let limits = Limits {
        dh_per_second: 1,
        dh_burst: 2,
        ..Limits::default()
    };
    let mut b = responder(limits, 100, &[A, C]);
    let (ke, t0) = (ke(), Instant::now());
    assert_eq!(flood(&mut b, t0, A, 1, 2), 2);
    // The bucket is empty: a cookie (no DH) for a request without one...
    let Answer::Cookie(c) = answer(&mut b, t0, C, &init(7, &[7; 32], &ke, None)) else {
        panic!("no cookie demanded past the DH rate");
    };
    assert_eq!(b.stats.limits.dh_cookie, 1);
    // ... and nothing for one that returns it while the bucket is still empty.
    let again = init(7, &[7; 32], &ke, Some(&c));
    assert_eq!(answer(&mut b, t0, C, &again), Answer::Nothing);
    assert_eq!(b.stats.limits.dh_dropped, 1);
    // A second later there is room for one.
    assert_eq!(
        answer(&mut b, t0 + Duration::from_secs(1), C, &again),
        Answer::Accepted
    );
}

/// A and B with two connections, told apart by A's identity (see
/// `responder_picks_the_connection_by_identity_and_psk`); B's limits as given.
fn two_conns(limits: Limits) -> Net {
    let mut second = conn(A, B, &ConnOpts::default());
    second.local_id = Identity::parse("@site-two").unwrap();
    second.local_ts = vec![parse_prefix("10.7.0.0/24").unwrap()];
    let mut a = Endpoint::new(settings());
    a.add_conn(conn(A, B, &ConnOpts::default()));
    a.add_conn(second);
    let mut b = responder(limits, 30, &[A]);
    let mut second = conn(B, A, &responder_only());
    second.peer_id = Identity::parse("@site-two").unwrap();
    second.peer_ts = vec![parse_prefix("10.7.0.0/24").unwrap()];
    b.add_conn(second);
    Net::from_endpoints(a, b)
}

#[test]
fn create_child_sa_flood_gets_no_additional_sas_and_other_connections_still_rekey() {
    let mut n = two_conns(Limits {
        child_sas_per_conn: 3,
        ..Limits::default()
    });
    n.start();
    for side in [&n.a.ep, &n.b.ep] {
        assert_eq!(side.conn_status(0), ConnStatus::Active);
        assert_eq!(side.conn_status(1), ConnStatus::Active);
    }
    // The authenticated peer asks for CHILD_SA after CHILD_SA on connection 0.
    for _ in 0..6 {
        n.a.ep.create_extra_child(0, n.now);
        n.settle();
    }
    assert_eq!(n.b.ep.conn_children(0).len(), 3);
    assert_eq!(n.b.ep.stats.limits.child_sas_per_conn, 4);
    assert!(
        n.a.plane
            .statuses
            .iter()
            .any(|(_, r)| r.contains("NO_ADDITIONAL_SAS")),
        "{:?}",
        n.a.plane.statuses
    );
    assert!(
        n.b.plane
            .warnings
            .iter()
            .any(|w| w.contains("child_sas_per_conn = 3")),
        "{:?}",
        n.b.plane.warnings
    );
    // Connection 1 still rekeys, from either side.
    let before = n.b.ep.conn_children(1);
    n.b.ep.rekey_child(before[0].0, n.now);
    n.run(Duration::from_secs(5));
    let c = n.a.ep.conn_children(1)[0].0;
    n.a.ep.rekey_child(c, n.now);
    n.run(Duration::from_secs(5));
    let after = n.b.ep.conn_children(1);
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].1, before[0].1, "rekeyed");
    assert_eq!(n.b.ep.stats.child_rekeyed, 2);
    // A rekey on the full connection replaces a CHILD_SA, it adds none: not refused.
    let c = n.a.ep.conn_children(0)[0].0;
    n.a.ep.rekey_child(c, n.now);
    n.run(Duration::from_secs(5));
    assert_eq!(n.b.ep.stats.child_rekeyed, 3);
    assert_eq!(n.b.ep.stats.limits.child_sas_per_conn, 4);
    assert_eq!(n.b.ep.conn_children(0).len(), 3);
}

#[test]
fn ike_sa_rekeys_the_peer_never_deletes_stop_at_the_limit() {
    let mut n = started(ike_limited(2), 1);
    // A's Deletes never arrive: each IKE SA it rekeys lingers at B.
    n.filter = Box::new(|t| {
        t.src.ip() != ip(A)
            || Header::parse(&t.data).is_ok_and(|h| h.exchange != ExchangeType::INFORMATIONAL)
    });
    n.a.ep.rekey_ike(0, n.now);
    n.settle();
    assert_eq!(n.b.ep.ike_sa_count().0, 2);
    n.a.ep.rekey_ike(0, n.now);
    n.settle();
    assert_eq!(
        n.b.ep.ike_sa_count().0,
        2,
        "TEMPORARY_FAILURE, no third IKE SA"
    );
    assert_eq!(n.b.ep.stats.limits.ike_sas_per_conn, 1);
    assert!(n.tunnel_up());
    assert_eq!(n.b.ep.conn_status(0), ConnStatus::Active);
}

#[test]
fn duplicate_ike_sas_beyond_the_limit_are_answered_then_deleted() {
    // Three copies of one connection at A: three IKE SAs for B's one.
    let mut n = started(ike_limited(2), 3);
    n.run(Duration::from_secs(5));
    assert_eq!(n.b.ep.ike_sa_count(), (2, 2));
    assert_eq!(n.b.ep.conn_children(0).len(), 2);
    assert_eq!(n.b.ep.stats.limits.ike_sas_per_conn, 1);
    assert_eq!(n.b.ep.conn_status(0), ConnStatus::Active);
    assert!(
        n.b.plane
            .warnings
            .iter()
            .any(|w| w.contains("ike_sas_per_conn = 2 allows: NO_ADDITIONAL_SAS")),
        "{:?}",
        n.b.plane.warnings
    );
    // The refused copy was told why, then deleted; the other two carry on.
    assert_eq!(n.a.ep.ike_sa_count(), (2, 2));
    let down: Vec<_> = (0..3)
        .filter(|c| n.a.ep.conn_status(*c) != ConnStatus::Active)
        .collect();
    assert_eq!(down.len(), 1, "{:?}", n.a.plane.statuses);
}
