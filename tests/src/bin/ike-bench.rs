//! `ike-bench`: IKEv2 control-plane figures.
//!
//! 1. Establishment rate of the protocol core alone: two `Endpoint`s in memory (no sockets,
//!    no data plane), N connections with their own address pairs (198.18.x.y <-> 198.19.x.y),
//!    one side bi-directional, the other response-only; wall-clock time from `start` until
//!    every connection is ACTIVE on both sides. Both endpoints' work runs on this one thread,
//!    so the rate is for the two sides together. The protocol clock stands still (no
//!    retransmissions); delivery is in batches (all of one side's queued datagrams, then the
//!    other's), so all IKE_SA_INITs arrive before the first IKE_AUTH and, as in vpnd, the
//!    responder asks for cookies above its default 30 half-open SAs. Median of several
//!    repetitions.
//! 2. Establishment rate between two real vpnds (`vpn_tests::ikebench`): N connections, each
//!    with its own address pair and subnets; the response-only side is started and listening
//!    first, then the initiator; the time from the initiator's `vpnd: running` line until its
//!    last `ACTIVE` line (each line timestamped when read) gives establishments per second.
//!    The time from spawning vpnd to `vpnd: running` (XDP load and attach, AF_XDP sockets,
//!    workers, IKE and control sockets) is recorded too.
//! 3. Packets lost while rekeying under load: one connection, a steady UDP stream from the
//!    host behind I to the host behind R (iperf3, 64-byte payloads at 20,000 packets/s, far
//!    below what the tunnel carries) once without rekeys (the baseline) and once with a rekey
//!    signal every second, alternating CHILD_SA (SIGUSR1) and IKE_SA (SIGUSR2) rekeys and
//!    the side that starts them; then the same with `ping -i 0.005`. Rekeys are counted from
//!    the `carries outbound traffic` lines of both daemons (one per side per new CHILD_SA).
//!
//! Everything (both daemons, both hosts, iperf3) shares this machine's CPUs.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use vpn_tests::{
    ikebench::{HOST_R, Pair},
    netns::{NetNs, require_root},
    results::{self, Record, machine, today},
    topology::spawn_in,
};
use vpn_userspace::{
    config::parse_prefix,
    ike::{
        conn::{ConnConfig, Dpd, Encap, Identity, Initiator, Lifetimes},
        endpoint::{ConnStatus, Endpoint, Event, Settings},
        limits::Limits,
        proposal::{EspProposal, IkeProposal},
    },
};

#[derive(Parser)]
struct Args {
    /// Results file (records are replaced by name, others kept).
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Fewer connections, repetitions and seconds (CI keeps the harness alive with it).
    #[arg(long)]
    quick: bool,
    /// Run only these parts (1: core, 2: vpnd establishment, 3: rekey loss); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Packet rate of the UDP stream of part 3.
    #[arg(long, default_value_t = 20_000)]
    udp_pps: u32,
}

const SUITES: [&str; 3] = [
    "aes256gcm16-prfsha256-modp2048",
    "aes128gcm16-prfsha256-ecp256",
    "aes128gcm16-prfsha256-curve25519",
];
/// The IKE proposal of the vpnd runs: Neutron's defaults (AES-256-GCM, SHA-256, group 14).
const VPND_SUITE: &str = "aes256gcm16-prfsha256-modp2048";
/// UDP payload length of the rekey runs.
const UDP_LEN: u32 = 64;

struct Out {
    rec: Vec<Record>,
    machine: String,
    date: String,
}

