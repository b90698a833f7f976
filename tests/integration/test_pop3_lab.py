"""POP3 on a running appliance: Python's poplib over 995 (implicit TLS) and 110 + STLS, with
the appliance's CA verified, reading what SMTP delivered into the same Maildir."""

from __future__ import annotations

import poplib
import smtplib
import ssl
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Appliance, make_lab, running


@pytest.fixture(scope="module")
def pop_lab(tmp_path_factory) -> Iterator[Appliance]:
    lab = make_lab(tmp_path_factory.mktemp("pop3"))
    with running({"163": lab["163"]}) as apps:
        yield apps["163"]


def verified(a: Appliance) -> ssl.SSLContext:
    """The appliance's CA verified; the name is checked by certified() (tests dial the IP)."""
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.check_hostname = False
    return ctx


def certified(sock: ssl.SSLSocket) -> None:
    names = [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]
    assert "mail.163.com" in names, names


def deliver(a: Appliance, rcpt: str, tag: str) -> None:
    with smtplib.SMTP(a.ip, a.ports[587], timeout=10) as c:
        c.starttls(context=verified(a))
        c.login("user1@163.com", "user1pass")
        text = f"Subject: {tag}\r\n\r\n.leading dot\r\n{tag}\r\n".encode()
        c.sendmail("user1@163.com", [rcpt], text)


def pop3s(a: Appliance, user: str, password: str) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL(a.ip, a.ports[995], context=verified(a), timeout=10)
    certified(p.sock)
    p.user(user)
    p.pass_(password)
    return p


def pop3_stls(a: Appliance) -> poplib.POP3:
    p = poplib.POP3(a.ip, a.ports[110], timeout=10)
    assert "STLS" in p.capa()
    p.stls(context=verified(a))
    certified(p.sock)
    return p


def test_pop3s_retr_delivered_message_then_delete_gone(pop_lab) -> None:
    """Mail delivered by SMTP is listed and retrieved whole over POP3S (certificate verified
    for mail.163.com), dot-stuffing undone by the client; DELE + QUIT removes it, so the next
    session (110 + STLS) no longer lists its UIDL."""
    a = pop_lab
    tag = uuid.uuid4().hex
    deliver(a, "user2@163.com", tag)
    p = pop3s(a, "user2@163.com", "user2pass")
    count, _size = p.stat()
    assert count >= 1
    sizes = dict(tuple(map(int, line.split())) for line in p.list()[1])
    found = None
    for n in sizes:
        _resp, lines, octets = p.retr(n)
        if tag.encode() in lines:
            found = n
            assert b".leading dot" in lines
            assert octets >= sizes[n]
    assert found is not None, "the delivered message is not in the maildrop"
    uidl = p.uidl(found).split()[2]
    p.dele(found)
    p.quit()
    q = pop3_stls(a)
    q.user("user2@163.com")
    q.pass_("user2pass")
    assert uidl not in [line.split()[1] for line in q.uidl()[1]]
    q.quit()


def test_pop3_stls_second_session_in_use_until_first_quits(pop_lab) -> None:
    """110 with STLS: a second session on an open mailbox gets [IN-USE]; once the first
    has quit, the next one gets in."""
    a = pop_lab
    first = pop3_stls(a)
    first.user("user1@163.com")
    first.pass_("user1pass")
    second = pop3_stls(a)
    second.user("user1@163.com")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_("user1pass")
    second.close()
    first.quit()
    third = pop3_stls(a)
    third.user("user1@163.com")
    assert third.pass_("user1pass").startswith(b"+OK")
    third.quit()
