"""Shared by the policy tests: the tutorial's files, a user directory double, shortcuts."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from appliance.interfaces import Mailbox, Resolution, Verdict
from appliance.policy.sendmail import SendmailPolicy

# the tutorial's mail.163.com, as its files most likely read
LHN = "# local-host-names: domains we receive mail for\n163.com\nsina-alias.com\n"
ACCESS = "127.0.0.1 RELAY\n163.com RELAY\n"
VIRTUSERTABLE = """\
admin@163.com       user1
info@163.com        user2@163.com
friend@163.com      Friend@other.example
gone@163.com        error:nouser
old@163.com         error:5.1.1:550 User has moved
@sina-alias.com     %1@163.com
"""
ALIASES = """\
# aliases(5)
postmaster: root
root:       user1
abuse:      root
staff:      user1,
            user2, user1@163.com
"""
USERS = {"user1@163.com", "user2@163.com"}
OUTSIDE = "192.0.2.10"  # a client the access file says nothing about


class Users:
    """Test double for the user directory: a fixed set of addresses."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = set(addresses)

    def exists(self, address: str) -> defer.Deferred[bool]:
        return defer.succeed(address in self.addresses)


class FailingUsers:
    """A user directory whose backend is down."""

    def exists(self, address: str) -> defer.Deferred[bool]:
        return defer.fail(ConnectionRefusedError("LDAP server unreachable"))


def fired(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that must already have fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def build(
    tmp_path: Path,
    *,
    lhn: str | None = LHN,
    access: str | None = ACCESS,
    virtusertable: str | None = VIRTUSERTABLE,
    aliases: str | None = ALIASES,
    users: Any = None,
    clock: Callable[[], float] | None = None,
    local_domains: Iterable[str] = (),
) -> SendmailPolicy:
    paths: dict[str, Path | None] = {}
    for name, text in (
        ("local-host-names", lhn),
        ("access", access),
        ("virtusertable", virtusertable),
        ("aliases", aliases),
    ):
        paths[name] = None
        if text is not None:
            paths[name] = tmp_path / name
            paths[name].write_text(textwrap.dedent(text))
    return SendmailPolicy(
        local_domains=local_domains,
        local_host_names=paths["local-host-names"],
        access=paths["access"],
        virtusertable=paths["virtusertable"],
        aliases=paths["aliases"],
        users=Users(users) if isinstance(users, set) else users or Users(USERS),
        clock=clock or Clock().seconds,
    )


def sender(
    policy: SendmailPolicy, address: str, ip: str = OUTSIDE, auth: str | None = None
) -> Verdict:
    return fired(policy.check_sender(address, ip, None, auth))


def rcpt(
    policy: SendmailPolicy,
    address: str,
    ip: str = OUTSIDE,
    auth: str | None = None,
    relay: bool = False,
    hostname: str | None = None,
) -> Resolution:
    return fired(policy.resolve_recipient(address, ip, hostname, auth, relay))


def local(*addresses: str) -> Resolution:
    boxes = tuple(Mailbox(a.partition("@")[2], a.partition("@")[0]) for a in addresses)
    return Resolution(mailboxes=boxes)


def refused(code: int, text: str) -> Resolution:
    return Resolution(Verdict(code, text))


def rewrite(path: Path, text: str) -> None:
    """Replace a file's content and make sure its mtime differs (coarse clocks)."""
    before = path.stat().st_mtime_ns
    path.write_text(textwrap.dedent(text))
    os.utime(path, ns=(before + 10**9, before + 10**9))
