#!/usr/bin/env python3
"""Generates mpchat's known-answer test vectors with an independent implementation.

Everything here follows /work/shared/DESIGN.md ("MTP framing", "Login", "Fine points")
and the end-to-end v2 design (issue 11: sender-key chain, MPS2 / MPK2 / MPM2), and uses
Python's `cryptography` package (AES-GCM, HKDF, HMAC, SHA-256, X25519, Ed25519, RSA),
never the Rust crate. `tests/kat.rs` checks the crate against the files written here.

Run from anywhere:  python3 tests/vectors/generate.py
The output is deterministic: every input is fixed (derived from a label with SHA-256),
the two RSA padding operations use fixed seeds / salts (implemented below and checked
against `cryptography`'s own OAEP decryption and PSS verification), Ed25519 and GCM are
deterministic, and the RSA keys are read from the committed server_test_key.pem and
user_*_test_key.pem. The only randomness is the one-time generation of those keys when
a file does not exist; delete one to make a new one (and every vector using it changes). Running the script twice gives identical files.

File format (parsed by tests/kat.rs with std only):
  - `# ...` lines are comments; a blank line ends a block.
  - every other line is `name = value`; the first line of a block is `kind = ...`,
    the second `name = ...`.
  - values are lowercase hex unless the field is listed as text for its kind; fields
    ending in `_text` are text with `\\n` for newline and `\\\\` for backslash.
  - a file whose name starts with `fail_` holds only vectors that must be rejected.
"""

import base64
import hashlib
import os
import sys

import cryptography
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.exceptions import InvalidSignature

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------
# Protocol constants (DESIGN.md "MTP framing")

VERSION = b"\x01\x00"
HEADER_LEN = 24
MAC_LEN = 12
ETK_LEN = 256
MIN_FRAME = HEADER_LEN + MAC_LEN  # 36
MAX_FRAME = 0xFFFF
MAX_PAYLOAD = MAX_FRAME - HEADER_LEN - MAC_LEN  # 65,499
TYPES = {
    "init_req": 0x0000,
    "init_res": 0x0010,
    "close_req": 0x0100,
    "close_res": 0x0110,
    "msg_req": 0x0200,
    "msg_res": 0x0210,
    "invite_req": 0x0300,
    "invite_res": 0x0310,
    "status_req": 0x0400,
    "status_res": 0x0410,
}
DIRS = {"c2s": 0, "s2c": 1}
U64_MAX = 0xFFFFFFFFFFFFFFFF


def det(label, n):
    """n fixed bytes derived from a label (SHA-256 in counter mode): fixed inputs."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"mpchat kat %s %d" % (label.encode(), i)).digest()
        i += 1
    return out[:n]


def sha256(data):
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    d = h.finalize()
    assert d == hashlib.sha256(data).digest()
    return d


# ---------------------------------------------------------------------------------
# AES-256-GCM with the 12-byte mac

def seal12(key, nonce, aad, plaintext):
    """(ciphertext, mac, tag16): mac is the first 12 bytes of the 16-byte GCM tag."""
    out = AESGCM(key).encrypt(nonce, plaintext, aad)
    ct, tag = out[:-16], out[-16:]
    return ct, tag[:MAC_LEN], tag


def open12(key, nonce, aad, ciphertext, mac):
    """Independent 12-byte-mac check: decrypt with AES-CTR (GCM's keystream starts at
    counter 2), re-seal to get the true tag, compare 12 bytes. Raises on mismatch."""
    if len(mac) != MAC_LEN:
        raise ValueError("mac")
    dec = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    plain = dec.update(ciphertext) + dec.finalize()
    ct, mac2, _ = seal12(key, nonce, aad, plain)
    assert ct == ciphertext
    if mac2 != mac:
        raise ValueError("mac")
    return plain


def nonce(sqn, direction):
    """sqn (2 bytes BE) || direction (00 c2s, 01 s2c) || nine 00 bytes."""
    return sqn.to_bytes(2, "big") + bytes([DIRS[direction]]) + bytes(9)


# ---------------------------------------------------------------------------------
# HKDF-SHA-256

def hkdf_extract(salt, ikm):
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk, info):
    return HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def rekey(old):
    return hkdf_expand(old, b"mpchat v1 rekey")


def traffic_keys(request_hash, client_random, server_random, shared):
    assert len(request_hash) == 32 and len(client_random) == 16
    assert len(server_random) == 16 and len(shared) == 32
    ikm = client_random + server_random + shared
    prk = hkdf_extract(request_hash, ikm)
    k_c2s = hkdf_expand(prk, b"mpchat v1 c2s")
    k_s2c = hkdf_expand(prk, b"mpchat v1 s2c")
    # Cross-check the two-step form against cryptography's one-shot HKDF.
    assert k_c2s == HKDF(hashes.SHA256(), 32, request_hash, b"mpchat v1 c2s").derive(ikm)
    assert k_s2c == HKDF(hashes.SHA256(), 32, request_hash, b"mpchat v1 s2c").derive(ikm)
    return prk, k_c2s, k_s2c


# ---------------------------------------------------------------------------------
# MTP frames

def header(typ, length, sqn, sid, uid, ver=VERSION):
    return (ver + typ.to_bytes(2, "big") + length.to_bytes(2, "big") + sqn.to_bytes(2, "big")
            + sid.to_bytes(8, "big") + uid.to_bytes(8, "big"))


def seal_frame(key, direction, typ, sqn, sid, uid, payload, trailer_len=0, ver=VERSION,
               length=None):
    """header || epd || mac; `length` overrides `len` (for malformed vectors)."""
    if length is None:
        length = HEADER_LEN + len(payload) + MAC_LEN + trailer_len
    assert length <= MAX_FRAME
    h = header(typ, length, sqn, sid, uid, ver)
    ct, mac, _ = seal12(key, nonce(sqn, direction), h, payload)
    return h + ct + mac


class Reject(Exception):
    """A frame a receiver must drop; .category is one of version, type, length, sqn, mac."""

    def __init__(self, category):
        super().__init__(category)
        self.category = category


def open_frame(key, direction, last_sqn, frame):
    """Reference receiver for an ordinary (non-login) frame: returns the header fields
    and payload, or raises Reject. Checks are those of DESIGN.md "MTP framing"."""
    if len(frame) < HEADER_LEN:
        raise Reject("length")
    h = frame[:HEADER_LEN]
    if h[0:2] != VERSION:
        raise Reject("version")
    typ = int.from_bytes(h[2:4], "big")
    if typ not in TYPES.values():
        raise Reject("type")
    length = int.from_bytes(h[4:6], "big")
    if length < MIN_FRAME or length != len(frame):
        raise Reject("length")
    sqn = int.from_bytes(h[6:8], "big")
    # Exactly the next sqn: lower or equal is a replay, higher means frames were deleted.
    if sqn != last_sqn + 1:
        raise Reject("sqn")
    try:
        payload = open12(key, nonce(sqn, direction), h, frame[HEADER_LEN:-MAC_LEN],
                         frame[-MAC_LEN:])
    except ValueError:
        raise Reject("mac")
    sid = int.from_bytes(h[8:16], "big")
    uid = int.from_bytes(h[16:24], "big")
    return typ, sqn, sid, uid, payload


# ---------------------------------------------------------------------------------
# RSA: the committed test key, OAEP with a fixed seed, PSS with a fixed salt

KEY_PATH = os.path.join(HERE, "server_test_key.pem")
PUB_PATH = os.path.join(HERE, "server_test_key.pub")


def load_or_create_key():
    if not os.path.exists(KEY_PATH):
        # The only random step: a new test key, written once and committed.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        with open(KEY_PATH, "wb") as f:
            f.write(pem)
    with open(KEY_PATH, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    assert key.key_size == 2048
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    with open(PUB_PATH, "wb") as f:
        f.write(pub)
    return key


def mgf1(seed, n):
    out = b""
    c = 0
    while len(out) < n:
        out += sha256(seed + c.to_bytes(4, "big"))
        c += 1
    return out[:n]


def xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def oaep_encrypt_fixed_seed(pub, message, seed):
    """RSAES-OAEP-ENCRYPT (RFC 8017 7.1.1), SHA-256, MGF1-SHA-256, empty label, with the
    normally random seed given, so the vector is reproducible."""
    n = pub.public_numbers().n
    e = pub.public_numbers().e
    k = (n.bit_length() + 7) // 8
    hlen = 32
    assert len(seed) == hlen and len(message) <= k - 2 * hlen - 2
    lhash = sha256(b"")
    db = lhash + bytes(k - len(message) - 2 * hlen - 2) + b"\x01" + message
    masked_db = xor(db, mgf1(seed, k - hlen - 1))
    masked_seed = xor(seed, mgf1(masked_db, hlen))
    em = b"\x00" + masked_seed + masked_db
    return pow(int.from_bytes(em, "big"), e, n).to_bytes(k, "big")


OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def pss_sign_fixed_salt(key, message, salt):
    """RSASSA-PSS-SIGN (RFC 8017 8.1.1 / 9.1.1), SHA-256, MGF1-SHA-256, with the salt
    given instead of a random one (32 bytes in mpchat; other lengths for reject vectors)."""
    nums = key.private_numbers()
    n, d = nums.public_numbers.n, nums.d
    em_bits = n.bit_length() - 1
    em_len = (em_bits + 7) // 8
    hlen = 32
    assert len(salt) <= em_len - hlen - 2
    m_hash = sha256(message)
    h = sha256(bytes(8) + m_hash + salt)
    db = bytes(em_len - len(salt) - hlen - 2) + b"\x01" + salt
    masked_db = bytearray(xor(db, mgf1(h, em_len - hlen - 1)))
    masked_db[0] &= 0xFF >> (8 * em_len - em_bits)
    em = bytes(masked_db) + h + b"\xbc"
    k = (n.bit_length() + 7) // 8
    return pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")


# ---------------------------------------------------------------------------------
# Output

def escape(s):
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def fmt(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    assert isinstance(value, str)
    assert value == value.strip() and "\n" not in value, repr(value)
    return value


class Out:
    def __init__(self, name, intro):
        self.name = name
        self.lines = ["# " + line if line else "#" for line in intro.strip("\n").split("\n")]
        self.lines.append("# Generated by tests/vectors/generate.py; do not edit by hand.")

    def block(self, kind, name, fields, comment=None):
        self.lines.append("")
        if comment:
            for line in comment.strip("\n").split("\n"):
                self.lines.append("# " + line if line else "#")
        self.lines.append("kind = " + kind)
        self.lines.append("name = " + name)
        for k, v in fields:
            text = fmt(v)
            self.lines.append(f"{k} = {text}" if text else f"{k} =")

    def write(self):
        with open(os.path.join(HERE, self.name), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(self.lines) + "\n")
        WRITTEN.append(self.name)


WRITTEN = []


def u16hex(v):
    return v.to_bytes(2, "big")


def u64hex(v):
    return v.to_bytes(8, "big")


# ---------------------------------------------------------------------------------
# Self-checks of the tools against published vectors, so a broken environment cannot
# silently produce wrong vectors.

def self_check():
    # NIST GCM spec (McGrew & Viega), test cases 13 and 14: AES-256, zero key and IV.
    ct, _, tag = seal12(bytes(32), bytes(12), b"", b"")
    assert tag.hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    ct, _, tag = seal12(bytes(32), bytes(12), b"", bytes(16))
    assert ct.hex() == "cea7403d4d606b6e074ec5d3baf39d18"
    assert tag.hex() == "d0d1c8a799996bf0265b98b5d48ab919"
    # RFC 5869 test case 1 (HKDF-SHA-256).
    prk = hkdf_extract(bytes(range(13)), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = HKDFExpand(hashes.SHA256(), 42, bytes(range(0xF0, 0xFA))).derive(prk)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    # RFC 7748 section 6.1 (X25519).
    a = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC7748_A))
    b = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC7748_B))
    assert raw_public(a).hex() == RFC7748_A_PUB
    assert raw_public(b).hex() == RFC7748_B_PUB
    assert a.exchange(b.public_key()).hex() == RFC7748_SHARED
    # The independent 12-byte-mac opener agrees with the sealer.
    ct, mac, _ = seal12(bytes(32), bytes(12), b"aad", b"plaintext")
    assert open12(bytes(32), bytes(12), b"aad", ct, mac) == b"plaintext"


RFC7748_A = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
RFC7748_A_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
RFC7748_B = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
RFC7748_B_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
RFC7748_SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def raw_public(priv):
    return priv.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------------
# 1. aead12

def gen_aead12():
    out = Out("aead12_basic.txt", """
