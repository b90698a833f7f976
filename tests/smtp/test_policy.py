"""The Sendmail-style policy files: access, local-host-names, virtusertable, aliases, reload."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from appliance.errors import ConfigError
from appliance.interfaces import Mailbox, Verdict
from appliance.smtp.policy import MAX_ALIAS_DEPTH, Policy, Resolved, parse_reply

# the tutorial's mail.163.com, as its files most likely read
LHN = "# local-host-names: domains we receive mail for\n163.com\nsina-alias.com\n"
ACCESS = "127.0.0.1 RELAY\n163.com RELAY\n"
VIRTUSERTABLE = """\
admin@163.com       user1
info@163.com        user2@163.com
friend@163.com      Friend@other.example
gone@163.com        error:nouser
old@163.com         error:5.1.1:550 User has moved
@sina-alias.com     %1@163.com
"""
ALIASES = """\
# aliases(5)
postmaster: root
root:       user1
abuse:      root
staff:      user1,
            user2, user1@163.com
"""
USERS = {"user1@163.com", "user2@163.com"}
OUTSIDE = "192.0.2.10"  # a client the access file says nothing about


class Users:
    """Test double for the user directory: a fixed set of addresses."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = set(addresses)

    def exists(self, address: str) -> defer.Deferred[bool]:
        return defer.succeed(address in self.addresses)


class FailingUsers:
    """A user directory whose backend is down."""

    def exists(self, address: str) -> defer.Deferred[bool]:
        return defer.fail(ConnectionRefusedError("LDAP server unreachable"))


def fired(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that must already have fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def build(
    tmp_path: Path,
    *,
    lhn: str | None = LHN,
    access: str | None = ACCESS,
    virtusertable: str | None = VIRTUSERTABLE,
    aliases: str | None = ALIASES,
    users: Any = None,
    clock: Callable[[], float] | None = None,
    local_domains: Iterable[str] = (),
) -> Policy:
    paths: dict[str, Path | None] = {}
    for name, text in (
        ("local-host-names", lhn),
        ("access", access),
        ("virtusertable", virtusertable),
        ("aliases", aliases),
    ):
        paths[name] = None
        if text is not None:
            paths[name] = tmp_path / name
            paths[name].write_text(textwrap.dedent(text))
    return Policy(
        local_domains=local_domains,
        local_host_names=paths["local-host-names"],
        access=paths["access"],
        virtusertable=paths["virtusertable"],
        aliases=paths["aliases"],
        users=Users(users) if isinstance(users, set) else users or Users(USERS),
        clock=clock or Clock().seconds,
    )


def sender(policy: Policy, address: str, ip: str = OUTSIDE, auth: str | None = None) -> Verdict:
    return fired(policy.check_sender(address, ip, None, auth))


def rcpt(
    policy: Policy,
    address: str,
    ip: str = OUTSIDE,
    auth: str | None = None,
    relay: bool = False,
    hostname: str | None = None,
) -> Resolved:
    return fired(policy.resolve_recipient(address, ip, hostname, auth, relay))


def local(*addresses: str) -> Resolved:
    boxes = tuple(Mailbox(a.partition("@")[2], a.partition("@")[0]) for a in addresses)
    return Resolved(mailboxes=boxes)


def refused(code: int, text: str) -> Resolved:
    return Resolved(Verdict(code, text))


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """Text of every warning logged during the test."""
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def rewrite(path: Path, text: str) -> None:
    """Replace a file's content and make sure its mtime differs (coarse clocks)."""
    before = path.stat().st_mtime_ns
    path.write_text(textwrap.dedent(text))
    os.utime(path, ns=(before + 10**9, before + 10**9))


# ---------------------------------------------------------------------- local domains


def test_is_local_domain_file_and_config_union_true(tmp_path: Path) -> None:
    """Domains from local-host-names and from the config are both local."""
    policy = build(tmp_path, local_domains=["sina.com"])
    assert policy.is_local_domain("163.com")
    assert policy.is_local_domain("sina.com")
    assert not policy.is_local_domain("other.example")
    assert policy.local_domains() == {"163.com", "sina-alias.com", "sina.com"}


def test_is_local_domain_case_and_trailing_dot_ignored(tmp_path: Path) -> None:
    """Domain comparison ignores case and a trailing dot."""
    policy = build(tmp_path)
    assert policy.is_local_domain("MAIL.163.COM.") is False
    assert policy.is_local_domain("163.COM.")


def test_policy_without_local_domains_config_error(tmp_path: Path) -> None:
    """No local domain anywhere is a configuration error."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, lhn=None)
    assert e.value.problems == ["no local domains: set [smtp] local_domains or local_host_names"]


def test_local_host_names_bad_lines_config_error(tmp_path: Path) -> None:
    """Each bad local-host-names line is one problem naming file and line."""
    path = tmp_path / "local-host-names"
    with pytest.raises(ConfigError) as e:
        build(tmp_path, lhn="163.com\nbad_domain!\n163.com sina.com\n")
    assert e.value.problems == [
        f"{path}:2: not a valid domain name: 'bad_domain!'",
        f"{path}:3: expected one domain per line, got '163.com sina.com'",
    ]


def test_policy_missing_file_config_error(tmp_path: Path) -> None:
    """A configured file that cannot be read is a configuration error."""
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as e:
        Policy(local_domains=["163.com"], access=missing, users=Users(USERS))
    assert e.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_policy_problems_of_all_files_reported_together(tmp_path: Path) -> None:
    """Problems from several files come back in one ConfigError."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, access="127.0.0.1 MAYBE\n", virtusertable="nokey\n")
    assert e.value.problems == [
        f"{tmp_path / 'access'}:1: unknown value 'MAYBE' (expected OK, RELAY, REJECT, DISCARD,"
        " SKIP or ERROR:...)",
        f"{tmp_path / 'virtusertable'}:1: expected 'user@domain target' or '@domain target',"
        " got 'nokey'",
    ]


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


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ('"5.7.1 Go away"', (550, "5.7.1", "Go away")),
        ("5.7.1:550 Go away", (550, "5.7.1", "Go away")),
        ("550 Go away", (550, "5.7.1", "Go away")),
        ('"550 Go away"', (550, "5.7.1", "Go away")),
        ("550 5.7.0 Go away", (550, "5.7.0", "Go away")),
        ("4.7.1:451 Try later", (451, "4.7.1", "Try later")),
        ("4.7.1 Try later", (450, "4.7.1", "Try later")),
        ("554", (554, "5.7.1", "Access denied")),
    ],
)
def test_parse_reply_sendmail_forms_code_and_text(spec: str, expected: tuple) -> None:
    """Sendmail's ERROR: forms give the reply code, enhanced code and text."""
    assert parse_reply(spec, "7.1", "Access denied") == expected


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


