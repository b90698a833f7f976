"""SORT and THREAD: base subjects, the criteria, the orders and the thread trees, and
Dovecot's imaptest sort-* and thread* scripts (run as test_search's ScriptRun does)."""

from __future__ import annotations

import pytest

from appliance.imap.mime import ParsedMessage
from appliance.imap.parser import parse_command
from appliance.imap.search import MessageFacts
from appliance.imap.sort import (
    base_subject,
    display_name,
    parse_sort_criteria,
    sort_messages,
    subject_info,
)
from appliance.imap.thread import thread
from appliance.imap.tokens import Arg, ParseError
from tests.imap.test_search import check_script

SCRIPTS = [
    "sort-addresses",
    "sort-arrival",
    "sort-date",
    "sort-display-from",
    "sort-display-to",
    "sort-size",
    "sort-subject",
    "thread",
    "thread2",
    "thread3",
    "thread4",
    "thread5",
    "thread6",
    "thread7",
    "thread8",
    "thread-orderedsubject",
    "thread-orderedsubject2",
]


@pytest.mark.parametrize("name", SCRIPTS)
def test_imaptest_script(name: str) -> None:
    check_script(name)


# -- base subject


@pytest.mark.parametrize(
    "subject, base, reply",
    [
        ("", "", False),
        ("hello", "hello", False),
        ("Re: hello", "hello", True),
        ("RE:  hello\t world ", "hello world", True),
        ("Fw: x", "x", True),
        ("fwd:x", "x", True),
        ("Re [list]: x", "x", True),
        ("[list] Re: x", "x", True),
        ("[list] x", "x", False),
        ("[list]", "[list]", False),
        ("[a][b] x", "x", False),
        ("x (fwd)", "x", True),
        ("x (fwd) (FWD)  ", "x", True),
        ("[Fwd: x]", "x", True),
        ("Re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon", True),
        ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b", True),
        ("Ad: Re: x", "Ad: Re: x", False),
        ("Reply: x", "Reply: x", False),
        (" ", "", False),
    ],
)
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert subject_info(subject) == (base, reply)
    assert base_subject(subject) == base


# -- criteria


def _criteria(text: str) -> Arg:
    return parse_command(f"a SORT {text} UTF-8 ALL".encode()).args[0]


def test_parse_sort_criteria() -> None:
    assert parse_sort_criteria(_criteria("(reverse Date subject REVERSE displayFrom)")) == [
        ("DATE", True),
        ("SUBJECT", False),
        ("DISPLAYFROM", True),
    ]
    for bad in ("ARRIVAL", "()", "(REVERSE)", "(REVERSE REVERSE DATE)", "(SIZE FOO)", '("DATE")'):
        with pytest.raises(ParseError):
            parse_sort_criteria(_criteria(bad))


def test_display_name() -> None:
    assert display_name(("Foo Bar", "a", "b.c")) == "Foo Bar"
    assert display_name((None, "a", "b.c")) == "a@b.c"
    assert display_name(("", "group", None)) == "group"
    assert display_name(None) == ""


# -- orders and trees, from raw messages


def _facts(seq: int, raw: bytes, internaldate: float = 0.0, size: int = 0) -> MessageFacts:
    return MessageFacts(
        seq,
        seq * 10,
        frozenset(),
        size or len(raw),
        internaldate,
        9,
        90,
        lambda: ParsedMessage(raw),
    )


def test_sort_ties_keep_sequence_order_under_reverse() -> None:
    msgs = [
        _facts(1, b"Subject: b\r\n\r\n", 30.0, 5),
        _facts(2, b"Subject: Re: a\r\n\r\n", 10.0, 5),
        _facts(3, b"Subject: A\r\n\r\n", 20.0, 7),
        _facts(4, b"Subject: b\r\n\r\n", 10.0, 5),
    ]
    order = lambda criteria: [m.seq for m in sort_messages(criteria, msgs)]  # noqa: E731
    assert order([("SUBJECT", False)]) == [2, 3, 1, 4]
    assert order([("SUBJECT", True)]) == [1, 4, 2, 3]
    assert order([("SIZE", True), ("ARRIVAL", False)]) == [3, 2, 4, 1]
    assert order([("DATE", False)]) == [2, 4, 3, 1]  # no Date: INTERNALDATE
    assert order([("ARRIVAL", True)]) == [1, 3, 2, 4]


