"""Reading a POP3 session's small messages ahead, so most RETRs are answered at once.

Clients download in number order (fetchmail, Outlook, Thunderbird's "leave on server" all
RETR n, n+1, ...). Answering each RETR with its own worker job costs a thread round trip
and a reactor wake-up per message, which for a 1 KB message is most of the work. Instead,
the first RETR reads a window of the messages that follow it (up to WINDOW messages of at
most SMALL octets each, BUDGET octets in all) in one call of `run`; the next RETRs find their
message here and are answered at once, and when half the window has been used the next window
is read. `run` is the listener's QuickCalls: a window of 1 KB messages in the page cache is
read on the reactor in well under a millisecond, cheaper than handing it to a worker thread
whose GIL hand-overs slow every send() of the reactor; once reads are found slow (a cold disk),
and for a maildrop of more than QUICK_MESSAGES, windows are read by a worker job while the
client reads the last answer.

It is safe to hold message bytes: a Maildir message file never changes once delivered
(flags change its name, not its content), and the session holds the mailbox's POP3 lock.
A message removed meanwhile is remembered as gone (RETR answers that). Memory per session
is bounded by BUDGET, and the cache is empty until the client starts retrieving.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from twisted.internet import defer

from appliance.interfaces import Maildrop
from appliance.pop3.stream import CHUNK

SMALL = CHUNK  # a message this size or smaller is read whole (one chunk)
# a maildrop of at most this many messages has its windows read by the listener's QuickCalls;
# a bigger one's in the pool, since a message moved meanwhile (flags set over IMAP) makes the
# read list the folder, which for more files than this is no quick call
QUICK_MESSAGES = 5000
WINDOW = 64  # messages per read-ahead
BUDGET = 128 * 1024  # octets held per session at most (beyond one message)

Runner = Callable[..., defer.Deferred[Any]]  # QuickCalls.run (or WorkerPool.run)


class ReadAhead:
    """The small messages of one session's maildrop read ahead of its RETRs."""

    def __init__(self, run: Runner, maildrop: Maildrop) -> None:
        self.run = run
        self.maildrop = maildrop
        self.held: dict[int, bytes] = {}
        self.held_bytes = 0
        self.gone: set[int] = set()  # found removed meanwhile
        self.pending: defer.Deferred[None] | None = None  # the window being read
        self.next_from = 0  # where the following window starts (0: none read yet)

    def small(self, number: int) -> bool:
        """Whether message number is read whole here (rather than streamed)."""
        return self.maildrop.messages[number - 1].size <= SMALL

    def take(self, number: int) -> bytes | None:
        """The message's bytes if held, given up (a message is retrieved once, mostly); None
        if not held."""
        data = self.held.pop(number, None)
        if data is not None:
            self.held_bytes -= len(data)
        return data

    def peek(self, number: int) -> bytes | None:
        """As take(), keeping the bytes (TOP: a RETR often follows)."""
        return self.held.get(number)

    def window(self, start: int, skip: Collection[int]) -> list[int]:
        """The small messages from start on (not in skip, not held) one read takes: up to
        WINDOW of them, BUDGET octets with what is held, and none past a big message."""
        out: list[int] = []
        total = self.held_bytes
        messages = self.maildrop.messages
        for i in range(start - 1, len(messages)):
            if len(out) >= WINDOW:
                break
            m = messages[i]
            if m.number in skip or m.number in self.held or m.number in self.gone:
                continue
            if m.size > SMALL:
                if out:
                    break  # read up to the next big message; it is streamed
                continue
            if total + m.size > BUDGET and out:
                break
            total += m.size
            out.append(m.number)
        return out

    def settled(self) -> defer.Deferred[None]:
        """Fires once no read is in flight (the maildrop has one reader at a time)."""
        if self.pending is None:
            return defer.succeed(None)
        return self._after(self.pending)

    def fetch(
        self, start: int, skip: Collection[int], wanted: int | None = None
    ) -> defer.Deferred[None]:
        """Read the window from start, after the read in flight if any; fires when done
        (never fails: a message that could not be read is not held, and RETR then takes the
        long way, which reports why). Held messages before wanted (the one the client is
        at; default start) are let go: it has moved past them."""
        if self.pending is not None:
            out: defer.Deferred[None] = defer.Deferred()

            def again(_r: object) -> None:
                self.fetch(start, skip, wanted).chainDeferred(out)

            self.pending.addBoth(again)
            return out
        before = start if wanted is None else wanted
        if self.held and min(self.held) < before:
            for n in [n for n in self.held if n < before]:
                self.held_bytes -= len(self.held.pop(n))
        numbers = self.window(start, skip)
        if not numbers:
            return defer.succeed(None)
        self.next_from = numbers[-1] + 1
        d: defer.Deferred[None] = self.run(self.maildrop.read, numbers, SMALL).addCallbacks(
            self._got, lambda _f: None
        )
        self.pending = d

        def done(result: object) -> None:
            self.pending = None

        d.addBoth(done)
        return self._after(d)

    @staticmethod
    def _after(d: defer.Deferred[None]) -> defer.Deferred[None]:
        out: defer.Deferred[None] = defer.Deferred()
        d.addBoth(lambda _r: out.callback(None))
        return out

    def _got(self, got: dict[int, bytes | None]) -> None:
        for n, data in got.items():
            if data is None:
                self.gone.add(n)
            elif len(data) <= SMALL:  # (longer than listed: streamed instead)
                self.held[n] = data
                self.held_bytes += len(data)

    def used(self, number: int, skip: Collection[int]) -> None:
        """Message number was answered: once half the window is used, read the next one
        (while the client reads this answer)."""
        if self.pending is not None or not self.next_from:
            return
        if self.next_from > len(self.maildrop.messages):
            return
        if len(self.held) <= WINDOW // 2 and self.held_bytes <= BUDGET // 2:
            self.fetch(self.next_from, skip, number)

    def clear(self) -> None:
        """The session ended: let the bytes go."""
        self.held.clear()
        self.held_bytes = 0
