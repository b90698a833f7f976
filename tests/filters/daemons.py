"""Real clamd and spamd for tests: Debian's daemons, in the foreground, on loopback, with
private files in a temporary folder (../shared/DESIGN.md section 5).

    def test_x(clamd: Daemon, spamd: Daemon) -> None:  # (tests/conftest.py loads them)
        clamd.port, spamd.port
        clamd.stop(); clamd.start()     # a daemon that is down, then back

clamd gets a local signature database of its own (no download is possible here): the EICAR
test file by its MD5 (a whole file, e.g. an attachment) and by its bytes (anywhere in a
decoded part). spamd runs SpamAssassin's packaged rules with --local (no DNS or network
tests: nothing may leave loopback); GTUBE scores 1000 and more. Both
start once per test run (spamd takes a second or two to load its rules). Tests that use
them are skipped when the packages are missing (`make test` installs them).
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


class Daemon:
    """One daemon process: start() waits until it accepts connections; stop() ends it."""

    def __init__(self, name: str, folder: Path, argv: list[str], port: int) -> None:
        self.name = name
        self.folder = folder
        self.argv = argv
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{name}.out"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT:g} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # spamd's children outlive a TERM'd parent for a moment: wait for the port to close
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    time.sleep(0.1)
            except OSError:
                return


def _clamd(folder: Path) -> Daemon:
    exe = _tool("clamd")
    if exe is None:
        pytest.skip("clamd missing (apt-get install clamav-daemon)")
    db = folder / "db"
    db.mkdir()
    md5 = hashlib.md5(EICAR).hexdigest()
    (db / "local.hdb").write_text(f"{md5}:{len(EICAR)}:Eicar-Test-Signature\n")
    (db / "local.ndb").write_text(f"Eicar-Test-Signature-Text:0:*:{EICAR.hex()}\n")
    port = free_port(udp_too=False)
    conf = folder / "clamd.conf"
    conf.write_text(
        f"DatabaseDirectory {db}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nForeground yes\n"
        f"User root\nLogFile {folder / 'clamd.log'}\nStreamMaxLength 40M\n"
    )
    return Daemon("clamd", folder, [exe, "-c", str(conf)], port)


def _spamd(folder: Path) -> Daemon:
    exe = _tool("spamd")
    if exe is None:
        pytest.skip("spamd missing (apt-get install spamd spamassassin)")
    port = free_port(udp_too=False)
    argv = [
        exe,
        f"--listen=127.0.0.1:{port}",
        "--allowed-ips=127.0.0.1",
        "--max-children=2",
        f"--pidfile={folder / 'spamd.pid'}",
        "--syslog=stderr",
        "-u",
        "nobody",
        "--nouser-config",
        "--local",  # no network tests: spamd must not ask the system's (non-loopback) DNS
    ]
    return Daemon("spamd", folder, argv, port)


@pytest.fixture(scope="session")
def clamd() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="clamd-") as tmp:
        d = _clamd(Path(tmp))
        d.start()
        try:
            yield d
        finally:
            d.stop()


@pytest.fixture(scope="session")
def spamd() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="spamd-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        d = _spamd(folder)
        d.start()
        try:
            yield d
        finally:
            d.stop()
