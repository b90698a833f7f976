"""Password schemes, the passwd file (reload, edits), the cred checker and `mailappliance user`."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
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
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import cli, paths
from appliance.auth import cram, passwd_checker, schemes
from appliance.auth.cram import cram_md5_digest, cram_md5_secret, md5_resume, verify_cram_md5
from appliance.auth.passwd import PasswdFile
from appliance.auth.passwd_admin import add_user, delete_user, set_password
from appliance.auth.passwd_checker import PasswdFileChecker
from appliance.auth.passwd_format import PasswdFileError, parse_passwd
from appliance.auth.schemes import hash_password, sha512_crypt, verify_password
from appliance.config import Config, Section

REPO = Path(__file__).resolve().parents[2]

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

# `doveadm pw -s CRAM-MD5` output quoted in postfixadmin's test suite (spec/spec_helper.rb)
DOVECOT_CRAM_MD5 = {
    "password": "9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740",
    "new_password": "820de4c70957274d41111c5fbcae4c87240c9f047fc56f3e720f103571be6cbc",
}
# a Dovecot-made bcrypt hash of "password" from the same suite ($2y$, cost 5)
DOVECOT_BLF_CRYPT = "{BLF-CRYPT}$2y$05$Nkx/QGy0PMR4CgQhfRDnROfMn4JmU8A2eVxROXTWeHlNnQMYs/Aaq"


# --------------------------------------------------------------------------- helpers


class ThreadlessReactor(Clock):
    """A Clock that deferToThreadPool can report to: callFromThread runs at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlineThreadPool:
    """Runs the 'threaded' call synchronously, so Clock-driven tests need no real thread."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """New hashes use the cheapest costs; tests about the real cost undo it themselves."""
    monkeypatch.setattr(schemes, "BCRYPT_ROUNDS", 4)
    monkeypatch.setattr(schemes, "SHA512_ROUNDS", 1000)
    monkeypatch.setattr(schemes, "ARGON2_MEMORY_KIB", 1024)
    monkeypatch.setattr(schemes, "ARGON2_TIME_COST", 1)


@pytest.fixture
def warnings(log_lines: list[str]) -> list[str]:
    """Every log line emitted during the test, formatted (tests/conftest.py's log_lines)."""
    return log_lines


def replace_file(path: Path, text: str) -> None:
    """Rewrite the file the way careful editors do: a new inode renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def offline_file(path: Path, **kwargs: Any) -> tuple[PasswdFile, ThreadlessReactor]:
    reactor = ThreadlessReactor()
    reactor.advance(1000)
    return PasswdFile(path, reactor=reactor, threadpool=InlineThreadPool(), **kwargs), reactor


def login(checker: PasswdFileChecker, username: str | bytes, password: str | bytes) -> Any:
    """The avatar id, or the Failure, of a synchronous (inline thread pool) check."""
    results: list[Any] = []
    d = checker.requestAvatarId(UsernamePassword(username, password))
    d.addBoth(results.append)
    assert results, "the check did not finish synchronously"
    return results[0]


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


# --------------------------------------------------------------------------- parsing


def test_parse_passwd_dovecot_format_accepted() -> None:
    """Comments, blank lines, userdb fields and extra fields parse; addresses are lower-cased."""
    blf = hash_password("a")
    text = (
        "# users of 163.com\n"
        "\n"
        f"User1@163.COM:{blf}:1000:1000::/home/user1::userdb_quota_rule=*:storage=1G\n"
        f"user2@163.com:{blf}::::::cram_md5={{CRAM-MD5}}{DOVECOT_CRAM_MD5['password']}\n"
        "mailonly@163.com:\n"
        f"user3@163.com:{{CRAM-MD5}}{DOVECOT_CRAM_MD5['new_password'].upper()}\n"
    )
    users, problems = parse_passwd(text.encode(), "passwd")
    assert problems == []
    assert sorted(users) == ["mailonly@163.com", "user1@163.com", "user2@163.com", "user3@163.com"]
    assert users["user1@163.com"].cram_md5 is None
    assert users["user2@163.com"].cram_md5 == DOVECOT_CRAM_MD5["password"]
    assert users["user3@163.com"].cram_md5 == DOVECOT_CRAM_MD5["new_password"]
    assert users["mailonly@163.com"].password == ""


def test_parse_passwd_bad_lines_named_by_file_and_line() -> None:
    """Each broken line is one problem `file:line: message`, without echoing the hash."""
    blf = hash_password("a")
    text = (
        f"ok@163.com:{blf}\n"
        "no-colon-here\n"
        f"user@:{blf}\n"
        "x@163.com:{PLAIN}secret\n"
        f"OK@163.com:{blf}\n"
        f"y@163.com:{blf}::::::cram_md5={{CRAM-MD5}}abc\n"
    )
    data = text.encode() + b"\xff@163.com:x\n"
    _, problems = parse_passwd(data, "/etc/passwd.mail")
    assert problems == [
        "/etc/passwd.mail:2: expected user@domain:{SCHEME}hash",
        "/etc/passwd.mail:3: expected an address like user@example.com, got 'user@'",
        "/etc/passwd.mail:4: unsupported password scheme {PLAIN} "
        "(supported: BLF-CRYPT, SHA512-CRYPT, ARGON2ID, CRAM-MD5)",
        "/etc/passwd.mail:5: ok@163.com already defined on line 1",
        "/etc/passwd.mail:6: cram_md5: malformed CRAM-MD5 hash",
        "/etc/passwd.mail:7: not UTF-8",
    ]
    assert not any("secret" in p for p in problems)


# --------------------------------------------------------------------------- PasswdFile


def test_passwd_file_rewrite_seen_after_a_second(tmp_path: Path) -> None:
    """Write, log in, rewrite with a new password: within the second the old table is used
    (one stat per second), after it the new password works and the old one fails."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('old')}\n")
    passwd, reactor = offline_file(path)
    checker = PasswdFileChecker(passwd)
    assert login(checker, b"user1@163.com", b"old") == "user1@163.com"

    replace_file(path, f"user1@163.com:{hash_password('new')}\nuser2@163.com:\n")
    reactor.advance(0.5)
    assert login(checker, b"user1@163.com", b"old") == "user1@163.com"

    reactor.advance(0.6)
    assert isinstance(login(checker, b"user1@163.com", b"old"), Failure)
    assert login(checker, b"user1@163.com", b"new") == "user1@163.com"
    assert passwd.users() == ["user1@163.com", "user2@163.com"]


