"""Password schemes (SHA512-CRYPT, CRAM-MD5, BLF-CRYPT, ARGON2ID) and the passwd cred checker."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import argon2
import bcrypt
import pytest
import pytest_twisted
from twisted.cred.credentials import (
    CramMD5Credentials,
    IUsernameHashedPassword,
    UsernamePassword,
)
from twisted.cred.error import UnauthorizedLogin
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.auth import cram, passwd_checker, schemes
from appliance.auth.cram import cram_md5_digest, cram_md5_secret, md5_resume, verify_cram_md5
from appliance.auth.passwd import PasswdFile
from appliance.auth.passwd_checker import PasswdFileChecker
from appliance.auth.schemes import hash_password, sha512_crypt, verify_password
from tests.auth.test_passwd import (
    DOVECOT_CRAM_MD5,
    cheap_hashes,  # noqa: F401 (the autouse fixture: cheap hash costs)
    login,
    offline_file,
    warnings,  # noqa: F401 (the warnings fixture)
)

# Ulrich Drepper's SHA-crypt specification, SHA-512 test vectors: (salt spec, key, result)
SPEC_VECTORS = [
    (
        "saltstring",
        None,
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "saltstringsaltstring",
        10000,
        "Hello world!",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "toolongsaltstring",
        5000,
        "This is just a test",
        "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
    ),
    (
        "anotherlongsaltstring",
        1400,
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
    ),
    (
        "short",
        77777,
        "we have a short salt string but not a short password",
        "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0",
    ),
    (
        "asaltof16chars..",
        123456,
        "a short string",
        "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1",
    ),
    (
        "roundstoolow",
        10,
        "the minimum number is still observed",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
]

# a Dovecot-made bcrypt hash of "password" from postfixadmin's test suite ($2y$, cost 5)
DOVECOT_BLF_CRYPT = "{BLF-CRYPT}$2y$05$Nkx/QGy0PMR4CgQhfRDnROfMn4JmU8A2eVxROXTWeHlNnQMYs/Aaq"


# --------------------------------------------------------------------------- SHA512-CRYPT


@pytest.mark.parametrize(("salt", "rounds", "key", "expected"), SPEC_VECTORS)
def test_sha512_crypt_spec_vector_matches(
    salt: str, rounds: int | None, key: str, expected: str
) -> None:
    """Our SHA-crypt reproduces every SHA-512 vector of Drepper's specification."""
    assert sha512_crypt(key.encode(), salt, rounds) == expected


@pytest.mark.parametrize(
    ("password", "salt"),
    [
        ("secret", "abcdefgh"),
        ("p", "x"),
        ("pässwörd ü", "0123456789abcdef"),
        ("a" * 200, "longpw"),
        ("Hello world!", "saltstring"),
    ],
)
def test_sha512_crypt_openssl_cli_agrees(password: str, salt: str) -> None:
    """`openssl passwd -6 -salt SALT PASS` gives the same string as our implementation."""
    out = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, password],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode()
    assert sha512_crypt(password.encode(), salt) == out.strip()


def test_sha512_crypt_hash_password_rounds_recorded_true() -> None:
    """hash_password writes rounds= and a 16-character salt, and the hash verifies."""
    stored = hash_password("pw", "SHA512-CRYPT", rounds=5555)
    assert stored.startswith("{SHA512-CRYPT}$6$rounds=5555$")
    assert len(stored.split("$")[3]) == 16
    assert verify_password("pw", stored)


# --------------------------------------------------------------------------- CRAM-MD5


@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000])
def test_md5_resume_from_initial_state_equals_hashlib(length: int) -> None:
    """The pure-Python MD5 compression agrees with hashlib across padding boundaries."""
    data = (bytes(range(256)) * 4)[:length]
    assert md5_resume(cram._MD5_IV, data, 0) == hashlib.md5(data).digest()


@pytest.mark.parametrize(("password", "secret"), sorted(DOVECOT_CRAM_MD5.items()))
def test_cram_md5_secret_dovecot_vector_matches(password: str, secret: str) -> None:
    """cram_md5_secret equals what `doveadm pw -s CRAM-MD5` printed for the same password."""
    assert cram_md5_secret(password) == secret


