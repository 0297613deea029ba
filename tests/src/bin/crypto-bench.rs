//! `crypto-bench`: per-core AES-GCM seal and open throughput of the Rust AEAD backends the
//! ESP data path could use (RustCrypto `aes-gcm`, `ring`, `aws-lc-rs`), beside OpenSSL
//! (`openssl speed` run as a subprocess, and libcrypto's EVP in process), for AES-128-GCM and
//! AES-256-GCM with a 12-byte nonce, a 16-byte tag and an 8-byte AAD (ESP's SPI and
//! sequence number).
//!
//! Method: each figure is a fixed-duration loop over one buffer on one thread. Seal
//! encrypts the buffer in place with a fresh nonce (counter) and AAD each time; open
//! restores a ciphertext sealed once beforehand (one memcpy, reported separately) and
//! decrypts and verifies it in place. The loop stops on wall-clock time and the rate is
//! bytes over the thread's CPU time, as `openssl speed` divides by its user time, so
//! time the thread spent preempted on a busy machine does not count. Rounds alternate all
//! backends and the median of the rounds is kept.
//!
//! OpenSSL: `openssl speed -mr -aead -evp aes-N-gcm -bytes B -seconds S` is the baseline of
//! every ratio (`-aead` adds a 13-byte AAD to each packet); with `-decrypt` added it gives
//! OpenSSL's open. Since OpenSSL 3.0.16 (openssl/openssl#28063) `openssl speed` sets the key
//! again with the IV for every AEAD packet (AES key schedule and GHASH key tables each time,
//! with or without `-aead`), so it is a pessimistic baseline for small packets.
//! `openssl-evp` is the same libcrypto keyed once per SA as a data plane would use it (per
//! packet: IV, AAD, update, final, tag), through the `openssl` crate.

