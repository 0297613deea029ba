//! What the protocol core needs to know about one site connection (a Neutron
//! `ipsec_site_connection` with its IKE and IPsec policies).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use zeroize::Zeroizing;

use super::{
    proposal::{EspProposal, IkeProposal},
    wire::IdType,
};
use crate::dataplane::worker::Prefix;

/// An IKE identity (RFC 7296 3.5).
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    Fqdn(String),
    Email(String),
    KeyId(Vec<u8>),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) => write!(f, "@{s}"),
            Identity::Email(s) => write!(f, "{s}"),
            Identity::KeyId(k) => {
                write!(f, "keyid:")?;
                k.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl Identity {
    /// strongSwan's conventions: an address is an IP identity, `a@b` an email address,
    /// `@name` or a bare name an FQDN, `keyid:hex` a key id.
    pub fn parse(s: &str) -> Option<Identity> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if let Ok(a) = s.parse::<IpAddr>() {
            return Some(Identity::from(a));
        }
        if let Some(hex) = s.strip_prefix("keyid:") {
            if hex.len() % 2 != 0 || hex.is_empty() {
                return None;
            }
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect();
            return bytes.map(Identity::KeyId);
        }
        if let Some(name) = s.strip_prefix('@') {
            return (!name.is_empty()).then(|| Identity::Fqdn(name.to_string()));
        }
        if s.contains('@') {
            return Some(Identity::Email(s.to_string()));
        }
        Some(Identity::Fqdn(s.to_string()))
    }

    pub fn to_wire(&self) -> (IdType, Vec<u8>) {
        match self {
            Identity::Ipv4(a) => (IdType::IPV4_ADDR, a.octets().to_vec()),
            Identity::Ipv6(a) => (IdType::IPV6_ADDR, a.octets().to_vec()),
            Identity::Fqdn(s) => (IdType::FQDN, s.as_bytes().to_vec()),
            Identity::Email(s) => (IdType::RFC822_ADDR, s.as_bytes().to_vec()),
            Identity::KeyId(k) => (IdType::KEY_ID, k.clone()),
        }
    }

    pub fn matches(&self, id_type: IdType, data: &[u8]) -> bool {
        let (t, d) = self.to_wire();
        t == id_type && d == data
    }

    /// How a received identity is shown in logs.
    pub fn describe(id_type: IdType, data: &[u8]) -> String {
        match id_type {
            IdType::IPV4_ADDR if data.len() == 4 => {
                Ipv4Addr::from(<[u8; 4]>::try_from(data).expect("len")).to_string()
            }
            IdType::IPV6_ADDR if data.len() == 16 => {
                Ipv6Addr::from(<[u8; 16]>::try_from(data).expect("len")).to_string()
            }
            IdType::FQDN | IdType::RFC822_ADDR => {
                String::from_utf8_lossy(data).chars().take(128).collect()
            }
            t => format!("{t:?} ({} bytes)", data.len()),
        }
    }
}

impl From<IpAddr> for Identity {
    fn from(a: IpAddr) -> Identity {
        match a {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        }
    }
}

/// Neutron's `initiator`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Initiator {
    BiDirectional,
    ResponseOnly,
}

/// Neutron's `dpd.action`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DpdAction {
    /// Remove the SAs, keep discarding the protected traffic, and negotiate again when the
    /// operator (or the shell, on demand) asks.
    Hold,
    /// Remove the SAs; the connection stays down.
    Clear,
    /// Remove the SAs and negotiate again at once.
    Restart,
    /// No liveness checks (retransmission failure still ends the IKE SA, then as Clear).
    Disabled,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Dpd {
    pub action: DpdAction,
    /// Idle time before a liveness check (Neutron default 30 s).
    pub interval: Duration,
    /// The peer is dead when a request stays unanswered this long (Neutron default 120 s).
    pub timeout: Duration,
}

impl Default for Dpd {
    fn default() -> Dpd {
        Dpd {
            action: DpdAction::Hold,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(120),
        }
    }
}

/// UDP encapsulation of ESP (RFC 3948).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Encap {
    /// When NAT detection finds a NAT on either side.
    Auto,
    /// Always: our NAT_DETECTION_SOURCE_IP is made not to match, as strongSwan's
    /// `encap = yes` does, so both sides float to port 4500.
    Force,
}

/// Lifetimes: rekeying starts a margin (with jitter) before the hard limit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub ike: Duration,
    pub child: Duration,
    /// Rekey the CHILD_SA after this many packets / bytes in either direction.
    pub child_packets: Option<u64>,
    pub child_bytes: Option<u64>,
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        Lifetimes {
            ike: Duration::from_secs(3600 * 3),
            child: Duration::from_secs(3600),
            child_packets: None,
            child_bytes: None,
        }
    }
}

#[derive(Clone)]
pub struct ConnConfig {
    pub name: String,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub local_id: Identity,
    pub peer_id: Identity,
    pub psk: Zeroizing<Vec<u8>>,
    /// IKE SA proposals, in order of preference.
    pub ike: Vec<IkeProposal>,
    /// ESP proposals (with the PFS groups used when rekeying), in order of preference.
    pub esp: Vec<EspProposal>,
    pub local_ts: Vec<Prefix>,
    pub peer_ts: Vec<Prefix>,
    pub initiator: Initiator,
    pub lifetimes: Lifetimes,
    pub dpd: Dpd,
    pub encap: Encap,
    pub admin_up: bool,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("local_id", &self.local_id)
            .field("peer_id", &self.peer_id)
            .field("psk", &"<redacted>")
            .field("ike", &self.ike)
            .field("esp", &self.esp)
            .field("local_ts", &self.local_ts)
            .field("peer_ts", &self.peer_ts)
            .field("initiator", &self.initiator)
            .field("lifetimes", &self.lifetimes)
            .field("dpd", &self.dpd)
            .field("encap", &self.encap)
            .field("admin_up", &self.admin_up)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(
            Identity::parse("172.24.4.233"),
            Some(Identity::Ipv4("172.24.4.233".parse().unwrap()))
        );
        assert_eq!(
            Identity::parse("@west.example"),
            Some(Identity::Fqdn("west.example".into()))
        );
        assert_eq!(
            Identity::parse("vpn@example.org"),
            Some(Identity::Email("vpn@example.org".into()))
        );
        assert_eq!(
            Identity::parse("keyid:0a0B"),
            Some(Identity::KeyId(vec![10, 11]))
        );
        assert_eq!(Identity::parse("keyid:0"), None);
        assert_eq!(Identity::parse(""), None);
        let id = Identity::parse("2001:db8::1").unwrap();
        let (t, d) = id.to_wire();
        assert!(id.matches(t, &d));
        assert_eq!(Identity::describe(t, &d), "2001:db8::1");
    }
}
