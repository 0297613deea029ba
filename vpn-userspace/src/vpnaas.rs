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
    config::{Config, ConfigError, families_meet, subnets, unicast},
    ike::{
        conn::{ConnConfig, Dpd, DpdAction, Encap, Identity, Initiator, Lifetimes},
        crypto::{DhGroup, Encr, Integ, Prf},
        proposal::{EspProposal, IkeProposal, dh_token},
    },
};

/// Neutron's lifetime: seconds, or `{ units = "seconds" | "kilobytes", value = N }` (units
/// default to seconds, as in Neutron).
#[derive(Debug, Clone, Copy)]
pub enum Lifetime {
    Seconds(u64),
    Units { units: LifetimeUnits, value: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeUnits {
    Seconds,
    Kilobytes,
}

/// By hand rather than `untagged`: serde's "data did not match any variant" would not say
/// what is wrong.
impl<'de> Deserialize<'de> for Lifetime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lifetime, D::Error> {
        use serde::de::Error;
        use toml::Value;
        const SHAPE: &str = "give seconds, or { units = \"seconds\" | \"kilobytes\", value = N }";
        let count = |v: &Value| match v {
            Value::Integer(n) => u64::try_from(*n)
                .map_err(|_| D::Error::custom(format!("{n}: must not be negative"))),
            o => Err(D::Error::custom(format!(
                "{o}: not a whole number; {SHAPE}"
            ))),
        };
        match Value::deserialize(d)? {
            v @ Value::Integer(_) => count(&v).map(Lifetime::Seconds),
            Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| *k != "units" && *k != "value") {
                    return Err(D::Error::custom(format!("unknown key {k:?}; {SHAPE}")));
                }
                let units = match t.get("units") {
                    None => LifetimeUnits::Seconds,
                    Some(Value::String(u)) if u == "seconds" => LifetimeUnits::Seconds,
                    Some(Value::String(u)) if u == "kilobytes" => LifetimeUnits::Kilobytes,
                    Some(o) => {
                        return Err(D::Error::custom(format!(
                            "units {o}: use \"seconds\" or \"kilobytes\""
                        )));
                    }
                };
                let value = count(
                    t.get("value")
                        .ok_or_else(|| D::Error::custom(format!("value missing; {SHAPE}")))?,
                )?;
                Ok(Lifetime::Units { units, value })
            }
            o => Err(D::Error::custom(format!("{o}: {SHAPE}"))),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct IkePolicy {
    pub name: String,
    /// Default "aes-256-gcm-16".
    pub encryption_algorithm: Option<String>,
    /// Default "sha256".
    pub auth_algorithm: Option<String>,
    /// Default "group14".
    pub pfs: Option<String>,
    #[serde(default = "d_ike_version")]
    pub ike_version: String,
    #[serde(default)]
    pub phase1_negotiation_mode: Option<String>,
    pub lifetime: Option<Lifetime>,
    /// strongSwan-style proposals, replacing encryption_algorithm, auth_algorithm and pfs
    /// (which may then not be given), e.g.
    /// `["aes256gcm16-prfsha256-modp2048", "aes128-sha256-ecp256"]`.
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
    /// Default "aes-128-gcm-16".
    pub encryption_algorithm: Option<String>,
    /// Default "sha256".
    pub auth_algorithm: Option<String>,
    /// Default "group14"; "none" for no PFS.
    pub pfs: Option<String>,
    pub lifetime: Option<Lifetime>,
    /// Extended sequence numbers (beyond Neutron; strongSwan-libipsec peers need false).
    /// Default false.
    pub esn: Option<bool>,
    /// strongSwan-style proposals, replacing encryption_algorithm, auth_algorithm, pfs and
    /// esn (which may then not be given), e.g. `["aes128gcm16-noesn-ecp256"]`.
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
    pub psk: Option<Zeroizing<String>>,
    pub psk_file: Option<PathBuf>,
    #[serde(default = "d_initiator")]
    pub initiator: String,
    #[serde(default = "d_true")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub dpd: DpdCfg,
    /// At least 68 (IPv4 peer) or 1280 (IPv6 peer), as in Neutron.
    pub mtu: Option<u16>,
    /// "auto" (when a NAT is detected) or "force".
    #[serde(default = "d_auto")]
    pub udp_encap: String,
    /// 1 to 4096 (no disabling anti-replay with negotiated keys).
    #[serde(default = "d_window")]
    pub replay_window: u32,
    /// Crypto backend of the connection's CHILD_SAs: "afxdp" (vpnd's workers), "kernel"
    /// (xfrm, with NIC offload when the wire offers it) or "auto" (kernel when the wire
    /// device offers ESP offload, AF_XDP otherwise).
    #[serde(default = "d_auto")]
    pub backend: String,
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
    /// `[ike.limits]`: what one peer may cost.
    #[serde(default)]
    pub limits: crate::ike::limits::Limits,
    /// Prefixes per side of one CHILD_SA (after narrowing); more are refused with
    /// TS_UNACCEPTABLE. Bounds what a peer's selectors cost the data plane.
    #[serde(default = "d_16")]
    pub max_selectors: usize,
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
fn d_16() -> usize {
    16
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
    pub backend: BackendChoice,
}

/// A connection's `backend`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Afxdp,
    Kernel,
    Auto,
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

/// Longest lifetime in seconds: a year (longer ones would overflow timers for no use).
/// PSKs shorter than this get a warning at load: the AUTH payload allows offline guessing.
pub const PSK_WARN_LEN: usize = 20;

const MAX_LIFETIME: u64 = 365 * 86400;
/// Default lifetime of IKE and CHILD SAs (Neutron's), in seconds.
const DEFAULT_LIFETIME: u64 = 3600;

/// A lifetime as (time, bytes): kilobytes give bytes and the default time.
fn lifetime(l: Option<Lifetime>) -> Result<(Duration, Option<u64>), String> {
    match l {
        None => Ok((Duration::from_secs(DEFAULT_LIFETIME), None)),
        Some(Lifetime::Seconds(s))
        | Some(Lifetime::Units {
            units: LifetimeUnits::Seconds,
            value: s,
        }) => {
            if s < 60 {
                return Err(format!("{s} seconds is too short (at least 60)"));
            }
            if s > MAX_LIFETIME {
                return Err(format!(
                    "{s} seconds is too long (at most {MAX_LIFETIME}, a year)"
                ));
            }
            Ok((Duration::from_secs(s), None))
        }
        Some(Lifetime::Units {
            units: LifetimeUnits::Kilobytes,
            value,
        }) => {
            if value < 60 {
                return Err(format!("{value} kilobytes is too little (at least 60)"));
            }
            Ok((
                Duration::from_secs(DEFAULT_LIFETIME),
                Some(value.saturating_mul(1024)),
            ))
        }
    }
}

/// An IKE SA's lifetime: in seconds only.
fn ike_lifetime(l: Option<Lifetime>) -> Result<Duration, String> {
    match lifetime(l)? {
        (_, Some(_)) => Err(
            "units \"kilobytes\": IKE SA lifetimes are in seconds (kilobytes are for ipsecpolicy)"
                .into(),
        ),
        (d, None) => Ok(d),
    }
}

/// An identity (`local_id`, `peer_id`).
fn identity(s: &str) -> Result<Identity, String> {
    if let Some(hex) = s.trim().strip_prefix("keyid:")
        && !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format!("{s:?}: keyid: takes hex digits"));
    }
    Identity::parse(s).ok_or_else(|| {
        format!("{s:?} is not an identity (an address, @fqdn, user@fqdn or keyid:hex)")
    })
}

/// Longest DPD interval and timeout, in seconds.
const MAX_DPD_INTERVAL: u64 = 86400;
const MAX_DPD_TIMEOUT: u64 = 7 * 86400;

impl Config {
    /// Checks every Neutron resource and the `[ike]` settings on their own, used by a
    /// connection or not (`resolve_connections` checks how connections combine them).
    pub(crate) fn validate_vpnaas(&self, path: &Path) -> Result<(), ConfigError> {
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
                if n.is_empty() {
                    return Err(e(
                        format!("{kind} {n:?}"),
                        "name",
                        "must not be empty".into(),
                    ));
                }
                if names[..i].contains(n) {
                    return Err(e(format!("{kind} {n:?}"), "name", "defined twice".into()));
                }
            }
        }
        for p in &self.ikepolicies {
            let pe = |(f, m): FieldErr| e(format!("ikepolicy {:?}", p.name), f, m);
            ike_proposals(p).map_err(pe)?;
            ike_lifetime(p.lifetime).map_err(|m| pe(("lifetime", m)))?;
        }
        for p in &self.ipsecpolicies {
            let pe = |(f, m): FieldErr| e(format!("ipsecpolicy {:?}", p.name), f, m);
            esp_proposals(p).map_err(pe)?;
            lifetime(p.lifetime).map_err(|m| pe(("lifetime", m)))?;
        }
        for s in &self.vpnservices {
            let se = |field: &str, msg: String| e(format!("vpnservice {:?}", s.name), field, msg);
            if !self.tenants.iter().any(|t| t.id == s.tenant) {
                return Err(se("tenant", format!("no [[tenant]] with id {}", s.tenant)));
            }
            unicast(s.external_address).map_err(|m| se("external_address", m))?;
            // Empty: each connection names a local_ep_group (checked there).
            if !s.local_subnets.is_empty() {
                subnets(&s.local_subnets).map_err(|m| se("local_subnets", m))?;
            }
        }
        for g in &self.endpoint_groups {
            let ge =
                |field: &str, msg: String| e(format!("endpoint_group {:?}", g.name), field, msg);
            if g.kind != "cidr" {
                return Err(ge(
                    "type",
                    format!(
                        "{:?}: only \"cidr\" groups are supported (subnet ids need Neutron's database)",
                        g.kind
                    ),
                ));
            }
            subnets(&g.endpoints).map_err(|m| ge("endpoints", m))?;
        }
        let ie = |field: &str, msg: String| e("ike".into(), field, msg);
        let s = &self.ike;
        for (field, port) in [("port", s.port), ("natt_port", s.natt_port)] {
            if port == 0 {
                return Err(ie(field, "0 is not a port".into()));
            }
        }
        if s.natt_port == s.port {
            return Err(ie(
                "natt_port",
                format!("must differ from port ({})", s.port),
            ));
        }
        if !(1..=3600).contains(&s.half_open_timeout) {
            return Err(ie("half_open_timeout", "1 to 3600 seconds".into()));
        }
        if s.rekey_overlap > 3600 {
            return Err(ie("rekey_overlap", "at most 3600 seconds".into()));
        }
        // Named as the parser names errors in a nested table: `top level: ike.limits.X`.
        s.limits
            .validate()
            .map_err(|(f, m)| e("top level".into(), &format!("ike.limits.{f}"), m))?;
        // The worker checks each packet against local x peer prefixes: 64 x 64 at most.
        if !(1..=64).contains(&s.max_selectors) {
            return Err(ie("max_selectors", "1 to 64 prefixes".into()));
        }
        Ok(())
    }

    /// Resolves every `ipsec_site_connection` against its policies and service.
    pub fn resolve_connections(&self, path: &Path) -> Result<Vec<ResolvedConn>, ConfigError> {
        self.validate_vpnaas(path)?;
        let mut out = vec![];
        let file = path.display().to_string();
        let e = |entry: String, field: &str, msg: String| ConfigError {
            file: file.clone(),
            entry,
            field: field.into(),
            msg,
        };
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
            let ike = ike_proposals(ikep)
                .map_err(|(f, m)| e(format!("ikepolicy {:?}", ikep.name), f, m))?;
            let (esp, child_bytes) = esp_proposals(ipsp)
                .map_err(|(f, m)| e(format!("ipsecpolicy {:?}", ipsp.name), f, m))?;
            let ike_life = ike_lifetime(ikep.lifetime)
                .map_err(|m| e(format!("ikepolicy {:?}", ikep.name), "lifetime", m))?;
            let (child_life, _) = lifetime(ipsp.lifetime)
                .map_err(|m| e(format!("ipsecpolicy {:?}", ipsp.name), "lifetime", m))?;
            let group = |name: &str, field: &str| -> Result<Vec<String>, ConfigError> {
                let g = self
                    .endpoint_groups
                    .iter()
                    .find(|g| g.name == name)
                    .ok_or_else(|| ce(field, format!("no [[endpoint_group]] named {name:?}")))?;
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
                (None, true) => {
                    return Err(se(
                        "local_subnets",
                        "at least one subnet (or a local_ep_group on the connection)".into(),
                    ));
                }
                (None, false) => (svc.local_subnets.clone(), "local_subnets"),
            };
            let local_ts = subnets(&local_src).map_err(|m| match local_field {
                "local_subnets" => se(local_field, m),
                _ => ce(local_field, m),
            })?;
            let (peer_src, peer_field) = match (&c.peer_ep_group, c.peer_cidrs.is_empty()) {
                (Some(g), true) => (group(g, "peer_ep_group")?, "peer_ep_group"),
                (Some(_), false) => {
                    return Err(ce(
                        "peer_ep_group",
                        "give peer_cidrs or peer_ep_group, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(ce(
                        "peer_cidrs",
                        "at least one CIDR (or a peer_ep_group)".into(),
                    ));
                }
                (None, false) => (c.peer_cidrs.clone(), "peer_cidrs"),
            };
            let peer_ts = subnets(&peer_src).map_err(|m| ce(peer_field, m))?;
            let max = self.ike.max_selectors;
            for (n, field) in [(local_ts.len(), local_field), (peer_ts.len(), peer_field)] {
                if n > max {
                    return Err(ce(
                        field,
                        format!(
                            "{n} subnets, more than [ike] max_selectors ({max}): raise it or merge subnets"
                        ),
                    ));
                }
            }
            if !families_meet(&local_ts, &peer_ts) {
                return Err(ce(
                    peer_field,
                    "none of the address family of the local subnets: no traffic could match"
                        .into(),
                ));
            }
            unicast(c.peer_address).map_err(|m| ce("peer_address", m))?;
            if svc.external_address.is_ipv4() != c.peer_address.is_ipv4() {
                return Err(ce(
                    "peer_address",
                    "must be the address family of the vpnservice's external_address".into(),
                ));
            }
            if svc.external_address == c.peer_address {
                return Err(ce(
                    "peer_address",
                    format!("is vpnservice {:?}'s own external_address", svc.name),
                ));
            }
            let psk = match (&c.psk, &c.psk_file) {
                (Some(p), None) => Zeroizing::new(p.as_bytes().to_vec()),
                (None, Some(f)) => {
                    let t = crate::config::read_secret_file(f).map_err(|m| ce("psk_file", m))?;
                    Zeroizing::new(t.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
                }
                _ => return Err(ce("psk", "give exactly one of psk and psk_file".into())),
            };
            if psk.len() < 8 {
                return Err(ce(
                    if c.psk.is_some() { "psk" } else { "psk_file" },
                    "shorter than 8 bytes; use a long random secret".into(),
                ));
            }
            if psk.len() < PSK_WARN_LEN {
                // An eavesdropper on IKE_AUTH can test PSK guesses offline (RFC 7296 2.15).
                tracing::warn!(
                    "ipsec_site_connection {:?}: the PSK is {} bytes: anyone who sees the \
                     IKE_AUTH exchange can guess it offline; use {PSK_WARN_LEN} or more random \
                     characters",
                    c.name,
                    psk.len()
                );
            }
            let id = |s: &Option<String>, default: IpAddr, field: &str| match s {
                None => Ok(Identity::from(default)),
                Some(s) => identity(s).map_err(|m| ce(field, m)),
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
            if dpd.interval.is_zero() || dpd.interval.as_secs() > MAX_DPD_INTERVAL {
                return Err(ce(
                    "dpd.interval",
                    format!("1 to {MAX_DPD_INTERVAL} seconds"),
                ));
            }
            if dpd.timeout <= dpd.interval || dpd.timeout.as_secs() > MAX_DPD_TIMEOUT {
                return Err(ce(
                    "dpd.timeout",
                    format!(
                        "must be greater than dpd.interval ({} s) and at most {MAX_DPD_TIMEOUT} seconds",
                        dpd.interval.as_secs()
                    ),
                ));
            }
            let encap = match c.udp_encap.as_str() {
                "auto" => Encap::Auto,
                "force" => Encap::Force,
                o => return Err(ce("udp_encap", format!("{o:?}: use auto or force"))),
            };
            if !(1..=vpn_common::replay::MAX_WINDOW).contains(&c.replay_window) {
                return Err(ce(
                    "replay_window",
                    format!(
                        "1 to {} (0, no anti-replay, is for manual_sa only)",
                        vpn_common::replay::MAX_WINDOW
                    ),
                ));
            }
            let backend = match c.backend.as_str() {
                "afxdp" => BackendChoice::Afxdp,
                "kernel" => BackendChoice::Kernel,
                "auto" => BackendChoice::Auto,
                o => {
                    return Err(ce("backend", format!("{o:?}: use afxdp, kernel or auto")));
                }
            };
            // Neutron's limits: 68 (IPv4), 1280 (IPv6), by the peer address's family.
            let min_mtu = if c.peer_address.is_ipv4() { 68 } else { 1280 };
            if let Some(m) = c.mtu
                && m < min_mtu
            {
                return Err(ce(
                    "mtu",
                    format!(
                        "at least {min_mtu} for an IPv{} peer",
                        if c.peer_address.is_ipv4() { 4 } else { 6 }
                    ),
                ));
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
                backend,
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
        for (field, given) in [
            ("encryption_algorithm", p.encryption_algorithm.is_some()),
            ("auth_algorithm", p.auth_algorithm.is_some()),
            ("pfs", p.pfs.is_some()),
        ] {
            if given {
                return Err((
                    field,
                    "proposals replace encryption_algorithm, auth_algorithm and pfs; \
                     give one or the other"
                        .into(),
                ));
            }
        }
        return p
            .proposals
            .iter()
            .map(|s| IkeProposal::parse(s).map_err(|e| ("proposals", e.0)))
            .collect();
    }
    let encr = ike_encr(
        p.encryption_algorithm
            .as_deref()
            .unwrap_or("aes-256-gcm-16"),
    )
    .map_err(|m| ("encryption_algorithm", m))?;
    let (integ, prf) = auth_alg(p.auth_algorithm.as_deref().unwrap_or("sha256"))
        .map_err(|m| ("auth_algorithm", m))?;
    let dh = pfs_group(p.pfs.as_deref().unwrap_or("group14")).map_err(|m| ("pfs", m))?;
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
        for (field, given) in [
            ("encryption_algorithm", p.encryption_algorithm.is_some()),
            ("auth_algorithm", p.auth_algorithm.is_some()),
            ("pfs", p.pfs.is_some()),
            ("esn", p.esn.is_some()),
        ] {
            if given {
                return Err((
                    field,
                    "proposals replace encryption_algorithm, auth_algorithm, pfs and esn \
                     (say esn or noesn in a proposal); give one or the other"
                        .into(),
                ));
            }
        }
        let v = p
            .proposals
            .iter()
            .map(|s| EspProposal::parse(s).map_err(|e| ("proposals", e.0)))
            .collect::<Result<_, _>>()?;
        return Ok((v, bytes));
    }
    let cipher = match p
        .encryption_algorithm
        .as_deref()
        .unwrap_or("aes-128-gcm-16")
    {
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
    auth_alg(p.auth_algorithm.as_deref().unwrap_or("sha256")).map_err(|m| ("auth_algorithm", m))?;
    let dh = match p.pfs.as_deref().unwrap_or("group14") {
        "none" | "" => vec![],
        g => vec![pfs_group(g).map_err(|m| ("pfs", m))?],
    };
    Ok((
        vec![EspProposal {
            encr: vec![cipher],
            esn: vec![p.esn.unwrap_or(false)],
            dh,
        }],
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_prefix;

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

    /// BASE with `from` replaced by `to` (which must be there).
    fn with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        BASE.replacen(from, to, 1)
    }

    /// Every field of every Neutron resource and of [ike]: a bad value, a missing or unknown
    /// field, a wrong reference or a conflicting combination is refused as
    /// `FILE: ENTRY: FIELD: message`, and the PSK is never shown.
    #[test]
    fn every_field_has_its_errors() {
        const I: &str = "ikepolicy \"ike1\"";
        const P: &str = "ipsecpolicy \"esp1\"";
        const S: &str = "vpnservice \"east\"";
        const C: &str = "ipsec_site_connection \"east-west\"";
        const G: &str = "endpoint_group \"g\"";
        let ike_head = "[[ikepolicy]]\nname = \"ike1\"";
        let esp_head = "[[ipsecpolicy]]\nname = \"esp1\"";
        let esp_algs = "encryption_algorithm = \"aes-128-gcm-16\"\npfs = \"group19\"";
        let ike_algs = "encryption_algorithm = \"aes-256-gcm-16\"\nauth_algorithm = \"sha256\"\n\
                        pfs = \"group14\"";
        let ike_life = "lifetime = { units = \"seconds\", value = 3600 }";
        let svc_subnets = "local_subnets = [\"10.1.0.0/24\"]\n";
        let cidrs = "peer_cidrs = [\"10.2.0.0/24\"]";
        let psk = "psk = \"a long shared secret\"";
        let dpd = "dpd = { action = \"restart\", interval = 10, timeout = 40 }";
        let group = |body: &str| format!("{BASE}[[endpoint_group]]\nname = \"g\"\n{body}\n");
        let ike = |body: &str| format!("{BASE}[ike]\n{body}\n");
        let conn = |line: &str| format!("{BASE}{line}\n");
        let v6 = with(
            "external_address = \"172.24.4.226\"",
            "external_address = \"2001:db8::1\"",
        )
        .replace(
            "peer_address = \"172.24.4.233\"",
            "peer_address = \"2001:db8::2\"",
        );
        let cases: Vec<(String, &str, &str)> = vec![
            // [[ikepolicy]]
            (BASE.to_string() + ike_head + "\n", I, "name"),
            (
                with(ike_head, "[[ikepolicy]]\nname = \"\""),
                "ikepolicy \"\"",
                "name",
            ),
            (with(ike_head, "[[ikepolicy]]"), "ikepolicy #1", "name"),
            (
                with("\"aes-256-gcm-16\"", "\"3des\""),
                I,
                "encryption_algorithm",
            ),
            (
                with("\"aes-256-gcm-16\"", "\"aes-128-ctr\""),
                I,
                "encryption_algorithm",
            ),
            (
                with("auth_algorithm = \"sha256\"", "auth_algorithm = \"sha1\""),
                I,
                "auth_algorithm",
            ),
            (
                with("auth_algorithm = \"sha256\"", "auth_algorithm = \"md5\""),
                I,
                "auth_algorithm",
            ),
            (with("pfs = \"group14\"", "pfs = \"group2\""), I, "pfs"),
            (with("pfs = \"group14\"", "pfs = \"group5\""), I, "pfs"),
            (
                with(ike_head, &format!("{ike_head}\nike_version = \"v1\"")),
                I,
                "ike_version",
            ),
            (
                with(
                    ike_head,
                    &format!("{ike_head}\nphase1_negotiation_mode = \"aggressive\""),
                ),
                I,
                "phase1_negotiation_mode",
            ),
            (with("value = 3600", "value = 59"), I, "lifetime"),
            (with("value = 3600", "value = 40000000"), I, "lifetime"),
            (with("value = 3600", "value = -5"), I, "lifetime"),
            (
                with("\"seconds\", value", "\"kilobytes\", value"),
                I,
                "lifetime",
            ),
            (
                with("\"seconds\", value", "\"minutes\", value"),
                I,
                "lifetime",
            ),
            (
                with(ike_life, "lifetime = { units = \"seconds\" }"),
                I,
                "lifetime",
            ),
            (
                with("value = 3600 }", "value = 3600, extra = 1 }"),
                I,
                "lifetime",
            ),
            (with(ike_life, "lifetime = \"1h\""), I, "lifetime"),
            (
                with(ike_algs, "proposals = [\"aes256gcm16-prfsha1-modp1024\"]"),
                I,
                "proposals",
            ),
            (with(ike_algs, "proposals = [\"\"]"), I, "proposals"),
            (
                with(
                    ike_head,
                    &format!("{ike_head}\nproposals = [\"aes128-sha256-ecp256\"]"),
                ),
                I,
                "encryption_algorithm",
            ),
            (
                with(ike_head, &format!("{ike_head}\nbogus = 1")),
                I,
                "bogus",
            ),
            (
                BASE.to_string()
                    + "[[ikepolicy]]\nname = \"spare\"\nencryption_algorithm = \"3des\"\n",
                "ikepolicy \"spare\"",
                "encryption_algorithm",
            ),
            // [[ipsecpolicy]]
            (BASE.to_string() + esp_head + "\n", P, "name"),
            (
                with(
                    esp_head,
                    &format!("{esp_head}\ntransform_protocol = \"ah\""),
                ),
                P,
                "transform_protocol",
            ),
            (
                with(
                    esp_head,
                    &format!("{esp_head}\ntransform_protocol = \"ah-esp\""),
                ),
                P,
                "transform_protocol",
            ),
            (
                with(
                    esp_head,
                    &format!("{esp_head}\nencapsulation_mode = \"transport\""),
                ),
                P,
                "encapsulation_mode",
            ),
            (
                with("\"aes-128-gcm-16\"", "\"aes-128\""),
                P,
                "encryption_algorithm",
            ),
            (
                with("\"aes-128-gcm-16\"", "\"3des\""),
                P,
                "encryption_algorithm",
            ),
            (
                with(esp_head, &format!("{esp_head}\nauth_algorithm = \"sha1\"")),
                P,
                "auth_algorithm",
            ),
            (with("pfs = \"group19\"", "pfs = \"group2\""), P, "pfs"),
            (with("lifetime = 1800", "lifetime = 5"), P, "lifetime"),
            (with("lifetime = 1800", "lifetime = -1"), P, "lifetime"),
            (
                with(
                    "lifetime = 1800",
                    "lifetime = { units = \"kilobytes\", value = 0 }",
                ),
                P,
                "lifetime",
            ),
            (
                with(esp_algs, "proposals = [\"aes128gcm16-3des\"]"),
                P,
                "proposals",
            ),
            (with(esp_algs, "proposals = [\"noesn\"]"), P, "proposals"),
            (
                with(esp_algs, "proposals = [\"aes128gcm16\"]\nesn = true"),
                P,
                "esn",
            ),
            (
                with(esp_algs, "proposals = [\"aes128gcm16\"]\npfs = \"none\""),
                P,
                "pfs",
            ),
            (
                with(esp_head, &format!("{esp_head}\nesn = \"yes\"")),
                P,
                "esn",
            ),
            (
                with(esp_head, &format!("{esp_head}\nbogus = 1")),
                P,
                "bogus",
            ),
            (
                BASE.to_string()
                    + "[[ipsecpolicy]]\nname = \"spare\"\nencapsulation_mode = \"transport\"\n",
                "ipsecpolicy \"spare\"",
                "encapsulation_mode",
            ),
            // [[vpnservice]]
            (
                BASE.to_string()
                    + "[[vpnservice]]\nname = \"east\"\ntenant = 1\nexternal_address = \"172.24.4.227\"\n",
                S,
                "name",
            ),
            (
                with("tenant = 1\nexternal", "tenant = 7\nexternal"),
                S,
                "tenant",
            ),
            (with("tenant = 1\nexternal", "external"), S, "tenant"),
            (
                BASE.to_string()
                    + "[[vpnservice]]\nname = \"spare\"\ntenant = 9\nexternal_address = \"172.24.4.227\"\n",
                "vpnservice \"spare\"",
                "tenant",
            ),
            (
                with("\"172.24.4.226\"", "\"0.0.0.0\""),
                S,
                "external_address",
            ),
            (
                with("\"172.24.4.226\"", "\"ff02::2\""),
                S,
                "external_address",
            ),
            (with("\"172.24.4.226\"", "\"east\""), S, "external_address"),
            (
                with("\"10.1.0.0/24\"", "\"10.1.0.1/24\""),
                S,
                "local_subnets",
            ),
            (with("\"10.1.0.0/24\"", "\"10.1.0.0\""), S, "local_subnets"),
            (with(svc_subnets, ""), S, "local_subnets"),
            (
                with(
                    svc_subnets,
                    "local_subnets = [\"10.1.0.0/24\"]\nbogus = 1\n",
                ),
                S,
                "bogus",
            ),
            // [[endpoint_group]]
            (
                group("endpoints = [\"10.9.0.0/24\"]")
                    + "[[endpoint_group]]\nname = \"g\"\nendpoints = [\"10.9.0.0/24\"]\n",
                G,
                "name",
            ),
            (
                group("type = \"subnet\"\nendpoints = [\"5f1a\"]"),
                G,
                "type",
            ),
            (group("endpoints = []"), G, "endpoints"),
            (group("endpoints = [\"10.9.0.0/33\"]"), G, "endpoints"),
            (group("endpoints = [\"10.9.0.1/24\"]"), G, "endpoints"),
            (group(""), G, "endpoints"),
            (
                group("endpoints = [\"10.9.0.0/24\"]\nbogus = 1"),
                G,
                "bogus",
            ),
            // [[ipsec_site_connection]]
            (
                BASE.to_string()
                    + "[[ipsec_site_connection]]\nname = \"east-west\"\nvpnservice = \"east\"\n\
                       ikepolicy = \"ike1\"\nipsecpolicy = \"esp1\"\npeer_address = \"172.24.4.234\"\n\
                       peer_cidrs = [\"10.3.0.0/24\"]\npsk = \"another long secret\"\n",
                C,
                "name",
            ),
            (
                with("vpnservice = \"east\"", "vpnservice = \"nope\""),
                C,
                "vpnservice",
            ),
            (with("vpnservice = \"east\"\n", ""), C, "vpnservice"),
            (
                with("ikepolicy = \"ike1\"", "ikepolicy = \"nope\""),
                C,
                "ikepolicy",
            ),
            (
                with("ipsecpolicy = \"esp1\"", "ipsecpolicy = \"nope\""),
                C,
                "ipsecpolicy",
            ),
            (
                with("\"172.24.4.233\"", "\"2001:db8::2\""),
                C,
                "peer_address",
            ),
            (
                with("\"172.24.4.233\"", "\"172.24.4.226\""),
                C,
                "peer_address",
            ),
            (with("\"172.24.4.233\"", "\"224.0.0.9\""), C, "peer_address"),
            (with("\"172.24.4.233\"", "\"west\""), C, "peer_address"),
            (conn("peer_id = \"@\""), C, "peer_id"),
            (conn("peer_id = \"\""), C, "peer_id"),
            (conn("peer_id = \"keyid:a\u{e9}0\""), C, "peer_id"),
            (conn("local_id = \"keyid:0\""), C, "local_id"),
            (conn("local_id = 5"), C, "local_id"),
            (with("\"10.2.0.0/24\"", "\"10.2.0.0/33\""), C, "peer_cidrs"),
            (with("\"10.2.0.0/24\"", "\"10.2.0.1/24\""), C, "peer_cidrs"),
            (
                with("\"10.2.0.0/24\"", "\"2001:db8:2::/64\""),
                C,
                "peer_cidrs",
            ),
            (with(cidrs, "peer_cidrs = []"), C, "peer_cidrs"),
            (with(cidrs, ""), C, "peer_cidrs"),
            (
                with(cidrs, "peer_cidrs = [\"10.2.0.0/24\", \"10.3.0.0/24\"]")
                    + "[ike]\nmax_selectors = 1\n",
                C,
                "peer_cidrs",
            ),
            (with(cidrs, "peer_ep_group = \"nope\""), C, "peer_ep_group"),
            (
                group("endpoints = [\"10.9.0.0/24\"]")
                    .replace(cidrs, &format!("{cidrs}\npeer_ep_group = \"g\"")),
                C,
                "peer_ep_group",
            ),
            (
                group("endpoints = [\"2001:db8:9::/64\"]").replace(cidrs, "peer_ep_group = \"g\""),
                C,
                "peer_ep_group",
            ),
            (
                with(svc_subnets, "")
                    .replace(cidrs, &format!("{cidrs}\nlocal_ep_group = \"nope\"")),
                C,
                "local_ep_group",
            ),
            (
                group("endpoints = [\"10.9.0.0/24\"]")
                    .replace(cidrs, &format!("{cidrs}\nlocal_ep_group = \"g\"")),
                C,
                "local_ep_group",
            ),
            (with(psk, "psk = \"short\""), C, "psk"),
            (with(psk, ""), C, "psk"),
            (
                with(psk, &format!("{psk}\npsk_file = \"/nonexistent/psk\"")),
                C,
                "psk",
            ),
            (with(psk, "psk_file = \"/nonexistent/psk\""), C, "psk_file"),
            (with(psk, "psk = 1234567890123456"), C, "psk"),
            (with(psk, "psk = \"a long shared secret"), C, "psk"),
            // Unterminated: found at the end of the file, where no field can be named.
            (with(psk, "psk = \"\"\"a long shared secret"), C, "-"),
            (conn("initiator = \"sometimes\""), C, "initiator"),
            (conn("admin_state_up = \"yes\""), C, "admin_state_up"),
            (with("\"restart\"", "\"explode\""), C, "dpd.action"),
            (with("interval = 10", "interval = 0"), C, "dpd.interval"),
            (
                with("interval = 10", "interval = 100000"),
                C,
                "dpd.interval",
            ),
            (with("interval = 10", "interval = -1"), C, "dpd.interval"),
            (with("timeout = 40", "timeout = 5"), C, "dpd.timeout"),
            (with("timeout = 40", "timeout = 10"), C, "dpd.timeout"),
            (with("timeout = 40", "timeout = 10000000"), C, "dpd.timeout"),
            (
                with("timeout = 40 }", "timeout = 40, bogus = 1 }"),
                C,
                "dpd.bogus",
            ),
            (
                with(dpd, "[ipsec_site_connection.dpd]\naction = 5"),
                C,
                "dpd.action",
            ),
            (with(dpd, "dpd = 30"), C, "dpd"),
            (conn("mtu = 60"), C, "mtu"),
            (conn("mtu = 70000"), C, "mtu"),
            (v6.clone() + "mtu = 1000\n", C, "mtu"),
            (conn("udp_encap = \"never\""), C, "udp_encap"),
            (conn("replay_window = 0"), C, "replay_window"),
            (conn("backend = \"dpdk\""), C, "backend"),
            (conn("backend = \"Kernel\""), C, "backend"),
            (conn("backend = 1"), C, "backend"),
            (conn("replay_window = 5000"), C, "replay_window"),
            (conn("bogus = 1"), C, "bogus"),
            // [ike]
            (ike("port = 0"), "ike", "port"),
            (ike("port = 70000"), "ike", "port"),
            (ike("natt_port = 0"), "ike", "natt_port"),
            (ike("natt_port = 500"), "ike", "natt_port"),
            (ike("port = 4500"), "ike", "natt_port"),
            (ike("cookie_threshold = -1"), "ike", "cookie_threshold"),
            (ike("half_open_timeout = 0"), "ike", "half_open_timeout"),
            (ike("half_open_timeout = 86400"), "ike", "half_open_timeout"),
            (ike("rekey_overlap = 100000"), "ike", "rekey_overlap"),
            (ike("rekey_overlap = -2"), "ike", "rekey_overlap"),
            (ike("max_selectors = 0"), "ike", "max_selectors"),
            (ike("max_selectors = 65"), "ike", "max_selectors"),
            (ike("bogus = 1"), "ike", "bogus"),
            (
                ike("[ike.limits]\nhalf_open_per_peer = 0"),
                "top level",
                "ike.limits.half_open_per_peer",
            ),
            (
                ike("[ike.limits]\nhalf_open_total = 2"),
                "top level",
                "ike.limits.half_open_total",
            ),
            (
                ike("[ike.limits]\nike_sas_per_conn = 1"),
                "top level",
                "ike.limits.ike_sas_per_conn",
            ),
            (
                ike("[ike.limits]\nchild_sas_per_conn = -1"),
                "top level",
                "ike.limits.child_sas_per_conn",
            ),
            (
                ike("[ike.limits]\ndh_per_second = 0"),
                "top level",
                "ike.limits.dh_per_second",
            ),
            (
                ike("[ike.limits]\ncookie_grace = 100"),
                "top level",
                "ike.limits.cookie_grace",
            ),
            (
                ike("[ike.limits]\nbogus = 1"),
                "top level",
                "ike.limits.bogus",
            ),
            (
                with("instance = \"t\"", "instance = \"t\"\nike = 1"),
                "top level",
                "ike",
            ),
        ];
        let mut failed = vec![];
        for (text, entry, field) in cases {
            let want = format!("vpnd.toml: {entry}: {field}: ");
            match load(&text) {
                Ok(_) => failed.push(format!("accepted, wanted {want}\n{text}")),
                Err(err) => {
                    if !err.contains(&want) {
                        failed.push(format!("{err}\n  should contain {want}"));
                    }
                    for secret in ["shared secret", "1234567890"] {
                        assert!(!err.contains(secret), "PSKs never in errors: {err}");
                    }
                }
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
        // What the cases above change, in range, is accepted.
        let c = load(&(v6 + "mtu = 1280\nreplay_window = 4096\n")).unwrap();
        assert_eq!((c[0].mtu, c[0].replay_window), (Some(1280), 4096));
        let c = load(&with(
            "lifetime = 1800",
            "lifetime = { units = \"kilobytes\", value = 60 }",
        ))
        .unwrap();
        assert_eq!(c[0].conn.lifetimes.child_bytes, Some(60 * 1024));
        let c = load(&with(ike_life, "lifetime = { value = 7200 }")).unwrap();
        assert_eq!(c[0].conn.lifetimes.ike, Duration::from_secs(7200));
        let c = load(&with(esp_algs, "proposals = [\"aes256gcm16-esn-ecp384\"]")).unwrap();
        assert_eq!(c[0].conn.esp[0].esn, vec![true]);
        load(&conn(
            "peer_id = \"keyid:0a1b\"\nlocal_id = \"@east.example\"",
        ))
        .unwrap();
        load(&ike(
            "port = 5000\nnatt_port = 5001\ncookie_threshold = 0\nrekey_overlap = 0",
        ))
        .unwrap();
        load(&ike(
            "[ike.limits]\nhalf_open_per_peer = 1\nhalf_open_total = 1\nike_sas_per_conn = 2\n\
             child_sas_per_conn = 1\ndh_per_second = 1\ndh_burst = 1\n\
             cookie_secret_lifetime = 1\ncookie_grace = 0",
        ))
        .unwrap();
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
