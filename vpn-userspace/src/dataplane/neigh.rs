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

/// An interface's index, MAC address and MTU, asked of the kernel in the caller's network
/// namespace (sysfs shows the namespace it was mounted in, which under `nsenter --net` is not
/// ours).
pub struct IfaceInfo {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

pub fn iface_info(ifname: &str) -> Result<IfaceInfo> {
    let name = std::ffi::CString::new(ifname).context("interface name")?;
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname:?} is too long");
    }
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("interface {ifname} not found in this network namespace");
    }
    // SAFETY: a zeroed ifreq with a NUL-terminated name; the ioctls write into its union.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for interface ioctls");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut ifr);
        let mac_err = std::io::Error::last_os_error();
        let sa = ifr.ifr_ifru.ifru_hwaddr;
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *d = *s as u8;
        }
        let rc2 = libc::ioctl(fd, libc::SIOCGIFMTU as _, &mut ifr);
        let mtu_err = std::io::Error::last_os_error();
        let mtu = ifr.ifr_ifru.ifru_mtu;
        libc::close(fd);
        if rc < 0 {
            return Err(mac_err).with_context(|| format!("MAC address of {ifname}"));
        }
        if rc2 < 0 {
            return Err(mtu_err).with_context(|| format!("MTU of {ifname}"));
        }
        Ok(IfaceInfo {
            index,
            mac,
            mtu: mtu as u32,
        })
    }
}
