"""RETR and TOP on the wire (sans-IO): dot-stuffing, line ends, and TOP's cut.

The store gives a message's bytes as delivered (CRLF line ends); they go out in chunks read
one at a time, so each transformation keeps the little state a chunk boundary needs.
"""

from __future__ import annotations

import re

CHUNK = 64 * 1024
_BARE_LF = re.compile(rb"(?<!\r)\n")


class DotStuffer:
    """RFC 1939 section 3: a line starting with '.' gets another '.'; bare LF becomes CRLF
    (defensively: the store keeps CRLF); end() closes the multi-line answer."""

    def __init__(self) -> None:
        self.at_line_start = True
        self.last_cr = False  # the previous chunk ended with CR (its LF may start this one)

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        head = b""
        if self.last_cr and chunk[:1] == b"\n":
            head, chunk = b"\n", chunk[1:]
            self.at_line_start = True
        self.last_cr = chunk.endswith(b"\r") if chunk else False
        if not chunk:
            return head
        body = chunk
        if body.count(b"\n") != body.count(b"\r\n"):  # (two C scans: cheaper than the regex)
            body = _BARE_LF.sub(b"\r\n", body)
        body = body.replace(b"\n.", b"\n..")
        if self.at_line_start and body[:1] == b".":
            body = b"." + body
        self.at_line_start = body.endswith(b"\n")
        return head + body

    def end(self) -> bytes:
        if self.at_line_start:
            return b".\r\n"
        return b"\r\n.\r\n"


def stuffed(message: bytes) -> tuple[bytes, bytes]:
    """A whole message as RETR sends it, and the end of the multi-line answer to follow it:
    what DotStuffer gives for one chunk, in a few C calls."""
    if message.count(b"\n") != message.count(b"\r\n"):
        message = _BARE_LF.sub(b"\r\n", message)
    body = message.replace(b"\n.", b"\n..")
    if body[:1] == b".":
        body = b"." + body
    return body, (b".\r\n" if not body or body.endswith(b"\n") else b"\r\n.\r\n")


class TopCut:
    """TOP n k: the headers, the blank line after them and k body lines of the raw bytes."""

    def __init__(self, body_lines: int) -> None:
        self.left = body_lines
        self.in_headers = True
        self.done = False
        self.line_len = 0  # octets of the current line so far (without its LF)
        self.first = b""  # its first octet, if any

    def feed(self, chunk: bytes) -> bytes:
        """The part of chunk to send (all of it until the cut is reached)."""
        if self.done:
            return b""
        pos = 0
        while True:
            nl = chunk.find(b"\n", pos)
            seg = chunk[pos:] if nl < 0 else chunk[pos:nl]
            if seg and self.line_len == 0:
                self.first = seg[:1]
            self.line_len += len(seg)
            if nl < 0:
                return chunk
            blank = self.line_len == 0 or (self.line_len == 1 and self.first == b"\r")
            self.line_len = 0
            self.first = b""
            pos = nl + 1
            if self.in_headers:
                if blank:
                    self.in_headers = False
                    if self.left <= 0:
                        self.done = True
                        return chunk[:pos]
            else:
                self.left -= 1
                if self.left <= 0:
                    self.done = True
                    return chunk[:pos]
