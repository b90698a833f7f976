"""The syntax the map files share: Sendmail's ERROR: reply forms."""

from __future__ import annotations

import pytest

from appliance.policy.mapfile import parse_reply


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ('"5.7.1 Go away"', (550, "5.7.1", "Go away")),
        ("5.7.1:550 Go away", (550, "5.7.1", "Go away")),
        ("550 Go away", (550, "5.7.1", "Go away")),
        ('"550 Go away"', (550, "5.7.1", "Go away")),
        ("550 5.7.0 Go away", (550, "5.7.0", "Go away")),
        ("4.7.1:451 Try later", (451, "4.7.1", "Try later")),
        ("4.7.1 Try later", (450, "4.7.1", "Try later")),
        ("554", (554, "5.7.1", "Access denied")),
    ],
)
def test_parse_reply_sendmail_forms_code_and_text(spec: str, expected: tuple) -> None:
    """Sendmail's ERROR: forms give the reply code, enhanced code and text."""
    assert parse_reply(spec, "7.1", "Access denied") == expected
