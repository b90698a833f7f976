"""The IMAP commands of any state and of logging in (RFC 3501 6.1, 6.2; 2971 ID, 5161
ENABLE, 2342 NAMESPACE, 2177 IDLE): CAPABILITY NOOP LOGOUT STARTTLS LOGIN AUTHENTICATE ID
ENABLE NAMESPACE IDLE."""

from __future__ import annotations

from appliance.imap.parser import Command, astring
from appliance.imap.session import AUTH, NOT_AUTH, SELECTED, IMAPSession, command
from appliance.imap.tokens import Atom, IString, ParseError
from appliance.imap.wire import quoted

VERSION = "1"


def no_args(cmd: Command) -> None:
    if cmd.args:
        raise ParseError(f"{cmd.name} takes no arguments")


@command("CAPABILITY")
def do_capability(s: IMAPSession, cmd: Command, uid: bool) -> None:
    no_args(cmd)
    s.untagged(f"CAPABILITY {s.capabilities()}")
    s.tagged(cmd.tag, "OK", "Capability completed.")


@command("NOOP")
def do_noop(s: IMAPSession, cmd: Command, uid: bool) -> None:
    no_args(cmd)
    s.hold(s.finish(cmd.tag, "NOOP completed."), cmd.tag, "NOOP")


@command("LOGOUT")
def do_logout(s: IMAPSession, cmd: Command, uid: bool) -> None:
    no_args(cmd)
    s.logout_reason = "Logged out"
    s.untagged("BYE Logging out")
    s.tagged(cmd.tag, "OK", "Logout completed.")
    s.state = "logout"
    s.close_connection()


@command("STARTTLS", NOT_AUTH)
def do_starttls(s: IMAPSession, cmd: Command, uid: bool) -> None:
    no_args(cmd)
    f = s.factory
    if f.tls is None or f.implicit_tls or s.tls_info is not None:
        s.tagged(cmd.tag, "BAD", "TLS is already active" if s.tls_info else "STARTTLS not offered")
        return
    # RFC 3501 6.2.1 / CVE-2011-0411: nothing pipelined behind STARTTLS may be executed
    s.buffer = b""
    s.tagged(cmd.tag, "OK", "Begin TLS negotiation now.")
    s.flush()
    link = s.link
    if link is not None:
        link.startTLS(f.tls)
    s.tls_info = "TLS"


@command("LOGIN", NOT_AUTH)
def do_login(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 2:
        raise ParseError("LOGIN needs a user name and a password")
    user, password = astring(cmd.args[0]), astring(cmd.args[1])
    if s.factory.authenticator is None:
        s.tagged(cmd.tag, "NO", "[UNAVAILABLE] Logins are not enabled here.")
        return
    if not s.plaintext_ok():
        s.tagged(cmd.tag, "NO", "[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                 "non-secure (SSL/TLS) connections.")  # fmt: skip
        s.note_error()
        return
    s.password_login(cmd.tag, user, password)


@command("AUTHENTICATE", NOT_AUTH)
def do_authenticate(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if not 1 <= len(cmd.args) <= 2 or not isinstance(cmd.args[0], Atom):
        raise ParseError("AUTHENTICATE needs a mechanism")
    mech = str(cmd.args[0]).upper()
    initial = None
    if len(cmd.args) == 2:  # SASL-IR (RFC 4959): "=" is an empty response
        initial = astring(cmd.args[1]).decode("ascii", "replace")
    f = s.factory
    if f.authenticator is None or mech not in s.mechanisms():
        if mech in ("PLAIN", "LOGIN") and not s.plaintext_ok():
            s.tagged(cmd.tag, "NO", "[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                     "non-secure (SSL/TLS) connections.")  # fmt: skip
        else:
            s.tagged(cmd.tag, "NO", "Unsupported authentication mechanism.")
        return
    s.start_sasl(cmd.tag, mech, initial)


@command("ID")
def do_id(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if len(cmd.args) != 1:
        raise ParseError("ID needs a parameter list or NIL")
    arg = cmd.args[0]
    if isinstance(arg, list):
        if len(arg) % 2 or len(arg) > 60:
            raise ParseError("ID parameters come in pairs (at most 30)")
        for i in range(0, len(arg), 2):
            if not isinstance(arg[i], IString) or isinstance(arg[i + 1], list):
                raise ParseError("Invalid ID parameter")
    elif not (isinstance(arg, Atom) and arg.upper() == "NIL"):
        raise ParseError("ID needs a parameter list or NIL")
    s.untagged(
        "ID ("
        + " ".join(
            quoted(v).decode("ascii")
            for v in ("name", "mailappliance", "version", VERSION, "vendor", "mailappliance")
        )
        + ")"
    )
    s.tagged(cmd.tag, "OK", "ID completed.")


@command("ENABLE", AUTH, SELECTED)
def do_enable(s: IMAPSession, cmd: Command, uid: bool) -> None:
    if not cmd.args or not all(isinstance(a, Atom) for a in cmd.args):
        raise ParseError("ENABLE needs capability names")
    # none of the extensions ENABLE can turn on (CONDSTORE, QRESYNC, UTF8=ACCEPT) is
    # offered, so nothing is enabled: RFC 5161 says to answer an empty ENABLED
    s.untagged("ENABLED")
    s.tagged(cmd.tag, "OK", "Enabled.")


@command("NAMESPACE", AUTH, SELECTED)
def do_namespace(s: IMAPSession, cmd: Command, uid: bool) -> None:
    no_args(cmd)
    s.untagged('NAMESPACE (("" "/")) NIL NIL')
    s.tagged(cmd.tag, "OK", "Namespace completed.")


@command("IDLE", AUTH, SELECTED)
def do_idle(s: IMAPSession, cmd: Command, uid: bool) -> None:
    no_args(cmd)
    s.start_idle(cmd.tag)
