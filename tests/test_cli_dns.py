"""`mailappliance dns records`: every record a mail domain needs, checked against our zones:
what we publish ourselves is ok, a zone file that says otherwise DIFFERS, a name in a zone
we do not serve is ELSEWHERE, each with the line to add; exit 1 when anything needs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CLI = str(Path(sys.executable).parent / "mailappliance")


def run(ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--config", str(ini), *args], capture_output=True, text=True, timeout=60
    )


def lab_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "etc", tmp_path / "etc")
    return tmp_path / "etc" / "163.ini"


def test_dns_records_all_ok_with_dkim_keys_published(tmp_path) -> None:
    ini = lab_copy(tmp_path)
    assert run(ini, "dkim", "init").returncode == 0
    r = run(ini, "dns", "records")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "163.com: the records it needs, checked against the zones we serve"
    # MX, A, PTR, SPF, 2 DKIM, DMARC, 6 SRV (RFC 6186), autoconfig and autodiscover
    assert sum(" ok " in f" {x} " for x in lines) == 15
    assert sum("._domainkey.163.com TXT" in x for x in lines) == 2
    assert sum("._tcp.163.com SRV" in x for x in lines) == 6
    assert any("autoconfig.163.com CNAME" in x for x in lines)


def test_dns_records_differs_and_elsewhere_with_lines_to_add(tmp_path) -> None:
    ini = lab_copy(tmp_path)
    zone = ini.parent / "163" / "163.com.zone"
    zone.write_text(zone.read_text() + '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n')
    text = ini.read_text().replace(
        "[zone:1.0.127.in-addr.arpa]\nfile = 163/1.0.127.in-addr.arpa.zone\n", ""
    )
    ini.write_text(text)
    r = run(ini, "dns", "records")
    assert r.returncode == 1
    out = r.stdout
    assert "DIFFERS   163.com TXT" in out
    assert 'serves:  "v=spf1 ip4:192.0.2.1 -all"' in out
    assert 'add to our zone: 163.com. IN TXT "v=spf1 mx -all"' in out
    assert "ELSEWHERE 1.1.0.127.in-addr.arpa PTR" in out
    assert "add in the zone that holds it: 1.1.0.127.in-addr.arpa. IN PTR mail.163.com." in out
    assert "2 record(s) need attention" in out
