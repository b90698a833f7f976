"""The DNS server: wire handling, access control, forwarding with a cache, UDP and TCP.

`DNSEngine.handle(data, client_ip, tcp)` takes one query message and returns the response bytes
(or a Deferred of them, when the question is forwarded). Our zones are answered authoritatively
by `Authority`; anything else is forwarded only for clients in `recursion_networks` that asked
for recursion, everyone else gets REFUSED (never an open resolver). AXFR is TCP-only and limited
per zone. Answers too large for the client's UDP size are sent with TC set and the question only.

Speed: authoritative answers depend only on the query bytes after the ID and on whether the
client may recurse, so the UDP protocol keeps the encoded answer keyed on exactly those and
answers repeats with one dict lookup and one sendto.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.error import TimeoutError as TxTimeoutError
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin

from appliance.config import HostPort, Network
from appliance.dns.authority import Answer, Authority
from appliance.ip import in_networks

OPT = 41
AXFR = dns.AXFR
IXFR = dns.IXFR
_EDNS_VERSION = 0
_BADVERS = 16
_MAX_FAST_ENTRIES = 50_000


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
    """Encode a response to query; fits it into limit bytes, else sets TC (RFC 2181 9)."""
    rcode = answer.rcode

    def build(answers, authority, additional, trunc: bool) -> bytes:
        m = dns.Message(
            id=query.id,
            answer=1,
            opCode=query.opCode,
            recDes=query.recDes,
            recAv=recursion_available,
            auth=answer.aa,
            rCode=rcode & 0xF,
            trunc=trunc,
            maxSize=0,  # Twisted's own truncation cuts records in half
        )
        m.checkingDisabled = query.checkingDisabled
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


class ForwardCache:
    """Answers from forwarders, kept until their TTL runs out; bounded, oldest dropped first."""

    def __init__(self, max_entries: int, clock: Any) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[tuple[bytes, int, int], tuple[float, float, Answer]] = {}

    def get(self, key: tuple[bytes, int, int]) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, expires, answer = entry
        now = self.clock.seconds()
        if now >= expires:
            del self._entries[key]
            return None
        age = int(now - stored)
        if age == 0:
            return answer

        def aged(rrs: list[dns.RRHeader]) -> list[dns.RRHeader]:
            return [
                dns.RRHeader(rr.name.name, rr.type, rr.cls, max(rr.ttl - age, 0), rr.payload)
                if rr.type != OPT
                else rr
                for rr in rrs
            ]

        return Answer(
            answer.rcode,
            False,
            aged(answer.answers),
            aged(answer.authority),
            aged(answer.additional),
        )

    def put(self, key: tuple[bytes, int, int], answer: Answer) -> None:
        if self.max_entries <= 0:
            return
        if answer.rcode not in (dns.OK, dns.ENAME):
            return
        ttls = [rr.ttl for rr in answer.answers]
        if not ttls:
            # negative answer: cached for min(SOA TTL, SOA minimum) (RFC 2308), else not at all
            ttls = [
                min(rr.ttl, rr.payload.minimum) for rr in answer.authority if rr.type == dns.SOA
            ]
        if not ttls or min(ttls) <= 0:
            return
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        now = self.clock.seconds()
        self._entries[key] = (now, now + min(ttls), answer)


class _UpstreamUDP(protocol.DatagramProtocol):
    """One query on its own ephemeral port (source-port randomisation against spoofing)."""

    def __init__(self, server: tuple[str, int], query: bytes, qid: int) -> None:
        self.server = server
        self.query = query
        self.qid = qid
        self.deferred: defer.Deferred[bytes] = defer.Deferred()

    def startProtocol(self) -> None:
        self.transport.write(self.query, self.server)

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
    """Asks the configured forwarders, in order, and caches what they say."""

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
    ) -> None:
        self.servers = [(s.host, s.port) for s in servers]
        self.recursion_desired = recursion_desired
        self.timeout = timeout
        self.reactor = reactor
        self.source_ip = source_ip
        self.cache = ForwardCache(cache_size, reactor)
        self._inflight: dict[tuple[bytes, int, int], list[defer.Deferred[Answer]]] = {}

    def resolve(self, name: bytes, qtype: int, qclass: int) -> defer.Deferred[Answer]:
        key = (name.lower(), qtype, qclass)
        cached = self.cache.get(key)
        if cached is not None:
            return defer.succeed(cached)
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
        for d in waiters:
            if isinstance(result, Answer):
                d.callback(result)
            else:
                d.errback(result)

    @defer.inlineCallbacks
    def _ask(self, name: bytes, qtype: int, qclass: int):
        last_error = "no forwarders"
        for server in self.servers:
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
                last_error = f"{type(e).__name__}: {e}"
                continue
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
            name=name.decode("ascii", "replace"),
            qtype=qtype,
            reason=last_error,
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

    def recursion_allowed(self, ip: str) -> bool:
        allowed = self._acl_cache.get(ip)
        if allowed is None:
            allowed = self.forwarder is not None and in_networks(ip, self.recursion_networks)
            if len(self._acl_cache) > 10_000:
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
        if len(query.queries) != 1:
            return reply(Answer(rcode=dns.EFORMAT, aa=False))
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
                zone=name.decode("ascii", "replace"),
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
            "zone transfer of {zone} to {peer}", zone=name.decode("ascii"), peer=client_ip
        )
        answer = Answer(answers=zone.transfer_records())
        return encode_response(query, answer, recursion_available=ra, edns_size=None, limit=65535)

    @staticmethod
    def _header_only(data: bytes, rcode: int) -> bytes:
        """A response with no sections, for messages we cannot parse."""
        flags = struct.unpack_from("!H", data, 2)[0]
        flags = 0x8000 | (flags & 0x7900) | rcode  # QR, keep opcode and RD
        return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


class DNSUDPProtocol(protocol.DatagramProtocol):
    """UDP server with a fast path for authoritative answers already encoded once."""

    log = Logger()

    def __init__(self, engine: DNSEngine) -> None:
        self.engine = engine
        # keyed by recursion permission, then the query bytes after the ID
        self._fast: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})

    def clear_cache(self) -> None:
        for table in self._fast:
            table.clear()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        allowed = self.engine.recursion_allowed(addr[0])
        table = self._fast[allowed]
        key = data[2:]
        hit = table.get(key)
        if hit is not None:
            self.transport.write(data[:2] + hit, addr)
            return
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
            self.transport.write(result, addr)
            return
        result.addCallback(self._send_later, addr)
        result.addErrback(
            lambda f: self.log.failure("DNS forwarding for {peer} failed", f, peer=addr[0])
        )

    def _send_later(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.write(data, addr)


class DNSTCPProtocol(Int16StringReceiver, TimeoutMixin):
    """DNS over TCP: length-prefixed messages, answered in order, idle connections closed."""

    log = Logger()
    MAX_LENGTH = 65535

    def connectionMade(self) -> None:
        self.factory.open_connections += 1
        if self.factory.open_connections > self.factory.max_connections:
            self.transport.abortConnection()
            return
        self.setTimeout(self.factory.idle_timeout)
        self._queue: defer.Deferred[None] = defer.succeed(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open_connections -= 1
        self.setTimeout(None)

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        peer = self.transport.getPeer().host
        try:
            result = self.factory.engine.handle(data, peer, tcp=True)
        except Exception:
            self.log.failure("DNS query from {peer} failed", peer=peer)
            result = DNSEngine._header_only(data, dns.ESERVER) if len(data) >= 12 else None
        if result is None:
            return
        # answers go out in the order the questions came in
        self._queue.addCallback(lambda _: result).addCallback(self._send)
        self._queue.addErrback(
            lambda f: self.log.failure("DNS TCP answer to {peer} failed", f, peer=peer)
        )

    def _send(self, data: bytes) -> None:
        if self.transport is not None and self.connected:
            self.sendString(data)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()


class DNSTCPFactory(protocol.ServerFactory):
    protocol = DNSTCPProtocol

    def __init__(self, engine: DNSEngine, idle_timeout: float = 10, max_connections: int = 200):
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.open_connections = 0
