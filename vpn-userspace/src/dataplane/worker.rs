//! The AF_XDP workers: ESP in from the wire, decrypt, re-tag toward the tenant; tenant
//! traffic in, encrypt, out on the wire. One worker thread per queue pair (`Worker::split`);
//! the SA tables are shared and replaced copy-on-write while the workers run (`SaTables`,
//! loaded once per batch), replay windows are updated through
//! `ReplayTable::accept` (exclusive per SA, uncontended when an SA stays on one queue, as RSS
//! keeps it), outbound sequence numbers are atomic. Batches of frames, no allocation,
//! lock or syscall per packet (one kick per batch and direction).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use vpn_common::{
    DropReason, XdpMeta,
    meta::{META_KIND_ARP, META_KIND_ESP_IN, META_KIND_FRAGMENT, META_KIND_OUTBOUND, META_MAGIC},
};

use super::{
    ReplayTable,
    macs::{MacLimits, MacSnapshot, MacTable, Pending},
    sa_tables::{InboundTable, OutboundTable, SaTables},
    xsk::XskSocket,
};
use crate::esp::{
    InboundSa, OutboundSa,
    packet::{IPPROTO_ESP, IPPROTO_UDP, InnerInfo, inner_info, write_ipv4_header},
    pmtu::{fragment_v4, too_big},
    reassembly::{FragDrop, FragResult, Limits, Reassembler},
};

pub const BATCH: u32 = 64;
const ETH_LEN: usize = 14;
const VXLAN_PORT: u16 = 4789;

/// An IP prefix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, a: &IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len.min(32) as u32)
                };
                u32::from(p) & m == u32::from(*a) & m
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len.min(128) as u32)
                };
                u128::from(p) & m == u128::from(*a) & m
            }
            _ => false,
        }
    }
}

/// Traffic selector pair of an SA (RFC 4301 4.4.2), from the point of view of the traffic
/// it carries: inbound SAs check decrypted packets against it, outbound SAs tenant packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub src: Prefix,
    pub dst: Prefix,
}

/// Whether a packet's addresses match one of an SA's selectors (none: not checked).
fn allowed(selectors: &[Selector], info: &InnerInfo) -> bool {
    selectors.is_empty()
        || selectors
            .iter()
            .any(|s| s.src.contains(&info.src) && s.dst.contains(&info.dst))
}

/// How decrypted traffic reaches a tenant.
#[derive(Clone, Debug)]
pub enum TenantLink {
    Untagged,
    Vlan(u16),
    Vxlan {
        vni: u32,
        local_vtep: Ipv4Addr,
        remote_vtep: Ipv4Addr,
        /// Next hop MAC toward the remote VTEP.
        vtep_mac: [u8; 6],
    },
}

#[derive(Clone, Debug)]
pub struct Tenant {
    pub link: TenantLink,
    /// Our MAC on the tenant network (the tenant's gateway): inner source MAC.
    pub gateway_mac: [u8; 6],
    /// Tenant host MAC used until one is learned from the tenant's own traffic.
    pub default_host_mac: [u8; 6],
    /// MAC of the tenant-side interface (outer source for VXLAN).
    pub iface_mac: [u8; 6],
    /// The gateway's addresses on the tenant network: the source of ICMP errors we send
    /// (the packet's destination is used when unset).
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<std::net::Ipv6Addr>,
    /// The tenant's own subnets (the local side of its connections): ARP teaches us MACs of
    /// these addresses only, so a host cannot claim a remote address, or another subnet's.
    pub local_subnets: Vec<Prefix>,
}

pub struct InboundState {
    pub sa: InboundSa,
    pub slot: u32,
    pub tenant: u32,
    pub selectors: Vec<Selector>,
}

/// The peer's (next hop's) MAC, updated by the control thread when the neighbour table
/// changes and read by the worker for every packet without a lock.
#[derive(Clone, Debug, Default)]
pub struct NextHop(Arc<std::sync::atomic::AtomicU64>);

impl NextHop {
    pub fn new(mac: [u8; 6]) -> NextHop {
        let n = NextHop::default();
        n.set(mac);
        n
    }

    pub fn set(&self, mac: [u8; 6]) {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&mac);
        self.0
            .store(u64::from_ne_bytes(b), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> [u8; 6] {
        let b = self
            .0
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_ne_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }
}

pub struct OutboundState {
    pub sa: Arc<OutboundSa>,
    /// Next hop MAC on the wire, and our wire MAC.
    pub dst_mac: NextHop,
    pub src_mac: [u8; 6],
    /// Largest outer packet of this SA (the connection's `mtu`), below the wire's.
    pub mtu: Option<u16>,
    /// (local source, peer destination) pairs this SA may carry (RFC 4301 5.1): the XDP
    /// policy chose it by destination alone. Empty: not checked (tests only; the installer
    /// always fills it).
    pub selectors: Vec<Selector>,
}

/// Each worker's counters as it last published them, so that drops only a worker sees
/// (bad ICVs, padding, policy) show in `vpnctl status` while vpnd runs, not only at exit.
#[derive(Clone, Debug, Default)]
pub struct StatsBoard(Arc<std::sync::Mutex<Vec<WorkerStats>>>);

impl StatsBoard {
    /// How often a worker publishes: a copy of a few counters, off the per-packet path.
    pub const PERIOD: std::time::Duration = std::time::Duration::from_millis(250);

    pub fn new(workers: usize) -> StatsBoard {
        StatsBoard(Arc::new(std::sync::Mutex::new(vec![
            WorkerStats::default();
            workers
        ])))
    }

    pub fn publish(&self, worker: usize, s: &WorkerStats) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = b.get_mut(worker) {
            slot.clone_from(s);
        }
    }

    /// The sum over the workers.
    pub fn total(&self) -> WorkerStats {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = WorkerStats::default();
        for s in b.iter() {
            t.merge(s);
        }
        t
    }
}

