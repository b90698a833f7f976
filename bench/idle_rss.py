#!/usr/bin/env python3
"""Memory of idle connections: our RSS with 0, 250, 500 and 1000 idle connections spread evenly
over SMTP, POP3 and IMAP, and whether it grows linearly.

    .venv/bin/python bench/idle_rss.py [--levels 0,250,500,1000] [--reps 1] [--settle 2]
        [--keep]

Ours: the mail.163.com lab appliance (tests/integration/conftest.py's make_lab: etc/ copied,
the ports moved to free high ports on 127.0.1.1). Every connection comes from 127.0.0.1, so in
the copy of 163.ini `max_connections_per_ip` of [smtp], [pop3] and [imap] is raised to what
the largest level needs (default 50), and `max_connections` too where that many would reach a
service's stress threshold (80% of it; defaults 500, 500, 1000); the changes are printed.

Before level 0, one connection per protocol is opened and closed (QUIT/LOGOUT), so the code
each one needs is loaded. Then, for each level in turn, connections are added until there are
that many, round robin over SMTP (port 25 moved), POP3 (110) and IMAP (143); each reads its
greeting and then stays silent (no EHLO, no login: well inside the 2-minute greeting and login
deadlines, which are left as they are). After --settle seconds the appliance's VmRSS is read
from /proc/<pid>/status (5 samples 0.1 s apart, the largest kept) and every connection is
checked to be still open (none closed and nothing sent by the server). The connections stay
open for the next level; at the end they are closed and the appliance stopped. With --reps N
this runs N times, each on a fresh appliance.

Printed: per level and repetition the connections per protocol, RSS in MiB, connections
still open and the load average; then the medians, the growth per connection (least-squares
slope, KiB), R^2 of the straight line and the largest distance of a level from it. Progress
goes to stderr, results to stdout. The appliance is stopped at the end, on error and on
Ctrl-C/SIGTERM (TERM, bounded wait, KILL). Loopback only.
"""

from __future__ import annotations

import math
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import relay_load as rl  # noqa: E402  (the lab, its start and stop, Ctrl-C)

PROTOCOLS = (("smtp", 25), ("pop3", 110), ("imap", 143))
# the lab's defaults (mailappliance config-help)
PER_IP_DEFAULT = 50
MAX_CONN_DEFAULT = {"smtp": 500, "pop3": 500, "imap": 1000}
STRESS = 0.8
QUIT = {"smtp": b"QUIT\r\n", "pop3": b"QUIT\r\n", "imap": b"a LOGOUT\r\n"}
GOAL_MIB = 150e6 / 2**20  # the goal: < 150 MB at 1000
say = rl.say


@dataclass
class Level:
    rep: int
    level: int
    per_protocol: dict[str, int]
    rss_kib: int
    open: int
    load1: str
    error: str = ""

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def config_changes(most: int) -> dict[str, dict[str, int]]:
    """section -> keys to set so that `most` connections (spread over PROTOCOLS) get in."""
    per = math.ceil(most / len(PROTOCOLS))
    out: dict[str, dict[str, int]] = {}
    for name, _port in PROTOCOLS:
        keys = {}
        if per > PER_IP_DEFAULT:
            keys["max_connections_per_ip"] = per + 50
        if per >= STRESS * MAX_CONN_DEFAULT[name]:
            keys["max_connections"] = 2 * per
        if keys:
            out[name] = keys
    return out


