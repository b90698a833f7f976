"""ParsedMessage against Dovecot's imaptest FETCH scripts, and the structure's corners.

The scripts (fetch-envelope, fetch-bodystructure, fetch-body*, fetch-binary-mime) are run
without a server: each message is taken from the script's mbox the way imaptest appends it
(the lines between "From " lines, LF made CRLF), and each FETCH item of an expected response
that this module answers (ENVELOPE, BODY, BODYSTRUCTURE, BODY[...], RFC822*, BINARY[...] of
parts without a transfer encoding) is compared the way imaptest compares: atoms and strings
case-insensitively, NIL only to NIL, `$name` bound at its first use; a `!` response must not
match. Literals ({{{ ... }}}) must match octet for octet.

The expected values of the other tests are Dovecot 2.3's answers for the same messages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.imap.mime import ParsedMessage, SectionSpec, parse_section_spec

IMAPTEST = Path(__file__).parent / "imaptest"  # a copy of imaptest's src/tests (README there)
SCRIPTS = [
    "fetch-envelope",
    "fetch-bodystructure",
    "fetch-body",
    "fetch-body-mime",
    "fetch-body-message-rfc822",
    "fetch-body-message-rfc822-mime",
    "fetch-body-message-rfc822-x2",
    "fetch-binary-mime",
]


# --- IMAP values as imaptest reads them


class Literal(bytes):
    """A string sent as a literal."""


Node = None | str | bytes | list["Node"]  # NIL, atom, string, list


def parse_node(data: bytes, i: int = 0) -> tuple[Node, int]:
    c = data[i : i + 1]
    if c == b"(":
        out: list[Node] = []
        i += 1
        while True:
            while data[i : i + 1] == b" ":
                i += 1
            if data[i : i + 1] == b")":
                return out, i + 1
            node, i = parse_node(data, i)
            out.append(node)
    if c == b'"':
        m = re.compile(rb'"((?:[^"\\]|\\.)*)"').match(data, i)
        assert m is not None, data[i : i + 40]
        return re.sub(rb"\\(.)", rb"\1", m.group(1)), m.end()
    m = re.compile(rb"~?\{([0-9]+)\}\r\n").match(data, i)
    if m is not None:
        end = m.end() + int(m.group(1))
        return Literal(data[m.end() : end]), end
    m = re.compile(rb"(?:[^ ()\r\n\[]|\[[^\]]*\])+").match(data, i)
    assert m is not None, data[i : i + 40]
    atom = m.group().decode("latin-1")
    return (None if atom.upper() == "NIL" else atom), m.end()


def value(data: bytes) -> Node:
    node, end = parse_node(data)
    assert end == len(data), data[end:]
    return node


def matches(expected: Node, actual: Node, variables: dict[str, Node]) -> bool:
    """test-exec.c's test_imap_match_args."""
    if expected is None or actual is None:
        return expected is actual
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(e, a, variables) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(actual, list):
        return False
    if isinstance(expected, str) and expected.startswith("$"):
        name = expected[1:]
        if name not in variables:
            variables[name] = actual
            return True
        bound = variables[name]
        if bound is None or isinstance(bound, list):
            return False
        return _text(bound).lower() == _text(actual).lower()
    if isinstance(expected, Literal):  # (message octets: exactly)
        return isinstance(actual, bytes) and bytes(actual) == bytes(expected)
    return _text(expected).lower() == _text(actual).lower()


def _text(node: str | bytes) -> str:
    return node if isinstance(node, str) else node.decode("latin-1")


# --- imaptest's mbox and script files

_MBOX_FROM = re.compile(rb"From \S+ +\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}")


def mbox_messages(path: Path) -> list[bytes]:
    """mailbox-source-mbox.c: each message is the lines after its From line, LF as CRLF."""
    lines = path.read_bytes().split(b"\n")
    ends = [b"\n"] * (len(lines) - 1) + [b""]
    messages: list[bytes] = []
    for line, end in zip(lines, ends, strict=True):
        if _MBOX_FROM.match(line):
            messages.append(b"")
        elif line or end:
            messages[-1] += line + (b"\r\n" if end and not line.endswith(b"\r") else end)
    return messages