/// Packets handled and dropped by the worker, by reason (indexed like the XDP counters).
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub decrypted: u64,
    pub encrypted: u64,
    pub fragments_seen: u64,
    /// Inner IPv4 packets (DF clear) too big for the wire, fragmented before encryption.
    pub fragmented_before_encryption: u64,
    /// ESP packets those became.
    pub esp_fragments: u64,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" sent to tenant hosts.
    pub icmp_too_big: u64,
    /// ARP requests for a tenant gateway answered, and other ARP seen (not for us).
    pub arp_replies: u64,
    pub arp_ignored: u64,
    /// IKE messages that arrived as IP fragments, reassembled and handed to the IKE shell.
    pub ike_reassembled: u64,
    /// Tenant hosts not learned because their tenant's MAC table was full (`MacLimits`).
    pub macs_refused: u64,
    pub drops: HashMap<DropReason, u64>,
}

impl WorkerStats {
    /// Adds another worker's counts (for a node-wide total).
    pub fn merge(&mut self, o: &WorkerStats) {
        self.decrypted += o.decrypted;
        self.encrypted += o.encrypted;
        self.fragments_seen += o.fragments_seen;
        self.fragmented_before_encryption += o.fragmented_before_encryption;
        self.esp_fragments += o.esp_fragments;
        self.icmp_too_big += o.icmp_too_big;
        self.arp_replies += o.arp_replies;
        self.arp_ignored += o.arp_ignored;
        self.ike_reassembled += o.ike_reassembled;
        self.macs_refused += o.macs_refused;
        for (r, n) in &o.drops {
            *self.drops.entry(*r).or_default() += n;
        }
    }

    fn drop(&mut self, r: DropReason) {
        *self.drops.entry(r).or_default() += 1;
    }

    /// Frames lost to a full TX ring: counted as `NoRoom`.
    fn no_room(&mut self, n: u32) {
        if n > 0 {
            *self.drops.entry(DropReason::NoRoom).or_default() += n as u64;
        }
    }

    /// The counters by name, drops by their `DropReason` names (for `vpnctl status`).
    pub fn to_json(&self) -> serde_json::Value {
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .filter_map(|r| Some((r.name().to_string(), self.drops.get(r).copied()?.into())))
            .collect();
        serde_json::json!({
            "decrypted": self.decrypted,
            "encrypted": self.encrypted,
            "fragments_seen": self.fragments_seen,
            "fragmented_before_encryption": self.fragmented_before_encryption,
            "esp_fragments": self.esp_fragments,
            "icmp_too_big": self.icmp_too_big,
            "arp_replies": self.arp_replies,
            "arp_ignored": self.arp_ignored,
            "ike_reassembled": self.ike_reassembled,
            "macs_refused": self.macs_refused,
            "drops": drops,
        })
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops.get(&r).copied().unwrap_or(0)
    }
}

pub struct Worker {
    /// One socket per rx queue of the wire interface; transmits go out on the first.
    pub wire: Vec<XskSocket>,
    /// One socket per rx queue of the tenant interface; transmits go out on the first.
    pub tenant: Vec<XskSocket>,
    replay: Arc<ReplayTable>,
    /// SA tables shared by the workers of a node, updatable while they run (`tables()`).
    tables: SaTables,
    // Shared by the workers of a node: read-only once they run (add_tenant before split).
    tenants: Arc<HashMap<u32, Tenant>>,
    /// (tenant, host address) -> MAC, learned from tenant traffic and ARP, per tenant,
    /// bounded and aged. Read for every decrypted packet without a lock; written once per
    /// batch from `pending`.
    macs: MacTable,
    pending: Pending,
    /// Outer fragments from the peers, until their datagram is whole. One table for all the
    /// workers: the fragments of a datagram may arrive on different queues (a NIC hashing
    /// the first fragment by its ports, the others by addresses only). Fragments are rare;
    /// the lock is taken per fragment only.
    reassembler: Arc<Mutex<Reassembler>>,
    /// Where reassembled IKE datagrams go (the IKE shell), once vpnd has bound it.
    pub ike_inbox: IkeInbox,
    /// IP MTU of the wire: encapsulated packets never exceed it.
    pub wire_mtu: usize,
    replies: Vec<Reply>,
    epoch: Instant,
    pub stats: WorkerStats,
}

/// What the inbound path needs besides the frame.
struct InCtx<'a> {
    replay: &'a ReplayTable,
    inbound: &'a InboundTable,
    tenants: &'a HashMap<u32, Tenant>,
    learned: &'a MacSnapshot,
    ike: &'a IkeInbox,
}

/// A datagram for the IKE shell: (local address, remote address, UDP payload), as its socket
/// would have received it.
pub type IkeDatagram = (SocketAddr, SocketAddr, Vec<u8>);

/// The IKE shell's queue, set once it is bound (the workers start before it). IKE messages
/// too big for one packet (certificates, many selectors) arrive as IP fragments, which the
/// XDP program hands to the workers with ESP's: reassembled, they go there.
#[derive(Clone, Debug, Default)]
pub struct IkeInbox(Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<IkeDatagram>>>);

impl IkeInbox {
    pub fn connect(&self, tx: tokio::sync::mpsc::Sender<IkeDatagram>) {
        let _ = self.0.set(tx);
    }

    /// Queues a datagram without blocking the worker; false if there is no shell or its
    /// queue is full.
    fn offer(&self, d: IkeDatagram) -> bool {
        self.0.get().is_some_and(|tx| tx.try_send(d).is_ok())
    }
}

