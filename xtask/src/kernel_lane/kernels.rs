//! The lane's kernels, fetched from Debian's archive with a private apt state: nothing is
//! installed on the host and the host's own apt lists, cache and dpkg status stay as they are.
//! See `../shared/notes/kernels.md`.
//!
//! `target/kernel-lane/apt/` holds a sources list (bookworm, trixie, trixie-backports from
//! deb.debian.org, signed by the host's `debian-archive-keyring`, which carries the 12/bookworm
//! and 13/trixie archive keys), the lists, apt's cache and an empty dpkg status. Every apt call
//! gets `-o Dir::Etc::sourcelist=... -o Dir::Etc::sourceparts=/dev/null
//! -o Dir::State::Lists=... -o Dir::State::status=... -o Dir::Cache=...`. The lists are
//! refreshed when older than [`LISTS_MAX_AGE`]; a failed refresh with lists at hand is a
//! warning.
//!
//! Which kernel a series is: `linux-image-amd64` of its suite depends on exactly one
//! `linux-image-<kver>` (= version). Where that package is a stub (trixie-backports' 7.x), it
//! depends on `linux-binary-<kver>` (the vmlinuz), `linux-modules-<kver>` and
//! `linux-base-<kver>` (config, modules.builtin): every dependency named `linux-*-<kver>` is
//! fetched with it. `apt-get download` then `dpkg -x` into `target/kernel-lane/kernels/<kver>/`
//! (with `lib -> usr/lib` where the package puts modules under /usr only, since `depmod -b`
//! and `modprobe -d` look in `<root>/lib/modules`), `depmod -b` (Debian's packages ship no
//! modules.dep: their postinst makes it), and a `lane-kernel` stamp written last: a directory
//! with the stamp is complete and is used without downloading again. Older kernels of the same
//! series are removed once a newer one is in place.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};

use super::super::{cmd, describe, run, workspace_root};

/// A kernel of the matrix: what `--kernel` calls it and the suite whose `linux-image-amd64`
/// it is.
pub(crate) struct Series {
    /// `--kernel`'s name for it.
    pub(crate) name: &'static str,
    pub(crate) suite: &'static str,
    /// The version the suite's kernel must have (`6.1.` for bookworm); none for the newest
    /// backports kernel, which moves.
    pub(crate) version_prefix: Option<&'static str>,
}

pub(crate) const V6_1: Series = Series {
    name: "6.1",
    suite: "bookworm",
    version_prefix: Some("6.1."),
};
pub(crate) const V6_12: Series = Series {
    name: "6.12",
    suite: "trixie",
    version_prefix: Some("6.12."),
};
pub(crate) const LATEST: Series = Series {
    name: "latest",
    suite: "trixie-backports",
    version_prefix: None,
};
/// The matrix, in the order `--kernel all` runs it.
pub(crate) const ALL: [&Series; 3] = [&V6_1, &V6_12, &LATEST];

const MIRROR: &str = "http://deb.debian.org/debian";
/// debian-archive-keyring's keyring (bookworm's 2023.3+deb12u2 has the trixie keys).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// How old the private lists may get before `apt-get update` runs again (it costs about
/// 350 kB and 2 s when nothing changed; the first one fetches about 30 MB).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The file in a kernel's directory that says it is complete.
const STAMP: &str = "lane-kernel";

/// A kernel on disk, ready to boot.
pub(crate) struct Kernel {
    pub(crate) series: &'static Series,
    /// `uname -r`, e.g. `6.12.117+deb13-amd64`.
    pub(crate) kver: String,
    /// The `dpkg -x` tree.
    pub(crate) root: PathBuf,
    pub(crate) vmlinuz: PathBuf,
    /// `<root>/lib/modules/<kver>`.
    pub(crate) modules: PathBuf,
    /// The kernel's build configuration (`CONFIG_...` lines).
    pub(crate) config: PathBuf,
    /// The packages it came from, `name=version`.
    pub(crate) packages: Vec<String>,
    /// What its packages weighed (the .deb files) and what the tree takes on disk.
    pub(crate) deb_bytes: u64,
    pub(crate) tree_bytes: u64,
    /// Whether this run downloaded it (false: from the cache).
    pub(crate) downloaded: bool,
}

