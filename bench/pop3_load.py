#!/usr/bin/env python3
"""POP3 load: RETR of N 1 KB messages by 1 client and by C clients, ours beside Dovecot 2.3.

    .venv/bin/python bench/pop3_load.py [--messages 2000] [--clients 10] [--reps 3]
        [--size 1024] [--timeout 120] [--pin none|same|split] [--keep]

Ours: the mail.163.com lab appliance (`twistd -n mailappliance`, as tests/integration/
conftest.py's make_lab does): etc/ copied into a temporary folder with the lab config unchanged
(passwd-file, `[auth] plaintext_networks = 127.0.0.0/8 ::1`), only the ports moved to free high
ports on 127.0.1.1. Before it starts, `mailappliance --config INI user add --password-stdin`
adds popbench01..popbenchC@163.com (password <user>pass, like the lab users).

Dovecot: a private Dovecot 2.3 configured as ../shared/bench/pop3_dovecot.sh configures its own
(nothing from /etc/dovecot; passwd-file users with {PLAIN} passwords, uid/gid 65534, `ssl = no`,
`disable_plaintext_auth = no`, mail_location = maildir:<root>/mail/%n) with its root in the
same temporary folder, POP3 on a free port of 127.0.0.1. That script fills and measures its own
single mailbox, so it cannot be pointed at ours: this one writes the same config and passwd
lines for every mailbox used here.

Mailboxes: user1@163.com (lab user) holds N messages, for the 1-client load; popbench01..C hold
N/C each, for the C-client load. The messages are written directly into new/ (tmp/ then
rename), the same file names and bytes for both servers: our Maildir is the appliance's
state_dir/mail/163.com/<user>/Maildir, Dovecot's is an identical copy (chowned to 65534, since
Dovecot moves new/ to cur/ and writes its indexes and uidlist into the folder, which would also
change what ours sees). Each message is SIZE bytes in all, CRLF line ends (as our store keeps
mail), named like Dovecot names them (`<secs>.M<usecs>P<pid>Q<n>.bench,S=<size>`).

Both servers are read in plain POP3 (USER/PASS, no TLS) from loopback, which the lab config
allows. No DELE: every repetition reads the same messages. Before the repetitions, one
untimed session per mailbox and server (STAT, UIDL, one RETR) lets each server build its
index/UID state, so every timed session is a "warm" one (the README's Dovecot figure is the
second session too).

One load: each client is a process (poplib), logs in (one login at a time, since our login
throttle counts logins in flight) and STATs before the clock; then all start together and each
RETRs all its messages in order. msgs/s = messages / (first RETR sent -> last RETR answered,
over all clients). Each repetition runs ours and Dovecot, alternating which goes first, each
with 1 client then C clients; the load average is printed before each load, a progress line a
second while it runs, then the raw row (messages, seconds, msg/s, our appliance's CPU: all
threads and its main thread, the reactor; 100% = one core). At the end: the raw rows, medians
and the ratios ours/Dovecot for 1 and C clients (the bar: >= 1.0x for both, as bench/all.py's
goal).
CPU placement of the 1-client load (--pin): with one client the figure is a ping-pong, one
request, one reply, so it is mostly the time it takes the two processes to wake each other. On
a small virtual machine (this one has 2 vCPUs) a wake-up across vCPUs costs the hypervisor
tens to hundreds of microseconds, far more than either server spends on a RETR, and whether
the scheduler happens to put the client and the server on one vCPU or two changes the figure
several-fold from second to second (a bare Python socket server measured 1,100-8,600 msg/s
across vCPUs, 25,000-30,000 on one). `--pin none` (the default, as a user's machine runs)
leaves placement to the scheduler: use several reps, the medians are what count. `--pin
same` puts the server (every thread of ours, every process of Dovecot's) and the client on
CPU 0 for that load, so the figure measures the CPU each server spends per RETR rather than
the hypervisor (the stricter comparison: nothing of ours runs beside the reactor); `--pin
split` puts the server on CPU 0 and the client on CPU 1 (every RETR wakes the other vCPU). The same placement for both servers, set once the client
has logged in and undone after the load. The C-client load is never pinned (Dovecot's
process per client and our worker threads may use every CPU).
Progress goes to stderr, results to stdout. Both servers are stopped at the end, on error and
on Ctrl-C/SIGTERM (TERM, bounded wait, KILL). Every load stops at --timeout, each server's
start at 60 s.
"""

