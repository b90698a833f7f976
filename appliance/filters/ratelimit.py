"""Abuse limits of the filter chain: how often a client may connect, how much mail a
logged-in user may send per hour, and greylisting of unknown senders.

- max_connect_rate: connections per minute from one client address (IPv6: its /64);
  past it the greeting is 421 4.7.0 (Postfix's anvil does the same).
- max_messages_per_user_hour / max_recipients_per_user_hour: what one SASL login may send
  (a stolen password sending spam is stopped within the hour): MAIL past the limit is 450
  4.7.1, RCPT 452 4.5.3 (try later: the limit is a window, it frees up).
- greylisting (RFC 6647) for clients not logged in: the first attempt of a (client network,
  sender, recipient) triplet is 450 4.2.0; a retry after `delay` and within `window` passes,
  and a client network that passed `whitelist_after` times is let through for
  `whitelist_time`. The triplets and the allow list are kept in a file (state_dir), written
  a few seconds after a change, so a restart neither forgets who retried nor starts
  greylisting them again.
A limit of 0 is off. Each refusal is logged by SMTP as a reject line (and audited).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from appliance.durable import atomic_replace
from appliance.filters.base import Answer, Filter
from appliance.interfaces import ACCEPT, FilterVerdict, SessionFacts

MAX_KEYS = 100_000  # counters or triplets kept at most (the oldest go first)
SAVE_DELAY = 5.0


def network_of(ip: str) -> str:
    """The client's address, or its /64 for IPv6 (one host has many there)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(addr.ipv4_mapped or addr) if isinstance(addr, ipaddress.IPv6Address) else str(addr)


