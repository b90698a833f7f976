"""Modified UTF-7 (RFC 3501 section 5.1.3): round trips and the spellings decode() refuses."""

from __future__ import annotations

import pytest

from appliance.imap.mutf7 import decode, encode

PAIRS = [
    ("INBOX", "INBOX"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("&", "&-"),
    ("a&b&", "a&-b&-"),
    ("收件箱", "&ZTZO9nux-"),
    ("pää", "p&AOQA5A-"),  # imaptest's mutf7 case: one shift for both characters
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501's example
    ("😀x", "&2D3eAA-x"),  # outside the BMP: a surrogate pair
    ("tab\there", "tab&AAk-here"),  # control characters are encoded
    ("\x7f", "&AH8-"),
    ("ä&ö", "&AOQ-&-&APY-"),
    ("", ""),
    (" ~!", " ~!"),
]


@pytest.mark.parametrize(("name", "wire"), PAIRS)
def test_encode_decode(name: str, wire: str) -> None:
    assert encode(name) == wire
    assert decode(wire) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&AOQ",  # "&" not closed
        "&",
        "a&b",
        "&AOQ-&AOQ-",  # two shifts in a row: must be &AOQA5A-
        "&ACY-",  # "&" encoded: must be "&-"
        "&AGE-",  # "a" encoded
        "&AGEA5A-",  # printable ASCII inside a longer shift
        "&AOR-",  # non-zero padding bits
        "&AO-",  # 12 bits: one octet, not UTF-16
        "&A-",  # a lone base64 character
        "&AOQA-",  # a character too many
        "&2D0-",  # a lone high surrogate
        "&3gA-",  # a lone low surrogate
        "&AO/k-",  # "/" is "," in modified base64
        "&AOQ=-",  # no padding
        "&Jjo!-",
        "Entwürfe",  # raw 8-bit
        "a\tb",  # raw control character
    ],
)
def test_decode_refuses(wire: str) -> None:
    with pytest.raises(ValueError):
        decode(wire)


def test_round_trip_many() -> None:
    names = ["".join(chr(c) for c in range(start, start + 7)) for start in range(0, 0x3000, 5)]
    for name in names:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
            continue
        wire = encode(name)
        assert wire.isascii()
        assert decode(wire) == name


def test_encode_lone_surrogate() -> None:
    with pytest.raises(ValueError):
        encode("a\udc80")
