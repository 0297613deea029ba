//! Installing, switching and removing child SAs while the workers run: what the IKE control
//! plane (and vpnd's manual SAs) use, in the make-before-break order of a rekey
//! (RFC 7296 2.8):
//!
//! 1. `install_inbound`: the new inbound SA reaches the workers, then its replay window and
//!    SPI reach the XDP program. The peer may start using it from now on.
//! 2. `activate_outbound`: the new outbound SA reaches the workers, then each of its policies
//!    (tenant, peer subnet) is switched to its slot with one map write (an LPM trie update
//!    replaces the value atomically; the XDP program sees the old slot or the new one).
//! 3. `remove` (after an overlap the caller chooses): the old SPI leaves the XDP map, its
//!    policies go only if no newer child took them over, its worker entries and slots are
//!    released (slots are reused only after a quarantine, so a frame still queued with an old
//!    slot never meets a different SA).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use vpn_common::{
    ReplayWindow,
    maps::{
        PEER_F_AFXDP, PEER_F_KERNEL, POLICY_KERNEL, POLICY_PROTECT, PeerKey, PolicyValue,
        SA_F_KERNEL, SA_F_UDP_ENCAP, SaIn,
    },
};

use super::{
    Dataplane, FirstError, ReplayTable,
    sa_tables::SaTables,
    worker::{InboundState, NextHop, OutboundState, Prefix, Selector},
};
use crate::{
    esp::{
        InboundSa, OutboundSa, Outer, SaKey,
        crypto::{Backend, ICV_LEN, IV_LEN},
    },
    seqstate::Start,
};

/// Everything the data plane needs to know about one child SA pair.
pub struct ChildSaSpec {
    pub name: String,
    pub tenant: u32,
    pub local: IpAddr,
    pub peer: IpAddr,
    /// (our source port, peer port) for ESP in UDP (RFC 3948).
    pub udp_encap: Option<(u16, u16)>,
    pub spi_in: u32,
    pub spi_out: u32,
    pub key_in: SaKey,
    pub key_out: SaKey,
    pub esn: bool,
    pub replay_window: u32,
    /// Largest outer (ESP) packet of this SA, Neutron's `ipsec_site_connection` `mtu`; the
    /// wire's MTU bounds it as well. None: the wire's MTU alone.
    pub mtu: Option<u16>,
    pub local_subnets: Vec<Prefix>,
    pub peer_subnets: Vec<Prefix>,
    /// The peer's (next hop's) MAC on the wire.
    pub next_hop: NextHop,
    /// Our wire MAC.
    pub src_mac: [u8; 6],
}

/// A child SA pair in the data plane.
pub struct InstalledChild {
    pub name: String,
    pub tenant: u32,
    pub peer: IpAddr,
    pub spi_in: u32,
    pub spi_out: u32,
    /// Replay window and counter slot of the inbound SA.
    pub slot_in: u32,
    /// Policy slot of the outbound SA.
    pub slot_out: u32,
    pub peer_subnets: Vec<Prefix>,
    inbound: Arc<InboundState>,
    outbound: Arc<OutboundState>,
    active: bool,
}

impl InstalledChild {
    /// Whether `activate_outbound` ran: the policies point at this child's outbound SA.
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn outbound_sa(&self) -> &Arc<OutboundSa> {
        &self.outbound.sa
    }

    /// The inbound SA as the workers hold it (for the manual SAs' state keeper).
    pub fn inbound_state(&self) -> &Arc<InboundState> {
        &self.inbound
    }
}

/// Where the counters of a manually keyed SA continue after a restart (from its state
/// files, see `crate::seqstate`). Negotiated SAs start fresh: `Resume::default()`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    pub outbound: Option<Start>,
    pub inbound: Option<Start>,
}

/// A kernel-backend child's entries in the XDP maps.
#[derive(Clone, Debug)]
pub struct KernelSlots {
    pub tenant: u32,
    pub peer: IpAddr,
    pub spi_in: u32,
    /// Its `SA_STATS` slot (what XDP passed to the kernel).
    pub slot_in: u32,
    /// Identifies its tenant policies (their `sa_slot`).
    pub slot_out: u32,
    pub peer_subnets: Vec<Prefix>,
    pub active: bool,
}

/// Traffic through one child SA pair, for lifetimes and the CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildStats {
    /// Packets and inner bytes accepted on the inbound SA (authenticated, not replayed).
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets and inner bytes encapsulated on the outbound SA.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Last outbound sequence number used, and the last one allowed (2^32-1 without ESN,
    /// 2^64-1 with it): rekey well before `seq_out` reaches `seq_out_max`.
    pub seq_out: u64,
    pub seq_out_max: u64,
    /// How far `seq_out` may go now: `seq_out_max`, or for a manually keyed SA the ceiling its
    /// state file reserves.
    pub seq_out_reserved: u64,
    /// Highest sequence number accepted inbound (the replay window's top).
    pub replay_top: u64,
}

