//! Gives a tenant host's veth 802.1Q on kernels without CONFIG_VLAN_8021Q: TC programs push
//! the tag on egress and pop it on ingress (see `vpn-ebpf/src/vlan_host.rs`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, tc},
};
use vpn_common::maps::names;
use vpn_userspace::dataplane::EBPF_OBJECT;

use crate::netns::{run, unique};

pub struct VlanHost {
    _ebpf: Ebpf,
    pins: PathBuf,
}

impl VlanHost {
    /// Attaches to `ifname` in the calling thread's namespace. Also turns off TX VLAN
    /// offload so the tag is written into the frame itself.
    pub fn attach(ifname: &str, vid: u16) -> Result<VlanHost> {
        run("ethtool", &["-K", ifname, "txvlan", "off"])?;
        // The object's maps come along; keep them small and out of any instance's pins.
        let pins = PathBuf::from("/sys/fs/bpf").join(unique("vlanhost"));
        vpn_userspace::dataplane::pin_directory(&pins)?;
        let vid = vid as u32;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins)
            .map_max_entries(names::REPLAY, 1)
            .map_max_entries(names::SA_STATS, 1)
            .map_max_entries(names::SA_IN, 1)
            .override_global("VLAN_HOST_VID", &vid, true)
            .load(EBPF_OBJECT)
            .context("loading the object for the VLAN host programs")?;
        let _ = tc::qdisc_add_clsact(ifname);
        for (prog, at) in [
            ("vlan_host_egress", TcAttachType::Egress),
            ("vlan_host_ingress", TcAttachType::Ingress),
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(prog).context(prog)?.try_into()?;
            p.load()?;
            p.attach(ifname, at)
                .with_context(|| format!("attaching {prog} to {ifname}"))?;
        }
        Ok(VlanHost { _ebpf: ebpf, pins })
    }
}

impl Drop for VlanHost {
    fn drop(&mut self) {
        let _ = vpn_userspace::dataplane::remove_pins(&self.pins);
    }
}
