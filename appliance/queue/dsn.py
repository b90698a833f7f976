"""Delivery status notifications (RFC 3464): the bounce, delay and success notices of the queue.

Pure: the queue scheduler hands `build_dsn` what happened to some recipients of one message
and that message's bytes, and gets back the notice as bytes, ready to queue from the null
sender. The layout is Postfix's, so people and their tools meet what they know: an RFC 6522
multipart/report with a readable explanation, the machine-readable message/delivery-status
part, and the original (message/rfc822) or its header section (text/rfc822-headers).

The original is returned as it came, apart from line ends made CRLF: its header section is
found by bytes, never re-serialised through the email package, which rewrites what it does
not understand. Everything that comes from outside (replies, addresses, ENVID) is flattened
to one line without control characters before it goes into a field, so nothing can start a
field or a part of its own; the delivery-status part stays 7-bit (RFC 6533 escapes).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import formatdate, make_msgid

_MAX_LINE = 998  # octets before CRLF (RFC 5322 2.1.1)
_FOLD_AT = 78  # where our own fields fold when they can
_CHUNK = 900  # how much of a word without spaces goes on one line before it is cut

_KIND = {"failed": "failed", "delayed": "delayed", "delivered": "success", "relayed": "success"}
_SUBJECT = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
_RETURNED = {
    "failed": "Undelivered Message",
    "delayed": "Delayed Message",
    "success": "Delivered Message",
}

_STATUS_IN_TEXT = re.compile(r"(?<![\w.])([245]\.\d{1,3}\.\d{1,3})(?!\w|\.\d)")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_SMTP_REPLY = re.compile(r"^[2-5]\d\d(?:[ -]|$)")
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*$")
_XTEXT_HEX = re.compile(rb"\+([0-9A-Fa-f]{2})")
_BREAKS = re.compile(r"[ \t]*[\r\n]+[ \t]*")
# C0 controls and DEL, and lone surrogates (a reply decoded with surrogateescape)
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")

# RFC 3463's meanings, for a recipient we have no reply text for
_DETAIL = {
    "1.1": "bad destination mailbox address",
    "1.2": "bad destination system address",
    "1.3": "bad destination mailbox address syntax",
    "1.6": "destination mailbox has moved",
    "2.1": "mailbox disabled, not accepting messages",
    "2.2": "mailbox full",
    "2.3": "message length exceeds administrative limit",
    "3.0": "mail system problem",
    "3.4": "message too big for system",
    "4.1": "no answer from host",
    "4.2": "bad connection",
    "4.3": "directory server failure",
    "4.4": "unable to route",
    "4.6": "routing loop detected",
    "4.7": "delivery time expired",
    "5.0": "mail delivery protocol problem",
    "7.1": "delivery not authorized, message refused",
}
_SUBJECT_CLASS = {
    "0": "undefined problem",
    "1": "addressing problem",
    "2": "mailbox problem",
    "3": "mail system problem",
    "4": "network or routing problem",
    "5": "mail delivery protocol problem",
    "6": "message content or media problem",
    "7": "security or policy problem",
}


@dataclass(frozen=True)
class DSNRecipient:
    """What happened to one recipient, as its delivery-status fields will tell it."""

    final: str  # the address we tried, e.g. "user9@sina.com"
    original: str | None  # the ORCPT= value as given, e.g. "rfc822;user9@sina.com"
    action: str  # "failed", "delayed", "delivered", "relayed"
    status: str  # enhanced status code "5.1.1", "4.4.1", "2.0.0"
    diagnostic: str | None  # the remote reply, e.g. "550 5.1.1 <user9@sina.com>: ..."
    remote_mta: str | None  # host name of the next hop, e.g. "mail.sina.com" (None: local)
    last_attempt: float | None = None  # time.time()
    will_retry_until: float | None = None  # for "delayed"


def status_code(text: str, permanent: bool, default: str | None = None) -> str:
    """The enhanced status code in a reply text like '550 5.1.1 <x>: ...' or '5.4.6 mail loops'
    (first token matching d.d.d with d in 2/4/5 as class), else default, or '5.0.0'
    (permanent) / '4.0.0'."""
    found = _STATUS_IN_TEXT.search(text)
    if found:
        code = found.group(1)
        # a failure that is retried is transient whatever the reply's class: Postfix defers
        # a smarthost's "535 5.7.8" with dsn=4.7.8
        return "4" + code[1:] if not permanent and code[0] == "5" else code
    if default is not None:
        return default
    return "5.0.0" if permanent else "4.0.0"


def build_dsn(
    *,
    reporting_mta: str,
    queue_id: str,
    arrival: float,
    sender: str,
    recipients: Sequence[DSNRecipient],
    original: Iterable[bytes],
    ret: str | None,
    envid: str | None,
    now: float,
    max_returned_size: int = 10 * 1024 * 1024,
    message_id_domain: str | None = None,
) -> bytes:
    """The notice to `sender` about `recipients` (one kind of action) of message `queue_id`.

    ret: "FULL" returns the whole original (while it is at most max_returned_size octets and
    has no line over 998 octets), "HDRS" its header section; None is FULL for failures and
    HDRS otherwise. `original` is read only as far as needed. Raises ValueError for what only
    a caller's mistake gives: no recipients, mixed kinds, an unknown action, ret or status, or
    the null sender (RFC 5321 6.1: a notice is never sent to it).
    """
    if not recipients:
        raise ValueError("a delivery status notification needs at least one recipient")
    kinds: set[str] = set()
    for r in recipients:
        if r.action not in _KIND:
            raise ValueError(f"unknown DSN action {r.action!r}")
        if not _STATUS.fullmatch(r.status):
            raise ValueError(f"not an enhanced status code: {r.status!r}")
        kinds.add(_KIND[r.action])
    if len(kinds) != 1:
        raise ValueError(f"one kind of action per notice, got {sorted(kinds)}")
    kind = kinds.pop()
    to = _one_line(sender)
    if not to:
        raise ValueError("a notice is never sent to the null sender")
    if ret is None:
        full = kind == "failed"
    elif ret.upper() in ("FULL", "HDRS"):
        full = ret.upper() == "FULL"
    else:
        raise ValueError(f"RET must be FULL or HDRS, got {ret!r}")

    mta = _host(reporting_mta)
    data, whole = _read(original, max_returned_size, full)
    if full and whole and data and not _has_long_line(data):
        returned_type, returned, description = "message/rfc822", data, _RETURNED[kind]
    else:
        returned_type = "text/rfc822-headers"
        returned = _header_section(data, max_returned_size, whole)
        description = _RETURNED[kind] + " Headers"

    text = _text(kind, mta, recipients, arrival, now)
    text_bytes = text.encode("utf-8", "replace")
    status_bytes = _delivery_status(mta, queue_id, envid, arrival, recipients).encode("ascii")
    text_8bit = not text.isascii()
    returned_8bit = _EIGHT_BIT.search(returned) is not None
    boundary = _boundary((text_bytes, status_bytes, returned))

    header = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{mta}>"),
        _field("To", f"<{to}>"),
        _field("Subject", _SUBJECT[kind]),
        _field("Date", _date(now)),
        _field("Message-ID", make_msgid(domain=_host(message_id_domain or reporting_mta))),
        _field("Auto-Submitted", "auto-replied"),
        _field("MIME-Version", "1.0"),
        _field(
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    if text_8bit or returned_8bit:
        header.append(_field("Content-Transfer-Encoding", "8bit"))
    charset = "utf-8" if text_8bit else "us-ascii"
    parts = [
        (
            [
                "Content-Description: Notification",
                f"Content-Type: text/plain; charset={charset}",
                *(["Content-Transfer-Encoding: 8bit"] if text_8bit else []),
            ],
            text_bytes,
        ),
        (
            ["Content-Description: Delivery report", "Content-Type: message/delivery-status"],
            status_bytes,
        ),
        (
            [
                f"Content-Description: {description}",
                f"Content-Type: {returned_type}",
                *(["Content-Transfer-Encoding: 8bit"] if returned_8bit else []),
            ],
            returned,
        ),
    ]
    delimiter = b"\r\n--" + boundary.encode("ascii")
    out = [
        "".join(header).encode("utf-8", "replace"),
        b"\r\nThis is a MIME-encapsulated message.\r\n",
    ]
    for part_header, content in parts:
        out += [delimiter, b"\r\n", "\r\n".join(part_header).encode("ascii"), b"\r\n\r\n"]
        out.append(content)
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


def _one_line(text: str) -> str:
    """text as one line without control characters: a multi-line reply joined with spaces."""
    return _CONTROLS.sub("?", _BREAKS.sub(" ", text).replace("\t", " ")).strip()


def _host(name: str) -> str:
    """A host name as a 'dns;' field and a Message-ID want it: ASCII (IDNA A-labels)."""
    name = _one_line(name).replace(" ", "")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return _escape(name, keep_specials=True)


def _escape(text: str, *, keep_specials: bool) -> str:
    """text with what a 7-bit field cannot carry as RFC 6533 \\x{HEX}.

    keep_specials keeps the printable ASCII that utf-8-addr-xtext also escapes (space, '+',
    '=', '\\'): for free text, where only non-ASCII needs it.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if 0x21 <= code <= 0x7E and (keep_specials or ch not in "+=\\"):
            out.append(ch)
        elif keep_specials and ch == " ":
            out.append(ch)
        else:
            out.append(f"\\x{{{code:02X}}}")
    return "".join(out)


