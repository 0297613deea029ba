//! Algorithm proposals: parsing the configured suites (strongSwan-style strings such as
//! `aes256gcm16-prfsha256-modp2048` or `aes128gcm16-esn`), encoding them as SA payload
//! proposals, and choosing among a peer's offers (RFC 7296 2.7, 3.3).

use super::crypto::{DhGroup, Encr, Integ, Prf};
use super::wire::{Proposal, ProtocolId, Transform, TransformType, transform_id as tid};
use crate::esp::Cipher;

/// One IKE SA proposal: every combination of the listed algorithms is acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeProposal {
    pub encr: Vec<Encr>,
    pub integ: Vec<Integ>,
    pub prf: Vec<Prf>,
    pub dh: Vec<DhGroup>,
}

/// One ESP proposal. `dh` lists PFS groups for CREATE_CHILD_SA (empty: no PFS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspProposal {
    pub encr: Vec<Cipher>,
    pub esn: Vec<bool>,
    pub dh: Vec<DhGroup>,
}

/// The algorithms chosen for an IKE SA.
pub use super::crypto::IkeSuite;

/// The algorithms chosen for a CHILD_SA.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EspSuite {
    pub cipher: Cipher,
    pub esn: bool,
    pub dh: Option<DhGroup>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ProposalError(pub String);

fn encr_token(t: &str) -> Option<Encr> {
    Some(match t {
        "aes128gcm16" | "aes128gcm" => Encr::AesGcm16 { key_bits: 128 },
        "aes256gcm16" | "aes256gcm" => Encr::AesGcm16 { key_bits: 256 },
        "aes128" => Encr::AesCbc { key_bits: 128 },
        "aes192" => Encr::AesCbc { key_bits: 192 },
        "aes256" => Encr::AesCbc { key_bits: 256 },
        _ => return None,
    })
}

fn integ_token(t: &str) -> Option<(Integ, Prf)> {
    Some(match t {
        "sha256" | "sha2_256" => (Integ::HmacSha256_128, Prf::HmacSha256),
        "sha384" | "sha2_384" => (Integ::HmacSha384_192, Prf::HmacSha384),
        "sha512" | "sha2_512" => (Integ::HmacSha512_256, Prf::HmacSha512),
        _ => return None,
    })
}

fn prf_token(t: &str) -> Option<Prf> {
    Some(match t {
        "prfsha256" => Prf::HmacSha256,
        "prfsha384" => Prf::HmacSha384,
        "prfsha512" => Prf::HmacSha512,
        _ => return None,
    })
}

pub fn dh_token(t: &str) -> Option<DhGroup> {
    Some(match t {
        "modp2048" | "group14" => DhGroup::Modp2048,
        "ecp256" | "group19" => DhGroup::Ecp256,
        "ecp384" | "group20" => DhGroup::Ecp384,
        "curve25519" | "x25519" | "group31" => DhGroup::Curve25519,
        _ => return None,
    })
}

fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

