//! Traffic generation for operators and benchmarks: `vpn-pktgen` and `cargo xtask pktgen`.
//!
//! Three engines:
//! - **kernel pktgen** ([`kernel`]): `/proc/net/pktgen`, where the kernel has the module
//!   (`modprobe pktgen` is tried first). Plain UDP only.
//! - **XDP live frames** ([`live`]): `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on the
//!   `pktgen_tx` program, which returns `XDP_TX`: the kernel transmits copies of a pre-built
//!   frame on the interface, toward its veth peer, without an skb. Plain tenant traffic.
//!   One test run costs tens of milliseconds of set-up here, so the program varies every
//!   packet itself, from its per-CPU packet counter: flows (UDP source port, round-robin),
//!   tenants (VLAN id), IMIX lengths (tail trimmed, lengths and checksums patched), and the
//!   rate (paced against the kernel clock; a paced thread spins on its CPU). Thread `t` runs
//!   on CPU `t`: a veth hands XDP frames to the peer's rx queue of the sending CPU.
//!   The receiving veth needs a native XDP program, or frames vanish (the summary says so
//!   when the kernel counted fewer transmitted than sent).
//! - **AF_XDP** ([`afxdp`]): a ring of pre-built frames sent from an AF_XDP socket, one per
//!   generator thread (thread `t` on queue `t`). For `--mode esp` the ring holds valid ESP
//!   packets (tunnel mode, AES-GCM, the project's own `esp::OutboundSa`), sequence numbers
//!   1, 2, ... per SA. The ring is built once and then repeated: a receiver sees every
//!   sequence number once as long as no more than the ring is sent (the default ring is
//!   `--count` packets, up to 128 MiB); for longer runs its SA needs `replay_window = 0`
//!   (anti-replay off, which vpn-common's `ReplayWindow` supports for manual keys).
//!   Re-encrypting on the fly would cost the generator as much CPU per packet as the receiver
//!   spends, on the same machine.
//!
//! Sizes are Ethernet frame lengths without the FCS ([`frame`]); in ESP mode the size is that
//! of the tenant frame carried (its IP packet is what gets encrypted; with `--vlan` the tag
//! counts, as the receiver re-tags the decrypted packet), so "decrypt at 64 B" means 64-byte
//! frames come out of the receiver.
//!
//! [`sink::Sink`] is the far end for tests and benchmarks: an XDP program that counts and
//! drops.

pub mod afxdp;
pub mod frame;
pub mod kernel;
pub mod live;
pub mod sink;

use std::{
    fmt::Write as _,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::{
    config::parse_mac,
    dataplane::{neigh::iface_info, rx_queue_count},
    esp::{Cipher, NAT_T_PORT, Outer, SaKey},
};
use frame::{Size, UdpFrame};

/// The generator's XDP programs (`vpn-ebpf/src/pktgen.rs`), built by `build.rs`.
pub static PKTGEN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pktgen"));

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain UDP tenant traffic (Ethernet [+ 802.1Q] + IPv4/IPv6 + UDP).
    Plain,
    /// Valid ESP (tunnel mode, AES-GCM) toward an SA, over AF_XDP.
    Esp,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// Plain: kernel pktgen where available, else XDP live frames. ESP: AF_XDP.
    Auto,
    /// /proc/net/pktgen (plain only).
    Kernel,
    /// BPF_PROG_RUN with XDP live frames (plain only).
    Live,
    /// An AF_XDP socket per thread, sending a ring of pre-built frames.
    Afxdp,
}

impl Engine {
    /// Stable name (the summary's `engine`, `vpnctl probe`).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Kernel => "kernel-pktgen",
            Engine::Live => "xdp-live-frames",
            Engine::Afxdp => "af-xdp",
        }
    }
}

