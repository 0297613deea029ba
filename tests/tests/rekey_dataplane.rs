//! Make-before-break rekeys of a child SA pair while traffic flows, on two network nodes
//! ("East" and "West") in their own namespaces, each with the XDP programs attached and its
//! AF_XDP workers running in this process, driven through `Installer` as the IKE control
//! plane will: both sides install the new inbound SA, then both activate the new outbound
//! SA, and after an overlap the old pair is removed. Tenant hosts on both sides send UDP
//! datagrams with sequence numbers at a steady rate, both ways, the whole time: not one may be
//! lost or duplicated, the traffic must move to the new SPIs, and the old SPIs must be
//! dropped as unknown once removed. Three rekeys in a row.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use vpn_common::{Counter, DropReason};
use vpn_tests::{
    netns::{NetNs, require_root, unique},
    pkt::Packet,
    raw::RawSocket,
};
use vpn_userspace::{
    dataplane::{
        ChildSaSpec, Dataplane, InstalledChild, Installer, LoadOptions, Side,
        worker::{NextHop, Prefix, Tenant, TenantLink, Worker, WorkerStats},
    },
    esp::{Cipher, OutboundSa, Outer, SaKey, crypto::Backend},
};

const MAC_WIRE_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];
const MAC_WIRE_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
const MAC_TEN_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x02];
const MAC_TEN_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
const MAC_HOST_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x10];
const MAC_HOST_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x10];
const GW_E: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0xfe];
const GW_W: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];
const VLAN_E: u16 = 100;
const VLAN_W: u16 = 200;
const TENANT_E: u32 = 1;
const TENANT_W: u32 = 5;
const MAGIC: &[u8; 4] = b"RKEY";
/// Time between two datagrams of one direction.
const INTERVAL: Duration = Duration::from_micros(250);
const OVERLAP: Duration = Duration::from_millis(200);
const REKEYS: u32 = 3;

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn prefix(a: [u8; 4], len: u8) -> Prefix {
    Prefix {
        addr: IpAddr::V4(Ipv4Addr::from(a)),
        len,
    }
}

/// SPIs of pair `k`: East -> West (West's inbound) and West -> East (East's inbound).
fn spi_ew(k: u32) -> u32 {
    0x0e0f_0000 + k
}
fn spi_we(k: u32) -> u32 {
    0x0f0e_0000 + k
}

/// Fresh keys for every pair and direction.
fn key(k: u32, dir: u8) -> SaKey {
    let mut m = [0u8; 20];
    for (i, b) in m.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(31) ^ dir ^ (i as u8).wrapping_mul(7);
    }
    SaKey::from_keymat(Cipher::Aes128Gcm16, &m).expect("key")
}

const E_ADDR: Ipv4Addr = Ipv4Addr::new(172, 24, 4, 226);
const W_ADDR: Ipv4Addr = Ipv4Addr::new(172, 24, 4, 233);

fn spec_east(k: u32) -> ChildSaSpec {
    ChildSaSpec {
        name: format!("east-{k}"),
        tenant: TENANT_E,
        local: IpAddr::V4(E_ADDR),
        peer: IpAddr::V4(W_ADDR),
        udp_encap: None,
        spi_in: spi_we(k),
        spi_out: spi_ew(k),
        key_in: key(k, 2),
        key_out: key(k, 1),
        // ESN is agreed per child SA, for both directions; alternate it across rekeys.
        esn: k.is_multiple_of(2),
        replay_window: 1024,
        mtu: None,
        local_subnets: vec![prefix([10, 1, 0, 0], 24)],
        peer_subnets: vec![prefix([10, 2, 0, 0], 24)],
        next_hop: NextHop::new(MAC_WIRE_W),
        src_mac: MAC_WIRE_E,
    }
}

/// West sends ESP in UDP/4500 (as behind a NAT), East raw ESP: both paths are rekeyed.
fn spec_west(k: u32) -> ChildSaSpec {
    ChildSaSpec {
        name: format!("west-{k}"),
        tenant: TENANT_W,
        local: IpAddr::V4(W_ADDR),
        peer: IpAddr::V4(E_ADDR),
        udp_encap: Some((4500, 4500)),
        spi_in: spi_ew(k),
        spi_out: spi_we(k),
        key_in: key(k, 1),
        key_out: key(k, 2),
        esn: k.is_multiple_of(2),
        replay_window: 1024,
        mtu: None,
        local_subnets: vec![prefix([10, 2, 0, 0], 24)],
        peer_subnets: vec![prefix([10, 1, 0, 0], 24)],
        next_hop: NextHop::new(MAC_WIRE_E),
        src_mac: MAC_WIRE_W,
    }
}

