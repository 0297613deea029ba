//! What the kernel and each device offer, found out by asking them (never assumed): the
//! facts vpnd chooses its paths from, and what `vpnctl probe` shows.

pub mod bpf;
