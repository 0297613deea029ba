//! Typed payload bodies (RFC 7296 3.3-3.13): decoding from [`RawPayload::body`] and encoding
//! through [`Payload`].
//!
//! [`RawPayload::body`]: super::RawPayload::body

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    ATTR_KEY_LENGTH, AuthMethod, EncodeError, Header, IKE_HEADER_LEN, IdType, NotifyType,
    PayloadType, ProtocolId, RawPayload, Reader, TransformType, TsType, WireError,
    emit_generic_header, field,
};

/// Last-substruc values (RFC 7296 3.3.1, 3.3.2).
const MORE_PROPOSALS: u8 = 2;
const MORE_TRANSFORMS: u8 = 3;
const LAST: u8 = 0;

/// Attribute format bit: set for TV (2-byte value), clear for TLV (RFC 7296 3.3.5).
const ATTR_TV: u16 = 0x8000;

/// Overwrites a big-endian u16 length placeholder at `at` (written by the caller).
fn patch_u16(out: &mut [u8], at: usize, len: usize, what: &'static str) -> Result<(), EncodeError> {
    out[at..at + 2].copy_from_slice(&field::<u16>(len, what)?.to_be_bytes());
    Ok(())
}

/// A transform attribute (RFC 7296 3.3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    /// Type/value form (AF = 1); `atype` is the 15-bit type.
    Tv { atype: u16, value: u16 },
    /// Type/length/value form (AF = 0); `atype` is the 15-bit type.
    Tlv { atype: u16, value: Vec<u8> },
}

/// A transform substructure (RFC 7296 3.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    pub ttype: TransformType,
    pub id: u16,
    pub attrs: Vec<Attribute>,
}

impl Transform {
    pub fn new(ttype: TransformType, id: u16) -> Self {
        Transform {
            ttype,
            id,
            attrs: Vec::new(),
        }
    }

    /// A transform with a Key Length attribute (e.g. ENCR_AES_CBC / ENCR_AES_GCM_*).
    pub fn with_key_len(ttype: TransformType, id: u16, bits: u16) -> Self {
        Transform {
            ttype,
            id,
            attrs: vec![Attribute::Tv {
                atype: ATTR_KEY_LENGTH,
                value: bits,
            }],
        }
    }

    /// The Key Length attribute, if present.
    pub fn key_len(&self) -> Option<u16> {
        self.attrs.iter().find_map(|a| match a {
            Attribute::Tv { atype, value } if *atype == ATTR_KEY_LENGTH => Some(*value),
            _ => None,
        })
    }
}

/// A proposal substructure (RFC 7296 3.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: ProtocolId,
    /// Empty in IKE_SA_INIT, 8 bytes when rekeying an IKE SA, 4 bytes for ESP/AH.
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// Decodes an SA payload body into its proposals. Checks the last-substruc fields (0 or 2
/// for proposals, 0 or 3 for transforms, 0 exactly on the last one), every length, and that
/// each proposal's transform count matches its transforms. Does not check proposal numbering
/// or which transforms a protocol needs: that is policy, not syntax.
pub fn parse_sa(body: &[u8]) -> Result<Vec<Proposal>, WireError> {
    if body.is_empty() {
        return Err(WireError::Empty { what: "SA payload" });
    }
    let mut proposals = Vec::new();
    let mut r = Reader::new(body);
    loop {
        let what = "proposal";
        let last = r.u8(what)?;
        if last != LAST && last != MORE_PROPOSALS {
            return Err(WireError::BadSubstructure {
                what: "proposal last-substruc",
            });
        }
        let _reserved = r.u8(what)?;
        let len = usize::from(r.u16(what)?);
        let rest = len.checked_sub(4).ok_or(WireError::BadLength { what })?;
        let mut p = Reader::new(r.take(rest, what)?);
        let num = p.u8(what).map_err(|_| WireError::BadLength { what })?;
        let protocol = ProtocolId(p.u8(what).map_err(|_| WireError::BadLength { what })?);
        let spi_size = p.u8(what).map_err(|_| WireError::BadLength { what })?;
        let count = p.u8(what).map_err(|_| WireError::BadLength { what })?;
        let spi = p
            .take(usize::from(spi_size), "proposal SPI")
            .map_err(|_| WireError::BadLength {
                what: "proposal SPI",
            })?
            .to_vec();
        let transforms = parse_transforms(p.rest())?;
        if transforms.len() != usize::from(count) {
            return Err(WireError::BadSubstructure {
                what: "proposal transform count",
            });
        }
        proposals.push(Proposal {
            num,
            protocol,
            spi,
            transforms,
        });
        if last == LAST {
            break;
        }
        if r.is_empty() {
            return Err(WireError::BadSubstructure {
                what: "proposal last-substruc",
            });
        }
    }
    if !r.is_empty() {
        return Err(WireError::TrailingBytes {
            what: "last proposal",
        });
    }
    Ok(proposals)
}

