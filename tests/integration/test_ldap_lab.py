"""The 163 appliance with [auth] backend = ldap against a real slapd: AUTH and RCPT from LDAP."""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.auth.slapd import Slapd, slapd  # noqa: F401 (fixture)
from tests.integration.conftest import make_lab
from tests.integration.test_smtp_lab import wait_for


@pytest.fixture
def ldap_appliance(tmp_path, slapd: Slapd):  # noqa: F811
    lab = make_lab(tmp_path)
    a = lab["163"]
    secret = tmp_path / "ldap-service-password"
    secret.write_text(slapd.bind_password + "\n")
    secret.chmod(0o600)
    text = a.ini.read_text()
    text = re.sub(
        r"\[auth\]\n(?:.*\n)*?(?=\n\[)",
        "[auth]\nbackend = ldap\n"
        f"ldap_urls = {slapd.url}\nldap_base_dn = {slapd.base_dn}\n"
        f"ldap_bind_dn = {slapd.bind_dn}\nldap_bind_password_file = {secret}\n"
        f"ldap_starttls = yes\nldap_ca_file = {slapd.ca_file}\n"
        "plaintext_networks = 127.0.0.0/8\n",
        text,
    )
    a.ini.write_text(text)
    a.start()
    yield a
    a.stop()


def test_ldap_backend_auth_and_recipients(ldap_appliance) -> None:
    """AUTH checks the password by an LDAP bind (StartTLS); RCPT users come from LDAP."""
    a = ldap_appliance
    with smtplib.SMTP(a.ip, a.ports[25], timeout=20) as c:
        c.ehlo("client.test")
        assert "CRAM-MD5" not in c.esmtp_features.get("auth", "")
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            c.login("user1@163.com", "wrong")
        assert bad.value.smtp_code == 535
        c.login("user1@163.com", "user1-pass")
        c.mail("user1@163.com")
        assert c.rcpt("nobody@163.com")[0] == 550
        assert c.rcpt("user2@163.com")[0] == 250
        code, _ = c.data(b"Subject: ldap\r\n\r\nfrom an LDAP user\r\n")
        assert code == 250
    wait_for(lambda: any(b"from an LDAP user" in m for m in a.messages("user2@163.com")))
