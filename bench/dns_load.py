#!/usr/bin/env python3
"""DNS load: our appliance beside BIND 9.18 in one run, same zone, same dnsperf queries.

Starts `twistd -n mailappliance` on 127.0.0.1 with the zone that ../shared/bench/dns_bind.sh
gives BIND, runs the shared BIND anchor (dnsperf against a private named), then the same dnsperf
load against us, and prints queries/second, queries lost and our ratio to BIND.

    .venv/bin/python bench/dns_load.py [--reps 3] [--seconds 10] [--no-bind]

Lab mode, the lab's own zones and a mail server's query mix::

    .venv/bin/python bench/dns_load.py --lab [--reps 3] [--seconds 10] [--keep]

Ours: the mail.163.com lab appliance (tests/integration/conftest.py's make_lab: etc/ copied,
the ports moved to free high ports on 127.0.1.1), which serves etc/163/163.com.zone and the
reverse zone etc/163/1.0.127.in-addr.arpa.zone. BIND: a private named 9.18 set up as
../shared/bench/dns_bind.sh sets up its own (its own folder, `named -g`, authoritative only,
recursion off, no rndc channel) but serving those two zone files, on a free port of 127.0.0.1.
The queries (LAB_QUERIES, dnsperf cycles through them): 25% MX of 163.com, 35% A of the hosts
(mail, smtp, pop3, imap, ns), 25% PTR of 127.0.1.1 and 127.0.1.4, 15% NXDOMAIN (a name and an
address with no record); before the load, dig asks both servers each of them once and the run
stops unless both give the same status and answer records. Each repetition runs dnsperf for
--seconds against BIND and against us (alternating which goes first), printing qps, queries
lost and the load average; then the medians and the ratio ours/BIND (the bar: >= 1.0x, 0 lost).

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
from dataclasses import dataclass
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


def dnsperf(port: int, qfile: Path, seconds: int, host: str = "127.0.0.1") -> tuple[float, int]:
    out = subprocess.run(
        ["dnsperf", "-s", host, "-p", str(port), "-d", str(qfile), "-l", str(seconds)],
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


# ------------------------------------------------------------------------------ lab mode

LAB_ZONES = {"163.com": "163.com.zone", "1.0.127.in-addr.arpa": "1.0.127.in-addr.arpa.zone"}
# 20 lines, dnsperf cycles through them: MX 5, A 7, PTR 5, NXDOMAIN 3 (www and .9 have no record)
LAB_QUERIES = """\
163.com MX
mail.163.com A
1.1.0.127.in-addr.arpa PTR
163.com MX
smtp.163.com A
4.1.0.127.in-addr.arpa PTR
nosuch.163.com A
mail.163.com A
163.com MX
1.1.0.127.in-addr.arpa PTR
pop3.163.com A
9.1.0.127.in-addr.arpa PTR
163.com MX
imap.163.com A
4.1.0.127.in-addr.arpa PTR
mail.163.com A
www.163.com A
163.com MX
ns.163.com A
1.1.0.127.in-addr.arpa PTR
"""
BIND_LAB_CONF = """\
// private benchmark instance (as ../shared/bench/dns_bind.sh), serving the lab's zones
options {{
    directory "{root}";
    pid-file "{root}/named.pid";
    session-keyfile "{root}/session.key";
    managed-keys-directory "{root}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ 127.0.0.0/8; }};
    dnssec-validation no;
    notify no;
    querylog no;
}};
controls {{ }};
"""


@dataclass
class DNSRun:
    rep: int
    server: str  # "ours" or "bind"
    load1: str
    qps: float | None = None
    lost: int | None = None
    error: str = ""


def dig(host: str, port: int, name: str, qtype: str) -> tuple[str, list[str]]:
    """(status, sorted answer records without their TTL) of one query, bounded."""
    out = subprocess.run(
        ["dig", "+norec", "+time=2", "+tries=1", "-p", str(port), f"@{host}", name, qtype],
        capture_output=True,
        text=True,
        timeout=15,
    ).stdout
    m = re.search(r"status: (\w+)", out)
    answer, rrs = False, []
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            answer = True
        elif answer and (not line.strip() or line.startswith(";;")):
            answer = False
        elif answer:
            f = line.split()
            rrs.append(" ".join([f[0].lower(), *f[2:]]))
    return (m.group(1) if m else "no answer"), sorted(rrs)


def start_bind_lab(root: Path, zones: Path, port: int) -> subprocess.Popen:
    """named -g on 127.0.0.1:port serving the LAB_ZONES files of zones/; ready when it
    answers the SOA of 163.com (bounded)."""
    import pop3_load as pl  # stop_proc

    root.mkdir(parents=True, exist_ok=True)
    conf = BIND_LAB_CONF.format(root=root, port=port)
    for zone, fname in LAB_ZONES.items():
        shutil.copy(zones / fname, root / fname)
        conf += f'zone "{zone}" {{\n    type primary;\n    file "{root / fname}";\n}};\n'
        r = subprocess.run(
            ["named-checkzone", "-q", zone, str(root / fname)], capture_output=True, timeout=30
        )
        if r.returncode != 0:
            raise SystemExit(f"named-checkzone {zone} {root / fname} failed")
    (root / "named.conf").write_text(conf)
    log = (root / "named.log").open("w")
    proc = subprocess.Popen(
        ["named", "-g", "-c", str(root / "named.conf"), "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if dig("127.0.0.1", port, "163.com", "SOA")[0] == "NOERROR":
            return proc
        time.sleep(0.2)
    pl.stop_proc(proc, "named")
    raise SystemExit(f"named did not serve 163.com:\n{(root / 'named.log').read_text()[-2000:]}")


def named_version() -> str:
    try:
        out = subprocess.run(["named", "-v"], capture_output=True, text=True, timeout=10).stdout
        return " ".join(out.split()[:2]) or "BIND"
    except (OSError, subprocess.SubprocessError):
        return "BIND"


def lab_compare(
    reps: int, seconds: int, keep: bool = False, sink: list | None = None, bind: bool = True
) -> int:
    """Lab mode (see the module docstring). Every DNSRun is also appended to sink as it ends
    (bench/all.py reads them from there). 0 when every run gave a figure. bind=False
    (--no-bind): ours alone, no named started, dig only checks that ours answers."""
    sys.path[:0] = [p for p in (str(REPO / "bench"), str(REPO)) if p not in sys.path]
    import pop3_load as pl  # stop_proc
    import relay_load as rl  # the lab, its start and stop

    work = Path(tempfile.mkdtemp(prefix="dns-lab-bench-"))
    runs: list[DNSRun] = [] if sink is None else sink
    lab: dict = {}
    named: subprocess.Popen | None = None
    servers: dict[str, tuple[str, int]] = {}
    try:
        lab = rl.lab_appliances(work / "lab")
        ours = lab["163"]
        rl.start(ours)
        host, port = ours.ip, ours.ports[53]
        servers["ours"] = (host, port)
        anchor = "no BIND (--no-bind)"
        if bind:
            bind_port = free_udp_tcp_port("127.0.0.1")
            named = start_bind_lab(work / "bind", ours.ini.parent / "163", bind_port)
            say(f"named pid {named.pid} on 127.0.0.1:{bind_port} ({named_version()})")
            servers["bind"] = ("127.0.0.1", bind_port)
            anchor = (
                f"BIND: {named_version()}, private named.conf in {work / 'bind'}, the lab's"
                f" {' and '.join(LAB_ZONES)} zone files, 127.0.0.1:{bind_port}"
            )
        qfile = work / "queries.txt"
        qfile.write_text(LAB_QUERIES)
        for line in sorted(set(LAB_QUERIES.splitlines())):
            name, qtype = line.split()
            got = {k: dig(h, p, name, qtype) for k, (h, p) in servers.items()}
            if bind and got["ours"] != got["bind"]:
                raise SystemExit(f"{name} {qtype}: ours {got['ours']}, BIND {got['bind']}")
            if got["ours"][0] not in ("NOERROR", "NXDOMAIN"):
                raise SystemExit(f"{name} {qtype}: ours answered {got['ours']}")
            say(
                f"  check {name} {qtype}: {'both ' if bind else ''}{got['ours'][0]} {got['ours'][1]}"
            )
        print(
            f"ours: etc/163.ini copied to {ours.ini.parent}, ports moved: dns 53 -> {host}:{port}"
            f"; {anchor}; dnsperf -l {seconds}, {len(LAB_QUERIES.splitlines())} queries cycled"
            " (MX 25%, A 35%, PTR 25%, NXDOMAIN 15%)"
            + (", the same answers checked with dig" if bind else ", answers checked with dig"),
            flush=True,
        )
        for rep in range(1, reps + 1):
            order = ("bind", "ours") if rep % 2 else ("ours", "bind")
            for name in [n for n in order if n in servers]:
                h, p = servers[name]
                run = DNSRun(rep, name, " ".join(f"{x:.2f}" for x in os.getloadavg()))
                say(f"rep {rep}/{reps} {name}: dnsperf -l {seconds} on {h}:{p}")
                try:
                    run.qps, run.lost = dnsperf(p, qfile, seconds, h)
                except (AttributeError, subprocess.SubprocessError) as e:
                    run.error = f"dnsperf gave no figure: {type(e).__name__}: {e}"[:200]
                print(
                    f"  rep {rep} load avg {run.load1}  {name:>4}: "
                    + (f"{run.qps:,.0f} qps, lost {run.lost}" if run.qps else run.error),
                    flush=True,
                )
                runs.append(run)
    finally:
        pl.stop_proc(named, "named")
        rl.stop_all(lab)
        rl.remove_work(work, keep)
    med = {}
    for name in sorted(servers):  # bind, then ours
        qs = [r.qps for r in runs if r.server == name and r.qps]
        med[name] = statistics.median(qs) if qs else None
        lost = sum(r.lost or 0 for r in runs if r.server == name)
        print(f"{name}: median {med[name] or 0:,.0f} qps of {[round(q) for q in qs]}, lost {lost}")
    if med.get("bind") and med["ours"]:
        print(f"ratio ours/bind: {med['ours'] / med['bind']:.2f}x (bar: 1.00x, 0 lost)")
    return 0 if all(r.qps for r in runs) and len(runs) == len(servers) * reps else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per server (default 3)")
    ap.add_argument("--seconds", type=int, default=10, help="dnsperf run length (default 10)")
    ap.add_argument("--no-bind", action="store_true", help="measure only the appliance")
    ap.add_argument(
        "--lab", action="store_true", help="the lab's zones and a query mix (module docstring)"
    )
    ap.add_argument("--keep", action="store_true", help="--lab: keep the temporary folder")
    ap.add_argument(
        "--anchor-dir",
        type=Path,
        default=REPO.parent / "shared" / "bench",
        help="the shared anchor scripts (default ../shared/bench)",
    )
    args = ap.parse_args()
    if not shutil.which("dnsperf"):
        raise SystemExit("dnsperf missing: apt-get install dnsperf")
    if args.lab:
        if not args.no_bind and not shutil.which("named"):
            raise SystemExit("named missing: apt-get install bind9 (../shared/bench/setup.sh)")
        sys.path[:0] = [str(REPO / "bench"), str(REPO)]
        import relay_load as rl  # Ctrl-C and SIGTERM stop what was started

        return rl.run_interruptible(
            lambda: lab_compare(args.reps, args.seconds, args.keep, bind=not args.no_bind),
            "appliance and named stopped",
        )
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
