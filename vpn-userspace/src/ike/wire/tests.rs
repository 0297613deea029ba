//! Byte-level tests from the RFC 7296 section 3 layouts, round trips, and robustness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::transform_id::*;
use super::*;

mod oracle;

const ISPI: u64 = 0x0102_0304_0506_0708;
const RSPI: u64 = 0x1112_1314_1516_1718;

fn header(exchange: ExchangeType, flags: u8, message_id: u32) -> Header {
    Header {
        ispi: ISPI,
        rspi: RSPI,
        next_payload: PayloadType::NONE,
        major: 2,
        minor: 0,
        exchange,
        flags,
        message_id,
        length: 0,
    }
}

/// IKE header (RFC 7296 3.1) for the given next payload, exchange and total length.
fn header_bytes(next: u8, exchange: u8, flags: u8, msg_id: u32, len: u32) -> Vec<u8> {
    let mut v = vec![
        1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
    ];
    v.extend_from_slice(&[next, 0x20, exchange, flags]);
    v.extend_from_slice(&msg_id.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// Generic payload header + body.
fn payload(next: u8, critical: bool, body: &[u8]) -> Vec<u8> {
    let mut v = vec![next, if critical { 0x80 } else { 0 }];
    v.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn message(next: u8, exchange: u8, flags: u8, msg_id: u32, chain: &[u8]) -> Vec<u8> {
    let mut v = header_bytes(next, exchange, flags, msg_id, (28 + chain.len()) as u32);
    v.extend_from_slice(chain);
    v
}

/// SA body: one IKE proposal, AES-CBC-256 / HMAC-SHA2-256 PRF / HMAC-SHA2-256-128 / ECP-256.
const SA_IKE: &[u8] = &[
    // proposal: last, reserved, length 44, num 1, IKE, spi size 0, 4 transforms
    0, 0, 0, 44, 1, 1, 0, 4, //
    // transform ENCR AES-CBC, key length TV attribute 256
    3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0x01, 0x00, //
    // PRF HMAC-SHA2-256
    3, 0, 0, 8, 2, 0, 0, 5, //
    // INTEG HMAC-SHA2-256-128
    3, 0, 0, 8, 3, 0, 0, 12, //
    // DH ECP-256
    0, 0, 0, 8, 4, 0, 0, 19,
];

fn sa_ike() -> Vec<Proposal> {
    vec![Proposal {
        num: 1,
        protocol: ProtocolId::IKE,
        spi: vec![],
        transforms: vec![
            Transform::with_key_len(TransformType::ENCR, ENCR_AES_CBC, 256),
            Transform::new(TransformType::PRF, PRF_HMAC_SHA2_256),
            Transform::new(TransformType::INTEG, AUTH_HMAC_SHA2_256_128),
            Transform::new(TransformType::DH, DH_ECP_256),
        ],
    }]
}

/// SA body: two ESP proposals with SPIs (AES-GCM-16-128 + ESN; AES-CBC-128 + SHA1).
const SA_ESP: &[u8] = &[
    2, 0, 0, 32, 1, 3, 4, 2, 0xaa, 0xbb, 0xcc, 0xdd, //
    3, 0, 0, 12, 1, 0, 0, 20, 0x80, 14, 0, 128, //
    0, 0, 0, 8, 5, 0, 0, 1, //
    0, 0, 0, 32, 2, 3, 4, 2, 0xaa, 0xbb, 0xcc, 0xdd, //
    3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0, 128, //
    0, 0, 0, 8, 3, 0, 0, 2,
];

fn sa_esp() -> Vec<Proposal> {
    let spi = vec![0xaa, 0xbb, 0xcc, 0xdd];
    vec![
        Proposal {
            num: 1,
            protocol: ProtocolId::ESP,
            spi: spi.clone(),
            transforms: vec![
                Transform::with_key_len(TransformType::ENCR, ENCR_AES_GCM_16, 128),
                Transform::new(TransformType::ESN, ESN_YES),
            ],
        },
        Proposal {
            num: 2,
            protocol: ProtocolId::ESP,
            spi,
            transforms: vec![
                Transform::with_key_len(TransformType::ENCR, ENCR_AES_CBC, 128),
                Transform::new(TransformType::INTEG, AUTH_HMAC_SHA1_96),
            ],
        },
    ]
}

fn emit_one(p: Payload<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    assert_eq!(
        emit_chain(std::slice::from_ref(&p), &mut out).unwrap(),
        p.ptype()
    );
    out
}

/// Emits `p` alone and checks the generic header and body bytes.
fn check_emit(p: Payload<'_>, body: &[u8]) {
    assert_eq!(emit_one(p), payload(0, false, body));
}

#[test]
fn header_parse_emit() {
    let bytes = header_bytes(33, 34, 0x08, 0, 28);
    let h = Header::parse(&bytes).unwrap();
    assert_eq!(
        h,
        Header {
            ispi: ISPI,
            rspi: RSPI,
            next_payload: PayloadType::SA,
            major: 2,
            minor: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: flags::INITIATOR,
            message_id: 0,
            length: 28,
        }
    );
    assert!(h.is_initiator());
    assert!(!h.is_response());
    let mut out = Vec::new();
    h.emit(&mut out);
    assert_eq!(out, bytes);

    let mut resp = header_bytes(0, 37, 0x20, 7, 28);
    resp[17] = 0x2f; // minor version 15
    let h = Header::parse(&resp).unwrap();
    assert!(h.is_response() && !h.is_initiator());
    assert_eq!((h.major, h.minor, h.message_id), (2, 15, 7));
    assert_eq!(h.exchange, ExchangeType::INFORMATIONAL);
    let mut out = Vec::new();
    h.emit(&mut out);
    assert_eq!(out, resp);

    // Header::parse does not look at the version or length; it reads the 28 bytes only.
    let mut v3 = header_bytes(0, 34, 0, 0, 9999);
    v3[17] = 0x30;
    v3.push(0xff);
    assert_eq!(Header::parse(&v3).unwrap().major, 3);
    for n in 0..28 {
        assert_eq!(
            Header::parse(&bytes[..n]),
            Err(WireError::Truncated { what: "IKE header" })
        );
    }
}

#[test]
fn message_checks_version_and_length() {
    let empty = message(0, 37, 0x20, 1, &[]);
    let m = Message::parse(&empty).unwrap();
    assert!(m.payloads.is_empty());
    assert_eq!(m.bytes, &empty[..]);

    let mut v1 = empty.clone();
    v1[17] = 0x10;
    assert_eq!(
        Message::parse(&v1).unwrap_err(),
        WireError::UnsupportedMajorVersion { major: 1 }
    );
    // The version is reported even when the rest does not fit IKEv2's layout.
    let mut v3 = header_bytes(99, 34, 0, 0, 5000);
    v3[17] = 0x30;
    assert_eq!(
        Message::parse(&v3).unwrap_err(),
        WireError::UnsupportedMajorVersion { major: 3 }
    );

    let mut long = empty.clone();
    long.push(0);
    assert!(matches!(
        Message::parse(&long),
        Err(WireError::TrailingBytes { .. })
    ));
    let mut short = empty.clone();
    short[27] = 29;
    assert!(matches!(
        Message::parse(&short),
        Err(WireError::Truncated { .. })
    ));
    let mut tiny = empty.clone();
    tiny[27] = 27;
    assert!(matches!(
        Message::parse(&tiny),
        Err(WireError::BadLength { .. })
    ));
}

fn ike_sa_init_bytes() -> Vec<u8> {
    let ke_body = [&[0u8, 19, 0, 0][..], &[0x42; 64]].concat();
    let nat = [&[0u8, 0, 0x40, 0x04][..], &[0x5a; 20]].concat();
    let chain = [
        payload(34, false, SA_IKE),
        payload(40, false, &ke_body),
        payload(41, false, &[0x77; 32]),
        payload(0, false, &nat),
    ]
    .concat();
    message(33, 34, 0x08, 0, &chain)
}

fn ike_sa_init_payloads<'a>(ke: &'a [u8], nonce: &'a [u8], nat: &'a [u8]) -> Vec<Payload<'a>> {
    vec![
        Payload::Sa(sa_ike()),
        Payload::Ke(Ke {
            group: DH_ECP_256,
            data: ke,
        }),
        Payload::Nonce(nonce),
        Payload::Notify(Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, nat)),
    ]
}

