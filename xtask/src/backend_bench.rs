//! `backend-bench` of `cargo xtask bench`: the kernel (xfrm) backend's TCP throughput against
//! the AF_XDP backend's. This machine's kernel has no ESP AEAD, so it runs in the kernel lane
//! (Debian's 6.1 under QEMU TCG, [`kernel_lane::run_lane_of`]): the ignored test
//! `tests/tests/backend_bench.rs` alone, which writes its figures to `/host/out/`; its records
//! are then merged into the results file like every benchmark binary's (replaced by name,
//! others kept). Under emulation the absolute figures mean nothing; the ratio is the result.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::kernel_lane;

/// The test executable and the file it writes in the guest's `/host/out/`.
const TEST: &str = "backend_bench";
const OUT: &str = "backend-bench.json";
/// Boot, the three topologies and the rounds took about 150 s (2 min 30 s); generous for a busy
/// host.
const TIMEOUT_SECS: u64 = 900;

/// `vpn_tests::results::Record`, field for field (same order, so that a merge leaves the
/// other records' text as it was).
#[derive(Serialize, Deserialize)]
struct Record {
    name: String,
    value: f64,
    unit: String,
    baseline_name: Option<String>,
    baseline_value: Option<f64>,
    ratio: Option<f64>,
    machine: String,
    date: String,
}

#[derive(Deserialize)]
struct Report {
    records: Vec<Record>,
}

/// Runs the benchmark in the lane (`quick`: one short round) and merges its records into
/// `out`; the guest's full report is left in the lane's logs.
pub(crate) fn run(out: &Path, quick: bool) -> Result<()> {
    let guest_out = format!("/host/out/{OUT}");
    let mut env = vec![("VPN_BENCH_OUT", guest_out)];
    if quick {
        env.push(("VPN_BENCH_QUICK", "1".to_string()));
    }
    let args = ["--ignored".to_string(), "--nocapture".to_string()];
    let logs = kernel_lane::run_lane_of(
        &kernel_lane::kernel_6_1(),
        &[(TEST, &[])],
        &args,
        &env,
        Duration::from_secs(TIMEOUT_SECS),
    )?;
    let logs = logs
        .into_iter()
        .next()
        .context("the kernel lane booted no kernel for backend-bench")?;
    let report = logs.join(OUT);
    let text = fs::read_to_string(&report).with_context(|| {
        format!(
            "the guest wrote no {} (its output: {})",
            report.display(),
            logs.join(format!("{TEST}.log")).display()
        )
    })?;
    let new: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a backend-bench report", report.display()))?;
    merge_into(out, new.records)?;
    println!(
        "backend-bench: records merged into {} (the guest's report: {})",
        out.display(),
        report.display()
    );
    Ok(())
}

/// What `vpn_tests::results::merge_into` does: records of the file named among `new` go, the
/// others stay in order, `new` is appended; pretty-printed with a final newline.
fn merge_into(path: &Path, new: Vec<Record>) -> Result<()> {
    let mut all: Vec<Record> = match fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .with_context(|| format!("{} is not a results list", path.display()))?,
        Err(_) => Vec::new(),
    };
    all.retain(|r| !new.iter().any(|n| n.name == r.name));
    all.extend(new);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, serde_json::to_string_pretty(&all)? + "\n")?;
    Ok(())
}
