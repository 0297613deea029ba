//! Tunnel throughput between two sites, three ways in the same run:
//!
//! - `ours`: two vpnds keyed over IKEv2 (`vpn_tests::topology::TwoSite` with
//!   `IkeKeying::default()`: ESP AES-128-GCM; VLAN tenant host -> East vpnd -> ESP ->
//!   West vpnd -> VXLAN tenant host);
//! - `strongswan`: strongSwan 5.9.8 with kernel-libipsec on both routers
//!   (`vpn_tests::routed::RoutedSites::strongswan`: ESP AES-128-GCM in UDP/4500, userspace
//!   ESP behind a TUN device of MTU 1400);
//! - `plain`: the same routers forwarding without IPsec (`RoutedSites::plain`), the ceiling.
//!
//! Same addresses everywhere (10.1.0.5 -> 10.2.0.9, routers 172.24.4.226 / .233 across a
//! bridge), and the same tenant-host settings (finished packets, no GSO/TSO). Workloads:
//! iperf3 TCP with 1 and 4 streams; UDP at `-b 0` with 64-byte and 1400-byte frames, and with
//! 1372- and 1400-byte datagrams (1400-byte IP packets fill libipsec's TUN; 1428-byte ones are
//! fragmented in front of it). Each round runs every workload on the three setups back to
//! back, in an order that rotates with the round and the workload, so that a noisy machine
//! hits all three alike; the records are the medians over the rounds. The topologies are
//! built once and stay up for the whole run (their daemons are idle when not measured).
//!
//! Records (`bench/results.json`): `tunnel_<workload>_<figure>` is ours (with strongSwan's
//! figure as baseline and ours/strongSwan as ratio), `..._strongswan` and `..._plain` the
//! baselines, `..._vs_strongswan` and `..._vs_plain` the ratios (packets/s and Gbit/s of TCP).
//! Ours negotiates raw ESP here (no NAT); `--ours-udp-encap` makes it use ESP in UDP too.
//!
//! Everything, hosts, routers, daemons and iperf3, shares this machine's CPUs: the figures
//! are what this machine did, not a NIC's line rate.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use vpn_tests::{
    interop::ping_all,
    iperf::{self, Measurement, Traffic, Workload, median},
    netns::{NetNs, require_root},
    results::{self, Record, machine, today},
    routed::{RoutedSites, WEST_HOST},
    strongswan::CharonSettings,
    topology::{IkeKeying, Keying, TwoSite, echo_daemon_logs},
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// One round of 1-second runs (CI keeps the harness alive with it).
    #[arg(long)]
    quick: bool,
    /// Rounds (default 3, 1 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per iperf3 run (default 5, 1 with --quick).
    #[arg(long)]
    secs: Option<u32>,
    /// Only these workloads (comma-separated keys: tcp_1stream, tcp_4streams, udp_64B,
    /// udp_1400B, udp_1372B_payload, udp_1400B_payload); records only what ran.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Make our vpnds UDP-encapsulate ESP (port 4500) as libipsec always does, instead of
    /// the raw ESP they negotiate without a NAT.
    #[arg(long)]
    ours_udp_encap: bool,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        key: "tcp_1stream",
        label: "TCP, 1 stream",
        traffic: Traffic::Tcp { streams: 1 },
    },
    Workload {
        key: "tcp_4streams",
        label: "TCP, 4 streams",
        traffic: Traffic::Tcp { streams: 4 },
    },
    Workload {
        key: "udp_64B",
        label: "UDP, 64-byte frames",
        traffic: Traffic::Udp { payload: 22 },
    },
    Workload {
        key: "udp_1400B",
        label: "UDP, 1400-byte frames (IP 1386)",
        traffic: Traffic::Udp { payload: 1358 },
    },
    Workload {
        key: "udp_1372B_payload",
        label: "UDP, 1372-byte datagrams (IP 1400)",
        traffic: Traffic::Udp { payload: 1372 },
    },
    Workload {
        key: "udp_1400B_payload",
        label: "UDP, 1400-byte datagrams (IP 1428)",
        traffic: Traffic::Udp { payload: 1400 },
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Setup {
    Ours,
    StrongSwan,
    Plain,
}

const SETUPS: [Setup; 3] = [Setup::Ours, Setup::StrongSwan, Setup::Plain];

impl Setup {
    /// Record-name suffix: `tunnel_udp_64B_received_pps` is ours (as before),
    /// `..._strongswan` and `..._plain` the baselines of the same run.
    fn suffix(self) -> &'static str {
        match self {
            Setup::Ours => "",
            Setup::StrongSwan => "_strongswan",
            Setup::Plain => "_plain",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Setup::Ours => "ours",
            Setup::StrongSwan => "strongswan",
            Setup::Plain => "plain",
        }
    }
}

