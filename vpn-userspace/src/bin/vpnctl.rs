//! `vpnctl`: the operator CLI of the ESP fast path. Reads the pinned BPF maps of an instance
//! (like bpftool; works with vpnd stopped when its pins are kept) and talks to vpnd over its
//! control socket. `--json` everywhere for scripts. Never prints keys or PSKs.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use serde_json::json;
use vpn_userspace::ctl::{self, Ctx};

#[derive(Parser)]
#[command(name = "vpnctl", about = "Operator CLI of the eBPF/XDP IPsec gateway")]
struct Args {
    /// Instance (maps under PIN_ROOT/NAME, socket RUN_DIR/NAME/control.sock). Default: the
    /// only instance found.
    #[arg(long, global = true)]
    instance: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// bpffs directory holding the instances' pins.
    #[arg(long, global = true, default_value = vpn_common::maps::PIN_ROOT)]
    pin_root: PathBuf,
    /// Directory of the daemons' control sockets.
    #[arg(long, global = true, default_value = "/run/vpnd")]
    run_dir: PathBuf,
    /// Seconds to wait for vpnd's answer.
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon status (control socket) and data-plane facts (pinned maps).
    Status,
    /// Security associations.
    Sa {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// IPsec site connections (from vpnd), or bring one up or down.
    Conn {
        #[command(subcommand)]
        cmd: ConnCmd,
    },
    /// Outbound policies (POLICY_V4 / POLICY_V6).
    Policy {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Tenants (TENANT_BY_VLAN, TENANT_BY_VNI, TENANT_ENCAP, IFACES).
    Tenant {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Every counter of WIRE_STATS and TENANT_STATS by name, summed over CPUs.
    Stats {
        /// Show zero counters too.
        #[arg(long)]
        all: bool,
        /// Repeat every SECS seconds (default 1) with per-second rates.
        #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "SECS")]
        watch: Option<f64>,
        /// Stop after N samples (with --watch).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Raw map contents.
    Maps {
        #[command(subcommand)]
        cmd: MapsCmd,
    },
    /// Rekey a connection's CHILD_SA (or its IKE_SA with --ike) now.
    Rekey {
        name: String,
        #[arg(long)]
        ike: bool,
    },
    /// Ask vpnd to reload its configuration.
    Reload,
    /// What this kernel and each device offer (XDP metadata, native XDP, AF_XDP zero-copy,
    /// live frames, kernel ESP and its AEADs, bpffs, ...) and what vpnd and vpn-pktgen choose
    /// from it. Works without vpnd and without bpffs; changes nothing.
    Probe {
        /// A device to probe (repeatable). Default: every device with esp_ingress or
        /// tenant_ingress attached.
        #[arg(long = "dev", value_name = "IFACE")]
        dev: Vec<String>,
        /// Probe the devices of this network namespace (`ip netns` name; keeps the host's
        /// bpffs, unlike `ip netns exec`).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
}

#[derive(Subcommand)]
enum ListOnly {
    List,
}

#[derive(Subcommand)]
enum ConnCmd {
    List,
    Up { name: String },
    Down { name: String },
}

#[derive(Subcommand)]
enum MapsCmd {
    /// Entries of one map, decoded (arrays: non-zero entries unless --all).
    Dump {
        name: String,
        #[arg(long)]
        all: bool,
    },
    /// The maps of the contract and whether they are pinned.
    List,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ctx = Ctx {
        pin_root: args.pin_root,
        run_dir: args.run_dir,
        instance: args.instance,
        json: args.json,
        timeout: Duration::from_secs_f64(args.timeout.clamp(0.1, 3600.0)),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let r = match args.cmd {
        Cmd::Status => ctl::status(&ctx, &mut out),
        Cmd::Sa {
            cmd: ListOnly::List,
        } => ctl::sa_list(&ctx, &mut out, &mut err),
        Cmd::Conn { cmd: ConnCmd::List } => ctl::conn_list(&ctx, &mut out),
        Cmd::Conn {
            cmd: ConnCmd::Up { name },
        } => ctl::action(&ctx, json!({"cmd": "conn-up", "name": name}), &mut out),
        Cmd::Conn {
            cmd: ConnCmd::Down { name },
        } => ctl::action(&ctx, json!({"cmd": "conn-down", "name": name}), &mut out),
        Cmd::Rekey { name, ike } => ctl::action(
            &ctx,
            json!({"cmd": "rekey", "name": name, "what": if ike { "ike" } else { "child" }}),
            &mut out,
        ),
        Cmd::Reload => ctl::action(&ctx, json!({"cmd": "reload"}), &mut out),
        Cmd::Policy {
            cmd: ListOnly::List,
        } => ctl::policy_list(&ctx, &mut out),
        Cmd::Tenant {
            cmd: ListOnly::List,
        } => ctl::tenant_list(&ctx, &mut out),
        Cmd::Stats { all, watch, count } => ctl::stats(&ctx, all, watch, count, &mut out),
        Cmd::Maps {
            cmd: MapsCmd::Dump { name, all },
        } => ctl::maps_dump(&ctx, &name, all, &mut out),
        Cmd::Maps { cmd: MapsCmd::List } => ctl::maps_list(&ctx, &mut out),
        Cmd::Probe { dev, netns } => ctl::probe(&ctx, dev, netns, &mut out),
    };
    let _ = out.flush();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "vpnctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
