"""aliases: its syntax, expansion, fan-out, loops and the depth limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.interfaces import Mailbox, Resolution
from appliance.policy.expansion import MAX_ALIAS_DEPTH
from tests.policy.helpers import (
    build,
    local,
    rcpt,
    refused,
)

# ---------------------------------------------------------------------- recipients: aliases


def test_resolve_recipient_alias_postmaster_root_chain(tmp_path: Path) -> None:
    """'postmaster: root' and 'root: user1' deliver postmaster mail to user1."""
    policy = build(tmp_path)
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    assert rcpt(policy, "abuse@163.com") == local("user1@163.com")


def test_resolve_recipient_alias_applies_in_every_local_domain(tmp_path: Path) -> None:
    """Alias names are local parts in every local domain; targets stay in that domain."""
    policy = build(
        tmp_path,
        virtusertable=None,
        local_domains=["sina.com"],
        users={"user1@163.com", "user1@sina.com"},
    )
    assert rcpt(policy, "postmaster@sina.com") == local("user1@sina.com")


def test_resolve_recipient_alias_fan_out_deduplicated(tmp_path: Path) -> None:
    """An alias with several targets gives each mailbox once (continuation lines included)."""
    policy = build(tmp_path)
    assert rcpt(policy, "staff@163.com") == local("user1@163.com", "user2@163.com")


def test_resolve_recipient_alias_self_reference_keeps_copy(tmp_path: Path) -> None:
    """'user1: user1, remote' keeps a local copy and forwards one."""
    policy = build(tmp_path, aliases="user1: user1, me@other.example\n")
    assert rcpt(policy, "user1@163.com") == Resolution(
        mailboxes=(Mailbox("163.com", "user1"),), remote=True, forward_to=("me@other.example",)
    )


def test_resolve_recipient_alias_backslash_name_not_aliased(tmp_path: Path) -> None:
    """'\\user1' delivers to the mailbox without looking user1 up as an alias again."""
    policy = build(tmp_path, aliases="user1: \\user1, user2\n")
    assert rcpt(policy, "user1@163.com") == local("user1@163.com", "user2@163.com")


def test_resolve_recipient_alias_unknown_target_skipped(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A fan-out with an unknown user still delivers to the others and logs the unknown one."""
    policy = build(tmp_path, aliases="team: user1, ghost\n")
    assert rcpt(policy, "team@163.com") == local("user1@163.com")
    assert warnings == ["team@163.com: skipped unknown users ghost@163.com and 0 failed targets"]


def test_resolve_recipient_alias_all_unknown_rejected(tmp_path: Path) -> None:
    """An alias with no deliverable target is refused as an unknown user."""
    policy = build(tmp_path, aliases="team: ghost, phantom\n")
    assert rcpt(policy, "team@163.com") == refused(
        550, "5.1.1 <team@163.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_alias_depth_capped(tmp_path: Path) -> None:
    """A chain of 10 aliases resolves; 11 levels are refused with 5.4.6."""
    chain = [f"a{i}: a{i + 1}" for i in range(MAX_ALIAS_DEPTH - 1)] + [
        f"a{MAX_ALIAS_DEPTH - 1}: user1"
    ]
    policy = build(tmp_path, aliases="\n".join(chain) + "\n")
    assert rcpt(policy, "a0@163.com") == local("user1@163.com")
    deeper = build(tmp_path, aliases="x: a0\n" + "\n".join(chain) + "\n")
    assert rcpt(deeper, "x@163.com") == refused(
        550, "5.4.6 <x@163.com>: Recipient address rejected: Mail forwarding loop"
    )


def test_resolve_recipient_alias_through_virtual_loop_refused(tmp_path: Path) -> None:
    """A loop through an alias and virtusertable is caught at run time."""
    policy = build(tmp_path, virtusertable="b@163.com a@sina-alias.com\n", aliases="a: b@163.com\n")
    result = rcpt(policy, "a@163.com")
    assert result.verdict.text.startswith("5.4.6 <a@163.com>")


def test_aliases_program_target_config_error(tmp_path: Path) -> None:
    """A '|program' target is refused naming file and line."""
    path = tmp_path / "aliases"
    text = "postmaster: root\nroot: user1\nlist: user1, |/usr/bin/procmail\n"
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases=text)
    assert e.value.problems == [
        f"{path}:3: program and file targets are not supported: '|/usr/bin/procmail'"
    ]


def test_aliases_file_and_include_targets_config_error(tmp_path: Path) -> None:
    """File, quoted program and :include: targets are refused, each on its own line."""
    path = tmp_path / "aliases"
    text = """\
        log: /var/log/mail.copy
        filter: user1,
            "|/usr/bin/spamc -e /usr/sbin/sendmail, -oi"
        team: :include:/etc/mail/team
    """
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases=text)
    assert e.value.problems == [
        f"{path}:1: program and file targets are not supported: '/var/log/mail.copy'",
        f"{path}:3: program and file targets are not supported:"
        " '|/usr/bin/spamc -e /usr/sbin/sendmail, -oi'",
        f"{path}:4: :include: targets are not supported: ':include:/etc/mail/team'",
    ]


def test_aliases_bad_entries_every_problem_reported(tmp_path: Path) -> None:
    """Every bad aliases entry is reported with file and line."""
    path = tmp_path / "aliases"
    text = (
        "  orphan\nuser@163.com: user1\nempty:\nroot: user1\nroot: user2\nnocolon user1\nx: a b\n"
    )
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases=text)
    assert e.value.problems == [
        f"{path}:1: continuation line without an alias before it",
        f"{path}:2: alias names are local parts, not addresses: 'user@163.com'"
        " (use virtusertable for addresses)",
        f"{path}:3: alias 'empty' has no targets",
        f"{path}:5: duplicate alias 'root' (first on line 4)",
        f"{path}:6: expected 'name: target, ...', got 'nocolon user1'",
        f"{path}:7: expected targets separated by commas, got 'a b'",
    ]


def test_aliases_loop_config_error(tmp_path: Path) -> None:
    """Aliases that expand into each other are refused at load."""
    path = tmp_path / "aliases"
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases="a: b\nb: c, user1\nc: a\nd: d, user2\n")
    assert e.value.problems == [f"{path}:1: alias loop: a -> b -> c -> a"]