use std::{
    cell::RefCell,
    collections::HashMap,
    hint::black_box,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aes_gcm::{
    AeadCore, AeadInPlace, Aes128Gcm, Aes256Gcm, KeyInit,
    aead::{
        consts::{U12, U16},
        generic_array::GenericArray,
    },
};
use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use openssl::{cipher::Cipher, cipher_ctx::CipherCtx};
use vpn_tests::results::{self, Record, machine, today};

#[derive(Parser)]
struct Args {
    /// Results file (records are replaced by name, others kept).
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Shorter loops and fewer rounds (figures are then rougher).
    #[arg(long)]
    quick: bool,
}

const SIZES: [usize; 3] = [64, 512, 1400];
const KEY_BITS: [u32; 2] = [128, 256];
const TAG_LEN: usize = 16;
const SPI: u32 = 0x0001_0000;
/// Fixed 4-byte salt of the ESP nonce (RFC 4106: salt || 8-byte IV).
const SALT: [u8; 4] = [0xca, 0xfe, 0xf0, 0x0d];
/// Bytes processed between two clock reads, so reading the clock costs well under 1%.
const BATCH_BYTES: usize = 64 * 1024;

/// One AES-GCM implementation with a fixed key.
trait Gcm {
    /// Encrypts `buf` in place and returns the tag.
    fn seal(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]>;
    /// `buf` is ciphertext || tag; on success the plaintext is in `buf[..len - 16]`.
    fn open(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> bool;
}

struct RustCrypto<A>(A);

impl<A> Gcm for RustCrypto<A>
where
    A: AeadInPlace + AeadCore<NonceSize = U12, TagSize = U16>,
{
    fn seal(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let tag = self
            .0
            .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
            .ok()?;
        Some(tag.into())
    }

    fn open(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> bool {
        let Some(split) = buf.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (ct, tag) = buf.split_at_mut(split);
        self.0
            .decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                aad,
                ct,
                GenericArray::from_slice(tag),
            )
            .is_ok()
    }
}

/// `ring` and `aws-lc-rs` share one API.
macro_rules! ring_like {
    ($name:ident, $krate:ident) => {
        struct $name($krate::aead::LessSafeKey);

        impl $name {
            fn new(key: &[u8]) -> Result<Self> {
                let alg = match key.len() {
                    16 => &$krate::aead::AES_128_GCM,
                    32 => &$krate::aead::AES_256_GCM,
                    n => bail!("no AES-GCM with a {n}-byte key"),
                };
                let key = $krate::aead::UnboundKey::new(alg, key)
                    .map_err(|_| anyhow!("{}: bad key", stringify!($krate)))?;
                Ok(Self($krate::aead::LessSafeKey::new(key)))
            }
        }

        impl Gcm for $name {
            fn seal(
                &self,
                nonce: &[u8; 12],
                aad: &[u8; 8],
                buf: &mut [u8],
            ) -> Option<[u8; TAG_LEN]> {
                let tag = self
                    .0
                    .seal_in_place_separate_tag(
                        $krate::aead::Nonce::assume_unique_for_key(*nonce),
                        $krate::aead::Aad::from(aad),
                        buf,
                    )
                    .ok()?;
                tag.as_ref().try_into().ok()
            }

            fn open(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> bool {
                self.0
                    .open_in_place(
                        $krate::aead::Nonce::assume_unique_for_key(*nonce),
                        $krate::aead::Aad::from(aad),
                        buf,
                    )
                    .is_ok()
            }
        }
    };
}

ring_like!(Ring, ring);
ring_like!(AwsLc, aws_lc_rs);

/// libcrypto through EVP, keyed once; each packet sets only the IV.
struct OpensslEvp {
    enc: RefCell<CipherCtx>,
    dec: RefCell<CipherCtx>,
}

impl OpensslEvp {
    fn new(key: &[u8]) -> Result<Self> {
        let cipher = match key.len() {
            16 => Cipher::aes_128_gcm(),
            32 => Cipher::aes_256_gcm(),
            n => bail!("no AES-GCM with a {n}-byte key"),
        };
        // 12 bytes is GCM's default IV length.
        let mut enc = CipherCtx::new()?;
        enc.encrypt_init(Some(cipher), Some(key), None)?;
        let mut dec = CipherCtx::new()?;
        dec.decrypt_init(Some(cipher), Some(key), None)?;
        Ok(Self {
            enc: RefCell::new(enc),
            dec: RefCell::new(dec),
        })
    }
}

impl Gcm for OpensslEvp {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let mut c = self.enc.borrow_mut();
        c.encrypt_init(None, None, Some(nonce)).ok()?;
        c.cipher_update(aad, None).ok()?;
        let len = buf.len();
        c.cipher_update_inplace(buf, len).ok()?;
        c.cipher_final(&mut []).ok()?;
        let mut tag = [0u8; TAG_LEN];
        c.tag(&mut tag).ok()?;
        Some(tag)
    }

    fn open(&self, nonce: &[u8; 12], aad: &[u8; 8], buf: &mut [u8]) -> bool {
        let Some(split) = buf.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (ct, tag) = buf.split_at_mut(split);
        let mut c = self.dec.borrow_mut();
        c.decrypt_init(None, None, Some(nonce)).is_ok()
            && c.set_tag(tag).is_ok()
            && c.cipher_update(aad, None).is_ok()
            && c.cipher_update_inplace(ct, split).is_ok()
            && c.cipher_final(&mut []).is_ok()
    }
}

/// Backends measured in this process, in table order.
const INPROC_BACKENDS: [&str; 4] = ["aes-gcm", "ring", "aws-lc-rs", "openssl-evp"];
const RUST_BACKENDS: [&str; 3] = ["aes-gcm", "ring", "aws-lc-rs"];

fn backend(name: &str, key: &[u8]) -> Result<Box<dyn Gcm>> {
    Ok(match (name, key.len()) {
        ("aes-gcm", 16) => Box::new(RustCrypto(
            Aes128Gcm::new_from_slice(key).map_err(|_| anyhow!("aes-gcm: bad key"))?,
        )),
        ("aes-gcm", 32) => Box::new(RustCrypto(
            Aes256Gcm::new_from_slice(key).map_err(|_| anyhow!("aes-gcm: bad key"))?,
        )),
        ("ring", _) => Box::new(Ring::new(key)?),
        ("aws-lc-rs", _) => Box::new(AwsLc::new(key)?),
        ("openssl-evp", _) => Box::new(OpensslEvp::new(key)?),
        _ => bail!("no backend {name} for a {}-byte key", key.len()),
    })
}

fn key(bits: u32) -> Vec<u8> {
    (0..bits as usize / 8)
        .map(|i| (i as u8).wrapping_mul(29) ^ 0x5c)
        .collect()
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&SALT);
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn aad(seq: u64) -> [u8; 8] {
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&SPI.to_be_bytes());
    a[4..].copy_from_slice(&(seq as u32).to_be_bytes());
    a
}

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(131) ^ 0xa5)
        .collect()
}