impl Worker {
    pub fn new(wire: Vec<XskSocket>, tenant: Vec<XskSocket>, replay: Arc<ReplayTable>) -> Worker {
        assert!(
            !wire.is_empty() && !tenant.is_empty(),
            "a worker needs sockets on both sides"
        );
        Worker {
            wire,
            tenant,
            replay,
            tables: SaTables::new(),
            tenants: Arc::default(),
            macs: MacTable::new(MacLimits::default()),
            pending: Pending::default(),
            reassembler: Arc::new(Mutex::new(Reassembler::new(Limits::default()))),
            ike_inbox: IkeInbox::default(),
            wire_mtu: 1500,
            replies: Vec::new(),
            epoch: Instant::now(),
            stats: WorkerStats::default(),
        }
    }

    /// The node's SA tables: a handle the control plane keeps to install and remove SAs
    /// while the workers run (the same tables before and after `split`).
    pub fn tables(&self) -> SaTables {
        self.tables.clone()
    }

    /// Adds an inbound SA (any time; same as `tables().insert_inbound`).
    pub fn add_inbound(&mut self, st: InboundState) {
        self.tables.insert_inbound(st);
    }

    /// Adds an outbound SA at its slot (any time; same as `tables().insert_outbound`).
    pub fn add_outbound(&mut self, slot: u32, st: OutboundState) {
        self.tables.insert_outbound(slot, st);
    }

    /// Limits of the tenants' MAC tables (before `split`).
    pub fn set_mac_limits(&mut self, limits: MacLimits) {
        self.macs = MacTable::new(limits);
    }

    /// Adds a tenant (before `split`).
    pub fn add_tenant(&mut self, id: u32, t: Tenant) {
        Arc::get_mut(&mut self.tenants)
            .expect("add tenants before splitting the worker")
            .insert(id, t);
    }

    /// One worker per queue pair: worker `i` takes the sockets of queues `i`, `i + n`, ... on
    /// each side, with `n` the smaller queue count, so every worker can receive and transmit
    /// on both sides. The SA tables are shared; a replay window stays consistent because its
    /// updates go through `ReplayTable::accept`.
    pub fn split(self) -> Vec<Worker> {
        let n = self.wire.len().min(self.tenant.len());
        let mut wire: Vec<Vec<XskSocket>> = (0..n).map(|_| Vec::new()).collect();
        let mut tenant: Vec<Vec<XskSocket>> = (0..n).map(|_| Vec::new()).collect();
        for (i, s) in self.wire.into_iter().enumerate() {
            wire[i % n].push(s);
        }
        for (i, s) in self.tenant.into_iter().enumerate() {
            tenant[i % n].push(s);
        }
        wire.into_iter()
            .zip(tenant)
            .map(|(w, t)| Worker {
                wire: w,
                tenant: t,
                replay: self.replay.clone(),
                tables: self.tables.clone(),
                tenants: self.tenants.clone(),
                macs: self.macs.clone(),
                pending: Pending::default(),
                reassembler: self.reassembler.clone(),
                ike_inbox: self.ike_inbox.clone(),
                wire_mtu: self.wire_mtu,
                replies: Vec::new(),
                epoch: self.epoch,
                stats: WorkerStats::default(),
            })
            .collect()
    }

    /// One batch in each direction. Returns the number of frames taken from the rings.
    pub fn poll(&mut self) -> usize {
        self.poll_wire() + self.poll_tenant()
    }

