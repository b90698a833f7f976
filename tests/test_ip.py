"""Client addresses: zone ids dropped, IPv4-mapped IPv6 compared as IPv4."""

from __future__ import annotations

import ipaddress

from appliance.ip import client_ip, in_networks

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def test_client_ip_mapped_ipv6_is_ipv4() -> None:
    """A dual-stack socket's ::ffff:127.0.1.1 counts as 127.0.1.1."""
    assert client_ip("::ffff:127.0.1.1") == ipaddress.ip_address("127.0.1.1")
    assert in_networks("::ffff:127.0.1.1", LOOPBACK)


def test_client_ip_zone_id_dropped_and_garbage_is_none() -> None:
    """fe80::1%lo parses; a non-address is None and in no network."""
    assert client_ip("fe80::1%lo") == ipaddress.ip_address("fe80::1")
    assert client_ip("unknown") is None
    assert not in_networks("unknown", LOOPBACK)
    assert not in_networks("192.0.2.1", LOOPBACK)
