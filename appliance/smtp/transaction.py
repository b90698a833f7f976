"""The mail transaction: MAIL FROM, RCPT TO, DATA or BDAT, and the end of the message.

Handlers in the session's command table (they take the session and the argument). MAIL and
RCPT check syntax and parameters, ask the sink for room, the Policy for its decision and then
the filter chain (holding input until both are made); DATA starts an IncomingMessage in the
MessageSink, writes our Received header, and feeds the text through the DataReader (BDAT:
the first chunk does the same, each chunk's bytes go through a ChunkReader). When the
filters look at the content, the text goes to their BodyBuffer instead, and only once they
have accepted it is it written to the sink, after the headers they add. At the end the
message is refused with the reader's or the filters' reply, dropped (DISCARD), or committed
and answered with its queue id. Refusals are logged as reject events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from appliance.deferreds import decision
from appliance.interfaces import (
    BodyBuffer,
    DiskFull,
    Envelope,
    FilterVerdict,
    IncomingMessage,
    MessageFilter,
    Recipient,
    Resolution,
    Verdict,
)
from appliance.smtp.address import ReplyError, check_address, parse_path
from appliance.smtp.data import ChunkReader, DataReader
from appliance.smtp.envelope import Transaction, envelope_of, received_header
from appliance.smtp.params import mail_params, rcpt_params

if TYPE_CHECKING:
    from appliance.smtp.session import SMTPSession

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Incoming:
    """The message whose text DATA is reading."""

    txn: Transaction
    message: IncomingMessage | None  # None: DISCARD, read it and keep nothing
    reader: DataReader
    envelope: Envelope
    buffer: BodyBuffer | None = None  # the filters look at the text: it waits here
    chunked: bool = False  # read by BDAT: between chunks, commands are read again

    def write(self, data: bytes) -> None:
        """Text for the message (raises DiskFull)."""
        if self.buffer is not None:
            self.buffer.write(data)
        elif self.message is not None:
            self.message.write(data)

    def abort(self) -> None:
        if self.message is not None:
            self.message.abort()
        self.close_buffer()

    def close_buffer(self) -> None:
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            buffer.close()


def _split_text(text: str) -> tuple[str, str]:
    """'5.7.1 Relaying denied' -> ('5.7.1', 'Relaying denied')."""
    head, _, rest = text.partition(" ")
    if head.count(".") == 2 and head.replace(".", "").isdigit():
        return head, rest
    return "5.0.0", text


def _reject(
    session: SMTPSession, stage: str, verdict: Verdict, mail_from: str | None, rcpt: str | None
) -> None:
    session.events.reject(
        stage,
        session.client_label(),
        verdict,
        mail_from=mail_from,
        rcpt=rcpt,
        proto="ESMTP" if session.esmtp else "SMTP",
        helo=session.helo or "",
    )


def do_mail(session: SMTPSession, arg: str) -> None:
    f = session.factory
    if session.helo is None:
        raise ReplyError(503, "5.5.1", "Error: send HELO/EHLO first")
    if session.txn is not None:
        raise ReplyError(503, "5.5.1", "Error: nested MAIL command")
    if f.mode.auth_required and session.auth.user is None:
        raise ReplyError(530, "5.7.0", "Authentication required")
    path = parse_path(arg, "FROM", allow_null=True)
    params = mail_params(path.params, esmtp=session.esmtp, max_size=f.settings.max_message_size)
    if path.address:
        check_address(path.address, params.smtputf8, "FROM")
    if not f.sink.has_room(params.size):
        raise ReplyError(452, "4.3.1", "Insufficient system storage")
    d = decision(
        f.policy.check_sender, path.address, session.peer_ip, session.peer_name, session.auth.user
    )

    def decided(verdict: Verdict) -> defer.Deferred[Verdict]:
        if verdict.code is not None and not verdict.discard:
            return defer.succeed(verdict)
        return _filtered(
            session, verdict, lambda chain: chain.sender(session.facts(), path.address)
        )

    def answered(verdict: Verdict) -> None:
        if verdict.code is not None and not verdict.discard:
            _reject(session, "MAIL", verdict, path.address, None)
            session.reply(verdict.code, *_split_text(verdict.text))
            return
        session.txn = Transaction(
            path.address, params, discard=verdict.discard, received_at=time.time()
        )
        session.reply(250, "2.1.0", "Ok")

    session.wait(d.addCallback(decided).addCallback(answered), "sender check")


def _filtered(
    session: SMTPSession,
    verdict: Verdict,
    ask: Callable[[MessageFilter], FilterVerdict | defer.Deferred[FilterVerdict]],
) -> defer.Deferred[Verdict]:
    """After the policy accepted: the filter chain's word (its refusal as a Verdict)."""
    chain = session.factory.filters
    if chain is None:
        return defer.succeed(verdict)

    def said(result: FilterVerdict) -> Verdict:
        return verdict if result.ok else Verdict(result.code, result.text)

    return decision(ask, chain).addCallback(said)


