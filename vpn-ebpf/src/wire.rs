//! `esp_ingress`: the wire side.

use aya_ebpf::{
    Global,
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    maps::PerCpuArray,
    programs::XdpContext,
};
use vpn_common::{
    DropReason, Outcome, ReplayError, XdpMeta,
    maps::{
        AF_INET, AF_INET6, PEER_F_AFXDP, PEER_F_KERNEL, PeerKey, SA_F_KERNEL,
        WIRE_F_UNKNOWN_SPI_PASS,
    },
    meta::{
        CARRIER_META, META_F_IPV6, META_F_UDP_ENCAP, META_KIND_ESP_IN, META_KIND_FRAGMENT,
        META_MAGIC, NO_SLOT,
    },
};

use crate::{
    Verdict,
    maps::{PEERS, REPLAY, SA_IN, WIRE_CONFIG, WIRE_STATS, XSKS, count, count_sa},
    parse::{
        ETH_P_IP, ETH_P_IPV6, IKE_PORT, IPPROTO_ESP, IPPROTO_UDP, L3, L3Result, NAT_T_PORT,
        parse_eth, parse_ipv4, parse_ipv6, ptr_at, u8_at, u16_at, u32_at,
    },
};

const UDP_HDR: usize = 8;
const ESP_HDR: usize = 8;

#[inline(always)]
pub fn try_esp_ingress(ctx: &XdpContext) -> Result<Verdict, DropReason> {
    let (proto, l3_off) = parse_eth(ctx)?;
    let l3 = if proto == ETH_P_IP {
        parse_ipv4(ctx, l3_off)?
    } else if proto == ETH_P_IPV6 {
        match parse_ipv6(ctx, l3_off)? {
            L3Result::Ip(l3) => l3,
            // Left to the stack as before: it cannot decrypt our SAs' ESP (nor skip their replay
            // windows), and clear traffic from the wire passes anyway (`pass_not_esp`).
            L3Result::Unparsed { .. } => return Ok(Verdict::Pass(Outcome::WirePassUnparsed)),
        }
    } else {
        return Ok(Verdict::Pass(Outcome::WirePassNotEsp));
    };

    if l3.proto != IPPROTO_ESP && l3.proto != IPPROTO_UDP {
        return Ok(Verdict::Pass(Outcome::WirePassNotEsp));
    }
    if l3.fragment {
        return outer_fragment(ctx, &l3, l3_off);
    }
    if l3.proto == IPPROTO_ESP {
        return esp(ctx, &l3, l3_off, l3.l4_off, false);
    }

    let dport = u16_at(ctx, l3.l4_off + 2).ok_or(DropReason::TruncatedUdp)?;
    if dport == IKE_PORT {
        return Ok(Verdict::Pass(Outcome::WirePassIke));
    }
    if dport != NAT_T_PORT {
        return Ok(Verdict::Pass(Outcome::WirePassNotEsp));
    }
    // RFC 3948 2.2 / 2.3: keepalive (one 0xFF byte), non-ESP marker (IKE), or ESP.
    let payload = l3.l4_off + UDP_HDR;
    if payload > l3.ip_end {
        return Err(DropReason::TruncatedUdp);
    }
    let payload_len = l3.ip_end - payload;
    if payload_len == 1 {
        if u8_at(ctx, payload).ok_or(DropReason::TruncatedUdp)? == 0xff {
            return Err(DropReason::NatKeepalive);
        }
        return Err(DropReason::TruncatedEsp);
    }
    if payload_len >= 4 && u32_at(ctx, payload) == Some(0) {
        return Ok(Verdict::Pass(Outcome::WirePassIke));
    }
    esp(ctx, &l3, l3_off, payload, true)
}

