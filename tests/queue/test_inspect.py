"""The queue's read side: list_queue, format_list and show_message on real queue files."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from appliance.interfaces import Envelope, Mailbox, Recipient
from appliance.queue.envelope import QueueEntry
from appliance.queue.inspect import QueueSummary, format_list, list_queue, show_message
from appliance.queue.state import append_state, result_record, schedule_record

NOW = 1764590000.0
HEADERS = (
    b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.test (mailappliance)\r\n"
    b"From: sender@remote.test\r\nSubject: evil \x1b[31mred\x07 \xff\r\n"
)
MESSAGE = HEADERS + b"\r\nBody: not a header\r\n"


def relayed(address: str, *forward_to: str, notify: str | None = None) -> Recipient:
    return Recipient(address, remote=True, forward_to=forward_to or (address,), notify=notify)


def envelope(*rcpts: Recipient, mail_from: str = "sender@remote.test", **kw: object) -> Envelope:
    return Envelope(
        mail_from=mail_from,
        recipients=rcpts,
        client_ip="127.0.0.1",
        helo="client.test",
        received_at=NOW,
        **kw,  # type: ignore[arg-type]
    )


def put(
    queue_dir: Path,
    where: str,
    qid: str,
    env: Envelope,
    arrival: float,
    data: bytes = MESSAGE,
) -> Path:
    """A complete message in queue_dir/where, as appliance.queue.files leaves it."""
    directory = queue_dir / where
    directory.mkdir(parents=True, exist_ok=True)
    (directory / qid).write_bytes(data)
    (directory / f"{qid}.env").write_bytes(QueueEntry(qid, env, arrival, len(data)).to_bytes())
    return directory


def filled_queue(queue_dir: Path) -> None:
    """An incoming message (one copy done), a deferred one tried twice, a held one."""
    inc = put(
        queue_dir,
        "incoming",
        "AAAAAAAAA1",
        envelope(
            Recipient("a@163.com", (Mailbox("163.com", "a"),)),
            Recipient("b@163.com", (Mailbox("163.com", "b"),)),
            relayed("far@sina.com"),
        ),
        NOW - 60,
    )
    (inc / "AAAAAAAAA1.done").write_bytes(b'"a@163.com"\n"torn')
    dfr = put(
        queue_dir,
        "deferred",
        "BBBBBBBBB2",
        envelope(
            relayed("list@163.com", "x@sina.com", "y@sina.com", "z@qq.com", notify="FAILURE"),
            mail_from="",
            dsn_ret="HDRS",
            dsn_envid="env-42",
        ),
        NOW - 3600,
    )
    state = str(dfr / "BBBBBBBBB2.state")
    append_state(
        state,
        [
            result_record("x@sina.com", "sent", "250 ok", "mail.sina.com[127.0.1.4]:25", NOW - 900),
            result_record("y@sina.com", "deferred", "old error", "mail.sina.com", NOW - 900),
            result_record("z@qq.com", "deferred", "connect to mx.qq.com: refused", "", NOW - 300),
            schedule_record(NOW + 240, 2, NOW - 300),
        ],
        sync=False,
    )
    put(queue_dir, "deferred", "CCCCCCCCC3", envelope(relayed("h@qq.com")), NOW - 30)
    (dfr / "CCCCCCCCC3.hold").touch()


def test_list_queue_filled_oldest_first_with_pending_recipients(tmp_path: Path) -> None:
    """list_queue: oldest first, only recipients not done, last error, schedule, hold."""
    filled_queue(tmp_path)
    items = list_queue(tmp_path)
    assert [s.queue_id for s in items] == ["BBBBBBBBB2", "AAAAAAAAA1", "CCCCCCCCC3"]
    deferred, incoming, held = items
    assert deferred == QueueSummary(
        queue_id="BBBBBBBBB2",
        where="deferred",
        size=len(MESSAGE),
        arrival=NOW - 3600,
        sender="",
        recipients=("y@sina.com", "z@qq.com"),
        last_error="connect to mx.qq.com: refused",
        next_try=NOW + 240,
        held=False,
    )
    assert incoming.where == "incoming" and incoming.recipients == ("b@163.com", "far@sina.com")
    assert incoming.last_error is None and incoming.next_try is None and not incoming.held
    assert held.held and held.recipients == ("h@qq.com",) and held.next_try is None


def test_list_queue_incomplete_and_unreadable_entries_skipped(tmp_path: Path) -> None:
    """Data without .env, .env without data, a broken .env and a stray file are not listed."""
    put(tmp_path, "deferred", "DDDDDDDDD4", envelope(relayed("d@qq.com")), NOW)
    dfr = tmp_path / "deferred"
    (dfr / "EEEEEEEEE5").write_bytes(MESSAGE)  # data renamed in, .env not yet
    (dfr / "FFFFFFFFF6.env").write_bytes(b"{}")  # an orphan .env
    (dfr / "0000000007").write_bytes(MESSAGE)
    (dfr / "0000000007.env").write_bytes(b"{not json")
    (dfr / "README").write_text("not a queue file")
    assert [s.queue_id for s in list_queue(tmp_path)] == ["DDDDDDDDD4"]


def test_list_queue_message_moving_to_deferred_listed_once(tmp_path: Path) -> None:
    """Seen in incoming/ and deferred/ at once (mid-move): one entry, the deferred one."""
    env = envelope(relayed("m@qq.com"))
    put(tmp_path, "incoming", "ABCDEF0123", env, NOW)
    put(tmp_path, "deferred", "ABCDEF0123", env, NOW)
    (item,) = list_queue(tmp_path)
    assert item.where == "deferred"


def test_list_queue_file_vanishing_mid_scan_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An .env removed between the directory listing and the read: skipped, no error."""
    put(tmp_path, "deferred", "1111111111", envelope(relayed("v@qq.com")), NOW)
    put(tmp_path, "deferred", "2222222222", envelope(relayed("w@qq.com")), NOW)
    real_listdir = os.listdir

    def listdir_then_deliver(path: str | os.PathLike[str]) -> list[str]:
        names = real_listdir(path)
        for name in ("1111111111", "1111111111.env"):
            (tmp_path / "deferred" / name).unlink(missing_ok=True)
        return names

    monkeypatch.setattr(os, "listdir", listdir_then_deliver)
    assert [s.queue_id for s in list_queue(tmp_path)] == ["2222222222"]


