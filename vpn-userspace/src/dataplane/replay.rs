//! The `REPLAY` array mapped into user space: the worker advances windows with plain stores,
//! no syscall per packet, and the XDP program sees them at once.

use std::{os::fd::AsRawFd, ptr::NonNull};

use anyhow::{Context, Result, bail};
use vpn_common::ReplayWindow;

pub struct ReplayTable {
    base: NonNull<ReplayWindow>,
    slots: u32,
    len: usize,
    /// One flag per slot: the writer's exclusive section when several workers can see the
    /// same SA (an SA normally lands on one rx queue, so it is uncontended).
    writers: Box<[std::sync::atomic::AtomicBool]>,
}

// SAFETY: the mapping is plain shared memory; writes go through `accept` (exclusive per
// slot) or `advance` (caller is the only writer).
unsafe impl Send for ReplayTable {}
unsafe impl Sync for ReplayTable {}

impl ReplayTable {
    /// Maps a `BPF_F_MMAPABLE` array of `slots` `ReplayWindow`s.
    pub fn map(fd: &impl AsRawFd, slots: u32) -> Result<ReplayTable> {
        // Array values are laid out at round_up(value_size, 8); ReplayWindow is a multiple of 8.
        const _: () = assert!(std::mem::size_of::<ReplayWindow>().is_multiple_of(8));
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = slots as usize * std::mem::size_of::<ReplayWindow>();
        let len = bytes.div_ceil(page) * page;
        // SAFETY: mapping a map fd the kernel created mmapable; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mmap of the REPLAY map (is it BPF_F_MMAPABLE?)");
        }
        Ok(ReplayTable {
            base: NonNull::new(p.cast()).context("mmap returned null")?,
            slots,
            len,
            writers: (0..slots)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        })
    }

    /// A table in private memory (tests, tools): the same code without a BPF map behind it.
    pub fn anonymous(slots: u32) -> Result<ReplayTable> {
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (slots as usize * std::mem::size_of::<ReplayWindow>()).div_ceil(page) * page;
        // SAFETY: anonymous mapping, checked below.
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
            return Err(std::io::Error::last_os_error()).context("anonymous mmap");
        }
        Ok(ReplayTable {
            base: NonNull::new(p.cast()).context("mmap returned null")?,
            slots,
            len,
            writers: (0..slots)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        })
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn ptr(&self, slot: u32) -> Result<*mut ReplayWindow> {
        if slot >= self.slots {
            bail!("replay slot {slot} out of range (0..{})", self.slots);
        }
        // SAFETY: in bounds of the mapping.
        Ok(unsafe { self.base.as_ptr().add(slot as usize) })
    }

    /// Resets a slot for a new SA (before its SPI is published in `SA_IN`).
    pub fn init(&self, slot: u32, window: ReplayWindow) -> Result<()> {
        let p = self.ptr(slot)?;
        // SAFETY: no SPI points at this slot yet, so nobody reads it concurrently.
        unsafe { std::ptr::write_volatile(p, window) };
        Ok(())
    }

    /// A snapshot of a slot (for display).
    pub fn get(&self, slot: u32) -> Result<ReplayWindow> {
        // SAFETY: in bounds; a racy snapshot is acceptable for display.
        Ok(unsafe { std::ptr::read_volatile(self.ptr(slot)?) })
    }

    /// Full check of a received sequence number against the live window.
    pub fn check(&self, slot: u32, seq_low: u32) -> Result<Result<u64, vpn_common::ReplayError>> {
        // SAFETY: in bounds; ReplayWindow::check only does volatile reads.
        Ok(unsafe { (*self.ptr(slot)?).check(seq_low) })
    }

    /// For an authenticated packet: checks its full sequence number `seq` (the one
    /// [`check`](Self::check) inferred and the ICV covered) again and records it, as one step
    /// exclusive with other workers on the same slot, so two copies of a packet decrypted on
    /// two queues are never both accepted (RFC 4303 3.4.3). `seq` is not inferred again: the
    /// window may have moved on meanwhile (see [`ReplayWindow::check_full`]).
    pub fn accept(&self, slot: u32, seq: u64) -> Result<Result<u64, vpn_common::ReplayError>> {
        use std::sync::atomic::Ordering;
        let p = self.ptr(slot)?;
        let w = &self.writers[slot as usize];
        while w
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        // SAFETY: in bounds; we hold this slot's writer flag.
        let r = unsafe {
            let r = (*p).check_full(seq);
            if let Ok(seq) = r {
                ReplayWindow::advance_shared(p, seq);
            }
            r
        };
        w.store(false, Ordering::Release);
        Ok(r)
    }

    /// Records an authenticated sequence number. The caller must be this SA's only writer.
    pub fn advance(&self, slot: u32, seq: u64) -> Result<()> {
        let p = self.ptr(slot)?;
        // SAFETY: in bounds; single writer per SA by contract.
        unsafe { ReplayWindow::advance_shared(p, seq) };
        Ok(())
    }
}

impl Drop for ReplayTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers offered the same packets (the same SA seen on two queues): no sequence
    /// number is ever accepted twice.
    #[test]
    fn accept_is_exclusive_across_threads() {
        let t = std::sync::Arc::new(ReplayTable::anonymous(4).unwrap());
        t.init(1, ReplayWindow::new(4096, false)).unwrap();
        let n = 200_000u32;
        let accepted: Vec<Vec<u64>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let t = t.clone();
                    sc.spawn(move || {
                        (1..=n)
                            .filter_map(|s| t.accept(1, s as u64).ok()?.ok())
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = accepted.concat();
        let total = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), total, "a sequence number was accepted twice");
        // Nothing is lost either: each number is accepted by one of the two (the window is
        // wide enough for how far apart two threads get here).
        assert!(total as u32 > n - 4096, "{total}");
    }

    /// The race two workers on one ESN SA run into: worker A checks sequence number 100 (the
    /// ICV then covers epoch 0), worker B meanwhile moves the window 2,000 further, then A
    /// records. Inferring 100 again from the new top would say epoch 1 and throw the window
    /// 2^32 ahead of the sender, after which every packet is inferred into the wrong epoch;
    /// judged as authenticated, 100 is simply too old now.
    #[test]
    fn accept_does_not_reinfer_the_esn_epoch_after_the_window_moved() {
        let t = ReplayTable::anonymous(2).unwrap();
        t.init(0, ReplayWindow::new(1024, true)).unwrap();
        for s in 1..=50u64 {
            assert_eq!(t.accept(0, s).unwrap(), Ok(s));
        }
        let a = t.check(0, 100).unwrap().unwrap();
        assert_eq!(a, 100, "epoch 0 while the top is 50");
        for s in 51..=2100u64 {
            assert_eq!(t.accept(0, s).unwrap(), Ok(s));
        }
        assert_eq!(
            t.accept(0, a).unwrap(),
            Err(vpn_common::ReplayError::TooOld)
        );
        assert_eq!(t.get(0).unwrap().top(), 2100, "the window stays in epoch 0");
        // And the stream goes on in epoch 0.
        assert_eq!(t.check(0, 2101).unwrap(), Ok(2101));
        assert_eq!(t.accept(0, 2101).unwrap(), Ok(2101));
    }
}
