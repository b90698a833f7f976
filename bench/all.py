#!/usr/bin/env python3
"""Every speed comparison of the appliance beside its anchor, in one go, and one table.

    .venv/bin/python bench/all.py [--reps 3] [--only smtp,pop3,imap,relay,dns,sweep,rss]
        [--quick] [--out DIR]

Each comparison is measured in one run beside its anchor (Postfix 3.7, Dovecot 2.3, BIND 9.18,
each a private instance on loopback started by the bench that measures it), on the LAB config:
etc/163.ini (and etc/sina.ini where both appliances run) copied into a temporary folder as
tests/integration/conftest.py's make_lab does, only the ports moved to free high ports on
127.0.1.1 (mail.163.com) and 127.0.1.4 (mail.sina.com), so reverse DNS, the sendmail maps
(access, virtusertable, aliases, local-host-names), the passwd-file and the SPF/DKIM/DMARC
checks are on as in etc/. What a workload changes in its copy is printed at the top. Counts
are the full run's, --quick's in brackets; every figure is the median of --reps repetitions
(each bench alternates which server goes first). Each workload starts on a settled machine:
`sync`, then a wait of at most 60 s for a second with the CPUs at most 10% busy and at most
16 MB dirty (the previous workload's mail and removed folders being written back), so none
measures ours or its anchor against the last one's tail; the log says how it ended.

  smtp   bench/smtp_lab.py: both lab appliances, 163 loaded on port 25 with Postfix's
         smtp-source (a connection per message; ../shared/bench/target.sh smtp) beside the
         anchor ../shared/bench/smtp_postfix.sh (the same lib/common.sh load), msgs/s until the
         Maildir holds every message: 1 KB over 20 connections, 2000 messages [100] (goal
         >= 1.5x) and 100 KB, 1000 [20] (>= 1.2x). Then our own client (logins before the
         clock, pipelined), 2000 [40] x 1 KB over 20 connections as user1@163.com: 587 with
         AUTH and no TLS, 587 STARTTLS + AUTH, 465 implicit TLS + AUTH; Postfix's side of these
         is not available (smtp_postfix.sh sets up no TLS or SASL, smtp-source speaks neither).
  sweep  the same smtp-source load, ours and Postfix: 1 KB over 1 (500 [10] messages), 20,
         100 and 500 connections (2000 [100] each); and over 20 connections 1 KB, 10 KB (2000
         [100]), 100 KB (1000 [20]), 1 MB (200 [5]), 10 MB (40 [3]). 163's copy gets [smtp]
         max_connections_per_ip and max_connections raised for the 500 connections (also for
         the smtp rows when both run: they never come near the limits).
  pop3   bench/pop3_load.py: RETR of 20000 [200] 1 KB messages by one client, and by 10 clients
         (10 mailboxes), ours (163) beside Dovecot on identical Maildirs (goal >= 1.0x both).
  imap   bench/imap_load.py: UID FETCH 1:* of 2000 [100] messages, 25 times over (goal >=
         0.8x), FETCH one at a time, a 10-client mix of 1000 [20] commands each, and imaptest's
         load mode (../shared/peer/imaptest/imaptest.sh stress, 10 [3] s, 5 clients), ours
         beside Dovecot.
  relay  bench/relay_load.py: 2000 [40] x 1 KB over 20 [5] connections submitted to 163 for
         user3@sina.com (relayed with STARTTLS, verified) beside the same load delivered
         locally on sina (goal: relay >= 0.8x local).
  dns    bench/dns_load.py --lab: the lab's zones (etc/163/163.com.zone and the reverse zone)
         served by 163 and by a private BIND, dnsperf 10 [2] s of a mail server's mix (MX 25%,
         A 35%, PTR 25%, NXDOMAIN 15%) after dig has checked both answer alike (goal >= 1.0x,
         0 lost).
  rss    bench/idle_rss.py: our VmRSS with 0, 250, 500, 1000 [0, 75, 150, 300] idle
         connections (greeting read, then silent) round robin over SMTP, POP3 and IMAP, per-IP
         limits raised in the copy (all come from 127.0.0.1); goal < 150 MB at 1000, and the
         straight line through the levels (KiB per connection, R^2; linear: R^2 >= 0.98).

Output: progress on stderr (workload, repetition, each load's raw row); on stdout the config
first, then one table: workload | anchor (name and figure) | ours | ratio | goal | met? | load
average (the median of the 1-minute load averages read at that workload's loads, ours and the
anchor's), then every repetition's raw figures, ours and the anchor's. Files in --out (default
/tmp/mailbench-results): all-<time>.tsv (one row per measured figure), all-<time>.md (the
config, the table and the raw figures in Markdown, for the README), and with matplotlib the
plots all-<time>-connections.png (msgs/s against connections, ours and Postfix),
all-<time>-sizes.png (msgs/s against message size, log x) and all-<time>-rss.png (RSS against
idle connections). Every load is bounded in count and time; everything started is stopped at
the end, also on Ctrl-C, SIGTERM or an error (TERM, bounded wait, KILL), and what was measured
until then is still written. A workload that fails is reported and the next one runs.
Needs root (the private Dovecot), the anchors (../shared/bench/setup.sh installs them) and
the `bench` extra (matplotlib). --quick uses the bracketed counts and, unless --reps is
given, 2 repetitions: a smoke test of the harness (a few minutes), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import dns_load as dl  # noqa: E402
import idle_rss as ir  # noqa: E402
import imap_load as il  # noqa: E402
import pop3_load as pl  # noqa: E402
import relay_load as rl  # noqa: E402
import smtp_lab as sx  # noqa: E402
from all_report import (  # noqa: E402
    KB,
    MB,
    RSS_GOAL_MIB,
    SWEEP_CONNS,
    SWEEP_SIZES,
    Row,
    Run,
    State,
    human,
    load1_of,
    md_table,
    plots,
    ratio_at_least,
    raw_lines,
    text_table,
    write_tsv,
)

GROUPS = ("smtp", "pop3", "imap", "relay", "dns", "sweep", "rss")
ANCHOR_DIR = REPO.parent / "shared" / "bench"
LINEAR_R2 = 0.98
say = rl.say


# ------------------------------------------------------------------------------ counts


@dataclass
class Counts:
    """The loads' sizes: full or --quick."""

    smtp_1k: int = 2000
    smtp_100k: int = 1000
    own: int = 2000
    sweep_c1: int = 500
    sweep_10k: int = 2000
    sweep_1m: int = 200
    sweep_10m: int = 40
    smtp_timeout: float = 300
    deliver_timeout: float = 120
    # 20,000 RETRs a load: about 3 s (2,000 took 0.1-0.3 s, and the 10-client ratio moved
    # between 0.57x and 1.07x from run to run)
    pop3: list[str] = field(default_factory=lambda: ["--messages", "20000", "--clients", "10"])
    imap: list[str] = field(
        default_factory=lambda: (
            ["--messages", "2000", "--clients", "10", "--ops", "1000"]
            + ["--imaptest", "10", "--imaptest-clients", "5"]
        )
    )
    relay: list[str] = field(default_factory=lambda: ["--messages", "2000", "--connections", "20"])
    dns_seconds: int = 10
    rss_levels: list[int] = field(default_factory=lambda: [0, 250, 500, 1000])
    rss_settle: float = 2.0


