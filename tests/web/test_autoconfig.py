"""Client autoconfiguration (appliance.web.autoconfig): each answer checked against what its
client reads (Thunderbird's readFromXML, Outlook's POX schema, Apple's Mail payload, RFC 6186),
and the resources through a real twisted.web Site over a StringTransport."""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from appliance.web.autoconfig import (
    MAX_BODY,
    OUTLOOK_NS,
    REQUEST_NS,
    RESPONSE_NS,
    ClientSettings,
    Endpoint,
    NotConfigured,
    UnknownAddress,
    autodiscover_response,
    mobileconfig,
    mount,
    parse_autodiscover_request,
    srv_records,
    thunderbird_config,
)

HOST = "mail.163.com"
IMAPS = Endpoint("imap", HOST, 993, "SSL")
IMAP = Endpoint("imap", HOST, 143, "STARTTLS")
POP3S = Endpoint("pop3", HOST, 995, "SSL")
POP3 = Endpoint("pop3", HOST, 110, "STARTTLS")
SUBMISSION = Endpoint("smtp", HOST, 587, "STARTTLS")
SMTPS = Endpoint("smtp", HOST, 465, "SSL")

FULL = ClientSettings(
    ("163.com", "mail.163.com"), "163.com mail", (IMAPS, IMAP, POP3S, POP3, SUBMISSION, SMTPS)
)
IMAP_ONLY = ClientSettings(("163.com",), "163 & <co>", (IMAPS, SUBMISSION))


# -- Thunderbird ------------------------------------------------------------------------------


def servers(provider: ET.Element, tag: str) -> list[tuple[str, str, int, str, str, str]]:
    """What Thunderbird's readFromXML takes of each server; asserts what it requires."""
    out = []
    for server in provider.findall(tag):
        assert server.get("type") in (("imap", "pop3") if tag == "incomingServer" else ("smtp",))
        hostname, port = server.findtext("hostname"), server.findtext("port")
        assert hostname and port and 1 <= int(port) <= 65535
        socket_type = server.findtext("socketType")
        assert socket_type in ("plain", "SSL", "STARTTLS")
        auth = server.findtext("authentication")
        assert auth == "password-cleartext"
        username = server.findtext("username")
        assert username == "%EMAILADDRESS%"
        out.append((server.get("type", ""), hostname, int(port), socket_type, auth, username))
    return out


def parse_thunderbird(data: bytes) -> ET.Element:
    assert data.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    root = ET.fromstring(data)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id")
    assert [d.text for d in provider.findall("domain")]
    return provider


def test_thunderbird_full() -> None:
    provider = parse_thunderbird(thunderbird_config(FULL, "u@163.com"))
    assert provider.get("id") == "163.com"
    assert [d.text for d in provider.findall("domain")] == ["163.com", "mail.163.com"]
    assert provider.findtext("displayName") == "163.com mail"
    assert provider.findtext("displayShortName")
    assert [s[:4] for s in servers(provider, "incomingServer")] == [
        ("imap", HOST, 993, "SSL"),
        ("imap", HOST, 143, "STARTTLS"),
        ("pop3", HOST, 995, "SSL"),
        ("pop3", HOST, 110, "STARTTLS"),
    ]
    assert [s[:4] for s in servers(provider, "outgoingServer")] == [
        ("smtp", HOST, 587, "STARTTLS"),
        ("smtp", HOST, 465, "SSL"),
    ]
    assert b":25<" not in thunderbird_config(FULL) and b">25<" not in thunderbird_config(FULL)


def test_thunderbird_imap_only_escaped() -> None:
    data = thunderbird_config(IMAP_ONLY, None)
    assert b"163 &amp; &lt;co&gt;" in data
    provider = parse_thunderbird(data)
    assert provider.findtext("displayName") == "163 & <co>"
    assert [s[:4] for s in servers(provider, "incomingServer")] == [("imap", HOST, 993, "SSL")]
    assert [s[:4] for s in servers(provider, "outgoingServer")] == [("smtp", HOST, 587, "STARTTLS")]


def test_thunderbird_refuses() -> None:
    for bad in ("u@sina.com", "nobody", "@163.com", "u @163.com", "a\x00@163.com"):
        with pytest.raises(UnknownAddress):
            thunderbird_config(FULL, bad)
    assert thunderbird_config(FULL, "U@163.COM.")  # domains compare case-blind
    # Thunderbird rejects a file without an outgoing server: say nothing instead
    with pytest.raises(NotConfigured):
        thunderbird_config(ClientSettings(("163.com",), "x", (IMAPS,)), None)


def test_endpoint_checks() -> None:
    with pytest.raises(ValueError):
        Endpoint("smtp", HOST, 25, "STARTTLS")
    with pytest.raises(ValueError):
        Endpoint("imap", HOST, 993, "TLS")
    with pytest.raises(ValueError):
        Endpoint("nntp", HOST, 119, "SSL")


# -- Outlook ----------------------------------------------------------------------------------


