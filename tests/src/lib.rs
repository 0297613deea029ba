//! Shared helpers of the root-only integration tests and the benchmark harness: a packet
//! builder, network namespaces that clean up after themselves, the XDP fixture runner.

pub mod cross;
pub mod dut;
pub mod fixture;
pub mod hostile;
pub mod ikebench;
pub mod interop;
pub mod iperf;
pub mod netns;
pub mod pkt;
pub mod raw;
pub mod results;
pub mod routed;
pub mod strongswan;
pub mod tap;
pub mod topology;
pub mod vlanhost;
