"""The tls service: holds the current TLS options and renews our own certificate in time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.application import service
from twisted.internet import ssl, task
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from appliance.errors import ApplianceError
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import make_tls_options
from appliance.tls.renewal import cert_needs_renewal, ensure_server_certificate


class TLSSettings:
    """Where the certificate comes from and how it is renewed (derived from [tls])."""

    def __init__(
        self,
        *,
        hostname: str,
        names: list[str],
        cert: Path,
        key: Path,
        chain: tuple[Path, ...],
        min_version: str,
        ca: CertificateAuthority | None,
        renew_before: timedelta,
        key_type: str,
        validity_days: int,
    ) -> None:
        self.hostname = hostname
        self.names = names
        self.cert = cert
        self.key = key
        self.chain = chain
        self.min_version = min_version
        self.ca = ca  # None: an externally issued certificate, used as it is
        self.renew_before = renew_before
        self.key_type = key_type
        self.validity_days = validity_days

    def ensure(self, progress: Any = print) -> bool:
        """Issue our certificate if it is missing or due; True if a new one was issued."""
        if self.ca is None:
            return False
        return ensure_server_certificate(
            self.ca,
            self.hostname,
            self.names,
            self.cert,
            self.key,
            self.renew_before,
            key_type=self.key_type,
            days=self.validity_days,
            progress=progress,
        )

    def load(self) -> ssl.CertificateOptions:
        return make_tls_options(self.cert, self.key, self.chain, self.min_version)


@implementer(IOpenSSLContextFactory)
class RotatingContextFactory:
    """A context factory that always hands out the tls service's current context.

    Listeners keep this object; when the certificate is renewed, new connections get the new
    one without rebinding the port.
    """

    def __init__(self, tls_service: TLSService) -> None:
        self._service = tls_service

    def getContext(self) -> SSL.Context:  # noqa: N802 (Twisted's API)
        return self._service.options.getContext()


class TLSService(service.Service):
    """Checks the certificate twice a day and swaps in a renewed one."""

    log = Logger()
    check_interval = 12 * 3600

    def __init__(self, settings: TLSSettings, options: ssl.CertificateOptions) -> None:
        self.settings = settings
        self.options = options
        self.context_factory = RotatingContextFactory(self)
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.renew_if_due)
        self._loop.start(self.check_interval, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def renew_if_due(self) -> None:
        s = self.settings
        try:
            if s.ca is None:
                reason = cert_needs_renewal(s.cert, [], s.renew_before)
                if reason:
                    self.log.warn(
                        "external certificate {path} needs attention: {reason}",
                        path=str(s.cert),
                        reason=reason,
                    )
                return
            if s.ensure(progress=lambda line: self.log.info("{line}", line=line)):
                self.options = s.load()
        except ApplianceError as e:
            self.log.error("certificate renewal failed: {reason}", reason=str(e))