#[test]
fn ike_sa_init_parse_and_emit() {
    let bytes = ike_sa_init_bytes();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header.exchange, ExchangeType::IKE_SA_INIT);
    let types: Vec<_> = m.payloads.iter().map(|p| p.ptype).collect();
    assert_eq!(
        types,
        [
            PayloadType::SA,
            PayloadType::KE,
            PayloadType::NONCE,
            PayloadType::NOTIFY
        ]
    );
    assert_eq!(m.payloads[3].next, PayloadType::NONE);
    assert_eq!(
        parse_sa(m.find(PayloadType::SA).unwrap().body).unwrap(),
        sa_ike()
    );
    let ke = Ke::parse(m.find(PayloadType::KE).unwrap().body).unwrap();
    assert_eq!((ke.group, ke.data), (DH_ECP_256, &[0x42; 64][..]));
    assert_eq!(m.find(PayloadType::NONCE).unwrap().body, &[0x77; 32]);
    let n = Notify::parse(m.find(PayloadType::NOTIFY).unwrap().body).unwrap();
    assert_eq!(
        n,
        Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, &[0x5a; 20])
    );
    assert!(m.find(PayloadType::AUTH).is_none());

    let payloads = ike_sa_init_payloads(&[0x42; 64], &[0x77; 32], &[0x5a; 20]);
    let h = header(ExchangeType::IKE_SA_INIT, flags::INITIATOR, 0);
    assert_eq!(emit_message(&h, &payloads).unwrap(), bytes);
    let decoded: Vec<_> = m
        .payloads
        .iter()
        .map(|p| Payload::decode(p).unwrap())
        .collect();
    assert_eq!(decoded, payloads);
}

