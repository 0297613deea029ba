//! `vpnctl` against the two-site topology (see `vpn_tests::topology`): with vpnd running over
//! IKE, the map views (stats, policies, tenants, raw SA_IN) and the control-socket commands
//! (status, conn list/down/up, sa list, rekey); and with vpnd stopped but its pins kept
//! (`--keep-pinned`), the map views alone. Root only.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use vpn_tests::{
    netns::{NetNs, require_root},
    topology::{IkeKeying, Keying, Log, Proc, TwoSite, vpnctl_path, vpnd_path},
};

/// Runs vpnctl for `instance` (host namespaces: it reads bpffs and /run/vpnd like bpftool).
fn vpnctl_raw(instance: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(vpnctl_path()?)
        .args(["--instance", instance])
        .args(args)
        .output()
        .context("running vpnctl")?;
    eprintln!(
        "$ vpnctl --instance {instance} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// stdout of a vpnctl run that must succeed; its output must never hold the PSK.
fn vpnctl(instance: &str, args: &[&str]) -> Result<String> {
    let out = vpnctl_raw(instance, args)?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        !text.contains(&IkeKeying::default().psk) && !text.to_lowercase().contains("psk"),
        "vpnctl printed key material"
    );
    if !out.status.success() {
        bail!(
            "vpnctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn vpnctl_json(instance: &str, args: &[&str]) -> Result<Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let text = vpnctl(instance, &a)?;
    serde_json::from_str(&text).with_context(|| format!("vpnctl {args:?}: not JSON: {text}"))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Map views every instance with traffic must show: after a ping East -> West.
fn check_map_views(instance: &str) -> Result<()> {
    let st = vpnctl_json(instance, &["stats"])?;
    let outbound = st["tenant"]["redirect_outbound"].as_u64().unwrap_or(0);
    let inbound = st["wire"]["redirect_esp"].as_u64().unwrap_or(0)
        + st["wire"]["redirect_esp_udp"].as_u64().unwrap_or(0);
    assert!(outbound > 0, "no outbound redirects counted: {st}");
    assert!(inbound > 0, "no inbound ESP counted: {st}");
    let t = vpnctl(instance, &["stats"])?;
    assert_eq!(
        first_line(&t).split_whitespace().collect::<Vec<_>>(),
        ["SIDE", "KIND", "#", "COUNTER", "VALUE"]
    );
    assert!(t.contains("redirect_outbound"));
    assert!(
        t.lines()
            .skip(1)
            .all(|l| l.split_whitespace().last() != Some("0")),
        "zero rows are hidden: {t}"
    );
    let all = vpnctl(instance, &["stats", "--all"])?;
    assert_eq!(
        all.lines().count(),
        1 + 2 * vpn_common::Counter::all().count(),
        "every counter of both sides"
    );

    let pol = vpnctl_json(instance, &["policy", "list"])?;
    let p = pol
        .as_array()
        .context("policy list is an array")?
        .iter()
        .find(|p| p["prefix"] == "10.2.0.0/24")
        .with_context(|| format!("no policy for 10.2.0.0/24: {pol}"))?;
    assert_eq!(p["action"], "protect");
    assert_eq!(p["tenant"], 1);
    assert_eq!(p["family"], "ipv4");
    let t = vpnctl(instance, &["policy", "list"])?;
    assert_eq!(
        first_line(&t).split_whitespace().collect::<Vec<_>>(),
        ["TENANT", "FAMILY", "PREFIX", "ACTION", "SA_SLOT"]
    );
    assert!(
        t.lines()
            .any(|l| l.contains("10.2.0.0/24") && l.contains("protect"))
    );

    let ten = vpnctl_json(instance, &["tenant", "list"])?;
    let t1 = ten["tenants"]
        .as_array()
        .context("tenants")?
        .iter()
        .find(|t| t["tenant"] == 1)
        .with_context(|| format!("no tenant 1: {ten}"))?;
    assert_eq!(t1["vlans"], serde_json::json!([100]));
    assert_eq!(t1["encap"], "vlan");
    assert_eq!(t1["encap_vlan"], 100);
    assert!(
        !ten["interfaces"]
            .as_array()
            .context("interfaces")?
            .is_empty()
    );
    let t = vpnctl(instance, &["tenant", "list"])?;
    assert!(first_line(&t).starts_with("TENANT  VLAN  VNI"));
    assert!(t.contains("IFINDEX  DEFAULT_TENANT  XSK_BASE"));
    assert!(t.contains("vlan 100"));

    let sa = vpnctl_json(instance, &["maps", "dump", "SA_IN"])?;
    assert_eq!(sa["map"], "SA_IN");
    let entries = sa["entries"].as_array().context("entries")?;
    assert!(!entries.is_empty(), "SA_IN is empty: {sa}");
    assert!(entries.iter().all(|e| e["tenant"] == 1));
    let t = vpnctl(instance, &["maps", "dump", "SA_IN"])?;
    assert!(first_line(&t).starts_with("SA_IN (Hash, key 4 B, value 16 B"));
    for m in vpn_common::maps::names::ALL {
        vpnctl_json(instance, &["maps", "dump", m])?;
    }
    let wire = vpnctl_json(instance, &["maps", "dump", "wire_stats"])?;
    assert!(
        wire["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .any(|e| e["name"] == "redirect_esp" || e["name"] == "redirect_esp_udp")
    );
    let bad = vpnctl_raw(instance, &["maps", "dump", "NOPE"])?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown map"));
    Ok(())
}

#[test]
fn vpnctl_with_vpnd_running() -> Result<()> {
    require_root();
    let site = TwoSite::start_with(&Keying::Ike(IkeKeying::default()), |_, _| Ok(()))?;
    site.wait_active(Duration::from_secs(30))?;
    let east = site.east.name().to_string();
    site.eh
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("ping East -> West")?;

    check_map_views(&east)?;

    // Rates over two samples, bounded for scripts.
    let w = vpnctl(
        &east,
        &["--json", "stats", "--watch", "0.2", "--count", "2"],
    )?;
    let samples: Vec<Value> = w
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(samples.len(), 2);
    assert!(samples[1]["rates"]["wire"].is_object());
    let w = vpnctl(&east, &["stats", "--watch", "0.1", "--count", "1"])?;
    assert!(first_line(&w).ends_with("RATE/s"));

    // Daemon and map facts together.
    let st = vpnctl_json(&east, &["status"])?;
    assert_eq!(st["daemon"]["instance"], east.as_str());
    assert_eq!(st["daemon"]["connections"], 1);
    assert_eq!(st["daemon"]["active"], 1);
    assert_eq!(st["maps"]["pins_present"], 16);
    assert!(st["maps"]["inbound_sas"].as_u64().unwrap_or(0) >= 1);
    assert!(
        !st["maps"]["programs"]
            .as_array()
            .context("programs")?
            .is_empty(),
        "the XDP programs using the maps are found: {st}"
    );
    let t = vpnctl(&east, &["status"])?;
    assert!(first_line(&t).starts_with("ITEM"));
    assert!(t.contains("running (pid"));

    let conns = vpnctl_json(&east, &["conn", "list"])?;
    let c = &conns[0];
    assert_eq!(c["name"], "east-west");
    assert_eq!(c["status"], "ACTIVE");
    let t = vpnctl(&east, &["conn", "list"])?;
    assert!(first_line(&t).starts_with("NAME"));
    assert!(
        t.lines()
            .any(|l| l.starts_with("east-west") && l.contains("ACTIVE"))
    );

    let sas = vpnctl_json(&east, &["sa", "list"])?;
    assert_eq!(sas["source"], "vpnd");
    let s = sas["sas"]
        .as_array()
        .context("sas")?
        .iter()
        .find(|s| s["active"] == true)
        .with_context(|| format!("no active SA: {sas}"))?;
    assert_eq!(s["conn"], "east-west");
    assert!(s["packets_out"].as_u64().unwrap_or(0) >= 3, "{s}");
    assert_eq!(s["local_ts"], serde_json::json!(["10.1.0.0/24"]));
    let t = vpnctl(&east, &["sa", "list"])?;
    assert!(first_line(&t).starts_with("CONN"));
    assert!(t.contains("aes128gcm16"));

    // Actions: the daemon's answer, non-zero exit on error.
    let r = vpnctl(&east, &["rekey", "east-west"])?;
    assert!(r.contains("rekey started"), "{r}");
    let bad = vpnctl_raw(&east, &["conn", "down", "no-such-conn"])?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such-conn"));
    vpnctl(&east, &["conn", "down", "east-west"])?;
    wait_conn(&east, "DOWN", Duration::from_secs(10))?;
    vpnctl(&east, &["conn", "up", "east-west"])?;
    wait_conn(&east, "ACTIVE", Duration::from_secs(30))?;
    site.eh
        .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("ping after conn down/up")?;
    Ok(())
}

fn wait_conn(instance: &str, status: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let c = vpnctl_json(instance, &["conn", "list"])?;
        if c[0]["status"] == status {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("east-west not {status} after {timeout:?}: {c}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// vpnd with extra arguments, the way `topology::start_vpnd` runs it (network namespace only).
fn start_vpnd_args(ns: &NetNs, config: &std::path::Path, extra: &[&str]) -> Result<(Proc, Log)> {
    use std::io::BufRead;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(vpnd_path()?)
        .arg("--config")
        .arg(config)
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting vpnd")?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[east2] {line}");
            let _ = tx.send(line);
        }
    });
    let log = Log::new(rx);
    log.wait_for(Duration::from_secs(15), |l| l.contains("vpnd: running"))
        .with_context(|| format!("vpnd did not come up:\n{}", log.text()))?;
    Ok((Proc(child), log))
}

#[test]
fn vpnctl_with_vpnd_stopped_and_pins_kept() -> Result<()> {
    require_root();
    // Manual SAs: East can be restarted without a negotiation.
    let mut site = TwoSite::start(|_, _| Ok(()))?;
    let east = site.east.name().to_string();
    // Restart East's vpnd with --keep-pinned (same configuration).
    site.east_vpnd.signal(libc::SIGTERM)?;
    assert!(site.east_vpnd.wait_exit(Duration::from_secs(5)));
    let cfg = site.dir.join(format!("{east}.toml"));
    let (mut vpnd, _log) = start_vpnd_args(&site.east, &cfg, &["--keep-pinned"])?;
    site.eh
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("ping East -> West")?;
    vpnd.signal(libc::SIGTERM)?;
    assert!(vpnd.wait_exit(Duration::from_secs(5)), "vpnd did not stop");
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = vpn_userspace::dataplane::remove_pins(&self.0);
        }
    }
    let _unpin = Unpin(PathBuf::from(vpn_common::maps::PIN_ROOT).join(&east));

    check_map_views(&east)?;

    // The SA list falls back to the maps, and says so.
    let out = vpnctl_raw(&east, &["sa", "list"])?;
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    );
    assert!(
        stderr.contains(&format!(
            "vpnd is not running for instance {east}; showing pinned maps only"
        )),
        "{stderr}"
    );
    assert!(first_line(&stdout).starts_with("SPI"));
    assert!(
        stdout.contains("0x0000f0e0"),
        "East's inbound SPI: {stdout}"
    );
    let sas = vpnctl_json(&east, &["sa", "list"])?;
    assert_eq!(sas["source"], "maps");
    let s = &sas["sas"][0];
    assert_eq!(s["spi"], 0xf0e0);
    assert!(s["packets"].as_u64().unwrap_or(0) >= 3, "{s}");
    assert!(s["replay_top"].as_u64().unwrap_or(0) >= 3, "{s}");

    let st = vpnctl_json(&east, &["status"])?;
    assert!(st["daemon"].is_null());
    assert!(
        st["daemon_error"]
            .as_str()
            .unwrap_or_default()
            .contains("not running")
    );
    assert_eq!(st["maps"]["pins_present"], 16);
    assert_eq!(st["maps"]["attached"], false);

    // Daemon-only commands fail clearly.
    let out = vpnctl_raw(&east, &["conn", "list"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vpnd is not running"));

    // A missing instance is named.
    let out = vpnctl_raw("no-such-instance", &["policy", "list"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pinned maps for instance"));
    Ok(())
}
