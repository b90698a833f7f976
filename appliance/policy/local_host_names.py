"""local-host-names: the domains we receive mail for.

One domain per line, `#` comments. The local domains are these plus the configured
`local_domains`; at least one is required.
"""

from __future__ import annotations

from appliance.policy.mapfile import map_lines, valid_domain


def parse_local_host_names(text: str, path: str) -> tuple[frozenset[str], list[str]]:
    """The domains of a local-host-names file, and its problems (one line each)."""
    domains: set[str] = set()
    problems: list[str] = []
    for number, line in map_lines(text):
        words = line.split()
        if len(words) != 1:
            problems.append(f"{path}:{number}: expected one domain per line, got {line!r}")
            continue
        domain = words[0].lower().rstrip(".")
        if not valid_domain(domain):
            problems.append(f"{path}:{number}: not a valid domain name: {words[0]!r}")
            continue
        domains.add(domain)
    return frozenset(domains), problems
