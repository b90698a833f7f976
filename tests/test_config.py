"""Configuration: values converted, every problem reported at once, exactly as the admin sees it."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance import config
from appliance.cli import main as cli_main
from appliance.errors import ConfigError

ZONE = """\
$TTL 1h
@ IN SOA ns.example.test. root.example.test. ( 1 1h 15m 1w 1h )
  IN NS ns
ns IN A 127.0.0.1
"""


def write(tmp_path: Path, text: str, name: str = "lab.ini") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return info.value.problems


def test_load_minimal_config_uses_defaults(tmp_path: Path) -> None:
    """A config with only the hostname gets documented defaults, paths relative to the file."""
    p = write(tmp_path, "[appliance]\nhostname = Mail.Example.Test.\n", "site.ini")
    cfg = config.load(p)
    assert cfg.appliance.hostname == "mail.example.test"
    assert cfg.appliance.state_dir == (tmp_path.parent / "var" / "site").resolve()
    assert cfg.dns.recursion_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )
    assert cfg.dns.listen is None
    assert cfg.tls.renew_before == 30 * 86400
    assert cfg.tls.min_version == "1.2"
    assert cfg.zones == ()


def test_load_paths_are_relative_to_ini_folder(tmp_path: Path) -> None:
    """Zone files and state_dir resolve against the INI file's folder, not the cwd."""
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / "example.zone").write_text(ZONE)
    p = write(
        tmp_path,
        """\
        [appliance]
        hostname = mail.example.test
        state_dir = state
        [dns]
        listen = 127.0.0.1:5353 [::1]:5353
        forwarders = 127.0.1.4
        [zone:Example.Test]
        file = zones/example.zone
        allow_transfer = 127.0.0.2
        """,
    )
    cfg = config.load(p)
    assert cfg.appliance.state_dir == tmp_path / "state"
    assert [str(a) for a in cfg.dns.listen] == ["127.0.0.1:5353", "[::1]:5353"]
    assert [str(a) for a in cfg.dns.forwarders] == ["127.0.1.4:53"]
    (zone,) = cfg.zones
    assert zone.origin == "example.test"
    assert zone.file == tmp_path / "zones" / "example.zone"
    assert zone.allow_transfer == (ipaddress.ip_network("127.0.0.2/32"),)


def test_load_many_errors_reported_together_one_line_each(tmp_path: Path) -> None:
    """Unknown section/key, bad values, missing required key and missing file: all at once."""
    p = write(
        tmp_path,
        """\
        [appliance]
        state_dir = state
        colour = blue
        [dns]
        listen = 127.0.0.1:99999
        forward_timeout = soon
        cache_size = lots
        recursion_networks = 127.0.0.0/8 everywhere
        [zone:example.test]
        file = missing.zone
        [tls]
        cert = cert.pem
        key_type = dsa
        [smtpd]
        port = 25
        """,
    )
    missing = tmp_path / "missing.zone"
    assert problems_of(p) == [
        "lab.ini: [zone:example.test] file: no such file: " + str(missing),
        "lab.ini: [smtpd]: unknown section (known sections: appliance, dns, smtp, auth, queue, relay, pop3, imap, limits, spf, dkim, dnsbl, dmarc, clamav, spamassassin, web, log, tls, zone:NAME)",
        "lab.ini: [appliance] colour: unknown key (known keys: group, hostname, state_dir, user)",
        "lab.ini: [appliance] hostname: required key is missing",
        "lab.ini: [dns] listen: port must be 0-65535, got 99999",
        "lab.ini: [dns] forward_timeout: expected a duration like 10m, 30s or 2d, got 'soon'",
        "lab.ini: [dns] recursion_networks: expected networks like 127.0.0.0/8 ::1, got 'everywhere'",
        "lab.ini: [dns] cache_size: expected a whole number, got 'lots'",
        "lab.ini: [tls] key_type: expected one of ec-p256, rsa-3072, rsa-4096, got 'dsa'",
        "lab.ini: [tls] key: required when the other of cert/key is set",
        "lab.ini: [tls] cert: no such file: " + str(tmp_path / "cert.pem"),
    ]