# ---------------------------------------------------------------------- sender


def test_check_sender_unauthenticated_local_domain_auth_required(tmp_path: Path) -> None:
    """An unauthenticated client may not use a local sender domain."""
    policy = build(tmp_path, access=None)
    assert sender(policy, "user1@163.com") == Verdict(530, "5.7.0 Authentication required")
    assert sender(policy, "USER1@163.COM") == Verdict(530, "5.7.0 Authentication required")


def test_check_sender_relay_client_local_domain_allowed(tmp_path: Path) -> None:
    """A client with access RELAY (127.0.0.1) may use a local sender domain unauthenticated."""
    policy = build(tmp_path, access="127.0.0.1 RELAY\n")
    assert sender(policy, "user1@163.com", ip="127.0.0.1") == Verdict()
    assert sender(policy, "user1@163.com", ip=OUTSIDE).code == 530


def test_check_sender_connect_ok_local_domain_allowed(tmp_path: Path) -> None:
    """Connect OK also trusts the client's local sender addresses."""
    policy = build(tmp_path, access="Connect:192.0.2.3 OK\n")
    assert sender(policy, "user2@163.com", ip="192.0.2.3") == Verdict()


def test_check_sender_from_ok_local_address_allowed(tmp_path: Path) -> None:
    """From: OK for a local address lets anyone use it without authenticating."""
    policy = build(tmp_path, access="From:noreply@163.com OK\n")
    assert sender(policy, "noreply@163.com") == Verdict()
    assert sender(policy, "user1@163.com").code == 530


def test_check_sender_tutorial_untagged_domain_relay_allowed(tmp_path: Path) -> None:
    """The tutorial's untagged '163.com RELAY' also applies as From: (Sendmail semantics)."""
    policy = build(tmp_path)
    assert sender(policy, "user1@163.com") == Verdict()


