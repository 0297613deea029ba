use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{packet::udp6_checksum_ok, *};

const KEY128: [u8; 20] = [
    0x4c, 0x80, 0xcd, 0xef, 0xbb, 0x5d, 0x10, 0xda, 0x90, 0x6a, 0xc7, 0x3c, 0x36, 0x13, 0xa6, 0x34,
    0x2e, 0x44, 0x3b, 0x68,
];

fn key(cipher: Cipher) -> SaKey {
    let mut km = vec![0u8; cipher.keymat_len()];
    for (i, b) in km.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    SaKey::from_keymat(cipher, &km).unwrap()
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn outer4(udp: bool) -> Outer {
    Outer {
        src: v4([172, 24, 4, 226]),
        dst: v4([172, 24, 4, 233]),
        udp: udp.then_some((4500, 4500)),
        ttl: 64,
    }
}

fn outer6(udp: bool) -> Outer {
    Outer {
        src: IpAddr::V6("2001:db8::226".parse().unwrap()),
        dst: IpAddr::V6("2001:db8::233".parse().unwrap()),
        udp: udp.then_some((4500, 4500)),
        ttl: 64,
    }
}

/// An inner IPv4 packet of `len` bytes (>= 20) with a pattern payload.
fn inner_v4(len: usize, tos: u8, df: bool) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[1] = tos;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    if df {
        p[6] = 0x40;
    }
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 1, 0, 5]);
    p[16..20].copy_from_slice(&[10, 2, 0, 9]);
    let c = packet::ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = (i * 13 + 1) as u8;
    }
    p
}

fn inner_v6(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x6b; // traffic class 0xb8 (EF) split over the first two bytes
    p[1] = 0x80;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&"2001:db8:1::5".parse::<Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"2001:db8:2::9".parse::<Ipv6Addr>().unwrap().octets());
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    p
}

/// Offset of the ESP header in an outer packet.
fn esp_of(outer: &Outer) -> usize {
    (if outer.dst.is_ipv6() { 40 } else { 20 }) + if outer.udp.is_some() { 8 } else { 0 }
}

fn round_trip(cipher: Cipher, outer: Outer, esn: bool, inner: &[u8]) {
    let k = key(cipher);
    let tx = OutboundSa::new(0x1234_5678, &k, esn, outer.clone());
    let rx = InboundSa::new(0x1234_5678, &k, esn);
    let mut out = vec![0u8; 2048];
    let n = tx.encapsulate(inner, &mut out).unwrap();
    assert_eq!(n, tx.encapsulated_len(inner.len()));
    let off = esp_of(&outer);
    // ESP trailer alignment: (payload + 2) % 4 == 0.
    assert_eq!((n - off - ESP_HDR - 8 - 16) % 4, 0);
    let mut esp = out[off..n].to_vec();
    let d = rx.decapsulate(&mut esp, tx.seq()).unwrap();
    assert_eq!(&esp[d.inner.clone()], inner);
}

#[test]
fn round_trips_every_combination() {
    for cipher in [Cipher::Aes128Gcm16, Cipher::Aes256Gcm16] {
        for esn in [false, true] {
            for udp in [false, true] {
                for len in [20, 21, 22, 23, 24, 64, 333, 1400] {
                    round_trip(cipher, outer4(udp), esn, &inner_v4(len, 0, false));
                    round_trip(cipher, outer6(udp), esn, &inner_v4(len, 0, false));
                }
                for len in [40, 41, 100, 1280] {
                    round_trip(cipher, outer4(udp), esn, &inner_v6(len));
                    round_trip(cipher, outer6(udp), esn, &inner_v6(len));
                }
            }
        }
    }
}

#[test]
fn random_packets_round_trip() {
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    let k = key(Cipher::Aes128Gcm16);
    let tx = OutboundSa::new(0x1000, &k, true, outer4(true));
    let rx = InboundSa::new(0x1000, &k, true);
    let mut out = vec![0u8; 2048];
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 20 + (x % 1480) as usize;
        let mut inner = inner_v4(len, (x >> 20) as u8, x & 1 == 0);
        for (i, b) in inner[20..].iter_mut().enumerate() {
            *b = (x >> (i % 56)) as u8;
        }
        let n = tx.encapsulate(&inner, &mut out).unwrap();
        let mut esp = out[28..n].to_vec();
        let d = rx.decapsulate(&mut esp, tx.seq()).unwrap();
        assert_eq!(&esp[d.inner], &inner[..]);
    }
}

