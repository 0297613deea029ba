//! The traffic generator (`vpn_userspace::pktgen`, `vpn-pktgen`) against receivers that count:
//! live frames into a veth whose peer has the counting sink, the binary's JSON summary, the
//! flow rewrite of `pktgen_tx` byte by byte, and vpnd (one node, manual SA) encrypting the
//! generator's tenant frames and decrypting its AF_XDP ESP stream without a drop.

use std::{net::IpAddr, process::Command, sync::atomic::AtomicBool};

use anyhow::{Context, Result, bail};
use vpn_tests::{
    dut::{self, Dut, DutOptions},
    netns::{NetNs, require_root},
};
use vpn_userspace::pktgen::{
    self, Args, Engine, Summary,
    frame::{Size, UdpFrame, ipv4_header_ok, udp_checksum_ok},
    live::{LiveGen, Stream},
    sink::{Sink, SinkCounts},
};

/// A namespace with veth pg0 <-> pg1 and the sink on pg1.
fn pair() -> Result<(NetNs, Sink)> {
    let ns = NetNs::new("vpnpg")?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
    ns.ip(&["link", "add", "pg0", "type", "veth", "peer", "name", "pg1"])?;
    ns.ip(&["link", "set", "pg0", "up"])?;
    ns.ip(&["link", "set", "pg1", "up"])?;
    let sink = {
        let _in = ns.enter()?;
        Sink::attach("pg1")?
    };
    Ok((ns, sink))
}

fn args(ns: &NetNs, extra: &[&str]) -> Args {
    let mut a = vec![
        "vpn-pktgen",
        "--dev",
        "pg0",
        "--netns",
        ns.name(),
        "--quiet",
    ];
    a.extend_from_slice(extra);
    <Args as clap::Parser>::parse_from(a)
}

fn run(a: &Args) -> Result<Summary> {
    pktgen::run(a, &AtomicBool::new(false))
}

/// The sink saw exactly what the generator says it sent, less what the kernel says it dropped.
fn check_received(s: &Summary, got: SinkCounts) -> Result<()> {
    let dropped = s.kernel_tx_dropped.context("kernel counters of pg0")?;
    if got.packets != s.packets - dropped {
        bail!(
            "sink received {} packets; the generator sent {} and the kernel dropped {dropped}",
            got.packets,
            s.packets
        );
    }
    assert_eq!(got.udp, got.packets, "all plain UDP: {got:?}");
    assert_eq!(got.bytes, s.bytes - dropped * (s.bytes / s.packets.max(1)));
    Ok(())
}

#[test]
fn live_frames_reach_a_counting_sink() -> Result<()> {
    require_root();
    let (ns, sink) = pair()?;

    // Flat out, 16 flows, 64-byte frames.
    let s = run(&args(
        &ns,
        &["--engine", "live", "--count", "300000", "--flows", "16"],
    ))?;
    assert_eq!(s.engine, "xdp-live-frames");
    assert_eq!(s.packets, 300_000);
    assert_eq!(s.bytes, 300_000 * 64);
    let got = dut::settle(|| sink.counts())?;
    check_received(&s, got)?;
    assert_eq!(
        s.kernel_tx_dropped,
        Some(0),
        "no drops into an XDP_DROP sink"
    );
    eprintln!("flat out: {:.0} pps", s.pps);

    // Paced IMIX over three tenants (VLAN 100..102), two threads (CPUs 0 and 1).
    let before = sink.counts()?;
    let s = run(&args(
        &ns,
        &[
            "--engine",
            "live",
            "--count",
            "60000",
            "--rate",
            "200000",
            "--size",
            "imix",
            "--vlan",
            "100",
            "--tenants",
            "3",
            "--threads",
            "2",
        ],
    ))?;
    assert_eq!(s.packets, 60_000);
    assert_eq!(s.per_thread, vec![30_000, 30_000]);
    assert!(
        s.duration_s > 0.25 && s.pps < 230_000.0,
        "200 kpps asked, got {:.0} pps over {:.3} s",
        s.pps,
        s.duration_s
    );
    // 2,500 IMIX periods per thread: 7 x 64 + 4 x 570 + 1518 bytes each.
    assert_eq!(s.bytes, 5_000 * 4246);
    let got = dut::settle(|| sink.counts())? - before;
    check_received(&s, got)?;

    // IPv6, 1400-byte frames, timed rather than counted.
    let before = sink.counts()?;
    let s = run(&args(
        &ns,
        &[
            "--engine",
            "live",
            "--ipv6",
            "--size",
            "1400",
            "--duration",
            "0.3",
            "--flows",
            "4",
        ],
    ))?;
    assert!(s.packets > 1000, "{s:?}");
    assert!(s.duration_s < 1.0, "stopped at the deadline: {s:?}");
    assert_eq!(s.bytes, s.packets * 1400);
    let got = dut::settle(|| sink.counts())? - before;
    check_received(&s, got)?;
    Ok(())
}

