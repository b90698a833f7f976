"""Interop fixtures: one real, private Postfix per test module, on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.postfix import MASTER, Postfix, start_postfix


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed P-256 certificate and key for name, made with the openssl CLI."""
    cert, key = folder / "postfix.crt", folder / "postfix.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    """A private Postfix (smtpd with STARTTLS on a self-signed certificate) for this module."""
    if not MASTER.exists() and os.geteuid() != 0:
        pytest.skip(f"{MASTER} missing (Debian package postfix; `make test` installs it as root)")
    # Not under pytest's basetemp: that may be 0700, and virtual(8) writes as nobody.
    root = Path(tempfile.mkdtemp(prefix="interop-postfix-"))
    root.chmod(0o711)
    pf = None
    try:
        cert, key = self_signed(root, "mx.postfix.test")
        pf = start_postfix(root / "pf", port=free_port(), tls_cert=cert, tls_key=key)
        yield pf
    finally:
        if pf is not None:
            pf.stop()
        shutil.rmtree(root, ignore_errors=True)
