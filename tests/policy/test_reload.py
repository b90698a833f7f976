"""Reloading: edited, replaced, broken and deleted policy files."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock

from appliance.interfaces import Verdict
from tests.policy.helpers import (
    OUTSIDE,
    build,
    local,
    rcpt,
    rewrite,
)

# ---------------------------------------------------------------------- reload


def test_reload_changed_access_applied_after_a_second(tmp_path: Path) -> None:
    """An edited access file takes effect at the first lookup a second later, not before."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    assert policy.check_connect(OUTSIDE, None) == Verdict()
    rewrite(tmp_path / "access", f"{OUTSIDE} REJECT\n127.0.0.1 RELAY\n")
    clock.advance(0.5)
    assert policy.check_connect(OUTSIDE, None) == Verdict()
    clock.advance(0.5)
    assert policy.check_connect(OUTSIDE, None).code == 550


def test_reload_replaced_file_new_inode_applied(tmp_path: Path) -> None:
    """A file replaced by rename (new inode, same size and mtime) is re-read."""
    clock = Clock()
    policy = build(tmp_path, aliases="postmaster: user1\n", clock=clock.seconds)
    path = tmp_path / "aliases"
    st = path.stat()
    new = tmp_path / "aliases.new"
    new.write_text("postmaster: user2\n")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)
    clock.advance(1)
    assert rcpt(policy, "postmaster@163.com") == local("user2@163.com")


def test_reload_virtusertable_and_local_host_names_applied(tmp_path: Path) -> None:
    """New local domains and virtual users are picked up."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    rewrite(tmp_path / "local-host-names", "163.com\nsina-alias.com\nnew.example\n")
    rewrite(tmp_path / "virtusertable", "hello@new.example user2@163.com\n")
    clock.advance(1)
    assert policy.is_local_domain("new.example")
    assert rcpt(policy, "hello@new.example") == local("user2@163.com")


def test_reload_broken_file_keeps_old_content_logged(tmp_path: Path, warnings: list[str]) -> None:
    """A reload that fails to parse keeps the previous rules and logs each problem once."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    path = tmp_path / "aliases"
    rewrite(path, "postmaster: root\nroot: |/bin/cat\nbad\n")
    clock.advance(1)
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    clock.advance(1)
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    assert warnings == [
        f"{path}:2: program and file targets are not supported: '|/bin/cat'; keeping the previous content",
        f"{path}:3: expected 'name: target, ...', got 'bad'; keeping the previous content",
    ]


def test_reload_deleted_file_keeps_old_content_logged_once(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A file that disappears keeps its rules; the warning is logged once."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    (tmp_path / "access").unlink()
    for _ in range(3):
        clock.advance(1)
        assert policy.check_connect("127.0.0.1", None) == Verdict(relay=True)
    assert warnings == [
        f"{tmp_path / 'access'}: cannot stat: No such file or directory; keeping the previous content"
    ]
