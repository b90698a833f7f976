"""The two lab appliances answer Debian's dig as BIND would: aa, glue, PTR, negatives, forwarding."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) missing")


def dig(server, *args: str, timeout: float = 20) -> str:
    out = subprocess.run(
        ["dig", f"@{server.ip}", "-p", str(server.port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.stdout + out.stderr


def flags(text: str) -> set[str]:
    line = next(line for line in text.splitlines() if line.startswith(";; flags:"))
    return set(line.split(";")[2].split(":")[1].split())


def section(text: str, name: str) -> list[list[str]]:
    """Records of one section of dig's output, each split into fields."""
    lines = text.splitlines()
    try:
        start = lines.index(f";; {name} SECTION:") + 1
    except ValueError:
        return []
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line.split())
    return out


def status(text: str) -> str:
    return text.split("status: ", 1)[1].split(",", 1)[0]


def test_lab_mx_authoritative_with_glue(lab) -> None:
    """dig @mail.163.com 163.com MX: aa, MX 10 mail.163.com., its A in ADDITIONAL."""
    out = dig(lab["163"], "163.com", "MX")
    assert status(out) == "NOERROR"
    assert "aa" in flags(out)
    assert [r[3:] for r in section(out, "ANSWER")] == [["MX", "10", "mail.163.com."]]
    assert ["mail.163.com.", "86400", "IN", "A", "127.0.1.1"] in section(out, "ADDITIONAL")


def test_lab_a_records_of_tutorial_hosts(lab) -> None:
    """mail, smtp, pop3 and ns of sina.com resolve to 127.0.1.4 on the sina appliance."""
    for host in ("mail", "smtp", "pop3", "ns"):
        out = dig(lab["sina"], f"{host}.sina.com", "A", "+short")
        assert out.strip() == "127.0.1.4", host


def test_lab_ptr_reverse_zone(lab) -> None:
    """dig -x 127.0.1.4 answers mail.sina.com. from the reverse zone, authoritatively."""
    out = dig(lab["163"], "-x", "127.0.1.4")
    assert "aa" in flags(out)
    assert [r[3:] for r in section(out, "ANSWER")] == [["PTR", "mail.sina.com."]]


def test_lab_nxdomain_carries_soa(lab) -> None:
    """A missing name: NXDOMAIN, aa, and the SOA in AUTHORITY with the negative TTL."""
    out = dig(lab["163"], "nothere.163.com", "A")
    assert status(out) == "NXDOMAIN"
    assert "aa" in flags(out)
    (soa,) = section(out, "AUTHORITY")
    assert soa[0] == "163.com." and soa[3] == "SOA" and soa[1] == "86400"


def test_lab_forwarded_to_peer(lab) -> None:
    """dig @mail.163.com sina.com MX is forwarded to the sina appliance: answer, ra, no aa."""
    out = dig(lab["163"], "sina.com", "MX")
    assert status(out) == "NOERROR"
    assert "ra" in flags(out) and "aa" not in flags(out)
    assert [r[3:] for r in section(out, "ANSWER")] == [["MX", "10", "mail.sina.com."]]


def test_lab_unknown_name_ends_quickly_without_loop(lab) -> None:
    """A name neither appliance serves ends in SERVFAIL in well under the timeout, no loop."""
    start = time.monotonic()
    out = dig(lab["163"], "example.org", "A")
    elapsed = time.monotonic() - start
    assert status(out) == "SERVFAIL"
    assert elapsed < 1.5, elapsed
    out = dig(lab["sina"], "nothing.example.org", "A")
    assert status(out) == "SERVFAIL"


def test_lab_tcp_query(lab) -> None:
    """The same answer over TCP."""
    out = dig(lab["163"], "+tcp", "163.com", "MX")
    assert "aa" in flags(out)
    assert [r[3:] for r in section(out, "ANSWER")] == [["MX", "10", "mail.163.com."]]


def test_lab_axfr_refused(lab) -> None:
    """AXFR is refused to a client not listed in allow_transfer."""
    out = dig(lab["163"], "163.com", "AXFR")
    assert "Transfer failed" in out
    assert "SOA" not in "".join(line for line in out.splitlines() if not line.startswith(";"))


def test_lab_soa_and_ns_at_apex(lab) -> None:
    """The apex has the tutorial's SOA and NS."""
    out = dig(lab["sina"], "sina.com", "SOA", "+short")
    assert out.split()[:2] == ["ns.sina.com.", "root.sina.com."]
    assert dig(lab["sina"], "sina.com", "NS", "+short").strip() == "ns.sina.com."