QUICK = Counts(
    smtp_1k=100,
    smtp_100k=20,
    own=40,
    sweep_c1=10,
    sweep_10k=100,
    sweep_1m=5,
    sweep_10m=3,
    smtp_timeout=60,
    deliver_timeout=30,
    pop3=["--messages", "200", "--clients", "10", "--timeout", "60"],
    imap=["--messages", "100", "--clients", "10", "--ops", "20", "--timeout", "60"]
    + ["--imaptest", "3", "--imaptest-clients", "5"],
    relay=["--messages", "40", "--connections", "5", "--timeout", "60"]
    + ["--deliver-timeout", "30"],
    dns_seconds=2,
    rss_levels=[0, 75, 150, 300],
    rss_settle=1.0,
)


def smtp_batches(c: Counts, smtp: bool, sweep: bool) -> list[sx.Batch]:
    """The smtp-source points as anchor-script batches (sizes x connections each)."""
    out = [sx.Batch([KB], [20] + ([100, 500] if sweep else []), c.smtp_1k, c.smtp_1k)]
    if sweep:
        out.insert(0, sx.Batch([KB], [1], c.sweep_c1, c.sweep_c1))
    out.append(sx.Batch(([10 * KB] if sweep else []) + [100 * KB], [20], c.sweep_10k, c.smtp_100k))
    if sweep:
        out += [sx.Batch([MB], [20], c.sweep_1m, c.sweep_1m)]
        out += [sx.Batch([10 * MB], [20], c.sweep_10m, c.sweep_10m)]
    return out


