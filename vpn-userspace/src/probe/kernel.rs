//! What the running kernel is and how it was built: `uname`, the BPF JIT switch, the build
//! configuration (`/boot/config-RELEASE` or `/proc/config.gz`) and the modules it can load
//! (`/lib/modules/RELEASE/modules.builtin`, `modules.dep`, `/proc/modules`). Only read:
//! nothing here loads a module or changes a setting.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
};

/// `uname(2)`: release ("6.1.0-18-amd64"), version ("#1 SMP PREEMPT_DYNAMIC ...") and machine.
pub fn uname() -> (String, String, String) {
    // SAFETY: uname into a zeroed struct; the fields are NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("unknown".into(), "unknown".into(), "unknown".into());
    }
    let s = |f: &[libc::c_char]| {
        let b: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    (s(&u.release), s(&u.version), s(&u.machine))
}

/// `major.minor` of a release string ("6.18.44-fc-v1300" -> (6, 18)).
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel's build configuration: `CONFIG_X` -> "y", "m" or a value; options the file says
/// are "not set" are absent.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Where it was read from.
    pub source: String,
    options: HashMap<String, String>,
}

/// How a kernel option is set.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Opt {
    BuiltIn,
    Module,
    NotSet,
    /// No configuration file was found.
    Unknown,
}

impl Config {
    /// Parses a `.config` (lines `CONFIG_X=y`, `# CONFIG_X is not set`, comments).
    pub fn parse(source: &str, text: &str) -> Config {
        let options = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        Config {
            source: source.to_string(),
            options,
        }
    }

    /// `/boot/config-RELEASE` (Debian, Fedora), else `/proc/config.gz` (`CONFIG_IKCONFIG_PROC`).
    pub fn load(release: &str) -> Option<Config> {
        let boot = format!("/boot/config-{release}");
        if let Ok(t) = std::fs::read_to_string(&boot) {
            return Some(Config::parse(&boot, &t));
        }
        let f = std::fs::File::open("/proc/config.gz").ok()?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .ok()?;
        Some(Config::parse("/proc/config.gz", &text))
    }

    pub fn get(&self, option: &str) -> Opt {
        match self.options.get(option).map(String::as_str) {
            Some("y") => Opt::BuiltIn,
            Some("m") => Opt::Module,
            Some(_) => Opt::BuiltIn,
            None => Opt::NotSet,
        }
    }
}

/// [`Config::get`] on a config that may be missing.
pub fn opt(cfg: Option<&Config>, option: &str) -> Opt {
    cfg.map_or(Opt::Unknown, |c| c.get(option))
}

/// Where a module stands on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Module {
    /// In `/proc/modules`.
    Loaded,
    /// In `modules.builtin`.
    BuiltIn,
    /// In `modules.dep`, and the file is there.
    Loadable(PathBuf),
    /// Not in this kernel's module lists.
    Missing,
    /// No `/lib/modules/RELEASE` (or no `modules.dep` in it).
    NoModuleDir(PathBuf),
}

/// The module name of a path in `modules.dep` / `modules.builtin`
/// ("kernel/net/core/pktgen.ko.xz" -> "pktgen"; dashes become underscores, as modprobe does).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// The module lists of one kernel.
#[derive(Clone, Debug, Default)]
pub struct Modules {
    pub dir: PathBuf,
    loaded: Vec<String>,
    builtin: Option<Vec<String>>,
    /// name -> path relative to `dir`.
    dep: Option<HashMap<String, String>>,
}

impl Modules {
    pub fn load(release: &str) -> Modules {
        let dir = Path::new("/lib/modules").join(release);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Modules::parse(
            dir.clone(),
            std::fs::read_to_string("/proc/modules").ok().as_deref(),
            read("modules.builtin").as_deref(),
            read("modules.dep").as_deref(),
        )
    }

