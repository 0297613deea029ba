//! Kernel ESP and its AEADs, asked the definitive way: add ESP SAs and see what the kernel
//! answers. The SAs go into a throw-away network namespace (a thread that `unshare`s its
//! network namespace: namespaces are per thread) that vanishes with the thread, so the real
//! namespace's SAD is never touched.
//!
//! The kernel checks an SA in this order (net/xfrm/xfrm_user.c, xfrm_state.c): the algorithm
//! must be one the crypto API has (else `ENOSYS`), then the ESP type must exist for the
//! family (`esp4` / `esp6`, else `EPROTONOSUPPORT`), then ESP sets its crypto up (`ENOENT` or
//! `EINVAL` when a piece such as the RNG is missing). An SA with the null cipher tells ESP's
//! presence apart from the AEADs'.

use std::net::IpAddr;

use anyhow::Result;
use netlink_packet_xfrm::{
    Alg, XFRM_ALG_NAME_LEN, XfrmAttrs, XfrmMessage,
    constants::{IPPROTO_ESP, XFRM_MODE_TUNNEL},
    state::ModifyMessage,
};

use super::{Env, Feature, Verdict, ids, kernel, spec_of};
use crate::xfrm::{StateSpec, Xfrm, netlink::KernelError};

/// An AEAD the product may ask the kernel's ESP for.
#[derive(Copy, Clone, Debug)]
pub struct Aead {
    /// Its row id.
    pub id: &'static str,
    /// The IKE/strongSwan name (what vpnctl and the configuration say).
    pub cipher: &'static str,
    /// The kernel crypto API name xfrm takes.
    pub kernel: &'static str,
    /// Key and salt, bytes.
    pub keymat: usize,
    /// The kernel option and module that bring the algorithm.
    pub config: &'static str,
    pub module: &'static str,
    /// Whether the kernel backend installs SAs with it today.
    pub backend: bool,
}

pub const AEADS: [Aead; 3] = [
    Aead {
        id: ids::XFRM_AEAD_AES128GCM16,
        cipher: "aes128gcm16",
        kernel: "rfc4106(gcm(aes))",
        keymat: 20,
        config: "CONFIG_CRYPTO_GCM",
        module: "gcm",
        backend: true,
    },
    Aead {
        id: ids::XFRM_AEAD_AES256GCM16,
        cipher: "aes256gcm16",
        kernel: "rfc4106(gcm(aes))",
        keymat: 36,
        config: "CONFIG_CRYPTO_GCM",
        module: "gcm",
        backend: true,
    },
    Aead {
        id: ids::XFRM_AEAD_CHACHA20POLY1305,
        cipher: "chacha20poly1305",
        kernel: "rfc7539esp(chacha20,poly1305)",
        keymat: 36,
        config: "CONFIG_CRYPTO_CHACHA20POLY1305",
        module: "chacha20poly1305",
        backend: false,
    },
];

/// What the kernel answered to one SA: Ok, or the errno (None: not a kernel errno) and the
/// message.
pub type Answer = Result<(), (Option<i32>, String)>;

fn answer(r: Result<()>) -> Answer {
    r.map_err(|e| {
        let errno = e
            .chain()
            .find_map(|c| c.downcast_ref::<KernelError>())
            .and_then(KernelError::errno);
        (errno, super::error_text(&e))
    })
}

/// Everything asked in the throw-away namespace.
#[derive(Clone, Debug)]
pub struct Answers {
    /// Opening the xfrm netlink socket there.
    pub netlink: Answer,
    /// An ESP SA with the null cipher, IPv4 then IPv6 outer.
    pub esp_null: [Answer; 2],
    /// One IPv4 SA per entry of [`AEADS`].
    pub aeads: Vec<Answer>,
    /// An IPv6 SA with the first AEAD (aes128gcm16).
    pub aead_v6: Answer,
}

const V4: (&str, &str) = ("192.0.2.1", "192.0.2.2");
const V6: (&str, &str) = ("2001:db8::1", "2001:db8::2");

fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    let (a, b) = if v6 { V6 } else { V4 };
    (
        a.parse().expect("literal address"),
        b.parse().expect("literal address"),
    )
}

