//! The traffic generator's XDP programs, an object of their own (`pktgen`) so that loading
//! them creates none of the data plane's maps and pins nothing (see `vpn_common::pktgen`).
//!
//! - `pktgen_tx`: run with XDP live frames (`BPF_PROG_TEST_RUN`); returns `XDP_TX`, which the
//!   kernel turns into a transmission on the interface named as ingress. Limit and pacing,
//!   then the template's headers written back, the frame length, the tenant's VLAN id and
//!   the flow's UDP source port set per packet from the per-CPU packet counter; or, for ESP
//!   streams, a whole pre-built frame copied from a ring: see `vpn_common::pktgen` for why
//!   each is done here.
//! - `pktgen_sink`: counts frames and bytes, classifies them (ESP / plain UDP / other) and
//!   drops them.
#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "parse.rs"]
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use parse::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_ESP, IPPROTO_UDP, L3, L3Result, NAT_T_PORT, parse_eth,
    parse_ipv4, parse_ipv6, ptr_at, u16_at, u32_at,
};
use vpn_common::pktgen::{
    HDR_MAX, PktgenConfig, RING_FRAME_MAX, RingFrame, SINK_BYTES, SINK_ESP, SINK_OTHER,
    SINK_PACKETS, SINK_SLOTS, SINK_UDP, TX_NEXT_NS, TX_PACKETS, TX_REWRITTEN, TX_SKIPPED, TX_SLOTS,
    csum_replace16,
};

#[map]
static PKTGEN_CONFIG: Array<PktgenConfig> = Array::with_max_entries(1, 0);

#[map]
static PKTGEN_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TX_SLOTS, 0);

#[map]
static SINK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SINK_SLOTS, 0);

/// Sized by the loader (the ring's length); one entry unless a ring is used.
#[map]
static PKTGEN_RING: Array<RingFrame> = Array::with_max_entries(1, 0);

/// Adds `n` to a per-CPU slot; returns the value before.
#[inline(always)]
fn add(stats: &PerCpuArray<u64>, idx: u32, n: u64) -> u64 {
    match stats.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        Some(c) => unsafe {
            let before = *c;
            *c = before + n;
            before
        },
        None => 0,
    }
}

/// The IP layer of a frame: Ethernet, up to two VLAN tags, IPv4 or IPv6.
#[inline(always)]
fn l3(ctx: &XdpContext) -> Option<L3> {
    let (proto, off) = parse_eth(ctx).ok()?;
    if proto == ETH_P_IP {
        parse_ipv4(ctx, off).ok()
    } else if proto == ETH_P_IPV6 {
        match parse_ipv6(ctx, off).ok()? {
            L3Result::Ip(l3) => Some(l3),
            L3Result::Unparsed { .. } => None,
        }
    } else {
        None
    }
}

#[xdp]
pub fn pktgen_tx(ctx: XdpContext) -> u32 {
    let Some(cfg) = PKTGEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = get(&PKTGEN_STATS, TX_PACKETS);
    if (cfg.limit != 0 && n >= cfg.limit) || !due(cfg) {
        add(&PKTGEN_STATS, TX_SKIPPED, 1);
        return xdp_action::XDP_DROP;
    }
    add(&PKTGEN_STATS, TX_PACKETS, 1);
    if cfg.ring_len != 0 {
        return match copy_ring(&ctx, cfg, n) {
            Some(()) => xdp_action::XDP_TX,
            None => xdp_action::XDP_ABORTED,
        };
    }
    restore_header(&ctx, cfg);
    if set_tenant(&ctx, cfg, n).is_none() || set_flow(&ctx, cfg, n).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    if cfg.flows > 1 {
        add(&PKTGEN_STATS, TX_REWRITTEN, 1);
    }
    // Last: trimming the tail invalidates every packet pointer.
    if set_length(&ctx, cfg, n).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn get(stats: &PerCpuArray<u64>, idx: u32) -> u64 {
    match stats.get_ptr(idx) {
        // SAFETY: per-CPU slot, read by this CPU.
        Some(c) => unsafe { *c },
        None => 0,
    }
}

/// Frame `n % ring_len` of the ring, whole: the tail trimmed to its length, then its bytes.
#[inline(always)]
fn copy_ring(ctx: &XdpContext, cfg: &PktgenConfig, n: u64) -> Option<()> {
    let f = PKTGEN_RING.get((n % cfg.ring_len as u64) as u32)?;
    // bpf_xdp_store_bytes takes no zero size, and Linux 6.1's verifier must see the size
    // register itself bounded below by 1: it does not carry a bound learnt on one register
    // to a copy offset by a constant, which is what LLVM makes of `len == 0 || len > MAX`
    // (6.18's does). So the bound is put on `len - 1`, read back through the stack where
    // LLVM cannot see it is `len - 1` and fold the `+ 1` away.
    let m1 = opaque(f.len.wrapping_sub(1));
    if m1 >= RING_FRAME_MAX as u32 {
        return None;
    }
    let len = m1 as usize + 1;
    let cur = ctx.data_end() - ctx.data();
    if len > cur {
        return None;
    }
    // SAFETY: our own context; shrinking only.
    if len < cur && unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - cur as i32) } != 0 {
        return None;
    }
    // SAFETY: `len` bytes of the map value (checked against its size above) into the packet,
    // whose length the helper checks.
    let r = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, f.data.as_ptr() as *mut c_void, len as u32) };
    (r == 0).then_some(())
}