def test_load_dns_section_without_listen_is_an_error(tmp_path: Path) -> None:
    """Enabling DNS without an address to listen on is reported, not silently ignored."""
    p = write(
        tmp_path, "[appliance]\nhostname = mail.example.test\n[dns]\nforwarders = 127.0.0.2\n"
    )
    assert problems_of(p) == ["lab.ini: [dns] listen: required when DNS is enabled"]


def test_load_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A line that is not key = value is reported with the file and line number."""
    p = write(tmp_path, "[appliance]\nhostname = mail.example.test\nthis is not ini\n")
    (problem,) = problems_of(p)
    assert problem.startswith("lab.ini: ")
    assert "line 3" in problem and "this is not ini" in problem


def test_load_duplicate_key_is_an_error(tmp_path: Path) -> None:
    """strict parsing: the same key twice in a section is a mistake, not 'last one wins'."""
    p = write(tmp_path, "[appliance]\nhostname = a.test\nhostname = b.test\n")
    (problem,) = problems_of(p)
    assert "hostname" in problem and "already exists" in problem


def test_load_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    assert problems_of(tmp_path / "nope.ini") == [
        f"{tmp_path / 'nope.ini'}: no such configuration file"
    ]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90", 90), ("10m", 600), ("1h30m", 5400), ("2W", 1209600), ("1d", 86400)],
)
def test_parse_duration_units_converted(raw: str, seconds: int) -> None:
    """Durations accept BIND-style units and combinations."""
    assert config.parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "m", "10x", "1h30", "-5"])
def test_parse_duration_garbage_rejected(raw: str) -> None:
    """Malformed durations are errors, never silently zero."""
    with pytest.raises(ValueError):
        config.parse_duration(raw)


def test_size_units_converted() -> None:
    """Sizes take K/M/G suffixes (binary), as in '25M'."""
    assert config.size("25M", None) == 25 * 1024 * 1024
    assert config.size("512", None) == 512
    with pytest.raises(ValueError, match="expected a size like 25M, got 'huge'"):
        config.size("huge", None)


def test_check_config_bad_file_exits_2_listing_problems(tmp_path: Path, capsys) -> None:
    """`mailappliance check-config` prints every problem on stderr and exits 2."""
    p = write(tmp_path, "[appliance]\nhostname = not a host\n[dns]\nlisten = nowhere\n")
    assert cli_main(["--config", str(p), "check-config"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "lab.ini: [appliance] hostname: expected a host name like mail.example.com, got 'not a host'",
        "lab.ini: [dns] listen: expected an address like 127.0.0.1:53, got 'nowhere'",
    ]


def test_check_config_lab_configs_ok(capsys) -> None:
    """Both lab configs shipped in etc/ pass check-config."""
    repo = Path(__file__).resolve().parent.parent
    for name in ("163.ini", "sina.ini"):
        assert cli_main(["--config", str(repo / "etc" / name), "check-config"]) == 0
        assert capsys.readouterr().out.startswith("configuration OK")


def test_check_config_zone_error_names_zone_file_and_line(tmp_path: Path, capsys) -> None:
    """A zone that fails to load is a configuration problem naming the file and line."""
    (tmp_path / "bad.zone").write_text(ZONE + "www IN A 300.1.1.1\n")
    p = write(
        tmp_path,
        "[appliance]\nhostname = mail.example.test\n[zone:example.test]\nfile = bad.zone\n",
    )
    assert cli_main(["--config", str(p), "check-config"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"lab.ini: [zone:example.test] file: {tmp_path / 'bad.zone'}:5: ")
    assert "300.1.1.1" in line


def test_cli_help_on_every_level() -> None:
    """--help works for the command and each subcommand, exit 0, no config needed."""
    for argv in ([], ["check-config"], ["ca"], ["ca", "init"], ["ca", "issue"], ["ca", "show"]):
        out = subprocess.run(
            [sys.executable, "-m", "appliance.cli", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "usage: mailappliance" in out.stdout


def test_load_pop3_without_smtp_is_an_error(tmp_path: Path) -> None:
    """POP3 reads the mailboxes SMTP fills, with its users: POP3 alone is refused, named."""
    path = write(
        tmp_path,
        "[appliance]\nhostname = mail.163.com\n[dns]\nenabled = no\n"
        "[pop3]\npop3s_listen = 127.0.1.1:995\n",
    )
    assert problems_of(path) == [
        "lab.ini: [pop3] listen: POP3 serves the mailboxes SMTP delivers into and the users of "
        "[auth]: configure [smtp] listen too"
    ]


def test_load_relay_smarthost_user_without_password_file_is_an_error(tmp_path: Path) -> None:
    """A smarthost login needs its password file, and a smarthost to log in to."""
    path = write(
        tmp_path,
        "[appliance]\nhostname = mail.163.com\n[dns]\nenabled = no\n"
        "[relay]\nsmarthost_user = user3@sina.com\n",
    )
    assert problems_of(path) == [
        "lab.ini: [relay] smarthost_password_file: required when smarthost_user is set",
        "lab.ini: [relay] smarthost_user: set, but no smarthost to log in to",
    ]


def test_load_filter_daemons_addresses_and_mistakes(tmp_path: Path) -> None:
    """[clamav] and [spamassassin]: host:port or unix:path (relative to the INI folder);
    a wrong address, policy or score is named with its file, section and key."""
    p = write(
        tmp_path,
        """\
        [appliance]
        hostname = mail.example.test
        [clamav]
        address = unix:run/clamd.ctl
        [spamassassin]
        address = 127.0.0.1:783
        reject_score = 12.5
        """,
    )
    cfg = config.load(p)
    assert cfg.clamav.address == tmp_path / "run" / "clamd.ctl"
    assert cfg.clamav.on_failure == "tempfail" and cfg.clamav.max_size == 25 * 1024**2
    assert cfg.spamassassin.address == config.HostPort("127.0.0.1", 783)
    assert cfg.spamassassin.reject_score == 12.5 and cfg.spamassassin.max_size == 512 * 1024
    bad = write(
        tmp_path,
        """\
        [appliance]
        hostname = mail.example.test
        [clamav]
        address = clamd.local
        on_failure = ignore
        [spamassassin]
        reject_score = high
        """,
        "bad.ini",
    )
    assert problems_of(bad) == [
        "bad.ini: [clamav] address: expected host:port like 127.0.0.1:3310 or"
        " unix:/run/clamav/clamd.ctl, got 'clamd.local'",
        "bad.ini: [clamav] on_failure: expected one of tempfail, accept, got 'ignore'",
        "bad.ini: [spamassassin] reject_score: expected a score like 10 or 7.5, got 'high'",
    ]


def test_imap_section_defaults_and_rfc_minimum(tmp_path: Path) -> None:
    """[imap] is off until a listen is given; its idle timeout cannot go under RFC 3501's 30m;
    IMAP without SMTP is refused like POP3 without SMTP."""
    cfg = config.load(write(tmp_path, "[appliance]\nhostname = mail.example.test\n"))
    assert (cfg.imap.listen, cfg.imap.imaps_listen) == ((), ())
    assert cfg.imap.idle_timeout == 1800 and cfg.imap.max_literal == 50 * 1024 * 1024
    p = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [imap]
        listen = 127.0.0.1:143
        idle_timeout = 5m
        """)  # fmt: skip
    assert problems_of(p) == [
        "lab.ini: [imap] idle_timeout: must be at least 30m (RFC 3501 5.4), got '5m'",
        "lab.ini: [imap] listen: IMAP serves the mailboxes SMTP delivers into and the users of "
        "[auth]: configure [smtp] listen too",
    ]


