//! The anti-replay window (RFC 4303 3.4.3, bitmap layout of RFC 6479), ESN-aware (RFC 4303
//! appendix A). One implementation, used by the XDP pre-check and by the worker.
//!
//! The window lives in a `BPF_F_MMAPABLE` array shared by the kernel and one user-space writer
//! per SA:
//! - the XDP program only *reads* it ([`ReplayWindow::check`]) to drop replays before any crypto
//!   is spent;
//! - the worker calls [`ReplayWindow::check`] again after ICV verification and then
//!   [`ReplayWindow::advance`] — a packet that fails authentication never moves the window.
//!
//! RFC 6479 keeps the bitmap indexed by `seq mod bitmap_bits` and, when the top moves, clears
//! whole 64-bit blocks instead of shifting; the bitmap is one block longer than the largest
//! window so the block being recycled is never inside the window. The writer clears the blocks,
//! sets the bit and only then publishes the new top (release), so a reader that sees a top also
//! sees the bitmap it belongs to. A reader racing a writer can at worst let a replay through to
//! the worker, whose own check is authoritative; it never drops a fresh packet.

use core::ptr;
use core::sync::atomic::{Ordering, fence};

use crate::pod;

/// Largest configurable window, in packets.
pub const MAX_WINDOW: u32 = 4096;
/// 64-bit blocks in the bitmap: the largest window plus one spare block (RFC 6479 2).
pub const BLOCKS: usize = (MAX_WINDOW as usize / 64) + 1;
const BITMAP_BITS: u64 = BLOCKS as u64 * 64;
/// Window used only to infer the ESN high half when anti-replay is disabled (window 0).
const ESN_INFER_WINDOW_WHEN_DISABLED: u64 = 64;

/// `ReplayWindow.flags`: 64-bit extended sequence numbers (RFC 4304).
pub const REPLAY_F_ESN: u32 = 1 << 0;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Left of the window.
    TooOld,
    /// Inside the window and already received.
    Duplicate,
    /// Sequence number 0 (never sent: counters start at 1).
    Zero,
}

/// Replay state of one inbound SA. `REPLAY[slot]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest sequence number authenticated so far (64-bit even without ESN). 0: none yet.
    top: u64,
    /// Window size in packets, `0..=MAX_WINDOW`; 0 disables anti-replay (manual keying only).
    window: u32,
    flags: u32,
    bitmap: [u64; BLOCKS],
}
const _: () = assert!(core::mem::size_of::<ReplayWindow>() == 16 + 8 * BLOCKS);

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new(0, false)
    }
}

impl ReplayWindow {
    /// A fresh window. `window` is clamped to [`MAX_WINDOW`].
    pub const fn new(window: u32, esn: bool) -> ReplayWindow {
        ReplayWindow {
            top: 0,
            window: if window > MAX_WINDOW {
                MAX_WINDOW
            } else {
                window
            },
            flags: if esn { REPLAY_F_ESN } else { 0 },
            bitmap: [0; BLOCKS],
        }
    }

    /// A window that takes every sequence number up to `mark` as already received: what a
    /// restarted daemon installs for a manually keyed SA whose `mark` (a durable upper bound
    /// of what it accepted before) it read back, so that a packet captured before the restart
    /// is a replay after it. Numbers above `mark` are new, out of order or not.
    pub const fn resume(window: u32, esn: bool, mark: u64) -> ReplayWindow {
        let mut w = ReplayWindow::new(window, esn);
        if mark == 0 {
            return w;
        }
        w.top = mark;
        // Every block full, except the top's: there, only the bits up to `mark` (the higher
        // ones stand for numbers above the mark, which are still to come). The spare block
        // (RFC 6479) is cleared by `advance` before it re-enters the window.
        let mut b = 0;
        while b < BLOCKS {
            w.bitmap[b] = u64::MAX;
            b += 1;
        }
        let top_block = ((mark / 64) % BLOCKS as u64) as usize;
        let bit = mark % 64;
        w.bitmap[top_block] = if bit == 63 {
            u64::MAX
        } else {
            (1u64 << (bit + 1)) - 1
        };
        w
    }

