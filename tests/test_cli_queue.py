"""`mailappliance queue ...`: list and show on the queue files, the rest over the control socket."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred

from appliance.cli import main as cli_main
from appliance.control.server import ControlService
from tests.control.test_server import FakeAdmin
from tests.queue.test_inspect import filled_queue


def lab_ini(tmp_path: Path) -> Path:
    ini = tmp_path / "lab.ini"
    ini.write_text("[appliance]\nhostname = mail.163.com\nstate_dir = state\n")
    return ini


def queue(tmp_path: Path, *args: str) -> int:
    return cli_main(["--config", str(lab_ini(tmp_path)), "queue", *args])


def test_queue_list_empty_queue_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No queue folder yet (the appliance never ran): 'Mail queue is empty', exit 0."""
    assert queue(tmp_path, "list") == 0
    assert capsys.readouterr().out == "Mail queue is empty\n"


def test_queue_list_filled_queue_like_postqueue(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every message, oldest first, with the total; works with the appliance stopped."""
    filled_queue(tmp_path / "state" / "queue")
    assert queue(tmp_path, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("-Queue ID-")
    ids = [line.split()[0] for line in lines if line[:1].isalnum()]
    assert ids == ["BBBBBBBBB2", "AAAAAAAAA1", "CCCCCCCCC3!"]
    assert "(connect to mx.qq.com: refused)" in lines
    assert lines[-1] == "-- 1 Kbytes in 3 Requests."


def test_queue_show_message_in_lower_case_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """show takes the id in any case and prints envelope, states and headers."""
    filled_queue(tmp_path / "state" / "queue")
    assert queue(tmp_path, "show", "bbbbbbbbb2") == 0
    out = capsys.readouterr().out
    assert "queue id:  BBBBBBBBB2" in out and "dsn:       ret=HDRS envid=env-42" in out
    assert "  Subject: evil \\x1b[31mred\\x07" in out


def test_queue_show_unknown_id_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """show of an id not in the queue: one line on stderr, exit 1."""
    assert queue(tmp_path, "show", "0123456789") == 1
    assert capsys.readouterr().err == "mailappliance: no such message: 0123456789\n"


@pytest.mark.parametrize(
    "args",
    [
        ("show", "ALL"),
        ("show", "../../etc/x"),
        ("delete", "xyz"),
        ("hold", "0123456789A"),
        ("release", "GGGGGGGGGG"),
        ("flush", "12345"),
    ],
)
def test_queue_bad_id_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple[str, ...]
) -> None:
    """An id that is not 10 hex digits (or ALL where allowed): exit 1, nothing is sent."""
    assert queue(tmp_path, *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailappliance: expected a queue id of 10 hex digits like 3F1A2B4C5D")
    assert repr(args[1]) in err


@pytest.mark.parametrize(
    "args",
    [("flush",), ("flush", "ALL"), ("delete", "ALL"), ("hold", "3f1a2b4c5d"), ("release", "ALL")],
)
def test_queue_control_not_running_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple[str, ...]
) -> None:
    """flush/delete/hold/release with no appliance running: the reason on stderr, exit 1."""
    assert queue(tmp_path, *args) == 1
    sock = tmp_path / "state" / "control.sock"
    assert capsys.readouterr().err == (
        f"mailappliance: the appliance is not running (no control socket at {sock})\n"
    )


@pytest.mark.parametrize("sub", ["list", "show", "flush", "delete", "hold", "release"])
def test_queue_subcommand_help_exit_0(capsys: pytest.CaptureFixture, sub: str) -> None:
    """Each queue subcommand explains itself with --help."""
    with pytest.raises(SystemExit) as e:
        cli_main(["queue", sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mailappliance queue {sub}") and len(out.splitlines()) > 3


def test_queue_help_lists_subcommands(capsys: pytest.CaptureFixture) -> None:
    """queue --help names every subcommand."""
    with pytest.raises(SystemExit) as e:
        cli_main(["queue", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in ("list", "show", "flush", "delete", "hold", "release"):
        assert f"    {sub} " in out


@pytest_twisted.inlineCallbacks
def test_queue_control_commands_through_running_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> Generator[Any, Any, None]:
    """With a control socket listening: counts printed; nothing done for one id: exit 1,
    saying whether it exists."""
    ini = lab_ini(tmp_path)
    filled_queue(tmp_path / "state" / "queue")
    admin = FakeAdmin({"flush": 3, "delete": 1, "hold": 0, "release": 0})
    svc = ControlService(tmp_path / "state" / "control.sock", admin)
    svc.privilegedStartService()
    svc.startService()

    def run(*args: str) -> Deferred[int]:
        return threads.deferToThread(cli_main, ["--config", str(ini), "queue", *args])

    results = []
    try:
        for args in [
            ("flush",),
            ("delete", "aaaaaaaaa1"),
            ("hold", "0123456789"),
            ("flush", "ALL"),
            ("release", "ALL"),
        ]:
            results.append((yield run(*args)))
            results.append(capsys.readouterr())
        admin.counts["flush"] = 0
        results.append((yield run("flush", "CCCCCCCCC3")))
        results.append(capsys.readouterr())
        results.append((yield run("flush", "AAAAAAAAA1")))
        results.append(capsys.readouterr())
    finally:
        yield svc.stopService()
    codes, outputs = results[0::2], results[1::2]
    assert codes == [0, 0, 1, 0, 0, 1, 1]
    assert [o.out for o in outputs] == [
        "flushed 3 message(s)\n",
        "deleted 1 message(s)\n",
        "",
        "flushed 3 message(s)\n",
        "released 0 message(s)\n",
        "",
        "",
    ]
    assert outputs[2].err == "mailappliance: no such message: 0123456789\n"
    assert outputs[5].err == "mailappliance: CCCCCCCCC3 is on hold: release it first\n"
    assert outputs[6].err.startswith("mailappliance: nothing to flush for AAAAAAAAA1")
    assert admin.calls == [
        ("flush", None),
        ("delete", "AAAAAAAAA1"),
        ("hold", "0123456789"),
        ("flush", None),
        ("release", None),
        ("flush", "CCCCCCCCC3"),
        ("flush", "AAAAAAAAA1"),
    ]
