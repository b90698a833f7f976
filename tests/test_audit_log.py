"""The audit log's writes: lines gathered within a reactor turn go out in one append, the
admin command's at once, and closing writes what is pending."""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock

from appliance.audit import AuditLog


def event(kind: str, **fields: object) -> dict:
    return {"event": kind, "log_namespace": "mail.smtpd", "log_time": 1_800_000_000.0, **fields}


def test_lines_of_one_turn_written_together(tmp_path, monkeypatch) -> None:
    clock = Clock()
    log = AuditLog(tmp_path / "audit.log", clock)
    log.open()
    writes: list[int] = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(len(data)) or real(fd, data))
    log(event("auth", client="192.0.2.1", user="u@example.test"))
    log(event("auth_failed", client="192.0.2.1", user="v@example.test"))
    log(event("connect", client="192.0.2.1"))  # not an audit kind
    assert (tmp_path / "audit.log").read_text() == "" and writes == []
    clock.advance(0)
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["login", "login_failed"] and len(writes) == 1
    assert lines[0]["user"] == "u@example.test" and lines[0]["time"].startswith("2027-01-15")
    log(event("auth", client="192.0.2.2", user="w@example.test"))
    log.close()  # what is pending is written, the call cancelled
    assert len((tmp_path / "audit.log").read_text().splitlines()) == 3
    assert not clock.getDelayedCalls()


def test_without_a_reactor_each_line_at_once(tmp_path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.record("admin", command="queue flush", target="ALL", count=2)
    (line,) = (tmp_path / "audit.log").read_text().splitlines()
    assert json.loads(line)["command"] == "queue flush" and json.loads(line)["component"] == "cli"


def test_record_time_is_iso_8601_utc_with_milliseconds(tmp_path) -> None:
    """The time text, made once a second and completed per record, is what
    datetime.isoformat(timespec="milliseconds") says, at the edges of a second too."""
    from datetime import UTC, datetime

    log = AuditLog(tmp_path / "audit.log")
    log.open()
    stamps = [1764633600.0, 1764633600.0004, 1764633600.9994, 1764633600.9999996, 1764633601.5]
    for when in stamps:
        log.write("login", "smtpd", when, {"event": "auth", "peer": "127.0.0.1"})
    log.close()
    times = [json.loads(line)["time"] for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert times == [
        datetime.fromtimestamp(w, UTC).isoformat(timespec="milliseconds") for w in stamps
    ]
    assert times[0] == "2025-12-02T00:00:00.000+00:00"
