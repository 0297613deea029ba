//! IKEv2 cryptography: the RFC 7296 key schedule (SKEYSEED, prf+, SK_* split, Child SA
//! keying material), PSK authentication (RFC 7296 2.15), Diffie-Hellman (MODP-2048, ECP-256,
//! ECP-384, Curve25519) and SK payload protection (RFC 7296 3.14, RFC 5282 for AES-GCM).
//!
//! Secrets live in [`Zeroizing`] buffers and never appear in `Debug` output; tag and AUTH
//! comparisons are constant time ([`ct_eq`]).

mod dh;
mod sk;
#[cfg(test)]
mod tests;

use core::fmt;

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

pub use dh::DhSecret;
pub use sk::SkCipher;

/// Errors of the IKE crypto layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A peer's Diffie-Hellman public value is malformed: wrong length, out of range (MODP),
    /// not on the curve (ECP), or giving an all-zero X25519 result.
    #[error("invalid Diffie-Hellman public value")]
    InvalidPublicValue,
    /// The integrity check value (or AEAD tag) of an SK payload does not verify.
    #[error("integrity check failed")]
    BadIcv,
    /// The decrypted SK payload's pad length is larger than the plaintext.
    #[error("bad padding")]
    BadPadding,
    /// A key or an SK payload body has an impossible length.
    #[error("bad length")]
    BadLength,
    /// The algorithm or combination of algorithms is not supported.
    #[error("unsupported algorithm")]
    Unsupported,
}

/// Pseudo-random functions (IKEv2 transform type 2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256 (id 5, RFC 4868).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (id 6, RFC 4868).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (id 7, RFC 4868).
    HmacSha512,
}

