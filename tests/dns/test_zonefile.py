"""Tests for appliance.dns.zonefile: BIND master files into Twisted records, BIND's way."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from twisted.names import dns

from appliance.dns.zonefile import CAA, load_zone
from appliance.errors import ZoneError

REPO = Path(__file__).resolve().parents[2]

# A minimal valid 163.com zone: four lines, so a record appended to it is on line 5.
HEAD = """\
$TTL 1D
@       IN SOA  ns.163.com. root.163.com. ( 1 3H 15M 1W 1D )
        IN NS   ns
ns      IN A    127.0.1.1
"""


def write(directory: Path, text: str, name: str = "163.com.zone") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, origin: str = "163.com") -> list[dns.RRHeader]:
    return load_zone(write(tmp_path, text), origin)


def load_error(tmp_path: Path, text: str, origin: str = "163.com") -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ZoneError) as info:
        load_zone(path, origin)
    return path, str(info.value)


def find(records: list[dns.RRHeader], name: str, rtype: int) -> list[dns.RRHeader]:
    return [rr for rr in records if rr.name.name == name.encode() and rr.type == rtype]


def one(records: list[dns.RRHeader], name: str, rtype: int) -> dns.RRHeader:
    found = find(records, name, rtype)
    assert len(found) == 1, (name, rtype, records)
    return found[0]


def target(rr: dns.RRHeader) -> bytes:
    """The domain name in a single-name record (NS, CNAME, PTR, MX)."""
    return rr.payload.name.name


# --- basic shape ------------------------------------------------------------------------


def test_load_zone_lab_style_zone_returns_authoritative_headers(tmp_path):
    """Every record comes back as an authoritative IN RRHeader with bytes names and matching TTLs."""
    records = load(
        tmp_path,
        HEAD
        + """\
@       IN MX   10 mail
mail    IN A    127.0.1.1
""",
    )
    assert [(rr.name.name, rr.type) for rr in records] == [
        (b"163.com", dns.SOA),
        (b"163.com", dns.NS),
        (b"ns.163.com", dns.A),
        (b"163.com", dns.MX),
        (b"mail.163.com", dns.A),
    ]
    for rr in records:
        assert isinstance(rr, dns.RRHeader)
        assert isinstance(rr.name.name, bytes)
        assert rr.cls == dns.IN
        assert rr.auth is True
        assert rr.ttl == 86400
        assert rr.payload.ttl == rr.ttl
        assert rr.payload.TYPE in (rr.type, None)


def test_load_zone_origin_with_trailing_dot_gives_same_records(tmp_path):
    """'163.com' and '163.com.' name the same zone."""
    path = write(tmp_path, HEAD)
    assert load_zone(path, "163.com.") == load_zone(str(path), "163.com")


def test_load_zone_owner_case_kept_and_origin_as_given(tmp_path):
    """Owners keep the case written in the file; the appended origin keeps the case it was given in."""
    records = load(tmp_path, HEAD + "WWW A 127.0.1.2\nFtp.163.COM. A 127.0.1.3\n", origin="163.Com")
    assert [rr.name.name for rr in records[3:]] == [b"WWW.163.Com", b"Ftp.163.COM"]


# --- the Twisted BindAuthority bugs -----------------------------------------------------


def test_load_zone_relative_rdata_names_qualified_with_origin(tmp_path):
    """Relative names in rdata get the origin appended (Twisted made 'MX 20 mx2' into 'mx2.')."""
    records = load(
        tmp_path,
        """\
$TTL 1h
@       IN SOA  ns root ( 1 3H 15M 1W 1D )
        IN NS   ns
        IN MX   10 mail
        IN MX   20 mx2