#[test]
fn sa_parse_emit() {
    assert_eq!(parse_sa(SA_IKE).unwrap(), sa_ike());
    check_emit(Payload::Sa(sa_ike()), SA_IKE);
    assert_eq!(parse_sa(SA_ESP).unwrap(), sa_esp());
    check_emit(Payload::Sa(sa_esp()), SA_ESP);
    assert_eq!(
        parse_sa(SA_IKE).unwrap()[0].transforms[0].key_len(),
        Some(256)
    );
    assert_eq!(parse_sa(SA_IKE).unwrap()[0].transforms[1].key_len(), None);
}

#[test]
fn sa_rejects_malformed() {
    assert_eq!(parse_sa(&[]), Err(WireError::Empty { what: "SA payload" }));
    let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut v = SA_IKE.to_vec();
        edit(&mut v);
        parse_sa(&v).unwrap_err()
    };
    // Proposal last-substruc must be 0 or 2; 2 on the last proposal is wrong too.
    assert!(matches!(
        bad(&|v| v[0] = 3),
        WireError::BadSubstructure { .. }
    ));
    assert!(matches!(
        bad(&|v| v[0] = 2),
        WireError::BadSubstructure { .. }
    ));
    // Transform last-substruc must be 0 or 3, and 0 only on the last transform.
    assert!(matches!(
        bad(&|v| v[8] = 2),
        WireError::BadSubstructure { .. }
    ));
    assert!(matches!(
        bad(&|v| v[8] = 0),
        WireError::TrailingBytes { .. }
    ));
    assert!(matches!(
        bad(&|v| v[36] = 3),
        WireError::BadSubstructure { .. }
    ));
    // Transform count.
    assert_eq!(
        bad(&|v| v[7] = 3),
        WireError::BadSubstructure {
            what: "proposal transform count"
        }
    );
    // Proposal length too long / too short / below the fixed part.
    assert!(matches!(bad(&|v| v[3] = 45), WireError::Truncated { .. }));
    assert!(matches!(bad(&|v| v[3] = 43), WireError::Truncated { .. }));
    assert!(matches!(bad(&|v| v[3] = 3), WireError::BadLength { .. }));
    assert!(matches!(bad(&|v| v[3] = 6), WireError::BadLength { .. }));
    // SPI size beyond the proposal.
    assert!(matches!(bad(&|v| v[6] = 200), WireError::BadLength { .. }));
    // Trailing bytes after the last proposal.
    assert!(matches!(
        bad(&|v| v.push(0)),
        WireError::TrailingBytes { .. }
    ));
    // TLV attribute longer than its transform.
    assert!(matches!(
        bad(&|v| v[16] = 0x00),
        WireError::Truncated { .. }
    ));
    // Transform length below 8.
    assert!(matches!(bad(&|v| v[11] = 4), WireError::BadLength { .. }));
    for n in 1..SA_IKE.len() {
        assert!(parse_sa(&SA_IKE[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn unknown_values_survive() {
    let proposals = vec![Proposal {
        num: 7,
        protocol: ProtocolId(200),
        spi: vec![9; 8],
        transforms: vec![
            Transform {
                ttype: TransformType(240),
                id: 65000,
                attrs: vec![
                    Attribute::Tlv {
                        atype: 0x1234,
                        value: vec![1, 2, 3],
                    },
                    Attribute::Tv {
                        atype: 0x7fff,
                        value: 0xbeef,
                    },
                    Attribute::Tlv {
                        atype: 5,
                        value: vec![],
                    },
                ],
            },
            Transform::new(TransformType(0), 0),
        ],
    }];
    let raw_body = [0xde, 0xad];
    let ts = vec![
        Ts::Unknown {
            ts_type: TsType(9),
            data: vec![1, 2, 3, 4, 5],
        },
        Ts::Range(TrafficSelector::range(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 255)),
        )),
    ];
    let payloads = vec![
        Payload::Raw {
            ptype: PayloadType(130),
            critical: true,
            body: &raw_body,
        },
        Payload::Sa(proposals),
        Payload::Notify(Notify {
            protocol: ProtocolId(9),
            spi: &[1, 2, 3],
            ntype: NotifyType(40000),
            data: b"x",
        }),
        Payload::IdI(Id {
            id_type: IdType(250),
            data: b"who",
        }),
        Payload::Auth(Auth {
            method: AuthMethod(201),
            data: &[3; 5],
        }),
        Payload::Ke(Ke {
            group: 0xfff0,
            data: &[],
        }),
        Payload::TsR(ts),
        Payload::Raw {
            ptype: PayloadType::CP,
            critical: false,
            body: &[],
        },
    ];
    let h = Header {
        exchange: ExchangeType(99),
        flags: 0xc7,
        minor: 3,
        ..header(ExchangeType(99), 0, 0xffff_ffff)
    };
    let bytes = emit_message(&h, &payloads).unwrap();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header.exchange, ExchangeType(99));
    assert_eq!((m.header.flags, m.header.minor), (0xc7, 3));
    assert!(m.payloads[0].critical);
    assert_eq!(m.payloads[0].ptype, PayloadType(130));
    let decoded: Vec<_> = m
        .payloads
        .iter()
        .map(|p| Payload::decode(p).unwrap())
        .collect();
    assert_eq!(decoded, payloads);
    // And re-encoding reproduces the bytes.
    assert_eq!(emit_message(&m.header, &decoded).unwrap(), bytes);
}

#[test]
fn debug_names() {
    assert_eq!(
        format!("{:?}", NotifyType::NO_PROPOSAL_CHOSEN),
        "NO_PROPOSAL_CHOSEN"
    );
    assert_eq!(format!("{:?}", NotifyType(40000)), "NotifyType(40000)");
    assert_eq!(format!("{:?}", PayloadType::SKF), "SKF");
    assert_eq!(format!("{:?}", PayloadType(99)), "PayloadType(99)");
    assert_eq!(format!("{:?}", ExchangeType::IKE_AUTH), "IKE_AUTH");
    assert_eq!(format!("{:?}", TransformType(9)), "TransformType(9)");
    assert_eq!(format!("{:?}", ProtocolId::ESP), "ESP");
    assert_eq!(format!("{:?}", IdType::KEY_ID), "KEY_ID");
    assert_eq!(
        format!("{:?}", AuthMethod::SHARED_KEY_MIC),
        "SHARED_KEY_MIC"
    );
    assert_eq!(format!("{:?}", TsType::IPV6_ADDR_RANGE), "IPV6_ADDR_RANGE");
    assert!(NotifyType::CHILD_SA_NOT_FOUND.is_error());
    assert!(NotifyType(16383).is_error());
    assert!(!NotifyType::INITIAL_CONTACT.is_error());
    assert!(!NotifyType::SIGNATURE_HASH_ALGORITHMS.is_error());
    assert_eq!(
        WireError::UnsupportedMajorVersion { major: 3 }.to_string(),
        "unsupported IKE major version 3"
    );
}

#[test]
fn ke_id_auth_nonce_vendor() {
    let ke = [0, 31, 0, 0, 1, 2, 3];
    assert_eq!(
        Ke::parse(&ke).unwrap(),
        Ke {
            group: DH_CURVE25519,
            data: &[1, 2, 3]
        }
    );
    check_emit(Payload::Ke(Ke::parse(&ke).unwrap()), &ke);
    assert!(Ke::parse(&ke[..3]).is_err());

    let id = [2, 0, 0, 0, b'g', b'w', b'.', b'x'];
    let parsed = Id::parse(&id).unwrap();
    assert_eq!(
        parsed,
        Id {
            id_type: IdType::FQDN,
            data: b"gw.x"
        }
    );
    assert_eq!(parsed.body(), id);
    check_emit(Payload::IdI(parsed), &id);
    check_emit(Payload::IdR(parsed), &id);
    // Reserved bytes are ignored on input and zero on output.
    assert_eq!(
        Id::parse(&[1, 9, 9, 9, 10, 0, 0, 1]).unwrap().body(),
        [1, 0, 0, 0, 10, 0, 0, 1]
    );
    assert!(Id::parse(&id[..3]).is_err());

    let auth = [2, 0, 0, 0, 0xaa, 0xbb];
    let parsed = Auth::parse(&auth).unwrap();
    assert_eq!(
        parsed,
        Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: &[0xaa, 0xbb]
        }
    );
    check_emit(Payload::Auth(parsed), &auth);
    assert!(Auth::parse(&auth[..3]).is_err());

    check_emit(Payload::Nonce(&[5; 16]), &[5; 16]);
    check_emit(Payload::VendorId(b"vpn-ebpf"), b"vpn-ebpf");
}

