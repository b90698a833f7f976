"""The control socket in the running appliance: admin requests handed to the `QueueAdmin`.

`mailappliance queue flush|delete|hold|release` connects to a UNIX socket (mode 0600, so
only root and the appliance's user may) and sends one JSON line; `ControlProtocol` checks
it, calls the queue and answers one JSON line, then closes (the wire format is in
appliance.control.client). A bad request gets an error answer, never a traceback; what
the queue says went wrong is logged here and answered in one sentence.

`ControlService` binds the socket in privilegedStartService, while still root, so the file
can live where the dropped user could not create it; a stale socket from a crashed run is
removed first (only a socket nobody answers on: another file, or a live appliance's socket,
makes the bind fail instead). The file is removed on stop.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from appliance.control.client import COMMANDS, MAX_LINE, STATUS
from appliance.errors import ApplianceError
from appliance.interfaces import QueueAdmin
from appliance.log import printable
from appliance.names import parse_queue_id

SOCKET_MODE = 0o600
IDLE_TIMEOUT = 30.0  # seconds a connection may take to send its request


class BadRequest(Exception):
    """A request that cannot be done; str() is the error answer."""


def parse_request(line: bytes) -> tuple[str, str | None]:
    """(command, queue_id or None for every message) from one request line; BadRequest else."""
    try:
        request = json.loads(line)
    except ValueError:
        raise BadRequest("the request is not JSON") from None
    if not isinstance(request, dict):
        raise BadRequest("the request is not a JSON object")
    unknown = sorted(set(request) - {"command", "queue_id"})
    if unknown:
        raise BadRequest(f"unknown field(s) in the request: {', '.join(unknown)}")
    command = request.get("command")
    if command == STATUS:
        return command, None
    if not isinstance(command, str) or command not in COMMANDS:
        raise BadRequest(
            f"unknown command {printable(str(command), 40)!r}: expected one of "
            f"{', '.join((*COMMANDS, STATUS))}"
        )
    queue_id = request.get("queue_id")
    if queue_id is None:
        return command, None
    if not isinstance(queue_id, str):
        raise BadRequest("queue_id must be a string or null")
    try:
        return command, parse_queue_id(queue_id)
    except ValueError:
        raise BadRequest(
            f"expected a queue id of 10 hex digits, or ALL, got {printable(queue_id, 40)!r}"
        ) from None


class ControlProtocol(LineReceiver, TimeoutMixin):
    """One connection: one request line, one answer line, then the connection is closed."""

    log = Logger()
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, admin: QueueAdmin, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.admin = admin
        self.idle_timeout = idle_timeout
        self.answered = False

    def connectionMade(self) -> None:
        self.setTimeout(self.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if not self.answered:
            super().dataReceived(data)  # later data (a second request) is ignored

    def lineReceived(self, line: bytes) -> None:
        self.answered = True
        self.setTimeout(None)  # a flush of many messages may take a while to count
        try:
            command, queue_id = parse_request(line.rstrip(b"\r"))
        except BadRequest as e:
            self.log.warn("control: bad request: {reason}", reason=str(e))
            self.answer({"ok": False, "error": str(e)})
            return
        if command == STATUS:
            describe = self.factory.describe
            if describe is None:
                self.answer({"ok": False, "error": "this appliance gives no status"})
            else:
                self.answer({"ok": True, "status": describe()})
            return
        d = defer.maybeDeferred(getattr(self.admin, command), queue_id)
        d.addCallbacks(
            lambda count: self.done(command, queue_id, count),
            lambda failure: self.failed(command, queue_id, failure),
        )

    def lineLengthExceeded(self, line: bytes) -> None:
        self.answered = True
        self.setTimeout(None)
        self.log.warn("control: request longer than {size} bytes", size=self.MAX_LENGTH)
        self.answer({"ok": False, "error": f"request longer than {self.MAX_LENGTH} bytes"})

    def done(self, command: str, queue_id: str | None, count: int) -> None:
        self.log.info(
            "control: {command} {queue_id}: {count} message(s)",
            command=command,
            queue_id=queue_id or "ALL",
            count=count,
        )
        events = self.factory.events
        if events is not None:  # the mail event stream: maillog and audit log
            events.info(
                "admin: queue {command} {target}: {count} message(s)",
                event="admin",
                command=f"queue {command}",
                target=queue_id or "ALL",
                queue_id=queue_id,
                count=count,
            )
        self.answer({"ok": True, "count": int(count)})

    def failed(self, command: str, queue_id: str | None, failure: Failure) -> None:
        if failure.check(ApplianceError):
            reason = str(failure.value)
            self.log.warn(
                "control: {command} {queue_id} failed: {reason}",
                command=command,
                queue_id=queue_id or "ALL",
                reason=reason,
            )
        else:
            reason = "internal error (see the appliance's log)"
            self.log.failure(
                "control: {command} {queue_id} failed",
                failure,
                command=command,
                queue_id=queue_id or "ALL",
            )
        self.answer({"ok": False, "error": reason})

    def answer(self, reply: dict[str, Any]) -> None:
        if not self.connected or self.transport is None:
            return  # the client gave up; what was done stays done
        self.sendLine(json.dumps(reply).encode())
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.log.info("control: no request within {delay}s", delay=self.idle_timeout)
        if self.transport is not None:
            self.transport.loseConnection()


class ControlFactory(Factory):
    """Makes a ControlProtocol for each admin connection."""

    noisy = False

    def __init__(
        self,
        admin: QueueAdmin,
        idle_timeout: float = IDLE_TIMEOUT,
        events: Logger | None = None,
        describe: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.admin = admin
        self.idle_timeout = idle_timeout
        self.events = events  # the mail event stream, for admin events (None: none)
        self.describe = describe  # what `status` answers (JSON-able), None: no status

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        protocol = ControlProtocol(self.admin, self.idle_timeout)
        protocol.factory = self
        return protocol


class ControlService(service.Service):
    """Listens on the control socket (mode 0600, optionally chown'd) while the appliance runs."""

    log = Logger()

    def __init__(
        self,
        socket_path: Path,
        admin: QueueAdmin,
        *,
        uid: int | None = None,
        gid: int | None = None,
        reactor: Any = None,
        idle_timeout: float = IDLE_TIMEOUT,
        events: Logger | None = None,
        describe: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.factory = ControlFactory(admin, idle_timeout, events, describe)
        self.uid = uid
        self.gid = gid
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._inode: tuple[int, int] | None = None

    def privilegedStartService(self) -> None:
        if self.port is None:
            self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:  # started without the privileged step (not under twistd)
            self._listen()
        super().startService()

    def _listen(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        path = str(self.socket_path)
        remove_stale_socket(self.socket_path)
        # the socket is made 0600 at once: a permissive umask leaves no moment open to others
        old_umask = os.umask(0o177)
        try:
            port = self.reactor.listenUNIX(path, self.factory, mode=SOCKET_MODE)
        finally:
            os.umask(old_umask)
        try:
            os.chmod(path, SOCKET_MODE)
            if self.uid is not None or self.gid is not None:
                os.chown(
                    path, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid
                )
            st = os.lstat(path)
        except OSError as e:
            port.stopListening()
            raise CannotListenError(None, path, e) from None
        self._inode = (st.st_dev, st.st_ino)
        self.port = port
        self.log.info("control socket listening on {path}", path=path)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            try:
                yield defer.maybeDeferred(port.stopListening)
            except OSError:
                pass  # Twisted unlinks the file and it was gone already: that is the goal
        self._remove_own_socket()

    def _remove_own_socket(self) -> None:
        """Remove the socket file if it is still the one we bound (not a newer appliance's)."""
        inode, self._inode = self._inode, None
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if inode is not None and (st.st_dev, st.st_ino) == inode:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass


def remove_stale_socket(path: Path) -> None:
    """Remove path if it is a socket nobody listens on (left by a crash).

    Anything else stays: a regular file or directory (a typo in the configuration must not
    delete it) makes the bind fail, and so does a socket a running appliance answers on.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: nobody listens
        except OSError:
            return  # cannot tell (permissions): let the bind report it
        else:
            raise CannotListenError(None, str(path), "another appliance is listening there")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
