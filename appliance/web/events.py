"""The status page's mail events: admin logins and queue actions, each a maillog line and, for
the audit log, an event with named fields (appliance.audit lists the webadmin kinds).

Logins use appliance.login's AccessEvents (the same event names and fields as POP3 and IMAP,
so the shared throttle's accounting, the metrics and fail2ban see them alike); `admin` is
the queue action an admin took, with the same fields as the control socket's.
"""

from __future__ import annotations

from appliance.login import AccessEvents

_WHO = "user=<{user}>, method={sasl_method}, rip={client}, lip={local}"
LOGOUT = "webadmin: Logout: user=<{user}>, rip={client}"
ADMIN = "webadmin: {actor}: {command} {target}: {count} message(s), rip={client}"


class WebAdminEvents(AccessEvents):
    LOGIN = "webadmin: Login: " + _WHO
    LOGIN_TLS = LOGIN + ", TLS"
    AUTH_FAILED = "webadmin: Login failed: " + _WHO  # one form, one attempt
    AUTH_REFUSED = "webadmin: Login refused (too many failed logins): " + _WHO
    TIMEOUT = REJECT = "webadmin: Disconnected: {reason}: rip={client}, lip={local}"
    TLS = "webadmin: TLS established: {tls}, rip={client}, lip={local}"

    def logout(self, user: str) -> None:
        self._emit(LOGOUT, "logout", user=user)

    def admin(self, actor: str, action: str, queue_id: str | None, count: int) -> None:
        self._emit(
            ADMIN,
            "admin",
            actor=actor,
            user=actor,
            command=f"queue {action}",
            target=queue_id or "ALL",
            queue_id=queue_id,
            count=count,
        )
