//! The AEAD behind an SA: a small trait so the backend can change (kernel offload, another
//! library) without touching the ESP code. RFC 4106: AES-GCM with a 16-byte ICV, nonce =
//! 4-byte salt || 8-byte explicit IV.

use std::fmt;

use aes_gcm::{
    Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag,
    aead::{AeadInPlace, generic_array::GenericArray},
};
use zeroize::Zeroizing;

pub const SALT_LEN: usize = 4;
pub const IV_LEN: usize = 8;
pub const ICV_LEN: usize = 16;

/// The ICV did not verify. Deliberately carries nothing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BadTag;

pub trait Aead: Send + Sync {
    /// Encrypts `buf` in place and returns the ICV.
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; ICV_LEN];
    /// Verifies `tag` (constant time) and decrypts `buf` in place. On failure the contents
    /// of `buf` are unspecified (never the plaintext of a forged packet).
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> Result<(), BadTag>;
    /// The same with the ICV at the end of `ct_tag`, as ESP carries it: the data path's
    /// form, decrypting the first `len - 16` bytes in place.
    fn open_appended(&self, nonce: &[u8; 12], aad: &[u8], ct_tag: &mut [u8]) -> Result<(), BadTag> {
        let at = ct_tag.len().checked_sub(ICV_LEN).ok_or(BadTag)?;
        let (ct, tag) = ct_tag.split_at_mut(at);
        let tag: [u8; ICV_LEN] = (&*tag).try_into().map_err(|_| BadTag)?;
        self.open(nonce, aad, ct, &tag)
    }
}

/// Which AES-GCM implementation serves the SAs. `cargo xtask bench` (crypto-bench) compares
/// them; see README for the figures behind the default.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// aws-lc-rs (AWS-LC, BoringSSL-derived assembly): fastest at 1400 bytes here.
    #[default]
    AwsLc,
    /// ring: fastest at 64 bytes here, close at 512.
    Ring,
    /// RustCrypto aes-gcm: portable Rust, runtime AES-NI/CLMUL detection.
    RustCrypto,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "aws-lc-rs" => Ok(Backend::AwsLc),
            "ring" => Ok(Backend::Ring),
            "rustcrypto" | "aes-gcm" => Ok(Backend::RustCrypto),
            other => Err(format!("{other:?}: use aws-lc-rs, ring or rustcrypto")),
        }
    }
}

/// ESP transform (IKEv2 ENCR ids 20 with 128/256-bit keys).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm16,
    Aes256Gcm16,
}

impl Cipher {
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm16 => 16,
            Cipher::Aes256Gcm16 => 32,
        }
    }

    /// Keying material length (key || salt), RFC 4106 8.1.
    pub const fn keymat_len(self) -> usize {
        self.key_len() + SALT_LEN
    }
}

/// Keying material of one SA direction. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct SaKey {
    cipher: Cipher,
    key: Zeroizing<Vec<u8>>,
    salt: [u8; SALT_LEN],
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaKey({:?}, <redacted>)", self.cipher)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{cipher:?} needs {want} bytes of keying material (key + 4-byte salt), got {got}")]
    Length {
        cipher: Cipher,
        want: usize,
        got: usize,
    },
}

impl SaKey {
    /// From RFC 4106 keying material: key followed by the 4-byte salt.
    pub fn from_keymat(cipher: Cipher, keymat: &[u8]) -> Result<SaKey, KeyError> {
        if keymat.len() != cipher.keymat_len() {
            return Err(KeyError::Length {
                cipher,
                want: cipher.keymat_len(),
                got: keymat.len(),
            });
        }
        let (k, s) = keymat.split_at(cipher.key_len());
        Ok(SaKey {
            cipher,
            key: Zeroizing::new(k.to_vec()),
            salt: s.try_into().expect("length checked"),
        })
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn salt(&self) -> [u8; SALT_LEN] {
        self.salt
    }

    /// The RFC 4106 keying material again (key then salt), as the kernel's
    /// `rfc4106(gcm(aes))` takes it. Zeroized when dropped.
    pub fn keymat(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(self.key.len() + SALT_LEN));
        v.extend_from_slice(&self.key);
        v.extend_from_slice(&self.salt);
        v
    }

    /// The AEAD on the default backend.
    pub fn aead(&self) -> Box<dyn Aead> {
        self.aead_with(Backend::default())
    }

