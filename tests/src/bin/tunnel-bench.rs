//! Throughput of the data plane between two sites (`vpn_tests::topology`: VLAN tenant host ->
//! East vpnd -> ESP -> West vpnd -> VXLAN tenant host), one worker thread per node:
//! UDP at 64-byte and 1400-byte frames at the highest rate iperf3 offers (received packets/s
//! and Gbit/s, loss), and one TCP stream. Everything, hosts and daemons, shares this
//! machine's CPUs; the figures are what this machine did, not a NIC's line rate.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use vpn_tests::{
    netns::require_root,
    results::{self, Record, machine, today},
    topology::{TwoSite, spawn_in},
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Shorter runs (CI keeps the harness alive with it).
    #[arg(long)]
    quick: bool,
}

/// One iperf3 run from East's host to West's; returns the JSON summary.
fn iperf(site: &TwoSite, args: &[&str]) -> Result<serde_json::Value> {
    let _server = spawn_in(&site.wh, &["iperf3", "-s", "-1", "-B", "10.2.0.9"])?;
    std::thread::sleep(Duration::from_millis(300));
    let mut cmd = vec!["timeout", "60", "iperf3", "-c", "10.2.0.9", "-J"];
    cmd.extend_from_slice(args);
    let out = site.eh.exec(&cmd).context("iperf3")?;
    Ok(serde_json::from_str(&out)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    let secs = if args.quick { "1" } else { "5" };
    eprintln!("starting the two-site topology");
    let site = TwoSite::start(|_, _| Ok(()))?;
    site.eh
        .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("the tunnel does not carry traffic")?;

    let mut rec = Vec::new();
    // 64-byte frames: 22 bytes of UDP payload (+8 UDP +20 IP +14 Ethernet). 1400-byte frames:
    // 1358 bytes of payload. "-b 0": as fast as iperf3 can send.
    for (label, len) in [("64B", "22"), ("1400B", "1358")] {
        eprintln!("UDP {label}, {secs} s");
        let v = iperf(&site, &["-u", "-b", "0", "-l", len, "-t", secs])?;
        let sum = &v["end"]["sum"];
        let secs_run = sum["seconds"].as_f64().context("seconds")?;
        let sent = sum["packets"].as_f64().context("packets")?;
        let lost = sum["lost_packets"].as_f64().context("lost")?;
        let frame = if label == "64B" { 64.0 } else { 1400.0 };
        let pps = (sent - lost) / secs_run;
        rec.push((format!("tunnel_udp_{label}_received_pps"), pps, "packets/s"));
        rec.push((
            format!("tunnel_udp_{label}_received_gbps"),
            pps * frame * 8.0 / 1e9,
            "Gbit/s",
        ));
        rec.push((format!("tunnel_udp_{label}_loss"), lost / sent, "fraction"));
    }
    eprintln!("TCP, {secs} s");
    let v = iperf(&site, &["-t", secs])?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("TCP result")?;
    rec.push(("tunnel_tcp_1stream_gbps".into(), bps / 1e9, "Gbit/s"));
    drop(site);

    let (machine, date) = (machine(), today());
    let new: Vec<Record> = rec
        .into_iter()
        .map(|(name, value, unit)| Record {
            name,
            value: (value * 1000.0).round() / 1000.0,
            unit: unit.into(),
            baseline_name: None,
            baseline_value: None,
            ratio: None,
            machine: machine.clone(),
            date: date.clone(),
        })
        .collect();
    for r in &new {
        println!("{:<40} {:>14.3} {}", r.name, r.value, r.unit);
    }
    results::merge_into(&args.out, &new)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
