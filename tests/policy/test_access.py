"""The access file: its syntax, and the decisions it makes about clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.interfaces import Verdict
from tests.policy.helpers import (
    OUTSIDE,
    build,
    sender,
)

# ---------------------------------------------------------------------- access file syntax


def test_access_bad_entries_every_problem_reported(tmp_path: Path) -> None:
    """Every bad access line is reported, one problem each, with file and line."""
    path = tmp_path / "access"
    text = """\
        127.0.0.1 RELAY
        127.0.0.1/8 REJECT
        Spam:163.com FRIEND
        Connect:user@163.com OK
        From:192.0.2.1 REJECT
        127.0.0.1 OK
        lonely
        127.0.0.300 OK
        evil.example ERROR:5.7.1:450 mixed up
        evil2.example ERROR:go away
        good.example OK # comment
        @163.com REJECT
        IPv6:nonsense OK
    """
    with pytest.raises(ConfigError) as e:
        build(tmp_path, access=text)
    assert e.value.problems == [
        f"{path}:2: '127.0.0.1/8' has host bits set (the network is 127.0.0.0/8)",
        f"{path}:3: unsupported tag 'Spam:' (supported: Connect:, From:, To:)",
        f"{path}:3: unknown value 'FRIEND' (expected OK, RELAY, REJECT, DISCARD, SKIP or ERROR:...)",
        f"{path}:4: Connect: entries match an IP address, network or host name, not 'user@163.com'",
        f"{path}:5: From: entries match an address, local part or domain, not an IP address or"
        " network: '192.0.2.1'",
        f"{path}:6: duplicate key '127.0.0.1' (first on line 1)",
        f"{path}:7: expected 'KEY VALUE', got 'lonely'",
        f"{path}:8: not an IPv4 address or network: '127.0.0.300'",
        f"{path}:9: reply code 450 and enhanced status code 5.7.1 disagree",
        f"{path}:10: expected a reply code like 550 or an enhanced status code like 5.7.1,"
        " got 'go away'",
        f"{path}:11: unexpected text after OK: '# comment'",
        f"{path}:12: '@163.com' is not a key; write the domain alone: '163.com'",
        f"{path}:13: not an IPv6 address or network: 'IPv6:nonsense'",
    ]


def test_access_same_network_two_spellings_duplicate(tmp_path: Path) -> None:
    """127.0.1 and 127.0.1.0/24 are the same key."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, access="127.0.1 RELAY\n127.0.1.0/24 REJECT\n")
    assert e.value.problems == [
        f"{tmp_path / 'access'}:2: duplicate key '127.0.1.0/24' (first on line 1)"
    ]


# ---------------------------------------------------------------------- connect


def test_check_connect_host_relay_relay_verdict(tmp_path: Path) -> None:
    """127.0.0.1 RELAY lets that client relay."""
    policy = build(tmp_path)
    assert policy.check_connect("127.0.0.1", None) == Verdict(relay=True)


def test_check_connect_unlisted_client_plain_accept(tmp_path: Path) -> None:
    """A client the access file does not mention is accepted without relay rights."""
    policy = build(tmp_path)
    assert policy.check_connect(OUTSIDE, None) == Verdict()


def test_check_connect_no_access_file_accept(tmp_path: Path) -> None:
    """Without an access file every client is accepted and none may relay."""
    policy = build(tmp_path, access=None)
    assert policy.check_connect("127.0.0.1", "localhost") == Verdict()


def test_check_connect_octet_prefix_network_rejected(tmp_path: Path) -> None:
    """'192.0.2 REJECT' covers 192.0.2.0/24 with 550 5.7.1."""
    policy = build(tmp_path, access="192.0.2 REJECT\n")
    assert policy.check_connect("192.0.2.7", "bad.example") == Verdict(
        550, "5.7.1 <bad.example[192.0.2.7]>: Client host rejected: Access denied"
    )
    assert policy.check_connect("192.0.2.8", None) == Verdict(
        550, "5.7.1 <unknown[192.0.2.8]>: Client host rejected: Access denied"
    )
    assert policy.check_connect("192.0.3.1", None) == Verdict()


def test_check_connect_lab_network_prefix_relay(tmp_path: Path) -> None:
    """'127.0.1 RELAY' (the lab's 127.0.1.0/24) lets mail.sina.com's address relay."""
    policy = build(tmp_path, access="127.0.1 RELAY\n")
    assert policy.check_connect("127.0.1.4", None) == Verdict(relay=True)
    assert policy.check_connect("127.0.2.4", None) == Verdict()