@pytest.mark.parametrize(
    "password", ["password", "", "tanstaaftanstaaf", "ü" * 40, "k" * 64, "long" * 50]
)
def test_cram_md5_digest_from_secret_equals_hmac(password: str) -> None:
    """The response computed from the saved MD5 states equals HMAC-MD5(password, challenge)."""
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    expected = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    assert cram_md5_digest(cram_md5_secret(password), challenge) == expected


def test_verify_cram_md5_rfc2195_example_true() -> None:
    """RFC 2195's example exchange (tim / tanstaaftanstaaf) verifies; a changed digest does not."""
    secret = cram_md5_secret("tanstaaftanstaaf")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert verify_cram_md5(secret, challenge, b"b913a602c7eda7a495b4e6e7334d3890")
    assert verify_cram_md5(secret, challenge, b"B913A602C7EDA7A495B4E6E7334D3890")
    assert not verify_cram_md5(secret, challenge, b"b913a602c7eda7a495b4e6e7334d3891")


# --------------------------------------------------------------------------- verify_password


@pytest.mark.parametrize("scheme", ["BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID", "CRAM-MD5"])
def test_verify_password_each_scheme_right_true_wrong_false(scheme: str) -> None:
    """Every scheme verifies its own password and refuses another one."""
    stored = hash_password("correct horse", scheme)
    assert stored.startswith("{" + scheme + "}")
    assert verify_password("correct horse", stored)
    assert verify_password(b"correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert not verify_password("", stored)


def test_verify_password_dovecot_blf_crypt_2y_true() -> None:
    """A Dovecot `$2y$` bcrypt hash verifies."""
    assert verify_password("password", DOVECOT_BLF_CRYPT)
    assert not verify_password("Password", DOVECOT_BLF_CRYPT)


def test_verify_password_prefixless_crypt_hash_recognised() -> None:
    """A hash without {SCHEME} is recognised by its $ prefix, as Dovecot's CRYPT does."""
    stored = hash_password("pw", "SHA512-CRYPT").removeprefix("{SHA512-CRYPT}")
    assert verify_password("pw", stored)
    assert verify_password("password", DOVECOT_BLF_CRYPT.removeprefix("{BLF-CRYPT}"))


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "{PLAIN}pw",
        "{BLF-CRYPT}$2b$04$short",
        "{SHA512-CRYPT}$6$salt$tooshort",
        "{ARGON2ID}$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "{CRAM-MD5}nothex",
        "{BLF-CRYPT",
        "cleartext",
    ],
)
def test_verify_password_malformed_hash_false(stored: str) -> None:
    """A malformed or unsupported stored hash never verifies and never raises."""
    assert verify_password("pw", stored) is False


def test_hash_password_bcrypt_verifies_with_library() -> None:
    """Our default BLF-CRYPT hash has the configured cost and bcrypt.checkpw accepts it."""
    stored = hash_password("s3cret", rounds=schemes.BCRYPT_ROUNDS)
    raw = stored.removeprefix("{BLF-CRYPT}").encode()
    assert raw.startswith(b"$2b$04$")
    assert bcrypt.checkpw(b"s3cret", raw)
    assert not bcrypt.checkpw(b"s3creT", raw)


def test_hash_password_argon2_verifies_with_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our ARGON2ID hash (real parameters: t=3, 64 MiB, one lane) verifies with argon2-cffi."""
    monkeypatch.setattr(schemes, "ARGON2_MEMORY_KIB", 65536)
    monkeypatch.setattr(schemes, "ARGON2_TIME_COST", 3)
    stored = hash_password("s3cret", "ARGON2ID")
    raw = stored.removeprefix("{ARGON2ID}")
    assert raw.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert argon2.PasswordHasher().verify(raw, "s3cret")
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        argon2.PasswordHasher().verify(raw, "s3creT")


def test_hash_password_bcrypt_over_72_bytes_refused() -> None:
    """BLF-CRYPT refuses a password bcrypt would silently cut, and says what to use."""
    with pytest.raises(ValueError, match="ARGON2ID"):
        hash_password("x" * 73)


def test_hash_password_unknown_scheme_refused() -> None:
    """An unknown scheme is a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="BLF-CRYPT"):
        hash_password("pw", "MD5-CRYPT")