/// `--engine auto` for plain traffic: kernel pktgen where the kernel has it (`kernel`; it
/// sends one VLAN per device, so not for several `tenants`), else XDP live frames where
/// `BPF_PROG_RUN` takes them (`live`, asked only then), else AF_XDP. With a note saying why
/// when it is not kernel pktgen. `vpnctl probe` shows the same choice.
pub fn auto_engine(
    tenants: u32,
    kernel: Result<(), String>,
    live: impl FnOnce() -> Result<(), String>,
) -> (Engine, Option<String>) {
    let why = match kernel {
        Ok(()) if tenants <= 1 => return (Engine::Kernel, None),
        Ok(()) => "kernel pktgen sends one VLAN per device (--tenants)".to_string(),
        Err(why) => format!("kernel pktgen: not available on this kernel ({why})"),
    };
    match live() {
        Ok(()) => (Engine::Live, Some(format!("{why}; using XDP live frames"))),
        Err(live_why) => (
            Engine::Afxdp,
            Some(format!(
                "{why}; XDP live frames: not available on this kernel ({live_why}); using AF_XDP"
            )),
        ),
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

/// Options of a run (the command line of `vpn-pktgen`).
#[derive(Parser, Clone, Debug)]
#[command(
    name = "vpn-pktgen",
    about = "Traffic generator: kernel pktgen where the kernel has it, else XDP live frames; \
             valid ESP streams over AF_XDP",
    long_about = None
)]
pub struct Args {
    /// Interface to send on.
    #[arg(long)]
    pub dev: String,
    /// Network namespace of the interface (an `ip netns` name).
    #[arg(long)]
    pub netns: Option<String>,
    /// Frame size: 64..=1518 bytes (Ethernet, no FCS), or `imix` (7:4:1 of 64, 570 and 1518
    /// bytes; the large class is capped at the interface's MTU). ESP mode: the size of the
    /// tenant frame carried.
    #[arg(long, default_value = "64")]
    pub size: Size,
    /// Packets per second, all threads together (absent or 0: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds to send (default 10 unless --count is given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Packets to send, all threads together.
    #[arg(long)]
    pub count: Option<u64>,
    /// Flows: UDP source ports --sport, --sport + 1, ..., one per packet in turn.
    #[arg(long, default_value_t = 1)]
    pub flows: u32,
    /// Plain mode: tenants, tenant t on VLAN --vlan + t (needs --vlan).
    #[arg(long, default_value_t = 1)]
    pub tenants: u32,
    /// ESP mode: SAs, SPI --spi + i, all with --key; packets go to them in turn.
    #[arg(long, default_value_t = 1)]
    pub sas: u32,
    /// IPv6 tenant packets (default IPv4).
    #[arg(long)]
    pub ipv6: bool,
    #[arg(long, value_enum, default_value = "plain")]
    pub mode: Mode,
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: Engine,
    /// 802.1Q VLAN id of the tenant frames.
    #[arg(long)]
    pub vlan: Option<u16>,
    /// Destination MAC (default ff:ff:ff:ff:ff:ff; give the receiver's, e.g. vpnd's tenant
    /// gateway_mac or wire MAC).
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// Source MAC (default: the interface's).
    #[arg(long)]
    pub src_mac: Option<String>,
    /// Tenant source address (default 10.1.0.5 plain / 10.2.0.9 ESP; IPv6 fd00:1::5 /
    /// fd00:2::9).
    #[arg(long)]
    pub src: Option<IpAddr>,
    /// Tenant destination address (default 10.2.0.9 plain / 10.1.0.5 ESP; IPv6 fd00:2::9 /
    /// fd00:1::5).
    #[arg(long)]
    pub dst: Option<IpAddr>,
    /// UDP source port of flow 0.
    #[arg(long, default_value_t = 10_000)]
    pub sport: u16,
    #[arg(long, default_value_t = 9)]
    pub dport: u16,
    /// ESP: SPI of the (first) SA, decimal or 0x-hex.
    #[arg(long, value_parser = parse_u32, default_value = "0x1000")]
    pub spi: u32,
    /// ESP: keying material in hex, key || 4-byte salt (RFC 4106): 20 bytes for
    /// aes128gcm16, 36 for aes256gcm16. Prefer --key-file (a command line is visible in ps).
    #[arg(long)]
    pub key: Option<String>,
    /// ESP: a file holding the hex keying material.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// ESP: our (outer source) address.
    #[arg(long, default_value = "172.24.4.233")]
    pub local: IpAddr,
    /// ESP: the receiver's (outer destination) address.
    #[arg(long, default_value = "172.24.4.226")]
    pub peer: IpAddr,
    /// ESP: UDP encapsulation on port 4500 (RFC 3948).
    #[arg(long)]
    pub udp_encap: bool,
    /// ESP: 64-bit extended sequence numbers.
    #[arg(long)]
    pub esn: bool,
    /// ESP: the first sequence number of every SA (to continue a stream a receiver has
    /// seen part of).
    #[arg(long, default_value_t = 1)]
    pub first_seq: u64,
    /// ESP / AF_XDP: frames in the pre-built ring (default: --count, up to 128 MiB, or
    /// 65536 for timed runs). Several threads and an anti-replay receiver: give --sas a
    /// multiple of --threads, so each SA is sent by one thread, in order.
    #[arg(long)]
    pub ring: Option<usize>,
    /// Generator threads: live frames run thread t on CPU t (a veth picks the peer's rx
    /// queue by the sending CPU); AF_XDP sends thread t's frames on queue t; kernel pktgen
    /// uses kpktgend_t.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Frames per test run batch (live frames, at most 256), per TX kick (AF_XDP), or
    /// pktgen's `burst`.
    #[arg(long, default_value_t = 64)]
    pub burst: u32,
    /// Kernel pktgen's clone_skb (0 for veth, which does not allow shared skbs).
    #[arg(long, default_value_t = 0)]
    pub clone_skb: u32,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Defaults for everything but the interface (for library callers).
    pub fn new(dev: &str) -> Args {
        Args::parse_from(["vpn-pktgen", "--dev", dev])
    }

