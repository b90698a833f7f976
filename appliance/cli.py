"""The `mailappliance` admin command: check-config, ca init|issue|show, config-help."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from appliance import config as config_mod
from appliance.errors import ApplianceError, ConfigError
from appliance.service import load_zones, tls_settings
from appliance.tls.ca import CertificateAuthority


def _ca(cfg: config_mod.Config) -> CertificateAuthority:
    return CertificateAuthority(cfg.tls.ca_dir or cfg.appliance.state_dir / "ca")


def cmd_check_config(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    problems: list[str] = []
    zones = load_zones(cfg, problems)
    settings = tls_settings(cfg)
    if settings.ca is None:
        from appliance.tls.context import make_tls_options

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


def cmd_config_help(cfg: config_mod.Config | None, args: argparse.Namespace) -> int:
    print(config_mod.describe_schema())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailappliance",
        description="Administer a mailappliance: check its configuration, run its CA.",
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
