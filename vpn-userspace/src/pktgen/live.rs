//! XDP live frames: `BPF_PROG_RUN` of `pktgen_tx` with `BPF_F_TEST_XDP_LIVE_FRAMES`. The
//! kernel fills a page pool with copies of the template, runs the program on each frame in
//! batches, and transmits the `XDP_TX` ones on the interface named as ingress (looked up in
//! the caller's network namespace), toward its peer. Nothing is allocated per packet.
//!
//! One test run costs a page pool set-up and tear-down, which took 17-30 ms each here (2-vCPU
//! VM, kernel 6.18) whatever the number of frames, so everything that varies per packet is
//! done by the program (`vpn_common::pktgen`): frame lengths (IMIX), tenants, flows, and
//! pacing against `bpf_ktime_get_ns`. User space runs one template (the largest frame) in
//! runs of about [`CALL_SECS`] each and looks at the deadline, the stop flag and the count in
//! between. A paced thread spins in the kernel between frames: it keeps its CPU busy.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use vpn_common::pktgen::{
    HDR_MAX, PktgenConfig, RING_FRAME_MAX, RingFrame, SIZES_MAX, TX_PACKETS, TX_REWRITTEN,
    TX_SKIPPED, names,
};

use super::{
    Limits, PKTGEN_OBJECT, Sent,
    frame::{UdpFrame, sequence},
};
use crate::dataplane::neigh::iface_info;

/// Largest batch the kernel takes (TEST_XDP_MAX_BATCH).
pub const MAX_BATCH: u32 = 256;
/// Length of one test run, aimed at.
pub const CALL_SECS: f64 = 0.25;
/// Iterations of the first run, before the speed is known.
const FIRST_CALL: f64 = 65_536.0;
/// Most ring frames one thread's program holds (2 KiB of map each).
pub const RING_MAX: usize = 8192;

/// What one generator thread sends: the template and how the program varies it, or a ring
/// of whole frames.
#[derive(Clone, Debug)]
pub struct Stream {
    /// The largest frame, tenant 0, flow 0 (ring streams: zeros as long as the longest).
    pub template: Vec<u8>,
    /// Frame lengths in sending order.
    pub sizes: Vec<usize>,
    /// Whole frames sent in turn (empty: the template, varied).
    pub ring: Vec<Vec<u8>>,
    /// Everything but pacing and the limit.
    pub cfg: PktgenConfig,
}

impl Stream {
    /// Frames of `classes` (lengths and weights), tenant t on VLAN `frame.vlan + t`, flow f on
    /// UDP source port `frame.sport + f`.
    pub fn new(
        frame: &UdpFrame,
        classes: &[(usize, u32)],
        flows: u32,
        tenants: u32,
    ) -> Result<Stream> {
        let sizes = sequence(classes);
        if sizes.is_empty() || sizes.len() > SIZES_MAX {
            bail!("{} frame lengths in a period: 1..={SIZES_MAX}", sizes.len());
        }
        if tenants > 1 && frame.vlan.is_none() {
            bail!("tenants are VLAN ids: give the frames a VLAN tag");
        }
        let max = *sizes.iter().max().expect("not empty");
        let template = frame.build(max);
        let hdr_len = frame.min_len().min(HDR_MAX) & !1;
        let mut cfg = PktgenConfig {
            flows,
            tenants,
            sport_base: frame.sport,
            vlan_base: frame.vlan.unwrap_or(0),
            hdr_len: hdr_len as u16,
            l3_off: frame.l2_len() as u16,
            l4_off: (frame.l2_len() + if frame.src.is_ipv6() { 40 } else { 20 }) as u16,
            nsizes: sizes.len() as u16,
            ipv6: frame.src.is_ipv6() as u16,
            ..Default::default()
        };
        cfg.hdr[..hdr_len].copy_from_slice(&template[..hdr_len]);
        for (d, s) in cfg.sizes.iter_mut().zip(&sizes) {
            *d = (*s).max(frame.min_len()) as u16;
        }
        Ok(Stream {
            template,
            sizes,
            ring: Vec::new(),
            cfg,
        })
    }

