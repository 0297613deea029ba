//! Topology of `ike-bench`: two `vpnd` nodes with IKE-negotiated connections, joined by one
//! veth, each with one untagged tenant interface toward a host namespace.
//!
//! ```text
//! [hi: 10.1.0.5] --ten-- node I (172.25.0.1+i) ==wire== node R (172.25.1.1+i) --ten-- [hr: 10.2.0.9]
//! ```
//!
//! Connection `i` runs between 172.25.0.(1+i) on I and 172.25.1.(1+i) on R (address aliases
//! on the wire interfaces, one `[[vpnservice]]` per local address), protecting
//! 10.(100+i/256).(i%256).0/24 behind I and 10.(200+i/256).(i%256).0/24 behind R, all in
//! tenant 1; connection 0 protects 10.1.0.0/24 and 10.2.0.0/24 instead, where the hosts live.
//! I is bi-directional, R response-only. Dropping a [`Pair`] stops both daemons (SIGTERM,
//! then SIGKILL by PID), removes pins they left and deletes the namespaces.
//!
//! With `IKE_BENCH_VERBOSE` set in the environment, the daemons' log lines are echoed.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{NetNs, unique},
    topology::{mac_of, vpnd_path},
};

/// The tenant gateway MACs vpnd answers with (static neighbour entries on the hosts).
pub const GW_I: &str = "02:1b:00:00:00:fe";
pub const GW_R: &str = "02:1c:00:00:00:fe";
pub const HOST_I: &str = "10.1.0.5";
pub const HOST_R: &str = "10.2.0.9";
const PSK: &str = "ike-bench shared secret, long enough";

/// Wire addresses of connection `i`: (I's, R's).
pub fn conn_addrs(i: usize) -> (String, String) {
    assert!(i < 254, "at most 254 connections");
    (format!("172.25.0.{}", 1 + i), format!("172.25.1.{}", 1 + i))
}

/// Protected subnets of connection `i`: (behind I, behind R).
pub fn conn_nets(i: usize) -> (String, String) {
    if i == 0 {
        return ("10.1.0.0/24".into(), "10.2.0.0/24".into());
    }
    (
        format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
        format!("10.{}.{}.0/24", 200 + i / 256, i % 256),
    )
}

/// A running vpnd whose stderr lines arrive with the time they were read.
pub struct Daemon {
    /// `None` once reaped.
    child: Option<Child>,
    pid: i32,
    /// Just before the process was spawned.
    pub started: Instant,
    log: mpsc::Receiver<(Instant, String)>,
    /// Every line taken from `log` so far (for error messages).
    pub seen: Vec<String>,
    pub instance: String,
}

