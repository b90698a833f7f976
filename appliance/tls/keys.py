"""Private keys for the CA and its server certificates: the types we make, PEM, comparison."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from appliance.errors import CAError

KEY_TYPES = ("ec-p256", "rsa-3072", "rsa-4096")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _unknown(key_type: str) -> str:
    return f"unknown key type {key_type!r} (choose one of {', '.join(KEY_TYPES)})"


def check_key_type(key_type: str) -> None:
    """CAError, listing the choices, unless key_type is one of KEY_TYPES."""
    if key_type not in KEY_TYPES:
        raise CAError(_unknown(key_type))


def generate_key(key_type: str) -> PrivateKey:
    """A new key of key_type (one of KEY_TYPES); RSA keys use the exponent 65537."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "rsa-4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise CAError(_unknown(key_type))


def key_pem(key: PrivateKey) -> bytes:
    """key as unencrypted PKCS#8 PEM, the form we write key files in."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_der(key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of key: equal bytes mean the same public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
