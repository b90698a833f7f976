"""The worker threads for blocking file work (fsyncs), shared by the queue and local delivery,
and QuickCalls, which runs the cheap calls of a protocol on the reactor while they stay cheap.

`WorkerPool.run(f, *args)` runs f in one of the pool's threads and returns a Deferred that
fires on the reactor thread. `idle()` fires once nothing started through the pool is running
(work started meanwhile included), so the queue can stop only after every commit and delivery
it began has finished and its callbacks have run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class WorkerPool:
    def __init__(self, reactor: IReactorFromThreads, threads: int, name: str = "workers") -> None:
        self.reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self._pending: set[Deferred[Any]] = set()

    @property
    def started(self) -> bool:
        return bool(self._pool.started)

    def start(self) -> None:
        if not self._pool.started:
            self._pool.start()

    def run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """f(*args) in a worker thread; idle() waits for it and for the callbacks it runs."""
        d: Deferred[T] = deferToThreadPool(self.reactor, self._pool, f, *args)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def track(self, d: Deferred[T]) -> Deferred[T]:
        """Make idle() wait for d too (work that runs through the pool in several steps)."""
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def idle(self) -> Deferred[None]:
        """Fire once no work is in flight (work started meanwhile included)."""
        if not self._pending:
            return defer.succeed(None)
        waiting = defer.DeferredList(list(self._pending), consumeErrors=False)
        return waiting.addCallback(lambda _: self.idle())

    def stop(self) -> Deferred[None]:
        """Wait until idle, then join the threads."""

        def join(_: None) -> None:
            if self._pool.started:
                self._pool.stop()  # joins idle threads only: all work has finished

        return self.idle().addCallback(join)


class QuickCalls:
    """Calls that are usually far cheaper than a thread hop, run on the reactor thread.

    A look at a small Maildir folder, a rename, a 1 KB read from the page cache: each is a few
    microseconds of system calls, while handing it to a worker thread and its result back
    costs a hundred or more, and the thread contends with the reactor for the GIL. So such
    calls run inline, timed; once `strikes` of them within `cooldown` seconds took longer
    than `slow` seconds each (a cold cache, a busy disk, a network file system; 10 ms by
    default, above the few milliseconds a busy machine's scheduler may take the thread away
    for, and more than one, since any single call can be unlucky), every call goes to the
    pool for `cooldown` seconds, after which inline is tried again (and the log says so). A slow store therefore costs the reactor one slow call per
    cooldown, not one per command. Only calls that never fsync belong here: those stay in the
    pool whatever the timing says. With enabled false, every call goes to the pool.
    """

    def __init__(
        self,
        pool: WorkerPool,
        *,
        enabled: bool = True,
        slow: float = 0.01,
        strikes: int = 3,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.enabled = enabled
        self.slow = slow
        self.strikes = strikes
        self.cooldown = cooldown
        self.recent_slow: list[float] = []  # when the last slow calls ended
        self.clock = clock
        self.pooled_until = 0.0
        self.slow_calls = 0  # how often a call was found slow

    log = Logger()

    def run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        if not self.enabled or self.clock() < self.pooled_until:
            return self.pool.run(f, *args)
        start = time.perf_counter()
        try:
            result = f(*args)
        except BaseException:
            self._timed(start)
            return defer.fail()
        self._timed(start)
        return defer.succeed(result)

    def _timed(self, start: float) -> None:
        took = time.perf_counter() - start
        if took <= self.slow:
            return
        self.slow_calls += 1
        now = self.clock()
        self.recent_slow = [t for t in self.recent_slow if now - t < self.cooldown] + [now]
        if len(self.recent_slow) >= self.strikes:
            self.recent_slow = []
            self.pooled_until = now + self.cooldown
            self.log.warn(
                "{count} store calls over {slow_ms:g} ms on the reactor (the last {ms:.1f} ms): every call"
                " goes to the worker threads for {cooldown:g} s",
                count=self.strikes,
                slow_ms=self.slow * 1000,
                ms=took * 1000,
                cooldown=self.cooldown,
            )