fn add_aead(x: &mut Xfrm, aead: &Aead, v6: bool, spi: u32) -> Result<()> {
    let (src, dst) = addrs(v6);
    let keymat = vec![0x5a; aead.keymat];
    x.add_state_aead(
        &StateSpec {
            src,
            dst,
            spi,
            reqid: 0,
            keymat: &keymat,
            icv_bits: 128,
            esn: false,
            replay_window: 0,
            encap: None,
            offload: None,
            if_id: None,
            inbound: false,
        },
        aead.kernel,
    )
}

/// An ESP SA with `ecb(cipher_null)` and no authentication (RFC 2410): every kernel with ESP
/// has the null cipher (CONFIG_CRYPTO_NULL, selected by ESP).
fn add_null(x: &mut Xfrm, v6: bool, spi: u32) -> Result<()> {
    let (src, dst) = addrs(v6);
    let mut m = ModifyMessage::default();
    m.user_sa_info.source(&src);
    m.user_sa_info.destination(&dst);
    m.user_sa_info.id.spi = spi;
    m.user_sa_info.id.proto = IPPROTO_ESP;
    m.user_sa_info.mode = XFRM_MODE_TUNNEL;
    let lft = &mut m.user_sa_info.lifetime_cfg;
    lft.soft_byte_limit = u64::MAX;
    lft.hard_byte_limit = u64::MAX;
    lft.soft_packet_limit = u64::MAX;
    lft.hard_packet_limit = u64::MAX;
    let mut name = [0u8; XFRM_ALG_NAME_LEN];
    let alg = b"ecb(cipher_null)";
    name[..alg.len()].copy_from_slice(alg);
    m.nlas.push(XfrmAttrs::EncryptionAlg(Alg {
        alg_name: name,
        alg_key_len: 0,
        alg_key: Vec::new(),
    }));
    x.request(
        XfrmMessage::AddSa(m),
        false,
        &format!("adding a null-cipher ESP SA spi {spi:#010x} to {dst}"),
    )
    .map(drop)
}

/// Asks the kernel in a throw-away network namespace. Err: the namespace could not be made
/// (the errno and why; EPERM without root).
pub fn ask() -> Result<Answers, (Option<i32>, String)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare of this thread's network namespace only; the thread ends here
            // and the namespace with it.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err((
                    e.raw_os_error(),
                    format!(
                        "creating a throw-away network namespace: {}",
                        super::errno_text(&e)
                    ),
                ));
            }
            let mut x = match Xfrm::open() {
                Ok(x) => x,
                Err(e) => {
                    let a = answer(Err(e));
                    return Ok(Answers {
                        netlink: a.clone(),
                        esp_null: [a.clone(), a.clone()],
                        aeads: vec![a.clone(); AEADS.len()],
                        aead_v6: a,
                    });
                }
            };
            let esp_null = [
                answer(add_null(&mut x, false, 0x100)),
                answer(add_null(&mut x, true, 0x101)),
            ];
            let aeads = AEADS
                .iter()
                .enumerate()
                .map(|(i, a)| answer(add_aead(&mut x, a, false, 0x200 + i as u32)))
                .collect();
            let aead_v6 = answer(add_aead(&mut x, &AEADS[0], true, 0x300));
            Ok(Answers {
                netlink: Ok(()),
                esp_null,
                aeads,
                aead_v6,
            })
        })
        .join()
        .unwrap_or_else(|_| Err((None, "the xfrm probe thread panicked".into())))
    })
}

fn errno_of(a: &Answer) -> Option<i32> {
    a.as_ref().err().and_then(|(e, _)| *e)
}

/// The rows from the answers (or from why there are none).
pub fn rows_of(env: &Env<'_>, answers: Result<Answers, (Option<i32>, String)>) -> Vec<Feature> {
    let all = [
        ids::XFRM_NETLINK,
        ids::XFRM_ESP_IPV4,
        ids::XFRM_ESP_IPV6,
        ids::XFRM_AEAD_AES128GCM16,
        ids::XFRM_AEAD_AES256GCM16,
        ids::XFRM_AEAD_CHACHA20POLY1305,
    ];
    let a = match answers {
        Ok(a) => a,
        Err((errno, why)) => {
            let denied = matches!(errno, Some(libc::EPERM | libc::EACCES)) && !env.privileged;
            return all
                .iter()
                .map(|id| {
                    let s = spec_of(id);
                    if denied {
                        s.needs_root(&why)
                    } else {
                        s.unknown(why.clone(), None)
                    }
                })
                .collect();
        }
    };
    let mut rows = vec![netlink_row(env, &a.netlink)];
    if a.netlink.is_err() {
        for id in &all[1..] {
            rows.push(spec_of(id).row(
                Verdict::Unavailable,
                "no xfrm netlink interface to ask".into(),
                rows[0].fix.clone(),
            ));
        }
        return rows;
    }
    let v4_aeads: Vec<&Answer> = a.aeads.iter().collect();
    rows.push(esp_row(env, false, &a.esp_null[0], &v4_aeads));
    rows.push(esp_row(env, true, &a.esp_null[1], &[&a.aead_v6]));
    let esp4 = rows[1].verdict;
    for (aead, ans) in AEADS.iter().zip(&a.aeads) {
        rows.push(aead_row(env, aead, ans, esp4));
    }
    rows
}

