#!/usr/bin/env python3
"""SMTP accept + durable delivery on the lab config, ours beside Postfix 3.7 in one run.

    .venv/bin/python bench/smtp_lab.py [--reps 3] [--points 1024x20:2000,102400x20:1000]
        [--own 2000] [--connections 20] [--keep]

Ours: both lab appliances (tests/integration/conftest.py's make_lab: etc/ copied, the ports
moved to free high ports on 127.0.1.1 and 127.0.1.4; reverse DNS zone, access, virtusertable,
aliases, local-host-names and SPF/DKIM/DMARC checks as configured), sina started first so that
163's DNS forwarding and SPF lookups get answers as in the lab. 163 is loaded; when a point
has more than 50 connections (all of them come from 127.0.0.1), its copy of 163.ini gets
`[smtp] max_connections_per_ip` and `max_connections` raised to let them in (printed).
Postfix: the shared anchor, ../shared/bench/smtp_postfix.sh postfix (a private Postfix on
loopback delivering with virtual(8) into a Maildir), set up afresh for every batch.

The load, for both: Postfix's smtp-source, one connection per message (the anchor's way),
sender a@sina.com (a domain of the lab's, not a local one of 163: its SPF is looked up and
evaluated), recipient user1@163.com for ours, user1@example.test for Postfix; ours is loaded
with ../shared/bench/target.sh smtp, Postfix by its own script, so both run the same
lib/common.sh smtp_load: msgs/s delivered = messages / (start -> the Maildir's new/ holds them
all). A point SIZExCONNECTIONS:MESSAGES; the points are run in batches (one invocation of the
anchor scripts each: sizes x connection counts, messages by size as lib/common.sh's MSGS_1K
for sizes <= 10 KB and MSGS_BIG above), each repetition runs every batch on both servers,
alternating which goes first.

--own N: after the batches, our own client (bench/smtp_load.py's Session, driven by
bench/relay_load.py's one_load: every connection connected, EHLO'd and logged in before the
clock, messages pipelined back to back) sends N 1 KB messages over --connections connections
as user1@163.com to user1@163.com, in three ways: submission (587) with AUTH PLAIN and no TLS,
587 with STARTTLS then AUTH, and implicit TLS (465) with AUTH; msgs/s until all are in the
Maildir. Postfix has no such variant here: smtp_postfix.sh configures neither TLS nor SASL,
and smtp-source speaks neither.

Progress goes to stderr, results to stdout; the raw rows of every batch end up in
/tmp/mailbench-results/smtp_lab-<time>.tsv (the anchors' TSV columns plus the rep). Everything
started is stopped at the end, on error and on Ctrl-C/SIGTERM: the shell anchors in their own
process group (TERM, bounded wait, KILL), the appliances by PID. Every smtp-source run stops
at --source-timeout, every delivery wait at --deliver-timeout, an appliance's start at 60 s.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import relay_load as rl  # noqa: E402  (the lab, CPU sampling, one_load with logins first)
import smtp_compare as sc  # noqa: E402  (run_bounded, read_rows)
import smtp_load as sl  # noqa: E402  (LoadConfig, run_load, helpers)

ANCHOR_DIR = REPO.parent / "shared" / "bench"
SENDER = "a@sina.com"
OURS_RCPT = "user1@163.com"
POSTFIX_RCPT = "user1@example.test"  # the anchor's virtual mailbox
SUBMITTER = ("user1@163.com", "user1pass")  # lab user (README: password = user + "pass")
OWN_VARIANTS = {
    # name: (standard port, tls)
    "587 AUTH, no TLS": (587, None),
    "587 STARTTLS + AUTH": (587, "starttls"),
    "465 TLS + AUTH": (465, "implicit"),
}
PER_IP_DEFAULT = 50
MAX_CONN_DEFAULT = 500
say = sl.say


@dataclass
class Batch:
    """One invocation of the anchor scripts: sizes x concs, messages by size (<= 10 KB: small)."""

    sizes: list[int]
    concs: list[int]
    msgs_small: int
    msgs_big: int

    def msgs(self, size: int) -> int:
        return self.msgs_small if size <= 10240 else self.msgs_big


@dataclass
class Point:
    """One smtp-source run (a row of the anchors' TSV)."""

    system: str  # "ours" or "postfix"
    rep: int
    size: int
    conc: int
    msgs: int
    delivered: float | None  # msgs/s until all are in new/
    accepted: float | None  # msgs/s until smtp-source ended
    load1: str
    status: str


@dataclass
class OwnRun:
    variant: str
    rep: int
    outcome: rl.LoadOutcome


@dataclass
class Results:
    points: list[Point] = field(default_factory=list)
    own: list[OwnRun] = field(default_factory=list)
    config: list[str] = field(default_factory=list)  # what was changed in the lab copy
    raw: list[dict[str, str]] = field(default_factory=list)


def parse_points(text: str) -> list[Batch]:
    """'1024x20:2000,102400x20:1000' -> one Batch per point."""
    out = []
    for item in text.split(","):
        sc, _, n = item.strip().partition(":")
        size, _, conc = sc.partition("x")
        out.append(Batch([int(size)], [int(conc)], int(n), int(n)))
    return out


def limits_for(batches: list[Batch]) -> dict[str, int]:
    """[smtp] keys to raise in 163's copy so that the most connections of a point get in."""
    most = max((c for b in batches for c in b.concs), default=0)
    if most <= PER_IP_DEFAULT:
        return {}
    return {
        "max_connections_per_ip": most + 100,
        "max_connections": max(MAX_CONN_DEFAULT, 2 * most),
    }


class Lab:
    """Both lab appliances with 163's [smtp] limits raised as asked; stop() stops both."""

    def __init__(self, work: Path, smtp_keys: dict[str, int]) -> None:
        self.work = work
        self.lab: dict = {}
        self.smtp_keys = smtp_keys

    def start(self) -> None:
        from tests.integration.conftest import set_keys

        for attempt in (1, 2):
            self.lab = rl.lab_appliances(self.work / f"lab{attempt}")
            if self.smtp_keys:
                set_keys(self.lab["163"].ini, "smtp", **self.smtp_keys)
            try:
                rl.start(self.lab["sina"])
                rl.start(self.lab["163"])
                return
            except SystemExit as e:  # e.g. a free port taken meanwhile
                self.stop()
                if attempt == 2:
                    raise
                say(f"lab start failed, trying once more with other ports: {str(e)[:2000]}")

    def stop(self) -> None:
        rl.stop_all(self.lab)

    @property
    def ours(self):
        return self.lab["163"]

    @property
    def maildir(self) -> Path:
        return self.ours.maildir(OURS_RCPT)

    def settle(self) -> None:
        """Wait (bounded) until 163's queue is empty, then empty the Maildir."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and rl.queue_files(self.ours):
            time.sleep(0.1)
        for sub in ("new", "cur", "tmp"):
            d = self.maildir / sub
            if d.is_dir():
                for f in d.iterdir():
                    f.unlink(missing_ok=True)


def smoke(lab: Lab) -> str:
    """One message to ours with our client (it also makes the Maildir); its checks' headers."""
    a = lab.ours
    cfg = sl.LoadConfig(
        a.ip, a.ports[25], 1, 1024, 1, mail_from=SENDER, rcpt=OURS_RCPT, maildir=lab.maildir
    )
    cfg.timeout, cfg.deliver_timeout, cfg.progress = 30, 15, False
    res = asyncio.run(sl.run_load(cfg))
    if not res.ok:
        tail = "".join(a.output[-30:])
        raise SystemExit(f"smoke test on 163 port 25 failed: {dict(res.errors)}\n{tail[-3000:]}")
    msg = next((lab.maildir / "new").iterdir()).read_bytes()
    head = msg.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").replace("\r\n\t", " ")
    lab.settle()
    found = [ln for ln in head.splitlines() if ln.lower().startswith("authentication-results:")]
    return found[0].split(":", 1)[1].strip() if found else ""


def run_batch(
    system: str,
    batch: Batch,
    rep: int,
    lab: Lab,
    work: Path,
    source_timeout: float,
    deliver_timeout: float,
    anchor_dir: Path = ANCHOR_DIR,
) -> tuple[list[Point], list[dict[str, str]]]:
    """One batch on one server with the anchor scripts (REPS=1): its points and raw rows."""
    tsv = work / f"{system}-rep{rep}-{time.monotonic_ns()}.tsv"
    env = {
        **os.environ,
        "REPS": "1",
        "SMTP_SIZES": " ".join(map(str, batch.sizes)),
        "SMTP_CONCS": " ".join(map(str, batch.concs)),
        "MSGS_1K": str(batch.msgs_small),
        "MSGS_BIG": str(batch.msgs_big),
        "SMTP_FROM": SENDER,
        "SMTP_TO": POSTFIX_RCPT if system == "postfix" else OURS_RCPT,
        "SMTP_SOURCE_OPTS": "",
        "SMTP_SOURCE_TIMEOUT": str(int(source_timeout)),
        "DELIVER_TIMEOUT": str(int(deliver_timeout)),
        "RESULTS_DIR": str(work),
        "RESULTS_FILE": str(tsv),
    }
    if system == "postfix":
        env["PF_ROOT"] = str(work / "postfix")
        cmd = ["bash", str(anchor_dir / "smtp_postfix.sh"), "postfix"]
    else:
        lab.settle()
        target = f"{lab.ours.ip}:{lab.ours.ports[25]}"
        cmd = ["bash", str(anchor_dir / "target.sh"), "smtp", "mailappliance", target]
        cmd.append(str(lab.maildir))
    runs = len(batch.sizes) * len(batch.concs)
    budget = runs * (source_timeout + deliver_timeout + 10) + 120
    rc = sc.run_bounded(cmd, env, budget, Path(cmd[1]).name)
    if rc != 0:
        say(f"{Path(cmd[1]).name} exited with {rc}")
    rows = sc.read_rows(tsv)
    points = []
    for r in rows:
        ok = r["status"] == "ok"
        points.append(
            Point(
                system,
                rep,
                int(r["size"]),
                int(r["conc"]),
                int(r["msgs"]),
                int(r["msgs"]) / float(r["deliver_s"]) if ok and r["deliver_s"] else None,
                float(r["msgs_per_s"]) if ok and r["msgs_per_s"] else None,
                r["load1"],
                r["status"],
            )
        )
        r["rep"] = str(rep)
    done = {(p.size, p.conc) for p in points}
    for size in batch.sizes:  # a run the script never recorded (killed at its deadline)
        for conc in batch.concs:
            if (size, conc) not in done:
                m = batch.msgs(size)
                points.append(
                    Point(system, rep, size, conc, m, None, None, "", f"no row (rc {rc})")
                )
    return points, rows


def own_load(lab: Lab, variant: str, rep: int, messages: int, conns: int, timeout: float) -> OwnRun:
    """Our own client on one OWN_VARIANTS way of submitting, logins before the clock."""
    a, sina = lab.ours, lab.lab["sina"]
    std, tls = OWN_VARIANTS[variant]
    cfg = sl.LoadConfig(
        host=a.ip,
        port=a.ports[std],
        messages=messages,
        size=1024,
        connections=conns,
        mail_from=SUBMITTER[0],
        rcpt=OURS_RCPT,
        auth=SUBMITTER,
        tls=tls,
        cafile=str(a.state / "ca" / "ca.crt") if tls else None,
        servername="mail.163.com" if tls else None,
        helo="smtp-lab.bench.test",
        timeout=timeout,
        progress=False,
    )
    lab.settle()
    cpu = rl.CPU({"163": a.proc.pid, "sina": sina.proc.pid})
    o = asyncio.run(rl.one_load(variant, cfg, lab.maildir, cpu, timeout, timeout))
    o.load1 = rl.loadavg()
    return OwnRun(variant, rep, o)


def measure(
    batches: list[Batch],
    reps: int,
    own_messages: int = 0,
    connections: int = 20,
    source_timeout: float = 300,
    deliver_timeout: float = 120,
    keep: bool = False,
    sink: Results | None = None,
    progress: str = "smtp",
) -> Results:
    """Every batch on both servers, then (own_messages > 0) the OWN_VARIANTS, reps times.
    Points and runs are added to sink (a new Results by default) as they end."""
    res = Results() if sink is None else sink
    work = Path(tempfile.mkdtemp(prefix="smtp-lab-bench-"))
    work.chmod(0o755)  # virtual(8) delivers as nobody below this folder
    keys = limits_for(batches)
    res.config += [
        f"[smtp] {k} = {v} (default {PER_IP_DEFAULT if k.endswith('ip') else MAX_CONN_DEFAULT})"
        for k, v in keys.items()
    ]
    lab = Lab(work, keys)
    try:
        lab.start()
        spf = smoke(lab)
        say(f"smoke message on 163:25 delivered; its checks: {spf or '(no check headers)'}")
        res.config.append(f"sender {SENDER}, checks on the smoke message: {spf or '-'}")
        for rep in range(1, reps + 1):
            for i, batch in enumerate(batches, 1):
                order = ("postfix", "ours") if rep % 2 else ("ours", "postfix")
                for system in order:
                    say(
                        f"{progress} rep {rep}/{reps} batch {i}/{len(batches)} {system}: sizes"
                        f" {batch.sizes} x connections {batch.concs}, messages"
                        f" {sorted({batch.msgs(s) for s in batch.sizes})} [{rl.loadavg()}]"
                    )
                    points, rows = run_batch(
                        system, batch, rep, lab, work, source_timeout, deliver_timeout
                    )
                    res.points += points
                    res.raw += [{**r, "system": system} for r in rows]
            if own_messages and rep == 1:  # untimed: TLS session set-up, logins, the paths
                for variant in OWN_VARIANTS:
                    say(f"{progress} own client warm-up: {variant}, 4 msgs")
                    run = own_load(lab, variant, 0, 4, 2, 60)
                    if run.outcome.rate is None:
                        raise SystemExit(f"warm-up failed: {rl.describe(run.outcome)}")
            if own_messages:
                for variant in OWN_VARIANTS:
                    say(f"{progress} rep {rep}/{reps} own client: {variant}, {own_messages} msgs")
                    run = own_load(lab, variant, rep, own_messages, connections, source_timeout)
                    say(f"  {rl.describe(run.outcome)}")
                    res.own.append(run)
    finally:
        lab.stop()
        if res.raw:
            sl.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            keep_tsv = sl.RESULTS_DIR / f"smtp_lab-{time.strftime('%Y%m%d-%H%M%S')}.tsv"
            with keep_tsv.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(res.raw[0]), delimiter="\t")
                w.writeheader()
                w.writerows(res.raw)
            say(f"raw rows: {keep_tsv}")
        sl.remove_work(work, keep)
    return res


