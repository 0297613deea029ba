//! Two protocol cores talking in memory, with simulated time and a lossy "network".
//!
//! Besides each scenario's own checks, every step verifies the make-before-break invariant:
//! whatever SA a side sends on, the other side has its inbound half installed, with keys
//! that decrypt what the sender encrypts.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use zeroize::Zeroizing;

use super::{
    conn::{ConnConfig, Dpd, DpdAction, Encap, Identity, Initiator, Lifetimes},
    endpoint::{ChildId, ChildSa, ConnStatus, Endpoint, Event, Settings, Transmit},
    proposal::{EspProposal, IkeProposal},
    wire::{self, ExchangeType, Header, Message, NotifyType, Payload, PayloadType, flags},
};
use crate::config::parse_prefix;

pub(super) const A: &str = "192.0.2.1";
pub(super) const B: &str = "198.51.100.2";

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) struct ConnOpts {
    pub(super) ike: &'static str,
    pub(super) esp: &'static str,
    pub(super) psk: &'static str,
    pub(super) initiator: Initiator,
    pub(super) dpd: Dpd,
    pub(super) encap: Encap,
    pub(super) lifetimes: Lifetimes,
    pub(super) local_ts: Vec<&'static str>,
    pub(super) peer_ts: Vec<&'static str>,
    pub(super) peer_id: Option<&'static str>,
}

impl Default for ConnOpts {
    fn default() -> Self {
        ConnOpts {
            ike: "aes256gcm16-prfsha256-ecp256",
            esp: "aes128gcm16",
            psk: "correct horse battery staple",
            initiator: Initiator::BiDirectional,
            dpd: Dpd {
                action: DpdAction::Clear,
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(120),
            },
            encap: Encap::Auto,
            lifetimes: Lifetimes::default(),
            local_ts: vec![],
            peer_ts: vec![],
            peer_id: None,
        }
    }
}

pub(super) fn conn(local: &str, peer: &str, o: &ConnOpts) -> ConnConfig {
    let (lts, pts) = if local == A {
        (vec!["10.1.0.0/24"], vec!["10.2.0.0/24"])
    } else {
        (vec!["10.2.0.0/24"], vec!["10.1.0.0/24"])
    };
    let pick = |given: &Vec<&str>, def: Vec<&str>| {
        let v = if given.is_empty() { def } else { given.clone() };
        v.iter().map(|s| parse_prefix(s).unwrap()).collect()
    };
    ConnConfig {
        name: format!("{local}->{peer}"),
        local: ip(local),
        peer: ip(peer),
        local_id: Identity::from(ip(local)),
        peer_id: Identity::parse(o.peer_id.unwrap_or(peer)).unwrap(),
        psk: Zeroizing::new(o.psk.as_bytes().to_vec()),
        ike: o
            .ike
            .split(',')
            .map(|p| IkeProposal::parse(p).unwrap())
            .collect(),
        esp: o
            .esp
            .split(',')
            .map(|p| EspProposal::parse(p).unwrap())
            .collect(),
        local_ts: pick(&o.local_ts, lts),
        peer_ts: pick(&o.peer_ts, pts),
        initiator: o.initiator,
        lifetimes: o.lifetimes,
        dpd: o.dpd,
        encap: o.encap,
        admin_up: true,
    }
}

/// One side's view of its data plane, built from the events.
#[derive(Default)]
struct Plane {
    children: HashMap<ChildId, ChildSa>,
    /// The SA the policy points at (what we send on).
    active: Option<ChildId>,
    /// Children whose outbound half was activated (the data plane falls back to the
    /// newest of them when the one holding the policy goes).
    activated: Vec<ChildId>,
    /// Every inbound SPI ever installed.
    ever_in: std::collections::HashSet<u32>,
    installs: usize,
    removes: usize,
    statuses: Vec<(ConnStatus, String)>,
    warnings: Vec<String>,
}

impl Plane {
    fn apply(&mut self, e: Event) {
        match e {
            Event::InstallInbound(c) => {
                self.installs += 1;
                self.ever_in.insert(c.spi_in);
                self.children.insert(c.id, c);
            }
            Event::ActivateOutbound { child, .. } => {
                assert!(
                    self.children.contains_key(&child),
                    "activating an SA never installed"
                );
                self.active = Some(child);
                self.activated.push(child);
            }
            Event::Remove { child, .. } => {
                self.removes += 1;
                self.children.remove(&child);
                self.activated.retain(|c| *c != child);
                if self.active == Some(child) {
                    self.active = self.activated.iter().copied().max();
                }
            }
            Event::Status { status, reason, .. } => self.statuses.push((status, reason)),
            Event::Warning { message, .. } => self.warnings.push(message),
        }
    }

    fn out(&self) -> Option<&ChildSa> {
        self.active.and_then(|a| self.children.get(&a))
    }

    fn last_status(&self) -> Option<&(ConnStatus, String)> {
        self.statuses.last()
    }
}

struct Side {
    ep: Endpoint,
    plane: Plane,
}

struct Net {
    a: Side,
    b: Side,
    now: Instant,
    /// Return false to lose a datagram.
    filter: Box<dyn FnMut(&Transmit) -> bool>,
    log: Vec<(bool, Transmit)>,
    check_invariant: bool,
}

pub(super) fn settings() -> Settings {
    Settings {
        ike_port: 500,
        natt_port: 4500,
        ..Settings::default()
    }
}

impl Net {
    fn new(oa: ConnOpts, ob: ConnOpts) -> Net {
        Net::with_settings(oa, ob, settings(), settings())
    }

    fn with_settings(oa: ConnOpts, ob: ConnOpts, sa: Settings, sb: Settings) -> Net {
        let mut a = Endpoint::new(sa);
        a.add_conn(conn(A, B, &oa));
        let mut b = Endpoint::new(sb);
        b.add_conn(conn(B, A, &ob));
        Net::from_endpoints(a, b)
    }

    fn from_endpoints(a: Endpoint, b: Endpoint) -> Net {
        Net {
            a: Side {
                ep: a,
                plane: Plane::default(),
            },
            b: Side {
                ep: b,
                plane: Plane::default(),
            },
            now: Instant::now(),
            filter: Box::new(|_| true),
            log: vec![],
            check_invariant: true,
        }
    }

