//! Both programs attached (native XDP) to veths in a private network namespace, real frames
//! sent with AF_PACKET, received on AF_XDP sockets with their metadata, counted in the maps.
//! Also shows the replay window shared through mmap: once "the worker" advances it, the XDP
//! program drops the same sequence number before any crypto.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vpn_common::{
    Counter, DropReason, Outcome, XdpMeta,
    meta::{META_F_FROM_VLAN, META_KIND_ESP_IN, META_KIND_OUTBOUND, META_MAGIC},
};
use vpn_tests::{
    fixture::{attached_plane, with_carrier},
    netns::{NetNs, require_root},
    pkt::Packet,
    raw::RawSocket,
};
use vpn_userspace::dataplane::{Carrier, Dataplane, Side, xsk::XskSocket};

/// Waits (bounded) for one frame on `sock`.
fn recv_one(sock: &mut XskSocket) -> Result<(XdpMeta, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let mut got = None;
        sock.recv(1, |f| got = Some((f.meta, f.data.to_vec())));
        if let Some(g) = got {
            return Ok(g);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("no frame on the AF_XDP socket within 3 s")
}

/// Waits (bounded) until a counter reaches `want`.
fn wait_counter(dp: &Dataplane, side: Side, c: Counter, want: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = dp.counter(side, c)?;
        if v == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("counter {} is {v}, want {want}", c.name());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn attached_programs_count_and_redirect_real_frames_adjust_meta() -> Result<()> {
    require_root();
    with_carrier(Carrier::Meta, attached_programs)
}

#[test]
fn attached_programs_count_and_redirect_real_frames_shim() -> Result<()> {
    require_root();
    with_carrier(Carrier::Shim, attached_programs)
}

fn attached_programs(carrier: Carrier) -> Result<()> {
    let ns = NetNs::new("vpnit")?;
    {
        // No IPv6 on the new links: their neighbour discovery and MLD frames would reach the
        // programs a moment after link-up and move the counters this test checks exactly.
        // (/proc/sys/net is the namespace of the thread that opens it; no IPv6 at all is fine.)
        let _inside = ns.enter()?;
        for conf in ["all", "default"] {
            match std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1") {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    for (a, b) in [("wire0", "wire1"), ("ten0", "ten1")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        ns.ip(&["link", "set", a, "up"])?;
        ns.ip(&["link", "set", b, "up"])?;
    }
    let wire0 = ns.ifindex("wire0")?;
    let ten0 = ns.ifindex("ten0")?;
    let _inside = ns.enter()?;

    let (dp, mut wire_xsk, mut ten_xsk) = attached_plane("vpnit", carrier, "wire1", "ten1")?;

    let wire = RawSocket::new(wire0)?;
    let tenant = RawSocket::new(ten0)?;

    // 1. ESP with a known SPI reaches the worker's socket with its metadata.
    let esp = Packet::eth()
        .ipv4("172.24.4.233", "172.24.4.226")
        .esp(0xc0de, 1)
        .payload_len(64)
        .build();
    wire.send(&esp)?;
    let (meta, frame) = recv_one(&mut wire_xsk)?;
    assert_eq!(meta.magic, META_MAGIC);
    assert_eq!(meta.kind, META_KIND_ESP_IN);
    assert_eq!((meta.slot, meta.tenant, meta.esp_off), (5, 3, 34));
    assert_eq!(frame, esp);
    assert_eq!(
        dp.counter(Side::Wire, Counter::Outcome(Outcome::WireRedirectEsp))?,
        1
    );
    assert_eq!(dp.sa_stats(5)?.packets, 1);
    // veth honours bpf_xdp_adjust_meta: with the metadata carrier the frame came with its
    // metadata in front, and no fallback was counted; with the shim, inside the frame.
    let c = wire_xsk.carrier_counts();
    match carrier {
        Carrier::Meta => assert_eq!((c.meta, c.shim), (1, 0)),
        Carrier::Shim => assert_eq!((c.meta, c.shim), (0, 1)),
    }
    assert_eq!(
        dp.counter(Side::Wire, Counter::Outcome(Outcome::WireMetaRefusedShim))?,
        0
    );

    // 2. The worker authenticates it and advances the shared window (no syscall): the same
    //    sequence number is now dropped in XDP, counted, and never reaches the socket.
    let seq = dp.replay().check(5, 1)?.expect("fresh sequence number");
    dp.replay().advance(5, seq)?;
    wire.send(&esp)?;
    wait_counter(
        &dp,
        Side::Wire,
        Counter::Drop(DropReason::ReplayDuplicate),
        1,
    )?;

    // 3. Unknown SPI: counted drop. Not ESP: passed to the stack, counted.
    wire.send(
        &Packet::eth()
            .ipv4("172.24.4.233", "172.24.4.226")
            .esp(0xbad, 1)
            .payload_len(64)
            .build(),
    )?;
    wait_counter(&dp, Side::Wire, Counter::Drop(DropReason::UnknownSpi), 1)?;
    wire.send(
        &Packet::eth()
            .ipv4("172.24.4.233", "172.24.4.226")
            .udp(500, 500)
            .payload_len(32)
            .build(),
    )?;
    wait_counter(&dp, Side::Wire, Counter::Outcome(Outcome::WirePassIke), 1)?;

    // 4. Tenant side: a VLAN 100 frame toward the peer CIDR arrives untagged, with its tenant
    //    and outbound SA in the metadata.
    let tagged = Packet::eth()
        .vlan(100)
        .ipv4("10.1.0.5", "10.2.0.9")
        .payload_len(100)
        .build();
    tenant.send(&tagged)?;
    let (meta, frame) = recv_one(&mut ten_xsk)?;
    assert_eq!(meta.kind, META_KIND_OUTBOUND);
    assert_eq!(meta.flags, META_F_FROM_VLAN);
    assert_eq!((meta.slot, meta.tenant, meta.l3_off), (6, 3, 14));
    let untagged = Packet::eth()
        .ipv4("10.1.0.5", "10.2.0.9")
        .payload_len(100)
        .build();
    assert_eq!(frame, untagged);
    assert_eq!(
        dp.counter(Side::Tenant, Counter::Outcome(Outcome::TenantRedirect))?,
        1
    );
    // A VLAN we do not serve goes to the stack untouched.
    tenant.send(
        &Packet::eth()
            .vlan(999)
            .ipv4("10.1.0.5", "10.2.0.9")
            .payload_len(100)
            .build(),
    )?;
    wait_counter(
        &dp,
        Side::Tenant,
        Counter::Outcome(Outcome::TenantPassNoTenant),
        1,
    )?;

    let pins = dp.pin_dir().to_path_buf();
    assert!(pins.join("SA_IN").exists(), "maps are pinned");
    drop(wire_xsk);
    drop(ten_xsk);
    drop(dp);
    assert!(!pins.exists(), "pins removed on drop");
    // XDP detached with the programs.
    let link = ns.ip(&["-d", "link", "show", "wire1"])?;
    assert!(!link.contains("prog/xdp"), "XDP still attached: {link}");
    Ok(())
}

/// A device that refuses `bpf_xdp_adjust_meta` at run time although the verifier accepts it
/// (a TAP device: tun builds its XDP buffers without a metadata area, at least up to the
/// Linux 6.1 of the kernel lane). With the metadata carrier the programs fall back to the
/// shim for such frames, count each one, and the socket still hands the worker the same
/// metadata and frame. Where tun does honour metadata, the frame comes the ordinary way and
/// nothing is counted; either way nothing is lost.
#[test]
fn a_device_refusing_metadata_at_run_time_gets_the_shim_counted() -> Result<()> {
    require_root();
    with_carrier(Carrier::Meta, |carrier| {
        let ns = NetNs::new("vpntap")?;
        let _inside = ns.enter()?;
        let mut wire = vpn_tests::tap::Tap::create("tapw")?;
        let mut ten = vpn_tests::tap::Tap::create("tapt")?;
        for t in [&wire, &ten] {
            ns.ip(&["link", "set", t.name(), "up"])?;
        }
        let (dp, mut wire_xsk, mut ten_xsk) = attached_plane("vpntap", carrier, "tapw", "tapt")?;

        let kernel = std::env::var("VPN_LANE_KERNEL").unwrap_or_default();
        let esp = Packet::eth()
            .ipv4("172.24.4.233", "172.24.4.226")
            .esp(0xc0de, 1)
            .payload_len(64)
            .build();
        let tagged = Packet::eth()
            .vlan(100)
            .ipv4("10.1.0.5", "10.2.0.9")
            .payload_len(100)
            .build();
        let untagged = Packet::eth()
            .ipv4("10.1.0.5", "10.2.0.9")
            .payload_len(100)
            .build();
        for (side, tap, xsk, input, want_frame, want_kind, refused) in [
            (
                Side::Wire,
                &mut wire,
                &mut wire_xsk,
                &esp,
                &esp,
                META_KIND_ESP_IN,
                Outcome::WireMetaRefusedShim,
            ),
            (
                Side::Tenant,
                &mut ten,
                &mut ten_xsk,
                &tagged,
                &untagged,
                META_KIND_OUTBOUND,
                Outcome::TenantMetaRefusedShim,
            ),
        ] {
            tap.inject(input)?;
            let (meta, frame) = recv_one(xsk)?;
            assert_eq!(meta.magic, META_MAGIC, "{side:?}");
            assert_eq!(meta.kind, want_kind, "{side:?}");
            assert_eq!(meta.tenant, 3, "{side:?}");
            assert_eq!(&frame, want_frame, "{side:?}");
            let fallbacks = dp.counter(side, Counter::Outcome(refused))?;
            let c = xsk.carrier_counts();
            if fallbacks == 1 {
                assert_eq!((c.meta, c.shim), (0, 1), "{side:?}");
                println!("{side:?}: the TAP device refused metadata at run time; shim, counted");
            } else {
                assert_eq!(fallbacks, 0, "{side:?}");
                assert_eq!((c.meta, c.shim), (1, 0), "{side:?}");
                println!("{side:?}: this kernel's tun honours XDP metadata");
                // tun gained metadata support long after 6.1: there it must refuse.
                assert_ne!(kernel, "6.1", "{side:?}: tun on 6.1 honoured metadata?");
            }
        }
        drop((wire_xsk, ten_xsk));
        drop(dp);
        drop((wire, ten));
        Ok(())
    })
}
