"""The seams between packages: the values that cross them and the contracts written on them.

A package talks to another only through what is here. Protocol packages (smtp, later pop3 and
imap) see a `Policy`, a `MessageFilter` (the filter chain), an `Authenticator`, a
`LoginThrottle`, a `MessageSink` and a `Resolver`;
the queue sees `DeliveryTarget`s; delivery targets see a `MailStore`. Only service.py (and
cli.py) know which class implements which seam, and wire them together.

Threads: every method here is called on the reactor thread unless its docstring says
"blocking", which means: call it from a worker thread (it does file system work and fsyncs).
Deferreds fire on the reactor thread.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.cred.credentials import CramMD5Credentials, UsernamePassword
from twisted.internet.defer import Deferred

from appliance.errors import ApplianceError

# ---------------------------------------------------------------------------- mail values


@dataclass(frozen=True)
class Mailbox:
    """A local mailbox, named by its owner's address (stored lower-case)."""

    domain: str  # lower-case
    localpart: str  # lower-case, as stored on disk

    @property
    def address(self) -> str:
        return f"{self.localpart}@{self.domain}"

    @classmethod
    def of(cls, address: str) -> Mailbox:
        """The mailbox of a lower-case user@domain address."""
        localpart, _, domain = address.rpartition("@")
        return cls(domain, localpart)


@dataclass(frozen=True)
class Recipient:
    """One RCPT TO, with where it goes once policy has resolved it."""

    address: str  # as the client gave it (without <>)
    mailboxes: tuple[Mailbox, ...] = ()  # local delivery targets (aliases may give several)
    remote: bool = False  # some of it is to be relayed
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
    # who wrote it: "" a client; "bounce" a DSN we made; "double-bounce" a DSN about an
    # undeliverable DSN, sent to postmaster (one that fails is dropped, never bounced again)
    notice: str = ""
    trusted: bool = False  # the client is one the policy lets relay (access RELAY: our hosts)

    @property
    def ours(self) -> bool:
        """Mail of our own users or hosts: signed as ours, not checked as a stranger's."""
        return self.auth_user is not None or self.trusted

    @property
    def mailboxes(self) -> list[Mailbox]:
        """Local targets, each once (two aliases of one user get one copy), in RCPT order."""
        return list(dict.fromkeys(m for r in self.recipients for m in r.mailboxes))

    @property
    def remote_recipients(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.remote)

    def recipient_for(self, address: str) -> Recipient | None:
        """The RCPT a final relay address came from (its NOTIFY, ORCPT), if any."""
        for r in self.recipients:
            if address in r.forward_to or r.address == address:
                return r
        return None


@dataclass(frozen=True)
class QueuedMessage:
    """A message the queue holds: its id, envelope, arrival time and size in bytes."""

    queue_id: str
    envelope: Envelope
    arrival: float  # time.time() the message arrived (delays are measured from it)
    size: int  # message bytes as received (our Received header included)


class DiskFull(Exception):
    """Writing the message failed for lack of space: answer 452 4.3.1, leave nothing behind."""


# ---------------------------------------------------------------------------- smtp -> queue


class IncomingMessage(Protocol):
    """Two-phase acceptance of one message: write()* then commit() or abort().

    write() may be called many times with the message bytes (CRLF line ends, dot-unstuffed,
    headers we add already in front). It raises DiskFull when space runs out; the caller then
    calls abort(). commit() returns a Deferred that fires with the queue id only once the
    message is durable (file and directory fsync'd, in the spool or at its destination);
    it fails with DiskFull or OSError otherwise, and then nothing is left half-written.
    A message relayed while its sender waits (cut-through, below) counts as durable once
    the next hop has answered 2xx: that hop has then fsync'd it.
    abort() discards everything written so far and may be called at any time, even twice;
    once commit() has been called it does nothing (the message may already be durable).

    commit(rest) takes the message's remaining bytes as well, after everything write() took:
    rest is iterated in the commit's worker thread, so a message the caller already holds
    whole (the filters' BodyBuffer) is written to disk off the reactor. The caller leaves
    rest's source alone until the Deferred has fired.

    rest given as bytes (b"" for none) says more: the whole message is in memory and a
    client is waiting for the reply. A message with one remote recipient may then be
    relayed before it is ever spooled (cut-through), the Deferred firing once the next hop
    has taken it; if that hop does not take it, the message is spooled as usual.
    """

    queue_id: str

    def write(self, data: bytes) -> None: ...

    def commit(self, rest: Iterable[bytes] | bytes = ()) -> Deferred[str]: ...

    def abort(self) -> None: ...


