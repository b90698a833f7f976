"""One IMAP listener (appliance.login.AccessFactory with IMAP's session and settings).

service.py builds one IMAPFactory per port (143 with STARTTLS, 993 with implicit TLS, which it
wraps in TLSMemoryBIOFactory) and hands it the seams of appliance.interfaces; nothing in
appliance.imap knows which class is behind them. The store is used for folders, listings,
flags, APPEND, COPY and watch(); `quick` runs its cheap calls, which write nothing, on the
reactor while they stay cheap (AccessFactory.quick); the reactor also polls IDLE.
"""

from __future__ import annotations

from appliance.imap.session import IMAPSession
from appliance.imap.settings import IMAPSettings
from appliance.login import AccessFactory


class IMAPFactory(AccessFactory[IMAPSession, IMAPSettings]):
    session_class = IMAPSession
