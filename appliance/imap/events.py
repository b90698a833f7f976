"""The IMAP server's mail events: each maillog line it writes, as an event with named fields.

Every method emits one event on the listener's Logger (appliance.log.mail_logger("imapd"))
with a literal format string in Dovecot's words (`imap-login: Login: user=<u>, method=PLAIN,
rip=192.0.2.7, lip=192.0.2.1, TLS`), so the fail2ban dovecot filter matches the failures.
appliance.login.AccessEvents emits them (event names, session fields, cut user names);
this module gives the formats and the IMAP-only events.
"""

from __future__ import annotations

from appliance.login import AccessEvents

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
TLS = "imap-login: TLS established: {tls}, rip={client}, lip={local}"


class IMAPEvents(AccessEvents):
    """The mail events of one IMAP session."""

    LOGIN = LOGIN
    LOGIN_TLS = LOGIN_TLS
    AUTH_FAILED = AUTH_FAILED
    AUTH_REFUSED = AUTH_REFUSED
    TIMEOUT = TIMEOUT
    REJECT = REJECT
    TLS = TLS

    def logout(self, user: str, reason: str, *, bytes_in: int, bytes_out: int) -> None:
        self._emit(
            LOGOUT, "logout", user=user, reason=reason, bytes_in=bytes_in, bytes_out=bytes_out
        )
