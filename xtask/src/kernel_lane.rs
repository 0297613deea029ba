//! The kernel lane: root-only tests run as root on Debian kernels booted under QEMU (TCG: KVM
//! does not work on these machines), one guest per kernel, one after the other: bookworm's 6.1,
//! trixie's 6.12 and the newest trixie-backports kernel (`--kernel 6.1|6.12|latest|all`). See
//! `../shared/notes/second-kernel.md` and `../shared/notes/kernels.md`. [`LANE_TESTS`] names the
//! test executables and, for each, the tests it runs there.
//!
//! 1. Installs what is missing on the host (`qemu-system-x86`, `busybox-static`, `kmod` for
//!    `depmod -b` and `modprobe -d -S`, `xz-utils` and `zstd` for compressed modules). No
//!    kernel is installed on the host: [`kernels`] fetches each one with a private apt state
//!    into `target/kernel-lane/kernels/<kver>/` (and re-uses it on later runs).
//! 2. Resolves each kernel's modules from [`MODULES`] with `modprobe -d <root> -S <kver>
//!    --show-depends`, following each entry's rule for kernels that build it in, do not build
//!    it, or call it otherwise (see [`Need`]).
//! 3. Builds on the host what the guest runs: vpn-userspace's binaries (`vpnd`, `vpnctl`,
//!    `vpn-pktgen`) with the same `cargo build --release --bins` as `cargo xtask test`, and the
//!    test executables (`cargo test --no-run`, same package selection as the host `cargo test`
//!    step), so nothing is rebuilt after `cargo xtask test`'s own steps. Each executable's
//!    tests are listed on the host (`--list`) to pick what the guest runs.
//! 4. Per kernel, writes `target/kernel-lane/initramfs-<series>.cpio.gz`: static busybox, the
//!    host's real `ip`, `ethtool`, `ping`, `nsenter` (and `sysctl`, `iperf3` where the host has
//!    them) with the shared libraries `ldd` names (the test executables and binaries need the
//!    same loader and libc), the kernel's modules in the order `modprobe --show-depends` gives
//!    (`.ko.xz`/`.ko.zst` decompressed, and modules.dep renamed to match, so that busybox's
//!    insmod and modprobe take them), and an `/init` that mounts proc, sys, devtmpfs, bpffs and
//!    the 9p share, loads the modules, brings up lo, runs the share's `lane.sh` and powers off.
//! 5. Per kernel, shares a temporary directory over 9p (the test executables and the binaries
//!    side by side, as in `target/release/`, so the tests' `current_exe().parent()` lookups
//!    find `vpnd` and `vpn-pktgen`; and `lane.sh`; the guest writes each test's output, exit
//!    status and time back), boots the kernel, streams the serial console, and kills QEMU (by
//!    its PID) if it has not powered off within the timeout. Logs stay in
//!    `target/kernel-lane/logs/<kver>/`. A failing kernel does not stop the next one; a table
//!    at the end sums up every kernel, and the lane fails if any kernel did.
//!
//! The cpio archive is written here (newc is a 110-byte text header per entry) rather than
//! with the `cpio` tool: the archive needs a `/dev/console` device node, which `cpio -o` could
//! only take from a `mknod` in a scratch tree, and this keeps the entry list, modes and
//! ownership (all root) in one place with no extra package or crate. gzip is Debian's
//! essential `gzip`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{HOST_EXCLUDE, cargo, cmd, deb_installed, header, is_root, item, run};

mod kernels;

/// Debian packages of the lane (on top of `DEB_PACKAGES`, which brings iproute2 and ethtool).
/// No kernel package: the kernels come from Debian's archive into the lane's own cache
/// ([`kernels`]).
const LANE_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    // depmod -b and modprobe -d -S --show-depends on the unpacked kernels.
    "kmod",
    // 6.12's and 7.x's modules are .ko.xz; .ko.zst taken too.
    "xz-utils",
    "zstd",
];

/// The test executables of `vpn-tests` the lane runs, in this order, each with the name
/// filters (libtest's: a test runs if its name contains one of them) that pick the tests it
/// runs in the guest; none: all of its tests. Extra arguments of the lane narrow this further
/// (see [`plan_runs`]).
const LANE_TESTS: &[(&str, &[&str])] = &[
    // Every fixture table, the mutation test and the pruning check, once per metadata carrier.
    ("xdp_fixtures", &[]),
    // Real frames to AF_XDP per carrier, and a TAP device that refuses metadata at run time.
    ("attach_netns", &[]),
    // vpnctl probe against each kernel: Debian's have adjust_meta, ESP and rfc4106(gcm(aes)),
    // which the test requires when VPN_LANE_KERNEL is set.
    ("probe", &[]),
    // Every generator test: kernel pktgen exists here (the host kernel has no module), so
    // vpn-pktgen's kernel engine runs against the real thing only in the lane, by name and as
    // `auto`'s choice; live frames, the flow rewrite, and vpnd fed by the generator.
    ("pktgen", &[]),
    // The xfrm backend, and the cross-implementation run (kernel ESP vs our AF_XDP workers).
    ("kernel_backend", &[]),
    // The AF_XDP data plane on 6.1: two vpnds (manual SAs, copy-mode AF_XDP on veths) carry
    // pings between the two sites; about 20 s in the guest.
    ("two_site_vpnd", &["vpnd_carries_ping_between_the_sites"]),
];

/// vpn-userspace's binaries the lane's tests start (`vpnd_path()` and the pktgen tests look
/// next to their own executable), shared beside the test executables.
const LANE_BINS: [&str; 3] = ["vpnd", "vpnctl", "vpn-pktgen"];

/// The host's tools the guest gets instead of busybox's applets: (name, where the host may
/// have it, whether the lane needs it). Busybox's `ip` lacks `netns`, `-n` and XDP; its `ping`
/// lacks `-M` and prints differently from the iputils one the tests parse; `nsenter` is
/// util-linux's, as on the host. Without procps' `sysctl` busybox's serves (it takes `-qw`);
/// `iperf3` (small, dynamic) comes along where the host has it (`tcpdump` does not: it wants a
/// `tcpdump` user to drop privileges to, and a dozen libraries).
const REAL_TOOLS: &[(&str, &[&str], bool)] = &[
    (
        "ip",
        &["/bin/ip", "/usr/bin/ip", "/sbin/ip", "/usr/sbin/ip"],
        true,
    ),
    (
        "ethtool",
        &["/usr/sbin/ethtool", "/sbin/ethtool", "/usr/bin/ethtool"],
        true,
    ),
    ("ping", &["/usr/bin/ping", "/bin/ping"], true),
    ("nsenter", &["/usr/bin/nsenter", "/bin/nsenter"], true),
    ("sysctl", &["/usr/sbin/sysctl", "/sbin/sysctl"], false),
    ("iperf3", &["/usr/bin/iperf3"], false),
];

