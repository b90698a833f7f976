"""Our own certificate authority, stored on disk the way `openssl ca` lays it out.

It replaces the hand-run OpenSSL CA: `mailappliance ca init` creates it, `ca issue` signs server
certificates, and at start-up `ensure_server_certificate` re-issues the appliance's own
certificate when it is missing, about to expire or no longer covers every configured name.

A CA directory holds::

    ca.crt              self-signed CA certificate (hand this to clients)
    private/ca.key      CA key, PEM, unencrypted, 0600 in a 0700 folder
    serial              next serial number, hex, like openssl's serial file
    index.txt           one line per issued certificate, openssl's format
    index.txt.attr      "unique_subject = no", for `openssl ca` run by hand
    newcerts/<SER>.pem  a copy of every certificate issued
    issued/<cn>.key/crt default output of `issue`

Because the files follow openssl's conventions an admin can still inspect them with
`openssl ca`/`openssl x509`. Everything here is synchronous (key generation included): call it
before the reactor starts or from a thread.
"""

from __future__ import annotations

import builtins
import fcntl
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.errors import CAError

KEY_TYPES = ("ec-p256", "rsa-3072", "rsa-4096")

Progress = Callable[[str], None]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Certificates start slightly in the past so a client whose clock lags a little behind ours
# does not reject a certificate issued a moment ago.
_BACKDATE = timedelta(minutes=5)
# Apple platforms reject server certificates from user-installed roots valid for longer.
_APPLE_MAX_DAYS = 825

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class IssuedCert:
    """One line of index.txt."""

    status: str  # "V" valid, "R" revoked, "E" expired
    serial: int
    not_after: datetime  # aware, UTC
    subject: str  # "/CN=mail.163.com"
    path: Path  # newcerts/<SERIALHEX>.pem


# --------------------------------------------------------------------------- names


