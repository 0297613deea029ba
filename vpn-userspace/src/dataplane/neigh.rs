//! The wire next hop's MAC address, from the kernel's neighbour table.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::config::parse_mac;

/// The peer's MAC from the kernel's neighbour table, prodding the kernel to resolve it
/// (a datagram to the discard port) while it is not there yet.
pub fn resolve_neighbour(peer: IpAddr, ifname: &str, timeout: Duration) -> Result<[u8; 6]> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = std::process::Command::new("ip")
            .args(["neigh", "show", &peer.to_string(), "dev", ifname])
            .output()
            .context("running ip neigh")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(mac) = text
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .and_then(parse_mac)
        {
            return Ok(mac);
        }
        if Instant::now() > deadline {
            bail!("no neighbour entry for {peer} on {ifname}; set peer_mac in the config");
        }
        let bind = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        if let Ok(s) = std::net::UdpSocket::bind(bind) {
            let _ = s.send_to(b"", (peer, 9));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
