"""MAIL FROM: access From: entries, local sender domains, authenticated ownership."""

from __future__ import annotations

from pathlib import Path

from appliance.interfaces import Verdict
from tests.policy.helpers import (
    OUTSIDE,
    build,
    sender,
)

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
