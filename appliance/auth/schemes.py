"""Password schemes of Dovecot's passwd-file: make and check `{SCHEME}hash` strings.

BLF-CRYPT (bcrypt `$2a$`/`$2b$`/`$2y$`), SHA512-CRYPT (`$6$`, SHA-crypt implemented here because
the crypt module leaves Python in 3.13), ARGON2ID (argon2-cffi) and CRAM-MD5 (see cram.py). A
hash without a `{SCHEME}` prefix is recognised by its `$` prefix, as Dovecot's CRYPT does.
Hashing and verifying block on purpose (about 0.1 to 0.25 s): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import argon2
import bcrypt

from appliance.auth.cram import cram_md5_secret

SCHEMES = ("BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID", "CRAM-MD5")
# what `mailappliance user --scheme` may store as the main hash (CRAM-MD5 is too weak for that)
STRONG_SCHEMES = ("BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID")

BCRYPT_ROUNDS = 12  # about 0.25 s per check on one core
BCRYPT_MAX_BYTES = 72  # bcrypt ignores the rest of a longer password
# glibc's default is 5000; ours is stronger while one check stays near 0.1 s (the loop is
# Python, holding the GIL between hashlib calls)
SHA512_ROUNDS = 100_000
SHA512_ROUNDS_DEFAULT = 5000  # meaning of a hash without rounds=
SHA512_ROUNDS_MIN = 1000
SHA512_ROUNDS_MAX = 999_999_999
# parallelism 1: libsodium, Dovecot's argon2 backend, computes a single lane
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 65536
ARGON2_PARALLELISM = 1

_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
_SHA512_RE = re.compile(r"^\$6\$(?:rounds=(\d{1,9})\$)?([^$:\s]{0,16})\$([./0-9A-Za-z]{86})$")
_CRAM_RE = re.compile(r"^[0-9a-fA-F]{64}$")


# --------------------------------------------------------------------------- SHA512-CRYPT


def _crypt64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(_CRYPT64[value & 0x3F])
        value >>= 6
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha512_crypt(password: bytes, salt: str, rounds: int | None = None) -> str:
    """SHA-crypt with SHA-512 (Ulrich Drepper's spec, glibc `$6$`); `rounds=` only if given.

    The salt is cut to 16 characters and rounds are clamped to 1000..999999999, as glibc does.
    """
    salt_b = salt.encode("utf-8")[:16]
    custom = rounds is not None
    n = SHA512_ROUNDS_DEFAULT if rounds is None else rounds
    n = min(max(n, SHA512_ROUNDS_MIN), SHA512_ROUNDS_MAX)
    plen = len(password)

    b = hashlib.sha512(password + salt_b + password).digest()
    a = hashlib.sha512(password + salt_b)
    a.update(_repeat(b, plen))
    bits = plen
    while bits:
        a.update(b if bits & 1 else password)
        bits >>= 1
    digest_a = a.digest()

    p_seq = _repeat(hashlib.sha512(password * plen).digest(), plen)
    s_seq = _repeat(hashlib.sha512(salt_b * (16 + digest_a[0])).digest(), len(salt_b))

    c = digest_a
    sha512 = hashlib.sha512
    for i in range(n):
        h = sha512(p_seq if i & 1 else c)
        if i % 3:
            h.update(s_seq)
        if i % 7:
            h.update(p_seq)
        h.update(c if i & 1 else p_seq)
        c = h.digest()

    out = []
    for i in range(21):
        x, y, z = i, i + 21, i + 42
        # the spec's byte order: the three positions rotate with i
        order = ((x, y, z), (y, z, x), (z, x, y))[i % 3]
        out.append(_crypt64((c[order[0]] << 16) | (c[order[1]] << 8) | c[order[2]], 4))
    out.append(_crypt64(c[63], 2))
    prefix = f"$6$rounds={n}$" if custom else "$6$"
    return prefix + salt_b.decode("utf-8", "replace") + "$" + "".join(out)


# --------------------------------------------------------------------------- hash / verify


def _to_bytes(password: str | bytes) -> bytes:
    return password if isinstance(password, bytes) else password.encode("utf-8")


def _salt(length: int = 16) -> str:
    return "".join(secrets.choice(_CRYPT64) for _ in range(length))


def hash_password(
    password: str | bytes, scheme: str = "BLF-CRYPT", *, rounds: int | None = None
) -> str:
    """A new `{SCHEME}hash` for password; rounds overrides the cost of BLF-CRYPT/SHA512-CRYPT.

    Raises ValueError for an unknown scheme or a BLF-CRYPT password over 72 bytes (bcrypt would
    silently ignore the rest).
    """
    pw = _to_bytes(password)
    scheme = scheme.upper()
    if scheme == "BLF-CRYPT":
        if len(pw) > BCRYPT_MAX_BYTES:
            raise ValueError(
                "BLF-CRYPT uses only the first 72 bytes of a password; "
                "use ARGON2ID or SHA512-CRYPT for longer passwords"
            )
        cost = BCRYPT_ROUNDS if rounds is None else rounds
        return "{BLF-CRYPT}" + bcrypt.hashpw(pw, bcrypt.gensalt(cost)).decode("ascii")
    if scheme == "SHA512-CRYPT":
        return "{SHA512-CRYPT}" + sha512_crypt(
            pw, _salt(), SHA512_ROUNDS if rounds is None else rounds
        )
    if scheme == "ARGON2ID":
        hasher = argon2.PasswordHasher(
            time_cost=ARGON2_TIME_COST,
            memory_cost=ARGON2_MEMORY_KIB,
            parallelism=ARGON2_PARALLELISM,
            type=argon2.Type.ID,
        )
        return "{ARGON2ID}" + hasher.hash(pw)
    if scheme == "CRAM-MD5":
        return "{CRAM-MD5}" + cram_md5_secret(pw)
    raise ValueError(f"unknown password scheme {scheme!r} (known: {', '.join(SCHEMES)})")


def split_scheme(stored: str) -> tuple[str, str]:
    """'{SCHEME}hash' -> (SCHEME, hash), recognising prefix-less crypt hashes; ValueError if bad."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end < 0:
            raise ValueError("unterminated {SCHEME} prefix")
        scheme, value = stored[1:end].upper(), stored[end + 1 :]
        if scheme == "HMAC-MD5":  # Dovecot's other name for the same secret
            scheme = "CRAM-MD5"
    elif stored.startswith("$2"):
        scheme, value = "BLF-CRYPT", stored
    elif stored.startswith("$6$"):
        scheme, value = "SHA512-CRYPT", stored
    elif stored.startswith("$argon2id$"):
        scheme, value = "ARGON2ID", stored
    else:
        raise ValueError("no {SCHEME} prefix and not a recognisable crypt hash")
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported password scheme {{{scheme}}} (supported: {', '.join(SCHEMES)})"
        )
    _check_format(scheme, value)
    return scheme, value


