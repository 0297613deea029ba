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
    /// Verifies `tag` (constant time) and decrypts `buf` in place. On failure `buf` is left
    /// encrypted.
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> Result<(), BadTag>;
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

    /// The default backend (RustCrypto aes-gcm; AES-NI and CLMUL detected at run time).
    pub fn aead(&self) -> Box<dyn Aead> {
        match self.cipher {
            Cipher::Aes128Gcm16 => Box::new(RustCryptoGcm(
                Aes128Gcm::new_from_slice(&self.key).expect("length checked"),
            )),
            Cipher::Aes256Gcm16 => Box::new(RustCryptoGcm(
                Aes256Gcm::new_from_slice(&self.key).expect("length checked"),
            )),
        }
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
