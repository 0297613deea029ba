//! The pinned maps of an instance, read like bpftool does: works whether vpnd runs or not.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, Map, MapData, MapType, PerCpuArray, lpm_trie::LpmTrie};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vpn_common::{
    Counter, ReplayWindow,
    maps::{
        AF_INET, AF_INET6, ENCAP_UNTAGGED, ENCAP_VLAN, ENCAP_VXLAN, IfaceConfig, PEER_F_AFXDP,
        PEER_F_KERNEL, POLICY_BYPASS, POLICY_DISCARD, POLICY_KERNEL, POLICY_PROTECT, PeerKey,
        PolicyKeyV4, PolicyKeyV6, PolicyValue, SA_F_KERNEL, SA_F_UDP_ENCAP, SaIn, SaStats,
        TenantEncap, VtepPair, WIRE_F_UNKNOWN_SPI_PASS, WireConfig, names,
    },
};

/// An instance's pin directory.
#[derive(Clone, Debug)]
pub struct Pins {
    pub instance: String,
    pub dir: PathBuf,
}

pub use crate::probe::bpf::is_bpffs;

/// Instances with maps pinned under `root`: directories holding an `SA_IN` pin.
pub fn pinned_instances(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(names::SA_IN).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

impl Pins {
    /// The pins of `instance` under `root`, with clear errors when bpffs or the instance is
    /// missing.
    pub fn open(root: &Path, instance: &str) -> Result<Pins> {
        if !is_bpffs(root) {
            bail!(
                "no bpffs mounted at {} (is the data plane loaded on this node? use --pin-root)",
                root.display()
            );
        }
        let dir = root.join(instance);
        if !dir.join(names::SA_IN).exists() {
            let others = pinned_instances(root);
            bail!(
                "no pinned maps for instance {instance:?} under {} (instances found: {})",
                root.display(),
                if others.is_empty() {
                    "none".to_string()
                } else {
                    others.join(", ")
                }
            );
        }
        Ok(Pins {
            instance: instance.to_string(),
            dir,
        })
    }

    /// Which maps of the contract are pinned.
    pub fn present(&self) -> Vec<(&'static str, bool)> {
        names::ALL
            .iter()
            .map(|n| (*n, self.dir.join(n).exists()))
            .collect()
    }

    pub fn map(&self, name: &str) -> Result<Map> {
        let p = self.dir.join(name);
        let data = MapData::from_pin(&p).with_context(|| format!("opening {}", p.display()))?;
        Map::from_map_data(data).with_context(|| format!("{}", p.display()))
    }

    fn map_data(&self, name: &str) -> Result<MapData> {
        let p = self.dir.join(name);
        MapData::from_pin(&p).with_context(|| format!("opening {}", p.display()))
    }

    /// Type name, kernel id and capacity of a pinned map.
    pub fn info(&self, name: &str) -> Result<(String, u32, u32)> {
        let i = self.map_data(name)?.info()?;
        Ok((map_type_name(i.map_type().ok()), i.id(), i.max_entries()))
    }

    /// `SA_IN`: SPI -> inbound SA, sorted by SPI.
    pub fn sa_in(&self) -> Result<Vec<(u32, SaIn)>> {
        let map = self.map(names::SA_IN)?;
        let m: HashMap<_, u32, SaIn> = HashMap::try_from(&map)?;
        let mut v = m.iter().collect::<Result<Vec<_>, _>>()?;
        v.sort_by_key(|(spi, _)| *spi);
        Ok(v)
    }

    /// `SA_STATS[slot]`, summed over CPUs.
    pub fn sa_stats(&self, slots: &[u32]) -> Result<Vec<SaStats>> {
        let map = self.map(names::SA_STATS)?;
        let m: PerCpuArray<_, SaStats> = PerCpuArray::try_from(&map)?;
        slots
            .iter()
            .map(|slot| {
                let per_cpu = m
                    .get(slot, 0)
                    .with_context(|| format!("SA_STATS[{slot}]"))?;
                Ok(per_cpu.iter().fold(SaStats::default(), |a, s| SaStats {
                    packets: a.packets + s.packets,
                    bytes: a.bytes + s.bytes,
                }))
            })
            .collect()
    }

    /// `REPLAY[slot]`.
    pub fn replay(&self, slots: &[u32]) -> Result<Vec<ReplayWindow>> {
        let map = self.map(names::REPLAY)?;
        let m: Array<_, ReplayWindow> = Array::try_from(&map)?;
        slots
            .iter()
            .map(|slot| m.get(slot, 0).with_context(|| format!("REPLAY[{slot}]")))
            .collect()
    }

    /// Inbound SAs as the maps see them: SPI, slot, tenant, flags, counters, replay window.
    pub fn sa_rows(&self) -> Result<Vec<MapSa>> {
        let sas = self.sa_in()?;
        let slots: Vec<u32> = sas.iter().map(|(_, s)| s.slot).collect();
        let stats = self.sa_stats(&slots)?;
        let replay = self.replay(&slots)?;
        Ok(sas
            .iter()
            .zip(stats)
            .zip(replay)
            .map(|(((spi, sa), st), rw)| MapSa {
                spi: *spi,
                slot: sa.slot,
                tenant: sa.tenant,
                udp_encap: sa.flags & SA_F_UDP_ENCAP != 0,
                flags: sa.flags,
                min_esp_len: sa.min_esp_len,
                packets: st.packets,
                bytes: st.bytes,
                replay_top: rw.top(),
                replay_window: rw.window(),
                esn: rw.esn(),
            })
            .collect())
    }

    /// Every entry of `POLICY_V4` and `POLICY_V6`, by tenant then prefix.
    pub fn policies(&self) -> Result<Vec<PolicyRow>> {
        let mut out = Vec::new();
        let map = self.map(names::POLICY_V4)?;
        let m: LpmTrie<_, PolicyKeyV4, PolicyValue> = LpmTrie::try_from(&map)?;
        for e in m.iter() {
            let (k, v) = e?;
            let d = k.data();
            out.push(PolicyRow::new(
                u32::from_be_bytes(d.tenant_be),
                Ipv4Addr::from(d.addr).to_string(),
                k.prefix_len().saturating_sub(32),
                v,
            ));
        }
        let map = self.map(names::POLICY_V6)?;
        let m: LpmTrie<_, PolicyKeyV6, PolicyValue> = LpmTrie::try_from(&map)?;
        for e in m.iter() {
            let (k, v) = e?;
            let d = k.data();
            out.push(PolicyRow::new(
                u32::from_be_bytes(d.tenant_be),
                Ipv6Addr::from(d.addr).to_string(),
                k.prefix_len().saturating_sub(32),
                v,
            ));
        }
        out.sort_by(|a, b| {
            (a.tenant, a.family.as_str(), &a.prefix).cmp(&(b.tenant, b.family.as_str(), &b.prefix))
        });
        Ok(out)
    }

    fn u32_map(&self, name: &str) -> Result<Vec<(u32, u32)>> {
        let map = self.map(name)?;
        let m: HashMap<_, u32, u32> = HashMap::try_from(&map)?;
        let mut v = m.iter().collect::<Result<Vec<_>, _>>()?;
        v.sort();
        Ok(v)
    }

    fn encaps(&self) -> Result<Vec<(u32, TenantEncap)>> {
        let map = self.map(names::TENANT_ENCAP)?;
        let m: HashMap<_, u32, TenantEncap> = HashMap::try_from(&map)?;
        let mut v = m.iter().collect::<Result<Vec<_>, _>>()?;
        v.sort_by_key(|(t, _)| *t);
        Ok(v)
    }

    fn ifaces(&self) -> Result<Vec<(u32, IfaceConfig)>> {
        let map = self.map(names::IFACES)?;
        let m: HashMap<_, u32, IfaceConfig> = HashMap::try_from(&map)?;
        let mut v = m.iter().collect::<Result<Vec<_>, _>>()?;
        v.sort_by_key(|(t, _)| *t);
        Ok(v)
    }

    /// Tenants from `TENANT_BY_VLAN`, `TENANT_BY_VNI`, `TENANT_ENCAP` and `IFACES`.
    pub fn tenants(&self) -> Result<Tenants> {
        let vlans = self.u32_map(names::TENANT_BY_VLAN)?;
        let vnis = self.u32_map(names::TENANT_BY_VNI)?;
        let encaps = self.encaps()?;
        let ifaces = self.ifaces()?;
        let mut ids: Vec<u32> = vlans
            .iter()
            .chain(vnis.iter())
            .map(|(_, t)| *t)
            .chain(encaps.iter().map(|(t, _)| *t))
            .chain(
                ifaces
                    .iter()
                    .map(|(_, c)| c.default_tenant)
                    .filter(|t| *t != 0),
            )
            .collect();
        ids.sort();
        ids.dedup();
        let tenants = ids
            .into_iter()
            .map(|id| {
                let enc = encaps.iter().find(|(t, _)| *t == id).map(|(_, e)| e);
                TenantRow {
                    tenant: id,
                    vlans: vlans
                        .iter()
                        .filter(|(_, t)| *t == id)
                        .map(|(v, _)| *v)
                        .collect(),
                    vnis: vnis
                        .iter()
                        .filter(|(_, t)| *t == id)
                        .map(|(v, _)| *v)
                        .collect(),
                    untagged_on: ifaces
                        .iter()
                        .filter(|(_, c)| c.default_tenant == id)
                        .map(|(i, _)| *i)
                        .collect(),
                    encap: enc.map(|e| encap_kind(e.kind).to_string()),
                    ifindex: enc.map(|e| e.ifindex),
                    encap_vlan: enc.filter(|e| e.kind == ENCAP_VLAN).map(|e| e.vlan_id),
                    encap_vni: enc.filter(|e| e.kind == ENCAP_VXLAN).map(|e| e.vni),
                    vtep: enc
                        .filter(|e| e.kind == ENCAP_VXLAN)
                        .map(|e| addr_string(e.vtep_family, &e.vtep_addr)),
                    vtep_mac: enc
                        .filter(|e| e.kind == ENCAP_VXLAN)
                        .map(|e| mac_string(&e.vtep_mac)),
                }
            })
            .collect();
        let interfaces = ifaces
            .into_iter()
            .map(|(ifindex, c)| IfaceRow {
                ifindex,
                default_tenant: c.default_tenant,
                xsk_base: c.xsk_base,
            })
            .collect();
        Ok(Tenants {
            tenants,
            interfaces,
        })
    }

    /// Every named counter of `WIRE_STATS` or `TENANT_STATS`, summed over CPUs.
    pub fn counters(&self, name: &str) -> Result<Vec<(Counter, u64)>> {
        let map = self.map(name)?;
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(&map)?;
        Counter::all()
            .map(|c| {
                let v = m
                    .get(&c.index(), 0)
                    .map_err(|e| anyhow!("{name}: counter {}: {e}", c.name()))?;
                Ok((c, v.iter().sum()))
            })
            .collect()
    }

    /// Programs loaded that use this instance's `SA_IN` map, and their XDP links.
    pub fn programs(&self) -> Result<Vec<ProgramRow>> {
        let id = self.map_data(names::SA_IN)?.info()?.id();
        let ids_of = |n: &str| -> Option<u32> {
            self.map_data(n)
                .ok()
                .and_then(|d| d.info().ok())
                .map(|i| i.id())
        };
        let tenant_map = ids_of(names::POLICY_V4);
        let links: Vec<u32> = aya::programs::loaded_links()
            .filter_map(|l| l.ok())
            .map(|l| l.program_id())
            .collect();
        let mut out = Vec::new();
        for p in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
            let Ok(Some(maps)) = p.map_ids() else {
                continue;
            };
            if !maps.contains(&id) && !tenant_map.is_some_and(|t| maps.contains(&t)) {
                continue;
            }
            out.push(ProgramRow {
                name: p.name_as_str().unwrap_or("?").to_string(),
                id: p.id(),
                links: links.iter().filter(|l| **l == p.id()).count() as u32,
            });
        }
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    /// Facts about the maps for `vpnctl status`.
    pub fn facts(&self) -> MapFacts {
        let present = self.present();
        let sa_in = self.sa_in().map(|v| v.len()).ok();
        let policies = self.policies().ok();
        let tenants = self.tenants().ok();
        let programs = self.programs().unwrap_or_default();
        MapFacts {
            instance: self.instance.clone(),
            pin_dir: self.dir.display().to_string(),
            pins_present: present.iter().filter(|(_, p)| *p).count(),
            pins_missing: present
                .iter()
                .filter(|(_, p)| !*p)
                .map(|(n, _)| n.to_string())
                .collect(),
            inbound_sas: sa_in,
            policies: policies.as_ref().map(|p| p.len()),
            tenants: tenants.as_ref().map(|t| t.tenants.len()),
            attached: programs.iter().any(|p| p.links > 0),
            programs,
        }
    }

    /// Every entry of a map of the contract, decoded by type, with the map's shape.
    /// Arrays show only non-zero entries unless `all`.
    pub fn dump(&self, name: &str, all: bool) -> Result<Value> {
        let name = names::ALL
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| anyhow!("unknown map {name:?}; maps: {}", names::ALL.join(", ")))?;
        let info = self.map_data(name)?.info()?;
        let map = self.map(name)?;
        let mut note = None;
        let entries: Vec<Value> = match name {
            names::SA_IN => self
                .sa_in()?
                .into_iter()
                .map(|(spi, s)| {
                    json!({"spi": spi, "spi_hex": crate::ctl::table::spi(spi), "slot": s.slot,
                    "tenant": s.tenant, "flags": s.flags,
                    "udp_encap": s.flags & SA_F_UDP_ENCAP != 0,
                    "kernel": s.flags & SA_F_KERNEL != 0, "min_esp_len": s.min_esp_len})
                })
                .collect(),
            names::REPLAY => {
                let m: Array<_, ReplayWindow> = Array::try_from(&map)?;
                let mut v = Vec::new();
                for (slot, w) in m.iter().enumerate() {
                    let w = w?;
                    if all || w.top() != 0 || w.window() != 0 {
                        v.push(json!({"slot": slot, "top": w.top(), "window": w.window(),
                            "esn": w.esn()}));
                    }
                }
                v
            }
            names::SA_STATS => {
                let m: PerCpuArray<_, SaStats> = PerCpuArray::try_from(&map)?;
                let mut v = Vec::new();
                for (slot, per_cpu) in m.iter().enumerate() {
                    let per_cpu = per_cpu?;
                    let (p, b) = per_cpu
                        .iter()
                        .fold((0u64, 0u64), |(p, b), s| (p + s.packets, b + s.bytes));
                    if all || p != 0 || b != 0 {
                        v.push(json!({"slot": slot, "packets": p, "bytes": b,
                            "per_cpu": per_cpu.iter().map(|s| json!({"packets": s.packets,
                            "bytes": s.bytes})).collect::<Vec<_>>()}));
                    }
                }
                v
            }
            names::WIRE_STATS | names::TENANT_STATS => {
                let m: PerCpuArray<_, u64> = PerCpuArray::try_from(&map)?;
                let mut v = Vec::new();
                for (i, per_cpu) in m.iter().enumerate() {
                    let per_cpu = per_cpu?;
                    let total: u64 = per_cpu.iter().sum();
                    let counter = Counter::from_index(i as u32);
                    if all || total != 0 {
                        v.push(json!({"index": i, "name": counter.map(|c| c.name()),
                            "value": total, "per_cpu": per_cpu.iter().collect::<Vec<_>>()}));
                    }
                }
                v
            }
            names::WIRE_CONFIG => {
                let m: Array<_, WireConfig> = Array::try_from(&map)?;
                m.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let c = c?;
                        Ok(json!({"index": i, "flags": c.flags,
                            "unknown_spi_pass": c.flags & WIRE_F_UNKNOWN_SPI_PASS != 0}))
                    })
                    .collect::<Result<_>>()?
            }
            names::PEERS => {
                let m: HashMap<_, PeerKey, u32> = HashMap::try_from(&map)?;
                let mut v = m
                    .iter()
                    .map(|e| {
                        let (k, val) = e?;
                        Ok((addr_string(k.family, &k.addr), val))
                    })
                    .collect::<Result<Vec<_>>>()?;
                v.sort();
                v.into_iter()
                    .map(|(a, val)| json!({"peer": a, "value": val, "flags": peer_flag_names(val)}))
                    .collect()
            }
            names::XSKS | names::TENANT_XSKS => {
                note = Some(
                    "AF_XDP socket map: the kernel does not return its values (socket fds) to \
                     user space",
                );
                Vec::new()
            }
            names::TENANT_BY_VLAN => self
                .u32_map(name)?
                .into_iter()
                .map(|(k, t)| json!({"vlan": k, "tenant": t}))
                .collect(),
            names::TENANT_BY_VNI => self
                .u32_map(name)?
                .into_iter()
                .map(|(k, t)| json!({"vni": k, "tenant": t}))
                .collect(),
            names::IFACES => self
                .ifaces()?
                .into_iter()
                .map(|(i, c)| {
                    json!({"ifindex": i, "default_tenant": c.default_tenant,
                    "xsk_base": c.xsk_base})
                })
                .collect(),
            names::POLICY_V4 | names::POLICY_V6 => self
                .policies()?
                .into_iter()
                .filter(|p| {
                    p.family
                        == if name == names::POLICY_V4 {
                            "ipv4"
                        } else {
                            "ipv6"
                        }
                })
                .map(|p| serde_json::to_value(p).expect("plain struct"))
                .collect(),
            names::TENANT_ENCAP => self
                .encaps()?
                .into_iter()
                .map(|(t, e)| {
                    json!({"tenant": t, "kind": encap_kind(e.kind), "ifindex": e.ifindex,
                    "vlan_id": e.vlan_id, "vni": e.vni,
                    "vtep": if e.kind == ENCAP_VXLAN {
                        Some(addr_string(e.vtep_family, &e.vtep_addr)) } else { None },
                    "vtep_mac": mac_string(&e.vtep_mac)})
                })
                .collect(),
            names::VXLAN_VTEPS => {
                let m: HashMap<_, u32, VtepPair> = HashMap::try_from(&map)?;
                let mut v = m.iter().collect::<Result<Vec<_>, _>>()?;
                v.sort_by_key(|(vni, _)| *vni);
                v.into_iter()
                    .map(|(vni, p)| {
                        json!({"vni": vni, "local_vtep": addr_string(p.family, &p.local),
                        "remote_vtep": addr_string(p.family, &p.remote)})
                    })
                    .collect()
            }
            _ => bail!("no decoder for {name}"),
        };
        let mut v = json!({
            "map": name,
            "type": map_type_name(info.map_type().ok()),
            "key_size": info.key_size(),
            "value_size": info.value_size(),
            "max_entries": info.max_entries(),
            "entries": entries,
        });
        if let Some(n) = note {
            v["note"] = json!(n);
        }
        Ok(v)
    }
}