    /// Whole frames (pre-built ESP packets), sent in turn and then again.
    pub fn from_ring(frames: Vec<Vec<u8>>) -> Result<Stream> {
        if frames.is_empty() || frames.len() > RING_MAX {
            bail!("{} ring frames: 1..={RING_MAX} per thread", frames.len());
        }
        let max = frames.iter().map(Vec::len).max().unwrap_or(0);
        if frames.iter().any(|f| f.is_empty()) || max > RING_FRAME_MAX {
            bail!("ring frames are 1..={RING_FRAME_MAX} bytes");
        }
        Ok(Stream {
            template: vec![0; max],
            sizes: frames.iter().map(Vec::len).collect(),
            cfg: PktgenConfig {
                ring_len: frames.len() as u32,
                ..Default::default()
            },
            ring: frames,
        })
    }

    /// Bytes of the packets with counter values `from..to` (the program picks lengths by it).
    pub fn bytes(&self, from: u64, to: u64) -> u64 {
        let k = if self.ring.is_empty() {
            self.cfg.nsizes.max(1) as u64
        } else {
            self.ring.len() as u64
        };
        let len = |n: u64| -> u64 {
            if !self.ring.is_empty() {
                self.ring[(n % k) as usize].len() as u64
            } else if self.cfg.nsizes <= 1 {
                self.template.len() as u64
            } else {
                self.cfg.sizes[(n % k) as usize] as u64
            }
        };
        let period: u64 = (0..k).map(len).sum();
        let full = (to - from) / k;
        full * period + (from + full * k..to).map(len).sum::<u64>()
    }
}

/// `pktgen_tx`, loaded, for one interface.
pub struct LiveGen {
    ebpf: Ebpf,
    ifindex: u32,
}

impl LiveGen {
    /// Loads the program (in the calling thread's namespace, where `ifname` must be).
    pub fn load(ifname: &str) -> Result<LiveGen> {
        LiveGen::load_ring(ifname, 1)
    }

    /// Loads the program with room for `ring` whole frames, and puts `stream`'s there if it
    /// has any.
    pub fn for_stream(ifname: &str, stream: &Stream) -> Result<LiveGen> {
        let mut g = LiveGen::load_ring(ifname, stream.ring.len().max(1) as u32)?;
        let mut m: Array<_, RingFrame> =
            Array::try_from(g.ebpf.map_mut(names::PKTGEN_RING).context("PKTGEN_RING")?)?;
        for (i, f) in stream.ring.iter().enumerate() {
            let e = RingFrame::new(f).context("ring frame too long")?;
            m.set(i as u32, e, 0)?;
        }
        Ok(g)
    }

    fn load_ring(ifname: &str, entries: u32) -> Result<LiveGen> {
        let ifindex = iface_info(ifname)?.index;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::PKTGEN_RING, entries.max(1))
            .load(PKTGEN_OBJECT)
            .context("loading the pktgen XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PKTGEN_TX)
            .context("pktgen_tx missing from the object")?
            .try_into()?;
        prog.load().context("verifier rejected pktgen_tx")?;
        Ok(LiveGen { ebpf, ifindex })
    }

    pub fn configure(&mut self, cfg: PktgenConfig) -> Result<()> {
        let mut m: Array<_, PktgenConfig> = Array::try_from(
            self.ebpf
                .map_mut(names::PKTGEN_CONFIG)
                .context("PKTGEN_CONFIG")?,
        )?;
        m.set(0, cfg, 0)?;
        Ok(())
    }

    fn prog(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(names::PKTGEN_TX)
            .context("pktgen_tx")?
            .try_into()?)
    }

    /// Runs the program `repeat` times on copies of `frame` (live), `batch` per run of the
    /// kernel's loop.
    pub fn send(&self, frame: &[u8], repeat: u32, batch: u32) -> Result<()> {
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.ifindex.to_ne_bytes());
        let r = self.prog()?.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: repeat.max(1),
            attrs: TestRunAttrs::new().xdp_live_frames(batch.clamp(1, MAX_BATCH)),
            ..Default::default()
        });
        match r {
            Ok(_) => Ok(()),
            // A signal (Ctrl-C) ends the kernel's loop early; the caller looks at its stop
            // flag, and the program's counters say what went out.
            Err(ProgramError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::Interrupted =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("BPF_PROG_RUN with XDP live frames"),
        }
    }

    /// One ordinary (not live) test run on `frame`: the verdict and the frame as the program
    /// left it, to check what it does to a packet.
    pub fn run_once(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self
            .prog()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .context("BPF_PROG_RUN of pktgen_tx")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    fn stat(&self, idx: u32) -> Result<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::PKTGEN_STATS).context("PKTGEN_STATS")?)?;
        Ok(m.get(&idx, 0)?.iter().sum())
    }

    /// Frames the program returned XDP_TX for, so far.
    pub fn sent(&self) -> Result<u64> {
        self.stat(TX_PACKETS)
    }

    /// Frames it dropped as not due yet (pacing) or past the limit.
    pub fn skipped(&self) -> Result<u64> {
        self.stat(TX_SKIPPED)
    }

    /// Frames whose flow (UDP source port) it set.
    pub fn rewritten(&self) -> Result<u64> {
        self.stat(TX_REWRITTEN)
    }
}

