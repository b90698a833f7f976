"""DatagramBatch (recvmmsg/sendmmsg through ctypes) on real loopback UDP sockets: what arrives,
from whom, and that each answer goes back to its own sender."""

from __future__ import annotations

import socket
import sys

import pytest

from appliance.dns.mmsg import BATCH, batch_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux calls")


def udp(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(5)
    return s


def drain(server: socket.socket, batch) -> list[int]:
    """receive() until nothing waits; the counts of each call."""
    counts = []
    while n := batch.receive():
        counts.append(n)
    return counts


def test_receive_in_batches_with_each_sender_and_nothing_waiting() -> None:
    server = udp()
    server.setblocking(False)
    batch = batch_for(server, 512)
    assert batch is not None
    assert batch.receive() == 0  # nothing waiting: no error, no block
    a, b = udp(), udp()
    to = server.getsockname()
    for i in range(BATCH + 10):
        (a if i % 2 else b).sendto(b"q%03d" % i, to)
    assert batch.receive() == BATCH
    firsts = [(batch.data(i), batch.address(i)) for i in range(BATCH)]
    assert firsts[0] == (b"q000", b.getsockname()) and firsts[1] == (b"q001", a.getsockname())
    assert batch.client(1) == socket.inet_aton("127.0.0.1")
    assert [d for d, _ in firsts] == [b"q%03d" % i for i in range(BATCH)]
    assert drain(server, batch) == [10]


def test_answers_go_to_their_own_senders_in_runs_and_long_ones_are_refused() -> None:
    """Answers queued for slots 0, 1, 2 and 4 (3 left out) go out in two sendmmsg runs; an
    answer longer than a slot is not queued (the caller sends it)."""
    server = udp()
    server.setblocking(False)
    batch = batch_for(server, 64)
    assert batch is not None
    clients = [udp() for _ in range(5)]
    for i, c in enumerate(clients):
        c.sendto(b"question %d" % i, server.getsockname())
    assert batch.receive() == 5
    for i in (0, 1, 2, 4):
        assert batch.answer(i, b"answer %d to " % i + batch.data(i))
    assert not batch.answer(3, b"x" * 65)
    batch.send()
    for i in (0, 1, 2, 4):
        data, addr = clients[i].recvfrom(100)
        assert (data, addr) == (b"answer %d to question %d" % (i, i), server.getsockname())
    clients[3].settimeout(0.2)
    with pytest.raises(TimeoutError):
        clients[3].recvfrom(100)


def test_a_query_longer_than_the_slot_is_cut_to_it() -> None:
    server = udp()
    server.setblocking(False)
    batch = batch_for(server, 16)
    assert batch is not None
    udp().sendto(b"0123456789abcdefTAIL", server.getsockname())
    assert batch.receive() == 1
    assert batch.data(0) == b"0123456789abcdef"


def test_ipv6_senders() -> None:
    try:
        server = udp("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server.setblocking(False)
    batch = batch_for(server, 64)
    assert batch is not None
    client = udp("::1", socket.AF_INET6)
    client.sendto(b"v6 question", server.getsockname()[:2])
    assert batch.receive() == 1
    assert batch.address(0) == client.getsockname()[:2]
    assert batch.client(0) == socket.inet_pton(socket.AF_INET6, "::1")
    assert batch.answer(0, b"v6 answer")
    batch.send()
    assert client.recvfrom(100)[0] == b"v6 answer"


def test_no_batch_for_other_families() -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert batch_for(s, 512) is None
    finally:
        s.close()
