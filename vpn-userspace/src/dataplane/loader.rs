//! Loading the XDP object, pinning its maps under `/sys/fs/bpf/<instance>/`, attaching, and
//! typed access to every map of the contract in `vpn_common::maps`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, MapData, PerCpuArray, XskMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{Xdp, XdpMode},
};
use vpn_common::{
    Counter, ReplayWindow,
    maps::{
        AF_INET, AF_INET6, DEFAULT_SA_IN_ENTRIES, DEFAULT_SA_SLOTS, IfaceConfig, PEER_F_AFXDP,
        PIN_ROOT, PeerKey, PolicyKeyV4, PolicyKeyV6, PolicyValue, SaIn, SaStats, TenantEncap,
        VtepPair, WireConfig, names, policy_prefix_len, programs,
    },
};

use super::{Carrier, CarrierChoice, Chosen, EBPF_OBJECT, ReplayTable};

/// Which program's counters.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    Wire,
    Tenant,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Name of the instance: maps are pinned under `/sys/fs/bpf/<instance>/`.
    pub instance: String,
    /// SA slots (replay windows and per-SA counters).
    pub sa_slots: u32,
    /// Capacity of the inbound SPI map.
    pub sa_in_entries: u32,
    /// Remove the pins when the `Dataplane` is dropped (vpnd's `--keep-pinned` turns it off).
    pub unpin_on_drop: bool,
    /// How the programs hand the metadata to the workers (default: from the kernel's probe).
    pub carrier: CarrierChoice,
}

impl LoadOptions {
    pub fn new(instance: impl Into<String>) -> LoadOptions {
        LoadOptions {
            instance: instance.into(),
            sa_slots: DEFAULT_SA_SLOTS,
            sa_in_entries: DEFAULT_SA_IN_ENTRIES,
            unpin_on_drop: true,
            carrier: CarrierChoice::Auto,
        }
    }
}

pub struct Dataplane {
    // An mmap keeps the map alive on its own, so workers may hold the table past this.
    replay: std::sync::Arc<ReplayTable>,
    ebpf: Ebpf,
    pin_dir: PathBuf,
    unpin_on_drop: bool,
    adopted: bool,
    carrier: Chosen,
}

fn validate_instance(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("instance name {name:?} must be 1-64 characters of [A-Za-z0-9_-]");
    }
    Ok(())
}

impl Dataplane {
    /// Loads the programs (not attached yet) and pins their maps. Existing pins of the same
    /// instance are adopted: the counters survive a restart, the SA entries and replay
    /// windows do not (the new daemon clears them and installs its SAs afresh; a manual SA's
    /// sequence numbers and replay mark come back from its state files, `crate::seqstate`).
    pub fn load(opts: &LoadOptions) -> Result<Dataplane> {
        validate_instance(&opts.instance)?;
        if opts.sa_slots == 0 || opts.sa_in_entries == 0 {
            bail!("sa_slots and sa_in_entries must be positive");
        }
        let pin_dir = Path::new(PIN_ROOT).join(&opts.instance);
        let adopting = pin_dir.exists();
        pin_directory(&pin_dir)?;
        let adopting = adopting && pin_dir.join(names::SA_IN).exists();
        let loaded = Self::load_pinned(opts, &pin_dir).map(|mut d| {
            d.adopted = adopting;
            d
        });
        if loaded.is_err() && !adopting {
            // Maps may have been pinned before the verifier said no: leave nothing behind.
            let _ = remove_pins(&pin_dir);
        }
        loaded
    }

