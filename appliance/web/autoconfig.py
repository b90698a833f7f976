"""Client autoconfiguration: the user types an address and a password, the client finds every
server and port.

Each client family asks its own way, and each answer is a pure function of ClientSettings (the
listeners the wiring configured, in order of preference; port 25 is never among them):

- Thunderbird (and K-9/Thunderbird for Android, Evolution, KMail) GETs Mozilla's config-v1.1
  XML from /.well-known/autoconfig/mail/config-v1.1.xml or autoconfig.<domain>/mail/
  config-v1.1.xml?emailaddress=...: thunderbird_config(). Every endpoint becomes an
  incomingServer or outgoingServer, the first valid of each being the default. Thunderbird's
  reader (readFromXML.sys.mjs) needs emailProvider@id, a domain, and at least one incoming and
  one outgoing server with hostname, port, socketType, authentication and username; a file
  without both is refused, so NotConfigured is raised instead and the resource answers 404,
  which lets Thunderbird go on to its other lookups.
- Outlook POSTs a POX request to /autodiscover/autodiscover.xml: autodiscover_response()
  parses it with a size bound and no DTD (a <!DOCTYPE or <!ENTITY is refused before expat sees
  it, against entity expansion "bombs") and answers one Protocol per type (IMAP, POP3, SMTP)
  with the most preferred endpoint of each. <Encryption> (SSL or TLS, TLS meaning STARTTLS)
  is what Outlook 2010 and later obey, and it overrides <SSL>, which stays "on" (secure logon
  required). A request Outlook must not configure from (a foreign domain, bad XML, too big)
  gets Exchange's Error form: ErrorCode 600 "Invalid Request"; a schema other than Outlook's
  2006a gets 601 "Provider is not available".
- Apple Mail on iOS/macOS installs a configuration profile: mobileconfig() gives an unsigned
  plist with one com.apple.mail.managed payload (the first incoming endpoint and the first SMTP
  one); the password is not in it, the device asks. Its identifiers and UUIDs are uuid5 of
  (domain, address), so installing it again replaces the account instead of doubling it.
  UseSSL is true for STARTTLS too: Apple Mail negotiates STARTTLS on a port that is not an
  implicit-TLS one.
- Any client doing RFC 6186 DNS lookups: srv_records() gives the SRV records for the zones
  (RFC 8314 adds _submissions), with "not available" records for what is not configured.

No text a client sent is put anywhere unescaped: XML is built with ElementTree, the plist with
plistlib, error pages are fixed short texts, the download's file name is made of our domain.
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

PROTOCOLS = ("imap", "pop3", "smtp")
SOCKETS = ("SSL", "STARTTLS")
MAX_BODY = 64 * 1024  # an Outlook request is a few hundred bytes
MAX_ADDRESS = 254  # RFC 5321's path limit less the brackets
MAX_LOCAL = 64

REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

# RFC 6186/8314 service labels, in the order srv_records() gives them, and what each serves
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("_submission._tcp", "smtp", "STARTTLS"),
    ("_submissions._tcp", "smtp", "SSL"),
    ("_imap._tcp", "imap", "STARTTLS"),
    ("_imaps._tcp", "imap", "SSL"),
    ("_pop3._tcp", "pop3", "STARTTLS"),
    ("_pop3s._tcp", "pop3", "SSL"),
)
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "autoconfig.mailappliance")


class UnknownAddress(ValueError):
    """The address is malformed or not in one of our domains."""


class NotConfigured(ValueError):
    """The listeners lack what this client needs (an incoming or an outgoing server)."""


@dataclass(frozen=True)
class Endpoint:
    """One listener as clients see it."""

    protocol: str  # "imap" | "pop3" | "smtp"
    hostname: str  # the name clients connect to, e.g. "mail.163.com"
    port: int
    socket: str  # "SSL" (implicit TLS) | "STARTTLS"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}")
        if self.socket not in SOCKETS:
            raise ValueError(f"unknown socket type {self.socket!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"bad port {self.port}")
        if self.protocol == "smtp" and self.port == 25:
            raise ValueError("port 25 is for MTAs, never offered to clients")
        if not self.hostname or self.hostname != self.hostname.strip():
            raise ValueError(f"bad hostname {self.hostname!r}")

    @property
    def incoming(self) -> bool:
        return self.protocol != "smtp"


@dataclass(frozen=True)
class ClientSettings:
    """What the clients are told: the mail domains served and the endpoints configured."""

    domains: tuple[str, ...]  # the mail domains served, e.g. ("163.com",)
    display_name: str  # e.g. "163.com mail"
    endpoints: tuple[Endpoint, ...]  # only what is configured, in order of preference

    def __post_init__(self) -> None:
        if not self.domains:
            raise ValueError("no mail domain")

    def first(self, incoming: bool) -> Endpoint | None:
        return next((e for e in self.endpoints if e.incoming == incoming), None)


def _normal_domain(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def address_domain(settings: ClientSettings, email: str) -> str:
    """The domain of email, one of settings.domains (normalized); UnknownAddress otherwise."""
    if len(email) > MAX_ADDRESS or not email.isprintable() or any(c.isspace() for c in email):
        raise UnknownAddress("malformed address")
    local, at, domain = email.rpartition("@")
    if not at or not local or len(local) > MAX_LOCAL or any(c in '<>"\\@' for c in local):
        raise UnknownAddress("malformed address")
    domain = _normal_domain(domain)
    if domain not in {_normal_domain(d) for d in settings.domains}:
        raise UnknownAddress("not one of our domains")
    return domain


def _normal_address(settings: ClientSettings, email: str) -> tuple[str, str]:
    """(address with its domain lower-cased, domain), checked by address_domain()."""
    domain = address_domain(settings, email)
    return f"{email.rpartition('@')[0]}@{domain}", domain


def _sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = str(text)
    return element


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + text.encode("utf-8") + b"\n"


# -- Thunderbird ------------------------------------------------------------------------------


def thunderbird_config(settings: ClientSettings, email: str | None = None) -> bytes:
    """Mozilla's config-v1.1 XML for every configured endpoint. email, when the client gave
    one, must be of our domains (UnknownAddress); the username stays %EMAILADDRESS%, which
    Thunderbird fills in itself. NotConfigured without an incoming or an SMTP endpoint."""
    domain = address_domain(settings, email) if email is not None else None
    if settings.first(incoming=True) is None or settings.first(incoming=False) is None:
        raise NotConfigured("Thunderbird needs an incoming and an outgoing server")
    domains = [_normal_domain(d) for d in settings.domains]
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=domain or domains[0])
    for name in domains:
        _sub(provider, "domain", name)
    _sub(provider, "displayName", settings.display_name)
    _sub(provider, "displayShortName", domain or domains[0])
    for endpoint in settings.endpoints:
        tag = "incomingServer" if endpoint.incoming else "outgoingServer"
        server = _sub(provider, tag, type=endpoint.protocol)
        _sub(server, "hostname", endpoint.hostname)
        _sub(server, "port", endpoint.port)
        _sub(server, "socketType", endpoint.socket)
        _sub(server, "authentication", "password-cleartext")  # (inside TLS)
        _sub(server, "username", "%EMAILADDRESS%")
    return _xml(root)


# -- Outlook ----------------------------------------------------------------------------------


def _autodiscover_error(code: int, message: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    error = _sub(_sub(root, "Response"), "Error")
    _sub(error, "ErrorCode", code)
    _sub(error, "Message", message)
    _sub(error, "DebugData")
    return _xml(root)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_autodiscover_request(body: bytes) -> tuple[str, str]:
    """(EMailAddress, AcceptableResponseSchema) of a POX request; ValueError if it is too
    big, not UTF-8, has a DTD or entities, is not XML or lacks the address."""
    if len(body) > MAX_BODY:
        raise ValueError("request too big")
    text = body.decode("utf-8")  # (UnicodeDecodeError is a ValueError)
    marked = text.upper()
    if "<!DOCTYPE" in marked or "<!ENTITY" in marked:
        raise ValueError("DTDs are not accepted")
    parser = ET.XMLParser(encoding="utf-8")  # whatever the declaration says: what we scanned
    try:
        parser.feed(text.encode("utf-8"))
        root = parser.close()
    except ET.ParseError as e:
        raise ValueError(f"not XML: {e}") from None
    if _local(root.tag) != "Autodiscover":
        raise ValueError("not an Autodiscover request")
    fields: dict[str, str] = {}
    for request in root:
        if _local(request.tag) == "Request":
            for child in request:
                fields.setdefault(_local(child.tag), (child.text or "").strip())
    email = fields.get("EMailAddress", "")
    if not email:
        raise ValueError("no EMailAddress")
    return email, fields.get("AcceptableResponseSchema") or OUTLOOK_NS


def _protocol(account: ET.Element, endpoint: Endpoint, login: str) -> None:
    protocol = _sub(account, "Protocol")
    _sub(protocol, "Type", endpoint.protocol.upper())
    _sub(protocol, "Server", endpoint.hostname)
    _sub(protocol, "Port", endpoint.port)
    _sub(protocol, "DomainRequired", "off")
    _sub(protocol, "LoginName", login)
    _sub(protocol, "SPA", "off")
    _sub(protocol, "SSL", "on")
    _sub(protocol, "Encryption", "SSL" if endpoint.socket == "SSL" else "TLS")
    _sub(protocol, "AuthRequired", "on")
    if endpoint.protocol == "smtp":
        _sub(protocol, "UsePOPAuth", "on")
        _sub(protocol, "SMTPLast", "off")


def autodiscover_response(settings: ClientSettings, request_body: bytes) -> bytes:
    """Outlook's POX answer to request_body: the settings of the most preferred endpoint of
    each protocol, or the Error form (600 for a bad request or a foreign address, 601 for a
    response schema other than Outlook's). As Exchange writes it, <Autodiscover> has the
    generic response namespace as its default and <Response> Outlook's (xmlns attributes on
    unqualified tags: ElementTree would give namespaces prefixes)."""
    try:
        email, schema = parse_autodiscover_request(request_body)
        login, _ = _normal_address(settings, email)
    except ValueError:
        return _autodiscover_error(600, "Invalid Request")
    if schema != OUTLOOK_NS:
        return _autodiscover_error(601, "Provider is not available")
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = _sub(root, "Response", xmlns=OUTLOOK_NS)
    _sub(_sub(response, "User"), "DisplayName", settings.display_name)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    seen: set[str] = set()
    for endpoint in settings.endpoints:
        if endpoint.protocol not in seen:
            seen.add(endpoint.protocol)
            _protocol(account, endpoint, login)
    return _xml(root)


# -- Apple ------------------------------------------------------------------------------------


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, "\0".join(parts))).upper()


def mobileconfig(settings: ClientSettings, email: str) -> bytes:
    """An unsigned Apple configuration profile for email's account: one com.apple.mail.managed
    payload with the first incoming and the first SMTP endpoint. UnknownAddress for an
    address not of our domains, NotConfigured without an incoming or an SMTP endpoint."""
    address, domain = _normal_address(settings, email)
    incoming, outgoing = settings.first(incoming=True), settings.first(incoming=False)
    if incoming is None or outgoing is None:
        raise NotConfigured("a Mail payload needs an incoming and an outgoing server")
    base = ".".join(reversed(domain.split("."))) + ".autoconfig"
    profile_uuid, mail_uuid = _uuid(domain, address), _uuid(domain, address, "mail")
    mail: dict[str, Any] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.{profile_uuid}.mail",
        "PayloadUUID": mail_uuid,
        "PayloadDisplayName": settings.display_name,
        "PayloadDescription": f"Mail account {address}",
        "EmailAccountDescription": settings.display_name,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": incoming.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": outgoing.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PreventMove": False,
        "PreventAppSheet": False,
        "SMIMEEnabled": False,
    }
    profile: dict[str, Any] = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.{profile_uuid}",
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": settings.display_name,
        "PayloadDescription": f"Configures the mail account {address}",
        "PayloadOrganization": domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


# -- DNS --------------------------------------------------------------------------------------


def srv_records(settings: ClientSettings) -> list[tuple[str, int, int, int, str]]:
    """RFC 6186 (and RFC 8314 _submissions) SRV data: (owner relative to the domain, priority,
    weight, port, target as an absolute name). Priorities order every incoming endpoint
    together and every submission endpoint together, as settings does (RFC 6186 3.4 lets a
    client compare them across services); a service not configured gets the "not available"
    record (0 0 0 .)."""
    rank: dict[Endpoint, int] = {}
    for incoming in (True, False):
        group = [e for e in settings.endpoints if e.incoming == incoming]
        rank.update((e, i) for i, e in enumerate(group))
    out: list[tuple[str, int, int, int, str]] = []
    for owner, protocol, socket in SERVICES:
        matching = [e for e in settings.endpoints if (e.protocol, e.socket) == (protocol, socket)]
        for e in matching:
            out.append((owner, rank[e], 1, e.port, e.hostname.rstrip(".") + "."))
        if not matching:
            out.append((owner, 0, 0, 0, "."))
    return out


# -- twisted.web ------------------------------------------------------------------------------


def _text(request: Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return message.encode("utf-8") + b"\n"


def _query(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


class _Settings(Resource):
    isLeaf = True

    def __init__(self, settings: ClientSettings) -> None:
        super().__init__()
        self.settings = settings


class ThunderbirdConfig(_Settings):
    """GET config-v1.1.xml[?emailaddress=...]: Mozilla's autoconfig file."""

    def render_GET(self, request: Request) -> bytes:
        try:
            body = thunderbird_config(self.settings, _query(request, b"emailaddress"))
        except UnknownAddress:
            return _text(request, 404, "No configuration for this address.")
        except NotConfigured:
            return _text(request, 404, "No configuration available.")
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return body