from __future__ import annotations

import argparse
import functools
import os
import poplib
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
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import relay_load as rl  # noqa: E402  (CPU sampling, lab start; same style)
from client_procs import ClientSync, run_client, run_clients  # noqa: E402

DOMAIN = "163.com"
SINGLE = ("user1", "user1pass")  # lab user (README: password = user + "pass")
DV_UID = DV_GID = 65534
BAR = 1.0  # the goal (bench/all.py): >= 1.0x Dovecot with one client and with C
STOP_WAIT = 15.0


def say(msg: str) -> None:
    rl.say(msg)


def loadavg() -> str:
    return rl.loadavg()


# ----------------------------------------------------------------------------- messages


def make_messages(n: int, size: int, tag: str) -> list[tuple[str, bytes]]:
    """n (name, bytes) of exactly size bytes (at least the headers), CRLF line ends."""
    now = int(time.time())
    out = []
    for i in range(n):
        head = (
            "Return-Path: <a@example.test>\r\n"
            "From: a@example.test\r\n"
            f"To: {tag}@{DOMAIN}\r\n"
            f"Subject: bench message {i}\r\n"
            f"Message-ID: <{now}.{i}.{tag}@bench.localdomain>\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            "\r\n"
        ).encode()
        left = max(size - len(head), 0)
        line = b"x" * 75 + b"\r\n"
        body = (line * (left // len(line) + 1))[:left]
        if left >= 2:
            body = body[:-2] + b"\r\n"
        data = head + body
        out.append((f"{now}.M{i:06d}P{os.getpid()}Q{i + 1}.bench,S={len(data)}", data))
    return out


def fill(maildir: Path, messages: list[tuple[str, bytes]]) -> None:
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data in messages:
        tmp = maildir / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, maildir / "new" / name)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for d, dirs, files in os.walk(root):
        for x in dirs + files:
            os.chown(os.path.join(d, x), uid, gid)


# ------------------------------------------------------------------------------ servers


@dataclass
class Server:
    label: str
    host: str
    port: int
    user_fmt: str  # how a mailbox's login name is written: "{u}@163.com" or "{u}"
    pid: int | None = None  # whose CPU we sample (ours)
    root_pid: int | None = None  # the process whose tree serves (pinned by --pin)


PIN_CPUS = {"same": ({0}, {0}), "split": ({0}, {1}), "none": (None, None)}  # server, client


def tree_tasks(root: int) -> list[int]:
    """Every thread of root and of its descendant processes (Dovecot forks per session)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    tasks = []
    for pid in pids:
        try:
            tasks.extend(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return tasks


def pin_tree(root: int, cpus: set[int]) -> int:
    """Set the CPU affinity of root's whole tree; how many threads were set."""
    n = 0
    for tid in tree_tasks(root):
        try:
            os.sched_setaffinity(tid, cpus)
            n += 1
        except OSError:
            pass  # ended meanwhile
    return n


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.recv(100)
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop_proc(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        say(f"{name} pid {proc.pid} did not stop in {STOP_WAIT:g} s: KILL")
        proc.kill()
        proc.wait(timeout=5)


DOVECOT_CONF = """\
# private benchmark instance ({origin}): nothing from /etc/dovecot
instance_name = {proto}-load-dovecot
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = {proto}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 100
mail_location = maildir:{root}/mail/%n
{settings}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/passwd
}}
service {proto}-login {{
  inet_listener {proto} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {proto}s {{
    port = 0
  }}
}}
"""
# per protocol (pop3_load's, imap_load's): where the config comes from, settings of its own
DOVECOT_PROTOCOLS = {
    "pop3": ("as ../shared/bench/pop3_dovecot.sh", "pop3_uidl_format = %08Xu%08Xv\n"),
    "imap": ("as pop3_load's, IMAP instead of POP3", ""),
}


def setup_dovecot(
    root: Path,
    port: int,
    users: list[tuple[str, str]],
    hashes: dict[str, str] | None = None,
    protocol: str = "pop3",
) -> Path:
    """A private Dovecot's folders, passwd-file and dovecot.conf (DOVECOT_CONF for protocol,
    pop3 or imap, on port) under root, checked by doveconf; users: (user, password), {PLAIN}
    unless hashes gives the user a "{SCHEME}hash" to write instead."""
    for sub in ("run", "state", "mail", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chown(root / "mail", DV_UID, DV_GID)
    lines = []
    for u, pw in users:
        home = root / "home" / u
        home.mkdir(exist_ok=True)
        os.chown(home, DV_UID, DV_GID)
        secret = (hashes or {}).get(u) or f"{{PLAIN}}{pw}"
        lines.append(f"{u}:{secret}:{DV_UID}:{DV_GID}::{home}::\n")
    passwd = root / "passwd"
    passwd.write_text("".join(lines))
    shutil.chown(passwd, "root", "dovecot")  # the auth process runs as dovecot
    passwd.chmod(0o640)
    conf = root / "dovecot.conf"
    origin, settings = DOVECOT_PROTOCOLS[protocol]
    conf.write_text(
        DOVECOT_CONF.format(root=root, port=port, proto=protocol, origin=origin, settings=settings)
    )
    r = subprocess.run(
        ["doveconf", "-c", str(conf), "-n"], capture_output=True, text=True, timeout=30
    )
    if r.returncode != 0:
        raise SystemExit(f"doveconf rejected {conf}:\n{r.stderr[-2000:]}")
    return conf


def start_dovecot(root: Path, conf: Path, port: int) -> subprocess.Popen:
    """`dovecot -F -c conf` (its output in root/dovecot.out), once it answers on port of
    127.0.0.1 (20 s at most; else it is stopped and its log's tail raised)."""
    out_f = (root / "dovecot.out").open("w")
    proc = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)], stdout=out_f, stderr=subprocess.STDOUT
    )
    if not wait_port("127.0.0.1", port, 20, proc):
        stop_proc(proc, "dovecot")
        log = root / "dovecot.log"
        text = log.read_text() if log.exists() else ""
        raise SystemExit(f"dovecot did not start:\n{text[-2000:]}")
    return proc


