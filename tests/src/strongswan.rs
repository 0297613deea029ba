//! strongSwan's charon as a real IKEv2 peer inside one of our network namespaces.
//!
//! Each [`Charon`] is one charon process with its own `STRONGSWAN_CONF`, a private `/run`
//! (a tmpfs in a private mount namespace, so pid files and the stroke socket never collide), a
//! vici socket and a file log in its own instance directory. The kernel here has no ESP, so
//! charon loads `kernel-libipsec`: ESP runs in userspace, always UDP-encapsulated on port 4500,
//! and the CHILD_SA's remote subnet is routed (table 220) into its TUN device `ipsec0`.
//!
//! With [`CharonSettings::key_oracle`], charon logs its key material (`ike = 4`, `chd = 4`) and
//! [`key_oracle`] pulls the secrets out of that log.

use std::{
    fmt::Write as _,
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{NetNs, unique};

/// Where Debian installs the daemon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// Whether the test may run: true as root; otherwise prints why it is skipped (charon, the
/// namespaces and the TUN device all need root).
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: plain libc call.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: it runs strongSwan's charon in network namespaces and needs root \
         (cargo xtask test runs it as root)"
    );
    false
}

/// One `connections` entry of swanctl.conf (with its single CHILD_SA) and its PSK secret.
#[derive(Clone, Debug)]
pub struct SwanConn {
    /// Connection (IKE) name; the CHILD_SA is named [`SwanConn::child`].
    pub name: String,
    pub child: String,
    pub local_addrs: String,
    pub remote_addrs: String,
    pub local_id: String,
    pub remote_id: String,
    pub psk: String,
    /// IKE proposals, e.g. `aes256gcm16-prfsha256-modp2048`.
    pub proposals: String,
    /// ESP proposals, e.g. `aes128gcm16` (no ESN: libipsec refuses it).
    pub esp_proposals: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    /// `none`, `start` or `trap`.
    pub start_action: String,
    pub dpd_delay: Option<u32>,
    /// `clear`, `restart` or `trap`.
    pub dpd_action: String,
    /// IKE_SA rekey time in seconds (`None`: strongSwan's default, 4 h).
    pub rekey_time: Option<u32>,
    /// CHILD_SA rekey time in seconds (`None`: strongSwan's default, 1 h).
    pub child_rekey_time: Option<u32>,
    /// Force UDP encapsulation (libipsec encapsulates anyway).
    pub encap: bool,
    pub version: u32,
    pub mobike: bool,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
}

impl SwanConn {
    /// A PSK connection between two addresses, identified by those addresses, with the
    /// project's usual algorithms and a CHILD_SA named `<name>-child` covering nothing yet
    /// (set `local_ts`/`remote_ts`).
    pub fn new(name: &str, local: &str, remote: &str, psk: &str) -> SwanConn {
        SwanConn {
            name: name.into(),
            child: format!("{name}-child"),
            local_addrs: local.into(),
            remote_addrs: remote.into(),
            local_id: local.into(),
            remote_id: remote.into(),
            psk: psk.into(),
            proposals: "aes256gcm16-prfsha256-modp2048".into(),
            esp_proposals: "aes128gcm16".into(),
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            start_action: "none".into(),
            dpd_delay: None,
            dpd_action: "clear".into(),
            rekey_time: None,
            child_rekey_time: None,
            encap: false,
            version: 2,
            mobike: false,
            local_port: None,
            remote_port: None,
        }
    }

    /// Sets the traffic selectors (builder style).
    pub fn ts(mut self, local: &[&str], remote: &[&str]) -> SwanConn {
        self.local_ts = local.iter().map(|s| s.to_string()).collect();
        self.remote_ts = remote.iter().map(|s| s.to_string()).collect();
        self
    }

