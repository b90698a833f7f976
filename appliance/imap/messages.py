"""The IMAP commands on the selected folder's messages (RFC 3501 6.4; 4315 UIDPLUS, 6851
MOVE, 3691 UNSELECT, 4731 ESEARCH, 5256 SORT/THREAD): CHECK CLOSE UNSELECT EXPUNGE SEARCH
FETCH STORE COPY MOVE SORT THREAD, each also as `UID <command>` where RFC 3501 has one.

Message sets name sequence numbers (or UIDs, for UID commands) of the session's view
(appliance.imap.selected). FETCH reads and renders batches of messages in the worker pool
and waits for the client to read each batch before the next (a FETCH 1:* of a large folder
holds at most one batch in memory); SEARCH, SORT and THREAD run in the pool too, reading a
message only when a key needs its text. A message expunged by another session but not yet
reported keeps its number and answers what the listing knows of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from appliance.imap import fetch as fetching
from appliance.imap.mime import ParsedMessage
from appliance.imap.parser import Command, SequenceSet, mailbox_name, parse_sequence_set
from appliance.imap.search import (
    BadCharset,
    esearch_response,
    parse_search,
    sequence_set_text,
)
from appliance.imap.selected import RECENT, SYSTEM_FLAGS, Selected, flags_lines
from appliance.imap.session import SELECTED, IMAPSession, command
from appliance.imap.sort import parse_sort_criteria, sort_messages
from appliance.imap.thread import thread
from appliance.imap.tokens import Arg, Atom, ParseError, text_of
from appliance.interfaces import Mailbox, StoredMessage

BATCH = 256  # messages read and rendered in one worker job
BATCH_BYTES = 2 * 1024 * 1024  # ... or this many octets of them
WHOLE = 1 << 40  # read limit meaning "all of it"
QUICK_BYTES = 256 * 1024  # a FETCH batch this small is read and rendered by QuickCalls
CHARSETS = "(UTF-8 US-ASCII)"


def _sel(s: IMAPSession) -> Selected:
    assert s.selected is not None
    return s.selected


def _mailbox(s: IMAPSession) -> Mailbox:
    assert s.mailbox is not None
    return s.mailbox


def _set(arg: Arg) -> SequenceSet:
    if not isinstance(arg, Atom):
        raise ParseError("Invalid message set")
    return parse_sequence_set(str(arg))


def targets(s: IMAPSession, arg: Arg, uid: bool) -> list[int]:
    """The sequence numbers a message set names (UIDs for a UID command); ParseError for a
    sequence number beyond the folder (a UID that does not exist is simply not there)."""
    sel = _sel(s)
    mset = _set(arg)
    if uid:
        return [sel.seq_of(u) or 0 for u in mset.members(sel.uids, sel.largest_uid)]
    for low, high in mset.resolve(sel.exists):
        if high > sel.exists or low < 1:
            raise ParseError("Invalid messageset")
    return mset.members(range(1, sel.exists + 1), sel.exists)


def _read_only(s: IMAPSession, tag: str) -> bool:
    if _sel(s).readonly:
        s.tagged(tag, "NO", "[READ-ONLY] Mailbox is read-only.")
        return True
    return False


# ------------------------------------------------------------------ CHECK CLOSE UNSELECT


@command("CHECK", SELECTED)
def do_check(s: IMAPSession, cmd: Command, uid: bool) -> None:
    s.hold(s.finish(cmd.tag, "Check completed."), cmd.tag, "CHECK")


@command("UNSELECT", SELECTED)
def do_unselect(s: IMAPSession, cmd: Command, uid: bool) -> None:
    s.unselect()
    s.tagged(cmd.tag, "OK", "Unselect completed.")


@command("CLOSE", SELECTED)
def do_close(s: IMAPSession, cmd: Command, uid: bool) -> None:
    sel = _sel(s)
    s.unselect()
    if sel.readonly:
        s.tagged(cmd.tag, "OK", "Close completed.")
        return
    d = _expunge(s, sel, None)
    d.addCallback(lambda _: s.tagged(cmd.tag, "OK", "Close completed."))
    s.hold(d, cmd.tag, "CLOSE")


# ------------------------------------------------------------------ EXPUNGE


def _expunge(s: IMAPSession, sel: Selected, uids: set[int] | None) -> defer.Deferred[list[int]]:
    """Remove the \\Deleted messages (of uids, if given); the sequence numbers to report."""
    store = s.factory.store
    mailbox = _mailbox(s)

    def listed(listing: Any) -> list[int]:
        doomed = [
            m
            for m in listing.messages
            if "\\Deleted" in m.flags and (uids is None or m.uid in uids)
        ]
        store.expunge(mailbox, sel.folder, [m.key for m in doomed])
        return [m.uid for m in doomed]

    def work() -> list[int]:
        return listed(store.list_messages(mailbox, sel.folder))

    return s.run(work).addCallback(sel.remove)


@command("EXPUNGE", SELECTED)
def do_expunge(s: IMAPSession, cmd: Command, uid: bool) -> None:
    uids = None
    if uid:
        if len(cmd.args) != 1:
            raise ParseError("UID EXPUNGE needs a UID set")
        sel = _sel(s)
        uids = set(_set(cmd.args[0]).members(sel.uids, sel.largest_uid))
    elif cmd.args:
        raise ParseError("EXPUNGE takes no arguments")
    if _read_only(s, cmd.tag):
        return
    sel = _sel(s)

    def removed(seqs: list[int]) -> defer.Deferred[None]:
        for seq in seqs:
            s.untagged(f"{seq} EXPUNGE")
        return s.finish(cmd.tag, "Expunge completed.", uid_command=uid)

    s.hold(_expunge(s, sel, uids).addCallback(removed), cmd.tag, "EXPUNGE")


# ------------------------------------------------------------------ FETCH


def _fetch_batches(sel: Selected, seqs: list[int], content: bool) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    for seq in seqs:
        current.append(seq)
        size += sel.message(seq).size if content else 0
        if len(current) >= BATCH or size >= BATCH_BYTES:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


@command("FETCH", SELECTED)
def do_fetch(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 2:
        raise ParseError("FETCH needs a message set and attributes")
    seqs = [q for q in targets(s, cmd.args[0], uid) if q]
    items = fetching.parse_items(cmd.args[1])
    sel = _sel(s)
    store = s.factory.store
    mailbox = _mailbox(s)
    content = any(i.needs_content for i in items)
    seen = not sel.readonly and any(i.sets_seen for i in items)
    add_flags = seen and not any(i.kind == "FLAGS" for i in items)
    items_and_flags = [*items, fetching.FetchItem("FLAGS")]  # for a message this FETCH marked seen

    def mark_seen() -> defer.Deferred[Any]:
        if not seen:
            return defer.succeed({})
        keys = [sel.message(q).key for q in seqs if "\\Seen" not in sel.flags_of(q)]
        if not keys:
            return defer.succeed({})
        seen_flag = frozenset({"\\Seen"})
        return s.run_quick(store.change_flags, mailbox, sel.folder, keys, seen_flag, "+")

    def marked(changed: dict[str, frozenset[str]]) -> defer.Deferred[None]:
        if changed:
            for q in seqs:
                m = sel.message(q)
                if m.key in changed:
                    sel.set_flags(m.uid, changed[m.key])
        return send(_fetch_batches(sel, seqs, content), set(changed))

    def render(batch: list[tuple[int, int, frozenset[str], float, int, str, bool]]) -> bytes:
        keys = [key for *_, key, _ in batch]
        data = store.read_messages(mailbox, sel.folder, keys, WHOLE) if content else {}
        out = []
        for seq, u, flags, received, size, key, flagged in batch:
            wanted = items_and_flags if flagged else items
            out.append(fetching.render(seq, u, flags, received, size, wanted, data.get(key), uid))
        return b"".join(out)

    def send(batches: list[list[int]], changed: set[str]) -> defer.Deferred[None]:
        def next_batch(_: object = None) -> defer.Deferred[None] | None:
            if s.lost or s.selected is not sel:
                return None
            if not batches:
                return s.finish(
                    cmd.tag, "Fetch completed.", expunges=uid, uid_command=uid, sync=False
                )
            if s.write_blocked:
                return s.drained(
                    s.factory.reactor, s.factory.settings.limits.idle_timeout
                ).addCallback(next_batch)
            batch = batches.pop(0)
            facts = []
            for q in batch:
                m = sel.message(q)
                flagged = add_flags and m.key in changed
                facts.append((q, m.uid, sel.flags_of(q), m.received, m.size, m.key, flagged))
            if not content:  # flags, sizes, dates: made here, no worker thread needed
                written(render(facts))
                return next_batch()
            small = sum(f[4] for f in facts) <= QUICK_BYTES
            run = s.run_quick if small else s.run  # a few small files: read on the reactor
            return run(render, facts).addCallback(written).addCallback(next_batch)

        first = next_batch()
        return first if first is not None else defer.succeed(None)

    def written(data: bytes) -> None:
        if not s.lost:
            s.send_bytes(data)

    s.hold(mark_seen().addCallback(marked), cmd.tag, "FETCH")


# ------------------------------------------------------------------ STORE


def _flag_names(arg: Arg) -> list[str]:
    items = arg if isinstance(arg, list) else [arg]
    names = []
    for item in items:
        if not isinstance(item, Atom):
            raise ParseError("Invalid flag")
        text = str(item)
        if text.startswith("\\"):
            canonical = next((f for f in SYSTEM_FLAGS if f.upper() == text.upper()), None)
            if canonical is None:
                if text.upper() == RECENT.upper():
                    continue  # \Recent is the server's to set
                raise ParseError(f"Invalid system flag {text[:30]}")
            text = canonical
        names.append(text)
    return names


@command("STORE", SELECTED)
def do_store(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) < 3:
        raise ParseError("STORE needs a message set, an item and flags")
    seqs = [q for q in targets(s, cmd.args[0], uid) if q]
    item = str(cmd.args[1]).upper() if isinstance(cmd.args[1], Atom) else ""
    base = item.removesuffix(".SILENT")
    if base not in ("FLAGS", "+FLAGS", "-FLAGS"):
        raise ParseError("Invalid STORE item")
    silent = item.endswith(".SILENT")
    rest = cmd.args[2:]
    flags = frozenset(_flag_names(rest[0] if len(rest) == 1 else rest))
    if _read_only(s, cmd.tag):
        return
    sel = _sel(s)
    mode = base[0] if base[0] in "+-" else "="
    store = s.factory.store
    mailbox = _mailbox(s)
    keys = [sel.message(q).key for q in seqs]

    def work() -> tuple[dict[str, frozenset[str]], list[str]]:
        changed = store.change_flags(mailbox, sel.folder, keys, flags, mode)
        return changed, store.keywords(mailbox, sel.folder)

    def stored(result: tuple[dict[str, frozenset[str]], list[str]]) -> defer.Deferred[None]:
        changed, keywords = result
        if keywords != sel.keywords:
            sel.keywords = keywords
            for line in flags_lines(keywords, sel.readonly):
                s.untagged(line)
        for q in seqs:
            m = sel.message(q)
            if m.key not in changed:
                continue
            sel.set_flags(m.uid, changed[m.key])
            if not silent:
                s.send_bytes(fetching.flags_update(q, m.uid if uid else None, sel.flags_of(q)))
        return s.finish(cmd.tag, "Store completed.", expunges=uid, uid_command=uid, sync=False)

    def failed(failure: Any) -> None:
        if failure.check(ValueError):
            s.tagged(cmd.tag, "NO", f"[LIMIT] {failure.value}")
            return
        failure.raiseException()

    # renames only (no fsync), unless a keyword new to the folder must be written down
    known = set(SYSTEM_FLAGS) | set(sel.keywords)
    run = s.run_quick if flags <= known else s.run
    s.hold(run(work).addCallbacks(stored, failed), cmd.tag, "STORE")


# ------------------------------------------------------------------ COPY / MOVE


def _copy(s: IMAPSession, cmd: Command, uid: bool, move: bool) -> None:
    if len(cmd.args) != 2:
        raise ParseError(f"{cmd.name} needs a message set and a mailbox")
    seqs = [q for q in targets(s, cmd.args[0], uid) if q]
    target = mailbox_name(cmd.args[1])
    if move and _read_only(s, cmd.tag):
        return
    sel = _sel(s)
    store = s.factory.store
    mailbox = _mailbox(s)
    by_key = {sel.message(q).key: sel.message(q).uid for q in seqs}

    def work() -> tuple[int, list[tuple[str, int]]]:
        validity, pairs = store.copy_messages(mailbox, sel.folder, list(by_key), target)
        if move:
            store.expunge(mailbox, sel.folder, [key for key, _ in pairs])
        return validity, pairs

    def copied(result: tuple[int, list[tuple[str, int]]]) -> defer.Deferred[None] | None:
        validity, pairs = result
        pairs.sort(key=lambda p: by_key[p[0]])
        code = ""
        if pairs:
            src = sequence_set_text([by_key[k] for k, _ in pairs])
            dst = ",".join(str(u) for _, u in pairs)
            code = f"[COPYUID {validity} {src} {dst}] "
        if not move:
            return s.finish(cmd.tag, f"{code}Copy completed.", expunges=uid, uid_command=uid)
        if code:
            s.untagged(f"OK {code}Moved UIDs.")
        for seq in sel.remove(by_key[k] for k, _ in pairs):
            s.untagged(f"{seq} EXPUNGE")
        return s.finish(cmd.tag, "Move completed.", uid_command=uid)

    def failed(failure: Any) -> None:
        if failure.check(FileNotFoundError, ValueError):
            s.tagged(cmd.tag, "NO", "[TRYCREATE] Mailbox doesn't exist.")
            return
        failure.raiseException()

    s.hold(s.run(work).addCallbacks(copied, failed), cmd.tag, cmd.name)


@command("COPY", SELECTED)
def do_copy(s: IMAPSession, cmd: Command, uid: bool) -> None:
    _copy(s, cmd, uid, False)


@command("MOVE", SELECTED)
def do_move(s: IMAPSession, cmd: Command, uid: bool) -> None:
    _copy(s, cmd, uid, True)


# ------------------------------------------------------------------ SEARCH SORT THREAD


class _Facts:
    """One message as SEARCH, SORT and THREAD see it (search.SearchMessage), its text read
    from the store on the first content()."""

    __slots__ = ("seq", "uid", "flags", "size", "internaldate", "largest_seq", "largest_uid",
                 "_key", "_load", "_content")  # fmt: skip

    def __init__(self, seq: int, m: StoredMessage, flags: frozenset[str], largest: tuple[int, int],
                 load: Callable[[str], ParsedMessage]) -> None:  # fmt: skip
        self.seq, self.uid, self.flags = seq, m.uid, flags
        self.size, self.internaldate = m.size, m.received
        self.largest_seq, self.largest_uid = largest
        self._key, self._load = m.key, load
        self._content: ParsedMessage | None = None

    def content(self) -> ParsedMessage:
        if self._content is None:
            self._content = self._load(self._key)
        return self._content


def _facts(s: IMAPSession, sel: Selected) -> Callable[[], list[_Facts]]:
    """What SEARCH, SORT and THREAD look at, made where the search runs from a snapshot of
    the session's view taken now (a few list and dict copies)."""
    store = s.factory.store
    mailbox = _mailbox(s)
    folder = sel.folder
    largest = (sel.exists, sel.largest_uid)
    messages = list(sel.messages)
    flags = dict(sel.flags)
    recent = set(sel.recent)

    def load(key: str) -> ParsedMessage:
        data = store.read_messages(mailbox, folder, [key], WHOLE).get(key)
        return ParsedMessage(data or b"")

    def build() -> list[_Facts]:
        out = []
        for i, m in enumerate(messages, 1):
            f = flags.get(m.uid, m.flags)
            if recent and m.uid in recent:
                f = f | {RECENT}
            out.append(_Facts(i, m, f, largest, load))
        return out

    return build


