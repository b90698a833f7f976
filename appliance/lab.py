"""`make lab`: the tutorial's two hosts at once, mail.163.com and mail.sina.com, in the foreground.

Starts `twistd -n mailappliance` for each lab configuration, prints their output line by line
prefixed `163|` and `sina|`, and stops both on Ctrl-C (SIGTERM, then SIGKILL after a grace
period). One that stops alone (the README stops sina to show a deferred message) leaves the
other running. The 163 appliance starts first so that its CA exists before
sina's relay first reads it; each one trusts the other's ca.crt (see etc/*.ini [relay]).
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

LAB = (("163", "etc/163.ini"), ("sina", "etc/sina.ini"))
GRACE = 15.0  # seconds a stopping appliance gets before SIGKILL


def _twistd() -> str:
    return str(Path(sys.executable).parent / "twistd")


def run(configs: list[tuple[str, Path]], out: object = sys.stdout) -> int:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    interrupted_by_user = False
    width = max(len(name) for name, _ in configs)
    selector = selectors.DefaultSelector()

    def emit(name: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\n")
        print(f"{name + '|':<{width + 1}} {text}", file=out, flush=True)  # type: ignore[call-overload]

    def stop_all() -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C, and a kill of this process, stop both (even when started with SIGINT ignored)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        for name, ini in configs:
            proc = subprocess.Popen(
                [_twistd(), "-n", "mailappliance", "--config", str(ini)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
            procs[name] = proc
            assert proc.stdout is not None
            selector.register(proc.stdout, selectors.EVENT_READ, name)
            # wait for the first one's "ready" (or its exit) before starting the next
            while proc.poll() is None:
                line = proc.stdout.readline()
                if not line:
                    break
                emit(name, line)
                if b" ready: " in line:
                    break
        while selector.get_map():
            for key, _ in selector.select(timeout=1.0):
                stream = key.fileobj
                line = stream.readline()  # type: ignore[union-attr]
                if line:
                    emit(key.data, line)
                else:
                    selector.unregister(stream)
                    emit(key.data, b"(exited)")
    except KeyboardInterrupt:
        interrupted_by_user = True
        print("stopping both appliances...", file=out, flush=True)  # type: ignore[call-overload]
        stop_all()
        deadline = time.monotonic() + GRACE
        for name, p in procs.items():
            try:
                assert p.stdout is not None
                for line in p.stdout:
                    emit(name, line)
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                p.kill()
    finally:
        stop_all()
        for p in procs.values():
            try:
                p.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                p.kill()
    if interrupted_by_user:
        return 0  # stopped as asked
    return max(abs(p.returncode or 0) for p in procs.values()) if procs else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.lab",
        description="Run the tutorial's two appliances (163 on 127.0.1.1, sina on 127.0.1.4) "
        "in the foreground, their output prefixed 163| and sina|; Ctrl-C stops both.",
    )
    parser.add_argument(
        "--repo", default=".", help="folder holding etc/163.ini and etc/sina.ini (default: .)"
    )
    args = parser.parse_args(argv)
    base = Path(args.repo)
    configs = [(name, (base / ini).resolve()) for name, ini in LAB]
    for _, ini in configs:
        if not ini.is_file():
            parser.error(f"no such configuration: {ini}")
    return run(configs)


if __name__ == "__main__":
    sys.exit(main())