impl Prf {
    /// The PRF for an IANA transform id.
    pub fn from_id(id: u16) -> Option<Prf> {
        match id {
            5 => Some(Prf::HmacSha256),
            6 => Some(Prf::HmacSha384),
            7 => Some(Prf::HmacSha512),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        match self {
            Prf::HmacSha256 => 5,
            Prf::HmacSha384 => 6,
            Prf::HmacSha512 => 7,
        }
    }

    /// Output length in bytes (also the preferred key length, RFC 4868 2.2).
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Prf::HmacSha256 => hmac::HMAC_SHA256,
            Prf::HmacSha384 => hmac::HMAC_SHA384,
            Prf::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// HMAC with `key` over the concatenation of `data`.
    pub fn compute(self, key: &[u8], data: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        hmac_concat(self.hmac_alg(), key, data)
    }

    /// prf+ (RFC 7296 2.13): `T1 | T2 | ...` truncated to `len` bytes, where
    /// `T1 = prf(K, S | 0x01)` and `Tn = prf(K, Tn-1 | S | n)`.
    ///
    /// # Panics
    /// If `len` exceeds 255 PRF outputs, the most prf+ can produce (a programming error:
    /// IKE never asks for that much).
    pub fn plus(self, key: &[u8], seed: &[&[u8]], len: usize) -> Zeroizing<Vec<u8>> {
        prf_plus(self.hmac_alg(), key, seed, len)
    }
}

/// HMAC over the concatenation of `data`.
fn hmac_concat(alg: hmac::Algorithm, key: &[u8], data: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let key = hmac::Key::new(alg, key);
    let mut ctx = hmac::Context::with_key(&key);
    for d in data {
        ctx.update(d);
    }
    Zeroizing::new(ctx.sign().as_ref().to_vec())
}

/// prf+ over an HMAC algorithm (see [`Prf::plus`]).
fn prf_plus(alg: hmac::Algorithm, key: &[u8], seed: &[&[u8]], len: usize) -> Zeroizing<Vec<u8>> {
    let out_len = alg.digest_algorithm().output_len();
    assert!(
        len <= 255 * out_len,
        "prf+ output of {len} bytes is too long"
    );
    let key = hmac::Key::new(alg, key);
    let mut out = Zeroizing::new(Vec::with_capacity(len + out_len));
    let mut counter: u8 = 1;
    while out.len() < len {
        let mut ctx = hmac::Context::with_key(&key);
        if counter > 1 {
            ctx.update(&out[out.len() - out_len..]);
        }
        for s in seed {
            ctx.update(s);
        }
        ctx.update(&[counter]);
        out.extend_from_slice(ctx.sign().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// Diffie-Hellman groups (IKEv2 transform type 4).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 2048-bit MODP group (id 14, RFC 3526 section 3).
    Modp2048,
    /// 256-bit random ECP group, NIST P-256 (id 19, RFC 5903).
    Ecp256,
    /// 384-bit random ECP group, NIST P-384 (id 20, RFC 5903).
    Ecp384,
    /// Curve25519 (id 31, RFC 8031).
    Curve25519,
}

impl DhGroup {
    /// The group for an IANA transform id.
    pub fn from_id(id: u16) -> Option<DhGroup> {
        match id {
            14 => Some(DhGroup::Modp2048),
            19 => Some(DhGroup::Ecp256),
            20 => Some(DhGroup::Ecp384),
            31 => Some(DhGroup::Curve25519),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        match self {
            DhGroup::Modp2048 => 14,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Curve25519 => 31,
        }
    }

    /// Length of the KE payload's key exchange data.
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => 256,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^ir.
    pub fn shared_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => 256,
            DhGroup::Ecp256 => 32,
            DhGroup::Ecp384 => 48,
            DhGroup::Curve25519 => 32,
        }
    }
}

/// Encryption algorithms (IKEv2 transform type 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Encr {
    /// ENCR_AES_GCM_16 (id 20, RFC 5282), 128- or 256-bit keys, 16-byte ICV.
    AesGcm16 {
        /// Key length in bits.
        key_bits: u16,
    },
    /// ENCR_AES_CBC (id 12, RFC 3602), 128-, 192- or 256-bit keys.
    AesCbc {
        /// Key length in bits.
        key_bits: u16,
    },
}

impl Encr {
    /// The algorithm for a transform id and its Key Length attribute (mandatory for AES).
    pub fn from_transform(id: u16, key_bits: Option<u16>) -> Option<Encr> {
        match (id, key_bits?) {
            (20, bits @ (128 | 256)) => Some(Encr::AesGcm16 { key_bits: bits }),
            (12, bits @ (128 | 192 | 256)) => Some(Encr::AesCbc { key_bits: bits }),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        match self {
            Encr::AesGcm16 { .. } => 20,
            Encr::AesCbc { .. } => 12,
        }
    }

    /// Key length in bits (the Key Length attribute).
    pub fn key_bits(self) -> u16 {
        match self {
            Encr::AesGcm16 { key_bits } | Encr::AesCbc { key_bits } => key_bits,
        }
    }

    /// Whether this is an AEAD (combined mode) cipher: then the integrity algorithm is none.
    pub fn is_aead(self) -> bool {
        matches!(self, Encr::AesGcm16 { .. })
    }

    /// Bytes of keying material: the key, plus 4 salt bytes for GCM (RFC 5282 7.1).
    pub fn keymat_len(self) -> usize {
        let key = usize::from(self.key_bits()) / 8;
        match self {
            Encr::AesGcm16 { .. } => key + 4,
            Encr::AesCbc { .. } => key,
        }
    }
}

/// Integrity algorithms (IKEv2 transform type 3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Integ {
    /// NONE (id 0), with AEAD ciphers.
    None,
    /// AUTH_HMAC_SHA2_256_128 (id 12, RFC 4868).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (id 13, RFC 4868).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (id 14, RFC 4868).
    HmacSha512_256,
}

impl Integ {
    /// The algorithm for an IANA transform id.
    pub fn from_id(id: u16) -> Option<Integ> {
        match id {
            0 => Some(Integ::None),
            12 => Some(Integ::HmacSha256_128),
            13 => Some(Integ::HmacSha384_192),
            14 => Some(Integ::HmacSha512_256),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        match self {
            Integ::None => 0,
            Integ::HmacSha256_128 => 12,
            Integ::HmacSha384_192 => 13,
            Integ::HmacSha512_256 => 14,
        }
    }

    /// Key length in bytes (RFC 4868 2.1.1: the hash output length).
    pub fn key_len(self) -> usize {
        match self {
            Integ::None => 0,
            Integ::HmacSha256_128 => 32,
            Integ::HmacSha384_192 => 48,
            Integ::HmacSha512_256 => 64,
        }
    }

    /// Length of the truncated ICV in bytes.
    pub fn icv_len(self) -> usize {
        match self {
            Integ::None => 0,
            Integ::HmacSha256_128 => 16,
            Integ::HmacSha384_192 => 24,
            Integ::HmacSha512_256 => 32,
        }
    }

    fn hmac_alg(self) -> Option<hmac::Algorithm> {
        match self {
            Integ::None => None,
            Integ::HmacSha256_128 => Some(hmac::HMAC_SHA256),
            Integ::HmacSha384_192 => Some(hmac::HMAC_SHA384),
            Integ::HmacSha512_256 => Some(hmac::HMAC_SHA512),
        }
    }
}

/// The negotiated IKE SA transforms.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Encryption algorithm.
    pub encr: Encr,
    /// Integrity algorithm ([`Integ::None`] with an AEAD `encr`).
    pub integ: Integ,
    /// Pseudo-random function.
    pub prf: Prf,
    /// Diffie-Hellman group.
    pub dh: DhGroup,
}

/// The seven IKE SA keys of RFC 7296 2.14.
pub struct IkeSaKeys {
    /// Key for deriving Child SA keys (and SKEYSEED on rekey).
    pub sk_d: Zeroizing<Vec<u8>>,
    /// Initiator's integrity key (empty for AEAD).
    pub sk_ai: Zeroizing<Vec<u8>>,
    /// Responder's integrity key (empty for AEAD).
    pub sk_ar: Zeroizing<Vec<u8>>,
    /// Initiator's encryption keying material (key | salt for GCM).
    pub sk_ei: Zeroizing<Vec<u8>>,
    /// Responder's encryption keying material (key | salt for GCM).
    pub sk_er: Zeroizing<Vec<u8>>,
    /// Initiator's key for the AUTH payload's prf(SK_pi, IDi').
    pub sk_pi: Zeroizing<Vec<u8>>,
    /// Responder's key for the AUTH payload's prf(SK_pr, IDr').
    pub sk_pr: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |k: &Zeroizing<Vec<u8>>| Redacted(k.len());
        f.debug_struct("IkeSaKeys")
            .field("sk_d", &r(&self.sk_d))
            .field("sk_ai", &r(&self.sk_ai))
            .field("sk_ar", &r(&self.sk_ar))
            .field("sk_ei", &r(&self.sk_ei))
            .field("sk_er", &r(&self.sk_er))
            .field("sk_pi", &r(&self.sk_pi))
            .field("sk_pr", &r(&self.sk_pr))
            .finish()
    }
}

