"""Run real `twistd -n mailappliance` processes on loopback with lab-shaped configs."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

TWISTD = str(Path(sys.executable).parent / "twistd")
LAB = {"163": "127.0.1.1", "sina": "127.0.1.4"}


@dataclass
class Appliance:
    name: str
    ip: str
    port: int
    ini: Path
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        """Block until a line matching pattern is printed (bounded); return that line."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"{self.name} exited; output:\n" + "".join(self.output))
            self.output.append(line)
            if rx.search(line):
                return line
        raise AssertionError(f"{self.name}: no line matching {pattern!r}:\n" + "".join(self.output))

    def start(self) -> Appliance:
        self.output = []
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "mailappliance", "--config", str(self.ini)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.ini.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.read_until(r"mailappliance \S+ ready")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def make_lab(tmp_path: Path, port: int | None = None) -> dict[str, Appliance]:
    """Copy etc/ to tmp_path and move both appliances' DNS to one free high port."""
    etc = tmp_path / "etc"
    shutil.copytree(REPO / "etc", etc)
    if port is None:
        port = next(
            p for p in iter(lambda: free_port("127.0.1.1"), None) if _free_on("127.0.1.4", p)
        )
    lab = {}
    for name, ip in LAB.items():
        ini = etc / f"{name}.ini"
        text = ini.read_text()
        text = re.sub(r"(127\.0\.1\.[14]):53\b", rf"\1:{port}", text)
        ini.write_text(text)
        lab[name] = Appliance(name, ip, port, ini)
    return lab


def _free_on(host: str, port: int) -> bool:
    import socket

    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both lab appliances running, DNS forwarding to each other, on one free port."""
    appliances = make_lab(tmp_path_factory.mktemp("lab"))
    try:
        for a in appliances.values():
            a.start()
        yield appliances
    finally:
        for a in appliances.values():
            a.stop()
