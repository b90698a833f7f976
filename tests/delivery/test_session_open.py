"""Relay sessions to a next hop over real loopback sockets: opening the session.

The hosts tried in order (a refused connection, a 4xx greeting, EHLO refused, no greeting in
time) and the source address; STARTTLS as the tls setting asks (may, none, encrypt, verify
against our CA, with a certificate from it); AUTH to the smarthost only. The next hops (the
scripted server, our own) and the helpers are those of test_session.py.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from appliance.delivery.session import open_session
from appliance.delivery.smtp_client import Timeouts, auth_plain
from appliance.interfaces import Outcome
from appliance.smtp.settings import SUBMISSION
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import make_tls_options
from tests.conftest import free_port
from tests.delivery.test_session import (
    BODY,
    HOST,
    dest,
    hop,
    hops_failed,
    message,
    open_,
    ours_fixture,  # noqa: F401 (the ours fixture)
    quit_,
    read_chunk,
    settings,
    transfer,
)
from tests.delivery.test_smtp_client import (
    ClockedReactor,
    Script,
    Servers,
    servers_fixture,  # noqa: F401 (the servers fixture)
    within,
)

# ---------------------------------------------------------------------------- certificates


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our CA, a certificate for mx.dest.test signed by it, and another CA's certificate."""
    base = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(base / "ca")
    ca.init("Relay Test CA", progress=quiet)
    key, cert = ca.issue(HOST, [], progress=quiet)
    other = CertificateAuthority(base / "other")
    other.init("Somebody Else's CA", progress=quiet)
    return {"ca": ca.certificate_path, "key": key, "cert": cert, "other_ca": other.certificate_path}


# ---------------------------------------------------------------------------- hosts in order


@pytest_twisted.ensureDeferred
async def test_open_next_host_on_connection_refused(servers: Servers) -> None:
    """A refused connection moves on to the next host."""
    f = servers.listen()
    session = await open_(dest(hop(free_port(), "mx1.dest.test"), hop(f, "mx2.dest.test")))
    assert session.hop == hop(f, "mx2.dest.test")
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_open_next_host_on_4xx_greeting(servers: Servers) -> None:
    """A 421 greeting moves on to the next host."""
    busy = servers.listen(Script(greeting="421 4.3.2 too busy"))
    f = servers.listen()
    session = await open_(dest(hop(busy, "mx1.dest.test"), hop(f, "mx2.dest.test")))
    assert session.hop.host == "mx2.dest.test"
    assert len(busy.connections) == 1
    await quit_(session, f)


@pytest.mark.parametrize("ehlo", ["421 4.7.0 not now", "554 5.7.1 go away"])
@pytest_twisted.ensureDeferred
async def test_open_next_host_on_ehlo_failure(servers: Servers, ehlo: str) -> None:
    """EHLO refused (4xx, or 5xx and then HELO refused too) moves on to the next host."""
    bad = servers.listen(Script(ehlo=ehlo, helo="554 5.7.1 not you either"))
    f = servers.listen()
    session = await open_(dest(hop(bad, "mx1.dest.test"), hop(f, "mx2.dest.test")))
    assert session.hop.host == "mx2.dest.test"
    assert bad.connections[0].verbs() == (["EHLO"] if ehlo.startswith("4") else ["EHLO", "HELO"])
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_open_helo_fallback_after_ehlo_5xx(servers: Servers) -> None:
    """EHLO unknown (502): HELO, and then no extensions (no pipelining, bare MAIL)."""
    f = servers.listen(Script(ehlo="502 5.5.2 what is EHLO"))
    session = await open_(dest(hop(f)))
    assert session.extensions.keywords == {}
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT
    server = f.connections[0]
    assert server.verbs()[:5] == ["EHLO", "HELO", "MAIL", "RCPT", "DATA"]
    assert server.line("MAIL") == "MAIL FROM:<sender@origin.test>"
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_open_all_hosts_fail_last_reason(servers: Servers) -> None:
    """No host takes the session: HopsFailed with the last host's trouble, in Postfix words."""
    busy = servers.listen(Script(greeting="421 4.3.2 too busy"))
    closed = free_port()
    error = await hops_failed(dest(hop(busy, "mx1.dest.test"), hop(closed, "mx2.dest.test")))
    assert str(error) == f"connect to mx2.dest.test[127.0.0.1]:{closed}: Connection refused"
    error = await hops_failed(dest(hop(closed, "mx1.dest.test"), hop(busy, "mx2.dest.test")))
    assert str(error) == "host mx2.dest.test[127.0.0.1] refused to talk to me: 421 4.3.2 too busy"
    assert not error.permanent
    error = await hops_failed(dest())
    assert str(error) == "no host to try"