def _evaluate(s: IMAPSession, needs_content: bool, work: Callable[[], Any]) -> defer.Deferred[Any]:
    """Run a search: in the worker pool when it reads messages, here when flags, sizes,
    dates and UIDs are enough (no thread hop for SEARCH UNSEEN)."""
    if needs_content:
        return s.run(work)
    return defer.maybeDeferred(work)


def _search_args(args: Sequence[Arg]) -> tuple[set[str] | None, list[Arg]]:
    """ESEARCH's RETURN (...) off the front: the options (None without RETURN)."""
    rest = list(args)
    if rest and isinstance(rest[0], Atom) and rest[0].upper() == "RETURN":
        if len(rest) < 2 or not isinstance(rest[1], list):
            raise ParseError("RETURN needs a list of options")
        options = set()
        for opt in rest[1]:
            if not isinstance(opt, Atom) or opt.upper() not in ("MIN", "MAX", "ALL", "COUNT"):
                raise ParseError("Unknown RETURN option")
            options.add(opt.upper())
        return options or {"ALL"}, rest[2:]
    return None, rest


@command("SEARCH", SELECTED)
def do_search(s: IMAPSession, cmd: Command, uid: bool) -> None:
    options, args = _search_args(cmd.args)
    if not args:
        raise ParseError("SEARCH needs search keys")
    try:
        program = parse_search(args, uid_mode=uid)
    except BadCharset:
        s.tagged(cmd.tag, "NO", f"[BADCHARSET {CHARSETS}] Unsupported charset")
        return
    sel = _sel(s)
    facts = _facts(s, sel)

    def work() -> list[int]:
        return [f.uid if uid else f.seq for f in facts() if program.matches(f)]

    def found(values: list[int]) -> defer.Deferred[None]:
        if options is None:
            s.untagged("SEARCH" + "".join(f" {v}" for v in values))
        else:
            s.send_line(esearch_response(cmd.tag, uid, values, options))
        return s.finish(cmd.tag, "Search completed.", expunges=uid, uid_command=uid, sync=False)

    s.hold(_evaluate(s, program.needs_content, work).addCallback(found), cmd.tag, "SEARCH")


