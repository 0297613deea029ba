//! IKEv2 message codec (RFC 7296 section 3).
//!
//! Parsing is zero-copy: [`Message::parse`] checks the header and walks the generic payload
//! chain once, handing out [`RawPayload`]s that borrow the datagram; the typed parsers
//! ([`parse_sa`], [`Ke::parse`], [`Notify::parse`], ...) decode one payload body each and
//! check every length before reading. Code points are open newtypes, so values this module
//! does not know (new IANA assignments, private use) are kept and re-emitted unchanged.
//!
//! Encoding goes through [`Payload`]: [`emit_chain`] writes generic headers with the right
//! next-payload and length fields, [`emit_message`] adds the IKE header. The SK payload is
//! built by the caller (its body is ciphertext) with [`Header::emit`] and
//! [`emit_generic_header`]. Encoding never panics: a value that does not fit its length or
//! count field is an [`EncodeError`] (what we answer can be shaped by the peer, e.g. its
//! traffic selectors, and a panic would take down every tenant's tunnels).

mod body;
mod types;

#[cfg(test)]
mod tests;

pub use body::*;
pub use types::*;

/// Length of the fixed IKE header (RFC 7296 3.1).
pub const IKE_HEADER_LEN: usize = 28;

/// Length of the generic payload header (RFC 7296 3.2).
pub const GENERIC_HEADER_LEN: usize = 4;

/// Bits of the IKE header's flags octet (RFC 7296 3.1).
pub mod flags {
    /// Set by the original initiator of the IKE SA.
    pub const INITIATOR: u8 = 0x08;
    /// "Can speak a higher major version"; never set by IKEv2 implementations.
    pub const VERSION: u8 = 0x10;
    /// Set in responses.
    pub const RESPONSE: u8 = 0x20;
}

/// Transform attribute type of the key length attribute (RFC 7296 3.3.5), always TV-encoded.
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Why a message or payload could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("bad length field in {what}")]
    BadLength { what: &'static str },
    #[error("trailing bytes after {what}")]
    TrailingBytes { what: &'static str },
    #[error("unsupported IKE major version {major}")]
    UnsupportedMajorVersion { major: u8 },
    #[error("malformed {what}")]
    BadSubstructure { what: &'static str },
    #[error("SK payload is not the last payload of the message")]
    SkNotLast,
    #[error("malformed traffic selector")]
    BadTrafficSelector,
    #[error("empty {what}")]
    Empty { what: &'static str },
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A length or count that its field cannot hold (e.g. more than 255 traffic selectors).
    #[error("{what} too long to encode ({len}; the field holds at most {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: u64,
    },
    #[error("traffic selector mixes address families")]
    MixedFamilies,
    #[error("Delete payload SPI of {len} bytes where the SPI size is {spi_size}")]
    DeleteSpiSize { len: usize, spi_size: u8 },
}

/// Converts a length or count to its on-wire field (u8, u16 or u32). A silently wrapped
/// length would produce a message that parses differently, so a value that does not fit is
/// an error.
pub fn field<T: TryFrom<usize>>(len: usize, what: &'static str) -> Result<T, EncodeError> {
    T::try_from(len).map_err(|_| EncodeError::TooLong {
        what,
        len,
        max: u64::MAX >> (64 - 8 * std::mem::size_of::<T>().min(8)),
    })
}

/// A cursor over a byte slice; every read is bounds checked and names what it was reading.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(WireError::Truncated { what })?;
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], WireError> {
        let s = self.take(N, what)?;
        // `take` returned exactly N bytes.
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The fixed IKE header (RFC 7296 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ispi: u64,
    pub rspi: u64,
    pub next_payload: PayloadType,
    pub major: u8,
    pub minor: u8,
    pub exchange: ExchangeType,
    pub flags: u8,
    pub message_id: u32,
    /// Length of the whole message, header included.
    pub length: u32,
}

impl Header {
    /// Decodes the first 28 bytes of `buf`. Checks nothing beyond their presence; in
    /// particular not the major version (see [`Message::parse`]).
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader::new(buf);
        let what = "IKE header";
        let ispi = r.u64(what)?;
        let rspi = r.u64(what)?;
        let next_payload = PayloadType(r.u8(what)?);
        let version = r.u8(what)?;
        let exchange = ExchangeType(r.u8(what)?);
        let flags = r.u8(what)?;
        let message_id = r.u32(what)?;
        let length = r.u32(what)?;
        Ok(Header {
            ispi,
            rspi,
            next_payload,
            major: version >> 4,
            minor: version & 0x0f,
            exchange,
            flags,
            message_id,
            length,
        })
    }

    /// Appends the 28 header bytes as given; the caller sets `length` and `next_payload`.
    /// Only the low four bits of `major` and `minor` are kept.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ispi.to_be_bytes());
        out.extend_from_slice(&self.rspi.to_be_bytes());
        out.push(self.next_payload.0);
        out.push((self.major << 4) | (self.minor & 0x0f));
        out.push(self.exchange.0);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    pub fn is_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }
}

/// One payload of a chain, with its generic header decoded (RFC 7296 3.2).
#[derive(Clone, Copy, Debug)]
pub struct RawPayload<'a> {
    /// This payload's type (named by the previous payload's next-payload field).
    pub ptype: PayloadType,
    /// This payload's own next-payload field. For SK/SKF it names the first inner payload.
    pub next: PayloadType,
    pub critical: bool,
    /// The body after the 4-byte generic header.
    pub body: &'a [u8],
}

