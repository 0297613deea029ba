//! The East/West two-site topology of the VPNaaS seed document, with real kernel stacks as
//! tenant hosts and `vpnd` on both network nodes, keyed manually or over IKEv2
//! ([`Keying`]); shared by the integration tests and the tunnel benchmark.
//!
//! ```text
//! [eh: 10.1.0.5, VLAN 100] -- east node (172.24.4.226) -- [inet: bridge] --
//!     -- west node (172.24.4.233) -- [wh: VTEP 192.168.100.2, VXLAN 5001, 10.2.0.9]
//! ```

use std::{
    cell::RefCell,
    fmt::Write as _,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{NetNs, unique},
    vlanhost::VlanHost,
};

const GW_E: &str = "02:ee:00:00:00:fe";
const GW_W: &str = "02:77:00:00:00:fe";
const KEY_EW: &str = "00112233445566778899aabbccddeeff01020304";
const KEY_WE: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";

/// A child process killed (by PID) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `sig` (e.g. `libc::SIGUSR1`) to the process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(self.pid(), sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Waits (bounded) for the process to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// A daemon's stderr lines: received from its reader thread, and kept, so that a test can wait
/// for a line and still search everything said before.
pub struct Log {
    rx: mpsc::Receiver<String>,
    lines: RefCell<Vec<String>>,
}

impl Log {
    pub fn new(rx: mpsc::Receiver<String>) -> Log {
        Log {
            rx,
            lines: RefCell::new(Vec::new()),
        }
    }

    /// The next line not yet received (kept as well).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        let l = self.rx.recv_timeout(timeout)?;
        self.lines.borrow_mut().push(l.clone());
        Ok(l)
    }

    fn pump(&self) {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.borrow_mut().push(l);
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.pump();
        self.lines.borrow().clone()
    }

    /// How many lines so far (a cursor for [`Log::wait_after`]).
    pub fn len(&self) -> usize {
        self.pump();
        self.lines.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything so far, one line each.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The first line (from index `from` on) for which `pred` holds, waiting at most `timeout`.
    pub fn wait_after(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            if let Some(l) = self.lines.borrow().iter().skip(from).find(|l| pred(l)) {
                return Ok(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no such log line within {timeout:?}");
            }
            if let Ok(l) = self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                self.lines.borrow_mut().push(l);
            }
        }
    }

    /// The first line ever said for which `pred` holds, waiting at most `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        self.wait_after(0, timeout, pred)
    }

    /// Whether any line so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }
}

/// Whether the daemons' log lines are echoed to stderr (tagged with their namespace).
static ECHO: AtomicBool = AtomicBool::new(true);

/// Turns the echo of daemon log lines on or off (the lines are kept in [`Log`] either way).
pub fn echo_daemon_logs(on: bool) {
    ECHO.store(on, Ordering::Relaxed);
}

