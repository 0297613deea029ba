//! `Reassembler::push` / `expire` (esp/reassembly.rs) against a reference model: fragments of
//! a few IPv4/IPv6 datagrams (two sources, two IDs each, header options that vary per
//! fragment) in any order, sizes, overlaps, duplicates and times, under small limits chosen by
//! the input. The model holds each datagram as a map offset -> bytes and predicts every
//! answer (Complete with its exact bytes, Incomplete, each drop reason), the bytes held, the
//! table and per-source occupancy, and what `expire` reports; the limits are never exceeded.

#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use vpn_userspace::esp::reassembly::{FragDrop, FragResult, Limits, Reassembler};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    v6: bool,
    src: u8,
    id: u8,
}

impl Key {
    fn source(self) -> (bool, u8) {
        (self.v6, self.src)
    }
}

#[derive(Default)]
struct Dg {
    created: u64,
    /// The expected header of the reassembled packet, from the first fragment.
    header: Option<Vec<u8>>,
    /// Offset -> data; never overlapping.
    pieces: BTreeMap<usize, Vec<u8>>,
    end: Option<usize>,
}

impl Dg {
    fn held(&self) -> usize {
        self.header.as_ref().map_or(0, Vec::len) + self.pieces.values().map(Vec::len).sum::<usize>()
    }
}

struct Model {
    lim: Limits,
    table: HashMap<Key, Dg>,
    pending: usize,
}

impl Model {
    fn bytes(&self) -> usize {
        self.table.values().map(Dg::held).sum()
    }

    fn source_use(&self, s: (bool, u8)) -> (usize, usize) {
        let mine = self.table.iter().filter(|(k, _)| k.source() == s);
        mine.fold((0, 0), |(n, b), (_, d)| (n + 1, b + d.held()))
    }

    fn timed_out(&self, created: u64, now: u64) -> bool {
        now.saturating_sub(created) >= self.lim.timeout_ns
    }

    fn expire(&mut self, now: u64) {
        let before = self.table.len();
        let t = self.lim.timeout_ns;
        self.table.retain(|_, d| now.saturating_sub(d.created) < t);
        self.pending += before - self.table.len();
    }

    /// The answer to one fragment: `hdr` is the header the reassembled packet would get from
    /// it (length fields as in the final packet are checked separately).
    fn push(&mut self, f: &Frag, now: u64) -> FragResult {
        let (off, end) = (f.off, f.off + f.data.len());
        if off == 0 && !f.more {
            // IPv4: not a fragment. IPv6: an atomic fragment, returned at once (RFC 6946).
            if !f.key.v6 {
                return FragResult::Dropped(FragDrop::Malformed);
            }
            if f.hdr.len() + f.data.len() > self.lim.max_datagram_len {
                return FragResult::Dropped(FragDrop::TooLarge);
            }
            return FragResult::Complete([&f.hdr[..], &f.data].concat());
        }
        if self
            .table
            .get(&f.key)
            .is_some_and(|d| self.timed_out(d.created, now))
        {
            self.table.remove(&f.key);
            self.pending += 1;
        }
        if self.table.len() >= self.lim.max_datagrams && !self.table.contains_key(&f.key) {
            self.expire(now);
            if self.table.len() >= self.lim.max_datagrams {
                return FragResult::Dropped(FragDrop::TableFull);
            }
        }
        let (src_n, src_bytes) = self.source_use(f.key.source());
        let free = self.lim.max_bytes_total.saturating_sub(self.bytes());
        let source_free = self.lim.max_bytes_per_source.saturating_sub(src_bytes);
        if !self.table.contains_key(&f.key) {
            if src_n >= self.lim.max_datagrams_per_source {
                return FragResult::Dropped(FragDrop::SourceQuota);
            }
            self.table.insert(
                f.key,
                Dg {
                    created: now,
                    ..Dg::default()
                },
            );
        }
        let lim = self.lim;
        let d = self.table.get_mut(&f.key).expect("inserted");
        let max_end = d.pieces.iter().last().map_or(0, |(o, p)| o + p.len());
        let hdr_len = d.header.as_ref().map_or(f.hdr.len(), Vec::len);
        let total = hdr_len + end.max(max_end);
        let max_packet = if f.key.v6 { 40 + 65535 } else { 65535 };
        let overlapping = d.pieces.iter().any(|(o, p)| *o < end && o + p.len() > off);
        let verdict = if total > max_packet {
            Err(FragDrop::Malformed)
        } else if total > lim.max_datagram_len {
            Err(FragDrop::TooLarge)
        } else if match (f.more, d.end) {
            (false, Some(e)) => e != end,
            (false, None) => max_end > end,
            (true, Some(e)) => end >= e,
            (true, None) => false,
        } {
            Err(FragDrop::Malformed)
        } else if overlapping {
            let dup = d.pieces.get(&off) == Some(&f.data) && (f.more || d.end == Some(end));
            if dup {
                return FragResult::Dropped(FragDrop::Duplicate);
            }
            Err(FragDrop::Overlap)
        } else if d.pieces.len() >= lim.max_fragments_per_datagram {
            Err(FragDrop::TooManyFragments)
        } else if f.data.len() + if off == 0 { f.hdr.len() } else { 0 } > free.min(source_free) {
            Err(if source_free < free {
                FragDrop::SourceQuota
            } else {
                FragDrop::MemoryLimit
            })
        } else {
            Ok(())
        };
        if let Err(e) = verdict {
            self.table.remove(&f.key);
            return FragResult::Dropped(e);
        }
        if off == 0 {
            d.header = Some(f.hdr.clone());
        }
        d.pieces.insert(off, f.data.clone());
        if !f.more {
            d.end = Some(end);
        }
        let received: usize = d.pieces.values().map(Vec::len).sum();
        if d.end != Some(received) || d.header.is_none() {
            return FragResult::Incomplete;
        }
        let d = self.table.remove(&f.key).expect("present");
        let mut out = d.header.expect("checked");
        for p in d.pieces.values() {
            out.extend_from_slice(p);
        }
        FragResult::Complete(out)
    }
}

