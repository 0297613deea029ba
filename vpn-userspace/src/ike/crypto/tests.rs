//! Known-answer and property tests for the IKEv2 crypto layer. Every vector names its source.

use super::*;

fn hx(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Algorithm tables
// ---------------------------------------------------------------------------------------

#[test]
fn transform_ids_round_trip() {
    for p in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512] {
        assert_eq!(Prf::from_id(p.id()), Some(p));
    }
    assert_eq!(Prf::from_id(2), None); // PRF_HMAC_SHA1 is not offered
    assert_eq!(
        [5, 6, 7].map(|i| Prf::from_id(i).unwrap().output_len()),
        [32, 48, 64]
    );
    for g in [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ] {
        assert_eq!(DhGroup::from_id(g.id()), Some(g));
    }
    assert_eq!(
        [14, 19, 20, 31].map(|i| DhGroup::from_id(i).unwrap().public_len()),
        [256, 64, 96, 32]
    );
    assert_eq!(DhGroup::from_id(2), None);
    for i in [
        Integ::None,
        Integ::HmacSha256_128,
        Integ::HmacSha384_192,
        Integ::HmacSha512_256,
    ] {
        assert_eq!(Integ::from_id(i.id()), Some(i));
    }
    assert_eq!(
        [12, 13, 14].map(|i| {
            let x = Integ::from_id(i).unwrap();
            (x.key_len(), x.icv_len())
        }),
        [(32, 16), (48, 24), (64, 32)]
    );
    assert_eq!(
        Encr::from_transform(20, Some(256)),
        Some(Encr::AesGcm16 { key_bits: 256 })
    );
    assert_eq!(Encr::from_transform(20, Some(192)), None);
    assert_eq!(Encr::from_transform(20, None), None);
    assert_eq!(
        Encr::from_transform(12, Some(192)),
        Some(Encr::AesCbc { key_bits: 192 })
    );
    assert_eq!(Encr::from_transform(12, Some(64)), None);
    assert_eq!(Encr::from_transform(3, Some(128)), None);
    let gcm = Encr::AesGcm16 { key_bits: 128 };
    assert!(gcm.is_aead() && gcm.id() == 20 && gcm.key_bits() == 128);
    assert_eq!(gcm.keymat_len(), 20); // RFC 5282 7.1: key + 4 salt bytes
    let cbc = Encr::AesCbc { key_bits: 256 };
    assert!(!cbc.is_aead() && cbc.id() == 12);
    assert_eq!(cbc.keymat_len(), 32);
}

// ---------------------------------------------------------------------------------------
// PRFs: RFC 4231 section 4 (HMAC-SHA-256/384/512 test cases 1, 2, 6, 7)
// ---------------------------------------------------------------------------------------

#[test]
fn prf_rfc4231() {
    // (key, data, SHA-256, SHA-384, SHA-512), RFC 4231 section 4.2, 4.3, 4.7, 4.8.
    type Case = (Vec<u8>, Vec<u8>, &'static str, &'static str, &'static str);
    let cases: [Case; 4] = [
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
             faea9ea9076ede7f4af152e8b2fa9cb6",
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
             daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
             8e2240ca5e69e2c78b3239ecfab21649",
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        ),
        (
            vec![0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6
             0c2ef6ab4030fe8296248df163f44952",
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352
             6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
        ),
        (
            vec![0xaa; 131],
            b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5
             a678cc31e799176d3860e6110c46523e",
            "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944
             b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
        ),
    ];
    for (key, data, s256, s384, s512) in &cases {
        // Split the data to check that compute() hashes the concatenation.
        let (a, b) = data.split_at(data.len() / 3);
        assert_eq!(*Prf::HmacSha256.compute(key, &[a, b]), hx(s256));
        assert_eq!(*Prf::HmacSha384.compute(key, &[data]), hx(s384));
        assert_eq!(*Prf::HmacSha512.compute(key, &[a, &[], b]), hx(s512));
    }
}

// ---------------------------------------------------------------------------------------
// prf+, SKEYSEED, key split, rekey, Child SA KEYMAT, AUTH
//
// No published IKEv2 KDF vector with answers was reachable here (the NIST ACVP
// kdf-components IKEv2 samples found carry requests only), so these expected values come from
// an independent implementation: Python 3's `hmac`/`hashlib`, running this script (written for
// these tests, output pasted below):
//
//   import hmac, hashlib
//   H = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}
//   def prf(h, k, d): return hmac.new(k, d, H[h]).digest()
//   def prfplus(h, k, s, n):
//       out = b""; t = b""; i = 1
//       while len(out) < n:
//           t = prf(h, k, t + s + bytes([i])); out += t; i += 1
//       return out[:n]
//   ni = bytes(range(0x00, 0x20)); nr = bytes(range(0x20, 0x40)); gir = bytes(range(0x40, 0x80))
//   spi_i = bytes.fromhex("0102030405060708"); spi_r = bytes.fromhex("1112131415161718")
//   prfplus("sha256", b"key", b"seed", 100)                                  # PRFPLUS
//   ss = prf("sha256", ni + nr, gir)                                          # SKEYSEED
//   prfplus("sha256", ss, ni + nr + spi_i + spi_r, 32 * 7)                    # SK_d .. SK_pr
//   ss384 = prf("sha384", ni + nr, gir)                                       # SKEYSEED384
//   km = prfplus("sha384", ss384, ni + nr + spi_i + spi_r, 48 * 3 + 36 * 2)   # GCM_KEYMAT
//   prf("sha256", km[:32], gir + ni + nr)                                     # REKEY
//   prfplus("sha256", km[:32], ni + nr, 72)                                   # CHILD_NODH
//   prfplus("sha256", km[:32], gir + ni + nr, 72)                             # CHILD_DH
//   msg = bytes.fromhex("00112233445566778899aabbccddeeff") * 3
//   idb = bytes([1, 0, 0, 0, 192, 0, 2, 1]); skp = bytes(range(0x80, 0xa0))
//   so = msg + nr + prf("sha256", skp, idb)                                   # SIGNED
//   prf("sha256", prf("sha256", b"foobar", b"Key Pad for IKEv2"), so)         # PSK_AUTH
// ---------------------------------------------------------------------------------------

fn kdf_inputs() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        (0x00..0x20).collect(),
        (0x20..0x40).collect(),
        (0x40..0x80).collect(),
    )
}

