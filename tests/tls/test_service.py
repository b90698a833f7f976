"""The appliance's own TLS, as prepared at start-up: verified by openssl s_client, renewed live."""

from __future__ import annotations

import pytest_twisted

from appliance import config
from appliance.service import prepare
from tests.tls.test_context import assert_handshake_ok, assert_server_refused_version, run_s_client


def lab(tmp_path, names: str = "smtp.163.com pop3.163.com"):
    ini = tmp_path / "163.ini"
    ini.write_text(
        f"[appliance]\nhostname = mail.163.com\nstate_dir = state\n[tls]\nnames = {names}\n"
    )
    return config.load(ini)


@pytest_twisted.inlineCallbacks
def test_prepared_tls_verifies_for_every_service_name(tmp_path) -> None:
    """First start issues a cert from our CA that s_client verifies for each configured name."""
    prepared = prepare(lab(tmp_path), progress=lambda line: None)
    ca = tmp_path / "state" / "ca" / "ca.crt"
    for name in ("mail.163.com", "smtp.163.com", "pop3.163.com"):
        result = yield run_s_client(prepared.tls.context_factory, ca, servername=name)
        assert_handshake_ok(result, "TLSv1.3")
    result = yield run_s_client(prepared.tls.context_factory, ca, servername="imap.163.com")
    assert result.code != 0 and "hostname mismatch" in result.output


@pytest_twisted.inlineCallbacks
def test_prepared_tls_refuses_tls11(tmp_path) -> None:
    """The appliance's listener options refuse a TLS 1.1 client (server-side alert)."""
    prepared = prepare(lab(tmp_path), progress=lambda line: None)
    ca = tmp_path / "state" / "ca" / "ca.crt"
    result = yield run_s_client(
        prepared.tls.context_factory, ca, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
        servername="mail.163.com",
    )  # fmt: skip
    assert_server_refused_version(result)


@pytest_twisted.inlineCallbacks
def test_renewal_swaps_certificate_without_rebinding(tmp_path) -> None:
    """When the names change, renew_if_due issues a new cert and new handshakes present it."""
    prepared = prepare(lab(tmp_path), progress=lambda line: None)
    ca = tmp_path / "state" / "ca" / "ca.crt"
    factory = prepared.tls.context_factory
    result = yield run_s_client(factory, ca, servername="imap.163.com")
    assert "hostname mismatch" in result.output
    prepared.tls.settings.names.append("imap.163.com")
    prepared.tls.renew_if_due()
    result = yield run_s_client(factory, ca, servername="imap.163.com")
    assert_handshake_ok(result, "TLSv1.3")


def test_prepare_second_start_keeps_certificate(tmp_path) -> None:
    """A valid certificate is reused on the next start; nothing is issued."""
    cfg = lab(tmp_path)
    lines: list[str] = []
    prepare(cfg, progress=lines.append)
    assert any("issued certificate for mail.163.com" in line for line in lines)
    cert = (tmp_path / "state" / "tls" / "mail.163.com.crt").read_bytes()
    again: list[str] = []
    prepare(cfg, progress=again.append)
    assert again == []
    assert (tmp_path / "state" / "tls" / "mail.163.com.crt").read_bytes() == cert
