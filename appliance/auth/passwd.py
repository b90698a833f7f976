"""Dovecot passwd-file users: password schemes, the cached user table, the cred checker.

File format (Dovecot's passwd-file), one user per line, `#` comments and blank lines allowed::

    user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra_fields]

Schemes: BLF-CRYPT (bcrypt `$2a$`/`$2b$`/`$2y$`), SHA512-CRYPT (`$6$`, SHA-crypt implemented
here because the crypt module leaves Python in 3.13), ARGON2ID (argon2-cffi), CRAM-MD5
(Dovecot's 64 hex digits: the HMAC-MD5 outer then inner MD5 state after the pad block, each
word little-endian). A hash without a `{SCHEME}` prefix is recognised by its `$` prefix.
The extra field `cram_md5={CRAM-MD5}hex` gives a user a CRAM-MD5 secret besides a strong main
hash; CRAM-MD5 is accepted only for users who have one. An empty password field makes a user
who has a mailbox but cannot log in.

`PasswdFile` keeps the parsed table in memory and re-reads the file when its (mtime_ns, size,
inode) changes, stat()ing at most once a second; a file that fails to parse leaves the previous
table in place. Admin edits (`add`, `set_password`, `delete`) are for the `mailappliance user`
command: they block while hashing and must never run on the reactor.
`PasswdFileChecker` is the twisted.cred checker: password verification runs in a thread pool.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import math
import os
import re
import secrets
import stat
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from appliance.errors import ApplianceError

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
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ADDRESS_RE = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$")

# Checked for unknown users when most users have BLF-CRYPT, so that they cost what a real
# user costs; the password behind it was random and thrown away. Cost = BCRYPT_ROUNDS.
_DUMMY_HASH = "{BLF-CRYPT}$2b$12$YKpAenL8eq7gb5W3jaI4le4y1zowP4yt2BWArueieHr/nVtSjeXlK"


class PasswdFileError(ApplianceError):
    """A passwd file that cannot be used: every problem as `file:line: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


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


# --------------------------------------------------------------------------- CRAM-MD5

_MASK = 0xFFFFFFFF
_MD5_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_K = tuple(int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64))
_MD5_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4


def _md5_compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
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


def md5_resume(state: tuple[int, int, int, int], data: bytes, done: int) -> bytes:
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
    key = _to_bytes(password)
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


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class PasswdEntry:
    """One parsed user line."""

    address: str  # lower-case user@domain
    password: str  # "{SCHEME}hash", or "" (mailbox only, no login)
    cram_md5: str | None  # 64 hex digits, or None
    line: int


def valid_address(address: str) -> bool:
    """Whether address is a plain ASCII user@domain.tld (already lower-cased)."""
    return len(address) <= 254 and bool(_ADDRESS_RE.match(address))


def _parse_line(line: str) -> tuple[str, str, str | None, list[str]]:
    """(address, stored, cram secret, fields) of a user line; ValueError with a message."""
    fields = line.split(":", 7)
    if len(fields) < 2:
        raise ValueError("expected user@domain:{SCHEME}hash")
    address = fields[0].lower()
    if not valid_address(address):
        raise ValueError(f"expected an address like user@example.com, got {fields[0][:80]!r}")
    stored = fields[1]
    cram = None
    if stored:
        scheme, value = split_scheme(stored)
        stored = "{" + scheme + "}" + value
        if scheme == "CRAM-MD5":
            cram = value.lower()
    extras = fields[7].split() if len(fields) > 7 else []
    for extra in extras:
        if extra.startswith("cram_md5="):
            try:
                scheme, value = split_scheme(extra[len("cram_md5=") :])
            except ValueError as e:
                raise ValueError(f"cram_md5: {e}") from None
            if scheme != "CRAM-MD5":
                raise ValueError("cram_md5: expected {CRAM-MD5} and 64 hex digits")
            cram = value.lower()
    return address, stored, cram, fields


def parse_passwd(data: bytes, label: str) -> tuple[dict[str, PasswdEntry], list[str]]:
    """Users and problems (`label:line: message`) of a passwd file's bytes."""
    users: dict[str, PasswdEntry] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{label}:{lineno}: not UTF-8")
            continue
        if not line or line.startswith("#"):
            continue
        try:
            address, stored, cram, _ = _parse_line(line)
        except ValueError as e:
            problems.append(f"{label}:{lineno}: {e}")
            continue
        if address in users:
            first = users[address].line
            problems.append(f"{label}:{lineno}: {address} already defined on line {first}")
            continue
        users[address] = PasswdEntry(address, stored, cram, lineno)
    return users, problems


class PasswdFile:
    """The users of one passwd file, re-read when it changes; implements UserDirectory."""

    log = Logger()
    STAT_INTERVAL = 1.0  # seconds between stat() calls on the lookup path

    def __init__(
        self,
        path: Path,
        *,
        reactor: Any = None,
        threadpool: Any = None,
        default_domain: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._reactor = reactor
        self._threadpool = threadpool
        self.default_domain = default_domain.lower().rstrip(".") if default_domain else None
        self._users: dict[str, PasswdEntry] = {}
        self._dummy_scheme = "BLF-CRYPT"
        self._dummies: dict[str, str] = {"BLF-CRYPT": _DUMMY_HASH}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        self._last_report: str | None = None
        self._load()

    # ------------------------------------------------------------------ plumbing

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            # imported late so that the admin command never installs a reactor
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def threadpool(self) -> Any:
        if self._threadpool is None:
            self._threadpool = self.reactor.getThreadPool()
        return self._threadpool

    def defer_to_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run f(*args) in the thread pool; the result fires on the reactor thread."""
        return deferToThreadPool(self.reactor, self.threadpool, f, *args)

    # ------------------------------------------------------------------ reading

    def reload_if_changed(self) -> None:
        """Re-read the file if its (mtime_ns, size, inode) changed; stat at most once a second."""
        now = self.reactor.seconds()
        if self._checked_at is not None and now - self._checked_at < self.STAT_INTERVAL:
            return
        self._checked_at = now
        self._load()

    def _load(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature == self._signature and not force:
                return
            data = self.path.read_bytes()
        except OSError as e:
            # not remembered as the file's state: retried each second, reported once
            reason = "no such file" if isinstance(e, FileNotFoundError) else e.strerror
            self._report(f"{self.path}: {reason}")
            return
        # remembered even when broken, so a bad file is reported once, not on every lookup
        self._signature = signature
        users, problems = parse_passwd(data, str(self.path))
        if problems:
            for problem in problems:
                self._report(problem, repeat=True)
            return
        self._last_report = None
        self._users = users
        schemes = Counter(
            e.password[1 : e.password.find("}")] for e in users.values() if e.password
        )
        self._dummy_scheme = schemes.most_common(1)[0][0] if schemes else "BLF-CRYPT"
        self.log.info("{path}: {count} users", path=str(self.path), count=len(users))

    def _report(self, problem: str, repeat: bool = False) -> None:
        if problem == self._last_report and not repeat:
            return
        self._last_report = problem
        self.log.warn(
            "{reason}; keeping the previous {count} users",
            reason=problem,
            count=len(self._users),
        )

    def normalize(self, name: str) -> str | None:
        """The lower-cased user@domain for a login or address, or None if it cannot be one."""
        address = name.lower()
        if "@" not in address and self.default_domain:
            address = f"{address}@{self.default_domain}"
        return address if valid_address(address) else None

    def entry(self, name: str) -> PasswdEntry | None:
        """The user's entry (after a cheap reload check), or None."""
        self.reload_if_changed()
        address = self.normalize(name)
        return self._users.get(address) if address is not None else None

    def exists(self, address: str) -> Deferred[bool]:
        return succeed(self.entry(address) is not None)

    def users(self) -> list[str]:
        self.reload_if_changed()
        return sorted(self._users)

    def dummy_hash(self) -> str:
        """A hash of a thrown-away password in the scheme most users have, made with our
        default costs, so that checking an unknown user costs about what a real one does.

        Made on first use, in the worker thread that needs it; a race only makes two.
        """
        scheme = self._dummy_scheme
        dummy = self._dummies.get(scheme)
        if dummy is None:
            dummy = self._dummies[scheme] = hash_password(secrets.token_hex(16), scheme)
        return dummy

    def has_cram_md5_users(self) -> bool:
        """Whether anyone can use CRAM-MD5 (decides whether to advertise it)."""
        self.reload_if_changed()
        return any(e.cram_md5 is not None for e in self._users.values())

    # ------------------------------------------------------------------ admin edits

    def read_users(self) -> list[str]:
        """The users as the file stands now; PasswdFileError listing every problem in it."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise PasswdFileError([f"{self.path}: cannot read: {e.strerror}"]) from None
        users, problems = parse_passwd(data, str(self.path))
        if problems:
            raise PasswdFileError(problems)
        return sorted(users)

    def add(
        self,
        address: str,
        password: str,
        scheme: str = "BLF-CRYPT",
        cram_md5: bool = False,
    ) -> None:
        """Append a user; PasswdFileError if the address is taken or invalid."""
        address = self._admin_address(address)
        stored = hash_password(password, scheme)
        cram = cram_md5_secret(password) if cram_md5 else None

        def change(lines: list[str], index: dict[str, int]) -> None:
            if address in index:
                raise PasswdFileError([f"{self.path}: {address} already exists"])
            lines.append(_format_line([address, stored], cram))

        self._edit(change)

    def set_password(
        self,
        address: str,
        password: str,
        scheme: str = "BLF-CRYPT",
        cram_md5: bool | None = None,
    ) -> None:
        """Replace a user's password, keeping the other fields.

        cram_md5: True stores a CRAM-MD5 secret, False removes it, None renews it only if the
        user had one (an old secret would still accept the old password).
        """
        address = self._admin_address(address)
        stored = hash_password(password, scheme)
        secret = cram_md5_secret(password)

        def change(lines: list[str], index: dict[str, int]) -> None:
            if address not in index:
                raise PasswdFileError([f"{self.path}: no such user: {address}"])
            i = index[address]
            _, _, old_cram, fields = _parse_line(lines[i].strip())
            keep = cram_md5 if cram_md5 is not None else old_cram is not None
            fields[0] = address
            fields[1] = stored
            lines[i] = _format_line(fields, secret if keep else None)

        self._edit(change)

    def delete(self, address: str) -> None:
        """Remove a user; PasswdFileError if there is no such user."""
        address = self._admin_address(address)

        def change(lines: list[str], index: dict[str, int]) -> None:
            if address not in index:
                raise PasswdFileError([f"{self.path}: no such user: {address}"])
            del lines[index[address]]

        self._edit(change)

    def _admin_address(self, address: str) -> str:
        normalized = address.lower()
        if not valid_address(normalized):
            raise PasswdFileError([f"expected an address like user@example.com, got {address!r}"])
        return normalized

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # serialises concurrent admin commands; readers never need it (rename is atomic)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _edit(self, change: Callable[[list[str], dict[str, int]], None]) -> None:
        with self._locked():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            users, problems = parse_passwd(data, str(self.path))
            if problems:
                raise PasswdFileError([*problems, f"{self.path}: fix these lines first"])
            text = data.decode("utf-8")
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            index = {address: e.line - 1 for address, e in users.items()}
            change(lines, index)
            self._write("".join(line + "\n" for line in lines).encode("utf-8"))
        self._load(force=True)

    def _write(self, data: bytes) -> None:
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        # 0640 lets a mail group read it; anything looser is tightened to 0600
        mode = 0o640 if st is not None and stat.S_IMODE(st.st_mode) == 0o640 else 0o600
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, mode)
            if st is not None:
                try:
                    os.fchown(fd, st.st_uid, st.st_gid)
                except PermissionError:
                    pass  # not root: the file stays ours
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _format_line(fields: list[str], cram: str | None) -> str:
    """fields[0:2] are address and stored hash; extra fields keep all but our cram_md5."""
    fields = list(fields)
    extras = fields[7].split() if len(fields) > 7 else []
    extras = [e for e in extras if not e.startswith("cram_md5=")]
    if cram is not None:
        extras.append("cram_md5={CRAM-MD5}" + cram)
    if extras:
        fields = (fields + [""] * 8)[:7] + [" ".join(extras)]
    else:
        fields = fields[:7]
        while len(fields) > 2 and fields[-1] == "":
            fields.pop()
    return ":".join(fields)


# --------------------------------------------------------------------------- cred checker


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


@implementer(ICredentialsChecker)
class PasswdFileChecker:
    """twisted.cred checker over a PasswdFile: PLAIN/LOGIN passwords and CRAM-MD5 responses.

    The avatar id is the lower-cased address (str). Bad credentials fail with UnauthorizedLogin
    only after the same work a real check does, so timing does not tell who exists.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    log = Logger()

    def __init__(self, passwd: PasswdFile) -> None:
        self.passwd = passwd

    def supports_cram_md5(self, address: str) -> bool:
        entry = self.passwd.entry(address)
        return entry is not None and entry.cram_md5 is not None

    def cram_md5_available(self) -> bool:
        """Whether to advertise CRAM-MD5 at all: some user has a secret."""
        return self.passwd.has_cram_md5_users()

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:
        name = _text(getattr(credentials, "username", None))
        entry = self.passwd.entry(name) if name is not None else None
        challenge = getattr(credentials, "challenge", None)
        response = getattr(credentials, "response", None)
        if (
            IUsernameHashedPassword.providedBy(credentials)
            and isinstance(challenge, bytes)
            and isinstance(response, bytes)
        ):
            return self._check_cram(entry, challenge, response)
        if not IUsernamePassword.providedBy(credentials):
            # e.g. APOP: verifying it needs the cleartext password, which we do not keep
            return fail(UnauthorizedLogin("unsupported credentials"))
        password = credentials.password
        if not isinstance(password, str | bytes):
            return fail(UnauthorizedLogin("no password"))
        real = entry is not None and bool(entry.password)

        def check() -> bool:
            stored = entry.password if real and entry is not None else self.passwd.dummy_hash()
            return verify_password(password, stored)

        def done(ok: bool) -> str:
            if ok and real and entry is not None:
                return entry.address
            raise UnauthorizedLogin("bad credentials")

        return self.passwd.defer_to_thread(check).addCallback(done)

    def _check_cram(
        self, entry: PasswdEntry | None, challenge: bytes, response: bytes
    ) -> Deferred[str]:
        # cheap (three MD5 blocks), so it stays on the reactor; unknown users get the same work
        secret = entry.cram_md5 if entry is not None else None
        ok = verify_cram_md5(secret or _DUMMY_CRAM, challenge, response)
        if ok and secret is not None and entry is not None:
            return succeed(entry.address)
        return fail(UnauthorizedLogin("bad credentials"))


_DUMMY_CRAM = cram_md5_secret(secrets.token_bytes(16))

__all__ = [
    "SCHEMES",
    "STRONG_SCHEMES",
    "PasswdEntry",
    "PasswdFile",
    "PasswdFileChecker",
    "PasswdFileError",
    "cram_md5_digest",
    "cram_md5_secret",
    "hash_password",
    "sha512_crypt",
    "split_scheme",
    "verify_cram_md5",
    "verify_password",
]
