"""The command parser: argument kinds, literals inline, bracketed atoms, errors; sequence
sets, dates and the astring and mailbox-name helpers."""

from __future__ import annotations

import datetime
import time

import pytest

from appliance.imap.parser import (
    MAX_DEPTH,
    BadCommand,
    Command,
    SequenceSet,
    astring,
    literal_at_end,
    mailbox_name,
    parse_command,
    parse_date,
    parse_datetime,
    parse_sequence_set,
)
from appliance.imap.tokens import Arg, Atom, IString, ParseError


def args(data: bytes) -> list[Arg]:
    return parse_command(data).args


# -- literal_at_end


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a1 APPEND INBOX {5}", (5, False)),
        (b"a1 APPEND INBOX {5+}", (5, True)),
        (b"a1 LOGIN {0}", (0, False)),
        (b"a1 X {4294967295}", (4294967295, False)),
        (b"a1 X ~{5}", (5, False)),  # literal8: the octets are read, then BAD
        (b"a1 NOOP", None),
        (b"a1 X {}", None),
        (b"a1 X {+}", None),
        (b"a1 X {5a}", None),
        (b"a1 X {5} ", None),
        (b"a1 X }", None),
        (b"a1 X {-5}", None),
        (b"", None),
    ],
)
def test_literal_at_end(line: bytes, expected: tuple[int, bool] | None) -> None:
    assert literal_at_end(line) == expected


@pytest.mark.parametrize("line", [b"a X {4294967296}", b"a X {00000000001}", b"a X {99999999999+}"])
def test_literal_at_end_too_big(line: bytes) -> None:
    with pytest.raises(ParseError):
        literal_at_end(line)


# -- parse_command


def test_simple() -> None:
    c = parse_command(b"a1 noop")
    assert c == Command("a1", "NOOP", [])
    assert parse_command(b"A.2] capability").tag == "A.2]"


def test_atoms() -> None:
    got = args(b"t SEARCH 1:*,5 UID 3:4 NIL nil ALL %x* ]")
    assert got == ["1:*,5", "UID", "3:4", "NIL", "nil", "ALL", "%x*", "]"]
    assert all(isinstance(a, Atom) for a in got)
    assert isinstance(got[3], Atom)  # NIL stays an atom


def test_flags() -> None:
    got = args(b"t STORE 1 +FLAGS.SILENT (\\Seen \\Deleted \\* $Junk)")
    assert got == ["1", "+FLAGS.SILENT", ["\\Seen", "\\Deleted", "\\*", "$Junk"]]


def test_quoted() -> None:
    got = args(b't LOGIN "user" "p\\"a\\\\ss w" "" "Entw\xc3\xbcrfe"')
    assert got == [b"user", b'p"a\\ss w', b"", "Entwürfe".encode()]
    for a in got:
        assert isinstance(a, IString) and not a.literal


def test_literals_inline() -> None:
    c = parse_command(b"a1 APPEND INBOX (\\Seen) {5}\r\nhello")
    assert c.name == "APPEND"
    assert c.args == ["INBOX", ["\\Seen"], b"hello"]
    assert isinstance(c.args[2], IString) and c.args[2].literal
    got = args(b'A2 LOGIN {4+}\r\nuser "pass"')
    assert got == [b"user", b"pass"]
    assert isinstance(got[0], IString) and got[0].literal
    assert isinstance(got[1], IString) and not got[1].literal


def test_literal_with_crlf_and_braces() -> None:
    body = b'a) (b\r\n{3}\r\n"x\x00\xff'
    got = args(b"t APPEND box {%d}\r\n" % len(body) + body + b" {0}\r\n (x {1+}\r\n))")
    assert got == ["box", body, b"", ["x", b")"]]


def test_nested_lists() -> None:
    got = args(b't X (a (b "c" (d)) () ((e))) f')
    assert got == [["a", ["b", b"c", ["d"]], [], [["e"]]], "f"]
    assert args(b"t X ()") == [[]]
    assert args(b"t X (())") == [[[]]]