fn parse_transforms(buf: &[u8]) -> Result<Vec<Transform>, WireError> {
    let mut transforms = Vec::new();
    let mut r = Reader::new(buf);
    if r.is_empty() {
        return Ok(transforms);
    }
    loop {
        let what = "transform";
        let last = r.u8(what)?;
        if last != LAST && last != MORE_TRANSFORMS {
            return Err(WireError::BadSubstructure {
                what: "transform last-substruc",
            });
        }
        let _reserved = r.u8(what)?;
        let len = usize::from(r.u16(what)?);
        let rest = len.checked_sub(4).ok_or(WireError::BadLength { what })?;
        let mut t = Reader::new(r.take(rest, what)?);
        let ttype = TransformType(t.u8(what).map_err(|_| WireError::BadLength { what })?);
        let _reserved = t.u8(what).map_err(|_| WireError::BadLength { what })?;
        let id = t.u16(what).map_err(|_| WireError::BadLength { what })?;
        let attrs = parse_attributes(t.rest())?;
        transforms.push(Transform { ttype, id, attrs });
        if last == LAST {
            break;
        }
        if r.is_empty() {
            return Err(WireError::BadSubstructure {
                what: "transform last-substruc",
            });
        }
    }
    if !r.is_empty() {
        return Err(WireError::TrailingBytes {
            what: "last transform",
        });
    }
    Ok(transforms)
}

fn parse_attributes(buf: &[u8]) -> Result<Vec<Attribute>, WireError> {
    let mut attrs = Vec::new();
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let what = "transform attribute";
        let t = r.u16(what)?;
        let v = r.u16(what)?;
        let atype = t & !ATTR_TV;
        if t & ATTR_TV != 0 {
            attrs.push(Attribute::Tv { atype, value: v });
        } else {
            let value = r.take(usize::from(v), what)?.to_vec();
            attrs.push(Attribute::Tlv { atype, value });
        }
    }
    Ok(attrs)
}

fn emit_sa(proposals: &[Proposal], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    for (i, p) in proposals.iter().enumerate() {
        let start = out.len();
        out.push(if i + 1 == proposals.len() {
            LAST
        } else {
            MORE_PROPOSALS
        });
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        out.push(p.num);
        out.push(p.protocol.0);
        out.push(field(p.spi.len(), "proposal SPI")?);
        out.push(field(p.transforms.len(), "proposal transform list")?);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            let tstart = out.len();
            out.push(if j + 1 == p.transforms.len() {
                LAST
            } else {
                MORE_TRANSFORMS
            });
            out.push(0);
            out.extend_from_slice(&[0, 0]);
            out.push(t.ttype.0);
            out.push(0);
            out.extend_from_slice(&t.id.to_be_bytes());
            for a in &t.attrs {
                match a {
                    Attribute::Tv { atype, value } => {
                        out.extend_from_slice(&(atype | ATTR_TV).to_be_bytes());
                        out.extend_from_slice(&value.to_be_bytes());
                    }
                    Attribute::Tlv { atype, value } => {
                        out.extend_from_slice(&(atype & !ATTR_TV).to_be_bytes());
                        out.extend_from_slice(
                            &field::<u16>(value.len(), "attribute")?.to_be_bytes(),
                        );
                        out.extend_from_slice(value);
                    }
                }
            }
            let tlen = out.len() - tstart;
            patch_u16(out, tstart + 2, tlen, "transform")?;
        }
        let plen = out.len() - start;
        patch_u16(out, start + 2, plen, "proposal")?;
    }
    Ok(())
}

/// Key Exchange payload body (RFC 7296 3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ke<'a> {
    /// Diffie-Hellman group number (a `transform_id::DH_*`).
    pub group: u16,
    pub data: &'a [u8],
}

impl<'a> Ke<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let group = r.u16("KE payload")?;
        let _reserved = r.u16("KE payload")?;
        Ok(Ke {
            group,
            data: r.rest(),
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(self.data);
    }
}

/// Identification payload body (RFC 7296 3.5), IDi or IDr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id<'a> {
    pub id_type: IdType,
    pub data: &'a [u8],
}

