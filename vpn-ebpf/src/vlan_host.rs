//! Test support: 802.1Q for a tenant *host* on kernels built without it (CONFIG_VLAN_8021Q is
//! off on these machines). TC egress pushes the tag, TC ingress pops it, so an ordinary IP
//! stack behind a veth talks VLAN `VLAN_HOST_VID` to the node. Not used by the data plane.

use aya_ebpf::{
    Global,
    bindings::TC_ACT_OK,
    helpers::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::classifier,
    programs::TcContext,
};

#[unsafe(no_mangle)]
static VLAN_HOST_VID: Global<u32> = Global::new(0);

const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();

#[classifier]
pub fn vlan_host_egress(ctx: TcContext) -> i32 {
    let vid = VLAN_HOST_VID.load() as u16 & 0x0fff;
    // SAFETY: helper on our own skb.
    unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q_BE, vid) };
    TC_ACT_OK
}

#[classifier]
pub fn vlan_host_ingress(ctx: TcContext) -> i32 {
    // SAFETY: helper on our own skb; a frame without a tag is left as it is.
    unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
    TC_ACT_OK
}