ns      IN A    127.0.1.1
mail    IN A    127.0.1.1
mx2     IN A    127.0.1.2
www     IN CNAME mail
_imap._tcp IN SRV 0 1 143 mail
""",
    )
    soa = one(records, "163.com", dns.SOA).payload
    assert (soa.mname.name, soa.rname.name) == (b"ns.163.com", b"root.163.com")
    assert target(one(records, "163.com", dns.NS)) == b"ns.163.com"
    assert sorted(target(rr) for rr in find(records, "163.com", dns.MX)) == [
        b"mail.163.com",
        b"mx2.163.com",
    ]
    assert target(one(records, "www.163.com", dns.CNAME)) == b"mail.163.com"
    assert one(records, "_imap._tcp.163.com", dns.SRV).payload.target.name == b"mail.163.com"


def test_load_zone_blank_owner_repeats_previous_owner(tmp_path):
    """A line starting with whitespace belongs to the previous owner (Twisted put it at the apex)."""
    records = load(
        tmp_path,
        HEAD
        + """\
mail    IN A    127.0.1.1
        IN AAAA ::1
        IN TXT  "v=spf1 -all"
""",
    )
    assert [rr.type for rr in find(records, "mail.163.com", dns.AAAA)] == [dns.AAAA]
    assert len(find(records, "mail.163.com", dns.TXT)) == 1
    assert find(records, "163.com", dns.AAAA) == []
    assert find(records, "163.com", dns.TXT) == []


def test_load_zone_numeric_owner_in_reverse_zone_is_owner_not_ttl(tmp_path):
    """'1 IN PTR x' in a reverse zone is owner 1 (Twisted read 1 as the TTL)."""
    records = load(
        tmp_path,
        """\
$TTL 1D
@       IN SOA  ns.163.com. root.163.com. ( 2026112901 3H 15M 1W 1D )
        IN NS   ns.163.com.
1       IN PTR  mail.163.com.
4       PTR     mail.sina.com.
5       300 IN PTR  smtp.163.com.
""",
        origin="1.0.127.in-addr.arpa",
    )
    ptrs = [(rr.name.name, rr.ttl, target(rr)) for rr in records if rr.type == dns.PTR]
    assert ptrs == [
        (b"1.1.0.127.in-addr.arpa", 86400, b"mail.163.com"),
        (b"4.1.0.127.in-addr.arpa", 86400, b"mail.sina.com"),
        (b"5.1.0.127.in-addr.arpa", 300, b"smtp.163.com"),
    ]


def test_load_zone_one_line_parenthesised_soa_parses(tmp_path):
    """An SOA with '( ... )' on a single line parses (Twisted raised TypeError)."""
    records = load(tmp_path, HEAD)
    soa = one(records, "163.com", dns.SOA).payload
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        1,
        10800,
        900,
        604800,
        86400,
    )


def test_load_zone_include_reads_file_relative_to_including_file(tmp_path, monkeypatch):
    """$INCLUDE finds its file next to the including file, whatever the working directory."""
    zones = tmp_path / "zones"
    write(zones, "www A 127.0.1.2\n", name="inc/hosts.zone")
    path = write(zones, HEAD + "$INCLUDE inc/hosts.zone\n")
    monkeypatch.chdir(tmp_path)
    records = load_zone(path, "163.com")
    assert one(records, "www.163.com", dns.A).payload.dottedQuad() == "127.0.1.2"


# --- directives -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3600", 3600),
        ("1h", 3600),
        ("2w", 1209600),
        ("1d", 86400),
        ("30m", 1800),
        ("10s", 10),
        ("1h30m", 5400),
        ("1W2D", 777600),
        ("1H", 3600),
    ],
)
def test_load_zone_ttl_directive_time_units_converted(tmp_path, value, seconds):
    """$TTL accepts seconds and w/d/h/m/s units, combined and in either case."""
    records = load(tmp_path, HEAD.replace("$TTL 1D", f"$TTL {value}"))
    assert {rr.ttl for rr in records} == {seconds}
    assert {rr.payload.ttl for rr in records} == {seconds}


def test_load_zone_soa_timers_accept_time_units(tmp_path):
    """SOA refresh/retry/expire/minimum take time units; the serial is a plain number."""
    records = load(tmp_path, HEAD.replace("( 1 3H 15M 1W 1D )", "( 4294967295 1h30m 10S 2w 3600 )"))
    soa = one(records, "163.com", dns.SOA).payload
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        4294967295,
        5400,
        10,
        1209600,
        3600,
    )


def test_load_zone_origin_directive_relative_and_absolute(tmp_path):
    """$ORIGIN without a trailing dot is relative to the current origin; owners and rdata follow it."""
    records = load(
        tmp_path,
        HEAD
        + """\
