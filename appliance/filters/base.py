"""What one filter of the chain is: the checks it makes and what a message check sees.

A filter overrides only the stages it cares about; the others accept. At the end of the data
each filter that wants_body() gets a MessageCheck: the envelope, the text, and what filters
before it found (SPF's and DKIM's results, which DMARC reads), in `results`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred

from appliance.interfaces import ACCEPT, BodyBuffer, Envelope, FilterVerdict, SessionFacts

Answer = FilterVerdict | Deferred[FilterVerdict]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """What a filter found for a key (a client, a transaction), kept a little while: found
    at one stage, used again at a later one (SPF at MAIL, again at the end of the data).
    At most `size` keys (the oldest go first), each for `ttl` seconds: what DNS says
    changes, and the resolver's own cache keeps the answers' TTLs anyway."""

    def __init__(self, size: int = 10_000, ttl: float = 300.0) -> None:
        self.size = size
        self.ttl = ttl
        self.items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self.items.get(key)
        if item is None:
            return None
        if time.monotonic() - item[0] > self.ttl:
            del self.items[key]
            return None
        return item[1]

    def put(self, key: K, value: V) -> None:
        self.items[key] = (time.monotonic(), value)
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def pop(self, key: K) -> None:
        self.items.pop(key, None)


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
