"""Tests for appliance.dns.zonefile: a bad zone is a ZoneError naming file, line and problem."""

from __future__ import annotations

import pytest

from appliance.dns.zonefile import load_zone
from appliance.errors import ZoneError
from tests.dns.test_zonefile import HEAD, load_error

# (id, lines appended to HEAD, line of the error, message)
RECORD_ERRORS = [
    ("bad_ipv4", "www A 127.0.1.300", 5, "bad IPv4 address '127.0.1.300' in A record"),
    ("bad_ipv6", "www AAAA 2001:db8::g", 5, "bad IPv6 address '2001:db8::g' in AAAA record"),
    ("unknown_type", "www AAA 127.0.0.1", 5, "unknown record type 'AAA'"),
    ("missing_type", "www 300 IN", 5, "missing record type"),
    ("close_paren_alone", "www A 127.0.0.1 )", 5, "unbalanced parentheses"),
    (
        "open_paren_unclosed",
        'x A 127.0.0.1\nwww TXT ( "a"\nmail A 127.0.0.2',
        6,
        "unbalanced parentheses",
    ),
    ("unterminated_quote", 'www TXT "abc', 5, "unterminated quoted string"),
    ("quote_across_lines", 'www TXT ( "abc\ndef" )', 5, "unterminated quoted string"),
    ("mx_preference_word", "@ MX x mail", 5, "MX preference must be 0-65535, got 'x'"),
    ("mx_preference_big", "@ MX 65536 mail", 5, "MX preference must be 0-65535, got '65536'"),
    ("mx_no_rdata", "@ MX", 5, "missing rdata for MX record"),
    ("mx_no_exchange", "@ MX 10", 5, "missing exchange in MX record"),
    ("extra_rdata", "www A 127.0.0.1 127.0.0.2", 5, "unexpected '127.0.0.2' after A record data"),
    ("quoted_name", '@ NS "ns"', 5, 'NS name server must not be a quoted string, got "ns"'),
    ("srv_port", "_sip._tcp SRV 0 5 70000 sip", 5, "SRV port must be 0-65535, got '70000'"),
    ("caa_flags", '@ CAA 256 issue "ca.example"', 5, "CAA flags must be 0-255, got '256'"),
    (
        "caa_tag",
        '@ CAA 0 is-sue "ca.example"',
        5,
        "bad CAA tag 'is-sue': use letters and digits only",
    ),
    ("txt_too_long", 'txt TXT "' + "x" * 256 + '"', 5, "TXT string longer than 255 bytes"),
    (
        "txt_bad_escape",
        r'txt TXT "\300"',
        5,
        r"bad escape '\300': use \DDD with a byte value 000-255",
    ),
    (
        "out_of_zone_owner",
        "www.sina.com. A 127.0.1.4",
        5,
        "out-of-zone owner 'www.sina.com' in zone 163.com",
    ),
    ("long_label", "x" * 64 + " A 127.0.0.1", 5, "label longer than 63 characters"),
    ("long_name", ".".join(["x" * 60] * 5) + " A 127.0.0.1", 5, "name longer than 255 bytes"),
    ("empty_label", "a..b A 127.0.0.1", 5, "empty label in name 'a..b'"),
    ("escaped_dot", r"w\.x A 127.0.0.1", 5, r"escaped dot in name 'w\.x' is not supported"),
    ("class_ch", "www CH A 127.0.0.1", 5, "class 'CH' is not supported, only IN"),
    ("class_hs_after_ttl", "www 300 HS TXT x", 5, "class 'HS' is not supported, only IN"),
    ("bad_ttl", "www 3x A 127.0.0.1", 5, "TTL must be a time like 3600, 1h or 1w2d, got '3x'"),
    ("ttl_unit_missing", "$TTL 1h30", 5, "TTL must be a time like 3600, 1h or 1w2d, got '1h30'"),
    (
        "ttl_too_big",
        "www 2147483648 A 127.0.0.1",
        5,
        "TTL must be at most 2147483647 seconds, got '2147483648'",
    ),
    ("unknown_directive", "$FOO bar", 5, "unknown directive '$FOO'"),
    ("generate_directive", "$GENERATE 1-2 h$ A 127.0.0.$", 5, "unsupported directive '$GENERATE'"),
    (
        "indented_directive",
        "  $TTL 1h",
        5,
        "directive '$TTL' must start at the beginning of the line",
    ),
    (
        "cname_after_data",
        "www A 127.0.0.1\nwww CNAME mail",
        6,
        "CNAME and other data at 'www.163.com'",
    ),
    (
        "data_after_cname",
        "www CNAME mail\nwww MX 10 mail",
        6,
        "CNAME and other data at 'www.163.com'",
    ),
    ("two_cnames", "www CNAME a\nwww CNAME b", 6, "more than one CNAME record at 'www.163.com'"),
    ("soa_not_at_apex", "sub SOA ns root 1 1 1 1 1", 5, "SOA record must be at the zone apex"),
    ("second_soa", "@ SOA ns root 2 1 1 1 1", 5, "more than one SOA record"),
]


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [pytest.param(extra, line, message, id=name) for name, extra, line, message in RECORD_ERRORS],
)
def test_load_zone_bad_input_error_names_file_line_and_problem(tmp_path, extra, line, message):
    """Each mistake is a ZoneError 'path:line: message' pointing at the record's first line."""
    path, got = load_error(tmp_path, HEAD + extra + "\n")
    assert got == f"{path}:{line}: {message}"