    fn poll_wire(&mut self) -> usize {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let Worker {
            wire,
            tenant,
            replay,
            tables,
            tenants,
            macs,
            reassembler,
            ike_inbox,
            stats,
            epoch,
            ..
        } = self;
        // One snapshot of the SA table per batch: SAs installed or removed meanwhile show up
        // in the next one.
        let inbound = tables.load_inbound();
        let learned = macs.snapshot(epoch.elapsed().as_secs());
        let ctx = InCtx {
            replay,
            inbound: &inbound,
            tenants,
            learned: &learned,
            ike: ike_inbox,
        };
        let out = &mut tenant[0];
        let mut n = 0;
        for rx in wire.iter_mut() {
            n += rx.recv(BATCH, |f| {
                if f.meta.kind == META_KIND_FRAGMENT {
                    stats.fragments_seen += 1;
                }
                let r = wire_frame(
                    f.meta,
                    f.data,
                    now,
                    || reassembler.lock().unwrap_or_else(|e| e.into_inner()),
                    &ctx,
                    out,
                );
                match r {
                    Ok(Reassembled::Esp) => stats.decrypted += 1,
                    Ok(Reassembled::Ike) => stats.ike_reassembled += 1,
                    Ok(Reassembled::Incomplete) => {}
                    Err(r) => stats.drop(r),
                }
            });
        }
        let expired = reassembler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now);
        for _ in 0..expired {
            stats.drop(DropReason::FragmentTimeout);
        }
        stats.no_room(out.flush());
        n
    }

    fn poll_tenant(&mut self) -> usize {
        let Worker {
            wire,
            tenant,
            tables,
            tenants,
            macs,
            pending,
            stats,
            wire_mtu,
            replies,
            epoch,
            ..
        } = self;
        let outbound = tables.load_outbound();
        let now = epoch.elapsed().as_secs();
        let known = macs.snapshot(now);
        let mut learn = Learn {
            known: &known,
            pending: &mut *pending,
        };
        let out = &mut wire[0];
        let mut n = 0;
        for rx in tenant.iter_mut() {
            n += rx.recv(BATCH, |f| {
                if f.meta.kind == META_KIND_ARP {
                    match arp_frame(f.meta, f.data, tenants, &mut learn, replies) {
                        Ok(true) => stats.arp_replies += 1,
                        Ok(false) => stats.arp_ignored += 1,
                        Err(r) => stats.drop(r),
                    }
                    return;
                }
                match outbound_frame(
                    f.meta, f.data, &outbound, tenants, &mut learn, out, *wire_mtu, replies,
                ) {
                    Ok(Sent::Esp(1)) => stats.encrypted += 1,
                    Ok(Sent::Esp(k)) => {
                        stats.encrypted += 1;
                        stats.fragmented_before_encryption += 1;
                        stats.esp_fragments += k as u64;
                    }
                    Ok(Sent::TooBig) => stats.icmp_too_big += 1,
                    Err(r) => stats.drop(r),
                }
            });
        }
        stats.no_room(out.flush());
        stats.macs_refused += macs.commit(pending, now);
        // ICMP errors back toward the tenant hosts (rare: path MTU discovery).
        if !replies.is_empty() {
            let back = &mut tenant[0];
            for r in replies.drain(..) {
                let Some(t) = tenants.get(&r.tenant) else {
                    continue;
                };
                if !back.send(|buf| retag(t, r.host_mac, r.ethertype, &r.packet, buf)) {
                    stats.drop(DropReason::NoRoom);
                }
            }
            stats.no_room(back.flush());
        }
        n
    }

    /// Waits up to `timeout_ms` for frames on any socket.
    pub fn wait(&self, timeout_ms: i32) {
        let mut fds: Vec<libc::pollfd> = self
            .wire
            .iter()
            .chain(self.tenant.iter())
            .map(|s| libc::pollfd {
                fd: s.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    }
}

/// Where the inbound path writes tenant frames: the tenant-side AF_XDP socket, or a
/// fuzzer's buffer.
#[doc(hidden)]
pub trait TxRing {
    /// As [`XskSocket::send`]: `f` writes a frame into a free buffer and returns its length.
    fn send(&mut self, f: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool;
}

impl TxRing for XskSocket {
    fn send(&mut self, f: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        XskSocket::send(self, f)
    }
}

/// One frame from the wire side: a fragment into the reassembler (`reassembler` is called,
/// e.g. to take its lock, only then), anything else down the ESP path.
fn wire_frame<R: std::ops::DerefMut<Target = Reassembler>>(
    meta: XdpMeta,
    frame: &mut [u8],
    now: u64,
    reassembler: impl FnOnce() -> R,
    ctx: &InCtx<'_>,
    out: &mut impl TxRing,
) -> Result<Reassembled, DropReason> {
    if meta.kind == META_KIND_FRAGMENT {
        fragment(meta, frame, now, &mut reassembler(), ctx, out)
    } else {
        inbound_frame(meta, frame, ctx, out).map(|()| Reassembled::Esp)
    }
}

/// The worker's wire-side path for one frame and its metadata, without sockets: for the
/// fuzzer (`esp_inbound`), which has no AF_XDP rings. No MAC has been learned.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn receive_wire_frame(
    tables: &SaTables,
    replay: &ReplayTable,
    tenants: &HashMap<u32, Tenant>,
    reassembler: &mut Reassembler,
    now: u64,
    meta: XdpMeta,
    frame: &mut [u8],
    out: &mut impl TxRing,
) -> Result<Option<()>, DropReason> {
    let inbound = tables.load_inbound();
    let learned = super::macs::MacTable::default().snapshot(0);
    let ike = IkeInbox::default();
    let ctx = InCtx {
        replay,
        inbound: &inbound,
        tenants,
        learned: &learned,
        ike: &ike,
    };
    // Delivered (Some), or held or handed to IKE (None).
    wire_frame(meta, frame, now, || reassembler, &ctx, out)
        .map(|r| matches!(r, Reassembled::Esp).then_some(()))
}

fn check_meta(meta: &XdpMeta, kind: u8) -> Result<(), DropReason> {
    if meta.magic != META_MAGIC || meta.kind != kind {
        return Err(DropReason::MetadataFailed);
    }
    Ok(())
}

fn inbound_frame(
    meta: XdpMeta,
    frame: &mut [u8],
    ctx: &InCtx<'_>,
    out: &mut impl TxRing,
) -> Result<(), DropReason> {
    check_meta(&meta, META_KIND_ESP_IN)?;
    let st = ctx.inbound.get(&meta.slot).ok_or(DropReason::WorkerNoSa)?;
    let l3 = meta.l3_off as usize;
    let ip = frame.get_mut(l3..).ok_or(DropReason::TruncatedEsp)?;
    let esp_off = (meta.esp_off as usize)
        .checked_sub(l3)
        .ok_or(DropReason::MetadataFailed)?;
    esp_packet(st, ip, esp_off, ctx, out)
}

/// What became of a fragment.
enum Reassembled {
    Incomplete,
    /// The datagram was ESP: decrypted and sent on (also the outcome of a whole ESP packet).
    Esp,
    /// The datagram was IKE: handed to the IKE shell.
    Ike,
}

/// A fragment: into the reassembler; a completed datagram goes down the ESP path, or to the
/// IKE shell if it is IKE.
fn fragment(
    meta: XdpMeta,
    frame: &mut [u8],
    now: u64,
    reassembler: &mut Reassembler,
    ctx: &InCtx<'_>,
    out: &mut impl TxRing,
) -> Result<Reassembled, DropReason> {
    check_meta(&meta, META_KIND_FRAGMENT)?;
    let ip = frame
        .get(meta.l3_off as usize..)
        .ok_or(DropReason::FragmentMalformed)?;
    let mut pkt = match reassembler.push(ip, now) {
        FragResult::Incomplete => return Ok(Reassembled::Incomplete),
        FragResult::Dropped(d) => {
            return Err(match d {
                FragDrop::Malformed => DropReason::FragmentMalformed,
                FragDrop::Overlap => DropReason::FragmentOverlap,
                FragDrop::Duplicate => DropReason::FragmentDuplicate,
                FragDrop::Timeout => DropReason::FragmentTimeout,
                FragDrop::TooManyFragments
                | FragDrop::TooLarge
                | FragDrop::TableFull
                | FragDrop::MemoryLimit
                | FragDrop::SourceQuota => DropReason::FragmentLimit,
            });
        }
        FragResult::Complete(p) => p,
    };
    let (proto, l4) = l4_of(&pkt).ok_or(DropReason::FragmentMalformed)?;
    let esp_off = match proto {
        IPPROTO_ESP => l4,
        IPPROTO_UDP => {
            let dport = pkt.get(l4 + 2..l4 + 4).ok_or(DropReason::TruncatedUdp)?;
            let marker = pkt.get(l4 + 8..l4 + 12);
            if dport != [0x11, 0x94] || marker == Some(&[0, 0, 0, 0]) {
                // IKE (port 500, or 4500 behind the non-ESP marker) goes to the IKE shell;
                // other UDP from the peer is not ours.
                return match ike_datagram(&pkt, l4).map(|d| ctx.ike.offer(d)) {
                    Some(true) => Ok(Reassembled::Ike),
                    _ => Err(DropReason::FragmentNotEsp),
                };
            }
            l4 + 8
        }
        _ => return Err(DropReason::FragmentNotEsp),
    };
    let spi = pkt
        .get(esp_off..esp_off + 4)
        .ok_or(DropReason::TruncatedEsp)?;
    let spi = u32::from_be_bytes(spi.try_into().expect("4"));
    // By SPI: the XDP program could not look a fragment's SA up.
    let slot = ctx.inbound.slot_of_spi(spi).ok_or(DropReason::UnknownSpi)?;
    let st = ctx.inbound.get(&slot).ok_or(DropReason::WorkerNoSa)?;
    esp_packet(st, &mut pkt, esp_off, ctx, out).map(|()| Reassembled::Esp)
}

/// A reassembled UDP datagram to port 500 or 4500 as the IKE socket would receive it, if its
/// length and checksum hold (the kernel checks both before a socket sees a datagram).
fn ike_datagram(pkt: &[u8], l4: usize) -> Option<IkeDatagram> {
    let info = inner_info(pkt)?;
    let (src, dst): (IpAddr, IpAddr) = if info.v6 {
        let a: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
        let b: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
        (a.into(), b.into())
    } else {
        let a: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
        let b: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
        (a.into(), b.into())
    };
    let udp = pkt.get(l4..info.len)?;
    let h: [u8; 8] = udp.get(..8)?.try_into().ok()?;
    let be = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let (sport, dport, len) = (be(0), be(2), usize::from(be(4)));
    if len != udp.len() || !matches!(dport, 500 | 4500) {
        return None;
    }
    let csum = be(6);
    // A zero checksum means none, for IPv4 only (RFC 768, RFC 8200 8.1).
    if (csum != 0 || info.v6) && !crate::pktgen::frame::udp_checksum_ok(&src, &dst, udp) {
        return None;
    }
    Some((
        SocketAddr::new(dst, dport),
        SocketAddr::new(src, sport),
        udp[8..].to_vec(),
    ))
}

/// Protocol and L4 offset of a (reassembled) IP packet.
fn l4_of(p: &[u8]) -> Option<(u8, usize)> {
    let info = inner_info(p)?;
    if !info.v6 {
        return Some((p[9], (p[0] & 0x0f) as usize * 4));
    }
    let (mut next, mut off) = (p[6], 40);
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                next = *p.get(off)?;
                off += (*p.get(off + 1)? as usize + 1) * 8;
            }
            _ => break,
        }
    }
    Some((next, off))
}

