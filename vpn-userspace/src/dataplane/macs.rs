//! Tenant hosts' MACs, learned by the workers from tenant traffic and ARP: the destination
//! MAC of decrypted packets on their way back. One table per tenant, each bounded and aged,
//! so one tenant's hosts (or a VM spoofing thousands of addresses) cannot push out or block
//! another tenant's. Read as a snapshot once per batch without a lock; written once per batch
//! (`Pending` -> `commit`: a copy of the tenants that changed), never per packet.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MacLimits {
    /// Hosts remembered per tenant; new hosts beyond it wait until old ones age out.
    pub per_tenant: usize,
    /// An entry not seen for this long is forgotten (the Linux bridge's default ageing time).
    pub age_secs: u64,
}

impl Default for MacLimits {
    fn default() -> MacLimits {
        MacLimits {
            per_tenant: 1024,
            age_secs: 300,
        }
    }
}

#[derive(Copy, Clone, Debug)]
struct Learned {
    mac: [u8; 6],
    /// When last learned or refreshed (seconds of the workers' clock).
    seen: u64,
}

type Hosts = HashMap<IpAddr, Learned>;
type ByTenant = HashMap<u32, Arc<Hosts>>;

/// The node's table, shared by its workers.
#[derive(Clone, Default)]
pub struct MacTable {
    tenants: Arc<ArcSwap<ByTenant>>,
    limits: MacLimits,
}

/// One batch's view of the table, at one time.
pub struct MacSnapshot {
    tenants: Arc<ByTenant>,
    now: u64,
    age_secs: u64,
}

impl MacSnapshot {
    /// The MAC of `addr` in `tenant`, unless never learned or aged out.
    pub fn get(&self, tenant: u32, addr: &IpAddr) -> Option<[u8; 6]> {
        self.entry(tenant, addr)
            .filter(|l| self.now.saturating_sub(l.seen) <= self.age_secs)
            .map(|l| l.mac)
    }

    fn entry(&self, tenant: u32, addr: &IpAddr) -> Option<&Learned> {
        self.tenants.get(&tenant)?.get(addr)
    }
}

/// What a worker learned during one batch, for `MacTable::commit`.
#[derive(Default)]
pub struct Pending(Vec<(u32, IpAddr, [u8; 6])>);

/// A batch sees at most this many distinct new hosts: more are learned from later packets.
const PENDING_MAX: usize = 64;