#[test]
fn outer_headers_are_right() {
    let k = key(Cipher::Aes128Gcm16);
    let tx = OutboundSa::new(0xabcd, &k, false, outer4(false));
    let inner = inner_v4(100, 0xb8, true);
    let mut out = vec![0u8; 512];
    let n = tx.encapsulate(&inner, &mut out).unwrap();
    assert_eq!(out[0], 0x45);
    assert_eq!(out[1], 0xb8, "DSCP/ECN copied from inner");
    assert_eq!(out[6] & 0x40, 0x40, "DF copied from inner");
    assert_eq!(out[8], 64);
    assert_eq!(out[9], IPPROTO_ESP);
    assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, n);
    assert_eq!(packet::ipv4_checksum(&out[..20]), 0);
    assert_eq!(&out[20..24], &0xabcdu32.to_be_bytes());
    assert_eq!(
        &out[24..28],
        &1u32.to_be_bytes(),
        "first sequence number is 1"
    );

    let tx6 = OutboundSa::new(0xabcd, &k, false, outer6(true));
    let n = tx6.encapsulate(&inner_v6(200), &mut out).unwrap();
    assert_eq!(out[0] >> 4, 6);
    assert_eq!((out[0] << 4) | (out[1] >> 4), 0xb8, "traffic class copied");
    assert_eq!(out[6], IPPROTO_UDP);
    assert_eq!(u16::from_be_bytes([out[4], out[5]]) as usize, n - 40);
    let (s, d) = (
        "2001:db8::226".parse().unwrap(),
        "2001:db8::233".parse().unwrap(),
    );
    assert!(udp6_checksum_ok(&s, &d, &out[40..n]));
    assert_eq!(&out[40..44], &[0x11, 0x94, 0x11, 0x94]);
}

#[test]
fn every_flipped_bit_fails_the_icv() {
    let k = key(Cipher::Aes256Gcm16);
    let tx = OutboundSa::new(0x4242, &k, false, outer4(false));
    let rx = InboundSa::new(0x4242, &k, false);
    let mut out = vec![0u8; 256];
    let n = tx.encapsulate(&inner_v4(60, 0, false), &mut out).unwrap();
    let esp = out[20..n].to_vec();
    // Sequence number (AAD), IV, ciphertext and ICV: any change is caught. (The SPI is
    // checked before the ICV.)
    for byte in 4..esp.len() {
        for bit in [0, 3, 7] {
            let mut e = esp.clone();
            e[byte] ^= 1 << bit;
            let seq = u32::from_be_bytes(e[4..8].try_into().unwrap()) as u64;
            assert_eq!(
                rx.decapsulate(&mut e, seq),
                Err(DropReason::BadIcv),
                "byte {byte} bit {bit}"
            );
        }
    }
    let mut e = esp.clone();
    e[0] ^= 1;
    assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::UnknownSpi));
}

#[test]
fn esn_high_bits_are_authenticated() {
    let k = key(Cipher::Aes128Gcm16);
    let tx = OutboundSa::new(7, &k, true, outer4(false));
    let rx = InboundSa::new(7, &k, true);
    tx.set_seq(0x1_ffff_fffe);
    let mut out = vec![0u8; 256];
    let n = tx.encapsulate(&inner_v4(40, 0, false), &mut out).unwrap();
    assert_eq!(tx.seq(), 0x1_ffff_ffff);
    let mut e = out[20..n].to_vec();
    // Same low 32 bits, wrong epoch: the ICV says no.
    assert_eq!(
        rx.decapsulate(&mut e.clone(), 0x2_ffff_ffff),
        Err(DropReason::BadIcv)
    );
    assert!(rx.decapsulate(&mut e, 0x1_ffff_ffff).is_ok());
}

#[test]
fn sequence_never_wraps_without_esn() {
    let k = key(Cipher::Aes128Gcm16);
    let tx = OutboundSa::new(7, &k, false, outer4(false));
    tx.set_seq(u32::MAX as u64 - 1);
    let mut out = vec![0u8; 256];
    assert!(tx.encapsulate(&inner_v4(40, 0, false), &mut out).is_ok());
    assert_eq!(tx.seq(), u32::MAX as u64);
    assert_eq!(
        tx.encapsulate(&inner_v4(40, 0, false), &mut out),
        Err(DropReason::SeqExhausted)
    );
    assert_eq!(tx.seq(), u32::MAX as u64, "stays at the limit");
    // With ESN it goes on past 2^32.
    let tx = OutboundSa::new(7, &k, true, outer4(false));
    tx.set_seq(u32::MAX as u64);
    assert_eq!(tx.next_seq(), Ok(1 << 32));
}

