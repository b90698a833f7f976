"""SendmailPolicy: the connect, sender and recipient decisions, from the four Sendmail files.

It implements `appliance.interfaces.Policy`. Each file is optional and a `WatchedFile`, re-read
when it changes; the access values mean:

- Connect: REJECT/ERROR refuse the connection; RELAY lets the client relay; DISCARD drops every
  message of the connection (check_sender answers discard); OK and RELAY also let an
  unauthenticated client use a local sender domain.
- From: REJECT/ERROR/DISCARD for that sender; OK/RELAY let an unauthenticated client use that
  local sender address. An authenticated user may only send as an address it owns: its login,
  or an address whose virtusertable/aliases resolution reaches its mailbox (553 otherwise).
  Unauthenticated senders in a local domain get 530 5.7.0. The null sender is always allowed.
- To: REJECT/ERROR/DISCARD for that recipient; OK passes the access check (the address is still
  resolved and must exist; OK does not open relaying); RELAY also allows relaying to it.

Recipients with routing tricks (`user%other.com@163.com`, `@163.com:user@other.com`,
`other.com!user@163.com`, a quoted `@`) get 550 5.7.1 unless the client authenticated. A local
recipient is expanded (see `appliance.policy.expansion`) and each mailbox checked with the user
directory. When an alias fans out, unknown users and error targets are logged and skipped; the
recipient is refused only when nothing deliverable is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.deferreds import value_now
from appliance.errors import ConfigError
from appliance.interfaces import Mailbox, Resolution, UserDirectory, Verdict
from appliance.policy.access import AccessMap, AccessRule, parse_access
from appliance.policy.aliases import AliasMap, parse_aliases
from appliance.policy.expansion import Expansion, expand
from appliance.policy.local_host_names import parse_local_host_names
from appliance.policy.mapfile import drop_source_route, routing_trick, split_address, valid_domain
from appliance.policy.virtusertable import VirtualMap, parse_virtusertable
from appliance.watched import Parser, WatchedFile, utf8_parser

if TYPE_CHECKING:
    from appliance.interfaces import Policy

STAT_INTERVAL = 1.0  # seconds between stat() calls per file

T = TypeVar("T")


class _NoFile(Generic[T]):
    """A policy file that is not configured: always its empty value."""

    path: Path | None = None

    def __init__(self, empty: T) -> None:
        self.value = empty

    def load(self) -> list[str]:
        return []

    def get(self) -> T:
        return self.value


_Source = WatchedFile[T] | _NoFile[T]


def _source(
    path: Path | None,
    parse: Parser[T],
    empty: T,
    clock: Callable[[], float],
    on_change: Callable[[], None] | None = None,
) -> _Source[T]:
    if path is None:
        return _NoFile(empty)
    return WatchedFile(path, parse, empty, clock=clock, interval=STAT_INTERVAL, on_change=on_change)


class SendmailPolicy:
    """Connect, sender and recipient decisions from the Sendmail-style files."""

    log = Logger()

    def __init__(
        self,
        *,
        local_domains: Iterable[str],
        local_host_names: Path | None = None,
        access: Path | None = None,
        virtusertable: Path | None = None,
        aliases: Path | None = None,
        users: UserDirectory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems: list[str] = []
        configured: set[str] = set()
        for domain in local_domains:
            d = domain.lower().rstrip(".")
            if valid_domain(d):
                configured.add(d)
            else:
                problems.append(f"local_domains: not a valid domain name: {domain!r}")
        self._configured = frozenset(configured)
        self.users = users
        self._local_host_names: _Source[frozenset[str]] = _source(
            local_host_names,
            utf8_parser(parse_local_host_names),
            frozenset(),
            clock,
            self._check_virtual,
        )
        self._access: _Source[AccessMap] = _source(
            access, utf8_parser(parse_access), AccessMap(), clock
        )
        self._virtual: _Source[VirtualMap] = _source(
            virtusertable,
            utf8_parser(parse_virtusertable),
            VirtualMap(),
            clock,
            self._check_virtual,
        )
        self._aliases: _Source[AliasMap] = _source(
            aliases, utf8_parser(parse_aliases), AliasMap(), clock
        )
        for source in (self._local_host_names, self._access, self._virtual, self._aliases):
            problems.extend(source.load())
        if not problems and not self.local_domains():
            problems.append("no local domains: set [smtp] local_domains or local_host_names")
        if problems:
            raise ConfigError(problems)
        self._check_virtual()

    # ------------------------------------------------------------------ domains

    def local_domains(self) -> frozenset[str]:
        return self._configured | self._local_host_names.get()

    def is_local_domain(self, domain: str) -> bool:
        d = domain.lower().rstrip(".")
        return d in self._configured or d in self._local_host_names.get()

    def _check_virtual(self) -> None:
        """Warn about virtusertable entries for domains we do not accept: they never apply."""
        local = self._configured | self._local_host_names.value
        for line, domain in self._virtual.value.foreign(local):
            self.log.warn(
                "{path}:{line}: {domain} is not a local domain, so this entry never applies",
                path=str(self._virtual.path),
                line=line,
                domain=domain,
            )

    # ------------------------------------------------------------------ connect

    def check_connect(self, ip: str, hostname: str | None) -> Verdict:
        """The access decision for a new client (Connect: and untagged IP and host entries)."""
        rule = self._access.get().connect(ip, hostname)
        return self._connect_verdict(rule, ip, hostname)

    @staticmethod
    def _connect_verdict(rule: AccessRule | None, ip: str, hostname: str | None) -> Verdict:
        if rule is None or rule.action == "OK":
            return Verdict()
        if rule.action == "RELAY":
            return Verdict(relay=True)
        if rule.action == "DISCARD":
            return Verdict(discard=True)
        if rule.action == "ERROR":
            return Verdict(rule.code, rule.text)
        return Verdict(
            550, f"5.7.1 <{hostname or 'unknown'}[{ip}]>: Client host rejected: Access denied"
        )

    # ------------------------------------------------------------------ sender

    def check_sender(
        self, address: str, ip: str, hostname: str | None, auth_user: str | None
    ) -> Deferred[Verdict]:
        """The MAIL FROM decision (always fired; a Deferred for directory-backed checks later)."""
        return defer.maybeDeferred(self._check_sender, address, ip, hostname, auth_user)

    def _check_sender(
        self, address: str, ip: str, hostname: str | None, auth_user: str | None
    ) -> Verdict:
        access = self._access.get()
        client = access.connect(ip, hostname)
        if client is not None and client.action in ("REJECT", "ERROR"):
            # refused at connect already; answered again in case the caller went on
            return self._connect_verdict(client, ip, hostname)
        discard = client is not None and client.action == "DISCARD"
        if address == "":
            return Verdict(discard=discard)  # bounces must always get through
        sender = access.lookup("from", address)
        if sender is not None:
            if sender.action == "REJECT":
                return Verdict(550, f"5.7.1 <{address}>: Sender address rejected: Access denied")
            if sender.action == "ERROR":
                return Verdict(sender.code, sender.text)
            if sender.action == "DISCARD":
                return Verdict(discard=True)
        if auth_user is not None:
            if not self._owns(auth_user, address):
                return Verdict(553, f"5.7.1 Sender address rejected: not owned by user {auth_user}")
            return Verdict(discard=discard)
        trusted = (client is not None and client.action in ("OK", "RELAY")) or (
            sender is not None and sender.action in ("OK", "RELAY")
        )
        if self.is_local_domain(split_address(address)[1]) and not trusted:
            return Verdict(530, "5.7.0 Authentication required")
        return Verdict(discard=discard)

    def _owns(self, auth_user: str, address: str) -> bool:
        """Whether the login auth_user may use address as its sender."""
        login = auth_user.lower()
        local, domain = split_address(address)
        if f"{local}@{domain}" == login:
            return True
        if not self.is_local_domain(domain):
            return False
        if "@" in login:
            user_local, user_domain = split_address(login)
            mine = Mailbox(user_domain, user_local)

            def matches(box: Mailbox) -> bool:
                return box == mine
        else:
            # a directory that logs users in by bare name owns that name in every local domain
            if local == login:
                return True

            def matches(box: Mailbox) -> bool:
                return box.localpart == login

        expansion = self._expand(f"{local}@{domain}", address)
        return any(matches(box) for box in expansion.mailboxes)

    # ------------------------------------------------------------------ recipient

    def resolve_recipient(
        self,
        address: str,
        ip: str,
        hostname: str | None,
        auth_user: str | None,
        client_relay: bool,
    ) -> Deferred[Resolution]:
        """The RCPT TO decision: where the address goes, or the reply refusing it."""
        try:
            return self._resolve_recipient(address, ip, hostname, auth_user, client_relay)
        except Exception:
            return defer.fail(Failure())

    def _resolve_recipient(
        self,
        address: str,
        ip: str,
        hostname: str | None,
        auth_user: str | None,
        client_relay: bool,
    ) -> Deferred[Resolution]:
        original = address
        if routing_trick(address):
            if auth_user is None:
                return _refuse(550, f"5.7.1 <{original}>: Relay access denied")
            address = drop_source_route(address)
        access = self._access.get()
        rule = access.lookup("to", address)
        to_relay = False
        if rule is not None:
            if rule.action == "REJECT":
                return _refuse(
                    550, f"5.7.1 <{original}>: Recipient address rejected: Access denied"
                )
            if rule.action == "ERROR":
                return _refuse(rule.code, rule.text)
            if rule.action == "DISCARD":
                return defer.succeed(Resolution(Verdict(discard=True)))
            to_relay = rule.action == "RELAY"
        local, domain = split_address(address)
        if not self.is_local_domain(domain):
            client = access.connect(ip, hostname)
            if (
                auth_user is not None
                or client_relay
                or to_relay
                or (client is not None and client.action == "RELAY")
            ):
                relay_to = f"{address.rpartition('@')[0]}@{domain}"
                return defer.succeed(Resolution(remote=True, forward_to=(relay_to,)))
            return _refuse(550, f"5.7.1 <{original}>: Relay access denied")
        expansion = self._expand(f"{local}@{domain}", original)
        boxes = list(dict.fromkeys(expansion.mailboxes))

        def decide(found: list[bool]) -> Resolution:
            good = [box for box, ok in zip(boxes, found, strict=True) if ok]
            missing = [box.address for box, ok in zip(boxes, found, strict=True) if not ok]
            remote = list(dict.fromkeys(expansion.remote))
            if good or remote:
                if missing or expansion.errors:
                    self.log.warn(
                        "{rcpt}: skipped unknown users {missing} and {errors} failed targets",
                        rcpt=original,
                        missing=", ".join(missing) or "(none)",
                        errors=len(expansion.errors),
                    )
                return Resolution(
                    mailboxes=tuple(good), remote=bool(remote), forward_to=tuple(remote)
                )
            if expansion.errors:
                return Resolution(expansion.errors[0])
            return Resolution(
                Verdict(550, f"5.1.1 <{original}>: Recipient address rejected: User unknown")
            )

        def lookup_failed(failure: Failure) -> Resolution:
            reason = getattr(failure.value, "subFailure", failure).getErrorMessage()
            self.log.warn("{rcpt}: user lookup failed: {reason}", rcpt=original, reason=reason)
            return Resolution(
                Verdict(
                    451, f"4.3.0 <{original}>: Recipient address rejected: temporary lookup failure"
                )
            )

        checks: list[Deferred[bool]]
        try:
            checks = [self.users.exists(box.address) for box in boxes]
        except Exception:
            checks = [defer.fail()]
        values = [value_now(check) for check in checks]
        if all(ready for ready, _ in values):  # a user file answers at once: no Deferreds
            return defer.succeed(decide([bool(found) for _, found in values]))
        d = defer.gatherResults(checks, consumeErrors=True)
        return d.addCallbacks(decide, lookup_failed)

    def _expand(self, address: str, original: str) -> Expansion:
        """Where a local address goes: mailboxes (not yet checked), remote addresses, errors."""
        return expand(
            address,
            original,
            is_local_domain=self.is_local_domain,
            virtual=self._virtual.get(),
            aliases=self._aliases.get(),
        )


def _refuse(code: int, text: str) -> Deferred[Resolution]:
    return defer.succeed(Resolution(Verdict(code, text)))


if TYPE_CHECKING:
    _implements: type[Policy] = SendmailPolicy
