#!/usr/bin/env python3
"""Relay load: messages/s from submission on 163 to Maildir on sina, beside local delivery.

    .venv/bin/python bench/relay_load.py [--messages 2000] [--connections 20] [--size 1024]
        [--reps 3] [--timeout 300] [--deliver-timeout 120] [--keep]

Starts both lab appliances (`twistd -n mailappliance`, as tests/integration/conftest.py's
make_lab does): etc/ copied into a temporary folder with the lab config unchanged (zones,
reverse zone, access, virtusertable, aliases, passwd-file, `[relay] tls = verify` against the
other appliance's CA), only the ports moved to free high ports on 127.0.1.1 (mail.163.com) and
127.0.1.4 (mail.sina.com), and `[relay] port` pointing at sina's test SMTP port. sina starts
first, so its CA certificate exists when 163 starts.

127.0.0.1 has no PTR in the lab zones, so etc/163/access (`Connect:163.com RELAY`) does not
let it relay on port 25: the load submits the way a user does, on the submission port with
AUTH PLAIN (user1@163.com / user1pass, allowed without TLS from loopback by the lab's
plaintext_networks), one login per connection.

Each repetition runs two loads, A then B, with the same client (bench/smtp_load.py's Session
and Run, imported), N messages of S bytes over C connections, MAIL/RCPT/DATA pipelined:

  A (relay): submitted to 163's submission port as user1@163.com, to user3@sina.com; 163
    relays (MX lookup through its own DNS, STARTTLS with verification, from 127.0.1.1) to
    sina's port 25, which delivers into user3's Maildir.
  B (local): submitted to sina's submission port as user3@sina.com, to user3@sina.com, and
    delivered there (one appliance).

Every connection has connected, said EHLO and logged in before the clock starts (at most 4
logins at once: the login throttle counts a login under way as a failure and refuses the 11th
in flight from one client). The clock runs from the first submission until user3's
Maildir/new on sina holds every accepted message (polled every 20 ms; the Maildir is counted,
never the maillog): msgs/s = messages / that time. new/ is emptied between loads, and the next
load starts only once both queues are empty. Before each repetition the load average is
printed; while a load runs, a line a second gives the messages accepted and in the Maildir,
the CPU of each appliance (all threads, and its main thread, the reactor) and of this client
(/proc/<pid>/stat, /proc/<pid>/task/<pid>/stat; 100% = one core), and the machine's iowait.
At the end: each load's raw numbers, the medians and the ratio A/B (the goal, as in
bench/all.py: >= 0.8x).
Progress goes to stderr, results to stdout. Both appliances are stopped at the end, on error
and on Ctrl-C/SIGTERM (TERM, bounded wait, KILL). Each load stops at --timeout, its delivery
wait at --deliver-timeout after the load, an appliance's start at 60 s, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import smtp_load as sl  # noqa: E402  (our SMTP load client)

POLL = 0.02
LOGINS_IN_FLIGHT = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER_A = ("user1@163.com", "user1pass")  # lab user on 163 (README: password = user + "pass")
SENDER_B = ("user3@sina.com", "user3pass")
RCPT = "user3@sina.com"


def say(msg: str) -> None:
    sl.say(msg)


arg_parser = sl.arg_parser  # a bench's command line (description and epilog from its docstring)
remove_work = sl.remove_work  # a bench's temporary folder at its end (--keep)


def run_interruptible(run: Callable[[], int], stopped: str) -> int:
    """run(); Ctrl-C and SIGTERM unwind as KeyboardInterrupt (so the caller's finally blocks
    stop what it started: asyncio.run cancels a load cleanly), then exit 128 + the signal.
    stopped says what was stopped, for the last line."""
    got: list[int] = []

    def interrupt(signum: int, _frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return run()
    except KeyboardInterrupt:
        signum = got[-1] if got else signal.SIGINT
        say(f"interrupted ({signal.Signals(signum).name}); {stopped}")
        return 128 + signum


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------- CPU sampling


def proc_ticks(pid: int, main_thread: bool = False) -> int | None:
    """utime + stime of a process (all its threads; or only its main thread), in ticks."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int, int]:
    """(total, idle, iowait) jiffies of all CPUs from /proc/stat; idle counts iowait too."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(vals[:8]), vals[3] + vals[4], vals[4]


class CPU:
    """CPU of the two appliances and of this client between two samples (100% = one core)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "client": os.getpid()}
        self.ncpu = os.cpu_count() or 1
        self.mark()

    def sample(self) -> tuple[float, dict[str, int | None], tuple[int, int]]:
        ticks = {k: proc_ticks(p) for k, p in self.pids.items()}
        ticks.update({f"{k} main": proc_ticks(p, True) for k, p in self.pids.items()})
        return time.monotonic(), ticks, machine_ticks()

    def mark(self) -> None:
        self.last = self.sample()

    def since(self, start=None) -> dict[str, float]:
        """Percent since start (default: the last mark), and move the mark."""
        t0, p0, (m0, _idle0, w0) = start or self.last
        now = self.sample()
        t1, p1, (m1, _idle1, w1) = now
        self.last = now
        dt = max(t1 - t0, 1e-9)
        out = {}
        for k in p1:
            a, b = p0.get(k), p1.get(k)
            out[k] = 100.0 * (b - a) / CLK_TCK / dt if a is not None and b is not None else -1
        out["iowait"] = 100.0 * (w1 - w0) / max(m1 - m0, 1)
        return out

    @staticmethod
    def fmt(c: dict[str, float]) -> str:
        return (
            f"cpu 163 {c['163']:3.0f}% (main thread {c['163 main']:3.0f}%)"
            f" sina {c['sina']:3.0f}% (main {c['sina main']:3.0f}%)"
            f" client {c['client']:3.0f}% iowait {c['iowait']:2.0f}%"
        )