/// [`ask`], as rows.
pub fn rows(env: &Env<'_>) -> Vec<Feature> {
    rows_of(env, ask())
}

fn netlink_row(env: &Env<'_>, a: &Answer) -> Feature {
    let s = spec_of(ids::XFRM_NETLINK);
    match a {
        Ok(()) => s.available("NETLINK_XFRM answers (in a throw-away network namespace)"),
        Err((_, why)) => s.unavailable(
            why.clone(),
            kernel::enable_hint(env.cfg, env.mods, "CONFIG_XFRM_USER", "xfrm_user"),
        ),
    }
}

/// ESP for one outer family, from the null-cipher SA and the AEAD SAs of that family.
pub fn esp_row(env: &Env<'_>, v6: bool, null: &Answer, aeads: &[&Answer]) -> Feature {
    let (id, option, module) = if v6 {
        (ids::XFRM_ESP_IPV6, "CONFIG_INET6_ESP", "esp6")
    } else {
        (ids::XFRM_ESP_IPV4, "CONFIG_INET_ESP", "esp4")
    };
    let s = spec_of(id);
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let answers: Vec<&Answer> = std::iter::once(null).chain(aeads.iter().copied()).collect();
    if answers.iter().any(|a| a.is_ok()) {
        let with = if null.is_ok() {
            "the null cipher"
        } else {
            "an AEAD"
        };
        return s.available(format!(
            "the kernel took an {fam} ESP SA with {with} (throw-away namespace)"
        ));
    }
    if answers
        .iter()
        .any(|a| errno_of(a) == Some(libc::EPROTONOSUPPORT))
    {
        return s.unavailable(
            format!(
                "the kernel has no ESP for {fam}: adding an SA gave Protocol not supported \
                 (EPROTONOSUPPORT)"
            ),
            kernel::enable_hint(env.cfg, env.mods, option, module),
        );
    }
    if answers
        .iter()
        .any(|a| matches!(errno_of(a), Some(libc::EPERM | libc::EACCES)))
        && !env.privileged
    {
        return s.needs_root("adding an SA was refused");
    }
    let why = match null {
        Err((_, w)) => w.clone(),
        Ok(()) => String::new(),
    };
    s.unknown(
        format!("no SA could be added to tell: {why}"),
        Some(kernel::enable_hint(env.cfg, env.mods, option, module)),
    )
}

