"""A real, private Postfix on loopback for interop tests (Debian's `postfix` package).

`start_postfix(root, port=...)` writes a main.cf and a minimal master.cf under `root` (own
config_directory, queue_directory and data_directory; nothing read from /etc/postfix), runs
`postfix -c <root>/etc check` and `postfix -c <root>/etc start`, and waits until smtpd on
127.0.0.1:port answers. Mail for `virtual_domains` goes by virtual(8) into Maildirs under
`<root>/vmail`; `relay_routes` domains are relayed by smtp(8) to the given next hop through a
transport map. Every other destination bounces (`default_transport = error`) and no DNS is
ever asked: Postfix stays on loopback.

Running as root, `postfix -c DIR` accepts a non-default config directory without
`alternate_config_directories` in /etc/postfix/main.cf (that check only applies to non-root
and set-gid programs such as postdrop), so /etc/postfix is never touched. The daemons run
without chroot; virtual(8) writes as `nobody`, so `root` and its parents must be
traversable by others.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MASTER = Path("/usr/lib/postfix/sbin/master")
POSTFIX = "/usr/sbin/postfix"
VMAIL_UID = 65534  # nobody
VMAIL_GID = 65534  # nogroup
LISTEN = "127.0.0.1"

# One line per service: smtpd only on 127.0.0.1:PORT, no chroot anywhere (the private queue
# directory is not a jail with copies of /etc files).
MASTER_CF = """\
{listen}:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
virtual    unix  - n n -     - virtual
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class PostfixError(RuntimeError):
    """The private Postfix could not be configured, started or stopped."""


