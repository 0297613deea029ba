//! An AF_XDP socket with its own UMEM (xdpilone), in copy mode with need-wakeup (veth has no
//! zero-copy). Frames arrive with our `XdpMeta` right in front of them (metadata carrier) or
//! as their first bytes (shim carrier); see `vpn_common::meta` and [`Carrier`].

use std::{ffi::CString, num::NonZeroU32, ptr::NonNull};

use anyhow::{Context, Result, anyhow};
use vpn_common::{
    XdpMeta,
    meta::{META_MAGIC, XDP_PACKET_HEADROOM},
};

use super::Carrier;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

pub const FRAME_SIZE: u32 = 2048;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

/// An mmap'd, page-aligned area for the UMEM.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Area> {
        // SAFETY: anonymous private mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of the UMEM area");
        }
        Ok(Area {
            ptr: NonNull::new(p.cast()).context("mmap returned null")?,
            len,
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in new().
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One received frame: our metadata and the packet bytes (writable: decryption is in place).
pub struct RxFrame<'a> {
    pub meta: XdpMeta,
    pub data: &'a mut [u8],
}

pub struct XskSocket {
    // Drop order: rings and socket before the UMEM, the UMEM before its memory.
    rx: RingRx,
    tx: RingTx,
    user: User,
    device: DeviceQueue,
    _socket: Socket,
    _umem: Umem,
    area: Area,
    frames: u32,
    /// Frame addresses not currently owned by the kernel.
    free: Vec<u64>,
    /// Frames given to the fill ring and not yet received back.
    in_fill: u32,
    /// Descriptors written but not yet handed to the TX ring.
    tx_pending: Vec<xdpilone::xdp::XdpDesc>,
    /// Frames handed to the TX ring and not yet completed.
    in_tx: u32,
    zero_copy: bool,
    carrier: Carrier,
    counts: CarrierCounts,
}

/// Frames received with the metadata in front, and with it in the packet (the shim; with the
/// metadata carrier: the device refused `bpf_xdp_adjust_meta` for them at run time).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CarrierCounts {
    pub meta: u64,
    pub shim: u64,
}

/// Where a copy-mode socket's frames carry the metadata when the metadata carrier works: the
/// bytes right before the frame, which always starts `XDP_PACKET_HEADROOM` into its chunk.
const META_SLOT: usize = XDP_PACKET_HEADROOM - XdpMeta::LEN;

// SAFETY: owned rings and memory; used by one thread at a time.
unsafe impl Send for XskSocket {}

fn errno(what: &str, e: xdpilone::Errno) -> anyhow::Error {
    let hint = match e.get_raw() {
        libc::EAFNOSUPPORT => {
            "; this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS, Linux 4.18+)"
        }
        libc::EPERM => "; AF_XDP needs root (CAP_NET_RAW and CAP_NET_ADMIN)",
        libc::ENOMEM => {
            "; the UMEM could not be locked in memory (raise `ulimit -l` or run as root)"
        }
        _ => "",
    };
    anyhow!("{what}: {e}{hint}")
}

impl XskSocket {
    /// Binds a socket to `ifname` queue `queue` with `frames` UMEM frames, half of them given
    /// to the fill ring at once.
    /// Zero-copy where the driver supports it, else copy mode (veth: copy).
    pub fn bind(ifname: &str, queue: u32, frames: u32) -> Result<XskSocket> {
        match XskSocket::bind_with(ifname, queue, frames, XDP_ZEROCOPY) {
            Ok(s) => Ok(s),
            Err(_) => XskSocket::bind_with(ifname, queue, frames, XDP_COPY),
        }
    }

    /// Whether the kernel accepted zero-copy for this socket.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// How the XDP program that redirects to this socket carries the metadata (the loaded
    /// object's carrier; `Dataplane::bind_sockets` sets it). Default: the metadata area.
    pub fn set_carrier(&mut self, carrier: Carrier) {
        self.carrier = carrier;
    }

    pub fn carrier(&self) -> Carrier {
        self.carrier
    }

    /// Frames received so far with the metadata in front of them, and as an in-packet shim.
    /// With the metadata carrier, shim frames mean the device refused the helper at run time.
    pub fn carrier_counts(&self) -> CarrierCounts {
        self.counts
    }