def _xtext_decoded(value: str) -> str:
    """An ENVID or ORCPT address as RFC 3461 puts it in a DSN: decoded from xtext (+HH)."""
    if "+" not in value or not _XTEXT.match(value):
        return value
    raw = _XTEXT_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("ascii"))
    return raw.decode("utf-8", "replace")


def _address_field(address: str) -> str:
    """An address typed as delivery-status fields type it: 'rfc822; a@b', or 'utf-8; ...'
    with RFC 6533's 7-bit form when it is not ASCII."""
    address = _one_line(address)
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_escape(address, keep_specials=False)}"


def _original_recipient(value: str) -> str | None:
    """The ORCPT= value as an Original-Recipient field: 'rfc822;x' becomes 'rfc822; x'
    (None when it names no address)."""
    addr_type, sep, address = _one_line(value).partition(";")
    if not sep:
        addr_type, address = "rfc822", addr_type
    addr_type = _escape(addr_type.strip(), keep_specials=True) or "rfc822"
    address = _one_line(_xtext_decoded(address.strip()))
    if not address:
        return None
    if address.isascii():
        return f"{addr_type}; {address}"
    if addr_type.lower() == "utf-8":
        # unitext (raw UTF-8 with \x{} for specials) to xtext: only the non-ASCII changes
        return f"{addr_type}; {_escape(address, keep_specials=True)}"
    return _address_field(address)