def test_depth_bound() -> None:
    ok = b"(" * MAX_DEPTH + b")" * MAX_DEPTH
    parse_command(b"t X " + ok)
    with pytest.raises(BadCommand, match="deep"):
        parse_command(b"t X " + b"(" * (MAX_DEPTH + 1) + b")" * (MAX_DEPTH + 1))
    with pytest.raises(BadCommand):
        parse_command(b"t X " + b"(" * 100_000)


@pytest.mark.parametrize(
    ("data", "atom"),
    [
        (
            b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>",
            "BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>",
        ),
        (b"BODY[]", "BODY[]"),
        (b"BODY[]<0.10>", "BODY[]<0.10>"),
        (b"BODY[1.2.MIME]", "BODY[1.2.MIME]"),
        (b'BODY[HEADER.FIELDS ("X-A]" Subject)]', 'BODY[HEADER.FIELDS ("X-A]" Subject)]'),
        (b"BODY[HEADER.FIELDS.NOT ({4}\r\nFROM To)]", 'BODY[HEADER.FIELDS.NOT ("FROM" To)]'),
        (b"BINARY.SIZE[1]", "BINARY.SIZE[1]"),
    ],
)
def test_bracket_atoms(data: bytes, atom: str) -> None:
    got = args(b"t FETCH 1 (FLAGS " + data + b" UID)")
    assert got == ["1", ["FLAGS", atom, "UID"]]
    assert isinstance(got[1], list) and isinstance(got[1][1], Atom)
    assert args(b"t FETCH 1 " + data) == ["1", atom]


def test_command_name_and_tag_cases() -> None:
    assert parse_command(b"x uid fetch 1 FLAGS").name == "UID"
    assert args(b"x uid fetch 1 FLAGS") == ["fetch", "1", "FLAGS"]


@pytest.mark.parametrize(
    "data",
    [b"", b" a1 NOOP", b"a*1 NOOP", b"a+ NOOP", b"(a) NOOP", b'"a" NOOP', b"a\x01 NOOP", b"\xff X"],
)
def test_bad_tag_has_no_tag(data: bytes) -> None:
    with pytest.raises(BadCommand) as e:
        parse_command(data)
    assert e.value.tag is None


@pytest.mark.parametrize(
    "data",
    [
        b"a1",  # no command name
        b"a1 ",
        b"a1  NOOP",
        b"a1 NO*OP",
        b"a1 NOOP ",  # a trailing space
        b"a1 X a  b",  # two spaces
        b"a1 X (a",
        b"a1 X (a))",
        b"a1 X a)",
        b"a1 X )",
        b"a1 X ( a)",
        b"a1 X (a )",
        b'a1 X "abc',
        b'a1 X "a\\n"',  # only \" and \\ are escapes
        b'a1 X "a\rb"',
        b'a1 X "a\nb"',
        b'a1 X "a\x00b"',
        b'a1 X "a"b',
        b"a1 X {5}\r\nabc",  # literal octets missing
        b"a1 X {5}",
        b"a1 X {5}abcde",
        b"a1 X {x}\r\n",
        b"a1 X {99999999999}\r\n",
        b"a1 X ~{1}\r\nx",
        b"a1 X \\",
        b"a1 X \\\\Seen",
        b"a1 X a\\b",
        b"a1 X a(b)",
        b"a1 X BODY[\r\n]",
        b'a1 X BODY["\xc3\xa4"]',
        b"a1 X BODY[{2}\r\n\r\n]",
        b"a1 X Entw\xc3\xbcrfe",  # 8-bit in an atom
        b"a1 X a\r\n",
        b"a1 X a\x01",
        b"a1 X \x7f",
    ],
)
def test_errors_keep_tag(data: bytes) -> None:
    with pytest.raises(BadCommand) as e:
        parse_command(data)
    assert e.value.tag == "a1"
    assert isinstance(e.value, ParseError)
    assert str(e.value)


def test_big_literal_is_fast() -> None:
    body = b"x" * 10_000_000
    start = time.perf_counter()
    got = args(b"t APPEND INBOX {%d}\r\n" % len(body) + body)
    assert got[1] == body
    assert time.perf_counter() - start < 1


# -- sequence sets