def copy_maildirs(ours, root: Path, users: list[str]) -> None:
    """Identical copies of our Maildirs of users (@DOMAIN) in Dovecot's root/mail, its own."""
    for u in users:
        dst = root / "mail" / u
        shutil.copytree(ours.maildir(f"{u}@{DOMAIN}"), dst)
        chown_tree(dst, DV_UID, DV_GID)


def add_users(ini: Path, users: list[tuple[str, str, int]]) -> None:
    """rl.add_user for each (user, password, _) of users, as user@DOMAIN."""
    for u, pw, _c in users:
        rl.add_user(ini, f"{u}@{DOMAIN}", pw)


def dovecot_version() -> str:
    try:
        return subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# ------------------------------------------------------------------------------ clients


def client(
    idx: int,
    sync: ClientSync,
    host: str,
    port: int,
    user: str,
    password: str,
    cpus: set[int] | None,
) -> None:
    """One POP3 client (a process): login + STAT, then on `go` RETR 1..n; results[idx]."""

    def session() -> tuple[int, float, float]:
        with sync.login_lock:
            pop = poplib.POP3(host, port, timeout=sync.timeout)
            pop.user(user)
            pop.pass_(password)
        count, _size = pop.stat()
        sync.start()
        t0 = time.monotonic()
        for i in range(1, count + 1):
            pop.retr(i)
            sync.progress[idx] = i
        t1 = time.monotonic()
        pop.quit()
        return count, t0, t1

    run_client(idx, sync, session, cpus)


@dataclass
class Outcome:
    server: str
    clients: int
    messages: int
    load1: str
    done: int = 0
    seconds: float | None = None
    cpu: str = ""
    error: str = ""

    @property
    def rate(self) -> float | None:
        if self.seconds and self.done == self.messages and not self.error:
            return self.messages / self.seconds
        return None


