//! `bench-report`: turns `bench/results.json` into `bench/RESULTS.md` (the targets of the
//! performance issue with what was measured and by how much each is met or missed, then every
//! figure by scenario) and SVG plots: throughput vs packet size, and scaling with workers and
//! with SAs. `cargo xtask bench` runs it after the benchmarks; it measures nothing itself.
//!
//! The profiling analysis of missed targets is prose kept by hand in `bench/analysis.md`; it is
//! copied into RESULTS.md as it is.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use plotters::prelude::*;
use vpn_tests::results::Record;

#[derive(Parser)]
struct Args {
    /// The results file the benchmarks wrote.
    #[arg(long, default_value = "bench/results.json")]
    results: PathBuf,
    /// Where RESULTS.md, the plots and analysis.md live.
    #[arg(long, default_value = "bench")]
    dir: PathBuf,
}

/// How a target is judged from one record.
enum Rule {
    /// The record's `ratio` (value / baseline) must be at most this.
    RatioAtMost(f64),
    /// The record's `ratio` must be at least this.
    RatioAtLeast(f64),
    /// The record's value must be at least this.
    ValueAtLeast(f64),
    /// The record's value must be exactly zero.
    Zero,
}

struct Target {
    what: &'static str,
    record: &'static str,
    rule: Rule,
}

/// The targets of the performance issue, each tied to the record that measures it.
const TARGETS: &[Target] = &[
    Target {
        what: "esp_ingress within 2x the no-op XDP program per packet",
        record: "esp_ingress_precheck_esp_1sa",
        rule: Rule::RatioAtMost(2.0),
    },
    Target {
        what: "esp_ingress with 100,000 SAs within 1.2x of 1 SA",
        record: "esp_ingress_precheck_esp_100000sa",
        rule: Rule::RatioAtMost(1.2),
    },
    Target {
        what: "AES-128-GCM seal per core at 1400 B >= 3x `openssl speed -evp` (default backend)",
        record: "seal_aes128gcm_1400B_aws-lc-rs",
        rule: Rule::RatioAtLeast(3.0),
    },
    Target {
        what: "AES-128-GCM open per core at 1400 B >= 3x `openssl speed -evp` (default backend)",
        record: "open_aes128gcm_1400B_aws-lc-rs",
        rule: Rule::RatioAtLeast(3.0),
    },
    Target {
        what: "AES-256-GCM seal per core at 1400 B >= 3x `openssl speed -evp` (default backend)",
        record: "seal_aes256gcm_1400B_aws-lc-rs",
        rule: Rule::RatioAtLeast(3.0),
    },
    Target {
        what: "AES-256-GCM open per core at 1400 B >= 3x `openssl speed -evp` (default backend)",
        record: "open_aes256gcm_1400B_aws-lc-rs",
        rule: Rule::RatioAtLeast(3.0),
    },
    Target {
        what: "tunnel TCP throughput >= 10x strongSwan-libipsec",
        record: "tunnel_tcp_1stream_gbps_vs_strongswan",
        rule: Rule::ValueAtLeast(10.0),
    },
    Target {
        what: "tunnel 64-byte packet rate >= 10x strongSwan-libipsec",
        record: "tunnel_udp_64B_received_pps_vs_strongswan",
        rule: Rule::ValueAtLeast(10.0),
    },
    Target {
        what: "tunnel UDP 1400-byte packet rate >= half of plain routing",
        record: "tunnel_udp_1400B_received_pps_vs_plain",
        rule: Rule::ValueAtLeast(0.5),
    },
    Target {
        what: "data plane encrypt >= 3 Mpps per worker at 64 B",
        record: "dataplane_encrypt_64B_1worker_pps",
        rule: Rule::ValueAtLeast(3e6),
    },
    Target {
        what: "data plane decrypt >= 3 Mpps per worker at 64 B",
        record: "dataplane_decrypt_64B_1worker_pps",
        rule: Rule::ValueAtLeast(3e6),
    },
    Target {
        what: "data plane encrypt >= 1 Mpps per worker at 1400 B",
        record: "dataplane_encrypt_1400B_1worker_pps",
        rule: Rule::ValueAtLeast(1e6),
    },
    Target {
        what: "data plane decrypt >= 1 Mpps per worker at 1400 B",
        record: "dataplane_decrypt_1400B_1worker_pps",
        rule: Rule::ValueAtLeast(1e6),
    },
    Target {
        what: "2 workers >= 1.8x one worker (encrypt, 64 B)",
        record: "dataplane_encrypt_64B_2workers_pps",
        rule: Rule::RatioAtLeast(1.8),
    },
    Target {
        what: "2 workers >= 1.8x one worker (decrypt, 64 B)",
        record: "dataplane_decrypt_64B_2workers_pps",
        rule: Rule::RatioAtLeast(1.8),
    },
    Target {
        what: "in-packet shim within 5% of bpf_xdp_adjust_meta: esp_ingress redirect path",
        record: "esp_ingress_redirect_esp_shim",
        rule: Rule::RatioAtMost(1.05),
    },
    Target {
        what: "in-packet shim within 5% of bpf_xdp_adjust_meta: tenant_ingress redirect path",
        record: "tenant_ingress_redirect_vlan_shim",
        rule: Rule::RatioAtMost(1.05),
    },
    Target {
        what: "in-packet shim within 5% of bpf_xdp_adjust_meta: data plane encrypt, 64 B",
        record: "dataplane_encrypt_64B_1worker_shim_pps",
        rule: Rule::RatioAtLeast(0.95),
    },
    Target {
        what: "in-packet shim within 5% of bpf_xdp_adjust_meta: data plane decrypt, 64 B",
        record: "dataplane_decrypt_64B_1worker_shim_pps",
        rule: Rule::RatioAtLeast(0.95),
    },
    Target {
        what: "zero packets lost during CHILD_SA and IKE_SA rekeys (UDP 20 kpps)",
        record: "ike_rekey_udp_20kpps_10s_lost",
        rule: Rule::Zero,
    },
    Target {
        what: "zero packets lost during rekeys (ping every 5 ms)",
        record: "ike_rekey_ping_5ms_10s_lost",
        rule: Rule::Zero,
    },
];