def test_check_connect_longer_prefix_wins(tmp_path: Path) -> None:
    """A longer network prefix beats a shorter one, the host address beats both."""
    policy = build(tmp_path, access="127.0.0.0/8 REJECT\n127.1 OK\n127.1.2.3 RELAY\n")
    assert policy.check_connect("127.1.2.3", None) == Verdict(relay=True)
    assert policy.check_connect("127.1.9.9", None) == Verdict()
    assert policy.check_connect("127.2.0.1", None).code == 550


def test_check_connect_tagged_beats_untagged(tmp_path: Path) -> None:
    """Connect:KEY wins over the untagged KEY."""
    policy = build(tmp_path, access="192.0.2.1 REJECT\nConnect:192.0.2.1 RELAY\n")
    assert policy.check_connect("192.0.2.1", None) == Verdict(relay=True)


def test_check_connect_ipv6_keys_matched(tmp_path: Path) -> None:
    """IPv6: keys match IPv6 clients; IPv4-mapped clients match IPv4 keys."""
    policy = build(tmp_path, access="IPv6:::1 RELAY\nIPv6:2001:db8::/32 REJECT\n127.0.0.1 OK\n")
    assert policy.check_connect("::1", None) == Verdict(relay=True)
    assert policy.check_connect("2001:db8::5", None).code == 550
    assert policy.check_connect("::ffff:127.0.0.1", None) == Verdict()
    assert policy.check_connect("2001:db9::5", None) == Verdict()


def test_check_connect_hostname_domain_suffix_matched(tmp_path: Path) -> None:
    """A domain key matches the client host name and its subdomains, longest suffix first."""
    policy = build(tmp_path, access="spam.example REJECT\nok.spam.example OK\n")
    assert policy.check_connect(OUTSIDE, "a.b.spam.example").code == 550
    assert policy.check_connect(OUTSIDE, "x.ok.spam.example") == Verdict()
    assert policy.check_connect(OUTSIDE, "notspam.example") == Verdict()


def test_check_connect_tutorial_domain_relay_by_hostname(tmp_path: Path) -> None:
    """The tutorial's '163.com RELAY' lets clients named in 163.com relay."""
    policy = build(tmp_path)
    assert policy.check_connect("127.0.1.1", "mail.163.com") == Verdict(relay=True)


def test_check_connect_ip_checked_before_hostname(tmp_path: Path) -> None:
    """The client address decides before its (forgeable) host name."""
    policy = build(tmp_path, access="192.0.2.1 REJECT\ngood.example RELAY\n")
    assert policy.check_connect("192.0.2.1", "mx.good.example").code == 550


def test_check_connect_error_value_reply_used(tmp_path: Path) -> None:
    """ERROR: values give the reply code and text as written."""
    policy = build(
        tmp_path, access='192.0.2.1 ERROR:"5.7.1 Go away"\n192.0.2.2 ERROR:4.7.1:421 Later\n'
    )
    assert policy.check_connect("192.0.2.1", None) == Verdict(550, "5.7.1 Go away")
    assert policy.check_connect("192.0.2.2", None) == Verdict(421, "4.7.1 Later")


def test_check_connect_skip_stops_lookup(tmp_path: Path) -> None:
    """SKIP ends the search: the less specific REJECT does not apply."""
    policy = build(tmp_path, access="192.0.2 REJECT\n192.0.2.5 SKIP\n")
    assert policy.check_connect("192.0.2.5", None) == Verdict()
    assert policy.check_connect("192.0.2.6", None).code == 550


def test_check_connect_to_tag_not_applied(tmp_path: Path) -> None:
    """To: and From: keys do not decide about clients."""
    policy = build(tmp_path, access="To:spam.example REJECT\nFrom:spam.example REJECT\n")
    assert policy.check_connect(OUTSIDE, "mx.spam.example") == Verdict()


def test_check_connect_discard_every_sender_discarded(tmp_path: Path) -> None:
    """Connect DISCARD accepts the client and marks each of its messages for discarding."""
    policy = build(tmp_path, access="192.0.2.9 DISCARD\n")
    assert policy.check_connect("192.0.2.9", None) == Verdict(discard=True)
    assert sender(policy, "someone@other.example", ip="192.0.2.9") == Verdict(discard=True)
    assert sender(policy, "", ip="192.0.2.9") == Verdict(discard=True)
