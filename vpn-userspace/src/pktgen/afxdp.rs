//! The AF_XDP transmitter: a ring of pre-built frames, sent from one AF_XDP socket per
//! generator thread (thread `t` binds queue `t`; a veth hands the frames to its peer's rx
//! queue `t`). Thread `t` of `n` owns every n-th frame of the ring from `t` and goes round
//! them; the socket
//! copies a frame into a free UMEM frame, queues up to `--burst` descriptors and kicks the
//! kernel once (copy mode on veth: the kick is what transmits).
//!
//! ESP rings hold valid tunnel-mode packets built by the project's own
//! [`OutboundSa::encapsulate`]: packet `k` goes to SA `k mod sas`, flow `(k / sas) mod flows`,
//! and its length follows the size sequence (the IMIX order for `imix`). Every SA's sequence
//! numbers run 1, 2, ... (or from `--first-seq`) through the ring; until the ring has been
//! sent once, no number is sent twice.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use super::{
    Args, Limits, Sent, esp_key,
    frame::{UdpFrame, sequence},
    outer,
};
use crate::{
    dataplane::xsk::{FRAME_SIZE, XskSocket},
    esp::OutboundSa,
};

/// At most this much memory for an ESP ring.
pub const MAX_RING_BYTES: usize = 128 << 20;
/// Ring length of timed ESP runs (no --count).
pub const DEFAULT_RING: usize = 65_536;
/// UMEM frames per socket (half of them for transmission).
const UMEM_FRAMES: u32 = 4096;

/// Frames stored back to back.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    data: Vec<u8>,
    frames: Vec<(usize, usize)>,
}

impl Ring {
    pub fn push(&mut self, f: &[u8]) {
        self.frames.push((self.data.len(), f.len()));
        self.data.extend_from_slice(f);
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let (o, l) = self.frames[i];
        &self.data[o..o + l]
    }

    pub fn max_len(&self) -> Option<usize> {
        self.frames.iter().map(|(_, l)| *l).max()
    }

    /// Thread `t` of `n` takes frames `t, t + n, t + 2n, ...`: with `--sas` a multiple of
    /// `--threads` every SA is sent by one thread, in sequence-number order.
    pub fn part(&self, t: usize, n: usize) -> Part {
        Part {
            start: t,
            step: n.max(1),
            len: self.len(),
        }
    }
}

/// The frames of a ring one thread sends, round and round.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Part {
    start: usize,
    step: usize,
    len: usize,
}

impl Part {
    /// Frames in one pass.
    pub fn count(&self) -> usize {
        if self.start >= self.len {
            0
        } else {
            (self.len - self.start).div_ceil(self.step)
        }
    }

    /// This part's frames, in sending order (copies).
    pub fn frames(&self, ring: &Ring) -> Vec<Vec<u8>> {
        (self.start..self.len)
            .step_by(self.step)
            .map(|i| ring.get(i).to_vec())
            .collect()
    }

    /// The ring index after `i`.
    fn next(&self, i: usize) -> usize {
        if i + self.step < self.len {
            i + self.step
        } else {
            self.start
        }
    }
}

/// Plain frames: every (tenant, flow, length) combination, lengths in the size order, a
/// multiple of `min` frames (one per thread).
pub fn plain_ring(
    frame: &UdpFrame,
    classes: &[(usize, u32)],
    flows: u32,
    tenants: u32,
    min: usize,
) -> Ring {
    let seq = sequence(classes);
    let mut r = Ring::default();
    let n = (flows.max(1) as usize * tenants.max(1) as usize)
        .max(seq.len())
        .max(min);
    for k in 0..n.next_multiple_of(seq.len()).next_multiple_of(min.max(1)) {
        let mut f = frame.clone();
        f.vlan = frame.vlan.map(|v| v + (k % tenants.max(1) as usize) as u16);
        f.sport = frame
            .sport
            .wrapping_add(((k / tenants.max(1) as usize) % flows.max(1) as usize) as u16);
        r.push(&f.build(seq[k % seq.len()]));
    }
    r
}

/// How many ESP packets to pre-build: `--ring`, else `--count` (or [`DEFAULT_RING`] for
/// timed runs), within [`MAX_RING_BYTES`].
pub fn ring_entries(args: &Args, classes: &[(usize, u32)], count: Option<u64>) -> usize {
    if let Some(r) = args.ring {
        return r.max(1).next_multiple_of(args.threads.max(1) as usize);
    }
    let w: u32 = classes.iter().map(|c| c.1).sum();
    let mean = classes.iter().map(|(l, w)| l * *w as usize).sum::<usize>() / w.max(1) as usize;
    let fit = MAX_RING_BYTES / (mean + 80);
    let want = count.map_or(DEFAULT_RING, |c| c.min(usize::MAX as u64) as usize);
    want.min(fit)
        .max(1)
        .next_multiple_of(args.threads.max(1) as usize)
}