impl<'a> Id<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let id_type = IdType(r.u8("ID payload")?);
        let _reserved = r.take(3, "ID payload")?;
        Ok(Id {
            id_type,
            data: r.rest(),
        })
    }

    /// The payload body (type, three reserved zero bytes, data): the IDx' that the AUTH
    /// payload's MAC covers (RFC 7296 2.15).
    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.data.len());
        v.extend_from_slice(&[self.id_type.0, 0, 0, 0]);
        v.extend_from_slice(self.data);
        v
    }
}

/// Authentication payload body (RFC 7296 3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auth<'a> {
    pub method: AuthMethod,
    pub data: &'a [u8],
}

impl<'a> Auth<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let method = AuthMethod(r.u8("AUTH payload")?);
        let _reserved = r.take(3, "AUTH payload")?;
        Ok(Auth {
            method,
            data: r.rest(),
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.method.0, 0, 0, 0]);
        out.extend_from_slice(self.data);
    }
}

/// Notify payload body (RFC 7296 3.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notify<'a> {
    /// 0 when the notification is not about a particular SA.
    pub protocol: ProtocolId,
    pub spi: &'a [u8],
    pub ntype: NotifyType,
    pub data: &'a [u8],
}

impl<'a> Notify<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let protocol = ProtocolId(r.u8("Notify payload")?);
        let spi_size = r.u8("Notify payload")?;
        let ntype = NotifyType(r.u16("Notify payload")?);
        let spi = r.take(usize::from(spi_size), "Notify SPI")?;
        Ok(Notify {
            protocol,
            spi,
            ntype,
            data: r.rest(),
        })
    }

    /// A notification not tied to an SA: protocol 0, no SPI.
    pub fn new(ntype: NotifyType, data: &'a [u8]) -> Self {
        Notify {
            protocol: ProtocolId(0),
            spi: &[],
            ntype,
            data,
        }
    }

    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.protocol.0);
        out.push(field(self.spi.len(), "Notify SPI")?);
        out.extend_from_slice(&self.ntype.0.to_be_bytes());
        out.extend_from_slice(self.spi);
        out.extend_from_slice(self.data);
        Ok(())
    }
}

/// Delete payload body (RFC 7296 3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete<'a> {
    pub protocol: ProtocolId,
    /// 0 for IKE (the SPIs are in the header), 4 for ESP and AH.
    pub spi_size: u8,
    /// Each exactly `spi_size` bytes.
    pub spis: Vec<&'a [u8]>,
}

impl<'a> Delete<'a> {
    /// Checks that the SPIs fill the body exactly. An SPI count with an SPI size of 0 is
    /// rejected: it describes nothing and only costs memory.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let what = "Delete payload";
        let protocol = ProtocolId(r.u8(what)?);
        let spi_size = r.u8(what)?;
        let count = usize::from(r.u16(what)?);
        let rest = r.rest();
        if spi_size == 0 {
            if count != 0 {
                return Err(WireError::BadSubstructure {
                    what: "Delete payload SPI count",
                });
            }
            if !rest.is_empty() {
                return Err(WireError::TrailingBytes { what });
            }
            return Ok(Delete {
                protocol,
                spi_size,
                spis: Vec::new(),
            });
        }
        if rest.len() != count * usize::from(spi_size) {
            return Err(WireError::BadLength {
                what: "Delete payload SPIs",
            });
        }
        Ok(Delete {
            protocol,
            spi_size,
            spis: rest.chunks_exact(usize::from(spi_size)).collect(),
        })
    }

    /// `Err(DeleteSpiSize)` if an SPI is not `spi_size` bytes long.
    fn emit(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.protocol.0);
        out.push(self.spi_size);
        out.extend_from_slice(&field::<u16>(self.spis.len(), "Delete SPI list")?.to_be_bytes());
        for spi in &self.spis {
            if spi.len() != usize::from(self.spi_size) {
                return Err(EncodeError::DeleteSpiSize {
                    len: spi.len(),
                    spi_size: self.spi_size,
                });
            }
            out.extend_from_slice(spi);
        }
        Ok(())
    }
}

/// An IPv4 or IPv6 address-range traffic selector (RFC 7296 3.13.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSelector {
    /// 0 for any protocol.
    pub ip_proto: u8,
    pub start_port: u16,
    pub end_port: u16,
    /// Same address family as `end`; it decides the TS type (7 or 8).
    pub start: IpAddr,
    pub end: IpAddr,
}

