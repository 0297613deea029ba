//! Two sites with real kernel stacks at both ends, and `vpnd` with manual SAs on each network
//! node, in the East/West topology of the VPNaaS seed document:
//!
//! ```text
//! [eh: 10.1.0.5, VLAN 100] -- east node (172.24.4.226) -- [inet: bridge, tcpdump] --
//!     -- west node (172.24.4.233) -- [wh: VTEP 192.168.100.2, VXLAN 5001, 10.2.0.9]
//! ```
//!
//! ping and an iperf3 TCP transfer pass both ways; the capture in the middle holds ESP and
//! nothing of the tenants' traffic in clear.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use vpn_tests::{
    netns::{NetNs, require_root, run},
    vlanhost::VlanHost,
};

const GW_E: &str = "02:ee:00:00:00:fe";
const GW_W: &str = "02:77:00:00:00:fe";
const KEY_EW: &str = "00112233445566778899aabbccddeeff01020304";
const KEY_WE: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";

/// A child process killed (by PID) when dropped.
struct Proc(Child);

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

fn vpnd_path() -> Result<PathBuf> {
    // target/<profile>/deps/<this test> -> target/<profile>/vpnd
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("vpnd"))
        .context("locating vpnd")?;
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
fn start_vpnd(ns: &NetNs, config: &str, dir: &std::path::Path) -> Result<Proc> {
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
            Ok(l) if l.contains("vpnd: running") => return Ok(proc),
            Ok(_) => {}
            Err(_) => bail!("vpnd in {} did not come up", ns.name()),
        }
    }
}

fn mac_of(ns: &NetNs, ifname: &str) -> Result<String> {
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

#[test]
fn vpnd_carries_ping_and_tcp_between_vlan_and_vxlan_sites() -> Result<()> {
    require_root();
    let dir = std::env::temp_dir().join(vpn_tests::netns::unique("vpnd-two-site"));
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
        let tmp = vpn_tests::netns::unique("v");
        let tmp = &tmp[tmp.len().saturating_sub(12)..];
        a.ip(&["link", "add", an, "type", "veth", "peer", "name", tmp])?;
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
    eh.ip(&["neigh", "add", "10.1.0.1", "lladdr", GW_E, "dev", "eth0"])?;
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
    wh.ip(&["neigh", "add", "10.2.0.1", "lladdr", GW_W, "dev", "vx0"])?;
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
            "[[tenant]]\nid = 1\ninterface = \"ten\"\nvni = 5001\nlocal_vtep = \"192.168.100.1\"\nremote_vtep = \"192.168.100.2\"\nvtep_mac = \"{}\"\ngateway_mac = \"{GW_W}\"\nhost_mac = \"{}\"\n",
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
    // Raw ESP both ways here; the worker test covers ESP in UDP/4500.
    let pcap = dir.join("wire.pcap");
    let tcpdump = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                inet.name(),
                "tcpdump",
                "-i",
                "br0",
                "-n",
                "-U",
                "-w",
            ])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("tcpdump")?,
    );
    let _east_vpnd = start_vpnd(&east, &east_cfg, &dir)?;
    let _west_vpnd = start_vpnd(&west, &west_cfg, &dir)?;

    eh.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("ping East -> West")?;
    let p = wh
        .exec(&["ping", "-c", "10", "-i", "0.05", "-W", "2", "10.1.0.5"])
        .context("ping West -> East")?;
    eprintln!("{}", p.lines().last().unwrap_or_default());

    // Path MTU through the tunnel: East's host has a 1500-byte MTU, like the wire, so a full
    // packet cannot fit once encapsulated. With DF, the gateway answers "fragmentation
    // needed" with the MTU that fits; without DF, the packet is fragmented before encryption.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            eh.name(),
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
        ])
        .args(["-s", "1472", "10.2.0.9"])
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "ping -M do -s 1472: {}",
        text.lines().nth(1).unwrap_or_default()
    );
    assert!(
        !out.status.success(),
        "a DF packet too big for the tunnel got through: {text}"
    );
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 14"),
        "expected ICMP fragmentation needed from the gateway: {text}"
    );
    eh.exec(&[
        "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1472", "10.2.0.9",
    ])
    .context("a large packet without DF, fragmented before encryption")?;

    let server = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                wh.name(),
                "iperf3",
                "-s",
                "-1",
                "-B",
                "10.2.0.9",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = eh
        .exec(&["timeout", "30", "iperf3", "-c", "10.2.0.9", "-t", "2", "-J"])
        .context("iperf3 East -> West")?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    eprintln!(
        "iperf3 TCP East -> West: {:.1} Mbit/s, {} retransmits",
        bps / 1e6,
        v["end"]["sum_sent"]["retransmits"]
    );
    assert!(bps > 0.0);
    drop(server);
    let server = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                eh.name(),
                "iperf3",
                "-s",
                "-1",
                "-B",
                "10.1.0.5",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = wh
        .exec(&["timeout", "30", "iperf3", "-c", "10.1.0.5", "-t", "2", "-J"])
        .context("iperf3 West -> East")?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    eprintln!("iperf3 TCP West -> East: {:.1} Mbit/s", bps / 1e6);
    drop(server);

    std::thread::sleep(Duration::from_millis(300));
    drop(tcpdump);
    let pcap = pcap.to_string_lossy().to_string();
    let count = |filter: &str| -> Result<usize> {
        let out = run("tcpdump", &["-n", "-r", &pcap, filter])?;
        Ok(out.lines().count())
    };
    let esp = count("esp")?;
    // Besides ESP: ARP, IGMP from the bridge, and vpnd's neighbour probe (an empty datagram
    // to the peer's discard port).
    let clear =
        count("not esp and not arp and not igmp and not (udp dst port 9) and not icmp[0] = 3")?;
    let inner = count("net 10.0.0.0/8")?;
    eprintln!("wire capture: {esp} ESP packets, {clear} others, {inner} with tenant addresses");
    assert!(esp > 100, "the transfer went through ESP");
    assert_eq!(
        clear, 0,
        "nothing but ESP (and ARP, IGMP, neighbour probes) on the wire"
    );
    assert_eq!(inner, 0, "no tenant traffic in clear");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
