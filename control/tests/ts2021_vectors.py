#!/usr/bin/env python3
"""Independent reference for the ts2021 Noise handshake and record layer.

Written from the Noise specification (rev 34, pattern IK) and protocol.md §2.4–§2.5,
using Python's hashlib/hmac and the `cryptography` package — no code shared with the Rust
implementation. It prints the known-answer vectors that `noise::tests::known_answer`
embeds. Re-run after changing inputs:

    python3 control/tests/ts2021_vectors.py
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

RAW = serialization.Encoding.Raw


def priv(seed):
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def pub(k):
    return k.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


def dh(k, p):
    return k.exchange(X25519PublicKey.from_public_bytes(p))


def H(*parts):
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def HMAC(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def HKDF(ck, ikm):
    prk = HMAC(ck, ikm)
    o1 = HMAC(prk, b"\x01")
    o2 = HMAC(prk, o1 + b"\x02")
    return o1, o2


class Sym:
    def __init__(self, version, rs):
        self.h = H(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
        self.ck = self.h
        self.mix_hash(b"Tailscale Control Protocol v%d" % version)
        self.mix_hash(rs)
        self.k = None

    def mix_hash(self, d):
        self.h = H(self.h, d)

    def mix_key(self, ikm):
        self.ck, self.k = HKDF(self.ck, ikm)

    def enc(self, pt):
        ct = ChaCha20Poly1305(self.k).encrypt(b"\0" * 12, pt, self.h)
        self.mix_hash(ct)
        return ct


def record(key, counter, pt):
    # ts2021: nonce = 4 zero bytes || counter as big-endian uint64.
    nonce = b"\0" * 4 + struct.pack(">Q", counter)
    ct = ChaCha20Poly1305(key).encrypt(nonce, pt, b"")
    return bytes([4]) + struct.pack(">H", len(ct)) + ct


def main():
    version = 113
    machine, server, ce, se = priv(0x11), priv(0x22), priv(0x33), priv(0x44)

    # Initiator: -> e, es, s, ss
    s = Sym(version, pub(server))
    s.mix_hash(pub(ce))
    s.mix_key(dh(ce, pub(server)))
    enc_static = s.enc(pub(machine))
    s.mix_key(dh(machine, pub(server)))
    tag = s.enc(b"")
    init = struct.pack(">HBH", version, 1, 96) + pub(ce) + enc_static + tag

    # Responder: <- e, ee, se (computed on the same running state)
    s.mix_hash(pub(se))
    s.mix_key(dh(se, pub(ce)))
    s.mix_key(dh(se, pub(machine)))
    tag = s.enc(b"")
    resp = struct.pack(">BH", 2, 48) + pub(se) + tag
    c2s, s2c = HKDF(s.ck, b"")

    print("machine_private", (bytes([0x11]) * 32).hex())
    print("server_private ", (bytes([0x22]) * 32).hex())
    print("initiation     ", init.hex())
    print("response       ", resp.hex())
    print("handshake_hash ", s.h.hex())
    print("c2s_record0    ", record(c2s, 0, b"client hello").hex())
    print("c2s_record1    ", record(c2s, 1, b"second").hex())
    print("s2c_record0    ", record(s2c, 0, b"server hello").hex())
    print("s2c_record1    ", record(s2c, 1, b"").hex())


if __name__ == "__main__":
    main()
