//! Negotiated CHILD_SAs into the AF_XDP data plane: the [`SaSink`] vpnd hands the IKE shell.

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
use crate::dataplane::{
    ChildSaSpec, Dataplane, InstalledChild, Installer, SaMaps,
    neigh::resolve_neighbour,
    worker::{NextHop, Prefix},
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

impl SaSink for PlaneSink {
    fn install_inbound(&mut self, sa: ChildSa) -> Result<()> {
        let conn = self.conns[sa.conn].clone();
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
        let Some(c) = self.children.remove(&child) else {
            return Ok(());
        };
        let owned = c
            .peer_subnets
            .iter()
            .any(|p| self.installer.policy_slot(c.tenant, p) == Some(c.slot_out));
        self.installer.remove(&mut self.dp, c)?;
        if owned {
            // Another live CHILD_SA of the connection (the newest) takes the traffic back.
            let survivor = self
                .conn_of
                .iter()
                .filter(|(id, cn)| {
                    **cn == conn && self.children.get(id).is_some_and(|c| c.is_active())
                })
                .map(|(id, _)| *id)
                .max();
            if let Some(s) = survivor {
                self.installer.repoint(&mut self.dp, &self.children[&s])?;
            }
        }
        Ok(())
    }

    fn usage(&self, child: ChildId) -> Option<ChildUsage> {
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
        };
        if self.conns.len() <= conn {
            self.conns.resize(conn + 1, plane.clone());
        }
        self.conns[conn] = plane;
    }

    fn details(&self, child: ChildId) -> Option<ChildDetails> {
        let c = self.children.get(&child)?;
        let s = self.installer.stats(c);
        Some(ChildDetails {
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
