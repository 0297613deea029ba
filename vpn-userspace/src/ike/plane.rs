//! Negotiated CHILD_SAs into the data plane: the [`SaSink`] vpnd hands the IKE shell. Each
//! connection's CHILD_SAs go to its backend: the AF_XDP workers, or the kernel's xfrm (with
//! the XDP program checking their SPIs in front, see [`crate::xfrm`]).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use vpn_common::maps::{POLICY_DISCARD, PolicyValue};

use super::{
    endpoint::{ChildId, ChildSa, ConnId},
    shell::{ChildDetails, ChildUsage, SaSink},
};
use crate::{
    dataplane::{
        ChildSaSpec, Dataplane, InstalledChild, Installer, KernelSlots, SaMaps,
        neigh::resolve_neighbour,
        worker::{NextHop, Prefix},
    },
    xfrm::{KernelBackend, KernelChild, KernelSaSpec, KernelStats},
};

/// What the sink needs to know about a connection beyond the core's view.
#[derive(Clone, Debug)]
pub struct ConnPlane {
    pub name: String,
    pub tenant: u32,
    pub replay_window: u32,
    /// The connection's `mtu` (outer packets of its SAs).
    pub mtu: Option<u16>,
    pub peer_ts: Vec<Prefix>,
    /// Its CHILD_SAs go to the kernel's xfrm (the `backend` resolved: `auto` is decided at
    /// start).
    pub kernel: bool,
    /// The tenant's xfrm interface id (kernel backend).
    pub xfrm_if_id: Option<u32>,
    /// Outer addresses and local subnets (the kernel backend's `hold` policies).
    pub local: IpAddr,
    pub peer: IpAddr,
    pub local_ts: Vec<Prefix>,
}

/// A CHILD_SA on the kernel backend: its xfrm SAs and its XDP entries.
pub struct KernelInstalled {
    pub xfrm: KernelChild,
    pub slots: KernelSlots,
}

pub struct PlaneSink {
    pub dp: Dataplane,
    pub installer: Installer,
    pub conns: Vec<ConnPlane>,
    pub children: HashMap<ChildId, InstalledChild>,
    /// The connection of each child.
    pub conn_of: HashMap<ChildId, ConnId>,
    /// Next hops by peer, shared with the neighbour refresher.
    pub hops: Arc<Mutex<HashMap<IpAddr, NextHop>>>,
    pub wire_if: String,
    pub wire_mac: [u8; 6],
    /// The kernel backend, when a connection uses it.
    pub kernel: Option<KernelBackend>,
    pub kernel_children: HashMap<ChildId, KernelInstalled>,
    /// Tenant id -> its xfrm interface id, for connections added by a reload.
    pub tenant_if_ids: HashMap<u32, u32>,
}

impl PlaneSink {
    fn next_hop(&mut self, peer: IpAddr) -> Result<NextHop> {
        if let Some(h) = self.hops.lock().expect("not poisoned").get(&peer) {
            return Ok(h.clone());
        }
        // IKE just talked to the peer, so the kernel knows its MAC; bounded anyway.
        let mac = resolve_neighbour(peer, &self.wire_if, Duration::from_secs(2))?;
        let h = NextHop::new(mac);
        self.hops
            .lock()
            .expect("not poisoned")
            .insert(peer, h.clone());
        Ok(h)
    }
}

impl PlaneSink {
    fn install_kernel(&mut self, sa: ChildSa, conn: &ConnPlane) -> Result<()> {
        let name = format!("{}#{}", conn.name, sa.id);
        let kernel = self.kernel.as_mut().with_context(|| {
            format!(
                "conn {}: backend kernel, but the kernel backend is not open",
                conn.name
            )
        })?;
        let xfrm = kernel.install_inbound(&KernelSaSpec {
            name: name.clone(),
            conn: sa.conn,
            local: sa.local,
            peer: sa.peer,
            spi_in: sa.spi_in,
            spi_out: sa.spi_out,
            key_in: &sa.key_in,
            key_out: &sa.key_out,
            esn: sa.esn,
            replay_window: conn.replay_window,
            udp_encap: sa.udp_encap,
            local_subnets: &sa.local_ts,
            peer_subnets: &sa.peer_ts,
            if_id: conn.xfrm_if_id,
        })?;
        let slots = match self.installer.install_kernel_inbound(
            &mut self.dp,
            &name,
            conn.tenant,
            sa.peer,
            sa.spi_in,
            sa.udp_encap.is_some(),
            &sa.peer_ts,
        ) {
            Ok(s) => s,
            Err(e) => {
                let _ = kernel.remove(xfrm);
                return Err(e);
            }
        };
        tracing::info!(
            "vpnd: {name}: inbound SA {:#010x} in the kernel (reqid {:#x}{})",
            sa.spi_in,
            xfrm.reqid,
            if xfrm.offload_in {
                ", offloaded to the wire NIC"
            } else {
                ""
            }
        );
        self.kernel_children
            .insert(sa.id, KernelInstalled { xfrm, slots });
        self.conn_of.insert(sa.id, sa.conn);
        Ok(())
    }

