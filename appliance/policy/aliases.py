"""aliases (aliases(5)): local names that stand for other names, mailboxes or addresses.

`name: target, target2`; continuation lines start with whitespace. Names are local parts and
apply in every local domain. Targets are local names (aliases again, then a mailbox in the same
domain), `\\name` (that mailbox, no aliasing), or addresses. A name listed in its own expansion
is delivered to its mailbox (Sendmail's self-reference). Program (`|cmd`), file (`/path`) and
`:include:` targets are configuration errors, as are loops between names (found here, at load;
`appliance.policy.expansion` guards against the loops that go through virtusertable).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from appliance.policy.mapfile import unquote, valid_domain, valid_local


@dataclass(frozen=True)
class AliasTarget:
    """kind 'name' (aliased again), 'literal' (\\name: that mailbox), or 'address'."""

    kind: str
    value: str
    line: int


@dataclass
class AliasMap:
    """Parsed aliases: each name's targets (each once, in order) and the line it is on."""

    entries: dict[str, tuple[AliasTarget, ...]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> tuple[AliasTarget, ...] | None:
        return self.entries.get(name)


def split_targets(text: str) -> tuple[list[str], bool]:
    """Comma-separated pieces, commas inside quotes kept; and whether the quotes balance."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            pieces.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current).strip())
    return [p for p in pieces if p], not quoted


def parse_target(piece: str, line: int) -> AliasTarget:
    """One comma-separated target; ValueError names the problem."""
    value = unquote(piece)
    if value.startswith(("|", "/")):
        raise ValueError(f"program and file targets are not supported: {value!r}")
    if value.lower().startswith(":include:"):
        raise ValueError(f":include: targets are not supported: {value!r}")
    if len(value.split()) != 1:
        raise ValueError(f"expected targets separated by commas, got {piece!r}")
    if value.startswith("\\"):
        name = value[1:].lower()
        if not valid_local(name):
            raise ValueError(f"not a valid user name: {value!r}")
        return AliasTarget("literal", name, line)
    local, at, domain = value.rpartition("@")
    if at:
        domain = domain.lower().rstrip(".")
        if not valid_local(local.lower()) or not valid_domain(domain):
            raise ValueError(f"not a valid address: {value!r}")
        return AliasTarget("address", f"{local}@{domain}", line)
    if not valid_local(value.lower()):
        raise ValueError(f"not a valid user name or address: {value!r}")
    return AliasTarget("name", value.lower(), line)


def parse_aliases(text: str, path: str) -> tuple[AliasMap, list[str]]:
    """Parsed aliases(5), and its problems (one line each), loops between names included."""
    aliases = AliasMap()
    found: list[tuple[int, str]] = []  # (line, problem), reported in line order
    entries: list[tuple[str, int, list[tuple[str, int]]]] = []  # name, line, [(text, line)]
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if not entries:
                found.append((number, "continuation line without an alias before it"))
            else:
                entries[-1][2].append((stripped, number))
            continue
        name, colon, rest = stripped.partition(":")
        name = unquote(name).lower()
        if not colon or not name:
            found.append((number, f"expected 'name: target, ...', got {stripped!r}"))
            entries.append(("", number, []))  # swallow its continuation lines
            continue
        entries.append((name, number, [(rest, number)]))
    for name, number, segments in entries:
        if not name:
            continue
        if "@" in name:
            found.append(
                (
                    number,
                    f"alias names are local parts, not addresses: {name!r}"
                    " (use virtusertable for addresses)",
                )
            )
            continue
        if not valid_local(name):
            found.append((number, f"not a valid alias name: {name!r}"))
            continue
        targets: list[AliasTarget] = []
        for segment, line in segments:
            pieces, balanced = split_targets(segment)
            if not balanced:
                found.append((line, f"unbalanced quote in {segment!r}"))
                continue
            for piece in pieces:
                try:
                    targets.append(parse_target(piece, line))
                except ValueError as e:
                    found.append((line, str(e)))
        if not targets and not any(split_targets(s)[0] for s, _ in segments):
            found.append((number, f"alias {name!r} has no targets"))
            continue
        if name in aliases.lines:
            first = aliases.lines[name]
            found.append((number, f"duplicate alias {name!r} (first on line {first})"))
            continue
        aliases.lines[name] = number
        aliases.entries[name] = tuple(dict.fromkeys(targets))
    found.extend(alias_loops(aliases))
    found.sort(key=lambda p: p[0])
    return aliases, [f"{path}:{line}: {problem}" for line, problem in found]


def alias_loops(aliases: AliasMap) -> list[tuple[int, str]]:
    """One (line, problem) per loop between alias names (a name listing itself is no loop)."""
    graph = {
        name: [t.value for t in targets if t.kind == "name" and t.value != name]
        for name, targets in aliases.entries.items()
    }
    problems: list[tuple[int, str]] = []
    done: set[str] = set()
    for start in sorted(graph, key=lambda n: aliases.lines[n]):
        if start in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(graph[start]))]
        on_stack = {start}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_stack.discard(node)
                done.add(node)
            elif child in on_stack:
                chain = [n for n, _ in stack]
                cycle = chain[chain.index(child) :] + [child]
                problems.append((aliases.lines[child], f"alias loop: {' -> '.join(cycle)}"))
            elif child in graph and child not in done:
                stack.append((child, iter(graph[child])))
                on_stack.add(child)
    return problems
