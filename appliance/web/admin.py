"""The status page: admin login, the summary, and the queue actions (twisted.web resources).

    GET  /            the summary (services, queue, plots, certificate, DNS, mailboxes), or a
                      redirect to /login without a session
    GET  /login       the login form (and its CSRF cookie)
    POST /login       address + password: admins only ([web] admins), through the shared
                      login throttle (appliance.login.LoginCheck, as POP3 and IMAP), then a
                      session cookie and a redirect to /
    POST /logout      ends the session
    POST /queue       flush, hold, release or delete one message or ALL (QueueAdmin, as the
                      `mailappliance queue` commands), written to the maillog and audit log
    GET  /style.css

Every POST must carry the form's CSRF token and, when the browser sends an Origin, come from
this page's own origin; the session cookie is Secure, HttpOnly, SameSite=Strict
(appliance.web.sessions). Every answer forbids framing, caching and scripts
(Content-Security-Policy). Nothing that comes from a client is echoed unescaped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from appliance.errors import ApplianceError
from appliance.interfaces import Authenticator, LoginThrottle, QueueAdmin, Summary
from appliance.login import LoginCheck
from appliance.names import parse_queue_id
from appliance.web import pages
from appliance.web.events import WebAdminEvents
from appliance.web.history import History
from appliance.web.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    LOGIN_FORM_LIFETIME,
    Session,
    Sessions,
    cookie,
    new_nonce,
    same_token,
)

MAX_FIELD = 1024  # a form field longer than this is refused
HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'"
    ),
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",  # no-referrer would make browsers send Origin: null
    b"cache-control": b"no-store",
    b"strict-transport-security": b"max-age=31536000",
}


class AdminPages:
    """What the status page's resources share; mount() puts them on the HTTPS site's root."""

    log = Logger()

    def __init__(
        self,
        *,
        hostname: str,
        admins: tuple[str, ...],
        sessions: Sessions,
        history: History,
        summary: Callable[[], defer.Deferred[Summary]],
        authenticator: Authenticator,
        throttle: LoginThrottle | None,
        queue: QueueAdmin,
        events: Logger,
        reactor: IReactorTime,
    ) -> None:
        self.hostname = hostname
        self.admins = frozenset(a.lower() for a in admins)
        self.sessions = sessions
        self.history = history
        self.summary = summary
        self.authenticator = authenticator
        self.throttle = throttle
        self.queue = queue
        self.events = events
        self.reactor = reactor

    def mount(self, root: Resource) -> None:
        root.putChild(b"", StatusResource(self))
        root.putChild(b"login", LoginResource(self))
        root.putChild(b"logout", LogoutResource(self))
        root.putChild(b"queue", QueueResource(self))
        root.putChild(b"style.css", StyleResource())

    # ------------------------------------------------------------------ request helpers

    def session_of(self, request: Request) -> Session | None:
        value = request.getCookie(COOKIE.encode("ascii"))
        return self.sessions.get(value.decode("ascii", "replace") if value else None)

    def events_for(self, request: Request) -> WebAdminEvents:
        return WebAdminEvents(
            self.events, secrets.token_hex(5).upper(), _ip(request.getClientAddress()),
            _ip(request.getHost()),
        )  # fmt: skip


def _ip(address: Any) -> str:
    return str(getattr(address, "host", "unknown"))


def field(request: Request, name: str) -> str | None:
    """One form field as text, None when missing, too long or not UTF-8."""
    values = (request.args or {}).get(name.encode("ascii"))
    if not values or len(values[0]) > MAX_FIELD:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def same_origin(request: Request) -> bool:
    """A POST from our own page: no Origin (older clients), or one naming the Host asked."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    parts = urlsplit(origin.decode("ascii", "replace"))
    return (
        parts.scheme == "https" and parts.netloc.lower() == host.decode("ascii", "replace").lower()
    )


def secure_headers(request: Request, content_type: bytes = b"text/html; charset=utf-8") -> None:
    for name, value in HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", content_type)


def redirect(request: Request, where: bytes) -> bytes:
    secure_headers(request)
    request.setResponseCode(303)
    request.setHeader(b"location", where)
    return b""


def refuse(request: Request, code: int, text: str) -> bytes:
    secure_headers(request, b"text/plain; charset=utf-8")
    request.setResponseCode(code)
    return text.encode("utf-8") + b"\n"


