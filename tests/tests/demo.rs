//! The binary behind `cargo xtask demo` (`target/release/demo`): the whole two-site demo with
//! the example configurations `config/east.toml` and `config/west.toml` must pass and leave
//! nothing behind; with `--keep` it stays up until SIGINT and then tears everything down; with a
//! tunnel that cannot come up (PSKs differ) it fails. Root only.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use vpn_tests::{netns::require_root, topology::vpnd_path};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn demo_path() -> Result<PathBuf> {
    let p = vpnd_path()?.with_file_name("demo");
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --release --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// What the demo printed about itself: namespaces and vpnd PIDs.
#[derive(Debug, Default)]
struct Seen {
    namespaces: Vec<String>,
    pids: Vec<i32>,
}

impl Seen {
    fn take(&mut self, line: &str) {
        if let Some((_, rest)) = line.split_once("namespaces:") {
            self.namespaces = rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string()))
                .collect();
        }
        if let Some((_, rest)) = line.split_once("vpnd instances:") {
            self.pids = rest
                .split("pid ")
                .skip(1)
                .filter_map(|p| p.split(')').next()?.parse().ok())
                .collect();
        }
    }

    /// Nothing of the demo is left: namespaces, processes, pins, run directories.
    fn assert_gone(&self) {
        assert_eq!(self.namespaces.len(), 5, "{self:?}");
        assert_eq!(self.pids.len(), 2, "{self:?}");
        let netns = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let netns = String::from_utf8_lossy(&netns.stdout);
        for ns in &self.namespaces {
            assert!(
                !netns.split_whitespace().any(|n| n == ns),
                "namespace {ns} left behind"
            );
        }
        for ns in &self.namespaces[..2] {
            for p in [format!("/sys/fs/bpf/{ns}"), format!("/run/vpnd/{ns}")] {
                assert!(!Path::new(&p).exists(), "{p} left behind");
            }
        }
        for pid in &self.pids {
            let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("vpnd"));
            assert!(!alive, "vpnd {pid} still runs");
        }
    }
}

/// Everything `r` says, echoed for the test's output.
fn collect(r: impl std::io::Read) -> String {
    let mut s = String::new();
    for l in BufReader::new(r).lines().map_while(Result::ok) {
        println!("{l}");
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// Runs the demo to its end (bounded); returns (success, stdout, stderr, what it said).
fn run_demo(args: &[&str]) -> Result<(bool, String, String, Seen)> {
    let mut demo = Interrupt(
        Command::new(demo_path()?)
            .current_dir(root())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the demo")?,
    );
    let out = demo.0.stdout.take().expect("piped");
    let err = demo.0.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || collect(out));
    let ereader = std::thread::spawn(move || collect(err));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = demo.0.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            demo.interrupt();
            bail!("the demo ran over 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().expect("reader");
    let stderr = ereader.join().expect("reader");
    let mut seen = Seen::default();
    stdout.lines().for_each(|l| seen.take(l));
    Ok((status.success(), stdout, stderr, seen))
}

/// The demo process; on drop (a failed assertion included) it gets what a terminal's Ctrl-C
/// sends, so that it tears its topology down.
struct Interrupt(std::process::Child);

impl Interrupt {
    /// SIGINT, then a bounded wait for the exit (SIGKILL after 30 s: None).
    fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.0.try_wait() {
            return Some(st);
        }
        // SAFETY: our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.interrupt();
    }
}

#[test]
fn demo_runs_the_two_sites_and_leaves_nothing() -> Result<()> {
    require_root();
    let (ok, out, err, seen) = run_demo(&[])?;
    assert!(ok, "the demo failed:\n{out}\n{err}");
    for needle in [
        "[6/6]",
        "10.1.0.5 -> 10.2.0.9: 5/5 replies",
        "10.2.0.9 -> 10.1.0.5: 5/5 replies",
        "East -> West:",
        "West -> East:",
        "demo: OK",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    // vpnctl's three views of both nodes, with the connection ACTIVE and traffic counted.
    assert_eq!(out.matches("\nNAME ").count(), 2, "two conn lists:\n{out}");
    assert_eq!(
        out.lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&"vpnconnection1") && w.get(1) == Some(&"ACTIVE")
            })
            .count(),
        2,
        "both ends ACTIVE in conn list:\n{out}"
    );
    // sa list: one CHILD_SA each, carrying outbound traffic.
    assert_eq!(
        out.lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&"vpnconnection1")
                    && w.windows(2).any(|p| p == ["ACTIVE", "active"])
                    && w.contains(&"afxdp")
            })
            .count(),
        2,
        "{out}"
    );
    assert_eq!(out.matches("redirect_outbound").count(), 2, "{out}");
    assert!(
        !out.contains("secret-change-me") && !err.contains("secret-change-me"),
        "the PSK was printed"
    );
    seen.assert_gone();
    Ok(())
}

#[test]
fn demo_keep_stays_up_until_sigint_then_tears_down() -> Result<()> {
    require_root();
    let mut demo = Interrupt(
        Command::new(demo_path()?)
            .current_dir(root())
            .args(["--keep", "--transfer-secs", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the demo")?,
    );
    let out = demo.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{l}");
            let _ = tx.send(l);
        }
    });
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut up = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                seen.take(&l);
                if l.contains("left up (--keep)") {
                    up = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if !up {
        bail!("the demo never said it was left up: {seen:?}");
    }
    // Still up a moment later: both vpnds alive, the namespaces there.
    std::thread::sleep(Duration::from_secs(2));
    assert!(demo.0.try_wait()?.is_none(), "the demo ended by itself");
    let eh = seen
        .namespaces
        .get(3)
        .context("the east host's namespace")?;
    let ping = Command::new("ip")
        .args([
            "netns", "exec", eh, "ping", "-c", "2", "-i", "0.2", "-W", "2",
        ])
        .arg("10.2.0.9")
        .output()?;
    assert!(ping.status.success(), "no ping through the kept tunnel");
    let status = demo
        .interrupt()
        .context("the demo did not end within 30 s of SIGINT")?;
    assert!(status.success(), "the demo after SIGINT: {status}");
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.take(&l);
    }
    seen.assert_gone();
    Ok(())
}

#[test]
fn demo_fails_when_the_tunnel_does_not_come_up() -> Result<()> {
    require_root();
    let dir = std::env::temp_dir().join(vpn_tests::netns::unique("demo-badpsk"));
    std::fs::create_dir_all(&dir)?;
    let west = std::fs::read_to_string(root().join("config/west.toml"))?;
    assert!(west.contains("psk = \"secret-change-me"));
    let west = west.replace("psk = \"secret-change-me", "psk = \"another-secret");
    let wpath = dir.join("west.toml");
    std::fs::write(&wpath, west)?;
    let r = run_demo(&[
        "--west",
        wpath.to_str().context("path")?,
        "--up-timeout",
        "8",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, out, err, seen) = r?;
    assert!(!ok, "the demo passed with differing PSKs:\n{out}");
    assert!(err.contains("demo: FAILED"), "{err}");
    assert!(!out.contains("demo: OK"), "{out}");
    assert!(
        err.contains("AUTHENTICATION_FAILED"),
        "the cause is shown: {err}"
    );
    seen.assert_gone();
    Ok(())
}
