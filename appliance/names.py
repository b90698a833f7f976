"""Host names, domains, local parts and addresses: the one place that says what is valid.

Everything that checks a name (the INI schema, the CA, the sendmail maps, the passwd file,
reverse DNS) asks here, so "a valid domain" means the same thing everywhere: LDH labels of
1-63 octets that neither start nor end with '-', at most 253 octets in all (RFC 1035/1123).
"""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(rf"^{_LABEL}$", re.I)
# RFC 5322 atext without '%' and '!': in our files those could only mean source routing
_ATEXT = r"[a-z0-9#$&'*+/=?^_`{|}~-]"
_LOCAL_RE = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$", re.I)
# what a passwd-file user may be called: dot-atoms of RFC 5322 atext (with '%' and '!'), at a
# lower-case domain with a dot; one expression, as it is checked on every lookup
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOWER_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_USER_ADDRESS_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LOWER_LABEL}(?:\.{_LOWER_LABEL})+")

MAX_NAME = 253
MAX_LOCAL = 64
MAX_ADDRESS = 254


def is_hostname(name: str, *, wildcard: bool = False, min_labels: int = 1) -> bool:
    """Whether name is a host name (case-insensitive; one trailing root dot allowed).

    With wildcard, a leading '*' label is allowed when at least two real labels follow it.
    min_labels=2 asks for a name with a dot (what a mail domain needs in a user's address).
    """
    if name.endswith("."):
        name = name[:-1]
    # ASCII first: with IGNORECASE, [a-z] also matches the long s and the dotless i
    if not name or len(name) > MAX_NAME or not name.isascii():
        return False
    labels = name.split(".")
    if wildcard and labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return len(labels) >= min_labels and all(_LABEL_RE.fullmatch(label) for label in labels)


def is_local_part(local: str) -> bool:
    """Whether local is a dot-atom local part usable in our maps (no '%', '!' or quotes)."""
    return len(local) <= MAX_LOCAL and local.isascii() and bool(_LOCAL_RE.fullmatch(local))


def is_user_address(address: str) -> bool:
    """Whether address is a lower-case ASCII user@domain.tld, as the passwd file stores users."""
    return len(address) <= MAX_ADDRESS and _USER_ADDRESS_RE.fullmatch(address) is not None


ALL = "ALL"  # what names every queued message in the queue commands
_QUEUE_ID = re.compile(r"[0-9A-Fa-f]{10}")


def parse_queue_id(text: str) -> str | None:
    """A queue id (10 hex digits, returned upper-case), or None for ALL; ValueError else."""
    if text.upper() == ALL:
        return None
    if _QUEUE_ID.fullmatch(text):
        return text.upper()
    raise ValueError(f"expected a queue id of 10 hex digits like 3F1A2B4C5D, or ALL, got {text!r}")