    #[cfg(test)]
    pub(crate) fn parse_from_for_test(extra: &[&str]) -> Args {
        let mut v = vec!["vpn-pktgen", "--dev", "test0"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub engine: String,
    pub mode: Mode,
    pub dev: String,
    pub size: String,
    pub threads: u32,
    /// Packets the generator handed to the kernel (live frames: times `pktgen_tx` returned
    /// XDP_TX; AF_XDP: descriptors completed; kernel pktgen: its own count).
    pub packets: u64,
    /// Their bytes (Ethernet, no FCS).
    pub bytes: u64,
    pub duration_s: f64,
    pub pps: f64,
    /// Bits of the frames sent per second (no preamble, inter-frame gap or FCS).
    pub gbps: f64,
    pub per_thread: Vec<u64>,
    /// The interface's kernel counters over the run (`/proc/net/dev`): transmitted (on a veth
    /// this includes XDP frames its peer processed) and dropped on the way out.
    pub kernel_tx_packets: Option<u64>,
    pub kernel_tx_dropped: Option<u64>,
    /// Frames in the pre-built ring (AF_XDP), and whether the run went round it more than
    /// once (ESP: the receiver then needs replay_window = 0).
    pub ring: Option<usize>,
    pub ring_repeated: bool,
    pub notes: Vec<String>,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pktgen: {} {} on {}, {} frames, {} thread(s)",
            self.engine,
            match self.mode {
                Mode::Plain => "plain",
                Mode::Esp => "esp",
            },
            self.dev,
            self.size,
            self.threads
        );
        let _ = writeln!(
            s,
            "pktgen: sent {} packets ({} bytes) in {:.3} s: {:.0} pps, {:.3} Gbit/s",
            self.packets, self.bytes, self.duration_s, self.pps, self.gbps
        );
        if let (Some(t), Some(d)) = (self.kernel_tx_packets, self.kernel_tx_dropped) {
            let _ = writeln!(
                s,
                "pktgen: kernel counters of {}: tx {t}, tx dropped {d}",
                self.dev
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "pktgen: note: {n}");
        }
        s
    }
}

/// The calling thread in another network namespace until dropped (threads it spawns
/// meanwhile start there too).
pub struct NetnsGuard {
    orig: File,
}

impl NetnsGuard {
    pub fn enter(name: &str) -> Result<NetnsGuard> {
        let orig = File::open("/proc/thread-self/ns/net").context("opening our own netns")?;
        let target = File::open(format!("/run/netns/{name}"))
            .with_context(|| format!("network namespace {name} (/run/netns/{name})"))?;
        // SAFETY: setns on fds we own; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(NetnsGuard { orig })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: back to the namespace we came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

/// (tx packets, tx dropped) of `ifname` in the calling thread's namespace.
pub fn tx_counters(ifname: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
    parse_net_dev(&text, ifname)
}

fn parse_net_dev(text: &str, ifname: &str) -> Option<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.trim_start().split(':').next() == Some(ifname))?;
    let f: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes
    // packets errs drop ...
    Some((*f.get(9)?, *f.get(11)?))
}

/// A token bucket: at most `rate` packets/s, in bursts of at most `cap` (a millisecond's
/// worth, or one batch), so that a generator that falls behind never catches up with one
/// huge burst that a receiver's rings cannot hold.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: Option<f64>,
    cap: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub fn new(rate: Option<f64>, burst: u64) -> Pacer {
        let rate = rate.filter(|r| *r > 0.0);
        let cap = rate.map_or(0.0, |r| (r / 1000.0).max(burst.max(1) as f64));
        Pacer {
            rate,
            cap,
            tokens: cap,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        if let Some(r) = self.rate {
            let now = Instant::now();
            self.tokens = (self.tokens + (now - self.last).as_secs_f64() * r).min(self.cap);
            self.last = now;
        }
    }

    /// Packets that may be sent now.
    pub fn allowed(&mut self) -> u64 {
        if self.rate.is_none() {
            return u64::MAX;
        }
        self.refill();
        self.tokens as u64
    }

    /// Records `n` packets sent.
    pub fn spend(&mut self, n: u64) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
    }

    /// Sleeps until `n` packets may go (at most 10 ms at a time).
    pub fn wait_for(&mut self, n: u64) {
        if let Some(r) = self.rate {
            self.refill();
            let need = (n as f64).min(self.cap) - self.tokens;
            if need > 0.0 {
                std::thread::sleep(
                    Duration::from_secs_f64(need / r).min(Duration::from_millis(10)),
                );
            }
        }
    }
}

