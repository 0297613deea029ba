//! The `REPLAY` array mapped into user space: the worker advances windows with plain stores,
//! no syscall per packet, and the XDP program sees them at once.

use std::{os::fd::AsRawFd, ptr::NonNull};

use anyhow::{Context, Result, bail};
use vpn_common::ReplayWindow;

pub struct ReplayTable {
    base: NonNull<ReplayWindow>,
    slots: u32,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; writers follow the single-writer-per-SA rule.
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