def test_load_zone_bad_soa_serial_error(tmp_path):
    """The SOA serial is a plain 32-bit number: no units, no letters."""
    path, message = load_error(tmp_path, HEAD.replace("( 1 ", "( 1x "))
    assert message == f"{path}:2: SOA serial must be 0-4294967295, got '1x'"


def test_load_zone_error_in_multiline_record_reports_its_first_line(tmp_path):
    """A bad field on a continuation line is reported at the line the record starts on."""
    path, message = load_error(
        tmp_path,
        """\
$TTL 1D
@       IN SOA  ns.163.com. root.163.com. (
                1       ; serial
                3H      ; refresh
                15Q     ; retry
                1W 1D )
""",
    )
    assert message == f"{path}:2: SOA retry must be a time like 3600, 1h or 1w2d, got '15Q'"


def test_load_zone_no_soa_error(tmp_path):
    """A zone without an SOA at its apex is rejected as a whole (line 0)."""
    path, message = load_error(tmp_path, "$TTL 1D\n@ NS ns\nns A 127.0.1.1\n")
    assert message == f"{path}:0: no SOA record at the zone apex"


def test_load_zone_no_ns_error(tmp_path):
    """A zone without an NS record at its apex is rejected as a whole (line 0)."""
    path, message = load_error(tmp_path, HEAD.replace("        IN NS   ns\n", ""))
    assert message == f"{path}:0: no NS record at the zone apex"


def test_load_zone_blank_owner_on_first_record_error(tmp_path):
    """A first record that starts with whitespace has no owner to repeat."""
    path, message = load_error(tmp_path, "$TTL 1D\n  NS ns\n")
    assert message == f"{path}:2: no owner name: the first record starts with whitespace"


def test_load_zone_record_without_any_ttl_error(tmp_path):
    """Without $TTL, a record before any TTL was written is rejected, as BIND does."""
    path, message = load_error(tmp_path, "@ NS ns\n@ SOA ns root 1 1 1 1 1\n")
    assert message == (
        f"{path}:1: no TTL for this record: put $TTL at the top of the file or give it a TTL"
    )


def test_load_zone_unreadable_file_error(tmp_path):
    """A zone file that cannot be read is a ZoneError at line 0 with the system's reason."""
    path = tmp_path / "missing.zone"
    with pytest.raises(ZoneError) as info:
        load_zone(path, "163.com")
    assert str(info.value) == f"{path}:0: cannot read zone file: No such file or directory"
    assert (info.value.path, info.value.line) == (str(path), 0)