class MessageSink(Protocol):
    """Where accepted messages go: the queue."""

    def begin(self, envelope: Envelope) -> IncomingMessage:
        """Start accepting one message; RuntimeError if the queue is not running."""
        ...

    def has_room(self, size: int) -> bool:
        """Whether a message of size bytes fits (with the configured reserve); cheap, may be
        answered from a reading at most a second old. False means: answer 452 4.3.1."""
        ...


# ---------------------------------------------------------------------------- policy


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
    """Where one recipient address goes, or why it is refused.

    mailboxes are the local mailboxes (virtusertable and aliases applied, each checked to
    exist); forward_to the remote addresses to relay to: the address itself for a relayed
    recipient, or what our maps rewrote a local address to (not the RCPT address then).
    """

    verdict: Verdict = field(default_factory=Verdict)
    mailboxes: Sequence[Mailbox] = ()
    remote: bool = False
    forward_to: tuple[str, ...] = ()


class Policy(Protocol):
    """The connect, sender and recipient decisions SMTP asks for.

    Addresses are as the client gave them (without <>); ip is the client's address, hostname
    its verified reverse-DNS name or None, auth_user the SASL login or None. A decision may
    be answered at once or later (a Deferred); it never fails: a lookup that cannot be made
    is answered with a 4xx Verdict.
    """

    def check_connect(self, ip: str, hostname: str | None) -> Verdict:
        """Whether this client may talk to us at all (and whether it may relay)."""
        ...

    def check_sender(
        self, address: str, ip: str, hostname: str | None, auth_user: str | None
    ) -> Verdict | Deferred[Verdict]:
        """The MAIL FROM decision ("" is the null sender, always allowed unless refused)."""
        ...

    def resolve_recipient(
        self,
        address: str,
        ip: str,
        hostname: str | None,
        auth_user: str | None,
        client_relay: bool,
    ) -> Resolution | Deferred[Resolution]:
        """The RCPT TO decision: where the address goes, or the reply refusing it.

        client_relay: the connect verdict let this client relay.
        """
        ...


# ---------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class SessionFacts:
    """What an SMTP session knows of its client when it asks the filters."""

    session_id: str
    client_ip: str
    client_name: str | None  # verified reverse DNS, None if unknown
    helo: str  # "" before HELO/EHLO
    tls: str | None  # "TLSv1.3 TLS_AES_256_GCM_SHA384" once encrypted
    auth_user: str | None  # the SASL login
    trusted: bool = False  # the policy lets this client relay (access RELAY: our own hosts)

    @property
    def ours(self) -> bool:
        """A logged-in user or one of our hosts (not checked as a stranger)."""
        return self.auth_user is not None or self.trusted


@dataclass(frozen=True)
class FilterVerdict:
    """What a filter (or the chain) says: go on (code None), or the SMTP reply refusing.

    headers are complete header fields ("X-Spam-Flag: YES", folded lines CRLF + tab) to put
    in front of the message, in this order, when it is accepted; filter names who decided
    and reason the detail for the log ("Eicar-Test-Signature", "score=1000.0"); neither
    ever reaches the client beyond text.
    """

    code: int | None = None  # None: accept (so far); else 4xx/5xx
    text: str = ""  # "5.7.1 Message content rejected" (enhanced code first)
    headers: tuple[str, ...] = ()
    filter: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code is None


ACCEPT = FilterVerdict()