def test_dummy_hash_default_cost_matches() -> None:
    """The hash checked for unknown users costs what a default BLF-CRYPT user costs."""
    cost = int(passwd_checker._DUMMY_HASH.split("$")[2])
    assert cost == 12
    assert schemes.split_scheme(passwd_checker._DUMMY_HASH)[0] == "BLF-CRYPT"


# --------------------------------------------------------------------------- checker


@implementer(IUsernameHashedPassword)
class ApopLike:
    """Hashed credentials without challenge/response bytes (like POP3 APOP)."""

    username = b"user1@163.com"

    def checkPassword(self, password: bytes) -> bool:
        return True


def cram_credentials(username: bytes, password: str, challenge: bytes) -> CramMD5Credentials:
    creds = CramMD5Credentials(b"mail.163.com")
    creds.challenge = challenge
    creds.setResponse(
        username + b" " + hmac.new(password.encode(), challenge, hashlib.md5).hexdigest().encode()
    )
    return creds


def test_checker_cram_md5_response_verified(tmp_path: Path) -> None:
    """A CRAM-MD5 response is checked against the stored secret; users without one fail."""
    path = tmp_path / "passwd"
    path.write_text(
        f"user1@163.com:{hash_password('pw1')}::::::cram_md5={{CRAM-MD5}}{cram_md5_secret('pw1')}\n"
        f"user2@163.com:{hash_password('pw2')}\n"
    )
    passwd, _ = offline_file(path)
    checker = PasswdFileChecker(passwd)
    challenge = b"<12345.1700000000@mail.163.com>"
    results: list[Any] = []
    for creds in (
        cram_credentials(b"USER1@163.com", "pw1", challenge),
        cram_credentials(b"user1@163.com", "pw2", challenge),
        cram_credentials(b"user2@163.com", "pw2", challenge),
        cram_credentials(b"nobody@163.com", "pw2", challenge),
        ApopLike(),
    ):
        checker.requestAvatarId(creds).addBoth(results.append)
    assert results[0] == "user1@163.com"
    assert all(isinstance(r, Failure) and r.check(UnauthorizedLogin) for r in results[1:])
    assert checker.supports_cram_md5("user1@163.com")
    assert not checker.supports_cram_md5("user2@163.com")
    assert not checker.supports_cram_md5("nobody@163.com")
    assert checker.cram_md5_available()


def test_checker_user_without_password_refused(tmp_path: Path) -> None:
    """A mailbox-only user (empty password field) cannot log in, even with an empty password."""
    path = tmp_path / "passwd"
    path.write_text("mailonly@163.com:\n")
    checker = PasswdFileChecker(offline_file(path)[0])
    result = login(checker, "mailonly@163.com", "")
    assert isinstance(result, Failure) and result.check(UnauthorizedLogin)


def test_checker_non_utf8_username_refused(tmp_path: Path) -> None:
    """A username that is not UTF-8 fails like a wrong password."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('pw')}\n")
    checker = PasswdFileChecker(offline_file(path)[0])
    result = login(checker, b"\xffuser1@163.com", b"pw")
    assert isinstance(result, Failure) and result.check(UnauthorizedLogin)


def test_checker_authenticate_is_request_avatar_id(tmp_path: Path) -> None:
    """The Authenticator seam: authenticate() answers as requestAvatarId does."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('pw')}\n")
    checker = PasswdFileChecker(offline_file(path)[0])
    results: list[Any] = []
    checker.authenticate(UsernamePassword(b"User1@163.com", b"pw")).addBoth(results.append)
    checker.authenticate(UsernamePassword(b"user1@163.com", b"PW")).addBoth(results.append)
    assert results[0] == "user1@163.com"
    assert isinstance(results[1], Failure) and results[1].check(UnauthorizedLogin)
    assert not checker.cram_md5_available()