def versions() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    pf = out(["postconf", "-dh", "mail_version"])
    dv = out(["dovecot", "--version"]).split(" ")[0]
    return {
        "postfix": f"Postfix {pf}" if pf else "Postfix (missing)",
        "dovecot": f"Dovecot {dv}" if dv else "Dovecot (missing)",
        "bind": re.sub(r"^(BIND [\d.]+).*", r"\1", dl.named_version())
        if shutil.which("named")
        else "BIND (missing)",
        "dnsperf": " ".join(
            re.findall(r"Version ([\d.]+)", out(["sh", "-c", "dnsperf -h 2>&1"]))[:1]
        ),
    }


# ------------------------------------------------------------------------- workloads


def smtp_rows(st: State, v: dict[str, str], smtp: bool, sweep: bool) -> None:
    """The table rows of what smtp_lab measured (st.smtp)."""
    pf = v["postfix"]
    res = st.smtp
    shown: set[tuple[int, int]] = set()

    def point_row(key: str, title: str, size: int, conc: int, goal: float | None) -> None:
        pts = [p for p in res.points if (p.size, p.conc) == (size, conc)]
        if not pts:
            return
        kw = {"goal": f">= {goal:.1f}x", "check": ratio_at_least(goal)} if goal else {}
        row = st.row(key, title, "msgs/s", pf, **kw)
        row.runs = [
            Run(
                p.rep,
                "ours" if p.system == "ours" else "anchor",
                p.delivered,
                load1_of(p.load1),
                "" if p.status == "ok" else p.status,
            )
            for p in pts
        ]
        row.note = f"{pts[0].msgs} msgs; smtp-source, a connection per message"
        shown.add((size, conc))

    if smtp:
        point_row("smtp-1k", "SMTP 1 KB x 20 conns, delivered", KB, 20, 1.5)
        point_row("smtp-100k", "SMTP 100 KB x 20 conns, delivered", 100 * KB, 20, 1.2)
        for variant in sx.OWN_VARIANTS:
            runs = [r for r in res.own if r.variant == variant]
            if not runs:
                continue
            key = "smtp-" + re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")
            row = st.row(
                key,
                f"SMTP 1 KB x 20 conns, {variant} (own client)",
                "msgs/s",
                "Postfix: n/a (no TLS/AUTH in the anchor)",
                has_anchor=False,
            )
            row.runs = [
                Run(r.rep, "ours", r.outcome.rate, load1_of(r.outcome.load1), errs(r.outcome))
                for r in runs
            ]
            row.note = f"{runs[0].outcome.messages} msgs; logins before the clock, pipelined"
    if sweep:
        for conc in SWEEP_CONNS:
            if (KB, conc) not in shown:
                title = f"sweep: 1 KB x {conc} conn{'s' if conc > 1 else ''}"
                point_row(f"sweep-c{conc}", title, KB, conc, None)
        for size in SWEEP_SIZES:
            if (size, 20) not in shown:
                point_row(f"sweep-s{size}", f"sweep: {human(size)} x 20 conns", size, 20, None)


def errs(o: rl.LoadOutcome) -> str:
    return "; ".join(f"{k} x{n}" for k, n in o.errors.items())[:200]


def run_smtp(st: State, c: Counts, reps: int, smtp: bool, sweep: bool, v: dict) -> None:
    batches = smtp_batches(c, smtp, sweep)
    try:
        sx.measure(
            batches,
            reps,
            c.own if smtp else 0,
            20,
            c.smtp_timeout,
            c.deliver_timeout,
            sink=st.smtp,
            progress="smtp" if not sweep else "smtp+sweep" if smtp else "sweep",
        )
    finally:
        smtp_rows(st, v, smtp, sweep)


