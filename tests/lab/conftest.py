"""The two-domain lab (163 on 127.0.1.1, sina on 127.0.1.4) on high ports, and its helpers.

Each test module builds the labs it needs with `lab_with()` (a copy of etc/ with its ports
moved, keys set and zone records added before start) and shares a running lab through a
module-scoped fixture where its tests do not disturb each other. The helpers submit mail the
way a user does (587, STARTTLS verified against the appliance's own CA, then AUTH), wait on
Maildirs and maillogs with a deadline, parse DSNs with the email package, and run the
`mailappliance queue` admin command as a subprocess.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, TypeVar

from appliance.queue.inspect import list_queue
from tests.integration.conftest import Appliance, make_lab, set_keys

CLI = str(Path(sys.executable).parent / "mailappliance")
PASSWORDS = {
    "user1@163.com": "user1pass",
    "user2@163.com": "user2pass",
    "user3@sina.com": "user3pass",
    "user4@sina.com": "user4pass",
}
DEADLINE = 20.0  # the longest any test waits for one event
READY = re.compile(r"mailappliance \S+ ready")

T = TypeVar("T")

__all__ = ["Appliance", "set_keys"]


# ------------------------------------------------------------------------------ building labs


def lab_with(
    tmp_path: Path,
    *,
    both: dict[str, dict[str, object]] | None = None,
    keys: dict[str, dict[str, dict[str, object]]] | None = None,
    zone_records: dict[str, str] | None = None,
    files: dict[str, dict[str, str]] | None = None,
) -> dict[str, Appliance]:
    """make_lab(), then: `both` {section: {key: value}} on both INI files, `keys` {"163":
    {section: {...}}} on one, `zone_records` {"sina": "lines"} appended to that appliance's own
    zone file, `files` {"sina": {"local-host-names": "lines"}} appended to its policy files."""
    lab = make_lab(tmp_path)
    for a in lab.values():
        for section, values in (both or {}).items():
            set_keys(a.ini, section, **values)
    for name, sections in (keys or {}).items():
        for section, values in sections.items():
            set_keys(lab[name].ini, section, **values)
    for name, records in (zone_records or {}).items():
        zone = lab[name].ini.parent / name / f"{domain_of(name)}.zone"
        zone.write_text(zone.read_text() + records.strip("\n") + "\n")
    for name, appended in (files or {}).items():
        for filename, lines in appended.items():
            path = lab[name].ini.parent / name / filename
            path.write_text(path.read_text() + lines.strip("\n") + "\n")
    return lab


def domain_of(name: str) -> str:
    return {"163": "163.com", "sina": "sina.com"}[name]


def hostname_of(a: Appliance) -> str:
    return f"mail.{domain_of(a.name)}"


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port over TCP (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------ running


def start(a: Appliance, timeout: float = DEADLINE) -> Appliance:
    """Start a and wait (bounded) for its ready line (Appliance.start, a shorter deadline)."""
    return a.start(timeout)


@contextmanager
def running(appliances: dict[str, Appliance]) -> Iterator[dict[str, Appliance]]:
    """Start every appliance; stop them all however the block ends."""
    try:
        for a in appliances.values():
            start(a)
        yield appliances
    finally:
        for a in appliances.values():
            a.stop()


# ------------------------------------------------------------------------------ waiting


def wait_for(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "") -> T:
    """Poll predicate until it gives something true (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what or predicate}")
        time.sleep(0.05)


def maillog(a: Appliance) -> str:
    path = a.state / "maillog"
    return path.read_text(errors="replace") if path.exists() else ""


def lines_of(a: Appliance, queue_id: str) -> list[str]:
    """The maillog lines about one queue id (the text after `mailappliance/x[pid]: `)."""
    out = []
    for line in maillog(a).splitlines():
        text = line.split("]: ", 1)[-1]
        if text.startswith(f"{queue_id}: "):
            out.append(text)
    return out