class _Answer:
    """An answer given later (NOT_DONE_YET): written only if the client is still there."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.gone = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, failure: Failure) -> None:
        self.gone = True

    def send(self, code: int, body: bytes, *cookies: str, location: bytes | None = None) -> None:
        if self.gone:
            return
        r = self.request
        secure_headers(r)
        r.setResponseCode(code)
        for c in cookies:
            r.responseHeaders.addRawHeader(b"set-cookie", c.encode("ascii"))
        if location is not None:
            r.setHeader(b"location", location)
        r.write(body)
        r.finish()


class _Page(Resource):
    """A resource of the status page (each is a leaf: no path below it)."""

    isLeaf = True

    def __init__(self, admin: AdminPages) -> None:
        super().__init__()
        self.admin = admin


class StyleResource(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web's API)
        secure_headers(request, b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=3600")
        return pages.STYLE


class StatusResource(_Page):
    def render_GET(self, request: Request) -> Any:  # noqa: N802
        if request.postpath not in ([], [b""]):
            return refuse(request, 404, "no such page")
        session = self.admin.session_of(request)
        if session is None:
            return redirect(request, b"/login")
        answer = _Answer(request)
        message, session.message = session.message, None

        def show(summary: Summary) -> None:
            body = pages.status_page(
                self.admin.hostname, summary, self.admin.history, session.user, session.csrf,
                message,
            )  # fmt: skip
            answer.send(200, body)

        def failed(failure: Failure) -> None:
            self.admin.log.failure("the status page could not gather the summary", failure)
            answer.send(500, pages.page("status", "<p>The summary could not be gathered; "
                                                  "the log says why.</p>"))  # fmt: skip

        defer.maybeDeferred(self.admin.summary).addCallbacks(show, failed)
        return NOT_DONE_YET


class _LoginAnswers:
    """What a refused login shows (appliance.login.LoginAnswers)."""

    def __init__(self, admin: AdminPages, answer: _Answer, nonce: str) -> None:
        self.admin = admin
        self.answer = answer
        self.nonce = nonce

    def _form(self, code: int, error: str) -> None:
        token = self.admin.sessions.login_token(self.nonce)
        self.answer.send(code, pages.login_page(self.admin.hostname, token, error))

    def blocked(self) -> None:
        self._form(429, "Too many failed logins from your address: try again later.")

    def user_blocked(self) -> None:
        self._form(429, "Too many failed logins for this address: try again later.")

    def failed(self) -> None:
        self._form(403, "Wrong address or password, or not an administrator.")

    def unavailable(self) -> None:
        self._form(503, "The user directory cannot answer now: try again later.")


class LoginResource(_Page):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        if self.admin.session_of(request) is not None:
            return redirect(request, b"/")
        nonce = new_nonce()
        secure_headers(request)
        request.responseHeaders.addRawHeader(
            b"set-cookie", cookie(LOGIN_COOKIE, nonce, LOGIN_FORM_LIFETIME).encode("ascii")
        )
        return pages.login_page(self.admin.hostname, self.admin.sessions.login_token(nonce))

    def render_POST(self, request: Request) -> Any:  # noqa: N802
        admin = self.admin
        raw = request.getCookie(LOGIN_COOKIE.encode("ascii"))
        nonce = raw.decode("ascii", "replace") if raw else None
        if not same_origin(request) or not admin.sessions.login_token_ok(
            nonce, field(request, "csrf")
        ):
            return refuse(request, 403, "the form was not sent by this page: load it again")
        assert nonce is not None
        user = (field(request, "user") or "").strip().lower()
        password = field(request, "password") or ""
        answer = _Answer(request)
        events = admin.events_for(request)
        check = LoginCheck(
            authenticator=admin.authenticator,
            throttle=admin.throttle,
            reactor=admin.reactor,
            peer_ip=events.peer,
            events=events,
            answers=_LoginAnswers(admin, answer, nonce),
        )
        # a user who is not an admin is a failed login whatever the password: no check made
        credentials = None
        if user in admin.admins:
            credentials = UsernamePassword(user.encode("utf-8"), password.encode("utf-8"))

        def accepted(login: str) -> None:
            if login.lower() not in admin.admins:  # the backend knew the user by another name
                _LoginAnswers(admin, answer, nonce).failed()
                return
            session = admin.sessions.create(login.lower())
            events.login(session.user, "PLAIN", True)
            answer.send(
                303, b"", cookie(COOKIE, session.id), cookie(LOGIN_COOKIE, "", 0), location=b"/"
            )

        check.check(credentials, user, "PLAIN", accepted)
        return NOT_DONE_YET


def _checked_session(admin: AdminPages, request: Request) -> Session | bytes:
    """The session a POST acts in, or the refusal to answer with."""
    session = admin.session_of(request)
    if session is None:
        return refuse(request, 403, "not logged in: log in again")
    if not same_origin(request) or not same_token(session.csrf, field(request, "csrf")):
        return refuse(request, 403, "the form was not sent by this page: load it again")
    return session


class LogoutResource(_Page):
    def render_POST(self, request: Request) -> bytes:  # noqa: N802
        session = _checked_session(self.admin, request)
        if isinstance(session, bytes):
            return session
        self.admin.sessions.end(session.id)
        self.admin.events_for(request).logout(session.user)
        request.responseHeaders.addRawHeader(b"set-cookie", cookie(COOKIE, "", 0).encode())
        return redirect(request, b"/login")


class QueueResource(_Page):
    def render_POST(self, request: Request) -> Any:  # noqa: N802
        admin = self.admin
        session = _checked_session(admin, request)
        if isinstance(session, bytes):
            return session
        action = field(request, "action")
        if action not in pages.ACTIONS:
            return refuse(request, 400, f"the action must be one of {', '.join(pages.ACTIONS)}")
        try:
            queue_id = parse_queue_id(field(request, "queue_id") or "")
        except ValueError as e:
            return refuse(request, 400, str(e))
        answer = _Answer(request)
        events = admin.events_for(request)
        target = queue_id or "every message"

        def done(count: int) -> None:
            events.admin(session.user, action, queue_id, count)
            session.message = f"{action} {target}: {count} message(s)"
            answer.send(303, b"", location=b"/#queue")

        def failed(failure: Failure) -> None:
            if failure.check(ApplianceError):
                session.message = f"{action} {target} failed: {failure.value}"
            else:
                admin.log.failure("queue {action} from the status page", failure, action=action)
                session.message = f"{action} {target} failed (the log says why)"
            answer.send(303, b"", location=b"/#queue")

        defer.maybeDeferred(getattr(admin.queue, action), queue_id).addCallbacks(done, failed)
        return NOT_DONE_YET