/// Debug stand-in for a secret: shows only its length.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 2.14).
///
/// For the HMAC PRFs the key is the whole nonce concatenation (HMAC hashes keys longer than
/// its block, as RFC 7296 2.14 expects).
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(Vec::with_capacity(ni.len() + nr.len()));
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    prf.compute(&key, &[g_ir])
}

/// SKEYSEED for an IKE SA rekey: prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 2.18).
pub fn skeyseed_rekey(
    prf: Prf,
    old_sk_d: &[u8],
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> Zeroizing<Vec<u8>> {
    prf.compute(old_sk_d, &[g_ir, ni, nr])
}

/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
/// (RFC 7296 2.14). Integrity keys are empty for an AEAD cipher.
pub fn derive_ike_keys(
    suite: &IkeSuite,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeSaKeys {
    let prf_len = suite.prf.output_len();
    let integ_len = if suite.encr.is_aead() {
        0
    } else {
        suite.integ.key_len()
    };
    let encr_len = suite.encr.keymat_len();
    let total = 3 * prf_len + 2 * integ_len + 2 * encr_len;
    let spi_i = spi_i.to_be_bytes();
    let spi_r = spi_r.to_be_bytes();
    let keymat = suite.prf.plus(skeyseed, &[ni, nr, &spi_i, &spi_r], total);
    let mut rest: &[u8] = &keymat;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Zeroizing::new(head.to_vec())
    };
    IkeSaKeys {
        sk_d: take(prf_len),
        sk_ai: take(integ_len),
        sk_ar: take(integ_len),
        sk_ei: take(encr_len),
        sk_er: take(encr_len),
        sk_pi: take(prf_len),
        sk_pr: take(prf_len),
    }
}

/// Child SA keying material: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 2.17).
pub fn child_keymat(
    prf: Prf,
    sk_d: &[u8],
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    match g_ir {
        Some(g) => prf.plus(sk_d, &[g, ni, nr], len),
        None => prf.plus(sk_d, &[ni, nr], len),
    }
}

/// The octets an AUTH payload signs (RFC 7296 2.15):
/// `RealMessage | Nonce (of the peer) | prf(SK_px, IDx')`, where `message` is this side's
/// first message (IKE_SA_INIT request for the initiator, response for the responder),
/// `peer_nonce` the other side's nonce data, `sk_p` this side's SK_pi / SK_pr and `id_body`
/// this side's ID payload body (ID type, three reserved bytes, identification data).
pub fn signed_octets(
    prf: Prf,
    message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.compute(sk_p, &[id_body]);
    let mut out = Vec::with_capacity(message.len() + peer_nonce.len() + maced_id.len());
    out.extend_from_slice(message);
    out.extend_from_slice(peer_nonce);
    out.extend_from_slice(&maced_id);
    out
}

/// The key pad of RFC 7296 2.15: the 17 ASCII bytes "Key Pad for IKEv2", no terminator.
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// Shared-key AUTH data: prf(prf(Shared Secret, "Key Pad for IKEv2"), signed octets)
/// (RFC 7296 2.15).
pub fn psk_auth(prf: Prf, psk: &[u8], signed_octets: &[u8]) -> Zeroizing<Vec<u8>> {
    let inner = prf.compute(psk, &[KEY_PAD]);
    prf.compute(&inner, &[signed_octets])
}

/// Constant-time equality of two byte strings (their lengths may leak).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// `len` bytes from the system CSPRNG (nonces, IVs).
///
/// # Panics
/// If the CSPRNG fails, which leaves nothing safe to do.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fill_random(&mut buf);
    buf
}