def test_checker_unreadable_file_unauthorized_previous_users_kept(
    tmp_path: Path,
    warnings: list[str],  # noqa: F811 (the imported fixture)
) -> None:
    """A passwd file that cannot be read never fails a login with anything but
    UnauthorizedLogin: from the start there are no users; later the previous ones stay."""
    path = tmp_path / "passwd"
    path.mkdir()  # read_bytes() fails: IsADirectoryError
    checker = PasswdFileChecker(offline_file(path)[0])
    result = checker.authenticate(UsernamePassword(b"user1@163.com", b"pw"))
    failures: list[Any] = []
    result.addErrback(failures.append)
    assert failures and failures[0].check(UnauthorizedLogin)
    assert warnings.count(f"{path}: Is a directory; keeping the previous 0 users") == 1

    other = tmp_path / "other"
    other.write_text(f"user1@163.com:{hash_password('pw')}\n")
    passwd, reactor = offline_file(other)
    checker = PasswdFileChecker(passwd)
    other.unlink()
    other.mkdir()
    reactor.advance(2)
    assert login(checker, "user1@163.com", "pw") == "user1@163.com"
    assert warnings.count(f"{other}: Is a directory; keeping the previous 1 users") == 1


@pytest.fixture
def spied_verify(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (stored hash, thread id) of every verify_password the checker runs."""
    calls: list[tuple[str, int]] = []
    real = passwd_checker.verify_password

    def spy(password: str | bytes, stored: str) -> bool:
        calls.append((stored, threading.get_ident()))
        return real(password, stored)

    monkeypatch.setattr(passwd_checker, "verify_password", spy)
    return calls


@pytest_twisted.inlineCallbacks
def test_checker_right_password_returns_address_off_reactor_thread(
    tmp_path: Path, spied_verify: list[tuple[str, int]]
) -> Any:
    """The right password gives the lower-cased address; the hash runs in a pool thread."""
    path = tmp_path / "passwd"
    stored = hash_password("pw")
    path.write_text(f"user1@163.com:{stored}\n")
    checker = PasswdFileChecker(PasswdFile(path, default_domain="163.com"))
    avatar = yield checker.requestAvatarId(UsernamePassword(b"User1@163.com", b"pw"))
    assert avatar == "user1@163.com"
    avatar = yield checker.requestAvatarId(UsernamePassword("user1", "pw"))
    assert avatar == "user1@163.com"
    assert spied_verify[0][0] == stored
    assert all(ident != threading.get_ident() for _, ident in spied_verify)


@pytest_twisted.inlineCallbacks
def test_checker_wrong_password_unauthorized(tmp_path: Path) -> Any:
    """A wrong password fails with UnauthorizedLogin."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('pw')}\n")
    checker = PasswdFileChecker(PasswdFile(path))
    with pytest.raises(UnauthorizedLogin):
        yield checker.requestAvatarId(UsernamePassword(b"user1@163.com", b"PW"))


@pytest_twisted.inlineCallbacks
def test_checker_unknown_user_hashes_dummy_as_long_as_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spied_verify: list[tuple[str, int]]
) -> Any:
    """An unknown user costs a real bcrypt check of the default cost, as long as a known one."""
    monkeypatch.setattr(schemes, "BCRYPT_ROUNDS", 12)
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('pw')}\n")
    checker = PasswdFileChecker(PasswdFile(path))
    timings = {}
    for name in ("user1@163.com", "nobody@163.com", "not an address"):
        start = time.perf_counter()
        with pytest.raises(UnauthorizedLogin):
            yield checker.requestAvatarId(UsernamePassword(name.encode(), b"wrong"))
        timings[name] = time.perf_counter() - start
    assert [stored for stored, _ in spied_verify][1:] == [passwd_checker._DUMMY_HASH] * 2
    known = timings["user1@163.com"]
    assert known > 0.05  # a real cost-12 bcrypt, not a shortcut
    assert timings["nobody@163.com"] > known / 2
    assert timings["not an address"] > known / 2


def test_checker_unknown_user_dummy_follows_common_scheme(
    tmp_path: Path, spied_verify: list[tuple[str, int]]
) -> None:
    """When most users have SHA512-CRYPT, an unknown user is checked against a SHA512-CRYPT
    dummy made once with our default rounds."""
    path = tmp_path / "passwd"
    path.write_text(
        f"a@163.com:{hash_password('pw', 'SHA512-CRYPT')}\n"
        f"b@163.com:{hash_password('pw', 'SHA512-CRYPT')}\n"
        f"c@163.com:{hash_password('pw')}\n"
    )
    checker = PasswdFileChecker(offline_file(path)[0])
    for _ in range(2):
        assert isinstance(login(checker, "nobody@163.com", "pw"), Failure)
    first, second = (stored for stored, _ in spied_verify)
    assert first == second and first.startswith("{SHA512-CRYPT}$6$rounds=1000$")
