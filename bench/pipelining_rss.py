#!/usr/bin/env python3
"""Memory under a client that pipelines and never reads: the appliance's RSS growth.

    .venv/bin/python bench/pipelining_rss.py [--lines 3000000] [--timeout 120]

Starts our appliance (`twistd -n mailappliance`) on the same temporary config as
bench/smtp_load.py (one SMTP listener on a free loopback port, no DNS), opens one connection,
sends EHLO, MAIL and then up to --lines pipelined `RCPT TO:<user1@example.test>` lines
(26 bytes each; 3,000,000 is 78 MB) without ever reading a reply. Sending stops when all are
sent, when the server has stopped taking bytes for 3 s (it stopped reading: back-pressure), or
at --timeout. The server's VmRSS (from /proc) is sampled every 0.2 s; printed: RSS before,
peak, growth, the bytes the client got through, and the load average. The connection is then
closed and the appliance stopped. Progress goes to stderr every second. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtp_compare import Appliance, free_port  # noqa: E402
from smtp_load import loadavg, say  # noqa: E402

RCPT = b"RCPT TO:<user1@example.test>\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def flood(port: int, lines: int, timeout: float, progress: dict[str, int]) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.recv(1000)
        s.sendall(b"EHLO flood.bench.test\r\nMAIL FROM:<a@sender.test>\r\n")
        s.settimeout(3.0)
        chunk = RCPT * 5000
        end = time.monotonic() + timeout
        while progress["lines"] < lines and time.monotonic() < end:
            try:
                s.sendall(chunk)
            except TimeoutError:
                progress["stalled"] = 1
                break
            progress["lines"] += 5000
            progress["bytes"] += len(chunk)
    finally:
        progress["done"] = 1
        progress["sock"] = s.fileno()
        time.sleep(0.5)  # let the last sample see the server's state
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=3_000_000, help="RCPT lines to pipeline")
    ap.add_argument("--timeout", type=float, default=120, help="stop sending after this")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rssbench-") as tmp:
        port = free_port()
        app = Appliance(Path(tmp), port)
        app.start()
        try:
            assert app.proc is not None
            pid = app.proc.pid
            time.sleep(1.0)
            before = rss_kib(pid)
            progress: dict[str, int] = {"lines": 0, "bytes": 0, "done": 0, "stalled": 0}
            t = threading.Thread(
                target=flood, args=(port, args.lines, args.timeout, progress), daemon=True
            )
            t.start()
            peak = before
            last_report = time.monotonic()
            while not progress["done"]:
                peak = max(peak, rss_kib(pid))
                if time.monotonic() - last_report >= 1:
                    last_report = time.monotonic()
                    say(f"  sent {progress['lines']:,} lines, server RSS {peak / 1024:.1f} MiB")
                time.sleep(0.2)
            peak = max(peak, rss_kib(pid))
            t.join(timeout=10)
        finally:
            app.stop()
    how = "server stopped reading" if progress["stalled"] else "all sent"
    print(f"tree: {Path(__file__).resolve().parent.parent}  ({how})")
    print(f"lines sent: {progress['lines']:,} ({progress['bytes'] / 1e6:.1f} MB)")
    print(f"RSS before: {before / 1024:.1f} MiB  peak: {peak / 1024:.1f} MiB")
    print(f"growth: {(peak - before) / 1024:.1f} MiB  load average: {loadavg()}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