impl TrafficSelector {
    /// Any protocol, any port, the given address range.
    pub fn range(start: IpAddr, end: IpAddr) -> Self {
        TrafficSelector {
            ip_proto: 0,
            start_port: 0,
            end_port: 0xffff,
            start,
            end,
        }
    }

    /// `Err(BadTrafficSelector)` unless start and end are of the same family (the only
    /// thing the encoder needs; ordering is policy).
    pub fn check(&self) -> Result<(), WireError> {
        match (self.start, self.end) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => Ok(()),
            _ => Err(WireError::BadTrafficSelector),
        }
    }

    pub fn ts_type(&self) -> TsType {
        match self.start {
            IpAddr::V4(_) => TsType::IPV4_ADDR_RANGE,
            IpAddr::V6(_) => TsType::IPV6_ADDR_RANGE,
        }
    }
}

/// One traffic selector of a TSi/TSr payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ts {
    /// Type 7 or 8, by address family.
    Range(TrafficSelector),
    /// Any other type. `data` is the selector after its 4-byte type/octet/length header;
    /// the second octet (IP protocol for types 7 and 8, reserved in the other registered
    /// types) is not kept and is emitted as 0.
    Unknown { ts_type: TsType, data: Vec<u8> },
}

/// Length of an IPv4 / IPv6 range selector.
const TS_V4_LEN: usize = 16;
const TS_V6_LEN: usize = 40;

/// Decodes a TSi/TSr body: number of TSs, three reserved bytes, the selectors. The count
/// must match and be at least one; range selectors must have the length of their type.
pub fn parse_ts(body: &[u8]) -> Result<Vec<Ts>, WireError> {
    let mut r = Reader::new(body);
    let what = "TS payload";
    let count = r.u8(what)?;
    let _reserved = r.take(3, what)?;
    if count == 0 {
        return Err(WireError::Empty { what });
    }
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let what = "traffic selector";
        let ts_type = TsType(r.u8(what)?);
        let ip_proto = r.u8(what)?;
        let len = usize::from(r.u16(what)?);
        let rest = len.checked_sub(4).ok_or(WireError::BadLength { what })?;
        let mut s = Reader::new(r.take(rest, what)?);
        let v6 = match ts_type {
            TsType::IPV4_ADDR_RANGE if len == TS_V4_LEN => false,
            TsType::IPV6_ADDR_RANGE if len == TS_V6_LEN => true,
            TsType::IPV4_ADDR_RANGE | TsType::IPV6_ADDR_RANGE => {
                return Err(WireError::BadTrafficSelector);
            }
            _ => {
                out.push(Ts::Unknown {
                    ts_type,
                    data: s.rest().to_vec(),
                });
                continue;
            }
        };
        let start_port = s.u16(what)?;
        let end_port = s.u16(what)?;
        let (start, end) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::from(s.array::<16>(what)?)),
                IpAddr::V6(Ipv6Addr::from(s.array::<16>(what)?)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::from(s.array::<4>(what)?)),
                IpAddr::V4(Ipv4Addr::from(s.array::<4>(what)?)),
            )
        };
        out.push(Ts::Range(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            start,
            end,
        }));
    }
    if !r.is_empty() {
        return Err(WireError::TrailingBytes {
            what: "last traffic selector",
        });
    }
    Ok(out)
}

fn emit_ts(selectors: &[Ts], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(field(selectors.len(), "TS list")?);
    out.extend_from_slice(&[0, 0, 0]);
    for ts in selectors {
        match ts {
            Ts::Range(s) => {
                let start = out.len();
                out.push(s.ts_type().0);
                out.push(s.ip_proto);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&s.start_port.to_be_bytes());
                out.extend_from_slice(&s.end_port.to_be_bytes());
                match (s.start, s.end) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        out.extend_from_slice(&a.octets());
                        out.extend_from_slice(&b.octets());
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        out.extend_from_slice(&a.octets());
                        out.extend_from_slice(&b.octets());
                    }
                    _ => return Err(EncodeError::MixedFamilies),
                }
                let len = out.len() - start;
                patch_u16(out, start + 2, len, "traffic selector")?;
            }
            Ts::Unknown { ts_type, data } => {
                out.push(ts_type.0);
                out.push(0);
                out.extend_from_slice(
                    &field::<u16>(4 + data.len(), "traffic selector")?.to_be_bytes(),
                );
                out.extend_from_slice(data);
            }
        }
    }
    Ok(())
}