/// A manual SA's counter stops at its durable reservation, then goes on once the ceiling is
/// raised; it never goes back below where it resumed.
#[test]
fn sequence_stops_at_the_reserved_ceiling() {
    let k = key(Cipher::Aes128Gcm16);
    let tx = OutboundSa::new(7, &k, false, outer4(false));
    assert_eq!(
        tx.ceiling(),
        u32::MAX as u64,
        "negotiated SA: the RFC limit"
    );
    tx.resume(1000, 1002);
    assert_eq!(tx.next_seq(), Ok(1001));
    assert_eq!(tx.next_seq(), Ok(1002));
    assert_eq!(tx.next_seq(), Err(DropReason::SeqNotReserved));
    assert_eq!(tx.seq(), 1002, "a drop uses no number");
    tx.raise_ceiling(1001);
    assert_eq!(tx.ceiling(), 1002, "never lowered");
    tx.raise_ceiling(u64::MAX);
    assert_eq!(
        tx.ceiling(),
        u32::MAX as u64,
        "clamped to the limit without ESN"
    );
    assert_eq!(tx.next_seq(), Ok(1003));
    // Resumed at the limit: exhausted, not "not reserved".
    let tx = OutboundSa::new(7, &k, false, outer4(false));
    tx.resume(u32::MAX as u64 + 5, u64::MAX);
    assert_eq!(tx.next_seq(), Err(DropReason::SeqExhausted));
    // Refused: nothing goes out, by its own reason.
    let tx = OutboundSa::new(7, &k, true, outer4(false));
    tx.refuse();
    let mut out = vec![0u8; 256];
    assert_eq!(
        tx.encapsulate(&inner_v4(40, 0, false), &mut out),
        Err(DropReason::SaStateRefused)
    );
    assert_eq!(tx.seq(), 0);
}

#[test]
fn inbound_admits_up_to_the_ceiling_and_remembers_what_it_dropped() {
    let k = key(Cipher::Aes128Gcm16);
    let rx = InboundSa::new(7, &k, false);
    assert_eq!(rx.admit(u64::MAX), Ok(()), "negotiated SA: unbounded");
    rx.limit_to(100);
    assert_eq!(rx.admit(100), Ok(()));
    assert_eq!(rx.admit(150), Err(DropReason::InboundNotReserved));
    assert_eq!(rx.admit(120), Err(DropReason::InboundNotReserved));
    assert_eq!(rx.wanted(), 150);
    rx.raise_ceiling(50);
    assert_eq!(rx.ceiling(), 100, "never lowered");
    rx.raise_ceiling(200);
    assert_eq!(rx.admit(150), Ok(()));
    rx.refuse();
    assert_eq!(rx.admit(1), Err(DropReason::SaStateRefused));
}

/// Builds an ESP packet from a raw plaintext (payload + trailer chosen by the test).
fn raw_esp(k: &SaKey, spi: u32, seq: u32, plaintext: &[u8]) -> Vec<u8> {
    let aead = k.aead();
    let mut e = Vec::new();
    e.extend_from_slice(&spi.to_be_bytes());
    e.extend_from_slice(&seq.to_be_bytes());
    let iv = (seq as u64).to_be_bytes();
    e.extend_from_slice(&iv);
    let mut ct = plaintext.to_vec();
    let mut a = [0u8; 12];
    let al = aad(spi, seq as u64, false, &mut a);
    let tag = aead.seal(&nonce(&k.salt(), &iv), &a[..al], &mut ct);
    e.extend_from_slice(&ct);
    e.extend_from_slice(&tag);
    e
}