@pytest_twisted.ensureDeferred
async def test_open_greeting_timeout_next_host(servers: Servers) -> None:
    """A host that never greets is given up after the command timeout (Clock), then the
    next one is tried."""
    silent = servers.listen(Script(greeting=None))
    f = servers.listen()
    clock = Clock()
    clocked = ClockedReactor(clock)
    d = open_session(
        clocked,
        dest(hop(silent, "mx1.dest.test"), hop(f, "mx2.dest.test")),
        settings(timeouts=Timeouts(command=300)),
        read_chunk,
    )
    await clocked.when(lambda: len(clock.getDelayedCalls()) == 1)  # waiting for the greeting
    clock.advance(299)
    assert not d.called
    clock.advance(1)
    session = await within(d)
    assert session.hop.host == "mx2.dest.test"
    await within(silent.connections[0].closed)
    session.abort()


@pytest_twisted.ensureDeferred
async def test_source_address_bound(servers: Servers) -> None:
    """source_address: the connection comes from that address."""
    f = servers.listen()
    session = await open_(dest(hop(f)), settings(source_address="127.0.1.1"))
    assert f.connections[0].peer == "127.0.1.1"
    await quit_(session, f)
    session = await open_(dest(hop(f)))
    assert f.connections[1].peer == "127.0.0.1"
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_client_connection_sends_without_nagle(servers: Servers) -> None:
    """TCP_NODELAY on the relay's connection: each command (and the body after 354) goes out
    when it is written, not after the server's delayed ACK of the write before it."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    sock = session.protocol.transport.getHandle()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    await quit_(session, f)


# ---------------------------------------------------------------------------- STARTTLS


TLS_TEXT = re.compile(r"^TLSv1\.[23] [A-Z0-9_-]+$")


@pytest_twisted.ensureDeferred
async def test_tls_may_uses_starttls_when_offered(ours: Any, pki: dict[str, Path]) -> None:
    """tls = may with our server offering STARTTLS: encrypted, and the results say how; the
    server's Received data (envelope.tls) agrees."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    session = await open_(dest(hop(server.port)), settings(tls="may"))
    assert TLS_TEXT.match(session.tls), session.tls
    assert "STARTTLS" not in session.extensions  # the EHLO after TLS
    (r,) = await transfer(session, message("user1@example.test"))
    assert r.outcome is Outcome.SENT and r.tls == session.tls
    (stored,) = server.sink.committed
    assert stored.envelope.tls == session.tls
    assert stored.envelope.recipients[0].address == "user1@example.test"
    assert bytes(stored.data).endswith(BODY)  # unstuffed again, behind our Received
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_tls_may_without_starttls_plaintext(servers: Servers) -> None:
    """tls = may with a server not offering STARTTLS: plaintext, tls empty."""
    f = servers.listen()
    session = await open_(dest(hop(f)), settings(tls="may"))
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT and r.tls == "" and session.tls == ""
    assert "STARTTLS" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_tls_may_starttls_refused_goes_on_plaintext(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """tls = may and STARTTLS answered 454: the session goes on in plaintext."""
    tls = make_tls_options(pki["cert"], pki["key"])
    f = servers.listen(Script(tls=tls, starttls="454 4.7.0 TLS not available now"))
    session = await open_(dest(hop(f)), settings(tls="may"))
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT and r.tls == ""
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_tls_none_never_starttls(servers: Servers, pki: dict[str, Path]) -> None:
    """tls = none: no STARTTLS even when offered."""
    f = servers.listen(Script(tls=make_tls_options(pki["cert"], pki["key"])))
    session = await open_(dest(hop(f)), settings(tls="none"))
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT and r.tls == ""
    assert "STARTTLS" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest.mark.parametrize("mode", ["encrypt", "verify"])
@pytest_twisted.ensureDeferred
async def test_tls_required_not_offered_hops_failed(
    servers: Servers, pki: dict[str, Path], mode: str
) -> None:
    """tls = encrypt/verify with a server not offering STARTTLS: HopsFailed, nothing sent."""
    f = servers.listen()
    error = await hops_failed(dest(hop(f)), settings(tls=mode, ca_file=pki["ca"]))
    assert str(error) == f"TLS is required, but was not offered by host {HOST}[127.0.0.1]"
    assert "MAIL" not in f.connections[0].verbs()
    await within(f.connections[0].closed)


@pytest_twisted.ensureDeferred
async def test_tls_encrypt_starttls_refused_hops_failed(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """tls = encrypt and STARTTLS refused: HopsFailed quoting the refusal."""
    tls = make_tls_options(pki["cert"], pki["key"])
    f = servers.listen(Script(tls=tls, starttls="454 4.7.0 TLS not available now"))
    error = await hops_failed(dest(hop(f)), settings(tls="encrypt"))
    assert str(error) == f"host {HOST}[127.0.0.1] refused STARTTLS: 454 4.7.0 TLS not available now"


@pytest_twisted.ensureDeferred
async def test_tls_encrypt_any_certificate_accepted(ours: Any, pki: dict[str, Path]) -> None:
    """tls = encrypt encrypts without checking who answers (a name the certificate lacks)."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    session = await open_(dest(hop(server.port, "not-the-name.test")), settings(tls="encrypt"))
    assert TLS_TEXT.match(session.tls)
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_tls_verify_right_ca_and_name_ok(ours: Any, pki: dict[str, Path]) -> None:
    """tls = verify with our CA as ca_file and the certificate's name: delivered, tls told."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    session = await open_(dest(hop(server.port)), settings(tls="verify", ca_file=pki["ca"]))
    assert TLS_TEXT.match(session.tls), session.tls
    (r,) = await transfer(session, message("user1@example.test"))
    assert r.outcome is Outcome.SENT and TLS_TEXT.match(r.tls)
    assert server.sink.committed[0].envelope.tls == r.tls
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_tls_verify_wrong_ca_hops_failed(ours: Any, pki: dict[str, Path]) -> None:
    """tls = verify with another CA: HopsFailed naming the certificate failure; no mail."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    error = await hops_failed(
        dest(hop(server.port)), settings(tls="verify", ca_file=pki["other_ca"])
    )
    text = str(error)
    assert text.startswith(f"host {HOST}[127.0.0.1]: TLS certificate verification failed"), text
    assert "not issued by a trusted CA" in text, text
    assert server.sink.begun == []


@pytest_twisted.ensureDeferred
async def test_tls_verify_wrong_name_hops_failed(ours: Any, pki: dict[str, Path]) -> None:
    """tls = verify and a host name the certificate does not carry: HopsFailed naming it."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    other = dest(hop(server.port, "other.dest.test"))
    error = await hops_failed(other, settings(tls="verify", ca_file=pki["ca"]))
    text = str(error)
    assert text.startswith("host other.dest.test[127.0.0.1]: TLS certificate verification failed")
    assert "the certificate is not for this host name" in text, text
    assert server.sink.begun == []


@pytest_twisted.ensureDeferred
async def test_tls_verify_unreadable_ca_file_hops_failed(
    servers: Servers, pki: dict[str, Path], tmp_path: Path
) -> None:
    """tls = verify with a ca_file that cannot be read: HopsFailed saying so."""
    f = servers.listen(Script(tls=make_tls_options(pki["cert"], pki["key"])))
    error = await hops_failed(
        dest(hop(f)), settings(tls="verify", ca_file=tmp_path / "missing.pem")
    )
    assert str(error) == (
        f"TLS with host {HOST}[127.0.0.1] impossible: cannot read ca_file: No such file or directory"
    )


@pytest_twisted.ensureDeferred
async def test_starttls_plaintext_behind_220_dropped(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """Plaintext the server pipelines behind its 220 to STARTTLS is not read as a reply
    (CVE-2011-0411's client side): the EHLO reply is the one inside TLS."""
    f = servers.listen(
        Script(
            tls=make_tls_options(pki["cert"], pki["key"]),
            after_starttls=b"250-injected\r\n250 AUTH PLAIN\r\n",
            extensions_tls=["PIPELINING", "X-INSIDE-TLS"],
        )
    )
    session = await open_(dest(hop(f)), settings(tls="verify", ca_file=pki["ca"]))
    assert "X-INSIDE-TLS" in session.extensions and "AUTH" not in session.extensions
    assert TLS_TEXT.match(session.tls)
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT
    assert f.connections[0].verbs() == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA"]
    await quit_(session, f)


# ---------------------------------------------------------------------------- AUTH


@pytest.mark.parametrize("mechanisms", [("PLAIN", "LOGIN"), ("LOGIN",)], ids=["plain", "login"])
@pytest_twisted.ensureDeferred
async def test_smarthost_auth_our_server(ours: Any, mechanisms: tuple[str, ...]) -> None:
    """To a smarthost, smarthost_login logs in (PLAIN when offered, else LOGIN); our
    submission server records the login on the message it took."""
    server = ours(
        SUBMISSION,
        mechanisms=mechanisms,
        plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    s = settings(smarthost_login=("user1@example.test", "secret"))
    session = await open_(dest(hop(server.port), smarthost=True), s)
    msg = message("someone@far.test", mail_from="user1@example.test")
    (r,) = await transfer(session, msg)
    assert r.outcome is Outcome.SENT, r
    (stored,) = server.sink.committed
    assert stored.envelope.auth_user == "user1@example.test"
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_smarthost_auth_wrong_password_hops_failed(ours: Any) -> None:
    """Refused credentials: HopsFailed quoting the server, no mail."""
    server = ours(SUBMISSION, plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    s = settings(smarthost_login=("user1@example.test", "wrong"))
    error = await hops_failed(dest(hop(server.port), smarthost=True), s)
    assert str(error).startswith(
        f"SASL authentication failed; server {HOST}[127.0.0.1] said: 535 "
    ), str(error)
    assert server.sink.begun == []


@pytest_twisted.ensureDeferred
async def test_smarthost_auth_wire_bytes(servers: Servers) -> None:
    """The AUTH lines on the wire: PLAIN in one line, LOGIN as user then password."""
    plain = servers.listen(Script(extensions=["PIPELINING", "AUTH LOGIN PLAIN"]))
    login = servers.listen(Script(extensions=["PIPELINING", "AUTH LOGIN"]))
    s = settings(smarthost_login=("user1@example.test", "secret"))
    for f in (plain, login):
        session = await open_(dest(hop(f), smarthost=True), s)
        await quit_(session, f)
    assert plain.connections[0].commands[1] == auth_plain("user1@example.test", "secret")
    assert login.connections[0].commands[1:4] == [
        "AUTH LOGIN",
        "dXNlcjFAZXhhbXBsZS50ZXN0",
        "c2VjcmV0",
    ]


@pytest_twisted.ensureDeferred
async def test_no_auth_to_a_destination_that_is_not_the_smarthost(servers: Servers) -> None:
    """smarthost_login is for the smarthost only: an MX that offers AUTH gets none."""
    f = servers.listen(Script(extensions=["PIPELINING", "AUTH PLAIN LOGIN"]))
    s = settings(smarthost_login=("user1@example.test", "secret"))
    session = await open_(dest(hop(f), smarthost=False), s)
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT
    assert "AUTH" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_smarthost_without_plain_or_login_hops_failed(servers: Servers) -> None:
    """A smarthost offering neither PLAIN nor LOGIN: HopsFailed, no password sent."""
    f = servers.listen(Script(extensions=["PIPELINING", "AUTH CRAM-MD5"]))
    s = settings(smarthost_login=("user1@example.test", "secret"))
    error = await hops_failed(dest(hop(f), smarthost=True), s)
    assert str(error) == (
        f"SASL authentication to host {HOST}[127.0.0.1] impossible: no PLAIN or LOGIN offered"
    )
    assert "AUTH" not in f.connections[0].verbs()