const SPI_I: u64 = 0x0102_0304_0506_0708;
const SPI_R: u64 = 0x1112_1314_1516_1718;

#[test]
fn prf_plus_python_cross_check() {
    let out = Prf::HmacSha256.plus(b"key", &[b"se", b"ed"], 100);
    assert_eq!(
        *out,
        hx(
            "a2392e429a99b173341b368bb5ce320bfd483d89567c14ec187c2d77e3c0a208
            ba45d21d42611712996c0cd4b329ac8681e093a8a5bbbbf0fb8c9d1cf674f742
            3fe3d2fbd6641ff544749daa37804f04be0b1beba59ddc3867c3016209779fa7
            4e8b8654"
        )
    );
    // prf+ is a prefix-stable stream.
    let short = Prf::HmacSha256.plus(b"key", &[b"seed"], 33);
    assert_eq!(&short[..], &out[..33]);
    assert!(Prf::HmacSha256.plus(b"key", &[b"seed"], 0).is_empty());
    // The longest output prf+ allows: 255 blocks.
    assert_eq!(
        Prf::HmacSha512.plus(b"k", &[b"s"], 255 * 64).len(),
        255 * 64
    );
}

/// A published IKEv2 KDF vector: libreswan's IKEv2 KDF CAVS driver (libreswan-ikev2-cavs),
/// example run in its source comment, `-g <g^ir> -n <g^ir new> -a <Ni> -b <Nr> -c <SPIi>
/// -d <SPIr> -l 132 -h 2`. It uses PRF-HMAC-SHA1, which `Prf` does not offer, so it runs the
/// same HMAC and prf+ cores that `Prf` uses with SHA-1 and the RFC 7296 compositions of
/// skeyseed / derive_ike_keys / child_keymat / skeyseed_rekey. (Our Python cross-check
/// script, with SHA-1, reproduces these five values too.)
#[test]
fn prf_plus_libreswan_cavs_sha1_vector() {
    let sha1 = aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY;
    let g = hx("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52");
    let g_new = hx("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330");
    let ni = hx("32b50d5f4a3763f3");
    let nr = hx("9206a04b26564cb1");
    let spi_i = hx("34c9e7c188868785");
    let spi_r = hx("3ff77d760d2b2199");
    let ss = hmac_concat(sha1, &[&ni[..], &nr[..]].concat(), &[&g]);
    assert_eq!(*ss, hx("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"));
    let dkm = prf_plus(sha1, &ss, &[&ni, &nr, &spi_i, &spi_r], 132);
    assert_eq!(
        *dkm,
        hx(
            "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002
            a2a63080e514a062768b76606f9fa5e992204fc5a670bde3f10d6b027113936a
            5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119
            8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435
            a7a56cc4"
        )
    );
    let sk_d = &dkm[..20];
    assert_eq!(
        *prf_plus(sha1, sk_d, &[&ni, &nr], 132),
        hx(
            "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c581
            1a8e7b5d1cdabd9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee7181
            4ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf
            285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e66499
            4d234cb4"
        )
    );
    assert_eq!(
        *prf_plus(sha1, sk_d, &[&g_new, &ni, &nr], 132),
        hx(
            "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d373016
            28190e38c66232eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c04000
            52f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a
            05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054
            d56fd74c"
        )
    );
    assert_eq!(
        *hmac_concat(sha1, sk_d, &[&g_new, &ni, &nr]),
        hx("63e81194946ebd05df7df5ebf5d8750056bf1f1d")
    );
}

#[test]
#[should_panic(expected = "too long")]
fn prf_plus_refuses_more_than_255_blocks() {
    let _ = Prf::HmacSha256.plus(b"k", &[b"s"], 255 * 32 + 1);
}

#[test]
fn ike_key_schedule_python_cross_check() {
    let (ni, nr, gir) = kdf_inputs();
    let ss = skeyseed(Prf::HmacSha256, &ni, &nr, &gir);
    assert_eq!(
        *ss,
        hx("75f3ac8b5afcce9871da3a5d84d0248ecbbd22bf70390b3c000dbda8738199d7")
    );
    let suite = IkeSuite {
        encr: Encr::AesCbc { key_bits: 256 },
        integ: Integ::HmacSha256_128,
        prf: Prf::HmacSha256,
        dh: DhGroup::Ecp256,
    };
    let k = derive_ike_keys(&suite, &ss, &ni, &nr, SPI_I, SPI_R);
    assert_eq!(
        *k.sk_d,
        hx("38a9688e4fa53379d9708f124497c0fb8e947eb0507b018ec706d534f9e346e1")
    );
    assert_eq!(
        *k.sk_ai,
        hx("4c2b11c55a8637526b8053a76f1081b22c8434e0ace51bfc66d98de42b630098")
    );
    assert_eq!(
        *k.sk_ar,
        hx("b06ac9e8ef0c81d7607c2fb75a3008a7c80042a1f717dedc1fc72378790fecb4")
    );
    assert_eq!(
        *k.sk_ei,
        hx("69b84422e54e263747246ef8cf52063ad9233c350664eac97539146dec5b6aa5")
    );
    assert_eq!(
        *k.sk_er,
        hx("e52b4f4eecc35dbfc871862186b9ef1d7a16233d20d3120d9acaa80c33ff0447")
    );
    assert_eq!(
        *k.sk_pi,
        hx("a3527d7ec36d4253a78f38362fe7a2aa7eeb7c6d801c6a316d6db4ecc73b87b0")
    );
    assert_eq!(
        *k.sk_pr,
        hx("258434d4fd082925b8984bf833f92d2b218a42710d4cf747c794ab6164496da0")
    );
}

