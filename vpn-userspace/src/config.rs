//! vpnd's configuration file (TOML). This part covers the data plane with manually keyed SAs
//! (like `ip xfrm state add`); the Neutron-VPNaaS-shaped sections come with the IKE daemon.
//!
//! Every error names the file, the entry and the field. Keys may be given inline (hex) or in
//! a file; they are never printed.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    dataplane::worker::Prefix,
    esp::{Cipher, SaKey},
};

#[derive(Debug, thiserror::Error)]
#[error("{file}: {entry}: {field}: {msg}")]
pub struct ConfigError {
    pub file: String,
    pub entry: String,
    pub field: String,
    pub msg: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pin directory name under /sys/fs/bpf.
    pub instance: String,
    pub wire: Wire,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantCfg>,
    #[serde(default, rename = "manual_sa")]
    pub manual_sas: Vec<ManualSa>,
    /// AF_XDP frames per socket.
    #[serde(default = "default_frames")]
    pub xsk_frames: u32,
    /// AES-GCM implementation: "aws-lc-rs" (default), "ring" or "rustcrypto".
    #[serde(default)]
    pub crypto_backend: Option<String>,
    /// Neutron VPNaaS resources (see `vpnaas.rs`).
    #[serde(default, rename = "ikepolicy")]
    pub ikepolicies: Vec<crate::vpnaas::IkePolicy>,
    #[serde(default, rename = "ipsecpolicy")]
    pub ipsecpolicies: Vec<crate::vpnaas::IpsecPolicy>,
    #[serde(default, rename = "vpnservice")]
    pub vpnservices: Vec<crate::vpnaas::VpnService>,
    #[serde(default, rename = "ipsec_site_connection")]
    pub connections: Vec<crate::vpnaas::SiteConnection>,
    #[serde(default, rename = "endpoint_group")]
    pub endpoint_groups: Vec<crate::vpnaas::EndpointGroup>,
    #[serde(default)]
    pub ike: crate::vpnaas::IkeSettings,
}

