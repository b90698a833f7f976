#!/usr/bin/env python3
"""IMAP load: FETCH of N 1 KB messages by 1 client and a mixed load of C clients, ours beside
Dovecot 2.3.

    .venv/bin/python bench/imap_load.py [--messages 2000] [--clients 10] [--ops 200]
        [--reps 3] [--size 1024] [--timeout 120] [--imaptest SECS] [--imaptest-clients 5]
        [--keep]

The IMAP twin of bench/pop3_load.py, whose helpers it imports (messages, Maildirs, Dovecot's
users, ports, stopping): the same two servers over identical copies of the same Maildirs.

Ours: the mail.163.com lab appliance (`twistd -n mailappliance`, as tests/integration/
conftest.py's make_lab does): etc/ copied into a temporary folder with the lab config unchanged
(passwd-file, `[auth] plaintext_networks = 127.0.0.0/8 ::1`), only the ports moved to free high
ports on 127.0.1.1; read on its plain IMAP port (143 moved), LOGIN without TLS from loopback.
Before it starts, `mailappliance --config INI user add --password-stdin` adds
imapbench01..imapbenchC@163.com (password <user>pass, like the lab users).

Dovecot: a private Dovecot 2.3 configured as pop3_load's (nothing from /etc/dovecot;
passwd-file users with {PLAIN} passwords, uid/gid 65534, `ssl = no`, `disable_plaintext_auth =
no`, mail_location = maildir:<root>/mail/%n) but `protocols = imap`, IMAP on a free port of
127.0.0.1 (imaps off), its root in the same temporary folder.

Mailboxes: user1@163.com (lab user) holds N messages, for the 1-client loads; imapbench01..C
hold N/C each, for the mixed load. pop3_load's make_messages/fill write them into new/ (the same
names and bytes for both servers, CRLF line ends, SIZE bytes each); Dovecot's Maildirs are
copies chowned to 65534 (each server renames files, writes flags and indexes in its own copy).

Before the repetitions, one untimed session per mailbox and server (SELECT, UID FETCH 1:*
(FLAGS BODY.PEEK[]) checked against the files written, one BODY.PEEK[HEADER]) lets each server
build its index/UID state and checks that it serves exactly the messages written.

Loads (each client a process, as pop3_load's; it logs in, one login at a time, and SELECTs
INBOX before the clock; then all start together):
  fetch-all  1 client, `UID FETCH 1:* (FLAGS BODY.PEEK[])` of all N, FETCH_ALL_ROUNDS (25)
             times one after another (one FETCH of 2,000 takes about 0.04 s, too short to
             time alone): msgs/s = rounds x N / seconds.
  fetch-each 1 client, N commands `FETCH n (BODY.PEEK[])` one after another, each answer
             awaited (a client reading one message at a time): msgs/s.
  mix        C clients, each on its own mailbox, OPS commands cycling through
             FETCH n (FLAGS BODY.PEEK[HEADER]), FETCH n BODY.PEEK[], STORE n +FLAGS (\\Seen),
             SEARCH UNSEEN, STORE n -FLAGS (\\Seen), NOOP, UID FETCH 1:* (FLAGS); n moves
             every cycle (37 x cycle mod N + 1); \\Seen is cleared (untimed) before the load,
             so both servers do identical work every repetition: ops/s over all clients.
  imaptest   with --imaptest SECS: Dovecot's imaptest in its load mode
             (../shared/peer/imaptest/imaptest.sh stress, built on first use) for SECS seconds,
             --imaptest-clients clients on one more mailbox, imapstress (empty at the start;
             imaptest APPENDs, FETCHes, STOREs, EXPUNGEs, and logs out and in again all the
             time): commands/s = every command in imaptest's Totals / SECS. Logins are inside
             the clock here, so Dovecot's passwd-file gets the same {BLF-CRYPT} hash as ours for
             this user (the others are {PLAIN}, logged in before the clock). The errors imaptest
             reports are counted in the row.
Rate = units / (first command sent -> last command answered, over all clients). Every answer
is checked (tagged OK, the bodies and headers byte for byte, the SEARCH and flags expected); a
failed check stops that client and the row says which command got which answer.
The client is a small raw-socket one (no pipelining: one command, read to its tagged answer),
so the same cheap client measures both servers.

Each repetition runs ours and Dovecot, alternating which goes first, each with fetch-all,
fetch-each, then mix; the load average is printed before each load, a progress line a second
while it runs (stderr), then the raw row (units, seconds, rate, our appliance's CPU: all
threads and its main thread, the reactor; 100% = one core). At the end: the raw rows, medians
and the ratio ours/Dovecot per load (the bar: >= 0.8x for fetch-all and imaptest, as
bench/all.py's goals). Progress goes to stderr, results to stdout. Both servers are stopped
at the end, on error and on Ctrl-C/SIGTERM (TERM, bounded wait, KILL). Every load stops at
--timeout, each server's start at 60 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import pop3_load as pl  # noqa: E402  (messages, Maildirs, Dovecot's users, ports, stopping)
import relay_load as rl  # noqa: E402  (CPU sampling, lab start; same style)
from client_procs import ClientSync, run_client, run_clients  # noqa: E402
from imap_client import (  # noqa: E402
    FETCH,
    MIX,
    Conn,
    IMAPError,
    fetch_all,
    fetch_each,
    fetch_one,
    mix,
)

# the goals (bench/all.py): >= 0.8x Dovecot on FETCH of the whole mailbox and on imaptest's
# load mode; the other loads are shown without one
BARS = {"fetch-all": 0.8, "imaptest": 0.8}
LOADS = ("fetch-all", "fetch-each", "mix")
# UID FETCH 1:* of the whole mailbox, this many times per fetch-all load: about a second (at 5
# rounds a load took 0.2 s, and the ratio moved by a third between runs)
FETCH_ALL_ROUNDS = 25
UNIT = {"fetch-all": "msgs", "fetch-each": "msgs", "mix": "ops", "imaptest": "cmds"}
IMAPTEST = REPO.parent / "shared" / "peer" / "imaptest" / "imaptest.sh"
STRESS = ("imapstress", "imapstresspass")  # imaptest's mailbox (user, password)
say = pl.say
loadavg = pl.loadavg


# ------------------------------------------------------------------------------ Dovecot


def password_hash(ini: Path, address: str) -> str:
    """The "{SCHEME}hash" of address in the passwd-file of the appliance config ini."""
    import configparser

    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    cp.read(ini)
    passwd = ini.parent / cp.get("auth", "passwd_file")
    for line in passwd.read_text().splitlines():
        user, sep, rest = line.partition(":")
        if sep and user == address:
            return rest.split(":", 1)[0]
    raise SystemExit(f"{address} not in {passwd}")


def client(
    idx: int,
    sync: ClientSync,
    kind: str,
    host: str,
    port: int,
    user: str,
    password: str,
    count: int,
    ops: int,
    bodies: frozenset[bytes],
    headers: frozenset[bytes],
) -> None:
    """One IMAP client (a process): LOGIN + SELECT, then on `go` its load; results[idx]."""

    def session() -> tuple[int, float, float]:
        with sync.login_lock:
            conn = Conn(host, port, sync.timeout)
            conn.login(user, password)
        got = conn.select()
        if got != count:
            raise IMAPError(f"SELECT INBOX: {got} EXISTS, expected {count}")
        if kind == "mix":
            conn.command(b"STORE 1:* -FLAGS.SILENT (\\Seen)")
        sync.start()
        t0 = time.monotonic()
        if kind == "fetch-all":
            done = 0
            for _ in range(FETCH_ALL_ROUNDS):
                done += fetch_all(conn, count, bodies)
                sync.progress[idx] = done
        elif kind == "fetch-each":
            done = fetch_each(conn, count, bodies, sync.progress, idx)
        else:
            done = mix(conn, count, ops, bodies, headers, sync.progress, idx)
        t1 = time.monotonic()
        conn.logout()
        return done, t0, t1

    run_client(idx, sync, session, error_chars=600)


# ---------------------------------------------------------------------------- one load


@dataclass
class Outcome:
    server: str
    load: str
    clients: int
    units: int
    load1: str
    done: int = 0
    seconds: float | None = None
    cpu: str = ""
    error: str = ""
    note: str = ""

    @property
    def rate(self) -> float | None:
        if self.seconds and self.done == self.units and not self.error:
            return self.units / self.seconds
        return None


def one_load(
    srv: pl.Server,
    kind: str,
    boxes: list[tuple[str, str, int]],
    ops: int,
    bodies: frozenset[bytes],
    headers: frozenset[bytes],
    timeout: float,
    cpu: rl.CPU | None,
) -> Outcome:
    """One client process per mailbox (user, password, messages in it)."""
    units = len(boxes) * ops if kind == "mix" else sum(b[2] for b in boxes)
    if kind == "fetch-all":
        units *= FETCH_ALL_ROUNDS
    out = Outcome(srv.label, kind, len(boxes), units, loadavg())
    clients = [
        (kind, srv.host, srv.port, srv.user_fmt.format(u=u), pw, c, ops, bodies, headers)
        for u, pw, c in boxes
    ]
    got = run_clients(
        client,
        clients,
        units,
        timeout,
        cpu,
        label=srv.label,
        unit=UNIT[kind],
        verb="done",
        what=f"{srv.label} {kind}",
    )
    out.done, out.seconds, out.cpu, out.error = got.done, got.seconds, got.cpu, got.error
    return out


def imaptest_stress(srv: pl.Server, user: str, password: str, secs: int, clients: int) -> Outcome:
    """imaptest's load mode (IMAPTEST stress) on srv for secs seconds with `clients` clients
    on user's mailbox; its lines go to stderr as they come. units = every command counted in
    its Totals (rate: commands/s over secs); note: the errors it reported."""
    out = Outcome(srv.label, "imaptest", clients, 0, loadavg())
    cmd = ["bash", str(IMAPTEST), "stress", srv.host, str(srv.port), user, password]
    proc = subprocess.Popen(
        cmd + [f"secs={secs}", f"clients={clients}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own group: stopped as one below
    )
    lines: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(f"    {srv.label} imaptest| {lines[-1]}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=secs + 60)
    except subprocess.TimeoutExpired:
        out.error = f"imaptest still running {secs + 60} s after its start"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        reader.join(timeout=5)
    counts: list[int] = []
    if "Totals:" in lines:
        for line in lines[len(lines) - 1 - lines[::-1].index("Totals:") :]:
            if line.split() and all(t.isdigit() for t in line.split()):
                counts = [int(t) for t in line.split()]
                break
    errors = [line for line in lines if line.startswith("Error:")]
    timers = [line.split() for line in lines if line.endswith("ms/cmd avg")]
    names = next((line.split() for line in lines if line.startswith("Logi ")), [])
    if timers and names and timers[-1][0].isdigit():
        out.note = f"login {timers[-1][names.index('Logi')]} ms avg"
    if errors:
        out.note += f"; imaptest errors: {len(errors)} (first: {errors[0][:160]})"
    if not out.error and proc.returncode != 0:
        out.error = f"imaptest exited {proc.returncode}: {' | '.join(lines[-3:])[:300]}"
    if not out.error and not sum(counts):
        out.error = f"no Totals in imaptest's output: {' | '.join(lines[-3:])[:300]}"
    out.units = out.done = sum(counts)
    out.seconds = float(secs)
    return out


def warm(srv: pl.Server, boxes: list[tuple[str, str, int]], written: dict[str, list]) -> None:
    """One untimed session per mailbox: SELECT, every body checked against the files written
    (as a multiset: each server numbers them its own way), one header, \\Seen cleared."""
    for u, pw, count in boxes:
        conn = Conn(srv.host, srv.port, 60)
        try:
            conn.login(srv.user_fmt.format(u=u), pw)
            got = conn.select()
            if got != count:
                raise SystemExit(f"{srv.label}: {u} has {got} messages, expected {count}")
            cmd = b"UID FETCH 1:* (FLAGS BODY.PEEK[])"
            bodies = sorted(
                lits[0] for text, lits in conn.command(cmd) if FETCH.match(text) and lits
            )
            if bodies != sorted(data for _name, data in written[u]):
                raise SystemExit(
                    f"{srv.label}: {u}: {cmd.decode()} gave {len(bodies)} bodies, not the"
                    f" {count} written"
                )
            fetch_one(conn, b"FETCH 1 (BODY.PEEK[HEADER])", 1, header_set(written[u]))
            conn.command(b"STORE 1:* -FLAGS.SILENT (\\Seen)")
        except IMAPError as e:
            raise SystemExit(f"{srv.label}: warm-up of {u}: {e}") from None
        finally:
            conn.logout()


def header_set(messages: list[tuple[str, bytes]]) -> frozenset[bytes]:
    return frozenset(d[: d.index(b"\r\n\r\n") + 4] for _n, d in messages)


# ---------------------------------------------------------------------------------- main


def describe(o: Outcome) -> str:
    return (
        f"{o.server:>8} {o.load:<10} {o.clients:>2} client(s): {o.done}/{o.units}"
        f" {UNIT[o.load]} in {pl.fmt(o.seconds, '.3f')} s = {pl.fmt(o.rate)} {UNIT[o.load]}/s"
        + (f"  {o.cpu}" if o.cpu else "")
        + (f"  {o.note}" if o.note else "")
        + (f"  ERROR {o.error}" if o.error else "")
    )


Results = list[tuple[int, dict[tuple[str, str], Outcome]]]


def run(args: argparse.Namespace, sink: Results | None = None) -> int:
    """The whole comparison (see the module docstring); each repetition's (rep, {(server,
    load): Outcome}) is also appended to sink as it ends (bench/all.py reads them there)."""
    work = Path(tempfile.mkdtemp(prefix="imap-bench-"))
    work.chmod(0o755)  # Dovecot's processes (dovecot, 65534) must reach their folders
    lab: dict = {}
    dv_proc: subprocess.Popen | None = None
    results: Results = [] if sink is None else sink
    kinds = LOADS + (("imaptest",) if args.imaptest else ())
    stress = [(STRESS[0], STRESS[1], 0)] if args.imaptest else []
    per = args.messages // args.clients
    multi = [
        (f"imapbench{i:02d}", f"imapbench{i:02d}pass", per) for i in range(1, args.clients + 1)
    ]
    single = [(pl.SINGLE[0], pl.SINGLE[1], args.messages)]
    try:
        if args.imaptest:  # built once (minutes), before anything runs
            r = subprocess.run(["bash", str(IMAPTEST), "build"], timeout=1200, check=False)
            if r.returncode != 0:
                raise SystemExit(f"{IMAPTEST} build failed ({r.returncode})")
        # ---- ours: the lab's 163 appliance, ports moved
        lab = rl.lab_appliances(work / "lab")
        ours = lab["163"]
        pl.add_users(ours.ini, multi + stress)
        hashes = {u: password_hash(ours.ini, f"{u}@{pl.DOMAIN}") for u, _pw, _c in stress}
        say(
            f"filling Maildirs: {args.messages} msgs for {pl.SINGLE[0]},"
            f" {per} for each of {multi[0][0]}.."
        )
        written = {u: pl.make_messages(c, args.size, u) for u, _pw, c in single + multi}
        for u, msgs in [*written.items(), *((u, []) for u, _pw, _c in stress)]:
            pl.fill(ours.maildir(f"{u}@{pl.DOMAIN}"), msgs)
        bodies = frozenset(d for msgs in written.values() for _n, d in msgs)
        headers = frozenset().union(*(header_set(m) for m in written.values()))
        # ---- Dovecot: pop3_load's config with IMAP, identical copies of the Maildirs
        dv_root = work / "dovecot"
        dv_port = pl.free_port()
        every = single + multi + stress
        users = [(u, pw) for u, pw, _c in every]
        conf = pl.setup_dovecot(dv_root, dv_port, users, hashes, "imap")
        pl.copy_maildirs(ours, dv_root, [u for u, _pw in users])
        rl.start(ours)
        port = ours.ports[143]
        s_ours = pl.Server("ours", ours.ip, port, "{u}@" + pl.DOMAIN, ours.proc.pid)
        dv_proc = pl.start_dovecot(dv_root, conf, dv_port)
        say(f"dovecot pid {dv_proc.pid}, IMAP 127.0.0.1:{dv_port}")
        s_dv = pl.Server("dovecot", "127.0.0.1", dv_port, "{u}", None, dv_proc.pid)
        print(
            f"ours: etc/163.ini (lab config: passwd-file, plaintext_networks 127.0.0.0/8) copied to"
            f" {ours.ini.parent}, ports moved: imap 143 -> {ours.ip}:{port}"
            f" (imaps {ours.ports[993]}, pop3 {ours.ports[110]}, smtp {ours.ports[25]});"
            f" pid {ours.proc.pid}",
            flush=True,
        )
        print(
            f"dovecot: {pl.dovecot_version()}, private instance {conf} (as pop3_load's with"
            f" protocols = imap: passwd-file, ssl = no), IMAP 127.0.0.1:{dv_port};"
            f" pid {dv_proc.pid}",
            flush=True,
        )
        print(
            f"load: plain IMAP LOGIN from loopback (no TLS, both), LOGIN + SELECT before the"
            f" clock; fetch-all and fetch-each: 1 client x {args.messages} msgs ({pl.SINGLE[0]});"
            f" mix: {args.clients} clients x {args.ops} ops on {per} msgs each"
            f" ({multi[0][0]}..{multi[-1][0]}), cycling {', '.join(MIX)}; {args.size} B each,"
            " identical files (Dovecot's a copy); one warm-up session per mailbox before rep 1"
            + (
                f"; imaptest: stress {args.imaptest} s, {args.imaptest_clients} clients on"
                f" {STRESS[0]} (empty at the start; the same BLF-CRYPT hash in both passwd files)"
                if args.imaptest
                else ""
            ),
            flush=True,
        )
        for srv in (s_ours, s_dv):
            say(f"warm-up sessions on {srv.label} (every body checked)")
            warm(srv, single + multi, written)
        cpu = rl.CPU({"ours": ours.proc.pid})

        for rep in range(1, args.reps + 1):
            order = (s_ours, s_dv) if rep % 2 else (s_dv, s_ours)
            print(f"rep {rep}/{args.reps}: load average {loadavg()}", flush=True)
            got: dict[tuple[str, str], Outcome] = {}
            for srv in order:
                for kind in LOADS:
                    bx = multi if kind == "mix" else single
                    say(f"rep {rep} {srv.label}: {kind}, {len(bx)} client(s)")
                    o = one_load(
                        srv,
                        kind,
                        bx,
                        args.ops,
                        bodies,
                        headers,
                        args.timeout,
                        cpu if srv is s_ours else None,
                    )
                    print(f"  rep {rep} load avg {o.load1}  {describe(o)}", flush=True)
                    got[(srv.label, kind)] = o
                if args.imaptest:
                    say(f"rep {rep} {srv.label}: imaptest stress, {args.imaptest_clients} clients")
                    user = srv.user_fmt.format(u=STRESS[0])
                    o = imaptest_stress(srv, user, STRESS[1], args.imaptest, args.imaptest_clients)
                    print(f"  rep {rep} load avg {o.load1}  {describe(o)}", flush=True)
                    got[(srv.label, "imaptest")] = o
            results.append((rep, got))
    finally:
        pl.stop_proc(dv_proc, "dovecot")
        rl.stop_all(lab)
        rl.remove_work(work, args.keep)

    print()
    print(
        f"IMAP, ours (lab 163 config, ports moved) vs Dovecot {pl.dovecot_version().split()[0]},"
        f" {args.messages} x {args.size} B, plain IMAP from loopback, {args.reps} reps;"
        " rate = units / (first command sent -> last answered, over all clients)"
    )
    head = (
        f"{'rep':>3} | {'load':<10} | {'units':>6} | {'ours load avg':>14} | {'ours s':>7}"
        f" | {'ours /s':>8} | {'dv load avg':>14} | {'dv s':>7} | {'dv /s':>8}"
    )
    print(head)
    print("-" * len(head))
    cols: dict[tuple[str, str], list[float]] = {
        (s, k): [] for s in ("ours", "dovecot") for k in kinds
    }
    for rep, got in results:
        for kind in kinds:
            a, b = got[("ours", kind)], got[("dovecot", kind)]
            for o in (a, b):
                if o.rate:
                    cols[(o.server, kind)].append(o.rate)
            print(
                f"{rep:>3} | {kind:<10} | {a.units:>6} | {a.load1:>14}"
                f" | {pl.fmt(a.seconds, '.3f'):>7} | {pl.fmt(a.rate):>8} | {b.load1:>14}"
                f" | {pl.fmt(b.seconds, '.3f'):>7} | {pl.fmt(b.rate):>8}"
            )
    med = {k: statistics.median(v) if v else None for k, v in cols.items()}
    for kind in kinds:
        mo, md = med[("ours", kind)], med[("dovecot", kind)]
        ratio = mo / md if mo and md else None
        bar = BARS.get(kind)
        u = UNIT[kind]
        judged = "" if bar is None else f" (bar >= {bar:.1f}x: {pl.verdict(ratio, bar)})"
        print(
            f"{kind:<10} median {u}/s: ours {pl.fmt(mo)}, dovecot {pl.fmt(md)};"
            f" ratio ours/dovecot {pl.fmt(ratio, '.2f')}x{judged}"
        )
    print(f"load average at end: {loadavg()}")
    complete = all(len(v) == args.reps for v in cols.values())
    return 0 if complete else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (argv, default sys.argv[1:]), checked; exits with a usage error."""
    ap = rl.arg_parser(__doc__)
    ap.add_argument(
        "--messages", type=int, default=2000, help="messages of the 1-client loads (2000)"
    )
    ap.add_argument(
        "--clients",
        type=int,
        default=10,
        help="clients/mailboxes of the mix load, --messages/--clients messages each (10)",
    )
    ap.add_argument("--ops", type=int, default=200, help="commands per client of the mix (200)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    ap.add_argument("--size", type=int, default=1024, help="bytes per message (1024)")
    ap.add_argument("--timeout", type=float, default=120, help="deadline of each load, s (120)")
    ap.add_argument(
        "--imaptest",
        type=int,
        default=0,
        metavar="SECS",
        help="also run imaptest's load mode for SECS seconds against each server (0: no)",
    )
    ap.add_argument("--imaptest-clients", type=int, default=5, help="imaptest's clients (5)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    if min(args.messages, args.clients, args.ops, args.reps, args.size) < 1:
        ap.error("--messages, --clients, --ops, --reps and --size must be >= 1")
    pl.check_dovecot_args(ap, args, "dovecot-imapd", Path("/usr/lib/dovecot/imap"))
    if args.imaptest < 0 or args.imaptest_clients < 1:
        ap.error("--imaptest must be >= 0, --imaptest-clients >= 1")
    return args


def main() -> int:
    args = parse_args()
    return rl.run_interruptible(lambda: run(args), "both servers stopped")


if __name__ == "__main__":
    sys.exit(main())