def _diagnostic_field(diagnostic: str) -> str:
    """A reply as Diagnostic-Code: 'smtp;' when it is an SMTP reply, Postfix's type else."""
    text = _escape(_one_line(diagnostic), keep_specials=True)
    kind = "smtp" if _SMTP_REPLY.match(text) else "X-Postfix"
    return f"{kind}; {text}"


def _field(name: str, value: str, limit: int = _FOLD_AT) -> str:
    """'Name: value' CRLF, folded at spaces before `limit` octets where it can be, and
    always within 998; a word longer than that is cut (the only fold that adds a space)."""
    words: list[str] = []
    for word in value.split(" "):
        while len(word.encode("utf-8", "replace")) > _CHUNK:
            head = _cut(word, _CHUNK)
            words.append(head)
            word = word[len(head) :]
        words.append(word)
    lines = [f"{name}:"]
    filled = False  # whether a word is out yet: folding before the first leaves 'Name:' bare
    for word in words:
        line = lines[-1]
        # a continuation line must have more than white space, so never fold before ""
        if word and filled and _octets(line) + 1 + _octets(word) > limit:
            lines.append(" " + word)
        else:
            lines[-1] = f"{line} {word}"
        filled = filled or bool(word)
    return "".join(line + "\r\n" for line in lines)