    /// From the texts of `/proc/modules`, `modules.builtin` and `modules.dep`.
    pub fn parse(
        dir: PathBuf,
        proc_modules: Option<&str>,
        builtin: Option<&str>,
        dep: Option<&str>,
    ) -> Modules {
        Modules {
            dir,
            loaded: proc_modules
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect(),
            builtin: builtin.map(|t| t.lines().map(module_name).collect()),
            dep: dep.map(|t| {
                t.lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(p, _)| (module_name(p), p.to_string()))
                    .collect()
            }),
        }
    }

    pub fn find(&self, name: &str) -> Module {
        let name = name.replace('-', "_");
        if self.loaded.contains(&name) {
            return Module::Loaded;
        }
        if self.builtin.as_ref().is_some_and(|b| b.contains(&name)) {
            return Module::BuiltIn;
        }
        let Some(dep) = &self.dep else {
            return Module::NoModuleDir(self.dir.clone());
        };
        match dep.get(&name) {
            Some(p) if self.dir.join(p).exists() => Module::Loadable(self.dir.join(p)),
            _ => Module::Missing,
        }
    }
}

/// How to get the code behind kernel option `option` (module `module`) on this kernel, for a
/// row's "fix".
pub fn enable_hint(cfg: Option<&Config>, mods: &Modules, option: &str, module: &str) -> String {
    match (opt(cfg, option), mods.find(module)) {
        (_, Module::Loaded) => format!("module {module} is loaded"),
        (_, Module::Loadable(_)) => format!("modprobe {module}"),
        (Opt::BuiltIn, _) | (_, Module::BuiltIn) => format!("built in ({option}=y)"),
        (Opt::NotSet, _) if cfg.is_some_and(|c| c.get("CONFIG_MODULES") == Opt::NotSet) => {
            format!(
                "this kernel is built without {option} and cannot load modules \
                 (CONFIG_MODULES is not set): boot a kernel that has it (Debian's kernels \
                 build it as module {module})"
            )
        }
        (Opt::NotSet, _) => format!(
            "this kernel is built without {option}: boot a kernel that has it (Debian's \
             kernels build it as module {module})"
        ),
        (Opt::Module, Module::NoModuleDir(d)) => format!(
            "{option}=m but there is no {}: install this kernel's modules (Debian: its \
             linux-image package), then modprobe {module}",
            d.display()
        ),
        (Opt::Module, _) => format!(
            "{option}=m but module {module} is not among this kernel's modules: reinstall \
             them, then modprobe {module}"
        ),
        (Opt::Unknown, _) => {
            format!("a kernel with {option} (module {module}; modprobe {module} where it exists)")
        }
    }
}

/// The BPF JIT: `net.core.bpf_jit_enable` (0 off, 1 on, 2 on with debug output) and whether
/// the kernel forces it (`CONFIG_BPF_JIT_ALWAYS_ON`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Jit {
    On { always: bool },
    Off,
    Unknown(String),
}

pub fn jit(cfg: Option<&Config>) -> Jit {
    let always = opt(cfg, "CONFIG_BPF_JIT_ALWAYS_ON") == Opt::BuiltIn;
    match read_jit_sysctl() {
        Ok(v) => parse_jit(&v, always),
        Err(_) if always => Jit::On { always },
        Err(e) => Jit::Unknown(format!(
            "net.core.bpf_jit_enable: {}",
            super::errno_text(&e)
        )),
    }
}

const JIT_SYSCTL: &str = "/proc/sys/net/core/bpf_jit_enable";

/// `net.core.bpf_jit_enable`. It exists only in the initial network namespace's
/// /proc/sys/net; elsewhere [`super::bpf::jited`] answers (root).
fn read_jit_sysctl() -> std::io::Result<String> {
    std::fs::read_to_string(JIT_SYSCTL)
}

pub fn parse_jit(v: &str, always: bool) -> Jit {
    match v.trim() {
        "0" if !always => Jit::Off,
        "0" | "1" | "2" => Jit::On { always },
        o => Jit::Unknown(format!("net.core.bpf_jit_enable = {o:?}")),
    }
}

/// Whether this process may do what the probes need (load BPF programs, create namespaces,
/// bind AF_XDP sockets): `CAP_SYS_ADMIN`, or `CAP_BPF` with `CAP_NET_ADMIN`, in its effective
/// set.
pub fn privileged() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    cap_eff(&status).is_some_and(caps_suffice)
}

/// `CapEff` of a `/proc/PID/status` text.
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