/// `entries` ESP packets (tunnel mode, AES-GCM) toward `--peer`, SAs `--spi ..`.
pub fn esp_ring(
    args: &Args,
    frame: &UdpFrame,
    classes: &[(usize, u32)],
    entries: usize,
) -> Result<Ring> {
    let key = esp_key(args)?;
    let sas: Vec<OutboundSa> = (0..args.sas)
        .map(|i| {
            let sa = OutboundSa::new(args.spi.wrapping_add(i), &key, args.esn, outer(args));
            sa.set_seq(args.first_seq.saturating_sub(1));
            sa
        })
        .collect();
    let seq = sequence(classes);
    let ethertype: u16 = if args.peer.is_ipv6() { 0x86dd } else { 0x0800 };
    let mut r = Ring::default();
    let mut buf = vec![0u8; FRAME_SIZE as usize];
    for k in 0..entries {
        let sa = &sas[k % sas.len()];
        let mut f = frame.clone();
        f.sport = frame
            .sport
            .wrapping_add(((k / sas.len()) % args.flows.max(1) as usize) as u16);
        let inner = f.ip_packet(seq[k % seq.len()]);
        buf[..6].copy_from_slice(&frame.dst_mac);
        buf[6..12].copy_from_slice(&frame.src_mac);
        buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
        let n = sa
            .encapsulate(&inner, &mut buf[14..])
            .map_err(|d| anyhow!("building ESP packet {k}: {d:?}"))?;
        r.push(&buf[..14 + n]);
    }
    Ok(r)
}

