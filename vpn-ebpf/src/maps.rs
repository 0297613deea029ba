//! The maps. Sizes are defaults; the loader may change `max_entries` before loading.
//! All are pinned by name under the instance's bpffs directory.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, XskMap},
};
use vpn_common::{
    ReplayWindow,
    counters::COUNTER_SLOTS,
    maps::{
        DEFAULT_SA_IN_ENTRIES, DEFAULT_SA_SLOTS, IfaceConfig, MAX_IFACES, MAX_PEERS, MAX_POLICIES,
        MAX_QUEUES, MAX_TENANTS, PeerKey, PolicyKeyV4, PolicyKeyV6, PolicyValue, SaIn, SaStats,
        SpiKey, TENANT_XSK_ENTRIES, TenantEncap, VtepPair, WireConfig,
    },
};

// ---- wire side ----
#[map]
pub static SA_IN: HashMap<SpiKey, SaIn> = HashMap::pinned(DEFAULT_SA_IN_ENTRIES, 0);

/// Shared with the worker through mmap: the kernel reads, the worker writes.
#[map]
pub static REPLAY: Array<ReplayWindow> = Array::pinned(DEFAULT_SA_SLOTS, BPF_F_MMAPABLE);

#[map]
pub static SA_STATS: PerCpuArray<SaStats> = PerCpuArray::pinned(DEFAULT_SA_SLOTS, 0);

#[map]
pub static WIRE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map]
pub static WIRE_CONFIG: Array<WireConfig> = Array::pinned(1, 0);

#[map]
pub static PEERS: HashMap<PeerKey, u32> = HashMap::pinned(MAX_PEERS, 0);

/// Wire-side AF_XDP sockets, by rx queue.
#[map]
pub static XSKS: XskMap = XskMap::pinned(MAX_QUEUES, 0);

// ---- tenant side ----
#[map]
pub static TENANT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Tenant-side AF_XDP sockets, by `IfaceConfig.xsk_base + rx queue`.
#[map]
pub static TENANT_XSKS: XskMap = XskMap::pinned(TENANT_XSK_ENTRIES, 0);

/// 802.1Q VLAN id (12 bits) -> tenant.
#[map]
pub static TENANT_BY_VLAN: HashMap<u32, u32> = HashMap::pinned(MAX_TENANTS, 0);

/// VXLAN VNI (24 bits) -> tenant.
#[map]
pub static TENANT_BY_VNI: HashMap<u32, u32> = HashMap::pinned(MAX_TENANTS, 0);

/// VXLAN VNI -> the underlay addresses (our VTEP, the tenant's) its frames must carry.
#[map]
pub static VXLAN_VTEPS: HashMap<u32, VtepPair> = HashMap::pinned(MAX_TENANTS, 0);

/// ifindex -> settings of a tenant-side interface.
#[map]
pub static IFACES: HashMap<u32, IfaceConfig> = HashMap::pinned(MAX_IFACES, 0);

#[map]
pub static POLICY_V4: LpmTrie<PolicyKeyV4, PolicyValue> = LpmTrie::pinned(MAX_POLICIES, 0);

#[map]
pub static POLICY_V6: LpmTrie<PolicyKeyV6, PolicyValue> = LpmTrie::pinned(MAX_POLICIES, 0);

/// tenant -> how to re-tag decrypted traffic (read by the worker; kept here so it is pinned
/// with the maps it mirrors).
#[map]
pub static TENANT_ENCAP: HashMap<u32, TenantEncap> = HashMap::pinned(MAX_TENANTS, 0);

#[inline(always)]
pub fn count(stats: &PerCpuArray<u64>, idx: u32) {
    if let Some(c) = stats.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_sa(slot: u32, bytes: u64) {
    if let Some(s) = SA_STATS.get_ptr_mut(slot) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
}