def wait_line(a: Appliance, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
    """The first maillog match of the regex pattern, waiting for it (bounded)."""
    rx = re.compile(pattern)
    return wait_for(lambda: rx.search(maillog(a)), timeout, f"{a.name} maillog: {pattern}")


def status_line(a: Appliance, queue_id: str, rcpt: str, status: str = r"\w+") -> str:
    """The maillog status line of queue_id for rcpt (waiting for one with that status)."""
    m = wait_line(
        a,
        rf"{re.escape(queue_id)}: to=<{re.escape(rcpt)}>, [^\n]*status={status} [^\n]*",
    )
    return m.group(0)


def queued_as(line: str) -> str:
    """The next hop's queue id in a sent line: '... status=sent (250 2.0.0 Ok: queued as X)'."""
    m = re.search(r"status=sent \(250 2\.0\.0 Ok: queued as ([0-9A-F]+)\)$", line)
    assert m, line
    return m.group(1)


def with_token(a: Appliance, address: str, token: str) -> list[bytes]:
    return [m for m in a.messages(address) if token.encode() in m]


def wait_message(a: Appliance, address: str, token: str, timeout: float = DEADLINE) -> bytes:
    """The one message in address's Maildir on a that carries token (waiting for it)."""
    found = wait_for(
        lambda: with_token(a, address, token), timeout, f"{token} in {address} on {a.name}"
    )
    assert len(found) == 1, f"{len(found)} copies of {token} for {address}"
    return found[0]


def settled(a: Appliance) -> bool:
    """Nothing in a's queue (incoming/ or deferred/): every message done. Read in-process
    with the code behind `queue list` (the CLI costs a second a call; polled here)."""
    return not list_queue(a.state / "queue")


# ------------------------------------------------------------------------------ sending


def token() -> str:
    return "tok-" + uuid.uuid4().hex[:12]


def message(sender: str, rcpts: Iterable[str], tok: str, subject: str = "lab") -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(rcpts)
    m["Subject"] = f"{subject} {tok}"
    m["Message-ID"] = f"<{tok}@lab.test>"
    m.set_content(f"hello from the lab, {tok}\n")
    return m.as_bytes(policy=email.policy.SMTP)


def tls_context(a: Appliance) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@contextmanager
def submission(a: Appliance, user: str) -> Iterator[smtplib.SMTP]:
    """A logged-in submission session on a's port 587 (STARTTLS verified, then AUTH)."""
    c = smtplib.SMTP(timeout=10, local_hostname="client.test")
    try:
        c.connect(a.ip, a.ports[587])
        c._host = hostname_of(a)  # the name starttls() verifies the certificate for
        c.starttls(context=tls_context(a))
        c.ehlo("client.test")
        c.login(user, PASSWORDS[user])
        yield c
    finally:
        try:
            c.quit()
        except (smtplib.SMTPException, OSError):
            c.close()


def send_on(
    c: smtplib.SMTP,
    sender: str,
    rcpts: Iterable[str],
    data: bytes,
    mail_options: Iterable[str] = (),
    rcpt_options: Iterable[str] = (),
) -> str:
    """One transaction on an open session; every recipient must be taken; the queue id."""
    code, text = c.mail(sender, list(mail_options))
    assert code == 250, (code, text)
    for r in rcpts:
        code, text = c.rcpt(r, list(rcpt_options))
        assert code == 250, (r, code, text)
    code, text = c.data(data)
    assert code == 250, (code, text)
    m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-F]+)", text)
    assert m, text
    return m.group(1).decode()


def submit(
    a: Appliance,
    sender: str,
    rcpts: list[str],
    tok: str,
    *,
    mail_options: Iterable[str] = (),
    rcpt_options: Iterable[str] = (),
    subject: str = "lab",
) -> str:
    """Submit one message as sender (logged in as sender) on a; its queue id on a."""
    with submission(a, sender) as c:
        return send_on(
            c, sender, rcpts, message(sender, rcpts, tok, subject), mail_options, rcpt_options
        )


# ------------------------------------------------------------------------------ the admin command


