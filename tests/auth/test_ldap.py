"""LDAPDirectory against a real slapd: search-then-bind, escaping, TLS, failover, outages, pool."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.credentials import CramMD5Credentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall

from appliance.auth.ldap import LDAPDirectory, LDAPUnavailable
from appliance.errors import ApplianceError
from appliance.interfaces import AuthUnavailable
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import make_tls_options
from tests.auth.slapd import Slapd, slapd  # noqa: F401 - the fixture

MakeDirectory = Callable[..., LDAPDirectory]


@pytest.fixture
def make_directory(slapd: Slapd) -> Iterator[MakeDirectory]:  # noqa: F811
    """Build started LDAPDirectory objects for the test slapd; stopped at teardown."""
    made: list[LDAPDirectory] = []

    def make(**overrides: Any) -> LDAPDirectory:
        settings: dict[str, Any] = {
            "urls": [slapd.url],
            "base_dn": slapd.base_dn,
            "bind_dn": slapd.bind_dn,
            "bind_password": slapd.bind_password,
            "ca_file": slapd.ca_file,
            "timeout": 2.0,
        }
        settings.update(overrides)
        directory = LDAPDirectory(**settings)
        directory.start()
        made.append(directory)
        return directory

    yield make
    for directory in made:
        directory.stop()


def login(user: str, password: str) -> UsernamePassword:
    # SMTP AUTH hands the checker bytes
    return UsernamePassword(user.encode("utf-8"), password.encode("utf-8"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_log(slapd: Slapd, offset: int) -> str:  # noqa: F811
    return slapd.log_file.read_bytes()[offset:].decode("utf-8", "replace")


async def refused(directory: LDAPDirectory, user: str, password: str) -> None:
    with pytest.raises(UnauthorizedLogin):
        await directory.requestAvatarId(login(user, password))


# --------------------------------------------------------------------------- logins


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_good_password_returns_address(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """The right password for user1@163.com yields the address as avatar id."""
    directory = make_directory()
    assert await directory.requestAvatarId(
        login("user1@163.com", slapd.users["user1@163.com"])
    ) == ("user1@163.com")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_mixed_case_address_returns_lower_case(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """The lookup ignores case (mail is caseIgnore) and the avatar id is lower-cased."""
    directory = make_directory()
    credentials = UsernamePassword("User2@163.COM", slapd.users["user2@163.com"])
    assert await directory.requestAvatarId(credentials) == "user2@163.com"


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_bad_password_unauthorized(make_directory: MakeDirectory) -> None:
    """A wrong password is refused with UnauthorizedLogin."""
    await refused(make_directory(), "user1@163.com", "not-the-password")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_other_users_password_unauthorized(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """user2's password does not open user1's account."""
    await refused(make_directory(), "user1@163.com", slapd.users["user2@163.com"])


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_unknown_user_unauthorized(make_directory: MakeDirectory) -> None:
    """An address with no entry is refused with UnauthorizedLogin."""
    await refused(make_directory(), "nobody@163.com", "whatever")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_empty_password_refused_without_directory(
    make_directory: MakeDirectory,
) -> None:
    """An empty password (an anonymous bind LDAP would accept) is refused before any query."""
    directory = make_directory()
    await refused(directory, "user1@163.com", "")
    with pytest.raises(UnauthorizedLogin):
        await directory.requestAvatarId(UsernamePassword("user1@163.com", ""))
    assert directory.connections_opened == 0


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_filter_injection_unauthorized(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """Filter syntax in the address is escaped (RFC 4515): `*)(uid=*` matches no one."""
    directory = make_directory()
    offset = slapd.log_file.stat().st_size
    for user in ("*)(uid=*", "*", "user1@163.com)(|(mail=*", "*@163.com"):
        await refused(directory, user, slapd.users["user1@163.com"])
    log = new_log(slapd, offset)
    assert r'filter="(mail=\2A\29\28uid=\2A)"' in log
    assert 'BIND dn="uid=' not in log
    assert "uid=user1" not in log


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_two_entries_same_mail_unauthorized(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """An address matching two entries is ambiguous and refused, even with a right password."""
    slapd.add_user("dup1", "dup@163.com", "dup-pass")
    slapd.add_user("dup2", "dup@163.com", "dup-pass")
    directory = make_directory()
    await refused(directory, "dup@163.com", "dup-pass")
    assert await directory.exists("dup@163.com") is True


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_user_added_later_logs_in(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """A user added to the running directory can log in at once (nothing is cached)."""
    directory = make_directory()
    await refused(directory, "user5@163.com", "user5-pass")
    slapd.add_user("user5", "user5@163.com", "user5-pass")
    assert await directory.requestAvatarId(login("user5@163.com", "user5-pass")) == "user5@163.com"


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_non_ascii_password_sent_as_utf8(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """A UTF-8 password matches what slappasswd hashed (sent raw, as ldapwhoami -w does)."""
    slapd.add_user("user6", "user6@163.com", "pässwörd ß")
    directory = make_directory()
    assert await directory.requestAvatarId(login("user6@163.com", "pässwörd ß")) == "user6@163.com"
    await refused(directory, "user6@163.com", "passwoerd ss")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_hashed_credentials_unauthorized(
    make_directory: MakeDirectory,
) -> None:
    """Only cleartext passwords can be checked by a bind; CRAM-MD5 style credentials fail."""
    directory = make_directory()
    with pytest.raises(UnauthorizedLogin):
        await directory.requestAvatarId(CramMD5Credentials())


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_wrong_service_password_unavailable(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """A service account the directory refuses is our problem: LDAPUnavailable, not 535."""
    directory = make_directory(bind_password="wrong")
    with pytest.raises(LDAPUnavailable, match="service bind"):
        await directory.requestAvatarId(login("user1@163.com", slapd.users["user1@163.com"]))


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_not_started_unavailable(slapd: Slapd) -> None:  # noqa: F811
    """Before start() every lookup fails with LDAPUnavailable instead of hanging."""
    directory = LDAPDirectory(
        urls=[slapd.url],
        base_dn=slapd.base_dn,
        bind_dn=slapd.bind_dn,
        bind_password=slapd.bind_password,
    )
    with pytest.raises(LDAPUnavailable):
        await directory.requestAvatarId(login("user1@163.com", "x"))


def test_ldap_unavailable_is_appliance_error() -> None:
    """LDAPUnavailable carries a user-facing message like every ApplianceError."""
    assert issubclass(LDAPUnavailable, ApplianceError)


def test_ldap_unavailable_is_auth_unavailable() -> None:
    """LDAPUnavailable is the Authenticator seam's AuthUnavailable."""
    assert issubclass(LDAPUnavailable, AuthUnavailable)


