//! The anti-replay window (vpn-common's `ReplayWindow`, the one the XDP pre-check and the
//! worker share) against a plain model of RFC 4303 3.4.3 and appendix A: the set of accepted
//! 64-bit sequence numbers, the highest of them `top`, and a window of `w` numbers.
//!
//! With ESN, the receiver sees the low 32 bits only; appendix A2.2 takes the one 64-bit number
//! with those low bits in `[top - w + 1, top - w + 2^32]`. The model computes that candidate
//! directly with wide arithmetic (no case A / case B), so it checks the implementation's case
//! analysis, its bitmap (RFC 6479 block recycling) and its window edges.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use vpn_common::{ReplayError, ReplayWindow, replay::MAX_WINDOW};

struct Model {
    w: u64,
    esn: bool,
    top: u64,
    seen: BTreeSet<u64>,
}

impl Model {
    /// RFC 4303 A2.2: the full number a received low half stands for.
    fn infer(&self, low: u32) -> Result<u64, ReplayError> {
        if !self.esn {
            return Ok(u64::from(low));
        }
        // Inference needs a window even when anti-replay is off (the implementation's 64).
        let w = if self.w == 0 { 64 } else { self.w };
        let lo = i128::from(self.top) - i128::from(w) + 1;
        let cand = lo + (i128::from(low) - lo).rem_euclid(1 << 32);
        // Before 0 or past 2^64 - 1: nothing the sender can have sent.
        u64::try_from(cand).map_err(|_| ReplayError::TooOld)
    }

    fn check_full(&self, seq: u64) -> Result<u64, ReplayError> {
        if seq == 0 {
            Err(ReplayError::Zero)
        } else if self.w == 0 || seq > self.top {
            Ok(seq)
        } else if self.top - seq >= self.w {
            Err(ReplayError::TooOld)
        } else if self.seen.contains(&seq) {
            Err(ReplayError::Duplicate)
        } else {
            Ok(seq)
        }
    }

    fn advance(&mut self, seq: u64) {
        self.top = self.top.max(seq);
        self.seen.insert(seq);
        // Only the window matters; keep the set small.
        let keep = self.top.saturating_sub(u64::from(MAX_WINDOW));
        self.seen = self.seen.split_off(&keep);
    }

    fn missing(&self) -> u32 {
        let lo = self.top.saturating_sub(self.w.saturating_sub(1)).max(1);
        if self.top < lo {
            return 0;
        }
        let held = self.seen.range(lo..=self.top).count() as u64;
        (self.top - lo + 1 - held) as u32
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, ops)) = data.split_first_chunk::<3>() else {
        return;
    };
    let window = u32::from(u16::from_le_bytes([head[0], head[1]])) % (MAX_WINDOW + 1);
    let esn = head[2] & 1 != 0;
    let mut w = ReplayWindow::new(window, esn);
    let mut m = Model {
        w: u64::from(window),
        esn,
        top: 0,
        seen: BTreeSet::new(),
    };
    // Each op: a kind byte and 8 bytes of sequence number.
    for op in ops.chunks_exact(9) {
        let raw = u64::from_le_bytes(op[1..].try_into().unwrap());
        match op[0] % 4 {
            // A packet as the worker takes it: check the low half, then (ICV good) advance.
            0 | 1 => {
                let low = raw as u32;
                let got = w.check(low);
                let want = m.infer(low).and_then(|s| m.check_full(s));
                assert_eq!(
                    got, want,
                    "check({low:#x}) top {:#x} w {window} esn {esn}",
                    m.top
                );
                if let Ok(s) = got
                    && op[0] % 4 == 0
                {
                    w.advance(s);
                    m.advance(s);
                }
            }
            // A full number judged again after the window moved (`check_full`, as the worker
            // does after the ICV): near the top, so that it often lands inside the window; or
            // anywhere (the sender's counter jumped on).
            k => {
                let seq = if k == 2 {
                    m.top.wrapping_sub(raw % (2 * u64::from(MAX_WINDOW)))
                } else if esn {
                    raw
                } else {
                    u64::from(raw as u32)
                };
                let got = w.check_full(seq);
                assert_eq!(
                    got,
                    m.check_full(seq),
                    "check_full({seq:#x}) top {:#x}",
                    m.top
                );
                if let Ok(s) = got {
                    w.advance(s);
                    m.advance(s);
                }
            }
        }
        assert_eq!(w.top(), m.top);
    }
    assert_eq!(w.missing_in_window(), m.missing());
});