def via(bench: Any, argv: list[str], rows: Callable[[argparse.Namespace, list], None]) -> None:
    """bench.run() (pop3_load, imap_load, relay_load) on its own command line argv; rows()
    turns what it appended to its sink into table rows, also after an error or Ctrl-C."""
    sink: list = []
    args = bench.parse_args(argv)
    try:
        bench.run(args, sink)
    finally:
        rows(args, sink)


def run_pop3(st: State, c: Counts, reps: int, v: dict) -> None:
    def rows(args: argparse.Namespace, sink: pl.Results) -> None:
        for key, title, i, j in (
            ("pop3-1", "POP3 RETR, 1 client", 0, 1),
            (f"pop3-{args.clients}", f"POP3 RETR, {args.clients} clients", 2, 3),
        ):
            row = st.row(key, title, "msgs/s", v["dovecot"], goal=">= 1.0x")
            row.check = ratio_at_least(1.0)
            row.note = f"{args.messages} msgs of {args.size} B"
            for rep, *outs in sink:
                for system, o in (("ours", outs[i]), ("anchor", outs[j])):
                    row.runs.append(Run(rep, system, o.rate, load1_of(o.load1), o.error))

    via(pl, c.pop3 + ["--reps", str(reps)], rows)


def run_imap(st: State, c: Counts, reps: int, v: dict) -> None:
    def rows(args: argparse.Namespace, sink: il.Results) -> None:
        per = args.messages // args.clients
        loads = {
            "fetch-all": (
                f"IMAP UID FETCH 1:* of {args.messages} msgs, x{il.FETCH_ALL_ROUNDS}",
                "msgs/s",
                0.8,
            ),
            "fetch-each": (f"IMAP FETCH {args.messages} msgs one by one", "msgs/s", None),
            "mix": (f"IMAP mix, {args.clients} clients x {args.ops} cmds", "cmds/s", None),
            "imaptest": (f"imaptest stress, {args.imaptest_clients} clients", "cmds/s", None),
        }
        for kind, (title, unit, goal) in loads.items():
            if kind == "imaptest" and not args.imaptest:
                continue
            kw = {"goal": f">= {goal:.1f}x", "check": ratio_at_least(goal)} if goal else {}
            row = st.row(f"imap-{kind}", title, unit, v["dovecot"], **kw)
            row.note = {
                "mix": f"{per} msgs per mailbox",
                "imaptest": f"{args.imaptest} s each; logins inside the clock, both bcrypt",
            }.get(kind, f"{args.size} B each")
            for rep, got in sink:
                for system, label in (("ours", "ours"), ("anchor", "dovecot")):
                    o = got.get((label, kind))
                    if o is not None:
                        note = "; ".join(x for x in (o.note, o.error) if x)
                        row.runs.append(Run(rep, system, o.rate, load1_of(o.load1), note))

    via(il, c.imap + ["--reps", str(reps)], rows)


def run_relay(st: State, c: Counts, reps: int, v: dict) -> None:
    def rows(args: argparse.Namespace, sink: rl.Results) -> None:
        row = st.row(
            "relay",
            f"relay 163 -> sina, 1 KB x {args.connections} conns",
            "msgs/s",
            "ours, local delivery on sina",
            goal=">= 0.8x",
            check=ratio_at_least(0.8),
        )
        row.note = f"{args.messages} msgs; AUTH on 587, relayed with STARTTLS (verify)"
        for rep, la, a, b in sink:
            row.runs.append(Run(rep, "ours", a.rate, load1_of(la), errs(a)))
            row.runs.append(Run(rep, "anchor", b.rate, load1_of(la), errs(b)))

    via(rl, c.relay + ["--reps", str(reps)], rows)


