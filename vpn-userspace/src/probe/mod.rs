//! What the kernel and each device offer, found out by asking them (never assumed): the
//! facts vpnd chooses its paths from, and what `vpnctl probe` shows.
//!
//! [`run`] builds a [`Report`]: the kernel, one [`Feature`] row per kernel feature, the
//! devices with their own rows, and the [`Choice`]s the product makes from all that. Every row
//! has a stable id ([`KERNEL_FEATURES`], [`DEVICE_FEATURES`]), a [`Verdict`], what the kernel
//! said, and for anything not available what that costs the product and how to get it. The
//! JSON form ([`SCHEMA`]) is documented in the README ("Kernel requirements").
//!
//! Nothing here changes the machine: the probes load tiny programs and maps that go away with
//! their fds, add ESP SAs only inside a throw-away network namespace, bind an AF_XDP socket in
//! copy mode (no driver reconfiguration) and close it, and read the rest. They never attach a
//! program to a device, mount bpffs or load a module (the kernel itself may load a crypto or
//! ESP module on demand while an SA is added, as it would for `ip xfrm state add`).

pub mod bpf;
pub mod device;
pub mod kernel;
pub mod netlink;
pub mod render;
pub mod xfrm;

use std::{io, path::PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::dataplane::{self, CarrierChoice};

/// Version of the JSON report. Bumped when a field changes meaning or goes away; new fields
/// and new row ids may appear without a bump.
pub const SCHEMA: u32 = 1;

/// What a probe found.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Available,
    Unavailable,
    /// Works with a restriction the detail names.
    Partial,
    /// Could not be found out (no root, an old kernel that cannot tell, nothing seen yet).
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Available => "available",
            Verdict::Unavailable => "unavailable",
            Verdict::Partial => "partial",
            Verdict::Unknown => "unknown",
        }
    }
}

/// A feature the report has a row for: its stable id, a title, the first kernel that has it
/// (upstream), and what the product loses without it.
#[derive(Copy, Clone, Debug)]
pub struct Spec {
    pub id: &'static str,
    pub title: &'static str,
    pub since: Option<&'static str>,
    pub cost: &'static str,
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Feature {
    pub id: &'static str,
    pub title: &'static str,
    pub verdict: Verdict,
    /// What the kernel said: the errno, the verifier's reason, a version, a setting.
    pub detail: String,
    /// The upstream kernel release that brought the feature (drivers may lag).
    pub since: Option<&'static str>,
    /// What the product loses without it (absent when available).
    pub cost: Option<String>,
    /// How to get it (absent when available or when nothing can be done).
    pub fix: Option<String>,
}

impl Spec {
    pub fn available(&self, detail: impl Into<String>) -> Feature {
        self.row(Verdict::Available, detail.into(), None)
    }

    /// A row that is not `available`, with the spec's cost and `fix`.
    pub fn row(&self, verdict: Verdict, detail: String, fix: Option<String>) -> Feature {
        let missing = verdict != Verdict::Available;
        Feature {
            id: self.id,
            title: self.title,
            verdict,
            detail,
            since: self.since,
            cost: missing.then(|| self.cost.to_string()),
            fix: if missing { fix } else { None },
        }
    }

    pub fn unavailable(&self, detail: impl Into<String>, fix: impl Into<String>) -> Feature {
        self.row(Verdict::Unavailable, detail.into(), Some(fix.into()))
    }

    pub fn unknown(&self, detail: impl Into<String>, fix: Option<String>) -> Feature {
        self.row(Verdict::Unknown, detail.into(), fix)
    }

    /// The row of a probe the kernel refused for lack of privilege.
    pub fn needs_root(&self, what: &str) -> Feature {
        self.row(
            Verdict::Unknown,
            format!("unknown (needs root): {what}"),
            Some("run vpnctl probe as root".into()),
        )
    }

