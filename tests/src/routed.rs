//! Two sites joined by ordinary Linux routers, the shape of [`crate::topology::TwoSite`]:
//! tenant host - router - "internet" bridge - router - tenant host, routers 172.24.4.226 and
//! 172.24.4.233, tenant networks 10.1.0.0/24 and 10.2.0.0/24, hosts 10.1.0.5 and 10.2.0.9.
//! The routers either forward in the clear ([`RoutedSites::plain`]) or run strongSwan's
//! charon with kernel-libipsec on both sides, IPsec between their external addresses
//! ([`RoutedSites::strongswan`]): the baselines of the tunnel benchmark.
//!
//! ```text
//! [eh: eth0 10.1.0.5] -- [east: ten 10.1.0.1, wire 172.24.4.226] -- [inet: bridge] --
//!     -- [west: wire 172.24.4.233, ten 10.2.0.1] -- [wh: eth0 10.2.0.9]
//! ```
//!
//! The tenant links are untagged: this kernel has no 802.1Q, and in Neutron's reference
//! deployment the router namespace's tenant port is untagged as well (Open vSwitch tags).
//! The tenant hosts send finished packets (no checksum offload, GSO or TSO), as in
//! `TwoSite`, so that every setup forwards the same packets rather than 64 KB GSO batches.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    interop::{EAST_HOST, EAST_NET, EAST_WIRE, WEST_NET, WEST_WIRE, ping_all},
    netns::NetNs,
    strongswan::{Charon, CharonSettings, ChildSaInfo, IkeSaInfo, SwanConn},
    topology::veth,
};

/// West's tenant host (the same address as `TwoSite`'s).
pub const WEST_HOST: &str = "10.2.0.9";
/// The connection and CHILD_SA names in both charons.
pub const IKE: &str = "site";
pub const CHILD: &str = "site-net";
const PSK: &str = "a long shared secret for the test tunnel";

/// The running sites. Dropping it stops the charons (by PID), then deletes every namespace.
pub struct RoutedSites {
    // Field order is drop order: daemons first, then the namespaces.
    pub east_charon: Option<Charon>,
    pub west_charon: Option<Charon>,
    /// East's tenant host, 10.1.0.5.
    pub eh: NetNs,
    /// West's tenant host, 10.2.0.9.
    pub wh: NetNs,
    pub east: NetNs,
    pub west: NetNs,
    pub inet: NetNs,
}

/// Each router's side of the strongSwan tunnel: identified by its external address, PSK,
/// IKE `aes256gcm16-prfsha256-modp2048` and ESP `aes128gcm16` (no ESN: libipsec refuses it),
/// the tenant networks as traffic selectors.
pub fn swan_conn(local: &str, remote: &str, local_net: &str, remote_net: &str) -> SwanConn {
    let mut c = SwanConn::new(IKE, local, remote, PSK).ts(&[local_net], &[remote_net]);
    c.child = CHILD.into();
    c
}

/// charon's installed CHILD_SA of [`CHILD`]: (ESP in, ESP out, packets in, packets out).
pub fn installed(sas: &[IkeSaInfo]) -> Option<(u32, u32, u64, u64)> {
    sas.iter()
        .filter(|s| s.name == IKE && s.state == "ESTABLISHED")
        .find_map(|s| {
            let c = s.installed_child(CHILD)?;
            Some((c.spi_in, c.spi_out, c.packets_in, c.packets_out))
        })
}