    fn render(&self, out: &mut String) {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let list = |v: &[String]| {
            if v.is_empty() {
                "dynamic".to_string()
            } else {
                v.join(",")
            }
        };
        let _ = writeln!(out, "  {} {{", self.name);
        let _ = writeln!(out, "    version = {}", self.version);
        let _ = writeln!(out, "    local_addrs = {}", self.local_addrs);
        let _ = writeln!(out, "    remote_addrs = {}", self.remote_addrs);
        if let Some(p) = self.local_port {
            let _ = writeln!(out, "    local_port = {p}");
        }
        if let Some(p) = self.remote_port {
            let _ = writeln!(out, "    remote_port = {p}");
        }
        let _ = writeln!(out, "    proposals = {}", self.proposals);
        let _ = writeln!(out, "    mobike = {}", yn(self.mobike));
        let _ = writeln!(out, "    encap = {}", yn(self.encap));
        if let Some(d) = self.dpd_delay {
            let _ = writeln!(out, "    dpd_delay = {d}s");
        }
        if let Some(t) = self.rekey_time {
            let _ = writeln!(out, "    rekey_time = {t}s");
        }
        let _ = writeln!(
            out,
            "    local {{\n      auth = psk\n      id = {}\n    }}",
            self.local_id
        );
        let _ = writeln!(
            out,
            "    remote {{\n      auth = psk\n      id = {}\n    }}",
            self.remote_id
        );
        let _ = writeln!(out, "    children {{\n      {} {{", self.child);
        let _ = writeln!(out, "        local_ts = {}", list(&self.local_ts));
        let _ = writeln!(out, "        remote_ts = {}", list(&self.remote_ts));
        let _ = writeln!(out, "        esp_proposals = {}", self.esp_proposals);
        let _ = writeln!(out, "        start_action = {}", self.start_action);
        let _ = writeln!(out, "        dpd_action = {}", self.dpd_action);
        if let Some(t) = self.child_rekey_time {
            let _ = writeln!(out, "        rekey_time = {t}s");
        }
        let _ = writeln!(out, "      }}\n    }}\n  }}");
    }
}

/// Renders swanctl.conf: every connection, and one `ike` secret per connection.
pub fn render_swanctl_conf(conns: &[SwanConn]) -> String {
    let mut out = String::from("connections {\n");
    for c in conns {
        c.render(&mut out);
    }
    out.push_str("}\nsecrets {\n");
    for (i, c) in conns.iter().enumerate() {
        let _ = writeln!(
            out,
            "  ike-{i} {{\n    id-1 = {}\n    id-2 = {}\n    secret = \"{}\"\n  }}",
            c.local_id,
            c.remote_id,
            c.psk.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    out.push_str("}\n");
    out
}

/// charon's own settings (strongswan.conf).
#[derive(Clone, Debug, Default)]
pub struct CharonSettings {
    /// charon demands a COOKIE once this many IKE_SAs are half-open (when the IKE_SA_INIT
    /// arrives, not counting it): even 1 lets a lone first IKE_SA_INIT through unchallenged.
    pub cookie_threshold: Option<u32>,
    /// `retransmit_timeout` (s), `retransmit_tries`, `retransmit_base`.
    pub retransmit_timeout: Option<f64>,
    pub retransmit_tries: Option<u32>,
    pub retransmit_base: Option<f64>,
    /// Log key material (`ike = 4`, `chd = 4`, `knl = 2`) for [`key_oracle`].
    pub key_oracle: bool,
    /// Extra lines inside the `charon { }` section, verbatim.
    pub extra: String,
}

impl CharonSettings {
    /// strongswan.conf for an instance living in `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let d = dir.display();
        let mut out = String::from("charon {\n  install_routes = yes\n");
        if let Some(c) = self.cookie_threshold {
            let _ = writeln!(out, "  cookie_threshold = {c}");
        }
        if let Some(t) = self.retransmit_timeout {
            let _ = writeln!(out, "  retransmit_timeout = {t}");
        }
        if let Some(t) = self.retransmit_tries {
            let _ = writeln!(out, "  retransmit_tries = {t}");
        }
        if let Some(b) = self.retransmit_base {
            let _ = writeln!(out, "  retransmit_base = {b}");
        }
        let (ike, chd, knl) = if self.key_oracle {
            (4, 4, 2)
        } else {
            (2, 2, 1)
        };
        let _ = write!(
            out,
            "  filelog {{\n    instance {{\n      path = {d}/charon.log\n      \
             time_format = %b %e %T\n      default = 1\n      ike = {ike}\n      \
             chd = {chd}\n      knl = {knl}\n      flush_line = yes\n      \
             append = no\n    }}\n  }}\n  syslog {{\n    daemon {{\n      default = -1\n    }}\n  }}\n"
        );
        let _ = write!(
            out,
            "  plugins {{\n    include /etc/strongswan.d/charon/*.conf\n    \
             kernel-libipsec {{\n      load = yes\n    }}\n    \
             vici {{\n      socket = unix://{d}/charon.vici\n    }}\n  }}\n"
        );
        out.push_str(&self.extra);
        out.push_str("}\n");
        out
    }
}

/// One CHILD_SA as `swanctl --list-sas` shows it.
#[derive(Clone, Debug, Default)]
pub struct ChildSaInfo {
    pub name: String,
    pub uniqueid: u32,
    /// INSTALLED, REKEYING, REKEYED, DELETING, DELETED, ...
    pub state: String,
    pub encap: bool,
    pub spi_in: u32,
    pub spi_out: u32,
    pub encr_alg: String,
    pub encr_keysize: u32,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    pub install_time: u64,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
}

/// One IKE_SA as `swanctl --list-sas` shows it.
#[derive(Clone, Debug, Default)]
pub struct IkeSaInfo {
    pub name: String,
    pub uniqueid: u32,
    /// ESTABLISHED, CONNECTING, REKEYING, DELETING, ...
    pub state: String,
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub local_host: String,
    pub local_port: u16,
    pub remote_host: String,
    pub remote_port: u16,
    pub encr_alg: String,
    pub encr_keysize: u32,
    pub prf_alg: String,
    pub dh_group: String,
    /// Seconds since it was established.
    pub established: u64,
    pub children: Vec<ChildSaInfo>,
}

impl IkeSaInfo {
    /// The CHILD_SA of that name in state INSTALLED, if any.
    pub fn installed_child(&self, name: &str) -> Option<&ChildSaInfo> {
        self.children
            .iter()
            .find(|c| c.name == name && c.state == "INSTALLED")
    }
}

/// A node of swanctl's `--pretty` output.
#[derive(Debug)]
enum Vici {
    Value(String),
    List(Vec<String>),
    Section(Vec<(String, Vici)>),
}

impl Vici {
    fn get(&self, key: &str) -> Option<&Vici> {
        match self {
            Vici::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> String {
        match self.get(key) {
            Some(Vici::Value(v)) => v.clone(),
            _ => String::new(),
        }
    }
    fn num<T: std::str::FromStr + Default>(&self, key: &str) -> T {
        self.str(key).parse().unwrap_or_default()
    }
    fn hex<T: Default>(
        &self,
        key: &str,
        parse: fn(&str, u32) -> Result<T, std::num::ParseIntError>,
    ) -> T {
        parse(&self.str(key), 16).unwrap_or_default()
    }
    fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Vici::List(v)) => v.clone(),
            _ => Vec::new(),
        }
    }
}