    /// A refusal: `unknown (needs root)` if we lack the privilege and the kernel said EPERM or
    /// EACCES, else what `refused` makes of it.
    pub fn refusal(
        &self,
        err: &io::Error,
        privileged: bool,
        refused: impl FnOnce(String) -> Feature,
    ) -> Feature {
        let denied = matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        if denied && !privileged {
            self.needs_root(&errno_text(err))
        } else {
            refused(errno_text(err))
        }
    }
}

/// Stable ids of the kernel rows, in report order.
pub mod ids {
    pub const BPF_JIT: &str = "bpf_jit";
    pub const BPFFS: &str = "bpffs";
    pub const XDP_ADJUST_META: &str = "xdp_adjust_meta";
    pub const XDP_ADJUST_HEAD: &str = "xdp_adjust_head";
    pub const MMAPABLE_ARRAY: &str = "mmapable_array";
    pub const XDP_LIVE_FRAMES: &str = "xdp_live_frames";
    pub const AF_XDP: &str = "af_xdp";
    pub const NETDEV_XDP_FEATURES: &str = "netdev_xdp_features";
    pub const XFRM_NETLINK: &str = "xfrm_netlink";
    pub const XFRM_ESP_IPV4: &str = "xfrm_esp_ipv4";
    pub const XFRM_ESP_IPV6: &str = "xfrm_esp_ipv6";
    pub const XFRM_AEAD_AES128GCM16: &str = "xfrm_aead_aes128gcm16";
    pub const XFRM_AEAD_AES256GCM16: &str = "xfrm_aead_aes256gcm16";
    pub const XFRM_AEAD_CHACHA20POLY1305: &str = "xfrm_aead_chacha20poly1305";
    pub const KERNEL_PKTGEN: &str = "kernel_pktgen";

    // Device rows.
    pub const XDP_NATIVE: &str = "xdp_native";
    pub const AF_XDP_ZERO_COPY: &str = "af_xdp_zero_copy";
    pub const AF_XDP_COPY: &str = "af_xdp_copy";
    pub const AF_XDP_NEED_WAKEUP: &str = "af_xdp_need_wakeup";
    pub const XDP_META_RUNTIME: &str = "xdp_meta_runtime";
    pub const ESP_HW_OFFLOAD: &str = "esp_hw_offload";