def _threaded(algorithm: str, raws: list[bytes], use_uid: bool = False) -> str:
    msgs = [_facts(i, raw, 1000.0 + i) for i, raw in enumerate(raws, 1)]
    return thread(algorithm, msgs, use_uid=use_uid)


def test_references_tree_shape() -> None:
    raws = [
        b"Message-ID: <1@x>\r\nSubject: s\r\n\r\n",
        b"Message-ID: <2@x>\r\nReferences: <1@x>\r\nSubject: Re: s\r\n\r\n",
        b"Message-ID: <3@x>\r\nReferences: <1@x> <2@x>\r\n\r\n",
        b"Message-ID: <4@x>\r\nReferences: <1@x>\r\n\r\n",
        b"Message-ID: <5@x>\r\nIn-Reply-To: <4@x>\r\n\r\n",
        b"Message-ID: <6@x>\r\nSubject: other\r\n\r\n",
        b"Message-ID: <7@x>\r\nReferences: <missing@x>\r\nSubject: Re: other\r\n\r\n",
        b"Message-ID: <8@x>\r\nReferences: <gone@x>\r\n\r\n",
        b"Message-ID: <9@x>\r\nReferences: <gone@x>\r\n\r\n",
    ]
    assert _threaded("REFERENCES", raws) == "(1 (2 3)(4 5))(6 7)((8)(9))"
    assert _threaded("references", raws, use_uid=True) == "(10 (20 30)(40 50))(60 70)((80)(90))"


def test_references_subject_merges() -> None:
    raws = [
        b"Message-ID: <1@x>\r\nSubject: Re: topic\r\n\r\n",
        b"Message-ID: <2@x>\r\nSubject: topic\r\n\r\n",
        b"Message-ID: <3@x>\r\nSubject: Topic\r\n\r\n",
    ]
    # 2 is not a reply: 1 goes under it; 3 is not one either: 2 and 3 go under a dummy
    assert _threaded("REFERENCES", raws) == "((2 1)(3))"


def test_references_loops_are_not_made() -> None:
    raws = [
        b"Message-ID: <a@x>\r\nReferences: <b@x>\r\n\r\n",
        b"Message-ID: <b@x>\r\nReferences: <a@x>\r\n\r\n",
        b"Message-ID: <c@x>\r\nReferences: <c@x>\r\n\r\n",
    ]
    assert _threaded("REFERENCES", raws) == "(2 1)(3)"  # b keeps a, and a cannot take b


def test_deep_thread_formats_without_recursion() -> None:
    raws = [b"Message-ID: <0@x>\r\n\r\n"]
    for i in range(1, 1500):
        raws.append(b"Message-ID: <%d@x>\r\nIn-Reply-To: <%d@x>\r\n\r\n" % (i, i - 1))
        raws.append(b"Message-ID: <s%d@x>\r\nIn-Reply-To: <%d@x>\r\n\r\n" % (i, i - 1))
    text = _threaded("REFERENCES", raws)
    assert text.startswith("(1 (2 (4 (6 ") and text.count("(") == text.count(")")


def test_ordered_subject() -> None:
    raws = [
        b"Subject: b\r\n\r\n",
        b"Subject: a\r\n\r\n",
        b"Subject: Re: b\r\n\r\n",
        b"Subject: re: B\r\n\r\n",
        b"Subject: re: a\r\n\r\n",
    ]
    assert _threaded("ORDEREDSUBJECT", raws) == "(1 (3)(4))(2 5)"


def test_unknown_algorithm() -> None:
    with pytest.raises(ParseError):
        thread("JWZ", [])
    assert thread("REFERENCES", []) == ""