def run_dns(st: State, c: Counts, reps: int, v: dict) -> None:
    for tool in ("dnsperf", "named", "dig"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run {ANCHOR_DIR}/setup.sh once as root")
    sink: list[dl.DNSRun] = []

    def check(row: Row) -> bool | None:
        lost = [r.lost for r in sink if r.server == "ours" and r.lost != 0]
        return None if row.ratio is None else row.ratio >= 1.0 and not lost

    try:
        dl.lab_compare(reps, c.dns_seconds, sink=sink)
    finally:
        row = st.row(
            "dns",
            "DNS authoritative, lab zones, query mix",
            "qps",
            v["bind"],
            goal=">= 1.0x, 0 lost",
        )
        row.check = check
        lost = {k: [r.lost for r in sink if r.server == k] for k in ("ours", "bind")}
        row.note = (
            f"dnsperf -l {c.dns_seconds}, MX 25%, A 35%, PTR 25%, NXDOMAIN 15%;"
            f" queries lost: ours {lost['ours']}, BIND {lost['bind']}"
        )
        for r in sink:
            system = "ours" if r.server == "ours" else "anchor"
            row.runs.append(Run(r.rep, system, r.qps, load1_of(r.load1), r.error))


def run_rss(st: State, c: Counts, reps: int, v: dict) -> None:
    try:
        ir.measure(c.rss_levels, reps, c.rss_settle, sink=st.rss)
    finally:
        top = max(c.rss_levels)
        for level in c.rss_levels:
            kw: dict[str, Any] = {}
            if level == 1000:
                kw = {"goal": "< 150 MB", "check": lambda r: med_below(r, RSS_GOAL_MIB)}
            row = st.row(
                f"rss-{level}",
                f"RSS, {level} idle conns",
                "MiB",
                "-",
                has_anchor=False,
                **kw,
            )
            row.note = "round robin over SMTP, POP3, IMAP"
            row.runs = [
                Run(x.rep, "ours", None if x.error else x.rss_mib, load1_of(x.load1), x.error)
                for x in st.rss
                if x.level == level
            ]
        lin = ir.linearity(st.rss)
        row = st.row(
            "rss-growth",
            f"RSS growth per idle conn, 0..{top}",
            "KiB/conn",
            "-",
            goal=f"linear (R^2 >= {LINEAR_R2})",
            has_anchor=False,
        )
        if lin:
            row.runs = [Run(0, "ours", lin["kib_per_conn"], None)]
            row.check = lambda _r: lin["r2"] >= LINEAR_R2
            row.note = (
                f"R^2 {lin['r2']:.4f}, worst distance from the line {lin['worst_mib']:.2f} MiB,"
                f" {lin['base_mib']:.1f} MiB at 0"
            )


def med_below(row: Row, limit: float) -> bool | None:
    m = row.median("ours")
    return None if m is None else m < limit


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--reps", type=int, help="repetitions of every load (default 3; 2 with --quick)"
    )
    ap.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated subset of {','.join(GROUPS)} (default: all)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny counts: a smoke test of the harness itself"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("RESULTS_DIR", "/tmp/mailbench-results")),
        help="folder of the TSV, Markdown and PNG files (/tmp/mailbench-results)",
    )
    args = ap.parse_args(argv)
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in args.only if g not in GROUPS]
    if bad or not args.only:
        ap.error(f"--only takes a subset of {','.join(GROUPS)}, not {bad or 'nothing'}")
    if args.reps is None:
        args.reps = 2 if args.quick else 3
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