/// When a generator thread stops, and how fast it may go.
pub struct Limits<'a> {
    /// Packets this thread sends at most.
    pub quota: u64,
    pub duration: Option<Duration>,
    /// Packets/s of this thread.
    pub rate: Option<f64>,
    pub stop: &'a AtomicBool,
    /// Packets sent so far, for the progress line.
    pub progress: &'a AtomicU64,
}

/// A thread's time line, from its first packet.
pub struct Clock {
    pub start: Instant,
    deadline: Option<Instant>,
    pub pacer: Pacer,
}

impl Clock {
    /// Time to the deadline, if there is one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

impl Limits<'_> {
    /// Starts the clock (call right before the first packet).
    pub fn begin(&self, burst: u64) -> Clock {
        let start = Instant::now();
        Clock {
            start,
            deadline: self.duration.map(|d| start + d),
            pacer: Pacer::new(self.rate, burst),
        }
    }

    pub fn done(&self, clock: &Clock, sent: u64) -> bool {
        sent >= self.quota
            || clock.deadline.is_some_and(|d| Instant::now() >= d)
            || self.stop.load(Ordering::Relaxed)
    }
}

/// A thread's result: packets and bytes sent, and over how long.
#[derive(Copy, Clone, Debug, Default)]
pub struct Sent {
    pub packets: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// The run, resolved from the options.
struct Plan {
    engine: Engine,
    frame: UdpFrame,
    size: Size,
    /// Frame lengths actually used (after MTU and header limits), with weights.
    classes: Vec<(usize, u32)>,
    duration: Option<Duration>,
    count: Option<u64>,
    notes: Vec<String>,
    mtu: u32,
}

fn default_addrs(mode: Mode, v6: bool) -> (IpAddr, IpAddr) {
    let (a, b): (IpAddr, IpAddr) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 9)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5)),
            IpAddr::V4(Ipv4Addr::new(10, 2, 0, 9)),
        )
    };
    match mode {
        Mode::Plain => (a, b),
        Mode::Esp => (b, a),
    }
}

fn mac_arg(s: &Option<String>, what: &str, default: [u8; 6]) -> Result<[u8; 6]> {
    match s {
        None => Ok(default),
        Some(m) => parse_mac(m).with_context(|| format!("--{what} {m:?}: not a MAC address")),
    }
}

/// The ESP keying material from --key or --key-file.
pub fn esp_key(args: &Args) -> Result<SaKey> {
    let hex = match (&args.key, &args.key_file) {
        (Some(k), None) => k.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --key-file {}", f.display()))?,
        (Some(_), Some(_)) => bail!("give --key or --key-file, not both"),
        (None, None) => bail!("--mode esp needs --key or --key-file (key || 4-byte salt, hex)"),
    };
    let hex: String = hex
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("the ESP key is not hex");
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex"))
        .collect();
    let cipher = match bytes.len() {
        20 => Cipher::Aes128Gcm16,
        36 => Cipher::Aes256Gcm16,
        n => bail!(
            "the ESP key has {n} bytes: want 20 (aes128gcm16) or 36 (aes256gcm16), key || salt"
        ),
    };
    Ok(SaKey::from_keymat(cipher, &bytes)?)
}

