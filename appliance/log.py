"""The maillog: one Postfix-like line per mail event, correlated by queue id.

`MailLog.line("4F2A19C03B: to=<...>, relay=local, ...")` appends
`Nov 29 05:00:00 mail.163.com mailappliance/smtpd[123]: 4F2A19C03B: to=<...>` to the file named
by `[log] maillog` and also emits it on the twisted logger (so `twistd -n` shows it). Lines are
written unbuffered in one write() each, so `tail -f` and fail2ban see whole lines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from twisted.logger import Logger


class MailLog:
    log = Logger()

    def __init__(self, path: Path | None, hostname: str, *, also_log: bool = True) -> None:
        self.path = path
        self.hostname = hostname
        self.also_log = also_log
        self._fd: int | None = None
        self.pid = os.getpid()

    def open(self) -> None:
        if self.path is not None and self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def line(self, text: str, component: str = "smtpd") -> None:
        """One event; text must not contain newlines (peer data is sanitised by the callers)."""
        text = text.replace("\n", " ").replace("\r", " ")
        if self._fd is not None:
            stamp = time.strftime("%b %e %H:%M:%S")
            data = f"{stamp} {self.hostname} mailappliance/{component}[{self.pid}]: {text}\n"
            try:
                os.write(self._fd, data.encode("utf-8", "replace"))
            except OSError as e:
                self.log.error("cannot write maillog: {reason}", reason=str(e))
        if self.also_log:
            self.log.info("{component}: {text}", component=component, text=text)

    def for_component(self, component: str):
        return lambda text: self.line(text, component)


def printable(value: str | bytes, limit: int = 200) -> str:
    """Peer-supplied text made safe for one log line."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    out = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return out + ("..." if len(value) > limit else "")
