"""The seams between packages: values that cross them and the contracts written on them.

Protocol packages (smtp, pop3, imap) depend on these, never on each other; only service.py
knows the implementations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Mailbox:
    """A local mailbox: state_dir/mail/<domain>/<localpart>/Maildir."""

    domain: str  # lower-case
    localpart: str  # lower-case, as stored on disk

    @property
    def address(self) -> str:
        return f"{self.localpart}@{self.domain}"


@dataclass(frozen=True)
class Recipient:
    """One RCPT TO, with where it goes once policy has resolved it."""

    address: str  # as the client gave it (without <>)
    mailboxes: tuple[Mailbox, ...] = ()  # local delivery targets (aliases may give several)
    remote: bool = False  # to be relayed (stays in the spool for the relay issue)
    forward_to: tuple[str, ...] = ()  # remote addresses to relay to (aliases may rewrite)
    notify: str | None = None  # DSN NOTIFY=, e.g. "SUCCESS,FAILURE"
    orcpt: str | None = None  # DSN ORCPT=, e.g. "rfc822;user@example.com"


@dataclass(frozen=True)
class Envelope:
    """Everything about one message except its bytes."""

    mail_from: str  # "" for the null sender <>
    recipients: tuple[Recipient, ...]
    client_ip: str
    helo: str
    client_name: str | None = None  # reverse DNS, if known
    auth_user: str | None = None  # SASL identity, if the client authenticated
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384", if encrypted
    protocol: str = "ESMTP"  # RFC 3848 WITH keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA
    body: str = "7BIT"  # BODY= 7BIT or 8BITMIME
    smtputf8: bool = False
    dsn_ret: str | None = None  # RET=FULL or HDRS
    dsn_envid: str | None = None  # ENVID=
    received_at: float = 0.0  # time.time() when MAIL FROM was accepted
    session_id: str = ""


class DiskFull(Exception):
    """Writing the message failed for lack of space: answer 452 4.3.1, leave nothing behind."""


class IncomingMessage(Protocol):
    """Two-phase delivery of one message: write()* then commit() or abort().

    write() may be called many times with the message bytes (CRLF line ends, dot-unstuffed,
    headers we add already in front). It raises DiskFull when space runs out; the caller then
    calls abort(). commit() returns a Deferred that fires with the queue id only once the
    message is durable (file and directory fsync'd, in the spool or in every local Maildir);
    it fails with DiskFull or OSError otherwise, and then nothing is left half-written.
    abort() discards everything written so far and may be called at any time, even twice.
    """

    queue_id: str

    def write(self, data: bytes) -> None: ...

    def commit(self) -> Deferred[str]: ...

    def abort(self) -> None: ...


class MessageSink(Protocol):
    """Where accepted messages go (the queue)."""

    def begin(self, envelope: Envelope) -> IncomingMessage: ...


@dataclass(frozen=True)
class Verdict:
    """A policy decision: accept (code None) or the SMTP reply to give."""

    code: int | None = None  # None: accept; else 4xx/5xx
    text: str = ""  # "5.7.1 Relaying denied" (enhanced code first)
    discard: bool = False  # accept, then drop silently (sendmail DISCARD)
    relay: bool = False  # the client may relay (access RELAY)

    @property
    def ok(self) -> bool:
        return self.code is None


@dataclass(frozen=True)
class Resolution:
    """Where one recipient address goes, or why it is refused."""

    verdict: Verdict = field(default_factory=Verdict)
    mailboxes: Sequence[Mailbox] = ()
    remote: bool = False


class UserDirectory(Protocol):
    """Who the local users are (passwd file or LDAP); lookups never block the reactor."""

    def exists(self, address: str) -> Deferred[bool]:
        """Whether address (lower-cased user@domain) is a user who has a mailbox."""
        ...
