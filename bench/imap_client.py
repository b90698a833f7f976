"""The IMAP client of bench/imap_load.py: one command at a time on a socket, and the loads
it runs (UID FETCH 1:*, FETCH one by one, a mix), each checking what it got back."""

from __future__ import annotations

import re
import socket

MIX = ("header", "body", "seen", "search", "unseen", "noop", "flags")  # the mix load's operations
LITERAL = re.compile(rb"\{(\d+)\}$")
FETCH = re.compile(rb"\* (\d+) FETCH ")


class IMAPError(Exception):
    pass


def show(b: bytes, n: int = 160) -> str:
    return repr(b[:n]) + ("..." if len(b) > n else "")


class Conn:
    """A minimal IMAP4rev1 client on a socket: one command at a time, read to its tagged
    answer; untagged responses come back as (text, literals), a literal's place in the text
    kept as its {n}."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.tags = 0
        hello = self.line()
        if not hello.startswith(b"* OK"):
            raise IMAPError(f"greeting {show(hello)}")

    def _fill(self) -> None:
        if self.pos > 1 << 20:
            del self.buf[: self.pos]
            self.pos = 0
        data = self.sock.recv(262144)
        if not data:
            raise IMAPError("server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                out = bytes(self.buf[self.pos : i])
                self.pos = i + 2
                return out
            self._fill()

    def literal(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self._fill()
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def response(self) -> tuple[bytes, list[bytes]]:
        text = self.line()
        lits: list[bytes] = []
        while text.endswith(b"}"):
            m = LITERAL.search(text)
            if m is None:
                break
            lits.append(self.literal(int(m[1])))
            text += self.line()
        return text, lits

    def command(self, cmd: bytes, shown: bytes | None = None) -> list[tuple[bytes, list[bytes]]]:
        """Send cmd, read to its tagged answer; IMAPError unless that is OK."""
        self.tags += 1
        tag = b"a%d " % self.tags
        self.sock.sendall(tag + cmd + b"\r\n")
        untagged = []
        while True:
            text, lits = self.response()
            if text.startswith(tag):
                if not text.startswith(b"OK", len(tag)):
                    last = f", last untagged {show(untagged[-1][0])}" if untagged else ""
                    raise IMAPError(f"{show(shown or cmd)} -> {show(text)}{last}")
                if self.pos == len(self.buf):
                    self.buf.clear()
                    self.pos = 0
                return untagged
            if text.startswith(b"+"):
                raise IMAPError(f"{show(shown or cmd)} -> unexpected continuation {show(text)}")
            untagged.append((text, lits))

    def login(self, user: str, password: str) -> None:
        self.command(f'LOGIN "{user}" "{password}"'.encode(), f'LOGIN "{user}" ***'.encode())

    def select(self) -> int:
        for text, _ in self.command(b"SELECT INBOX"):
            if text.endswith(b" EXISTS"):
                return int(text.split()[1])
        raise IMAPError("SELECT INBOX: no * n EXISTS")

    def logout(self) -> None:
        try:
            self.command(b"LOGOUT")
        except (OSError, IMAPError):
            pass  # the server may close first
        self.sock.close()


def bad(cmd: bytes, why: str, got: list[tuple[bytes, list[bytes]]]) -> IMAPError:
    first = show(got[0][0]) if got else "nothing untagged"
    return IMAPError(f"{cmd.decode()}: {why} (first untagged: {first}, {len(got)} in all)")


def fetch_all(conn: Conn, count: int, bodies: frozenset[bytes]) -> int:
    cmd = b"UID FETCH 1:* (FLAGS BODY.PEEK[])"
    got = conn.command(cmd)
    n = 0
    for text, lits in got:
        if FETCH.match(text):
            if len(lits) != 1 or lits[0] not in bodies:
                raise bad(cmd, f"a body not as written: {show(text)}", got)
            if b"UID " not in text or b"FLAGS (" not in text:
                raise bad(cmd, f"no UID or FLAGS: {show(text)}", got)
            n += 1
    if n != count:
        raise bad(cmd, f"{n} messages, expected {count}", got)
    return n


def fetch_one(conn: Conn, cmd: bytes, n: int, wanted: frozenset[bytes]) -> bytes:
    got = conn.command(cmd)
    head = b"* %d FETCH " % n
    lits = [lits for text, lits in got if text.startswith(head)]
    if len(lits) != 1 or len(lits[0]) != 1 or lits[0][0] not in wanted:
        raise bad(cmd, "not one FETCH with the literal written", got)
    return next(text for text, _ in got if text.startswith(head))


def fetch_each(conn: Conn, count: int, bodies: frozenset[bytes], progress, idx: int) -> int:
    for i in range(1, count + 1):
        fetch_one(conn, b"FETCH %d (BODY.PEEK[])" % i, i, bodies)
        progress[idx] = i
    return count


def mix(conn: Conn, count: int, ops: int, bodies, headers, progress, idx: int) -> int:
    every = set(range(1, count + 1))
    for k in range(ops):
        cycle, op = divmod(k, len(MIX))
        n = (cycle * 37) % count + 1
        what = MIX[op]
        if what == "header":
            text = fetch_one(conn, b"FETCH %d (FLAGS BODY.PEEK[HEADER])" % n, n, headers)
            if b"FLAGS (" not in text or b"\\Seen" in text:
                raise IMAPError(f"FETCH {n} (FLAGS BODY.PEEK[HEADER]): flags {show(text)}")
        elif what == "body":
            fetch_one(conn, b"FETCH %d BODY.PEEK[]" % n, n, bodies)
        elif what in ("seen", "unseen"):
            cmd = b"STORE %d %sFLAGS (\\Seen)" % (n, b"+" if what == "seen" else b"-")
            got = conn.command(cmd)
            for text, _ in got:
                if text.startswith(b"* %d FETCH " % n) and (b"\\Seen" in text) != (what == "seen"):
                    raise bad(cmd, f"flags after it {show(text)}", got)
        elif what == "search":
            cmd = b"SEARCH UNSEEN"
            got = conn.command(cmd)
            found = [t for t, _ in got if t.startswith(b"* SEARCH")]
            if len(found) != 1 or {int(x) for x in found[0].split()[2:]} != every - {n}:
                raise bad(cmd, f"expected all {count} but {n}", got)
        elif what == "noop":
            conn.command(b"NOOP")
        else:
            cmd = b"UID FETCH 1:* (FLAGS)"
            got = conn.command(cmd)
            flags = [t for t, _ in got if FETCH.match(t)]
            if len(flags) != count or any(b"\\Seen" in t or b"UID " not in t for t in flags):
                raise bad(cmd, f"{len(flags)} FETCH, expected {count} without \\Seen", got)
        progress[idx] = k + 1
    return ops
