//! The far end of a generator run: `pktgen_sink` attached (native XDP) to an interface counts
//! every frame that arrives, by kind, and drops it.

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
};
use serde::Serialize;
use vpn_common::pktgen::{SINK_BYTES, SINK_ESP, SINK_OTHER, SINK_PACKETS, SINK_UDP, names};

use super::PKTGEN_OBJECT;

/// What a sink has seen, summed over CPUs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounts {
    pub packets: u64,
    pub bytes: u64,
    /// ESP, raw or in UDP/4500.
    pub esp: u64,
    /// Other UDP (plain tenant traffic).
    pub udp: u64,
    pub other: u64,
}

impl std::ops::Sub for SinkCounts {
    type Output = SinkCounts;
    fn sub(self, o: SinkCounts) -> SinkCounts {
        SinkCounts {
            packets: self.packets - o.packets,
            bytes: self.bytes - o.bytes,
            esp: self.esp - o.esp,
            udp: self.udp - o.udp,
            other: self.other - o.other,
        }
    }
}

/// `pktgen_sink` on one interface; detached when dropped.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attaches to `ifname` in the calling thread's network namespace, native XDP (which a
    /// veth needs to receive XDP frames from its peer at all).
    pub fn attach(ifname: &str) -> Result<Sink> {
        let mut ebpf = EbpfLoader::new()
            .load(PKTGEN_OBJECT)
            .context("loading the pktgen XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PKTGEN_SINK)
            .context("pktgen_sink missing from the object")?
            .try_into()?;
        prog.load().context("verifier rejected pktgen_sink")?;
        prog.attach(ifname, XdpMode::Driver)
            .with_context(|| format!("attaching pktgen_sink to {ifname} (native XDP)"))?;
        Ok(Sink { ebpf })
    }

    pub fn counts(&self) -> Result<SinkCounts> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::SINK_STATS).context("SINK_STATS")?)?;
        let get = |i: u32| -> Result<u64> { Ok(m.get(&i, 0)?.iter().sum()) };
        Ok(SinkCounts {
            packets: get(SINK_PACKETS)?,
            bytes: get(SINK_BYTES)?,
            esp: get(SINK_ESP)?,
            udp: get(SINK_UDP)?,
            other: get(SINK_OTHER)?,
        })
    }
}
