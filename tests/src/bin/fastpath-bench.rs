//! `cargo xtask bench` (fast-path part): ns per packet of the XDP programs through
//! BPF_PROG_TEST_RUN, each beside the no-op program measured in the same run (rounds
//! alternate, the median is kept), and the SPI lookup with 1 vs 100,000 SAs installed.
//!
//! What is measured: everything the programs do up to the verdict (parsing, tenant and SPI
//! lookups, LPM, replay check, counters), on paths that leave the frame as it was.
//! BPF_PROG_TEST_RUN reuses one frame across repetitions, so the redirect path (metadata
//! write, head adjustment, XSKMAP redirect) would see its own output again. That path is
//! measured with one repetition per BPF_PROG_TEST_RUN call instead (a fresh frame every time),
//! averaged over many calls, once per XDP metadata carrier the kernel loads (the metadata
//! area and the in-packet shim), beside the no-op program measured the same way: the
//! kernel's timer is then read around every single run, which adds the same few ns to each.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use clap::Parser;
use vpn_common::{
    Counter, DropReason, Outcome, ReplayWindow,
    maps::{POLICY_BYPASS, POLICY_PROTECT, PolicyValue, SaIn, programs},
};
use vpn_tests::netns::NetNs;
use vpn_tests::{
    netns::unique,
    pkt::Packet,
    results::{self, Record, machine, today},
};
use vpn_userspace::dataplane::{
    Carrier, CarrierChoice, Dataplane, LoadOptions, Side, xsk::XskSocket,
};

#[derive(Parser)]
struct Args {
    /// Results file (records are replaced by name, others kept).
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Fewer rounds (CI keeps the harness alive with it; figures are then rougher).
    #[arg(long)]
    quick: bool,
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// BPF_PROG_TEST_RUN calls (one repetition each) per redirect-path measurement.
    #[arg(long, default_value_t = 100_000)]
    calls: u32,
}

