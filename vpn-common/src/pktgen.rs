//! The traffic generator's XDP programs (`vpn-ebpf/src/pktgen.rs`, built as their own object
//! `pktgen`, apart from the data plane's): names, the configuration and the counter slots.
//!
//! - `pktgen_tx` is run through `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: the
//!   kernel hands it copies of one template frame (the largest of the run) and it returns
//!   `XDP_TX`, so they leave the interface given as `ingress_ifindex` toward its veth peer.
//!   Everything that varies is done here, per packet, from the per-CPU packet counter `n`,
//!   so that one test run covers the whole mix (a test run costs a page pool set-up and
//!   tear-down, which measured tens of milliseconds here):
//!   1. at most `limit` packets, and pacing: one packet per `interval_ns` (a frame that is
//!      not due is dropped, `TX_SKIPPED`; a late generator catches up by `slack_ns` at most);
//!   2. the template's headers written back (`hdr`): the kernel initialises a live frame's
//!      page only once and recycles it, and a receiver on a veth works on that very page
//!      (`tenant_ingress` pops the VLAN tag in place);
//!   3. the frame length `sizes[n % nsizes]` (IMIX): IP and UDP lengths and checksums
//!      patched, the tail trimmed (the payload is zeros, so the UDP checksum over it does not
//!      change);
//!   4. the tenant: VLAN id `vlan_base + (n / flows) % tenants`;
//!   5. the flow: UDP source port `sport_base + n % flows`, checksum patched (RFC 1624).
//!
//!   With `ring_len` set, steps 2-5 give way to copying frame `n % ring_len` of `PKTGEN_RING`
//!   whole into the packet (`bpf_xdp_store_bytes`): pre-built ESP packets, each with its own
//!   sequence number, which nothing in the kernel could derive from one template.
//! - `pktgen_sink` counts what arrives on an interface (all frames, bytes, ESP, plain UDP) and
//!   drops it: the far end of a benchmark.
//!
//! Neither program's maps are pinned: every load has its own.

use crate::pod;

pub mod names {
    pub const PKTGEN_TX: &str = "pktgen_tx";
    pub const PKTGEN_SINK: &str = "pktgen_sink";
    /// `Array<PktgenConfig>`, one entry.
    pub const PKTGEN_CONFIG: &str = "PKTGEN_CONFIG";
    /// `PerCpuArray<u64>`, [`TX_SLOTS`] entries.
    pub const PKTGEN_STATS: &str = "PKTGEN_STATS";
    /// `PerCpuArray<u64>`, [`SINK_SLOTS`] entries.
    pub const SINK_STATS: &str = "SINK_STATS";
    /// `Array<RingFrame>`: whole frames to send in turn (ESP streams); sized by the loader.
    pub const PKTGEN_RING: &str = "PKTGEN_RING";
}

/// `PKTGEN_STATS`: frames the program returned `XDP_TX` for (`n` of the next one).
pub const TX_PACKETS: u32 = 0;
/// `PKTGEN_STATS`: frames whose UDP source port was rewritten.
pub const TX_REWRITTEN: u32 = 1;
/// `PKTGEN_STATS`: frames dropped because they were not due yet, or past `limit`.
pub const TX_SKIPPED: u32 = 2;
/// `PKTGEN_STATS`: pacing state, when the next frame is due (`bpf_ktime_get_ns`).
pub const TX_NEXT_NS: u32 = 3;
pub const TX_SLOTS: u32 = 4;

/// `SINK_STATS`: every frame.
pub const SINK_PACKETS: u32 = 0;
/// `SINK_STATS`: their bytes (Ethernet header on, no FCS).
pub const SINK_BYTES: u32 = 1;
/// `SINK_STATS`: ESP, raw (IP protocol 50) or in UDP/4500 with a non-zero SPI (RFC 3948).
pub const SINK_ESP: u32 = 2;
/// `SINK_STATS`: other UDP over IPv4 or IPv6 (plain tenant traffic).
pub const SINK_UDP: u32 = 3;
/// `SINK_STATS`: anything else (ARP, IPv6 ND, ...).
pub const SINK_OTHER: u32 = 4;
pub const SINK_SLOTS: u32 = 5;

/// Longest template header `pktgen_tx` restores (Ethernet + two tags + IPv6 + UDP is 70).
pub const HDR_MAX: usize = 128;
/// Longest size pattern (the IMIX period is 12).
pub const SIZES_MAX: usize = 16;

