"""The transport map file: entries, their lookup order, and every bad line reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from appliance.delivery.transport import Route, TransportMap
from appliance.errors import ConfigError

EXAMPLE = """\
# comment
sina.com        mail.sina.com:2525      # straight to that host, no MX lookup
.example.org    [relay.example.org]:587 # subdomains of example.org (not example.org itself)
.b.example.org  [inner.example.org]     # a closer parent wins
example.net     smarthost               # through the smarthost
example.com     mx                      # normal MX routing even when a smarthost is set

Upper.Example.  [127.0.0.22]:2525
v6.example      [2001:db8::25]:26
v6alt.example   [IPv6:2001:db8::26]
*               [127.0.0.21]:25           # default for every other domain
"""


def write(tmp_path: Path, text: str, name: str = "transport") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str = EXAMPLE) -> TransportMap:
    return TransportMap(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        TransportMap(path)
    return path, info.value.problems


def test_transport_exact_entry_is_direct_host_and_port(tmp_path: Path) -> None:
    """host:port names a direct route to that host and port."""
    assert load(tmp_path).lookup("sina.com") == Route("direct", "mail.sina.com", 2525)


def test_transport_bracketed_host_without_port_defaults_to_25(tmp_path: Path) -> None:
    """[host] is a direct route too; the port defaults to 25."""
    tm = load(tmp_path)
    assert tm.lookup("x.b.example.org") == Route("direct", "inner.example.org", 25)


def test_transport_parent_entry_matches_subdomains_not_itself(tmp_path: Path) -> None:
    """.example.org covers a.example.org and deeper names, but not example.org (-> *)."""
    tm = load(tmp_path)
    assert tm.lookup("a.example.org") == Route("direct", "relay.example.org", 587)
    assert tm.lookup("x.y.a.example.org") == Route("direct", "relay.example.org", 587)
    assert tm.lookup("example.org") == Route("direct", "127.0.0.21", 25)


def test_transport_closest_parent_wins(tmp_path: Path) -> None:
    """.b.example.org is closer to x.b.example.org than .example.org."""
    tm = load(tmp_path)
    assert tm.lookup("deep.x.b.example.org").host == "inner.example.org"
    assert tm.lookup("b.example.org").host == "relay.example.org"


def test_transport_smarthost_and_mx_words(tmp_path: Path) -> None:
    """The words smarthost and mx name those routes, with no host."""
    tm = load(tmp_path)
    assert tm.lookup("example.net") == Route("smarthost")
    assert tm.lookup("example.com") == Route("mx")


def test_transport_star_is_the_default(tmp_path: Path) -> None:
    """A domain no entry names gets the * entry; an IP literal host stays as written."""
    assert load(tmp_path).lookup("gmail.com") == Route("direct", "127.0.0.21", 25)


def test_transport_without_star_unknown_domain_is_none(tmp_path: Path) -> None:
    """Without a * entry an unlisted domain has no route from the map."""
    tm = load(tmp_path, "sina.com mx\n")
    assert tm.lookup("gmail.com") is None
    assert tm.lookup("mail.sina.com") is None


def test_transport_keys_are_case_insensitive(tmp_path: Path) -> None:
    """Keys and lookups ignore case and a trailing root dot."""
    tm = load(tmp_path)
    assert tm.lookup("upper.example") == Route("direct", "127.0.0.22", 2525)
    assert tm.lookup("SINA.COM.") == Route("direct", "mail.sina.com", 2525)
    assert tm.lookup("A.Example.ORG") == Route("direct", "relay.example.org", 587)


def test_transport_host_names_are_lower_cased(tmp_path: Path) -> None:
    """A host name in a value is stored lower-case, without its trailing dot."""
    tm = load(tmp_path, "sina.com Mail.SINA.com.:2525\nsohu.com MX\n")
    assert tm.lookup("sina.com") == Route("direct", "mail.sina.com", 2525)
    assert tm.lookup("sohu.com") == Route("mx")


def test_transport_ipv6_literals_in_brackets(tmp_path: Path) -> None:
    """[2001:db8::25]:26 and the SMTP spelling [IPv6:...] are IPv6 literal hosts."""
    tm = load(tmp_path)
    assert tm.lookup("v6.example") == Route("direct", "2001:db8::25", 26)
    assert tm.lookup("v6alt.example") == Route("direct", "2001:db8::26", 25)


def test_transport_idn_key_matches_either_spelling(tmp_path: Path) -> None:
    """A Unicode key is compared as its A-labels, so both spellings find it."""
    tm = load(tmp_path, "bücher.example mx\n")
    assert tm.lookup("xn--bcher-kva.example") == Route("mx")
    assert tm.lookup("BÜCHER.example") == Route("mx")


def test_transport_every_bad_line_reported_with_its_number(tmp_path: Path) -> None:
    """All bad lines at once, each as file:line: problem; good lines do not count."""
    path, found = problems(
        tmp_path,
        """\
        # header
        good.example    mx
        lonely.example
        three.example   a.example b.example
        bad_domain!     mx
        *.wild.example  mx
        port.example    host.example:99999
        postfix.example smtp:[relay.example]:25
        v6.example      2001:db8::1
        empty.example   host.example:
        good.example    smarthost
        """,
    )
    assert found == [
        f"{path}:3: expected 'domain next-hop', a next hop is missing: 'lonely.example'",
        f"{path}:4: expected 'domain next-hop', 3 fields: 'three.example   a.example b.example'",
        f"{path}:5: bad domain 'bad_domain!': expected a domain like example.com",
        f"{path}:6: bad domain '*.wild.example': write .wild.example for its subdomains",
        f"{path}:7: bad port in 'host.example:99999': expected 1-65535",
        f"{path}:8: expected host:port, [host]:port, 'smarthost' or 'mx', "
        "got 'smtp:[relay.example]:25'",
        f"{path}:9: expected host:port, [host]:port, 'smarthost' or 'mx', got '2001:db8::1'"
        " (an IPv6 address needs [brackets])",
        f"{path}:10: bad port in 'host.example:': expected 1-65535",
        f"{path}:11: duplicate entry for 'good.example' (first on line 2)",
    ]


def test_transport_non_utf8_line_reported(tmp_path: Path) -> None:
    """A line that is not UTF-8 is a problem on that line, not a traceback."""
    path = tmp_path / "transport"
    path.write_bytes(b"sina.com mx\ncaf\xe9.example mx\n")
    with pytest.raises(ConfigError) as info:
        TransportMap(path)
    assert info.value.problems == [f"{path}:2: not UTF-8 text"]


def test_transport_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that cannot be read is one ConfigError line naming it."""
    path = tmp_path / "nonexistent"
    with pytest.raises(ConfigError) as info:
        TransportMap(path)
    assert info.value.problems == [f"{path}: cannot read transport map: No such file or directory"]


def test_transport_comments_and_blank_lines_only_is_empty(tmp_path: Path) -> None:
    """A file of comments is a valid, empty map."""
    tm = load(tmp_path, "# nothing yet\n\n   # indented comment\n")
    assert len(tm) == 0
    assert tm.lookup("sina.com") is None