# ---------------------------------------------------------------------------- the lab


def lab_appliances(work: Path):
    """make_lab from tests/integration/conftest.py: etc/ copied, ports moved, [relay] port."""
    try:
        from tests.integration.conftest import make_lab
    except ImportError as e:  # pytest lives in the project's virtualenv
        raise SystemExit(
            f"cannot import tests.integration.conftest ({e}): run with .venv/bin/python"
        ) from None
    return make_lab(work)


def add_user(ini: Path, address: str, password: str) -> None:
    """`mailappliance --config INI user add ADDRESS --password-stdin` (bcrypt, as the lab's
    users), before the appliance starts; exits with the command's error if it fails."""
    cli = str(Path(sys.executable).parent / "mailappliance")
    r = subprocess.run(
        [cli, "--config", str(ini), "user", "add", address, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        raise SystemExit(f"user add {address} failed: {r.stderr[-1000:]}")


READY = re.compile(r"mailappliance \S+ ready")
READY_TIMEOUT = 60.0


def hostname_of(a) -> str:
    return "mail.163.com" if a.name == "163" else "mail.sina.com"


def start(a) -> None:
    """Start one appliance (the tests' Appliance.start: a thread drains its output, so a
    full pipe never stalls it) and wait, bounded, for its ready line."""
    say(f"starting {a.name} ({a.ini.name}) on {a.ip}")
    try:
        a.start(READY_TIMEOUT)
    except AssertionError as e:
        raise SystemExit(f"{a.name} did not become ready:\n{str(e)[-3000:]}") from None
    say(f"  {a.name} pid {a.proc.pid}: {a.ready_line.strip().split('] ', 1)[-1]}")


def stop_all(lab: dict) -> None:
    for a in lab.values():
        try:
            a.stop()  # TERM, 15 s, KILL
        except Exception as e:  # keep stopping the others
            say(f"stopping {a.name}: {e}")


def queue_files(a) -> int:
    n = 0
    for sub in ("incoming", "deferred"):
        for _root, _dirs, files in os.walk(a.state / "queue" / sub):
            n += len(files)
    return n


def clear_new(maildir: Path) -> None:
    sl.clear_new(maildir)


# ---------------------------------------------------------------------------- one load


class PreOpened(sl.Session):
    """smtp_load's Session whose open() (connect, EHLO, AUTH) can be done before the clock."""

    opened = False

    async def open(self) -> None:
        if not self.opened:
            await super().open()
            self.opened = True


@dataclass
class LoadOutcome:
    label: str
    messages: int
    accepted: int = 0
    delivered: int = 0
    accept_s: float | None = None
    seconds: float | None = None  # first submission -> all accepted ones in Maildir/new
    load1: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    errors: collections.Counter = field(default_factory=collections.Counter)

    @property
    def rate(self) -> float | None:
        if self.seconds and self.delivered >= self.messages:
            return self.messages / self.seconds
        return None


async def one_load(
    label: str,
    cfg: sl.LoadConfig,
    maildir: Path,
    cpu: CPU,
    timeout: float,
    deliver_timeout: float,
) -> LoadOutcome:
    run = sl.Run(cfg)
    res = run.result
    out = LoadOutcome(label, cfg.messages)
    sessions = [PreOpened(cfg, run) for _ in range(min(cfg.connections, cfg.messages))]

    def close_all() -> None:
        for s in sessions:
            s.close()

    # connect, EHLO, AUTH on every connection first: the clock starts at the first MAIL.
    # At most LOGINS_IN_FLIGHT at once: the login throttle counts a login as a failure until
    # it is shown good, so more than [auth] max_failures (10) in flight from one client
    # get 421 4.7.0 "too many failed logins" (by design, appliance/auth/throttle.py).
    gate = asyncio.Semaphore(LOGINS_IN_FLIGHT)

    async def login(s: PreOpened) -> None:
        async with gate:
            await s.open()

    try:
        opened = await asyncio.wait_for(
            asyncio.gather(*(login(s) for s in sessions), return_exceptions=True), 60
        )
    except TimeoutError:
        close_all()
        raise SystemExit(f"{label}: connections not open and logged in within 60 s") from None
    bad = [e for e in opened if isinstance(e, BaseException)]
    if bad:
        close_all()
        raise SystemExit(f"{label}: {len(bad)} connection(s) failed to open: {bad[0]!r}")

    base = sl.maildir_count(maildir)
    start_sample = cpu.sample()
    cpu.mark()
    t0 = time.monotonic()

    async def one(s: PreOpened) -> None:
        try:
            await s.go()
        except (OSError, sl.SMTPReplyError, ssl.SSLError) as e:
            res.errors[f"session: {type(e).__name__}: {e}"[:120]] += 1
        finally:
            s.close()

    load = asyncio.ensure_future(asyncio.gather(*(one(s) for s in sessions)))
    load_deadline = t0 + timeout
    deliver_deadline: float | None = None
    next_tick = t0 + 1.0
    try:
        while True:
            await asyncio.sleep(POLL)
            now = time.monotonic()
            n = sl.maildir_count(maildir) - base
            if n >= cfg.messages or (load.done() and n >= res.accepted):
                out.seconds = now - t0
                out.delivered = n
                break
            if not load.done() and now >= load_deadline:
                res.errors[f"load deadline ({timeout:g} s) reached"] += 1
                close_all()
                load.cancel()
            if load.done():
                if deliver_deadline is None:
                    deliver_deadline = now + deliver_timeout
                elif now >= deliver_deadline:
                    out.delivered = n
                    res.errors[f"delivery deadline: {n}/{res.accepted} in new/"] += 1
                    break
            if now >= next_tick:
                next_tick += 1.0
                print(
                    f"    {label} {now - t0:5.1f}s accepted {res.accepted:>5}/{cfg.messages}"
                    f"  in Maildir {n:>5}  {CPU.fmt(cpu.since())}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if not load.done():
            close_all()
            load.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(load, return_exceptions=True), 10)
        except TimeoutError:
            pass
    out.cpu = cpu.since(start_sample)
    out.accepted = res.accepted
    if run.last_accept is not None:
        out.accept_s = run.last_accept - t0
    out.errors = res.errors
    return out


# -------------------------------------------------------------------------------- main


def fmt(x: float | None, spec: str = ".1f") -> str:
    return format(x, spec) if x is not None else "-"


def describe(o: LoadOutcome) -> str:
    acc = f"{o.accepted / o.accept_s:.1f}" if o.accept_s else "-"
    return (
        f"{o.label}: {o.delivered}/{o.messages} msgs in {fmt(o.seconds, '.2f')} s ="
        f" {fmt(o.rate)} msgs/s into Maildir (accepted in {fmt(o.accept_s, '.2f')} s ="
        f" {acc} msgs/s)  {CPU.fmt(o.cpu)}" + (f"  errors {dict(o.errors)}" if o.errors else "")
    )


Results = list[tuple[int, str, LoadOutcome, LoadOutcome]]


def run(args: argparse.Namespace, sink: Results | None = None) -> int:
    """The whole comparison (see the module docstring); each repetition's (rep, load average,
    A, B) is also appended to sink as it ends (bench/all.py reads them from there)."""
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    lab: dict = {}
    results: Results = [] if sink is None else sink
    try:
        for attempt in (1, 2):
            lab = lab_appliances(work / f"lab{attempt}")
            try:
                start(lab["sina"])  # first: 163's [relay] ca_file is sina's ca.crt
                start(lab["163"])
                break
            except SystemExit as e:
                # e.g. a free port taken by someone else between make_lab and the bind
                stop_all(lab)
                if attempt == 2:
                    raise
                say(f"lab start failed, trying once more with other ports: {str(e)[:2000]}")
        c163, sina = lab["163"], lab["sina"]
        ports = c163.ports
        maildir = sina.maildir(RCPT)
        print(
            "lab config: etc/163.ini and etc/sina.ini (zones, reverse zone, access, virtusertable,"
            " aliases, passwd-file, [relay] tls = verify) copied to"
            f" {c163.ini.parent}, ports moved: smtp {ports[25]}, submission {ports[587]},"
            f" dns {ports[53]}; [relay] port = {ports[25]}",
            flush=True,
        )
        cpu = CPU({"163": c163.proc.pid, "sina": sina.proc.pid})

        def cfg(which: str, messages: int, conns: int, progress_timeout: float) -> sl.LoadConfig:
            a, (user, pw) = (c163, SENDER_A) if which == "A" else (sina, SENDER_B)
            return sl.LoadConfig(
                host=a.ip,
                port=ports[587],
                messages=messages,
                size=args.size,
                connections=conns,
                mail_from=user,
                rcpt=RCPT,
                auth=(user, pw),
                tls="starttls" if args.tls else None,
                cafile=str(a.state / "ca" / "ca.crt") if args.tls else None,
                servername=hostname_of(a) if args.tls else None,
                helo="relay-load.bench.test",
                timeout=progress_timeout,
                progress=False,
            )

        def load(label: str, c: sl.LoadConfig) -> LoadOutcome:
            return asyncio.run(one_load(label, c, maildir, cpu, args.timeout, args.deliver_timeout))

        def settle() -> None:
            """Empty new/ and wait (bounded) until neither queue holds a message."""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (queue_files(c163) or queue_files(sina)):
                time.sleep(0.1)
            left = queue_files(c163) + queue_files(sina)
            if left:
                say(f"warning: {left} file(s) still queued after 60 s")
            clear_new(maildir)

        print(
            f"load: {args.messages} msgs x {len(sl.make_message(args.size, SENDER_A[0], RCPT))} B"
            f" over {args.connections} connections,"
            f"{' STARTTLS (verified) and' if args.tls else ''}"
            f" AUTH PLAIN on submission (587 -> {ports[587]}),"
            " pipelined, connections logged in before the clock starts",
            flush=True,
        )
        print(
            f"  A relay: {SENDER_A[0]} -> 163 {c163.ip}:{ports[587]} -> (MX via 163's DNS,"
            f" STARTTLS verify, from {c163.ip}) sina {sina.ip}:{ports[25]} -> {RCPT} Maildir",
            flush=True,
        )
        print(
            f"  B local: {SENDER_B[0]} -> sina {sina.ip}:{ports[587]} -> {RCPT} Maildir",
            flush=True,
        )
        # smoke test of both paths (also creates the Maildir and warms DNS, TLS, bcrypt)
        for which in ("A", "B"):
            o = load(f"smoke {which}", cfg(which, 4, 2, 30))
            if o.rate is None:
                tail = "".join(lab["163"].output[-50:] + lab["sina"].output[-50:])
                raise SystemExit(f"smoke test {which} failed: {describe(o)}\n{tail[-3000:]}")
            settle()
        say("smoke tests passed")

        for rep in range(1, args.reps + 1):
            la = loadavg()
            print(f"rep {rep}/{args.reps}: load average {la}", flush=True)
            pair = []
            for which in ("A", "B"):
                say(f"rep {rep} {which}: {args.messages} messages")
                o = load(which, cfg(which, args.messages, args.connections, args.timeout))
                o.load1 = la
                print(f"  rep {rep} {describe(o)}", flush=True)
                pair.append(o)
                settle()
            results.append((rep, la, pair[0], pair[1]))
    finally:
        stop_all(lab)
        sl.remove_work(work, args.keep)

    print()
    print(
        f"relay 163 -> sina vs local delivery on sina, {args.messages} x {args.size} B,"
        f" {args.connections} connections, {args.reps} reps (lab config); msgs/s = messages /"
        " (first submission -> last one in user3's Maildir/new)"
    )
    head = f"{'rep':>3} | {'load avg':>14} | {'A relay s':>9} | {'A msg/s':>8} | {'B local s':>9} | {'B msg/s':>8} | {'A/B':>5}"
    print(head)
    print("-" * len(head))
    ra, rb = [], []
    for rep, la, a, b in results:
        ratio = a.rate / b.rate if a.rate and b.rate else None
        print(
            f"{rep:>3} | {la:>14} | {fmt(a.seconds, '.2f'):>9} | {fmt(a.rate):>8}"
            f" | {fmt(b.seconds, '.2f'):>9} | {fmt(b.rate):>8} | {fmt(ratio, '.2f'):>5}"
        )
        if a.rate:
            ra.append(a.rate)
        if b.rate:
            rb.append(b.rate)
    ma = statistics.median(ra) if ra else None
    mb = statistics.median(rb) if rb else None
    ratio = ma / mb if ma and mb else None
    print(f"median A (relay): {fmt(ma)} msgs/s   median B (local): {fmt(mb)} msgs/s")
    print(
        f"ratio A/B: {fmt(ratio, '.2f')}x  (goal >= 0.80x: "
        f"{'-' if ratio is None else 'PASS' if ratio >= 0.8 else 'FAIL'})"
    )
    print(f"load average at end: {loadavg()}")
    complete = len(ra) == len(rb) == args.reps
    return 0 if complete else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (argv, default sys.argv[1:]), checked; exits with a usage error."""
    ap = arg_parser(
        __doc__, "See the module docstring for details (python -c 'help(...)' or read the file)."
    )
    ap.add_argument("--messages", type=int, default=2000, help="messages per load (2000)")
    ap.add_argument("--connections", type=int, default=20, help="concurrent connections (20)")
    ap.add_argument("--size", type=int, default=1024, help="message bytes (1024)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of A then B (3)")
    ap.add_argument("--timeout", type=float, default=300, help="deadline of each load, s (300)")
    ap.add_argument(
        "--deliver-timeout",
        type=float,
        default=120,
        help="wait for the Maildir after each load, s (120)",
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="submit with STARTTLS (verified against the appliance's CA), as mail clients "
        "do on 587; default: AUTH without TLS, which the lab allows from loopback",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary lab folder")
    args = ap.parse_args(argv)
    if args.messages < 1 or args.connections < 1 or args.size < 0 or args.reps < 1:
        ap.error("--messages, --connections and --reps must be >= 1, --size >= 0")
    return args


def main() -> int:
    args = parse_args()
    # Ctrl-C and SIGTERM unwind as KeyboardInterrupt (asyncio.run cancels the load cleanly),
    # so the finally block stops both appliances; SIGINT even when started with it ignored
    return run_interruptible(lambda: run(args), "both appliances stopped")


if __name__ == "__main__":
    sys.exit(main())
