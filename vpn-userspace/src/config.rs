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
    /// AF_XDP frames per socket: a power of two, 64 to 1048576.
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
    /// Durable state of the manual SAs (see `crate::seqstate`).
    #[serde(default)]
    pub state: StateCfg,
}

/// `[state]`: where and how vpnd keeps the sequence numbers of manually keyed SAs across
/// restarts.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StateCfg {
    /// State files under DIR/INSTANCE/ (default `/var/lib/vpnd`; vpnd's `--state-dir` wins).
    /// Durable storage: not `/run`, which a reboot empties.
    pub dir: Option<PathBuf>,
    /// Smallest outbound reservation, in sequence numbers: what a crash may skip.
    pub out_block: Option<u64>,
    /// Smallest inbound reservation: how many of the peer's packets a crash may drop as
    /// replays (or a second of its traffic, if more).
    pub in_block: Option<u64>,
}

impl StateCfg {
    pub fn out_block(&self) -> u64 {
        self.out_block.unwrap_or(crate::seqstate::DEFAULT_OUT_BLOCK)
    }

    pub fn in_block(&self) -> u64 {
        self.in_block.unwrap_or(crate::seqstate::DEFAULT_IN_BLOCK)
    }
}

fn default_frames() -> u32 {
    4096
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Wire {
    pub interface: String,
    /// XDP attach mode: "auto" (the default: native where the driver has it, else generic),
    /// "native" or "generic".
    #[serde(default)]
    pub xdp_mode: Option<String>,
    /// How the XDP programs hand their metadata to the AF_XDP workers: "auto" (the default:
    /// the XDP metadata area where the kernel's verifier accepts `bpf_xdp_adjust_meta`, else
    /// an in-packet shim), "adjust_meta" or "shim".
    #[serde(default)]
    pub xdp_carrier: Option<String>,
    /// IP MTU of the wire (default: the interface's), at least 1280: ESP packets never
    /// exceed it.
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
    /// For connections on the kernel backend: the id of the tenant's xfrm interface
    /// (`ip link add NAME type xfrm dev WIRE if_id ID`). Its SAs and policies bind to it, and
    /// the tenant's routing context is the network namespace or VRF that interface is in
    /// (a Neutron qrouter namespace). Without it the policies apply to the whole namespace.
    pub xfrm_if_id: Option<u32>,
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
    pub key_in: Option<Zeroizing<String>>,
    pub key_in_file: Option<PathBuf>,
    pub key_out: Option<Zeroizing<String>>,
    pub key_out_file: Option<PathBuf>,
    #[serde(default)]
    pub esn: bool,
    #[serde(default)]
    pub udp_encap: bool,
    /// 0 to 4096; 0 disables anti-replay (RFC 4303 3.4.3 allows it for manual keys).
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

/// `aa:bb:cc:dd:ee:ff` (one or two hex digits a part).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| {
            (!p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// `addr/len`; host bits are allowed here (see [`subnet`] for configured subnets).
pub fn parse_prefix(s: &str) -> Option<Prefix> {
    let (a, l) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = l.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some(Prefix { addr, len })
}

/// A configured subnet: a prefix without host bits (as Neutron requires).
pub(crate) fn subnet(s: &str) -> Result<Prefix, String> {
    let p = parse_prefix(s).ok_or_else(|| format!("{s:?} is not a prefix (addr/len)"))?;
    let (first, _) = crate::ike::ts::prefix_range(&p);
    if first != p.addr {
        return Err(format!(
            "{s:?} has host bits set; did you mean \"{first}/{}\"?",
            p.len
        ));
    }
    Ok(p)
}

/// The configured subnets of a field, at least one.
pub(crate) fn subnets(v: &[String]) -> Result<Vec<Prefix>, String> {
    if v.is_empty() {
        return Err("give at least one subnet".into());
    }
    v.iter().map(|s| subnet(s)).collect()
}

/// Do two lists of traffic selectors share an address family (else nothing can match)?
pub(crate) fn families_meet(a: &[Prefix], b: &[Prefix]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.addr.is_ipv4() == y.addr.is_ipv4()))
}

/// A unicast address usable as a tunnel or VTEP endpoint or as a gateway address.
pub(crate) fn unicast(a: IpAddr) -> Result<(), String> {
    let bad = match a {
        IpAddr::V4(v) => v.is_unspecified() || v.is_multicast() || v.is_broadcast(),
        IpAddr::V6(v) => v.is_unspecified() || v.is_multicast(),
    };
    if bad {
        return Err(format!("{a} is not a unicast address"));
    }
    Ok(())
}

/// A unicast MAC address (not all zeros, group bit clear).
fn unicast_mac(s: &str) -> Result<[u8; 6], String> {
    let m = parse_mac(s).ok_or("not a MAC address (aa:bb:cc:dd:ee:ff)")?;
    if m == [0; 6] || m[0] & 1 != 0 {
        return Err(format!("{s:?} is not a unicast MAC address"));
    }
    Ok(m)
}

/// A Linux interface name (IFNAMSIZ).
fn ifname(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 15
        || s == "."
        || s == ".."
        || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "{s:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
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

/// Reads a file that holds a key or a PSK, refusing one that other users can read or that
/// someone else owns (as ssh does for private keys): such a secret is as good as published.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: mode {mode:04o} lets other users read the secret; `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    // SAFETY: plain libc call.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!(
            "{}: owned by uid {}, neither root nor us (uid {euid})",
            path.display(),
            meta.uid()
        ));
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|err| format!("{}: {err}", path.display()))
}

