"""One IMAP listener: its settings, the collaborators its sessions use, its connection slots.

service.py builds one IMAPFactory per port (143 with STARTTLS, 993 with implicit TLS, which it
wraps in TLSMemoryBIOFactory as SMTP's 465) and hands it the seams of appliance.interfaces;
nothing in appliance.imap knows which class is behind them.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger

from appliance.imap.session import IMAPSession
from appliance.imap.settings import IMAPSettings
from appliance.interfaces import Authenticator, LoginThrottle, MailStore
from appliance.limits import ConnectionSlots
from appliance.workers import QuickCalls, WorkerPool


class IMAPFactory(protocol.ServerFactory[IMAPSession]):
    """Shared state of one listener.

    implicit_tls: the port is wrapped in TLS by service.py (993: no STARTTLS offered);
    store: the mailboxes (folders, listings, flags, APPEND, COPY, watch); authenticator: credential checks,
    None to allow no login; tls: the context for STLS, None for no STARTTLS; throttle: the shared
    login throttle, None for none; pool: the worker threads every blocking store call runs
    in (and QuickCalls runs the cheap ones, which write nothing, on the reactor while they
    stay cheap); events: the mail event stream's Logger (appliance.log.mail_logger("imapd"));
    reactor: for deadlines, delays and IDLE's polling; slots: the IMAP service's
    connection slots shared by its ports (default: this listener's own).
    """

    def __init__(
        self,
        settings: IMAPSettings,
        *,
        implicit_tls: bool,
        store: MailStore,
        authenticator: Authenticator | None,
        tls: IOpenSSLContextFactory | None,
        throttle: LoginThrottle | None,
        pool: WorkerPool,
        events: Logger,
        reactor: IReactorTime,
        slots: ConnectionSlots | None = None,
    ) -> None:
        self.settings = settings
        self.implicit_tls = implicit_tls
        self.store = store
        self.authenticator = authenticator
        self.tls = tls
        self.throttle = throttle
        self.pool = pool
        self.events = events
        self.reactor = reactor
        self.slots = slots if slots is not None else ConnectionSlots.for_service(settings)
        self.quick = QuickCalls(pool, enabled=settings.quick_store_calls)

    def buildProtocol(self, addr: IAddress | None) -> IMAPSession:  # noqa: N802 (Twisted's API)
        return IMAPSession(self)
