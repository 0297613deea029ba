//! Builds the XDP programs (`vpn-ebpf`) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where `dataplane::EBPF_OBJECT` embeds it.
//!
//! The toolchain is Debian's rustc 1.96 linked into rustup as `debian-web`, with
//! `-Z build-std=core` enabled through RUSTC_BOOTSTRAP (see ../shared/notes/toolchain.md and
//! `cargo xtask setup`, which installs it).

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../vpn-common/src");
    println!("cargo:rerun-if-env-changed=VPN_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("VPN_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian-web".into());
    // SAFETY: the build script is single-threaded here; the variable is read by the child cargo.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let ebpf = aya_build::Package {
        name: "vpn-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../vpn-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&toolchain)).map_err(|e| {
        anyhow::anyhow!(
            "building the XDP programs failed ({e:#}); run `cargo xtask setup` to install the \
             eBPF toolchain"
        )
    })
}