/// The kernel maps the installer writes: `Dataplane` in production, a fake in unit tests.
pub trait SaMaps {
    /// Initializes the replay window of `sa.slot`, then publishes `spi`.
    fn add_sa_in(&mut self, spi: u32, sa: SaIn, window: ReplayWindow) -> Result<()>;
    fn remove_sa_in(&mut self, spi: u32) -> Result<()>;
    /// Sets (or atomically replaces) the policy of (tenant, prefix).
    fn set_policy(&mut self, tenant: u32, prefix: &Prefix, value: PolicyValue) -> Result<()>;
    fn remove_policy(&mut self, tenant: u32, prefix: &Prefix) -> Result<bool>;
    /// Sets a peer's `PEER_F_*` flags; 0 removes it.
    fn set_peer_flags(&mut self, peer: IpAddr, flags: u32) -> Result<()>;
    /// Zeroes the kernel's per-SA counters of a slot given to a new SA.
    fn reset_sa_stats(&mut self, slot: u32) -> Result<()>;
}

fn peer_key(a: IpAddr) -> PeerKey {
    match a {
        IpAddr::V4(a) => PeerKey::v4(a.octets()),
        IpAddr::V6(a) => PeerKey::v6(a.octets()),
    }
}

impl SaMaps for Dataplane {
    fn add_sa_in(&mut self, spi: u32, sa: SaIn, window: ReplayWindow) -> Result<()> {
        Dataplane::add_sa_in(self, spi, sa, window)
    }

    fn remove_sa_in(&mut self, spi: u32) -> Result<()> {
        Dataplane::remove_sa_in(self, spi)
    }

    fn set_policy(&mut self, tenant: u32, p: &Prefix, value: PolicyValue) -> Result<()> {
        match p.addr {
            IpAddr::V4(a) => self.set_policy_v4(tenant, a, p.len, value),
            IpAddr::V6(a) => self.set_policy_v6(tenant, a, p.len, value),
        }
    }

    fn remove_policy(&mut self, tenant: u32, p: &Prefix) -> Result<bool> {
        match p.addr {
            IpAddr::V4(a) => self.remove_policy_v4(tenant, a, p.len),
            IpAddr::V6(a) => self.remove_policy_v6(tenant, a, p.len),
        }
    }

    fn set_peer_flags(&mut self, peer: IpAddr, flags: u32) -> Result<()> {
        if flags == 0 {
            Dataplane::remove_peer(self, peer_key(peer)).map(|_| ())
        } else {
            Dataplane::set_peer_flags(self, peer_key(peer), flags)
        }
    }

    fn reset_sa_stats(&mut self, slot: u32) -> Result<()> {
        Dataplane::reset_sa_stats(self, slot)
    }
}

/// How long a released slot rests before it is handed out again: longer than any frame
/// stays queued in an AF_XDP ring with the old slot in its metadata.
pub const SLOT_QUARANTINE: Duration = Duration::from_secs(2);

/// SA slots (indexes into `REPLAY`, `SA_STATS` and the worker tables): never-used slots
/// first, then released ones oldest first, each only after `SLOT_QUARANTINE`.
#[derive(Debug)]
pub struct SlotAllocator {
    next: u32,
    limit: u32,
    free: VecDeque<(u32, Instant)>,
    used: HashSet<u32>,
    quarantine: Duration,
}

impl SlotAllocator {
    /// Slots `first..limit` (`limit`: the size of the slot-indexed maps).
    pub fn new(first: u32, limit: u32) -> SlotAllocator {
        SlotAllocator {
            next: first,
            limit,
            free: VecDeque::new(),
            used: HashSet::new(),
            quarantine: SLOT_QUARANTINE,
        }
    }

    pub fn with_quarantine(mut self, q: Duration) -> SlotAllocator {
        self.quarantine = q;
        self
    }

    pub fn alloc(&mut self) -> Option<u32> {
        self.alloc_at(Instant::now())
    }

    pub fn alloc_at(&mut self, now: Instant) -> Option<u32> {
        let slot = if self.next < self.limit {
            self.next += 1;
            self.next - 1
        } else {
            match self.free.front() {
                Some(&(s, t)) if now.saturating_duration_since(t) >= self.quarantine => {
                    self.free.pop_front();
                    s
                }
                _ => return None,
            }
        };
        self.used.insert(slot);
        Some(slot)
    }

    /// Releases a slot; false (and nothing done) if it was not allocated.
    pub fn release(&mut self, slot: u32) -> bool {
        self.release_at(slot, Instant::now())
    }

