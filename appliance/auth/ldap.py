"""Users from an LDAP directory (OpenLDAP, replicated by syncrepl): Authenticator, cred checker
and UserDirectory.

Several appliances share one directory, which replaces Cyrus SASL's saslauthd and the passwd
file. A login is the classic search-then-bind:

1. on a connection bound as the service account, search `base_dn` with `user_filter`, the
   address escaped per RFC 4515 (so `*)(uid=*` is a literal, not a filter);
2. exactly one entry must match; none or several refuse the login;
3. a simple bind as that entry's DN with the password decides. An empty password is refused
   before anything is sent: LDAP treats it as an unauthenticated bind that "succeeds".

ldap3 is blocking, so every directory call runs in our own twisted ThreadPool (`pool_size`
threads) and the reactor never waits. Connections are kept between requests in two small pools,
each connection used by one thread at a time: service-bound ones for searches, and ones only ever
used for user binds (a bind replaces the identity, so they never search). A pooled connection
that fails (the server restarted, a replica went away) is dropped and the request retried once
on a fresh one.

Transport security: `ldaps://` URLs, or `ldap://` with `starttls=True`, verify the server
certificate against `ca_file` (the system CAs if none), with host name checking, TLS 1.2 or
later. A StartTLS that fails is an error, never a fallback to plaintext. Several URLs fail over
in order (ldap3 ServerPool, FIRST, active: the first server that accepts a connection).

A directory that cannot be reached, times out, refuses our service account or answers with an
error fails the request with LDAPUnavailable (an AuthUnavailable), which SMTP turns into
454 4.7.0 (AUTH) or 451 (RCPT), not into a permanent refusal. The directory keeps no CRAM-MD5
secrets, so CRAM-MD5 is never offered with it.
"""

from __future__ import annotations

import math
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.config import set_config_parameter
from ldap3.utils.conv import escape_filter_chars
from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from appliance.interfaces import AuthUnavailable, SaslCredentials

if TYPE_CHECKING:
    from appliance.interfaces import Authenticator, UserDirectory

T = TypeVar("T")

# ldap3 sleeps this long (default 10 s) after each unsuccessful round of the server pool before
# giving up; we try each server once and report the directory down at once instead.
set_config_parameter("POOLING_LOOP_TIMEOUT", 0)

# Result codes of a user bind that mean "these credentials are not accepted" (RFC 4511):
# inappropriateAuthentication, invalidCredentials, insufficientAccessRights, unwillingToPerform
# (e.g. a locked account). Anything else (busy, unavailable, other) is the directory's problem.
_REFUSED_BIND = {48, 49, 50, 53}
_SEARCH_OK = {0, 4}  # success, sizeLimitExceeded (we ask for at most 2 entries)


class LDAPUnavailable(AuthUnavailable):
    """The directory could not answer (down, timed out, TLS or service-bind failure)."""


class _Unavailable(Exception):
    """Raised in the worker thread; carries a reason for the log and for LDAPUnavailable."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry  # worth one more go on a fresh connection


class _Refused(Exception):
    """Raised in the worker thread: the credentials are not accepted, for this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _VerifyingTls(ldap3.Tls):
    """ldap3.Tls whose handshake verifies the chain and the host name, TLS 1.2 or later.

    ldap3 turns the context's check_hostname off and matches names itself with the deprecated
    ssl.match_hostname, which does not know IP addresses; OpenSSL checks them here instead.
    """

    def __init__(self, ca_file: Path | None) -> None:
        super().__init__(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=str(ca_file) if ca_file is not None else None,
        )
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self.context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