AES-256-GCM with the protocol's 12-byte mac (DESIGN.md "MTP framing": mac = the first
12 bytes of the 16-byte GCM tag). Fields: key, nonce (12 bytes), aad, plaintext ->
ciphertext (same length as the plaintext), mac. tag16 is the full GCM tag, recorded
for implementers checking their truncation.""")
    key = det("aead12 key", 32)
    cases = [
        ("empty_plaintext", 0, det("aead12 aad", 24), nonce(1, "c2s")),
        ("one_byte", 1, det("aead12 aad", 24), nonce(2, "s2c")),
        ("one_block", 16, det("aead12 aad", 24), nonce(0xFFFF, "c2s")),
        ("seventeen_bytes", 17, b"", det("aead12 nonce 17", 12)),
        ("one_kib", 1024, det("aead12 aad", 24), det("aead12 nonce 1k", 12)),
        ("empty_aad_and_plaintext", 0, b"", det("aead12 nonce empty", 12)),
    ]
    for name, n, aad, nn in cases:
        pt = det("aead12 plaintext " + name, n)
        ct, mac, tag = seal12(key, nn, aad, pt)
        out.block("aead12", name, [("key", key), ("nonce", nn), ("aad", aad),
                                   ("plaintext", pt), ("ciphertext", ct), ("mac", mac),
                                   ("tag16", tag)])
    out.write()

    out = Out("aead12_max_payload.txt", """
AES-256-GCM with the 12-byte mac over the largest MTP payload: 65,499 bytes
(65,535 - 24 - 12), with a 24-byte header as aad and an MTP nonce.""")
    key = det("aead12 large key", 32)
    pt = det("aead12 large plaintext", MAX_PAYLOAD)
    aad = header(TYPES["msg_req"], MAX_FRAME, 7, 1, 2)
    nn = nonce(7, "c2s")
    ct, mac, tag = seal12(key, nn, aad, pt)
    out.block("aead12", "max_mtp_payload", [("key", key), ("nonce", nn), ("aad", aad),
                                            ("plaintext", pt), ("ciphertext", ct),
                                            ("mac", mac), ("tag16", tag)])
    out.write()

    out = Out("fail_aead12.txt", """
AES-256-GCM inputs whose 12-byte mac must NOT verify. Each block carries the valid
(ciphertext, mac) it was derived from as good_ciphertext / good_mac, so a test first
shows that the good one opens and then that the altered one does not.""")
    key = det("aead12 key", 32)
    aad = det("aead12 aad", 24)
    nn = nonce(3, "c2s")
    pt = b"attack at dawn"
    ct, mac, _ = seal12(key, nn, aad, pt)
    flips = [
        ("ciphertext_first_bit", "ciphertext", 0, 0x01),
        ("ciphertext_last_bit", "ciphertext", len(ct) - 1, 0x80),
        ("mac_first_bit", "mac", 0, 0x01),
        ("mac_last_bit", "mac", MAC_LEN - 1, 0x80),
        ("aad_bit", "aad", 5, 0x10),
        ("nonce_direction_byte", "nonce", 2, 0x01),
    ]
    for name, field, i, bit in flips:
        vals = {"nonce": bytearray(nn), "aad": bytearray(aad), "ciphertext": bytearray(ct),
                "mac": bytearray(mac)}
        vals[field][i] ^= bit
        add_aead_reject(out, name, key, nn, aad, ct, mac, vals)
    # A mac cut to 11 bytes, and the 16-byte full tag, must not pass as a 12-byte mac.
    _, _, tag = seal12(key, nn, aad, pt)
    for name, m in [("mac_truncated_to_11", mac[:11]), ("full_16_byte_tag", tag)]:
        vals = {"nonce": nn, "aad": aad, "ciphertext": ct, "mac": m}
        add_aead_reject(out, name, key, nn, aad, ct, mac, vals)
    # Another key.
    vals = {"nonce": nn, "aad": aad, "ciphertext": ct, "mac": mac}
    add_aead_reject(out, "other_key", rekey(key), nn, aad, ct, mac, vals, good_key=key)
    out.write()


def add_aead_reject(out, name, key, nn, aad, ct, mac, vals, good_key=None):
    good_key = good_key or key
    try:
        open12(key, bytes(vals["nonce"]), bytes(vals["aad"]), bytes(vals["ciphertext"]),
               bytes(vals["mac"]))
        raise AssertionError("reject vector opened: " + name)
    except ValueError:
        pass
    fields = [("key", key), ("nonce", bytes(vals["nonce"])), ("aad", bytes(vals["aad"])),
              ("ciphertext", bytes(vals["ciphertext"])), ("mac", bytes(vals["mac"])),
              ("good_key", good_key), ("good_nonce", nn), ("good_aad", aad),
              ("good_ciphertext", ct), ("good_mac", mac)]
    out.block("aead12_reject", name, fields)


# ---------------------------------------------------------------------------------
# 2. frames

def frame_block(out, name, key, direction, tname, sqn, sid, uid, payload, comment=None):
    typ = TYPES[tname]
    frame = seal_frame(key, direction, typ, sqn, sid, uid, payload)
    got = open_frame(key, direction, sqn - 1, frame)
    assert got == (typ, sqn, sid, uid, payload)
    out.block("frame", name, [("key", key), ("direction", direction), ("typ", u16hex(typ)),
                              ("sqn", u16hex(sqn)), ("sid", u64hex(sid)),
                              ("uid", u64hex(uid)), ("payload", payload),
                              ("frame", frame)], comment)
    return frame


def gen_frames(key):
    out = Out("frame_types.txt", """
Whole MTP frames: header (24 bytes: ver 0100, typ, len, sqn, sid, uid, big-endian) ||
epd (AES-256-GCM ciphertext of the payload, aad = the header, nonce = sqn || direction
|| nine 00) || mac (12 bytes). Fields: key, direction (c2s or s2c), typ (2 bytes),
sqn (2), sid (8), uid (8), payload -> frame. A receiver whose last accepted sqn is
sqn - 1 opens the frame and gets the payload back.""")
    k = det("frame key", 32)
    sid = 0x0123456789ABCDEF
    alice = 0x1122334455667788
    bob = 0x8877665544332211
    envelope = det("frame envelope", 100)
    frame_block(out, "status_req_empty_smallest_frame", k, "c2s", "status_req", 1, 0, 0, b"",
                "The smallest frame: 36 bytes, empty payload, sqn 1, sid 0, uid 0.")
    frame_block(out, "init_req_from_alice", k, "c2s", "init_req", 2, 0, alice,
                wire_key(key).encode() + b"\nbob\n",
                "init_req payload: the creator's public key (wire form of the test key) and\n"
                "the invitees, each line ending in \\n.")
    frame_block(out, "init_res_ok", k, "s2c", "init_res", 2, sid, 0, b"OK")
    frame_block(out, "invite_req_to_bob", k, "s2c", "invite_req", 3, sid, alice, b"")
    frame_block(out, "invite_res_deny", k, "c2s", "invite_res", 3, sid, bob, b"Deny")
    frame_block(out, "msg_req_envelope", k, "c2s", "msg_req", 4, sid, alice, envelope)
    frame_block(out, "msg_res_ok_n", k, "s2c", "msg_res", 4, sid, 0, b"OK 1")
    frame_block(out, "msg_req_delivery", k, "s2c", "msg_req", 5, sid, alice,
                (1).to_bytes(8, "big") + envelope,
                "A delivery: payload = n (8 bytes BE) || envelope; header uid = the author.")
    frame_block(out, "close_req", k, "c2s", "close_req", 0x1234, sid, alice, b"")
    frame_block(out, "close_res_error", k, "s2c", "close_res", 0x1234, sid, 0,
                b"error: only the creator can close")
    frame_block(out, "status_res_listing", k, "s2c", "status_res", 6, 0, 0,
                b"OK\n0123456789abcdef live alice\n")
    frame_block(out, "status_res_online", k, "c2s", "status_res", 7, 0, alice, b"Online")
    frame_block(out, "sqn_ffff_sid_uid_max_c2s", k, "c2s", "msg_req", 0xFFFF, U64_MAX, U64_MAX,
                b"last before rekey")
    frame_block(out, "sqn_ffff_s2c", k, "s2c", "msg_res", 0xFFFF, U64_MAX, 0, b"OK 65535")
    frame_block(out, "same_fields_other_direction_c2s", k, "c2s", "msg_req", 9, sid, alice,
                b"same", "This and the next differ only in direction (nonce byte 2).")
    frame_block(out, "same_fields_other_direction_s2c", k, "s2c", "msg_req", 9, sid, alice,
                b"same")
    out.write()

    out = Out("frame_max.txt", """