impl Pending {
    /// Notes that `addr` of `tenant` has `mac`, if that is news: new, moved, or due for a
    /// refresh (half its age gone, so a host that keeps talking never ages out).
    pub fn note(&mut self, snap: &MacSnapshot, tenant: u32, addr: IpAddr, mac: [u8; 6]) {
        if let Some(l) = snap.entry(tenant, &addr)
            && l.mac == mac
            && snap.now.saturating_sub(l.seen) <= snap.age_secs / 2
        {
            return;
        }
        if self.0.len() < PENDING_MAX && !self.0.iter().any(|p| p.0 == tenant && p.1 == addr) {
            self.0.push((tenant, addr, mac));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl MacTable {
    pub fn new(limits: MacLimits) -> MacTable {
        MacTable {
            tenants: Arc::default(),
            limits,
        }
    }

    pub fn snapshot(&self, now: u64) -> MacSnapshot {
        MacSnapshot {
            tenants: self.tenants.load_full(),
            now,
            age_secs: self.limits.age_secs,
        }
    }

    /// Applies (and empties) a batch's `pending`: one copy of each tenant that changed, with
    /// its aged entries dropped. Returns how many new hosts did not fit their tenant's table.
    pub fn commit(&self, pending: &mut Pending, now: u64) -> u64 {
        if pending.is_empty() {
            return 0;
        }
        let mut refused = 0;
        self.tenants.rcu(|cur| {
            refused = 0;
            let mut next = ByTenant::clone(cur);
            let mut tenants: Vec<u32> = pending.0.iter().map(|p| p.0).collect();
            tenants.sort_unstable();
            tenants.dedup();
            for t in tenants {
                let mut hosts = cur.get(&t).map_or_else(Hosts::new, |h| Hosts::clone(h));
                hosts.retain(|_, l| now.saturating_sub(l.seen) <= self.limits.age_secs);
                for &(_, addr, mac) in pending.0.iter().filter(|p| p.0 == t) {
                    if hosts.len() < self.limits.per_tenant || hosts.contains_key(&addr) {
                        hosts.insert(addr, Learned { mac, seen: now });
                    } else {
                        refused += 1;
                    }
                }
                next.insert(t, Arc::new(hosts));
            }
            next
        });
        pending.0.clear();
        refused
    }

    /// Hosts remembered for `tenant` (aged ones included until its next change).
    pub fn len(&self, tenant: u32) -> usize {
        self.tenants.load().get(&tenant).map_or(0, |h| h.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4((0x0a01_0000 + i).into())
    }

    fn learn(t: &MacTable, now: u64, hosts: impl IntoIterator<Item = (u32, IpAddr, [u8; 6])>) {
        let mut p = Pending::default();
        for (tenant, addr, mac) in hosts {
            p.note(&t.snapshot(now), tenant, addr, mac);
            if p.0.len() == PENDING_MAX {
                t.commit(&mut p, now);
            }
        }
        t.commit(&mut p, now);
    }

    const LIMITS: MacLimits = MacLimits {
        per_tenant: 100,
        age_secs: 300,
    };

    #[test]
    fn one_tenant_filling_its_table_leaves_the_others_alone() {
        let t = MacTable::new(LIMITS);
        learn(&t, 0, [(2, v4(1), [2; 6])]);
        // Tenant 1 tries ten times its share of addresses.
        learn(&t, 1, (0..1000).map(|i| (1, v4(i), [1; 6])));
        assert_eq!(t.len(1), 100, "bounded per tenant");
        let s = t.snapshot(2);
        assert_eq!(s.get(2, &v4(1)), Some([2; 6]), "tenant 2 kept its host");
        // Tenant 2 still learns new hosts while tenant 1's table is full (a node-wide table
        // full of tenant 1's entries refused them).
        learn(&t, 2, [(2, v4(2), [3; 6])]);
        assert_eq!(t.snapshot(2).get(2, &v4(2)), Some([3; 6]));
        // Same address in two tenants: two hosts.
        assert_eq!(t.snapshot(2).get(1, &v4(1)), Some([1; 6]));
    }

    #[test]
    fn entries_age_out_and_make_room() {
        let t = MacTable::new(LIMITS);
        learn(&t, 0, (0..100).map(|i| (1, v4(i), [1; 6])));
        learn(&t, 10, [(1, v4(500), [5; 6])]);
        assert_eq!(t.snapshot(10).get(1, &v4(500)), None, "full: refused");
        assert_eq!(t.snapshot(300).get(1, &v4(7)), Some([1; 6]));
        assert_eq!(t.snapshot(301).get(1, &v4(7)), None, "aged out");
        learn(&t, 301, [(1, v4(500), [5; 6])]);
        assert_eq!(t.snapshot(301).get(1, &v4(500)), Some([5; 6]));
        assert_eq!(t.len(1), 1, "the aged entries were dropped");
    }

    #[test]
    fn a_host_that_keeps_talking_stays_and_a_moved_host_is_updated() {
        let t = MacTable::new(LIMITS);
        for now in (0..1000).step_by(100) {
            learn(&t, now, [(1, v4(1), [1; 6])]);
        }
        // Refreshed at most half an age before its last packet (at 900).
        assert_eq!(t.snapshot(1050).get(1, &v4(1)), Some([1; 6]));
        learn(&t, 1050, [(1, v4(1), [9; 6])]);
        assert_eq!(t.snapshot(1050).get(1, &v4(1)), Some([9; 6]));
    }

    #[test]
    fn known_hosts_cost_no_write() {
        let t = MacTable::new(LIMITS);
        learn(&t, 0, (0..50).map(|i| (1, v4(i), [1; 6])));
        let before = t.tenants.load_full();
        let snap = t.snapshot(10);
        let mut p = Pending::default();
        for i in 0..50 {
            p.note(&snap, 1, v4(i), [1; 6]);
        }
        assert!(p.is_empty());
        assert_eq!(t.commit(&mut p, 10), 0);
        assert!(
            Arc::ptr_eq(&before, &t.tenants.load_full()),
            "table not copied"
        );
    }
}