def _parse_ip(name: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _is_hostname(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if labels[0] == "*":
        # A wildcard only stands for one label below a real parent domain.
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return all(_LABEL.match(label) for label in labels)


def normalize_name(name: str) -> str:
    """Lower-case a host name or IP literal and check it; CAError if it is neither."""
    raw = name
    name = name.strip().lower()
    ip = _parse_ip(name)
    if ip is not None:
        return str(ip)
    # A fully qualified name with its root dot is the same name; certificates never carry it.
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not _is_hostname(name):
        raise CAError(f"invalid host name {raw!r}")
    return name


def _normalize_names(names: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(normalize_name(name), None)
    return list(seen)


def _general_name(name: str) -> x509.GeneralName:
    ip = _parse_ip(name)
    return x509.IPAddress(ip) if ip is not None else x509.DNSName(name)


# --------------------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace path with data so readers see the old or the new file, never a mix.

    The temporary file is created with `mode` already applied (and O_EXCL), so a key is never
    readable by anyone else, not even for a moment between create and chmod.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            # The umask may only have narrowed the mode; set it exactly (0644 for certs).
            os.fchmod(fd, mode)
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CAError(f"cannot write {path}: {e.strerror or e}") from e


def _make_dir(path: Path, mode: int | None) -> None:
    """Create path and missing parents; only a folder we create ourselves gets `mode`."""
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True)
        if mode is not None:
            os.chmod(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise CAError(f"cannot create folder {path}: a file is in the way") from None
    except OSError as e:
        raise CAError(f"cannot create folder {path}: {e.strerror or e}") from e


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read {what} {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------------- keys and times


def _generate_key(key_type: str) -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "rsa-4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise CAError(f"unknown key type {key_type!r} (choose one of {', '.join(KEY_TYPES)})")


def _check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise CAError(f"unknown key type {key_type!r} (choose one of {', '.join(KEY_TYPES)})")


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise CAError(f"validity must be at least 1 day, got {days!r}")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _serial_hex(serial: int) -> str:
    # openssl writes serials in upper-case hex with an even number of digits.
    text = format(serial, "X")
    return text if len(text) % 2 == 0 else "0" + text


def _index_time(when: datetime) -> str:
    # The ASN.1 time as openssl stores it: UTCTime until 2049, GeneralizedTime after.
    fmt = "%y%m%d%H%M%SZ" if 1950 <= when.year < 2050 else "%Y%m%d%H%M%SZ"
    return when.astimezone(UTC).strftime(fmt)


def _parse_index_time(text: str) -> datetime:
    fmt = "%y%m%d%H%M%SZ" if len(text) == 13 else "%Y%m%d%H%M%SZ"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def _day(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d")


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------------- the CA


class CertificateAuthority:
    """A CA living in one directory; see the module docstring for the layout."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def certificate_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key_path(self) -> Path:
        return self.directory / "private" / "ca.key"

    @property
    def serial_path(self) -> Path:
        return self.directory / "serial"

    @property
    def index_path(self) -> Path:
        return self.directory / "index.txt"

    @property
    def attr_path(self) -> Path:
        return self.directory / "index.txt.attr"

    @property
    def newcerts_path(self) -> Path:
        return self.directory / "newcerts"

    def exists(self) -> bool:
        # ca.crt is written last by init(), so its presence means the CA is complete.
        return self.certificate_path.is_file()

    def _require(self) -> None:
        if not self.exists():
            raise CAError(f"no CA in {self.directory}: run 'mailappliance ca init' first")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Serialises serial/index updates between the daemon and a concurrent CLI run without
        # adding a lock file to openssl's layout: flock works on the directory itself.
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CAError(f"cannot open {self.directory}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ init

    def init(
        self,
        common_name: str,
        key_type: str = "ec-p256",
        days: int = 3650,
        progress: Progress = print,
    ) -> None:
        """Create the CA: key, self-signed certificate, serial, index.txt and newcerts/."""
        _check_key_type(key_type)
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

        _make_dir(self.directory, 0o700)
        try:
            # The directory may have been created empty by a package; it still holds our key.
            os.chmod(self.directory, 0o700)
        except OSError as e:
            raise CAError(f"cannot chmod {self.directory}: {e.strerror or e}") from e
        _make_dir(self.key_path.parent, 0o700)
        _make_dir(self.newcerts_path, 0o700)

        progress(f"generating {key_type} CA key...")
        key = _generate_key(key_type)
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

        _write_atomic(self.key_path, _key_pem(key), 0o600)
        progress(f"wrote {self.key_path}")
        # A random start keeps serials unique even if the CA is ever re-created with the same
        # name; clients (Firefox) refuse two different certificates with one issuer+serial.
        _write_atomic(self.serial_path, (_serial_hex(_random_serial()) + "\n").encode(), 0o644)
        _write_atomic(self.index_path, b"", 0o644)
        # Lets an admin re-issue a host name with `openssl ca` by hand, as we do on renewal.
        _write_atomic(self.attr_path, b"unique_subject = no\n", 0o644)
        _write_atomic(self.certificate_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        progress(f"wrote {self.certificate_path}")

    # ------------------------------------------------------------------ loading

    def _load_ca(self) -> tuple[x509.Certificate, PrivateKey]:
        self._require()
        try:
            cert = x509.load_pem_x509_certificate(_read(self.certificate_path, "CA certificate"))
        except ValueError as e:
            raise CAError(f"CA certificate {self.certificate_path} is not a PEM certificate") from e
        try:
            key = serialization.load_pem_private_key(_read(self.key_path, "CA key"), password=None)
        except (ValueError, TypeError) as e:
            raise CAError(f"CA key {self.key_path} is not an unencrypted PEM key") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAError(f"CA key {self.key_path} is neither an EC nor an RSA key")
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise CAError(f"CA key {self.key_path} does not match {self.certificate_path}")
        return cert, key

    def _read_serial(self) -> int:
        text = _read(self.serial_path, "serial file").decode("ascii", "replace").strip()
        try:
            serial = int(text, 16)
        except ValueError:
            raise CAError(f"serial file {self.serial_path} does not hold a hex number") from None
        if serial < 1:
            raise CAError(f"serial file {self.serial_path} holds {text!r}; serials start at 1")
        return serial

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
        _check_key_type(key_type)
        _check_days(days)
        cn = normalize_name(common_name)
        names = _normalize_names([cn, *sans])
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
        key = _generate_key(key_type)
        is_rsa = isinstance(key, rsa.RSAPrivateKey)

        with self._locked():
            serial = self._read_serial()
            # Reserve the serial before anything refers to it: after a crash we may skip a
            # number, but we never hand the same serial out twice.
            _write_atomic(self.serial_path, (_serial_hex(serial + 1) + "\n").encode(), 0o644)

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
                    x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(_authority_key_id(ca_cert), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
            serial_hex = _serial_hex(serial)

            # Record the certificate before it leaves the CA, so index.txt never misses one.
            _write_atomic(self.newcerts_path / f"{serial_hex}.pem", cert_pem, 0o644)
            line = (
                f"V\t{_index_time(cert.not_valid_after_utc)}\t\t{serial_hex}\tunknown\t/CN={cn}\n"
            )
            index = _read(self.index_path, "index") if self.index_path.exists() else b""
            if index and not index.endswith(b"\n"):
                index += b"\n"
            _write_atomic(self.index_path, index + line.encode(), 0o644)

        _make_dir(key_out.parent, 0o700)
        _make_dir(cert_out.parent, None)
        _write_atomic(key_out, _key_pem(key), 0o600)
        progress(f"wrote key {key_out}")
        _write_atomic(cert_out, cert_pem, 0o644)
        progress(
            f"wrote certificate {cert_out} (serial {serial_hex}, "
            f"valid until {_day(cert.not_valid_after_utc)})"
        )
        return key_out, cert_out

    # ------------------------------------------------------------------ list

    def list(self, now: datetime | None = None) -> builtins.list[IssuedCert]:
        """Every certificate in index.txt; valid ones past their expiry show as "E"."""
        self._require()
        now = now or datetime.now(UTC)
        text = _read(self.index_path, "index").decode("utf-8", "replace")
        result = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                if len(fields) != 6 or fields[0] not in ("V", "R", "E"):
                    raise ValueError(line)
                status, expiry, _revoked, serial_hex, _file, subject = fields
                not_after = _parse_index_time(expiry)
                serial = int(serial_hex, 16)
            except ValueError:
                raise CAError(f"{self.index_path}:{number}: not an index.txt line") from None
            if status == "V" and not_after < now:
                status = "E"
            result.append(
                IssuedCert(
                    status=status,
                    serial=serial,
                    not_after=not_after,
                    subject=subject,
                    path=self.newcerts_path / f"{serial_hex.upper()}.pem",
                )
            )
        return result


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # A CA made by hand with openssl may lack the SKI extension; its key hash is the same value.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _random_serial() -> int:
    # 16 hex digits whose top bit is clear, so the DER INTEGER stays positive and 8 bytes long.
    return secrets.randbits(63) | (1 << 60)


# --------------------------------------------------------------------------- renewal


def _covers(cert_names: list[str], cert_ips: list[IPAddress], name: str) -> bool:
    ip = _parse_ip(name)
    if ip is not None:
        return ip in cert_ips
    for pattern in cert_names:
        if pattern == name:
            return True
        # RFC 6125: "*" matches exactly one whole left-most label.
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _describe_window(window: timedelta) -> str:
    if window % timedelta(days=1) == timedelta(0):
        days = window.days
        return f"{days} day" if days == 1 else f"{days} days"
    return str(window)


def cert_needs_renewal(
    cert_path: Path,
    names: list[str],
    renew_before: timedelta,
    now: datetime | None = None,
) -> str | None:
    """None if cert exists, parses, is valid at now, not expiring within renew_before, and
    covers all names (SAN DNS). Else a short reason: 'missing', 'expires 2026-12-01 (within
    30 days)', 'does not cover pop3.163.com', 'unreadable: ...'."""
    now = now or datetime.now(UTC)
    cert_path = Path(cert_path)
    try:
        data = cert_path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    try:
        # A full-chain file has the server certificate first.
        cert = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        return "unreadable: not a PEM certificate"

    if now < cert.not_valid_before_utc:
        return f"not valid before {_day(cert.not_valid_before_utc)}"
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        return f"expired {_day(not_after)}"
    if not_after - now <= renew_before:
        return f"expires {_day(not_after)} (within {_describe_window(renew_before)})"

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
        ips = san.get_values_for_type(x509.IPAddress)
    except x509.ExtensionNotFound:
        # Clients ignore the CN when checking host names, so no SAN covers nothing.
        dns_names, ips = [], []
    missing = []
    for name in names:
        try:
            wanted = normalize_name(name)
        except CAError:
            wanted = name
        if not _covers(dns_names, ips, wanted) and wanted not in missing:
            missing.append(wanted)
    if missing:
        return f"does not cover {', '.join(missing)}"
    return None


def _key_problem(key_path: Path, cert_path: Path) -> str | None:
    """Why the key next to an otherwise fine certificate cannot be used with it, or None."""
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        return "key missing"
    except OSError as e:
        return f"key unreadable: {e.strerror or e}"
    try:
        key = serialization.load_pem_private_key(data, password=None)
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (ValueError, TypeError, OSError):
        return "key unreadable: not an unencrypted PEM key"
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        return "key does not match certificate"
    return None


def ensure_server_certificate(
    ca: CertificateAuthority,
    hostname: str,
    names: list[str],
    cert_path: Path,
    key_path: Path,
    renew_before: timedelta,
    key_type: str = "ec-p256",
    days: int = 397,
    progress: Progress = print,
) -> bool:
    """If cert_path needs renewal (see cert_needs_renewal) issue a fresh key+cert for hostname
    + names into key_path/cert_path (creating parent folders, 0700 for the key's folder if new),
    initialising the CA first if it does not exist (CN '<hostname> mailappliance CA'). Print
    what was done via progress. Return True if it issued one.

    A certificate whose key is missing or does not match is re-issued too: an interrupted
    earlier run can leave a new key beside the old certificate, and that pair cannot serve.
    """
    if renew_before >= timedelta(days=days):
        # Otherwise every fresh certificate would already be due and we would re-issue forever.
        raise CAError(
            f"renew_before ({_describe_window(renew_before)}) must be shorter than "
            f"the certificate lifetime ({days} days)"
        )
    host = normalize_name(hostname)
    wanted = _normalize_names([host, *names])
    cert_path, key_path = Path(cert_path), Path(key_path)
    reason = cert_needs_renewal(cert_path, wanted, renew_before)
    if reason is None:
        reason = _key_problem(key_path, cert_path)
    if reason is None:
        return False

    if not ca.exists():
        ca.init(f"{host} mailappliance CA", key_type=key_type, progress=progress)
    ca.issue(
        host,
        wanted[1:],
        key_type=key_type,
        days=days,
        key_out=key_path,
        cert_out=cert_path,
        progress=progress,
    )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    others = f" ({', '.join(wanted[1:])})" if len(wanted) > 1 else ""
    progress(
        f"issued certificate for {host}{others} valid until "
        f"{_day(cert.not_valid_after_utc)}; reason: {reason}"
    )
    return True
