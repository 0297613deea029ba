//! `cargo xtask`: installs the toolchain, builds, tests and benchmarks the workspace, runs the
//! two-site demo, and loads/unloads vpnd on a node.
//!
//! Every subcommand that builds first calls [`ensure_toolchain`], which installs whatever is
//! missing (Debian's rustc-web + rust-src + LLVM 22, bpf-linker 0.13.0, the `debian-web` rustup
//! toolchain); see `../shared/notes/toolchain.md` and the README for why this toolchain.

use std::{
    env,
    ffi::OsString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod backend_bench;
mod fuzz;
mod kernel_lane;
mod node;

/// Debian packages the build and the tests need.
const DEB_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "iproute2",
    "tcpdump",
    "iperf3",
    "iputils-ping",
    "ethtool",
    "bpftool",
    "openssl",
    "libssl-dev",
    "pkg-config",
    "libelf-dev",
    "zlib1g-dev",
    // strongSwan as a real IKEv2 peer for the interoperability tests (vpn_tests::strongswan):
    // one charon per test namespace, userspace ESP through kernel-libipsec.
    "charon-systemd",
    "strongswan-swanctl",
    "strongswan-charon",
    "libcharon-extra-plugins",
    "libstrongswan-extra-plugins",
    "libstrongswan-standard-plugins",
];
/// The systemd units of the strongSwan packages (`charon-systemd`, and `strongswan-starter`
/// which they pull in); Debian enables and starts them on install where systemd runs. The tests
/// start their own charons in private namespaces with a private /run, so a system-wide one would
/// not get in their way, but an IKE daemon has no business running on a test machine.
const STRONGSWAN_UNITS: [&str; 2] = ["strongswan.service", "strongswan-starter.service"];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The rustup name of Debian's compiler; `vpn-userspace/build.rs` builds the eBPF crate with it.
const EBPF_TOOLCHAIN: &str = "debian-web";
const RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";
/// `vpn-ebpf` only builds for bpfel-unknown-none (through `vpn-userspace/build.rs`), so
/// host-side `--workspace` invocations leave it out, like `default-members` does.
const HOST_EXCLUDE: [&str; 2] = ["--exclude", "vpn-ebpf"];

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and benchmark the ESP fast path"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, bpf-linker, the `debian-web` rustup toolchain.
    Setup,
    /// Build all binaries in release mode (the eBPF object is built by vpn-userspace/build.rs).
    Build,
    /// cargo fmt --check, cargo clippy -D warnings, cargo test (root-only tests need root),
    /// then the kernel lane (the root-only tests on Debian's 6.1, 6.12 and newest backports
    /// kernel under QEMU, see test-kernel).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (fast path, crypto, tunnel, data plane, IKE, and the kernel backend
    /// vs AF_XDP in the 6.1 kernel lane under QEMU); writes bench/results.json,
    /// bench/RESULTS.md and the SVG plots (with `-- --quick`: a short run into
    /// target/bench-quick/ instead, leaving the recorded figures alone).
    Bench {
        /// Run only these benchmarks (comma-separated binary names, e.g. `tunnel-bench`).
        #[arg(long)]
        only: Option<String>,
        /// Extra arguments for every benchmark binary (after `--`), e.g. `--quick`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The two-site demo: East (VLAN) and West (VXLAN) in network namespaces, two vpnds over
    /// IKEv2, pings and a TCP transfer across, vpnctl's view; torn down at the end or on
    /// Ctrl-C. Installs and builds what is missing first. Needs root.
    Demo {
        /// Leave it up for exploring (prints the commands); Ctrl-C tears it down.
        #[arg(long)]
        keep: bool,
        /// Extra arguments for the demo binary (after `--`), e.g. `--transfer-secs 5`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build if needed, install vpnd and vpnctl, and start vpnd on a node's interfaces.
    Load(node::LoadArgs),
    /// Stop what `load` started and remove everything it installed; leaves nothing behind.
    Unload(node::UnloadArgs),
    /// The lane's root-only tests (XDP fixtures and attach, kernel pktgen, the xfrm backend,
    /// a two-site vpnd ping) on Debian kernels under QEMU (TCG): bookworm's 6.1, trixie's 6.12
    /// and the newest trixie-backports kernel, fetched into target/kernel-lane/ (not installed);
    /// installs QEMU, busybox and kmod if missing. Also a step of `test`.
    TestKernel(kernel_lane::Args),
    /// The cargo-fuzz targets of vpn-userspace/fuzz (see FUZZING.md there), one after the
    /// other, each for `--time` seconds from its committed seed corpus (new inputs go to
    /// target/fuzz-corpus/, crashes to vpn-userspace/fuzz/artifacts/). Also a step of `test`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::CI_SECS)]
        time: u64,
        /// Only this target (default: all of them).
        target: Option<String>,
    },
    /// Traffic generator (vpn-pktgen): plain tenant UDP through kernel pktgen where the kernel
    /// has it, else XDP live frames; valid ESP toward an SA over AF_XDP. Builds it first; the
    /// arguments are vpn-pktgen's (`cargo xtask pktgen --help`), e.g.
    /// `--dev veth0 --netns ns1 --size imix --rate 1000000 --duration 10`. Needs root.
    #[command(disable_help_flag = true)]
    Pktgen {
        /// vpn-pktgen's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => ensure_toolchain(),
        Cmd::Build => build(),
        Cmd::Test { args } => test(&args),
        Cmd::Bench { only, args } => bench(only.as_deref(), &args),
        Cmd::Demo { keep, args } => demo(keep, &args),
        Cmd::Load(a) => node::load(&a, &workspace_root(), build_daemons),
        Cmd::Unload(a) => node::unload(&a),
        Cmd::TestKernel(a) => kernel_lane::test_kernel(&a),
        Cmd::Pktgen { args } => pktgen(&args),
        Cmd::Fuzz { time, target } => {
            ensure_toolchain().and_then(|()| fuzz::run_targets(target.as_deref(), time))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subcommands

/// Installs whatever of the toolchain is missing; prints one line per item.
fn ensure_toolchain() -> Result<()> {
    ensure_deb_packages()?;
    ensure_bpf_linker()?;
    fuzz::ensure_cargo_fuzz()?;
    ensure_rustup_toolchain()?;
    if !Path::new(RUST_SRC).is_dir() {
        bail!("{RUST_SRC} does not exist although rust-web-src is installed");
    }
    item(
        &format!("rust library source {RUST_SRC}"),
        "ok (already present)",
    );
    Ok(())
}

fn build() -> Result<()> {
    ensure_toolchain()?;
    header("cargo build --release --bins");
    run(&mut build_bins())
}

/// `cargo build --release --bins` of the host workspace (vpnd, vpnctl, the test and benchmark
/// binaries, xtask).
fn build_bins() -> Command {
    let mut c = cargo();
    c.args(["build", "--workspace"])
        .args(HOST_EXCLUDE)
        .args(["--release", "--bins"]);
    c
}

fn test(extra: &[String]) -> Result<()> {
    ensure_toolchain()?;
    if !is_root() {
        eprintln!(
            "WARNING: not running as root: the root-only integration tests (network namespaces, \
             veth, XDP attach, BPF_PROG_TEST_RUN) in vpn-tests will fail"
        );
    }

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    let mut clippy = cargo();
    clippy
        .args(["clippy", "--workspace"])
        .args(HOST_EXCLUDE)
        .args(["--all-targets", "--", "-D", "warnings"]);
    // The namespace tests start the daemons (and xtask, the demo) as processes: build the
    // binaries first.
    let bins = build_bins();
    let mut test = cargo();
    test.args(["test", "--workspace"])
        .args(HOST_EXCLUDE)
        .arg("--release")
        .args(extra);

    // The XDP tests, vpnd and the demo again as on a kernel that refuses bpf_xdp_adjust_meta
    // and XDP live frames (seen on a 6.18 build): whatever this machine's kernel has, the
    // shim chosen by vpnd itself and the generators' fallbacks run every time.
    let mut emulated = cargo();
    emulated
        .env(EMULATE_REFUSE_ENV, "adjust_meta,live_frames")
        .args(["test", "-p", "vpn-tests", "--release"]);
    for t in EMULATED_TESTS {
        emulated.args(["--test", t]);
    }
    // A plain name filter narrows these too; cargo options (`-p ...`) are for the step above.
    if extra.iter().all(|a| !a.starts_with('-')) {
        emulated.arg("--").args(extra);
    }

    let mut steps: Vec<(&str, Command)> = vec![
        ("cargo fmt --check", fmt),
        ("cargo clippy -D warnings", clippy),
        ("cargo build --release --bins", bins),
        ("cargo test --release", test),
        (
            "cargo test --release, kernel without adjust_meta and live frames (emulated)",
            emulated,
        ),
    ];
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let mut result = Ok(());
    for (name, cmd) in &mut steps {
        header(name);
        let start = Instant::now();
        result = run(cmd);
        times.push((name, start.elapsed()));
        if result.is_err() {
            break;
        }
    }

    // Every fuzz target for a short while: the seeds (regression inputs included) and what
    // the first seconds find.
    if result.is_ok() {
        let name = "cargo fuzz (every target, short)";
        header(name);
        let start = Instant::now();
        result = fuzz::run_targets(None, fuzz::CI_SECS);
        times.push((name, start.elapsed()));
    }

    // The kernel lane: the root-only tests again on Debian's 6.1, 6.12 and newest backports
    // kernel under QEMU.
    if result.is_ok() {
        let name = "kernel lane (QEMU)";
        header(name);
        let start = Instant::now();
        result = kernel_lane::run_lane(
            &kernel_lane::all_kernels(),
            &kernel_lane::filter_from_cargo_args(extra),
            Duration::from_secs(kernel_lane::DEFAULT_TIMEOUT_SECS),
        );
        times.push((name, start.elapsed()));
    }

    println!("==> elapsed");
    for (name, t) in &times {
        println!("    {name:<28} {:>7.1} s", t.as_secs_f64());
    }
    result
}

/// vpn-userspace's switch that makes a process behave as on a kernel that refuses features
/// (`vpn_userspace::probe::bpf::EMULATE_REFUSE_ENV`).
const EMULATE_REFUSE_ENV: &str = "VPN_EMULATE_REFUSE";
/// The test executables `test` runs a second time under [`EMULATE_REFUSE_ENV`]: everything
/// whose path depends on the metadata carrier or on live frames.
const EMULATED_TESTS: [&str; 6] = [
    "xdp_fixtures",
    "attach_netns",
    "pktgen",
    "probe",
    "two_site_vpnd",
    "demo",
];

/// The benchmark binaries of `vpn-tests`, in the order `bench` runs them; the last,
/// [`BACKEND_BENCH`], is no binary but a run of the kernel lane.
const BENCHES: [&str; 6] = [
    "fastpath-bench",
    "crypto-bench",
    "tunnel-bench",
    "dataplane-bench",
    "ike-bench",
    BACKEND_BENCH,
];
/// The kernel backend vs AF_XDP on Debian's 6.1 under QEMU (see `backend_bench.rs`).
const BACKEND_BENCH: &str = "backend-bench";

fn bench(only: Option<&str>, extra: &[String]) -> Result<()> {
    ensure_toolchain()?;
    // A quick run (CI's, to keep the harnesses alive) has rough figures: it must not replace
    // the recorded ones in bench/.
    let quick = extra.iter().any(|a| a == "--quick");
    let dir = if quick {
        workspace_root().join("target/bench-quick")
    } else {
        workspace_root().join("bench")
    };
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("results.json");
    let chosen: Vec<&str> = match only {
        None => BENCHES.to_vec(),
        Some(list) => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            for n in &names {
                if !BENCHES.contains(n) {
                    bail!(
                        "--only {n}: no such benchmark (have: {})",
                        BENCHES.join(", ")
                    );
                }
            }
            BENCHES.into_iter().filter(|b| names.contains(b)).collect()
        }
    };
    // The tunnel, data-plane and IKE benchmarks start vpnd as a process: build every binary
    // first.
    header("cargo build --release --bins");
    run(&mut build_bins())?;
    let started = Instant::now();
    for (i, bin) in chosen.iter().enumerate() {
        header(&format!(
            "[{}/{}] {bin} {} (bench running {:.0} s)",
            i + 1,
            chosen.len(),
            extra.join(" "),
            started.elapsed().as_secs_f64()
        ));
        if *bin == BACKEND_BENCH {
            backend_bench::run(&out, quick)?;
            continue;
        }
        let mut c = Command::new(workspace_root().join("target/release").join(bin));
        c.current_dir(workspace_root())
            .arg("--out")
            .arg(&out)
            .args(extra);
        run(&mut c)?;
    }
    header("bench-report");
    let mut c = Command::new(workspace_root().join("target/release/bench-report"));
    c.current_dir(workspace_root())
        .arg("--results")
        .arg(&out)
        .arg("--dir")
        .arg(&dir);
    if quick {
        // The hand-written analysis belongs to the recorded run; keep it out of the quick one.
        c.env("BENCH_REPORT_NO_ANALYSIS", "1");
    }
    run(&mut c)?;
    println!(
        "==> results in {} and {} ({:.0} s)",
        out.display(),
        dir.join("RESULTS.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo build --release` of vpnd and vpnctl (for `load`).
fn build_daemons() -> Result<()> {
    ensure_toolchain()?;
    header("cargo build --release -p vpn-userspace --bins");
    run(cargo().args(["build", "--release", "-p", "vpn-userspace", "--bins"]))
}

/// Builds vpn-pktgen and runs it with `args`. Ctrl-C reaches the generator too (same process
/// group); it stops and prints its summary, and we wait for that.
fn pktgen(args: &[String]) -> Result<()> {
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    if !is_root() && !help {
        bail!("the generator loads XDP programs and opens AF_XDP sockets: run it as root");
    }
    ensure_toolchain()?;
    header("cargo build --release -p vpn-userspace --bin vpn-pktgen");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "vpn-userspace",
        "--bin",
        "vpn-pktgen",
    ]))?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let mut c = Command::new(target.join("release/vpn-pktgen"));
    c.args(args);
    let line = describe(&c);
    header(&line);
    // Ctrl-C reaches the generator too (same process group); it stops and prints its summary.
    let status = wait_forwarding_signals(c)?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn demo(keep: bool, extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and loads XDP programs: run it as root \
             (e.g. `sudo -E cargo xtask demo`)"
        );
    }
    ensure_toolchain()?;
    header("cargo build --release --bins");
    run(&mut build_bins())?;
    header("demo");
    let mut c = cmd(workspace_root()
        .join("target/release/demo")
        .to_str()
        .context("workspace path")?);
    if keep {
        c.arg("--keep");
    }
    c.args(extra);
    // Ctrl-C reaches the demo too (same process group): it tears the topology down and exits.
    let status = wait_forwarding_signals(c)?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

/// Runs `c` and waits for it. SIGINT and SIGTERM do not end us before the child: they are
/// forwarded to it as SIGTERM (once), so that its own cleanup runs and the terminal comes back
/// only after it (a terminal's Ctrl-C reaches the child directly too; a second signal changes
/// nothing there).
fn wait_forwarding_signals(mut c: Command) -> Result<std::process::ExitStatus> {
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&interrupted))?;
    }
    let line = describe(&c);
    let mut child = c
        .spawn()
        .with_context(|| format!("failed to start `{line}`"))?;
    let mut forwarded = false;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) && !forwarded {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Setup items

fn ensure_deb_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in DEB_PACKAGES {
        if deb_installed(pkg)? {
            item(&format!("debian package {pkg}"), "ok (already present)");
        } else {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root, or install them with \
             `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: installing {} with apt-get", missing.join(" "));
    run(cmd("apt-get").arg("update"))?;
    run(cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))?;
    for pkg in &missing {
        if !deb_installed(pkg)? {
            bail!("apt-get install finished but {pkg} is still not installed");
        }
        item(&format!("debian package {pkg}"), "installed");
    }
    if missing.contains(&"charon-systemd") {
        stop_system_charon()?;
    }
    Ok(())
}

/// `dpkg-query` fails for packages it has never heard of; that counts as not installed.
/// Stops and disables the system-wide charon that installing `charon-systemd` just started
/// (only where systemd runs; without systemd, the package scripts start nothing).
fn stop_system_charon() -> Result<()> {
    if !Path::new("/run/systemd/system").is_dir() {
        item(
            "strongSwan system service",
            "not started (systemd is not running)",
        );
        return Ok(());
    }
    for unit in STRONGSWAN_UNITS {
        run(cmd("systemctl").args(["disable", "--now", unit]))?;
        item(
            unit,
            "stopped and disabled (the tests run their own charons)",
        );
    }
    Ok(())
}

fn deb_installed(pkg: &str) -> Result<bool> {
    let out = cmd("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("failed to run `dpkg-query` (is this a Debian system?)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn ensure_bpf_linker() -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION}");
    if bpf_linker_ok() {
        item(&what, "ok (already present)");
        return Ok(());
    }
    println!("setup: building {what} against LLVM 22 with `cargo install` (takes about 40 s) ...");
    let mut c = cargo();
    c.env("LLVM_PREFIX", LLVM_PREFIX)
        .arg("install")
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--locked", "--no-default-features", "--features", "llvm-22"]);
    run(&mut c)?;
    if !bpf_linker_ok() {
        bail!(
            "`cargo install bpf-linker` succeeded but `bpf-linker --version` is not {BPF_LINKER_VERSION}"
        );
    }
    item(&what, "installed");
    Ok(())
}

/// Looks on PATH and in ~/.cargo/bin (both are on the PATH that [`cmd`] gives children).
fn bpf_linker_ok() -> bool {
    cmd("bpf-linker").arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

fn ensure_rustup_toolchain() -> Result<()> {
    let what = format!("rustup toolchain {EBPF_TOOLCHAIN} -> /usr");
    let list = cmd("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("failed to run `rustup toolchain list` (is rustup installed?)")?;
    if !list.status.success() {
        bail!("`rustup toolchain list` failed ({})", list.status);
    }
    let linked = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with(EBPF_TOOLCHAIN));
    if linked {
        item(&what, "ok (already present)");
    } else {
        run(cmd("rustup").args(["toolchain", "link", EBPF_TOOLCHAIN, "/usr"]))?;
        item(&what, "installed");
    }

    let version = cmd("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])
        .output()
        .with_context(|| format!("failed to run `rustup run {EBPF_TOOLCHAIN} rustc --version`"))?;
    if !version.status.success() {
        bail!(
            "`rustup run {EBPF_TOOLCHAIN} rustc --version` failed ({}): {}",
            version.status,
            String::from_utf8_lossy(&version.stderr).trim()
        );
    }
    println!(
        "setup: {EBPF_TOOLCHAIN} is {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A command run in the workspace root, with the cargo bin directory on its PATH (that is where
/// `cargo install` puts bpf-linker, and aya-build needs to find it).
fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root()).env("PATH", search_path());
    c
}

/// The cargo that runs us (`CARGO`), else `cargo` from PATH.
fn cargo() -> Command {
    let program = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd(&program)
}

/// PATH with `$CARGO_HOME/bin` (default `~/.cargo/bin`) prepended if it is not already on it.
fn search_path() -> OsString {
    let path = env::var_os("PATH").unwrap_or_default();
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|d| d.join("bin"));
    let Some(cargo_bin) = cargo_bin else {
        return path;
    };
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if dirs.contains(&cargo_bin) {
        return path;
    }
    dirs.insert(0, cargo_bin);
    env::join_paths(dirs).unwrap_or(path)
}

/// Runs a command to completion with inherited stdio; a non-zero exit is an error naming it.
fn run(c: &mut Command) -> Result<()> {
    let line = describe(c);
    let status = c
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn describe(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn header(name: &str) {
    println!("==> {name}");
}

fn item(what: &str, state: &str) {
    println!("setup: {what}: {state}");
}

/// `/proc/self` belongs to the effective uid of the process.
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
