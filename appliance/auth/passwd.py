"""The live passwd-file user table: who the users are, re-read when the file changes.

`PasswdFile` implements UserDirectory over a Dovecot passwd-file (format: passwd_format.py). It
is a WatchedFile: lookups stat() the file at most once a second and re-read it when its
(mtime_ns, size, inode) changed; a file that fails to parse, or cannot be read, leaves the
previous table in place (a missing file is an empty one), reported once per change.
Logins are checked by passwd_checker.py; the admin command edits the file with passwd_admin.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from appliance.auth.passwd_format import PasswdEntry, PasswdFileError, parse_passwd
from appliance.names import is_user_address
from appliance.watched import WatchedFile

if TYPE_CHECKING:
    from appliance.interfaces import UserDirectory


DEFAULT_SCHEME = "BLF-CRYPT"


class PasswdFile:
    """The users of one passwd file, re-read when it changes; implements UserDirectory."""

    log = Logger()
    STAT_INTERVAL = 1.0  # seconds between stat() calls on the lookup path

    def __init__(
        self,
        path: Path,
        *,
        reactor: Any = None,
        threadpool: Any = None,
        default_domain: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._reactor = reactor
        self._threadpool = threadpool
        self.default_domain = default_domain.lower().rstrip(".") if default_domain else None
        self._common_scheme = DEFAULT_SCHEME
        self._watched: WatchedFile[dict[str, PasswdEntry]] = WatchedFile(
            self.path,
            parse_passwd,
            {},
            clock=lambda: self.reactor.seconds(),
            interval=self.STAT_INTERVAL,
            on_change=self._changed,
            kept=lambda: f"the previous {len(self._watched.value)} users",
            explain=_explain,
        )
        self._watched.log = self.log  # its warnings stay the passwd file's, as they always were
        self._watched.reload()

    # ------------------------------------------------------------------ plumbing

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            # imported late so that the admin command never installs a reactor
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def threadpool(self) -> Any:
        if self._threadpool is None:
            self._threadpool = self.reactor.getThreadPool()
        return self._threadpool

    def defer_to_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run f(*args) in the thread pool; the result fires on the reactor thread."""
        return deferToThreadPool(self.reactor, self.threadpool, f, *args)

    # ------------------------------------------------------------------ reading

    def reload_if_changed(self) -> None:
        """Re-read the file if its (mtime_ns, size, inode) changed; stat at most once a second."""
        self._watched.get()

    def reload(self) -> None:
        """Re-read the file now, changed or not (after an edit of our own)."""
        self._watched.reload(force=True)

    def _changed(self) -> None:
        users = self._watched.value
        schemes = Counter(e.scheme for e in users.values() if e.scheme)
        self._common_scheme = schemes.most_common(1)[0][0] if schemes else DEFAULT_SCHEME
        self.log.info("{path}: {count} users", path=str(self.path), count=len(users))

    def normalize(self, name: str) -> str | None:
        """The lower-cased user@domain for a login or address, or None if it cannot be one."""
        address = name.lower()
        if "@" not in address and self.default_domain:
            address = f"{address}@{self.default_domain}"
        return address if is_user_address(address) else None

    def entry(self, name: str) -> PasswdEntry | None:
        """The user's entry (after a cheap reload check), or None."""
        users = self._watched.get()
        address = self.normalize(name)
        return users.get(address) if address is not None else None

    def exists(self, address: str) -> Deferred[bool]:
        return succeed(self.entry(address) is not None)

    def users(self) -> list[str]:
        return sorted(self._watched.get())

    def common_scheme(self) -> str:
        """The scheme most users' passwords have (BLF-CRYPT if none has one)."""
        return self._common_scheme

    def has_cram_md5_users(self) -> bool:
        """Whether anyone can use CRAM-MD5 (decides whether to advertise it)."""
        return any(e.cram_md5 is not None for e in self._watched.get().values())

    def read_users(self) -> list[str]:
        """The users as the file stands now; PasswdFileError listing every problem in it."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise PasswdFileError([f"{self.path}: cannot read: {e.strerror}"]) from None
        users, problems = parse_passwd(data, str(self.path))
        if problems:
            raise PasswdFileError(problems)
        return sorted(users)


def _explain(stage: str, error: OSError) -> str:
    # the passwd file's own wording (the table stays, so the log says why, not which call)
    return "no such file" if isinstance(error, FileNotFoundError) else f"{error.strerror}"


if TYPE_CHECKING:
    _user_directory: type[UserDirectory] = PasswdFile

__all__ = ["PasswdFile"]
