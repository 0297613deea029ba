//! Reassembly of outer IPv4/IPv6 fragments carrying ESP or ESP-in-UDP (RFC 791 section 3.2,
//! RFC 8200 section 4.5, RFC 5722). Sans-IO: the caller passes whole IP packets (starting at
//! the IP header) and a monotonic clock reading; nothing here reads a clock or does I/O.
//!
//! Choices:
//! - Overlapping fragments discard the whole datagram (RFC 5722; applied to IPv4 too). An exact
//!   duplicate (same offset, bytes and M flag) is dropped alone as [`FragDrop::Duplicate`] and
//!   the datagram carries on (allowed by RFC 8200 section 4.5).
//! - A packet that does not parse as a fragment is dropped as [`FragDrop::Malformed`] without
//!   touching any state (its key cannot be trusted). Every other drop also discards the
//!   datagram the fragment belongs to, if one is in flight.
//! - IPv4: the reassembled header is the first fragment's (options included) with flags and
//!   offset zeroed, total length and checksum recomputed.
//! - IPv6: the unfragmentable part is the fixed header plus any Hop-by-Hop, Routing and
//!   Destination Options headers before the Fragment header, taken from the first fragment.
//!   An atomic fragment (offset 0, M=0) is returned at once, in isolation (RFC 6946).
//! - Timeouts: `expire` scans the table only once its oldest datagram may have timed out; `push`
//!   also drops a timed-out datagram of the same key, and retries after expiring when the table
//!   is full. Those are reported by the next `expire`.

use std::collections::{HashMap, hash_map::Entry};

const IPV4_MIN_HDR: usize = 20;
const IPV6_HDR: usize = 40;
/// 16-bit length fields: IPv4 total length, IPv6 payload length.
const IP_MAX_LEN: usize = 65535;
const FRAG_HDR: usize = 8;

const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_DEST_OPTS: u8 = 60;

/// Bounds on the reassembly state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Datagrams in flight.
    pub max_datagrams: usize,
    pub max_fragments_per_datagram: usize,
    /// Length of the reassembled packet, IP header(s) included.
    pub max_datagram_len: usize,
    /// Stored header and payload bytes over all datagrams in flight.
    pub max_bytes_total: usize,
    /// Datagrams in flight from one source address: no single source (spoofed or not) can
    /// take the whole table from the others.
    pub max_datagrams_per_source: usize,
    /// Stored bytes from one source address.
    pub max_bytes_per_source: usize,
    /// Age, from its first fragment, at which a datagram is dropped.
    pub timeout_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_datagrams: 1024,
            max_fragments_per_datagram: 64,
            max_datagram_len: 65535,
            max_bytes_total: 4 << 20,
            max_datagrams_per_source: 64,
            max_bytes_per_source: 512 << 10,
            timeout_ns: 30_000_000_000,
        }
    }
}

/// Why a fragment was dropped. Except for `Malformed` at parse time and `Duplicate`, the
/// datagram it belongs to is discarded with it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FragDrop {
    /// Not a well-formed fragment (truncated, bad lengths or checksum, not fragmented, beyond
    /// 65535 octets), or inconsistent with the datagram's final length.
    Malformed,
    /// Overlaps a fragment already held (RFC 5722).
    Overlap,
    /// Exact duplicate of a fragment already held: only this packet is dropped.
    Duplicate,
    TooManyFragments,
    /// Longer than `Limits::max_datagram_len`.
    TooLarge,
    /// `Limits::max_datagrams` in flight: a new datagram cannot start.
    TableFull,
    /// `Limits::max_bytes_total` would be exceeded.
    MemoryLimit,
    /// The source's quota (`Limits::max_datagrams_per_source` or `max_bytes_per_source`)
    /// would be exceeded.
    SourceQuota,
    /// Counted through [`Reassembler::expire`], never returned by `push`.
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragResult {
    Incomplete,
    /// The reassembled IP packet.
    Complete(Vec<u8>),
    Dropped(FragDrop),
}

/// RFC 791 section 3.2 (IPv4) and RFC 8200 section 4.5 (IPv6) reassembly keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        id: u16,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        id: u32,
    },
}

impl Key {
    /// The source address, the unit of the per-source quotas.
    fn source(self) -> [u8; 16] {
        match self {
            Key::V4 { src, .. } => {
                let mut s = [0u8; 16];
                // IPv4-mapped (::ffff:a.b.c.d): never equal to an IPv6 source.
                s[10] = 0xff;
                s[11] = 0xff;
                s[12..].copy_from_slice(&src);
                s
            }
            Key::V6 { src, .. } => src,
        }
    }

    /// Longest packet the length fields can describe.
    fn max_packet_len(self) -> usize {
        match self {
            Key::V4 { .. } => IP_MAX_LEN,
            Key::V6 { .. } => IPV6_HDR + IP_MAX_LEN,
        }
    }
}

/// A validated fragment, borrowing from the packet.
struct Parsed<'a> {
    key: Key,
    /// The reassembled packet's header as this fragment carries it (IPv6: up to, without, the
    /// Fragment header).
    hdr: &'a [u8],
    /// IPv6: position in `hdr` of the Next Header naming the Fragment header, and its value
    /// after reassembly (the Fragment header's Next Header).
    nh_fix: Option<(usize, u8)>,
    off: usize,
    more: bool,
    data: &'a [u8],
}

impl Parsed<'_> {
    fn header(&self) -> Vec<u8> {
        let mut h = self.hdr.to_vec();
        if let Some((pos, nh)) = self.nh_fix
            && let Some(b) = h.get_mut(pos)
        {
            *b = nh;
        }
        h
    }
}

fn parse(p: &[u8]) -> Result<Parsed<'_>, FragDrop> {
    match p.first().map(|b| b >> 4) {
        Some(4) => parse_v4(p),
        Some(6) => parse_v6(p),
        _ => Err(FragDrop::Malformed),
    }
}