The largest MTP frame: len = 65,535 (ffff), payload 65,499 bytes.""")
    frame_block(out, "max_frame", det("frame max key", 32), "c2s", "msg_req", 2, sid, alice,
                det("frame max payload", MAX_PAYLOAD))
    out.write()


# ---------------------------------------------------------------------------------
# 3. rekey

def gen_rekey():
    out = Out("rekey_chain.txt", """
Rekey after sqn ffff (DESIGN.md "MTP framing"): new key = HKDF-Expand(PRK = old key,
info = "mpchat v1 rekey", L = 32), HKDF-SHA-256. Each block: key -> rekeyed. The chain
blocks apply it repeatedly to the previous result.""")
    k = det("rekey start", 32)
    out.block("rekey", "zero_key", [("key", bytes(32)), ("rekeyed", rekey(bytes(32)))])
    for i in range(3):
        nk = rekey(k)
        out.block("rekey", f"chain_{i}", [("key", k), ("rekeyed", nk)])
        k = nk
    out.write()

    out = Out("rekey_frames.txt", """
A sender at sqn ffff: frame_ffff is sealed at sqn ffff under key; then the key becomes
rekey(key) = next_key and frame_0001 is sealed at sqn 0001 under next_key. Both frames
have the same typ, sid and uid; payloads differ. A receiver that accepted sqn fffe opens
both in order.""")
    for direction in ("c2s", "s2c"):
        k = det("rekey frames key " + direction, 32)
        nk = rekey(k)
        typ = TYPES["msg_req"]
        sid, uid = 0x0A0B0C0D0E0F1011, 0x2122232425262728
        p1, p2 = b"the last message under the old key", b"the first under the new key"
        f1 = seal_frame(k, direction, typ, 0xFFFF, sid, uid, p1)
        f2 = seal_frame(nk, direction, typ, 1, sid, uid, p2)
        assert open_frame(k, direction, 0xFFFE, f1)[4] == p1
        assert open_frame(nk, direction, 0, f2)[4] == p2
        out.block("rekey_frames", "across_ffff_" + direction,
                  [("key", k), ("direction", direction), ("typ", u16hex(typ)),
                   ("sid", u64hex(sid)), ("uid", u64hex(uid)), ("payload_ffff", p1),
                   ("frame_ffff", f1), ("next_key", nk), ("payload_0001", p2),
                   ("frame_0001", f2)])
    out.write()


# ---------------------------------------------------------------------------------
# 4-6. login: payloads, key schedule, complete frames (one coherent transcript)

def gen_login(key):
    # Fixed inputs of one login.
    timestamp = "1764100000123456789"  # Unix time in nanoseconds, decimal
    username = "alice"
    password = "correct horse \u2603 battery"  # UTF-8, with spaces and a non-ASCII char
    client_random = det("login client_random", 16)
    server_random = det("login server_random", 16)
    client_priv = x25519.X25519PrivateKey.from_private_bytes(det("login client x25519", 32))
    server_priv = x25519.X25519PrivateKey.from_private_bytes(det("login server x25519", 32))
    client_pub = raw_public(client_priv)
    server_pub = raw_public(server_priv)
    shared = client_priv.exchange(server_priv.public_key())
    assert shared == server_priv.exchange(client_priv.public_key())
    uid = 0x1122334455667788
    tk = det("login tk", 32)

    req_payload = "\n".join([timestamp, username, password, client_random.hex(),
                             client_pub.hex()]).encode("utf-8")
    request_hash = sha256(req_payload)
    res_payload = "\n".join([request_hash.hex(), server_random.hex(), server_pub.hex(),
                             uid.to_bytes(8, "big").hex()]).encode("utf-8")

    # 5. payload texts
    out = Out("login_payload.txt", """
The login payload texts (DESIGN.md "Login"), UTF-8, fields separated by \\n, no
trailing newline:
  login_req: <timestamp>\\n<username>\\n<password>\\n<client_random>\\n<client_x25519>
  login_res: <request_hash>\\n<server_random>\\n<server_x25519>\\n<uid>
timestamp (decimal nanoseconds), username and password are text fields; the rest is
hex and appears in the payload as lowercase hex. payload is the exact bytes (hex);
payload_text is the same with \\n escapes. request_hash = SHA-256(login_req payload).
These belong to the transcript in login_frames.txt and keyschedule_login.txt.""")
    out.block("login_payload", "alice_login_req",
              [("timestamp", timestamp), ("username", username), ("password", password),
               ("client_random", client_random), ("client_x25519", client_pub),
               ("payload", req_payload), ("payload_text", escape(req_payload.decode())),
               ("request_hash", request_hash)])
    out.block("login_res_payload", "alice_login_res",
              [("request_hash", request_hash), ("server_random", server_random),
               ("server_x25519", server_pub), ("uid", u64hex(uid)),
               ("payload", res_payload), ("payload_text", escape(res_payload.decode()))])
    # A second, ASCII-only request with a short name, to vary lengths.
    p2 = "\n".join(["1", "b", "p", bytes(16).hex(), bytes(32).hex()]).encode()
    out.block("login_payload", "minimal_fields",
              [("timestamp", "1"), ("username", "b"), ("password", "p"),
               ("client_random", bytes(16)), ("client_x25519", bytes(32)),
               ("payload", p2), ("payload_text", escape(p2.decode())),
               ("request_hash", sha256(p2))])
    out.write()

    # 4. key schedule
    out = Out("keyschedule_basic.txt", """
The login key schedule (DESIGN.md "Login", "Fine points"), HKDF-SHA-256:
  prk   = HKDF-Extract(salt = request_hash (32 raw bytes),
                       IKM = client_random (16) || server_random (16) || shared (32))
  k_c2s = HKDF-Expand(prk, "mpchat v1 c2s", 32)
  k_s2c = HKDF-Expand(prk, "mpchat v1 s2c", 32)
The IKM is raw bytes, not hex text. prk is recorded for implementers; the crate does not
expose it.""")
    for name in ("fixed_a", "fixed_b"):
        rh, cr, sr, ss = (det(f"ks {name} rh", 32), det(f"ks {name} cr", 16),
                          det(f"ks {name} sr", 16), det(f"ks {name} ss", 32))
        prk, kc, ks = traffic_keys(rh, cr, sr, ss)
        out.block("keyschedule", name, [("request_hash", rh), ("client_random", cr),
                                        ("server_random", sr), ("shared", ss), ("prk", prk),
                                        ("k_c2s", kc), ("k_s2c", ks)])
    z = traffic_keys(bytes(32), bytes(16), bytes(16), bytes(32))
    out.block("keyschedule", "all_zero_inputs",
              [("request_hash", bytes(32)), ("client_random", bytes(16)),
               ("server_random", bytes(16)), ("shared", bytes(32)), ("prk", z[0]),
               ("k_c2s", z[1]), ("k_s2c", z[2])])
    out.write()

    out = Out("keyschedule_login.txt", """
