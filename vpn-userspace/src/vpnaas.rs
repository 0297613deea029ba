//! The Neutron-VPNaaS-shaped part of vpnd's configuration: `ikepolicy`, `ipsecpolicy`,
//! `vpnservice` and `ipsec_site_connection`, mapped one to one from the Neutron resources,
//! plus what Neutron leaves implicit (tenant mapping, replay window, UDP encapsulation).
//!
//! Values Neutron accepts but we do not implement (IKEv1, AH, transport mode, 3DES, SHA-1,
//! MODP-1024, ...) are refused with a message naming the field, never ignored.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    config::{Config, ConfigError, parse_prefix},
    ike::{
        conn::{ConnConfig, Dpd, DpdAction, Encap, Identity, Initiator, Lifetimes},
        crypto::{DhGroup, Encr, Integ, Prf},
        proposal::{EspProposal, IkeProposal, dh_token},
    },
};

/// Neutron's lifetime: seconds, or `{ units = "seconds" | "kilobytes", value = N }`.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(untagged)]
pub enum Lifetime {
    Seconds(u64),
    Units { units: LifetimeUnits, value: u64 },
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LifetimeUnits {
    Seconds,
    Kilobytes,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct IkePolicy {
    pub name: String,
    #[serde(default = "d_ike_encr")]
    pub encryption_algorithm: String,
    #[serde(default = "d_auth")]
    pub auth_algorithm: String,
    #[serde(default = "d_pfs")]
    pub pfs: String,
    #[serde(default = "d_ike_version")]
    pub ike_version: String,
    #[serde(default)]
    pub phase1_negotiation_mode: Option<String>,
    pub lifetime: Option<Lifetime>,
    /// strongSwan-style proposals, replacing the three fields above when given
    /// (e.g. `["aes256gcm16-prfsha256-modp2048", "aes128-sha256-ecp256"]`).
    #[serde(default)]
    pub proposals: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct IpsecPolicy {
    pub name: String,
    #[serde(default = "d_esp")]
    pub transform_protocol: String,
    #[serde(default = "d_tunnel")]
    pub encapsulation_mode: String,
    #[serde(default = "d_esp_encr")]
    pub encryption_algorithm: String,
    #[serde(default = "d_auth")]
    pub auth_algorithm: String,
    #[serde(default = "d_pfs")]
    pub pfs: String,
    pub lifetime: Option<Lifetime>,
    /// Extended sequence numbers (beyond Neutron; strongSwan-libipsec peers need false).
    #[serde(default)]
    pub esn: bool,
    #[serde(default)]
    pub proposals: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct VpnService {
    pub name: String,
    /// The [[tenant]] whose traffic this router protects.
    pub tenant: u32,
    /// The router's external (wire) address: our IKE and ESP endpoint.
    pub external_address: IpAddr,
    #[serde(default)]
    pub local_subnets: Vec<String>,
}

/// Neutron's endpoint group: a named list of CIDRs (`type = "cidr"`). Groups of Neutron
/// subnet ids (`type = "subnet"`) need Neutron's database and are refused.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EndpointGroup {
    pub name: String,
    #[serde(rename = "type", default = "d_cidr")]
    pub kind: String,
    pub endpoints: Vec<String>,
}

fn d_cidr() -> String {
    "cidr".into()
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct DpdCfg {
    pub action: Option<String>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConnection {
    pub name: String,
    pub vpnservice: String,
    pub ikepolicy: String,
    pub ipsecpolicy: String,
    pub peer_address: IpAddr,
    /// Default: the peer address.
    pub peer_id: Option<String>,
    /// Default: the vpnservice's external address.
    pub local_id: Option<String>,
    /// The peer's subnets, or `peer_ep_group` naming an [[endpoint_group]].
    #[serde(default)]
    pub peer_cidrs: Vec<String>,
    #[serde(default)]
    pub peer_ep_group: Option<String>,
    /// Our subnets from an [[endpoint_group]] instead of the vpnservice's local_subnets.
    #[serde(default)]
    pub local_ep_group: Option<String>,
    pub psk: Option<String>,
    pub psk_file: Option<PathBuf>,
    #[serde(default = "d_initiator")]
    pub initiator: String,
    #[serde(default = "d_true")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub dpd: DpdCfg,
    pub mtu: Option<u16>,
    /// "auto" (when a NAT is detected) or "force".
    #[serde(default = "d_auto")]
    pub udp_encap: String,
    #[serde(default = "d_window")]
    pub replay_window: u32,
}

impl fmt::Debug for SiteConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteConnection")
            .field("name", &self.name)
            .field("peer_address", &self.peer_address)
            .field("psk", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Daemon-wide IKE settings.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct IkeSettings {
    #[serde(default = "d_500")]
    pub port: u16,
    #[serde(default = "d_4500")]
    pub natt_port: u16,
    #[serde(default = "d_30")]
    pub cookie_threshold: usize,
    #[serde(default = "d_30u")]
    pub half_open_timeout: u64,
    /// Seconds a rekeyed SA's inbound half stays after deletion (packets in flight).
    #[serde(default = "d_2")]
    pub rekey_overlap: u64,
}

impl Default for IkeSettings {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn d_500() -> u16 {
    500
}
fn d_4500() -> u16 {
    4500
}
fn d_30() -> usize {
    30
}
fn d_30u() -> u64 {
    30
}
fn d_2() -> u64 {
    2
}
fn d_ike_encr() -> String {
    "aes-256-gcm-16".into()
}
fn d_esp_encr() -> String {
    "aes-128-gcm-16".into()
}
fn d_auth() -> String {
    "sha256".into()
}
fn d_pfs() -> String {
    "group14".into()
}
fn d_ike_version() -> String {
    "v2".into()
}
fn d_esp() -> String {
    "esp".into()
}
fn d_tunnel() -> String {
    "tunnel".into()
}
fn d_initiator() -> String {
    "bi-directional".into()
}
fn d_true() -> bool {
    true
}
fn d_auto() -> String {
    "auto".into()
}
fn d_window() -> u32 {
    1024
}

/// A site connection with everything resolved and checked.
#[derive(Debug)]
pub struct ResolvedConn {
    pub conn: ConnConfig,
    pub tenant: u32,
    pub replay_window: u32,
    pub mtu: Option<u16>,
}

fn pfs_group(s: &str) -> Result<DhGroup, String> {
    dh_token(s).ok_or_else(|| {
        format!("{s:?} is not supported (group14 = MODP-2048, group19 = ECP-256, group20 = ECP-384, group31 = Curve25519)")
    })
}

fn ike_encr(s: &str) -> Result<Encr, String> {
    Ok(match s {
        "aes-128" => Encr::AesCbc { key_bits: 128 },
        "aes-192" => Encr::AesCbc { key_bits: 192 },
        "aes-256" => Encr::AesCbc { key_bits: 256 },
        "aes-128-gcm-16" => Encr::AesGcm16 { key_bits: 128 },
        "aes-256-gcm-16" => Encr::AesGcm16 { key_bits: 256 },
        other => {
            return Err(format!(
                "{other:?} is not supported (aes-128, aes-192, aes-256, aes-128-gcm-16, aes-256-gcm-16)"
            ));
        }
    })
}

fn auth_alg(s: &str) -> Result<(Integ, Prf), String> {
    Ok(match s {
        "sha256" => (Integ::HmacSha256_128, Prf::HmacSha256),
        "sha384" => (Integ::HmacSha384_192, Prf::HmacSha384),
        "sha512" => (Integ::HmacSha512_256, Prf::HmacSha512),
        other => {
            return Err(format!(
                "{other:?} is not supported (sha256, sha384, sha512)"
            ));
        }
    })
}

fn seconds(l: Option<Lifetime>, default: u64) -> Result<(Duration, Option<u64>), String> {
    match l {
        None => Ok((Duration::from_secs(default), None)),
        Some(Lifetime::Seconds(s))
        | Some(Lifetime::Units {
            units: LifetimeUnits::Seconds,
            value: s,
        }) => {
            if s < 60 {
                return Err(format!("{s} seconds is too short (at least 60)"));
            }
            Ok((Duration::from_secs(s), None))
        }
        Some(Lifetime::Units {
            units: LifetimeUnits::Kilobytes,
            value,
        }) => Ok((
            Duration::from_secs(default),
            Some(value.saturating_mul(1024)),
        )),
    }
}

impl Config {
    /// Resolves every `ipsec_site_connection` against its policies and service.
    pub fn resolve_connections(&self, path: &Path) -> Result<Vec<ResolvedConn>, ConfigError> {
        let mut out = vec![];
        let file = path.display().to_string();
        let e = |entry: String, field: &str, msg: String| ConfigError {
            file: file.clone(),
            entry,
            field: field.into(),
            msg,
        };
        for (kind, names) in [
            (
                "ikepolicy",
                self.ikepolicies.iter().map(|p| &p.name).collect::<Vec<_>>(),
            ),
            (
                "ipsecpolicy",
                self.ipsecpolicies.iter().map(|p| &p.name).collect(),
            ),
            (
                "vpnservice",
                self.vpnservices.iter().map(|p| &p.name).collect(),
            ),
            (
                "ipsec_site_connection",
                self.connections.iter().map(|p| &p.name).collect(),
            ),
            (
                "endpoint_group",
                self.endpoint_groups.iter().map(|p| &p.name).collect(),
            ),
        ] {
            for (i, n) in names.iter().enumerate() {
                if names[..i].contains(n) {
                    return Err(e(format!("{kind} {n:?}"), "name", "defined twice".into()));
                }
            }
        }
        for c in &self.connections {
            let entry = format!("ipsec_site_connection {:?}", c.name);
            let ce = |field: &str, msg: String| e(entry.clone(), field, msg);
            let svc = self
                .vpnservices
                .iter()
                .find(|s| s.name == c.vpnservice)
                .ok_or_else(|| {
                    ce(
                        "vpnservice",
                        format!("no [[vpnservice]] named {:?}", c.vpnservice),
                    )
                })?;
            let ikep = self
                .ikepolicies
                .iter()
                .find(|s| s.name == c.ikepolicy)
                .ok_or_else(|| {
                    ce(
                        "ikepolicy",
                        format!("no [[ikepolicy]] named {:?}", c.ikepolicy),
                    )
                })?;
            let ipsp = self
                .ipsecpolicies
                .iter()
                .find(|s| s.name == c.ipsecpolicy)
                .ok_or_else(|| {
                    ce(
                        "ipsecpolicy",
                        format!("no [[ipsecpolicy]] named {:?}", c.ipsecpolicy),
                    )
                })?;
            let se = |field: &str, msg: String| e(format!("vpnservice {:?}", svc.name), field, msg);
            if !self.tenants.iter().any(|t| t.id == svc.tenant) {
                return Err(se(
                    "tenant",
                    format!("no [[tenant]] with id {}", svc.tenant),
                ));
            }
            let ike = ike_proposals(ikep)
                .map_err(|(f, m)| e(format!("ikepolicy {:?}", ikep.name), f, m))?;
            let (esp, child_bytes) = esp_proposals(ipsp)
                .map_err(|(f, m)| e(format!("ipsecpolicy {:?}", ipsp.name), f, m))?;
            let (ike_life, _) = seconds(ikep.lifetime, 3600)
                .map_err(|m| e(format!("ikepolicy {:?}", ikep.name), "lifetime", m))?;
            let (child_life, _) = seconds(ipsp.lifetime, 3600)
                .map_err(|m| e(format!("ipsecpolicy {:?}", ipsp.name), "lifetime", m))?;
            let group = |name: &str, field: &str| -> Result<Vec<String>, ConfigError> {
                let g = self
                    .endpoint_groups
                    .iter()
                    .find(|g| g.name == name)
                    .ok_or_else(|| ce(field, format!("no [[endpoint_group]] named {name:?}")))?;
                if g.kind != "cidr" {
                    return Err(e(
                        format!("endpoint_group {:?}", g.name),
                        "type",
                        format!(
                            "{:?}: only \"cidr\" groups are supported (subnet ids need Neutron's database)",
                            g.kind
                        ),
                    ));
                }
                Ok(g.endpoints.clone())
            };
            let (local_src, local_field) = match (&c.local_ep_group, svc.local_subnets.is_empty()) {
                (Some(g), true) => (group(g, "local_ep_group")?, "local_ep_group"),
                (Some(_), false) => {
                    return Err(ce(
                        "local_ep_group",
                        format!(
                            "vpnservice {:?} has local_subnets already; use one or the other",
                            svc.name
                        ),
                    ));
                }
                (None, _) => (svc.local_subnets.clone(), "local_subnets"),
            };
            let local_ts = local_src
                .iter()
                .map(|s| {
                    parse_prefix(s).ok_or_else(|| ce(local_field, format!("{s:?} is not a prefix")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if local_ts.is_empty() {
                return Err(se(
                    "local_subnets",
                    "at least one subnet (or a local_ep_group on the connection)".into(),
                ));
            }
            let (peer_src, peer_field) = match (&c.peer_ep_group, c.peer_cidrs.is_empty()) {
                (Some(g), true) => (group(g, "peer_ep_group")?, "peer_ep_group"),
                (Some(_), false) => {
                    return Err(ce(
                        "peer_ep_group",
                        "give peer_cidrs or peer_ep_group, not both".into(),
                    ));
                }
                (None, _) => (c.peer_cidrs.clone(), "peer_cidrs"),
            };
            let peer_ts = peer_src
                .iter()
                .map(|s| {
                    parse_prefix(s).ok_or_else(|| ce(peer_field, format!("{s:?} is not a prefix")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if peer_ts.is_empty() {
                return Err(ce(
                    "peer_cidrs",
                    "at least one CIDR (or a peer_ep_group)".into(),
                ));
            }
            if svc.external_address.is_ipv4() != c.peer_address.is_ipv4() {
                return Err(ce(
                    "peer_address",
                    "must be the address family of the vpnservice's external_address".into(),
                ));
            }
            let psk = match (&c.psk, &c.psk_file) {
                (Some(p), None) => Zeroizing::new(p.as_bytes().to_vec()),
                (None, Some(f)) => {
                    let t = Zeroizing::new(
                        std::fs::read_to_string(f)
                            .map_err(|err| ce("psk_file", format!("{}: {err}", f.display())))?,
                    );
                    Zeroizing::new(t.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
                }
                _ => return Err(ce("psk", "give exactly one of psk and psk_file".into())),
            };
            if psk.len() < 8 {
                return Err(ce(
                    "psk",
                    "shorter than 8 bytes; use a long random secret".into(),
                ));
            }
            let id = |s: &Option<String>, default: IpAddr, field: &str| match s {
                None => Ok(Identity::from(default)),
                Some(s) => {
                    Identity::parse(s).ok_or_else(|| ce(field, format!("{s:?} is not an identity")))
                }
            };
            let initiator = match c.initiator.as_str() {
                "bi-directional" => Initiator::BiDirectional,
                "response-only" => Initiator::ResponseOnly,
                o => {
                    return Err(ce(
                        "initiator",
                        format!("{o:?}: use bi-directional or response-only"),
                    ));
                }
            };
            let d = Dpd::default();
            let dpd = Dpd {
                action: match c.dpd.action.as_deref() {
                    None | Some("hold") => DpdAction::Hold,
                    Some("clear") => DpdAction::Clear,
                    Some("restart") | Some("restart-by-peer") => DpdAction::Restart,
                    Some("disabled") => DpdAction::Disabled,
                    Some(o) => {
                        return Err(ce(
                            "dpd.action",
                            format!("{o:?}: use hold, clear, restart or disabled"),
                        ));
                    }
                },
                interval: c.dpd.interval.map_or(d.interval, Duration::from_secs),
                timeout: c.dpd.timeout.map_or(d.timeout, Duration::from_secs),
            };
            if dpd.interval.is_zero() || dpd.timeout <= dpd.interval {
                return Err(ce(
                    "dpd.timeout",
                    "must be greater than dpd.interval (> 0)".into(),
                ));
            }
            let encap = match c.udp_encap.as_str() {
                "auto" => Encap::Auto,
                "force" => Encap::Force,
                o => return Err(ce("udp_encap", format!("{o:?}: use auto or force"))),
            };
            if c.replay_window > vpn_common::replay::MAX_WINDOW {
                return Err(ce(
                    "replay_window",
                    format!("at most {}", vpn_common::replay::MAX_WINDOW),
                ));
            }
            if let Some(m) = c.mtu
                && m < 68
            {
                return Err(ce("mtu", "at least 68".into()));
            }
            out.push(ResolvedConn {
                conn: ConnConfig {
                    name: c.name.clone(),
                    local: svc.external_address,
                    peer: c.peer_address,
                    local_id: id(&c.local_id, svc.external_address, "local_id")?,
                    peer_id: id(&c.peer_id, c.peer_address, "peer_id")?,
                    psk,
                    ike,
                    esp,
                    local_ts,
                    peer_ts,
                    initiator,
                    lifetimes: Lifetimes {
                        ike: ike_life,
                        child: child_life,
                        child_packets: None,
                        child_bytes,
                    },
                    dpd,
                    encap,
                    admin_up: c.admin_state_up,
                },
                tenant: svc.tenant,
                replay_window: c.replay_window,
                mtu: c.mtu,
            });
        }
        Ok(out)
    }
}

type FieldErr = (&'static str, String);

fn ike_proposals(p: &IkePolicy) -> Result<Vec<IkeProposal>, FieldErr> {
    if p.ike_version != "v2" {
        return Err((
            "ike_version",
            format!("{:?}: only v2 is supported", p.ike_version),
        ));
    }
    if let Some(m) = &p.phase1_negotiation_mode
        && m != "main"
    {
        return Err((
            "phase1_negotiation_mode",
            format!("{m:?}: IKEv2 has no aggressive mode; use main"),
        ));
    }
    if !p.proposals.is_empty() {
        return p
            .proposals
            .iter()
            .map(|s| IkeProposal::parse(s).map_err(|e| ("proposals", e.0)))
            .collect();
    }
    let encr = ike_encr(&p.encryption_algorithm).map_err(|m| ("encryption_algorithm", m))?;
    let (integ, prf) = auth_alg(&p.auth_algorithm).map_err(|m| ("auth_algorithm", m))?;
    let dh = pfs_group(&p.pfs).map_err(|m| ("pfs", m))?;
    Ok(vec![IkeProposal {
        encr: vec![encr],
        integ: vec![if encr.is_aead() { Integ::None } else { integ }],
        prf: vec![prf],
        dh: vec![dh],
    }])
}

fn esp_proposals(p: &IpsecPolicy) -> Result<(Vec<EspProposal>, Option<u64>), FieldErr> {
    if p.transform_protocol != "esp" {
        return Err((
            "transform_protocol",
            format!("{:?}: only esp is supported (no AH)", p.transform_protocol),
        ));
    }
    if p.encapsulation_mode != "tunnel" {
        return Err((
            "encapsulation_mode",
            format!("{:?}: only tunnel mode is supported", p.encapsulation_mode),
        ));
    }
    let bytes = match p.lifetime {
        Some(Lifetime::Units {
            units: LifetimeUnits::Kilobytes,
            value,
        }) => Some(value.saturating_mul(1024)),
        _ => None,
    };
    if !p.proposals.is_empty() {
        let v = p
            .proposals
            .iter()
            .map(|s| EspProposal::parse(s).map_err(|e| ("proposals", e.0)))
            .collect::<Result<_, _>>()?;
        return Ok((v, bytes));
    }
    let cipher = match p.encryption_algorithm.as_str() {
        "aes-128-gcm-16" => crate::esp::Cipher::Aes128Gcm16,
        "aes-256-gcm-16" => crate::esp::Cipher::Aes256Gcm16,
        o => {
            return Err((
                "encryption_algorithm",
                format!(
                    "{o:?} is not supported by the data plane (aes-128-gcm-16, aes-256-gcm-16)"
                ),
            ));
        }
    };
    // With AES-GCM the ICV is the integrity check; Neutron still carries auth_algorithm.
    auth_alg(&p.auth_algorithm).map_err(|m| ("auth_algorithm", m))?;
    let dh = match p.pfs.as_str() {
        "none" | "" => vec![],
        g => vec![pfs_group(g).map_err(|m| ("pfs", m))?],
    };
    Ok((
        vec![EspProposal {
            encr: vec![cipher],
            esn: vec![p.esn],
            dh,
        }],
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
instance = "t"
[wire]
interface = "eth0"
[[tenant]]
id = 1
interface = "eth1"
vlan = 100
gateway_mac = "02:00:00:00:00:01"
host_mac = "02:00:00:00:00:02"
[[ikepolicy]]
name = "ike1"
encryption_algorithm = "aes-256-gcm-16"
auth_algorithm = "sha256"
pfs = "group14"
lifetime = { units = "seconds", value = 3600 }
[[ipsecpolicy]]
name = "esp1"
encryption_algorithm = "aes-128-gcm-16"
pfs = "group19"
lifetime = 1800
[[vpnservice]]
name = "east"
tenant = 1
external_address = "172.24.4.226"
local_subnets = ["10.1.0.0/24"]
[[ipsec_site_connection]]
name = "east-west"
vpnservice = "east"
ikepolicy = "ike1"
ipsecpolicy = "esp1"
peer_address = "172.24.4.233"
peer_cidrs = ["10.2.0.0/24"]
psk = "a long shared secret"
dpd = { action = "restart", interval = 10, timeout = 40 }
"#;

    fn load(text: &str) -> Result<Vec<ResolvedConn>, String> {
        let dir = std::env::temp_dir().join(format!(
            "vpnaas-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("vpnd.toml");
        std::fs::write(&p, text).unwrap();
        let r = Config::load(&p)
            .map_err(|e| e.to_string())
            .and_then(|c| c.resolve_connections(&p).map_err(|e| e.to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn neutron_shaped_connection_resolves() {
        let c = load(BASE).unwrap();
        let c = &c[0];
        assert_eq!(c.tenant, 1);
        assert_eq!(c.conn.peer_id, Identity::parse("172.24.4.233").unwrap());
        assert_eq!(c.conn.local_id, Identity::parse("172.24.4.226").unwrap());
        assert_eq!(c.conn.ike[0].dh, vec![DhGroup::Modp2048]);
        assert_eq!(c.conn.ike[0].integ, vec![Integ::None]);
        assert_eq!(c.conn.esp[0].dh, vec![DhGroup::Ecp256]);
        assert_eq!(c.conn.lifetimes.child, Duration::from_secs(1800));
        assert_eq!(c.conn.dpd.action, DpdAction::Restart);
        assert!(!format!("{:?}", c.conn).contains("shared secret"));
    }

    #[test]
    fn examples_in_the_repository_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
                let conns = c.resolve_connections(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!conns.is_empty(), "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 2, "example configs in {}", dir.display());
        let p = dir.join("east.toml");
        let c = &Config::load(&p).unwrap().resolve_connections(&p).unwrap()[0];
        assert_eq!(c.conn.local_ts, vec![parse_prefix("10.1.0.0/24").unwrap()]);
        let p = dir.join("west.toml");
        let c = &Config::load(&p).unwrap().resolve_connections(&p).unwrap()[0];
        assert_eq!(c.conn.peer_ts, vec![parse_prefix("10.1.0.0/24").unwrap()]);
        assert_eq!(c.conn.initiator, Initiator::ResponseOnly);
    }

    #[test]
    fn endpoint_groups() {
        let with_groups = BASE
            .replace("local_subnets = [\"10.1.0.0/24\"]\n", "")
            .replace(
                "peer_cidrs = [\"10.2.0.0/24\"]",
                "local_ep_group = \"mine\"\npeer_ep_group = \"theirs\"",
            )
            + "[[endpoint_group]]\nname = \"mine\"\nendpoints = [\"10.1.0.0/24\", \"10.1.1.0/24\"]\n\
               [[endpoint_group]]\nname = \"theirs\"\ntype = \"cidr\"\nendpoints = [\"10.2.0.0/24\"]\n";
        let c = load(&with_groups).unwrap();
        assert_eq!(c[0].conn.local_ts.len(), 2);
        assert_eq!(
            c[0].conn.peer_ts,
            vec![parse_prefix("10.2.0.0/24").unwrap()]
        );
        let err = load(&with_groups.replace("type = \"cidr\"", "type = \"subnet\"")).unwrap_err();
        assert!(err.contains("endpoint_group \"theirs\": type"), "{err}");
        let err =
            load(&with_groups.replace("peer_ep_group = \"theirs\"", "peer_ep_group = \"nope\""))
                .unwrap_err();
        assert!(
            err.contains("peer_ep_group: no [[endpoint_group]] named \"nope\""),
            "{err}"
        );
        let both = BASE.replace(
            "peer_cidrs = [\"10.2.0.0/24\"]",
            "peer_cidrs = [\"10.2.0.0/24\"]\nlocal_ep_group = \"mine\"",
        ) + "[[endpoint_group]]\nname = \"mine\"\nendpoints = [\"10.1.0.0/24\"]\n";
        let err = load(&both).unwrap_err();
        assert!(
            err.contains("local_ep_group") && err.contains("one or the other"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_values_are_refused_by_field() {
        for (from, to, field) in [
            (
                "encryption_algorithm = \"aes-256-gcm-16\"",
                "encryption_algorithm = \"3des\"",
                "ikepolicy \"ike1\": encryption_algorithm",
            ),
            (
                "auth_algorithm = \"sha256\"",
                "auth_algorithm = \"sha1\"",
                "ikepolicy \"ike1\": auth_algorithm",
            ),
            (
                "pfs = \"group14\"",
                "pfs = \"group2\"",
                "ikepolicy \"ike1\": pfs",
            ),
            (
                "[[ikepolicy]]\nname = \"ike1\"",
                "[[ikepolicy]]\nname = \"ike1\"\nike_version = \"v1\"",
                "ike_version",
            ),
            (
                "[[ipsecpolicy]]\nname = \"esp1\"",
                "[[ipsecpolicy]]\nname = \"esp1\"\ntransform_protocol = \"ah\"",
                "transform_protocol",
            ),
            (
                "[[ipsecpolicy]]\nname = \"esp1\"",
                "[[ipsecpolicy]]\nname = \"esp1\"\nencapsulation_mode = \"transport\"",
                "encapsulation_mode",
            ),
            (
                "encryption_algorithm = \"aes-128-gcm-16\"",
                "encryption_algorithm = \"aes-128\"",
                "ipsecpolicy \"esp1\": encryption_algorithm",
            ),
            ("psk = \"a long shared secret\"", "psk = \"short\"", "psk"),
            (
                "psk = \"a long shared secret\"",
                "",
                "give exactly one of psk",
            ),
            (
                "peer_cidrs = [\"10.2.0.0/24\"]",
                "peer_cidrs = [\"10.2.0.0/33\"]",
                "peer_cidrs",
            ),
            (
                "ikepolicy = \"ike1\"",
                "ikepolicy = \"nope\"",
                "no [[ikepolicy]] named \"nope\"",
            ),
            ("tenant = 1", "tenant = 7", "no [[tenant]] with id 7"),
            ("action = \"restart\"", "action = \"explode\"", "dpd.action"),
            (
                "interval = 10, timeout = 40",
                "interval = 10, timeout = 5",
                "dpd.timeout",
            ),
            ("lifetime = 1800", "lifetime = 5", "lifetime"),
        ] {
            assert!(BASE.contains(from), "{from}");
            let err = load(&BASE.replace(from, to))
                .err()
                .unwrap_or_else(|| panic!("{to} accepted"));
            assert!(err.contains(field), "{to}: {err}");
            assert!(err.contains("vpnd.toml"), "{err}");
        }
    }
}
