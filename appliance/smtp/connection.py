"""The byte side of an SMTP session: appliance.lineconn's framing with SMTP's replies.

Why our own framing (not twisted.mail.smtp.ESMTP): Twisted's ESMTP executes commands pipelined
before STARTTLS inside TLS, leaves DATA on an over-long line (so the rest of the body runs as
commands), keeps an unbounded line buffer and lacks SIZE/8BITMIME/PIPELINING/
ENHANCEDSTATUSCODES/DSN/SMTPUTF8. appliance.lineconn.LineConnection does the framing, reply
batching, waiting, back-pressure and deadlines; here is what SMTP says through its hooks:
- command lines are bounded by [smtp] max_command_line; longer ones are answered
  500 5.5.6 and skipped up to the next CRLF;
- while DATA is being read the bytes go to feed_data() (appliance.smtp.data);
- replies are `code enhanced text` (RFC 3463); they carry UTF-8 only in a transaction that
  asked for SMTPUTF8, whatever of the client's text they quote is made printable;
- a client past a deadline gets 421 4.4.2 (and is cut off if it is not reading);
- a failure while waiting is answered 451 4.3.0;
- after max_errors 5xx/421 replies the connection is closed with 421 4.7.0.
The session (appliance.smtp.session) supplies line_received() and the DATA hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.lineconn import MAX_PIPELINED, LineConnection, Transport
from appliance.smtp.address import ReplyError

if TYPE_CHECKING:
    from appliance.smtp.factory import SMTPFactory

__all__ = ["MAX_PIPELINED", "SMTPConnection", "Transport"]


class SMTPConnection(LineConnection):
    """An SMTP connection's byte side: LineConnection with SMTP's replies and settings."""

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__()
        self.factory = factory

    # ------------------------------------------------------------------ LineConnection's hooks

    def line_limit(self) -> int:
        """The longest command line accepted, CRLF included."""
        return self.factory.settings.max_command_line

    def line_too_long(self) -> None:
        self.reply(500, "5.5.6", "Error: line too long")

    def max_errors(self) -> int:
        return self.factory.settings.max_errors

    def too_many_errors(self) -> None:
        self.send_line(f"421 4.7.0 {self.factory.settings.hostname} Error: too many errors")
        self.close_connection()

    def local_error(self, what: str) -> None:
        self.reply(451, "4.3.0", "Error: local error in processing")

    # ------------------------------------------------------------------ SMTP replies

    def reply(self, code: int, enhanced: str, text: str, close: bool = False) -> None:
        self.send_line(f"{code} {enhanced} {text}")
        if code >= 500 or code in (421,):
            self.count_error(code)
        if close:
            self.close_connection()

    def reply_error(self, e: ReplyError) -> None:
        self.reply(e.code, e.enhanced, e.text)

    def count_error(self, code: int) -> None:
        self.note_error()
