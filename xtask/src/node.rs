//! `cargo xtask load` / `cargo xtask unload`: run `vpnd` on a network node's interfaces, and
//! take it away again leaving nothing behind.
//!
//! `load` builds if needed, validates the configuration with `vpnd --check`, installs `vpnd`
//! and `vpnctl` under a prefix, starts `vpnd` detached (optionally inside a network namespace,
//! as Neutron's `qrouter-*` namespaces hold a router's interfaces), waits until it runs, and
//! records what it did in `/run/vpn-xtask/INSTANCE/manifest.json`. `unload` reads that record
//! and undoes it: SIGTERM to vpnd (by PID, after checking the PID is still that vpnd), then
//! checks that XDP is detached from both interfaces, that the pins under
//! `/sys/fs/bpf/INSTANCE` and the run directory are gone, removing whatever is left and saying
//! so, and finally removes the installed binaries, the log and the record.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where `load` keeps its record and vpnd's log, one directory per instance.
pub const STATE_ROOT: &str = "/run/vpn-xtask";
const PIN_ROOT: &str = "/sys/fs/bpf";
const VPND_RUN_DIR: &str = "/run/vpnd";

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The wire (external) interface: ESP and IKE arrive here.
    #[arg(long)]
    pub wire: String,
    /// The tenant-side interface (VLAN trunk or VXLAN underlay).
    #[arg(long)]
    pub tenant: String,
    /// vpnd's configuration file (TOML, Neutron VPNaaS-shaped).
    #[arg(long)]
    pub config: PathBuf,
    /// Run vpnd inside this network namespace (e.g. a Neutron `qrouter-UUID`); the interfaces
    /// are looked up there.
    #[arg(long)]
    pub netns: Option<String>,
    /// Instance name (pins under /sys/fs/bpf/NAME); default: the config's `instance`.
    #[arg(long)]
    pub instance: Option<String>,
    /// Install prefix: vpnd goes to PREFIX/sbin, vpnctl to PREFIX/bin.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// vpnd's log level (or tracing filter).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Use the binaries already in target/release instead of running `cargo build`.
    #[arg(long)]
    pub no_build: bool,
}

#[derive(clap::Args)]
pub struct UnloadArgs {
    /// The instance to unload; default: the only one `load` started.
    #[arg(long)]
    pub instance: Option<String>,
}

/// What `load` did, so that `unload` can undo exactly that.
#[derive(Serialize, Deserialize, Debug)]
struct Manifest {
    instance: String,
    pid: i32,
    netns: Option<String>,
    wire: String,
    tenant: String,
    config: PathBuf,
    installed: Vec<PathBuf>,
    log: PathBuf,
    started_unix: u64,
}

fn say(what: &str, state: &str) {
    println!("{what}: {state}");
}

fn state_dir(instance: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(instance)
}

/// `ip [-n NS] ARGS`.
fn ip(netns: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    c.args(args);
    c
}

/// The XDP mode attached to `ifname` ("xdp", "xdpgeneric", ...), None if nothing is; Err if
/// the interface does not exist.
fn xdp_attached(netns: Option<&str>, ifname: &str) -> Result<Option<String>> {
    let out = ip(netns, &["-o", "link", "show", "dev", ifname])
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .find(|w| matches!(*w, "xdp" | "xdpgeneric" | "xdpdrv" | "xdpoffload"))
        .map(str::to_string))
}

fn instance_of(config: &Path) -> Result<String> {
    let text =
        fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let v: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", config.display()))?;
    v.get("instance")
        .and_then(|i| i.as_str())
        .map(str::to_string)
        .with_context(|| format!("{}: top level: instance: missing", config.display()))
}

fn pid_is_vpnd(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            .is_some_and(|argv0| argv0.ends_with(b"vpnd"))
    })
}

