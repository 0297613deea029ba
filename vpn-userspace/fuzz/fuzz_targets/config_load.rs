//! vpnd's configuration file: `Config::from_text` (what `Config::load` does after reading the
//! file), then what vpnd derives from a loaded configuration: the manual SAs and the
//! VPNaaS connections, and every error's message. Errors are expected; a panic is not.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vpn_userspace::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Key files named in the text are looked up beside this (absent) file.
    let path = Path::new("/nonexistent/vpnd.toml");
    let cfg = match Config::from_text(text, path) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = cfg.backend();
    let _ = cfg.resolve_sas(path).map_err(|e| e.to_string());
    let _ = cfg.resolve_connections(path).map_err(|e| e.to_string());
});