def _wrapped(line: str) -> list[str]:
    """A text line, as is when it fits 998 octets, else folded at spaces with an indent."""
    if _octets(line) <= _MAX_LINE:
        return [line]
    # "x: " stands for the indent the continuation lines get instead of their one space
    folded = _field("x", line, limit=_MAX_LINE - 3).split("\r\n")[:-1]
    first = folded[0][len("x: ") :]
    return [first] + ["   " + rest for rest in folded[1:]]


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def _cut(word: str, octets: int) -> str:
    """The longest start of word within `octets` UTF-8 octets (at least one character)."""
    size = 0
    for i, ch in enumerate(word):
        size += _octets(ch)
        if size > octets:
            return word[: max(i, 1)]
    return word


def _date(when: float) -> str:
    return formatdate(when, localtime=False)


def _delivery_status(
    mta: str,
    queue_id: str,
    envid: str | None,
    arrival: float,
    recipients: Sequence[DSNRecipient],
) -> str:
    """The message/delivery-status body, fields in RFC 3464's order, all 7-bit."""
    fields = []
    if envid is not None:
        fields.append(
            _field(
                "Original-Envelope-Id",
                _escape(_one_line(_xtext_decoded(envid)), keep_specials=True),
            )
        )
    fields.append(_field("Reporting-MTA", f"dns; {mta}"))
    fields.append(_field("Arrival-Date", _date(arrival)))
    if queue_id:
        fields.append(
            _field("X-Postfix-Queue-ID", _escape(_one_line(queue_id), keep_specials=True))
        )
    blocks = ["".join(fields)]
    for r in recipients:
        fields = []
        original = None if r.original is None else _original_recipient(r.original)
        if original is not None:
            fields.append(_field("Original-Recipient", original))
        fields.append(_field("Final-Recipient", _address_field(r.final)))
        fields.append(_field("Action", r.action))
        fields.append(_field("Status", r.status))
        if r.remote_mta:
            fields.append(_field("Remote-MTA", f"dns; {_host(r.remote_mta)}"))
        if r.diagnostic is not None and _one_line(r.diagnostic):
            fields.append(_field("Diagnostic-Code", _diagnostic_field(r.diagnostic)))
        if r.last_attempt is not None:
            fields.append(_field("Last-Attempt-Date", _date(r.last_attempt)))
        if r.action == "delayed" and r.will_retry_until is not None:
            fields.append(_field("Will-Retry-Until", _date(r.will_retry_until)))
        blocks.append("".join(fields))
    return "\r\n".join(blocks)


def _text(
    kind: str, mta: str, recipients: Sequence[DSNRecipient], arrival: float, now: float
) -> str:
    """The readable part, in Postfix's manner: why the notice came, then a line a recipient."""
    lines = [f"This is the mail system at host {mta}.", ""]
    if kind == "failed":
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
            "For further assistance, please send mail to postmaster.",
            "",
            "If you do so, please include this problem report. You can",
            "delete your own text from the attached returned message.",
        ]
    elif kind == "delayed":
        until = [r.will_retry_until for r in recipients if r.will_retry_until is not None]
        lines += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            f"Your message could not be delivered for more than {_duration(now - arrival)}.",
            (
                f"It will be retried until {_date(max(until))}."
                if until
                else "It will be retried until it is delivered or expires."
            ),
            "",
            "For further assistance, please send mail to postmaster.",
        ]
    else:
        lines += [
            "Your message was successfully delivered to the destination(s)",
            "listed below. If it was delivered to a mailbox you will receive",
            "no further notifications. Otherwise you may still receive",
            "notifications of mail delivery errors from other systems.",
        ]
    lines += ["", "                   The mail system", ""]
    for r in recipients:
        address = _one_line(r.final)
        host = _one_line(r.remote_mta) if r.remote_mta else ""
        said = _one_line(r.diagnostic) if r.diagnostic else ""
        if said and host:
            line = f"<{address}>: host {host} said: {said}"
        elif said:
            line = f"<{address}>: {said}"
        elif host:
            line = f"<{address}>: host {host}: {_meaning(r.status)} (status {r.status})"
        else:
            line = f"<{address}>: {_meaning(r.status)} (status {r.status})"
        lines += _wrapped(line)
        lines.append("")
    return "".join(line + "\r\n" for line in lines)


