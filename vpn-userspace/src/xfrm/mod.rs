//! The kernel-offload crypto backend: negotiated CHILD_SAs become xfrm SAs and policies in
//! the kernel (and in the NIC, when the wire device offers ESP offload), instead of entries in
//! the AF_XDP workers. The XDP program keeps its role in front of them: it checks the SPI,
//! drops unknown SPIs and garbage early, counts per SA and per reason, and passes the ESP of
//! kernel SAs to the stack (`pass_kernel`).
//!
//! Lifecycle, the same guarantees as the AF_XDP backend (RFC 7296 2.8, make-before-break):
//!
//! 1. `install_inbound`: the connection's in and fwd policies (reference-counted per
//!    selector), then the inbound SA. The peer may use it from now on.
//! 2. `activate_outbound`: the outbound SA, then the out policies. Every SA of a connection
//!    shares the connection's reqid (as strongSwan does), and among valid SAs of one reqid the
//!    kernel picks the newest: adding the new outbound SA is the switch.
//! 3. `remove`: both SAs go; a policy goes with the last SA that used it.
//!
//! Everything this backend puts into the kernel carries a reqid of the instance's range
//! ([`reqid_range`]); at start and at stop [`KernelBackend::sweep`] deletes whatever of that
//! range is there, so a crashed vpnd leaves nothing behind after the next start or stop.

pub mod ethtool;
pub mod netlink;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, MutexGuard},
};

use anyhow::{Context, Result, bail};
pub use netlink::{Dir, Offload, PolicyInfo, PolicySpec, StateInfo, StateSpec, Xfrm};

use crate::{
    dataplane::{FirstError, worker::Prefix},
    esp::SaKey,
};

/// Priority of our policies (lower wins); strongSwan's default for tunnel policies with /24
/// selectors is in the 37xxxx range, so ours sit beside them.
pub const POLICY_PRIORITY: u32 = 375_000;

/// The reqids of one instance: `base..base + 0x10000`, `base` from a hash of the instance
/// name (never below 0x10000, above the small reqids strongSwan and libreswan hand out).
pub fn reqid_range(instance: &str) -> (u32, u32) {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in instance.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    let base = ((h % 0x7fff) + 1) << 16;
    (base, base + 0x1_0000)
}

/// What the kernel backend needs of a CHILD_SA pair.
pub struct KernelSaSpec<'a> {
    pub name: String,
    /// The connection (its reqid and policies).
    pub conn: usize,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub spi_in: u32,
    pub spi_out: u32,
    pub key_in: &'a SaKey,
    pub key_out: &'a SaKey,
    pub esn: bool,
    pub replay_window: u32,
    pub udp_encap: Option<(u16, u16)>,
    pub local_subnets: &'a [Prefix],
    pub peer_subnets: &'a [Prefix],
    /// The tenant's xfrm interface id: its SAs and policies bind to it, and its routing
    /// context is the namespace or VRF that interface lives in.
    pub if_id: Option<u32>,
}

/// A CHILD_SA pair in the kernel.
#[derive(Clone, Debug)]
pub struct KernelChild {
    pub name: String,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub spi_in: u32,
    pub spi_out: u32,
    pub reqid: u32,
    pub if_id: Option<u32>,
    /// (local subnet, peer subnet) pairs the policies cover.
    pub selectors: Vec<(Prefix, Prefix)>,
    pub active: bool,
    /// Whether the NIC took each SA (`XFRMA_OFFLOAD_DEV` accepted).
    pub offload_in: bool,
    pub offload_out: bool,
    key_out: SaKey,
    esn: bool,
    udp_encap: Option<(u16, u16)>,
}

/// Counters of a kernel CHILD_SA pair, from xfrm (`curlft`, stats, replay state).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub seq_out: u64,
    pub replay_top: u64,
    pub replay_dropped: u32,
    pub replay_window_dropped: u32,
    pub integrity_failed: u32,
}