struct Frag {
    key: Key,
    off: usize,
    more: bool,
    data: Vec<u8>,
    /// The reassembled packet's header as this fragment has it (length fields zeroed).
    hdr: Vec<u8>,
    packet: Vec<u8>,
}

fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A fragment on the wire; `opts`: IPv4 options (4 NOPs) / an IPv6 Destination Options header.
fn build(key: Key, opts: bool, off: usize, more: bool, data: Vec<u8>) -> Frag {
    let (mut packet, hdr) = if key.v6 {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = if opts { 60 } else { 44 };
        p[7] = 64;
        p[8..24].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, key.src]);
        p[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        if opts {
            // Next: Fragment; PadN of four.
            p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
        }
        // The unfragmentable part names ESP where it named the Fragment header.
        let mut hdr = p.clone();
        hdr[if opts { 40 } else { 6 }] = 50;
        let fo = (off as u16) | u16::from(more);
        p.extend_from_slice(&[50, 0]);
        p.extend_from_slice(&fo.to_be_bytes());
        p.extend_from_slice(&u32::from(key.id).to_be_bytes());
        let plen = (p.len() - 40 + data.len()) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        (p, hdr)
    } else {
        let ihl = if opts { 24 } else { 20 };
        let mut p = vec![0u8; ihl];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&((ihl + data.len()) as u16).to_be_bytes());
        p[5] = key.id;
        let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&fo.to_be_bytes());
        p[8] = 64;
        p[9] = 50;
        p[12..16].copy_from_slice(&[192, 0, 2, key.src]);
        p[16..20].copy_from_slice(&[198, 51, 100, 7]);
        if opts {
            p[20..24].fill(1);
        }
        let sum = checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut hdr = p.clone();
        hdr[2..4].fill(0);
        hdr[6..8].fill(0);
        hdr[10..12].fill(0);
        (p, hdr)
    };
    packet.extend_from_slice(&data);
    Frag {
        key,
        off,
        more,
        data,
        hdr,
        packet,
    }
}

/// The model's packet with the length fields (and IPv4 checksum) reassembly writes.
fn finish(v6: bool, hdr_len: usize, mut p: Vec<u8>) -> Vec<u8> {
    let len = p.len();
    if v6 {
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let sum = checksum(&p[..hdr_len]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((h, ops)) = data.split_first_chunk::<7>() else {
        return;
    };
    let lim = Limits {
        max_datagrams: 1 + usize::from(h[0] % 4),
        max_fragments_per_datagram: 1 + usize::from(h[1] % 8),
        max_datagram_len: 60 + usize::from(h[2]) * 8,
        max_bytes_total: 64 + usize::from(h[3]) * 16,
        max_datagrams_per_source: 1 + usize::from(h[4] % 4),
        max_bytes_per_source: 64 + usize::from(h[5]) * 16,
        timeout_ns: 1 + u64::from(h[6]) * 100,
    };
    let mut r = Reassembler::new(lim);
    let mut m = Model {
        lim,
        table: HashMap::new(),
        pending: 0,
    };
    let mut now = 0u64;
    for op in ops.chunks_exact(5) {
        now += u64::from(op[4]) * 10;
        if op[0] & 0x80 != 0 {
            m.expire(now);
            assert_eq!(r.expire(now), std::mem::take(&mut m.pending));
        } else {
            let key = Key {
                v6: op[0] & 1 != 0,
                src: (op[0] >> 1) & 1,
                id: (op[0] >> 2) & 1,
            };
            let more = op[3] & 1 != 0;
            // Non-final fragments carry multiples of 8 bytes (the parser drops others).
            let len = if more {
                8 * (1 + usize::from(op[2] % 8))
            } else {
                1 + usize::from(op[2] % 64)
            };
            let off = 8 * usize::from(op[1] % 32);
            let fill: Vec<u8> = (0..len).map(|i| (i as u8) ^ (op[3] & 0xfe)).collect();
            let f = build(key, op[0] & 8 != 0, off, more, fill);
            let got = r.push(&f.packet, now);
            let want = match m.push(&f, now) {
                FragResult::Complete(w) => {
                    FragResult::Complete(finish(key.v6, header_len(key.v6, &w), w))
                }
                w => w,
            };
            if let FragResult::Complete(g) = &got {
                assert!(g.len() <= lim.max_datagram_len);
            }
            assert_eq!(got, want, "{key:?} off {off} len {len} more {more}");
        }
        assert_eq!(r.in_flight(), m.table.len());
        assert_eq!(r.bytes_held(), m.bytes());
        assert!(r.in_flight() <= lim.max_datagrams && r.bytes_held() <= lim.max_bytes_total);
        let mut sources: Vec<_> = m.table.keys().map(|k| k.source()).collect();
        sources.sort();
        sources.dedup();
        assert_eq!(r.sources(), sources.len());
        for s in sources {
            let (n, b) = m.source_use(s);
            assert!(n <= lim.max_datagrams_per_source && b <= lim.max_bytes_per_source);
        }
    }
});

/// Length of the header the model put in front of the payload.
fn header_len(v6: bool, p: &[u8]) -> usize {
    if v6 {
        if p[6] == 60 { 48 } else { 40 }
    } else {
        usize::from(p[0] & 0x0f) * 4
    }
}
