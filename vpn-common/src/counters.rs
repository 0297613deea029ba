//! Numbered outcomes and drop reasons. The numbers are stable: they index the per-CPU counter
//! arrays (`WIRE_STATS`, `TENANT_STATS`) and are what operators see in `vpnctl stats`.
//! Never renumber; only append.

/// Entries in each per-CPU counter array: outcomes at `0..DROP_BASE`, drops above.
pub const COUNTER_SLOTS: u32 = 128;
/// Index of `DropReason` 0 in a counter array.
pub const DROP_BASE: u32 = 64;

/// What happened to a packet that was not dropped.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Raw ESP (IP protocol 50) passed the SA and replay pre-checks and went to AF_XDP.
    WireRedirectEsp = 0,
    /// ESP in UDP/4500 (RFC 3948) passed the pre-checks and went to AF_XDP.
    WireRedirectEspUdp = 1,
    /// An outer IP fragment carrying ESP (or UDP from a known peer) went to AF_XDP for reassembly.
    WireRedirectFragment = 2,
    /// IKE: UDP/500, or UDP/4500 with the non-ESP marker. Left to the kernel stack for `vpnd`.
    WirePassIke = 3,
    /// Not ESP, not IKE: left untouched to the stack.
    WirePassNotEsp = 4,
    /// ESP with an SPI we do not own, passed because the coexistence setting asks for it.
    WirePassUnknownSpi = 5,
    /// IPv6 extension-header chain longer than the fast path walks: left to the stack.
    WirePassUnparsed = 6,
    /// ESP of a kernel-backend SA (`SA_F_KERNEL`) passed the SPI/length pre-checks and went to
    /// the stack's xfrm.
    WirePassKernel = 7,
    /// An outer fragment from a peer that has only kernel-backend SAs (`PEER_F_KERNEL` without
    /// `PEER_F_AFXDP`), left to the stack to reassemble.
    WirePassKernelFragment = 8,
    /// An event beside the packet's outcome (counted in addition to it): the carrier is the
    /// metadata area, but the wire device refused `bpf_xdp_adjust_meta` at run time, so this
    /// frame carried the metadata as an in-packet shim instead (the worker reads either).
    WireMetaRefusedShim = 9,

    /// Tenant traffic matched an outbound policy and went to AF_XDP.
    TenantRedirect = 16,
    /// No tenant for this VLAN id / VNI / interface: not ours.
    TenantPassNoTenant = 17,
    /// Tenant known, destination matches no policy: passed untouched.
    TenantPassNoPolicy = 18,
    /// Not IPv4/IPv6 inside (ARP, LLDP, ...): passed untouched.
    TenantPassNotIp = 19,
    /// A policy with action BYPASS matched: passed untouched.
    TenantPassBypass = 20,
    /// ARP on a VLAN/VXLAN tenant network, sent to the worker (which answers for the gateway).
    TenantRedirectArp = 21,
    /// Tenant traffic matched a policy whose SA is in the kernel (action KERNEL): passed to
    /// the stack, where xfrm encrypts it.
    TenantPassKernel = 22,
    /// As `WireMetaRefusedShim`, on a tenant-side device.
    TenantMetaRefusedShim = 23,
}

impl Outcome {
    pub const ALL: [Outcome; 18] = [
        Outcome::WireRedirectEsp,
        Outcome::WireRedirectEspUdp,
        Outcome::WireRedirectFragment,
        Outcome::WirePassIke,
        Outcome::WirePassNotEsp,
        Outcome::WirePassUnknownSpi,
        Outcome::WirePassUnparsed,
        Outcome::WirePassKernel,
        Outcome::WirePassKernelFragment,
        Outcome::WireMetaRefusedShim,
        Outcome::TenantRedirect,
        Outcome::TenantPassNoTenant,
        Outcome::TenantPassNoPolicy,
        Outcome::TenantPassNotIp,
        Outcome::TenantPassBypass,
        Outcome::TenantRedirectArp,
        Outcome::TenantPassKernel,
        Outcome::TenantMetaRefusedShim,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::WireRedirectEsp => "redirect_esp",
            Outcome::WireRedirectEspUdp => "redirect_esp_udp",
            Outcome::WireRedirectFragment => "redirect_fragment",
            Outcome::WirePassIke => "pass_ike",
            Outcome::WirePassNotEsp => "pass_not_esp",
            Outcome::WirePassUnknownSpi => "pass_unknown_spi",
            Outcome::WirePassUnparsed => "pass_unparsed",
            Outcome::WirePassKernel => "pass_kernel",
            Outcome::WirePassKernelFragment => "pass_kernel_fragment",
            Outcome::WireMetaRefusedShim => "meta_refused_shim",
            Outcome::TenantRedirect => "redirect_outbound",
            Outcome::TenantPassNoTenant => "pass_no_tenant",
            Outcome::TenantPassNoPolicy => "pass_no_policy",
            Outcome::TenantPassNotIp => "pass_not_ip",
            Outcome::TenantPassBypass => "pass_bypass",
            Outcome::TenantRedirectArp => "redirect_arp",
            Outcome::TenantPassKernel => "pass_kernel_policy",
            Outcome::TenantMetaRefusedShim => "tenant_meta_refused_shim",
        }
    }

    pub const fn counter(self) -> u32 {
        self as u32
    }
}