def test_sequence_set_parse() -> None:
    s = parse_sequence_set("1,3:5,7:*,*,9:2")
    assert s.ranges == ((1, 1), (3, 5), (7, None), (None, None), (9, 2))
    assert s == SequenceSet(((1, 1), (3, 5), (7, None), (None, None), (9, 2)))
    assert parse_sequence_set("4294967295").ranges == ((4294967295, 4294967295),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "1,",
        ",1",
        "1:",
        ":1",
        "1::2",
        "1:2:3",
        "$",
        "a",
        "1 2",
        "01",
        "-1",
        "1.5",
        "4294967296",
        "*:",
        "１",
    ],
)
def test_sequence_set_invalid(text: str) -> None:
    with pytest.raises(ParseError):
        parse_sequence_set(text)


def test_resolve() -> None:
    s = parse_sequence_set("7:*,1,2,3:4,10:9,20")
    assert s.resolve(12) == [(1, 4), (7, 12), (20, 20)]
    assert parse_sequence_set("5:*").resolve(3) == [(3, 5)]  # "*" is the largest in use
    assert parse_sequence_set("*").resolve(8) == [(8, 8)]
    assert parse_sequence_set("*:4").resolve(8) == [(4, 8)]
    assert parse_sequence_set("1,3,5").resolve(9) == [(1, 1), (3, 3), (5, 5)]
    assert parse_sequence_set("1:3,2:6,8").resolve(9) == [(1, 6), (8, 8)]


def test_contains() -> None:
    s = parse_sequence_set("2:4,10:*")
    assert [n for n in range(1, 15) if s.contains(n, 12)] == [2, 3, 4, 10, 11, 12]
    assert [n for n in range(1, 15) if s.contains(n, 8)] == [2, 3, 4, 8, 9, 10]


def test_members() -> None:
    uids = [1, 2, 5, 9, 10, 11, 20, 40]
    assert parse_sequence_set("1:*").members(uids, 40) == uids
    assert parse_sequence_set("3:10,40,2").members(uids, 40) == [2, 5, 9, 10, 40]
    assert parse_sequence_set("*").members(uids, 40) == [40]
    assert parse_sequence_set("100:*").members(uids, 40) == [40]
    assert parse_sequence_set("41:50").members(uids, 40) == []
    assert parse_sequence_set("11:9,10").members(uids, 40) == [9, 10, 11]
    assert parse_sequence_set("1:*").members([], 0) == []


def test_members_large_is_fast() -> None:
    values = list(range(1, 300_001, 3))  # 100,000 UIDs
    start = time.perf_counter()
    for _ in range(100):
        assert len(parse_sequence_set("1:*").members(values, values[-1])) == 100_000
    got = parse_sequence_set("1:10,299998:*,5000:5010").members(values, values[-1])
    assert got == [1, 4, 7, 10, 5002, 5005, 5008, 299998]
    assert time.perf_counter() - start < 2
    many = parse_sequence_set(",".join(str(n) for n in range(1, 20_000, 2)))
    got = many.members(values, values[-1])
    assert got == [n for n in values if n < 20_000 and n % 2]
    assert time.perf_counter() - start < 4


# -- dates


def test_parse_date() -> None:
    assert parse_date("1-Feb-1994") == datetime.date(1994, 2, 1)
    assert parse_date("01-feb-1994") == datetime.date(1994, 2, 1)
    assert parse_date("29-FEB-2024") == datetime.date(2024, 2, 29)
    assert parse_date("31-Dec-9999") == datetime.date(9999, 12, 31)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1-Feb-94",
        "001-Feb-1994",
        "1 Feb 1994",
        "1-February-1994",
        "1-Foo-1994",
        "29-Feb-2023",
        "0-Jan-2000",
        "32-Jan-2000",
        "1-Jan-0000",
        '"1-Feb-1994"',
        "1-Feb-1994 ",
        "1-Fеb-1994",
    ],
)
def test_parse_date_invalid(text: str) -> None:
    with pytest.raises(ParseError):
        parse_date(text)