struct Node {
    dp: Dataplane,
    installer: Installer,
    stop: Arc<AtomicBool>,
    workers: Option<JoinHandle<WorkerStats>>,
}

impl Node {
    fn stop(&mut self) -> WorkerStats {
        self.stop.store(true, Ordering::Relaxed);
        self.workers
            .take()
            .expect("running")
            .join()
            .expect("worker threads")
    }

    fn unknown_spi(&self) -> Result<u64> {
        self.dp
            .counter(Side::Wire, Counter::Drop(DropReason::UnknownSpi))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.workers.take() {
            let _ = w.join();
        }
    }
}

fn spawn(w: Worker) -> (Arc<AtomicBool>, JoinHandle<WorkerStats>) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = w
        .split()
        .into_iter()
        .map(|mut w| {
            let s = stop.clone();
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if w.poll() == 0 {
                        w.wait(5);
                    }
                }
                eprintln!(
                    "AF_XDP kernel counters [rx_dropped, rx_ring_full, fill_empty, tx_invalid, tx_empty]: wire {:?}, tenant {:?}",
                    w.wire.iter().map(|s| s.kernel_stats()).collect::<Vec<_>>(),
                    w.tenant.iter().map(|s| s.kernel_stats()).collect::<Vec<_>>()
                );
                w.stats
            })
        })
        .collect();
    let h = std::thread::spawn(move || {
        let mut total = WorkerStats::default();
        for t in threads {
            total.merge(&t.join().expect("worker thread"));
        }
        total
    });
    (stop, h)
}

fn setup_ns(ns: &NetNs, tenant_mac: &[u8; 6], host_mac: &[u8; 6]) -> Result<()> {
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
    ns.ip(&["link", "add", "ten", "type", "veth", "peer", "name", "host"])?;
    ns.ip(&["link", "set", "ten", "address", &mac(tenant_mac), "up"])?;
    ns.ip(&["link", "set", "host", "address", &mac(host_mac), "up"])?;
    Ok(())
}

/// Loads and attaches the programs in `ns`, starts the workers and installs pair 1.
fn start_node(
    ns: &NetNs,
    tenant: u32,
    vlan: u16,
    gateway_mac: [u8; 6],
    host_mac: [u8; 6],
    iface_mac: [u8; 6],
    spec: &ChildSaSpec,
) -> Result<(Node, InstalledChild, RawSocket)> {
    let _in = ns.enter()?;
    let mut o = LoadOptions::new(unique("rekey"));
    o.sa_slots = 64;
    o.sa_in_entries = 64;
    let mut dp = Dataplane::load(&o)?;
    dp.attach_wire("wire", XdpMode::Driver)?;
    dp.attach_tenant("ten", XdpMode::Driver)?;
    let wire = dp.bind_sockets(Side::Wire, "wire", 0, 1024)?;
    let ten = dp.bind_sockets(Side::Tenant, "ten", 0, 1024)?;
    dp.set_vlan_tenant(vlan, tenant)?;
    let mut w = Worker::new(wire, ten, dp.replay_shared());
    w.add_tenant(
        tenant,
        Tenant {
            link: TenantLink::Vlan(vlan),
            gateway_mac,
            default_host_mac: host_mac,
            iface_mac,
            gateway_v4: None,
            gateway_v6: None,
            local_subnets: spec.local_subnets.clone(),
        },
    );
    let mut installer = Installer::new(w.tables(), dp.replay_shared(), Backend::default());
    // The first pair is installed before the workers start, as vpnd does.
    let mut child = installer.install_inbound(&mut dp, spec)?;
    installer.activate_outbound(&mut dp, &mut child)?;
    let host = RawSocket::new(ns.ifindex("host")?)?;
    let (stop, h) = spawn(w);
    Ok((
        Node {
            dp,
            installer,
            stop,
            workers: Some(h),
        },
        child,
        host,
    ))
}

