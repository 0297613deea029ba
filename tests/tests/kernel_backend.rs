//! The kernel-offload (xfrm) backend.
//!
//! On a kernel with ESP (the 6.1 lane of `cargo xtask test`): the backend's SAs and policies
//! in a namespace through install, make-before-break rekey and removal, and nothing left after
//! a stop or a crash; then one cross-implementation run: site A with the kernel backend (the
//! kernel's ESP, an implementation we did not write), site B with our AF_XDP workers, keyed
//! by IKEv2 between the two vpnds, ping and a TCP transfer both ways.
//!
//! On a kernel without ESP (this machine's 6.18 has xfrm but no AEAD for it): the backend and
//! vpnd refuse with an error that names what is missing. `VPN_LANE=1` (set in the lane)
//! makes a missing ESP a failure instead.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use vpn_tests::{
    cross::{Cross, ping, tcp_transfer, vpnctl, xfrm_states},
    interop::ping_counts,
    netns::{NetNs, require_root},
    topology::{Proc, vpnd_path},
};
use vpn_userspace::{
    config::parse_prefix,
    esp::{Cipher, SaKey},
    xfrm::{Dir, KernelBackend, KernelSaSpec, OffloadMode, reqid_range},
};

fn in_lane() -> bool {
    std::env::var("VPN_LANE").is_ok_and(|v| v == "1")
}

/// Whether this kernel runs ESP SAs; Err (with the backend's message) if not. In the lane a
/// missing ESP fails the test.
fn kernel_esp(ns: &NetNs, instance: &str) -> Result<Result<KernelBackend, String>> {
    let mut kb = KernelBackend::open(instance, Some(ns.name()), OffloadMode::None)?;
    match kb.probe(false) {
        Ok(()) => Ok(Ok(kb)),
        Err(e) => {
            let msg = format!("{e:#}");
            if in_lane() {
                bail!("VPN_LANE=1 but the kernel backend is unavailable: {msg}");
            }
            Ok(Err(msg))
        }
    }
}

/// A policy as (direction, source, destination).
type PolicyRow = (Dir, String, String);

fn key(b: u8) -> SaKey {
    SaKey::from_keymat(Cipher::Aes128Gcm16, &[b; 20]).unwrap()
}

