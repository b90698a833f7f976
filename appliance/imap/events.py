"""The IMAP server's mail events: each maillog line it writes, as an event with named fields.

Every method emits one event on the listener's Logger (appliance.log.mail_logger("imapd"))
with a literal format string in Dovecot's words (`imap-login: Login: user=<u>, method=PLAIN,
rip=192.0.2.7, lip=192.0.2.1, TLS`), so the fail2ban dovecot filter matches the failures.
`event` names what happened (login, auth_failed, auth_refused, logout, timeout, reject);
session_id, peer and client (the client's IP) are on every event. Client-given text (user
names) is cut with printable() here.
"""

from __future__ import annotations

from twisted.logger import Logger

from appliance.log import printable

LOGIN = "imap-login: Login: user=<{user}>, method={sasl_method}, rip={client}, lip={local}"
LOGIN_TLS = LOGIN + ", TLS"
AUTH_FAILED = (
    "imap-login: Disconnected (auth failed, {attempts} attempts): user=<{user}>,"
    " method={sasl_method}, rip={client}, lip={local}"
)
AUTH_REFUSED = (
    "imap-login: Login refused (too many failed logins): user=<{user}>, method={sasl_method},"
    " rip={client}, lip={local}"
)
LOGOUT = "imap({user}): Disconnected: {reason} in={bytes_in} out={bytes_out}"
TIMEOUT = "imap-login: Disconnected: {reason}: rip={client}, lip={local}"
REJECT = "imap-login: Disconnected: {reason}: rip={client}, lip={local}"


class IMAPEvents:
    """The mail events of one IMAP session."""

    def __init__(self, log: Logger, session_id: str, peer: str, local: str) -> None:
        self.log = log
        self.session_id = session_id
        self.peer = peer
        self.local = local

    def _emit(self, log_format: str, event: str, **fields: object) -> None:
        self.log.info(
            log_format,
            event=event,
            session_id=self.session_id,
            peer=self.peer,
            client=self.peer,
            local=self.local,
            **fields,
        )

    def login(self, user: str, method: str, tls: bool) -> None:
        self._emit(LOGIN_TLS if tls else LOGIN, "login", user=user, sasl_method=method, tls=tls)

    def auth_failed(self, user: str, method: str, attempts: int) -> None:
        self._emit(
            AUTH_FAILED,
            "auth_failed",
            user=printable(user, 100),
            sasl_method=method,
            attempts=attempts,
        )

    def auth_refused(self, user: str, method: str) -> None:
        self._emit(AUTH_REFUSED, "auth_refused", user=printable(user, 100), sasl_method=method)

    def logout(self, user: str, reason: str, *, bytes_in: int, bytes_out: int) -> None:
        self._emit(
            LOGOUT, "logout", user=user, reason=reason, bytes_in=bytes_in, bytes_out=bytes_out
        )

    def timeout(self, reason: str) -> None:
        self._emit(TIMEOUT, "timeout", reason=reason)

    def reject(self, reason: str) -> None:
        self._emit(REJECT, "reject", reason=reason)