def pox_request(email: str, schema: str = OUTLOOK_NS) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="{REQUEST_NS}">'
        f"<Request><EMailAddress>{email}</EMailAddress>"
        f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema></Request>"
        "</Autodiscover>"
    ).encode()


R = f"{{{RESPONSE_NS}}}"
O = f"{{{OUTLOOK_NS}}}"  # noqa: E741


def pox_error(data: bytes) -> str | None:
    root = ET.fromstring(data)
    assert root.tag == R + "Autodiscover"
    code = root.findtext(f"{R}Response/{R}Error/{R}ErrorCode")
    if code is not None:
        assert root.findtext(f"{R}Response/{R}Error/{R}Message")
        assert root.find(f"{R}Response/{O}Account") is None
    return code


def test_autodiscover_settings() -> None:
    data = autodiscover_response(FULL, pox_request("u@163.com"))
    assert pox_error(data) is None
    account = ET.fromstring(data).find(f"{O}Response/{O}Account")
    assert account is not None
    assert account.findtext(O + "AccountType") == "email"
    assert account.findtext(O + "Action") == "settings"
    protocols = {
        p.findtext(O + "Type"): {c.tag.removeprefix(O): c.text for c in p}
        for p in account.findall(O + "Protocol")
    }
    assert list(protocols) == ["IMAP", "POP3", "SMTP"]  # one each, the most preferred
    imap, pop3, smtp = protocols["IMAP"], protocols["POP3"], protocols["SMTP"]
    assert (imap["Server"], imap["Port"], imap["SSL"], imap["Encryption"]) == (
        HOST,
        "993",
        "on",
        "SSL",
    )
    assert (pop3["Port"], pop3["Encryption"]) == ("995", "SSL")
    assert (smtp["Port"], smtp["Encryption"]) == ("587", "TLS")  # TLS: STARTTLS
    for p in protocols.values():
        assert p["LoginName"] == "u@163.com"
        assert (p["SPA"], p["AuthRequired"]) == ("off", "on")


def test_autodiscover_imap_only() -> None:
    data = autodiscover_response(IMAP_ONLY, pox_request("u@163.com"))
    types = [e.text for e in ET.fromstring(data).iter(O + "Type")]
    assert types == ["IMAP", "SMTP"]
    assert ET.fromstring(data).findtext(f"{O}Response/{O}User/{O}DisplayName") == "163 & <co>"


def test_autodiscover_refusals() -> None:
    assert pox_error(autodiscover_response(FULL, pox_request("u@sina.com"))) == "600"
    assert pox_error(autodiscover_response(FULL, pox_request("u@sina.com<x/>"))) == "600"
    assert pox_error(autodiscover_response(FULL, b"not xml")) == "600"
    assert pox_error(autodiscover_response(FULL, b"\xff\xfe<\x00")) == "600"
    assert pox_error(autodiscover_response(FULL, b"<Autodiscover/>")) == "600"
    mobilesync = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    assert pox_error(autodiscover_response(FULL, pox_request("u@163.com", mobilesync))) == "601"


def test_autodiscover_doctype_bomb() -> None:
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb = (
        f'<?xml version="1.0"?><!DOCTYPE Autodiscover [<!ENTITY l0 "lol">{lol}]>'
        f'<Autodiscover xmlns="{REQUEST_NS}"><Request>'
        "<EMailAddress>&l9;@163.com</EMailAddress></Request></Autodiscover>"
    ).encode()
    assert pox_error(autodiscover_response(FULL, bomb)) == "600"
    with pytest.raises(ValueError, match="DTD"):  # refused before expat sees it
        parse_autodiscover_request(bomb)
    with pytest.raises(ValueError, match="DTD"):
        parse_autodiscover_request(bomb.replace(b"<!DOCTYPE", b"<!doctype"))
    # an external entity without a DOCTYPE is only an undefined entity
    with pytest.raises(ValueError, match="not XML"):
        parse_autodiscover_request(pox_request("&xxe;@163.com"))


def test_autodiscover_oversized() -> None:
    padding = b"<!-- " + b"x" * MAX_BODY + b" -->"
    body = pox_request("u@163.com").replace(b"<Request>", b"<Request>" + padding)
    assert pox_error(autodiscover_response(FULL, body)) == "600"
    with pytest.raises(ValueError, match="too big"):
        parse_autodiscover_request(body)
    # a request just under the bound is read
    fits = pox_request("u@163.com")
    fits = fits.replace(
        b"<Request>", b"<Request><!-- " + b"x" * (MAX_BODY - len(fits) - 20) + b" -->"
    )
    assert len(fits) <= MAX_BODY and pox_error(autodiscover_response(FULL, fits)) is None


# -- Apple ------------------------------------------------------------------------------------