def greylist_network(ip: str) -> str:
    """Triplets are kept per /24 (IPv6 /64): big senders retry from another host of theirs."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class Window:
    """Events per key within the last `span` seconds, bounded in keys and per key."""

    def __init__(self, span: float, limit: int) -> None:
        self.span = span
        self.limit = limit
        self.events: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str, now: float) -> int:
        q = self.events.get(key)
        if q is None:
            return 0
        while q and q[0] <= now - self.span:
            q.popleft()
        return len(q)

    def add(self, key: str, now: float, n: int = 1) -> None:
        q = self.events.get(key)
        if q is None:
            q = self.events[key] = deque(maxlen=self.limit + 1)
            while len(self.events) > MAX_KEYS:
                self.events.popitem(last=False)
        else:
            self.events.move_to_end(key)
        for _ in range(n):
            q.append(now)


@dataclass(frozen=True)
class LimitSettings:
    max_connect_rate: int = 0  # per minute per client
    max_messages_per_user_hour: int = 0
    max_recipients_per_user_hour: int = 0
    greylist: bool = False
    greylist_delay: float = 300.0
    greylist_window: float = 4 * 3600.0
    greylist_whitelist_after: int = 5
    greylist_whitelist_time: float = 36 * 86400.0


class RateLimitFilter(Filter):
    name = "limits"
    log = Logger()

    def __init__(self, settings: LimitSettings, reactor: Any, state_file: Path) -> None:
        self.settings = settings
        self.reactor = reactor
        s = settings
        self.connects = Window(60.0, max(s.max_connect_rate, 1))
        self.messages = Window(3600.0, max(s.max_messages_per_user_hour, 1))
        self.recipients = Window(3600.0, max(s.max_recipients_per_user_hour, 1))
        self.state_file = state_file
        self.triplets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [first, passed]
        self.allowed: dict[str, list[float]] = {}  # network -> [passes, until]
        self.save_call: IDelayedCall | None = None
        if s.greylist:
            self._load()

    # ------------------------------------------------------------------ the stages

    def connect(self, facts: SessionFacts) -> Answer:
        limit = self.settings.max_connect_rate
        if not limit or facts.trusted:  # (our own hosts are exempt, as Postfix's mynetworks)
            return ACCEPT
        now = self.reactor.seconds()
        key = network_of(facts.client_ip)
        if self.connects.count(key, now) >= limit:
            text = f"4.7.0 Error: too many connections from {facts.client_ip}, try again later"
            return FilterVerdict(421, text, reason=f"more than {limit} connections a minute")
        self.connects.add(key, now)
        return ACCEPT

    def sender(self, facts: SessionFacts, mail_from: str) -> Answer:
        limit = self.settings.max_messages_per_user_hour
        user = facts.auth_user
        if not limit or user is None:
            return ACCEPT
        now = self.reactor.seconds()
        if self.messages.count(user, now) >= limit:
            text = f"4.7.1 Error: {user} sent {limit} messages this hour, try again later"
            return FilterVerdict(450, text, reason=f"over {limit} messages an hour")
        self.messages.add(user, now)
        return ACCEPT

    def recipient(self, facts: SessionFacts, mail_from: str, rcpt: str) -> Answer:
        s = self.settings
        user = facts.auth_user
        if user is not None:
            if not s.max_recipients_per_user_hour:
                return ACCEPT
            now = self.reactor.seconds()
            limit = s.max_recipients_per_user_hour
            if self.recipients.count(user, now) >= limit:
                text = f"4.5.3 Error: {user} sent to {limit} recipients this hour, try later"
                return FilterVerdict(452, text, reason=f"over {limit} recipients an hour")
            self.recipients.add(user, now)
            return ACCEPT
        if not s.greylist or facts.trusted:
            return ACCEPT
        return self._greylist(facts.client_ip, mail_from, rcpt)

    # ------------------------------------------------------------------ greylisting

    def _greylist(self, ip: str, mail_from: str, rcpt: str) -> FilterVerdict:
        s = self.settings
        now = self.reactor.seconds()
        net = greylist_network(ip)
        allowed = self.allowed.get(net)
        if allowed is not None and allowed[1] > now:
            return ACCEPT
        key = f"{net}\0{mail_from.lower()}\0{rcpt.lower()}"
        entry = self.triplets.get(key)
        if entry is None or now - entry[0] > s.greylist_window:
            self.triplets[key] = [now, 0.0]
            self.triplets.move_to_end(key)
            while len(self.triplets) > MAX_KEYS:
                self.triplets.popitem(last=False)
            self._changed()
            return self._try_later(s.greylist_delay)
        first, passed = entry
        if not passed and now - first < s.greylist_delay:
            return self._try_later(s.greylist_delay - (now - first))
        if not passed:
            entry[1] = now
            passes = (allowed[0] if allowed else 0) + 1
            until = now + s.greylist_whitelist_time if passes >= s.greylist_whitelist_after else 0.0
            self.allowed[net] = [passes, until]
            self._changed()
        return FilterVerdict(reason="greylisting passed")

    @staticmethod
    def _try_later(wait: float) -> FilterVerdict:
        text = f"4.2.0 Greylisted, please try again in {max(int(wait), 1)} seconds"
        return FilterVerdict(450, text, reason="greylisted")

    def _changed(self) -> None:
        if self.save_call is None or not self.save_call.active():
            self.save_call = self.reactor.callLater(SAVE_DELAY, self.save)

    def save(self) -> None:
        self.save_call = None
        data = {"triplets": dict(self.triplets), "allowed": self.allowed}
        try:
            atomic_replace(self.state_file, json.dumps(data).encode(), 0o600)
        except OSError as e:
            self.log.warn("cannot save {path}: {reason}", path=str(self.state_file), reason=str(e))

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text())
            self.triplets = OrderedDict(
                (k, [float(v[0]), float(v[1])]) for k, v in data.get("triplets", {}).items()
            )
            self.allowed = {
                k: [float(v[0]), float(v[1])] for k, v in data.get("allowed", {}).items()
            }
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, IndexError, AttributeError) as e:
            self.log.warn(
                "ignoring unreadable {path}: {reason}", path=str(self.state_file), reason=str(e)
            )
            if self.state_file.exists():
                os.replace(self.state_file, self.state_file.with_suffix(".corrupt"))
