#!/usr/bin/env python3
"""SMTP load: an asyncio load client, and our appliance beside Postfix 3.7 in one run.

Load client (any SMTP server on loopback)::

    .venv/bin/python bench/smtp_load.py HOST:PORT --messages N --size S --connections C
        [--auth USER:PASS] [--tls starttls|implicit] [--cafile CA.pem] [--servername NAME]
        [--from A] [--to B] [--maildir DIR] [--timeout 300] [--deliver-timeout 120]

C concurrent sessions, each on one connection for many messages: MAIL, RCPT and DATA are
pipelined (RFC 2920), and after the message text's final "." the next MAIL/RCPT/DATA follow in
the same write (message content may start a group), back to back, without RSET. N messages in
all, each S bytes (headers + body, as the server receives them before its Received: line).
Prints msgs/s accepted (N / wall time from the start until the last 250), the latency of each
message from its end-of-data "." being written to its 250 (p50/p99), and with --maildir the
msgs/s delivered: the time until DIR/new holds N more files than before the load (polled every
20 ms, up to --deliver-timeout after the last 250). Progress goes to stderr every second.
Only loopback targets are accepted. The whole load stops at --timeout whatever happens.
TLS: --tls implicit connects with TLS (port 465), --tls starttls upgrades after EHLO; the
certificate is verified against --cafile when given (for the name --servername, default HOST),
otherwise not at all (it is a benchmark).
--auth does AUTH PLAIN after EHLO (after TLS, when TLS is used).

--compare: see bench/smtp_compare.py (our appliance beside Postfix 3.7, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import math
import os
import shutil
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ANCHOR_DIR = REPO.parent / "shared" / "bench"
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", "/tmp/mailbench-results"))

SENDER = "a@sender.test"
RECIPIENT = "user1@example.test"
POLL_INTERVAL = 0.02


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def arg_parser(
    doc: str | None, epilog: str = "See the module docstring for details (read the file)."
) -> argparse.ArgumentParser:
    """A bench's command line: the first paragraph of its docstring doc as the description,
    epilog after the options."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0], epilog=epilog)


