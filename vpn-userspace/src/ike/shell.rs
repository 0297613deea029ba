//! The thin tokio shell around the sans-IO core: UDP sockets on ports 500 and 4500 of each
//! local address, the core's timers, and its events applied to the data plane through
//! [`SaSink`]. All protocol decisions stay in [`Endpoint`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{net::UdpSocket, sync::mpsc, time::Instant as TokioInstant};

use super::endpoint::{ChildId, ChildSa, ConnId, ConnStatus, Endpoint, Event, Stats};
use crate::{
    control::{Pending as CtlRequest, RekeyWhat, Request, Response},
    esp::Cipher,
    vpnaas::ResolvedConn,
};

/// Per-CHILD_SA traffic as the data plane counts it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildUsage {
    /// Both directions together (lifetimes count both).
    pub packets: u64,
    pub bytes: u64,
    /// Last outbound sequence number used.
    pub seq_out: u64,
    /// Packets received (the peer is alive).
    pub packets_in: u64,
}

/// Where negotiated SAs go: the AF_XDP data plane in vpnd, a recorder in tests.
pub trait SaSink {
    fn install_inbound(&mut self, sa: ChildSa) -> Result<()>;
    fn activate_outbound(&mut self, conn: ConnId, child: ChildId) -> Result<()>;
    fn remove(&mut self, conn: ConnId, child: ChildId) -> Result<()>;
    fn usage(&self, child: ChildId) -> Option<ChildUsage>;
    /// The connection went down (SAs already removed): e.g. keep discarding its traffic.
    fn conn_down(&mut self, _conn: ConnId, _hold: bool) {}
    /// A connection added by a reload (ids are handed out in order).
    fn add_conn(&mut self, _conn: ConnId, _rc: &ResolvedConn) {}
    /// Data-plane facts about a CHILD_SA, for the operator.
    fn details(&self, _child: ChildId) -> Option<ChildDetails> {
        None
    }
}

/// What the data plane knows about a CHILD_SA.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChildDetails {
    /// "afxdp" or "kernel".
    pub backend: String,
    /// NIC offload of a kernel SA pair: "none", "crypto" (both), "crypto-in", "crypto-out".
    pub offload: String,
    /// The kernel's own counters of a kernel SA pair (xfrm `curlft` and stats).
    pub xfrm: Option<crate::xfrm::KernelStats>,
    pub tenant: u32,
    pub slot_in: u32,
    pub slot_out: u32,
    pub active: bool,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub seq_out: u64,
    pub replay_top: u64,
}

/// Static facts about the daemon, for `vpnctl status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DaemonInfo {
    pub instance: String,
    pub pid: u32,
    pub wire: String,
    pub tenant_interfaces: Vec<String>,
    pub xdp_mode: String,
    /// The XDP metadata carrier: "adjust_meta" or "shim".
    pub xdp_carrier: String,
    pub workers: usize,
    /// The AF_XDP workers' counters (none on a kernel-backend-only node).
    #[serde(skip)]
    pub worker_stats: Option<crate::dataplane::worker::StatsBoard>,
}

/// Re-reads the configuration for a reload (SIGHUP, `vpnctl reload`).
pub type Reloader = Box<dyn FnMut() -> Result<Vec<ResolvedConn>> + Send>;

/// What the operator sees of a connection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnInfo {
    pub name: String,
    pub status: String,
    pub reason: String,
    pub children: Vec<ChildInfo>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ChildInfo {
    pub id: ChildId,
    pub spi_in: u32,
    pub spi_out: u32,
}

/// Requests from the operator (vpnctl, signals).
#[derive(Debug)]
pub enum Command {
    Up(ConnId),
    Down(ConnId),
    RekeyChild(ConnId),
    RekeyIke(ConnId),
    RekeyAllChildren,
    RekeyAllIke,
    Reload,
}

/// Warnings a peer, or anyone spoofing one, can cause over and over: at most [`LogLimit::BURST`]
/// lines per kind and connection in each [`LogLimit::WINDOW`]; the first line let through
/// after a pause says how many were held back.
#[derive(Default)]
struct LogLimit {
    quotas: HashMap<(Option<ConnId>, &'static str), Quota>,
}

struct Quota {
    start: std::time::Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    const BURST: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(60);

    /// None: hold this line back. Some(suffix): log it, with the suffix appended.
    fn admit(
        &mut self,
        conn: Option<ConnId>,
        kind: &'static str,
        now: std::time::Instant,
    ) -> Option<String> {
        let q = self.quotas.entry((conn, kind)).or_insert(Quota {
            start: now,
            used: 0,
            suppressed: 0,
        });
        if now >= q.start + Self::WINDOW {
            q.start = now;
            q.used = 0;
        }
        if q.used >= Self::BURST {
            q.suppressed += 1;
            return None;
        }
        q.used += 1;
        Some(match std::mem::take(&mut q.suppressed) {
            0 => String::new(),
            n => format!(" ({n} similar suppressed)"),
        })
    }
}

pub struct Shell<S: SaSink> {
    pub ep: Endpoint,
    pub sink: S,
    sockets: HashMap<SocketAddr, Arc<UdpSocket>>,
    rx: mpsc::Receiver<(SocketAddr, SocketAddr, Vec<u8>)>,
    tx: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
    epoch_std: std::time::Instant,
    last_in: HashMap<ChildId, u64>,
    /// Shared with the control socket.
    pub info: Arc<Mutex<Vec<ConnInfo>>>,
    /// Where the connections' state is written (JSON) after every change, for operators
    /// and scripts.
    pub status_file: Option<std::path::PathBuf>,
    pub daemon: DaemonInfo,
    pub reloader: Option<Reloader>,
    /// Per connection: tenant and replay window (beyond the core's view).
    pub meta: Vec<(u32, u32)>,
    started: std::time::Instant,
    log_limit: LogLimit,
}

impl<S: SaSink> Shell<S> {
    /// Binds ports 500 and 4500 (as configured) on every connection's local address.
    pub async fn bind(ep: Endpoint, sink: S) -> Result<Shell<S>> {
        let (tx, rx) = mpsc::channel(1024);
        let mut sockets = HashMap::new();
        for c in 0..ep.conn_count() {
            Self::bind_local(&ep, &mut sockets, &tx, ep.conn(c).local).await?;
        }
        Self::finish(ep, sink, sockets, tx, rx)
    }

    /// Sets `UDP_ENCAP_ESPINUDP` on every NAT-T socket: the kernel backend's SAs then take
    /// ESP in UDP/4500 from them, IKE still reaches us.
    pub fn enable_kernel_udp_encap(&self) -> Result<()> {
        let natt = self.ep.settings().natt_port;
        for (addr, sock) in &self.sockets {
            if addr.port() == natt {
                crate::xfrm::netlink::set_udp_encap(sock.as_ref())
                    .with_context(|| format!("NAT-T socket {addr}"))?;
            }
        }
        Ok(())
    }

    /// Where the AF_XDP workers put IKE messages that arrived as IP fragments (reassembled):
    /// the queue the sockets feed.
    pub fn datagram_sender(&self) -> mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.tx.clone()
    }

    /// Sockets on the IKE and NAT-T ports of one local address (once).
    async fn bind_local(
        ep: &Endpoint,
        sockets: &mut HashMap<SocketAddr, Arc<UdpSocket>>,
        tx: &mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
        local: std::net::IpAddr,
    ) -> Result<()> {
        let ports = [ep.settings().ike_port, ep.settings().natt_port];
        {
            for port in ports {
                let addr = SocketAddr::new(local, port);
                if sockets.contains_key(&addr) {
                    continue;
                }
                let sock = Arc::new(
                    UdpSocket::bind(addr)
                        .await
                        .with_context(|| format!("binding IKE socket {addr}"))?,
                );
                sockets.insert(addr, sock.clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        match sock.recv_from(&mut buf).await {
                            Ok((n, from)) => {
                                if tx.send((addr, from, buf[..n].to_vec())).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                // ICMP errors surface here (ECONNREFUSED); keep going.
                                if e.kind() != std::io::ErrorKind::ConnectionRefused {
                                    tracing::warn!("vpnd: IKE socket {addr}: {e}");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                    }
                });
            }
        }
        Ok(())
    }

    /// A shell without IKE sockets (nothing bound, nothing received): the fuzzer drives its
    /// control requests through [`Shell::control`].
    #[doc(hidden)]
    pub fn unbound(ep: Endpoint, sink: S) -> Result<Shell<S>> {
        let (tx, rx) = mpsc::channel(1);
        Self::finish(ep, sink, HashMap::new(), tx, rx)
    }

    fn finish(
        ep: Endpoint,
        sink: S,
        sockets: HashMap<SocketAddr, Arc<UdpSocket>>,
        tx: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
        rx: mpsc::Receiver<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) -> Result<Shell<S>> {
        let info = Arc::new(Mutex::new(
            (0..ep.conn_count())
                .map(|c| ConnInfo {
                    name: ep.conn(c).name.clone(),
                    status: "DOWN".into(),
                    reason: "not started".into(),
                    children: vec![],
                })
                .collect(),
        ));
        Ok(Shell {
            ep,
            sink,
            sockets,
            rx,
            tx,
            epoch_std: std::time::Instant::now(),
            last_in: HashMap::new(),
            info,
            status_file: None,
            daemon: DaemonInfo::default(),
            reloader: None,
            meta: Vec::new(),
            started: std::time::Instant::now(),
            log_limit: LogLimit::default(),
        })
    }

    fn now(&self) -> std::time::Instant {
        std::time::Instant::now().max(self.epoch_std)
    }

    /// The operator's view of the connections. A panic caught while it was held (see
    /// [`Shell::guarded`]) leaves it poisoned; what it holds is still the best we have.
    fn info(&self) -> std::sync::MutexGuard<'_, Vec<ConnInfo>> {
        self.info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one step of the core (a datagram, the timers, the data-plane counters, one
    /// event) as the last line of defence: a panic there is a bug, and unwinding the IKE task
    /// would take every tenant's tunnels down with it. It is caught, counted (`ike panics` in
    /// `vpnctl status`) and logged, and vpnd carries on; the core may have applied that one
    /// input halfway, which its timers and the peer's retransmissions mend.
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut Self)) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if let Err(p) = r {
            self.ep.stats.panics += 1;
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(
                "vpnd: IKE: panic while handling {what} ({msg}): caught, vpnd carries on; this is a bug, please report it"
            );
        }
    }

    /// A datagram from the queue: from a socket, or from a worker (IKE that arrived in IP
    /// fragments). A worker's may name any destination its sender chose: only our sockets'
    /// addresses are served.
    fn dequeued(&mut self, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        if !self.sockets.contains_key(&local) {
            self.ep.stats.dropped_no_conn += 1;
            return;
        }
        self.receive(local, remote, data);
    }

    /// One datagram from the network, into the core.
    fn receive(&mut self, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        let now = self.now();
        self.guarded("a datagram", |s| s.ep.handle(now, local, remote, data));
    }

    /// Applies the core's events, then sends what it queued. In this order: the data plane
    /// must hold a new inbound SA before the message that lets the peer use it leaves (the
    /// CREATE_CHILD_SA response), and must have switched outbound before the Delete of the
    /// old SA does (the peer switches on it). Sending first raced the kernel backend, whose
    /// netlink install takes milliseconds: the peer's first packets on the new SA were
    /// dropped as an unknown SPI.
    async fn flush(&mut self) {
        while let Some(e) = self.ep.poll_event() {
            self.guarded("an event", |s| s.apply(e));
        }
        while let Some(t) = self.ep.poll_transmit() {
            match self.sockets.get(&t.src) {
                Some(s) => {
                    if let Err(e) = s.send_to(&t.data, t.dst).await
                        && let Some(more) = self.log_limit.admit(None, "send", self.now())
                    {
                        tracing::warn!("vpnd: IKE send {} -> {}: {e}{more}", t.src, t.dst);
                    }
                }
                None => tracing::info!("vpnd: no IKE socket for {}", t.src),
            }
        }
        while let Some(e) = self.ep.poll_event() {
            self.guarded("an event", |s| s.apply(e));
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::InstallInbound(sa) => {
                let (conn, id, spi_in, spi_out) = (sa.conn, sa.id, sa.spi_in, sa.spi_out);
                let name = self.ep.conn(conn).name.clone();
                match self.sink.install_inbound(sa) {
                    Ok(()) => tracing::info!(
                        "vpnd: conn {name}: CHILD_SA {id} inbound installed (in {spi_in:#010x}, out {spi_out:#010x})"
                    ),
                    Err(e) => {
                        tracing::warn!("vpnd: conn {name}: installing CHILD_SA {id} failed: {e:#}")
                    }
                }
            }
            Event::ActivateOutbound { conn, child } => {
                let name = self.ep.conn(conn).name.clone();
                match self.sink.activate_outbound(conn, child) {
                    Ok(()) => {
                        tracing::info!(
                            "vpnd: conn {name}: CHILD_SA {child} carries outbound traffic"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(
                            "vpnd: conn {name}: activating CHILD_SA {child} failed: {e:#}"
                        )
                    }
                }
            }
            Event::Remove { conn, child } => {
                self.last_in.remove(&child);
                let name = self.ep.conn(conn).name.clone();
                match self.sink.remove(conn, child) {
                    Ok(()) => tracing::info!("vpnd: conn {name}: CHILD_SA {child} removed"),
                    Err(e) => {
                        tracing::warn!("vpnd: conn {name}: removing CHILD_SA {child} failed: {e:#}")
                    }
                }
            }
            Event::Status {
                conn,
                status,
                reason,
            } => {
                let name = self.ep.conn(conn).name.clone();
                let s = match status {
                    ConnStatus::Active => "ACTIVE",
                    ConnStatus::Down => "DOWN",
                    ConnStatus::Connecting => "CONNECTING",
                };
                if status != ConnStatus::Down {
                    tracing::info!(conn = %name, status = s, "vpnd: conn {name}: {s}: {reason}");
                } else if let Some(more) = self.log_limit.admit(Some(conn), "down", self.now()) {
                    tracing::warn!(conn = %name, status = s, "vpnd: conn {name}: {s}: {reason}{more}");
                }
                // Down again with another reason: the data plane is already down.
                let was_down = self.info()[conn].status == "DOWN";
                if status == ConnStatus::Down && !was_down {
                    let hold = self.ep.conn(conn).dpd.action == super::conn::DpdAction::Hold;
                    self.sink.conn_down(conn, hold);
                }
                let mut info = self.info();
                info[conn].status = s.into();
                info[conn].reason = reason;
            }
            Event::Warning { conn, message } => {
                let Some(more) = self.log_limit.admit(conn, "warning", self.now()) else {
                    return;
                };
                match conn.map(|c| self.ep.conn(c).name.clone()) {
                    Some(name) => tracing::warn!("vpnd: conn {name}: {message}{more}"),
                    None => tracing::warn!("vpnd: IKE: {message}{more}"),
                }
                return;
            }
        }
        let mut info = self.info();
        for (c, i) in info.iter_mut().enumerate() {
            i.children = self
                .ep
                .conn_children(c)
                .into_iter()
                .map(|(id, spi_in, spi_out)| ChildInfo {
                    id,
                    spi_in,
                    spi_out,
                })
                .collect();
        }
        if let Some(path) = &self.status_file {
            let tmp = path.with_extension("tmp");
            let body = serde_json::to_vec_pretty(&*info).unwrap_or_default();
            if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::warn!("vpnd: writing {}: {e}", path.display());
            }
        }
    }

    /// Feeds data-plane counters to the core: lifetimes by volume, liveness for DPD.
    fn poll_usage(&mut self) {
        let now = self.now();
        for c in 0..self.ep.conn_count() {
            for (id, _, _) in self.ep.conn_children(c) {
                let Some(u) = self.sink.usage(id) else {
                    continue;
                };
                let last = self.last_in.insert(id, u.packets_in).unwrap_or(0);
                if u.packets_in > last {
                    self.ep.child_activity(id, now);
                }
                self.ep.child_usage(id, u.packets, u.bytes, u.seq_out, now);
            }
        }
    }

    pub async fn command(&mut self, c: Command) -> Result<String> {
        let now = self.now();
        if let Command::Up(id) | Command::Down(id) | Command::RekeyChild(id) | Command::RekeyIke(id) =
            c
            && self.ep.is_removed(id)
        {
            return Ok(String::new());
        }
        match c {
            Command::Up(id) => self.ep.set_admin_up(id, true, now),
            Command::Down(id) => self.ep.set_admin_up(id, false, now),
            Command::RekeyChild(id) => {
                for (child, _, _) in self.ep.conn_children(id) {
                    self.ep.rekey_child(child, now);
                }
            }
            Command::RekeyIke(id) => self.ep.rekey_ike(id, now),
            Command::RekeyAllChildren | Command::RekeyAllIke => {
                for id in 0..self.ep.conn_count() {
                    if self.ep.is_removed(id) {
                        continue;
                    }
                    if matches!(c, Command::RekeyAllIke) {
                        self.ep.rekey_ike(id, now);
                    } else {
                        for (child, _, _) in self.ep.conn_children(id) {
                            self.ep.rekey_child(child, now);
                        }
                    }
                }
            }
            Command::Reload => return self.reload().await,
        }
        Ok(String::new())
    }

    /// Applies a changed configuration as a diff: new connections come up, removed ones are
    /// deleted (IKE Delete), changed ones are replaced, untouched ones keep running.
    pub async fn reload(&mut self) -> Result<String> {
        let reloader = self
            .reloader
            .as_mut()
            .context("this vpnd cannot reload (no configuration file)")?;
        let new = reloader()?;
        let now = self.now();
        let (mut kept, mut removed, mut added, mut changed) = (0, 0, 0, 0);
        let mut fresh = vec![];
        for rc in new {
            match self.ep.conn_by_name(&rc.conn.name) {
                Some(id) => {
                    let old = self.ep.conn(id);
                    let same = format!("{old:?}") == format!("{:?}", rc.conn)
                        && old.psk == rc.conn.psk
                        && self.meta.get(id) == Some(&(rc.tenant, rc.replay_window));
                    if same {
                        kept += 1;
                        fresh.push(id);
                    } else {
                        self.ep.remove_conn(id, now);
                        changed += 1;
                        fresh.push(self.add(rc, now).await?);
                    }
                }
                None => {
                    added += 1;
                    fresh.push(self.add(rc, now).await?);
                }
            }
        }
        for id in 0..self.ep.conn_count() {
            if !self.ep.is_removed(id) && !fresh.contains(&id) {
                self.ep.remove_conn(id, now);
                removed += 1;
            }
        }
        let msg = format!(
            "reloaded: {added} added, {removed} removed, {changed} replaced, {kept} unchanged"
        );
        tracing::info!("vpnd: {msg}");
        Ok(msg)
    }

    async fn add(&mut self, rc: ResolvedConn, now: std::time::Instant) -> Result<ConnId> {
        Self::bind_local(&self.ep, &mut self.sockets, &self.tx, rc.conn.local).await?;
        let id = self.ep.add_conn(rc.conn.clone());
        self.sink.add_conn(id, &rc);
        if self.meta.len() <= id {
            self.meta.resize(id + 1, (0, 0));
        }
        self.meta[id] = (rc.tenant, rc.replay_window);
        self.info().push(ConnInfo {
            name: rc.conn.name.clone(),
            status: "DOWN".into(),
            reason: "added by reload".into(),
            children: vec![],
        });
        tracing::info!(
            "vpnd: conn {}: added: {} -> {}",
            rc.conn.name,
            rc.conn.local,
            rc.conn.peer
        );
        if rc.conn.admin_up && rc.conn.initiator == super::conn::Initiator::BiDirectional {
            self.ep.initiate(id, now);
        }
        Ok(id)
    }

    /// Answers one control-socket request.
    #[doc(hidden)]
    pub async fn control(&mut self, req: Request) -> Response {
        let now = self.now();
        let by_name = |ep: &Endpoint, name: &str| {
            ep.conn_by_name(name)
                .ok_or_else(|| format!("no connection named {name:?}"))
        };
        match req {
            Request::Status => {
                let live: Vec<ConnId> = (0..self.ep.conn_count())
                    .filter(|c| !self.ep.is_removed(*c))
                    .collect();
                let active = live
                    .iter()
                    .filter(|c| self.ep.conn_status(**c) == ConnStatus::Active)
                    .count();
                let s = &self.ep.stats;
                Response::ok(serde_json::json!({
                    "instance": self.daemon.instance,
                    "pid": self.daemon.pid,
                    "uptime_secs": self.started.elapsed().as_secs(),
                    "wire": self.daemon.wire,
                    "tenant_interfaces": self.daemon.tenant_interfaces,
                    "xdp_mode": self.daemon.xdp_mode,
                    "xdp_carrier": self.daemon.xdp_carrier,
                    "workers": self.daemon.workers,
                    "connections": live.len(),
                    "active": active,
                    "ike": {
                        "received": s.received, "sent": s.sent, "retransmits": s.retransmits,
                        "dropped_malformed": s.dropped_malformed,
                        "dropped_integrity": s.dropped_integrity,
                        "dropped_unknown_spi": s.dropped_unknown_spi,
                        "dropped_no_conn": s.dropped_no_conn,
                        "dropped_unexpected": s.dropped_unexpected,
                        "cookies_sent": s.cookies_sent, "ike_established": s.ike_established,
                        "child_established": s.child_established,
                        "child_rekeyed": s.child_rekeyed, "ike_rekeyed": s.ike_rekeyed,
                        "auth_failed": s.auth_failed, "dpd_dead": s.dpd_dead,
                        "rejected_ke": s.rejected_ke,
                        "encode_errors": s.encode_errors,
                        "ts_over_limit": s.ts_over_limit, "panics": s.panics,
                    },
                    "worker": self.daemon.worker_stats.as_ref().map(|b| b.total().to_json()),
                    "limits": self.ep.limits_status(),
                }))
            }
            Request::ConnList => {
                let info = self.info().clone();
                let mut out = vec![];
                for (id, i) in info.iter().enumerate() {
                    if self.ep.is_removed(id) {
                        continue;
                    }
                    let c = self.ep.conn(id);
                    let ikes: Vec<serde_json::Value> = self
                        .ep
                        .ike_views(id, now)
                        .into_iter()
                        .map(|v| {
                            serde_json::json!({
                                "spi_i": format!("{:016x}", v.spi_i),
                                "spi_r": format!("{:016x}", v.spi_r),
                                "initiator": v.initiator,
                                "state": v.state,
                                "suite": v.suite.map(|s| format!("{:?}/{:?}/{:?}/{:?}", s.encr, s.integ, s.prf, s.dh)),
                                "local": v.local.to_string(),
                                "remote": v.remote.to_string(),
                                "nat_t": v.nat,
                                "age_secs": v.age.as_secs(),
                            })
                        })
                        .collect();
                    out.push(serde_json::json!({
                        "name": c.name,
                        "status": i.status,
                        "reason": i.reason,
                        "local": c.local.to_string(),
                        "peer": c.peer.to_string(),
                        "local_id": c.local_id.to_string(),
                        "peer_id": c.peer_id.to_string(),
                        "tenant": self.meta.get(id).map(|m| m.0),
                        "initiator": match c.initiator {
                            super::conn::Initiator::BiDirectional => "bi-directional",
                            super::conn::Initiator::ResponseOnly => "response-only",
                        },
                        "dpd_action": format!("{:?}", c.dpd.action).to_lowercase(),
                        "admin_state_up": c.admin_up,
                        "local_subnets": c.local_ts.iter().map(prefix_str).collect::<Vec<_>>(),
                        "peer_cidrs": c.peer_ts.iter().map(prefix_str).collect::<Vec<_>>(),
                        "children": i.children,
                        "ike_sas": ikes,
                    }));
                }
                Response::ok(serde_json::Value::Array(out))
            }
            Request::SaList => {
                let mut out = vec![];
                for conn in 0..self.ep.conn_count() {
                    for (id, _, _) in self.ep.conn_children(conn) {
                        let Some(v) = self.ep.child_view(id, now) else {
                            continue;
                        };
                        let d = self.sink.details(id).unwrap_or_default();
                        let c = self.ep.conn(conn);
                        out.push(serde_json::json!({
                            "conn": c.name,
                            "child": id,
                            "state": v.state,
                            "spi_in": v.spi_in,
                            "spi_out": v.spi_out,
                            "cipher": match v.cipher {
                                Cipher::Aes128Gcm16 => "aes128gcm16",
                                Cipher::Aes256Gcm16 => "aes256gcm16",
                            },
                            "esn": v.esn,
                            "pfs": v.pfs.map(|g| format!("{g:?}")),
                            "local": c.local.to_string(),
                            "peer": c.peer.to_string(),
                            "udp_encap": v.udp_encap.map(|(a, b)| vec![a, b]),
                            "local_ts": v.local_ts.iter().map(prefix_str).collect::<Vec<_>>(),
                            "peer_ts": v.peer_ts.iter().map(prefix_str).collect::<Vec<_>>(),
                            "backend": d.backend,
                            "offload": d.offload,
                            "xfrm": d.xfrm,
                            "tenant": d.tenant,
                            "slot_in": d.slot_in,
                            "slot_out": d.slot_out,
                            "active": d.active,
                            "packets_in": d.packets_in,
                            "bytes_in": d.bytes_in,
                            "packets_out": d.packets_out,
                            "bytes_out": d.bytes_out,
                            "seq_out": d.seq_out,
                            "replay_top": d.replay_top,
                            "age_secs": v.age.as_secs(),
                            "rekey_in_secs": v.rekey_in.as_secs(),
                            "lifetime_left_secs": v.expires_in.as_secs(),
                        }));
                    }
                }
                Response::ok(serde_json::Value::Array(out))
            }
            Request::ConnUp { name } => match by_name(&self.ep, &name) {
                Ok(id) => {
                    let _ = self.command(Command::Up(id)).await;
                    Response::ok(serde_json::json!(format!("{name}: up requested")))
                }
                Err(e) => Response::err(e),
            },
            Request::ConnDown { name } => match by_name(&self.ep, &name) {
                Ok(id) => {
                    let _ = self.command(Command::Down(id)).await;
                    Response::ok(serde_json::json!(format!("{name}: down")))
                }
                Err(e) => Response::err(e),
            },
            Request::Rekey { name, what } => match by_name(&self.ep, &name) {
                Ok(id) => {
                    let c = match what {
                        RekeyWhat::Child => Command::RekeyChild(id),
                        RekeyWhat::Ike => Command::RekeyIke(id),
                    };
                    let _ = self.command(c).await;
                    Response::ok(serde_json::json!(format!("{name}: rekey started")))
                }
                Err(e) => Response::err(e),
            },
            Request::Reload => match self.reload().await {
                Ok(m) => Response::ok(serde_json::json!(m)),
                Err(e) => Response::err(format!("{e:#}")),
            },
        }
    }

    /// Runs until `stop` turns true, then deletes the IKE SAs politely (bounded wait).
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
        mut control: mpsc::Receiver<CtlRequest>,
    ) -> Result<(Stats, S)> {
        let now = self.now();
        self.ep.start(now);
        self.flush().await;
        let mut usage = tokio::time::interval(Duration::from_secs(1));
        loop {
            let deadline = self
                .ep
                .poll_timeout()
                .map(|t| TokioInstant::from_std(t.max(self.now())))
                .unwrap_or_else(|| TokioInstant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                }
                Some((local, remote, data)) = self.rx.recv() => self.dequeued(local, remote, &data),
                Some(c) = commands.recv() => {
                    if let Err(e) = self.command(c).await {
                        tracing::warn!("vpnd: {e:#}");
                    }
                }
                Some((req, reply)) = control.recv() => {
                    let r = self.control(req).await;
                    let _ = reply.send(r);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.now();
                    self.guarded("the timers", |s| s.ep.handle_timeout(now));
                }
                _ = usage.tick() => self.guarded("data-plane counters", |s| s.poll_usage()),
            }
            self.flush().await;
        }
        // Polite shutdown: Delete for every IKE SA, answers awaited for up to 2 s.
        let now = self.now();
        for c in 0..self.ep.conn_count() {
            if !self.ep.is_removed(c) {
                self.ep.terminate(c, now);
            }
        }
        self.flush().await;
        let until = TokioInstant::now() + Duration::from_secs(2);
        while self.ep.ike_sa_count().0 > 0 {
            tokio::select! {
                Some((local, remote, data)) = self.rx.recv() => {
                    self.dequeued(local, remote, &data);
                    self.flush().await;
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        drop(self.tx);
        Ok((self.ep.stats.clone(), self.sink))
    }
}

fn prefix_str(p: &crate::dataplane::worker::Prefix) -> String {
    format!("{}/{}", p.addr, p.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::{
        conn::Initiator,
        tests::{A, B, ConnOpts, conn, ip, raw_init, settings, spoofed_init},
        wire::Payload,
    };

    /// A data plane that only counts what the shell asks of it.
    #[derive(Default)]
    struct Recorder {
        downs: usize,
    }

    impl SaSink for Recorder {
        fn install_inbound(&mut self, _: ChildSa) -> Result<()> {
            Ok(())
        }
        fn activate_outbound(&mut self, _: ConnId, _: ChildId) -> Result<()> {
            Ok(())
        }
        fn remove(&mut self, _: ConnId, _: ChildId) -> Result<()> {
            Ok(())
        }
        fn usage(&self, _: ChildId) -> Option<ChildUsage> {
            None
        }
        fn conn_down(&mut self, _: ConnId, _: bool) {
            self.downs += 1;
        }
    }

    /// B's vpnd, response-only towards A, without sockets.
    fn responder() -> Shell<Recorder> {
        let mut ep = Endpoint::new(settings());
        let o = ConnOpts {
            initiator: Initiator::ResponseOnly,
            ..Default::default()
        };
        ep.add_conn(conn(B, A, &o));
        let (tx, rx) = mpsc::channel(1);
        Shell::finish(ep, Recorder::default(), HashMap::new(), tx, rx).unwrap()
    }

    /// What `flush` does, minus the sockets: events applied, datagrams dropped.
    fn drain(sh: &mut Shell<Recorder>) {
        while let Some(e) = sh.ep.poll_event() {
            sh.guarded("an event", |s| s.apply(e));
        }
        while sh.ep.poll_transmit().is_some() {}
    }

    fn addrs() -> (SocketAddr, SocketAddr) {
        (SocketAddr::new(ip(B), 500), SocketAddr::new(ip(A), 500))
    }

    /// Issue 14 (H1): a panic in the core on network input is caught, counted (shown by
    /// `vpnctl status`) and logged; the next datagram is handled as usual.
    #[test]
    fn a_panic_in_the_core_is_caught_and_counted() {
        let mut sh = responder();
        let (lb, la) = addrs();
        let init = raw_init(Payload::VendorId(b"x"), 2);
        sh.ep.panic_on_receive = true;
        sh.receive(lb, la, &init);
        assert_eq!(sh.ep.stats.panics, 1);
        assert!(sh.ep.poll_transmit().is_none());
        // Still alive: the same request is answered (INVALID_SYNTAX: its KE is junk).
        sh.receive(lb, la, &init);
        assert_eq!(sh.ep.stats.panics, 1);
        assert_eq!(sh.ep.stats.received, 2);
        assert!(sh.ep.poll_transmit().is_some());
        drain(&mut sh);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(sh.control(Request::Status));
        assert_eq!(r.data.unwrap()["ike"]["panics"], 1);
    }

    /// What vpnd logs while `f` runs (tracing's text format, one line per event).
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// Issue 14 (M4): a thousand spoofed IKE_SA_INITs cost one WARN line, one rewrite of
    /// connections.json and no data-plane update (each used to cost all three).
    #[test]
    fn spoofed_init_flood_costs_one_line() {
        let mut sh = responder();
        let dir = std::env::temp_dir().join(format!("vpnd-m4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("connections.json");
        sh.status_file = Some(file.clone());
        let lb = addrs().0;
        let log = logged(|| {
            for i in 0..1000 {
                sh.receive(
                    lb,
                    SocketAddr::new(ip(A), 1024 + i as u16),
                    &spoofed_init(i),
                );
                drain(&mut sh);
                if i == 0 {
                    // Written once for the first refusal; never again.
                    std::fs::remove_file(&file).unwrap();
                }
            }
        });
        let exists = file.exists();
        let _ = std::fs::remove_dir_all(&dir);
        let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warns.len(), 1, "{warns:?}");
        assert!(warns[0].contains("DOWN: IKE_SA_INIT from 192.0.2.1: NO_PROPOSAL_CHOSEN"));
        assert!(log.lines().count() <= 2, "{log}");
        assert!(!exists, "connections.json rewritten");
        assert_eq!(sh.sink.downs, 0);
        assert_eq!(sh.ep.stats.received, 1000);
    }

    #[test]
    fn repeated_warnings_are_rate_limited_with_a_count() {
        let mut l = LogLimit::default();
        let t0 = std::time::Instant::now();
        for _ in 0..LogLimit::BURST {
            assert_eq!(l.admit(Some(0), "warning", t0).as_deref(), Some(""));
        }
        for _ in 0..10 {
            assert_eq!(l.admit(Some(0), "warning", t0), None);
        }
        // Other connections and kinds have their own quota.
        assert_eq!(l.admit(Some(1), "warning", t0).as_deref(), Some(""));
        assert_eq!(l.admit(Some(0), "down", t0).as_deref(), Some(""));
        let later = t0 + LogLimit::WINDOW;
        assert_eq!(
            l.admit(Some(0), "warning", later).as_deref(),
            Some(" (10 similar suppressed)")
        );
        assert_eq!(l.admit(Some(0), "warning", later).as_deref(), Some(""));
    }
}
