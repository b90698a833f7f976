"""The lab's tshark: a recording TCP proxy, and what a recorded session may not show.

Used by the POP3 and IMAP lab tests: a client goes through RecordingProxy to an appliance's
port, and the test then checks that the bytes each way are TLS records only (tls_records) and
hold neither the password, the user name, nor the unique body line of the message read
(deliver_secret, hidden).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

from tests.lab.conftest import (
    DEADLINE,
    PASSWORDS,
    Appliance,
    send_on,
    submission,
    token,
    wait_for,
    wait_message,
)

CONNECT_TIMEOUT = 10.0


@dataclass
class Recorded:
    """One connection through the proxy: every byte each way, in order."""

    client: bytearray = field(default_factory=bytearray)  # client -> appliance
    server: bytearray = field(default_factory=bytearray)  # appliance -> client
    done: threading.Event = field(default_factory=threading.Event)


class RecordingProxy:
    """A TCP proxy on 127.0.0.1:<free port> to target, recording both directions (the lab's
    tshark). Bytes are recorded before they are passed on, so what a client has received is
    already in the record. Used as a `with` block; its threads end with it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sessions: list[Recorded] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()

    def __enter__(self) -> RecordingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass
        for t in list(self._threads):
            t.join(5)
        self._listener.close()

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="recording-proxy")
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                client.close()
                continue
            rec = Recorded()
            with self._lock:
                self.sessions.append(rec)
                self._sockets += [client, upstream]
            ends = threading.Barrier(2, action=rec.done.set)
            self._spawn(self._pump, client, upstream, rec.client, ends)
            self._spawn(self._pump, upstream, client, rec.server, ends)

    def _pump(
        self, src: socket.socket, dst: socket.socket, record: bytearray, ends: threading.Barrier
    ) -> None:
        src.settimeout(DEADLINE)
        try:
            while True:
                try:
                    chunk = src.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                record += chunk
                try:
                    dst.sendall(chunk)
                except OSError:
                    break
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        finally:
            try:
                ends.wait(DEADLINE)
            except threading.BrokenBarrierError:
                pass

    def only_session(self) -> Recorded:
        """The one connection carried so far, once both directions have ended."""
        wait_for(lambda: self.sessions, what="a connection through the proxy")
        assert len(self.sessions) == 1, len(self.sessions)
        rec = self.sessions[0]
        assert rec.done.wait(DEADLINE), "the proxied connection did not end"
        return rec


TLS_CONTENT_TYPES = {20, 21, 22, 23}  # change_cipher_spec, alert, handshake, application_data


def tls_records(stream: bytes) -> list[int]:
    """The content types of the TLS records the stream consists of, asserting that every byte
    of it is inside a well-formed record (nothing outside TLS, nothing torn)."""
    types, i = [], 0
    while i < len(stream):
        header = stream[i : i + 5]
        assert len(header) == 5, f"torn record header at {i}: {header!r}"
        kind, major, minor, length = header[0], header[1], header[2], int.from_bytes(header[3:5])
        assert kind in TLS_CONTENT_TYPES and major == 3 and minor in (1, 3), (
            f"not a TLS record at {i}: {stream[i : i + 16]!r}"
        )
        assert length <= 2**14 + 256, (i, length)
        i += 5 + length
        assert i <= len(stream), f"record at {i - 5 - length} runs past the stream"
        types.append(kind)
    return types


def deliver_secret(a: Appliance, rcpt: str) -> tuple[str, bytes]:
    """A message to rcpt whose body holds one unique line (and nothing of it in the headers
    but the token); (token, that line)."""
    tok = token()
    secret = f"the body line nobody on the wire may read {tok[4:]}-{os.urandom(6).hex()}".encode()
    data = (
        (
            f"From: user2@163.com\r\nTo: {rcpt}\r\nSubject: sniff {tok}\r\n"
            f"Message-ID: <{tok}@lab.test>\r\n\r\n"
        ).encode()
        + b"first line\r\n"
        + secret
        + b"\r\n.a dot-led line\r\nlast line\r\n"
    )
    with submission(a, "user2@163.com") as c:
        send_on(c, "user2@163.com", [rcpt], data)
    wait_message(a, rcpt, tok)
    return tok, secret


def hidden(stream: bytes, user: str, tok: str, secret: bytes) -> list[bytes]:
    """Which of the things nobody on the wire may read appear in stream."""
    needles = [PASSWORDS[user].encode(), user.encode(), secret, tok.encode()]
    return [x for x in needles if x in stream]
