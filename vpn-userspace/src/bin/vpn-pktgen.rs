//! vpn-pktgen: traffic for the data plane. Plain tenant UDP (kernel pktgen where the kernel
//! has it, else XDP live frames) or valid ESP toward an SA (AF_XDP); a progress line a
//! second on stderr, a summary at the end (`--json` for scripts). Ctrl-C stops early and
//! still prints the summary. See `vpn_userspace::pktgen` for the engines.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use vpn_userspace::pktgen::{self, Args};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    match pktgen::run(&args, &STOP) {
        Ok(s) => {
            if args.json {
                match serde_json::to_string_pretty(&s) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("vpn-pktgen: error: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", s.text());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vpn-pktgen: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