impl Out {
    fn add(&mut self, name: String, value: f64, unit: &str, baseline: Option<(String, f64)>) {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let (baseline_name, baseline_value, ratio) = match baseline {
            Some((n, b)) => (
                Some(n),
                Some(round(b)),
                (b != 0.0).then(|| round(value / b)),
            ),
            None => (None, None, None),
        };
        println!("{name:<58} {:>12.3} {unit}", round(value));
        self.rec.push(Record {
            name,
            value: round(value),
            unit: unit.into(),
            baseline_name,
            baseline_value,
            ratio,
            machine: self.machine.clone(),
            date: self.date.clone(),
        });
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The core in memory

fn core_conn(i: usize, initiator: bool, suite: &str) -> ConnConfig {
    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
    let a = IpAddr::V4(Ipv4Addr::new(198, 18, hi, lo));
    let b = IpAddr::V4(Ipv4Addr::new(198, 19, hi, lo));
    let na = parse_prefix(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)).expect("prefix");
    let nb = parse_prefix(&format!("10.{}.{}.0/24", 200 + i / 256, i % 256)).expect("prefix");
    let (local, peer, lts, pts) = if initiator {
        (a, b, na, nb)
    } else {
        (b, a, nb, na)
    };
    ConnConfig {
        name: format!("c{i}"),
        local,
        peer,
        local_id: Identity::from(local),
        peer_id: Identity::from(peer),
        psk: b"ike-bench shared secret, long enough".to_vec().into(),
        ike: vec![IkeProposal::parse(suite).expect("suite")],
        esp: vec![EspProposal::parse("aes128gcm16").expect("esp")],
        local_ts: vec![lts],
        peer_ts: vec![pts],
        initiator: if initiator {
            Initiator::BiDirectional
        } else {
            Initiator::ResponseOnly
        },
        lifetimes: Lifetimes::default(),
        dpd: Dpd::default(),
        encap: Encap::Auto,
        admin_up: true,
    }
}

/// Counts the connections that became ACTIVE among the queued events.
fn drain_active(ep: &mut Endpoint) -> usize {
    let mut n = 0;
    while let Some(e) = ep.poll_event() {
        if let Event::Status {
            status: ConnStatus::Active,
            ..
        } = e
        {
            n += 1;
        }
    }
    n
}

/// One repetition: seconds until all `n` connections are ACTIVE on both sides, and the
/// responder's cookie replies.
fn core_round(suite: &str, n: usize) -> Result<(f64, u64)> {
    // The core's own speed: no DH rate limit (on a clock that stands still its bucket
    // would never refill).
    let settings = || Settings {
        limits: Limits {
            dh_burst: u32::MAX,
            ..Limits::default()
        },
        ..Settings::default()
    };
    let mut a = Endpoint::new(settings());
    let mut b = Endpoint::new(settings());
    for i in 0..n {
        a.add_conn(core_conn(i, true, suite));
        b.add_conn(core_conn(i, false, suite));
    }
    // The protocol clock stands still: no retransmission or other timer fires.
    let now = Instant::now();
    let t0 = Instant::now();
    a.start(now);
    let (mut up_a, mut up_b) = (0, 0);
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            b.handle(now, t.dst, t.src, &t.data);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            a.handle(now, t.dst, t.src, &t.data);
        }
        up_a += drain_active(&mut a);
        up_b += drain_active(&mut b);
        if !moved {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    ensure!(
        up_a == n && up_b == n,
        "{suite}: only {up_a}/{n} (initiator) and {up_b}/{n} (responder) connections came up"
    );
    Ok((secs, b.stats.cookies_sent))
}

fn bench_core(out: &mut Out, quick: bool) -> Result<()> {
    let (n, reps) = if quick { (50, 3) } else { (250, 7) };
    for suite in SUITES {
        let mut rates = Vec::new();
        for r in 0..reps {
            let (secs, cookies) = core_round(suite, n)?;
            rates.push(n as f64 / secs);
            eprintln!(
                "core {suite}: repetition {}/{reps}: {n} in {:.3} s ({cookies} cookie replies)",
                r + 1,
                secs
            );
        }
        out.add(
            format!("ike_core_establish_{n}conns_{suite}"),
            median(rates),
            "establishments/s (both sides, one thread)",
            None,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Two vpnds, N connections

/// The `vpnd: IKE: Stats { .. }` line among a stopped daemon's last lines (empty if none).
fn ike_stat_line(lines: Vec<String>) -> String {
    lines
        .into_iter()
        .find(|l| l.contains("vpnd: IKE: Stats"))
        .unwrap_or_default()
}

fn bench_vpnd_establish(out: &mut Out, quick: bool) -> Result<()> {
    let n = if quick { 10 } else { 50 };
    eprintln!("vpnd establishment: building the topology for {n} connections");
    let mut pair = Pair::build(n)?;
    pair.start_responder(VPND_SUITE)?;
    pair.start_initiator(VPND_SUITE)?;
    let d = pair.init();
    let running = d.wait_for("vpnd: running", Duration::from_secs(30))?;
    let mut up = std::collections::HashSet::new();
    let mut last = running;
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64);
    while up.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((t, l)) = d.next_line(left) else {
            bail!(
                "{}/{n} connections ACTIVE after {:?}; initiator's last lines:\n{}",
                up.len(),
                Instant::now() - running,
                d.tail()
            );
        };
        // Lines carry tracing's timestamp and level in front of the message.
        if let Some((_, rest)) = l.split_once("vpnd: conn ")
            && let Some((name, _)) = rest.split_once(": ACTIVE:")
            && up.insert(name.to_string())
        {
            last = t;
            if up.len() % 10 == 0 || up.len() == n {
                eprintln!(
                    "vpnd establishment: {}/{n} ACTIVE after {:.3} s",
                    up.len(),
                    (t - running).as_secs_f64()
                );
            }
        }
    }
    let to_running = (running - d.started).as_secs_f64();
    let establish = (last - running).as_secs_f64();
    // The IKE counters each daemon prints when it stops: cookies and retransmissions
    // explain a slow establishment.
    let init_stats = ike_stat_line(pair.init().finish());
    let resp_stats = ike_stat_line(pair.resp().finish());
    drop(pair);
    let stat = |line: &str, key: &str| -> Option<f64> {
        let rest = line.split(&format!("{key}: ")).nth(1)?;
        rest.split([',', ' ', '}']).next()?.parse().ok()
    };
    if let Some(v) = stat(&resp_stats, "cookies_sent") {
        out.add(
            format!("ike_vpnd_establish_{n}conns_cookies_sent"),
            v,
            "IKE_SA_INIT cookie replies (responder)",
            None,
        );
    }
    if let Some(v) = stat(&init_stats, "retransmits") {
        out.add(
            format!("ike_vpnd_establish_{n}conns_retransmits"),
            v,
            "IKE retransmissions (initiator)",
            None,
        );
    }
    out.add(
        format!("ike_vpnd_establish_{n}conns_{VPND_SUITE}"),
        n as f64 / establish,
        "establishments/s",
        None,
    );
    out.add(
        format!("ike_vpnd_establish_{n}conns_total"),
        establish,
        "s (vpnd: running -> last ACTIVE)",
        None,
    );
    out.add(
        "vpnd_start_to_running".into(),
        to_running,
        "s (spawn -> vpnd: running)",
        None,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Loss during rekeys

/// Lines saying a CHILD_SA now carries outbound traffic, on both sides, among those queued.
fn activations(pair: &mut Pair) -> usize {
    let f = |v: Vec<String>| {
        v.iter()
            .filter(|l| l.contains("carries outbound traffic"))
            .count()
    };
    f(pair.init().drain()) + f(pair.resp().drain())
}

/// Signals every second while `run` runs, alternating kind and side:
/// I SIGUSR1, R SIGUSR2, R SIGUSR1, I SIGUSR2, ... Returns `run`'s result and the counts of
/// (SIGUSR1, SIGUSR2) sent.
fn with_rekeys<T>(pair: &Pair, run: impl FnOnce() -> T) -> (T, usize, usize) {
    let pids = [
        pair.init.as_ref().expect("started").pid(),
        pair.resp.as_ref().expect("started").pid(),
    ];
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let (mut usr1, mut usr2) = (0, 0);
            let plan = [
                (0, libc::SIGUSR1),
                (1, libc::SIGUSR2),
                (1, libc::SIGUSR1),
                (0, libc::SIGUSR2),
            ];
            let mut k = 0;
            let mut next = Instant::now() + Duration::from_secs(1);
            loop {
                while Instant::now() < next {
                    if stop.load(Ordering::Relaxed) {
                        return (usr1, usr2);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let (side, sig) = plan[k % plan.len()];
                // SAFETY: signalling our own children, alive for the whole scope (the
                // Pair owns them and outlives it).
                unsafe { libc::kill(pids[side], sig) };
                if sig == libc::SIGUSR1 {
                    usr1 += 1;
                } else {
                    usr2 += 1;
                }
                k += 1;
                next += Duration::from_secs(1);
            }
        });
        // Stops the signal thread even if `run` panics (the scope joins it).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = StopOnDrop(&stop);
        let r = run();
        drop(guard);
        let (usr1, usr2) = h.join().expect("signal thread");
        (r, usr1, usr2)
    })
}

/// One iperf3 UDP run from I's host to R's: (packets sent, packets lost).
fn udp_run(pair: &Pair, secs: u32, pps: u32) -> Result<(f64, f64)> {
    let _server = spawn_in(&pair.hr, &["iperf3", "-s", "-1", "-B", HOST_R])?;
    std::thread::sleep(Duration::from_millis(300));
    let rate = format!("{}", pps * UDP_LEN * 8);
    let out = pair
        .hi
        .exec(&[
            "timeout",
            "60",
            "iperf3",
            "-c",
            HOST_R,
            "-J",
            "-u",
            "-b",
            &rate,
            "-l",
            &UDP_LEN.to_string(),
            "-t",
            &secs.to_string(),
        ])
        .context("iperf3")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let sum = &v["end"]["sum"];
    let sent = sum["packets"].as_f64().context("iperf3: packets")?;
    let lost = sum["lost_packets"]
        .as_f64()
        .context("iperf3: lost_packets")?;
    Ok((sent, lost))
}

/// `ping -i 0.005` for `secs` from I's host to R's: (sent, lost).
fn ping_run(h: &NetNs, secs: u32) -> Result<(f64, f64)> {
    let count = (secs * 200).to_string();
    // ping exits non-zero when replies are missing: read its summary either way.
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", h.name()])
        .args(["ping", "-q", "-i", "0.005", "-W", "1", "-c", &count, HOST_R])
        .output()
        .context("ping")?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("ping summary missing: {text}"))?;
    let nums: Vec<f64> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    let [sent, received, ..] = nums[..] else {
        bail!("ping summary {line:?}");
    };
    Ok((sent, sent - received))
}

fn bench_rekey(out: &mut Out, quick: bool, pps: u32) -> Result<()> {
    let secs: u32 = if quick { 3 } else { 10 };
    eprintln!("rekey loss: building the topology (1 connection)");
    let mut pair = Pair::build(1)?;
    pair.start_responder(VPND_SUITE)?;
    pair.start_initiator(VPND_SUITE)?;
    pair.init().wait_for(": ACTIVE:", Duration::from_secs(30))?;
    pair.resp()
        .wait_for("carries outbound traffic", Duration::from_secs(10))?;
    // The tunnel carries traffic (the first packets may go before the peer's MAC is known).
    let mut ok = false;
    for _ in 0..10 {
        if pair
            .hi
            .exec(&["ping", "-c", "1", "-W", "1", HOST_R])
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    ensure!(ok, "the tunnel does not carry traffic");
    std::thread::sleep(Duration::from_millis(500));

    // A short unrecorded warm-up: the first stream after set-up has been seen to lose a
    // burst that later ones did not.
    eprintln!("rekey loss: 1 s warm-up stream (not recorded)");
    let (w_sent, w_lost) = udp_run(&pair, 1, pps)?;
    eprintln!("rekey loss: warm-up sent {w_sent}, lost {w_lost}");
    let tag = format!("udp_{}kpps_{secs}s", pps / 1000);
    eprintln!("rekey loss: UDP {pps} packets/s of {UDP_LEN} bytes, {secs} s, no rekeys (baseline)");
    let (b_sent, b_lost) = udp_run(&pair, secs, pps)?;
    eprintln!("rekey loss: baseline sent {b_sent}, lost {b_lost}");

    activations(&mut pair);
    eprintln!("rekey loss: the same with a rekey every second");
    let (r, usr1, usr2) = with_rekeys(&pair, || udp_run(&pair, secs, pps));
    let (r_sent, r_lost) = r?;
    // Let the last rekey finish before counting.
    std::thread::sleep(Duration::from_secs(3));
    let acts = activations(&mut pair);
    eprintln!(
        "rekey loss: sent {r_sent}, lost {r_lost}; {usr1} CHILD_SA and {usr2} IKE_SA rekey \
         signals, {acts} CHILD_SA activations"
    );

    eprintln!("rekey loss: ping -i 0.005, {secs} s, no rekeys");
    let (p_sent, p_lost) = ping_run(&pair.hi, secs)?;
    activations(&mut pair);
    eprintln!("rekey loss: ping -i 0.005, {secs} s, rekey every second");
    let (pr, pusr1, pusr2) = with_rekeys(&pair, || ping_run(&pair.hi, secs));
    let (pr_sent, pr_lost) = pr?;
    std::thread::sleep(Duration::from_secs(3));
    let pacts = activations(&mut pair);
    eprintln!(
        "rekey loss: ping sent {pr_sent}, lost {pr_lost} ({p_lost} of {p_sent} without \
         rekeys); {pusr1} CHILD_SA and {pusr2} IKE_SA rekey signals, {pacts} CHILD_SA \
         activations"
    );
    drop(pair);

    let base = format!("ike_norekey_{tag}");
    out.add(format!("{base}_sent"), b_sent, "packets", None);
    out.add(format!("{base}_lost"), b_lost, "packets", None);
    let rk = format!("ike_rekey_{tag}");
    out.add(
        format!("{rk}_sent"),
        r_sent,
        "packets",
        Some((format!("{base}_sent"), b_sent)),
    );
    out.add(
        format!("{rk}_lost"),
        r_lost,
        "packets",
        Some((format!("{base}_lost"), b_lost)),
    );
    out.add(
        format!("{rk}_child_rekey_signals"),
        usr1 as f64,
        "SIGUSR1",
        None,
    );
    out.add(
        format!("{rk}_ike_rekey_signals"),
        usr2 as f64,
        "SIGUSR2",
        None,
    );
    out.add(
        format!("{rk}_child_activations"),
        acts as f64,
        "'carries outbound traffic' lines, both sides",
        None,
    );
    let pb = format!("ike_norekey_ping_5ms_{secs}s");
    out.add(format!("{pb}_sent"), p_sent, "packets", None);
    out.add(format!("{pb}_lost"), p_lost, "packets", None);
    let pk = format!("ike_rekey_ping_5ms_{secs}s");
    out.add(format!("{pk}_sent"), pr_sent, "packets", None);
    out.add(
        format!("{pk}_lost"),
        pr_lost,
        "packets",
        Some((format!("{pb}_lost"), p_lost)),
    );
    out.add(
        format!("{pk}_child_activations"),
        pacts as f64,
        "'carries outbound traffic' lines, both sides",
        None,
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    let t0 = Instant::now();
    let mut out = Out {
        rec: Vec::new(),
        machine: machine(),
        date: today(),
    };
    // Each part's records are written as soon as it is done.
    let part = |p| args.only.is_empty() || args.only.contains(&p);
    if part(1) {
        eprintln!("[1/3] IKE establishment, protocol core in memory");
        bench_core(&mut out, args.quick)?;
        results::merge_into(&args.out, &out.rec)?;
    }
    if part(2) {
        eprintln!("[2/3] IKE establishment between two vpnds");
        bench_vpnd_establish(&mut out, args.quick)?;
        results::merge_into(&args.out, &out.rec)?;
    }
    if part(3) {
        eprintln!("[3/3] packets lost during rekeys");
        bench_rekey(&mut out, args.quick, args.udp_pps)?;
        results::merge_into(&args.out, &out.rec)?;
    }
    eprintln!(
        "wrote {} ({:.1} s)",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
