"""The `mailappliance` admin command: check-config, status, ca init|issue|show, dkim
init|rotate|show, dns records, user, queue, config-help."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from appliance import config as config_mod
from appliance.audit import AuditLog
from appliance.auth.passwd import PasswdFile
from appliance.auth.passwd_admin import add_user, delete_user, set_password
from appliance.auth.passwd_format import PasswdFileError
from appliance.auth.schemes import STRONG_SCHEMES
from appliance.cli_status import cmd_status
from appliance.control.client import send_command
from appliance.dkim.keys import DKIMKeyStore, KeyInfo
from appliance.errors import ApplianceError, ConfigError
from appliance.names import is_user_address, parse_queue_id
from appliance.paths import Paths, dkim_domains
from appliance.queue.inspect import format_list, list_queue, show_message
from appliance.service import load_mail_parts, load_zones, tls_settings
from appliance.service.summary import dns_checks
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import make_tls_options


def audit(cfg: config_mod.Config, command: str, target: str) -> None:
    """An admin action into the audit log (who: the login that ran the command)."""
    try:
        actor = getpass.getuser()
    except (KeyError, OSError):
        actor = "unknown"
    try:
        AuditLog(Paths.of(cfg).audit_log).record(
            "admin", command=command, target=target, actor=actor
        )
    except OSError as e:
        print(f"mailappliance: warning: cannot write the audit log: {e}", file=sys.stderr)


def _ca(cfg: config_mod.Config) -> CertificateAuthority:
    return CertificateAuthority(Paths.of(cfg).ca_dir)


def cmd_check_config(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    problems: list[str] = []
    zones = load_zones(cfg, problems)
    load_mail_parts(cfg, problems)
    settings = tls_settings(cfg)
    if settings.ca is None:
        try:
            make_tls_options(settings.cert, settings.key, settings.chain, settings.min_version)
        except ApplianceError as e:
            problems.append(cfg.problem("tls", "cert", str(e)))
    if problems:
        raise ConfigError(problems)
    names = ", ".join(z.origin.decode() for z in zones) or "none"
    print(f"configuration OK ({cfg.path}; zones: {names})")
    return 0


def cmd_ca_init(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    cn = args.cn or f"{cfg.appliance.hostname} mailappliance CA"
    _ca(cfg).init(cn, key_type=args.key_type, days=args.days, progress=print)
    audit(cfg, "ca init", cn)
    return 0


def cmd_ca_issue(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    key_out = Path(args.key_out) if args.key_out else None
    cert_out = Path(args.cert_out) if args.cert_out else None
    key, cert = _ca(cfg).issue(
        args.cn,
        list(args.san or []),
        key_type=args.key_type,
        days=args.days,
        key_out=key_out,
        cert_out=cert_out,
        progress=print,
    )
    print(f"key:  {key}\ncert: {cert}")
    audit(cfg, "ca issue", args.cn)
    return 0


def cmd_ca_show(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    ca = _ca(cfg)
    if not ca.exists():
        raise ApplianceError(f"no CA in {ca.directory}: run 'mailappliance ca init' first")
    print(f"CA: {ca.certificate_path}")
    issued = ca.list()
    if not issued:
        print("no certificates issued yet")
    now = datetime.now(UTC)
    for c in issued:
        days = (c.not_after - now).days
        print(
            f"{c.status}  {c.serial:X}  {c.not_after:%Y-%m-%d}  ({days} days)  {c.subject}  {c.path}"
        )
    return 0


def _user_address(raw: str) -> str:
    address = raw.strip().lower()
    if not is_user_address(address):
        raise ApplianceError(f"expected an address like user@example.com, got {raw!r}")
    return address


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise ApplianceError("no password on standard input")
        return password
    password = getpass.getpass("Password: ")
    if not password:
        raise ApplianceError("empty password")
    if getpass.getpass("Password again: ") != password:
        raise ApplianceError("passwords do not match")
    return password


def _passwd_file(cfg: config_mod.Config) -> tuple[PasswdFile, list[str]]:
    """The file and its users; every problem in it is an error for the admin to fix."""
    passwd = PasswdFile(Paths.of(cfg).passwd_file)
    try:
        return passwd, passwd.read_users()
    except PasswdFileError as e:
        raise ApplianceError("\n".join(e.problems)) from None


def _user_edit(action: str, edit: Callable[[], None]) -> None:
    try:
        edit()
    except PasswdFileError as e:
        raise ApplianceError("\n".join(e.problems)) from None
    except ValueError as e:  # hash_password: e.g. a BLF-CRYPT password over 72 bytes
        raise ApplianceError(f"cannot {action}: {e}") from None


def _dkim(cfg: config_mod.Config, args: argparse.Namespace) -> tuple[DKIMKeyStore, list[str]]:
    domains = [args.domain] if getattr(args, "domain", None) else list(dkim_domains(cfg))
    return DKIMKeyStore(Paths.of(cfg).dkim_dir), domains


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _key_line(k: KeyInfo, now: float) -> str:
    if k.retire_at is not None and k.retire_at <= now:
        state = "retired"
    elif k.retire_at is not None:
        state = f"retiring {_when(k.retire_at)}"
    elif k.sign_from > now:
        state = f"published, signs from {_when(k.sign_from)}"
    else:
        state = "signing"
    return f"  {k.selector:<14} {k.algorithm:<15} created {_when(k.created)}  {state}"


def cmd_dkim_init(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    store, domains = _dkim(cfg, args)
    for domain in domains:
        print(f"{domain}: making an RSA 2048 and an Ed25519 key ...", flush=True)
        for k in store.init(domain, publish_delay=0):
            print(_key_line(k, time.time()))
        audit(cfg, "dkim init", domain)
    print("published by the appliance's DNS within 10 s if it is running (or at its start)")
    return 0


def cmd_dkim_rotate(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    store, domains = _dkim(cfg, args)
    delay = cfg.dkim.publish_delay if args.publish_delay is None else args.publish_delay
    grace = cfg.dkim.grace if args.grace is None else args.grace
    for domain in domains:
        print(f"{domain}: making new keys ...", flush=True)
        store.rotate(domain, publish_delay=delay, grace=grace)
        audit(cfg, "dkim rotate", domain)
        now = time.time()
        for k in store.keys(domain):
            print(_key_line(k, now))
    return 0


def cmd_dkim_show(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    store, domains = _dkim(cfg, args)
    now = time.time()
    for domain in domains:
        keys = store.keys(domain)
        if not keys:
            print(f"{domain}: no DKIM keys (run 'mailappliance dkim init')")
            continue
        print(f"{domain}:")
        for k in keys:
            print(_key_line(k, now))
        for owner, text in store.records(now).get(domain, []):
            print(f'  {owner}. IN TXT "{text}"')
    return 0


def cmd_dns_records(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    attention = 0
    for domain, checked in dns_checks(cfg):
        print(f"{domain}: the records it needs, checked against the zones we serve")
        for c in checked:
            label = {
                "ok": "ok",
                "missing": "MISSING",
                "differs": "DIFFERS",
                "not ours": "ELSEWHERE",
            }
            print(f"  {label[c.state]:<9} {c.needed.name} {c.needed.type}  ({c.needed.why})")
            if c.state == "ok":
                continue
            attention += 1
            if c.state == "differs":
                print(f"            serves:  {'; '.join(c.served)}")
            where = "in the zone that holds it" if c.state == "not ours" else "to our zone"
            print(f"            add {where}: {c.line}")
    if attention:
        print(f"{attention} record(s) need attention")
    return 1 if attention else 0


def cmd_user_add(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    address = _user_address(args.address)
    passwd, users = _passwd_file(cfg)
    if address in users:
        raise ApplianceError(f"{address} already exists in {passwd.path}")
    password = _read_password(args)
    _user_edit(
        "add the user",
        lambda: add_user(passwd, address, password, scheme=args.scheme, cram_md5=args.cram_md5),
    )
    print(f"added {address} to {passwd.path}")
    audit(cfg, "user add", address)
    return 0


def cmd_user_passwd(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    address = _user_address(args.address)
    passwd, users = _passwd_file(cfg)
    if address not in users:
        raise ApplianceError(f"no such user: {address} (in {passwd.path})")
    password = _read_password(args)
    _user_edit(
        "change the password",
        lambda: set_password(passwd, address, password, scheme=args.scheme, cram_md5=args.cram_md5),
    )
    print(f"changed the password of {address}")
    audit(cfg, "user passwd", address)
    return 0


def cmd_user_del(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    address = _user_address(args.address)
    passwd, users = _passwd_file(cfg)
    if address not in users:
        raise ApplianceError(f"no such user: {address} (in {passwd.path})")
    _user_edit("delete the user", lambda: delete_user(passwd, address))
    print(f"deleted {address}")
    audit(cfg, "user del", address)
    return 0


def cmd_user_list(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _, users = _passwd_file(cfg)
    for address in users:
        print(address)
    return 0


def _queue_id(raw: str, *, all_allowed: bool = True) -> str | None:
    """A queue id argument upper-cased, or None for ALL; a clear error for anything else."""
    try:
        queue_id = parse_queue_id(raw)
    except ValueError as e:
        raise ApplianceError(str(e)) from None
    if queue_id is None and not all_allowed:
        raise ApplianceError(f"expected a queue id of 10 hex digits like 3F1A2B4C5D, got {raw!r}")
    return queue_id


def cmd_queue_list(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    print(format_list(list_queue(Paths.of(cfg).queue_dir), time.time()))
    return 0


def cmd_queue_show(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    queue_id = _queue_id(args.queue_id, all_allowed=False)
    assert queue_id is not None
    try:
        print(show_message(Paths.of(cfg).queue_dir, queue_id))
    except KeyError:
        raise ApplianceError(f"no such message: {queue_id}") from None
    return 0


# what each control command did, for "flushed 3 message(s)"
_DONE = {"flush": "flushed", "delete": "deleted", "hold": "held", "release": "released"}


def cmd_queue_control(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """flush, delete, hold, release: asked of the running appliance over its control socket."""
    command: str = args.queue_command
    queue_id = _queue_id(args.queue_id) if args.queue_id is not None else None
    paths = Paths.of(cfg)
    reply = send_command(paths.control_socket, command, queue_id)
    if not reply["ok"]:
        raise ApplianceError(f"the appliance refused: {reply.get('error', 'no reason given')}")
    count = int(reply.get("count", 0))
    if count == 0 and queue_id is not None:
        raise ApplianceError(_nothing_done(paths.queue_dir, command, queue_id))
    print(f"{_DONE[command]} {count} message(s)")
    return 0


def _nothing_done(queue_dir: Path, command: str, queue_id: str) -> str:
    """Why a command about one message changed nothing: the files tell whether it exists."""
    summary = next((s for s in list_queue(queue_dir) if s.queue_id == queue_id), None)
    if summary is None:
        return f"no such message: {queue_id}"
    if command == "flush" and summary.held:
        return f"{queue_id} is on hold: release it first"
    return f"nothing to {command} for {queue_id} (see 'mailappliance queue show {queue_id}')"


def cmd_config_help(cfg: config_mod.Config | None, args: argparse.Namespace) -> int:
    print(config_mod.describe_schema())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailappliance",
        description="Administer a mailappliance: check its configuration, run its CA, "
        "manage DKIM keys and users, look at and act on the mail queue.",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="the appliance's INI file")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser(
        "check-config",
        help="validate the INI file, zones and certificates",
        description="Exit 0 and print 'configuration OK', or list every problem and exit 2.",
    )
    c.set_defaults(func=cmd_check_config)

    h = sub.add_parser(
        "config-help",
        help="list every section and key with defaults",
        description="Print the configuration schema.",
    )
    h.set_defaults(func=cmd_config_help, no_config=True)

    ca = sub.add_parser(
        "ca",
        help="the appliance's own certificate authority",
        description="Create a CA, issue server certificates, list them.",
    )
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND")
    ca_sub.required = True
    init = ca_sub.add_parser(
        "init",
        help="create the CA (key 0600, self-signed certificate)",
        description="Create the CA in [tls] ca_dir (default <state_dir>/ca).",
    )
    init.add_argument("--cn", help="CA common name (default '<hostname> mailappliance CA')")
    init.add_argument("--key-type", default="ec-p256", choices=["ec-p256", "rsa-3072", "rsa-4096"])
    init.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    init.set_defaults(func=cmd_ca_init)
    issue = ca_sub.add_parser(
        "issue",
        help="issue a server certificate",
        description="Issue a key and certificate signed by the CA.",
    )
    issue.add_argument("--cn", required=True, help="common name, e.g. mail.163.com")
    issue.add_argument("--san", nargs="+", metavar="NAME", help="extra subject alternative names")
    issue.add_argument("--key-type", default="ec-p256", choices=["ec-p256", "rsa-3072", "rsa-4096"])
    issue.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    issue.add_argument("--key-out", metavar="FILE", help="where to write the key (0600)")
    issue.add_argument("--cert-out", metavar="FILE", help="where to write the certificate")
    issue.set_defaults(func=cmd_ca_issue)
    show = ca_sub.add_parser(
        "show",
        help="list issued certificates with expiry dates",
        description="List what the CA issued (index.txt).",
    )
    show.set_defaults(func=cmd_ca_show)

    dk = sub.add_parser(
        "dkim",
        help="DKIM keys: make, rotate, show",
        description="The DKIM keys of [dkim] domains (default: the hostname's domain), kept "
        "under <state_dir>/dkim (0600). The appliance publishes their TXT records in its "
        "own zones and signs its users' mail with them.",
    )
    dk_sub = dk.add_subparsers(dest="dkim_command", metavar="DKIM_COMMAND")
    dk_sub.required = True
    dk_init = dk_sub.add_parser(
        "init",
        help="make the first keys (RSA 2048 and Ed25519), used at once",
        description="Make one rsa-sha256 (2048-bit) and one ed25519-sha256 key per domain.",
    )
    dk_init.add_argument("--domain", help="only this domain")
    dk_init.set_defaults(func=cmd_dkim_init)
    dk_rot = dk_sub.add_parser(
        "rotate",
        help="new keys, published before they sign; the old ones kept for a grace period",
        description="Make new keys; they sign after --publish-delay ([dkim] publish_delay), "
        "and the keys they replace stay published for --grace ([dkim] grace).",
    )
    dk_rot.add_argument("--domain", help="only this domain")
    dk_rot.add_argument(
        "--publish-delay", type=config_mod.parse_duration, help="e.g. 1h (default [dkim])"
    )
    dk_rot.add_argument("--grace", type=config_mod.parse_duration, help="e.g. 7d (default [dkim])")
    dk_rot.set_defaults(func=cmd_dkim_rotate)
    dk_show = dk_sub.add_parser(
        "show",
        help="list the keys and the TXT records to publish",
        description="Each key with its state, then the DNS records (zone file syntax).",
    )
    dk_show.add_argument("--domain", help="only this domain")
    dk_show.set_defaults(func=cmd_dkim_show)

    dns_p = sub.add_parser(
        "dns",
        help="what the mail domains need in DNS",
        description="Check the DNS records the mail domains need against our zones.",
    )
    dns_sub = dns_p.add_subparsers(dest="dns_command", metavar="DNS_COMMAND")
    dns_sub.required = True
    records = dns_sub.add_parser(
        "records",
        help="list MX, A, PTR, SPF, DKIM, DMARC, SRV and autoconfig records, marking what is missing",
        description="For each [dkim] domain: every record it needs, whether our zones serve "
        "it (ok, MISSING, DIFFERS, or ELSEWHERE for names in zones we do not serve), and the "
        "zone-file line to add. Exit 1 if anything needs attention.",
    )
    records.set_defaults(func=cmd_dns_records)

    user = sub.add_parser(
        "user",
        help="add, change, delete and list passwd-file users",
        description="Edit the passwd file ([auth] passwd_file, default <state_dir>/passwd). "
        "Passwords are read from the terminal (twice) or with --password-stdin.",
    )
    user_sub = user.add_subparsers(dest="user_command", metavar="USER_COMMAND")
    user_sub.required = True

    def password_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("address", metavar="ADDRESS", help="user@domain (stored lower-case)")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password as one line from standard input instead of prompting",
        )
        p.add_argument(
            "--scheme",
            default="BLF-CRYPT",
            type=str.upper,
            choices=STRONG_SCHEMES,
            help="password hash scheme (default BLF-CRYPT)",
        )

    add = user_sub.add_parser(
        "add",
        help="add a user",
        description="Add ADDRESS with a new password; fails if the user exists.",
    )
    password_options(add)
    add.add_argument(
        "--cram-md5",
        action="store_true",
        help="also store a CRAM-MD5 secret (cleartext-equivalent) so CRAM-MD5 login works",
    )
    add.set_defaults(func=cmd_user_add)
    pw = user_sub.add_parser(
        "passwd",
        help="change a user's password",
        description="Set a new password for ADDRESS, keeping its other fields. A CRAM-MD5 "
        "secret is renewed if the user had one, unless --no-cram-md5 is given.",
    )
    password_options(pw)
    cram = pw.add_mutually_exclusive_group()
    cram.add_argument(
        "--cram-md5",
        dest="cram_md5",
        action="store_const",
        const=True,
        default=None,
        help="store a CRAM-MD5 secret too",
    )
    cram.add_argument(
        "--no-cram-md5",
        dest="cram_md5",
        action="store_const",
        const=False,
        help="remove the user's CRAM-MD5 secret",
    )
    pw.set_defaults(func=cmd_user_passwd)
    delete = user_sub.add_parser(
        "del",
        help="delete a user",
        description="Remove ADDRESS from the passwd file (its mail stays on disk).",
    )
    delete.add_argument("address", metavar="ADDRESS", help="user@domain")
    delete.set_defaults(func=cmd_user_del)
    listing = user_sub.add_parser(
        "list",
        help="list users",
        description="Print every user's address, one per line.",
    )
    listing.set_defaults(func=cmd_user_list)

    st = sub.add_parser(
        "status",
        help="the appliance at a glance; exits 1 when something needs attention",
        description="Whether the appliance runs and what it listens on (over its control "
        "socket), the queue (deferred messages with their reasons, the oldest one's age), the "
        "certificate's names and expiry, the DNS records each mail domain needs, and each "
        "mailbox's size. Exit status 0: all well; 1: something needs attention (not running, "
        "a deferred message older than a day, a certificate that should have been renewed, a "
        "DNS record missing); 2: the configuration is wrong. For cron or monitoring.",
    )
    st.set_defaults(func=cmd_status)
    queue = sub.add_parser(
        "queue",
        help="list, show, flush, delete, hold and release queued messages",
        description="Look at the mail queue (<state_dir>/queue; list and show read its files "
        "and work with the appliance stopped) or act on it (flush, delete, hold, release ask "
        "the running appliance over its control socket, <state_dir>/control.sock).",
    )
    queue_sub = queue.add_subparsers(dest="queue_command", metavar="QUEUE_COMMAND")
    queue_sub.required = True
    q_list = queue_sub.add_parser(
        "list",
        help="list queued messages, like postqueue -p",
        description="Print every queued message, oldest first: id ('!' when on hold), size, "
        "arrival, sender, the last delivery error, the recipients not yet done and when the "
        "next attempt is due.",
    )
    q_list.set_defaults(func=cmd_queue_list)
    q_show = queue_sub.add_parser(
        "show",
        help="show one message's envelope, recipient states and headers",
        description="Print the envelope of message ID (sender, client, DSN parameters), each "
        "recipient's delivery state (status, relay, reply, when) and the message's header "
        "section.",
    )
    q_show.add_argument("queue_id", metavar="ID", help="queue id, 10 hex digits")
    q_show.set_defaults(func=cmd_queue_show)
    q_flush = queue_sub.add_parser(
        "flush",
        help="try deferred messages now",
        description="Ask the running appliance to try message ID, or every deferred message, "
        "now (postqueue -f / -i). Messages on hold stay on hold.",
    )
    q_flush.add_argument(
        "queue_id", metavar="ID", nargs="?", help="queue id, or ALL (the default: every message)"
    )
    q_flush.set_defaults(func=cmd_queue_control)
    for name, help_text, description in (
        (
            "delete",
            "delete messages without a bounce",
            "Ask the running appliance to remove message ID, or ALL messages, for good; "
            "no bounce is sent (postsuper -d).",
        ),
        (
            "hold",
            "put messages on hold",
            "Ask the running appliance to stop trying message ID, or ALL messages, until "
            "they are released (postsuper -h).",
        ),
        (
            "release",
            "release held messages",
            "Ask the running appliance to try held message ID, or ALL held messages, again "
            "at once (postsuper -H).",
        ),
    ):
        q_cmd = queue_sub.add_parser(name, help=help_text, description=description)
        q_cmd.add_argument("queue_id", metavar="ID", help="queue id (10 hex digits) or ALL")
        q_cmd.set_defaults(func=cmd_queue_control)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = None
    if not getattr(args, "no_config", False):
        if not args.config:
            parser.error("--config FILE is required for this command")
        try:
            cfg = config_mod.load(args.config)
        except ConfigError as e:
            for problem in e.problems:
                print(problem, file=sys.stderr)
            return 2
    try:
        return args.func(cfg, args)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    except ApplianceError as e:
        print(f"mailappliance: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
