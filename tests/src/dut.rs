//! One data-plane node alone, the device under test: `vpnd` with one manually keyed SA in its
//! own namespace, and a generator namespace holding the other ends of its two links, with a
//! counting sink (`pktgen_sink`, XDP_DROP) on each.
//!
//! ```text
//!  [tgen]                                  [dut: vpnd, East 172.24.4.226]
//!   tg  (tenant host side, VLAN 100) <---> ten   tenant_ingress -> worker: encrypt
//!   wg  (the peer, West .233)        <---> wire  esp_ingress    -> worker: decrypt
//! ```
//!
//! Encrypt: plain VLAN 100 frames 10.1.0.5 -> 10.2.0.9 sent on `tg` come out of `wire` as
//! ESP (SPI [`SPI_OUT`]) and are counted by the sink on `wg`. Decrypt: ESP toward SPI
//! [`SPI_IN`] sent on `wg` comes out of `ten` as VLAN 100 frames, counted on `tg`.
//! Both links have `queues` rx/tx queues on each end; vpnd runs one worker per queue pair.
//! The wire link's MTU is [`WIRE_MTU`], so that a 1500-byte tenant packet fits one ESP packet
//! (as on an underlay with baby-giant frames) and no fragmentation is measured.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use vpn_userspace::pktgen::{
    self, Args, Engine, Mode,
    frame::Size,
    sink::{Sink, SinkCounts},
};

use crate::{
    netns::{NetNs, unique},
    topology::{Log, Proc, mac_of, start_vpnd},
};

pub const SPI_IN: u32 = 0xf0e0;
pub const SPI_OUT: u32 = 0xe0f0;
/// key || salt of the SA toward the DUT (what the generator encrypts with).
pub const KEY_IN: &str = "00112233445566778899aabbccddeeff01020304";
pub const KEY_OUT: &str = "ffeeddccbbaa99887766554433221100a0b0c0d0";
pub const GATEWAY_MAC: &str = "02:ee:00:00:00:fe";
pub const WIRE_MTU: u32 = 1600;
pub const VLAN: u16 = 100;

#[derive(Clone, Debug)]
pub struct DutOptions {
    /// Rx/tx queues of each veth end: vpnd's worker count.
    pub queues: u32,
    /// Of the inbound SA; 0 (anti-replay off) lets a generator's ESP ring repeat.
    pub replay_window: u32,
    /// vpnd's UMEM frames per socket.
    pub xsk_frames: u32,
    /// vpnd's `xdp_carrier` ("auto", "adjust_meta", "shim"); `None`: not set (auto).
    pub carrier: Option<&'static str>,
}

impl Default for DutOptions {
    fn default() -> Self {
        DutOptions {
            queues: 1,
            replay_window: 1024,
            xsk_frames: 4096,
            carrier: None,
        }
    }
}

pub struct Dut {
    // Drop order: the daemon, the sinks (detached inside their namespace's lifetime), then
    // the namespaces, then the directory.
    pub vpnd: Proc,
    pub log: Log,
    tenant_sink: Sink,
    wire_sink: Sink,
    pub dut: NetNs,
    pub tgen: NetNs,
    pub dir: PathBuf,
    pub opts: DutOptions,
    /// MACs of the DUT's interfaces (ten, wire).
    pub ten_mac: String,
    pub wire_mac: String,
}

impl Drop for Dut {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Joins `an` in `a` and `bn` in `b` with a veth pair of `q` queues each way.
fn veth(a: &NetNs, an: &str, b: &NetNs, bn: &str, q: u32) -> Result<()> {
    let tmp = unique("d");
    let tmp = &tmp[tmp.len().saturating_sub(12)..];
    let q = q.to_string();
    a.ip(&[
        "link",
        "add",
        an,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        tmp,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])?;
    a.ip(&["link", "set", tmp, "netns", b.name()])?;
    b.ip(&["link", "set", tmp, "name", bn])?;
    Ok(())
}

impl Dut {
    /// Builds both namespaces and links, attaches the sinks, starts vpnd and waits until it
    /// runs.
    pub fn start(opts: DutOptions) -> Result<Dut> {
        if opts.queues == 0 {
            bail!("queues >= 1");
        }
        // Removed again if building fails half-way.
        let dir_guard = crate::netns::TempDir::new("vpn-dut")?;
        let dir = dir_guard.path().to_path_buf();
        let dut = NetNs::new("vpnD")?;
        let tgen = NetNs::new("vpnG")?;
        for ns in [&dut, &tgen] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        }
        veth(&dut, "ten", &tgen, "tg", opts.queues)?;
        veth(&dut, "wire", &tgen, "wg", opts.queues)?;
        let mtu = WIRE_MTU.to_string();
        dut.ip(&["link", "set", "wire", "mtu", &mtu])?;
        tgen.ip(&["link", "set", "wg", "mtu", &mtu])?;
        for (ns, dev) in [(&dut, "ten"), (&dut, "wire"), (&tgen, "tg"), (&tgen, "wg")] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        dut.ip(&["addr", "add", "172.24.4.226/24", "dev", "wire"])?;
        tgen.ip(&["addr", "add", "172.24.4.233/24", "dev", "wg"])?;
        let (tenant_sink, wire_sink) = {
            let _in = tgen.enter()?;
            (Sink::attach("tg")?, Sink::attach("wg")?)
        };
        let tg_mac = mac_of(&tgen, "tg")?;
        let wg_mac = mac_of(&tgen, "wg")?;
        let config = format!(
            r#"instance = "{instance}"
xsk_frames = {frames}
[wire]
interface = "wire"
{carrier}
[[tenant]]
id = 1
interface = "ten"
vlan = {VLAN}
gateway_ip = "10.1.0.1"
gateway_mac = "{GATEWAY_MAC}"
host_mac = "{tg_mac}"
[[manual_sa]]
name = "dut"
tenant = 1
local = "172.24.4.226"
peer = "172.24.4.233"
peer_mac = "{wg_mac}"
local_subnets = ["10.1.0.0/24"]
peer_subnets = ["10.2.0.0/24"]
cipher = "aes128gcm16"
spi_in = {SPI_IN}
spi_out = {SPI_OUT}
key_in = "{KEY_IN}"
key_out = "{KEY_OUT}"
replay_window = {window}
"#,
            instance = dut.name(),
            frames = opts.xsk_frames,
            window = opts.replay_window,
            carrier = opts
                .carrier
                .map(|c| format!("xdp_carrier = \"{c}\""))
                .unwrap_or_default(),
        );
        let (vpnd, log) = start_vpnd(&dut, &config, &dir)?;