    // Choices.
    pub const CHOICE_CARRIER: &str = "carrier";
    pub const CHOICE_PKTGEN_ENGINE: &str = "pktgen_engine";
    pub const CHOICE_KERNEL_BACKEND: &str = "kernel_backend";
    pub const CHOICE_XDP_MODE: &str = "xdp_mode";
    pub const CHOICE_AF_XDP_MODE: &str = "af_xdp_mode";
    pub const CHOICE_BACKEND_AUTO: &str = "backend_auto";
}

const fn spec(
    id: &'static str,
    title: &'static str,
    since: Option<&'static str>,
    cost: &'static str,
) -> Spec {
    Spec {
        id,
        title,
        since,
        cost,
    }
}

/// Every kernel row, in report order.
pub const KERNEL_FEATURES: [Spec; 15] = [
    spec(
        ids::BPF_JIT,
        "BPF JIT compiler",
        None,
        "the XDP programs run in the kernel's BPF interpreter: several times the CPU per packet",
    ),
    spec(
        ids::BPFFS,
        "bpffs at /sys/fs/bpf",
        Some("4.4"),
        "nothing is pinned until vpnd mounts it (it does at start, as root): vpnctl and \
         bpftool find no instance, and pins cannot outlive a vpnd",
    ),
    spec(
        ids::XDP_ADJUST_META,
        "XDP metadata (bpf_xdp_adjust_meta)",
        Some("4.15"),
        "vpnd carries the metadata as a 16-byte in-packet shim (bpf_xdp_adjust_head) that the \
         workers strip: same function, a little more work per redirected frame",
    ),
    spec(
        ids::XDP_ADJUST_HEAD,
        "bpf_xdp_adjust_head (the shim, tag popping)",
        Some("4.10"),
        "the XDP programs cannot load: both carriers, VLAN and VXLAN tag popping use it",
    ),
    spec(
        ids::MMAPABLE_ARRAY,
        "BPF_F_MMAPABLE array maps",
        Some("5.5"),
        "vpnd cannot load its data plane: the replay windows are memory-mapped BPF arrays \
         shared with the workers",
    ),
    spec(
        ids::XDP_LIVE_FRAMES,
        "XDP live frames (BPF_F_TEST_XDP_LIVE_FRAMES)",
        Some("5.18"),
        "vpn-pktgen's live-frames engine and dataplane-bench cannot run; vpn-pktgen uses \
         kernel pktgen or AF_XDP instead",
    ),
    spec(
        ids::AF_XDP,
        "AF_XDP sockets",
        Some("4.18"),
        "vpnd's AF_XDP workers (backend afxdp) cannot run: only kernel-backend connections \
         could carry traffic",
    ),
    spec(
        ids::NETDEV_XDP_FEATURES,
        "per-device xdp_features (netdev netlink family)",
        Some("6.3"),
        "this probe cannot tell native XDP and AF_XDP zero-copy support per device; vpnd still \
         tries native XDP and zero-copy first and falls back",
    ),
    spec(
        ids::XFRM_NETLINK,
        "xfrm netlink (NETLINK_XFRM)",
        Some("2.6"),
        "no kernel backend: connections with backend = \"kernel\" (or \"auto\" on a wire with \
         ESP offload) fail at vpnd start; the afxdp backend is unaffected",
    ),
    spec(
        ids::XFRM_ESP_IPV4,
        "kernel ESP, IPv4 outer (esp4)",
        Some("2.6"),
        "kernel-backend connections to IPv4 peers fail at vpnd start; the afxdp backend is \
         unaffected",
    ),
    spec(
        ids::XFRM_ESP_IPV6,
        "kernel ESP, IPv6 outer (esp6)",
        Some("2.6"),
        "kernel-backend connections to IPv6 peers fail at vpnd start; the afxdp backend is \
         unaffected",
    ),
    spec(
        ids::XFRM_AEAD_AES128GCM16,
        "xfrm AEAD aes128gcm16: rfc4106(gcm(aes)), 128-bit key",
        Some("2.6.25"),
        "kernel-backend SAs with aes128gcm16 cannot be installed (vpnd refuses the \
         connection); the afxdp backend does its own AES-GCM",
    ),
    spec(
        ids::XFRM_AEAD_AES256GCM16,
        "xfrm AEAD aes256gcm16: rfc4106(gcm(aes)), 256-bit key",
        Some("2.6.25"),
        "kernel-backend SAs with aes256gcm16 cannot be installed; the afxdp backend does its \
         own AES-GCM",
    ),
    spec(
        ids::XFRM_AEAD_CHACHA20POLY1305,
        "xfrm AEAD chacha20poly1305: rfc7539esp(chacha20,poly1305)",
        Some("4.2"),
        "no kernel-backend SAs with ChaCha20-Poly1305 (RFC 7634), for when the product \
         negotiates it",
    ),
    spec(
        ids::KERNEL_PKTGEN,
        "kernel pktgen",
        Some("2.6"),
        "vpn-pktgen's plain mode uses XDP live frames instead (AF_XDP where those are refused)",
    ),
];

/// Every device row, in report order.
pub const DEVICE_FEATURES: [Spec; 6] = [
    spec(
        ids::XDP_NATIVE,
        "native (driver) XDP with XDP_REDIRECT",
        Some("4.8"),
        "generic XDP: the programs run after the kernel has built an skb, several times the \
         CPU per packet; vpnd falls back to it by itself (xdp_mode = \"native\" makes that an \
         error)",
    ),
    spec(
        ids::AF_XDP_ZERO_COPY,
        "AF_XDP zero-copy",
        Some("4.20"),
        "AF_XDP copy mode: every frame is copied between the driver and the UMEM; vpnd falls \
         back to it by itself",
    ),
    spec(
        ids::AF_XDP_COPY,
        "AF_XDP copy mode (bound on queue 0)",
        Some("4.18"),
        "vpnd's workers cannot open their sockets on this device",
    ),
    spec(
        ids::AF_XDP_NEED_WAKEUP,
        "AF_XDP need_wakeup",
        Some("5.4"),
        "the workers cannot let the driver sleep and must kick it on every batch: more \
         syscalls and CPU",
    ),
    spec(
        ids::XDP_META_RUNTIME,
        "XDP metadata at run time (our instance's counters)",
        None,
        "frames carry the 16-byte in-packet shim instead of the metadata area (counted \
         meta_refused_shim / tenant_meta_refused_shim): same function, a little more work",
    ),
    spec(
        ids::ESP_HW_OFFLOAD,
        "ESP crypto offload (ethtool esp-hw-offload)",
        Some("4.11"),
        "backend = \"auto\" uses vpnd's AF_XDP workers on this wire; kernel-backend SAs do \
         their crypto on the CPU",
    ),
];

/// The spec of a row id (kernel or device); panics on an id not in the tables, which would
/// be a bug here.
pub fn spec_of(id: &str) -> &'static Spec {
    KERNEL_FEATURES
        .iter()
        .chain(DEVICE_FEATURES.iter())
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no probe row {id}"))
}