    /// The newest CHILD_SA of `conn` for which `active` holds.
    fn newest_active(&self, conn: ConnId, active: impl Fn(ChildId) -> bool) -> Option<ChildId> {
        self.conn_of
            .iter()
            .filter(|(id, cn)| **cn == conn && active(**id))
            .map(|(id, _)| *id)
            .max()
    }

    fn kernel_stats(&self, child: ChildId) -> Option<(&KernelInstalled, KernelStats)> {
        let k = self.kernel_children.get(&child)?;
        let s = match self.kernel.as_ref()?.stats(&k.xfrm) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "vpnd: reading the kernel's counters of {}: {e:#}",
                    k.xfrm.name
                );
                KernelStats::default()
            }
        };
        Some((k, s))
    }
}

impl SaSink for PlaneSink {
    fn install_inbound(&mut self, sa: ChildSa) -> Result<()> {
        let conn = self.conns[sa.conn].clone();
        if conn.kernel {
            return self.install_kernel(sa, &conn);
        }
        let next_hop = self.next_hop(sa.peer)?;
        let spec = ChildSaSpec {
            name: format!("{}#{}", conn.name, sa.id),
            tenant: conn.tenant,
            local: sa.local,
            peer: sa.peer,
            udp_encap: sa.udp_encap,
            spi_in: sa.spi_in,
            spi_out: sa.spi_out,
            key_in: sa.key_in,
            key_out: sa.key_out,
            esn: sa.esn,
            replay_window: conn.replay_window,
            mtu: conn.mtu,
            local_subnets: sa.local_ts,
            peer_subnets: sa.peer_ts,
            next_hop,
            src_mac: self.wire_mac,
        };
        let child = self.installer.install_inbound(&mut self.dp, &spec)?;
        self.children.insert(sa.id, child);
        self.conn_of.insert(sa.id, sa.conn);
        Ok(())
    }

    fn activate_outbound(&mut self, _conn: ConnId, child: ChildId) -> Result<()> {
        if let Some(k) = self.kernel_children.get_mut(&child) {
            let kernel = self.kernel.as_mut().context("kernel backend gone")?;
            kernel.activate_outbound(&mut k.xfrm)?;
            self.installer.activate_kernel(&mut self.dp, &mut k.slots)?;
            tracing::info!(
                "vpnd: {}: outbound SA {:#010x} in the kernel{}",
                k.xfrm.name,
                k.xfrm.spi_out,
                if k.xfrm.offload_out {
                    ", offloaded to the wire NIC"
                } else {
                    ""
                }
            );
            return Ok(());
        }
        let c = self
            .children
            .get_mut(&child)
            .context("activating a CHILD_SA that is not installed")?;
        if c.is_active() {
            return self.installer.repoint(&mut self.dp, c);
        }
        self.installer.activate_outbound(&mut self.dp, c)
    }

    fn remove(&mut self, conn: ConnId, child: ChildId) -> Result<()> {
        self.conn_of.remove(&child);
        if let Some(k) = self.kernel_children.remove(&child) {
            let owned = self.installer.owns_policies(
                k.slots.tenant,
                &k.slots.peer_subnets,
                k.slots.slot_out,
            );
            let r1 = match self.kernel.as_mut() {
                Some(kb) => kb.remove(k.xfrm),
                None => Ok(()),
            };
            let r2 = self.installer.remove_kernel(&mut self.dp, k.slots);
            if owned {
                let survivor = self.newest_active(conn, |id| {
                    self.kernel_children
                        .get(&id)
                        .is_some_and(|c| c.slots.active)
                });
                if let Some(s) = survivor {
                    let mut slots = self.kernel_children[&s].slots.clone();
                    self.installer.activate_kernel(&mut self.dp, &mut slots)?;
                }
            }
            return r1.and(r2);
        }
        let Some(c) = self.children.remove(&child) else {
            return Ok(());
        };
        let owned = self
            .installer
            .owns_policies(c.tenant, &c.peer_subnets, c.slot_out);
        self.installer.remove(&mut self.dp, c)?;
        if owned {
            // Another live CHILD_SA of the connection (the newest) takes the traffic back.
            let survivor = self.newest_active(conn, |id| {
                self.children.get(&id).is_some_and(|c| c.is_active())
            });
            if let Some(s) = survivor {
                self.installer.repoint(&mut self.dp, &self.children[&s])?;
            }
        }
        Ok(())
    }

