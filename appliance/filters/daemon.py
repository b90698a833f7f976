"""Talking to a scanning daemon (clamd, spamd): one request, one answer, one connection.

`exchange()` connects to a TCP address or a UNIX socket, sends the request's pieces as the
daemon reads them (a pull producer: a big message is never queued whole in memory), reads
the answer until the daemon closes the connection (both close after answering), and fails
with DaemonError if the daemon cannot be reached, answers more than max_answer bytes, or
has not finished within the timeout. The caller turns a DaemonError into its admin's
choice: 451, or accept with a log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

MAX_ANSWER = 1024 * 1024


class DaemonError(Exception):
    """The daemon could not be asked, or its answer makes no sense."""


@dataclass(frozen=True)
class DaemonAddress:
    """host:port (TCP) or a UNIX socket path."""

    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@implementer(IPullProducer)
class _Pieces:
    """Hands the request to the transport a piece at a time, as it asks for more."""

    def __init__(self, transport: object, pieces: Iterator[bytes]) -> None:
        self.transport = transport
        self.pieces = pieces

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted's API)
        t = self.transport
        try:
            piece = next(self.pieces)
        except StopIteration:
            t.unregisterProducer()  # type: ignore[attr-defined]
            return
        except Exception:
            t.unregisterProducer()  # type: ignore[attr-defined]
            t.abortConnection()  # type: ignore[attr-defined]
            raise
        t.write(piece)  # type: ignore[attr-defined]

    def stopProducing(self) -> None:  # noqa: N802
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


class _Exchange(protocol.Protocol):
    def __init__(self, pieces: Iterator[bytes], max_answer: int) -> None:
        self.pieces = pieces
        self.max_answer = max_answer
        self.answer: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred()
        self.too_long = False

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        self.transport.registerProducer(_Pieces(self.transport, self.pieces), False)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.size += len(data)
        if self.size > self.max_answer:
            self.too_long = True
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.answer.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        if self.done.called:
            return
        if self.too_long:
            self.done.errback(DaemonError(f"answer longer than {self.max_answer} bytes"))
        else:
            self.done.callback(b"".join(self.answer))


def exchange(
    reactor: Any,
    address: DaemonAddress,
    pieces: Iterator[bytes],
    timeout: float,
    max_answer: int = MAX_ANSWER,
) -> Deferred[bytes]:
    """Send pieces to the daemon, return everything it answers before closing."""
    endpoint: Any
    if address.path is not None:
        endpoint = UNIXClientEndpoint(reactor, str(address.path), timeout=timeout)
    elif ":" in address.host:
        endpoint = TCP6ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    proto = _Exchange(pieces, max_answer)
    result: Deferred[bytes] = Deferred()
    call = reactor.callLater(timeout, lambda: give_up())
    connected: Deferred[object] = endpoint.connect(protocol.Factory.forProtocol(lambda: proto))

    def give_up() -> None:
        if result.called:
            return
        if proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            connected.cancel()
        if not result.called:
            result.errback(DaemonError(f"{address}: no answer within {timeout:g} s"))

    def not_connected(failure: Failure) -> None:
        if not result.called:
            result.errback(DaemonError(f"{address}: {failure.getErrorMessage()}"))

    def answered(data: bytes) -> None:
        if not result.called:
            result.callback(data)

    def broke(failure: Failure) -> None:
        if not result.called:
            result.errback(failure)

    connected.addErrback(not_connected)
    proto.done.addCallbacks(answered, broke)

    def finished(r: object) -> object:
        if call.active():
            call.cancel()
        return r

    return result.addBoth(finished)