/// One module the guest needs, with its rule for kernels that differ. `names` are tried in
/// order (the current name first, then what newer kernels call it) and the first one
/// `modprobe -S <kver> --show-depends` resolves, as a module or as built in (`builtin`), is
/// taken; none resolving fails that kernel, naming the module. `only_if`: the kernel option
/// that builds it; where the kernel's config does not set it (`# ... is not set`, or the option
/// no longer exists), the kernel has no such code and the guest goes without (printed, per
/// kernel). Entries without `only_if` must resolve on every kernel.
struct Need {
    names: &'static [&'static str],
    only_if: Option<&'static str>,
}

const fn need(names: &'static [&'static str]) -> Need {
    Need {
        names,
        only_if: None,
    }
}

const fn need_if(names: &'static [&'static str], option: &'static str) -> Need {
    Need {
        names,
        only_if: Some(option),
    }
}

/// The kernel's default RNG (`stdrng`): DRBG, seeded by jitterentropy_rng (which hashes with
/// SHA-3); the HMAC DRBGs use SHA-512.
const DRBG: &str = "CONFIG_CRYPTO_DRBG";

/// Modules loaded in the guest (each after its dependencies), in this order. virtio_pci,
/// 9pnet_virtio and 9p carry the share. The crypto modules come before the RNG ones: drbg
/// self-tests its CTR variants on load and fails them without `ctr`. The GCM pieces are what
/// `rfc4106(gcm(aes))` SAs ask for.
///
/// What differs between the lane's kernels (Debian's configs; checked in the guests):
/// - 6.1: everything below is a module except af_packet.
/// - 6.12: virtio_pci, ctr and the whole RNG chain (drbg, jitterentropy_rng, sha3_generic,
///   sha512_generic) are built in; .ko.xz modules.
/// - 7.3: virtio_pci built in; no `ghash_clmulni_intel` (GHASH is library code built into the
///   kernel, CONFIG_CRYPTO_LIB_GF128HASH_ARCH=y; the option is gone); no DRBG at all
///   (`# CONFIG_CRYPTO_DRBG is not set`, no CONFIG_CRYPTO_RNG_DEFAULT) and ESP SAs initialise
///   without any RNG module (the kernel_backend tests create them), so the RNG chain is left
///   out by its rule; SHA-512 and SHA-3 are `sha512` (built in) and `sha3` there; .ko.xz.
const MODULES: &[Need] = &[
    need(&["virtio_pci"]),
    need(&["9pnet_virtio"]),
    need(&["9p"]),
    need(&["veth"]),
    need(&["xfrm_user"]),
    need(&["aesni_intel"]),
    need(&["ctr"]),
    need(&["gcm"]),
    need_if(
        &["ghash_clmulni_intel"],
        "CONFIG_CRYPTO_GHASH_CLMUL_NI_INTEL",
    ),
    need(&["seqiv"]),
    need(&["echainiv"]),
    // ESP SAs fail with "Kernel was unable to initialize cryptographic operations" on 6.1
    // until these are loaded (second-kernel.md).
    need_if(&["sha3_generic", "sha3"], DRBG),
    need_if(&["sha512_generic", "sha512"], DRBG),
    need_if(&["jitterentropy_rng"], DRBG),
    need_if(&["drbg"], DRBG),
    need(&["esp4"]),
    need(&["esp6"]),
    need(&["8021q"]),
    need(&["pktgen"]),
    need(&["vxlan"]),
    // The two-site topology: a bridge joins the nodes' wires; the East tenant host's VLAN
    // helper is a TC program (clsact qdisc and the bpf classifier).
    need(&["bridge"]),
    need(&["sch_ingress"]),
    need(&["cls_bpf"]),
    // Route-based IPsec (xfrm interfaces; brings tunnel4, tunnel6, xfrm6_tunnel). Not here:
    // netdevsim (Debian does not build it), xfrm4_tunnel (IP-in-IP xfrm, which nothing uses).
    need(&["xfrm_interface"]),
    // A tenant's VRF (the kernel backend's per-tenant routing context, beside namespaces).
    need(&["vrf"]),
    // Built into every Debian kernel here (`builtin`).
    need(&["af_packet"]),
    // TAP devices: a driver that refuses bpf_xdp_adjust_meta at run time (attach_netns).
    need(&["tun"]),
];

/// How long one guest may take from QEMU's start to power-off before it is killed. Boot, the
/// lane's tests and power-off took about 75 s on a busy 2-core machine (TCG); this is generous.
pub(crate) const DEFAULT_TIMEOUT_SECS: u64 = 600;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The kernel to boot: 6.1 (bookworm), 6.12 (trixie), latest (the newest in
    /// trixie-backports), or all three, one guest after the other.
    #[arg(long, default_value = "all", value_parser = ["6.1", "6.12", "latest", "all"])]
    kernel: String,
    /// Kill a guest's QEMU if it has not powered off after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Extra arguments for the test executables in the guest (after `--`), e.g. a test name
    /// filter. `--test-threads=1` is always passed.
    #[arg(last = true)]
    args: Vec<String>,
}

/// The kernels `--kernel NAME` selects.
fn series_named(name: &str) -> Vec<&'static kernels::Series> {
    kernels::ALL
        .into_iter()
        .filter(|s| name == "all" || s.name == name)
        .collect()
}

/// Every kernel of the matrix (the lane step of `cargo xtask test`).
pub(crate) fn all_kernels() -> Vec<&'static kernels::Series> {
    series_named("all")
}

/// Debian's 6.1 alone (`backend-bench`).
pub(crate) fn kernel_6_1() -> Vec<&'static kernels::Series> {
    vec![&kernels::V6_1]
}

