"""The DNS server: wire handling, access control, forwarding with a cache, UDP and TCP.

`DNSEngine.handle(data, client_ip, tcp)` takes one query message and returns the response bytes
(or a Deferred of them, when the question is forwarded). Our zones are answered authoritatively
by `Authority`; anything else is forwarded only for clients in `recursion_networks` that asked
for recursion, everyone else gets REFUSED (never an open resolver). AXFR is TCP-only and limited
per zone. Answers too large for the client's UDP size are sent with TC set and the question only.
Malformed queries (section counts that do not match, QDCOUNT other than 1, names over 255
octets, more than one OPT) get FORMERR, which Twisted's lenient parser alone would not give.

UDP, with its table of answers already encoded once, is in appliance/dns/udp.py.
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.error import TimeoutError as TxTimeoutError
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver

from appliance.config import HostPort, Network
from appliance.dns.authority import Answer, Authority
from appliance.dns.cache import ForwardCache
from appliance.dns.health import ServerHealth
from appliance.ip import in_networks
from appliance.limits import ConnectionSlots, Deadlines, SessionLimits
from appliance.log import printable

OPT = dns.OPT
AXFR = dns.AXFR
IXFR = dns.IXFR
_EDNS_VERSION = 0
_BADVERS = 16
_MAX_NAME_WIRE = 255  # octets, labels and root included (RFC 1035 2.3.4)
_HEADER_COUNTS = struct.Struct("!4H")


def _name_end(data: bytes, pos: int) -> int:
    """The offset after the wire-form name at pos, or -1 if it is malformed: a label type
    other than a length (0-63) or a pointer, a pointer that does not point before the last
    one (RFC 1035 4.1.4; this also rules out loops), or over 255 octets once expanded."""
    end = -1
    limit = pos  # pointers must point strictly before this (as BIND demands)
    size = 0
    n = len(data)
    while pos < n:
        b = data[pos]
        if b == 0:
            return end if end >= 0 else pos + 1
        if b < 64:
            size += b + 1
            if size >= _MAX_NAME_WIRE:  # the root octet still has to come
                return -1
            pos += b + 1
        elif b >= 0xC0 and pos + 1 < n:
            target = (b & 0x3F) << 8 | data[pos + 1]
            if target >= limit:
                return -1
            if end < 0:
                end = pos + 2
            limit = pos = target
        else:  # extended (0x40) and reserved (0x80) label types, or a cut-off pointer
            return -1
    return -1


def _well_formed(data: bytes, query: dns.Message) -> bool:
    """What Twisted's parser lets through but RFC 1035 and 6891 do not: sections shorter
    than the header's counts (Twisted stops at the end of the data without complaint),
    question names over 255 octets or with bad labels, and more than one OPT record."""
    counts = _HEADER_COUNTS.unpack_from(data, 4)
    if counts != (
        len(query.queries),
        len(query.answers),
        len(query.authority),
        len(query.additional),
    ):
        return False
    pos = 12
    for _ in range(counts[0]):
        pos = _name_end(data, pos)
        if pos < 0:
            return False
        pos += 4  # type and class
    return sum(1 for rr in query.additional if rr.type == OPT) <= 1


def _opt_rr(udp_size: int, ext_rcode: int = 0) -> bytes:
    """An EDNS(0) OPT pseudo-record: root owner, no options."""
    return b"\x00" + struct.pack("!HHBBHH", OPT, udp_size, ext_rcode, _EDNS_VERSION, 0, 0)


def encode_response(
    query: dns.Message,
    answer: Answer,
    *,
    recursion_available: bool,
    edns_size: int | None,
    limit: int,
) -> bytes:
    """Encode a response to query; fits it into limit bytes, else sets TC (RFC 2181 9).

    Only a QUERY's answer echoes RD and CD and may carry RA; an answer to any other opcode
    (NOTIMP) has none of them, as BIND's and NSD's."""
    rcode = answer.rcode
    is_query = query.opCode == dns.OP_QUERY
    rd = query.recDes if is_query else 0
    cd = query.checkingDisabled if is_query else 0
    ra = recursion_available and is_query

    def build(answers, authority, additional, trunc: bool) -> bytes:
        m = dns.Message(
            id=query.id,
            answer=1,
            opCode=query.opCode,
            recDes=rd,
            recAv=ra,
            auth=answer.aa,
            rCode=rcode & 0xF,
            trunc=trunc,
            maxSize=0,  # Twisted's own truncation cuts records in half
        )
        m.checkingDisabled = cd
        m.queries = query.queries
        m.answers, m.authority, m.additional = list(answers), list(authority), list(additional)
        data = m.toStr()
        if edns_size is not None:
            count = struct.unpack_from("!H", data, 10)[0] + 1
            data = data[:10] + struct.pack("!H", count) + data[12:] + _opt_rr(edns_size, rcode >> 4)
        return data

    data = build(answer.answers, answer.authority, answer.additional, False)
    if len(data) > limit and answer.additional:
        # glue is optional: drop it before truncating the answer itself
        data = build(answer.answers, answer.authority, (), False)
    if len(data) > limit:
        data = build((), (), (), True)
    return data


class _UpstreamUDP(protocol.DatagramProtocol):
    """One query on its own ephemeral port (source-port randomisation against spoofing).

    The socket is connected to the forwarder: the kernel then passes only its datagrams,
    and a forwarder that is down (ICMP port unreachable) fails the query at once rather
    than after the whole timeout (the lab's other appliance stopped: 2 s per lookup)."""

    def __init__(self, server: tuple[str, int], query: bytes, qid: int) -> None:
        self.server = server
        self.query = query
        self.qid = qid
        self.deferred: defer.Deferred[bytes] = defer.Deferred()

    def startProtocol(self) -> None:  # noqa: N802 (Twisted's API)
        self.transport.connect(*self.server)
        self.transport.write(self.query, None)

    def connectionRefused(self) -> None:  # noqa: N802 (Twisted's API)
        self._refused()

    def stopProtocol(self) -> None:  # noqa: N802 (Twisted's API)
        # Twisted's epoll reactor reports the ICMP error of a connected UDP socket as the
        # port's end rather than connectionRefused(): before an answer, that is a refusal
        self._refused()

    def _refused(self) -> None:
        if not self.deferred.called:
            self.deferred.errback(ConnectionRefusedError(f"{self.server[0]}:{self.server[1]}"))

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if (
            addr[:2] != self.server
            or len(data) < 12
            or struct.unpack("!H", data[:2])[0] != self.qid
        ):
            return  # not our answer: ignore, keep waiting
        if not self.deferred.called:
            self.deferred.callback(data)


class _UpstreamTCP(Int16StringReceiver):
    def __init__(self, query: bytes) -> None:
        self.query = query
        self.deferred: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendString(self.query)

    def stringReceived(self, data: bytes) -> None:
        if not self.deferred.called:
            self.deferred.callback(data)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)