/// Sends `part` of `ring` round and round from an AF_XDP socket on `ifname` queue `queue`
/// until `lim` says stop; then waits (at most a second) for the kernel to complete what is
/// in flight. Counts completed frames.
pub fn send(
    ifname: &str,
    queue: u32,
    ring: &Ring,
    part: Part,
    burst: u32,
    lim: &Limits<'_>,
) -> Result<Sent> {
    if part.count() == 0 {
        bail!("no frames for this thread");
    }
    if ring.max_len().unwrap_or(0) > FRAME_SIZE as usize {
        bail!("frames of more than {FRAME_SIZE} bytes do not fit a UMEM frame");
    }
    let mut sock = XskSocket::bind(ifname, queue, UMEM_FRAMES)
        .with_context(|| format!("AF_XDP socket on {ifname} queue {queue}"))?;
    let burst = burst.max(1) as u64;
    let mut idx = part.start;
    let (mut queued, mut bytes) = (0u64, 0u64);
    let mut clock = lim.begin(burst);
    while !lim.done(&clock, queued) {
        let allowed = clock.pacer.allowed();
        if allowed == 0 {
            clock.pacer.wait_for(burst);
            continue;
        }
        let want = burst.min(lim.quota - queued).min(allowed);
        let mut n = 0;
        while n < want {
            let f = ring.get(idx);
            if !sock.send(|b| {
                b[..f.len()].copy_from_slice(f);
                Some(f.len())
            }) {
                break;
            }
            bytes += f.len() as u64;
            idx = part.next(idx);
            n += 1;
        }
        // The TX ring has room for every free UMEM frame: nothing is dropped here.
        let dropped = sock.flush();
        if dropped != 0 {
            bail!("the TX ring refused {dropped} frames");
        }
        queued += n;
        clock.pacer.spend(n);
        lim.progress.store(queued, Ordering::Relaxed);
        if n == 0 {
            // Every frame is in flight: let the kernel complete some.
            std::thread::yield_now();
        }
    }
    let secs = clock.start.elapsed().as_secs_f64();
    let until = Instant::now() + Duration::from_secs(1);
    while sock.tx_in_flight() > 0 && Instant::now() < until {
        sock.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    let lost = sock.tx_in_flight() as u64;
    let mean = bytes / queued.max(1);
    Ok(Sent {
        packets: queued - lost,
        bytes: bytes - lost * mean,
        secs,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::esp::{Cipher, InboundSa, SaKey, packet::inner_info};

    fn frame() -> UdpFrame {
        UdpFrame {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlan: Some(100),
            src: "10.2.0.9".parse().unwrap(),
            dst: "10.1.0.5".parse().unwrap(),
            sport: 10_000,
            dport: 9,
        }
    }

    const KEY: &str = "00112233445566778899aabbccddeeff01020304";

    #[test]
    fn esp_ring_decrypts_in_order_with_the_receivers_key() {
        let args = Args::parse_from_for_test(&[
            "--mode", "esp", "--spi", "0xf0e0", "--key", KEY, "--sas", "2", "--flows", "3",
            "--size", "imix",
        ]);
        let classes = super::super::frame::Size::Imix.clamp(64, 1518);
        let ring = esp_ring(&args, &frame(), &classes, 24).unwrap();
        assert_eq!(ring.len(), 24);
        let keymat: Vec<u8> = (0..20)
            .map(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let key = SaKey::from_keymat(Cipher::Aes128Gcm16, &keymat).unwrap();
        let ins = [
            InboundSa::new(0xf0e0, &key, false),
            InboundSa::new(0xf0e1, &key, false),
        ];
        let seq = sequence(&classes);
        for k in 0..ring.len() {
            let mut f = ring.get(k).to_vec();
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            let outer = inner_info(&f[14..]).unwrap();
            assert_eq!(outer.src, "172.24.4.233".parse::<IpAddr>().unwrap());
            assert_eq!(outer.dst, "172.24.4.226".parse::<IpAddr>().unwrap());
            assert_eq!(f[14 + 9], 50, "raw ESP");
            let esp = &mut f[34..];
            let spi = u32::from_be_bytes(esp[..4].try_into().unwrap());
            let seqno = u32::from_be_bytes(esp[4..8].try_into().unwrap());
            assert_eq!(spi, 0xf0e0 + (k % 2) as u32);
            assert_eq!(
                seqno as usize,
                k / 2 + 1,
                "sequence numbers 1, 2, ... per SA"
            );
            let d = ins[k % 2].decapsulate(esp, seqno as u64).unwrap();
            let inner = &esp[d.inner.clone()];
            // The tenant frame this came from was seq[k] bytes with its VLAN tag.
            assert_eq!(inner.len() + 18, seq[k % 12]);
            let sport = u16::from_be_bytes([inner[20], inner[21]]);
            assert_eq!(sport, 10_000 + ((k / 2) % 3) as u16);
            assert!(super::super::frame::udp_checksum_ok(
                &"10.2.0.9".parse().unwrap(),
                &"10.1.0.5".parse().unwrap(),
                &inner[20..]
            ));
        }
    }

    #[test]
    fn udp_encapsulated_ring() {
        let args = Args::parse_from_for_test(&["--mode", "esp", "--key", KEY, "--udp-encap"]);
        let ring = esp_ring(&args, &frame(), &[(64, 1)], 2).unwrap();
        let f = ring.get(1);
        assert_eq!(f[14 + 9], 17);
        assert_eq!(&f[34..38], &[0x11, 0x94, 0x11, 0x94], "UDP 4500 -> 4500");
        assert_eq!(
            &f[42..46],
            &0x1000u32.to_be_bytes(),
            "SPI after the UDP header"
        );
    }

    #[test]
    fn plain_ring_covers_flows_tenants_and_sizes() {
        let r = plain_ring(
            &frame(),
            &super::super::frame::Size::Imix.clamp(64, 1518),
            4,
            2,
            1,
        );
        assert_eq!(r.len(), 12);
        let mut seen = std::collections::HashSet::new();
        for k in 0..r.len() {
            let f = r.get(k);
            let vid = u16::from_be_bytes([f[14], f[15]]);
            let sport = u16::from_be_bytes([f[18 + 20], f[18 + 21]]);
            seen.insert((vid, sport));
        }
        assert_eq!(seen.len(), 8, "4 flows x 2 tenants: {seen:?}");
        assert_eq!(
            (0..r.len()).filter(|k| r.get(*k).len() == 64).count(),
            7,
            "IMIX lengths"
        );
    }

    #[test]
    fn thread_parts_interleave_and_cover_the_ring() {
        let mut r = Ring::default();
        for i in 0..12u8 {
            r.push(&[i]);
        }
        let walk = |p: Part| {
            let mut v = vec![p.start];
            for _ in 1..p.count() + 1 {
                v.push(p.next(*v.last().unwrap()));
            }
            v
        };
        assert_eq!(
            walk(r.part(0, 3)),
            vec![0, 3, 6, 9, 0],
            "wraps to its start"
        );
        assert_eq!(walk(r.part(2, 3)), vec![2, 5, 8, 11, 2]);
        assert_eq!(r.part(0, 1).count(), 12);
        let mut all: Vec<usize> = (0..3)
            .flat_map(|t| walk(r.part(t, 3))[..4].to_vec())
            .collect();
        all.sort();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn esp_ring_starts_at_the_first_sequence_number() {
        let args =
            Args::parse_from_for_test(&["--mode", "esp", "--key", KEY, "--first-seq", "1000"]);
        let ring = esp_ring(&args, &frame(), &[(100, 1)], 3).unwrap();
        let seqs: Vec<u32> = (0..3)
            .map(|k| u32::from_be_bytes(ring.get(k)[38..42].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, vec![1000, 1001, 1002]);
    }
}