/// NIC offload the backend asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OffloadMode {
    None,
    /// Crypto offload on this device (its ifindex), falling back to none if it refuses an SA.
    Crypto(u32),
}

type PolicyKey = (Prefix, Prefix, Dir, Option<u32>);

pub struct KernelBackend {
    /// Behind a lock so the counters can be read through `&self` (the operator's view).
    nl: Mutex<Xfrm>,
    range: (u32, u32),
    offload: OffloadMode,
    /// Policies installed, with the number of children using each, and their reqid.
    policies: HashMap<PolicyKey, (usize, u32)>,
    /// reqid of each connection.
    reqids: HashMap<usize, u32>,
    next_reqid: u32,
    /// Probed families (IPv4 outer, IPv6 outer).
    probed: [bool; 2],
}

impl KernelBackend {
    /// The xfrm socket of this namespace (or `netns`), leftovers of an earlier run of the
    /// instance swept away.
    pub fn open(instance: &str, netns: Option<&str>, offload: OffloadMode) -> Result<Self> {
        let nl = match netns {
            Some(n) => Xfrm::open_in_netns(n)?,
            None => Xfrm::open()?,
        };
        let range = reqid_range(instance);
        let mut b = KernelBackend {
            nl: Mutex::new(nl),
            range,
            offload,
            policies: HashMap::new(),
            reqids: HashMap::new(),
            next_reqid: range.0 + 1,
            probed: [false; 2],
        };
        let (states, policies) = b.sweep()?;
        if states + policies > 0 {
            tracing::info!(
                "vpnd: kernel backend: removed {states} SAs and {policies} policies a previous \
                 run of this instance left in the kernel"
            );
        }
        Ok(b)
    }

    fn nl(&self) -> MutexGuard<'_, Xfrm> {
        // A panic while holding it leaves the socket usable.
        self.nl.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn offload(&self) -> OffloadMode {
        self.offload
    }

    /// Makes sure this kernel can run an ESP SA of the given outer family with
    /// `rfc4106(gcm(aes))`, by adding (and deleting) a throw-away SA between documentation
    /// addresses. The error names what is missing.
    pub fn probe(&mut self, ipv6: bool) -> Result<()> {
        if self.probed[ipv6 as usize] {
            return Ok(());
        }
        let (src, dst): (IpAddr, IpAddr) = if ipv6 {
            ("2001:db8::1".parse()?, "2001:db8::2".parse()?)
        } else {
            ("192.0.2.1".parse()?, "192.0.2.2".parse()?)
        };
        let keymat = [0x5au8; 20];
        let spec = StateSpec {
            src,
            dst,
            spi: 0x0000_0100,
            reqid: self.range.1 - 1,
            keymat: &keymat,
            icv_bits: 128,
            esn: true,
            replay_window: 64,
            encap: None,
            offload: None,
            if_id: None,
            inbound: true,
        };
        let _ = self.nl().delete_state(dst, spec.spi);
        if let Err(e) = self.nl().add_state(&spec) {
            let (module, fam) = if ipv6 {
                ("esp6", "IPv6")
            } else {
                ("esp4", "IPv4")
            };
            let hint = if netlink::is_errno(&e, libc::EPROTONOSUPPORT) {
                format!(
                    "this kernel has no ESP for {fam} (CONFIG_INET{}_ESP, module {module})",
                    if ipv6 { "6" } else { "" }
                )
            } else if netlink::is_errno(&e, libc::ENOENT)
                || netlink::is_errno(&e, libc::ENOSYS)
                || netlink::is_errno(&e, libc::EINVAL)
            {
                "the kernel could not set up rfc4106(gcm(aes)): it needs the AES-GCM modules \
                 (aesni_intel or aes_generic, gcm, ghash, ctr, seqiv) and a default RNG \
                 (drbg, jitterentropy_rng with sha3_generic, sha512_generic)"
                    .to_string()
            } else {
                "the kernel refused a test ESP SA".to_string()
            };
            return Err(e.context(format!("kernel backend unavailable: {hint}")));
        }
        self.nl().delete_state(dst, spec.spi)?;
        self.probed[ipv6 as usize] = true;
        Ok(())
    }

