"""Fixtures of the policy tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import formatEvent, globalLogPublisher


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """Text of every warning logged during the test."""
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)
