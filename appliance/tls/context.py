"""TLS server options shared by every listener (SMTPS, submission STARTTLS, POP3S, IMAPS).

`make_tls_options` turns PEM files into one Twisted `CertificateOptions`; the same object is
meant to be reused for implicit-TLS ports and for STARTTLS/STLS upgrades so every service offers
the same protocol versions and ciphers. Problems with the files become `CAError`s that name the
file, so start-up can print one sentence instead of an OpenSSL traceback.

Key exchange is limited to ECDHE over X25519, P-256 and P-384, in TLS 1.2 and TLS 1.3 alike: no
DHE cipher suites, and a supported-groups list (GROUPS) without the finite-field ffdhe* groups or
any other curve. A TLS scan flagged finite-field DH: it costs far more CPU than ECDHE for the same
strength and has a history of weak-parameter attacks (Logjam). OpenSSL's default groups would let
a TLS 1.3 client pick ffdhe2048 or P-521. The list also leaves out the post-quantum hybrid
X25519MLKEM768, which the OpenSSL bundled with cryptography would otherwise prefer.
pyOpenSSL cannot set a groups list (``set_tmp_ecdh`` pins a single curve), so it is set through
cryptography's OpenSSL binding. If that binding is missing, start-up fails with a `CAError` rather
than serving OpenSSL's default groups.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.ssl import TLSVersion

from appliance.errors import CAError

MIN_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# ECDHE with AEAD only, for TLS 1.2 (no DHE: finite-field key exchange is not offered at all).
# TLS 1.3 suites are configured separately by OpenSSL and are all AEAD already; their key
# exchange is governed by GROUPS.
CIPHER_STRING = "ECDHE+AESGCM:ECDHE+CHACHA20"

# The supported groups for ECDHE (TLS 1.2) and key shares (TLS 1.3), in server preference order.
GROUPS = "X25519:P-256:P-384"


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CAError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _load_certs(path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError:
        raise CAError(f"{what} {path} is not a PEM certificate file") from None
    return certs


def _load_key(path: Path) -> object:
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CAError(
            f"key {path} is encrypted; the server needs it without a passphrase"
        ) from None
    except ValueError:
        raise CAError(f"key {path} is not a PEM private key") from None
    return key


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _restrict_groups(context: SSL.Context) -> None:
    """Limit `context`'s key exchange groups to GROUPS, or raise CAError if that is impossible.

    Must run before the context makes its first connection: OpenSSL copies the groups list into
    each connection when it is created.
    """
    lib = Binding().lib
    # SSL_CTX_set1_curves_list is OpenSSL's older name for SSL_CTX_set1_groups_list (the same
    # SSL_CTRL_SET_GROUPS_LIST call); it is the one cryptography's binding exports.
    set_groups = getattr(lib, "SSL_CTX_set1_curves_list", None)
    raw_context = getattr(context, "_context", None)
    if set_groups is None or raw_context is None:
        raise CAError(
            "cannot limit TLS key exchange to " + GROUPS.replace(":", ", ") + ": this "
            "pyOpenSSL/cryptography build does not expose SSL_CTX_set1_curves_list; "
            "refusing to start with OpenSSL's default groups (finite-field DHE included)"
        )
    if set_groups(raw_context, GROUPS.encode("ascii")) != 1:
        lib.ERR_clear_error()  # do not leave OpenSSL's reason for pyOpenSSL's next call to find
        raise CAError(f"OpenSSL refused the TLS key exchange groups {GROUPS}")


def make_tls_options(
    cert_path: Path,
    key_path: Path,
    chain_paths: Sequence[Path] = (),
    min_version: str = "1.2",
) -> ssl.CertificateOptions:
    """Load PEM cert+key (+ extra chain certs), check the key matches the cert, and return
    CertificateOptions limited to TLS >= min_version, ECDHE over GROUPS and AEAD ciphers.

    A certificate file holding several certificates (certbot's fullchain.pem) is accepted: the
    first is the server certificate and the rest are sent as chain, before `chain_paths`.
    """
    try:
        minimum = MIN_VERSIONS[min_version]
    except KeyError:
        raise CAError(
            f"unsupported minimum TLS version {min_version!r} (choose {' or '.join(MIN_VERSIONS)})"
        ) from None

    certs = _load_certs(cert_path, "certificate")
    cert, chain = certs[0], certs[1:]
    for path in chain_paths:
        chain.extend(_load_certs(path, "chain file"))
    key = _load_key(key_path)
    try:
        key_public = _public_der(key.public_key())  # type: ignore[attr-defined]
    except Exception:
        raise CAError(f"key {key_path} is not a usable server key") from None
    if key_public != _public_der(cert.public_key()):
        raise CAError(f"key {key_path} does not match certificate {cert_path}")

    try:
        # pyOpenSSL takes cryptography objects directly; its own X509/PKey wrappers are
        # deprecated and would warn on every context.
        # Twisted's annotations still name pyOpenSSL's PKey/X509 for these
        options = ssl.CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=cert,  # type: ignore[arg-type]
            extraCertChain=chain,  # type: ignore[arg-type]
            raiseMinimumTo=minimum,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHER_STRING),
        )
        # Twisted builds the OpenSSL context lazily, on the first connection; build it now so a
        # key OpenSSL cannot use fails at start-up rather than on a client's handshake.
        context = options.getContext()
    except CAError:
        raise
    except Exception as e:
        raise CAError(f"cannot use certificate {cert_path} with key {key_path}: {e}") from e
    # getContext() caches this context and every connection is made from it, so the groups are
    # set here, once, before any connection exists.
    _restrict_groups(context)
    return options


def check_key_permissions(key_path: Path) -> str | None:
    """A warning if the key file can be read (or written) by group or others, else None.

    A missing file gives None: reporting that is make_tls_options' job.
    """
    try:
        mode = stat.S_IMODE(os.stat(key_path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot check permissions of key file {key_path}: {e.strerror or e}"
    if not mode & 0o077:
        return None
    how = "readable" if mode & 0o044 else "accessible"
    return f"key file {key_path} is {how} by group/others (mode {mode:04o}); chmod 600 it"
