"""SEARCH: the criteria's parsing and matching, ESEARCH's answers, and Dovecot's imaptest
search-* and esearch scripts run against a simulated mailbox.

The simulation (ScriptRun, also used by test_sort) reads an imaptest script and its mbox the
way imaptest does (src/mailbox-source-mbox.c, src/test-parser.c, src/test-exec.c): each mbox
entry without its "From " line, every line ending CRLF (the blank line before the next
"From " stays in the message), INTERNALDATE from the "From " line (APPEND sends it), the
"messages:" count taken from the start of the mbox and round again. Its commands (APPEND,
STORE, EXPUNGE, FETCH UID/RFC822.SIZE, STATUS UIDNEXT, SEARCH, SORT, THREAD, with UID)
change or answer the mailbox; each expected untagged line must match an answer, with
imaptest's $variables: bound ones stand for their value, unbound ones take it from the
answer ("$tag" is the command's tag); case and double quotes do not matter.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.imap.mime import ParsedMessage
from appliance.imap.parser import parse_command, parse_sequence_set
from appliance.imap.search import (
    BadCharset,
    MessageFacts,
    SearchResult,
    address_text,
    esearch_response,
    parse_search,
    sequence_set_text,
)
from appliance.imap.sort import parse_sort_criteria, sort_messages
from appliance.imap.thread import thread
from appliance.imap.tokens import Arg, Atom, IString, ParseError

IMAPTEST = Path(__file__).parent / "imaptest"  # a copy of imaptest's src/tests (README there)

_FROM_LINE = re.compile(
    r"From \S+\s+\w{3} (\w{3})\s+(\d+) (\d\d):(\d\d):(\d\d) (\d{4})(?: ([+-])(\d\d)(\d\d))?"
)
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


def _from_time(line: str) -> float | None:
    m = _FROM_LINE.match(line)
    if m is None:
        return None
    mon, day, hh, mm, ss, year, sign, zh, zm = m.groups()
    t = calendar.timegm((int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss)))
    if sign:
        t -= (int(zh) * 3600 + int(zm) * 60) * (-1 if sign == "-" else 1)
    return float(t)


def read_mbox(path: Path) -> list[tuple[bytes, float]]:
    """The messages of an imaptest mbox: (octets, INTERNALDATE)."""
    out: list[tuple[bytes, float]] = []
    lines: list[str] | None = None
    when = 0.0
    text = path.read_text("latin-1")
    for line in text.removesuffix("\n").split("\n"):
        t = _from_time(line) if line.startswith("From ") else None
        if t is not None:
            if lines is not None:
                out.append(("".join(x + "\r\n" for x in lines).encode("latin-1"), when))
            lines, when = [], t
        elif lines is not None:
            lines.append(line)
    if lines:
        out.append(("".join(x + "\r\n" for x in lines).encode("latin-1"), when))
    return out


@dataclass
class Step:
    line: int
    reply: str  # ok, no or bad
    command: str
    expected: list[str] = field(default_factory=list)


def read_script(path: Path) -> tuple[dict[str, str], list[Step]]:
    settings: dict[str, str] = {}
    steps: list[Step] = []
    header = True
    for n, line in enumerate(path.read_text().split("\n"), 1):
        if header:
            if not line:
                header = False
            elif ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                settings[key.strip()] = value.strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.lower() in ("ok", "no", "bad"):
            steps.append(Step(n, word.lower(), rest))
        elif word == "*":
            steps[-1].expected.append(line)
    return settings, steps


class _Stored:
    def __init__(self, uid: int, data: bytes, internaldate: float) -> None:
        self.uid = uid
        self.data = data
        self.internaldate = internaldate
        self.flags: set[str] = {"\\Recent"}
        self.parsed: ParsedMessage | None = None

    def content(self) -> ParsedMessage:
        if self.parsed is None:
            self.parsed = ParsedMessage(self.data)
        return self.parsed


@dataclass
class Outcome:
    step: Step
    expected: str  # the expected line, or the tagged reply
    ok: bool
    got: list[str]


class ScriptRun:
    """An imaptest script run against the simulated mailbox."""

    def __init__(self, name: str) -> None:
        self.path = IMAPTEST / name
        self.settings, self.steps = read_script(self.path)
        mbox = self.path.with_name(name + ".mbox")
        self.source = read_mbox(mbox if mbox.exists() else IMAPTEST / "default.mbox")
        self.next_source = 0
        self.messages: list[_Stored] = []
        self.next_uid = 1
        self.variables: dict[str, str] = {"mailbox": "testbox"}
        if self.settings.get("state") != "created":
            count = self.settings.get("messages", "all")
            for _ in range(len(self.source) if count == "all" else int(count)):
                self.append()

    def append(self) -> list[str]:
        data, when = self.source[self.next_source % len(self.source)]
        self.next_source += 1
        self.messages.append(_Stored(self.next_uid, data, when))
        self.next_uid += 1
        return [f"* {len(self.messages)} EXISTS"]

    def facts(self) -> list[MessageFacts]:
        largest_uid = self.messages[-1].uid if self.messages else 0
        return [
            MessageFacts(
                i,
                m.uid,
                frozenset(m.flags),
                len(m.data),
                m.internaldate,
                len(self.messages),
                largest_uid,
                m.content,
            )
            for i, m in enumerate(self.messages, 1)
        ]

    def _expand(self, text: str) -> str:
        def value(m: re.Match[str]) -> str:
            if m.group() == "$$":
                return "$"
            return self.variables[m.group(1) or m.group(2)]

        return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", value, text)

    def _selected(self, members: Arg, uid: bool) -> list[_Stored]:
        assert isinstance(members, Atom)
        largest = (self.messages[-1].uid if uid else len(self.messages)) if self.messages else 0
        sset = parse_sequence_set(str(members))
        return [
            m for i, m in enumerate(self.messages, 1) if sset.contains(m.uid if uid else i, largest)
        ]

    def _found(self, args: list[Arg], uid: bool) -> list[MessageFacts]:
        program = parse_search(args, uid_mode=uid)
        return [m for m in self.facts() if program.matches(m)]

    def execute(self, tag: str, command: str) -> list[str]:
        """The untagged answers; ParseError for a BAD or NO."""
        cmd = parse_command(f"{tag} {command}".encode())
        name, args, uid = cmd.name, cmd.args, False
        if name == "UID":
            assert isinstance(args[0], Atom)
            name, args, uid = args[0].upper(), args[1:], True
        if name == "APPEND":
            return self.append()
        if name == "STORE":
            change = str(args[1]).upper().removesuffix(".SILENT")
            flags = {str(f) for f in (args[2] if isinstance(args[2], list) else [args[2]])}
            for m in self._selected(args[0], uid):
                lowered = {f.lower() for f in flags}
                kept = {f for f in m.flags if f.lower() not in lowered}
                if change == "FLAGS":
                    m.flags = flags | {f for f in m.flags if f.lower() == "\\recent"}
                elif change == "+FLAGS":
                    m.flags = kept | flags
                else:
                    m.flags = kept
            return []
        if name == "EXPUNGE":
            out: list[str] = []
            kept_messages: list[_Stored] = []
            for m in self.messages:
                if any(f.lower() == "\\deleted" for f in m.flags):
                    out.append(f"* {len(kept_messages) + 1} EXPUNGE")
                else:
                    kept_messages.append(m)
            self.messages = kept_messages
            return out
        if name == "FETCH":
            item = str(args[1]).upper()
            return [
                f"* {self.messages.index(m) + 1} FETCH ({item} "
                f"{m.uid if item == 'UID' else len(m.data)})"
                for m in self._selected(args[0], uid)
            ]
        if name == "STATUS":
            return [f"* STATUS {self.variables['mailbox']} (UIDNEXT {self.next_uid})"]
        if name == "SEARCH":
            if args and isinstance(args[0], Atom) and args[0].upper() == "RETURN":
                assert isinstance(args[1], list)
                options = {str(o) for o in args[1]}
                values = [m.uid if uid else m.seq for m in self._found(args[2:], uid)]
                return [esearch_response(tag, uid, values, options)]
            values = [m.uid if uid else m.seq for m in self._found(args, uid)]
            return [SearchResult(values, uid).search_response()]
        if name == "SORT":
            criteria = parse_sort_criteria(args[0])
            found = self._found([Atom("CHARSET"), *args[1:]], uid)
            ordered = sort_messages(criteria, found)
            return [" ".join(["* SORT", *(str(m.uid if uid else m.seq) for m in ordered)])]
        if name == "THREAD":
            assert isinstance(args[0], Atom)
            found = self._found([Atom("CHARSET"), *args[1:]], uid)
            return ["* THREAD " + thread(args[0], found, use_uid=uid)]
        return []  # SELECT and the like: nothing to check here

    def _pattern(self, expected: str, tag: str) -> re.Pattern[str]:
        out: list[str] = []
        seen: set[str] = set()
        for m in re.finditer(r"\$\$|\$\{(\w+)\}|\$(\w*)|\s+|.", expected.replace('"', "")):
            text = m.group()
            name = m.group(1) or m.group(2)
            if text == "$$":
                out.append(re.escape("$"))
            elif name == "tag":
                out.append(re.escape(tag))
            elif name is not None and name in self.variables:
                out.append(re.escape(self.variables[name]))
            elif name:
                out.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^\\s()]+?)")
                seen.add(name)
            elif text.startswith("$"):
                out.append(r"[^\s()]*?")
            else:
                out.append(r"\s+" if text.isspace() else re.escape(text))
        return re.compile("".join(out), re.IGNORECASE)

    def run(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for n, step in enumerate(self.steps, 1):
            tag = f"a{n}"
            try:
                got = self.execute(tag, self._expand(step.command))
                reply = "ok"
            except BadCharset:
                got, reply = [], "no"
            except ParseError as e:
                got, reply = [f"BAD {e}"], "bad"
            outcomes.append(Outcome(step, step.reply, reply == step.reply, got))
            answers = [" ".join(g.replace('"', "").split()) for g in got]
            for expected in step.expected:
                pattern = self._pattern(" ".join(expected.split()), tag)
                match = next((m for a in answers if (m := pattern.fullmatch(a))), None)
                if match is not None:
                    self.variables.update(match.groupdict())
                outcomes.append(Outcome(step, expected, match is not None, got))
        return outcomes


def check_script(name: str) -> None:
    failures = [o for o in ScriptRun(name).run() if not o.ok]
    assert not failures, "\n".join(
        f"line {o.step.line}: {o.step.command!r}: expected {o.expected!r}, got {o.got!r}"
        for o in failures
    )


SEARCH_SCRIPTS = [
    "search-addresses",
    "search-body",
    "search-date",
    "search-flags",
    "search-header",
    "search-sets",
    "search-size",
    "esearch",
]


@pytest.mark.parametrize("name", SEARCH_SCRIPTS)
def test_imaptest_script(name: str) -> None:
    check_script(name)


# -- parsing


def _parse(text: str) -> list[Arg]:
    return parse_command(f"a SEARCH {text}".encode()).args


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "Missing search criteria"),
        ("FROM", "Missing argument for FROM"),
        ("HEADER subject", "Missing argument for HEADER"),
        ("OR SEEN", "Missing search key"),
        ("NOT", "Missing search key"),
        ("FOO", "Unknown search key: FOO"),
        ("LARGER x", "LARGER needs a number"),
        ("SINCE 31-Feb-2020", "Invalid date"),
        ("SINCE yesterday", "Invalid date"),
        ("UID 1:x", "Invalid sequence set"),
        ("()", "Empty search key list"),
        ('"ALL"', "Search key expected, not a string"),
        ("FROM (a)", "FROM needs a string argument"),
        ("CHARSET", "Missing argument for CHARSET"),
        ("CHARSET UTF-8", "Missing search criteria"),
    ],
)
def test_parse_errors(text: str, error: str) -> None:
    args = _parse(text) if text else []
    with pytest.raises(ParseError, match=re.escape(error)):
        parse_search(args, uid_mode=False)


def test_charsets() -> None:
    for charset in ("utf-8", "US-ASCII", '"UTF-8"'):
        program = parse_search(_parse(f"CHARSET {charset} ALL"), uid_mode=True)
        assert program.charset == charset.strip('"').upper() and program.uid_mode
    with pytest.raises(BadCharset):
        parse_search(_parse("CHARSET ISO-8859-1 ALL"), uid_mode=False)


def test_needs_content() -> None:
    cheap = "ALL SEEN NOT DELETED OR 1:3 UID 5 LARGER 10 SINCE 1-Feb-1994 (KEYWORD $x NEW)"
    assert not parse_search(_parse(cheap), uid_mode=False).needs_content
    for key in ("FROM x", "BODY x", "TEXT x", "HEADER x y", "SENTON 1-Feb-1994", "NOT TO x"):
        assert parse_search(_parse(f"SEEN OR ALL {key}"), uid_mode=False).needs_content


# -- matching


RAW = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\r\n"
    b"To: team: a@example.org, b@example.org;\r\n"
    b"Subject: Quarterly\r\n  report\r\n"
    b"Date: Mon, 26 Mar 2007 00:30:00 +0300\r\n"
    b"X-Empty:\r\n"
    b"\r\n"
    b"Numbers  are\r\nUP this quarter\r\n"
)


def _message(flags: frozenset[str] = frozenset(), loads: list[int] | None = None) -> MessageFacts:
    def loader() -> ParsedMessage:
        if loads is not None:
            loads.append(1)
        return ParsedMessage(RAW)

    # INTERNALDATE 2007-03-25 22:00 UTC
    return MessageFacts(3, 30, flags, len(RAW), 1174860000.0, 5, 50, loader)


def _matches(text: str, msg: MessageFacts | None = None) -> bool:
    return parse_search(_parse(text), uid_mode=False).matches(msg or _message())


@pytest.mark.parametrize(
    "text, expected",
    [
        ('FROM "jörg"', True),
        ('FROM "JOERG@EXAMPLE"', True),
        ("FROM nobody", False),
        ("TO team", True),
        ("TO b@example.org", True),
        ("CC a", False),
        ('CC ""', False),
        ('HEADER X-Empty ""', True),
        ('HEADER X-Missing ""', False),
        ('SUBJECT "quarterly report"', True),
        ('BODY "numbers are up"', True),
        ("BODY quarterly", False),
        ("TEXT quarterly", True),
        ("SENTON 26-Mar-2007", True),
        ("SENTBEFORE 26-Mar-2007", False),
        ("ON 25-Mar-2007", True),
        ("SINCE 26-Mar-2007", False),
        ("BEFORE 26-Mar-2007", True),
        (f"LARGER {len(RAW) - 1}", True),
        (f"SMALLER {len(RAW)}", False),
        ("3", True),
        ("*", False),
        ("4:*", False),
        ("UID 30", True),
        ("UID 40:*", False),
        ("OR 1 (UID 30 SUBJECT report)", True),
        ("NOT (3 UID 30)", False),
    ],
)
def test_matching(text: str, expected: bool) -> None:
    assert _matches(text) is expected


def test_flags_compare_in_any_case() -> None:
    msg = _message(frozenset({"\\SEEN", "\\Recent", "$Label"}))
    assert _matches("SEEN KEYWORD $label RECENT NOT NEW NOT OLD", msg)
    assert _matches("NEW", _message(frozenset({"\\Recent"})))
    assert _matches("UNKEYWORD $other UNDELETED UNANSWERED UNDRAFT UNFLAGGED", msg)


def test_content_is_loaded_only_when_needed_and_once() -> None:
    loads: list[int] = []
    msg = _message(frozenset({"\\Seen"}), loads)
    assert not _matches('UNSEEN FROM "jörg"', msg)  # the cheap key first: no parse
    assert loads == []
    assert _matches('FROM "jörg" SUBJECT report TEXT up', msg)
    assert _matches("BODY numbers", msg)
    assert loads == [1]


def test_address_text() -> None:
    addresses: list[tuple[str | None, str | None, str | None]] = [
        ("Ann", "ann", "a.example"),
        (None, "g", None),
        (None, "x", "x.example"),
        (None, "y", "y.example"),
        (None, None, None),
        (None, "bob", "b.example"),
    ]
    assert address_text(addresses) == "Ann <ann@a.example>, g: x@x.example, y@y.example;, " + (
        "bob@b.example"
    )


# -- ESEARCH


def test_sequence_set_text() -> None:
    assert sequence_set_text([]) == ""
    assert sequence_set_text([1, 2, 3, 5, 9, 10]) == "1:3,5,9:10"
    assert sequence_set_text([5, 3, 4, 2, 1]) == "5,3:4,2,1"


def test_esearch_response() -> None:
    values = [1, 2, 3, 5, 9]
    assert (
        esearch_response("a1", True, values, {"min", "MAX", "COUNT", "ALL"})
        == '* ESEARCH (TAG "a1") UID MIN 1 MAX 9 COUNT 5 ALL 1:3,5,9'
    )
    assert esearch_response("a2", False, values, set()) == '* ESEARCH (TAG "a2") ALL 1:3,5,9'
    assert esearch_response("a3", False, [], {"MIN", "MAX", "ALL"}) == '* ESEARCH (TAG "a3")'
    assert esearch_response("a4", True, [], {"COUNT"}) == '* ESEARCH (TAG "a4") UID COUNT 0'
    assert esearch_response(None, False, [7], {"MAX"}) == "* ESEARCH MAX 7"
    result = SearchResult([2, 4], uid=True)
    assert result.search_response() == "* SEARCH 2 4"
    assert result.esearch_response("t", {"COUNT"}) == '* ESEARCH (TAG "t") UID COUNT 2'
    assert SearchResult([]).search_response() == "* SEARCH"


def test_strings_may_be_literals() -> None:
    args: list[Arg] = [Atom("SUBJECT"), IString(b"Quarterly report", literal=True)]
    assert parse_search(args, uid_mode=False).matches(_message())