/// "Operation not permitted (EPERM)".
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            match errno_name(n) {
                Some(name) => format!("{text} ({name})"),
                None => format!("{text} (errno {n})"),
            }
        }
        None => e.to_string(),
    }
}

/// An error chain as one line, OS errors with their symbolic name ("...: Operation not
/// supported (EOPNOTSUPP)" rather than "(os error 95)").
pub fn error_text(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| match c.downcast_ref::<io::Error>() {
            Some(io) => errno_text(io),
            None => match c.downcast_ref::<crate::xfrm::netlink::KernelError>() {
                Some(k) => format!("{}: {}", k.what, errno_text(&k.err)),
                None => c.to_string(),
            },
        })
        // A KernelError's own text repeats its source; keep each part once.
        .fold(Vec::<String>::new(), |mut v, part| {
            if !v.last().is_some_and(|l| l.ends_with(&part)) {
                v.push(part);
            }
            v
        })
        .join(": ")
}

/// The symbolic name of the errnos probes meet.
pub fn errno_name(n: i32) -> Option<&'static str> {
    Some(match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::E2BIG => "E2BIG",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOMEM => "ENOMEM",
        libc::ENXIO => "ENXIO",
        libc::EEXIST => "EEXIST",
        524 => "ENOTSUPP",
        _ => return None,
    })
}

/// The running kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    pub machine: String,
    /// Where the build configuration was read (`/boot/config-RELEASE`, `/proc/config.gz`),
    /// or null.
    pub config: Option<String>,
}

/// An XDP program attached to a device now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attached {
    pub prog_id: u32,
    /// The program's name (needs root), e.g. `esp_ingress`.
    pub name: Option<String>,
    /// `native`, `generic` or `offload`.
    pub mode: &'static str,
    /// The vpnd instance whose pinned maps the program uses, if it is one of ours.
    pub instance: Option<String>,
    /// The metadata carrier the program was loaded with (`adjust_meta` or `shim`), when the
    /// loaded code could be read (root).
    pub carrier: Option<&'static str>,
}

/// One device and its rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
    /// The driver as ethtool names it (`veth`, `ice`, `mlx5_core`, ...).
    pub driver: Option<String>,
    /// Why the driver is unknown.
    pub driver_error: Option<String>,
    /// `xdp-features` bit names from the kernel (Linux 6.3+), or null.
    pub xdp_features: Option<Vec<&'static str>>,
    pub xdp: Vec<Attached>,
    pub features: Vec<Feature>,
}

