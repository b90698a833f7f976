"""CRAM-MD5 (RFC 2195) from Dovecot's stored secret, never from the cleartext password.

Dovecot's `{CRAM-MD5}` secret is 64 hex digits: the HMAC-MD5 outer, then inner, MD5 state after
the pad block, each word little-endian. From it alone a server computes HMAC-MD5(password,
challenge) by resuming both MD5s, which hashlib cannot do; `md5_resume` is a pure-Python MD5
(RFC 1321) for that. Three compressions per check: cheap enough for the reactor thread.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

MD5State = tuple[int, int, int, int]

_MASK = 0xFFFFFFFF
_MD5_IV: MD5State = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_K = tuple(int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64))
_MD5_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4


def _md5_compress(state: MD5State, block: bytes) -> MD5State:
    """One MD5 compression of a 64-byte block (RFC 1321); hashlib cannot resume a saved state."""
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_K[i] + x[g]) & _MASK
        s = _MD5_S[i]
        a, d, c = d, c, b
        b = (b + (((f << s) | (f >> (32 - s))) & _MASK)) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def md5_resume(state: MD5State, data: bytes, done: int) -> bytes:
    """Finish an MD5 whose first `done` bytes (a multiple of 64) are already in `state`."""
    total = done + len(data)
    msg = (
        data + b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", (total * 8) & (2**64 - 1))
    )
    for i in range(0, len(msg), 64):
        state = _md5_compress(state, msg[i : i + 64])
    return struct.pack("<4I", *state)


def cram_md5_secret(password: str | bytes) -> str:
    """Dovecot's CRAM-MD5 secret: hex of the outer, then inner, HMAC-MD5 state after the pads."""
    key = password if isinstance(password, bytes) else password.encode("utf-8")
    if len(key) > 64:
        key = hashlib.md5(key).digest()
    key = key.ljust(64, b"\0")
    inner = _md5_compress(_MD5_IV, bytes(k ^ 0x36 for k in key))
    outer = _md5_compress(_MD5_IV, bytes(k ^ 0x5C for k in key))
    return struct.pack("<8I", *outer, *inner).hex()


def cram_md5_digest(secret: str, challenge: bytes) -> str:
    """HMAC-MD5(password, challenge) as lower-case hex, from the secret alone."""
    words = struct.unpack("<8I", bytes.fromhex(secret))
    outer, inner = words[:4], words[4:]
    inner_digest = md5_resume(inner, challenge, 64)
    return md5_resume(outer, inner_digest, 64).hex()


def verify_cram_md5(secret: str, challenge: bytes, response: bytes | str) -> bool:
    """Whether a client's CRAM-MD5 hex digest answers challenge for this secret (constant time)."""
    given = response.decode("ascii", "replace") if isinstance(response, bytes) else response
    expected = cram_md5_digest(secret, challenge)
    return hmac.compare_digest(expected.encode(), given.lower().encode("utf-8", "replace"))


__all__ = ["cram_md5_digest", "cram_md5_secret", "md5_resume", "verify_cram_md5"]
