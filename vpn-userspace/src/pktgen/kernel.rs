//! The kernel's own packet generator (`CONFIG_NET_PKTGEN`, Documentation/networking/pktgen.rst),
//! driven through `/proc/net/pktgen`: one `kpktgend_N` kernel thread per CPU, devices added
//! to threads, one command per write.
//!
//! The sequence written (see [`plan`]):
//! 1. `kpktgend_<t>`: `rem_device_all`, then `add_device <dev>@<t>` for each generator thread
//!    `t` (the `@t` suffix lets one interface sit on several threads; pktgen looks the
//!    interface up by the name before the `@`).
//! 2. `<dev>@<t>`: `count` (0 = until stopped), `pkt_size` or `imix_weights`, `clone_skb`,
//!    `burst`, `delay` (0, flat out) or `ratep` (packets/s of this thread), MACs, `vlan_id`,
//!    addresses (`dst`/`src_min`/`src_max`, or `dst6`/`src6`), flows as a range of UDP
//!    source ports (`udp_src_min`/`udp_src_max`, stepped sequentially per packet), the UDP
//!    destination port, and `queue_map_min`/`queue_map_max` = `t` so each thread has a queue.
//! 3. `pgctrl`: `start`. The write blocks until every device has sent its count, or until
//!    `stop` is written to `pgctrl` (which we do at the end of `--duration`, and on Ctrl-C).
//! 4. Each `<dev>@<t>` file then has `pkts-sofar: N  errors: E`, for IMIX
//!    `imix_size_counts: 64,N1 570,N2 1518,N3` (the lengths are drawn at random by weight, so
//!    these, not the weights, give the bytes), and `Result: OK: U(cC+dD) usec, N (...)`.
//!
//! What the real thing (Debian's 6.1) showed, and this module follows:
//! - Commands end with a newline: `pgctrl` cuts the last byte of every write (`start` without
//!   one is `star`, EINVAL).
//! - A rejected command fails the write itself (EINVAL for an unknown one, with
//!   `Result: No such parameter "..."`); `burst` above 1 and `clone_skb` above 0 fail with
//!   ENOTSUPP (524) on devices without `IFF_TX_SKB_SHARING`, such as a veth: they fall back to
//!   1 and 0, with a note.
//! - `pkt_size` and the IMIX lengths are frame lengths without the FCS, VLAN tag included;
//!   pktgen's own 16-byte header (magic, sequence number, timestamp) starts the UDP payload,
//!   and frames too short for it grow silently ("increased datalen"): [`PKTGEN_HDR`].
//! - `udp_src_max` is exclusive: the port steps from `udp_src_min` up and wraps back when it
//!   reaches the maximum, so N flows need `udp_src_max = udp_src_min + N`.
//! - A packet the driver refuses counts in `errors`, not in `pkts-sofar`, and is not retried
//!   as such: `count` packets are handed over in the end.
//! - UDP checksums are 0 (pktgen fills them only with `flag UDPCSUM`, and then leaves them to
//!   the device's offload, which a veth never completes): fine for IPv4, which allows 0.

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// `/proc/net/pktgen` of the calling thread's network namespace (`/proc/net` is the main
/// thread's, which need not be the one a library caller entered).
pub const PROC_DIR: &str = "/proc/thread-self/net/pktgen";

/// Why kernel pktgen cannot be used here, or Ok if it can. Tries `modprobe pktgen` first.
pub fn available() -> Result<(), String> {
    let ctl = Path::new(PROC_DIR).join("pgctrl");
    if ctl.exists() {
        return Ok(());
    }
    let probe = std::process::Command::new("modprobe")
        .arg("pktgen")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if ctl.exists() {
        return Ok(());
    }
    Err(match probe {
        Ok(_) => "no /proc/net/pktgen after modprobe pktgen".into(),
        Err(e) => format!("no /proc/net/pktgen, and modprobe could not run ({e})"),
    })
}

/// pktgen's header at the start of every frame's UDP payload (`struct pktgen_hdr`: magic
/// 0xbe9be955, sequence number, timestamp seconds and microseconds, all big-endian u32).
pub const PKTGEN_HDR: usize = 16;
/// `pktgen_hdr.pgh_magic`.
pub const PKTGEN_MAGIC: u32 = 0xbe9b_e955;