/// Seals with every backend and checks they agree byte for byte, open each other's
/// output, and refuse a modified ciphertext.
fn cross_check(bits: u32) -> Result<()> {
    let k = key(bits);
    let gs = INPROC_BACKENDS
        .iter()
        .map(|b| backend(b, &k))
        .collect::<Result<Vec<_>>>()?;
    for &size in &SIZES {
        let (n, a) = (nonce(7), aad(7));
        let mut reference: Option<Vec<u8>> = None;
        for (name, g) in INPROC_BACKENDS.iter().zip(&gs) {
            let mut buf = payload(size);
            let tag = g
                .seal(&n, &a, &mut buf)
                .with_context(|| format!("{name}: seal failed"))?;
            buf.extend_from_slice(&tag);
            match &reference {
                None => reference = Some(buf),
                Some(r) if *r != buf => {
                    bail!("{name}: AES-{bits}-GCM {size} B output differs from aes-gcm's")
                }
                Some(_) => {}
            }
        }
        let sealed = reference.context("no backend")?;
        for (name, g) in INPROC_BACKENDS.iter().zip(&gs) {
            let mut buf = sealed.clone();
            if !g.open(&n, &a, &mut buf) || buf[..size] != payload(size)[..] {
                bail!("{name}: cannot open AES-{bits}-GCM {size} B");
            }
            let mut bad = sealed.clone();
            bad[size / 2] ^= 1;
            if g.open(&n, &a, &mut bad) {
                bail!("{name}: opened a modified ciphertext");
            }
        }
    }
    Ok(())
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Fixed-duration measurements.
struct Timing {
    /// Wall-clock length of each loop.
    dur: Duration,
    /// Lowest share of a loop's wall-clock time the thread spent on a CPU.
    min_cpu_share: f64,
}

impl Timing {
    /// Runs `once` (processing `size` bytes) until `dur` of wall-clock time has passed;
    /// returns GB/s (1e9 bytes per CPU second).
    fn rate(&mut self, size: usize, mut once: impl FnMut() -> Result<()>) -> Result<f64> {
        let batch = (BATCH_BYTES / size).max(1);
        let wall = Instant::now();
        let cpu0 = thread_cpu();
        let mut n = 0u64;
        while wall.elapsed() < self.dur {
            for _ in 0..batch {
                once()?;
            }
            n += batch as u64;
        }
        let cpu = thread_cpu() - cpu0;
        let share = cpu / wall.elapsed().as_secs_f64();
        self.min_cpu_share = self.min_cpu_share.min(share);
        Ok(n as f64 * size as f64 / cpu / 1e9)
    }

    fn seal(&mut self, g: &dyn Gcm, size: usize) -> Result<f64> {
        let mut buf = payload(size);
        let mut seq = 0u64;
        self.rate(size, || {
            seq += 1;
            let tag = g
                .seal(&nonce(seq), &aad(seq), black_box(&mut buf))
                .context("seal failed")?;
            black_box(tag);
            Ok(())
        })
    }

    fn open(&mut self, g: &dyn Gcm, size: usize) -> Result<f64> {
        let (n, a) = (nonce(1), aad(1));
        let mut sealed = payload(size);
        let tag = g.seal(&n, &a, &mut sealed).context("seal failed")?;
        sealed.extend_from_slice(&tag);
        let mut buf = sealed.clone();
        self.rate(size, || {
            buf.copy_from_slice(&sealed);
            if !g.open(&n, &a, black_box(&mut buf)) {
                bail!("open failed");
            }
            Ok(())
        })
    }

    /// ns per restore of the open buffer (included in the open figures).
    fn copy_ns(&mut self, size: usize) -> Result<f64> {
        let sealed = payload(size + TAG_LEN);
        let mut buf = sealed.clone();
        let gbps = self.rate(size, || {
            black_box(&mut buf).copy_from_slice(black_box(&sealed));
            Ok(())
        })?;
        Ok(size as f64 / gbps)
    }
}

#[derive(Clone, Copy)]
enum Openssl {
    /// `-aead`: per packet key and IV, 13-byte AAD, encrypt, tag.
    Seal,
    /// `-aead -decrypt`: per packet key and IV, tag, AAD, decrypt, verify.
    Open,
}

/// GB/s from `openssl speed -mr` (its `+F:` line holds bytes per second).
fn openssl_speed(bits: u32, size: usize, secs: u32, mode: Openssl) -> Result<f64> {
    let alg = format!("aes-{bits}-gcm");
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-mr", "-aead"]);
    if let Openssl::Open = mode {
        cmd.arg("-decrypt");
    }
    cmd.args(["-evp", &alg, "-bytes", &size.to_string()]);
    cmd.args(["-seconds", &secs.to_string()]);
    let out = cmd.output().context("running openssl speed")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("openssl speed failed ({}): {text}", out.status);
    }
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("+F:") else {
            continue;
        };
        // +F:<index>:<ALGORITHM>:<bytes/s>
        let f: Vec<&str> = rest.split(':').collect();
        if f.len() == 3 && f[1].eq_ignore_ascii_case(&alg) {
            let bps: f64 = f[2]
                .trim()
                .parse()
                .with_context(|| format!("openssl speed: bad figure in {line:?}"))?;
            return Ok(bps / 1e9);
        }
    }
    bail!("openssl speed: no +F line for {alg} in:\n{text}")
}