/// Why a packet was dropped. Numbered and stable (like cilium's drop reasons).
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    TruncatedEthernet = 1,
    TruncatedVlan = 2,
    TruncatedIpv4 = 3,
    /// Version not 4, IHL < 5, or total length shorter than the header.
    BadIpv4Header = 4,
    TruncatedIpv6 = 5,
    BadIpv6Header = 6,
    TruncatedUdp = 7,
    /// Too short to hold the ESP header (SPI + sequence number).
    TruncatedEsp = 8,
    /// RFC 3948 NAT-keepalive (a single 0xFF byte on UDP/4500): consumed here.
    NatKeepalive = 9,
    UnknownSpi = 10,
    /// Sequence number left of the replay window (RFC 4303 3.4.3).
    ReplayTooOld = 11,
    /// Sequence number already seen inside the window.
    ReplayDuplicate = 12,
    /// Sequence number 0 is never sent (RFC 4303 3.3.3).
    ReplaySeqZero = 13,
    /// Shorter than ESP header + IV + ICV + trailer for this SA.
    EspRunt = 14,
    /// No AF_XDP socket bound on this rx queue.
    NoXskSocket = 15,
    /// Neither carrier could put the metadata in front of the frame: `bpf_xdp_adjust_meta` and
    /// then `bpf_xdp_adjust_head` refused (no headroom).
    MetadataFailed = 16,
    /// The SA names a slot with no replay state (map contract broken).
    SaStateMissing = 17,
    TruncatedVxlan = 18,
    /// VXLAN header without the I flag (RFC 7348 5).
    BadVxlan = 19,
    /// `bpf_xdp_adjust_head` refused while popping a tag.
    HeadAdjustFailed = 20,
    /// An outbound policy with action DISCARD matched.
    PolicyDiscard = 21,
    /// VXLAN whose outer source is not the remote VTEP of its VNI (`VXLAN_VTEPS`): a spoofed
    /// frame that would inject into that VNI's tenant.
    VxlanSourceNotVtep = 22,
    /// VXLAN whose outer destination is not our (local) VTEP of its VNI.
    VxlanDestNotVtep = 23,
    /// A VNI with a tenant (`TENANT_BY_VNI`) but no VTEP pair (`VXLAN_VTEPS`): map contract
    /// broken; the frame cannot be authenticated by its underlay addresses.
    VxlanNoVtep = 24,
    /// Tenant IPv6 whose extension-header chain the fast path does not walk (longer than it
    /// walks, or running past the packet), toward a destination with a PROTECT policy: it
    /// must not leave in clear, and is not handed to the worker unclassified.
    Ipv6UnparsedProtected = 25,

    // ---- counted by the AF_XDP workers (user space), same numbering ----
    /// ICV verification failed (RFC 4303 3.4.4): forged, corrupted or wrong key.
    BadIcv = 32,
    /// Pad length larger than the payload, or padding bytes not 1, 2, 3, ... (RFC 4303 2.4).
    BadPadding = 33,
    /// Next header neither IPv4 (4) nor IPv6 (41) in tunnel mode.
    BadNextHeader = 34,
    /// Decrypted packet outside the SA's traffic selectors (RFC 4301 5.2).
    PolicyMismatch = 35,
    /// Outbound sequence number exhausted without ESN: the SA must be rekeyed (RFC 4303 3.3.3).
    SeqExhausted = 36,
    /// TFC dummy packet (next header 59, RFC 4303 2.6): consumed.
    DummyPacket = 37,
    /// The decrypted inner IP header is truncated or inconsistent.
    BadInnerPacket = 38,
    /// Encapsulated packet would not fit the frame buffer.
    NoRoom = 39,
    /// No SA state in the worker for the slot the XDP program named.
    WorkerNoSa = 40,
    /// A fragment that does not parse, or conflicts with its datagram's other fragments.
    FragmentMalformed = 41,
    /// Overlapping fragments (RFC 5722): the whole datagram is discarded.
    FragmentOverlap = 42,
    /// Reassembly limits: too many fragments, too large, table or memory full.
    FragmentLimit = 43,
    /// A datagram not completed in time.
    FragmentTimeout = 44,
    /// An exact duplicate fragment.
    FragmentDuplicate = 45,
    /// A reassembled datagram that is neither ESP nor IKE for us (or IKE the IKE shell's
    /// queue had no room for).
    FragmentNotEsp = 46,
    /// Outbound, manually keyed SA: the next sequence number lies beyond the block reserved
    /// durably in its state file (vpnd's state keeper is late, or cannot write the file).
    /// The packet is dropped; a number is never sent before it is on disk, so none repeats
    /// after a crash.
    SeqNotReserved = 47,
    /// Inbound, manually keyed SA: an authenticated packet above the replay mark reserved
    /// durably in its state file. Dropped until the mark is extended, so that no packet
    /// accepted now can be accepted again after a restart.
    InboundNotReserved = 48,
    /// A manually keyed SA whose state file could not be trusted (unreadable, corrupt, wrong
    /// permissions): it neither sends nor accepts until the file is fixed or the key replaced.
    SaStateRefused = 49,
    /// Outbound tenant packet whose source is outside the local traffic selectors of the SA
    /// its destination chose (RFC 4301 5.1: the SPD entry must match both addresses).
    SourceNotInSelectors = 50,
}