def pin_server(label: str, root: int, cpus: set[int], client_cpus: set[int] | None) -> None:
    """Put every thread of the server's tree (root) on cpus, and say so."""
    pinned = pin_tree(root, cpus)
    say(f"  {label}: {pinned} server threads on CPU {cpus}, client on {client_cpus}")


def one_load(
    srv: Server,
    boxes: list[tuple[str, str, int]],
    timeout: float,
    cpu: rl.CPU | None,
    pin: str = "none",
) -> Outcome:
    """C client processes, one per mailbox (user, password, messages expected); pin: the
    placement of server and client (PIN_CPUS) while the load runs."""
    server_cpus, client_cpus = PIN_CPUS[pin]
    all_cpus = os.sched_getaffinity(0)
    expected = sum(b[2] for b in boxes)
    out = Outcome(srv.label, len(boxes), expected, loadavg())
    root = srv.root_pid if server_cpus is not None else None
    after_login = None
    if root is not None and server_cpus is not None:
        after_login = functools.partial(pin_server, srv.label, root, server_cpus, client_cpus)
    clients = [
        (srv.host, srv.port, srv.user_fmt.format(u=u), pw, client_cpus) for u, pw, _c in boxes
    ]
    try:
        got = run_clients(
            client,
            clients,
            expected,
            timeout,
            cpu,
            label=srv.label,
            unit="retrieved",
            verb="retrieved",
            after_login=after_login,
        )
    finally:
        if root is not None:
            pin_tree(root, all_cpus)
    out.done, out.seconds, out.cpu, out.error = got.done, got.seconds, got.cpu, got.error
    return out


def warm(srv: Server, boxes: list[tuple[str, str, int]]) -> None:
    """One untimed session per mailbox: STAT, UIDL and one RETR (index/UID state built)."""
    for u, pw, count in boxes:
        pop = poplib.POP3(srv.host, srv.port, timeout=60)
        try:
            pop.user(srv.user_fmt.format(u=u))
            pop.pass_(pw)
            got, _ = pop.stat()
            if got != count:
                raise SystemExit(f"{srv.label}: {u} has {got} messages, expected {count}")
            pop.uidl()
            if count:
                pop.retr(1)
        finally:
            pop.quit()


# ---------------------------------------------------------------------------------- main


def fmt(x: float | None, spec: str = ".1f") -> str:
    return format(x, spec) if x is not None else "-"


def verdict(ratio: float | None, bar: float) -> str:
    """PASS or FAIL of a ratio against its bar ('-' without a ratio)."""
    return "-" if ratio is None else "PASS" if ratio >= bar else "FAIL"


def describe(o: Outcome) -> str:
    return (
        f"{o.server:>8} {o.clients:>2} client(s): {o.done}/{o.messages} msgs in"
        f" {fmt(o.seconds, '.3f')} s = {fmt(o.rate)} msg/s"
        + (f"  {o.cpu}" if o.cpu else "")
        + (f"  ERROR {o.error}" if o.error else "")
    )


Results = list[tuple[int, Outcome, Outcome, Outcome, Outcome]]


