"""The queue's read side for `mailappliance queue list` and `queue show`, on the files directly.

Nothing here needs the appliance running, and nothing here writes: it reads what
appliance.queue.files lays out under state_dir/queue (a message is there once both `<qid>`
and `<qid>.env` exist), the local progress in `incoming/<qid>.done`, the relay's
per-recipient results in `deferred/<qid>.state` (appliance.queue.state) and the hold markers
`deferred/<qid>.hold`. The running queue moves and removes these files while we look, so a
file that vanishes mid-scan means the message left (it is skipped, or `show_message` says no
such message), and an envelope that cannot be read is skipped: the queue moves it to corrupt/.

Every function here blocks; text that came from peers (addresses, replies, headers) is made
printable before it is shown, so a crafted message cannot drive the admin's terminal.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.interfaces import QueuedItem
from appliance.queue.envelope import QueueEntry, read_queue_entry
from appliance.queue.state import DeliveryState, read_state

WHERE = ("incoming", "deferred")
HEADER_LIMIT = 256 * 1024  # `queue show` reads at most this much of a message's headers
QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")  # what may name a queue file (no '/', no '.')

HEADING = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
RCPT_INDENT = " " * 42  # recipients line up under the sender column


# one complete message in the queue, as `queue list` shows it (and the status summary)
QueueSummary = QueuedItem


@dataclass(frozen=True)
class _Found:
    where: str
    entry: QueueEntry
    directory: Path


def count_queue(queue_dir: Path) -> dict[str, int]:
    """How many messages are active (incoming/), deferred and held, from the folder listings
    alone (no file is read: cheap enough for every metrics scrape)."""
    counts = {"active": 0, "deferred": 0, "held": 0}
    for where, state in (("incoming", "active"), ("deferred", "deferred")):
        try:
            names = set(os.listdir(Path(queue_dir) / where))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if "." not in name and f"{name}.env" in names:
                counts[state] += 1
                if f"{name}.hold" in names:
                    counts["held"] += 1
    return counts


def list_queue(queue_dir: Path) -> list[QueueSummary]:
    """Every complete message in incoming/ and deferred/, oldest arrival first."""
    found: dict[str, QueueSummary] = {}
    for where in WHERE:
        directory = Path(queue_dir) / where
        try:
            names = set(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for qid in sorted(n for n in names if "." not in n and f"{n}.env" in names):
            entry = _read_entry(directory / f"{qid}.env")
            if entry is None:
                continue
            # a message moving from incoming/ to deferred/ may be seen in both: deferred wins
            found[qid] = _summary(where, entry, directory, held=f"{qid}.hold" in names)
    return sorted(found.values(), key=lambda s: (s.arrival, s.queue_id))


def _read_entry(env_path: Path) -> QueueEntry | None:
    try:
        return read_queue_entry(env_path)
    except FileNotFoundError:
        return None  # delivered and removed since the listing
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: the running queue moves it to corrupt/


def _summary(where: str, entry: QueueEntry, directory: Path, *, held: bool) -> QueueSummary:
    qid = entry.queue_id
    if where == "incoming":
        done = _local_done(directory / f"{qid}.done")
        pending = [m.address for m in entry.mailboxes if m.address not in done]
        pending += [a for r in entry.remote_recipients for a in _finals(r.forward_to, r.address)]
        last_error, next_try = None, None
    else:
        state = read_state(str(directory / f"{qid}.state"))
        finals = [a for r in entry.envelope.recipients for a in _finals(r.forward_to, r.address)]
        pending = [a for a in finals if a not in state.done]
        last_error, next_try = state.last_error(), (state.next_try or None)
    return QueueSummary(
        queue_id=qid,
        where=where,
        size=entry.size,
        arrival=entry.arrival,
        sender=entry.envelope.mail_from,
        recipients=tuple(dict.fromkeys(pending)),
        last_error=last_error,
        next_try=next_try,
        held=held,
    )


def _finals(forward_to: tuple[str, ...], address: str) -> tuple[str, ...]:
    """A remote recipient's final addresses (policy always sets forward_to; be lenient)."""
    return forward_to or (address,)


