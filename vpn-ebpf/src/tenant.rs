//! `tenant_ingress`: the tenant side. Tag -> tenant -> outbound policy -> AF_XDP (or, for a
//! policy whose SA is in the kernel, the stack). VXLAN counts only from the VNI's VTEP pair;
//! IPv6 whose extension chain is not walked is still classified by its destination.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, maps::lpm_trie::Key, programs::XdpContext,
};
use vpn_common::{
    DropReason, Outcome, XdpMeta,
    maps::{
        AF_INET6, NO_TENANT, POLICY_BYPASS, POLICY_DISCARD, POLICY_KERNEL, PolicyKeyV4,
        PolicyKeyV6, PolicyValue, policy_prefix_len,
    },
    meta::{
        META_F_FROM_VLAN, META_F_FROM_VXLAN, META_F_IPV6, META_KIND_ARP, META_KIND_OUTBOUND,
        META_MAGIC, NO_SLOT,
    },
};

use crate::{
    Verdict,
    maps::{
        IFACES, POLICY_V4, POLICY_V6, TENANT_BY_VLAN, TENANT_BY_VNI, TENANT_STATS, TENANT_XSKS,
        VXLAN_VTEPS, count_sa,
    },
    parse::{
        ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, L3, L3Result, VXLAN_PORT, parse_ipv4,
        parse_ipv6, ptr_at, u16_at,
    },
    wire::write_meta,
};

const ETH_LEN: usize = 14;
const ETH_P_ARP: u16 = 0x0806;
const VXLAN_LEN: usize = 8;
const VXLAN_F_I: u8 = 0x08;

enum Ingress {
    Untagged,
    Vlan,
    /// Bytes of outer Ethernet/IP/UDP/VXLAN in front of the inner Ethernet header.
    Vxlan(usize),
}

/// What the tenant's IP header told us.
enum TenantL3 {
    Ip(L3),
    /// IPv6 whose extension-header chain was not walked (`L3Result::Unparsed`): only the
    /// fixed header is known, and with it the destination, which is all the policy needs.
    Ipv6Unparsed {
        dst_off: usize,
    },
    NotIp,
}

#[inline(always)]
fn parse_l3(ctx: &XdpContext, proto: u16, off: usize) -> Result<TenantL3, DropReason> {
    if proto == ETH_P_IP {
        Ok(TenantL3::Ip(parse_ipv4(ctx, off)?))
    } else if proto == ETH_P_IPV6 {
        match parse_ipv6(ctx, off)? {
            L3Result::Ip(l3) => Ok(TenantL3::Ip(l3)),
            L3Result::Unparsed { dst_off } => Ok(TenantL3::Ipv6Unparsed { dst_off }),
        }
    } else {
        Ok(TenantL3::NotIp)
    }
}

/// The outer addresses of a VXLAN frame must be the VNI's VTEP pair (`VXLAN_VTEPS`): the
/// tenant is taken from the VNI, and anyone who can reach the tenant interface can write any
/// VNI.
#[inline(always)]
fn check_vteps(ctx: &XdpContext, outer: &L3, vni: u32) -> Result<(), DropReason> {
    // SAFETY: read-only lookup of a plain value.
    let Some(vteps) = (unsafe { VXLAN_VTEPS.get(&vni) }) else {
        return Err(DropReason::VxlanNoVtep);
    };
    if outer.ipv6 != (vteps.family == AF_INET6) {
        return Err(DropReason::VxlanSourceNotVtep);
    }
    let words = if outer.ipv6 { 4 } else { 1 };
    if !addr_is(ctx, outer.src_off, &vteps.remote, words) {
        return Err(DropReason::VxlanSourceNotVtep);
    }
    if !addr_is(ctx, outer.dst_off, &vteps.local, words) {
        return Err(DropReason::VxlanDestNotVtep);
    }
    Ok(())
}

/// Whether the `words` 32-bit words of the address at `off` in the packet are those of
/// `want`. Word by word: a 16-byte comparison would become a call to `bcmp`.
#[inline(always)]
fn addr_is(ctx: &XdpContext, off: usize, want: &[u8; 16], words: usize) -> bool {
    let mut i = 0;
    while i < 4 {
        if i < words {
            let Some(p) = ptr_at::<[u8; 4]>(ctx, off + 4 * i) else {
                return false;
            };
            let got = u32::from_ne_bytes(unsafe { *p });
            let w = u32::from_ne_bytes([
                want[4 * i],
                want[4 * i + 1],
                want[4 * i + 2],
                want[4 * i + 3],
            ]);
            if got != w {
                return false;
            }
        }
        i += 1;
    }
    true
}

