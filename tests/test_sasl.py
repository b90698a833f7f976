"""SASL PLAIN, LOGIN and CRAM-MD5 exchanges, sans-IO, and through a portal to the checker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import CramMD5Credentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from zope.interface import Interface, implementer

from appliance.auth import schemes
from appliance.auth.cram import cram_md5_secret
from appliance.auth.passwd import PasswdFile
from appliance.auth.passwd_checker import PasswdFileChecker
from appliance.auth.schemes import hash_password
from appliance.sasl import (
    MAX_LINE,
    MECHANISMS,
    PLAINTEXT,
    Challenge,
    Credentials,
    SaslError,
    SaslExchange,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def run(exchange: SaslExchange, *lines: str) -> Challenge | Credentials | SaslError:
    """Start the exchange and feed it lines; the last result."""
    result = exchange.step()
    for line in lines:
        assert isinstance(result, Challenge), result
        result = exchange.step(line)
    return result


def reply(result: Any) -> str:
    assert isinstance(result, SaslError), result
    return result.reply


# --------------------------------------------------------------------------- PLAIN


def test_plain_initial_response_credentials() -> None:
    """AUTH PLAIN <b64(\\0user\\0pass)> gives UsernamePassword at once."""
    result = run(SaslExchange("PLAIN", "mail.163.com", b64(b"\0user1@163.com\0pass word")))
    assert isinstance(result, Credentials)
    assert result.mechanism == "PLAIN" and result.username == "user1@163.com"
    assert IUsernamePassword.providedBy(result.credentials)
    assert result.credentials.username == b"user1@163.com"
    assert result.credentials.password == b"pass word"


def test_plain_without_initial_response_empty_challenge() -> None:
    """AUTH PLAIN alone gets an empty 334 challenge, then the response."""
    exchange = SaslExchange("plain", "mail.163.com")
    assert exchange.step() == Challenge("")
    result = exchange.step(b64(b"user1@163.com\0user1@163.com\0pw"))
    assert isinstance(result, Credentials) and result.credentials.password == b"pw"
    assert exchange.finished


def test_plain_other_authzid_refused_535() -> None:
    """An authzid that is not the authcid is refused: no acting as another user."""
    result = run(SaslExchange("PLAIN", "h", b64(b"boss@163.com\0user1@163.com\0pw")))
    assert reply(result) == "535 5.7.8 Authentication credentials invalid"


@pytest.mark.parametrize(
    "decoded",
    [b"", b"user\0pw", b"\0user\0pw\0extra", b"\0\0pw", b"\0user\0", b"\0\xffuser\0pw"],
    ids=["empty", "two-parts", "four-parts", "no-authcid", "no-password", "not-utf8"],
)
def test_plain_malformed_response_501(decoded: bytes) -> None:
    """Wrong field counts, empty authcid or password, non-UTF-8 username: 501 5.5.2."""
    initial = b64(decoded) if decoded else "="
    assert reply(run(SaslExchange("PLAIN", "h", initial))) == (
        "501 5.5.2 Malformed authentication response"
    )


@pytest.mark.parametrize("bad", ["not base64!", "dXNlcg", "dXNlcg==\n", "dX Nlcg==", "ü"])
def test_plain_bad_base64_501(bad: str) -> None:
    """Strict base64: bad characters, missing padding, embedded whitespace give 501 5.5.2."""
    assert reply(run(SaslExchange("PLAIN", "h", bad))) == "501 5.5.2 Cannot decode base64 response"
    assert reply(run(SaslExchange("PLAIN", "h"), bad)) == "501 5.5.2 Cannot decode base64 response"


# --------------------------------------------------------------------------- LOGIN


def test_login_username_password_challenges() -> None:
    """LOGIN asks base64 'Username:' then 'Password:' and gives UsernamePassword."""
    exchange = SaslExchange("LOGIN", "mail.163.com")
    first = exchange.step()
    assert first == Challenge("VXNlcm5hbWU6")
    second = exchange.step(b64("usér1@163.com".encode()))
    assert isinstance(second, Challenge)
    assert base64.b64decode(second.text) == b"Password:"
    result = exchange.step(b64(b"\xffbinary pw"))
    assert isinstance(result, Credentials) and result.mechanism == "LOGIN"
    assert result.username == "usér1@163.com"
    assert result.credentials.username == "usér1@163.com".encode()
    assert result.credentials.password == b"\xffbinary pw"


def test_login_initial_response_is_username() -> None:
    """AUTH LOGIN <b64 user> skips the Username: challenge."""
    result = run(SaslExchange("LOGIN", "h", b64(b"user1")), b64(b"pw"))
    assert isinstance(result, Credentials)
    assert (result.username, result.credentials.password) == ("user1", b"pw")


def test_login_client_cancel_501() -> None:
    """A client '*' at any step cancels with 501 5.5.2."""
    assert reply(run(SaslExchange("LOGIN", "h"), "*")) == "501 5.5.2 Authentication cancelled"
    assert reply(run(SaslExchange("LOGIN", "h"), b64(b"u"), "*")) == (
        "501 5.5.2 Authentication cancelled"
    )


@pytest.mark.parametrize("username", [b"\xff\xfe", b"", b"a\0b"])
def test_login_bad_username_501(username: bytes) -> None:
    """A username that is not UTF-8, empty, or holds NUL: 501 5.5.2."""
    assert reply(run(SaslExchange("LOGIN", "h"), b64(username))) == (
        "501 5.5.2 Malformed authentication response"
    )


# --------------------------------------------------------------------------- CRAM-MD5


def test_cram_md5_challenge_and_response_credentials() -> None:
    """CRAM-MD5 sends <random.time@hostname>; the response makes CramMD5Credentials that
    twisted's own checkPassword accepts for the right password."""
    exchange = SaslExchange("CRAM-MD5", "mail.163.com", now=lambda: 1700000000.7)
    challenge = exchange.step()
    assert isinstance(challenge, Challenge)
    text = base64.b64decode(challenge.text)
    assert re.fullmatch(rb"<\d+\.1700000000@mail\.163\.com>", text)
    digest = hmac.new(b"tanstaaf", text, hashlib.md5).hexdigest().upper()
    result = exchange.step(b64(b"tim " + digest.encode()))
    assert isinstance(result, Credentials) and result.mechanism == "CRAM-MD5"
    creds = result.credentials
    assert isinstance(creds, CramMD5Credentials)
    assert (creds.username, creds.challenge) == (b"tim", text)
    assert creds.response == digest.lower().encode()
    assert creds.checkPassword(b"tanstaaf")
    assert not creds.checkPassword(b"tanstaaF")


