"""The control socket over a real UNIX socket: the real client against the real server."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError

from appliance.control.client import NotRunning, send_command
from appliance.control.server import ControlService, parse_request
from appliance.errors import ApplianceError
from appliance.names import parse_queue_id


class FakeAdmin:
    """A QueueAdmin that records its calls and answers with set counts."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.counts = counts or {}
        self.error: Exception | None = None

    def _call(self, command: str, queue_id: str | None) -> defer.Deferred[int]:
        self.calls.append((command, queue_id))
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(self.counts.get(command, 1))

    def flush(self, queue_id: str | None = None) -> defer.Deferred[int]:
        return self._call("flush", queue_id)

    def delete(self, queue_id: str | None) -> defer.Deferred[int]:
        return self._call("delete", queue_id)

    def hold(self, queue_id: str | None) -> defer.Deferred[int]:
        return self._call("hold", queue_id)

    def release(self, queue_id: str | None) -> defer.Deferred[int]:
        return self._call("release", queue_id)


def raw_request(path: Path, data: bytes) -> bytes:
    """Blocking: send data as it is, return everything the server says before it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def answer(path: Path, data: bytes) -> defer.Deferred[dict[str, Any]]:
    return threads.deferToThread(lambda: json.loads(raw_request(path, data)))


def started(path: Path, admin: FakeAdmin, **kw: Any) -> ControlService:
    svc = ControlService(path, admin, **kw)
    svc.privilegedStartService()
    svc.startService()
    return svc


def dead_socket(path: Path) -> None:
    """A socket file nobody listens on, as a crashed appliance leaves it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


@pytest_twisted.inlineCallbacks
def test_send_command_each_command_reaches_admin_with_count(
    tmp_path: Path,
) -> Generator[Any, Any, None]:
    """flush ALL, delete/hold/release by id: the admin gets the call, the client the count."""
    path = tmp_path / "control.sock"
    admin = FakeAdmin({"flush": 3, "delete": 1, "hold": 0, "release": 2})
    svc = started(path, admin)
    try:
        replies = []
        for command, queue_id in [
            ("flush", None),
            ("delete", "3F1A2B4C5D"),
            ("hold", "3f1a2b4c5d"),
            ("release", "ALL"),
        ]:
            replies.append((yield threads.deferToThread(send_command, path, command, queue_id)))
    finally:
        yield svc.stopService()
    assert replies == [
        {"ok": True, "count": 3},
        {"ok": True, "count": 1},
        {"ok": True, "count": 0},
        {"ok": True, "count": 2},
    ]
    assert admin.calls == [
        ("flush", None),
        ("delete", "3F1A2B4C5D"),
        ("hold", "3F1A2B4C5D"),
        ("release", None),
    ]


@pytest_twisted.inlineCallbacks
def test_control_service_socket_mode_0600_bound_privileged_removed_on_stop(
    tmp_path: Path,
) -> Generator[Any, Any, None]:
    """The socket exists after privilegedStartService, is 0600 even under umask 0, and goes
    away on stop."""
    path = tmp_path / "control.sock"
    old = os.umask(0)
    try:
        svc = ControlService(path, FakeAdmin())
        svc.privilegedStartService()
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        svc.startService()
        assert (yield threads.deferToThread(send_command, path, "flush", None))["ok"]
    finally:
        yield svc.stopService()
    assert not os.path.lexists(path)


@pytest_twisted.inlineCallbacks
def test_control_service_chown_to_given_owner(tmp_path: Path) -> Generator[Any, Any, None]:
    """uid/gid given: the socket belongs to them (the dropped user can still be reached)."""
    uid, gid = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
    path = tmp_path / "control.sock"
    svc = started(path, FakeAdmin(), uid=uid, gid=gid)
    try:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid)
    finally:
        yield svc.stopService()