#[test]
fn kernel_backend_sas_and_policies_through_a_rekey_and_nothing_left() -> Result<()> {
    require_root();
    let ns = NetNs::new("kbe")?;
    let instance = ns.name().to_string();
    let mut kb = match kernel_esp(&ns, &instance)? {
        Ok(kb) => kb,
        Err(msg) => {
            // What an operator sees on such a kernel: the missing support by name.
            assert!(
                msg.contains("kernel backend unavailable")
                    && (msg.contains("rfc4106(gcm(aes))") || msg.contains("no ESP")),
                "unclear error: {msg}"
            );
            eprintln!("kernel_backend: no ESP on this kernel, checked the error only: {msg}");
            return Ok(());
        }
    };
    let local: IpAddr = "172.24.4.226".parse()?;
    let peer: IpAddr = "172.24.4.233".parse()?;
    let l = [parse_prefix("10.1.0.0/24").unwrap()];
    let p = [
        parse_prefix("10.2.0.0/24").unwrap(),
        parse_prefix("10.3.0.0/24").unwrap(),
    ];
    let (k1, k2, k3, k4) = (key(1), key(2), key(3), key(4));
    let spec = |spi_in, spi_out, ki, ko| KernelSaSpec {
        name: format!("c#{spi_in:x}"),
        conn: 0,
        local,
        peer,
        spi_in,
        spi_out,
        key_in: ki,
        key_out: ko,
        esn: true,
        replay_window: 1024,
        udp_encap: None,
        local_subnets: &l,
        peer_subnets: &p,
        if_id: None,
    };
    let count = |kb: &KernelBackend| -> Result<(usize, Vec<PolicyRow>)> {
        let (s, pol) = kb.list()?;
        let mut v: Vec<PolicyRow> = pol
            .iter()
            .map(|p| (p.dir.unwrap(), p.src.clone(), p.dst.clone()))
            .collect();
        v.sort();
        Ok((s.len(), v))
    };

    // Step 1: in + fwd policies and the inbound SA; nothing outbound yet.
    let mut a = kb.install_inbound(&spec(0x1001, 0x2001, &k1, &k2))?;
    let (n, pols) = count(&kb)?;
    assert_eq!(n, 1, "inbound SA only");
    assert_eq!(pols.len(), 4, "in + fwd for two peer subnets: {pols:?}");
    assert!(pols.iter().all(|(d, _, _)| *d != Dir::Out));
    let (states, _) = kb.list()?;
    let s = &states[0];
    assert_eq!(
        (s.spi, s.src.as_str(), s.dst.as_str()),
        (0x1001, "172.24.4.233", "172.24.4.226")
    );
    let (lo, hi) = reqid_range(&instance);
    assert!(
        (lo..hi).contains(&s.reqid),
        "reqid {:#x} in our range",
        s.reqid
    );

    // Step 2: outbound SA and out policies.
    kb.activate_outbound(&mut a)?;
    kb.activate_outbound(&mut a)?;
    let (n, pols) = count(&kb)?;
    assert_eq!((n, pols.len()), (2, 6), "{pols:?}");
    assert!(pols.contains(&(Dir::Out, "10.1.0.0/24".into(), "10.3.0.0/24".into())));
    assert!(pols.contains(&(Dir::Fwd, "10.2.0.0/24".into(), "10.1.0.0/24".into())));

    // The rekey: the new pair next to the old one, the same policies (one reqid).
    let mut b = kb.install_inbound(&spec(0x1002, 0x2002, &k3, &k4))?;
    kb.activate_outbound(&mut b)?;
    assert_eq!(b.reqid, a.reqid, "one reqid per connection");
    let (n, pols) = count(&kb)?;
    assert_eq!((n, pols.len()), (4, 6));
    kb.remove(a)?;
    let (n, pols) = count(&kb)?;
    assert_eq!((n, pols.len()), (2, 6), "policies stay with the new pair");
    let (states, _) = kb.list()?;
    let mut spis: Vec<u32> = states.iter().map(|s| s.spi).collect();
    spis.sort();
    assert_eq!(spis, vec![0x1002, 0x2002]);
    let st = kb.stats(&b)?;
    assert_eq!((st.packets_in, st.packets_out), (0, 0));
    kb.remove(b)?;
    assert_eq!(count(&kb)?, (0, vec![]), "last pair gone: policies gone");

    // Neutron's hold: the connection is down, its subnets blocked (out), nothing in clear.
    assert_eq!(kb.hold(0, local, peer, &l, &p, None)?, 2);
    let (n, pols) = count(&kb)?;
    assert_eq!(n, 0);
    assert_eq!(pols.len(), 2, "{pols:?}");
    assert!(pols.iter().all(|(d, _, _)| *d == Dir::Out));
    let text = ns.ip(&["xfrm", "policy"])?;
    assert_eq!(text.matches("action block").count(), 2, "{text}");
    // The next CHILD_SA replaces them with its own.
    let mut h = kb.install_inbound(&spec(0x1010, 0x2010, &k1, &k2))?;
    kb.activate_outbound(&mut h)?;
    let text = ns.ip(&["xfrm", "policy"])?;
    assert!(!text.contains("action block"), "{text}");
    assert_eq!(count(&kb)?.1.len(), 6);
    kb.remove(h)?;
    assert_eq!(count(&kb)?, (0, vec![]));

    // A stop (drop) removes what is left; so does the next start after a crash.
    let mut c = kb.install_inbound(&spec(0x1003, 0x2003, &k1, &k2))?;
    kb.activate_outbound(&mut c)?;
    drop(kb);
    let kb = KernelBackend::open(&instance, Some(ns.name()), OffloadMode::None)?;
    assert_eq!(count(&kb)?, (0, vec![]), "drop swept the instance's SAs");
    let mut kb = kb;
    let mut d = kb.install_inbound(&spec(0x1004, 0x2004, &k1, &k2))?;
    kb.activate_outbound(&mut d)?;
    std::mem::forget(kb); // a crash: no cleanup
    let kb = KernelBackend::open(&instance, Some(ns.name()), OffloadMode::None)?;
    assert_eq!(
        count(&kb)?,
        (0, vec![]),
        "the next start swept the crash's SAs"
    );
    // Another instance's SAs are not ours to remove.
    let mut other = KernelBackend::open("someone-else", Some(ns.name()), OffloadMode::None)?;
    let mut e = other.install_inbound(&spec(0x1005, 0x2005, &k1, &k2))?;
    other.activate_outbound(&mut e)?;
    drop(kb);
    let kb = KernelBackend::open(&instance, Some(ns.name()), OffloadMode::None)?;
    assert_eq!(
        count(&other)?.0,
        2,
        "another instance's SAs survive our sweep"
    );
    drop(kb);
    drop(other);
    let out = xfrm_states(&ns, false)? + &ns.ip(&["xfrm", "policy"])?;
    assert!(out.trim().is_empty(), "left in the kernel:\n{out}");
    Ok(())
}

