"""The lab appliance under abuse, over real sockets: slow clients holding every slot, a client
dripping bytes, forty parallel password guesses, and the block surviving a restart.

The 163 appliance runs with small limits so each case finishes in seconds: 60 SMTP slots
(stress from 48), a 3 s request deadline, a 2 s stress deadline. All clients are on loopback.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Appliance, make_lab, running

LIMITS = """
max_connections = 60
max_connections_per_ip = 100
command_timeout = 3s
stress_timeout = 2s
"""


@pytest.fixture(scope="module")
def abuse_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    lab = make_lab(tmp_path_factory.mktemp("abuse"))
    ini = lab["163"].ini
    text = ini.read_text()
    ini.write_text(re.sub(r"^\[smtp\]\n", "[smtp]\n" + LIMITS.lstrip(), text, flags=re.M))
    with running(lab):
        yield lab


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Client:
    """A raw SMTP client: whole replies, bounded by a socket timeout."""

    def __init__(self, a: Appliance, timeout: float = 10) -> None:
        self.sock = socket.create_connection((a.ip, a.ports[25]), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> str:
        """The last line of one (possibly multi-line) reply; '' once the server closed."""
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            if len(line) < 4 or line[3] != "-":
                return line

    def send(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def test_fresh_client_gets_220_while_slow_clients_hold_every_slot(abuse_lab) -> None:
    """Sixty clients (every slot) each trickle half a command and stall; a new client still gets its 220
    within 10 s (at once: the longest-idle slow client is closed for it)."""
    a = abuse_lab["163"]
    slow = []
    try:
        for _ in range(60):
            c = Client(a)
            assert c.reply().startswith("220")
            c.sock.sendall(b"EH")
            slow.append(c)
        started = time.monotonic()
        fresh = Client(a, timeout=10)
        greeting = fresh.reply()
        waited = time.monotonic() - started
        assert greeting.startswith("220 mail.163.com"), greeting
        assert waited < 10
        assert fresh.send("EHLO fresh.test").startswith("250 ")
        fresh.close()
        closed = slow[0].reply()
        assert closed in (
            "421 4.7.0 mail.163.com Error: too many connections, closing idle session",
            "421 4.4.2 mail.163.com Error: timeout exceeded",  # or its stress deadline
        )
    finally:
        for c in slow:
            c.close()


def test_client_dripping_a_byte_a_second_is_cut(abuse_lab) -> None:
    """One byte a second of a NOOP that never ends: cut at the 3 s request deadline, though
    every byte came well within the idle limit (5 min)."""
    a = abuse_lab["163"]
    c = Client(a)
    try:
        assert c.reply().startswith("220")
        assert c.send("EHLO drip.test").startswith("250 ")
        started = time.monotonic()
        c.sock.settimeout(1.0)
        answer = b""
        for byte in b"NOOP" + b" " * 20:  # bounded: 24 s at most
            try:
                c.sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                answer += c.sock.recv(1000)
            except TimeoutError:
                continue
            if answer.endswith(b"\r\n"):
                break
        assert answer.startswith(b"421 4.4.2 mail.163.com Error: timeout exceeded"), answer
        assert time.monotonic() - started < 8
    finally:
        c.close()


def guess(a: Appliance, barrier: threading.Barrier, user: str, password: str) -> str:
    c = Client(a, timeout=60)
    try:
        c.reply()
        c.send("EHLO guesser.test")
        barrier.wait(timeout=30)
        return c.send("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
    finally:
        c.close()


def test_forty_parallel_guesses_then_right_password_no_235_even_after_restart(
    abuse_lab,
) -> None:
    """Forty simultaneous connections from one IP, 39 wrong passwords and the right one last:
    no 235, at most ten 535s; the block is logged with IP and user, and a restart keeps it."""
    a = abuse_lab["163"]
    barrier = threading.Barrier(39)
    results: list[str] = []
    lock = threading.Lock()

    def run(user: str, password: str) -> None:
        answer = guess(a, barrier, user, password)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=run, args=("user2@163.com", f"wrong{i}")) for i in range(39)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    right = guess(a, threading.Barrier(1), "user1@163.com", "user1pass")
    assert len(results) == 39
    assert not right.startswith("235"), right
    assert right == "421 4.7.0 mail.163.com Error: too many failed logins"
    assert not any(r.startswith("235") for r in results)
    assert sum(r.startswith("535") for r in results) <= 10
    assert sum(r.startswith("421 4.7.0") for r in results) >= 29
    maillog = (a.state / "maillog").read_text()
    assert re.search(r"warning: 127\.0\.0\.1: 10 failed logins .*user=user2@163\.com", maillog)

    a.stop()
    a.start()
    again = guess(a, threading.Barrier(1), "user1@163.com", "user1pass")
    assert again == "421 4.7.0 mail.163.com Error: too many failed logins"


def test_twenty_parallel_logins_right_password_one_client_all_get_in(abuse_lab) -> None:
    """Twenty sessions of one client log in at the same moment with the right password (a
    client opening many connections): every one gets 235; the ones beyond the throttle's
    ten slots wait for a slot instead of being refused, and no block is logged."""
    a = abuse_lab["163"]
    source = ("127.0.1.4", 0)  # a client of its own: other tests block 127.0.0.1
    barrier = threading.Barrier(20)
    results: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        with smtplib.SMTP(a.ip, a.ports[587], timeout=30, source_address=source) as c:
            c.ehlo("parallel.test")
            barrier.wait(timeout=30)
            try:
                code, text = c.login("user1@163.com", "user1pass")
                answer = f"{code} {text.decode()}"
            except smtplib.SMTPException as e:
                answer = str(e)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 20
    assert all(r.startswith("235") for r in results), results
    maillog = (a.state / "maillog").read_text()
    assert not re.search(r"warning: 127\.0\.1\.4: \d+ failed logins", maillog)