def test_mobileconfig() -> None:
    data = mobileconfig(FULL, "u@163.com")
    profile = plistlib.loads(data)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    uuid.UUID(profile["PayloadUUID"])
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == "u@163.com"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (HOST, 993)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (HOST, 587)
    assert mail["IncomingMailServerUseSSL"] is True and mail["OutgoingMailServerUseSSL"] is True
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["IncomingMailServerUsername"] == "u@163.com"
    assert mail["OutgoingMailServerUsername"] == "u@163.com"
    assert "IncomingPassword" not in mail
    uuid.UUID(mail["PayloadUUID"])
    assert mail["PayloadUUID"] != profile["PayloadUUID"]
    assert mail["PayloadIdentifier"].startswith(profile["PayloadIdentifier"])
    # stable per (domain, address): installing again replaces the account
    assert mobileconfig(FULL, "u@163.com") == data
    other = plistlib.loads(mobileconfig(FULL, "v@163.com"))
    assert other["PayloadUUID"] != profile["PayloadUUID"]
    assert other["PayloadIdentifier"] != profile["PayloadIdentifier"]
    pop_only = ClientSettings(("163.com",), "x", (POP3S, SMTPS))
    mail = plistlib.loads(mobileconfig(pop_only, "u@163.com"))["PayloadContent"][0]
    assert (mail["EmailAccountType"], mail["OutgoingMailServerPortNumber"]) == ("EmailTypePOP", 465)
    with pytest.raises(UnknownAddress):
        mobileconfig(FULL, "u@sina.com")
    with pytest.raises(NotConfigured):
        mobileconfig(ClientSettings(("163.com",), "x", (SUBMISSION,)), "u@163.com")


# -- DNS --------------------------------------------------------------------------------------


def test_srv_records_full() -> None:
    assert srv_records(FULL) == [
        ("_submission._tcp", 0, 1, 587, "mail.163.com."),
        ("_submissions._tcp", 1, 1, 465, "mail.163.com."),
        ("_imap._tcp", 1, 1, 143, "mail.163.com."),
        ("_imaps._tcp", 0, 1, 993, "mail.163.com."),
        ("_pop3._tcp", 3, 1, 110, "mail.163.com."),
        ("_pop3s._tcp", 2, 1, 995, "mail.163.com."),
    ]


def test_srv_records_without_pop3() -> None:
    assert srv_records(IMAP_ONLY) == [
        ("_submission._tcp", 0, 1, 587, "mail.163.com."),
        ("_submissions._tcp", 0, 0, 0, "."),
        ("_imap._tcp", 0, 0, 0, "."),
        ("_imaps._tcp", 0, 1, 993, "mail.163.com."),
        ("_pop3._tcp", 0, 0, 0, "."),
        ("_pop3s._tcp", 0, 0, 0, "."),
    ]


# -- the resources, through a Site ------------------------------------------------------------


def http(request: bytes, settings: ClientSettings = FULL) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through a twisted.web Site: (status, headers, body)."""
    site = Site(mount(settings))
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    protocol.connectionLost(Failure(ConnectionDone()))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def get(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    return http(f"GET {path} HTTP/1.1\r\nHost: autoconfig.163.com\r\n\r\n".encode())


def post(path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: autodiscover.163.com\r\n"
    head += f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    return http(head.encode() + body)


def test_thunderbird_resource() -> None:
    for path in (
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=u%40163.com",
        "/mail/config-v1.1.xml?emailaddress=u@163.com",
        "/mail/config-v1.1.xml",
    ):
        code, headers, body = get(path)
        assert code == 200, path
        assert headers[b"content-type"].startswith(b"text/xml")
        servers(parse_thunderbird(body), "incomingServer")
    code, headers, body = get("/mail/config-v1.1.xml?emailaddress=%3Cscript%3E@sina.com")
    assert code == 404 and headers[b"content-type"].startswith(b"text/plain")
    assert b"script" not in body and b"sina" not in body


def test_autodiscover_resource() -> None:
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        code, headers, body = post(path, pox_request("u@163.com"))
        assert code == 200 and headers[b"content-type"].startswith(b"application/xml")
        assert pox_error(body) is None
    code, _, body = post("/autodiscover/autodiscover.xml", pox_request("<b>@sina.com"))
    assert code == 200 and pox_error(body) == "600" and b"sina" not in body
    code, _, body = post("/autodiscover/autodiscover.xml", b"x" * (MAX_BODY + 1))
    assert code == 413
    code, headers, _ = get("/autodiscover/autodiscover.xml")
    assert code == 405 and headers[b"allow"] == b"POST"
    # a Content-Length over the bound is refused whatever follows
    head = b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\nContent-Length: "
    assert http(head + b"%d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1))[0] == 413


def test_mobileconfig_resource() -> None:
    code, headers, body = get("/mobileconfig?email=u%40163.com")
    assert code == 200
    assert headers[b"content-type"] == b"application/x-apple-aspen-config"
    assert headers[b"content-disposition"] == b'attachment; filename="163.com.mobileconfig"'
    assert plistlib.loads(body)["PayloadContent"][0]["EmailAddress"] == "u@163.com"
    code, _, body = get("/mobileconfig")
    assert code == 400
    code, _, body = get("/mobileconfig?email=%3Cx%3E%40sina.com")
    assert code == 404 and b"<x>" not in body and b"sina" not in body