impl DropReason {
    pub const ALL: [DropReason; 44] = [
        DropReason::TruncatedEthernet,
        DropReason::TruncatedVlan,
        DropReason::TruncatedIpv4,
        DropReason::BadIpv4Header,
        DropReason::TruncatedIpv6,
        DropReason::BadIpv6Header,
        DropReason::TruncatedUdp,
        DropReason::TruncatedEsp,
        DropReason::NatKeepalive,
        DropReason::UnknownSpi,
        DropReason::ReplayTooOld,
        DropReason::ReplayDuplicate,
        DropReason::ReplaySeqZero,
        DropReason::EspRunt,
        DropReason::NoXskSocket,
        DropReason::MetadataFailed,
        DropReason::SaStateMissing,
        DropReason::TruncatedVxlan,
        DropReason::BadVxlan,
        DropReason::HeadAdjustFailed,
        DropReason::PolicyDiscard,
        DropReason::VxlanSourceNotVtep,
        DropReason::VxlanDestNotVtep,
        DropReason::VxlanNoVtep,
        DropReason::Ipv6UnparsedProtected,
        DropReason::BadIcv,
        DropReason::BadPadding,
        DropReason::BadNextHeader,
        DropReason::PolicyMismatch,
        DropReason::SeqExhausted,
        DropReason::DummyPacket,
        DropReason::BadInnerPacket,
        DropReason::NoRoom,
        DropReason::WorkerNoSa,
        DropReason::FragmentMalformed,
        DropReason::FragmentOverlap,
        DropReason::FragmentLimit,
        DropReason::FragmentTimeout,
        DropReason::FragmentDuplicate,
        DropReason::FragmentNotEsp,
        DropReason::SeqNotReserved,
        DropReason::InboundNotReserved,
        DropReason::SaStateRefused,
        DropReason::SourceNotInSelectors,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::TruncatedEthernet => "truncated_ethernet",
            DropReason::TruncatedVlan => "truncated_vlan",
            DropReason::TruncatedIpv4 => "truncated_ipv4",
            DropReason::BadIpv4Header => "bad_ipv4_header",
            DropReason::TruncatedIpv6 => "truncated_ipv6",
            DropReason::BadIpv6Header => "bad_ipv6_header",
            DropReason::TruncatedUdp => "truncated_udp",
            DropReason::TruncatedEsp => "truncated_esp",
            DropReason::NatKeepalive => "nat_keepalive",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::ReplayTooOld => "replay_too_old",
            DropReason::ReplayDuplicate => "replay_duplicate",
            DropReason::ReplaySeqZero => "replay_seq_zero",
            DropReason::EspRunt => "esp_runt",
            DropReason::NoXskSocket => "no_xsk_socket",
            DropReason::MetadataFailed => "metadata_failed",
            DropReason::SaStateMissing => "sa_state_missing",
            DropReason::TruncatedVxlan => "truncated_vxlan",
            DropReason::BadVxlan => "bad_vxlan",
            DropReason::HeadAdjustFailed => "head_adjust_failed",
            DropReason::PolicyDiscard => "policy_discard",
            DropReason::VxlanSourceNotVtep => "vxlan_source_not_vtep",
            DropReason::VxlanDestNotVtep => "vxlan_dest_not_vtep",
            DropReason::VxlanNoVtep => "vxlan_no_vtep",
            DropReason::Ipv6UnparsedProtected => "ipv6_unparsed_protected",
            DropReason::BadIcv => "bad_icv",
            DropReason::BadPadding => "bad_padding",
            DropReason::BadNextHeader => "bad_next_header",
            DropReason::PolicyMismatch => "policy_mismatch",
            DropReason::SeqExhausted => "seq_exhausted",
            DropReason::DummyPacket => "dummy_packet",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::NoRoom => "no_room",
            DropReason::WorkerNoSa => "worker_no_sa",
            DropReason::FragmentMalformed => "fragment_malformed",
            DropReason::FragmentOverlap => "fragment_overlap",
            DropReason::FragmentLimit => "fragment_limit",
            DropReason::FragmentTimeout => "fragment_timeout",
            DropReason::FragmentDuplicate => "fragment_duplicate",
            DropReason::FragmentNotEsp => "fragment_not_esp",
            DropReason::SeqNotReserved => "seq_not_reserved",
            DropReason::InboundNotReserved => "inbound_not_reserved",
            DropReason::SaStateRefused => "sa_state_refused",
            DropReason::SourceNotInSelectors => "source_not_in_selectors",
        }
    }

    pub const fn counter(self) -> u32 {
        DROP_BASE + self as u32
    }
}