def _duration(seconds: float) -> str:
    minutes = max(int(seconds // 60), 0)
    if minutes < 120:
        return f"{minutes} minute(s)"
    if minutes < 48 * 60:
        return f"{minutes // 60} hour(s)"
    return f"{minutes // (24 * 60)} day(s)"


def _meaning(status: str) -> str:
    klass, subject, detail = status.split(".")
    if klass == "2":
        return "delivered"
    return _DETAIL.get(f"{subject}.{detail}") or _SUBJECT_CLASS.get(subject, "undefined problem")


def _crlf(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with every line end made CRLF; a CR that ends a chunk waits for the next."""
    held = b""
    for chunk in chunks:
        data = held + bytes(chunk)
        held = b""
        if data.endswith(b"\r"):
            held, data = b"\r", data[:-1]
        if data:
            yield _EOL.sub(b"\r\n", data)
    if held:
        yield b"\r\n"


def _read(original: Iterable[bytes], limit: int, full: bool) -> tuple[bytes, bool]:
    """The original, CRLF, as far as the notice needs it, and whether that is all of it.

    Returning the whole message needs it whole, up to `limit`; the header section only needs
    it up to its empty line, so a large original is not read to its end for that.
    """
    buf = bytearray()
    searched = 0
    for chunk in _crlf(original):
        buf += chunk
        if full and len(buf) <= limit:
            continue
        full = False
        if buf.startswith(b"\r\n") or buf.find(b"\r\n\r\n", max(searched - 3, 0)) >= 0:
            return bytes(buf), False
        if len(buf) > limit:
            return bytes(buf), False
        searched = len(buf)
    return bytes(buf), True


def _has_long_line(data: bytes) -> bool:
    """Whether a line of data (CRLF line ends) is over 998 octets."""
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return len(data) - pos > _MAX_LINE
        if end - pos > _MAX_LINE:
            return True
        pos = end + 2


def _header_section(data: bytes, limit: int, whole: bool) -> bytes:
    """The original's header lines, each with its CRLF: up to the empty line, or up to the
    first line that is neither a field nor a continuation (a message without headers has
    none), within `limit` octets. A line over 998 octets is folded (see _fold_long)."""
    out: list[bytes] = []
    size = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            if not whole:
                break  # cut off where reading stopped: not a whole line
            line, pos = data[pos:], len(data)
        else:
            line, pos = data[pos:end], end + 2
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if not out:
                break
        elif not _FIELD_LINE.match(line):
            break
        if size + len(line) + 2 > limit:
            break
        out.extend(_fold_long(line))
        size += len(line) + 2
    return b"".join(line + b"\r\n" for line in out)


def _fold_long(line: bytes) -> list[bytes]:
    """A header line as lines of at most 998 octets: folded before white space where there
    is some (unfolding gives the line back), else cut with a tab, clear of UTF-8 sequences."""
    pieces = []
    while len(line) > _MAX_LINE:
        at = -1
        for i in range(_MAX_LINE, 0, -1):
            if line[i : i + 1] in (b" ", b"\t") and line[i + 1 : i + 2] not in (b" ", b"\t", b""):
                at = i
                break
        if at > 0:
            pieces.append(line[:at])
            line = line[at:]
            continue
        at = _MAX_LINE
        while at > 1 and 0x80 <= line[at] <= 0xBF:
            at -= 1
        pieces.append(line[:at])
        line = b"\t" + line[at:]
    pieces.append(line)
    return pieces


def _new_boundary() -> str:
    return "=_" + secrets.token_hex(16)


def _boundary(contents: Sequence[bytes]) -> str:
    """A boundary that occurs in none of the parts: random, and checked (RFC 2046 5.1.1)."""
    for _ in range(100):
        boundary = _new_boundary()
        if not any(boundary.encode("ascii") in content for content in contents):
            return boundary
    raise RuntimeError("no MIME boundary found that the notice's parts do not contain")
