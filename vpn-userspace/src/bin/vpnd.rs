//! vpnd: the ESP data plane and IKEv2 control plane of a network node. It loads and attaches
//! the XDP programs, installs the manually keyed SAs of its configuration, negotiates the
//! Neutron-VPNaaS-shaped site connections with IKEv2 (installing, rekeying and deleting their
//! CHILD_SAs make-before-break), and runs the AF_XDP workers until SIGINT/SIGTERM; then it
//! deletes its IKE SAs politely, detaches and removes its pins.
//!
//! SIGUSR1 rekeys every CHILD_SA now, SIGUSR2 every IKE_SA (operator and test aid).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode;
use clap::Parser;
use vpn_common::maps::{
    AF_INET, ENCAP_UNTAGGED, ENCAP_VLAN, ENCAP_VXLAN, IfaceConfig, TenantEncap, VtepPair,
};
use vpn_userspace::{
    config::{Config, parse_mac},
    control,
    dataplane::{
        Carrier, CarrierChoice, ChildSaSpec, Dataplane, Installer, LoadOptions, Side,
        installer::Resume,
        neigh::{iface_info, resolve_neighbour},
        worker::{NextHop, StatsBoard, Tenant, TenantLink, Worker},
    },
    esp::NAT_T_PORT,
    ike::{
        endpoint::{Endpoint, Settings},
        plane::{ConnPlane, PlaneSink},
        shell::{Command, DaemonInfo, Shell},
    },
    seqstate::{self, Direction, InboundGauge, Keeper, KeyId, Reservation, StateDir},
    vpnaas::BackendChoice,
    xfrm::{self, KernelBackend, OffloadMode},
};

#[derive(Parser)]
#[command(
    version,
    about = "IPsec (IKEv2 + ESP) daemon with an XDP/AF_XDP data plane"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration and exit without touching the system.
    #[arg(long)]
    check: bool,
    /// Wire interface, overriding `[wire] interface`.
    #[arg(long)]
    wire: Option<String>,
    /// Tenant-side interface, overriding every `[[tenant]] interface`.
    #[arg(long)]
    tenant_if: Option<String>,
    /// Instance name (pins under /sys/fs/bpf/NAME, run directory RUN_DIR/NAME), overriding the
    /// configuration's `instance`.
    #[arg(long)]
    instance: Option<String>,
    /// Leave the pinned maps in /sys/fs/bpf/INSTANCE on exit, for vpnctl and for a restarted
    /// vpnd to adopt.
    #[arg(long)]
    keep_pinned: bool,
    /// Directory of the state file and control socket (`DIR/INSTANCE/`).
    #[arg(long, default_value = "/run/vpnd")]
    run_dir: PathBuf,
    /// Durable state of the manual SAs (their sequence numbers and replay marks) under
    /// `DIR/INSTANCE/`, overriding `[state] dir` (default /var/lib/vpnd).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// XDP metadata carrier, overriding `[wire] xdp_carrier`: auto, adjust_meta or shim.
    #[arg(long)]
    xdp_carrier: Option<String>,
    /// Log level or filter (error, warn, info, debug, trace; or tracing's `target=level`
    /// syntax). The environment variable VPND_LOG, if set, wins.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn iface_mac(ifname: &str) -> Result<[u8; 6]> {
    Ok(iface_info(ifname)?.mac)
}

fn ifindex(ifname: &str) -> Result<u32> {
    Ok(iface_info(ifname)?.index)
}