fn input_ctx(len: usize) -> [u8; 24] {
    let mut c = [0u8; 24];
    c[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    c
}

/// ns per run of `prog` on `frame`, checking the verdict and that `counter` moved by
/// `repeat` (so the path measured is the one named).
fn ns_per_packet(
    dp: &Dataplane,
    prog: &str,
    frame: &[u8],
    repeat: u32,
    expect: Option<(Side, Counter)>,
) -> Result<f64> {
    let before = match expect {
        Some((side, c)) => dp.counter(side, c)?,
        None => 0,
    };
    let ctx = input_ctx(frame.len());
    let r = dp
        .program(prog)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .with_context(|| format!("test_run {prog}"))?;
    if let Some((side, c)) = expect {
        let after = dp.counter(side, c)?;
        if after - before != repeat as u64 {
            bail!(
                "{prog}: counter {} moved by {} in {repeat} runs: not the path meant",
                c.name(),
                after - before
            );
        }
    }
    Ok(r.duration.as_nanos() as f64)
}

/// Mean ns of one run of `prog` on `frame` over `calls` calls of one repetition each (a fresh
/// frame every time), checking every verdict; `expect` moved by `calls`.
fn ns_per_single_run(
    dp: &Dataplane,
    prog: &str,
    frame: &[u8],
    calls: u32,
    verdict: u32,
    expect: Option<(Side, Counter)>,
) -> Result<f64> {
    let before = match expect {
        Some((side, c)) => dp.counter(side, c)?,
        None => 0,
    };
    let ctx = input_ctx(frame.len());
    let p = dp.program(prog)?;
    let mut total = 0u128;
    for _ in 0..calls {
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .with_context(|| format!("test_run {prog}"))?;
        if r.return_value != verdict {
            bail!("{prog}: verdict {} want {verdict}", r.return_value);
        }
        total += r.duration.as_nanos();
    }
    if let Some((side, c)) = expect {
        let after = dp.counter(side, c)?;
        if after - before != calls as u64 {
            bail!(
                "{prog}: counter {} moved by {} in {calls} runs: not the path meant",
                c.name(),
                after - before
            );
        }
    }
    Ok(total as f64 / calls as f64)
}

/// A data plane loaded with `carrier` whose ESP (SPI, sequence 2) and VLAN 100 frames to
/// 10.2.0.9 take the redirect path to an AF_XDP socket bound in a namespace of their own.
fn load_redirect(carrier: Carrier) -> Result<(NetNs, XskSocket, Dataplane)> {
    let ns = NetNs::new("vpnbr")?;
    ns.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"])?;
    ns.ip(&["link", "set", "x0", "up"])?;
    ns.ip(&["link", "set", "x1", "up"])?;
    let sock = {
        let _in = ns.enter()?;
        XskSocket::bind("x0", 0, 256)?
    };
    let mut o = LoadOptions::new(unique("vpnbench"));
    o.sa_slots = 32;
    o.sa_in_entries = 32;
    o.carrier = CarrierChoice::Forced(carrier);
    let mut dp = Dataplane::load(&o)?;
    dp.set_wire_xsk(0, sock.fd())?;
    dp.set_tenant_xsk(0, sock.fd())?;
    dp.add_sa_in(
        SPI,
        SaIn {
            slot: 1,
            tenant: 1,
            flags: 0,
            min_esp_len: SaIn::min_esp_len_for(8, 16),
            _pad: 0,
        },
        ReplayWindow::new(1024, false),
    )?;
    dp.set_vlan_tenant(100, 1)?;
    dp.set_policy_v4(
        1,
        "10.2.0.0".parse()?,
        24,
        PolicyValue {
            sa_slot: 2,
            action: POLICY_PROTECT,
        },
    )?;
    Ok((ns, sock, dp))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const SPI: u32 = 0x0001_0000;

fn load(sa_count: u32) -> Result<Dataplane> {
    let mut o = LoadOptions::new(unique("vpnbench"));
    o.sa_slots = sa_count.max(16) + 16;
    o.sa_in_entries = sa_count.max(16) + 16;
    let mut dp = Dataplane::load(&o)?;
    let sa = |slot| SaIn {
        slot,
        tenant: 1,
        flags: 0,
        min_esp_len: SaIn::min_esp_len_for(8, 16),
        _pad: 0,
    };
    dp.add_sa_in(SPI, sa(1), ReplayWindow::new(1024, false))?;
    // Seen: sequence number 1 is a duplicate from now on, so the pre-check path runs to
    // its end and the frame is never modified.
    dp.replay().advance(1, 1)?;
    for i in 1..sa_count {
        dp.add_sa_in(SPI + i, sa(2 + i), ReplayWindow::new(64, false))?;
    }
    dp.set_vlan_tenant(100, 1)?;
    dp.set_policy_v4(
        1,
        "10.2.0.0".parse()?,
        24,
        PolicyValue {
            sa_slot: 0,
            action: POLICY_BYPASS,
        },
    )?;
    Ok(dp)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rounds = if args.quick { 3 } else { 9 };
    let esp = Packet::eth()
        .ipv4("172.24.4.233", "172.24.4.226")
        .esp(SPI, 1)
        .payload_len(1400)
        .build();
    let esp_udp = Packet::eth()
        .ipv4("172.24.4.233", "172.24.4.226")
        .udp(4500, 4500)
        .esp(SPI, 1)
        .payload_len(1400)
        .build();
    let tenant = Packet::eth()
        .vlan(100)
        .ipv4("10.1.0.5", "10.2.0.9")
        .payload_len(1400)
        .build();
    let dup = Counter::Drop(DropReason::ReplayDuplicate);

    eprintln!("loading: 1 SA, then 100,000 SAs");
    let one = load(1)?;
    let many = load(100_000)?;

    let mut noop = vec![];
    let mut esp_pre = vec![];
    let mut esp_udp_pre = vec![];
    let mut ten = vec![];
    let mut esp_many = vec![];
    // The redirect path, per carrier this kernel loads (the metadata area only where the
    // verifier accepts bpf_xdp_adjust_meta).
    let carriers: Vec<Carrier> = Carrier::ALL
        .into_iter()
        .filter(|c| *c == Carrier::Shim || vpn_userspace::probe::bpf::xdp_adjust_meta().is_ok())
        .collect();
    eprintln!(
        "redirect path with the carriers: {}",
        carriers
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let redirect_dps = carriers
        .iter()
        .map(|c| load_redirect(*c).map(|d| (*c, d)))
        .collect::<Result<Vec<_>>>()?;
    let calls = if args.quick {
        args.calls.min(20_000)
    } else {
        args.calls
    };
    let mut noop_single = vec![];
    let mut redirect: std::collections::BTreeMap<(Carrier, &str), Vec<f64>> = Default::default();
    for r in 0..rounds {
        eprintln!("round {}/{rounds}", r + 1);
        noop_single.push(ns_per_single_run(
            &one,
            programs::NOOP,
            &esp,
            calls,
            2,
            None,
        )?);
        let order: Vec<&(Carrier, (NetNs, XskSocket, Dataplane))> = if r % 2 == 0 {
            redirect_dps.iter().collect()
        } else {
            redirect_dps.iter().rev().collect()
        };
        for (c, (_, _, dp)) in order {
            redirect
                .entry((*c, "esp"))
                .or_default()
                .push(ns_per_single_run(
                    dp,
                    programs::ESP_INGRESS,
                    &esp,
                    calls,
                    4,
                    Some((Side::Wire, Counter::Outcome(Outcome::WireRedirectEsp))),
                )?);
            redirect
                .entry((*c, "vlan"))
                .or_default()
                .push(ns_per_single_run(
                    dp,
                    programs::TENANT_INGRESS,
                    &tenant,
                    calls,
                    4,
                    Some((Side::Tenant, Counter::Outcome(Outcome::TenantRedirect))),
                )?);
        }
        noop.push(ns_per_packet(
            &one,
            programs::NOOP,
            &esp,
            args.repeat,
            None,
        )?);
        esp_pre.push(ns_per_packet(
            &one,
            programs::ESP_INGRESS,
            &esp,
            args.repeat,
            Some((Side::Wire, dup)),
        )?);
        esp_udp_pre.push(ns_per_packet(
            &one,
            programs::ESP_INGRESS,
            &esp_udp,
            args.repeat,
            Some((Side::Wire, dup)),
        )?);
        ten.push(ns_per_packet(
            &one,
            programs::TENANT_INGRESS,
            &tenant,
            args.repeat,
            Some((Side::Tenant, Counter::Outcome(Outcome::TenantPassBypass))),
        )?);
        esp_many.push(ns_per_packet(
            &many,
            programs::ESP_INGRESS,
            &esp,
            args.repeat,
            Some((Side::Wire, dup)),
        )?);
    }
    let (noop, esp_pre, esp_udp_pre, ten, esp_many) = (
        median(noop),
        median(esp_pre),
        median(esp_udp_pre),
        median(ten),
        median(esp_many),
    );

    let machine = machine();
    let date = today();
    let rec = |name: &str, value: f64, base: Option<(&str, f64)>| Record {
        name: name.into(),
        value: (value * 100.0).round() / 100.0,
        unit: "ns/packet".into(),
        baseline_name: base.map(|b| b.0.into()),
        baseline_value: base.map(|b| (b.1 * 100.0).round() / 100.0),
        ratio: base.map(|b| ((value / b.1) * 1000.0).round() / 1000.0),
        machine: machine.clone(),
        date: date.clone(),
    };
    let noop_single = median(noop_single);
    let mut new = vec![
        rec("xdp_noop", noop, None),
        rec(
            "esp_ingress_precheck_esp_1sa",
            esp_pre,
            Some(("xdp_noop", noop)),
        ),
        rec(
            "esp_ingress_precheck_esp_in_udp_1sa",
            esp_udp_pre,
            Some(("xdp_noop", noop)),
        ),
        rec(
            "tenant_ingress_vlan_lpm_bypass",
            ten,
            Some(("xdp_noop", noop)),
        ),
        rec(
            "esp_ingress_precheck_esp_100000sa",
            esp_many,
            Some(("esp_ingress_precheck_esp_1sa", esp_pre)),
        ),
        rec("xdp_noop_single_run", noop_single, None),
    ];
    // Per carrier: the metadata area against the no-op (same single-run method), the shim
    // against the metadata area (or the no-op where the metadata area does not load).
    for (path, prog) in [
        ("esp", "esp_ingress_redirect_esp"),
        ("vlan", "tenant_ingress_redirect_vlan"),
    ] {
        let meta = redirect
            .get(&(Carrier::Meta, path))
            .map(|v| median(v.clone()));
        for c in &carriers {
            let v = median(redirect[&(*c, path)].clone());
            let name = format!("{prog}_{}", c.name());
            let meta_name = format!("{prog}_{}", Carrier::Meta.name());
            let base = match (c, meta) {
                (Carrier::Shim, Some(m)) => (meta_name.as_str(), m),
                _ => ("xdp_noop_single_run", noop_single),
            };
            new.push(rec(&name, v, Some(base)));
        }
    }

    println!(
        "{:<40} {:>10} {:>10}  baseline",
        "benchmark", "ns/pkt", "ratio"
    );
    for r in &new {
        println!(
            "{:<40} {:>10.2} {:>10}  {}",
            r.name,
            r.value,
            r.ratio.map(|x| format!("{x:.3}")).unwrap_or_default(),
            r.baseline_name.clone().unwrap_or_default()
        );
    }

    results::merge_into(&args.out, &new)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