pub fn caps_suffice(eff: u64) -> bool {
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| eff & (1 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        let c = Config::parse(
            "t",
            "# comment\nCONFIG_INET_ESP=m\nCONFIG_XFRM_USER=y\n# CONFIG_NET_PKTGEN is not set\n\
             CONFIG_LOCALVERSION=\"-x\"\n",
        );
        assert_eq!(c.get("CONFIG_INET_ESP"), Opt::Module);
        assert_eq!(c.get("CONFIG_XFRM_USER"), Opt::BuiltIn);
        assert_eq!(c.get("CONFIG_NET_PKTGEN"), Opt::NotSet);
        assert_eq!(c.get("CONFIG_NOT_THERE"), Opt::NotSet);
        assert_eq!(opt(None, "CONFIG_INET_ESP"), Opt::Unknown);
    }

    #[test]
    fn module_lists() {
        let dir = std::env::temp_dir().join(format!("probe-mods-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/net/core")).unwrap();
        std::fs::write(dir.join("kernel/net/core/pktgen.ko.xz"), b"").unwrap();
        let m = Modules::parse(
            dir.clone(),
            Some("veth 40960 0 - Live 0x0\nxfrm_user 57344 1 - Live 0x0\n"),
            Some("kernel/net/xfrm/xfrm_algo.ko\nkernel/crypto/crypto-null.ko\n"),
            Some(
                "kernel/net/core/pktgen.ko.xz:\n\
                 kernel/net/ipv4/esp4.ko.xz: kernel/net/xfrm/xfrm_algo.ko.xz\n",
            ),
        );
        assert_eq!(m.find("veth"), Module::Loaded);
        assert_eq!(m.find("crypto_null"), Module::BuiltIn);
        assert_eq!(m.find("crypto-null"), Module::BuiltIn);
        assert_eq!(
            m.find("pktgen"),
            Module::Loadable(dir.join("kernel/net/core/pktgen.ko.xz"))
        );
        // Listed, but the file is gone.
        assert_eq!(m.find("esp4"), Module::Missing);
        assert_eq!(m.find("nope"), Module::Missing);
        let none = Modules::parse("/lib/modules/x".into(), None, None, None);
        assert_eq!(
            none.find("pktgen"),
            Module::NoModuleDir("/lib/modules/x".into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hints_follow_config_and_modules() {
        let mods = Modules::parse("/lib/modules/x".into(), None, None, None);
        let no_modules = Config::parse("t", "# CONFIG_MODULES is not set\n");
        let h = enable_hint(Some(&no_modules), &mods, "CONFIG_NET_PKTGEN", "pktgen");
        assert!(h.contains("cannot load modules"), "{h}");
        let m = Config::parse("t", "CONFIG_MODULES=y\nCONFIG_NET_PKTGEN=m\n");
        let h = enable_hint(Some(&m), &mods, "CONFIG_NET_PKTGEN", "pktgen");
        assert!(h.contains("install this kernel's modules"), "{h}");
        let h = enable_hint(None, &mods, "CONFIG_NET_PKTGEN", "pktgen");
        assert!(h.contains("modprobe pktgen"), "{h}");
    }

    /// A loaded program comes back JIT-compiled exactly when the switch says so (root: the
    /// program load needs it).
    #[test]
    fn jit_switch_and_loaded_code_agree() {
        let Ok(v) = read_jit_sysctl() else {
            return; // not the initial network namespace: nothing to compare with
        };
        match super::super::bpf::jited() {
            Ok(n) => assert_eq!(n > 0, v.trim() != "0", "jited {n} bytes, sysctl {v:?}"),
            Err(r) => assert!(!privileged(), "root could not load a program: {r}"),
        }
    }

    #[test]
    fn releases_jit_and_caps() {
        assert_eq!(major_minor("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(major_minor("7.3.4+deb13-amd64"), Some((7, 3)));
        assert_eq!(major_minor("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(major_minor("x"), None);
        assert_eq!(parse_jit("1\n", false), Jit::On { always: false });
        assert_eq!(parse_jit("0\n", false), Jit::Off);
        assert_eq!(parse_jit("0\n", true), Jit::On { always: true });
        assert!(matches!(parse_jit("7", false), Jit::Unknown(_)));
        let st = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff(st), Some(0x1ff_ffff_ffff));
        assert!(caps_suffice(0x1ff_ffff_ffff));
        assert!(!caps_suffice(0));
        assert!(caps_suffice((1 << 39) | (1 << 12)));
        assert!(!caps_suffice(1 << 39));
    }
}