$ORIGIN lab
host    A       127.0.1.5
alias   CNAME   host
$ORIGIN 163.com.
back    A       127.0.1.6
""",
    )
    assert one(records, "host.lab.163.com", dns.A)
    assert target(one(records, "alias.lab.163.com", dns.CNAME)) == b"host.lab.163.com"
    assert one(records, "back.163.com", dns.A)


def test_load_zone_at_sign_is_current_origin_in_owner_and_rdata(tmp_path):
    """'@' means the current origin wherever a name goes."""
    records = load(
        tmp_path,
        HEAD
        + """\
@       MX      10 @
$ORIGIN lab.163.com.
@       A       127.0.1.7
alias   CNAME   @
""",
    )
    assert target(one(records, "163.com", dns.MX)) == b"163.com"
    assert one(records, "lab.163.com", dns.A)
    assert target(one(records, "alias.lab.163.com", dns.CNAME)) == b"lab.163.com"


def test_load_zone_include_origin_argument_and_changes_stay_inside(tmp_path):
    """$INCLUDE's origin argument applies inside it; its $ORIGIN and owners do not leak back."""
    write(
        tmp_path,
        """\
        IN A    127.0.2.1
host    IN A    127.0.2.2
$ORIGIN deeper
x       IN A    127.0.2.3
""",
        name="lab.inc",
    )
    records = load(
        tmp_path,
        HEAD
        + """\
mail    IN A    127.0.1.1
$INCLUDE lab.inc lab
        IN AAAA ::1
after   IN A    127.0.1.9
""",
    )
    # the included file's first blank-owner line continues the including file's owner
    assert [rr.payload.dottedQuad() for rr in find(records, "mail.163.com", dns.A)] == [
        "127.0.1.1",
        "127.0.2.1",
    ]
    assert one(records, "host.lab.163.com", dns.A)
    assert one(records, "x.deeper.lab.163.com", dns.A)
    # back in the parent: its own owner and origin again
    assert one(records, "mail.163.com", dns.AAAA)
    assert one(records, "after.163.com", dns.A)


def test_load_zone_include_ten_levels_deep_loads(tmp_path):
    """Ten nested $INCLUDEs are allowed."""
    for level in range(1, 11):
        nxt = f"$INCLUDE level{level + 1}.inc\n" if level < 10 else ""
        write(tmp_path, f"h{level} A 127.0.3.{level}\n{nxt}", name=f"level{level}.inc")
    records = load(tmp_path, HEAD + "$INCLUDE level1.inc\n")
    assert one(records, "h10.163.com", dns.A)


def test_load_zone_include_eleven_levels_deep_error(tmp_path):
    """An eleventh nested $INCLUDE is an error at the line that asks for it."""
    for level in range(1, 12):
        nxt = f"$INCLUDE level{level + 1}.inc\n" if level < 11 else ""
        write(tmp_path, f"h{level} A 127.0.3.{level}\n{nxt}", name=f"level{level}.inc")
    _, message = load_error(tmp_path, HEAD + "$INCLUDE level1.inc\n")
    assert message == f"{tmp_path / 'level10.inc'}:2: $INCLUDE nested more than 10 levels deep"


