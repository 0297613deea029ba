//! Diffie-Hellman for IKEv2: MODP-2048 (crypto-bigint, constant-time Montgomery
//! exponentiation) and ECP-256 / ECP-384 / Curve25519 (aws-lc-rs `agreement`).

use core::fmt;
use std::sync::LazyLock;

use aws_lc_rs::agreement;
use crypto_bigint::{
    Odd, U2048,
    modular::{FixedMontyForm, FixedMontyParams},
};
use zeroize::{Zeroize, Zeroizing};

use super::{CryptoError, DhGroup, fill_random};

/// The 2048-bit MODP prime of RFC 3526 section 3 (group 14); the generator is 2.
const MODP2048_P_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// MODP-2048 modulus length in bytes.
const MODP_LEN: usize = 256;

/// Bits of a generated MODP-2048 private exponent. RFC 3526 section 8 puts the group's
/// strength at 110-160 bits and asks for an exponent of at least twice that; 320 bits is the
/// top of its range. The bound is public, so bounding the exponentiation by it leaks nothing.
const MODP_EXP_BITS: u32 = 320;

pub(super) static MODP2048_P: LazyLock<U2048> =
    LazyLock::new(|| U2048::from_be_hex(MODP2048_P_HEX));

static MODP2048_PARAMS: LazyLock<FixedMontyParams<{ U2048::LIMBS }>> = LazyLock::new(|| {
    let p = Odd::new(*MODP2048_P).expect("the RFC 3526 prime is odd");
    FixedMontyParams::new(p)
});

/// Big-endian bytes of p - 1.
fn modp_p_minus_1() -> [u8; MODP_LEN] {
    let mut b = be_bytes(&MODP2048_P);
    b[MODP_LEN - 1] -= 1; // p is odd: no borrow
    b
}

fn be_bytes(x: &U2048) -> [u8; MODP_LEN] {
    let mut out = [0u8; MODP_LEN];
    out.copy_from_slice(x.to_be_bytes().as_ref());
    out
}

/// `base ^ exp mod p`, constant time in `exp` for a fixed public `exp_bits` bound.
fn modp_pow(base: &U2048, exp: &U2048, exp_bits: u32) -> Zeroizing<[u8; MODP_LEN]> {
    let b = FixedMontyForm::new(base, &MODP2048_PARAMS);
    let mut r = b.pow_bounded_exp(exp, exp_bits);
    let mut v = r.retrieve();
    let out = Zeroizing::new(be_bytes(&v));
    v.zeroize();
    r.zeroize();
    out
}

enum Private {
    /// MODP exponent and the public bound on its bit length.
    Modp {
        x: Box<Zeroizing<U2048>>,
        exp_bits: u32,
    },
    Ec(agreement::PrivateKey),
}

/// Our half of a Diffie-Hellman exchange: a private value and the public value sent in the
/// KE payload. `Debug` shows the group only.
pub struct DhSecret {
    group: DhGroup,
    private: Private,
    public: Vec<u8>,
}

impl fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhSecret")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn ec_alg(group: DhGroup) -> Option<&'static agreement::Algorithm> {
    match group {
        DhGroup::Ecp256 => Some(&agreement::ECDH_P256),
        DhGroup::Ecp384 => Some(&agreement::ECDH_P384),
        DhGroup::Curve25519 => Some(&agreement::X25519),
        DhGroup::Modp2048 => None,
    }
}

impl DhSecret {
    /// A fresh random private value for `group`.
    pub fn generate(group: DhGroup) -> Result<DhSecret, CryptoError> {
        match ec_alg(group) {
            Some(alg) => {
                let key =
                    agreement::PrivateKey::generate(alg).map_err(|_| CryptoError::Unsupported)?;
                Self::from_ec(group, key)
            }
            None => {
                let mut bytes = Zeroizing::new([0u8; MODP_LEN]);
                let n = (MODP_EXP_BITS / 8) as usize;
                fill_random(&mut bytes[MODP_LEN - n..]);
                // Top bit set: the exponent is exactly MODP_EXP_BITS long, never 0 or 1.
                bytes[MODP_LEN - n] |= 0x80;
                let x = Zeroizing::new(U2048::from_be_slice(&bytes[..]));
                Ok(Self::from_modp(x, MODP_EXP_BITS))
            }
        }
    }