#[test]
fn ike_key_schedule_aead_python_cross_check() {
    let (ni, nr, gir) = kdf_inputs();
    let ss = skeyseed(Prf::HmacSha384, &ni, &nr, &gir);
    assert_eq!(
        *ss,
        hx(
            "3e84602c22e36bdc478e3e25e1a52aba3ff110b1f9d9a5208ab96b3f46fcaad6
            7a1f3b25b0f39ac3d300aad7d40ae58c"
        )
    );
    let suite = IkeSuite {
        encr: Encr::AesGcm16 { key_bits: 256 },
        integ: Integ::None,
        prf: Prf::HmacSha384,
        dh: DhGroup::Curve25519,
    };
    let k = derive_ike_keys(&suite, &ss, &ni, &nr, SPI_I, SPI_R);
    let km = hx(
        "86075fbc84a7c501ece8906bd214d4c1533d0d8d333113812ec412f053ebe82b
            b3154e1c2a1901dc480b66bfc4e755d4ebb02dd80f4eed4b7d0049bb483d9b01
            c68a5b93eb0c90e6178c2192d24c08f24c4b1ef9cd4c8dccb9c157580600b0d5
            93db7a62c7699029928ba0b67cd716b1ba449934cb2257ffb63a7aab0cf06825
            6341bf0e0ec7d78f6acb5574f58eec2cf116de46676ecfcc3014a42613828e23
            2b5fa910911585fa766b67531f1baf8e16d512002135f16114c80ae9ac2eccc0
            417774d89a8242575d72eccfb5b324ca746eaf1da835381e",
    );
    // SK_d 48 | SK_ai 0 | SK_ar 0 | SK_ei 36 | SK_er 36 | SK_pi 48 | SK_pr 48
    assert!(k.sk_ai.is_empty() && k.sk_ar.is_empty());
    assert_eq!(&k.sk_d[..], &km[..48]);
    assert_eq!(&k.sk_ei[..], &km[48..84]);
    assert_eq!(&k.sk_er[..], &km[84..120]);
    assert_eq!(&k.sk_pi[..], &km[120..168]);
    assert_eq!(&k.sk_pr[..], &km[168..216]);
    // Integ is ignored for AEAD even if a caller passes one.
    let odd = IkeSuite {
        integ: Integ::HmacSha256_128,
        ..suite
    };
    let k2 = derive_ike_keys(&odd, &ss, &ni, &nr, SPI_I, SPI_R);
    assert_eq!(*k2.sk_pr, *k.sk_pr);
}

#[test]
fn rekey_and_child_keymat_python_cross_check() {
    let (ni, nr, gir) = kdf_inputs();
    let km = hx(
        "86075fbc84a7c501ece8906bd214d4c1533d0d8d333113812ec412f053ebe82b
            b3154e1c2a1901dc480b66bfc4e755d4ebb02dd80f4eed4b7d0049bb483d9b01
            c68a5b93eb0c90e6178c2192d24c08f24c4b1ef9cd4c8dccb9c157580600b0d5
            93db7a62c7699029928ba0b67cd716b1ba449934cb2257ffb63a7aab0cf06825
            6341bf0e0ec7d78f6acb5574f58eec2cf116de46676ecfcc3014a42613828e23
            2b5fa910911585fa766b67531f1baf8e16d512002135f16114c80ae9ac2eccc0
            417774d89a8242575d72eccfb5b324ca746eaf1da835381e",
    );
    let sk_d = &km[..32];
    assert_eq!(
        *skeyseed_rekey(Prf::HmacSha256, sk_d, &gir, &ni, &nr),
        hx("c75fb95923a7654ba825c92f492fb1e34f3e36273a9df9fb814d41f9d8cbf55f")
    );
    assert_eq!(
        *child_keymat(Prf::HmacSha256, sk_d, None, &ni, &nr, 72),
        hx(
            "bba37ce6bf7156efd80fc01464743c74083b9e2697fc1ac1e2fcad655e585044
            7adbc1dd403dcc1dc94114eea03288beb8c38b020c40b87ec76130cce859bc6f
            5e967f970960d7f3"
        )
    );
    assert_eq!(
        *child_keymat(Prf::HmacSha256, sk_d, Some(&gir), &ni, &nr, 72),
        hx(
            "24b5e72c4a52a8efc91f02df24e4a5cbe14b96f9cacfd21f38d6e7a7d3c29286
            d6ad1103155e30a422b4cc46c5dfa9d1421cf271f143d4579c5532511fd67b31
            cb06de4c06fc912b"
        )
    );
}

#[test]
fn psk_auth_python_cross_check() {
    let (_, nr, _) = kdf_inputs();
    let msg = hx("00112233445566778899aabbccddeeff").repeat(3);
    let id_body = [1u8, 0, 0, 0, 192, 0, 2, 1]; // ID_IPV4_ADDR 192.0.2.1
    let sk_p: Vec<u8> = (0x80..0xa0).collect();
    let so = signed_octets(Prf::HmacSha256, &msg, &nr, &sk_p, &id_body);
    assert_eq!(
        so,
        hx(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
            00112233445566778899aabbccddeeff202122232425262728292a2b2c2d2e2f
            303132333435363738393a3b3c3d3e3f84e87069f77516f4e37c84196ea19f5a
            9e323cdcb776e159bc06349fbfd88523"
        )
    );
    // RFC 7296 2.15 layout: RealMessage | Nonce | prf(SK_p, IDx').
    assert_eq!(&so[..48], &msg[..]);
    assert_eq!(&so[48..80], &nr[..]);
    assert_eq!(&so[80..], &Prf::HmacSha256.compute(&sk_p, &[&id_body])[..]);
    let auth = psk_auth(Prf::HmacSha256, b"foobar", &so);
    assert_eq!(
        *auth,
        hx("5da301efe62f837f7265c668d0aa7eb0f89e188612ced65aabeb78ad5da299f1")
    );
    // AUTH = prf(prf(PSK, "Key Pad for IKEv2"), octets), key pad of 17 bytes, no NUL.
    assert_eq!(KEY_PAD.len(), 17);
    let inner = Prf::HmacSha256.compute(b"foobar", &[b"Key Pad for IKEv2"]);
    assert_eq!(*auth, *Prf::HmacSha256.compute(&inner, &[&so]));
    assert!(ct_eq(&auth, &psk_auth(Prf::HmacSha256, b"foobar", &so)));
    assert!(!ct_eq(&auth, &psk_auth(Prf::HmacSha256, b"foobaz", &so)));
}

#[test]
fn ct_eq_basics() {
    assert!(ct_eq(b"", b""));
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
}

