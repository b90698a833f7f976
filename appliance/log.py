"""The mail event stream: every mail event is a twisted.logger event with named fields.

Components log what happens to mail (a client connects, a message is queued, a copy is
delivered, a login fails) on a Logger from `mail_logger(component)`. Its events go to
`mail_events`, a publisher of their own rather than the global log: the maillog observer
renders them as Postfix-like lines (appliance.maillog), and the status page (its metrics and
history) and the audit log (appliance.audit) subscribe to the same stream.

Each event has `log_format` (a literal PEP 3101 string, the maillog line), `event` (what
happened: connect, disconnect, reject, discard, client, auth, auth_failed, queued, status,
removed, recovered) and the fields of the fixed vocabulary: `session_id, client, queue_id,
mail_from, rcpt, orig_rcpt, relay, delay, status, sasl_method, sasl_username, code, reason,
size, nrcpt`. Values are raw (numbers stay numbers); peer-supplied text is made printable by
the component with `printable()` before it is logged.
"""

from __future__ import annotations

import functools
from time import time

from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher

mail_events = LogPublisher()


class MailLogger(Logger):
    """A Logger for mail events: the same events, without Logger.emit's level validation.

    Logger.emit checks the level against LogLevel.iterconstants() on every call, which is a
    third of an event's cost; mail events come several per message, always from
    info()/warn() with a valid level, so the check buys nothing here.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time(),
        )
        self.observer(kwargs)


def mail_logger(component: str, publisher: ILogObserver | None = None) -> Logger:
    """A Logger for one component ('smtpd', 'local', 'relay', 'queue') of the mail stream.

    publisher defaults to the process-wide `mail_events`; tests give their own observer.
    """
    return MailLogger(namespace=f"mail.{component}", observer=publisher or mail_events)


@functools.cache
def _component(namespace: str) -> str:
    return namespace.partition(".")[2] or namespace


def component_of(event: dict) -> str:
    """The component that emitted a mail event ('smtpd' for 'mail.smtpd')."""
    return _component(event.get("log_namespace") or "")


def printable(value: str | bytes, limit: int = 200) -> str:
    """Peer-supplied text made safe for one log line."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if len(value) <= limit and value.isprintable():
        return value  # the common case, checked in C
    out = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return out + ("..." if len(value) > limit else "")
