//! The East/West two-site topology of the VPNaaS seed document, with real kernel stacks as
//! tenant hosts and `vpnd` (manual SAs) on both network nodes; shared by the integration test
//! and the tunnel benchmark.
//!
//! ```text
//! [eh: 10.1.0.5, VLAN 100] -- east node (172.24.4.226) -- [inet: bridge] --
//!     -- west node (172.24.4.233) -- [wh: VTEP 192.168.100.2, VXLAN 5001, 10.2.0.9]
//! ```

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
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

/// Starts vpnd in `ns` and waits (bounded) until it says it runs.
/// Returns the process and its log lines after the start-up.
pub fn start_vpnd(
    ns: &NetNs,
    config: &str,
    dir: &std::path::Path,
) -> Result<(Proc, mpsc::Receiver<String>)> {
    let path = dir.join(format!("{}.toml", ns.name()));
    std::fs::write(&path, config)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(vpnd_path()?)
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting vpnd")?;
    let stderr = child.stderr.take().expect("piped");
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[vpnd] {line}");
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.contains("vpnd: running") => return Ok((proc, rx)),
            Ok(_) => {}
            Err(_) => bail!("vpnd in {} did not come up", ns.name()),
        }
    }
}

pub fn mac_of(ns: &NetNs, ifname: &str) -> Result<String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
    Ok(out.trim().to_string())
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

fn node_config(site: &Site<'_>) -> String {
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
    format!(
        r#"instance = "{instance}"
[wire]
interface = "wire"
{tenant}
[[manual_sa]]
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
    /// The daemons' log lines after start-up.
    pub east_log: mpsc::Receiver<String>,
    pub west_log: mpsc::Receiver<String>,
    _vlan: VlanHost,
    pub eh: NetNs,
    pub wh: NetNs,
    pub east: NetNs,
    pub west: NetNs,
    pub inet: NetNs,
    pub dir: PathBuf,
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
        let last = |rx: &mpsc::Receiver<String>| {
            let mut stats = String::new();
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                if l.contains("stopping:") {
                    stats = l;
                }
            }
            stats
        };
        (last(&self.east_log), last(&self.west_log))
    }

    /// Builds the topology and starts both daemons. `before_vpnd` runs once the network
    /// exists (e.g. to start a capture).
    pub fn start(mut before_vpnd: impl FnMut(&NetNs, &Path) -> Result<()>) -> Result<TwoSite> {
        let dir = std::env::temp_dir().join(unique("vpnd-two-site"));
        std::fs::create_dir_all(&dir)?;
        let east = NetNs::new("vpnE")?;
        let west = NetNs::new("vpnW")?;
        let inet = NetNs::new("vpnI")?;
        let eh = NetNs::new("vpnEh")?;
        let wh = NetNs::new("vpnWh")?;
        for ns in [&east, &west, &inet, &eh, &wh] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }

        // Wires through a bridge in the "internet" namespace, where tcpdump listens.
        let veth = |a: &NetNs, an: &str, b: &NetNs, bn: &str| -> Result<()> {
            let tmp = unique("v");
            let tmp = &tmp[tmp.len().saturating_sub(12)..];
            // Two queues each way, so the daemons run two workers and flows spread over them.
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
        };
        veth(&east, "wire", &inet, "pe")?;
        veth(&west, "wire", &inet, "pw")?;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        inet.ip(&["link", "set", "pe", "master", "br0"])?;
        inet.ip(&["link", "set", "pw", "master", "br0"])?;
        inet.ip(&["link", "set", "br0", "up"])?;
        east.ip(&["addr", "add", "172.24.4.226/24", "dev", "wire"])?;
        west.ip(&["addr", "add", "172.24.4.233/24", "dev", "wire"])?;

        // East tenant host: VLAN 100 on a plain veth (TC pushes/pops the tag).
        veth(&east, "ten", &eh, "eth0")?;
        eh.ip(&["addr", "add", "10.1.0.5/24", "dev", "eth0"])?;
        eh.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        // Locally generated TCP leaves a veth with its checksum still to be filled in (offload);
        // a real NIC would deliver finished packets, so finish them at the source.
        eh.exec(&[
            "ethtool", "-K", "eth0", "tx", "off", "gso", "off", "tso", "off",
        ])?;
        let _vlan = {
            let _in = eh.enter()?;
            VlanHost::attach("eth0", 100)?
        };

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

        let east_cfg = node_config(&Site {
            instance: "vpnE",
            tenant: format!(
                "[[tenant]]\nid = 1\ninterface = \"ten\"\nvlan = 100\ngateway_ip = \"10.1.0.1\"\ngateway_mac = \"{GW_E}\"\nhost_mac = \"{}\"\n",
                mac_of(&eh, "eth0")?
            ),
            local: "172.24.4.226",
            peer: "172.24.4.233",
            local_net: "10.1.0.0/24",
            peer_net: "10.2.0.0/24",
            spis: (0xf0e0, 0xe0f0),
            keys: (KEY_WE, KEY_EW),
        });
        let west_cfg = node_config(&Site {
            instance: "vpnW",
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
        });
        before_vpnd(&inet, &dir)?;
        let (east_vpnd, east_log) = start_vpnd(&east, &east_cfg, &dir)?;
        let (west_vpnd, west_log) = start_vpnd(&west, &west_cfg, &dir)?;
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
        })
    }
}
