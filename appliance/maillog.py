"""The maillog: an observer of the mail event stream writing one Postfix-like line per event.

`MailLog` renders each event of appliance.log's stream with its own format string and named
fields, `4F2A19C03B: to=<...>, relay=local, delay=0.01, status=sent (delivered to maildir)`,
and appends `Nov 29 05:00:00 mail.163.com mailappliance/local[123]: <line>` to the file named
by `[log] maillog`. Without a file the lines go to the twisted log instead (so `twistd -n`
shows them); not both, because formatting every line twice cost a fifth of the reactor's time
under load. Lines of one reactor turn go out in one unbuffered write(), so `tail -f` and
fail2ban see whole lines.
"""

from __future__ import annotations

import functools
import os
import string
import time
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

from appliance.log import component_of, printable
from appliance.units import SecondText

_LINE_LIMIT = 1000  # per field; peer data is already cut shorter by the components


@functools.cache
def _fields_of(log_format: str) -> tuple[str, ...]:
    """The field names a format string uses (each format is a literal, so few are seen)."""
    return tuple(
        name.partition(".")[0].partition("[")[0]
        for _, name, _, _ in string.Formatter().parse(log_format)
        if name
    )


def render(event: dict[str, Any]) -> str:
    """The maillog text of one mail event (without stamp and component), on one line."""
    log_format = event["log_format"]
    try:
        fields = event
        for key in _fields_of(log_format):
            value = event[key]
            # checked in C (isprintable); only an event with a value that needs it is copied
            if type(value) is str and not (len(value) <= _LINE_LIMIT and value.isprintable()):
                if fields is event:
                    fields = dict(event)
                fields[key] = printable(value, _LINE_LIMIT)
        text = log_format.format_map(fields)
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as e:
        text = f"unrenderable event {event.get('event')!r}: {e}"
    return text.replace("\n", " ").replace("\r", " ")


@implementer(ILogObserver)
class MailLog:
    log = Logger()

    def __init__(
        self,
        path: Path | None,
        hostname: str,
        *,
        also_log: bool | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        self.path = path
        self.hostname = hostname
        # with a reactor, lines of one reactor turn go out in one write(): each write from the
        # reactor thread costs a GIL hand-over while fsync threads are busy
        self.reactor = reactor
        self._pending: list[str] = []
        self._flush_call: Any = None
        self.also_log = path is None if also_log is None else also_log
        self._stamp = SecondText(
            lambda second: time.strftime("%b %e %H:%M:%S", time.localtime(second))
        )
        self._fd: int | None = None
        self.pid = os.getpid()

    def open(self) -> None:
        if self.path is not None and self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["log_format"]:  # an event without a format has no maillog line (a count)
            self.line(render(event), component_of(event))

    def line(self, text: str, component: str = "smtpd") -> None:
        """Append one rendered line (text must be one line already)."""
        if self._fd is not None:
            stamp = self._stamp(int(time.time()))
            self._pending.append(
                f"{stamp} {self.hostname} mailappliance/{component}[{self.pid}]: {text}\n"
            )
            if self.reactor is None:
                self.flush()
            elif self._flush_call is None:
                self._flush_call = self.reactor.callLater(0, self.flush)
        if self.also_log:
            self.log.info("{component}: {text}", component=component, text=text)

    def flush(self) -> None:
        """Write the lines gathered so far (at the end of the reactor turn)."""
        self._flush_call = None
        if not self._pending or self._fd is None:
            self._pending.clear()
            return
        data = "".join(self._pending).encode("utf-8", "replace")
        self._pending.clear()
        try:
            os.write(self._fd, data)
        except OSError as e:
            self.log.error("cannot write maillog: {reason}", reason=str(e))