def test_cram_md5_challenges_differ() -> None:
    """Two exchanges never share a challenge."""
    a = SaslExchange("CRAM-MD5", "h").step()
    b = SaslExchange("CRAM-MD5", "h").step()
    assert a != b


def test_cram_md5_initial_response_refused_501() -> None:
    """CRAM-MD5 is server-first: an initial response is a 501."""
    assert reply(run(SaslExchange("CRAM-MD5", "h", b64(b"tim 00")))) == (
        "501 5.5.2 CRAM-MD5 takes no initial response"
    )


@pytest.mark.parametrize("response", [b"tim", b"tim xyz", b" " + b"0" * 32, b"tim " + b"0" * 31])
def test_cram_md5_malformed_response_501(response: bytes) -> None:
    """A response that is not 'user <32 hex digits>': 501 5.5.2."""
    assert reply(run(SaslExchange("CRAM-MD5", "h"), b64(response))) == (
        "501 5.5.2 Malformed authentication response"
    )


# --------------------------------------------------------------------------- common


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "XOAUTH2", ""])
def test_exchange_unknown_mechanism_504(mechanism: str) -> None:
    """An unknown mechanism: 504 5.5.4."""
    assert (
        reply(SaslExchange(mechanism, "h").step()) == "504 5.5.4 Unrecognized authentication type"
    )


def test_exchange_mechanism_not_offered_504() -> None:
    """A mechanism the server did not offer (here PLAIN before TLS) is refused like an unknown."""
    offered = [m for m in MECHANISMS if m not in PLAINTEXT]
    result = SaslExchange("PLAIN", "h", b64(b"\0u\0p"), mechanisms=offered).step()
    assert reply(result) == "504 5.5.4 Unrecognized authentication type"
    assert isinstance(SaslExchange("CRAM-MD5", "h", mechanisms=offered).step(), Challenge)