    pub fn top(&self) -> u64 {
        // SAFETY: a valid reference; volatile because the memory may be shared.
        unsafe { ptr::read_volatile(&self.top) }
    }

    pub fn window(&self) -> u32 {
        unsafe { ptr::read_volatile(&self.window) }
    }

    pub fn esn(&self) -> bool {
        unsafe { ptr::read_volatile(&self.flags) & REPLAY_F_ESN != 0 }
    }

    /// Is the bit for `seq` set? Meaningful only inside the window.
    #[inline(always)]
    fn seen(&self, seq: u64) -> bool {
        // The eBPF verifier does not track bounds through `%`, and the compiler, which does,
        // would drop the check: launder the index so the bounds check stays in the program.
        let block = opaque(((seq / 64) % BLOCKS as u64) as usize);
        match self.bitmap.get(block) {
            // SAFETY: an element of our own array.
            Some(word) => {
                let bits = unsafe { ptr::read_volatile(word) };
                bits & (1u64 << (seq % 64)) != 0
            }
            None => false,
        }
    }

    /// Checks the low 32 bits of a received sequence number. Returns the full (ESN-inferred)
    /// sequence number if the packet may be new. Reads only.
    #[inline(always)]
    pub fn check(&self, seq_low: u32) -> Result<u64, ReplayError> {
        let top = self.top();
        let window = self.window() as u64;
        let seq = if self.esn() {
            let w = if window == 0 {
                ESN_INFER_WINDOW_WHEN_DISABLED
            } else {
                window
            };
            infer_esn(top, seq_low, w)?
        } else {
            seq_low as u64
        };
        self.check_full(seq)
    }

    /// Checks a full 64-bit sequence number (no ESN inference): the one [`check`] returned
    /// and the ICV authenticated. The window may have moved since `check`; the number must be
    /// judged as it is, never inferred again from the new top: with ESN, a packet that fell
    /// behind the window meanwhile would be inferred into the next epoch, and recording that
    /// would throw the window 2^32 ahead of the sender.
    ///
    /// [`check`]: ReplayWindow::check
    #[inline(always)]
    pub fn check_full(&self, seq: u64) -> Result<u64, ReplayError> {
        let top = self.top();
        let window = self.window() as u64;
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if window == 0 || seq > top {
            return Ok(seq);
        }
        if top - seq >= window {
            return Err(ReplayError::TooOld);
        }
        if self.seen(seq) {
            Err(ReplayError::Duplicate)
        } else {
            Ok(seq)
        }
    }

    /// Records an authenticated sequence number (the full 64-bit value [`check`] returned).
    /// Only the single writer of this SA may call it.
    ///
    /// [`check`]: ReplayWindow::check
    pub fn advance(&mut self, seq: u64) {
        // SAFETY: `&mut self` is a valid, exclusive-for-writing pointer.
        unsafe { Self::advance_shared(self, seq) }
    }

    /// [`advance`](ReplayWindow::advance) on memory that the kernel may read concurrently
    /// (the mmap of the `REPLAY` array).
    ///
    /// # Safety
    /// `this` must point to a valid `ReplayWindow`, and the caller must be the only writer.
    pub unsafe fn advance_shared(this: *mut ReplayWindow, seq: u64) {
        unsafe {
            let top = ptr::read_volatile(&raw const (*this).top);
            let bitmap = &raw mut (*this).bitmap as *mut u64;
            if seq > top {
                // Clear the blocks that enter the window, at most all of them.
                let old_block = top / 64;
                let new_block = seq / 64;
                let n = (new_block - old_block).min(BLOCKS as u64);
                let mut i = 1;
                while i <= n {
                    let b = ((old_block + i) % BLOCKS as u64) as usize;
                    ptr::write_volatile(bitmap.add(b), 0);
                    i += 1;
                }
                set_bit(bitmap, seq);
                // Publish the top only after the bitmap it describes (RFC 6479 without locks).
                fence(Ordering::Release);
                ptr::write_volatile(&raw mut (*this).top, seq);
            } else {
                set_bit(bitmap, seq);
            }
        }
    }