/// The three topologies, up for the whole run. Field order is drop order.
struct Sites {
    ours: TwoSite,
    swan: RoutedSites,
    plain: RoutedSites,
}

impl Sites {
    /// (client namespace, server namespace): East's tenant host to West's.
    fn ends(&self, s: Setup) -> (&NetNs, &NetNs) {
        match s {
            Setup::Ours => (&self.ours.eh, &self.ours.wh),
            Setup::StrongSwan => (&self.swan.eh, &self.swan.wh),
            Setup::Plain => (&self.plain.eh, &self.plain.wh),
        }
    }
}

/// Progress on stderr, with the time since start.
fn progress(start: Instant, msg: &str) {
    eprintln!(
        "tunnel-bench [{:>4.0}s] {msg}",
        start.elapsed().as_secs_f64()
    );
}

fn build(start: Instant, udp_encap: bool) -> Result<Sites> {
    progress(start, "building ours: two vpnds, IKEv2 (AES-128-GCM ESP)");
    let mut keying = IkeKeying::default();
    if udp_encap {
        keying.udp_encap = "force".into();
    }
    // The daemons' lines are kept (and shown on failure) but not echoed: long runs.
    echo_daemon_logs(false);
    let ours = TwoSite::start_with(&Keying::Ike(keying), |_, _| Ok(()))?;
    ours.wait_active(Duration::from_secs(30))?;
    if let Some(l) = ours
        .east_log
        .lines()
        .iter()
        .find(|l| l.contains(": ACTIVE"))
    {
        progress(
            start,
            &format!("  {}", l.split("vpnd: ").last().unwrap_or(l)),
        );
    }
    ping_all(&ours.eh, None, WEST_HOST, 3).with_context(|| {
        format!(
            "our tunnel does not carry traffic:\n{}\n{}",
            ours.east_log.text(),
            ours.west_log.text()
        )
    })?;
    progress(
        start,
        "building strongswan: charon + kernel-libipsec on both routers",
    );
    let swan = RoutedSites::strongswan(&CharonSettings::default())?;
    let c = swan.east_child()?;
    progress(
        start,
        &format!(
            "  CHILD_SA {} {}-bit, UDP-encapsulated: {}, libipsec TUN MTU {}",
            c.encr_alg,
            c.encr_keysize,
            c.encap,
            swan.tun_mtu().unwrap_or(0)
        ),
    );
    progress(start, "building plain: the routers just forward");
    let plain = RoutedSites::plain()?;
    Ok(Sites { ours, swan, plain })
}

fn show(m: &Measurement) -> String {
    match (m.received_pps, m.loss) {
        (Some(pps), Some(loss)) => format!(
            "{:.1} kpps received, {:.3} Gbit/s, loss {:.3}",
            pps / 1e3,
            m.gbps,
            loss
        ),
        _ => format!(
            "{:.3} Gbit/s, {} retransmits",
            m.gbps,
            m.retransmits.map_or("?".into(), |r| r.to_string()),
        ),
    }
}