impl Daemon {
    /// Starts vpnd in `ns` with `config`; does not wait.
    pub fn spawn(ns: &NetNs, instance: &str, config: &str, dir: &std::path::Path) -> Result<Self> {
        let path = dir.join(format!("{instance}.toml"));
        std::fs::write(&path, config)?;
        let started = Instant::now();
        // Only the network namespace: vpnd keeps the host's mount namespace, so its pins in
        // /sys/fs/bpf outlive it with --keep-pinned and vpnctl sees them (`ip netns exec`
        // would give it a private /sys, and a bpffs that dies with it). nsenter execs vpnd, so the
        // child's PID is vpnd's.
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(vpnd_path()?)
            .arg("--config")
            .arg(&path)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting vpnd")?;
        let stderr = child.stderr.take().expect("piped");
        let pid = child.id() as i32;
        let (tx, log) = mpsc::channel();
        let echo = std::env::var_os("IKE_BENCH_VERBOSE").is_some();
        let tag = instance.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Ok(Daemon {
            child: Some(child),
            pid,
            started,
            log,
            seen: Vec::new(),
            instance: instance.to_string(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to vpnd (by PID), unless it has been reaped already.
    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            // SAFETY: signalling our own child, not yet reaped (the PID is still ours).
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// The next line within `timeout`, if any.
    pub fn next_line(&mut self, timeout: Duration) -> Option<(Instant, String)> {
        let r = self.log.recv_timeout(timeout).ok()?;
        self.seen.push(r.1.clone());
        Some(r)
    }

    /// Every line available now.
    pub fn drain(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok((_, l)) = self.log.try_recv() {
            self.seen.push(l.clone());
            v.push(l);
        }
        v
    }

    /// Waits for a line containing `pat`; fails after `timeout` with the daemon's last lines.
    pub fn wait_for(&mut self, pat: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some((t, l)) if l.contains(pat) => return Ok(t),
                Some(_) => {}
                None => bail!(
                    "vpnd {}: no {pat:?} within {timeout:?}; last lines:\n{}",
                    self.instance,
                    self.tail()
                ),
            }
        }
    }

    /// The last lines seen, for error messages.
    pub fn tail(&self) -> String {
        let from = self.seen.len().saturating_sub(25);
        self.seen[from..].join("\n")
    }

    /// Stops vpnd (as [`Daemon::stop`]) and returns the lines it printed until its end.
    pub fn finish(&mut self) -> Vec<String> {
        self.stop(Duration::from_secs(4));
        let mut v = Vec::new();
        while let Some((_, l)) = self.next_line(Duration::from_secs(2)) {
            v.push(l);
        }
        v
    }

    /// SIGTERM, a bounded wait, then SIGKILL; reaps the process.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let Some(mut child) = self.child.take() else {
            return;
        };
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The two nodes and their hosts.
pub struct Pair {
    pub init: Option<Daemon>,
    pub resp: Option<Daemon>,
    pub ni: NetNs,
    pub nr: NetNs,
    pub hi: NetNs,
    pub hr: NetNs,
    pub dir: PathBuf,
    pub conns: usize,
    inst_i: String,
    inst_r: String,
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Both get SIGTERM first, so their polite Deletes can cross; then bounded waits.
        for d in [&self.init, &self.resp].into_iter().flatten() {
            d.signal(libc::SIGTERM);
        }
        for d in [&mut self.init, &mut self.resp].into_iter().flatten() {
            d.stop(Duration::from_secs(4));
        }
        self.init = None;
        self.resp = None;
        // vpnd removes its pins on exit; a killed one may leave them.
        for inst in [&self.inst_i, &self.inst_r] {
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/{inst}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces drop after this (killing anything left in them by PID).
    }
}

fn veth(a: &NetNs, an: &str, b: &NetNs, bn: &str) -> Result<()> {
    let tmp = unique("v");
    let tmp = &tmp[tmp.len().saturating_sub(12)..];
    a.ip(&[
        "link",
        "add",
        an,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        tmp,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
    ])?;
    a.ip(&["link", "set", tmp, "netns", b.name()])?;
    b.ip(&["link", "set", tmp, "name", bn])?;
    a.ip(&["link", "set", an, "up"])?;
    b.ip(&["link", "set", bn, "up"])?;
    Ok(())
}

/// How many IPv4 UDP sockets listen on port 500 in `ns`.
fn ike_sockets(ns: &NetNs) -> usize {
    ns.exec(&["ss", "-H", "-4", "-u", "-l", "-n"])
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .is_some_and(|a| a.ends_with(":500"))
                })
                .count()
        })
        .unwrap_or(0)
}