/// `cargo xtask test-kernel`.
pub(crate) fn test_kernel(a: &Args) -> Result<()> {
    super::ensure_toolchain()?;
    let start = Instant::now();
    let r = run_lane(
        &series_named(&a.kernel),
        &a.args,
        Duration::from_secs(a.timeout),
    );
    println!(
        "==> kernel lane: {} after {:.1} s",
        if r.is_ok() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    r
}

/// The guest arguments of the lane step of `cargo xtask test`: its extra arguments when they
/// are only a test name filter (what `cargo test NAME` takes), else none (cargo options such as
/// `-p vpn-common` mean nothing to the lane, which then runs everything).
pub(crate) fn filter_from_cargo_args(extra: &[String]) -> Vec<String> {
    if extra.iter().all(|a| !a.starts_with('-')) {
        extra.to_vec()
    } else {
        println!(
            "kernel lane: `{}` is not a plain test name filter; running all lane tests",
            extra.join(" ")
        );
        Vec::new()
    }
}

/// Installs, fetches the kernels, builds, boots each kernel with the tests, and fails if any
/// test failed, a kernel could not be had, or a guest did not report within `timeout`.
/// `guest_args` are the lane's extra arguments for the test executables (see [`plan_runs`]).
pub(crate) fn run_lane(
    kernels: &[&'static kernels::Series],
    guest_args: &[String],
    timeout: Duration,
) -> Result<()> {
    run_lane_of(kernels, LANE_TESTS, guest_args, &[], timeout).map(|_| ())
}

/// Where the guests' `/host/out/*` land: `<this>/<kver>/` (emptied when that kernel boots
/// again), and `summary.txt`.
pub(crate) fn logs_root() -> PathBuf {
    kernels::cache_dir().join("logs")
}

/// [`run_lane`] with other test executables and filters than [`LANE_TESTS`] (same shape), and
/// extra environment variables exported in the guest before the tests run (e.g. the path of a
/// benchmark's output under `/host/out/`). Returns each kernel's logs directory, in order.
pub(crate) fn run_lane_of(
    kernels: &[&'static kernels::Series],
    lane_tests: &[(&str, &[&str])],
    guest_args: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<Vec<PathBuf>> {
    ensure_lane_packages()?;
    let t = Instant::now();
    header(&format!(
        "kernel lane: kernels {}",
        kernels
            .iter()
            .map(|s| format!("{} ({})", s.name, s.suite))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // Each kernel and its modules, or why not; one kernel's trouble does not stop the others.
    let prepared: Vec<Result<(kernels::Kernel, Vec<Ko>)>> = kernels::acquire(kernels)
        .into_iter()
        .zip(kernels)
        .map(|(k, s)| {
            k.and_then(|k| {
                let kos = resolve_modules(&k)?;
                Ok((k, kos))
            })
            .with_context(|| format!("kernel {} ({})", s.name, s.suite))
        })
        .collect();
    println!(
        "kernel lane: kernels ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if prepared.iter().all(|p| p.is_err()) {
        let why: Vec<String> = prepared
            .iter()
            .filter_map(|p| p.as_ref().err())
            .map(|e| format!("{e:#}"))
            .collect();
        bail!("kernel lane: no kernel to boot: {}", why.join("; "));
    }

    let bins = build_lane_bins()?;
    let tests = build_tests(lane_tests)?;
    let runs = plan_runs(&tests, lane_tests, guest_args)?;
    if runs.is_empty() {
        println!(
            "==> kernel lane: no lane test matches `{}`; not booting",
            guest_args.join(" ")
        );
        return Ok(Vec::new());
    }
    let dir = kernels::cache_dir();
    fs::create_dir_all(&dir)?;
    let base = base_tree(&tests, &bins)?;
    let interrupted = interrupt_flag()?;

    let mut rows = Vec::new();
    let mut logs = Vec::new();
    for (s, p) in kernels.iter().zip(prepared) {
        let start = Instant::now();
        let mut source = None;
        let (kver, tally, result) = match p {
            Err(e) => (None, Tally::default(), Err(e)),
            Ok((k, _)) if interrupted.load(Ordering::Relaxed) => (
                Some(k.kver),
                Tally::default(),
                Err(anyhow::anyhow!("not run: interrupted")),
            ),
            Ok((k, kos)) => {
                source = Some(k.source());
                let l = logs_root().join(&k.kver);
                let (tally, r) = run_kernel(&k, &kos, &base, &runs, &bins, env, timeout, &l);
                logs.push(l);
                (Some(k.kver.clone()), tally, r)
            }
        };
        if let Err(e) = &result {
            println!("==> kernel lane {}: FAILED: {e:#}", s.name);
        }
        rows.push(Row {
            series: s.name,
            kver,
            source,
            tally,
            secs: start.elapsed().as_secs_f64(),
            result,
        });
    }
    summarise(&rows)?;
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let e = r.result.as_ref().err()?;
            Some(format!(
                "{} ({}): {e:#}",
                r.series,
                r.kver.as_deref().unwrap_or("no kernel")
            ))
        })
        .collect();
    if !failed.is_empty() {
        bail!("kernel lane failed on {}", failed.join("; "));
    }
    Ok(logs)
}

/// One kernel's line of the summary.
struct Row {
    series: &'static str,
    kver: Option<String>,
    /// Its packages, for the table's notes.
    source: Option<String>,
    tally: Tally,
    /// Wall time for this kernel: its initramfs, the guest, the checks.
    secs: f64,
    result: Result<()>,
}

/// Prints the table and writes it to `logs/summary.txt`.
fn summarise(rows: &[Row]) -> Result<()> {
    let mut t = format!(
        "{:<8} {:<24} {:>6} {:>6} {:>8} {:>8}  result\n",
        "kernel", "version", "passed", "failed", "guest s", "wall s"
    );
    for r in rows {
        t.push_str(&format!(
            "{:<8} {:<24} {:>6} {:>6} {:>8} {:>8.0}  {}\n",
            r.series,
            r.kver.as_deref().unwrap_or("-"),
            r.tally.passed,
            r.tally.failed,
            r.tally
                .guest_secs
                .map_or("-".to_string(), |s| format!("{s:.0}")),
            r.secs,
            match &r.result {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {}", brief(&format!("{e:#}"), 100)),
            }
        ));
    }
    for r in rows {
        if let Some(src) = &r.source {
            t.push_str(&format!("{}: {src}\n", r.series));
        }
    }
    header("kernel lane summary");
    for l in t.lines() {
        println!("    {l}");
    }
    fs::create_dir_all(logs_root())?;
    fs::write(logs_root().join("summary.txt"), t)?;
    Ok(())
}

/// An error for the table: its first line without the parenthesised details (paths of the
/// logs, which the full message below the table names), cut at `max` characters.
fn brief(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut depth = 0u32;
    for c in s.lines().next().unwrap_or_default().chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let out = out.replace("  ", " ").replace(" ;", ";").trim().to_string();
    if out.chars().count() > max {
        format!("{}...", out.chars().take(max).collect::<String>())
    } else {
        out
    }
}

/// Set by SIGINT or SIGTERM once the lane boots guests (registered once): stops QEMU and the
/// kernels after it instead of dying with QEMU running.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(Arc::clone(f));
    }
    let f = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&f))?;
    }
    Ok(Arc::clone(FLAG.get_or_init(|| f)))
}

