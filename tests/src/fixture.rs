//! Table-driven XDP fixtures run through `BPF_PROG_TEST_RUN` (aya's `TestRun`): input packet,
//! map set-up, expected action, expected output bytes (metadata included), expected counters.
//!
//! Counters are checked as deltas: exactly the named counter moves by one, every other counter
//! of the program stays put.

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use vpn_common::{Counter, XdpMeta};
use vpn_userspace::dataplane::{Carrier, CarrierChoice, Dataplane, Side};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

pub type Hook = Box<dyn Fn(&mut Dataplane) -> Result<()>>;

pub enum Expect {
    /// XDP_PASS with the frame untouched.
    Pass,
    /// XDP_DROP (the frame's bytes are not looked at).
    Drop,
    /// XDP_REDIRECT with this metadata in front of these frame bytes.
    Redirect { meta: XdpMeta, frame: Vec<u8> },
}

pub struct Fixture {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub expect: Expect,
    pub counter: Counter,
    /// Per-SA counter expected to move: (slot, bytes added).
    pub sa: Option<(u32, u64)>,
    pub prepare: Option<Hook>,
    pub cleanup: Option<Hook>,
}

impl Fixture {
    pub fn new(name: &'static str, input: Vec<u8>, expect: Expect, counter: Counter) -> Fixture {
        Fixture {
            name,
            input,
            expect,
            counter,
            sa: None,
            prepare: None,
            cleanup: None,
        }
    }

    pub fn sa(mut self, slot: u32, bytes: u64) -> Fixture {
        self.sa = Some((slot, bytes));
        self
    }

    pub fn prepare(mut self, f: impl Fn(&mut Dataplane) -> Result<()> + 'static) -> Fixture {
        self.prepare = Some(Box::new(f));
        self
    }

    pub fn cleanup(mut self, f: impl Fn(&mut Dataplane) -> Result<()> + 'static) -> Fixture {
        self.cleanup = Some(Box::new(f));
        self
    }
}

/// Result of one run: action, bytes from `data_meta` to `data_end`, and the metadata length.
pub struct RunOut {
    pub action: u32,
    pub meta_len: usize,
    pub out: Vec<u8>,
}