/// What kernel pktgen should send.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub dev: String,
    pub threads: u32,
    /// Total packets (split over the threads), 0: until stopped.
    pub count: u64,
    /// Frame lengths (no FCS, the tag included) and their weights: one entry is `pkt_size`,
    /// more are `imix_weights`. At least the headers plus [`PKTGEN_HDR`].
    pub sizes: Vec<(usize, u32)>,
    /// Total packets/s (split over the threads), None: as fast as possible.
    pub rate: Option<u64>,
    pub clone_skb: u32,
    pub burst: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flows: u32,
}

/// One write of one command to one file under `/proc/net/pktgen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write1 {
    pub file: String,
    pub cmd: String,
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The device entry of thread `t`.
pub fn device_name(dev: &str, t: u32) -> String {
    format!("{dev}@{t}")
}

/// Every write that sets the run up, in order (the final `start` included).
pub fn plan(s: &KernelSpec) -> Vec<Write1> {
    let mut w = Vec::new();
    let mut put = |file: &str, cmd: String| {
        w.push(Write1 {
            file: file.to_string(),
            cmd,
        })
    };
    let threads = s.threads.max(1);
    for t in 0..threads {
        let th = format!("kpktgend_{t}");
        put(&th, "rem_device_all".into());
        put(&th, format!("add_device {}", device_name(&s.dev, t)));
    }
    for t in 0..threads {
        let d = device_name(&s.dev, t);
        // Thread t's share; the first threads take the remainder.
        let share =
            |total: u64| total / threads as u64 + u64::from((t as u64) < total % threads as u64);
        put(
            &d,
            format!("count {}", if s.count == 0 { 0 } else { share(s.count) }),
        );
        match &s.sizes[..] {
            [(n, _)] => put(&d, format!("pkt_size {n}")),
            classes => put(
                &d,
                format!(
                    "imix_weights {}",
                    classes
                        .iter()
                        .map(|(l, w)| format!("{l},{w}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
        }
        put(&d, format!("clone_skb {}", s.clone_skb));
        put(&d, format!("burst {}", s.burst.max(1)));
        match s.rate {
            Some(r) => put(&d, format!("ratep {}", share(r).max(1))),
            None => put(&d, "delay 0".into()),
        }
        put(&d, format!("dst_mac {}", mac(&s.dst_mac)));
        put(&d, format!("src_mac {}", mac(&s.src_mac)));
        if let Some(v) = s.vlan {
            put(&d, format!("vlan_id {v}"));
        }
        match (s.src, s.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                put(&d, format!("dst6 {dst}"));
                put(&d, format!("src6 {src}"));
            }
            (src, dst) => {
                put(&d, format!("dst {dst}"));
                put(&d, format!("src_min {src}"));
                put(&d, format!("src_max {src}"));
            }
        }
        // The maximum is exclusive (see the module documentation).
        let end = if s.flows > 1 {
            (s.sport as u32 + s.flows).min(u16::MAX as u32)
        } else {
            s.sport as u32
        };
        put(&d, format!("udp_src_min {}", s.sport));
        put(&d, format!("udp_src_max {end}"));
        put(&d, format!("udp_dst_min {}", s.dport));
        put(&d, format!("udp_dst_max {}", s.dport));
        put(&d, format!("queue_map_min {t}"));
        put(&d, format!("queue_map_max {t}"));
    }
    put("pgctrl", "start".into());
    w
}

/// Writes one command, newline-terminated, in one write (as pktgen wants: `pgctrl` drops
/// the last byte of a write as the newline, so a bare `start` would arrive as `star`).
fn write_raw(dir: &Path, w: &Write1) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&w.file))?;
    f.write_all(format!("{}\n", w.cmd).as_bytes())
}

/// Writes one command; a failed write names the command and pktgen's `Result:` line of a
/// device (which says why, e.g. `No such parameter "bogus"`), and so does a device's
/// `Result:` that is not OK after a write that went through.
fn write_cmd(dir: &Path, w: &Write1) -> Result<()> {
    match write_raw(dir, w) {
        Ok(()) => check_result(dir, w),
        Err(e) => Err(write_error(dir, w, e)),
    }
}

/// The error of a failed write of `w`.
fn write_error(dir: &Path, w: &Write1, e: std::io::Error) -> anyhow::Error {
    let path = dir.join(&w.file);
    let e = if e.raw_os_error() == Some(ENOTSUPP) {
        std::io::Error::other("not supported by this device (ENOTSUPP)")
    } else {
        e
    };
    let why = if w.file.contains('@') {
        let state = std::fs::read_to_string(&path).unwrap_or_default();
        result_line(&state).map_or(String::new(), |r| format!(" ({r})"))
    } else {
        String::new()
    };
    anyhow::anyhow!("{}: `{}`: {e}{why}", path.display(), w.cmd)
}

