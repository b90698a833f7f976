"""The root of the service tree: binds every port first, then drops root, stops in order.

A busy port is one line on the terminal and exit status 1 (the leaf that failed is named,
`dns udp 127.0.1.1:53: cannot listen ...`). Root privileges are dropped after binding and
before any child starts. Children stop one after another in reverse order, each once the
previous one has finished: the listeners first, then the queue (which finishes what it is
delivering), the maillog last, so the queue's last lines are still written.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
import time
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from appliance.config import Config

# the services that listen on a port: the ones the 'ready' line names
LISTENERS = (internet.UDPServer, internet.StreamServerEndpointService)


class _BindFailed(Exception):
    pass


class ApplianceService(service.MultiService):
    """The root: a busy port is one line and exit 1; root is dropped after binding."""

    log = Logger()

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def privilegedStartService(self) -> None:
        try:
            self._bind_all(self)
        except _BindFailed as e:
            # twistd has already redirected sys.stderr into the log; the admin wants the
            # reason on the terminal, once
            out = sys.__stderr__
            if out is not None:
                out.write(f"mailappliance: {e}\n")
                out.flush()
            raise SystemExit(1) from None

    @classmethod
    def _bind_all(cls, parent: service.MultiService, prefix: str = "") -> None:
        """privilegedStartService for every leaf, naming the one that fails ('dns udp ...')."""
        for child in parent:
            name = f"{prefix}{child.name}"
            if isinstance(child, service.MultiService):
                cls._bind_all(child, name + " ")
                continue
            try:
                child.privilegedStartService()
            except CannotListenError as e:
                where = f"{e.interface or '*'}:{e.port}"
                raise _BindFailed(f"{name}: cannot listen on {where}: {e.socketError}") from None

    started = 0.0  # time.time() at start, for `mailappliance status`

    def describe(self) -> dict[str, Any]:
        """What `mailappliance status` is told over the control socket (JSON-able): the pid,
        the start time, and each child service with whether it runs and its listeners."""
        services = {}
        for child in self:
            listeners = self._describe(child) if isinstance(child, service.MultiService) else []
            services[child.name] = {"running": bool(child.running), "listeners": listeners}
        return {"pid": os.getpid(), "started": self.started, "services": services}

    def startService(self) -> None:
        self.drop_privileges()
        self.started = time.time()
        super().startService()
        self.log.info(
            "mailappliance {hostname} ready: {services}",
            hostname=self.config.appliance.hostname,
            services=", ".join(self._describe(self)),
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {name} failed", name=child.name)

    @classmethod
    def _describe(cls, parent: service.MultiService) -> list[str]:
        """Names of the listening services, e.g. 'dns udp 127.0.1.1:53'."""
        out: list[str] = []
        for child in parent:
            if isinstance(child, service.MultiService):
                out.extend(f"{child.name} {d}" for d in cls._describe(child))
            elif child.name and isinstance(child, LISTENERS):
                out.append(child.name)
        return out

    def drop_privileges(self) -> None:
        user, group = self.config.appliance.user, self.config.appliance.group
        if user is None and group is None:
            return
        if os.getuid() != 0:
            return  # nothing to drop (already unprivileged, e.g. twistd --uid)
        pw = pwd.getpwnam(user) if user else None
        if group:
            gid = grp.getgrnam(group).gr_gid
        else:
            assert pw is not None
            gid = pw.pw_gid
        uid = pw.pw_uid if pw else os.getuid()
        state = self.config.appliance.state_dir
        for root, dirs, files in os.walk(state):
            for n in (root, *(os.path.join(root, f) for f in dirs + files)):
                os.chown(n, uid, gid)
        maillog = self.config.log.maillog
        if maillog is not None and maillog.exists():
            os.chown(maillog, uid, gid)
        os.setgroups([gid])
        os.setgid(gid)
        if pw is not None:
            os.setuid(uid)
        self.log.info("dropped privileges to {user}:{group}", user=user or uid, group=gid)
