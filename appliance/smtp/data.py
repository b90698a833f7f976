"""The DATA and BDAT readers: end-of-data detection, dot-unstuffing and the checks on every line.

This is the smuggling defence. DATA ends only at CRLF.CRLF; a bare CR or LF anywhere in the
body, a text line longer than the limit, or more bytes than the size limit make the whole
message refused at its end, and the reader never gives control back to command mode early
(so `<LF>.<LF>` and `<CR>.<CR>` find nothing to smuggle commands into). No I/O: the session
feeds it the bytes received and writes out what it hands back.

BDAT (RFC 3030 CHUNKING) needs no end marker: the command gives each chunk's length, so its
bytes can never be read as commands. The same line checks still apply (ChunkReader): a message
taken in by BDAT may leave by DATA, where a bare LF is what smuggling is made of.
"""

from __future__ import annotations

CRLF = b"\r\n"


class DataReader:
    """DATA in bulk: finds CRLF.CRLF, un-stuffs dots, and checks every line on the way.

    Only complete lines are consumed; an unfinished line stays in the caller's buffer unless
    it is already longer than the limit, in which case it is dropped and remembered as a
    problem (the message will be refused at its end, we never leave DATA early).
    """

    def __init__(self, *, max_size: int, max_line: int) -> None:
        self.max_size = max_size
        self.max_line = max_line  # octets including CRLF
        self.size = 0  # message bytes after un-stuffing
        self.at_line_start = True
        self.bare_newline = False
        self.line_too_long = False
        self.too_big = False
        self.disk_full = False  # set by the writer: the message could not be stored
        self.pending = b""  # checked, un-stuffed bytes not yet handed out

    @property
    def failed(self) -> bool:
        """The message will be refused: nothing more is worth writing."""
        return self.bare_newline or self.line_too_long or self.too_big or self.disk_full

    def problem(self) -> tuple[int, str, str] | None:
        """The reply refusing the message at its end (code, enhanced, text), or None."""
        if self.disk_full:
            return 452, "4.3.1", "Insufficient system storage"
        if self.too_big:
            return 552, "5.3.4", "Message size exceeds fixed maximum message size"
        if self.bare_newline:
            return 550, "5.5.2", "Message contains bare <CR> or <LF>, refused"
        if self.line_too_long:
            return 500, "5.5.6", f"Message line longer than {self.max_line} octets, refused"
        return None

    def feed(self, buf: bytes) -> tuple[bool, bytes]:
        """Take what can be taken from buf; return (end seen, leftover bytes).

        The leftover is what the caller keeps: an unfinished line to feed again with the
        next bytes, or after the end marker whatever followed it (pipelined commands).
        """
        if not self.at_line_start:
            # in the middle of an over-long line: drop up to its CRLF
            end = buf.find(CRLF)
            if end < 0:
                return False, buf[-1:] if buf.endswith(b"\r") else b""
            buf = buf[end + 2 :]
            self.at_line_start = True
        probe = CRLF + buf  # the data starts at a line start: make ".\r\n" findable there
        # the first line starting with a dot (at buf[dot]); the end marker is one of those,
        # so a buffer without any (most of a body) costs one search, not two
        dot = probe.find(b"\r\n.")
        marker = probe.find(b"\r\n.\r\n", dot) if dot >= 0 else -1
        if marker >= 0:
            chunk = buf[:marker]  # complete lines, CRLF of the last one included
            rest = buf[marker + 3 :]
            self.take(chunk, stuffed=dot < marker)
            return True, rest
        last = buf.rfind(CRLF)
        if last < 0:
            if len(buf) > self.max_line:
                self.line_too_long = True
                self.at_line_start = False
                return False, b""
            return False, buf
        chunk, rest = buf[: last + 2], buf[last + 2 :]
        self.take(chunk, stuffed=0 <= dot < len(chunk))
        if len(rest) > self.max_line:
            self.line_too_long = True
            self.at_line_start = False
            rest = b"\r" if rest.endswith(b"\r") else b""
        return False, rest

    def take(self, chunk: bytes, stuffed: bool | None = None) -> None:
        """Check and un-stuff complete lines (chunk ends in CRLF or is empty). stuffed: whether
        a line of chunk starts with a dot, if the caller has looked already (None: look)."""
        if not chunk:
            return
        # every CR and every LF belongs to a CRLF: #CR + #LF == 2 #CRLF (each is >= #CRLF),
        # with the CRs and LFs counted in one pass (translate) instead of two counts
        crlf = chunk.count(CRLF)
        if len(chunk) - len(chunk.translate(None, b"\r\n")) != 2 * crlf:
            self.bare_newline = True
        if len(chunk) > self.max_line and not self.line_too_long:
            self.line_too_long = self._has_long_line(chunk)
        if stuffed is None:
            stuffed = b"\r\n." in chunk or chunk.startswith(b".")
        if stuffed:
            chunk = (CRLF + chunk).replace(b"\r\n.", b"\r\n")[2:]
        self.size += len(chunk)
        if self.size > self.max_size:
            self.too_big = True
        if not self.failed:
            self.pending += chunk

    def _has_long_line(self, chunk: bytes) -> bool:
        """Whether a line of chunk (complete lines) is longer than max_line with its CRLF.

        The last CRLF within max_line octets of a line start ends every line that starts in
        that window, all short enough; none there means the line at the start is too long.
        So the scan moves about max_line octets per step (in C), not one line.
        """
        window, pos, end = self.max_line, 0, len(chunk)
        while pos < end:
            last = chunk.rfind(CRLF, pos, pos + window)
            if last < 0:
                return True
            pos = last + 2
        return False

    def take_output(self) -> bytes:
        """The message bytes checked so far and not yet taken (empty once it has failed)."""
        out, self.pending = self.pending, b""
        return out


class ChunkReader(DataReader):
    """BDAT's chunks, taken as they are (no dot-stuffing) with DATA's checks on every line.

    A line may span chunks: its start waits in `carry` until its CRLF comes. A last line
    without CRLF is given one at the end (finish()), as DATA would have it.
    """

    def __init__(self, *, max_size: int, max_line: int) -> None:
        super().__init__(max_size=max_size, max_line=max_line)
        self.carry = b""
        self.received = 0  # octets of all chunks so far, as the client counts them

    def feed_bytes(self, data: bytes) -> None:
        """Bytes of a chunk, any number."""
        self.received += len(data)
        buf = self.carry + data if self.carry else data
        cut = buf.rfind(CRLF) + 2  # 1: no CRLF at all
        if cut < 2:
            cut = 0
        self.take(buf[:cut], stuffed=False)
        self.carry = buf[cut:]
        if len(self.carry) > self.max_line:
            self.line_too_long = True
            if b"\n" in self.carry or b"\r" in self.carry[:-1]:  # no CRLF in it: bare ones
                self.bare_newline = True
            self.carry = b"\r" if self.carry.endswith(b"\r") else b""  # it may start a CRLF

    def finish(self) -> None:
        """The LAST chunk is in: check and hand out the last line, with a CRLF if it had none."""
        if self.carry and not self.failed:
            self.take(self.carry + CRLF, stuffed=False)
        self.carry = b""