    pub fn release_at(&mut self, slot: u32, now: Instant) -> bool {
        if !self.used.remove(&slot) {
            return false;
        }
        self.free.push_back((slot, now));
        true
    }

    /// Takes back a slot that was never published (a failed install): reusable at once.
    fn give_back(&mut self, slot: u32) {
        if !self.used.remove(&slot) {
            return;
        }
        if slot + 1 == self.next {
            self.next -= 1;
        } else {
            let now = Instant::now();
            let rested = now.checked_sub(self.quarantine).unwrap_or(now);
            self.free.push_front((slot, rested));
        }
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// Installs child SAs into one node's data plane (kernel maps and workers).
pub struct Installer {
    tables: SaTables,
    replay: Arc<ReplayTable>,
    backend: Backend,
    slots: SlotAllocator,
    /// (tenant, peer subnet) -> outbound slot its policy points to now.
    policies: HashMap<(u32, Prefix), u32>,
    /// Children per peer address: the peer stays in `PEERS` while it has one.
    peers: HashMap<IpAddr, usize>,
    /// Kernel-backend children per peer address (`PEER_F_KERNEL`).
    kernel_peers: HashMap<IpAddr, usize>,
    /// Inbound SPIs installed (the SPI map would silently overwrite a duplicate).
    spis_in: HashSet<u32>,
}

impl Installer {
    /// `tables` from `Worker::tables`, `replay` from `Dataplane::replay_shared` (its size
    /// bounds the slots). Slot 0 is never used.
    pub fn new(tables: SaTables, replay: Arc<ReplayTable>, backend: Backend) -> Installer {
        let slots = SlotAllocator::new(1, replay.slots());
        Installer::with_slots(tables, replay, backend, slots)
    }

    pub fn with_slots(
        tables: SaTables,
        replay: Arc<ReplayTable>,
        backend: Backend,
        slots: SlotAllocator,
    ) -> Installer {
        Installer {
            tables,
            replay,
            backend,
            slots,
            policies: HashMap::new(),
            peers: HashMap::new(),
            kernel_peers: HashMap::new(),
            spis_in: HashSet::new(),
        }
    }

    pub fn tables(&self) -> &SaTables {
        &self.tables
    }

    pub fn slots(&self) -> &SlotAllocator {
        &self.slots
    }

    /// The outbound slot the policy of (tenant, peer subnet) points to, as installed.
    pub fn policy_slot(&self, tenant: u32, prefix: &Prefix) -> Option<u32> {
        self.policies.get(&(tenant, *prefix)).copied()
    }

    fn alloc_pair(&mut self) -> Result<(u32, u32)> {
        let a = self.slots.alloc().context("no free SA slot")?;
        match self.slots.alloc() {
            Some(b) => Ok((a, b)),
            None => {
                self.slots.give_back(a);
                bail!("no free SA slot")
            }
        }
    }

    /// Step 1 of make-before-break: the inbound SA is live in the workers and in the XDP
    /// program's SPI map (with a fresh replay window). The outbound SA is prepared but not
    /// used until `activate_outbound`.
    pub fn install_inbound(
        &mut self,
        maps: &mut impl SaMaps,
        spec: &ChildSaSpec,
    ) -> Result<InstalledChild> {
        self.install_inbound_resumed(maps, spec, &Resume::default())
    }

    /// `install_inbound` for a manually keyed SA that continues where its state files say:
    /// the outbound counter after `resume.outbound.last` and up to its ceiling, the replay
    /// window taking everything up to `resume.inbound.last` as received, the worker accepting
    /// up to its ceiling; or, for a refused start, nothing either way. All of it is in place
    /// before the SPI is published.
    pub fn install_inbound_resumed(
        &mut self,
        maps: &mut impl SaMaps,
        spec: &ChildSaSpec,
        resume: &Resume,
    ) -> Result<InstalledChild> {
        if spec.spi_in <= 255 || spec.spi_out <= 255 {
            bail!(
                "child {:?}: SPIs {:#x}/{:#x}: 0-255 are reserved (RFC 4303 2.1)",
                spec.name,
                spec.spi_in,
                spec.spi_out
            );
        }
        if spec.local.is_ipv4() != spec.peer.is_ipv4() {
            bail!(
                "child {:?}: local and peer address families differ",
                spec.name
            );
        }
        if spec.peer_subnets.is_empty() || spec.local_subnets.is_empty() {
            bail!(
                "child {:?}: no peer subnets or no local subnets: the SA could carry nothing",
                spec.name
            );
        }
        if self.spis_in.contains(&spec.spi_in) {
            bail!(
                "child {:?}: inbound SPI {:#010x} is already installed",
                spec.name,
                spec.spi_in
            );
        }
        let (slot_in, slot_out) = self.alloc_pair()?;
        // Every (source, destination) pair of subnets, seen from the traffic's side.
        let pairs = |srcs: &[Prefix], dsts: &[Prefix]| -> Vec<Selector> {
            srcs.iter()
                .flat_map(|&src| dsts.iter().map(move |&dst| Selector { src, dst }))
                .collect()
        };
        let inbound = Arc::new(InboundState {
            sa: InboundSa::with_backend(spec.spi_in, &spec.key_in, spec.esn, self.backend),
            slot: slot_in,
            tenant: spec.tenant,
            selectors: pairs(&spec.peer_subnets, &spec.local_subnets),
        });
        let outbound = Arc::new(OutboundState {
            sa: Arc::new(OutboundSa::with_backend(
                spec.spi_out,
                &spec.key_out,
                spec.esn,
                Outer {
                    src: spec.local,
                    dst: spec.peer,
                    udp: spec.udp_encap,
                    ttl: 64,
                },
                self.backend,
            )),
            dst_mac: spec.next_hop.clone(),
            src_mac: spec.src_mac,
            mtu: spec.mtu,
            selectors: pairs(&spec.local_subnets, &spec.peer_subnets),
        });
        match resume.outbound {
            Some(s) if s.refused => outbound.sa.refuse(),
            Some(s) => outbound.sa.resume(s.last, s.ceiling),
            None => {}
        }
        let window = match resume.inbound {
            Some(s) if s.refused => {
                inbound.sa.refuse();
                ReplayWindow::new(spec.replay_window, spec.esn)
            }
            Some(s) => {
                inbound.sa.limit_to(s.ceiling);
                ReplayWindow::resume(spec.replay_window, spec.esn, s.last)
            }
            None => ReplayWindow::new(spec.replay_window, spec.esn),
        };
        let sa_in = SaIn {
            slot: slot_in,
            tenant: spec.tenant,
            flags: if spec.udp_encap.is_some() {
                SA_F_UDP_ENCAP
            } else {
                0
            },
            min_esp_len: SaIn::min_esp_len_for(IV_LEN as u16, ICV_LEN as u16),
            _pad: 0,
        };
        // Workers first, so the first packet the XDP program hands over finds its SA.
        self.tables.insert_inbound(inbound.clone());
        let published = maps
            .reset_sa_stats(slot_in)
            .and_then(|()| maps.reset_sa_stats(slot_out))
            .and_then(|()| maps.add_sa_in(spec.spi_in, sa_in, window));
        if let Err(e) = published {
            self.tables.remove_inbound(slot_in);
            self.slots.give_back(slot_out);
            self.slots.give_back(slot_in);
            return Err(e.context(format!("installing inbound SA of {:?}", spec.name)));
        }
        let n = self.peers.entry(spec.peer).or_default();
        if *n == 0
            && let Err(e) = maps.set_peer_flags(spec.peer, self.peer_flags(spec.peer, 1, 0))
        {
            let _ = maps.remove_sa_in(spec.spi_in);
            self.tables.remove_inbound(slot_in);
            // The SPI was visible for a moment: quarantine its slots.
            self.slots.release(slot_in);
            self.slots.release(slot_out);
            self.peers.remove(&spec.peer);
            return Err(e.context(format!("adding peer {}", spec.peer)));
        }
        *self.peers.entry(spec.peer).or_default() += 1;
        self.spis_in.insert(spec.spi_in);
        Ok(InstalledChild {
            name: spec.name.clone(),
            tenant: spec.tenant,
            peer: spec.peer,
            spi_in: spec.spi_in,
            spi_out: spec.spi_out,
            slot_in,
            slot_out,
            peer_subnets: spec.peer_subnets.clone(),
            inbound,
            outbound,
            active: false,
        })
    }

    /// Points an active child's policies at it again, after another child of the same
    /// connection that had taken them over went away (e.g. a duplicate IKE SA's).
    pub fn repoint(&mut self, maps: &mut impl SaMaps, child: &InstalledChild) -> Result<()> {
        if !child.active {
            return Ok(());
        }
        for p in &child.peer_subnets {
            maps.set_policy(
                child.tenant,
                p,
                PolicyValue {
                    sa_slot: child.slot_out,
                    action: POLICY_PROTECT,
                },
            )
            .with_context(|| format!("pointing policy {p:?} at child {:?}", child.name))?;
            self.policies.insert((child.tenant, *p), child.slot_out);
        }
        Ok(())
    }

    /// Step 2: the outbound SA into the workers, then every policy (tenant, peer subnet)
    /// switched to its slot, one map write each. Idempotent.
    pub fn activate_outbound(
        &mut self,
        maps: &mut impl SaMaps,
        child: &mut InstalledChild,
    ) -> Result<()> {
        if child.active {
            return Ok(());
        }
        self.tables
            .insert_outbound(child.slot_out, child.outbound.clone());
        for p in &child.peer_subnets {
            maps.set_policy(
                child.tenant,
                p,
                PolicyValue {
                    sa_slot: child.slot_out,
                    action: POLICY_PROTECT,
                },
            )
            .with_context(|| format!("switching policy {p:?} to child {:?}", child.name))?;
            self.policies.insert((child.tenant, *p), child.slot_out);
        }
        child.active = true;
        Ok(())
    }

    /// Step 3: removes a child: its SPI from the XDP map (its packets are dropped as unknown
    /// SPI from now on), its policies unless a newer child took them over, its worker
    /// entries; its slots go back to the allocator. Everything is attempted; the first error
    /// is returned.
    pub fn remove(&mut self, maps: &mut impl SaMaps, child: InstalledChild) -> Result<()> {
        let mut errs = FirstError::default();
        errs.note(
            maps.remove_sa_in(child.spi_in)
                .with_context(|| format!("removing SPI of child {:?}", child.name)),
        );
        self.release_policies(
            maps,
            child.tenant,
            &child.peer_subnets,
            child.slot_out,
            &mut errs,
        );
        self.spis_in.remove(&child.spi_in);
        self.tables.remove_inbound(child.slot_in);
        self.tables.remove_outbound(child.slot_out);
        if let Some(n) = self.peers.get_mut(&child.peer) {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&child.peer);
                errs.note(maps.set_peer_flags(child.peer, self.peer_flags(child.peer, 0, 0)));
            }
        }
        self.slots.release(child.slot_in);
        self.slots.release(child.slot_out);
        errs.result()
    }