    fn load_pinned(opts: &LoadOptions, pin_dir: &Path) -> Result<Dataplane> {
        let carrier = super::choose_carrier(opts.carrier);
        if carrier.carrier == Carrier::Meta
            && let Err(r) = crate::probe::bpf::xdp_adjust_meta()
            && crate::probe::bpf::emulated_refusal("adjust_meta")
        {
            // What the verifier of such a kernel answers (see `EMULATE_REFUSE_ENV`).
            bail!(
                "the verifier rejected {} built for the {} carrier ({}): {r}",
                programs::ESP_INGRESS,
                carrier.carrier,
                carrier.reason
            );
        }
        let global = carrier.carrier.global();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(names::REPLAY, opts.sa_slots)
            .map_max_entries(names::SA_STATS, opts.sa_slots)
            .map_max_entries(names::SA_IN, opts.sa_in_entries)
            .override_global(vpn_common::meta::CARRIER_GLOBAL, &global, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("loading the XDP object{}", kernel_hints()))
            })?;
        for name in [
            programs::ESP_INGRESS,
            programs::TENANT_INGRESS,
            programs::NOOP,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| {
                format!(
                    "the verifier rejected {name} built for the {} carrier ({}){}",
                    carrier.carrier,
                    carrier.reason,
                    kernel_hints()
                )
            })?;
        }
        let replay_map = ebpf.map(names::REPLAY).context("REPLAY map missing")?;
        let Map::Array(data) = replay_map else {
            bail!("REPLAY is not an array");
        };
        let replay = ReplayTable::map(&data.fd().as_fd(), opts.sa_slots)?;
        Ok(Dataplane {
            replay: std::sync::Arc::new(replay),
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            unpin_on_drop: opts.unpin_on_drop,
            adopted: false,
            carrier,
        })
    }

    /// The metadata carrier the programs were loaded with, and why.
    pub fn carrier(&self) -> &Chosen {
        &self.carrier
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    fn attach(&mut self, name: &str, iface: &str, mode: XdpMode) -> Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        prog.attach(iface, mode)
            .with_context(|| format!("attaching {name} to {iface} ({mode:?})"))?;
        Ok(())
    }

    /// Attaches `esp_ingress` to the wire-side interface. Detached when `self` drops.
    pub fn attach_wire(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        self.attach(programs::ESP_INGRESS, iface, mode)
    }

    /// Attaches `tenant_ingress` to a tenant-side interface. Detached when `self` drops.
    pub fn attach_tenant(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        self.attach(programs::TENANT_INGRESS, iface, mode)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    pub fn replay(&self) -> &ReplayTable {
        &self.replay
    }

    /// The replay table for a worker thread.
    pub fn replay_shared(&self) -> std::sync::Arc<ReplayTable> {
        self.replay.clone()
    }

    /// Installs an inbound SA: its replay window first, then the SPI that makes it reachable.
    pub fn add_sa_in(&mut self, spi: u32, sa: SaIn, window: ReplayWindow) -> Result<()> {
        if spi <= 255 {
            bail!("SPI {spi} is reserved (RFC 4303 2.1: 1-255 are reserved, 0 is invalid)");
        }
        self.replay.init(sa.slot, window)?;
        let mut m: HashMap<_, u32, SaIn> = HashMap::try_from(self.map_mut(names::SA_IN)?)?;
        m.insert(spi, sa, 0)
            .with_context(|| format!("inserting SPI {spi:#010x} (SA_IN full?)"))?;
        Ok(())
    }

    /// Removes an inbound SPI: from then on its packets are dropped as `UnknownSpi` (or
    /// passed, with `WIRE_F_UNKNOWN_SPI_PASS`). Errors if the SPI was not there.
    pub fn remove_sa_in(&mut self, spi: u32) -> Result<()> {
        let mut m: HashMap<_, u32, SaIn> = HashMap::try_from(self.map_mut(names::SA_IN)?)?;
        m.remove(&spi)
            .with_context(|| format!("removing SPI {spi:#010x}"))?;
        Ok(())
    }

    /// After adopting the pins of a previous run: forgets its SAs, policies and peers (their
    /// keys and worker state died with it) and keeps the counters. Returns how many entries
    /// went.
    pub fn clear_sa_state(&mut self) -> Result<usize> {
        let mut n = 0;
        {
            let mut m: HashMap<_, u32, SaIn> = HashMap::try_from(self.map_mut(names::SA_IN)?)?;
            let keys: Vec<u32> = m.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                n += usize::from(m.remove(&k).is_ok());
            }
        }
        {
            let mut m: HashMap<_, PeerKey, u32> = HashMap::try_from(self.map_mut(names::PEERS)?)?;
            let keys: Vec<PeerKey> = m.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                n += usize::from(m.remove(&k).is_ok());
            }
        }
        {
            let mut m: LpmTrie<_, PolicyKeyV4, PolicyValue> =
                LpmTrie::try_from(self.map_mut(names::POLICY_V4)?)?;
            let keys: Vec<Key<PolicyKeyV4>> = m.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                n += usize::from(m.remove(&k).is_ok());
            }
        }
        {
            let mut m: LpmTrie<_, PolicyKeyV6, PolicyValue> =
                LpmTrie::try_from(self.map_mut(names::POLICY_V6)?)?;
            let keys: Vec<Key<PolicyKeyV6>> = m.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                n += usize::from(m.remove(&k).is_ok());
            }
        }
        Ok(n)
    }

    /// Whether `load` found pins of a previous run.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The inbound SA of an SPI, if installed.
    pub fn sa_in(&self, spi: u32) -> Result<Option<SaIn>> {
        let m: HashMap<_, u32, SaIn> = HashMap::try_from(self.map(names::SA_IN)?)?;
        not_found_as_none(m.get(&spi, 0))
    }

    /// Removes the IPv4 policy of exactly (tenant, prefix/plen). Returns whether it existed.
    pub fn remove_policy_v4(&mut self, tenant: u32, prefix: Ipv4Addr, plen: u8) -> Result<bool> {
        if plen > 32 {
            bail!("IPv4 prefix length {plen} > 32");
        }
        let addr = mask_v4(prefix, plen);
        let mut m: LpmTrie<_, PolicyKeyV4, PolicyValue> =
            LpmTrie::try_from(self.map_mut(names::POLICY_V4)?)?;
        let key = Key::new(
            policy_prefix_len(plen as u32),
            PolicyKeyV4 {
                tenant_be: tenant.to_be_bytes(),
                addr: addr.octets(),
            },
        );
        not_found_as_false(m.remove(&key))
            .with_context(|| format!("removing policy tenant {tenant} {addr}/{plen}"))
    }

    /// Removes the IPv6 policy of exactly (tenant, prefix/plen). Returns whether it existed.
    pub fn remove_policy_v6(&mut self, tenant: u32, prefix: Ipv6Addr, plen: u8) -> Result<bool> {
        if plen > 128 {
            bail!("IPv6 prefix length {plen} > 128");
        }
        let addr = mask_v6(prefix, plen);
        let mut m: LpmTrie<_, PolicyKeyV6, PolicyValue> =
            LpmTrie::try_from(self.map_mut(names::POLICY_V6)?)?;
        let key = Key::new(
            policy_prefix_len(plen as u32),
            PolicyKeyV6 {
                tenant_be: tenant.to_be_bytes(),
                addr: addr.octets(),
            },
        );
        not_found_as_false(m.remove(&key))
            .with_context(|| format!("removing policy tenant {tenant} {addr}/{plen}"))
    }

    /// The policy the tenant-side program finds for `dst` of `tenant` (longest prefix match).
    pub fn lookup_policy_v4(&self, tenant: u32, dst: Ipv4Addr) -> Result<Option<PolicyValue>> {
        let m: LpmTrie<_, PolicyKeyV4, PolicyValue> =
            LpmTrie::try_from(self.map(names::POLICY_V4)?)?;
        let key = Key::new(
            policy_prefix_len(32),
            PolicyKeyV4 {
                tenant_be: tenant.to_be_bytes(),
                addr: dst.octets(),
            },
        );
        not_found_as_none(m.get(&key, 0))
    }

    /// As `lookup_policy_v4`, for IPv6.
    pub fn lookup_policy_v6(&self, tenant: u32, dst: Ipv6Addr) -> Result<Option<PolicyValue>> {
        let m: LpmTrie<_, PolicyKeyV6, PolicyValue> =
            LpmTrie::try_from(self.map(names::POLICY_V6)?)?;
        let key = Key::new(
            policy_prefix_len(128),
            PolicyKeyV6 {
                tenant_be: tenant.to_be_bytes(),
                addr: dst.octets(),
            },
        );
        not_found_as_none(m.get(&key, 0))
    }

    pub fn set_policy_v4(
        &mut self,
        tenant: u32,
        prefix: Ipv4Addr,
        plen: u8,
        value: PolicyValue,
    ) -> Result<()> {
        if plen > 32 {
            bail!("IPv4 prefix length {plen} > 32");
        }
        let addr = mask_v4(prefix, plen);
        let mut m: LpmTrie<_, PolicyKeyV4, PolicyValue> =
            LpmTrie::try_from(self.map_mut(names::POLICY_V4)?)?;
        let key = Key::new(
            policy_prefix_len(plen as u32),
            PolicyKeyV4 {
                tenant_be: tenant.to_be_bytes(),
                addr: addr.octets(),
            },
        );
        m.insert(&key, value, 0)
            .with_context(|| format!("policy tenant {tenant} {addr}/{plen}"))?;
        Ok(())
    }

    pub fn set_policy_v6(
        &mut self,
        tenant: u32,
        prefix: Ipv6Addr,
        plen: u8,
        value: PolicyValue,
    ) -> Result<()> {
        if plen > 128 {
            bail!("IPv6 prefix length {plen} > 128");
        }
        let addr = mask_v6(prefix, plen);
        let mut m: LpmTrie<_, PolicyKeyV6, PolicyValue> =
            LpmTrie::try_from(self.map_mut(names::POLICY_V6)?)?;
        let key = Key::new(
            policy_prefix_len(plen as u32),
            PolicyKeyV6 {
                tenant_be: tenant.to_be_bytes(),
                addr: addr.octets(),
            },
        );
        m.insert(&key, value, 0)
            .with_context(|| format!("policy tenant {tenant} {addr}/{plen}"))?;
        Ok(())
    }

    pub fn set_vlan_tenant(&mut self, vlan_id: u16, tenant: u32) -> Result<()> {
        if vlan_id == 0 || vlan_id >= 4095 {
            bail!("VLAN id {vlan_id} out of range 1-4094");
        }
        let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(names::TENANT_BY_VLAN)?)?;
        m.insert(vlan_id as u32, tenant, 0)?;
        Ok(())
    }

    /// Maps a VNI to a tenant, for VXLAN frames between exactly these VTEPs: the pair goes in
    /// first (`VXLAN_VTEPS`), so the program never finds the tenant without it.
    pub fn set_vni_tenant(&mut self, vni: u32, tenant: u32, vteps: VtepPair) -> Result<()> {
        if vni >= 1 << 24 {
            bail!("VNI {vni} does not fit 24 bits");
        }
        if vteps.family != AF_INET && vteps.family != AF_INET6 {
            bail!("VNI {vni}: VTEP address family {} unknown", vteps.family);
        }
        if vteps.local == vteps.remote {
            bail!("VNI {vni}: the local and remote VTEPs are the same address");
        }
        self.set_vni_vteps(vni, vteps)?;
        let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(names::TENANT_BY_VNI)?)?;
        m.insert(vni, tenant, 0)
            .with_context(|| format!("VNI {vni} -> tenant {tenant}"))?;
        Ok(())
    }

    /// Sets the VTEP pair of a VNI alone (a VTEP moved; tests).
    pub fn set_vni_vteps(&mut self, vni: u32, vteps: VtepPair) -> Result<()> {
        let mut m: HashMap<_, u32, VtepPair> =
            HashMap::try_from(self.map_mut(names::VXLAN_VTEPS)?)?;
        m.insert(vni, vteps, 0)
            .with_context(|| format!("VTEPs of VNI {vni}"))?;
        Ok(())
    }

    /// Removes the VTEP pair of a VNI: its frames are dropped (`vxlan_no_vtep`) while the VNI
    /// still names a tenant. Returns whether there was one.
    pub fn remove_vni_vteps(&mut self, vni: u32) -> Result<bool> {
        let mut m: HashMap<_, u32, VtepPair> =
            HashMap::try_from(self.map_mut(names::VXLAN_VTEPS)?)?;
        not_found_as_false(m.remove(&vni))
    }

    pub fn set_iface(&mut self, ifindex: u32, cfg: IfaceConfig) -> Result<()> {
        let mut m: HashMap<_, u32, IfaceConfig> = HashMap::try_from(self.map_mut(names::IFACES)?)?;
        m.insert(ifindex, cfg, 0)?;
        Ok(())
    }

    pub fn set_tenant_encap(&mut self, tenant: u32, encap: TenantEncap) -> Result<()> {
        let mut m: HashMap<_, u32, TenantEncap> =
            HashMap::try_from(self.map_mut(names::TENANT_ENCAP)?)?;
        m.insert(tenant, encap, 0)?;
        Ok(())
    }

    pub fn set_wire_config(&mut self, cfg: WireConfig) -> Result<()> {
        let mut m: Array<_, WireConfig> = Array::try_from(self.map_mut(names::WIRE_CONFIG)?)?;
        m.set(0, cfg, 0)?;
        Ok(())
    }

    /// Lists a peer whose UDP/ESP fragments go to the worker for reassembly
    /// (`PEER_F_AFXDP`; replaces any flags the entry had).
    pub fn add_peer(&mut self, peer: PeerKey) -> Result<()> {
        self.set_peer_flags(peer, PEER_F_AFXDP)
    }

    /// Sets a peer's `PEERS` flags (`PEER_F_AFXDP`, `PEER_F_KERNEL`), inserting the entry or
    /// overwriting the flags it had. A peer with only `PEER_F_KERNEL` has its outer fragments
    /// left to the stack.
    pub fn set_peer_flags(&mut self, peer: PeerKey, flags: u32) -> Result<()> {
        let mut m: HashMap<_, PeerKey, u32> = HashMap::try_from(self.map_mut(names::PEERS)?)?;
        m.insert(peer, flags, 0)
            .context("inserting a peer (PEERS full?)")?;
        Ok(())
    }

    /// Forgets a peer (its fragments are no longer handed to the worker). Returns whether it
    /// was known.
    pub fn remove_peer(&mut self, peer: PeerKey) -> Result<bool> {
        let mut m: HashMap<_, PeerKey, u32> = HashMap::try_from(self.map_mut(names::PEERS)?)?;
        not_found_as_false(m.remove(&peer)).context("removing a peer")
    }

    /// Zeroes the kernel's per-SA counters of `slot` (on every CPU), for a slot given to a
    /// new SA.
    pub fn reset_sa_stats(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut m: PerCpuArray<_, SaStats> = PerCpuArray::try_from(self.map_mut(names::SA_STATS)?)?;
        let zero = aya::maps::PerCpuValues::try_from(vec![SaStats::default(); cpus])?;
        m.set(slot, zero, 0)
            .with_context(|| format!("SA_STATS[{slot}]"))?;
        Ok(())
    }

    /// Registers a wire-side AF_XDP socket for rx queue `queue`.
    pub fn set_wire_xsk(&mut self, queue: u32, fd: impl AsRawFd) -> Result<()> {
        let mut m: XskMap<_> = XskMap::try_from(self.map_mut(names::XSKS)?)?;
        m.set(queue, fd, 0)
            .with_context(|| format!("XSKS[{queue}]"))?;
        Ok(())
    }

    /// Removes the wire-side socket of rx queue `queue`.
    pub fn unset_wire_xsk(&mut self, queue: u32) -> Result<()> {
        let mut m: XskMap<_> = XskMap::try_from(self.map_mut(names::XSKS)?)?;
        m.unset(queue).with_context(|| format!("XSKS[{queue}]"))?;
        Ok(())
    }

    pub fn unset_tenant_xsk(&mut self, index: u32) -> Result<()> {
        let mut m: XskMap<_> = XskMap::try_from(self.map_mut(names::TENANT_XSKS)?)?;
        m.unset(index)
            .with_context(|| format!("TENANT_XSKS[{index}]"))?;
        Ok(())
    }

    /// Registers a tenant-side AF_XDP socket at `IfaceConfig.xsk_base + queue`.
    pub fn set_tenant_xsk(&mut self, index: u32, fd: impl AsRawFd) -> Result<()> {
        let mut m: XskMap<_> = XskMap::try_from(self.map_mut(names::TENANT_XSKS)?)?;
        m.set(index, fd, 0)
            .with_context(|| format!("TENANT_XSKS[{index}]"))?;
        Ok(())
    }

    /// Binds an AF_XDP socket on every rx queue of `ifname` and registers each where the
    /// program of `side` redirects that queue (tenant side: from `xsk_base`).
    pub fn bind_sockets(
        &mut self,
        side: Side,
        ifname: &str,
        xsk_base: u32,
        frames: u32,
    ) -> Result<Vec<super::xsk::XskSocket>> {
        let queues = rx_queue_count(ifname)?;
        let mut socks = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let mut s = super::xsk::XskSocket::bind(ifname, q, frames)?;
            s.set_carrier(self.carrier.carrier);
            match side {
                Side::Wire => self.set_wire_xsk(q, s.fd())?,
                Side::Tenant => self.set_tenant_xsk(xsk_base + q, s.fd())?,
            }
            socks.push(s);
        }
        Ok(socks)
    }

    /// Every named counter of one program, summed over CPUs.
    pub fn counters(&self, side: Side) -> Result<Vec<(Counter, u64)>> {
        let name = match side {
            Side::Wire => names::WIRE_STATS,
            Side::Tenant => names::TENANT_STATS,
        };
        read_counters(self.map(name)?)
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, side: Side, c: Counter) -> Result<u64> {
        Ok(self
            .counters(side)?
            .into_iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .unwrap_or(0))
    }

    /// Per-SA counters of `slot`, summed over CPUs.
    pub fn sa_stats(&self, slot: u32) -> Result<SaStats> {
        let m: PerCpuArray<_, SaStats> = PerCpuArray::try_from(self.map(names::SA_STATS)?)?;
        let per_cpu = m
            .get(&slot, 0)
            .with_context(|| format!("SA_STATS[{slot}]"))?;
        Ok(per_cpu.iter().fold(SaStats::default(), |a, s| SaStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
        }))
    }

    /// Removes the pinned maps of this instance now.
    pub fn unpin(&mut self) -> Result<()> {
        self.unpin_on_drop = false;
        remove_pins(&self.pin_dir)
    }
}

