//! The workers' SA tables, updatable while the workers run.
//!
//! Each table is a `HashMap` by SA slot behind an `ArcSwap`: a worker loads it once per
//! batch (one atomic load, no lock) and uses that snapshot for the whole batch; the control
//! plane replaces it copy-on-write (`ArcSwap::rcu`) when an SA is installed or removed, which
//! is rare. Entries are `Arc`s, so a copy only clones pointers, and an SA removed while a
//! batch still uses it lives until that batch's snapshot is dropped.

use std::{collections::HashMap, sync::Arc};

use arc_swap::{ArcSwap, Guard};

use super::worker::{InboundState, OutboundState};

/// Inbound SAs by replay/stat slot (the slot the XDP program puts in the metadata), with an
/// index by SPI for what the XDP program could not look up (reassembled fragments). Reads
/// as the map by slot.
#[derive(Clone, Default)]
pub struct InboundTable {
    by_slot: HashMap<u32, Arc<InboundState>>,
    by_spi: HashMap<u32, u32>,
}

impl std::ops::Deref for InboundTable {
    type Target = HashMap<u32, Arc<InboundState>>;
    fn deref(&self) -> &Self::Target {
        &self.by_slot
    }
}

impl InboundTable {
    /// The slot of the inbound SA with `spi`, in one hash lookup.
    pub fn slot_of_spi(&self, spi: u32) -> Option<u32> {
        self.by_spi.get(&spi).copied()
    }

    fn insert(&mut self, st: Arc<InboundState>) {
        if let Some(old) = self.by_slot.insert(st.slot, st.clone()) {
            self.by_spi.remove(&old.sa.spi);
        }
        self.by_spi.insert(st.sa.spi, st.slot);
    }

    fn remove(&mut self, slot: u32) {
        if let Some(old) = self.by_slot.remove(&slot)
            && self.by_spi.get(&old.sa.spi) == Some(&slot)
        {
            self.by_spi.remove(&old.sa.spi);
        }
    }
}
/// Outbound SAs by policy slot.
pub type OutboundTable = HashMap<u32, Arc<OutboundState>>;

/// A handle on one node's SA tables, shared by all its workers; clone it freely.
#[derive(Clone, Default)]
pub struct SaTables {
    inbound: Arc<ArcSwap<InboundTable>>,
    outbound: Arc<ArcSwap<OutboundTable>>,
}

impl SaTables {
    pub fn new() -> SaTables {
        SaTables::default()
    }

    /// Installs (or replaces) the inbound SA at `st.slot`. Returns the shared entry.
    pub fn insert_inbound(&self, st: impl Into<Arc<InboundState>>) -> Arc<InboundState> {
        let st: Arc<InboundState> = st.into();
        self.inbound.rcu(|m| {
            let mut m = InboundTable::clone(m);
            m.insert(st.clone());
            m
        });
        st
    }

    /// Removes the inbound SA at `slot`; false if there was none.
    pub fn remove_inbound(&self, slot: u32) -> bool {
        if !self.inbound.load().contains_key(&slot) {
            return false;
        }
        let prev = self.inbound.rcu(|m| {
            let mut m = InboundTable::clone(m);
            m.remove(slot);
            m
        });
        prev.contains_key(&slot)
    }

    /// Installs (or replaces) the outbound SA at `slot`. Returns the shared entry.
    pub fn insert_outbound(
        &self,
        slot: u32,
        st: impl Into<Arc<OutboundState>>,
    ) -> Arc<OutboundState> {
        let st: Arc<OutboundState> = st.into();
        self.outbound.rcu(|m| {
            let mut m = OutboundTable::clone(m);
            m.insert(slot, st.clone());
            m
        });
        st
    }

    /// Removes the outbound SA at `slot`; false if there was none.
    pub fn remove_outbound(&self, slot: u32) -> bool {
        if !self.outbound.load().contains_key(&slot) {
            return false;
        }
        let prev = self.outbound.rcu(|m| {
            let mut m = OutboundTable::clone(m);
            m.remove(&slot);
            m
        });
        prev.contains_key(&slot)
    }

