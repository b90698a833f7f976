"""Delivery status notifications: the DSNs the queue sends about its messages (RFC 3461/3464).

`Notices.send()` builds one notice (appliance.queue.dsn) about some recipients of a queued
message and puts it into the queue like any other message: from the null sender, to the
original sender, resolved by the same `Policy` SMTP asks (so it lands in a local Maildir or
is relayed). It fires with the notice's queue id once that is durable; only then may the
caller record the recipients as done.

Who gets what, as Postfix does it: a message from the null sender is never notified back;
when such a message (a bounce) fails, the notice goes to the postmaster instead, marked as a
double bounce, and a double bounce that fails is dropped with a log line.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from appliance.interfaces import (
    Envelope,
    MessageBody,
    MessageSigner,
    MessageSink,
    Outcome,
    Policy,
    QueuedMessage,
    Recipient,
    RecipientResult,
)
from appliance.log import mail_logger
from appliance.queue.dsn import DSNRecipient, build_dsn, status_code
from appliance.workers import WorkerPool

FAILED, DELAYED, DELIVERED, RELAYED = "failed", "delayed", "delivered", "relayed"
BOUNCE, DOUBLE_BOUNCE = "bounce", "double-bounce"
_KIND_WORDS = {
    FAILED: "sender non-delivery notification",
    DELAYED: "sender delay notification",
    DELIVERED: "sender delivery status notification",
    RELAYED: "sender delivery status notification",
}


def wants(rcpt: Recipient | None, kind: str) -> bool:
    """Whether the recipient's NOTIFY= asks for this kind of notice (RFC 3461 4.1): none
    given means failures (and delays); NEVER means nothing."""
    notify = (rcpt.notify or "") if rcpt is not None else ""
    words = {w.strip().upper() for w in notify.split(",") if w.strip()}
    if "NEVER" in words:
        return False
    if kind == FAILED:
        return not words or "FAILURE" in words
    if kind == DELAYED:
        return not words or "DELAY" in words
    return "SUCCESS" in words


def remote_mta(relay: str) -> str | None:
    """The host name in a relay= value such as 'mail.sina.com[127.0.1.4]:25'."""
    if relay in ("", "local", "none"):
        return None
    return relay.split("[", 1)[0] or None


class Notices:
    """Builds DSNs and queues them through the MessageSink."""

    log = Logger()

    def __init__(
        self,
        sink: MessageSink,
        policy: Policy | None,
        pool: WorkerPool,
        *,
        hostname: str,
        postmaster: str,
        events: Logger | None = None,
        signer: MessageSigner | None = None,
    ) -> None:
        self.signer = signer  # DKIM-signs each notice (our domain's DMARC then passes)
        self.sink = sink
        self.policy = policy
        self.pool = pool
        self.hostname = hostname
        self.postmaster = postmaster
        self.events = events or mail_logger("bounce")

    @defer.inlineCallbacks
    def send(
        self,
        message: QueuedMessage,
        body: MessageBody,
        kind: str,
        items: Sequence[tuple[Recipient | None, RecipientResult]],
        *,
        retry_until: float | None = None,
    ) -> Generator[Deferred[Any], Any, str | None]:
        """Queue one notice of kind about items; the new queue id, or None if none is due."""
        env = message.envelope
        if env.mail_from == "":
            if kind != FAILED or env.notice == DOUBLE_BOUNCE:
                self.log.info(
                    "{queue_id}: no notice to the null sender ({count} recipient(s) {kind})",
                    queue_id=message.queue_id,
                    count=len(items),
                    kind=kind,
                )
                return None
            to, notice = self.postmaster, DOUBLE_BOUNCE
        else:
            to, notice = env.mail_from, BOUNCE
        now = time.time()
        recipients = [
            DSNRecipient(
                final=result.address,
                original=rcpt.orcpt if rcpt is not None else None,
                action=kind,
                status="2.0.0"
                if result.outcome is Outcome.SENT
                else result.status
                or status_code(result.reply or result.text, result.outcome is Outcome.BOUNCED),
                # no reply from anyone (a connection failure, an expired message, a routing
                # error): our own reason, typed X-Postfix, and no "host ... said"
                diagnostic=result.reply
                or (result.text if result.outcome is not Outcome.SENT else "")
                or None,
                remote_mta=remote_mta(result.relay) if result.reply else None,
                last_attempt=now,
                will_retry_until=retry_until,
            )
            for rcpt, result in items
        ]
        recipient = yield self._resolve(to)
        if recipient is None and notice == BOUNCE:
            to, notice = self.postmaster, DOUBLE_BOUNCE
            recipient = yield self._resolve(to)
        if recipient is None:
            self.log.warn(
                "{queue_id}: nobody to send the {kind} notice to ({rcpt} is refused)",
                queue_id=message.queue_id,
                kind=kind,
                rcpt=to,
            )
            return None
        # built once the recipient is known: a refused sender's notice is the postmaster's
        data = yield self.pool.run(
            lambda: build_dsn(
                reporting_mta=self.hostname,
                queue_id=message.queue_id,
                arrival=message.arrival,
                sender=to,
                recipients=recipients,
                original=body.chunks(),
                ret=env.dsn_ret,
                envid=env.dsn_envid,
                now=now,
            )
        )
        if self.signer is not None:
            try:
                headers = yield self.signer.sign(data)
            except Exception:
                self.log.failure("{queue_id}: signing the notice failed", queue_id=message.queue_id)
                headers = ()
            data = b"".join(h.encode("ascii") + b"\r\n" for h in headers) + data
        dsn_env = Envelope(
            mail_from="",
            recipients=(recipient,),
            client_ip="127.0.0.1",
            helo=self.hostname,
            protocol="local",
            received_at=now,
            notice=notice,
        )
        incoming = self.sink.begin(dsn_env)
        try:
            incoming.write(data)
        except Exception:
            incoming.abort()
            raise
        qid = yield incoming.commit()
        self.events.info(
            "{queue_id}: {what}: {dsn_id}",
            event="notice",
            queue_id=message.queue_id,
            what=_KIND_WORDS[kind],
            dsn_id=qid,
            kind=kind,
        )
        return qid

    @defer.inlineCallbacks
    def _resolve(self, address: str) -> Generator[Deferred[Any], Any, Recipient | None]:
        if self.policy is None:
            return Recipient(address, remote=True, forward_to=(address,))
        resolution = yield defer.maybeDeferred(
            self.policy.resolve_recipient, address, "127.0.0.1", None, None, True
        )
        if not resolution.verdict.ok or resolution.verdict.discard:
            return None
        return Recipient(
            address,
            mailboxes=tuple(resolution.mailboxes),
            remote=resolution.remote,
            forward_to=tuple(resolution.forward_to),
        )