/// A decision the product takes from the probes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub id: &'static str,
    /// The device it is about, or null for node-wide choices.
    pub device: Option<String>,
    pub value: String,
    pub reason: String,
    /// For `kernel_backend`: the AEADs (IKE names) the kernel takes; null elsewhere.
    pub aeads: Option<Vec<&'static str>>,
}

/// The whole answer of [`run`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub schema: u32,
    pub kernel: Kernel,
    /// Whether the probe ran with the privileges its probes need (root).
    pub privileged: bool,
    /// The network namespace the devices were probed in (`--netns`), or null for the
    /// caller's.
    pub netns: Option<String>,
    pub features: Vec<Feature>,
    pub devices: Vec<Device>,
    /// Said when no device was named and none has our programs attached.
    pub device_hint: Option<String>,
    pub choices: Vec<Choice>,
}

impl Report {
    pub fn feature(&self, id: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.id == id)
    }
}

/// What to probe beyond the kernel.
#[derive(Clone, Debug)]
pub struct Options {
    /// Devices to probe; empty: every device with `esp_ingress` or `tenant_ingress` attached.
    pub devices: Vec<String>,
    /// Probe the devices inside this `ip netns` namespace (`/run/netns/NAME`).
    pub netns: Option<String>,
    /// bpffs directory holding the instances' pins (for the run-time metadata counters).
    pub pin_root: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            devices: Vec::new(),
            netns: None,
            pin_root: vpn_common::maps::PIN_ROOT.into(),
        }
    }
}

/// Probes the kernel and the devices of `opts`. Fails only when a named device does not exist
/// or the namespace cannot be entered; everything else becomes a row.
pub fn run(opts: &Options) -> Result<Report> {
    let (release, version, machine) = kernel::uname();
    let cfg = kernel::Config::load(&release);
    let mods = kernel::Modules::load(&release);
    let privileged = kernel::privileged();
    let env = Env {
        cfg: cfg.as_ref(),
        mods: &mods,
        privileged,
        release: &release,
    };

    let mut features = vec![
        jit_row(&env),
        bpffs_row(),
        adjust_meta_row(&env),
        adjust_head_row(&env),
        mmapable_row(&env),
        live_frames_row(&env),
        af_xdp_row(&env),
    ];
    let netdev = device::netdev_family_row(&env, opts.netns.as_deref());
    features.push(netdev);
    features.extend(xfrm::rows(&env));
    features.push(pktgen_row(&env));

    let (devices, device_hint) = device::probe_all(&env, opts)?;

    let mut choices = vec![
        carrier_choice(&env, &features),
        pktgen_choice(&features),
        kernel_backend_choice(&features),
    ];
    for d in &devices {
        choices.extend(device::choices(d, &features));
    }

    Ok(Report {
        schema: SCHEMA,
        kernel: Kernel {
            release: release.clone(),
            version,
            machine,
            config: cfg.map(|c| c.source),
        },
        privileged,
        netns: opts.netns.clone(),
        features,
        devices,
        device_hint,
        choices,
    })
}

/// What every row builder may consult.
pub struct Env<'a> {
    pub cfg: Option<&'a kernel::Config>,
    pub mods: &'a kernel::Modules,
    pub privileged: bool,
    pub release: &'a str,
}

impl Env<'_> {
    /// "a kernel of 5.18 or newer (this one is ...)": the fix for a feature that came with
    /// `since`.
    fn newer_kernel(&self, since: &str) -> String {
        format!(
            "a kernel of {since} or newer (this one is {})",
            self.release
        )
    }
}

