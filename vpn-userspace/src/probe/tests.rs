//! The pure parts of the probe: the JSON schema (field names, ids), the verdict mapping, the
//! choices made from rows, and the human rendering.

use serde_json::{Value, json};

use super::*;

fn sample() -> Report {
    let meta = spec_of(ids::XDP_ADJUST_META).unavailable(
        "verifier: program of this type cannot use helper bpf_xdp_adjust_meta#54 (Invalid \
         argument (EINVAL))",
        "none needed",
    );
    Report {
        schema: SCHEMA,
        kernel: Kernel {
            release: "6.18.44-fc-v1300".into(),
            version: "#1 SMP".into(),
            machine: "x86_64".into(),
            config: Some("/proc/config.gz".into()),
        },
        privileged: true,
        netns: None,
        features: vec![
            spec_of(ids::BPF_JIT).available("on (net.core.bpf_jit_enable = 1)"),
            meta,
        ],
        devices: vec![Device {
            name: "veth0".into(),
            ifindex: 4,
            driver: Some("veth".into()),
            driver_error: None,
            xdp_features: Some(vec!["basic", "redirect", "rx-sg"]),
            xdp: vec![Attached {
                prog_id: 42,
                name: Some("esp_ingress".into()),
                mode: "native",
                instance: Some("east".into()),
                carrier: Some("shim"),
            }],
            features: vec![spec_of(ids::AF_XDP_COPY).available("bound")],
        }],
        device_hint: None,
        choices: vec![Choice {
            id: ids::CHOICE_CARRIER,
            device: None,
            value: "shim".into(),
            reason: "kernel refuses bpf_xdp_adjust_meta".into(),
            aeads: None,
        }],
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

/// The field names of schema 1. Changing one breaks scripts: bump SCHEMA and the README.
#[test]
fn json_schema_field_names() {
    let v = serde_json::to_value(sample()).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(
        keys(&v),
        [
            "choices",
            "device_hint",
            "devices",
            "features",
            "kernel",
            "netns",
            "privileged",
            "schema"
        ]
    );
    assert_eq!(
        keys(&v["kernel"]),
        ["config", "machine", "release", "version"]
    );
    let feature = ["cost", "detail", "fix", "id", "since", "title", "verdict"];
    assert_eq!(keys(&v["features"][0]), feature);
    assert_eq!(keys(&v["features"][1]), feature);
    assert_eq!(
        keys(&v["devices"][0]),
        [
            "driver",
            "driver_error",
            "features",
            "ifindex",
            "name",
            "xdp",
            "xdp_features"
        ]
    );
    assert_eq!(
        keys(&v["devices"][0]["xdp"][0]),
        ["carrier", "instance", "mode", "name", "prog_id"]
    );
    assert_eq!(keys(&v["devices"][0]["features"][0]), feature);
    assert_eq!(
        keys(&v["choices"][0]),
        ["aeads", "device", "id", "reason", "value"]
    );
    // Values: verdicts in lower case, absent cost/fix as null (stable keys), since as text.
    assert_eq!(v["features"][0]["verdict"], "available");
    assert_eq!(v["features"][0]["cost"], Value::Null);
    assert_eq!(v["features"][0]["fix"], Value::Null);
    assert_eq!(v["features"][1]["verdict"], "unavailable");
    assert_eq!(v["features"][1]["since"], "4.15");
    assert!(v["features"][1]["cost"].as_str().unwrap().contains("shim"));
    assert_eq!(v["features"][1]["fix"], "none needed");
    assert_eq!(
        v["devices"][0]["xdp"][0],
        json!({"prog_id": 42, "name": "esp_ingress", "mode": "native", "instance": "east",
            "carrier": "shim"})
    );
}

/// The stable ids, in report order. Adding one is fine (append it here and in the README);
/// renaming or removing one breaks scripts.
#[test]
fn stable_ids() {
    let kernel: Vec<&str> = KERNEL_FEATURES.iter().map(|s| s.id).collect();
    assert_eq!(
        kernel,
        [
            "bpf_jit",
            "bpffs",
            "xdp_adjust_meta",
            "xdp_adjust_head",
            "mmapable_array",
            "xdp_live_frames",
            "af_xdp",
            "netdev_xdp_features",
            "xfrm_netlink",
            "xfrm_esp_ipv4",
            "xfrm_esp_ipv6",
            "xfrm_aead_aes128gcm16",
            "xfrm_aead_aes256gcm16",
            "xfrm_aead_chacha20poly1305",
            "kernel_pktgen",
        ]
    );
    let device: Vec<&str> = DEVICE_FEATURES.iter().map(|s| s.id).collect();
    assert_eq!(
        device,
        [
            "xdp_native",
            "af_xdp_zero_copy",
            "af_xdp_copy",
            "af_xdp_need_wakeup",
            "xdp_meta_runtime",
            "esp_hw_offload",
        ]
    );
    // The README documents every id and choice.
    let readme = include_str!("../../../README.md");
    for id in kernel.iter().chain(device.iter()).chain(
        [
            ids::CHOICE_CARRIER,
            ids::CHOICE_PKTGEN_ENGINE,
            ids::CHOICE_KERNEL_BACKEND,
            ids::CHOICE_XDP_MODE,
            ids::CHOICE_AF_XDP_MODE,
            ids::CHOICE_BACKEND_AUTO,
        ]
        .iter(),
    ) {
        assert!(
            readme.contains(&format!("`{id}`")),
            "README.md does not document `{id}`"
        );
    }
}

#[test]
fn verdict_mapping() {
    let s = spec_of(ids::XDP_LIVE_FRAMES);
    let eperm = io::Error::from_raw_os_error(libc::EPERM);
    // Without root, EPERM says nothing about the kernel.
    let r = s.refusal(&eperm, false, |e| s.unavailable(e, "x"));
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(
        r.detail,
        "unknown (needs root): Operation not permitted (EPERM)"
    );
    // As root it is the kernel's answer (some 6.18 builds refuse live frames to root).
    let r = s.refusal(&eperm, true, |e| s.unavailable(e, "x"));
    assert_eq!(r.verdict, Verdict::Unavailable);
    assert_eq!(r.detail, "Operation not permitted (EPERM)");
    assert!(r.cost.as_deref().unwrap().contains("vpn-pktgen"));
    let einval = io::Error::from_raw_os_error(libc::EINVAL);
    let r = s.refusal(&einval, false, |e| s.unavailable(e, "x"));
    assert_eq!(r.verdict, Verdict::Unavailable);
    assert_eq!(errno_text(&einval), "Invalid argument (EINVAL)");
    assert_eq!(
        errno_text(&io::Error::from_raw_os_error(libc::EPROTONOSUPPORT)),
        "Protocol not supported (EPROTONOSUPPORT)"
    );
    // Available rows carry neither cost nor fix; the others carry the spec's cost.
    let a = s.available("ran");
    assert_eq!((a.cost, a.fix), (None, None));
    for spec in KERNEL_FEATURES.iter().chain(DEVICE_FEATURES.iter()) {
        let r = spec.unknown("?", None);
        assert!(
            r.cost.as_deref().is_some_and(|c| !c.is_empty()),
            "{}",
            spec.id
        );
    }
}

fn row(id: &'static str, v: Verdict) -> Feature {
    spec_of(id).row(v, format!("{id} {}", v.name()), None)
}

#[test]
fn kernel_backend_choice_from_rows() {
    use Verdict::*;
    let debian = vec![
        row(ids::XFRM_NETLINK, Available),
        row(ids::XFRM_ESP_IPV4, Available),
        row(ids::XFRM_ESP_IPV6, Available),
        row(ids::XFRM_AEAD_AES128GCM16, Available),
        row(ids::XFRM_AEAD_AES256GCM16, Available),
        row(ids::XFRM_AEAD_CHACHA20POLY1305, Unavailable),
    ];
    let c = kernel_backend_choice(&debian);
    assert_eq!(c.value, "usable");
    assert_eq!(c.aeads, Some(vec!["aes128gcm16", "aes256gcm16"]));
    assert!(c.reason.contains("IPv4 and IPv6"), "{}", c.reason);
    let mut here = debian.clone();
    for r in &mut here[1..] {
        r.verdict = Unavailable;
    }
    let c = kernel_backend_choice(&here);
    assert_eq!(c.value, "unusable");
    assert_eq!(c.reason, "the kernel has no ESP");
    assert_eq!(c.aeads, Some(vec![]));
    let mut only_chacha = debian.clone();
    only_chacha[3].verdict = Unavailable;
    only_chacha[4].verdict = Unavailable;
    only_chacha[5].verdict = Available;
    let c = kernel_backend_choice(&only_chacha);
    assert_eq!(c.value, "unusable");
    assert!(
        c.reason.contains("none of the backend's ciphers"),
        "{}",
        c.reason
    );
    let mut no_root = debian;
    no_root[0].verdict = Unknown;
    assert_eq!(kernel_backend_choice(&no_root).value, "unknown");
}

#[test]
fn pktgen_choice_from_rows() {
    use Verdict::*;
    let c = pktgen_choice(&[
        row(ids::XDP_LIVE_FRAMES, Available),
        row(ids::KERNEL_PKTGEN, Available),
    ]);
    assert_eq!(c.value, "kernel-pktgen");
    let c = pktgen_choice(&[
        row(ids::XDP_LIVE_FRAMES, Available),
        row(ids::KERNEL_PKTGEN, Unavailable),
    ]);
    assert_eq!(c.value, "xdp-live-frames");
    assert!(
        c.reason.contains("kernel_pktgen unavailable"),
        "{}",
        c.reason
    );
    let c = pktgen_choice(&[
        row(ids::XDP_LIVE_FRAMES, Unavailable),
        row(ids::KERNEL_PKTGEN, Unavailable),
    ]);
    assert_eq!(c.value, "af-xdp");
    assert!(
        c.reason.ends_with("--mode esp always uses AF_XDP"),
        "{}",
        c.reason
    );
}

#[test]
fn human_rendering() {
    let s = render::render(&sample());
    let want = "\
kernel 6.18.44-fc-v1300 (x86_64), build config /proc/config.gz, probed as root

KERNEL           VERDICT      DETAIL
bpf_jit          available    on (net.core.bpf_jit_enable = 1)
xdp_adjust_meta  unavailable  verifier: program of this type cannot use helper bpf_xdp_adjust_meta#54 (Invalid argument (EINVAL))
                              cost: vpnd carries the metadata as a 16-byte in-packet shim (bpf_xdp_adjust_head) that the workers strip: same function, a little more work per redirected frame
                              fix:  none needed

device veth0 (ifindex 4, driver veth); XDP attached: esp_ingress (id 42, native, instance east, carrier shim)
DEVICE       VERDICT    DETAIL
af_xdp_copy  available  bound

CHOICE   DEVICE  VALUE  WHY
carrier  -       shim   kernel refuses bpf_xdp_adjust_meta
";
    assert_eq!(s, want, "got:\n{s}");
    let mut r = sample();
    r.devices.clear();
    r.privileged = false;
    r.device_hint = Some("no device".into());
    let s = render::render(&r);
    assert!(s.contains("probed without root"), "{s}");
    assert!(s.contains("\ndevices: no device\n"), "{s}");
}

#[test]
fn error_text_names_errnos() {
    let e = anyhow::Error::new(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        .context("lo: ethtool driver info");
    assert_eq!(
        error_text(&e),
        "lo: ethtool driver info: Operation not supported (EOPNOTSUPP)"
    );
    let k = anyhow::Error::new(crate::xfrm::netlink::KernelError {
        what: "adding xfrm SA spi 0x00000100 to 192.0.2.2".into(),
        err: io::Error::from_raw_os_error(libc::EPROTONOSUPPORT),
    });
    assert_eq!(
        error_text(&k),
        "adding xfrm SA spi 0x00000100 to 192.0.2.2: Protocol not supported (EPROTONOSUPPORT)"
    );
}

/// A real run (root or not: without root the rows say so): every kernel row once, in the
/// order of the table, and the node-wide choices.
#[test]
fn run_reports_every_kernel_row() {
    let r = run(&Options::default()).expect("the probe runs without any device");
    let got: Vec<&str> = r.features.iter().map(|f| f.id).collect();
    let want: Vec<&str> = KERNEL_FEATURES.iter().map(|s| s.id).collect();
    assert_eq!(got, want);
    for f in &r.features {
        assert_eq!(
            f.cost.is_none() && f.fix.is_none(),
            f.verdict == Verdict::Available,
            "{f:?}"
        );
    }
    let choices: Vec<&str> = r.choices.iter().take(3).map(|c| c.id).collect();
    assert_eq!(
        choices,
        [
            ids::CHOICE_CARRIER,
            ids::CHOICE_PKTGEN_ENGINE,
            ids::CHOICE_KERNEL_BACKEND
        ]
    );
    assert_eq!(r.privileged, kernel::privileged());
    let e = run(&Options {
        devices: vec!["no-such-if0".into()],
        ..Options::default()
    })
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("no interface \"no-such-if0\""),
        "{e:#}"
    );
}