    fn bind_with(ifname: &str, queue: u32, frames: u32, mode: u16) -> Result<XskSocket> {
        let frames = frames.next_power_of_two().max(64);
        let area = Area::new(frames as usize * FRAME_SIZE as usize)?;
        let ring = frames / 2;
        let cfg = UmemConfig {
            fill_size: ring,
            complete_size: ring,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: the area is page aligned and lives as long as the UMEM (field order).
        let umem = unsafe { Umem::new(cfg, slice) }.map_err(|e| errno("UMEM registration", e))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(ifname)?;
        info.from_name(&name)
            .map_err(|e| errno(&format!("interface {ifname}"), e))?;
        info.set_queue(queue);
        let socket = Socket::with_shared(&info, &umem).map_err(|e| errno("AF_XDP socket", e))?;
        let device = umem
            .fq_cq(&socket)
            .map_err(|e| errno("fill/completion rings", e))?;
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(ring),
                    tx_size: NonZeroU32::new(ring),
                    bind_flags: mode | XDP_USE_NEED_WAKEUP,
                },
            )
            .map_err(|e| errno("rx/tx rings", e))?;
        let rx = user.map_rx().map_err(|e| errno("rx ring mmap", e))?;
        let tx = user.map_tx().map_err(|e| errno("tx ring mmap", e))?;
        umem.bind(&user)
            .map_err(|e| errno(&format!("bind to {ifname} queue {queue}"), e))?;
        let mut s = XskSocket {
            rx,
            tx,
            user,
            device,
            _socket: socket,
            _umem: umem,
            area,
            frames,
            free: (0..frames as u64).map(|i| i * FRAME_SIZE as u64).collect(),
            in_fill: 0,
            tx_pending: Vec::with_capacity(ring as usize),
            in_tx: 0,
            zero_copy: mode == XDP_ZEROCOPY,
            carrier: Carrier::Meta,
            counts: CarrierCounts::default(),
        };
        s.refill();
        Ok(s)
    }

    /// The socket fd, for `XSKS` / `TENANT_XSKS`.
    pub fn fd(&self) -> i32 {
        self.user.as_raw_fd()
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Gives free frames to the kernel's fill ring, keeping at most half of the UMEM there
    /// (the other half is for transmitting).
    pub fn refill(&mut self) {
        let want = (self.frames / 2)
            .saturating_sub(self.in_fill)
            .min(self.free.len() as u32);
        if want > 0 {
            let start = self.free.len() - want as usize;
            // With the metadata carrier in copy mode, clear where a frame's metadata would be:
            // a frame that comes back without metadata (the device refused the helper and the
            // program used the shim) must not show an earlier frame's, or bytes a transmitted
            // frame left there. The shim carrier never looks there (an extra cache line per
            // frame it can do without); zero-copy frames without metadata are dropped.
            if self.carrier == Carrier::Meta && !self.zero_copy {
                let base = self.area.ptr.as_ptr();
                for &addr in &self.free[start..] {
                    // SAFETY: a free frame of our UMEM (nobody else uses it); the slot lies
                    // inside the frame (FRAME_SIZE > XDP_PACKET_HEADROOM).
                    unsafe {
                        std::ptr::write_bytes(base.add(addr as usize + META_SLOT), 0, XdpMeta::LEN)
                    };
                }
            }
            let mut w = self.device.fill(want);
            let n = w.insert(self.free[start..].iter().copied());
            w.commit();
            drop(w);
            // The ring may take fewer than asked: exactly the first `n` of the slice went in.
            self.free.drain(start..start + n as usize);
            self.in_fill += n;
        }
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }

    /// The metadata of a received frame at `addr` (offset in the UMEM at `base`) of `len`
    /// bytes, and where the packet starts. `None`: no metadata anywhere we may look (the worker
    /// drops the frame as `metadata_failed`).
    fn split_meta(
        base: *const u8,
        carrier: Carrier,
        zero_copy: bool,
        counts: &mut CarrierCounts,
        addr: usize,
        len: usize,
    ) -> Option<(XdpMeta, usize)> {
        let read = |at: usize| {
            let mut b = [0u8; XdpMeta::LEN];
            // SAFETY: `at..at + LEN` lies in our UMEM (checked below before each call).
            unsafe { std::ptr::copy_nonoverlapping(base.add(at), b.as_mut_ptr(), b.len()) };
            XdpMeta::from_bytes(&b)
        };
        let mut shim = || {
            if len < XdpMeta::LEN {
                return None;
            }
            counts.shim += 1;
            Some((read(addr), addr + XdpMeta::LEN))
        };
        match carrier {
            Carrier::Shim => shim(),
            Carrier::Meta => {
                if addr >= XdpMeta::LEN {
                    let m = read(addr - XdpMeta::LEN);
                    if m.magic == META_MAGIC {
                        counts.meta += 1;
                        return Some((m, addr));
                    }
                }
                // No metadata in front: the program fell back to the shim. Trusted only where
                // we cleared the slot before the kernel filled the frame (copy mode, frame at
                // the fixed headroom); elsewhere stale bytes could pass for metadata.
                if !zero_copy && addr % FRAME_SIZE as usize == XDP_PACKET_HEADROOM {
                    shim()
                } else {
                    None
                }
            }
        }
    }

    /// Receives up to `max` frames, calls `f` on each, returns their frames to the fill ring.
    pub fn recv(&mut self, max: u32, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        let mut n = 0;
        let base = self.area.ptr.as_ptr();
        let mut r = self.rx.receive(max);
        while let Some(desc) = r.read() {
            let addr = desc.addr as usize;
            let len = desc.len as usize;
            if addr + len <= self.area.len {
                let (meta, start) = Self::split_meta(
                    base,
                    self.carrier,
                    self.zero_copy,
                    &mut self.counts,
                    addr,
                    len,
                )
                .unwrap_or((XdpMeta::default(), addr + len));
                // SAFETY: the descriptor lies in our UMEM and the kernel handed it to us.
                let data =
                    unsafe { std::slice::from_raw_parts_mut(base.add(start), addr + len - start) };
                f(RxFrame { meta, data });
            }
            self.free
                .push((desc.addr / FRAME_SIZE as u64) * FRAME_SIZE as u64);
            n += 1;
        }
        r.release();
        drop(r);
        self.in_fill -= n as u32;
        self.refill();
        n
    }

    /// Builds a frame for transmission in a free UMEM frame: `f` writes it and returns its
    /// length (or None to give the frame back). Returns false when no frame is free; the
    /// caller counts that as a drop. Call [`flush`](XskSocket::flush) after a batch.
    pub fn send(&mut self, f: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(addr) = self.free.pop() else {
            return false;
        };
        // SAFETY: a free frame of our UMEM: nobody else (kernel included) uses it now.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                self.area.ptr.as_ptr().add(addr as usize),
                FRAME_SIZE as usize,
            )
        };
        match f(buf) {
            Some(len) if len <= FRAME_SIZE as usize => {
                self.tx_pending.push(xdpilone::xdp::XdpDesc {
                    addr,
                    len: len as u32,
                    options: 0,
                });
                true
            }
            _ => {
                self.free.push(addr);
                false
            }
        }
    }

    /// Hands the written frames to the kernel and kicks it once for the whole batch.
    /// Returns how many frames were dropped because the TX ring had no room.
    pub fn flush(&mut self) -> u32 {
        let mut dropped = 0;
        if !self.tx_pending.is_empty() {
            // The ring's view of the kernel's consumer is cached and only refreshed when it
            // shows no room at all: a reservation can come back short while the kernel has
            // long emptied the ring, so reserve again until everything is in or the ring is
            // really full.
            let mut done = 0;
            while done < self.tx_pending.len() {
                let mut w = self.tx.transmit((self.tx_pending.len() - done) as u32);
                let n = w.insert(self.tx_pending[done..].iter().copied());
                w.commit();
                drop(w);
                if n == 0 {
                    break;
                }
                done += n as usize;
                self.in_tx += n;
            }
            // Descriptors the ring had no room for go back to the free list (dropped).
            for d in self.tx_pending.drain(done..) {
                self.free.push(d.addr);
                dropped += 1;
            }
            self.tx_pending.clear();
        }
        // In copy mode one kick sends at most a small batch (32 in Linux's generic xmit):
        // kick until the kernel has taken everything, so nothing waits for the next poll.
        let mut kicks = 0;
        while self.tx.pending() > 0 && self.tx.needs_wakeup() && kicks < 64 {
            self.tx.wake();
            kicks += 1;
        }
        self.reclaim();
        dropped
    }

    /// Takes completed transmissions back into the free list.
    pub fn reclaim(&mut self) {
        if self.in_tx == 0 {
            return;
        }
        let mut c = self.device.complete(self.in_tx);
        let mut n = 0;
        while let Some(addr) = c.read() {
            self.free.push(addr);
            n += 1;
        }
        c.release();
        drop(c);
        self.in_tx -= n;
    }

    /// The kernel's counters for this socket: (rx_dropped, rx_ring_full, rx_fill_ring_empty,
    /// tx_invalid_descs, tx_ring_empty).
    pub fn kernel_stats(&self) -> Option<[u64; 5]> {
        let s = self.user.statistics_v2().ok()?;
        Some([
            s.rx_dropped,
            s.rx_ring_full,
            s.rx_fill_ring_empty_descs,
            s.tx_invalid_descs,
            s.tx_ring_empty_descs,
        ])
    }

    /// Frames in flight to the kernel for transmission.
    pub fn tx_in_flight(&self) -> u32 {
        self.in_tx
    }
}