        let want = format!("vpnd: {} worker thread(s)", opts.queues);
        log.wait_for(Duration::from_secs(5), |l| l.contains(&want))
            .with_context(|| {
                format!("vpnd should run {} worker(s):\n{}", opts.queues, log.text())
            })?;
        let ten_mac = mac_of(&dut, "ten")?;
        let wire_mac = mac_of(&dut, "wire")?;
        dir_guard.keep();
        Ok(Dut {
            vpnd,
            log,
            tenant_sink,
            wire_sink,
            dut,
            tgen,
            dir,
            opts,
            ten_mac,
            wire_mac,
        })
    }

    /// What came out of the DUT toward the tenant (decrypted).
    pub fn tenant_out(&self) -> Result<SinkCounts> {
        self.tenant_sink.counts()
    }

    /// What came out of the DUT on the wire (encrypted).
    pub fn wire_out(&self) -> Result<SinkCounts> {
        self.wire_sink.counts()
    }

    /// Generator options for tenant traffic into the DUT (live frames on `tg`, one thread
    /// per queue: thread t runs on CPU t, and a veth hands XDP frames to the peer's rx queue
    /// of the sending CPU; AF_XDP, thread t on queue t, where the kernel refuses live frames).
    pub fn encrypt_args(&self, size: Size) -> Args {
        let mut a = Args::new("tg");
        a.netns = Some(self.tgen.name().to_string());
        a.engine = pktgen::live_or_afxdp();
        a.size = size;
        a.vlan = Some(VLAN);
        a.dst_mac = Some(GATEWAY_MAC.into());
        a.threads = self.opts.queues;
        a.quiet = true;
        a
    }

    /// Generator options for ESP toward the DUT's inbound SA (AF_XDP on `wg`, thread t on
    /// queue t; set `engine` to `Live` for XDP live frames, thread t on CPU t).
    pub fn decrypt_args(&self, size: Size) -> Args {
        let mut a = Args::new("wg");
        a.netns = Some(self.tgen.name().to_string());
        a.mode = Mode::Esp;
        a.engine = Engine::Afxdp;
        a.size = size;
        a.vlan = Some(VLAN);
        a.spi = SPI_IN;
        a.key = Some(KEY_IN.into());
        a.local = "172.24.4.233".parse().expect("address");
        a.peer = "172.24.4.226".parse().expect("address");
        a.dst_mac = Some(self.wire_mac.clone());
        a.threads = self.opts.queues;
        a.quiet = true;
        a
    }

    /// Stops vpnd (SIGTERM, bounded) and returns its final statistics line.
    pub fn stop(&mut self) -> String {
        self.vpnd.signal(libc::SIGTERM).ok();
        self.vpnd.wait_exit(Duration::from_secs(5));
        while self.log.recv_timeout(Duration::from_millis(300)).is_ok() {}
        self.log
            .lines()
            .into_iter()
            .rfind(|l| l.contains("stopping:"))
            .unwrap_or_default()
    }
}

/// A counter from vpnd's final statistics line (`WorkerStats { decrypted: N, ... }`).
pub fn stat(line: &str, name: &str) -> Option<u64> {
    let i = line.find(&format!("{name}: "))?;
    line[i + name.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The drops in vpnd's final statistics line (`drops: {...}`), as text.
pub fn drops(line: &str) -> &str {
    line.find("drops: {")
        .map(|i| {
            let rest = &line[i + 7..];
            &rest[..rest.find('}').map_or(rest.len(), |j| j + 1)]
        })
        .unwrap_or("")
}

/// Waits (bounded) until `read` stops changing for 200 ms, and returns its last value.
pub fn settle<T: PartialEq + Copy>(mut read: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last = read()?;
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = read()?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}