def script_lines(path: Path) -> list[bytes]:
    """test-parser.c: the lines of a {{{ ... }}} block become one literal, joined by CRLF
    (by LF in a ~{{{ block, whose lines keep a CR the file has)."""
    lines = path.read_bytes().split(b"\n")
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith(b"{{{"):
            binary = line.endswith(b"~{{{")
            head = line[: -4 if binary else -3]
            block: list[bytes] = []
            while not lines[i].startswith(b"}}}"):
                block.append(lines[i])
                i += 1
            content = (b"\n" if binary else b"\r\n").join(block)  # (~{{{: the file's line ends)
            tail = lines[i][3:]
            i += 1
            line = head + b"%s{%d}\r\n%s" % (b"~" if binary else b"", len(content), content) + tail
        out.append(line)
    return out


class Fetch:
    def __init__(self, command: str) -> None:
        self.command = command
        self.responses: list[tuple[bool, bytes]] = []  # (must exist, "N FETCH (...)")


def script(name: str) -> tuple[list[bytes], list[Fetch]]:
    """The messages of a script's mailbox and its FETCH commands with their expected
    untagged responses."""
    lines = script_lines(IMAPTEST / name)
    count: int | None = None
    k = 0
    while lines[k].strip():  # the header
        key, _, val = lines[k].decode().partition(":")
        if key.strip() == "messages" and val.strip() != "all":
            count = int(val)
        k += 1
    mbox = IMAPTEST / (name + ".mbox")
    messages = mbox_messages(mbox if mbox.exists() else IMAPTEST / "default.mbox")
    fetches: list[Fetch] = []
    current: Fetch | None = None
    for line in lines[k:]:
        if not line.strip() or line.startswith(b"#"):
            continue
        m = re.match(rb"(?:tag\d+ )?(ok|no|bad) (.*)", line, re.S)
        if m is not None:
            command = m.group(2).decode("latin-1")
            current = Fetch(command) if command.lower().startswith("fetch ") else None
            if current is not None:
                fetches.append(current)
        elif current is not None and line[:2] in (b"* ", b"! "):
            current.responses.append((line[:1] == b"*", line[2:]))
    return messages[:count], fetches


# --- answering the items this module answers


def partials(command: str) -> dict[str, int]:
    """BODY[...]<origin> response names and the octet counts the command asked for."""
    found = re.finditer(r"(?i)(body|binary)(?:\.peek)?\[([^\]]*)\]<(\d+)\.(\d+)>", command)
    return {f"{m[1]}[{m[2]}]<{m[3]}>".upper(): int(m[4]) for m in found}


def answer(msg: bytes, key: str, wanted: dict[str, int]) -> tuple[bool, Node]:
    """(whether the FETCH item is one of ours, our value of it)."""
    p = ParsedMessage(msg)
    k = key.upper()
    if k == "ENVELOPE":
        return True, value(p.envelope())
    if k in ("BODY", "BODYSTRUCTURE"):
        return True, value(p.bodystructure(k == "BODYSTRUCTURE"))
    if k in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        return True, {"RFC822": msg, "RFC822.HEADER": p.header_bytes()}.get(k, p.text_bytes())
    m = re.fullmatch(r"(BODY|BINARY|BINARY\.SIZE)\[(.*)\](?:<(\d+)>)?", key, re.I | re.S)
    if m is None:
        return False, None  # FLAGS, UID, ...: the session's
    section = p.section(m[2])  # (BINARY: the parts here have no transfer encoding to undo)
    if m[1].upper() == "BINARY.SIZE":
        return True, str(len(section))
    if m[3] is not None:
        origin = int(m[3])
        section = section[origin : origin + wanted[k]]
    return True, section


