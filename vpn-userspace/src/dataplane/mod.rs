//! The kernel side of the data plane from user space: loading and attaching the XDP programs,
//! writing the maps, reading the counters, and the AF_XDP sockets.

mod carrier;
pub mod installer;
mod loader;
pub mod macs;
pub mod neigh;
mod replay;
pub mod sa_tables;
pub mod worker;
pub mod xsk;

pub use carrier::{Carrier, CarrierChoice, Chosen, choose as choose_carrier};
pub use installer::{
    ChildSaSpec, ChildStats, InstalledChild, Installer, KernelSlots, SaMaps, SlotAllocator,
};
pub use loader::{
    Dataplane, LoadOptions, Side, ensure_bpffs, pin_directory, remove_pins, rx_queue_count,
};
pub use replay::ReplayTable;
pub use sa_tables::SaTables;

/// The XDP programs, built by `build.rs` from the `vpn-ebpf` crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn"));

/// Runs every step of a teardown and keeps the first error (the rest are still attempted).
#[derive(Default)]
pub(crate) struct FirstError(Option<anyhow::Error>);

impl FirstError {
    pub(crate) fn note(&mut self, r: anyhow::Result<()>) {
        if let Err(e) = r
            && self.0.is_none()
        {
            self.0 = Some(e);
        }
    }

    pub(crate) fn result(self) -> anyhow::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
