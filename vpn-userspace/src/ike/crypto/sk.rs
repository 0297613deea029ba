//! SK (Encrypted) payload protection, one direction (RFC 7296 3.14; RFC 5282 for AES-GCM).

use core::fmt;

use aws_lc_rs::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey},
    cipher::{
        AES_128, AES_192, AES_256, DecryptingKey, DecryptionContext, EncryptingKey,
        EncryptionContext, UnboundCipherKey,
    },
    hmac,
    iv::FixedLength,
};
use zeroize::Zeroizing;

use super::{CryptoError, Encr, Integ, ct_eq, fill_random};

/// GCM explicit IV length (RFC 5282 3.1).
const GCM_IV_LEN: usize = 8;
/// GCM salt length (RFC 5282 7.1).
const GCM_SALT_LEN: usize = 4;
/// ENCR_AES_GCM_16 ICV length.
const GCM_TAG_LEN: usize = 16;
/// AES block and CBC IV length.
const AES_BLOCK: usize = 16;

enum Kind {
    Gcm {
        key: LessSafeKey,
        salt: [u8; GCM_SALT_LEN],
        /// Next explicit IV; a per-key counter, so an IV never repeats under one key.
        counter: u64,
    },
    Cbc(Box<CbcKeys>),
}

struct CbcKeys {
    enc: EncryptingKey,
    dec: DecryptingKey,
    mac: hmac::Key,
    icv_len: usize,
}

/// One direction of SK payload protection: the encryption key and (for CBC) the integrity
/// key of one side. `Debug` shows the algorithms only.
pub struct SkCipher {
    encr: Encr,
    integ: Integ,
    kind: Kind,
}

impl fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkCipher")
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .finish_non_exhaustive()
    }
}

impl SkCipher {
    /// A cipher for `encr`/`integ` with keying material `key_e` (key | salt for GCM, i.e.
    /// `encr.keymat_len()` bytes) and integrity key `key_a` (`integ.key_len()` bytes, empty
    /// for GCM). GCM requires [`Integ::None`]; CBC requires an integrity algorithm.
    pub fn new(
        encr: Encr,
        integ: Integ,
        key_e: &[u8],
        key_a: &[u8],
    ) -> Result<SkCipher, CryptoError> {
        if key_e.len() != encr.keymat_len() || key_a.len() != integ.key_len() {
            return Err(CryptoError::BadLength);
        }
        let kind = match encr {
            Encr::AesGcm16 { key_bits } => {
                if integ != Integ::None {
                    return Err(CryptoError::Unsupported);
                }
                let alg = match key_bits {
                    128 => &aead::AES_128_GCM,
                    256 => &aead::AES_256_GCM,
                    _ => return Err(CryptoError::Unsupported),
                };
                let (k, s) = key_e.split_at(key_e.len() - GCM_SALT_LEN);
                let key = UnboundKey::new(alg, k).map_err(|_| CryptoError::BadLength)?;
                let mut salt = [0u8; GCM_SALT_LEN];
                salt.copy_from_slice(s);
                Kind::Gcm {
                    key: LessSafeKey::new(key),
                    salt,
                    counter: 0,
                }
            }
            Encr::AesCbc { key_bits } => {
                let Some(mac_alg) = integ.hmac_alg() else {
                    return Err(CryptoError::Unsupported);
                };
                let alg = match key_bits {
                    128 => &AES_128,
                    192 => &AES_192,
                    256 => &AES_256,
                    _ => return Err(CryptoError::Unsupported),
                };
                let ek = UnboundCipherKey::new(alg, key_e).map_err(|_| CryptoError::BadLength)?;
                let dk = UnboundCipherKey::new(alg, key_e).map_err(|_| CryptoError::BadLength)?;
                Kind::Cbc(Box::new(CbcKeys {
                    enc: EncryptingKey::cbc(ek).map_err(|_| CryptoError::Unsupported)?,
                    dec: DecryptingKey::cbc(dk).map_err(|_| CryptoError::Unsupported)?,
                    mac: hmac::Key::new(mac_alg, key_a),
                    icv_len: integ.icv_len(),
                }))
            }
        };
        Ok(SkCipher { encr, integ, kind })
    }