def check_script(name: str) -> int:
    """Assert every expected FETCH response of the script; how many items were compared."""
    messages, fetches = script(name)
    variables: dict[str, Node] = {}
    compared = 0
    for fetch in fetches:
        wanted = partials(fetch.command)
        for must, response in fetch.responses:
            seq, _, rest = response.partition(b" ")
            assert rest[:6].lower() == b"fetch ", response
            items = value(rest[6:])
            assert isinstance(items, list)
            msg = messages[int(seq) - 1]
            results = []
            for key, expected in zip(items[::2], items[1::2], strict=True):
                assert isinstance(key, str)
                ours, actual = answer(msg, key, wanted)
                if ours:
                    results.append((key, matches(expected, actual, variables)))
            compared += len(results)
            if must:
                assert all(ok for _, ok in results), (fetch.command, seq, results)
            else:  # `!`: this response must not come
                assert not (results and all(ok for _, ok in results)), (fetch.command, seq)
    return compared


@pytest.mark.parametrize("name", SCRIPTS)
def test_imaptest_fetch_script(name: str) -> None:
    assert check_script(name) > 0


def test_imaptest_mbox_reading() -> None:
    """The messages are what imaptest appends (sizes from fetch-binary-mime, 602 octets)."""
    messages = mbox_messages(IMAPTEST / "fetch-binary-mime.mbox")
    assert [len(m) for m in messages] == [602]
    default = mbox_messages(IMAPTEST / "default.mbox")
    assert len(default) == 6
    assert default[0] == (
        b"From: user1@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
        b"Subject: s1\r\n\r\nbody1\r\n\r\n"
    )


def test_imaptest_default_mbox_full_macro() -> None:
    """`fetch 1 full` (the fetch script): ENVELOPE and BODY of default.mbox's messages."""
    msg = mbox_messages(IMAPTEST / "default.mbox")[0]
    p = ParsedMessage(msg)
    assert p.envelope() == (
        b'("Sat, 24 Mar 2007 23:00:00 +0200" "s1" ((NIL NIL "user1" "domain.org")) '
        b'((NIL NIL "user1" "domain.org")) ((NIL NIL "user1" "domain.org")) '
        b"NIL NIL NIL NIL NIL)"
    )
    assert p.bodystructure(False) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 2)'


def test_imaptest_nil_script_content() -> None:
    """The nil script searches SUBJECT NIL and BODY nil: the subject is "NiL", not NIL."""
    msg = mbox_messages(IMAPTEST / "nil.mbox")[0]
    p = ParsedMessage(msg)
    assert p.subject() == "NiL"
    assert "nil" in p.body_text()


def test_matching_is_imaptests() -> None:
    variables: dict[str, Node] = {}
    assert matches(value(b'("TEXT" "x-MYOWN" NIL 7)'), value(b'("text" "x-myown" NIL 7)'), {})
    assert not matches(value(b'("TEXT" NIL)'), value(b'("TEXT" "NIL")'), {})
    assert matches("$h", b"Subject: x\r\n", variables)
    assert matches("$h", b"SUBJECT: X\r\n", variables)
    assert not matches(value(b"{3}\r\nabc"), b"ABC", {})
    assert not matches(value(b"(a b)"), value(b"(a)"), {})


# --- BODY and BODYSTRUCTURE

NESTED = (
    b"From: Ann Example <ann@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: nested\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_outer"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--=_outer\r\n"
    b"Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"Content-ID: <part1@example.org>\r\n"
    b"Content-Description: the\r\n text\r\n"
    b"Content-Language: en, fi\r\n"
    b"\r\n"
    b"caf=C3=A9 =\r\nsoft\r\n"
    b"--=_outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: inline\r\n"
    b"\r\n"
    b"From: inner@example.net\r\n"
    b"Subject: inner\r\n"
    b"Message-ID: <inner@example.net>\r\n"
    b"Content-Type: multipart/alternative; boundary=alt\r\n"
    b"\r\n"
    b"--alt\r\n"
    b"\r\n"
    b"plain inner\r\n"
    b"--alt\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>inner</p>\r\n"
    b"--alt--\r\n"
    b"--=_outer\r\n"
    b"Content-Type: image/png; name*0*=utf-8''%E2%82%AC; name*1=.png\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="euro.png"\r\n'
    b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
    b"Content-Location: http://example.org/\r\n euro.png\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--=_outer--\r\n"
    b"epilogue\r\n"
)