fn jit_row(env: &Env<'_>) -> Feature {
    let s = spec_of(ids::BPF_JIT);
    let off_fix = "sysctl -w net.core.bpf_jit_enable=1 (and net.core.bpf_jit_enable = 1 in \
                   /etc/sysctl.d/ to keep it)";
    let switch = kernel::jit(env.cfg);
    // The loaded code answers in any namespace; the switch is only visible in the initial one.
    match bpf::jited() {
        Ok(0) => s.unavailable(
            "a test program was left to the interpreter (no native code)",
            off_fix,
        ),
        Ok(n) => s.available(format!(
            "a test program came back JIT-compiled ({n} bytes of native code){}",
            match switch {
                kernel::Jit::On { always: true } => "; CONFIG_BPF_JIT_ALWAYS_ON",
                kernel::Jit::On { always: false } => "; net.core.bpf_jit_enable = 1",
                _ => "",
            }
        )),
        Err(_) => match switch {
            kernel::Jit::On { always: true } => {
                s.available("on (CONFIG_BPF_JIT_ALWAYS_ON: the interpreter is not built)")
            }
            kernel::Jit::On { always: false } => s.available("on (net.core.bpf_jit_enable = 1)"),
            kernel::Jit::Off => s.unavailable("off (net.core.bpf_jit_enable = 0)", off_fix),
            kernel::Jit::Unknown(why) if !env.privileged => s.needs_root(&format!(
                "{why} (the switch is visible only in the initial network namespace)"
            )),
            kernel::Jit::Unknown(why) => s.unknown(why, None),
        },
    }
}

fn bpffs_row() -> Feature {
    let s = spec_of(ids::BPFFS);
    let root = std::path::Path::new(vpn_common::maps::PIN_ROOT);
    if bpf::is_bpffs(root) {
        return s.available(format!("bpf mounted at {}", root.display()));
    }
    let known = std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("bpf"))
        })
        .unwrap_or(true);
    if !known {
        return s.unavailable(
            "the kernel has no bpf filesystem (/proc/filesystems)",
            "a kernel built with CONFIG_BPF_SYSCALL",
        );
    }
    let what = if root.is_dir() {
        format!("not mounted at {} (the directory exists)", root.display())
    } else {
        format!("not mounted, and {} does not exist", root.display())
    };
    s.unavailable(
        what,
        format!(
            "mount -t bpf bpf {0} (vpnd does this at start); at boot: the fstab line \
             `bpf {0} bpf defaults 0 0` (systemd mounts it by itself)",
            root.display()
        ),
    )
}

/// The verifier's refusal of a helper as a row.
fn helper_row(env: &Env<'_>, id: &str, r: Result<(), bpf::Refusal>) -> Feature {
    let s = spec_of(id);
    match r {
        Ok(()) => s.available("the verifier accepts it in an XDP program"),
        Err(refusal) => s.refusal(&refusal.error, env.privileged, |errno| {
            let detail = match &refusal.verifier {
                Some(v) => format!("verifier: {v} ({errno})"),
                None => errno,
            };
            let fix = if id == ids::XDP_ADJUST_META {
                "none needed: vpnd uses the shim by itself. The helper comes back with a \
                 kernel whose verifier allows it to XDP programs (every upstream kernel since \
                 4.15 does; this build does not)"
                    .to_string()
            } else {
                env.newer_kernel(s.since.unwrap_or("?"))
            };
            s.unavailable(detail, fix)
        }),
    }
}

fn adjust_meta_row(env: &Env<'_>) -> Feature {
    helper_row(env, ids::XDP_ADJUST_META, bpf::xdp_adjust_meta())
}

fn adjust_head_row(env: &Env<'_>) -> Feature {
    helper_row(env, ids::XDP_ADJUST_HEAD, bpf::xdp_adjust_head())
}

fn mmapable_row(env: &Env<'_>) -> Feature {
    let s = spec_of(ids::MMAPABLE_ARRAY);
    match bpf::mmapable_array() {
        Ok(()) => s.available("an array map with BPF_F_MMAPABLE was created and mapped"),
        Err(e) => s.refusal(&e, env.privileged, |errno| {
            s.unavailable(errno, env.newer_kernel("5.5"))
        }),
    }
}