    /// The `PEER_F_*` flags of a peer with `extra_afxdp`/`extra_kernel` more children than
    /// counted now.
    fn peer_flags(&self, peer: IpAddr, extra_afxdp: usize, extra_kernel: usize) -> u32 {
        let a = self.peers.get(&peer).copied().unwrap_or(0) + extra_afxdp;
        let k = self.kernel_peers.get(&peer).copied().unwrap_or(0) + extra_kernel;
        (if a > 0 { PEER_F_AFXDP } else { 0 }) | (if k > 0 { PEER_F_KERNEL } else { 0 })
    }

    /// A kernel-backend child's part of the XDP maps: its inbound SPI, flagged `SA_F_KERNEL`
    /// (the program checks it and passes its ESP to the stack's xfrm, counted in the slot's
    /// `SA_STATS`), and its peer flagged `PEER_F_KERNEL`. The workers get nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn install_kernel_inbound(
        &mut self,
        maps: &mut impl SaMaps,
        name: &str,
        tenant: u32,
        peer: IpAddr,
        spi_in: u32,
        udp_encap: bool,
        peer_subnets: &[Prefix],
    ) -> Result<KernelSlots> {
        if spi_in <= 255 {
            bail!("child {name:?}: SPI {spi_in:#x}: 0-255 are reserved (RFC 4303 2.1)");
        }
        if self.spis_in.contains(&spi_in) {
            bail!("child {name:?}: inbound SPI {spi_in:#010x} is already installed");
        }
        let (slot_in, slot_out) = self.alloc_pair()?;
        let sa_in = SaIn {
            slot: slot_in,
            tenant,
            flags: SA_F_KERNEL | if udp_encap { SA_F_UDP_ENCAP } else { 0 },
            min_esp_len: SaIn::min_esp_len_for(IV_LEN as u16, ICV_LEN as u16),
            _pad: 0,
        };
        let published = maps
            .reset_sa_stats(slot_in)
            .and_then(|()| maps.add_sa_in(spi_in, sa_in, ReplayWindow::new(0, false)));
        if let Err(e) = published {
            self.slots.give_back(slot_out);
            self.slots.give_back(slot_in);
            return Err(e.context(format!("publishing the inbound SPI of {name:?}")));
        }
        let flags = self.peer_flags(peer, 0, 1);
        if let Err(e) = maps.set_peer_flags(peer, flags) {
            let _ = maps.remove_sa_in(spi_in);
            self.slots.release(slot_in);
            self.slots.release(slot_out);
            return Err(e.context(format!("adding peer {peer}")));
        }
        *self.kernel_peers.entry(peer).or_default() += 1;
        self.spis_in.insert(spi_in);
        Ok(KernelSlots {
            tenant,
            peer,
            spi_in,
            slot_in,
            slot_out,
            peer_subnets: peer_subnets.to_vec(),
            active: false,
        })
    }

    /// Points the tenant's XDP policies of a kernel child's peer subnets at the kernel
    /// (`POLICY_KERNEL`: passed to the stack, where xfrm encrypts). Idempotent.
    pub fn activate_kernel(&mut self, maps: &mut impl SaMaps, k: &mut KernelSlots) -> Result<()> {
        for p in &k.peer_subnets {
            maps.set_policy(
                k.tenant,
                p,
                PolicyValue {
                    sa_slot: k.slot_out,
                    action: POLICY_KERNEL,
                },
            )
            .with_context(|| format!("pointing policy {p:?} at the kernel"))?;
            self.policies.insert((k.tenant, *p), k.slot_out);
        }
        k.active = true;
        Ok(())
    }

    /// Whether any of the policies of (tenant, subnets) still points at `slot` (no newer
    /// child took them all over).
    pub fn owns_policies(&self, tenant: u32, subnets: &[Prefix], slot: u32) -> bool {
        subnets
            .iter()
            .any(|p| self.policy_slot(tenant, p) == Some(slot))
    }

    /// Removes the policies of (tenant, subnets) that still point at `slot`.
    fn release_policies(
        &mut self,
        maps: &mut impl SaMaps,
        tenant: u32,
        subnets: &[Prefix],
        slot: u32,
        errs: &mut FirstError,
    ) {
        for p in subnets {
            let key = (tenant, *p);
            if self.policies.get(&key) == Some(&slot) {
                errs.note(maps.remove_policy(tenant, p).map(|_| ()));
                self.policies.remove(&key);
            }
        }
    }

    /// Removes a kernel child's SPI, its policies unless a newer child took them, its peer
    /// flag; releases its slots.
    pub fn remove_kernel(&mut self, maps: &mut impl SaMaps, k: KernelSlots) -> Result<()> {
        let mut errs = FirstError::default();
        errs.note(maps.remove_sa_in(k.spi_in));
        self.release_policies(maps, k.tenant, &k.peer_subnets, k.slot_out, &mut errs);
        self.spis_in.remove(&k.spi_in);
        if let Some(n) = self.kernel_peers.get_mut(&k.peer) {
            *n -= 1;
            if *n == 0 {
                self.kernel_peers.remove(&k.peer);
            }
        }
        errs.note(maps.set_peer_flags(k.peer, self.peer_flags(k.peer, 0, 0)));
        self.slots.release(k.slot_in);
        self.slots.release(k.slot_out);
        errs.result()
    }

    pub fn stats(&self, child: &InstalledChild) -> ChildStats {
        let out = &child.outbound.sa;
        ChildStats {
            packets_in: child.inbound.sa.packets(),
            bytes_in: child.inbound.sa.bytes(),
            packets_out: out.packets(),
            bytes_out: out.bytes(),
            seq_out: out.seq(),
            seq_out_max: out.seq_limit(),
            seq_out_reserved: out.ceiling(),
            replay_top: self.replay.get(child.slot_in).map(|w| w.top()).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::Cipher;

    #[test]
    fn slots_fresh_first_then_quarantined_fifo() {
        let t0 = Instant::now();
        let q = Duration::from_secs(2);
        let mut a = SlotAllocator::new(1, 5).with_quarantine(q);
        let got: Vec<u32> = (0..4).map(|_| a.alloc_at(t0).unwrap()).collect();
        assert_eq!(got, vec![1, 2, 3, 4], "slot 0 unused, limit exclusive");
        assert_eq!(a.alloc_at(t0), None, "full");
        assert!(a.release_at(3, t0));
        assert!(!a.release_at(3, t0), "double release refused");
        assert!(!a.release_at(9, t0), "never allocated");
        assert!(a.release_at(1, t0 + Duration::from_secs(1)));
        assert_eq!(a.in_use(), 2);
        assert_eq!(a.alloc_at(t0 + Duration::from_secs(1)), None, "quarantined");
        assert_eq!(a.alloc_at(t0 + q), Some(3), "oldest release first");
        assert_eq!(a.alloc_at(t0 + q), None, "slot 1 still resting");
        assert_eq!(a.alloc_at(t0 + q + Duration::from_secs(1)), Some(1));
        assert_eq!(a.in_use(), 4);
    }

    /// The kernel maps as plain collections.
    #[derive(Default)]
    struct FakeMaps {
        sa_in: HashMap<u32, SaIn>,
        policies: HashMap<(u32, Prefix), u32>,
        peers: HashMap<IpAddr, u32>,
        replay: Option<Arc<ReplayTable>>,
    }

    impl SaMaps for FakeMaps {
        fn add_sa_in(&mut self, spi: u32, sa: SaIn, w: ReplayWindow) -> Result<()> {
            self.replay.as_ref().unwrap().init(sa.slot, w)?;
            if self.sa_in.contains_key(&spi) {
                bail!("SPI {spi:#x} already installed");
            }
            self.sa_in.insert(spi, sa);
            Ok(())
        }
        fn remove_sa_in(&mut self, spi: u32) -> Result<()> {
            self.sa_in.remove(&spi).map(|_| ()).context("no such SPI")
        }
        fn set_policy(&mut self, tenant: u32, p: &Prefix, v: PolicyValue) -> Result<()> {
            self.policies.insert((tenant, *p), v.sa_slot);
            Ok(())
        }
        fn remove_policy(&mut self, tenant: u32, p: &Prefix) -> Result<bool> {
            Ok(self.policies.remove(&(tenant, *p)).is_some())
        }
        fn set_peer_flags(&mut self, peer: IpAddr, flags: u32) -> Result<()> {
            if flags == 0 {
                self.peers.remove(&peer);
            } else {
                self.peers.insert(peer, flags);
            }
            Ok(())
        }
        fn reset_sa_stats(&mut self, _slot: u32) -> Result<()> {
            Ok(())
        }
    }

    fn spec(n: u32, subnets: &[&str]) -> ChildSaSpec {
        let key = |b: u8| SaKey::from_keymat(Cipher::Aes128Gcm16, &[b; 20]).unwrap();
        ChildSaSpec {
            name: format!("child{n}"),
            tenant: 7,
            local: "192.0.2.1".parse().unwrap(),
            peer: "192.0.2.2".parse().unwrap(),
            udp_encap: None,
            spi_in: 0x1000 + n,
            spi_out: 0x2000 + n,
            key_in: key(n as u8),
            key_out: key(n as u8 + 100),
            esn: false,
            replay_window: 64,
            mtu: None,
            local_subnets: vec![crate::config::parse_prefix("10.1.0.0/24").unwrap()],
            peer_subnets: subnets
                .iter()
                .map(|s| crate::config::parse_prefix(s).unwrap())
                .collect(),
            next_hop: NextHop::new([2, 0, 0, 0, 0, 2]),
            src_mac: [2, 0, 0, 0, 0, 1],
        }
    }

    #[test]
    fn make_before_break_rekey() {
        let replay = Arc::new(ReplayTable::anonymous(16).unwrap());
        let tables = SaTables::new();
        let mut maps = FakeMaps {
            replay: Some(replay.clone()),
            ..Default::default()
        };
        let mut inst = Installer::new(tables.clone(), replay, Backend::default());
        let p2 = crate::config::parse_prefix("10.2.0.0/24").unwrap();
        let p3 = crate::config::parse_prefix("10.3.0.0/24").unwrap();

        let mut old = inst
            .install_inbound(&mut maps, &spec(1, &["10.2.0.0/24"]))
            .unwrap();
        assert_eq!((old.slot_in, old.slot_out), (1, 2));
        assert_eq!(tables.inbound_slots(), vec![1]);
        assert!(tables.outbound_slots().is_empty(), "not active yet");
        assert!(maps.policies.is_empty());
        assert!(maps.peers.contains_key(&old.peer));
        inst.activate_outbound(&mut maps, &mut old).unwrap();
        assert_eq!(maps.policies[&(7, p2)], 2);
        assert_eq!(tables.outbound_slots(), vec![2]);

        // The rekey: the new child takes 10.2/24 over and adds 10.3/24.
        let mut new = inst
            .install_inbound(&mut maps, &spec(2, &["10.2.0.0/24", "10.3.0.0/24"]))
            .unwrap();
        assert_eq!(tables.inbound_slots(), vec![1, 3], "both inbound SAs live");
        assert_eq!(maps.policies[&(7, p2)], 2, "old outbound still in use");
        inst.activate_outbound(&mut maps, &mut new).unwrap();
        inst.activate_outbound(&mut maps, &mut new).unwrap();
        assert_eq!(maps.policies[&(7, p2)], 4);
        assert_eq!(maps.policies[&(7, p3)], 4);
        assert_eq!(inst.policy_slot(7, &p2), Some(4));

        let s = inst.stats(&new);
        assert_eq!(s.seq_out_max, u32::MAX as u64);
        assert_eq!((s.packets_out, s.packets_in, s.replay_top), (0, 0, 0));
        new.outbound_sa().set_seq(41);
        assert_eq!(inst.stats(&new).seq_out, 41);

        inst.remove(&mut maps, old).unwrap();
        assert_eq!(maps.policies[&(7, p2)], 4, "taken over: kept");
        assert!(!maps.sa_in.contains_key(&0x1001));
        assert!(maps.sa_in.contains_key(&0x1002));
        assert_eq!(tables.inbound_slots(), vec![3]);
        assert_eq!(tables.outbound_slots(), vec![4]);
        assert!(maps.peers.contains_key(&new.peer), "peer still has a child");
        assert_eq!(inst.slots().in_use(), 2);

        inst.remove(&mut maps, new).unwrap();
        assert!(maps.policies.is_empty(), "no newer child: policies go");
        assert!(maps.sa_in.is_empty());
        assert!(maps.peers.is_empty());
        assert!(tables.inbound_slots().is_empty() && tables.outbound_slots().is_empty());
        assert_eq!(inst.slots().in_use(), 0);
    }

    #[test]
    fn failed_install_leaves_nothing() {
        let replay = Arc::new(ReplayTable::anonymous(16).unwrap());
        let tables = SaTables::new();
        let mut maps = FakeMaps {
            replay: Some(replay.clone()),
            ..Default::default()
        };
        let mut inst = Installer::new(tables.clone(), replay, Backend::default());
        let _a = inst
            .install_inbound(&mut maps, &spec(1, &["10.2.0.0/24"]))
            .unwrap();
        // Same inbound SPI again: the map refuses it.
        assert!(
            inst.install_inbound(&mut maps, &spec(1, &["10.2.0.0/24"]))
                .is_err()
        );
        assert_eq!(tables.inbound_slots(), vec![1]);
        assert_eq!(inst.slots().in_use(), 2);
        let mut bad = spec(3, &["10.2.0.0/24"]);
        bad.spi_in = 7;
        assert!(inst.install_inbound(&mut maps, &bad).is_err());
        assert!(inst.install_inbound(&mut maps, &spec(4, &[])).is_err());
        assert_eq!(inst.slots().in_use(), 2);
    }

    #[test]
    fn kernel_children_flag_their_spi_peer_and_policies() {
        let replay = Arc::new(ReplayTable::anonymous(16).unwrap());
        let tables = SaTables::new();
        let mut maps = FakeMaps {
            replay: Some(replay.clone()),
            ..Default::default()
        };
        let mut inst = Installer::new(tables.clone(), replay, Backend::default());
        let p2 = crate::config::parse_prefix("10.2.0.0/24").unwrap();
        let peer: IpAddr = "192.0.2.2".parse().unwrap();
        let mut k = inst
            .install_kernel_inbound(&mut maps, "k", 7, peer, 0x3001, true, &[p2])
            .unwrap();
        let e = maps.sa_in[&0x3001];
        assert_eq!(e.flags, SA_F_KERNEL | SA_F_UDP_ENCAP);
        assert_eq!(e.slot, k.slot_in);
        assert_eq!(maps.peers[&peer], PEER_F_KERNEL);
        assert!(tables.inbound_slots().is_empty(), "the workers get nothing");
        assert!(
            inst.install_kernel_inbound(&mut maps, "dup", 7, peer, 0x3001, false, &[p2])
                .is_err(),
            "duplicate SPI"
        );
        inst.activate_kernel(&mut maps, &mut k).unwrap();
        assert_eq!(maps.policies[&(7, p2)], k.slot_out);
        assert!(inst.owns_policies(7, &k.peer_subnets, k.slot_out));

        // An AF_XDP child to the same peer: both flags while both exist.
        let a = inst
            .install_inbound(&mut maps, &spec(1, &["10.9.0.0/24"]))
            .unwrap();
        assert_eq!(maps.peers[&peer], PEER_F_KERNEL | PEER_F_AFXDP);
        inst.remove_kernel(&mut maps, k).unwrap();
        assert_eq!(maps.peers[&peer], PEER_F_AFXDP);
        assert!(!maps.sa_in.contains_key(&0x3001));
        assert!(!maps.policies.contains_key(&(7, p2)));
        inst.remove(&mut maps, a).unwrap();
        assert!(maps.peers.is_empty());
        assert_eq!(inst.slots().in_use(), 0);
    }

    #[test]
    fn slots_run_out_cleanly() {
        let replay = Arc::new(ReplayTable::anonymous(4).unwrap());
        let mut maps = FakeMaps {
            replay: Some(replay.clone()),
            ..Default::default()
        };
        // Slots 1..4: one child (two slots), then one left over, not enough for a pair.
        let mut inst = Installer::new(SaTables::new(), replay, Backend::default());
        let _a = inst
            .install_inbound(&mut maps, &spec(1, &["10.2.0.0/24"]))
            .unwrap();
        assert!(
            inst.install_inbound(&mut maps, &spec(2, &["10.2.0.0/24"]))
                .is_err()
        );
        assert_eq!(inst.slots().in_use(), 2);
        // The slot taken and given back is free at once (no quarantine: never published).
        assert!(inst.slots.alloc().is_some());
    }
}