INNER_ENVELOPE = (
    b'(NIL "inner" ((NIL NIL "inner" "example.net")) ((NIL NIL "inner" "example.net")) '
    b'((NIL NIL "inner" "example.net")) NIL NIL NIL NIL "<inner@example.net>")'
)


def test_bodystructure_nested() -> None:
    p = ParsedMessage(NESTED)
    assert p.bodystructure(True) == (
        b'(("text" "plain" ("charset" "UTF-8" "format" "flowed") "<part1@example.org>" '
        b'"the text" "quoted-printable" 17 1 NIL NIL ("en" "fi") NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 206 ' + INNER_ENVELOPE + b" "
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL) '
        b'"alternative" ("boundary" "alt") NIL NIL NIL) 13 NIL ("inline" NIL) NIL NIL)'
        b'("image" "png" ("name*" "utf-8\'\'%E2%82%AC.png") NIL NIL "base64" 12 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "euro.png")) NIL '
        b'"http://example.org/ euro.png") "mixed" ("boundary" "=_outer") NIL NIL NIL)'
    )
    assert p.bodystructure(False) == (
        b'(("text" "plain" ("charset" "UTF-8" "format" "flowed") "<part1@example.org>" '
        b'"the text" "quoted-printable" 17 1)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 206 ' + INNER_ENVELOPE + b" "
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 12 0) "alternative") 13)'
        b'("image" "png" ("name*" "utf-8\'\'%E2%82%AC.png") NIL NIL "base64" 12) "mixed")'
    )


