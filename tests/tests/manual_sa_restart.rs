//! Manual SAs across a crash (issue 14, C1): a static key's AES-GCM nonce is its sequence
//! number, so a vpnd killed with SIGKILL mid-traffic and started again must never send a
//! (SPI, sequence number) pair twice, and a packet captured before the crash must be dropped
//! as a replay after it. Both vpnds run with manual SAs (`vpn_tests::topology`), a capture
//! on the "internet" bridge sees every ESP packet once.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use vpn_tests::{
    interop::{Pinger, ping_all},
    netns::require_root,
    raw::RawSocket,
    topology::{TwoSite, capture_wire, start_vpnd_with, vpnctl_path},
};

/// East's outbound and inbound SPIs in the topology.
const EAST_OUT: u32 = 0xe0f0;
const EAST_IN: u32 = 0xf0e0;

/// One ESP packet of the capture.
struct Esp {
    /// Capture time, seconds since the epoch.
    t: f64,
    spi: u32,
    seq: u32,
    frame: Vec<u8>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// The ESP-over-IPv4 frames of a pcap file (Ethernet, this host's byte order).
fn read_esp(path: &Path) -> Result<Vec<Esp>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    ensure!(b.len() >= 24, "{}: no pcap header", path.display());
    let frac = match u32_at(0) {
        0xa1b2_c3d4 => 1e-6,
        0xa1b2_3c4d => 1e-9,
        m => bail!("{}: pcap magic {m:#x}", path.display()),
    };
    ensure!(u32_at(20) == 1, "not an Ethernet capture");
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let t = u32_at(o) as f64 + u32_at(o + 4) as f64 * frac;
        let len = u32_at(o + 8) as usize;
        let f = &b[o + 16..(o + 16 + len).min(b.len())];
        o += 16 + len;
        if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &f[14..];
        let ihl = (ip[0] & 0xf) as usize * 4;
        if ip[9] != 50 || ip.len() < ihl + 8 {
            continue;
        }
        let esp = &ip[ihl..];
        out.push(Esp {
            t,
            spi: u32::from_be_bytes(esp[0..4].try_into().expect("4")),
            seq: u32::from_be_bytes(esp[4..8].try_into().expect("4")),
            frame: f.to_vec(),
        });
    }
    Ok(out)
}

/// Replay drops counted in East's XDP program (pinned counters, kept across restarts).
fn replay_drops(instance: &str) -> Result<u64> {
    let out = Command::new(vpnctl_path()?)
        .args(["--instance", instance, "--json", "stats"])
        .output()
        .context("vpnctl")?;
    ensure!(
        out.status.success(),
        "vpnctl stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(["replay_duplicate", "replay_too_old"]
        .iter()
        .map(|k| v["wire"][k].as_u64().unwrap_or(0))
        .sum())
}

/// Removes an instance's bpffs pins when dropped: a vpnd killed with SIGKILL leaves them.
struct Pins(Option<PathBuf>);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