    /// Sequence numbers in `top-window+1 ..= top` not yet received (for `vpnctl`).
    pub fn missing_in_window(&self) -> u32 {
        let top = self.top();
        let window = self.window() as u64;
        let lo = top.saturating_sub(window.saturating_sub(1)).max(1);
        // An inclusive range: a counter stepping past `top` overflows when top is 2^64 - 1.
        (lo..=top).filter(|&s| !self.seen(s)).count() as u32
    }
}

/// Hides a value from the optimizer (a volatile round trip through the stack).
#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: reading a local.
    unsafe { ptr::read_volatile(&x) }
}

unsafe fn set_bit(bitmap: *mut u64, seq: u64) {
    let b = ((seq / 64) % BLOCKS as u64) as usize;
    unsafe {
        let p = bitmap.add(b);
        ptr::write_volatile(p, ptr::read_volatile(p) | (1u64 << (seq % 64)));
    }
}

/// RFC 4303 appendix A2.2: the high 32 bits of a received ESN, from the low 32 bits on the
/// wire, the top of the window `top` and the window size `w` (>= 1).
#[inline(always)]
pub fn infer_esn(top: u64, seq_low: u32, w: u64) -> Result<u64, ReplayError> {
    let tl = top as u32 as u64;
    let th = top >> 32;
    let sl = seq_low as u64;
    let seqh = if tl >= w - 1 {
        // Case A: the window lies within one sequence number subspace.
        if sl >= tl - (w - 1) { th } else { th + 1 }
    } else {
        // Case B: the window spans two subspaces.
        let lo = (tl + (1 << 32) - (w - 1)) & 0xffff_ffff;
        if sl >= lo {
            if th == 0 {
                // Would be before sequence number 0: left of everything.
                return Err(ReplayError::TooOld);
            }
            th - 1
        } else {
            th
        }
    };
    if seqh > 0xffff_ffff {
        return Err(ReplayError::TooOld);
    }
    Ok((seqh << 32) | sl)
}

const _: () = assert!(BITMAP_BITS >= MAX_WINDOW as u64 + 64);