/// Sends `stream` until `lim` says stop. The packets counted are the program's own. The
/// thread must stay on one CPU (the program's counters are per CPU).
pub fn send(g: &mut LiveGen, stream: &Stream, burst: u32, lim: &Limits<'_>) -> Result<Sent> {
    let burst = burst.clamp(1, MAX_BATCH);
    let base = g.sent()?;
    let mut cfg = stream.cfg;
    if let Some(r) = lim.rate.filter(|r| *r > 0.0) {
        cfg.interval_ns = (1e9 / r).max(1.0) as u64;
        // Catch up by one batch at most: a late start never becomes a long burst.
        cfg.slack_ns = cfg.interval_ns * burst as u64;
    }
    if lim.quota != u64::MAX {
        cfg.limit = base + lim.quota;
    }
    g.configure(cfg)?;
    let clock = lim.begin(burst as u64);
    let mut iter_rate = 0.0f64;
    // Iterations per packet sent (1 flat out; more when pacing skips frames).
    let mut per_sent = 1.0f64;
    let mut sent = 0u64;
    while !lim.done(&clock, sent) {
        let slot = clock
            .time_left()
            .map_or(CALL_SECS, |t| t.as_secs_f64().min(CALL_SECS));
        let mut iters = if iter_rate > 0.0 {
            iter_rate * slot
        } else {
            FIRST_CALL
        };
        if lim.quota != u64::MAX {
            iters = iters.min((lim.quota - sent) as f64 * per_sent + burst as f64);
        }
        let iters = iters.clamp(1.0, u32::MAX as f64) as u32;
        let t = Instant::now();
        g.send(&stream.template, iters, burst)?;
        let dt = t.elapsed().max(Duration::from_micros(1));
        iter_rate = iters as f64 / dt.as_secs_f64();
        let now = g.sent()? - base;
        per_sent = (iters as f64 / (now - sent).max(1) as f64).max(1.0);
        sent = now;
        lim.progress.store(sent, Ordering::Relaxed);
    }
    let secs = clock.start.elapsed().as_secs_f64();
    Ok(Sent {
        packets: sent,
        bytes: stream.bytes(base, base + sent),
        secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktgen::frame::Size;

    fn frame(vlan: Option<u16>) -> UdpFrame {
        UdpFrame {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            src: "10.1.0.5".parse().unwrap(),
            dst: "10.2.0.9".parse().unwrap(),
            sport: 10_000,
            dport: 9,
        }
    }

    #[test]
    fn stream_of_the_imix() {
        let s = Stream::new(&frame(Some(100)), &Size::Imix.clamp(46, 1518), 4, 3).unwrap();
        assert_eq!(s.template.len(), 1518);
        assert_eq!(s.cfg.nsizes, 12);
        assert_eq!(&s.cfg.sizes[..3], &[64, 570, 64]);
        assert_eq!((s.cfg.l3_off, s.cfg.l4_off, s.cfg.hdr_len), (18, 38, 46));
        assert_eq!(&s.cfg.hdr[..46], &s.template[..46]);
        assert_eq!((s.cfg.vlan_base, s.cfg.tenants, s.cfg.flows), (100, 3, 4));
        // One period is 7 x 64 + 4 x 570 + 1518 bytes.
        assert_eq!(s.bytes(0, 12), 4246);
        assert_eq!(s.bytes(5, 5 + 24), 2 * 4246);
        assert_eq!(s.bytes(0, 2), 64 + 570);
        assert!(
            Stream::new(&frame(None), &[(64, 1)], 1, 2).is_err(),
            "tenants need a tag"
        );
        let one = Stream::new(&frame(None), &[(1400, 1)], 1, 1).unwrap();
        assert_eq!(one.bytes(3, 13), 14_000);
    }
}