/// Writes the kernel's initramfs, boots it with the tests and checks what came back.
#[allow(clippy::too_many_arguments)]
fn run_kernel(
    k: &kernels::Kernel,
    kos: &[Ko],
    base: &Tree,
    runs: &[Run],
    bins: &[(String, PathBuf)],
    env: &[(&str, String)],
    timeout: Duration,
    logs: &Path,
) -> (Tally, Result<()>) {
    let dir = kernels::cache_dir();
    let initramfs = dir.join(format!("initramfs-{}.cpio.gz", k.series.name));
    let t = Instant::now();
    match build_initramfs(base, k, kos, &initramfs) {
        Ok(size) => println!(
            "kernel lane: {} ({} modules, {:.1} MiB, {:.1} s)",
            initramfs.display(),
            kos.len(),
            size as f64 / (1 << 20) as f64,
            t.elapsed().as_secs_f64()
        ),
        Err(e) => return (Tally::default(), Err(e.context("writing the initramfs"))),
    }
    let share = match TempDir::new(dir.join(format!("share-{}", std::process::id()))) {
        Ok(s) => s,
        Err(e) => return (Tally::default(), Err(e)),
    };
    // The kernel's `major.minor` and the matrix's name for it, for tests that differ by kernel.
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.push(("VPN_LANE_KERNEL", k.major_minor()));
    env.push(("VPN_LANE_KERNEL_SERIES", k.series.name.to_string()));
    boot_and_collect(
        k, kos, &initramfs, runs, bins, &env, timeout, &share.0, logs,
    )
}

fn ensure_lane_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in LANE_PACKAGES {
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
            "the kernel lane needs the Debian packages {}: run it as root, or install them with \
             `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!(
        "setup: installing {} with apt-get (tools only: the lane's kernels are fetched into \
         its own cache, not installed)",
        missing.join(" ")
    );
    let fail = |e: anyhow::Error| {
        e.context(format!(
            "the kernel lane cannot run: installing {} failed",
            missing.join(" ")
        ))
    };
    run(cmd("apt-get").arg("update")).map_err(fail)?;
    run(cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))
    .map_err(fail)?;
    for pkg in &missing {
        if !deb_installed(pkg)? {
            bail!("apt-get install finished but {pkg} is still not installed");
        }
        item(&format!("debian package {pkg}"), "installed");
    }
    Ok(())
}

/// The executables a cargo invocation with `--message-format=json-render-diagnostics` built,
/// by target name, for targets of `kind` ("bin", "test").
fn cargo_executables(c: &mut Command, kind: &str) -> Result<BTreeMap<String, PathBuf>> {
    c.stderr(Stdio::inherit());
    let line = super::describe(c);
    let out = c
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    let mut exes = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["target"]["kind"] != serde_json::json!([kind]) {
            continue;
        }
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        exes.insert(name.to_string(), PathBuf::from(exe));
    }
    Ok(exes)
}

/// Builds [`LANE_BINS`] with the very command `cargo xtask test` builds the binaries with (so
/// after it, or before it, nothing is built twice) and returns (name, path) in that order.
fn build_lane_bins() -> Result<Vec<(String, PathBuf)>> {
    header("kernel lane: cargo build --release --bins (vpnd, vpnctl, vpn-pktgen for the guest)");
    let mut c = super::build_bins();
    c.arg("--message-format=json-render-diagnostics");
    let line = super::describe(&c);
    let mut exes = cargo_executables(&mut c, "bin")?;
    LANE_BINS
        .iter()
        .map(|b| {
            exes.remove(*b)
                .map(|p| (b.to_string(), p))
                .with_context(|| format!("`{line}` reported no executable for the binary {b}"))
        })
        .collect()
}

/// Builds the lane's test executables and returns (name, path) in `lane_tests` order. Same
/// package selection and profile as the host `cargo test --release` step (so the same feature
/// set: nothing is rebuilt after it), restricted to the lane's test targets.
fn build_tests(lane_tests: &[(&str, &[&str])]) -> Result<Vec<(String, PathBuf)>> {
    header("kernel lane: cargo test --release --no-run (the lane's test executables)");
    let mut c = cargo();
    c.args(["test", "--workspace"]).args(HOST_EXCLUDE).args([
        "--release",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for (t, _) in lane_tests {
        c.args(["--test", t]);
    }
    let line = super::describe(&c);
    let mut exes = cargo_executables(&mut c, "test")?;
    lane_tests
        .iter()
        .map(|(t, _)| {
            exes.remove(*t)
                .map(|p| (t.to_string(), p))
                .with_context(|| format!("`{line}` reported no executable for the test {t}"))
        })
        .collect()
}

/// One test executable's run in the guest.
struct Run {
    name: String,
    exe: PathBuf,
    /// Its arguments after `--test-threads=1`.
    args: Vec<String>,
    /// How many of its tests that selects (before any `--skip`).
    selected: usize,
}

/// libtest's options that take a value as the next argument (`--skip NAME`, ...); every other
/// argument that does not start with `-` is a name filter.
const LIBTEST_VALUE_OPTS: [&str; 7] = [
    "--skip",
    "--test-threads",
    "--format",
    "--color",
    "--logfile",
    "-Z",
    "--shuffle-seed",
];

/// (options, name filters) of libtest arguments.
fn split_libtest_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut opts, mut filters) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with('-') {
            opts.push(a.clone());
            if LIBTEST_VALUE_OPTS.contains(&a.as_str())
                && let Some(v) = it.next()
            {
                opts.push(v.clone());
            }
        } else {
            filters.push(a.clone());
        }
    }
    (opts, filters)
}

/// The tests an executable has (`--list --format terse`: "NAME: test" lines), run on the host.
fn list_tests(exe: &Path) -> Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run `{} --list`", exe.display()))?;
    if !out.status.success() {
        bail!("`{} --list` failed ({})", exe.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// What each executable runs in the guest: the tests its filters in `lane_tests` (normally
/// [`LANE_TESTS`]) pick (all if none), and of those only the ones the lane's own name filters
/// in `extra` match (libtest's rules: a substring, or the whole name with `--exact`);
/// `extra`'s options go along. An executable with lane filters gets the chosen names with
/// `--exact`, so that `extra`'s filters narrow the selection rather than add to it (libtest
/// ORs its filters). Executables with nothing chosen are left out.
fn plan_runs(
    tests: &[(String, PathBuf)],
    lane_tests: &[(&str, &[&str])],
    extra: &[String],
) -> Result<Vec<Run>> {
    let (opts, filters) = split_libtest_args(extra);
    let exact = opts.iter().any(|o| o == "--exact");
    let wanted = |name: &str| {
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            })
    };
    let mut runs = Vec::new();
    for ((name, exe), (_, lane)) in tests.iter().zip(lane_tests) {
        let all = list_tests(exe)?;
        let chosen: Vec<String> = all
            .iter()
            .filter(|t| lane.is_empty() || lane.iter().any(|f| t.contains(f)))
            .filter(|t| wanted(t))
            .cloned()
            .collect();
        if chosen.is_empty() {
            println!(
                "kernel lane: {name}: none of its {} tests selected; left out",
                all.len()
            );
            continue;
        }
        let args = if lane.is_empty() {
            extra.to_vec()
        } else {
            let mut a: Vec<String> = opts.iter().filter(|o| *o != "--exact").cloned().collect();
            a.push("--exact".into());
            a.extend(chosen.iter().cloned());
            a
        };
        println!(
            "kernel lane: {name}: {} of its {} tests{}",
            chosen.len(),
            all.len(),
            if lane.is_empty() && filters.is_empty() {
                String::new()
            } else {
                format!(" ({})", chosen.join(", "))
            }
        );
        runs.push(Run {
            name: name.clone(),
            exe: exe.clone(),
            args,
            selected: chosen.len(),
        });
    }
    Ok(runs)
}