fn map_type_name(t: Option<MapType>) -> String {
    match t {
        Some(t) => format!("{t:?}"),
        None => "unknown".into(),
    }
}

pub fn encap_kind(k: u32) -> &'static str {
    match k {
        ENCAP_UNTAGGED => "untagged",
        ENCAP_VLAN => "vlan",
        ENCAP_VXLAN => "vxlan",
        _ => "unknown",
    }
}

/// A `PEERS` value by name: `afxdp` (`PEER_F_AFXDP`), `kernel` (`PEER_F_KERNEL`), and any
/// other bit as hex.
pub fn peer_flag_names(flags: u32) -> Vec<String> {
    let mut v = Vec::new();
    if flags & PEER_F_AFXDP != 0 {
        v.push("afxdp".to_string());
    }
    if flags & PEER_F_KERNEL != 0 {
        v.push("kernel".to_string());
    }
    let rest = flags & !(PEER_F_AFXDP | PEER_F_KERNEL);
    if rest != 0 {
        v.push(format!("{rest:#x}"));
    }
    v
}

pub fn addr_string(family: u32, a: &[u8; 16]) -> String {
    match family {
        AF_INET => Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string(),
        AF_INET6 => Ipv6Addr::from(*a).to_string(),
        f => format!("family {f}"),
    }
}

pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        POLICY_PROTECT => "protect",
        POLICY_BYPASS => "bypass",
        POLICY_DISCARD => "discard",
        POLICY_KERNEL => "kernel",
        _ => "unknown",
    }
}

/// An inbound SA as the maps hold it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapSa {
    pub spi: u32,
    pub slot: u32,
    pub tenant: u32,
    pub udp_encap: bool,
    pub flags: u32,
    pub min_esp_len: u16,
    pub packets: u64,
    pub bytes: u64,
    pub replay_top: u64,
    pub replay_window: u32,
    pub esn: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRow {
    pub family: String,
    pub tenant: u32,
    /// "10.2.0.0/24".
    pub prefix: String,
    pub action: String,
    /// Outbound SA slot (meaningful for `protect`).
    pub sa_slot: u32,
}

impl PolicyRow {
    fn new(tenant: u32, addr: String, plen: u32, v: PolicyValue) -> PolicyRow {
        PolicyRow {
            family: if addr.contains(':') { "ipv6" } else { "ipv4" }.into(),
            tenant,
            prefix: format!("{addr}/{plen}"),
            action: action_name(v.action).into(),
            sa_slot: v.sa_slot,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantRow {
    pub tenant: u32,
    /// 802.1Q VLAN ids mapped to this tenant (`TENANT_BY_VLAN`).
    pub vlans: Vec<u32>,
    /// VXLAN VNIs mapped to this tenant (`TENANT_BY_VNI`).
    pub vnis: Vec<u32>,
    /// Interfaces (ifindex) whose untagged frames belong to this tenant (`IFACES`).
    pub untagged_on: Vec<u32>,
    /// From `TENANT_ENCAP`: how decrypted traffic goes back.
    pub encap: Option<String>,
    pub ifindex: Option<u32>,
    pub encap_vlan: Option<u16>,
    pub encap_vni: Option<u32>,
    pub vtep: Option<String>,
    pub vtep_mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IfaceRow {
    pub ifindex: u32,
    pub default_tenant: u32,
    pub xsk_base: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenants {
    pub tenants: Vec<TenantRow>,
    pub interfaces: Vec<IfaceRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramRow {
    pub name: String,
    pub id: u32,
    /// bpf links of this program (XDP attachments made through bpf_link).
    pub links: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapFacts {
    pub instance: String,
    pub pin_dir: String,
    pub pins_present: usize,
    pub pins_missing: Vec<String>,
    pub inbound_sas: Option<usize>,
    pub policies: Option<usize>,
    pub tenants: Option<usize>,
    pub programs: Vec<ProgramRow>,
    pub attached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_flags_by_name() {
        assert_eq!(peer_flag_names(PEER_F_AFXDP), ["afxdp"]);
        assert_eq!(peer_flag_names(PEER_F_KERNEL), ["kernel"]);
        assert_eq!(
            peer_flag_names(PEER_F_AFXDP | PEER_F_KERNEL | 0x10),
            ["afxdp", "kernel", "0x10"]
        );
        assert!(peer_flag_names(0).is_empty());
        assert_eq!(action_name(POLICY_KERNEL), "kernel");
    }
}