def test_parse_datetime() -> None:
    want = datetime.datetime(1996, 7, 17, 9, 44, 25, tzinfo=datetime.UTC).timestamp()
    assert parse_datetime("17-Jul-1996 02:44:25 -0700") == want
    assert parse_datetime("17-jul-1996 09:44:25 +0000") == want
    assert parse_datetime("17-Jul-1996 11:14:25 +0130") == want
    seven = datetime.datetime(1996, 7, 7, 0, 0, 0, tzinfo=datetime.UTC).timestamp()
    assert parse_datetime(" 7-Jul-1996 00:00:00 +0000") == seven
    assert parse_datetime("07-Jul-1996 00:00:00 +0000") == seven
    assert parse_datetime("7-Jul-1996 00:00:00 +0000") == seven
    assert parse_datetime("01-Jan-1970 00:00:00 +0000") == 0.0
    assert parse_datetime("31-Dec-1969 23:59:59 +0000") == -1.0
    assert parse_datetime("31-Dec-2016 23:59:60 +0000") == parse_datetime(
        "01-Jan-2017 00:00:00 +0000"
    )


@pytest.mark.parametrize(
    "text",
    [
        "17-Jul-1996 02:44:25",
        "17-Jul-1996 02:44:25 0700",
        "17-Jul-1996 2:44:25 -0700",
        "17-Jul-1996 24:00:00 -0700",
        "17-Jul-1996 02:60:00 -0700",
        "17-Jul-1996 02:44:61 -0700",
        "17-Jul-1996 02:44:25 -0760",
        "17-Jul-1996 02:44:25 +2400",
        "31-Jun-1996 02:44:25 -0700",
        "17-Jux-1996 02:44:25 -0700",
        "17-Jul-1996  02:44:25 -0700",
        '"17-Jul-1996 02:44:25 -0700"',
        "",
    ],
)
def test_parse_datetime_invalid(text: str) -> None:
    with pytest.raises(ParseError):
        parse_datetime(text)


# -- astring and mailbox names


def test_astring() -> None:
    assert astring(Atom("user")) == b"user"
    assert astring(Atom("NIL")) == b"NIL"
    assert astring(Atom("a]b*%")) == b"a]b*%"
    assert astring(IString(b"p a\xffss")) == b"p a\xffss"
    assert astring(IString(b"", literal=True)) == b""
    for bad in ([Atom("a")], [], Atom("\\Seen"), Atom("BODY[HEADER.FIELDS (A)]")):
        with pytest.raises(ParseError):
            astring(bad)


def test_mailbox_name() -> None:
    assert mailbox_name(Atom("inbox")) == "INBOX"
    assert mailbox_name(IString(b"InBoX")) == "INBOX"
    assert mailbox_name(Atom("inbox/foo")) == "inbox/foo"
    assert mailbox_name(Atom("INBOX.Sent")) == "INBOX.Sent"
    assert mailbox_name(Atom("Entw&APw-rfe")) == "Entwürfe"
    assert mailbox_name(IString(b"&ZTZO9nux-")) == "收件箱"
    assert mailbox_name(IString("Entwürfe".encode())) == "Entwürfe"
    assert mailbox_name(IString("R&D ü".encode())) == "R&D ü"  # UTF-8: "&" is itself
    assert mailbox_name(Atom("a&-b")) == "a&b"
    assert mailbox_name(Atom("plain")) == "plain"


@pytest.mark.parametrize(
    "arg",
    [
        IString(b"\xff\xfe"),
        IString(b"a\x01b"),
        IString(b"a\x00", literal=True),
        [Atom("INBOX")],
    ],
)
def test_mailbox_name_invalid(arg: Arg) -> None:
    with pytest.raises(ParseError):
        mailbox_name(arg)


def test_unclosed_bracket_is_part_of_the_atom_and_bad_mutf7_is_kept() -> None:
    """imaptest's atoms test: a mailbox name with a "[" that nothing closes is an atom (the
    select then answers NO, not BAD); a name that is not modified UTF-7 is kept as sent."""
    assert args(b"t SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}") == [
        Atom("!#$&'+,-.0123456789:;<=>?@^_`|[}")
    ]
    assert args(b"t X BODY[HEADER.FIELDS (FROM)") == [Atom("BODY[HEADER.FIELDS"), [Atom("FROM")]]
    for raw in ("a&b", "&AGE-", "&AOQ"):
        assert mailbox_name(Atom(raw)) == raw
