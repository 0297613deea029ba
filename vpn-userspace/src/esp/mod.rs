//! ESP in tunnel mode (RFC 4303) with AES-GCM (RFC 4106), optionally in UDP (RFC 3948).
//!
//! Packet work happens in caller-provided buffers: `encapsulate` writes the outer packet into
//! `out`, `decapsulate` decrypts in place and returns where the inner packet is. Nothing here
//! allocates per packet.

pub mod crypto;
pub mod packet;
pub mod pmtu;
pub mod reassembly;

use std::{
    net::IpAddr,
    ops::Range,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use vpn_common::DropReason;

pub use crypto::{Aead, Cipher, SaKey};
use crypto::{ICV_LEN, IV_LEN, SALT_LEN};
use packet::{
    IPPROTO_ESP, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_NONE, IPPROTO_UDP, inner_info,
    write_ipv4_header, write_ipv6_header, write_udp_header,
};

pub const ESP_HDR: usize = 8;
/// ESP header + IV + pad length + next header + ICV: the smallest valid GCM ESP packet.
pub const MIN_ESP_LEN: usize = ESP_HDR + IV_LEN + 2 + ICV_LEN;
pub const NAT_T_PORT: u16 = 4500;

/// Outer addressing of an outbound SA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outer {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// UDP encapsulation (RFC 3948): (source port, destination port).
    pub udp: Option<(u16, u16)>,
    pub ttl: u8,
}