/// An outer fragment of ESP or UDP, decided by the source's `PEERS` flags. Only the first
/// fragment carries the port; ESP-in-UDP and IKE from a peer look alike after it.
/// - A peer with only kernel-backend SAs (`PEER_F_KERNEL`, no `PEER_F_AFXDP`): the stack
///   reassembles, and its xfrm (or IKE socket) gets the datagram.
/// - Any other peer in `PEERS`: the worker reassembles and hands IKE to vpnd.
/// - An unknown source: ESP still goes to the worker (it may be ours), UDP is the stack's.
#[inline(always)]
fn outer_fragment(ctx: &XdpContext, l3: &L3, l3_off: usize) -> Result<Verdict, DropReason> {
    let key = if l3.ipv6 {
        let a = ptr_at::<[u8; 16]>(ctx, l3.src_off).ok_or(DropReason::TruncatedIpv6)?;
        PeerKey {
            family: AF_INET6,
            addr: unsafe { *a },
        }
    } else {
        let a = ptr_at::<[u8; 4]>(ctx, l3.src_off).ok_or(DropReason::TruncatedIpv4)?;
        peer_key_v4(unsafe { *a })
    };
    // SAFETY: read-only lookup of a plain value.
    match unsafe { PEERS.get(&key) } {
        Some(f) if *f & (PEER_F_KERNEL | PEER_F_AFXDP) == PEER_F_KERNEL => {
            Ok(Verdict::Pass(Outcome::WirePassKernelFragment))
        }
        Some(_) => fragment(ctx, l3, l3_off),
        None if l3.proto == IPPROTO_ESP => fragment(ctx, l3, l3_off),
        None => Ok(Verdict::Pass(Outcome::WirePassNotEsp)),
    }
}

/// `PeerKey::v4`, built with word stores: LLVM would otherwise turn the zero padding into a
/// call to compiler_builtins' memset (a BPF-to-BPF call on this path).
#[inline(always)]
fn peer_key_v4(a: [u8; 4]) -> PeerKey {
    let mut key = core::mem::MaybeUninit::<PeerKey>::uninit();
    let w = key.as_mut_ptr() as *mut u32;
    // SAFETY: PeerKey is 5 aligned u32 words of plain bytes (size asserted in vpn-common).
    unsafe {
        core::ptr::write_volatile(w, AF_INET);
        core::ptr::write_volatile(w.add(1), u32::from_ne_bytes(a));
        core::ptr::write_volatile(w.add(2), 0);
        core::ptr::write_volatile(w.add(3), 0);
        core::ptr::write_volatile(w.add(4), 0);
        key.assume_init()
    }
}

#[inline(always)]
fn esp(
    ctx: &XdpContext,
    l3: &L3,
    l3_off: usize,
    esp_off: usize,
    udp: bool,
) -> Result<Verdict, DropReason> {
    if esp_off + ESP_HDR > l3.ip_end {
        return Err(DropReason::TruncatedEsp);
    }
    let spi = u32_at(ctx, esp_off).ok_or(DropReason::TruncatedEsp)?;
    let seq = u32_at(ctx, esp_off + 4).ok_or(DropReason::TruncatedEsp)?;

    // SAFETY: read-only lookup of a plain value.
    let Some(sa) = (unsafe { SA_IN.get(&spi) }) else {
        let pass = WIRE_CONFIG
            .get(0)
            .is_some_and(|c| c.flags & WIRE_F_UNKNOWN_SPI_PASS != 0);
        return if pass {
            Ok(Verdict::Pass(Outcome::WirePassUnknownSpi))
        } else {
            Err(DropReason::UnknownSpi)
        };
    };
    let slot = sa.slot;
    let tenant = sa.tenant;
    if l3.ip_end - esp_off < sa.min_esp_len as usize {
        return Err(DropReason::EspRunt);
    }
    let bytes = (l3.ip_end - l3_off) as u64;
    if sa.flags & SA_F_KERNEL != 0 {
        // The kernel's xfrm decrypts it and keeps its own replay state: `REPLAY[slot]` is
        // never advanced for such an SA, so it is not consulted. Nor is a sequence number of
        // 0 dropped here: with ESN it is a valid low half after 2^32 packets, and the SA
        // entry does not say whether the SA has ESN; xfrm's replay check decides.
        count_sa(slot, bytes);
        return Ok(Verdict::Pass(Outcome::WirePassKernel));
    }
    let window = REPLAY.get(slot).ok_or(DropReason::SaStateMissing)?;
    match window.check(seq) {
        Ok(_) => {}
        Err(ReplayError::TooOld) => return Err(DropReason::ReplayTooOld),
        Err(ReplayError::Duplicate) => return Err(DropReason::ReplayDuplicate),
        Err(ReplayError::Zero) => return Err(DropReason::ReplaySeqZero),
    }

    let mut flags = if udp { META_F_UDP_ENCAP } else { 0 };
    if l3.ipv6 {
        flags |= META_F_IPV6;
    }
    let meta = XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_ESP_IN,
        flags,
        slot,
        tenant,
        l3_off: l3_off as u16,
        esp_off: esp_off as u16,
    };
    redirect(ctx, &meta)?;
    count_sa(slot, bytes);
    Ok(Verdict::Redirect(if udp {
        Outcome::WireRedirectEspUdp
    } else {
        Outcome::WireRedirectEsp
    }))
}