fn live_frames_row(env: &Env<'_>) -> Feature {
    let s = spec_of(ids::XDP_LIVE_FRAMES);
    match bpf::xdp_live_frames(1) {
        Ok(()) => s.available("BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES ran (frame dropped)"),
        Err(e) => s.refusal(&e, env.privileged, |errno| {
            let fix = match kernel::major_minor(env.release) {
                Some(v) if v < (5, 18) => env.newer_kernel("5.18"),
                _ => "this kernel build refuses it even to root (seen: EPERM on some 6.18 \
                      builds); boot a kernel that allows it (Debian's do)"
                    .into(),
            };
            s.unavailable(format!("BPF_PROG_RUN refused it: {errno}"), fix)
        }),
    }
}

fn af_xdp_row(env: &Env<'_>) -> Feature {
    let s = spec_of(ids::AF_XDP);
    // SAFETY: a plain socket(2); closed right below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: the fd we just got.
        unsafe { libc::close(fd) };
        return s.available("socket(AF_XDP) works");
    }
    let e = io::Error::last_os_error();
    s.refusal(&e, env.privileged, |errno| {
        let fix = match kernel::opt(env.cfg, "CONFIG_XDP_SOCKETS") {
            kernel::Opt::NotSet => "this kernel is built without CONFIG_XDP_SOCKETS: boot one \
                                    that has it (Debian's kernels do)"
                .to_string(),
            _ => env.newer_kernel("4.18") + " built with CONFIG_XDP_SOCKETS",
        };
        s.unavailable(format!("socket(AF_XDP): {errno}"), fix)
    })
}

fn pktgen_row(env: &Env<'_>) -> Feature {
    let s = spec_of(ids::KERNEL_PKTGEN);
    if std::path::Path::new(crate::pktgen::kernel::PROC_DIR)
        .join("pgctrl")
        .exists()
    {
        return s.available("loaded (/proc/net/pktgen)");
    }
    let modprobe = ["/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    match env.mods.find("pktgen") {
        kernel::Module::Loadable(p) if modprobe => s.available(format!(
            "module pktgen, not loaded ({}): vpn-pktgen loads it with modprobe",
            p.display()
        )),
        kernel::Module::Loadable(p) => s.row(
            Verdict::Partial,
            format!(
                "module pktgen ({}), but no modprobe to load it with",
                p.display()
            ),
            Some("install kmod (apt-get install kmod), or insmod the module".into()),
        ),
        kernel::Module::BuiltIn | kernel::Module::Loaded => {
            s.available("built in, or loaded (no /proc/net/pktgen in this namespace yet)")
        }
        _ => s.unavailable(
            "no /proc/net/pktgen and no pktgen module for this kernel",
            kernel::enable_hint(env.cfg, env.mods, "CONFIG_NET_PKTGEN", "pktgen"),
        ),
    }
}

fn verdict_of(features: &[Feature], id: &str) -> Verdict {
    features
        .iter()
        .find(|f| f.id == id)
        .map_or(Verdict::Unknown, |f| f.verdict)
}

fn carrier_choice(env: &Env<'_>, features: &[Feature]) -> Choice {
    let meta = features.iter().find(|f| f.id == ids::XDP_ADJUST_META);
    let (value, reason) = if !env.privileged && meta.is_some_and(|m| m.verdict == Verdict::Unknown)
    {
        (
            "unknown".to_string(),
            "needs root: vpnd decides from the verifier's answer about bpf_xdp_adjust_meta".into(),
        )
    } else {
        let c = dataplane::choose_carrier(CarrierChoice::Auto);
        (
            c.carrier.name().to_string(),
            format!(
                "{} ([wire] xdp_carrier = \"auto\", the default; it can force either)",
                c.reason
            ),
        )
    };
    Choice {
        id: ids::CHOICE_CARRIER,
        device: None,
        value,
        reason,
        aeads: None,
    }
}