/// `cargo xtask load`.
pub fn load(a: &LoadArgs, root: &Path, build: impl FnOnce() -> Result<()>) -> Result<()> {
    if !super::is_root() {
        bail!("loading XDP programs needs root");
    }
    let config = fs::canonicalize(&a.config)
        .with_context(|| format!("config file {}", a.config.display()))?;
    let instance = match &a.instance {
        Some(i) => i.clone(),
        None => instance_of(&config)?,
    };
    let dir = state_dir(&instance);
    if let Ok(m) = read_manifest(&instance) {
        bail!(
            "instance {instance} is already loaded (vpnd pid {}); `cargo xtask unload --instance \
             {instance}` first",
            m.pid
        );
    }
    if Path::new(PIN_ROOT).join(&instance).exists() {
        bail!(
            "{PIN_ROOT}/{instance} exists: another vpnd of that instance runs or left its pins \
             (--keep-pinned); stop it or pick another --instance"
        );
    }
    if let Some(ns) = &a.netns
        && !Path::new("/run/netns").join(ns).exists()
    {
        bail!("network namespace {ns} does not exist (ip netns list)");
    }
    for (what, ifname) in [("--wire", &a.wire), ("--tenant", &a.tenant)] {
        xdp_attached(a.netns.as_deref(), ifname).with_context(|| {
            format!(
                "{what} {ifname}: no such interface{}",
                a.netns
                    .as_deref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default()
            )
        })?;
    }

    if a.no_build {
        say("build", "skipped (--no-build)");
    } else {
        build()?;
    }
    let built = root.join("target/release");
    let (vpnd_src, vpnctl_src) = (built.join("vpnd"), built.join("vpnctl"));
    for p in [&vpnd_src, &vpnctl_src] {
        if !p.exists() {
            bail!("{} is not built (drop --no-build)", p.display());
        }
    }

    // Validate before installing or touching anything.
    let mut check = Command::new(&vpnd_src);
    check
        .args(["--check", "--config"])
        .arg(&config)
        .args(["--wire", &a.wire, "--tenant-if", &a.tenant, "--instance"])
        .arg(&instance);
    let out = check.output().context("running vpnd --check")?;
    if !out.status.success() {
        bail!(
            "the configuration does not validate:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    say(
        "config",
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
    );

    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("vpnd.log");
    let mut m = Manifest {
        instance: instance.clone(),
        pid: 0,
        netns: a.netns.clone(),
        wire: a.wire.clone(),
        tenant: a.tenant.clone(),
        config: config.clone(),
        installed: Vec::new(),
        log: log.clone(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let res = install_and_start(a, &mut m, &vpnd_src, &vpnctl_src);
    if let Err(e) = res {
        // Leave nothing half-done behind.
        let _ = undo(&m);
        return Err(e);
    }
    write_manifest(&m)?;
    let vpnctl = a.prefix.join("bin/vpnctl");
    println!(
        "\nvpnd runs: instance {instance}, pid {}, wire {}, tenant {}{}; log {}\n\
         look around: {} --instance {instance} status | conn list | sa list | stats\n\
         take it away: cargo xtask unload --instance {instance}\n",
        m.pid,
        a.wire,
        a.tenant,
        a.netns
            .as_deref()
            .map(|n| format!(", namespace {n}"))
            .unwrap_or_default(),
        log.display(),
        vpnctl.display()
    );
    let _ = Command::new(&vpnctl)
        .args(["--instance", &instance, "status"])
        .status();
    Ok(())
}

fn install_and_start(a: &LoadArgs, m: &mut Manifest, vpnd: &Path, vpnctl: &Path) -> Result<()> {
    for (src, sub) in [(vpnd, "sbin"), (vpnctl, "bin")] {
        let dst_dir = a.prefix.join(sub);
        fs::create_dir_all(&dst_dir).with_context(|| format!("creating {}", dst_dir.display()))?;
        let dst = dst_dir.join(src.file_name().expect("a file"));
        // Copy to a temporary name, then rename: a running binary is replaced, not rewritten.
        let tmp = dst.with_extension("new");
        fs::copy(src, &tmp).with_context(|| format!("installing {}", dst.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &dst)?;
        m.installed.push(dst.clone());
        say(&format!("install {}", dst.display()), "ok");
    }
    let vpnd = a.prefix.join("sbin/vpnd");
    let logf = fs::File::create(&m.log)?;
    let mut c = match &a.netns {
        // Only the network namespace: vpnd keeps the host's mount namespace and so the host's
        // bpffs, where its pins must live for vpnctl (see README "Namespaces").
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(&vpnd);
            c
        }
        None => Command::new(&vpnd),
    };
    c.arg("--config")
        .arg(&m.config)
        .args(["--wire", &a.wire, "--tenant-if", &a.tenant, "--instance"])
        .arg(&m.instance)
        .args(["--log-level", &a.log_level])
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        // Its own process group: Ctrl-C in this terminal must not reach the daemon.
        .process_group(0);
    let mut child = c.spawn().context("starting vpnd")?;
    m.pid = child.id() as i32;
    say("vpnd", &format!("started, pid {}", m.pid));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&m.log).unwrap_or_default();
        if text.lines().any(|l| l.contains("vpnd: running")) {
            say("vpnd", "running");
            // Dropping a Child neither waits for nor kills it: vpnd outlives us, and unload
            // stops it by PID.
            drop(child);
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("vpnd exited ({st}) before it ran:\n{}", tail(&text, 15));
        }
        if Instant::now() >= deadline {
            bail!("vpnd did not say it runs within 20 s:\n{}", tail(&text, 15));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn write_manifest(m: &Manifest) -> Result<()> {
    let p = state_dir(&m.instance).join("manifest.json");
    fs::write(&p, serde_json::to_string_pretty(m)?)
        .with_context(|| format!("writing {}", p.display()))
}

fn read_manifest(instance: &str) -> Result<Manifest> {
    let p = state_dir(instance).join("manifest.json");
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a manifest", p.display()))
}

/// `cargo xtask unload`.
pub fn unload(a: &UnloadArgs) -> Result<()> {
    if !super::is_root() {
        bail!("unloading needs root");
    }
    let instance = match &a.instance {
        Some(i) => i.clone(),
        None => {
            let mut found: Vec<String> = fs::read_dir(STATE_ROOT)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.path().join("manifest.json").exists())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            match &found[..] {
                [one] => one.clone(),
                [] => bail!("nothing is loaded ({STATE_ROOT} holds no instance)"),
                many => bail!(
                    "several instances are loaded ({}): pick one with --instance",
                    many.join(", ")
                ),
            }
        }
    };
    let m = read_manifest(&instance)
        .with_context(|| format!("instance {instance} was not loaded by `cargo xtask load`"))?;
    let left = undo(&m)?;
    if left.is_empty() {
        println!("unload: instance {instance}: nothing left behind");
        Ok(())
    } else {
        bail!("could not remove: {}", left.join("; "))
    }
}

/// Stops vpnd and removes everything `load` made or vpnd may have left; returns what could
/// not be removed.
fn undo(m: &Manifest) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let inst = &m.instance;
    if m.pid > 0 {
        stop_pid(m.pid, &mut left);
    }
    let ns = m.netns.as_deref();
    for ifname in [&m.wire, &m.tenant] {
        let what = format!("XDP on {ifname}");
        match xdp_attached(ns, ifname) {
            Err(_) => say(&what, "interface gone"),
            Ok(None) => say(&what, "detached"),
            Ok(Some(mode)) => {
                let _ = ip(ns, &["link", "set", "dev", ifname, &mode, "off"]).status();
                match xdp_attached(ns, ifname) {
                    Ok(None) => say(&what, "vpnd had left it attached: detached now"),
                    _ => left.push(what),
                }
            }
        }
    }
    for (what, p) in [
        ("pins", Path::new(PIN_ROOT).join(inst)),
        ("run directory", Path::new(VPND_RUN_DIR).join(inst)),
    ] {
        let what = format!("{what} {}", p.display());
        if !p.exists() {
            say(&what, "gone");
        } else if fs::remove_dir_all(&p).is_ok() {
            say(&what, "vpnd had left it: removed now");
        } else {
            left.push(what);
        }
    }
    for p in &m.installed {
        match fs::remove_file(p) {
            Ok(()) => say(&format!("installed {}", p.display()), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => left.push(format!("{}: {e}", p.display())),
        }
    }
    if let Ok(f) = fs::File::open(&m.log) {
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        println!("vpnd's last log lines:");
        for l in &lines[lines.len().saturating_sub(5)..] {
            println!("  {l}");
        }
    }
    let dir = state_dir(inst);
    if fs::remove_dir_all(&dir).is_err() && dir.exists() {
        left.push(dir.display().to_string());
    }
    // The root too, once no other instance is recorded there (remove_dir keeps a non-empty one).
    let _ = fs::remove_dir(STATE_ROOT);
    Ok(left)
}

/// SIGTERM (vpnd deletes its IKE SAs, detaches and unpins), bounded wait, then SIGKILL.
fn stop_pid(pid: i32, left: &mut Vec<String>) {
    let what = format!("vpnd (pid {pid})");
    if !pid_is_vpnd(pid) {
        say(&what, "not running (already gone)");
        return;
    }
    // SAFETY: signalling a PID we checked is a vpnd.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Reap it if it is our child (load's failure path); otherwise it is init's.
        // SAFETY: non-blocking waitpid on a specific PID.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if !pid_is_vpnd(pid) {
            say(&what, "stopped (SIGTERM)");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: as above.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    if pid_is_vpnd(pid) {
        left.push(what);
    } else {
        say(&what, "did not stop within 10 s: killed (SIGKILL)");
    }
}
