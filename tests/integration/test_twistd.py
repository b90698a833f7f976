"""twistd start-up as the admin sees it: bad config, busy port, first-start certificate."""

from __future__ import annotations

import smtplib
import socket
import stat
import subprocess
from pathlib import Path

from tests.integration.conftest import TWISTD, make_lab
from tests.integration.test_smtp_lab import wait_for


def run_twistd(ini: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "mailappliance", "--config", str(ini)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ini.parent,
    )


def test_twistd_bad_config_exits_1_listing_every_problem(tmp_path: Path) -> None:
    """Several mistakes: twistd prints each on its own line, no traceback, exit 1."""
    ini = tmp_path / "bad.ini"
    ini.write_text("[appliance]\nhostname = mail_163\n[dns]\nlisten = 127.0.1.1:53x\nfoo = 1\n")
    out = run_twistd(ini)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"mailappliance: cannot start, {ini} has problems:",
        "  bad.ini: [appliance] hostname: expected a host name like mail.example.com, got 'mail_163'",
        "  bad.ini: [dns] foo: unknown key (known keys: cache_size, dmarc, edns_udp_size, "
        "enabled, forward_recursion, forward_timeout, forwarders, listen, max_tcp_connections, "
        "max_tcp_connections_per_ip, recursion_networks, servfail_ttl, spf, tcp_idle_timeout, "
        "tcp_stress_idle_timeout)",
        "  bad.ini: [dns] listen: expected an address like 127.0.0.1:53, got '127.0.1.1:53x'",
    ]
    assert "Traceback" not in out.stdout + out.stderr


