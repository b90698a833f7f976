"""INI configuration: a declarative schema, validated all at once into a frozen Config.

Every key of every section is listed in SCHEMA with its converter, default and help text.
`load()` reads the file, converts every value, and collects every problem (unknown section or
key, bad value, missing required key, missing file) as one line naming the file, section and key,
then raises a single ConfigError. Paths are relative to the INI file's folder.
"""

from __future__ import annotations

import configparser
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config_values import (
    NONE,
    REQUIRED,
    HostPort,
    Key,
    Network,
    _Ctx,
    address,
    address_list,
    addresses,
    boolean,
    choice,
    daemon_address,
    duration,
    duration_at_least,
    duration_at_most,
    durations,
    existing_file,
    existing_files,
    group,
    hostname,
    hostnames,
    integer,
    ip_address,
    is_hostname,
    ldap_urls,
    mechanisms,
    networks,
    next_hop,
    parse_duration,
    path,
    score,
    size,
    text,
    user,
)
from appliance.errors import ConfigError

# what other modules take from here (the values and converters themselves live in
# appliance.config_values)
__all__ = [
    "Config",
    "HostPort",
    "Network",
    "PATTERN_SCHEMA",
    "SCHEMA",
    "Section",
    "ZoneConfig",
    "describe_schema",
    "is_hostname",
    "load",
    "parse_duration",
    "size",
]

# --------------------------------------------------------------------------- schema


def _default_state_dir(ctx: _Ctx) -> Path:
    return (ctx.base / ".." / "var" / ctx.path.stem).resolve()


