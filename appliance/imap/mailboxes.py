"""The IMAP commands on folders (RFC 3501 6.3; 5258 LIST-EXTENDED, 5819 LIST-STATUS, 3502
MULTIAPPEND, 4315 APPENDUID): SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST
LSUB STATUS APPEND. Each does its store work in one worker job and answers from the result.
Folder names are IMAP names (appliance.imap.parser.mailbox_name decodes modified UTF-7) with
'/' between levels; a name the store cannot hold is answered NO (not BAD: it parsed)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from appliance.imap.listing import RETURNS, SELECTION, Entry, list_entries, lsub_entries
from appliance.imap.parser import Command, astring, mailbox_name, parse_datetime
from appliance.imap.search import sequence_set_text
from appliance.imap.selected import SYSTEM_FLAGS, Selected, flags_lines
from appliance.imap.session import AUTH, SELECTED, IMAPSession, command
from appliance.imap.tokens import Arg, Atom, IString, ParseError
from appliance.imap.wire import mailbox_out
from appliance.interfaces import FolderListing, Mailbox, MailStore

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
STATES = (AUTH, SELECTED)


def _mailbox(s: IMAPSession) -> Mailbox:
    assert s.mailbox is not None
    return s.mailbox


def _name(arg: Arg) -> str:
    name = mailbox_name(arg)
    return name[:-1] if name.endswith("/") and len(name) > 1 else name


def _out(name: str) -> str:
    return mailbox_out(name).decode("utf-8")


def _storage_no(s: IMAPSession, tag: str, exc: BaseException) -> None:
    if isinstance(exc, FileNotFoundError):
        s.tagged(tag, "NO", "[NONEXISTENT] Mailbox doesn't exist.")
    elif isinstance(exc, FileExistsError):
        s.tagged(tag, "NO", "[ALREADYEXISTS] Mailbox already exists.")
    elif isinstance(exc, ValueError):
        s.tagged(tag, "NO", f"[CANNOT] {exc}")
    else:
        raise exc


def _run_folder_op(s: IMAPSession, tag: str, what: str, fn: Any, *args: Any) -> None:
    def done(_: object) -> defer.Deferred[None]:
        return s.finish(tag, f"{what} completed.", sync=False)  # (input held until then)

    def failed(failure: Any) -> None:
        exc = failure.value
        if isinstance(exc, (FileNotFoundError, FileExistsError, ValueError)):
            _storage_no(s, tag, exc)
            return
        failure.raiseException()

    s.hold(s.run(fn, *args).addCallbacks(done, failed), tag, what)


# ------------------------------------------------------------------ SELECT / EXAMINE


def _select(s: IMAPSession, cmd: Command, readonly: bool) -> None:
    if len(cmd.args) != 1:
        raise ParseError(f"{cmd.name} needs a mailbox name")
    folder = _name(cmd.args[0])
    mailbox = _mailbox(s)
    store = s.factory.store
    s.unselect()  # RFC 3501: a failed SELECT leaves no mailbox selected

    def opened(listing: FolderListing) -> tuple[FolderListing, int, list[str]]:
        first = store.claim_recent(mailbox, folder, not readonly)
        return listing, first, store.keywords(mailbox, folder)

    def load() -> tuple[FolderListing, int, list[str]]:
        return opened(store.list_messages(mailbox, folder))

    def selected(result: tuple[FolderListing, int, list[str]]) -> None:
        listing, first, keywords = result
        sel = Selected(folder, readonly, listing, first)
        sel.keywords = keywords
        s.selected = sel
        s.last_poll = s.factory.reactor.seconds()
        s.state = SELECTED
        for line in flags_lines(keywords, readonly):
            s.untagged(line)
        s.untagged(f"{sel.exists} EXISTS")
        s.untagged(f"{sel.count_recent()} RECENT")
        unseen = sel.unseen_first()
        if unseen is not None:
            s.untagged(f"OK [UNSEEN {unseen}] First unseen.")
        s.untagged(f"OK [UIDVALIDITY {sel.uidvalidity}] UIDs valid")
        s.untagged(f"OK [UIDNEXT {sel.uidnext}] Predicted next UID")
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        s.tagged(cmd.tag, "OK", f"[{mode}] {cmd.name.capitalize()} completed.")

    def failed(failure: Any) -> None:
        if failure.check(FileNotFoundError, ValueError):
            s.tagged(cmd.tag, "NO", "[NONEXISTENT] Mailbox doesn't exist: " + folder[:100])
            return
        failure.raiseException()

    s.hold(s.run(load).addCallbacks(selected, failed), cmd.tag, cmd.name)


@command("SELECT", *STATES)
def do_select(s: IMAPSession, cmd: Command, uid: bool) -> None:
    _select(s, cmd, False)


@command("EXAMINE", *STATES)
def do_examine(s: IMAPSession, cmd: Command, uid: bool) -> None:
    _select(s, cmd, True)


# ------------------------------------------------------------------ CREATE DELETE RENAME


@command("CREATE", *STATES)
def do_create(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 1:
        raise ParseError("CREATE needs a mailbox name")
    folder = _name(cmd.args[0])
    if folder.upper() == "INBOX":
        s.tagged(cmd.tag, "NO", "[ALREADYEXISTS] Mailbox already exists.")
        return
    _run_folder_op(s, cmd.tag, "Create", s.factory.store.create_folder, _mailbox(s), folder)


@command("DELETE", *STATES)
def do_delete(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 1:
        raise ParseError("DELETE needs a mailbox name")
    folder = _name(cmd.args[0])
    if s.selected is not None and s.selected.folder == folder:
        s.unselect()  # as Dovecot: deleting the selected folder unselects it
    _run_folder_op(s, cmd.tag, "Delete", s.factory.store.delete_folder, _mailbox(s), folder)


@command("RENAME", *STATES)
def do_rename(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 2:
        raise ParseError("RENAME needs two mailbox names")
    old, new = _name(cmd.args[0]), _name(cmd.args[1])
    store = s.factory.store
    _run_folder_op(s, cmd.tag, "Rename", store.rename_folder, _mailbox(s), old, new)


@command("SUBSCRIBE", *STATES)
def do_subscribe(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 1:
        raise ParseError("SUBSCRIBE needs a mailbox name")
    folder = _name(cmd.args[0])
    store = s.factory.store
    mailbox = _mailbox(s)

    def subscribe() -> None:
        if folder not in store.folders(mailbox):
            raise FileNotFoundError(folder)
        store.set_subscribed(mailbox, folder, True)

    _run_folder_op(s, cmd.tag, "Subscribe", subscribe)


@command("UNSUBSCRIBE", *STATES)
def do_unsubscribe(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 1:
        raise ParseError("UNSUBSCRIBE needs a mailbox name")
    folder = _name(cmd.args[0])
    store = s.factory.store
    _run_folder_op(s, cmd.tag, "Unsubscribe", store.set_subscribed, _mailbox(s), folder, False)


# ------------------------------------------------------------------ LIST / LSUB


def _options(arg: Arg, allowed: set[str], what: str) -> list[Arg]:
    if not isinstance(arg, list):
        raise ParseError(f"Invalid {what} options")
    out: list[Arg] = []
    for item in arg:
        if isinstance(item, Atom) and item.upper() in allowed:
            out.append(Atom(item.upper()))
        elif isinstance(item, list) and out and out[-1] == "STATUS":
            out.append(item)
        else:
            raise ParseError(f"Unknown {what} option")
    return out


def _status_items(arg: Arg) -> list[str]:
    if not isinstance(arg, list) or not arg:
        raise ParseError("STATUS needs a list of items")
    items = []
    for item in arg:
        if not isinstance(item, Atom) or item.upper() not in STATUS_ITEMS:
            raise ParseError("Invalid STATUS item")
        items.append(item.upper())
    return items


def _status_line(store: MailStore, mailbox: Mailbox, folder: str, items: list[str]) -> str:
    listing = store.list_messages(mailbox, folder)
    values = []
    for item in items:
        if item == "MESSAGES":
            value = len(listing.messages)
        elif item == "RECENT":
            first = store.claim_recent(mailbox, folder, False)
            value = sum(1 for m in listing.messages if m.uid >= first)
        elif item == "UIDNEXT":
            value = listing.uidnext
        elif item == "UIDVALIDITY":
            value = listing.uidvalidity
        else:
            value = sum(1 for m in listing.messages if "\\Seen" not in m.flags)
        values.append(f"{item} {value}")
    return f"STATUS {_out(folder)} ({' '.join(values)})"


def _entry_line(verb: str, entry: Entry) -> str:
    line = f'{verb} ({" ".join(entry.attributes)}) "/" {_out(entry.name)}'
    if entry.childinfo:
        line += ' ("CHILDINFO" ("SUBSCRIBED"))'
    return line


@command("LIST", *STATES)
def do_list(s: IMAPSession, cmd: Command, uid: bool) -> None:
    args = list(cmd.args)
    selection: set[str] = set()
    if args and isinstance(args[0], list):
        selection = {str(a) for a in _options(args.pop(0), SELECTION, "LIST selection")}
        if "RECURSIVEMATCH" in selection and "SUBSCRIBED" not in selection:
            raise ParseError("RECURSIVEMATCH needs another selection option")
    if len(args) not in (2, 4):
        raise ParseError("LIST needs a reference and a mailbox pattern")
    reference = astring(args[0]).decode("utf-8", "replace")
    if isinstance(args[1], list):
        if not args[1]:
            raise ParseError("Empty pattern list")
        patterns = [mailbox_name(p) if astring(p) else "" for p in args[1]]
    else:
        patterns = [mailbox_name(args[1]) if astring(args[1]) else ""]
    returns: set[str] = set()
    status: list[str] = []
    if len(args) == 4:
        if not (isinstance(args[2], Atom) and args[2].upper() == "RETURN"):
            raise ParseError("Expected RETURN")
        opts = _options(args[3], RETURNS, "LIST return")
        for i, opt in enumerate(opts):
            if isinstance(opt, list):
                continue
            returns.add(str(opt))
            if opt == "STATUS":
                if i + 1 >= len(opts) or not isinstance(opts[i + 1], list):
                    raise ParseError("STATUS needs a list of items")
                status = _status_items(opts[i + 1])
    if not selection and not returns and patterns == [""]:
        # RFC 3501: the hierarchy delimiter and the root of the reference
        s.untagged('LIST (\\Noselect) "/" ""')
        s.tagged(cmd.tag, "OK", "List completed.")
        return
    store = s.factory.store
    mailbox = _mailbox(s)

    def gather() -> list[str]:
        entries = list_entries(
            store.folders(mailbox),
            store.subscriptions(mailbox),
            s.special,
            reference,
            patterns,
            selection,
            returns,
        )
        lines = []
        for entry in entries:
            lines.append(_entry_line("LIST", entry))
            if status and entry.selectable:
                try:
                    lines.append(_status_line(store, mailbox, entry.name, status))
                except FileNotFoundError:
                    pass
        return lines

    def answer(lines: list[str]) -> None:
        for line in lines:
            s.untagged(line)
        s.tagged(cmd.tag, "OK", "List completed.")

    s.hold(s.run(gather).addCallback(answer), cmd.tag, "LIST")


@command("LSUB", *STATES)
def do_lsub(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 2:
        raise ParseError("LSUB needs a reference and a mailbox pattern")
    reference = astring(cmd.args[0]).decode("utf-8", "replace")
    pattern = mailbox_name(cmd.args[1]) if astring(cmd.args[1]) else ""
    store = s.factory.store
    mailbox = _mailbox(s)

    def answer(subscribed: list[str]) -> None:
        for entry in lsub_entries(subscribed, reference, pattern):
            s.untagged(_entry_line("LSUB", entry))
        s.tagged(cmd.tag, "OK", "Lsub completed.")

    s.hold(s.run(store.subscriptions, mailbox).addCallback(answer), cmd.tag, "LSUB")


@command("STATUS", *STATES)
def do_status(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 2:
        raise ParseError("STATUS needs a mailbox name and a list of items")
    folder = _name(cmd.args[0])
    items = _status_items(cmd.args[1])
    store = s.factory.store

    def answer(line: str) -> defer.Deferred[None]:
        s.untagged(line)
        return s.finish(cmd.tag, "Status completed.", sync=False)

    def failed(failure: Any) -> None:
        if failure.check(FileNotFoundError, ValueError):
            s.tagged(cmd.tag, "NO", "[NONEXISTENT] Mailbox doesn't exist.")
            return
        failure.raiseException()

    d = s.run(_status_line, store, _mailbox(s), folder, items)
    s.hold(d.addCallbacks(answer, failed), cmd.tag, "STATUS")


# ------------------------------------------------------------------ APPEND


def _append_messages(args: list[Arg]) -> list[tuple[frozenset[str], float | None, bytes]]:
    """The messages of an APPEND (MULTIAPPEND: several): ([flags], [date-time], literal)."""
    out = []
    i = 0
    while i < len(args):
        flags: frozenset[str] = frozenset()
        received = None
        if isinstance(args[i], list):
            names = []
            for flag in args[i]:
                if not isinstance(flag, Atom):
                    raise ParseError("Invalid flag")
                text = str(flag)
                if text.startswith("\\"):
                    canonical = next((f for f in SYSTEM_FLAGS if f.upper() == text.upper()), None)
                    if canonical is None:
                        raise ParseError(f"Invalid system flag {text[:30]}")
                    text = canonical
                names.append(text)
            flags = frozenset(names)
            i += 1
        if i < len(args) and isinstance(args[i], IString) and not args[i].literal:  # type: ignore[union-attr]
            received = parse_datetime(bytes(args[i]).decode("ascii", "replace"))  # type: ignore[arg-type]
            i += 1
        if i >= len(args) or not isinstance(args[i], IString):
            raise ParseError("APPEND needs the message as a literal")
        out.append((flags, received, bytes(args[i])))  # type: ignore[arg-type]
        i += 1
    if not out:
        raise ParseError("APPEND needs a message")
    return out


@command("APPEND", *STATES)
def do_append(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) < 2:
        raise ParseError("APPEND needs a mailbox name and a message")
    folder = _name(cmd.args[0])
    messages = _append_messages(list(cmd.args[1:]))
    if any(not data for _, _, data in messages):
        s.tagged(cmd.tag, "NO", "Can't save a zero byte message.")
        return
    store = s.factory.store
    mailbox = _mailbox(s)

    def save() -> tuple[int, list[int]]:
        validity, uids = 0, []
        for flags, received, data in messages:
            validity, new_uid = store.add_message(mailbox, folder, data, flags, received)
            uids.append(new_uid)
        return validity, uids

    def saved(result: tuple[int, list[int]]) -> defer.Deferred[None]:
        validity, uids = result
        code = f"[APPENDUID {validity} {sequence_set_text(sorted(uids))}]"
        return s.finish(cmd.tag, f"{code} Append completed.")

    def failed(failure: Any) -> None:
        if failure.check(FileNotFoundError):
            s.tagged(cmd.tag, "NO", "[TRYCREATE] Mailbox doesn't exist.")
            return
        if failure.check(ValueError):
            s.tagged(cmd.tag, "NO", f"[CANNOT] {failure.value}")
            return
        if failure.check(OSError):
            s.tagged(cmd.tag, "NO", "[SERVERBUG] Cannot save the message now.")
            return
        failure.raiseException()

    s.hold(s.run(save).addCallbacks(saved, failed), cmd.tag, "APPEND")