def describe_changes(changes: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for section, keys in changes.items():
        for k, v in keys.items():
            was = PER_IP_DEFAULT if k == "max_connections_per_ip" else MAX_CONN_DEFAULT[section]
            out.append(f"[{section}] {k} = {v} (default {was})")
    return out


def connect(host: str, port: int) -> socket.socket:
    """A connection that has read its greeting line (bounded)."""
    s = socket.create_connection((host, port), timeout=10)
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(512)
        if not chunk:
            s.close()
            raise ConnectionError(f"{host}:{port} closed before its greeting")
        buf += chunk
    return s


def still_open(s: socket.socket) -> bool:
    """Nothing to read and not closed: the server has neither sent nor hung up."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)
        return False  # closed (b"") or the server said something (a deadline's 421)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(10)


def one_rep(rep: int, levels: list[int], settle: float, work: Path, sink: list[Level]) -> None:
    """A fresh appliance; every level in turn; the connections closed, the appliance stopped."""
    from tests.integration.conftest import set_keys

    lab = rl.lab_appliances(work / f"rep{rep}")
    ours = lab["163"]
    for section, keys in config_changes(max(levels)).items():
        set_keys(ours.ini, section, **keys)
    conns: dict[str, list[socket.socket]] = {name: [] for name, _p in PROTOCOLS}
    try:
        rl.start(ours)
        pid = ours.proc.pid
        for name, std in PROTOCOLS:  # load what each protocol needs, then hang up
            s = connect(ours.ip, ours.ports[std])
            s.sendall(QUIT[name])
            s.close()
        total = 0
        for level in sorted(levels):
            t0 = time.monotonic()
            while total < level:
                name, std = PROTOCOLS[total % len(PROTOCOLS)]
                conns[name].append(connect(ours.ip, ours.ports[std]))
                total += 1
            opened = time.monotonic() - t0
            time.sleep(settle)
            rss = 0
            for _ in range(5):
                rss = max(rss, rss_kib(pid))
                time.sleep(0.1)
            alive = sum(still_open(s) for group in conns.values() for s in group)
            row = Level(rep, level, {k: len(v) for k, v in conns.items()}, rss, alive, rl.loadavg())
            if alive < total:
                row.error = f"{total - alive} of {total} connections closed by the server"
            sink.append(row)
            say(
                f"rep {rep} level {level}: {row.per_protocol} (opened in {opened:.1f} s),"
                f" RSS {row.rss_mib:.1f} MiB, {alive} open [{row.load1}]"
                + (f" {row.error}" if row.error else "")
            )
    finally:
        for group in conns.values():
            for s in group:
                s.close()
        rl.stop_all(lab)


def fit(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """Least squares y = a + b x: (a, b, R^2, largest |residual|)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    a = my - b * mx
    res = [y - (a + b * x) for x, y in points]
    syy = sum((y - my) ** 2 for _, y in points)
    r2 = 1 - sum(r * r for r in res) / syy if syy else 1.0
    return a, b, r2, max(abs(r) for r in res)


def medians(rows: list[Level]) -> list[tuple[int, float]]:
    """(level, median RSS MiB) of the rows without an error."""
    levels = sorted({r.level for r in rows})
    out = []
    for lv in levels:
        xs = [r.rss_mib for r in rows if r.level == lv and not r.error]
        if xs:
            out.append((lv, statistics.median(xs)))
    return out


def linearity(rows: list[Level]) -> dict[str, float] | None:
    """The straight line through the medians: KiB per connection, R^2, worst distance MiB."""
    pts = medians(rows)
    if len(pts) < 3:
        return None
    a, b, r2, worst = fit([(float(x), y) for x, y in pts])
    return {"base_mib": a, "kib_per_conn": b * 1024, "r2": r2, "worst_mib": worst}


def measure(
    levels: list[int],
    reps: int = 1,
    settle: float = 2.0,
    keep: bool = False,
    sink: list[Level] | None = None,
) -> list[Level]:
    rows: list[Level] = [] if sink is None else sink
    work = Path(tempfile.mkdtemp(prefix="idle-rss-bench-"))
    try:
        for rep in range(1, reps + 1):
            say(f"idle RSS rep {rep}/{reps}: levels {levels}")
            one_rep(rep, levels, settle, work, rows)
    finally:
        rl.remove_work(work, keep)
    return rows


def report(rows: list[Level], levels: list[int]) -> None:
    print()
    print(
        "idle connections (greeting read, then silent), round robin over SMTP, POP3 and IMAP;"
        " our VmRSS"
    )
    if changes := describe_changes(config_changes(max(levels))):
        print("lab config changed in the copy: " + "; ".join(changes))
    for r in rows:
        print(
            f"  rep {r.rep} level {r.level:>5}: {r.per_protocol}  RSS {r.rss_mib:7.1f} MiB"
            f"  open {r.open}  load avg {r.load1}" + (f"  ERROR {r.error}" if r.error else "")
        )
    for level, mib in medians(rows):
        print(f"median RSS at {level:>5} idle connections: {mib:.1f} MiB")
    lin = linearity(rows)
    if lin:
        print(
            f"growth: {lin['kib_per_conn']:.1f} KiB per connection, R^2 {lin['r2']:.4f},"
            f" worst distance from the line {lin['worst_mib']:.2f} MiB"
        )


def main() -> int:
    ap = rl.arg_parser(__doc__)
    ap.add_argument("--levels", default="0,250,500,1000", help="idle connections (0,250,500,1000)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions, a fresh appliance each (1)")
    ap.add_argument("--settle", type=float, default=2.0, help="wait before reading RSS, s (2)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    if not levels or levels[0] < 0 or args.reps < 1 or args.settle < 0:
        ap.error("--levels must be >= 0, --reps >= 1, --settle >= 0")
    rows: list[Level] = []
    rc = rl.run_interruptible(
        lambda: (measure(levels, args.reps, args.settle, args.keep, rows), 0)[1],
        "appliance stopped",
    )
    report(rows, levels)
    return rc or (0 if rows and not any(r.error for r in rows) else 1)


if __name__ == "__main__":
    sys.exit(main())