impl Kernel {
    /// Its packages, sizes and whether this run downloaded them, for the logs.
    pub(crate) fn source(&self) -> String {
        format!(
            "{} ({:.0} MB of packages, {:.0} MB unpacked, {})",
            self.packages.join(" "),
            self.deb_bytes as f64 / 1e6,
            self.tree_bytes as f64 / 1e6,
            if self.downloaded {
                "downloaded now"
            } else {
                "cached"
            }
        )
    }

    /// `major.minor` of the kernel, e.g. `6.12` (what `VPN_LANE_KERNEL` says in the guest).
    pub(crate) fn major_minor(&self) -> String {
        self.kver
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }
}

pub(crate) fn cache_dir() -> PathBuf {
    workspace_root().join("target/kernel-lane")
}

fn kernels_dir() -> PathBuf {
    cache_dir().join("kernels")
}

/// Fetches (or finds in the cache) each series' kernel; one result per series, in order, so
/// that one kernel's failure does not stop the others.
pub(crate) fn acquire(series: &[&'static Series]) -> Vec<Result<Kernel>> {
    let apt = Apt::new(cache_dir().join("apt"));
    let lists = apt.ensure_lists();
    series
        .iter()
        .map(|s| {
            let r = match &lists {
                Ok(()) => acquire_one(&apt, s),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            r.or_else(|e| {
                // Offline, or the archive moved: a kernel of the series already here still
                // serves, said loudly.
                let cached = newest_cached(s).with_context(|| format!("{e:#}"))?;
                println!(
                    "kernel lane: WARNING: {} ({}): {e:#}; using the cached {} instead",
                    s.name, s.suite, cached.kver
                );
                Ok(cached)
            })
        })
        .collect()
}

fn acquire_one(apt: &Apt, s: &'static Series) -> Result<Kernel> {
    let want = apt.resolve(s)?;
    let dir = kernels_dir().join(&want.kver);
    if dir.join(STAMP).is_file() {
        let k = load(s, &dir)?;
        println!(
            "kernel lane: {} ({}): {} from the cache in {}: {}",
            s.name,
            s.suite,
            k.kver,
            dir.display(),
            k.source()
        );
        prune(s, &k.kver);
        return Ok(k);
    }
    let k = fetch(apt, s, &want, &dir)?;
    prune(s, &k.kver);
    Ok(k)
}

/// The packages of a series' kernel as the lists name them.
struct Wanted {
    kver: String,
    /// (name, version, size of the .deb).
    packages: Vec<(String, String, u64)>,
}

/// Downloads, unpacks and indexes the kernel into `dir` (through a scratch directory beside
/// it, renamed when complete).
fn fetch(apt: &Apt, s: &'static Series, want: &Wanted, dir: &Path) -> Result<Kernel> {
    let total: u64 = want.packages.iter().map(|p| p.2).sum();
    println!(
        "kernel lane: {} ({}): downloading {} ({:.0} MB: {})",
        s.name,
        s.suite,
        want.kver,
        total as f64 / 1e6,
        want.packages
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let t = Instant::now();
    let scratch = kernels_dir().join(format!(".partial-{}", want.kver));
    let debs = scratch.join("debs");
    let root = scratch.join("root");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&root)?;
    let specs: Vec<String> = want
        .packages
        .iter()
        .map(|(n, v, _)| format!("{n}={v}"))
        .collect();
    let mut c = apt.command("apt-get");
    c.arg("download").args(&specs).current_dir(&debs);
    run(&mut c).with_context(|| {
        format!(
            "downloading the {} kernel ({}) from {MIRROR} failed: check network access to \
             deb.debian.org, or run the lane with `--kernel` naming the other kernels",
            s.name,
            specs.join(" ")
        )
    })?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "deb"));
    if files.len() != specs.len() {
        bail!(
            "`apt-get download {}` left {} .deb files in {}, expected {}",
            specs.join(" "),
            files.len(),
            debs.display(),
            specs.len()
        );
    }
    let mut deb_bytes = 0;
    for f in &files {
        deb_bytes += fs::metadata(f)?.len();
        run(cmd("dpkg").arg("-x").arg(f).arg(&root))
            .with_context(|| format!("unpacking {}", f.display()))?;
    }
    // Merged-/usr packages (trixie's) put the modules under usr/lib/modules only.
    if !root.join("lib").exists() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    let modules = root.join("lib/modules").join(&want.kver);
    if !modules.join("modules.dep").is_file() {
        run(cmd("depmod").arg("-b").arg(&root).arg(&want.kver))
            .context("depmod (package kmod) failed on the unpacked kernel")?;
    }
    fs::remove_dir_all(&debs)?;
    fs::rename(&root, dir)
        .or_else(|_| {
            fs::remove_dir_all(dir)?;
            fs::rename(&root, dir)
        })
        .with_context(|| format!("moving the unpacked kernel to {}", dir.display()))?;
    fs::remove_dir_all(&scratch)?;
    let stamp = format!(
        "series {}\nsuite {}\npackages {}\ndeb_bytes {deb_bytes}\n",
        s.name,
        s.suite,
        specs.join(" ")
    );
    fs::write(dir.join(STAMP), stamp)?;
    let mut k = load(s, dir)?;
    k.downloaded = true;
    println!(
        "kernel lane: {} ({}): {} downloaded and unpacked in {:.1} s ({:.0} MB of packages, \
         {:.0} MB unpacked in {})",
        s.name,
        s.suite,
        k.kver,
        t.elapsed().as_secs_f64(),
        k.deb_bytes as f64 / 1e6,
        k.tree_bytes as f64 / 1e6,
        dir.display()
    );
    Ok(k)
}