fn openssl_version() -> Option<String> {
    let out = Command::new("openssl").arg("version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// CPU features the AES-GCM fast paths use: detected at run time, and whether the binary
/// was compiled assuming them (it was not unless built with `-C target-cpu`/`-feature`).
fn cpu_features() -> String {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        let rt = [
            ("aes", std::arch::is_x86_feature_detected!("aes")),
            (
                "pclmulqdq",
                std::arch::is_x86_feature_detected!("pclmulqdq"),
            ),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("vaes", std::arch::is_x86_feature_detected!("vaes")),
            (
                "vpclmulqdq",
                std::arch::is_x86_feature_detected!("vpclmulqdq"),
            ),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ];
        let rt: Vec<String> = rt.iter().map(|(f, d)| format!("{f}={}", yes(*d))).collect();
        format!(
            "CPU features detected at run time: {}\n\
             compiled in (target_feature): aes={}, pclmulqdq={}\n\
             AES-NI and PCLMULQDQ available: {}",
            rt.join(", "),
            yes(cfg!(target_feature = "aes")),
            yes(cfg!(target_feature = "pclmulqdq")),
            yes(std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")),
        )
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        "not x86: AES-NI/PCLMULQDQ do not apply".to_string()
    }
}

fn name(op: &str, bits: u32, size: usize, backend: &str) -> String {
    format!("{op}_aes{bits}gcm_{size}B_{backend}")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (rounds, dur) = if args.quick {
        (3, Duration::from_millis(300))
    } else {
        (5, Duration::from_secs(1))
    };
    // `openssl speed -seconds` takes whole seconds.
    let openssl_secs = dur.as_secs().max(1) as u32;
    let ossl = openssl_version();

    println!("{}", cpu_features());
    println!(
        "aes-gcm 0.10 (aes 0.8, polyval 0.6) picks AES-NI and PCLMULQDQ at run time \
         (cpufeatures), no target-cpu flag needed"
    );
    println!(
        "openssl speed: {}",
        ossl.as_deref()
            .unwrap_or("no openssl command: its rows and the ratios are left out")
    );
    println!("openssl-evp: {}", openssl::version::version());
    println!(
        "{rounds} rounds of {:.1} s per figure (openssl speed {openssl_secs} s), median kept; \
         GB/s = 1e9 bytes per CPU second of one thread",
        dur.as_secs_f64()
    );

    for bits in KEY_BITS {
        cross_check(bits)?;
    }
    eprintln!("cross-check: all backends agree on ciphertext and tag, and reject tampering");

    let mut timing = Timing {
        dur,
        min_cpu_share: 1.0,
    };
    // Warm up (CPU clock, lazy feature detection); not recorded.
    for b in INPROC_BACKENDS {
        let g = backend(b, &key(128))?;
        Timing {
            dur: Duration::from_millis(100),
            min_cpu_share: 1.0,
        }
        .seal(g.as_ref(), 1400)?;
    }

    let mut samples: HashMap<String, Vec<f64>> = HashMap::new();
    let mut copy: HashMap<usize, Vec<f64>> = HashMap::new();
    for r in 0..rounds {
        eprintln!("round {}/{rounds}", r + 1);
        for bits in KEY_BITS {
            let k = key(bits);
            for &size in &SIZES {
                for b in INPROC_BACKENDS {
                    let g = backend(b, &k)?;
                    let s = timing
                        .seal(g.as_ref(), size)
                        .with_context(|| name("seal", bits, size, b))?;
                    let o = timing
                        .open(g.as_ref(), size)
                        .with_context(|| name("open", bits, size, b))?;
                    samples
                        .entry(name("seal", bits, size, b))
                        .or_default()
                        .push(s);
                    samples
                        .entry(name("open", bits, size, b))
                        .or_default()
                        .push(o);
                }
                if bits == KEY_BITS[0] {
                    copy.entry(size).or_default().push(timing.copy_ns(size)?);
                }
                if ossl.is_some() {
                    for (op, mode) in [("seal", Openssl::Seal), ("open", Openssl::Open)] {
                        let v = openssl_speed(bits, size, openssl_secs, mode)?;
                        samples
                            .entry(name(op, bits, size, "openssl"))
                            .or_default()
                            .push(v);
                    }
                }
            }
        }
    }
    let med: HashMap<String, f64> = samples.into_iter().map(|(k, v)| (k, median(v))).collect();
    let get =
        |op: &str, bits: u32, size: usize, b: &str| med.get(&name(op, bits, size, b)).copied();

    let machine = machine();
    let date = today();
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let all_backends: Vec<&str> = INPROC_BACKENDS.iter().copied().chain(["openssl"]).collect();
    let mut new = vec![];
    for bits in KEY_BITS {
        for &size in &SIZES {
            let base_name = name("seal", bits, size, "openssl");
            let base = get("seal", bits, size, "openssl");
            for &b in &all_backends {
                for op in ["seal", "open"] {
                    let n = name(op, bits, size, b);
                    let Some(value) = get(op, bits, size, b) else {
                        continue;
                    };
                    let base = base.filter(|_| n != base_name);
                    new.push(Record {
                        name: n,
                        value: round3(value),
                        unit: "GB/s".into(),
                        baseline_name: base.map(|_| base_name.clone()),
                        baseline_value: base.map(round3),
                        ratio: base.map(|bv| round3(value / bv)),
                        machine: machine.clone(),
                        date: date.clone(),
                    });
                }
            }
        }
    }

    println!();
    println!(
        "{:<12} {:>4} {:>6} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "backend",
        "key",
        "size",
        "seal GB/s",
        "open GB/s",
        "seal/speed",
        "open/speed",
        "seal/evp",
        "open/evp"
    );
    let fmt = |x: Option<f64>| x.map(|x| format!("{x:.3}")).unwrap_or("-".into());
    let ratio = |v: Option<f64>, b: Option<f64>| v.zip(b).map(|(v, b)| v / b);
    let fastest = |op: &str, bits: u32, size: usize, among: &[&'static str]| {
        among
            .iter()
            .filter_map(|&b| get(op, bits, size, b).map(|v| (b, v)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(b, _)| b)
            .unwrap_or("-")
    };
    for bits in KEY_BITS {
        for &size in &SIZES {
            let speed = get("seal", bits, size, "openssl");
            let evp = get("seal", bits, size, "openssl-evp");
            for &b in &all_backends {
                let seal = get("seal", bits, size, b);
                let open = get("open", bits, size, b);
                if seal.is_none() && open.is_none() {
                    continue;
                }
                println!(
                    "{:<12} {:>4} {:>5}B {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
                    if b == "openssl" { "openssl-spd" } else { b },
                    bits,
                    size,
                    fmt(seal),
                    fmt(open),
                    fmt(ratio(seal, speed)),
                    fmt(ratio(open, speed)),
                    fmt(ratio(seal, evp)),
                    fmt(ratio(open, evp)),
                );
            }
            println!(
                "  fastest Rust: seal {}, open {}; fastest overall: seal {}, open {}",
                fastest("seal", bits, size, &RUST_BACKENDS),
                fastest("open", bits, size, &RUST_BACKENDS),
                fastest("seal", bits, size, &all_backends),
                fastest("open", bits, size, &all_backends),
            );
        }
    }
    println!();
    for &size in &SIZES {
        if let Some(v) = copy.remove(&size) {
            println!(
                "open includes restoring the {} B buffer: {:.1} ns per packet",
                size + TAG_LEN,
                median(v)
            );
        }
    }
    println!(
        "/speed: against `openssl speed -aead` seal (the records' baseline), which re-keys \
         every packet; /evp: against OpenSSL EVP seal keyed once (openssl-evp)"
    );
    println!(
        "lowest CPU share of the measuring thread in a loop: {:.0}%",
        timing.min_cpu_share * 100.0
    );

    results::merge_into(&args.out, &new)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
