"""Queue files' envelopes: the `<qid>.env` codec, read by the queue, `queue list` and the relay.

A `.env` file is one JSON object: the format version, the queue id, the arrival time, the
message size and the envelope (appliance.interfaces.Envelope, recipients with their resolved
mailboxes and forward addresses, DSN parameters). Unknown fields are an error rather than
guessed at: the caller moves such a file to queue/corrupt/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance.interfaces import Envelope, Mailbox, QueuedMessage, Recipient

QUEUE_FORMAT = 1


def envelope_to_json(env: Envelope) -> dict[str, Any]:
    return {
        "mail_from": env.mail_from,
        "recipients": [
            {
                "address": r.address,
                "mailboxes": [[m.domain, m.localpart] for m in r.mailboxes],
                "remote": r.remote,
                "forward_to": list(r.forward_to),
                "notify": r.notify,
                "orcpt": r.orcpt,
            }
            for r in env.recipients
        ],
        "client_ip": env.client_ip,
        "helo": env.helo,
        "client_name": env.client_name,
        "auth_user": env.auth_user,
        "tls": env.tls,
        "protocol": env.protocol,
        "body": env.body,
        "smtputf8": env.smtputf8,
        "dsn_ret": env.dsn_ret,
        "dsn_envid": env.dsn_envid,
        "received_at": env.received_at,
        "session_id": env.session_id,
        "notice": env.notice,
        "trusted": env.trusted,
    }


def envelope_from_json(data: dict[str, Any]) -> Envelope:
    fields = dict(data)
    fields["recipients"] = tuple(
        Recipient(
            address=r["address"],
            mailboxes=tuple(Mailbox(d, lp) for d, lp in r.get("mailboxes", ())),
            remote=bool(r.get("remote", False)),
            forward_to=tuple(r.get("forward_to", ())),
            notify=r.get("notify"),
            orcpt=r.get("orcpt"),
        )
        for r in data["recipients"]
    )
    return Envelope(**fields)


@dataclass(frozen=True)
class QueueEntry(QueuedMessage):
    """What a queue file's .env says: the queued message, as stored."""

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": QUEUE_FORMAT,
                "queue_id": self.queue_id,
                "arrival": self.arrival,
                "size": self.size,
                "envelope": envelope_to_json(self.envelope),
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> QueueEntry:
        d = json.loads(data)
        return cls(d["queue_id"], envelope_from_json(d["envelope"]), d["arrival"], d["size"])

    @property
    def mailboxes(self) -> list[Mailbox]:
        """Local targets, each once (two aliases of one user get one copy)."""
        return self.envelope.mailboxes

    @property
    def remote_recipients(self) -> tuple[Recipient, ...]:
        return self.envelope.remote_recipients

    def only_remote(self) -> QueueEntry:
        """The entry as left for the relay: remote recipients only, local targets done."""
        rcpts = tuple(replace(r, mailboxes=(), remote=True) for r in self.remote_recipients)
        return replace(self, envelope=replace(self.envelope, recipients=rcpts))


def read_queue_entry(env_path: str | Path) -> QueueEntry:
    """Load a queue/<dir>/<qid>.env file (for the relay and the admin command too)."""
    with open(env_path, "rb") as f:
        return QueueEntry.from_bytes(f.read())
