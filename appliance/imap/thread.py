"""THREAD (RFC 5256 sections 3 and 4): ORDEREDSUBJECT and REFERENCES, sans-IO.

thread() takes the messages the search found and gives the THREAD response's body,
"(2)(3 6 (4 23)(44 7 96))": a thread per parenthesized group, a single reply following its
parent after a space, several replies each in its own parentheses, a missing ("dummy")
parent as parentheses with nothing before the children.

Every sort here is by sent date (the Date field, else INTERNALDATE), then sequence number.

ORDEREDSUBJECT groups the messages by base subject (appliance.imap.sort.base_subject); the
oldest of a group is the parent of all the others, and the threads go by their first message.

REFERENCES, as in the RFC and in Dovecot (which imaptest's thread* scripts follow):

 1. Each message gets a container under its Message-ID; one without a (valid) Message-ID,
    or with one an earlier message already has, gets a container of its own. The ids in its
    References (else In-Reply-To) become containers too ("dummies" while no message has
    them), each one the parent of the next unless that one has a parent already or the link
    would make a loop. The message's own parent is the last of them: a different parent it
    got from an earlier message's References is dropped, and none is set when that link
    would make a loop (or there are no references).
 2. Dummies go: a message hangs under its nearest ancestor that is a message, or, if it has
    only dummies above it, under the topmost one; a dummy at the top with a single child
    gives way to it; a childless one is dropped.
 3. The threads (a dummy counting as its oldest child) are sorted; then threads whose
    subjects (a dummy's: its oldest child's) have the same non-empty base subject merge:
    under the dummy if one of them is a dummy, under the one that is not a reply if the other
    is, else both under a new dummy.
 4. Every set of siblings is sorted, the threads again.
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.imap.search import SearchMessage
from appliance.imap.sort import sent_time, subject_info
from appliance.imap.tokens import ParseError

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")  # advertised as THREAD=<name>


class _Node:
    """A container: a message, or a dummy (msg None) standing for a referenced id."""

    __slots__ = ("msg", "parent", "children", "key", "reply")

    def __init__(self, msg: SearchMessage | None = None) -> None:
        self.msg = msg
        self.parent: _Node | None = None
        self.children: list[_Node] = []
        self.key: tuple[float, int] = (0.0, 0)  # (sent date, seq): the sort order
        self.reply = False

    def has_ancestor(self, other: _Node) -> bool:
        """Whether other is this node or above it."""
        node: _Node | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False


def _sort(nodes: list[_Node]) -> None:
    """Sort siblings; a dummy sorts as its oldest child (its children sorted first)."""
    for node in nodes:
        if node.msg is None and node.children:
            node.children.sort(key=lambda n: n.key)
            node.key = node.children[0].key
    nodes.sort(key=lambda n: n.key)


def _new(msg: SearchMessage) -> _Node:
    node = _Node(msg)
    node.key = (sent_time(msg), msg.seq)
    return node


def _link(parent: _Node, child: _Node) -> None:
    """Step 1's link between two references: kept if the child has no parent yet and no loop
    comes of it."""
    if child.parent is None and not parent.has_ancestor(child):
        child.parent = parent


def _references(messages: list[SearchMessage]) -> list[_Node]:
    ids: dict[str, _Node] = {}
    nodes: list[_Node] = []  # every container, in the order made

    def container(msg_id: str) -> _Node:
        node = ids.get(msg_id)
        if node is None:
            node = ids[msg_id] = _Node()
            nodes.append(node)
        return node

    # (1) containers and links
    for msg in messages:
        content = msg.content()
        msg_id = content.message_id()
        node = ids.get(msg_id) if msg_id is not None else None
        if node is None or node.msg is not None:
            node = _Node()
            nodes.append(node)
            if msg_id is not None and msg_id not in ids:
                ids[msg_id] = node
        node.msg = msg
        node.key = (sent_time(msg), msg.seq)
        refs = [container(r) for r in content.references()]
        for parent, child in zip(refs, refs[1:], strict=False):
            if parent is not child:
                _link(parent, child)
        last = refs[-1] if refs else None
        if node.parent is not None and node.parent is not last:
            node.parent = None
        if last is not None and last is not node:
            _link(last, node)

    # (2) the dummies go
    roots: list[_Node] = []
    for node in nodes:
        if node.parent is None:
            roots.append(node)
        elif node.msg is not None:
            above = node.parent
            while above.msg is None and above.parent is not None:
                above = above.parent
            above.children.append(node)
    threads: list[_Node] = []
    for node in roots:
        if node.msg is None:
            if not node.children:
                continue
            if len(node.children) == 1:
                node = node.children[0]
        threads.append(node)

    # (3) same subjects merge
    _sort(threads)
    return _sort_all(_merge_subjects(threads))


def _thread_subject(node: _Node) -> str:
    """The base subject of a thread, upper-cased (its case does not matter), "" for none;
    node.reply tells whether it was a reply or forward."""
    msg = node.msg if node.msg is not None else node.children[0].msg
    assert msg is not None
    base, node.reply = subject_info(msg.content().subject())
    return base.upper()


def _merge_subjects(threads: list[_Node]) -> list[_Node]:
    subjects = [_thread_subject(node) for node in threads]
    table: dict[str, _Node] = {}
    for node, subject in zip(threads, subjects, strict=True):
        if not subject:
            continue
        there = table.get(subject)
        if there is None:
            table[subject] = node
        elif there.msg is not None and (node.msg is None or (there.reply and not node.reply)):
            table[subject] = node
    out: list[_Node] = []
    gone: set[int] = set()  # ids of threads merged into another
    for node, subject in zip(threads, subjects, strict=True):
        there = table.get(subject) if subject else None
        if there is None or there is node:
            out.append(node)
            continue
        gone.add(id(node))
        if node.msg is None:  # both are dummies
            there.children.extend(node.children)
        elif there.msg is None or (node.reply and not there.reply):
            there.children.append(node)
        else:
            dummy = _Node()
            dummy.children = [there, node]
            table[subject] = dummy
            gone.add(id(there))
            out.append(dummy)
    return [node for node in out if id(node) not in gone]


def _sort_all(threads: list[_Node]) -> list[_Node]:
    """(4) Every set of siblings sorted, the threads last."""
    stack = list(threads)
    while stack:
        node = stack.pop()
        if node.children:
            node.children.sort(key=lambda n: n.key)
            stack.extend(node.children)
    _sort(threads)
    return threads


def _ordered_subject(messages: list[SearchMessage]) -> list[_Node]:
    groups: dict[str, _Node] = {}
    for msg in messages:
        node = _new(msg)
        subject = subject_info(msg.content().subject())[0].upper()
        first = groups.get(subject)
        if first is None:
            groups[subject] = node
        else:
            first.children.append(node)
    threads: list[_Node] = []
    for first in groups.values():
        members = sorted([first, *first.children], key=lambda n: n.key)
        root = members[0]
        root.children = members[1:]
        for child in members:
            if child is not root:
                child.children = []
        threads.append(root)
    _sort(threads)
    return threads


def _format(threads: list[_Node], use_uid: bool) -> str:
    """The THREAD response body (iteratively: a thread may be deep)."""
    out: list[str] = []
    stack: list[_Node | str] = list(reversed(threads))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        out.append("(")
        node, first = item, True
        while True:
            if node.msg is not None:
                if not first:
                    out.append(" ")
                out.append(str(node.msg.uid if use_uid else node.msg.seq))
                first = False
                if len(node.children) == 1:
                    node = node.children[0]
                    continue
            if node.children:
                if not first:
                    out.append(" ")
                stack.append(")")
                stack.extend(reversed(node.children))
            else:
                out.append(")")
            break
    return "".join(out)


def thread(algorithm: str, messages: Iterable[SearchMessage], *, use_uid: bool = False) -> str:
    """The THREAD response body for the messages (what the search found), numbered by
    sequence number or, for UID THREAD, by UID; ParseError for an unknown algorithm."""
    name = algorithm.upper()
    ordered = sorted(messages, key=lambda m: m.seq)
    if name == "REFERENCES":
        threads = _references(ordered)
    elif name == "ORDEREDSUBJECT":
        threads = _ordered_subject(ordered)
    else:
        raise ParseError(f"Unknown threading algorithm: {algorithm}")
    return _format(threads, use_uid)
