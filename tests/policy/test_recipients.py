"""RCPT TO: local users, relaying, routing tricks and To: access entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from appliance.interfaces import Resolution, Verdict
from appliance.policy.sendmail import SendmailPolicy
from tests.policy.helpers import (
    OUTSIDE,
    FailingUsers,
    build,
    local,
    rcpt,
    refused,
)

# ---------------------------------------------------------------------- recipients: local


def test_resolve_recipient_local_user_mailbox(tmp_path: Path) -> None:
    """A local user resolves to its mailbox."""
    policy = build(tmp_path)
    assert rcpt(policy, "user1@163.com") == local("user1@163.com")


def test_resolve_recipient_mixed_case_lower_cased_mailbox(tmp_path: Path) -> None:
    """Local part and domain are compared and stored lower-case."""
    policy = build(tmp_path)
    assert rcpt(policy, "User1@163.COM") == local("user1@163.com")


def test_resolve_recipient_unknown_user_rejected(tmp_path: Path) -> None:
    """An address that is no user, alias or virtual user gets 550 5.1.1."""
    policy = build(tmp_path)
    assert rcpt(policy, "Nobody@163.com") == refused(
        550, "5.1.1 <Nobody@163.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_user_directory_down_tempfail(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A failing user lookup answers 451 4.3.0 and logs why."""
    policy = build(tmp_path, users=FailingUsers())
    assert rcpt(policy, "user1@163.com") == refused(
        451, "4.3.0 <user1@163.com>: Recipient address rejected: temporary lookup failure"
    )
    assert warnings == ["user1@163.com: user lookup failed: LDAP server unreachable"]


@pytest_twisted.inlineCallbacks
def test_resolve_recipient_slow_directory_waited_for() -> Any:
    """The answer waits for a directory lookup that fires later."""
    clock = Clock()

    class SlowUsers:
        def exists(self, address: str) -> defer.Deferred[bool]:
            d: defer.Deferred[bool] = defer.Deferred()
            clock.callLater(1, d.callback, address == "user1@163.com")
            return d

    policy = SendmailPolicy(local_domains=["163.com"], users=SlowUsers())
    d = policy.resolve_recipient("user1@163.com", OUTSIDE, None, None, False)
    assert not d.called
    clock.advance(1)
    result = yield d
    assert result == local("user1@163.com")


# ---------------------------------------------------------------------- recipients: relaying


def test_resolve_recipient_remote_unauthenticated_relay_denied(tmp_path: Path) -> None:
    """An unknown client may not relay to another domain."""
    policy = build(tmp_path)
    assert rcpt(policy, "user3@sina.com") == refused(
        550, "5.7.1 <user3@sina.com>: Relay access denied"
    )


def test_resolve_recipient_remote_authenticated_relayed(tmp_path: Path) -> None:
    """An authenticated client may relay; the address to relay to is kept as given."""
    policy = build(tmp_path)
    assert rcpt(policy, "User3@Sina.com", auth="user1@163.com") == Resolution(
        remote=True, forward_to=("User3@sina.com",)
    )


def test_resolve_recipient_remote_client_relay_flag_relayed(tmp_path: Path) -> None:
    """client_relay from the caller allows relaying."""
    policy = build(tmp_path, access=None)
    assert rcpt(policy, "user3@sina.com", relay=True) == Resolution(
        remote=True, forward_to=("user3@sina.com",)
    )


def test_resolve_recipient_remote_access_relay_client_relayed(tmp_path: Path) -> None:
    """A client with access RELAY (127.0.0.1, or a host in 163.com) may relay."""
    policy = build(tmp_path)
    assert rcpt(policy, "user3@sina.com", ip="127.0.0.1").remote
    assert rcpt(policy, "user3@sina.com", hostname="pc.163.com").remote


