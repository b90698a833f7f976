"""SMTP compare: our appliance beside Postfix 3.7 in one run (bench/smtp_load.py --compare).

Run through bench/smtp_load.py (which holds the options); the load client is smtp_load's.
Compare mode (same machine, same run, same envelope)::

    .venv/bin/python bench/smtp_load.py --compare [--reps 3] [--sizes 1024,102400]
        [--connections 20] [--messages 2000] [--messages-big N] [--no-postfix] [--keep]

1. runs the shared Postfix anchor (../shared/bench/smtp_postfix.sh postfix: a private Postfix
   on loopback delivering with virtual(8) into a Maildir, loaded with Postfix's smtp-source);
2. starts our appliance (`twistd -n mailappliance`) on a temporary config: hostname
   mail.bench.test, [smtp] listen on a free loopback port, local_domains = example.test, a
   passwd-file holding user1@example.test, no DNS; then loads it with the same smtp-source
   matrix (../shared/bench/target.sh smtp), and once per size with bench/smtp_load.py's own
   client for the latency percentiles;
3. prints one table: per size, Postfix's delivered msgs/s (median of the reps), ours accepted
   and delivered (medians), the ratio ours/Postfix for delivered, our p50/p99. The bar:
   1 KB over 20 connections, durable delivery into Maildir >= 1.0x Postfix.

Both servers get sender a@sender.test (not a local domain of ours: unauthenticated local senders
are refused with 530) and recipient user1@example.test. smtp-source opens one connection per
message (the anchor's default; --smtp-source-opts -d reuses connections). Everything started is
stopped at the end (TERM, bounded wait, KILL). The raw rows are copied to
/tmp/mailbench-results/smtp_load-<time>.tsv. Needs Postfix (smtp-source): run
../shared/bench/setup.sh once as root. The machine is noisy: trust ratios within one run only,
and look at the load average printed with each run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import smtp_load as sl  # noqa: E402  (the load client, say, loadavg, RESULTS_DIR)

# Postfix rates from ../shared/bench/README.md, used only for the duration estimate
EST_RATE_SMALL = 500.0
EST_RATE_BIG = 380.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Appliance:
    """Our appliance under twistd on a temp config; stdout drained by a thread."""

    def __init__(self, work: Path, port: int) -> None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from appliance.auth.schemes import hash_password

        self.work = work
        self.port = port
        self.state = work / "state"
        self.maildir = self.state / "mail" / "example.test" / "user1" / "Maildir"
        passwd = work / "passwd"
        # cost 4: logins are not what this benchmark measures
        passwd.write_text(f"{sl.RECIPIENT}:{hash_password('user1pass', rounds=4)}\n")
        passwd.chmod(0o600)
        self.ini = work / "bench.ini"
        self.ini.write_text(
            "[appliance]\nhostname = mail.bench.test\nstate_dir = state\n"
            f"[smtp]\nlisten = 127.0.0.1:{port}\nlocal_domains = example.test\n"
            "[auth]\nbackend = passwd\npasswd_file = passwd\n"
        )
        self.proc: subprocess.Popen | None = None
        self.tail: deque[str] = deque(maxlen=40)

    def start(self) -> None:
        twistd = REPO / ".venv" / "bin" / "twistd"
        if not twistd.exists():
            twistd = Path(sys.executable).parent / "twistd"
        self.proc = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "mailappliance", "--config", str(self.ini)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.work,
        )
        ready = threading.Event()

        def drain() -> None:
            for line in self.proc.stdout:
                self.tail.append(line.rstrip())
                if " ready: " in line:
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ready.is_set():
            if self.proc.poll() is not None:
                break
            ready.wait(0.2)
        if not ready.is_set():
            self.stop()
            raise SystemExit("appliance did not become ready:\n" + "\n".join(list(self.tail)[-15:]))
        sl.say(f"appliance up on 127.0.0.1:{self.port} (pid {self.proc.pid}), {self.ini}")

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sl.say(f"appliance ({p.pid}) did not exit on TERM, sending KILL")
            p.kill()
            p.wait(timeout=10)


def run_bounded(cmd: list[str], env: dict[str, str], timeout: float, what: str) -> int:
    """Run a shell anchor in its own process group; TERM it (its trap stops what it started)
    at the deadline or on our own interruption, KILL the group if it lingers."""
    p = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        sl.say(f"{what}: deadline of {timeout:.0f}s reached, stopping it")
        return -1
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def read_rows(tsv: Path) -> list[dict[str, str]]:
    if not tsv.exists():
        return []
    with tsv.open() as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r.get("workload") == "smtp"]


def rates(rows: list[dict[str, str]], system: str, size: int, conc: int) -> dict[str, list]:
    out: dict[str, list] = {"accepted": [], "delivered": [], "load1": [], "bad": []}
    for r in rows:
        if r["system"] != system or int(r["size"]) != size or int(r["conc"]) != conc:
            continue
        if r["status"] != "ok" or not r["deliver_s"]:
            out["bad"].append(r["status"])
            continue
        out["accepted"].append(float(r["msgs_per_s"]))
        out["delivered"].append(int(r["msgs"]) / float(r["deliver_s"]))
        out["load1"].append(r["load1"])
    return out


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return format(x, spec) if x is not None else "-"


def compare(args: argparse.Namespace) -> int:
    for tool in ("smtp-source", "postfix"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run {args.anchor_dir}/setup.sh once as root")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    big = args.messages_big or args.messages

    def msgs_for(size: int) -> int:
        return args.messages if size <= 10240 else big  # the anchor's MSGS_1K / MSGS_BIG split

    # estimate: every smtp-source run (both servers) at about Postfix's README rate plus a
    # little for the delivery wait, then our own client's run per size and the set-ups
    per_rep = sum(msgs_for(s) / (EST_RATE_SMALL if s <= 10240 else EST_RATE_BIG) for s in sizes)
    systems = 1 if args.no_postfix else 2
    est = systems * args.reps * (per_rep * 1.1 + 1) + per_rep + 15
    sl.say(
        f"compare: sizes {sizes}, {args.connections} connections, messages {args.messages}"
        f" (>10 KB: {big}), {args.reps} reps per server; estimated duration about"
        f" {est / 60:.1f} min (longer if we are slower than Postfix); load average {sl.loadavg()}"
    )
    base_env = {
        **os.environ,
        "REPS": str(args.reps),
        "SMTP_SIZES": " ".join(map(str, sizes)),
        "SMTP_CONCS": str(args.connections),
        "MSGS_1K": str(args.messages),
        "MSGS_BIG": str(big),
        "SMTP_FROM": sl.SENDER,
        "SMTP_TO": sl.RECIPIENT,
        "SMTP_SOURCE_OPTS": args.smtp_source_opts,
        "SMTP_SOURCE_TIMEOUT": "300",
        "DELIVER_TIMEOUT": "120",
    }
    anchor_timeout = len(sizes) * args.reps * 420 + 120
    load_start = sl.loadavg()
    work = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    # virtual(8) delivers as nobody below this folder: it must be traversable
    work.chmod(0o755)
    tsv = work / "results.tsv"
    base_env["RESULTS_DIR"] = str(work)
    base_env["RESULTS_FILE"] = str(tsv)
    appliance: Appliance | None = None
    own: dict[int, sl.LoadResult] = {}
    try:
        if not args.no_postfix:
            sl.say("Postfix anchor (smtp_postfix.sh postfix)")
            env = {**base_env, "PF_ROOT": str(work / "postfix")}
            rc = run_bounded(
                ["bash", str(args.anchor_dir / "smtp_postfix.sh"), "postfix"],
                env,
                anchor_timeout,
                "smtp_postfix.sh",
            )
            if rc != 0:
                sl.say(f"smtp_postfix.sh exited with {rc}")
        appliance = Appliance(work, free_port())
        appliance.start()
        target = f"127.0.0.1:{appliance.port}"
        smoke = sl.one_message(appliance.port, appliance.maildir)
        if not smoke.ok:
            raise SystemExit(f"smoke test against {target} failed: {dict(smoke.errors)}")
        sl.clear_new(appliance.maildir)
        sl.say(f"mailappliance: smtp-source matrix (target.sh smtp mailappliance {target})")
        rc = run_bounded(
            [
                "bash",
                str(args.anchor_dir / "target.sh"),
                "smtp",
                "mailappliance",
                target,
                str(appliance.maildir),
            ],
            base_env,
            anchor_timeout,
            "target.sh",
        )
        if rc != 0:
            sl.say(f"target.sh exited with {rc}")
        for size in sizes:
            sl.clear_new(appliance.maildir)
            cfg = sl.LoadConfig(
                "127.0.0.1",
                appliance.port,
                msgs_for(size),
                size,
                args.connections,
                maildir=appliance.maildir,
                deliver_timeout=120,
                progress=False,
            )
            sl.say(f"mailappliance: own client, {cfg.messages} x {size} B, {cfg.connections} conns")
            res = asyncio.run(sl.run_load(cfg))
            own[size] = res
            sl.say(
                f"  accepted {res.accepted}/{res.messages} at {fmt(res.accept_rate)} msgs/s,"
                f" delivered at {fmt(res.deliver_rate)} msgs/s,"
                f" p50 {fmt((res.percentile(0.5) or 0) * 1000, '.1f')} ms"
                f" p99 {fmt((res.percentile(0.99) or 0) * 1000, '.1f')} ms [{sl.loadavg()}]"
                + (f" errors {dict(res.errors)}" if res.errors else "")
            )
        sl.clear_new(appliance.maildir)
    finally:
        if appliance is not None:
            appliance.stop()
        rows = read_rows(tsv)
        if tsv.exists():
            sl.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            keep = sl.RESULTS_DIR / f"smtp_load-{time.strftime('%Y%m%d-%H%M%S')}.tsv"
            shutil.copy(tsv, keep)
            sl.say(f"raw rows: {keep}")
        sl.remove_work(work, args.keep)

    pf_name = next((r["system"] for r in rows if r["system"].startswith("postfix")), "postfix")
    print()
    print(
        f"SMTP, {args.connections} connections, smtp-source {args.reps} reps per server "
        f"(medians; delivered = until Maildir/new holds every message); "
        f"load average {load_start} at start, {sl.loadavg()} at end"
    )
    head = (
        f"{'size':>7} | {'postfix deliv/s':>15} | {'ours accept/s':>13} | {'ours deliv/s':>12}"
        f" | {'ours/postfix':>12} | {'p50 ms':>7} | {'p99 ms':>7} | {'own client acc/s':>16}"
    )
    print(head)
    print("-" * len(head))
    verdict = None
    for size in sizes:
        conc = args.connections
        pf = rates(rows, pf_name, size, conc)
        us = rates(rows, "mailappliance", size, conc)
        pf_d, us_a, us_d = med(pf["delivered"]), med(us["accepted"]), med(us["delivered"])
        ratio = us_d / pf_d if us_d and pf_d else None
        res = own.get(size)
        p50 = res.percentile(0.5) if res else None
        p99 = res.percentile(0.99) if res else None
        print(
            f"{size:>7} | {fmt(pf_d):>15} | {fmt(us_a):>13} | {fmt(us_d):>12}"
            f" | {fmt(ratio, '.2f') + 'x' if ratio else '-':>12}"
            f" | {fmt(p50 and p50 * 1000, '.1f'):>7} | {fmt(p99 and p99 * 1000, '.1f'):>7}"
            f" | {fmt(res.accept_rate if res and res.ok else None):>16}"
        )
        if size == 1024 and conc == 20:
            verdict = ratio
    print()
    for size in sizes:
        for name in (pf_name, "mailappliance"):
            r = rates(rows, name, size, args.connections)
            print(
                f"  {name:<14} {size:>7} B: delivered/s {[round(x) for x in r['delivered']]},"
                f" accepted/s {[round(x) for x in r['accepted']]}, load1 {r['load1']}"
                + (f", failed runs {r['bad']}" if r["bad"] else "")
            )
    if verdict is not None:
        print(
            f"bar (1 KB, 20 connections, delivered, ours/postfix >= 1.00x): {verdict:.2f}x"
            f" {'PASS' if verdict >= 1.0 else 'FAIL'}"
        )
    return 0
