"""DNS over UDP: the protocol with its answer table, and the port that reads it in one loop.

Authoritative answers depend only on the query bytes after the ID and on whether the client
may recurse, so `DNSUDPProtocol` keeps each encoded answer keyed on exactly those (cleared when
the zones are reloaded) and answers a repeat with one dict lookup and one sendto.

`DNSUDPPort` is Twisted's UDP port with that lookup inside its read loop: a datagram whose
answer is in the table costs a slice, two dict lookups and its share of the system calls,
without the per-datagram method calls of Port.doRead -> datagramReceived -> _send. On Linux
the datagrams waiting are read with one recvmmsg and the table's answers sent with one
sendmmsg (appliance.dns.mmsg: the two system calls per query were most of the server's
time); elsewhere, one recvfrom and one sendto each (both send with send_datagram). Anything
not in the table goes to the protocol's answer() as before. `DNSUDPServer` is
internet.UDPServer listening with that port.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.application import internet
from twisted.internet import protocol, udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.names import dns

from appliance.dns.mmsg import BATCH, DatagramBatch, batch_for
from appliance.dns.server import MAX_CLIENTS, DNSEngine

_MAX_FAST_ENTRIES = 50_000
# octets of a query read in a batch (a longer one is cut to this, and answered as the engine
# answers a malformed query); a query is a few hundred octets at most
BATCH_SLOT = 4096
# datagrams read per wake-up before the reactor serves others (Twisted reads up to 256 KB)
_READS_PER_WAKE = 1000
_READ_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
# an ICMP port unreachable for an earlier answer surfaces on the next recvfrom (Linux)
_REFUSED = (errno.ECONNREFUSED,)


def send_datagram(sendto: Callable[[bytes, Any], int], data: bytes, addr: Any) -> None:
    """One answer with sendto (the socket's): tried again once if a signal interrupted it; a
    full socket buffer or an ICMP refusal for an earlier answer drops it (the client asks
    again). The one way both the protocol and the read loop send."""
    try:
        sendto(data, addr)
    except InterruptedError:
        send_again(sendto, data, addr)
    except (BlockingIOError, ConnectionRefusedError):
        pass


def send_again(sendto: Callable[[bytes, Any], int], data: bytes, addr: Any) -> None:
    """send_datagram's one retry after a signal interrupted the first sendto."""
    try:
        sendto(data, addr)
    except (BlockingIOError, InterruptedError, ConnectionRefusedError):
        pass


class DNSUDPProtocol(protocol.DatagramProtocol):
    """UDP server with a fast path for authoritative answers already encoded once."""

    log = Logger()

    def __init__(self, engine: DNSEngine) -> None:
        self.engine = engine
        # keyed by recursion permission, then the query bytes after the ID
        self._fast: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})
        # each client address seen lately -> its table of the two (one dict lookup a datagram
        # instead of a call to the engine's ACL)
        self._table_of: dict[str, dict[bytes, bytes]] = {}
        self._socket: socket.socket | None = None  # the listening port's, once started
        engine.authority.on_replace(self.clear_cache)

    def startProtocol(self) -> None:  # noqa: N802 (Twisted's API)
        self._socket = getattr(self.transport, "socket", None)

    def clear_cache(self) -> None:
        for table in self._fast:
            table.clear()

    def table_for(self, ip: str) -> dict[bytes, bytes]:
        """The answer table for a client at ip, by whether it may recurse; remembered."""
        table = self._fast[self.engine.recursion_allowed(ip)]
        if len(self._table_of) >= MAX_CLIENTS:  # the engine's bound on its decisions too
            self._table_of.clear()
        self._table_of[ip] = table
        return table

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        table = self._table_of.get(addr[0])
        if table is None:
            table = self.table_for(addr[0])
        key = data[2:]
        hit = table.get(key)
        if hit is not None:
            self.engine.answered[hit[1] & 15] += 1
            self._send(data[:2] + hit, addr)
            return
        self.answer(data, addr, table, key)

    def answer(
        self, data: bytes, addr: tuple[str, int], table: dict[bytes, bytes], key: bytes
    ) -> None:
        """A question not in table (this client's, key = data[2:]): the engine's answer,
        kept in table if it may answer the same question again."""
        try:
            result = self.engine.handle(data, addr[0], tcp=False)
        except Exception:
            self.log.failure("DNS query from {peer} failed", peer=addr[0])
            result = DNSEngine._header_only(data, dns.ESERVER) if len(data) >= 12 else None
        if result is None:
            return
        if isinstance(result, bytes):
            # a synchronous answer with AA set came from our zones: the same bytes answer
            # the same question until the zones are reloaded
            if result[2] & 0x04 and len(data) <= 512:
                if len(table) >= _MAX_FAST_ENTRIES:
                    table.clear()
                table[key] = result[2:]
            self.engine.answered[result[3] & 15] += 1
            self._send(result, addr)
            return
        result.addCallback(self._send_later, addr)
        result.addErrback(
            lambda f: self.log.failure("DNS forwarding for {peer} failed", f, peer=addr[0])
        )

    def _send_later(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.engine.answered[data[3] & 15] += 1
            self._send(data, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        """sendto() on the port's socket: addr is what recvfrom() gave, so the checks of
        Twisted's Port.write (three parses of the address per datagram) are not needed. A
        full socket buffer drops the answer (the client asks again), as a refused one."""
        sock = self._socket
        if sock is None:  # a transport that is not a socket's (tests)
            self.transport.write(data, addr)
            return
        send_datagram(sock.sendto, data, addr)


class DNSUDPPort(udp.Port):
    """udp.Port whose read loop answers from the protocol's table itself (see the module)."""

    protocol: DNSUDPProtocol
    batched = True  # recvmmsg/sendmmsg where the platform has them (tests turn it off)
    _batch: DatagramBatch | None = None
    _batch_checked = False

    def doRead(self) -> None:  # noqa: N802 (Twisted's API)
        if not self._batch_checked:
            self._batch_checked = True
            self._batch = batch_for(self.socket, BATCH_SLOT) if self.batched else None
            self._tables: dict[bytes, dict[bytes, bytes]] = {}  # client octets -> its table
        if self._batch is not None:
            self._read_batches(self._batch)
        else:
            self._read_one_by_one()

    def _read_batches(self, batch: DatagramBatch) -> None:
        """The datagrams waiting, BATCH at a time: table answers go out in one sendmmsg per
        batch, the rest through the protocol's answer()."""
        proto = self.protocol
        tables = self._tables
        answered = proto.engine.answered
        for _ in range(_READS_PER_WAKE // BATCH):
            try:
                n = batch.receive()
            except OSError as e:
                if e.errno in _REFUSED:
                    return
                raise
            for i in range(n):
                data = batch.data(i)
                client = batch.client(i)
                table = tables.get(client)
                if table is None:
                    if len(tables) >= MAX_CLIENTS:
                        tables.clear()
                    table = tables[client] = proto.table_for(batch.address(i)[0])
                key = data[2:]
                hit = table.get(key)
                if hit is not None:
                    answered[hit[1] & 15] += 1
                    answer = data[:2] + hit
                    if not batch.answer(i, answer):  # longer than a slot: on its own
                        send_datagram(self.socket.sendto, answer, batch.address(i))
                    continue
                try:
                    proto.answer(data, batch.address(i), table, key)
                except Exception:
                    proto.log.failure("DNS datagram from {peer} failed", peer=batch.address(i)[0])
            batch.send()
            if n < BATCH:
                return  # nothing more was waiting

    def _read_one_by_one(self) -> None:
        proto = self.protocol
        table_of = proto._table_of
        answered = proto.engine.answered
        sock = self.socket
        recvfrom, sendto = sock.recvfrom, sock.sendto
        size = self.maxPacketSize
        v6 = self.addressFamily == socket.AF_INET6
        for _ in range(_READS_PER_WAKE):
            try:
                data, addr = recvfrom(size)
            except OSError as e:
                if e.errno in _READ_AGAIN or e.errno in _REFUSED:
                    return
                raise
            if v6:
                addr = addr[:2]  # as Twisted's Port: no flow and scope ID
            table = table_of.get(addr[0])
            if table is None:
                table = proto.table_for(addr[0])
            key = data[2:]
            hit = table.get(key)
            if hit is None:
                try:
                    proto.answer(data, addr, table, key)
                except Exception:
                    proto.log.failure("DNS datagram from {peer} failed", peer=addr[0])
                continue
            answered[hit[1] & 15] += 1
            answer = data[:2] + hit
            try:  # send_datagram, without its call on this path
                sendto(answer, addr)
            except (BlockingIOError, ConnectionRefusedError):
                pass
            except InterruptedError:
                send_again(sendto, answer, addr)


class DNSUDPServer(internet.UDPServer):
    """internet.UDPServer(port, protocol, interface=..., maxPacketSize=..., reactor=...) that
    listens with DNSUDPPort on a POSIX reactor (any other reactor: its own listenUDP)."""

    def _getPort(self) -> Any:  # noqa: N802 (Twisted's API)
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor  # as UDPServer does
        if not isinstance(reactor, PosixReactorBase):
            return super()._getPort()
        port, proto = self.args
        p = DNSUDPPort(
            port,
            proto,
            self.kwargs.get("interface", ""),
            self.kwargs.get("maxPacketSize", 8192),
            reactor,
        )
        p.startListening()
        return p