impl IkeProposal {
    /// Parses `encr[-integ]...[-prf]...-dh...`, e.g. `aes256gcm16-prfsha256-modp2048` or
    /// `aes128-sha256-ecp256` (with CBC, `sha256` is the integrity algorithm and, when no
    /// `prf*` is given, the PRF too).
    pub fn parse(s: &str) -> Result<IkeProposal, ProposalError> {
        let mut p = IkeProposal {
            encr: vec![],
            integ: vec![],
            prf: vec![],
            dh: vec![],
        };
        let mut implied_prf = vec![];
        for t in s.split('-') {
            let t = t.trim().to_ascii_lowercase();
            if let Some(e) = encr_token(&t) {
                push(&mut p.encr, e);
            } else if let Some((i, f)) = integ_token(&t) {
                push(&mut p.integ, i);
                push(&mut implied_prf, f);
            } else if let Some(f) = prf_token(&t) {
                push(&mut p.prf, f);
            } else if let Some(g) = dh_token(&t) {
                push(&mut p.dh, g);
            } else {
                return Err(ProposalError(format!(
                    "unknown or unsupported algorithm {t:?} in IKE proposal {s:?} (supported: \
                     aes128gcm16 aes256gcm16 aes128 aes192 aes256, sha256 sha384 sha512, \
                     prfsha256 prfsha384 prfsha512, modp2048 ecp256 ecp384 curve25519)"
                )));
            }
        }
        if p.encr.is_empty() {
            return Err(ProposalError(format!(
                "IKE proposal {s:?} names no encryption algorithm"
            )));
        }
        let aead = p.encr.iter().any(|e| e.is_aead());
        let cbc = p.encr.iter().any(|e| !e.is_aead());
        if aead && cbc {
            return Err(ProposalError(format!(
                "IKE proposal {s:?} mixes AEAD and non-AEAD encryption; use two proposals"
            )));
        }
        if cbc && p.integ.is_empty() {
            return Err(ProposalError(format!(
                "IKE proposal {s:?}: AES-CBC needs an integrity algorithm (sha256, sha384, sha512)"
            )));
        }
        if aead {
            if !p.integ.is_empty() && p.prf.is_empty() {
                // strongSwan reads `aes256gcm16-sha256` as PRF sha256 for AEAD suites.
                p.prf = implied_prf.clone();
            }
            p.integ.clear();
            p.integ.push(Integ::None);
        }
        if p.prf.is_empty() {
            p.prf = if implied_prf.is_empty() {
                vec![Prf::HmacSha256]
            } else {
                implied_prf
            };
        }
        if p.dh.is_empty() {
            return Err(ProposalError(format!(
                "IKE proposal {s:?} names no Diffie-Hellman group (modp2048, ecp256, ecp384, \
                 curve25519)"
            )));
        }
        Ok(p)
    }

    pub fn to_wire(&self, num: u8, spi: Vec<u8>) -> Proposal {
        let mut t = vec![];
        for e in &self.encr {
            t.push(Transform::with_key_len(
                TransformType::ENCR,
                e.id(),
                e.key_bits(),
            ));
        }
        for f in &self.prf {
            t.push(Transform::new(TransformType::PRF, f.id()));
        }
        for i in &self.integ {
            if *i != Integ::None {
                t.push(Transform::new(TransformType::INTEG, i.id()));
            }
        }
        for g in &self.dh {
            t.push(Transform::new(TransformType::DH, g.id()));
        }
        Proposal {
            num,
            protocol: ProtocolId::IKE,
            spi,
            transforms: t,
        }
    }
}

impl EspProposal {
    /// Parses `aes128gcm16[-aes256gcm16][-esn|-noesn][-modp2048...]`.
    pub fn parse(s: &str) -> Result<EspProposal, ProposalError> {
        let mut p = EspProposal {
            encr: vec![],
            esn: vec![],
            dh: vec![],
        };
        for t in s.split('-') {
            let t = t.trim().to_ascii_lowercase();
            match t.as_str() {
                "aes128gcm16" | "aes128gcm" => push(&mut p.encr, Cipher::Aes128Gcm16),
                "aes256gcm16" | "aes256gcm" => push(&mut p.encr, Cipher::Aes256Gcm16),
                "esn" => push(&mut p.esn, true),
                "noesn" => push(&mut p.esn, false),
                other => match dh_token(other) {
                    Some(g) => push(&mut p.dh, g),
                    None => {
                        return Err(ProposalError(format!(
                            "unknown or unsupported algorithm {other:?} in ESP proposal {s:?} \
                             (supported: aes128gcm16 aes256gcm16, esn noesn, and a PFS group \
                             modp2048 ecp256 ecp384 curve25519)"
                        )));
                    }
                },
            }
        }
        if p.encr.is_empty() {
            return Err(ProposalError(format!(
                "ESP proposal {s:?} names no encryption algorithm (aes128gcm16, aes256gcm16)"
            )));
        }
        if p.esn.is_empty() {
            p.esn.push(false);
        }
        Ok(p)
    }

