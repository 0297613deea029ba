//! Two sites with real kernel stacks at both ends and `vpnd` with manual SAs on each network
//! node (see `vpn_tests::topology`): ping and iperf3 TCP pass both ways, path MTU discovery
//! works through the tunnel, and a capture in the middle holds ESP and nothing of the
//! tenants' traffic in clear.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};
use vpn_tests::{
    netns::{require_root, run},
    topology::{TwoSite, capture_wire, spawn_in},
};

/// A counter from vpnd's final `WorkerStats { name: value, ... }` line.
fn stat(line: &str, name: &str) -> u64 {
    line.split(&format!("{name}: "))
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The smallest end-to-end check of the AF_XDP data plane: both vpnds up with manual SAs,
/// pings both ways, and what the workers counted. Needs nothing but `ip`, `ping`, `ethtool`,
/// `sysctl` and `nsenter` (no tcpdump or iperf3), so it also runs in the second-kernel lane.
#[test]
fn vpnd_carries_ping_between_the_sites() -> Result<()> {
    require_root();
    let mut site = TwoSite::start(|_, _| Ok(()))?;
    site.eh
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("ping East -> West")?;
    let p = site
        .wh
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.5"])
        .context("ping West -> East")?;
    eprintln!("{}", p.lines().last().unwrap_or_default());
    let (east, west) = site.stop_daemons();
    eprintln!("East: {east}\nWest: {west}");
    for (name, st) in [("East", &east), ("West", &west)] {
        // At least the replies of the pings that got through, each way.
        assert!(
            stat(st, "encrypted") >= 3 && stat(st, "decrypted") >= 3,
            "{name} encrypted and decrypted the pings: {st}"
        );
        assert!(st.contains("drops: {}"), "{name} dropped nothing: {st}");
    }
    Ok(())
}

#[test]
fn vpnd_carries_ping_and_tcp_between_vlan_and_vxlan_sites() -> Result<()> {
    require_root();
    let mut capture = None;
    let mut site = TwoSite::start(|inet, dir| {
        capture = Some(capture_wire(inet, dir)?);
        Ok(())
    })?;
    let (tcpdump, pcap) = capture.context("capture")?;
    let (eh, wh) = (&site.eh, &site.wh);

    eh.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.9"])
        .context("ping East -> West")?;
    let p = wh
        .exec(&["ping", "-c", "10", "-i", "0.05", "-W", "2", "10.1.0.5"])
        .context("ping West -> East")?;
    eprintln!("{}", p.lines().last().unwrap_or_default());

    // The peer's MAC is followed while running: a changed neighbour entry is picked up.
    site.east.ip(&[
        "neigh",
        "replace",
        "172.24.4.233",
        "lladdr",
        "02:77:00:00:aa:bb",
        "dev",
        "wire",
    ])?;
    let moved = (0..100).any(|_| {
        site.east_log
            .recv_timeout(Duration::from_millis(100))
            .is_ok_and(|l| l.contains("moved to MAC"))
    });
    assert!(moved, "vpnd did not follow the peer's new MAC");
    let real = vpn_tests::topology::mac_of(&site.west, "wire")?;
    site.east.ip(&[
        "neigh",
        "replace",
        "172.24.4.233",
        "lladdr",
        &real,
        "dev",
        "wire",
    ])?;

    // Path MTU through the tunnel: East's host has a 1500-byte MTU, like the wire, so a full
    // packet cannot fit once encapsulated. With DF, the gateway answers "fragmentation
    // needed" with the MTU that fits; without DF, the packet is fragmented before encryption.
    eh.exec(&[
        "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1472", "10.2.0.9",
    ])
    .context("a large packet without DF, fragmented before encryption")?;
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

    let server = spawn_in(wh, &["iperf3", "-s", "-1", "-B", "10.2.0.9"])?;
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
    let server = spawn_in(eh, &["iperf3", "-s", "-1", "-B", "10.1.0.5"])?;
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
    let (east_stats, west_stats) = site.stop_daemons();
    eprintln!("East: {east_stats}\nWest: {west_stats}");
    for (name, st) in [("East", &east_stats), ("West", &west_stats)] {
        assert!(
            st.contains("arp_replies: 1"),
            "{name} answered its host's ARP: {st}"
        );
        assert!(st.contains("drops: {}"), "{name} dropped nothing: {st}");
    }
    assert!(
        stat(&east_stats, "fragmented_before_encryption") == 2
            && stat(&east_stats, "icmp_too_big") == 1,
        "East fragmented the non-DF pings and answered the DF one: {east_stats}"
    );
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
    drop(site);
    Ok(())
}