impl RoutedSites {
    /// Builds the network: both routers forward, neither has a route to the other site yet.
    fn build() -> Result<RoutedSites> {
        let east = NetNs::new("rtE")?;
        let west = NetNs::new("rtW")?;
        let inet = NetNs::new("rtI")?;
        let eh = NetNs::new("rtEh")?;
        let wh = NetNs::new("rtWh")?;
        let sites = RoutedSites {
            east_charon: None,
            west_charon: None,
            eh,
            wh,
            east,
            west,
            inet,
        };
        let RoutedSites {
            eh,
            wh,
            east,
            west,
            inet,
            ..
        } = &sites;
        for ns in [east, west, inet, eh, wh] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }
        veth(east, "wire", inet, "pe")?;
        veth(west, "wire", inet, "pw")?;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        inet.ip(&["link", "set", "pe", "master", "br0"])?;
        inet.ip(&["link", "set", "pw", "master", "br0"])?;
        inet.ip(&["link", "set", "br0", "up"])?;
        east.ip(&["addr", "add", &format!("{EAST_WIRE}/24"), "dev", "wire"])?;
        west.ip(&["addr", "add", &format!("{WEST_WIRE}/24"), "dev", "wire"])?;
        for (router, host, gw, addr) in [
            (east, eh, "10.1.0.1", EAST_HOST),
            (west, wh, "10.2.0.1", WEST_HOST),
        ] {
            veth(router, "ten", host, "eth0")?;
            router.ip(&["addr", "add", &format!("{gw}/24"), "dev", "ten"])?;
            router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            host.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            host.ip(&["route", "add", "default", "via", gw])?;
            host.exec(&[
                "ethtool", "-K", "eth0", "tx", "off", "gso", "off", "tso", "off",
            ])?;
        }
        Ok(sites)
    }

    /// Plain routing, no IPsec: each router routes the other site's network via the other's
    /// external address. Checked with a ping.
    pub fn plain() -> Result<RoutedSites> {
        let s = RoutedSites::build()?;
        s.east.ip(&["route", "add", WEST_NET, "via", WEST_WIRE])?;
        s.west.ip(&["route", "add", EAST_NET, "via", EAST_WIRE])?;
        ping_all(&s.eh, None, WEST_HOST, 3).context("plain routing does not carry traffic")?;
        Ok(s)
    }

    /// strongSwan (charon, kernel-libipsec) on both routers, East initiating; waits (bounded)
    /// until both have the CHILD_SA installed and a ping crosses. charon routes the other
    /// site's network into its TUN device `ipsec0` (table 220) itself; ESP is always
    /// UDP-encapsulated (port 4500).
    pub fn strongswan(settings: &CharonSettings) -> Result<RoutedSites> {
        let mut s = RoutedSites::build()?;
        s.west_charon = Some(Charon::start(
            &s.west,
            settings,
            &[swan_conn(WEST_WIRE, EAST_WIRE, WEST_NET, EAST_NET)],
        )?);
        s.east_charon = Some(Charon::start(
            &s.east,
            settings,
            &[swan_conn(EAST_WIRE, WEST_WIRE, EAST_NET, WEST_NET)],
        )?);
        let (ec, wc) = s.charons();
        ec.initiate(CHILD, IKE, Duration::from_secs(15))
            .with_context(|| format!("initiating; West's log:\n{}", wc.log()))?;
        let sas = ec.wait_sas(Duration::from_secs(10), |sas| installed(sas).is_some())?;
        let (spi_in, spi_out, _, _) = installed(&sas).expect("checked");
        wc.wait_sas(Duration::from_secs(10), |sas| {
            installed(sas).is_some_and(|(i, o, _, _)| (i, o) == (spi_out, spi_in))
        })?;
        ping_all(&s.eh, None, WEST_HOST, 3).with_context(|| {
            format!(
                "the strongSwan tunnel does not carry traffic; East's log:\n{}",
                ec.log()
            )
        })?;
        Ok(s)
    }

    /// Both charons (East's, West's); panics for plain routing.
    pub fn charons(&self) -> (&Charon, &Charon) {
        (
            self.east_charon.as_ref().expect("strongSwan sites"),
            self.west_charon.as_ref().expect("strongSwan sites"),
        )
    }

    /// The MTU of East's libipsec TUN device (`ipsec0`).
    pub fn tun_mtu(&self) -> Result<u32> {
        let out = self
            .east
            .exec(&["cat", "/sys/class/net/ipsec0/mtu"])
            .context("East has no ipsec0")?;
        out.trim().parse().context("ipsec0 mtu")
    }

    /// East's installed CHILD_SA of [`CHILD`] as charon lists it (algorithm, encapsulation,
    /// ESP packet and byte counters).
    pub fn east_child(&self) -> Result<ChildSaInfo> {
        let sas = self.charons().0.list_sas()?;
        sas.iter()
            .filter(|s| s.name == IKE && s.state == "ESTABLISHED")
            .find_map(|s| s.installed_child(CHILD).cloned())
            .context("no CHILD_SA installed on East")
    }
}
