"""Our own certificate authority: create it, sign server certificates, list what it signed.

It replaces the hand-run OpenSSL CA: `mailappliance ca init` creates it, `ca issue` signs server
certificates and `ca show` lists them. The files live in `openssl ca`'s layout (see
appliance.tls.ca_files); keeping our own certificate current is appliance.tls.renewal's job.
Everything here is synchronous (key generation included): call it before the reactor starts or
from a thread.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.errors import CAError
from appliance.tls.ca_files import (
    CAFiles,
    IssuedCert,
    day,
    make_dir,
    read_file,
    serial_hex,
    write_file,
)
from appliance.tls.certnames import general_name, normalize_name, normalize_names
from appliance.tls.keys import PrivateKey, check_key_type, generate_key, key_pem, public_der

Progress = Callable[[str], None]

# Certificates start slightly in the past so a client whose clock lags a little behind ours
# does not reject a certificate issued a moment ago.
_BACKDATE = timedelta(minutes=5)
# Apple platforms reject server certificates from user-installed roots valid for longer.
_APPLE_MAX_DAYS = 825


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise CAError(f"validity must be at least 1 day, got {days!r}")


class CertificateAuthority(CAFiles):
    """A CA living in one directory; see appliance.tls.ca_files for the layout."""

    # ------------------------------------------------------------------ init

    def init(
        self,
        common_name: str,
        key_type: str = "ec-p256",
        days: int = 3650,
        progress: Progress = print,
    ) -> None:
        """Create the CA: key, self-signed certificate, serial, index.txt and newcerts/."""
        check_key_type(key_type)
        _check_days(days)
        if not common_name.strip():
            raise CAError("the CA needs a non-empty common name")
        if self.exists():
            raise CAError(f"a CA already exists in {self.directory}; refusing to overwrite it")
        if self.key_path.exists():
            # A key without ca.crt is an interrupted init; it might still be wanted, so the
            # admin decides rather than us deleting a CA key.
            raise CAError(
                f"{self.key_path} exists but {self.certificate_path} does not "
                f"(interrupted init?); remove the key to start over"
            )

        make_dir(self.directory, 0o700)
        try:
            # The directory may have been created empty by a package; it still holds our key.
            os.chmod(self.directory, 0o700)
        except OSError as e:
            raise CAError(f"cannot chmod {self.directory}: {e.strerror or e}") from e
        make_dir(self.key_path.parent, 0o700)
        make_dir(self.newcerts_path, 0o700)

        progress(f"generating {key_type} CA key...")
        key = generate_key(key_type)
        now = datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name.strip())])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            # path length 0: this CA only signs server certificates, never other CAs.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )

        write_file(self.key_path, key_pem(key), 0o600)
        progress(f"wrote {self.key_path}")
        self._create_database()
        # ca.crt last: its presence is what marks the CA complete (see exists()).
        write_file(self.certificate_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        progress(f"wrote {self.certificate_path}")

    # ------------------------------------------------------------------ loading

    def _load_ca(self) -> tuple[x509.Certificate, PrivateKey]:
        self._require()
        try:
            cert = x509.load_pem_x509_certificate(
                read_file(self.certificate_path, "CA certificate")
            )
        except ValueError as e:
            raise CAError(f"CA certificate {self.certificate_path} is not a PEM certificate") from e
        try:
            key = serialization.load_pem_private_key(
                read_file(self.key_path, "CA key"), password=None
            )
        except (ValueError, TypeError) as e:
            raise CAError(f"CA key {self.key_path} is not an unencrypted PEM key") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAError(f"CA key {self.key_path} is neither an EC nor an RSA key")
        if public_der(key.public_key()) != public_der(cert.public_key()):
            raise CAError(f"CA key {self.key_path} does not match {self.certificate_path}")
        return cert, key

    # ------------------------------------------------------------------ issue

    def issue(
        self,
        common_name: str,
        sans: builtins.list[str],
        key_type: str = "ec-p256",
        days: int = 397,
        key_out: Path | None = None,
        cert_out: Path | None = None,
        progress: Progress = print,
    ) -> tuple[Path, Path]:
        """Sign a fresh server key+certificate for common_name and sans; return (key, cert).

        SAN = [cn] + sans (lower-cased, de-duplicated, IP literals as IP SANs); serverAuth EKU;
        SHA-256 by the CA key. The serial comes from the serial file, the certificate is
        recorded in newcerts/ and index.txt, then the key (0600) and the certificate alone
        (0644, no chain: clients get ca.crt separately) are written, by default to
        <ca dir>/issued/<cn>.key and .crt.
        """
        check_key_type(key_type)
        _check_days(days)
        cn = normalize_name(common_name)
        names = normalize_names([cn, *sans])
        ca_cert, ca_key = self._load_ca()
        key_out = Path(key_out) if key_out is not None else self.directory / "issued" / f"{cn}.key"
        cert_out = (
            Path(cert_out) if cert_out is not None else self.directory / "issued" / f"{cn}.crt"
        )
        if key_out.absolute() == cert_out.absolute():
            raise CAError(f"key and certificate would both be written to {key_out}")
        if days > _APPLE_MAX_DAYS:
            progress(
                f"note: Apple devices reject server certificates valid for more than "
                f"{_APPLE_MAX_DAYS} days ({days} requested)"
            )

        progress(f"generating {key_type} key for {cn}...")
        key = generate_key(key_type)
        is_rsa = isinstance(key, rsa.RSAPrivateKey)

        with self._locked():
            serial = self._read_serial()
            # Reserve the serial before anything refers to it: after a crash we may skip a
            # number, but we never hand the same serial out twice.
            self._write_serial(serial + 1)

            now = datetime.now(UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(serial)
                .not_valid_before(now - _BACKDATE)
                .not_valid_after(now + timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        # Only RSA key exchange (TLS 1.2 without ECDHE) encrypts to the key.
                        key_encipherment=is_rsa,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
                )
                .add_extension(
                    x509.SubjectAlternativeName([general_name(n) for n in names]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
            # Record the certificate before it leaves the CA, so index.txt never misses one.
            self._record(serial, cert_pem, cert.not_valid_after_utc, f"/CN={cn}")

        make_dir(key_out.parent, 0o700)
        make_dir(cert_out.parent, None)
        write_file(key_out, key_pem(key), 0o600)
        progress(f"wrote key {key_out}")
        write_file(cert_out, cert_pem, 0o644)
        progress(
            f"wrote certificate {cert_out} (serial {serial_hex(serial)}, "
            f"valid until {day(cert.not_valid_after_utc)})"
        )
        return key_out, cert_out

    # ------------------------------------------------------------------ list

    def list(self, now: datetime | None = None) -> builtins.list[IssuedCert]:
        """Every certificate in index.txt; valid ones past their expiry show as "E"."""
        self._require()
        return self._read_index(now or datetime.now(UTC))


def _authority_key_id(ca_cert: x509.Certificate, ca_key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    # A CA made by hand with openssl may lack the SKI extension; its key hash is the same value.
    # (ca_key's public key is ca_cert's: _load_ca checked that.)
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
