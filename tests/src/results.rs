//! The benchmark results file (`bench/results.json` by default): a JSON list of records that
//! every benchmark binary merges its own figures into, replacing records by name.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One measured figure, optionally against a baseline measured in the same run.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline_name: Option<String>,
    pub baseline_value: Option<f64>,
    pub ratio: Option<f64>,
    pub machine: String,
    pub date: String,
}

/// CPU model, CPU count and kernel release of this machine: `"<model>, <n> CPUs, kernel <release>"`.
pub fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, kernel {kernel}")
}

/// Today's date in UTC, `YYYY-MM-DD` (empty if `date` cannot be run).
pub fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Merges `new` into the results file at `path`: records of the file whose name is among
/// `new` are dropped, the others kept in order, and `new` is appended. A file that cannot be
/// read counts as empty; one that is not a results list is an error. The parent directory is
/// created if missing; the file is written as pretty-printed JSON ending in a newline.
pub fn merge_into(path: &Path, new: &[Record]) -> Result<()> {
    let mut all: Vec<Record> = match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .with_context(|| format!("{} is not a results list", path.display()))?,
        Err(_) => vec![],
    };
    all.retain(|r| !new.iter().any(|n| n.name == r.name));
    all.extend_from_slice(new);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&all)? + "\n")?;
    Ok(())
}
