//! `dataplane-bench`: packets/s of ONE node's data plane, fed by the traffic generator
//! (`vpn_userspace::pktgen`) and counted where they come out (`vpn_tests::dut`: vpnd with a
//! manual SA between a generator namespace and two counting XDP sinks):
//!
//! - encrypt: VLAN 100 tenant frames (XDP live frames, one generator thread per worker, thread
//!   t on CPU t, which a veth maps to the DUT's rx queue t) -> vpnd -> ESP counted on the far
//!   end of the wire;
//! - decrypt: valid ESP, a ring of pre-built packets copied whole into XDP live frames (one
//!   thread per worker, as for encrypt; the ring repeats, so the DUT's SA has
//!   replay_window = 0) -> vpnd -> tenant frames counted. Live frames rather than the AF_XDP
//!   transmitter: copy-mode AF_XDP on veth offers about 1 Mpps here, which one worker
//!   already decrypts, and the frames reach the DUT the way a NIC's do (XDP on a frame, not
//!   on an skb);
//!
//! at 64-byte, IMIX and 1400-byte tenant frames, with 1 and 2 workers (rx queues of the
//! veths). The generator sends as fast as it can; the figure is what came out per second.
//! Configurations alternate within every round (the worker counts alternate their order
//! between rounds) and the medians are kept. Also measured: the generator alone into a sink
//! (live frames, and AF_XDP ESP), to show what it can offer.
//!
//! One worker runs with each XDP metadata carrier the kernel can load (the metadata area,
//! `bpf_xdp_adjust_meta`, and the in-packet shim): `..._1worker_adjust_meta_pps` and
//! `..._1worker_shim_pps`, the shim's ratio against the metadata area of the same round set.
//! `..._1worker_pps` is the figure of the carrier vpnd chooses by itself (the same
//! measurement under the name the targets use), and 2 workers run with that carrier.
//!
//! Everything — generator, the DUT's XDP programs (which run in the softirq of the CPU that
//! sent the frame) and its workers — shares this machine's CPUs: on a 2-CPU machine the
//! second worker competes with the generator. Read the figures as what this machine did.

use std::{collections::BTreeMap, path::PathBuf, sync::atomic::AtomicBool, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use vpn_tests::{
    dut::{self, Dut, DutOptions},
    netns::{NetNs, require_root},
    results::{self, Record, machine, today},
};
use vpn_userspace::{
    dataplane::{Carrier, CarrierChoice, choose_carrier},
    pktgen::{self, Engine, frame::Size, sink::Sink},
};

#[derive(Parser)]
struct Args {
    /// Results file (records are replaced by name, others kept).
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// One short round (CI keeps the harness alive with it; figures are rougher).
    #[arg(long)]
    quick: bool,
    /// Rounds (default 5, or 1 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per measurement (default 3, or 1 with --quick).
    #[arg(long)]
    secs: Option<f64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Dir {
    Encrypt,
    Decrypt,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Encrypt => "encrypt",
            Dir::Decrypt => "decrypt",
        }
    }
}

const SIZES: [(&str, Size); 3] = [
    ("64B", Size::Fixed(64)),
    ("imix", Size::Imix),
    ("1400B", Size::Fixed(1400)),
];

fn workers_label(w: u32) -> String {
    if w == 1 {
        "1worker".into()
    } else {
        format!("{w}workers")
    }
}

/// `carrier`: `None` for the carrier vpnd chooses by itself (the targets' records).
fn record_name(dir: Dir, size: &str, workers: u32, carrier: Option<Carrier>) -> String {
    format!(
        "dataplane_{}_{size}_{}{}_pps",
        dir.name(),
        workers_label(workers),
        carrier
            .map(|c| format!("_{}", c.name()))
            .unwrap_or_default()
    )
}

/// One measurement: the generator flat out for `secs`; packets/s that came out of the DUT,
/// and what was offered.
fn measure(d: &Dut, dir: Dir, size: Size, secs: f64) -> Result<(f64, f64)> {
    let mut a = match dir {
        Dir::Encrypt => d.encrypt_args(size),
        Dir::Decrypt => {
            let mut a = d.decrypt_args(size);
            a.engine = pktgen::live_or_afxdp();
            a
        }
    };
    a.duration = Some(secs);
    a.flows = 16;
    let out = |d: &Dut| -> Result<u64> {
        Ok(match dir {
            Dir::Encrypt => d.wire_out()?.esp,
            Dir::Decrypt => d.tenant_out()?.udp,
        })
    };
    let before = out(d)?;
    let s = pktgen::run(&a, &AtomicBool::new(false))
        .with_context(|| format!("generator for {} {size}", dir.name()))?;
    let after = dut::settle(|| out(d))?;
    let got = after - before;
    Ok((got as f64 / s.duration_s, s.pps))
}

