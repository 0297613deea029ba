//! `cargo xtask demo`: the East/West site-to-site VPN of the VPNaaS seed documents, built from
//! network namespaces on this machine, with two `vpnd`s configured by the Neutron-shaped example
//! files `config/east.toml` and `config/west.toml`.
//!
//! ```text
//!  eh 10.1.0.5 --VLAN 100-- [east node 172.24.4.226] --+
//!                                                      inet (bridge, the "internet")
//!  wh 10.2.0.9 --VXLAN 5001-- [west node 172.24.4.233] --+
//! ```
//!
//! It waits for the IKEv2 tunnel, pings across both ways, runs a short TCP transfer, prints
//! `vpnctl conn list`, `sa list` and `stats` of both nodes, and tears everything down, also on
//! Ctrl-C (SIGINT) or SIGTERM. It exits non-zero if the tunnel does not carry traffic.
//! `--keep` leaves the topology up, prints commands to look around, and waits for Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use vpn_tests::{
    interop::tail,
    interop::{iperf_tcp, ping_all},
    topology::{SiteFiles, TwoSite, echo_daemon_logs, vpnd_path},
};

#[derive(Parser)]
#[command(
    name = "demo",
    about = "Two-site IPsec demo (East VLAN / West VXLAN) in network namespaces"
)]
struct Args {
    /// Leave the topology up after the checks, print commands to explore it, and tear it down
    /// on Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// East node's configuration.
    #[arg(long, default_value = "config/east.toml")]
    east: PathBuf,
    /// West node's configuration.
    #[arg(long, default_value = "config/west.toml")]
    west: PathBuf,
    /// Seconds of the TCP transfer in each direction.
    #[arg(long, default_value_t = 2)]
    transfer_secs: u32,
    /// Seconds to wait for the tunnel to come up.
    #[arg(long, default_value_t = 30)]
    up_timeout: u64,
}

const STEPS: usize = 6;

fn main() -> ExitCode {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("demo: error: installing the signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = run(&args, &stop);
    // Everything built is torn down by the drops inside `run` before we get here.
    match result {
        Ok(()) => {
            println!("demo: OK: the tunnel carried traffic both ways; everything torn down");
            ExitCode::SUCCESS
        }
        Err(e) if stop.load(Ordering::Relaxed) => {
            eprintln!("demo: interrupted ({e:#}); everything torn down");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("demo: FAILED: {e:#}");
            eprintln!("demo: everything torn down");
            ExitCode::FAILURE
        }
    }
}

fn step(n: usize, what: &str, stop: &AtomicBool) -> Result<Instant> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted before step {n}");
    }
    println!("demo: [{n}/{STEPS}] {what}");
    Ok(Instant::now())
}

fn done(t: Instant) {
    println!("demo:       done in {:.1} s", t.elapsed().as_secs_f64());
}