// ---------------------------------------------------------------------------------------------
// The initramfs

/// The guest's /init (busybox sh). Everything run-specific is in the share's lane.sh.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
: > /tmp/insmod-failed
: > /tmp/insmod.log
# "File exists": the kernel already loaded it on demand (request_module, through busybox
# modprobe and the modules.dep shipped here), e.g. drbg asks for sha512 and jitterentropy.
while read -r ko; do
    if ! err=$(insmod "$ko" 2>&1); then
        case "$err" in
        *"File exists"*) ;;
        *) echo "$ko" >> /tmp/insmod-failed; echo "$err" >> /tmp/insmod.log ;;
        esac
    fi
done < /etc/lane-modules
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /host; then
    cp /tmp/insmod-failed /tmp/insmod.log /host/out/
    ip link set lo up
    echo "lane: kernel $(uname -r), running /host/lane.sh"
    sh /host/lane.sh
    sync
else
    echo "lane: mounting the 9p share failed"; cat /tmp/insmod.log
fi
poweroff -f
"#;

/// What every kernel's initramfs holds: the directories, /init, static busybox with its applet
/// links, the host's real tools and the shared libraries they, the test executables and the
/// binaries load (the executables and binaries themselves go over the 9p share).
fn base_tree(tests: &[(String, PathBuf)], bins: &[(String, PathBuf)]) -> Result<Tree> {
    let mut fsys = Tree::default();
    for d in [
        "proc", "sys", "dev", "tmp", "run", "host", "etc", "root", "bin",
    ] {
        fsys.dir(d);
    }
    fsys.symlink("sbin", "bin");
    fsys.symlink("usr/bin", "../bin");
    fsys.symlink("usr/sbin", "../bin");
    fsys.symlink("var/run", "../run");
    // The kernel opens /dev/console for /init's stdio before anything is mounted.
    fsys.char_dev("dev/console", 5, 1);
    fsys.file("init", 0o755, INIT.as_bytes().to_vec());

    // Static busybox with its applets as links, except those we bring the real tool for
    // (busybox's `ip` lacks `netns`, `-n` and XDP).
    let busybox = which(&["/bin/busybox", "/usr/bin/busybox"])?;
    let bb = fs::read(&busybox)?;
    fsys.file("bin/busybox", 0o755, bb);
    let list = cmd(busybox.to_str().context("busybox path")?)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    let mut real_tools = Vec::new();
    for (name, candidates, needed) in REAL_TOOLS {
        match which(candidates) {
            Ok(p) => real_tools.push((*name, p)),
            Err(e) if *needed => {
                return Err(e.context(format!("the lane's guest needs the host's {name}")));
            }
            Err(_) => println!(
                "kernel lane: no {name} on the host ({}): the guest {}",
                candidates.join(", "),
                if list
                    .stdout
                    .split(|b| b.is_ascii_whitespace())
                    .any(|a| a == name.as_bytes())
                {
                    "has busybox's"
                } else {
                    "goes without"
                }
            ),
        }
    }
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !real_tools.iter().any(|(n, _)| *n == applet) {
            fsys.symlink(&format!("bin/{applet}"), "busybox");
        }
    }

    let mut libs = BTreeSet::new();
    for (name, path) in &real_tools {
        fsys.file(&format!("bin/{name}"), 0o755, fs::read(path)?);
        libs.extend(shared_libs(path)?);
    }
    for (_, exe) in tests.iter().chain(bins) {
        libs.extend(shared_libs(exe)?);
    }
    for lib in &libs {
        let data = fs::read(lib).with_context(|| format!("reading {}", lib.display()))?;
        fsys.file(rel(lib)?, 0o755, data);
    }
    Ok(fsys)
}

/// Writes a kernel's initramfs (the base and its modules); returns its size.
fn build_initramfs(base: &Tree, kernel: &kernels::Kernel, kos: &[Ko], out: &Path) -> Result<u64> {
    let mut fsys = base.clone();
    // Modules, in load order, uncompressed (busybox's insmod and modprobe take plain .ko
    // files; the kernel's own decompression is not in every config).
    let moddir = format!("lib/modules/{}", kernel.kver);
    let mut order = String::new();
    for ko in kos {
        let path = format!("{moddir}/{}", ko.rel);
        fsys.file(&path, 0o644, ko.contents()?);
        order.push_str(&format!("/{path}\n"));
    }
    fsys.file("etc/lane-modules", 0o644, order.into_bytes());
    // Enough for busybox modprobe (the kernel's on-demand loads) to find what is included;
    // modules.dep names the files as they are here.
    for f in ["modules.dep", "modules.alias", "modules.builtin"] {
        let p = kernel.modules.join(f);
        if p.is_file() {
            let text =
                fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            fsys.file(
                &format!("{moddir}/{f}"),
                0o644,
                uncompressed_names(&text).into_bytes(),
            );
        }
    }

    let cpio = fsys.to_cpio();
    let mut gz = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = gz.stdin.take().context("gzip stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&cpio));
    let mut compressed = Vec::new();
    gz.stdout
        .take()
        .context("gzip stdout")?
        .read_to_end(&mut compressed)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer thread panicked"))??;
    let st = gz.wait()?;
    if !st.success() {
        bail!("gzip failed ({st})");
    }
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, &compressed)?;
    fs::rename(&tmp, out)?;
    Ok(compressed.len() as u64)
}

/// The compressions Debian's module packages use: (suffix after `.ko`, tool, package).
const KO_COMPRESSIONS: [(&str, &str, &str); 3] = [
    (".xz", "xz", "xz-utils"),
    (".zst", "zstd", "zstd"),
    (".gz", "gzip", "gzip"),
];

/// modules.dep (or alias, builtin) with `.ko.xz`/`.ko.zst`/`.ko.gz` names as `.ko`.
fn uncompressed_names(text: &str) -> String {
    KO_COMPRESSIONS
        .iter()
        .fold(text.to_string(), |t, (suffix, _, _)| {
            t.replace(&format!(".ko{suffix}"), ".ko")
        })
}

/// A module file of a kernel.
struct Ko {
    /// In the unpacked kernel.
    src: PathBuf,
    /// Its path under `lib/modules/<kver>/` in the guest, always `.ko`.
    rel: String,
    /// What /proc/modules calls it: "aesni-intel.ko.xz" is "aesni_intel".
    name: String,
}

