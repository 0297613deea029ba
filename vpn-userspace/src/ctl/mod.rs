//! `vpnctl`, the operator CLI: reads the pinned BPF maps of an instance (works with vpnd
//! stopped, like bpftool) and talks to vpnd's control socket. Nothing here ever prints keys or
//! PSKs: the maps hold none, and answers from the daemon are redacted ([`client::redact`]).

pub mod client;
pub mod pins;
pub mod table;

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vpn_common::{Counter, maps::names};

use client::{ClientError, Conn, Sa, Status};
use pins::{MapFacts, MapSa, Pins, PolicyRow, Tenants};
use table::{Table, duration, spi};

/// Global options.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub pin_root: PathBuf,
    pub run_dir: PathBuf,
    pub instance: Option<String>,
    pub json: bool,
    /// How long to wait for the daemon's answer.
    pub timeout: Duration,
}

impl Ctx {
    /// The instance to work on: `--instance`, else the only one with pinned maps (or, failing
    /// that, the only one with a control socket).
    pub fn instance(&self) -> Result<String> {
        if let Some(i) = &self.instance {
            return Ok(i.clone());
        }
        let pinned = pins::pinned_instances(&self.pin_root);
        if pinned.len() == 1 {
            return Ok(pinned[0].clone());
        }
        let sockets = client::socket_instances(&self.run_dir);
        if pinned.is_empty() && sockets.len() == 1 {
            return Ok(sockets[0].clone());
        }
        if pinned.is_empty() && sockets.is_empty() {
            if !pins::is_bpffs(&self.pin_root) {
                bail!(
                    "no bpffs mounted at {} and no vpnd control socket under {}: nothing to \
                     show (use --pin-root / --run-dir / --instance)",
                    self.pin_root.display(),
                    self.run_dir.display()
                );
            }
            bail!(
                "no instance found: no SA_IN pin under {} and no control socket under {}",
                self.pin_root.display(),
                self.run_dir.display()
            );
        }
        let mut all = pinned;
        all.extend(sockets);
        all.sort();
        all.dedup();
        bail!(
            "several instances ({}): choose one with --instance NAME",
            all.join(", ")
        )
    }

    pub fn pins(&self) -> Result<Pins> {
        Pins::open(&self.pin_root, &self.instance()?)
    }

    /// One request to vpnd.
    pub fn request(&self, req: Value) -> Result<Value, ClientError> {
        let instance = match self.instance() {
            Ok(i) => i,
            Err(e) => {
                return Err(ClientError::Protocol {
                    path: self.run_dir.display().to_string(),
                    msg: format!("{e:#}"),
                });
            }
        };
        client::request(&self.run_dir, &instance, &req, self.timeout)
    }
}

fn print_json(out: &mut dyn Write, v: &impl Serialize) -> Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

// ---------------------------------------------------------------- status