fn resolve(args: &Args) -> Result<Plan> {
    let info = iface_info(&args.dev).with_context(|| format!("interface {}", args.dev))?;
    let mut notes = Vec::new();
    if args.threads == 0 || args.flows == 0 || args.tenants == 0 || args.sas == 0 {
        bail!("--threads, --flows, --tenants and --sas are at least 1");
    }
    if args.first_seq == 0 {
        bail!("--first-seq: sequence numbers start at 1 (RFC 4303 3.3.3)");
    }
    if args.flows > 65_536 {
        bail!("--flows: at most 65536 (UDP source ports)");
    }
    if args.tenants > 1 && args.vlan.is_none() {
        bail!("--tenants N needs --vlan ID (tenant t uses VLAN ID + t)");
    }
    if let Some(v) = args.vlan
        && (v == 0 || v as u32 + args.tenants - 1 > 4094)
    {
        bail!("--vlan: 1..=4094 for every tenant");
    }
    match args.mode {
        Mode::Esp if args.tenants > 1 => bail!("--tenants is for plain mode; ESP mode has --sas"),
        Mode::Plain if args.sas > 1 => bail!("--sas is for ESP mode"),
        _ => {}
    }
    let live = live_frames_available;
    let engine = match (args.engine, args.mode) {
        (Engine::Auto, Mode::Esp) | (Engine::Afxdp, _) => Engine::Afxdp,
        (Engine::Live, _) => {
            live().map_err(|why| {
                anyhow::anyhow!(
                    "XDP live frames: not available on this kernel ({why}); use --engine afxdp{}",
                    if args.mode == Mode::Plain {
                        " or --engine kernel"
                    } else {
                        ""
                    }
                )
            })?;
            Engine::Live
        }
        (Engine::Kernel, Mode::Esp) => {
            bail!("kernel pktgen cannot build ESP: use --engine afxdp (or live)")
        }
        (Engine::Auto, Mode::Plain) => {
            let (engine, note) = auto_engine(args.tenants, kernel::available(), live);
            notes.extend(note);
            engine
        }
        (Engine::Kernel, Mode::Plain) => {
            kernel::available().map_err(|why| {
                anyhow::anyhow!("kernel pktgen: not available on this kernel ({why})")
            })?;
            if args.tenants > 1 {
                bail!("kernel pktgen sends one VLAN per device: use --engine live for --tenants");
            }
            Engine::Kernel
        }
    };
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if engine == Engine::Kernel && args.threads > ncpu {
        bail!(
            "--threads {}: kernel pktgen has one thread per CPU ({ncpu})",
            args.threads
        );
    }
    if engine == Engine::Afxdp {
        let q = rx_queue_count(&args.dev)?;
        if args.threads > q {
            bail!(
                "--threads {}: {} has {q} queue(s); AF_XDP thread t sends on queue t",
                args.threads,
                args.dev
            );
        }
    }
    let (dsrc, ddst) = default_addrs(args.mode, args.ipv6);
    let src = args.src.unwrap_or(dsrc);
    let dst = args.dst.unwrap_or(ddst);
    if src.is_ipv6() != dst.is_ipv6() || src.is_ipv6() != args.ipv6 {
        bail!(
            "--src and --dst must both be IPv{} (--ipv6 selects IPv6)",
            if args.ipv6 { 6 } else { 4 }
        );
    }
    if args.mode == Mode::Esp && args.local.is_ipv6() != args.peer.is_ipv6() {
        bail!("--local and --peer must be of one family");
    }
    let frame = UdpFrame {
        dst_mac: mac_arg(&args.dst_mac, "dst-mac", [0xff; 6])?,
        src_mac: mac_arg(&args.src_mac, "src-mac", info.mac)?,
        vlan: args.vlan,
        src,
        dst,
        sport: args.sport,
        dport: args.dport,
    };
    // The largest frame: the interface's MTU of IP packet (plain); ESP frames are checked
    // against it once built.
    let max = frame.l2_len() + info.mtu as usize;
    // Kernel pktgen puts its own header into every UDP payload (and grows shorter frames).
    let min = frame.min_len()
        + if engine == Engine::Kernel {
            kernel::PKTGEN_HDR
        } else {
            0
        };
    let classes = args.size.clamp(min, max);
    for ((want, _), (got, _)) in args.size.classes().iter().zip(&classes) {
        if want != got {
            if *got < *want && matches!(args.size, Size::Fixed(_)) && args.mode == Mode::Plain {
                bail!(
                    "--size {want}: more than the MTU of {} allows ({got} bytes with these headers)",
                    args.dev
                );
            }
            notes.push(format!(
                "{want}-byte frames sent as {got} bytes ({})",
                if got <= want {
                    "the MTU allows no more"
                } else if engine == Engine::Kernel {
                    "the headers and kernel pktgen's 16-byte header need that much"
                } else {
                    "the headers need that much"
                }
            ));
        }
    }
    if engine == Engine::Kernel && args.sport as u32 + args.flows > u16::MAX as u32 {
        bail!(
            "--sport {} --flows {}: kernel pktgen's source ports end at 65534",
            args.sport,
            args.flows
        );
    }
    let (duration, count) = match (args.duration, args.count) {
        (None, None) => (Some(Duration::from_secs(10)), None),
        (d, c) => (d.map(|s| Duration::from_secs_f64(s.max(0.0))), c),
    };
    Ok(Plan {
        engine,
        frame,
        size: args.size,
        classes,
        duration,
        count,
        notes,
        mtu: info.mtu,
    })
}

