#!/usr/bin/env python3
"""How long an IMAP SELECT of a big folder takes, the first time and after.

    .venv/bin/python bench/imap_open.py [--messages 100000] [--reps 3] [--keep]

Starts the mail.163.com lab appliance (etc/ copied to a temporary folder, ports moved, as
tests/integration/conftest.py's make_lab does), writes N small messages straight into
user1@163.com's INBOX (tmp/ then rename into new/, Dovecot-style names), then times, over
plain IMAP from loopback (the lab allows LOGIN there): the first SELECT (the store lists the
folder and numbers every message in its dovecot-uidlist), then --reps more SELECTs in new
sessions (answered from the store's cached scan while the folder is unchanged), then one
after a delivery (one new message: the folder is listed again, the uid list keeps every
UID). Prints each figure in seconds and the load average. Progress to stderr.
"""

from __future__ import annotations

import argparse
import imaplib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import pop3_load as pl  # noqa: E402
import relay_load as rl  # noqa: E402

USER, PASSWORD = "user1@163.com", "user1pass"


def select_time(host: str, port: int) -> tuple[float, int]:
    c = imaplib.IMAP4(host, port, timeout=600)
    try:
        c.login(USER, PASSWORD)
        t0 = time.perf_counter()
        typ, data = c.select("INBOX")
        elapsed = time.perf_counter() - t0
        assert typ == "OK", data
        return elapsed, int(data[0])
    finally:
        c.logout()


def run(args: argparse.Namespace) -> int:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="imap-open-"))
    lab = rl.lab_appliances(work / "lab")
    ours = lab["163"]
    try:
        maildir = ours.state / "mail" / "163.com" / "user1" / "Maildir"
        rl.say(f"writing {args.messages} messages into {maildir} ...")
        batch = 10_000
        for start in range(0, args.messages, batch):
            n = min(batch, args.messages - start)
            msgs = pl.make_messages(n, 1024, f"open{start}")
            pl.fill(maildir, [(f"{name[: -len(',S=1024')]}{start},S=1024", d) for name, d in msgs])
            rl.say(f"  {start + n}/{args.messages}")
        rl.start(ours)
        port = ours.ports[143]
        print(f"load average: {rl.loadavg()}")
        first, count = select_time(ours.ip, port)
        print(f"first SELECT of {count} messages: {first:.3f} s")
        for i in range(args.reps):
            t, _ = select_time(ours.ip, port)
            print(f"SELECT {i + 2} (unchanged folder): {t:.4f} s")
        time.sleep(2.1)  # past the store's FRESH window, so the cached scan is trusted
        for _ in range(args.reps):
            t, _ = select_time(ours.ip, port)
            print(f"SELECT after {2.1:g} s (unchanged folder): {t:.4f} s")
        pl.fill(maildir, pl.make_messages(1, 1024, "late"))
        t, count = select_time(ours.ip, port)
        print(f"SELECT after one delivery ({count} messages): {t:.3f} s")
        print(f"load average: {rl.loadavg()}")
    finally:
        rl.stop_all({"163": ours})
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    return rl.run_interruptible(lambda: run(args), "stopped")


if __name__ == "__main__":
    raise SystemExit(main())
