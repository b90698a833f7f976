#!/usr/bin/env python3
"""DNS load: our appliance beside BIND 9.18 in one run, same zone, same dnsperf queries.

Starts `twistd -n mailappliance` on 127.0.0.1 with the zone that ../shared/bench/dns_bind.sh
gives BIND, runs the shared BIND anchor (dnsperf against a private named), then the same dnsperf
load against us, and prints queries/second, queries lost and our ratio to BIND.

    .venv/bin/python bench/dns_load.py [--reps 3] [--seconds 10] [--no-bind]

Needs Debian's dnsperf (and bind9 for the anchor): ../shared/bench/setup.sh installs them.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ZONE = """\
$TTL 3600
@       IN SOA  ns1.163.com. hostmaster.163.com. ( 2024010101 3600 600 604800 300 )
@       IN NS   ns1.163.com.
@       IN NS   ns2.163.com.
@       IN MX   10 mx.163.com.
@       IN MX   20 mx2.163.com.
@       IN A    127.0.0.10
ns1     IN A    127.0.0.11
ns2     IN A    127.0.0.12
mx      IN A    127.0.0.13
mx2     IN A    127.0.0.14
www     IN A    127.0.0.15
smtp    IN A    127.0.0.16
pop     IN A    127.0.0.17
imap    IN A    127.0.0.18
"""
QUERIES = """\
163.com SOA
163.com NS
163.com MX
163.com A
www.163.com A
mx.163.com A
mx2.163.com A
smtp.163.com A
pop.163.com A
imap.163.com A
ns1.163.com A
nonexistent.163.com A
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_udp_tcp_port(host: str) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
            return port
        except OSError:
            continue
    raise SystemExit("no free port")


def start_appliance(workdir: Path, port: int) -> subprocess.Popen:
    (workdir / "163.com.zone").write_text(ZONE)
    ini = workdir / "bench.ini"
    ini.write_text(
        "[appliance]\nhostname = mail.163.com\nstate_dir = state\n"
        f"[dns]\nlisten = 127.0.0.1:{port}\n"
        "[zone:163.com]\nfile = 163.com.zone\n"
    )
    twistd = Path(sys.executable).parent / "twistd"
    proc = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "mailappliance", "--config", str(ini)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("appliance exited before it was ready")
            if " ready: " in line:
                say(f"appliance up on 127.0.0.1:{port} (pid {proc.pid})")
                # keep draining its output so a full pipe never blocks it
                subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
                return proc
    proc.kill()
    raise SystemExit("appliance did not become ready in 60 s")


def dnsperf(port: int, qfile: Path, seconds: int) -> tuple[float, int]:
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    return qps, lost


def bind_anchor(
    anchor_dir: Path, reps: int, seconds: int, results: Path
) -> list[tuple[float, int]]:
    env = {
        **os.environ,
        "REPS": str(reps),
        "DNS_SECS": str(seconds),
        "RESULTS_DIR": str(results.parent),
        "RESULTS_FILE": str(results),
    }
    subprocess.run(
        ["bash", str(anchor_dir / "dns_bind.sh")],
        env=env,
        timeout=reps * (seconds + 60) + 120,
        check=False,
    )
    rows = []
    if results.exists():
        with results.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["system"].startswith("bind") and row["status"] == "ok":
                    lost = int(re.search(r"lost=(\d+)", row["note"]).group(1))
                    rows.append((float(row["qps"]), lost))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per server (default 3)")
    ap.add_argument("--seconds", type=int, default=10, help="dnsperf run length (default 10)")
    ap.add_argument("--no-bind", action="store_true", help="measure only the appliance")
    ap.add_argument(
        "--anchor-dir",
        type=Path,
        default=REPO.parent / "shared" / "bench",
        help="the shared anchor scripts (default ../shared/bench)",
    )
    args = ap.parse_args()
    if not shutil.which("dnsperf"):
        raise SystemExit("dnsperf missing: apt-get install dnsperf")
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        work = Path(tmp)
        qfile = work / "queries.txt"
        qfile.write_text(QUERIES)
        bind_rows: list[tuple[float, int]] = []
        if not args.no_bind and shutil.which("named"):
            say(f"BIND anchor: {args.reps} x dnsperf {args.seconds}s")
            bind_rows = bind_anchor(args.anchor_dir, args.reps, args.seconds, work / "bind.tsv")
        port = free_udp_tcp_port("127.0.0.1")
        proc = start_appliance(work, port)
        ours = []
        try:
            for rep in range(1, args.reps + 1):
                qps, lost = dnsperf(port, qfile, args.seconds)
                say(f"mailappliance rep {rep}/{args.reps}: {qps:,.0f} qps, lost {lost}")
                ours.append((qps, lost))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    ours_med = statistics.median(q for q, _ in ours)
    print(
        f"mailappliance: {ours_med:,.0f} qps median of {[round(q) for q, _ in ours]}, "
        f"lost {sum(lost for _, lost in ours)}"
    )
    if bind_rows:
        bind_med = statistics.median(q for q, _ in bind_rows)
        print(
            f"bind-9.18:     {bind_med:,.0f} qps median of {[round(q) for q, _ in bind_rows]}, "
            f"lost {sum(lost for _, lost in bind_rows)}"
        )
        print(f"ratio mailappliance/bind: {ours_med / bind_med:.2f}x (bar: 0.40x, 0 lost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
