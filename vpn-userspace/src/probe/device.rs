//! Per-device rows: the driver (ethtool), native XDP and AF_XDP zero-copy from the kernel's
//! `xdp_features` (never by attaching a test program: on a real NIC that resets its rings),
//! AF_XDP copy mode and need_wakeup by binding a copy-mode socket on queue 0 and closing it,
//! the XDP program attached now, ESP offload, and where one of our instances runs on the
//! device, what its counters say about XDP metadata at run time.

use std::{collections::HashMap, ffi::CString, io, num::NonZeroU32, path::Path, ptr::NonNull};

use anyhow::{Context, Result, bail};
use vpn_common::{
    Counter, Outcome,
    maps::{names, programs},
};
use xdpilone::{IfInfo, Socket, SocketConfig, Umem, UmemConfig};

use super::{
    Attached, Choice, Device, Env, Feature, Options, Verdict, errno_text, ids,
    netlink::{self, DevFeatures, Link, Netdev, NetdevUnavailable},
    spec_of, verdict_of,
};
use crate::ctl::pins::{self, Pins};

/// The kernel row: whether the `netdev` family answers (Linux 6.3+).
pub fn netdev_family_row(env: &Env<'_>, netns: Option<&str>) -> Feature {
    let s = spec_of(ids::NETDEV_XDP_FEATURES);
    match super::in_netns(netns, || Ok(Netdev::open())) {
        Ok(Ok(_)) => s.available("the netdev generic netlink family answers (dev-get)"),
        Ok(Err(NetdevUnavailable::NoFamily)) => s.unavailable(
            "no generic netlink family \"netdev\" (Linux before 6.3)",
            env.newer_kernel("6.3"),
        ),
        Ok(Err(NetdevUnavailable::Error(e))) | Err(e) => s.unknown(super::error_text(&e), None),
    }
}

/// What a program id is: its name, the maps it uses, and its file descriptor's loaded code.
struct Prog {
    name: String,
    info: aya::programs::ProgramInfo,
}

/// Every loaded program by id (needs root; empty otherwise).
fn programs_by_id() -> HashMap<u32, Prog> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|info| {
            (
                info.id(),
                Prog {
                    name: info.name_as_str().unwrap_or("?").to_string(),
                    info,
                },
            )
        })
        .collect()
}

/// Our program names.
fn ours(name: &str) -> bool {
    name == programs::ESP_INGRESS || name == programs::TENANT_INGRESS
}

/// The carrier a loaded program of ours was built for: only the metadata carrier's code
/// calls `bpf_xdp_adjust_meta` (the verifier drops the other carrier's code).
fn carrier_of(p: &Prog) -> Option<&'static str> {
    use std::os::fd::AsFd;
    let meta = super::bpf::helper_call_imm("bpf_xdp_adjust_meta").ok()?;
    let fd = p.info.fd().ok()?;
    let calls = super::bpf::xlated_helper_calls(fd.as_fd()).ok()?;
    Some(if calls.contains(&meta) {
        crate::dataplane::Carrier::Meta.name()
    } else {
        crate::dataplane::Carrier::Shim.name()
    })
}

/// Instance name of every program that uses an instance's pinned maps.
fn instances_by_prog(pin_root: &Path) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for inst in pins::pinned_instances(pin_root) {
        if let Ok(p) = Pins::open(pin_root, &inst)
            && let Ok(progs) = p.programs()
        {
            for prog in progs {
                out.insert(prog.id, inst.clone());
            }
        }
    }
    out
}