/// Whether this kernel runs XDP live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`): asked of it, never
/// assumed (some kernels refuse the flag with EPERM, even to root). The reason when not.
pub fn live_frames_available() -> Result<(), String> {
    crate::probe::bpf::xdp_live_frames(1)
        .map_err(|e| format!("BPF_F_TEST_XDP_LIVE_FRAMES refused: {e}"))
}

/// The engine for plain tenant frames at a given rate when kernel pktgen is not wanted: XDP
/// live frames where the kernel runs them, else AF_XDP.
pub fn live_or_afxdp() -> Engine {
    match live_frames_available() {
        Ok(()) => Engine::Live,
        Err(_) => Engine::Afxdp,
    }
}

/// The ESP side of a plan.
pub(crate) fn outer(args: &Args) -> Outer {
    Outer {
        src: args.local,
        dst: args.peer,
        udp: args.udp_encap.then_some((NAT_T_PORT, NAT_T_PORT)),
        ttl: 64,
    }
}

/// Runs the generator as `args` says until done, `stop` set, or an error. Prints a progress
/// line to stderr once a second unless `args.quiet`.
pub fn run(args: &Args, stop: &AtomicBool) -> Result<Summary> {
    let _ns = args.netns.as_deref().map(NetnsGuard::enter).transpose()?;
    let plan = resolve(args)?;
    let threads = args.threads as usize;
    let quota = |t: usize| -> u64 {
        match plan.count {
            None => u64::MAX,
            Some(c) => c / threads as u64 + u64::from((t as u64) < c % threads as u64),
        }
    };
    let rate = args
        .rate
        .filter(|r| *r > 0)
        .map(|r| r as f64 / threads as f64);
    let before = tx_counters(&args.dev);
    let t0 = Instant::now();
    let progress: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    // The threads' stop flag: the caller's, or the first failure among them.
    let halt = &AtomicBool::new(false);
    let mut notes = plan.notes.clone();
    let mut ring_info = (None, false);

    let report = |progress: &[AtomicU64], last: &mut (Instant, u64)| {
        let now: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
        let dt = last.0.elapsed().as_secs_f64();
        if !args.quiet {
            eprintln!(
                "pktgen: {:6.1} s  sent {:>14}  {:>12.0} pps",
                t0.elapsed().as_secs_f64(),
                now,
                (now - last.1) as f64 / dt.max(1e-9)
            );
        }
        *last = (Instant::now(), now);
    };

    let results: Vec<Sent> = match plan.engine {
        Engine::Kernel => {
            let spec = kernel::KernelSpec {
                dev: args.dev.clone(),
                threads: args.threads,
                count: plan.count.unwrap_or(0),
                sizes: plan.classes.clone(),
                rate: args.rate.filter(|r| *r > 0),
                clone_skb: args.clone_skb,
                burst: args.burst,
                dst_mac: plan.frame.dst_mac,
                src_mac: plan.frame.src_mac,
                vlan: plan.frame.vlan,
                src: plan.frame.src,
                dst: plan.frame.dst,
                sport: args.sport,
                dport: args.dport,
                flows: args.flows,
            };
            let mut last = (Instant::now(), 0u64);
            let r = kernel::run(&spec, plan.duration, stop, |n| {
                progress[0].store(n, Ordering::Relaxed);
                report(&progress[..1], &mut last);
            })?;
            notes.extend(r.notes);
            // pktgen's own clock where it reports one (the wall clock also counts the
            // threads' start-up).
            r.devices
                .iter()
                .map(|d| Sent {
                    packets: d.packets,
                    bytes: d.bytes,
                    secs: d.usec.map_or(r.elapsed.as_secs_f64(), |u| u as f64 / 1e6),
                })
                .collect()
        }
        Engine::Live => {
            // Plain: one template the program varies. ESP: a ring of whole packets, thread t
            // taking every threads-th from t, as over AF_XDP.
            let streams: Vec<live::Stream> = match args.mode {
                Mode::Plain => {
                    let s =
                        live::Stream::new(&plan.frame, &plan.classes, args.flows, args.tenants)?;
                    vec![s; threads]
                }
                Mode::Esp => {
                    let entries = afxdp::ring_entries(args, &plan.classes, plan.count)
                        .min(live::RING_MAX * threads);
                    let ring = afxdp::esp_ring(args, &plan.frame, &plan.classes, entries)?;
                    ring_info.0 = Some(ring.len());
                    (0..threads)
                        .map(|t| live::Stream::from_ring(ring.part(t, threads).frames(&ring)))
                        .collect::<Result<_>>()?
                }
            };
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
            let r = std::thread::scope(|sc| -> Result<Vec<Sent>> {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (stream, progress) = (&streams[t], &progress[t]);
                        sc.spawn(move || -> Result<Sent> {
                            pin_to_cpu(t % ncpu)?;
                            let lim = Limits {
                                quota: quota(t),
                                duration: plan.duration,
                                rate,
                                stop: halt,
                                progress,
                            };
                            let mut g = live::LiveGen::for_stream(&args.dev, stream)?;
                            live::send(&mut g, stream, args.burst, &lim)
                        })
                    })
                    .collect();
                wait_threads(handles, &progress, report, stop, halt)
            })?;
            if args.mode == Mode::Esp {
                ring_info.1 = r
                    .iter()
                    .zip(&streams)
                    .any(|(s, st)| s.packets > st.ring.len() as u64);
            }
            r
        }
        Engine::Afxdp => {
            let ring = match args.mode {
                Mode::Esp => {
                    let entries = afxdp::ring_entries(args, &plan.classes, plan.count);
                    afxdp::esp_ring(args, &plan.frame, &plan.classes, entries)?
                }
                Mode::Plain => afxdp::plain_ring(
                    &plan.frame,
                    &plan.classes,
                    args.flows,
                    args.tenants,
                    threads,
                ),
            };
            if let Some(big) = ring.max_len()
                && big > plan.frame.l2_len().max(14) + plan.mtu as usize
            {
                notes.push(format!(
                    "the largest frame is {big} bytes, more than {} carries with MTU {}",
                    args.dev, plan.mtu
                ));
            }
            let parts: Vec<afxdp::Part> = (0..threads).map(|t| ring.part(t, threads)).collect();
            let r = std::thread::scope(|sc| -> Result<Vec<Sent>> {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (ring, part, progress) = (&ring, parts[t], &progress[t]);
                        sc.spawn(move || -> Result<Sent> {
                            let lim = Limits {
                                quota: quota(t),
                                duration: plan.duration,
                                rate,
                                stop: halt,
                                progress,
                            };
                            afxdp::send(&args.dev, t as u32, ring, part, args.burst, &lim)
                        })
                    })
                    .collect();
                wait_threads(handles, &progress, report, stop, halt)
            })?;
            ring_info = (
                Some(ring.len()),
                r.iter()
                    .zip(&parts)
                    .any(|(s, p)| s.packets > p.count() as u64),
            );
            r
        }
        Engine::Auto => unreachable!("resolved"),
    };
    if ring_info.1 && args.mode == Mode::Esp {
        notes.push(format!(
            "the ESP ring of {} packets was sent more than once: the receiving SA needs \
             replay_window = 0, else it drops the repeats as replays",
            ring_info.0.unwrap_or(0)
        ));
    }
    let after = tx_counters(&args.dev);
    let packets: u64 = results.iter().map(|s| s.packets).sum();
    let bytes: u64 = results.iter().map(|s| s.bytes).sum();
    let (ktx, kdrop) = match (before, after) {
        (Some(b), Some(a)) => (Some(a.0.saturating_sub(b.0)), Some(a.1.saturating_sub(b.1))),
        _ => (None, None),
    };
    if plan.engine == Engine::Live && ktx.is_some_and(|t| t < packets / 2) {
        notes.push(format!(
            "the kernel counted only {} of them as transmitted on {}: a veth hands XDP frames \
             only to a peer with a native XDP program, and loses them silently otherwise",
            ktx.unwrap_or(0),
            args.dev
        ));
    }
    if plan.engine == Engine::Live && kdrop.is_some_and(|d| d > 0) {
        notes.push(format!(
            "{} frames dropped on the way out: a veth delivers XDP frames only to a peer with a \
             native XDP program, and drops them when the peer's ring is full",
            kdrop.unwrap_or(0)
        ));
    }
    // From the first packet to the last, of the slowest thread.
    let secs = results.iter().map(|s| s.secs).fold(0.0, f64::max).max(1e-9);
    Ok(Summary {
        engine: plan.engine.name().into(),
        mode: args.mode,
        dev: args.dev.clone(),
        size: plan.size.to_string(),
        threads: args.threads,
        packets,
        bytes,
        duration_s: secs,
        pps: packets as f64 / secs,
        gbps: bytes as f64 * 8.0 / secs / 1e9,
        per_thread: results.iter().map(|s| s.packets).collect(),
        kernel_tx_packets: ktx,
        kernel_tx_dropped: kdrop,
        ring: ring_info.0,
        ring_repeated: ring_info.1,
        notes,
    })
}