/// A whole IKE message: the header and its (outer) payload chain.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub header: Header,
    /// The whole datagram (header included), e.g. for the AUTH octets or retransmit matching.
    pub bytes: &'a [u8],
    pub payloads: Vec<RawPayload<'a>>,
}

impl<'a> Message<'a> {
    /// Decodes a datagram that holds exactly one IKE message.
    ///
    /// The major version is checked before the length so that a responder can still answer
    /// INVALID_MAJOR_VERSION (RFC 7296 2.5) to a message of a later version. An SK (46) or
    /// SKF (53) payload must be the last one; its next-payload field names the first inner
    /// payload and is not followed.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, WireError> {
        let header = Header::parse(buf)?;
        if header.major != 2 {
            return Err(WireError::UnsupportedMajorVersion {
                major: header.major,
            });
        }
        let what = "IKE message";
        let len = usize::try_from(header.length).map_err(|_| WireError::BadLength { what })?;
        if len < IKE_HEADER_LEN {
            return Err(WireError::BadLength { what });
        }
        if len > buf.len() {
            return Err(WireError::Truncated { what });
        }
        if len < buf.len() {
            return Err(WireError::TrailingBytes { what });
        }
        let payloads = walk_chain(header.next_payload, &buf[IKE_HEADER_LEN..], true)?;
        Ok(Message {
            header,
            bytes: buf,
            payloads,
        })
    }

    /// The first payload of type `t` in the outer chain.
    pub fn find(&self, t: PayloadType) -> Option<&RawPayload<'a>> {
        self.payloads.iter().find(|p| p.ptype == t)
    }
}

/// Decodes a payload chain that starts with a payload of type `first` and ends (next
/// payload NONE) exactly at the end of `buf`: the plaintext of an SK payload, padding and
/// pad length already removed. An SK or SKF payload inside it is rejected (no nesting).
pub fn parse_chain<'a>(
    first: PayloadType,
    buf: &'a [u8],
) -> Result<Vec<RawPayload<'a>>, WireError> {
    walk_chain(first, buf, false)
}

fn walk_chain<'a>(
    first: PayloadType,
    buf: &'a [u8],
    outer: bool,
) -> Result<Vec<RawPayload<'a>>, WireError> {
    let mut payloads = Vec::new();
    let mut r = Reader::new(buf);
    let mut ptype = first;
    while ptype != PayloadType::NONE {
        let what = "payload header";
        let next = PayloadType(r.u8(what)?);
        let critical = r.u8(what)? & 0x80 != 0;
        let len = usize::from(r.u16(what)?);
        let body_len = len
            .checked_sub(GENERIC_HEADER_LEN)
            .ok_or(WireError::BadLength { what: "payload" })?;
        let body = r.take(body_len, "payload")?;
        payloads.push(RawPayload {
            ptype,
            next,
            critical,
            body,
        });
        if ptype == PayloadType::SK || ptype == PayloadType::SKF {
            if !outer {
                return Err(WireError::BadSubstructure {
                    what: "SK payload inside an encrypted payload",
                });
            }
            // RFC 7296 3.14 / RFC 7383 2.5: the encrypted payload ends the message.
            if !r.is_empty() {
                return Err(WireError::SkNotLast);
            }
            return Ok(payloads);
        }
        ptype = next;
    }
    if !r.is_empty() {
        return Err(WireError::TrailingBytes {
            what: "payload chain",
        });
    }
    Ok(payloads)
}

/// Runs every parser over `buf` (as a message, as a bare chain, each payload body through
/// every typed parser) and checks that whatever decodes re-encodes to the same value. Shared
/// by the fuzz target and the mutation test; panics when a property does not hold.
#[doc(hidden)]
pub fn exercise(buf: &[u8]) {
    let _ = Header::parse(buf);
    if let Some((&first, rest)) = buf.split_first()
        && let Ok(chain) = parse_chain(PayloadType(first), rest)
    {
        exercise_payloads(&chain);
    }
    let Ok(msg) = Message::parse(buf) else {
        return;
    };
    exercise_payloads(&msg.payloads);
    let _ = msg.find(PayloadType::SK);
    let Ok(decoded) = msg
        .payloads
        .iter()
        .map(Payload::decode)
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let again = emit_message(&msg.header, &decoded).expect("a decoded message re-encodes");
    let reparsed = Message::parse(&again).expect("re-encoded message parses");
    let mut h = msg.header;
    h.length = reparsed.header.length;
    assert_eq!(reparsed.header, h, "header survives a round trip");
    let redecoded: Vec<_> = reparsed
        .payloads
        .iter()
        .map(|p| Payload::decode(p).expect("re-encoded payload decodes"))
        .collect();
    assert_eq!(redecoded, decoded, "payloads survive a round trip");
}

fn exercise_payloads(payloads: &[RawPayload<'_>]) {
    for p in payloads {
        let b = p.body;
        let _ = parse_chain(p.next, b);
        let _ = parse_sa(b);
        let _ = Ke::parse(b);
        if let Ok(id) = Id::parse(b) {
            let again = id.body();
            assert_eq!((again[0], &again[4..]), (b[0], id.data));
        }
        let _ = Auth::parse(b);
        let _ = Notify::parse(b);
        let _ = Delete::parse(b);
        let _ = parse_ts(b);
        let _ = Payload::decode(p);
    }
}

/// Appends a generic payload header (RFC 7296 3.2); `len` includes these 4 bytes.
pub fn emit_generic_header(next: PayloadType, critical: bool, len: u16, out: &mut Vec<u8>) {
    out.push(next.0);
    out.push(if critical { 0x80 } else { 0 });
    out.extend_from_slice(&len.to_be_bytes());
}
