//! `vpnctl probe --json` against reality, in a network namespace of its own with a veth pair
//! (root only). What it says must match what the product and the kernel do when asked
//! another way:
//! - xdp_adjust_meta: whether the XDP object loads with the metadata carrier forced;
//! - bpffs: statfs(2) of /sys/fs/bpf; xdp_live_frames: the raw live-frames probe; bpf_jit
//!   known inside a namespace, where the JIT switch is not visible;
//! - the kernel ESP rows: whether the kernel backend's own check (an rfc4106(gcm(aes)) SA in
//!   this test's namespace) passes, for IPv4 and IPv6 peers;
//! - the veth: driver veth, AF_XDP copy mode with need_wakeup available, no zero-copy;
//! - the carrier choice: `choose_carrier(Auto)`;
//! - with our wire program attached: the device is found without --dev, with its program,
//!   mode, instance and carrier, and after one ESP frame reached the AF_XDP socket the run-time
//!   metadata row agrees with how that frame carried its metadata;
//! - in the kernel lane (`VPN_LANE_KERNEL`, Debian kernels): adjust_meta, ESP and
//!   rfc4106(gcm(aes)) are available.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode;
use serde_json::Value;
use vpn_common::{
    ReplayWindow,
    maps::{SaIn, programs},
};
use vpn_tests::{
    netns::{NetNs, require_root, unique},
    pkt::Packet,
    raw::RawSocket,
    topology::vpnctl_path,
};
use vpn_userspace::{
    dataplane::{self, Carrier, CarrierChoice, Dataplane, LoadOptions, xsk::XskSocket},
    probe::{self, bpf},
    xfrm::{KernelBackend, OffloadMode},
};

/// `vpnctl --json probe ARGS` run inside `ns` (the child inherits the namespace of the thread
/// that starts it; not `ip netns exec`, which would hide the host's bpffs).
fn probe_json(ns: &NetNs, args: &[&str]) -> Result<Value> {
    let _inside = ns.enter()?;
    let out = Command::new(vpnctl_path()?)
        .args(["--json", "probe"])
        .args(args)
        .output()
        .context("running vpnctl probe")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "vpnctl probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_str(&stdout).with_context(|| format!("not JSON: {stdout}"))
}

fn row<'a>(rows: &'a Value, id: &str) -> Result<&'a Value> {
    rows.as_array()
        .context("rows are an array")?
        .iter()
        .find(|r| r["id"] == id)
        .with_context(|| format!("no row {id} in {rows}"))
}

fn verdict<'a>(rows: &'a Value, id: &str) -> Result<&'a str> {
    row(rows, id)?["verdict"]
        .as_str()
        .with_context(|| format!("{id}: no verdict"))
}

fn available(ok: bool) -> &'static str {
    if ok { "available" } else { "unavailable" }
}

fn choice<'a>(report: &'a Value, id: &str, device: Option<&str>) -> Result<&'a Value> {
    report["choices"]
        .as_array()
        .context("choices")?
        .iter()
        .find(|c| c["id"] == id && c["device"].as_str() == device)
        .with_context(|| format!("no choice {id} for {device:?}"))
}