def queue_cli(a: Appliance, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """`mailappliance --config <a's ini> queue ARGS...` as a subprocess."""
    out = subprocess.run(
        [CLI, "--config", str(a.ini), "queue", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check:
        assert out.returncode == 0, (args, out.returncode, out.stdout, out.stderr)
    return out


def queue_entry(a: Appliance, queue_id: str) -> str:
    """The lines of `queue list` about queue_id, up to its blank line ('' if not listed)."""
    lines = queue_cli(a, "list", check=True).stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(queue_id):
            end = lines.index("", i) if "" in lines[i:] else len(lines)
            return "\n".join(lines[i:end])
    return ""


# ------------------------------------------------------------------------------ DSNs


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.default)


def dsn_report(data: bytes) -> tuple[Message, str, Message, list[Message], Message]:
    """A DSN as (the message, its readable text, per-message fields, per-recipient field
    blocks, the returned part); asserts it is an RFC 3464 multipart/report."""
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert len(parts) == 3, [p.get_content_type() for p in parts]
    readable, status, returned = parts
    assert readable.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, blocks
    return msg, readable.get_content(), blocks[0], blocks[1:], returned


def unfolded(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).strip()


def dsns_for(a: Appliance, address: str, tok: str) -> list[bytes]:
    """The notices (from the null sender) in address's Maildir that return the token."""
    return [m for m in with_token(a, address, tok) if m.startswith(b"Return-Path: <>\r\n")]


# ------------------------------------------------------------------------------ a scripted next hop


class FakeSMTP:
    """A tiny SMTP server on 127.0.0.1 for next-hop behaviour the appliances do not have:
    a greeting that refuses (`greeting="421 ..."`), an ESMTP without DSN and STARTTLS, a
    recipient always refused for now (`rcpt_reply="451 ..."`).

    Records each connection's peer address and each transaction (MAIL line, RCPT lines,
    data). Used as a `with` block; the threads end with it.
    """

    def __init__(
        self,
        port: int,
        greeting: str = "220 fake.test ESMTP",
        ehlo: Iterable[str] = ("8BITMIME", "SIZE 10240000", "PIPELINING"),
        rcpt_reply: str = "250 2.1.5 Ok",
    ) -> None:
        self.port = port
        self.greeting = greeting
        self.rcpt_reply = rcpt_reply
        self.ehlo = list(ehlo)
        self.peers: list[tuple[str, int]] = []
        self.transactions: list[dict[str, Any]] = []
        self.rcpt_lines: list[str] = []  # every RCPT command, taken or not
        self.lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def __enter__(self) -> FakeSMTP:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        s.settimeout(0.2)
        self._sock = s
        t = threading.Thread(target=self._accept, name="fake-smtp", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.peers.append(peer)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        f = conn.makefile("rb")

        def send(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        try:
            send(self.greeting)
            if not self.greeting.startswith("220"):
                return
            current: dict[str, Any] = {}
            while not self._stop.is_set():
                raw = f.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb = line[:4].upper()
                if verb in ("EHLO", "HELO"):
                    lines = ["fake.test", *self.ehlo] if verb == "EHLO" else ["fake.test"]
                    for i, text in enumerate(lines):
                        send(("250 " if i == len(lines) - 1 else "250-") + text)
                elif verb == "MAIL":
                    current = {"mail": line, "rcpts": [], "data": b""}
                    send("250 2.1.0 Ok")
                elif verb == "RCPT":
                    current.setdefault("rcpts", []).append(line)
                    with self.lock:
                        self.rcpt_lines.append(line)
                    send(self.rcpt_reply)
                elif verb == "DATA":
                    if not self.rcpt_reply.startswith("2"):
                        send("554 5.5.1 no valid recipients")
                        continue
                    send("354 go ahead")
                    data = bytearray()
                    while True:
                        chunk = f.readline()
                        if not chunk or chunk == b".\r\n":
                            break
                        data += chunk
                    current["data"] = bytes(data)
                    with self.lock:
                        self.transactions.append(current)
                        n = len(self.transactions)
                    send(f"250 2.0.0 Ok: queued as FAKE{n:04d}")
                elif verb == "RSET":
                    send("250 2.0.0 Ok")
                elif verb == "QUIT":
                    send("221 2.0.0 Bye")
                    return
                else:
                    send("502 5.5.2 not here")
        except OSError:
            return
        finally:
            f.close()
            conn.close()