/// The ESP path proper: `ip` starts at the outer IP header, ESP at `esp_off` in it.
fn esp_packet(
    st: &InboundState,
    ip: &mut [u8],
    esp_off: usize,
    ctx: &InCtx<'_>,
    out: &mut impl TxRing,
) -> Result<(), DropReason> {
    let outer = inner_info(ip).ok_or(DropReason::BadIpv4Header)?;
    let end = outer.len;
    if esp_off + 8 > end {
        return Err(DropReason::TruncatedEsp);
    }
    let seq_low = u32::from_be_bytes(ip[esp_off + 4..esp_off + 8].try_into().expect("4"));
    // Authoritative check: the window may have moved since the XDP pre-check.
    let seq = match ctx
        .replay
        .check(st.slot, seq_low)
        .map_err(|_| DropReason::SaStateMissing)?
    {
        Ok(s) => s,
        Err(vpn_common::ReplayError::TooOld) => return Err(DropReason::ReplayTooOld),
        Err(vpn_common::ReplayError::Duplicate) => return Err(DropReason::ReplayDuplicate),
        Err(vpn_common::ReplayError::Zero) => return Err(DropReason::ReplaySeqZero),
    };
    let d = st.sa.decapsulate(&mut ip[esp_off..end], seq)?;
    // A manual SA accepts only up to its durable replay mark (authenticated first, so a
    // forged sequence number cannot push the mark).
    st.sa.admit(seq)?;
    // Only an authenticated packet moves the window (RFC 4303 3.4.3); checked again under
    // the slot's writer flag, in case another worker accepted the same number meanwhile.
    match ctx
        .replay
        .accept(st.slot, seq)
        .map_err(|_| DropReason::SaStateMissing)?
    {
        Ok(_) => {}
        Err(vpn_common::ReplayError::TooOld) => return Err(DropReason::ReplayTooOld),
        Err(_) => return Err(DropReason::ReplayDuplicate),
    }
    let inner = &ip[esp_off + d.inner.start..esp_off + d.inner.end];
    st.sa.count(inner.len());
    let info = inner_info(inner).ok_or(DropReason::BadInnerPacket)?;
    if !allowed(&st.selectors, &info) {
        return Err(DropReason::PolicyMismatch);
    }
    let t = ctx.tenants.get(&st.tenant).ok_or(DropReason::WorkerNoSa)?;
    let host_mac = ctx
        .learned
        .get(st.tenant, &info.dst)
        .unwrap_or(t.default_host_mac);
    let ethertype: u16 = if info.v6 { 0x86dd } else { 0x0800 };
    let sent = out.send(|buf| retag(t, host_mac, ethertype, inner, buf));
    if sent {
        Ok(())
    } else {
        Err(DropReason::NoRoom)
    }
}