class BodyBuffer(Protocol):
    """Where SMTP puts a message's text while the filters have not yet decided on it:
    MessageBody's reads once it is complete. Bounded memory (what does not fit goes to a
    file), written on the reactor thread like the spool."""

    size: int

    def write(self, data: bytes) -> None:
        """More of the message (raises DiskFull when its file cannot grow)."""
        ...

    def chunks(self) -> Iterator[bytes]: ...

    def in_memory(self) -> bytes | None: ...

    def close(self) -> None:
        """Let the bytes go (and remove the file); harmless twice."""
        ...


class MessageFilter(Protocol):
    """A check SMTP makes at connect, MAIL, RCPT and the end of the data: SPF, DNSBL, DKIM,
    DMARC, spamd, clamd, or the chain of all of them (which is one too).

    Each decision may be answered at once or later (a Deferred); it never fails: a check
    that cannot be made says so itself, with a 4xx verdict or by accepting, as its admin
    configured. The chain asks its filters in order and stops at the first refusal.
    """

    name: str

    def connect(self, facts: SessionFacts) -> FilterVerdict | Deferred[FilterVerdict]: ...

    def sender(
        self, facts: SessionFacts, mail_from: str
    ) -> FilterVerdict | Deferred[FilterVerdict]: ...

    def recipient(
        self, facts: SessionFacts, mail_from: str, rcpt: str
    ) -> FilterVerdict | Deferred[FilterVerdict]: ...

    def body_buffer(self, envelope: Envelope) -> BodyBuffer | None:
        """Where to keep this message's text until message() has decided, or None when no
        filter looks at its content (the text then goes straight to the sink)."""
        ...

    def message(
        self, envelope: Envelope, queue_id: str, body: BodyBuffer
    ) -> Deferred[FilterVerdict]:
        """The end of the data: the text (our Received header first) is all in body."""
        ...