#[inline(always)]
pub fn try_tenant_ingress(ctx: &XdpContext) -> Result<Verdict, DropReason> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: read-only lookup of a plain value.
    let iface = unsafe { IFACES.get(&ifindex) };
    let (default_tenant, xsk_base) = match iface {
        Some(i) => (i.default_tenant, i.xsk_base),
        None => (NO_TENANT, 0),
    };

    let ethertype = u16_at(ctx, 12).ok_or(DropReason::TruncatedEthernet)?;
    let (tenant, ingress, l3) = if ethertype == ETH_P_8021Q {
        let tci = u16_at(ctx, ETH_LEN).ok_or(DropReason::TruncatedVlan)?;
        let inner = u16_at(ctx, ETH_LEN + 2).ok_or(DropReason::TruncatedVlan)?;
        let vid = (tci & 0x0fff) as u32;
        let Some(tenant) = (unsafe { TENANT_BY_VLAN.get(&vid) }) else {
            return Ok(Verdict::Pass(Outcome::TenantPassNoTenant));
        };
        let tenant = *tenant;
        if inner == ETH_P_ARP {
            return arp(ctx, tenant, Ingress::Vlan, xsk_base);
        }
        (tenant, Ingress::Vlan, parse_l3(ctx, inner, ETH_LEN + 4)?)
    } else {
        let outer = match parse_l3(ctx, ethertype, ETH_LEN)? {
            TenantL3::Ip(outer) => outer,
            TenantL3::NotIp => return Ok(Verdict::Pass(Outcome::TenantPassNotIp)),
            // Not VXLAN as far as we can tell; untagged traffic of the interface's tenant
            // is classified by its destination all the same.
            unparsed @ TenantL3::Ipv6Unparsed { .. } => {
                if default_tenant == NO_TENANT {
                    return Ok(Verdict::Pass(Outcome::TenantPassNoTenant));
                }
                return classify(ctx, default_tenant, Ingress::Untagged, unparsed, xsk_base);
            }
        };
        let vxlan = outer.proto == IPPROTO_UDP
            && !outer.fragment
            && u16_at(ctx, outer.l4_off + 2).ok_or(DropReason::TruncatedUdp)? == VXLAN_PORT;
        // A VNI of ours, else the frame is the untagged tenant's own UDP (to port 4789 of
        // any host, a protected one too): classified below like the rest of its traffic.
        let vni_tenant = if vxlan {
            let vx_off = outer.l4_off + 8;
            let vx = ptr_at::<[u8; VXLAN_LEN]>(ctx, vx_off).ok_or(DropReason::TruncatedVxlan)?;
            let vx = unsafe { *vx };
            if vx[0] & VXLAN_F_I == 0 {
                return Err(DropReason::BadVxlan);
            }
            let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
            unsafe { TENANT_BY_VNI.get(&vni) }.map(|t| (*t, vni, vx_off))
        } else {
            None
        };
        if let Some((tenant, vni, vx_off)) = vni_tenant {
            check_vteps(ctx, &outer, vni)?;
            let inner_eth = vx_off + VXLAN_LEN;
            let inner = u16_at(ctx, inner_eth + 12).ok_or(DropReason::TruncatedVxlan)?;
            if inner == ETH_P_ARP {
                return arp(ctx, tenant, Ingress::Vxlan(inner_eth), xsk_base);
            }
            (
                tenant,
                Ingress::Vxlan(inner_eth),
                parse_l3(ctx, inner, inner_eth + ETH_LEN)?,
            )
        } else {
            if default_tenant == NO_TENANT {
                return Ok(Verdict::Pass(Outcome::TenantPassNoTenant));
            }
            (default_tenant, Ingress::Untagged, TenantL3::Ip(outer))
        }
    };
    classify(ctx, tenant, ingress, l3, xsk_base)
}