impl Ko {
    fn new(src: PathBuf, moddir: &Path) -> Result<Ko> {
        let rel = src
            .strip_prefix(moddir)
            .ok()
            .and_then(|r| r.to_str())
            .with_context(|| {
                format!("module {} is not under {}", src.display(), moddir.display())
            })?;
        let rel = uncompressed_names(rel);
        let Some(stem) = rel.strip_suffix(".ko") else {
            bail!(
                "module file {} is neither .ko nor .ko.xz/.ko.zst/.ko.gz",
                src.display()
            );
        };
        let name = stem.rsplit('/').next().unwrap_or(stem).replace('-', "_");
        Ok(Ko { src, rel, name })
    }

    /// The plain ELF object.
    fn contents(&self) -> Result<Vec<u8>> {
        let s = self.src.to_string_lossy();
        let Some((_, tool, package)) = KO_COMPRESSIONS
            .iter()
            .find(|(suffix, _, _)| s.ends_with(&format!(".ko{suffix}")))
        else {
            return fs::read(&self.src).with_context(|| format!("reading {s}"));
        };
        let out = cmd(tool)
            .arg("-dc")
            .arg(&self.src)
            .output()
            .with_context(|| {
                format!("failed to run `{tool}` to decompress module {s} (package {package})")
            })?;
        if !out.status.success() {
            bail!(
                "`{tool} -dc {s}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }
}

/// A kernel's config: `CONFIG_X=value` as (X, Some(value)), `# CONFIG_X is not set` as
/// (X, None); options the kernel does not have are absent.
fn kernel_config(k: &kernels::Kernel) -> Result<BTreeMap<String, Option<String>>> {
    let text =
        fs::read_to_string(&k.config).with_context(|| format!("reading {}", k.config.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            if let Some(opt) = l
                .strip_prefix("# ")
                .and_then(|r| r.strip_suffix(" is not set"))
            {
                return Some((opt.to_string(), None));
            }
            let (k, v) = l.split_once('=')?;
            k.starts_with("CONFIG_")
                .then(|| (k.to_string(), Some(v.to_string())))
        })
        .collect())
}

/// The module files of [`MODULES`] and their dependencies for `kernel`, dependencies first,
/// each once (`modprobe -d <root> -S <kver> --show-depends`; modules built into the kernel
/// print `builtin`), following each entry's rule (see [`Need`]).
fn resolve_modules(kernel: &kernels::Kernel) -> Result<Vec<Ko>> {
    let config = kernel_config(kernel)?;
    let mut kos: Vec<Ko> = Vec::new();
    let (mut builtin, mut absent) = (Vec::new(), Vec::new());
    for need in MODULES {
        if let Some(opt) = need.only_if {
            let why = match config.get(opt) {
                Some(Some(v)) if v == "y" || v == "m" => None,
                Some(Some(v)) => Some(format!("{opt}={v}")),
                Some(None) => Some(format!("{opt} is not set")),
                None => Some(format!("{opt} does not exist in this kernel")),
            };
            if let Some(why) = why {
                absent.push(format!("{} ({why})", need.names.join("/")));
                continue;
            }
        }
        let mut tried = Vec::new();
        let mut lines = None;
        for m in need.names {
            let out = cmd("modprobe")
                .arg("-d")
                .arg(&kernel.root)
                .args(["-S", &kernel.kver, "--show-depends", m])
                .output()
                .context("failed to run `modprobe` (package kmod)")?;
            if out.status.success() {
                lines = Some((*m, String::from_utf8_lossy(&out.stdout).into_owned()));
                break;
            }
            tried.push(format!(
                "{m}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let Some((m, lines)) = lines else {
            bail!(
                "module {} not found for {} (neither a module nor built in): {}; if the kernel \
                 renamed or dropped it, give it the new name or an `only_if` rule in MODULES \
                 (xtask/src/kernel_lane.rs)",
                need.names.join("/"),
                kernel.kver,
                tried.join("; ")
            );
        };
        for l in lines.lines() {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("insmod"), Some(path)) => {
                    let ko = Ko::new(PathBuf::from(path), &kernel.modules)?;
                    if !kos.iter().any(|k| k.rel == ko.rel) {
                        kos.push(ko);
                    }
                }
                (Some("builtin"), Some(b)) if b == m || b == m.replace('-', "_") => {
                    builtin.push(m);
                }
                (Some("builtin"), _) => {}
                _ => bail!("unexpected `modprobe --show-depends {m}` line: {l}"),
            }
        }
    }
    println!(
        "kernel lane: {} ({}): {} module files; built in: {}; left out by rule: {}",
        kernel.kver,
        kernel.series.name,
        kos.len(),
        if builtin.is_empty() {
            "-".to_string()
        } else {
            builtin.join(" ")
        },
        if absent.is_empty() {
            "-".to_string()
        } else {
            absent.join(", ")
        }
    );
    Ok(kos)
}

/// The absolute paths `ldd` prints for a dynamically linked executable (the loader included);
/// none for a static one.
fn shared_libs(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd("ldd")
        .arg(exe)
        .output()
        .context("failed to run `ldd`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "`ldd {}` failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for l in text.lines() {
        if l.contains("not found") {
            bail!("`ldd {}`: {}", exe.display(), l.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no path.
        let path = match l.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn which(candidates: &[&str]) -> Result<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .with_context(|| format!("none of {} exists", candidates.join(", ")))
}

/// An absolute host path as a path inside the archive.
fn rel(p: &Path) -> Result<&str> {
    p.to_str()
        .and_then(|s| s.strip_prefix('/'))
        .with_context(|| format!("{} is not an absolute UTF-8 path", p.display()))
}

#[derive(Clone)]
enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    CharDev(u32, u32),
}

/// The archive's tree, by path; parents are added with their children. Written in path order,
/// so every directory comes before what it holds (the kernel does not create parents).
#[derive(Default, Clone)]
struct Tree(BTreeMap<String, Node>);

impl Tree {
    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn dir(&mut self, path: &str) {
        self.parents(path);
        self.0.entry(path.to_string()).or_insert(Node::Dir);
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.0.insert(path.to_string(), Node::File { mode, data });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.0
            .insert(path.to_string(), Node::Symlink(target.to_string()));
    }

    fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.0.insert(path.to_string(), Node::CharDev(major, minor));
    }

    /// The "newc" cpio format (what the kernel unpacks): per entry a 110-byte header of
    /// "070701" and 13 eight-digit hex fields, the NUL-terminated name, padding to 4 bytes, the
    /// data, padding to 4 bytes; a "TRAILER!!!" entry ends the archive.
    fn to_cpio(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, node)) in self.0.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040755, &[], (0, 0)),
                Node::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Node::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Node::CharDev(ma, mi) => (0o020600, &[], (*ma, *mi)),
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            cpio_entry(&mut out, ino as u32 + 1, mode, nlink, rdev, name, data);
        }
        cpio_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn cpio_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

// ---------------------------------------------------------------------------------------------
// The guest run

/// A directory removed (with what it holds) when this drops, on every path out.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> Result<TempDir> {
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// QEMU, killed (by its PID, through `Child::kill`) and reaped if it still runs when this drops.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Single-quotes a word for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Started in the background by lane.sh (SECS replaced): after SECS s in the guest, every
/// user process's threads with their kernel stacks to `watchdog-stacks.log`, the blocked tasks
/// (sysrq w) into the kernel log, and dmesg.
const WATCHDOG: &str = r#"( sleep SECS
  echo "lane: watchdog: still running after SECS s; task stacks and dmesg to /host/out"
  for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
    [ -n "$c" ] || continue
    echo "== ${p#/proc/}: $c"
    for t in $p/task/*; do
      echo "-- ${t##*/} $(cat $t/comm) $(cat $t/wchan 2>/dev/null)"
      cat $t/stack 2>/dev/null
    done
  done > /host/out/watchdog-stacks.log 2>&1
  echo w > /proc/sysrq-trigger
  dmesg > /host/out/dmesg.log
  sync ) &
