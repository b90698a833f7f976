"""LIST and LSUB (RFC 3501 6.3.8-9, RFC 5258 LIST-EXTENDED, RFC 6154 SPECIAL-USE): which
folders a pattern names, and with what attributes. Pure functions, given the folder names,
the subscriptions and the special-use map the store has.

A pattern's '*' matches anything, '%' anything but the hierarchy delimiter '/'; INBOX
matches case-insensitively. A folder whose parent does not exist (Maildir++ needs none)
shows the parent as `\\Noselect \\HasChildren`. Children attributes are always given (as
Dovecot does); `\\Subscribed` when asked for; a subscribed folder that is gone is
`\\NonExistent`. RECURSIVEMATCH with SUBSCRIBED gives a matching parent of a subscribed
folder that does not match itself the `CHILDINFO ("SUBSCRIBED")` extended item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DELIMITER = "/"
SELECTION = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
RETURNS = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}


@dataclass
class Entry:
    name: str
    attributes: list[str] = field(default_factory=list)
    childinfo: bool = False  # CHILDINFO ("SUBSCRIBED")
    selectable: bool = True


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """The names `reference` + `pattern` covers, as a regex."""
    full = reference + pattern
    out = []
    for c in full:
        if c == "*":
            out.append(".*")
        elif c == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _matches(regexes: list[re.Pattern[str]], name: str) -> bool:
    inbox = name == "INBOX" or name.startswith("INBOX/")
    return any(rx.match(name) or (inbox and _inbox_match(rx, name)) for rx in regexes)


def _inbox_match(rx: re.Pattern[str], name: str) -> bool:
    pattern = rx.pattern
    if pattern[:5].upper() == "INBOX":
        return re.compile("INBOX" + pattern[5:], re.DOTALL).match(name) is not None
    return False


def _parents(name: str) -> list[str]:
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


def list_entries(
    folders: Iterable[str],
    subscribed: Iterable[str],
    special: dict[str, str],
    reference: str,
    patterns: list[str],
    selection: set[str],
    returns: set[str],
) -> list[Entry]:
    """The LIST answer's entries, in name order (INBOX first)."""
    existing = set(folders)
    subs = set(subscribed)
    implied = {p for name in existing for p in _parents(name)} - existing
    with_children = {p for name in existing | implied for p in _parents(name)}
    regexes = [pattern_regex(reference, p) for p in patterns]
    show_subscribed = "SUBSCRIBED" in returns or "SUBSCRIBED" in selection
    entries: dict[str, Entry] = {}

    def attributes(name: str) -> list[str]:
        attrs = []
        if name not in existing:
            attrs.append("\\NonExistent" if name not in implied else "\\Noselect")
        if name in with_children:
            attrs.append("\\HasChildren")
        elif name in existing:
            attrs.append("\\HasNoChildren")
        if show_subscribed and name in subs:
            attrs.append("\\Subscribed")
        if name in special and name in existing:
            attrs.append(special[name])
        return attrs

    if "SUBSCRIBED" in selection:
        candidates = subs
    else:
        candidates = existing | implied
    for name in candidates:
        if "SPECIAL-USE" in selection and name not in special:
            continue
        if _matches(regexes, name):
            entries[name] = Entry(name, attributes(name), selectable=name in existing)
    if "SUBSCRIBED" in selection and "RECURSIVEMATCH" in selection:
        for name in subs:
            if _matches(regexes, name):
                continue
            for parent in _parents(name):
                if _matches(regexes, parent):
                    entry = entries.get(parent)
                    if entry is None:
                        entry = entries[parent] = Entry(
                            parent, attributes(parent), selectable=parent in existing
                        )
                        if parent not in subs:
                            entry.attributes = [
                                a for a in entry.attributes if a not in ("\\Subscribed",)
                            ]
                    entry.childinfo = True
    return sorted(entries.values(), key=lambda e: (e.name != "INBOX", e.name))


def lsub_entries(subscribed: Iterable[str], reference: str, pattern: str) -> list[Entry]:
    """LSUB (RFC 3501 6.3.9): subscribed names matching; with '%', a parent of a subscribed
    folder that is not subscribed itself is answered `\\Noselect`."""
    subs = set(subscribed)
    regexes = [pattern_regex(reference, pattern)]
    entries = {name: Entry(name) for name in subs if _matches(regexes, name)}
    if "%" in pattern:
        for name in subs:
            for parent in _parents(name):
                if parent not in subs and parent not in entries and _matches(regexes, parent):
                    entries[parent] = Entry(parent, ["\\Noselect"], selectable=False)
    return sorted(entries.values(), key=lambda e: (e.name != "INBOX", e.name))
