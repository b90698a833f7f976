"""Watched files: re-read on change at most once per interval, bad content keeps the old."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock

from appliance.watched import WatchedFile, utf8_parser


def lines_parser(text: str, label: str) -> tuple[list[str], list[str]]:
    values = text.split()
    problems = [f"{label}:1: bad word {w!r}" for w in values if w == "bad"]
    return values, problems


def rewrite(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode: the change is seen even within one mtime tick


def test_watched_reload_after_interval_only(tmp_path: Path) -> None:
    """A change is picked up at the first get() after the interval, not before."""
    path = tmp_path / "map"
    path.write_text("a b")
    clock = Clock()
    watched = WatchedFile(path, utf8_parser(lines_parser), [], clock=clock.seconds)
    assert watched.load() == []
    rewrite(path, "c")
    assert watched.get() == ["a", "b"]
    clock.advance(1)
    assert watched.get() == ["c"]


def test_watched_bad_reload_keeps_value_and_warns_once(tmp_path: Path, log_lines) -> None:
    """A file that stops parsing keeps the previous value; the problem is logged once."""
    path = tmp_path / "map"
    path.write_text("a")
    clock = Clock()
    changes: list[int] = []
    watched = WatchedFile(
        path,
        utf8_parser(lines_parser),
        [],
        clock=clock.seconds,
        on_change=lambda: changes.append(1),
    )
    watched.load()
    rewrite(path, "bad")
    for _ in range(3):
        clock.advance(1)
        assert watched.get() == ["a"]
    assert log_lines.count(f"{path}:1: bad word 'bad'; keeping the previous content") == 1
    assert changes == []
    rewrite(path, "good")
    clock.advance(1)
    assert watched.get() == ["good"] and changes == [1]


def test_watched_not_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are one problem naming the line."""
    path = tmp_path / "map"
    path.write_bytes(b"ok\n\xff\n")
    watched = WatchedFile(path, utf8_parser(lines_parser), [], clock=Clock().seconds)
    assert watched.load() == [f"{path}:2: not valid UTF-8"]