#[test]
fn kill9_mid_traffic_repeats_no_sequence_number_and_old_packets_are_replays() -> Result<()> {
    require_root();
    // Dropped after the site (its daemons): the pins of the killed vpnd never outlive the test.
    let mut pins = Pins(None);
    let mut capture = None;
    let mut site = TwoSite::start(|inet, dir| {
        capture = Some(capture_wire(inet, dir)?);
        Ok(())
    })?;
    let (tcpdump, pcap) = capture.context("capture")?;
    let instance = site.east.name().to_string();
    pins.0 = Some(Path::new("/sys/fs/bpf").join(&instance));

    // East again, cleanly stopped and with small blocks: the clean stop is a restart too, and
    // with small inbound blocks West's packets soon pass the mark East takes after the crash.
    let path = site.dir.join(format!("{instance}.toml"));
    let config = std::fs::read_to_string(&path)? + "[state]\nout_block = 64\nin_block = 64\n";
    ping_all(&site.eh, None, "10.2.0.9", 3).context("before the clean restart")?;
    site.east_vpnd.signal(libc::SIGTERM)?;
    ensure!(
        site.east_vpnd.wait_exit(Duration::from_secs(10)),
        "vpnd did not stop"
    );
    let (p, log) = start_vpnd_with(&site.east, &config, &site.dir, &[])?;
    (site.east_vpnd, site.east_log) = (p, log);
    ping_all(&site.eh, None, "10.2.0.9", 3).context("after a clean restart")?;

    // 100 pings/s East -> West; East is killed in the middle and started again.
    let pinger = Pinger::start(&site.eh, None, "10.2.0.9", 600, "0.01")?;
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = now();
    site.east_vpnd.signal(libc::SIGKILL)?;
    ensure!(
        site.east_vpnd.wait_exit(Duration::from_secs(5)),
        "vpnd survived SIGKILL"
    );
    let (p, log) = start_vpnd_with(&site.east, &config, &site.dir, &[])?;
    (site.east_vpnd, site.east_log) = (p, log);
    let restarted_at = now();
    let (sent, got) = pinger.finish(Duration::from_secs(30))?;
    eprintln!("pings across the crash: {got}/{sent}");
    for l in [
        "outbound continues after",
        "inbound accepts sequence numbers above",
    ] {
        ensure!(
            site.east_log
                .lines()
                .iter()
                .any(|x| x.contains(l) && x.contains("did not stop cleanly")),
            "East did not resume from its state after the crash:\n{}",
            site.east_log.text()
        );
    }
    drop(tcpdump);

    let pkts = read_esp(&pcap)?;
    // No (SPI, sequence number) twice on the wire, whoever sent it.
    let mut seen: HashMap<(u32, u32), usize> = HashMap::new();
    for p in &pkts {
        *seen.entry((p.spi, p.seq)).or_default() += 1;
    }
    let mut twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    ensure!(
        twice.is_empty(),
        "{} (SPI, sequence) pairs sent more than once (AES-GCM nonce reuse), e.g. {:x?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    // East sent before the crash and after the restart, above every earlier number.
    let east: Vec<&Esp> = pkts.iter().filter(|p| p.spi == EAST_OUT).collect();
    let before = east.iter().filter(|p| p.t < killed_at).map(|p| p.seq).max();
    let after = east
        .iter()
        .filter(|p| p.t > restarted_at)
        .map(|p| p.seq)
        .min();
    eprintln!("East's sequence numbers: last before the crash {before:?}, first after {after:?}");
    let (Some(before), Some(after)) = (before, after) else {
        bail!(
            "East sent nothing before the crash or after the restart ({} packets)",
            east.len()
        );
    };
    ensure!(
        after > before,
        "East's counter went back: {after} after {before}"
    );

    // The tunnel works again both ways (West's numbers passed East's mark).
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = ping_all(&site.eh, None, "10.2.0.9", 3) {
        ensure!(
            Instant::now() < deadline,
            "no tunnel after the restart: {e:#}"
        );
    }

    // West's last packet before the crash, sent again: a replay, counted.
    let old = pkts
        .iter()
        .filter(|p| p.spi == EAST_IN && p.t < killed_at)
        .max_by_key(|p| p.seq)
        .context("no West -> East packet before the crash")?;
    let drops = replay_drops(&instance)?;
    {
        let _in = site.inet.enter()?;
        RawSocket::new(site.inet.ifindex("pe")?)?.send(&old.frame)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now_drops = replay_drops(&instance)?;
    while now_drops == drops && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now_drops = replay_drops(&instance)?;
    }
    ensure!(
        now_drops == drops + 1,
        "West's packet {:#x}/{} from before the crash, replayed: {} replay drops counted",
        old.spi,
        old.seq,
        now_drops - drops
    );
    site.stop_daemons();
    Ok(())
}