pub fn run_once(dp: &Dataplane, prog: &str, input: &[u8]) -> Result<RunOut> {
    let p = dp.program(prog)?;
    let mut out = vec![0u8; input.len() + 256];
    // xdp_md in: data = 0, data_end = len, data_meta = 0, ingress_ifindex = 0 (loopback),
    // rx_queue_index = 0. With ctx_out alone the kernel would start from a zeroed context.
    let mut ctx_in = [0u8; 24];
    ctx_in[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
    let mut ctx_out = [0u8; 24];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat: 1,
            ..Default::default()
        })
        .with_context(|| format!("test_run of {prog}"))?;
    out.truncate(r.data_size_out as usize);
    // xdp_md out: data_meta at byte 8, data at byte 0 (offsets relative to data_meta).
    let data = u32::from_ne_bytes(ctx_out[0..4].try_into()?);
    let data_meta = u32::from_ne_bytes(ctx_out[8..12].try_into()?);
    Ok(RunOut {
        action: r.return_value,
        meta_len: data.saturating_sub(data_meta) as usize,
        out,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How many bytes of metadata area a redirected frame has with `dp`'s carrier: the whole
/// `XdpMeta` (metadata area), or none (shim: the same bytes are the frame's first).
pub fn meta_area_len(dp: &Dataplane) -> usize {
    match dp.carrier().carrier {
        Carrier::Meta => XdpMeta::LEN,
        Carrier::Shim => 0,
    }
}

/// Runs `f` with `carrier` where this kernel can load the programs with it. Where the verifier
/// refuses `bpf_xdp_adjust_meta` (the metadata carrier cannot load), checks instead that
/// forcing that carrier fails to load and names the helper, and that the probe says the same;
/// in the kernel lane (`VPN_LANE`, Debian kernels, which all accept the helper) that is a
/// failure.
pub fn with_carrier(carrier: Carrier, f: impl FnOnce(Carrier) -> Result<()>) -> Result<()> {
    if carrier == Carrier::Shim {
        return f(carrier);
    }
    let Err(refusal) = vpn_userspace::probe::bpf::xdp_adjust_meta() else {
        return f(carrier);
    };
    if std::env::var_os("VPN_LANE").is_some() {
        bail!("this lane kernel refuses bpf_xdp_adjust_meta ({refusal}); Debian's accept it");
    }
    let mut o = vpn_userspace::dataplane::LoadOptions::new(crate::netns::unique("vpnrefuse"));
    o.sa_slots = 16;
    o.sa_in_entries = 16;
    o.carrier = CarrierChoice::Forced(Carrier::Meta);
    match Dataplane::load(&o) {
        Ok(_) => bail!(
            "the probe says the kernel refuses bpf_xdp_adjust_meta ({refusal}), yet the programs \
                 loaded with the metadata carrier"
        ),
        Err(e) => {
            let e = format!("{e:#}");
            if !e.contains("bpf_xdp_adjust_meta") {
                bail!("loading with the metadata carrier failed without naming the helper: {e}");
            }
            println!(
                "this kernel refuses bpf_xdp_adjust_meta ({refusal}); checked that the metadata \
                 carrier fails to load with that reason. The shim carrier's run covers the \
                 programs."
            );
            Ok(())
        }
    }
}

/// Runs every fixture in order against `prog` and reports all failures together.
pub fn run_table(dp: &mut Dataplane, prog: &str, side: Side, table: Vec<Fixture>) -> Result<()> {
    let mut failures = Vec::new();
    let total = table.len();
    let meta_len = meta_area_len(dp);
    for f in table {
        if let Some(p) = &f.prepare {
            p(dp).with_context(|| format!("{}: prepare", f.name))?;
        }
        let before = dp.counters(side)?;
        let sa_before = match f.sa {
            Some((slot, _)) => Some(dp.sa_stats(slot)?),
            None => None,
        };
        let r = run_once(dp, prog, &f.input).with_context(|| f.name)?;
        let after = dp.counters(side)?;
        let mut errs = Vec::new();

        let (want_action, meta_frame) = match &f.expect {
            Expect::Pass => (XDP_PASS, None),
            Expect::Drop => (XDP_DROP, None),
            Expect::Redirect { meta, frame } => (XDP_REDIRECT, Some((meta, frame))),
        };
        if r.action != want_action {
            errs.push(format!("action {} want {}", r.action, want_action));
        }
        match (&f.expect, meta_frame) {
            (Expect::Pass, _) if r.meta_len != 0 || r.out != f.input => {
                errs.push(format!(
                    "frame changed: meta {} bytes, out {}",
                    r.meta_len,
                    hex(&r.out)
                ));
            }
            (_, Some((meta, frame))) => {
                if r.meta_len != meta_len || r.out.len() < XdpMeta::LEN {
                    errs.push(format!(
                        "metadata area {} bytes want {meta_len} (carrier {}), {} bytes out",
                        r.meta_len,
                        dp.carrier().carrier,
                        r.out.len()
                    ));
                } else {
                    let got = XdpMeta::from_bytes(r.out[..XdpMeta::LEN].try_into()?);
                    if got != *meta {
                        errs.push(format!("metadata {got:?} want {meta:?}"));
                    }
                    if r.out[XdpMeta::LEN..] != frame[..] {
                        errs.push(format!(
                            "frame {} want {}",
                            hex(&r.out[XdpMeta::LEN..]),
                            hex(frame)
                        ));
                    }
                }
            }
            _ => {}
        }
        for ((c, b), (_, a)) in before.iter().zip(after.iter()) {
            let want = if *c == f.counter { b + 1 } else { *b };
            if *a != want {
                errs.push(format!(
                    "counter {} moved {} -> {} (want {})",
                    c.name(),
                    b,
                    a,
                    want
                ));
            }
        }
        if let (Some((slot, bytes)), Some(sb)) = (f.sa, sa_before) {
            let sa = dp.sa_stats(slot)?;
            if sa.packets != sb.packets + 1 || sa.bytes != sb.bytes + bytes {
                errs.push(format!(
                    "SA slot {slot}: packets {} -> {}, bytes {} -> {} (want +1, +{bytes})",
                    sb.packets, sa.packets, sb.bytes, sa.bytes
                ));
            }
        }
        if let Some(c) = &f.cleanup {
            c(dp).with_context(|| format!("{}: cleanup", f.name))?;
        }
        if !errs.is_empty() {
            failures.push(format!("{}:\n    {}", f.name, errs.join("\n    ")));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {total} fixtures failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    println!(
        "{prog}: {total} fixtures passed (carrier {})",
        dp.carrier().carrier
    );
    Ok(())
}

/// SPI of [`attached_plane`]'s inbound SA (slot 5, tenant 3).
pub const ATTACHED_SPI: u32 = 0xc0de;

/// The attach tests' plane: `wire` and `tenant` (in the calling thread's namespace) with
/// `esp_ingress` and `tenant_ingress` attached natively, an AF_XDP socket with `carrier` on
/// queue 0 of each, ESP SPI [`ATTACHED_SPI`] known (slot 5, tenant 3, window 64), and VLAN 100
/// of tenant 3 protecting 10.2.0.0/24 (SA slot 6) from untagged-tenant-free `tenant`.
/// Returns the plane and the (wire, tenant) sockets.
pub fn attached_plane(
    prefix: &str,
    carrier: Carrier,
    wire: &str,
    tenant: &str,
) -> Result<(
    Dataplane,
    vpn_userspace::dataplane::xsk::XskSocket,
    vpn_userspace::dataplane::xsk::XskSocket,
)> {
    use aya::programs::XdpMode;
    use vpn_common::{
        ReplayWindow,
        maps::{IfaceConfig, NO_TENANT, POLICY_PROTECT, PolicyValue, SaIn},
    };
    use vpn_userspace::dataplane::{LoadOptions, xsk::XskSocket};
    let mut o = LoadOptions::new(crate::netns::unique(prefix));
    o.sa_slots = 64;
    o.sa_in_entries = 64;
    o.carrier = CarrierChoice::Forced(carrier);
    let mut dp = Dataplane::load(&o)?;
    dp.attach_wire(wire, XdpMode::Driver)?;
    dp.attach_tenant(tenant, XdpMode::Driver)?;
    let mut wire_xsk = XskSocket::bind(wire, 0, 256)?;
    let mut ten_xsk = XskSocket::bind(tenant, 0, 256)?;
    wire_xsk.set_carrier(carrier);
    ten_xsk.set_carrier(carrier);
    dp.set_wire_xsk(0, wire_xsk.fd())?;
    dp.set_tenant_xsk(0, ten_xsk.fd())?;
    dp.set_iface(
        vpn_userspace::dataplane::neigh::iface_info(tenant)?.index,
        IfaceConfig {
            default_tenant: NO_TENANT,
            xsk_base: 0,
        },
    )?;
    dp.add_sa_in(
        ATTACHED_SPI,
        SaIn {
            slot: 5,
            tenant: 3,
            flags: 0,
            min_esp_len: SaIn::min_esp_len_for(8, 16),
            _pad: 0,
        },
        ReplayWindow::new(64, false),
    )?;
    dp.set_vlan_tenant(100, 3)?;
    dp.set_policy_v4(
        3,
        "10.2.0.0".parse()?,
        24,
        PolicyValue {
            sa_slot: 6,
            action: POLICY_PROTECT,
        },
    )?;
    Ok((dp, wire_xsk, ten_xsk))
}
