"""The SMTP server's mail events: each maillog line it writes, as an event with named fields.

Every method emits one event on the listener's Logger (appliance.log.mail_logger("smtpd"))
whose log_format is a literal format string that appliance.maillog.render turns into the
Postfix-like line, e.g. `NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.7.1 ...`.
`event` names what happened (connect, disconnect, reject, discard, client, auth,
auth_failed); session_id and peer (the client's IP) are on every event, client is the
`name[ip]` label Postfix writes. Peer-supplied text is cut here with printable(), with the
limits the maillog lines have always had; HELO names arrive cut already.
"""

from __future__ import annotations

from twisted.logger import Logger

from appliance.interfaces import Verdict
from appliance.log import printable

CONNECT = "connect from {client}"
DISCONNECT = "disconnect from {client}"
DISCONNECT_STATS = "disconnect from {client} {stats}"
REJECT_CONNECT = "NOQUEUE: reject: {stage} from {client}: {code} {reason}"
REJECT = "NOQUEUE: reject: {stage} from {client}: {code} {reason};"
REJECT_FROM = " from=<{mail_from}>"
REJECT_TO = " to=<{rcpt}>"
REJECT_END = " proto={proto} helo=<{helo}>"
DISCARD = "NOQUEUE: discard: from=<{mail_from}>"
CLIENT = "{queue_id}: client={client}"
CLIENT_SASL = (
    "{queue_id}: client={client}, sasl_method={sasl_method}, sasl_username={sasl_username}"
)
AUTH = "{client}: sasl_method={sasl_method}, sasl_username={sasl_username}"
AUTH_FAILED = "warning: {client}: SASL {sasl_method} authentication failed: user={sasl_username}"
AUTH_REFUSED = (
    "warning: {client}: SASL {sasl_method} login refused, too many failed logins:"
    " user={sasl_username}"
)
TIMEOUT = "timeout after {stage} from {client}"
TLS = "Anonymous TLS connection established from {client}: {tls}"


class SessionEvents:
    """The mail events of one SMTP session."""

    def __init__(self, log: Logger, session_id: str, peer: str) -> None:
        self.log = log
        self.session_id = session_id
        self.peer = peer

    def _emit(self, log_format: str, event: str, **fields: object) -> None:
        self.log.info(log_format, event=event, session_id=self.session_id, peer=self.peer, **fields)

    def connect(self, client: str, *, code: int | None = None, reason: str | None = None) -> None:
        """A client connected (code and reason when it is turned away at once: 421)."""
        extra: dict[str, object] = {} if code is None else {"code": code, "reason": reason}
        self._emit(CONNECT, "connect", client=client, **extra)

    def tls(self, client: str, tls: str) -> None:
        """A TLS handshake completed, as Postfix logs it (the metrics count versions)."""
        self._emit(TLS, "tls", client=client, tls=tls)

    def disconnect(self, client: str, commands: dict[str, int]) -> None:
        """The connection closed; commands counts the commands by (lower-case) verb."""
        stats = " ".join(f"{verb}={n}" for verb, n in commands.items())
        self._emit(
            DISCONNECT_STATS if stats else DISCONNECT,
            "disconnect",
            client=client,
            stats=stats,
            commands=dict(commands),
        )

    def reject_connect(self, client: str, verdict: Verdict) -> None:
        """Policy refused the client at its greeting."""
        self._emit(
            REJECT_CONNECT,
            "reject",
            stage="CONNECT",
            client=client,
            code=verdict.code,
            reason=verdict.text,
        )

    def reject(
        self,
        stage: str,
        client: str,
        verdict: Verdict,
        *,
        mail_from: str | None,
        rcpt: str | None,
        proto: str,
        helo: str,
    ) -> None:
        """MAIL, RCPT or END-OF-MESSAGE refused (mail_from, rcpt: None when not known)."""
        log_format = REJECT
        fields: dict[str, object] = {}
        if mail_from is not None:
            log_format += REJECT_FROM
            fields["mail_from"] = printable(mail_from)
        if rcpt is not None:
            log_format += REJECT_TO
            fields["rcpt"] = printable(rcpt)
        self._emit(
            log_format + REJECT_END,
            "reject",
            stage=stage,
            client=client,
            code=verdict.code,
            reason=verdict.text,
            proto=proto,
            helo=helo,
            **fields,
        )

    def discard(self, mail_from: str) -> None:
        """A message accepted and dropped (policy DISCARD)."""
        self._emit(DISCARD, "discard", mail_from=printable(mail_from))

    def client(
        self, queue_id: str, client: str, sasl_method: str | None, sasl_username: str | None
    ) -> None:
        """A message got its queue id (sasl_username: the login, if the client logged in)."""
        if sasl_username is None:
            self._emit(CLIENT, "client", queue_id=queue_id, client=client)
            return
        self._emit(
            CLIENT_SASL,
            "client",
            queue_id=queue_id,
            client=client,
            sasl_method=sasl_method,
            sasl_username=sasl_username,
        )

    def auth(self, client: str, sasl_method: str | None, sasl_username: str) -> None:
        """A successful login."""
        self._emit(
            AUTH, "auth", client=client, sasl_method=sasl_method, sasl_username=sasl_username
        )

    def auth_failed(self, client: str, sasl_method: str | None, username: str) -> None:
        """A failed login, in the words fail2ban's postfix-sasl filter looks for."""
        self._login_event(AUTH_FAILED, "auth_failed", client, sasl_method, username)

    def auth_refused(self, client: str, sasl_method: str | None, username: str) -> None:
        """A login refused by the throttle, its credentials not checked."""
        self._login_event(AUTH_REFUSED, "auth_refused", client, sasl_method, username)

    def _login_event(
        self, log_format: str, event: str, client: str, sasl_method: str | None, username: str
    ) -> None:
        self._emit(
            log_format,
            event,
            client=client,
            sasl_method=sasl_method,
            sasl_username=printable(username, 100),
        )

    def timeout(self, client: str, stage: str) -> None:
        """A deadline passed; stage is the last command (CONNECT before any)."""
        self._emit(TIMEOUT, "timeout", client=client, stage=stage)