#[test]
fn random_values() {
    assert_eq!(random_bytes(0).len(), 0);
    let a = random_bytes(32);
    let b = random_bytes(32);
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    for _ in 0..1000 {
        assert_ne!(random_spi(), 0);
        assert_ne!(random_u32_nonzero(), 0);
    }
}

#[test]
fn secrets_are_redacted_in_debug() {
    let suite = IkeSuite {
        encr: Encr::AesCbc { key_bits: 128 },
        integ: Integ::HmacSha256_128,
        prf: Prf::HmacSha256,
        dh: DhGroup::Ecp256,
    };
    let k = derive_ike_keys(&suite, &[0x5a; 32], b"ni", b"nr", 1, 2);
    let d = format!("{k:?}");
    let hexed: String = k.sk_d.iter().map(|b| format!("{b:02x}")).collect();
    assert!(d.contains("redacted") && !d.contains(&hexed[..8]));
    assert!(!d.contains(&format!("{:?}", &k.sk_d[..4])));
    let x = DhSecret::from_private(DhGroup::Curve25519, &[0x42; 32]).unwrap();
    assert!(!format!("{x:?}").contains("66"));
    let c = SkCipher::new(
        Encr::AesCbc { key_bits: 128 },
        Integ::HmacSha256_128,
        &[0x42; 16],
        &[0x43; 32],
    )
    .unwrap();
    let d = format!("{c:?}");
    assert!(!d.contains("66") && !d.contains("67"), "{d}");
}

// ---------------------------------------------------------------------------------------
// Diffie-Hellman
// ---------------------------------------------------------------------------------------

/// RFC 5903 section 8.1 (256-bit random ECP group): i, g^i (x|y), r, g^r (x|y), g^ir x.
#[test]
fn ecp256_rfc5903() {
    let i = hx("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433");
    let gi = hx(
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180
                 5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
    );
    let r = hx("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53");
    let gr = hx(
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
                 56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
    );
    let gir = hx("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE");
    let si = DhSecret::from_private(DhGroup::Ecp256, &i).unwrap();
    let sr = DhSecret::from_private(DhGroup::Ecp256, &r).unwrap();
    assert_eq!(si.group(), DhGroup::Ecp256);
    assert_eq!(si.public(), &gi[..]);
    assert_eq!(sr.public(), &gr[..]);
    assert_eq!(*si.agree(&gr).unwrap(), gir);
    assert_eq!(*sr.agree(&gi).unwrap(), gir);
}

/// RFC 5903 section 8.2 (384-bit random ECP group).
#[test]
fn ecp384_rfc5903() {
    let i = hx(
        "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655
                E35B538041E649EE3FAEF896783AB194",
    );
    let gi = hx(
        "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6
                 DE3AC808ACB4BDB4C88732AEE95F41AA
                 9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38E
                 EB9FCFF3C2C947DAE69B4C634573A81C",
    );
    let r = hx(
        "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942
                E0308312916B8ED2960E4BD55A7448FC",
    );
    let gr = hx(
        "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D
                 0D1AC43A0336DEF96FDA41D0774A3571
                 DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FF
                 F83FA40142209DFF5EAAD96DB9E6386C",
    );
    let gir = hx(
        "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4
                  D603135569B9E9D09CF5D4A270F59746",
    );
    let si = DhSecret::from_private(DhGroup::Ecp384, &i).unwrap();
    let sr = DhSecret::from_private(DhGroup::Ecp384, &r).unwrap();
    assert_eq!(si.public(), &gi[..]);
    assert_eq!(sr.public(), &gr[..]);
    assert_eq!(*si.agree(&gr).unwrap(), gir);
    assert_eq!(*sr.agree(&gi).unwrap(), gir);
}

