"""One POP3 listener (appliance.login.AccessFactory with POP3's session and settings).

service.py builds one POP3Factory per port (110 with STLS, 995 with implicit TLS, which it
wraps in TLSMemoryBIOFactory as SMTP's 465) and hands it the seams of appliance.interfaces;
nothing in appliance.pop3 knows which class is behind them. The store is used for
lock_mailbox and open_maildrop; the small messages a session reads ahead are read by
`quick` (AccessFactory's: on the reactor while the reads stay cheap); the reactor is also used
for the lock's refresh.
"""

from __future__ import annotations

from appliance.login import AccessFactory
from appliance.pop3.session import POP3Session
from appliance.pop3.settings import POP3Settings


class POP3Factory(AccessFactory[POP3Session, POP3Settings]):
    session_class = POP3Session
