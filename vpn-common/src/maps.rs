//! Map names, sizes, keys and values: the contract between the XDP programs and user space.
//!
//! All multi-byte fields are in host byte order unless the name ends in `_be` (addresses are
//! kept as network-order byte arrays, exactly as they appear on the wire).

use crate::pod;

/// bpffs directory under which an instance's maps are pinned: `/sys/fs/bpf/<instance>/`.
pub const PIN_ROOT: &str = "/sys/fs/bpf";

/// Map names (the symbol names in the eBPF object, and the pin file names).
pub mod names {
    pub const SA_IN: &str = "SA_IN";
    pub const REPLAY: &str = "REPLAY";
    pub const SA_STATS: &str = "SA_STATS";
    pub const WIRE_STATS: &str = "WIRE_STATS";
    pub const TENANT_STATS: &str = "TENANT_STATS";
    pub const WIRE_CONFIG: &str = "WIRE_CONFIG";
    pub const PEERS: &str = "PEERS";
    pub const XSKS: &str = "XSKS";
    pub const TENANT_XSKS: &str = "TENANT_XSKS";
    pub const TENANT_BY_VLAN: &str = "TENANT_BY_VLAN";
    pub const TENANT_BY_VNI: &str = "TENANT_BY_VNI";
    pub const IFACES: &str = "IFACES";
    pub const POLICY_V4: &str = "POLICY_V4";
    pub const POLICY_V6: &str = "POLICY_V6";
    pub const TENANT_ENCAP: &str = "TENANT_ENCAP";
    pub const VXLAN_VTEPS: &str = "VXLAN_VTEPS";

    /// Every map, for pin clean-up and `vpnctl maps`.
    pub const ALL: [&str; 16] = [
        SA_IN,
        REPLAY,
        SA_STATS,
        WIRE_STATS,
        TENANT_STATS,
        WIRE_CONFIG,
        PEERS,
        XSKS,
        TENANT_XSKS,
        TENANT_BY_VLAN,
        TENANT_BY_VNI,
        IFACES,
        POLICY_V4,
        POLICY_V6,
        TENANT_ENCAP,
        VXLAN_VTEPS,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    pub const ESP_INGRESS: &str = "esp_ingress";
    pub const TENANT_INGRESS: &str = "tenant_ingress";
    /// Does nothing but return XDP_PASS: the baseline of the benchmarks.
    pub const NOOP: &str = "xdp_noop";
}

/// Default number of SA slots (inbound + outbound). Loaders may lower it (tests) or raise it.
pub const DEFAULT_SA_SLOTS: u32 = 131_072;
/// Default capacity of the inbound SPI hash map. At least 100,000 SAs must fit.
pub const DEFAULT_SA_IN_ENTRIES: u32 = 131_072;
pub const MAX_TENANTS: u32 = 16_384;
pub const MAX_POLICIES: u32 = 65_536;
pub const MAX_PEERS: u32 = 16_384;
pub const MAX_QUEUES: u32 = 64;
/// Entries of `TENANT_XSKS`: several tenant interfaces, `MAX_QUEUES` each.
pub const TENANT_XSK_ENTRIES: u32 = 1024;
pub const MAX_IFACES: u32 = 256;

/// Tenant id 0 means "none".
pub const NO_TENANT: u32 = 0;

/// `SA_IN` key: the SPI, host byte order.
pub type SpiKey = u32;

/// `SaIn.flags`: the SA expects UDP encapsulation (informational for the worker).
pub const SA_F_UDP_ENCAP: u32 = 1 << 0;
/// `SaIn.flags`: the SA's crypto is the kernel's xfrm (the "kernel" backend). After the SPI,
/// length and seq-0 checks the packet goes to the stack, counted (`pass_kernel`) and in
/// `SA_STATS`; the replay window is not consulted (nobody advances it for such an SA: xfrm
/// keeps its own).
pub const SA_F_KERNEL: u32 = 1 << 1;

/// `SA_IN` value: an inbound SA as the fast path needs it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SaIn {
    /// Index into `REPLAY` and `SA_STATS`.
    pub slot: u32,
    /// Tenant the decrypted traffic belongs to.
    pub tenant: u32,
    pub flags: u32,
    /// Smallest valid ESP packet for this SA: header + IV + ICV + pad-length/next-header.
    pub min_esp_len: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SaIn>() == 16);

impl SaIn {
    /// ESP header (8) + IV + 2-byte trailer + ICV.
    pub const fn min_esp_len_for(iv_len: u16, icv_len: u16) -> u16 {
        8 + iv_len + 2 + icv_len
    }
}

/// `SA_STATS` value (per CPU, per slot): what the fast path handed to the worker.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SaStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<SaStats>() == 16);

/// `WireConfig.flags`: ESP with an unknown SPI goes to the stack instead of being dropped, so
/// the plane can coexist with other IPsec on the node.
pub const WIRE_F_UNKNOWN_SPI_PASS: u32 = 1 << 0;

/// `WIRE_CONFIG[0]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WireConfig {
    pub flags: u32,
    pub _pad: u32,
}

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// `PEERS` value bit: UDP and ESP fragments from this peer go to the AF_XDP worker for
/// reassembly (UDP ones may be ESP-in-UDP; only the first fragment has the port). What every
/// entry meant before the value became flags (it was always 1).
pub const PEER_F_AFXDP: u32 = 1 << 0;
/// `PEERS` value bit: the peer has kernel-backend SAs (`SA_F_KERNEL`). Outer fragments from a
/// peer with this bit and without `PEER_F_AFXDP` are left to the stack to reassemble
/// (`pass_kernel_fragment`): xfrm then sees the whole datagram.
pub const PEER_F_KERNEL: u32 = 1 << 1;