/// The devices to probe and their rows, in the namespace of `opts` (or ours), and the hint
/// to give when there are none.
pub fn probe_all(env: &Env<'_>, opts: &Options) -> Result<(Vec<Device>, Option<String>)> {
    let where_ = match &opts.netns {
        Some(n) => format!("network namespace {n:?}"),
        None => "this network namespace".to_string(),
    };
    let (devices, hint) = super::in_netns(opts.netns.as_deref(), || {
        let links = netlink::links().with_context(|| format!("listing the links of {where_}"))?;
        let progs = if env.privileged {
            programs_by_id()
        } else {
            HashMap::new()
        };
        let selected: Vec<&Link> = if opts.devices.is_empty() {
            links
                .iter()
                .filter(|l| {
                    l.xdp
                        .iter()
                        .any(|(_, id)| progs.get(id).is_some_and(|p| ours(&p.name)))
                })
                .collect()
        } else {
            let mut v = Vec::new();
            for name in &opts.devices {
                match links.iter().find(|l| l.name == *name) {
                    Some(l) => v.push(l),
                    None => bail!(
                        "no interface {name:?} in {where_} (`ip link` lists them; --netns NAME \
                         probes a namespace's devices)"
                    ),
                }
            }
            v
        };
        let hint = selected.is_empty().then(|| {
            let mut h = format!(
                "no device in {where_} has {} or {} attached: name devices with --dev IFACE \
                 (and --netns NAME for a router namespace)",
                programs::ESP_INGRESS,
                programs::TENANT_INGRESS
            );
            if !env.privileged {
                h.push_str("; without root the attached programs' names cannot be read");
            }
            h
        });
        let instances = if selected.iter().any(|l| !l.xdp.is_empty()) {
            instances_by_prog(&opts.pin_root)
        } else {
            HashMap::new()
        };
        let mut netdev = Netdev::open();
        let devices = selected
            .into_iter()
            .map(|l| probe_one(env, l, &progs, &instances, &mut netdev, &opts.pin_root))
            .collect();
        Ok((devices, hint))
    })?;
    Ok((devices, hint))
}

fn probe_one(
    env: &Env<'_>,
    link: &Link,
    progs: &HashMap<u32, Prog>,
    instances: &HashMap<u32, String>,
    netdev: &mut Result<Netdev, NetdevUnavailable>,
    pin_root: &Path,
) -> Device {
    let (driver, driver_error) = match crate::xfrm::ethtool::driver(&link.name) {
        Ok(d) if !d.is_empty() => (Some(d), None),
        Ok(_) => (None, Some("the driver gives no name".to_string())),
        Err(e) => (None, Some(super::error_text(&e))),
    };
    let xdp: Vec<Attached> = link
        .xdp
        .iter()
        .map(|(mode, id)| {
            let p = progs.get(id);
            let ours = p.is_some_and(|p| ours(&p.name));
            Attached {
                prog_id: *id,
                name: p.map(|p| p.name.clone()),
                mode: mode.name(),
                instance: instances.get(id).cloned(),
                carrier: p.filter(|_| ours).and_then(carrier_of),
            }
        })
        .collect();
    let feats: Option<Result<DevFeatures>> = match netdev {
        Ok(n) => Some(n.dev_get(link.index)),
        Err(NetdevUnavailable::NoFamily) => None,
        Err(NetdevUnavailable::Error(e)) => Some(Err(anyhow::anyhow!(super::error_text(e)))),
    };
    let mut features = vec![native_row(feats.as_ref()), zero_copy_row(feats.as_ref())];
    let bind = copy_bind(&link.name);
    features.extend(bind_rows(env, &bind));
    features.push(meta_runtime_row(env, &xdp, pin_root));
    features.push(esp_offload_row(&link.name));
    Device {
        name: link.name.clone(),
        ifindex: link.index,
        driver,
        driver_error,
        xdp_features: feats
            .and_then(|f| f.ok())
            .map(|f| netlink::xdp_feature_names(f.xdp_features)),
        xdp,
        features,
    }
}

const NO_FEATURES: &str = "unknown (kernel < 6.3: no xdp_features)";