def test_list_queue_missing_queue_dir_empty(tmp_path: Path) -> None:
    """A state dir the appliance never ran in: an empty queue, not an error."""
    assert list_queue(tmp_path / "nowhere") == []


def test_format_list_empty_queue_says_so() -> None:
    """No messages: Postfix's words."""
    assert format_list([], NOW) == "Mail queue is empty"


def test_format_list_filled_queue_like_postqueue(tmp_path: Path) -> None:
    """Heading, id with '!' when held, size, arrival, sender, error, recipients, next try, total."""
    filled_queue(tmp_path)
    text = format_list(list_queue(tmp_path), NOW)
    lines = text.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    arrival = time.localtime(NOW - 3600)
    day = f"{time.strftime('%a %b', arrival)} {arrival.tm_mday:2d} "
    assert lines[1] == (
        f"BBBBBBBBB2  {len(MESSAGE):>8} {day}{time.strftime('%H:%M:%S', arrival)}  MAILER-DAEMON"
    )
    assert lines[1].index("MAILER-DAEMON") == lines[0].index("-Sender/Recipient")
    assert lines[2] == "(connect to mx.qq.com: refused)"
    indent = " " * 42
    assert lines[3:7] == [
        indent + "y@sina.com",
        indent + "z@qq.com",
        indent + "next try: in 4m",
        "",
    ]
    assert lines[7].startswith("AAAAAAAAA1  ") and lines[7].endswith(" sender@remote.test")
    assert lines[8:11] == [indent + "b@163.com", indent + "far@sina.com", ""]
    assert lines[11].startswith("CCCCCCCCC3! ")
    assert lines[12:15] == [indent + "h@qq.com", indent + "next try: when released", ""]
    assert lines[-1] == "-- 1 Kbytes in 3 Requests."