/// Joins the generator threads, printing progress once a second meanwhile. `stop` (the
/// caller's) is copied into `halt` (the threads'); the first thread to fail halts the others.
fn wait_threads<'s>(
    handles: Vec<std::thread::ScopedJoinHandle<'s, Result<Sent>>>,
    progress: &[AtomicU64],
    report: impl Fn(&[AtomicU64], &mut (Instant, u64)),
    stop: &AtomicBool,
    halt: &AtomicBool,
) -> Result<Vec<Sent>> {
    let mut last = (Instant::now(), 0u64);
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<Result<Sent>>> = handles.iter().map(|_| None).collect();
    while results.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_millis(20));
        if stop.load(Ordering::Relaxed) {
            halt.store(true, Ordering::Relaxed);
        }
        for (h, r) in handles.iter_mut().zip(results.iter_mut()) {
            if h.as_ref().is_some_and(|h| h.is_finished()) {
                let res = h
                    .take()
                    .expect("present")
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked")));
                if res.is_err() {
                    halt.store(true, Ordering::Relaxed);
                }
                *r = Some(res);
            }
        }
        if last.0.elapsed() >= Duration::from_secs(1) {
            report(progress, &mut last);
        }
    }
    results.into_iter().map(|r| r.expect("joined")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_engine_prefers_kernel_then_live_then_afxdp() {
        let live_not_asked = || -> Result<(), String> { panic!("live frames asked needlessly") };
        assert_eq!(
            auto_engine(1, Ok(()), live_not_asked),
            (Engine::Kernel, None)
        );
        let (e, note) = auto_engine(1, Err("no /proc/net/pktgen".into()), || Ok(()));
        assert_eq!(e, Engine::Live);
        assert_eq!(
            note.unwrap(),
            "kernel pktgen: not available on this kernel (no /proc/net/pktgen); using XDP live \
             frames"
        );
        let (e, note) = auto_engine(3, Ok(()), || Ok(()));
        assert_eq!(e, Engine::Live);
        assert!(note.unwrap().contains("one VLAN per device (--tenants)"));
        let (e, note) = auto_engine(1, Err("none".into()), || Err("EPERM".into()));
        assert_eq!(e, Engine::Afxdp);
        assert!(
            note.unwrap()
                .ends_with("; XDP live frames: not available on this kernel (EPERM); using AF_XDP")
        );
    }

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
             veth0: 1000      10    0    1    0     0          0         0   640000   10000    0    7    0     0       0          0\n";
        assert_eq!(parse_net_dev(text, "veth0"), Some((10_000, 7)));
        assert_eq!(parse_net_dev(text, "lo"), Some((0, 0)));
        assert_eq!(parse_net_dev(text, "eth9"), None);
    }

    #[test]
    fn pacer_spreads_packets_over_time() {
        let mut p = Pacer::new(Some(100_000.0), 64);
        // A millisecond's worth at most, even after a long pause.
        assert_eq!(p.allowed(), 100);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(p.allowed(), 100);
        p.spend(100);
        assert!(p.allowed() < 20);
        let t = Instant::now();
        let mut sent = 0;
        while sent < 5_000 {
            let n = p.allowed().min(64);
            if n == 0 {
                p.wait_for(64);
                continue;
            }
            p.spend(n);
            sent += n;
        }
        let secs = t.elapsed().as_secs_f64();
        assert!(
            (0.04..0.2).contains(&secs),
            "5,000 at 100 kpps took {secs} s"
        );
        let mut free = Pacer::new(None, 64);
        assert_eq!(free.allowed(), u64::MAX);
    }

    #[test]
    fn options_parse() {
        let a = Args::try_parse_from([
            "vpn-pktgen",
            "--dev",
            "v0",
            "--size",
            "imix",
            "--mode",
            "esp",
            "--spi",
            "0xf0e0",
            "--key",
            "00112233445566778899aabbccddeeff01020304",
            "--udp-encap",
        ])
        .unwrap();
        assert_eq!(a.size, Size::Imix);
        assert_eq!(a.mode, Mode::Esp);
        assert_eq!(a.spi, 0xf0e0);
        assert!(esp_key(&a).is_ok());
        let mut b = a.clone();
        b.key = Some("0011".into());
        assert!(esp_key(&b).unwrap_err().to_string().contains("2 bytes"));
        assert_eq!(
            default_addrs(Mode::Esp, false).0,
            "10.2.0.9".parse::<IpAddr>().unwrap()
        );
        assert!(Args::try_parse_from(["vpn-pktgen", "--dev", "v0", "--size", "20"]).is_err());
    }
}