    /// Slots with an inbound SA, sorted.
    pub fn inbound_slots(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.inbound.load().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Slots with an outbound SA, sorted.
    pub fn outbound_slots(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.outbound.load().keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn inbound(&self, slot: u32) -> Option<Arc<InboundState>> {
        self.inbound.load().get(&slot).cloned()
    }

    pub fn outbound(&self, slot: u32) -> Option<Arc<OutboundState>> {
        self.outbound.load().get(&slot).cloned()
    }

    /// The inbound table as of now, for one batch.
    #[inline]
    pub fn load_inbound(&self) -> Guard<Arc<InboundTable>> {
        self.inbound.load()
    }

    /// The outbound table as of now, for one batch.
    #[inline]
    pub fn load_outbound(&self) -> Guard<Arc<OutboundTable>> {
        self.outbound.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::worker::NextHop,
        esp::{Cipher, InboundSa, OutboundSa, Outer, SaKey},
    };

    fn key() -> SaKey {
        SaKey::from_keymat(Cipher::Aes128Gcm16, &[7u8; 20]).unwrap()
    }

    fn inbound(slot: u32, spi: u32) -> InboundState {
        InboundState {
            sa: InboundSa::new(spi, &key(), false),
            slot,
            tenant: 1,
            selectors: Vec::new(),
        }
    }

    fn outbound(spi: u32) -> OutboundState {
        OutboundState {
            sa: Arc::new(OutboundSa::new(
                spi,
                &key(),
                false,
                Outer {
                    src: "192.0.2.1".parse().unwrap(),
                    dst: "192.0.2.2".parse().unwrap(),
                    udp: None,
                    ttl: 64,
                },
            )),
            dst_mac: NextHop::new([2, 0, 0, 0, 0, 1]),
            src_mac: [2, 0, 0, 0, 0, 2],
            mtu: None,
            selectors: Vec::new(),
        }
    }

    #[test]
    fn insert_remove_and_snapshots() {
        let t = SaTables::new();
        let other = t.clone();
        assert!(t.inbound_slots().is_empty());
        t.insert_inbound(inbound(3, 0x1000));
        t.insert_inbound(inbound(1, 0x1001));
        assert_eq!(other.inbound_slots(), vec![1, 3], "clones share the tables");
        // A batch's snapshot is stable while the control plane changes the table.
        let snap = other.load_inbound();
        assert!(t.remove_inbound(3));
        assert!(!t.remove_inbound(3), "already gone");
        assert!(!t.remove_inbound(42));
        assert_eq!(snap.get(&3).map(|s| s.sa.spi), Some(0x1000));
        drop(snap);
        assert_eq!(other.inbound_slots(), vec![1]);
        assert!(other.load_inbound().get(&3).is_none());

        t.insert_outbound(10, outbound(0x2000));
        let replaced = t.insert_outbound(10, outbound(0x2001));
        assert_eq!(replaced.sa.spi, 0x2001);
        assert_eq!(t.outbound(10).map(|s| s.sa.spi), Some(0x2001));
        assert_eq!(t.outbound_slots(), vec![10]);
        assert!(t.remove_outbound(10));
        assert!(!t.remove_outbound(10));
        assert!(t.outbound_slots().is_empty());
    }

    /// Readers loading per "batch" while writers insert and remove: every snapshot is a whole
    /// table, and nothing blocks.
    /// Reassembled fragments find their SA by SPI in one lookup; a replaced or removed SA
    /// leaves no stale SPI behind.
    #[test]
    fn spi_index_follows_inserts_and_removals() {
        let t = SaTables::new();
        t.insert_inbound(inbound(1, 0x100));
        t.insert_inbound(inbound(2, 0x200));
        assert_eq!(t.load_inbound().slot_of_spi(0x200), Some(2));
        // Slot 1 rekeyed in place to a new SPI.
        t.insert_inbound(inbound(1, 0x101));
        let snap = t.load_inbound();
        assert_eq!(snap.slot_of_spi(0x100), None);
        assert_eq!(snap.slot_of_spi(0x101), Some(1));
        assert!(t.remove_inbound(2));
        assert_eq!(t.load_inbound().slot_of_spi(0x200), None);
        assert_eq!(t.load_inbound().len(), 1);
    }

    #[test]
    fn concurrent_readers_and_writers() {
        let t = SaTables::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::scope(|sc| {
            for _ in 0..2 {
                let (t, stop) = (t.clone(), stop.clone());
                sc.spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let m = t.load_inbound();
                        for (slot, st) in m.iter() {
                            assert_eq!(*slot, st.slot);
                            seen += 1;
                        }
                    }
                    seen
                });
            }
            for round in 0..200u32 {
                let slot = 1 + round % 16;
                t.insert_inbound(inbound(slot, 0x1000 + round));
                if round >= 8 {
                    t.remove_inbound(1 + (round - 8) % 16);
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(t.inbound_slots().len(), 8);
    }
}