class _UpstreamTCPFactory(protocol.ClientFactory):
    def __init__(self, proto: _UpstreamTCP) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> _UpstreamTCP:  # noqa: N802 (Twisted's API)
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        if not self.proto.deferred.called:
            self.proto.deferred.errback(reason)


class Forwarder:
    """Asks the configured forwarders, in order, and caches what they say.

    A question none of them could answer (all down, silent or refusing) fails at once for
    failure_ttl seconds without being asked again (RFC 2308 section 7.1; BIND's servfail-ttl):
    while a forwarder is down, each message's SPF and DMARC lookups would otherwise each open a
    port and wait for the refusal or the timeout, and log the failure once more. A forwarder
    that let a query time out is held back for a while for every question (ServerHealth).
    """

    log = Logger()

    def __init__(
        self,
        servers: Sequence[HostPort],
        *,
        recursion_desired: bool,
        timeout: float,
        cache_size: int,
        reactor: Any,
        source_ip: str = "",
        failure_ttl: float = 1.0,
    ) -> None:
        self.servers = [(s.host, s.port) for s in servers]
        self.recursion_desired = recursion_desired
        self.timeout = timeout
        self.reactor = reactor
        self.source_ip = source_ip
        self.cache = ForwardCache(cache_size, reactor)
        self.health = ServerHealth(reactor)  # forwarders that timed out are held back
        self.failure_ttl = failure_ttl
        # question -> (until when it fails at once, why it failed); at most cache_size kept
        self._failed: dict[tuple[bytes, int, int], tuple[float, str]] = {}
        self._inflight: dict[tuple[bytes, int, int], list[defer.Deferred[Answer]]] = {}

    def resolve(self, name: bytes, qtype: int, qclass: int) -> defer.Deferred[Answer]:
        key = (name.lower(), qtype, qclass)
        cached = self.cache.get(key)
        if cached is not None:
            return defer.succeed(cached)
        failed = self._failed.get(key)
        if failed is not None:
            if self.reactor.seconds() < failed[0]:
                return defer.fail(LookupError(failed[1]))
            del self._failed[key]
        d: defer.Deferred[Answer] = defer.Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:  # the same question is already on its way: share the answer
            waiters.append(d)
            return d
        self._inflight[key] = [d]
        self._ask(name, qtype, qclass).addBoth(self._done, key)
        return d

    def _done(self, result: Any, key: tuple[bytes, int, int]) -> None:
        waiters = self._inflight.pop(key, [])
        if isinstance(result, Answer):
            self.cache.put(key, result)
        elif self.failure_ttl > 0 and result.check(LookupError):
            self._remember_failure(key, str(result.value))
        for d in waiters:
            if isinstance(result, Answer):
                d.callback(result)
            else:
                d.errback(result)

    def _remember_failure(self, key: tuple[bytes, int, int], reason: str) -> None:
        if self.cache.max_entries <= 0:
            return
        while len(self._failed) >= self.cache.max_entries:
            del self._failed[next(iter(self._failed))]  # the oldest
        self._failed[key] = (self.reactor.seconds() + self.failure_ttl, reason)

    @defer.inlineCallbacks
    def _ask(self, name: bytes, qtype: int, qclass: int):
        last_error = "no forwarders"
        for server in self.servers:
            held = self.health.skip(server)
            if held is not None:
                last_error = held
                continue
            qid = secrets.randbits(16)
            m = dns.Message(id=qid, recDes=self.recursion_desired)
            m.queries = [dns.Query(name, qtype, qclass)]
            query = m.toStr()
            try:
                raw = yield self._udp(server, query, qid)
                response = dns.Message()
                response.fromStr(raw)
                if response.trunc:
                    raw = yield self._tcp(server, query)
                    response = dns.Message()
                    response.fromStr(raw)
            except Exception as e:  # timeouts, refused ports, garbage answers: try the next one
                if isinstance(e, TxTimeoutError):
                    self.health.timed_out(server)
                else:
                    self.health.answered(server)
                last_error = f"{type(e).__name__}: {e}"
                continue
            self.health.answered(server)
            if not response.answer or [(q.name.name.lower(), q.type) for q in response.queries] != [
                (name.lower(), qtype)
            ]:
                last_error = "answer does not match the question"
                continue
            if response.rCode not in (dns.OK, dns.ENAME):
                last_error = f"rcode {response.rCode}"
                continue
            additional = [rr for rr in response.additional if rr.type != OPT]
            return Answer(response.rCode, False, response.answers, response.authority, additional)
        self.log.info(
            "forwarding {name} type {qtype} failed: {reason}",
            name=printable(name, _MAX_NAME_WIRE),
            qtype=qtype,
            reason=printable(last_error),
        )
        raise LookupError(last_error)

    def _udp(self, server: tuple[str, int], query: bytes, qid: int) -> defer.Deferred[bytes]:
        proto = _UpstreamUDP(server, query, qid)
        port = self.reactor.listenUDP(0, proto, interface=self._source_for(server[0]))
        return self._bounded(proto.deferred, port.stopListening)

    def _tcp(self, server: tuple[str, int], query: bytes) -> defer.Deferred[bytes]:
        proto = _UpstreamTCP(query)
        factory = _UpstreamTCPFactory(proto)
        connector = self.reactor.connectTCP(server[0], server[1], factory, timeout=self.timeout)
        return self._bounded(proto.deferred, connector.disconnect)

    def _bounded(self, d: defer.Deferred[bytes], cleanup: Any) -> defer.Deferred[bytes]:
        def expire() -> None:
            if not d.called:
                d.errback(TxTimeoutError(f"no answer within {self.timeout}s"))

        timer = self.reactor.callLater(self.timeout, expire)

        def finish(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            cleanup()
            return result

        return d.addBoth(finish)

    def _source_for(self, host: str) -> str:
        if self.source_ip and (":" in self.source_ip) == (":" in host):
            return self.source_ip
        return "::" if ":" in host else ""


MAX_CLIENTS = 10_000  # client addresses whose recursion decision is remembered (then forgotten)


class DNSEngine:
    """Protocol-independent query handling: bytes in, bytes (or a Deferred of bytes) out."""

    log = Logger()

    def __init__(
        self,
        authority: Authority,
        *,
        forwarder: Forwarder | None = None,
        recursion_networks: Sequence[Network] = (),
        edns_udp_size: int = 1232,
    ) -> None:
        self.authority = authority
        self.forwarder = forwarder
        self.recursion_networks = tuple(recursion_networks)
        self.edns_udp_size = edns_udp_size
        self._acl_cache: dict[str, bool] = {}
        # answers sent, by rcode (the low 4 bits of the header's fourth octet): counted by
        # the protocols as they send, one list increment each; read by the metrics at scrape
        self.answered: list[int] = [0] * 16

    def recursion_allowed(self, ip: str) -> bool:
        allowed = self._acl_cache.get(ip)
        if allowed is None:
            allowed = self.forwarder is not None and in_networks(ip, self.recursion_networks)
            if len(self._acl_cache) >= MAX_CLIENTS:
                self._acl_cache.clear()
            self._acl_cache[ip] = allowed
        return allowed

    def handle(
        self, data: bytes, client_ip: str, tcp: bool
    ) -> bytes | defer.Deferred[bytes] | None:
        """Answer one DNS message; None means drop it (not a query, or not even a header)."""
        if len(data) < 12 or data[2] & 0x80:  # too short, or a response: never answer those
            return None
        query = dns.Message()
        try:
            query.fromStr(data)
        except Exception:
            return self._header_only(data, dns.EFORMAT)
        if not _well_formed(data, query):
            return self._header_only(data, dns.EFORMAT)
        ra = self.recursion_allowed(client_ip)
        edns_size = None
        version = 0
        for rr in query.additional:
            if rr.type == OPT:
                edns_size = min(max(rr.cls, 512), self.edns_udp_size)
                version = (rr.ttl >> 16) & 0xFF
        limit = 65535 if tcp else (edns_size or 512)

        def reply(answer: Answer) -> bytes:
            return encode_response(
                query, answer, recursion_available=ra, edns_size=edns_size, limit=limit
            )

        if query.opCode != dns.OP_QUERY:
            return reply(Answer(rcode=dns.ENOTIMP, aa=False))
        if len(query.queries) != 1:  # the header's count: checked against it above
            return self._header_only(data, dns.EFORMAT)
        if edns_size is not None and version != _EDNS_VERSION:
            return reply(Answer(rcode=_BADVERS, aa=False))
        q = query.queries[0]
        name = q.name.name
        if q.cls not in (dns.IN, dns.ANY):
            return reply(Answer(rcode=dns.EREFUSED, aa=False))
        if q.type in (AXFR, IXFR):
            return self._transfer(query, name, client_ip, tcp, ra)
        answer = self.authority.answer(name, q.type, minimal=bool(query.recDes))
        if answer is not None:
            return reply(answer)
        if not (ra and query.recDes):
            return reply(Answer(rcode=dns.EREFUSED, aa=False))
        d = self.forwarder.resolve(name, q.type, dns.IN)
        d.addErrback(lambda _f: Answer(rcode=dns.ESERVER, aa=False))
        return d.addCallback(reply)

    def _transfer(
        self, query: dns.Message, name: bytes, client_ip: str, tcp: bool, ra: bool
    ) -> bytes:
        zone = self.authority.zones.get(name.rstrip(b".").lower())
        allowed = zone is not None and tcp and in_networks(client_ip, zone.allow_transfer)
        if not allowed:
            self.log.info(
                "zone transfer of {zone} refused for {peer}",
                zone=printable(name, _MAX_NAME_WIRE),
                peer=client_ip,
            )
            return encode_response(
                query,
                Answer(rcode=dns.EREFUSED, aa=False),
                recursion_available=ra,
                edns_size=None,
                limit=512,
            )
        self.log.info(
            "zone transfer of {zone} to {peer}",
            zone=printable(name, _MAX_NAME_WIRE),
            peer=client_ip,
        )
        answer = Answer(answers=zone.transfer_records())
        return encode_response(query, answer, recursion_available=ra, edns_size=None, limit=65535)

    @staticmethod
    def _header_only(data: bytes, rcode: int) -> bytes:
        """A response with no sections, for messages we cannot parse (or will not: FORMERR).

        QR, the opcode and the ID; RD and CD only for a QUERY, as BIND's dns_message_reply()
        keeps them (and never RA: it is not known yet when parsing fails)."""
        flags = struct.unpack_from("!H", data, 2)[0]
        opcode = flags & 0x7800
        keep = flags & 0x0110 if opcode == 0 else 0  # RD 0x0100, CD 0x0010
        return data[:2] + struct.pack("!HHHHH", 0x8000 | opcode | keep | rcode, 0, 0, 0, 0)


class DNSTCPProtocol(Int16StringReceiver):
    """DNS over TCP: length-prefixed messages, answered in order, idle connections closed.

    Fairness: each connection holds one of the service's `ConnectionSlots` (appliance.limits,
    shared by every listen address): a client over its share is closed at once; when every
    slot is taken, the connection idle longest (no answer in flight) of the client holding
    most slots is closed to make room; and while the slots are stressed (80% used) the idle
    timeout is `stress_idle_timeout`.

    Memory: the protocol is a streaming producer on its transport, so it stops reading (and
    parsing what it has read) while more than the transport's buffer size (64 KiB) of answers
    waits to be sent; and it stops reading while MAX_IN_FLIGHT answers are unfinished
    (forwarded questions, and the answers queued behind them to keep the order). A client
    that sends without reading therefore costs at most about 64 KiB plus MAX_IN_FLIGHT
    answers, and is closed when its idle timeout passes.
    """

    log = Logger()
    MAX_LENGTH = 65535
    MAX_IN_FLIGHT = 64

    factory: DNSTCPFactory

    def __init__(self) -> None:
        # answers not yet sent, in question order; [None] until the engine has answered,
        # then [bytes] (b"" when there is nothing to send)
        self._pending: deque[list[bytes | None]] = deque()
        self._deadlines: Deadlines | None = None
        self._counted = False  # holds a slot
        self._closed = False
        self._write_paused = False  # the transport's buffer is full
        self._receiving = False
        self._peer = ""

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's API)
        f = self.factory
        self._peer = getattr(self.transport.getPeer(), "host", "") or ""
        if not f.slots.admit(self._peer, self):
            self._close()
            return
        self._counted = True
        slots = f.slots
        self._deadlines = Deadlines(
            f.clock, f.limits, self._expired, stressed=lambda: slots.stressed
        )
        self._deadlines.greeted()  # DNS has no greeting phase
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self._closed = True
        self._pending.clear()
        if self._deadlines is not None:
            self._deadlines.stop()
        if self._counted:
            self._counted = False
            self.factory.slots.release(self)

    def _close(self) -> None:
        self._closed = True
        if self._deadlines is not None:
            self._deadlines.stop()
        self.transport.abortConnection()

    def _expired(self, which: str) -> None:
        self._close()

    # ------------------------------------------------------------------ Slot (appliance.limits)

    def idle_since(self) -> float | None:
        """Evictable while no answer is in flight: idle since its last complete question, its
        last answer finished, or (for a client reading a long stream of answers) the last
        time its send buffer drained; or since connect."""
        deadlines = self._deadlines
        if self._pending or deadlines is None or self._closed:
            return None
        return deadlines.request_start

    def evict(self) -> None:
        self._counted = False  # the slot is already the newcomer's
        self._close()

    def stress_changed(self) -> None:
        if self._deadlines is not None:
            self._deadlines.stress_changed()

    # ------------------------------------------------------------------ input

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False

    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        deadlines = self._deadlines
        if self._closed or deadlines is None:
            return
        deadlines.progress()  # input, and the next question's deadline starts now
        peer = self._peer
        try:
            result = self.factory.engine.handle(data, peer, tcp=True)
        except Exception:
            self.log.failure("DNS query from {peer} failed", peer=peer)
            result = DNSEngine._header_only(data, dns.ESERVER) if len(data) >= 12 else None
        if result is None:
            return
        pending = self._pending
        if isinstance(result, bytes):
            if not pending:  # nothing ahead of it: the common case
                self.factory.engine.answered[result[3] & 15] += 1
                self.sendString(result)
                return
            pending.append([result])
        else:
            entry: list[bytes | None] = [None]
            pending.append(entry)
            if not deadlines.held:
                deadlines.hold()  # the wait is ours (bounded by forward_timeout), not theirs
            result.addCallbacks(
                self._answered, self._failed, callbackArgs=(entry,), errbackArgs=(entry, data)
            )
        self._flush()

    def _answered(self, answer: bytes, entry: list[bytes | None]) -> None:
        entry[0] = answer
        self._flush()

    def _failed(self, failure: Any, entry: list[bytes | None], query: bytes) -> None:
        self.log.failure("DNS TCP answer to {peer} failed", failure, peer=self._peer)
        entry[0] = DNSEngine._header_only(query, dns.ESERVER)
        self._flush()

    def _flush(self) -> None:
        """Send the finished answers at the head of the queue (answers go out in the order
        the questions came in)."""
        if self._closed:
            return
        pending = self._pending
        while pending and pending[0][0] is not None:
            answer = pending.popleft()[0]
            if answer:
                self.factory.engine.answered[answer[3] & 15] += 1
                self.sendString(answer)
        deadlines = self._deadlines
        if not pending and deadlines is not None and deadlines.held:
            deadlines.release()
        self._update_reading()

    # ------------------------------------------------------------------ back-pressure

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer: the transport's buffer is full)
        self._write_paused = True
        self._update_reading()

    def resumeProducing(self) -> None:  # noqa: N802 (the transport's buffer has drained)
        self._write_paused = False
        deadlines = self._deadlines
        if deadlines is not None and not deadlines.held and not self._closed:
            deadlines.progress()  # the client reads its answers: that is activity
        self._update_reading()

    def stopProducing(self) -> None:  # noqa: N802 (the connection is gone)
        self._closed = True
        self.paused = True

    def _update_reading(self) -> None:
        """Read (and parse) only while the transport can take more answers and fewer than
        MAX_IN_FLIGHT are unfinished; `paused` also stops Int16StringReceiver's loop."""
        stop = self._write_paused or len(self._pending) >= self.MAX_IN_FLIGHT
        transport: Any = self.transport  # a TCP transport: IPushProducer too
        if stop == self.paused or self._closed or transport is None:
            return
        self.paused = stop
        if stop:
            transport.pauseProducing()
            return
        transport.resumeProducing()
        if not self._receiving:  # else the parsing loop in progress goes on by itself
            self.dataReceived(b"")


class DNSTCPFactory(protocol.ServerFactory[DNSTCPProtocol]):
    """DNS over TCP for one listen address; `slots` are shared by all of the service's."""

    def __init__(
        self,
        engine: DNSEngine,
        idle_timeout: float = 10,
        max_connections: int = 200,
        *,
        max_connections_per_ip: int = 20,
        stress_idle_timeout: float = 2,
        slots: ConnectionSlots | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.clock = reactor
        # a whole question must come within idle_timeout of the last (so dripping bytes
        # buys nothing); under stress, within stress_idle_timeout
        forever = float("inf")
        self.limits = SessionLimits(
            idle_timeout=idle_timeout,
            command_timeout=idle_timeout,
            greeting_timeout=forever,
            data_timeout=forever,
            stress_timeout=min(stress_idle_timeout, idle_timeout),
        )
        if slots is None:
            slots = ConnectionSlots(max_connections, max_connections_per_ip)
        self.slots = slots
        self.max_connections = slots.max_connections

    def buildProtocol(self, addr: Any) -> DNSTCPProtocol:  # noqa: N802 (Twisted's API)
        proto = DNSTCPProtocol()
        proto.factory = self
        return proto

    @property
    def open_connections(self) -> int:
        return len(self.slots)