#[test]
fn pktgen_tx_sets_length_tenant_and_flow_with_valid_checksums() -> Result<()> {
    require_root();
    let (ns, _sink) = pair()?;
    let _in = ns.enter()?;
    // The program's choices come from a per-CPU counter: stay on one CPU.
    pktgen::pin_to_cpu(0)?;
    let mut g = LiveGen::load("pg0")?;
    for v6 in [false, true] {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            ("fd00:1::5".parse()?, "fd00:2::9".parse()?)
        } else {
            ("10.1.0.5".parse()?, "10.2.0.9".parse()?)
        };
        let f = UdpFrame {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlan: Some(100),
            src,
            dst,
            sport: 2000,
            dport: 9,
        };
        let classes = Size::Imix.clamp(f.min_len(), 1518);
        let stream = Stream::new(&f, &classes, 5, 3)?;
        g.configure(stream.cfg)?;
        let l3 = 18;
        let l4 = l3 + if v6 { 40 } else { 20 };
        let n0 = g.sent()?;
        for i in 0..36u64 {
            let n = n0 + i;
            let (verdict, out) = g.run_once(&stream.template)?;
            assert_eq!(verdict, 3, "XDP_TX");
            assert_eq!(
                out.len(),
                stream.sizes[(n % 12) as usize],
                "IMIX length of packet {n}"
            );
            let vid = u16::from_be_bytes([out[14], out[15]]) & 0x0fff;
            assert_eq!(vid as u64, 100 + (n / 5) % 3, "tenant of packet {n}");
            let sport = u16::from_be_bytes([out[l4], out[l4 + 1]]);
            assert_eq!(sport as u64, 2000 + n % 5, "flow of packet {n}");
            let udp_len = u16::from_be_bytes([out[l4 + 4], out[l4 + 5]]) as usize;
            assert_eq!(udp_len, out.len() - l4);
            if v6 {
                assert_eq!(
                    u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) as usize,
                    udp_len
                );
            } else {
                let ip_len = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) as usize;
                assert_eq!(ip_len, out.len() - l3);
                assert!(
                    ipv4_header_ok(&out[l3..]),
                    "IPv4 header checksum of packet {n}"
                );
            }
            assert!(
                udp_checksum_ok(&src, &dst, &out[l4..]),
                "UDP checksum of packet {n}"
            );
            assert_eq!(&out[..12], &stream.template[..12], "MACs untouched");
        }
        assert_eq!(g.rewritten()?, g.sent()?, "every frame got its flow");
    }

    // A recycled page that a receiver rewrote (here: the VLAN tag popped in place, MACs moved
    // up by 4) leaves with the template's headers again.
    let f = UdpFrame {
        dst_mac: [2; 6],
        src_mac: [4; 6],
        vlan: Some(7),
        src: "10.1.0.5".parse()?,
        dst: "10.2.0.9".parse()?,
        sport: 1,
        dport: 9,
    };
    let stream = Stream::new(&f, &[(100, 1)], 1, 1)?;
    g.configure(stream.cfg)?;
    let mut popped = stream.template.clone();
    popped.copy_within(0..12, 4);
    let (_, out) = g.run_once(&popped)?;
    assert_eq!(out, stream.template, "headers restored");

    // Past the limit: dropped, not sent.
    let mut cfg = stream.cfg;
    cfg.limit = g.sent()? + 2;
    g.configure(cfg)?;
    let verdicts: Vec<u32> = (0..4)
        .map(|_| g.run_once(&stream.template).map(|r| r.0))
        .collect::<Result<_>>()?;
    assert_eq!(verdicts, vec![3, 3, 1, 1], "XDP_TX twice, then XDP_DROP");
    assert_eq!(g.skipped()?, 2);
    Ok(())
}

/// target/<profile>/vpn-pktgen next to this test's directory.
fn pktgen_bin() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("test binary directory")?;
    [dir.join("vpn-pktgen"), dir.join("../vpn-pktgen")]
        .into_iter()
        .find(|p| p.exists())
        .context("vpn-pktgen not built: run `cargo build --bins` with this profile first")
}