@pytest_twisted.ensureDeferred
async def test_authenticate_as_request_avatar_id_no_cram_md5(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """The Authenticator seam: authenticate() logs in like requestAvatarId; no CRAM-MD5."""
    directory = make_directory()
    good = login("User1@163.com", slapd.users["user1@163.com"])
    assert await directory.authenticate(good) == "user1@163.com"
    with pytest.raises(UnauthorizedLogin):
        await directory.authenticate(login("user1@163.com", "wrong"))
    with pytest.raises(UnauthorizedLogin):
        await directory.authenticate(CramMD5Credentials())
    assert directory.cram_md5_available() is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"user_filter": "(objectClass=*)"}, "%s"),
        ({"urls": []}, "at least one"),
        ({"urls": ["ldap://"]}, "LDAP URL"),
        ({"urls": ["http://ldap.example.com"]}, "LDAP URL"),
        ({"bind_password": ""}, "bind_password"),
        ({"urls": ["ldaps://ldap.example.com"], "ca_file": Path("/nonexistent/ca.crt")}, "CA file"),
    ],
)
def test_ldap_directory_bad_settings_rejected(overrides: dict[str, Any], message: str) -> None:
    """Settings that could never work (or would match everyone) fail at construction."""
    settings: dict[str, Any] = {
        "urls": ["ldap://127.0.0.1:1"],
        "base_dn": "dc=example,dc=test",
        "bind_dn": "cn=mailappliance,dc=example,dc=test",
        "bind_password": "secret",
    }
    settings.update(overrides)
    with pytest.raises(ValueError, match=message):
        LDAPDirectory(**settings)


# --------------------------------------------------------------------------- exists


@pytest_twisted.ensureDeferred
async def test_exists_known_and_unknown_addresses(make_directory: MakeDirectory) -> None:
    """exists() is true for a user's address (any case) and false for others and wildcards."""
    directory = make_directory()
    assert await directory.exists("user1@163.com") is True
    assert await directory.exists("USER2@163.com") is True
    assert await directory.exists("nobody@163.com") is False
    assert await directory.exists("*") is False
    assert await directory.exists("") is False


@pytest_twisted.ensureDeferred
async def test_exists_anonymous_search_works(make_directory: MakeDirectory) -> None:
    """Without bind_dn the search is anonymous (the test ACL lets anyone read mail)."""
    directory = make_directory(bind_dn=None, bind_password=None)
    assert await directory.exists("user1@163.com") is True