    /// Delivers everything in flight and drains events, without advancing time.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(e) = self.a.ep.poll_event() {
                self.a.plane.apply(e);
            }
            while let Some(e) = self.b.ep.poll_event() {
                self.b.plane.apply(e);
            }
            if self.check_invariant {
                self.invariant();
            }
            if let Some(t) = self.a.ep.poll_transmit() {
                moved = true;
                self.log.push((true, t.clone()));
                if (self.filter)(&t) {
                    self.b.ep.handle(self.now, t.dst, t.src, &t.data);
                }
            }
            if let Some(t) = self.b.ep.poll_transmit() {
                moved = true;
                self.log.push((false, t.clone()));
                if (self.filter)(&t) {
                    self.a.ep.handle(self.now, t.dst, t.src, &t.data);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("endpoints never went quiet");
    }

    /// Runs the simulation for `d` of simulated time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        self.settle();
        for _ in 0..100_000 {
            let next = [self.a.ep.poll_timeout(), self.b.ep.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.a.ep.handle_timeout(self.now);
                    self.b.ep.handle_timeout(self.now);
                    self.settle();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timers never stopped firing");
    }

    fn start(&mut self) {
        self.a.ep.start(self.now);
        self.b.ep.start(self.now);
        self.settle();
    }

    /// Whatever a side sends on, the other side can receive.
    fn invariant(&self) {
        for (tx, rx, name) in [(&self.a, &self.b, "A->B"), (&self.b, &self.a, "B->A")] {
            let Some(out) = tx.plane.out() else { continue };
            match rx.plane.children.values().find(|c| c.spi_in == out.spi_out) {
                Some(inb) => assert_keys_match(out, inb),
                // A responder sends on a brand-new CHILD_SA as soon as it has answered
                // IKE_AUTH, one trip before the initiator installs it (as every IKEv2
                // implementation does). A rekeyed SA, or one the peer already removed,
                // must never be in that state.
                None => assert!(
                    out.replaces.is_none() && !rx.plane.ever_in.contains(&out.spi_out),
                    "{name}: sending on SPI {:#x}, not installed at the peer",
                    out.spi_out
                ),
            }
        }
    }

    fn tunnel_up(&self) -> bool {
        let (Some(a), Some(b)) = (self.a.plane.out(), self.b.plane.out()) else {
            return false;
        };
        a.spi_out != 0 && b.spi_out != 0
    }

    fn sent_exchanges(&self, from_a: bool) -> Vec<ExchangeType> {
        self.log
            .iter()
            .filter(|(a, _)| *a == from_a)
            .filter_map(|(_, t)| {
                let d = if t.src.port() == 4500 {
                    &t.data[4..]
                } else {
                    &t.data[..]
                };
                Header::parse(d).ok().map(|h| h.exchange)
            })
            .collect()
    }
}

/// The sender's outbound key and the receiver's inbound key agree (one AES-GCM round trip).
fn assert_keys_match(out: &ChildSa, inb: &ChildSa) {
    assert_eq!(out.cipher, inb.cipher);
    assert_eq!(out.esn, inb.esn);
    let nonce = [7u8; 12];
    let mut buf = *b"sixteen byte msg";
    let tag = out.key_out.aead().seal(&nonce, b"aad", &mut buf);
    inb.key_in
        .aead()
        .open(&nonce, b"aad", &mut buf, &tag)
        .expect("keys of the two halves differ");
    assert_eq!(&buf, b"sixteen byte msg");
}

#[test]
fn establishes_with_each_suite() {
    for (ike, esp) in [
        ("aes256gcm16-prfsha256-ecp256", "aes128gcm16"),
        ("aes128gcm16-prfsha384-modp2048", "aes256gcm16-esn"),
        ("aes128-sha256-curve25519", "aes128gcm16-noesn"),
        ("aes256-sha512-ecp384", "aes256gcm16"),
        ("aes256-sha384-curve25519", "aes128gcm16-esn"),
    ] {
        let o = || ConnOpts {
            ike,
            esp,
            ..Default::default()
        };
        let mut n = Net::new(
            o(),
            ConnOpts {
                initiator: Initiator::ResponseOnly,
                ..o()
            },
        );
        n.start();
        assert!(n.tunnel_up(), "{ike} / {esp}");
        assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
        assert_eq!(n.b.ep.conn_status(0), ConnStatus::Active);
        let a = n.a.plane.out().unwrap();
        assert_eq!(a.esn, esp.contains("-esn"));
        assert_eq!(a.udp_encap, None);
        assert_eq!(a.local_ts, vec![parse_prefix("10.1.0.0/24").unwrap()]);
        assert_eq!(a.peer_ts, vec![parse_prefix("10.2.0.0/24").unwrap()]);
        assert_eq!(
            n.sent_exchanges(true),
            vec![ExchangeType::IKE_SA_INIT, ExchangeType::IKE_AUTH]
        );
    }
}

#[test]
fn both_response_only_stay_down() {
    let ro = || ConnOpts {
        initiator: Initiator::ResponseOnly,
        ..Default::default()
    };
    let mut n = Net::new(ro(), ro());
    n.start();
    n.run(Duration::from_secs(60));
    assert!(n.log.is_empty());
    assert!(!n.tunnel_up());
}

#[test]
fn child_rekey_from_either_side_with_pfs_is_make_before_break() {
    let o = || ConnOpts {
        esp: "aes256gcm16-modp2048",
        ..Default::default()
    };
    let mut n = Net::new(
        o(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..o()
        },
    );
    n.start();
    let first = n.a.plane.out().unwrap().spi_out;
    let child = n.a.plane.active.unwrap();
    n.a.ep.rekey_child(child, n.now);
    n.settle();
    let second = n.a.plane.out().unwrap().spi_out;
    assert_ne!(first, second);
    // The old SA stays for the overlap, then goes on both sides.
    assert_eq!(n.a.plane.children.len(), 2);
    n.run(Duration::from_secs(5));
    assert_eq!(n.a.plane.children.len(), 1);
    assert_eq!(n.b.plane.children.len(), 1);
    assert!(n.tunnel_up());
    // Now the responder rekeys.
    let child = n.b.plane.active.unwrap();
    n.b.ep.rekey_child(child, n.now);
    n.run(Duration::from_secs(5));
    assert_ne!(n.a.plane.out().unwrap().spi_out, second);
    assert_eq!(n.a.plane.children.len(), 1);
    assert_eq!(n.b.plane.children.len(), 1);
    assert_eq!(n.a.ep.stats.child_rekeyed + n.b.ep.stats.child_rekeyed, 4);
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
}

#[test]
fn rekeys_by_lifetime_and_packet_count() {
    let o = || ConnOpts {
        lifetimes: Lifetimes {
            ike: Duration::from_secs(600),
            child: Duration::from_secs(100),
            child_packets: Some(1000),
            child_bytes: None,
        },
        ..Default::default()
    };
    let mut n = Net::new(
        o(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..o()
        },
    );
    n.start();
    let spi0 = n.a.plane.out().unwrap().spi_out;
    // Soft lifetime at 85-90 s: one rekey within 100 s, and never a gap.
    n.run(Duration::from_secs(95));
    let spi1 = n.a.plane.out().unwrap().spi_out;
    assert_ne!(spi0, spi1);
    // Packet count over 90% of the limit.
    let child = n.a.plane.active.unwrap();
    n.a.ep.child_usage(child, 950, 0, 950, n.now);
    n.settle();
    assert_ne!(n.a.plane.out().unwrap().spi_out, spi1);
    // Sequence number near 2^32 without ESN.
    let child = n.a.plane.active.unwrap();
    let spi2 = n.a.plane.out().unwrap().spi_out;
    n.a.ep.child_usage(child, 0, 0, (1 << 32) - 1000, n.now);
    n.settle();
    assert_ne!(n.a.plane.out().unwrap().spi_out, spi2);
    // The IKE SA rekeys itself within its lifetime and the tunnel stays up throughout.
    n.run(Duration::from_secs(700));
    assert!(n.a.ep.stats.ike_rekeyed + n.b.ep.stats.ike_rekeyed >= 1);
    assert!(n.tunnel_up());
    assert_eq!(n.a.ep.ike_sa_count().0, 1);
    assert_eq!(n.b.ep.ike_sa_count().0, 1);
}

#[test]
fn ike_rekey_keeps_children_and_later_exchanges_work() {
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    let spi = n.a.plane.out().unwrap().spi_out;
    n.b.ep.rekey_ike(0, n.now);
    n.settle();
    assert_eq!(n.a.ep.ike_sa_count(), (1, 1));
    assert_eq!(n.b.ep.ike_sa_count(), (1, 1));
    assert_eq!(
        n.a.plane.out().unwrap().spi_out,
        spi,
        "children survive an IKE rekey"
    );
    // The child rekeys over the new IKE SA, and DPD works on it.
    let child = n.a.plane.active.unwrap();
    n.a.ep.rekey_child(child, n.now);
    n.run(Duration::from_secs(5));
    assert_ne!(n.a.plane.out().unwrap().spi_out, spi);
    n.run(Duration::from_secs(100));
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
    assert!(n.tunnel_up());
}

#[test]
fn simultaneous_child_rekey_leaves_one_pair() {
    for _ in 0..20 {
        let mut n = Net::new(ConnOpts::default(), ConnOpts::default());
        n.a.ep.start(n.now);
        n.settle();
        let (ca, cb) = (n.a.plane.active.unwrap(), n.b.plane.active.unwrap());
        // Both start before either sees the other's request.
        n.a.ep.rekey_child(ca, n.now);
        n.b.ep.rekey_child(cb, n.now);
        n.run(Duration::from_secs(20));
        assert!(n.tunnel_up());
        assert_eq!(n.a.plane.children.len(), 1, "A keeps exactly one CHILD_SA");
        assert_eq!(n.b.plane.children.len(), 1, "B keeps exactly one CHILD_SA");
        let (a, b) = (n.a.plane.out().unwrap(), n.b.plane.out().unwrap());
        assert_eq!(a.spi_out, b.spi_in);
        assert_eq!(a.spi_in, b.spi_out);
    }
}

#[test]
fn simultaneous_ike_rekey_leaves_one_ike_sa() {
    for _ in 0..20 {
        let mut n = Net::new(ConnOpts::default(), ConnOpts::default());
        n.a.ep.start(n.now);
        n.settle();
        n.a.ep.rekey_ike(0, n.now);
        n.b.ep.rekey_ike(0, n.now);
        n.run(Duration::from_secs(20));
        assert_eq!(n.a.ep.ike_sa_count(), (1, 1));
        assert_eq!(n.b.ep.ike_sa_count(), (1, 1));
        assert!(n.tunnel_up());
        // The surviving IKE SA works: rekey the child over it.
        let c = n.a.plane.active.unwrap();
        n.a.ep.rekey_child(c, n.now);
        n.run(Duration::from_secs(10));
        assert!(n.tunnel_up());
        assert_eq!(n.a.plane.children.len(), 1);
    }
}

#[test]
fn survives_loss_and_answers_duplicates_from_cache() {
    let mut lost = 0;
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    // Lose every other datagram for the first six.
    let mut i = 0;
    n.filter = Box::new(move |_| {
        i += 1;
        i > 6 || i % 2 == 0
    });
    n.start();
    n.run(Duration::from_secs(60));
    assert!(n.tunnel_up());
    lost += 3;
    assert!(n.a.ep.stats.retransmits + n.b.ep.stats.retransmits >= lost);
    // A duplicated request gets the cached response, not a second CHILD_SA.
    let (dup_to_b, _) = n
        .log
        .iter()
        .rev()
        .find(|(from_a, t)| {
            *from_a && Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IKE_AUTH)
        })
        .cloned()
        .unwrap();
    let _ = dup_to_b;
    let t = n
        .log
        .iter()
        .rev()
        .find(|(from_a, t)| {
            *from_a && Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IKE_AUTH)
        })
        .unwrap()
        .1
        .clone();
    let before = n.b.plane.installs;
    n.b.ep.handle(n.now, t.dst, t.src, &t.data);
    n.settle();
    assert_eq!(n.b.plane.installs, before);
    assert!(n.tunnel_up());
}