@pytest_twisted.inlineCallbacks
def test_control_service_stale_socket_replaced(tmp_path: Path) -> Generator[Any, Any, None]:
    """A socket left by a crash (nobody listening) is removed and bound again."""
    path = tmp_path / "control.sock"
    dead_socket(path)
    os.chmod(path, 0o777)
    with pytest.raises(NotRunning):
        send_command(path, "flush", None)  # connection refused: not running
    svc = started(path, FakeAdmin())
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600  # a new socket (inodes recur)
        assert (yield threads.deferToThread(send_command, path, "flush", None))["ok"]
    finally:
        yield svc.stopService()


def test_control_service_regular_file_left_alone(tmp_path: Path) -> None:
    """A file that is not a socket is never removed: the bind fails instead."""
    path = tmp_path / "control.sock"
    path.write_text("important")
    svc = ControlService(path, FakeAdmin())
    with pytest.raises(CannotListenError):
        svc.privilegedStartService()
    assert path.read_text() == "important"


@pytest_twisted.inlineCallbacks
def test_control_service_live_socket_not_stolen(tmp_path: Path) -> Generator[Any, Any, None]:
    """A socket another appliance answers on is kept: the second bind fails."""
    path = tmp_path / "control.sock"
    first = started(path, FakeAdmin())
    try:
        with pytest.raises(CannotListenError, match="another appliance"):
            ControlService(path, FakeAdmin()).privilegedStartService()
        assert (yield threads.deferToThread(send_command, path, "flush", None))["ok"]
    finally:
        yield first.stopService()


@pytest_twisted.inlineCallbacks
def test_control_protocol_bad_requests_answered_with_errors(
    tmp_path: Path,
) -> Generator[Any, Any, None]:
    """Bad JSON, a non-object, unknown command or field, bad id, long line: an error answer."""
    path = tmp_path / "control.sock"
    admin = FakeAdmin()
    svc = started(path, admin)
    cases = [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"command": "frob", "queue_id": null}\n', "unknown command 'frob'"),
        (b'{"command": 7}\n', "unknown command '7'"),
        (b'{"command": "flush", "queue_id": null, "x": 1}\n', "unknown field(s) in the request: x"),
        (b'{"command": "delete", "queue_id": "../../etc"}\n', "10 hex digits"),
        (b'{"command": "delete", "queue_id": "3F1A2B4C5"}\n', "10 hex digits"),
        (b'{"command": "hold", "queue_id": 12}\n', "must be a string or null"),
        (b'{"command": "flush", "queue_id": "' + b"A" * 5000 + b'"}\n', "longer than 4096"),
        (b"x" * 9000, "longer than 4096"),  # no line end at all
    ]
    try:
        replies = []
        for data, _ in cases:
            replies.append((yield answer(path, data)))
    finally:
        yield svc.stopService()
    for (_, expected), reply in zip(cases, replies, strict=True):
        assert reply["ok"] is False and expected in reply["error"], reply
    assert admin.calls == []


@pytest_twisted.inlineCallbacks
def test_control_protocol_one_request_per_connection(tmp_path: Path) -> Generator[Any, Any, None]:
    """Two request lines in one connection: the first is done and answered, then it closes."""
    path = tmp_path / "control.sock"
    admin = FakeAdmin()
    svc = started(path, admin)
    try:
        data = b'{"command":"flush","queue_id":null}\r\n{"command":"delete","queue_id":"ALL"}\n'
        out = yield threads.deferToThread(raw_request, path, data)
    finally:
        yield svc.stopService()
    assert out == b'{"ok": true, "count": 1}\n'
    assert admin.calls == [("flush", None)]