fn default_frames() -> u32 {
    4096
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Wire {
    pub interface: String,
    /// XDP attach mode: "native" (default) or "generic".
    #[serde(default)]
    pub xdp_mode: Option<String>,
    /// IP MTU of the wire (default: the interface's): ESP packets never exceed it.
    pub mtu: Option<u16>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TenantCfg {
    pub id: u32,
    pub interface: String,
    pub vlan: Option<u16>,
    pub vni: Option<u32>,
    pub local_vtep: Option<Ipv4Addr>,
    pub remote_vtep: Option<Ipv4Addr>,
    pub vtep_mac: Option<String>,
    /// Our MAC on the tenant network (the tenant's gateway).
    pub gateway_mac: String,
    /// Tenant host MAC to use until one is learned from its traffic.
    pub host_mac: String,
    /// Our (gateway) addresses on the tenant network: the source of the ICMP errors path MTU
    /// discovery needs.
    pub gateway_ip: Option<Ipv4Addr>,
    pub gateway_ip6: Option<std::net::Ipv6Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualSa {
    pub name: String,
    pub tenant: u32,
    pub local: IpAddr,
    pub peer: IpAddr,
    /// Peer's MAC on the wire; resolved from the kernel's neighbour table when absent.
    pub peer_mac: Option<String>,
    pub local_subnets: Vec<String>,
    pub peer_subnets: Vec<String>,
    /// "aes128gcm16" or "aes256gcm16".
    pub cipher: String,
    pub spi_in: u32,
    pub spi_out: u32,
    /// Keying material (key || 4-byte salt), hex; or a file holding it.
    pub key_in: Option<String>,
    pub key_in_file: Option<PathBuf>,
    pub key_out: Option<String>,
    pub key_out_file: Option<PathBuf>,
    #[serde(default)]
    pub esn: bool,
    #[serde(default)]
    pub udp_encap: bool,
    #[serde(default = "default_window")]
    pub replay_window: u32,
}

/// 1024: several workers encrypt one SA's packets in parallel (one per queue pair), so the
/// peer sees them reordered by up to a few batches; a 128-packet window drops some as too
/// old (seen at 1 Gbit/s with two workers).
fn default_window() -> u32 {
    1024
}

impl fmt::Debug for ManualSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualSa")
            .field("name", &self.name)
            .field("spi_in", &format_args!("{:#x}", self.spi_in))
            .field("spi_out", &format_args!("{:#x}", self.spi_out))
            .field("keys", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A manual SA with everything parsed and checked.
pub struct ResolvedSa {
    pub name: String,
    pub tenant: u32,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub peer_mac: Option<[u8; 6]>,
    pub local_subnets: Vec<Prefix>,
    pub peer_subnets: Vec<Prefix>,
    pub key_in: SaKey,
    pub key_out: SaKey,
    pub spi_in: u32,
    pub spi_out: u32,
    pub esn: bool,
    pub udp_encap: bool,
    pub replay_window: u32,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

pub fn parse_prefix(s: &str) -> Option<Prefix> {
    let (a, l) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some(Prefix { addr, len })
}

fn hex(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    let s = s.trim().trim_start_matches("0x");
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 2));
    for i in (0..s.len()).step_by(2) {
        out.push(u8::from_str_radix(s.get(i..i + 2)?, 16).ok()?);
    }
    Some(out)
}

impl Config {
    /// The configured AES-GCM backend (validated at load).
    pub fn backend(&self) -> crate::esp::crypto::Backend {
        self.crypto_backend
            .as_deref()
            .and_then(|b| b.parse().ok())
            .unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |msg: String| ConfigError {
            file: path.display().to_string(),
            entry: "-".into(),
            field: "-".into(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let e = |entry: &str, field: &str, msg: &str| ConfigError {
            file: path.display().to_string(),
            entry: entry.into(),
            field: field.into(),
            msg: msg.into(),
        };
        if let Some(b) = &self.crypto_backend {
            b.parse::<crate::esp::crypto::Backend>()
                .map_err(|m| e("top level", "crypto_backend", &m))?;
        }
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(e("top level", "instance", "use [A-Za-z0-9_-]"));
        }
        for t in &self.tenants {
            let entry = format!("tenant {}", t.id);
            if t.id == 0 {
                return Err(e(&entry, "id", "0 means 'no tenant'; use 1 or more"));
            }
            match (t.vlan, t.vni) {
                (Some(v), None) if (1..=4094).contains(&v) => {}
                (Some(_), None) => return Err(e(&entry, "vlan", "must be 1-4094")),
                (None, Some(v)) if v < 1 << 24 => {
                    if t.local_vtep.is_none() || t.remote_vtep.is_none() || t.vtep_mac.is_none() {
                        return Err(e(
                            &entry,
                            "vni",
                            "VXLAN needs local_vtep, remote_vtep and vtep_mac",
                        ));
                    }
                }
                (None, Some(_)) => return Err(e(&entry, "vni", "must fit 24 bits")),
                (None, None) => {}
                (Some(_), Some(_)) => {
                    return Err(e(&entry, "vlan", "give either vlan or vni, not both"));
                }
            }
            for (field, m) in [
                ("gateway_mac", Some(&t.gateway_mac)),
                ("host_mac", Some(&t.host_mac)),
                ("vtep_mac", t.vtep_mac.as_ref()),
            ] {
                if let Some(m) = m
                    && parse_mac(m).is_none()
                {
                    return Err(e(&entry, field, "not a MAC address (aa:bb:cc:dd:ee:ff)"));
                }
            }
        }
        Ok(())
    }

    /// Parses keys and prefixes of every manual SA.
    pub fn resolve_sas(&self, path: &Path) -> Result<Vec<ResolvedSa>, ConfigError> {
        self.manual_sas
            .iter()
            .map(|m| resolve(m, path, &self.tenants))
            .collect()
    }
}

fn resolve(m: &ManualSa, path: &Path, tenants: &[TenantCfg]) -> Result<ResolvedSa, ConfigError> {
    let entry = format!("manual_sa {:?}", m.name);
    let e = |field: &str, msg: String| ConfigError {
        file: path.display().to_string(),
        entry: entry.clone(),
        field: field.into(),
        msg,
    };
    if !tenants.iter().any(|t| t.id == m.tenant) {
        return Err(e("tenant", format!("no [[tenant]] with id {}", m.tenant)));
    }
    let cipher = match m.cipher.as_str() {
        "aes128gcm16" => Cipher::Aes128Gcm16,
        "aes256gcm16" => Cipher::Aes256Gcm16,
        other => {
            return Err(e(
                "cipher",
                format!("{other:?} is not supported (aes128gcm16, aes256gcm16)"),
            ));
        }
    };
    if m.local.is_ipv4() != m.peer.is_ipv4() {
        return Err(e(
            "peer",
            "local and peer must be the same address family".into(),
        ));
    }
    for (field, spi) in [("spi_in", m.spi_in), ("spi_out", m.spi_out)] {
        if spi < 256 {
            return Err(e(field, "SPIs 0-255 are reserved (RFC 4303 2.1)".into()));
        }
    }
    if m.replay_window > vpn_common::replay::MAX_WINDOW {
        return Err(e(
            "replay_window",
            format!("at most {}", vpn_common::replay::MAX_WINDOW),
        ));
    }
    let key = |inline: &Option<String>, file: &Option<PathBuf>, field: &str| {
        let text =
            match (inline, file) {
                (Some(k), None) => Zeroizing::new(k.clone()),
                (None, Some(f)) => Zeroizing::new(std::fs::read_to_string(f).map_err(|err| {
                    e(&format!("{field}_file"), format!("{}: {err}", f.display()))
                })?),
                _ => {
                    return Err(e(
                        field,
                        format!("give exactly one of {field} and {field}_file"),
                    ));
                }
            };
        let bytes = hex(&text).ok_or_else(|| e(field, "not hex".into()))?;
        SaKey::from_keymat(cipher, &bytes).map_err(|err| e(field, err.to_string()))
    };
    let prefixes = |v: &[String], field: &str| {
        v.iter()
            .map(|s| parse_prefix(s).ok_or_else(|| e(field, format!("{s:?} is not a prefix"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let peer_mac = match &m.peer_mac {
        Some(s) => Some(parse_mac(s).ok_or_else(|| e("peer_mac", "not a MAC address".into()))?),
        None => None,
    };
    Ok(ResolvedSa {
        name: m.name.clone(),
        tenant: m.tenant,
        local: m.local,
        peer: m.peer,
        peer_mac,
        local_subnets: prefixes(&m.local_subnets, "local_subnets")?,
        peer_subnets: prefixes(&m.peer_subnets, "peer_subnets")?,
        key_in: key(&m.key_in, &m.key_in_file, "key_in")?,
        key_out: key(&m.key_out, &m.key_out_file, "key_out")?,
        spi_in: m.spi_in,
        spi_out: m.spi_out,
        esn: m.esn,
        udp_encap: m.udp_encap,
        replay_window: m.replay_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
instance = "east"
[wire]
interface = "wire0"
[[tenant]]
id = 1
interface = "ten0"
vlan = 100
gateway_mac = "02:00:00:00:00:fe"
host_mac = "02:00:00:00:00:10"
[[manual_sa]]
name = "east-west"
tenant = 1
local = "172.24.4.226"
peer = "172.24.4.233"
local_subnets = ["10.1.0.0/24"]
peer_subnets = ["10.2.0.0/24"]
cipher = "aes128gcm16"
spi_in = 0xf0e0
spi_out = 0xe0f0
key_in = "1111111111111111111111111111111111111111"
key_out = "2222222222222222222222222222222222222222"
"#;

    fn load(text: &str) -> Result<(Config, Vec<ResolvedSa>), ConfigError> {
        let dir = std::env::temp_dir().join(format!("vpncfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!("{n}.toml"));
        std::fs::write(&p, text).unwrap();
        let c = Config::load(&p)?;
        let s = c.resolve_sas(&p)?;
        Ok((c, s))
    }

    #[test]
    fn good_config_parses() {
        let (c, sas) = load(GOOD).unwrap();
        assert_eq!(c.instance, "east");
        assert_eq!(sas.len(), 1);
        assert_eq!(sas[0].replay_window, 1024);
        assert_eq!(sas[0].peer_subnets[0].len, 24);
    }

    #[test]
    fn errors_name_entry_and_field() {
        let cases = [
            (GOOD.replace("vlan = 100", "vlan = 4095"), "tenant 1: vlan"),
            (
                GOOD.replace("aes128gcm16", "3des"),
                "manual_sa \"east-west\": cipher",
            ),
            (GOOD.replace("spi_in = 0xf0e0", "spi_in = 7"), "spi_in"),
            (
                GOOD.replace("\"10.2.0.0/24\"", "\"10.2.0.0/33\""),
                "peer_subnets",
            ),
            (GOOD.replace("key_in = \"11", "key_in = \"zz"), "key_in"),
            (
                GOOD.replace("key_out = \"2222", "key_out = \"22"),
                "key_out: Aes128Gcm16 needs 20 bytes",
            ),
            (
                GOOD.replace("tenant = 1\nlocal", "tenant = 9\nlocal"),
                "no [[tenant]] with id 9",
            ),
            (GOOD.replace("[wire]", "bogus = 1\n[wire]"), "unknown field"),
            (
                GOOD.replace("[wire]", "crypto_backend = \"des\"\n[wire]"),
                "top level: crypto_backend",
            ),
        ];
        for (text, want) in cases {
            let err = load(&text).err().expect(want).to_string();
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(!err.contains("2222222222"), "keys never in errors: {err}");
        }
    }

    #[test]
    fn keys_are_not_in_debug_output() {
        let (c, _) = load(GOOD).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("1111111111"), "{shown}");
    }
}