def tree_state() -> str:
    """The commit, and whether appliance/ differs from it (read only: no optional locks)."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        head = subprocess.run(
            git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
        dirty = subprocess.run(
            git + ["diff", "--quiet", "HEAD", "--", "appliance"], capture_output=True, timeout=20
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return ""
    if not head:
        return ""
    return f"at {head}" + (" (appliance/ has uncommitted changes)" if dirty else "")


def header(args: argparse.Namespace, c: Counts, v: dict[str, str]) -> list[str]:
    only = args.only
    lines = [
        f"bench/all.py {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {', '.join(only)};"
        f" {args.reps} reps{' (--quick: a smoke test, not a measurement)' if args.quick else ''};"
        f" {os.cpu_count()} CPUs, load average {rl.loadavg()} at start; tree {REPO}"
        f" {tree_state()}",
        "lab config: etc/163.ini (and etc/sina.ini for smtp, sweep, relay) copied as"
        " tests/integration/conftest.py's make_lab does, ports moved to free high ports on"
        " 127.0.1.1 / 127.0.1.4 ([relay] port = sina's); reverse DNS zone, access,"
        " virtusertable, aliases, local-host-names, passwd-file, SPF/DKIM/DMARC checks and"
        " [relay] tls = verify as in etc/",
    ]
    changed = []
    if "smtp" in only or "sweep" in only:
        keys = sx.limits_for(smtp_batches(c, "smtp" in only, "sweep" in only))
        if keys:
            changed.append(
                "smtp/sweep: "
                + ", ".join(f"[smtp] {k} = {x}" for k, x in keys.items())
                + f" (defaults {sx.PER_IP_DEFAULT}, {sx.MAX_CONN_DEFAULT}: for 500 connections"
                " from 127.0.0.1)"
            )
    if "rss" in only:
        what = ir.describe_changes(ir.config_changes(max(c.rss_levels)))
        if what:
            changed.append(f"rss: {'; '.join(what)} (all connections come from 127.0.0.1)")
    if "pop3" in only or "imap" in only:
        changed.append(
            "pop3/imap: users popbench01.., imapbench01.., imapstress @163.com added with"
            " `mailappliance user add` (bcrypt, as the lab's users)"
        )
    lines.append("changed in the copies: " + ("; ".join(changed) if changed else "nothing"))
    counts = []
    if "smtp" in only:
        counts.append(
            f"smtp: 1 KB x 20 conns {c.smtp_1k} msgs, 100 KB x 20 {c.smtp_100k}, own client"
            f" 1 KB x 20 {c.own} per variant"
        )
    if "sweep" in only:
        counts.append(
            f"sweep: 1 KB x 1 conn {c.sweep_c1} msgs, x 20/100/500 {c.smtp_1k}; x 20 conns"
            f" 10 KB {c.sweep_10k}, 100 KB {c.smtp_100k}, 1 MB {c.sweep_1m}, 10 MB {c.sweep_10m}"
        )
    for g, argv in (("pop3", c.pop3), ("imap", c.imap), ("relay", c.relay)):
        if g in only:
            counts.append(f"{g}: {' '.join(argv)}")
    if "dns" in only:
        counts.append(f"dns: dnsperf -l {c.dns_seconds} per server and rep")
    if "rss" in only:
        counts.append(f"rss: levels {c.rss_levels}, settle {c.rss_settle:g} s")
    lines.append("counts: " + "; ".join(counts))
    lines.append(
        f"anchors: {v['postfix']} (../shared/bench/smtp_postfix.sh, smtp-source),"
        f" {v['dovecot']} (private, as ../shared/bench/pop3_dovecot.sh),"
        f" {v['bind']} (private, as ../shared/bench/dns_bind.sh, the lab's zone files),"
        f" dnsperf {v['dnsperf'] or '?'}, imaptest (../shared/peer/imaptest)"
    )
    return lines


def _dirty_kb() -> int:
    """/proc/meminfo's Dirty + Writeback, kB: what still waits for the disk."""
    kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(("Dirty:", "Writeback:")):
                kb += int(line.split()[1])
    return kb


def settle(limit: float = 60.0, busy_at_most: float = 0.10, dirty_kb_at_most: int = 16384) -> str:
    """Before each workload: `sync` (the last workload's mail and its removed folders written
    back), then wait, at most limit seconds, for a second in which the CPUs were busy at most
    busy_at_most and at most dirty_kb_at_most kB waited for the disk, so no workload measures
    (ours or its anchor) against the previous one's tail. Progress every 5 s; says how it
    ended, for the log."""
    t0 = time.monotonic()
    try:
        subprocess.run(["sync"], check=False, timeout=limit)
    except subprocess.TimeoutExpired:
        pass  # still writing back: the wait below reports the dirty kB and its limit holds
    last_say = time.monotonic()
    total0, idle0, _ = rl.machine_ticks()
    while True:
        time.sleep(1.0)
        total1, idle1, _ = rl.machine_ticks()
        dirty = _dirty_kb()
        busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
        total0, idle0 = total1, idle1
        waited = time.monotonic() - t0
        if busy <= busy_at_most and dirty <= dirty_kb_at_most:
            return f"settled in {waited:.0f} s (CPUs {100 * busy:.0f}% busy, {dirty} kB dirty)"
        if waited >= limit:
            return (
                f"not settled after {waited:.0f} s (CPUs {100 * busy:.0f}% busy, {dirty} kB"
                " dirty): going on"
            )
        if time.monotonic() - last_say >= 5:
            say(f"    settling: CPUs {100 * busy:.0f}% busy, {dirty} kB dirty, {waited:.0f} s")
            last_say = time.monotonic()