SCHEMA: dict[str, dict[str, Key]] = {
    "appliance": {
        "hostname": Key(hostname, REQUIRED, "this host's name, e.g. mail.163.com"),
        "state_dir": Key(path, _default_state_dir, "where the appliance writes everything"),
        "user": Key(user, NONE, "drop root privileges to this user after binding ports"),
        "group": Key(group, NONE, "drop to this group (default: the user's group)"),
    },
    "dns": {
        "enabled": Key(boolean, "yes", "serve DNS"),
        "listen": Key(addresses(53), NONE, "addresses for UDP and TCP, e.g. 127.0.1.1:53"),
        "forwarders": Key(
            addresses(53), "", "servers asked for names we are not authoritative for"
        ),
        "forward_recursion": Key(
            boolean,
            "no",
            "set RD on forwarded queries; leave 'no' when forwarders are peer appliances "
            "that forward back to us (prevents forwarding loops)",
        ),
        "forward_timeout": Key(duration, "2s", "give up on one forwarder after this long"),
        "recursion_networks": Key(
            networks, "127.0.0.0/8 ::1", "clients allowed to use forwarding and the cache"
        ),
        "cache_size": Key(integer(0, 10_000_000), "10000", "forwarded answers kept in memory"),
        "servfail_ttl": Key(
            duration_at_most(300, "RFC 2308 7.1"),
            "1s",
            "a question no forwarder could answer fails at once for this long, without asking "
            "again (BIND's servfail-ttl; 0: ask every time)",
        ),
        "edns_udp_size": Key(integer(512, 4096), "1232", "largest UDP answer we send with EDNS"),
        "tcp_idle_timeout": Key(duration, "10s", "close idle DNS TCP connections"),
        "max_tcp_connections": Key(integer(1, 100_000), "200", "concurrent DNS TCP connections"),
        "max_tcp_connections_per_ip": Key(
            integer(1, 100_000), "20", "concurrent DNS TCP connections per client (IPv6: per /64)"
        ),
        "tcp_stress_idle_timeout": Key(
            duration, "2s", "idle timeout while 80% of the DNS TCP connections are in use"
        ),
        "spf": Key(
            text,
            "v=spf1 mx -all",
            "SPF record published at the apex of each mail domain we serve (a zone with an "
            "MX record), unless the zone file has one; empty: none",
        ),
        "dmarc": Key(
            text,
            "v=DMARC1; p=none",
            "DMARC record published at _dmarc.<domain> of each mail domain we serve, unless "
            "the zone file has one; empty: none",
        ),
    },
    "smtp": {
        "listen": Key(addresses(25), "", "MTA port (25): STARTTLS offered, AUTH after TLS"),
        "smtps_listen": Key(addresses(465), "", "implicit-TLS submission port (465)"),
        "submission_listen": Key(addresses(587), "", "submission port (587): AUTH required"),
        "banner": Key(
            text, "", "greeting text after 220 (default '<hostname> ESMTP mailappliance')"
        ),
        "local_domains": Key(
            hostnames, "", "domains we accept mail for (besides local_host_names)"
        ),
        "local_host_names": Key(existing_file, NONE, "sendmail local-host-names file"),
        "access": Key(existing_file, NONE, "sendmail access file (OK, RELAY, REJECT, ...)"),
        "virtusertable": Key(existing_file, NONE, "sendmail virtusertable"),
        "aliases": Key(existing_file, NONE, "aliases(5) file"),
        "max_message_size": Key(size, "25M", "largest message accepted (SIZE)"),
        "max_recipients": Key(integer(1, 100_000), "100", "recipients per message (452 4.5.3)"),
        "max_command_line": Key(integer(512, 65536), "2048", "longest command line, CRLF included"),
        "max_text_line": Key(
            integer(1000, 1_000_000), "1000", "longest message line, CRLF included"
        ),
        "idle_timeout": Key(duration, "5m", "close a client silent this long (421 4.4.2)"),
        "command_timeout": Key(
            duration, "5m", "deadline for a whole command line, however it trickles in"
        ),
        "greeting_timeout": Key(duration, "2m", "deadline from connect to a successful EHLO/HELO"),
        "data_timeout": Key(duration, "5m", "DATA deadline at its start and its cap"),
        "min_data_rate": Key(
            integer(1, 1_000_000_000),
            "500",
            "bytes/s a DATA sender must keep: each byte adds 1/rate s to the DATA deadline",
        ),
        "stress_threshold": Key(
            integer(1, 100), "80", "percent of max_connections in use that means stress"
        ),
        "stress_timeout": Key(
            duration, "10s", "every deadline under stress (idle unauthenticated sessions first)"
        ),
        "max_connections": Key(
            integer(1, 100_000), "500", "concurrent SMTP connections, all ports together"
        ),
        "max_connections_per_ip": Key(
            integer(1, 100_000), "50", "concurrent connections per client (IPv6: per /64)"
        ),
        "max_errors": Key(integer(1, 1000), "20", "bad commands before 421 and close"),
        "min_free_space": Key(size, "64M", "refuse mail (452 4.3.1) when the disk has less free"),
    },
    "auth": {
        "backend": Key(
            choice("passwd", "ldap", "none"), "passwd", "where users and passwords live"
        ),
        "passwd_file": Key(path, NONE, "Dovecot passwd-file (default <state_dir>/passwd)"),
        "mechanisms": Key(
            mechanisms, "PLAIN LOGIN CRAM-MD5", "SASL mechanisms offered (CRAM-MD5 only if stored)"
        ),
        "plaintext_networks": Key(
            networks, "", "clients allowed PLAIN/LOGIN without TLS (the lab lists loopback)"
        ),
        "failure_delay": Key(
            duration, "1s", "first delay after a failed login, doubling per failure"
        ),
        "max_failures": Key(
            integer(1, 10_000), "10", "failed logins per client (IPv6: per /64) before a block"
        ),
        "max_user_failures": Key(
            integer(1, 1_000_000),
            "50",
            "failed logins as one user, from any clients, before a block",
        ),
        "failure_window": Key(
            duration, "15m", "how long a failed login counts (and so a block lasts)"
        ),
        "ldap_urls": Key(ldap_urls, "", "ldap:// or ldaps:// servers (failover in order)"),
        "ldap_base_dn": Key(text, "", "where users are searched"),
        "ldap_filter": Key(text, "(mail=%s)", "search filter; %s is the escaped login name"),
        "ldap_bind_dn": Key(text, "", "service account DN (empty: anonymous search)"),
        "ldap_bind_password_file": Key(existing_file, NONE, "file holding the service password"),
        "ldap_starttls": Key(boolean, "no", "StartTLS on ldap:// URLs"),
        "ldap_ca_file": Key(existing_file, NONE, "CA certificate that signed the LDAP server's"),
        "ldap_pool_size": Key(integer(1, 64), "4", "LDAP connections (and threads)"),
        "ldap_timeout": Key(duration, "5s", "LDAP connect/response timeout"),
    },
    "queue": {
        "fsync_threads": Key(integer(1, 256), "16", "threads that fsync messages in parallel"),
        "retry_interval": Key(duration, "60s", "how often failed local deliveries are retried"),
        "retry_schedule": Key(
            durations,
            "1m 5m 15m 30m 1h",
            "waits between relay attempts of a deferred message; the last one repeats",
        ),
        "max_queue_lifetime": Key(
            duration, "5d", "bounce a message still undelivered this long after arrival"
        ),
        "delay_warning": Key(
            duration, "0", "send a delay notice (DSN) once a message waits this long; 0: never"
        ),
        "postmaster": Key(
            address, NONE, "who gets bounces that cannot be delivered (default postmaster@domain)"
        ),
        "max_active": Key(integer(1, 100_000), "1000", "deferred messages being relayed at once"),
    },
    "relay": {
        "port": Key(integer(1, 65535), "25", "port of the next hops found by MX lookup"),
        "source_address": Key(ip_address, NONE, "local address outgoing connections come from"),
        "helo_name": Key(hostname, NONE, "name given in EHLO (default [appliance] hostname)"),
        "smarthost": Key(next_hop, NONE, "send all remote mail through host:port (no MX lookup)"),
        "smarthost_user": Key(text, "", "AUTH PLAIN/LOGIN user for the smarthost"),
        "smarthost_password_file": Key(
            existing_file, NONE, "file holding the smarthost password (mode 0600)"
        ),
        "transport_map": Key(
            existing_file,
            NONE,
            "per-domain routes: 'domain host:port', '.domain [host]:port', 'domain smarthost'",
        ),
        "tls": Key(
            choice("none", "may", "encrypt", "verify"),
            "may",
            "STARTTLS to next hops: may (if offered), encrypt (required), verify (and the "
            "certificate must match the host name)",
        ),
        "ca_file": Key(
            path,
            NONE,
            "CA certificates (PEM) for tls = verify, read at each connection, so it may be "
            "another appliance's ca.crt that appears later (default: the system's CAs)",
        ),
        "connect_timeout": Key(duration, "30s", "give up connecting to one host after this"),
        "command_timeout": Key(duration, "5m", "wait this long for each reply"),
        "data_timeout": Key(duration, "10m", "wait this long for the reply after the data"),
        "max_connections": Key(integer(1, 10_000), "100", "outgoing connections in total"),
        "max_connections_per_destination": Key(
            integer(1, 1000), "20", "outgoing connections to one destination (domain or host)"
        ),
        "max_messages_per_connection": Key(
            integer(1, 100_000), "1000", "messages sent over one connection before QUIT"
        ),
        "connection_cache_time": Key(
            duration, "2s", "keep an idle connection this long for the next message"
        ),
        "max_hops": Key(
            integer(1, 1000), "30", "bounce a message with more Received headers (a loop)"
        ),
        "cut_through_wait": Key(
            duration_at_most(60, "the client waits for its 250 meanwhile"),
            "5s",
            "relay a message for one remote recipient while its sender waits, before it is "
            "ever spooled, if a connection takes it within this long; the 250 then follows "
            "the next hop's; otherwise it is spooled as usual (0: always spool first)",
        ),
    },
    "pop3": {
        "listen": Key(addresses(110), "", "POP3 with STLS, e.g. 127.0.1.1:110"),
        "pop3s_listen": Key(addresses(995), "", "POP3 over implicit TLS, e.g. 127.0.1.1:995"),
        "max_command_line": Key(integer(255, 8192), "512", "longest command line, CRLF included"),
        "idle_timeout": Key(duration, "10m", "close a client silent this long (RFC 1939: 10m+)"),
        "command_timeout": Key(duration, "10m", "deadline for a whole command line"),
        "login_timeout": Key(duration, "2m", "deadline from connect to a successful login"),
        "stress_threshold": Key(
            integer(1, 100), "80", "percent of max_connections in use that means stress"
        ),
        "stress_timeout": Key(duration, "10s", "every deadline under stress"),
        "max_connections": Key(
            integer(1, 100_000), "500", "concurrent POP3 connections, both ports together"
        ),
        "max_connections_per_ip": Key(
            integer(1, 100_000), "50", "concurrent connections per client (IPv6: per /64)"
        ),
        "max_errors": Key(integer(1, 1000), "20", "bad commands before the connection closes"),
        "lock_stale_after": Key(
            duration, "5m", "a mailbox's session lock not refreshed this long is stale"
        ),
        "quick_store_calls": Key(
            boolean, "yes", "small messages read ahead of RETR on the reactor while that is fast"
        ),
    },
    "imap": {
        "listen": Key(addresses(143), "", "IMAP with STARTTLS, e.g. 127.0.1.1:143"),
        "imaps_listen": Key(addresses(993), "", "IMAP over implicit TLS, e.g. 127.0.1.1:993"),
        "max_command_line": Key(
            integer(1024, 1_048_576), "65536", "longest command line (literals apart)"
        ),
        "max_literal": Key(size, "50M", "largest literal (an APPENDed message)"),
        "idle_timeout": Key(
            duration_at_least(1800, "RFC 3501 5.4"), "30m", "close a client silent this long"
        ),
        "command_timeout": Key(duration, "30m", "deadline for a whole command"),
        "login_timeout": Key(duration, "2m", "deadline from connect to a successful login"),
        "stress_threshold": Key(
            integer(1, 100), "80", "percent of max_connections in use that means stress"
        ),
        "stress_timeout": Key(duration, "10s", "every deadline under stress"),
        "max_connections": Key(
            integer(1, 100_000), "1000", "concurrent IMAP connections, both ports together"
        ),
        "max_connections_per_ip": Key(
            integer(1, 100_000), "50", "concurrent connections per client (IPv6: per /64)"
        ),
        "max_errors": Key(integer(1, 1000), "20", "bad commands before the connection closes"),
        "idle_poll": Key(
            duration, "5s", "while a client IDLEs, look for changes by other processes this often"
        ),
        "quick_store_calls": Key(
            boolean,
            "yes",
            "folder looks, flag renames and small reads on the reactor while they stay fast",
        ),
    },
    "limits": {
        "max_connect_rate": Key(
            integer(0, 1_000_000), "0", "SMTP connections a minute from one client (0: no limit)"
        ),
        "max_messages_per_user_hour": Key(
            integer(0, 1_000_000), "0", "messages one logged-in user may send an hour (0: no limit)"
        ),
        "max_recipients_per_user_hour": Key(
            integer(0, 1_000_000),
            "0",
            "recipients one logged-in user may send to an hour (0: no limit)",
        ),
        "greylist": Key(boolean, "no", "greylist mail from clients not logged in (RFC 6647)"),
        "greylist_delay": Key(duration, "5m", "a new triplet passes when retried after this"),
        "greylist_window": Key(duration, "4h", "... and before this (then it starts again)"),
        "greylist_whitelist_after": Key(
            integer(1, 1000), "5", "a client network that passed this often is let through"
        ),
        "greylist_whitelist_time": Key(duration, "36d", "... for this long"),
    },
    "spf": {
        "check": Key(boolean, "yes", "check SPF (RFC 7208) of mail from clients not logged in"),
        "on_fail": Key(
            choice("accept", "reject"), "accept", "SPF fail: tag only, or refuse (550 5.7.23)"
        ),
        "on_softfail": Key(
            choice("accept", "reject"), "accept", "SPF softfail: tag only, or refuse (550 5.7.23)"
        ),
        "on_permerror": Key(
            choice("accept", "reject"),
            "accept",
            "a broken SPF record: accept, or refuse (550 5.7.24)",
        ),
        "on_temperror": Key(
            choice("accept", "tempfail"),
            "accept",
            "SPF could not be checked (DNS failure): accept, or refuse for now (451 4.7.24)",
        ),
    },
    "dkim": {
        "domains": Key(
            hostnames,
            "",
            "domains we sign for and publish keys of (default: the domain of [appliance] "
            "hostname, e.g. 163.com for mail.163.com)",
        ),
        "sign": Key(boolean, "yes", "sign mail our logged-in users send (when keys exist)"),
        "verify": Key(boolean, "yes", "verify DKIM signatures of mail from other hosts"),
        "verify_max_size": Key(size, "25M", "larger messages are not verified (dkim=neutral)"),
        "publish_delay": Key(
            duration, "1h", "a rotated key is published this long before it signs"
        ),
        "grace": Key(
            duration, "7d", "a replaced key stays published this long (mail signed with it)"
        ),
    },
    "dnsbl": {
        "zones": Key(hostnames, "", "DNS block lists asked at connect, e.g. zen.spamhaus.org"),
        "allow_zones": Key(
            hostnames, "", "DNS allow lists (DNSWL): a client listed here is never blocked"
        ),
        "action": Key(
            choice("reject", "tag"),
            "reject",
            "a listed client: refuse at the greeting (554 5.7.1), or tag its mail (X-DNSBL)",
        ),
    },
    "dmarc": {
        "check": Key(boolean, "yes", "evaluate DMARC (RFC 7489) of mail from other hosts"),
        "enforce": Key(
            boolean,
            "yes",
            "apply the sender domain's p=reject (550 5.7.1) and p=quarantine; no: only report",
        ),
    },
    "clamav": {
        "address": Key(
            daemon_address, NONE, "clamd to scan every message with (host:port or unix:path)"
        ),
        "timeout": Key(duration, "30s", "give up on clamd after this"),
        "on_failure": Key(
            choice("tempfail", "accept"),
            "tempfail",
            "clamd down or slow: refuse for now (451 4.7.1), or accept unscanned",
        ),
        "max_size": Key(size, "25M", "messages larger than this are not scanned (and logged)"),
        "scan_authenticated": Key(boolean, "yes", "also scan mail from logged-in users"),
    },
    "spamassassin": {
        "address": Key(
            daemon_address, NONE, "spamd to score messages with (host:port or unix:path)"
        ),
        "timeout": Key(duration, "30s", "give up on spamd after this"),
        "on_failure": Key(
            choice("tempfail", "accept"),
            "tempfail",
            "spamd down or slow: refuse for now (451 4.7.1), or accept unscored",
        ),
        "max_size": Key(size, "512K", "messages larger than this are not scored (as spamc)"),
        "scan_authenticated": Key(boolean, "no", "also score mail from logged-in users"),
        "reject_score": Key(
            score, "0", "refuse mail scoring this or more (550 5.7.1); 0: never, only tag it"
        ),
        "user": Key(text, "", "whose SpamAssassin preferences spamd applies (User: header)"),
    },
    "web": {
        "listen": Key(
            addresses(8443),
            "",
            "HTTPS (our certificate): metrics and client autoconfiguration, e.g. 127.0.1.1:8443",
        ),
        "autoconfig_listen": Key(
            addresses(80),
            "",
            "plain HTTP for client autoconfiguration only (Thunderbird's http:// lookups)",
        ),
        "metrics_token_file": Key(
            path, NONE, "a file holding the bearer token /metrics requires (default: none)"
        ),
        "admins": Key(
            address_list,
            "",
            "users of the directory who may log in to the status page (none: no status page)",
        ),
        "session_timeout": Key(
            duration_at_least(60, "a shorter session logs admins out while they read"),
            "30m",
            "an admin's session ends after this long without a request",
        ),
    },
    "log": {
        "maillog": Key(path, NONE, "Postfix-style mail log (default <state_dir>/maillog)"),
        "audit": Key(
            path,
            NONE,
            "JSON-lines audit log: logins, blocks, rejections, filter verdicts, admin actions "
            "(default <state_dir>/audit.log)",
        ),
    },
    "tls": {
        "cert": Key(path, NONE, "externally issued certificate (PEM); default: issued by our CA"),
        "key": Key(path, NONE, "private key for 'cert'"),
        "chain": Key(existing_files, "", "intermediate certificates sent after 'cert'"),
        "ca_dir": Key(path, NONE, "our CA (default: <state_dir>/ca)"),
        "names": Key(hostnames, "", "extra names the certificate covers (smtp.163.com ...)"),
        "key_type": Key(choice("ec-p256", "rsa-3072", "rsa-4096"), "ec-p256", "key algorithm"),
        "validity": Key(duration, "397d", "lifetime of certificates we issue"),
        "renew_before": Key(duration, "30d", "re-issue when a certificate expires within this"),
        "min_version": Key(choice("1.2", "1.3"), "1.2", "lowest TLS version accepted"),
    },
}

