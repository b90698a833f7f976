"""STARTTLS to the next hop with `tls = verify`: a certificate from a CA 163 does not trust
defers the message with the reason, it stays queued, and once the trusted CA file holds the
right CA (read at each connection) the next retry delivers it over verified TLS.

(The default lab's verified TLS, `tls=` in the maillog and TLS in sina's Received header, is
asserted by test_lab_relay; a certificate for another name by test_lab_routing.)
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    Appliance,
    lab_with,
    maillog,
    parse,
    queue_entry,
    running,
    set_keys,
    settled,
    status_line,
    submit,
    token,
    unfolded,
    wait_for,
    wait_message,
    with_token,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """163 trusts etc/trust.pem, which holds 163's own CA (it did not issue sina's cert)."""
    labs = lab_with(tmp_path_factory.mktemp("tls"), both={"queue": {"retry_schedule": "1s"}})
    a = labs["163"]
    trust = a.ini.parent / "trust.pem"
    set_keys(a.ini, "relay", ca_file=trust)
    with running(labs) as appliances:
        shutil.copyfile(a.state / "ca" / "ca.crt", trust)  # made at 163's first start
        yield appliances


def test_relay_verify_untrusted_ca_deferred_then_delivered_when_trusted(lab) -> None:
    """sina's certificate from an untrusted CA: deferred 4.7.5 and queued; once trusted, the retry delivers."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user3@sina.com"], tok)
    line = status_line(a, qid, "user3@sina.com", "deferred")
    assert "status=deferred (" in line and "mail.sina.com[127.0.1.4]" in line, line
    assert ", relay=mail.sina.com[127.0.1.4]:" in line, line  # reached, so relay= names it
    assert re.search(r"certificate verif", line, re.I), line
    assert ", dsn=4.7.5, " in line, line  # 4.7.5: cryptographic failure
    wait_for(
        lambda: (
            len(re.findall(rf"{qid}: to=<user3@sina\.com>, [^\n]*status=deferred", maillog(a))) >= 2
        ),
        what="a second deferral at the retry",
    )
    entry = queue_entry(a, qid)
    assert entry and re.search(r"certificate verif", entry, re.I), entry
    assert "user3@sina.com" in entry
    assert with_token(sina, "user3@sina.com", tok) == []
    assert "from=<user1@163.com>" not in maillog(sina)

    shutil.copyfile(sina.state / "ca" / "ca.crt", a.ini.parent / "trust.pem")
    data = wait_message(sina, "user3@sina.com", tok)
    sent = status_line(a, qid, "user3@sina.com", "sent")
    assert re.search(r", tls=TLSv1\.[23] \S+, dsn=2\.0\.0, status=sent", sent), sent
    assert "(using TLSv1." in unfolded(parse(data)["Received"])
    wait_for(lambda: settled(a), what="163 queue empty")
