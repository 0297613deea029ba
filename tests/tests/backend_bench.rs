//! The kernel (xfrm) backend's TCP throughput against the AF_XDP backend's, on the same kernel
//! in the same run: `cargo xtask bench --only backend-bench` runs this (ignored) test in the
//! second-kernel lane (Debian's 6.1 under QEMU TCG; this machine's kernel has no ESP AEAD) and
//! merges the records it writes into the results file.
//!
//! Three two-site topologies (`vpn_tests::cross`): both sites on AF_XDP (the baseline), both
//! on the kernel backend, and A (the sender) on the kernel with B on AF_XDP. The baseline stays
//! up throughout, next to one of the others at a time (the guest has room for two); every
//! round times one TCP transfer ha -> hb through each of the two up (the order flips between
//! rounds, so a slow moment of the emulator does not land on one configuration); the medians
//! and the ratios to AF_XDP are kept. The figures come out of an emulated CPU: only the ratios
//! mean something.
//!
//! Environment: `VPN_BENCH_OUT` (the JSON file to write; unset: printed only),
//! `VPN_BENCH_QUICK=1` (one short round per phase), `VPN_BENCH_ROUNDS`, `VPN_BENCH_MIB` (override the
//! rounds and the MiB per transfer).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;
use vpn_tests::{
    cross::{Cross, tcp_transfer, tcp_transfer_timed, vpnctl},
    netns::require_root,
    results::{Record, machine, today},
};

/// The caveat that goes with every figure of this benchmark.
const NOTE: &str = "TCG emulation on a 2-vCPU host: absolute figures are meaningless; compare \
                    the ratio only";

/// (record suffix, label, A on the kernel backend, B on the kernel backend); the first is the
/// baseline.
const CONFIGS: [(&str, &str, bool, bool); 3] = [
    ("afxdp", "afxdp-afxdp", false, false),
    ("kernel", "kernel-kernel", true, true),
    ("kernel_afxdp", "kernel-afxdp", true, false),
];

const PREFIX: &str = "kernel_backend_qemu_tcp_mbps";

fn env_num(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(
            v.parse()
                .with_context(|| format!("{name}={v}: not a number"))?,
        )),
        Err(_) => Ok(None),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Topology `CONFIGS[i]`, up (both sites on their backends, checked) and warmed up.