def test_twistd_zone_error_names_file_and_line(tmp_path: Path) -> None:
    """A broken lab zone stops start-up with the zone file's name and line."""
    lab = make_lab(tmp_path)
    zone = lab["163"].ini.parent / "163" / "163.com.zone"
    zone.write_text(zone.read_text() + "broken IN MX ten mail\n")
    out = run_twistd(lab["163"].ini)
    assert out.returncode == 1
    assert f"[zone:163.com] file: {zone}:" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_twistd_busy_port_exits_1_with_one_line(tmp_path: Path) -> None:
    """Someone else holds the DNS port: one line naming service, address and reason; exit 1."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((a.ip, a.port))
    try:
        out = run_twistd(a.ini)
    finally:
        blocker.close()
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"mailappliance: dns udp {a.ip}:{a.port}: cannot listen on {a.ip}:{a.port}: "
        "[Errno 98] Address already in use"
    )
    assert "Traceback" not in out.stdout + out.stderr


def test_twistd_first_start_issues_certificate(tmp_path: Path) -> None:
    """On first start the appliance makes its CA and a 0600 key + certificate for its names."""
    lab = make_lab(tmp_path)
    a = lab["sina"].start()
    try:
        line = "".join(a.output)
        assert "issued certificate for mail.sina.com" in line
        state = tmp_path / "var" / "sina"
        key = state / "tls" / "mail.sina.com.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((state / "ca" / "private" / "ca.key").stat().st_mode) == 0o600
        out = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(state / "ca" / "ca.crt"),
                str(state / "tls" / "mail.sina.com.crt"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        # every TCP listener takes a burst of connections (Send-Q of a listening socket is
        # its backlog: Twisted's default of 50 overflowed with a few hundred clients at once)
        for std in (25, 465, 587, 110, 995, 143, 993, 53, 8443):
            port = a.ports[std]
            ss = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                                text=True, timeout=10)  # fmt: skip
            # another appliance (the other lab host, another test) may listen on the same
            # port number on its own address
            (listener,) = [
                line for line in ss.stdout.splitlines() if line.split()[3] == f"{a.ip}:{port}"
            ]
            assert listener.split()[2] == "1024", (std, listener)
    finally:
        a.stop()
    # a second start finds the certificate valid and issues nothing
    b = lab["sina"].start()
    b.stop()
    assert "issued certificate" not in "".join(b.output)


def test_twistd_drops_privileges_after_binding(tmp_path: Path) -> None:
    """With [appliance] user = nobody the process binds as root, then runs as nobody."""
    import os
    import pwd

    if os.getuid() != 0:
        import pytest

        pytest.skip("needs root to bind and drop privileges")
    lab = make_lab(tmp_path)
    a = lab["163"]
    # pytest's tmp folders are 0700 root: let the dropped user reach its state folder
    for parent in (tmp_path, *tmp_path.parents[:2]):
        parent.chmod(parent.stat().st_mode | 0o711)
    text = a.ini.read_text().replace("[appliance]\n", "[appliance]\nuser = nobody\n", 1)
    a.ini.write_text(text)
    # a log folder only root may write in: the maillog must be opened before the drop
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    text = text.replace("maillog = ../var/163/maillog", f"maillog = {logs / 'maillog'}")
    a.ini.write_text(text)
    # what the start-up check asks the admin to do with the passwd-file
    passwd = a.ini.parent / "163" / "passwd"
    os.chown(passwd, 0, pwd.getpwnam("nobody").pw_gid)
    passwd.chmod(0o640)
    a.start()
    try:
        status = Path(f"/proc/{a.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        nobody = pwd.getpwnam("nobody").pw_uid
        assert uids == [str(nobody)] * 4
        assert "dropped privileges to nobody" in "".join(a.output)
        # it still answers on the port it bound as root, and owns its state folder
        out = subprocess.run(
            ["dig", f"@{a.ip}", "-p", str(a.port), "+short", "mail.163.com"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.stdout.strip() == "127.0.1.1"
        assert (tmp_path / "var" / "163").stat().st_uid == nobody
        # the maillog, opened as root, is written after the drop
        assert "connect from" not in (logs / "maillog").read_text()
        with smtplib.SMTP(a.ip, a.ports[25], timeout=10) as c:
            c.noop()
        assert wait_for(lambda: "connect from" in (logs / "maillog").read_text())
    finally:
        a.stop()


def test_twistd_passwd_unreadable_by_dropped_user_refused(tmp_path: Path) -> None:
    """user = nobody with a 0600 root passwd-file: start-up refused with the fix to apply."""
    import os

    if os.getuid() != 0:
        import pytest

        pytest.skip("needs root")
    lab = make_lab(tmp_path)
    a = lab["163"]
    a.ini.write_text(a.ini.read_text().replace("[appliance]\n", "[appliance]\nuser = nobody\n", 1))
    passwd = a.ini.parent / "163" / "passwd"
    passwd.chmod(0o600)
    out = run_twistd(a.ini)
    assert out.returncode == 1
    assert (
        f"  163.ini: [auth] passwd_file: {passwd} is not readable by nobody, the user the "
        "appliance runs as after start-up (chgrp nobody it and chmod 640)"
    ) in out.stderr.splitlines()


def test_twistd_program_alias_refused_with_config_error(tmp_path: Path) -> None:
    """aliases with a |program target: start-up refused naming file and line, no traceback."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    aliases = a.ini.parent / "163" / "aliases"
    aliases.write_text(aliases.read_text() + "evil: |/usr/bin/procmail\n")
    line = len(aliases.read_text().splitlines())
    out = run_twistd(a.ini)
    assert out.returncode == 1
    assert (
        f"  163.ini: [smtp] aliases: {aliases}:{line}: program and file targets are not "
        "supported: '|/usr/bin/procmail'"
    ) in out.stderr.splitlines()
    assert "Traceback" not in out.stdout + out.stderr


def test_twistd_broken_passwd_file_refused(tmp_path: Path) -> None:
    """A passwd-file line without a password scheme stops start-up with file:line."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    passwd = a.ini.parent / "163" / "passwd"
    passwd.write_text(passwd.read_text() + "broken-line-without-colon\n")
    out = run_twistd(a.ini)
    assert out.returncode == 1
    assert f"  163.ini: [auth] passwd_file: {passwd}:" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