#[test]
fn kernel_backend_udp_encap_and_if_id_reach_the_kernel() -> Result<()> {
    require_root();
    let ns = NetNs::new("kbu")?;
    let instance = ns.name().to_string();
    let Ok(mut kb) = kernel_esp(&ns, &instance)? else {
        eprintln!("kernel_backend: no ESP on this kernel (see the other test for the error)");
        return Ok(());
    };
    let l = [parse_prefix("10.1.0.0/24").unwrap()];
    let p = [parse_prefix("10.2.0.0/24").unwrap()];
    let (k1, k2) = (key(7), key(8));
    let mut c = kb.install_inbound(&KernelSaSpec {
        name: "nat".into(),
        conn: 3,
        local: "172.24.4.226".parse()?,
        peer: "172.24.4.233".parse()?,
        spi_in: 0xabc1,
        spi_out: 0xabc2,
        key_in: &k1,
        key_out: &k2,
        esn: false,
        replay_window: 64,
        udp_encap: Some((4500, 4501)),
        local_subnets: &l,
        peer_subnets: &p,
        if_id: Some(42),
    })?;
    kb.activate_outbound(&mut c)?;
    let (states, pols) = kb.list()?;
    let inb = states.iter().find(|s| s.spi == 0xabc1).context("in SA")?;
    let out = states.iter().find(|s| s.spi == 0xabc2).context("out SA")?;
    assert_eq!(
        inb.encap,
        Some((4501, 4500)),
        "inbound: from the peer's port to ours"
    );
    assert_eq!(out.encap, Some((4500, 4501)));
    assert_eq!((inb.if_id, out.if_id), (Some(42), Some(42)));
    assert!(pols.iter().all(|p| p.if_id == Some(42)), "{pols:?}");
    let text = xfrm_states(&ns, false)?;
    assert!(text.contains("rfc4106(gcm(aes))"), "{text}");
    assert!(
        text.contains("encap type espinudp sport 4500 dport 4501"),
        "{text}"
    );
    kb.remove(c)?;
    assert_eq!(kb.list()?.0.len(), 0);
    drop(kb);

    // NIC offload asked of a device that has none (a veth): the kernel adds the SAs without
    // it, and the backend reports them as not offloaded rather than trusting the request.
    ns.ip(&[
        "link", "add", "nic0", "type", "veth", "peer", "name", "nic1",
    ])?;
    let ifindex = ns.ifindex("nic0")?;
    let mut kb = KernelBackend::open(&instance, Some(ns.name()), OffloadMode::Crypto(ifindex))?;
    let mut c = kb.install_inbound(&KernelSaSpec {
        name: "off".into(),
        conn: 4,
        local: "172.24.4.226".parse()?,
        peer: "172.24.4.233".parse()?,
        spi_in: 0xabd1,
        spi_out: 0xabd2,
        key_in: &k1,
        key_out: &k2,
        esn: true,
        replay_window: 128,
        udp_encap: None,
        local_subnets: &l,
        peer_subnets: &p,
        if_id: None,
    })?;
    kb.activate_outbound(&mut c)?;
    assert!(!c.offload_in && !c.offload_out, "veth has no ESP offload");
    let (states, _) = kb.list()?;
    assert_eq!(states.len(), 2);
    assert!(
        states.iter().all(|s| s.offload_ifindex.is_none()),
        "{states:?}"
    );
    kb.remove(c)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cross-implementation: site A on the kernel backend, site B on AF_XDP (`vpn_tests::cross`).

/// The inbound SPIs of an instance's CHILD_SAs (vpnctl sa list).
fn spis_in(instance: &str) -> Result<Vec<u64>> {
    let v = vpnctl(instance, &["sa", "list"])?;
    Ok(v["sas"]
        .as_array()
        .context("sas")?
        .iter()
        .filter_map(|s| s["spi_in"].as_u64())
        .collect())
}

#[test]
fn cross_implementation_kernel_site_and_afxdp_site_carry_ping_and_tcp_both_ways() -> Result<()> {
    require_root();
    let mut x = Cross::build(true, false)?;
    let probe_ns = NetNs::new("xP")?;
    if let Err(msg) = kernel_esp(&probe_ns, probe_ns.name())? {
        // vpnd must refuse the kernel backend at start, naming what is missing.
        let path = x.dir.path().join("a.toml");
        std::fs::write(&path, x.config(true)?)?;
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", x.a.name()))
            .arg(vpnd_path()?)
            .arg("--config")
            .arg(&path)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "vpnd started without ESP:\n{err}");
        assert!(
            err.contains("conn x: backend Kernel") && err.contains("kernel backend unavailable"),
            "unclear vpnd error:\n{err}"
        );
        eprintln!("cross test: no ESP on this kernel ({msg}); checked vpnd's refusal only");
        return Ok(());
    }
    drop(probe_ns);
    x.start()?;
    let a_log = &x.a_vpnd.as_ref().unwrap().1;
    assert!(
        a_log.contains("conn x: backend kernel (xfrm)"),
        "{}",
        a_log.text()
    );

    // Both directions, both protocols.
    ping(&x.ha, "10.2.0.9", 5)?;
    ping(&x.hb, "10.1.0.5", 5)?;
    tcp_transfer(&x.ha, &x.hb, "10.2.0.9", 5201, 4 << 20).context("TCP A -> B")?;
    tcp_transfer(&x.hb, &x.ha, "10.1.0.5", 5202, 4 << 20).context("TCP B -> A")?;

    // Each side's view: A's SAs are the kernel's, with its counters; B's are the workers'.
    let a_sas = vpnctl(x.a.name(), &["sa", "list"])?;
    let b_sas = vpnctl(x.b.name(), &["sa", "list"])?;
    let a0 = &a_sas["sas"][0];
    assert_eq!(a0["backend"], "kernel", "{a_sas}");
    assert_eq!(b_sas["sas"][0]["backend"], "afxdp", "{b_sas}");
    assert!(
        a0["xfrm"]["packets_in"].as_u64().unwrap_or(0) > 2000,
        "{a0}"
    );
    assert!(
        a0["xfrm"]["packets_out"].as_u64().unwrap_or(0) > 2000,
        "{a0}"
    );
    assert_eq!(a0["xfrm"]["integrity_failed"], 0, "{a0}");
    // A's XDP program saw the ESP first and passed it to xfrm.
    let stats = vpnctl(x.a.name(), &["stats"])?;
    let text = stats.to_string();
    assert!(text.contains("pass_kernel"), "{text}");

    // Make-before-break across implementations: CHILD_SA rekeys started by A (kernel) and
    // then by B (AF_XDP) under 100 pings/s, not one lost; afterwards A's kernel holds exactly
    // the new pair.
    // -w: wait for every reply (TCG makes the round trip erratic; plain -c gives up on the
    // last reply after two round trips).
    let pinger = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                x.ha.name(),
                "ping",
                "-n",
                "-q",
                "-i",
                "0.01",
            ])
            .args(["-c", "1000", "-w", "60", "10.2.0.9"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting ping")?,
    );
    std::thread::sleep(Duration::from_secs(1));
    for site in [x.a.name().to_string(), x.b.name().to_string()] {
        let before = spis_in(&site)?;
        vpnctl(&site, &["rekey", "x"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = spis_in(&site)?;
            if now.len() == 1 && !before.contains(&now[0]) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{site}: rekey did not complete: SPIs {before:x?} -> {now:x?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut pinger = pinger;
    assert!(
        pinger.wait_exit(Duration::from_secs(70)),
        "ping did not end"
    );
    let mut out = String::new();
    if let Some(mut o) = pinger.0.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut out)?;
    }
    let (sent, got) = ping_counts(&out)?;
    if got != sent {
        bail!(
            "{} of {sent} pings lost across the rekeys\nA's XDP: {}\nB's XDP: {}\nA's xfrm: {}",
            sent - got,
            vpnctl(x.a.name(), &["stats"])?,
            vpnctl(x.b.name(), &["stats"])?,
            xfrm_states(&x.a, true)?
        );
    }
    let states = xfrm_states(&x.a, false)?;
    assert_eq!(
        states.matches("proto esp").count(),
        2,
        "A's kernel after two rekeys:\n{states}"
    );

    // The connection brought down on A (dpd action hold, Neutron's default): its subnets are
    // blocked in A's kernel, nothing leaves in clear.
    vpnctl(x.a.name(), &["conn", "down", "x"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pols = x.a.ip(&["xfrm", "policy"])?;
        let states = xfrm_states(&x.a, false)?;
        if pols.contains("action block") && states.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("A did not hold after conn down:\n{pols}\n{states}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        x.ha.exec(&["ping", "-c", "1", "-W", "1", "10.2.0.9"])
            .is_err(),
        "a ping crossed a held connection"
    );

    // Stopping A leaves nothing in its kernel.
    let (mut p, log) = x.a_vpnd.take().unwrap();
    p.signal(libc::SIGTERM)?;
    assert!(p.wait_exit(Duration::from_secs(15)), "vpnd A did not stop");
    let left = xfrm_states(&x.a, false)? + &x.a.ip(&["xfrm", "policy"])?;
    assert!(
        left.trim().is_empty(),
        "left in A's kernel:\n{left}\n{}",
        log.text()
    );
    Ok(())
}

/// Neutron's per-router routing context with the kernel backend: site A's tenant lives in its
/// own namespace (a qrouter's), reached only through an xfrm interface (`if_id` 7) that was
/// created on A's wire and moved there; A's SAs and policies carry that if_id. Ping and TCP
/// both ways, and the tenant's namespace holds no xfrm state or policy of its own.
#[test]
fn kernel_backend_tenant_namespace_through_an_xfrm_interface() -> Result<()> {
    xfrmi_tenant(false)
}

/// The same with a VRF instead of a namespace: the tenant interface and the xfrm interface
/// are enslaved to the tenant's VRF (its own routing table) in A's namespace.
#[test]
fn kernel_backend_tenant_vrf_through_an_xfrm_interface() -> Result<()> {
    xfrmi_tenant(true)
}

/// `ip -n NS ARGS...`.
fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    vpn_tests::netns::run("ip", &a)
}

fn xfrmi_tenant(vrf: bool) -> Result<()> {
    require_root();
    let mut x = Cross::build(true, false)?;
    let probe_ns = NetNs::new("xQ")?;
    if let Err(msg) = kernel_esp(&probe_ns, probe_ns.name())? {
        eprintln!("xfrm interface test: no ESP on this kernel ({msg})");
        return Ok(());
    }
    drop(probe_ns);
    x.a.ip(&["route", "del", "10.2.0.0/24"])?;
    x.a.ip(&[
        "link", "add", "xfrm7", "type", "xfrm", "dev", "wire", "if_id", "7",
    ])?;
    // The tenant's routing context: a namespace of its own, or a VRF in A's.
    let qr = NetNs::new("xQr")?;
    let ctx: String = if vrf {
        x.a.ip(&["addr", "flush", "dev", "ten"])?;
        x.a.ip(&["link", "add", "vrf-t1", "type", "vrf", "table", "101"])?;
        x.a.ip(&["link", "set", "vrf-t1", "up"])?;
        for l in ["ten", "xfrm7"] {
            x.a.ip(&["link", "set", l, "master", "vrf-t1"])?;
        }
        x.a.name().to_string()
    } else {
        qr.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        // vpnd keeps a tenant-side interface of its own (unused by this tenant's traffic).
        x.a.ip(&["link", "set", "ten", "netns", qr.name()])?;
        x.a.ip(&["link", "add", "ten", "type", "veth", "peer", "name", "tenx"])?;
        for l in ["ten", "tenx"] {
            x.a.ip(&["link", "set", l, "up"])?;
        }
        x.a.ip(&["link", "set", "xfrm7", "netns", qr.name()])?;
        qr.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        qr.name().to_string()
    };
    ip_in(&ctx, &["addr", "add", "10.1.0.1/24", "dev", "ten"])?;
    ip_in(&ctx, &["link", "set", "ten", "up"])?;
    ip_in(&ctx, &["link", "set", "xfrm7", "up"])?;
    if vrf {
        ip_in(
            &ctx,
            &[
                "route",
                "add",
                "10.2.0.0/24",
                "dev",
                "xfrm7",
                "table",
                "101",
            ],
        )?;
    } else {
        ip_in(&ctx, &["route", "add", "10.2.0.0/24", "dev", "xfrm7"])?;
    }
    let a_cfg = x.config(true)?.replacen(
        "[[tenant]]\nid = 1\n",
        "[[tenant]]\nid = 1\nxfrm_if_id = 7\n",
        1,
    );
    assert!(a_cfg.contains("xfrm_if_id = 7"));
    x.start_with(Some(a_cfg))?;

    ping(&x.ha, "10.2.0.9", 3)?;
    ping(&x.hb, "10.1.0.5", 3)?;
    tcp_transfer(&x.ha, &x.hb, "10.2.0.9", 5211, 1 << 20).context("TCP A -> B")?;
    tcp_transfer(&x.hb, &x.ha, "10.1.0.5", 5212, 1 << 20).context("TCP B -> A")?;
    let states = xfrm_states(&x.a, false)?;
    assert!(states.contains("if_id 0x7"), "{states}");
    let pols = x.a.ip(&["xfrm", "policy"])?;
    assert!(pols.contains("if_id 0x7"), "{pols}");
    if !vrf {
        let q = xfrm_states(&qr, false)? + &qr.ip(&["xfrm", "policy"])?;
        assert!(
            q.trim().is_empty(),
            "the tenant namespace has xfrm state:\n{q}"
        );
    }
    // The tenant's traffic went through its xfrm interface, both ways.
    let link = ip_in(&ctx, &["-s", "-j", "link", "show", "xfrm7"])?;
    let v: serde_json::Value = serde_json::from_str(&link)?;
    let st = &v[0]["stats64"];
    assert!(
        st["rx"]["packets"].as_u64().unwrap_or(0) > 100
            && st["tx"]["packets"].as_u64().unwrap_or(0) > 100,
        "{link}"
    );
    Ok(())
}