"#;

/// Tests counted from what a guest wrote back (zero where it wrote nothing).
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    /// From QEMU's start to its exit.
    guest_secs: Option<f64>,
}

/// How QEMU ended.
enum End {
    Exited(std::process::ExitStatus),
    TimedOut,
    Interrupted,
}

/// Boots the kernel with the tests, copies back what the guest wrote (also after a timeout),
/// counts the tests and checks the modules; the result says what went wrong, if anything.
#[allow(clippy::too_many_arguments)]
fn boot_and_collect(
    kernel: &kernels::Kernel,
    kos: &[Ko],
    initramfs: &Path,
    runs: &[Run],
    bins: &[(String, PathBuf)],
    env: &[(&str, String)],
    timeout: Duration,
    share: &Path,
    logs: &Path,
) -> (Tally, Result<()>) {
    let mut tally = Tally::default();
    let r = boot_and_collect_into(
        &mut tally, kernel, kos, initramfs, runs, bins, env, timeout, share, logs,
    );
    (tally, r)
}

#[allow(clippy::too_many_arguments)]
fn boot_and_collect_into(
    tally: &mut Tally,
    kernel: &kernels::Kernel,
    kos: &[Ko],
    initramfs: &Path,
    runs: &[Run],
    bins: &[(String, PathBuf)],
    env: &[(&str, String)],
    timeout: Duration,
    share: &Path,
    logs: &Path,
) -> Result<()> {
    // The share: the executables and binaries side by side, the script /init runs, and out/
    // for what comes back.
    fs::create_dir_all(share.join("bin"))?;
    fs::create_dir_all(share.join("out"))?;
    let exes = runs
        .iter()
        .map(|r| (&r.name, &r.exe))
        .chain(bins.iter().map(|(n, p)| (n, p)));
    for (name, exe) in exes {
        let dst = share.join("bin").join(name);
        if fs::hard_link(exe, &dst).is_err() {
            fs::copy(exe, &dst).with_context(|| format!("copying {}", exe.display()))?;
        }
    }
    // VPN_LANE=1: tests that skip where the kernel lacks something (kernel pktgen on the host)
    // must fail here instead.
    let mut script = String::from(
        "cd /tmp
export VPN_LANE=1
",
    );
    for (k, v) in env {
        script.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    // Shortly before the host kills QEMU: what every process waits in, and the blocked tasks
    // (sysrq w) with dmesg, so that a hang says where it hangs.
    let watchdog = timeout
        .as_secs()
        .saturating_sub(60)
        .max(timeout.as_secs() / 2);
    script.push_str(&WATCHDOG.replace("SECS", &watchdog.to_string()));
    for r in runs {
        let mut args = vec!["--test-threads=1".to_string()];
        args.extend(r.args.iter().cloned());
        let a: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
        script.push_str(&format!(
            "echo 'lane: ==>' {name} {a}\n\
             cut -d' ' -f1 /proc/uptime > /host/out/{name}.time\n\
             ( /host/bin/{name} {a} 2>&1; echo $? > /host/out/{name}.rc ) | tee /host/out/{name}.log\n\
             cut -d' ' -f1 /proc/uptime >> /host/out/{name}.time\n",
            name = r.name,
            a = a.join(" ")
        ));
    }
    script.push_str(
        "dmesg > /host/out/dmesg.log\n\
         cut -d' ' -f1 /proc/modules > /host/out/modules.loaded\n\
         echo done > /host/out/finished\n",
    );
    fs::write(share.join("lane.sh"), script)?;

    let mut c = Command::new("qemu-system-x86_64");
    // Two vCPUs: vpnd runs a worker per queue and kernel pktgen a thread per CPU, as on a
    // node; under TCG it costs no time against one here.
    // One host thread runs both vCPUs in turn (`thread=single`). With one thread per vCPU,
    // code the kernel patches while the other vCPU runs it (the BPF dispatcher, which every
    // XDP attach and every live-frames test run rewrites with int3 and text_poke) was seen
    // executed stale: an int3 oops in bpf_dispatcher_xdp_func in the 6.12 guest, two
    // generator threads running live frames. On hardware the IPI that ends text_poke
    // serialises both CPUs; under multi-threaded TCG it did not.
    c.args([
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
    ])
    .args([
        "-nographic",
        "-nodefaults",
        "-nic",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-no-reboot")
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .args([
        "-append",
        "console=ttyS0 quiet panic=-1 rdinit=/init",
        "-virtfs",
    ])
    .arg(format!(
        "local,path={},mount_tag=host,security_model=none",
        share.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    header(&format!(
        "kernel lane: booting {} ({}) under QEMU (TCG), timeout {} s",
        kernel.kver,
        kernel.series.name,
        timeout.as_secs()
    ));
    if logs.exists() {
        fs::remove_dir_all(logs)?;
    }
    fs::create_dir_all(logs)?;
    let serial_log = logs.join("serial.log");
    let mut serial = fs::File::create(&serial_log)?;
    // Ctrl-C or a SIGTERM to us alone: stop QEMU and clean up instead of dying with it running.
    let interrupted = interrupt_flag()?;
    let start = Instant::now();
    let mut qemu = Qemu(c.spawn().context(
        "failed to start qemu-system-x86_64 (package qemu-system-x86; `apt-get install \
         qemu-system-x86`)",
    )?);
    println!("kernel lane: qemu pid {}", qemu.0.id());
    let console = qemu.0.stdout.take().context("qemu stdout")?;
    // The serial console, line by line, to our stdout and serial.log; ends when QEMU exits
    // (or is killed) and the pipe closes.
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(console);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
            println!("    guest| {line}");
            let _ = writeln!(serial, "{line}");
            buf.clear();
        }
    });
    let end = loop {
        if let Some(st) = qemu.0.try_wait()? {
            break End::Exited(st);
        }
        if interrupted.load(Ordering::Relaxed) {
            break End::Interrupted;
        }
        if start.elapsed() > timeout {
            break End::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Kills and reaps QEMU if it still runs.
    drop(qemu);
    let _ = reader.join();
    let elapsed = start.elapsed().as_secs_f64();
    tally.guest_secs = Some(elapsed);

    // What came back, whatever the end.
    let out = share.join("out");
    for e in fs::read_dir(&out)? {
        let e = e?;
        fs::copy(e.path(), logs.join(e.file_name()))?;
    }
    let mut problems = Vec::new();
    match end {
        End::Exited(_) if out.join("finished").exists() => {}
        End::Exited(st) => problems.push(format!(
            "the guest powered off ({st}) after {elapsed:.0} s without finishing the tests \
             (serial console in {})",
            serial_log.display()
        )),
        End::TimedOut => problems.push(format!(
            "the guest did not power off within {} s: QEMU killed (serial console in {}{})",
            timeout.as_secs(),
            serial_log.display(),
            if out.join("watchdog-stacks.log").exists() {
                "; task stacks in watchdog-stacks.log, blocked tasks in dmesg.log"
            } else {
                ""
            }
        )),
        End::Interrupted => problems.push("interrupted: QEMU killed".to_string()),
    }
    let failed_mods = fs::read_to_string(out.join("insmod-failed")).unwrap_or_default();
    if !failed_mods.trim().is_empty() {
        let log = fs::read_to_string(out.join("insmod.log")).unwrap_or_default();
        problems.push(format!(
            "modules failed to load: {} ({})",
            failed_mods.split_whitespace().collect::<Vec<_>>().join(" "),
            log.trim()
        ));
    }
    if out.join("finished").exists() {
        let loaded = fs::read_to_string(out.join("modules.loaded")).unwrap_or_default();
        let loaded: BTreeSet<&str> = loaded.split_whitespace().collect();
        let missing: Vec<&str> = kos
            .iter()
            .map(|ko| ko.name.as_str())
            .filter(|m| !loaded.contains(m))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "modules not loaded in the guest: {}",
                missing.join(" ")
            ));
        }
    }
    for r in runs {
        let name = &r.name;
        let Ok(log) = fs::read_to_string(out.join(format!("{name}.log"))) else {
            println!("    {name:<14} not run");
            continue;
        };
        let (p, f, running) = count_tests(&log);
        tally.passed += p;
        tally.failed += f;
        let secs = fs::read_to_string(out.join(format!("{name}.time")))
            .ok()
            .and_then(|t| {
                let v: Vec<f64> = t
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (v.len() == 2).then(|| v[1] - v[0])
            });
        println!(
            "    {name:<14} {p} passed, {f} failed of {} selected, {}",
            r.selected,
            secs.map_or("no time".into(), |s| format!("{s:.1} s in the guest"))
        );
        let rc = fs::read_to_string(out.join(format!("{name}.rc"))).unwrap_or_default();
        let rc = rc.trim();
        if rc != "0" {
            problems.push(format!(
                "{name} {} (output in {})",
                match (rc, &running) {
                    ("", Some(t)) => format!("did not finish: stuck in {t}"),
                    ("", None) => "did not finish".to_string(),
                    (rc, _) => format!("exited with {rc}"),
                },
                logs.join(format!("{name}.log")).display()
            ));
        }
    }
    println!(
        "==> kernel lane {} ({}): {} tests passed, {} failed (guest ran {elapsed:.0} s)",
        kernel.kver, kernel.series.name, tally.passed, tally.failed
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// (passed, failed, the test still running) of a test executable's output: from libtest's
/// `test result:` line, or where it never got there, its `test NAME ... ok|FAILED` lines and
/// the `test NAME ... ` it ends with.
fn count_tests(log: &str) -> (u64, u64, Option<String>) {
    let (mut p, mut f, mut summary) = (0, 0, false);
    let (mut tp, mut tf) = (0, 0);
    for l in log.lines() {
        if let Some(rest) = l.strip_prefix("test result: ") {
            p += count_before(rest, " passed");
            f += count_before(rest, " failed");
            summary = true;
        } else if let Some((_, status)) =
            l.strip_prefix("test ").and_then(|r| r.split_once(" ... "))
        {
            match status.trim() {
                "ok" => tp += 1,
                "FAILED" => tf += 1,
                _ => {}
            }
        }
    }
    if summary {
        return (p, f, None);
    }
    let running = log
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("test "))
        .and_then(|r| r.strip_suffix(" ... ").or_else(|| r.strip_suffix(" ...")))
        .map(str::to_string);
    (tp, tf, running)
}

/// In "ok. 3 passed; 0 failed; ...", the number before `what`.
fn count_before(s: &str, what: &str) -> u64 {
    s.find(what)
        .and_then(|i| s[..i].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_finished_and_an_unfinished_run() {
        let done = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\n\
                    test result: FAILED. 1 passed; 1 failed; 0 ignored\n";
        assert_eq!(count_tests(done), (1, 1, None));
        let hung = "running 3 tests\ntest a ... ok\ntest b ... ok\ntest c_hangs ... ";
        assert_eq!(count_tests(hung), (2, 0, Some("c_hangs".to_string())));
    }

    #[test]
    fn table_errors_leave_out_the_details() {
        let e = "the guest did not power off within 12 s: QEMU killed (serial console in \
                 /x/serial.log); kernel_backend did not finish (output in /x/k.log)";
        assert_eq!(
            brief(e, 100),
            "the guest did not power off within 12 s: QEMU killed; kernel_backend did not finish"
        );
    }

    #[test]
    fn compressed_module_names_become_plain() {
        let dep = "kernel/net/ipv4/esp4.ko.xz: kernel/net/xfrm/xfrm_algo.ko.xz\n\
                   kernel/a.ko.zst:\n";
        assert_eq!(
            uncompressed_names(dep),
            "kernel/net/ipv4/esp4.ko: kernel/net/xfrm/xfrm_algo.ko\nkernel/a.ko:\n"
        );
        let ko = Ko::new(
            PathBuf::from("/r/lib/modules/7.3/kernel/arch/x86/crypto/aesni-intel.ko.xz"),
            Path::new("/r/lib/modules/7.3"),
        )
        .unwrap();
        assert_eq!(ko.rel, "kernel/arch/x86/crypto/aesni-intel.ko");
        assert_eq!(ko.name, "aesni_intel");
    }
}
