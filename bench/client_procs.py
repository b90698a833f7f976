"""A load of client processes for the POP3 and IMAP benchmarks (bench/pop3_load.py,
bench/imap_load.py): each client a forked process that logs in (one at a time), waits for the
common start, does its load and reports one row; the parent starts them, prints a progress
line a second and collects what they measured."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import relay_load as rl  # CPU sampling


def fmt_cpu(c: dict[str, float]) -> str:
    return f"ours cpu {c['ours']:3.0f}% (main thread {c['ours main']:3.0f}%)"


@dataclass
class ClientSync:
    """What the client processes of one load share with the parent (run_clients): one login
    at a time, "logged in" (ready), "start" (go), each client's count so far (progress) and
    the rows (idx, done, t0, t1, error) they put into results; timeout bounds every wait."""

    login_lock: Any
    ready: Any
    go: Any
    progress: Any
    results: Any
    timeout: float

    def start(self) -> None:
        """Tell the parent this client is logged in, then wait for the start signal."""
        self.ready.release()
        if not self.go.wait(self.timeout):
            raise TimeoutError("no start signal")


def run_client(
    idx: int,
    sync: ClientSync,
    session: Callable[[], tuple[int, float, float]],
    cpus: set[int] | None = None,
    error_chars: int = 200,
) -> None:
    """The body of one client process: session() logs in (under sync.login_lock), calls
    sync.start() and does its load, returning (done, t0, t1); its row, or its error cut to
    error_chars, goes to sync.results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (TERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        done, t0, t1 = session()
        sync.results.put((idx, done, t0, t1, ""))
    except Exception as e:  # reported by the parent
        sync.results.put((idx, 0, 0.0, 0.0, f"{type(e).__name__}: {e}"[:error_chars]))
        sync.ready.release()


@dataclass
class ClientsRun:
    """What run_clients measured: units done, seconds (first start -> last end), our CPU."""

    done: int = 0
    seconds: float | None = None
    cpu: str = ""
    error: str = ""


def run_clients(
    target: Callable[..., None],
    clients: list[tuple],
    expected: int,
    timeout: float,
    cpu: rl.CPU | None,
    label: str,
    unit: str,
    verb: str,
    what: str | None = None,
    after_login: Callable[[], None] | None = None,
) -> ClientsRun:
    """One load of client processes (fork): target(idx, sync, *clients[idx]) each, which
    run_client runs; all logged in (60 s at most), after_login(), then go, a progress line a
    second to stderr ("<what, default label> N client(s) ... <unit> done/expected"), until
    every client has answered or timeout; the clients are stopped (TERM at once after an error
    or Ctrl-C). label names the server in errors, verb the units in "<verb> X, expected Y"."""
    ctx = mp.get_context("fork")
    n = len(clients)
    out = ClientsRun()
    sync = ClientSync(
        ctx.Lock(),
        ctx.Semaphore(0),
        ctx.Event(),
        ctx.Array("i", n, lock=False),
        ctx.Queue(),
        timeout,
    )
    procs = [
        ctx.Process(target=target, args=(i, sync, *args), daemon=True)
        for i, args in enumerate(clients)
    ]
    rows: dict[int, tuple] = {}
    finished = False
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        for _ in procs:
            if not sync.ready.acquire(timeout=max(deadline - time.monotonic(), 0.01)):
                raise SystemExit(f"{label}: clients not logged in within 60 s")
        if after_login is not None:
            after_login()
        start = cpu.sample() if cpu else None
        if cpu:
            cpu.mark()
        t_go = time.monotonic()
        sync.go.set()
        next_tick = t_go + 1.0
        deadline = t_go + timeout
        while len(rows) < n:
            try:
                r = sync.results.get(timeout=0.05)
                rows[r[0]] = r
            except Exception:  # queue.Empty
                pass
            now = time.monotonic()
            if now >= deadline:
                out.error = f"load deadline ({timeout:g} s) reached"
                break
            if now >= next_tick:
                next_tick += 1.0
                extra = f"  {fmt_cpu(cpu.since())}" if cpu else ""
                print(
                    f"    {what or label} {n} client(s) {now - t_go:5.1f}s"
                    f" {unit} {sum(sync.progress):>6}/{expected}{extra}",
                    file=sys.stderr,
                    flush=True,
                )
        if cpu and start:
            out.cpu = fmt_cpu(cpu.since(start))
        finished = not out.error
    finally:
        for p in procs:  # after an error or Ctrl-C, no waiting: TERM at once
            p.join(timeout=5 if finished else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    errs = [r[4] for r in rows.values() if r[4]]
    if errs and not out.error:
        out.error = f"{len(errs)} client(s) failed: {errs[0]}"
    good = [r for r in rows.values() if not r[4]]
    out.done = sum(r[1] for r in good)
    if good:
        out.seconds = max(r[3] for r in good) - min(r[2] for r in good)
    if out.done != expected and not out.error:
        out.error = f"{verb} {out.done}, expected {expected}"
    return out
