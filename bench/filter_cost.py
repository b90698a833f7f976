#!/usr/bin/env python3
"""Filter cost: SMTP acceptance + durable local delivery with and without the mail filters.

    .venv/bin/python bench/filter_cost.py [--reps 3] [--messages 1000] [--messages-spam 300]
        [--size 1024] [--connections 20] [--configs A,B,C,D] [--unsigned]
        [--spamd-children 2] [--spamd-dns appliance|none] [--timeout 180]
        [--deliver-timeout 60] [--keep]

One run, one machine, four configurations of the same appliance (`twistd -n mailappliance`
on a temporary config, as bench/smtp_load.py --compare starts it: hostname mail.bench.test,
[smtp] listen on a free port of 127.0.0.1, local_domains = example.test, a passwd file holding
user1@example.test), which differ only in their filter sections:

    A  none:   [spf] check = no,  [dkim] verify = no,  [dmarc] check = no
    B  auth:   [spf] check = yes, [dkim] verify = yes, [dmarc] check = yes
    C  +spamd: B and [spamassassin] address = 127.0.0.1:<spamd>, timeout = 60s
    D  +clamd: C and [clamav] address = 127.0.0.1:<clamd>, timeout = 30s

Every configuration also has `[dkim] sign = no` (signing only ever applies to mail of
logged-in users, which this load does not send; with it off, A has no filter chain at all),
and the same `[dns] listen` on a free port of 127.0.0.1 with a `[zone:sender.test]` written
here: SOA, NS, A 127.0.0.1, `"v=spf1 ip4:127.0.0.1 -all"`, `_dmarc` `"v=DMARC1; p=none"` and
the DKIM key `bench._domainkey` (RSA 2048, made for this run). So the SPF, DKIM and DMARC
checks of B-D really evaluate, through the appliance's own resolver and zone, to pass: the
load's messages are from a@sender.test (envelope and From:) over 127.0.0.1 and carry a
DKIM-Signature (d=sender.test, rsa-sha256, relaxed/simple, From/To/Subject/Message-ID) made
once by dkimpy with that key. --size counts the whole message, signature included (1 KB by
default); --unsigned sends the same size without a signature (then DKIM finds dkim=none and
DMARC passes on SPF alone).

The daemons are Debian's, started once for the whole run by tests/filters/daemons.py (clamd
with its local two-signature EICAR database, spamd with SpamAssassin's packaged rules,
--max-children from --spamd-children, 2 by default as in the tests), on loopback, with their
files in the run's temporary folder. The clamd figure is therefore the cost of the scan
protocol and of clamd's scanning machinery, not of a full signature database. SpamAssassin
runs its network tests too, but never through resolv.conf (only loopback is used here): spamd
gets --siteconfigpath, a copy of /etc/spamassassin plus `dns_server 127.0.0.1:<DNS port>`, the
appliance's own DNS (one port for the whole run), so its DKIM check finds the key
(DKIM_VALID) and its other lookups are refused at once; --spamd-dns none runs spamd --local
(no DNS at all) instead.

The load is bench/smtp_load.py's client (run_load): C connections (20), each sending its
share of N messages back to back with MAIL/RCPT/DATA pipelined; N = --messages for A and B,
--messages-spam for C and D (spamd scores only a few tens of messages a second here).
accepted msgs/s = N / (start -> last 250); delivered msgs/s = N / (start -> the recipient's
Maildir/new holds all N, polled every 20 ms). Each load has --timeout (then
--deliver-timeout for the delivery). Before each load the appliance is started fresh (one
state folder per configuration, new/ emptied before each load) and gets one untimed message,
whose delivered copy must show what the configuration promises: spf=pass, dkim=pass (or none
with --unsigned) and dmarc=pass in its Authentication-Results for B-D, X-Spam-Score for C-D,
and the maillog line `filter clamav: accept (clean)` for D; otherwise the run stops.

Each repetition runs the four configurations, the order rotated by one per repetition
(rep 1: A B C D, rep 2: B C D A, ...). Before each load the load average is printed, a
progress line a second while it runs, and then its raw row (config, rep, messages, seconds,
msgs/s accepted and delivered, load average before the load). At the end, a table: per
configuration, the medians of accepted and delivered msgs/s over the reps whose load
completed, and their ratios to A. Progress goes to stderr, results to stdout; the raw rows
are also written to /tmp/mailbench-results/filter_cost-<time>.tsv (RESULTS_DIR overrides the
folder). The appliance is stopped after each load, both daemons at the end, and everything
on error and on Ctrl-C/SIGTERM (TERM, bounded wait, KILL). The machine is noisy: trust
ratios within one run only, and look at the load averages.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "bench"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import relay_load as rl  # noqa: E402  (run_interruptible)
import smtp_compare as sc  # noqa: E402  (appliance start, fmt)
import smtp_load as sl  # noqa: E402  (load client, helpers)

SENDER_DOMAIN = "sender.test"
SELECTOR = "bench"
CONFIGS = ("A", "B", "C", "D")
LABELS = {
    "A": "none",
    "B": "spf+dkim+dmarc",
    "C": "B + spamd",
    "D": "C + clamd",
}
SPAM_CONFIGS = ("C", "D")
SA_SITE = Path("/etc/spamassassin")
# rough rates for the duration estimate only
EST_RATE = {"A": 300.0, "B": 200.0, "C": 18.0, "D": 18.0}
EST_START = 5.0  # appliance start, smoke message and stop
TSV_FIELDS = (
    "config",
    "label",
    "rep",
    "messages",
    "accepted",
    "delivered",
    "accept_s",
    "deliver_s",
    "accept_rate",
    "deliver_rate",
    "p50_ms",
    "p99_ms",
    "load1",
    "load5",
    "load15",
    "status",
    "errors",
)


def say(msg: str) -> None:
    sl.say(msg)


# ----------------------------------------------------------------------- DKIM and DNS


@dataclass
class Key:
    private_pem: bytes
    public_b64: str


def make_key() -> Key:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(pem, base64.b64encode(der).decode("ascii"))


def key_record(key: Key) -> str:
    return f"v=DKIM1; k=rsa; p={key.public_b64}"


def sign(message: bytes, key: Key) -> bytes:
    import dkim

    sig = dkim.sign(
        message,
        SELECTOR.encode(),
        SENDER_DOMAIN.encode(),
        key.private_pem,
        canonicalize=(b"relaxed", b"simple"),
        include_headers=[b"from", b"to", b"subject", b"message-id"],
        linesep=b"\r\n",
    )
    return sig + message


def bench_message(size: int, key: Key | None) -> bytes:
    """size bytes in all (DKIM-Signature included when key is given), smtp_load's message."""
    if key is None:
        return sl.make_message(size, sl.SENDER, sl.RECIPIENT)
    trial = sign(sl.make_message(size, sl.SENDER, sl.RECIPIENT), key)
    extra = len(trial) - size
    msg = sign(sl.make_message(max(0, size - extra), sl.SENDER, sl.RECIPIENT), key)
    import dkim

    record = key_record(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return (
            record
            if name.rstrip(b".") == f"{SELECTOR}._domainkey.{SENDER_DOMAIN}".encode()
            else None
        )

    if not dkim.verify(msg, dnsfunc=dnsfunc):
        raise SystemExit("the bench message's own DKIM signature does not verify")
    return msg


def write_zone(path: Path, key: Key | None) -> None:
    lines = [
        f"; zone {SENDER_DOMAIN} for bench/filter_cost.py",
        "$TTL 1H",
        f"@ IN SOA ns.{SENDER_DOMAIN}. root.{SENDER_DOMAIN}. ( 1 3H 15M 1W 1H )",
        "  IN NS ns",
        "  IN A 127.0.0.1",
        "ns IN A 127.0.0.1",
        '@ IN TXT "v=spf1 ip4:127.0.0.1 -all"',
        '_dmarc IN TXT "v=DMARC1; p=none"',
    ]
    if key is not None:
        rec = key_record(key)
        chunks = " ".join(f'"{rec[i : i + 200]}"' for i in range(0, len(rec), 200))
        lines.append(f"{SELECTOR}._domainkey IN TXT {chunks}")
    path.write_text("\n".join(lines) + "\n")


def free_port_tcp_udp() -> int:
    """A port of 127.0.0.1 free for both TCP and UDP (the appliance's DNS listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise SystemExit("no free TCP+UDP port on 127.0.0.1")


# --------------------------------------------------------------------------- daemons


class Daemons:
    """clamd and spamd from tests/filters/daemons.py, each started once for the run."""

    def __init__(self, work: Path, spamd_children: int, spamd_dns: str, dns_port: int) -> None:
        self.work = work
        self.spamd_children = spamd_children
        self.spamd_dns = spamd_dns
        self.dns_port = dns_port
        self.clamd = None
        self.spamd = None

    def _make(self, name: str):  # -> tests.filters.daemons.Daemon
        import pytest

        from tests.filters import daemons as td

        folder = self.work / name
        folder.mkdir()
        folder.chmod(0o755)  # spamd runs as nobody
        try:
            d = td._clamd(folder) if name == "clamd" else td._spamd(folder)
        except pytest.skip.Exception as e:
            raise SystemExit(f"{name}: {e}") from None
        if name == "spamd":
            d.argv = [
                f"--max-children={self.spamd_children}" if a.startswith("--max-children=") else a
                for a in d.argv
            ]
            if self.spamd_dns == "appliance":
                # SpamAssassin's network tests ask the appliance's DNS, never resolv.conf's
                site = folder / "site"
                shutil.copytree(SA_SITE, site, symlinks=True)
                (site / "zz_filter_cost.cf").write_text(f"dns_server 127.0.0.1:{self.dns_port}\n")
                d.argv.append(f"--siteconfigpath={site}")
            else:
                d.argv.append("--local")
        return d

    def start(self, want_clamd: bool) -> None:
        self.spamd = self._make("spamd")
        if want_clamd:
            self.clamd = self._make("clamd")
        for d in (self.spamd, self.clamd):
            if d is None:
                continue
            t0 = time.monotonic()
            try:
                d.start()
            except RuntimeError as e:
                raise SystemExit(f"{d.name} did not start: {e}") from None
            say(
                f"{d.name} up on 127.0.0.1:{d.port} (pid {d.proc.pid}) in"
                f" {time.monotonic() - t0:.1f}s: {' '.join(d.argv)}"
            )

    def stop(self) -> None:
        for d in (self.clamd, self.spamd):
            if d is not None and d.proc is not None:
                say(f"stopping {d.name} (pid {d.proc.pid})")
                d.stop()


# ------------------------------------------------------------------------- appliance


def filter_sections(name: str, dns_port: int, zone: Path, daemons: Daemons) -> str:
    on = "no" if name == "A" else "yes"
    text = (
        f"[dns]\nlisten = 127.0.0.1:{dns_port}\n"
        f"[zone:{SENDER_DOMAIN}]\nfile = {zone}\n"
        f"[spf]\ncheck = {on}\n"
        f"[dkim]\nverify = {on}\nsign = no\n"
        f"[dmarc]\ncheck = {on}\n"
    )
    if name in ("C", "D"):
        text += f"[spamassassin]\naddress = 127.0.0.1:{daemons.spamd.port}\ntimeout = 60s\n"
    if name == "D":
        text += f"[clamav]\naddress = 127.0.0.1:{daemons.clamd.port}\ntimeout = 30s\n"
    return text


class FilterAppliance(sc.Appliance):
    """smtp_compare's bench appliance, with the filter sections of one configuration added."""

    def __init__(self, name: str, work: Path, zone: Path, daemons: Daemons) -> None:
        work.mkdir(exist_ok=True)
        super().__init__(work, sc.free_port())
        self.name = name
        self.dns_port = daemons.dns_port  # one port for the run: spamd is pointed at it
        base = self.ini.read_text()
        self.ini.write_text(base + filter_sections(name, self.dns_port, zone, daemons))
        self.maillog = self.state / "maillog"


def headers_of(message: bytes) -> dict[str, list[str]]:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    out: dict[str, list[str]] = {}
    last = None
    for line in head.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and last is not None:
            out[last][-1] += " " + line.strip()
        elif ":" in line:
            k, _, v = line.partition(":")
            last = k.strip().lower()
            out.setdefault(last, []).append(v.strip())
    return out


def smoke(app: FilterAppliance, args: argparse.Namespace) -> str:
    """One untimed message; its delivered copy must show the configuration's checks."""
    sl.clear_new(app.maildir)
    res = sl.one_message(app.port, app.maildir, args.size, timeout=90, deliver_timeout=30, run=load)
    if not res.ok:
        raise SystemExit(f"{app.name}: smoke message failed: {dict(res.errors)}")
    files = sorted((app.maildir / "new").iterdir())
    hdrs = headers_of(files[-1].read_bytes())
    ar = " ".join(hdrs.get("authentication-results", []))
    problems = []
    if app.name == "A":
        if ar:
            problems.append(f"unexpected Authentication-Results: {ar}")
    else:
        want_dkim = "dkim=none" if args.unsigned else "dkim=pass"
        for want in ("spf=pass", want_dkim, "dmarc=pass"):
            if want not in ar:
                problems.append(f"no {want} in Authentication-Results: {ar or '(none)'}")
    spam = hdrs.get("x-spam-score")
    if app.name in ("C", "D") and not spam:
        problems.append("no X-Spam-Score header (spamd not consulted?)")
    if app.name in ("A", "B") and spam:
        problems.append("X-Spam-Score present without spamd configured")
    clam = False
    if app.name == "D":
        deadline = time.monotonic() + 5
        while not clam and time.monotonic() < deadline:
            try:
                clam = "filter clamav: accept (clean)" in app.maillog.read_text()
            except FileNotFoundError:
                pass
            if not clam:
                time.sleep(0.1)
        if not clam:
            problems.append(f"no 'filter clamav: accept (clean)' in {app.maillog}")
    if problems:
        raise SystemExit(f"{app.name}: smoke message: " + "; ".join(problems))
    sl.clear_new(app.maildir)
    parts = [f"AR: {ar}" if ar else "no Authentication-Results"]
    if spam:
        parts.append(f"X-Spam-Score: {spam[0]}")
    if clam:
        parts.append("clamav: clean")
    return ", ".join(parts)


# ------------------------------------------------------------------------------- loads


async def load(cfg: sl.LoadConfig) -> sl.LoadResult:
    """smtp_load's run_load, quiet about the sessions cancelled when Ctrl-C/TERM cuts it short."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(handler)
    return await sl.run_load(cfg)


def messages_for(name: str, args: argparse.Namespace) -> int:
    return args.messages_spam if name in SPAM_CONFIGS else args.messages


def one_load(app: FilterAppliance, rep: int, args: argparse.Namespace) -> dict[str, str]:
    name = app.name
    n = messages_for(name, args)
    sl.clear_new(app.maildir)
    la = sl.loadavg()
    say(
        f"{name} ({LABELS[name]}) rep {rep}: load average {la} before the load;"
        f" {n} msgs x {args.size} B over {args.connections} connections"
    )
    cfg = sl.LoadConfig(
        "127.0.0.1",
        app.port,
        n,
        args.size,
        args.connections,
        maildir=app.maildir,
        timeout=args.timeout,
        deliver_timeout=args.deliver_timeout,
        progress=True,
    )
    res = asyncio.run(load(cfg))
    p50, p99 = res.percentile(0.5), res.percentile(0.99)
    loads = (la.split() + ["?", "?", "?"])[:3]
    row = {
        "config": name,
        "label": LABELS[name],
        "rep": str(rep),
        "messages": str(n),
        "accepted": str(res.accepted),
        "delivered": str(res.delivered),
        "accept_s": f"{res.accept_s:.3f}" if res.accept_s else "",
        "deliver_s": f"{res.deliver_s:.3f}" if res.deliver_s else "",
        "accept_rate": f"{res.accept_rate:.1f}" if res.accept_rate else "",
        "deliver_rate": f"{res.deliver_rate:.1f}" if res.deliver_rate else "",
        "p50_ms": f"{p50 * 1000:.1f}" if p50 is not None else "",
        "p99_ms": f"{p99 * 1000:.1f}" if p99 is not None else "",
        "load1": loads[0],
        "load5": loads[1],
        "load15": loads[2],
        "status": "ok" if res.ok else ("timeout" if res.timed_out else "failed"),
        "errors": "; ".join(f"{why} x{k}" for why, k in res.errors.most_common(5)),
    }
    print_row(row)
    return row


def print_row(r: dict[str, str]) -> None:
    secs = r["deliver_s"] or r["accept_s"] or "-"
    print(
        f"row: config {r['config']} ({r['label']}) rep {r['rep']}: {r['messages']} msgs,"
        f" accepted {r['accepted']} in {r['accept_s'] or '-'} s,"
        f" delivered {r['delivered']} in {secs} s;"
        f" {r['accept_rate'] or '-'} msgs/s accepted, {r['deliver_rate'] or '-'} msgs/s"
        f" delivered; p50 {r['p50_ms'] or '-'} ms p99 {r['p99_ms'] or '-'} ms;"
        f" load avg {r['load1']} {r['load5']} {r['load15']}; {r['status']}"
        + (f" ({r['errors']})" if r["errors"] else ""),
        flush=True,
    )


def write_tsv(rows: list[dict[str, str]]) -> Path | None:
    if not rows:
        return None
    sl.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = sl.RESULTS_DIR / f"filter_cost-{time.strftime('%Y%m%d-%H%M%S')}.tsv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TSV_FIELDS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out


def print_table(rows: list[dict[str, str]], configs: list[str], args: argparse.Namespace) -> None:
    def rates(name: str, key: str) -> list[float]:
        return [float(r[key]) for r in rows if r["config"] == name and r["status"] == "ok"]

    base_a = statistics.median(rates("A", "accept_rate")) if rates("A", "accept_rate") else None
    base_d = statistics.median(rates("A", "deliver_rate")) if rates("A", "deliver_rate") else None
    print()
    print(
        f"filter cost: {args.size} B messages, {args.connections} connections, {args.reps} reps"
        f" (medians of the completed loads; ratios to A);"
        f" messages signed with DKIM: {'no' if args.unsigned else 'yes'}"
    )
    head = (
        f"{'config':<20} | {'msgs':>5} | {'ok':>5} | {'accepted/s':>10} | {'delivered/s':>11}"
        f" | {'acc/A':>6} | {'deliv/A':>7} | delivered/s of each rep"
    )
    print(head)
    print("-" * len(head))
    for name in configs:
        acc, dlv = rates(name, "accept_rate"), rates(name, "deliver_rate")
        total = sum(1 for r in rows if r["config"] == name)
        ma = statistics.median(acc) if acc else None
        md = statistics.median(dlv) if dlv else None
        ra = ma / base_a if ma and base_a else None
        rd = md / base_d if md and base_d else None
        each = [r["deliver_rate"] or r["status"] for r in rows if r["config"] == name]
        print(
            f"{name + ' ' + LABELS[name]:<20} | {messages_for(name, args):>5}"
            f" | {f'{len(dlv)}/{total}':>5} | {sc.fmt(ma, ',.1f'):>10} | {sc.fmt(md, ',.1f'):>11}"
            f" | {sc.fmt(ra, '.2f') + 'x' if ra else '-':>6}"
            f" | {sc.fmt(rd, '.2f') + 'x' if rd else '-':>7} | {' '.join(each)}"
        )


def run(args: argparse.Namespace) -> int:
    configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    need_spamd = any(c in SPAM_CONFIGS for c in configs)
    need_clamd = "D" in configs
    est = args.reps * sum(messages_for(c, args) / EST_RATE[c] + EST_START for c in configs) + 10
    say(
        f"filter cost: configs {' '.join(configs)}, {args.reps} reps, {args.size} B x"
        f" {args.messages} msgs (C, D: {args.messages_spam}), {args.connections} connections;"
        f" estimated duration about {est / 60:.1f} min; load average {sl.loadavg()}"
    )
    work = Path(tempfile.mkdtemp(prefix="filter-cost-"))
    work.chmod(0o755)
    rows: list[dict[str, str]] = []
    daemons = Daemons(work, args.spamd_children, args.spamd_dns, free_port_tcp_udp())
    app: FilterAppliance | None = None
    original_make_message = sl.make_message
    try:
        key = None if args.unsigned else make_key()
        body = bench_message(args.size, key)
        # smtp_load's Run takes its message text from make_message: the same bytes every time
        sl.make_message = lambda size, mail_from, rcpt: body
        zone = work / f"{SENDER_DOMAIN}.zone"
        write_zone(zone, key)
        say(
            f"message: {len(body)} bytes"
            + ("" if key is None else f", DKIM-signed d={SENDER_DOMAIN} s={SELECTOR} (RSA 2048)")
        )
        if need_spamd:
            daemons.start(want_clamd=need_clamd)
        for rep in range(1, args.reps + 1):
            k = (rep - 1) % len(configs)
            order = configs[k:] + configs[:k]
            say(f"rep {rep}/{args.reps}: order {' '.join(order)}")
            for name in order:
                app = FilterAppliance(name, work / name, zone, daemons)
                app.start()
                say(f"{name}: smoke message ok: {smoke(app, args)}")
                try:
                    rows.append(one_load(app, rep, args))
                finally:
                    app.stop()
                    app = None
    finally:
        sl.make_message = original_make_message
        if app is not None:
            app.stop()
        daemons.stop()
        tsv = write_tsv(rows)
        if tsv is not None:
            say(f"raw rows: {tsv}")
        sl.remove_work(work, args.keep)
    print_table(rows, configs, args)
    print(f"load average at end: {sl.loadavg()}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def main() -> int:
    ap = sl.arg_parser(__doc__, "See the module docstring for details.")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    ap.add_argument("--messages", type=int, default=1000, help="messages per load, A/B (1000)")
    ap.add_argument(
        "--messages-spam", type=int, default=300, help="messages per load, C/D (spamd) (300)"
    )
    ap.add_argument("--size", type=int, default=1024, help="message bytes, all in (1024)")
    ap.add_argument("--connections", type=int, default=20, help="concurrent sessions (20)")
    ap.add_argument("--configs", default="A,B,C,D", help="which configurations (A,B,C,D)")
    ap.add_argument(
        "--unsigned", action="store_true", help="send messages without a DKIM-Signature"
    )
    ap.add_argument("--spamd-children", type=int, default=2, help="spamd --max-children (2)")
    ap.add_argument(
        "--spamd-dns",
        choices=("appliance", "none"),
        default="appliance",
        help="spamd's network tests ask the appliance's DNS (default), or none: spamd --local",
    )
    ap.add_argument("--timeout", type=float, default=180, help="deadline of each load, s (180)")
    ap.add_argument(
        "--deliver-timeout", type=float, default=60, help="delivery deadline after a load (60)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs) or len(set(configs)) != len(configs):
        ap.error("--configs takes distinct letters of A,B,C,D")
    if "A" not in configs:
        say("note: A not in --configs, so no ratios to A")
    if min(args.reps, args.messages, args.messages_spam, args.connections, args.spamd_children) < 1:
        ap.error("--reps, --messages, --messages-spam, --connections, --spamd-children >= 1")
    if args.size < 600 and not args.unsigned:
        ap.error("--size must be >= 600 for a DKIM-signed message (or use --unsigned)")
    return rl.run_interruptible(lambda: run(args), "appliance and daemons stopped")


if __name__ == "__main__":
    sys.exit(main())