def test_resolve_recipient_to_relay_domain_relayed(tmp_path: Path) -> None:
    """To: RELAY for a domain lets anyone relay to it (a backup MX), nothing else."""
    policy = build(tmp_path, access="To:partner.example RELAY\n")
    assert rcpt(policy, "a@mx.partner.example") == Resolution(
        remote=True, forward_to=("a@mx.partner.example",)
    )
    assert rcpt(policy, "a@other.example").verdict.code == 550


def test_resolve_recipient_to_ok_remote_not_relayed(tmp_path: Path) -> None:
    """To: OK is not RELAY: it does not open relaying."""
    policy = build(tmp_path, access="To:partner.example OK\n")
    assert rcpt(policy, "a@partner.example") == refused(
        550, "5.7.1 <a@partner.example>: Relay access denied"
    )


@pytest.mark.parametrize(
    "address",
    [
        "user%other.example@163.com",
        "@163.com:user@other.example",
        "other.example!user@163.com",
        '"user@other.example"@163.com',
    ],
)
def test_resolve_recipient_routing_trick_refused(tmp_path: Path, address: str) -> None:
    """Percent hack, source route, bang path and quoted '@' never open a relay."""
    policy = build(tmp_path)
    assert rcpt(policy, address, ip="127.0.0.1", relay=True) == refused(
        550, f"5.7.1 <{address}>: Relay access denied"
    )


def test_resolve_recipient_routing_trick_authenticated_plain_rules(tmp_path: Path) -> None:
    """Authenticated: the source route is dropped; a '%' local part is just an unknown user."""
    policy = build(tmp_path)
    auth = "user1@163.com"
    assert rcpt(policy, "@163.com:user@other.example", auth=auth) == Resolution(
        remote=True, forward_to=("user@other.example",)
    )
    assert rcpt(policy, "user%other.example@163.com", auth=auth).verdict.code == 550
    assert rcpt(policy, "user%other.example@163.com", auth=auth).verdict.text.startswith("5.1.1")


# ---------------------------------------------------------------------- recipients: To: access


def test_resolve_recipient_to_reject_exact_reply(tmp_path: Path) -> None:
    """To: REJECT refuses the recipient before any lookup."""
    policy = build(tmp_path, access="To:user2@163.com REJECT\n")
    assert rcpt(policy, "user2@163.com") == refused(
        550, "5.7.1 <user2@163.com>: Recipient address rejected: Access denied"
    )


def test_resolve_recipient_to_error_reply_used(tmp_path: Path) -> None:
    """To: ERROR gives its own code and text."""
    policy = build(
        tmp_path, access='To:user2@163.com ERROR:"4.2.1 Mailbox closed for maintenance"\n'
    )
    assert rcpt(policy, "user2@163.com") == refused(450, "4.2.1 Mailbox closed for maintenance")


def test_resolve_recipient_to_discard_discard_verdict(tmp_path: Path) -> None:
    """To: DISCARD accepts the recipient and marks the message for discarding."""
    policy = build(tmp_path, access="To:trap@163.com DISCARD\n")
    assert rcpt(policy, "trap@163.com") == Resolution(Verdict(discard=True))


def test_resolve_recipient_to_specific_ok_beats_domain_reject(tmp_path: Path) -> None:
    """To:address OK and To:user@ OK beat To:domain REJECT; the user must still exist."""
    access = """\
        To:163.com REJECT
        To:user1@163.com OK
        To:postmaster@ OK
        To:ghost@163.com OK
    """
    policy = build(tmp_path, access=access)
    assert rcpt(policy, "user1@163.com") == local("user1@163.com")
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    assert rcpt(policy, "user2@163.com").verdict.code == 550
    assert rcpt(policy, "ghost@163.com").verdict.text.startswith("5.1.1")


def test_resolve_recipient_untagged_domain_reject_applies(tmp_path: Path) -> None:
    """An untagged domain key is also a To: key."""
    policy = build(tmp_path, access="sina-alias.com REJECT\n")
    assert rcpt(policy, "user1@sina-alias.com").verdict.code == 550