/// Number of rx queues of an interface in the calling thread's network namespace (ethtool
/// channels, which unlike sysfs follow a thread that entered another namespace).
pub fn rx_queue_count(ifname: &str) -> Result<u32> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: zeroed ifreq with a NUL-terminated name; the ioctl writes into `ch`.
    let n = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for ethtool");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        if ifname.len() >= ifr.ifr_name.len() {
            libc::close(fd);
            bail!("interface name {ifname:?} too long");
        }
        for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&raw mut ch).cast();
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            if err.raw_os_error() == Some(libc::ENODEV) {
                bail!("no interface {ifname}");
            }
            // Drivers without channel info have a single queue.
            1
        } else {
            (ch.rx_count + ch.combined_count).max(1)
        }
    };
    if n > vpn_common::maps::MAX_QUEUES {
        bail!(
            "{ifname} has {n} rx queues; at most {} are supported",
            vpn_common::maps::MAX_QUEUES
        );
    }
    Ok(n)
}

/// Reads a per-CPU counter array (`WIRE_STATS` / `TENANT_STATS`) into named totals.
pub fn read_counters(map: &Map) -> Result<Vec<(Counter, u64)>> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    Counter::all()
        .map(|c| {
            let v = m
                .get(&c.index(), 0)
                .map_err(|e| anyhow!("counter {}: {e}", c.name()))?;
            Ok((c, v.iter().sum()))
        })
        .collect()
}

