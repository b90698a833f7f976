"""The filter chain: the one interfaces.MessageFilter SMTP calls, over the configured filters.

At each stage the filters are asked in order, one at a time (DMARC needs what SPF and DKIM
found before it), and the first refusal ends the stage. At the end of the data the headers
of every filter that accepted are collected, in order, after an Authentication-Results
header (RFC 8601) made of what the authentication filters found. A filter that fails
unexpectedly (a bug, not a daemon that is down: those answer for themselves) is logged and
the message is refused for now, 451 4.7.1: never accepted unchecked by accident. Each filter's
verdict on a message is an event on the mail stream (`filter`), for the maillog and audit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.filters.base import Answer, Filter, MessageCheck
from appliance.filters.body import SpillBuffer, SpillFiles
from appliance.interfaces import ACCEPT, BodyBuffer, Envelope, FilterVerdict, SessionFacts

TEMPFAIL = FilterVerdict(451, "4.7.1 Temporary failure in message checks, try again later")

VERDICT = "{queue_id}: filter {filter}: {action}{detail}"
STAGE_END = "END-OF-MESSAGE"
_NAMED_ACCEPT: dict[str, FilterVerdict] = {}  # ACCEPT with each filter's name


class FilterChain:
    """interfaces.MessageFilter over filters, in order."""

    name = "chain"
    log = Logger()

    def __init__(
        self,
        filters: Sequence[Filter],
        *,
        hostname: str,
        spill_folder: Path,
        events: Logger,
    ) -> None:
        self.filters = tuple(filters)
        self.hostname = hostname
        self.spill_folder = spill_folder
        self.spill_files = SpillFiles(spill_folder)
        self.events = events

    # ------------------------------------------------------------------ session stages

    def connect(self, facts: SessionFacts) -> Answer:
        return self._first_refusal(lambda f: f.connect(facts), "connect")

    def sender(self, facts: SessionFacts, mail_from: str) -> Answer:
        return self._first_refusal(lambda f: f.sender(facts, mail_from), "MAIL")

    def recipient(self, facts: SessionFacts, mail_from: str, rcpt: str) -> Answer:
        return self._first_refusal(lambda f: f.recipient(facts, mail_from, rcpt), "RCPT")

    def _first_refusal(self, ask: Callable[[Filter], Answer], stage: str, start: int = 0) -> Answer:
        """The first refusal of the filters from `start` on, or ACCEPT. Filters that answer at
        once are asked in a loop (most do, most of the time: a memo, a cached lookup, a stage
        they do not look at); the first that answers later continues the stage from its
        callback, so no Deferred is made for a stage nobody waited in."""
        filters = self.filters
        for i in range(start, len(filters)):
            f = filters[i]
            try:
                answer = ask(f)
            except Exception:
                verdict = self._failed(f, stage, Failure())
            else:
                if isinstance(answer, Deferred):
                    return answer.addCallbacks(
                        self._named, self._failed_later, (f,), errbackArgs=(f, stage)
                    ).addCallback(self._next, ask, stage, i + 1)
                verdict = self._named(answer, f)
            if not verdict.ok:
                return verdict
        return ACCEPT

    def _next(
        self, verdict: FilterVerdict, ask: Callable[[Filter], Answer], stage: str, start: int
    ) -> Answer:
        return verdict if not verdict.ok else self._first_refusal(ask, stage, start)

    @staticmethod
    def _named(verdict: FilterVerdict, f: Filter) -> FilterVerdict:
        """verdict with the filter's name (a plain ACCEPT: one kept per name, as it is asked
        several times a message per filter; dataclasses.replace was 3% of the reactor)."""
        if verdict.filter:
            return verdict
        if verdict is ACCEPT:
            named = _NAMED_ACCEPT.get(f.name)
            if named is None:
                named = _NAMED_ACCEPT[f.name] = FilterVerdict(filter=f.name)
            return named
        v = verdict
        return FilterVerdict(v.code, v.text, v.headers, f.name, v.reason)

    def _failed_later(self, failure: Failure, f: Filter, stage: str) -> FilterVerdict:
        return self._failed(f, stage, failure)

    def _failed(self, f: Filter, stage: str, failure: Failure) -> FilterVerdict:
        self.log.failure("filter {filter} failed at {stage}", failure, filter=f.name, stage=stage)
        return FilterVerdict(TEMPFAIL.code, TEMPFAIL.text, filter=f.name, reason="internal error")

    # ------------------------------------------------------------------ the message

    def body_buffer(self, envelope: Envelope) -> BodyBuffer | None:
        if not any(f.wants_body(envelope) for f in self.filters):
            return None
        return SpillBuffer(self.spill_files)

    def message(
        self, envelope: Envelope, queue_id: str, body: BodyBuffer
    ) -> Deferred[FilterVerdict]:
        answer = self._message(MessageCheck(envelope, queue_id, body), [], 0)
        return answer if isinstance(answer, Deferred) else defer.succeed(answer)

    def _message(self, check: MessageCheck, headers: list[str], start: int) -> Answer:
        """The filters from `start` on that look at this message, in order, as the stages
        are asked (_first_refusal): in a loop while they answer at once."""
        filters = self.filters
        for i in range(start, len(filters)):
            f = filters[i]
            if not f.wants_body(check.envelope):
                continue
            began = time.monotonic()
            try:
                answer = f.message(check)
            except Exception:
                verdict = self._failed(f, STAGE_END, Failure())
            else:
                if isinstance(answer, Deferred):
                    return answer.addCallbacks(
                        self._named, self._failed_later, (f,), errbackArgs=(f, STAGE_END)
                    ).addCallback(self._message_next, check, headers, i, began)
                verdict = self._named(answer, f)
            self._log(check.queue_id, verdict, time.monotonic() - began)
            if not verdict.ok:
                return verdict
            headers.extend(verdict.headers)
        return self._with_results(check, headers)

    def _message_next(
        self, verdict: FilterVerdict, check: MessageCheck, headers: list[str], i: int,
        began: float,
    ) -> Answer:  # fmt: skip
        self._log(check.queue_id, verdict, time.monotonic() - began)
        if not verdict.ok:
            return verdict
        headers.extend(verdict.headers)
        return self._message(check, headers, i + 1)

    def _with_results(self, check: MessageCheck, headers: list[str]) -> FilterVerdict:
        if check.auth_results:
            results = ";\r\n\t".join(check.auth_results)
            headers.insert(0, f"Authentication-Results: {self.hostname};\r\n\t{results}")
        return FilterVerdict(headers=tuple(headers))

    def _log(self, queue_id: str, verdict: FilterVerdict, elapsed: float) -> None:
        if verdict.ok:
            action = "tag" if verdict.headers else "accept"
            detail = f" ({verdict.reason})" if verdict.reason else ""
        else:
            action = "tempfail" if (verdict.code or 0) < 500 else "reject"
            detail = f" {verdict.code} {verdict.text}"
            if verdict.reason:
                detail += f" ({verdict.reason})"
        self.events.info(
            VERDICT,
            event="filter",
            queue_id=queue_id,
            filter=verdict.filter,
            action=action,
            detail=detail,
            code=verdict.code,
            reason=verdict.reason,
            elapsed=elapsed,  # seconds the filter took (the metrics' latency histogram)
        )
