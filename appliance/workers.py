"""The worker threads for blocking file work (fsyncs), shared by the queue and local delivery.

`WorkerPool.run(f, *args)` runs f in one of the pool's threads and returns a Deferred that
fires on the reactor thread. `idle()` fires once nothing started through the pool is running
(work started meanwhile included), so the queue can stop only after every commit and delivery
it began has finished and its callbacks have run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
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
