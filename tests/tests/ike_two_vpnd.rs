//! Two vpnds keyed over IKEv2 (the two-site topology of `vpn_tests::topology` with
//! [`Keying::Ike`]): no NAT in between, so ESP goes raw (protocol 50) with ESN. Pings and TCP
//! pass both ways; the wire carries IKE on UDP 500 and ESP only, nothing of the tenants in
//! clear; a CHILD_SA rekey (SIGUSR1) under a 100/s ping loses nothing.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use vpn_tests::{
    interop::{Pinger, iperf_tcp, parse_installed, ping_all, tail},
    netns::run,
    strongswan::skip_unless_root,
    topology::{IkeKeying, Keying, Log, TwoSite, capture_wire},
};

/// The CHILD_SA ids the log said carry outbound traffic, in order.
fn outbound(log: &Log) -> Vec<u64> {
    log.lines()
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

/// The (in, out) SPIs of the CHILD_SA carrying outbound traffic now.
fn current(log: &Log) -> Option<(u32, u32)> {
    let id = *outbound(log).last()?;
    log.lines()
        .iter()
        .filter_map(|l| parse_installed(l))
        .rfind(|(n, _, _)| *n == id)
        .map(|(_, i, o)| (i, o))
}

/// Waits (bounded) until both nodes send on mirrored CHILD_SAs for which `pred` holds (on
/// East's (in, out)); returns East's.
fn wait_mirrored(
    site: &TwoSite,
    what: &str,
    pred: impl Fn((u32, u32)) -> bool,
) -> Result<(u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (e, w) = (current(&site.east_log), current(&site.west_log));
        if let (Some(e), Some(w)) = (e, w)
            && e == (w.1, w.0)
            && pred(e)
        {
            return Ok(e);
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: East {e:x?}, West {w:x?}\nEast:\n{}\nWest:\n{}",
            tail(&site.east_log.text(), 30),
            tail(&site.west_log.text(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ike_two_vpnds_raw_esp_esn_traffic_capture_and_rekey() -> Result<()> {
    if !skip_unless_root("ike_two_vpnds_raw_esp_esn_traffic_capture_and_rekey") {
        return Ok(());
    }
    let started = Instant::now();
    let keying = Keying::Ike(IkeKeying::default());
    let mut capture = None;
    let mut site = TwoSite::start_with(&keying, |inet, dir| {
        capture = Some(capture_wire(inet, dir)?);
        Ok(())
    })?;
    let (tcpdump, pcap) = capture.context("capture")?;
    site.wait_active(Duration::from_secs(20))?;
    let spis0 = wait_mirrored(&site, "first CHILD_SA", |_| true)?;
    eprintln!("up in {:?}: East ESP {spis0:08x?}", started.elapsed());

    ping_all(&site.eh, None, "10.2.0.9", 5).context("ping East -> West")?;
    ping_all(&site.wh, None, "10.1.0.5", 5).context("ping West -> East")?;
    iperf_tcp(&site.wh, "10.2.0.9", &site.eh, None, 3)?;
    iperf_tcp(&site.eh, "10.1.0.5", &site.wh, None, 3)?;

    // CHILD_SA rekey initiated by East under 100 pings/s.
    let pinger = Pinger::start(&site.eh, None, "10.2.0.9", 500, "0.01")?;
    std::thread::sleep(Duration::from_millis(1500));
    site.east_vpnd.signal(libc::SIGUSR1)?;
    let spis1 = wait_mirrored(&site, "rekeyed CHILD_SA", |s| {
        s.0 != spis0.0 && s.1 != spis0.1
    })?;
    eprintln!("CHILD_SA rekeyed: East ESP {spis0:08x?} -> {spis1:08x?}");
    // Then West (response-only, but rekeys are both ends' business) rekeys the IKE_SA.
    std::thread::sleep(Duration::from_millis(500));
    site.west_vpnd.signal(libc::SIGUSR2)?;
    site.west_log
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("rekeying every IKE_SA")
        })
        .context("West did not take SIGUSR2")?;
    let (sent, received) = pinger.finish(Duration::from_secs(20))?;
    eprintln!("pings across the CHILD_SA and IKE_SA rekeys: {received}/{sent}");
    ensure!(
        sent == 500 && received == sent,
        "pings lost across the rekeys: {received}/{sent}"
    );
    // The CHILD_SA survived the IKE_SA rekey.
    assert_eq!(current(&site.east_log), Some(spis1));
    // The old CHILD_SA goes after the overlap.
    site.east_log
        .wait_for(Duration::from_secs(5), |l| l.contains("CHILD_SA 1 removed"))
        .context("East never removed the old CHILD_SA")?;
    ping_all(&site.wh, None, "10.1.0.5", 3).context("ping West -> East after the rekey")?;

    std::thread::sleep(Duration::from_millis(300));
    drop(tcpdump);
    let (east_stats, west_stats) = site.stop_daemons();
    eprintln!("East: {east_stats}\nWest: {west_stats}");
    for (name, log) in [("East", &site.east_log), ("West", &site.west_log)] {
        let ike = log
            .lines()
            .into_iter()
            .rfind(|l| l.contains("vpnd: IKE: Stats"))
            .unwrap_or_default();
        ensure!(
            ike.contains("child_rekeyed: 1") && ike.contains("ike_rekeyed: 1"),
            "{name}'s IKE counters after one CHILD_SA and one IKE_SA rekey: {ike}"
        );
        ensure!(
            ike.contains("auth_failed: 0") && ike.contains("dropped_integrity: 0"),
            "{name}: {ike}"
        );
    }
    let pcap = pcap.to_string_lossy().to_string();
    let count = |filter: &str| -> Result<usize> {
        let out = run("tcpdump", &["-n", "-r", &pcap, filter])?;
        Ok(out.lines().count())
    };
    let esp = count("ip proto 50")?;
    let ike = count("udp port 500")?;
    let natt = count("udp port 4500")?;
    // Besides ESP and IKE: ARP, IGMP from the bridge, and vpnd's neighbour probe (an empty
    // datagram to the peer's discard port).
    let other = count(
        "not ip proto 50 and not (udp port 500) and not arp and not igmp \
         and not (udp dst port 9)",
    )?;
    let inner = count("net 10.0.0.0/8")?;
    eprintln!(
        "wire capture: {esp} ESP, {ike} IKE, {natt} on 4500, {other} others, {inner} with \
         tenant addresses"
    );
    if other > 0 {
        eprintln!(
            "{}",
            run(
                "tcpdump",
                &[
                    "-n",
                    "-r",
                    &pcap,
                    "-c",
                    "20",
                    "not ip proto 50 and not (udp port 500) and not arp and not igmp and not (udp dst port 9)"
                ]
            )?
        );
    }
    ensure!(esp > 1000, "the transfers went through raw ESP");
    ensure!(ike >= 4, "IKE on UDP 500: {ike} packets");
    ensure!(natt == 0, "nothing UDP-encapsulated without NAT: {natt}");
    ensure!(other == 0, "only ESP and IKE on the wire: {other} others");
    ensure!(inner == 0, "no tenant traffic in clear: {inner}");
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn ike_two_bidirectional_vpnds_come_up_together() -> Result<()> {
    if !skip_unless_root("ike_two_bidirectional_vpnds_come_up_together") {
        return Ok(());
    }
    let started = Instant::now();
    // Both ends initiate as soon as they run (West starts first, East right after).
    let keying = Keying::Ike(IkeKeying {
        west_initiator: "bi-directional".into(),
        ..Default::default()
    });
    let mut site = TwoSite::start_with(&keying, |_, _| Ok(()))?;
    site.wait_active(Duration::from_secs(20))?;
    let spis = wait_mirrored(&site, "CHILD_SA", |_| true)?;
    eprintln!("up in {:?}: East ESP {spis:08x?}", started.elapsed());
    ping_all(&site.eh, None, "10.2.0.9", 5).context("ping East -> West")?;
    ping_all(&site.wh, None, "10.1.0.5", 5).context("ping West -> East")?;
    // Settled: still the same CHILD_SA a moment later, and still passing traffic.
    std::thread::sleep(Duration::from_secs(2));
    ping_all(&site.eh, None, "10.2.0.9", 3)?;
    ensure!(
        current(&site.east_log).is_some(),
        "East lost its CHILD_SA:\n{}",
        site.east_log.text()
    );
    // Both initiations may complete; both ends then keep the same one IKE_SA and delete
    // the other (the one holding the lowest nonce), so one CHILD_SA is left on each.
    for (name, log) in [("East", &site.east_log), ("West", &site.west_log)] {
        let lines = log.lines();
        let installed = lines
            .iter()
            .filter(|l| l.contains("inbound installed"))
            .count();
        let removed = lines.iter().filter(|l| l.contains(" removed")).count();
        eprintln!("{name}: {installed} CHILD_SA(s) installed, {removed} removed");
        ensure!(
            installed - removed == 1,
            "{name} keeps {} CHILD_SAs:\n{}",
            installed - removed,
            log.text()
        );
    }
    ping_all(&site.eh, None, "10.2.0.9", 3)?;
    ping_all(&site.wh, None, "10.1.0.5", 3)?;
    site.stop_daemons();
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

/// A DF ping of `size` bytes of payload from `ns` to `dst`: Ok(output) if it got through,
/// Err(output) if not.
fn df_ping(ns: &vpn_tests::netns::NetNs, dst: &str, size: u32) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
        ])
        .arg(size.to_string())
        .arg(dst)
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Neutron's `ipsec_site_connection` `mtu` bounds the connection's ESP packets below the
/// wire's 1500: a DF packet of 1400 bytes that the wire would carry once encrypted is answered
/// with "fragmentation needed" naming the MTU that fits 1400-byte ESP packets.
#[test]
fn ike_connection_mtu_bounds_esp_packets() -> Result<()> {
    if !skip_unless_root("ike_connection_mtu_bounds_esp_packets") {
        return Ok(());
    }
    let keying = Keying::Ike(IkeKeying {
        mtu: Some(1400),
        ..Default::default()
    });
    let site = TwoSite::start_with(&keying, |_, _| Ok(()))?;
    site.wait_active(Duration::from_secs(20))?;
    ping_all(&site.eh, None, "10.2.0.9", 3).context("ping East -> West")?;
    // 1300 + 28 = 1328 bytes inner: fits 1400 once encrypted.
    df_ping(&site.eh, "10.2.0.9", 1300).map_err(|t| anyhow::anyhow!("1328 bytes: {t}"))?;
    // 1372 + 28 = 1400 bytes inner: would fit the 1500-byte wire, not the 1400 of the
    // connection. The gateway says which MTU fits: 1400 less raw ESP with ESN (20 + 8 + 8 +
    // 2 + 16, and up to 3 of padding).
    let text = match df_ping(&site.eh, "10.2.0.9", 1372) {
        Ok(t) => anyhow::bail!("a 1400-byte DF packet got through a 1400-byte ESP MTU: {t}"),
        Err(t) => t,
    };
    let mtu: u32 = text
        .split("mtu = ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no 'Frag needed ... mtu = N' in: {text}"))?;
    ensure!(
        (1400 - 57..=1400 - 54).contains(&mtu),
        "Frag needed says mtu = {mtu}: {text}"
    );
    // West has the same mtu; what fits goes through.
    df_ping(&site.wh, "10.1.0.5", 1300).map_err(|t| anyhow::anyhow!("West 1328 bytes: {t}"))?;
    Ok(())
}
