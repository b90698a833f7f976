"""The login throttle every protocol shares: delays and blocks per client and per user.

Anchored on Dovecot's auth penalty (a failed login's answer waits longer with each recent
failure from the client) and on what fail2ban does with Postfix's log (a client with too many
failures is shut out for a while), with the holes an adversarial run found closed:

- **An attempt counts when it starts.** `begin(ip, user)` records the attempt at once, as a
  failure until it is shown to be good, so forty parallel guesses count forty before any of
  them is answered: the eleventh is refused without its password being checked.
- **Parallel logins wait rather than fail.** `admit(ip, user)` is begin() for protocols: when
  a client's slots are all taken by attempts still being checked (not by failures), the next
  login waits for one to end instead of being refused. A good password frees the slots (its
  user's attempts from that client are forgotten), so a client opening twenty sessions at
  once logs in on all of them; twenty guesses still get at most `max_failures` checked.
- **Per client and per user.** A client (an IPv4 address or an IPv6 /64) is blocked after
  `max_failures` within `window`; a user after `max_user_failures` from any clients (a slow
  botnet guessing one account).
- **A success clears only what it proves**: that user's failures from that client. The
  client's failures for other users, and the user's failures from other clients, stay.
- **The block state survives a restart**: the failures of blocked clients and users are
  written (atomically, 0600) to `state_file` shortly after a block starts and at stop, and
  read back at start.

The protocols ask `blocked(ip)` before an exchange (True: the temporary code and close), and
`begin(ip, user)` once the credentials are known: None means blocked (the temporary code,
nothing checked), otherwise a `LoginAttempt` whose `failed()` gives the delay before the
failure reply, `succeeded()` clears, `abandoned()` forgets it (the backend could not answer).
Blocks are logged on the mail event stream with the client and the user.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from appliance import interfaces
from appliance.durable import atomic_replace
from appliance.ip import client_key
from appliance.log import printable

STATE_MODE = 0o600
SAVE_AFTER = 1.0  # seconds from a new block to writing the state file
MAX_WAITING = 100  # logins of one client waiting for a slot; more are refused at once

CLIENT_BLOCKED = (
    "warning: {client}: {count} failed logins in {window:.0f}s (last user={sasl_username}),"
    " logins from this client refused for up to {window:.0f}s"
)
USER_BLOCKED = (
    "warning: user={sasl_username}: {count} failed logins in {window:.0f}s"
    " (last from {client}), logins as this user refused for up to {window:.0f}s"
)


class _Entry:
    """One attempt, listed under its client and its user."""

    __slots__ = ("time", "client", "user", "failed", "label")

    def __init__(self, time: float, client: str | None, user: str | None) -> None:
        self.time = time
        self.client = client
        self.user = user
        self.failed = False  # shown to be wrong (until then: still being checked)
        self.label = client or ""  # the client as logged


def _failed(entry: _Entry) -> _Entry:
    entry.failed = True
    return entry


class _Counts:
    """Recent entries per key, oldest first, each list bounded, the number of keys too."""

    def __init__(self, limit: int, max_tracked: int) -> None:
        self.limit = limit
        self.max_tracked = max_tracked
        self.by_key: OrderedDict[str, deque[_Entry]] = OrderedDict()

    def recent(self, key: str, horizon: float) -> int:
        entries = self.by_key.get(key)
        if entries is None:
            return 0
        while entries and entries[0].time <= horizon:
            entries.popleft()
        if not entries:
            del self.by_key[key]
            return 0
        return len(entries)

    def add(self, key: str, entry: _Entry) -> int:
        entries = self.by_key.get(key)
        if entries is None:
            entries = self.by_key[key] = deque(maxlen=self.limit)
        entries.append(entry)
        self.by_key.move_to_end(key)
        while len(self.by_key) > self.max_tracked:
            self.by_key.popitem(last=False)  # the key whose last attempt is oldest
        return len(entries)

    def remove(self, key: str | None, match: Any) -> None:
        """Drop the entries of key for which match(entry) is true."""
        if key is None:
            return
        entries = self.by_key.get(key)
        if entries is None:
            return
        kept = [e for e in entries if not match(e)]
        if len(kept) != len(entries):
            entries.clear()
            entries.extend(kept)
            if not entries:
                del self.by_key[key]

    def dump(self, key: str) -> list[float]:
        return [e.time for e in self.by_key.get(key, ())]


class LoginAttempt:
    """One login under way; exactly one of its three ends is expected."""

    def __init__(self, throttle: FailureThrottle, entry: _Entry) -> None:
        self.throttle = throttle
        self.entry = entry

    def failed(self) -> float:
        """Wrong credentials: the attempt stays counted; the seconds to wait before saying so."""
        self.entry.failed = True
        self.throttle.failure_shown(self.entry)
        delay = self.throttle.delay_for_client(self.entry.client)
        self.throttle.ended(self.entry.client)
        return delay

    def succeeded(self) -> None:
        """Good credentials: forget this user's failures from this client."""
        self.throttle.clear(self.entry.client, self.entry.user)
        self.throttle.ended(self.entry.client)

    def abandoned(self) -> None:
        """Nothing was checked (the backend could not answer): the attempt does not count."""
        self.throttle.forget(self.entry)
        self.throttle.ended(self.entry.client)


