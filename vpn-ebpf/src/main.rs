//! XDP programs of the ESP fast path.
//!
//! - `esp_ingress` (wire side): ESP / ESP-in-UDP -> SA by SPI -> replay pre-check -> AF_XDP;
//!   SAs of the kernel backend (`SA_F_KERNEL`) -> the stack's xfrm after the SPI/length checks.
//! - `tenant_ingress` (tenant side): VLAN / VXLAN / untagged -> tenant -> outbound policy
//!   (LPM on tenant + destination) -> tag popped -> AF_XDP.
//! - `xdp_noop`: returns XDP_PASS; the benchmarks' baseline.
//!
//! Each entry point is a thin wrapper around a `try_*` function that returns either a verdict
//! or a numbered [`DropReason`]; the wrapper counts the outcome in a per-CPU array.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod tenant;
mod vlan_host;
mod wire;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use vpn_common::{DropReason, Outcome};

/// What a `try_*` function decided for a packet it did not drop.
pub enum Verdict {
    Pass(Outcome),
    /// Already redirected (the helper's return value is XDP_REDIRECT).
    Redirect(Outcome),
}

#[inline(always)]
fn finish(stats: &aya_ebpf::maps::PerCpuArray<u64>, r: Result<Verdict, DropReason>) -> u32 {
    let (idx, action) = match r {
        Ok(Verdict::Pass(o)) => (o.counter(), xdp_action::XDP_PASS),
        Ok(Verdict::Redirect(o)) => (o.counter(), xdp_action::XDP_REDIRECT),
        Err(d) => (d.counter(), xdp_action::XDP_DROP),
    };
    maps::count(stats, idx);
    action
}

#[xdp]
pub fn esp_ingress(ctx: XdpContext) -> u32 {
    finish(&maps::WIRE_STATS, wire::try_esp_ingress(&ctx))
}

#[xdp]
pub fn tenant_ingress(ctx: XdpContext) -> u32 {
    finish(&maps::TENANT_STATS, tenant::try_tenant_ingress(&ctx))
}

#[xdp]
pub fn xdp_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