/// RFC 7748 section 6.1 (X25519 Alice and Bob).
#[test]
fn x25519_rfc7748() {
    let a = hx("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let a_pub = hx("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let b = hx("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let b_pub = hx("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let k = hx("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    let sa = DhSecret::from_private(DhGroup::Curve25519, &a).unwrap();
    let sb = DhSecret::from_private(DhGroup::Curve25519, &b).unwrap();
    assert_eq!(sa.public(), &a_pub[..]);
    assert_eq!(sb.public(), &b_pub[..]);
    assert_eq!(*sa.agree(&b_pub).unwrap(), k);
    assert_eq!(*sb.agree(&a_pub).unwrap(), k);
}

/// MODP-2048 (RFC 3526 group 14). No published IKE vector for this group was reachable; the
/// values come from Python 3's built-in pow() with the RFC 3526 prime:
///   xi = int.from_bytes(bytes(range(1, 41)), "big"); xr = int.from_bytes(bytes(range(0x41, 0x69)), "big")
///   gi = pow(2, xi, p); gr = pow(2, xr, p); s = pow(gr, xi, p)  # == pow(gi, xr, p)
/// each printed as 256 big-endian bytes.
#[test]
fn modp2048_python_pow_vector() {
    let xi: Vec<u8> = (1..41).collect();
    let xr: Vec<u8> = (0x41..0x69).collect();
    let gi = hx(
        "f0cdbd67b9f7aa420ec897f258819be9496e9a0a5726c89df16dd7f451c98e45
            fb7738b946ffcc3743438f668c562d06c65d330de82a1078bf6f9292fdc86bec
            74ac0c26640704012785c1611d3c4f3ec28877eff3f5b11ce33a905b731dafca
            c4daf7e440d201db0ec4888a4e080572c92c1db2886612a28b6ab995987c8767
            b6a3f577e277713abefe80b9948bd5b71b931d19185d503acf998c6e4b1cdaa3
            bc6b1ba20c71e6aceab8bdbf477c4706bea69f095f7687f47e93f99695fe582c
            7cab8d33f0267dbf4aab867f3a7f7a7f626e520129cd0fa3c7dc290f59217de1
            7293bef38ae9b3bd3829226a08f611a9077a9acf31a954332f5a54d6eb7d524b",
    );
    let gr = hx(
        "ac111634fd5485cd4e1b67732dbaf3348510e97e8a97de00c87028682ab7bca9
            f352d4f7b394d42f4d206e15cc4dbfd3764fadbdf73e68a5174da1f4088e2d6b
            c3eab63f1e094e53d014ef0a70df94eb7782f62c78dd5cb7d276496b86830922
            be80d10788940395c23950cd6c391263991d35d295aaf2da86eb386c7816e47e
            f109cec6d91607dbf46e0c7187771a3f55a7933b9f57cc56546280211208a4d9
            8e8694a0c7ee8bc4f83374104cf9e217dda4776595dbdc3a53eb41ff5a961cb6
            bd1b6d83491de3da50835a5f6215bf717ab6e73e6910d0d37297911f920ceda5
            05dfa12c74bf3316aa1ddb70ffa25c3f0612513fc75fcd2426ebc7b9c0c54e08",
    );
    let s = hx(
        "d355067f084adc49c665671675dd3cdb80e9a5503dc2e439e0e0d60fdeac1957
            640ef14da60d3e07673c402ce56d78721ee90f62f05420f1978ca7b00173da24
            50ca22b4b934b2a17eb35d26b92725273454f39caec89e164234f4b461dd0d98
            b10a67c723b463f13382600c949d5d63710d1c758d5b05aea5f3b224aa2e44f3
            4c481a946da5c85279242d873fdb936df3a520f4fef45e039db2767a63aa112c
            d60ea052118c28423880948ec26fce566af37fbab4b268bce00e9dd1d7b751c1
            57574a3df7d3d9d09dce1fe6b002afe8cc7197bf8352dccabc304f969ce18892
            b29941f2de502166b82a7729b1b90d41f4023dea1c343998298870a841371a71",
    );
    let si = DhSecret::from_private(DhGroup::Modp2048, &xi).unwrap();
    let sr = DhSecret::from_private(DhGroup::Modp2048, &xr).unwrap();
    assert_eq!(si.public(), &gi[..]);
    assert_eq!(sr.public(), &gr[..]);
    assert_eq!(*si.agree(&gr).unwrap(), s);
    assert_eq!(*sr.agree(&gi).unwrap(), s);
    // Leading zero bytes in the given private value do not change it.
    let mut padded = vec![0u8; 10];
    padded.extend_from_slice(&xi);
    let sp = DhSecret::from_private(DhGroup::Modp2048, &padded).unwrap();
    assert_eq!(sp.public(), &gi[..]);
}

#[test]
fn modp2048_small_exponents() {
    // 2^1 = 2 and 2^10 = 1024, zero-padded to 256 bytes.
    let s = DhSecret::from_private(DhGroup::Modp2048, &[1]).unwrap();
    let mut two = [0u8; 256];
    two[255] = 2;
    assert_eq!(s.public(), &two[..]);
    let s = DhSecret::from_private(DhGroup::Modp2048, &[10]).unwrap();
    let mut k = [0u8; 256];
    k[254] = 4;
    assert_eq!(s.public(), &k[..]);
    // y = 2 is in range: 2^10 = 1024 again.
    assert_eq!(&s.agree(&two).unwrap()[..], &k[..]);
    assert_eq!(
        DhSecret::from_private(DhGroup::Modp2048, &[]).unwrap_err(),
        CryptoError::BadLength
    );
    assert_eq!(
        DhSecret::from_private(DhGroup::Modp2048, &[1; 257]).unwrap_err(),
        CryptoError::BadLength
    );
}

#[test]
fn generated_secrets_agree_in_every_group() {
    for g in [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ] {
        let a = DhSecret::generate(g).unwrap();
        let b = DhSecret::generate(g).unwrap();
        assert_eq!(a.group(), g);
        assert_eq!(a.public().len(), g.public_len());
        assert_ne!(a.public(), b.public());
        let k1 = a.agree(b.public()).unwrap();
        let k2 = b.agree(a.public()).unwrap();
        assert_eq!(*k1, *k2);
        assert_eq!(k1.len(), g.shared_len());
    }
}

#[test]
fn modp2048_rejects_out_of_range_public_values() {
    let s = DhSecret::generate(DhGroup::Modp2048).unwrap();
    let p = hx(concat!(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
        "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    )); // RFC 3526 section 3
    let num = |last: u8| {
        let mut v = vec![0u8; 256];
        v[255] = last;
        v
    };
    let mut p_minus_1 = p.clone();
    p_minus_1[255] -= 1;
    let mut p_minus_2 = p.clone();
    p_minus_2[255] -= 2;
    // p ends in 64 one bits: p + 1 carries into ...aacaa69 00..00.
    let mut p_plus_1 = p.clone();
    p_plus_1[248..].fill(0);
    p_plus_1[247] += 1;
    let bad = [
        num(0),
        num(1),
        p_minus_1,
        p.clone(),
        p_plus_1,
        vec![0xff; 256],
        vec![2; 255],
        vec![2; 257],
        vec![],
    ];
    for y in &bad {
        assert_eq!(
            s.agree(y).unwrap_err(),
            CryptoError::InvalidPublicValue,
            "{:02x?}",
            &y.get(250..)
        );
    }
    // The extremes of the valid range work.
    assert!(s.agree(&num(2)).is_ok());
    assert!(s.agree(&p_minus_2).is_ok());
}

#[test]
fn ecp_rejects_bad_public_values() {
    // RFC 5903 8.1 g^r with one bit of y flipped: not on the curve.
    let mut off = hx(
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
                      56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
    );
    off[63] ^= 1;
    let s = DhSecret::generate(DhGroup::Ecp256).unwrap();
    for y in [
        off.clone(),
        vec![0u8; 64],  // (0, 0), the usual stand-in for the point at infinity
        vec![0xff; 64], // coordinates >= p
        off[..63].to_vec(),
        [&[0x04u8][..], &off[..]].concat(), // SEC1 prefix is not sent in IKEv2
        vec![],
    ] {
        assert_eq!(s.agree(&y).unwrap_err(), CryptoError::InvalidPublicValue);
    }
    // P-384: RFC 5903 8.2 g^r with one bit of y flipped.
    let mut off = hx(
        "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D
                      0D1AC43A0336DEF96FDA41D0774A3571
                      DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FF
                      F83FA40142209DFF5EAAD96DB9E6386C",
    );
    off[95] ^= 1;
    let s = DhSecret::generate(DhGroup::Ecp384).unwrap();
    assert_eq!(s.agree(&off).unwrap_err(), CryptoError::InvalidPublicValue);
    assert_eq!(
        s.agree(&[0u8; 64]).unwrap_err(),
        CryptoError::InvalidPublicValue
    );
}

#[test]
fn x25519_rejects_low_order_points_and_bad_lengths() {
    let s = DhSecret::from_private(
        DhGroup::Curve25519,
        &hx("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
    )
    .unwrap();
    // Points of small order, whose X25519 output is all zero for every scalar (RFC 7748
    // section 6.1 asks to check for it): u = 0, u = 1, the two order-8 points, and p - 1, p,
    // p + 1 in non-canonical form.
    for u in [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ] {
        assert_eq!(
            s.agree(&hx(u)).unwrap_err(),
            CryptoError::InvalidPublicValue,
            "{u}"
        );
    }
    assert_eq!(
        s.agree(&[9u8; 31]).unwrap_err(),
        CryptoError::InvalidPublicValue
    );
    assert_eq!(
        s.agree(&[9u8; 33]).unwrap_err(),
        CryptoError::InvalidPublicValue
    );
    assert_eq!(
        DhSecret::from_private(DhGroup::Curve25519, &[1; 31]).unwrap_err(),
        CryptoError::BadLength
    );
}

/// Wycheproof testvectors_v1/x25519_test.json (C2SP/wycheproof, commit 085c1189), tcIds 63-86:
/// "public key with low order" / "public key == 0" / "public key == 1", flag ZeroSharedSecret,
/// shared secret all zero. (tcId, public, private); every one must be refused.
#[test]
fn x25519_wycheproof_low_order_points() {
    let cases = [
        (
            63,
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "e0f978dfcd3a8f1a5093418de54136a584c20b7b349afdf6c0520886f95b1272",
        ),
        (
            64,
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "387355d995616090503aafad49da01fb3dc3eda962704eaee6b86f9e20c92579",
        ),
        (
            65,
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "c8fe0df92ae68a03023fc0c9adb9557d31be7feed0d3ab36c558143daf4dbb40",
        ),
        (
            66,
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
            "c8d74acde5934e64b9895d5ff7afbffd7f704f7dfccff7ac28fa62a1e6410347",
        ),
        (
            67,
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
            "b85649d5120e01e8ccaf7b2fb8d81b62e8ad6f3d5c0553fdde1906cb9d79c050",
        ),
        (
            68,
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "2064b2f4c9dc97ec7cf58932fdfa3265ba6ea4d11f0259b8efc8afb35db88c48",
        ),
        (
            69,
            "0000000000000000000000000000000000000000000000000000000000000000",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            70,
            "0100000000000000000000000000000000000000000000000000000000000000",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            71,
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            72,
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            73,
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            74,
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            75,
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            76,
            "0000000000000000000000000000000000000000000000000000000000000080",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            77,
            "0100000000000000000000000000000000000000000000000000000000000080",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            78,
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            79,
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            80,
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            81,
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            82,
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "786a33a4f7af297a20e7642925932bf509e7070fa1bc36986af1eb13f4f50b55",
        ),
        (
            83,
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "40ff586e73d61f0960dc2d763ac19e98225f1194f6fe43d5dd97ad55b3d35961",
        ),
        (
            84,
            "0000000000000000000000000000000000000000000000000000000000000080",
            "7887889bac4c629a101d3724f2ed8b98d936fde79e1a1f77d86779626bf8f263",
        ),
        (
            85,
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "584fceaebae944bfe93b2e0d0a575f706ce5ada1da2b1311c3b421f9186c7a6f",
        ),
        (
            86,
            "0100000000000000000000000000000000000000000000000000000000000080",
            "e07971ee820e48b0b266d8be3cdbbb5e900a43f59ee8535c6572418615de4962",
        ),
    ];
    for (tc, public, private) in cases {
        let s = DhSecret::from_private(DhGroup::Curve25519, &hx(private)).unwrap();
        assert_eq!(
            s.agree(&hx(public)).unwrap_err(),
            CryptoError::InvalidPublicValue,
            "Wycheproof x25519 tcId {tc}"
        );
    }
}

/// Wycheproof testvectors_v1/ecdh_secp256r1_ecpoint_test.json (C2SP/wycheproof, commit
/// 1295cf54): tcId 1 (normal case) must work, tcIds 332-347 ("point is not on curve",
/// InvalidCurveAttack, coordinates from {0, 1, p-1, p}) must be refused. The vectors carry the
/// SEC1 0x04 prefix, which IKEv2's KE payload leaves out (RFC 5903 section 7).
#[test]
fn ecp256_wycheproof_ecpoint() {
    let ke = |sec1: &str| {
        let b = hx(sec1);
        assert_eq!(b[0], 4);
        b[1..].to_vec()
    };
    // tcId 1
    let s = DhSecret::from_private(
        DhGroup::Ecp256,
        &hx("0612465c89a023ab17855b0a6bcebfd3febb53aef84138647b5352e02c10c346"),
    )
    .unwrap();
    assert_eq!(
        *s.agree(&ke(
            "0462d5bd3372af75fe85a040715d0f502428e07046868b0bfdfa61d731afe44f26
                      ac333a93a9e70a81cd5a95b5bf8d13990eb741c8c38872b4a07d275a014e30cf"
        ))
        .unwrap(),
        hx("53020d908b0219328b658b525f26780e3ae12bcd952bb25a93bc0895e1714285")
    );
    let s = DhSecret::from_private(
        DhGroup::Ecp256,
        &hx("7e4aa54f714bf01df85c50269bea3a86721f84afe74f7b41ea58abcf3474e88d"),
    )
    .unwrap();
    let cases = [
        (
            332,
            "04
             0000000000000000000000000000000000000000000000000000000000000000
             0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            333,
            "04
             0000000000000000000000000000000000000000000000000000000000000000
             0000000000000000000000000000000000000000000000000000000000000001",
        ),
        (
            334,
            "04
             0000000000000000000000000000000000000000000000000000000000000000
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe",
        ),
        (
            335,
            "04
             0000000000000000000000000000000000000000000000000000000000000000
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ),
        (
            336,
            "04
             0000000000000000000000000000000000000000000000000000000000000001
             0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            337,
            "04
             0000000000000000000000000000000000000000000000000000000000000001
             0000000000000000000000000000000000000000000000000000000000000001",
        ),
        (
            338,
            "04
             0000000000000000000000000000000000000000000000000000000000000001
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe",
        ),
        (
            339,
            "04
             0000000000000000000000000000000000000000000000000000000000000001
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ),
        (
            340,
            "04
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe
             0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            341,
            "04
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe
             0000000000000000000000000000000000000000000000000000000000000001",
        ),
        (
            342,
            "04
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe",
        ),
        (
            343,
            "04
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ),
        (
            344,
            "04
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff
             0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            345,
            "04
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff
             0000000000000000000000000000000000000000000000000000000000000001",
        ),
        (
            346,
            "04
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff
             ffffffff00000001000000000000000000000000fffffffffffffffffffffffe",
        ),
        (
            347,
            "04
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff
             ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ),
    ];
    for (tc, public) in cases {
        assert_eq!(
            s.agree(&ke(public)).unwrap_err(),
            CryptoError::InvalidPublicValue,
            "Wycheproof secp256r1 ecpoint tcId {tc}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// SK payload protection
// ---------------------------------------------------------------------------------------

fn all_suites() -> Vec<(Encr, Integ)> {
    let mut v = vec![
        (Encr::AesGcm16 { key_bits: 128 }, Integ::None),
        (Encr::AesGcm16 { key_bits: 256 }, Integ::None),
    ];
    for bits in [128, 192, 256] {
        for integ in [
            Integ::HmacSha256_128,
            Integ::HmacSha384_192,
            Integ::HmacSha512_256,
        ] {
            v.push((Encr::AesCbc { key_bits: bits }, integ));
        }
    }
    v
}

fn pair(encr: Encr, integ: Integ) -> (SkCipher, SkCipher) {
    let ke = random_bytes(encr.keymat_len());
    let ka = random_bytes(integ.key_len());
    (
        SkCipher::new(encr, integ, &ke, &ka).unwrap(),
        SkCipher::new(encr, integ, &ke, &ka).unwrap(),
    )
}

/// An IKE header + SK generic header stand-in (28 + 4 bytes).
fn aad() -> Vec<u8> {
    (0..32u8).collect()
}

#[test]
fn sk_round_trip_every_suite() {
    for (encr, integ) in all_suites() {
        let (mut tx, rx) = pair(encr, integ);
        for len in [0usize, 1, 14, 15, 16, 17, 31, 32, 100, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = b"prefix".to_vec();
            tx.seal(&aad(), &plain, &mut out);
            assert_eq!(
                out.len() - 6,
                tx.sealed_len(len),
                "{encr:?} {integ:?} {len}"
            );
            assert_eq!(&out[..6], b"prefix");
            let body = &out[6..];
            if !encr.is_aead() {
                // IV | whole blocks | ICV
                assert_eq!((body.len() - 16 - integ.icv_len()) % 16, 0);
            }
            let opened = rx.open(&aad(), body).unwrap();
            assert_eq!(&opened[..], &plain[..], "{encr:?} {integ:?} {len}");
        }
    }
}

#[test]
fn sk_gcm_ivs_count_up() {
    let (mut tx, _) = pair(Encr::AesGcm16 { key_bits: 128 }, Integ::None);
    for n in 0u64..3 {
        let mut out = Vec::new();
        tx.seal(&aad(), b"x", &mut out);
        assert_eq!(&out[..8], &n.to_be_bytes());
    }
}

#[test]
fn sk_every_bit_flip_fails() {
    for (encr, integ) in all_suites() {
        let (mut tx, rx) = pair(encr, integ);
        let mut body = Vec::new();
        let a = aad();
        tx.seal(&a, b"some inner payloads", &mut body);
        for i in 0..body.len() * 8 {
            let mut b = body.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                rx.open(&a, &b).unwrap_err(),
                CryptoError::BadIcv,
                "{encr:?} {integ:?} body bit {i}"
            );
        }
        for i in 0..a.len() * 8 {
            let mut x = a.clone();
            x[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                rx.open(&x, &body).unwrap_err(),
                CryptoError::BadIcv,
                "{encr:?} {integ:?} aad bit {i}"
            );
        }
        assert!(rx.open(&a, &body).is_ok());
    }
}

#[test]
fn sk_truncated_and_extended_bodies_fail_without_panicking() {
    for (encr, integ) in all_suites() {
        let (mut tx, rx) = pair(encr, integ);
        let mut body = Vec::new();
        tx.seal(&aad(), &[7u8; 40], &mut body);
        for n in 0..body.len() {
            let e = rx.open(&aad(), &body[..n]).unwrap_err();
            assert!(
                e == CryptoError::BadLength || e == CryptoError::BadIcv,
                "{encr:?} {integ:?} {n}: {e:?}"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(rx.open(&aad(), &longer).is_err());
        let mut longer = body.clone();
        longer.extend_from_slice(&[0; 16]);
        assert!(rx.open(&aad(), &longer).is_err());
    }
}

#[test]
fn sk_wrong_key_or_direction_fails() {
    for (encr, integ) in all_suites() {
        let (mut tx, _) = pair(encr, integ);
        let (_, other) = pair(encr, integ);
        let mut body = Vec::new();
        tx.seal(&aad(), b"hello", &mut body);
        assert_eq!(other.open(&aad(), &body).unwrap_err(), CryptoError::BadIcv);
    }
}

#[test]
fn sk_bad_padding_is_rejected() {
    for (encr, integ) in all_suites() {
        let (tx, rx) = pair(encr, integ);
        let iv = vec![0x11; if encr.is_aead() { 8 } else { 16 }];
        // Pad length byte claims more bytes than precede it.
        let mut padded = vec![0u8; 16];
        padded[15] = 16;
        let mut body = Vec::new();
        tx.seal_padded_with_iv(&aad(), &padded, &iv, &mut body);
        assert_eq!(
            rx.open(&aad(), &body).unwrap_err(),
            CryptoError::BadPadding,
            "{encr:?}"
        );
        padded[15] = 255;
        let mut body = Vec::new();
        tx.seal_padded_with_iv(&aad(), &padded, &iv, &mut body);
        assert_eq!(rx.open(&aad(), &body).unwrap_err(), CryptoError::BadPadding);
        // The largest valid pad length: everything before it is padding.
        padded[15] = 15;
        let mut body = Vec::new();
        tx.seal_padded_with_iv(&aad(), &padded, &iv, &mut body);
        assert!(rx.open(&aad(), &body).unwrap().is_empty());
        // RFC 7296 3.14: a receiver accepts padding longer than needed.
        let mut padded = vec![0xabu8; 32];
        padded[31] = 20;
        let mut body = Vec::new();
        tx.seal_padded_with_iv(&aad(), &padded, &iv, &mut body);
        assert_eq!(&rx.open(&aad(), &body).unwrap()[..], &[0xab; 11][..]);
    }
}

#[test]
fn sk_new_checks_keys_and_combinations() {
    let gcm = Encr::AesGcm16 { key_bits: 128 };
    let cbc = Encr::AesCbc { key_bits: 128 };
    assert_eq!(
        SkCipher::new(gcm, Integ::None, &[0; 16], &[]).unwrap_err(),
        CryptoError::BadLength
    );
    assert_eq!(
        SkCipher::new(gcm, Integ::HmacSha256_128, &[0; 20], &[0; 32]).unwrap_err(),
        CryptoError::Unsupported
    );
    assert_eq!(
        SkCipher::new(cbc, Integ::None, &[0; 16], &[]).unwrap_err(),
        CryptoError::Unsupported
    );
    assert_eq!(
        SkCipher::new(cbc, Integ::HmacSha256_128, &[0; 16], &[0; 31]).unwrap_err(),
        CryptoError::BadLength
    );
    assert!(SkCipher::new(cbc, Integ::HmacSha256_128, &[0; 16], &[0; 32]).is_ok());
}

/// draft-mcgrew-gcm-test-01 section 4 (AES-GCM in ESP): K, salt | IV, AAD (SPI | sequence),
/// plaintext (ESP payload with its trailer, which our open() reads as 1 byte of padding and a
/// pad length of 1) and ciphertext | tag. Run through seal's internals with the fixed IV.
#[test]
fn sk_gcm_draft_mcgrew_gcm_test_01() {
    let cases = [
        (
            // 128-bit key, 64-bit sequence number.
            "4c80cdefbb5d10da906ac73c3613a634",
            "2e443b68",
            "4956ed7e3b244cfe",
            "000043218765432100000000",
            "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000
             00000000045f736970045f756470037369700963796265726369747902646b00
             0021000101020201",
            "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34
             cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce
             61bc17d768fd9732459018148f6cbe722fd04796562dfdb4",
        ),
        (
            // 256-bit key.
            "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
            "11223344",
            "0102030405060708",
            "4a2cbfe300000002",
            "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000
             7002400020bf0000020405b40101040201020201",
            "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763
             748a637985771d347f0545659f14e99def842d8eb335f4eecfdbf831824b4c49
             15956c96",
        ),
    ];
    for (key, salt, iv, aad, plain, sealed) in cases {
        let key = hx(key);
        let keymat = [key.clone(), hx(salt)].concat();
        let encr = Encr::AesGcm16 {
            key_bits: (key.len() * 8) as u16,
        };
        let c = SkCipher::new(encr, Integ::None, &keymat, &[]).unwrap();
        let (iv, aad, plain, sealed) = (hx(iv), hx(aad), hx(plain), hx(sealed));
        let mut out = Vec::new();
        c.seal_padded_with_iv(&aad, &plain, &iv, &mut out);
        assert_eq!(&out[..8], &iv[..]);
        assert_eq!(&out[8..], &sealed[..]);
        let opened = c.open(&aad, &out).unwrap();
        // Trailer "01 02 02 01": open() strips the last byte and the 1 pad byte before it.
        assert_eq!(&opened[..], &plain[..plain.len() - 2]);
    }
}

/// RFC 3602 section 4, cases 1 and 2 (AES-128-CBC), through the raw CBC functions.
#[test]
fn cbc_rfc3602() {
    let cases = [
        (
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            b"Single block msg".to_vec(),
            "e353779c1079aeb82708942dbe77181a",
        ),
        (
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            (0u8..32).collect(),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
        ),
    ];
    for (key, iv, plain, ct) in cases {
        let (key, iv, ct) = (hx(key), hx(iv), hx(ct));
        let iv: [u8; 16] = iv.try_into().unwrap();
        let mut buf = plain.clone();
        sk::cbc_encrypt_raw(&key, iv, &mut buf);
        assert_eq!(buf, ct);
        sk::cbc_decrypt_raw(&key, iv, &mut buf);
        assert_eq!(buf, plain);
    }
}

/// The CBC SK format by hand: body = IV | AES-CBC(payloads | pad | pad length) |
/// HMAC(SK_a, aad | IV | ciphertext) truncated (RFC 7296 3.14), using the RFC 3602 case 2
/// key, IV and ciphertext as the encrypted part.
#[test]
fn sk_cbc_layout() {
    let key = hx("c286696d887c9aa0611bbb3e2025a45a");
    let iv = hx("562e17996d093d28ddb3ba695a2e6f58");
    let ct = hx("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1");
    let plain: Vec<u8> = (0u8..32).collect(); // ends in 0x1f: pad length 31
    let ka = [0x77u8; 32];
    let c = SkCipher::new(
        Encr::AesCbc { key_bits: 128 },
        Integ::HmacSha256_128,
        &key,
        &ka,
    )
    .unwrap();
    let a = aad();
    let mut body = Vec::new();
    c.seal_padded_with_iv(&a, &plain, &iv, &mut body);
    let icv = Prf::HmacSha256.compute(&ka, &[&a, &iv, &ct]);
    assert_eq!(body, [&iv[..], &ct[..], &icv[..16]].concat());
    // 32 bytes, pad length 31: all padding, no payload.
    assert!(c.open(&a, &body).unwrap().is_empty());
}

/// The IKE state machine keeps these in tasks: they must be movable across threads.
#[test]
fn crypto_state_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DhSecret>();
    check::<SkCipher>();
    check::<IkeSaKeys>();
    check::<CryptoError>();
}