impl Pair {
    /// Builds the namespaces, links and addresses for `conns` connections (no daemons yet).
    pub fn build(conns: usize) -> Result<Pair> {
        let dir = std::env::temp_dir().join(unique("ike-bench"));
        std::fs::create_dir_all(&dir)?;
        let ni = NetNs::new("ikbI")?;
        let nr = NetNs::new("ikbR")?;
        let hi = NetNs::new("ikbHi")?;
        let hr = NetNs::new("ikbHr")?;
        let pid = std::process::id();
        let pair = Pair {
            init: None,
            resp: None,
            ni,
            nr,
            hi,
            hr,
            dir,
            conns,
            inst_i: format!("ikbI{pid}"),
            inst_r: format!("ikbR{pid}"),
        };
        let (ni, nr, hi, hr) = (&pair.ni, &pair.nr, &pair.hi, &pair.hr);
        for ns in [ni, nr, hi, hr] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }
        veth(ni, "wire", nr, "wire")?;
        veth(ni, "ten", hi, "eth0")?;
        veth(nr, "ten", hr, "eth0")?;
        for i in 0..conns {
            let (a, b) = conn_addrs(i);
            ni.ip(&["addr", "add", &format!("{a}/16"), "dev", "wire"])?;
            nr.ip(&["addr", "add", &format!("{b}/16"), "dev", "wire"])?;
        }
        for (h, addr, gw, gw_mac) in [
            (hi, HOST_I, "10.1.0.1", GW_I),
            (hr, HOST_R, "10.2.0.1", GW_R),
        ] {
            h.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            h.ip(&[
                "neigh",
                "replace",
                gw,
                "lladdr",
                gw_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            h.ip(&["route", "add", "default", "via", gw])?;
            // Locally generated packets leave a veth with checksums still to be filled in;
            // finish them at the source, as a real NIC would deliver them.
            h.exec(&[
                "ethtool", "-K", "eth0", "tx", "off", "gso", "off", "tso", "off",
            ])?;
        }
        Ok(pair)
    }

    /// vpnd's configuration for one side (`initiator`: I, bi-directional; else R,
    /// response-only), every connection with the IKE proposal `ike`.
    pub fn config(&self, initiator: bool, ike: &str) -> Result<String> {
        let (instance, host, gw_ip, gw_mac) = if initiator {
            (&self.inst_i, &self.hi, "10.1.0.1", GW_I)
        } else {
            (&self.inst_r, &self.hr, "10.2.0.1", GW_R)
        };
        let mut s = format!(
            "instance = \"{instance}\"\n[wire]\ninterface = \"wire\"\n\
             [[tenant]]\nid = 1\ninterface = \"ten\"\ngateway_ip = \"{gw_ip}\"\n\
             gateway_mac = \"{gw_mac}\"\nhost_mac = \"{}\"\n\
             [[ikepolicy]]\nname = \"ike\"\nproposals = [\"{ike}\"]\n\
             [[ipsecpolicy]]\nname = \"esp\"\n",
            mac_of(host, "eth0")?
        );
        for i in 0..self.conns {
            let (a, b) = conn_addrs(i);
            let (na, nb) = conn_nets(i);
            let (local, peer, lnet, pnet) = if initiator {
                (a, b, na, nb)
            } else {
                (b, a, nb, na)
            };
            let mode = if initiator {
                "bi-directional"
            } else {
                "response-only"
            };
            write!(
                s,
                "[[vpnservice]]\nname = \"svc{i}\"\ntenant = 1\nexternal_address = \"{local}\"\n\
                 local_subnets = [\"{lnet}\"]\n\
                 [[ipsec_site_connection]]\nname = \"c{i}\"\nvpnservice = \"svc{i}\"\n\
                 ikepolicy = \"ike\"\nipsecpolicy = \"esp\"\npeer_address = \"{peer}\"\n\
                 peer_cidrs = [\"{pnet}\"]\npsk = \"{PSK}\"\ninitiator = \"{mode}\"\n"
            )?;
        }
        Ok(s)
    }

    /// Starts the response-only side and waits until it runs and listens on every address.
    pub fn start_responder(&mut self, ike: &str) -> Result<()> {
        let cfg = self.config(false, ike)?;
        let mut d = Daemon::spawn(&self.nr, &self.inst_r, &cfg, &self.dir)?;
        d.wait_for("vpnd: running", Duration::from_secs(30))?;
        self.resp = Some(d);
        let deadline = Instant::now() + Duration::from_secs(15);
        while ike_sockets(&self.nr) < self.conns {
            if Instant::now() > deadline {
                let d = self.resp.as_mut().expect("set");
                d.drain();
                bail!(
                    "responder does not listen on {} IKE addresses; last lines:\n{}",
                    self.conns,
                    d.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the bi-directional side (no waiting).
    pub fn start_initiator(&mut self, ike: &str) -> Result<()> {
        let cfg = self.config(true, ike)?;
        self.init = Some(Daemon::spawn(&self.ni, &self.inst_i, &cfg, &self.dir)?);
        Ok(())
    }

    pub fn init(&mut self) -> &mut Daemon {
        self.init.as_mut().expect("initiator started")
    }

    pub fn resp(&mut self) -> &mut Daemon {
        self.resp.as_mut().expect("responder started")
    }
}