fn feature_detail(f: &DevFeatures) -> String {
    let names = netlink::xdp_feature_names(f.xdp_features);
    format!(
        "xdp-features: {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

pub fn native_row(f: Option<&Result<DevFeatures>>) -> Feature {
    let s = spec_of(ids::XDP_NATIVE);
    let f = match f {
        None => {
            return s.unknown(
                NO_FEATURES,
                Some(
                    "Linux 6.3+ reports it; meanwhile `ip link show DEV` while vpnd runs shows \
                     xdp (native) or xdpgeneric"
                        .into(),
                ),
            );
        }
        Some(Err(e)) => return s.unknown(super::error_text(e), None),
        Some(Ok(f)) => f,
    };
    let basic = f.xdp_features & netlink::XDP_ACT_BASIC != 0;
    let redirect = f.xdp_features & netlink::XDP_ACT_REDIRECT != 0;
    match (basic, redirect) {
        (true, true) => s.available(feature_detail(f)),
        (true, false) => s.row(
            Verdict::Partial,
            format!(
                "{}: native XDP without XDP_REDIRECT, which the programs need to reach AF_XDP",
                feature_detail(f)
            ),
            Some(
                "xdp_mode = \"generic\" for this device, or a driver (version) with \
                 XDP_REDIRECT"
                    .into(),
            ),
        ),
        _ => s.unavailable(
            format!("{}: the driver has no native XDP", feature_detail(f)),
            "a NIC whose driver has native XDP (ice, i40e, ixgbe, mlx5_core, bnxt_en, \
             virtio_net, veth, ...), or a newer kernel's driver",
        ),
    }
}

pub fn zero_copy_row(f: Option<&Result<DevFeatures>>) -> Feature {
    let s = spec_of(ids::AF_XDP_ZERO_COPY);
    let f = match f {
        None => {
            return s.unknown(
                NO_FEATURES,
                Some(
                    "Linux 6.3+ reports it; vpnd tries zero-copy first and logs whether it got \
                     it"
                    .into(),
                ),
            );
        }
        Some(Err(e)) => return s.unknown(super::error_text(e), None),
        Some(Ok(f)) => f,
    };
    if f.xdp_features & netlink::XDP_ACT_XSK_ZEROCOPY != 0 {
        let segs = f
            .zc_max_segs
            .map(|n| format!(", up to {n} segment(s) per frame"))
            .unwrap_or_default();
        s.available(format!("{}{segs}", feature_detail(f)))
    } else {
        s.unavailable(
            format!("{}: no xsk-zerocopy", feature_detail(f)),
            "a driver with AF_XDP zero-copy (ice, i40e, ixgbe, mlx5_core, igc, stmmac; \
             virtio_net from Linux 6.11 for RX and 6.13 for TX)",
        )
    }
}

const XDP_COPY: u16 = 1 << 1;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

/// What binding a copy-mode socket on queue 0 gave: with need_wakeup, and (if that failed)
/// without.
#[derive(Debug)]
pub struct BindResult {
    pub with_wakeup: Result<(), (i32, &'static str)>,
    pub without: Option<Result<(), (i32, &'static str)>>,
}

/// Binds an AF_XDP socket in copy mode to queue 0 of `ifname` and closes it: the kernel sets
/// up no driver state in copy mode, so the device is untouched.
fn bind_once(ifname: &str, flags: u16) -> Result<(), (i32, &'static str)> {
    const FRAME: u32 = 2048;
    const FRAMES: u32 = 64;
    let len = (FRAME * FRAMES) as usize;
    let layout =
        std::alloc::Layout::from_size_align(len, 4096).map_err(|_| (libc::EINVAL, "UMEM"))?;
    // SAFETY: a non-zero size; freed below after everything that uses it is dropped.
    let mem =
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or((libc::ENOMEM, "UMEM"))?;
    let r = (|| {
        let name = CString::new(ifname).map_err(|_| (libc::EINVAL, "interface name"))?;
        let cfg = UmemConfig {
            fill_size: FRAMES / 2,
            complete_size: FRAMES / 2,
            frame_size: FRAME,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: page-aligned memory that outlives the UMEM (dropped inside this closure).
        let umem = unsafe { Umem::new(cfg, NonNull::slice_from_raw_parts(mem, len)) }
            .map_err(|e| (e.get_raw(), "AF_XDP socket with its UMEM"))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|e| (e.get_raw(), "interface lookup"))?;
        info.set_queue(0);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| (e.get_raw(), "socket"))?;
        let _fq_cq = umem
            .fq_cq(&sock)
            .map_err(|e| (e.get_raw(), "fill/completion rings"))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(FRAMES / 2),
                    tx_size: None,
                    bind_flags: flags,
                },
            )
            .map_err(|e| (e.get_raw(), "rx ring"))?;
        umem.bind(&user).map_err(|e| (e.get_raw(), "bind"))?;
        Ok(())
    })();
    // SAFETY: the allocation above; the UMEM and sockets are gone.
    unsafe { std::alloc::dealloc(mem.as_ptr(), layout) };
    r
}

pub fn copy_bind(ifname: &str) -> BindResult {
    let with_wakeup = bind_once(ifname, XDP_COPY | XDP_USE_NEED_WAKEUP);
    let without = match with_wakeup {
        Err((libc::EINVAL, "bind")) => Some(bind_once(ifname, XDP_COPY)),
        _ => None,
    };
    BindResult {
        with_wakeup,
        without,
    }
}

fn bind_text((errno, step): (i32, &'static str)) -> String {
    format!(
        "{step}: {}",
        errno_text(&io::Error::from_raw_os_error(errno))
    )
}

/// The copy-mode and need_wakeup rows from a bind.
pub fn bind_rows(env: &Env<'_>, b: &BindResult) -> [Feature; 2] {
    let copy = spec_of(ids::AF_XDP_COPY);
    let wake = spec_of(ids::AF_XDP_NEED_WAKEUP);
    let denied = |e: i32| matches!(e, libc::EPERM | libc::EACCES) && !env.privileged;
    match (&b.with_wakeup, &b.without) {
        (Ok(()), _) => [
            copy.available("an AF_XDP socket bound to queue 0 in copy mode (then closed)"),
            wake.available("bound with XDP_USE_NEED_WAKEUP"),
        ],
        (Err(e), Some(Ok(()))) => [
            copy.available("an AF_XDP socket bound to queue 0 in copy mode (then closed)"),
            wake.unavailable(
                format!("bind with XDP_USE_NEED_WAKEUP: {}", bind_text(*e)),
                env.newer_kernel("5.4"),
            ),
        ],
        (Err(e), _) if denied(e.0) => [
            copy.needs_root(&bind_text(*e)),
            wake.needs_root(&bind_text(*e)),
        ],
        (Err(e @ (libc::EBUSY, _)), _) => {
            let d = format!(
                "{}: queue 0 already has an AF_XDP socket (vpnd's, where an instance runs \
                 here); not probed",
                bind_text(*e)
            );
            [copy.unknown(d.clone(), None), wake.unknown(d, None)]
        }
        (Err(e), _) => {
            let fix = match e.0 {
                libc::EAFNOSUPPORT => "a kernel with CONFIG_XDP_SOCKETS".to_string(),
                _ => "see the errno: the device or its driver refused an AF_XDP socket".into(),
            };
            [
                copy.unavailable(bind_text(*e), fix),
                wake.unknown("no copy-mode socket to try it with".to_string(), None),
            ]
        }
    }
}

/// The counters of an instance's side: (redirected frames, frames that carried the shim
/// because the device refused `bpf_xdp_adjust_meta`).
fn meta_counts(pin_root: &Path, instance: &str, wire: bool) -> Result<(u64, u64)> {
    let p = Pins::open(pin_root, instance)?;
    let (map, refused, redirects): (&str, Outcome, &[Outcome]) = if wire {
        (
            names::WIRE_STATS,
            Outcome::WireMetaRefusedShim,
            &[
                Outcome::WireRedirectEsp,
                Outcome::WireRedirectEspUdp,
                Outcome::WireRedirectFragment,
            ],
        )
    } else {
        (
            names::TENANT_STATS,
            Outcome::TenantMetaRefusedShim,
            &[Outcome::TenantRedirect, Outcome::TenantRedirectArp],
        )
    };
    let counts = p.counters(map)?;
    let get = |o: Outcome| {
        counts
            .iter()
            .find(|(c, _)| *c == Counter::Outcome(o))
            .map_or(0, |(_, v)| *v)
    };
    Ok((redirects.iter().map(|o| get(*o)).sum(), get(refused)))
}

/// The run-time metadata row from what is known of the program attached to the device.
pub fn meta_runtime(
    prog: Option<&Attached>,
    counts: Option<Result<(u64, u64)>>,
    privileged: bool,
) -> Feature {
    let s = spec_of(ids::XDP_META_RUNTIME);
    let Some(p) = prog else {
        return s.unknown(
            "no program of ours attached: known once vpnd runs on this device",
            None,
        );
    };
    let Some(inst) = &p.instance else {
        return s.unknown(
            format!(
                "{} (id {}) uses no pinned instance under the pin root: no counters to read",
                p.name.as_deref().unwrap_or("?"),
                p.prog_id
            ),
            None,
        );
    };
    match p.carrier {
        None if !privileged => return s.needs_root("reading the loaded program"),
        Some("shim") => {
            return s.unknown(
                format!("instance {inst} runs the shim carrier: the metadata area is not used"),
                None,
            );
        }
        _ => {}
    }
    let side = if p.name.as_deref() == Some(programs::ESP_INGRESS) {
        "meta_refused_shim"
    } else {
        "tenant_meta_refused_shim"
    };
    let (redirects, refused) = match counts {
        None => return s.unknown("no counters read", None),
        Some(Err(e)) => {
            return s.unknown(format!("instance {inst}: {}", super::error_text(&e)), None);
        }
        Some(Ok(c)) => c,
    };
    let note = if side == "meta_refused_shim" {
        ""
    } else {
        "; counted over all of the instance's tenant devices"
    };
    let frames = |n: u64| {
        if n == 1 {
            "1 frame".to_string()
        } else {
            format!("{n} frames")
        }
    };
    if redirects == 0 && refused == 0 {
        s.unknown(
            format!("instance {inst}: not seen yet (no frame redirected){note}"),
            None,
        )
    } else if refused == 0 {
        s.available(format!(
            "instance {inst}: honoured ({} redirected with the metadata area){note}",
            frames(redirects)
        ))
    } else {
        let fix = Some(
            "none needed: the programs fall back to the shim per packet ([wire] \
             xdp_carrier = \"shim\" skips the refused call). The metadata area comes back \
             with a driver that builds its XDP buffers with metadata support"
                .to_string(),
        );
        let detail = format!(
            "instance {inst}: refused at run time ({} carried the shim, {side}; {} \
             redirected){note}",
            frames(refused),
            frames(redirects)
        );
        if refused >= redirects {
            s.row(Verdict::Unavailable, detail, fix)
        } else {
            s.row(Verdict::Partial, detail, fix)
        }
    }
}

fn meta_runtime_row(env: &Env<'_>, xdp: &[Attached], pin_root: &Path) -> Feature {
    let p = xdp
        .iter()
        .find(|a| a.name.as_deref().is_some_and(ours))
        .or_else(|| xdp.iter().find(|a| a.instance.is_some()));
    let counts = p.and_then(|p| {
        let inst = p.instance.as_ref()?;
        Some(meta_counts(
            pin_root,
            inst,
            p.name.as_deref() == Some(programs::ESP_INGRESS),
        ))
    });
    meta_runtime(p, counts, env.privileged)
}

fn esp_offload_row(ifname: &str) -> Feature {
    let s = spec_of(ids::ESP_HW_OFFLOAD);
    match crate::xfrm::ethtool::features(ifname) {
        Ok(f) => match f.iter().find(|(n, _)| n == "esp-hw-offload") {
            Some((_, true)) => s.available("esp-hw-offload: on"),
            Some((_, false)) => s.unavailable(
                "esp-hw-offload: off",
                format!(
                    "ethtool -K {ifname} esp-hw-offload on, where the NIC has IPsec crypto \
                     offload (ethtool -k shows [fixed] when it has none)"
                ),
            ),
            None => s.unavailable(
                "the kernel lists no esp-hw-offload feature",
                "a kernel with CONFIG_XFRM_OFFLOAD and a NIC with IPsec crypto offload",
            ),
        },
        Err(e) => s.unknown(super::error_text(&e), None),
    }
}

/// The per-device choices vpnd makes.
pub fn choices(d: &Device, kernel: &[Feature]) -> Vec<Choice> {
    let v = |id: &str| verdict_of(&d.features, id);
    let now = d
        .xdp
        .iter()
        .find(|a| a.name.as_deref().is_some_and(ours))
        .map(|a| {
            format!(
                "; attached now: {} in {} mode",
                a.name.as_deref().unwrap_or("?"),
                a.mode
            )
        })
        .unwrap_or_default();
    let (mode, why) = match v(ids::XDP_NATIVE) {
        Verdict::Available => ("native", "the driver has native XDP with XDP_REDIRECT"),
        Verdict::Partial => (
            "native",
            "the driver takes native XDP but lacks XDP_REDIRECT: set xdp_mode = \"generic\"",
        ),
        Verdict::Unavailable => (
            "generic",
            "the driver has no native XDP: vpnd falls back to generic",
        ),
        Verdict::Unknown => (
            "native, else generic",
            "vpnd tries native first and falls back to generic",
        ),
    };
    let (xsk, xsk_why) = match (v(ids::AF_XDP_ZERO_COPY), v(ids::AF_XDP_COPY)) {
        (Verdict::Available, _) => ("zero-copy", "the driver has xsk-zerocopy"),
        (_, Verdict::Unavailable) => ("none", "no AF_XDP socket binds on this device"),
        (Verdict::Unavailable, _) => ("copy", "no xsk-zerocopy: vpnd falls back to copy mode"),
        _ => (
            "zero-copy, else copy",
            "vpnd tries zero-copy first and falls back to copy mode",
        ),
    };
    let kernel_ok = kernel
        .iter()
        .any(|f| f.id == ids::XFRM_AEAD_AES128GCM16 && f.verdict == Verdict::Available);
    let (backend, backend_why) = match v(ids::ESP_HW_OFFLOAD) {
        Verdict::Available if kernel_ok => (
            "kernel",
            "as the wire, the device offers ESP offload: backend = \"auto\" connections go to \
             the kernel's xfrm with crypto offload"
                .to_string(),
        ),
        Verdict::Available => (
            "kernel",
            "as the wire, the device offers ESP offload, so backend = \"auto\" picks the \
             kernel, but this kernel's ESP cannot take the SAs (see the xfrm rows): vpnd \
             would refuse such connections; use backend = \"afxdp\""
                .to_string(),
        ),
        _ => (
            "afxdp",
            "as the wire, the device offers no ESP offload: backend = \"auto\" connections \
             use vpnd's AF_XDP workers"
                .to_string(),
        ),
    };
    let choice = |id, value: &str, reason: String| Choice {
        id,
        device: Some(d.name.clone()),
        value: value.to_string(),
        reason,
        aeads: None,
    };
    vec![
        choice(ids::CHOICE_XDP_MODE, mode, format!("{why}{now}")),
        choice(ids::CHOICE_AF_XDP_MODE, xsk, xsk_why.to_string()),
        choice(ids::CHOICE_BACKEND_AUTO, backend, backend_why),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(bits: u64) -> Option<Result<DevFeatures>> {
        Some(Ok(DevFeatures {
            ifindex: 3,
            xdp_features: bits,
            ..Default::default()
        }))
    }

    #[test]
    fn native_and_zero_copy_from_xdp_features() {
        use netlink::*;
        // veth: basic, redirect, rx-sg; no zero-copy.
        let veth = feats(XDP_ACT_BASIC | XDP_ACT_REDIRECT | XDP_ACT_RX_SG);
        assert_eq!(native_row(veth.as_ref()).verdict, Verdict::Available);
        let z = zero_copy_row(veth.as_ref());
        assert_eq!(z.verdict, Verdict::Unavailable);
        assert!(z.cost.as_deref().unwrap().contains("copy mode"));
        assert!(z.detail.contains("basic, redirect, rx-sg"), "{}", z.detail);
        let ice = feats(XDP_ACT_BASIC | XDP_ACT_REDIRECT | XDP_ACT_XSK_ZEROCOPY);
        assert_eq!(zero_copy_row(ice.as_ref()).verdict, Verdict::Available);
        assert_eq!(
            native_row(feats(XDP_ACT_BASIC).as_ref()).verdict,
            Verdict::Partial
        );
        let none = native_row(feats(0).as_ref());
        assert_eq!(none.verdict, Verdict::Unavailable);
        assert!(
            none.detail.contains("xdp-features: none"),
            "{}",
            none.detail
        );
        // Kernel before 6.3.
        let old = native_row(None);
        assert_eq!(old.verdict, Verdict::Unknown);
        assert_eq!(old.detail, "unknown (kernel < 6.3: no xdp_features)");
        assert_eq!(zero_copy_row(None).detail, old.detail);
    }

    fn attached(name: &str, carrier: Option<&'static str>) -> Attached {
        Attached {
            prog_id: 7,
            name: Some(name.into()),
            mode: "native",
            instance: Some("east".into()),
            carrier,
        }
    }

    #[test]
    fn run_time_metadata_from_counters() {
        let wire = attached(programs::ESP_INGRESS, Some("adjust_meta"));
        let r = meta_runtime(Some(&wire), Some(Ok((0, 0))), true);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(
            r.detail.contains("not seen yet (no frame redirected)"),
            "{}",
            r.detail
        );
        let r = meta_runtime(Some(&wire), Some(Ok((12, 0))), true);
        assert_eq!(r.verdict, Verdict::Available);
        assert!(r.detail.contains("honoured"), "{}", r.detail);
        let r = meta_runtime(Some(&wire), Some(Ok((12, 12))), true);
        assert_eq!(r.verdict, Verdict::Unavailable);
        assert!(
            r.detail
                .contains("refused at run time (12 frames carried the shim, meta_refused_shim"),
            "{}",
            r.detail
        );
        assert!(r.cost.is_some() && r.fix.is_some());
        let tenant = attached(programs::TENANT_INGRESS, Some("adjust_meta"));
        let r = meta_runtime(Some(&tenant), Some(Ok((10, 4))), true);
        assert_eq!(r.verdict, Verdict::Partial);
        assert!(
            r.detail.contains("tenant_meta_refused_shim"),
            "{}",
            r.detail
        );
        let shim = attached(programs::ESP_INGRESS, Some("shim"));
        let r = meta_runtime(Some(&shim), Some(Ok((12, 0))), true);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.detail.contains("shim carrier"), "{}", r.detail);
        assert_eq!(meta_runtime(None, None, true).verdict, Verdict::Unknown);
        let r = meta_runtime(Some(&attached(programs::ESP_INGRESS, None)), None, false);
        assert!(r.detail.starts_with("unknown (needs root)"), "{}", r.detail);
    }

    #[test]
    fn bind_outcomes() {
        let mods = super::super::kernel::Modules::default();
        let env = Env {
            cfg: None,
            mods: &mods,
            privileged: true,
            release: "5.3.0",
        };
        let ok = BindResult {
            with_wakeup: Ok(()),
            without: None,
        };
        let [c, w] = bind_rows(&env, &ok);
        assert_eq!(
            (c.verdict, w.verdict),
            (Verdict::Available, Verdict::Available)
        );
        let old = BindResult {
            with_wakeup: Err((libc::EINVAL, "bind")),
            without: Some(Ok(())),
        };
        let [c, w] = bind_rows(&env, &old);
        assert_eq!(
            (c.verdict, w.verdict),
            (Verdict::Available, Verdict::Unavailable)
        );
        assert!(w.detail.contains("EINVAL"), "{}", w.detail);
        let busy = BindResult {
            with_wakeup: Err((libc::EBUSY, "bind")),
            without: None,
        };
        let [c, _] = bind_rows(&env, &busy);
        assert_eq!(c.verdict, Verdict::Unknown);
        assert!(
            c.detail.contains("already has an AF_XDP socket"),
            "{}",
            c.detail
        );
        let user = Env {
            privileged: false,
            ..env
        };
        let eperm = BindResult {
            with_wakeup: Err((libc::EPERM, "socket")),
            without: None,
        };
        let [c, _] = bind_rows(&user, &eperm);
        assert_eq!(
            c.detail,
            "unknown (needs root): socket: Operation not permitted (EPERM)"
        );
    }
}
