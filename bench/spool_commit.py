#!/usr/bin/env python3
"""Spool commit rate: N messages of SIZE bytes from C concurrent in-process "sessions".

Each session does what the SMTP layer does per message: begin(), write() in chunks, commit(),
wait for the Deferred (the moment the 250 would go out), next message. Prints commits/s (rate
of durable acknowledgements) and, for the spool path, the rate including background delivery.

    .venv/bin/python bench/spool_commit.py [-n 5000] [-c 20] [--size 1024] [--path fast|spool|remote]
        [--threads 8] [--dir /var/tmp/bench]

--path fast:   one local mailbox (straight into Maildir, 2 fsyncs, 1 of them shared)
--path spool:  two local mailboxes (queue file, then a copy in each Maildir)
--path remote: one remote recipient (queue file moved to queue/deferred)

The directory must be on the disk under test (not tmpfs): fsync is the cost being measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import defer, reactor  # noqa: E402

from appliance.interfaces import Envelope, Mailbox, Recipient  # noqa: E402
from appliance.service import build_queue  # noqa: E402


def recipients(path: str, session: int) -> tuple[Recipient, ...]:
    box = Mailbox("bench.test", f"user{session % 10}")
    if path == "fast":
        return (Recipient(box.address, (box,)),)
    if path == "spool":
        other = Mailbox("bench.test", f"user{(session + 1) % 10}")
        return (Recipient(box.address, (box,)), Recipient(other.address, (other,)))
    return (Recipient("someone@elsewhere.test", remote=True),)


def message(size: int) -> bytes:
    head = b"From: a@bench.test\r\nTo: b@bench.test\r\nSubject: bench\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body


@defer.inlineCallbacks
def run(args: argparse.Namespace, state: Path) -> defer.Generator:
    spool, _store = build_queue(state, "bench.test", reactor, fsync_threads=args.threads)
    spool.start()
    data = message(args.size)
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    remaining = [args.n]
    latencies: list[float] = []

    @defer.inlineCallbacks
    def session(i: int) -> defer.Generator:
        rcpts = recipients(args.path, i)
        while remaining[0] > 0:
            remaining[0] -= 1
            env = Envelope("a@bench.test", rcpts, "127.0.0.1", "bench", received_at=time.time())
            t0 = time.perf_counter()
            msg = spool.begin(env)
            for chunk in chunks:
                msg.write(chunk)
            yield msg.commit()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    yield defer.gatherResults([session(i) for i in range(args.c)])
    acked = time.perf_counter() - start
    yield spool.idle()
    done = time.perf_counter() - start
    yield spool.stop()
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        f"path={args.path} n={args.n} c={args.c} size={args.size} threads={args.threads}: "
        f"{args.n / acked:.0f} commits/s (acknowledged), "
        f"{args.n / done:.0f} msgs/s incl. background delivery; "
        f"latency ms p50={p(0.5):.1f} p99={p(0.99):.1f} mean={statistics.mean(latencies) * 1000:.1f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="messages in total")
    ap.add_argument("-c", type=int, default=20, help="concurrent sessions")
    ap.add_argument("--size", type=int, default=1024, help="message size in bytes")
    ap.add_argument("--path", choices=("fast", "spool", "remote"), default="fast")
    ap.add_argument("--threads", type=int, default=8, help="fsync threads")
    ap.add_argument("--dir", type=Path, default=None, help="parent of the state dir")
    args = ap.parse_args()
    parent = args.dir or Path(os.environ.get("TMPDIR", "/var/tmp"))
    parent.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=parent))
    failures: list[object] = []

    def go() -> None:
        d = run(args, state)
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    try:
        reactor.run()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if failures:
        print(failures[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