#[test]
fn notify_parse_emit() {
    // Protocol ESP, SPI size 4, REKEY_SA, SPI, no data.
    let rekey = [3, 4, 0x40, 0x09, 1, 2, 3, 4];
    let n = Notify::parse(&rekey).unwrap();
    assert_eq!(
        n,
        Notify {
            protocol: ProtocolId::ESP,
            spi: &[1, 2, 3, 4],
            ntype: NotifyType::REKEY_SA,
            data: &[]
        }
    );
    check_emit(Payload::Notify(n), &rekey);
    // INVALID_KE_PAYLOAD carries the accepted group.
    let ike = [0, 0, 0, 17, 0, 19];
    let n = Notify::parse(&ike).unwrap();
    assert_eq!(n, Notify::new(NotifyType::INVALID_KE_PAYLOAD, &[0, 19]));
    assert!(n.ntype.is_error());
    check_emit(Payload::Notify(n), &ike);
    assert!(Notify::parse(&rekey[..7]).is_err());
    assert!(Notify::parse(&rekey[..3]).is_err());
}

#[test]
fn delete_parse_emit() {
    let ike = [1, 0, 0, 0];
    let d = Delete::parse(&ike).unwrap();
    assert_eq!(
        d,
        Delete {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: vec![]
        }
    );
    check_emit(Payload::Delete(d), &ike);
    let esp = [3, 4, 0, 2, 1, 1, 1, 1, 2, 2, 2, 2];
    let d = Delete::parse(&esp).unwrap();
    assert_eq!(d.spis, vec![&[1u8; 4][..], &[2u8; 4][..]]);
    check_emit(Payload::Delete(d), &esp);
    assert!(matches!(
        Delete::parse(&esp[..11]),
        Err(WireError::BadLength { .. })
    ));
    assert!(matches!(
        Delete::parse(&[3, 4, 0, 1]),
        Err(WireError::BadLength { .. })
    ));
    assert!(matches!(
        Delete::parse(&[1, 0, 0, 5]),
        Err(WireError::BadSubstructure { .. })
    ));
    assert!(matches!(
        Delete::parse(&[1, 0, 0, 0, 1]),
        Err(WireError::TrailingBytes { .. })
    ));
    assert!(Delete::parse(&esp[..3]).is_err());
}