/// Writes the tenant frame for `inner` into `buf`: VLAN tag or VXLAN headers from the tenant's
/// link, the same source of truth the tenant-side XDP program uses to pop them.
fn retag(
    t: &Tenant,
    host_mac: [u8; 6],
    ethertype: u16,
    inner: &[u8],
    buf: &mut [u8],
) -> Option<usize> {
    let eth = |b: &mut [u8], dst: &[u8; 6], src: &[u8; 6], et: u16| {
        b[..6].copy_from_slice(dst);
        b[6..12].copy_from_slice(src);
        b[12..14].copy_from_slice(&et.to_be_bytes());
    };
    match &t.link {
        TenantLink::Untagged => {
            let n = ETH_LEN + inner.len();
            let b = buf.get_mut(..n)?;
            eth(b, &host_mac, &t.gateway_mac, ethertype);
            b[ETH_LEN..].copy_from_slice(inner);
            Some(n)
        }
        TenantLink::Vlan(vid) => {
            let n = ETH_LEN + 4 + inner.len();
            let b = buf.get_mut(..n)?;
            eth(b, &host_mac, &t.gateway_mac, 0x8100);
            b[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
            b[16..18].copy_from_slice(&ethertype.to_be_bytes());
            b[18..].copy_from_slice(inner);
            Some(n)
        }
        TenantLink::Vxlan {
            vni,
            local_vtep,
            remote_vtep,
            vtep_mac,
        } => {
            // Outer Ethernet + IPv4 + UDP + VXLAN (RFC 7348) + inner Ethernet + packet.
            let inner_eth = ETH_LEN + 20 + 8 + 8;
            let n = inner_eth + ETH_LEN + inner.len();
            let b = buf.get_mut(..n)?;
            eth(b, vtep_mac, &t.iface_mac, 0x0800);
            let udp_len = n - ETH_LEN - 20;
            // Source port from the inner addresses, for ECMP entropy (RFC 7348 5).
            let sport = 49152
                | (inner[12..20]
                    .iter()
                    .fold(0u16, |h, &x| h.rotate_left(5) ^ x as u16)
                    & 0x3fff);
            b[34..36].copy_from_slice(&sport.to_be_bytes());
            b[36..38].copy_from_slice(&VXLAN_PORT.to_be_bytes());
            b[38..40].copy_from_slice(&(udp_len as u16).to_be_bytes());
            b[40..42].copy_from_slice(&[0, 0]);
            b[42..46].copy_from_slice(&[0x08, 0, 0, 0]);
            b[46..50].copy_from_slice(&(vni << 8).to_be_bytes());
            eth(&mut b[inner_eth..], &host_mac, &t.gateway_mac, ethertype);
            b[inner_eth + ETH_LEN..].copy_from_slice(inner);
            write_ipv4_header(
                &mut b[ETH_LEN..ETH_LEN + 20],
                *local_vtep,
                *remote_vtep,
                IPPROTO_UDP,
                n - ETH_LEN,
                64,
                0,
                false,
                0,
            );
            Some(n)
        }
    }
}

/// What happened to one tenant packet.
enum Sent {
    /// Encrypted into this many ESP packets (more than one: fragmented before encryption).
    Esp(usize),
    /// Too big and not fragmentable: an ICMP error goes back to the sender.
    TooBig,
}

/// An ICMP error to send back toward a tenant host after the batch.
pub struct Reply {
    tenant: u32,
    host_mac: [u8; 6],
    ethertype: u16,
    packet: Vec<u8>,
}

#[allow(clippy::too_many_arguments)]
fn outbound_frame(
    meta: XdpMeta,
    frame: &mut [u8],
    outbound: &OutboundTable,
    tenants: &HashMap<u32, Tenant>,
    learn: &mut Learn<'_>,
    wire: &mut XskSocket,
    wire_mtu: usize,
    replies: &mut Vec<Reply>,
) -> Result<Sent, DropReason> {
    let (st, info, host_mac) = outbound_checked(meta, frame, outbound)?;
    // The return path's MAC, once the source is known to be the tenant's (by the SA).
    if tenants.contains_key(&meta.tenant) {
        learn.note(meta.tenant, info.src, host_mac);
    }
    let l3 = meta.l3_off as usize;
    let inner = &frame[l3..l3 + info.len];

    let wire_mtu = st.mtu.map_or(wire_mtu, |m| wire_mtu.min(m as usize));
    if st.sa.encapsulated_len(inner.len()) > wire_mtu {
        // The largest inner packet that still fits the wire once encapsulated.
        let mut fit = wire_mtu.saturating_sub(st.sa.encapsulated_len(0) - 3);
        while fit > 0 && st.sa.encapsulated_len(fit) > wire_mtu {
            fit -= 1;
        }
        if !info.v6 && !info.df {
            let mut n = 0;
            let mut err = None;
            fragment_v4(inner, fit, |f| match seal_one(st, f, wire) {
                Ok(()) => n += 1,
                Err(e) => err = Some(e),
            })
            .ok_or(DropReason::BadInnerPacket)?;
            return match err {
                Some(e) => Err(e),
                None => Ok(Sent::Esp(n)),
            };
        }
        let t = tenants.get(&meta.tenant).ok_or(DropReason::WorkerNoSa)?;
        let from = match info.dst {
            IpAddr::V4(_) => t.gateway_v4.map(IpAddr::V4),
            IpAddr::V6(_) => t.gateway_v6.map(IpAddr::V6),
        }
        .unwrap_or(info.dst);
        let mtu = fit.min(u16::MAX as usize) as u16;
        if let Some(packet) = too_big(inner, &info, mtu, from) {
            let ethertype = if info.v6 { 0x86dd } else { 0x0800 };
            replies.push(Reply {
                tenant: meta.tenant,
                host_mac,
                ethertype,
                packet,
            });
        }
        return Ok(Sent::TooBig);
    }
    seal_one(st, inner, wire).map(|()| Sent::Esp(1))
}

/// Where a batch's learning goes: `known` is the table as the batch began, `pending` what it
/// adds (`MacTable::commit` after the batch).
struct Learn<'a> {
    known: &'a MacSnapshot,
    pending: &'a mut Pending,
}