@dataclass
class Postfix:
    """A running private Postfix: its files under `root`, smtpd on 127.0.0.1:`port`."""

    root: Path
    port: int
    myhostname: str
    host: str = LISTEN
    pid: int | None = None
    settings: dict[str, str] = field(default_factory=dict)  # main.cf as written

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "spool"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def maildir(self, address: str) -> Path:
        local, domain = address.rsplit("@", 1)
        return self.root / "vmail" / domain.lower() / local.lower()

    def messages(self, address: str) -> list[bytes]:
        """Messages delivered to address (Maildir new/ and cur/), oldest first by name."""
        found = []
        for sub in ("new", "cur"):
            d = self.maildir(address) / sub
            if d.is_dir():
                found.extend(d.iterdir())
        return [p.read_bytes() for p in sorted(found, key=lambda p: p.name)]

    def wait_for_messages(self, address: str, n: int = 1, timeout: float = 30) -> list[bytes]:
        """Block (bounded) until at least n messages are in address's Maildir; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address)
            if len(found) >= n:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"postfix: {len(found)} of {n} message(s) for {address} after {timeout}s;"
                    f" maillog:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log(self) -> str:
        """Postfix's maillog (written by postlogd) so far."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Block (bounded) until a maillog line matches pattern; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"postfix: no maillog line matching {pattern!r} after {timeout}s:\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `postfix -c <config_dir> args...` (output goes to the maillog, not stderr)."""
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def flush(self) -> None:
        """Retry every deferred message now (`postfix flush`)."""
        r = self.postfix("flush")
        if r.returncode:
            raise PostfixError(f"postfix flush failed: {r.stderr}{self.log_tail()}")

    def queue_files(self) -> list[Path]:
        """Messages still in the queue (incoming, active, deferred, hold, maildrop)."""
        names = ("incoming", "active", "deferred", "hold", "maildrop")
        return [p for n in names for p in (self.queue_dir / n).rglob("*") if p.is_file()]

    def reconfigure(
        self,
        *,
        relay_routes: Mapping[str, str] | None = None,
        extra_main_cf: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> None:
        """Change the relay routes or main.cf settings and restart (stop, then start).

        A restart rather than `postfix reload`: after a reload, already running daemons may
        still serve one more request with the old settings.
        """
        if relay_routes is not None:
            self.settings.update(_relay_settings(self.config_dir, relay_routes))
        self.settings.update(extra_main_cf or {})
        _write_main_cf(self.config_dir, self.settings)
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def start(self, timeout: float = 30) -> Postfix:
        """`postfix check`, `postfix start`, then wait until smtpd accepts connections."""
        for step in ("check", "start"):
            r = self.postfix(step, timeout=timeout)
            if r.returncode:
                raise PostfixError(
                    f"postfix -c {self.config_dir} {step} failed ({r.returncode}):\n"
                    f"{r.stdout}{r.stderr}{self.log_tail()}"
                )
        self.pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        deadline = time.monotonic() + timeout
        while True:
            if not _alive(self.pid):
                raise PostfixError(f"postfix master {self.pid} exited:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"postfix smtpd not answering on {self.host}:{self.port}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15) -> None:
        """`postfix stop`; then make sure the master and every child are gone (by PID)."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        family = [pid, *_children(pid)]
        if _alive(pid):
            self.postfix("stop", timeout=timeout)
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in family:
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start_postfix(
    root: Path,
    *,
    port: int,
    myhostname: str = "mx.postfix.test",
    virtual_domains: tuple[str, ...] = ("postfix.test",),
    users: tuple[str, ...] = ("alice",),
    relay_routes: Mapping[str, str] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    extra_main_cf: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Postfix:
    """Configure a private Postfix under root and start it with smtpd on 127.0.0.1:port.

    `users` are local parts that exist in every virtual domain; `relay_routes` maps a domain
    to a next hop (`[127.0.1.1]:2525`) Postfix relays that domain's mail to.
    """
    if not MASTER.exists():
        raise PostfixError(f"{MASTER} missing: install the Debian package postfix")
    if (tls_cert is None) != (tls_key is None):
        raise PostfixError("tls_cert and tls_key go together")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    for parent in [root, *root.parents]:
        if not parent.stat().st_mode & 0o001:
            raise PostfixError(
                f"{parent} is not searchable by others: virtual(8) delivers as uid "
                f"{VMAIL_UID}, so every folder above {root} needs o+x"
            )
    etc, spool, data, vmail = (root / d for d in ("etc", "spool", "data", "vmail"))
    if spool.exists():
        shutil.rmtree(spool)
    for d in (etc, spool, data, vmail):
        d.mkdir(parents=True, exist_ok=True)
    os.chown(data, _uid("postfix"), _gid("postfix"))
    os.chown(vmail, VMAIL_UID, VMAIL_GID)

    (etc / "vmailbox").write_text(
        "".join(f"{u}@{d} {d}/{u}/\n" for d in virtual_domains for u in users)  # "/": Maildir
    )
    domain = myhostname.split(".", 1)[1] if "." in myhostname else myhostname
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(spool),
        "data_directory": str(data),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": myhostname,
        "mydomain": domain,
        "myorigin": "$myhostname",
        "mydestination": "",
        "inet_interfaces": LISTEN,
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtp_bind_address": LISTEN,
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_banner": "$myhostname ESMTP Postfix",
        "smtpd_peername_lookup": "no",
        # never ask DNS (the system resolver is not on loopback): next hops are [ip]:port
        "smtp_dns_support_level": "disabled",
        "smtp_host_lookup": "native",
        "biff": "no",
        "append_dot_mydomain": "no",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "default_transport": "error",
        "relay_transport": "error",
        "virtual_mailbox_domains": " ".join(virtual_domains),
        "virtual_mailbox_base": str(vmail),
        "virtual_mailbox_maps": f"texthash:{etc / 'vmailbox'}",
        "virtual_uid_maps": f"static:{VMAIL_UID}",
        "virtual_gid_maps": f"static:{VMAIL_GID}",
        "virtual_minimum_uid": "100",
        "virtual_mailbox_limit": "0",
        "message_size_limit": "52428800",
        "maillog_file_prefixes": str(root),
        "maillog_file": str(root / "maillog"),
        # tests wait for deliveries: retry deferred mail soon, and not for days
        "queue_run_delay": "5s",
        "minimal_backoff_time": "5s",
        "maximal_backoff_time": "10s",
        "smtp_connect_timeout": "10s",
        "smtp_tls_security_level": "may",
        "smtp_tls_loglevel": "1",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
    }
    if tls_cert is not None and tls_key is not None:
        settings.update(
            smtpd_tls_security_level="may",
            smtpd_tls_cert_file=str(tls_cert.resolve()),
            smtpd_tls_key_file=str(tls_key.resolve()),
        )
    settings.update(_relay_settings(etc, relay_routes or {}))
    settings.update(extra_main_cf or {})
    _write_main_cf(etc, settings)
    (etc / "master.cf").write_text(MASTER_CF.format(listen=LISTEN, port=port))
    pf = Postfix(root=root, port=port, myhostname=myhostname, settings=settings)
    try:
        return pf.start(timeout=timeout)
    except BaseException:
        pf.pid = _read_pid(spool)
        pf.stop()
        raise


def _relay_settings(etc: Path, routes: Mapping[str, str]) -> dict[str, str]:
    """A transport map `domain smtp:[host]:port` and relay_domains for the routes."""
    lines = []
    for dom, hop in routes.items():
        if not re.match(r"(smtp|relay|lmtp|error|discard):", hop):
            hop = f"smtp:{hop}"
        lines.append(f"{dom} {hop}\n")
    (etc / "transport").write_text("".join(lines))
    return {
        "transport_maps": f"texthash:{etc / 'transport'}",
        "relay_domains": " ".join(routes),
    }


def _write_main_cf(etc: Path, settings: Mapping[str, str]) -> None:
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))


def _read_pid(spool: Path) -> int | None:
    try:
        return int((spool / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc (the master's daemons)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid
