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
}

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
    /// and scripts until vpnctl asks the daemon directly.
    pub status_file: Option<std::path::PathBuf>,
}

impl<S: SaSink> Shell<S> {
    /// Binds ports 500 and 4500 (as configured) on every connection's local address.
    pub async fn bind(ep: Endpoint, sink: S) -> Result<Shell<S>> {
        let (tx, rx) = mpsc::channel(1024);
        let mut sockets = HashMap::new();
        let ports = [ep.settings().ike_port, ep.settings().natt_port];
        for c in 0..ep.conn_count() {
            let local = ep.conn(c).local;
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
                                    eprintln!("vpnd: IKE socket {addr}: {e}");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                    }
                });
            }
        }
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
        })
    }

    fn now(&self) -> std::time::Instant {
        std::time::Instant::now().max(self.epoch_std)
    }

    /// Sends what the core queued and applies its events.
    async fn flush(&mut self) {
        while let Some(t) = self.ep.poll_transmit() {
            match self.sockets.get(&t.src) {
                Some(s) => {
                    if let Err(e) = s.send_to(&t.data, t.dst).await {
                        eprintln!("vpnd: IKE send {} -> {}: {e}", t.src, t.dst);
                    }
                }
                None => eprintln!("vpnd: no IKE socket for {}", t.src),
            }
        }
        while let Some(e) = self.ep.poll_event() {
            self.apply(e);
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::InstallInbound(sa) => {
                let (conn, id, spi_in, spi_out) = (sa.conn, sa.id, sa.spi_in, sa.spi_out);
                let name = self.ep.conn(conn).name.clone();
                match self.sink.install_inbound(sa) {
                    Ok(()) => eprintln!(
                        "vpnd: conn {name}: CHILD_SA {id} inbound installed (in {spi_in:#010x}, out {spi_out:#010x})"
                    ),
                    Err(e) => {
                        eprintln!("vpnd: conn {name}: installing CHILD_SA {id} failed: {e:#}")
                    }
                }
            }
            Event::ActivateOutbound { conn, child } => {
                let name = self.ep.conn(conn).name.clone();
                match self.sink.activate_outbound(conn, child) {
                    Ok(()) => {
                        eprintln!("vpnd: conn {name}: CHILD_SA {child} carries outbound traffic")
                    }
                    Err(e) => {
                        eprintln!("vpnd: conn {name}: activating CHILD_SA {child} failed: {e:#}")
                    }
                }
            }
            Event::Remove { conn, child } => {
                self.last_in.remove(&child);
                let name = self.ep.conn(conn).name.clone();
                match self.sink.remove(conn, child) {
                    Ok(()) => eprintln!("vpnd: conn {name}: CHILD_SA {child} removed"),
                    Err(e) => {
                        eprintln!("vpnd: conn {name}: removing CHILD_SA {child} failed: {e:#}")
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
                eprintln!("vpnd: conn {name}: {s}: {reason}");
                if status == ConnStatus::Down {
                    let hold = self.ep.conn(conn).dpd.action == super::conn::DpdAction::Hold;
                    self.sink.conn_down(conn, hold);
                }
                let mut info = self.info.lock().expect("not poisoned");
                info[conn].status = s.into();
                info[conn].reason = reason;
            }
        }
        let mut info = self.info.lock().expect("not poisoned");
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
                eprintln!("vpnd: writing {}: {e}", path.display());
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

    pub fn command(&mut self, c: Command) {
        let now = self.now();
        match c {
            Command::Up(id) => self.ep.set_admin_up(id, true, now),
            Command::Down(id) => self.ep.set_admin_up(id, false, now),
            Command::RekeyChild(id) => {
                for (child, _, _) in self.ep.conn_children(id) {
                    self.ep.rekey_child(child, now);
                }
            }
            Command::RekeyIke(id) => self.ep.rekey_ike(id, now),
        }
    }

    /// Runs until `stop` turns true, then deletes the IKE SAs politely (bounded wait).
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
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
                Some((local, remote, data)) = self.rx.recv() => {
                    let now = self.now();
                    self.ep.handle(now, local, remote, &data);
                }
                Some(c) = commands.recv() => self.command(c),
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.now();
                    self.ep.handle_timeout(now);
                }
                _ = usage.tick() => self.poll_usage(),
            }
            self.flush().await;
        }
        // Polite shutdown: Delete for every IKE SA, answers awaited for up to 2 s.
        let now = self.now();
        for c in 0..self.ep.conn_count() {
            self.ep.terminate(c, now);
        }
        self.flush().await;
        let until = TokioInstant::now() + Duration::from_secs(2);
        while self.ep.ike_sa_count().0 > 0 {
            tokio::select! {
                Some((local, remote, data)) = self.rx.recv() => {
                    let now = self.now();
                    self.ep.handle(now, local, remote, &data);
                    self.flush().await;
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        drop(self.tx);
        Ok((self.ep.stats.clone(), self.sink))
    }
}