def test_format_list_next_try_due_and_singular_total() -> None:
    """A deferred message due already says 'now'; one message is '1 Request.'"""
    item = QueueSummary("ABCDEF0123", "deferred", 2048, NOW, "a@b.test", ("c@d.test",), None,
                        NOW - 5, False)  # fmt: skip
    lines = format_list([item], NOW).splitlines()
    assert lines[-3].strip() == "next try: now"
    assert lines[-1] == "-- 2 Kbytes in 1 Request."
    later = format_list([QueueSummary(**{**item.__dict__, "next_try": NOW + 2 * 3600 + 61})], NOW)
    assert "next try: in 2h 2m" in later


def test_format_list_control_characters_escaped() -> None:
    """A remote reply with escape sequences is shown escaped, not sent to the terminal."""
    item = QueueSummary("ABCDEF0123", "deferred", 10, NOW, "a@b.test", ("c@d.test",),
                        "550 \x1b[2Jgone\r\n", None, False)  # fmt: skip
    text = format_list([item], NOW)
    assert "\x1b" not in text and "\r" not in text
    assert "(550 \\x1b[2Jgone\\r\\n)" in text


def test_show_message_deferred_envelope_states_and_headers(tmp_path: Path) -> None:
    """show: sender, DSN params, arrival, every recipient's state, the header section only."""
    filled_queue(tmp_path)
    text = show_message(tmp_path, "BBBBBBBBB2")
    assert "queue id:  BBBBBBBBB2" in text
    assert "queue:     deferred\n" in text
    assert "sender:    <>" in text
    assert "client:    unknown[127.0.0.1] helo=client.test" in text
    assert "dsn:       ret=HDRS envid=env-42" in text
    assert "attempts:  2, next try " in text
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW - 3600)) in text
    assert "  <list@163.com> notify=FAILURE" in text
    assert re.search(
        r"    x@sina\.com: sent, relay=mail\.sina\.com\[127\.0\.1\.4\]:25, at .* \(250 ok\)", text
    )
    assert re.search(r"    y@sina\.com: deferred, relay=mail\.sina\.com, at .* \(old error\)", text)
    assert re.search(r"    z@qq\.com: deferred, at .* \(connect to mx\.qq\.com: refused\)", text)
    headers = text.split("headers:\n", 1)[1].splitlines()
    assert headers == [
        "  Received: from client.test (unknown [127.0.0.1])",
        "  \tby mx.test (mailappliance)",
        "  From: sender@remote.test",
        "  Subject: evil \\x1b[31mred\\x07 \ufffd",
    ]
    assert "Body:" not in text


def test_show_message_incoming_and_held(tmp_path: Path) -> None:
    """Local copies show sent or pending; a held message says so."""
    filled_queue(tmp_path)
    text = show_message(tmp_path, "AAAAAAAAA1")
    assert "queue:     incoming\n" in text
    assert "    a@163.com: sent (local mailbox)" in text
    assert "    b@163.com: pending (local mailbox)" in text
    assert "    far@sina.com: pending (relayed after local delivery)" in text
    held = show_message(tmp_path, "CCCCCCCCC3")
    assert "queue:     deferred (on hold)" in held
    assert "attempts:  0, next try when released" in held
    assert "    h@qq.com: pending (not tried yet)" in held


def test_show_message_unknown_incomplete_or_path_id_raises_key_error(tmp_path: Path) -> None:
    """No such id, an incomplete message and a path-like id are all KeyError."""
    filled_queue(tmp_path)
    (tmp_path / "deferred" / "EEEEEEEEE5").write_bytes(MESSAGE)  # no .env
    for qid in ("0123456789", "EEEEEEEEE5", "../deferred/BBBBBBBBB2", ""):
        with pytest.raises(KeyError):
            show_message(tmp_path, qid)


def test_show_message_headers_without_body_or_blank_line(tmp_path: Path) -> None:
    """A message that is all header lines (LF endings too) shows every line."""
    put(tmp_path, "deferred", "ABCDEF0123", envelope(relayed("m@qq.com")), NOW, b"A: 1\nB: 2\n")
    text = show_message(tmp_path, "ABCDEF0123")
    assert text.endswith("headers:\n  A: 1\n  B: 2")