/// One AEAD, from its IPv4 SA (`esp4`: the ESP row's verdict).
pub fn aead_row(env: &Env<'_>, aead: &Aead, a: &Answer, esp4: Verdict) -> Feature {
    let s = spec_of(aead.id);
    let bits = (aead.keymat - 4) * 8;
    match a {
        Ok(()) => s.available(format!(
            "the kernel took an ESP SA with {}, {bits}-bit key (throw-away namespace)",
            aead.kernel
        )),
        Err((Some(libc::ENOSYS), _)) => s.unavailable(
            format!(
                "the kernel crypto API has no {} (adding the SA gave ENOSYS)",
                aead.kernel
            ),
            kernel::enable_hint(env.cfg, env.mods, aead.config, aead.module),
        ),
        Err((Some(libc::EPROTONOSUPPORT), _)) => s.unavailable(
            format!(
                "{} may be there, but the kernel has no ESP (EPROTONOSUPPORT)",
                aead.kernel
            ),
            kernel::enable_hint(env.cfg, env.mods, "CONFIG_INET_ESP", "esp4"),
        ),
        Err((Some(libc::EPERM | libc::EACCES), w)) if !env.privileged => s.needs_root(w),
        Err((Some(libc::ENOENT | libc::EINVAL), w)) if esp4 == Verdict::Available => s.unavailable(
            format!("ESP could not set {} up: {w}", aead.kernel),
            format!(
                "the AES-GCM pieces ({}) and a default RNG (drbg, jitterentropy_rng): load \
                 them, or use a kernel that has them",
                aead.module
            ),
        ),
        Err((_, w)) => s.unavailable(
            w.clone(),
            kernel::enable_hint(env.cfg, env.mods, aead.config, aead.module),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(mods: &'a kernel::Modules) -> Env<'a> {
        Env {
            cfg: None,
            mods,
            privileged: true,
            release: "6.18.44",
        }
    }

    fn refused(errno: i32) -> Answer {
        Err((Some(errno), format!("adding: errno {errno}")))
    }

    #[test]
    fn esp_missing_vs_aead_missing() {
        let mods = kernel::Modules::default();
        let e = env(&mods);
        // This machine: no GCM (ENOSYS comes first), no ESP (the null cipher says so).
        let gcm = refused(libc::ENOSYS);
        let r = esp_row(&e, false, &refused(libc::EPROTONOSUPPORT), &[&gcm]);
        assert_eq!(r.verdict, Verdict::Unavailable);
        assert!(r.detail.contains("EPROTONOSUPPORT"), "{}", r.detail);
        assert!(r.fix.as_deref().unwrap().contains("CONFIG_INET_ESP"));
        let a = aead_row(&e, &AEADS[0], &gcm, r.verdict);
        assert_eq!(a.verdict, Verdict::Unavailable);
        assert!(a.detail.contains("no rfc4106(gcm(aes))"), "{}", a.detail);
        assert!(a.fix.as_deref().unwrap().contains("CONFIG_CRYPTO_GCM"));
        assert!(a.cost.is_some());
        // Debian: ESP and GCM as modules the kernel loads on demand.
        let ok: Answer = Ok(());
        let r = esp_row(&e, false, &ok, &[&ok]);
        assert_eq!(r.verdict, Verdict::Available);
        assert_eq!(r.cost, None);
        assert_eq!(r.fix, None);
        let a = aead_row(&e, &AEADS[1], &ok, r.verdict);
        assert_eq!(a.verdict, Verdict::Available);
        assert!(a.detail.contains("256-bit"), "{}", a.detail);
        // No null cipher, but an AEAD SA went in: ESP is there.
        let r = esp_row(&e, true, &refused(libc::ENOSYS), &[&ok]);
        assert_eq!(r.verdict, Verdict::Available);
        // Nothing could be added and nothing said EPROTONOSUPPORT: cannot tell.
        let r = esp_row(&e, true, &refused(libc::ENOSYS), &[&refused(libc::ENOSYS)]);
        assert_eq!(r.verdict, Verdict::Unknown);
    }

    #[test]
    fn no_namespace_without_root() {
        let mods = kernel::Modules::default();
        let mut e = env(&mods);
        e.privileged = false;
        let rows = rows_of(&e, Err((Some(libc::EPERM), "unshare: EPERM".into())));
        assert_eq!(rows.len(), 6);
        for r in &rows {
            assert_eq!(r.verdict, Verdict::Unknown);
            assert!(r.detail.starts_with("unknown (needs root)"), "{}", r.detail);
        }
    }

    #[test]
    fn no_xfrm_netlink() {
        let mods = kernel::Modules::default();
        let e = env(&mods);
        let nl: Answer = Err((None, "this kernel has no xfrm netlink interface".into()));
        let rows = rows_of(
            &e,
            Ok(Answers {
                netlink: nl.clone(),
                esp_null: [nl.clone(), nl.clone()],
                aeads: vec![nl.clone(); 3],
                aead_v6: nl,
            }),
        );
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.verdict == Verdict::Unavailable));
        assert!(rows[0].fix.as_deref().unwrap().contains("CONFIG_XFRM_USER"));
    }

    #[test]
    fn aead_table_matches_the_backend() {
        // The backend's ciphers are the RFC 4106 ones with 16- and 32-byte keys.
        use crate::esp::Cipher;
        assert_eq!(AEADS[0].keymat, Cipher::Aes128Gcm16.keymat_len());
        assert_eq!(AEADS[1].keymat, Cipher::Aes256Gcm16.keymat_len());
        assert_eq!(AEADS[2].keymat, 36);
        assert!(AEADS.iter().all(|a| a.kernel.len() < 64));
    }
}