impl Learn<'_> {
    fn note(&mut self, tenant: u32, addr: IpAddr, mac: [u8; 6]) {
        self.pending.note(self.known, tenant, addr, mac);
    }
}

/// A tenant packet's SA, addresses and sender MAC, once its source is one the SA may carry
/// (the XDP program chose the SA by destination; without this check a tenant host could send
/// any source address, another tenant's subnet included, through the tunnel).
fn outbound_checked<'a>(
    meta: XdpMeta,
    frame: &[u8],
    outbound: &'a OutboundTable,
) -> Result<(&'a OutboundState, InnerInfo, [u8; 6]), DropReason> {
    check_meta(&meta, META_KIND_OUTBOUND)?;
    let st = outbound.get(&meta.slot).ok_or(DropReason::WorkerNoSa)?;
    let inner = frame
        .get(meta.l3_off as usize..)
        .ok_or(DropReason::BadInnerPacket)?;
    let info = inner_info(inner).ok_or(DropReason::BadInnerPacket)?;
    if !allowed(&st.selectors, &info) {
        return Err(DropReason::SourceNotInSelectors);
    }
    let host_mac: [u8; 6] = frame
        .get(6..12)
        .and_then(|m| m.try_into().ok())
        .ok_or(DropReason::BadInnerPacket)?;
    Ok((st, info, host_mac))
}

/// Answers an ARP request for the tenant's gateway address (RFC 826), learning the asker's
/// MAC if its address is in the tenant's subnets. Returns whether a reply was queued.
fn arp_frame(
    meta: XdpMeta,
    frame: &[u8],
    tenants: &HashMap<u32, Tenant>,
    learn: &mut Learn<'_>,
    replies: &mut Vec<Reply>,
) -> Result<bool, DropReason> {
    check_meta(&meta, META_KIND_ARP)?;
    let a = frame
        .get(meta.l3_off as usize..meta.l3_off as usize + 28)
        .ok_or(DropReason::BadInnerPacket)?;
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
    if a[..6] != [0, 1, 8, 0, 6, 4] {
        return Ok(false);
    }
    let op = u16::from_be_bytes([a[6], a[7]]);
    let sha: [u8; 6] = a[8..14].try_into().expect("6");
    let spa = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
    let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    let Some(t) = tenants.get(&meta.tenant) else {
        return Ok(false);
    };
    // Only the tenant's own addresses: a spoofed sender could otherwise redirect the return
    // traffic of any address (a remote one, another subnet's) to itself.
    let spa_ip = IpAddr::V4(spa);
    if t.local_subnets.iter().any(|p| p.contains(&spa_ip)) {
        learn.note(meta.tenant, spa_ip, sha);
    }
    if op != 1 || Some(tpa) != t.gateway_v4 {
        return Ok(false);
    }
    let mut r = Vec::with_capacity(28);
    r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    r.extend_from_slice(&t.gateway_mac);
    r.extend_from_slice(&tpa.octets());
    r.extend_from_slice(&sha);
    r.extend_from_slice(&spa.octets());
    replies.push(Reply {
        tenant: meta.tenant,
        host_mac: sha,
        ethertype: 0x0806,
        packet: r,
    });
    Ok(true)
}