pub fn status(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let instance = ctx.instance()?;
    let (daemon, daemon_error) = match ctx.request(json!({"cmd": "status"})) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (maps, maps_error) = match Pins::open(&ctx.pin_root, &instance) {
        Ok(p) => (Some(p.facts()), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    if daemon.is_none() && maps.is_none() {
        bail!(
            "{}; {}",
            daemon_error.unwrap_or_default(),
            maps_error.unwrap_or_default()
        );
    }
    if ctx.json {
        return print_json(
            out,
            &json!({"instance": instance, "daemon": daemon, "daemon_error": daemon_error,
                "maps": maps, "maps_error": maps_error}),
        );
    }
    let st: Option<Status> = daemon
        .as_ref()
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_default());
    write!(
        out,
        "{}",
        render_status(
            &instance,
            st.as_ref(),
            daemon_error.as_deref(),
            maps.as_ref(),
            maps_error.as_deref()
        )
    )?;
    Ok(())
}

pub fn render_status(
    instance: &str,
    st: Option<&Status>,
    daemon_error: Option<&str>,
    maps: Option<&MapFacts>,
    maps_error: Option<&str>,
) -> String {
    let mut t = Table::new(&["ITEM", "VALUE"]);
    t.row(["instance".to_string(), instance.to_string()]);
    match st {
        Some(s) => {
            t.row(["vpnd".to_string(), format!("running (pid {})", opt(s.pid))]);
            t.row(["uptime".to_string(), opt(s.uptime_secs.map(duration))]);
            t.row([
                "wire".to_string(),
                format!(
                    "{} (xdp {}, metadata carrier {})",
                    opt(s.wire.clone()),
                    opt(s.xdp_mode.clone()),
                    opt(s.xdp_carrier.clone())
                ),
            ]);
            t.row([
                "tenant interfaces".to_string(),
                s.tenant_interfaces.join(", "),
            ]);
            t.row(["workers".to_string(), opt(s.workers)]);
            t.row([
                "connections".to_string(),
                format!("{} ({} active)", opt(s.connections), opt(s.active)),
            ]);
            if let Value::Object(m) = &s.ike {
                for (k, v) in m {
                    t.row([format!("ike {k}"), value_cell(v)]);
                }
            }
            if let Value::Object(m) = &s.worker {
                for (k, v) in m.iter().filter(|(k, _)| *k != "drops") {
                    t.row([format!("worker {k}"), value_cell(v)]);
                }
                if let Some(Value::Object(d)) = m.get("drops") {
                    for (k, v) in d {
                        t.row([format!("worker drop {k}"), value_cell(v)]);
                    }
                }
            }
            if let Value::Object(m) = &s.limits {
                for (k, v) in m {
                    t.row([format!("limit {k}"), limit_cell(v)]);
                }
            }
        }
        None => t.row([
            "vpnd".to_string(),
            format!("not running ({})", daemon_error.unwrap_or("no answer")),
        ]),
    }
    match maps {
        Some(m) => {
            t.row(["pin dir".to_string(), m.pin_dir.clone()]);
            t.row([
                "pins".to_string(),
                if m.pins_missing.is_empty() {
                    format!("{} of {} present", m.pins_present, names::ALL.len())
                } else {
                    format!(
                        "{} of {} present (missing {})",
                        m.pins_present,
                        names::ALL.len(),
                        m.pins_missing.join(", ")
                    )
                },
            ]);
            t.row(["inbound SAs".to_string(), opt(m.inbound_sas)]);
            t.row(["policies".to_string(), opt(m.policies)]);
            t.row(["tenants".to_string(), opt(m.tenants)]);
            let progs = if m.programs.is_empty() {
                "none loaded".to_string()
            } else {
                m.programs
                    .iter()
                    .map(|p| format!("{} (id {}, {} links)", p.name, p.id, p.links))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            t.row(["xdp programs".to_string(), progs]);
            t.row([
                "attached".to_string(),
                if m.attached { "yes" } else { "no" }.to_string(),
            ]);
        }
        None => t.row([
            "maps".to_string(),
            maps_error.unwrap_or("unavailable").to_string(),
        ]),
    }
    t.render()
}

/// `5 (hit 17, in use 2)` from `{"limit": 5, "in_use": 2, "hit": 17}`; other keys as
/// `key value`.
fn limit_cell(v: &Value) -> String {
    let Value::Object(m) = v else {
        return value_cell(v);
    };
    let rest: Vec<String> = m
        .iter()
        .filter(|(k, _)| *k != "limit")
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), value_cell(v)))
        .collect();
    match m.get("limit") {
        Some(l) => format!("{} ({})", value_cell(l), rest.join(", ")),
        None => rest.join(", "),
    }
}

fn value_cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

// ---------------------------------------------------------------- SAs

