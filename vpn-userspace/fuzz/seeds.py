#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/ (committed; run from this directory).

The seeds are the packets and texts the tests use, laid out as each target reads its input
(see the target's doc comment): a valid IKE payload chain for each exchange the endpoint
handles, sealed and fragmented ESP records, whole and fragmented datagrams, in-order and
wrapping sequence numbers, the example configurations, every control request. Inputs a
fuzzer found crashing live beside them as `crash-<hash>` and are not written here; the
hand-written H1 input (`crash-h1-handwritten`) is.
"""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- IKE payloads (RFC 7296 3) -------------------------------------------------------------
SA, KE, NONCE, NOTIFY, DELETE, TSI, TSR = 33, 34, 40, 41, 42, 44, 45
CREATE_CHILD_SA, INFORMATIONAL, IKE_AUTH = 36, 37, 35


def chain(payloads):
    """[(type, body)] -> (first type, chain bytes)."""
    out = b""
    for i, (_, body) in enumerate(payloads):
        nxt = payloads[i + 1][0] if i + 1 < len(payloads) else 0
        out += struct.pack(">BBH", nxt, 0, 4 + len(body)) + body
    return (payloads[0][0] if payloads else 0), out


def transform(ttype, tid, keylen=None, last=False):
    attr = struct.pack(">HH", 0x800E, keylen) if keylen else b""
    return struct.pack(">BBHBBH", 0 if last else 3, 0, 8 + len(attr), ttype, 0, tid) + attr


def proposal(proto, spi, transforms):
    body = b"".join(transforms)
    return struct.pack(">BBHBBBB", 0, 0, 8 + len(spi) + len(body), 1, proto, len(spi),
                       len(transforms)) + spi + body


def esp_sa(spi=0x11223344, pfs=False):
    t = [transform(1, 20, 128)]  # AES-GCM-16, 128-bit key
    if pfs:
        t.append(transform(4, 19))  # ECP-256
    t.append(transform(5, 0, last=True))  # no ESN
    return proposal(3, struct.pack(">I", spi), t)


def ike_sa(spi=0x0102030405060708):
    t = [transform(1, 20, 256), transform(2, 5), transform(4, 19, last=True)]
    return proposal(1, struct.pack(">Q", spi), t)


def ts(*ranges):
    body = struct.pack(">B3x", len(ranges))
    for lo, hi in ranges:
        body += struct.pack(">BBHHH", 7, 0, 16, 0, 65535) + bytes(lo) + bytes(hi)
    return body


def notify(ntype, proto=0, spi=b"", data=b""):
    return struct.pack(">BBH", proto, len(spi), ntype) + spi + data


NONCE_BODY = bytes(range(32))
KE_BODY = struct.pack(">HH", 19, 0) + bytes(range(64))  # ECP-256, not a point on the curve
TSI_BODY = ts(([10, 1, 0, 0], [10, 1, 0, 255]))
TSR_BODY = ts(([10, 2, 0, 0], [10, 2, 0, 255]))


def ike_op(kind, exchange, payloads):
    first, body = chain(payloads)
    return struct.pack(">BBBH", kind, exchange, first, len(body)) + body


def ike_endpoint():
    new_child = [(SA, esp_sa()), (NONCE, NONCE_BODY), (TSI, TSI_BODY), (TSR, TSR_BODY)]
    rekey_child = [(NOTIFY, notify(16393, 3, b"\0\0\0\1"))] + [
        (SA, esp_sa(pfs=True)), (NONCE, NONCE_BODY), (KE, KE_BODY),
        (TSI, TSI_BODY), (TSR, TSR_BODY)]
    rekey_ike = [(SA, ike_sa()), (NONCE, NONCE_BODY), (KE, KE_BODY)]
    delete_child = [(DELETE, struct.pack(">BBH", 3, 4, 1) + b"\x11\x22\x33\x44")]
    delete_ike = [(DELETE, struct.pack(">BBH", 1, 0, 0))]
    many_ts = ts(*[([10, 1, i, 0], [10, 1, i, 255]) for i in range(64)])
    seeds = {
        "new-child-to-b": ike_op(0, CREATE_CHILD_SA, new_child),
        "new-child-to-a": ike_op(1, CREATE_CHILD_SA, new_child),
        "rekey-child-to-b": ike_op(0, CREATE_CHILD_SA, rekey_child),
        "rekey-ike-to-b": ike_op(0, CREATE_CHILD_SA, rekey_ike),
        "delete-child-to-b": ike_op(0, INFORMATIONAL, delete_child),
        "delete-ike-to-a": ike_op(1, INFORMATIONAL, delete_ike),
        "dpd-to-b": ike_op(0, INFORMATIONAL, []),
        "auth-again-to-b": ike_op(0, IKE_AUTH, [(NONCE, NONCE_BODY)]),
        "rekey-child-answered": ike_op(2, CREATE_CHILD_SA, [(SA, esp_sa(pfs=True)),
                                       (NONCE, NONCE_BODY), (KE, KE_BODY),
                                       (TSI, TSI_BODY), (TSR, TSR_BODY)]),
        "rekey-ike-answered": ike_op(2 | 4, CREATE_CHILD_SA, rekey_ike),
        "delete-child-answered": ike_op(2 | 8, INFORMATIONAL, delete_child),
        "wide-ts-to-b": ike_op(0, CREATE_CHILD_SA, [(SA, esp_sa()), (NONCE, NONCE_BODY),
                               (TSI, many_ts), (TSR, TSR_BODY)]),
        "time-passes": ike_op(3, 60, []) + ike_op(3, 200, []) + ike_op(0, INFORMATIONAL, []),
        # An unknown payload type (99) marked critical.
        "unknown-critical": struct.pack(">BBBH", 0, INFORMATIONAL, 99, 4)
        + struct.pack(">BBH", 0, 0x80, 4),
    }
    for name, data in seeds.items():
        write("ike_endpoint", name, data)


# --- traffic selectors ------------------------------------------------------------------------
def ts_narrow_emit():
    def ours(*prefixes):
        out = b""
        for fam, plen, addr in prefixes:
            out += bytes([fam, plen]) + bytes(addr).ljust(16, b"\0")
        return bytes([len(prefixes)]) + out

    write("ts_narrow_emit", "narrow-v4", ours((0, 16, [10, 1, 0, 0]))
          + ts(([10, 1, 2, 0], [10, 1, 5, 255])))
    write("ts_narrow_emit", "odd-range-v4", ours((0, 8, [10, 0, 0, 0]))
          + ts(([10, 0, 0, 1], [10, 255, 255, 254])))
    v6 = [0x20, 0x01, 0x0d, 0xb8]
    body = struct.pack(">B3x", 1) + struct.pack(">BBHHH", 8, 0, 40, 0, 65535) \
        + bytes(v6 + [0] * 11 + [1]) + bytes(v6 + [0xff] * 11 + [0xfe])
    write("ts_narrow_emit", "odd-range-v6", ours((1, 32, v6)) + body)
    # H1 of issue 14, by hand (the fuzzer had not reached it in its ten minutes): our ::/0
    # against two IPv6 ranges that are not prefixes: 256 selectors, one more than the TS
    # payload's count holds. Kept as `crash-h1-handwritten`; it must pass once H1 is fixed.
    m = (1 << 128) - 1
    rng = lambda lo, hi: struct.pack(">BBHHH", 8, 0, 40, 0, 65535) + lo.to_bytes(16, "big") \
        + hi.to_bytes(16, "big")
    write("ts_narrow_emit", "crash-h1-handwritten", ours((1, 0, [])) + struct.pack(">B3x", 2)
          + rng(1, m - 1) + rng(3, m - 3))
    write("ts_narrow_emit", "port-range", ours((0, 24, [10, 1, 0, 0]))
          + struct.pack(">B3xBBHHH", 1, 7, 6, 16, 80, 80) + bytes([10, 1, 0, 0, 10, 1, 0, 255]))


# --- ESP records (esp_inbound) ------------------------------------------------------------------
def csum(b):
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, df=False):
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0,
                    64, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack(">H", csum(h)) + h[12:]
    return h + payload


def icmp_echo(n):
    body = bytes(i & 0xFF for i in range(n))
    h = struct.pack(">BBHHH", 8, 0, 0, 1, 1) + body
    return h[:2] + struct.pack(">H", csum(h + (b"\0" if len(h) % 2 else b""))) + h[4:]


def ipv6(src, dst, nh, payload):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), nh, 64, bytes(src),
                       bytes(dst)) + payload


def esp_inbound():
    inner = ipv4([10, 2, 0, 5], [10, 1, 0, 7], 1, icmp_echo(56))
    other = ipv4([10, 9, 0, 5], [10, 1, 0, 7], 1, icmp_echo(16))
    v6 = ipv6([0x20, 1, 0xd, 0xb8] + [0] * 11 + [5], [0x20, 1, 0xd, 0xb8] + [0] * 11 + [7],
              58, bytes([128, 0, 0, 0, 0, 1, 0, 1]) + bytes(24))

    def sealed(kind, seq, flags, inner, esn_hi=None, frag_max=None):
        r = bytes([kind]) + struct.pack(">I", seq)
        if esn_hi is not None:
            r += bytes([esn_hi])
        r += bytes([flags]) + struct.pack(">H", len(inner)) + inner
        if frag_max is not None:
            r += struct.pack(">H", frag_max)
        return r

    write("esp_inbound", "sealed-v4", sealed(1, 1, 1, inner) + sealed(1, 2, 1 | 2, inner))
    write("esp_inbound", "sealed-replay", sealed(1, 5, 1, inner) + sealed(1, 5, 1, inner)
          + sealed(1, 200, 1, inner) + sealed(1, 100, 1, inner))
    write("esp_inbound", "sealed-esn-v6", sealed(5, 1, 1 | 4, v6, esn_hi=0)
          + sealed(5, 7, 1, inner, esn_hi=0))
    write("esp_inbound", "policy-mismatch", sealed(1, 3, 1, other))
    write("esp_inbound", "no-trailer", sealed(1, 4, 0, inner + b"\x01\x02\x02\x04"))
    write("esp_inbound", "bad-icv", sealed(1, 9, 1 | 8, inner) + struct.pack(">HB", 40, 1))
    write("esp_inbound", "fragmented", sealed(2, 11, 1, inner, frag_max=68)
          + sealed(2, 12, 1 | 16, inner, frag_max=60))
    meta = struct.pack("<HBBIIHH", 0x5650, 1, 0, 0, 1, 14, 34)
    frame = bytes(12) + b"\x08\x00" + ipv4([198, 51, 100, 2], [192, 0, 2, 1], 50,
                                           struct.pack(">II", 0x1000, 1) + bytes(40))
    write("esp_inbound", "raw", bytes([4]) + meta + struct.pack(">H", len(frame)) + frame)


# --- reassembly and replay ------------------------------------------------------------------------
def reassembly_model():
    big = bytes([3, 7, 200, 255, 3, 3, 100])  # roomy limits
    tight = bytes([0, 1, 10, 4, 0, 2, 1])
    # op: key, offset/8, length code, more|fill, time step.
    two = bytes([0, 0, 7, 1, 1]) + bytes([0, 8, 19, 0, 1])
    write("reassembly_model", "v4-two", big + two)
    write("reassembly_model", "v4-reversed-opts", big + bytes([8, 8, 19, 0, 1])
          + bytes([8, 0, 7, 1, 1]))
    write("reassembly_model", "v6-three", big + bytes([9, 0, 3, 1, 0]) + bytes([1, 4, 3, 1, 0])
          + bytes([1, 8, 5, 0, 0]))
    write("reassembly_model", "overlap-dup", big + bytes([0, 0, 7, 1, 0]) * 2
          + bytes([0, 4, 7, 1, 0]) + two)
    write("reassembly_model", "limits-expire", tight + bytes([0, 0, 7, 1, 0])
          + bytes([4, 0, 7, 1, 0]) + bytes([2, 0, 7, 1, 0]) + bytes([0x80, 0, 0, 0, 200])
          + two)


def replay_esn_model():
    def ops(seqs, kind=0):
        return b"".join(bytes([kind]) + struct.pack("<Q", s) for s in seqs)

    write("replay_esn_model", "in-order", struct.pack("<H", 64) + b"\0" + ops(range(1, 80)))
    write("replay_esn_model", "esn-wrap", struct.pack("<H", 128) + b"\1"
          + ops([0xFFFFFF00]) + ops(range(0xFFFFFF01, 0x100000080)))
    write("replay_esn_model", "window-max", struct.pack("<H", 4096) + b"\1"
          + ops([5000, 1000, 904, 905, 5000, 1, 2]) + ops([3, 9000], kind=2))


# --- XDP parsers --------------------------------------------------------------------------------
def xdp_parsers():
    eth = bytes(12)
    esp = struct.pack(">II", 0x1000, 1) + bytes(40)
    write("xdp_parsers", "ipv4-esp", eth + b"\x08\x00"
          + ipv4([198, 51, 100, 2], [192, 0, 2, 1], 50, esp))
    write("xdp_parsers", "qinq-ipv4-udp", eth + b"\x88\xa8\x00\x0a\x81\x00\x00\x64\x08\x00"
          + ipv4([198, 51, 100, 2], [192, 0, 2, 1], 17, struct.pack(">HHHH", 4500, 4500, 48, 0)
                 + esp))
    a = [0x20, 1, 0xd, 0xb8] + [0] * 12
    ext = bytes([60, 0]) + bytes(6) + bytes([44, 0]) + bytes(6) + bytes([50, 0, 0, 1, 0, 0, 0, 7])
    write("xdp_parsers", "ipv6-ext-frag", eth + b"\x86\xdd" + ipv6(a, a, 0, ext + esp))
    five = b"".join(bytes([60, 0]) + bytes(6) for _ in range(4)) + bytes([50, 0]) + bytes(6)
    write("xdp_parsers", "ipv6-five-ext", eth + b"\x86\xdd" + ipv6(a, a, 60, five + esp))
    frag = ipv4([198, 51, 100, 2], [192, 0, 2, 1], 50, esp)
    frag = frag[:6] + b"\x20\x00" + frag[8:]
    write("xdp_parsers", "ipv4-fragment", eth + b"\x08\x00" + frag)


# --- configuration and control socket -------------------------------------------------------------
def config_load():
    for name in ("east.toml", "west.toml"):
        src = os.path.join(HERE, "..", "..", "config", name)
        shutil.copy(src, os.path.join(HERE, "corpus", "config_load", name))


def control_protocol():
    lines = [
        '{"cmd":"status"}', '{"cmd":"conn-list"}', '{"cmd":"sa-list"}', '{"cmd":"reload"}',
        '{"cmd":"conn-up","name":"east-west"}', '{"cmd":"conn-down","name":"west"}',
        '{"cmd":"rekey","name":"east-west","what":"child"}',
        '{"cmd":"rekey","name":"west","what":"ike"}', '{"cmd":"conn-up","name":"nope"}',
    ]
    for i, line in enumerate(lines):
        write("control_protocol", "req-%d" % i, line.encode() + b"\n")
    write("control_protocol", "all", "\n".join(lines).encode())


def ike_message():
    d = os.path.join(HERE, "..", "src", "ike", "wire", "tests", "testdata")
    os.makedirs(os.path.join(HERE, "corpus", "ike_message"), exist_ok=True)
    for name in sorted(os.listdir(d)):
        shutil.copy(os.path.join(d, name), os.path.join(HERE, "corpus", "ike_message", name))


if __name__ == "__main__":
    os.makedirs(os.path.join(HERE, "corpus", "config_load"), exist_ok=True)
    for gen in (ike_message, ike_endpoint, ts_narrow_emit, esp_inbound, reassembly_model,
                replay_esn_model, xdp_parsers, config_load, control_protocol):
        gen()