/// What this kernel lacks of what the programs and maps need, as a sentence to append to a
/// load error ("" when the probes find nothing missing): the error then says why, not only
/// that, the kernel said no.
fn kernel_hints() -> String {
    let mut missing = Vec::new();
    if let Err(e) = crate::probe::bpf::mmapable_array() {
        missing.push(format!(
            "BPF_F_MMAPABLE array maps (Linux 5.5+; the replay windows are shared with the \
             workers through them): {e}"
        ));
    }
    if let Err(r) = crate::probe::bpf::xdp_adjust_head() {
        missing.push(format!(
            "bpf_xdp_adjust_head in XDP programs (tag popping and the in-packet shim): {r}"
        ));
    }
    if missing.is_empty() {
        String::new()
    } else {
        format!(
            "; this kernel lacks {} (`vpnctl probe` shows every feature)",
            missing.join("; ")
        )
    }
}

/// Mounts bpffs at `root` unless it already is (as systemd does at boot on most nodes, and
/// Cilium does where it is missing), or fails naming the mount and the command that fixes it.
/// Returns whether it mounted it.
pub fn ensure_bpffs(root: &Path) -> Result<bool> {
    if crate::probe::bpf::is_bpffs(root) {
        return Ok(false);
    }
    let fix = format!("mount -t bpf bpf {}", root.display());
    std::fs::create_dir_all(root).with_context(|| {
        format!(
            "bpffs is not mounted at {} and the directory cannot be created; mount it with \
             `{fix}`",
            root.display()
        )
    })?;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(root.as_os_str().as_bytes())?;
    let fstype = c"bpf";
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "bpffs is not mounted at {} and mounting it failed (needs root or \
                 CAP_SYS_ADMIN); mount it with `{fix}`, or at boot with the fstab line \
                 `bpf {} bpf defaults 0 0`",
                root.display(),
                root.display()
            )
        });
    }
    tracing::info!("bpffs: mounted at {} (it was not mounted)", root.display());
    Ok(true)
}

