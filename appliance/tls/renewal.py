"""Keeping our own server certificate current: when it needs renewing, and renewing it.

At start-up (and then periodically, from appliance.tls.service) `ensure_server_certificate`
re-issues the appliance's own certificate from our CA when it is missing, about to expire, no
longer covers every configured name or has lost its key; `cert_needs_renewal` says why.
Everything here blocks: call it before the reactor starts or from a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.errors import CAError
from appliance.tls.ca import CertificateAuthority, Progress
from appliance.tls.ca_files import day
from appliance.tls.certnames import normalize_name, normalize_names, parse_ip
from appliance.tls.keys import public_der

# What x509.IPAddress entries hold: an address, or a network (only in name constraints).
_SANAddress = IPv4Address | IPv6Address | IPv4Network | IPv6Network


def _covers(cert_names: list[str], cert_ips: Sequence[_SANAddress], name: str) -> bool:
    ip = parse_ip(name)
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
        return f"not valid before {day(cert.not_valid_before_utc)}"
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        return f"expired {day(not_after)}"
    if not_after - now <= renew_before:
        return f"expires {day(not_after)} (within {_describe_window(renew_before)})"

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
    if public_der(key.public_key()) != public_der(cert.public_key()):
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
    wanted = normalize_names([host, *names])
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
        f"{day(cert.not_valid_after_utc)}; reason: {reason}"
    )
    return True