/// `PKTGEN_CONFIG[0]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PktgenConfig {
    /// One frame per this many ns; 0: as fast as the kernel goes.
    pub interval_ns: u64,
    /// How far behind schedule the pacer may catch up (a burst of `slack_ns / interval_ns`).
    pub slack_ns: u64,
    /// Stop transmitting once `TX_PACKETS` reaches this; 0: no limit.
    pub limit: u64,
    /// Number of flows; 0 or 1: the port is left as the template has it.
    pub flows: u32,
    /// Number of tenants (VLAN ids from `vlan_base`); 0 or 1: the tag is left as it is.
    pub tenants: u32,
    /// Frames in `PKTGEN_RING` to send in turn instead of varying the template; 0: none.
    pub ring_len: u32,
    pub _pad0: u32,
    /// UDP source port of flow 0 (the template's); flow `i` uses `sport_base + i` (wrapping).
    pub sport_base: u16,
    /// VLAN id of tenant 0 (the template's).
    pub vlan_base: u16,
    /// Bytes of `hdr` written over the start of every frame: even, at most [`HDR_MAX`] and
    /// the frame's length; 0: none.
    pub hdr_len: u16,
    /// Offsets of the IP and UDP headers in the template.
    pub l3_off: u16,
    pub l4_off: u16,
    /// Entries of `sizes` in use; 0 or 1: frames keep the template's length.
    pub nsizes: u16,
    /// 1: the IP header is IPv6.
    pub ipv6: u16,
    pub _pad: u16,
    /// Frame lengths in sending order, none longer than the template.
    pub sizes: [u16; SIZES_MAX],
    pub hdr: [u8; HDR_MAX],
}
const _: () = assert!(core::mem::size_of::<PktgenConfig>() == 56 + 2 * SIZES_MAX + HDR_MAX);

impl Default for PktgenConfig {
    fn default() -> Self {
        PktgenConfig {
            interval_ns: 0,
            slack_ns: 0,
            limit: 0,
            flows: 0,
            tenants: 0,
            ring_len: 0,
            _pad0: 0,
            sport_base: 0,
            vlan_base: 0,
            hdr_len: 0,
            l3_off: 0,
            l4_off: 0,
            nsizes: 0,
            ipv6: 0,
            _pad: 0,
            sizes: [0; SIZES_MAX],
            hdr: [0; HDR_MAX],
        }
    }
}

/// Longest frame a `PKTGEN_RING` entry holds.
pub const RING_FRAME_MAX: usize = 2040;

/// `PKTGEN_RING[i]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RingFrame {
    /// 1..=[`RING_FRAME_MAX`].
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; RING_FRAME_MAX],
}
const _: () = assert!(core::mem::size_of::<RingFrame>() == 2048);

impl RingFrame {
    /// `f` as a ring entry, if it fits.
    pub fn new(f: &[u8]) -> Option<RingFrame> {
        if f.is_empty() || f.len() > RING_FRAME_MAX {
            return None;
        }
        let mut r = RingFrame {
            len: f.len() as u32,
            _pad: 0,
            data: [0; RING_FRAME_MAX],
        };
        r.data[..f.len()].copy_from_slice(f);
        Some(r)
    }
}

pod!(PktgenConfig, RingFrame);

/// RFC 1624 eqn. 3: the Internet checksum `csum` after a 16-bit word of the summed data
/// changed from `old` to `new`. A UDP checksum that comes out as 0 is sent as 0xffff
/// (RFC 768); callers leave a zero (unused) IPv4 UDP checksum alone.
#[inline(always)]
pub fn csum_replace16(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!csum as u32) + (!old as u32) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let c = !(sum as u16);
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full one's-complement checksum of 16-bit words.
    fn csum(words: &[u16]) -> u16 {
        let mut s: u32 = words.iter().map(|w| *w as u32).sum();
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut words = [
            0x4500u16, 0x0073, 0x0000, 0x4000, 0x4011, 0xc0a8, 0x0001, 0xc0a8,
        ];
        for new in [0u16, 1, 0x1234, 0xfffe, 0xffff, 0x8000] {
            let before = csum(&words);
            let old = words[2];
            words[2] = new;
            let want = match csum(&words) {
                0 => 0xffff,
                c => c,
            };
            assert_eq!(
                csum_replace16(before, old, new),
                want,
                "{old:#x} -> {new:#x}"
            );
        }
    }
}