    fn ours(&self, reqid: u32) -> bool {
        (self.range.0..self.range.1).contains(&reqid)
    }

    /// Deletes every SA and policy of this instance's reqid range; returns how many.
    pub fn sweep(&mut self) -> Result<(usize, usize)> {
        let mut states = 0;
        let all = self.nl().dump_states()?;
        for s in all {
            if self.ours(s.reqid) {
                let dst: IpAddr = s.dst.parse().context("SA address")?;
                if self.nl().delete_state(dst, s.spi)? {
                    states += 1;
                }
            }
        }
        let mut policies = 0;
        let all = self.nl().dump_policies()?;
        for p in all {
            if p.reqids.iter().any(|r| self.ours(*r)) && self.nl().delete_policy_key(&p.id)? {
                policies += 1;
            }
        }
        self.policies.clear();
        Ok((states, policies))
    }

    /// The SAs and policies of this instance now in the kernel (for the operator and tests).
    pub fn list(&self) -> Result<(Vec<StateInfo>, Vec<PolicyInfo>)> {
        let (lo, hi) = self.range;
        let s = self
            .nl()
            .dump_states()?
            .into_iter()
            .filter(|s| (lo..hi).contains(&s.reqid))
            .collect();
        let p = self
            .nl()
            .dump_policies()?
            .into_iter()
            .filter(|p| p.reqids.iter().any(|r| (lo..hi).contains(r)))
            .collect();
        Ok((s, p))
    }

    fn reqid(&mut self, conn: usize) -> Result<u32> {
        if let Some(r) = self.reqids.get(&conn) {
            return Ok(*r);
        }
        if self.next_reqid >= self.range.1 - 1 {
            bail!("kernel backend: out of reqids");
        }
        let r = self.next_reqid;
        self.next_reqid += 1;
        self.reqids.insert(conn, r);
        Ok(r)
    }

    fn add_state_offloaded(&mut self, mut s: StateSpec<'_>) -> Result<bool> {
        if let OffloadMode::Crypto(ifindex) = self.offload {
            s.offload = Some(Offload {
                ifindex,
                packet: false,
            });
            // Not `match self.nl().add_state(..)`: the lock guard would live through the
            // match, and the Ok arm's `self.nl()` would wait on it forever (a kernel that adds
            // the SA without the offload, as 7.3 does for a veth, took that arm).
            let added = self.nl().add_state(&s);
            match added {
                Ok(()) => {
                    // A device without xfrm offload operations is skipped silently by the
                    // kernel (the SA is added, not offloaded): believe only what it reports.
                    let taken = self
                        .nl()
                        .get_state(s.dst, s.spi)?
                        .is_some_and(|i| i.offload_ifindex == Some(ifindex));
                    if !taken {
                        tracing::warn!(
                            "vpnd: kernel backend: SA {:#010x} added, but the device did not \
                             take the offload; the kernel does its crypto",
                            s.spi
                        );
                    }
                    return Ok(taken);
                }
                Err(e) => {
                    tracing::warn!(
                        "vpnd: kernel backend: the wire device refused to offload SA \
                         {:#010x} ({e:#}); the kernel does its crypto",
                        s.spi
                    );
                    s.offload = None;
                }
            }
        }
        self.nl().add_state(&s)?;
        Ok(false)
    }

    fn policy_ref(&mut self, key: PolicyKey, spec: PolicySpec) -> Result<()> {
        if let Some((n, r)) = self.policies.get_mut(&key)
            && *r == spec.reqid
            && *n > 0
        {
            *n += 1;
            return Ok(());
        }
        self.nl().update_policy(&spec)?;
        let e = self.policies.entry(key).or_insert((0, spec.reqid));
        e.0 += 1;
        e.1 = spec.reqid;
        Ok(())
    }

