"""What one filter of the chain is: the checks it makes and what a message check sees.

A filter overrides only the stages it cares about; the others accept. At the end of the data
each filter that wants_body() gets a MessageCheck: the envelope, the text, and what filters
before it found (SPF's and DKIM's results, which DMARC reads), in `results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from appliance.interfaces import ACCEPT, BodyBuffer, Envelope, FilterVerdict, SessionFacts

Answer = FilterVerdict | Deferred[FilterVerdict]


@dataclass
class MessageCheck:
    """One message at the end of its data, as the chain's filters see it in turn."""

    envelope: Envelope
    queue_id: str
    body: BodyBuffer
    results: dict[str, str] = field(default_factory=dict)  # "spf" -> "pass", ...
    auth_results: list[str] = field(default_factory=list)  # "spf=pass smtp.mailfrom=..."


class Filter:
    """A filter that accepts everything; subclasses override what they check."""

    name = "filter"

    def connect(self, facts: SessionFacts) -> Answer:
        return ACCEPT

    def sender(self, facts: SessionFacts, mail_from: str) -> Answer:
        return ACCEPT

    def recipient(self, facts: SessionFacts, mail_from: str, rcpt: str) -> Answer:
        return ACCEPT

    def wants_body(self, envelope: Envelope) -> bool:
        """Whether message() needs to see this message's text."""
        return False

    def message(self, check: MessageCheck) -> Answer:
        return ACCEPT