/// An outbound SA: the sequence counter is the only mutable state, an atomic, so several
/// workers can share the SA without a lock.
pub struct OutboundSa {
    pub spi: u32,
    pub esn: bool,
    pub outer: Outer,
    aead: Box<dyn Aead>,
    salt: [u8; SALT_LEN],
    /// Last sequence number used (0: none yet).
    seq: AtomicU64,
    /// The highest sequence number this SA may use now: its limit (2^32-1 or 2^64-1) for a
    /// negotiated SA; for a manually keyed one, what its state file reserves durably (raised
    /// only after the file is on disk, see `crate::seqstate`).
    ceiling: AtomicU64,
    /// The manual SA's state file could not be trusted: nothing is sent (`SaStateRefused`).
    refused: AtomicBool,
    /// Packets and inner bytes encapsulated (for lifetimes and the CLI).
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// An inbound SA as the worker needs it.
pub struct InboundSa {
    pub spi: u32,
    pub esn: bool,
    aead: Box<dyn Aead>,
    salt: [u8; SALT_LEN],
    /// The highest sequence number the worker may accept now: unbounded for a negotiated SA;
    /// for a manually keyed one, the replay mark its state file holds durably.
    ceiling: AtomicU64,
    /// The highest authenticated sequence number dropped for being above `ceiling`: tells
    /// the state keeper how far the mark has to go.
    wanted: AtomicU64,
    /// The manual SA's state file could not be trusted: nothing is accepted.
    refused: AtomicBool,
    /// Packets and inner bytes accepted (authenticated, replay window moved), counted by the
    /// worker through `count`.
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// Where the decrypted inner packet is, inside the buffer given to `decapsulate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decapsulated {
    pub inner: Range<usize>,
    /// 4 (IPv4) or 41 (IPv6).
    pub next_header: u8,
}

/// Bytes an outbound packet adds to the inner one, before padding.
pub fn overhead(outer_v6: bool, udp: bool) -> usize {
    (if outer_v6 { 40 } else { 20 }) + if udp { 8 } else { 0 } + ESP_HDR + IV_LEN + 2 + ICV_LEN
}

fn aad(spi: u32, seq: u64, esn: bool, buf: &mut [u8; 12]) -> usize {
    // RFC 4106 5: SPI || seq (32 bits), or SPI || ESN high || ESN low.
    buf[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        buf[4..12].copy_from_slice(&seq.to_be_bytes());
        12
    } else {
        buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        8
    }
}

fn nonce(salt: &[u8; SALT_LEN], iv: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

impl OutboundSa {
    pub fn new(spi: u32, key: &SaKey, esn: bool, outer: Outer) -> OutboundSa {
        OutboundSa::with_backend(spi, key, esn, outer, crypto::Backend::default())
    }

    pub fn with_backend(
        spi: u32,
        key: &SaKey,
        esn: bool,
        outer: Outer,
        backend: crypto::Backend,
    ) -> OutboundSa {
        OutboundSa {
            spi,
            esn,
            outer,
            aead: key.aead_with(backend),
            salt: key.salt(),
            seq: AtomicU64::new(0),
            ceiling: AtomicU64::new(if esn { u64::MAX } else { u32::MAX as u64 }),
            refused: AtomicBool::new(false),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The next sequence number. Without ESN the counter stops at 2^32-1 and never wraps
    /// (RFC 4303 3.3.3): the SA has to be rekeyed. It never passes the ceiling either: the
    /// ceiling is never above the limit, so one load and one compare cover both.
    #[inline]
    pub fn next_seq(&self) -> Result<u64, DropReason> {
        // Acquire: pairs with `raise_ceiling`'s release, which follows the fsync.
        let ceiling = self.ceiling.load(Ordering::Acquire);
        self.seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s < ceiling).then_some(s + 1)
            })
            .map(|s| s + 1)
            .map_err(|s| self.why_stopped(s))
    }

    /// Why `next_seq` found no number after `s` (the cold path).
    #[cold]
    fn why_stopped(&self, s: u64) -> DropReason {
        if s >= self.seq_limit() {
            DropReason::SeqExhausted
        } else if self.refused.load(Ordering::Relaxed) {
            DropReason::SaStateRefused
        } else {
            DropReason::SeqNotReserved
        }
    }

    /// Last sequence number sent.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// The highest sequence number the SA may use now (see `ceiling`).
    pub fn ceiling(&self) -> u64 {
        self.ceiling.load(Ordering::Acquire)
    }

    /// Lets the SA use sequence numbers up to `ceiling` (at most its limit). Never lowers
    /// the ceiling. The caller has made `ceiling` durable first.
    pub fn raise_ceiling(&self, ceiling: u64) {
        self.ceiling
            .fetch_max(ceiling.min(self.seq_limit()), Ordering::Release);
    }

    /// Before the SA is used: continue after `last` (the last number that may have been sent
    /// with this key) up to `ceiling` (clamped to `last..=limit`).
    pub fn resume(&self, last: u64, ceiling: u64) {
        let last = last.min(self.seq_limit());
        self.seq.store(last, Ordering::Relaxed);
        self.ceiling
            .store(ceiling.clamp(last, self.seq_limit()), Ordering::Release);
    }

    /// Before the SA is used: send nothing (its state could not be trusted).
    pub fn refuse(&self) {
        self.refused.store(true, Ordering::Relaxed);
        let s = self.seq();
        self.ceiling.store(s, Ordering::Release);
    }

    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Packets encapsulated so far.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Inner (plaintext IP) bytes encapsulated so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The highest sequence number this SA may use: 2^32-1 without ESN, 2^64-1 with it.
    pub fn seq_limit(&self) -> u64 {
        if self.esn { u64::MAX } else { u32::MAX as u64 }
    }

    /// Test and rekey hook: continue counting from `seq`.
    pub fn set_seq(&self, seq: u64) {
        self.seq.store(seq, Ordering::Relaxed);
    }

    /// Length of the outer packet for an inner packet of `inner_len` bytes.
    pub fn encapsulated_len(&self, inner_len: usize) -> usize {
        let pad = padding(inner_len);
        overhead(self.outer.dst.is_ipv6(), self.outer.udp.is_some()) + inner_len + pad
    }

    /// Encapsulates the IP packet `inner` into `out` (from the outer IP header on). Returns
    /// the outer packet's length.
    pub fn encapsulate(&self, inner: &[u8], out: &mut [u8]) -> Result<usize, DropReason> {
        let info = inner_info(inner).ok_or(DropReason::BadInnerPacket)?;
        let inner = &inner[..info.len];
        let total = self.encapsulated_len(inner.len());
        if out.len() < total {
            return Err(DropReason::NoRoom);
        }
        let seq = self.next_seq()?;
        let outer_v6 = self.outer.dst.is_ipv6();
        let ip_len = if outer_v6 { 40 } else { 20 };
        let udp_len = if self.outer.udp.is_some() { 8 } else { 0 };
        let esp_off = ip_len + udp_len;
        let payload_off = esp_off + ESP_HDR + IV_LEN;
        let pad = padding(inner.len());
        let ct_len = inner.len() + pad + 2;
        let icv_off = payload_off + ct_len;

        // ESP header, IV (the sequence number: unique per key, RFC 4106 3.1), payload, trailer.
        out[esp_off..esp_off + 4].copy_from_slice(&self.spi.to_be_bytes());
        out[esp_off + 4..esp_off + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        let iv = seq.to_be_bytes();
        out[esp_off + 8..payload_off].copy_from_slice(&iv);
        out[payload_off..payload_off + inner.len()].copy_from_slice(inner);
        let trailer = payload_off + inner.len();
        for i in 0..pad {
            out[trailer + i] = (i + 1) as u8; // RFC 4303 2.4 default padding 1, 2, 3, ...
        }
        out[trailer + pad] = pad as u8;
        out[trailer + pad + 1] = if info.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };

        let mut aad_buf = [0u8; 12];
        let aad_len = aad(self.spi, seq, self.esn, &mut aad_buf);
        let icv = self.aead.seal(
            &nonce(&self.salt, &iv),
            &aad_buf[..aad_len],
            &mut out[payload_off..icv_off],
        );
        out[icv_off..icv_off + ICV_LEN].copy_from_slice(&icv);

        let proto = if self.outer.udp.is_some() {
            IPPROTO_UDP
        } else {
            IPPROTO_ESP
        };
        if let Some((sport, dport)) = self.outer.udp {
            write_udp_header(
                out,
                ip_len,
                sport,
                dport,
                total - ip_len,
                &self.outer.src,
                &self.outer.dst,
            );
        }
        match (self.outer.src, self.outer.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => write_ipv4_header(
                &mut out[..20],
                s,
                d,
                proto,
                total,
                self.outer.ttl,
                info.dscp_ecn,
                info.df,
                seq as u16,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => write_ipv6_header(
                &mut out[..40],
                s,
                d,
                proto,
                total - 40,
                self.outer.ttl,
                info.dscp_ecn,
            ),
            _ => return Err(DropReason::BadInnerPacket),
        }
        // Relaxed adds on the cache line the sequence counter already owns.
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(inner.len() as u64, Ordering::Relaxed);
        Ok(total)
    }
}

/// Padding so that payload + pad length + next header is a multiple of 4 (RFC 4303 2.4).
pub fn padding(inner_len: usize) -> usize {
    (4 - (inner_len + 2) % 4) % 4
}

impl InboundSa {
    pub fn new(spi: u32, key: &SaKey, esn: bool) -> InboundSa {
        InboundSa::with_backend(spi, key, esn, crypto::Backend::default())
    }

    pub fn with_backend(spi: u32, key: &SaKey, esn: bool, backend: crypto::Backend) -> InboundSa {
        InboundSa {
            spi,
            esn,
            aead: key.aead_with(backend),
            salt: key.salt(),
            ceiling: AtomicU64::new(u64::MAX),
            wanted: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Whether the worker may accept the authenticated sequence number `seq` (one load, one
    /// compare). Above the ceiling, the number is remembered for the state keeper and the
    /// packet is dropped: accepting it before the mark is durable would let it be replayed
    /// after a crash.
    #[inline]
    pub fn admit(&self, seq: u64) -> Result<(), DropReason> {
        if seq <= self.ceiling.load(Ordering::Acquire) {
            return Ok(());
        }
        self.above_ceiling(seq)
    }

    #[cold]
    fn above_ceiling(&self, seq: u64) -> Result<(), DropReason> {
        if self.refused.load(Ordering::Relaxed) {
            return Err(DropReason::SaStateRefused);
        }
        self.wanted.fetch_max(seq, Ordering::Relaxed);
        Err(DropReason::InboundNotReserved)
    }

    /// The highest sequence number the worker may accept now.
    pub fn ceiling(&self) -> u64 {
        self.ceiling.load(Ordering::Acquire)
    }

    /// The highest authenticated sequence number dropped above the ceiling (0: none).
    pub fn wanted(&self) -> u64 {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Lets the worker accept up to `ceiling`; never lowers it. The caller has made
    /// `ceiling` durable first.
    pub fn raise_ceiling(&self, ceiling: u64) {
        self.ceiling.fetch_max(ceiling, Ordering::Release);
    }

    /// Before the SA is published: accept nothing above `ceiling`.
    pub fn limit_to(&self, ceiling: u64) {
        self.ceiling.store(ceiling, Ordering::Release);
    }

    /// Before the SA is published: accept nothing (its state could not be trusted).
    pub fn refuse(&self) {
        self.refused.store(true, Ordering::Relaxed);
        self.ceiling.store(0, Ordering::Release);
    }

    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Records one accepted packet of `inner_len` plaintext bytes (called by the worker once
    /// the packet is authenticated and the replay window moved).
    pub fn count(&self, inner_len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(inner_len as u64, Ordering::Relaxed);
    }

    /// Packets accepted so far.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Inner (plaintext IP) bytes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Verifies and decrypts the ESP packet `esp` (ESP header to the end of the IP payload)
    /// in place. `seq` is the full sequence number the replay check inferred. The caller
    /// advances the replay window only after this returns Ok (RFC 4303 3.4.3).
    pub fn decapsulate(&self, esp: &mut [u8], seq: u64) -> Result<Decapsulated, DropReason> {
        if esp.len() < MIN_ESP_LEN {
            return Err(DropReason::EspRunt);
        }
        if esp[..4] != self.spi.to_be_bytes() {
            return Err(DropReason::UnknownSpi);
        }
        let payload_off = ESP_HDR + IV_LEN;
        let icv_off = esp.len() - ICV_LEN;
        let mut aad_buf = [0u8; 12];
        let aad_len = aad(self.spi, seq, self.esn, &mut aad_buf);
        let n = nonce(&self.salt, &esp[ESP_HDR..payload_off]);
        self.aead
            .open_appended(&n, &aad_buf[..aad_len], &mut esp[payload_off..])
            .map_err(|_| DropReason::BadIcv)?;

        let next_header = esp[icv_off - 1];
        let pad_len = esp[icv_off - 2] as usize;
        let ct_len = icv_off - payload_off;
        if pad_len + 2 > ct_len {
            return Err(DropReason::BadPadding);
        }
        let pad_start = icv_off - 2 - pad_len;
        if esp[pad_start..icv_off - 2]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != (i + 1) as u8)
        {
            return Err(DropReason::BadPadding);
        }
        match next_header {
            IPPROTO_IPIP | IPPROTO_IPV6 => {}
            IPPROTO_NONE => return Err(DropReason::DummyPacket),
            _ => return Err(DropReason::BadNextHeader),
        }
        let info = inner_info(&esp[payload_off..pad_start]).ok_or(DropReason::BadInnerPacket)?;
        if info.v6 != (next_header == IPPROTO_IPV6) {
            return Err(DropReason::BadInnerPacket);
        }
        // The inner header's length, not the padding, ends the packet (TFC padding may follow
        // it, RFC 4303 2.7).
        Ok(Decapsulated {
            inner: payload_off..payload_off + info.len,
            next_header,
        })
    }
}

#[cfg(test)]
mod kat;
#[cfg(test)]
mod tests;
