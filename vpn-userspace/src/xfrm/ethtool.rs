//! Whether a network device offers ESP offload: the `esp-hw-offload` (crypto offload) and
//! `esp-tx-csum-hw-offload` features as `ethtool -k` shows them, read with the ethtool ioctl
//! (`ETHTOOL_GSSET_INFO`, `ETHTOOL_GSTRINGS` for the feature names, `ETHTOOL_GFEATURES` for
//! their state). Feature bit positions change between kernels; the names do not.

use std::{io, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ioctl(ifname: &str, data: *mut libc::c_void) -> io::Result<()> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    let n = ifname.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a buffer of the size the command
    // declares; the kernel writes within it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names of the device's features and whether each is active.
pub fn features(ifname: &str) -> Result<Vec<(String, bool)>> {
    // struct ethtool_sset_info { u32 cmd, reserved; u64 sset_mask; u32 data[1]; }
    let mut info = [0u32; 5];
    info[0] = ETHTOOL_GSSET_INFO;
    info[2] = 1 << ETH_SS_FEATURES;
    ioctl(ifname, info.as_mut_ptr() as *mut libc::c_void)
        .with_context(|| format!("{ifname}: ethtool feature count"))?;
    if info[2] & (1 << ETH_SS_FEATURES) == 0 {
        bail!("{ifname}: the driver reports no ethtool features");
    }
    let n = info[4] as usize;
    if n == 0 || n > 4096 {
        bail!("{ifname}: implausible ethtool feature count {n}");
    }
    // struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[]; }
    let mut strings = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
    strings[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    ioctl(ifname, strings.as_mut_ptr() as *mut libc::c_void)
        .with_context(|| format!("{ifname}: ethtool feature names"))?;
    // struct ethtool_gfeatures { u32 cmd, size; { u32 available, requested, active,
    // never_changed } features[size]; }
    let blocks = n.div_ceil(32);
    let mut feats = vec![0u32; 2 + 4 * blocks];
    feats[0] = ETHTOOL_GFEATURES;
    feats[1] = blocks as u32;
    ioctl(ifname, feats.as_mut_ptr() as *mut libc::c_void)
        .with_context(|| format!("{ifname}: ethtool features"))?;
    Ok((0..n)
        .map(|i| {
            let raw = &strings[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            let active = feats[2 + 4 * (i / 32) + 2] & (1 << (i % 32)) != 0;
            (name, active)
        })
        .collect())
}

/// The device's driver as `ethtool -i` names it (`ETHTOOL_GDRVINFO`): `veth`, `ice`,
/// `mlx5_core`, ...
pub fn driver(ifname: &str) -> Result<String> {
    // struct ethtool_drvinfo { u32 cmd; char driver[32], version[32], fw_version[32],
    // bus_info[32], erom_version[32], reserved2[12]; u32 n_priv_flags, n_stats, testinfo_len,
    // eedump_len, regdump_len; }: 196 bytes, u32-aligned.
    let mut info = [0u32; 49];
    info[0] = ETHTOOL_GDRVINFO;
    ioctl(ifname, info.as_mut_ptr() as *mut libc::c_void)
        .with_context(|| format!("{ifname}: ethtool driver info"))?;
    let bytes: Vec<u8> = info[1..9].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Whether the device has ESP crypto offload switched on (`esp-hw-offload: on`).
pub fn esp_offload(ifname: &str) -> Result<bool> {
    Ok(features(ifname)?
        .iter()
        .any(|(n, on)| n == "esp-hw-offload" && *on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_features_and_no_esp_offload() {
        let f = features("lo").expect("lo answers ethtool");
        assert!(f.len() > 30, "{} features", f.len());
        assert!(f.iter().any(|(n, _)| n == "esp-hw-offload"));
        // Loopback does its checksums in software, so this one is on.
        assert!(f.iter().any(|(n, on)| n == "tx-checksum-ip-generic" && *on));
        assert!(!esp_offload("lo").unwrap());
        assert!(features("no-such-if0").is_err());
        // Loopback has no driver (EOPNOTSUPP); a missing device is an error that names it.
        assert!(driver("lo").is_err());
        let e = format!("{:#}", driver("no-such-if0").unwrap_err());
        assert!(e.contains("no-such-if0"), "{e}");
    }
}
