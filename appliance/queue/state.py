"""Per-recipient state of a deferred message: the `deferred/<qid>.state` codec.

The relay appends one JSON object a line, never rewrites:

    {"rcpt": "user3@sina.com", "status": "deferred", "text": "connect to ...: refused",
     "relay": "mail.sina.com[127.0.1.4]:25", "at": 1764590000.1}      a recipient's result
    {"next": 1764590060.1, "attempts": 1, "at": 1764590000.1}          when to try again
    {"warned": true, "at": ...}                                         delay notice sent

A recipient is done once its last result is "sent" or "bounced". The file is fsync'd before
the queue relies on it (before a retry skips a recipient it says is done); a torn last line
(a crash while appending) is ignored, which at worst sends a copy twice, never loses one.
Every function here blocks (worker thread), or reads files for `queue list` and `queue show`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from appliance.durable import FILE_MODE

DONE = ("sent", "bounced")


@dataclass(frozen=True)
class RcptState:
    """The last result for one final recipient address."""

    status: str  # "sent", "bounced" or "deferred"
    text: str
    relay: str
    at: float


@dataclass
class DeliveryState:
    """What a .state file says, folded: the last result per recipient and the schedule."""

    rcpts: dict[str, RcptState] = field(default_factory=dict)
    attempts: int = 0
    next_try: float = 0.0  # 0: at once
    warned: bool = False

    @property
    def done(self) -> frozenset[str]:
        return frozenset(a for a, s in self.rcpts.items() if s.status in DONE)

    def last_error(self) -> str | None:
        """The most recent deferral's reason, for `queue list`."""
        deferred = [s for s in self.rcpts.values() if s.status == "deferred"]
        return max(deferred, key=lambda s: s.at).text if deferred else None

    def apply(self, record: dict[str, object]) -> None:
        if "rcpt" in record:
            self.rcpts[str(record["rcpt"])] = RcptState(
                str(record.get("status", "deferred")),
                str(record.get("text", "")),
                str(record.get("relay", "")),
                float(record.get("at", 0.0)),  # type: ignore[arg-type]
            )
        elif "next" in record:
            self.next_try = float(record["next"])  # type: ignore[arg-type]
            self.attempts = int(record.get("attempts", self.attempts))  # type: ignore[call-overload]
        elif record.get("warned"):
            self.warned = True


def result_record(rcpt: str, status: str, text: str, relay: str, at: float) -> dict[str, object]:
    return {"rcpt": rcpt, "status": status, "text": text, "relay": relay, "at": at}


def schedule_record(next_try: float, attempts: int, at: float) -> dict[str, object]:
    return {"next": next_try, "attempts": attempts, "at": at}


def warned_record(at: float) -> dict[str, object]:
    return {"warned": True, "at": at}


def read_state(path: str) -> DeliveryState:
    """Fold a .state file; a missing file is a message not tried yet."""
    state = DeliveryState()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return state
    for line in data.split(b"\n")[:-1]:  # a torn last line is ignored
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            state.apply(record)
    return state


def append_state(path: str, records: Iterable[dict[str, object]], *, sync: bool) -> None:
    """Append records; sync: fsync before returning (the queue relies on them from now)."""
    data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