    /// The SK payload body length for `plain_len` bytes of inner payloads:
    /// IV + ciphertext (payloads, padding, pad length byte) + ICV.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        match &self.kind {
            // No padding: GCM's block size is one byte for IKEv2's purposes.
            Kind::Gcm { .. } => GCM_IV_LEN + plain_len + 1 + GCM_TAG_LEN,
            Kind::Cbc(c) => AES_BLOCK + (plain_len + 1).div_ceil(AES_BLOCK) * AES_BLOCK + c.icv_len,
        }
    }

    /// Appends the SK payload body (IV | ciphertext | ICV), exactly
    /// `sealed_len(plaintext.len())` bytes, to `out`. `aad` is the message up to and
    /// including the SK payload's generic header, with final lengths filled in.
    ///
    /// # Panics
    /// If the GCM IV counter is exhausted (2^64 messages under one key), or the system
    /// random number generator fails.
    pub fn seal(&mut self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let padded_len = match &self.kind {
            Kind::Gcm { .. } => plaintext.len() + 1,
            Kind::Cbc(_) => (plaintext.len() + 1).div_ceil(AES_BLOCK) * AES_BLOCK,
        };
        let pad = padded_len - plaintext.len() - 1;
        let mut padded = Zeroizing::new(Vec::with_capacity(padded_len));
        padded.extend_from_slice(plaintext);
        padded.resize(padded_len - 1, 0);
        padded.push(u8::try_from(pad).expect("pad below one block"));
        match &mut self.kind {
            Kind::Gcm { counter, .. } => {
                let iv = *counter;
                *counter = counter.checked_add(1).expect("GCM IV counter exhausted");
                self.seal_padded_with_iv(aad, &padded, &iv.to_be_bytes(), out);
            }
            Kind::Cbc(_) => {
                let mut iv = [0u8; AES_BLOCK];
                fill_random(&mut iv);
                self.seal_padded_with_iv(aad, &padded, &iv, out);
            }
        }
    }

    /// Seals an already padded plaintext (ending in its pad length byte) with a given IV.
    /// The IV must be 8 bytes for GCM (never reused under one key) and 16 for CBC
    /// (unpredictable). `seal` is the only caller outside tests.
    pub(super) fn seal_padded_with_iv(
        &self,
        aad: &[u8],
        padded: &[u8],
        iv: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(iv);
        let start = out.len();
        out.extend_from_slice(padded);
        match &self.kind {
            Kind::Gcm { key, salt, .. } => {
                let nonce = gcm_nonce(salt, iv);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[start..])
                    .expect("AES-GCM seal of an in-range length");
                out.extend_from_slice(tag.as_ref());
            }
            Kind::Cbc(c) => {
                let CbcKeys {
                    enc, mac, icv_len, ..
                } = &**c;
                let iv: [u8; AES_BLOCK] = iv.try_into().expect("16-byte CBC IV");
                enc.less_safe_encrypt(
                    &mut out[start..],
                    EncryptionContext::Iv128(FixedLength::from(iv)),
                )
                .expect("AES-CBC over whole blocks");
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(aad);
                ctx.update(&out[start - AES_BLOCK..]);
                let icv = ctx.sign();
                out.extend_from_slice(&icv.as_ref()[..*icv_len]);
            }
        }
    }

    /// Verifies and decrypts an SK payload body (IV | ciphertext | ICV) and returns the inner
    /// payload chain without padding and pad length byte. The ICV is checked first, in
    /// constant time; a body of impossible length is [`CryptoError::BadLength`].
    pub fn open(&self, aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut plain = match &self.kind {
            Kind::Gcm { key, salt, .. } => {
                if body.len() < GCM_IV_LEN + 1 + GCM_TAG_LEN {
                    return Err(CryptoError::BadLength);
                }
                let (iv, rest) = body.split_at(GCM_IV_LEN);
                let nonce = gcm_nonce(salt, iv);
                let mut buf = Zeroizing::new(rest.to_vec());
                let n = key
                    .open_in_place(nonce, Aad::from(aad), &mut buf)
                    .map_err(|_| CryptoError::BadIcv)?
                    .len();
                buf.truncate(n);
                buf
            }
            Kind::Cbc(c) => {
                let CbcKeys {
                    dec, mac, icv_len, ..
                } = &**c;
                let icv_len = *icv_len;
                if body.len() < AES_BLOCK + AES_BLOCK + icv_len
                    || !(body.len() - AES_BLOCK - icv_len).is_multiple_of(AES_BLOCK)
                {
                    return Err(CryptoError::BadLength);
                }
                let (signed, icv) = body.split_at(body.len() - icv_len);
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(aad);
                ctx.update(signed);
                let expect = ctx.sign();
                if !ct_eq(&expect.as_ref()[..icv_len], icv) {
                    return Err(CryptoError::BadIcv);
                }
                let (iv, ct) = signed.split_at(AES_BLOCK);
                let iv: [u8; AES_BLOCK] = iv.try_into().expect("16 bytes");
                let mut buf = Zeroizing::new(ct.to_vec());
                let n = dec
                    .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
                    .map_err(|_| CryptoError::BadLength)?
                    .len();
                buf.truncate(n);
                buf
            }
        };
        let pad_len = usize::from(*plain.last().ok_or(CryptoError::BadPadding)?);
        if pad_len + 1 > plain.len() {
            return Err(CryptoError::BadPadding);
        }
        let keep = plain.len() - pad_len - 1;
        plain.truncate(keep);
        Ok(plain)
    }
}

fn gcm_nonce(salt: &[u8; GCM_SALT_LEN], iv: &[u8]) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[..GCM_SALT_LEN].copy_from_slice(salt);
    n[GCM_SALT_LEN..].copy_from_slice(iv);
    Nonce::assume_unique_for_key(n)
}

/// Raw AES-CBC encryption of whole blocks (test hook for the RFC 3602 vectors).
#[cfg(test)]
pub(super) fn cbc_encrypt_raw(key: &[u8], iv: [u8; AES_BLOCK], data: &mut [u8]) {
    let alg = match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        _ => &AES_256,
    };
    let k = EncryptingKey::cbc(UnboundCipherKey::new(alg, key).unwrap()).unwrap();
    k.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .unwrap();
}

/// Raw AES-CBC decryption of whole blocks (test hook for the RFC 3602 vectors).
#[cfg(test)]
pub(super) fn cbc_decrypt_raw(key: &[u8], iv: [u8; AES_BLOCK], data: &mut [u8]) {
    let alg = match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        _ => &AES_256,
    };
    let k = DecryptingKey::cbc(UnboundCipherKey::new(alg, key).unwrap()).unwrap();
    k.decrypt(data, DecryptionContext::Iv128(FixedLength::from(iv)))
        .unwrap();
}
