"""The maillog: one Postfix-like line per mail event, correlated by queue id.

`MailLog.line("4F2A19C03B: to=<...>, relay=local, ...")` appends
`Nov 29 05:00:00 mail.163.com mailappliance/smtpd[123]: 4F2A19C03B: to=<...>` to the file named
by `[log] maillog`. Without a file the lines go to the twisted log instead (so `twistd -n` shows
them); not both, because formatting every line twice cost a fifth of the reactor's time under
load. Lines are written unbuffered in one write() each, so `tail -f` and fail2ban see whole
lines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from twisted.logger import Logger


class MailLog:
    log = Logger()

    def __init__(
        self,
        path: Path | None,
        hostname: str,
        *,
        also_log: bool | None = None,
        reactor: Any = None,
    ) -> None:
        self.path = path
        self.hostname = hostname
        # with a reactor, lines of one reactor turn go out in one write(): each write from the
        # reactor thread costs a GIL hand-over while fsync threads are busy
        self.reactor = reactor
        self._pending: list[str] = []
        self._flush_call: Any = None
        self.also_log = path is None if also_log is None else also_log
        self._stamp_second = -1
        self._stamp = ""
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

    def line(self, text: str, component: str = "smtpd") -> None:
        """One event; text must not contain newlines (peer data is sanitised by the callers)."""
        text = text.replace("\n", " ").replace("\r", " ")
        if self._fd is not None:
            now = int(time.time())
            if now != self._stamp_second:  # strftime once a second, not once a line
                self._stamp_second, self._stamp = now, time.strftime("%b %e %H:%M:%S")
            stamp = self._stamp
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

    def for_component(self, component: str):
        return lambda text: self.line(text, component)


def printable(value: str | bytes, limit: int = 200) -> str:
    """Peer-supplied text made safe for one log line."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    out = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return out + ("..." if len(value) > limit else "")