#[test]
fn trailer_validation() {
    let k = key(Cipher::Aes128Gcm16);
    let rx = InboundSa::new(9, &k, false);
    let inner = inner_v4(22, 0, false); // 22 + 2 = 24: no padding needed
    let ok = |pad: &[u8], nh: u8| {
        let mut p = inner.clone();
        p.extend_from_slice(pad);
        p.push(pad.len() as u8);
        p.push(nh);
        p
    };
    let mut e = raw_esp(&k, 9, 1, &ok(&[], 4));
    assert!(rx.decapsulate(&mut e, 1).is_ok());
    let mut e = raw_esp(&k, 9, 1, &ok(&[1, 2, 3, 4], 4));
    assert!(rx.decapsulate(&mut e, 1).is_ok(), "longer padding is legal");
    let mut e = raw_esp(&k, 9, 1, &ok(&[1, 2, 9, 4], 4));
    assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::BadPadding));
    let mut p = inner.clone();
    p.extend_from_slice(&[200, 4]);
    let mut e = raw_esp(&k, 9, 1, &p);
    assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::BadPadding));
    let mut e = raw_esp(&k, 9, 1, &ok(&[], 6));
    assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::BadNextHeader));
    let mut e = raw_esp(&k, 9, 1, &ok(&[], 59));
    assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::DummyPacket));
    let mut e = raw_esp(&k, 9, 1, &ok(&[], 41));
    assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::BadInnerPacket));
    // TFC padding after the inner packet is cut off by the inner length.
    let mut p = inner.clone();
    p.extend_from_slice(&[0xee; 6]);
    p.extend_from_slice(&[0, 4]);
    let mut e = raw_esp(&k, 9, 1, &p);
    let d = rx.decapsulate(&mut e, 1).unwrap();
    assert_eq!(&e[d.inner], &inner[..]);
}

#[test]
fn runts_and_bad_inner_packets() {
    let k = key(Cipher::Aes128Gcm16);
    let rx = InboundSa::new(9, &k, false);
    for len in 0..MIN_ESP_LEN {
        let mut e = vec![0u8; len];
        assert_eq!(rx.decapsulate(&mut e, 1), Err(DropReason::EspRunt));
    }
    let tx = OutboundSa::new(9, &k, false, outer4(false));
    let mut out = vec![0u8; 256];
    assert_eq!(
        tx.encapsulate(&[0x45, 0, 0], &mut out),
        Err(DropReason::BadInnerPacket)
    );
    let mut small = vec![0u8; 40];
    assert_eq!(
        tx.encapsulate(&inner_v4(100, 0, false), &mut small),
        Err(DropReason::NoRoom)
    );
}

#[test]
fn keys_are_checked_and_never_printed() {
    assert!(SaKey::from_keymat(Cipher::Aes128Gcm16, &KEY128).is_ok());
    assert!(SaKey::from_keymat(Cipher::Aes256Gcm16, &KEY128).is_err());
    let k = SaKey::from_keymat(Cipher::Aes128Gcm16, &KEY128).unwrap();
    let shown = format!("{k:?}");
    assert!(
        !shown.contains("4c") && shown.contains("redacted"),
        "{shown}"
    );
}

#[test]
fn backends_agree_and_open_each_other() {
    use crypto::Backend;
    let all = [Backend::AwsLc, Backend::Ring, Backend::RustCrypto];
    for cipher in [Cipher::Aes128Gcm16, Cipher::Aes256Gcm16] {
        let k = key(cipher);
        let aeads: Vec<_> = all.iter().map(|b| k.aead_with(*b)).collect();
        for len in [0usize, 1, 15, 16, 17, 64, 511, 1400] {
            let nonce = [len as u8; 12];
            let aad = [7u8; 12];
            let pt: Vec<u8> = (0..len).map(|i| (i * 3) as u8).collect();
            let mut sealed = Vec::new();
            for a in &aeads {
                let mut buf = pt.clone();
                let tag = a.seal(&nonce, &aad, &mut buf);
                sealed.push((buf, tag));
            }
            assert!(sealed.windows(2).all(|w| w[0] == w[1]), "{cipher:?} {len}");
            let (ct, tag) = &sealed[0];
            for a in &aeads {
                let mut ct_tag = ct.clone();
                ct_tag.extend_from_slice(tag);
                a.open_appended(&nonce, &aad, &mut ct_tag).unwrap();
                assert_eq!(&ct_tag[..len], &pt[..]);
                let mut bad = ct.clone();
                bad.extend_from_slice(tag);
                let last = bad.len() - 1;
                bad[last] ^= 0x80;
                assert_eq!(a.open_appended(&nonce, &aad, &mut bad), Err(crypto::BadTag));
            }
        }
    }
}