def test_exchange_line_over_12288_500() -> None:
    """A response line over 12288 characters: 500 5.5.6; exactly 12288 is still decoded."""
    too_long = "A" * (MAX_LINE + 4)
    assert reply(run(SaslExchange("LOGIN", "h"), too_long)) == (
        "500 5.5.6 Authentication exchange line is too long"
    )
    assert reply(SaslExchange("PLAIN", "h", too_long).step()) == (
        "500 5.5.6 Authentication exchange line is too long"
    )
    at_limit = b64(b"\0u\0" + b"p" * (MAX_LINE // 4 * 3 - 3))
    assert len(at_limit) == MAX_LINE
    assert isinstance(run(SaslExchange("PLAIN", "h"), at_limit), Credentials)


def test_exchange_step_after_end_raises() -> None:
    """Once an exchange returned Credentials or an error, stepping it again is a bug."""
    exchange = SaslExchange("PLAIN", "h", b64(b"\0u\0p"))
    exchange.step()
    with pytest.raises(RuntimeError):
        exchange.step("AAAA")


# --------------------------------------------------------------------------- with the checker


class IMailAccount(Interface):
    """A stand-in avatar interface."""


@implementer(IRealm)
class Realm:
    def requestAvatar(self, avatar_id: str, mind: Any, *interfaces: Any) -> Any:
        return IMailAccount, avatar_id, lambda: None


@pytest.fixture
def portal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Portal:
    monkeypatch.setattr(schemes, "BCRYPT_ROUNDS", 4)
    path = tmp_path / "passwd"
    path.write_text(
        f"user1@163.com:{hash_password('pw1')}::::::cram_md5={{CRAM-MD5}}{cram_md5_secret('pw1')}\n"
    )
    checker = PasswdFileChecker(PasswdFile(path, default_domain="163.com"))
    assert ICredentialsChecker.providedBy(checker)
    return Portal(Realm(), [checker])


@pytest_twisted.inlineCallbacks
def test_exchange_plain_through_portal_logs_in(portal: Portal) -> Any:
    """PLAIN credentials from an exchange log in through a Portal with the passwd checker."""
    result = run(SaslExchange("PLAIN", "mail.163.com", b64(b"\0User1\0pw1")))
    assert isinstance(result, Credentials)
    _, avatar, _ = yield portal.login(result.credentials, None, IMailAccount)
    assert avatar == "user1@163.com"
    bad = run(SaslExchange("PLAIN", "mail.163.com", b64(b"\0user1\0pw2")))
    assert isinstance(bad, Credentials)
    with pytest.raises(UnauthorizedLogin):
        yield portal.login(bad.credentials, None, IMailAccount)


@pytest_twisted.inlineCallbacks
def test_exchange_cram_md5_through_portal_logs_in(portal: Portal) -> Any:
    """A CRAM-MD5 exchange answered with the right password logs in through the Portal."""
    exchange = SaslExchange("CRAM-MD5", "mail.163.com")
    challenge = exchange.step()
    assert isinstance(challenge, Challenge)
    digest = hmac.new(b"pw1", base64.b64decode(challenge.text), hashlib.md5).hexdigest()
    result = exchange.step(b64(b"user1@163.com " + digest.encode()))
    assert isinstance(result, Credentials)
    _, avatar, _ = yield portal.login(result.credentials, None, IMailAccount)
    assert avatar == "user1@163.com"


def test_offered_mechanisms_password_ones_only_when_plaintext_allowed() -> None:
    """PLAIN/LOGIN only under TLS or from a listed network; CRAM-MD5 only if checkable."""
    import ipaddress

    from appliance.sasl import offered_mechanisms, plaintext_allowed

    lab = [ipaddress.ip_network("127.0.0.0/8")]
    assert plaintext_allowed(None, "127.0.0.1", lab)
    assert not plaintext_allowed(None, "192.0.2.1", lab)
    assert plaintext_allowed("TLSv1.3 TLS_AES_256_GCM_SHA384", "192.0.2.1", lab)
    configured = ("PLAIN", "LOGIN", "CRAM-MD5")
    assert offered_mechanisms(configured, True, True) == ["PLAIN", "LOGIN", "CRAM-MD5"]
    assert offered_mechanisms(configured, False, True) == ["CRAM-MD5"]
    assert offered_mechanisms(configured, True, False) == ["PLAIN", "LOGIN"]
    assert offered_mechanisms(("LOGIN",), False, True) == []
