"""virtusertable: its syntax and where it sends recipients."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.interfaces import Resolution
from tests.policy.helpers import (
    build,
    local,
    rcpt,
    refused,
)

# ---------------------------------------------------------------------- recipients: virtusertable


def test_resolve_recipient_virtual_to_local_name_mailbox(tmp_path: Path) -> None:
    """'admin@163.com user1' delivers to user1's mailbox."""
    policy = build(tmp_path)
    assert rcpt(policy, "admin@163.com") == local("user1@163.com")


def test_resolve_recipient_virtual_to_local_address_mailbox(tmp_path: Path) -> None:
    """'info@163.com user2@163.com' delivers to user2's mailbox."""
    policy = build(tmp_path)
    assert rcpt(policy, "INFO@163.com") == local("user2@163.com")


def test_resolve_recipient_virtual_domain_of_resolved_address_used(tmp_path: Path) -> None:
    """A target in another local domain gives a mailbox in that domain."""
    policy = build(
        tmp_path,
        virtusertable="sales@163.com user3@sina.com\n",
        local_domains=["sina.com"],
        users={"user3@sina.com"},
    )
    assert rcpt(policy, "sales@163.com") == local("user3@sina.com")


def test_resolve_recipient_catch_all_percent1_substituted(tmp_path: Path) -> None:
    """'@sina-alias.com %1@163.com' maps every local part onto 163.com."""
    policy = build(tmp_path)
    assert rcpt(policy, "User2@sina-alias.com") == local("user2@163.com")
    assert rcpt(policy, "ghost@sina-alias.com") == refused(
        550, "5.1.1 <ghost@sina-alias.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_catch_all_identity_entry_exempts_user(tmp_path: Path) -> None:
    """An entry mapping an address to itself keeps it out of the catch-all."""
    table = "user1@163.com user1@163.com\n@163.com user2\n"
    policy = build(tmp_path, virtusertable=table)
    assert rcpt(policy, "user1@163.com") == local("user1@163.com")
    assert rcpt(policy, "anything@163.com") == local("user2@163.com")


def test_resolve_recipient_virtual_remote_target_forwarded(tmp_path: Path) -> None:
    """A remote target is forwarded even for an unauthenticated client: it is our own map."""
    policy = build(tmp_path)
    assert rcpt(policy, "friend@163.com") == Resolution(
        remote=True, forward_to=("Friend@other.example",)
    )


def test_resolve_recipient_virtual_error_nouser_exact_reply(tmp_path: Path) -> None:
    """'error:nouser' refuses with 550 5.1.1 User unknown."""
    policy = build(tmp_path)
    assert rcpt(policy, "gone@163.com") == refused(
        550, "5.1.1 <gone@163.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_virtual_error_full_form_exact_reply(tmp_path: Path) -> None:
    """'error:5.1.1:550 text' refuses with that code and text."""
    policy = build(tmp_path)
    assert rcpt(policy, "old@163.com") == refused(550, "5.1.1 <old@163.com>: User has moved")


def test_resolve_recipient_virtual_loop_refused(tmp_path: Path, warnings: list[str]) -> None:
    """Virtual users pointing at each other are a loop: 550 5.4.6, logged."""
    policy = build(tmp_path, virtusertable="a@163.com b@163.com\nb@163.com a@163.com\n")
    assert rcpt(policy, "a@163.com") == refused(
        550, "5.4.6 <a@163.com>: Recipient address rejected: Mail forwarding loop"
    )
    assert warnings == [
        "a@163.com: mail forwarding loop or more than 10 levels:"
        " virtual a@163.com -> virtual b@163.com -> virtual a@163.com"
    ]


def test_virtusertable_bad_entries_every_problem_reported(tmp_path: Path) -> None:
    """Every bad virtusertable line is reported with file and line."""
    path = tmp_path / "virtusertable"
    text = """\
        a@163.com user1
        b@163.com %1@other.example
        163.com user1
        c@163.com user1 user2
        d@163.com error:5.1.1:450 mixed
        a@163.com user2
        @163.com user%other.example@relay.example
        e@163.com |/usr/bin/procmail
    """
    with pytest.raises(ConfigError) as e:
        build(tmp_path, virtusertable=text)
    assert e.value.problems == [
        f"{path}:2: %1 is only meaningful in a catch-all (@domain) entry",
        f"{path}:3: expected 'user@domain' or '@domain' as the key, got '163.com'",
        f"{path}:4: expected one target, got 'user1 user2'",
        f"{path}:5: reply code 450 and enhanced status code 5.1.1 disagree",
        f"{path}:6: duplicate key 'a@163.com' (first on line 1)",
        f"{path}:7: only %1 may follow a '%' (the percent hack is not supported):"
        " 'user%other.example@relay.example'",
        f"{path}:8: program, file and :include: targets are not supported: '|/usr/bin/procmail'",
    ]


def test_virtusertable_non_local_domain_warned(tmp_path: Path, warnings: list[str]) -> None:
    """An entry for a domain we do not accept is logged: it can never apply."""
    build(tmp_path, virtusertable="a@elsewhere.example user1\n")
    assert warnings == [
        f"{tmp_path / 'virtusertable'}:1: elsewhere.example is not a local domain,"
        " so this entry never applies"
    ]