/// A complete kernel directory (one with the stamp).
fn load(s: &'static Series, dir: &Path) -> Result<Kernel> {
    let stamp = fs::read_to_string(dir.join(STAMP))
        .with_context(|| format!("reading {}", dir.join(STAMP).display()))?;
    let field = |k: &str| {
        stamp
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
            .unwrap_or_default()
            .to_string()
    };
    let kver = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("kernel directory name")?
        .to_string();
    let first = |cands: &[PathBuf], what: &str| {
        cands
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .with_context(|| {
                format!(
                    "{} has no {what} (looked for {}); remove the directory to fetch it again",
                    dir.display(),
                    cands
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    };
    let modules = dir.join("lib/modules").join(&kver);
    let vmlinuz = first(
        &[
            dir.join(format!("boot/vmlinuz-{kver}")),
            modules.join("vmlinuz"),
        ],
        "vmlinuz",
    )?;
    let config = first(
        &[
            dir.join(format!("boot/config-{kver}")),
            modules.join("config"),
        ],
        "kernel config",
    )?;
    first(&[modules.join("modules.dep")], "modules.dep")?;
    Ok(Kernel {
        series: s,
        packages: field("packages")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        deb_bytes: field("deb_bytes").parse().unwrap_or(0),
        tree_bytes: tree_size(dir),
        downloaded: false,
        root: dir.to_path_buf(),
        vmlinuz,
        modules,
        config,
        kver,
    })
}

/// The series a cached kernel directory belongs to, from its stamp.
fn cached_series(dir: &Path) -> Option<String> {
    let stamp = fs::read_to_string(dir.join(STAMP)).ok()?;
    stamp
        .lines()
        .find_map(|l| l.strip_prefix("series "))
        .map(str::to_string)
}

fn cached_of(s: &Series) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(kernels_dir()) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| cached_series(p).as_deref() == Some(s.name))
        .collect()
}

fn newest_cached(s: &'static Series) -> Result<Kernel> {
    let mut dirs = cached_of(s);
    dirs.sort_by_key(|d| version_key(&d.file_name().unwrap_or_default().to_string_lossy()));
    let dir = dirs
        .pop()
        .with_context(|| format!("and no {} kernel is cached", s.name))?;
    load(s, &dir)
}

/// Removes the series' other kernels (and their logs): one per series stays.
fn prune(s: &Series, keep: &str) {
    for d in cached_of(s) {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name != keep {
            println!(
                "kernel lane: {}: removing the older {name} from the cache",
                s.name
            );
            let _ = fs::remove_dir_all(&d);
            let _ = fs::remove_dir_all(super::logs_root().join(&name));
        }
    }
}

/// "6.12.117+deb13-amd64" as [6, 12, 117, 13, 64] for ordering.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Bytes of the files under `dir` (symlinks not followed).
fn tree_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// apt with a private sources list, lists, cache and dpkg status.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: PathBuf) -> Apt {
        Apt { dir }
    }

    fn sources(&self) -> String {
        let suites: Vec<&str> = ALL.iter().map(|s| s.suite).collect();
        suites
            .iter()
            .map(|s| format!("deb [signed-by={KEYRING}] {MIRROR} {s} main\n"))
            .collect()
    }

    /// apt-get / apt-cache with the private state.
    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = cmd(program);
        let opts = [
            ("Dir::Etc::sourcelist", d.join("sources.list")),
            ("Dir::Etc::sourceparts", PathBuf::from("/dev/null")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::State::status", d.join("status")),
            ("Dir::Cache", d.join("cache")),
            // The lists parsed once (64 MB), not on every apt-cache call (1.5 s each; Debian's
            // container images switch the cache off in apt.conf.d; ours is private).
            ("Dir::Cache::pkgcache", d.join("cache/pkgcache.bin")),
            ("Dir::Cache::srcpkgcache", PathBuf::new()),
        ];
        for (k, v) in opts {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        for o in [
            // Our directories belong to root: no privilege drop to _apt (which could not
            // write them; apt would warn and go on as root anyway).
            "APT::Sandbox::User=root",
            // Only the Packages indexes: no translations, no AppStream metadata (the host's
            // apt.conf.d may ask for it), no Contents.
            "Acquire::Languages=none",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
        ] {
            c.args(["-o", o]);
        }
        c
    }

    /// The lists, fetched when missing, stale or for another sources list.
    fn ensure_lists(&self) -> Result<()> {
        let d = &self.dir;
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(d.join(sub))?;
        }
        if !d.join("status").exists() {
            fs::write(d.join("status"), "")?;
        }
        let sources = self.sources();
        let sources_path = d.join("sources.list");
        let updated = d.join("lists/lane-updated");
        let same_sources = fs::read_to_string(&sources_path).is_ok_and(|s| s == sources);
        if !same_sources {
            fs::write(&sources_path, &sources)?;
            let _ = fs::remove_file(&updated);
        }
        let age = fs::metadata(&updated)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(());
        }
        if !Path::new(KEYRING).is_file() {
            bail!(
                "{KEYRING} is missing: the lane verifies Debian's archive with it (package \
                 debian-archive-keyring; `apt-get install debian-archive-keyring`)"
            );
        }
        println!(
            "kernel lane: apt-get update of the lane's own lists ({}; the host's apt state is \
             not touched)",
            d.display()
        );
        let mut c = self.command("apt-get");
        c.args(["update", "--error-on=any"]);
        let r = run(&mut c).with_context(|| {
            format!(
                "`apt-get update` of the kernel lane's sources ({}) failed: check network access \
                 to deb.debian.org; a signature error means {KEYRING} (debian-archive-keyring) \
                 lacks the suite's key",
                sources_path.display()
            )
        });
        match r {
            Ok(()) => {
                fs::write(&updated, "")?;
                Ok(())
            }
            Err(e) if age.is_some() => {
                println!("kernel lane: WARNING: {e:#}; going on with the lists from before");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// One package's fields as `apt-cache show SPEC` prints them (the first record).
    fn show(&self, spec: &str) -> Result<BTreeMap<String, String>> {
        let mut c = self.command("apt-cache");
        c.args(["show", spec]);
        let out = c
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("failed to run `{}`", describe(&c)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.trim().is_empty() {
            bail!(
                "`apt-cache show {spec}` in the lane's lists found nothing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut fields = BTreeMap::new();
        for l in text.lines() {
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(": ")
                && !l.starts_with(' ')
            {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        Ok(fields)
    }

    /// The suite's newest kernel: linux-image-amd64's `linux-image-<kver> (= V)`, and that
    /// package's own `linux-*-<kver>` dependencies.
    fn resolve(&self, s: &Series) -> Result<Wanted> {
        let meta = self.show(&format!("linux-image-amd64/{}", s.suite))?;
        let (image, version) = depends(&meta)
            .into_iter()
            .find(|(n, v)| n.starts_with("linux-image-") && v.is_some())
            .with_context(|| {
                format!(
                    "linux-image-amd64 of {} depends on no linux-image-<kver> (= version): {:?}",
                    s.suite,
                    meta.get("Depends")
                )
            })?;
        let version = version.unwrap_or_default();
        let kver = image["linux-image-".len()..].to_string();
        if let Some(p) = s.version_prefix
            && !kver.starts_with(p)
        {
            bail!(
                "{}'s linux-image-amd64 is {kver}, not the {} the lane's `{}` is about",
                s.suite,
                p.trim_end_matches('.'),
                s.name
            );
        }
        let fields = self.show(&format!("{image}={version}"))?;
        let size =
            |f: &BTreeMap<String, String>| f.get("Size").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut packages = vec![(image.clone(), version, size(&fields))];
        let suffix = format!("-{kver}");
        for (name, v) in depends(&fields) {
            if let Some(v) = v
                && name.starts_with("linux-")
                && name.ends_with(&suffix)
            {
                let f = self.show(&format!("{name}={v}"))?;
                packages.push((name, v, size(&f)));
            }
        }
        Ok(Wanted { kver, packages })
    }
}

/// A record's `Depends`: (name, the version of an `(= V)`), first alternative of each.
fn depends(fields: &BTreeMap<String, String>) -> Vec<(String, Option<String>)> {
    let Some(d) = fields.get("Depends") else {
        return Vec::new();
    };
    d.split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let (name, rest) = first.split_once(' ').unwrap_or((first, ""));
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(|v| v.trim().to_string());
            Some((name.to_string(), version))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_takes_pinned_versions() {
        let mut f = BTreeMap::new();
        f.insert(
            "Depends".to_string(),
            "linux-base-amd64 (= 7.3.4-1~bpo13+1), linux-image-7.3.4+deb13-amd64 \
             (= 7.3.4-1~bpo13+1), dracut | initramfs-tools (>= 0.120+deb8u2), kmod"
                .to_string(),
        );
        let d = depends(&f);
        assert_eq!(
            d[1],
            (
                "linux-image-7.3.4+deb13-amd64".to_string(),
                Some("7.3.4-1~bpo13+1".to_string())
            )
        );
        assert_eq!(d[2], ("dracut".to_string(), None));
        assert_eq!(d[3], ("kmod".to_string(), None));
    }

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("6.12.117+deb13-amd64") > version_key("6.12.99+deb13-amd64"));
        assert!(version_key("6.1.0-50-amd64") > version_key("6.1.0-9-amd64"));
    }
}