def run(args: argparse.Namespace, sink: Results | None = None) -> int:
    """The whole comparison (see the module docstring); each repetition's (rep, ours 1 client,
    dovecot 1 client, ours C clients, dovecot C clients) is also appended to sink as it ends
    (bench/all.py reads them from there)."""
    work = Path(tempfile.mkdtemp(prefix="pop3-bench-"))
    work.chmod(0o755)  # Dovecot's processes (dovecot, 65534) must reach their folders
    ours = None
    dv_proc: subprocess.Popen | None = None
    results: Results = [] if sink is None else sink
    per = args.messages // args.clients
    multi = [(f"popbench{i:02d}", f"popbench{i:02d}pass", per) for i in range(1, args.clients + 1)]
    single = [(SINGLE[0], SINGLE[1], args.messages)]
    try:
        # ---- ours: the lab's 163 appliance, ports moved
        lab = rl.lab_appliances(work / "lab")
        ours = lab["163"]
        add_users(ours.ini, multi)
        say(
            f"filling Maildirs: {args.messages} msgs for {SINGLE[0]}, {per} for each of {multi[0][0]}.."
        )
        boxes = {u: make_messages(c, args.size, u) for u, _pw, c in single + multi}
        for u, msgs in boxes.items():
            fill(ours.maildir(f"{u}@{DOMAIN}"), msgs)
        # ---- Dovecot: same config as pop3_dovecot.sh, identical copies of the Maildirs
        dv_root = work / "dovecot"
        dv_port = free_port()
        conf = setup_dovecot(dv_root, dv_port, [(u, pw) for u, pw, _c in single + multi])
        copy_maildirs(ours, dv_root, list(boxes))
        rl.start(ours)
        port = ours.ports[110]
        s_ours = Server("ours", ours.ip, port, "{u}@" + DOMAIN, ours.proc.pid, ours.proc.pid)
        dv_proc = start_dovecot(dv_root, conf, dv_port)
        say(f"dovecot pid {dv_proc.pid}, POP3 127.0.0.1:{dv_port}")
        s_dv = Server("dovecot", "127.0.0.1", dv_port, "{u}", None, dv_proc.pid)
        print(
            f"ours: etc/163.ini (lab config: passwd-file, plaintext_networks 127.0.0.0/8) copied to"
            f" {ours.ini.parent}, ports moved: pop3 110 -> {ours.ip}:{port}"
            f" (smtp {ours.ports[25]}, dns {ours.ports[53]}, pop3s {ours.ports[995]});"
            f" pid {ours.proc.pid}",
            flush=True,
        )
        print(
            f"dovecot: {dovecot_version()}, private instance {conf} (as pop3_dovecot.sh:"
            f" passwd-file, ssl = no), POP3 127.0.0.1:{dv_port}; pid {dv_proc.pid}",
            flush=True,
        )
        print(
            f"load: plain POP3 USER/PASS from loopback (no TLS, both), RETR without DELE;"
            f" 1 client x {args.messages} msgs ({SINGLE[0]}) and {args.clients} clients x"
            f" {per} msgs ({multi[0][0]}..{multi[-1][0]}), {args.size} B each, identical"
            " files (Dovecot's a copy); one warm-up session per mailbox before rep 1;"
            f" 1-client load pinned: {args.pin} (server CPUs {PIN_CPUS[args.pin][0]},"
            f" client {PIN_CPUS[args.pin][1]}), {args.clients}-client load unpinned",
            flush=True,
        )
        for srv in (s_ours, s_dv):
            say(f"warm-up sessions on {srv.label}")
            warm(srv, single + multi)
        cpu = rl.CPU({"ours": ours.proc.pid})

        for rep in range(1, args.reps + 1):
            order = (s_ours, s_dv) if rep % 2 else (s_dv, s_ours)
            print(f"rep {rep}/{args.reps}: load average {loadavg()}", flush=True)
            got: dict[tuple[str, int], Outcome] = {}
            for srv in order:
                for bx in (single, multi):
                    say(f"rep {rep} {srv.label}: {len(bx)} client(s)")
                    o = one_load(
                        srv,
                        bx,
                        args.timeout,
                        cpu if srv is s_ours else None,
                        args.pin if bx is single else "none",
                    )
                    print(f"  rep {rep} load avg {o.load1}  {describe(o)}", flush=True)
                    got[(srv.label, len(bx))] = o
            results.append(
                (
                    rep,
                    got[("ours", 1)],
                    got[("dovecot", 1)],
                    got[("ours", len(multi))],
                    got[("dovecot", len(multi))],
                )
            )
    finally:
        stop_proc(dv_proc, "dovecot")
        if ours is not None:
            try:
                ours.stop()
            except Exception as e:
                say(f"stopping ours: {e}")
        rl.remove_work(work, args.keep)

    c = args.clients
    print()
    print(
        f"POP3 RETR, ours (lab 163 config, ports moved) vs {dovecot_version().split()[0]} Dovecot,"
        f" {args.messages} x {args.size} B, plain POP3 from loopback, {args.reps} reps,"
        f" 1-client load --pin {args.pin};"
        " msg/s = messages / (first RETR -> last RETR answered)"
    )
    head = (
        f"{'rep':>3} | {'load avg':>14} | {'ours 1 s':>8} | {'ours 1':>7} | {'dv 1 s':>7}"
        f" | {'dv 1':>7} | {f'ours {c} s':>9} | {f'ours {c}':>8} | {f'dv {c} s':>7}"
        f" | {f'dv {c}':>7}"
    )
    print(head)
    print("-" * len(head))
    cols: list[list[float]] = [[], [], [], []]
    for rep, *os_ in results:
        cells = []
        for i, o in enumerate(os_):
            cells.append((o.seconds, o.rate))
            if o.rate:
                cols[i].append(o.rate)
        (a, ra), (b, rb), (d, rd), (e, re_) = cells
        w = 8 if c < 10 else 9
        print(
            f"{rep:>3} | {os_[0].load1:>14} | {fmt(a, '.3f'):>8} | {fmt(ra):>7}"
            f" | {fmt(b, '.3f'):>7} | {fmt(rb):>7} | {fmt(d, '.3f'):>{w}} | {fmt(rd):>8}"
            f" | {fmt(e, '.3f'):>7} | {fmt(re_):>7}"
        )
    med = [statistics.median(x) if x else None for x in cols]
    r1 = med[0] / med[1] if med[0] and med[1] else None
    rc = med[2] / med[3] if med[2] and med[3] else None
    print(
        f"median msg/s: ours 1 client {fmt(med[0])}, dovecot 1 client {fmt(med[1])};"
        f" ours {c} clients {fmt(med[2])}, dovecot {c} clients {fmt(med[3])}"
    )
    for label, r in (("1 client", r1), (f"{c} clients", rc)):
        print(
            f"ratio ours/dovecot, {label}: {fmt(r, '.2f')}x  (bar >= {BAR:.1f}x: {verdict(r, BAR)})"
        )
    print(f"load average at end: {loadavg()}")
    complete = all(len(x) == args.reps for x in cols)
    return 0 if complete else 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (argv, default sys.argv[1:]), checked; exits with a usage error."""
    ap = rl.arg_parser(__doc__)
    ap.add_argument("--messages", type=int, default=2000, help="messages in all per load (2000)")
    ap.add_argument(
        "--clients", type=int, default=10, help="clients/mailboxes of the multi load (10)"
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    ap.add_argument("--size", type=int, default=1024, help="bytes per message (1024)")
    ap.add_argument("--timeout", type=float, default=120, help="deadline of each load, s (120)")
    ap.add_argument(
        "--pin",
        choices=sorted(PIN_CPUS),
        default="none",
        help="CPU placement of server and client in the 1-client load (none: the scheduler's;"
        " same: both on CPU 0; split: server 0, client 1). See the docstring.",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    if args.messages < 1 or args.clients < 1 or args.reps < 1 or args.size < 1:
        ap.error("--messages, --clients, --reps and --size must be >= 1")
    check_dovecot_args(ap, args, "dovecot-pop3d")
    return args


def check_dovecot_args(
    ap: argparse.ArgumentParser, args: argparse.Namespace, package: str, binary: Path | None = None
) -> None:
    """What pop3_load's and imap_load's command lines both need: --messages a multiple of
    --clients, root, Dovecot installed (and binary, where given; else apt-get install
    package); ap.error otherwise."""
    if args.messages % args.clients:
        ap.error("--messages must be a multiple of --clients")
    if os.geteuid() != 0:
        ap.error("run as root: the private Dovecot runs its users as uid 65534")
    if not shutil.which("dovecot") or (binary is not None and not binary.exists()):
        ap.error(f"dovecot missing (apt-get install dovecot-core {package})")


def main() -> int:
    args = parse_args()
    return rl.run_interruptible(lambda: run(args), "both servers stopped")


if __name__ == "__main__":
    sys.exit(main())