pub(crate) fn fill_random(buf: &mut [u8]) {
    #[cfg(test)]
    if let Some(mut x) = TEST_RNG.get() {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        TEST_RNG.set(Some(x));
        return;
    }
    aws_lc_rs::rand::fill(buf).expect("system random number generator failed");
}

#[cfg(test)]
thread_local! {
    /// Tests only: this thread's nonces, SPIs and jitter from a seeded xorshift instead of
    /// the system's generator, so a simulated scenario replays from its seed.
    static TEST_RNG: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Tests only: seeds this thread's generator (None: the system's again).
#[cfg(test)]
pub(crate) fn seed_test_rng(seed: Option<u64>) {
    TEST_RNG.set(seed.map(|s| s | 1));
}

/// A random non-zero IKE SPI.
pub fn random_spi() -> u64 {
    loop {
        let mut b = [0u8; 8];
        fill_random(&mut b);
        let v = u64::from_be_bytes(b);
        if v != 0 {
            return v;
        }
    }
}

/// A random non-zero 32-bit value (ESP SPIs; the caller retries below 256).
pub fn random_u32_nonzero() -> u32 {
    loop {
        let mut b = [0u8; 4];
        fill_random(&mut b);
        let v = u32::from_be_bytes(b);
        if v != 0 {
            return v;
        }
    }
}