    pub fn aead_with(&self, backend: Backend) -> Box<dyn Aead> {
        match (backend, self.cipher) {
            (Backend::RustCrypto, Cipher::Aes128Gcm16) => Box::new(RustCryptoGcm(
                Aes128Gcm::new_from_slice(&self.key).expect("length checked"),
            )),
            (Backend::RustCrypto, Cipher::Aes256Gcm16) => Box::new(RustCryptoGcm(
                Aes256Gcm::new_from_slice(&self.key).expect("length checked"),
            )),
            (Backend::Ring, c) => Box::new(RingGcm::new(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(
                    match c {
                        Cipher::Aes128Gcm16 => &ring::aead::AES_128_GCM,
                        Cipher::Aes256Gcm16 => &ring::aead::AES_256_GCM,
                    },
                    &self.key,
                )
                .expect("length checked"),
            ))),
            (Backend::AwsLc, c) => Box::new(AwsLcGcm(aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(
                    match c {
                        Cipher::Aes128Gcm16 => &aws_lc_rs::aead::AES_128_GCM,
                        Cipher::Aes256Gcm16 => &aws_lc_rs::aead::AES_256_GCM,
                    },
                    &self.key,
                )
                .expect("length checked"),
            ))),
        }
    }
}

/// ring: keys are opaque and not readable back. ring keeps the expanded key inline and
/// does not clear it when dropped, so we do (issue 14).
struct RingGcm(std::mem::ManuallyDrop<ring::aead::LessSafeKey>);

impl RingGcm {
    fn new(k: ring::aead::LessSafeKey) -> RingGcm {
        RingGcm(std::mem::ManuallyDrop::new(k))
    }

    /// Overwrites the key with zeros. The key is not used (nor dropped) afterwards.
    fn wipe(&mut self) {
        let p = (&raw mut *self.0).cast::<u8>();
        for i in 0..std::mem::size_of::<ring::aead::LessSafeKey>() {
            // SAFETY: within the key's bytes; volatile so the stores are not elided. The key
            // owns no heap memory or other resource (ring's AES-GCM keys are inline), so not
            // running its drop glue leaks nothing, and nothing reads it as a key after this.
            unsafe { std::ptr::write_volatile(p.add(i), 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for RingGcm {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Aead for RingGcm {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; ICV_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .expect("GCM seals any length below 2^36 bytes");
        tag.as_ref().try_into().expect("16-byte tag")
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> Result<(), BadTag> {
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| BadTag)
    }
}

/// aws-lc-rs: keys zeroized by AWS-LC when the context is freed.
struct AwsLcGcm(aws_lc_rs::aead::LessSafeKey);

impl Aead for AwsLcGcm {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; ICV_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce),
                aws_lc_rs::aead::Aad::from(aad),
                buf,
            )
            .expect("GCM seals any length below 2^36 bytes");
        tag.as_ref().try_into().expect("16-byte tag")
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> Result<(), BadTag> {
        // Not the data path (that is open_appended): gather into one buffer.
        let mut ct_tag = Vec::with_capacity(buf.len() + ICV_LEN);
        ct_tag.extend_from_slice(buf);
        ct_tag.extend_from_slice(tag);
        self.open_appended(nonce, aad, &mut ct_tag)?;
        let n = buf.len();
        buf.copy_from_slice(&ct_tag[..n]);
        Ok(())
    }

    fn open_appended(&self, nonce: &[u8; 12], aad: &[u8], ct_tag: &mut [u8]) -> Result<(), BadTag> {
        self.0
            .open_in_place(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce),
                aws_lc_rs::aead::Aad::from(aad),
                ct_tag,
            )
            .map(|_| ())
            .map_err(|_| BadTag)
    }
}

/// aes-gcm's ciphers zeroize their key schedules on drop (the crate's `zeroize` feature).
struct RustCryptoGcm<C>(C);

impl<C: AeadInPlace + Send + Sync> Aead for RustCryptoGcm<C>
where
    C: aes_gcm::aead::AeadCore<
            NonceSize = aes_gcm::aead::consts::U12,
            TagSize = aes_gcm::aead::consts::U16,
        >,
{
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; ICV_LEN] {
        let tag = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .expect("GCM seals any length below 2^36 bytes");
        tag.into()
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> Result<(), BadTag> {
        let tag: &Tag = GenericArray::from_slice(tag);
        self.0
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, tag)
            .map_err(|_| BadTag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (low): ring's expanded AES key used to stay in freed memory.
    #[test]
    fn ring_keys_are_wiped() {
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[0x42; 16]).unwrap();
        let mut g = RingGcm::new(ring::aead::LessSafeKey::new(key));
        let bytes = |g: &RingGcm| -> Vec<u8> {
            let n = std::mem::size_of::<ring::aead::LessSafeKey>();
            // SAFETY: reads the key's own bytes.
            unsafe { std::slice::from_raw_parts((&raw const *g.0).cast::<u8>(), n).to_vec() }
        };
        assert!(bytes(&g).iter().filter(|b| **b != 0).count() > 16);
        g.wipe();
        assert!(bytes(&g).iter().all(|b| *b == 0));
    }
}