def test_load_zone_include_loop_error(tmp_path):
    """A file that includes itself, directly or not, is an error naming the looping line."""
    write(tmp_path, "b A 127.0.4.1\n$INCLUDE 163.com.zone\n", name="b.inc")
    path, message = load_error(tmp_path, HEAD + "$INCLUDE b.inc\n")
    assert message == f"{tmp_path / 'b.inc'}:2: $INCLUDE loop: '163.com.zone' is already being read"


def test_load_zone_missing_include_file_error_names_including_line(tmp_path):
    """A missing $INCLUDE file is reported at the including file's line."""
    path, message = load_error(tmp_path, HEAD + "$INCLUDE nope.zone\n")
    assert message == f"{path}:5: cannot read included file 'nope.zone': No such file or directory"


# --- parentheses, TTL and class ---------------------------------------------------------


def test_load_zone_multiline_parentheses_with_comments_join_lines(tmp_path):
    """'( ... )' spans lines; ';' comments are dropped everywhere, also inside the parentheses."""
    records = load(
        tmp_path,
        """\
; zone 163.com (with a comment that has parentheses)
$TTL 1D ; one day
@       IN SOA  ns.163.com. root.163.com. (
                2026112901 ; serial
                3H         ; refresh (three hours)
                15M        ; retry
                1W         ; expire
                1D )       ; minimum (negative answers)
        IN NS   ns ; the name server
ns      IN A    127.0.1.1
txt     IN TXT  ( "first"   ; a comment between strings
                  "second" )
""",
    )
    soa = one(records, "163.com", dns.SOA).payload
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        2026112901,
        10800,
        900,
        604800,
        86400,
    )
    assert one(records, "txt.163.com", dns.TXT).payload.data == [b"first", b"second"]
    assert len(records) == 4


def test_load_zone_crlf_line_endings_and_bom_parse(tmp_path):
    """A zone saved on Windows (CRLF, UTF-8 BOM) reads the same as a Unix one."""
    unix = load(tmp_path, HEAD + "mail A 127.0.1.2\n     AAAA ::1\n")
    path = tmp_path / "windows.zone"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + (HEAD + "mail A 127.0.1.2\n     AAAA ::1\n").replace("\n", "\r\n").encode()
    )
    assert load_zone(path, "163.com") == unix


def test_load_zone_ttl_and_class_in_either_order_or_absent(tmp_path):
    """TTL and class are optional and may come in either order before the type."""
    records = load(
        tmp_path,
        HEAD
        + """\
w1 300 IN A 127.0.1.1
w2 IN 300 A 127.0.1.2
w3 A 127.0.1.3
w4 IN A 127.0.1.4
w5 in 1h a 127.0.1.5
""",
    )
    got = [(rr.name.name, rr.ttl, rr.payload.dottedQuad()) for rr in records[3:]]
    assert got == [
        (b"w1.163.com", 300, "127.0.1.1"),
        (b"w2.163.com", 300, "127.0.1.2"),
        (b"w3.163.com", 86400, "127.0.1.3"),
        (b"w4.163.com", 86400, "127.0.1.4"),
        (b"w5.163.com", 3600, "127.0.1.5"),
    ]


def test_load_zone_no_ttl_directive_uses_soa_minimum(tmp_path):
    """Without $TTL, the SOA and records without a TTL get the SOA minimum, as in BIND."""
    records = load(tmp_path, HEAD.replace("$TTL 1D\n", "").replace("1W 1D", "1W 2h"))
    assert [rr.ttl for rr in records] == [7200, 7200, 7200]


def test_load_zone_soa_explicit_ttl_without_ttl_directive_carries_on(tmp_path):
    """Without $TTL, a record without TTL takes the last TTL written (BIND's RFC 1035 rule)."""
    records = load(
        tmp_path,
        """\
@       600 IN SOA  ns root ( 1 3H 15M 1W 300 )
        IN NS   ns
ns      120 IN A    127.0.1.1
mail    IN A    127.0.1.2
""",
    )
    assert [rr.ttl for rr in records] == [600, 600, 120, 120]


