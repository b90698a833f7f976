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

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.deferreds import decision
from appliance.filters.base import Answer, Filter, MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.interfaces import ACCEPT, BodyBuffer, Envelope, FilterVerdict, SessionFacts

TEMPFAIL = FilterVerdict(451, "4.7.1 Temporary failure in message checks, try again later")

VERDICT = "{queue_id}: filter {filter}: {action}{detail}"


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
        self.events = events

    # ------------------------------------------------------------------ session stages

    def connect(self, facts: SessionFacts) -> Deferred[FilterVerdict]:
        return self._first_refusal(lambda f: f.connect(facts), "connect")

    def sender(self, facts: SessionFacts, mail_from: str) -> Deferred[FilterVerdict]:
        return self._first_refusal(lambda f: f.sender(facts, mail_from), "MAIL")

    def recipient(self, facts: SessionFacts, mail_from: str, rcpt: str) -> Deferred[FilterVerdict]:
        return self._first_refusal(lambda f: f.recipient(facts, mail_from, rcpt), "RCPT")

    def _first_refusal(
        self, ask: Callable[[Filter], Answer], stage: str
    ) -> Deferred[FilterVerdict]:
        return defer.ensureDeferred(self._stage(ask, stage))

    async def _stage(self, ask: Callable[[Filter], Answer], stage: str) -> FilterVerdict:
        for f in self.filters:
            verdict = await self._asked(f, ask, stage)
            if not verdict.ok:
                return verdict
        return ACCEPT

    async def _asked(self, f: Filter, ask: Callable[[Filter], Answer], stage: str) -> FilterVerdict:
        try:
            verdict = await decision(ask, f)
        except Exception:
            self.log.failure(
                "filter {filter} failed at {stage}", Failure(), filter=f.name, stage=stage
            )
            return FilterVerdict(
                TEMPFAIL.code, TEMPFAIL.text, filter=f.name, reason="internal error"
            )
        if not verdict.filter:
            verdict = dataclasses.replace(verdict, filter=f.name)
        return verdict

    # ------------------------------------------------------------------ the message

    def body_buffer(self, envelope: Envelope) -> BodyBuffer | None:
        if not any(f.wants_body(envelope) for f in self.filters):
            return None
        return SpillBuffer(self.spill_folder)

    def message(
        self, envelope: Envelope, queue_id: str, body: BodyBuffer
    ) -> Deferred[FilterVerdict]:
        return defer.ensureDeferred(self._message(MessageCheck(envelope, queue_id, body)))

    async def _message(self, check: MessageCheck) -> FilterVerdict:
        headers: list[str] = []
        for f in self.filters:
            if not f.wants_body(check.envelope):
                continue
            start = time.monotonic()
            verdict = await self._asked(f, lambda f: f.message(check), "END-OF-MESSAGE")
            self._log(check.queue_id, verdict, time.monotonic() - start)
            if not verdict.ok:
                return verdict
            headers.extend(verdict.headers)
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
