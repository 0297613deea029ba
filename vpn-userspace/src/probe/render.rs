//! The human form of a [`Report`]: a header line, a table of kernel rows, a table per device,
//! the choices. Every row that is not available is followed by what it costs and the fix.

use super::{Device, Feature, Report, Verdict};
use crate::ctl::table::Table;

fn feature_table(title: &str, rows: &[Feature]) -> String {
    let mut t = Table::new(&[title, "VERDICT", "DETAIL"]);
    for f in rows {
        t.row([
            f.id.to_string(),
            f.verdict.name().to_string(),
            f.detail.clone(),
        ]);
        if f.verdict != Verdict::Available {
            if let Some(c) = &f.cost {
                t.row([String::new(), String::new(), format!("cost: {c}")]);
            }
            if let Some(x) = &f.fix {
                t.row([String::new(), String::new(), format!("fix:  {x}")]);
            }
        }
    }
    t.render()
}

fn device_header(d: &Device) -> String {
    let driver = match (&d.driver, &d.driver_error) {
        (Some(n), _) => n.clone(),
        (None, Some(e)) => format!("unknown: {e}"),
        (None, None) => "unknown".into(),
    };
    let xdp = if d.xdp.is_empty() {
        "none".to_string()
    } else {
        d.xdp
            .iter()
            .map(|a| {
                let mut s = format!(
                    "{} (id {}, {}",
                    a.name.as_deref().unwrap_or("?"),
                    a.prog_id,
                    a.mode
                );
                if let Some(i) = &a.instance {
                    s.push_str(&format!(", instance {i}"));
                }
                if let Some(c) = a.carrier {
                    s.push_str(&format!(", carrier {c}"));
                }
                s.push(')');
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "device {} (ifindex {}, driver {driver}); XDP attached: {xdp}\n",
        d.name, d.ifindex
    )
}

pub fn render(r: &Report) -> String {
    let mut out = format!(
        "kernel {} ({}), build config {}, {}{}\n\n",
        r.kernel.release,
        r.kernel.machine,
        r.kernel.config.as_deref().unwrap_or("not found"),
        if r.privileged {
            "probed as root"
        } else {
            "probed without root: rows that need it say unknown"
        },
        r.netns
            .as_deref()
            .map(|n| format!(", devices in network namespace {n}"))
            .unwrap_or_default(),
    );
    out.push_str(&feature_table("KERNEL", &r.features));
    for d in &r.devices {
        out.push('\n');
        out.push_str(&device_header(d));
        out.push_str(&feature_table("DEVICE", &d.features));
    }
    if let Some(h) = &r.device_hint {
        out.push_str(&format!("\ndevices: {h}\n"));
    }
    out.push('\n');
    let mut t = Table::new(&["CHOICE", "DEVICE", "VALUE", "WHY"]);
    for c in &r.choices {
        let why = match &c.aeads {
            Some(a) if !a.is_empty() => format!("{} (kernel AEADs: {})", c.reason, a.join(", ")),
            _ => c.reason.clone(),
        };
        t.row([
            c.id.to_string(),
            c.device.clone().unwrap_or_else(|| "-".into()),
            c.value.clone(),
            why,
        ]);
    }
    out.push_str(&t.render());
    out
}