def _check_format(scheme: str, value: str) -> None:
    ok = True
    if scheme == "BLF-CRYPT":
        ok = bool(_BCRYPT_RE.match(value))
    elif scheme == "SHA512-CRYPT":
        ok = bool(_SHA512_RE.match(value))
    elif scheme == "CRAM-MD5":
        ok = bool(_CRAM_RE.match(value))
    elif scheme == "ARGON2ID":
        try:
            ok = argon2.extract_parameters(value).type is argon2.Type.ID
        except argon2.exceptions.InvalidHashError:
            ok = False
    if not ok:
        raise ValueError(f"malformed {scheme} hash")


def verify_password(password: str | bytes, stored: str) -> bool:
    """Whether password matches a stored `{SCHEME}hash`; False for a malformed hash.

    Slow on purpose (bcrypt, SHA-crypt, argon2): call it from a thread, never on the reactor.
    """
    try:
        scheme, value = split_scheme(stored)
    except ValueError:
        return False
    pw = _to_bytes(password)
    if scheme == "BLF-CRYPT":
        try:
            # bcrypt 5 refuses over-long input; truncation is what every other bcrypt does
            return bcrypt.checkpw(pw[:BCRYPT_MAX_BYTES], value.encode("ascii"))
        except ValueError:
            return False
    if scheme == "SHA512-CRYPT":
        m = _SHA512_RE.match(value)
        if m is None:
            return False
        rounds = int(m.group(1)) if m.group(1) is not None else None
        computed = sha512_crypt(pw, m.group(2), rounds)
        return hmac.compare_digest(computed.encode(), value.encode())
    if scheme == "ARGON2ID":
        try:
            return argon2.PasswordHasher().verify(value, pw)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    # CRAM-MD5 as the main password: a cleartext-equivalent, compared as such
    return hmac.compare_digest(cram_md5_secret(pw).encode(), value.lower().encode())


__all__ = [
    "SCHEMES",
    "STRONG_SCHEMES",
    "hash_password",
    "sha512_crypt",
    "split_scheme",
    "verify_password",
]
