"""appliance.deferreds: answers at once or later."""

from __future__ import annotations

from twisted.internet import defer

from appliance.deferreds import value_now


def test_value_now_only_for_a_plain_result_already_there() -> None:
    assert value_now(defer.succeed(True)) == (True, True)
    assert value_now(defer.succeed(None)) == (True, None)
    later: defer.Deferred[bool] = defer.Deferred()
    assert value_now(later) == (False, None)
    later.callback(False)
    assert value_now(later) == (True, False)
    failed = defer.fail(ValueError("lookup failed"))
    assert value_now(failed) == (False, None)
    seen = []
    failed.addErrback(lambda f: seen.append(f.value))  # untouched: the failure is still there
    assert isinstance(seen[0], ValueError)
    paused = defer.succeed(1)
    paused.pause()
    assert value_now(paused) == (False, None)
    paused.unpause()
