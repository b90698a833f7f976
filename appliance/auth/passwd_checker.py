"""Logins against the passwd file: the twisted.cred checker and the Authenticator seam.

`PasswdFileChecker` checks PLAIN/LOGIN passwords (in the thread pool: the schemes are slow on
purpose) and CRAM-MD5 responses (on the reactor: three MD5 blocks) against a PasswdFile.
Bad credentials fail with UnauthorizedLogin only after the same work a real check does, so
timing does not tell who exists: an unknown user is checked against a dummy hash of the scheme
most users have, or a dummy CRAM-MD5 secret. The file never makes a login fail otherwise: one
that cannot be read keeps the previous users (or none), so it never raises AuthUnavailable.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from appliance.auth.cram import cram_md5_secret, verify_cram_md5
from appliance.auth.passwd_format import PasswdEntry
from appliance.auth.schemes import hash_password, verify_password
from appliance.interfaces import SaslCredentials

if TYPE_CHECKING:
    from appliance.auth.passwd import PasswdFile
    from appliance.interfaces import Authenticator

# Checked for unknown users when most users have BLF-CRYPT, so that they cost what a real
# user costs; the password behind it was random and thrown away. Cost = BCRYPT_ROUNDS.
_DUMMY_HASH = "{BLF-CRYPT}$2b$12$YKpAenL8eq7gb5W3jaI4le4y1zowP4yt2BWArueieHr/nVtSjeXlK"
_DUMMY_CRAM = cram_md5_secret(secrets.token_bytes(16))


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


@implementer(ICredentialsChecker)
class PasswdFileChecker:
    """twisted.cred checker over a PasswdFile: PLAIN/LOGIN passwords and CRAM-MD5 responses.

    The avatar id is the lower-cased address (str). Bad credentials fail with UnauthorizedLogin
    only after the same work a real check does, so timing does not tell who exists.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    log = Logger()

    def __init__(self, passwd: PasswdFile) -> None:
        self.passwd = passwd
        self._dummies: dict[str, str] = {"BLF-CRYPT": _DUMMY_HASH}

    # ------------------------------------------------------------------ Authenticator

    def authenticate(self, credentials: SaslCredentials) -> Deferred[str]:
        """The login for good credentials; UnauthorizedLogin for anything else."""
        return self.requestAvatarId(credentials)

    def cram_md5_available(self) -> bool:
        """Whether to advertise CRAM-MD5 at all: some user has a secret."""
        return self.passwd.has_cram_md5_users()

    def supports_cram_md5(self, address: str) -> bool:
        entry = self.passwd.entry(address)
        return entry is not None and entry.cram_md5 is not None

    # ------------------------------------------------------------------ twisted.cred

    # twisted.cred types avatar ids as bytes; ours are the login as text (Authenticator)
    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]
        name = _text(getattr(credentials, "username", None))
        entry = self.passwd.entry(name) if name is not None else None
        challenge = getattr(credentials, "challenge", None)
        response = getattr(credentials, "response", None)
        if (
            IUsernameHashedPassword.providedBy(credentials)
            and isinstance(challenge, bytes)
            and isinstance(response, bytes)
        ):
            return self._check_cram(entry, challenge, response)
        if not IUsernamePassword.providedBy(credentials):
            # e.g. APOP: verifying it needs the cleartext password, which we do not keep
            return fail(UnauthorizedLogin("unsupported credentials"))
        password = credentials.password
        if not isinstance(password, str | bytes):
            return fail(UnauthorizedLogin("no password"))
        real = entry is not None and bool(entry.password)

        def check() -> bool:
            stored = entry.password if real and entry is not None else self.dummy_hash()
            return verify_password(password, stored)

        def done(ok: bool) -> str:
            if ok and real and entry is not None:
                return entry.address
            raise UnauthorizedLogin("bad credentials")

        return self.passwd.defer_to_thread(check).addCallback(done)

    # ------------------------------------------------------------------ the equal work

    def dummy_hash(self) -> str:
        """A hash of a thrown-away password in the scheme most users have, made with our
        default costs, so that checking an unknown user costs about what a real one does.

        Made on first use, in the worker thread that needs it; a race only makes two.
        """
        scheme = self.passwd.common_scheme()
        dummy = self._dummies.get(scheme)
        if dummy is None:
            dummy = self._dummies[scheme] = hash_password(secrets.token_hex(16), scheme)
        return dummy

    def _check_cram(
        self, entry: PasswdEntry | None, challenge: bytes, response: bytes
    ) -> Deferred[str]:
        # cheap (three MD5 blocks), so it stays on the reactor; unknown users get the same work
        secret = entry.cram_md5 if entry is not None else None
        ok = verify_cram_md5(secret or _DUMMY_CRAM, challenge, response)
        if ok and secret is not None and entry is not None:
            return succeed(entry.address)
        return fail(UnauthorizedLogin("bad credentials"))


if TYPE_CHECKING:
    _authenticator: type[Authenticator] = PasswdFileChecker

__all__ = ["PasswdFileChecker"]
