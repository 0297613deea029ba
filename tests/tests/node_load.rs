//! `cargo xtask load` / `cargo xtask unload` (the `xtask` binary, `--no-build`) on a "node"
//! that is a network namespace of ours, as a Neutron `qrouter-*` namespace holds a router's
//! interfaces: a bad configuration is refused with the field named and leaves nothing; a good
//! one installs vpnd and vpnctl, attaches XDP to both interfaces, pins the maps, and answers
//! vpnctl; a second load of the instance is refused; unload leaves nothing behind, also after
//! vpnd was killed with SIGKILL and could not remove its pins itself. Root only.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use vpn_tests::{
    netns::{NetNs, require_root, unique},
    topology::{veth, vpnd_path},
};

fn xtask(args: &[&str]) -> Result<Output> {
    let p = vpnd_path()?.with_file_name("xtask");
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --release --bins`",
            p.display()
        );
    }
    let out = Command::new(&p)
        .args(args)
        .output()
        .context("running xtask")?;
    eprintln!(
        "$ xtask {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

const CONFIG: &str = r#"
instance = "from-the-file"
[wire]
interface = "overridden"
[[tenant]]
id = 1
interface = "overridden"
vlan = 100
gateway_ip = "10.1.0.1"
gateway_mac = "02:ee:00:00:00:fe"
host_mac = "02:ee:00:00:00:05"

[[ikepolicy]]
name = "ike1"
encryption_algorithm = "aes-256-gcm-16"
auth_algorithm = "sha256"
pfs = "group14"

[[ipsecpolicy]]
name = "esp1"
encryption_algorithm = "aes-128-gcm-16"
pfs = "group14"

[[vpnservice]]
name = "svc"
tenant = 1
external_address = "172.24.4.226"
local_subnets = ["10.1.0.0/24"]

[[ipsec_site_connection]]
name = "conn1"
vpnservice = "svc"
ikepolicy = "ike1"
ipsecpolicy = "esp1"
peer_address = "172.24.4.233"
peer_cidrs = ["10.2.0.0/24"]
psk = "load-test-secret-that-is-long-enough"
initiator = "response-only"
"#;

struct Node {
    // Drop order: unload (by the guard in the test) before the namespaces go.
    node: NetNs,
    _peer: NetNs,
    _tenant: NetNs,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node() -> Result<Node> {
    let node = NetNs::new("ldN")?;
    let peer = NetNs::new("ldP")?;
    let tenant = NetNs::new("ldT")?;
    veth(&node, "wire", &peer, "eth0")?;
    veth(&node, "ten", &tenant, "eth0")?;
    node.ip(&["addr", "add", "172.24.4.226/24", "dev", "wire"])?;
    let dir = std::env::temp_dir().join(unique("xtask-load"));
    std::fs::create_dir_all(&dir)?;
    Ok(Node {
        node,
        _peer: peer,
        _tenant: tenant,
        dir,
    })
}

/// Unloads the instance when dropped (a failed assertion must not leave vpnd running).
struct Unload(String);

impl Drop for Unload {
    fn drop(&mut self) {
        if Path::new("/run/vpn-xtask").join(&self.0).exists() {
            let _ = xtask(&["unload", "--instance", &self.0]);
        }
    }
}

fn xdp_on(ns: &NetNs, ifname: &str) -> Result<bool> {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname])?;
    Ok(out
        .split_whitespace()
        .any(|w| w.starts_with("xdp") && w != "xdp_features"))
}

/// The vpnd PID that load recorded.
fn manifest_pid(instance: &str) -> Result<i64> {
    let p = Path::new("/run/vpn-xtask")
        .join(instance)
        .join("manifest.json");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
    m["pid"]
        .as_i64()
        .with_context(|| format!("no pid in {}", p.display()))
}

fn alive(pid: i64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("vpnd"))
}

/// Nothing of `instance` is left: process, XDP, pins, run directories, installed files.
fn assert_nothing_left(n: &Node, instance: &str, prefix: &Path, pid: Option<i64>) -> Result<()> {
    if let Some(pid) = pid {
        assert!(!alive(pid), "vpnd {pid} still runs");
    }
    for ifname in ["wire", "ten"] {
        assert!(!xdp_on(&n.node, ifname)?, "XDP still on {ifname}");
    }
    for p in [
        PathBuf::from("/sys/fs/bpf").join(instance),
        PathBuf::from("/run/vpnd").join(instance),
        PathBuf::from("/run/vpn-xtask").join(instance),
        prefix.join("sbin/vpnd"),
        prefix.join("bin/vpnctl"),
    ] {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    Ok(())
}

#[test]
fn load_and_unload_leave_nothing_behind() -> Result<()> {
    require_root();
    let n = node()?;
    let instance = unique("ld");
    let _unload = Unload(instance.clone());
    let prefix = n.dir.join("prefix");
    let prefix_s = prefix.to_str().context("path")?.to_string();
    let good = n.dir.join("vpnd.toml");
    std::fs::write(&good, CONFIG)?;
    let bad = n.dir.join("bad.toml");
    std::fs::write(
        &bad,
        CONFIG.replace(
            "encryption_algorithm = \"aes-128-gcm-16\"",
            "encryption_algorithm = \"3des\"",
        ),
    )?;
    let load = |cfg: &Path| {
        xtask(&[
            "load",
            "--no-build",
            "--netns",
            n.node.name(),
            "--wire",
            "wire",
            "--tenant",
            "ten",
            "--config",
            cfg.to_str().unwrap_or_default(),
            "--instance",
            &instance,
            "--prefix",
            &prefix_s,
        ])
    };

    // A bad configuration: refused, named, nothing installed or started.
    let out = load(&bad)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ipsecpolicy \"esp1\"") && err.contains("encryption_algorithm"),
        "the error names entry and field: {err}"
    );
    assert_nothing_left(&n, &instance, &prefix, None)?;

    // A missing interface: refused before anything happens.
    let out = xtask(&[
        "load",
        "--no-build",
        "--netns",
        n.node.name(),
        "--wire",
        "nosuch0",
        "--tenant",
        "ten",
        "--config",
        good.to_str().context("path")?,
        "--instance",
        &instance,
        "--prefix",
        &prefix_s,
    ])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wire nosuch0: no such interface"));
    assert_nothing_left(&n, &instance, &prefix, None)?;

    // The real thing.
    let out = load(&good)?;
    assert!(out.status.success(), "load failed");
    let pid = manifest_pid(&instance)?;
    assert!(alive(pid), "vpnd {pid} is not running");
    assert!(xdp_on(&n.node, "wire")? && xdp_on(&n.node, "ten")?);
    assert!(Path::new("/sys/fs/bpf").join(&instance).is_dir());
    assert!(prefix.join("sbin/vpnd").exists() && prefix.join("bin/vpnctl").exists());
    let st = Command::new(prefix.join("bin/vpnctl"))
        .args(["--instance", &instance, "--json", "status"])
        .output()?;
    assert!(st.status.success());
    let st: Value = serde_json::from_slice(&st.stdout)?;
    assert_eq!(st["daemon"]["pid"].as_i64(), Some(pid), "{st}");
    let conns = Command::new(prefix.join("bin/vpnctl"))
        .args(["--instance", &instance, "--json", "conn", "list"])
        .output()?;
    let conns: Value = serde_json::from_slice(&conns.stdout)?;
    assert_eq!(conns[0]["name"], "conn1", "{conns}");

    // Loaded twice: refused, the first keeps running.
    let out = load(&good)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already loaded"));
    assert!(alive(pid));

    let out = xtask(&["unload", "--instance", &instance])?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing left behind"));
    assert_nothing_left(&n, &instance, &prefix, Some(pid))?;

    // vpnd killed outright cannot detach or unpin: unload does it.
    let out = load(&good)?;
    assert!(out.status.success(), "second load failed");
    let pid = manifest_pid(&instance)?;
    // SAFETY: the vpnd we just started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The pins outlive it (XDP, attached through bpf links, went with its last fd).
    assert!(Path::new("/sys/fs/bpf").join(&instance).is_dir());
    let out = xtask(&["unload", "--instance", &instance])?;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vpnd had left it"), "{text}");
    assert_nothing_left(&n, &instance, &prefix, Some(pid))?;
    // Not even the empty record directory, unless another instance is loaded meanwhile.
    let root = Path::new("/run/vpn-xtask");
    assert!(
        !root.exists() || std::fs::read_dir(root)?.next().is_some(),
        "{} left behind empty",
        root.display()
    );
    Ok(())
}