/// After a device command: its `Result:` line must be OK.
fn check_result(dir: &Path, w: &Write1) -> Result<()> {
    if w.file.contains('@') {
        let path = dir.join(&w.file);
        let state = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(r) = result_line(&state)
            && !r.starts_with("Result: OK")
        {
            bail!("{}: `{}` rejected: {r}", path.display(), w.cmd);
        }
    }
    Ok(())
}

/// The kernel's internal "operation not supported" (not a user-space errno; strerror calls
/// it "Unknown error 524"), which pktgen returns for `burst` and `clone_skb` on devices that
/// cannot transmit one skb several times.
const ENOTSUPP: i32 = 524;

/// Writes a setup command; `burst N` and `clone_skb N` that the device does not support fall
/// back to 1 and 0, and say so in `notes` (once per setting).
fn write_setup(dir: &Path, w: &Write1, dev: &str, notes: &mut Vec<String>) -> Result<()> {
    let fallback = match w.cmd.split_whitespace().next() {
        Some("burst") => Some(("burst", "1")),
        Some("clone_skb") => Some(("clone_skb", "0")),
        _ => None,
    };
    match (write_raw(dir, w), fallback) {
        (Ok(()), _) => check_result(dir, w),
        (Err(e), Some((key, value)))
            if matches!(e.raw_os_error(), Some(ENOTSUPP) | Some(libc::EOPNOTSUPP)) =>
        {
            let note = format!(
                "kernel pktgen: {dev} does not take `{}` (no shared skbs: e.g. a veth); \
                 {key} {value} instead",
                w.cmd
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
            write_cmd(
                dir,
                &Write1 {
                    file: w.file.clone(),
                    cmd: format!("{key} {value}"),
                },
            )
        }
        (Err(e), _) => Err(write_error(dir, w, e)),
    }
}

/// The `Result:` line of a device file.
pub fn result_line(state: &str) -> Option<&str> {
    state
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Result:"))
}

/// The number after `key` (e.g. `pkts-sofar:`) in a device file.
fn number_after(state: &str, key: &str) -> Option<u64> {
    let i = state.find(key)?;
    state[i + key.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `pkts-sofar: N` of a device file.
pub fn packets_so_far(state: &str) -> Option<u64> {
    number_after(state, "pkts-sofar:")
}

/// What one device (`<dev>@<t>`) did, from its file after the run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceResult {
    /// `pkts-sofar`: packets the driver took.
    pub packets: u64,
    /// Their bytes (frames without FCS): from `imix_size_counts` for IMIX, else packets times
    /// the one length.
    pub bytes: u64,
    /// Transmit attempts the driver refused (`errors`).
    pub errors: u64,
    /// The run's length by pktgen's clock (`Result: OK: U(...) usec`).
    pub usec: Option<u64>,
}

/// Reads a device file; `sizes` is what [`KernelSpec::sizes`] asked for.
pub fn parse_device(state: &str, sizes: &[(usize, u32)]) -> DeviceResult {
    let packets = packets_so_far(state).unwrap_or(0);
    let imix: Option<u64> = state
        .lines()
        .find_map(|l| l.trim().strip_prefix("imix_size_counts:"))
        .map(|counts| {
            counts
                .split_whitespace()
                .filter_map(|e| {
                    let (len, n) = e.split_once(',')?;
                    Some(len.parse::<u64>().ok()? * n.parse::<u64>().ok()?)
                })
                .sum()
        });
    let bytes = match (imix, sizes) {
        (Some(b), _) => b,
        (None, [(len, _), ..]) => packets * *len as u64,
        (None, []) => 0,
    };
    let usec = result_line(state)
        .and_then(|r| r.strip_prefix("Result: OK:"))
        .and_then(|r| {
            r.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
    DeviceResult {
        packets,
        bytes,
        errors: number_after(state, "errors:").unwrap_or(0),
        usec,
    }
}

/// What a run did: one entry per generator thread, the wall-clock time from `start` to its
/// end, and what is worth telling (fallbacks, refused packets).
#[derive(Clone, Debug)]
pub struct KernelRun {
    pub devices: Vec<DeviceResult>,
    pub elapsed: Duration,
    pub notes: Vec<String>,
}

/// How long a run may go without sending a packet before it is stopped as stalled.
const STALL: Duration = Duration::from_secs(15);

/// Runs the plan: sets everything up, starts, stops after `duration` (or when `stop` is set),
/// and returns what each thread sent. `progress` is called about once a second with the
/// total so far.
pub fn run(
    s: &KernelSpec,
    duration: Option<Duration>,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<KernelRun> {
    let dir = PathBuf::from(PROC_DIR);
    let writes = plan(s);
    let (start_cmd, setup) = writes.split_last().expect("plan ends with start");
    let mut notes = Vec::new();
    for w in setup {
        write_setup(&dir, w, &s.dev, &mut notes)?;
    }
    let devices: Vec<PathBuf> = (0..s.threads.max(1))
        .map(|t| dir.join(device_name(&s.dev, t)))
        .collect();
    let sofar = |devices: &[PathBuf]| -> Vec<u64> {
        devices
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|st| packets_so_far(&st))
                    .unwrap_or(0)
            })
            .collect()
    };
    // `start` blocks until the run ends: write it from a thread, stop from here.
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let starter = {
        let (dir, w, done) = (dir.clone(), start_cmd.clone(), done.clone());
        std::thread::spawn(move || {
            let r = write_cmd(&dir, &w);
            done.store(true, Ordering::Release);
            r
        })
    };
    let mut last = Instant::now();
    let mut stopped = false;
    // A run bounded by a count alone still ends: no packet for STALL stops it with an error.
    let (mut seen, mut moved) = (0u64, Instant::now());
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        let over = duration.is_some_and(|d| t0.elapsed() >= d);
        if (over || stop.load(Ordering::Relaxed)) && !stopped {
            write_cmd(
                &dir,
                &Write1 {
                    file: "pgctrl".into(),
                    cmd: "stop".into(),
                },
            )?;
            stopped = true;
        }
        if stopped && t0.elapsed() > duration.unwrap_or_default() + Duration::from_secs(10) {
            bail!("kernel pktgen did not stop within 10 s of `stop`");
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let n: u64 = sofar(&devices).iter().sum();
            progress(n);
            if n != seen {
                (seen, moved) = (n, Instant::now());
            } else if !stopped
                && moved.elapsed() >= STALL
                && s.rate
                    .is_none_or(|r| r.saturating_mul(STALL.as_secs()) >= 2)
            {
                let _ = write_cmd(
                    &dir,
                    &Write1 {
                        file: "pgctrl".into(),
                        cmd: "stop".into(),
                    },
                );
                bail!(
                    "kernel pktgen sent nothing for {} s ({n} packets so far): stopped; \
                     see the device's state in {}",
                    STALL.as_secs(),
                    devices[0].display()
                );
            }
        }
    }
    let elapsed = t0.elapsed();
    starter
        .join()
        .map_err(|_| anyhow::anyhow!("pktgen start thread panicked"))??;
    let results: Vec<DeviceResult> = devices
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map(|st| parse_device(&st, &s.sizes))
        })
        .collect::<Result<_>>()?;
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    if errors > 0 {
        notes.push(format!(
            "kernel pktgen: {dev} refused {errors} transmit attempts (not counted as sent; e.g. \
             a veth whose peer's XDP ring was full)",
            dev = s.dev
        ));
    }
    // Leave the threads without devices.
    for t in 0..s.threads.max(1) {
        let _ = write_cmd(
            &dir,
            &Write1 {
                file: format!("kpktgend_{t}"),
                cmd: "rem_device_all".into(),
            },
        );
    }
    Ok(KernelRun {
        devices: results,
        elapsed,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KernelSpec {
        KernelSpec {
            dev: "veth0".into(),
            threads: 2,
            count: 1001,
            sizes: vec![(64, 1)],
            rate: Some(100_000),
            clone_skb: 0,
            burst: 8,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlan: Some(100),
            src: "10.1.0.5".parse().unwrap(),
            dst: "10.2.0.9".parse().unwrap(),
            sport: 10_000,
            dport: 9,
            flows: 16,
        }
    }

    fn lines(w: &[Write1]) -> Vec<String> {
        w.iter().map(|w| format!("{}: {}", w.file, w.cmd)).collect()
    }

    #[test]
    fn the_command_sequence() {
        let got = lines(&plan(&spec()));
        let dev = |t: u32, rest: &[&str]| -> Vec<String> {
            rest.iter().map(|c| format!("veth0@{t}: {c}")).collect()
        };
        let mut want = vec![
            "kpktgend_0: rem_device_all".to_string(),
            "kpktgend_0: add_device veth0@0".into(),
            "kpktgend_1: rem_device_all".into(),
            "kpktgend_1: add_device veth0@1".into(),
        ];
        let common = |t: u32, count: &str| {
            let q_min = format!("queue_map_min {t}");
            let q_max = format!("queue_map_max {t}");
            dev(
                t,
                &[
                    count,
                    "pkt_size 64",
                    "clone_skb 0",
                    "burst 8",
                    "ratep 50000",
                    "dst_mac 02:00:00:00:00:01",
                    "src_mac 02:00:00:00:00:02",
                    "vlan_id 100",
                    "dst 10.2.0.9",
                    "src_min 10.1.0.5",
                    "src_max 10.1.0.5",
                    "udp_src_min 10000",
                    "udp_src_max 10016",
                    "udp_dst_min 9",
                    "udp_dst_max 9",
                    &q_min,
                    &q_max,
                ],
            )
        };
        want.extend(common(0, "count 501"));
        want.extend(common(1, "count 500"));
        want.push("pgctrl: start".into());
        assert_eq!(got, want);
    }

    #[test]
    fn flat_out_imix_ipv6_until_stopped() {
        let mut s = spec();
        s.threads = 1;
        s.count = 0;
        s.rate = None;
        s.sizes = crate::pktgen::frame::IMIX.to_vec();
        s.vlan = None;
        s.flows = 1;
        s.src = "fd00:1::5".parse().unwrap();
        s.dst = "fd00:2::9".parse().unwrap();
        let got = lines(&plan(&s));
        for want in [
            "veth0@0: count 0",
            "veth0@0: imix_weights 64,7 570,4 1518,1",
            "veth0@0: delay 0",
            "veth0@0: dst6 fd00:2::9",
            "veth0@0: src6 fd00:1::5",
            "veth0@0: udp_src_min 10000",
            "veth0@0: udp_src_max 10000",
        ] {
            assert!(
                got.iter().any(|l| l == want),
                "{want} missing from {got:#?}"
            );
        }
        assert!(
            !got.iter()
                .any(|l| l.contains("vlan_id") || l.contains("ratep"))
        );
        assert_eq!(got.last().map(String::as_str), Some("pgctrl: start"));
    }

    #[test]
    fn reads_the_device_file() {
        let running = "Params: count 0  min_pkt_size: 64  max_pkt_size: 64\n\
                       Current:\n     pkts-sofar: 123456  errors: 0\n     started: 1us\n\
                       Result: OK: 0(c0+d0) usec, 0 (64byte,0frags)\n";
        assert_eq!(packets_so_far(running), Some(123_456));
        assert!(result_line(running).unwrap().starts_with("Result: OK"));
        let rejected = "Result: No such parameter \"bogus\"\n";
        assert_eq!(
            result_line(rejected),
            Some("Result: No such parameter \"bogus\"")
        );
    }

    /// Device files as Debian's 6.1 wrote them after a run (IMIX with a VLAN tag; fixed).
    #[test]
    fn reads_a_finished_run() {
        let imix = "Params: count 1000  min_pkt_size: 64  max_pkt_size: 64
     imix_weights: 64,7 570,4 1518,1 
     frags: 0  delay: 0  clone_skb: 0  ifname: pg0@0
     vlan_id: 100  vlan_p: 0  vlan_cfi: 0
     Flags: 
Current:
     pkts-sofar: 1000  errors: 3
     imix_size_counts: 64,613 570,298 1518,89 
     started: 7204635us  stopped: 7221820us idle: 23us
     seq_num: 1001  cur_dst_mac_offset: 0  cur_src_mac_offset: 0
     cur_udp_dst: 9  cur_udp_src: 10000
Result: OK: 17185(c17161+d23) usec, 1000 (64byte,0frags)
  58187pps 160Mb/sec (160222332bps) errors: 3
";
        assert_eq!(
            parse_device(imix, &crate::pktgen::frame::IMIX),
            DeviceResult {
                packets: 1000,
                // 613 x 64 + 298 x 570 + 89 x 1518: what the receiving veth counted.
                bytes: 344_194,
                errors: 3,
                usec: Some(17_185),
            }
        );
        let fixed = "Current:\n     pkts-sofar: 500  errors: 0\n\
                     Result: OK: 9000(c8000+d1000) usec, 500 (1000byte,0frags)\n";
        assert_eq!(
            parse_device(fixed, &[(1000, 1)]),
            DeviceResult {
                packets: 500,
                bytes: 500_000,
                errors: 0,
                usec: Some(9000),
            }
        );
        assert_eq!(parse_device("Result: Idle\n", &[(64, 1)]).usec, None);
    }
}
