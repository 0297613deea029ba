//! Bounds-checked access to packet bytes, shared by both programs.

use aya_ebpf::programs::XdpContext;
use core::mem;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use vpn_common::DropReason;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ESP: u8 = 50;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;

pub const IKE_PORT: u16 = 500;
pub const NAT_T_PORT: u16 = 4500;
pub const VXLAN_PORT: u16 = 4789;

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds all of it. The one
/// place where packet bounds are checked.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// The byte at `off` (>= 1). Reads it together with the byte before: for a one-byte access
/// LLVM rewrites the bounds check into a form (`end > p`) the verifier does not credit.
#[inline(always)]
pub fn u8_at(ctx: &XdpContext, off: usize) -> Option<u8> {
    let p = ptr_at::<[u8; 2]>(ctx, off.checked_sub(1)?)?;
    Some(unsafe { (*p)[1] })
}

#[inline(always)]
pub fn u16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, off)?;
    Some(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
pub fn u32_at(ctx: &XdpContext, off: usize) -> Option<u32> {
    let p = ptr_at::<[u8; 4]>(ctx, off)?;
    Some(u32::from_be_bytes(unsafe { *p }))
}

/// Ethernet with up to two VLAN tags (802.1Q / 802.1ad). Returns (ethertype, L3 offset,
/// offset of the first tag if any).
#[inline(always)]
pub fn parse_eth(ctx: &XdpContext) -> Result<(u16, usize), DropReason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(DropReason::TruncatedEthernet)?;
    let mut proto = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = u16_at(ctx, off + 2).ok_or(DropReason::TruncatedVlan)?;
        off += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = u16_at(ctx, off + 2).ok_or(DropReason::TruncatedVlan)?;
            off += 4;
        }
    }
    Ok((proto, off))
}

/// What the IP layer told us.
pub struct L3 {
    pub l4_off: usize,
    /// End of the IP packet as its header says (may be before `data_end`: Ethernet padding).
    pub ip_end: usize,
    pub proto: u8,
    pub ipv6: bool,
    /// Any fragment (first or later).
    pub fragment: bool,
    /// A later fragment: no L4 header in it.
    /// Offsets of the source and destination addresses in the packet (4 or 16 bytes each).
    pub src_off: usize,
    pub dst_off: usize,
}

pub enum L3Result {
    Ip(L3),
    /// The IPv6 extension-header chain is longer than we walk, or runs past the packet. The
    /// fixed header was checked: its destination address is at `dst_off`.
    Unparsed {
        dst_off: usize,
    },
}

/// Largest IP length a frame can carry here: longer claims are truncated packets.
const MAX_L3_LEN: usize = 0x3fff;

/// IPv4 (any IHL) at `off`.
#[inline(always)]
pub fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<L3, DropReason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off).ok_or(DropReason::TruncatedIpv4)?;
    let vihl = unsafe { (*ip).vihl };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(DropReason::BadIpv4Header);
    }
    let hlen = ihl * 4;
    // Options, if any, must be inside the packet too.
    if ctx.data() + off + hlen > ctx.data_end() {
        return Err(DropReason::TruncatedIpv4);
    }
    let tot_len = u16::from_be_bytes(unsafe { (*ip).tot_len }) as usize;
    // No single-buffer XDP frame holds more (nor does a page); the bound is also what lets the
    // 6.1 verifier add the length to a packet pointer: it loses the range of the two-byte
    // load, which 6.18 keeps ("math between pkt pointer and register with unbounded min
    // value").
    if tot_len > MAX_L3_LEN {
        return Err(DropReason::TruncatedIpv4);
    }
    if tot_len < hlen {
        return Err(DropReason::BadIpv4Header);
    }
    let ip_end = off + tot_len;
    if ctx.data() + ip_end > ctx.data_end() {
        return Err(DropReason::TruncatedIpv4);
    }
    let frags = u16::from_be_bytes(unsafe { (*ip).frags });
    let more = frags & 0x2000 != 0;
    let offset = frags & 0x1fff;
    Ok(L3 {
        l4_off: off + hlen,
        ip_end,
        proto: unsafe { (*ip).proto },
        ipv6: false,
        fragment: more || offset != 0,
        src_off: off + 12,
        dst_off: off + 16,
    })
}

/// IPv6 at `off`, walking up to four extension headers (hop-by-hop, routing, destination
/// options, fragment).
#[inline(always)]
pub fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<L3Result, DropReason> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off).ok_or(DropReason::TruncatedIpv6)?;
    if unsafe { (*ip).vcf[0] } >> 4 != 6 {
        return Err(DropReason::BadIpv6Header);
    }
    let payload_len = u16::from_be_bytes(unsafe { (*ip).payload_len }) as usize;
    // As for IPv4's total length (see `MAX_L3_LEN`).
    if payload_len > MAX_L3_LEN {
        return Err(DropReason::TruncatedIpv6);
    }
    let ip_end = off + Ipv6Hdr::LEN + payload_len;
    if ctx.data() + ip_end > ctx.data_end() {
        return Err(DropReason::TruncatedIpv6);
    }
    let mut next = unsafe { (*ip).next_hdr };
    let mut l4 = off + Ipv6Hdr::LEN;
    let mut fragment = false;
    let mut i = 0;
    while i < 4 {
        if next == IPV6_HOPOPTS || next == IPV6_ROUTING || next == IPV6_DSTOPTS {
            let h = ptr_at::<[u8; 2]>(ctx, l4).ok_or(DropReason::TruncatedIpv6)?;
            let h = unsafe { *h };
            next = h[0];
            l4 += (h[1] as usize + 1) * 8;
        } else if next == IPV6_FRAGMENT {
            let h = ptr_at::<[u8; 8]>(ctx, l4).ok_or(DropReason::TruncatedIpv6)?;
            let h = unsafe { *h };
            next = h[0];
            fragment = true;
            l4 += 8;
        } else {
            break;
        }
        i += 1;
    }
    if next == IPV6_HOPOPTS
        || next == IPV6_ROUTING
        || next == IPV6_DSTOPTS
        || next == IPV6_FRAGMENT
        || l4 > ip_end
    {
        return Ok(L3Result::Unparsed { dst_off: off + 24 });
    }
    Ok(L3Result::Ip(L3 {
        l4_off: l4,
        ip_end,
        proto: next,
        ipv6: true,
        fragment,
        src_off: off + 8,
        dst_off: off + 24,
    }))
}
