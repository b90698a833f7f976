"""DKIM signing and verification filters over dkimpy: our OpenSSL RSA gives dkimpy's very
signatures; a signed message verifies, a changed one fails, an unsigned one is dkim=none,
a signature whose key is not published is permerror."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import dkim
import pytest_twisted
from twisted.internet import defer

from appliance.dkim.keys import DKIMKeyStore
from appliance.filters import dkim_rsa
from appliance.filters.base import MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.filters.dkim_sign import sign
from appliance.filters.dkim_verify import DKIMVerifyFilter
from appliance.interfaces import Envelope, LookupFailed, Recipient
from tests.filters.test_spf import TableResolver

MSG = (
    b"From: User One <user1@163.test>\r\nTo: user3@sina.test\r\nSubject: hello\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@163.test>\r\n\r\nHi there.\r\n"
)


def keys(tmp_path):
    store = DKIMKeyStore(tmp_path)
    store.init("163.test", publish_delay=0)
    return store, store.signing_keys("163.test")


def test_dkim_rsa_openssl_signature_identical_to_dkimpys(tmp_path) -> None:
    """PKCS#1 v1.5 is deterministic: the OpenSSL path signs exactly as dkimpy's Python RSA."""
    _store, (rsa_key, _ed) = keys(tmp_path)
    dkim_rsa.register(rsa_key.private)
    pk = dkim.crypto.parse_pem_private_key(rsa_key.private)
    h = hashlib.sha256(b"some header hash input")
    assert dkim_rsa._sign(h.copy(), pk) == dkim_rsa.original(h.copy(), pk)


def test_dkim_rsa_openssl_verification_agrees_with_dkimpys(tmp_path) -> None:
    """OpenSSL's PKCS#1 v1.5 check gives dkimpy's verdict: a good signature (SHA-256 and
    SHA-1, and one whose leading zero octets are left out) passes, an altered digest, another
    key's signature, random octets and an over-long signature fail."""
    _store, (rsa_key, _ed) = keys(tmp_path)
    _other_store, (other_key, _ed2) = keys(tmp_path / "other")
    private = dkim.crypto.parse_pem_private_key(rsa_key.private)
    public = {"modulus": private["modulus"], "publicExponent": private["publicExponent"]}
    other = dkim.crypto.parse_pem_private_key(other_key.private)
    size = (public["modulus"].bit_length() + 7) // 8
    cases = []
    for algorithm in (hashlib.sha256, hashlib.sha1):
        h = algorithm(b"header hash input")
        good = dkim_rsa.original(h.copy(), private)
        cases += [
            (h, good, True),
            (algorithm(b"another input"), good, False),
            (h, dkim_rsa.original(h.copy(), other), False),
            (h, bytes(size), False),
            (h, b"\x01" + good, False),
        ]
    dkim_rsa.register(rsa_key.private)  # OpenSSL signs the same bytes, 30x faster
    for i in range(4000):  # one signature in 256 starts with a zero octet
        h = hashlib.sha256(b"input %d" % i)
        sig = dkim_rsa._sign(h.copy(), private)
        if sig[0] == 0:
            cases.append((h, sig.lstrip(b"\0"), True))
            break
    else:
        raise AssertionError("no signature with a leading zero octet in 4000")
    for h, sig, expected in cases:
        assert dkim_rsa.original_verify(h.copy(), sig, public) is expected
        assert dkim_rsa._verify(h.copy(), sig, public) is expected