/// The generator alone into a sink on a bare veth: (plain 64 B record name and pps (live
/// frames, or AF_XDP where the kernel refuses them), AF_XDP ESP 64 B pps).
fn generator_alone(secs: f64) -> Result<(&'static str, f64, f64)> {
    let ns = NetNs::new("vpnGa")?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    ns.ip(&["link", "add", "ga0", "type", "veth", "peer", "name", "ga1"])?;
    ns.ip(&["link", "set", "ga0", "up"])?;
    ns.ip(&["link", "set", "ga1", "up"])?;
    let sink = {
        let _in = ns.enter()?;
        Sink::attach("ga1")?
    };
    let mut a = pktgen::Args::new("ga0");
    a.netns = Some(ns.name().into());
    a.engine = pktgen::live_or_afxdp();
    a.duration = Some(secs);
    a.quiet = true;
    let before = sink.counts()?.udp;
    let s = pktgen::run(&a, &AtomicBool::new(false))?;
    let plain = (dut::settle(|| sink.counts())?.udp - before) as f64 / s.duration_s;
    let plain_name = match a.engine {
        Engine::Live => "pktgen_live_64B_pps",
        _ => "pktgen_afxdp_plain_64B_pps",
    };
    let mut e = a.clone();
    e.mode = pktgen::Mode::Esp;
    e.engine = Engine::Afxdp;
    e.key = Some(dut::KEY_IN.into());
    let before = sink.counts()?.esp;
    let s = pktgen::run(&e, &AtomicBool::new(false))?;
    let esp = (dut::settle(|| sink.counts())?.esp - before) as f64 / s.duration_s;
    Ok((plain_name, plain, esp))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    vpn_tests::topology::echo_daemon_logs(false);
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let secs = args.secs.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut offered: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // The carriers this kernel can load; vpnd's own choice first.
    let auto = choose_carrier(CarrierChoice::Auto);
    eprintln!("{auto}");
    let carriers: Vec<Carrier> = std::iter::once(auto.carrier)
        .chain(Carrier::ALL.into_iter().filter(|c| {
            *c != auto.carrier
                && (*c == Carrier::Shim || vpn_userspace::probe::bpf::xdp_adjust_meta().is_ok())
        }))
        .collect();
    if carriers.len() < 2 {
        eprintln!(
            "only the {} carrier loads on this kernel: no side-by-side carrier records",
            auto.carrier
        );
    }
    for round in 0..rounds {
        // (workers, carrier): one worker with each carrier, two with vpnd's choice; the
        // order alternates between rounds.
        let mut configs: Vec<(u32, Carrier)> = carriers.iter().map(|c| (1, *c)).collect();
        configs.push((2, auto.carrier));
        if round % 2 == 1 {
            configs.reverse();
        }
        for (w, carrier) in configs {
            eprintln!(
                "round {}/{rounds}: {w} worker(s), carrier {carrier}",
                round + 1
            );
            let mut d = Dut::start(DutOptions {
                queues: w,
                replay_window: 0,
                carrier: Some(carrier.name()),
                ..Default::default()
            })?;
            let dirs = if round % 2 == 0 {
                [Dir::Encrypt, Dir::Decrypt]
            } else {
                [Dir::Decrypt, Dir::Encrypt]
            };
            for dir in dirs {
                for (label, size) in SIZES {
                    let (pps, gen_pps) = measure(&d, dir, size, secs)?;
                    // The carrier's own record (one worker), and vpnd's choice under the
                    // targets' name.
                    let mut names = Vec::new();
                    if w == 1 && carriers.len() > 1 {
                        names.push(record_name(dir, label, w, Some(carrier)));
                    }
                    if carrier == auto.carrier {
                        names.push(record_name(dir, label, w, None));
                    }
                    eprintln!(
                        "  {:<48} {pps:>12.0} packets/s out ({gen_pps:.0} offered)",
                        names.join(" = ")
                    );
                    for name in names {
                        runs.entry(name.clone()).or_default().push(pps);
                        offered.entry(name).or_default().push(gen_pps);
                    }
                }
            }
            let last = d.stop();
            eprintln!("  vpnd: drops {}", dut::drops(&last));
        }
        let (plain_name, plain, esp) = generator_alone(secs)?;
        eprintln!("  generator alone: {plain_name} {plain:.0}, AF_XDP ESP 64B {esp:.0} pps");
        runs.entry(plain_name.into()).or_default().push(plain);
        runs.entry("pktgen_afxdp_esp_64B_pps".into())
            .or_default()
            .push(esp);
        std::thread::sleep(Duration::from_millis(100));
    }

    let (machine, date) = (machine(), today());
    let median_of = |name: &str| runs.get(name).map(|v| median(v.clone()));
    let mut new = Vec::new();
    for (name, v) in &runs {
        let value = median(v.clone()).round();
        // 2-worker figures against the 1-worker one of the same direction and size; the
        // shim against the metadata area.
        let baseline = if name.contains("_2workers_") {
            Some(name.replace("_2workers_", "_1worker_"))
        } else if name.ends_with("_shim_pps") {
            Some(name.replace("_shim_pps", "_adjust_meta_pps"))
        } else {
            None
        };
        let base_value = baseline.as_deref().and_then(median_of).map(f64::round);
        new.push(Record {
            name: name.clone(),
            value,
            unit: "packets/s".into(),
            baseline_name: baseline,
            baseline_value: base_value,
            ratio: base_value
                .filter(|b| *b > 0.0)
                .map(|b| (value / b * 1000.0).round() / 1000.0),
            machine: machine.clone(),
            date: date.clone(),
        });
    }
    println!(
        "{:<42} {:>12} {:>12} {:>7}",
        "record", "packets/s", "offered", "ratio"
    );
    for r in &new {
        let off = offered.get(&r.name).map(|v| median(v.clone()));
        println!(
            "{:<42} {:>12.0} {:>12} {:>7}",
            r.name,
            r.value,
            off.map_or("-".into(), |o| format!("{o:.0}")),
            r.ratio.map_or("".into(), |x| format!("{x:.2}x"))
        );
    }
    results::merge_into(&args.out, &new)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