    fn policy_unref(&mut self, key: &PolicyKey) -> Result<()> {
        let Some((n, _)) = self.policies.get_mut(key) else {
            return Ok(());
        };
        *n -= 1;
        if *n == 0 {
            self.policies.remove(key);
            self.nl().delete_policy(&key.0, &key.1, key.2, key.3)?;
        }
        Ok(())
    }

    /// Neutron's `hold` for a connection that went down: its out policies stay, blocking
    /// (`XFRM_POLICY_BLOCK`), so the protected subnets never leave in clear while the tunnel
    /// is down; the next CHILD_SA's policies replace them. Swept at stop like the rest.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &mut self,
        conn: usize,
        local: IpAddr,
        peer: IpAddr,
        local_ts: &[Prefix],
        peer_ts: &[Prefix],
        if_id: Option<u32>,
    ) -> Result<usize> {
        let reqid = self.reqid(conn)?;
        let mut n = 0;
        for l in local_ts {
            for p in peer_ts {
                if l.addr.is_ipv4() != p.addr.is_ipv4() {
                    continue;
                }
                let key = (*l, *p, Dir::Out, if_id);
                if self.policies.get(&key).is_some_and(|(c, _)| *c > 0) {
                    continue;
                }
                self.nl().update_policy(&PolicySpec {
                    src: *l,
                    dst: *p,
                    dir: Dir::Out,
                    priority: POLICY_PRIORITY,
                    block: true,
                    tmpl_src: local,
                    tmpl_dst: peer,
                    reqid,
                    if_id,
                })?;
                self.policies.insert(key, (0, reqid));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Step 1: in and fwd policies, then the inbound SA.
    pub fn install_inbound(&mut self, spec: &KernelSaSpec<'_>) -> Result<KernelChild> {
        if spec.local.is_ipv4() != spec.peer.is_ipv4() {
            bail!(
                "child {:?}: local and peer address families differ",
                spec.name
            );
        }
        if spec.peer_subnets.is_empty() || spec.local_subnets.is_empty() {
            bail!("child {:?}: no traffic selectors", spec.name);
        }
        self.probe(spec.peer.is_ipv6())?;
        let reqid = self.reqid(spec.conn)?;
        let selectors: Vec<(Prefix, Prefix)> = spec
            .local_subnets
            .iter()
            .flat_map(|l| spec.peer_subnets.iter().map(move |p| (*l, *p)))
            .filter(|(l, p)| l.addr.is_ipv4() == p.addr.is_ipv4())
            .collect();
        if selectors.is_empty() {
            bail!(
                "child {:?}: no local/peer subnet pair of one address family",
                spec.name
            );
        }
        let mut done: Vec<PolicyKey> = Vec::new();
        let mut result = Ok(());
        for (l, p) in &selectors {
            for dir in [Dir::In, Dir::Fwd] {
                let key = (*p, *l, dir, spec.if_id);
                let ps = PolicySpec {
                    src: *p,
                    dst: *l,
                    dir,
                    priority: POLICY_PRIORITY,
                    block: false,
                    tmpl_src: spec.peer,
                    tmpl_dst: spec.local,
                    reqid,
                    if_id: spec.if_id,
                };
                match self.policy_ref(key, ps) {
                    Ok(()) => done.push(key),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        let keymat = spec.key_in.keymat();
        let offload_in = result.and_then(|()| {
            self.add_state_offloaded(StateSpec {
                src: spec.peer,
                dst: spec.local,
                spi: spec.spi_in,
                reqid,
                keymat: &keymat,
                icv_bits: 128,
                esn: spec.esn,
                replay_window: spec.replay_window,
                encap: spec.udp_encap.map(|(ours, theirs)| (theirs, ours)),
                offload: None,
                if_id: spec.if_id,
                inbound: true,
            })
        });
        let offload_in = match offload_in {
            Ok(o) => o,
            Err(e) => {
                for k in &done {
                    let _ = self.policy_unref(k);
                }
                return Err(e.context(format!("installing the inbound SA of {:?}", spec.name)));
            }
        };
        Ok(KernelChild {
            name: spec.name.clone(),
            local: spec.local,
            peer: spec.peer,
            spi_in: spec.spi_in,
            spi_out: spec.spi_out,
            reqid,
            if_id: spec.if_id,
            selectors,
            active: false,
            offload_in,
            offload_out: false,
            key_out: spec.key_out.clone(),
            esn: spec.esn,
            udp_encap: spec.udp_encap,
        })
    }

    /// Step 2: the outbound SA (the kernel switches to it: newest of the reqid), then the out
    /// policies. Idempotent.
    pub fn activate_outbound(&mut self, c: &mut KernelChild) -> Result<()> {
        if c.active {
            return Ok(());
        }
        let keymat = c.key_out.keymat();
        c.offload_out = self
            .add_state_offloaded(StateSpec {
                src: c.local,
                dst: c.peer,
                spi: c.spi_out,
                reqid: c.reqid,
                keymat: &keymat,
                icv_bits: 128,
                esn: c.esn,
                replay_window: 0,
                encap: c.udp_encap,
                offload: None,
                if_id: c.if_id,
                inbound: false,
            })
            .with_context(|| format!("installing the outbound SA of {:?}", c.name))?;
        for (l, p) in c.selectors.clone() {
            let key = (l, p, Dir::Out, c.if_id);
            self.policy_ref(
                key,
                PolicySpec {
                    src: l,
                    dst: p,
                    dir: Dir::Out,
                    priority: POLICY_PRIORITY,
                    block: false,
                    tmpl_src: c.local,
                    tmpl_dst: c.peer,
                    reqid: c.reqid,
                    if_id: c.if_id,
                },
            )
            .with_context(|| format!("out policy {l:?} -> {p:?} of {:?}", c.name))?;
        }
        c.active = true;
        Ok(())
    }

    /// Step 3: both SAs, then each policy this was the last user of. Everything is
    /// attempted; the first error is returned.
    pub fn remove(&mut self, c: KernelChild) -> Result<()> {
        let mut errs = FirstError::default();
        if c.active {
            for (l, p) in &c.selectors {
                errs.note(self.policy_unref(&(*l, *p, Dir::Out, c.if_id)));
            }
            errs.note(self.nl().delete_state(c.peer, c.spi_out).map(|_| ()));
        }
        errs.note(self.nl().delete_state(c.local, c.spi_in).map(|_| ()));
        for (l, p) in &c.selectors {
            for dir in [Dir::In, Dir::Fwd] {
                errs.note(self.policy_unref(&(*p, *l, dir, c.if_id)));
            }
        }
        errs.result()
            .with_context(|| format!("removing kernel child {:?}", c.name))
    }

    /// The kernel's counters of a child.
    pub fn stats(&self, c: &KernelChild) -> Result<KernelStats> {
        let mut s = KernelStats::default();
        if let Some(i) = self.nl().get_state(c.local, c.spi_in)? {
            s.packets_in = i.packets;
            s.bytes_in = i.bytes;
            s.replay_top = i.seq;
            s.replay_dropped = i.replay_dropped;
            s.replay_window_dropped = i.replay_window_dropped;
            s.integrity_failed = i.integrity_failed;
        }
        if c.active
            && let Some(o) = self.nl().get_state(c.peer, c.spi_out)?
        {
            s.packets_out = o.packets;
            s.bytes_out = o.bytes;
            s.seq_out = o.oseq;
        }
        Ok(s)
    }
}

impl Drop for KernelBackend {
    /// Nothing of ours stays in the kernel after vpnd stops.
    fn drop(&mut self) {
        match self.sweep() {
            Ok((s, p)) if s + p > 0 => {
                tracing::info!("vpnd: kernel backend: removed {s} SAs and {p} policies at exit")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("vpnd: kernel backend: cleaning up at exit: {e:#}"),
        }
    }
}