/// A tenant host sending numbered datagrams at a steady rate until told to stop.
fn sender(
    host: Arc<RawSocket>,
    frame: impl Fn(u32) -> Vec<u8> + Send + 'static,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
) -> JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            host.send(&frame(n))?;
            sent.store(n, Ordering::Relaxed);
            // Paced against the start, so a late wake-up does not lower the rate.
            let next = start + INTERVAL * n;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(())
    })
}

/// The other side's tenant host: records the sequence number of every datagram delivered
/// on `vlan` from `src` (and counts duplicates).
fn receiver(
    host: Arc<RawSocket>,
    vlan: u16,
    src: [u8; 4],
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<(BTreeSet<u32>, u64)>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            host.recv_matching(Duration::from_millis(100), |f| {
                // VLAN tag, IPv4, UDP, then our payload: magic + sequence number.
                if f.len() < 18 + 28 + 8
                    || f[12..14] != [0x81, 0x00]
                    || u16::from_be_bytes([f[14], f[15]]) & 0xfff != vlan
                    || f[16..18] != [0x08, 0x00]
                    || f[18 + 12..18 + 16] != src
                    || &f[46..50] != MAGIC
                {
                    return false;
                }
                let seq = u32::from_be_bytes(f[50..54].try_into().expect("4"));
                let mut g = got.lock().expect("lock");
                if !g.0.insert(seq) {
                    g.1 += 1;
                }
                false
            });
        }
    })
}

fn datagram(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlan: u16,
    src: &str,
    dst: &str,
) -> impl Fn(u32) -> Vec<u8> + Send + 'static {
    let (src, dst) = (src.to_string(), dst.to_string());
    move |seq| {
        let mut payload = MAGIC.to_vec();
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.extend_from_slice(&[0x5a; 120]);
        let inner = Packet::eth()
            .ipv4(&src, &dst)
            .udp(40000, 7)
            .payload(&payload)
            .build();
        let mut f = Vec::with_capacity(inner.len() + 4);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vlan.to_be_bytes());
        f.extend_from_slice(&inner[12..]);
        f
    }
}

/// An ESP frame from West to East (UDP/4500) with a given SPI and key: what a late or
/// forged packet of a removed SA looks like.
fn stale_esp_frame(spi: u32, key: &SaKey, seq: u64) -> Vec<u8> {
    let sa = OutboundSa::new(
        spi,
        key,
        false,
        Outer {
            src: IpAddr::V4(W_ADDR),
            dst: IpAddr::V4(E_ADDR),
            udp: Some((4500, 4500)),
            ttl: 64,
        },
    );
    sa.set_seq(seq - 1);
    let inner = Packet::eth()
        .ipv4("10.2.0.9", "10.1.0.5")
        .udp(7, 40000)
        .payload_len(64)
        .build()[14..]
        .to_vec();
    let mut f = vec![0u8; 2048];
    f[..6].copy_from_slice(&MAC_WIRE_E);
    f[6..12].copy_from_slice(&MAC_WIRE_W);
    f[12..14].copy_from_slice(&[8, 0]);
    let n = sa.encapsulate(&inner, &mut f[14..]).expect("encapsulate");
    f.truncate(14 + n);
    f
}

