"""The values a configuration is made of, and the converters that read them from text.

Each converter takes the raw INI text and a _Ctx (where the INI file lives, for relative
paths) and returns the value or raises ValueError with the message the admin sees
(`expected a size like 25M, got 'huge'`). appliance.config's SCHEMA names one per key.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.units import parse_time

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostPort:
    """A listening or target address; host is an IP literal (a host name for next hops)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Ctx:
    """What converters need to know: where the INI file lives and the values seen so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def resolve(self, raw: str) -> Path:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.base / p).resolve()


Converter = Callable[[str, _Ctx], Any]


@dataclass(frozen=True)
class Key:
    """One configuration key: a converter, a default (raw string, callable or REQUIRED), help."""

    convert: Converter
    default: Any
    help: str


REQUIRED = object()
NONE = object()  # the key may be left out and then reads as None


# --------------------------------------------------------------------------- converters


def boolean(raw: str, ctx: _Ctx) -> bool:
    v = raw.strip().lower()
    if v in ("yes", "true", "on", "1"):
        return True
    if v in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, got {raw!r}")


def integer(lo: int, hi: int) -> Converter:
    def convert(raw: str, ctx: _Ctx) -> int:
        try:
            v = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not lo <= v <= hi:
            raise ValueError(f"expected a number from {lo} to {hi}, got {v}")
        return v

    return convert


_SIZE = re.compile(r"^(\d+)\s*([kmg]?)b?$", re.I)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size(raw: str, ctx: _Ctx) -> int:
    m = _SIZE.match(raw.strip())
    if not m:
        raise ValueError(f"expected a size like 25M, got {raw!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_duration(raw: str) -> int:
    """'90', '10m', '1h30m', '2w' -> seconds, the way BIND reads times. Raises ValueError."""
    seconds = parse_time(raw.strip())
    if seconds is None:
        raise ValueError(f"expected a duration like 10m, 30s or 2d, got {raw!r}")
    return seconds


def duration(raw: str, ctx: _Ctx) -> int:
    return parse_duration(raw)


def duration_at_least(minimum: int, why: str) -> Callable[[str, _Ctx], int]:
    """A duration no shorter than minimum seconds (why: the rule that says so)."""

    def convert(raw: str, ctx: _Ctx) -> int:
        value = parse_duration(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum // 60}m ({why}), got {raw!r}")
        return value

    return convert


def duration_at_most(maximum: int, why: str) -> Callable[[str, _Ctx], int]:
    """A duration from 0 up to maximum seconds (why: the rule that says so)."""

    def convert(raw: str, ctx: _Ctx) -> int:
        value = parse_duration(raw)
        if value > maximum:
            raise ValueError(f"must be at most {maximum}s ({why}), got {raw!r}")
        return value

    return convert


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.I)


def is_hostname(name: str) -> bool:
    name = name.rstrip(".")
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def hostname(raw: str, ctx: _Ctx) -> str:
    v = raw.strip().rstrip(".").lower()
    if not is_hostname(v):
        raise ValueError(f"expected a host name like mail.example.com, got {raw!r}")
    return v


def words(raw: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", raw.strip()) if w]


def hostnames(raw: str, ctx: _Ctx) -> tuple[str, ...]:
    return tuple(hostname(w, ctx) for w in words(raw))


def path(raw: str, ctx: _Ctx) -> Path:
    if not raw.strip():
        raise ValueError("expected a path, got nothing")
    return ctx.resolve(raw.strip())


def existing_file(raw: str, ctx: _Ctx) -> Path:
    p = path(raw, ctx)
    if not p.is_file():
        raise ValueError(f"no such file: {p}")
    return p


def existing_files(raw: str, ctx: _Ctx) -> tuple[Path, ...]:
    return tuple(existing_file(w, ctx) for w in words(raw))


def host_port(raw: str, default_port: int | None = None) -> HostPort:
    v = raw.strip()
    m = re.match(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$", v) or re.match(r"^([0-9.]+)(?::(\d+))?$", v)
    if not m:
        raise ValueError(f"expected an address like 127.0.0.1:53, got {raw!r}")
    host, port = m.group(1), m.group(2)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address, got {host!r}") from None
    if port is None:
        if default_port is None:
            raise ValueError(f"expected an address with a port like {host}:53, got {raw!r}")
        return HostPort(host, default_port)
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return HostPort(host, int(port))


def addresses(default_port: int | None) -> Converter:
    def convert(raw: str, ctx: _Ctx) -> tuple[HostPort, ...]:
        return tuple(host_port(w, default_port) for w in words(raw))

    return convert


def next_hop(raw: str, ctx: _Ctx) -> HostPort:
    """'mail.example.com:587', '[mail.example.com]:587', '192.0.2.1' (port 25)."""
    v = raw.strip()
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", v) or re.match(r"^([^:\[\]]+)(?::(\d+))?$", v)
    if not m:
        raise ValueError(f"expected host:port like smtp.example.com:587, got {raw!r}")
    host, port = m.group(1).strip().rstrip(".").lower(), int(m.group(2) or 25)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not is_hostname(host):
            raise ValueError(f"expected a host name or IP address, got {host!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return HostPort(host, port)


def daemon_address(raw: str, ctx: _Ctx) -> HostPort | Path:
    """A daemon to talk to: 127.0.0.1:3310, [::1]:783, or unix:<path> (relative to the INI
    file's folder) or an absolute path for a UNIX socket."""
    v = raw.strip()
    if v.startswith("unix:"):
        return path(v[5:], ctx)
    if v.startswith("/"):
        return Path(v)
    m = re.match(r"^(\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)$", v)
    if not m:
        raise ValueError(
            f"expected host:port like 127.0.0.1:3310 or unix:/run/clamav/clamd.ctl, got {raw!r}"
        )
    return host_port(v)


def ip_address(raw: str, ctx: _Ctx) -> str:
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise ValueError(f"expected an IP address like 127.0.1.1, got {raw!r}") from None


def score(raw: str, ctx: _Ctx) -> float:
    try:
        v = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a score like 10 or 7.5, got {raw!r}") from None
    if not 0 <= v <= 10_000:
        raise ValueError(f"expected a score from 0 to 10000, got {v:g}")
    return v


def durations(raw: str, ctx: _Ctx) -> tuple[int, ...]:
    out = tuple(parse_duration(w) for w in words(raw))
    if not out or any(d <= 0 for d in out):
        raise ValueError(f"expected durations like 1m 5m 15m 1h, got {raw!r}")
    return out


def address(raw: str, ctx: _Ctx) -> str:
    v = raw.strip()
    local, at, domain = v.rpartition("@")
    if not at or not local or not is_hostname(domain) or any(c.isspace() for c in v):
        raise ValueError(f"expected an address like postmaster@example.com, got {raw!r}")
    return v


def address_list(raw: str, ctx: _Ctx) -> tuple[str, ...]:
    return tuple(dict.fromkeys(address(w, ctx).lower() for w in words(raw)))


def networks(raw: str, ctx: _Ctx) -> tuple[Network, ...]:
    out = []
    for w in words(raw):
        try:
            out.append(ipaddress.ip_network(w, strict=False))
        except ValueError:
            raise ValueError(f"expected networks like 127.0.0.0/8 ::1, got {w!r}") from None
    return tuple(out)


def text(raw: str, ctx: _Ctx) -> str:
    return raw.strip()


def mechanisms(raw: str, ctx: _Ctx) -> tuple[str, ...]:
    out = tuple(w.upper() for w in words(raw))
    for m in out:
        if m not in ("PLAIN", "LOGIN", "CRAM-MD5"):
            raise ValueError(f"expected PLAIN, LOGIN and/or CRAM-MD5, got {m!r}")
    return out


def ldap_urls(raw: str, ctx: _Ctx) -> tuple[str, ...]:
    out = tuple(words(raw))
    for u in out:
        if not re.match(r"^ldaps?://[^/\s]+/?$", u):
            raise ValueError(f"expected URLs like ldap://127.0.0.1:389, got {u!r}")
    return out


def choice(*options: str) -> Converter:
    def convert(raw: str, ctx: _Ctx) -> str:
        v = raw.strip().lower()
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return v

    return convert


def user(raw: str, ctx: _Ctx) -> str:
    try:
        pwd.getpwnam(raw.strip())
    except KeyError:
        raise ValueError(f"no such user: {raw.strip()!r}") from None
    return raw.strip()


def group(raw: str, ctx: _Ctx) -> str:
    try:
        grp.getgrnam(raw.strip())
    except KeyError:
        raise ValueError(f"no such group: {raw.strip()!r}") from None
    return raw.strip()
