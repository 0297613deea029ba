//! The second-kernel test lane: root-only tests run as root on Debian's 6.1 kernel booted
//! under QEMU (TCG: KVM does not work on these machines). See `../shared/notes/second-kernel.md`.
//! [`LANE_TESTS`] names the test executables and, for each, the tests it runs there.
//!
//! 1. Installs what is missing (`qemu-system-x86`, `linux-image-amd64`, `busybox-static`,
//!    `kmod` for `modprobe -S`).
//! 2. Builds on the host what the guest runs: vpn-userspace's binaries (`vpnd`, `vpnctl`,
//!    `vpn-pktgen`) with the same `cargo build --release --bins` as `cargo xtask test`, and the
//!    test executables (`cargo test --no-run`, same package selection as the host `cargo test`
//!    step), so nothing is rebuilt after `cargo xtask test`'s own steps. Each executable's
//!    tests are listed on the host (`--list`) to pick what the guest runs.
//! 3. Writes `target/kernel-lane/initramfs.cpio.gz`: static busybox, the host's real `ip`,
//!    `ethtool`, `ping`, `nsenter` (and `sysctl`, `iperf3` where the host has them) with the
//!    shared libraries `ldd` names (the test executables and binaries need the same loader and
//!    libc), the 6.1 modules in the order `modprobe --show-depends` gives, and an `/init` that
//!    mounts proc, sys, devtmpfs, bpffs and the 9p share, loads the modules, brings up lo, runs
//!    the share's `lane.sh` and powers off.
//! 4. Shares a temporary directory over 9p (the test executables and the binaries side by
//!    side, as in `target/release/`, so the tests' `current_exe().parent()` lookups find
//!    `vpnd` and `vpn-pktgen`; and `lane.sh`; the guest writes each test's output, exit status
//!    and time back), boots the kernel, streams the serial console, and kills QEMU (by its PID)
//!    if it has not powered off within the timeout.
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
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{HOST_EXCLUDE, cargo, cmd, deb_installed, header, is_root, item, run, workspace_root};

/// Debian packages of the lane (on top of `DEB_PACKAGES`, which brings iproute2 and ethtool).
const LANE_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    // modprobe -S <kver> --show-depends (linux-image depends on it too).
    "kmod",
];

/// The test executables of `vpn-tests` the lane runs, in this order, each with the name
/// filters (libtest's: a test runs if its name contains one of them) that pick the tests it
/// runs in the guest; none: all of its tests. Extra arguments of the lane narrow this further
/// (see [`plan_runs`]).
const LANE_TESTS: &[(&str, &[&str])] = &[
    ("xdp_fixtures", &[]),
    ("attach_netns", &[]),
    // Kernel pktgen exists here (the host kernel has no module), so vpn-pktgen's kernel engine
    // runs against the real thing only in the lane: by name, and as `auto`'s choice.
    ("pktgen", &["kernel_pktgen", "vpn_pktgen_json_summary"]),
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

/// Modules loaded in the guest (each after its dependencies), in this order. virtio_pci,
/// 9pnet_virtio and 9p carry the share. The crypto modules come before the RNG ones: drbg
/// self-tests its CTR variants on load and fails them without `ctr`. The RNG modules let ESP
/// SAs initialise their crypto (second-kernel.md); the GCM pieces are what
/// `rfc4106(gcm(aes))` SAs ask for.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "xfrm_user",
    "aesni_intel",
    "ctr",
    "gcm",
    "ghash_clmulni_intel",
    "seqiv",
    "echainiv",
    "sha3_generic",
    "sha512_generic",
    "jitterentropy_rng",
    "drbg",
    "esp4",
    "esp6",
    "8021q",
    "pktgen",
    "vxlan",
    // The two-site topology: a bridge joins the nodes' wires; the East tenant host's VLAN
    // helper is a TC program (clsact qdisc and the bpf classifier).
    "bridge",
    "sch_ingress",
    "cls_bpf",
    // Route-based IPsec (xfrm interfaces; brings tunnel4, tunnel6, xfrm6_tunnel). AF_PACKET is
    // built into Debian's 6.1 (`builtin`). Not here: netdevsim (Debian does not build it),
    // xfrm4_tunnel (IP-in-IP xfrm, which nothing uses).
    "xfrm_interface",
    // A tenant's VRF (the kernel backend's per-tenant routing context, beside namespaces).
    "vrf",
    "af_packet",
];

/// How long the guest may take from QEMU's start to power-off before it is killed. Boot, the
/// lane's tests and power-off took about 75 s on a busy 2-core machine (TCG); this is generous.
pub(crate) const DEFAULT_TIMEOUT_SECS: u64 = 600;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Kill QEMU if the guest has not powered off after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Extra arguments for the test executables in the guest (after `--`), e.g. a test name
    /// filter. `--test-threads=1` is always passed.
    #[arg(last = true)]
    args: Vec<String>,
}

