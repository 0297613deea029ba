//! A TAP device whose frames we write ourselves: each write is one frame *received* by the
//! device, through the driver's own native XDP path (`tun_build_skb`). Linux's tun builds
//! that `xdp_buff` without a metadata area (`xdp_prepare_buff(..., false)` until it gained
//! metadata support), so it is a real device that refuses `bpf_xdp_adjust_meta` at run time.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
};

use anyhow::{Context, Result, bail};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// A TAP device in the calling thread's network namespace; gone when this drops.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates `name` (IFF_TAP, no packet-info header). The fd is non-blocking: tun only
    /// runs native XDP on frames written through a non-blocking fd (`tun_can_build_skb`).
    pub fn create(name: &str) -> Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun (CONFIG_TUN; `modprobe tun`)")?;
        // SAFETY: a zeroed ifreq with a NUL-terminated name and the flags; TUNSETIFF reads it.
        let rc = unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            if name.len() >= ifr.ifr_name.len() {
                bail!("interface name {name:?} too long");
            }
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
            libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut ifr)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("TUNSETIFF {name}"));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands one Ethernet frame to the device as if it had arrived on it.
    pub fn inject(&mut self, frame: &[u8]) -> Result<()> {
        let n = self
            .file
            .write(frame)
            .with_context(|| format!("writing a frame to {}", self.name))?;
        if n != frame.len() {
            bail!("{}: wrote {n} of {} bytes", self.name, frame.len());
        }
        Ok(())
    }
}
