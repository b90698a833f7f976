"""Run real `twistd -n mailappliance` processes on loopback with lab-shaped configs."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    ports: dict[int, int] = field(default_factory=dict)  # standard port -> test port
    state: Path | None = None  # the appliance's state_dir
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.state / "mail" / domain / local / "Maildir"

    def messages(self, address: str) -> list[bytes]:
        new = self.maildir(address) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        """Block until a line matching pattern is printed (bounded); return that line.

        Lines come from a thread that drains the pipe all the time (a full pipe would stall
        the appliance, and select() on a buffered pipe can miss lines already read)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"{self.name} exited; output:\n" + "".join(self.output))
            if rx.search(line):
                return line
        raise AssertionError(f"{self.name}: no line matching {pattern!r}:\n" + "".join(self.output))

    def _drain(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            lines.put(line)
        lines.put(None)

    def start(self, timeout: float = 60) -> Appliance:
        """Run `twistd -n mailappliance` for this config; wait (bounded) for its ready line.

        A thread drains the output into self.output for the whole run. A start that fails
        says who holds the appliance's ports."""
        self.output = []
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "mailappliance", "--config", str(self.ini)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.ini.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(
            target=self._drain,
            args=(self.proc, self._lines),
            name=f"output-{self.name}",
            daemon=True,
        ).start()
        try:
            self.ready_line = self.read_until(r"mailappliance \S+ ready", timeout)
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\n{self._port_holders()}") from None
        return self

    def _port_holders(self) -> str:
        ports = sorted(set(self.ports.values()))
        try:
            ss = subprocess.run(["ss", "-tuanp"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
        held = [line for line in ss.splitlines() if any(f"{self.ip}:{p} " in line for p in ports)]
        return f"sockets on {self.ip} ports {ports}:\n" + "\n".join(held)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


STANDARD_PORTS = (53, 25, 465, 587, 110, 995, 143, 993, 8443, 443, 80)


def make_lab(tmp_path: Path) -> dict[str, Appliance]:
    """Copy etc/ to tmp_path and move both appliances' ports to free high ports.

    Each standard port (STANDARD_PORTS) maps to one free port used on both lab addresses.
    """
    etc = tmp_path / "etc"
    shutil.copytree(REPO / "etc", etc)
    ports: dict[int, int] = {}
    for std in STANDARD_PORTS:
        while True:
            candidate = free_port("127.0.1.1")
            if candidate not in ports.values() and _free_on("127.0.1.4", candidate):
                ports[std] = candidate
                break
    lab = {}
    for name, ip in LAB.items():
        ini = etc / f"{name}.ini"
        text = ini.read_text()
        for std, port in ports.items():
            text = re.sub(rf"(127\.0\.1\.[14]):{std}\b", rf"\g<1>:{port}", text)
        # the relay reaches the other appliance's SMTP on its test port
        text = text.replace("[relay]\n", f"[relay]\nport = {ports[25]}\n", 1)
        ini.write_text(text)
        lab[name] = Appliance(name, ip, ports[53], ini, ports=ports, state=tmp_path / "var" / name)
    return lab


def set_keys(ini: Path, section: str, **values: object) -> None:
    """Set keys of one section of an INI file (the section is made if missing); a value of
    None removes the key. Comments are not kept."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.read(ini)
    if not parser.has_section(section):
        parser.add_section(section)
    for key, value in values.items():
        if value is None:
            parser.remove_option(section, key)
        else:
            parser.set(section, key, str(value))
    with ini.open("w") as f:
        parser.write(f)


def _free_on(host: str, port: int) -> bool:
    import socket

    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


@contextmanager
def running(appliances: dict[str, Appliance]) -> Iterator[dict[str, Appliance]]:
    """Start every appliance; stop them all however the block ends."""
    try:
        for a in appliances.values():
            a.start()
        yield appliances
    finally:
        for a in appliances.values():
            a.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both lab appliances running, DNS forwarding to each other, on one free port."""
    with running(make_lab(tmp_path_factory.mktemp("lab"))) as appliances:
        yield appliances
