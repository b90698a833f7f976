"""FETCH answers (appliance.imap.fetch.render): the whole message needs no parsing."""

from __future__ import annotations

import pytest

from appliance.imap import fetch
from appliance.imap.fetch import FetchItem, render
from appliance.imap.mime import ParsedMessage

MESSAGE = b"From: a@example.test\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\nbody line\r\n"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The messages render() parsed (ParsedMessage built), in order."""
    seen: list[bytes] = []

    def counting(data: bytes) -> ParsedMessage:
        seen.append(data)
        return ParsedMessage(data)

    monkeypatch.setattr(fetch, "ParsedMessage", counting)
    return seen


def one(items: list[FetchItem]) -> bytes:
    return render(7, 42, frozenset({"\\Seen"}), 0.0, len(MESSAGE), items, MESSAGE, True)


def test_whole_message_sections_answer_without_parsing(parses: list[bytes]) -> None:
    """BODY[] and BODY.PEEK[]<origin.count> are the octets as stored, cut as asked (past the
    end: the empty string), and build no ParsedMessage."""
    assert one([FetchItem("FLAGS"), FetchItem("SECTION", "", None, True)]) == (
        b"* 7 FETCH (UID 42 FLAGS (\\Seen) BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")\r\n"
    )
    assert one([FetchItem("SECTION", "", (6, 4))]) == (
        b"* 7 FETCH (UID 42 BODY[]<6> {4}\r\n" + MESSAGE[6:10] + b")\r\n"
    )
    assert (
        one([FetchItem("SECTION", "", (10_000, 4))]) == b'* 7 FETCH (UID 42 BODY[]<10000> "")\r\n'
    )
    assert parses == []


def test_part_sections_parse_once_and_a_missing_part_is_empty(parses: list[bytes]) -> None:
    """BODY[HEADER], BODY[1] and BODY[2] (absent: the empty string) with BODY[] in one
    FETCH: one parse."""
    header = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]
    got = one(
        [
            FetchItem("SECTION", "HEADER"),
            FetchItem("SECTION", ""),
            FetchItem("SECTION", "1"),
            FetchItem("SECTION", "2"),
        ]
    )
    assert got == (
        b"* 7 FETCH (UID 42 BODY[HEADER] {%d}\r\n" % len(header)
        + header
        + b" BODY[] {%d}\r\n" % len(MESSAGE)
        + MESSAGE
        + b' BODY[1] {11}\r\nbody line\r\n BODY[2] "")\r\n'
    )
    assert parses == [MESSAGE]
