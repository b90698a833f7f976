"""Where a local address goes: virtusertable first, then aliases, until mailboxes or remote.

An address in a local domain is looked up in virtusertable (its own entry, else the domain's
catch-all); what that gives, or the address itself, is then looked up as an alias name in the
same domain, and so on through each target. Whatever is left is a mailbox (not yet checked to
exist: that is the user directory's answer) or a remote address to forward to; error targets
are collected as refusals. Expansion stops after MAX_ALIAS_DEPTH levels or on a loop
(550 5.4.6, logged); alias loops are refused at load, but a loop through virtusertable can
only be seen here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.logger import Logger

from appliance.interfaces import Mailbox, Verdict
from appliance.policy.aliases import AliasMap
from appliance.policy.mapfile import split_address
from appliance.policy.virtusertable import VirtualMap

MAX_ALIAS_DEPTH = 10


@dataclass
class Expansion:
    """What a local address expanded to: mailboxes, remote addresses, refusals (in order)."""

    original: str  # the address as the client gave it, for reply texts
    mailboxes: list[Mailbox] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    errors: list[Verdict] = field(default_factory=list)


def expand(
    address: str,
    original: str,
    *,
    is_local_domain: Callable[[str], bool],
    virtual: VirtualMap,
    aliases: AliasMap,
) -> Expansion:
    """Where a lower-cased local address goes; original is the RCPT address, for replies."""
    out = Expansion(original)
    _Expander(out, is_local_domain, virtual, aliases).address(address, (), 0)
    return out


class _Expander:
    """One expansion's walk; path is the chain of nodes that led here, for loop detection."""

    log = Logger()

    def __init__(
        self,
        out: Expansion,
        is_local_domain: Callable[[str], bool],
        virtual: VirtualMap,
        aliases: AliasMap,
    ) -> None:
        self.out = out
        self.is_local_domain = is_local_domain
        self.virtual = virtual
        self.aliases = aliases

    def enter(self, node: str, path: tuple[str, ...], depth: int) -> bool:
        """Whether node may be expanded; if not, the loop is logged and refused."""
        if node not in path and depth <= MAX_ALIAS_DEPTH:
            return True
        out = self.out
        self.log.warn(
            "{rcpt}: mail forwarding loop or more than {depth} levels: {reason}",
            rcpt=out.original,
            depth=MAX_ALIAS_DEPTH,
            reason=" -> ".join((*path, node)),
        )
        out.errors.append(
            Verdict(
                550, f"5.4.6 <{out.original}>: Recipient address rejected: Mail forwarding loop"
            )
        )
        return False

    def address(self, address: str, path: tuple[str, ...], depth: int) -> None:
        """An address: remote, or virtusertable and then aliases in its local domain."""
        out = self.out
        local, domain = split_address(address)
        if not self.is_local_domain(domain):
            out.remote.append(f"{address.rpartition('@')[0]}@{domain}")
            return
        here = f"{local}@{domain}"
        node = f"virtual {here}"
        if not self.enter(node, path, depth):
            return
        path = (*path, node)
        target = self.virtual.lookup(local, domain)
        if target is not None:
            if target.kind == "error":
                out.errors.append(
                    Verdict(target.code, f"{target.dsn} <{out.original}>: {target.text}")
                )
                return
            if target.kind == "local":
                if target.value != local:
                    self.name(target.value, domain, None, path, depth + 1)
                    return
            elif target.value.lower() != here:
                self.address(target.value, path, depth + 1)
                return
            # a target equal to its key ends the virtusertable lookup
        self.name(local, domain, None, path, depth)

    def name(
        self, name: str, domain: str, parent: str | None, path: tuple[str, ...], depth: int
    ) -> None:
        """A local name in domain: an alias (expanded; parent is the alias that listed it)
        or a mailbox."""
        out = self.out
        targets = self.aliases.get(name)
        if targets is None or name == parent:
            # not an alias, or an alias listing itself: Sendmail delivers to the mailbox
            out.mailboxes.append(Mailbox(domain, name))
            return
        node = f"alias {name}@{domain}"
        if not self.enter(node, path, depth + 1):
            return
        path = (*path, node)
        for t in targets:
            if t.kind == "literal":
                out.mailboxes.append(Mailbox(domain, t.value))
            elif t.kind == "name":
                self.name(t.value, domain, name, path, depth + 1)
            elif t.value.lower() == f"{name}@{domain}":
                out.mailboxes.append(Mailbox(domain, name))
            else:
                self.address(t.value, path, depth + 1)
