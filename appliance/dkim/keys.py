"""The DKIM keys of our domains: made, rotated, published and handed to the signer.

Under <state_dir>/dkim/<domain>/: one private key file per selector (0600; RSA 2048 as PEM,
Ed25519 as its base64 seed, the forms dkimpy reads) and keys.json, the state:

    {"keys": [{"selector": "s20261201r", "algorithm": "rsa-sha256", "created": ...,
               "sign_from": ..., "retire_at": null}, ...]}

A new key is published at once (its TXT record at <selector>._domainkey.<domain>) but signs
only from sign_from (created + publish_delay), so resolvers that cached the old answer have
seen the new record before the first signature needs it. `rotate` makes a new key of each
algorithm and gives the ones it replaces a retire_at (now + grace): they stay published so
mail signed before the rotation still verifies, and are dropped (files and all) by the
first rotate or start after that. Every change is written atomically (appliance.durable).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from appliance.durable import atomic_replace
from appliance.errors import ApplianceError
from appliance.interfaces import DKIMKey

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
ALGORITHMS = (RSA, ED25519)
STATE = "keys.json"
KEY_MODE = 0o600
DIR_MODE = 0o700


class DKIMError(ApplianceError):
    """A DKIM key operation that cannot be done (no keys yet, an unreadable key)."""


@dataclass(frozen=True)
class KeyInfo:
    selector: str
    algorithm: str  # RSA or ED25519
    created: float
    sign_from: float
    retire_at: float | None = None

    def signs_at(self, now: float) -> bool:
        return self.sign_from <= now and (self.retire_at is None or now < self.retire_at)

    def published_at(self, now: float) -> bool:
        return self.retire_at is None or now < self.retire_at


def _suffix(algorithm: str) -> str:
    return "r" if algorithm == RSA else "e"


class DKIMKeyStore:
    """The keys of every domain under folder (<state_dir>/dkim)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # ------------------------------------------------------------------ reading

    def domains(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(d.name for d in self.folder.iterdir() if (d / STATE).is_file())

    def keys(self, domain: str) -> list[KeyInfo]:
        path = self.folder / domain / STATE
        try:
            data = json.loads(path.read_text())
            return [KeyInfo(**k) for k in data["keys"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DKIMError(f"{path}: unreadable DKIM key state: {e}") from None

    def public_record(self, domain: str, key: KeyInfo) -> str:
        """The TXT data for <selector>._domainkey.<domain>."""
        private = self._private(domain, key)
        if key.algorithm == RSA:
            k = ser.load_pem_private_key(private, None)
            assert isinstance(k, rsa.RSAPrivateKey)
            der = k.public_key().public_bytes(
                ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        seed = base64.b64decode(private)
        pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
        raw = pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"

    def records(self, now: float | None = None) -> dict[str, list[tuple[str, str]]]:
        """domain -> [(owner name, TXT data)] of every key still published."""
        now = time.time() if now is None else now
        out: dict[str, list[tuple[str, str]]] = {}
        for domain in self.domains():
            for k in self.keys(domain):
                if k.published_at(now):
                    owner = f"{k.selector}._domainkey.{domain}"
                    out.setdefault(domain, []).append((owner, self.public_record(domain, k)))
        return out

    def signing_keys(self, domain: str, now: float | None = None) -> list[DKIMKey]:
        """The newest key of each algorithm that may sign now (RSA first)."""
        now = time.time() if now is None else now
        out = []
        for algorithm in ALGORITHMS:
            usable = [k for k in self.keys(domain) if k.algorithm == algorithm and k.signs_at(now)]
            if usable:
                k = max(usable, key=lambda k: k.created)
                out.append(DKIMKey(domain, k.selector, algorithm, self._private(domain, k)))
        return out

    def state_stamp(self) -> tuple[tuple[str, int, int], ...]:
        """Something that changes whenever any domain's key state does (for reloading)."""
        out = []
        for domain in self.domains():
            st = (self.folder / domain / STATE).stat()
            out.append((domain, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _private(self, domain: str, key: KeyInfo) -> bytes:
        path = self.folder / domain / f"{key.selector}.key"
        try:
            return path.read_bytes()
        except OSError as e:
            raise DKIMError(f"{path}: cannot read DKIM key: {e.strerror or e}") from None

    # ------------------------------------------------------------------ changing

    def init(self, domain: str, publish_delay: float, now: float | None = None) -> list[KeyInfo]:
        """First keys for domain (one per algorithm); DKIMError if it has keys already."""
        if self.keys(domain):
            raise DKIMError(f"{domain} has DKIM keys already (use rotate to replace them)")
        now = time.time() if now is None else now
        made = [self._make(domain, a, now, publish_delay) for a in ALGORITHMS]
        self._save(domain, made)
        return made

    def rotate(
        self, domain: str, publish_delay: float, grace: float, now: float | None = None
    ) -> list[KeyInfo]:
        """New keys for domain; the current ones retire after grace. The new keys."""
        now = time.time() if now is None else now
        old = self.keys(domain)
        if not old:
            raise DKIMError(f"{domain} has no DKIM keys yet (use init)")
        kept = []
        for k in old:
            if k.retire_at is not None and k.retire_at <= now:
                self._remove(domain, k)
                continue
            kept.append(k if k.retire_at is not None else replace(k, retire_at=now + grace))
        made = []
        for a in ALGORITHMS:
            made.append(self._make(domain, a, now, publish_delay, taken={k.selector for k in kept}))
        self._save(domain, kept + made)
        return made

    def _make(
        self,
        domain: str,
        algorithm: str,
        now: float,
        publish_delay: float,
        taken: set[str] | frozenset[str] = frozenset(),
    ) -> KeyInfo:
        folder = self.folder / domain
        folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(folder, DIR_MODE)
        stem = time.strftime("s%Y%m%d", time.gmtime(now))
        selector, n = f"{stem}{_suffix(algorithm)}", 1
        while selector in taken or (folder / f"{selector}.key").exists():
            n += 1
            selector = f"{stem}n{n}{_suffix(algorithm)}"
        if algorithm == RSA:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            data = key.private_bytes(
                ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
            )
        else:
            ek = ed25519.Ed25519PrivateKey.generate()
            raw = ek.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
            data = base64.b64encode(raw) + b"\n"
        atomic_replace(folder / f"{selector}.key", data, KEY_MODE)
        return KeyInfo(selector, algorithm, now, now + publish_delay)

    def _save(self, domain: str, keys: list[KeyInfo]) -> None:
        text = json.dumps({"keys": [asdict(k) for k in keys]}, indent=1) + "\n"
        atomic_replace(self.folder / domain / STATE, text.encode(), KEY_MODE)

    def _remove(self, domain: str, key: KeyInfo) -> None:
        try:
            os.unlink(self.folder / domain / f"{key.selector}.key")
        except FileNotFoundError:
            pass


class DKIMKeyring:
    """interfaces.DKIMKeys over a DKIMKeyStore: the keys kept in memory and read again at
    most once per interval (a rotation, or a new key's sign_from, is seen within it)."""

    def __init__(self, store: DKIMKeyStore, clock: Callable[[], float], interval: float = 5.0):
        self.store = store
        self.clock = clock
        self.interval = interval
        self._read_at = -interval
        self._cache: dict[str, list[DKIMKey]] = {}

    def signing_keys(self, domain: str) -> list[DKIMKey]:
        now = self.clock()
        if now - self._read_at >= self.interval:
            self._read_at = now
            self._cache.clear()
        keys = self._cache.get(domain)
        if keys is None:
            try:
                keys = self.store.signing_keys(domain, time.time())
            except DKIMError:
                keys = []
            self._cache[domain] = keys
        return keys
