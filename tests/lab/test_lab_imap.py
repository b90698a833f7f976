"""IMAP in the two-domain lab: user1@163.com writes to user3@sina.com; user3 reads it over
IMAPS on the sina appliance through a recording proxy (the tutorial's tshark proof: neither
the password nor the body on the wire), marks it seen and moves it to Archive; POP3 and a
new IMAP session then agree on where it is and what flags it has."""

from __future__ import annotations

import imaplib
import poplib
import re
import ssl
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    PASSWORDS,
    Appliance,
    hostname_of,
    lab_with,
    running,
    send_on,
    submission,
    token,
    wait_message,
)
from tests.lab.recording import RecordingProxy, hidden, tls_records

TIMEOUT = 10.0
USER = "user3@sina.com"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    labs = lab_with(tmp_path_factory.mktemp("imap"), both={"queue": {"retry_schedule": "1s"}})
    with running(labs) as appliances:
        yield appliances


def verified(a: Appliance) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.check_hostname = False  # the tests dial an IP; the SAN is checked by hand
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def imaps(a: Appliance, host: str | None = None, port: int | None = None) -> imaplib.IMAP4_SSL:
    c = imaplib.IMAP4_SSL(
        host or a.ip, port or a.ports[993], ssl_context=verified(a), timeout=TIMEOUT
    )
    names = [v for k, v in c.sock.getpeercert()["subjectAltName"] if k == "DNS"]
    assert hostname_of(a) in names, names
    c.login(USER, PASSWORDS[USER])
    return c


def send_secret(a: Appliance, rcpt: str) -> tuple[str, bytes]:
    """user1@163.com -> rcpt through 163's submission port; (token, the unique body line)."""
    tok = token()
    secret = f"nobody on the wire may read this {tok[4:]}".encode()
    data = (
        (
            f"From: user1@163.com\r\nTo: {rcpt}\r\nSubject: imap {tok}\r\n"
            f"Message-ID: <{tok}@lab.test>\r\n\r\nfirst line\r\n"
        ).encode()
        + secret
        + b"\r\nlast line\r\n"
    )
    with submission(a, "user1@163.com") as c:
        send_on(c, "user1@163.com", [rcpt], data)
    return tok, secret


def uid_of(c: imaplib.IMAP4, tok: str) -> bytes:
    typ, data = c.uid("SEARCH", "HEADER", "Message-ID", f"<{tok}@lab.test>")
    assert typ == "OK" and data[0], data
    (uid,) = data[0].split()
    return uid


def test_relayed_mail_read_seen_moved_over_imaps_and_pop3_agrees(lab) -> None:
    a, sina = lab["163"], lab["sina"]
    tok, secret = send_secret(a, USER)
    wait_message(sina, USER, tok)
    with RecordingProxy((sina.ip, sina.ports[993])) as proxy:
        c = imaps(sina, "127.0.0.1", proxy.port)
        try:
            assert c.select("INBOX")[0] == "OK"
            uid = uid_of(c, tok)
            typ, data = c.uid("FETCH", uid, "(BODY[] FLAGS)")
            assert typ == "OK" and secret in data[0][1], data
            assert b"\\Seen" in data[1], data  # BODY[] (not PEEK) set it
            typ, data = c.uid("STORE", uid, "+FLAGS", "(\\Seen)")
            assert typ == "OK" and b"\\Seen" in data[0], data
            typ, data = c.uid("MOVE", uid, "Archive")
            assert typ == "OK", data
            _, copyuid = c.response("COPYUID")  # RFC 4315: <validity> <old uid> <new uid>
            assert copyuid[0] and copyuid[0].split()[1] == uid, copyuid
        finally:
            c.logout()
        rec = proxy.only_session()
    client, server = bytes(rec.client), bytes(rec.server)
    assert len(server) > len(secret) + 1000, len(server)
    assert hidden(client + server, USER, tok, secret) == []
    for stream in (client, server):
        types = tls_records(stream)
        assert types[0] == 22 and 23 in types, types

    # POP3 reads the INBOX: the message left it
    p = poplib.POP3_SSL(sina.ip, sina.ports[995], context=verified(sina), timeout=TIMEOUT)
    try:
        p.user(USER)
        p.pass_(PASSWORDS[USER])
        tops = [b"\r\n".join(p.top(n + 1, 0)[1]) for n in range(len(p.list()[1]))]
        assert not any(tok.encode() in t for t in tops)
    finally:
        p.quit()
    # on disk: in Archive's cur/ with the S flag; a new IMAP session sees it there, \Seen
    archive = sina.maildir(USER) / ".Archive" / "cur"
    names = [n.name for n in archive.iterdir() if tok.encode() in n.read_bytes()]
    assert len(names) == 1 and re.search(r":2,[A-Za-z]*S", names[0]), names
    c = imaps(sina)
    try:
        assert c.select("Archive")[0] == "OK"
        uid = uid_of(c, tok)
        typ, data = c.uid("FETCH", uid, "(FLAGS)")
        assert typ == "OK" and b"\\Seen" in data[0], data
        c.select("INBOX")
        typ, data = c.uid("SEARCH", "HEADER", "Message-ID", f"<{tok}@lab.test>")
        assert typ == "OK" and data == [b""], data
    finally:
        c.logout()