The key schedule with the X25519 step done in Python from fixed private keys
(cryptography's X25519PrivateKey.from_private_bytes). The private keys, public shares
and shared secret are recorded for documentation: ring cannot do X25519 with a fixed
private key, so the Rust test checks only the schedule from `shared` on.""")
    prk, k_c2s, k_s2c = traffic_keys(request_hash, client_random, server_random, shared)
    out.block("keyschedule_x25519", "alice_login",
              [("client_x25519_private", det("login client x25519", 32)),
               ("client_x25519", client_pub),
               ("server_x25519_private", det("login server x25519", 32)),
               ("server_x25519", server_pub), ("shared", shared),
               ("request_hash", request_hash), ("client_random", client_random),
               ("server_random", server_random), ("prk", prk), ("k_c2s", k_c2s),
               ("k_s2c", k_s2c)],
              "The login of login_payload.txt / login_frames.txt.")
    a = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC7748_A))
    b = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC7748_B))
    rh, cr, sr = det("ks rfc7748 rh", 32), det("ks rfc7748 cr", 16), det("ks rfc7748 sr", 16)
    ss = a.exchange(b.public_key())
    r = traffic_keys(rh, cr, sr, ss)
    out.block("keyschedule_x25519", "rfc7748_keys",
              [("client_x25519_private", bytes.fromhex(RFC7748_A)),
               ("client_x25519", raw_public(a)),
               ("server_x25519_private", bytes.fromhex(RFC7748_B)),
               ("server_x25519", raw_public(b)), ("shared", ss), ("request_hash", rh),
               ("client_random", cr), ("server_random", sr), ("prk", r[0]),
               ("k_c2s", r[1]), ("k_s2c", r[2])],
              "The X25519 key pairs of RFC 7748 section 6.1 (client = Alice, server = Bob).")
    out.write()

    # 6. complete login frames
    pub = key.public_key()
    oaep_seed = det("login oaep seed", 32)
    etk = oaep_encrypt_fixed_seed(pub, tk, oaep_seed)
    assert key.decrypt(etk, OAEP) == tk
    # cryptography's own randomised OAEP round-trips too (not recorded: it is random).
    assert key.decrypt(pub.encrypt(tk, OAEP), OAEP) == tk
    sealed = seal_frame(tk, "c2s", TYPES["init_req"], 1, 0, 0, req_payload, ETK_LEN)
    req_frame = sealed + etk
    assert int.from_bytes(req_frame[4:6], "big") == len(req_frame)
    assert open_frame_login(key, req_frame) == (tk, req_payload)
    res_frame = seal_frame(tk, "s2c", TYPES["init_res"], 1, 0, 0, res_payload)
    assert open_frame(tk, "s2c", 0, res_frame)[4] == res_payload

    out = Out("login_frames.txt", """
A complete login exchange, built in Python (DESIGN.md "Login").
login_req: header typ 0000, sqn 1, sid 0, uid 0, len counting the etk; payload sealed
with tk, nonce(sqn 1, c2s); then etk = RSA-OAEP(SHA-256, MGF1-SHA-256, empty label) of
tk under server_test_key.pem (a TEST-ONLY key, see README.md). OAEP is randomised; this
etk was made with the fixed seed oaep_seed (RFC 8017 7.1.1 written out in generate.py)
and checked with cryptography's OAEP decryption. frame = header || epd || mac || etk.
login_res: the server's answer, typ 0010, sqn 1, sid 0, uid 0, sealed with tk,
nonce(sqn 1, s2c). Payloads are those of login_payload.txt.""")
    out.block("login_req", "alice_login_req",
              [("private_key_file", "server_test_key.pem"), ("tk", tk),
               ("oaep_seed", oaep_seed), ("etk", etk), ("payload", req_payload),
               ("frame", req_frame)])
    out.block("login_res", "alice_login_res",
              [("tk", tk), ("server_random", server_random), ("server_x25519", server_pub),
               ("uid", u64hex(uid)), ("payload", res_payload), ("frame", res_frame)])
    out.write()

    # The first frames after that login, under the derived traffic keys at sqn 2.
    out = Out("frame_after_login.txt", """
The first frames after the login of login_frames.txt, sealed under the traffic keys of
keyschedule_login.txt (k_c2s for c2s, k_s2c for s2c) at sqn 2 (login_req and login_res
were sqn 1 in each direction). The client's header uid is its own uid.""")
    frame_block(out, "first_status_req_after_login", k_c2s, "c2s", "status_req", 2, 0, uid,
                b"")
    frame_block(out, "first_status_res_after_login", k_s2c, "s2c", "status_res", 2, 0, 0,
                b"OK\n")
    out.write()

    # Rejected login requests.
    out = Out("fail_login_req.txt", """
Login requests that must be rejected, at the step named by expect, in the order a
server checks: header (typ 0000, sqn 1, sid 0, uid 0, len = the frame with its etk),
then etk (it does not decrypt; every RSA failure must look the same), then mac (the
etk decrypts to a tk, but the sealed part does not open with it). good_frame is the
valid request each was derived from. The "resealed" ones have a valid etk and mac
over their bad header, so only the header rule catches them.""")

    def login_reject(name, frame, expect):
        out.block("login_req_reject", name,
                  [("private_key_file", "server_test_key.pem"), ("expect", expect),
                   ("frame", frame), ("good_frame", req_frame)])

    def flip(b, i, bit):
        b = bytearray(b)
        b[i] ^= bit
        return bytes(b)

    body_end = len(req_frame) - ETK_LEN
    for name, i, bit in [("etk_first_bit", body_end, 0x80), ("etk_last_bit", -1, 0x01)]:
        f = flip(req_frame, i, bit)
        try:
            key.decrypt(f[body_end:], OAEP)
            raise AssertionError(name)
        except ValueError:
            pass
        login_reject(name, f, "etk")
    # etk of a different tk (decrypts fine, but the sealed part was not made with it)
    other = oaep_encrypt_fixed_seed(pub, det("login other tk", 32), oaep_seed)
    login_reject("etk_of_another_tk", req_frame[:body_end] + other, "mac")
    def expect_reject(name, f, category):
        try:
            open_frame_login(key, f)
            raise AssertionError(name)
        except Reject as e:
            assert e.category == category, (name, e.category)
        login_reject(name, f, category)

    for name, i, bit in [("epd_first_bit", HEADER_LEN, 0x01),
                         ("mac_last_bit", body_end - 1, 0x40),
                         ("header_sid_bit", 8, 0x01)]:
        expect_reject(name, flip(req_frame, i, bit), "header" if i < HEADER_LEN else "mac")
    # Well-sealed requests (etk and mac fine) whose header breaks the login rule.
    for name, typ, sqn, sid, uid in [("header_sqn_2_resealed", 0x0000, 2, 0, 0),
                                     ("header_uid_nonzero_resealed", 0x0000, 1, 0, 1),
                                     ("header_sid_nonzero_resealed", 0x0000, 1, 5, 0),
                                     ("header_typ_0010_resealed", 0x0010, 1, 0, 0)]:
        f = seal_frame(tk, "c2s", typ, sqn, sid, uid, req_payload, ETK_LEN) + etk
        assert open12(tk, nonce(sqn, "c2s"), f[:HEADER_LEN], f[HEADER_LEN:body_end - MAC_LEN],
                      f[body_end - MAC_LEN:body_end]) == req_payload
        expect_reject(name, f, "header")
    out.write()


def open_frame_login(key, frame):
    """Reference opener for a login request: returns (tk, payload) or raises Reject."""
    h = frame[:HEADER_LEN]
    assert h[0:2] == VERSION and int.from_bytes(h[4:6], "big") == len(frame)
    # DESIGN.md "Fine points": the login header must be typ 0000, sqn 1, sid 0, uid 0.
    if h[2:4] != bytes(2) or h[6:8] != b"\x00\x01" or h[8:24] != bytes(16):
        raise Reject("header")
    body_end = len(frame) - ETK_LEN
    try:
        tk = key.decrypt(frame[body_end:], OAEP)
    except ValueError:
        raise Reject("etk")
    try:
        payload = open12(tk, nonce(1, "c2s"), h, frame[HEADER_LEN:body_end - MAC_LEN],
                         frame[body_end - MAC_LEN:body_end])
    except ValueError:
        raise Reject("mac")
    return tk, payload


# ---------------------------------------------------------------------------------
# 7. rejected frames

def gen_fail_frames():
    out = Out("fail_frames.txt", """
Frames a receiver must drop. Each block: key, direction, last_sqn (the receiver's last
accepted sqn), the frame, the check that rejects it (expect = version, type, length,
sqn or mac; each vector has exactly one defect) and the valid good_frame it was derived
from, which the same receiver accepts. "resealed" vectors have a correct mac over their
bad header, so only the named check can catch them.""")
    k = det("fail key", 32)
    d = "c2s"
    sid, uid = 0x0123456789ABCDEF, 0x1122334455667788
    typ = TYPES["msg_req"]
    payload = b"attack at dawn"
    last = 4
    good = seal_frame(k, d, typ, 5, sid, uid, payload)
    assert open_frame(k, d, last, good)[4] == payload

    def reject(name, frame, expect, last_sqn=last, good_frame=good, key=k, direction=d):
        try:
            open_frame(key, direction, last_sqn, frame)
            raise AssertionError("reject vector opened: " + name)
        except Reject as e:
            assert e.category == expect, (name, e.category, expect)
        assert open_frame(key, direction, last_sqn, good_frame)
        out.block("frame_reject", name,
                  [("key", key), ("direction", direction), ("last_sqn", u16hex(last_sqn)),
                   ("expect", expect), ("frame", frame), ("good_frame", good_frame)])

    def flip(i, bit):
        b = bytearray(good)
        b[i] ^= bit
        return bytes(b)

    # Bit flips in the header.
    reject("header_version_bit", flip(1, 0x01), "version")
    reject("header_typ_bit_to_known_type", flip(3, 0x10), "mac")  # 0200 -> 0210
    reject("header_typ_bit_to_unknown_type", flip(3, 0x01), "type")  # 0200 -> 0201
    reject("header_len_bit", flip(5, 0x01), "length")
    reject("header_sqn_bit_up", flip(7, 0x02), "sqn")  # 5 -> 7: a gap
    reject("header_sqn_bit_down", flip(7, 0x04), "sqn")  # 5 -> 1
    reject("header_sid_bit", flip(8, 0x80), "mac")
    reject("header_uid_bit", flip(23, 0x01), "mac")
    # Bit flips in epd and mac.
    reject("epd_first_bit", flip(HEADER_LEN, 0x01), "mac")
    reject("epd_last_bit", flip(len(good) - MAC_LEN - 1, 0x80), "mac")
    reject("mac_first_bit", flip(len(good) - MAC_LEN, 0x01), "mac")
    reject("mac_last_bit", flip(len(good) - 1, 0x80), "mac")
    # Wrong versions, resealed.
    for name, ver in [("version_0101_resealed", b"\x01\x01"), ("version_0200_resealed", b"\x02\x00"),
                      ("version_0000_resealed", b"\x00\x00")]:
        reject(name, seal_frame(k, d, typ, 5, sid, uid, payload, ver=ver), "version")
    # Unknown types, resealed.
    for t in (0x0001, 0x0020, 0x0500, 0x0210 | 0x0001, 0xFFFF):
        reject(f"unknown_type_{t:04x}_resealed", seal_frame(k, d, t, 5, sid, uid, payload), "type")
    # Length field against the bytes.
    n = len(good)
    reject("len_one_too_long", good[:4] + (n + 1).to_bytes(2, "big") + good[6:], "length")
    reject("len_one_too_short", good[:4] + (n - 1).to_bytes(2, "big") + good[6:], "length")
    reject("frame_one_byte_appended", good + b"\x00", "length")
    reject("frame_last_byte_cut", good[:-1], "length")
    reject("frame_shorter_than_header", good[:10], "length")
    reject("frame_empty", b"", "length")
    reject("len_35_below_minimum_consistent",
           good[:4] + (35).to_bytes(2, "big") + good[6:24] + good[24:35], "length")
    reject("len_0_header_only", good[:4] + bytes(2) + good[6:24], "length")
    reject("len_ffff_short_frame", good[:4] + b"\xff\xff" + good[6:], "length")
    # Truncations with len fixed up: only the mac can catch them.
    # header (len fixed up) || the first 5 epd bytes || the original 12-byte mac
    f = good[:4] + (HEADER_LEN + 5 + MAC_LEN).to_bytes(2, "big") + good[6:29] + good[-MAC_LEN:]
    reject("epd_truncated_len_fixed", f, "mac")
    f = good[:4] + (n - 1).to_bytes(2, "big") + good[6:-1]
    reject("mac_truncated_to_11_len_fixed", f, "mac")
    # Sequence numbers.
    at6 = seal_frame(k, d, typ, 6, sid, uid, payload)
    reject("sqn_equal_to_last", good, "sqn", last_sqn=5, good_frame=at6)
    reject("sqn_below_last", good, "sqn", last_sqn=6,
           good_frame=seal_frame(k, d, typ, 7, sid, uid, payload))
    at7 = seal_frame(k, d, typ, 7, sid, uid, payload)
    reject("sqn_gap_one_frame_deleted", at7, "sqn", last_sqn=5, good_frame=at6)
    reject("sqn_gap_after_rekey_reset", good, "sqn", last_sqn=0,
           good_frame=seal_frame(k, d, typ, 1, sid, uid, payload))
    zero = seal_frame(k, d, typ, 0, sid, uid, payload)
    reject("sqn_zero_never_valid", zero, "sqn", last_sqn=0,
           good_frame=seal_frame(k, d, typ, 1, sid, uid, payload))
    # Wrong direction and wrong key: a perfectly formed frame under another nonce/key.
    other_dir = seal_frame(k, "s2c", typ, 5, sid, uid, payload)
    reject("sealed_for_the_other_direction", other_dir, "mac")
    reject("sealed_under_the_rekeyed_key", seal_frame(rekey(k), d, typ, 5, sid, uid, payload),
           "mac")
    out.write()


# ---------------------------------------------------------------------------------
# RSA: key encodings, OAEP, PSS (the same test key; DESIGN.md "Accounts and keys",
# "Fine points", "End-to-end messages")

def spki_der(key):
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def wire_key(key):
    """The wire form of a public key: standard padded base64 of its SPKI DER."""
    return base64.b64encode(spki_der(key)).decode()


def gen_rsa(key):
    pub = key.public_key()
    spki = spki_der(key)
    fp = "SHA256:" + base64.b64encode(sha256(spki)).decode().rstrip("=")
    out = Out("rsa_key.txt", """
Encodings of the RSA test key (server_test_key.pem / .pub, TEST-ONLY, see README.md):
spki_der is its SubjectPublicKeyInfo DER; fingerprint is ssh-style, "SHA256:" + unpadded
base64 of SHA-256 over spki_der; wire is the on-the-wire form, standard padded base64
of spki_der on one line.""")
    out.block("rsa_key", "server_test_key",
              [("private_key_file", "server_test_key.pem"),
               ("public_key_file", "server_test_key.pub"), ("spki_der", spki),
               ("fingerprint", fp), ("wire", wire_key(key))])
    out.write()

    out = Out("rsa_oaep.txt", """
RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) ciphertexts under the test key, each made
with the fixed seed recorded (RFC 8017 7.1.1 written out in generate.py) and checked
with cryptography's OAEP decryption. Decrypting ciphertext gives plaintext.""")
    for name, msg in [("thirty_two_byte_key", det("oaep key", 32)), ("empty", b""),
                      ("longest_190_bytes", det("oaep longest", 190))]:
        seed = det("oaep seed " + name, 32)
        c = oaep_encrypt_fixed_seed(pub, msg, seed)
        assert key.decrypt(c, OAEP) == msg
        out.block("oaep", name, [("private_key_file", "server_test_key.pem"), ("seed", seed),
                                 ("plaintext", msg), ("ciphertext", c)])
    out.write()

    out = Out("rsa_pss.txt", """
RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signatures by the test key, each made with
the fixed salt recorded (RFC 8017 9.1.1 written out in generate.py) and checked with
cryptography's PSS verification. The signature verifies over message under the public
key.""")
    good = []
    for name, msg in [("short_message", b"mpchat"), ("empty_message", b""),
                      ("one_kib", det("pss message", 1024))]:
        salt = det("pss salt " + name, 32)
        sig = pss_sign_fixed_salt(key, msg, salt)
        pub.verify(sig, msg, PSS, hashes.SHA256())
        good.append((msg, sig))
        out.block("pss", name, [("public_key_file", "server_test_key.pub"), ("salt", salt),
                                ("message", msg), ("signature", sig)])
    out.write()

    out = Out("fail_rsa_pss.txt", """
RSA-PSS signatures that must NOT verify under the test key's public half; good_message
and good_signature are the valid pair each was derived from.""")
    msg, sig = good[0]

    def bad(name, m, s_):
        try:
            pub.verify(s_, m, PSS, hashes.SHA256())
            raise AssertionError(name)
        except InvalidSignature:
            pass
        out.block("pss_reject", name, [("public_key_file", "server_test_key.pub"),
                                       ("message", m), ("signature", s_),
                                       ("good_message", msg), ("good_signature", sig)])

    flipped = bytearray(sig)
    flipped[100] ^= 0x04
    bad("signature_bit", msg, bytes(flipped))
    bad("message_changed", b"mpchaT", sig)
    bad("signature_truncated", msg, sig[:-1])
    # Valid PSS signatures with other salt lengths: the design fixes 32 bytes, so a
    # verifier must not detect the salt length automatically.
    for slen in (20, 0):
        s_ = pss_sign_fixed_salt(key, msg, det("pss short salt", slen))
        pub.verify(s_, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=slen),
                   hashes.SHA256())
        bad(f"salt_of_{slen}_bytes", msg, s_)
    out.write()