def test_passwd_file_broken_rewrite_keeps_previous_users(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A rewrite with a broken line keeps the previous users and logs file:line once."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('pw')}\n")
    passwd, reactor = offline_file(path)
    replace_file(path, f"# comment\nuser1@163.com:{hash_password('other')}\nbroken line\n")
    reactor.advance(2)
    assert passwd.users() == ["user1@163.com"]
    assert login(PasswdFileChecker(passwd), "user1@163.com", "pw") == "user1@163.com"
    expected = f"{path}:3: expected user@domain:{{SCHEME}}hash; keeping the previous 1 users"
    assert warnings.count(expected) == 1
    reactor.advance(2)
    passwd.users()
    assert warnings.count(expected) == 1

    replace_file(path, f"user9@163.com:{hash_password('pw')}\n")
    reactor.advance(2)
    assert passwd.users() == ["user9@163.com"]


def test_passwd_file_lookups_stat_at_most_once_per_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many lookups within a second cost one stat(); the next second costs one more."""
    path = tmp_path / "passwd"
    path.write_text("user1@163.com:\n")
    passwd, reactor = offline_file(path)
    calls: list[Any] = []
    real_stat = os.stat

    def counting_stat(p: Any, *a: Any, **kw: Any) -> os.stat_result:
        calls.append(p)
        return real_stat(p, *a, **kw)

    monkeypatch.setattr(os, "stat", counting_stat)
    reactor.advance(5)
    for _ in range(100):
        passwd.exists("user1@163.com")
        reactor.advance(0.001)
    assert len(calls) == 1
    reactor.advance(1)
    passwd.exists("user1@163.com")
    assert len(calls) == 2


def test_passwd_file_exists_case_and_default_domain_true(tmp_path: Path) -> None:
    """exists() lower-cases and, with default_domain, accepts a bare user name."""
    path = tmp_path / "passwd"
    path.write_text("user1@163.com:\n")
    passwd, _ = offline_file(path, default_domain="163.COM")
    results: list[bool] = []
    for name in ("USER1@163.com", "user1", "user2", "user1@sina.com", "not an address"):
        passwd.exists(name).addCallback(results.append)
    assert results == [True, True, False, False, False]
    plain, _ = offline_file(path)
    plain.exists("user1").addCallback(results.append)
    assert results[-1] is False


def test_passwd_file_missing_file_no_users(tmp_path: Path, warnings: list[str]) -> None:
    """A missing file is an empty directory, logged once."""
    passwd, reactor = offline_file(tmp_path / "passwd")
    assert passwd.users() == []
    reactor.advance(5)
    assert passwd.users() == []
    assert sum("no such file" in w for w in warnings) == 1
    assert f"{tmp_path / 'passwd'}: no such file; keeping the previous 0 users" in warnings


# --------------------------------------------------------------------------- admin edits


def test_passwd_file_add_mode_0600_and_comments_kept(tmp_path: Path) -> None:
    """add() appends atomically with mode 0600; comments and other lines stay as they were."""
    path = tmp_path / "passwd"
    head = "# managed by mailappliance\n\nuser1@163.com:{CRAM-MD5}" + DOVECOT_CRAM_MD5["password"]
    path.write_text(head + "\n")
    path.chmod(0o644)
    passwd = PasswdFile(path)
    add_user(passwd, "User2@163.com", "pw2", scheme="SHA512-CRYPT", cram_md5=True)
    text = path.read_text()
    assert text.startswith(head + "\nuser2@163.com:{SHA512-CRYPT}$6$rounds=1000$")
    assert text.endswith(f"::::::cram_md5={{CRAM-MD5}}{cram_md5_secret('pw2')}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert passwd.users() == ["user1@163.com", "user2@163.com"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_passwd_file_add_new_file_mode_0600(tmp_path: Path) -> None:
    """The first add creates the folder and a 0600 file."""
    path = tmp_path / "state" / "passwd"
    add_user(PasswdFile(path), "user1@163.com", "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("user1@163.com:{BLF-CRYPT}$2b$04$")


def test_passwd_file_edit_keeps_mode_0640(tmp_path: Path) -> None:
    """A file the admin made 0640 (readable by a mail group) stays 0640."""
    path = tmp_path / "passwd"
    path.write_text("")
    path.chmod(0o640)
    add_user(PasswdFile(path), "user1@163.com", "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_passwd_file_set_password_keeps_fields_and_renews_cram(tmp_path: Path) -> None:
    """set_password replaces the hash, keeps userdb and extra fields, renews CRAM-MD5."""
    path = tmp_path / "passwd"
    old_cram = cram_md5_secret("old")
    path.write_text(
        f"user1@163.com:{hash_password('old')}:1000:100::/home/u1::quota=1G cram_md5={{CRAM-MD5}}{old_cram}\n"
    )
    passwd = PasswdFile(path)
    set_password(passwd, "user1@163.com", "new", scheme="ARGON2ID")
    fields = path.read_text().rstrip("\n").split(":", 7)
    assert fields[2:7] == ["1000", "100", "", "/home/u1", ""]
    assert fields[7] == f"quota=1G cram_md5={{CRAM-MD5}}{cram_md5_secret('new')}"
    assert verify_password("new", fields[1]) and not verify_password("old", fields[1])

    set_password(passwd, "user1@163.com", "newer", cram_md5=False)
    fields = path.read_text().rstrip("\n").split(":", 7)
    assert fields[7] == "quota=1G"


def test_passwd_file_admin_errors_clear(tmp_path: Path) -> None:
    """Adding an existing user, changing or deleting an unknown one raise PasswdFileError."""
    path = tmp_path / "passwd"
    passwd = PasswdFile(path)
    add_user(passwd, "user1@163.com", "pw")
    with pytest.raises(PasswdFileError, match="user1@163.com already exists"):
        add_user(passwd, "USER1@163.com", "pw")
    with pytest.raises(PasswdFileError, match="no such user: user2@163.com"):
        delete_user(passwd, "user2@163.com")
    with pytest.raises(PasswdFileError, match="no such user: user2@163.com"):
        set_password(passwd, "user2@163.com", "pw")
    with pytest.raises(PasswdFileError, match="expected an address"):
        add_user(passwd, "user2", "pw")
    delete_user(passwd, "User1@163.com")
    assert passwd.users() == []
    assert path.read_text() == ""


def test_passwd_file_edit_of_broken_file_refused(tmp_path: Path) -> None:
    """An edit never rewrites a file with broken lines; it names them instead."""
    path = tmp_path / "passwd"
    path.write_text("garbage\n")
    with pytest.raises(PasswdFileError) as e:
        add_user(PasswdFile(path), "user1@163.com", "pw")
    assert e.value.problems[0] == f"{path}:1: expected user@domain:{{SCHEME}}hash"
    assert path.read_text() == "garbage\n"


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
    tmp_path: Path, warnings: list[str]
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


# --------------------------------------------------------------------------- CLI


def lab_ini(tmp_path: Path) -> Path:
    ini = tmp_path / "lab.ini"
    ini.write_text("[appliance]\nhostname = mail.163.com\nstate_dir = state\n")
    return ini


def run_cli(monkeypatch: pytest.MonkeyPatch, ini: Path, *args: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(["--config", str(ini), "user", *args])


def test_cli_user_add_password_stdin_then_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """user add --password-stdin stores a verifying hash in <state_dir>/passwd (0600); list
    prints one address per line."""
    ini = lab_ini(tmp_path)
    assert (
        run_cli(monkeypatch, ini, "add", "User1@163.com", "--password-stdin", stdin="pw 1\n") == 0
    )
    assert (
        run_cli(
            monkeypatch,
            ini,
            "add",
            "user2@163.com",
            "--password-stdin",
            "--scheme",
            "sha512-crypt",
            "--cram-md5",
            stdin="pw2\r\n",
        )
        == 0
    )
    path = tmp_path / "state" / "passwd"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    capsys.readouterr()
    assert run_cli(monkeypatch, ini, "list") == 0
    assert capsys.readouterr().out == "user1@163.com\nuser2@163.com\n"
    users, _ = parse_passwd(path.read_bytes(), "passwd")
    assert verify_password("pw 1", users["user1@163.com"].password)
    assert users["user2@163.com"].password.startswith("{SHA512-CRYPT}$6$")
    assert verify_password("pw2", users["user2@163.com"].password)
    assert users["user2@163.com"].cram_md5 == cram_md5_secret("pw2")


def test_cli_user_add_prompt_asks_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --password-stdin the password is asked twice; a mismatch stores nothing."""
    ini = lab_ini(tmp_path)
    answers = iter(["one", "two", "same", "same"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli.getpass, "getpass", fake_getpass)
    assert run_cli(monkeypatch, ini, "add", "user1@163.com") == 1
    assert capsys.readouterr().err == "mailappliance: passwords do not match\n"
    assert not (tmp_path / "state" / "passwd").exists()
    assert run_cli(monkeypatch, ini, "add", "user1@163.com") == 0
    assert prompts == ["Password: ", "Password again: "] * 2
    users, _ = parse_passwd((tmp_path / "state" / "passwd").read_bytes(), "passwd")
    assert verify_password("same", users["user1@163.com"].password)


def test_cli_user_passwd_and_del(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """passwd changes the hash (keeping a CRAM-MD5 secret current); del removes the user;
    del of an unknown user exits 1 naming it."""
    ini = lab_ini(tmp_path)
    path = tmp_path / "state" / "passwd"
    run_cli(monkeypatch, ini, "add", "user1@163.com", "--password-stdin", "--cram-md5", stdin="a\n")
    assert (
        run_cli(monkeypatch, ini, "passwd", "USER1@163.com", "--password-stdin", stdin="b\n") == 0
    )
    entry = parse_passwd(path.read_bytes(), "passwd")[0]["user1@163.com"]
    assert verify_password("b", entry.password) and entry.cram_md5 == cram_md5_secret("b")
    assert run_cli(monkeypatch, ini, "del", "user1@163.com") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, ini, "del", "user1@163.com") == 1
    assert capsys.readouterr().err == f"mailappliance: no such user: user1@163.com (in {path})\n"
    assert (
        run_cli(monkeypatch, ini, "passwd", "user9@163.com", "--password-stdin", stdin="x\n") == 1
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["add", "user1", "--password-stdin"], "pw\n", "expected an address like user@example.com"),
        (["add", "a@b@163.com", "--password-stdin"], "pw\n", "expected an address"),
        (["add", "user1@163.com", "--password-stdin"], "\n", "no password on standard input"),
        (["add", "user1@163.com", "--password-stdin"], "x" * 73 + "\n", "only the first 72 bytes"),
    ],
)
def test_cli_user_add_bad_input_exit_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    """Bad addresses, empty and over-long BLF-CRYPT passwords: exit 1 with one clear line."""
    assert run_cli(monkeypatch, lab_ini(tmp_path), *args, stdin=stdin) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailappliance: ") and message in err and "Traceback" not in err


