"""Spam scoring through spamd (SpamAssassin), the spamc protocol: headers, or a refusal.

One SYMBOLS request per message (`SYMBOLS SPAMC/1.5`, Content-length, an optional User, the
text); spamd answers `SPAMD/1.1 0 EX_OK`, a `Spam: True ; 1003.7 / 5.0` header and the names
of the rules that hit. Mail at or over reject_score (when set) is refused 550 5.7.1; the
rest is accepted with SpamAssassin's own headers (X-Spam-Flag when it is spam, X-Spam-Score,
X-Spam-Status). Like spamc, a message over max_size (512K) is not scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from appliance.filters.base import Filter, MessageCheck
from appliance.filters.daemon import DaemonError, exchange
from appliance.filters.scanning import ScannerSettings, failure_verdict, too_big, wants
from appliance.interfaces import BodyBuffer, Envelope, FilterVerdict

_STATUS = re.compile(rb"^SPAMD/\d+\.\d+ (\d+) (\S+)")
_SPAM = re.compile(rb"^Spam: *(True|False|Yes|No) *; *(-?[\d.]+) */ *(-?[\d.]+)", re.I | re.M)


@dataclass(frozen=True)
class SpamSettings:
    scanner: ScannerSettings
    reject_score: float = 0.0  # 0: never refuse, only tag
    user: str = ""  # spamd's User: header (whose preferences), "" for spamd's default


@dataclass(frozen=True)
class Score:
    spam: bool
    score: float
    required: float
    tests: tuple[str, ...]


def request(body: BodyBuffer, user: str) -> Iterator[bytes]:
    head = f"SYMBOLS SPAMC/1.5\r\nContent-length: {body.size}\r\n"
    if user:
        head += f"User: {user}\r\n"
    yield (head + "\r\n").encode("ascii")
    yield from body.chunks()


def parse(answer: bytes) -> Score:
    """spamd's answer, or ValueError saying what is wrong with it."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = _STATUS.match(head)
    if status is None:
        raise ValueError(f"not a spamd answer: {answer[:60]!r}")
    if status.group(1) != b"0":
        raise ValueError(f"spamd error {status.group(1).decode()} {status.group(2).decode()}")
    spam = _SPAM.search(head)
    if spam is None:
        raise ValueError("spamd answer without a Spam: header")
    tests = tuple(t for t in rest.decode("ascii", "replace").strip().split(",") if t)
    return Score(
        spam.group(1).lower() in (b"true", b"yes"),
        float(spam.group(2)),
        float(spam.group(3)),
        tests,
    )


def headers_of(score: Score) -> tuple[str, ...]:
    tests = ",".join(score.tests) or "none"
    status = (
        f"X-Spam-Status: {'Yes' if score.spam else 'No'}, score={score.score:.1f}"
        f" required={score.required:.1f}\r\n\ttests={tests}"
    )
    out = [f"X-Spam-Score: {score.score:.1f}", status]
    if score.spam:
        out.insert(0, "X-Spam-Flag: YES")
    return tuple(out)


class SpamAssassinFilter(Filter):
    name = "spamassassin"

    def __init__(self, settings: SpamSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor

    def wants_body(self, envelope: Envelope) -> bool:
        return wants(self.settings.scanner, envelope)

    def message(self, check: MessageCheck) -> FilterVerdict | Deferred[FilterVerdict]:
        s = self.settings
        skipped = too_big(s.scanner, check.body.size)
        if skipped is not None:
            return skipped
        d = exchange(
            self.reactor, s.scanner.address, request(check.body, s.user), s.scanner.timeout
        )

        def answered(answer: bytes) -> FilterVerdict:
            try:
                score = parse(answer)
            except ValueError as e:
                return failure_verdict(s.scanner, "spam checks", f"spamd: {e}")
            reason = f"score={score.score:.1f} required={score.required:.1f}"
            check.results["spam"] = "yes" if score.spam else "no"
            if s.reject_score and score.score >= s.reject_score:
                return FilterVerdict(550, "5.7.1 Message rejected as spam", reason=reason)
            return FilterVerdict(headers=headers_of(score), reason=reason)

        def failed(failure: Any) -> FilterVerdict:
            failure.trap(DaemonError)
            return failure_verdict(s.scanner, "spam checks", f"spamd: {failure.getErrorMessage()}")

        return d.addCallbacks(answered, failed)