def test_load_zone_explicit_ttl_overrides_ttl_directive_for_one_record(tmp_path):
    """An explicit TTL applies to its own record only when $TTL is set."""
    records = load(tmp_path, HEAD + "a 60 A 127.0.1.2\nb A 127.0.1.3\n$TTL 5m\nc A 127.0.1.4\n")
    assert [rr.ttl for rr in records[3:]] == [60, 86400, 300]


def test_load_zone_rrset_ttls_unified_to_first(tmp_path):
    """Records of one RRset share the first record's TTL (RFC 2181), as BIND does."""
    records = load(tmp_path, HEAD + "www 300 A 127.0.1.2\nwww 600 A 127.0.1.3\n")
    assert [(rr.ttl, rr.payload.ttl) for rr in find(records, "www.163.com", dns.A)] == [
        (300, 300),
        (300, 300),
    ]


def test_load_zone_duplicate_records_dropped(tmp_path):
    """An exact duplicate record (names compared case-insensitively) is dropped, as in BIND."""
    records = load(tmp_path, HEAD + "@ MX 10 mail\n@ MX 10 MAIL\n@ MX 20 mail\n")
    assert [rr.payload.preference for rr in find(records, "163.com", dns.MX)] == [10, 20]


# --- record types -----------------------------------------------------------------------


EVERY_TYPE = (
    HEAD
    + """\
@       IN MX    10 mail
mail    IN A     127.0.1.1
        IN AAAA  2001:db8::1
www     IN CNAME mail
1.1     IN PTR   mail.163.com.
txt     IN TXT   "v=spf1 a mx -all" "second string"
_imap._tcp IN SRV 0 5 143 mail
@       IN CAA   0 issue "letsencrypt.org"
@       IN CAA   128 iodef "mailto:root@163.com"
"""
)


def test_load_zone_every_type_builds_twisted_record(tmp_path):
    """Each supported type becomes the matching Twisted record with the right fields."""
    records = load(tmp_path, EVERY_TYPE)
    assert isinstance(one(records, "163.com", dns.SOA).payload, dns.Record_SOA)
    assert isinstance(one(records, "163.com", dns.NS).payload, dns.Record_NS)
    mx = one(records, "163.com", dns.MX).payload
    assert (mx.preference, mx.name.name) == (10, b"mail.163.com")
    assert one(records, "mail.163.com", dns.A).payload == dns.Record_A("127.0.1.1", ttl=86400)
    aaaa = one(records, "mail.163.com", dns.AAAA).payload
    assert aaaa == dns.Record_AAAA("2001:db8::1", ttl=86400)
    assert one(records, "www.163.com", dns.CNAME).payload == dns.Record_CNAME(
        b"mail.163.com", ttl=86400
    )
    assert target(one(records, "1.1.163.com", dns.PTR)) == b"mail.163.com"
    srv = one(records, "_imap._tcp.163.com", dns.SRV).payload
    assert (srv.priority, srv.weight, srv.port, srv.target.name) == (0, 5, 143, b"mail.163.com")
    caa = find(records, "163.com", CAA)
    assert [type(rr.payload) for rr in caa] == [dns.UnknownRecord, dns.UnknownRecord]


def test_load_zone_caa_encoded_in_rfc8659_wire_format(tmp_path):
    """CAA rdata is flags, tag length, tag and value, carried as an UnknownRecord of type 257."""
    records = load(tmp_path, EVERY_TYPE)
    assert [rr.payload.data for rr in find(records, "163.com", CAA)] == [
        b"\x00\x05issueletsencrypt.org",
        b"\x80\x05iodefmailto:root@163.com",
    ]


