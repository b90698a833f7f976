"""SendmailPolicy's local domains and the problems it reports at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.policy.sendmail import SendmailPolicy
from tests.policy.helpers import (
    USERS,
    Users,
    build,
)

# ---------------------------------------------------------------------- local domains


def test_is_local_domain_file_and_config_union_true(tmp_path: Path) -> None:
    """Domains from local-host-names and from the config are both local."""
    policy = build(tmp_path, local_domains=["sina.com"])
    assert policy.is_local_domain("163.com")
    assert policy.is_local_domain("sina.com")
    assert not policy.is_local_domain("other.example")
    assert policy.local_domains() == {"163.com", "sina-alias.com", "sina.com"}


def test_is_local_domain_case_and_trailing_dot_ignored(tmp_path: Path) -> None:
    """Domain comparison ignores case and a trailing dot."""
    policy = build(tmp_path)
    assert policy.is_local_domain("MAIL.163.COM.") is False
    assert policy.is_local_domain("163.COM.")


def test_policy_without_local_domains_config_error(tmp_path: Path) -> None:
    """No local domain anywhere is a configuration error."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, lhn=None)
    assert e.value.problems == ["no local domains: set [smtp] local_domains or local_host_names"]


def test_local_host_names_bad_lines_config_error(tmp_path: Path) -> None:
    """Each bad local-host-names line is one problem naming file and line."""
    path = tmp_path / "local-host-names"
    with pytest.raises(ConfigError) as e:
        build(tmp_path, lhn="163.com\nbad_domain!\n163.com sina.com\n")
    assert e.value.problems == [
        f"{path}:2: not a valid domain name: 'bad_domain!'",
        f"{path}:3: expected one domain per line, got '163.com sina.com'",
    ]


def test_policy_missing_file_config_error(tmp_path: Path) -> None:
    """A configured file that cannot be read is a configuration error."""
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as e:
        SendmailPolicy(local_domains=["163.com"], access=missing, users=Users(USERS))
    assert e.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_policy_problems_of_all_files_reported_together(tmp_path: Path) -> None:
    """Problems from several files come back in one ConfigError."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, access="127.0.0.1 MAYBE\n", virtusertable="nokey\n")
    assert e.value.problems == [
        f"{tmp_path / 'access'}:1: unknown value 'MAYBE' (expected OK, RELAY, REJECT, DISCARD,"
        " SKIP or ERROR:...)",
        f"{tmp_path / 'virtusertable'}:1: expected 'user@domain target' or '@domain target',"
        " got 'nokey'",
    ]