/// Parses the body of a `--pretty` message (the lines after `... {`) up to its closing `}`.
fn parse_section<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Vici {
    let mut items = Vec::new();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line == "}" {
            break;
        }
        if let Some(name) = line.strip_suffix(" {") {
            items.push((name.to_string(), parse_section(lines)));
        } else if let Some(key) = line.strip_suffix(" = [") {
            let mut v = Vec::new();
            for l in lines.by_ref() {
                let l = l.trim();
                if l == "]" {
                    break;
                }
                v.push(l.to_string());
            }
            items.push((key.to_string(), Vici::List(v)));
        } else if let Some((k, v)) = line.split_once(" = ") {
            items.push((k.to_string(), Vici::Value(v.to_string())));
        }
    }
    Vici::Section(items)
}

/// Parses `swanctl --list-sas --pretty`: one `list-sa event { NAME { ... } }` per IKE_SA.
pub fn parse_list_sas(text: &str) -> Vec<IkeSaInfo> {
    let mut sas = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "list-sa event {" {
            continue;
        }
        let Vici::Section(event) = parse_section(&mut lines) else {
            continue;
        };
        for (name, sa) in event {
            let children = match sa.get("child-sas") {
                Some(Vici::Section(ch)) => ch
                    .iter()
                    .map(|(_, c)| ChildSaInfo {
                        name: c.str("name"),
                        uniqueid: c.num("uniqueid"),
                        state: c.str("state"),
                        encap: c.str("encap") == "yes",
                        spi_in: c.hex("spi-in", u32::from_str_radix),
                        spi_out: c.hex("spi-out", u32::from_str_radix),
                        encr_alg: c.str("encr-alg"),
                        encr_keysize: c.num("encr-keysize"),
                        bytes_in: c.num("bytes-in"),
                        packets_in: c.num("packets-in"),
                        bytes_out: c.num("bytes-out"),
                        packets_out: c.num("packets-out"),
                        install_time: c.num("install-time"),
                        local_ts: c.list("local-ts"),
                        remote_ts: c.list("remote-ts"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            sas.push(IkeSaInfo {
                name,
                uniqueid: sa.num("uniqueid"),
                state: sa.str("state"),
                initiator: sa.str("initiator") == "yes",
                spi_i: sa.hex("initiator-spi", u64::from_str_radix),
                spi_r: sa.hex("responder-spi", u64::from_str_radix),
                local_host: sa.str("local-host"),
                local_port: sa.num("local-port"),
                remote_host: sa.str("remote-host"),
                remote_port: sa.num("remote-port"),
                encr_alg: sa.str("encr-alg"),
                encr_keysize: sa.num("encr-keysize"),
                prf_alg: sa.str("prf-alg"),
                dh_group: sa.str("dh-group"),
                established: sa.num("established"),
                children,
            });
        }
    }
    sas
}

/// A running charon in a namespace; dropping it stops the process (by PID) and removes its
/// instance directory.
pub struct Charon {
    child: Child,
    dir: PathBuf,
    ns: String,
}

impl Charon {
    /// Writes the configuration into a fresh instance directory, starts charon in `ns` and
    /// loads `conns` through vici. Bounded: fails if the vici socket does not appear in 10 s.
    pub fn start(ns: &NetNs, settings: &CharonSettings, conns: &[SwanConn]) -> Result<Charon> {
        if !Path::new(CHARON).exists() {
            bail!("{CHARON} is missing: install strongSwan with `cargo xtask setup` (as root)");
        }
        let dir = std::env::temp_dir().join(unique("charon"));
        std::fs::create_dir_all(&dir)?;
        // From here on the directory goes away with `Dir` unless handed over to `Charon`.
        struct Dir(Option<PathBuf>);
        impl Drop for Dir {
            fn drop(&mut self) {
                if let Some(d) = &self.0 {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
        let mut guard = Dir(Some(dir.clone()));
        let conf = dir.join("strongswan.conf");
        std::fs::write(&conf, settings.render(&dir))?;
        std::fs::write(dir.join("swanctl.conf"), render_swanctl_conf(conns))?;
        let stdout = File::create(dir.join("stdout"))?;
        let stderr = File::create(dir.join("stderr"))?;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns.name(),
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .args([
            "sh",
            "-c",
            &format!("mount -t tmpfs none /run && exec {CHARON}"),
        ])
        .env("STRONGSWAN_CONF", &conf)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
        // SAFETY: setsid is async-signal-safe; it detaches charon from our terminal's session
        // (the same as `setsid ip netns exec ...`, without setsid's possible fork, so the PID
        // we hold is charon's own: ip, unshare and sh all exec).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting charon")?;
        let mut charon = Charon {
            child,
            dir: guard.0.take().expect("set above"),
            ns: ns.name().to_string(),
        };
        charon.wait_vici(Duration::from_secs(10))?;
        charon
            .swanctl(&[
                "--load-all",
                "--noprompt",
                "--file",
                &charon.dir.join("swanctl.conf").display().to_string(),
            ])
            .context("loading swanctl.conf")?;
        Ok(charon)
    }

    fn wait_vici(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let sock = self.dir.join("charon.vici");
        loop {
            if sock.exists() && self.swanctl(&["--version"]).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "charon in {} exited ({status}) before its vici socket appeared: {}{}",
                    self.ns,
                    self.read("stderr"),
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "charon in {}: no vici socket {} within {timeout:?}: {}",
                    self.ns,
                    sock.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The instance directory (configuration, vici socket, log, stdout/stderr).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn vici_uri(&self) -> String {
        format!("unix://{}", self.dir.join("charon.vici").display())
    }

    /// charon's file log so far.
    pub fn log(&self) -> String {
        self.read("charon.log")
    }

    /// Runs `swanctl ARGS --uri <this instance>`; bounded by a 30 s kill.
    pub fn swanctl(&self, args: &[&str]) -> Result<String> {
        let uri = self.vici_uri();
        let mut child = Command::new("swanctl")
            .args(args)
            .args(["--uri", &uri])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning swanctl")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("swanctl {} hung for 30 s", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "swanctl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    /// Initiates CHILD_SA `child` of connection `ike` and waits (at most `timeout`) until
    /// charon reports the outcome.
    pub fn initiate(&self, child: &str, ike: &str, timeout: Duration) -> Result<()> {
        let t = timeout.as_secs().max(1).to_string();
        self.swanctl(&[
            "--initiate",
            "--child",
            child,
            "--ike",
            ike,
            "--timeout",
            &t,
        ])?;
        Ok(())
    }

    /// Every IKE_SA with its CHILD_SAs.
    pub fn list_sas(&self) -> Result<Vec<IkeSaInfo>> {
        Ok(parse_list_sas(&self.swanctl(&["--list-sas", "--pretty"])?))
    }

    /// The IKE_SA of that connection in state ESTABLISHED, if any.
    pub fn established(&self, ike: &str) -> Result<Option<IkeSaInfo>> {
        Ok(self
            .list_sas()?
            .into_iter()
            .find(|s| s.name == ike && s.state == "ESTABLISHED"))
    }

    /// Queues a CHILD_SA rekey (asynchronous: watch `list_sas` for the new SPIs).
    pub fn rekey_child(&self, name: &str) -> Result<()> {
        self.swanctl(&["--rekey", "--child", name]).map(|_| ())
    }

    /// Queues an IKE_SA rekey (asynchronous: watch `list_sas` for the new SPIs).
    pub fn rekey_ike(&self, name: &str) -> Result<()> {
        self.swanctl(&["--rekey", "--ike", name]).map(|_| ())
    }

    pub fn terminate_ike(&self, name: &str) -> Result<()> {
        self.swanctl(&["--terminate", "--ike", name, "--timeout", "5"])
            .map(|_| ())
    }

    /// Waits (bounded) until `pred` holds for the SA list; returns that list.
    pub fn wait_sas(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[IkeSaInfo]) -> bool,
    ) -> Result<Vec<IkeSaInfo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let sas = self.list_sas()?;
            if pred(&sas) {
                return Ok(sas);
            }
            if Instant::now() > deadline {
                bail!(
                    "condition on the SAs of charon in {} not met within {timeout:?}: {sas:#?}",
                    self.ns
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until connection `ike` has an ESTABLISHED IKE_SA; returns it.
    pub fn wait_established(&self, ike: &str, timeout: Duration) -> Result<IkeSaInfo> {
        let sas = self.wait_sas(timeout, |sas| {
            sas.iter()
                .any(|s| s.name == ike && s.state == "ESTABLISHED")
        })?;
        Ok(sas
            .into_iter()
            .find(|s| s.name == ike && s.state == "ESTABLISHED")
            .expect("checked"))
    }

    /// The key material charon logged so far (needs [`CharonSettings::key_oracle`]).
    pub fn key_oracle(&self) -> KeyOracle {
        key_oracle(&self.log())
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child (charon itself: every wrapper exec'd).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut gone = false;
        for _ in 0..150 {
            if let Ok(Some(_)) = self.child.try_wait() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One hex dump charon logged: `NN[IKE] LABEL => LEN bytes @ ADDR` and its lines.
#[derive(Clone, Debug)]
pub struct HexDump {
    /// charon's thread number (dumps of one exchange share it).
    pub thread: u32,
    pub label: String,
    pub bytes: Vec<u8>,
}

/// The keys of one IKE_SA (its initial IKE_SA_INIT, or an IKE_SA rekey).
#[derive(Clone, Debug, Default)]
pub struct IkeKeys {
    /// `None` for a rekeyed IKE_SA (they are only found in the AUTH octets).
    pub spi_i: Option<u64>,
    pub spi_r: Option<u64>,
    pub nonce_i: Option<Vec<u8>>,
    pub nonce_r: Option<Vec<u8>>,
    pub dh_secret: Vec<u8>,
    pub skeyseed: Vec<u8>,
    pub sk_d: Vec<u8>,
    /// Empty with AEAD proposals (no integrity keys).
    pub sk_ai: Vec<u8>,
    pub sk_ar: Vec<u8>,
    /// For AES-GCM: key and 4-byte salt.
    pub sk_ei: Vec<u8>,
    pub sk_er: Vec<u8>,
    pub sk_pi: Vec<u8>,
    pub sk_pr: Vec<u8>,
}

/// The keys of one CHILD_SA.
#[derive(Clone, Debug, Default)]
pub struct ChildKeys {
    /// Whether this charon initiated the exchange that created it.
    pub initiator: bool,
    /// Ni | Nr (with g^ir in front under PFS).
    pub seed: Vec<u8>,
    pub encr_i: Vec<u8>,
    pub encr_r: Vec<u8>,
    pub integ_i: Vec<u8>,
    pub integ_r: Vec<u8>,
    pub spi_in: Option<u32>,
    pub spi_out: Option<u32>,
}

impl ChildKeys {
    /// The encryption key (and salt for GCM) protecting inbound traffic.
    pub fn encr_in(&self) -> &[u8] {
        if self.initiator {
            &self.encr_r
        } else {
            &self.encr_i
        }
    }
    pub fn encr_out(&self) -> &[u8] {
        if self.initiator {
            &self.encr_i
        } else {
            &self.encr_r
        }
    }
}

/// Everything [`key_oracle`] found, in log order.
#[derive(Clone, Debug, Default)]
pub struct KeyOracle {
    pub dumps: Vec<HexDump>,
    pub ike: Vec<IkeKeys>,
    pub children: Vec<ChildKeys>,
}

impl KeyOracle {
    /// Every dump with that label (e.g. `"Sk_d secret"`), in log order.
    pub fn all(&self, label: &str) -> Vec<&[u8]> {
        self.dumps
            .iter()
            .filter(|d| d.label == label)
            .map(|d| d.bytes.as_slice())
            .collect()
    }
}

/// `NN[XXX] rest` -> (NN, rest) for a log line with the `%b %e %T` time prefix (or none).
fn split_line(line: &str) -> Option<(u32, &str)> {
    let i = line.find('[')?;
    let thread_start = line[..i].rfind(' ').map_or(0, |p| p + 1);
    let thread = line[thread_start..i].parse().ok()?;
    let rest = line[i..].split_once("] ")?.1;
    Some((thread, rest))
}

/// The hex bytes of a dump line `   16: AB CD ...  ascii`, if it is one.
fn dump_bytes(rest: &str) -> Option<Vec<u8>> {
    let (off, data) = rest.trim_start().split_once(": ")?;
    off.parse::<usize>().ok()?;
    // At most 16 "XX " groups; the ASCII column follows after two spaces.
    let hex: String = data.chars().take(16 * 3).collect();
    let mut out = Vec::new();
    for tok in hex.split_whitespace() {
        if tok.len() != 2 {
            break;
        }
        out.push(u8::from_str_radix(tok, 16).ok()?);
    }
    Some(out)
}

/// Extracts the key material charon logs at `ike = 4` / `chd = 4` from its file log.
///
/// Labels (strongSwan 5.9.8): `shared Diffie Hellman secret`, `SKEYSEED`, `Sk_d secret`,
/// `Sk_ai secret`, `Sk_ar secret` (non-AEAD only), `Sk_ei secret`, `Sk_er secret`,
/// `Sk_pi secret`, `Sk_pr secret`, `SK_p`, `octets = message + nonce + prf(Sk_px, IDx')`,
/// `AUTH = prf(prf(secret, keypad), octets)`; for CHILD_SAs `seed`,
/// `encryption initiator key`, `encryption responder key`, `integrity initiator key`,
/// `integrity responder key`, followed by `adding inbound|outbound ESP SA` / `SPI 0x...`.
/// Nonces are not logged on their own: they are taken from the AUTH octets (the IKE_SA_INIT
/// message, then the peer's nonce, then prf(SK_p, ID')) of the initial IKE_SA.
pub fn key_oracle(log: &str) -> KeyOracle {
    let mut o = KeyOracle::default();
    // Per-thread: whether the last parsed message was a response (we initiated the exchange).
    let mut parsed_response: std::collections::HashMap<u32, bool> = Default::default();
    let mut current: Option<(u32, String, usize, Vec<u8>)> = None;
    let mut pending_spi: Option<(u32, bool)> = None;
    let finish = |cur: &mut Option<(u32, String, usize, Vec<u8>)>, o: &mut KeyOracle| {
        if let Some((thread, label, _, bytes)) = cur.take() {
            o.dumps.push(HexDump {
                thread,
                label,
                bytes,
            });
        }
    };
    let mut initiator_of_dump = Vec::new();
    for line in log.lines() {
        let Some((thread, rest)) = split_line(line) else {
            continue;
        };
        if let Some((t, _, len, bytes)) = &mut current
            && *t == thread
            && bytes.len() < *len
            && let Some(b) = dump_bytes(rest)
        {
            bytes.extend(b);
            continue;
        }
        if current.is_some() {
            finish(&mut current, &mut o);
        }
        if let Some((label, tail)) = rest.split_once(" => ")
            && let Some(len) = tail
                .split_once(" bytes")
                .and_then(|(n, _)| n.trim().parse::<usize>().ok())
        {
            initiator_of_dump.push(*parsed_response.get(&thread).unwrap_or(&false));
            current = Some((thread, label.to_string(), len, Vec::new()));
            continue;
        }
        if let Some(m) = rest.strip_prefix("parsed ") {
            let is_response = m.split_whitespace().nth(1) == Some("response");
            parsed_response.insert(thread, is_response);
        } else if rest.starts_with("adding inbound ESP SA") {
            pending_spi = Some((thread, true));
        } else if rest.starts_with("adding outbound ESP SA") {
            pending_spi = Some((thread, false));
        } else if let Some(spi) = rest.trim_start().strip_prefix("SPI 0x")
            && let Some((t, inbound)) = pending_spi.take()
            && t == thread
            && let Some(spi) = spi
                .split(',')
                .next()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
            // The last CHILD_SA whose keys were derived.
            && let Some(c) = o.children.last_mut()
        {
            if inbound {
                c.spi_in.get_or_insert(spi);
            } else {
                c.spi_out.get_or_insert(spi);
            }
        }
        // Group CHILD keys as they complete.
        group_children(&mut o, &initiator_of_dump);
    }
    finish(&mut current, &mut o);
    group_children(&mut o, &initiator_of_dump);
    group_ike(&mut o);
    o
}

/// Turns `seed` + key dumps into [`ChildKeys`] as soon as they are complete (so that the SPI
/// lines that follow attach to the right one).
fn group_children(o: &mut KeyOracle, initiator_of_dump: &[bool]) {
    let seen: usize = o.children.len();
    let seeds: Vec<usize> = o
        .dumps
        .iter()
        .enumerate()
        .filter(|(_, d)| d.label == "seed")
        .map(|(i, _)| i)
        .collect();
    for &si in seeds.iter().skip(seen) {
        let thread = o.dumps[si].thread;
        let mut c = ChildKeys {
            initiator: initiator_of_dump.get(si).copied().unwrap_or(false),
            seed: o.dumps[si].bytes.clone(),
            ..Default::default()
        };
        // Complete once the responder's encryption key is there (it comes last), or once
        // something else follows on the thread (a failed derivation must not block the rest).
        let mut complete = false;
        for d in o.dumps[si + 1..].iter().filter(|d| d.thread == thread) {
            match d.label.as_str() {
                "encryption initiator key" => c.encr_i = d.bytes.clone(),
                "encryption responder key" => {
                    c.encr_r = d.bytes.clone();
                    complete = true;
                    break;
                }
                "integrity initiator key" => c.integ_i = d.bytes.clone(),
                "integrity responder key" => c.integ_r = d.bytes.clone(),
                _ => {
                    complete = true;
                    break;
                }
            }
        }
        if !complete {
            return;
        }
        o.children.push(c);
    }
}

fn group_ike(o: &mut KeyOracle) {
    let mut cur: Option<IkeKeys> = None;
    let mut octets_seen = 0;
    let mut prf_len = 0;
    for d in &o.dumps {
        let b = d.bytes.clone();
        match d.label.as_str() {
            "shared Diffie Hellman secret" => {
                if let Some(k) = cur.take() {
                    o.ike.push(k);
                }
                octets_seen = 0;
                cur = Some(IkeKeys {
                    dh_secret: b,
                    ..Default::default()
                });
            }
            label => {
                let Some(k) = cur.as_mut() else { continue };
                match label {
                    "SKEYSEED" => k.skeyseed = b,
                    "Sk_d secret" => k.sk_d = b,
                    "Sk_ai secret" => k.sk_ai = b,
                    "Sk_ar secret" => k.sk_ar = b,
                    "Sk_ei secret" => k.sk_ei = b,
                    "Sk_er secret" => k.sk_er = b,
                    "Sk_pi secret" => k.sk_pi = b,
                    "Sk_pr secret" => k.sk_pr = b,
                    "SK_p" => prf_len = b.len(),
                    l if l.starts_with("octets = message + nonce") && octets_seen < 2 => {
                        octets_seen += 1;
                        // IKE header: SPIi(8) SPIr(8) next(1) ver(1) exch(1) flags(1) id(4) len(4)
                        if b.len() >= 28 {
                            let msg_len = u32::from_be_bytes([b[24], b[25], b[26], b[27]]) as usize;
                            let flags = b[19];
                            let spi = |r: std::ops::Range<usize>| {
                                u64::from_be_bytes(b[r].try_into().expect("8 bytes"))
                            };
                            if msg_len <= b.len().saturating_sub(prf_len) {
                                k.spi_i = Some(spi(0..8));
                                let nonce = b[msg_len..b.len() - prf_len].to_vec();
                                // The IKE_SA_INIT request (Initiator flag) is followed by Nr.
                                if flags & 0x08 != 0 {
                                    k.nonce_r = Some(nonce);
                                } else {
                                    k.spi_r = Some(spi(8..16));
                                    k.nonce_i = Some(nonce);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(k) = cur.take() {
        o.ike.push(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pretty_list_sas() {
        let text = "list-sa event {\n  c1 {\n    uniqueid = 1\n    state = ESTABLISHED\n    \
            initiator = yes\n    initiator-spi = cdda7871ae578434\n    \
            responder-spi = 8deb5d55675733b5\n    encr-alg = AES_GCM_16\n    \
            encr-keysize = 256\n    established = 2\n    child-sas {\n      ch1-1 {\n        \
            name = ch1\n        state = INSTALLED\n        encap = yes\n        \
            spi-in = e785faee\n        spi-out = 574a9986\n        bytes-in = 420\n        \
            packets-in = 5\n        local-ts = [\n          10.71.1.0/24\n        ]\n        \
            remote-ts = [\n          10.71.2.0/24\n        ]\n      }\n    }\n  }\n}\n\
            list-sas reply {\n}\n";
        let sas = parse_list_sas(text);
        assert_eq!(sas.len(), 1);
        let s = &sas[0];
        assert_eq!((s.name.as_str(), s.state.as_str()), ("c1", "ESTABLISHED"));
        assert_eq!((s.spi_i, s.spi_r), (0xcdda7871ae578434, 0x8deb5d55675733b5));
        assert!(s.initiator);
        assert_eq!((s.encr_keysize, s.established), (256, 2));
        let c = s.installed_child("ch1").expect("child");
        assert_eq!((c.spi_in, c.spi_out), (0xe785faee, 0x574a9986));
        assert_eq!((c.bytes_in, c.packets_in), (420, 5));
        assert!(c.encap);
        assert_eq!(c.local_ts, ["10.71.1.0/24"]);
        assert_eq!(c.remote_ts, ["10.71.2.0/24"]);
    }

    #[test]
    fn extracts_child_keys_and_spis() {
        let log = "\
Nov 23 18:01:17 14[ENC] parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ]
Nov 23 18:01:17 14[CHD] seed => 4 bytes @ 0x1
Nov 23 18:01:17 14[CHD]    0: 01 02 03 04                                      ....
Nov 23 18:01:17 14[CHD] encryption initiator key => 20 bytes @ 0x2
Nov 23 18:01:17 14[CHD]    0: 0C AE 0F 3E 86 8A 2C EB 93 E2 33 60 D2 00 6E 59  ...>..,...3`..nY
Nov 23 18:01:17 14[CHD]   16: 1E 76 54 22                                      .vT\"
Nov 23 18:01:17 14[CHD] encryption responder key => 20 bytes @ 0x3
Nov 23 18:01:17 14[CHD]    0: 9E 2F 8B 60 B5 B7 57 DE E5 2B 94 51 3B 79 B6 7D  ./.`..W..+.Q;y.}
Nov 23 18:01:17 14[CHD]   16: 17 12 D1 8D                                      ....
Nov 23 18:01:17 14[CHD] adding inbound ESP SA
Nov 23 18:01:17 14[CHD]   SPI 0xe785faee, src 172.31.9.2 dst 172.31.9.1
Nov 23 18:01:17 14[CHD] adding outbound ESP SA
Nov 23 18:01:17 14[CHD]   SPI 0x574a9986, src 172.31.9.1 dst 172.31.9.2
";
        let o = key_oracle(log);
        assert_eq!(o.dumps.len(), 3);
        assert_eq!(o.children.len(), 1);
        let c = &o.children[0];
        assert!(c.initiator);
        assert_eq!(c.seed, [1, 2, 3, 4]);
        assert_eq!(c.encr_i.len(), 20);
        assert_eq!(c.encr_out()[..2], [0x0c, 0xae]);
        assert_eq!(c.encr_in()[16..], [0x17, 0x12, 0xd1, 0x8d]);
        assert_eq!((c.spi_in, c.spi_out), (Some(0xe785faee), Some(0x574a9986)));
    }
}