/// `v`, through a volatile stack slot: the compiler knows nothing of the value it reads back.
#[inline(always)]
fn opaque(v: u32) -> u32 {
    let mut slot = v;
    // SAFETY: a local, written and read here only.
    unsafe {
        core::ptr::write_volatile(&mut slot, v);
        core::ptr::read_volatile(&slot)
    }
}

/// Whether a frame is due (and if so, books its slot): one per `interval_ns`, catching up at
/// most `slack_ns` when behind.
#[inline(always)]
fn due(cfg: &PktgenConfig) -> bool {
    if cfg.interval_ns == 0 {
        return true;
    }
    let Some(next) = PKTGEN_STATS.get_ptr_mut(TX_NEXT_NS) else {
        return true;
    };
    // SAFETY: helper without arguments; the per-CPU slot is only this CPU's.
    unsafe {
        let now = bpf_ktime_get_ns();
        let mut at = *next;
        if now < at {
            return false;
        }
        let floor = now.saturating_sub(cfg.slack_ns);
        if at < floor {
            at = floor;
        }
        *next = at + cfg.interval_ns;
    }
    true
}

/// Writes the template's first `hdr_len` bytes over the frame: 8 bytes at a time, then the
/// last 2, 4 or 6 two at a time.
#[inline(always)]
fn restore_header(ctx: &XdpContext, cfg: &PktgenConfig) {
    let n = cfg.hdr_len as usize;
    let mut off = 0;
    while off + 8 <= n && off + 8 <= HDR_MAX {
        let Some(p) = ptr_at::<[u8; 8]>(ctx, off) else {
            return;
        };
        let mut w = [0u8; 8];
        w.copy_from_slice(&cfg.hdr[off..off + 8]);
        // SAFETY: inside the frame (ptr_at); the program owns the frame.
        unsafe { *(p as *mut [u8; 8]) = w };
        off += 8;
    }
    while off + 2 <= n && off + 2 <= HDR_MAX {
        let Some(p) = ptr_at::<[u8; 2]>(ctx, off) else {
            return;
        };
        // SAFETY: as above.
        unsafe { *(p as *mut [u8; 2]) = [cfg.hdr[off], cfg.hdr[off + 1]] };
        off += 2;
    }
}

/// Header offsets from the configuration, masked below [`HDR_MAX`]: the verifier credits a
/// bounds check on a variable packet offset only when it knows the offset is small.
#[inline(always)]
fn offs(cfg: &PktgenConfig) -> (usize, usize) {
    (
        cfg.l3_off as usize & (HDR_MAX - 1),
        cfg.l4_off as usize & (HDR_MAX - 1),
    )
}

/// A big-endian u16 field of the frame, for writing.
#[inline(always)]
fn field(ctx: &XdpContext, off: usize) -> Option<*mut [u8; 2]> {
    Some(ptr_at::<[u8; 2]>(ctx, off)? as *mut [u8; 2])
}

/// Replaces the u16 at `off` by `new`; returns the old value.
#[inline(always)]
fn put16(ctx: &XdpContext, off: usize, new: u16) -> Option<u16> {
    let p = field(ctx, off)?;
    // SAFETY: inside the frame (ptr_at); the program owns the frame.
    unsafe {
        let old = u16::from_be_bytes(*p);
        *p = new.to_be_bytes();
        Some(old)
    }
}