def test_check_sender_remote_domain_unauthenticated_allowed(tmp_path: Path) -> None:
    """Mail from other domains needs no authentication (it is incoming mail)."""
    policy = build(tmp_path, access=None)
    assert sender(policy, "user3@sina.com") == Verdict()


def test_check_sender_null_sender_always_allowed(tmp_path: Path) -> None:
    """The null sender (bounces) is accepted whatever the access file says about senders."""
    policy = build(tmp_path, access="From:163.com REJECT\n")
    assert sender(policy, "") == Verdict()
    assert sender(policy, "", auth="user1@163.com") == Verdict()


def test_check_sender_from_reject_exact_reply(tmp_path: Path) -> None:
    """From: REJECT refuses the sender's domain and its subdomains."""
    policy = build(tmp_path, access="From:spam.example REJECT\n")
    assert sender(policy, "x@mx.spam.example") == Verdict(
        550, "5.7.1 <x@mx.spam.example>: Sender address rejected: Access denied"
    )
    assert sender(policy, "x@other.example") == Verdict()


def test_check_sender_from_error_and_discard_applied(tmp_path: Path) -> None:
    """From: ERROR gives its reply; From: DISCARD accepts to drop."""
    policy = build(
        tmp_path, access="From:a@spam.example ERROR:553 No thanks\nFrom:b@spam.example DISCARD\n"
    )
    assert sender(policy, "a@spam.example") == Verdict(553, "5.7.1 No thanks")
    assert sender(policy, "b@spam.example") == Verdict(discard=True)


def test_check_sender_address_beats_local_part_beats_domain(tmp_path: Path) -> None:
    """Full address, then user@, then the domain decide, most specific first."""
    access = """\
        From:example.org REJECT
        From:boss@ OK
        From:boss@example.org ERROR:550 Not you
    """
    policy = build(tmp_path, access=access)
    assert sender(policy, "boss@example.org") == Verdict(550, "5.7.1 Not you")
    assert sender(policy, "boss@x.example.org") == Verdict()
    assert sender(policy, "other@example.org").code == 550


def test_check_sender_authenticated_own_address_allowed(tmp_path: Path) -> None:
    """An authenticated user may send as its login address, in any case."""
    policy = build(tmp_path, access=None)
    assert sender(policy, "User1@163.com", auth="user1@163.com") == Verdict()


def test_check_sender_authenticated_mapped_address_allowed(tmp_path: Path) -> None:
    """Addresses whose virtusertable or aliases resolution reaches the user's mailbox are its own."""
    policy = build(tmp_path, access=None)
    for address in ("admin@163.com", "postmaster@163.com", "staff@163.com", "user1@sina-alias.com"):
        assert sender(policy, address, auth="user1@163.com") == Verdict(), address
    assert sender(policy, "staff@163.com", auth="user2@163.com") == Verdict()


def test_check_sender_authenticated_other_user_rejected(tmp_path: Path) -> None:
    """An authenticated user may not send as another user, a remote or an error address."""
    policy = build(tmp_path, access=None)
    expected = Verdict(553, "5.7.1 Sender address rejected: not owned by user user1@163.com")
    for address in ("user2@163.com", "info@163.com", "user1@sina.com", "gone@163.com"):
        assert sender(policy, address, auth="user1@163.com") == expected, address


def test_check_sender_authenticated_ignores_trusted_client(tmp_path: Path) -> None:
    """Once authenticated, ownership applies even from a RELAY client."""
    policy = build(tmp_path)
    assert sender(policy, "user2@163.com", ip="127.0.0.1", auth="user1@163.com").code == 553


def test_check_sender_bare_login_owns_name_in_local_domains(tmp_path: Path) -> None:
    """A directory that logs users in by bare name: 'user1' owns user1@ in each local domain."""
    policy = build(tmp_path, access=None)
    assert sender(policy, "user1@163.com", auth="user1") == Verdict()
    assert sender(policy, "admin@163.com", auth="user1") == Verdict()
    assert sender(policy, "user2@163.com", auth="user1").code == 553


# ---------------------------------------------------------------------- recipients: local