def _charset_and_keys(args: Sequence[Arg], what: str) -> list[Arg]:
    if len(args) < 2:
        raise ParseError(f"{what} needs a charset and search keys")
    charset = (text_of(args[0]) or "").upper()
    if charset not in ("UTF-8", "US-ASCII"):
        raise BadCharset(f"Unsupported charset {charset[:20]}")
    return list(args[1:])


@command("SORT", SELECTED)
def do_sort(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if not cmd.args:
        raise ParseError("SORT needs sort criteria")
    criteria = parse_sort_criteria(cmd.args[0])
    try:
        program = parse_search(_charset_and_keys(cmd.args[1:], "SORT"), uid_mode=uid)
    except BadCharset:
        s.tagged(cmd.tag, "NO", f"[BADCHARSET {CHARSETS}] Unsupported charset")
        return
    sel = _sel(s)
    facts = _facts(s, sel)

    def work() -> list[int]:
        matched = [f for f in facts() if program.matches(f)]
        return [f.uid if uid else f.seq for f in sort_messages(criteria, matched)]

    def found(values: list[int]) -> defer.Deferred[None]:
        s.untagged("SORT" + "".join(f" {v}" for v in values))
        return s.finish(cmd.tag, "Sort completed.", expunges=uid, uid_command=uid, sync=False)

    s.hold(s.run(work).addCallback(found), cmd.tag, "SORT")


@command("THREAD", SELECTED)
def do_thread(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if not cmd.args or not isinstance(cmd.args[0], Atom):
        raise ParseError("THREAD needs an algorithm")
    algorithm = cmd.args[0].upper()
    if algorithm not in ("REFERENCES", "ORDEREDSUBJECT"):
        s.tagged(cmd.tag, "BAD", "Unknown thread algorithm")
        return
    try:
        program = parse_search(_charset_and_keys(cmd.args[1:], "THREAD"), uid_mode=uid)
    except BadCharset:
        s.tagged(cmd.tag, "NO", f"[BADCHARSET {CHARSETS}] Unsupported charset")
        return
    sel = _sel(s)
    facts = _facts(s, sel)

    def work() -> str:
        return thread(algorithm, [f for f in facts() if program.matches(f)], use_uid=uid)

    def found(text: str) -> defer.Deferred[None]:
        s.untagged(f"THREAD {text}" if text else "THREAD")
        return s.finish(cmd.tag, "Thread completed.", expunges=uid, uid_command=uid, sync=False)

    s.hold(s.run(work).addCallback(found), cmd.tag, "THREAD")