/// Encapsulates one inner packet into a wire frame.
fn seal_one(st: &OutboundState, inner: &[u8], wire: &mut XskSocket) -> Result<(), DropReason> {
    let mut result = Ok(());
    let sent = wire.send(|buf| {
        buf.get_mut(..ETH_LEN)?;
        buf[..6].copy_from_slice(&st.dst_mac.get());
        buf[6..12].copy_from_slice(&st.src_mac);
        let et: u16 = if st.sa.outer.dst.is_ipv6() {
            0x86dd
        } else {
            0x0800
        };
        buf[12..14].copy_from_slice(&et.to_be_bytes());
        match st.sa.encapsulate(inner, &mut buf[ETH_LEN..]) {
            Ok(n) => Some(ETH_LEN + n),
            Err(r) => {
                result = Err(r);
                None
            }
        }
    });
    result?;
    if sent {
        Ok(())
    } else {
        Err(DropReason::NoRoom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::{Cipher, Outer, SaKey};
    use crate::pktgen::frame::udp_checksum;
    use vpn_common::meta::NO_SLOT;

    /// An IPv4/UDP datagram from 192.0.2.2:sport to 192.0.2.1:dport with a valid checksum.
    fn udp4(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = ([192, 0, 2, 2], [192, 0, 2, 1]);
        let mut udp = [sport.to_be_bytes(), dport.to_be_bytes()].concat();
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let c = udp_checksum(&IpAddr::from(src), &IpAddr::from(dst), &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let total = (p.len() + udp.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&udp);
        p
    }

    /// Issue 14 (low): reassembled IKE used to be dropped (`FragmentNotEsp`); it now reaches
    /// the IKE shell as its socket would have received it, and only if length and checksum
    /// hold.
    #[test]
    fn reassembled_ike_is_handed_over_as_a_socket_would_receive_it() {
        let ike = udp4(500, 500, b"an IKE message");
        let (local, remote, data) = ike_datagram(&ike, 20).expect("a valid IKE datagram");
        assert_eq!(local, "192.0.2.1:500".parse().unwrap());
        assert_eq!(remote, "192.0.2.2:500".parse().unwrap());
        assert_eq!(data, b"an IKE message");
        // NAT-T: the non-ESP marker stays, as on the socket (the endpoint strips it).
        let natt = udp4(4500, 4500, &[0, 0, 0, 0, 1, 2]);
        assert_eq!(ike_datagram(&natt, 20).unwrap().2, [0, 0, 0, 0, 1, 2]);
        // A flipped bit, a UDP length that lies, another port: not handed over.
        let mut bad = ike.clone();
        bad[30] ^= 1;
        assert!(ike_datagram(&bad, 20).is_none());
        let mut bad = ike.clone();
        bad[25] += 1;
        assert!(ike_datagram(&bad, 20).is_none());
        assert!(ike_datagram(&udp4(500, 53, b"dns"), 20).is_none());
        assert!(ike_datagram(&ike[..26], 20).is_none());
        // A full queue (or no shell yet) is a counted drop, never a block.
        let inbox = IkeInbox::default();
        assert!(!inbox.offer((local, remote, vec![])));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        inbox.connect(tx);
        assert!(inbox.offer((local, remote, vec![1])));
        assert!(!inbox.offer((local, remote, vec![2])));
        assert_eq!(rx.try_recv().unwrap().2, [1]);
    }

    fn prefix(s: &str) -> Prefix {
        crate::config::parse_prefix(s).expect("prefix")
    }

    fn meta(kind: u8, slot: u32) -> XdpMeta {
        XdpMeta {
            magic: META_MAGIC,
            kind,
            flags: 0,
            slot,
            tenant: 1,
            l3_off: ETH_LEN as u16,
            esp_off: 0,
        }
    }

    /// Ethernet (from `host`) + a minimal IPv4 header.
    fn ipv4_frame(host: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 0xfe];
        f.extend_from_slice(&host);
        f.extend_from_slice(&[8, 0, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&[0; 8]);
        f
    }

    #[test]
    fn outbound_source_outside_the_sas_selectors_is_dropped() {
        let key = SaKey::from_keymat(Cipher::Aes128Gcm16, &[7u8; 20]).unwrap();
        let outer = Outer {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            udp: None,
            ttl: 64,
        };
        let st = OutboundState {
            sa: Arc::new(OutboundSa::new(0x1000, &key, false, outer)),
            dst_mac: NextHop::new([2, 0, 0, 0, 0, 1]),
            src_mac: [2, 0, 0, 0, 0, 2],
            mtu: None,
            selectors: vec![Selector {
                src: prefix("10.1.0.0/24"),
                dst: prefix("10.2.0.0/24"),
            }],
        };
        let table: OutboundTable = [(10, Arc::new(st))].into();
        let m = meta(META_KIND_OUTBOUND, 10);
        let ok = ipv4_frame([2, 0, 0, 0, 0, 5], [10, 1, 0, 5], [10, 2, 0, 9]);
        let (_, info, mac) = outbound_checked(m, &ok, &table).expect("in the selectors");
        assert_eq!(
            (info.src, mac),
            ("10.1.0.5".parse().unwrap(), [2, 0, 0, 0, 0, 5])
        );
        // Another tenant's (or subnet's) address as the source: never encrypted.
        let spoofed = ipv4_frame([2, 0, 0, 0, 0, 5], [10, 9, 0, 5], [10, 2, 0, 9]);
        assert_eq!(
            outbound_checked(m, &spoofed, &table).err(),
            Some(DropReason::SourceNotInSelectors)
        );
    }

    #[test]
    fn arp_teaches_only_addresses_of_the_tenants_own_subnets() {
        let tenant = Tenant {
            link: TenantLink::Vlan(100),
            gateway_mac: [2, 0, 0, 0, 0, 0xfe],
            default_host_mac: [2, 0, 0, 0, 0, 0x99],
            iface_mac: [2, 0, 0, 0, 0, 0xee],
            gateway_v4: Some(Ipv4Addr::new(10, 1, 0, 1)),
            gateway_v6: None,
            local_subnets: vec![prefix("10.1.0.0/24")],
        };
        let tenants: HashMap<u32, Tenant> = [(1, tenant)].into();
        let macs = MacTable::new(MacLimits::default());
        let mut pending = Pending::default();
        let mut replies = Vec::new();
        let arp = |sha: [u8; 6], spa: [u8; 4]| {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&sha);
            f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&sha);
            f.extend_from_slice(&spa);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&[10, 1, 0, 1]);
            f
        };
        let attacker = [2, 0, 0, 0, 0, 0x66];
        let m = XdpMeta {
            slot: NO_SLOT,
            ..meta(META_KIND_ARP, 0)
        };
        for spa in [[10, 2, 0, 9], [10, 1, 1, 5], [10, 1, 0, 7]] {
            let known = macs.snapshot(0);
            let mut learn = Learn {
                known: &known,
                pending: &mut pending,
            };
            let f = arp(attacker, spa);
            assert_eq!(
                arp_frame(m, &f, &tenants, &mut learn, &mut replies),
                Ok(true)
            );
        }
        macs.commit(&mut pending, 0);
        let s = macs.snapshot(0);
        // A remote host's and another subnet's address: the return traffic of those would
        // have gone to the attacker.
        assert_eq!(s.get(1, &"10.2.0.9".parse().unwrap()), None);
        assert_eq!(s.get(1, &"10.1.1.5".parse().unwrap()), None);
        assert_eq!(s.get(1, &"10.1.0.7".parse().unwrap()), Some(attacker));
        assert_eq!(replies.len(), 3, "the gateway still answers each");
    }
}