def remove_work(work: Path, keep: bool) -> None:
    """A bench's temporary folder at its end: kept (and said so) with --keep, else removed."""
    if keep:
        say(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------- target checks


def parse_target(text: str) -> tuple[str, int]:
    """'127.0.0.1:2525', 'localhost:25' or '[::1]:25' -> (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
        port = rest if sep else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"target must look like HOST:PORT, got {text!r}")
    return host, int(port)


def require_loopback(host: str, port: int) -> None:
    """Refuse any target that is (or resolves to) something other than loopback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SystemExit(f"cannot resolve {host}: {e}") from None
    for *_, sockaddr in infos:
        addr = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if not addr.is_loopback:
            raise SystemExit(f"target {host} ({addr}) is not a loopback address; refusing")


# ------------------------------------------------------------------------------ messages


def make_message(size: int, mail_from: str, rcpt: str) -> bytes:
    """size bytes of message: a few headers, then 78-byte lines (none starts with '.')."""
    head = (
        f"From: <{mail_from}>\r\nTo: <{rcpt}>\r\nSubject: smtp_load {size} bytes\r\n"
        "Message-ID: <smtp-load@bench.test>\r\n\r\n"
    ).encode("ascii")
    rest = max(0, size - len(head))
    line = b"x" * 76 + b"\r\n"
    n, r = divmod(rest, len(line))
    lines = [line] * n
    if r >= 2:
        lines.append(b"x" * (r - 2) + b"\r\n")
    elif r == 1:
        if lines:
            lines[-1] = b"x" * 77 + b"\r\n"
        else:
            head += b"\r\n"  # 1 spare byte and no body line: CRLF-terminated either way
    body = head + b"".join(lines)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


# --------------------------------------------------------------------------- load client


@dataclass
class LoadConfig:
    host: str
    port: int
    messages: int
    size: int
    connections: int
    mail_from: str = SENDER
    rcpt: str = RECIPIENT
    auth: tuple[str, str] | None = None
    tls: str | None = None  # None, "starttls", "implicit"
    cafile: str | None = None
    servername: str | None = None  # name the certificate must match (default: host)
    helo: str = "smtp-load.bench.test"
    maildir: Path | None = None
    timeout: float = 300.0
    deliver_timeout: float = 120.0
    progress: bool = True


@dataclass
class LoadResult:
    messages: int
    accepted: int = 0
    failed: int = 0
    sent: int = 0
    accept_s: float | None = None  # start -> last 250
    deliver_s: float | None = None  # start -> DIR/new holds every accepted message
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    timed_out: bool = False
    want_delivery: bool = False

    @property
    def accept_rate(self) -> float | None:
        return self.accepted / self.accept_s if self.accept_s else None

    @property
    def deliver_rate(self) -> float | None:
        return self.delivered / self.deliver_s if self.deliver_s else None

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the latencies, in seconds."""
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return xs[max(0, math.ceil(q * len(xs)) - 1)]

    @property
    def ok(self) -> bool:
        done = self.accepted == self.messages and not self.timed_out
        if not self.want_delivery:
            return done
        return done and self.deliver_s is not None and self.delivered >= self.messages


class SMTPReplyError(Exception):
    pass


def tls_context(cafile: str | None) -> ssl.SSLContext:
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Session:
    """One connection sending messages back to back until the shared counter runs out."""

    def __init__(self, cfg: LoadConfig, run: Run) -> None:
        self.cfg = cfg
        self.run = run
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def reply(self) -> tuple[int, list[str]]:
        lines = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError("connection closed by server")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise SMTPReplyError(f"bad reply {lines[-1]!r}") from None
        return code, lines

    async def command(self, line: str, expect: int) -> list[str]:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        code, lines = await self.reply()
        if code != expect:
            raise SMTPReplyError(f"{line.split()[0]}: {lines[-1]}")
        return lines

    async def ehlo(self) -> set[str]:
        lines = await self.command(f"EHLO {self.cfg.helo}", 250)
        return {ln[4:].split()[0].upper() for ln in lines[1:] if len(ln) > 4}

    def tls_name(self) -> str | None:
        if not self.cfg.cafile:
            return None
        return self.cfg.servername or self.cfg.host

    async def open(self) -> None:
        cfg = self.cfg
        ctx = tls_context(cfg.cafile) if cfg.tls else None
        self.reader, self.writer = await asyncio.open_connection(
            cfg.host,
            cfg.port,
            ssl=ctx if cfg.tls == "implicit" else None,
            server_hostname=self.tls_name() if cfg.tls == "implicit" else None,
        )
        if cfg.tls is None:
            # drain() then returns only once the bytes are in the kernel: the latency clock
            # starts when the end-of-data "." has really left us. (Not on TLS transports:
            # there drain() with high=0 can wait until after the reply has come back.)
            self.writer.transport.set_write_buffer_limits(high=0)
        code, lines = await self.reply()
        if code != 220:
            raise SMTPReplyError(f"greeting: {lines[-1]}")
        caps = await self.ehlo()
        if cfg.tls == "starttls":
            if "STARTTLS" not in caps:
                raise SMTPReplyError("server does not offer STARTTLS")
            await self.command("STARTTLS", 220)
            await self.writer.start_tls(ctx, server_hostname=self.tls_name())
            caps = await self.ehlo()
        if cfg.auth:
            user, password = cfg.auth
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            await self.command(f"AUTH PLAIN {token}", 235)
        self.pipelining = "PIPELINING" in caps

    def group(self) -> bytes:
        c = self.cfg
        size = len(self.run.body)
        return f"MAIL FROM:<{c.mail_from}> SIZE={size}\r\nRCPT TO:<{c.rcpt}>\r\nDATA\r\n".encode()

    async def group_replies(self) -> tuple[int, int, int]:
        """Read the replies to MAIL, RCPT, DATA (already written)."""
        return (await self.reply())[0], (await self.reply())[0], (await self.reply())[0]

    async def go(self) -> None:
        run = self.run
        await self.open()
        if not self.pipelining:
            raise SMTPReplyError("server does not offer PIPELINING")
        if not run.claim():
            await self.quit()
            return
        self.writer.write(self.group())
        while True:
            mail, rcpt, data = await self.group_replies()
            nxt = False
            if data == 354:
                nxt = run.claim()
                self.writer.write(run.body + b".\r\n" + (self.group() if nxt else b""))
                await self.writer.drain()
                t_sent = time.monotonic()
                run.result.sent += 1
                code, lines = await self.reply()
                if code == 250:
                    now = time.monotonic()
                    run.result.latencies.append(now - t_sent)
                    run.result.accepted += 1
                    run.last_accept = now
                else:
                    run.fail(f"end of data: {lines[-1]}")
                    if code == 421:
                        return
            else:
                run.fail(f"MAIL {mail} / RCPT {rcpt} / DATA {data}")
                if 421 in (mail, rcpt, data):
                    return
                nxt = run.claim()
                if nxt:
                    self.writer.write(self.group())
            if not nxt:
                break
        await self.quit()

    async def quit(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await self.reply()
        except (ConnectionError, SMTPReplyError):
            pass
        self.close()

    def close(self) -> None:
        w = getattr(self, "writer", None)
        if w is not None and not w.is_closing():
            w.close()


class Run:
    """Shared state of one load: the message counter and the result."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.body = make_message(cfg.size, cfg.mail_from, cfg.rcpt)
        self.claimed = 0
        self.result = LoadResult(messages=cfg.messages)
        self.last_accept: float | None = None

    def claim(self) -> bool:
        if self.claimed >= self.cfg.messages:
            return False
        self.claimed += 1
        return True

    def fail(self, why: str) -> None:
        self.result.failed += 1
        self.result.errors[why[:120]] += 1


def maildir_count(maildir: Path) -> int:
    try:
        with os.scandir(maildir / "new") as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def clear_new(maildir: Path) -> None:
    new = maildir / "new"
    if new.is_dir():
        with os.scandir(new) as it:
            for e in it:
                if e.is_file():
                    os.unlink(e.path)


async def run_load(cfg: LoadConfig) -> LoadResult:
    run = Run(cfg)
    res = run.result
    res.want_delivery = cfg.maildir is not None
    base = maildir_count(cfg.maildir) if cfg.maildir else 0
    sessions = [Session(cfg, run) for _ in range(min(cfg.connections, cfg.messages))]

    async def one(s: Session) -> None:
        try:
            await s.go()
        except (OSError, SMTPReplyError, ssl.SSLError) as e:
            res.errors[f"session: {type(e).__name__}: {e}"[:120]] += 1
        finally:
            s.close()

    async def progress(t0: float) -> None:
        while True:
            await asyncio.sleep(1)
            print(
                f"  {time.monotonic() - t0:5.1f}s sent {res.sent} accepted {res.accepted}"
                f" failed {res.failed}",
                file=sys.stderr,
                flush=True,
            )

    t0 = time.monotonic()
    ticker = asyncio.create_task(progress(t0)) if cfg.progress else None
    try:
        await asyncio.wait_for(asyncio.gather(*(one(s) for s in sessions)), cfg.timeout)
    except TimeoutError:
        res.timed_out = True
        res.errors[f"load deadline ({cfg.timeout:g}s) reached"] += 1
        for s in sessions:
            s.close()
    if run.last_accept is not None:
        res.accept_s = run.last_accept - t0
    # messages never claimed or lost with a dead session count as failed too
    res.failed = res.messages - res.accepted
    if cfg.maildir and res.accepted:
        deadline = time.monotonic() + cfg.deliver_timeout
        while True:
            res.delivered = maildir_count(cfg.maildir) - base
            if res.delivered >= res.accepted or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_INTERVAL)
        if res.delivered >= res.accepted:
            res.deliver_s = time.monotonic() - t0
        else:
            res.errors[f"delivery deadline: {res.delivered}/{res.accepted} in new/"] += 1
    if ticker is not None:
        ticker.cancel()
    return res


