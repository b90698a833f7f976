"""Virus scanning through clamd (ClamAV), INSTREAM: infected mail is refused, 554 5.7.1.

The text goes to clamd in length-prefixed chunks as clamd reads it (nothing is held in
memory for it beyond what the body buffer holds); clamd parses the MIME structure and scans
every part. Answers: `stream: OK`, `stream: <signature> FOUND`, or `<reason> ERROR`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred

from appliance.filters.base import Filter, MessageCheck
from appliance.filters.daemon import DaemonError, exchange
from appliance.filters.scanning import ScannerSettings, failure_verdict, too_big, wants
from appliance.interfaces import BodyBuffer, Envelope, FilterVerdict

PIECE = 256 * 1024  # INSTREAM chunk (clamd takes up to StreamMaxLength in all)


def instream(body: BodyBuffer) -> Iterator[bytes]:
    yield b"zINSTREAM\0"
    for chunk in body.chunks():
        for i in range(0, len(chunk), PIECE):
            piece = chunk[i : i + PIECE]
            yield struct.pack("!I", len(piece)) + piece
    yield struct.pack("!I", 0)


def verdict_of(answer: bytes) -> tuple[str, str]:
    """('clean', '') / ('infected', signature) / ('error', reason) from clamd's answer."""
    text = answer.rstrip(b"\0\r\n").decode("utf-8", "replace")
    name, _, result = text.partition(": ")
    if name != "stream" or not result:
        return "error", text or "empty answer"
    if result == "OK":
        return "clean", ""
    if result.endswith(" FOUND"):
        return "infected", result[: -len(" FOUND")]
    return "error", result


class ClamAVFilter(Filter):
    name = "clamav"

    def __init__(self, settings: ScannerSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor

    def wants_body(self, envelope: Envelope) -> bool:
        return wants(self.settings, envelope)

    def message(self, check: MessageCheck) -> FilterVerdict | Deferred[FilterVerdict]:
        s = self.settings
        skipped = too_big(s, check.body.size)
        if skipped is not None:
            return skipped
        d = exchange(self.reactor, s.address, instream(check.body), s.timeout)

        def answered(answer: bytes) -> FilterVerdict:
            kind, detail = verdict_of(answer)
            if kind == "clean":
                return FilterVerdict(reason="clean")
            if kind == "infected":
                return FilterVerdict(
                    554, f"5.7.1 Message rejected: virus found ({detail})", reason=detail
                )
            return failure_verdict(s, "virus scanning", f"clamd: {detail}")

        def failed(failure: Any) -> FilterVerdict:
            failure.trap(DaemonError)
            return failure_verdict(s, "virus scanning", f"clamd: {failure.getErrorMessage()}")

        return d.addCallbacks(answered, failed)
