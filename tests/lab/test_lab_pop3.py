"""POP3 in the two-domain lab: mail relayed from 163 read over POP3S at sina, the tutorial's
tshark proof as a recording proxy, the snapshot while SMTP delivers, RETR latency, and the
mailbox under kill -9.

One lab for the module. The tests before the kill -9 ones leave both appliances as they were;
the last two kill one appliance with SIGKILL (reaping it, as init or systemd would) and start
it again on the same config and ports, so they come last and leave both running. Clients are
Python's poplib with the appliance's own CA verified; the certificate is for mail.<domain>.com
and the tests dial the IP, so the host name check is off and the SAN is checked by hand
(certified()).

Mailboxes, so the tests do not see each other's mail: user3@sina.com (cross-domain read),
user1@163.com (the recorded sessions; later the lock held across a kill), user2@163.com (SMTP
during a session, RETR latency), user4@sina.com (kill -9 during UPDATE).
"""

from __future__ import annotations

import os
import poplib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store.lock import LOCK_NAME, LockInfo
from tests.lab.conftest import (
    PASSWORDS,
    Appliance,
    hostname_of,
    lab_with,
    maillog,
    running,
    send_on,
    start,
    status_line,
    submission,
    submit,
    token,
    wait_for,
    wait_line,
    wait_message,
    with_token,
)
from tests.lab.recording import RecordingProxy, deliver_secret, hidden, tls_records

POP_TIMEOUT = 10.0  # every poplib socket operation


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both appliances as etc/ has them (POP3 on 110 + STLS and POP3S on 995)."""
    labs = lab_with(tmp_path_factory.mktemp("pop3"), both={"queue": {"retry_schedule": "1s"}})
    with running(labs) as appliances:
        yield appliances


# ------------------------------------------------------------------------------ POP3 clients


def verified(a: Appliance) -> ssl.SSLContext:
    """a's CA verified; the name is checked by certified() (tests dial the IP)."""
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def certified(a: Appliance, sock: socket.socket) -> None:
    """The peer's certificate (already verified against a's CA) names mail.<a's domain>."""
    assert isinstance(sock, ssl.SSLSocket), sock
    names = [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]
    assert hostname_of(a) in names, names


def pop3s(
    a: Appliance, user: str, *, host: str | None = None, port: int | None = None
) -> poplib.POP3_SSL:
    """A logged-in POP3S session on a (995, or host:port such as a proxy in front of it)."""
    p = poplib.POP3_SSL(
        host or a.ip, port or a.ports[995], context=verified(a), timeout=POP_TIMEOUT
    )
    try:
        certified(a, p.sock)
        p.user(user)
        p.pass_(PASSWORDS[user])
    except BaseException:
        p.close()
        raise
    return p


def pop3_stls(
    a: Appliance, user: str, *, host: str | None = None, port: int | None = None
) -> poplib.POP3:
    """A logged-in POP3 session on a's 110 after STLS (or on host:port in front of it)."""
    p = poplib.POP3(host or a.ip, port or a.ports[110], timeout=POP_TIMEOUT)
    try:
        assert "STLS" in p.capa()
        p.stls(context=verified(a))
        certified(a, p.sock)
        p.user(user)
        p.pass_(PASSWORDS[user])
    except BaseException:
        p.close()
        raise
    return p


def octets(lines: list[bytes]) -> bytes:
    """A message as RETR gave it (dot-stuffing undone by poplib), CRLF line ends back on:
    the very bytes of the Maildir file."""
    return b"".join(line + b"\r\n" for line in lines)


def listing(p: poplib.POP3) -> dict[int, int]:
    return {int(n): int(size) for n, size in (line.split() for line in p.list()[1])}


def uidls(p: poplib.POP3) -> dict[int, bytes]:
    return {int(n): uid for n, uid in (line.split() for line in p.uidl()[1])}


def retr_all(p: poplib.POP3) -> dict[int, bytes]:
    """number -> the message's bytes, for every message of the session."""
    return {n: octets(p.retr(n)[1]) for n in listing(p)}