def do_rcpt(session: SMTPSession, arg: str) -> None:
    f = session.factory
    s = f.settings
    if session.txn is None:
        raise ReplyError(503, "5.5.1", "Error: need MAIL command")
    if len(session.txn.recipients) >= s.max_recipients:
        raise ReplyError(452, "4.5.3", "Error: too many recipients")
    path = parse_path(arg, "TO", allow_null=False)
    address = path.address
    if address.lower() == "postmaster":
        address = f"postmaster@{s.hostname.partition('.')[2] or s.hostname}"
    params = rcpt_params(path.params)
    check_address(address, session.txn.params.smtputf8, "TO")
    d = decision(
        f.policy.resolve_recipient,
        address,
        session.peer_ip,
        session.peer_name,
        session.auth.user,
        session.connect_verdict.relay,
    )

    def filtered(resolution: Resolution) -> defer.Deferred[Resolution]:
        verdict, txn = resolution.verdict, session.txn
        if (verdict.code is not None and not verdict.discard) or txn is None:
            return defer.succeed(resolution)

        def said(v: Verdict) -> Resolution:
            return resolution if v is verdict else Resolution(verdict=v)

        return _filtered(
            session, verdict, lambda chain: chain.recipient(session.facts(), txn.mail_from, address)
        ).addCallback(said)

    def decided(resolution: Resolution) -> None:
        verdict = resolution.verdict
        txn = session.txn
        if txn is None:
            return
        if verdict.code is not None and not verdict.discard:
            _reject(session, "RCPT", verdict, txn.mail_from, address)
            session.reply(verdict.code, *_split_text(verdict.text))
            return
        if verdict.discard:
            txn.discard = True
        txn.recipients.append(
            Recipient(
                address,
                tuple(resolution.mailboxes),
                remote=resolution.remote,
                forward_to=tuple(resolution.forward_to),
                notify=params.notify,
                orcpt=params.orcpt,
            )
        )
        session.reply(250, "2.1.5", "Ok")

    session.wait(d.addCallback(filtered).addCallback(decided), "recipient check")


def do_data(session: SMTPSession, arg: str) -> None:
    if arg:
        raise ReplyError(501, "5.5.4", "Syntax: DATA")
    if session.incoming is not None:
        raise ReplyError(503, "5.5.1", "Error: BDAT in progress, DATA not allowed")
    f = session.factory
    reader = DataReader(max_size=f.settings.max_message_size, max_line=f.settings.max_text_line)
    _begin(session, reader)
    if session.deadlines is not None:
        session.deadlines.data_started()  # from here on the minimum DATA rate applies
    session.send_line("354 End data with <CR><LF>.<CR><LF>")