#[test]
fn make_before_break_rekeys_lose_nothing() -> Result<()> {
    require_root();
    let east = NetNs::new("rke")?;
    let west = NetNs::new("rkw")?;
    setup_ns(&east, &MAC_TEN_E, &MAC_HOST_E)?;
    setup_ns(&west, &MAC_TEN_W, &MAC_HOST_W)?;
    let wire_e = unique("w");
    east.ip(&[
        "link", "add", "wire", "type", "veth", "peer", "name", &wire_e,
    ])?;
    east.ip(&["link", "set", &wire_e, "netns", west.name()])?;
    west.ip(&["link", "set", &wire_e, "name", "wire"])?;
    east.ip(&["link", "set", "wire", "address", &mac(&MAC_WIRE_E), "up"])?;
    west.ip(&["link", "set", "wire", "address", &mac(&MAC_WIRE_W), "up"])?;

    let (mut e, mut e_child, e_host) = start_node(
        &east,
        TENANT_E,
        VLAN_E,
        GW_E,
        MAC_HOST_E,
        MAC_TEN_E,
        &spec_east(1),
    )?;
    let (mut w, mut w_child, w_host) = start_node(
        &west,
        TENANT_W,
        VLAN_W,
        GW_W,
        MAC_HOST_W,
        MAC_TEN_W,
        &spec_west(1),
    )?;
    // West's end of the wire, to inject stale ESP toward East.
    let w_wire = {
        let _in = west.enter()?;
        RawSocket::new(west.ifindex("wire")?)?
    };
    let (e_host, w_host) = (Arc::new(e_host), Arc::new(w_host));

    // Traffic both ways, the whole time.
    let stop_send = Arc::new(AtomicBool::new(false));
    let stop_recv = Arc::new(AtomicBool::new(false));
    let (sent_ew, sent_we) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let got_ew = Arc::new(Mutex::new((BTreeSet::new(), 0u64)));
    let got_we = Arc::new(Mutex::new((BTreeSet::new(), 0u64)));
    let receivers = [
        receiver(
            w_host.clone(),
            VLAN_W,
            [10, 1, 0, 5],
            stop_recv.clone(),
            got_ew.clone(),
        ),
        receiver(
            e_host.clone(),
            VLAN_E,
            [10, 2, 0, 9],
            stop_recv.clone(),
            got_we.clone(),
        ),
    ];
    let senders = [
        sender(
            e_host.clone(),
            datagram(GW_E, MAC_HOST_E, VLAN_E, "10.1.0.5", "10.2.0.9"),
            stop_send.clone(),
            sent_ew.clone(),
        ),
        sender(
            w_host.clone(),
            datagram(GW_W, MAC_HOST_W, VLAN_W, "10.2.0.9", "10.1.0.5"),
            stop_send.clone(),
            sent_we.clone(),
        ),
    ];

    let mut unknown_injected = 0u64;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        let rekeys: u32 = std::env::var("REKEY_COUNT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(REKEYS);
        if rekeys == 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        for k in 2..=rekeys + 1 {
            let before = (e.installer.stats(&e_child), w.installer.stats(&w_child));
            assert!(
                before.0.packets_out > 0 && before.1.packets_out > 0,
                "pair {} carried no traffic: {before:?}",
                k - 1
            );
            // 1. Each side installs its new inbound SA.
            let (se, sw) = (spec_east(k), spec_west(k));
            let mut e_new = e.installer.install_inbound(&mut e.dp, &se)?;
            let mut w_new = w.installer.install_inbound(&mut w.dp, &sw)?;
            // 2. Each side switches its outbound traffic to the new SA.
            e.installer.activate_outbound(&mut e.dp, &mut e_new)?;
            w.installer.activate_outbound(&mut w.dp, &mut w_new)?;
            let tenant_dst = Ipv4Addr::new(10, 2, 0, 9);
            assert_eq!(
                e.dp.lookup_policy_v4(TENANT_E, tenant_dst)?
                    .map(|p| p.sa_slot),
                Some(e_new.slot_out),
                "East's policy switched to the new slot"
            );
            // Frames classified before the switch drain within a few milliseconds; after
            // that the old outbound SAs carry nothing more.
            std::thread::sleep(Duration::from_millis(50));
            let drained = (e.installer.stats(&e_child), w.installer.stats(&w_child));
            std::thread::sleep(OVERLAP - Duration::from_millis(50));
            // 3. After the overlap, the old pair goes.
            let old = (e.installer.stats(&e_child), w.installer.stats(&w_child));
            assert_eq!(
                (old.0.packets_out, old.1.packets_out),
                (drained.0.packets_out, drained.1.packets_out),
                "rekey {k}: the old outbound SAs still carried traffic after the switch"
            );
            assert_eq!(
                (old.0.packets_in, old.1.packets_in),
                (drained.0.packets_in, drained.1.packets_in),
                "rekey {k}: old inbound SAs still received after the switch"
            );
            // The XDP program's per-slot counters (by SPI on the wire) agree: every ESP packet
            // with the old SPIs was handed to the workers and accepted.
            assert_eq!(e.dp.sa_stats(e_child.slot_in)?.packets, old.0.packets_in);
            assert_eq!(w.dp.sa_stats(w_child.slot_in)?.packets, old.1.packets_in);
            let (e_old_spi_in, e_old_key_in) = (e_child.spi_in, key(k - 1, 2));
            let e_old_slot = e_child.slot_in;
            e.installer
                .remove(&mut e.dp, std::mem::replace(&mut e_child, e_new))?;
            w.installer
                .remove(&mut w.dp, std::mem::replace(&mut w_child, w_new))?;
            assert!(e.dp.sa_in(e_old_spi_in)?.is_none(), "old SPI left the map");
            assert!(!e.installer.tables().inbound_slots().contains(&e_old_slot));
            assert_eq!(e.installer.tables().inbound_slots(), vec![e_child.slot_in]);
            assert_eq!(
                e.installer.tables().outbound_slots(),
                vec![e_child.slot_out]
            );
            // Every packet the old pair carried one way was received the other way.
            assert_eq!(old.0.packets_out, old.1.packets_in, "rekey {k}: E->W");
            assert_eq!(old.1.packets_out, old.0.packets_in, "rekey {k}: W->E");
            eprintln!("rekey {k}: old pair east {:?} / west {:?}", old.0, old.1);

            // A packet of the removed SA (beyond its window, validly encrypted) is now an
            // unknown SPI at East.
            let before_unknown = e.unknown_spi()?;
            w_wire.send(&stale_esp_frame(e_old_spi_in, &e_old_key_in, 1 << 20))?;
            unknown_injected += 1;
            wait_for(|| Ok(e.unknown_spi()? > before_unknown))
                .context("stale SPI not counted as unknown")?;

            std::thread::sleep(Duration::from_millis(300));
            let now = (e.installer.stats(&e_child), w.installer.stats(&w_child));
            assert!(
                now.0.packets_out > 0
                    && now.1.packets_out > 0
                    && now.0.packets_in > 0
                    && now.1.packets_in > 0,
                "rekey {k}: the new pair carries the traffic both ways: {now:?}"
            );
            assert_eq!(now.0.seq_out, now.0.packets_out, "sequence numbers from 1");
            assert!(now.1.replay_top > 0 && now.0.replay_top > 0);
        }
        Ok(())
    }));

    stop_send.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().expect("sender")?;
    }
    // Let the last datagrams through.
    std::thread::sleep(Duration::from_millis(500));
    stop_recv.store(true, Ordering::Relaxed);
    for r in receivers {
        r.join().expect("receiver");
    }
    let e_stats = e.stop();
    let w_stats = w.stop();
    eprintln!("east workers: {e_stats:?}");
    eprintln!("west workers: {w_stats:?}");
    for (name, n) in [("east", &e), ("west", &w)] {
        for side in [Side::Wire, Side::Tenant] {
            let c: Vec<_> =
                n.dp.counters(side)?
                    .into_iter()
                    .filter(|c| c.1 > 0)
                    .collect();
            eprintln!("{name} {side:?}: {c:?}");
        }
    }
    for ns in [&east, &west] {
        for dev in ["wire", "ten", "host"] {
            let st = ns.exec(&["ethtool", "-S", dev]).unwrap_or_default();
            let nz: Vec<&str> = st
                .lines()
                .map(str::trim)
                .filter(|l| !l.ends_with(": 0") && l.contains(':'))
                .collect();
            eprintln!("{} {dev}: {}", ns.name(), nz.join(", "));
        }
    }
    match result {
        Ok(r) => r?,
        Err(p) => std::panic::resume_unwind(p),
    }

    for (name, sent, got) in [("E->W", &sent_ew, &got_ew), ("W->E", &sent_we, &got_we)] {
        let sent = sent.load(Ordering::Relaxed);
        let g = got.lock().expect("lock");
        let missing: Vec<u32> = (1..=sent).filter(|s| !g.0.contains(s)).collect();
        eprintln!(
            "{name}: {sent} sent, {} delivered, {} duplicates",
            g.0.len(),
            g.1
        );
        assert!(sent > 3000, "{name}: only {sent} datagrams sent");
        assert!(
            missing.is_empty(),
            "{name}: {} of {sent} lost across the rekeys: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        assert_eq!(g.1, 0, "{name}: duplicates delivered");
    }
    for (name, s) in [("east", &e_stats), ("west", &w_stats)] {
        assert!(s.drops.is_empty(), "{name}: the workers dropped: {s:?}");
    }
    assert_eq!(
        e.unknown_spi()?,
        unknown_injected,
        "East: only the injected stale packets had unknown SPIs"
    );
    assert_eq!(w.unknown_spi()?, 0, "West: no packet with an unknown SPI");
    Ok(())
}

fn wait_for(mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("condition not reached within 3 s")
}