#[test]
fn vpn_pktgen_json_summary_matches_the_sink() -> Result<()> {
    require_root();
    let (ns, sink) = pair()?;
    let out = Command::new(pktgen_bin()?)
        .args([
            "--dev",
            "pg0",
            "--netns",
            ns.name(),
            "--count",
            "100000",
            "--json",
        ])
        .args(["--size", "1400", "--flows", "100"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vpn-pktgen failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    assert_eq!(v["packets"], 100_000);
    assert_eq!(v["bytes"], 100_000 * 1400);
    assert!(v["pps"].as_f64().is_some_and(|p| p > 0.0));
    assert!(v["gbps"].as_f64().is_some_and(|g| g > 0.0));
    if !std::path::Path::new("/proc/net/pktgen").exists() {
        assert_eq!(v["engine"], "xdp-live-frames");
        let notes = v["notes"].to_string();
        assert!(
            notes.contains("kernel pktgen: not available on this kernel"),
            "says why it did not use kernel pktgen: {notes}"
        );
    }
    let got = dut::settle(|| sink.counts())?;
    let dropped = v["kernel_tx_dropped"]
        .as_u64()
        .context("kernel_tx_dropped")?;
    assert_eq!(got.packets + dropped, 100_000, "{got:?}");
    assert_eq!(got.udp, got.packets);
    Ok(())
}

#[test]
fn vpnd_encrypts_and_decrypts_the_generators_streams_without_drops() -> Result<()> {
    require_root();
    // Room for 80 ms of traffic in vpnd's fill rings: a busy machine may keep its worker
    // off the CPU for a while, and this test is about correctness, not speed.
    let mut d = Dut::start(DutOptions {
        xsk_frames: 8192,
        ..Default::default()
    })?;

    // Tenant frames (live frames, VLAN 100) -> ESP on the wire. Paced: the point is that
    // every frame is accepted and encrypted, not how fast.
    let mut a = d.encrypt_args(Size::Imix);
    a.count = Some(30_000);
    a.rate = Some(50_000);
    a.flows = 8;
    let s = pktgen::run(&a, &AtomicBool::new(false))?;
    assert_eq!(s.packets, 30_000);
    let out = dut::settle(|| d.wire_out())?;
    assert_eq!(
        out.esp,
        30_000,
        "ESP out of the wire for 30,000 tenant frames: {out:?}\n{}",
        d.log.text()
    );

    // A valid ESP stream (AF_XDP, sequence numbers 1..=20,000) -> decrypted tenant frames.
    let mut a = d.decrypt_args(Size::Fixed(200));
    a.count = Some(20_000);
    a.rate = Some(50_000);
    a.flows = 8;
    let s = pktgen::run(&a, &AtomicBool::new(false))?;
    assert_eq!((s.engine.as_str(), s.packets), ("af-xdp", 20_000));
    assert!(!s.ring_repeated, "every sequence number once");
    let out = dut::settle(|| d.tenant_out())?;
    assert_eq!(out.udp, 20_000, "decrypted frames at the tenant: {out:?}");
    assert_eq!(
        out.bytes,
        20_000 * 200,
        "decrypted and re-tagged: 200-byte frames"
    );

    // The same SA continues (sequence numbers from 20,001): IMIX in UDP/4500.
    let mut a = d.decrypt_args(Size::Imix);
    a.count = Some(12_000);
    a.rate = Some(50_000);
    a.udp_encap = true;
    a.first_seq = 20_001;
    let s = pktgen::run(&a, &AtomicBool::new(false))?;
    assert_eq!(s.packets, 12_000);
    let out = dut::settle(|| d.tenant_out())?;
    assert_eq!(out.udp, 32_000, "{out:?}");

    // The same stream from XDP live frames (the ring copied whole into each frame), from
    // sequence number 32,001, 1400-byte tenant frames.
    let mut a = d.decrypt_args(Size::Fixed(1400));
    a.engine = Engine::Live;
    a.count = Some(8_000);
    a.rate = Some(50_000);
    a.first_seq = 32_001;
    let s = pktgen::run(&a, &AtomicBool::new(false))?;
    assert_eq!((s.engine.as_str(), s.packets), ("xdp-live-frames", 8_000));
    assert!(!s.ring_repeated, "every sequence number once");
    let out = dut::settle(|| d.tenant_out())?;
    assert_eq!(out.udp, 40_000, "{out:?}");

    let last = d.stop();
    assert_eq!(dut::stat(&last, "decrypted"), Some(40_000), "{last}");
    assert_eq!(dut::stat(&last, "encrypted"), Some(30_000), "{last}");
    assert_eq!(dut::drops(&last), "{}", "no drops in the worker: {last}");
    Ok(())
}
