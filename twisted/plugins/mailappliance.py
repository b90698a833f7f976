"""twistd plugin: `twistd -n mailappliance --config etc/163.ini` (loaded lazily)."""

from twisted.application.service import ServiceMaker

mailappliance = ServiceMaker(
    "mailappliance",
    "appliance.tap",
    "DNS, SMTP, POP3 and IMAP for one mail domain, from one INI file",
    "mailappliance",
)
