//! `vpnd` against strongSwan: East exactly as in [`crate::topology::TwoSite`] (vpnd, VLAN
//! tenant host `eh` 10.1.0.5), West a namespace running charon (kernel-libipsec) whose tenant
//! is simulated by its inner address 10.2.0.1/32 on `lo` (this kernel has no dummy links;
//! libipsec routes 10.1.0.0/24 into its TUN device through table 220 itself).
//!
//! ```text
//! [eh: 10.1.0.5, VLAN 100] -- east node, vpnd (172.24.4.226) -- [inet: bridge] --
//!     -- west, charon (172.24.4.233; lo 10.2.0.1/32)
//! ```

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::NetNs,
    strongswan::{Charon, CharonSettings, IkeSaInfo, SwanConn},
    topology::{IkeKeying, Log, Proc, east_tenant, start_vpnd, veth},
    vlanhost::VlanHost,
};

pub const EAST_WIRE: &str = "172.24.4.226";
pub const WEST_WIRE: &str = "172.24.4.233";
pub const EAST_NET: &str = "10.1.0.0/24";
pub const WEST_NET: &str = "10.2.0.0/24";
/// East's tenant host.
pub const EAST_HOST: &str = "10.1.0.5";
/// West's simulated tenant (an address on `lo` of the charon namespace).
pub const WEST_HOST: &str = "10.2.0.1";
/// vpnd's `ipsec_site_connection` on East.
pub const VPND_CONN: &str = "east-west";
/// charon's connection and CHILD_SA on West.
pub const SWAN_IKE: &str = "west";
pub const SWAN_CHILD: &str = "west-net";

/// A vpnd process and its log.
pub struct Vpnd {
    pub proc: Proc,
    pub log: Log,
}