    /// `with_dh`: include the PFS groups (CREATE_CHILD_SA); IKE_AUTH carries none.
    pub fn to_wire(&self, num: u8, spi: u32, with_dh: bool) -> Proposal {
        let mut t = vec![];
        for c in &self.encr {
            let bits = (c.key_len() * 8) as u16;
            t.push(Transform::with_key_len(
                TransformType::ENCR,
                tid::ENCR_AES_GCM_16,
                bits,
            ));
        }
        if with_dh {
            for g in &self.dh {
                t.push(Transform::new(TransformType::DH, g.id()));
            }
        }
        for e in &self.esn {
            t.push(Transform::new(
                TransformType::ESN,
                if *e { tid::ESN_YES } else { tid::ESN_NO },
            ));
        }
        Proposal {
            num,
            protocol: ProtocolId::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms: t,
        }
    }
}

fn cipher_of(t: &Transform) -> Option<Cipher> {
    if t.id != tid::ENCR_AES_GCM_16 {
        return None;
    }
    match t.key_len() {
        Some(128) => Some(Cipher::Aes128Gcm16),
        Some(256) => Some(Cipher::Aes256Gcm16),
        _ => None,
    }
}

fn of_type(p: &Proposal, ty: TransformType) -> impl Iterator<Item = &Transform> {
    p.transforms.iter().filter(move |t| t.ttype == ty)
}

/// Rejects transforms with attributes other than the key length (RFC 7296 3.3.6: a
/// transform with an unknown attribute must be ignored).
fn usable(t: &Transform) -> bool {
    t.attrs.iter().all(|a| match a {
        super::wire::Attribute::Tv { atype, .. } => *atype == super::wire::ATTR_KEY_LENGTH,
        super::wire::Attribute::Tlv { .. } => false,
    })
}

/// Responder: the first of our proposals (in our order) that one of the offers satisfies.
/// Returns the chosen suite and the offer it came from (its number and SPI).
pub fn choose_ike(ours: &[IkeProposal], offers: &[Proposal]) -> Option<(IkeSuite, u8, Vec<u8>)> {
    for mine in ours {
        for o in offers.iter().filter(|o| o.protocol == ProtocolId::IKE) {
            let encr = mine.encr.iter().copied().find(|e| {
                of_type(o, TransformType::ENCR)
                    .any(|t| usable(t) && Encr::from_transform(t.id, t.key_len()) == Some(*e))
            });
            let prf = mine.prf.iter().copied().find(|f| {
                of_type(o, TransformType::PRF).any(|t| usable(t) && Prf::from_id(t.id) == Some(*f))
            });
            let integ = mine.integ.iter().copied().find(|i| {
                if *i == Integ::None {
                    of_type(o, TransformType::INTEG).all(|t| t.id == tid::AUTH_NONE)
                } else {
                    of_type(o, TransformType::INTEG)
                        .any(|t| usable(t) && Integ::from_id(t.id) == Some(*i))
                }
            });
            let dh = mine.dh.iter().copied().find(|g| {
                of_type(o, TransformType::DH)
                    .any(|t| usable(t) && DhGroup::from_id(t.id) == Some(*g))
            });
            if let (Some(encr), Some(prf), Some(integ), Some(dh)) = (encr, prf, integ, dh) {
                return Some((
                    IkeSuite {
                        encr,
                        integ,
                        prf,
                        dh,
                    },
                    o.num,
                    o.spi.clone(),
                ));
            }
        }
    }
    None
}

/// What key exchange comes with a CHILD_SA request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ChildKe {
    /// IKE_AUTH: never a KE; PFS groups in our policy apply to later rekeys only.
    Auth,
    /// CREATE_CHILD_SA without KE: refused by a policy that asks for PFS.
    Without,
    /// CREATE_CHILD_SA with KE: the chosen proposal must name its group.
    With,
}