/// One measurement, retried once after a failure (e.g. an iperf3 server that missed its
/// start).
fn measure(
    sites: &Sites,
    s: Setup,
    w: &Workload,
    secs: u32,
    start: Instant,
) -> Result<Measurement> {
    let (client, server) = sites.ends(s);
    match iperf::run(client, server, WEST_HOST, w.traffic, secs) {
        Ok(m) => Ok(m),
        Err(e) => {
            progress(start, &format!("  {} failed ({e:#}); once more", s.name()));
            std::thread::sleep(Duration::from_secs(1));
            iperf::run(client, server, WEST_HOST, w.traffic, secs)
                .with_context(|| format!("{} {}", s.name(), w.label))
        }
    }
}

/// One figure of one workload: (metric suffix, unit, whether ratios make sense, extractor).
type Metric = (&'static str, &'static str, bool, fn(&Measurement) -> f64);

fn metrics(w: &Workload) -> Vec<Metric> {
    match w.traffic {
        Traffic::Tcp { .. } => vec![("gbps", "Gbit/s", true, |m| m.gbps)],
        Traffic::Udp { .. } => vec![
            ("received_pps", "packets/s", true, |m| {
                m.received_pps.unwrap_or(f64::NAN)
            }),
            ("received_gbps", "Gbit/s", false, |m| m.gbps),
            ("loss", "fraction", false, |m| m.loss.unwrap_or(f64::NAN)),
        ],
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

fn fmt_value(unit: &str, v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if unit == "packets/s" {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let secs = args.secs.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let settle = Duration::from_millis(if args.quick { 200 } else { 500 });
    let start = Instant::now();
    // Ctrl-C / SIGTERM: stop between measurements and tear everything down (the iperf3
    // client dies with the signal anyway; the daemons run in their own process groups).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }

    let workloads: Vec<Workload> = WORKLOADS
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|k| k == w.key))
        .collect();
    if let Some(k) = args
        .only
        .iter()
        .find(|k| !WORKLOADS.iter().any(|w| w.key == *k))
    {
        bail!("no workload {k:?}");
    }
    let mut sites = build(start, args.ours_udp_encap)?;
    let mut got: HashMap<(Setup, &'static str), Vec<Measurement>> = HashMap::new();
    let total = rounds as usize * workloads.len() * SETUPS.len();
    let mut n = 0;
    for round in 0..rounds as usize {
        for (wi, w) in workloads.iter().enumerate() {
            let first = (round + wi) % SETUPS.len();
            for k in 0..SETUPS.len() {
                let s = SETUPS[(first + k) % SETUPS.len()];
                if stop.load(Ordering::Relaxed) {
                    bail!("interrupted; everything torn down");
                }
                n += 1;
                let m = measure(&sites, s, w, secs, start)
                    .with_context(|| format!("{} {} (round {})", s.name(), w.label, round + 1))?;
                progress(
                    start,
                    &format!(
                        "[round {}/{rounds}, {n}/{total}] {:<36} {:<10} {}",
                        round + 1,
                        w.label,
                        s.name(),
                        show(&m)
                    ),
                );
                got.entry((s, w.key)).or_default().push(m);
                std::thread::sleep(settle);
            }
        }
    }
    match sites.swan.east_child() {
        Ok(c) => progress(
            start,
            &format!(
                "strongswan, East CHILD_SA: {} ESP packets in, {} out",
                c.packets_in, c.packets_out
            ),
        ),
        Err(e) => progress(start, &format!("strongswan counters: {e:#}")),
    }
    let (e, w) = sites.ours.stop_daemons();
    progress(start, &format!("ours, East: {e}"));
    progress(start, &format!("ours, West: {w}"));
    drop(sites);
    progress(start, "torn down");

    // Medians, records, table.
    let (machine, date) = (machine(), today());
    let rec = |name: String, value: f64, unit: &str, base: Option<(String, f64)>| {
        let ratio = base
            .as_ref()
            .and_then(|(_, b)| ratio(value, *b))
            .map(round3);
        Record {
            name,
            value: round3(value),
            unit: unit.into(),
            baseline_name: base.as_ref().map(|(n, _)| n.clone()),
            baseline_value: base.map(|(_, v)| round3(v)),
            ratio,
            machine: machine.clone(),
            date: date.clone(),
        }
    };
    let mut records = Vec::new();
    let mut table = Vec::new();
    for w in &workloads {
        for (suffix, unit, ratios, get) in metrics(w) {
            let med = |s: Setup| {
                let v: Vec<f64> = got
                    .get(&(s, w.key))
                    .into_iter()
                    .flatten()
                    .map(get)
                    .collect();
                median(&v)
            };
            let (ours, swan, plain) = (med(Setup::Ours), med(Setup::StrongSwan), med(Setup::Plain));
            let name = |s: Setup| format!("tunnel_{}_{suffix}{}", w.key, s.suffix());
            for (s, v) in [(Setup::StrongSwan, swan), (Setup::Plain, plain)] {
                if v.is_finite() {
                    records.push(rec(name(s), v, unit, None));
                }
            }
            if !ours.is_finite() {
                continue;
            }
            let (vs_swan, vs_plain) = if ratios {
                (ratio(ours, swan), ratio(ours, plain))
            } else {
                (None, None)
            };
            let base = (ratios && swan.is_finite()).then(|| (name(Setup::StrongSwan), swan));
            records.push(rec(name(Setup::Ours), ours, unit, base));
            for (r, s, v, what) in [
                (vs_swan, Setup::StrongSwan, swan, "strongswan"),
                (vs_plain, Setup::Plain, plain, "plain"),
            ] {
                if let Some(r) = r {
                    records.push(Record {
                        ratio: Some(round3(r)),
                        ..rec(
                            format!("{}_vs_{what}", name(Setup::Ours)),
                            r,
                            &format!("ratio (ours / {what})"),
                            Some((name(s), v)),
                        )
                    });
                }
            }
            table.push((
                format!("{}_{suffix}", w.key),
                unit,
                [ours, swan, plain],
                vs_swan,
                vs_plain,
            ));
        }
    }

    println!(
        "\ntunnel throughput, medians of {rounds} round(s) of {secs} s runs; ours = two vpnds \
         over IKEv2 ({}), strongswan = charon + kernel-libipsec on both routers (ESP in UDP), \
         plain = routing only",
        if args.ours_udp_encap {
            "ESP in UDP"
        } else {
            "raw ESP"
        }
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>10} {:>10}  unit",
        "workload / figure", "ours", "strongswan", "plain", "ours/sS", "ours/plain"
    );
    for (name, unit, [o, s, p], vs, vp) in &table {
        println!(
            "{name:<34} {:>12} {:>12} {:>12} {:>10} {:>10}  {unit}",
            fmt_value(unit, *o),
            fmt_value(unit, *s),
            fmt_value(unit, *p),
            fmt_ratio(*vs),
            fmt_ratio(*vp),
        );
    }
    let find = |n: &str| table.iter().find(|t| t.0 == n);
    let target = |label: &str, got: Option<f64>, want: f64| {
        let verdict = match got {
            Some(g) if g >= want => "met",
            Some(_) => "not met",
            None => "not measured",
        };
        println!("  {label}: {} (target {want}x, {verdict})", fmt_ratio(got));
    };
    println!("targets (tracked, not asserted):");
    target(
        "TCP 1 stream vs strongSwan",
        find("tcp_1stream_gbps").and_then(|t| t.3),
        10.0,
    );
    target(
        "UDP 64 B packet rate vs strongSwan",
        find("udp_64B_received_pps").and_then(|t| t.3),
        10.0,
    );
    target(
        "UDP 1400 B packet rate vs plain routing",
        find("udp_1400B_received_pps").and_then(|t| t.4),
        0.5,
    );
    results::merge_into(&args.out, &records)?;
    eprintln!(
        "tunnel-bench: {} records into {} in {:.0} s",
        records.len(),
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