    /// A private value from its bytes (known-answer tests, and replaying a logged exchange):
    /// MODP a big-endian exponent of 1 to 256 bytes; ECP a big-endian scalar of exactly the
    /// field length; X25519 the 32-byte scalar of RFC 7748.
    pub fn from_private(group: DhGroup, private: &[u8]) -> Result<DhSecret, CryptoError> {
        match ec_alg(group) {
            Some(alg) => {
                let key = agreement::PrivateKey::from_private_key(alg, private)
                    .map_err(|_| CryptoError::BadLength)?;
                Self::from_ec(group, key)
            }
            None => {
                if private.is_empty() || private.len() > MODP_LEN {
                    return Err(CryptoError::BadLength);
                }
                let mut bytes = Zeroizing::new([0u8; MODP_LEN]);
                bytes[MODP_LEN - private.len()..].copy_from_slice(private);
                let x = Zeroizing::new(U2048::from_be_slice(&bytes[..]));
                // The bound depends on the given length only.
                let bits = u32::try_from(private.len() * 8).expect("at most 2048");
                Ok(Self::from_modp(x, bits))
            }
        }
    }

    fn from_modp(x: Zeroizing<U2048>, exp_bits: u32) -> DhSecret {
        let public = modp_pow(&U2048::from_u8(2), &x, exp_bits).to_vec();
        DhSecret {
            group: DhGroup::Modp2048,
            private: Private::Modp {
                x: Box::new(x),
                exp_bits,
            },
            public,
        }
    }

    fn from_ec(group: DhGroup, key: agreement::PrivateKey) -> Result<DhSecret, CryptoError> {
        let public = key
            .compute_public_key()
            .map_err(|_| CryptoError::Unsupported)?;
        let public = match group {
            // SEC1 uncompressed 0x04 | x | y; IKEv2 sends x | y (RFC 5903 section 7).
            DhGroup::Ecp256 | DhGroup::Ecp384 => public.as_ref()[1..].to_vec(),
            _ => public.as_ref().to_vec(),
        };
        debug_assert_eq!(public.len(), group.public_len());
        Ok(DhSecret {
            group,
            private: Private::Ec(key),
            public,
        })
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The KE payload's key exchange data: MODP g^x big-endian zero-padded to 256 bytes;
    /// ECP x | y without the 0x04 (RFC 5903 section 7); X25519 the 32-byte u (RFC 8031).
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^ir from the peer's KE data, after validating it: the length;
    /// MODP 1 < y < p-1; ECP the point on the curve; X25519 a non-zero result. ECP gives
    /// the x coordinate only (RFC 5903 section 7); MODP is zero-padded to 256 bytes.
    pub fn agree(&self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if peer_public.len() != self.group.public_len() {
            return Err(CryptoError::InvalidPublicValue);
        }
        match &self.private {
            Private::Modp { x, exp_bits } => {
                // Public values: a variable-time range check is fine. Big-endian byte strings
                // of equal length compare as the numbers they encode.
                let mut one = [0u8; MODP_LEN];
                one[MODP_LEN - 1] = 1;
                if peer_public <= &one[..] || peer_public >= &modp_p_minus_1()[..] {
                    return Err(CryptoError::InvalidPublicValue);
                }
                let y = U2048::from_be_slice(peer_public);
                let s = modp_pow(&y, x, *exp_bits);
                Ok(Zeroizing::new(s.to_vec()))
            }
            Private::Ec(key) => {
                let alg = ec_alg(self.group).expect("EC group");
                let mut encoded = Vec::with_capacity(peer_public.len() + 1);
                if self.group != DhGroup::Curve25519 {
                    encoded.push(0x04);
                }
                encoded.extend_from_slice(peer_public);
                let peer = agreement::UnparsedPublicKey::new(alg, encoded);
                let secret = agreement::agree(key, peer, CryptoError::InvalidPublicValue, |s| {
                    Ok(Zeroizing::new(s.to_vec()))
                })?;
                if secret.len() != self.group.shared_len() {
                    return Err(CryptoError::InvalidPublicValue);
                }
                // RFC 8031 section 2.3 / RFC 7748 section 6.1: reject an all-zero X25519
                // output (a low-order peer point). Constant time in the secret.
                if self.group == DhGroup::Curve25519 && super::ct_eq(&secret, &[0u8; 32]) {
                    return Err(CryptoError::InvalidPublicValue);
                }
                Ok(secret)
            }
        }
    }
}