const TS_BODY: &[u8] = &[
    2, 0, 0, 0, //
    // IPv4: TCP, length 16, ports 0-65535, 192.0.2.0 - 192.0.2.255
    7, 6, 0, 16, 0, 0, 0xff, 0xff, 192, 0, 2, 0, 192, 0, 2, 255, //
    // IPv6: any protocol, length 40, port 500-500, 2001:db8:: - 2001:db8::ffff
    8, 0, 0, 40, 0x01, 0xf4, 0x01, 0xf4, //
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
];

fn ts_list() -> Vec<Ts> {
    vec![
        Ts::Range(TrafficSelector {
            ip_proto: 6,
            start_port: 0,
            end_port: 65535,
            start: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)),
            end: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 255)),
        }),
        Ts::Range(TrafficSelector {
            ip_proto: 0,
            start_port: 500,
            end_port: 500,
            start: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)),
            end: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xffff)),
        }),
    ]
}

#[test]
fn ts_parse_emit() {
    assert_eq!(parse_ts(TS_BODY).unwrap(), ts_list());
    check_emit(Payload::TsI(ts_list()), TS_BODY);
    check_emit(Payload::TsR(ts_list()), TS_BODY);
    let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut v = TS_BODY.to_vec();
        edit(&mut v);
        parse_ts(&v).unwrap_err()
    };
    assert!(matches!(bad(&|v| v[0] = 0), WireError::Empty { .. }));
    assert!(matches!(bad(&|v| v[0] = 3), WireError::Truncated { .. }));
    assert!(matches!(
        bad(&|v| v[0] = 1),
        WireError::TrailingBytes { .. }
    ));
    // Type 7 with the IPv6 length, and a length below the header.
    assert_eq!(bad(&|v| v[7] = 40), WireError::BadTrafficSelector);
    assert!(matches!(bad(&|v| v[7] = 2), WireError::BadLength { .. }));
    assert_eq!(bad(&|v| v[4] = 8), WireError::BadTrafficSelector);
    for n in 0..TS_BODY.len() {
        assert!(parse_ts(&TS_BODY[..n]).is_err(), "prefix {n}");
    }
    // Families must match to encode.
    let mixed = TrafficSelector::range(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    );
    assert_eq!(mixed.check(), Err(WireError::BadTrafficSelector));
    let mut out = vec![];
    assert_eq!(
        emit_chain(&[Payload::TsI(vec![Ts::Range(mixed.clone())])], &mut out),
        Err(EncodeError::MixedFamilies)
    );
}

