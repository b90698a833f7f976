"""Tests for appliance.tls.ca and .renewal: the on-disk CA, issuing, listing and renewal."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.errors import CAError
from appliance.tls import ca as ca_module
from appliance.tls.ca import CertificateAuthority
from appliance.tls.renewal import cert_needs_renewal, ensure_server_certificate

OPENSSL_TIMEOUT = 30


def quiet(_line: str) -> None:
    """Progress sink for tests that do not look at the messages."""


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san_of(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("Test CA", progress=quiet)
    return authority


# --------------------------------------------------------------------------- init


def test_init_fresh_directory_creates_openssl_layout(tmp_path: Path) -> None:
    """init writes ca.crt, private/ca.key, serial, index.txt and newcerts/."""
    d = tmp_path / "ca"
    CertificateAuthority(d).init("Test CA", progress=quiet)
    assert (d / "ca.crt").is_file()
    assert (d / "private" / "ca.key").is_file()
    assert (d / "index.txt").read_bytes() == b""
    assert (d / "newcerts").is_dir()
    assert re.fullmatch(r"[0-9A-F]{16}\n", (d / "serial").read_text())


def test_init_fresh_directory_sets_private_modes(tmp_path: Path) -> None:
    """The CA folder and private/ are 0700 and the CA key is 0600, whatever the umask."""
    d = tmp_path / "ca"
    old = os.umask(0)
    try:
        CertificateAuthority(d).init("Test CA", progress=quiet)
    finally:
        os.umask(old)
    assert mode(d) == 0o700
    assert mode(d / "private") == 0o700
    assert mode(d / "private" / "ca.key") == 0o600
    assert mode(d / "ca.crt") == 0o644


def test_init_existing_empty_directory_tightened_to_0700(tmp_path: Path) -> None:
    """An empty pre-created folder (e.g. from a package) is accepted and made 0700."""
    d = tmp_path / "ca"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    CertificateAuthority(d).init("Test CA", progress=quiet)
    assert mode(d) == 0o700


def test_init_ca_certificate_self_signed_with_ca_constraints(ca: CertificateAuthority) -> None:
    """ca.crt is self-signed, CA:TRUE critical, keyCertSign+cRLSign critical, has an SKI."""
    cert = load_cert(ca.certificate_path)
    assert cert.issuer == cert.subject
    assert cert.subject.rfc4514_string() == "CN=Test CA"
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_init_key_matches_certificate(ca: CertificateAuthority) -> None:
    """private/ca.key is an unencrypted PEM key for the public key in ca.crt."""
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    cert = load_cert(ca.certificate_path)
    assert key.public_key() == cert.public_key()


def test_init_days_sets_ca_lifetime(tmp_path: Path) -> None:
    """The CA certificate lives `days` days from now."""
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("Test CA", days=100, progress=quiet)
    left = load_cert(authority.certificate_path).not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=99) < left <= timedelta(days=100)


def test_init_openssl_x509_text_parses(ca: CertificateAuthority) -> None:
    """`openssl x509 -text` reads ca.crt and sees a CA."""
    result = openssl("x509", "-in", ca.certificate_path, "-noout", "-text")
    assert result.returncode == 0, result.stderr
    assert "CA:TRUE" in result.stdout
    assert "Certificate Sign, CRL Sign" in result.stdout


def test_init_second_time_refused(ca: CertificateAuthority) -> None:
    """A second init in the same folder raises CAError and leaves the CA untouched."""
    before = ca.key_path.read_bytes()
    with pytest.raises(CAError, match="a CA already exists in"):
        ca.init("Other CA", progress=quiet)
    assert ca.key_path.read_bytes() == before


def test_init_leftover_key_without_certificate_refused(tmp_path: Path) -> None:
    """A CA key without ca.crt (interrupted init) is never overwritten."""
    d = tmp_path / "ca"
    (d / "private").mkdir(parents=True)
    (d / "private" / "ca.key").write_text("precious")
    with pytest.raises(CAError, match="interrupted init"):
        CertificateAuthority(d).init("Test CA", progress=quiet)
    assert (d / "private" / "ca.key").read_text() == "precious"


def test_init_progress_reports_steps(tmp_path: Path) -> None:
    """init tells what it does: key generation, then each file written."""
    lines: list[str] = []
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("Test CA", progress=lines.append)
    assert lines[0] == "generating ec-p256 CA key..."
    assert f"wrote {authority.certificate_path}" in lines


def test_init_unknown_key_type_raises(tmp_path: Path) -> None:
    """An unknown key type is refused before anything is written."""
    with pytest.raises(CAError, match="unknown key type 'dsa-1024'"):
        CertificateAuthority(tmp_path / "ca").init("Test CA", key_type="dsa-1024", progress=quiet)
    assert not (tmp_path / "ca").exists()


def test_exists_before_and_after_init_reports_presence(tmp_path: Path) -> None:
    """exists() is False for an empty folder and True after init."""
    authority = CertificateAuthority(tmp_path / "ca")
    assert not authority.exists()
    authority.init("Test CA", progress=quiet)
    assert authority.exists()


# --------------------------------------------------------------------------- issue


def test_issue_certificate_openssl_verify_succeeds(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """`openssl verify -x509_strict -purpose sslserver` accepts the issued certificate."""
    _key, cert = ca.issue("mail.test", ["smtp.test"], progress=quiet)
    result = openssl(
        "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", ca.certificate_path, cert
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{cert}: OK"


def test_issue_sans_cn_first_deduplicated_with_ips(ca: CertificateAuthority) -> None:
    """SAN is [cn] + sans, lower-cased and de-duplicated; IP literals become IP SANs."""
    _key, path = ca.issue(
        "mail.test", ["SMTP.test", "mail.test", "smtp.test", "192.0.2.7", "::1"], progress=quiet
    )
    san = san_of(load_cert(path))
    assert san.get_values_for_type(x509.DNSName) == ["mail.test", "smtp.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
    ]


def test_issue_ec_certificate_has_server_profile(ca: CertificateAuthority) -> None:
    """serverAuth EKU, digitalSignature only, CA:FALSE, AKI = CA's SKI, SHA-256, CN set."""
    key_path, path = ca.issue("mail.test", [], progress=quiet)
    cert = load_cert(path)
    ca_cert = load_cert(ca.certificate_path)
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.subject.rfc4514_string() == "CN=mail.test"
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()