/// `PEERS` key: a peer's outer address; the value is `PEER_F_*` flags. Raw ESP fragments from
/// an address not in `PEERS` still go to the worker; UDP fragments from one go to the stack.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub family: u32,
    /// IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 20);

impl PeerKey {
    pub const fn v4(addr: [u8; 4]) -> PeerKey {
        PeerKey {
            family: AF_INET,
            addr: [
                addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        }
    }
    pub const fn v6(addr: [u8; 16]) -> PeerKey {
        PeerKey {
            family: AF_INET6,
            addr,
        }
    }
}

/// `IFACES` value, keyed by ifindex: per tenant-side interface settings.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Tenant of untagged frames on this interface (`NO_TENANT`: untagged traffic is not ours).
    pub default_tenant: u32,
    /// This interface's first entry in `TENANT_XSKS`: its rx queue `q` redirects to
    /// `xsk_base + q` (an AF_XDP socket only receives from the ifindex/queue it is bound to).
    pub xsk_base: u32,
}

/// `POLICY_V4` key data. The LPM trie matches `prefix_len` bits over tenant then address, so a
/// prefix `10.0.0.0/8` of tenant 7 is `Key { prefix_len: 32 + 8, data: { 7, 10.0.0.0 } }`:
/// overlapping CIDRs of different tenants never meet.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyKeyV4 {
    /// Tenant id, big-endian (the trie compares bytes from the first one).
    pub tenant_be: [u8; 4],
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyKeyV6 {
    pub tenant_be: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix length of a trie key for an address prefix of `plen` bits.
pub const fn policy_prefix_len(plen: u32) -> u32 {
    32 + plen
}

/// SPD actions (RFC 4301 4.4.1): protect through an SA, bypass, or discard.
pub const POLICY_PROTECT: u32 = 0;
pub const POLICY_BYPASS: u32 = 1;
pub const POLICY_DISCARD: u32 = 2;
/// Protect, but the SA is in the kernel (the "kernel" backend): the frame goes to the stack
/// untouched (VLAN tag and all), where the kernel's VLAN device / routing takes it and xfrm
/// encrypts it (`pass_kernel_policy`). `sa_slot` is informational.
pub const POLICY_KERNEL: u32 = 3;

/// Value of `POLICY_V4` / `POLICY_V6`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// Outbound SA slot (index into `SA_STATS`, and the worker's SA table).
    pub sa_slot: u32,
    pub action: u32,
}

/// `TenantEncap.kind`.
pub const ENCAP_UNTAGGED: u32 = 0;
pub const ENCAP_VLAN: u32 = 1;
pub const ENCAP_VXLAN: u32 = 2;

/// `TENANT_ENCAP` value, keyed by tenant id: how decrypted traffic goes back to the tenant.
/// The same source of truth as `TENANT_BY_VLAN` / `TENANT_BY_VNI`, read in reverse.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantEncap {
    pub kind: u32,
    /// Tenant-side interface to transmit on.
    pub ifindex: u32,
    pub vlan_id: u16,
    pub _pad0: u16,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// `AF_INET` or `AF_INET6` of the VTEP (VXLAN only).
    pub vtep_family: u32,
    /// Remote VTEP address (IPv4 in the first 4 bytes).
    pub vtep_addr: [u8; 16],
    /// Remote VTEP MAC (next hop), resolved by user space.
    pub vtep_mac: [u8; 6],
    pub _pad1: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TenantEncap>() == 44);

/// `VXLAN_VTEPS` value, keyed by VNI (24 bits, host byte order): the underlay addresses a
/// tenant's VXLAN frames must carry. `tenant_ingress` takes a VXLAN frame's tenant from its
/// VNI (`TENANT_BY_VNI`) only when the outer source is `remote` and the outer destination
/// `local` (same family); anyone else could otherwise inject into that tenant's tunnels by
/// writing its VNI. A VNI in `TENANT_BY_VNI` without an entry here is dropped
/// (`vxlan_no_vtep`): write this map first.
///
/// A map of its own rather than a wider `TENANT_BY_VNI` value, so that pins of an older
/// release are adopted as they are (the new map is created beside them).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VtepPair {
    /// `AF_INET` or `AF_INET6`, of both addresses.
    pub family: u32,
    /// Our VTEP: the outer destination of the tenant's frames (IPv4 in the first 4 bytes,
    /// the rest zero).
    pub local: [u8; 16],
    /// The tenant's VTEP: their outer source.
    pub remote: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<VtepPair>() == 36);

impl VtepPair {
    pub const fn v4(local: [u8; 4], remote: [u8; 4]) -> VtepPair {
        let mut p = VtepPair {
            family: AF_INET,
            local: [0; 16],
            remote: [0; 16],
        };
        let mut i = 0;
        while i < 4 {
            p.local[i] = local[i];
            p.remote[i] = remote[i];
            i += 1;
        }
        p
    }

    pub const fn v6(local: [u8; 16], remote: [u8; 16]) -> VtepPair {
        VtepPair {
            family: AF_INET6,
            local,
            remote,
        }
    }
}

pod!(
    SaIn,
    SaStats,
    WireConfig,
    PeerKey,
    IfaceConfig,
    PolicyKeyV4,
    PolicyKeyV6,
    PolicyValue,
    TenantEncap,
    VtepPair
);