def median(xs: list[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.median(got) if got else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return format(x, spec) if x is not None else "-"


def report(res: Results) -> None:
    print()
    print("SMTP on the lab config, smtp-source, msgs/s delivered into Maildir (medians)")
    if res.config:
        print("config: " + "; ".join(res.config))
    head = f"{'size':>9} | {'conns':>5} | {'msgs':>5} | {'postfix':>8} | {'ours':>8} | {'ratio':>6}"
    print(head)
    print("-" * len(head))
    keys = sorted({(p.size, p.conc, p.msgs) for p in res.points})
    for size, conc, msgs in keys:
        pts = [p for p in res.points if (p.size, p.conc, p.msgs) == (size, conc, msgs)]
        pf = median([p.delivered for p in pts if p.system == "postfix"])
        us = median([p.delivered for p in pts if p.system == "ours"])
        ratio = us / pf if us and pf else None
        print(
            f"{size:>9} | {conc:>5} | {msgs:>5} | {fmt(pf):>8} | {fmt(us):>8}"
            f" | {fmt(ratio, '.2f') + 'x' if ratio else '-':>6}"
        )
        for system in ("postfix", "ours"):
            raw = [(fmt(p.delivered), p.load1, p.status) for p in pts if p.system == system]
            print(f"    {system}: {raw}")
    for variant in OWN_VARIANTS:
        runs = [r.outcome for r in res.own if r.variant == variant]
        if runs:
            print(
                f"own client, {variant}: median {fmt(median([o.rate for o in runs]))} msgs/s of"
                f" {[fmt(o.rate) for o in runs]} (Postfix: no TLS/AUTH in smtp_postfix.sh)"
            )


def main() -> int:
    ap = sl.arg_parser(__doc__)
    ap.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    ap.add_argument(
        "--points",
        default="1024x20:2000,102400x20:1000",
        help="SIZExCONNECTIONS:MESSAGES,... (1024x20:2000,102400x20:1000)",
    )
    ap.add_argument("--own", type=int, default=0, help="messages of the own-client variants (0)")
    ap.add_argument("--connections", type=int, default=20, help="own client: connections (20)")
    ap.add_argument("--source-timeout", type=float, default=300, help="per smtp-source run (300)")
    ap.add_argument("--deliver-timeout", type=float, default=120, help="per delivery wait (120)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.reps < 1 or args.connections < 1 or args.own < 0:
        ap.error("--reps and --connections must be >= 1, --own >= 0")
    for tool in ("smtp-source", "postfix"):
        if not shutil.which(tool):
            ap.error(f"{tool} missing: run {ANCHOR_DIR}/setup.sh once as root")
    batches = parse_points(args.points)
    res = Results()

    def go() -> int:
        measure(
            batches,
            args.reps,
            args.own,
            args.connections,
            args.source_timeout,
            args.deliver_timeout,
            args.keep,
            res,
        )
        return 0

    rc = rl.run_interruptible(go, "both appliances and Postfix stopped")
    report(res)
    return rc


if __name__ == "__main__":
    sys.exit(main())