def test_quick_store_calls_reach_the_pop3_and_imap_listeners(tmp_path: Path) -> None:
    """[pop3] and [imap] quick_store_calls: on by default, `no` turns them off in the
    settings the listeners are built with, anything else names the key."""
    from appliance.service.access import imap_settings, pop3_settings

    head = "[appliance]\nhostname = mail.example.test\n"
    cfg = config.load(write(tmp_path, head))
    assert pop3_settings(cfg).quick_store_calls and imap_settings(cfg).quick_store_calls
    cfg = config.load(
        write(tmp_path, head + "[pop3]\nquick_store_calls = no\n[imap]\nquick_store_calls = no\n")
    )
    assert not pop3_settings(cfg).quick_store_calls
    assert not imap_settings(cfg).quick_store_calls
    [problem] = problems_of(write(tmp_path, head + "[pop3]\nquick_store_calls = often\n"))
    assert problem.startswith("lab.ini: [pop3] quick_store_calls: ") and "'often'" in problem


def test_dns_servfail_ttl_default_and_rfc_maximum(tmp_path: Path) -> None:
    """[dns] servfail_ttl: 1s by default (BIND's servfail-ttl), 0 allowed, at most RFC 2308's
    five minutes."""
    cfg = config.load(write(tmp_path, "[appliance]\nhostname = mail.example.test\n"))
    assert cfg.dns.servfail_ttl == 1
    dns = "[appliance]\nhostname = mail.example.test\n[dns]\nlisten = 127.0.0.1:53\n"
    assert config.load(write(tmp_path, dns + "servfail_ttl = 0\n")).dns.servfail_ttl == 0
    p = write(tmp_path, dns + "servfail_ttl = 10m\n")
    assert problems_of(p) == [
        "lab.ini: [dns] servfail_ttl: must be at most 300s (RFC 2308 7.1), got '10m'",
    ]