/// What a peer makes us answer must never panic the encoder (issue 14, H1): a TS list whose
/// count does not fit its octet, a Delete SPI of the wrong size and an over-long payload
/// are errors. 255 selectors still encode.
#[test]
fn over_long_fields_are_errors_not_panics() {
    let sel = |i: u32| {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 4 * i));
        Ts::Range(TrafficSelector::range(a, a))
    };
    let most: Vec<Ts> = (0..255).map(sel).collect();
    let bytes = emit_one(Payload::TsR(most.clone()));
    assert_eq!(parse_ts(&bytes[4..]).unwrap(), most);
    let too_many: Vec<Ts> = (0..256).map(sel).collect();
    let mut out = vec![];
    let r = std::panic::catch_unwind(move || emit_chain(&[Payload::TsI(too_many)], &mut out));
    assert_eq!(
        r.expect("the encoder must not panic"),
        Err(EncodeError::TooLong {
            what: "TS list",
            len: 256,
            max: 255
        })
    );
    let h = header(ExchangeType::CREATE_CHILD_SA, 0, 2);
    let many: Vec<Ts> = (0..300).map(sel).collect();
    assert!(matches!(
        emit_message(&h, &[Payload::TsR(many)]),
        Err(EncodeError::TooLong {
            what: "TS list",
            ..
        })
    ));
    let spi = [1u8, 2, 3];
    let mut out = vec![];
    assert_eq!(
        emit_chain(
            &[Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spi_size: 4,
                spis: vec![&spi],
            })],
            &mut out,
        ),
        Err(EncodeError::DeleteSpiSize {
            len: 3,
            spi_size: 4
        })
    );
    // A payload longer than its 16-bit length field.
    let big = vec![0u8; 70_000];
    let mut out = vec![];
    assert!(matches!(
        emit_chain(&[Payload::VendorId(&big)], &mut out),
        Err(EncodeError::TooLong {
            what: "payload",
            ..
        })
    ));
}

