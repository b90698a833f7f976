"""The audit log: one JSON line per security-relevant event, for whoever must answer "who
did what, when, from where".

An observer of the same mail event stream as the maillog (appliance.log): logins that
succeed, fail or are refused (SMTP AUTH, POP3), throttle blocks, policy and filter
rejections, every filter verdict, and admin actions (the control socket's queue commands
emit events; the `mailappliance` command writes its own actions here with record()). Each
line has the time (UTC, ISO 8601), the kind, and only the fields listed in FIELDS: client
address, user, queue id and the like, never a password, a SASL payload or a message body
(those are never in an event, and nothing else is copied). Lines are appended with one
write each on an O_APPEND file, so the running appliance and the admin command can share it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver
from zope.interface import implementer

from appliance.log import component_of
from appliance.units import SecondText

KINDS: dict[tuple[str, str], str] = {
    ("smtpd", "auth"): "login",
    ("smtpd", "auth_failed"): "login_failed",
    ("smtpd", "auth_refused"): "login_refused",
    ("smtpd", "reject"): "rejected",
    ("pop3d", "login"): "login",
    ("pop3d", "auth_failed"): "login_failed",
    ("pop3d", "auth_refused"): "login_refused",
    ("imapd", "login"): "login",
    ("imapd", "auth_failed"): "login_failed",
    ("imapd", "auth_refused"): "login_refused",
    ("auth", "client_blocked"): "blocked",
    ("auth", "user_blocked"): "blocked",
    ("filter", "filter"): "filter_verdict",
    ("control", "admin"): "admin",
    ("webadmin", "login"): "login",
    ("webadmin", "auth_failed"): "login_failed",
    ("webadmin", "auth_refused"): "login_refused",
    ("webadmin", "logout"): "logout",
    ("webadmin", "admin"): "admin",
}
FIELDS = (
    "session_id", "peer", "client", "user", "sasl_username", "sasl_method", "tls",
    "queue_id", "stage", "code", "reason", "mail_from", "rcpt", "filter", "action",
    "command", "target", "count", "actor",
)  # fmt: skip
MODE = 0o640
_encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per record


def _second_text(second: int) -> str:
    """ISO 8601 UTC up to the second, without the offset: 2026-12-02T00:28:16."""
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[: -len("+00:00")]


@implementer(ILogObserver)
class AuditLog:
    """Appends audit records to path; an observer of the mail event stream."""

    def __init__(self, path: Path, reactor: IReactorTime | None = None) -> None:
        """reactor: lines are gathered and written once at the end of each reactor turn (a
        message's filter verdicts, its login and its queue events in one write); None: each
        line is written at once (the admin command)."""
        self.path = Path(path)
        self.fd: int | None = None
        self.reactor = reactor
        self._pending: list[str] = []
        self._flush_call: IDelayedCall | None = None
        self._second_text = SecondText(_second_text)

    def open(self) -> None:
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, MODE)

    def close(self) -> None:
        self.flush()
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = KINDS.get((component_of(event), event.get("event", "")))
        if kind is not None:
            self.write(kind, component_of(event), event.get("log_time"), event)

    def record(self, kind: str, **fields: Any) -> None:
        """An action of the admin command (opens and closes the file itself)."""
        opened = self.fd is None
        self.open()
        try:
            self.write(kind, "cli", None, fields)
        finally:
            if opened:
                self.close()

    def write(self, kind: str, component: str, when: float | None, fields: dict[str, Any]) -> None:
        record: dict[str, Any] = {"time": self._time_text(when), "kind": kind}
        record["component"] = component
        if "event" in fields:
            record["event"] = fields["event"]
        get = fields.get
        for name in FIELDS:
            value = get(name)
            if value is not None and value != "":
                record[name] = value if isinstance(value, (int, float, bool)) else str(value)
        if self.fd is None:
            return
        self._pending.append(_encode(record) + "\n")
        if self.reactor is None:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def _time_text(self, when: float | None) -> str:
        """when (now if None) as ISO 8601 UTC with milliseconds, as datetime.isoformat gives
        it; the part up to the second is made once per second (several records a message)."""
        if not when:
            when = time.time()
        second = int(when)
        micro = round((when - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, 0
        return f"{self._second_text(second)}.{micro // 1000:03d}+00:00"

    def flush(self) -> None:
        """Write the lines gathered so far, in one append."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self._pending and self.fd is not None:
            data = "".join(self._pending).encode("utf-8")
            while data:  # O_APPEND: a short write (a full disk) leaves the rest to retry
                data = data[os.write(self.fd, data) :]
        self._pending.clear()