@pytest.mark.parametrize(
    ("spec", "octets"),
    [
        ("", NESTED),
        ("1", b"caf=C3=A9 =\r\nsoft"),
        ("1.MIME", NESTED[NESTED.index(b"Content-Type: text/plain") : NESTED.index(b"caf=")]),
        ("2.MIME", b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"),
        ("2", NESTED[NESTED.index(b"From: inner") : NESTED.index(b"--alt--") + 9]),
        ("2.HEADER", NESTED[NESTED.index(b"From: inner") : NESTED.index(b"--alt\r\n")]),
        ("2.TEXT", NESTED[NESTED.index(b"--alt\r\n") : NESTED.index(b"--alt--") + 9]),
        (
            "2.HEADER.FIELDS (SUBJECT MESSAGE-ID)",
            b"Subject: inner\r\nMessage-ID: <inner@example.net>\r\n\r\n",
        ),
        (
            "2.HEADER.FIELDS.NOT (Subject message-id content-type)",
            b"From: inner@example.net\r\n\r\n",
        ),
        ("2.1", b"plain inner"),
        ("2.1.1", b"plain inner"),  # (part 1 of a part that is not multipart: itself)
        ("3.1", b"iVBORw0KGgo="),
        ("2.1.MIME", b"\r\n"),
        ("2.2", b"<p>inner</p>"),
        ("2.2.MIME", b"Content-Type: text/html\r\n\r\n"),
        ("3", b"iVBORw0KGgo="),
        (
            "HEADER.FIELDS (to FROM)",
            b"From: Ann Example <ann@example.org>\r\nTo: bob@example.com\r\n\r\n",
        ),
        ("TEXT", NESTED[NESTED.index(b"preamble") :]),
        # no such part: the empty string
        ("4", b""),
        ("4.MIME", b""),
        ("2.3", b""),
        ("1.HEADER", b""),  # (part 1 is not message/rfc822)
        ("1.TEXT", b""),
    ],
)
def test_sections_nested(spec: str, octets: bytes) -> None:
    assert ParsedMessage(NESTED).section(spec) == octets


def test_header_and_text() -> None:
    p = ParsedMessage(NESTED)
    assert p.header_bytes() == NESTED[: NESTED.index(b"preamble")]
    assert p.header_bytes() + p.text_bytes() == NESTED
    assert p.section("HEADER") == p.header_bytes()
    assert p.section(parse_section_spec("TEXT")) == p.text_bytes()


@pytest.mark.parametrize(
    ("msg", "body", "sections"),
    [
        pytest.param(  # no MIME-Version nor Content-Type: Content-* do not count
            b"From: a@example.org\r\nContent-Transfer-Encoding: base64\r\n\r\nnot MIME\r\n",
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1)',
            {
                "1": b"not MIME\r\n",
                "1.MIME": b"From: a@example.org\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                "2": b"",
                "1.1": b"",
            },
            id="not-mime",
        ),
        pytest.param(  # a multipart without a boundary has no parts
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\n\r\nno parts\r\n",
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")',
            {"1": b"", "TEXT": b"--x\r\n\r\nno parts\r\n"},
            id="no-boundary",
        ),
        pytest.param(  # broken Content-Types are written as far as they parsed
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text\r\n"
            b"\r\nx\r\n--b\r\nContent-Type: garbage\r\n\r\ny\r\n--b\r\n"
            b'Content-Type: text/plain; a="q\\"x"; b=; c\r\nContent-Transfer-Encoding: ?bad\r\n'
            b"\r\nz\r\n--b--\r\n",
            b'(("text" "" ("charset" "us-ascii") NIL NIL "7bit" 1 0)("garbage" "" NIL NIL NIL '
            b'"7bit" 1)("text" "plain" ("a" "q\\"x" "b" "" "charset" "us-ascii") NIL NIL "7bit" '
            b'1 0) "mixed")',
            {"1": b"x", "2": b"y", "3": b"z"},
            id="broken-content-type",
        ),
        pytest.param(  # a digest's part without Content-Type is a message
            b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\n"
            b"first\r\n--d\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--d--\r\n",
            b'(("message" "rfc822" NIL NIL NIL "7bit" 21 (NIL "one" NIL NIL NIL NIL NIL NIL NIL '
            b'NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) 2)("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 6 0) "digest")',
            {
                "1": b"Subject: one\r\n\r\nfirst",
                "1.MIME": b"\r\n",
                "1.HEADER": b"Subject: one\r\n\r\n",
                "1.1": b"first",
                "2": b"second",
            },
            id="digest",
        ),
        pytest.param(  # boundaries: cutting a header, after a blank line, as a prefix, late
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n"
            b"--b \r\nX-Cut: the blank line is the boundary's\r\n\r\n--bextra\r\n\r\nprefix\r\n"
            b"--b--\r\nepilogue\r\n--b\r\nafter the end\r\n",
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 0 0)("text" "plain" ("charset" "us-ascii") '
            b'NIL NIL "7bit" 6 0) "mixed")',
            {
                "1.MIME": b"Content-Type: text/plain",
                "1": b"",
                "2.MIME": b"X-Cut: the blank line is the boundary's\r\n",
                "2": b"",
                "3.MIME": b"\r\n",
                "3": b"prefix",
                "4": b"",
            },
            id="boundary-edges",
        ),
        pytest.param(  # the same boundary nested; an inner multipart never closed
            b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/"
            b"mixed; boundary=a\r\n\r\n--a\r\n\r\nsame\r\n--a--\r\n\r\n--a--\r\n",
            b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 4 0) "mixed") "mixed")',
            {"1.1": b"same", "1": b"--a\r\n\r\nsame\r\n--a--\r\n", "2": b""},
            id="same-boundary",
        ),
        pytest.param(
            b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/"
            b"alternative; boundary=i\r\n\r\n--i\r\n\r\nin\r\n--o\r\n\r\nout\r\n--o--\r\n",
            b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0) "alternative")'
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0) "mixed")',
            {"1.1": b"in", "2": b"out"},
            id="unclosed-inner",
        ),
        pytest.param(  # a message/rfc822 part whose message's header a boundary cuts
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/"
            b"rfc822\r\n\r\nSubject: cut\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n--b--\r\n",
            b'(("message" "rfc822" NIL NIL NIL "7bit" 14 (NIL "cut" NIL NIL NIL NIL NIL NIL NIL '
            b'NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 1)("message" '
            b'"rfc822" NIL NIL NIL "7bit" 0 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text" '
            b'"plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 0) "mixed")',
            {
                "1": b"Subject: cut\r\n",
                "1.HEADER": b"Subject: cut",
                "2.MIME": b"Content-Type: message/rfc822\r\n",
                "2": b"",
            },
            id="rfc822-cut",
        ),
        pytest.param(  # bare LF line ends: the same structure, sizes of the stored octets
            b"Subject: lf\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nline\nline\n"
            b"--b\nContent-Type: message/rfc822\n\nSubject: in\n\nx\n--b--\n",
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 1)("message" "rfc822" '
            b'NIL NIL NIL "7bit" 14 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 1 0) 2) "mixed")',
            {
                "1": b"line\nline",
                "1.MIME": b"\n",
                "2.HEADER": b"Subject: in\n\n",
                "2.1": b"x",
                "HEADER.FIELDS (SUBJECT)": b"Subject: lf\n\n",
            },
            id="bare-lf",
        ),
        pytest.param(
            b"Subject: no header end",
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)',
            {
                "HEADER": b"Subject: no header end",
                "TEXT": b"",
                "1": b"",
                "HEADER.FIELDS (SUBJECT)": b"Subject: no header end\r\n\r\n",
                "HEADER.FIELDS.NOT (X)": b"Subject: no header end",
            },
            id="header-only",
        ),
        pytest.param(
            b"",
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)',
            {"": b"", "HEADER": b"", "HEADER.FIELDS (X)": b"\r\n", "1.MIME": b""},
            id="empty",
        ),
    ],
)
def test_structure_cases(msg: bytes, body: bytes, sections: dict[str, bytes]) -> None:
    p = ParsedMessage(msg)
    assert p.bodystructure(False) == body
    for spec, octets in sections.items():
        assert p.section(spec) == octets, spec


