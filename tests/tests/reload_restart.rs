//! vpnd's operator lifecycle (root only): a SIGHUP reload applied as a diff keeps an untouched
//! tunnel's traffic flowing while another connection is added and removed; a vpnd stopped
//! with `--keep-pinned` leaves its maps for vpnctl and a restarted vpnd adopts them.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use vpn_tests::{
    interop::{Pinger, ping_all},
    strongswan::skip_unless_root,
    topology::{IkeKeying, Keying, TwoSite, start_vpnd_with},
};

const EXTRA_CONN: &str = r#"
[[ipsec_site_connection]]
name = "east-north"
vpnservice = "east"
ikepolicy = "ike1"
ipsecpolicy = "esp1"
peer_address = "172.24.4.240"
peer_cidrs = ["10.3.0.0/24"]
psk = "another long secret for the reload test"
initiator = "bi-directional"
"#;

#[test]
fn reload_adds_and_removes_a_connection_without_touching_the_tunnel() -> Result<()> {
    if !skip_unless_root("reload_adds_and_removes_a_connection_without_touching_the_tunnel") {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = TwoSite::start_with(&Keying::Ike(IkeKeying::default()), |_, _| Ok(()))?;
    site.wait_active(Duration::from_secs(20))?;
    ping_all(&site.eh, None, "10.2.0.9", 3)?;
    let path = site.dir.join(format!("{}.toml", site.east.name()));
    let original = std::fs::read_to_string(&path)?;
    let before = site.east_log.len();
    // 100 pings/s through the tunnel while East's configuration changes twice.
    let pinger = Pinger::start(&site.eh, None, "10.2.0.9", 400, "0.01")?;
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&path, format!("{original}{EXTRA_CONN}"))?;
    site.east_vpnd.signal(libc::SIGHUP)?;
    site.east_log
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("reloaded: 1 added, 0 removed, 0 replaced, 1 unchanged")
        })
        .with_context(|| site.east_log.text())?;
    // The new connection starts negotiating (its peer does not exist).
    site.east_log.wait_for(Duration::from_secs(5), |l| {
        l.contains("conn east-north: CONNECTING")
    })?;
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&path, &original)?;
    site.east_vpnd.signal(libc::SIGHUP)?;
    site.east_log
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("reloaded: 0 added, 1 removed, 0 replaced, 1 unchanged")
        })
        .with_context(|| site.east_log.text())?;
    let (sent, got) = pinger.finish(Duration::from_secs(20))?;
    eprintln!("pings during the reloads: {got}/{sent}");
    ensure!(
        sent == 400 && got == sent,
        "lost {} of {sent} pings",
        sent - got
    );
    // The untouched tunnel's CHILD_SA never changed.
    let after: Vec<String> = site.east_log.lines()[before..].to_vec();
    ensure!(
        !after
            .iter()
            .any(|l| l.contains("conn east-west")
                && (l.contains("removed") || l.contains("installed"))),
        "the untouched connection was touched:\n{}",
        after.join("\n")
    );
    // A broken file is refused with the file, entry and field, and nothing changes.
    std::fs::write(
        &path,
        original.replace("pfs = \"group14\"", "pfs = \"group2\""),
    )?;
    site.east_vpnd.signal(libc::SIGHUP)?;
    site.east_log
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("pfs") && l.contains("group2")
        })
        .with_context(|| site.east_log.text())?;
    ping_all(&site.eh, None, "10.2.0.9", 3)?;
    std::fs::write(&path, &original)?;
    site.stop_daemons();
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn keep_pinned_leaves_the_maps_and_a_restart_adopts_them() -> Result<()> {
    if !skip_unless_root("keep_pinned_leaves_the_maps_and_a_restart_adopts_them") {
        return Ok(());
    }
    let mut site = TwoSite::start_with(&Keying::Ike(IkeKeying::default()), |_, _| Ok(()))?;
    site.wait_active(Duration::from_secs(20))?;
    let path = site.dir.join(format!("{}.toml", site.east.name()));
    let config = std::fs::read_to_string(&path)?;
    let instance = config
        .lines()
        .find_map(|l| l.strip_prefix("instance = "))
        .context("instance")?
        .trim_matches('"')
        .to_string();
    let pins = Path::new("/sys/fs/bpf").join(&instance);
    // Restart East with --keep-pinned; West re-establishes with it.
    site.east_vpnd.signal(libc::SIGTERM)?;
    ensure!(
        site.east_vpnd.wait_exit(Duration::from_secs(10)),
        "vpnd did not stop"
    );
    ensure!(!pins.exists(), "pins left without --keep-pinned");
    let (p, log) = start_vpnd_with(&site.east, &config, &site.dir, &["--keep-pinned"])?;
    site.east_vpnd = p;
    site.east_log = log;
    site.east_log.wait_for(Duration::from_secs(20), |l| {
        l.contains("conn east-west: ACTIVE")
    })?;
    ping_all(&site.eh, None, "10.2.0.9", 3)?;
    site.east_vpnd.signal(libc::SIGTERM)?;
    ensure!(
        site.east_vpnd.wait_exit(Duration::from_secs(10)),
        "vpnd did not stop"
    );
    // The maps stay, the programs are detached.
    for m in ["SA_IN", "WIRE_STATS", "POLICY_V4", "REPLAY"] {
        ensure!(pins.join(m).exists(), "{m} not kept in {}", pins.display());
    }
    let link = site.east.ip(&["-d", "link", "show", "wire"])?;
    ensure!(!link.contains("prog/xdp"), "XDP still attached:\n{link}");
    // A restart adopts them: stale SAs cleared, counters kept, the tunnel comes back.
    let (p, log) = start_vpnd_with(&site.east, &config, &site.dir, &[])?;
    site.east_vpnd = p;
    site.east_log = log;
    let adopted = site.east_log.wait_for(Duration::from_secs(5), |l| {
        l.contains("adopted the pinned maps")
    })?;
    ensure!(adopted.contains("counters kept"), "{adopted}");
    site.east_log.wait_for(Duration::from_secs(20), |l| {
        l.contains("conn east-west: ACTIVE")
    })?;
    ping_all(&site.eh, None, "10.2.0.9", 3)?;
    site.stop_daemons();
    ensure!(!pins.exists(), "pins left after the last stop");
    Ok(())
}
