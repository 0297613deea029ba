//! What several targets share: a connection between two test addresses, as the IKE tests
//! configure one (`src/ike/tests.rs`).

use std::net::IpAddr;

use vpn_userspace::{
    config::parse_prefix,
    ike::{
        conn::{ConnConfig, Dpd, Encap, Identity, Initiator, Lifetimes},
        proposal::{EspProposal, IkeProposal},
    },
};
use zeroize::Zeroizing;

pub const A: &str = "192.0.2.1";
pub const B: &str = "198.51.100.2";

/// `local` -> `peer` (A or B), each side protecting its own /24, with one ESP proposal
/// (`esp`, e.g. "aes128gcm16-esn") and rekeying with PFS where `esp` names a group.
pub fn conn(name: &str, local: &str, peer: &str, esp: &str, initiator: Initiator) -> ConnConfig {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let (lts, pts) = if local == A {
        ("10.1.0.0/24", "10.2.0.0/24")
    } else {
        ("10.2.0.0/24", "10.1.0.0/24")
    };
    ConnConfig {
        name: name.into(),
        local: ip(local),
        peer: ip(peer),
        local_id: Identity::from(ip(local)),
        peer_id: Identity::from(ip(peer)),
        psk: Zeroizing::new(b"correct horse battery staple".to_vec()),
        ike: vec![IkeProposal::parse("aes256gcm16-prfsha256-ecp256").unwrap()],
        esp: vec![EspProposal::parse(esp).unwrap()],
        local_ts: vec![parse_prefix(lts).unwrap()],
        peer_ts: vec![parse_prefix(pts).unwrap()],
        initiator,
        lifetimes: Lifetimes::default(),
        dpd: Dpd::default(),
        encap: Encap::Auto,
        admin_up: true,
    }
}
