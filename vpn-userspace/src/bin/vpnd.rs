//! vpnd: the ESP data plane on a network node. This version runs manually keyed SAs from its
//! configuration file (the IKEv2 control plane comes next): it loads and attaches the XDP
//! programs, fills the maps, and runs the AF_XDP worker until SIGINT/SIGTERM, then detaches
//! and removes its pins.

use std::{
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
    AF_INET, ENCAP_UNTAGGED, ENCAP_VLAN, ENCAP_VXLAN, IfaceConfig, TenantEncap,
};
use vpn_userspace::{
    config::{Config, parse_mac},
    dataplane::{
        ChildSaSpec, Dataplane, Installer, LoadOptions, Side,
        worker::{NextHop, Tenant, TenantLink, Worker},
    },
    esp::NAT_T_PORT,
};

#[derive(Parser)]
#[command(version, about = "ESP fast-path daemon (manual keying)")]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration and exit without touching the system.
    #[arg(long)]
    check: bool,
}

fn iface_mac(ifname: &str) -> Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .with_context(|| format!("interface {ifname} not found"))?;
    parse_mac(s.trim()).with_context(|| format!("MAC of {ifname}: {s:?}"))
}

fn ifindex(ifname: &str) -> Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .with_context(|| format!("interface {ifname} not found"))?;
    Ok(s.trim().parse()?)
}

/// The peer's MAC from the kernel's neighbour table, prodding the kernel to resolve it
/// (a datagram to the discard port) while it is not there yet.
fn resolve_neighbour(peer: IpAddr, ifname: &str, timeout: Duration) -> Result<[u8; 6]> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = std::process::Command::new("ip")
            .args(["neigh", "show", &peer.to_string(), "dev", ifname])
            .output()
            .context("running ip neigh")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(mac) = text
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .and_then(parse_mac)
        {
            return Ok(mac);
        }
        if Instant::now() > deadline {
            bail!("no neighbour entry for {peer} on {ifname}; set peer_mac in the config");
        }
        let bind = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        if let Ok(s) = std::net::UdpSocket::bind(bind) {
            let _ = s.send_to(b"", (peer, 9));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Re-reads the peers' MACs from the neighbour table; the worker picks a change up with its
/// next packet. While an entry is missing the last MAC stays in use.
async fn refresh_neighbours(neighbours: &[(IpAddr, NextHop)], ifname: &str) {
    for (peer, hop) in neighbours {
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
            eprintln!("vpnd: peer {peer} moved to MAC {mac:02x?}");
            hop.set(mac);
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    let sas = cfg.resolve_sas(&args.config)?;
    if args.check {
        println!(
            "{}: ok ({} tenants, {} manual SAs)",
            args.config.display(),
            cfg.tenants.len(),
            sas.len()
        );
        return Ok(());
    }

    let mode = match cfg.wire.xdp_mode.as_deref() {
        None | Some("native") => XdpMode::Driver,
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

    let mut dp = Dataplane::load(&LoadOptions::new(&cfg.instance))?;
    dp.attach_wire(&cfg.wire.interface, mode)?;
    dp.attach_tenant(tenant_if, mode)?;
    eprintln!(
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
    eprintln!(
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
        None => std::fs::read_to_string(format!("/sys/class/net/{}/mtu", cfg.wire.interface))?
            .trim()
            .parse()?,
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
            dp.set_vni_tenant(vni, t.id)?;
            let (local, remote) = (t.local_vtep.expect("validated"), t.remote_vtep.expect("v"));
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
    eprintln!("vpnd: AES-GCM backend {backend:?}");
    let mut neighbours: Vec<(IpAddr, NextHop)> = Vec::new();
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
                neighbours.push((sa.peer, n.clone()));
                n
            }
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
            local_subnets: sa.local_subnets,
            peer_subnets: sa.peer_subnets,
            next_hop,
            src_mac: wire_mac,
        };
        let mut child = installer.install_inbound(&mut dp, &spec)?;
        installer.activate_outbound(&mut dp, &mut child)?;
        eprintln!(
            "vpnd: SA {:?} installed: in {:#010x} (slot {}), out {:#010x} (slot {}), peer {}",
            child.name, child.spi_in, child.slot_in, child.spi_out, child.slot_out, child.peer
        );
        children.push(child);
    }

    let wire_if = cfg.wire.interface.clone();
    let stop = Arc::new(AtomicBool::new(false));
    // One worker thread per queue pair (see Worker::split).
    let workers = worker.split();
    let n_workers = workers.len();
    let mut handles = Vec::with_capacity(n_workers);
    for (i, mut w) in workers.into_iter().enumerate() {
        let s = stop.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("vpnd-worker-{i}"))
                .spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        if w.poll() == 0 {
                            w.wait(1);
                        }
                    }
                    eprintln!(
                        "vpnd: worker {i} AF_XDP kernel counters [rx_dropped, rx_ring_full, fill_empty, tx_invalid, tx_empty]: wire {:?}, tenant {:?}",
                        w.wire.iter().map(|s| s.kernel_stats()).collect::<Vec<_>>(),
                        w.tenant.iter().map(|s| s.kernel_stats()).collect::<Vec<_>>()
                    );
                    w.stats
                })?,
        );
    }
    eprintln!("vpnd: {n_workers} worker thread(s)");
    eprintln!("vpnd: running");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => refresh_neighbours(&neighbours, &wire_if).await,
            }
        }
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::Relaxed);
    let mut stats = vpn_userspace::dataplane::worker::WorkerStats::default();
    for h in handles {
        let s = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        stats.merge(&s);
    }
    eprintln!("vpnd: stopping: {stats:?}");
    for c in &children {
        eprintln!("vpnd: SA {:?}: {:?}", c.name, installer.stats(c));
    }
    drop(dp);
    Ok(())
}
