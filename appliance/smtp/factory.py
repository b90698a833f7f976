"""One SMTP listener: its settings, the collaborators its sessions use, its connection counts.

service.py builds one SMTPFactory per listening mode (smtp, smtps, submission) and hands it
the seams of appliance.interfaces; nothing in appliance.smtp knows which class is behind them.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger

from appliance.interfaces import (
    Authenticator,
    LoginThrottle,
    MessageFilter,
    MessageSink,
    Policy,
)
from appliance.limits import ConnectionSlots
from appliance.smtp.rdns import ReverseLookup
from appliance.smtp.session import SMTPSession
from appliance.smtp.settings import ListenerMode, SMTPSettings


class SMTPFactory(protocol.ServerFactory[SMTPSession]):
    """Shared state of one listener: settings, collaborators, connection counts.

    sink: where accepted messages go (the queue); policy: the connect, sender and recipient
    decisions; authenticator: SASL credential checks, None to offer no AUTH; tls: the context
    for STARTTLS (an implicit-TLS listener is wrapped by service.py), None for no STARTTLS;
    throttle: login-failure delays, None for none; events: the mail event stream's Logger
    (appliance.log.mail_logger("smtpd")); reactor: for timeouts and delays; rdns: verified
    client names, None to leave every client 'unknown'; filters: the filter chain asked after
    the policy at connect, MAIL, RCPT and the end of the data, None for none.
    """

    def __init__(
        self,
        settings: SMTPSettings,
        mode: ListenerMode,
        *,
        sink: MessageSink,
        policy: Policy,
        authenticator: Authenticator | None,
        tls: IOpenSSLContextFactory | None,
        throttle: LoginThrottle | None,
        events: Logger,
        reactor: IReactorTime,
        rdns: ReverseLookup | None = None,
        slots: ConnectionSlots | None = None,
        filters: MessageFilter | None = None,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.sink = sink
        self.policy = policy
        self.authenticator = authenticator
        self.tls = tls
        self.throttle = throttle
        self.events = events
        self.reactor = reactor
        self.rdns = rdns
        self.filters = filters
        self.slots = slots if slots is not None else ConnectionSlots.for_service(settings)

    def buildProtocol(self, addr: IAddress | None) -> SMTPSession:  # noqa: N802 (Twisted's API)
        return SMTPSession(self)