def test_load_zone_every_type_survives_dns_wire_round_trip(tmp_path):
    """All records, CAA included, encode into a DNS message and decode back unchanged."""
    records = load(tmp_path, EVERY_TYPE)
    assert {rr.type for rr in records} == {
        dns.SOA,
        dns.NS,
        dns.A,
        dns.AAAA,
        dns.MX,
        dns.CNAME,
        dns.PTR,
        dns.TXT,
        dns.SRV,
        CAA,
    }
    message = dns.Message(auth=1)
    message.answers = list(records)
    decoded = dns.Message()
    decoded.fromStr(message.toStr())
    assert decoded.answers == records
    for before, after in zip(records, decoded.answers, strict=True):
        assert after.name.name.lower() == before.name.name.lower()
        assert after.payload.ttl == before.payload.ttl


def test_load_zone_txt_with_spaces_kept_as_one_string(tmp_path):
    """A quoted TXT string with spaces stays one string (Twisted split it at the spaces)."""
    records = load(tmp_path, HEAD + 'txt TXT "v=spf1 a mx -all"\n')
    assert one(records, "txt.163.com", dns.TXT).payload.data == [b"v=spf1 a mx -all"]


def test_load_zone_txt_several_strings_kept_separate(tmp_path):
    """Several quoted strings make several character-strings, in order."""
    records = load(tmp_path, HEAD + 'txt TXT "one" "two words" ""\n')
    assert one(records, "txt.163.com", dns.TXT).payload.data == [b"one", b"two words", b""]


def test_load_zone_txt_escapes_and_semicolons_decoded(tmp_path):
    r"""Inside quotes \" \\ and \DDD are escapes and ';' is text, not a comment."""
    records = load(
        tmp_path, HEAD + r'txt TXT "a;b" "say \"hi\"" "back\\slash" "\065\066C" ; real' + "\n"
    )
    assert one(records, "txt.163.com", dns.TXT).payload.data == [
        b"a;b",
        b'say "hi"',
        b"back\\slash",
        b"ABC",
    ]


def test_load_zone_txt_unquoted_word_is_one_string(tmp_path):
    """Unquoted words are one string each."""
    records = load(tmp_path, HEAD + "txt TXT hello world\n")
    assert one(records, "txt.163.com", dns.TXT).payload.data == [b"hello", b"world"]


def test_load_zone_txt_string_of_255_bytes_accepted(tmp_path):
    """The longest character-string, 255 bytes, is fine."""
    records = load(tmp_path, HEAD + f'txt TXT "{"x" * 255}"\n')
    assert one(records, "txt.163.com", dns.TXT).payload.data == [b"x" * 255]


# --- real zones and BIND as the reference -----------------------------------------------

LAB_ZONES = [
    ("163.com", "etc/163/163.com.zone"),
    ("1.0.127.in-addr.arpa", "etc/163/1.0.127.in-addr.arpa.zone"),
    ("sina.com", "etc/sina/sina.com.zone"),
    ("1.0.127.in-addr.arpa", "etc/sina/1.0.127.in-addr.arpa.zone"),
]


@pytest.mark.parametrize(("origin", "relpath"), LAB_ZONES)
def test_load_zone_lab_zones_load(origin, relpath):
    """The lab's shipped zone files load, with SOA and NS at the apex and in-zone owners."""
    path = REPO / relpath
    if not path.exists():
        pytest.skip(f"{relpath} not written yet")
    records = load_zone(path, origin)
    apex = origin.encode()
    assert one(records, origin, dns.SOA)
    assert find(records, origin, dns.NS)
    for rr in records:
        assert rr.name.name == apex or rr.name.name.endswith(b"." + apex)
        if rr.type == dns.PTR:
            assert rr.name.name.split(b".")[0].isdigit()


def _name_text(name: bytes) -> str:
    return name.decode() + "." if name else "."


