"""Wiring: the filter chain and the DKIM signer, from [limits], [dnsbl], [spf], [dkim],
[dmarc], [clamav] and [spamassassin].

Part of the wiring (appliance.service): which filter class serves each section, in which
order, over which resolver, pool and key store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.config import Config, HostPort
from appliance.dkim.keys import DKIMKeyring, DKIMKeyStore
from appliance.filters.base import Filter
from appliance.filters.chain import FilterChain
from appliance.filters.clamav import ClamAVFilter
from appliance.filters.daemon import DaemonAddress
from appliance.filters.dkim_sign import DKIMSigner, DKIMSignFilter
from appliance.filters.dkim_verify import DKIMVerifyFilter
from appliance.filters.dmarc import DMARCFilter
from appliance.filters.dnsbl import DNSBLFilter
from appliance.filters.ratelimit import LimitSettings, RateLimitFilter
from appliance.filters.scanning import ScannerSettings
from appliance.filters.spamassassin import SpamAssassinFilter, SpamSettings
from appliance.filters.spf import SPF
from appliance.filters.spf_filter import SPFFilter, SPFSettings
from appliance.interfaces import MessageFilter, Resolver
from appliance.log import mail_logger
from appliance.paths import Paths
from appliance.workers import WorkerPool


def dkim_store(config: Config) -> DKIMKeyStore:
    return DKIMKeyStore(Paths.of(config).dkim_dir)


def _daemon(value: HostPort | Path) -> DaemonAddress:
    if isinstance(value, Path):
        return DaemonAddress(path=value)
    return DaemonAddress(value.host, value.port)


def _scanner(section: Any) -> ScannerSettings:
    return ScannerSettings(
        _daemon(section.address),
        timeout=section.timeout,
        on_failure=section.on_failure,
        max_size=section.max_size,
        scan_authenticated=section.scan_authenticated,
    )


def make_signer(cfg: Config, reactor: Any, pool: WorkerPool) -> DKIMSigner | None:
    """The DKIM signer of our mail ([dkim] sign), over the key store's keys."""
    if not cfg.dkim.sign:
        return None
    return DKIMSigner(DKIMKeyring(dkim_store(cfg), reactor.seconds), pool.run)


def make_filters(
    cfg: Config,
    reactor: Any,
    resolver: Resolver | None,
    pool: WorkerPool | None = None,
    signer: DKIMSigner | None = None,
) -> MessageFilter | None:
    """The filter chain: [limits] (connection rate, per-user rates, greylisting), [dnsbl]
    (at connect), [spf], [dkim] verification and [dmarc]
    (through our resolver), then
    [clamav] and [spamassassin] (viruses first: an infected message is refused before spamd
    spends time on it), then DKIM signing of our users' mail (last: nothing refused is
    signed); None when no filter is configured. CPU work (DKIM) goes to pool's threads."""
    filters: list[Filter] = []
    run = pool.run if pool is not None else None
    lim = cfg.limits
    if (
        lim.max_connect_rate
        or lim.max_messages_per_user_hour
        or lim.max_recipients_per_user_hour
        or lim.greylist
    ):
        limit_settings = LimitSettings(
            max_connect_rate=lim.max_connect_rate,
            max_messages_per_user_hour=lim.max_messages_per_user_hour,
            max_recipients_per_user_hour=lim.max_recipients_per_user_hour,
            greylist=lim.greylist,
            greylist_delay=lim.greylist_delay,
            greylist_window=lim.greylist_window,
            greylist_whitelist_after=lim.greylist_whitelist_after,
            greylist_whitelist_time=lim.greylist_whitelist_time,
        )
        filters.append(
            RateLimitFilter(limit_settings, reactor, Paths.of(cfg).state_dir / "greylist.json")
        )
    bl = cfg.dnsbl
    if bl.zones and resolver is not None:
        filters.append(DNSBLFilter(resolver, bl.zones, bl.allow_zones, bl.action))
    sp = cfg.spf
    if sp.check and resolver is not None:
        spf_settings = SPFSettings(
            on_fail=sp.on_fail,
            on_softfail=sp.on_softfail,
            on_permerror=sp.on_permerror,
            on_temperror=sp.on_temperror,
        )
        filters.append(SPFFilter(SPF(resolver), spf_settings, cfg.appliance.hostname))
    dk = cfg.dkim
    if dk.verify and resolver is not None and run is not None:
        filters.append(DKIMVerifyFilter(resolver, run, dk.verify_max_size))
    if cfg.dmarc.check and resolver is not None:
        filters.append(DMARCFilter(resolver, enforce=cfg.dmarc.enforce))
    if cfg.clamav.address is not None:
        filters.append(ClamAVFilter(_scanner(cfg.clamav), reactor))
    sa = cfg.spamassassin
    if sa.address is not None:
        settings = SpamSettings(_scanner(sa), reject_score=sa.reject_score, user=sa.user)
        filters.append(SpamAssassinFilter(settings, reactor))
    if dk.sign and signer is not None:
        filters.append(DKIMSignFilter(signer))
    if not filters:
        return None
    folder = Paths.of(cfg).filter_dir
    folder.mkdir(mode=0o700, exist_ok=True)  # (chowned with the state folder when root drops)
    return FilterChain(
        filters, hostname=cfg.appliance.hostname, spill_folder=folder, events=mail_logger("filter")
    )
