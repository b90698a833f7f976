"""The appliance's status summary: what `mailappliance status` prints and the status page
shows. The wiring gathers it (appliance.service.summary, from the configuration, the state
folder and the running services); the terminal and the web page only render it.

Values only: everything here is plain data, made in a worker thread (gathering reads the
spool, the certificate, the zones and every mailbox) and read on the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceState:
    name: str  # "smtp", "pop3", "dns", ...
    running: bool
    listeners: tuple[str, ...]  # "smtp 127.0.1.1:25", ...


@dataclass(frozen=True)
class QueuedItem:
    """One complete message in the queue (appliance.queue.inspect reads them)."""

    queue_id: str
    where: str  # "incoming" (local delivery pending) or "deferred" (waiting for the relay)
    size: int
    arrival: float
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]  # final addresses not yet done (sent or bounced)
    last_error: str | None  # the latest deferral's reason
    next_try: float | None  # when the relay tries again; None: not scheduled (at once)
    held: bool


@dataclass(frozen=True)
class CertificateState:
    path: str
    names: tuple[str, ...]  # its DNS names
    expires: float | None  # None: it could not be read
    problem: str | None  # why it needs attention (unreadable, should have been renewed)


@dataclass(frozen=True)
class RecordCheck:
    name: str
    type: str
    state: str  # "ok", "missing", "differs", "not ours"
    value: str  # what the domain needs


@dataclass(frozen=True)
class DomainRecords:
    domain: str
    records: tuple[RecordCheck, ...]


@dataclass(frozen=True)
class MailboxSize:
    address: str
    messages: int
    octets: int


@dataclass(frozen=True)
class Summary:
    now: float
    running: bool  # whether the appliance answered (the status page: always)
    pid: int | None
    started: float | None
    services: tuple[ServiceState, ...]
    queue: tuple[QueuedItem, ...]  # oldest first
    certificate: CertificateState
    dns: tuple[DomainRecords, ...]
    mailboxes: tuple[MailboxSize, ...]
    attention: tuple[str, ...]  # each thing that needs an admin, one sentence each

    @property
    def active(self) -> tuple[QueuedItem, ...]:
        return tuple(m for m in self.queue if m.where == "incoming")

    @property
    def deferred(self) -> tuple[QueuedItem, ...]:
        return tuple(m for m in self.queue if m.where == "deferred")

    @property
    def held(self) -> tuple[QueuedItem, ...]:
        return tuple(m for m in self.queue if m.held)
