"""Watched files: parsed once, then re-read when they change, at most one stat() per interval.

The sendmail maps and the passwd file are edited by hand while the appliance runs. Each is a
`WatchedFile`: `get()` returns the parsed value, first checking (at most once per `interval` of
the given clock) whether the file's (mtime_ns, size, inode) changed; a changed file is read and
parsed again. A file that fails to parse, or cannot be read, keeps the previous value and is
reported once per change (a warning naming the file and line), never on every lookup.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from twisted.logger import Logger

T = TypeVar("T")

Parser = Callable[[bytes, str], tuple[T, list[str]]]


def _cannot(stage: str, error: OSError) -> str:
    return f"cannot {stage}: {error.strerror or error}"


def utf8_parser(parse: Callable[[str, str], tuple[T, list[str]]]) -> Parser[T]:
    """A bytes parser from a text parser: input that is not UTF-8 is one problem line."""

    def parse_bytes(data: bytes, label: str) -> tuple[T, list[str]]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            return parse("", label)[0], [f"{label}:{line}: not valid UTF-8"]
        return parse(text, label)

    return parse_bytes


class WatchedFile(Generic[T]):
    """One file and its parsed value, re-read on change.

    parse(data, label) returns (value, problems); label is the path as problems name it.
    kept() describes what stays in force when a reload fails ("the previous content");
    explain(stage, error) words an OSError of stage "stat" or "read".
    on_change() runs after each successful reload (not after the first load).
    """

    log = Logger()

    def __init__(
        self,
        path: Path,
        parse: Parser[T],
        empty: T,
        *,
        clock: Callable[[], float],
        interval: float = 1.0,
        on_change: Callable[[], None] | None = None,
        kept: Callable[[], str] = lambda: "the previous content",
        explain: Callable[[str, OSError], str] = _cannot,
    ) -> None:
        self.path = Path(path)
        self.parse = parse
        self.value: T = empty
        self.clock = clock
        self.interval = interval
        self.on_change = on_change
        self.kept = kept
        self.explain = explain
        self.signature: tuple[int, int, int] | None = None
        self.checked_at: float | None = None
        self._unavailable: str | None = None  # the last unavailability reported

    def load(self) -> list[str]:
        """The first load: every problem as one line (the value stays empty if there are any)."""
        self.checked_at = self.clock()
        try:
            st = os.stat(self.path)
            data = self.path.read_bytes()
        except OSError as e:
            return [f"{self.path}: {_cannot('read', e)}"]
        self.signature = _signature(st)
        value, problems = self.parse(data, str(self.path))
        if not problems:
            self.value = value
        return problems

    def get(self) -> T:
        """The current value, after a reload check at most once per interval."""
        now = self.clock()
        if self.checked_at is None or now - self.checked_at >= self.interval:
            self.checked_at = now
            self.reload()
        return self.value

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or if force); True if a new value took effect."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            self._report_unavailable(self.explain("stat", e))
            return False
        # stat before read: a write racing with the read changes the signature seen next time
        signature = _signature(st)
        if signature == self.signature and not force:
            self._unavailable = None
            return False
        try:
            data = self.path.read_bytes()
        except OSError as e:
            self._report_unavailable(self.explain("read", e))
            return False
        self._unavailable = None
        # remembered even when broken, so a bad file is reported once, not on every lookup
        first = self.signature is None
        self.signature = signature
        value, problems = self.parse(data, str(self.path))
        if problems:
            kept = self.kept()
            for problem in problems:
                self.log.warn("{reason}; keeping {kept}", reason=problem, kept=kept)
            return False
        self.value = value
        if not first:
            self.log.info("{path}: reloaded", path=str(self.path))
        if self.on_change is not None:
            self.on_change()
        return True

    def _report_unavailable(self, reason: str) -> None:
        if reason == self._unavailable:
            return
        self._unavailable = reason
        self.log.warn(
            "{path}: {reason}; keeping {kept}", path=str(self.path), reason=reason, kept=self.kept()
        )


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)
