"""Delivery status notifications: structure, per-recipient fields, what is returned, odd input."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from appliance.queue import dsn
from appliance.queue.dsn import DSNRecipient, build_dsn, status_code

ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 5 * 3600
HEADERS = (
    b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mail.163.com (mailappliance)\r\n"
    b"From: sender@163.com\r\nTo: user9@sina.com\r\nSubject: test\r\n"
    b"Message-ID: <orig.1@163.com>\r\n"
)
BODY = b"Hello,\r\n\r\nthe body, with a line of its own.\r\n--not a boundary\r\n"
ORIGINAL = HEADERS + b"\r\n" + BODY
DIAG = (
    "550 5.1.1 <user9@sina.com>: Recipient address rejected: User unknown in virtual mailbox table"
)
FAILED = DSNRecipient(
    final="user9@sina.com",
    original="rfc822;user9@sina.com",
    action="failed",
    status="5.1.1",
    diagnostic=DIAG,
    remote_mta="mail.sina.com",
    last_attempt=NOW - 60,
)
DELAYED = DSNRecipient(
    final="user7@sina.com",
    original=None,
    action="delayed",
    status="4.4.1",
    diagnostic=None,
    remote_mta="mail.sina.com",
    last_attempt=NOW - 60,
    will_retry_until=ARRIVAL + 5 * 86400,
)


def notice(**overrides: Any) -> bytes:
    """A notice from build_dsn with sensible arguments, any of them overridden."""
    args: dict[str, Any] = {
        "reporting_mta": "mail.163.com",
        "queue_id": "4F3A2B1C0D",
        "arrival": ARRIVAL,
        "sender": "sender@163.com",
        "recipients": [FAILED],
        "original": [ORIGINAL],
        "ret": None,
        "envid": None,
        "now": NOW,
    }
    args.update(overrides)
    return build_dsn(**args)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def messages(payload: object) -> list[EmailMessage]:
    """A payload the parser made a list of messages (multipart, message/*)."""
    assert isinstance(payload, list)
    assert all(isinstance(m, EmailMessage) for m in payload)
    return payload


def parts(raw: bytes) -> list[EmailMessage]:
    return messages(parse(raw).get_payload())


def status_blocks(raw: bytes) -> list[EmailMessage]:
    """The delivery-status part's field groups: per-message first, then one per recipient."""
    return messages(parts(raw)[1].get_payload())


def returned_bytes(raw: bytes) -> bytes:
    """The third part's content as it stands in the notice, between its header and boundary."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    third = raw.split(b"\r\n--" + boundary.encode())[3]
    return third.split(b"\r\n\r\n", 1)[1]


def text_of(part: EmailMessage) -> str:
    """A text part's content with LF line ends."""
    return part.get_content().replace("\r\n", "\n")


def lines(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\r\n")
    return raw[:-2].split(b"\r\n")


# -- structure ---------------------------------------------------------------------------


def test_build_dsn_failure_is_multipart_report_with_three_parts() -> None:
    """A bounce is multipart/report; report-type=delivery-status: text, status, message."""
    msg = parse(notice())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(notice())] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]


def test_build_dsn_failure_headers_address_sender_from_mailer_daemon() -> None:
    """The notice goes from MAILER-DAEMON to the original sender, auto-replied (RFC 3834)."""
    msg = parse(notice())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.163.com>"
    assert b"\r\nTo: <sender@163.com>\r\n" in notice()
    assert msg["To"].addresses[0].addr_spec == "sender@163.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert re.fullmatch(r"<[^@<>\s]+@mail\.163\.com>", msg["Message-ID"])


def test_build_dsn_message_id_domain_given_is_used() -> None:
    """message_id_domain overrides the reporting MTA as the Message-ID's domain."""
    msg = parse(notice(message_id_domain="163.com"))
    assert msg["Message-ID"].endswith("@163.com>")


def test_build_dsn_two_notices_differ_in_message_id_and_boundary() -> None:
    """Each notice has its own Message-ID and boundary."""
    one, two = parse(notice()), parse(notice())
    assert one["Message-ID"] != two["Message-ID"]
    assert one.get_boundary() != two.get_boundary()


def test_build_dsn_sane_input_parses_without_defects() -> None:
    """The email package finds no defect anywhere in a notice."""
    for raw in (
        notice(),
        notice(ret="HDRS"),
        notice(recipients=[DELAYED]),
        notice(original=[HEADERS + b"\r\n" + "Grüße\r\n".encode()]),
    ):
        for part in parse(raw).walk():
            assert part.defects == []


def test_build_dsn_text_part_names_address_and_diagnostic() -> None:
    """The readable part explains in Postfix's words and quotes the reply verbatim."""
    text = parts(notice())[0]
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "us-ascii"
    content = text_of(text)
    assert "This is the mail system at host mail.163.com." in content
    assert "could not\nbe delivered to one or more recipients" in content
    assert f"<user9@sina.com>: host mail.sina.com said: {DIAG}" in content


def test_build_dsn_recipient_without_reply_text_gets_status_meaning() -> None:
    """Without a reply, the text part says what the status code means."""
    local = DSNRecipient("box@163.com", None, "failed", "5.2.2", None, None)
    content = text_of(parts(notice(recipients=[local]))[0])
    assert "<box@163.com>: mailbox full (status 5.2.2)" in content


# -- the delivery-status part ------------------------------------------------------------


def test_build_dsn_per_message_fields_name_reporting_mta_and_arrival() -> None:
    """Reporting-MTA, Arrival-Date and the queue id lead the delivery-status part."""
    first = status_blocks(notice())[0]
    assert first["Reporting-MTA"] == "dns; mail.163.com"
    assert email.utils.parsedate_to_datetime(first["Arrival-Date"]).timestamp() == ARRIVAL
    assert first["X-Postfix-Queue-ID"] == "4F3A2B1C0D"
    assert "Original-Envelope-Id" not in first
    assert "Final-Recipient" not in first


def test_build_dsn_envid_given_appears_decoded() -> None:
    """ENVID= comes back as Original-Envelope-Id, decoded from xtext (RFC 3461)."""
    first = status_blocks(notice(envid="QQ314159+2Bx"))[0]
    assert first["Original-Envelope-Id"] == "QQ314159+x"


def test_build_dsn_recipient_fields_appear_as_given() -> None:
    """Each recipient has its own group: Action, Status, Remote-MTA, Diagnostic-Code..."""
    other = DSNRecipient(
        "user8@sina.com",
        "rfc822; User8@Sina.com",
        "failed",
        "5.2.1",
        "554 5.2.1 mailbox disabled",
        "mx2.sina.com",
    )
    blocks = status_blocks(notice(recipients=[FAILED, other]))
    assert len(blocks) == 3
    one, two = blocks[1], blocks[2]
    assert one["Final-Recipient"] == "rfc822; user9@sina.com"
    assert one["Original-Recipient"] == "rfc822; user9@sina.com"
    assert one["Action"] == "failed"
    assert one["Status"] == "5.1.1"
    assert one["Remote-MTA"] == "dns; mail.sina.com"
    assert one["Diagnostic-Code"] == f"smtp; {DIAG}"
    assert email.utils.parsedate_to_datetime(one["Last-Attempt-Date"]).timestamp() == NOW - 60
    assert "Will-Retry-Until" not in one
    assert two["Final-Recipient"] == "rfc822; user8@sina.com"
    assert two["Original-Recipient"] == "rfc822; User8@Sina.com"
    assert two["Status"] == "5.2.1"
    assert two["Remote-MTA"] == "dns; mx2.sina.com"
    assert two["Diagnostic-Code"] == "smtp; 554 5.2.1 mailbox disabled"
    assert "Last-Attempt-Date" not in two


def test_build_dsn_recipient_unknown_fields_are_omitted() -> None:
    """No ORCPT, no remote MTA, no reply, no attempt time: no such fields."""
    for orcpt in (None, "", "rfc822;"):
        local = DSNRecipient("box@163.com", orcpt, "failed", "5.2.2", None, None)
        block = status_blocks(notice(recipients=[local]))[1]
        assert block["Final-Recipient"] == "rfc822; box@163.com"
        assert block["Status"] == "5.2.2"
        for name in ("Original-Recipient", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"):
            assert name not in block


@pytest.mark.parametrize(
    ("orcpt", "field"),
    [
        ("rfc822;user9@sina.com", "rfc822; user9@sina.com"),
        ("rfc822; user9@sina.com", "rfc822; user9@sina.com"),
        ("rfc822;a+2Bb@sina.com", "rfc822; a+b@sina.com"),
        ("utf-8;\\x{7528}@sina.com", "utf-8; \\x{7528}@sina.com"),
        ("user9@sina.com", "rfc822; user9@sina.com"),
    ],
)
def test_build_dsn_orcpt_forms_normalised(orcpt: str, field: str) -> None:
    """ORCPT= becomes 'type; address', decoded from xtext."""
    rcpt = DSNRecipient("user9@sina.com", orcpt, "failed", "5.1.1", DIAG, "mail.sina.com")
    assert status_blocks(notice(recipients=[rcpt]))[1]["Original-Recipient"] == field


def test_build_dsn_local_reason_uses_postfix_diagnostic_type() -> None:
    """A reason that is no SMTP reply is typed X-Postfix, not smtp."""
    local = DSNRecipient("box@163.com", None, "failed", "5.2.2", "mailbox is full", None)
    block = status_blocks(notice(recipients=[local]))[1]
    assert block["Diagnostic-Code"] == "X-Postfix; mailbox is full"


def test_build_dsn_control_characters_in_reply_are_replaced() -> None:
    """Control characters and undecodable bytes in a reply become '?' in both parts."""
    odd = DSNRecipient("u@sina.com", None, "failed", "5.1.1", "550 a\x00b\x1bc\udcffd", "mx")
    raw = notice(recipients=[odd])
    assert status_blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 a?b?c?d"
    assert "<u@sina.com>: host mx said: 550 a?b?c?d" in text_of(parts(raw)[0])


def test_build_dsn_multiline_reply_cannot_inject_fields() -> None:
    """A reply with line breaks is joined into one field; it starts no field of its own."""
    evil = DSNRecipient(
        "user9@sina.com",
        None,
        "failed",
        "5.1.1",
        "550-5.1.1 first\r\n550 5.1.1 second\r\nAction: delivered\n\r\n--x",
        "mail.sina.com",
    )
    raw = notice(recipients=[evil])
    block = status_blocks(raw)[1]
    assert block.get_all("Action") == ["failed"]
    assert block["Diagnostic-Code"] == (
        "smtp; 550-5.1.1 first 550 5.1.1 second Action: delivered --x"
    )
    assert len(status_blocks(raw)) == 2


def test_build_dsn_non_ascii_recipient_uses_utf8_address_type() -> None:
    """A non-ASCII address is 'utf-8;' with RFC 6533 escapes; the text part turns utf-8."""
    rcpt = DSNRecipient("用户@sina.com", "utf-8;用户@sina.com", "failed", "5.1.1", None, None)
    raw = notice(recipients=[rcpt])
    text, status = parts(raw)[0], parts(raw)[1]
    block = status_blocks(raw)[1]
    assert block["Final-Recipient"] == "utf-8; \\x{7528}\\x{6237}@sina.com"
    assert block["Original-Recipient"] == "utf-8; \\x{7528}\\x{6237}@sina.com"
    assert text.get_content_charset() == "utf-8"
    assert "<用户@sina.com>" in text_of(text)
    assert status.as_bytes().isascii()


# -- what is returned --------------------------------------------------------------------


def test_build_dsn_failure_default_returns_full_message_intact() -> None:
    """A bounce without RET returns the whole message, byte for byte."""
    raw = notice()
    third = parts(raw)[2]
    assert third.get_content_type() == "message/rfc822"
    assert third["Content-Description"] == "Undelivered Message"
    assert returned_bytes(raw) == ORIGINAL
    [inner] = messages(third.get_payload())
    assert inner["Subject"] == "test"
    assert inner.get_content().encode() == BODY


def test_build_dsn_ret_hdrs_returns_headers_without_body() -> None:
    """RET=HDRS returns text/rfc822-headers: the header section, not the body."""
    raw = notice(ret="HDRS")
    third = parts(raw)[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert returned_bytes(raw) == HEADERS
    assert b"the body" not in raw


def test_build_dsn_ret_full_for_delay_returns_message() -> None:
    """RET=FULL asks for the message in a delay notice too."""
    assert parts(notice(recipients=[DELAYED], ret="full"))[2].get_content_type() == (
        "message/rfc822"
    )


@pytest.mark.parametrize("action", ["delayed", "delivered", "relayed"])
def test_build_dsn_non_failure_default_returns_headers(action: str) -> None:
    """Without RET, delay and success notices return only the headers."""
    rcpt = DSNRecipient(
        "user9@sina.com",
        None,
        action,
        "4.4.1" if action == "delayed" else "2.0.0",
        None,
        "mail.sina.com",
    )
    raw = notice(recipients=[rcpt])
    assert parts(raw)[2].get_content_type() == "text/rfc822-headers"
    assert returned_bytes(raw) == HEADERS


def test_build_dsn_over_max_returned_size_falls_back_to_headers() -> None:
    """An original larger than max_returned_size comes back as its headers only."""
    raw = notice(max_returned_size=len(ORIGINAL) - 1)
    assert parts(raw)[2].get_content_type() == "text/rfc822-headers"
    assert returned_bytes(raw) == HEADERS
    assert parts(notice(max_returned_size=len(ORIGINAL)))[2].get_content_type() == (
        "message/rfc822"
    )


def test_build_dsn_headers_only_stops_reading_after_header_section() -> None:
    """For headers only, the original is not read past its empty line."""

    def chunks() -> Iterator[bytes]:
        yield HEADERS
        yield b"\r\nfirst body chunk\r\n"
        raise AssertionError("read past the header section")

    assert returned_bytes(notice(ret="HDRS", original=chunks())) == HEADERS


def test_build_dsn_original_in_chunks_keeps_crlf_split_across_chunks() -> None:
    """A CRLF split between two chunks stays one line end."""
    cut = ORIGINAL.index(b"\r\n") + 1
    raw = notice(original=[ORIGINAL[:cut], ORIGINAL[cut:]])
    assert returned_bytes(raw) == ORIGINAL


def test_build_dsn_8bit_original_keeps_its_bytes() -> None:
    """An 8-bit original is returned unencoded, with 8bit on its part and on the whole."""
    original = HEADERS.replace(b"Subject: test", "Subject: 测试".encode()) + (
        "\r\nGrüße, 你好\r\n".encode()
    )
    raw = notice(original=[original])
    msg = parse(raw)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert parts(raw)[2]["Content-Transfer-Encoding"] == "8bit"
    assert returned_bytes(raw) == original
    hdrs = notice(original=[original], ret="HDRS")
    assert parts(hdrs)[2]["Content-Transfer-Encoding"] == "8bit"
    assert "Subject: 测试".encode() in returned_bytes(hdrs)


def test_build_dsn_7bit_notice_has_no_transfer_encoding() -> None:
    """An ASCII notice about an ASCII original declares no transfer encoding."""
    raw = notice()
    assert b"Content-Transfer-Encoding" not in raw


def test_build_dsn_original_with_overlong_line_returns_headers() -> None:
    """A body line over 998 octets cannot be returned as is: the headers come instead."""
    raw = notice(original=[HEADERS + b"\r\n" + b"x" * 2000 + b"\r\n"])
    assert parts(raw)[2].get_content_type() == "text/rfc822-headers"
    assert returned_bytes(raw) == HEADERS


def test_build_dsn_overlong_header_line_is_folded() -> None:
    """A header line over 998 octets is folded at white space, so it unfolds to itself."""
    long_header = b"X-Long: " + b" ".join([b"word%d" % i for i in range(400)])
    raw = notice(original=[long_header + b"\r\n" + HEADERS + b"\r\nbody\r\n"], ret="HDRS")
    returned = returned_bytes(raw)
    assert max(len(line) for line in returned.split(b"\r\n")) <= 998
    assert returned.replace(b"\r\n ", b" ").startswith(long_header + b"\r\n")


def test_build_dsn_boundary_found_in_parts_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A boundary that occurs in the original is drawn again."""
    tries = iter(["=_taken", "=_free"])
    monkeypatch.setattr(dsn, "_new_boundary", lambda: next(tries))
    raw = notice(original=[ORIGINAL + b"--=_taken\r\n"])
    assert parse(raw).get_boundary() == "=_free"
    assert len(parts(raw)) == 3


# -- kinds of notice ---------------------------------------------------------------------


def test_build_dsn_delayed_has_will_retry_until() -> None:
    """A delay notice says it is still trying, until when, in text and fields."""
    raw = notice(recipients=[DELAYED])
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    block = status_blocks(raw)[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    until = block["Will-Retry-Until"]
    assert email.utils.parsedate_to_datetime(until).timestamp() == ARRIVAL + 5 * 86400
    content = text_of(parts(raw)[0])
    assert "THIS IS A WARNING ONLY" in content
    assert "for more than 5 hour(s)" in content
    assert f"It will be retried until {until}." in content
    assert "<user7@sina.com>: host mail.sina.com: no answer from host (status 4.4.1)" in content


def test_build_dsn_will_retry_until_only_for_delayed() -> None:
    """Will-Retry-Until is left out of a failure even when given."""
    rcpt = DSNRecipient("u@sina.com", None, "failed", "5.4.7", None, None, None, NOW)
    assert "Will-Retry-Until" not in status_blocks(notice(recipients=[rcpt]))[1]


@pytest.mark.parametrize("action", ["delivered", "relayed"])
def test_build_dsn_success_has_success_subject(action: str) -> None:
    """Delivered and relayed recipients make a success report."""
    rcpt = DSNRecipient(
        "user9@sina.com", None, action, "2.0.0", "250 2.0.0 Ok: queued as 1", "mail.sina.com"
    )
    raw = notice(recipients=[rcpt])
    assert parse(raw)["Subject"] == "Successful Mail Delivery Report"
    assert status_blocks(raw)[1]["Action"] == action
    assert "successfully delivered" in text_of(parts(raw)[0])


def test_build_dsn_delivered_and_relayed_share_a_notice() -> None:
    """Delivered and relayed are one kind, so they go in one report."""
    a = DSNRecipient("a@163.com", None, "delivered", "2.0.0", None, None)
    b = DSNRecipient("b@sina.com", None, "relayed", "2.0.0", None, "mail.sina.com")
    assert len(status_blocks(notice(recipients=[a, b]))) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"recipients": [FAILED, DELAYED]}, "one kind of action"),
        ({"recipients": [DSNRecipient("a@b.c", None, "bounced", "5.0.0", None, None)]}, "action"),
        ({"recipients": [DSNRecipient("a@b.c", None, "failed", "550", None, None)]}, "status"),
        ({"sender": ""}, "null sender"),
        ({"ret": "BODY"}, "RET"),
    ],
)
def test_build_dsn_caller_mistake_raises_value_error(overrides: dict, message: str) -> None:
    """What only a caller's mistake gives is a ValueError, not a malformed notice."""
    with pytest.raises(ValueError, match=message):
        notice(**overrides)


# -- line discipline and odd input -------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        [],
        [b""],
        [HEADERS],
        [HEADERS.rstrip(b"\r\n")],
        [b"no headers at all\r\njust text\r\n"],
        [b"\r\nbody after an empty header section\r\n"],
        [ORIGINAL.replace(b"\r\n", b"\n")],
        [ORIGINAL.replace(b"\r\n", b"\r")],
        [bytes([b]) for b in ORIGINAL],
        [b"\x00\xff\xfe binary\r\n\r\n\x00"],
    ],
    ids=[
        "none",
        "empty",
        "no-body",
        "no-final-crlf",
        "no-headers",
        "empty-header",
        "bare-lf",
        "bare-cr",
        "byte-chunks",
        "binary",
    ],
)
@pytest.mark.parametrize("ret", ["FULL", "HDRS"])
def test_build_dsn_odd_original_gives_well_formed_notice(original: list[bytes], ret: str) -> None:
    """Odd originals give a notice of three parts, CRLF only, lines within 998 octets."""
    raw = notice(original=original, ret=ret)
    assert len(parts(raw)) == 3
    assert parse(raw).defects == []
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in lines(raw)) <= 998


def test_build_dsn_bare_lf_original_is_returned_with_crlf() -> None:
    """Bare LF line ends in the original come back as CRLF, nothing else changed."""
    raw = notice(original=[ORIGINAL.replace(b"\r\n", b"\n")])
    assert returned_bytes(raw) == ORIGINAL


def test_build_dsn_every_line_ends_in_crlf() -> None:
    """No bare LF or CR anywhere in a notice."""
    for raw in (notice(), notice(ret="HDRS"), notice(recipients=[DELAYED])):
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert b"\r" not in raw.replace(b"\r\n", b"")


def test_build_dsn_long_fields_stay_within_998_octets() -> None:
    """A huge reply and address are folded or wrapped: no line over 998 octets."""
    huge = "550 5.7.1 " + " ".join(["blocked"] * 500) + " " + "y" * 3000
    rcpt = DSNRecipient("z" * 1200 + "@sina.com", None, "failed", "5.7.1", huge, "mail.sina.com")
    raw = notice(recipients=[rcpt], sender="s" * 1100 + "@163.com")
    assert max(len(line) for line in lines(raw)) <= 998
    block = status_blocks(raw)[1]
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.7.1 blocked blocked")
    assert block["Status"] == "5.7.1"
    assert parse(raw).defects == []


def test_build_dsn_folded_diagnostic_unfolds_to_the_reply() -> None:
    """A reply past 78 columns is folded at spaces and unfolds to itself."""
    reply = "550 5.1.1 " + " ".join(f"word{i}" for i in range(60))
    rcpt = DSNRecipient("u@sina.com", None, "failed", "5.1.1", reply, "mail.sina.com")
    raw = notice(recipients=[rcpt])
    assert max(len(line) for line in parts(raw)[1].as_bytes().split(b"\n")) <= 80
    assert status_blocks(raw)[1]["Diagnostic-Code"] == f"smtp; {reply}"


# -- status_code -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "permanent", "code"),
    [
        ("550 5.1.1 <x@sina.com>: Recipient address rejected", True, "5.1.1"),
        ("5.4.6 mail loops back to myself", True, "5.4.6"),
        ("451 4.7.1 greylisted, try again", False, "4.7.1"),
        ("550-5.7.1 first line", True, "5.7.1"),
        ("250 2.0.0 Ok: queued as 4F3A", False, "2.0.0"),
        ("421 4.4.2 mx.sina.com Error: timeout exceeded.", False, "4.4.2"),
        ("550 User unknown", True, "5.0.0"),
        ("450 try later", False, "4.0.0"),
        ("connect to 127.5.1.1: timed out", False, "4.0.0"),  # no 5.1.1 from an address
        ("550 see 3.1.1 or 5.1.1.2", True, "5.0.0"),
        ("554 5.7.1. policy", True, "5.7.1"),
        ("", True, "5.0.0"),
    ],
)
def test_status_code_reply_text_gives_code(text: str, permanent: bool, code: str) -> None:
    """The first d.d.d with class 2/4/5 is the code; without one, 5.0.0 or 4.0.0."""
    assert status_code(text, permanent) == code