/// Patches the UDP checksum for a 16-bit word of its data (or pseudo-header) going from
/// `old` to `new`. A zero IPv4 UDP checksum means "none" (RFC 768) and stays so.
#[inline(always)]
fn udp_csum(ctx: &XdpContext, cfg: &PktgenConfig, old: u16, new: u16) -> Option<()> {
    let p = field(ctx, offs(cfg).1 + 6)?;
    // SAFETY: as in put16.
    unsafe {
        let c = u16::from_be_bytes(*p);
        if c != 0 || cfg.ipv6 != 0 {
            *p = csum_replace16(c, old, new).to_be_bytes();
        }
    }
    Some(())
}

/// The VLAN id of tenant `(n / flows) % tenants` (the TCI's priority bits stay).
#[inline(always)]
fn set_tenant(ctx: &XdpContext, cfg: &PktgenConfig, n: u64) -> Option<()> {
    if cfg.tenants <= 1 {
        return Some(());
    }
    let t = (n / cfg.flows.max(1) as u64 % cfg.tenants as u64) as u16;
    let p = field(ctx, 14)?;
    // SAFETY: as in put16.
    unsafe {
        let tci = u16::from_be_bytes(*p);
        let vid = cfg.vlan_base.wrapping_add(t) & 0x0fff;
        *p = ((tci & 0xf000) | vid).to_be_bytes();
    }
    Some(())
}

/// UDP source port `sport_base + n % flows`.
#[inline(always)]
fn set_flow(ctx: &XdpContext, cfg: &PktgenConfig, n: u64) -> Option<()> {
    if cfg.flows <= 1 {
        return Some(());
    }
    let new = cfg.sport_base.wrapping_add((n % cfg.flows as u64) as u16);
    let old = put16(ctx, offs(cfg).1, new)?;
    udp_csum(ctx, cfg, old, new)
}

/// Frame length `sizes[n % nsizes]`: IP and UDP lengths and checksums, then the tail.
#[inline(always)]
fn set_length(ctx: &XdpContext, cfg: &PktgenConfig, n: u64) -> Option<()> {
    if cfg.nsizes <= 1 {
        return Some(());
    }
    let i = (n % cfg.nsizes as u64) as usize;
    let len = *cfg.sizes.get(i)? as usize;
    let cur = ctx.data_end() - ctx.data();
    let (l3, l4) = offs(cfg);
    if len >= cur || len < l4 + 8 {
        return Some(());
    }
    let udp_len = (len - l4) as u16;
    if cfg.ipv6 != 0 {
        put16(ctx, l3 + 4, udp_len)?;
    } else {
        let ip_len = (len - l3) as u16;
        let old = put16(ctx, l3 + 2, ip_len)?;
        let c = field(ctx, l3 + 10)?;
        // SAFETY: as in put16.
        unsafe { *c = ip_csum_replace16(u16::from_be_bytes(*c), old, ip_len).to_be_bytes() };
    }
    // The UDP length counts twice in its checksum: in the pseudo-header and in the header.
    let old = put16(ctx, l4 + 4, udp_len)?;
    udp_csum(ctx, cfg, old, udp_len)?;
    udp_csum(ctx, cfg, old, udp_len)?;
    // SAFETY: our own context; shrinking only.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - cur as i32) } != 0 {
        return None;
    }
    Some(())
}

/// RFC 1624 for the IPv4 header checksum (no 0 -> 0xffff rule there).
#[inline(always)]
fn ip_csum_replace16(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!csum as u32) + (!old as u32) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[xdp]
pub fn pktgen_sink(ctx: XdpContext) -> u32 {
    add(&SINK_STATS, SINK_PACKETS, 1);
    add(
        &SINK_STATS,
        SINK_BYTES,
        (ctx.data_end() - ctx.data()) as u64,
    );
    add(&SINK_STATS, classify(&ctx), 1);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> u32 {
    let Some(l3) = l3(ctx) else {
        return SINK_OTHER;
    };
    if l3.proto == IPPROTO_ESP {
        return SINK_ESP;
    }
    if l3.proto != IPPROTO_UDP {
        return SINK_OTHER;
    }
    // ESP in UDP/4500: a non-zero SPI where the non-ESP marker would be (RFC 3948 2.2).
    if u16_at(ctx, l3.l4_off + 2) == Some(NAT_T_PORT)
        && u32_at(ctx, l3.l4_off + 8).is_some_and(|spi| spi != 0)
    {
        SINK_ESP
    } else {
        SINK_UDP
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