/// The outbound policy of (tenant, destination), and what follows from it.
#[inline(always)]
fn classify(
    ctx: &XdpContext,
    tenant: u32,
    ingress: Ingress,
    l3: TenantL3,
    xsk_base: u32,
) -> Result<Verdict, DropReason> {
    let (ipv6, dst_off, ip_end) = match l3 {
        TenantL3::Ip(l3) => (l3.ipv6, l3.dst_off, Some(l3.ip_end)),
        TenantL3::Ipv6Unparsed { dst_off } => (true, dst_off, None),
        TenantL3::NotIp => return Ok(Verdict::Pass(Outcome::TenantPassNotIp)),
    };
    let tenant_be = tenant.to_be_bytes();
    let policy: Option<&PolicyValue> = if ipv6 {
        let dst = ptr_at::<[u8; 16]>(ctx, dst_off).ok_or(DropReason::TruncatedIpv6)?;
        let key = Key::new(
            policy_prefix_len(128),
            PolicyKeyV6 {
                tenant_be,
                addr: unsafe { *dst },
            },
        );
        POLICY_V6.get(&key)
    } else {
        let dst = ptr_at::<[u8; 4]>(ctx, dst_off).ok_or(DropReason::TruncatedIpv4)?;
        let key = Key::new(
            policy_prefix_len(32),
            PolicyKeyV4 {
                tenant_be,
                addr: unsafe { *dst },
            },
        );
        POLICY_V4.get(&key)
    };
    let Some(policy) = policy else {
        return Ok(Verdict::Pass(Outcome::TenantPassNoPolicy));
    };
    if policy.action == POLICY_BYPASS {
        return Ok(Verdict::Pass(Outcome::TenantPassBypass));
    }
    if policy.action == POLICY_DISCARD {
        return Err(DropReason::PolicyDiscard);
    }
    if policy.action == POLICY_KERNEL {
        // The SA is the kernel's: the frame goes up untouched (VLAN tag and all) for the
        // kernel's VLAN device / routing, and xfrm encrypts it.
        return Ok(Verdict::Pass(Outcome::TenantPassKernel));
    }
    // PROTECT. A packet we could not parse must neither leave in clear (passing it would
    // skip the policy) nor reach the worker unchecked.
    let Some(ip_end) = ip_end else {
        return Err(DropReason::Ipv6UnparsedProtected);
    };
    let slot = policy.sa_slot;
    let mut flags = if ipv6 { META_F_IPV6 } else { 0 };

    let l3_start = match ingress {
        Ingress::Untagged => ETH_LEN,
        Ingress::Vlan => ETH_LEN + 4,
        Ingress::Vxlan(inner_eth) => inner_eth + ETH_LEN,
    };
    let bytes = (ip_end - l3_start) as u64;
    flags |= pop(ctx, &ingress)?;
    send_to_worker(ctx, META_KIND_OUTBOUND, flags, slot, tenant, xsk_base)?;
    count_sa(slot, bytes);
    Ok(Verdict::Redirect(Outcome::TenantRedirect))
}

/// Pops the tag or the VXLAN outer headers: the worker sees a plain Ethernet frame with
/// the payload at offset 14. Returns the metadata flag saying what was popped.
#[inline(always)]
fn pop(ctx: &XdpContext, ingress: &Ingress) -> Result<u8, DropReason> {
    match ingress {
        Ingress::Untagged => Ok(0),
        Ingress::Vlan => {
            let macs = ptr_at::<[u8; 12]>(ctx, 0).ok_or(DropReason::TruncatedEthernet)?;
            let macs = unsafe { *macs };
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0 {
                return Err(DropReason::HeadAdjustFailed);
            }
            let dst = ptr_at::<[u8; 12]>(ctx, 0).ok_or(DropReason::HeadAdjustFailed)?;
            unsafe { core::ptr::write(dst as *mut [u8; 12], macs) };
            Ok(META_F_FROM_VLAN)
        }
        Ingress::Vxlan(inner_eth) => {
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, *inner_eth as i32) } != 0 {
                return Err(DropReason::HeadAdjustFailed);
            }
            Ok(META_F_FROM_VXLAN)
        }
    }
}

#[inline(always)]
fn send_to_worker(
    ctx: &XdpContext,
    kind: u8,
    flags: u8,
    slot: u32,
    tenant: u32,
    xsk_base: u32,
) -> Result<(), DropReason> {
    let meta = XdpMeta {
        magic: META_MAGIC,
        kind,
        flags,
        slot,
        tenant,
        l3_off: ETH_LEN as u16,
        esp_off: 0,
    };
    write_meta(ctx, &meta, &TENANT_STATS, Outcome::TenantMetaRefusedShim)?;
    let key = xsk_base + ctx.rx_queue_index();
    TENANT_XSKS
        .redirect(key, xdp_action::XDP_ABORTED as u64)
        .map_err(|_| DropReason::NoXskSocket)?;
    Ok(())
}

/// ARP on a VLAN or VXLAN tenant network goes to the worker, which answers for the tenant's
/// gateway (the kernel has no interface on those networks to answer from).
#[inline(always)]
fn arp(
    ctx: &XdpContext,
    tenant: u32,
    ingress: Ingress,
    xsk_base: u32,
) -> Result<Verdict, DropReason> {
    let flags = pop(ctx, &ingress)?;
    send_to_worker(ctx, META_KIND_ARP, flags, NO_SLOT, tenant, xsk_base)?;
    Ok(Verdict::Redirect(Outcome::TenantRedirectArp))
}
