"""Wiring: the zones we serve, made of the zone files and what we publish in them.

Part of the wiring (appliance.service): the zone files' records, plus SPF, DMARC and the
DKIM keys of the key store (appliance.dns.published), built into Zones; make_service hands
build_zones to a ZoneRefresher so a key rotation is served within seconds.
"""

from __future__ import annotations

from typing import Any

from appliance.config import Config
from appliance.dkim.keys import DKIMError
from appliance.dns.authority import Zone
from appliance.dns.published import published
from appliance.dns.zonefile import load_zone
from appliance.errors import ZoneError
from appliance.service.mail_security import dkim_store
from appliance.service.web import ALIASES, client_settings, web_enabled
from appliance.web.autoconfig import srv_records


def load_zone_files(config: Config, problems: list[str]) -> dict[str, list[Any]]:
    """origin -> the records of its zone file (problems appended)."""
    files = {}
    for zc in config.zones:
        try:
            files[zc.origin] = load_zone(zc.file, zc.origin)
        except ZoneError as e:
            problems.append(config.problem(f"zone:{zc.origin}", "file", str(e)))
    return files


def build_zones(config: Config, files: dict[str, list[Any]]) -> list[Zone]:
    """The zones we serve: each file's records and what we publish in it (SPF, DMARC, the
    DKIM keys of the key store, the RFC 6186 SRV records of the client listeners, the
    autoconfig/autodiscover names when the web listener serves them). Raises ZoneError,
    DKIMError."""
    d = config.dns
    keys = [r for records in dkim_store(config).records().values() for r in records]
    aliases = ALIASES if web_enabled(config) else ()
    zones = []
    for zc in config.zones:
        records = files.get(zc.origin)
        if records is None:
            continue
        clients = client_settings(config, (zc.origin.rstrip("."),))
        srv = srv_records(clients) if clients is not None else []
        extra = published(
            zc.origin,
            records,
            spf=d.spf,
            dmarc=d.dmarc,
            keys=keys,
            srv=srv,
            aliases=aliases,
            host=config.appliance.hostname,
        )
        zones.append(Zone(zc.origin, records + extra, zc.allow_transfer))
    return zones


def load_zones(config: Config, problems: list[str]) -> list[Zone]:
    files = load_zone_files(config, problems)
    try:
        return build_zones(config, files)
    except (ZoneError, DKIMError) as e:
        problems.append(config.problem("dkim", "domains", str(e)))
        return []