pub fn sa_list(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match ctx.request(json!({"cmd": "sa-list"})) {
        Ok(data) => {
            let sas: Vec<Sa> = serde_json::from_value(data.clone())?;
            if ctx.json {
                return print_json(out, &json!({"source": "vpnd", "sas": data}));
            }
            write!(out, "{}", render_sas(&sas))?;
            Ok(())
        }
        Err(ClientError::NotRunning { instance, .. }) => {
            writeln!(
                err,
                "vpnd is not running for instance {instance}; showing pinned maps only"
            )?;
            let rows = ctx.pins()?.sa_rows()?;
            if ctx.json {
                return print_json(out, &json!({"source": "maps", "sas": rows}));
            }
            write!(out, "{}", render_map_sas(&rows))?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub fn render_sas(sas: &[Sa]) -> String {
    let mut t = Table::new(&[
        "CONN",
        "CHILD",
        "SPI_IN",
        "SPI_OUT",
        "CIPHER",
        "ESN",
        "LOCAL",
        "PEER",
        "ENCAP",
        "TENANT",
        "BACKEND",
        "TS",
        "PKTS_IN",
        "BYTES_IN",
        "PKTS_OUT",
        "BYTES_OUT",
        "SEQ_OUT",
        "REPLAY_TOP",
        "AGE",
        "REKEY_IN",
        "LEFT",
        "STATE",
        "OUTBOUND",
        "XFRM_DROPS",
    ]);
    for s in sas {
        t.row([
            s.conn.clone(),
            s.child.to_string(),
            spi(s.spi_in),
            spi(s.spi_out),
            s.cipher.clone(),
            if s.esn { "yes" } else { "no" }.into(),
            s.local.clone(),
            s.peer.clone(),
            match s.udp_encap {
                Some((a, b)) => format!("udp {a}/{b}"),
                None => "esp".into(),
            },
            s.tenant.to_string(),
            match (&s.backend, &s.offload) {
                (Some(b), Some(o)) if b == "kernel" && o != "none" => format!("kernel+{o}"),
                (Some(b), _) => b.clone(),
                (None, _) => "-".into(),
            },
            format!("{} === {}", s.local_ts.join(","), s.peer_ts.join(",")),
            s.packets_in.to_string(),
            s.bytes_in.to_string(),
            s.packets_out.to_string(),
            s.bytes_out.to_string(),
            s.seq_out.to_string(),
            s.replay_top.to_string(),
            opt(s.age_secs.map(duration)),
            opt(s.rekey_in_secs.map(duration)),
            opt(s.lifetime_left_secs.map(duration)),
            opt(s.state.clone()),
            match s.active {
                Some(true) => "active",
                Some(false) => "standby",
                None => "-",
            }
            .into(),
            // The kernel's drops of a kernel SA pair: replayed, outside the window, bad ICV.
            match &s.xfrm {
                Some(x) => format!(
                    "replay {} window {} icv {}",
                    x.replay_dropped, x.replay_window_dropped, x.integrity_failed
                ),
                None => "-".into(),
            },
        ]);
    }
    t.render()
}

pub fn render_map_sas(rows: &[MapSa]) -> String {
    let mut t = Table::new(&[
        "SPI",
        "SLOT",
        "TENANT",
        "ENCAP",
        "PACKETS",
        "BYTES",
        "REPLAY_TOP",
        "WINDOW",
        "ESN",
    ]);
    for r in rows {
        t.row([
            spi(r.spi),
            r.slot.to_string(),
            r.tenant.to_string(),
            if r.udp_encap { "udp" } else { "esp" }.into(),
            r.packets.to_string(),
            r.bytes.to_string(),
            r.replay_top.to_string(),
            r.replay_window.to_string(),
            if r.esn { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

// ---------------------------------------------------------------- connections

pub fn conn_list(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let data = match ctx.request(json!({"cmd": "conn-list"})) {
        Ok(d) => d,
        Err(ClientError::NotRunning { instance, path }) => bail!(
            "vpnd is not running for instance {instance} (no listener on {path}); connection \
             state lives in the daemon (see `vpnctl sa list` for the pinned maps)"
        ),
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        return print_json(out, &data);
    }
    let conns: Vec<Conn> = serde_json::from_value(data)?;
    write!(out, "{}", render_conns(&conns))?;
    Ok(())
}

pub fn render_conns(conns: &[Conn]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATUS",
        "LOCAL",
        "PEER",
        "TENANT",
        "INITIATOR",
        "DPD",
        "ADMIN",
        "IKE_SAS",
        "CHILDREN",
        "REASON",
    ]);
    for c in conns {
        t.row([
            c.name.clone(),
            c.status.clone(),
            c.local.clone(),
            c.peer.clone(),
            opt(c.tenant),
            opt(c.initiator.clone()),
            opt(c.dpd_action.clone()),
            match c.admin_state_up {
                Some(true) => "up",
                Some(false) => "down",
                None => "-",
            }
            .into(),
            c.ike_sas.len().to_string(),
            if c.children.is_empty() {
                "-".into()
            } else {
                c.children
                    .iter()
                    .map(|ch| format!("#{} {}/{}", ch.id, spi(ch.spi_in), spi(ch.spi_out)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            c.reason.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// `conn up|down`, `rekey`, `reload`: one request, the daemon's answer printed.
pub fn action(ctx: &Ctx, req: Value, out: &mut dyn Write) -> Result<()> {
    let data = ctx.request(req)?;
    if ctx.json {
        return print_json(out, &json!({"ok": true, "data": data}));
    }
    match data {
        Value::Null => writeln!(out, "ok")?,
        Value::String(s) => writeln!(out, "{s}")?,
        v => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
    }
    Ok(())
}

// ---------------------------------------------------------------- policies, tenants

pub fn policy_list(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let rows = ctx.pins()?.policies()?;
    if ctx.json {
        return print_json(out, &rows);
    }
    write!(out, "{}", render_policies(&rows))?;
    Ok(())
}

pub fn render_policies(rows: &[PolicyRow]) -> String {
    let mut t = Table::new(&["TENANT", "FAMILY", "PREFIX", "ACTION", "SA_SLOT"]);
    for r in rows {
        t.row([
            r.tenant.to_string(),
            r.family.clone(),
            r.prefix.clone(),
            r.action.clone(),
            if r.action == "protect" {
                r.sa_slot.to_string()
            } else {
                "-".into()
            },
        ]);
    }
    t.render()
}

pub fn tenant_list(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let t = ctx.pins()?.tenants()?;
    if ctx.json {
        return print_json(out, &t);
    }
    write!(out, "{}", render_tenants(&t))?;
    Ok(())
}

pub fn render_tenants(t: &Tenants) -> String {
    let list = |v: &[u32]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
    };
    let mut tt = Table::new(&[
        "TENANT",
        "VLAN",
        "VNI",
        "UNTAGGED_ON",
        "ENCAP",
        "IFINDEX",
        "VTEP",
        "VTEP_MAC",
    ]);
    for r in &t.tenants {
        tt.row([
            r.tenant.to_string(),
            list(&r.vlans),
            list(&r.vnis),
            list(&r.untagged_on),
            match (&r.encap, r.encap_vlan, r.encap_vni) {
                (Some(k), Some(v), _) => format!("{k} {v}"),
                (Some(k), _, Some(n)) => format!("{k} {n}"),
                (Some(k), _, _) => k.clone(),
                _ => "-".into(),
            },
            opt(r.ifindex),
            opt(r.vtep.clone()),
            opt(r.vtep_mac.clone()),
        ]);
    }
    let mut it = Table::new(&["IFINDEX", "DEFAULT_TENANT", "XSK_BASE"]);
    for i in &t.interfaces {
        it.row([
            i.ifindex.to_string(),
            if i.default_tenant == 0 {
                "-".into()
            } else {
                i.default_tenant.to_string()
            },
            i.xsk_base.to_string(),
        ]);
    }
    format!("{}\n{}", tt.render(), it.render())
}

// ---------------------------------------------------------------- counters

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterRow {
    pub side: String,
    pub kind: String,
    /// Drop reason number (drops) or counter index (outcomes).
    pub number: u32,
    pub name: String,
    pub value: u64,
    pub rate: Option<f64>,
}

pub fn read_counters(p: &Pins) -> Result<Vec<CounterRow>> {
    let mut rows = Vec::new();
    for (side, map) in [("wire", names::WIRE_STATS), ("tenant", names::TENANT_STATS)] {
        for (c, v) in p.counters(map)? {
            let (kind, number) = match c {
                Counter::Outcome(o) => ("outcome", o.counter()),
                Counter::Drop(d) => ("drop", d as u32),
            };
            rows.push(CounterRow {
                side: side.into(),
                kind: kind.into(),
                number,
                name: c.name().into(),
                value: v,
                rate: None,
            });
        }
    }
    Ok(rows)
}

/// `{"wire": {name: value}, "tenant": {...}}` (every counter, zeros included, so scripts
/// see stable keys), plus `"rates"` per second when watching.
pub fn counters_json(rows: &[CounterRow], interval: Option<f64>) -> Value {
    let mut v = json!({"wire": {}, "tenant": {}});
    for r in rows {
        v[&r.side][&r.name] = json!(r.value);
    }
    if let Some(secs) = interval {
        let mut rates = json!({"wire": {}, "tenant": {}});
        for r in rows {
            rates[&r.side][&r.name] = json!(r.rate.unwrap_or(0.0));
        }
        v["rates"] = rates;
        v["interval_secs"] = json!(secs);
    }
    v
}

pub fn render_counters(rows: &[CounterRow], all: bool, with_rates: bool) -> String {
    let mut h = vec!["SIDE", "KIND", "#", "COUNTER", "VALUE"];
    if with_rates {
        h.push("RATE/s");
    }
    let mut t = Table::new(&h);
    for r in rows {
        if !all && r.value == 0 && r.rate.unwrap_or(0.0) == 0.0 {
            continue;
        }
        let mut cells = vec![
            r.side.clone(),
            r.kind.clone(),
            r.number.to_string(),
            r.name.clone(),
            r.value.to_string(),
        ];
        if with_rates {
            cells.push(format!("{:.1}", r.rate.unwrap_or(0.0)));
        }
        t.row(cells);
    }
    t.render()
}

/// `vpnctl stats`; with `watch`, `count` samples (or forever) `watch` apart, with rates.
pub fn stats(
    ctx: &Ctx,
    all: bool,
    watch: Option<f64>,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let p = ctx.pins()?;
    let Some(secs) = watch else {
        let rows = read_counters(&p)?;
        if ctx.json {
            return print_json(out, &counters_json(&rows, None));
        }
        write!(out, "{}", render_counters(&rows, all, false))?;
        return Ok(());
    };
    if !(secs > 0.0 && secs.is_finite()) {
        bail!("--watch needs a positive interval");
    }
    let mut prev = read_counters(&p)?;
    let mut prev_t = Instant::now();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(secs));
        let mut rows = read_counters(&p)?;
        let now = Instant::now();
        let dt = now.duration_since(prev_t).as_secs_f64().max(1e-6);
        for (r, q) in rows.iter_mut().zip(&prev) {
            r.rate = Some(r.value.saturating_sub(q.value) as f64 / dt);
        }
        if ctx.json {
            writeln!(out, "{}", counters_json(&rows, Some(dt)))?;
        } else {
            if n > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", render_counters(&rows, all, true))?;
        }
        out.flush()?;
        prev = rows;
        prev_t = now;
        n += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------- probe

/// `vpnctl probe`: what this kernel and the devices offer and what the product chooses from
/// it (see [`crate::probe`]). Needs neither vpnd nor bpffs, and changes nothing.
pub fn probe(
    ctx: &Ctx,
    devices: Vec<String>,
    netns: Option<String>,
    out: &mut dyn Write,
) -> Result<()> {
    let report = crate::probe::run(&crate::probe::Options {
        devices,
        netns,
        pin_root: ctx.pin_root.clone(),
    })?;
    if ctx.json {
        return print_json(out, &report);
    }
    write!(out, "{}", crate::probe::render::render(&report))?;
    Ok(())
}

// ---------------------------------------------------------------- maps dump

/// The maps of the contract, pinned or not, with their shapes.
pub fn maps_list(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let p = ctx.pins()?;
    let rows: Vec<Value> = p
        .present()
        .into_iter()
        .map(|(name, present)| {
            let info = present.then(|| p.info(name).ok()).flatten();
            json!({"map": name, "pinned": present,
                "type": info.as_ref().map(|i| i.0.clone()),
                "id": info.as_ref().map(|i| i.1),
                "max_entries": info.as_ref().map(|i| i.2)})
        })
        .collect();
    if ctx.json {
        return print_json(out, &rows);
    }
    let mut t = Table::new(&["MAP", "PINNED", "TYPE", "ID", "MAX_ENTRIES"]);
    for r in &rows {
        t.row([
            value_cell(&r["map"]),
            if r["pinned"] == true { "yes" } else { "no" }.to_string(),
            value_cell(&r["type"]),
            value_cell(&r["id"]),
            value_cell(&r["max_entries"]),
        ]);
    }
    write!(out, "{}", t.render())?;
    Ok(())
}

pub fn maps_dump(ctx: &Ctx, name: &str, all: bool, out: &mut dyn Write) -> Result<()> {
    let v = ctx.pins()?.dump(name, all)?;
    if ctx.json {
        return print_json(out, &v);
    }
    write!(out, "{}", render_dump(&v))?;
    Ok(())
}

/// A dump as a header line and a table whose columns are the entries' fields.
pub fn render_dump(v: &Value) -> String {
    let mut s = format!(
        "{} ({}, key {} B, value {} B, max {} entries)\n",
        value_cell(&v["map"]),
        value_cell(&v["type"]),
        value_cell(&v["key_size"]),
        value_cell(&v["value_size"]),
        value_cell(&v["max_entries"]),
    );
    if let Some(n) = v["note"].as_str() {
        s.push_str(&format!("note: {n}\n"));
    }
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    // Key-like fields first, then the rest by name.
    const FIRST: [&str; 10] = [
        "spi", "spi_hex", "index", "slot", "ifindex", "peer", "vlan", "vni", "tenant", "family",
    ];
    let mut cols: Vec<String> = entries
        .first()
        .and_then(Value::as_object)
        .map(|o| o.keys().filter(|k| *k != "per_cpu").cloned().collect())
        .unwrap_or_default();
    if cols.iter().any(|c| c == "spi_hex") {
        // The hex form is the one operators read; JSON keeps both.
        cols.retain(|c| c != "spi");
    }
    cols.sort_by_key(|c| {
        (
            FIRST.iter().position(|f| f == c).unwrap_or(FIRST.len()),
            c.clone(),
        )
    });
    if cols.is_empty() {
        s.push_str("(no entries)\n");
        return s;
    }
    let headers: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
    let mut t = Table::new(&headers.iter().map(String::as_str).collect::<Vec<_>>());
    for e in &entries {
        t.row(cols.iter().map(|c| value_cell(&e[c])));
    }
    s.push_str(&t.render());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pins::{IfaceRow, TenantRow};

    #[test]
    fn policy_table_and_json() {
        let rows = vec![
            PolicyRow {
                family: "ipv4".into(),
                tenant: 1,
                prefix: "10.2.0.0/24".into(),
                action: "protect".into(),
                sa_slot: 3,
            },
            PolicyRow {
                family: "ipv6".into(),
                tenant: 12,
                prefix: "fd00::/64".into(),
                action: "discard".into(),
                sa_slot: 0,
            },
        ];
        assert_eq!(
            render_policies(&rows),
            "TENANT  FAMILY  PREFIX       ACTION   SA_SLOT\n\
             \x20    1  ipv4    10.2.0.0/24  protect        3\n\
             \x20   12  ipv6    fd00::/64    discard        -\n"
        );
        let v = serde_json::to_value(&rows).unwrap();
        assert_eq!(
            v[0],
            json!({"family":"ipv4","tenant":1,"prefix":"10.2.0.0/24","action":"protect",
                "sa_slot":3})
        );
    }

    #[test]
    fn tenant_table() {
        let t = Tenants {
            tenants: vec![TenantRow {
                tenant: 1,
                vlans: vec![100],
                vnis: vec![],
                untagged_on: vec![],
                encap: Some("vlan".into()),
                ifindex: Some(4),
                encap_vlan: Some(100),
                encap_vni: None,
                vtep: None,
                vtep_mac: None,
            }],
            interfaces: vec![IfaceRow {
                ifindex: 4,
                default_tenant: 0,
                xsk_base: 0,
            }],
        };
        let s = render_tenants(&t);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("TENANT  VLAN  VNI  UNTAGGED_ON  ENCAP"));
        assert!(lines[1].contains("vlan 100"), "{s}");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "IFINDEX  DEFAULT_TENANT  XSK_BASE");
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["tenants"][0]["vlans"], json!([100]));
        assert_eq!(v["interfaces"][0]["ifindex"], 4);
    }

    fn counter_rows() -> Vec<CounterRow> {
        vec![
            CounterRow {
                side: "wire".into(),
                kind: "outcome".into(),
                number: 0,
                name: "redirect_esp".into(),
                value: 12,
                rate: Some(2.0),
            },
            CounterRow {
                side: "wire".into(),
                kind: "drop".into(),
                number: 10,
                name: "unknown_spi".into(),
                value: 0,
                rate: Some(0.0),
            },
            CounterRow {
                side: "tenant".into(),
                kind: "outcome".into(),
                number: 16,
                name: "redirect_outbound".into(),
                value: 7,
                rate: None,
            },
        ]
    }

    #[test]
    fn counters_hide_zero_rows_unless_all() {
        let rows = counter_rows();
        let s = render_counters(&rows, false, false);
        assert_eq!(
            s,
            "SIDE    KIND      #  COUNTER            VALUE\n\
             wire    outcome   0  redirect_esp          12\n\
             tenant  outcome  16  redirect_outbound      7\n"
        );
        assert!(render_counters(&rows, true, false).contains("unknown_spi"));
        let s = render_counters(&rows, false, true);
        assert!(s.lines().next().unwrap().ends_with("RATE/s"));
        assert!(s.lines().nth(1).unwrap().ends_with("2.0"));
    }

    #[test]
    fn counters_json_shape() {
        let rows = counter_rows();
        let v = counters_json(&rows, None);
        assert_eq!(v["wire"]["redirect_esp"], 12);
        assert_eq!(v["wire"]["unknown_spi"], 0);
        assert_eq!(v["tenant"]["redirect_outbound"], 7);
        assert!(v.get("rates").is_none());
        let v = counters_json(&rows, Some(1.0));
        assert_eq!(v["rates"]["wire"]["redirect_esp"], 2.0);
        assert_eq!(v["interval_secs"], 1.0);
    }

    #[test]
    fn every_counter_is_read_with_its_number() {
        // The names and numbers come from vpn-common: drop 10 is unknown_spi.
        let c = Counter::all().find(|c| c.name() == "unknown_spi").unwrap();
        assert_eq!(c.index(), 74);
    }

    #[test]
    fn sa_tables() {
        let sas: Vec<Sa> = serde_json::from_value(json!([{"conn":"east-west","child":1,
            "spi_in":0xc1a2b3c4u32,"spi_out":0x11223344,"cipher":"aes128gcm16","esn":false,
            "local":"172.24.4.226","peer":"172.24.4.233","udp_encap":null,
            "local_ts":["10.1.0.0/24"],"peer_ts":["10.2.0.0/24"],"tenant":1,"slot_in":0,
            "slot_out":1,"active":true,"packets_in":3,"bytes_in":300,"packets_out":4,
            "bytes_out":400,"seq_out":4,"replay_top":3,"age_secs":65,
            "lifetime_left_secs":3000}]))
        .unwrap();
        let s = render_sas(&sas);
        let mut l = s.lines();
        assert!(l.next().unwrap().starts_with("CONN       CHILD  SPI_IN"));
        let row = l.next().unwrap();
        for want in [
            "east-west",
            "0xc1a2b3c4",
            "0x11223344",
            "10.1.0.0/24 === 10.2.0.0/24",
            "1m05s",
            "50m00s",
            "active",
        ] {
            assert!(row.contains(want), "{want} in {row}");
        }
        let rows = vec![MapSa {
            spi: 0xf0e0,
            slot: 2,
            tenant: 1,
            udp_encap: true,
            flags: 1,
            min_esp_len: 34,
            packets: 5,
            bytes: 500,
            replay_top: 5,
            replay_window: 1024,
            esn: false,
        }];
        assert_eq!(
            render_map_sas(&rows),
            "SPI         SLOT  TENANT  ENCAP  PACKETS  BYTES  REPLAY_TOP  WINDOW  ESN\n\
             0x0000f0e0     2       1  udp          5    500           5    1024  no\n"
        );
        let v = serde_json::to_value(&rows).unwrap();
        assert_eq!(v[0]["spi"], 0xf0e0);
        assert_eq!(v[0]["udp_encap"], true);
    }

    #[test]
    fn conn_table() {
        let conns: Vec<Conn> = serde_json::from_value(json!([
            {"name":"east-west","status":"ACTIVE","local":"172.24.4.226","peer":"172.24.4.233",
             "tenant":1,"initiator":"bi-directional","dpd_action":"hold","admin_state_up":true,
             "children":[{"id":1,"spi_in":1,"spi_out":2}]},
            {"name":"b","status":"DOWN","reason":"IKE_AUTH: AUTHENTICATION_FAILED",
             "local":"1.1.1.1","peer":"2.2.2.2","admin_state_up":false,"children":[]}]))
        .unwrap();
        let s = render_conns(&conns);
        let l: Vec<&str> = s.lines().collect();
        assert!(l[0].starts_with("NAME       STATUS  LOCAL"));
        assert!(l[1].contains("ACTIVE") && l[1].contains("#1 0x00000001/0x00000002"));
        assert!(
            l[2].contains("DOWN") && l[2].ends_with("IKE_AUTH: AUTHENTICATION_FAILED"),
            "{s}"
        );
    }

    #[test]
    fn status_without_daemon() {
        let facts = MapFacts {
            instance: "east".into(),
            pin_dir: "/sys/fs/bpf/east".into(),
            pins_present: 16,
            pins_missing: vec![],
            inbound_sas: Some(1),
            policies: Some(1),
            tenants: Some(1),
            programs: vec![],
            attached: false,
        };
        let s = render_status(
            "east",
            None,
            Some("vpnd is not running"),
            Some(&facts),
            None,
        );
        assert!(s.starts_with("ITEM "));
        assert!(s.contains("not running"));
        assert!(s.contains("16 of 16 present"));
        assert!(s.contains("\nattached      no\n"), "{s}");
    }

    #[test]
    fn status_shows_each_limit_with_use_and_hits() {
        let st = Status {
            limits: json!({
                "half_open_per_peer": {"limit": 5, "in_use": 2, "hit": 17},
                "dh_per_second": {"limit": 100, "burst": 200, "hit_cookie_demanded": 3,
                    "hit_dropped": 1},
            }),
            ..Status::default()
        };
        let s = render_status("east", Some(&st), None, None, Some("no maps"));
        assert!(
            s.contains("limit half_open_per_peer  5 (hit 17, in use 2)\n"),
            "{s}"
        );
        assert!(
            s.contains("100 (burst 200, hit cookie demanded 3, hit dropped 1)"),
            "{s}"
        );
    }

    #[test]
    fn dump_render() {
        let v = json!({"map":"SA_IN","type":"HashMap","key_size":4,"value_size":16,
            "max_entries":131072,"entries":[{"spi":61664,"slot":0,"tenant":1}]});
        let s = render_dump(&v);
        assert!(s.starts_with("SA_IN (HashMap, key 4 B, value 16 B, max 131072 entries)\n"));
        assert!(
            s.contains("  SPI  SLOT  TENANT\n61664     0       1\n"),
            "{s}"
        );
        let v = json!({"map":"XSKS","type":"XskMap","key_size":4,"value_size":4,
            "max_entries":64,"entries":[],"note":"n"});
        assert!(render_dump(&v).ends_with("note: n\n(no entries)\n"));
    }
}