/// Re-reads the peers' MACs from the neighbour table; the worker picks a change up with its
/// next packet. While an entry is missing the last MAC stays in use.
async fn refresh_neighbours(
    neighbours: &Arc<std::sync::Mutex<HashMap<IpAddr, NextHop>>>,
    ifname: &str,
) {
    let list: Vec<(IpAddr, NextHop)> = neighbours
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(a, h)| (*a, h.clone()))
        .collect();
    for (peer, hop) in &list {
        let (peer, ifname) = (*peer, ifname.to_string());
        let found = tokio::task::spawn_blocking(move || {
            resolve_neighbour(peer, &ifname, Duration::ZERO).ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(mac) = found
            && mac != hop.get()
        {
            tracing::info!("vpnd: peer {peer} moved to MAC {mac:02x?}");
            hop.set(mac);
        }
    }
}

/// Watches the pinned counters for frames whose device refused `bpf_xdp_adjust_meta` at run
/// time (the programs then carried the metadata as the shim, per packet) and says so once per
/// device: nothing is lost, but the operator should know, and may pin the carrier.
struct CarrierWatch {
    pins: Option<vpn_userspace::ctl::pins::Pins>,
    /// (counter map, the device, the counter, already reported)
    sides: Vec<(&'static str, String, vpn_common::Outcome, bool)>,
}

impl CarrierWatch {
    fn new(carrier: Carrier, pin_dir: &std::path::Path, wire: &str, tenant: &str) -> Self {
        use vpn_common::{Outcome, maps::names};
        let pins = (carrier == Carrier::Meta).then(|| vpn_userspace::ctl::pins::Pins {
            instance: String::new(),
            dir: pin_dir.to_path_buf(),
        });
        CarrierWatch {
            pins,
            sides: vec![
                (
                    names::WIRE_STATS,
                    wire.to_string(),
                    Outcome::WireMetaRefusedShim,
                    false,
                ),
                (
                    names::TENANT_STATS,
                    tenant.to_string(),
                    Outcome::TenantMetaRefusedShim,
                    false,
                ),
            ],
        }
    }

    fn check(&mut self) {
        let Some(pins) = &self.pins else { return };
        for (map, dev, outcome, reported) in &mut self.sides {
            if *reported {
                continue;
            }
            let Ok(counters) = pins.counters(map) else {
                continue;
            };
            let c = vpn_common::Counter::Outcome(*outcome);
            let n = counters
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(0, |(_, v)| *v);
            if n > 0 {
                tracing::warn!(
                    "vpnd: XDP metadata: {dev} refused bpf_xdp_adjust_meta at run time ({n} \
                     frames so far, counter {}): its frames carry the in-packet shim instead, \
                     nothing is lost; `[wire] xdp_carrier = \"shim\"` saves the failing call",
                    c.name()
                );
                *reported = true;
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: config errors name file, entry, field.
            eprintln!("vpnd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let filter = std::env::var("VPND_LOG").unwrap_or_else(|_| args.log_level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .with_context(|| format!("log level {filter:?}"))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let mut cfg = Config::load(&args.config)?;
    if let Some(i) = &args.instance {
        if i.is_empty()
            || !i
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("--instance {i:?}: use [A-Za-z0-9_-]");
        }
        cfg.instance = i.clone();
    }
    if let Some(w) = &args.wire {
        cfg.wire.interface = w.clone();
    }
    if let Some(c) = &args.xdp_carrier {
        cfg.wire.xdp_carrier = Some(c.clone());
    }
    let carrier: CarrierChoice = match &cfg.wire.xdp_carrier {
        None => CarrierChoice::Auto,
        Some(c) => c
            .parse()
            .map_err(|m: String| anyhow::anyhow!("xdp_carrier: {m}"))?,
    };
    if let Some(t) = &args.tenant_if {
        for ten in &mut cfg.tenants {
            ten.interface = t.clone();
        }
    }
    let sas = cfg.resolve_sas(&args.config)?;
    let conns = cfg.resolve_connections(&args.config)?;
    if args.check {
        println!(
            "{}: ok (instance {}, {} tenants, {} manual SAs, {} site connections)",
            args.config.display(),
            cfg.instance,
            cfg.tenants.len(),
            sas.len(),
            conns.len()
        );
        return Ok(());
    }
    // The manual SAs' sequence numbers survive restarts here (see `seqstate`); taken (and
    // locked) before anything is touched. Negotiated SAs need none of it.
    let mut keeper = if sas.is_empty() {
        None
    } else {
        let base = args
            .state_dir
            .clone()
            .or_else(|| cfg.state.dir.clone())
            .unwrap_or_else(|| PathBuf::from(seqstate::DEFAULT_DIR));
        let dir = base.join(&cfg.instance);
        let store = StateDir::open(&dir).context("the manual SAs' sequence-number state")?;
        tracing::info!(
            "vpnd: manual SAs' sequence numbers and replay marks in {}",
            dir.display()
        );
        Some(Keeper::new(store))
    };

    let mode = match cfg.wire.xdp_mode.as_deref() {
        None | Some("native") | Some("auto") => XdpMode::Driver,
        Some("generic") => XdpMode::Skb,
        Some(m) => bail!("wire.xdp_mode {m:?}: use native or generic"),
    };
    let tenant_ifaces: Vec<&str> = {
        let mut v: Vec<&str> = cfg.tenants.iter().map(|t| t.interface.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    let [tenant_if] = tenant_ifaces[..] else {
        bail!("this version serves exactly one tenant-side interface, got {tenant_ifaces:?}");
    };

    let mut load_opts = LoadOptions::new(&cfg.instance);
    load_opts.unpin_on_drop = !args.keep_pinned;
    load_opts.carrier = carrier;
    let mut dp = Dataplane::load(&load_opts)?;
    // One line per choice made from what the kernel said (see `vpnctl probe`).
    tracing::info!("vpnd: {}", dp.carrier());
    if dp.adopted() {
        let n = dp.clear_sa_state()?;
        tracing::info!(
            "vpnd: adopted the pinned maps of a previous run in {} (counters kept; {n} stale SA, \
             policy and peer entries cleared)",
            dp.pin_dir().display()
        );
    }
    // Native XDP where the driver has it; generic (skb) otherwise, unless native was asked
    // for explicitly.
    let auto = matches!(cfg.wire.xdp_mode.as_deref(), None | Some("auto"));
    let mut native = cfg.wire.xdp_mode.as_deref() != Some("generic");
    let mode = match dp.attach_wire(&cfg.wire.interface, mode) {
        Err(e) if auto => {
            tracing::warn!(
                "vpnd: native XDP not available on {} ({e:#}); using generic XDP",
                cfg.wire.interface
            );
            dp.attach_wire(&cfg.wire.interface, XdpMode::Skb)?;
            native = false;
            XdpMode::Skb
        }
        r => r.map(|()| mode)?,
    };
    match dp.attach_tenant(tenant_if, mode) {
        Err(e) if auto && native => {
            tracing::warn!(
                "vpnd: native XDP not available on {tenant_if} ({e:#}); using generic XDP"
            );
            dp.attach_tenant(tenant_if, XdpMode::Skb)?;
        }
        r => r?,
    }
    tracing::info!(
        "vpnd: XDP attached ({mode:?}) to {} (wire) and {tenant_if} (tenant); maps in {}",
        cfg.wire.interface,
        dp.pin_dir().display()
    );
    // One AF_XDP socket per rx queue on each side.
    let wire = dp.bind_sockets(Side::Wire, &cfg.wire.interface, 0, cfg.xsk_frames)?;
    let ten = dp.bind_sockets(Side::Tenant, tenant_if, 0, cfg.xsk_frames)?;
    let mode = |v: &[vpn_userspace::dataplane::xsk::XskSocket]| {
        if v.iter().all(|s| s.zero_copy()) {
            "zero-copy"
        } else {
            "copy mode"
        }
    };
    tracing::info!(
        "vpnd: AF_XDP sockets on {} wire ({}) and {} tenant ({}) rx queues",
        wire.len(),
        mode(&wire),
        ten.len(),
        mode(&ten)
    );
    let mut worker = Worker::new(wire, ten, dp.replay_shared());

    let wire_mac = iface_mac(&cfg.wire.interface)?;
    worker.wire_mtu = match cfg.wire.mtu {
        Some(m) => m as usize,
        None => iface_info(&cfg.wire.interface)?.mtu as usize,
    };
    if worker.wire_mtu < 1280 {
        bail!(
            "wire MTU {} is below the IPv6 minimum of 1280",
            worker.wire_mtu
        );
    }
    let ten_index = ifindex(tenant_if)?;
    let ten_mac = iface_mac(tenant_if)?;
    let mut default_tenant = 0;
    for t in &cfg.tenants {
        let gateway_mac = parse_mac(&t.gateway_mac).expect("validated");
        let host_mac = parse_mac(&t.host_mac).expect("validated");
        let mut encap = TenantEncap {
            ifindex: ten_index,
            ..Default::default()
        };
        let link = if let Some(vid) = t.vlan {
            dp.set_vlan_tenant(vid, t.id)?;
            encap.kind = ENCAP_VLAN;
            encap.vlan_id = vid;
            TenantLink::Vlan(vid)
        } else if let Some(vni) = t.vni {
            let (local, remote) = (t.local_vtep.expect("validated"), t.remote_vtep.expect("v"));
            // Only frames from the tenant's VTEP to ours count as the tenant's.
            dp.set_vni_tenant(vni, t.id, VtepPair::v4(local.octets(), remote.octets()))?;
            let vtep_mac = parse_mac(t.vtep_mac.as_deref().expect("validated")).expect("v");
            encap.kind = ENCAP_VXLAN;
            encap.vni = vni;
            encap.vtep_family = AF_INET;
            encap.vtep_addr[..4].copy_from_slice(&remote.octets());
            encap.vtep_mac = vtep_mac;
            TenantLink::Vxlan {
                vni,
                local_vtep: local,
                remote_vtep: remote,
                vtep_mac,
            }
        } else {
            default_tenant = t.id;
            encap.kind = ENCAP_UNTAGGED;
            TenantLink::Untagged
        };
        dp.set_tenant_encap(t.id, encap)?;
        worker.add_tenant(
            t.id,
            Tenant {
                link,
                gateway_mac,
                default_host_mac: host_mac,
                iface_mac: ten_mac,
                gateway_v4: t.gateway_ip,
                gateway_v6: t.gateway_ip6,
                // The local side of its manual SAs and connections as configured now (hosts
                // of subnets a reload adds are learned from their traffic, which the SA's
                // selectors check, not from ARP).
                local_subnets: sas
                    .iter()
                    .filter(|s| s.tenant == t.id)
                    .flat_map(|s| s.local_subnets.iter())
                    .chain(
                        conns
                            .iter()
                            .filter(|c| c.tenant == t.id)
                            .flat_map(|c| c.conn.local_ts.iter()),
                    )
                    .copied()
                    .collect(),
            },
        );
    }
    dp.set_iface(
        ten_index,
        IfaceConfig {
            default_tenant,
            xsk_base: 0,
        },
    )?;

    let backend = cfg.backend();
    tracing::info!("vpnd: AES-GCM backend {backend:?}");
    let neighbours: Arc<std::sync::Mutex<HashMap<IpAddr, NextHop>>> = Arc::default();
    // One code path for manual and (later) IKE-negotiated SAs: install the inbound SA, then
    // activate the outbound one, as a rekey does.
    let mut installer = Installer::new(worker.tables(), dp.replay_shared(), backend);
    let mut children = Vec::with_capacity(sas.len());
    for sa in sas {
        let next_hop = match sa.peer_mac {
            Some(m) => NextHop::new(m),
            None => {
                let n = NextHop::new(resolve_neighbour(
                    sa.peer,
                    &cfg.wire.interface,
                    Duration::from_secs(5),
                )?);
                // Followed while running: the peer's MAC may change (failover, new NIC).
                neighbours
                    .lock()
                    .expect("not poisoned")
                    .insert(sa.peer, n.clone());
                n
            }
        };
        // Where this key's counters continue: the first blocks are on disk before the SA is
        // installed.
        let keeper = keeper.as_mut().expect("opened when there are manual SAs");
        let mut open = |direction| {
            let (key, spi, min_block) = match direction {
                Direction::Out => (&sa.key_out, sa.spi_out, cfg.state.out_block()),
                Direction::In => (&sa.key_in, sa.spi_in, cfg.state.in_block()),
            };
            let side = seqstate::Side {
                sa: sa.name.clone(),
                direction,
                key: KeyId::of(key),
                spi,
                esn: sa.esn,
                min_block,
            };
            Reservation::open(keeper.store(), side)
        };
        let (out, inb) = (open(Direction::Out), open(Direction::In));
        let resume = Resume {
            outbound: Some(out.start()),
            inbound: Some(inb.start()),
        };
        let spec = ChildSaSpec {
            name: sa.name,
            tenant: sa.tenant,
            local: sa.local,
            peer: sa.peer,
            udp_encap: sa.udp_encap.then_some((NAT_T_PORT, NAT_T_PORT)),
            spi_in: sa.spi_in,
            spi_out: sa.spi_out,
            key_in: sa.key_in,
            key_out: sa.key_out,
            esn: sa.esn,
            replay_window: sa.replay_window,
            mtu: None,
            local_subnets: sa.local_subnets,
            peer_subnets: sa.peer_subnets,
            next_hop,
            src_mac: wire_mac,
        };
        let mut child = installer.install_inbound_resumed(&mut dp, &spec, &resume)?;
        installer.activate_outbound(&mut dp, &mut child)?;
        keeper.add(out, Box::new(child.outbound_sa().clone()));
        keeper.add(
            inb,
            Box::new(InboundGauge {
                state: child.inbound_state().clone(),
                replay: dp.replay_shared(),
            }),
        );
        tracing::info!(
            "vpnd: SA {:?} installed: in {:#010x} (slot {}), out {:#010x} (slot {}), peer {}",
            child.name,
            child.spi_in,
            child.slot_in,
            child.spi_out,
            child.slot_out,
            child.peer
        );
        children.push(child);
    }

    let wire_if = cfg.wire.interface.clone();
    let xdp_carrier = dp.carrier().carrier.name();
    let mut carrier_watch = CarrierWatch::new(
        dp.carrier().carrier,
        dp.pin_dir(),
        &cfg.wire.interface,
        tenant_if,
    );
    let stop = Arc::new(AtomicBool::new(false));
    // One worker thread per queue pair (see Worker::split).
    let ike_inbox = worker.ike_inbox.clone();
    let workers = worker.split();
    let n_workers = workers.len();
    let mut handles = Vec::with_capacity(n_workers);
    let board = StatsBoard::new(n_workers);
    for (i, mut w) in workers.into_iter().enumerate() {
        let s = stop.clone();
        let board = board.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("vpnd-worker-{i}"))
                .spawn(move || {
                    let mut published = Instant::now();
                    while !s.load(Ordering::Relaxed) {
                        if w.poll() == 0 {
                            w.wait(1);
                        }
                        if published.elapsed() >= StatsBoard::PERIOD {
                            board.publish(i, &w.stats);
                            published = Instant::now();
                        }
                    }
                    tracing::info!(
                        "vpnd: worker {i} AF_XDP kernel counters [rx_dropped, rx_ring_full, fill_empty, tx_invalid, tx_empty]: wire {:?}, tenant {:?}",
                        w.wire.iter().map(|s| s.kernel_stats()).collect::<Vec<_>>(),
                        w.tenant.iter().map(|s| s.kernel_stats()).collect::<Vec<_>>()
                    );
                    w.stats
                })?,
        );
    }
    tracing::info!("vpnd: {n_workers} worker thread(s)");
    // Keeps the manual SAs' reservations ahead of the workers.
    let keeper_stop = Arc::new(AtomicBool::new(false));
    let keeper = match keeper {
        Some(k) => Some(
            k.spawn(keeper_stop.clone())
                .context("starting the sequence-number state thread")?,
        ),
        None => None,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The IKE shell owns the data plane's map writer while it runs and gives it back.
    let run_dir = args.run_dir.join(&cfg.instance);
    let tenant_if_name = tenant_if.to_string();
    let mut dp_keep = Some(dp);
    let mut installer_keep = Some(installer);
    let (dp, installer) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(64);
        let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(64);
        let settings = Settings {
            ike_port: cfg.ike.port,
            natt_port: cfg.ike.natt_port,
            cookie_threshold: cfg.ike.cookie_threshold,
            half_open_timeout: Duration::from_secs(cfg.ike.half_open_timeout),
            overlap: Duration::from_secs(cfg.ike.rekey_overlap),
            limits: cfg.ike.limits.clone(),
            max_selectors: cfg.ike.max_selectors,
            ..Settings::default()
        };
        let mut ep = Endpoint::new(settings);
        let mut planes = Vec::new();
        let mut meta = Vec::new();
        let tenant_if_ids: HashMap<u32, u32> = cfg
            .tenants
            .iter()
            .filter_map(|t| t.xfrm_if_id.map(|i| (t.id, i)))
            .collect();
        // `auto`: the kernel when the wire device offers ESP offload.
        let wire_esp_offload = match xfrm::ethtool::esp_offload(&wire_if) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!("vpnd: {wire_if}: ESP offload unknown ({e:#})");
                false
            }
        };
        let mut kernel: Option<KernelBackend> = None;
        for c in &conns {
            let on_kernel = match c.backend {
                BackendChoice::Kernel => true,
                BackendChoice::Afxdp => false,
                BackendChoice::Auto => wire_esp_offload,
            };
            if on_kernel {
                if kernel.is_none() {
                    let offload = if wire_esp_offload {
                        OffloadMode::Crypto(ifindex(&wire_if)?)
                    } else {
                        OffloadMode::None
                    };
                    kernel = Some(
                        KernelBackend::open(&cfg.instance, None, offload).with_context(|| {
                            format!("conn {}: backend {:?}", c.conn.name, c.backend)
                        })?,
                    );
                }
                // A kernel without ESP (or its AES-GCM, or an RNG) fails here, by name.
                kernel
                    .as_mut()
                    .expect("opened")
                    .probe(c.conn.peer.is_ipv6())
                    .with_context(|| format!("conn {}: backend {:?}", c.conn.name, c.backend))?;
            }
            tracing::info!(
                "vpnd: conn {}: backend {}{}",
                c.conn.name,
                if on_kernel { "kernel (xfrm)" } else { "afxdp" },
                match (on_kernel, wire_esp_offload) {
                    (true, true) => format!(", ESP offload to {wire_if}"),
                    (true, false) => format!(", {wire_if} offers no ESP offload"),
                    _ => String::new(),
                }
            );
            if on_kernel && c.mtu.is_some() {
                tracing::warn!(
                    "vpnd: conn {}: mtu is not applied to kernel-backend SAs (the kernel \
                     follows the route's MTU)",
                    c.conn.name
                );
            }
            planes.push(ConnPlane {
                name: c.conn.name.clone(),
                tenant: c.tenant,
                replay_window: c.replay_window,
                mtu: c.mtu,
                peer_ts: c.conn.peer_ts.clone(),
                kernel: on_kernel,
                xfrm_if_id: tenant_if_ids.get(&c.tenant).copied(),
                local: c.conn.local,
                peer: c.conn.peer,
                local_ts: c.conn.local_ts.clone(),
            });
        }
        let any_kernel = kernel.is_some();
        for c in conns {
            meta.push((c.tenant, c.replay_window));
            tracing::info!(
                "vpnd: conn {}: {} -> {} ({:?}, peer id {})",
                c.conn.name,
                c.conn.local,
                c.conn.peer,
                c.conn.initiator,
                c.conn.peer_id
            );
            ep.add_conn(c.conn);
        }
        let sink = PlaneSink {
            dp: dp_keep.take().expect("present"),
            installer: installer_keep.take().expect("present"),
            conns: planes,
            children: HashMap::new(),
            conn_of: HashMap::new(),
            hops: neighbours.clone(),
            wire_if: wire_if.clone(),
            wire_mac,
            kernel,
            kernel_children: HashMap::new(),
            tenant_if_ids,
        };
        let mut shell = Shell::bind(ep, sink).await?;
        ike_inbox.connect(shell.datagram_sender());
        if any_kernel {
            shell.enable_kernel_udp_encap()?;
        }
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        shell.status_file = Some(run_dir.join("connections.json"));
        shell.meta = meta;
        shell.daemon = DaemonInfo {
            instance: cfg.instance.clone(),
            pid: std::process::id(),
            wire: wire_if.clone(),
            tenant_interfaces: vec![tenant_if_name.clone()],
            xdp_mode: if native { "native" } else { "generic" }.into(),
            xdp_carrier: xdp_carrier.into(),
            workers: n_workers,
            worker_stats: Some(board.clone()),
        };
        let config_path = args.config.clone();
        let (wire_override, tenant_override) = (args.wire.clone(), args.tenant_if.clone());
        shell.reloader = Some(Box::new(move || {
            let mut c = Config::load(&config_path)?;
            if let Some(w) = &wire_override {
                c.wire.interface = w.clone();
            }
            if let Some(t) = &tenant_override {
                for ten in &mut c.tenants {
                    ten.interface = t.clone();
                }
            }
            Ok(c.resolve_connections(&config_path)?)
        }));
        let sock = control::socket_path(&args.run_dir, &cfg.instance);
        let _guard = control::serve(&sock, ctl_tx)?;
        tracing::info!(
            "vpnd: control socket {}, connection state in {}",
            sock.display(),
            run_dir.join("connections.json").display()
        );
        // Only now: the signal handlers, the IKE sockets and the control socket are all in
        // place, so whoever waits for this line may signal us or ask over the socket.
        tracing::info!("vpnd: running");
        let control_loop = async {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => {
                        tracing::info!("vpnd: SIGHUP: reloading {}", args.config.display());
                        let _ = cmd_tx.send(Command::Reload).await;
                    }
                    _ = usr1.recv() => {
                        tracing::info!("vpnd: SIGUSR1: rekeying every CHILD_SA");
                        let _ = cmd_tx.send(Command::RekeyAllChildren).await;
                    }
                    _ = usr2.recv() => {
                        tracing::info!("vpnd: SIGUSR2: rekeying every IKE_SA");
                        let _ = cmd_tx.send(Command::RekeyAllIke).await;
                    }
                    _ = tick.tick() => {
                        refresh_neighbours(&neighbours, &wire_if).await;
                        carrier_watch.check();
                    }
                }
            }
            let _ = stop_tx.send(true);
        };
        let (r, ()) = tokio::join!(shell.run(stop_rx, cmd_rx, ctl_rx), control_loop);
        let (ike_stats, sink) = r?;
        tracing::info!("vpnd: IKE: {ike_stats:?}");
        anyhow::Ok((Some(sink.dp), Some(sink.installer)))
    })?;
    // The state file and socket describe a running daemon only.
    let _ = std::fs::remove_dir_all(&run_dir);
    stop.store(true, Ordering::Relaxed);
    let mut stats = vpn_userspace::dataplane::worker::WorkerStats::default();
    for h in handles {
        let s = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        stats.merge(&s);
    }
    // The workers are gone: the exact last numbers go to disk as a clean stop, so that the
    // next start skips nothing (after a crash it continues above the reservation instead).
    if let Some(k) = keeper {
        keeper_stop.store(true, Ordering::Relaxed);
        let mut k = k
            .join()
            .map_err(|_| anyhow::anyhow!("the sequence-number state thread panicked"))?;
        k.finish();
    }
    tracing::info!("vpnd: stopping: {stats:?}");
    if let Some(installer) = &installer {
        for c in &children {
            tracing::info!("vpnd: SA {:?}: {:?}", c.name, installer.stats(c));
        }
    }
    drop(dp);
    Ok(())
}