def test_resolve_recipient_local_user_mailbox(tmp_path: Path) -> None:
    """A local user resolves to its mailbox."""
    policy = build(tmp_path)
    assert rcpt(policy, "user1@163.com") == local("user1@163.com")


def test_resolve_recipient_mixed_case_lower_cased_mailbox(tmp_path: Path) -> None:
    """Local part and domain are compared and stored lower-case."""
    policy = build(tmp_path)
    assert rcpt(policy, "User1@163.COM") == local("user1@163.com")


def test_resolve_recipient_unknown_user_rejected(tmp_path: Path) -> None:
    """An address that is no user, alias or virtual user gets 550 5.1.1."""
    policy = build(tmp_path)
    assert rcpt(policy, "Nobody@163.com") == refused(
        550, "5.1.1 <Nobody@163.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_user_directory_down_tempfail(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A failing user lookup answers 451 4.3.0 and logs why."""
    policy = build(tmp_path, users=FailingUsers())
    assert rcpt(policy, "user1@163.com") == refused(
        451, "4.3.0 <user1@163.com>: Recipient address rejected: temporary lookup failure"
    )
    assert warnings == ["user1@163.com: user lookup failed: LDAP server unreachable"]


@pytest_twisted.inlineCallbacks
def test_resolve_recipient_slow_directory_waited_for() -> Any:
    """The answer waits for a directory lookup that fires later."""
    clock = Clock()

    class SlowUsers:
        def exists(self, address: str) -> defer.Deferred[bool]:
            d: defer.Deferred[bool] = defer.Deferred()
            clock.callLater(1, d.callback, address == "user1@163.com")
            return d

    policy = Policy(local_domains=["163.com"], users=SlowUsers())
    d = policy.resolve_recipient("user1@163.com", OUTSIDE, None, None, False)
    assert not d.called
    clock.advance(1)
    result = yield d
    assert result == local("user1@163.com")


# ---------------------------------------------------------------------- recipients: relaying


def test_resolve_recipient_remote_unauthenticated_relay_denied(tmp_path: Path) -> None:
    """An unknown client may not relay to another domain."""
    policy = build(tmp_path)
    assert rcpt(policy, "user3@sina.com") == refused(
        550, "5.7.1 <user3@sina.com>: Relay access denied"
    )


def test_resolve_recipient_remote_authenticated_relayed(tmp_path: Path) -> None:
    """An authenticated client may relay; the address to relay to is kept as given."""
    policy = build(tmp_path)
    assert rcpt(policy, "User3@Sina.com", auth="user1@163.com") == Resolved(
        remote=True, forward_to=("User3@sina.com",)
    )


def test_resolve_recipient_remote_client_relay_flag_relayed(tmp_path: Path) -> None:
    """client_relay from the caller allows relaying."""
    policy = build(tmp_path, access=None)
    assert rcpt(policy, "user3@sina.com", relay=True) == Resolved(
        remote=True, forward_to=("user3@sina.com",)
    )


def test_resolve_recipient_remote_access_relay_client_relayed(tmp_path: Path) -> None:
    """A client with access RELAY (127.0.0.1, or a host in 163.com) may relay."""
    policy = build(tmp_path)
    assert rcpt(policy, "user3@sina.com", ip="127.0.0.1").remote
    assert rcpt(policy, "user3@sina.com", hostname="pc.163.com").remote


def test_resolve_recipient_to_relay_domain_relayed(tmp_path: Path) -> None:
    """To: RELAY for a domain lets anyone relay to it (a backup MX), nothing else."""
    policy = build(tmp_path, access="To:partner.example RELAY\n")
    assert rcpt(policy, "a@mx.partner.example") == Resolved(
        remote=True, forward_to=("a@mx.partner.example",)
    )
    assert rcpt(policy, "a@other.example").verdict.code == 550


def test_resolve_recipient_to_ok_remote_not_relayed(tmp_path: Path) -> None:
    """To: OK is not RELAY: it does not open relaying."""
    policy = build(tmp_path, access="To:partner.example OK\n")
    assert rcpt(policy, "a@partner.example") == refused(
        550, "5.7.1 <a@partner.example>: Relay access denied"
    )


@pytest.mark.parametrize(
    "address",
    [
        "user%other.example@163.com",
        "@163.com:user@other.example",
        "other.example!user@163.com",
        '"user@other.example"@163.com',
    ],
)
def test_resolve_recipient_routing_trick_refused(tmp_path: Path, address: str) -> None:
    """Percent hack, source route, bang path and quoted '@' never open a relay."""
    policy = build(tmp_path)
    assert rcpt(policy, address, ip="127.0.0.1", relay=True) == refused(
        550, f"5.7.1 <{address}>: Relay access denied"
    )


def test_resolve_recipient_routing_trick_authenticated_plain_rules(tmp_path: Path) -> None:
    """Authenticated: the source route is dropped; a '%' local part is just an unknown user."""
    policy = build(tmp_path)
    auth = "user1@163.com"
    assert rcpt(policy, "@163.com:user@other.example", auth=auth) == Resolved(
        remote=True, forward_to=("user@other.example",)
    )
    assert rcpt(policy, "user%other.example@163.com", auth=auth).verdict.code == 550
    assert rcpt(policy, "user%other.example@163.com", auth=auth).verdict.text.startswith("5.1.1")


# ---------------------------------------------------------------------- recipients: To: access


def test_resolve_recipient_to_reject_exact_reply(tmp_path: Path) -> None:
    """To: REJECT refuses the recipient before any lookup."""
    policy = build(tmp_path, access="To:user2@163.com REJECT\n")
    assert rcpt(policy, "user2@163.com") == refused(
        550, "5.7.1 <user2@163.com>: Recipient address rejected: Access denied"
    )


def test_resolve_recipient_to_error_reply_used(tmp_path: Path) -> None:
    """To: ERROR gives its own code and text."""
    policy = build(
        tmp_path, access='To:user2@163.com ERROR:"4.2.1 Mailbox closed for maintenance"\n'
    )
    assert rcpt(policy, "user2@163.com") == refused(450, "4.2.1 Mailbox closed for maintenance")


def test_resolve_recipient_to_discard_discard_verdict(tmp_path: Path) -> None:
    """To: DISCARD accepts the recipient and marks the message for discarding."""
    policy = build(tmp_path, access="To:trap@163.com DISCARD\n")
    assert rcpt(policy, "trap@163.com") == Resolved(Verdict(discard=True))


def test_resolve_recipient_to_specific_ok_beats_domain_reject(tmp_path: Path) -> None:
    """To:address OK and To:user@ OK beat To:domain REJECT; the user must still exist."""
    access = """\
        To:163.com REJECT
        To:user1@163.com OK
        To:postmaster@ OK
        To:ghost@163.com OK
    """
    policy = build(tmp_path, access=access)
    assert rcpt(policy, "user1@163.com") == local("user1@163.com")
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    assert rcpt(policy, "user2@163.com").verdict.code == 550
    assert rcpt(policy, "ghost@163.com").verdict.text.startswith("5.1.1")


def test_resolve_recipient_untagged_domain_reject_applies(tmp_path: Path) -> None:
    """An untagged domain key is also a To: key."""
    policy = build(tmp_path, access="sina-alias.com REJECT\n")
    assert rcpt(policy, "user1@sina-alias.com").verdict.code == 550


# ---------------------------------------------------------------------- recipients: virtusertable


def test_resolve_recipient_virtual_to_local_name_mailbox(tmp_path: Path) -> None:
    """'admin@163.com user1' delivers to user1's mailbox."""
    policy = build(tmp_path)
    assert rcpt(policy, "admin@163.com") == local("user1@163.com")


def test_resolve_recipient_virtual_to_local_address_mailbox(tmp_path: Path) -> None:
    """'info@163.com user2@163.com' delivers to user2's mailbox."""
    policy = build(tmp_path)
    assert rcpt(policy, "INFO@163.com") == local("user2@163.com")


def test_resolve_recipient_virtual_domain_of_resolved_address_used(tmp_path: Path) -> None:
    """A target in another local domain gives a mailbox in that domain."""
    policy = build(
        tmp_path,
        virtusertable="sales@163.com user3@sina.com\n",
        local_domains=["sina.com"],
        users={"user3@sina.com"},
    )
    assert rcpt(policy, "sales@163.com") == local("user3@sina.com")


def test_resolve_recipient_catch_all_percent1_substituted(tmp_path: Path) -> None:
    """'@sina-alias.com %1@163.com' maps every local part onto 163.com."""
    policy = build(tmp_path)
    assert rcpt(policy, "User2@sina-alias.com") == local("user2@163.com")
    assert rcpt(policy, "ghost@sina-alias.com") == refused(
        550, "5.1.1 <ghost@sina-alias.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_catch_all_identity_entry_exempts_user(tmp_path: Path) -> None:
    """An entry mapping an address to itself keeps it out of the catch-all."""
    table = "user1@163.com user1@163.com\n@163.com user2\n"
    policy = build(tmp_path, virtusertable=table)
    assert rcpt(policy, "user1@163.com") == local("user1@163.com")
    assert rcpt(policy, "anything@163.com") == local("user2@163.com")


def test_resolve_recipient_virtual_remote_target_forwarded(tmp_path: Path) -> None:
    """A remote target is forwarded even for an unauthenticated client: it is our own map."""
    policy = build(tmp_path)
    assert rcpt(policy, "friend@163.com") == Resolved(
        remote=True, forward_to=("Friend@other.example",)
    )


def test_resolve_recipient_virtual_error_nouser_exact_reply(tmp_path: Path) -> None:
    """'error:nouser' refuses with 550 5.1.1 User unknown."""
    policy = build(tmp_path)
    assert rcpt(policy, "gone@163.com") == refused(
        550, "5.1.1 <gone@163.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_virtual_error_full_form_exact_reply(tmp_path: Path) -> None:
    """'error:5.1.1:550 text' refuses with that code and text."""
    policy = build(tmp_path)
    assert rcpt(policy, "old@163.com") == refused(550, "5.1.1 <old@163.com>: User has moved")


def test_resolve_recipient_virtual_loop_refused(tmp_path: Path, warnings: list[str]) -> None:
    """Virtual users pointing at each other are a loop: 550 5.4.6, logged."""
    policy = build(tmp_path, virtusertable="a@163.com b@163.com\nb@163.com a@163.com\n")
    assert rcpt(policy, "a@163.com") == refused(
        550, "5.4.6 <a@163.com>: Recipient address rejected: Mail forwarding loop"
    )
    assert warnings == [
        "a@163.com: mail forwarding loop or more than 10 levels:"
        " virtual a@163.com -> virtual b@163.com -> virtual a@163.com"
    ]


def test_virtusertable_bad_entries_every_problem_reported(tmp_path: Path) -> None:
    """Every bad virtusertable line is reported with file and line."""
    path = tmp_path / "virtusertable"
    text = """\
        a@163.com user1
        b@163.com %1@other.example
        163.com user1
        c@163.com user1 user2
        d@163.com error:5.1.1:450 mixed
        a@163.com user2
        @163.com user%other.example@relay.example
        e@163.com |/usr/bin/procmail
    """
    with pytest.raises(ConfigError) as e:
        build(tmp_path, virtusertable=text)
    assert e.value.problems == [
        f"{path}:2: %1 is only meaningful in a catch-all (@domain) entry",
        f"{path}:3: expected 'user@domain' or '@domain' as the key, got '163.com'",
        f"{path}:4: expected one target, got 'user1 user2'",
        f"{path}:5: reply code 450 and enhanced status code 5.1.1 disagree",
        f"{path}:6: duplicate key 'a@163.com' (first on line 1)",
        f"{path}:7: only %1 may follow a '%' (the percent hack is not supported):"
        " 'user%other.example@relay.example'",
        f"{path}:8: program, file and :include: targets are not supported: '|/usr/bin/procmail'",
    ]


def test_virtusertable_non_local_domain_warned(tmp_path: Path, warnings: list[str]) -> None:
    """An entry for a domain we do not accept is logged: it can never apply."""
    build(tmp_path, virtusertable="a@elsewhere.example user1\n")
    assert warnings == [
        f"{tmp_path / 'virtusertable'}:1: elsewhere.example is not a local domain,"
        " so this entry never applies"
    ]


# ---------------------------------------------------------------------- recipients: aliases


def test_resolve_recipient_alias_postmaster_root_chain(tmp_path: Path) -> None:
    """'postmaster: root' and 'root: user1' deliver postmaster mail to user1."""
    policy = build(tmp_path)
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    assert rcpt(policy, "abuse@163.com") == local("user1@163.com")


def test_resolve_recipient_alias_applies_in_every_local_domain(tmp_path: Path) -> None:
    """Alias names are local parts in every local domain; targets stay in that domain."""
    policy = build(
        tmp_path,
        virtusertable=None,
        local_domains=["sina.com"],
        users={"user1@163.com", "user1@sina.com"},
    )
    assert rcpt(policy, "postmaster@sina.com") == local("user1@sina.com")


def test_resolve_recipient_alias_fan_out_deduplicated(tmp_path: Path) -> None:
    """An alias with several targets gives each mailbox once (continuation lines included)."""
    policy = build(tmp_path)
    assert rcpt(policy, "staff@163.com") == local("user1@163.com", "user2@163.com")


def test_resolve_recipient_alias_self_reference_keeps_copy(tmp_path: Path) -> None:
    """'user1: user1, remote' keeps a local copy and forwards one."""
    policy = build(tmp_path, aliases="user1: user1, me@other.example\n")
    assert rcpt(policy, "user1@163.com") == Resolved(
        mailboxes=(Mailbox("163.com", "user1"),), remote=True, forward_to=("me@other.example",)
    )


def test_resolve_recipient_alias_backslash_name_not_aliased(tmp_path: Path) -> None:
    """'\\user1' delivers to the mailbox without looking user1 up as an alias again."""
    policy = build(tmp_path, aliases="user1: \\user1, user2\n")
    assert rcpt(policy, "user1@163.com") == local("user1@163.com", "user2@163.com")


def test_resolve_recipient_alias_unknown_target_skipped(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A fan-out with an unknown user still delivers to the others and logs the unknown one."""
    policy = build(tmp_path, aliases="team: user1, ghost\n")
    assert rcpt(policy, "team@163.com") == local("user1@163.com")
    assert warnings == ["team@163.com: skipped unknown users ghost@163.com and 0 failed targets"]


def test_resolve_recipient_alias_all_unknown_rejected(tmp_path: Path) -> None:
    """An alias with no deliverable target is refused as an unknown user."""
    policy = build(tmp_path, aliases="team: ghost, phantom\n")
    assert rcpt(policy, "team@163.com") == refused(
        550, "5.1.1 <team@163.com>: Recipient address rejected: User unknown"
    )


def test_resolve_recipient_alias_depth_capped(tmp_path: Path) -> None:
    """A chain of 10 aliases resolves; 11 levels are refused with 5.4.6."""
    chain = [f"a{i}: a{i + 1}" for i in range(MAX_ALIAS_DEPTH - 1)] + [
        f"a{MAX_ALIAS_DEPTH - 1}: user1"
    ]
    policy = build(tmp_path, aliases="\n".join(chain) + "\n")
    assert rcpt(policy, "a0@163.com") == local("user1@163.com")
    deeper = build(tmp_path, aliases="x: a0\n" + "\n".join(chain) + "\n")
    assert rcpt(deeper, "x@163.com") == refused(
        550, "5.4.6 <x@163.com>: Recipient address rejected: Mail forwarding loop"
    )


def test_resolve_recipient_alias_through_virtual_loop_refused(tmp_path: Path) -> None:
    """A loop through an alias and virtusertable is caught at run time."""
    policy = build(tmp_path, virtusertable="b@163.com a@sina-alias.com\n", aliases="a: b@163.com\n")
    result = rcpt(policy, "a@163.com")
    assert result.verdict.text.startswith("5.4.6 <a@163.com>")


def test_aliases_program_target_config_error(tmp_path: Path) -> None:
    """A '|program' target is refused naming file and line."""
    path = tmp_path / "aliases"
    text = "postmaster: root\nroot: user1\nlist: user1, |/usr/bin/procmail\n"
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases=text)
    assert e.value.problems == [
        f"{path}:3: program and file targets are not supported: '|/usr/bin/procmail'"
    ]


def test_aliases_file_and_include_targets_config_error(tmp_path: Path) -> None:
    """File, quoted program and :include: targets are refused, each on its own line."""
    path = tmp_path / "aliases"
    text = """\
        log: /var/log/mail.copy
        filter: user1,
            "|/usr/bin/spamc -e /usr/sbin/sendmail, -oi"
        team: :include:/etc/mail/team
    """
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases=text)
    assert e.value.problems == [
        f"{path}:1: program and file targets are not supported: '/var/log/mail.copy'",
        f"{path}:3: program and file targets are not supported:"
        " '|/usr/bin/spamc -e /usr/sbin/sendmail, -oi'",
        f"{path}:4: :include: targets are not supported: ':include:/etc/mail/team'",
    ]


def test_aliases_bad_entries_every_problem_reported(tmp_path: Path) -> None:
    """Every bad aliases entry is reported with file and line."""
    path = tmp_path / "aliases"
    text = (
        "  orphan\nuser@163.com: user1\nempty:\nroot: user1\nroot: user2\nnocolon user1\nx: a b\n"
    )
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases=text)
    assert e.value.problems == [
        f"{path}:1: continuation line without an alias before it",
        f"{path}:2: alias names are local parts, not addresses: 'user@163.com'"
        " (use virtusertable for addresses)",
        f"{path}:3: alias 'empty' has no targets",
        f"{path}:5: duplicate alias 'root' (first on line 4)",
        f"{path}:6: expected 'name: target, ...', got 'nocolon user1'",
        f"{path}:7: expected targets separated by commas, got 'a b'",
    ]


def test_aliases_loop_config_error(tmp_path: Path) -> None:
    """Aliases that expand into each other are refused at load."""
    path = tmp_path / "aliases"
    with pytest.raises(ConfigError) as e:
        build(tmp_path, aliases="a: b\nb: c, user1\nc: a\nd: d, user2\n")
    assert e.value.problems == [f"{path}:1: alias loop: a -> b -> c -> a"]


# ---------------------------------------------------------------------- reload


def test_reload_changed_access_applied_after_a_second(tmp_path: Path) -> None:
    """An edited access file takes effect at the first lookup a second later, not before."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    assert policy.check_connect(OUTSIDE, None) == Verdict()
    rewrite(tmp_path / "access", f"{OUTSIDE} REJECT\n127.0.0.1 RELAY\n")
    clock.advance(0.5)
    assert policy.check_connect(OUTSIDE, None) == Verdict()
    clock.advance(0.5)
    assert policy.check_connect(OUTSIDE, None).code == 550


def test_reload_replaced_file_new_inode_applied(tmp_path: Path) -> None:
    """A file replaced by rename (new inode, same size and mtime) is re-read."""
    clock = Clock()
    policy = build(tmp_path, aliases="postmaster: user1\n", clock=clock.seconds)
    path = tmp_path / "aliases"
    st = path.stat()
    new = tmp_path / "aliases.new"
    new.write_text("postmaster: user2\n")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)
    clock.advance(1)
    assert rcpt(policy, "postmaster@163.com") == local("user2@163.com")


def test_reload_virtusertable_and_local_host_names_applied(tmp_path: Path) -> None:
    """New local domains and virtual users are picked up."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    rewrite(tmp_path / "local-host-names", "163.com\nsina-alias.com\nnew.example\n")
    rewrite(tmp_path / "virtusertable", "hello@new.example user2@163.com\n")
    clock.advance(1)
    assert policy.is_local_domain("new.example")
    assert rcpt(policy, "hello@new.example") == local("user2@163.com")


def test_reload_broken_file_keeps_old_content_logged(tmp_path: Path, warnings: list[str]) -> None:
    """A reload that fails to parse keeps the previous rules and logs each problem once."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    path = tmp_path / "aliases"
    rewrite(path, "postmaster: root\nroot: |/bin/cat\nbad\n")
    clock.advance(1)
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    clock.advance(1)
    assert rcpt(policy, "postmaster@163.com") == local("user1@163.com")
    assert warnings == [
        f"{path}:2: program and file targets are not supported: '|/bin/cat'; keeping the previous content",
        f"{path}:3: expected 'name: target, ...', got 'bad'; keeping the previous content",
    ]


def test_reload_deleted_file_keeps_old_content_logged_once(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A file that disappears keeps its rules; the warning is logged once."""
    clock = Clock()
    policy = build(tmp_path, clock=clock.seconds)
    (tmp_path / "access").unlink()
    for _ in range(3):
        clock.advance(1)
        assert policy.check_connect("127.0.0.1", None) == Verdict(relay=True)
    assert warnings == [
        f"{tmp_path / 'access'}: cannot stat: No such file or directory; keeping the previous content"
    ]