# Sections named "<prefix>:<name>", any number of them.
PATTERN_SCHEMA: dict[str, dict[str, Key]] = {
    "zone": {
        "file": Key(existing_file, REQUIRED, "BIND master file for this zone"),
        "allow_transfer": Key(networks, "", "clients allowed to AXFR this zone (TCP only)"),
    },
}


class Section(Mapping[str, Any]):
    """A read-only section: values by attribute or by key."""

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self._name = name
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"[{self._name}] has no key {key!r}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {self._values!r})"


@dataclass(frozen=True)
class ZoneConfig:
    origin: str
    file: Path
    allow_transfer: tuple[Network, ...]


@dataclass(frozen=True)
class Config:
    path: Path
    sections: dict[str, Section]
    zones: tuple[ZoneConfig, ...] = field(default=())

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def label(self) -> str:
        return self.path.name

    def problem(self, section: str, key: str, message: str) -> str:
        """Format one problem line the way every config error is shown."""
        return f"{self.label}: [{section}] {key}: {message}"


def _convert_section(
    label: str,
    section: str,
    schema: dict[str, Key],
    raw: Mapping[str, str],
    ctx: _Ctx,
    problems: list[str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in raw:
        if key not in schema:
            known = ", ".join(sorted(schema))
            problems.append(f"{label}: [{section}] {key}: unknown key (known keys: {known})")
    for key, spec in schema.items():
        try:
            if key in raw:
                values[key] = spec.convert(raw[key], ctx)
            elif spec.default is REQUIRED:
                problems.append(f"{label}: [{section}] {key}: required key is missing")
            elif spec.default is NONE:
                values[key] = None
            elif callable(spec.default):
                values[key] = spec.default(ctx)
            else:
                values[key] = spec.convert(spec.default, ctx)
        except ValueError as e:
            problems.append(f"{label}: [{section}] {key}: {e}")
    return values


def load(config_path: str | Path) -> Config:
    """Read and validate the INI file; raise ConfigError listing every problem."""
    path = Path(config_path).expanduser().resolve()
    label = path.name
    if not path.is_file():
        raise ConfigError([f"{config_path}: no such configuration file"])
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, inline_comment_prefixes=("#", ";"), default_section="\0"
    )
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except configparser.Error as e:
        # configparser's messages carry the file and line already; keep them on one line
        raise ConfigError([f"{label}: " + " ".join(str(e).split())]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{label}: cannot read: {e}"]) from None

    ctx = _Ctx(path)
    problems: list[str] = []
    sections: dict[str, Section] = {}
    zones: list[ZoneConfig] = []
    for name in parser.sections():
        raw = dict(parser.items(name))
        prefix, sep, arg = name.partition(":")
        if name in SCHEMA:
            continue
        if sep and prefix in PATTERN_SCHEMA:
            values = _convert_section(label, name, PATTERN_SCHEMA[prefix], raw, ctx, problems)
            if prefix == "zone":
                origin = arg.strip().rstrip(".").lower()
                if not is_hostname(origin):
                    problems.append(f"{label}: [{name}]: expected a zone name like 163.com")
                elif "file" in values:
                    zones.append(ZoneConfig(origin, values["file"], values["allow_transfer"]))
            continue
        known = ", ".join([*SCHEMA, *(p + ":NAME" for p in PATTERN_SCHEMA)])
        problems.append(f"{label}: [{name}]: unknown section (known sections: {known})")
    for name, schema in SCHEMA.items():
        raw = dict(parser.items(name)) if parser.has_section(name) else {}
        sections[name] = Section(name, _convert_section(label, name, schema, raw, ctx, problems))
    if parser.has_section("appliance") is False:
        problems.insert(0, f"{label}: [appliance]: required section is missing")
    _cross_checks(label, sections, set(parser.sections()), zones, problems)
    if problems:
        raise ConfigError(problems)
    return Config(path=path, sections=sections, zones=tuple(zones))


def _cross_checks(
    label: str,
    sections: dict[str, Section],
    present: set[str],
    zones: list[ZoneConfig],
    problems: list[str],
) -> None:
    tls = sections["tls"]
    if (tls.get("cert") is None) != (tls.get("key") is None):
        missing = "key" if tls.get("key") is None else "cert"
        problems.append(f"{label}: [tls] {missing}: required when the other of cert/key is set")
    for k in ("cert", "key"):
        p = tls.get(k)
        if p is not None and not p.is_file():
            problems.append(f"{label}: [tls] {k}: no such file: {p}")
    token = sections["web"].get("metrics_token_file")
    if token is not None and not token.is_file():
        problems.append(f"{label}: [web] metrics_token_file: no such file: {token}")
    elif token is not None and not token.read_text("utf-8", "replace").strip():
        problems.append(f"{label}: [web] metrics_token_file: the file is empty: {token}")
    web = sections["web"]
    if web.get("admins") and not web.get("listen"):
        problems.append(f"{label}: [web] admins: the status page needs [web] listen (HTTPS)")
    if web.get("admins") and sections["auth"].get("backend") == "none":
        problems.append(f"{label}: [web] admins: no user can log in with [auth] backend = none")
    dns = sections["dns"]
    # a listen value that failed to convert is absent here and already reported
    if "dns" in present and dns.get("enabled") and "listen" in dns and dns["listen"] is None:
        problems.append(f"{label}: [dns] listen: required when DNS is enabled")
    auth = sections["auth"]
    if auth.get("backend") == "ldap":
        for key in ("ldap_urls", "ldap_base_dn"):
            if key in auth and not auth[key]:
                problems.append(f"{label}: [auth] {key}: required when backend = ldap")
    pop3, imap, smtp = sections["pop3"], sections["imap"], sections["smtp"]
    serves_smtp = any(smtp.get(k) for k in ("listen", "smtps_listen", "submission_listen"))
    for name, section, keys in (("pop3", pop3, ("listen", "pop3s_listen")),
                                ("imap", imap, ("listen", "imaps_listen"))):  # fmt: skip
        if any(section.get(k) for k in keys) and not serves_smtp:
            problems.append(
                f"{label}: [{name}] listen: {name.upper()} serves the mailboxes SMTP delivers "
                "into and the users of [auth]: configure [smtp] listen too"
            )
    relay = sections["relay"]
    if relay.get("smarthost_user") and relay.get("smarthost_password_file") is None:
        problems.append(
            f"{label}: [relay] smarthost_password_file: required when smarthost_user is set"
        )
    if relay.get("smarthost_user") and relay.get("smarthost") is None:
        problems.append(f"{label}: [relay] smarthost_user: set, but no smarthost to log in to")
    seen: set[str] = set()
    for z in zones:
        if z.origin in seen:
            problems.append(f"{label}: [zone:{z.origin}]: zone defined twice")
        seen.add(z.origin)


def describe_schema() -> str:
    """Every section and key with its default and help, for `mailappliance config-help`."""
    lines = []
    for name, schema in [*SCHEMA.items(), *((p + ":NAME", s) for p, s in PATTERN_SCHEMA.items())]:
        lines.append(f"[{name}]")
        for key, spec in schema.items():
            if spec.default is REQUIRED:
                d = "(required)"
            elif spec.default is NONE or callable(spec.default):
                d = "(optional)"
            else:
                d = f"= {spec.default}" if spec.default else "(empty)"
            lines.append(f"  {key} {d}\n      {spec.help}")
    return "\n".join(lines)
