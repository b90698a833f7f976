"""Shared fixtures: fail on logged failures, free loopback ports, lab-shaped configs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher

REPO = Path(__file__).resolve().parent.parent

# the real clamd and spamd (session-scoped, started by the first test that asks)
pytest_plugins = ["tests.filters.daemons"]


@pytest.fixture(autouse=True)
def logged_errors() -> Iterator[list[dict]]:
    """Fail any test that logs an unhandled failure; a test that expects one clears the list."""
    errors: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    globalLogPublisher.removeObserver(observer)
    if errors:
        from twisted.logger import formatEvent

        text = "\n".join(
            formatEvent(e)
            + "\n"
            + (e["log_failure"].getTraceback() if e.get("log_failure") else "")
            for e in errors
        )
        pytest.fail(f"test logged {len(errors)} unhandled failure(s):\n{text}")


def free_port(host: str = "127.0.0.1", udp_too: bool = True) -> int:
    """A port free for TCP (and UDP) on host, for a server the test starts next."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


@pytest.fixture
def port_factory():
    return free_port


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every twisted log event emitted during the test, formatted."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event: dict) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)