def test_each_rsa_key_is_loaded_once_not_per_message(tmp_path, monkeypatch) -> None:
    """Loading a 2048-bit key checks it (tens of ms of CPU, holding the GIL): signing message
    after message with one key loads it (and dkimpy parses it) once; a new key (a rotation)
    is loaded when it is first used."""
    _store, signing = keys(tmp_path)
    other_store, other = keys(tmp_path / "rotated")
    loads: list[bytes] = []
    real = dkim_rsa.serialization.load_pem_private_key

    def counting(pem, password):
        loads.append(pem)
        return real(pem, password)

    parses: list[bytes] = []
    real_parse = dkim_rsa._original_parse

    def counting_parse(pem):
        parses.append(pem)
        return real_parse(pem)

    monkeypatch.setattr(dkim_rsa.serialization, "load_pem_private_key", counting)
    monkeypatch.setattr(dkim_rsa, "_original_parse", counting_parse)
    monkeypatch.setattr(dkim_rsa, "_registered", {})
    dkim_rsa.install()
    # dkimpy stamps t= with the clock's second, which five signatures may span on a busy
    # machine (and t= is signed, so b= differs too): the clock it reads stands still here
    monkeypatch.setattr(dkim.time, "time", lambda: 1_796_000_000.0)
    first = [sign(MSG, signing) for _ in range(5)]
    assert loads == [signing[0].private]
    assert parses == [signing[0].private]  # dkimpy's own parse of the PEM: once too
    assert len(set(first)) == 1  # deterministic RSA and Ed25519 (t= pinned above)
    sign(MSG, other)
    assert loads == [signing[0].private, other[0].private]
    assert signing[0].private != other[0].private


def resolver_for(store: DKIMKeyStore) -> TableResolver:
    table = {("TXT", owner): [text.encode()] for owner, text in store.records()["163.test"]}
    return TableResolver(table)


def run_now(f, *args):
    return defer.maybeDeferred(f, *args)


async def verdict(resolver, message: bytes):
    env = Envelope("user1@163.test", (Recipient("user3@sina.test"),), "127.0.1.1", "mail.163.test")
    body = SpillBuffer(Path(tempfile.gettempdir()))
    body.write(message)
    check = MessageCheck(env, "Q1", body)
    v = await DKIMVerifyFilter(resolver, run_now, 10 * 1024 * 1024).message(check)
    return v, check


@pytest_twisted.ensureDeferred
async def test_dkim_signed_message_verifies_both_algorithms(tmp_path) -> None:
    store, ks = keys(tmp_path)
    headers = sign(MSG, ks)
    assert len(headers) == 2 and all(h.startswith("DKIM-Signature: v=1;") for h in headers)
    signed = b"".join(h.encode() + b"\r\n" for h in headers) + MSG
    v, check = await verdict(resolver_for(store), signed)
    assert [a.split()[0] for a in check.auth_results] == ["dkim=pass", "dkim=pass"]
    assert {a.split()[3] for a in check.auth_results} == {
        "header.a=rsa-sha256",
        "header.a=ed25519-sha256",
    }
    assert check.results["dkim.pass"] == "163.test"


@pytest_twisted.ensureDeferred
async def test_dkim_changed_message_fails(tmp_path) -> None:
    store, ks = keys(tmp_path)
    signed = b"".join(h.encode() + b"\r\n" for h in sign(MSG, ks)) + MSG
    v, check = await verdict(resolver_for(store), signed.replace(b"Hi there.", b"Hi THERE."))
    assert [a.split()[0] for a in check.auth_results] == ["dkim=fail", "dkim=fail"]
    assert check.results["dkim.pass"] == ""


@pytest_twisted.ensureDeferred
async def test_dkim_unsigned_none_unpublished_key_permerror_dns_failure_temperror(tmp_path) -> None:
    store, ks = keys(tmp_path)
    _v, check = await verdict(TableResolver({}), MSG)
    assert check.auth_results == ["dkim=none"]
    signed = b"".join(h.encode() + b"\r\n" for h in sign(MSG, ks[:1])) + MSG
    _v, check = await verdict(TableResolver({}), signed)
    assert check.auth_results[0].startswith("dkim=permerror header.d=163.test")

    class Failing(TableResolver):
        def lookup_txt(self, name):
            return defer.fail(LookupFailed("SERVFAIL"))

    _v, check = await verdict(Failing({}), signed)
    assert check.auth_results[0].startswith("dkim=temperror")