/// Fields whose values are secrets: parser messages about them are not shown (they may quote
/// the value).
const SECRET_FIELDS: [&str; 3] = ["psk", "key_in", "key_out"];

/// Names the entry and the field of a TOML or serde error at byte `at` of `text` the way the
/// validation does (`top level`, `wire`, `tenant 1`, `ipsec_site_connection "east-west"`).
fn locate(text: &str, at: usize, root: bool, msg: &str) -> (String, String) {
    let doc: Option<toml::Table> = toml::from_str(text).ok();
    // `[[kind]]` number `i`, whose lines follow in `after`.
    let name_of = |kind: &str, i: usize, after: &str| {
        let key = if kind == "tenant" { "id" } else { "name" };
        let parsed = doc.as_ref().and_then(|d| {
            d.get(kind)?
                .as_array()?
                .get(i)?
                .as_table()?
                .get(key)
                .cloned()
        });
        // Not a valid document (a syntax error): the section's own `key = ...` line.
        let parsed = parsed.or_else(|| {
            let line = after
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with('['))
                .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))?;
            toml::from_str::<toml::Table>(&format!("v = {line}"))
                .ok()?
                .remove("v")
        });
        match parsed {
            Some(toml::Value::Integer(id)) if kind == "tenant" => format!("tenant {id}"),
            Some(toml::Value::String(n)) if kind != "tenant" => format!("{kind} {n:?}"),
            _ => format!("{kind} #{}", i + 1),
        }
    };
    let mut entry = "top level".to_string();
    let mut path: Vec<String> = vec![];
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    // The last `key = value` line at or before `at` in the current section, and its offset.
    let mut key_line: Option<(&str, usize)> = None;
    let mut line_start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if root || offset > at {
            break;
        }
        line_start = offset;
        offset += line.len();
        let t = line.trim();
        let header = if let Some(h) = t.strip_prefix("[[") {
            h.split("]]").next().map(|h| (h, true))
        } else if let Some(h) = t.strip_prefix('[') {
            h.split(']').next().map(|h| (h, false))
        } else {
            None
        };
        if let Some((h, array)) = header {
            key_line = None;
            let parts: Vec<String> = h
                .split('.')
                .map(|p| p.trim().trim_matches('"').to_string())
                .collect();
            let kind = parts[0].clone();
            path = parts[1..].to_vec();
            if array && path.is_empty() {
                *counts.entry(kind.clone()).or_default() += 1;
            }
            entry = match counts.get(&kind) {
                Some(&n) => name_of(&kind, n - 1, &text[offset..]),
                None if path.is_empty() => kind,
                None => {
                    path.insert(0, kind);
                    "top level".into()
                }
            };
        } else if !t.starts_with('#') && t.contains('=') {
            key_line = Some((line, line_start));
        }
    }
    let mut keys = path;
    if let Some((line, lo)) = key_line {
        let before = if lo == line_start && at < lo + line.len() {
            line.get(..at - lo).unwrap_or(line)
        } else if lo == line_start {
            // Past the end of the text (e.g. an unterminated string): no field to name.
            ""
        } else if line.matches('[').count() > line.matches(']').count() {
            // A multi-line array.
            line
        } else {
            ""
        };
        for (i, seg) in before.split('{').enumerate() {
            let seg = if i == 0 {
                seg
            } else {
                seg.rsplit(',').next().unwrap_or(seg)
            };
            if let Some((k, _)) = seg.split_once('=') {
                let k = k.trim().trim_matches('"');
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    keys.push(k.to_string());
                }
            }
        }
    }
    let named = [
        "missing field `",
        "unknown field `",
        "duplicate field `",
        "duplicate key `",
    ]
    .iter()
    .find_map(|p| msg.split_once(p))
    .and_then(|(_, rest)| rest.split('`').next());
    if let Some(n) = named
        && keys.last().map(String::as_str) != Some(n)
    {
        keys.push(n.to_string());
    }
    let plain_table = entry != "top level" && !entry.contains(' ');
    if plain_table && keys.len() == 1 && keys[0] == entry {
        // E.g. `wire = 1` and `[wire]`: a duplicate key reported at the header.
        keys.clear();
    }
    if keys.is_empty() && plain_table {
        // The section itself is wrong (e.g. `[tenant]` where `[[tenant]]` is meant).
        return ("top level".into(), entry);
    }
    let field = if keys.is_empty() {
        "-".into()
    } else {
        keys.join(".")
    };
    (entry, field)
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
        // The file may hold PSKs and keys inline: its text is zeroized when dropped.
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            entry: "-".into(),
            field: "-".into(),
            msg: e.to_string(),
        })?);
        Config::from_text(&text, path)
    }

    /// [`Config::load`] of a text already read from `path` (key files named in it are read
    /// relative to `path`). Public for the fuzzer, which feeds it text without a file.
    #[doc(hidden)]
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // Not toml's Display: it quotes the source line, which may hold a key or a PSK.
            let Some(span) = e.span() else {
                return ConfigError {
                    file: file.clone(),
                    entry: "-".into(),
                    field: "-".into(),
                    msg: e.message().to_string(),
                };
            };
            let at = span.start.min(text.len());
            let root = span.start == 0 && span.end == 0;
            let (entry, field) = locate(text, at, root, e.message());
            let before = text.get(..at).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            let secret = SECRET_FIELDS
                .iter()
                .any(|s| field.rsplit('.').next() == Some(*s));
            let msg = if secret && !e.message().contains("field `") {
                "not a valid string (details withheld: they could quote the secret)".into()
            } else {
                e.message().trim_end().replace('\n', "; ")
            };
            ConfigError {
                file: file.clone(),
                entry,
                field,
                msg: if root {
                    msg
                } else {
                    format!("{msg} (line {line}, column {column})")
                },
            }
        })?;
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
            || self.instance.len() > 64
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(e(
                "top level",
                "instance",
                "use 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if !self.xsk_frames.is_power_of_two() || !(64..=1 << 20).contains(&self.xsk_frames) {
            return Err(e(
                "top level",
                "xsk_frames",
                &format!("{}: use a power of two from 64 to 1048576", self.xsk_frames),
            ));
        }
        ifname(&self.wire.interface).map_err(|m| e("wire", "interface", &m))?;
        match self.wire.xdp_mode.as_deref() {
            None | Some("native" | "generic" | "auto") => {}
            Some(m) => {
                return Err(e(
                    "wire",
                    "xdp_mode",
                    &format!("{m:?}: use native, generic or auto"),
                ));
            }
        }
        if let Some(c) = &self.wire.xdp_carrier {
            c.parse::<crate::dataplane::CarrierChoice>()
                .map_err(|m| e("wire", "xdp_carrier", &m))?;
        }
        if let Some(m) = self.wire.mtu
            && m < 1280
        {
            return Err(e(
                "wire",
                "mtu",
                &format!("{m} is below the IPv6 minimum of 1280"),
            ));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            let entry = format!("tenant {}", t.id);
            let earlier = &self.tenants[..i];
            if t.id == 0 {
                return Err(e(&entry, "id", "0 means 'no tenant'; use 1 or more"));
            }
            if earlier.iter().any(|o| o.id == t.id) {
                return Err(e(&entry, "id", "defined twice"));
            }
            ifname(&t.interface).map_err(|m| e(&entry, "interface", &m))?;
            match (t.vlan, t.vni) {
                (Some(v), None) if (1..=4094).contains(&v) => {
                    if earlier.iter().any(|o| o.vlan == Some(v)) {
                        return Err(e(
                            &entry,
                            "vlan",
                            &format!("VLAN {v} belongs to another tenant already"),
                        ));
                    }
                }
                (Some(_), None) => return Err(e(&entry, "vlan", "must be 1-4094")),
                (None, Some(v)) if v < 1 << 24 => {
                    if t.local_vtep.is_none() || t.remote_vtep.is_none() || t.vtep_mac.is_none() {
                        return Err(e(
                            &entry,
                            "vni",
                            "VXLAN needs local_vtep, remote_vtep and vtep_mac",
                        ));
                    }
                    if earlier.iter().any(|o| o.vni == Some(v)) {
                        return Err(e(
                            &entry,
                            "vni",
                            &format!("VNI {v} belongs to another tenant already"),
                        ));
                    }
                }
                (None, Some(_)) => return Err(e(&entry, "vni", "must fit 24 bits")),
                (None, None) => {
                    if earlier.iter().any(|o| o.vlan.is_none() && o.vni.is_none()) {
                        return Err(e(
                            &entry,
                            "vlan",
                            "another tenant is untagged already; give vlan or vni",
                        ));
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(e(&entry, "vlan", "give either vlan or vni, not both"));
                }
            }
            if t.vni.is_none() {
                for (field, given) in [
                    ("local_vtep", t.local_vtep.is_some()),
                    ("remote_vtep", t.remote_vtep.is_some()),
                    ("vtep_mac", t.vtep_mac.is_some()),
                ] {
                    if given {
                        return Err(e(&entry, field, "only for VXLAN tenants (with vni)"));
                    }
                }
            }
            for (field, a) in [
                ("local_vtep", t.local_vtep.map(IpAddr::V4)),
                ("remote_vtep", t.remote_vtep.map(IpAddr::V4)),
                ("gateway_ip", t.gateway_ip.map(IpAddr::V4)),
                ("gateway_ip6", t.gateway_ip6.map(IpAddr::V6)),
            ] {
                if let Some(a) = a {
                    unicast(a).map_err(|m| e(&entry, field, &m))?;
                }
            }
            if t.xfrm_if_id == Some(0) {
                return Err(e(&entry, "xfrm_if_id", "1 or more (0 means no interface)"));
            }
            if let Some(id) = t.xfrm_if_id
                && earlier.iter().any(|o| o.xfrm_if_id == Some(id))
            {
                return Err(e(
                    &entry,
                    "xfrm_if_id",
                    "another tenant has this interface id",
                ));
            }
            if t.local_vtep.is_some() && t.local_vtep == t.remote_vtep {
                return Err(e(&entry, "remote_vtep", "the same as local_vtep"));
            }
            for (field, m) in [
                ("gateway_mac", Some(&t.gateway_mac)),
                ("host_mac", Some(&t.host_mac)),
                ("vtep_mac", t.vtep_mac.as_ref()),
            ] {
                if let Some(m) = m {
                    unicast_mac(m).map_err(|msg| e(&entry, field, &msg))?;
                }
            }
        }
        if let Some(d) = &self.state.dir
            && !d.is_absolute()
        {
            return Err(e("state", "dir", "must be an absolute path"));
        }
        for (field, b) in [
            ("out_block", self.state.out_block),
            ("in_block", self.state.in_block),
        ] {
            use crate::seqstate::{MAX_BLOCK, MIN_BLOCK};
            if let Some(b) = b
                && !(MIN_BLOCK..=MAX_BLOCK).contains(&b)
            {
                return Err(e(
                    "state",
                    field,
                    &format!("{b} is not within {MIN_BLOCK}..={MAX_BLOCK}"),
                ));
            }
        }
        for (i, m) in self.manual_sas.iter().enumerate() {
            let entry = format!("manual_sa {:?}", m.name);
            let earlier = &self.manual_sas[..i];
            if m.name.is_empty() {
                return Err(e(&entry, "name", "must not be empty"));
            }
            if earlier.iter().any(|o| o.name == m.name) {
                return Err(e(&entry, "name", "defined twice"));
            }
            if let Some(o) = earlier.iter().find(|o| o.spi_in == m.spi_in) {
                return Err(e(
                    &entry,
                    "spi_in",
                    &format!(
                        "{:#x} is manual_sa {:?}'s inbound SPI already",
                        m.spi_in, o.name
                    ),
                ));
            }
        }
        self.validate_vpnaas(path)
    }

    /// Parses keys and prefixes of every manual SA. No key may serve two SAs (`resolve`
    /// already refuses one for both directions of an SA): they would count the same nonces
    /// from 1, and share a state file.
    pub fn resolve_sas(&self, path: &Path) -> Result<Vec<ResolvedSa>, ConfigError> {
        let sas: Vec<ResolvedSa> = self
            .manual_sas
            .iter()
            .map(|m| resolve(m, path, &self.tenants))
            .collect::<Result<_, _>>()?;
        // Every key of every SA, in order: the first repeat is the error.
        let keys: Vec<(&str, &str, crate::seqstate::KeyId)> = sas
            .iter()
            .flat_map(|sa| {
                [("key_in", &sa.key_in), ("key_out", &sa.key_out)]
                    .map(|(f, k)| (sa.name.as_str(), f, crate::seqstate::KeyId::of(k)))
            })
            .collect();
        for (i, (name, field, id)) in keys.iter().enumerate() {
            if let Some((o, f, _)) = keys[..i].iter().find(|(_, _, k)| k == id) {
                return Err(ConfigError {
                    file: path.display().to_string(),
                    entry: format!("manual_sa {name:?}"),
                    field: (*field).into(),
                    msg: format!(
                        "the same key as manual_sa {o:?}'s {f}: AES-GCM nonces would repeat \
                         (each direction of each SA needs its own key)"
                    ),
                });
            }
        }
        Ok(sas)
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
    unicast(m.local).map_err(|msg| e("local", msg))?;
    unicast(m.peer).map_err(|msg| e("peer", msg))?;
    if m.local.is_ipv4() != m.peer.is_ipv4() {
        return Err(e(
            "peer",
            "local and peer must be the same address family".into(),
        ));
    }
    if m.local == m.peer {
        return Err(e("peer", "the same address as local".into()));
    }
    for (field, spi) in [("spi_in", m.spi_in), ("spi_out", m.spi_out)] {
        if spi < 256 {
            return Err(e(field, "SPIs 0-255 are reserved (RFC 4303 2.1)".into()));
        }
    }
    // 0 disables anti-replay, which RFC 4303 3.4.3 allows for manually keyed SAs.
    if m.replay_window > vpn_common::replay::MAX_WINDOW {
        return Err(e(
            "replay_window",
            format!("at most {}", vpn_common::replay::MAX_WINDOW),
        ));
    }
    let key = |inline: &Option<Zeroizing<String>>, file: &Option<PathBuf>, field: &str| {
        let text = match (inline, file) {
            (Some(k), None) => k.clone(),
            (None, Some(f)) => {
                read_secret_file(f).map_err(|err| e(&format!("{field}_file"), err))?
            }
            _ => {
                return Err(e(
                    field,
                    format!("give exactly one of {field} and {field}_file"),
                ));
            }
        };
        let bytes = hex(&text).ok_or_else(|| e(field, "not hex".into()))?;
        let key = SaKey::from_keymat(cipher, &bytes).map_err(|err| e(field, err.to_string()))?;
        Ok((key, bytes))
    };
    let prefixes = |v: &[String], field: &str| subnets(v).map_err(|msg| e(field, msg));
    let peer_mac = match &m.peer_mac {
        Some(s) => Some(unicast_mac(s).map_err(|msg| e("peer_mac", msg))?),
        None => None,
    };
    let local_subnets = prefixes(&m.local_subnets, "local_subnets")?;
    let peer_subnets = prefixes(&m.peer_subnets, "peer_subnets")?;
    if !families_meet(&local_subnets, &peer_subnets) {
        return Err(e(
            "peer_subnets",
            "none of the address family of local_subnets: no traffic could match".into(),
        ));
    }
    let (key_in, bytes_in) = key(&m.key_in, &m.key_in_file, "key_in")?;
    let (key_out, bytes_out) = key(&m.key_out, &m.key_out_file, "key_out")?;
    if bytes_in == bytes_out {
        return Err(e(
            "key_out",
            "the same as key_in: both directions would repeat AES-GCM nonces".into(),
        ));
    }
    Ok(ResolvedSa {
        name: m.name.clone(),
        tenant: m.tenant,
        local: m.local,
        peer: m.peer,
        peer_mac,
        local_subnets,
        peer_subnets,
        key_in,
        key_out,
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

    fn write(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vpncfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!("{n}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load_path(p: &Path) -> Result<(Config, Vec<ResolvedSa>), ConfigError> {
        let c = Config::load(p)?;
        let s = c.resolve_sas(p)?;
        Ok((c, s))
    }

    fn load(text: &str) -> Result<(Config, Vec<ResolvedSa>), ConfigError> {
        load_path(&write(text))
    }

    #[test]
    fn good_config_parses() {
        let (c, sas) = load(GOOD).unwrap();
        assert_eq!(c.instance, "east");
        assert_eq!(sas.len(), 1);
        assert_eq!(sas[0].replay_window, 1024);
        assert_eq!(sas[0].peer_subnets[0].len, 24);
        // Manually keyed SAs may go without anti-replay (RFC 4303 3.4.3).
        let (_, sas) = load(&(GOOD.to_string() + "replay_window = 0\n")).unwrap();
        assert_eq!(sas[0].replay_window, 0);
        let (c, _) = load(&GOOD.replace("vlan = 100", VXLAN)).unwrap();
        assert_eq!(c.tenants[0].vni, Some(5001));
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

    /// A key serves one direction of one manual SA (else two counters start from 1 under
    /// the same key); `[state]` is checked.
    #[test]
    fn one_key_per_direction_and_the_state_section() {
        let same = GOOD.replace(&"2".repeat(40), &"1".repeat(40));
        let err = load(&same).err().expect("same key both ways").to_string();
        assert!(
            err.contains("manual_sa \"east-west\": key_out") && err.contains("nonces"),
            "{err}"
        );
        let shared = format!("{GOOD}{}", SA2.replace("3333", "2222"));
        let err = load(&shared)
            .err()
            .expect("a key of another SA")
            .to_string();
        assert!(
            err.contains("manual_sa \"second\": key_in") && err.contains("'s key_out"),
            "{err}"
        );
        assert!(!err.contains("2222222222"), "keys never in errors: {err}");
        load(&format!("{GOOD}{SA2}")).expect("four keys");

        let (c, _) = load(&format!(
            "{GOOD}[state]\ndir = \"/var/lib/x\"\nin_block = 64\n"
        ))
        .unwrap();
        assert_eq!(c.state.dir.as_deref(), Some(Path::new("/var/lib/x")));
        assert_eq!(
            (c.state.in_block(), c.state.out_block()),
            (64, crate::seqstate::DEFAULT_OUT_BLOCK)
        );
        for (extra, want) in [
            ("dir = \"var/lib\"", "state: dir: must be an absolute path"),
            ("out_block = 1", "state: out_block"),
            ("in_block = 1099511627776", "state: in_block"),
        ] {
            let err = load(&format!("{GOOD}[state]\n{extra}\n"))
                .err()
                .expect(want)
                .to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    /// A VXLAN tenant link, to replace `vlan = 100` with.
    const VXLAN: &str = "vni = 5001\nlocal_vtep = \"192.168.100.1\"\n\
                         remote_vtep = \"192.168.100.2\"\nvtep_mac = \"02:00:00:00:00:20\"";
    const TENANT2: &str = "[[tenant]]\nid = 2\ninterface = \"ten0\"\nvlan = 200\n\
                           gateway_mac = \"02:00:00:00:00:fe\"\nhost_mac = \"02:00:00:00:00:11\"\n";
    const SA2: &str = "[[manual_sa]]\nname = \"second\"\ntenant = 1\nlocal = \"172.24.4.226\"\n\
                       peer = \"172.24.4.234\"\nlocal_subnets = [\"10.1.0.0/24\"]\n\
                       peer_subnets = [\"10.3.0.0/24\"]\ncipher = \"aes128gcm16\"\n\
                       spi_in = 0xf0e1\nspi_out = 0xe0f1\n\
                       key_in = \"3333333333333333333333333333333333333333\"\n\
                       key_out = \"4444444444444444444444444444444444444444\"\n";

    /// GOOD with `from` replaced by `to` (which must be there).
    fn with(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from:?} not in GOOD");
        GOOD.replacen(from, to, 1)
    }

    /// Every field of the top level, [wire], [[tenant]] and [[manual_sa]]: a bad value is
    /// refused as `FILE: ENTRY: FIELD: message` (serde's own errors included), and no key is
    /// ever shown.
    #[test]
    fn every_field_has_its_errors() {
        const SA: &str = "manual_sa \"east-west\"";
        const T1: &str = "tenant 1";
        let key_in = "key_in = \"1111111111111111111111111111111111111111\"";
        let key_out = "key_out = \"2222222222222222222222222222222222222222\"";
        let cases: Vec<(String, &str, &str)> = vec![
            // Top level.
            (
                with("instance = \"east\"", "instance = \"ea st\""),
                "top level",
                "instance",
            ),
            (
                with("instance = \"east\"", "instance = \"\""),
                "top level",
                "instance",
            ),
            (
                with(
                    "instance = \"east\"",
                    &format!("instance = \"{}\"", "e".repeat(65)),
                ),
                "top level",
                "instance",
            ),
            (with("instance = \"east\"\n", ""), "top level", "instance"),
            (with("[wire]", "bogus = 1\n[wire]"), "top level", "bogus"),
            (
                with("[wire]", "crypto_backend = \"des\"\n[wire]"),
                "top level",
                "crypto_backend",
            ),
            (
                with("[wire]", "crypto_backend = 1\n[wire]"),
                "top level",
                "crypto_backend",
            ),
            (
                with("[wire]", "xsk_frames = 0\n[wire]"),
                "top level",
                "xsk_frames",
            ),
            (
                with("[wire]", "xsk_frames = 1000\n[wire]"),
                "top level",
                "xsk_frames",
            ),
            (
                with("[wire]", "xsk_frames = 2097152\n[wire]"),
                "top level",
                "xsk_frames",
            ),
            (
                with("[wire]", "xsk_frames = -1\n[wire]"),
                "top level",
                "xsk_frames",
            ),
            (
                with("[wire]\ninterface = \"wire0\"\n", ""),
                "top level",
                "wire",
            ),
            (with("[wire]", "wire = 1\n[wire]"), "top level", "wire"),
            // [wire]
            (
                with("interface = \"wire0\"", "interface = \"\""),
                "wire",
                "interface",
            ),
            (
                with(
                    "interface = \"wire0\"",
                    "interface = \"a-much-too-long-name\"",
                ),
                "wire",
                "interface",
            ),
            (
                with("interface = \"wire0\"", "interface = \"a/b\""),
                "wire",
                "interface",
            ),
            (with("interface = \"wire0\"\n", ""), "wire", "interface"),
            (
                with(
                    "interface = \"wire0\"",
                    "interface = \"wire0\"\nxdp_mode = \"turbo\"",
                ),
                "wire",
                "xdp_mode",
            ),
            (
                with(
                    "interface = \"wire0\"",
                    "interface = \"wire0\"\nxdp_carrier = \"headroom\"",
                ),
                "wire",
                "xdp_carrier",
            ),
            (
                with("interface = \"wire0\"", "interface = \"wire0\"\nmtu = 1000"),
                "wire",
                "mtu",
            ),
            (
                with(
                    "interface = \"wire0\"",
                    "interface = \"wire0\"\nmtu = 70000",
                ),
                "wire",
                "mtu",
            ),
            (
                with("interface = \"wire0\"", "interface = \"wire0\"\nbogus = 1"),
                "wire",
                "bogus",
            ),
            // [[tenant]]
            (with("id = 1", "id = 0"), "tenant 0", "id"),
            (with("id = 1", "id = -1"), "tenant -1", "id"),
            (
                GOOD.to_string() + &TENANT2.replace("id = 2", "id = 1"),
                T1,
                "id",
            ),
            (
                with("interface = \"ten0\"", "interface = \"\""),
                T1,
                "interface",
            ),
            (
                with("interface = \"ten0\"", "interface = \"ten 0\""),
                T1,
                "interface",
            ),
            (with("interface = \"ten0\"\n", ""), T1, "interface"),
            (with("vlan = 100", "vlan = 4095"), T1, "vlan"),
            (with("vlan = 100", "vlan = 0"), T1, "vlan"),
            (with("vlan = 100", "vlan = -3"), T1, "vlan"),
            (
                with("vlan = 100", &format!("vlan = 100\n{VXLAN}")),
                T1,
                "vlan",
            ),
            (
                GOOD.to_string() + &TENANT2.replace("vlan = 200", "vlan = 100"),
                "tenant 2",
                "vlan",
            ),
            (
                with("vlan = 100\n", "") + &TENANT2.replace("vlan = 200\n", ""),
                "tenant 2",
                "vlan",
            ),
            (
                with("vlan = 100", &VXLAN.replace("5001", "16777216")),
                T1,
                "vni",
            ),
            (with("vlan = 100", "vni = 5001"), T1, "vni"),
            (
                with("vlan = 100", VXLAN) + &TENANT2.replace("vlan = 200", VXLAN),
                "tenant 2",
                "vni",
            ),
            (
                with("vlan = 100", "vlan = 100\nlocal_vtep = \"192.168.100.1\""),
                T1,
                "local_vtep",
            ),
            (
                with("vlan = 100", "vlan = 100\nremote_vtep = \"192.168.100.2\""),
                T1,
                "remote_vtep",
            ),
            (
                with("vlan = 100", "vlan = 100\nvtep_mac = \"02:00:00:00:00:20\""),
                T1,
                "vtep_mac",
            ),
            (
                with("vlan = 100", &VXLAN.replace("192.168.100.1", "0.0.0.0")),
                T1,
                "local_vtep",
            ),
            (
                with("vlan = 100", &VXLAN.replace("192.168.100.2", "224.0.0.5")),
                T1,
                "remote_vtep",
            ),
            (
                with(
                    "vlan = 100",
                    &VXLAN.replace("192.168.100.2", "192.168.100.1"),
                ),
                T1,
                "remote_vtep",
            ),
            (
                with("vlan = 100", &VXLAN.replace("192.168.100.2", "192.168.100")),
                T1,
                "remote_vtep",
            ),
            (
                with(
                    "vlan = 100",
                    &VXLAN.replace("02:00:00:00:00:20", "02:00:00:00:00"),
                ),
                T1,
                "vtep_mac",
            ),
            (
                with(
                    "vlan = 100",
                    &VXLAN.replace("02:00:00:00:00:20", "03:00:00:00:00:20"),
                ),
                T1,
                "vtep_mac",
            ),
            (
                with("02:00:00:00:00:fe", "02:00:00:00:00:zz"),
                T1,
                "gateway_mac",
            ),
            (
                with("02:00:00:00:00:fe", "+2:00:00:00:00:fe"),
                T1,
                "gateway_mac",
            ),
            (
                with("02:00:00:00:00:fe", "002:00:00:00:00:fe"),
                T1,
                "gateway_mac",
            ),
            (
                with("02:00:00:00:00:fe", "ff:ff:ff:ff:ff:ff"),
                T1,
                "gateway_mac",
            ),
            (
                with("02:00:00:00:00:fe", "00:00:00:00:00:00"),
                T1,
                "gateway_mac",
            ),
            (
                with("02:00:00:00:00:10", "01:00:5e:00:00:01"),
                T1,
                "host_mac",
            ),
            (
                with("02:00:00:00:00:10", "02-00-00-00-00-10"),
                T1,
                "host_mac",
            ),
            (
                with("host_mac = \"02:00:00:00:00:10\"\n", ""),
                T1,
                "host_mac",
            ),
            (
                with("vlan = 100", "vlan = 100\ngateway_ip = \"255.255.255.255\""),
                T1,
                "gateway_ip",
            ),
            (
                with("vlan = 100", "vlan = 100\ngateway_ip = \"0.0.0.0\""),
                T1,
                "gateway_ip",
            ),
            (
                with("vlan = 100", "vlan = 100\ngateway_ip = \"10.1.0.300\""),
                T1,
                "gateway_ip",
            ),
            (
                with("vlan = 100", "vlan = 100\ngateway_ip = \"fd00::1\""),
                T1,
                "gateway_ip",
            ),
            (
                with("vlan = 100", "vlan = 100\ngateway_ip6 = \"ff02::1\""),
                T1,
                "gateway_ip6",
            ),
            (
                with("vlan = 100", "vlan = 100\ngateway_ip6 = \"::\""),
                T1,
                "gateway_ip6",
            ),
            (
                with("vlan = 100", "vlan = 100\nxfrm_if_id = 0"),
                T1,
                "xfrm_if_id",
            ),
            (
                with("vlan = 100", "vlan = 100\nxfrm_if_id = -1"),
                T1,
                "xfrm_if_id",
            ),
            (with("vlan = 100", "vlan = 100\nbogus = 1"), T1, "bogus"),
            // [[manual_sa]]
            (
                with("name = \"east-west\"", "name = \"\""),
                "manual_sa \"\"",
                "name",
            ),
            (
                GOOD.to_string() + &SA2.replace("second", "east-west"),
                SA,
                "name",
            ),
            (with("name = \"east-west\"\n", ""), "manual_sa #1", "name"),
            (with("tenant = 1\nlocal", "tenant = 9\nlocal"), SA, "tenant"),
            (
                with("tenant = 1\nlocal", "tenant = \"1\"\nlocal"),
                SA,
                "tenant",
            ),
            (
                with("local = \"172.24.4.226\"", "local = \"0.0.0.0\""),
                SA,
                "local",
            ),
            (
                with("local = \"172.24.4.226\"", "local = \"224.0.0.1\""),
                SA,
                "local",
            ),
            (
                with("local = \"172.24.4.226\"", "local = \"east\""),
                SA,
                "local",
            ),
            (
                with("peer = \"172.24.4.233\"", "peer = \"2001:db8::1\""),
                SA,
                "peer",
            ),
            (
                with("peer = \"172.24.4.233\"", "peer = \"172.24.4.226\""),
                SA,
                "peer",
            ),
            (
                with("peer = \"172.24.4.233\"", "peer = \"255.255.255.255\""),
                SA,
                "peer",
            ),
            (with("peer = \"172.24.4.233\"\n", ""), SA, "peer"),
            (
                with(
                    "peer = \"172.24.4.233\"",
                    "peer = \"172.24.4.233\"\npeer_mac = \"zz\"",
                ),
                SA,
                "peer_mac",
            ),
            (
                with(
                    "peer = \"172.24.4.233\"",
                    "peer = \"172.24.4.233\"\npeer_mac = \"ff:ff:ff:ff:ff:ff\"",
                ),
                SA,
                "peer_mac",
            ),
            (with("[\"10.1.0.0/24\"]", "[]"), SA, "local_subnets"),
            (
                with("[\"10.1.0.0/24\"]", "[\"10.1.0.0/24\", \"x\"]"),
                SA,
                "local_subnets",
            ),
            (
                with("[\"10.1.0.0/24\"]", "[\"10.1.0.5/24\"]"),
                SA,
                "local_subnets",
            ),
            (
                with("[\"10.1.0.0/24\"]", "[\"10.1.0.0/+24\"]"),
                SA,
                "local_subnets",
            ),
            (
                with("[\"10.1.0.0/24\"]", "\"10.1.0.0/24\""),
                SA,
                "local_subnets",
            ),
            (
                with("\"10.2.0.0/24\"", "\"10.2.0.0/33\""),
                SA,
                "peer_subnets",
            ),
            (
                with("\"10.2.0.0/24\"", "\"2001:db8:2::/64\""),
                SA,
                "peer_subnets",
            ),
            (
                with("[\"10.2.0.0/24\"]", "[\n  \"10.2.0.0/24\",\n  5,\n]"),
                SA,
                "peer_subnets",
            ),
            (
                with("peer_subnets = [\"10.2.0.0/24\"]\n", ""),
                SA,
                "peer_subnets",
            ),
            (with("aes128gcm16", "3des"), SA, "cipher"),
            (with("aes128gcm16", "aes128gcm8"), SA, "cipher"),
            (with("spi_in = 0xf0e0", "spi_in = 7"), SA, "spi_in"),
            (with("spi_in = 0xf0e0", "spi_in = -1"), SA, "spi_in"),
            (
                with("spi_in = 0xf0e0", "spi_in = 0x100000000"),
                SA,
                "spi_in",
            ),
            (
                GOOD.to_string() + &SA2.replace("0xf0e1", "0xf0e0"),
                "manual_sa \"second\"",
                "spi_in",
            ),
            (with("spi_out = 0xe0f0", "spi_out = 0"), SA, "spi_out"),
            (with("spi_out = 0xe0f0\n", ""), SA, "spi_out"),
            (with("key_in = \"11", "key_in = \"zz"), SA, "key_in"),
            (with(key_in, "key_in = \"111\""), SA, "key_in"),
            (with(key_in, ""), SA, "key_in"),
            (
                with(key_in, &format!("{key_in}\nkey_in_file = \"/nonexistent\"")),
                SA,
                "key_in",
            ),
            (with(key_in, "key_in = 1111111111111111"), SA, "key_in"),
            (
                with(key_in, "key_in_file = \"/nonexistent/key\""),
                SA,
                "key_in_file",
            ),
            (with(key_in, "key_in_file = 7"), SA, "key_in_file"),
            (with("key_out = \"2222", "key_out = \"22"), SA, "key_out"),
            (
                with(key_out, &key_in.replace("key_in", "key_out")),
                SA,
                "key_out",
            ),
            (
                with(key_out, "key_out = \"2222222222222222222222"),
                SA,
                "key_out",
            ),
            (
                with(key_out, "key_out_file = \"/nonexistent/key\""),
                SA,
                "key_out_file",
            ),
            (
                with(key_out, &format!("{key_out}\nesn = \"yes\"")),
                SA,
                "esn",
            ),
            (
                with(key_out, &format!("{key_out}\nudp_encap = 1")),
                SA,
                "udp_encap",
            ),
            (
                with(key_out, &format!("{key_out}\nreplay_window = 5000")),
                SA,
                "replay_window",
            ),
            (
                with(key_out, &format!("{key_out}\nreplay_window = -1")),
                SA,
                "replay_window",
            ),
            (with(key_out, &format!("{key_out}\nbogus = 1")), SA, "bogus"),
        ];
        let mut failed = vec![];
        for (text, entry, field) in cases {
            let p = write(&text);
            let file = p.display().to_string();
            let want = format!("{file}: {entry}: {field}: ");
            match load_path(&p) {
                Ok(_) => failed.push(format!("accepted, wanted {want}\n{text}")),
                Err(e) => {
                    let err = e.to_string();
                    if !err.starts_with(&want) {
                        failed.push(format!("{err}\n  should start with {want}"));
                    }
                    for key in ["1111111111", "2222222222", "3333333333"] {
                        assert!(!err.contains(key), "keys never in errors: {err}");
                    }
                }
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    }

    /// Key files readable by others, or owned by another user, are refused with the fix;
    /// mode 0600 is taken.
    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let key = write("1111111111111111111111111111111111111111\n");
        let cfg = GOOD.replace(
            "key_in = \"1111111111111111111111111111111111111111\"",
            &format!("key_in_file = {:?}", key.display().to_string()),
        );
        for (mode, ok) in [
            (0o644, false),
            (0o640, false),
            (0o604, false),
            (0o600, true),
            (0o400, true),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            match load(&cfg) {
                Ok(_) => assert!(ok, "mode {mode:o} accepted"),
                Err(e) => {
                    assert!(!ok, "mode {mode:o} refused: {e}");
                    let m = e.to_string();
                    assert!(m.contains("key_in_file") && m.contains("chmod 600"), "{m}");
                }
            }
        }
        // Owned by someone else (nobody), private: refused too.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // SAFETY: chown of our own temporary file.
        let c = std::ffi::CString::new(key.display().to_string()).unwrap();
        if unsafe { libc::chown(c.as_ptr(), 65534, 65534) } == 0 {
            let Err(e) = load(&cfg) else {
                panic!("a key file owned by nobody was accepted")
            };
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn keys_are_not_in_debug_output() {
        let (c, _) = load(GOOD).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("1111111111"), "{shown}");
    }
}