# --------------------------------------------------------------------------- TLS


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_starttls_right_ca_succeeds(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """StartTLS verified against our CA: both connections upgrade before any bind."""
    directory = make_directory(starttls=True)
    offset = slapd.log_file.stat().st_size
    assert await directory.requestAvatarId(
        login("user1@163.com", slapd.users["user1@163.com"])
    ) == ("user1@163.com")
    log = new_log(slapd, offset)
    assert log.count("EXT oid=1.3.6.1.4.1.1466.20037") == 2
    assert log.index("EXT oid=1.3.6.1.4.1.1466.20037") < log.index("BIND dn=")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_starttls_wrong_ca_unavailable(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
    tmp_path: Path,
) -> None:
    """StartTLS with a certificate from another CA fails; nothing is bound in plaintext."""
    other = CertificateAuthority(tmp_path / "other-ca")
    other.init("other CA", progress=lambda line: None)
    directory = make_directory(starttls=True, ca_file=other.certificate_path)
    offset = slapd.log_file.stat().st_size
    with pytest.raises(LDAPUnavailable, match="certificate verify failed"):
        await directory.requestAvatarId(login("user1@163.com", slapd.users["user1@163.com"]))
    assert "BIND" not in new_log(slapd, offset)


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_ldaps_succeeds(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """ldaps:// (implicit TLS) verified against our CA works for login and exists()."""
    directory = make_directory(urls=[slapd.ldaps_url])
    assert await directory.requestAvatarId(
        login("user2@163.com", slapd.users["user2@163.com"])
    ) == ("user2@163.com")
    assert await directory.exists("user1@163.com") is True


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_ldaps_wrong_ca_unavailable(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
    tmp_path: Path,
) -> None:
    """ldaps:// with an untrusted server certificate fails with LDAPUnavailable."""
    other = CertificateAuthority(tmp_path / "other-ca")
    other.init("other CA", progress=lambda line: None)
    directory = make_directory(urls=[slapd.ldaps_url], ca_file=other.certificate_path)
    with pytest.raises(LDAPUnavailable, match="certificate verify failed"):
        await directory.exists("user1@163.com")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_ldaps_hostname_mismatch_unavailable(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
    tmp_path: Path,
) -> None:
    """A certificate from the trusted CA but for another name is refused (host name check)."""
    key, cert = CertificateAuthority(slapd.ca_dir).issue(
        "other.test",
        [],
        key_out=tmp_path / "other.key",
        cert_out=tmp_path / "other.crt",
        progress=lambda line: None,
    )
    port = reactor.listenSSL(
        0, Factory.forProtocol(Protocol), make_tls_options(cert, key), interface="127.0.0.1"
    )
    try:
        directory = make_directory(urls=[f"ldaps://127.0.0.1:{port.getHost().port}"])
        with pytest.raises(LDAPUnavailable, match="mismatch"):
            await directory.exists("user1@163.com")
    finally:
        await port.stopListening()


# --------------------------------------------------------------------------- outages


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_first_url_down_fails_over(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """With the first URL refusing connections the next one answers."""
    directory = make_directory(urls=[f"ldap://127.0.0.1:{closed_port()}", slapd.url])
    assert await directory.requestAvatarId(
        login("user1@163.com", slapd.users["user1@163.com"])
    ) == ("user1@163.com")


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_slapd_stopped_unavailable_then_reconnects(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """Directory down: LDAPUnavailable within the timeout; after a restart pooled conns recover."""
    directory = make_directory(timeout=2.0)
    good = login("user1@163.com", slapd.users["user1@163.com"])
    assert await directory.requestAvatarId(good) == "user1@163.com"
    opened = directory.connections_opened
    slapd.stop()
    try:
        started = time.monotonic()
        with pytest.raises(LDAPUnavailable):
            await directory.requestAvatarId(good)
        assert time.monotonic() - started < 2.0
        with pytest.raises(LDAPUnavailable):
            await directory.exists("user1@163.com")
    finally:
        slapd.start()
    assert await directory.requestAvatarId(good) == "user1@163.com"
    assert await directory.exists("user2@163.com") is True
    assert directory.connections_opened > opened


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_hung_directory_times_out_reactor_keeps_running(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """A directory that accepts but never answers fails after the timeout; the reactor ticks."""
    directory = make_directory(timeout=1.0)
    ticks: list[float] = []
    ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.start(0.02)
    slapd.pause()
    try:
        started = time.monotonic()
        with pytest.raises(LDAPUnavailable, match="timed out"):
            await directory.requestAvatarId(login("user1@163.com", "user1-pass"))
        elapsed = time.monotonic() - started
    finally:
        slapd.resume()
        ticker.stop()
    assert 0.9 < elapsed < 3.0
    # the reactor ran all along: ticks spread over the whole wait, never a long gap
    assert len(ticks) >= 10
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) < 0.5


# --------------------------------------------------------------------------- pool


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_twenty_concurrent_logins_all_correct(
    slapd: Slapd,  # noqa: F811
    make_directory: MakeDirectory,
) -> None:
    """20 logins at once (good and bad, two users) each get their own right answer."""
    directory = make_directory(pool_size=4)
    cases = []
    for i in range(20):
        user = ("user1@163.com", "user2@163.com")[i % 2]
        good = i % 3 != 0
        cases.append((user, slapd.users[user] if good else f"wrong-{i}", good))
    results = await defer.DeferredList(
        [directory.requestAvatarId(login(user, pw)) for user, pw, _ in cases],
        consumeErrors=True,
    )
    for (user, _, good), (ok, value) in zip(cases, results, strict=True):
        if good:
            assert ok and value == user
        else:
            assert not ok and value.check(UnauthorizedLogin)
    # connections are reused: at most one service and one bind connection per thread
    assert directory.connections_opened <= 2 * 4