def run_all(args: argparse.Namespace, st: State, c: Counts, v: dict[str, str]) -> int:
    only = args.only
    steps: list[tuple[str, Callable[[], None]]] = []
    if "smtp" in only or "sweep" in only:
        name = "+".join(g for g in ("smtp", "sweep") if g in only)
        steps.append((name, lambda: run_smtp(st, c, args.reps, "smtp" in only, "sweep" in only, v)))
    table = {"pop3": run_pop3, "imap": run_imap, "relay": run_relay, "dns": run_dns}
    for g in ("pop3", "imap", "relay", "dns"):
        if g in only:
            steps.append((g, lambda f=table[g]: f(st, c, args.reps, v)))
    if "rss" in only:
        steps.append(("rss", lambda: run_rss(st, c, args.reps, v)))
    for i, (name, step) in enumerate(steps, 1):
        t0 = time.monotonic()
        say(f"=== [{i}/{len(steps)}] {name}: {settle()}")
        say(f"=== [{i}/{len(steps)}] {name}, {args.reps} reps [load average {rl.loadavg()}]")
        try:
            step()
        except (Exception, SystemExit) as e:  # the next workload still runs
            what = f"{name}: {type(e).__name__}: {e}"
            st.failures.append(what[:1500])
            say(f"=== {name} FAILED: {what[:3000]}")
            if not isinstance(e, SystemExit):
                traceback.print_exc(file=sys.stderr)
        say(f"=== {name} took {time.monotonic() - t0:.0f} s")
    return 1 if st.failures else 0


def finish(
    args: argparse.Namespace, st: State, head: list[str], stamp: str, v: dict, out: TextIO
) -> None:
    rows = list(st.rows.values())
    args.out.mkdir(parents=True, exist_ok=True)
    tsv = args.out / f"all-{stamp}.tsv"
    write_tsv(tsv, rows, stamp)
    pngs = plots(st, args.out, stamp, v["postfix"])
    md = args.out / f"all-{stamp}.md"
    notes = []
    if st.smtp.config:
        notes.append("smtp: " + "; ".join(st.smtp.config))
    notes += [f"FAILED {f}" for f in st.failures]
    if st.interrupted:
        notes.append(f"INTERRUPTED ({st.interrupted}): the figures are those measured until then")
    files = [tsv, md, *pngs]
    md.write_text(
        "\n".join(
            [f"## bench/all.py, {stamp}", ""]
            + [f"- {x}" for x in head]
            + ["", *md_table(rows), "", "Raw figures per repetition:", ""]
            + [f"- {x}" for x in raw_lines(rows) + notes]
            + [""]
        )
    )
    print(file=out)
    print("\n".join(text_table(rows)), file=out)
    print(file=out)
    print("raw figures per repetition (ours, then the anchor's; load1 in rep order):", file=out)
    for line in raw_lines(rows) + notes:
        print(f"  {line}", file=out)
    print(f"load average at end: {rl.loadavg()}", file=out)
    print("files: " + ", ".join(str(f) for f in files), file=out)
    out.flush()


def main() -> int:
    args = parse_args()
    c = QUICK if args.quick else Counts()
    sx.sl.RESULTS_DIR = args.out  # the benches' own raw files land beside ours
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # stdout is for the config and the table: the benches' own prints (and every child's
    # output) go to stderr with the progress
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    v = versions()
    head = header(args, c, v)
    print("\n".join(head), file=out, flush=True)
    st = State()
    t0 = time.monotonic()

    def go() -> int:
        return run_all(args, st, c, v)

    rc = rl.run_interruptible(go, "everything started was stopped")
    if rc >= 128:
        st.interrupted = f"signal {rc - 128}"
    say(f"all done in {time.monotonic() - t0:.0f} s")
    finish(args, st, head, stamp, v, out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