pub fn vpnd_path() -> Result<PathBuf> {
    // target/<profile>/deps/<test> or target/<profile>/<bench> -> target/<profile>/vpnd
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("locating vpnd")?;
    let p = [dir.join("vpnd"), dir.join("../vpnd")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("../vpnd"));
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --bins` with the same profile first (cargo xtask \
             test does)",
            p.display()
        );
    }
    Ok(p)
}

/// vpnctl, next to [`vpnd_path`]'s vpnd.
pub fn vpnctl_path() -> Result<PathBuf> {
    let p = vpnd_path()?.with_file_name("vpnctl");
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --release --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// Starts vpnd in `ns` and waits (bounded) until it says it runs.
/// Returns the process and its log (start-up lines included).
pub fn start_vpnd(ns: &NetNs, config: &str, dir: &std::path::Path) -> Result<(Proc, Log)> {
    start_vpnd_with(ns, config, dir, &[])
}

/// [`start_vpnd`] with extra vpnd arguments (e.g. `--keep-pinned`).
pub fn start_vpnd_with(
    ns: &NetNs,
    config: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> Result<(Proc, Log)> {
    let path = dir.join(format!("{}.toml", ns.name()));
    std::fs::write(&path, config)?;
    // Only the network namespace: vpnd keeps the host's mount namespace, so its pins in
    // /sys/fs/bpf outlive it with --keep-pinned and vpnctl sees them (`ip netns exec`
    // would give it a private /sys, and a bpffs that dies with it). nsenter execs vpnd, so the
    // child's PID is vpnd's.
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(vpnd_path()?)
        .arg("--config")
        .arg(&path)
        // Manual SAs' sequence-number state with the test's files (removed with them), per
        // instance: a restart in the same directory continues where the last run stopped.
        .arg("--state-dir")
        .arg(dir)
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        // Its own process group: a Ctrl-C meant for the test or the demo must not kill vpnd
        // before the caller stops it politely (IKE Delete, detach, unpin).
        .process_group(0)
        .spawn()
        .context("starting vpnd")?;
    let stderr = child.stderr.take().expect("piped");
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    let tag = ns.name().split('-').next().unwrap_or("vpnd").to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if ECHO.load(Ordering::Relaxed) {
                eprintln!("[{tag}] {line}");
            }
            let _ = tx.send(line);
        }
    });
    let log = Log::new(rx);
    loop {
        match log.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.contains("vpnd: running") => return Ok((proc, log)),
            Ok(_) => {}
            Err(_) => bail!("vpnd in {} did not come up:\n{}", ns.name(), log.text()),
        }
    }
}

pub fn mac_of(ns: &NetNs, ifname: &str) -> Result<String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
    Ok(out.trim().to_string())
}

/// How the two vpnds get their SAs.
#[derive(Clone, Debug)]
pub enum Keying {
    /// Fixed `[[manual_sa]]` entries (the original data-plane tests and the benchmark).
    Manual,
    /// IKEv2 between the nodes: the same settings on both sides, mirrored.
    Ike(IkeKeying),
    /// The nodes' whole configuration files (e.g. `config/east.toml`, `config/west.toml`).
    Files(SiteFiles),
}

/// Two complete vpnd configuration files that fit this topology: interfaces `wire` and `ten`,
/// East's tenant on VLAN 100 and West's on VXLAN 5001 (VTEP 192.168.100.1 -> .2), routers
/// 172.24.4.226 and .233, one `ipsec_site_connection` each. The tenant hosts get the MACs the
/// files name; each vpnd runs with `--instance` set to its namespace's unique name.
#[derive(Clone, Debug)]
pub struct SiteFiles {
    pub east: String,
    pub west: String,
    /// The `ipsec_site_connection` names (East's, West's).
    pub conns: (String, String),
    east_host_mac: String,
    west_host_mac: String,
    west_vtep_mac: String,
}

impl SiteFiles {
    /// Reads and checks both files (vpnd's own parser and validation, then the topology's
    /// constraints), naming the file and what does not fit.
    pub fn load(east: &Path, west: &Path) -> Result<SiteFiles> {
        use vpn_userspace::config::Config;
        let one = |path: &Path, want: &str| -> Result<(String, Config, String)> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.resolve_connections(path)?;
            let [conn] = &cfg.connections[..] else {
                bail!(
                    "{}: the demo topology needs exactly one ipsec_site_connection, found {}",
                    path.display(),
                    cfg.connections.len()
                );
            };
            let [t] = &cfg.tenants[..] else {
                bail!(
                    "{}: the demo topology needs exactly one [[tenant]]",
                    path.display()
                );
            };
            let got = match (t.vlan, t.vni) {
                (Some(v), _) => format!("vlan {v}"),
                (_, Some(v)) => format!("vni {v}"),
                _ => "neither vlan nor vni".into(),
            };
            if got != want || t.interface != "ten" || cfg.wire.interface != "wire" {
                bail!(
                    "{}: the demo topology has interfaces `wire` and `ten` and a tenant on {want}; \
                     the file has wire {:?}, tenant {:?} on {got}",
                    path.display(),
                    cfg.wire.interface,
                    t.interface
                );
            }
            let name = conn.name.clone();
            Ok((text, cfg, name))
        };
        let (east_text, ecfg, east_conn) = one(east, "vlan 100")?;
        let (west_text, wcfg, west_conn) = one(west, "vni 5001")?;
        Ok(SiteFiles {
            east: east_text,
            west: west_text,
            conns: (east_conn, west_conn),
            east_host_mac: ecfg.tenants[0].host_mac.clone(),
            west_host_mac: wcfg.tenants[0].host_mac.clone(),
            west_vtep_mac: wcfg.tenants[0]
                .vtep_mac
                .clone()
                .context("west tenant: vtep_mac")?,
        })
    }
}

/// vpnd's Neutron-VPNaaS-shaped IKE configuration for one `ipsec_site_connection`.
#[derive(Clone, Debug)]
pub struct IkeKeying {
    /// The lines of `[ike]` (empty: the section is left out, defaults apply).
    pub ike: String,
    /// The body of `[[ikepolicy]]` (after `name`), TOML lines.
    pub ikepolicy: String,
    /// The body of `[[ipsecpolicy]]` (after `name`), TOML lines.
    pub ipsecpolicy: String,
    pub psk: String,
    /// `bi-directional` or `response-only` for East; West's is [`IkeKeying::west_initiator`].
    pub initiator: String,
    pub west_initiator: String,
    /// An inline table such as `{ action = "hold", interval = 30, timeout = 120 }`.
    pub dpd: Option<String>,
    /// `auto` or `force`.
    pub udp_encap: String,
    pub replay_window: u32,
    /// The connection's `mtu` (both sides), if any.
    pub mtu: Option<u16>,
}

impl Default for IkeKeying {
    /// The field form: AES-256-GCM IKE SA with MODP-2048, AES-128-GCM ESP with ESN and PFS.
    fn default() -> Self {
        IkeKeying {
            ike: String::new(),
            ikepolicy: "encryption_algorithm = \"aes-256-gcm-16\"\nauth_algorithm = \"sha256\"\n\
                        pfs = \"group14\"\nlifetime = 3600\n"
                .into(),
            ipsecpolicy: "encryption_algorithm = \"aes-128-gcm-16\"\nauth_algorithm = \"sha256\"\n\
                          pfs = \"group14\"\nlifetime = 3600\nesn = true\n"
                .into(),
            psk: "a long shared secret for the test tunnel".into(),
            initiator: "bi-directional".into(),
            west_initiator: "response-only".into(),
            dpd: None,
            udp_encap: "auto".into(),
            replay_window: 1024,
            mtu: None,
        }
    }
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl IkeKeying {
    /// The proposal form (strongSwan syntax), e.g. `["aes256gcm16-prfsha256-modp2048"]` and
    /// `["aes128gcm16-noesn"]`.
    pub fn proposals(ike: &[&str], esp: &[&str]) -> IkeKeying {
        IkeKeying {
            ikepolicy: format!("proposals = {}\nlifetime = 3600\n", toml_list(ike)),
            ipsecpolicy: format!("proposals = {}\nlifetime = 3600\n", toml_list(esp)),
            ..Default::default()
        }
    }

    /// The IKE sections of one node's configuration: service `svc` on `local` for `local_net`,
    /// connection `conn` to `peer` for `peer_net`, with `initiator`'s role.
    #[allow(clippy::too_many_arguments)]
    pub fn render(
        &self,
        svc: &str,
        conn: &str,
        local: &str,
        local_net: &str,
        peer: &str,
        peer_net: &str,
        initiator: &str,
    ) -> String {
        let mut out = String::new();
        if !self.ike.is_empty() {
            let _ = writeln!(out, "[ike]\n{}", self.ike.trim_end());
        }
        let _ = writeln!(
            out,
            "[[ikepolicy]]\nname = \"ike1\"\n{}\n[[ipsecpolicy]]\nname = \"esp1\"\n{}",
            self.ikepolicy.trim_end(),
            self.ipsecpolicy.trim_end()
        );
        let _ = writeln!(
            out,
            "[[vpnservice]]\nname = \"{svc}\"\ntenant = 1\nexternal_address = \"{local}\"\n\
             local_subnets = [\"{local_net}\"]\n"
        );
        let _ = writeln!(
            out,
            "[[ipsec_site_connection]]\nname = \"{conn}\"\nvpnservice = \"{svc}\"\n\
             ikepolicy = \"ike1\"\nipsecpolicy = \"esp1\"\npeer_address = \"{peer}\"\n\
             peer_id = \"{peer}\"\npeer_cidrs = [\"{peer_net}\"]\npsk = {psk:?}\n\
             initiator = \"{initiator}\"\nudp_encap = \"{encap}\"\nreplay_window = {rw}",
            psk = self.psk,
            encap = self.udp_encap,
            rw = self.replay_window,
        );
        if let Some(d) = &self.dpd {
            let _ = writeln!(out, "dpd = {d}");
        }
        if let Some(m) = self.mtu {
            let _ = writeln!(out, "mtu = {m}");
        }
        out
    }
}

struct Site<'a> {
    instance: &'a str,
    tenant: String,
    local: &'a str,
    peer: &'a str,
    local_net: &'a str,
    peer_net: &'a str,
    /// (in, out)
    spis: (u32, u32),
    keys: (&'a str, &'a str),
}

fn node_config(site: &Site<'_>, keying: &Keying, svc: &str, conn: &str, initiator: &str) -> String {
    let Site {
        instance,
        tenant,
        local,
        peer,
        local_net,
        peer_net,
        spis,
        keys,
    } = site;
    let head = format!("instance = \"{instance}\"\n[wire]\ninterface = \"wire\"\n{tenant}\n");
    let ike = match keying {
        Keying::Manual => None,
        Keying::Ike(k) => Some(k),
        Keying::Files(f) => {
            return if svc == "east" {
                f.east.clone()
            } else {
                f.west.clone()
            };
        }
    };
    if let Some(k) = ike {
        return head + &k.render(svc, conn, local, local_net, peer, peer_net, initiator);
    }
    format!(
        r#"{head}[[manual_sa]]
name = "{instance}-sa"
tenant = 1
local = "{local}"
peer = "{peer}"
local_subnets = ["{local_net}"]
peer_subnets = ["{peer_net}"]
cipher = "{cipher}"
spi_in = {spi_in}
spi_out = {spi_out}
key_in = "{key_in}"
key_out = "{key_out}"
"#,
        cipher = if keys.1.len() == 40 {
            "aes128gcm16"
        } else {
            "aes256gcm16"
        },
        spi_in = spis.0,
        spi_out = spis.1,
        key_in = keys.0,
        key_out = keys.1,
    )
}

/// Joins `an` in `a` and `bn` in `b` with a veth pair (two queues each way, so that the
/// daemons run two workers and flows spread over them).
pub fn veth(a: &NetNs, an: &str, b: &NetNs, bn: &str) -> Result<()> {
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

/// East's tenant host `eh` (10.1.0.5/24, VLAN 100 pushed and popped by TC) behind East's
/// `ten` interface; returns the VLAN helper (keep it) and East's `[[tenant]]` section.
pub fn east_tenant(east: &NetNs, eh: &NetNs) -> Result<(VlanHost, String)> {
    veth(east, "ten", eh, "eth0")?;
    eh.ip(&["addr", "add", "10.1.0.5/24", "dev", "eth0"])?;
    eh.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
    // Locally generated TCP leaves a veth with its checksum still to be filled in (offload);
    // a real NIC would deliver finished packets, so finish them at the source.
    eh.exec(&[
        "ethtool", "-K", "eth0", "tx", "off", "gso", "off", "tso", "off",
    ])?;
    let vlan = {
        let _in = eh.enter()?;
        VlanHost::attach("eth0", 100)?
    };
    let cfg = format!(
        "[[tenant]]\nid = 1\ninterface = \"ten\"\nvlan = 100\ngateway_ip = \"10.1.0.1\"\ngateway_mac = \"{GW_E}\"\nhost_mac = \"{}\"\n",
        mac_of(eh, "eth0")?
    );
    Ok((vlan, cfg))
}

/// tcpdump on the "internet" bridge (every packet between the nodes, once) into
/// `dir/wire.pcap`; stopped when the returned process drops. Waits until tcpdump had time to
/// open the interface.
pub fn capture_wire(inet: &NetNs, dir: &Path) -> Result<(Proc, PathBuf)> {
    let pcap = dir.join("wire.pcap");
    let p = Proc(
        Command::new("ip")
            .args(["netns", "exec", inet.name(), "tcpdump", "-i", "br0"])
            .args(["-n", "-U", "-w"])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("tcpdump")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    Ok((p, pcap))
}

/// Spawns a command inside a namespace, output discarded; killed on drop.
pub fn spawn_in(ns: &NetNs, cmd: &[&str]) -> Result<Proc> {
    Ok(Proc(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?,
    ))
}

/// The running topology. Dropping it stops the daemons and deletes every namespace.
pub struct TwoSite {
    // Field order is drop order: daemons first, then the VLAN helper, then namespaces.
    pub east_vpnd: Proc,
    pub west_vpnd: Proc,
    /// The daemons' logs (start-up lines included).
    pub east_log: Log,
    pub west_log: Log,
    _vlan: VlanHost,
    pub eh: NetNs,
    pub wh: NetNs,
    pub east: NetNs,
    pub west: NetNs,
    pub inet: NetNs,
    pub dir: PathBuf,
    /// The `ipsec_site_connection` names (East's, West's) when keyed over IKE.
    pub conns: (String, String),
}

impl Drop for TwoSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TwoSite {
    /// Stops both daemons (SIGTERM, bounded wait) and returns their final statistics lines
    /// (East's, West's).
    pub fn stop_daemons(&mut self) -> (String, String) {
        for p in [&mut self.east_vpnd, &mut self.west_vpnd] {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = p.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let last = |log: &Log| {
            while log.recv_timeout(Duration::from_millis(500)).is_ok() {}
            log.lines()
                .into_iter()
                .rfind(|l| l.contains("stopping:"))
                .unwrap_or_default()
        };
        (last(&self.east_log), last(&self.west_log))
    }

    /// Waits (bounded) until both daemons log their connection ACTIVE (IKE keying).
    pub fn wait_active(&self, timeout: Duration) -> Result<()> {
        for (log, conn) in [
            (&self.east_log, &self.conns.0),
            (&self.west_log, &self.conns.1),
        ] {
            let active = format!("conn {conn}: ACTIVE");
            log.wait_for(timeout, |l| l.contains(&active))
                .with_context(|| format!("{conn} did not come up:\n{}", log.text()))?;
        }
        Ok(())
    }

    /// Builds the topology and starts both daemons with manual SAs. `before_vpnd` runs once
    /// the network exists (e.g. to start a capture).
    pub fn start(before_vpnd: impl FnMut(&NetNs, &Path) -> Result<()>) -> Result<TwoSite> {
        TwoSite::start_with(&Keying::Manual, before_vpnd)
    }

    /// Builds the topology and starts both daemons keyed as `keying` says. With IKE, West
    /// (`west-east`, by default response-only) starts first, then East (`east-west`); neither
    /// is waited for: see [`TwoSite::wait_active`].
    pub fn start_with(
        keying: &Keying,
        mut before_vpnd: impl FnMut(&NetNs, &Path) -> Result<()>,
    ) -> Result<TwoSite> {
        // Removed again if building fails half-way.
        let dir_guard = crate::netns::TempDir::new("vpnd-two-site")?;
        let dir = dir_guard.path().to_path_buf();
        let east = NetNs::new("vpnE")?;
        let west = NetNs::new("vpnW")?;
        let inet = NetNs::new("vpnI")?;
        let eh = NetNs::new("vpnEh")?;
        let wh = NetNs::new("vpnWh")?;
        for ns in [&east, &west, &inet, &eh, &wh] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }

        // Wires through a bridge in the "internet" namespace, where tcpdump listens.
        veth(&east, "wire", &inet, "pe")?;
        veth(&west, "wire", &inet, "pw")?;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        inet.ip(&["link", "set", "pe", "master", "br0"])?;
        inet.ip(&["link", "set", "pw", "master", "br0"])?;
        inet.ip(&["link", "set", "br0", "up"])?;
        east.ip(&["addr", "add", "172.24.4.226/24", "dev", "wire"])?;
        west.ip(&["addr", "add", "172.24.4.233/24", "dev", "wire"])?;

        // East tenant host: VLAN 100 on a plain veth (TC pushes/pops the tag).
        let (_vlan, east_tenant_cfg) = east_tenant(&east, &eh)?;

        // West tenant host: a kernel VXLAN device toward the node's VTEP.
        veth(&west, "ten", &wh, "vtep")?;
        west.ip(&["addr", "add", "192.168.100.1/24", "dev", "ten"])?;
        wh.ip(&["addr", "add", "192.168.100.2/24", "dev", "vtep"])?;
        wh.ip(&[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "5001",
            "local",
            "192.168.100.2",
            "remote",
            "192.168.100.1",
            "dstport",
            "4789",
            "dev",
            "vtep",
        ])?;
        wh.ip(&["link", "set", "vx0", "mtu", "1350", "up"])?;
        wh.ip(&["addr", "add", "10.2.0.9/24", "dev", "vx0"])?;
        wh.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
        wh.exec(&[
            "ethtool", "-K", "vx0", "tx", "off", "gso", "off", "tso", "off",
        ])?;
        wh.exec(&[
            "ethtool", "-K", "vtep", "tx", "off", "gso", "off", "tso", "off",
        ])?;

        let (east_init, west_init) = match keying {
            Keying::Ike(k) => (k.initiator.as_str(), k.west_initiator.as_str()),
            Keying::Manual | Keying::Files(_) => ("", ""),
        };
        if let Keying::Files(f) = keying {
            // The tenant hosts take the MACs the files expect (vpnd learns them anyway).
            eh.ip(&["link", "set", "eth0", "address", &f.east_host_mac])?;
            wh.ip(&["link", "set", "vx0", "address", &f.west_host_mac])?;
            wh.ip(&["link", "set", "vtep", "address", &f.west_vtep_mac])?;
        }
        let east_cfg = node_config(
            &Site {
                instance: east.name(),
                tenant: east_tenant_cfg,
                local: "172.24.4.226",
                peer: "172.24.4.233",
                local_net: "10.1.0.0/24",
                peer_net: "10.2.0.0/24",
                spis: (0xf0e0, 0xe0f0),
                keys: (KEY_WE, KEY_EW),
            },
            keying,
            "east",
            "east-west",
            east_init,
        );
        let west_cfg = node_config(
            &Site {
                instance: west.name(),
                tenant: format!(
                    "[[tenant]]\nid = 1\ninterface = \"ten\"\nvni = 5001\ngateway_ip = \"10.2.0.1\"\nlocal_vtep = \"192.168.100.1\"\nremote_vtep = \"192.168.100.2\"\nvtep_mac = \"{}\"\ngateway_mac = \"{GW_W}\"\nhost_mac = \"{}\"\n",
                    mac_of(&wh, "vtep")?,
                    mac_of(&wh, "vx0")?
                ),
                local: "172.24.4.233",
                peer: "172.24.4.226",
                local_net: "10.2.0.0/24",
                peer_net: "10.1.0.0/24",
                spis: (0xe0f0, 0xf0e0),
                keys: (KEY_EW, KEY_WE),
            },
            keying,
            "west",
            "west-east",
            west_init,
        );
        before_vpnd(&inet, &dir)?;
        let (east_vpnd, east_log, west_vpnd, west_log) = if let Keying::Files(_) = keying {
            // The files name their own instances; unique ones keep parallel runs apart.
            let (west_vpnd, west_log) =
                start_vpnd_with(&west, &west_cfg, &dir, &["--instance", west.name()])?;
            let (east_vpnd, east_log) =
                start_vpnd_with(&east, &east_cfg, &dir, &["--instance", east.name()])?;
            (east_vpnd, east_log, west_vpnd, west_log)
        } else if let Keying::Ike(_) = keying {
            let (west_vpnd, west_log) = start_vpnd(&west, &west_cfg, &dir)?;
            let (east_vpnd, east_log) = start_vpnd(&east, &east_cfg, &dir)?;
            (east_vpnd, east_log, west_vpnd, west_log)
        } else {
            let (east_vpnd, east_log) = start_vpnd(&east, &east_cfg, &dir)?;
            let (west_vpnd, west_log) = start_vpnd(&west, &west_cfg, &dir)?;
            (east_vpnd, east_log, west_vpnd, west_log)
        };
        dir_guard.keep();
        Ok(TwoSite {
            east_vpnd,
            west_vpnd,
            east_log,
            west_log,
            _vlan,
            eh,
            wh,
            east,
            west,
            inet,
            dir,
            conns: match keying {
                Keying::Files(f) => f.conns.clone(),
                _ => ("east-west".into(), "west-east".into()),
            },
        })
    }

    /// Builds the topology and starts both daemons with the given configuration files.
    pub fn start_files(files: &SiteFiles) -> Result<TwoSite> {
        TwoSite::start_with(&Keying::Files(files.clone()), |_, _| Ok(()))
    }
}