fn dpd_opts(action: DpdAction) -> ConnOpts {
    ConnOpts {
        dpd: Dpd {
            action,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        },
        ..Default::default()
    }
}

#[test]
fn dpd_detects_a_dead_peer_with_each_action() {
    for action in [DpdAction::Clear, DpdAction::Hold, DpdAction::Restart] {
        let mut n = Net::new(
            dpd_opts(action),
            ConnOpts {
                initiator: Initiator::ResponseOnly,
                ..dpd_opts(DpdAction::Clear)
            },
        );
        n.start();
        assert!(n.tunnel_up());
        // Liveness checks are answered while the peer lives.
        n.run(Duration::from_secs(45));
        assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
        assert!(
            n.sent_exchanges(true)
                .contains(&ExchangeType::INFORMATIONAL)
        );
        // The peer vanishes.
        n.filter = Box::new(|_| false);
        n.check_invariant = false;
        let died = n.now;
        n.run(Duration::from_secs(41));
        let expect = if action == DpdAction::Restart {
            ConnStatus::Connecting
        } else {
            ConnStatus::Down
        };
        assert_eq!(n.a.ep.conn_status(0), expect, "{action:?}");
        let (_, reason) =
            n.a.plane
                .statuses
                .iter()
                .rev()
                .find(|(s, _)| *s == ConnStatus::Down)
                .unwrap();
        assert!(reason.contains("did not answer"), "{reason}");
        assert!(n.a.plane.children.is_empty(), "{action:?}: SAs removed");
        assert!(n.now - died <= Duration::from_secs(41));
        n.filter = Box::new(|_| true);
        n.run(Duration::from_secs(200));
        match action {
            // Restart negotiates again (the peer's stale SA is replaced).
            DpdAction::Restart => assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active),
            _ => assert_eq!(n.a.ep.conn_status(0), ConnStatus::Down, "{action:?}"),
        }
    }
}

#[test]
fn cookie_challenge_then_established() {
    let mut sb = settings();
    sb.cookie_threshold = 0;
    let mut n = Net::with_settings(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
        settings(),
        sb,
    );
    n.start();
    assert!(n.tunnel_up());
    assert_eq!(n.b.ep.stats.cookies_sent, 1);
    assert_eq!(
        n.sent_exchanges(true),
        vec![
            ExchangeType::IKE_SA_INIT,
            ExchangeType::IKE_SA_INIT,
            ExchangeType::IKE_AUTH
        ]
    );
    // The second IKE_SA_INIT starts with the COOKIE notify.
    let second = &n.log.iter().filter(|(a, _)| *a).nth(1).unwrap().1;
    let m = Message::parse(&second.data).unwrap();
    let first = wire::Notify::parse(m.payloads[0].body).unwrap();
    assert_eq!(first.ntype, NotifyType::COOKIE);
}