    fn usage(&self, child: ChildId) -> Option<ChildUsage> {
        if let Some((_, s)) = self.kernel_stats(child) {
            return Some(ChildUsage {
                packets: s.packets_in + s.packets_out,
                bytes: s.bytes_in + s.bytes_out,
                seq_out: s.seq_out,
                packets_in: s.packets_in,
            });
        }
        let c = self.children.get(&child)?;
        let s = self.installer.stats(c);
        Some(ChildUsage {
            packets: s.packets_in + s.packets_out,
            bytes: s.bytes_in + s.bytes_out,
            seq_out: s.seq_out,
            packets_in: s.packets_in,
        })
    }

    fn add_conn(&mut self, conn: ConnId, rc: &crate::vpnaas::ResolvedConn) {
        let plane = ConnPlane {
            name: rc.conn.name.clone(),
            tenant: rc.tenant,
            replay_window: rc.replay_window,
            mtu: rc.mtu,
            peer_ts: rc.conn.peer_ts.clone(),
            // A connection added by a reload: `auto` stays on AF_XDP unless the kernel
            // backend is open already (the wire's offload was decided at start).
            kernel: match rc.backend {
                crate::vpnaas::BackendChoice::Kernel => true,
                crate::vpnaas::BackendChoice::Afxdp => false,
                crate::vpnaas::BackendChoice::Auto => self
                    .kernel
                    .as_ref()
                    .is_some_and(|k| k.offload() != crate::xfrm::OffloadMode::None),
            },
            xfrm_if_id: self.tenant_if_ids.get(&rc.tenant).copied(),
            local: rc.conn.local,
            peer: rc.conn.peer,
            local_ts: rc.conn.local_ts.clone(),
        };
        if self.conns.len() <= conn {
            self.conns.resize(conn + 1, plane.clone());
        }
        self.conns[conn] = plane;
    }

    fn details(&self, child: ChildId) -> Option<ChildDetails> {
        if let Some((k, s)) = self.kernel_stats(child) {
            let offload = match (k.xfrm.offload_in, k.xfrm.offload_out) {
                (true, true) => "crypto",
                (true, false) => "crypto-in",
                (false, true) => "crypto-out",
                (false, false) => "none",
            };
            return Some(ChildDetails {
                backend: "kernel".into(),
                offload: offload.into(),
                tenant: k.slots.tenant,
                slot_in: k.slots.slot_in,
                slot_out: k.slots.slot_out,
                active: k.xfrm.active,
                packets_in: s.packets_in,
                bytes_in: s.bytes_in,
                packets_out: s.packets_out,
                bytes_out: s.bytes_out,
                seq_out: s.seq_out,
                replay_top: s.replay_top,
                xfrm: Some(s),
            });
        }
        let c = self.children.get(&child)?;
        let s = self.installer.stats(c);
        Some(ChildDetails {
            backend: "afxdp".into(),
            offload: "none".into(),
            xfrm: None,
            tenant: c.tenant,
            slot_in: c.slot_in,
            slot_out: c.slot_out,
            active: c.is_active(),
            packets_in: s.packets_in,
            bytes_in: s.bytes_in,
            packets_out: s.packets_out,
            bytes_out: s.bytes_out,
            seq_out: s.seq_out,
            replay_top: s.replay_top,
        })
    }

    /// Neutron's `hold`: the protected subnets stay blocked (discarded in XDP) instead of
    /// leaking to the kernel's routing while the tunnel is down.
    fn conn_down(&mut self, conn: ConnId, hold: bool) {
        if !hold {
            return;
        }
        let c = self.conns[conn].clone();
        if c.kernel
            && let Some(k) = self.kernel.as_mut()
        {
            match k.hold(conn, c.local, c.peer, &c.local_ts, &c.peer_ts, c.xfrm_if_id) {
                Ok(n) => tracing::info!(
                    "vpnd: conn {}: holding: {n} blocking out policies in the kernel",
                    c.name
                ),
                Err(e) => tracing::warn!("vpnd: conn {}: holding in the kernel: {e:#}", c.name),
            }
        }
        for p in &c.peer_ts {
            let v = PolicyValue {
                sa_slot: 0,
                action: POLICY_DISCARD,
            };
            if let Err(e) = self.dp.set_policy(c.tenant, p, v) {
                tracing::warn!("vpnd: conn {}: holding {p:?}: {e:#}", c.name);
            }
        }
    }
}
