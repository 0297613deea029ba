//! Cross-checks against an independent parser, rusticata's `ipsec-parser` (0.7).
//!
//! Its payload-list walker hands each typed parser the body length, but several of them were
//! written for the whole payload length, so inside `parse_ikev2_message` Notify payloads with
//! data, AUTH, Delete and Vendor ID come out wrong or as errors. Where that bites, these
//! tests walk the chain with its generic-header parser and call its typed parsers with the
//! length each one actually expects (noted at the call); its AUTH parser also keeps the
//! three reserved bytes in `auth_data`.
//!
//! `testdata/ike-sa-init-{req,resp}.bin` are the captures from ipsec-parser's own test
//! suite (MIT/Apache-2.0).

use std::net::IpAddr;

use ipsec_parser as op;

use super::*;

/// The oracle's view of a message: header and (type, generic payload) pairs.
fn oracle_walk(bytes: &[u8]) -> (op::IkeV2Header, Vec<(u8, op::IkeV2GenericPayload<'_>)>) {
    let (mut rest, hdr) = op::parse_ikev2_header(bytes).expect("oracle: header");
    assert_eq!(hdr.length as usize, bytes.len());
    let mut out = Vec::new();
    let mut t = hdr.next_payload.0;
    while t != 0 {
        let (r, p) = op::parse_ikev2_payload_generic(rest).expect("oracle: payload");
        let next = p.hdr.next_payload_type.0;
        out.push((t, p));
        rest = r;
        t = next;
    }
    assert!(rest.is_empty());
    (hdr, out)
}

fn check_header(ours: &Header, theirs: &op::IkeV2Header) {
    assert_eq!(ours.ispi, theirs.init_spi);
    assert_eq!(ours.rspi, theirs.resp_spi);
    assert_eq!(ours.next_payload.0, theirs.next_payload.0);
    assert_eq!(ours.major, theirs.maj_ver);
    assert_eq!(ours.minor, theirs.min_ver);
    assert_eq!(ours.exchange.0, theirs.exch_type.0);
    assert_eq!(ours.flags, theirs.flags);
    assert_eq!(ours.message_id, theirs.msg_id);
    assert_eq!(ours.length, theirs.length);
}

fn check_sa(ours: &[Proposal], body: &[u8]) {
    let (rest, c) = op::parse_ikev2_payload_sa(body, 0).expect("oracle: SA");
    assert!(rest.is_empty());
    let op::IkeV2PayloadContent::SA(theirs) = c else {
        panic!("oracle: not an SA: {c:?}")
    };
    assert_eq!(ours.len(), theirs.len());
    for (i, (p, q)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(q.last, if i + 1 == ours.len() { 0 } else { 2 });
        assert_eq!(p.num, q.proposal_num);
        assert_eq!(p.protocol.0, q.protocol_id.0);
        assert_eq!(p.spi.len(), usize::from(q.spi_size));
        assert_eq!(&p.spi[..], q.spi.unwrap_or_default());
        assert_eq!(p.transforms.len(), usize::from(q.num_transforms));
        assert_eq!(p.transforms.len(), q.transforms.len());
        for (j, (t, u)) in p.transforms.iter().zip(&q.transforms).enumerate() {
            assert_eq!(u.last, if j + 1 == p.transforms.len() { 0 } else { 3 });
            assert_eq!(t.ttype.0, u.transform_type.0);
            assert_eq!(t.id, u.transform_id);
            // The oracle leaves attributes raw; decode the key length by hand (RFC 7296 3.3.5).
            let attrs = u.attributes.unwrap_or_default();
            match t.key_len() {
                Some(bits) => {
                    assert_eq!(attrs.len(), 4);
                    assert_eq!(attrs[..2], (0x8000 | ATTR_KEY_LENGTH).to_be_bytes());
                    assert_eq!(attrs[2..], bits.to_be_bytes());
                }
                None => assert!(attrs.is_empty()),
            }
        }
    }
}

fn check_ts(ours: &[Ts], body: &[u8]) {
    // This one takes the body length.
    let (rest, theirs) = op::parse_ikev2_payload_ts(body, body.len() as u16).expect("oracle: TS");
    assert!(rest.is_empty());
    assert_eq!(usize::from(theirs.num_ts), ours.len());
    assert_eq!(theirs.ts.len(), ours.len());
    for (t, u) in ours.iter().zip(&theirs.ts) {
        let Ts::Range(s) = t else {
            panic!("the oracle only knows range selectors")
        };
        assert_eq!(s.ts_type().0, u.ts_type.0);
        assert_eq!(s.ip_proto, u.ip_proto_id);
        assert_eq!(s.start_port, u.start_port);
        assert_eq!(s.end_port, u.end_port);
        assert_eq!(Some(s.start), u.get_start_addr());
        assert_eq!(Some(s.end), u.get_end_addr());
        assert_eq!(
            usize::from(u.sel_length),
            if s.start.is_ipv4() { 16 } else { 40 }
        );
    }
}

/// Compares one of our payloads with the oracle's decoding of the bytes we emitted for it.
fn check_payload(ours: &Payload<'_>, t: u8, g: &op::IkeV2GenericPayload<'_>) {
    assert_eq!(ours.ptype().0, t);
    let body = g.payload;
    let blen = body.len() as u16;
    assert_eq!(usize::from(g.hdr.payload_length), body.len() + 4);
    match ours {
        Payload::Sa(p) => check_sa(p, body),
        Payload::Ke(k) => {
            let (_, c) = op::parse_ikev2_payload_kex(body, blen).unwrap();
            let op::IkeV2PayloadContent::KE(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(k.group, q.dh_group.0);
            assert_eq!(k.data, q.kex_data);
        }
        Payload::Nonce(n) => {
            let (_, c) = op::parse_ikev2_payload_nonce(body, blen).unwrap();
            let op::IkeV2PayloadContent::Nonce(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(*n, q.nonce_data);
        }
        Payload::IdI(id) | Payload::IdR(id) => {
            let (_, c) = op::parse_ikev2_payload_ident_init(body, blen).unwrap();
            let op::IkeV2PayloadContent::IDi(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(id.id_type.0, q.id_type.0);
            assert_eq!((q.reserved1, q.reserved2), (0, 0));
            assert_eq!(id.data, q.ident_data);
        }
        Payload::Auth(a) => {
            // Whole-payload-minus-one length; its auth_data starts at the reserved bytes.
            let (_, c) = op::parse_ikev2_payload_authentication(body, blen + 3).unwrap();
            let op::IkeV2PayloadContent::Authentication(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(a.method.0, q.auth_method.0);
            assert_eq!(&q.auth_data[..3], &[0, 0, 0]);
            assert_eq!(a.data, &q.auth_data[3..]);
        }
        Payload::Notify(n) => {
            // Whole payload length.
            let (_, c) = op::parse_ikev2_payload_notify(body, blen + 4).unwrap();
            let op::IkeV2PayloadContent::Notify(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(n.protocol.0, q.protocol_id.0);
            assert_eq!(n.spi.len(), usize::from(q.spi_size));
            assert_eq!(n.spi, q.spi.unwrap_or_default());
            assert_eq!(n.ntype.0, q.notify_type.0);
            assert_eq!(n.data, q.notify_data.unwrap_or_default());
        }
        Payload::Delete(d) => {
            // Whole payload length.
            let (_, c) = op::parse_ikev2_payload_delete(body, blen + 4).unwrap();
            let op::IkeV2PayloadContent::Delete(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(d.protocol.0, q.protocol_id.0);
            assert_eq!(d.spi_size, q.spi_size);
            assert_eq!(d.spis.len(), usize::from(q.num_spi));
            assert_eq!(d.spis.concat(), q.spi);
        }
        Payload::VendorId(v) => {
            // Whole payload length plus 4.
            let (_, c) = op::parse_ikev2_payload_vendor_id(body, blen + 8).unwrap();
            let op::IkeV2PayloadContent::VendorID(q) = c else {
                panic!("{c:?}")
            };
            assert_eq!(*v, q.vendor_id);
        }
        Payload::TsI(ts) | Payload::TsR(ts) => check_ts(ts, body),
        Payload::Raw {
            critical, body: b, ..
        } => {
            assert_eq!(*critical, g.hdr.critical);
            assert_eq!(*b, body);
        }
    }
}

/// Emits `payloads` with our encoder and checks every field with the oracle.
fn cross_check(h: &Header, payloads: &[Payload<'_>]) -> Vec<u8> {
    let bytes = emit_message(h, payloads).unwrap();
    let (oh, list) = oracle_walk(&bytes);
    let mut expect = *h;
    expect.next_payload = payloads[0].ptype();
    expect.length = bytes.len() as u32;
    check_header(&expect, &oh);
    assert_eq!(list.len(), payloads.len());
    for (p, (t, g)) in payloads.iter().zip(&list) {
        check_payload(p, *t, g);
    }
    bytes
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

#[test]
fn oracle_ike_sa_init() {
    let ke = [0x42; 32];
    let nonce = [0x77; 32];
    let nat_src = [0x5a; 20];
    let nat_dst = [0xa5; 20];
    let payloads = vec![
        Payload::Sa(super::sa_ike()),
        Payload::Ke(Ke {
            group: transform_id::DH_CURVE25519,
            data: &ke,
        }),
        Payload::Nonce(&nonce),
        Payload::Notify(Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, &nat_src)),
        Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            &nat_dst,
        )),
        Payload::Notify(Notify::new(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, &[])),
    ];
    let h = super::header(ExchangeType::IKE_SA_INIT, flags::INITIATOR, 0);
    let bytes = cross_check(&h, &payloads);

    // Its own message walker gets SA, KE and Nonce right; Notify data comes out four bytes
    // short there (the length bug in the module comment), the rest silently dropped.
    let (rest, (oh, list)) = op::parse_ikev2_message(&bytes).unwrap();
    assert!(rest.is_empty());
    assert_eq!(oh.exch_type, op::IkeExchangeType::IKE_SA_INIT);
    let list = list.unwrap();
    let op::IkeV2PayloadContent::Notify(n) = &list[4].content else {
        panic!("{:?}", list[4])
    };
    assert_eq!(n.notify_type, op::NotifyType::NAT_DETECTION_SOURCE_IP);
    assert_eq!(n.notify_data, Some(&nat_src[..16]));
    let three = emit_message(&h, &payloads[..3]).unwrap();
    let (rest, (_, list)) = op::parse_ikev2_message(&three).unwrap();
    assert!(rest.is_empty());
    let list = list.unwrap();
    assert!(matches!(list[1].content, op::IkeV2PayloadContent::SA(_)));
    assert!(matches!(list[2].content, op::IkeV2PayloadContent::KE(_)));
    assert!(matches!(list[3].content, op::IkeV2PayloadContent::Nonce(_)));
}

#[test]
fn oracle_ike_auth_chain() {
    let ts = vec![
        Ts::Range(TrafficSelector {
            ip_proto: 17,
            start_port: 500,
            end_port: 4500,
            start: v4([10, 1, 0, 0]),
            end: v4([10, 1, 255, 255]),
        }),
        Ts::Range(TrafficSelector::range(
            "2001:db8::".parse().unwrap(),
            "2001:db8::ffff".parse().unwrap(),
        )),
    ];
    let payloads = vec![
        Payload::IdI(Id {
            id_type: IdType::FQDN,
            data: b"left.example",
        }),
        Payload::Auth(Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: &[0x3c; 32],
        }),
        Payload::Sa(super::sa_esp()),
        Payload::TsI(ts.clone()),
        Payload::TsR(ts),
        Payload::Notify(Notify {
            protocol: ProtocolId::ESP,
            spi: &[1, 2, 3, 4],
            ntype: NotifyType::REKEY_SA,
            data: &[],
        }),
    ];
    let h = super::header(ExchangeType::IKE_AUTH, flags::INITIATOR, 1);
    cross_check(&h, &payloads);
    // IDi, SA and TS parse through its own walker too.
    let sub = [
        payloads[0].clone(),
        payloads[2].clone(),
        payloads[3].clone(),
        payloads[4].clone(),
    ];
    let four = emit_message(&h, &sub).unwrap();
    let (_, (_, list)) = op::parse_ikev2_message(&four).unwrap();
    let list = list.unwrap();
    let op::IkeV2PayloadContent::IDi(id) = &list[1].content else {
        panic!("{:?}", list[1])
    };
    assert_eq!(id.ident_data, b"left.example");
    assert!(matches!(list[4].content, op::IkeV2PayloadContent::TSr(_)));
}

#[test]
fn oracle_delete_vendor_unknown() {
    let payloads = vec![
        Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![&[1, 2, 3, 4], &[9, 9, 9, 9], &[0xff; 4]],
        }),
        Payload::Delete(Delete {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: vec![],
        }),
        Payload::VendorId(b"vpn-ebpf 0.1"),
        Payload::Raw {
            ptype: PayloadType(150),
            critical: true,
            body: &[1, 2, 3],
        },
    ];
    let h = super::header(ExchangeType::INFORMATIONAL, flags::RESPONSE, 5);
    cross_check(&h, &payloads);
}

#[test]
fn oracle_captures_parse_with_ours() {
    for (bytes, n) in [
        (&include_bytes!("testdata/ike-sa-init-req.bin")[..], 3),
        (&include_bytes!("testdata/ike-sa-init-resp.bin")[..], 5),
    ] {
        let m = Message::parse(bytes).unwrap();
        let (oh, list) = oracle_walk(bytes);
        check_header(&m.header, &oh);
        assert_eq!(m.payloads.len(), n);
        assert_eq!(list.len(), n);
        let decoded: Vec<_> = m
            .payloads
            .iter()
            .map(|p| Payload::decode(p).unwrap())
            .collect();
        for (p, (t, g)) in decoded.iter().zip(&list) {
            check_payload(p, *t, g);
        }
        for (p, (_, g)) in m.payloads.iter().zip(&list) {
            assert_eq!(p.critical, g.hdr.critical);
            assert_eq!(p.next.0, g.hdr.next_payload_type.0);
        }
        // Our encoder reproduces the capture byte for byte.
        assert_eq!(emit_message(&m.header, &decoded).unwrap(), bytes);
        super::super::exercise(bytes);
    }
    let req = Message::parse(include_bytes!("testdata/ike-sa-init-req.bin")).unwrap();
    assert!(req.header.is_initiator());
    let sa = parse_sa(req.payloads[0].body).unwrap();
    assert_eq!(sa.len(), 1);
    assert_eq!(sa[0].protocol, ProtocolId::IKE);
    assert_eq!(sa[0].transforms.len(), 5);
    assert_eq!(sa[0].transforms[0].key_len(), Some(128));
    let Payload::Ke(ke) = Payload::decode(&req.payloads[1]).unwrap() else {
        panic!("not a KE payload")
    };
    assert_eq!((ke.group, ke.data.len()), (2, 128));
    let resp = Message::parse(include_bytes!("testdata/ike-sa-init-resp.bin")).unwrap();
    assert!(resp.header.is_response());
    let types: Vec<_> = resp.payloads.iter().map(|p| p.ptype).collect();
    assert_eq!(
        types,
        [
            PayloadType::SA,
            PayloadType::KE,
            PayloadType::NONCE,
            PayloadType::CERTREQ,
            PayloadType::NOTIFY
        ]
    );
    let n = Notify::parse(resp.payloads[4].body).unwrap();
    assert_eq!(n, Notify::new(NotifyType::HTTP_CERT_LOOKUP_SUPPORTED, &[]));
}