def _begin(session: SMTPSession, reader: DataReader, chunked: bool = False) -> Incoming:
    """Start the message of the transaction (DATA, or the first BDAT): raises ReplyError."""
    txn = session.txn
    if txn is None:
        raise ReplyError(503, "5.5.1", "Error: need MAIL command")
    if not txn.recipients:
        raise ReplyError(554, "5.5.1", "Error: no valid recipients")
    f = session.factory
    envelope = envelope_of(
        txn,
        client_ip=session.peer_ip,
        client_name=session.peer_name,
        helo=session.helo,
        esmtp=session.esmtp,
        tls=session.tls_info,
        auth_user=session.auth.user,
        session_id=session.session_id,
        trusted=session.connect_verdict.relay,
    )
    message = None
    if not txn.discard:
        try:
            message = f.sink.begin(envelope)
        except DiskFull:
            session.txn = None
            raise ReplyError(452, "4.3.1", "Insufficient system storage") from None
    incoming = session.incoming = Incoming(txn, message, reader, envelope, chunked=chunked)
    if message is not None:
        session.events.client(
            message.queue_id, session.client_label(), session.auth.mechanism, session.auth.user
        )
        if f.filters is not None:
            incoming.buffer = f.filters.body_buffer(envelope)
        try:
            incoming.write(received_header(envelope, message.queue_id, f.settings.hostname))
        except DiskFull:
            reader.disk_full = True
    return incoming


@dataclass
class Chunk:
    """A BDAT chunk being read: its bytes still to come, and what its end answers."""

    left: int
    last: bool
    refusal: ReplyError | None = None  # the command was refused: the bytes are only skipped


MAX_CHUNK_DIGITS = 15  # a chunk size longer than this is not a number we take


def do_bdat(session: SMTPSession, arg: str) -> None:
    """BDAT size [LAST] (RFC 3030): the chunk's bytes are read whatever the answer will be,
    so that none of them is taken for a command. Refusals come once they are read."""
    words = arg.split()
    if (
        not 1 <= len(words) <= 2
        or not words[0].isdigit()
        or len(words[0]) > MAX_CHUNK_DIGITS
        or (len(words) == 2 and words[1].upper() != "LAST")
    ):
        # the chunk's length is unknown, so where the next command starts is too
        session.reply(501, "5.5.4", "Syntax: BDAT size [LAST]", close=True)
        return
    chunk = Chunk(int(words[0]), len(words) == 2)
    incoming = session.incoming
    if incoming is None:
        f = session.factory
        try:
            reader = ChunkReader(
                max_size=f.settings.max_message_size, max_line=f.settings.max_text_line
            )
            incoming = _begin(session, reader, chunked=True)
        except ReplyError as e:
            chunk.refusal = e
    # (a DATA message never meets BDAT: its text is read to its end before any command)
    session.chunk = chunk
    if chunk.left and session.deadlines is not None:
        session.deadlines.data_started()  # the minimum DATA rate applies to each chunk
    if not chunk.left:
        _end_of_chunk(session, chunk)


def feed_chunk(session: SMTPSession, chunk: Chunk) -> bool:
    """Consume the current BDAT chunk's bytes from the buffer; True when it is all read."""
    buf = session.buffer
    if len(buf) > chunk.left:
        data, session.buffer = buf[: chunk.left], buf[chunk.left :]
    else:
        data, session.buffer = buf, b""
    chunk.left -= len(data)
    incoming = session.incoming
    if chunk.refusal is None and incoming is not None and data:
        reader = incoming.reader
        assert isinstance(reader, ChunkReader)
        reader.feed_bytes(data)
        _write_out(incoming)
    if chunk.left:
        return False
    _end_of_chunk(session, chunk)
    return True


def _end_of_chunk(session: SMTPSession, chunk: Chunk) -> None:
    session.chunk = None
    if chunk.refusal is not None:
        session.reply_error(chunk.refusal)
        return
    incoming = session.incoming
    assert incoming is not None
    reader = incoming.reader
    assert isinstance(reader, ChunkReader)
    if not chunk.last and reader.problem() is None:
        session.reply(250, "2.0.0", f"Ok: {reader.received} octets received")
        return
    # the last chunk, or one that makes the message fail: refused now, later chunks get 503
    reader.finish()
    _write_out(incoming)
    session.incoming = None
    _end_of_data(session, incoming)