/// Any slot of a counter array, decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    Outcome(Outcome),
    Drop(DropReason),
}

impl Counter {
    pub const fn index(self) -> u32 {
        match self {
            Counter::Outcome(o) => o.counter(),
            Counter::Drop(d) => d.counter(),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Outcome(o) => o.name(),
            Counter::Drop(d) => d.name(),
        }
    }

    /// Every named counter, outcomes first.
    pub fn all() -> impl Iterator<Item = Counter> {
        Outcome::ALL
            .into_iter()
            .map(Counter::Outcome)
            .chain(DropReason::ALL.into_iter().map(Counter::Drop))
    }

    pub fn from_index(index: u32) -> Option<Counter> {
        Counter::all().find(|c| c.index() == index)
    }
}

const _: () = {
    // Every index fits the array, drops above outcomes.
    let mut i = 0;
    while i < Outcome::ALL.len() {
        assert!(Outcome::ALL[i].counter() < DROP_BASE);
        i += 1;
    }
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!(DropReason::ALL[i].counter() < COUNTER_SLOTS);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_unique_and_names_too() {
        let all: [Counter; 62] = {
            let mut a = [Counter::Outcome(Outcome::WirePassIke); 62];
            for (slot, c) in a.iter_mut().zip(Counter::all()) {
                *slot = c;
            }
            a
        };
        assert_eq!(Counter::all().count(), 62);
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.index(), b.index());
                assert_ne!(a.name(), b.name());
            }
            assert_eq!(Counter::from_index(a.index()), Some(*a));
        }
    }

    #[test]
    fn drop_numbers_are_stable() {
        // The numbers are an operator-visible contract.
        assert_eq!(DropReason::UnknownSpi as u32, 10);
        assert_eq!(DropReason::ReplayDuplicate as u32, 12);
        assert_eq!(DropReason::PolicyDiscard as u32, 21);
        assert_eq!(DropReason::UnknownSpi.counter(), 74);
        assert_eq!(DropReason::VxlanSourceNotVtep as u32, 22);
        assert_eq!(DropReason::VxlanDestNotVtep as u32, 23);
        assert_eq!(DropReason::VxlanNoVtep as u32, 24);
        assert_eq!(DropReason::Ipv6UnparsedProtected as u32, 25);
        assert_eq!(DropReason::SourceNotInSelectors as u32, 50);
        assert_eq!(DropReason::FragmentNotEsp as u32, 46);
        assert_eq!(DropReason::SeqNotReserved as u32, 47);
        assert_eq!(DropReason::InboundNotReserved as u32, 48);
        assert_eq!(DropReason::SaStateRefused as u32, 49);
    }

    #[test]
    fn outcome_numbers_are_stable() {
        assert_eq!(Outcome::WirePassUnparsed as u32, 6);
        assert_eq!(Outcome::WirePassKernel as u32, 7);
        assert_eq!(Outcome::WirePassKernelFragment as u32, 8);
        assert_eq!(Outcome::TenantRedirectArp as u32, 21);
        assert_eq!(Outcome::TenantPassKernel as u32, 22);
        assert_eq!(Outcome::WireMetaRefusedShim as u32, 9);
        assert_eq!(Outcome::TenantMetaRefusedShim as u32, 23);
    }
}