pod!(ReplayWindow);

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, seq_low: u32) -> Result<u64, ReplayError> {
        let s = w.check(seq_low)?;
        w.advance(s);
        Ok(s)
    }

    #[test]
    fn in_order_then_duplicates() {
        let mut w = ReplayWindow::new(64, false);
        for s in 1..=1000u32 {
            assert_eq!(accept(&mut w, s), Ok(s as u64));
        }
        assert_eq!(w.check(1000), Err(ReplayError::Duplicate));
        assert_eq!(w.check(937), Err(ReplayError::Duplicate));
        assert_eq!(w.check(936), Err(ReplayError::TooOld));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
        assert_eq!(w.check(1001), Ok(1001));
    }

    #[test]
    fn zero_is_never_valid() {
        let w = ReplayWindow::new(32, false);
        assert_eq!(w.check(0), Err(ReplayError::Zero));
        let w = ReplayWindow::new(32, true);
        assert_eq!(w.check(0), Err(ReplayError::Zero));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new(32, false);
        accept(&mut w, 100).unwrap();
        // 69 = 100 - 31 is the left edge (inside); 68 is out.
        assert_eq!(w.check(69), Ok(69));
        assert_eq!(w.check(68), Err(ReplayError::TooOld));
        accept(&mut w, 69).unwrap();
        assert_eq!(w.check(69), Err(ReplayError::Duplicate));
        assert_eq!(w.missing_in_window(), 30);
    }

    #[test]
    fn big_jump_clears_everything() {
        let mut w = ReplayWindow::new(MAX_WINDOW, false);
        for s in 1..=5000u32 {
            accept(&mut w, s).unwrap();
        }
        accept(&mut w, 1_000_000).unwrap();
        // Everything in the new window except the top is unseen.
        assert_eq!(w.check(1_000_000 - 4095), Ok(1_000_000 - 4095));
        assert_eq!(w.check(1_000_000 - 4096), Err(ReplayError::TooOld));
        assert_eq!(w.missing_in_window(), 4095);
    }

    #[test]
    fn out_of_order_inside_window() {
        let mut w = ReplayWindow::new(128, false);
        for s in (1..=200u32).rev().step_by(2) {
            let _ = accept(&mut w, s);
        }
        // 200, 198, ..: only those within 128 of 200 were accepted.
        assert_eq!(w.check(199), Ok(199));
        assert_eq!(w.check(198), Err(ReplayError::Duplicate));
        assert_eq!(w.check(72), Err(ReplayError::TooOld));
    }

    #[test]
    fn disabled_window_accepts_replays() {
        let mut w = ReplayWindow::new(0, false);
        accept(&mut w, 5).unwrap();
        assert_eq!(w.check(5), Ok(5));
        assert_eq!(w.check(1), Ok(1));
    }

    /// Found by the `replay_esn_model` fuzz target: with the window's top at the last
    /// 64-bit sequence number, counting the missing ones overflowed (a panic with debug
    /// assertions, a 2^64-step loop without).
    #[test]
    fn missing_in_window_at_the_last_sequence_number() {
        let mut w = ReplayWindow::new(64, true);
        w.advance(u64::MAX);
        w.advance(u64::MAX - 2);
        assert_eq!(w.missing_in_window(), 62);
    }

    #[test]
    fn window_is_clamped() {
        assert_eq!(ReplayWindow::new(10_000, false).window(), MAX_WINDOW);
    }

    #[test]
    fn esn_inference_case_a_and_b() {
        // RFC 4303 A2.2 case A: window inside one subspace.
        assert_eq!(infer_esn(0x1_0000_1000, 0x1001, 64), Ok(0x1_0000_1001));
        assert_eq!(infer_esn(0x1_0000_1000, 0x0fc1, 64), Ok(0x1_0000_0fc1));
        // Below the window: assume the next subspace (wrapped forward).
        assert_eq!(infer_esn(0x1_0000_1000, 0x0010, 64), Ok(0x2_0000_0010));
        // Case B: window spans the 2^32 boundary.
        assert_eq!(infer_esn(0x2_0000_0010, 0xffff_fff0, 64), Ok(0x1_ffff_fff0));
        assert_eq!(infer_esn(0x2_0000_0010, 0x0000_0011, 64), Ok(0x2_0000_0011));
        // Nothing received yet and a sequence number from "before 0".
        assert_eq!(infer_esn(0, 0xffff_fff0, 64), Err(ReplayError::TooOld));
        assert_eq!(infer_esn(0, 1, 64), Ok(1));
    }

    #[test]
    fn esn_wraps_across_low_half() {
        let mut w = ReplayWindow::new(64, true);
        // Walk across the 2^32 boundary of the low half.
        let start: u64 = 0xffff_ff00;
        for s in start..start + 0x200 {
            let low = s as u32;
            assert_eq!(accept(&mut w, low), Ok(s), "seq {s:#x}");
        }
        assert_eq!(w.top(), start + 0x1ff);
        // A replay of a pre-wrap packet is taken for the *next* subspace (RFC 4303 A2.2 case A):
        // it passes the pre-check and the ICV, computed over the inferred high half, rejects it.
        assert_eq!(w.check(0xffff_ff80), Ok(0x1_ffff_ff80));
        // A duplicate just after the wrap is caught.
        assert_eq!(w.check((start + 0x1f0) as u32), Err(ReplayError::Duplicate));
    }

    #[test]
    fn non_esn_does_not_wrap() {
        let mut w = ReplayWindow::new(64, false);
        accept(&mut w, u32::MAX).unwrap();
        assert_eq!(w.top(), u32::MAX as u64);
        // Without ESN a low number after 2^32-1 is simply too old.
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
    }

    /// After a restart every number up to the mark is a replay, whether it is inside the
    /// window (duplicate) or left of it (too old); every number above is new, in or out of
    /// order, including those in the top's block and those in the next blocks.
    #[test]
    fn resumed_window_treats_everything_up_to_the_mark_as_seen() {
        for &(win, mark) in &[
            (64u32, 1000u64),
            (1024, 5000),
            (MAX_WINDOW, 64 * 100 + 63),
            (MAX_WINDOW, 64 * 100),
            (32, 1),
        ] {
            let mut w = ReplayWindow::resume(win, false, mark);
            assert_eq!(w.top(), mark);
            for s in mark.saturating_sub(2 * win as u64).max(1)..=mark {
                let r = w.check(s as u32);
                assert!(
                    r == Err(ReplayError::Duplicate) || r == Err(ReplayError::TooOld),
                    "win {win} mark {mark}: {s} accepted ({r:?})"
                );
            }
            assert_eq!(w.missing_in_window(), 0);
            // Above the mark, out of order: 3 first, then 1 and 2 of the same block.
            assert_eq!(accept(&mut w, (mark + 3) as u32), Ok(mark + 3));
            assert_eq!(accept(&mut w, (mark + 1) as u32), Ok(mark + 1));
            assert_eq!(accept(&mut w, (mark + 2) as u32), Ok(mark + 2));
            assert_eq!(w.check(mark as u32), Err(ReplayError::Duplicate));
            // Far ahead: the blocks that enter the window are cleared, the old numbers stay
            // replays.
            assert_eq!(accept(&mut w, (mark + 200) as u32), Ok(mark + 200));
            assert_eq!(w.check((mark + 199) as u32), Ok(mark + 199));
            assert!(w.check(mark as u32).is_err());
        }
        // Mark 0: a fresh window.
        assert_eq!(
            ReplayWindow::resume(64, true, 0),
            ReplayWindow::new(64, true)
        );
    }

    #[test]
    fn resumed_esn_window_infers_from_the_mark() {
        let mark = (3u64 << 32) | 0x10;
        let mut w = ReplayWindow::resume(64, true, mark);
        // The low half of a pre-restart packet just below the mark: the same epoch, a replay.
        assert_eq!(w.check(0x0f), Err(ReplayError::Duplicate));
        // The next one is in epoch 3.
        assert_eq!(accept(&mut w, 0x11), Ok(mark + 1));
        // Non-ESN, mark at the end of the space: nothing is new any more.
        let w = ReplayWindow::resume(64, false, u32::MAX as u64);
        assert!(w.check(u32::MAX).is_err() && w.check(1).is_err());
    }

    /// Model check against a naive set of seen numbers, for windows of several sizes.
    #[test]
    fn matches_a_naive_model() {
        for &win in &[1u32, 32, 64, 65, 127, 1024, MAX_WINDOW] {
            let mut w = ReplayWindow::new(win, false);
            let mut seen = [false; 20_000];
            let mut top = 0u64;
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ win as u64;
            for _ in 0..20_000 {
                // xorshift: mostly forward, sometimes far back.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let jitter = (x % (2 * win as u64 + 10)) as i64 - win as i64;
                let s = ((top as i64 + jitter).clamp(1, 19_999)) as u64;
                let expect = if s > top {
                    Ok(s)
                } else if top - s >= win as u64 {
                    Err(ReplayError::TooOld)
                } else if seen[s as usize] {
                    Err(ReplayError::Duplicate)
                } else {
                    Ok(s)
                };
                assert_eq!(w.check(s as u32), expect, "win {win} top {top} seq {s}");
                if expect.is_ok() {
                    w.advance(s);
                    seen[s as usize] = true;
                    top = top.max(s);
                }
            }
        }
    }
}