class _ConnectionPool:
    """Idle ldap3 connections; a connection is out of the pool while a thread uses it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()

    def take(self) -> ldap3.Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give_back(self, conn: ldap3.Connection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        _close(conn)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: S110 - the connection is being thrown away anyway
        pass


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _result_text(conn: ldap3.Connection) -> str:
    result = conn.result or {}
    text = f"{result.get('description', 'no result')} ({result.get('result', '?')})"
    if result.get("message"):
        text += f": {result['message']}"
    return text


@implementer(ICredentialsChecker)
class LDAPDirectory(Service):
    """Authenticator, twisted.cred checker (IUsernamePassword) and UserDirectory backed by LDAP.

    The avatar id is the lower-cased address. Wrong password, unknown user, an address that
    matches several entries and an empty password fail with UnauthorizedLogin; a directory that
    cannot answer fails with LDAPUnavailable. start() (or startService) before use, stop()
    when done; stop() waits for running lookups (each is bounded by `timeout`).
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        *,
        urls: list[str],
        base_dn: str,
        user_filter: str = "(mail=%s)",
        bind_dn: str | None,
        bind_password: str | None,
        starttls: bool = False,
        ca_file: Path | None = None,
        pool_size: int = 4,
        timeout: float = 5.0,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one LDAP URL is needed")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
                raise ValueError(f"expected an LDAP URL like ldaps://ldap.example.com, got {url!r}")
        if "%s" not in user_filter or not user_filter.startswith("("):
            raise ValueError(f"user_filter must be a filter holding %s, got {user_filter!r}")
        if bind_dn and not bind_password:
            raise ValueError("bind_dn needs a bind_password (an empty one is an anonymous bind)")
        if pool_size < 1 or timeout <= 0:
            raise ValueError("pool_size and timeout must be positive")
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self.urls = list(urls)
        self.base_dn = base_dn
        self.user_filter = user_filter
        self.bind_dn = bind_dn or None
        self.bind_password = bind_password
        self.starttls = starttls
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.pool_size = pool_size
        self.timeout = timeout
        self.reactor = reactor
        self.connections_opened = 0  # for monitoring and tests: pooled connections are reused

        uses_tls = starttls or any(_is_ldaps(u) for u in self.urls)
        # one SSLContext for all threads (safe to share); checked here, not on first login
        try:
            self._tls = _VerifyingTls(self.ca_file) if uses_tls else None
        except (OSError, ssl.SSLError, ldap_exc.LDAPException) as e:
            raise ValueError(f"cannot use CA file {self.ca_file}: {e}") from None
        try:
            self._new_server_pool()
        except ldap_exc.LDAPException as e:
            raise ValueError(f"bad LDAP URL in {self.urls}: {e}") from None
        self._service_conns = _ConnectionPool(pool_size)
        self._auth_conns = _ConnectionPool(pool_size)
        self._counter_lock = threading.Lock()
        self._threadpool: ThreadPool | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._threadpool is None:
            self._threadpool = ThreadPool(minthreads=0, maxthreads=self.pool_size, name="ldap")
            self._threadpool.start()

    def stop(self) -> None:
        pool, self._threadpool = self._threadpool, None
        if pool is not None:
            pool.stop()
        self._service_conns.close_all()
        self._auth_conns.close_all()

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    # ------------------------------------------------------------------ public API

    def authenticate(self, credentials: SaslCredentials) -> Deferred[str]:
        """The login for good credentials, as requestAvatarId; CRAM-MD5 is always refused."""
        return self.requestAvatarId(credentials)

    def cram_md5_available(self) -> bool:
        """Never: the directory holds no CRAM-MD5 secrets (a user bind needs the password)."""
        return False

    # twisted.cred types avatar ids as bytes; ours are the login as text (Authenticator)
    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]
        if not IUsernamePassword.providedBy(credentials):
            return fail(UnauthorizedLogin("unsupported credentials"))
        address = _text(getattr(credentials, "username", None))
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        if not address or not isinstance(password, bytes) or not password:
            # an empty password would be an unauthenticated bind, which LDAP "accepts"
            self.log.info(
                "LDAP login refused for {user}: {reason}", user=address, reason="empty credentials"
            )
            return fail(UnauthorizedLogin("bad credentials"))
        address = address.lower()
        d = self._in_thread(self._authenticate, address, password)

        def refused(failure: Any) -> Any:
            failure.trap(_Refused)
            self.log.info(
                "LDAP login refused for {user}: {reason}", user=address, reason=failure.value.reason
            )
            raise UnauthorizedLogin("bad credentials")

        return d.addErrback(refused)

    def exists(self, address: str) -> Deferred[bool]:
        """Whether some directory entry matches user_filter for address."""
        if not address:
            return succeed(False)
        address = address.lower()

        def found(count: int) -> bool:
            if count > 1:
                self.log.warn(
                    "LDAP: {count} entries match {rcpt}; that user cannot log in",
                    count=count,
                    rcpt=address,
                )
            return count > 0

        return self._in_thread(self._count, address).addCallback(found)

    # ------------------------------------------------------------------ reactor side

    def _in_thread(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        pool = self._threadpool
        if pool is None:
            return fail(LDAPUnavailable("LDAP directory not started"))
        assert self.reactor is not None, "LDAPDirectory needs a reactor to run lookups"
        d = deferToThreadPool(self.reactor, pool, work, *args)

        def unavailable(failure: Any) -> Any:
            failure.trap(_Unavailable)
            reason = failure.value.reason
            self.log.warn("LDAP directory unavailable: {reason}", reason=reason)
            raise LDAPUnavailable(f"LDAP directory unavailable: {reason}")

        return d.addErrback(unavailable)

    # ------------------------------------------------------------------ worker threads
    # These never log (twisted.logger observers expect the reactor thread): they return or
    # raise _Refused/_Unavailable, and the reactor side logs.

    def _authenticate(self, address: str, password: bytes) -> str:
        dns = self._with_connection(self._service_conns, True, self._search, address)
        if len(dns) != 1:
            raise _Refused("no such user" if not dns else f"{len(dns)} entries match")
        ok, detail = self._with_connection(self._auth_conns, False, self._bind_as, dns[0], password)
        if not ok:
            raise _Refused(detail)
        return address

    def _count(self, address: str) -> int:
        return len(self._with_connection(self._service_conns, True, self._search, address))

    def _with_connection(
        self,
        pool: _ConnectionPool,
        service: bool,
        work: Callable[..., T],
        *args: Any,
    ) -> T:
        """Run work(conn, *args) on a pooled connection, once more on a fresh one if it broke."""
        conn = pool.take()
        reused = conn is not None
        try:
            if conn is None:
                conn = self._connect(service)
            result = work(conn, *args)
        except _Unavailable as e:
            if conn is not None:
                _close(conn)
            if not (reused and e.retry):
                raise
            conn = self._connect(service)
            try:
                result = work(conn, *args)
            except BaseException:
                _close(conn)
                raise
        except BaseException:
            if conn is not None:
                _close(conn)
            raise
        pool.give_back(conn)
        return result

    def _connect(self, service: bool) -> ldap3.Connection:
        """A new connection, TLS started if configured, bound as the service account if asked."""
        with self._counter_lock:
            self.connections_opened += 1
        conn = ldap3.Connection(
            self._new_server_pool(),
            user=self.bind_dn if service else None,
            password=self.bind_password if service else None,
            authentication=ldap3.SIMPLE if service and self.bind_dn else ldap3.ANONYMOUS,
            client_strategy=ldap3.SYNC,
            read_only=True,
            raise_exceptions=False,
            auto_referrals=False,
            # ldap3 packs it into SO_RCVTIMEO as an integer
            receive_timeout=max(1, math.ceil(self.timeout)),
        )
        try:
            conn.open(read_server_info=False)
            if self.starttls and not conn.server.ssl:
                if not conn.start_tls(read_server_info=False):
                    raise _Unavailable(f"StartTLS with {conn.server.host} failed")
            if service and not conn.bind(read_server_info=False):
                raise _Unavailable(f"service bind as {self.bind_dn} refused: {_result_text(conn)}")
        except ldap_exc.LDAPException as e:
            _close(conn)
            raise _Unavailable(f"cannot connect to {self._server_names()}: {e}") from e
        except BaseException:
            _close(conn)
            raise
        return conn

    def _new_server_pool(self) -> ldap3.ServerPool:
        """Servers for one connection, in URL order.

        ldap3 Server and ServerPool objects keep per-connection state (current address, pool
        state keyed by connection and never released), so sharing them between threads would
        race and leak; they are cheap, so each connection gets its own.
        """
        servers = [
            ldap3.Server(
                url,
                use_ssl=_is_ldaps(url),
                tls=self._tls,
                connect_timeout=self.timeout,
                get_info=ldap3.NONE,
            )
            for url in self.urls
        ]
        # FIRST + active=1: the first server that accepts a TCP connection, one round only
        # (active=True would loop forever while every server is down).
        return ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=False)

    def _server_names(self) -> str:
        return ", ".join(self.urls)

    def _search(self, conn: ldap3.Connection, address: str) -> list[str]:
        """DNs of the entries matching user_filter for address (at most 2: enough to refuse)."""
        search_filter = self.user_filter.replace("%s", escape_filter_chars(address))
        try:
            conn.search(
                self.base_dn,
                search_filter,
                search_scope=ldap3.SUBTREE,
                attributes=[ldap3.NO_ATTRIBUTES],
                size_limit=2,
                time_limit=max(1, math.ceil(self.timeout)),
            )
        except ldap_exc.LDAPCommunicationError as e:
            raise _Unavailable(f"search failed: {e}", retry=_stale(e)) from e
        except ldap_exc.LDAPException as e:
            raise _Unavailable(f"search failed: {e}") from e
        code = (conn.result or {}).get("result")
        if code not in _SEARCH_OK:
            raise _Unavailable(f"search in {self.base_dn} failed: {_result_text(conn)}")
        return [r["dn"] for r in conn.response or () if r.get("type") == "searchResEntry"]

    def _bind_as(self, conn: ldap3.Connection, dn: str, password: bytes) -> tuple[bool, str]:
        """Simple bind as dn; (accepted, reason). The password is not kept on the connection."""
        conn.user = dn
        conn.password = password  # bytes go out raw, as ldapwhoami -w sends them
        conn.authentication = ldap3.SIMPLE
        try:
            ok = conn.bind(read_server_info=False)
        except ldap_exc.LDAPCommunicationError as e:
            raise _Unavailable(f"bind failed: {e}", retry=_stale(e)) from e
        except ldap_exc.LDAPException as e:
            raise _Unavailable(f"bind failed: {e}") from e
        finally:
            conn.password = None
        if ok:
            return True, "ok"
        code = (conn.result or {}).get("result")
        if code in _REFUSED_BIND:
            return False, _result_text(conn)
        raise _Unavailable(f"bind as {dn} failed: {_result_text(conn)}")


def _stale(error: Exception) -> bool:
    """A broken pooled connection (server restarted) is worth retrying; a timeout is not."""
    return not isinstance(error, TimeoutError)


def _is_ldaps(url: str) -> bool:
    return url.lower().startswith("ldaps://")


if TYPE_CHECKING:
    _authenticator: type[Authenticator] = LDAPDirectory
    _user_directory: type[UserDirectory] = LDAPDirectory

__all__ = ["LDAPDirectory", "LDAPUnavailable"]
