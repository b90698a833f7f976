"""Abuse limits over a Clock: connection rate per client, messages and recipients per
logged-in user per hour, greylisting (first try 450, a retry after the delay passes, a
client that passed often is let through) and its state across a restart."""

from __future__ import annotations

from twisted.internet.task import Clock

from appliance.filters.ratelimit import LimitSettings, RateLimitFilter, greylist_network, network_of
from appliance.interfaces import SessionFacts


def facts(ip: str = "192.0.2.7", user: str | None = None) -> SessionFacts:
    return SessionFacts("s", ip, None, "client.test", None, user)


def make(tmp_path, clock: Clock | None = None, **kw) -> RateLimitFilter:
    return RateLimitFilter(LimitSettings(**kw), clock or Clock(), tmp_path / "greylist.json")


def test_limits_networks() -> None:
    assert network_of("192.0.2.7") == "192.0.2.7"
    assert network_of("2001:db8::1") == "2001:db8::/64"
    assert greylist_network("192.0.2.7") == "192.0.2.0/24"


def test_limits_connect_rate_per_client_and_window(tmp_path) -> None:
    clock = Clock()
    f = make(tmp_path, clock, max_connect_rate=3)
    assert all(f.connect(facts()).ok for _ in range(3))
    v = f.connect(facts())
    assert v.code == 421 and v.text.startswith("4.7.0 Error: too many connections from 192.0.2.7")
    assert f.connect(facts("192.0.2.8")).ok  # another client
    clock.advance(61)
    assert f.connect(facts()).ok


def test_limits_messages_and_recipients_per_user_hour(tmp_path) -> None:
    clock = Clock()
    f = make(tmp_path, clock, max_messages_per_user_hour=2, max_recipients_per_user_hour=3)
    u = facts(user="user1@163.test")
    assert f.sender(u, "user1@163.test").ok and f.sender(u, "user1@163.test").ok
    v = f.sender(u, "user1@163.test")
    assert v.code == 450 and v.text.startswith("4.7.1 ")
    assert all(f.recipient(u, "x", f"r{i}@sina.test").ok for i in range(3))
    assert f.recipient(u, "x", "r9@sina.test").code == 452
    assert f.sender(facts(user="user2@163.test"), "user2@163.test").ok
    clock.advance(3601)
    assert f.sender(u, "user1@163.test").ok and f.recipient(u, "x", "r@sina.test").ok


def test_limits_greylist_first_try_later_retry_passes_then_client_allowed(tmp_path) -> None:
    clock = Clock()
    f = make(tmp_path, clock, greylist=True, greylist_delay=300, greylist_whitelist_after=2)
    v = f.recipient(facts(), "a@b.test", "u@163.test")
    assert v.code == 450 and v.text == "4.2.0 Greylisted, please try again in 300 seconds"
    clock.advance(100)
    assert f.recipient(facts(), "a@b.test", "u@163.test").code == 450  # too soon
    clock.advance(201)
    assert f.recipient(facts(), "a@b.test", "u@163.test").ok
    assert f.recipient(facts("192.0.2.99"), "a@b.test", "u@163.test").ok  # same /24
    # a second triplet passes too: the network is then let through without waiting
    assert f.recipient(facts(), "c@b.test", "u@163.test").code == 450
    clock.advance(301)
    assert f.recipient(facts(), "c@b.test", "u@163.test").ok
    assert f.recipient(facts(), "new@b.test", "v@163.test").ok
    # logged-in users are never greylisted
    assert f.recipient(facts("198.51.100.1", "u@163.test"), "u@163.test", "x@sina.test").ok


def test_limits_greylist_state_survives_restart(tmp_path) -> None:
    clock = Clock()
    f = make(tmp_path, clock, greylist=True, greylist_delay=300)
    f.recipient(facts(), "a@b.test", "u@163.test")
    clock.advance(10)  # the state is written a few seconds after a change
    assert "a@b.test" in (tmp_path / "greylist.json").read_text()
    clock.advance(300)
    g = make(tmp_path, clock, greylist=True, greylist_delay=300)
    assert g.recipient(facts(), "a@b.test", "u@163.test").ok  # it remembered the first try


def test_limits_greylist_unreadable_state_set_aside(tmp_path) -> None:
    (tmp_path / "greylist.json").write_text("{not json")
    f = make(tmp_path, greylist=True)
    assert f.triplets == {}
    assert (tmp_path / "greylist.corrupt").exists()
