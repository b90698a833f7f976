"""What the Sendmail map files share: lines, quoting, addresses, domains, `ERROR:` replies.

Every file is UTF-8 text, one entry per line; blank lines and lines starting with `#` are
skipped (there are no inline comments). A value may be written in double quotes.

Addresses are compared case-insensitively: domains and local parts are both lower-cased (every
local user store here is lower-case), and a domain loses its trailing dots. Remote targets
written in virtusertable or aliases keep the case of their local part.

Error replies (access `ERROR:` values, virtusertable `error:` targets) are written as
`"5.7.1 text"`, `5.7.1:550 text`, `550 text` or `550 5.7.1 text`: the reply code and enhanced
code come from the value; the missing one follows the other's class (550/5.x.x, 450/4.x.x).

Routing tricks in an address (`user%other.com@163.com`, `@163.com:user@other.com`,
`other.com!user@163.com`, a quoted `@`) are recognised here; what they earn is policy's call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from appliance.names import is_hostname, is_local_part

_DSN_RE = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=[:\s]|$):?\s*")
_CODE_RE = re.compile(r"(\d{3})(?=\s|$)\s*")
_SOURCE_ROUTE_RE = re.compile(r"^@[^:]*:")


def map_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for each line that is neither blank nor a comment."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def unquote(text: str) -> str:
    """text stripped, without the double quotes around it (if it has both)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].strip()
    return text


def split_address(address: str) -> tuple[str, str]:
    """('user', 'domain') lower-cased; the domain loses a trailing dot."""
    local, _, domain = address.rpartition("@")
    return local.lower(), domain.lower().rstrip(".")


def valid_domain(domain: str) -> bool:
    """Whether a lower-cased domain, its trailing dots already stripped, is a host name.

    ASCII only: names.is_hostname ignores case, which would also let 'ſ' pass for 's'.
    """
    return domain.isascii() and is_hostname(domain)


def valid_local(local: str) -> bool:
    """Whether a lower-cased local part is a dot-atom our maps accept (no '%', '!', quotes)."""
    return local.isascii() and is_local_part(local)


def suffixes(domain: str) -> Iterator[str]:
    """'a.b.c' -> 'a.b.c', 'b.c', 'c'."""
    labels = domain.lower().rstrip(".").split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


def routing_trick(address: str) -> bool:
    """Whether address uses source routing, the percent hack, a bang path or a quoted '@'."""
    if address.startswith("@"):
        return True
    local = address.rpartition("@")[0]
    return any(c in local for c in "%!@:")


def drop_source_route(address: str) -> str:
    """'@163.com:user@other.com' -> 'user@other.com'; other addresses unchanged."""
    return _SOURCE_ROUTE_RE.sub("", address)


def parse_reply(spec: str, subject: str, default_text: str) -> tuple[int, str, str]:
    """Sendmail's error forms -> (code, enhanced code, text); ValueError names the problem.

    '"5.7.1 text"', '5.7.1:550 text', '550 text', '550 5.7.1 text'. A missing code follows the
    enhanced code's class (x50) and a missing enhanced code is <class>.<subject>.
    """
    s = unquote(spec)
    dsn: str | None = None
    code: int | None = None
    m = _DSN_RE.match(s)
    if m:
        dsn = m[1]
        s = unquote(s[m.end() :])
    m = _CODE_RE.match(s)
    if m:
        code = int(m[1])
        s = s[m.end() :]
        if dsn is None:
            m = _DSN_RE.match(s)
            if m:
                dsn = m[1]
                s = s[m.end() :]
    text = s.strip() or default_text
    if code is None and dsn is None:
        raise ValueError(
            f"expected a reply code like 550 or an enhanced status code like 5.7.1, got {spec.strip()!r}"
        )
    if code is not None and not 400 <= code <= 599:
        raise ValueError(f"the reply code must be 4xx or 5xx, got {code}")
    if dsn is not None and dsn[0] == "2":
        raise ValueError(f"the enhanced status code must be 4.x.x or 5.x.x, got {dsn}")
    if code is None:
        assert dsn is not None
        code = 550 if dsn[0] == "5" else 450
    if dsn is None:
        dsn = f"{str(code)[0]}.{subject}"
    if str(code)[0] != dsn[0]:
        raise ValueError(f"reply code {code} and enhanced status code {dsn} disagree")
    return code, dsn, text
