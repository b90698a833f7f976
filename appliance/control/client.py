"""The control socket's wire format and its blocking client, for `mailappliance queue ...`.

One request a connection, one JSON object a line each way (at most MAX_LINE bytes):

    -> {"command": "flush", "queue_id": "3F1A2B4C5D"}     queue_id null or "ALL": every message
    <- {"ok": true, "count": 1}                            messages affected (0: none)
    -> {"command": "status"}
    <- {"ok": true, "status": {"pid": 1234, "started": 1764590000.0, "services": {...}}}
    <- {"ok": false, "error": "unknown command 'frob'"}

The server (appliance.control.server) runs in the appliance; this side is a plain blocking
socket, because the admin command is not a reactor program. A socket file that is missing, or
that nobody listens on, means the appliance is not running: NotRunning says so.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

COMMANDS = ("flush", "delete", "hold", "release")
STATUS = "status"  # -> {"ok": true, "status": {...}}: what the running appliance says of itself
MAX_LINE = 4096  # a request
MAX_ANSWER = 256 * 1024  # an answer (a status lists every listener)


class NotRunning(ApplianceError):
    """Nobody answers on the control socket: the appliance is not running."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        super().__init__(f"the appliance is not running (no control socket at {socket_path})")


def send_command(
    socket_path: Path, command: str, queue_id: str | None, timeout: float = 30
) -> dict[str, Any]:
    """Ask the running appliance to do command to queue_id (None: every message).

    Returns the answer: {"ok": True, "count": N} or {"ok": False, "error": "..."}. Raises
    NotRunning when the socket is missing or refuses the connection, and ApplianceError when
    it cannot be used (permissions), does not answer within timeout seconds, or answers
    something that is not an answer.
    """
    request = json.dumps({"command": command, "queue_id": queue_id}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(socket_path) from None
        except PermissionError:
            raise ApplianceError(
                f"permission denied on the control socket {socket_path}: run this as root "
                "or as the appliance's user"
            ) from None
        except OSError as e:
            raise ApplianceError(f"cannot connect to {socket_path}: {e.strerror or e}") from None
        try:
            s.sendall(request)
            answer = _read_line(s)
        except TimeoutError:
            raise ApplianceError(
                f"the appliance did not answer within {timeout:g}s (on {socket_path})"
            ) from None
        except OSError as e:
            raise ApplianceError(f"the control connection failed: {e.strerror or e}") from None
    try:
        reply = json.loads(answer)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ApplianceError(f"the appliance gave an answer that cannot be read: {answer[:200]!r}")
    return reply


def _read_line(s: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = s.recv(MAX_LINE)
        if not chunk:
            break  # closed without a line ending: the JSON check tells what came
        data += chunk
        if len(data) > MAX_ANSWER:
            break
    return data.split(b"\n", 1)[0]