/// A namespace with the veth pair pw0 <-> pw1, up, without IPv6 (its neighbour discovery
/// would reach the program and move counters).
fn namespace() -> Result<NetNs> {
    let ns = NetNs::new("vpnprobe")?;
    {
        let _inside = ns.enter()?;
        for conf in ["all", "default"] {
            match std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1") {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    ns.ip(&["link", "add", "pw0", "type", "veth", "peer", "name", "pw1"])?;
    ns.ip(&["link", "set", "pw0", "up"])?;
    ns.ip(&["link", "set", "pw1", "up"])?;
    Ok(ns)
}

fn load(carrier: CarrierChoice) -> Result<Dataplane> {
    let mut o = LoadOptions::new(unique("vpnprobe"));
    o.sa_slots = 16;
    o.sa_in_entries = 16;
    o.carrier = carrier;
    Dataplane::load(&o)
}

#[test]
fn probe_matches_what_the_kernel_and_the_product_do() -> Result<()> {
    require_root();
    let ns = namespace()?;
    let root = std::path::Path::new(vpn_common::maps::PIN_ROOT);
    let bpffs_before = bpf::is_bpffs(root);
    let r = probe_json(&ns, &["--dev", "pw1"])?;
    let bpffs_after = bpf::is_bpffs(root);
    println!("{}", serde_json::to_string_pretty(&r)?);

    assert_eq!(r["schema"], probe::SCHEMA);
    assert_eq!(r["privileged"], true);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    assert_eq!(r["kernel"]["release"], release.trim());
    let f = &r["features"];
    let ids: Vec<&str> = f
        .as_array()
        .context("features")?
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    let want: Vec<&str> = probe::KERNEL_FEATURES.iter().map(|s| s.id).collect();
    assert_eq!(ids, want);

    // bpffs: what statfs says (unless something mounted or unmounted it meanwhile).
    if bpffs_before == bpffs_after {
        assert_eq!(verdict(f, "bpffs")?, available(bpffs_before));
    } else {
        println!("bpffs changed under the probe (another process); not compared");
    }
    // Live frames: the raw probe's answer.
    let live = bpf::xdp_live_frames(1);
    assert_eq!(
        verdict(f, "xdp_live_frames")?,
        available(live.is_ok()),
        "raw probe: {live:?}"
    );

    // adjust_meta: whether our object loads with the metadata carrier forced.
    let forced = load(CarrierChoice::Forced(Carrier::Meta));
    assert_eq!(
        verdict(f, "xdp_adjust_meta")?,
        available(forced.is_ok()),
        "Dataplane::load with the metadata carrier: {:?}",
        forced.as_ref().err()
    );
    drop(forced);
    // As root the JIT is known in any namespace (from a loaded program's native code).
    assert_ne!(verdict(f, "bpf_jit")?, "unknown", "{}", row(f, "bpf_jit")?);
    assert_eq!(verdict(f, "xdp_adjust_head")?, "available");
    assert_eq!(verdict(f, "mmapable_array")?, "available");
    assert_eq!(verdict(f, "af_xdp")?, "available");

    // Kernel ESP: the kernel backend's own check, in a namespace of this test's (one with
    // IPv6 on, as vpnd's would be).
    let xns = NetNs::new("vpnprobex")?;
    let mut kb = KernelBackend::open(&unique("vpnprobe"), Some(xns.name()), OffloadMode::None);
    let mut backend = |v6: bool| match kb.as_mut() {
        Ok(b) => b.probe(v6).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    let (b4, b6) = (backend(false), backend(true));
    assert_eq!(
        verdict(f, "xfrm_aead_aes128gcm16")? == "available"
            && verdict(f, "xfrm_esp_ipv4")? == "available",
        b4.is_ok(),
        "kernel backend, IPv4: {b4:?}"
    );
    assert_eq!(
        verdict(f, "xfrm_aead_aes128gcm16")? == "available"
            && verdict(f, "xfrm_esp_ipv6")? == "available",
        b6.is_ok(),
        "kernel backend, IPv6: {b6:?}"
    );
    let kb_choice = choice(&r, "kernel_backend", None)?;
    assert_eq!(
        kb_choice["value"],
        if b4.is_ok() || b6.is_ok() {
            "usable"
        } else {
            "unusable"
        }
    );

    // The carrier vpnd would choose.
    let chosen = dataplane::choose_carrier(CarrierChoice::Auto);
    assert_eq!(choice(&r, "carrier", None)?["value"], chosen.carrier.name());

    // The veth.
    let devs = r["devices"].as_array().context("devices")?;
    assert_eq!(devs.len(), 1, "{devs:?}");
    let d = &devs[0];
    assert_eq!(d["name"], "pw1");
    assert_eq!(d["driver"], "veth");
    assert_eq!(d["xdp"], serde_json::json!([]));
    let df = &d["features"];
    assert_eq!(verdict(df, "af_xdp_copy")?, "available");
    assert_eq!(verdict(df, "af_xdp_need_wakeup")?, "available");
    if verdict(f, "netdev_xdp_features")? == "available" {
        // veth: basic, redirect, rx-sg; never zero-copy.
        assert_eq!(verdict(df, "xdp_native")?, "available");
        assert_eq!(verdict(df, "af_xdp_zero_copy")?, "unavailable");
        assert_eq!(choice(&r, "af_xdp_mode", Some("pw1"))?["value"], "copy");
    } else {
        assert_eq!(
            row(df, "xdp_native")?["detail"],
            "unknown (kernel < 6.3: no xdp_features)"
        );
    }
    assert_eq!(verdict(df, "xdp_meta_runtime")?, "unknown");
    assert_eq!(verdict(df, "esp_hw_offload")?, "unavailable");
    assert_eq!(choice(&r, "backend_auto", Some("pw1"))?["value"], "afxdp");

    // The kernel lane boots Debian kernels: both of these are there.
    if let Ok(k) = std::env::var("VPN_LANE_KERNEL") {
        for id in [
            "xdp_adjust_meta",
            "xfrm_netlink",
            "xfrm_esp_ipv4",
            "xfrm_aead_aes128gcm16",
        ] {
            assert_eq!(
                verdict(f, id)?,
                "available",
                "Debian's {k} has {id}: {}",
                row(f, id)?
            );
        }
        assert_eq!(kb_choice["value"], "usable");
        assert_eq!(choice(&r, "carrier", None)?["value"], "adjust_meta");
    }
    Ok(())
}

/// With esp_ingress attached to pw1 (native) and an AF_XDP socket on its queue, the probe
/// finds the device by itself, names the program, mode, instance and carrier, and its
/// run-time metadata row follows the counters: "not seen yet" before any frame, then what the
/// frame that reached the socket shows (metadata in front of it: honoured; in the packet:
/// refused; the shim carrier: not used).
#[test]
fn probe_finds_our_program_and_reads_its_run_time_metadata() -> Result<()> {
    require_root();
    let ns = namespace()?;
    let pw0 = ns.ifindex("pw0")?;
    let inside = ns.enter()?;
    let mut o = LoadOptions::new(unique("vpnprobe"));
    o.sa_slots = 16;
    o.sa_in_entries = 16;
    let instance = o.instance.clone();
    let mut dp = Dataplane::load(&o)?;
    let carrier = dp.carrier().carrier;
    dp.attach_wire("pw1", XdpMode::Driver)?;
    let mut xsk = XskSocket::bind("pw1", 0, 256)?;
    xsk.set_carrier(carrier);
    dp.set_wire_xsk(0, xsk.fd())?;
    dp.add_sa_in(
        0xc0de,
        SaIn {
            slot: 5,
            tenant: 3,
            flags: 0,
            min_esp_len: SaIn::min_esp_len_for(8, 16),
            _pad: 0,
        },
        ReplayWindow::new(64, false),
    )?;
    drop(inside);

    let r = probe_json(&ns, &[])?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    assert_eq!(r["device_hint"], Value::Null);
    let devs = r["devices"].as_array().context("devices")?;
    assert_eq!(devs.len(), 1, "only pw1 has our program: {devs:?}");
    let d = &devs[0];
    assert_eq!(d["name"], "pw1");
    let x = &d["xdp"][0];
    assert_eq!(x["name"], programs::ESP_INGRESS);
    assert_eq!(x["mode"], "native");
    assert_eq!(x["instance"], instance.as_str());
    assert_eq!(x["carrier"], carrier.name());
    // Our socket holds queue 0.
    let copy = row(&d["features"], "af_xdp_copy")?;
    assert_eq!(copy["verdict"], "unknown");
    assert!(
        copy["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("already has an AF_XDP socket"),
        "{copy}"
    );
    let meta = row(&d["features"], "xdp_meta_runtime")?;
    match carrier {
        Carrier::Meta => assert!(
            meta["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("not seen yet (no frame redirected)"),
            "{meta}"
        ),
        Carrier::Shim => assert!(
            meta["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("shim carrier"),
            "{meta}"
        ),
    }

    // One ESP frame from the peer, received on the socket.
    let counts = {
        let _inside = ns.enter()?;
        let wire = RawSocket::new(pw0)?;
        wire.send(
            &Packet::eth()
                .ipv4("172.24.4.233", "172.24.4.226")
                .esp(0xc0de, 1)
                .payload_len(64)
                .build(),
        )?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = 0;
        while got == 0 && Instant::now() < deadline {
            got = xsk.recv(1, |_| {});
            std::thread::sleep(Duration::from_millis(5));
        }
        if got == 0 {
            bail!("no frame on the AF_XDP socket within 3 s");
        }
        xsk.carrier_counts()
    };
    let r = probe_json(&ns, &[])?;
    let meta = row(&r["devices"][0]["features"], "xdp_meta_runtime")?;
    println!("after one frame ({counts:?}): {meta}");
    let detail = meta["detail"].as_str().unwrap_or_default();
    match carrier {
        Carrier::Meta if counts.meta == 1 => {
            assert_eq!(meta["verdict"], "available");
            assert!(detail.contains("honoured (1 frame redirected"), "{detail}");
        }
        Carrier::Meta => {
            assert_eq!(counts.shim, 1);
            assert_eq!(meta["verdict"], "unavailable");
            assert!(
                detail.contains("refused at run time (1 frame carried the shim"),
                "{detail}"
            );
        }
        Carrier::Shim => assert_eq!(meta["verdict"], "unknown"),
    }
    drop(xsk);
    drop(dp);
    Ok(())
}