class Autodiscover(_Settings):
    """POST autodiscover.xml: Outlook's POX autodiscover (GET: 405)."""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"allow", b"POST")
        return _text(request, 405, "Autodiscover takes a POST.")

    def render_POST(self, request: Request) -> bytes:
        length = request.getHeader(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _text(request, 413, "Request too big.")
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            return _text(request, 413, "Request too big.")
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return autodiscover_response(self.settings, body)


class MobileConfig(_Settings):
    """GET /mobileconfig?email=...: the Apple configuration profile, as a download."""

    def render_GET(self, request: Request) -> bytes:
        email = _query(request, b"email")
        if not email:
            return _text(request, 400, "Give the address as ?email=.")
        try:
            body = mobileconfig(self.settings, email)
            domain = address_domain(self.settings, email)
        except UnknownAddress:
            return _text(request, 404, "No configuration for this address.")
        except NotConfigured:
            return _text(request, 404, "No configuration available.")
        name = "".join(c for c in domain if c.isascii() and (c.isalnum() or c in ".-"))
        request.setHeader(b"content-type", b"application/x-apple-aspen-config")
        disposition = f'attachment; filename="{name or "mail"}.mobileconfig"'
        request.setHeader(b"content-disposition", disposition.encode("ascii"))
        return body


def _child(parent: Resource, path: Iterable[bytes]) -> Resource:
    """parent's descendant at path, made of plain Resources where missing."""
    for name in path:
        child = parent.children.get(name)
        if child is None:
            child = Resource()
            parent.putChild(name, child)
        parent = child
    return parent


def mount(settings: ClientSettings, root: Resource | None = None) -> Resource:
    """root (a new Resource by default) with every autoconfiguration path under it; children
    root already has on the way (a .well-known of its own) are kept."""
    root = Resource() if root is None else root
    thunderbird = ThunderbirdConfig(settings)
    autodiscover = Autodiscover(settings)
    _child(root, [b".well-known", b"autoconfig", b"mail"]).putChild(b"config-v1.1.xml", thunderbird)
    _child(root, [b"mail"]).putChild(b"config-v1.1.xml", thunderbird)
    _child(root, [b"autodiscover"]).putChild(b"autodiscover.xml", autodiscover)
    _child(root, [b"Autodiscover"]).putChild(b"Autodiscover.xml", autodiscover)
    root.putChild(b"mobileconfig", MobileConfig(settings))
    return root