/// Creates a pin directory under bpffs (mounting bpffs at [`PIN_ROOT`] first if `dir` is
/// under it and it is missing), with an error that says what is wrong.
pub fn pin_directory(dir: &Path) -> Result<()> {
    if dir.starts_with(PIN_ROOT) {
        ensure_bpffs(Path::new(PIN_ROOT))?;
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating the pin directory {} (on bpffs at {PIN_ROOT}; needs root)",
            dir.display()
        )
    })
}

/// Removes every pin of the contract under `dir`, then `dir` itself if empty.
pub fn remove_pins(dir: &Path) -> Result<()> {
    for name in names::ALL {
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if self.unpin_on_drop {
            let _ = remove_pins(&self.pin_dir);
        }
    }
}

fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A map delete's result: Ok(false) when the key was not there.
fn not_found_as_false(r: Result<(), aya::maps::MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A map lookup's result: Ok(None) when the key is not there.
fn not_found_as_none<V>(r: Result<V, aya::maps::MapError>) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn mask_v4(a: Ipv4Addr, plen: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let mask = if plen == 0 {
        0
    } else {
        u32::MAX << (32 - plen as u32)
    };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(a: Ipv6Addr, plen: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let mask = if plen == 0 {
        0
    } else {
        u128::MAX << (128 - plen as u32)
    };
    Ipv6Addr::from(bits & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            mask_v4(Ipv4Addr::new(10, 1, 2, 3), 24),
            Ipv4Addr::new(10, 1, 2, 0)
        );
        assert_eq!(
            mask_v4(Ipv4Addr::new(10, 1, 2, 3), 0),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            mask_v6("2001:db8::1".parse().unwrap(), 64),
            "2001:db8::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn instance_names() {
        assert!(validate_instance("east-1").is_ok());
        assert!(validate_instance("").is_err());
        assert!(validate_instance("../etc").is_err());
    }
}