def test_bodystructure_extension_data() -> None:
    msg = (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: quoted-printable (comment)\r\nContent-ID: <id\r\n folded>\r\n"
        b"Content-Description: caf\xe9\r\nContent-MD5: abc\r\nContent-Language: en-US,  fi ; x\r\n"
        b"Content-Location: http://x/\r\n y\r\n"
        b'Content-Disposition: attachment; filename="a b.txt"; size=3\r\n'
        b"Content-Disposition: inline\r\n\r\nx=\r\n\r\n"
    )
    assert ParsedMessage(msg).bodystructure(True) == (
        b'("text" "plain" ("charset" "us-ascii") "<id folded>" {4}\r\ncaf\xe9 "quoted-printable" '
        b'6 2 "abc" ("attachment" ("filename" "a b.txt" "size" "3")) ("en-US" "fi") "http://x/ y")'
    )


def test_mime_limits() -> None:
    """At 100 nested parts the parser stops: the part is shown as application/octet-stream."""
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 120 + b"Subject: bottom\r\n\r\nx\r\n"
    structure = ParsedMessage(deep).bodystructure(False)
    assert structure.count(b'"message" "rfc822"') == 99
    assert structure.count(b'"application" "octet-stream"') == 1
    section = ".".join(["1"] * 99)
    assert ParsedMessage(deep).section(section + ".MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    wide = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 10050
    assert ParsedMessage(wide).bodystructure(False).count(b'"text" "plain"') == 9999


# --- ENVELOPE


@pytest.mark.parametrize(
    ("msg", "envelope"),
    [
        pytest.param(
            b"Date: Thu, 15 Feb 2007\r\n 01:02:03 +0200\r\nSubject:  a  folded\r\n\tsubject \r\n"
            b'From: "Quoted, Name" <q@example.org>, plain@example.org\r\n'
            b"From: second@example.org\r\nTo: undisclosed-recipients:;\r\n"
            b"Cc: John Smith, user, <@route1,@route2:r@example.org>\r\n"
            b"Bcc: g: a@b, (comment) c@d (Cee);\r\nMessage-ID: <id@example.org>\r\n"
            b"In-Reply-To: <a@x> <b@x>\r\n\r\n",
            b'("Thu, 15 Feb 2007 01:02:03 +0200" "a folded subject" (("Quoted, Name" NIL "q" '
            b'"example.org")(NIL NIL "plain" "example.org")(NIL NIL "second" "example.org")) '
            b'(("Quoted, Name" NIL "q" "example.org")(NIL NIL "plain" "example.org")(NIL NIL '
            b'"second" "example.org")) (("Quoted, Name" NIL "q" "example.org")(NIL NIL "plain" '
            b'"example.org")(NIL NIL "second" "example.org")) ((NIL NIL "undisclosed-recipients" '
            b'NIL)(NIL NIL NIL NIL)) (("John Smith" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")'
            b'(NIL NIL "user" "MISSING_DOMAIN")(NIL "@route1,@route2" "r" "example.org")) '
            b'((NIL NIL "g" NIL)(NIL NIL "a" "b")("Cee" NIL "c" "d")(NIL NIL NIL NIL)) '
            b'"<a@x> <b@x>" "<id@example.org>")',
            id="groups-routes-broken",
        ),
        pytest.param(
            b'Subject: caf\xc3\xa9 "quoted" \\ back\r\nSubject: the last one wins\r\n'
            b"From: =?utf-8?q?J=C3=B6rg?= <j@example.de>\r\nSender:\r\n"
            b'Reply-To: "Reply \\"Here\\"" <r@example.org> (ignored comment)\r\n'
            b'To: "local part"@example.org, u@[192.0.2.1], <>, a@\r\n\r\n',
            b'(NIL "the last one wins" (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.de")) '
            b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.de")) (("Reply \\"Here\\"" NIL "r" '
            b'"example.org")) ((NIL NIL "local part" "example.org")(NIL NIL "u" "[192.0.2.1]")'
            b'(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "a" "MISSING_DOMAIN")) '
            b"NIL NIL NIL NIL)",
            id="quoting-not-decoded",
        ),
        pytest.param(
            b"Subject: caf\xc3\xa9\r\nFrom: J\xc3\xb6rg <j@example.de>\r\nTo: a@b\x00c\r\n\r\n",
            b'(NIL {5}\r\ncaf\xc3\xa9 (({5}\r\nJ\xc3\xb6rg NIL "j" "example.de")) '
            b'(({5}\r\nJ\xc3\xb6rg NIL "j" "example.de")) (({5}\r\nJ\xc3\xb6rg NIL "j" '
            b'"example.de")) ((NIL NIL "a" "b")) NIL NIL NIL NIL)',
            id="8bit-literals",
        ),
        pytest.param(
            b"subject : spaced name\r\nNot a field\r\n X-cont: continued\r\n\r\n",
            b'(NIL "spaced name" NIL NIL NIL NIL NIL NIL NIL NIL)',
            id="odd-lines",
        ),
    ],
)
def test_envelope(msg: bytes, envelope: bytes) -> None:
    assert ParsedMessage(msg).envelope() == envelope


# --- section specs


@pytest.mark.parametrize(
    ("spec", "parsed", "text"),
    [
        ("", SectionSpec((), ""), ""),
        ("HEADER", SectionSpec((), "HEADER"), "HEADER"),
        ("text", SectionSpec((), "TEXT"), "TEXT"),
        ("1", SectionSpec((1,), ""), "1"),
        ("10.2", SectionSpec((10, 2), ""), "10.2"),
        ("2.MIME", SectionSpec((2,), "MIME"), "2.MIME"),
        ("3.1.TEXT", SectionSpec((3, 1), "TEXT"), "3.1.TEXT"),
        ("HEADER.FIELDS (FROM To)", SectionSpec((), "HEADER.FIELDS", ("FROM", "To")), None),
        ("1.HEADER.FIELDS.NOT (X-A)", SectionSpec((1,), "HEADER.FIELDS.NOT", ("X-A",)), None),
        (
            'HEADER.FIELDS ("a b" {3}\r\nX-Y)',
            SectionSpec((), "HEADER.FIELDS", ("a b", "X-Y")),
            'HEADER.FIELDS ("a b" X-Y)',
        ),
        (
            "header.fields(from)",
            SectionSpec((), "HEADER.FIELDS", ("from",)),
            "HEADER.FIELDS (from)",
        ),
    ],
)
def test_parse_section_spec(spec: str, parsed: SectionSpec, text: str | None) -> None:
    assert parse_section_spec(spec) == parsed
    assert str(parsed) == (spec if text is None else text)


@pytest.mark.parametrize(
    "spec",
    [
        "MIME",
        "0",
        "01",
        "1.",
        "1..2",
        ".1",
        "1.X",
        "HEADERS",
        "TEXT.1",
        "1 TEXT",
        "HEADER.FIELDS",
        "HEADER.FIELDS ()",
        "HEADER.FIELDS (A",
        "HEADER.FIELDS (A)(B)",
        "HEADER (A)",
        "1.MIME.TEXT",
        'HEADER.FIELDS ("a)',
        "HEADER.FIELDS ({9}\r\nab)",
    ],
)
def test_parse_section_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_section_spec(spec)
    with pytest.raises(ValueError):
        ParsedMessage(b"").section(spec)


# --- SEARCH and SORT


SEARCHED = (
    b'From: =?iso-8859-1?q?J=F6rg?= <joerg@example.de>, "B. B" <b@example.org>\r\n'
    b"To: team: a@example.org, =?utf-8?b?w4lsw6g=?= <e@example.org>;\r\n"
    b"Cc: broken\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?=\r\n =?utf-8?q?_au_lait?= and more\r\n"
    b"Date: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"References: <r1@example.org>\r\n <r2@example.org>\r\n"
    b"In-Reply-To: <r2@example.org>\r\n"
    b"X-Twice: one\r\nX-Twice:  two \r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n"
    b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 =\r\ncr=E8me\r\n"
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"PGI+aMOpPC9iPg==\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n\r\nbinary stuff\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n"
    b"--b--\r\n"
)


def test_search_values() -> None:
    p = ParsedMessage(SEARCHED)
    assert p.subject() == "Café au lait and more"
    assert p.header_values("x-twice") == ["one", "two"]
    assert p.header_values("X-Missing") == []
    assert p.header_values("from") == ['Jörg <joerg@example.de>, "B. B" <b@example.org>']
    assert p.sent_date() == 1174770000.0
    assert p.message_id() == "<m1@example.org>"
    assert p.references() == ["<r1@example.org>", "<r2@example.org>"]
    header = p.header_text()
    assert "Subject: Café au lait and more" in header
    assert "To: team: a@example.org, Élè <e@example.org>;" in header


def test_search_addresses() -> None:
    p = ParsedMessage(SEARCHED)
    assert p.addresses("FROM") == [("Jörg", "joerg", "example.de"), ("B. B", "b", "example.org")]
    assert p.addresses("to") == [
        (None, "team", None),  # a group starts
        (None, "a", "example.org"),
        ("Élè", "e", "example.org"),
        (None, None, None),  # and ends
    ]
    assert p.addresses("cc") == [(None, "broken", "")]
    assert p.addresses("bcc") == []


def test_search_body_text() -> None:
    text = ParsedMessage(SEARCHED).body_text()
    assert "café crème" in text
    assert "<b>hé</b>" in text
    assert "binary stuff" not in text
    assert "inner text" in text and "Subject: inner" not in text


def test_search_fallbacks() -> None:
    assert ParsedMessage(b"Date: 24 Mar 2007 23:00:00\r\n\r\n").sent_date() == 1174777200.0  # (UTC)
    p = ParsedMessage(b"Date: not a date\r\nIn-Reply-To: x <a@b> <c@d>\r\nMessage-ID: bare\r\n\r\n")
    assert p.sent_date() is None
    assert p.references() == ["<a@b>"]
    assert p.message_id() == "bare"
    p = ParsedMessage(b"\r\nbody\r\n")
    assert (p.subject(), p.sent_date(), p.message_id(), p.references()) == ("", None, None, [])
    assert p.body_text() == "body\r\n"
