"""One POP3 listener: its settings, the collaborators its sessions use, its connection slots.

service.py builds one POP3Factory per port (110 with STLS, 995 with implicit TLS, which it
wraps in TLSMemoryBIOFactory as SMTP's 465) and hands it the seams of appliance.interfaces;
nothing in appliance.pop3 knows which class is behind them.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger

from appliance.interfaces import Authenticator, LoginThrottle, MailStore
from appliance.limits import ConnectionSlots
from appliance.pop3.session import POP3Session
from appliance.pop3.settings import POP3Settings
from appliance.workers import WorkerPool


class POP3Factory(protocol.ServerFactory[POP3Session]):
    """Shared state of one listener.

    implicit_tls: the port is wrapped in TLS by service.py (995: no STLS offered);
    store: the mailboxes (lock_mailbox, open_maildrop); authenticator: credential checks,
    None to allow no login; tls: the context for STLS, None for no STLS; throttle: the shared
    login throttle, None for none; pool: the worker threads every blocking store call runs
    in; events: the mail event stream's Logger (appliance.log.mail_logger("pop3d"));
    reactor: for deadlines, delays and the lock's refresh; slots: the POP3 service's
    connection slots shared by its ports (default: this listener's own).
    """

    def __init__(
        self,
        settings: POP3Settings,
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

    def buildProtocol(self, addr: IAddress | None) -> POP3Session:  # noqa: N802 (Twisted's API)
        return POP3Session(self)
