//! The contract between the XDP programs (`vpn-ebpf`) and user space (`vpnd`, `vpnctl`).
//!
//! Everything here is `#![no_std]`: the same types and the same replay-window algorithm are
//! compiled into the eBPF object and into the host binaries, so the two sides cannot drift.
//! Map keys and values are `#[repr(C)]` with explicit padding and size asserts; with the `user`
//! feature they implement `aya::Pod`.
#![no_std]

pub mod counters;
pub mod maps;
pub mod meta;
pub mod pktgen;
pub mod replay;

pub use counters::{Counter, DropReason, Outcome};
pub use meta::XdpMeta;
pub use replay::{ReplayError, ReplayWindow};

/// Implements `aya::Pod` for plain-old-data map types when building for user space.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `#[repr(C)]`, only integer fields, explicit padding, no invalid bit patterns.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;