fn up(i: usize) -> Result<Cross> {
    let (_, label, a_kernel, b_kernel) = CONFIGS[i];
    let t = Instant::now();
    let mut x = Cross::build(a_kernel, b_kernel)?;
    x.start().with_context(|| {
        format!("{label}: no tunnel (a site on the kernel backend needs the kernel's ESP)")
    })?;
    for (site, on_kernel, ns) in [("A", a_kernel, &x.a), ("B", b_kernel, &x.b)] {
        let sas = vpnctl(ns.name(), &["sa", "list"])?;
        let want = if on_kernel { "kernel" } else { "afxdp" };
        if sas["sas"][0]["backend"] != want {
            bail!("{label}: site {site} is not on the {want} backend: {sas}");
        }
    }
    tcp_transfer(&x.ha, &x.hb, "10.2.0.9", 5300, 1 << 20)
        .with_context(|| format!("{label}: warm-up transfer"))?;
    eprintln!(
        "backend-bench: {label} up and warm in {:.1} s ({} MiB available)",
        t.elapsed().as_secs_f64(),
        mem_available_mib()
    );
    Ok(x)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[test]
#[ignore = "a benchmark for the 6.1 kernel lane: `cargo xtask bench --only backend-bench`"]
fn kernel_backend_vs_afxdp_tcp_throughput() -> Result<()> {
    require_root();
    let started = Instant::now();
    let quick = std::env::var("VPN_BENCH_QUICK").is_ok_and(|v| v == "1");
    let rounds = env_num("VPN_BENCH_ROUNDS")?.unwrap_or(if quick { 1 } else { 5 });
    let mib = env_num("VPN_BENCH_MIB")?.unwrap_or(if quick { 2 } else { 8 });
    if rounds == 0 || mib == 0 {
        bail!("VPN_BENCH_ROUNDS and VPN_BENCH_MIB must be at least 1");
    }
    let len = mib << 20;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let in_lane = std::env::var("VPN_LANE").is_ok_and(|v| v == "1");
    eprintln!(
        "backend-bench: kernel {kernel}, {rounds} round(s) of {mib} MiB per configuration, \
         {} MiB available",
        mem_available_mib()
    );

    // Two topologies at a time: one vpnd takes about 150 MiB of the guest's 1 GiB (its AF_XDP
    // sockets' UMEM), and three topologies left 15 MiB. Phase 1: AF_XDP and kernel; phase 2:
    // AF_XDP and kernel-afxdp. Within a phase the two alternate, the order flipping every
    // round; the AF_XDP baseline is the median of both phases' rounds.
    let mut mbps: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    let mut port = 5301;
    let afxdp = up(0)?;
    for other in [1, 2] {
        let x = up(other)?;
        let pair = [(0, &afxdp), (other, &x)];
        for r in 0..rounds {
            for k in 0..2 {
                let (i, x) = pair[(k + r) % 2];
                let label = CONFIGS[i].1;
                let d = tcp_transfer_timed(&x.ha, &x.hb, "10.2.0.9", port, len)
                    .with_context(|| format!("{label}: round {}", r + 1))?;
                port += 1;
                let m = (len * 8) as f64 / d.as_secs_f64() / 1e6;
                eprintln!(
                    "backend-bench: phase {other} round {}/{rounds} {label:<13} {mib} MiB in \
                     {:.2} s = {m:.1} Mbit/s",
                    r + 1,
                    d.as_secs_f64()
                );
                mbps[i].push(m);
            }
        }
    }
    drop(afxdp);

    let medians: Vec<f64> = mbps.iter().map(|v| median(v)).collect();
    let base = medians[0];
    let machine = match machine() {
        m if in_lane && !m.contains("QEMU") => format!("{m}, QEMU TCG guest"),
        m => m,
    };
    let date = today();
    let base_name = format!("{PREFIX}_{}", CONFIGS[0].0);
    let mut records = Vec::new();
    let mut configs = serde_json::Map::new();
    for (i, (suffix, label, _, _)) in CONFIGS.iter().enumerate() {
        let ratio = (i > 0).then(|| round3(medians[i] / base));
        records.push(Record {
            name: format!("{PREFIX}_{suffix}"),
            value: round3(medians[i]),
            unit: "Mbit/s".into(),
            baseline_name: (i > 0).then(|| base_name.clone()),
            baseline_value: (i > 0).then(|| round3(base)),
            ratio,
            machine: machine.clone(),
            date: date.clone(),
        });
        configs.insert(
            label.to_string(),
            json!({
                "mbps": mbps[i].iter().map(|m| round3(*m)).collect::<Vec<_>>(),
                "median_mbps": round3(medians[i]),
                "ratio_vs_afxdp": ratio,
            }),
        );
    }
    let ratio = round3(medians[1] / base);
    records.push(Record {
        name: "kernel_backend_qemu_tcp_kernel_vs_afxdp".into(),
        value: ratio,
        unit: "ratio (kernel / afxdp)".into(),
        baseline_name: Some(base_name.clone()),
        baseline_value: Some(round3(base)),
        ratio: Some(ratio),
        machine: machine.clone(),
        date: date.clone(),
    });
    let report = json!({
        "bench": "backend-bench",
        "what": "TCP ha -> hb through two vpnds keyed by IKEv2 (aes128gcm16-esn), Mbit/s, \
                 median of the rounds",
        "kernel": kernel,
        "machine": machine,
        "note": NOTE,
        "rounds_per_phase": rounds,
        "phases": "1: afxdp-afxdp and kernel-kernel alternating; 2: afxdp-afxdp and \
                   kernel-afxdp alternating (the afxdp median is over both)",
        "afxdp_phase_medians_mbps": [
            round3(median(&mbps[0][..rounds])),
            round3(median(&mbps[0][rounds..])),
        ],
        "bytes_per_transfer": len,
        "configs": configs,
        "ratio_kernel_vs_afxdp": ratio,
        "elapsed_s": round3(started.elapsed().as_secs_f64()),
        "records": records,
    });
    let text = serde_json::to_string_pretty(&report)? + "\n";
    eprintln!(
        "backend-bench: kernel/afxdp {ratio:.3} (medians: afxdp {:.1}, kernel {:.1}, \
         kernel-afxdp {:.1} Mbit/s; {NOTE}); {:.0} s",
        medians[0],
        medians[1],
        medians[2],
        started.elapsed().as_secs_f64()
    );
    match std::env::var_os("VPN_BENCH_OUT") {
        Some(p) => {
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.to_string_lossy()))?
        }
        None => eprintln!("{text}"),
    }
    Ok(())
}