fn parse_v4(p: &[u8]) -> Result<Parsed<'_>, FragDrop> {
    if p.len() < IPV4_MIN_HDR {
        return Err(FragDrop::Malformed);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // Bytes past the total length (link padding) are ignored.
    if ihl < IPV4_MIN_HDR || total < ihl || total > p.len() {
        return Err(FragDrop::Malformed);
    }
    // RFC 1122 section 3.2.1.2.
    if checksum(&p[..ihl]) != 0 {
        return Err(FragDrop::Malformed);
    }
    let ff = u16::from_be_bytes([p[6], p[7]]);
    let more = ff & 0x2000 != 0;
    let off = usize::from(ff & 0x1fff) * 8;
    let data = &p[ihl..total];
    // Not a fragment, empty, or a non-final length not in 8-octet units (RFC 791).
    if (!more && off == 0) || data.is_empty() || (more && !data.len().is_multiple_of(8)) {
        return Err(FragDrop::Malformed);
    }
    if ihl + off + data.len() > IP_MAX_LEN {
        return Err(FragDrop::Malformed);
    }
    Ok(Parsed {
        key: Key::V4 {
            src: [p[12], p[13], p[14], p[15]],
            dst: [p[16], p[17], p[18], p[19]],
            proto: p[9],
            id: u16::from_be_bytes([p[4], p[5]]),
        },
        hdr: &p[..ihl],
        nh_fix: None,
        off,
        more,
        data,
    })
}

fn parse_v6(p: &[u8]) -> Result<Parsed<'_>, FragDrop> {
    if p.len() < IPV6_HDR {
        return Err(FragDrop::Malformed);
    }
    let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
    // Zero means a jumbogram, which cannot be fragmented (RFC 2675 section 3).
    if plen == 0 || IPV6_HDR + plen > p.len() {
        return Err(FragDrop::Malformed);
    }
    let p = &p[..IPV6_HDR + plen];
    // Walk the unfragmentable part to the Fragment header (RFC 8200 sections 4.1, 4.5).
    let (mut nh, mut nh_pos, mut pos) = (p[6], 6, IPV6_HDR);
    loop {
        match nh {
            NH_FRAGMENT => break,
            NH_HOP_BY_HOP if pos == IPV6_HDR => {}
            NH_ROUTING | NH_DEST_OPTS => {}
            _ => return Err(FragDrop::Malformed),
        }
        let Some(&[next, len]) = p.get(pos..pos + 2) else {
            return Err(FragDrop::Malformed);
        };
        let ext_len = (usize::from(len) + 1) * 8;
        if pos + ext_len > p.len() {
            return Err(FragDrop::Malformed);
        }
        (nh, nh_pos, pos) = (next, pos, pos + ext_len);
    }
    let Some(fh) = p.get(pos..pos + FRAG_HDR) else {
        return Err(FragDrop::Malformed);
    };
    let ff = u16::from_be_bytes([fh[2], fh[3]]);
    let more = ff & 1 != 0;
    let off = usize::from(ff >> 3) * 8;
    let data = &p[pos + FRAG_HDR..];
    // RFC 6946: an atomic fragment may be empty; others follow RFC 8200 section 4.5.
    if (more || off != 0)
        && (data.is_empty()
            || (more && !data.len().is_multiple_of(8))
            || pos + off + data.len() > IPV6_HDR + IP_MAX_LEN)
    {
        return Err(FragDrop::Malformed);
    }
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    Ok(Parsed {
        key: Key::V6 {
            src,
            dst,
            id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
        },
        hdr: &p[..pos],
        nh_fix: Some((nh_pos, fh[0])),
        off,
        more,
        data,
    })
}

