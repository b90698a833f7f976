#!/usr/bin/env python3
"""Dovecot's imaptest compliance suite against the appliance (`make compliance`).

    .venv/bin/python bench/imap_compliance.py [--keep] [--timeout 600] [imaptest args...]

Starts the mail.163.com lab appliance (etc/ copied to a temporary folder, ports moved to free
high ports on 127.0.1.1, as tests/integration/conftest.py's make_lab does), adds a throw-away
user imaptest@163.com (the tests create and delete imaptest* folders), and runs
../shared/peer/imaptest/imaptest.sh compliance against its plain IMAP port (LOGIN without TLS
is allowed from loopback by the lab's [auth] plaintext_networks). imaptest.sh builds imaptest
first if needed (Debian's dovecot-dev; it apt-installs what is missing, as root).

imaptest skips the test groups whose capabilities the server does not advertise. It prints a
line per failed command and a summary; this script prints the summary, then the base and
extension figures, and exits 0 when the bar is met: at most 5% of the base protocol's commands
failing and no failed group among the extensions we advertise; 1 otherwise. Progress (the
test groups as imaptest runs them) goes to stderr.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import relay_load as rl  # noqa: E402

IMAPTEST = REPO.parent / "shared" / "peer" / "imaptest" / "imaptest.sh"
USER, PASSWORD = "imaptest@163.com", "imaptestpass"
BASE_BAR = 0.05


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary(text: str) -> dict[str, int] | None:
    """imaptest's last lines: '71 test groups: 0 failed, 0 skipped due to missing
    capabilities' and 'base protocol: 0/457 individual commands failed' and 'extensions:
    0/330 individual commands failed'."""
    groups = re.search(r"(\d+) test groups: (\d+) failed, (\d+) skipped", text)
    base = re.search(r"base protocol: (\d+)/(\d+) individual commands failed", text)
    ext = re.search(r"extensions: (\d+)/(\d+) individual commands failed", text)
    if groups is None or base is None or ext is None:
        return None
    return {
        "groups": int(groups[1]),
        "groups_failed": int(groups[2]),
        "skipped": int(groups[3]),
        "base_failed": int(base[1]),
        "base": int(base[2]),
        "ext_failed": int(ext[1]),
        "ext": int(ext[2]),
    }


def run(args: argparse.Namespace, extra: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="imaptest-"))
    lab = rl.lab_appliances(work / "lab")
    ours = lab["163"]
    rl.add_user(ours.ini, USER, PASSWORD)
    say("building imaptest if needed ...")
    subprocess.run([str(IMAPTEST), "build"], check=True, timeout=1800)
    rl.start(ours)
    try:
        port = ours.ports[143]
        say(f"imaptest compliance against {ours.ip}:{port} as {USER}")
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(IMAPTEST), "compliance", ours.ip, str(port), USER, PASSWORD, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            if time.monotonic() - started > args.timeout:
                proc.kill()
                say(f"imaptest stopped after {args.timeout} s")
                break
        proc.wait(timeout=30)
        text = "".join(lines)
    finally:
        rl.stop_all({"163": ours})
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            say(f"kept {work}")
    figures = summary(text)
    if figures is None:
        say("no imaptest summary found")
        return 1
    base_ratio = figures["base_failed"] / max(1, figures["base"])
    print(
        f"\nimaptest: {figures['groups']} groups, {figures['groups_failed']} failed, "
        f"{figures['skipped']} skipped (capabilities not advertised); base protocol "
        f"{figures['base_failed']}/{figures['base']} commands failed ({base_ratio:.1%}, bar "
        f"{BASE_BAR:.0%}); extensions {figures['ext_failed']}/{figures['ext']} failed"
    )
    failed_ext = figures["ext_failed"] > 0
    return 0 if base_ratio <= BASE_BAR and not failed_ext else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--timeout", type=float, default=600, help="stop imaptest after this")
    args, extra = parser.parse_known_args()
    return rl.run_interruptible(lambda: run(args, extra), "imaptest stopped")


if __name__ == "__main__":
    raise SystemExit(main())