/// Responder: chooses an ESP suite for a CHILD_SA request.
pub fn choose_esp(
    ours: &[EspProposal],
    offers: &[Proposal],
    ke: ChildKe,
) -> Option<(EspSuite, u8, Vec<u8>)> {
    let pfs = ke == ChildKe::With;
    for mine in ours {
        if ke == ChildKe::Without && !mine.dh.is_empty() {
            continue;
        }
        for o in offers.iter().filter(|o| o.protocol == ProtocolId::ESP) {
            if o.spi.len() != 4 {
                continue;
            }
            let cipher = mine.encr.iter().copied().find(|c| {
                of_type(o, TransformType::ENCR).any(|t| usable(t) && cipher_of(t) == Some(*c))
            });
            let esn = mine.esn.iter().copied().find(|e| {
                let want = if *e { tid::ESN_YES } else { tid::ESN_NO };
                let mut it = of_type(o, TransformType::ESN).peekable();
                // No ESN transform offered means "no ESN".
                if it.peek().is_none() {
                    return !*e;
                }
                it.any(|t| t.id == want)
            });
            // INTEG must be absent or NONE with AEAD.
            let integ_ok = of_type(o, TransformType::INTEG).all(|t| t.id == tid::AUTH_NONE);
            let offered_dh: Vec<u16> = of_type(o, TransformType::DH).map(|t| t.id).collect();
            let dh = if pfs {
                mine.dh
                    .iter()
                    .copied()
                    .find(|g| offered_dh.contains(&g.id()))
                    .map(Some)
            } else if offered_dh.iter().all(|g| *g == tid::DH_NONE) || mine.dh.is_empty() {
                Some(None)
            } else {
                // The peer offers PFS groups but sent no KE: acceptable only with NONE.
                offered_dh.contains(&tid::DH_NONE).then_some(None)
            };
            if let (Some(cipher), Some(esn), true, Some(dh)) = (cipher, esn, integ_ok, dh) {
                return Some((EspSuite { cipher, esn, dh }, o.num, o.spi.clone()));
            }
        }
    }
    None
}

/// Initiator: the responder's single chosen proposal must be one we offered, with exactly
/// one transform of each type, each among those we offered.
pub fn accept_ike(ours: &[IkeProposal], chosen: &[Proposal]) -> Option<(IkeSuite, Vec<u8>)> {
    let [c] = chosen else { return None };
    let mine = ours.get(c.num.checked_sub(1)? as usize)?;
    let one = |ty| {
        let mut it = of_type(c, ty);
        let first = it.next();
        if it.next().is_some() {
            None
        } else {
            Some(first)
        }
    };
    let encr = one(TransformType::ENCR)??;
    let encr = Encr::from_transform(encr.id, encr.key_len()).filter(|e| mine.encr.contains(e))?;
    let prf = Prf::from_id(one(TransformType::PRF)??.id).filter(|p| mine.prf.contains(p))?;
    let integ = match one(TransformType::INTEG)? {
        None | Some(Transform { id: 0, .. }) => Integ::None,
        Some(t) => Integ::from_id(t.id)?,
    };
    if !mine.integ.contains(&integ) {
        return None;
    }
    let dh = DhGroup::from_id(one(TransformType::DH)??.id).filter(|g| mine.dh.contains(g))?;
    Some((
        IkeSuite {
            encr,
            integ,
            prf,
            dh,
        },
        c.spi.clone(),
    ))
}

