//! The kernel side of the data plane from user space: loading and attaching the XDP programs,
//! writing the maps, reading the counters, and the AF_XDP sockets.

pub mod installer;
mod loader;
pub mod neigh;
mod replay;
pub mod sa_tables;
pub mod worker;
pub mod xsk;

pub use installer::{
    ChildSaSpec, ChildStats, InstalledChild, Installer, KernelSlots, SaMaps, SlotAllocator,
};
pub use loader::{Dataplane, LoadOptions, Side, remove_pins, rx_queue_count};
pub use replay::ReplayTable;
pub use sa_tables::SaTables;

/// The XDP programs, built by `build.rs` from the `vpn-ebpf` crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn"));
