"""The DKIM key store: init makes an RSA 2048 and an Ed25519 key (files 0600), rotate makes
new ones that sign only after the publish delay while the old ones retire after the grace
period, and the published records follow."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization as ser

from appliance.dkim.keys import DKIMError, DKIMKeyring, DKIMKeyStore

DAY = 86400.0
T0 = 1_796_000_000.0


def test_keys_init_rsa_2048_and_ed25519_0600_signing_at_once(tmp_path) -> None:
    store = DKIMKeyStore(tmp_path)
    made = store.init("163.test", publish_delay=0, now=T0)
    assert [k.algorithm for k in made] == ["rsa-sha256", "ed25519-sha256"]
    for k in made:
        assert (tmp_path / "163.test" / f"{k.selector}.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "163.test").stat().st_mode & 0o777 == 0o700
    keys = store.signing_keys("163.test", now=T0)
    assert [k.algorithm for k in keys] == ["rsa-sha256", "ed25519-sha256"]
    pem = ser.load_pem_private_key(keys[0].private, None)
    assert pem.key_size == 2048  # type: ignore[union-attr]
    assert len(base64.b64decode(keys[1].private)) == 32
    with pytest.raises(DKIMError, match="has DKIM keys already"):
        store.init("163.test", publish_delay=0, now=T0)


def test_keys_rotate_new_sign_after_delay_old_published_until_grace(tmp_path) -> None:
    store = DKIMKeyStore(tmp_path)
    old = store.init("163.test", publish_delay=0, now=T0)
    new = store.rotate("163.test", publish_delay=3600, grace=7 * DAY, now=T0 + DAY)
    assert {k.selector for k in new}.isdisjoint(k.selector for k in old)
    # within the publish delay the old keys still sign, both are published
    signing = {k.selector for k in store.signing_keys("163.test", now=T0 + DAY + 60)}
    assert signing == {k.selector for k in old}
    owners = {o for o, _t in store.records(now=T0 + DAY + 60)["163.test"]}
    assert owners == {f"{k.selector}._domainkey.163.test" for k in old + new}
    # after it, the new ones sign; after the grace period the old ones are gone from DNS
    assert {k.selector for k in store.signing_keys("163.test", now=T0 + DAY + 3601)} == {
        k.selector for k in new
    }
    owners = {o for o, _t in store.records(now=T0 + 9 * DAY)["163.test"]}
    assert owners == {f"{k.selector}._domainkey.163.test" for k in new}
    # the next rotation removes retired key files
    store.rotate("163.test", publish_delay=0, grace=DAY, now=T0 + 9 * DAY)
    for k in old:
        assert not (tmp_path / "163.test" / f"{k.selector}.key").exists()


def test_keys_records_are_the_public_halves(tmp_path) -> None:
    store = DKIMKeyStore(tmp_path)
    rsa, ed = store.init("163.test", publish_delay=0, now=T0)
    records = dict(store.records(now=T0)["163.test"])
    rsa_txt = records[f"{rsa.selector}._domainkey.163.test"]
    assert rsa_txt.startswith("v=DKIM1; k=rsa; p=")
    der = base64.b64decode(rsa_txt.split("p=")[1])
    assert ser.load_der_public_key(der).key_size == 2048  # type: ignore[union-attr]
    assert records[f"{ed.selector}._domainkey.163.test"].startswith("v=DKIM1; k=ed25519; p=")


def test_keys_rotate_without_keys_and_unknown_domain(tmp_path) -> None:
    store = DKIMKeyStore(tmp_path)
    with pytest.raises(DKIMError, match="no DKIM keys yet"):
        store.rotate("163.test", publish_delay=0, grace=DAY)
    assert store.signing_keys("163.test") == [] and store.records() == {}


def test_keyring_rereads_within_interval(tmp_path) -> None:
    store = DKIMKeyStore(tmp_path)
    now = [100.0]
    ring = DKIMKeyring(store, lambda: now[0], interval=5)
    assert ring.signing_keys("163.test") == []
    store.init("163.test", publish_delay=0)
    assert ring.signing_keys("163.test") == []  # cached
    now[0] += 5
    assert len(ring.signing_keys("163.test")) == 2