impl Vpnd {
    /// Sends a signal: `SIGUSR1` rekeys every CHILD_SA, `SIGUSR2` every IKE_SA.
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.proc.signal(sig)
    }

    /// SIGTERM, bounded wait; returns the `vpnd: stopping: ...` line (empty if none).
    pub fn stop(&mut self) -> String {
        let _ = self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(Duration::from_secs(5));
        while self.log.recv_timeout(Duration::from_millis(300)).is_ok() {}
        self.log
            .lines()
            .into_iter()
            .rfind(|l| l.contains("stopping:"))
            .unwrap_or_default()
    }

    /// Waits (bounded) for `vpnd: conn east-west: ACTIVE`.
    pub fn wait_active(&self, timeout: Duration) -> Result<String> {
        let needle = format!("conn {VPND_CONN}: ACTIVE");
        self.log
            .wait_for(timeout, |l| l.contains(&needle))
            .with_context(|| format!("vpnd never ACTIVE:\n{}", self.log.text()))
    }

    /// Every `CHILD_SA N inbound installed (in 0x.., out 0x..)` so far: (N, in, out).
    pub fn installed_children(&self) -> Vec<(u64, u32, u32)> {
        self.log
            .lines()
            .iter()
            .filter_map(|l| parse_installed(l))
            .collect()
    }

    /// The CHILD_SA ids that were said to carry outbound traffic, in order.
    pub fn outbound_children(&self) -> Vec<u64> {
        self.log
            .lines()
            .iter()
            .filter_map(|l| {
                let rest = l.split("CHILD_SA ").nth(1)?;
                let (id, tail) = rest.split_once(' ')?;
                tail.starts_with("carries outbound traffic")
                    .then(|| id.parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// The SPIs (in, out) of the CHILD_SA that carries outbound traffic now.
    pub fn current_spis(&self) -> Option<(u32, u32)> {
        let id = *self.outbound_children().last()?;
        self.installed_children()
            .into_iter()
            .rfind(|(n, _, _)| *n == id)
            .map(|(_, i, o)| (i, o))
    }
}

/// `vpnd: conn C: CHILD_SA N inbound installed (in 0x0000abcd, out 0x1234abcd)`.
pub fn parse_installed(line: &str) -> Option<(u64, u32, u32)> {
    let rest = line.split("CHILD_SA ").nth(1)?;
    let (id, tail) = rest.split_once(' ')?;
    let tail = tail.strip_prefix("inbound installed (in 0x")?;
    let (spi_in, tail) = tail.split_once(", out 0x")?;
    let spi_out = tail.strip_suffix(')')?;
    Some((
        id.parse().ok()?,
        u32::from_str_radix(spi_in, 16).ok()?,
        u32::from_str_radix(spi_out, 16).ok()?,
    ))
}

/// charon's installed CHILD_SA of [`SWAN_CHILD`]: (IKE SPIi, IKE SPIr, ESP in, ESP out).
pub fn swan_installed(sas: &[IkeSaInfo]) -> Option<(u64, u64, u32, u32)> {
    sas.iter()
        .filter(|s| s.name == SWAN_IKE && s.state == "ESTABLISHED")
        .find_map(|s| {
            let c = s.installed_child(SWAN_CHILD)?;
            Some((s.spi_i, s.spi_r, c.spi_in, c.spi_out))
        })
}

/// The running East-vpnd / West-charon topology. Dropping it stops both daemons, the VLAN
/// helper, and deletes the namespaces and the directory.
pub struct SwanSite {
    // Field order is drop order: daemons first, then the VLAN helper, then namespaces.
    pub vpnd: Option<Vpnd>,
    pub charon: Option<Charon>,
    _vlan: VlanHost,
    pub eh: NetNs,
    pub east: NetNs,
    pub west: NetNs,
    pub inet: NetNs,
    pub dir: PathBuf,
    east_tenant_cfg: String,
}

impl Drop for SwanSite {
    fn drop(&mut self) {
        self.vpnd.take();
        self.charon.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SwanSite {
    /// Builds the network; no daemon runs yet.
    pub fn build() -> Result<SwanSite> {
        // Removed again if building fails half-way.
        let dir_guard = crate::netns::TempDir::new("vpnd-swan")?;
        let dir = dir_guard.path().to_path_buf();
        let east = NetNs::new("vpnE")?;
        let west = NetNs::new("swW")?;
        let inet = NetNs::new("vpnI")?;
        let eh = NetNs::new("vpnEh")?;
        for ns in [&east, &west, &inet, &eh] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }
        veth(&east, "wire", &inet, "pe")?;
        veth(&west, "wire", &inet, "pw")?;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        inet.ip(&["link", "set", "pe", "master", "br0"])?;
        inet.ip(&["link", "set", "pw", "master", "br0"])?;
        inet.ip(&["link", "set", "br0", "up"])?;
        east.ip(&["addr", "add", &format!("{EAST_WIRE}/24"), "dev", "wire"])?;
        west.ip(&["addr", "add", &format!("{WEST_WIRE}/24"), "dev", "wire"])?;
        west.ip(&["addr", "add", &format!("{WEST_HOST}/32"), "dev", "lo"])?;
        // charon's own TCP (iperf3 on West) goes through TUN, which takes finished packets;
        // the veth toward the bridge carries only UDP-encapsulated ESP and IKE.
        let (_vlan, east_tenant_cfg) = east_tenant(&east, &eh)?;
        dir_guard.keep();
        Ok(SwanSite {
            vpnd: None,
            charon: None,
            _vlan,
            eh,
            east,
            west,
            inet,
            dir,
            east_tenant_cfg,
        })
    }

    /// charon's side of the tunnel: PSK `psk`, TS 10.2.0.0/24 <-> 10.1.0.0/24, identified by
    /// the wire addresses, no automatic start.
    pub fn swan_conn(psk: &str) -> SwanConn {
        let mut c = SwanConn::new(SWAN_IKE, WEST_WIRE, EAST_WIRE, psk).ts(&[WEST_NET], &[EAST_NET]);
        c.child = SWAN_CHILD.into();
        c
    }

    /// Starts charon in West with one connection.
    pub fn start_charon(&mut self, settings: &CharonSettings, conn: SwanConn) -> Result<()> {
        self.charon = Some(Charon::start(&self.west, settings, &[conn])?);
        Ok(())
    }

    /// East's full configuration with `keying`'s IKE sections (connection `east-west`).
    pub fn vpnd_config(&self, keying: &IkeKeying) -> String {
        format!(
            "instance = \"{}\"\n[wire]\ninterface = \"wire\"\n{}\n{}",
            self.east.name(),
            self.east_tenant_cfg,
            keying.render(
                "east",
                VPND_CONN,
                EAST_WIRE,
                EAST_NET,
                WEST_WIRE,
                WEST_NET,
                &keying.initiator
            )
        )
    }

    /// Starts vpnd on East with `keying` (waits until it runs, not for the tunnel).
    pub fn start_vpnd(&mut self, keying: &IkeKeying) -> Result<()> {
        let cfg = self.vpnd_config(keying);
        let (proc, log) = start_vpnd(&self.east, &cfg, &self.dir)?;
        self.vpnd = Some(Vpnd { proc, log });
        Ok(())
    }

    pub fn vpnd(&self) -> &Vpnd {
        self.vpnd.as_ref().expect("vpnd started")
    }

    pub fn charon(&self) -> &Charon {
        self.charon.as_ref().expect("charon started")
    }

    /// vpnd's log so far.
    pub fn vpnd_log(&self) -> String {
        self.vpnd.as_ref().map(|v| v.log.text()).unwrap_or_default()
    }

    /// charon's log so far.
    pub fn charon_log(&self) -> String {
        self.charon.as_ref().map(|c| c.log()).unwrap_or_default()
    }

    /// Sends `sig` to vpnd.
    pub fn signal_vpnd(&self, sig: i32) -> Result<()> {
        self.vpnd().signal(sig)
    }

    /// Waits until vpnd says ACTIVE and charon has the CHILD_SA installed with the mirrored
    /// SPIs; returns charon's (SPIi, SPIr, ESP in, ESP out).
    pub fn wait_tunnel(&self, timeout: Duration) -> Result<(u64, u64, u32, u32)> {
        let deadline = Instant::now() + timeout;
        self.vpnd()
            .wait_active(timeout)
            .with_context(|| format!("charon's log:\n{}", tail(&self.charon_log(), 60)))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut last = None;
        let res = self
            .charon()
            .wait_sas(left.max(Duration::from_secs(1)), |sas| {
                last = swan_installed(sas);
                last.is_some_and(|(_, _, i, o)| self.vpnd().current_spis() == Some((o, i)))
            });
        res.with_context(|| {
            format!(
                "charon {last:x?} vs vpnd {:x?}:\n{}",
                self.vpnd().current_spis(),
                self.vpnd_log()
            )
        })?;
        Ok(last.expect("checked"))
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A ping running in the background inside a namespace; its summary is read when it ends.
pub struct Pinger(Proc);

impl Pinger {
    /// `ping -n -q [-I src] -i interval -c count dst` in `ns`.
    pub fn start(
        ns: &NetNs,
        src: Option<&str>,
        dst: &str,
        count: u32,
        interval: &str,
    ) -> Result<Pinger> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "ping", "-n", "-q"]);
        if let Some(s) = src {
            cmd.args(["-I", s]);
        }
        let child = cmd
            .args(["-i", interval, "-W", "2", "-c", &count.to_string(), dst])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        Ok(Pinger(Proc(child)))
    }

    /// Waits (bounded) for the end; returns (transmitted, received).
    pub fn finish(mut self, timeout: Duration) -> Result<(u32, u32)> {
        if !self.0.wait_exit(timeout) {
            bail!("ping still running after {timeout:?}");
        }
        let mut out = String::new();
        if let Some(mut s) = self.0.0.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        ping_counts(&out)
    }
}

/// (transmitted, received) from ping's summary.
pub fn ping_counts(out: &str) -> Result<(u32, u32)> {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in {out:?}"))?;
    let num = |what: &str| -> Result<u32> {
        line.split(", ")
            .find(|p| p.contains(what))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{what} in {line:?}"))
    };
    Ok((num("transmitted")?, num("received")?))
}

/// A bounded ping that must get every reply: `count` pings from `ns` (source `src`) to `dst`.
pub fn ping_all(ns: &NetNs, src: Option<&str>, dst: &str, count: u32) -> Result<()> {
    let mut args = vec!["timeout", "20", "ping", "-n", "-c"];
    let c = count.to_string();
    args.push(&c);
    args.extend(["-i", "0.1", "-W", "2"]);
    if let Some(s) = src {
        args.extend(["-I", s]);
    }
    args.push(dst);
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(&args)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, got) = ping_counts(&text)?;
    if sent != count || got != count {
        bail!(
            "ping {dst} from {}: {got}/{sent} replies:\n{text}",
            ns.name()
        );
    }
    Ok(())
}

/// A TCP transfer with iperf3 (`secs` seconds): server bound to `server_addr` in `server`,
/// client in `client` (bound to `client_addr` if given). Returns received bits/s.
pub fn iperf_tcp(
    server: &NetNs,
    server_addr: &str,
    client: &NetNs,
    client_addr: Option<&str>,
    secs: u32,
) -> Result<f64> {
    let _server = crate::topology::spawn_in(server, &["iperf3", "-s", "-1", "-B", server_addr])?;
    std::thread::sleep(Duration::from_millis(300));
    let t = secs.to_string();
    let mut args = vec!["timeout", "30", "iperf3", "-c", server_addr, "-t", &t, "-J"];
    if let Some(a) = client_addr {
        args.extend(["-B", a]);
    }
    let out = client
        .exec(&args)
        .with_context(|| format!("iperf3 {} -> {server_addr}", client.name()))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    eprintln!(
        "iperf3 TCP {} -> {server_addr}: {:.1} Mbit/s, {:.1} MB, {} retransmits",
        client.name(),
        bps / 1e6,
        bytes / 1e6,
        v["end"]["sum_sent"]["retransmits"]
    );
    if bytes <= 0.0 {
        bail!("iperf3 moved nothing: {out}");
    }
    Ok(bps)
}