def maildir_files(a: Appliance, address: str) -> dict[str, bytes]:
    """'new/<name>' or 'cur/<name>' -> bytes, for every message file of the INBOX."""
    root = a.maildir(address)
    out = {}
    for sub in ("new", "cur"):
        folder = root / sub
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            out[f"{sub}/{path.name}"] = path.read_bytes()
    return out


def lock_path(a: Appliance, address: str) -> Path:
    return a.maildir(address) / LOCK_NAME


def kill9(a: Appliance) -> int:
    """SIGKILL the appliance and reap it (as init or systemd would); its pid."""
    assert a.proc is not None and a.proc.poll() is None, f"{a.name} is not running"
    pid = a.proc.pid
    a.proc.kill()
    a.proc.wait(timeout=10)
    return pid


def assert_stale_lock_of(a: Appliance, address: str, pid: int) -> None:
    """The lock left in address's Maildir names this appliance's host and the dead pid."""
    found = lock_path(a, address)
    info = LockInfo.parse(found.read_bytes())
    assert info is not None, found.read_bytes()
    assert (info.host, info.pid) == (hostname_of(a), pid), info
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def quick_login(a: Appliance, user: str) -> tuple[poplib.POP3_SSL, float]:
    """A POP3S login on a freshly started a, and how long it took."""
    t0 = time.monotonic()
    p = pop3s(a, user)
    return p, time.monotonic() - t0


# ------------------------------------------------------------------------------ 1. cross-domain


