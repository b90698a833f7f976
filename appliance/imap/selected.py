"""The selected mailbox as one IMAP session sees it: sequence numbers, UIDs, flags, \\Recent.

Sequence numbers are the session's own (RFC 3501 2.3.1.2): message n is the n-th in UID
order of what the session was last told. The store's listing moves on by itself (SMTP
delivers, another session expunges or changes flags, another node on shared storage); each
`refresh(listing)` compares it with what the session knows and returns the untagged updates
owed to the client, in RFC 3501 7.4.1 order:

- EXPUNGE for messages gone, highest sequence number first (each report shifts the ones
  after it), only when the command may carry them (not during FETCH, STORE or SEARCH; they
  wait, and the message keeps its number until then);
- EXISTS (and RECENT) for new messages, which take the next numbers;
- FETCH (FLAGS) for flags another session changed;
- FLAGS (and PERMANENTFLAGS) first when those flags or new messages carry a keyword the
  session has not been told of (RFC 3501 7.2.6: a client learns the defined flags from it).

A listing that is the very object seen last time (the store answers an unchanged folder
from memory) costs nothing. Everything here runs on the reactor thread.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from appliance.interfaces import FolderListing, StoredMessage

RECENT = "\\Recent"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flags_lines(keywords: Iterable[str], readonly: bool) -> list[str]:
    """The untagged FLAGS and PERMANENTFLAGS lines for a folder with these keywords."""
    flags = " ".join([*SYSTEM_FLAGS, *keywords])
    if readonly:
        return [f"FLAGS ({flags})", "OK [PERMANENTFLAGS ()] Read-only mailbox."]
    return [f"FLAGS ({flags})", f"OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted."]


@dataclass
class Updates:
    """What refresh() found to tell the client."""

    expunged: list[int] = field(default_factory=list)  # sequence numbers, in report order
    exists: int | None = None  # the new message count, when it grew
    recent: int | None = None
    flags: list[int] = field(default_factory=list)  # sequence numbers with changed flags
    keywords: bool = False  # keywords new to the session: FLAGS is owed before the rest

    def __bool__(self) -> bool:
        return bool(self.expunged or self.exists is not None or self.flags)


class Selected:
    """One session's view of its selected folder."""

    def __init__(self, folder: str, readonly: bool, listing: FolderListing, first_recent: int):
        self.folder = folder
        self.readonly = readonly
        self.uidvalidity = listing.uidvalidity
        self.uidnext = listing.uidnext
        self.messages: list[StoredMessage] = list(listing.messages)
        self.uids: list[int] = [m.uid for m in self.messages]
        self.recent: set[int] = {u for u in self.uids if u >= first_recent}
        self.first_recent = first_recent
        self.flags: dict[int, frozenset[str]] = {m.uid: m.flags for m in self.messages}
        self.gone: set[int] = set()  # expunged elsewhere, not yet reported
        self.seen_listing: FolderListing | None = listing
        self.keywords: list[str] = []

    # -- lookups

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def message(self, seq: int) -> StoredMessage:
        return self.messages[seq - 1]

    def flags_of(self, seq: int) -> frozenset[str]:
        """The message's flags as the session reports them (\\Recent added when ours)."""
        uid = self.uids[seq - 1]
        flags = self.flags[uid]
        return flags | {RECENT} if uid in self.recent else flags

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def unseen_first(self) -> int | None:
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in self.flags[uid]:
                return i + 1
        return None

    def count_recent(self) -> int:
        return len(self.recent)

    # -- changes the session made itself

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        if uid in self.flags:
            self.flags[uid] = flags

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Take messages out (expunged by this session or reported); their sequence numbers
        in the order to report them (highest first)."""
        doomed = set(uids)
        seqs = [i + 1 for i, uid in enumerate(self.uids) if uid in doomed]
        if not seqs:
            return []
        keep = [i for i, uid in enumerate(self.uids) if uid not in doomed]
        self.messages = [self.messages[i] for i in keep]
        self.uids = [self.uids[i] for i in keep]
        for uid in doomed:
            self.flags.pop(uid, None)
            self.recent.discard(uid)
            self.gone.discard(uid)
        return sorted(seqs, reverse=True)

    # -- what others did

    def refresh(self, listing: FolderListing, expunges_allowed: bool, first_recent: int) -> Updates:
        """Bring the view up to date with a new listing; first_recent: the UID from which new
        messages are this session's \\Recent ones (a claim made for this refresh)."""
        updates = Updates()
        if listing is self.seen_listing and not (expunges_allowed and self.gone):
            return updates
        self.seen_listing = listing
        self.uidnext = max(self.uidnext, listing.uidnext)
        present = {m.uid: m for m in listing.messages}
        for uid in self.uids:
            if uid not in present:
                self.gone.add(uid)
        if expunges_allowed and self.gone:
            updates.expunged = self.remove(list(self.gone))
        largest = self.largest_uid
        new = [m for m in listing.messages if m.uid > largest]
        for i, uid in enumerate(self.uids):
            m = present.get(uid)
            if m is not None and m.flags != self.flags[uid]:
                self.flags[uid] = m.flags
                self.messages[i] = m
                updates.flags.append(i + 1)
        if new:
            for m in new:
                self.messages.append(m)
                self.uids.append(m.uid)
                self.flags[m.uid] = m.flags
                if m.uid >= first_recent:
                    self.recent.add(m.uid)
            updates.exists = len(self.uids)
            updates.recent = len(self.recent)
        changed = [self.flags[self.uids[q - 1]] for q in updates.flags]
        updates.keywords = self.learn_keywords([*changed, *(m.flags for m in new)])
        return updates

    def learn_keywords(self, flag_sets: Iterable[frozenset[str]]) -> bool:
        """Add the keywords in flag_sets the session was not told of; whether there were any."""
        known = set(self.keywords)
        fresh = {f for flags in flag_sets for f in flags if f not in known and f[:1] != "\\"}
        if fresh:
            self.keywords = [*self.keywords, *sorted(fresh)]
        return bool(fresh)
