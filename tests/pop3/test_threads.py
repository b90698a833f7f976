"""A POP3 session with the real WorkerPool on the real reactor: the store calls in threads."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor

from appliance.workers import WorkerPool
from tests.pop3.conftest import USER1, Harness

MSG = b"Subject: t\r\n\r\n.dot\r\n" + b"z" * 200000 + b"\r\n"


async def until(pop: Harness, c, predicate) -> None:
    for _ in range(500):
        if predicate():
            return
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
    raise AssertionError("not reached: " + c.transport.value().decode("latin-1")[-200:])


@pytest_twisted.ensureDeferred
async def test_threaded_pool_login_retr_dele_quit(pop: Harness) -> None:
    """Login, RETR of a large message, DELE and QUIT with the store calls in worker threads."""
    pool = WorkerPool(reactor, 2, "pop3-test")
    pool.start()
    pop.pool = pool  # type: ignore[assignment]
    pop.clock = reactor  # type: ignore[assignment]
    try:
        pop.deliver(MSG)
        pop.deliver(b"Subject: 2\r\n\r\nx\r\n")
        c = pop.local()
        c.session.dataReceived(
            f"USER {USER1}\r\nPASS secret\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n".encode()
        )
        await until(pop, c, lambda: c.closed)
        out = c.read()
        assert out.startswith(b"+OK\r\n+OK Logged in, 2 messages\r\n+OK ")
        assert b"\r\n..dot\r\n" in out
        assert out.endswith(
            b"z\r\n.\r\n+OK message 1 deleted\r\n"
            b"+OK mail.example.test signing off (1 messages left)\r\n"
        )
        await pool.idle()
        assert len(pop.files()) == 1
        c.drop()
        await pool.idle()
        c2 = pop.local()
        c2.session.dataReceived(f"USER {USER1}\r\nPASS secret\r\n".encode())
        await until(pop, c2, lambda: b"Logged in" in c2.transport.value())
        c2.drop()
        await pool.idle()
    finally:
        await pool.stop()