/// vpn-pktgen's `--engine auto` for plain traffic (ESP mode always uses AF_XDP).
fn pktgen_choice(features: &[Feature]) -> Choice {
    let why = |id: &str| {
        features
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.detail.clone())
            .unwrap_or_default()
    };
    let kernel = match verdict_of(features, ids::KERNEL_PKTGEN) {
        Verdict::Available => Ok(()),
        _ => Err(why(ids::KERNEL_PKTGEN)),
    };
    let live = match verdict_of(features, ids::XDP_LIVE_FRAMES) {
        Verdict::Unavailable => Err(why(ids::XDP_LIVE_FRAMES)),
        // Unknown (no root): vpn-pktgen needs root anyway, and tries them.
        _ => Ok(()),
    };
    let (engine, note) = crate::pktgen::auto_engine(1, kernel, || live);
    Choice {
        id: ids::CHOICE_PKTGEN_ENGINE,
        device: None,
        value: engine.name().to_string(),
        reason: format!(
            "{}; --mode esp always uses AF_XDP",
            note.unwrap_or_else(|| "kernel pktgen is there".into())
        ),
        aeads: None,
    }
}

fn kernel_backend_choice(features: &[Feature]) -> Choice {
    let aeads: Vec<&'static str> = xfrm::AEADS
        .iter()
        .filter(|a| verdict_of(features, a.id) == Verdict::Available)
        .map(|a| a.cipher)
        .collect();
    let backend: Vec<&str> = xfrm::AEADS
        .iter()
        .filter(|a| a.backend)
        .map(|a| a.cipher)
        .collect();
    let esp4 = verdict_of(features, ids::XFRM_ESP_IPV4);
    let esp6 = verdict_of(features, ids::XFRM_ESP_IPV6);
    let nl = verdict_of(features, ids::XFRM_NETLINK);
    let usable_aeads: Vec<&str> = aeads
        .iter()
        .copied()
        .filter(|a| backend.contains(a))
        .collect();
    let (value, reason) = if [nl, esp4].contains(&Verdict::Unknown) {
        (
            "unknown",
            "the xfrm probes could not run (see the xfrm rows)".to_string(),
        )
    } else if nl != Verdict::Available {
        ("unusable", "no xfrm netlink interface".to_string())
    } else if esp4 != Verdict::Available && esp6 != Verdict::Available {
        ("unusable", "the kernel has no ESP".to_string())
    } else if usable_aeads.is_empty() {
        (
            "unusable",
            format!(
                "the kernel's ESP takes none of the backend's ciphers ({})",
                backend.join(", ")
            ),
        )
    } else {
        let fams = match (esp4, esp6) {
            (Verdict::Available, Verdict::Available) => "IPv4 and IPv6 peers",
            (Verdict::Available, _) => "IPv4 peers only",
            _ => "IPv6 peers only",
        };
        (
            "usable",
            format!(
                "backend = \"kernel\" works for {fams} with {}",
                usable_aeads.join(", ")
            ),
        )
    };
    Choice {
        id: ids::CHOICE_KERNEL_BACKEND,
        device: None,
        value: value.into(),
        reason,
        aeads: Some(aeads),
    }
}

/// Runs `f` on a thread inside the `ip netns` namespace `name`, or on this thread.
pub(crate) fn in_netns<T: Send>(
    name: Option<&str>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let Some(name) = name else {
        return f();
    };
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path)
                .with_context(|| format!("network namespace {name:?}: opening {path}"))?;
            // SAFETY: setns on this thread only (it ends when f returns), with a valid fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("entering network namespace {name:?} (needs root)"));
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread in namespace {name:?} panicked"))?
    })
}

#[cfg(test)]
mod tests;