#[inline(always)]
fn fragment(ctx: &XdpContext, l3: &L3, l3_off: usize) -> Result<Verdict, DropReason> {
    let meta = XdpMeta {
        magic: META_MAGIC,
        kind: META_KIND_FRAGMENT,
        flags: if l3.ipv6 { META_F_IPV6 } else { 0 },
        slot: NO_SLOT,
        tenant: 0,
        l3_off: l3_off as u16,
        esp_off: 0,
    };
    redirect(ctx, &meta)?;
    Ok(Verdict::Redirect(Outcome::WireRedirectFragment))
}

/// How the metadata travels (`vpn_common::meta`): set by the loader before the programs are
/// verified. `.rodata` and frozen, so the verifier knows it and prunes the other carrier's
/// path: a kernel that refuses `bpf_xdp_adjust_meta` never sees the call in shim mode.
#[unsafe(no_mangle)]
static CARRIER: Global<u32> = Global::new(CARRIER_META);

/// Puts the metadata in front of the frame: in the XDP metadata area, or (shim carrier, or a
/// device that refused the metadata helper at run time, counted as `refused`) as the frame's
/// first `XdpMeta::LEN` bytes.
#[inline(always)]
pub fn write_meta(
    ctx: &XdpContext,
    meta: &XdpMeta,
    stats: &PerCpuArray<u64>,
    refused: Outcome,
) -> Result<(), DropReason> {
    if CARRIER.load() == CARRIER_META {
        // SAFETY: helper call on our own context; pointers are re-read afterwards.
        if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(XdpMeta::LEN as i32)) } == 0 {
            let m = ctx.metadata();
            if m + XdpMeta::LEN > ctx.data() {
                return Err(DropReason::MetadataFailed);
            }
            unsafe { core::ptr::write_unaligned(m as *mut XdpMeta, *meta) };
            return Ok(());
        }
        // The driver built this frame without a metadata area (-EOPNOTSUPP): carry the same
        // bytes in the packet; the worker finds no metadata in front and reads them there.
        count(stats, refused.counter());
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(XdpMeta::LEN as i32)) } != 0 {
        return Err(DropReason::MetadataFailed);
    }
    let p = ptr_at::<[u8; XdpMeta::LEN]>(ctx, 0).ok_or(DropReason::MetadataFailed)?;
    unsafe { core::ptr::write_unaligned(p as *mut XdpMeta, *meta) };
    Ok(())
}

#[inline(always)]
fn redirect(ctx: &XdpContext, meta: &XdpMeta) -> Result<(), DropReason> {
    write_meta(ctx, meta, &WIRE_STATS, Outcome::WireMetaRefusedShim)?;
    // With no socket on this queue the helper returns the low bits of the flags (XDP_ABORTED
    // here, never XDP_REDIRECT): counted and dropped by the caller.
    XSKS.redirect(ctx.rx_queue_index(), xdp_action::XDP_ABORTED as u64)
        .map(|_| ())
        .map_err(|_| DropReason::NoXskSocket)
}