def one_message(
    port: int,
    maildir: Path,
    size: int = 1024,
    timeout: float = 30,
    deliver_timeout: float = 10,
    run: Callable[[LoadConfig], Awaitable[LoadResult]] | None = None,
    host: str = "127.0.0.1",
) -> LoadResult:
    """One untimed message to host:port, waited for in maildir: the smoke test before a
    timed load (it also makes the Maildir, whose first message costs extra fsyncs). run:
    run_load or a wrapper of it."""
    cfg = LoadConfig(
        host,
        port,
        1,
        size,
        1,
        maildir=maildir,
        timeout=timeout,
        deliver_timeout=deliver_timeout,
        progress=False,
    )
    return asyncio.run((run or run_load)(cfg))


def print_result(cfg: LoadConfig, res: LoadResult) -> None:
    def ms(x: float | None) -> str:
        return f"{x * 1000:.1f} ms" if x is not None else "-"

    print(
        f"target {cfg.host}:{cfg.port}: {cfg.messages} msgs x {len(make_message(cfg.size, cfg.mail_from, cfg.rcpt))} B"
        f" over {cfg.connections} connections{' (' + cfg.tls + ')' if cfg.tls else ''}"
        f"{' with AUTH' if cfg.auth else ''}, load average {loadavg()}"
    )
    if res.accept_s:
        print(
            f"accepted:  {res.accepted}/{res.messages} in {res.accept_s:.2f} s"
            f" = {res.accepted / res.accept_s:,.1f} msgs/s"
        )
    else:
        print(f"accepted:  {res.accepted}/{res.messages}")
    print(
        f"latency (end-of-data sent -> 250): p50 {ms(res.percentile(0.50))},"
        f" p99 {ms(res.percentile(0.99))}, max {ms(max(res.latencies, default=None))}"
    )
    if cfg.maildir:
        if res.deliver_s:
            print(
                f"delivered: {res.delivered} in {cfg.maildir}/new after {res.deliver_s:.2f} s"
                f" = {res.delivered / res.deliver_s:,.1f} msgs/s"
            )
        elif res.accepted:
            print(f"delivered: {res.delivered} (not all within {cfg.deliver_timeout:g} s)")
    for why, n in res.errors.most_common(5):
        print(f"error x{n}: {why}")