#[test]
fn invalid_ke_payload_round_trip() {
    let mut n = Net::new(
        ConnOpts {
            ike: "aes128gcm16-prfsha256-ecp256-modp2048",
            ..Default::default()
        },
        ConnOpts {
            ike: "aes128gcm16-prfsha256-modp2048",
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(n.tunnel_up());
    assert_eq!(
        n.sent_exchanges(true),
        vec![
            ExchangeType::IKE_SA_INIT,
            ExchangeType::IKE_SA_INIT,
            ExchangeType::IKE_AUTH
        ]
    );
    let resp = &n.log.iter().find(|(a, _)| !*a).unwrap().1;
    let m = Message::parse(&resp.data).unwrap();
    let n0 = wire::Notify::parse(m.payloads[0].body).unwrap();
    assert_eq!(n0.ntype, NotifyType::INVALID_KE_PAYLOAD);
    assert_eq!(n0.data, 14u16.to_be_bytes());
}

fn down_reason(p: &Plane) -> String {
    match p.last_status() {
        Some((ConnStatus::Down, r)) => r.clone(),
        other => panic!("expected DOWN, got {other:?}"),
    }
}

#[test]
fn failures_are_clean_and_named() {
    // IKE proposals with nothing in common.
    let mut n = Net::new(
        ConnOpts {
            ike: "aes128gcm16-prfsha256-ecp256",
            ..Default::default()
        },
        ConnOpts {
            ike: "aes256-sha512-modp2048",
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(down_reason(&n.a.plane).contains("NO_PROPOSAL_CHOSEN"));
    assert!(down_reason(&n.b.plane).contains("NO_PROPOSAL_CHOSEN"));
    // ESP proposals with nothing in common: the IKE SA is deleted again.
    let mut n = Net::new(
        ConnOpts {
            esp: "aes128gcm16-esn",
            ..Default::default()
        },
        ConnOpts {
            esp: "aes128gcm16-noesn",
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(down_reason(&n.a.plane).contains("NO_PROPOSAL_CHOSEN"));
    assert!(n.a.plane.children.is_empty() && n.b.plane.children.is_empty());
    assert_eq!(n.a.ep.ike_sa_count().0, 0);
    assert_eq!(n.b.ep.ike_sa_count().0, 0);
    // Subnets with nothing in common.
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            local_ts: vec!["10.9.0.0/24"],
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(down_reason(&n.a.plane).contains("TS_UNACCEPTABLE"));
    // Different PSKs: AUTHENTICATION_FAILED on both sides, nothing installed.
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            psk: "another secret",
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    let (ra, rb) = (down_reason(&n.a.plane), down_reason(&n.b.plane));
    assert!(ra.contains("AUTHENTICATION_FAILED"), "{ra}");
    assert!(
        rb.contains("AUTHENTICATION_FAILED") && rb.contains("pre-shared keys differ"),
        "{rb}"
    );
    assert!(n.a.plane.children.is_empty() && n.b.plane.children.is_empty());
    assert_eq!(n.b.ep.ike_sa_count().0, 0);
    // The PSK never shows in what we log or debug-print.
    assert!(!format!("{:?} {ra} {rb}", n.a.ep.conn(0)).contains("correct horse"));
    // Wrong peer identity.
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            peer_id: Some("@someone.else"),
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(down_reason(&n.b.plane).contains("is not the configured @someone.else"));
    assert!(down_reason(&n.a.plane).contains("AUTHENTICATION_FAILED"));
}

#[test]
fn forced_encapsulation_floats_to_4500() {
    let mut n = Net::new(
        ConnOpts {
            encap: Encap::Force,
            ..Default::default()
        },
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(n.tunnel_up());
    assert_eq!(n.a.plane.out().unwrap().udp_encap, Some((4500, 4500)));
    assert_eq!(n.b.plane.out().unwrap().udp_encap, Some((4500, 4500)));
    // IKE_AUTH went to 4500 with the non-ESP marker.
    let auth: Vec<&Transmit> = n.log.iter().skip(2).map(|(_, t)| t).collect();
    assert!(
        auth.iter()
            .all(|t| t.dst.port() == 4500 && t.data[..4] == [0; 4])
    );
    // Keepalives from the side that "is behind a NAT".
    n.run(Duration::from_secs(25));
    assert!(n.log.iter().any(|(a, t)| *a && t.data == [0xff]));
}

#[test]
fn terminate_deletes_on_both_sides() {
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    n.a.ep.terminate(0, n.now);
    n.check_invariant = false;
    n.run(Duration::from_secs(5));
    assert!(n.a.plane.children.is_empty() && n.b.plane.children.is_empty());
    assert_eq!(n.a.ep.ike_sa_count().0, 0);
    assert_eq!(n.b.ep.ike_sa_count().0, 0);
    assert!(down_reason(&n.b.plane).contains("deleted the IKE_SA"));
}

/// `vpnctl conn down` then `conn up` before the peer has answered the Delete: the dying IKE
/// SA must not be mistaken for a live one (a CHILD_SA queued behind its Delete died with it,
/// and the connection stayed CONNECTING for good). A new IKE SA comes up instead.
#[test]
fn admin_up_right_after_down_brings_a_new_ike_sa() {
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(n.tunnel_up());
    n.check_invariant = false;
    // Down and up again in the same instant: nothing from B in between.
    n.a.ep.set_admin_up(0, false, n.now);
    n.a.ep.set_admin_up(0, true, n.now);
    n.run(Duration::from_secs(5));
    assert_eq!(
        n.a.plane.last_status().map(|s| s.0),
        Some(ConnStatus::Active),
        "{:?}",
        n.a.plane.last_status()
    );
    assert!(n.tunnel_up(), "a CHILD_SA each way after down/up");
    assert_eq!(
        n.a.ep.ike_sa_count().0,
        1,
        "the old IKE SA is gone, a new one is up"
    );
}

#[test]
fn half_open_sas_time_out() {
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    // IKE_AUTH never arrives.
    n.filter =
        Box::new(|t| Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IKE_SA_INIT));
    n.start();
    assert_eq!(n.b.ep.ike_sa_count(), (1, 0));
    n.run(Duration::from_secs(31));
    assert_eq!(n.b.ep.ike_sa_count().0, 0);
    // The initiator gives up after its retransmissions and reports why.
    n.run(Duration::from_secs(200));
    assert!(
        n.a.plane
            .statuses
            .iter()
            .any(|(s, r)| *s == ConnStatus::Down && r.contains("negotiation timed out")),
        "{:?}",
        n.a.plane.statuses
    );
    // ... and, bi-directional, tries again (with backoff).
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Connecting);
}

/// A raw IKE_SA_INIT request with extra payloads, for the negative tests.
pub(super) fn raw_init(extra: Payload<'_>, major: u8) -> Vec<u8> {
    init_request(
        0x1122_3344_5566_7788,
        "aes256gcm16-prfsha256-ecp256",
        major,
        extra,
    )
}

/// An IKE_SA_INIT request anyone could send (its KE is no valid point).
pub(super) fn init_request(ispi: u64, proposal: &str, major: u8, extra: Payload<'_>) -> Vec<u8> {
    let p = IkeProposal::parse(proposal).unwrap();
    let ke = vec![4u8; 64];
    let ni = vec![9u8; 32];
    let h = Header {
        ispi,
        rspi: 0,
        next_payload: PayloadType::NONE,
        major,
        minor: 0,
        exchange: ExchangeType::IKE_SA_INIT,
        flags: flags::INITIATOR,
        message_id: 0,
        length: 0,
    };
    wire::emit_message(
        &h,
        &[
            Payload::Sa(vec![p.to_wire(1, vec![])]),
            Payload::Ke(wire::Ke {
                group: 19,
                data: &ke,
            }),
            Payload::Nonce(&ni),
            extra,
        ],
    )
    .unwrap()
}

fn answer_to(data: &[u8]) -> Option<NotifyType> {
    let mut b = Endpoint::new(settings());
    b.add_conn(conn(B, A, &ConnOpts::default()));
    let now = Instant::now();
    let (la, lb) = (SocketAddr::new(ip(A), 500), SocketAddr::new(ip(B), 500));
    b.handle(now, lb, la, data);
    let t = b.poll_transmit()?;
    let m = Message::parse(&t.data).ok()?;
    let n = wire::Notify::parse(m.payloads.first()?.body).ok()?;
    Some(n.ntype)
}

#[test]
fn negative_requests_get_the_right_answers() {
    // Unknown critical payload.
    let crit = raw_init(
        Payload::Raw {
            ptype: PayloadType(200),
            critical: true,
            body: b"x",
        },
        2,
    );
    assert_eq!(
        answer_to(&crit),
        Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
    );
    // Unknown non-critical payload: skipped; the (invalid) KE then fails validation.
    let noncrit = raw_init(
        Payload::Raw {
            ptype: PayloadType(200),
            critical: false,
            body: b"x",
        },
        2,
    );
    assert_eq!(answer_to(&noncrit), Some(NotifyType::INVALID_SYNTAX));
    // Major version 3.
    let v3 = raw_init(Payload::VendorId(b"test"), 3);
    assert_eq!(answer_to(&v3), Some(NotifyType::INVALID_MAJOR_VERSION));
    // Truncated and garbage datagrams: no answer, no panic.
    for cut in 0..crit.len() {
        assert_eq!(answer_to(&crit[..cut]), None);
    }
    // An unknown peer address gets nothing.
    let mut b = Endpoint::new(settings());
    b.add_conn(conn(B, A, &ConnOpts::default()));
    let stranger = SocketAddr::new(ip("203.0.113.9"), 500);
    b.handle(
        Instant::now(),
        SocketAddr::new(ip(B), 500),
        stranger,
        &noncrit,
    );
    assert!(b.poll_transmit().is_none());
    assert_eq!(b.stats.dropped_no_conn, 1);
}

#[test]
fn corrupted_encrypted_messages_are_dropped() {
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    // Flip a bit in the first IKE_AUTH: dropped as an integrity failure, then the
    // retransmission (intact) succeeds.
    let mut done = false;
    n.start();
    let _ = &mut done;
    let t = n
        .log
        .iter()
        .find(|(a, t)| {
            *a && Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IKE_AUTH)
        })
        .unwrap()
        .1
        .clone();
    let mut bad = t.data.clone();
    let l = bad.len();
    bad[l - 3] ^= 1;
    // Replaying a corrupted copy of an old request: integrity failure, counted.
    n.b.ep.handle(n.now, t.dst, t.src, &bad);
    assert!(n.b.ep.stats.dropped_integrity + n.b.ep.stats.dropped_unexpected >= 1);
    assert!(n.b.ep.poll_transmit().is_none());
    assert!(n.tunnel_up());
}

#[test]
fn fuzzed_datagrams_never_panic() {
    // Valid messages from a real exchange, mutated.
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    let seeds: Vec<Transmit> = n.log.iter().map(|(_, t)| t.clone()).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000 {
        let t = &seeds[round % seeds.len()];
        let mut d = t.data.clone();
        match rnd() % 4 {
            0 => {
                let i = rnd() as usize % d.len();
                d[i] ^= 1 << (rnd() % 8);
            }
            1 => d.truncate(rnd() as usize % d.len()),
            2 => {
                let i = (rnd() as usize % d.len()).min(d.len() - 1);
                d[i] = rnd() as u8;
            }
            _ => d.extend_from_slice(&[rnd() as u8; 3]),
        }
        let to_b = t.dst.ip() == ip(B);
        let ep = if to_b { &mut n.b.ep } else { &mut n.a.ep };
        ep.handle(n.now, t.dst, t.src, &d);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
}

#[test]
fn establishes_over_ipv6_with_ipv6_selectors() {
    let v6 = |c: &mut ConnConfig, local: &str, peer: &str, lts: &str, pts: &str| {
        c.local = ip(local);
        c.peer = ip(peer);
        c.local_id = Identity::from(ip(local));
        c.peer_id = Identity::from(ip(peer));
        c.local_ts = vec![parse_prefix(lts).unwrap()];
        c.peer_ts = vec![parse_prefix(pts).unwrap()];
    };
    let mut ca = conn(A, B, &ConnOpts::default());
    v6(
        &mut ca,
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8:1::/64",
        "2001:db8:2::/64",
    );
    let mut cb = conn(
        B,
        A,
        &ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    v6(
        &mut cb,
        "2001:db8::2",
        "2001:db8::1",
        "2001:db8:2::/64",
        "2001:db8:1::/64",
    );
    let (mut a, mut b) = (Endpoint::new(settings()), Endpoint::new(settings()));
    a.add_conn(ca);
    b.add_conn(cb);
    let mut n = Net::from_endpoints(a, b);
    n.start();
    assert!(n.tunnel_up());
    let c = n.a.plane.out().unwrap();
    assert!(c.peer.is_ipv6());
    assert_eq!(c.peer_ts, vec![parse_prefix("2001:db8:2::/64").unwrap()]);
    // Rekey over IPv6 too.
    let id = n.a.plane.active.unwrap();
    n.a.ep.rekey_child(id, n.now);
    n.run(Duration::from_secs(5));
    assert!(n.tunnel_up());
    assert_eq!(n.a.plane.children.len(), 1);
}

#[test]
fn responder_picks_the_connection_by_identity_and_psk() {
    // Two connections between the same gateways, told apart by the initiator's identity.
    let mut ca = conn(
        A,
        B,
        &ConnOpts {
            psk: "the second site's secret",
            ..Default::default()
        },
    );
    ca.local_id = Identity::parse("@site-two").unwrap();
    ca.local_ts = vec![parse_prefix("10.7.0.0/24").unwrap()];
    let mut b = Endpoint::new(settings());
    b.add_conn(conn(
        B,
        A,
        &ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    ));
    let mut second = conn(
        B,
        A,
        &ConnOpts {
            psk: "the second site's secret",
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    second.peer_id = Identity::parse("@site-two").unwrap();
    second.peer_ts = vec![parse_prefix("10.7.0.0/24").unwrap()];
    b.add_conn(second);
    let mut a = Endpoint::new(settings());
    a.add_conn(ca);
    let mut n = Net::from_endpoints(a, b);
    n.start();
    assert!(n.tunnel_up());
    assert_eq!(n.b.ep.conn_status(1), ConnStatus::Active);
    assert_eq!(n.b.ep.conn_status(0), ConnStatus::Down);
    assert_eq!(n.b.plane.out().unwrap().conn, 1);
}

#[test]
fn both_ends_initiating_settle_on_one_ike_sa() {
    for _ in 0..20 {
        let mut n = Net::new(ConnOpts::default(), ConnOpts::default());
        n.start();
        n.run(Duration::from_secs(10));
        assert!(n.tunnel_up());
        assert_eq!(n.a.ep.ike_sa_count(), (1, 1));
        assert_eq!(n.b.ep.ike_sa_count(), (1, 1));
        assert_eq!(n.a.plane.children.len(), 1);
        assert_eq!(n.b.plane.children.len(), 1);
        assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
        assert_eq!(n.b.ep.conn_status(0), ConnStatus::Active);
    }
}

#[test]
fn child_deleted_then_created_again_on_the_same_ike_sa() {
    let o = || ConnOpts {
        esp: "aes128gcm16-modp2048",
        ..Default::default()
    };
    let mut n = Net::new(
        o(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..o()
        },
    );
    n.start();
    let old = n.a.plane.out().unwrap().spi_out;
    let child = n.a.plane.active.unwrap();
    n.check_invariant = false;
    n.a.ep.delete_child(child, n.now);
    n.run(Duration::from_secs(5));
    assert!(n.a.plane.children.is_empty() && n.b.plane.children.is_empty());
    assert_eq!(n.a.ep.ike_sa_count(), (1, 1), "the IKE SA stays");
    assert!(down_reason(&n.a.plane).contains("CHILD_SA deleted"));
    assert!(down_reason(&n.b.plane).contains("deleted the CHILD_SA"));
    // The responder-only side brings it back with CREATE_CHILD_SA (with PFS).
    n.check_invariant = true;
    n.b.ep.initiate(0, n.now);
    n.settle();
    assert!(n.tunnel_up());
    assert_ne!(n.a.plane.out().unwrap().spi_out, old);
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
    assert_eq!(n.b.ep.conn_status(0), ConnStatus::Active);
    assert_eq!(
        n.sent_exchanges(false).last(),
        Some(&ExchangeType::CREATE_CHILD_SA)
    );
    // And it rekeys like any other.
    let c = n.b.plane.active.unwrap();
    n.b.ep.rekey_child(c, n.now);
    n.run(Duration::from_secs(5));
    assert!(n.tunnel_up());
    assert_eq!(n.a.plane.children.len(), 1);
}

#[test]
fn refused_rekeys_keep_the_old_sa() {
    // A insists on PFS for rekeys, B has no PFS group: each refuses the other's rekey with
    // NO_PROPOSAL_CHOSEN, and the tunnel stays on its first SA.
    let mut n = Net::new(
        ConnOpts {
            esp: "aes128gcm16-modp2048",
            ..Default::default()
        },
        ConnOpts {
            esp: "aes128gcm16",
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    let spi = n.a.plane.out().unwrap().spi_out;
    let (ca, cb) = (n.a.plane.active.unwrap(), n.b.plane.active.unwrap());
    n.a.ep.rekey_child(ca, n.now);
    n.settle();
    n.b.ep.rekey_child(cb, n.now);
    n.settle();
    assert!(n.tunnel_up());
    assert_eq!(n.a.plane.out().unwrap().spi_out, spi);
    assert_eq!(n.a.plane.children.len(), 1);
    assert_eq!(n.b.plane.children.len(), 1);
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
    // Both requests were answered (encrypted: the refusal itself is seen in the counters).
    let responses = n
        .log
        .iter()
        .filter_map(|(_, t)| Header::parse(&t.data).ok())
        .filter(|h| h.exchange == ExchangeType::CREATE_CHILD_SA && h.is_response())
        .count();
    assert_eq!(responses, 2);
    assert_eq!(n.a.ep.stats.child_rekeyed + n.b.ep.stats.child_rekeyed, 0);
}

#[test]
fn several_subnets_of_both_families_with_narrowing() {
    let mut n = Net::new(
        ConnOpts {
            local_ts: vec!["10.1.0.0/24", "2001:db8:1::/64"],
            peer_ts: vec!["10.2.0.0/24", "2001:db8:2::/64"],
            ..Default::default()
        },
        ConnOpts {
            local_ts: vec!["10.2.0.0/24", "2001:db8:2::/64"],
            // B only allows part of A's IPv4 subnet.
            peer_ts: vec!["10.1.0.0/25", "2001:db8:1::/64"],
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    assert!(n.tunnel_up());
    let a = n.a.plane.out().unwrap();
    let p = |s: &str| parse_prefix(s).unwrap();
    assert_eq!(a.local_ts, vec![p("10.1.0.0/25"), p("2001:db8:1::/64")]);
    assert_eq!(a.peer_ts, vec![p("10.2.0.0/24"), p("2001:db8:2::/64")]);
    let b = n.b.plane.out().unwrap();
    assert_eq!(b.peer_ts, a.local_ts);
    assert_eq!(b.local_ts, a.peer_ts);
}

/// Both sides allow 10.1.0.0/16 on A's side, so the ragged ranges are all inside policy.
fn wide_opts(initiator: Initiator) -> ConnOpts {
    ConnOpts {
        local_ts: if initiator == Initiator::BiDirectional {
            vec!["10.1.0.0/16"]
        } else {
            vec!["10.2.0.0/24"]
        },
        peer_ts: if initiator == Initiator::BiDirectional {
            vec!["10.2.0.0/24"]
        } else {
            vec!["10.1.0.0/16"]
        },
        initiator,
        ..Default::default()
    }
}

fn normal_ts(s: &str) -> Vec<wire::Ts> {
    super::ts::to_ts(&[parse_prefix(s).unwrap()])
}

/// Issue 14 (H1): a message of ours that cannot be encoded (here 300 selectors, more than
/// the TS count octet holds) abandons its exchange, counted and reported, and nothing of it
/// is installed: the endpoint keeps working.
#[test]
fn messages_that_cannot_be_encoded_abandon_the_exchange() {
    let too_many = || {
        (0..300u32)
            .map(|i| {
                let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a01_0000 + 2 * i));
                wire::Ts::Range(wire::TrafficSelector::range(a, a))
            })
            .collect::<Vec<_>>()
    };
    // Our IKE_AUTH request: the IKE SA is dropped with the reason.
    let mut n = Net::new(
        wide_opts(Initiator::BiDirectional),
        wide_opts(Initiator::ResponseOnly),
    );
    n.a.ep.ts_override = Some((too_many(), normal_ts("10.2.0.0/24")));
    n.start();
    assert_eq!(n.a.ep.stats.encode_errors, 1);
    assert!(
        n.a.plane.warnings[0].contains("IKE_AUTH request"),
        "{:?}",
        n.a.plane.warnings
    );
    assert!(n.a.plane.warnings[0].contains("TS list too long"));
    assert!(down_reason(&n.a.plane).contains("could not be encoded"));
    assert_eq!(n.a.ep.ike_sa_count().0, 0);
    // Our IKE_AUTH answer: not sent, the half-open SA is forgotten.
    let mut n = Net::new(
        wide_opts(Initiator::BiDirectional),
        wide_opts(Initiator::ResponseOnly),
    );
    n.b.ep.ts_override = Some((too_many(), normal_ts("10.2.0.0/24")));
    n.start();
    assert_eq!(n.b.ep.stats.encode_errors, 1);
    assert!(n.b.plane.children.is_empty() && n.a.plane.children.is_empty());
    assert_eq!(n.b.ep.ike_sa_count().0, 0);
    // A rekey request: abandoned, the old CHILD_SA carries on and is rekeyed later.
    let mut n = Net::new(
        wide_opts(Initiator::BiDirectional),
        wide_opts(Initiator::ResponseOnly),
    );
    n.start();
    let spi = n.a.plane.out().unwrap().spi_out;
    n.a.ep.ts_override = Some((too_many(), normal_ts("10.2.0.0/24")));
    let child = n.a.plane.active.unwrap();
    n.a.ep.rekey_child(child, n.now);
    n.settle();
    assert_eq!(n.a.ep.stats.encode_errors, 1);
    assert_eq!(n.a.plane.out().unwrap().spi_out, spi);
    n.a.ep.ts_override = None;
    n.run(Duration::from_secs(31));
    assert!(n.tunnel_up());
    assert_ne!(
        n.a.plane.out().unwrap().spi_out,
        spi,
        "rekeyed on the next attempt"
    );
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
}

mod limits;
/// Sixteen ranges inside 10.1.0.0/16, 10.1.16i.1 - 10.1.16i+15.254: 22 prefixes each, 352
/// in all, more than a TS payload's count octet (an answer carrying them used to panic).
fn ragged_ts() -> Vec<wire::Ts> {
    (0..16u32)
        .map(|i| {
            let base = 0x0a01_0000 + (i << 12);
            wire::Ts::Range(wire::TrafficSelector::range(
                IpAddr::V4(std::net::Ipv4Addr::from(base + 1)),
                IpAddr::V4(std::net::Ipv4Addr::from(base + 4094)),
            ))
        })
        .collect()
}

/// Issue 14 (H1): selectors that split into more prefixes than `max_selectors` are refused,
/// counted on the refusing side: TS_UNACCEPTABLE from a responder (IKE_AUTH and rekey), a
/// failed exchange for an initiator (IKE_AUTH and rekey answers). Nothing of them is
/// installed, and the endpoints carry on.
#[test]
fn oversized_selectors_are_refused_and_counted() {
    let net = || {
        Net::new(
            wide_opts(Initiator::BiDirectional),
            wide_opts(Initiator::ResponseOnly),
        )
    };
    // Responder, IKE_AUTH: TS_UNACCEPTABLE.
    let mut n = net();
    n.a.ep.ts_override = Some((ragged_ts(), normal_ts("10.2.0.0/24")));
    n.start();
    assert_eq!(n.b.ep.stats.ts_over_limit, 1);
    assert!(
        n.b.plane
            .warnings
            .iter()
            .any(|w| w.contains("max_selectors")),
        "{:?}",
        n.b.plane.warnings
    );
    assert!(down_reason(&n.a.plane).contains("TS_UNACCEPTABLE"));
    assert!(n.a.plane.children.is_empty() && n.b.plane.children.is_empty());
    assert_eq!(n.a.ep.stats.encode_errors + n.b.ep.stats.encode_errors, 0);
    // The peer, honest again, gets its tunnel from the same endpoint.
    n.a.ep.ts_override = None;
    n.a.ep.set_admin_up(0, true, n.now);
    n.run(Duration::from_secs(5));
    assert!(n.tunnel_up());
    // Responder, rekey: TS_UNACCEPTABLE, the old SA carries on.
    let spi = n.a.plane.out().unwrap().spi_out;
    n.a.ep.ts_override = Some((ragged_ts(), normal_ts("10.2.0.0/24")));
    n.a.ep.rekey_child(n.a.plane.active.unwrap(), n.now);
    n.settle();
    assert_eq!(n.b.ep.stats.ts_over_limit, 2);
    assert_eq!(n.a.plane.out().unwrap().spi_out, spi);
    assert_eq!((n.a.plane.children.len(), n.b.plane.children.len()), (1, 1));
    assert!(n.tunnel_up());
    // Initiator, IKE_AUTH answer: refused, the IKE SA deleted.
    let mut n = net();
    n.b.ep.ts_override = Some((ragged_ts(), normal_ts("10.2.0.0/24")));
    n.check_invariant = false;
    n.start();
    assert_eq!(n.a.ep.stats.ts_over_limit, 1);
    assert!(n.a.plane.installs == 0 && n.a.plane.children.is_empty());
    assert!(down_reason(&n.a.plane).contains("not one we offered"));
    assert!(
        n.a.plane
            .warnings
            .iter()
            .any(|w| w.contains("max_selectors")),
        "{:?}",
        n.a.plane.warnings
    );
    assert_eq!(n.a.ep.ike_sa_count().0, 0);
    assert_eq!(n.b.ep.ike_sa_count().0, 0);
    // Initiator, rekey answer: refused, the old SA carries on.
    let mut n = net();
    n.start();
    let spi = n.a.plane.out().unwrap().spi_out;
    n.b.ep.ts_override = Some((ragged_ts(), normal_ts("10.2.0.0/24")));
    n.a.ep.rekey_child(n.a.plane.active.unwrap(), n.now);
    n.settle();
    assert_eq!(n.a.ep.stats.ts_over_limit, 1);
    assert_eq!(
        n.a.plane.installs, 1,
        "nothing of the refused rekey installed"
    );
    assert_eq!(n.a.plane.out().unwrap().spi_out, spi);
    assert!(n.tunnel_up());
}

/// An IKE_SA_INIT from A's address that B refuses (NO_PROPOSAL_CHOSEN): what anyone can
/// send, from any port, with any SPI.
pub(super) fn spoofed_init(i: u32) -> Vec<u8> {
    init_request(
        0x5000 + u64::from(i),
        "aes128gcm16-prfsha384-ecp384",
        2,
        Payload::VendorId(b"spoofed"),
    )
}

/// Issue 14 (M4): IKE_SA_INITs anyone can send from the peer's address (proposals we
/// refuse, any port, any SPI, or garbage) change no state: one DOWN naming the cause on a
/// connection that is down anyway, none on one that is connecting or up.
#[test]
fn spoofed_init_requests_change_no_state() {
    let o = || ConnOpts {
        initiator: Initiator::ResponseOnly,
        ..Default::default()
    };
    let mut b = Endpoint::new(settings());
    b.add_conn(conn(B, A, &o()));
    let (now, lb) = (Instant::now(), SocketAddr::new(ip(B), 500));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..1000 {
        let from = SocketAddr::new(ip(A), 1024 + i as u16);
        b.handle(now, lb, from, &spoofed_init(i));
        // Garbage too: an IKE_SA_INIT header, then noise.
        let mut junk = spoofed_init(i)[..28].to_vec();
        junk.extend((0..64).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        b.handle(now, lb, from, &junk);
    }
    let mut statuses = vec![];
    while let Some(e) = b.poll_event() {
        if let Event::Status { status, reason, .. } = e {
            statuses.push((status, reason));
        }
    }
    assert_eq!(
        statuses.len(),
        1,
        "{:?}",
        &statuses[..statuses.len().min(3)]
    );
    assert_eq!(statuses[0].0, ConnStatus::Down);
    assert!(statuses[0].1.contains("NO_PROPOSAL_CHOSEN"), "{statuses:?}");
    assert_eq!(b.ike_sa_count().0, 0);
    // A connects (its first IKE_SA_INIT lost): spoofed requests do not take it down.
    let mut n = Net::new(ConnOpts::default(), o());
    n.filter = Box::new(|_| false);
    n.start();
    let spoof = |n: &mut Net, i: u32| {
        let from = SocketAddr::new(ip(B), 2000 + i as u16);
        n.a.ep
            .handle(n.now, SocketAddr::new(ip(A), 500), from, &spoofed_init(i));
        n.settle();
    };
    for i in 0..100 {
        spoof(&mut n, i);
    }
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Connecting);
    assert!(
        n.a.plane.statuses.iter().all(|s| s.0 != ConnStatus::Down),
        "{:?}",
        n.a.plane.statuses
    );
    // Up (the retransmission gets through): still nothing.
    n.filter = Box::new(|_| true);
    n.run(Duration::from_secs(5));
    assert!(n.tunnel_up());
    let seen = n.a.plane.statuses.len();
    for i in 0..100 {
        spoof(&mut n, i);
    }
    assert_eq!(n.a.plane.statuses.len(), seen);
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
    assert!(n.tunnel_up());
}

/// `conn up` while our Delete of the CHILD_SA is on its way brings a new CHILD_SA: the dying
/// one counted as live, and the connection stayed DOWN on an established IKE SA (issue 14,
/// M5; found by `random_interleavings_always_converge`, seed 0x14002f).
#[test]
fn admin_up_while_a_child_is_being_deleted_brings_a_new_one() {
    let mut n = Net::new(
        ConnOpts::default(),
        ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        },
    );
    n.start();
    let old = n.a.plane.out().unwrap().spi_out;
    n.check_invariant = false;
    n.a.ep.delete_child(n.a.plane.active.unwrap(), n.now);
    n.a.ep.set_admin_up(0, true, n.now);
    n.run(Duration::from_secs(5));
    assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active);
    assert!(n.tunnel_up());
    assert_ne!(n.a.plane.out().unwrap().spi_out, old);
    assert_eq!(n.a.ep.ike_sa_count(), (1, 1));
}

/// xorshift64: the scenarios' choices, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One random scenario of issue 14 (M5): rekeys of either kind from either side, `conn down`
/// and `conn up`, CHILD_SA deletes, message loss up to blackouts long enough for DPD, at
/// random instants (several in the same instant too). Then the network heals and the
/// operator's last action is `conn up` (mostly, sometimes right after a rekey and `conn
/// down`) or `conn down`; within ten simulated minutes the connection must be ACTIVE on both
/// sides with one IKE SA and one CHILD_SA each and matching keys, or DOWN with nothing left
/// on either side.
fn chaos(seed: u64) {
    use std::{cell::RefCell, rc::Rc};
    struct Unseed;
    impl Drop for Unseed {
        fn drop(&mut self) {
            super::crypto::seed_test_rng(None);
        }
    }
    super::crypto::seed_test_rng(Some(seed));
    let _unseed = Unseed;
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dpd = |action| Dpd {
        action,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(40),
    };
    let esp = if r.chance(50) {
        "aes128gcm16-ecp256"
    } else {
        "aes128gcm16"
    };
    let b_initiates = r.chance(30);
    let mut n = Net::new(
        ConnOpts {
            esp,
            dpd: dpd(DpdAction::Restart),
            ..Default::default()
        },
        ConnOpts {
            esp,
            dpd: dpd(if b_initiates {
                DpdAction::Restart
            } else {
                DpdAction::Clear
            }),
            initiator: if b_initiates {
                Initiator::BiDirectional
            } else {
                Initiator::ResponseOnly
            },
            ..Default::default()
        },
    );
    // Percent of datagrams lost, and the loss's own generator.
    let loss = Rc::new(RefCell::new((0u64, Rng(seed ^ 0x5555_5555))));
    let l = loss.clone();
    n.filter = Box::new(move |_| {
        let (pct, rng) = &mut *l.borrow_mut();
        !rng.chance(*pct)
    });
    n.check_invariant = false;
    n.start();
    let child = |p: &Plane, r: &mut Rng| {
        let ids: Vec<ChildId> = p.children.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[r.below(ids.len() as u64) as usize])
    };
    for _ in 0..4 + r.below(12) {
        let now = n.now;
        let act = r.below(10);
        match act {
            // Rekey (0, 1) or delete (6, 7) a CHILD_SA of A (even) or B (odd).
            0 | 1 | 6 | 7 => {
                let side = if act.is_multiple_of(2) {
                    &mut n.a
                } else {
                    &mut n.b
                };
                if let Some(c) = child(&side.plane, &mut r) {
                    if act < 2 {
                        side.ep.rekey_child(c, now)
                    } else {
                        side.ep.delete_child(c, now)
                    }
                }
            }
            2 => n.a.ep.rekey_ike(0, now),
            3 => n.b.ep.rekey_ike(0, now),
            4 => n.a.ep.set_admin_up(0, false, now),
            5 => n.a.ep.set_admin_up(0, true, now),
            // Lossy, or a blackout (DPD gives up after 40 s of it).
            8 => loss.borrow_mut().0 = [20, 50, 100][r.below(3) as usize],
            _ => loss.borrow_mut().0 = 0,
        }
        match r.below(4) {
            // The next action in the same instant, the peer's answers delivered or not.
            0 => n.settle(),
            1 => n.run(Duration::from_millis(r.below(3000))),
            _ => n.run(Duration::from_secs(r.below(90))),
        }
    }
    // The network heals and what is in flight lands (a Delete the peer's operator sent
    // may legitimately take the connection down after our last `conn up`).
    loss.borrow_mut().0 = 0;
    n.run(Duration::from_secs(120));
    if r.chance(30) {
        // The sequence of the report: a rekey in flight, `conn down`, `conn up`.
        if let Some(c) = child(&n.a.plane, &mut r) {
            n.a.ep.rekey_child(c, n.now);
        }
        n.a.ep.set_admin_up(0, false, n.now);
    }
    let up = r.chance(80);
    n.a.ep.set_admin_up(0, up, n.now);
    n.run(Duration::from_secs(600));
    let state = format!(
        "seed {seed:#x}: A {:?} {:?} {} children, B {:?} {:?} {} children; A statuses {:?}",
        n.a.ep.conn_status(0),
        n.a.ep.ike_sa_count(),
        n.a.plane.children.len(),
        n.b.ep.conn_status(0),
        n.b.ep.ike_sa_count(),
        n.b.plane.children.len(),
        &n.a.plane.statuses[n.a.plane.statuses.len().saturating_sub(4)..],
    );
    if up {
        assert_eq!(n.a.ep.conn_status(0), ConnStatus::Active, "{state}");
        assert_eq!(n.b.ep.conn_status(0), ConnStatus::Active, "{state}");
        assert!(n.tunnel_up(), "{state}");
        n.invariant();
        assert_eq!(n.a.ep.ike_sa_count(), (1, 1), "{state}");
        assert_eq!(n.b.ep.ike_sa_count(), (1, 1), "{state}");
        assert_eq!(n.a.plane.children.len(), 1, "{state}");
        assert_eq!(n.b.plane.children.len(), 1, "{state}");
    } else {
        assert_eq!(n.a.ep.conn_status(0), ConnStatus::Down, "{state}");
        assert_eq!(n.a.ep.ike_sa_count().0, 0, "{state}");
        assert!(n.a.plane.children.is_empty(), "{state}");
        assert!(n.b.plane.children.is_empty(), "{state}");
    }
}

/// Issue 14 (M5): 500 random interleavings (see [`chaos`]) always end ACTIVE, or DOWN when
/// the operator's last word was `conn down`. A failure names its seed; `chaos(seed)`
/// replays it exactly (nonces, SPIs and jitter come from the seed too). IKE_CHAOS_CASES=N
/// runs more.
#[test]
fn random_interleavings_always_converge() {
    // Seeds that found bugs in the first version of these scenarios (kept whatever the
    // range below becomes): `conn up` ignoring a CHILD_SA being deleted (0x14002f, now
    // `admin_up_while_a_child_is_being_deleted_brings_a_new_one`), a closing IKE SA taken
    // for the survivor of two (0x1400c7), a rekey completing after `conn down` (0x140174),
    // a rekeyed IKE SA kept for hours when the peer's Delete never came (0x1401f0).
    const FOUND: [u64; 4] = [0x14_002f, 0x14_00c7, 0x14_0174, 0x14_01f0];
    let cases: u64 = std::env::var("IKE_CHAOS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut failed = vec![];
    for seed in FOUND.into_iter().chain((0..cases).map(|i| 0x14_0000 + i)) {
        if let Err(e) = std::panic::catch_unwind(|| chaos(seed)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("seed {seed:#x}: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {cases} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
