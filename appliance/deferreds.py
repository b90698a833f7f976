"""Answers that come at once or later: the seams' `T | Deferred[T]` as one Deferred[T].

A Policy or a filter answers a cheap question at once and an expensive one (a DNS lookup, a
daemon) later; the caller waits on both the same way. maybeDeferred does that, but its type
cannot say so (a Deferred returned by f is not unwrapped in its signature), so the cast
lives here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, ParamSpec, TypeVar, cast

from twisted.internet import defer
from twisted.python.failure import Failure

P = ParamSpec("P")
T = TypeVar("T")


def decision(
    f: Callable[P, T | defer.Deferred[T]], *args: P.args, **kw: P.kwargs
) -> defer.Deferred[T]:
    """f(*args) as a Deferred, whether it answered at once or later (or raised)."""
    return cast("defer.Deferred[T]", defer.maybeDeferred(f, *args, **kw))


def value_now(d: defer.Deferred[T]) -> tuple[Literal[True], T] | tuple[Literal[False], None]:
    """(True, its result) if d has already succeeded with a plain value, else (False, None)
    and d is untouched: a caller with many such answers (a user check per mailbox) skips
    gatherResults' machinery when all came at once, as they do from a file."""
    if d.called and not d.paused:
        result = d.result
        if not isinstance(result, (Failure, defer.Deferred)):
            return True, cast(T, result)
    return False, None