/// Internet checksum (RFC 1071); zero when computed over a header holding a valid checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes the length fields (and IPv4 flags and checksum) of a reassembled packet.
fn finish(key: Key, out: &mut [u8], hdr_len: usize) {
    match key {
        Key::V4 { .. } => {
            let total = out.len() as u16;
            out[2..4].copy_from_slice(&total.to_be_bytes());
            out[6..8].fill(0);
            out[10..12].fill(0);
            let sum = checksum(&out[..hdr_len]);
            out[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        Key::V6 { .. } => {
            let plen = (out.len() - IPV6_HDR) as u16;
            out[4..6].copy_from_slice(&plen.to_be_bytes());
        }
    }
}

#[derive(Debug)]
struct Piece {
    off: usize,
    data: Vec<u8>,
}

impl Piece {
    fn end(&self) -> usize {
        self.off + self.data.len()
    }
}

#[derive(Debug, Default)]
struct Datagram {
    created_ns: u64,
    /// Header of the reassembled packet, from the first fragment; empty until it arrives.
    header: Vec<u8>,
    /// Sorted by offset, never overlapping.
    pieces: Vec<Piece>,
    /// Payload length, set by the last fragment (M=0).
    end: Option<usize>,
    /// Sum of the pieces' lengths.
    received: usize,
}

impl Datagram {
    fn held(&self) -> usize {
        self.header.len() + self.received
    }

    fn is_complete(&self) -> bool {
        // Pieces never overlap nor pass `end`, so `received == end` means all of it is there.
        self.end == Some(self.received) && !self.header.is_empty()
    }

    /// Adds a fragment; returns the bytes now held for it.
    fn add(&mut self, f: &Parsed<'_>, limits: &Limits, free: usize) -> Result<usize, FragDrop> {
        let end = f.off + f.data.len();
        let max_end = self.pieces.last().map_or(0, Piece::end);
        let hdr_len = if self.header.is_empty() {
            f.hdr.len()
        } else {
            self.header.len()
        };
        let total = hdr_len + end.max(max_end);
        if total > f.key.max_packet_len() {
            return Err(FragDrop::Malformed);
        }
        if total > limits.max_datagram_len {
            return Err(FragDrop::TooLarge);
        }
        // Only the last fragment sets the length, and nothing lies past it.
        match (f.more, self.end) {
            (false, Some(e)) if e != end => return Err(FragDrop::Malformed),
            (false, None) if max_end > end => return Err(FragDrop::Malformed),
            (true, Some(e)) if end >= e => return Err(FragDrop::Malformed),
            _ => {}
        }
        // RFC 5722 / RFC 8200 section 4.5.
        let idx = self.pieces.partition_point(|p| p.off < f.off);
        if let Some(next) = self.pieces.get(idx)
            && next.off < end
        {
            let dup = next.off == f.off && next.data == f.data && (f.more || self.end == Some(end));
            return Err(if dup {
                FragDrop::Duplicate
            } else {
                FragDrop::Overlap
            });
        }
        if let Some(prev) = idx.checked_sub(1).and_then(|i| self.pieces.get(i))
            && prev.end() > f.off
        {
            return Err(FragDrop::Overlap);
        }
        if self.pieces.len() >= limits.max_fragments_per_datagram {
            return Err(FragDrop::TooManyFragments);
        }
        let cost = f.data.len() + if f.off == 0 { f.hdr.len() } else { 0 };
        if cost > free {
            return Err(FragDrop::MemoryLimit);
        }
        if f.off == 0 {
            self.header = f.header();
        }
        self.pieces.insert(
            idx,
            Piece {
                off: f.off,
                data: f.data.to_vec(),
            },
        );
        self.received += f.data.len();
        if !f.more {
            self.end = Some(end);
        }
        Ok(cost)
    }

    fn assemble(self, key: Key) -> Vec<u8> {
        let hdr_len = self.header.len();
        let mut out = self.header;
        out.reserve_exact(self.received);
        for p in &self.pieces {
            out.extend_from_slice(&p.data);
        }
        finish(key, &mut out, hdr_len);
        out
    }
}

/// What one source holds.
#[derive(Clone, Copy, Debug, Default)]
struct SourceUse {
    datagrams: usize,
    bytes: usize,
}

fn release_source(sources: &mut HashMap<[u8; 16], SourceUse>, key: Key, held: usize) {
    let src = key.source();
    if let Some(u) = sources.get_mut(&src) {
        u.datagrams = u.datagrams.saturating_sub(1);
        u.bytes = u.bytes.saturating_sub(held);
        if u.datagrams == 0 {
            sources.remove(&src);
        }
    }
}

/// Fragment reassembly table, bounded by [`Limits`].
#[derive(Debug)]
pub struct Reassembler {
    limits: Limits,
    table: HashMap<Key, Datagram>,
    /// Per source address: datagrams in flight and bytes held (entries with none are removed).
    sources: HashMap<[u8; 16], SourceUse>,
    /// Sum of `Datagram::held`.
    bytes: usize,
    /// Lower bound of `created_ns` over the table.
    oldest_ns: u64,
    /// Timed out outside `expire`, reported by the next `expire`.
    expired_pending: usize,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Reassembler {
            limits,
            table: HashMap::new(),
            sources: HashMap::new(),
            bytes: 0,
            oldest_ns: u64::MAX,
            expired_pending: 0,
        }
    }

    /// Takes one IP packet (IP header first) that is a fragment. `now_ns` is a monotonic clock
    /// reading supplied by the caller (sans-IO: never read a clock).
    pub fn push(&mut self, packet: &[u8], now_ns: u64) -> FragResult {
        let f = match parse(packet) {
            Ok(f) => f,
            Err(e) => return FragResult::Dropped(e),
        };
        if f.off == 0 && !f.more {
            return self.atomic(&f);
        }
        let key = f.key;
        if self
            .table
            .get(&key)
            .is_some_and(|dg| self.timed_out(dg.created_ns, now_ns))
        {
            self.remove(&key);
            self.expired_pending += 1;
        }
        if self.table.len() >= self.limits.max_datagrams && !self.table.contains_key(&key) {
            self.expire_stale(now_ns);
            if self.table.len() >= self.limits.max_datagrams {
                return FragResult::Dropped(FragDrop::TableFull);
            }
        }
        let src = key.source();
        let used = self.sources.get(&src).copied().unwrap_or_default();
        let free = self.limits.max_bytes_total.saturating_sub(self.bytes);
        let source_free = self.limits.max_bytes_per_source.saturating_sub(used.bytes);
        let dg = match self.table.entry(key) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                if used.datagrams >= self.limits.max_datagrams_per_source {
                    return FragResult::Dropped(FragDrop::SourceQuota);
                }
                self.oldest_ns = self.oldest_ns.min(now_ns);
                self.sources.entry(src).or_default().datagrams += 1;
                v.insert(Datagram {
                    created_ns: now_ns,
                    ..Datagram::default()
                })
            }
        };
        match dg.add(&f, &self.limits, free.min(source_free)) {
            Ok(added) => {
                self.bytes += added;
                self.sources.entry(src).or_default().bytes += added;
                if !dg.is_complete() {
                    return FragResult::Incomplete;
                }
                match self.table.remove(&key) {
                    Some(dg) => {
                        self.release(key, dg.held());
                        FragResult::Complete(dg.assemble(key))
                    }
                    None => FragResult::Incomplete,
                }
            }
            Err(FragDrop::Duplicate) => FragResult::Dropped(FragDrop::Duplicate),
            Err(e) => {
                self.remove(&key);
                // The per-source share ran out before the table's.
                let e = if e == FragDrop::MemoryLimit && source_free < free {
                    FragDrop::SourceQuota
                } else {
                    e
                };
                FragResult::Dropped(e)
            }
        }
    }

    /// Drops datagrams older than the timeout; returns how many were expired (each counts as
    /// `FragDrop::Timeout` for the caller's counters).
    pub fn expire(&mut self, now_ns: u64) -> usize {
        self.expire_stale(now_ns);
        std::mem::take(&mut self.expired_pending)
    }

    pub fn in_flight(&self) -> usize {
        self.table.len()
    }

    pub fn bytes_held(&self) -> usize {
        self.bytes
    }

    fn timed_out(&self, created_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(created_ns) >= self.limits.timeout_ns
    }

    fn remove(&mut self, key: &Key) {
        if let Some(dg) = self.table.remove(key) {
            self.release(*key, dg.held());
        }
    }

    /// Accounts for a datagram of `key` holding `held` bytes leaving the table.
    fn release(&mut self, key: Key, held: usize) {
        self.bytes -= held;
        release_source(&mut self.sources, key, held);
    }

    /// Sources with a datagram in flight (for tests and the operator).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Scans only when the oldest datagram may have timed out, so each scan removes one or more.
    fn expire_stale(&mut self, now_ns: u64) {
        if self.table.is_empty() || !self.timed_out(self.oldest_ns, now_ns) {
            return;
        }
        let timeout = self.limits.timeout_ns;
        let (mut oldest, mut removed, mut freed) = (u64::MAX, 0, 0);
        let sources = &mut self.sources;
        self.table.retain(|key, dg| {
            if now_ns.saturating_sub(dg.created_ns) >= timeout {
                removed += 1;
                freed += dg.held();
                release_source(sources, *key, dg.held());
                false
            } else {
                oldest = oldest.min(dg.created_ns);
                true
            }
        });
        self.bytes -= freed;
        self.expired_pending += removed;
        self.oldest_ns = oldest;
    }

    /// RFC 6946: an atomic fragment is processed in isolation.
    fn atomic(&self, f: &Parsed<'_>) -> FragResult {
        let len = f.hdr.len() + f.data.len();
        if len > self.limits.max_datagram_len {
            return FragResult::Dropped(FragDrop::TooLarge);
        }
        let mut out = f.header();
        out.extend_from_slice(f.data);
        finish(f.key, &mut out, f.hdr.len());
        FragResult::Complete(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FragDrop::*;
    use FragResult::*;

    const ESP: u8 = 50;
    const UDP: u8 = 17;
    const SEC: u64 = 1_000_000_000;

    fn fix_v4_checksum(p: &mut [u8]) {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        p[10..12].fill(0);
        let sum = checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn v4_datagram(options: &[u8], len: usize, id: u16, proto: u8) -> Vec<u8> {
        let ihl = IPV4_MIN_HDR + options.len();
        let mut p = vec![0u8; ihl];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&((ihl + len) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[192, 0, 2, 1]);
        p[16..20].copy_from_slice(&[198, 51, 100, 7]);
        p[20..].copy_from_slice(options);
        p.extend(payload(len, id as u8));
        fix_v4_checksum(&mut p);
        p
    }

    /// Cuts the payload at `cuts`; only the first fragment keeps the options.
    fn v4_fragments(dg: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let ihl = usize::from(dg[0] & 0x0f) * 4;
        let data = &dg[ihl..];
        let starts = std::iter::once(0).chain(cuts.iter().copied());
        let ends = cuts.iter().copied().chain(std::iter::once(data.len()));
        starts
            .zip(ends)
            .map(|(s, e)| {
                let mut f = if s == 0 {
                    dg[..ihl].to_vec()
                } else {
                    let mut h = dg[..IPV4_MIN_HDR].to_vec();
                    h[0] = 0x45;
                    h
                };
                f.extend_from_slice(&data[s..e]);
                let len = f.len() as u16;
                f[2..4].copy_from_slice(&len.to_be_bytes());
                let mf = if e < data.len() { 0x2000 } else { 0 };
                f[6..8].copy_from_slice(&((s / 8) as u16 | mf).to_be_bytes());
                fix_v4_checksum(&mut f);
                f
            })
            .collect()
    }

    /// An IPv6 datagram with the extension headers `ext` (each 16 bytes) before `upper`.
    /// Returns it with the length of its unfragmentable part and the last Next Header offset.
    fn v6_datagram(ext: &[u8], upper: u8, len: usize, seed: u8) -> (Vec<u8>, usize, usize) {
        let mut p = vec![0u8; IPV6_HDR];
        p[0] = 0x60;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let chain: Vec<u8> = ext.iter().copied().chain(std::iter::once(upper)).collect();
        p[6] = chain[0];
        let mut nh_pos = 6;
        for nh in &chain[1..] {
            nh_pos = p.len();
            // Next Header, length 1 (16 bytes), PadN filling the rest.
            p.extend_from_slice(&[*nh, 1, 1, 12]);
            p.extend_from_slice(&[0; 12]);
        }
        let unfrag = p.len();
        p.extend(payload(len, seed));
        let plen = (p.len() - IPV6_HDR) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        (p, unfrag, nh_pos)
    }

    fn v6_fragments(
        dg: &[u8],
        unfrag: usize,
        nh_pos: usize,
        cuts: &[usize],
        id: u32,
    ) -> Vec<Vec<u8>> {
        let data = &dg[unfrag..];
        let starts = std::iter::once(0).chain(cuts.iter().copied());
        let ends = cuts.iter().copied().chain(std::iter::once(data.len()));
        starts
            .zip(ends)
            .map(|(s, e)| {
                let mut f = dg[..unfrag].to_vec();
                f[nh_pos] = NH_FRAGMENT;
                let m = u16::from(e < data.len());
                f.extend_from_slice(&[dg[nh_pos], 0]);
                f.extend_from_slice(&((s as u16) | m).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
                f.extend_from_slice(&data[s..e]);
                let plen = (f.len() - IPV6_HDR) as u16;
                f[4..6].copy_from_slice(&plen.to_be_bytes());
                f
            })
            .collect()
    }

    /// Pushes fragments in the given order: all but the last must be `Incomplete`.
    fn push_all(r: &mut Reassembler, frags: &[Vec<u8>], order: &[usize]) -> FragResult {
        let (last, init) = order.split_last().unwrap();
        for &i in init {
            assert_eq!(r.push(&frags[i], 0), Incomplete, "fragment {i}");
            check_invariants(r);
        }
        let res = r.push(&frags[*last], 0);
        check_invariants(r);
        res
    }

    fn check_invariants(r: &Reassembler) {
        let mut bytes = 0;
        for dg in r.table.values() {
            assert!(dg.pieces.windows(2).all(|w| w[0].end() <= w[1].off));
            assert_eq!(
                dg.received,
                dg.pieces.iter().map(|p| p.data.len()).sum::<usize>()
            );
            assert!(dg.pieces.len() <= r.limits.max_fragments_per_datagram);
            assert!(r.oldest_ns <= dg.created_ns);
            bytes += dg.held();
        }
        assert_eq!(bytes, r.bytes);
        assert!(r.bytes <= r.limits.max_bytes_total);
        // The per-source accounting matches the table, and no source exceeds its quota.
        let mut per_source: HashMap<[u8; 16], SourceUse> = HashMap::new();
        for (key, dg) in &r.table {
            let u = per_source.entry(key.source()).or_default();
            u.datagrams += 1;
            u.bytes += dg.held();
        }
        assert_eq!(per_source.len(), r.sources.len());
        for (src, u) in &per_source {
            let got = r.sources[src];
            assert_eq!((got.datagrams, got.bytes), (u.datagrams, u.bytes));
            assert!(u.datagrams <= r.limits.max_datagrams_per_source);
            assert!(u.bytes <= r.limits.max_bytes_per_source);
        }
        assert!(r.table.len() <= r.limits.max_datagrams);
    }

    fn reassembler() -> Reassembler {
        Reassembler::new(Limits::default())
    }

    #[test]
    fn v4_in_order() {
        let dg = v4_datagram(&[], 3000, 0x1234, ESP);
        let frags = v4_fragments(&dg, &[1480, 2960]);
        let mut r = reassembler();
        assert_eq!(push_all(&mut r, &frags, &[0, 1, 2]), Complete(dg));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn v4_out_of_order() {
        let dg = v4_datagram(&[], 1000, 7, UDP);
        let frags = v4_fragments(&dg, &[200, 408, 600, 992]);
        for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 4, 0, 3, 2]] {
            let mut r = reassembler();
            assert_eq!(push_all(&mut r, &frags, &order), Complete(dg.clone()));
            assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        }
    }

    #[test]
    fn v4_options_from_first_fragment() {
        // Record Route (not copied), then End of Option List padding.
        let opts = [7, 7, 4, 0, 0, 0, 0, 0];
        let dg = v4_datagram(&opts, 500, 99, ESP);
        let frags = v4_fragments(&dg, &[240]);
        assert_eq!(frags[1][0], 0x45);
        let mut r = reassembler();
        assert_eq!(push_all(&mut r, &frags, &[1, 0]), Complete(dg.clone()));
        assert_eq!(push_all(&mut r, &frags, &[0, 1]), Complete(dg));
    }

    #[test]
    fn v4_keys_are_separate() {
        let a = v4_datagram(&[], 100, 5, ESP);
        let b = v4_datagram(&[], 100, 5, UDP);
        let (fa, fb) = (v4_fragments(&a, &[48]), v4_fragments(&b, &[48]));
        let mut r = reassembler();
        assert_eq!(r.push(&fa[0], 0), Incomplete);
        assert_eq!(r.push(&fb[1], 0), Incomplete);
        assert_eq!(r.in_flight(), 2);
        assert_eq!(r.push(&fa[1], 0), Complete(a));
        assert_eq!(r.push(&fb[0], 0), Complete(b));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn v6_without_extension_headers() {
        let (dg, unfrag, nh_pos) = v6_datagram(&[], ESP, 2000, 1);
        let frags = v6_fragments(&dg, unfrag, nh_pos, &[1232], 0xdead_beef);
        let mut r = reassembler();
        assert_eq!(push_all(&mut r, &frags, &[0, 1]), Complete(dg.clone()));
        assert_eq!(push_all(&mut r, &frags, &[1, 0]), Complete(dg));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn v6_with_extension_headers() {
        let ext = [NH_HOP_BY_HOP, NH_DEST_OPTS, NH_ROUTING];
        let (dg, unfrag, nh_pos) = v6_datagram(&ext, UDP, 1500, 2);
        assert_eq!(unfrag, IPV6_HDR + 48);
        let frags = v6_fragments(&dg, unfrag, nh_pos, &[256, 512, 1000], 42);
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut r = reassembler();
            assert_eq!(push_all(&mut r, &frags, &order), Complete(dg.clone()));
            assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        }
    }

    #[test]
    fn v6_atomic_fragment_in_isolation() {
        let (dg, unfrag, nh_pos) = v6_datagram(&[NH_HOP_BY_HOP], ESP, 300, 3);
        let frags = v6_fragments(&dg, unfrag, nh_pos, &[64], 9);
        let atomic = v6_fragments(&dg, unfrag, nh_pos, &[], 9);
        let mut r = reassembler();
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&atomic[0], 0), Complete(dg.clone()));
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.push(&frags[0], 0), Complete(dg));
    }

    #[test]
    fn overlap_discards_datagram() {
        let dg = v4_datagram(&[], 800, 1, ESP);
        let frags = v4_fragments(&dg, &[400]);
        // Same data, starting 8 bytes before fragment 1.
        let other = v4_fragments(&dg, &[392]);
        let mut r = reassembler();
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&other[1], 0), Dropped(Overlap));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        // The key starts afresh.
        assert_eq!(push_all(&mut r, &frags, &[0, 1]), Complete(dg));

        let (dg, unfrag, nh_pos) = v6_datagram(&[], ESP, 800, 4);
        let frags = v6_fragments(&dg, unfrag, nh_pos, &[200, 600], 3);
        let other = v6_fragments(&dg, unfrag, nh_pos, &[200, 608], 3);
        assert_eq!(r.push(&frags[0], 0), Incomplete);
        assert_eq!(r.push(&frags[2], 0), Incomplete);
        // Fragment ending inside the next one.
        assert_eq!(r.push(&other[1], 0), Dropped(Overlap));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        // Same offset and length but different bytes is an overlap, not a duplicate.
        let mut changed = frags[1].clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&changed, 0), Dropped(Overlap));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn exact_duplicate_dropped_alone() {
        let dg = v4_datagram(&[], 600, 2, ESP);
        let frags = v4_fragments(&dg, &[200, 400]);
        let mut r = reassembler();
        assert_eq!(r.push(&frags[0], 0), Incomplete);
        assert_eq!(r.push(&frags[2], 0), Incomplete);
        let held = r.bytes_held();
        for i in [0, 2] {
            let res = r.push(&frags[i], 0);
            assert_eq!(res, Dropped(Duplicate));
        }
        assert_eq!((r.in_flight(), r.bytes_held()), (1, held));
        // A non-final copy of the final fragment conflicts with the length.
        let mut not_last = frags[2].clone();
        not_last[6] |= 0x20;
        fix_v4_checksum(&mut not_last);
        let mut r2 = reassembler();
        assert_eq!(r2.push(&frags[2], 0), Incomplete);
        assert_eq!(r2.push(&not_last, 0), Dropped(Malformed));
        assert_eq!(r2.in_flight(), 0);
        assert_eq!(r.push(&frags[1], 0), Complete(dg));
    }

    #[test]
    fn conflicting_lengths_discard_datagram() {
        let dg = v4_datagram(&[], 64, 3, ESP);
        let frags = v4_fragments(&dg, &[32]);
        let shorter = v4_fragments(&v4_datagram(&[], 56, 3, ESP), &[32]);
        let mut r = reassembler();
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&shorter[1], 0), Dropped(Malformed));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        // Data past a known end.
        let longer = v4_fragments(&v4_datagram(&[], 200, 3, ESP), &[32, 64, 96]);
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&longer[2], 0), Dropped(Malformed));
        assert_eq!(r.in_flight(), 0);
        // A last fragment before data already held.
        assert_eq!(r.push(&longer[2], 0), Incomplete);
        assert_eq!(r.push(&frags[1], 0), Dropped(Malformed));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn too_many_fragments() {
        let limits = Limits {
            max_fragments_per_datagram: 4,
            ..Limits::default()
        };
        let dg = v4_datagram(&[], 80, 4, ESP);
        let frags = v4_fragments(&dg, &[16, 32, 48, 64]);
        let mut r = Reassembler::new(limits);
        for f in &frags[..4] {
            assert_eq!(r.push(f, 0), Incomplete);
        }
        let res = r.push(&frags[4], 0);
        assert_eq!(res, Dropped(TooManyFragments));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        // Four fragments is fine.
        let frags = v4_fragments(&dg, &[16, 32, 48]);
        assert_eq!(push_all(&mut r, &frags, &[3, 1, 0, 2]), Complete(dg));
    }

    #[test]
    fn too_large() {
        let limits = Limits {
            max_datagram_len: 1000,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let ok = v4_datagram(&[], 980, 5, ESP);
        let frags = v4_fragments(&ok, &[488]);
        assert_eq!(push_all(&mut r, &frags, &[1, 0]), Complete(ok));

        // Reported by the first fragment past the limit; the datagram goes with it.
        let big = v4_datagram(&[], 1600, 6, ESP);
        let frags = v4_fragments(&big, &[488, 976]);
        assert_eq!(r.push(&frags[0], 0), Incomplete);
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&frags[2], 0), Dropped(TooLarge));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));

        // Header options of the first fragment count too.
        let opts = [1; 20];
        let big = v4_datagram(&opts, 976, 8, ESP);
        let frags = v4_fragments(&big, &[488]);
        assert_eq!(r.push(&frags[1], 0), Incomplete);
        assert_eq!(r.push(&frags[0], 0), Dropped(TooLarge));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));

        let (dg, unfrag, nh_pos) = v6_datagram(&[], ESP, 1200, 5);
        let frags = v6_fragments(&dg, unfrag, nh_pos, &[600], 1);
        assert_eq!(r.push(&frags[0], 0), Incomplete);
        assert_eq!(r.push(&frags[1], 0), Dropped(TooLarge));
        let atomic = v6_fragments(&dg, unfrag, nh_pos, &[], 1);
        assert_eq!(r.push(&atomic[0], 0), Dropped(TooLarge));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn beyond_65535_is_malformed() {
        // Ping of death: offset 65528 with 16 bytes of data.
        let dg = v4_datagram(&[], 16, 9, ESP);
        let mut f = v4_fragments(&dg, &[]).remove(0);
        f[6..8].copy_from_slice(&0x1fffu16.to_be_bytes());
        fix_v4_checksum(&mut f);
        let mut r = reassembler();
        assert_eq!(r.push(&f, 0), Dropped(Malformed));

        // Each fragment fits, but the first fragment's options push the total past 65535.
        let mut last = v4_fragments(&v4_datagram(&[], 8, 9, ESP), &[]).remove(0);
        last[6..8].copy_from_slice(&(65504u16 / 8).to_be_bytes());
        fix_v4_checksum(&mut last);
        let first = v4_fragments(&v4_datagram(&[1; 40], 16, 9, ESP), &[8]).remove(0);
        let limits = Limits {
            max_datagram_len: usize::MAX,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        assert_eq!(r.push(&last, 0), Incomplete);
        assert_eq!(r.push(&first, 0), Dropped(Malformed));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));

        // IPv6: the reassembled payload length would pass 65535.
        let (dg, unfrag, nh_pos) = v6_datagram(&[NH_DEST_OPTS], ESP, 16, 6);
        let mut f = v6_fragments(&dg, unfrag, nh_pos, &[8], 1).remove(1);
        let fo = unfrag + 2;
        f[fo..fo + 2].copy_from_slice(&(65520u16 | 1).to_be_bytes());
        assert_eq!(r.push(&f, 0), Dropped(Malformed));
    }

    #[test]
    fn timeout_via_expire() {
        let limits = Limits {
            timeout_ns: 5 * SEC,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let a = v4_datagram(&[], 64, 10, ESP);
        let b = v4_datagram(&[], 64, 11, ESP);
        let (fa, fb) = (v4_fragments(&a, &[32]), v4_fragments(&b, &[32]));
        assert_eq!(r.push(&fa[0], 100), Incomplete);
        assert_eq!(r.push(&fb[0], 2 * SEC), Incomplete);
        assert_eq!(r.expire(5 * SEC), 0);
        assert_eq!(r.expire(5 * SEC + 100), 1);
        assert_eq!(r.in_flight(), 1);
        check_invariants(&r);
        // The first fragment of `a` is gone: its second one starts a new datagram.
        assert_eq!(r.push(&fa[1], 6 * SEC), Incomplete);
        assert_eq!(r.push(&fb[1], 6 * SEC), Complete(b));
        assert_eq!(r.expire(20 * SEC), 1);
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));

        // A timed-out datagram is not completed by a late fragment, and is still counted.
        assert_eq!(r.push(&fa[0], 30 * SEC), Incomplete);
        assert_eq!(r.push(&fa[1], 36 * SEC), Incomplete);
        assert_eq!(r.expire(36 * SEC), 1);
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.push(&fa[0], 37 * SEC), Complete(a));
        assert_eq!(r.expire(100 * SEC), 0);
    }

    #[test]
    fn table_full() {
        let limits = Limits {
            max_datagrams: 2,
            timeout_ns: 10 * SEC,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let dgs: Vec<_> = (0..4).map(|i| v4_datagram(&[], 64, 20 + i, ESP)).collect();
        let frags: Vec<_> = dgs.iter().map(|d| v4_fragments(d, &[32])).collect();
        assert_eq!(r.push(&frags[0][0], 0), Incomplete);
        assert_eq!(r.push(&frags[1][0], SEC), Incomplete);
        let full = Dropped(TableFull);
        assert_eq!(r.push(&frags[2][0], 2 * SEC), full);
        assert_eq!(r.in_flight(), 2);
        // Datagrams in flight still complete.
        assert_eq!(r.push(&frags[1][1], 3 * SEC), Complete(dgs[1].clone()));
        assert_eq!(r.push(&frags[2][0], 3 * SEC), Incomplete);
        assert_eq!(r.push(&frags[3][0], 4 * SEC), full);
        // Once the oldest times out, a new datagram replaces it; expire reports it.
        assert_eq!(r.push(&frags[3][0], 10 * SEC), Incomplete);
        assert_eq!(r.in_flight(), 2);
        assert_eq!(r.expire(10 * SEC), 1);
        check_invariants(&r);
        assert_eq!(r.push(&frags[3][1], 10 * SEC), Complete(dgs[3].clone()));
        assert_eq!(r.push(&frags[2][1], 10 * SEC), Complete(dgs[2].clone()));
    }

    #[test]
    fn memory_limit() {
        let limits = Limits {
            max_bytes_total: 1000,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let a = v4_datagram(&[], 1200, 30, ESP);
        let fa = v4_fragments(&a, &[400, 800]);
        assert_eq!(r.push(&fa[0], 0), Incomplete);
        assert_eq!(r.bytes_held(), 420);
        assert_eq!(r.push(&fa[1], 0), Incomplete);
        assert_eq!(r.bytes_held(), 820);
        assert_eq!(r.push(&fa[2], 0), Dropped(MemoryLimit));
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));

        let b = v4_datagram(&[], 900, 31, ESP);
        let fb = v4_fragments(&b, &[504]);
        let c = v4_fragments(&v4_datagram(&[], 1000, 32, ESP), &[504]);
        assert_eq!(r.push(&fb[0], 0), Incomplete);
        // A new datagram that does not fit is not created.
        assert_eq!(r.push(&c[0], 0), Dropped(MemoryLimit));
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.push(&fb[1], 0), Complete(b));
        assert_eq!(r.bytes_held(), 0);
    }

    /// `v4_datagram` from another source address.
    fn v4_from(src: [u8; 4], len: usize, id: u16) -> Vec<u8> {
        let mut p = v4_datagram(&[], len, id, ESP);
        p[12..16].copy_from_slice(&src);
        fix_v4_checksum(&mut p);
        p
    }

    /// Issue 14 (M2): one source, spoofed or not, used to be able to fill the whole table
    /// (datagrams and bytes) so that nobody else's fragments were reassembled.
    #[test]
    fn one_source_cannot_starve_the_others() {
        let limits = Limits {
            max_datagrams: 16,
            max_datagrams_per_source: 4,
            max_bytes_total: 8000,
            max_bytes_per_source: 2000,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let flooder = [203, 0, 113, 66];
        for id in 0..3u16 {
            let f = v4_fragments(&v4_from(flooder, 64, id), &[32]);
            assert_eq!(r.push(&f[0], 0), Incomplete, "datagram {id}");
            check_invariants(&r);
        }
        // Byte quota: a datagram that would take the source past its share is dropped.
        let big = v4_fragments(&v4_from(flooder, 4000, 50), &[1000, 2000, 3000]);
        assert_eq!(r.push(&big[0], 0), Incomplete);
        assert_eq!(r.push(&big[1], 0), Dropped(SourceQuota));
        check_invariants(&r);
        assert_eq!(r.in_flight(), 3);
        // Datagram quota: a fourth open datagram, and the fifth is refused.
        let f = v4_fragments(&v4_from(flooder, 64, 3), &[32]);
        assert_eq!(r.push(&f[0], 0), Incomplete);
        let f = v4_fragments(&v4_from(flooder, 64, 99), &[32]);
        assert_eq!(r.push(&f[0], 0), Dropped(SourceQuota));
        check_invariants(&r);
        // Another source still reassembles, in the table's room the flooder could not take.
        for id in 0..4u16 {
            let dg = v4_from([192, 0, 2, 1], 1200, 100 + id);
            let f = v4_fragments(&dg, &[400, 800]);
            assert_eq!(
                push_all(&mut r, &f, &[0, 1, 2]),
                Complete(dg),
                "datagram {id}"
            );
        }
        assert_eq!(r.sources(), 1);
        // Completing or expiring the flooder's datagrams gives its quota back.
        assert!(r.expire(limits.timeout_ns) > 0);
        assert_eq!((r.sources(), r.bytes_held()), (0, 0));
        let f = v4_fragments(&v4_from(flooder, 64, 99), &[32]);
        assert_eq!(r.push(&f[0], limits.timeout_ns), Incomplete);
        check_invariants(&r);
    }

    #[test]
    fn malformed_inputs() {
        let dg = v4_datagram(&[], 64, 40, ESP);
        let frags = v4_fragments(&dg, &[32]);
        let mut r = reassembler();
        let bad = Dropped(Malformed);
        let mutate = |f: &[u8], edit: &dyn Fn(&mut Vec<u8>), fix: bool| {
            let mut f = f.to_vec();
            edit(&mut f);
            if fix {
                fix_v4_checksum(&mut f);
            }
            f
        };
        let cases = [
            // Not a fragment.
            dg.clone(),
            Vec::new(),
            vec![0x45],
            frags[0][..19].to_vec(),
            // IHL < 5.
            mutate(&frags[0], &|f| f[0] = 0x44, false),
            // Total length beyond the slice, or shorter than the header.
            mutate(&frags[0], &|f| f[3] += 1, true),
            mutate(&frags[0], &|f| f[2..4].copy_from_slice(&[0, 19]), true),
            // Bad checksum.
            mutate(&frags[0], &|f| f[8] -= 1, false),
            // Non-final fragment not a multiple of 8.
            mutate(&frags[0], &|f| f[2..4].copy_from_slice(&[0, 51]), true),
            // Empty fragment.
            mutate(&frags[1], &|f| f[2..4].copy_from_slice(&[0, 20]), true),
            // Version 5.
            mutate(&frags[0], &|f| f[0] = 0x55, true),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(r.push(c, 0), bad, "case {i}");
        }
        assert_eq!(r.in_flight(), 0);
        // Trailing link padding is ignored.
        let mut padded = frags[1].clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(r.push(&padded, 0), Incomplete);
        assert_eq!(r.push(&frags[0], 0), Complete(dg));

        let (dg, unfrag, nh_pos) = v6_datagram(&[NH_DEST_OPTS], ESP, 64, 7);
        let frags = v6_fragments(&dg, unfrag, nh_pos, &[32], 5);
        let cases = [
            // No Fragment header.
            dg.clone(),
            frags[0][..39].to_vec(),
            // Payload length zero (jumbogram) or beyond the slice.
            mutate(&frags[0], &|f| f[4..6].fill(0), false),
            mutate(&frags[0], &|f| f[5] += 1, false),
            // Hop-by-Hop not first.
            mutate(&frags[0], &|f| f[unfrag - 16] = NH_HOP_BY_HOP, false),
            // Extension header running past the packet.
            mutate(&frags[0], &|f| f[41] = 200, false),
            // Fragment header truncated.
            {
                let mut f = frags[0][..unfrag + 4].to_vec();
                f[4..6].copy_from_slice(&((unfrag + 4 - IPV6_HDR) as u16).to_be_bytes());
                f
            },
            // Non-final fragment not a multiple of 8.
            {
                let mut f = frags[0][..frags[0].len() - 1].to_vec();
                f[5] -= 1;
                f
            },
            // Empty non-atomic fragment.
            {
                let mut f = frags[1][..unfrag + FRAG_HDR].to_vec();
                f[4..6].copy_from_slice(&((unfrag + FRAG_HDR - IPV6_HDR) as u16).to_be_bytes());
                f
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(r.push(c, 0), bad, "v6 case {i}");
        }
        assert_eq!(r.in_flight(), 0);
        assert_eq!(push_all(&mut r, &frags, &[1, 0]), Complete(dg));
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn check_output(pkt: &[u8]) {
        match pkt[0] >> 4 {
            4 => {
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                assert_eq!(checksum(&pkt[..ihl]), 0);
                assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
                assert_eq!(pkt[6..8], [0, 0]);
            }
            6 => {
                let plen = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
                assert_eq!(plen + IPV6_HDR, pkt.len());
            }
            v => panic!("version {v}"),
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        // Small enough that every drop reason is reached; 4-fragment IPv6 datagrams never fit.
        let limits = Limits {
            max_datagrams: 8,
            max_fragments_per_datagram: 3,
            max_datagram_len: 2000,
            max_bytes_total: 1500,
            max_datagrams_per_source: 6,
            max_bytes_per_source: 1200,
            timeout_ns: 1000,
        };
        let mut r = Reassembler::new(limits);
        let mut valid = Vec::new();
        for i in 0..4u16 {
            let dg = v4_datagram(&[1; 4], 300, i % 2, ESP);
            valid.extend(v4_fragments(&dg, &[96, 200]));
            let (dg, unfrag, nh_pos) = v6_datagram(&[NH_HOP_BY_HOP], ESP, 300, i as u8);
            valid.extend(v6_fragments(
                &dg,
                unfrag,
                nh_pos,
                &[96, 200, 296][..3 - usize::from(i / 2)],
                u32::from(i % 2),
            ));
        }
        let mut now = 0;
        let mut complete = 0;
        for _ in 0..100_000 {
            now += rng.below(50) as u64;
            let pkt = match rng.below(4) {
                0 => {
                    let len = rng.below(120);
                    let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    if let Some(b) = p.first_mut() {
                        *b = (*b & 0x0f) | if rng.below(2) == 0 { 0x40 } else { 0x60 };
                    }
                    p
                }
                1 => {
                    let f = &valid[rng.below(valid.len())];
                    f[..rng.below(f.len() + 1)].to_vec()
                }
                2 => {
                    let mut f = valid[rng.below(valid.len())].clone();
                    for _ in 0..=rng.below(3) {
                        let i = rng.below(f.len().min(64));
                        f[i] = rng.next() as u8;
                    }
                    if f[0] >> 4 == 4 && f[0] & 0x0f >= 5 && rng.below(2) == 0 {
                        let ihl = usize::from(f[0] & 0x0f) * 4;
                        if ihl <= f.len() {
                            fix_v4_checksum(&mut f);
                        }
                    }
                    f
                }
                _ => valid[rng.below(valid.len())].clone(),
            };
            if let Complete(out) = r.push(&pkt, now) {
                check_output(&out);
                complete += 1;
            }
            check_invariants(&r);
            if rng.below(100) == 0 {
                r.expire(now);
                check_invariants(&r);
            }
        }
        assert!(complete > 0);
        r.expire(u64::MAX);
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
    }
}