def test_relay_cut_through_wait_default_off_and_bound(tmp_path: Path) -> None:
    """[relay] cut_through_wait: 5s by default, 0 turns cut-through off, at most a minute
    (the client waits for its 250 meanwhile); the value reaches the relay's scheduler."""
    from twisted.internet.task import Clock

    from appliance.service import attach_relay, build_queue

    head = "[appliance]\nhostname = mail.example.test\n"
    assert config.load(write(tmp_path, head)).relay.cut_through_wait == 5
    cfg = config.load(write(tmp_path, head + "[relay]\ncut_through_wait = 0\n"))
    assert cfg.relay.cut_through_wait == 0
    queue, _store = build_queue(tmp_path / "state", "mail.example.test", Clock())
    assert attach_relay(queue, None, None, cfg).cut_through_wait == 0  # no relay target needed
    assert problems_of(write(tmp_path, head + "[relay]\ncut_through_wait = 2m\n")) == [
        "lab.ini: [relay] cut_through_wait: must be at most 60s (the client waits for its 250 "
        "meanwhile), got '2m'",
    ]


def test_web_metrics_token_file_must_exist_and_hold_a_token(tmp_path: Path) -> None:
    p = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [web]
        metrics_token_file = token
        """)  # fmt: skip
    assert problems_of(p) == [
        f"lab.ini: [web] metrics_token_file: no such file: {tmp_path / 'token'}"
    ]
    (tmp_path / "token").write_text("\n")
    assert problems_of(p) == [
        f"lab.ini: [web] metrics_token_file: the file is empty: {tmp_path / 'token'}"
    ]
    (tmp_path / "token").write_text("s3cret\n")
    assert config.load(p).web.metrics_token_file == tmp_path / "token"


def test_web_admins_are_addresses_and_need_https_and_users(tmp_path: Path) -> None:
    p = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [web]
        admins = Postmaster@Example.test not-an-address
        session_timeout = 10s
        """)  # fmt: skip
    problems = problems_of(p)
    assert any("[web] admins" in x and "'not-an-address'" in x for x in problems), problems
    assert any("[web] session_timeout" in x and "at least 1m" in x for x in problems), problems
    p = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [web]
        admins = Postmaster@Example.test
        """)  # fmt: skip
    assert "lab.ini: [web] admins: the status page needs [web] listen (HTTPS)" in problems_of(p)
    p = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [web]
        listen = 127.0.0.1:8443
        admins = Postmaster@Example.test postmaster@example.test
        """)  # fmt: skip
    cfg = config.load(p)
    assert cfg.web.admins == ("postmaster@example.test",)
    assert cfg.web.session_timeout == 1800
    p = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [auth]
        backend = none
        [web]
        listen = 127.0.0.1:8443
        admins = postmaster@example.test
        """)  # fmt: skip
    assert problems_of(p) == [
        "lab.ini: [web] admins: no user can log in with [auth] backend = none"
    ]