/// A payload to encode, or a decoded one (see [`Payload::decode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Sa(Vec<Proposal>),
    Ke(Ke<'a>),
    Nonce(&'a [u8]),
    IdI(Id<'a>),
    IdR(Id<'a>),
    Auth(Auth<'a>),
    Notify(Notify<'a>),
    Delete(Delete<'a>),
    TsI(Vec<Ts>),
    TsR(Vec<Ts>),
    VendorId(&'a [u8]),
    /// Any payload given as its body, e.g. one of a type this module has no struct for.
    Raw {
        ptype: PayloadType,
        critical: bool,
        body: &'a [u8],
    },
}

impl<'a> Payload<'a> {
    /// Decodes a payload with the typed parser of its type; types without one (CERT, CP,
    /// EAP, SK, unknown ...) come back as [`Payload::Raw`].
    pub fn decode(raw: &RawPayload<'a>) -> Result<Payload<'a>, WireError> {
        let body = raw.body;
        Ok(match raw.ptype {
            PayloadType::SA => Payload::Sa(parse_sa(body)?),
            PayloadType::KE => Payload::Ke(Ke::parse(body)?),
            PayloadType::NONCE => Payload::Nonce(body),
            PayloadType::IDI => Payload::IdI(Id::parse(body)?),
            PayloadType::IDR => Payload::IdR(Id::parse(body)?),
            PayloadType::AUTH => Payload::Auth(Auth::parse(body)?),
            PayloadType::NOTIFY => Payload::Notify(Notify::parse(body)?),
            PayloadType::DELETE => Payload::Delete(Delete::parse(body)?),
            PayloadType::TSI => Payload::TsI(parse_ts(body)?),
            PayloadType::TSR => Payload::TsR(parse_ts(body)?),
            PayloadType::VENDOR_ID => Payload::VendorId(body),
            ptype => Payload::Raw {
                ptype,
                critical: raw.critical,
                body,
            },
        })
    }

    pub fn ptype(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::Raw { ptype, .. } => *ptype,
        }
    }

    fn critical(&self) -> bool {
        matches!(self, Payload::Raw { critical: true, .. })
    }

    /// Appends the body (no generic header).
    fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Payload::Sa(p) => emit_sa(p, out)?,
            Payload::Ke(k) => k.emit(out),
            Payload::Nonce(b) | Payload::VendorId(b) | Payload::Raw { body: b, .. } => {
                out.extend_from_slice(b)
            }
            Payload::IdI(id) | Payload::IdR(id) => {
                out.extend_from_slice(&[id.id_type.0, 0, 0, 0]);
                out.extend_from_slice(id.data);
            }
            Payload::Auth(a) => a.emit(out),
            Payload::Notify(n) => n.emit(out)?,
            Payload::Delete(d) => d.emit(out)?,
            Payload::TsI(ts) | Payload::TsR(ts) => emit_ts(ts, out)?,
        }
        Ok(())
    }
}

/// Appends `payloads` as a chain: generic headers with the right next-payload and length
/// fields, the last one's next payload NONE. Returns the first payload's type (NONE if the
/// list is empty), for the IKE header or the SK payload's next-payload field.
///
/// An error if a payload or one of its counted fields is too long for its length field,
/// if a Delete SPI is not `spi_size` long, or if a traffic selector mixes address families;
/// `out` then holds a partial chain and must be discarded.
pub fn emit_chain(payloads: &[Payload<'_>], out: &mut Vec<u8>) -> Result<PayloadType, EncodeError> {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads
            .get(i + 1)
            .map_or(PayloadType::NONE, Payload::ptype);
        let start = out.len();
        emit_generic_header(next, p.critical(), 0, out);
        p.emit_body(out)?;
        let len = out.len() - start;
        patch_u16(out, start + 2, len, "payload")?;
    }
    Ok(payloads.first().map_or(PayloadType::NONE, Payload::ptype))
}

/// A complete unencrypted message. `header.next_payload` and `header.length` are set here;
/// the other fields are taken as given. Errors as [`emit_chain`], or if the message exceeds
/// 4 GiB.
pub fn emit_message(header: &Header, payloads: &[Payload<'_>]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    let mut h = *header;
    h.next_payload = payloads.first().map_or(PayloadType::NONE, Payload::ptype);
    h.length = 0;
    h.emit(&mut out);
    emit_chain(payloads, &mut out)?;
    let len: u32 = field(out.len(), "IKE message")?;
    out[IKE_HEADER_LEN - 4..IKE_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}