/// The scenario a record belongs to, by its name.
fn scenario(name: &str) -> &'static str {
    if name.starts_with("xdp_") || name.contains("_ingress_") {
        "1. Fast path: XDP programs (BPF_PROG_TEST_RUN)"
    } else if name.starts_with("seal_") || name.starts_with("open_") {
        "2. Crypto per core (AEAD backends vs openssl speed)"
    } else if name.starts_with("tunnel_") {
        "3. Tunnel throughput between two sites"
    } else if name.starts_with("dataplane_") || name.starts_with("pktgen_") {
        "4. Data plane alone, generator-driven"
    } else if name.starts_with("ike_rekey") || name.starts_with("ike_norekey") {
        "5. Rekey under load"
    } else if name.starts_with("ike_") || name.starts_with("vpnd_") {
        "6. IKE establishment"
    } else if name.starts_with("kernel_backend_qemu_") {
        "7. Kernel (xfrm) backend vs AF_XDP on Debian 6.1 under QEMU (TCG: ratios only)"
    } else if name.starts_with("kernel_") {
        "7. Kernel (xfrm) backend"
    } else {
        "Other"
    }
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}", v)
    } else if v.abs() >= 100.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.3}", v)
    }
}

fn judge(t: &Target, r: &Record) -> (String, String) {
    let (measured, ok, by) = match t.rule {
        Rule::RatioAtMost(x) => match r.ratio {
            Some(q) => (format!("{q:.2}x"), q <= x, q / x),
            None => return ("no ratio recorded".into(), "not measured".into()),
        },
        Rule::RatioAtLeast(x) => match r.ratio {
            Some(q) => (format!("{q:.2}x"), q >= x, x / q),
            None => return ("no ratio recorded".into(), "not measured".into()),
        },
        Rule::ValueAtLeast(x) => (
            format!("{} {}", num(r.value), r.unit),
            r.value >= x,
            if r.value > 0.0 {
                x / r.value
            } else {
                f64::INFINITY
            },
        ),
        Rule::Zero => (
            format!("{} {}", num(r.value), r.unit),
            r.value == 0.0,
            f64::NAN,
        ),
    };
    let verdict = if ok {
        "met".to_string()
    } else if by.is_finite() {
        format!("MISSED by {by:.2}x")
    } else {
        "MISSED".to_string()
    };
    (measured, verdict)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("reading {}", args.results.display()))?;
    let records: Vec<Record> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a results list", args.results.display()))?;
    let by_name: BTreeMap<&str, &Record> = records.iter().map(|r| (r.name.as_str(), r)).collect();

    let mut md = String::new();
    let machines: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.machine.as_str()).collect();
    let dates: std::collections::BTreeSet<&str> = records.iter().map(|r| r.date.as_str()).collect();
    let _ = writeln!(
        md,
        "# Benchmark results\n\n\
         Written by `bench-report` from `bench/results.json` (`cargo xtask bench` runs every \
         benchmark and then this; `cargo xtask bench -- --quick` is the short run CI does, with \
         rougher figures). Every comparison below was measured in the same run as its baseline, \
         alternating, median of the rounds. The machine is shared and small: read ratios, not \
         absolute figures.\n\n\
         - Machine(s): {}\n- Date(s): {}\n",
        machines.into_iter().collect::<Vec<_>>().join("; "),
        dates.into_iter().collect::<Vec<_>>().join(", ")
    );

    let _ = writeln!(
        md,
        "## Targets\n\n| target | record | measured | verdict |\n| --- | --- | --- | --- |"
    );
    for t in TARGETS {
        let (measured, verdict) = match by_name.get(t.record) {
            Some(r) => judge(t, r),
            None => ("-".into(), "not measured".into()),
        };
        let _ = writeln!(
            md,
            "| {} | `{}` | {measured} | {verdict} |",
            t.what, t.record
        );
    }

    carrier_section(&mut md, &by_name);
    backend_section(&mut md, &by_name);

    let plots = write_plots(&args, &by_name)?;
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for (file, title) in &plots {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
    }

    let analysis = args.dir.join("analysis.md");
    if std::env::var_os("BENCH_REPORT_NO_ANALYSIS").is_some() {
        let _ = writeln!(
            md,
            "\n(A quick run: the profiling analysis of bench/analysis.md belongs to the recorded \
             full run and is left out.)"
        );
    } else if let Ok(a) = std::fs::read_to_string(&analysis) {
        let _ = writeln!(md, "\n{}", a.trim_end());
    }

    let mut groups: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        groups.entry(scenario(&r.name)).or_default().push(r);
    }
    let _ = writeln!(md, "\n## Every figure\n");
    for (g, rs) in groups {
        let _ = writeln!(
            md,
            "### {g}\n\n| name | value | unit | baseline | ratio | date |\n| --- | ---: | --- | --- | ---: | --- |"
        );
        for r in rs {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} |",
                r.name,
                num(r.value),
                r.unit,
                r.baseline_name
                    .as_deref()
                    .map(|b| format!("`{b}`"))
                    .unwrap_or_default(),
                r.ratio.map(|q| format!("{q:.3}")).unwrap_or_default(),
                r.date
            );
        }
        let _ = writeln!(md);
    }
    let out = args.dir.join("RESULTS.md");
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} and {} plot(s)", out.display(), plots.len());
    Ok(())
}