def test_issue_rsa3072_key_size_3072_with_key_encipherment(ca: CertificateAuthority) -> None:
    """key_type rsa-3072 gives a 3072-bit RSA key and adds keyEncipherment."""
    key_path, path = ca.issue("mail.test", [], key_type="rsa-3072", progress=quiet)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072
    cert = load_cert(path)
    assert cert.public_key().key_size == 3072  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    result = openssl("verify", "-purpose", "sslserver", "-CAfile", ca.certificate_path, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_issue_default_outputs_under_issued(ca: CertificateAuthority) -> None:
    """Without key_out/cert_out the pair lands in <ca>/issued/<cn>.key and .crt."""
    key_path, cert_path = ca.issue("mail.test", [], progress=quiet)
    assert key_path == ca.directory / "issued" / "mail.test.key"
    assert cert_path == ca.directory / "issued" / "mail.test.crt"
    assert mode(ca.directory / "issued") == 0o700


def test_issue_key_0600_and_cert_0644_even_with_umask_0(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The key is 0600 and the certificate 0644 regardless of the umask."""
    old = os.umask(0)
    try:
        key_path, cert_path = ca.issue(
            "mail.test", [], key_out=tmp_path / "k.pem", cert_out=tmp_path / "c.pem", progress=quiet
        )
    finally:
        os.umask(old)
    assert mode(key_path) == 0o600
    assert mode(cert_path) == 0o644


def test_issue_key_file_created_with_mode_0600(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key's file is created 0600 by os.open itself, so it is never briefly readable."""
    created: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT:
            created.append((os.fspath(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(ca_module.os, "open", spy)
    ca.issue(
        "mail.test", [], key_out=tmp_path / "k.pem", cert_out=tmp_path / "c.pem", progress=quiet
    )
    key_creates = [m for p, m in created if Path(p).name.startswith(".k.pem.")]
    assert key_creates == [0o600]


def test_issue_same_key_and_cert_path_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    """key_out and cert_out naming one file is refused before a serial is used."""
    serial = ca.serial_path.read_text()
    same = tmp_path / "both.pem"
    with pytest.raises(CAError, match="key and certificate would both be written to"):
        ca.issue("mail.test", [], key_out=same, cert_out=same, progress=quiet)
    assert ca.serial_path.read_text() == serial
    assert not same.exists()


def test_issue_new_key_folder_created_0700(ca: CertificateAuthority, tmp_path: Path) -> None:
    """A key folder that does not exist yet is created 0700 (parents included)."""
    key_out = tmp_path / "etc" / "private" / "k.pem"
    ca.issue("mail.test", [], key_out=key_out, cert_out=tmp_path / "c.pem", progress=quiet)
    assert mode(key_out.parent) == 0o700


def test_issue_serial_increments_and_newcerts_copy_written(ca: CertificateAuthority) -> None:
    """Each issue takes the serial file's value, bumps it, and stores newcerts/<SERIAL>.pem."""
    first = int(ca.serial_path.read_text(), 16)
    _k1, c1 = ca.issue("a.test", [], progress=quiet)
    _k2, c2 = ca.issue("b.test", [], progress=quiet)
    assert load_cert(c1).serial_number == first
    assert load_cert(c2).serial_number == first + 1
    assert ca.serial_path.read_text() == f"{first + 2:X}\n"
    assert (ca.directory / "newcerts" / f"{first:X}.pem").read_bytes() == c1.read_bytes()
    assert (ca.directory / "newcerts" / f"{first + 1:X}.pem").read_bytes() == c2.read_bytes()


def test_issue_index_line_matches_openssl_format(ca: CertificateAuthority) -> None:
    """index.txt gets 'V<TAB>YYMMDDHHMMSSZ<TAB><TAB>SERIAL<TAB>unknown<TAB>/CN=cn'."""
    serial = ca.serial_path.read_text().strip()
    _key, path = ca.issue("mail.test", ["smtp.test"], progress=quiet)
    expiry = load_cert(path).not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    assert ca.index_path.read_text() == f"V\t{expiry}\t\t{serial}\tunknown\t/CN=mail.test\n"


def test_issue_even_digit_serial_padding_like_openssl(ca: CertificateAuthority) -> None:
    """A serial file holding '01' is used as 1 and becomes '02', as openssl writes it."""
    ca.serial_path.write_text("01\n")
    _key, path = ca.issue("mail.test", [], progress=quiet)
    assert load_cert(path).serial_number == 1
    assert ca.serial_path.read_text() == "02\n"
    assert (ca.directory / "newcerts" / "01.pem").is_file()
    assert "\t01\tunknown\t" in ca.index_path.read_text()


def test_issue_without_ca_raises_exact_message(tmp_path: Path) -> None:
    """Issuing from a folder with no CA tells the admin to run 'ca init'."""
    d = tmp_path / "nothing"
    with pytest.raises(CAError) as info:
        CertificateAuthority(d).issue("mail.test", [], progress=quiet)
    assert str(info.value) == f"no CA in {d}: run 'mailappliance ca init' first"


@pytest.mark.parametrize(
    ("cn", "sans", "bad"),
    [
        ("x y", [], "x y"),
        ("mail.test", ["ok.test", "bad_name.test"], "bad_name.test"),
        ("-mail.test", [], "-mail.test"),
        ("mail..test", [], "mail..test"),
        ("mail.test", ["*"], "*"),
        ("mail.test", ["a" * 64 + ".test"], "a" * 64 + ".test"),
    ],
)
def test_issue_bad_hostname_raises_exact_message(
    ca: CertificateAuthority, cn: str, sans: list[str], bad: str
) -> None:
    """A CN or SAN that is not a host name or IP is refused, naming it."""
    with pytest.raises(CAError) as info:
        ca.issue(cn, sans, progress=quiet)
    assert str(info.value) == f"invalid host name '{bad}'"
    assert ca.index_path.read_text() == ""


def test_issue_wildcard_and_trailing_dot_names_accepted(ca: CertificateAuthority) -> None:
    """'*.test.example' is a valid SAN and a trailing root dot is dropped."""
    _key, path = ca.issue("mail.test.", ["*.test.example"], progress=quiet)
    assert san_of(load_cert(path)).get_values_for_type(x509.DNSName) == [
        "mail.test",
        "*.test.example",
    ]


def test_issue_unknown_key_type_raises(ca: CertificateAuthority) -> None:
    """A key type outside KEY_TYPES is refused with the list of choices."""
    with pytest.raises(CAError, match=r"unknown key type 'ed448' \(choose one of ec-p256"):
        ca.issue("mail.test", [], key_type="ed448", progress=quiet)


def test_issue_openssl_ca_shares_the_same_files(ca: CertificateAuthority, tmp_path: Path) -> None:
    """`openssl ca` can sign and revoke in our folder, and we carry on with its serial."""
    cnf = tmp_path / "ossl.cnf"
    cnf.write_text(
        f"[ca]\ndefault_ca = ours\n[ours]\ndir = {ca.directory}\n"
        "database = $dir/index.txt\nnew_certs_dir = $dir/newcerts\ncertificate = $dir/ca.crt\n"
        "private_key = $dir/private/ca.key\nserial = $dir/serial\ndefault_md = sha256\n"
        "default_days = 30\npolicy = pol\n[pol]\ncommonName = supplied\n"
    )
    _key, ours = ca.issue("mail.test", [], progress=quiet)
    req = openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", tmp_path / "x.key", "-subj", "/CN=mail.test", "-out", tmp_path / "x.csr",
    )  # fmt: skip
    assert req.returncode == 0, req.stderr
    signed = openssl(
        "ca", "-batch", "-config", cnf, "-in", tmp_path / "x.csr", "-out", tmp_path / "x.crt"
    )
    assert signed.returncode == 0, signed.stderr
    revoked = openssl("ca", "-config", cnf, "-revoke", ours)
    assert revoked.returncode == 0, revoked.stderr
    _key, after = ca.issue("pop.test", [], progress=quiet)

    entries = ca.list()
    assert [(e.status, e.subject) for e in entries] == [
        ("R", "/CN=mail.test"),
        ("V", "/CN=mail.test"),
        ("V", "/CN=pop.test"),
    ]
    assert entries[1].serial == load_cert(tmp_path / "x.crt").serial_number
    assert load_cert(after).serial_number == entries[1].serial + 1


# --------------------------------------------------------------------------- list


def test_list_issued_certs_returned_with_expiry(ca: CertificateAuthority) -> None:
    """list() gives one IssuedCert per issue with status V, serial, expiry and newcerts path."""
    _k, c1 = ca.issue("a.test", [], days=30, progress=quiet)
    _k, c2 = ca.issue("b.test", [], days=60, progress=quiet)
    entries = ca.list()
    assert [e.subject for e in entries] == ["/CN=a.test", "/CN=b.test"]
    for entry, path in zip(entries, (c1, c2), strict=True):
        cert = load_cert(path)
        assert entry.status == "V"
        assert entry.serial == cert.serial_number
        assert entry.not_after == cert.not_valid_after_utc
        assert entry.not_after.tzinfo is not None
        assert entry.path.read_bytes() == path.read_bytes()


def test_list_empty_ca_returns_nothing(ca: CertificateAuthority) -> None:
    """A CA that has issued nothing lists nothing."""
    assert ca.list() == []


def test_list_after_expiry_marks_expired(ca: CertificateAuthority) -> None:
    """A valid line whose expiry is before `now` is reported as E."""
    ca.issue("short.test", [], days=10, progress=quiet)
    ca.issue("long.test", [], days=100, progress=quiet)
    later = datetime.now(UTC) + timedelta(days=20)
    assert [e.status for e in ca.list(now=later)] == ["E", "V"]
    assert [e.status for e in ca.list()] == ["V", "V"]


def test_list_without_ca_raises_exact_message(tmp_path: Path) -> None:
    """list() on a folder without a CA gives the same hint as issue()."""
    d = tmp_path / "nothing"
    with pytest.raises(CAError) as info:
        CertificateAuthority(d).list()
    assert str(info.value) == f"no CA in {d}: run 'mailappliance ca init' first"


def test_list_garbage_line_raises_with_line_number(ca: CertificateAuthority) -> None:
    """A malformed index.txt line is reported with its file and line number."""
    ca.issue("mail.test", [], progress=quiet)
    with ca.index_path.open("a") as f:
        f.write("this is not an index line\n")
    with pytest.raises(CAError, match=r"index\.txt:2: not an index\.txt line"):
        ca.list()


# --------------------------------------------------------------------------- renewal


def test_cert_needs_renewal_missing_file_says_missing(tmp_path: Path) -> None:
    """No certificate file: 'missing'."""
    assert cert_needs_renewal(tmp_path / "none.pem", ["mail.test"], timedelta(days=30)) == "missing"


def test_cert_needs_renewal_garbage_file_says_unreadable(tmp_path: Path) -> None:
    """A file that is not PEM: 'unreadable: ...'."""
    path = tmp_path / "c.pem"
    path.write_text("hello")
    reason = cert_needs_renewal(path, ["mail.test"], timedelta(days=30))
    assert reason == "unreadable: not a PEM certificate"


def test_cert_needs_renewal_expiring_within_window_says_expires(
    ca: CertificateAuthority,
) -> None:
    """A certificate ending inside renew_before: 'expires <date> (within N days)'."""
    _k, path = ca.issue("mail.test", [], days=10, progress=quiet)
    day = load_cert(path).not_valid_after_utc.strftime("%Y-%m-%d")
    reason = cert_needs_renewal(path, ["mail.test"], timedelta(days=30))
    assert reason == f"expires {day} (within 30 days)"


def test_cert_needs_renewal_past_expiry_says_expired(ca: CertificateAuthority) -> None:
    """A certificate already past its end: 'expired <date>'."""
    _k, path = ca.issue("mail.test", [], days=10, progress=quiet)
    not_after = load_cert(path).not_valid_after_utc
    reason = cert_needs_renewal(
        path, ["mail.test"], timedelta(days=1), now=not_after + timedelta(days=1)
    )
    assert reason == f"expired {not_after:%Y-%m-%d}"


def test_cert_needs_renewal_name_not_covered_names_it(ca: CertificateAuthority) -> None:
    """A wanted name missing from the SAN: 'does not cover <name>'."""
    _k, path = ca.issue("mail.test", ["smtp.test"], progress=quiet)
    reason = cert_needs_renewal(path, ["mail.test", "pop3.test"], timedelta(days=30))
    assert reason == "does not cover pop3.test"


def test_cert_needs_renewal_fine_certificate_returns_none(ca: CertificateAuthority) -> None:
    """Valid, not expiring soon, covering all names (any case, IP too): None."""
    _k, path = ca.issue("mail.test", ["smtp.test", "127.0.0.1"], progress=quiet)
    names = ["MAIL.test", "smtp.test", "127.0.0.1"]
    assert cert_needs_renewal(path, names, timedelta(days=30)) is None


def test_cert_needs_renewal_wildcard_covers_one_label_only(ca: CertificateAuthority) -> None:
    """'*.test.example' covers a.test.example but not a.b.test.example or test.example."""
    _k, path = ca.issue("mail.test", ["*.test.example"], progress=quiet)
    assert cert_needs_renewal(path, ["a.test.example"], timedelta(days=1)) is None
    reason = cert_needs_renewal(path, ["a.b.test.example", "test.example"], timedelta(days=1))
    assert reason == "does not cover a.b.test.example, test.example"


# --------------------------------------------------------------------------- ensure


def test_ensure_server_certificate_first_call_inits_ca_and_issues(tmp_path: Path) -> None:
    """With no CA and no certificate, the CA is created and a certificate issued."""
    authority = CertificateAuthority(tmp_path / "ca")
    cert_path, key_path = tmp_path / "tls" / "server.crt", tmp_path / "tls" / "key" / "server.key"
    lines: list[str] = []
    issued = ensure_server_certificate(
        authority, "mail.test", ["smtp.test", "pop3.test"], cert_path, key_path,
        timedelta(days=30), progress=lines.append,
    )  # fmt: skip
    assert issued is True
    assert authority.exists()
    assert load_cert(authority.certificate_path).subject.rfc4514_string() == (
        "CN=mail.test mailappliance CA"
    )
    cert = load_cert(cert_path)
    assert san_of(cert).get_values_for_type(x509.DNSName) == ["mail.test", "smtp.test", "pop3.test"]
    assert mode(key_path) == 0o600
    assert mode(key_path.parent) == 0o700
    day = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    assert lines[-1] == (
        f"issued certificate for mail.test (smtp.test, pop3.test) valid until {day}; "
        "reason: missing"
    )
    result = openssl("verify", "-CAfile", authority.certificate_path, cert_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ensure_server_certificate_second_call_does_nothing(tmp_path: Path) -> None:
    """A current certificate covering the names is left alone and False returned."""
    authority = CertificateAuthority(tmp_path / "ca")
    args = (authority, "mail.test", ["smtp.test"], tmp_path / "c.pem", tmp_path / "k.pem")
    assert ensure_server_certificate(*args, timedelta(days=30), progress=quiet)
    before = (tmp_path / "c.pem").read_bytes()
    lines: list[str] = []
    assert ensure_server_certificate(*args, timedelta(days=30), progress=lines.append) is False
    assert lines == []
    assert (tmp_path / "c.pem").read_bytes() == before
    assert len(authority.list()) == 1


def test_ensure_server_certificate_names_changed_reissues(tmp_path: Path) -> None:
    """Adding a name re-issues with the same CA and says why."""
    authority = CertificateAuthority(tmp_path / "ca")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    ensure_server_certificate(
        authority, "mail.test", ["smtp.test"], cert_path, key_path, timedelta(days=30),
        progress=quiet,
    )  # fmt: skip
    ca_before = authority.certificate_path.read_bytes()
    lines: list[str] = []
    issued = ensure_server_certificate(
        authority, "mail.test", ["smtp.test", "imap.test"], cert_path, key_path,
        timedelta(days=30), progress=lines.append,
    )  # fmt: skip
    assert issued is True
    assert authority.certificate_path.read_bytes() == ca_before
    assert lines[-1].endswith("; reason: does not cover imap.test")
    assert "imap.test" in san_of(load_cert(cert_path)).get_values_for_type(x509.DNSName)
    assert len(authority.list()) == 2


def test_ensure_server_certificate_expiring_reissues(tmp_path: Path) -> None:
    """A certificate inside the renewal window is replaced by a full-length one."""
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("Test CA", progress=quiet)
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    authority.issue("mail.test", [], days=5, key_out=key_path, cert_out=cert_path, progress=quiet)
    assert ensure_server_certificate(
        authority, "mail.test", [], cert_path, key_path, timedelta(days=30), progress=quiet
    )
    left = load_cert(cert_path).not_valid_after_utc - datetime.now(UTC)
    assert left > timedelta(days=396)


def test_ensure_server_certificate_key_missing_reissues(tmp_path: Path) -> None:
    """A good certificate whose key has gone is re-issued: the pair could not serve."""
    authority = CertificateAuthority(tmp_path / "ca")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    args = (authority, "mail.test", [], cert_path, key_path, timedelta(days=30))
    ensure_server_certificate(*args, progress=quiet)
    key_path.unlink()
    lines: list[str] = []
    assert ensure_server_certificate(*args, progress=lines.append) is True
    assert lines[-1].endswith("; reason: key missing")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == load_cert(cert_path).public_key()


def test_ensure_server_certificate_window_longer_than_lifetime_raises(tmp_path: Path) -> None:
    """renew_before >= validity would re-issue at every start, so it is refused."""
    with pytest.raises(CAError, match=r"renew_before \(400 days\) must be shorter"):
        ensure_server_certificate(
            CertificateAuthority(tmp_path / "ca"), "mail.test", [], tmp_path / "c.pem",
            tmp_path / "k.pem", timedelta(days=400), days=397, progress=quiet,
        )  # fmt: skip
    assert not (tmp_path / "ca").exists()
