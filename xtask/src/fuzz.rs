//! `cargo xtask fuzz`: the cargo-fuzz targets of `vpn-userspace/fuzz`, one after the other
//! (libFuzzer, one job: the machine stays usable), each from its committed seed corpus.

use std::path::Path;

use anyhow::{Result, bail};

use crate::{cargo, cmd, header, item, run, workspace_root};

/// Seconds per target in `cargo xtask test`.
pub const CI_SECS: u64 = 20;
/// Every target, in the order they run (the `[[bin]]`s of vpn-userspace/fuzz/Cargo.toml).
pub const TARGETS: [&str; 9] = [
    "ike_message",
    "ike_endpoint",
    "ts_narrow_emit",
    "esp_inbound",
    "reassembly_model",
    "replay_esn_model",
    "xdp_parsers",
    "config_load",
    "control_protocol",
];
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// A unit slower than this is a failure (a hang or a quadratic blow-up), not a pause.
const UNIT_TIMEOUT_SECS: u64 = 25;

pub fn ensure_cargo_fuzz() -> Result<()> {
    let what = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if cargo_fuzz_ok() {
        item(&what, "ok (already present)");
        return Ok(());
    }
    println!("setup: building {what} with `cargo install` ...");
    run(cargo()
        .arg("install")
        .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"))
        .arg("--locked"))?;
    if !cargo_fuzz_ok() {
        bail!(
            "`cargo install cargo-fuzz` succeeded but `cargo fuzz --version` is not {CARGO_FUZZ_VERSION}"
        );
    }
    item(&what, "installed");
    Ok(())
}

fn cargo_fuzz_ok() -> bool {
    cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
    })
}

/// `cargo fuzz` with the nightly toolchain where rustup has one; else the default toolchain
/// with `RUSTC_BOOTSTRAP=1`, which lets it take cargo-fuzz's `-Z` flags (sanitizer, coverage).
fn cargo_fuzz() -> std::process::Command {
    let nightly = cmd("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut c = cmd("cargo");
    if nightly {
        c.arg("+nightly");
    } else {
        c.env("RUSTC_BOOTSTRAP", "1");
    }
    c.arg("fuzz")
        .current_dir(workspace_root().join("vpn-userspace"));
    c
}

/// Builds every target once, then runs `only` (or all) for `secs` seconds each.
pub fn run_targets(only: Option<&str>, secs: u64) -> Result<()> {
    let chosen: Vec<&str> = match only {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t} (have: {})", TARGETS.join(", ")),
    };
    header("cargo fuzz build");
    run(cargo_fuzz().arg("build"))?;
    let root = workspace_root();
    for t in chosen {
        // New inputs go to a scratch corpus; the committed seeds are only read.
        let scratch = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&scratch)?;
        let seeds = Path::new("fuzz/corpus").join(t);
        header(&format!("cargo fuzz run {t} ({secs} s)"));
        run(cargo_fuzz()
            .args(["run", t])
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg(format!("-timeout={UNIT_TIMEOUT_SECS}"))
            .arg("-print_final_stats=1"))?;
    }
    Ok(())
}