class FailureThrottle(service.Service):
    """Counts login attempts per client and per user; delays, blocks, remembers blocks."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        base_delay: float = 1.0,
        max_delay: float = 16.0,
        window: float = 900,
        max_failures: int = 10,
        max_user_failures: int = 50,
        max_tracked: int = 10000,
        state_file: Path | None = None,
        events: Logger | None = None,
    ) -> None:
        self.reactor = reactor
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.max_failures = max_failures
        self.max_user_failures = max_user_failures
        self.state_file = state_file
        self.events = events or self.log
        self.clients = _Counts(max_failures, max_tracked)
        self.users = _Counts(max_user_failures, max_tracked)
        self._save_call: Any = None
        self._saving = False
        # logins waiting for a slot, per client key: (Deferred, ip, user), oldest first
        self._waiting: dict[
            str, deque[tuple[Deferred[interfaces.LoginAttempt | None], str, str]]
        ] = {}

    def __len__(self) -> int:
        """How many clients are tracked (for tests and stats)."""
        return len(self.clients.by_key)

    def _horizon(self) -> float:
        return float(self.reactor.seconds()) - self.window

    # ------------------------------------------------------------------ the questions

    def recent_failures(self, ip: str) -> int:
        """Attempts of this client within the window that were not shown to be good."""
        return self.clients.recent(client_key(ip), self._horizon())

    def user_failures(self, user: str) -> int:
        return self.users.recent(user.lower(), self._horizon())

    def blocked(self, ip: str, user: str | None = None) -> bool:
        """Whether a login from ip (as user, when given) is refused without checking it: the
        client has max_failures failures (attempts still being checked do not block, they
        take slots: see begin() and admit()), or the user max_user_failures attempts."""
        horizon = self._horizon()
        key = client_key(ip)
        self.clients.recent(key, horizon)
        if sum(e.failed for e in self.clients.by_key.get(key, ())) >= self.max_failures:
            return True
        return user is not None and self.users.recent(user.lower(), horizon) >= (
            self.max_user_failures
        )

    def delay_for(self, ip: str) -> float:
        """Seconds a failure reply to this client waits now."""
        return self.delay_for_client(client_key(ip))

    def delay_for_client(self, key: str | None) -> float:
        n = self.clients.recent(key, self._horizon()) if key is not None else 0
        # the first failure waits base_delay, each further one twice as long, up to the cap
        delay = self.base_delay
        for _ in range(max(0, n - 1)):
            if delay >= self.max_delay:
                break
            delay *= 2
        return min(delay, self.max_delay)

    # ------------------------------------------------------------------ attempts

    def begin(self, ip: str, user: str) -> LoginAttempt | None:
        """A login from ip as user is about to be checked: None if it must be refused (a
        block, or every slot of the client taken), else the attempt, already counted as a
        failure."""
        key = client_key(ip)
        if self.blocked(ip, user) or self.clients.recent(key, self._horizon()) >= self.max_failures:
            return None
        user = user.lower()
        entry = _Entry(float(self.reactor.seconds()), key, user)
        self.clients.add(key, entry)
        on_user = self.users.add(user, entry)
        entry.label = printable(ip, 60)
        client_label, user_label = entry.label, printable(user, 100)
        if on_user == self.max_user_failures:
            self._blocked(USER_BLOCKED, "user_blocked", client_label, user_label, on_user)
        return LoginAttempt(self, entry)

    def admit(self, ip: str, user: str) -> Deferred[interfaces.LoginAttempt | None]:
        """begin(), but a login that finds its client's slots taken by attempts still being
        checked waits for one to end (bounded: MAX_WAITING per client) instead of failing."""
        key = client_key(ip)
        waiting = self._waiting.get(key)
        if not waiting and not self._full(key):
            return defer.succeed(self.begin(ip, user))
        if self.blocked(ip, user) or (waiting is not None and len(waiting) >= MAX_WAITING):
            return defer.succeed(None)
        d: Deferred[interfaces.LoginAttempt | None] = Deferred(lambda d: self._cancel_wait(key, d))
        self._waiting.setdefault(key, deque()).append((d, ip, user))
        return d

    def _full(self, key: str) -> bool:
        """Every slot of the client taken, some by attempts still being checked."""
        entries = self.clients.by_key.get(key)
        if entries is None:
            return False
        self.clients.recent(key, self._horizon())
        entries = self.clients.by_key.get(key)
        return (
            entries is not None
            and len(entries) >= self.max_failures
            and not all(e.failed for e in entries)
        )

    def ended(self, key: str | None) -> None:
        """An attempt of this client ended: let waiting logins in while slots are free."""
        if key is None:
            return
        waiting = self._waiting.get(key)
        while waiting:
            d, ip, user = waiting[0]
            if d.called:  # cancelled: the session went away
                waiting.popleft()
                continue
            if self._full(key):
                return
            waiting.popleft()
            d.callback(self.begin(ip, user))  # an attempt, or None once truly blocked
        self._waiting.pop(key, None)

    def _cancel_wait(self, key: str, d: Deferred[interfaces.LoginAttempt | None]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None:
            for item in list(waiting):
                if item[0] is d:
                    waiting.remove(item)
            if not waiting:
                del self._waiting[key]

    def failure_shown(self, entry: _Entry) -> None:
        """A failure is known: the client's max_failures-th starts its block (logged once)."""
        entries = self.clients.by_key.get(entry.client or "", ())
        failures = sum(e.failed for e in entries)
        if failures == self.max_failures:
            user = printable(entry.user or "", 100)
            self._blocked(CLIENT_BLOCKED, "client_blocked", entry.label, user, failures)

    def clear(self, key: str | None, user: str | None) -> None:
        """A good login: the user's attempts from the client, and no others, are forgotten."""
        self.clients.remove(key, lambda e: e.user == user)
        self.users.remove(user, lambda e: e.client == key)

    def forget(self, entry: _Entry) -> None:
        self.clients.remove(entry.client, lambda e: e is entry)
        self.users.remove(entry.user, lambda e: e is entry)

    def _blocked(self, fmt: str, event: str, client: str, user: str, count: int) -> None:
        self.events.warn(
            fmt, event=event, client=client, sasl_username=user, count=count, window=self.window
        )
        self._schedule_save()

    # ------------------------------------------------------------------ the state file

    def state(self) -> dict[str, Any]:
        """The failures of blocked clients and users (the rest is not worth keeping)."""
        horizon = self._horizon()
        clients = {
            k: self.clients.dump(k)
            for k in list(self.clients.by_key)
            if self.clients.recent(k, horizon) >= self.max_failures
        }
        users = {
            u: self.users.dump(u)
            for u in list(self.users.by_key)
            if self.users.recent(u, horizon) >= self.max_user_failures
        }
        return {"version": 1, "clients": clients, "users": users}

    def load(self) -> None:
        """Read the state file back (a missing or unreadable one means no blocks)."""
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_bytes())
            clients = data.get("clients", {})
            users = data.get("users", {})
            horizon = self._horizon()
            for key, times in clients.items():
                for t in times:
                    if float(t) > horizon:
                        self.clients.add(str(key), _failed(_Entry(float(t), str(key), None)))
            for user, times in users.items():
                for t in times:
                    if float(t) > horizon:
                        self.users.add(str(user), _failed(_Entry(float(t), None, str(user))))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self.log.warn(
                "ignoring login throttle state {path}: {reason}", path=self.state_file, reason=e
            )

    def _encoded(self) -> bytes:
        return json.dumps(self.state(), separators=(",", ":")).encode()

    def save_now(self) -> None:
        """Write the state file at once, in this thread."""
        if self.state_file is not None:
            atomic_replace(self.state_file, self._encoded(), STATE_MODE)

    def _schedule_save(self) -> None:
        if self.state_file is None or self._save_call is not None or not self.running:
            return
        self._save_call = self.reactor.callLater(SAVE_AFTER, self._save)

    def _save(self) -> None:
        self._save_call = None
        if self._saving:  # the previous write is still running: try again shortly
            self._schedule_save()
            return
        assert self.state_file is not None
        data = self._encoded()  # taken here, in the reactor thread
        self._saving = True
        d = threads.deferToThreadPool(
            self.reactor,
            self.reactor.getThreadPool(),
            atomic_replace,
            self.state_file,
            data,
            STATE_MODE,
        )

        def done(result: object) -> None:
            self._saving = False

        d.addErrback(
            lambda f: self.log.warn(
                "cannot write login throttle state {path}: {reason}",
                path=self.state_file,
                reason=f.getErrorMessage(),
            )
        ).addBoth(done)

    # ------------------------------------------------------------------ service

    def startService(self) -> None:  # noqa: N802 (Twisted's API)
        self.load()
        super().startService()

    def stopService(self) -> None:  # noqa: N802 (Twisted's API)
        super().stopService()
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save_call = None
        try:
            self.save_now()
        except OSError as e:
            self.log.warn(
                "cannot write login throttle state {path}: {reason}",
                path=self.state_file,
                reason=e.strerror or e,
            )