def _string_text(data: bytes) -> str:
    """A character-string the way named-checkzone prints it."""
    out = []
    for b in data:
        if b in b'"\\':
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def _rdata_text(rr: dns.RRHeader) -> str:
    """Our record's rdata in BIND presentation format."""
    p = rr.payload
    if rr.type == dns.SOA:
        fields = (p.serial, p.refresh, p.retry, p.expire, p.minimum)
        return " ".join([_name_text(p.mname.name), _name_text(p.rname.name), *map(str, fields)])
    if rr.type in (dns.NS, dns.CNAME, dns.PTR):
        return _name_text(p.name.name)
    if rr.type == dns.MX:
        return f"{p.preference} {_name_text(p.name.name)}"
    if rr.type == dns.A:
        return p.dottedQuad()
    if rr.type == dns.AAAA:
        return str(ipaddress.IPv6Address(p.address))
    if rr.type == dns.TXT:
        return " ".join(_string_text(s) for s in p.data)
    if rr.type == dns.SRV:
        return f"{p.priority} {p.weight} {p.port} {_name_text(p.target.name)}"
    if rr.type == CAA:
        flags, length = p.data[0], p.data[1]
        tag, value = p.data[2 : 2 + length], p.data[2 + length :]
        return f"{flags} {tag.decode()} {_string_text(value)}"
    raise AssertionError(rr)


VARIED_ZONE = """\
; a zone that uses most of the syntax, for comparison with named-checkzone
$TTL 2h
@   IN  SOA ns root (
            2026112901  ; serial
            3H 15M      ; refresh, retry
            1W 1D )     ; expire, minimum
        IN  NS  ns
        IN  NS  ns.sina.com.
    300 IN  MX  10 mail
        MX  20 mx2
        TXT "v=spf1 a mx -all" "a;b \\"quoted\\""
        CAA 0 issue "letsencrypt.org"
ns      IN 600 A 127.0.1.1
mail    A       127.0.1.1
        AAAA    2001:db8::0:1
mx2     1h A    127.0.1.2
www     CNAME   mail
smtp    CNAME   mail.163.com.
*.wild  A       127.0.1.3
_imap._tcp SRV  0 5 143 mail
4.1     PTR     mail.sina.com.
$ORIGIN lab
host    A       127.0.1.4
alias   CNAME   host
$ORIGIN 163.com.
$INCLUDE extra.inc sub
back    A       127.0.1.6
"""

EXTRA_INC = """\
@       A       127.0.1.5
        MX      5 @
deep    TXT     word "two words"
"""


def _named_checkzone_records(path: Path, origin: str) -> set[tuple[str, int, str, str]]:
    result = subprocess.run(
        ["named-checkzone", "-D", "-o", "-", origin, str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,  # BIND reads $INCLUDE files relative to its working directory
        check=True,
    )
    records = set()
    for line in result.stdout.splitlines():
        owner, ttl, cls, rtype, rdata = line.split(None, 4)
        assert cls == "IN"
        records.add((owner.lower(), int(ttl), rtype, rdata.strip().lower()))
    return records


@pytest.mark.skipif(shutil.which("named-checkzone") is None, reason="bind9 not installed")
def test_load_zone_matches_named_checkzone(tmp_path):
    """Owners, TTLs, types and rdata agree with BIND's canonical dump of the same zone."""
    write(tmp_path, EXTRA_INC, name="extra.inc")
    path = write(tmp_path, VARIED_ZONE)
    ours = {
        (
            _name_text(rr.name.name).lower(),
            rr.ttl,
            dns.QUERY_TYPES.get(rr.type, "CAA"),
            _rdata_text(rr).lower(),
        )
        for rr in load_zone(path, "163.com")
    }
    bind = _named_checkzone_records(path, "163.com")
    assert ours == bind
    assert {rtype for _, _, rtype, _ in bind} >= {
        "SOA",
        "NS",
        "MX",
        "A",
        "AAAA",
        "CNAME",
        "PTR",
        "TXT",
        "SRV",
        "CAA",
    }
