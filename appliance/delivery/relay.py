"""The relay: the `DeliveryTarget` that hands remote recipients to their next hops over SMTP.

A delivery (one message, some final addresses) is split by recipient domain; each domain is
routed (appliance.delivery.routing: transport map, smarthost, MX through our own resolver) to
a `Destination`, and the recipients sharing one become a job on that destination's queue.
Each destination keeps up to `max_per_destination` sessions (and all of them together at most
`max_connections`); a session carries job after job (several messages over one connection),
waits `cache_time` for another when its queue is empty, then says QUIT.

When no host of a destination can be reached, every job waiting for it is deferred with the
reason at once (Postfix's dead destination), rather than each one waiting for its own
connection attempts. Nothing here is durable: the queue owns the files and the retries.

`start_at_once()` is the cut-through delivery of a message whose sender waits for our reply
(Exim's cutthrough_delivery): its job goes to the front of the destination's queue, and if no
session has taken it within `wait` seconds it is withdrawn, unsent, as DEFERRED (the queue
then spools it as usual). Once a session has it, the transfer runs to its reply.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from appliance.delivery.routing import Destination, RouteError, Router
from appliance.delivery.session import HopsFailed, Session, SessionSettings, open_session
from appliance.interfaces import MessageBody, Outcome, QueuedMessage, RecipientResult
from appliance.workers import WorkerPool

RELAY = "relay"
NONE = "none"  # relay= of a recipient that never reached a host
ROUTE_TTL = 30.0  # seconds a domain's route is reused before DNS is asked again
MAX_ROUTES = 10_000
_RECEIVED = re.compile(rb"^received:", re.I | re.M)


@dataclass(frozen=True)
class RelayLimits:
    max_connections: int = 100
    max_per_destination: int = 20
    max_messages_per_connection: int = 1000
    cache_time: float = 2.0
    max_hops: int = 30


def count_received(head: bytes) -> int:
    """Received: header fields in the header section at the start of head."""
    end = head.find(b"\r\n\r\n")
    section = head if end < 0 else head[: end + 2]
    return len(_RECEIVED.findall(section))


class _Job:
    """Recipients of one message that share a destination, waiting for a session."""

    def __init__(
        self, message: QueuedMessage, rcpts: list[str], head: bytes, body: MessageBody
    ) -> None:
        self.message = message
        self.rcpts = rcpts
        self.head = head
        self.body = body
        self.done: Deferred[list[RecipientResult]] = Deferred()
        self.deadline: IDelayedCall | None = None  # a cut-through job's, until a session has it

    def taken(self) -> None:
        """A session has the job: a deadline no longer applies."""
        if self.deadline is not None:
            if self.deadline.active():
                self.deadline.cancel()
            self.deadline = None

    def fail(
        self, text: str, outcome: Outcome = Outcome.DEFERRED, relay: str = NONE, status: str = ""
    ) -> None:
        if not self.done.called:
            self.done.callback(
                [RecipientResult(r, outcome, text, relay, status=status) for r in self.rcpts]
            )


class _DestinationQueue:
    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.pending: deque[_Job] = deque()
        self.connecting = 0
        self.open = 0
        self.idle: list[tuple[Session, Deferred[_Job | None], IDelayedCall]] = []

    @property
    def sessions(self) -> int:
        return self.connecting + self.open


class RelayTarget:
    """interfaces.DeliveryTarget for remote recipients."""

    name = RELAY
    log = Logger()

    def __init__(
        self,
        router: Router,
        settings: SessionSettings,
        pool: WorkerPool,
        reactor: Any,
        limits: RelayLimits = RelayLimits(),
    ) -> None:
        self.router = router
        self.settings = settings
        self.pool = pool
        self.reactor = reactor
        self.limits = limits
        self.queues: dict[str, _DestinationQueue] = {}
        self.total = 0  # sessions connecting or open, every destination together
        self.busy: set[Session] = set()  # sessions in a transaction
        self._routes: dict[str, tuple[float, Destination]] = {}
        self._stopping = False

    # -- DeliveryTarget

    def check_address(self, address: str) -> None:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or any(c in address for c in "\r\n<> "):
            raise ValueError(f"not an address we can relay to: {address!r}")

    def clean_stale(self) -> None:
        pass  # nothing of ours is on disk

    def start(self, message: QueuedMessage) -> RelayDelivery:
        return RelayDelivery(self, message)

    def start_at_once(self, message: QueuedMessage, wait: float) -> RelayDelivery:
        return RelayDelivery(self, message, at_once=wait)

    def start_streaming(self, message: QueuedMessage, address: str) -> None:
        return None

    # -- routes

    def route(self, domain: str) -> Deferred[Destination]:
        """The destination of domain, remembered for ROUTE_TTL seconds (errors are not):
        a busy relay asks DNS once per domain, not once per message."""
        now = self.reactor.seconds()
        hit = self._routes.get(domain)
        if hit is not None and hit[0] > now:
            return defer.succeed(hit[1])

        def keep(destination: Destination) -> Destination:
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
            self._routes[domain] = (now + ROUTE_TTL, destination)
            return destination

        return self.router.route(domain).addCallback(keep)

    # -- reading bodies (worker threads)

    def read_chunk(self, chunks: Iterator[bytes]) -> Deferred[bytes | None]:
        return self.pool.run(next, chunks, None)

    def read_head(self, body: MessageBody) -> Deferred[tuple[bytes, Iterator[bytes]]]:
        data = body.in_memory()
        if data is not None:
            return defer.succeed((data, iter(())))  # no file, no thread

        def read() -> tuple[bytes, Iterator[bytes]]:
            chunks = body.chunks()
            return next(chunks, b""), chunks

        return self.pool.run(read)

    # -- jobs and sessions

    def submit(self, destination: Destination, job: _Job, at_once: float | None = None) -> None:
        """Queue job for a session to destination; at_once: a sender waits for it, so it goes
        first, and is withdrawn (DEFERRED, nothing sent) if no session took it within that
        many seconds."""
        if self._stopping:
            job.fail("4.3.2 the relay is shutting down")
            return
        dq = self.queues.get(destination.key)
        if dq is None:
            dq = self.queues[destination.key] = _DestinationQueue(destination)
        else:
            dq.destination = destination  # the latest answer from DNS
        if at_once is None:
            dq.pending.append(job)
        else:
            dq.pending.appendleft(job)
            job.deadline = self.reactor.callLater(at_once, self._withdraw, dq, job, at_once)
        self._pump(dq)

    def _withdraw(self, dq: _DestinationQueue, job: _Job, wait: float) -> None:
        job.deadline = None
        try:
            dq.pending.remove(job)
        except ValueError:
            return  # a session has it
        job.fail(f"4.4.1 no connection to {dq.destination.key} was free within {wait:g} s")

    def _pump(self, dq: _DestinationQueue) -> None:
        while dq.pending and dq.idle:
            session, waiter, timer = dq.idle.pop()
            timer.cancel()
            if session.closed:  # the server ended it while it idled: it just goes
                waiter.callback(None)
                continue
            job = dq.pending.popleft()
            job.taken()
            waiter.callback(job)
        lim = self.limits
        while len(dq.pending) > dq.connecting and dq.sessions < lim.max_per_destination:
            if self.total >= lim.max_connections:
                # every slot is taken: a session idling for another destination gives up
                # its own (once it has said QUIT, _pump_all brings the slot here)
                self._end_one_idle()
                break
            dq.connecting += 1
            self.total += 1
            self._run_session(dq)

    def _end_one_idle(self) -> None:
        for other in self.queues.values():
            if other.idle:
                _session, waiter, timer = other.idle.pop(0)
                timer.cancel()
                waiter.callback(None)
                return

    def _pump_all(self, skip: _DestinationQueue | None = None) -> None:
        for dq in list(self.queues.values()):
            if dq.pending:
                if dq is not skip:
                    self._pump(dq)
            elif dq.sessions == 0:
                del self.queues[dq.destination.key]

    def _wait_idle(self, dq: _DestinationQueue, session: Session) -> Deferred[_Job | None]:
        waiter: Deferred[_Job | None] = Deferred()

        def expire() -> None:
            dq.idle.remove(entry)
            waiter.callback(None)

        timer = self.reactor.callLater(self.limits.cache_time, expire)
        entry = (session, waiter, timer)
        dq.idle.append(entry)
        return waiter

    @defer.inlineCallbacks
    def _run_session(self, dq: _DestinationQueue) -> Generator[Deferred[Any], Any, None]:
        try:
            session = yield open_session(
                self.reactor, dq.destination, self.settings, self.read_chunk
            )
        except HopsFailed as e:
            dq.connecting -= 1
            self.total -= 1
            if dq.open == 0:
                # nobody else is getting through: everything waiting here is deferred now
                self._fail_pending(dq, e.text, e.status, e.relay or NONE)
            # else a session of ours is open there: the waiting jobs are its, not those of
            # a new connection that would be refused again at once (and again, in a loop)
            self._pump_all(skip=dq)
            return
        except Exception as e:  # a bug: no job may wait for ever because of it
            self.log.failure("relay session to {key} failed", key=dq.destination.key)
            dq.connecting -= 1
            self.total -= 1
            self._fail_pending(dq, f"4.3.0 local error in relay: {type(e).__name__}")
            self._pump_all()
            return
        dq.connecting -= 1
        dq.open += 1
        try:
            while not self._stopping:
                job = dq.pending.popleft() if dq.pending else None
                if job is not None:
                    job.taken()
                else:
                    job = yield self._wait_idle(dq, session)
                    if job is None:
                        break
                yield self._transfer(session, job)
                if session.closed or session.messages >= self.limits.max_messages_per_connection:
                    break
            # the slot stays taken until QUIT is done: the server counts the connection
            # until then, and a new one at once would exceed its limits and ours
            yield session.quit()
        finally:
            dq.open -= 1
            self.total -= 1
            self.reactor.callLater(0, self._pump_all)

    @defer.inlineCallbacks
    def _transfer(self, session: Session, job: _Job) -> Generator[Deferred[Any], Any, None]:
        try:
            head, rest = job.head, None
            if len(head) < job.body.size:
                head, rest = yield self.read_head(job.body)
            self.busy.add(session)
            try:
                results = yield session.transfer(job.message, job.rcpts, head, rest)
            finally:
                self.busy.discard(session)
        except Exception as e:
            self.log.failure("{queue_id}: relay transfer failed", queue_id=job.message.queue_id)
            session.abort()
            job.fail(f"4.3.0 local error in relay: {type(e).__name__}", relay=str(session.hop))
            return
        if not job.done.called:
            job.done.callback(results)

    def _fail_pending(
        self, dq: _DestinationQueue, text: str, status: str = "", relay: str = NONE
    ) -> None:
        waiting, dq.pending = list(dq.pending), deque()
        for waiting_job in waiting:
            waiting_job.taken()
            waiting_job.fail(text, relay=relay, status=status)

    def stop(self) -> None:
        """Refuse new jobs; defer the waiting ones; end every session (a message cut short
        is deferred, and sent again later: at worst twice, never lost)."""
        self._stopping = True
        for session in list(self.busy):
            session.abort()
        for dq in self.queues.values():
            self._fail_pending(dq, "4.3.2 the relay is shutting down")
            for _session, waiter, timer in list(dq.idle):
                timer.cancel()
                dq.idle.remove((_session, waiter, timer))
                waiter.callback(None)

    def resume(self) -> None:
        self._stopping = False


class RelayDelivery:
    """interfaces.Delivery of one message to its remote recipients."""

    def __init__(
        self, target: RelayTarget, message: QueuedMessage, at_once: float | None = None
    ) -> None:
        self.target = target
        self.message = message
        self.at_once = at_once  # a sender waits: see RelayTarget.start_at_once
        self.rcpts: list[str] = []
        self._body: MessageBody | None = None
        self._aborted = False

    def add_recipient(self, address: str) -> None:
        if address not in self.rcpts:
            self.rcpts.append(address)

    def body(self, body: MessageBody) -> None:
        self._body = body

    def abort(self) -> None:
        self._aborted = True

    @defer.inlineCallbacks
    def commit(self) -> Generator[Deferred[Any], Any, list[RecipientResult]]:
        assert self._body is not None, "body() first"
        target, body = self.target, self._body
        try:
            head, _rest = yield target.read_head(body)
        except OSError as e:
            text = f"4.3.0 cannot read the queue file: {e.strerror or e}"
            return [RecipientResult(r, Outcome.DEFERRED, text, NONE) for r in self.rcpts]
        hops = count_received(head)
        if hops > target.limits.max_hops:
            text = f"5.4.6 too many hops ({hops} Received headers): mail forwarding loop"
            return [RecipientResult(r, Outcome.BOUNCED, text, NONE) for r in self.rcpts]
        by_domain: dict[str, list[str]] = {}
        for rcpt in self.rcpts:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        routes = yield defer.DeferredList(
            [target.route(domain) for domain in by_domain], consumeErrors=True
        )
        results: dict[str, RecipientResult] = {}
        jobs: dict[str, tuple[Destination, _Job]] = {}
        for (ok, value), (domain, rcpts) in zip(routes, by_domain.items(), strict=True):
            if not ok:
                error = value.value
                if isinstance(error, RouteError):
                    outcome = Outcome.BOUNCED if error.permanent else Outcome.DEFERRED
                    text = str(error)
                else:
                    target.log.failure("routing {domain} failed", value, domain=domain)
                    outcome, text = Outcome.DEFERRED, "4.3.0 local error in routing"
                for r in rcpts:
                    results[r] = RecipientResult(r, outcome, text, NONE)
                continue
            destination: Destination = value
            if destination.key in jobs:
                jobs[destination.key][1].rcpts.extend(rcpts)
            else:
                jobs[destination.key] = (destination, _Job(self.message, rcpts, head, body))
        if self._aborted:
            for _, job in jobs.values():
                job.fail("4.3.2 delivery aborted")
        else:
            for destination, job in jobs.values():
                target.submit(destination, job, self.at_once)
        done = yield defer.gatherResults([job.done for _, job in jobs.values()])
        for batch in done:
            for result in batch:
                results[result.address] = result
        return [results[r] for r in self.rcpts]