def _write_out(incoming: Incoming) -> None:
    """Hand what the reader has checked to the message, or drop the message once it failed."""
    reader, message = incoming.reader, incoming.message
    data = reader.take_output()
    if message is None:
        return
    if reader.failed:
        incoming.abort()  # the message will be refused: stop using disk for it now
    elif data:
        try:
            incoming.write(data)
        except DiskFull:
            reader.disk_full = True
            incoming.abort()


def feed_data(session: SMTPSession, incoming: Incoming) -> bool:
    """Consume DATA bytes from the session's buffer; True when the end marker was seen."""
    done, session.buffer = incoming.reader.feed(session.buffer)
    _write_out(incoming)
    if not done:
        return False
    session.incoming = None
    _end_of_data(session, incoming)
    return True


def _end_of_data(session: SMTPSession, incoming: Incoming) -> None:
    txn, message = incoming.txn, incoming.message
    session.txn = None
    problem = incoming.reader.problem()
    if problem is not None:
        incoming.abort()
        code, enhanced, text = problem
        _reject(session, "END-OF-MESSAGE", Verdict(code, f"{enhanced} {text}"), txn.mail_from, None)
        session.reply(code, enhanced, text)
        return
    if message is None:  # DISCARD: say yes, keep nothing
        session.events.discard(txn.mail_from)
        session.reply(250, "2.0.0", "Ok: discarded")
        return
    if incoming.buffer is not None:
        _filter_then_commit(session, incoming, message)
        return
    _commit(session, message)


def _filter_then_commit(session: SMTPSession, incoming: Incoming, message: IncomingMessage) -> None:
    """The filters decide on the text in the buffer; accepted, the headers they add go to
    the sink, and the commit takes the text from the buffer in its own thread (the reactor
    neither reads the buffer's file nor writes the message's); the buffer is let go once
    the commit is over."""
    chain = session.factory.filters
    buffer = incoming.buffer
    assert chain is not None and buffer is not None
    txn = incoming.txn
    d = defer.maybeDeferred(chain.message, incoming.envelope, message.queue_id, buffer)

    def decided(verdict: FilterVerdict) -> defer.Deferred[None] | None:
        if not verdict.ok:
            incoming.abort()
            refusal = Verdict(verdict.code, verdict.text)
            _reject(session, "END-OF-MESSAGE", refusal, txn.mail_from, None)
            session.reply(verdict.code or 451, *_split_text(verdict.text))
            return None
        try:
            for header in verdict.headers:
                message.write(header.encode("utf-8") + b"\r\n")
        except DiskFull:
            incoming.abort()
            session.reply(452, "4.3.1", "Insufficient system storage")
            return None

        def let_go(result: None | Failure) -> None | Failure:
            incoming.close_buffer()
            return result

        # held in memory, the text goes as bytes: a sender waits, so it may be relayed at once
        whole = buffer.in_memory()
        rest = whole if whole is not None else buffer.chunks()
        return _commit_deferred(session, message, rest).addBoth(let_go)

    def failed(failure: Failure) -> None:
        incoming.abort()
        session.log.failure("filtering {queue_id} failed", failure, queue_id=message.queue_id)
        session.reply(451, "4.7.1", "Temporary failure in message checks, try again later")

    session.wait(d.addCallbacks(decided, failed), "message checks")


def _commit(session: SMTPSession, message: IncomingMessage) -> None:
    # b"": nothing more, and the sender waits for the reply (interfaces.IncomingMessage)
    session.wait(_commit_deferred(session, message, b""), "commit")


def _commit_deferred(
    session: SMTPSession, message: IncomingMessage, rest: Iterable[bytes] | bytes
) -> defer.Deferred[None]:
    """Commit (with rest, the bytes the commit's thread reads), then 250 with the queue id,
    or the reply saying why not."""
    d = defer.maybeDeferred(message.commit, rest)

    def committed(queue_id: str) -> None:
        session.reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def failed(failure: Failure) -> None:
        message.abort()
        if failure.check(DiskFull):
            session.reply(452, "4.3.1", "Insufficient system storage")
            return
        session.log.failure("commit of {queue_id} failed", failure, queue_id=message.queue_id)
        session.reply(451, "4.3.0", "Error: local error in processing")

    return d.addCallbacks(committed, failed)