def test_cli_user_broken_file_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """list and edits on a file with broken lines exit 1 naming file and line."""
    ini = lab_ini(tmp_path)
    path = tmp_path / "state" / "passwd"
    path.parent.mkdir()
    path.write_text("oops\n")
    assert run_cli(monkeypatch, ini, "list") == 1
    assert (
        capsys.readouterr().err == f"mailappliance: {path}:1: expected user@domain:{{SCHEME}}hash\n"
    )


@pytest.mark.parametrize(
    "args",
    [["user"], ["user", "add"], ["user", "passwd"], ["user", "del"], ["user", "list"]],
)
def test_cli_user_help_every_level_exit_0(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--help works on user and on each of its subcommands."""
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mailappliance user")


def test_paths_passwd_file_auth_section_or_state_dir(tmp_path: Path) -> None:
    """passwd_file takes [auth] passwd_file if set, else <state_dir>/passwd."""
    appliance = Section("appliance", {"state_dir": tmp_path / "state"})
    without = Config(path=tmp_path / "x.ini", sections={"appliance": appliance})
    assert paths.passwd_file(without) == tmp_path / "state" / "passwd"
    unset = Config(
        path=tmp_path / "x.ini",
        sections={"appliance": appliance, "auth": Section("auth", {"passwd_file": None})},
    )
    assert paths.passwd_file(unset) == tmp_path / "state" / "passwd"
    configured = Config(
        path=tmp_path / "x.ini",
        sections={
            "appliance": appliance,
            "auth": Section("auth", {"passwd_file": tmp_path / "etc" / "users"}),
        },
    )
    assert paths.passwd_file(configured) == tmp_path / "etc" / "users"


def test_cli_user_subprocess_add_list(tmp_path: Path) -> None:
    """The installed `mailappliance` script adds a user from stdin and lists it."""
    ini = lab_ini(tmp_path)
    exe = REPO / ".venv" / "bin" / "mailappliance"
    add = subprocess.run(
        [str(exe), "--config", str(ini), "user", "add", "user1@163.com", "--password-stdin"],
        input="secret\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert add.returncode == 0, add.stderr
    listing = subprocess.run(
        [str(exe), "--config", str(ini), "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and listing.stdout == "user1@163.com\n"
    entry = parse_passwd((tmp_path / "state" / "passwd").read_bytes(), "p")[0]["user1@163.com"]
    assert entry.password.startswith("{BLF-CRYPT}$2b$12$")
    assert verify_password("secret", entry.password)