# ----------------------------------------------------------------------------------- main


def main() -> int:
    ap = arg_parser(__doc__, "See the module docstring for details.")
    ap.add_argument("target", nargs="?", help="HOST:PORT (loopback only)")
    ap.add_argument("--messages", type=int, default=2000, help="messages in all (default 2000)")
    ap.add_argument("--size", type=int, default=1024, help="message bytes (default 1024)")
    ap.add_argument("--connections", type=int, default=20, help="concurrent sessions (20)")
    ap.add_argument("--auth", metavar="USER:PASS", help="AUTH PLAIN after EHLO")
    ap.add_argument("--tls", choices=("starttls", "implicit"), help="TLS mode")
    ap.add_argument("--cafile", help="verify the server's certificate with this CA")
    ap.add_argument("--servername", help="name the certificate must match (default: HOST)")
    ap.add_argument("--from", dest="mail_from", default=SENDER, help=f"sender ({SENDER})")
    ap.add_argument("--to", dest="rcpt", default=RECIPIENT, help=f"recipient ({RECIPIENT})")
    ap.add_argument("--maildir", type=Path, help="also time delivery into DIR/new")
    ap.add_argument("--timeout", type=float, default=300, help="load deadline, s (300)")
    ap.add_argument(
        "--deliver-timeout", type=float, default=120, help="delivery deadline after load (120)"
    )
    ap.add_argument("--compare", action="store_true", help="Postfix anchor vs our appliance")
    ap.add_argument("--reps", type=int, default=3, help="compare: reps per server (3)")
    ap.add_argument("--sizes", default="1024,102400", help="compare: sizes (1024,102400)")
    ap.add_argument(
        "--messages-big", type=int, default=0, help="compare: messages for sizes > 10 KB"
    )
    ap.add_argument("--no-postfix", action="store_true", help="compare: skip the anchor")
    ap.add_argument("--smtp-source-opts", default="", help="compare: e.g. -d")
    ap.add_argument("--keep", action="store_true", help="compare: keep the temp folder")
    ap.add_argument("--anchor-dir", type=Path, default=ANCHOR_DIR, help=str(ANCHOR_DIR))
    args = ap.parse_args()

    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop what we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.compare:
        import smtp_compare  # here, not at the top: smtp_compare imports this module

        return smtp_compare.compare(args)
    if not args.target:
        ap.error("HOST:PORT is required (or --compare)")
    host, port = parse_target(args.target)
    require_loopback(host, port)
    if args.messages < 1 or args.connections < 1 or args.size < 0:
        ap.error("--messages and --connections must be >= 1, --size >= 0")
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep:
            ap.error("--auth takes USER:PASS")
        auth = (user, password)
    cfg = LoadConfig(
        host=host,
        port=port,
        messages=args.messages,
        size=args.size,
        connections=args.connections,
        mail_from=args.mail_from,
        rcpt=args.rcpt,
        auth=auth,
        tls=args.tls,
        cafile=args.cafile,
        servername=args.servername,
        maildir=args.maildir,
        timeout=args.timeout,
        deliver_timeout=args.deliver_timeout,
    )
    res = asyncio.run(run_load(cfg))
    print_result(cfg, res)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