def test_pop3s_relayed_message_read_at_sina_deleted_and_logged(lab) -> None:
    """user1@163.com -> user3@sina.com over the relay; user3 reads it over POP3S at sina, DELE + QUIT, both logged."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user3@sina.com"], tok)
    delivered = wait_message(sina, "user3@sina.com", tok)
    sent = status_line(a, qid, "user3@sina.com", "sent")
    assert f"relay=mail.sina.com[{sina.ip}]:{a.ports[25]}" in sent, sent

    p = poplib.POP3_SSL(sina.ip, sina.ports[995], context=verified(sina), timeout=POP_TIMEOUT)
    try:
        certified(sina, p.sock)  # mail.sina.com, issued by sina's CA
        assert p.getwelcome().startswith(b"+OK")
        p.user("user3@sina.com")
        assert p.pass_("user3pass").startswith(b"+OK")
        count, total = p.stat()
        sizes = listing(p)
        # find it by its headers (TOP 0) so the session RETRs exactly one message
        ours = [n for n in sizes if f"Subject: lab {tok}".encode() in p.top(n, 0)[1]]
        assert len(ours) == 1, (ours, sizes)
        (n,) = ours
        data = octets(p.retr(n)[1])
        assert tok.encode() in data
        assert data == delivered, "RETR differs from the Maildir file"
        assert len(data) == sizes[n]  # LIST counts the octets RETR sends (unstuffed)
        assert p.dele(n).startswith(b"+OK")
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()
    assert with_token(sina, "user3@sina.com", tok) == []
    assert [m for m in maildir_files(sina, "user3@sina.com").values() if tok.encode() in m] == []

    user = re.escape("user3@sina.com")
    wait_line(
        sina,
        rf"pop3-login: Login: user=<{user}>, method=\w+, rip=127\.[\d.]+, lip={re.escape(sina.ip)}, TLS",
    )
    logout = wait_line(
        sina,
        rf"pop3\({user}\): Disconnected: Logged out top=\d+/\d+, retr=1/(\d+), "
        rf"del=1/{count}, size={total}\b",
    )
    assert int(logout.group(1)) >= len(data), logout.group(0)  # dot-stuffed on the wire


# ------------------------------------------------------------------------------ 2. tshark proof


def retr_secret(p: poplib.POP3, tok: str, secret: bytes) -> int:
    """RETR the message with the token; assert it holds the secret line; its number."""
    for n in sorted(listing(p), reverse=True):  # the newest has the highest number
        lines = p.retr(n)[1]
        if f"Subject: sniff {tok}".encode() in lines:
            assert secret in lines, lines
            return n
    raise AssertionError(f"no message {tok} in the maildrop")


def test_pop3s_through_recording_proxy_nothing_in_clear(lab) -> None:
    """A POP3S login + RETR through a recording proxy: only TLS records, no password, user name or body line."""
    a = lab["163"]
    user = "user1@163.com"
    tok, secret = deliver_secret(a, user)
    with RecordingProxy((a.ip, a.ports[995])) as proxy:
        p = pop3s(a, user, host="127.0.0.1", port=proxy.port)
        try:
            n = retr_secret(p, tok, secret)
            p.dele(n)
            assert p.quit().startswith(b"+OK")
        finally:
            p.close()
        rec = proxy.only_session()
    client, server = bytes(rec.client), bytes(rec.server)
    assert client[:2] == b"\x16\x03" and server[:2] == b"\x16\x03", (client[:8], server[:8])
    assert len(server) > len(secret) + 1000, len(server)  # it did carry the session
    assert hidden(client + server, user, tok, secret) == []
    for stream in (client, server):
        types = tls_records(stream)
        assert types[0] == 22 and 23 in types, types  # a handshake, then application data
    assert with_token(a, user, tok) == []


def test_pop3_stls_through_recording_proxy_hides_login_and_body(lab) -> None:
    """110 + STLS through the proxy: only CAPA/STLS in clear, then TLS; a plaintext session (the control) shows all."""
    a = lab["163"]
    user = "user1@163.com"
    tok, secret = deliver_secret(a, user)
    with RecordingProxy((a.ip, a.ports[110])) as proxy:
        p = pop3_stls(a, user, host="127.0.0.1", port=proxy.port)
        try:
            retr_secret(p, tok, secret)  # kept: the control session reads it again
            assert p.quit().startswith(b"+OK")
        finally:
            p.close()
        rec = proxy.only_session()
    client, server = bytes(rec.client), bytes(rec.server)
    # in clear: the client's CAPA and STLS, the greeting, the capabilities and STLS's +OK
    # (poplib's stls() sends a CAPA of its own before STLS)
    clear_client, sep, tls_client = client.partition(b"STLS\r\n")
    assert sep and set(clear_client.split(b"\r\n")) <= {b"CAPA", b""}, client[:40]
    go = b"+OK Begin TLS negotiation now\r\n"
    assert go in server, server[:400]
    clear_server, tls_server = server.split(go, 1)
    assert clear_server.startswith(b"+OK ") and b"\r\nSTLS\r\n" in clear_server, clear_server
    assert tls_client[:2] == b"\x16\x03" and tls_server[:2] == b"\x16\x03"
    assert hidden(client + server, user, tok, secret) == []
    for stream in (tls_client, tls_server):
        types = tls_records(stream)
        assert types[0] == 22 and 23 in types, types

    # the control: without STLS (loopback is a plaintext network in the lab) the same
    # recorder sees the user name, the password and the body line
    with RecordingProxy((a.ip, a.ports[110])) as proxy:
        q = poplib.POP3("127.0.0.1", proxy.port, timeout=POP_TIMEOUT)
        try:
            q.user(user)
            q.pass_(PASSWORDS[user])
            n = retr_secret(q, tok, secret)
            q.dele(n)
            assert q.quit().startswith(b"+OK")
        finally:
            q.close()
        plain = proxy.only_session()
    seen = hidden(bytes(plain.client) + bytes(plain.server), user, tok, secret)
    assert seen == [PASSWORDS[user].encode(), user.encode(), secret, tok.encode()], seen
    assert with_token(a, user, tok) == []


# ------------------------------------------------------------------------------ 3. SMTP meanwhile


def test_pop3_open_session_keeps_snapshot_while_smtp_delivers(lab) -> None:
    """A message delivered during an open session: STAT/LIST/UIDL keep the login snapshot; the next session sees n+1."""
    a = lab["163"]
    user = "user2@163.com"
    first_tok = token()
    submit(a, "user1@163.com", [user], first_tok)  # so n >= 1
    wait_message(a, user, first_tok)
    p = pop3s(a, user)
    try:
        n, total = p.stat()
        assert n >= 1
        sizes, uids = listing(p), uidls(p)
        assert len(sizes) == n and sum(sizes.values()) == total

        tok = token()
        submit(a, "user1@163.com", [user], tok)
        wait_message(a, user, tok)  # on disk, in new/, while the session is open

        assert p.stat() == (n, total)
        assert listing(p) == sizes
        assert uidls(p) == uids
        with pytest.raises(poplib.error_proto, match=r"no such message"):
            p.retr(n + 1)
        assert [m for m, data in retr_all(p).items() if tok.encode() in data] == []
        assert p.noop().startswith(b"+OK")
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()

    q = pop3s(a, user)
    try:
        count, _ = q.stat()
        assert count == n + 1
        after = uidls(q)
        assert {k: v for k, v in after.items() if k <= n} == uids  # stable UIDLs, same order
        new = [m for m, data in retr_all(q).items() if tok.encode() in data]
        assert new == [n + 1], new  # the newest message is numbered last
        assert after[n + 1] not in uids.values()
        assert q.quit().startswith(b"+OK")
    finally:
        q.close()


def test_pop3s_retr_of_small_message_answers_without_delayed_ack_stall(lab) -> None:
    """RETR and TOP of 1 KB messages answer in milliseconds, not after the client's 40 ms delayed ACK (Nagle)."""
    a = lab["163"]
    user = "user2@163.com"
    tok = token()
    with submission(a, "user1@163.com") as c:
        for i in range(5):
            body = f"small {i} {tok}\r\n".encode() + (b"z" * 78 + b"\r\n") * 12
            send_on(c, "user1@163.com", [user], f"Subject: small {tok}\r\n\r\n".encode() + body)
    wait_for(lambda: len(with_token(a, user, tok)) == 5, what=f"5 messages {tok}")
    p = pop3s(a, user)
    try:
        timings: dict[str, list[float]] = {"RETR": [], "TOP": [], "LIST": []}
        ours = sorted(listing(p))[-5:]  # the newest five
        for n in ours:
            for verb, call, args in (
                ("RETR", p.retr, (n,)),
                ("TOP", p.top, (n, 0)),
                ("LIST", p.list, (n,)),
            ):
                t0 = time.perf_counter()
                answer = call(*args)
                timings[verb].append((time.perf_counter() - t0) * 1000)
                if verb == "RETR":
                    assert tok.encode() in octets(answer[1])
        for n in ours:
            p.dele(n)
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()
    median = {verb: sorted(ms)[len(ms) // 2] for verb, ms in timings.items()}
    # LIST (one write) shows what the machine does; RETR and TOP write the +OK, then the
    # message a worker-thread round trip later: with Nagle on, that write waits for the
    # ACK of the first, which the client delays by 40 ms (Linux's delayed ACK)
    assert median["RETR"] < 20 and median["TOP"] < 20, (
        f"median ms {median}; all: { {v: [round(x, 1) for x in ms] for v, ms in timings.items()} }"
    )


# ------------------------------------------------------------------------------ 4. kill -9 in UPDATE

KILL_DELAYS = (0.0, 0.0005, 0.001, 0.002, 0.005)  # s between sending QUIT and SIGKILL
BATCH = 30


def deliver_batch(a: Appliance, user: str, tok: str, count: int = BATCH) -> None:
    """count messages to user over one submission session on a (from user itself), of
    0.3-20 KB, each with a dot-led line and the token; waits until all are in new/."""
    with submission(a, user) as c:
        for i in range(count):
            lines = [f"line {j:04d} of message {i} {tok} " + "y" * 40 for j in range(i * 37 % 300)]
            data = (
                f"From: {user}\r\nTo: {user}\r\nSubject: batch {tok} #{i}\r\n\r\n".encode()
                + b".dot-led line\r\n"
                + "\r\n".join(lines).encode()
                + f"\r\nend of {i} {tok}\r\n".encode()
            )
            send_on(c, user, [user], data)
    wait_for(
        lambda: len(with_token(a, user, tok)) == count, what=f"{count} messages {tok} for {user}"
    )


def test_pop3_kill_minus_9_during_update_every_message_gone_or_intact(lab) -> None:
    """DELE 30, QUIT, SIGKILL 0-5 ms later, restart: each message gone or byte-identical, the dead holder's lock no obstacle."""
    sina = lab["sina"]
    user = "user4@sina.com"
    outcomes = []
    for delay in KILL_DELAYS:
        tok = token()
        deliver_batch(sina, user, tok)
        p = pop3s(sina, user)
        try:
            assert p.stat()[0] == BATCH  # only this round's messages (earlier rounds cleaned up)
            sizes, uids = listing(p), uidls(p)
            before = retr_all(p)
            on_disk = maildir_files(sina, user)
            assert sorted(before.values()) == sorted(on_disk.values())
            assert {n: len(data) for n, data in before.items()} == sizes
            uid_of = {data: uids[n] for n, data in before.items()}
            for n in sizes:
                p.dele(n)
            p.sock.sendall(b"QUIT\r\n")  # UPDATE starts once the appliance reads it
            if delay:
                time.sleep(delay)
            pid = kill9(sina)
        finally:
            p.close()

        left = maildir_files(sina, user)
        half = [name for name, data in left.items() if data not in uid_of]
        assert half == [], f"delay {delay}: not one of the 30 as RETR gave it: {half}"
        assert len(set(left.values())) == len(left), "a message twice"
        locked = lock_path(sina, user).exists()
        if locked:
            assert_stale_lock_of(sina, user, pid)
        outcomes.append((delay, BATCH - len(left), len(left), locked))

        start(sina)
        q, took = quick_login(sina, user)  # the dead process's lock does not block
        try:
            assert took < 5, took
            assert q.stat()[0] == len(left)
            again, now = retr_all(q), uidls(q)
            assert sorted(again.values()) == sorted(left.values())
            for n, data in again.items():
                assert now[n] == uid_of[data], "a UIDL changed across the restart"
            for n in again:
                q.dele(n)
            assert q.quit().startswith(b"+OK")
        finally:
            q.close()
        assert maildir_files(sina, user) == {}
        assert not lock_path(sina, user).exists()
        if locked:
            assert f"process {pid} on mail.sina.com is gone" in "".join(sina.output)
    print(f"\nkill -9 in UPDATE (delay s, gone, intact, lock left): {outcomes}")


# ------------------------------------------------------------------------------ 5. lock across kill


def test_pop3_lock_of_killed_appliance_no_obstacle_after_restart(lab) -> None:
    """A session holds the lock ([IN-USE] for a second), kill -9, restart: a new session gets in at once, nothing deleted."""
    a = lab["163"]
    user = "user1@163.com"
    tok = token()
    submit(a, "user2@163.com", [user], tok)
    wait_message(a, user, tok)
    holder = pop3s(a, user)
    try:
        count, total = holder.stat()
        uids = uidls(holder)
        for n in uids:
            holder.dele(n)  # never applied: the session never reaches UPDATE
        with pytest.raises(poplib.error_proto, match=r"IN-USE"):
            pop3s(a, user)
        wait_line(a, rf"pop3-login: Mailbox in use: user=<{re.escape(user)}>")
        pid = kill9(a)
    finally:
        holder.close()
    assert_stale_lock_of(a, user, pid)
    files = maildir_files(a, user)

    start(a)
    p, took = quick_login(a, user)
    try:
        assert took < 5, took  # at once, not after the 300 s stale timeout
        assert p.stat() == (count, total)
        assert uidls(p) == uids
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()
    assert not lock_path(a, user).exists()
    assert sorted(maildir_files(a, user).values()) == sorted(files.values())
    assert f"process {pid} on mail.163.com is gone" in "".join(a.output)
    assert "pop3-login: Login: user=<user1@163.com>" in maillog(a)