pub fn accept_esp(
    ours: &[EspProposal],
    chosen: &[Proposal],
    pfs: Option<DhGroup>,
) -> Option<(EspSuite, u32)> {
    let [c] = chosen else { return None };
    if c.protocol != ProtocolId::ESP {
        return None;
    }
    let mine = ours.get(c.num.checked_sub(1)? as usize)?;
    let spi = u32::from_be_bytes(c.spi.as_slice().try_into().ok()?);
    let encr: Vec<_> = of_type(c, TransformType::ENCR).collect();
    let [e] = encr[..] else { return None };
    let cipher = cipher_of(e).filter(|x| mine.encr.contains(x))?;
    let esn_t: Vec<_> = of_type(c, TransformType::ESN).collect();
    let esn = match esn_t[..] {
        [] => false,
        [t] if t.id == tid::ESN_YES => true,
        [t] if t.id == tid::ESN_NO => false,
        _ => return None,
    };
    if !mine.esn.contains(&esn) {
        return None;
    }
    let dh_t: Vec<_> = of_type(c, TransformType::DH)
        .filter(|t| t.id != tid::DH_NONE)
        .collect();
    let dh = match (dh_t[..].first(), pfs) {
        (None, None) => None,
        (Some(t), Some(g)) if dh_t.len() == 1 && t.id == g.id() => Some(g),
        _ => return None,
    };
    Some((EspSuite { cipher, esn, dh }, spi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strongswan_style_suites() {
        let p = IkeProposal::parse("aes256gcm16-prfsha256-modp2048").unwrap();
        assert_eq!(p.encr, vec![Encr::AesGcm16 { key_bits: 256 }]);
        assert_eq!(p.integ, vec![Integ::None]);
        assert_eq!(p.prf, vec![Prf::HmacSha256]);
        assert_eq!(p.dh, vec![DhGroup::Modp2048]);
        let p = IkeProposal::parse("aes128-sha384-ecp256-curve25519").unwrap();
        assert_eq!(p.integ, vec![Integ::HmacSha384_192]);
        assert_eq!(p.prf, vec![Prf::HmacSha384]);
        assert_eq!(p.dh, vec![DhGroup::Ecp256, DhGroup::Curve25519]);
        assert!(IkeProposal::parse("3des-sha1-modp1024").is_err());
        assert!(IkeProposal::parse("aes128-modp2048").is_err());
        assert!(IkeProposal::parse("aes128gcm16-prfsha256").is_err());
        let e = EspProposal::parse("aes128gcm16-aes256gcm16-esn-noesn-ecp256").unwrap();
        assert_eq!(e.esn, vec![true, false]);
        assert_eq!(e.dh, vec![DhGroup::Ecp256]);
        assert!(EspProposal::parse("aes128-sha256").is_err());
    }

    #[test]
    fn chooses_in_responder_order_and_initiator_accepts() {
        let init = vec![
            IkeProposal::parse("aes128-sha256-modp2048").unwrap(),
            IkeProposal::parse("aes256gcm16-prfsha384-ecp384-curve25519").unwrap(),
        ];
        let offers: Vec<_> = init
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, vec![]))
            .collect();
        let resp = vec![IkeProposal::parse("aes256gcm16-prfsha384-curve25519").unwrap()];
        let (suite, num, _) = choose_ike(&resp, &offers).unwrap();
        assert_eq!(num, 2);
        assert_eq!(suite.dh, DhGroup::Curve25519);
        let chosen = IkeProposal {
            encr: vec![suite.encr],
            integ: vec![suite.integ],
            prf: vec![suite.prf],
            dh: vec![suite.dh],
        }
        .to_wire(num, vec![]);
        assert_eq!(
            accept_ike(&init, std::slice::from_ref(&chosen)).unwrap().0,
            suite
        );
        // A transform we did not offer in that proposal is refused.
        let mut bad = chosen;
        bad.num = 1;
        assert!(accept_ike(&init, &[bad]).is_none());
        let none = vec![IkeProposal::parse("aes128gcm16-prfsha512-ecp256").unwrap()];
        assert!(choose_ike(&none, &offers).is_none());
    }

    #[test]
    fn esp_choice_with_and_without_pfs() {
        let ours = vec![EspProposal::parse("aes256gcm16-noesn-modp2048").unwrap()];
        let theirs = EspProposal::parse("aes128gcm16-aes256gcm16-esn-noesn-modp2048").unwrap();
        let offer = theirs.to_wire(1, 0x1234_5678, true);
        let (s, _, spi) = choose_esp(&ours, std::slice::from_ref(&offer), ChildKe::With).unwrap();
        assert_eq!(s.cipher, Cipher::Aes256Gcm16);
        assert!(!s.esn);
        assert_eq!(s.dh, Some(DhGroup::Modp2048));
        assert_eq!(spi, 0x1234_5678u32.to_be_bytes());
        // IKE_AUTH: no KE, no DH transforms offered.
        let offer = theirs.to_wire(1, 1, false);
        assert_eq!(
            choose_esp(&ours, std::slice::from_ref(&offer), ChildKe::Auth)
                .unwrap()
                .0
                .dh,
            None
        );
        // A rekey without KE does not get past a policy asking for PFS.
        assert!(choose_esp(&ours, &[offer], ChildKe::Without).is_none());
        // ESN only vs no-ESN only: nothing in common.
        let esn_only = EspProposal::parse("aes256gcm16-esn")
            .unwrap()
            .to_wire(1, 5, false);
        assert!(choose_esp(&ours, &[esn_only], ChildKe::Auth).is_none());
    }
}