def _local_done(path: Path) -> frozenset[str]:
    """The mailboxes an incoming message was already delivered to (files.py's .done)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return frozenset()
    done: set[str] = set()
    for line in data.split(b"\n")[:-1]:  # a torn last line is ignored, as the queue does
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, str):
            done.add(value)
    return frozenset(done)


# ---------------------------------------------------------------------------- queue list


def format_list(items: list[QueueSummary], now: float) -> str:
    """The listing as `postqueue -p` prints it ('!' after a held message's id)."""
    if not items:
        return "Mail queue is empty"
    lines = [HEADING]
    for s in items:
        mark = "!" if s.held else " "
        lines.append(
            f"{s.queue_id:<10}{mark} {s.size:>8} {_arrival(s.arrival):<20} {_sender(s.sender)}"
        )
        if s.last_error:
            lines.append(f"({_clean(s.last_error)})")
        lines.extend(RCPT_INDENT + _clean(r) for r in s.recipients)
        if s.held:
            lines.append(f"{RCPT_INDENT}next try: when released")
        elif s.where == "deferred":
            when = s.next_try if s.next_try is not None else now
            lines.append(f"{RCPT_INDENT}next try: {_in(when - now)}")
        lines.append("")
    kbytes = (sum(s.size for s in items) + 1023) // 1024
    requests = "Request" if len(items) == 1 else "Requests"
    lines.append(f"-- {kbytes} Kbytes in {len(items)} {requests}.")
    return "\n".join(lines)


def _arrival(t: float) -> str:
    """'Tue Dec  1 13:40:02', local time, as Postfix shows it."""
    tm = time.localtime(t)
    return f"{time.strftime('%a %b', tm)} {tm.tm_mday:2d} {time.strftime('%H:%M:%S', tm)}"


def _sender(address: str) -> str:
    return _clean(address) if address else "MAILER-DAEMON"


def _in(seconds: float) -> str:
    """'now', 'in 45s', 'in 4m', 'in 2h 5m', 'in 3d 4h' (rounded up: never sooner than said)."""
    s = math.ceil(seconds)
    if s <= 0:
        return "now"
    if s < 60:
        return f"in {s}s"
    m = math.ceil(s / 60)
    if m < 60:
        return f"in {m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"in {h}h {m}m" if m else f"in {h}h"
    d, h = divmod(h, 24)
    return f"in {d}d {h}h" if h else f"in {d}d"


def _clean(text: str) -> str:
    """Text from a peer or a file, with control and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# ---------------------------------------------------------------------------- queue show


def show_message(queue_dir: Path, queue_id: str) -> str:
    """Everything the queue knows about one message, and its header section; KeyError if
    there is no such (complete) message."""
    found = _find(Path(queue_dir), queue_id)
    if found is None:
        raise KeyError(queue_id)
    entry, directory, qid = found.entry, found.directory, found.entry.queue_id
    try:
        headers = _header_section(directory / qid)
    except FileNotFoundError:
        raise KeyError(queue_id) from None  # it left the queue while we looked
    held = (directory / f"{qid}.hold").exists()
    env = entry.envelope
    state = read_state(str(directory / f"{qid}.state")) if found.where == "deferred" else None
    local_done = _local_done(directory / f"{qid}.done") if found.where == "incoming" else None

    lines = [
        f"queue id:  {qid}",
        f"queue:     {found.where}" + (" (on hold)" if held else ""),
        f"arrival:   {_timestamp(entry.arrival)}",
        f"size:      {entry.size} bytes",
        f"sender:    <{_clean(env.mail_from)}>",
        f"client:    {_client(env.client_name, env.client_ip)} helo={_clean(env.helo)}",
        f"protocol:  {_clean(env.protocol)} body={_clean(env.body)}"
        + (" smtputf8" if env.smtputf8 else "")
        + (f" tls={_clean(env.tls)}" if env.tls else "")
        + (f" auth={_clean(env.auth_user)}" if env.auth_user else ""),
        f"dsn:       ret={_clean(env.dsn_ret or '-')} envid={_clean(env.dsn_envid or '-')}",
    ]
    if env.notice:
        lines.append(f"notice:    {_clean(env.notice)}")
    if env.session_id:
        lines.append(f"session:   {_clean(env.session_id)}")
    if state is not None:
        when = "when released" if held else _schedule(state)
        lines.append(f"attempts:  {state.attempts}, next try {when}")
    lines.append("recipients:")
    for r in env.recipients:
        dsn = (f" notify={_clean(r.notify)}" if r.notify else "") + (
            f" orcpt={_clean(r.orcpt)}" if r.orcpt else ""
        )
        lines.append(f"  <{_clean(r.address)}>{dsn}")
        for m in r.mailboxes:
            status = "sent" if local_done is not None and m.address in local_done else "pending"
            lines.append(f"    {_clean(m.address)}: {status} (local mailbox)")
        if r.remote:
            for a in _finals(r.forward_to, r.address):
                lines.append(f"    {_clean(a)}: {_rcpt_state(state, a)}")
    lines.append("headers:")
    lines.extend(f"  {line}" for line in headers)
    return "\n".join(lines)


def _find(queue_dir: Path, queue_id: str) -> _Found | None:
    if not QUEUE_ID.fullmatch(queue_id):
        return None  # never a path: '../x' names no queue file
    for where in reversed(WHERE):  # deferred first: a message on its way there is complete there
        directory = queue_dir / where
        if not (directory / queue_id).exists():
            continue
        entry = _read_entry(directory / f"{queue_id}.env")
        if entry is not None:
            return _Found(where, entry, directory)
    return None


def _rcpt_state(state: DeliveryState | None, address: str) -> str:
    if state is None:
        return "pending (relayed after local delivery)"
    s = state.rcpts.get(address)
    if s is None:
        return "pending (not tried yet)"
    parts = [s.status]
    if s.relay:
        parts.append(f"relay={_clean(s.relay)}")
    if s.at:
        parts.append(f"at {_timestamp(s.at)}")
    out = ", ".join(parts)
    return f"{out} ({_clean(s.text)})" if s.text else out


def _schedule(state: DeliveryState) -> str:
    if not state.next_try:
        return "at once"
    return f"{_timestamp(state.next_try)} ({_in(state.next_try - time.time())})"


def _client(name: str | None, ip: str) -> str:
    return f"{_clean(name or 'unknown')}[{_clean(ip)}]"


def _timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))


def _header_section(path: Path) -> list[str]:
    """The message's header lines, up to the blank line (or HEADER_LIMIT bytes)."""
    with open(path, "rb") as f:
        data = f.read(HEADER_LIMIT)
    lines: list[str] = []
    for raw in data.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            return lines
        lines.append(_clean_header(line.decode("utf-8", "replace")))
    if len(data) == HEADER_LIMIT:
        lines[-1:] = [f"(cut at {HEADER_LIMIT // 1024} KiB)"]  # the last line was cut anyway
    return lines


def _clean_header(line: str) -> str:
    """A header line made printable; the tab that folds a header stays."""
    return "\t".join(_clean(part) for part in line.split("\t"))
