"""The `mailappliance` admin command's CA subcommands, run as the admin runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.cli import main as cli_main


def lab_ini(tmp_path: Path) -> Path:
    ini = tmp_path / "lab.ini"
    ini.write_text("[appliance]\nhostname = mail.163.com\nstate_dir = state\n")
    return ini


def test_ca_init_issue_show_round_trip(tmp_path: Path, capsys) -> None:
    """ca init, ca issue --cn --san, ca show: the certificate verifies and is listed."""
    ini = lab_ini(tmp_path)
    assert cli_main(["--config", str(ini), "ca", "init"]) == 0
    assert "ca.key" in capsys.readouterr().out
    assert (
        cli_main(
            [
                "--config",
                str(ini),
                "ca",
                "issue",
                "--cn",
                "pop3.163.com",
                "--san",
                "imap.163.com",
                "127.0.1.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    cert = next(line.split(None, 1)[1] for line in out.splitlines() if line.startswith("cert:"))
    ca_crt = tmp_path / "state" / "ca" / "ca.crt"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_crt), cert],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert (
        "DNS:pop3.163.com" in text and "DNS:imap.163.com" in text and "IP Address:127.0.1.1" in text
    )
    assert cli_main(["--config", str(ini), "ca", "show"]) == 0
    listing = capsys.readouterr().out.splitlines()
    (row,) = [line for line in listing if "/CN=pop3.163.com" in line]
    assert row.startswith("V  ") and ("(396 days)" in row or "(397 days)" in row)


def test_ca_show_without_ca_says_how_to_make_one(tmp_path: Path, capsys) -> None:
    """ca show before ca init: exit 1 and the command to run."""
    ini = lab_ini(tmp_path)
    assert cli_main(["--config", str(ini), "ca", "show"]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"mailappliance: no CA in {tmp_path / 'state' / 'ca'}: run 'mailappliance ca init' first"
    )


def test_ca_init_twice_refused(tmp_path: Path, capsys) -> None:
    """A second ca init never overwrites the CA key."""
    ini = lab_ini(tmp_path)
    assert cli_main(["--config", str(ini), "ca", "init"]) == 0
    key = (tmp_path / "state" / "ca" / "private" / "ca.key").read_bytes()
    assert cli_main(["--config", str(ini), "ca", "init"]) == 1
    assert "already" in capsys.readouterr().err
    assert (tmp_path / "state" / "ca" / "private" / "ca.key").read_bytes() == key


def test_cli_console_script_installed() -> None:
    """The console script exists in the venv and prints its help."""
    exe = Path(sys.executable).parent / "mailappliance"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ca" in out.stdout and "check-config" in out.stdout
