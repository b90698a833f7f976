"""The POP3 server's mail events: each maillog line it writes, as an event with named fields.

Every method emits one event on the listener's Logger (appliance.log.mail_logger("pop3d")) with
a literal format string, in Dovecot's words (`pop3-login: Login: user=<u>, method=PLAIN,
rip=192.0.2.7, lip=192.0.2.1, TLS`), so the fail2ban dovecot filter matches the failures.
appliance.login.AccessEvents emits them (event names, session fields, cut user names);
this module gives the formats and the POP3-only events.
"""

from __future__ import annotations

from appliance.login import AccessEvents

LOGIN = "pop3-login: Login: user=<{user}>, method={sasl_method}, rip={client}, lip={local}"
LOGIN_TLS = LOGIN + ", TLS"
AUTH_FAILED = (
    "pop3-login: Disconnected (auth failed, {attempts} attempts): user=<{user}>,"
    " method={sasl_method}, rip={client}, lip={local}"
)
AUTH_REFUSED = (
    "pop3-login: Login refused (too many failed logins): user=<{user}>, method={sasl_method},"
    " rip={client}, lip={local}"
)
IN_USE = "pop3-login: Mailbox in use: user=<{user}>, rip={client}, lip={local}"
LOGOUT = (
    "pop3({user}): Disconnected: {reason} top={top}/{top_bytes}, retr={retr}/{retr_bytes},"
    " del={deleted}/{messages}, size={size}"
)
TIMEOUT = "pop3-login: Disconnected: {reason}: rip={client}, lip={local}"
REJECT = "pop3-login: Disconnected: {reason}: rip={client}, lip={local}"
TLS = "pop3-login: TLS established: {tls}, rip={client}, lip={local}"


class POP3Events(AccessEvents):
    """The mail events of one POP3 session."""

    LOGIN = LOGIN
    LOGIN_TLS = LOGIN_TLS
    AUTH_FAILED = AUTH_FAILED
    AUTH_REFUSED = AUTH_REFUSED
    TIMEOUT = TIMEOUT
    REJECT = REJECT
    TLS = TLS

    def in_use(self, user: str) -> None:
        self._emit(IN_USE, "in_use", user=user)

    def logout(
        self,
        user: str,
        reason: str,
        *,
        top: int,
        top_bytes: int,
        retr: int,
        retr_bytes: int,
        deleted: int,
        messages: int,
        size: int,
    ) -> None:
        self._emit(
            LOGOUT,
            "logout",
            user=user,
            reason=reason,
            top=top,
            top_bytes=top_bytes,
            retr=retr,
            retr_bytes=retr_bytes,
            deleted=deleted,
            messages=messages,
            size=size,
        )