#[test]
fn ike_auth_chain_and_sk() {
    // An IKE_AUTH plaintext (what goes inside SK): IDi, AUTH, SA, TSi, TSr.
    let id = Id {
        id_type: IdType::FQDN,
        data: b"left",
    };
    let inner = vec![
        Payload::IdI(id),
        Payload::Auth(Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: &[0x33; 32],
        }),
        Payload::Sa(sa_esp()),
        Payload::TsI(ts_list()),
        Payload::TsR(ts_list()),
    ];
    let mut plain = Vec::new();
    let first = emit_chain(&inner, &mut plain).unwrap();
    assert_eq!(first, PayloadType::IDI);
    let chain = parse_chain(first, &plain).unwrap();
    assert_eq!(chain.len(), 5);
    let decoded: Vec<_> = chain.iter().map(|p| Payload::decode(p).unwrap()).collect();
    assert_eq!(decoded, inner);
    // The chain must end exactly at the end of the buffer.
    let mut longer = plain.clone();
    longer.push(0);
    assert!(matches!(
        parse_chain(first, &longer),
        Err(WireError::TrailingBytes { .. })
    ));
    assert!(parse_chain(first, &plain[..plain.len() - 1]).is_err());
    assert!(parse_chain(PayloadType::NONE, &[]).unwrap().is_empty());

    // Wrapped in an SK payload whose next field names IDi, not followed by the outer walk.
    let mut msg = Vec::new();
    let mut h = header(ExchangeType::IKE_AUTH, flags::INITIATOR, 1);
    h.next_payload = PayloadType::SK;
    h.length = (28 + 4 + plain.len()) as u32;
    h.emit(&mut msg);
    emit_generic_header(first, false, (4 + plain.len()) as u16, &mut msg);
    msg.extend_from_slice(&plain);
    let m = Message::parse(&msg).unwrap();
    assert_eq!(m.payloads.len(), 1);
    let sk = m.find(PayloadType::SK).unwrap();
    assert_eq!((sk.next, sk.body), (PayloadType::IDI, &plain[..]));

    // SK followed by another payload is refused.
    let vid = payload(0, false, b"v");
    let mut bad = header_bytes(46, 35, 8, 1, 0);
    bad.extend_from_slice(&payload(43, false, &[]));
    bad.extend_from_slice(&vid);
    let len = bad.len() as u32;
    bad[24..28].copy_from_slice(&len.to_be_bytes());
    assert_eq!(Message::parse(&bad).unwrap_err(), WireError::SkNotLast);
    // So is SKF, and SK after other payloads is fine.
    bad[16] = 53;
    assert_eq!(Message::parse(&bad).unwrap_err(), WireError::SkNotLast);
    let chain = [payload(46, false, b"v"), payload(35, false, b"ciphertext")].concat();
    let ok = message(43, 35, 8, 1, &chain);
    let m = Message::parse(&ok).unwrap();
    assert_eq!(m.payloads[1].ptype, PayloadType::SK);
    assert_eq!(m.payloads[1].next, PayloadType::IDI);
    // No SK inside a decrypted chain.
    assert!(matches!(
        parse_chain(PayloadType::SK, &payload(0, false, &[])),
        Err(WireError::BadSubstructure { .. })
    ));
}