@dataclass(frozen=True)
class DKIMKey:
    """A private key our domain signs with now (RFC 6376 / 8463)."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private: bytes  # RSA: PEM; Ed25519: the base64 seed (dkimpy's forms)


class DKIMKeys(Protocol):
    """The keys our domains sign with; cheap to ask (kept in memory, re-read on change)."""

    def signing_keys(self, domain: str) -> list[DKIMKey]:
        """The newest usable key of each algorithm for domain ([] if it has none)."""
        ...


class MessageSigner(Protocol):
    """DKIM-signs mail we send ourselves (our users' mail, our delivery notices)."""

    def sign(self, message: bytes) -> Deferred[tuple[str, ...]]:
        """The DKIM-Signature fields to put in front of message (whole, CRLF line ends),
        made with the keys of its From: domain or a parent of it; () when there are none."""
        ...


class UserDirectory(Protocol):
    """Who the local users are (passwd file or LDAP); lookups never block the reactor."""

    def exists(self, address: str) -> Deferred[bool]:
        """Whether address (lower-cased user@domain) is a user who has a mailbox."""
        ...


# ---------------------------------------------------------------------------- authentication

SaslCredentials = UsernamePassword | CramMD5Credentials


class AuthUnavailable(ApplianceError):
    """The user backend could not answer (directory down, file unreadable): try again later.

    str() is a sentence for the log; clients only get a generic temporary failure."""


class Authenticator(Protocol):
    """SASL credential checks against the user backend.

    authenticate() fires with the login (the lower-cased user@domain the backend knows) for
    good credentials. It fails with twisted.cred's UnauthorizedLogin for bad ones (wrong
    password, unknown user, a mechanism the user has no secret for: the same answer after
    about the same work, so timing does not tell who exists), and with AuthUnavailable when
    the backend cannot answer.
    """

    def authenticate(self, credentials: SaslCredentials) -> Deferred[str]: ...

    def cram_md5_available(self) -> bool:
        """Whether CRAM-MD5 may be offered at all: some user has a secret it can check."""
        ...


class LoginAttempt(Protocol):
    """One login being checked, already counted as a failure; exactly one end is called."""

    def failed(self) -> float:
        """Wrong credentials: the seconds to wait before answering so."""
        ...

    def succeeded(self) -> None:
        """Good credentials: that user's failures from that client are forgotten."""
        ...

    def abandoned(self) -> None:
        """Nothing was checked (the backend could not answer): the attempt does not count."""
        ...


class LoginThrottle(Protocol):
    """Slows down and stops password guessing, per client address and per user, for every
    protocol. An attempt counts from the moment it starts, so parallel guesses count at once."""

    def blocked(self, ip: str, user: str | None = None) -> bool:
        """True: refuse the login without checking anything (the protocol's temporary code)."""
        ...

    def begin(self, ip: str, user: str) -> LoginAttempt | None:
        """The credentials of a login are about to be checked: None if it must be refused
        (a block, nothing is checked), else the attempt, counted already."""
        ...

    def admit(self, ip: str, user: str) -> Deferred[LoginAttempt | None]:
        """begin() for a protocol session: when the client's slots are taken by attempts
        still being checked (not failures), it fires once one of them ends instead of
        refusing, so a client's parallel logins with a good password all get in."""
        ...


# ---------------------------------------------------------------------------- DNS


class LookupFailed(Exception):
    """A DNS lookup got no usable answer (SERVFAIL, REFUSED, timeout): try again later."""


class NoSuchDomain(LookupFailed):
    """The name does not exist (NXDOMAIN): a permanent answer."""


class Resolver(Protocol):
    """Asynchronous lookups through the appliance's own DNS (zones, then forwarders).

    Each fires with the records' data (an empty list when the name exists without records
    of that type), or fails with NoSuchDomain or LookupFailed. Names are given without the
    trailing dot and returned without it, lower-cased.
    """

    def lookup_a(self, name: str) -> Deferred[list[str]]:
        """IPv4 addresses as dotted quads."""
        ...

    def lookup_aaaa(self, name: str) -> Deferred[list[str]]:
        """IPv6 addresses in their compressed text form."""
        ...

    def lookup_mx(self, name: str) -> Deferred[list[tuple[int, str]]]:
        """(preference, exchange host) pairs, as served (not sorted)."""
        ...

    def lookup_ptr(self, ip: str) -> Deferred[list[str]]:
        """The PTR names of an IPv4 or IPv6 address (given as an address, not as in-addr)."""
        ...

    def lookup_txt(self, name: str) -> Deferred[list[bytes]]:
        """Each TXT record's strings joined (SPF and DKIM records are read this way)."""
        ...


# ---------------------------------------------------------------------------- queue -> delivery


class Outcome(enum.Enum):
    """What happened to one recipient, in the maillog's words."""

    SENT = "sent"  # delivered: the message is at its destination, durably
    DEFERRED = "deferred"  # a temporary failure: the queue retries
    BOUNCED = "bounced"  # a permanent failure: the queue returns it to the sender


@dataclass(frozen=True)
class RecipientResult:
    """The result for one address given to Delivery.add_recipient()."""

    address: str
    outcome: Outcome
    text: str  # the reply or reason: "delivered to maildir", "cannot write to maildir: ..."
    relay: str  # where it went: "local", "mail.sina.com[127.0.1.4]:25"
    reply: str = ""  # the next hop's reply verbatim, when it gave the outcome (DSN diagnostic)
    status: str = ""  # RFC 3463 code when the target knows it ("4.4.1": no answer); else the
    # code in reply or text is used
    tls: str = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384" when the next hop was reached over TLS
    # SENT to a next hop that took the DSN request along (it advertised DSN and got NOTIFY=):
    # it reports success itself, so no "relayed" DSN is due from us
    dsn_forwarded: bool = False


class MessageBody(Protocol):
    """The bytes of a queued message, readable as often as needed."""

    size: int

    def chunks(self) -> Iterator[bytes]:
        """Blocking: the bytes in order, in chunks of a megabyte at most."""
        ...

    def in_memory(self) -> bytes | None:
        """All the bytes, when they are still in memory (a small message just received):
        then no file needs to be read, nor a thread woken for it; else None."""
        ...


class Delivery(Protocol):
    """One message on its way through one target (Maddy's two-phase contract).

    add_recipient() for each final address, body() once, then commit() or abort(). commit()
    fires with one RecipientResult per address (it does not fail: trouble is a DEFERRED or
    BOUNCED result); a SENT result means durable at the destination. abort() gives up
    everything not yet committed and may be called at any time.
    """

    def add_recipient(self, address: str) -> None: ...

    def body(self, body: MessageBody) -> None: ...

    def commit(self) -> Deferred[list[RecipientResult]]: ...

    def abort(self) -> None: ...


class StreamingDelivery(Protocol):
    """A delivery of one recipient that takes the bytes as they are received.

    The fast path: the message becomes durable at its destination before the client's 250,
    with no spool file. write() may raise DiskFull; commit() fires with the result only once
    the message is durable, or fails (DiskFull, OSError) with nothing left behind; abort()
    and commit()'s rest as for IncomingMessage.
    """

    def write(self, data: bytes) -> None: ...

    def commit(self, rest: Iterable[bytes] = ()) -> Deferred[RecipientResult]: ...

    def abort(self) -> None: ...


class DeliveryTarget(Protocol):
    """Where the queue hands messages: local mailboxes now, the relay next."""

    name: str  # "local", "relay"

    def start(self, message: QueuedMessage) -> Delivery: ...

    def start_at_once(self, message: QueuedMessage, wait: float) -> Delivery | None:
        """A delivery for a sender still waiting for our reply (cut-through), or None if this
        target has none. If it cannot begin sending within wait seconds it gives up, having
        sent nothing, with DEFERRED results; once begun it runs to the destination's reply."""
        ...

    def start_streaming(self, message: QueuedMessage, address: str) -> StreamingDelivery | None:
        """A streaming delivery to address, or None if this target cannot take one."""
        ...

    def check_address(self, address: str) -> None:
        """ValueError if address can never be delivered here (checked when the message
        arrives rather than on every retry)."""
        ...

    def clean_stale(self) -> None:
        """Blocking: after a start, remove what deliveries cut short by a crash left behind."""
        ...

    def stop(self) -> None:
        """Shutting down: refuse new deliveries, end those in flight soon (as DEFERRED)."""
        ...


class QueueAdmin(Protocol):
    """What `mailappliance queue ...` asks of the running queue (over the control socket).

    queue_id None means every message. Each fires with the number of messages affected
    (0: no such message, or nothing to do); reading the queue needs no running appliance.
    """

    def flush(self, queue_id: str | None = None) -> Deferred[int]:
        """Try these deferred messages now (held ones stay held)."""
        ...

    def delete(self, queue_id: str | None) -> Deferred[int]:
        """Remove messages for good, without a bounce (postsuper -d)."""
        ...

    def hold(self, queue_id: str | None) -> Deferred[int]:
        """Stop trying these messages until released (postsuper -h)."""
        ...

    def release(self, queue_id: str | None) -> Deferred[int]:
        """Let held messages be tried again, at once (postsuper -H)."""
        ...


# ---------------------------------------------------------------------------- mail store
# (in store.py for size; imported here so that every seam is appliance.interfaces.<name>)

from appliance.interfaces.status import (  # noqa: E402
    CertificateState,
    DomainRecords,
    MailboxSize,
    QueuedItem,
    RecordCheck,
    ServiceState,
    Summary,
)
from appliance.interfaces.store import (  # noqa: E402
    FolderListing,
    MailboxLock,
    Maildrop,
    MaildropMessage,
    MailStore,
    NewMessage,
    StoredMessage,
)

__all__ = [
    "CertificateState",
    "DomainRecords",
    "MailboxSize",
    "QueuedItem",
    "RecordCheck",
    "ServiceState",
    "Summary",
    "FolderListing",
    "Maildrop",
    "MaildropMessage",
    "MailboxLock",
    "MailStore",
    "NewMessage",
    "StoredMessage",
]