fn run(args: &Args, stop: &AtomicBool) -> Result<()> {
    // SAFETY: plain libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo creates network namespaces and loads XDP programs: run it as root \
             (e.g. `sudo -E cargo xtask demo`)"
        );
    }
    let t = step(1, "validating the VPNaaS-style configurations", stop)?;
    for f in [&args.east, &args.west] {
        let out = Command::new(vpnd_path()?)
            .args(["--check", "--config"])
            .arg(f)
            .output()
            .context("running vpnd --check")?;
        if !out.status.success() {
            bail!(
                "{} does not validate: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        print!("demo:       {}", String::from_utf8_lossy(&out.stdout));
    }
    done(t);

    let t = step(
        2,
        "building East (VLAN 100) and West (VXLAN 5001) in network namespaces, starting both vpnds",
        stop,
    )?;
    let files = SiteFiles::load(&args.east, &args.west)?;
    // The daemons' logs stay quiet until --keep (they are shown on failure).
    echo_daemon_logs(false);
    let site = TwoSite::start_files(&files)?;
    println!(
        "demo:       namespaces: east={} west={} internet={} east-host={} west-host={}",
        site.east.name(),
        site.west.name(),
        site.inet.name(),
        site.eh.name(),
        site.wh.name()
    );
    println!(
        "demo:       vpnd instances: {} (pid {}), {} (pid {})",
        site.east.name(),
        site.east_vpnd.pid(),
        site.west.name(),
        site.west_vpnd.pid()
    );
    done(t);
    if let Err(e) = exercise(args, stop, &site) {
        for (name, log) in [("East", &site.east_log), ("West", &site.west_log)] {
            eprintln!(
                "--- {name} vpnd's last log lines:\n{}",
                tail(&log.text(), 15)
            );
        }
        return Err(e);
    }
    if args.keep {
        let vpnctl = vpnd_path()?.with_file_name("vpnctl");
        explore(&site, &vpnctl);
        echo_daemon_logs(true);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        echo_daemon_logs(false);
        println!("demo: Ctrl-C: tearing down (vpnds send IKE Delete, detach, remove their pins)");
    } else {
        println!("demo: tearing down (vpnds send IKE Delete, detach, remove their pins)");
    }
    drop(site);
    Ok(())
}

/// Steps 3 to 6 on the running topology.
fn exercise(args: &Args, stop: &AtomicBool, site: &TwoSite) -> Result<()> {
    let t = step(3, "waiting for IKEv2 to bring the site connection up", stop)?;
    let deadline = Instant::now() + Duration::from_secs(args.up_timeout);
    loop {
        match site.wait_active(Duration::from_secs(1)) {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) if stop.load(Ordering::Relaxed) => bail!("interrupted while waiting"),
            Err(_) => {}
        }
    }
    for (name, log) in [("east", &site.east_log), ("west", &site.west_log)] {
        let lines = log.lines();
        // What vpnd chose from what this kernel said (see `vpnctl probe`), then the tunnel.
        for what in ["vpnd: XDP metadata:", "bpffs: mounted", ": ACTIVE"] {
            if let Some(l) = lines.iter().rfind(|l| l.contains(what)) {
                let l = l.trim();
                let l = l
                    .find("vpnd: ")
                    .or_else(|| l.find("bpffs:"))
                    .map_or(l, |i| &l[i..]);
                println!("demo:       {name}: {l}");
            }
        }
    }
    done(t);

    let t = step(4, "pinging across the tunnel both ways", stop)?;
    ping_all(&site.eh, None, "10.2.0.9", 5).context("East host -> West host")?;
    println!("demo:       10.1.0.5 -> 10.2.0.9: 5/5 replies");
    ping_all(&site.wh, None, "10.1.0.5", 5).context("West host -> East host")?;
    println!("demo:       10.2.0.9 -> 10.1.0.5: 5/5 replies");
    done(t);

    let t = step(5, "a short TCP transfer (iperf3) each way", stop)?;
    let bps = iperf_tcp(&site.wh, "10.2.0.9", &site.eh, None, args.transfer_secs)
        .context("TCP East -> West")?;
    println!("demo:       East -> West: {:.0} Mbit/s", bps / 1e6);
    let bps = iperf_tcp(&site.eh, "10.1.0.5", &site.wh, None, args.transfer_secs)
        .context("TCP West -> East")?;
    println!("demo:       West -> East: {:.0} Mbit/s", bps / 1e6);
    done(t);

    let t = step(6, "what vpnctl shows", stop)?;
    let vpnctl = vpnd_path()?.with_file_name("vpnctl");
    for (name, inst) in [("East", site.east.name()), ("West", site.west.name())] {
        for cmd in [&["conn", "list"][..], &["sa", "list"], &["stats"]] {
            println!("\n--- {name}: vpnctl --instance {inst} {}", cmd.join(" "));
            show(&vpnctl, inst, cmd)?;
        }
    }
    done(t);
    Ok(())
}

/// Runs vpnctl and copies its output; a failing vpnctl fails the demo.
fn show(vpnctl: &Path, instance: &str, cmd: &[&str]) -> Result<()> {
    let out = Command::new(vpnctl)
        .args(["--instance", instance])
        .args(cmd)
        .output()
        .context("running vpnctl")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "vpnctl {}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn explore(site: &TwoSite, vpnctl: &Path) {
    let v = vpnctl.display();
    let (e, w) = (site.east.name(), site.west.name());
    println!(
        "\ndemo: left up (--keep). From another shell, as root:\n\
         \x20 {v} --instance {e} status          # daemon and data plane of East\n\
         \x20 {v} --instance {e} conn list       # IKE state (also: sa list, policy list, tenant list)\n\
         \x20 {v} --instance {w} stats --watch   # West's counters with rates\n\
         \x20 {v} --instance {e} rekey vpnconnection1       # CHILD_SA rekey now (--ike: IKE_SA)\n\
         \x20 ip netns exec {eh} ping 10.2.0.9   # East tenant host -> West tenant host\n\
         \x20 ip netns exec {wh} ping 10.1.0.5   # and back\n\
         \x20 ip netns exec {i} tcpdump -ni br0  # the \"internet\": only IKE and ESP\n\
         \x20 ip netns exec {e} ip -d link show  # East node: XDP on wire and ten\n\
         Logs of both vpnds follow below. Press Ctrl-C here to tear everything down.",
        eh = site.eh.name(),
        wh = site.wh.name(),
        i = site.inet.name(),
    );
}