/// `cargo xtask test-kernel`.
pub(crate) fn test_kernel(a: &Args) -> Result<()> {
    super::ensure_toolchain()?;
    let start = Instant::now();
    let r = run_lane(&a.args, Duration::from_secs(a.timeout));
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

/// Installs, builds, boots the 6.1 kernel with the tests, and fails if any test failed or the
/// guest did not report within `timeout`. `guest_args` are the lane's extra arguments for the
/// test executables (see [`plan_runs`]).
pub(crate) fn run_lane(guest_args: &[String], timeout: Duration) -> Result<()> {
    run_lane_of(LANE_TESTS, guest_args, &[], timeout)
}

/// Where the guest's `/host/out/*` lands after a lane run (emptied when the next one boots).
pub(crate) fn logs_dir() -> PathBuf {
    workspace_root().join("target/kernel-lane/logs")
}

/// [`run_lane`] with other test executables and filters than [`LANE_TESTS`] (same shape), and
/// extra environment variables exported in the guest before the tests run (e.g. the path of a
/// benchmark's output under `/host/out/`).
pub(crate) fn run_lane_of(
    lane_tests: &[(&str, &[&str])],
    guest_args: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<()> {
    ensure_lane_packages()?;
    let mut kernel = find_kernel()?;
    kernel.kos = resolve_modules(&kernel)?;
    println!(
        "kernel lane: kernel {} ({})",
        kernel.kver,
        kernel.vmlinuz.display()
    );

    let bins = build_lane_bins()?;
    let tests = build_tests(lane_tests)?;
    let runs = plan_runs(&tests, lane_tests, guest_args)?;
    if runs.is_empty() {
        println!(
            "==> kernel lane: no lane test matches `{}`; not booting",
            guest_args.join(" ")
        );
        return Ok(());
    }
    let dir = workspace_root().join("target/kernel-lane");
    fs::create_dir_all(&dir)?;

    let initramfs = dir.join("initramfs.cpio.gz");
    let t = Instant::now();
    let (size, modules) = build_initramfs(&kernel, &tests, &bins, &initramfs)?;
    println!(
        "kernel lane: {} ({} modules, {:.1} MiB, {:.1} s)",
        initramfs.display(),
        modules,
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    let share = TempDir::new(dir.join(format!("share-{}", std::process::id())))?;
    let logs = logs_dir();
    let r = boot_and_collect(
        &kernel, &initramfs, &runs, &bins, env, timeout, &share.0, &logs,
    );
    drop(share);
    r
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
        "setup: installing {} with apt-get (the kernel only puts files into /boot and \
         /lib/modules; the running kernel is not touched)",
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

struct Kernel {
    kver: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
    /// The .ko files the guest loads, in load order.
    kos: Vec<PathBuf>,
}

/// The newest `/boot/vmlinuz-6.1.*` that has its modules under `/lib/modules/<kver>`.
fn find_kernel() -> Result<Kernel> {
    let mut found: Vec<(Vec<u64>, String)> = Vec::new();
    for e in fs::read_dir("/boot").context("reading /boot")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(kver) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        if !kver.starts_with("6.1.") || !Path::new("/lib/modules").join(kver).is_dir() {
            continue;
        }
        let key = kver
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        found.push((key, kver.to_string()));
    }
    found.sort();
    let Some((_, kver)) = found.pop() else {
        bail!(
            "no Debian 6.1 kernel: no /boot/vmlinuz-6.1.* with modules in /lib/modules \
             (is linux-image-amd64 installed? `apt-get install linux-image-amd64`)"
        );
    };
    Ok(Kernel {
        vmlinuz: PathBuf::from(format!("/boot/vmlinuz-{kver}")),
        modules: PathBuf::from(format!("/lib/modules/{kver}")),
        kver,
        kos: Vec::new(),
    })
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

/// Writes the initramfs; returns its size and the number of modules in it.
fn build_initramfs(
    kernel: &Kernel,
    tests: &[(String, PathBuf)],
    bins: &[(String, PathBuf)],
    out: &Path,
) -> Result<(u64, usize)> {
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

    // The real tools and every shared library they, the test executables and the binaries
    // load (the executables and binaries themselves go over the 9p share).
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

    // Modules, in load order.
    let mut order = String::new();
    for ko in &kernel.kos {
        let data = fs::read(ko).with_context(|| format!("reading {}", ko.display()))?;
        fsys.file(rel(ko)?, 0o644, data);
        order.push_str(&format!("{}\n", ko.display()));
    }
    fsys.file("etc/lane-modules", 0o644, order.into_bytes());
    // Enough for busybox modprobe (the kernel's on-demand loads) to find what is included.
    for f in ["modules.dep", "modules.alias", "modules.builtin"] {
        let p = kernel.modules.join(f);
        if p.is_file() {
            fsys.file(rel(&p)?, 0o644, fs::read(&p)?);
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
    Ok((compressed.len() as u64, kernel.kos.len()))
}

/// The .ko files of [`MODULES`] and their dependencies, dependencies first, each once
/// (`modprobe -S <kver> --show-depends`; modules built into the kernel print `builtin`).
fn resolve_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut kos: Vec<PathBuf> = Vec::new();
    for m in MODULES {
        let out = cmd("modprobe")
            .args(["-S", &kernel.kver, "--show-depends", m])
            .output()
            .context("failed to run `modprobe` (package kmod)")?;
        if !out.status.success() {
            bail!(
                "module {m} not found for {}: {}",
                kernel.kver,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("insmod"), Some(path)) => {
                    let p = PathBuf::from(path);
                    if !kos.contains(&p) {
                        kos.push(p);
                    }
                }
                (Some("builtin"), _) => {}
                _ => bail!("unexpected `modprobe --show-depends {m}` line: {l}"),
            }
        }
    }
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

enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    CharDev(u32, u32),
}

/// The archive's tree, by path; parents are added with their children. Written in path order,
/// so every directory comes before what it holds (the kernel does not create parents).
#[derive(Default)]
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

#[allow(clippy::too_many_arguments)]
fn boot_and_collect(
    kernel: &Kernel,
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
    c.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
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
        "kernel lane: booting {} under QEMU (TCG), timeout {} s",
        kernel.kver,
        timeout.as_secs()
    ));
    // Ctrl-C or a SIGTERM to us alone: stop QEMU and clean up instead of dying with it running.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))?;
    }
    let start = Instant::now();
    let mut qemu = Qemu(c.spawn().context(
        "failed to start qemu-system-x86_64 (package qemu-system-x86; `apt-get install \
         qemu-system-x86`)",
    )?);
    println!("kernel lane: qemu pid {}", qemu.0.id());
    let console = qemu.0.stdout.take().context("qemu stdout")?;
    if logs.exists() {
        fs::remove_dir_all(logs)?;
    }
    fs::create_dir_all(logs)?;
    let serial_log = logs.join("serial.log");
    let mut serial = fs::File::create(&serial_log)?;
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
    let status = loop {
        if let Some(st) = qemu.0.try_wait()? {
            break Some(st);
        }
        if interrupted.load(Ordering::Relaxed) {
            break None;
        }
        if start.elapsed() > timeout {
            let _ = qemu.0.kill();
            let _ = qemu.0.wait();
            let _ = reader.join();
            bail!(
                "the guest did not power off within {} s: QEMU killed (serial console in {})",
                timeout.as_secs(),
                serial_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(qemu);
    let _ = reader.join();
    let Some(status) = status else {
        bail!("interrupted: QEMU killed");
    };
    let elapsed = start.elapsed().as_secs_f64();

    // What came back.
    let out = share.join("out");
    for e in fs::read_dir(&out)? {
        let e = e?;
        fs::copy(e.path(), logs.join(e.file_name()))?;
    }
    let failed_mods = fs::read_to_string(out.join("insmod-failed")).unwrap_or_default();
    if !out.join("finished").exists() {
        bail!(
            "the guest powered off ({status}) after {elapsed:.0} s without finishing the tests \
             (serial console in {})",
            serial_log.display()
        );
    }
    let mut problems = Vec::new();
    if !failed_mods.trim().is_empty() {
        let log = fs::read_to_string(out.join("insmod.log")).unwrap_or_default();
        problems.push(format!(
            "modules failed to load: {} ({})",
            failed_mods.split_whitespace().collect::<Vec<_>>().join(" "),
            log.trim()
        ));
    }
    let loaded = fs::read_to_string(out.join("modules.loaded")).unwrap_or_default();
    let loaded: BTreeSet<&str> = loaded.split_whitespace().collect();
    let missing: Vec<String> = kernel
        .kos
        .iter()
        .map(|ko| module_name(ko))
        .filter(|m| !loaded.contains(m.as_str()))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "modules not loaded in the guest: {}",
            missing.join(" ")
        ));
    }
    let (mut passed, mut failed) = (0u64, 0u64);
    for r in runs {
        let name = &r.name;
        let rc = fs::read_to_string(out.join(format!("{name}.rc")))
            .with_context(|| format!("the guest wrote no exit status for {name}"))?;
        let log = fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        let (mut p, mut f) = (0, 0);
        for l in log.lines() {
            if let Some(rest) = l.strip_prefix("test result: ") {
                p += count_before(rest, " passed");
                f += count_before(rest, " failed");
            }
        }
        passed += p;
        failed += f;
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
        let rc = rc.trim();
        if rc != "0" {
            problems.push(format!(
                "{name} exited with {rc} on {} (output in {})",
                kernel.kver,
                logs.join(format!("{name}.log")).display()
            ));
        }
    }
    println!(
        "==> kernel lane {}: {passed} tests passed, {failed} failed (guest ran {elapsed:.0} s)",
        kernel.kver
    );
    if !problems.is_empty() {
        bail!("kernel lane: {}", problems.join("; "));
    }
    Ok(())
}

/// The name /proc/modules shows for a .ko file: "aesni-intel.ko" is "aesni_intel".
fn module_name(ko: &Path) -> String {
    ko.file_stem()
        .map(|s| s.to_string_lossy().replace('-', "_"))
        .unwrap_or_default()
}

/// In "ok. 3 passed; 0 failed; ...", the number before `what`.
fn count_before(s: &str, what: &str) -> u64 {
    s.find(what)
        .and_then(|i| s[..i].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
