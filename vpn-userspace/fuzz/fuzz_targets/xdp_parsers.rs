//! The XDP programs' parsers (`vpn-ebpf/src/parse.rs`, the very file, included by `#[path]`)
//! on the host: `aya_ebpf` is the small shim in `aya-ebpf-shim/`, whose `XdpContext` spans the
//! fuzzer's buffer. AddressSanitizer catches any read past `data_end` that the bounds checks
//! miss; a slice-based reference walk of the same headers checks what the parsers return.

#![no_main]

#[allow(dead_code)]
#[path = "../../../vpn-ebpf/src/parse.rs"]
mod parse;

use aya_ebpf::programs::XdpContext;
use libfuzzer_sys::fuzz_target;
use parse::{L3, L3Result};
use vpn_common::DropReason;

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(f.get(off..off + 2)?.try_into().ok()?))
}

/// Ethernet and up to two VLAN tags: (ethertype, L3 offset).
fn ref_eth(f: &[u8]) -> Result<(u16, usize), DropReason> {
    let mut proto = be16(f, 12).ok_or(DropReason::TruncatedEthernet)?;
    let mut off = 14;
    for _ in 0..2 {
        if proto != 0x8100 && proto != 0x88a8 {
            break;
        }
        proto = be16(f, off + 2).ok_or(DropReason::TruncatedVlan)?;
        off += 4;
    }
    Ok((proto, off))
}

/// The fields an IP parse must report correctly, whatever the header says.
fn check_l3(f: &[u8], off: usize, l3: &L3, addr_len: usize) {
    assert!(off < l3.l4_off && l3.l4_off <= l3.ip_end && l3.ip_end <= f.len());
    assert!(l3.src_off + addr_len <= f.len() && l3.dst_off + addr_len <= f.len());
}

fn ipv4(f: &[u8], off: usize, ctx: &XdpContext) {
    let got = parse::parse_ipv4(ctx, off);
    let Some(h) = f.get(off..off + 20) else {
        assert!(matches!(got, Err(DropReason::TruncatedIpv4)));
        return;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    match got {
        Ok(l3) => {
            check_l3(f, off, &l3, 4);
            assert!(h[0] >> 4 == 4 && ihl >= 20 && total >= ihl);
            assert_eq!(
                (l3.l4_off, l3.ip_end, l3.proto),
                (off + ihl, off + total, h[9])
            );
            let frag = u16::from_be_bytes([h[6], h[7]]);
            assert_eq!(l3.fragment, frag & 0x3fff != 0);
            assert!(!l3.ipv6);
        }
        Err(DropReason::BadIpv4Header) => assert!(h[0] >> 4 != 4 || ihl < 20 || total < ihl),
        Err(DropReason::TruncatedIpv4) => {
            assert!(off + ihl > f.len() || off + total > f.len() || total > 0x3fff)
        }
        Err(e) => panic!("parse_ipv4: unexpected {e:?}"),
    }
}

fn ipv6(f: &[u8], off: usize, ctx: &XdpContext) {
    let got = parse::parse_ipv6(ctx, off);
    let Some(h) = f.get(off..off + 40) else {
        assert!(matches!(got, Err(DropReason::TruncatedIpv6)));
        return;
    };
    let end = off + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    let l3 = match got {
        Ok(L3Result::Ip(l3)) => l3,
        Ok(L3Result::Unparsed { dst_off }) => {
            // Only a chain longer than the walk, or one that leaves the packet; the fixed
            // header's destination is where it says.
            assert_eq!(dst_off, off + 24);
            let (next, l4, _) = ref_walk(f, off + 40, h[6]).expect("walk read past the frame");
            assert!(matches!(next, 0 | 43 | 44 | 60) || l4 > end);
            return;
        }
        Err(DropReason::BadIpv6Header) => return assert_ne!(h[0] >> 4, 6),
        Err(DropReason::TruncatedIpv6) => {
            return assert!(
                end > f.len() || end - off - 40 > 0x3fff || ref_walk(f, off + 40, h[6]).is_none()
            );
        }
        Err(e) => panic!("parse_ipv6: unexpected {e:?}"),
    };
    check_l3(f, off, &l3, 16);
    assert_eq!(h[0] >> 4, 6);
    let (next, l4, frag) = ref_walk(f, off + 40, h[6]).expect("parsed");
    assert_eq!(
        (l3.proto, l3.l4_off, l3.ip_end, l3.fragment),
        (next, l4, end, frag)
    );
    assert!(l3.ipv6);
}

/// Up to four extension headers from `l4`: (next header, L4 offset, fragment seen), or None
/// where a header runs past the frame.
fn ref_walk(f: &[u8], mut l4: usize, mut next: u8) -> Option<(u8, usize, bool)> {
    let mut frag = false;
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                let h = f.get(l4..l4 + 2)?;
                next = h[0];
                l4 += (usize::from(h[1]) + 1) * 8;
            }
            44 => {
                next = f.get(l4..l4 + 8)?[0];
                frag = true;
                l4 += 8;
            }
            _ => break,
        }
    }
    Some((next, l4, frag))
}

fuzz_target!(|data: &[u8]| {
    // libFuzzer's buffer is a heap block of exactly this length: ASan sees a read past it.
    let ctx = XdpContext::new(data);
    let got = parse::parse_eth(&ctx);
    assert_eq!(got, ref_eth(data));
    let Ok((proto, off)) = got else { return };
    match proto {
        parse::ETH_P_IP => ipv4(data, off, &ctx),
        parse::ETH_P_IPV6 => ipv6(data, off, &ctx),
        _ => {}
    }
    // Any offset, as the programs call them after other headers (VXLAN's inner frame).
    if let Some(&b) = data.first() {
        let off = usize::from(b) % 64;
        ipv4(data, off, &ctx);
        ipv6(data, off, &ctx);
    }
});