/// The two XDP metadata carriers side by side (the metadata area, `bpf_xdp_adjust_meta`, and
/// the in-packet shim): the fast path's redirect path in ns/packet and the data plane's
/// packets/s with one worker; nothing if neither was measured.
fn carrier_section(md: &mut String, by_name: &BTreeMap<&str, &Record>) {
    let mut rows = Vec::new();
    for (what, prefix, suffix) in [
        ("esp_ingress redirect, ESP", "esp_ingress_redirect_esp", ""),
        (
            "tenant_ingress redirect, VLAN",
            "tenant_ingress_redirect_vlan",
            "",
        ),
    ]
    .into_iter()
    .map(|(w, p, s)| (w.to_string(), p.to_string(), s.to_string()))
    .chain(["encrypt", "decrypt"].into_iter().flat_map(|dir| {
        ["64B", "imix", "1400B"].map(|size| {
            (
                format!("data plane {dir} {size}, 1 worker"),
                format!("dataplane_{dir}_{size}_1worker"),
                "_pps".to_string(),
            )
        })
    })) {
        let meta = by_name.get(format!("{prefix}_adjust_meta{suffix}").as_str());
        let shim = by_name.get(format!("{prefix}_shim{suffix}").as_str());
        if meta.is_none() && shim.is_none() {
            continue;
        }
        let unit = meta.or(shim).map(|r| r.unit.clone()).unwrap_or_default();
        let ratio = match (meta, shim) {
            (Some(m), Some(s)) if m.value > 0.0 => format!("{:.3}", s.value / m.value),
            _ => "-".into(),
        };
        rows.push(format!(
            "| {what} | {} | {} | {unit} | {ratio} |",
            meta.map_or("not loadable here".into(), |r| num(r.value)),
            shim.map_or("-".into(), |r| num(r.value)),
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## XDP metadata carriers side by side\n\n\
         The metadata area (`bpf_xdp_adjust_meta`) and the in-packet shim (`bpf_xdp_adjust_head`, \
         stripped by the worker), measured in the same run, alternating. Fast path: one \
         BPF_PROG_TEST_RUN repetition per call (a fresh frame each time), mean over the calls, \
         median of the rounds (ns/packet: lower is better). Data plane: packets/s out of one \
         vpnd worker (higher is better). The target: the shim within 5% of the metadata area.\n\n\
         | path | adjust_meta | shim | unit | shim / adjust_meta |\n| --- | ---: | ---: | --- | ---: |"
    );
    for r in rows {
        let _ = writeln!(md, "{r}");
    }
}

/// The kernel backend against the AF_XDP backend (`cargo xtask bench --only backend-bench`: a
/// TCP transfer through two vpnds in Debian's 6.1 under QEMU TCG, since this machine's kernel
/// has no ESP AEAD); nothing if it was not measured. A recorded ratio, not a target.
fn backend_section(md: &mut String, by_name: &BTreeMap<&str, &Record>) {
    const ROWS: [(&str, &str); 3] = [
        ("afxdp", "both sites on AF_XDP (vpnd's workers)"),
        ("kernel", "both sites on the kernel backend (xfrm)"),
        ("kernel_afxdp", "A (sender) on the kernel, B on AF_XDP"),
    ];
    let rows: Vec<(&str, &Record)> = ROWS
        .iter()
        .filter_map(|(s, what)| {
            by_name
                .get(format!("kernel_backend_qemu_tcp_mbps_{s}").as_str())
                .map(|r| (*what, *r))
        })
        .collect();
    let Some((_, first)) = rows.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "\n## Kernel backend vs AF_XDP on Debian 6.1 under QEMU\n\n\
         TCP throughput ha -> hb through two vpnds keyed by IKEv2, each site on the backend \
         named; the AF_XDP topology stays up throughout, next to one other at a time, and each \
         pair is measured in alternation (median of the rounds). The guest is Debian's 6.1 under QEMU **TCG emulation on a \
         2-vCPU host: absolute figures are meaningless; compare the ratio only.** A recorded \
         ratio, no target.\n\n- Guest: {} ({})\n\n\
         | configuration | Mbit/s | vs AF_XDP |\n| --- | ---: | ---: |",
        first.machine, first.date
    );
    for (what, r) in rows {
        let _ = writeln!(
            md,
            "| {what} | {} | {} |",
            num(r.value),
            r.ratio
                .map_or("1 (baseline)".into(), |q| format!("{q:.3}x"))
        );
    }
}

/// One line of a plot: a label and (x, record name) points; missing records are skipped.
struct Series {
    label: String,
    points: Vec<(f64, String)>,
}

struct Plot {
    file: &'static str,
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    /// Divides every value (e.g. 1e6 for Mpps).
    scale: f64,
    series: Vec<Series>,
}

fn plots() -> Vec<Plot> {
    let sizes = [64.0, 512.0, 1400.0];
    let crypto = ["aws-lc-rs", "ring", "aes-gcm", "openssl-evp", "openssl"]
        .into_iter()
        .map(|b| Series {
            label: format!("seal AES-128-GCM, {b}"),
            points: sizes
                .iter()
                .map(|s| (*s, format!("seal_aes128gcm_{s}B_{b}")))
                .collect(),
        })
        .collect();
    // IMIX is plotted at its mean frame size.
    let dp_sizes = [(64.0, "64B"), (353.8, "imix"), (1400.0, "1400B")];
    let mut dataplane = Vec::new();
    for dir in ["encrypt", "decrypt"] {
        for w in ["1worker", "2workers"] {
            dataplane.push(Series {
                label: format!("{dir}, {w}"),
                points: dp_sizes
                    .iter()
                    .map(|(x, s)| (*x, format!("dataplane_{dir}_{s}_{w}_pps")))
                    .collect(),
            });
        }
    }
    let tunnel = [
        ("ours", ""),
        ("strongSwan", "_strongswan"),
        ("plain routing", "_plain"),
    ]
    .into_iter()
    .map(|(label, suffix)| Series {
        label: label.into(),
        points: [(64.0, "64B"), (1400.0, "1400B")]
            .iter()
            .map(|(x, s)| (*x, format!("tunnel_udp_{s}_received_pps{suffix}")))
            .collect(),
    })
    .collect();
    let workers = ["encrypt", "decrypt"]
        .iter()
        .flat_map(|dir| {
            ["64B", "1400B"].map(|s| Series {
                label: format!("{dir} {s}"),
                points: vec![
                    (1.0, format!("dataplane_{dir}_{s}_1worker_pps")),
                    (2.0, format!("dataplane_{dir}_{s}_2workers_pps")),
                ],
            })
        })
        .collect();
    let sas = vec![Series {
        label: "esp_ingress, ESP, SA found, replay check".into(),
        points: vec![
            (1.0, "esp_ingress_precheck_esp_1sa".into()),
            (100_000.0, "esp_ingress_precheck_esp_100000sa".into()),
        ],
    }];
    vec![
        Plot {
            file: "crypto_vs_size.svg",
            title: "AEAD seal per core vs buffer size",
            x_desc: "bytes",
            y_desc: "GB/s",
            scale: 1.0,
            series: crypto,
        },
        Plot {
            file: "dataplane_vs_size.svg",
            title: "Data plane packets/s vs frame size (generator-driven)",
            x_desc: "frame bytes (IMIX at its mean)",
            y_desc: "Mpps",
            scale: 1e6,
            series: dataplane,
        },
        Plot {
            file: "tunnel_vs_size.svg",
            title: "Tunnel UDP received packets/s vs frame size",
            x_desc: "frame bytes",
            y_desc: "kpps",
            scale: 1e3,
            series: tunnel,
        },
        Plot {
            file: "scaling_workers.svg",
            title: "Data plane scaling with workers",
            x_desc: "workers",
            y_desc: "Mpps",
            scale: 1e6,
            series: workers,
        },
        Plot {
            file: "scaling_sas.svg",
            title: "esp_ingress ns/packet with 1 vs 100,000 SAs",
            x_desc: "SAs installed (log scale position: 1, 100000)",
            y_desc: "ns/packet",
            scale: 1.0,
            series: sas,
        },
    ]
}

/// Writes every plot that has at least one point; returns (file, title) of those written.
fn write_plots(
    args: &Args,
    by_name: &BTreeMap<&str, &Record>,
) -> Result<Vec<(&'static str, &'static str)>> {
    let mut written = Vec::new();
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    for p in plots() {
        let lines: Vec<(String, Vec<(f64, f64)>)> = p
            .series
            .iter()
            .map(|s| {
                let pts = s
                    .points
                    .iter()
                    .filter_map(|(x, name)| {
                        by_name.get(name.as_str()).map(|r| (*x, r.value / p.scale))
                    })
                    .collect::<Vec<_>>();
                (s.label.clone(), pts)
            })
            .filter(|(_, pts)| !pts.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        let log_x = p.file == "scaling_sas.svg";
        let xs = lines.iter().flat_map(|(_, v)| v.iter().map(|(x, _)| *x));
        let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let y1 = lines
            .iter()
            .flat_map(|(_, v)| v.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max);
        let path = args.dir.join(p.file);
        let root = SVGBackend::new(&path, (760, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let tx = |x: f64| if log_x { x.log10() } else { x };
        let (lo, hi) = (tx(x0), tx(x1));
        let pad = ((hi - lo) * 0.05).max(0.1);
        let mut chart = ChartBuilder::on(&root)
            .caption(p.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0.0..(y1 * 1.15).max(1e-9))?;
        chart
            .configure_mesh()
            .x_desc(p.x_desc)
            .y_desc(p.y_desc)
            .x_label_formatter(&|x| {
                if log_x {
                    format!("{:.0}", 10f64.powf(*x))
                } else {
                    format!("{x:.0}")
                }
            })
            .draw()?;
        for (i, (label, pts)) in lines.iter().enumerate() {
            let c = palette[i % palette.len()];
            let pts: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (tx(*x), *y)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(
                // Where the lines are not.
                match p.file {
                    "crypto_vs_size.svg" => SeriesLabelPosition::UpperLeft,
                    "tunnel_vs_size.svg" => SeriesLabelPosition::MiddleLeft,
                    _ => SeriesLabelPosition::LowerLeft,
                },
            )
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        written.push((p.file, p.title));
    }
    Ok(written)
}
