//! Uniquely named network namespaces that always go away, and entering one from a thread.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails with a clear message unless we are root (the BPF and netns tests need it).
pub fn require_root() {
    // SAFETY: plain libc call.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads XDP programs and creates network namespaces: run it as root \
         (cargo xtask test does, in CI)"
    );
}

/// A process-unique name with a prefix, short enough for every kernel limit.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("spawning {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace created with `ip netns add`, deleted (with any process left in it)
/// on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Result<NetNs> {
        let name = unique(prefix);
        run("ip", &["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Any command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(cmd);
        run("ip", &a)
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<NsGuard> {
        let orig = File::open("/proc/thread-self/ns/net").context("opening our own netns")?;
        let target = File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        // SAFETY: setns on fds we own; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(NsGuard { orig })
    }

    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", ifname])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("ifindex of {ifname} from {out:?}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill whatever still runs inside, by PID, then delete the namespace.
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: signalling a PID that lives in our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

pub struct NsGuard {
    orig: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: back to the namespace we came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A new, uniquely named directory under the system's temporary directory, removed again on
/// drop unless [`TempDir::keep`] hands it to an owner that removes it itself (a half-built
/// topology must leave nothing behind).
pub struct TempDir(Option<PathBuf>);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(Some(dir)))
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("kept already")
    }

    /// Stops the removal on drop; the caller owns the directory now.
    pub fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept already")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