@pytest_twisted.inlineCallbacks
def test_control_protocol_admin_errors_answered(
    tmp_path: Path, logged_errors: list[dict]
) -> Generator[Any, Any, None]:
    """An ApplianceError is answered with its sentence; anything else is logged and answered
    as an internal error, without a traceback to the client."""
    path = tmp_path / "control.sock"
    admin = FakeAdmin()
    svc = started(path, admin)
    try:
        admin.error = ApplianceError("the queue is stopping")
        refused = yield threads.deferToThread(send_command, path, "flush", None)
        admin.error = RuntimeError("boom")
        broken = yield threads.deferToThread(send_command, path, "delete", "ALL")
    finally:
        yield svc.stopService()
    assert refused == {"ok": False, "error": "the queue is stopping"}
    assert broken == {"ok": False, "error": "internal error (see the appliance's log)"}
    assert len(logged_errors) == 1 and "boom" in str(logged_errors[0]["log_failure"].value)
    logged_errors.clear()  # expected: the unexpected error is logged as a failure


@pytest_twisted.inlineCallbacks
def test_control_protocol_idle_connection_closed(tmp_path: Path) -> Generator[Any, Any, None]:
    """A client that sends nothing is disconnected after the idle timeout."""
    path = tmp_path / "control.sock"
    svc = started(path, FakeAdmin(), idle_timeout=0.2)
    try:
        out = yield threads.deferToThread(raw_request, path, b"")
    finally:
        yield svc.stopService()
    assert out == b""


def test_send_command_no_socket_not_running(tmp_path: Path) -> None:
    """No socket file: NotRunning, with the path in its sentence."""
    path = tmp_path / "control.sock"
    with pytest.raises(NotRunning) as e:
        send_command(path, "flush", None)
    assert str(e.value) == f"the appliance is not running (no control socket at {path})"
    assert isinstance(e.value, ApplianceError)


def test_send_command_silent_listener_times_out(tmp_path: Path) -> None:
    """A listener that never answers: an ApplianceError naming the timeout, not a hang."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        # the request fits the socket buffer, so it is sent before anyone accepts
        with pytest.raises(ApplianceError, match="did not answer within 0.2s"):
            send_command(path, "flush", None, timeout=0.2)


def test_send_command_garbage_answer_is_an_error(tmp_path: Path) -> None:
    """A listener that answers something not JSON: an ApplianceError quoting it."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"220 hello\n")

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with pytest.raises(ApplianceError, match="cannot be read: b'220 hello'"):
                send_command(path, "flush", None, timeout=10)
        finally:
            thread.join(10)


def test_parse_request_and_queue_id() -> None:
    """The wire checks: ids upper-cased, ALL and null mean every message."""
    assert parse_request(b'{"command":"hold","queue_id":"abcdef0123"}') == ("hold", "ABCDEF0123")
    assert parse_request(b'{"command":"release","queue_id":"ALL"}') == ("release", None)
    assert parse_request(b'{"command":"flush"}') == ("flush", None)
    assert parse_queue_id("all") is None
    with pytest.raises(ValueError, match="10 hex digits"):
        parse_queue_id("GGGGGGGGGG")


@pytest_twisted.inlineCallbacks
def test_status_answered_by_describe_or_refused_without(
    tmp_path: Path,
) -> Generator[Any, Any, None]:
    """`status` answers what the wiring's describe() says, a big answer included; a control
    service given no describe says so; the queue admin is not asked either way."""
    path = tmp_path / "control.sock"
    admin = FakeAdmin()
    listeners = [f"smtp 127.0.1.1:{port}" for port in range(20000, 22000)]  # > 4096 bytes
    svc = started(path, admin, describe=lambda: {"pid": 7, "services": {"smtp": listeners}})
    try:
        reply = yield threads.deferToThread(send_command, path, "status", None)
    finally:
        yield svc.stopService()
    assert reply == {"ok": True, "status": {"pid": 7, "services": {"smtp": listeners}}}
    svc = started(path, admin)
    try:
        reply = yield threads.deferToThread(send_command, path, "status", None)
    finally:
        yield svc.stopService()
    assert reply == {"ok": False, "error": "this appliance gives no status"}
    assert admin.calls == []
