//! The XDP metadata the programs put in front of a packet they redirect to AF_XDP, and the two
//! ways it travels (the *carrier*, chosen when the object is loaded: [`CARRIER_GLOBAL`]).
//!
//! - [`CARRIER_META`]: `bpf_xdp_adjust_meta` puts it in the XDP metadata area. In copy mode the
//!   kernel copies that area into the UMEM right before the frame, so a worker finds it at
//!   `umem + desc.addr - XdpMeta::LEN`. If a device refuses the helper at run time (drivers
//!   that build their `xdp_buff` without metadata support), the program puts the same bytes in
//!   the packet instead (as with the shim) and counts `*_meta_refused_shim`.
//! - [`CARRIER_SHIM`]: `bpf_xdp_adjust_head` prepends it to the frame, so it is the first
//!   `XdpMeta::LEN` bytes at `desc.addr`; the worker strips it. For kernels whose verifier
//!   refuses `bpf_xdp_adjust_meta` to XDP programs.
//!
//! The descriptor does not carry the metadata length: this fixed size is the contract.

use crate::pod;

/// Name of the load-time constant (a `.rodata` global of the XDP object) that selects the
/// carrier. Read-only to the programs and frozen, so the verifier knows its value and never
/// walks the other carrier's code (a kernel that refuses `bpf_xdp_adjust_meta` never sees the
/// call).
pub const CARRIER_GLOBAL: &str = "CARRIER";
/// Carrier: the XDP metadata area (`bpf_xdp_adjust_meta`), with the in-packet shim as the
/// per-packet fallback where a device refuses the helper at run time.
pub const CARRIER_META: u32 = 0;
/// Carrier: an in-packet shim in front of the Ethernet header (`bpf_xdp_adjust_head`).
pub const CARRIER_SHIM: u32 = 1;

/// `XDP_PACKET_HEADROOM` (include/uapi/linux/bpf.h): where a copy-mode AF_XDP socket's frames
/// start in their UMEM chunk (plus the UMEM's own headroom), on every kernel.
pub const XDP_PACKET_HEADROOM: usize = 256;

/// First field of every metadata block, to catch a frame that did not come through our program.
pub const META_MAGIC: u16 = 0x5650; // "VP"

/// ESP from the wire, SA found and replay pre-check passed.
pub const META_KIND_ESP_IN: u8 = 1;
/// Outer IP fragment of ESP (or of UDP from a peer): reassemble before anything else.
pub const META_KIND_FRAGMENT: u8 = 2;
/// Tenant traffic that matched an outbound policy.
pub const META_KIND_OUTBOUND: u8 = 3;

/// ARP from a VLAN or VXLAN tenant network (tag popped), for the worker to answer.
pub const META_KIND_ARP: u8 = 4;

/// `flags`: the ESP came inside UDP/4500 (RFC 3948).
pub const META_F_UDP_ENCAP: u8 = 1 << 0;
/// `flags`: outer header is IPv6.
pub const META_F_IPV6: u8 = 1 << 1;
/// `flags` (outbound): the tenant frame arrived with an 802.1Q tag, now popped.
pub const META_F_FROM_VLAN: u8 = 1 << 2;
/// `flags` (outbound): the tenant frame arrived VXLAN-encapsulated, now decapsulated.
pub const META_F_FROM_VXLAN: u8 = 1 << 3;

/// Slot value meaning "no SA known yet" (fragments).
pub const NO_SLOT: u32 = u32::MAX;

#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpMeta {
    pub magic: u16,
    pub kind: u8,
    pub flags: u8,
    /// SA slot (index into the replay and per-SA counter arrays), or `NO_SLOT`.
    pub slot: u32,
    /// Tenant id (inbound: from the SA; outbound: from the VLAN/VNI/interface).
    pub tenant: u32,
    /// Offset of the (outer) IP header from the start of the frame.
    pub l3_off: u16,
    /// Offset of the ESP header (inbound) or 0.
    pub esp_off: u16,
}

impl XdpMeta {
    pub const LEN: usize = core::mem::size_of::<XdpMeta>();

    /// Decodes metadata bytes (user space reads them from the UMEM).
    pub fn from_bytes(b: &[u8; Self::LEN]) -> XdpMeta {
        XdpMeta {
            magic: u16::from_ne_bytes([b[0], b[1]]),
            kind: b[2],
            flags: b[3],
            slot: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            tenant: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            l3_off: u16::from_ne_bytes([b[12], b[13]]),
            esp_off: u16::from_ne_bytes([b[14], b[15]]),
        }
    }
}

// bpf_xdp_adjust_meta wants a multiple of 4, at most 32 bytes.
const _: () = assert!(XdpMeta::LEN == 16);

pod!(XdpMeta);
