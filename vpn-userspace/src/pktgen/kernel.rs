//! The kernel's own packet generator (`CONFIG_NET_PKTGEN`, Documentation/networking/pktgen.rst),
//! driven through `/proc/net/pktgen`: one `kpktgend_N` kernel thread per CPU, devices added
//! to threads, one command per write.
//!
//! The sequence written (see [`plan`]):
//! 1. `kpktgend_<t>`: `rem_device_all`, then `add_device <dev>@<t>` for each generator thread
//!    `t` (the `@t` suffix lets one interface sit on several threads).
//! 2. `<dev>@<t>`: `count` (0 = until stopped), `pkt_size` or `imix_weights`, `clone_skb`,
//!    `burst`, `delay` (0, flat out) or `ratep` (packets/s of this thread), MACs, `vlan_id`,
//!    addresses (`dst`/`src_min`/`src_max`, or `dst6`/`src6`), flows as a range of UDP
//!    source ports (`udp_src_min`/`udp_src_max`, stepped sequentially per packet), the UDP
//!    destination port, and `queue_map_min`/`queue_map_max` = `t` so each thread has a queue.
//! 3. `pgctrl`: `start`. The write blocks until every device has sent its count, or until
//!    `stop` is written to `pgctrl` (which we do at the end of `--duration`, and on Ctrl-C).
//! 4. Each `<dev>@<t>` file then has a `Result: OK: ...` line, and while running a
//!    `pkts-sofar: N` line.
//!
//! Kernel pktgen sizes also count the frame without its FCS, and its frames carry its own
//! 16-byte header (magic, sequence number, timestamp) at the start of the UDP payload.

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

use super::frame::Size;

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

/// What kernel pktgen should send.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub dev: String,
    pub threads: u32,
    /// Total packets (split over the threads), 0: until stopped.
    pub count: u64,
    pub size: Size,
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
        match s.size {
            Size::Fixed(n) => put(&d, format!("pkt_size {n}")),
            Size::Imix => put(
                &d,
                format!(
                    "imix_weights {}",
                    s.size
                        .classes()
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
        let last = s.sport.wrapping_add((s.flows.max(1) - 1) as u16);
        put(&d, format!("udp_src_min {}", s.sport));
        put(&d, format!("udp_src_max {last}"));
        put(&d, format!("udp_dst_min {}", s.dport));
        put(&d, format!("udp_dst_max {}", s.dport));
        put(&d, format!("queue_map_min {t}"));
        put(&d, format!("queue_map_max {t}"));
    }
    put("pgctrl", "start".into());
    w
}

/// Writes one command; pktgen reports a rejected command in the device file's `Result:`
/// line rather than through the write, so that line is checked after device commands.
fn write_cmd(dir: &Path, w: &Write1) -> Result<()> {
    let path = dir.join(&w.file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(w.cmd.as_bytes())
        .with_context(|| format!("{}: {}", path.display(), w.cmd))?;
    if w.file.contains('@') {
        let state = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(r) = result_line(&state)
            && !r.starts_with("Result: OK")
        {
            bail!("{}: `{}` rejected: {r}", path.display(), w.cmd);
        }
    }
    Ok(())
}

/// The `Result:` line of a device file.
pub fn result_line(state: &str) -> Option<&str> {
    state
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Result:"))
}

/// `pkts-sofar: N` of a device file.
pub fn packets_so_far(state: &str) -> Option<u64> {
    let i = state.find("pkts-sofar:")?;
    state[i + "pkts-sofar:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs the plan: sets everything up, starts, stops after `duration` (or when `stop` is set),
/// and returns the packets sent by each thread. `progress` is called about once a second
/// with the total so far.
pub fn run(
    s: &KernelSpec,
    duration: Option<Duration>,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<(Vec<u64>, Duration)> {
    let dir = PathBuf::from(PROC_DIR);
    let writes = plan(s);
    let (start_cmd, setup) = writes.split_last().expect("plan ends with start");
    for w in setup {
        write_cmd(&dir, w)?;
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
            progress(sofar(&devices).iter().sum());
        }
    }
    let elapsed = t0.elapsed();
    starter
        .join()
        .map_err(|_| anyhow::anyhow!("pktgen start thread panicked"))??;
    let sent = sofar(&devices);
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
    Ok((sent, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KernelSpec {
        KernelSpec {
            dev: "veth0".into(),
            threads: 2,
            count: 1001,
            size: Size::Fixed(64),
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
                    "udp_src_max 10015",
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
        s.size = Size::Imix;
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
}