#[test]
fn chain_errors() {
    // Payload length below 4.
    let mut v = message(40, 34, 8, 0, &payload(0, false, &[1; 8]));
    v[31] = 3;
    assert!(matches!(
        Message::parse(&v),
        Err(WireError::BadLength { .. })
    ));
    // Chain names a next payload but the message ends.
    let v = message(40, 34, 8, 0, &payload(41, false, &[1; 8]));
    assert!(matches!(
        Message::parse(&v),
        Err(WireError::Truncated { .. })
    ));
    // Chain ends before the message does.
    let chain = [payload(0, false, &[1; 8]), vec![0; 4]].concat();
    let v = message(40, 34, 8, 0, &chain);
    assert!(matches!(
        Message::parse(&v),
        Err(WireError::TrailingBytes { .. })
    ));
    // Payload length beyond the message.
    let mut v = message(40, 34, 8, 0, &payload(0, false, &[1; 8]));
    v[31] = 13;
    assert!(matches!(
        Message::parse(&v),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn every_truncation_fails() {
    let inner = [
        payload(39, false, &[2, 0, 0, 0, 1, 2, 3, 4]),
        payload(44, false, &[2, 0, 0, 0, 9]),
        payload(45, false, TS_BODY),
        payload(0, false, TS_BODY),
    ]
    .concat();
    let info = [
        payload(42, false, &[3, 4, 0, 2, 1, 1, 1, 1, 2, 2, 2, 2]),
        payload(43, false, &[1, 0, 0, 0]),
        payload(200, true, b"vid"),
        payload(0, false, &[0xab; 3]),
    ]
    .concat();
    let samples = [
        ike_sa_init_bytes(),
        message(35, 35, 8, 1, &inner),
        message(42, 37, 0x20, 2, &info),
    ];
    for full in &samples {
        let m = Message::parse(full).unwrap();
        for p in &m.payloads {
            Payload::decode(p).unwrap();
        }
        for n in 0..full.len() {
            // Cut the datagram, with the header length as it was and adjusted to the cut.
            let cut = &full[..n];
            assert!(Message::parse(cut).is_err(), "cut at {n}");
            if n >= 28 {
                let mut fixed = cut.to_vec();
                fixed[24..28].copy_from_slice(&(n as u32).to_be_bytes());
                assert!(
                    Message::parse(&fixed).is_err(),
                    "cut at {n} with length fixed"
                );
            }
            super::exercise(cut);
        }
    }
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let ts = [
        ts_list(),
        vec![Ts::Unknown {
            ts_type: TsType(10),
            data: vec![7; 6],
        }],
    ]
    .concat();
    let inner = vec![
        Payload::IdI(Id {
            id_type: IdType::IPV4_ADDR,
            data: &[10, 0, 0, 1],
        }),
        Payload::Auth(Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: &[1; 32],
        }),
        Payload::Sa(sa_esp()),
        Payload::TsI(ts.clone()),
        Payload::TsR(ts),
        Payload::Notify(Notify {
            protocol: ProtocolId::ESP,
            spi: &[1, 2, 3, 4],
            ntype: NotifyType::REKEY_SA,
            data: &[],
        }),
        Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![&[1, 2, 3, 4], &[5, 6, 7, 8]],
        }),
        Payload::VendorId(b"vendor"),
        Payload::Raw {
            ptype: PayloadType(200),
            critical: true,
            body: &[1, 2],
        },
    ];
    let mut sk_plain = Vec::new();
    let first = emit_chain(&inner, &mut sk_plain).unwrap();
    let mut sk = Vec::new();
    let mut h = header(ExchangeType::IKE_AUTH, flags::INITIATOR, 1);
    h.next_payload = PayloadType::SK;
    h.length = (32 + sk_plain.len()) as u32;
    h.emit(&mut sk);
    emit_generic_header(first, false, (4 + sk_plain.len()) as u16, &mut sk);
    sk.extend_from_slice(&sk_plain);
    vec![
        ike_sa_init_bytes(),
        emit_message(&header(ExchangeType::IKE_AUTH, 0, 1), &inner).unwrap(),
        sk,
        sk_plain,
    ]
}

#[test]
fn mutations_never_panic() {
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let mut v = corpus[round % corpus.len()].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 | 1 => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let n = rng.below(v.len() + 1);
                    v.truncate(n);
                }
                3 if v.len() >= 2 => {
                    // Overwrite a 16-bit field (most lengths are 16-bit) with a nearby or wild value.
                    let i = rng.below(v.len() - 1);
                    let old = u16::from_be_bytes([v[i], v[i + 1]]);
                    let new = match rng.below(3) {
                        0 => old.wrapping_add(1 + rng.below(8) as u16),
                        1 => old.wrapping_sub(1 + rng.below(8) as u16),
                        _ => rng.next() as u16,
                    };
                    v[i..i + 2].copy_from_slice(&new.to_be_bytes());
                }
                4 => {
                    let i = rng.below(v.len() + 1);
                    let b = rng.next() as u8;
                    v.insert(i, b);
                }
                _ => {
                    // Keep the IKE length consistent so the chain walk is reached.
                    if v.len() >= 28 {
                        let n = v.len() as u32;
                        v[24..28].copy_from_slice(&n.to_be_bytes());
                    }
                }
            }
            if v.is_empty() {
                break;
            }
        }
        super::exercise(&v);
    }
}

#[test]
fn corpus_round_trips() {
    for m in corpus() {
        super::exercise(&m);
    }
    let bytes = &corpus()[1];
    let m = Message::parse(bytes).unwrap();
    let decoded: Vec<_> = m
        .payloads
        .iter()
        .map(|p| Payload::decode(p).unwrap())
        .collect();
    assert_eq!(&emit_message(&m.header, &decoded).unwrap(), bytes);
}