# ---------------------------------------------------------------------------------
# End-to-end v2 (issue 11; /work/wt/notes/E2E_V2.md, man/mpchat-protocol.7 END-TO-END
# ENVELOPE): the sender-key chain, message keys, and the MPS2 / MPK2 / MPM2 envelopes,
# written out here from the layouts, independently of the Rust code. Every reject
# vector is first rejected by the reference openers below, for the reason recorded.

from cryptography.hazmat.primitives.asymmetric import ed25519

E2E_MAX_ENVELOPE = 65491
E2E_MAX_RECIPIENTS = 99
E2E_MAX_NAME = 32
E2E_MIN_RSA, E2E_MAX_RSA = 256, 512
E2E_FORWARD_BOUND = 2000
MEMBERS_CONTEXT = b"mpchat v2 members"
SENDER_KEY_CONTEXT = b"mpchat v2 sender key"
MESSAGE_AAD_CONTEXT = b"mpchat v2 message"
MESSAGE_SIG_CONTEXT = b"mpchat v2 message sig"
MESSAGE_KEY_INFO = b"mpchat v2 message key"
USER_KEYS = {"alice": 2048, "bob": 3072, "carol": 4096}


def load_or_create_user_key(name):
    """A TEST-ONLY identity key per test user (user_<name>_test_key.pem / .pub), made
    once with the size in USER_KEYS and committed, like server_test_key.pem."""
    path = os.path.join(HERE, f"user_{name}_test_key.pem")
    if not os.path.exists(path):
        key = rsa.generate_private_key(public_exponent=65537, key_size=USER_KEYS[name])
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    assert key.key_size == USER_KEYS[name]
    with open(path[:-4] + ".pub", "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def u32b(v):
    return v.to_bytes(4, "big")


def i64b(v):
    return v.to_bytes(8, "big", signed=True)


def hmac256(key, data):
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def chain_seed(ck):
    return hmac256(ck, b"\x01")


def chain_next(ck):
    return hmac256(ck, b"\x02")


def chain_advance(ck, steps):
    for _ in range(steps):
        ck = chain_next(ck)
    return ck


def message_key(seed):
    """HKDF-SHA-256(salt = empty, IKM = seed, info = "mpchat v2 message key", L = 44)
    -> (aes_key, nonce), cross-checked against the two-step form with 32 zero bytes."""
    okm = HKDF(hashes.SHA256(), 44, None, MESSAGE_KEY_INFO).derive(seed)
    prk = hkdf_extract(bytes(32), seed)
    assert okm == HKDFExpand(hashes.SHA256(), 44, MESSAGE_KEY_INFO).derive(prk)
    return okm[:32], okm[32:]


def commitment(sid, author, key_id, iteration, ck, signing_public):
    return sha256(SENDER_KEY_CONTEXT + u64hex(sid) + u64hex(author) + u32b(key_id)
                  + u32b(iteration) + ck + signing_public)


def ed_public(seed):
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed_sign(seed, msg):
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(msg)


def ed_verify(public, sig, msg):
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
        return True
    except InvalidSignature:
        return False


def pss_verify(pub, sig, msg):
    if len(sig) != (pub.key_size + 7) // 8:
        return False
    try:
        pub.verify(sig, msg, PSS, hashes.SHA256())
        return True
    except InvalidSignature:
        return False


def rsa_len(key):
    return (key.key_size + 7) // 8


def signed_with_sig(signed, sig):
    return signed + u16hex(len(sig)) + sig


class E2eReject(Exception):
    """An envelope a receiver must refuse; .category is the expect value of its vector."""

    def __init__(self, category):
        super().__init__(category)
        self.category = category


class Rd:
    """A bounds-checked reader: running short raises E2eReject("truncated")."""

    def __init__(self, b):
        self.b, self.pos = b, 0

    def take(self, n):
        if n > len(self.b) - self.pos:
            raise E2eReject("truncated")
        out = self.b[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, n, signed=False):
        return int.from_bytes(self.take(n), "big", signed=signed)

    def left(self):
        return len(self.b) - self.pos


def valid_username(name):
    return (1 <= len(name) <= 32 and name[0] in b"abcdefghijklmnopqrstuvwxyz0123456789"
            and all(c in b"abcdefghijklmnopqrstuvwxyz0123456789._-" for c in name))


def read_rsa_sig(r):
    s = r.int(2)
    if not E2E_MIN_RSA <= s <= E2E_MAX_RSA:
        raise E2eReject("signature-length")
    sig = r.take(s)
    if r.left():
        raise E2eReject("trailing-bytes")
    return sig


def magic(r, m):
    if len(r.b) > E2E_MAX_ENVELOPE:
        raise E2eReject("too-large")
    if r.left() < 4 or r.take(4) != m:
        raise E2eReject("unknown-kind")


# --- MPS2 ---------------------------------------------------------------------

def mps2_signed(creator_uid, created_ms, creator_name, invitees):
    """The signed part, invitees written in the order given (reject vectors need bad
    orders); names are bytes."""
    out = b"MPS2" + u64hex(creator_uid) + u64hex(created_ms)
    out += bytes([len(creator_name)]) + creator_name + bytes([len(invitees) % 256])
    for n in invitees:
        out += bytes([len(n)]) + n
    return out


def mps2_sign(key, sid, signed, salt):
    return signed_with_sig(signed, pss_sign_fixed_salt(key, MEMBERS_CONTEXT + u64hex(sid)
                                                       + signed, salt))


def open_mps2(env, sid, creator_uid, creator_name, creator_pub):
    """Reference receiver: returns (created_ms, invitees) or raises E2eReject."""
    r = Rd(env)
    magic(r, b"MPS2")
    uid = r.int(8)
    if uid == 0:
        raise E2eReject("zero-uid")
    created = r.int(8)

    def name():
        n = r.int(1)
        if not 1 <= n <= E2E_MAX_NAME:
            raise E2eReject("name-length")
        v = r.take(n)
        if not valid_username(v):
            raise E2eReject("invalid-name")
        return v

    cname = name()
    k = r.int(1)
    if not 1 <= k <= E2E_MAX_RECIPIENTS:
        raise E2eReject("invitee-count")
    names = []
    for _ in range(k):
        v = name()
        if names and names[-1] >= v:
            raise E2eReject("names-not-ascending")
        if v == cname:
            raise E2eReject("creator-invited")
        names.append(v)
    signed = env[:r.pos]
    sig = read_rsa_sig(r)
    if uid != creator_uid or cname != creator_name:
        raise E2eReject("wrong-creator")
    if not pss_verify(creator_pub, sig, MEMBERS_CONTEXT + u64hex(sid) + signed):
        raise E2eReject("bad-signature")
    return created, names


# --- MPK2 ---------------------------------------------------------------------

def mpk2_signed(key_id, iteration, signing_public, commit, entries, count=None):
    """entries: [(uid, wrapped)] in the order given."""
    n = len(entries) if count is None else count
    out = (b"MPK2" + u32b(key_id) + u32b(iteration) + signing_public + commit
           + u16hex(n))
    for uid, w in entries:
        out += u64hex(uid) + u16hex(len(w)) + w
    return out


def mpk2_sign(key, sid, author, signed, salt):
    return signed_with_sig(signed, pss_sign_fixed_salt(
        key, SENDER_KEY_CONTEXT + u64hex(sid) + u64hex(author) + signed, salt))


def open_mpk2(env, sid, author, author_pub, me_uid, me_key, known=None):
    """Reference receiver of a distribution. known: None or dict(key_id, signing_public,
    commitment, first_iteration, position, chain_key). Returns ("stored", ck) |
    ("confirmed", None) | ("unchecked", None) | ("not-for-us", None), or raises."""
    r = Rd(env)
    magic(r, b"MPK2")
    key_id = r.int(4)
    if key_id == 0:
        raise E2eReject("zero-key-id")
    i = r.int(4)
    spk = r.take(32)
    commit = r.take(32)
    count = r.int(2)
    if not 1 <= count <= E2E_MAX_RECIPIENTS:
        raise E2eReject("entry-count")
    entries = []
    for _ in range(count):
        uid = r.int(8)
        if uid == 0:
            raise E2eReject("zero-uid")
        if entries and entries[-1][0] >= uid:
            raise E2eReject("entries-not-increasing")
        w = r.int(2)
        if not E2E_MIN_RSA <= w <= E2E_MAX_RSA:
            raise E2eReject("wrapped-key-length")
        entries.append((uid, r.take(w)))
    signed = env[:r.pos]
    sig = read_rsa_sig(r)
    if not pss_verify(author_pub, sig, SENDER_KEY_CONTEXT + u64hex(sid) + u64hex(author)
                      + signed):
        raise E2eReject("bad-signature")
    if any(uid == author for uid, _ in entries):
        raise E2eReject("author-is-recipient")
    ck = None
    for uid, w in entries:
        if uid == me_uid:
            try:
                ck = me_key.decrypt(w, OAEP)
            except ValueError:
                raise E2eReject("unwrap")
            if len(ck) != 32:
                raise E2eReject("unwrap")
            if commitment(sid, author, key_id, i, ck, spk) != commit:
                raise E2eReject("commitment-mismatch")
    if known and known["key_id"] == key_id:
        if known["signing_public"] != spk:
            raise E2eReject("conflicting-sender-key")
        p = known["position"]
        if p <= i <= p + E2E_FORWARD_BOUND:
            ours = chain_advance(known["chain_key"], i - p)
            if commitment(sid, author, key_id, i, ours, spk) != commit:
                raise E2eReject("conflicting-sender-key")
            return "confirmed", None
        if i == known["first_iteration"]:
            if known["commitment"] != commit:
                raise E2eReject("conflicting-sender-key")
            return "confirmed", None
        return "unchecked", None
    if ck is None:
        return "not-for-us", None
    return "stored", ck


# --- MPM2 ---------------------------------------------------------------------

def mpm2_header(key_id, iteration, sent_ms):
    return b"MPM2" + u32b(key_id) + u32b(iteration) + i64b(sent_ms)


def mpm2_seal(sid, author, key_id, iteration, sent_ms, ck_i, signing_seed, text,
              header=None):
    """Seals `text` (bytes) with CK_i; `header` overrides the AAD's header (for reject
    vectors whose clear fields disagree with what was sealed)."""
    h = mpm2_header(key_id, iteration, sent_ms)
    key, nn = message_key(chain_seed(ck_i))
    aad = MESSAGE_AAD_CONTEXT + u64hex(sid) + u64hex(author) + (header or h)
    body = h + AESGCM(key).encrypt(nn, text, aad)
    return mpm2_resign(body, sid, author, signing_seed), key, nn, aad


def mpm2_resign(body, sid, author, signing_seed):
    return body + ed_sign(signing_seed, MESSAGE_SIG_CONTEXT + u64hex(sid) + u64hex(author)
                          + body)


def open_mpm2(env, sid, author, known_key_id, signing_public, chain_key, position):
    """Reference receiver (no skipped keys held): returns (text, iteration) or raises."""
    r = Rd(env)
    magic(r, b"MPM2")
    key_id = r.int(4)
    if key_id == 0:
        raise E2eReject("zero-key-id")
    i = r.int(4)
    r.int(8, signed=True)
    if r.left() < 64:
        raise E2eReject("truncated")
    c = r.left() - 64
    if c < 17:
        raise E2eReject("ciphertext-too-short")
    header, sealed, sig = env[:20], env[20:20 + c], env[20 + c:]
    if key_id != known_key_id:
        raise E2eReject("no-sender-key")
    if not ed_verify(signing_public, sig, MESSAGE_SIG_CONTEXT + u64hex(sid) + u64hex(author)
                     + env[:20 + c]):
        raise E2eReject("bad-signature")
    if i < position:
        raise E2eReject("old-or-replayed")
    if i - position > E2E_FORWARD_BOUND:
        raise E2eReject("too-far-ahead")
    key, nn = message_key(chain_seed(chain_advance(chain_key, i - position)))
    try:
        text = AESGCM(key).decrypt(nn, sealed, MESSAGE_AAD_CONTEXT + u64hex(sid)
                                   + u64hex(author) + header)
    except Exception:
        raise E2eReject("cannot-open")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        raise E2eReject("not-utf8")
    return text, i


def expect_e2e_reject(fn, category, name):
    try:
        fn()
    except E2eReject as e:
        assert e.category == category, (name, e.category, category)
        return
    raise AssertionError("reject vector accepted: " + name)


def flip_bit(b, i, bit):
    b = bytearray(b)
    b[i] ^= bit
    return bytes(b)


# --- the vectors ------------------------------------------------------------

def gen_e2e(server_key):
    keys = {name: load_or_create_user_key(name) for name in USER_KEYS}
    pubs = {name: k.public_key() for name, k in keys.items()}
    files = {name: f"user_{name}_test_key" for name in USER_KEYS}
    uids = {"alice": 0xa11ce00000000001, "bob": 0xb0b0000000000002,
            "carol": 0xca40100000000003}
    outsider_uid = 0x0555000000000009
    sid = 0x5e55_1011_2233_4455
    gen_e2e_chain()
    gen_e2e_mps2(keys, pubs, files, uids, sid)
    gen_e2e_mpk2(keys, pubs, files, uids, sid, server_key, outsider_uid)
    gen_e2e_mpm2(uids, sid)


def gen_e2e_chain():
    out = Out("e2e_chain.txt", """
The v2 sender-key chain (libsignal's): seed_i = HMAC-SHA-256(CK_i, 01), CK_{i+1} =
HMAC-SHA-256(CK_i, 02), and the message key aes_key_i || nonce_i = HKDF-SHA-256(salt
empty, IKM = seed_i, info "mpchat v2 message key", L = 44). A chain block starts at
chain_key = CK_iteration and lists, for `steps` iterations in a row, the concatenated
seeds (32 bytes each), message keys (44 bytes each: 32-byte AES key then 12-byte nonce)
and next chain keys (CK_{i+1}, 32 bytes each). A chain_jump block gives the chain key
`target - iteration` steps on. A message_key block is the HKDF alone.""")
    for name, ck, start, steps in [("zero_key_from_0", bytes(32), 0, 8),
                                   ("fixed_key_from_0", det("chain key a", 32), 0, 5),
                                   ("fixed_key_from_999", det("chain key b", 32), 999, 4)]:
        seeds, mks, nexts = b"", b"", b""
        c = ck
        for _ in range(steps):
            s = chain_seed(c)
            k, nn = message_key(s)
            seeds += s
            mks += k + nn
            c = chain_next(c)
            nexts += c
        out.block("chain", name, [("chain_key", ck), ("iteration", u32b(start)),
                                  ("steps", u32b(steps)), ("seeds", seeds),
                                  ("message_keys", mks), ("next_chain_keys", nexts)])
    for name, ck, start, target in [("jump_by_the_forward_bound", det("chain key a", 32),
                                     0, 2000),
                                    ("jump_near_the_u32_end", det("chain key c", 32),
                                     0xFFFFFFF0, 0xFFFFFFFF)]:
        out.block("chain_jump", name, [("chain_key", ck), ("iteration", u32b(start)),
                                       ("target", u32b(target)),
                                       ("chain_key_at_target",
                                        chain_advance(ck, target - start))])
    for name, seed in [("zero_seed", bytes(32)), ("fixed_seed", det("mk seed", 32))]:
        k, nn = message_key(seed)
        out.block("message_key", name, [("seed", seed), ("aes_key", k), ("nonce", nn)])
    out.write()


def gen_e2e_mps2(keys, pubs, files, uids, sid):
    alice = keys["alice"]
    cu, cn = uids["alice"], b"alice"
    created = 1_767_225_600_123
    out = Out("e2e_mps2.txt", """
Membership statements (MPS2): "MPS2" || creator uid (8) || created_ms (8) || c (1) ||
creator name || k (1) || k x (length (1), name), strictly ascending || s (2) ||
RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt, the fixed salt recorded) by the creator
over "mpchat v2 members" || sid || signed, where signed is every byte before s. The
keys are TEST-ONLY (README.md). invitees is a text field: names separated by spaces.""")
    good = None
    for name, inv, key_name in [("two_invitees", [b"bob", b"carol"], "alice"),
                                ("one_invitee_names_at_the_bounds", [b"b" * 32], "alice"),
                                ("ninety_nine_invitees",
                                 [b"u%03d" % i for i in range(99)], "alice")]:
        signed = mps2_signed(cu, created, cn, inv)
        salt = det("mps2 salt " + name, 32)
        env = mps2_sign(alice, sid, signed, salt)
        assert open_mps2(env, sid, cu, cn, pubs["alice"]) == (created, inv)
        good = good or env
        out.block("mps2", name, [("sid", u64hex(sid)), ("creator_uid", u64hex(cu)),
                                 ("creator_name", cn.decode()),
                                 ("created_ms", u64hex(created)),
                                 ("invitees", " ".join(n.decode() for n in inv)),
                                 ("creator_public_key_file", files["alice"] + ".pub"),
                                 ("pss_salt", salt), ("signed", signed),
                                 ("statement", env)])
    out.write()

    out = Out("fail_e2e_mps2.txt", """
Membership statements a receiver must refuse, for the reason in expect (the error the
crate reports). The receiver expects creator_uid / creator_name (from the session's
status) and verifies with creator_public_key_file in session sid. good_statement, with
good_sid / good_creator_uid / good_creator_name, is the valid statement each was
derived from. "signed" vectors carry a valid signature over their defect, so only the
layout rule can catch them.""")
    good_signed = mps2_signed(cu, created, cn, [b"bob", b"carol"])

    def reject(name, env, expect, s=sid, u=cu, n=cn):
        expect_e2e_reject(lambda: open_mps2(env, s, u, n, pubs["alice"]), expect, name)
        open_mps2(good, sid, cu, cn, pubs["alice"])
        out.block("mps2_reject", name, [("sid", u64hex(s)), ("creator_uid", u64hex(u)),
                                        ("creator_name", n.decode()),
                                        ("creator_public_key_file", files["alice"] + ".pub"),
                                        ("expect", expect), ("statement", env),
                                        ("good_sid", u64hex(sid)),
                                        ("good_creator_uid", u64hex(cu)),
                                        ("good_creator_name", cn.decode()),
                                        ("good_statement", good)])

    def signed(name, inv, expect, uid=cu, cname=cn):
        body = mps2_signed(uid, created, cname, inv)
        reject(name + "_signed", mps2_sign(alice, sid, body, det("mps2 bad " + name, 32)),
               expect)

    signed("names_unsorted", [b"carol", b"bob"], "names-not-ascending")
    signed("names_duplicate", [b"bob", b"bob"], "names-not-ascending")
    signed("creator_among_invitees", [b"alice", b"bob"], "creator-invited")
    signed("uppercase_name", [b"Bob"], "invalid-name")
    signed("name_starting_with_a_dot", [b".bob"], "invalid-name")
    signed("name_of_33_bytes", [b"b" * 33], "name-length")
    signed("empty_name", [b""], "name-length")
    signed("no_invitees", [], "invitee-count")
    signed("one_hundred_invitees", [b"u%03d" % i for i in range(100)], "invitee-count")
    signed("creator_uid_zero", [b"bob"], "zero-uid", uid=0)
    reject("signature_bit", flip_bit(good, len(good) - 7, 0x10), "bad-signature")
    reject("created_ms_bit", flip_bit(good, 19, 0x01), "bad-signature")
    reject("moved_to_another_session", good, "bad-signature", s=sid ^ 1)
    reject("another_creator_uid", good, "wrong-creator", u=uids["bob"])
    reject("another_creator_name", good, "wrong-creator", n=b"mallory")
    reject("trailing_byte", good + b"\x00", "trailing-bytes")
    reject("truncated_in_the_signature", good[:-1], "truncated")
    reject("truncated_in_the_names", good[:30], "truncated")
    reject("signature_of_255_bytes", good_signed + u16hex(255) + bytes(255),
           "signature-length")
    reject("signed_by_another_key", mps2_sign(keys["bob"], sid, good_signed,
                                              det("mps2 bob salt", 32)), "bad-signature")
    reject("old_mpe1_magic", b"MPE1" + good[4:], "unknown-kind")
    out.write()


def gen_e2e_mpk2(keys, pubs, files, uids, sid, server_key, outsider_uid):
    alice = keys["alice"]
    au = uids["alice"]
    key_id = 0x5eed_0001
    iteration = 7
    ck = det("mpk2 chain key", 32)
    spk_seed = det("mpk2 signing seed", 32)
    spk = ed_public(spk_seed)
    commit = commitment(sid, au, key_id, iteration, ck, spk)
    recips = [("bob", uids["bob"]), ("carol", uids["carol"])]
    recips.sort(key=lambda x: x[1])

    def build(entries_ck, name, commit_=commit, kid=key_id, it=iteration, spk_=spk,
              extra=None, sid_=sid, author=au, key=alice):
        """entries_ck: [(recipient name, uid, chain key to wrap)]; returns
        (envelope, signed, oaep seeds, pss salt)."""
        seeds, entries = b"", []
        for rname, uid, c in entries_ck:
            s = det(f"mpk2 oaep seed {name} {rname}", 32)
            seeds += s
            pub = pubs[rname] if rname in pubs else server_key.public_key()
            entries.append((uid, oaep_encrypt_fixed_seed(pub, c, s)))
        if extra:
            entries = extra(entries)
        signed = mpk2_signed(kid, it, spk_, commit_, entries)
        salt = det("mpk2 pss salt " + name, 32)
        return mpk2_sign(key, sid_, author, signed, salt), signed, seeds, salt

    honest = [(n, u, ck) for n, u in recips]
    good, good_signed, good_seeds, good_salt = build(honest, "good")
    out = Out("e2e_mpk2.txt", """
Sender-key distributions (MPK2): "MPK2" || key id (4) || iteration i (4) || Ed25519
public key (32) || commitment (32) || r (2) || r x (uid (8), w (2), RSA-OAEP of CK_i to
the recipient's key) || s (2) || RSA-PSS by the author over "mpchat v2 sender key" ||
sid || author uid || signed (every byte before s). commitment = SHA-256("mpchat v2
sender key" || sid || author uid || key id || i || CK_i || signing key). OAEP seeds
(32 bytes per entry, concatenated in entry order) and the PSS salt are recorded. The
receiver me_uid opens it with me_private_key_file and gets `outcome`: stored (it had
an entry: chain_key unwrapped and checked against the commitment) or not-for-us (no
entry). Keys are TEST-ONLY (README.md); signing_seed is the author's Ed25519 seed.""")

    def accept(name, env, signed, seeds, salt, me, me_uid, outcome):
        me_key = keys[me] if me in keys else server_key
        got = open_mpk2(env, sid, au, pubs["alice"], me_uid, me_key)
        assert got[0] == outcome and (outcome != "stored" or got[1] == ck), (name, got)
        out.block("mpk2", name, [
            ("sid", u64hex(sid)), ("author_uid", u64hex(au)),
            ("author_public_key_file", files["alice"] + ".pub"),
            ("me_uid", u64hex(me_uid)),
            ("me_private_key_file", (files[me] if me in files else "server_test_key")
             + ".pem"),
            ("key_id", u32b(key_id)), ("iteration", u32b(iteration)), ("chain_key", ck),
            ("signing_seed", spk_seed), ("signing_public", spk), ("commitment", commit),
            ("recipient_uids", b"".join(u64hex(u) for _, u in recips)),
            ("oaep_seeds", seeds), ("pss_salt", salt), ("signed", signed),
            ("envelope", env), ("outcome", outcome)])

    accept("to_bob_and_carol_opened_by_bob", good, good_signed, good_seeds, good_salt,
           "bob", uids["bob"], "stored")
    accept("to_bob_and_carol_opened_by_carol", good, good_signed, good_seeds, good_salt,
           "carol", uids["carol"], "stored")
    accept("to_bob_and_carol_seen_by_an_outsider", good, good_signed, good_seeds,
           good_salt, "server", outsider_uid, "not-for-us")
    out.write()

    out = Out("fail_e2e_mpk2.txt", """
Sender-key distributions a receiver (me_uid, me_private_key_file) must refuse, for the
reason in expect. known_* describe a key the receiver already holds for this author
(known_key_id 00000000: none): its signing key, commitment, the iteration it was
received at and the receiver's chain (known_chain_key at known_position). good_envelope
(with good_sid, good_author_uid) is the valid distribution each was derived from; the
receiver with no known key stores it. "signed" vectors carry a valid signature.""")
    none = {"key_id": 0, "signing_public": bytes(32), "commitment": bytes(32),
            "first_iteration": 0, "position": 0, "chain_key": bytes(32)}
    # A receiver that already holds this key id (same signing key), received at
    # iteration 5 with its own chain CK_5: the honest CK_7 would be two steps on.
    ck5 = det("mpk2 chain key at 5", 32)
    ck7 = chain_advance(ck5, 2)
    ours_at_5 = {"key_id": key_id, "signing_public": spk,
                 "commitment": commitment(sid, au, key_id, 5, ck5, spk),
                 "first_iteration": 5, "position": 5, "chain_key": ck5}

    def reject(name, env, expect, me="bob", known=None, s=sid, a=au):
        known = known or none
        me_key = keys[me] if me in keys else server_key
        kn = known if known["key_id"] else None
        expect_e2e_reject(lambda: open_mpk2(env, s, a, pubs["alice"], uids.get(me, 0),
                                            me_key, kn), expect, name)
        assert open_mpk2(good, sid, au, pubs["alice"], uids.get(me, 0), me_key)[0] in (
            "stored",)
        out.block("mpk2_reject", name, [
            ("sid", u64hex(s)), ("author_uid", u64hex(a)),
            ("author_public_key_file", files["alice"] + ".pub"),
            ("me_uid", u64hex(uids[me])), ("me_private_key_file", files[me] + ".pem"),
            ("known_key_id", u32b(known["key_id"])),
            ("known_signing_public", known["signing_public"]),
            ("known_commitment", known["commitment"]),
            ("known_first_iteration", u32b(known["first_iteration"])),
            ("known_position", u32b(known["position"])),
            ("known_chain_key", known["chain_key"]),
            ("expect", expect), ("envelope", env), ("good_sid", u64hex(sid)),
            ("good_author_uid", u64hex(au)), ("good_envelope", good)])

    n_sig = len(good) - rsa_len(alice)
    reject("signature_bit", flip_bit(good, n_sig + 3, 0x01), "bad-signature")
    reject("commitment_bit_unsigned", flip_bit(good, 50, 0x80), "bad-signature")
    reject("moved_to_another_session", good, "bad-signature", s=sid + 1)
    reject("attributed_to_another_author", good, "bad-signature", a=uids["carol"] ^ 0xFF)
    other_ck = det("mpk2 other chain key", 32)
    env, _, _, _ = build(honest, "miscommitted",
                         commit_=commitment(sid, au, key_id, iteration, other_ck, spk))
    reject("miscommitted_signed", env, "commitment-mismatch")
    reject("miscommitted_signed_seen_by_carol", env, "commitment-mismatch", me="carol")
    # Equivocation: the commitment is to ck, bob's entry wraps ck, carol's another key.
    env, _, _, _ = build([(n, u, ck if n == "bob" else other_ck) for n, u in recips],
                         "equivocating")
    assert open_mpk2(env, sid, au, pubs["alice"], uids["bob"], keys["bob"])[0] == "stored"
    reject("equivocating_carol_gets_another_chain_key_signed", env, "commitment-mismatch",
           me="carol")
    env, _, _, _ = build(honest, "garbage_entry",
                         extra=lambda es: [(u, det("garbage " + str(u), len(w)))
                                           if u == uids["bob"] else (u, w) for u, w in es])
    reject("entry_does_not_decrypt_signed", env, "unwrap")
    env, _, _, _ = build([(n, u, ck[:16]) for n, u in recips], "short_key")
    reject("entry_wraps_16_bytes_signed", env, "unwrap")
    env, _, _, _ = build(honest, "author_entry",
                         extra=lambda es: sorted(es + [(au, es[0][1])]))
    reject("author_among_recipients_signed", env, "author-is-recipient")
    env, _, _, _ = build(honest, "unsorted", extra=lambda es: list(reversed(es)))
    reject("entries_not_increasing_signed", env, "entries-not-increasing")
    env, _, _, _ = build(honest, "dup", extra=lambda es: [es[0], es[0]])
    reject("entries_duplicated_signed", env, "entries-not-increasing")
    env, _, _, _ = build(honest, "zero_key_id", kid=0)
    reject("key_id_zero_signed", env, "zero-key-id")
    reject("trailing_byte", good + b"\x01", "trailing-bytes")
    reject("truncated_by_one", good[:-1], "truncated")
    reject("recipient_count_zero", good[:76] + u16hex(0) + good[78:], "entry-count")
    reject("recipient_count_100", good[:76] + u16hex(100) + good[78:], "entry-count")
    reject("wrapped_length_255", good[:86] + u16hex(255) + good[88:], "wrapped-key-length")
    reject("signature_length_255", good_signed + u16hex(255) + bytes(255),
           "signature-length")
    sig20 = pss_sign_fixed_salt(alice, SENDER_KEY_CONTEXT + u64hex(sid) + u64hex(au)
                                + good_signed, det("mpk2 short salt", 20))
    reject("pss_salt_of_20_bytes", signed_with_sig(good_signed, sig20), "bad-signature")
    reject("old_mpe1_magic", b"MPE1" + good[4:], "unknown-kind")
    # Against a key already held: another signing key for the same key id...
    env, _, _, _ = build(honest, "other_signing_key", spk_=ed_public(det("other ed", 32)),
                         commit_=commitment(sid, au, key_id, iteration, ck,
                                            ed_public(det("other ed", 32))))
    reject("known_key_id_with_another_signing_key_signed", env, "conflicting-sender-key",
           known=ours_at_5)
    # ...and a chain that does not derive from the receiver's (ours at 5 leads to ck7,
    # the envelope carries ck at 7): equivocation across joiners, for the outsider too.
    assert ck7 != ck
    reject("known_key_id_with_a_chain_not_derived_from_ours_signed", good,
           "conflicting-sender-key", known=ours_at_5)
    out.write()


def gen_e2e_mpm2(uids, sid):
    au = uids["alice"]
    key_id = 0x5eed_0001
    seed = det("mpm2 signing seed", 32)
    spk = ed_public(seed)
    ck0 = det("mpm2 chain key", 32)
    out = Out("e2e_mpm2.txt", """
Messages (MPM2): "MPM2" || key id (4) || iteration i (4) || sent_ms (8, signed) ||
AES-256-GCM(aes_key_i, nonce_i, aad, text) with its 16-byte tag || Ed25519 signature
(64) by the key id's signing key over "mpchat v2 message sig" || sid || author uid ||
every byte before it; aad = "mpchat v2 message" || sid || author uid || bytes 0..20.
chain_key is CK_i (the sender's chain at i), signing_seed the author's Ed25519 seed.
Sealing the same inputs gives exactly `envelope` (GCM and Ed25519 are deterministic).
A receiver whose chain is at receiver_position with receiver_chain_key opens it to
text_text, with `arrival` in-order, or missing-N after a gap of N.""")
    cases = [("hello_at_0", 0, 1_767_225_600_000, b"hello", 0),
             ("hundred_bytes_at_7", 7, 1_767_225_600_001,
              (b"0123456789" * 10), 7),
             ("utf8_and_newline_after_a_gap_of_3", 12, -1,
              "h\u00e9llo \u2713\nsecond line \\ backslash".encode(), 9),
             ("longest_text", 3, 0, det("mpm2 longest", (E2E_MAX_ENVELOPE - 100) // 2)
              .hex().encode()[:E2E_MAX_ENVELOPE - 100], 3)]
    for name, i, sent, text, pos in cases:
        ck_i = chain_advance(ck0, i)
        env, key, nn, aad = mpm2_seal(sid, au, key_id, i, sent, ck_i, seed, text)
        assert len(env) == len(text) + 100 and len(env) <= E2E_MAX_ENVELOPE
        rck = chain_advance(ck0, pos)
        assert open_mpm2(env, sid, au, key_id, spk, rck, pos) == (text, i)
        arrival = "in-order" if pos == i else f"missing-{i - pos}"
        out.block("mpm2", name, [
            ("sid", u64hex(sid)), ("author_uid", u64hex(au)), ("key_id", u32b(key_id)),
            ("iteration", u32b(i)), ("sent_ms", i64b(sent)), ("chain_key", ck_i),
            ("signing_seed", seed), ("signing_public", spk), ("text_text", escape(text.decode())),
            ("seed", chain_seed(ck_i)), ("aes_key", key), ("nonce", nn), ("aad", aad),
            ("envelope", env), ("receiver_chain_key", rck),
            ("receiver_position", u32b(pos)), ("arrival", arrival)])
    out.write()

    out = Out("fail_e2e_mpm2.txt", """
Messages a receiver must refuse, for the reason in expect. The receiver holds key_id
with signing_public, its chain at receiver_position (receiver_chain_key, no skipped
keys), and reads in session sid from author_uid. good_envelope (with good_sid,
good_author_uid and the receiver at good_receiver_position / good_receiver_chain_key)
is the valid message each was derived from. "resigned" vectors carry a valid
signature by the right key over their defect, so only a later check can catch them.""")
    i, sent, text = 5, 1_767_225_600_005, b"attack at dawn"
    ck5 = chain_advance(ck0, i)
    good, _, _, _ = mpm2_seal(sid, au, key_id, i, sent, ck5, seed, text)

    def reject(name, env, expect, pos=i, s=sid, a=au):
        rck = chain_advance(ck0, pos)
        expect_e2e_reject(lambda: open_mpm2(env, s, a, key_id, spk, rck, pos), expect, name)
        assert open_mpm2(good, sid, au, key_id, spk, ck5, i)[0] == text
        out.block("mpm2_reject", name, [
            ("sid", u64hex(s)), ("author_uid", u64hex(a)), ("key_id", u32b(key_id)),
            ("signing_public", spk), ("receiver_chain_key", rck),
            ("receiver_position", u32b(pos)), ("expect", expect), ("envelope", env),
            ("good_sid", u64hex(sid)), ("good_author_uid", u64hex(au)),
            ("good_receiver_chain_key", ck5), ("good_receiver_position", u32b(i)),
            ("good_envelope", good)])

    body = good[:-64]
    reject("ciphertext_bit", flip_bit(good, 25, 0x04), "bad-signature")
    reject("ciphertext_bit_resigned", mpm2_resign(flip_bit(body, 25, 0x04), sid, au, seed),
           "cannot-open")
    reject("tag_bit_resigned", mpm2_resign(flip_bit(body, len(body) - 1, 0x80), sid, au,
                                           seed), "cannot-open")
    reject("sent_ms_bit_resigned", mpm2_resign(flip_bit(body, 19, 0x01), sid, au, seed),
           "cannot-open")
    reject("signature_bit", flip_bit(good, len(good) - 1, 0x40), "bad-signature")
    reject("iteration_bit", flip_bit(good, 11, 0x02), "bad-signature")
    reject("signed_by_another_signing_key", mpm2_resign(body, sid, au, det("other", 32)),
           "bad-signature")
    reject("moved_to_another_session", good, "bad-signature", s=sid ^ 0x100)
    reject("attributed_to_another_author", good, "bad-signature", a=uids["bob"])
    reject("sealed_for_another_session_resigned_for_this_one",
           mpm2_resign(mpm2_seal(sid ^ 1, au, key_id, i, sent, ck5, seed, text)[0][:-64],
                       sid, au, seed), "cannot-open")
    reject("trailing_byte", good + b"\x00", "bad-signature")
    reject("unknown_key_id_resigned",
           mpm2_resign(body[:4] + u32b(key_id + 1) + body[8:], sid, au, seed),
           "no-sender-key")
    reject("key_id_zero", body[:4] + bytes(4) + good[8:], "zero-key-id")
    reject("replayed_after_it_was_read", good, "old-or-replayed", pos=i + 1)
    reject("older_iteration", good, "old-or-replayed", pos=i + 40)
    far = i + E2E_FORWARD_BOUND + 1
    env, _, _, _ = mpm2_seal(sid, au, key_id, far, sent, chain_advance(ck0, far), seed, text)
    reject("too_far_ahead_by_2001", env, "too-far-ahead")
    env, _, _, _ = mpm2_seal(sid, au, key_id, i, sent, ck5, seed, b"")
    reject("empty_text_signed", env, "ciphertext-too-short")
    env, _, _, _ = mpm2_seal(sid, au, key_id, i, sent, ck5, seed, b"\xff\xfe bad utf-8")
    reject("text_not_utf8_resigned", env, "not-utf8")
    reject("cut_to_100_bytes", good[:100], "ciphertext-too-short")
    reject("cut_inside_the_signature", good[:19 + 64], "truncated")
    reject("cut_inside_the_header", good[:12], "truncated")
    reject("old_mpe1_magic", b"MPE1" + good[4:], "unknown-kind")
    reject("unknown_magic_mpm3", b"MPM3" + good[4:], "unknown-kind")
    big, _, _, _ = mpm2_seal(sid, au, key_id, i, sent, ck5, seed,
                             b"x" * (E2E_MAX_ENVELOPE - 100 + 1))
    reject("one_byte_over_the_relay_limit", big, "too-large")
    out.write()


def main():
    self_check()
    key = load_or_create_key()
    gen_aead12()
    gen_frames(key)
    gen_rekey()
    gen_login(key)
    gen_fail_frames()
    gen_rsa(key)
    gen_e2e(key)
    # Remove stale .txt vector files from earlier runs of this script.
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".txt") and name not in WRITTEN:
            print("note: " + name + " was not written by this run", file=sys.stderr)
    print(f"cryptography {cryptography.__version__}: wrote {len(WRITTEN)} files",
          file=sys.stderr)


if __name__ == "__main__":
    main()
