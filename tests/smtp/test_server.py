"""The ESMTP session over StringTransport: every reply code, limits and smuggling regressions."""

from __future__ import annotations

import base64
import re

from appliance.interfaces import DiskFull, Verdict
from appliance.limits import SessionLimits
from appliance.smtp.settings import SMTPS, SUBMISSION

EHLO_LINES = [
    "250-mail.example.test",
    "250-PIPELINING",
    "250-SIZE 26214400",
    "250-STARTTLS",
    "250-AUTH PLAIN LOGIN",
    "250-ENHANCEDSTATUSCODES",
    "250-8BITMIME",
    "250-DSN",
    "250-SMTPUTF8",
    "250-CHUNKING",
    "250 HELP",
]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plaintext_ok(smtp, **kw):
    import ipaddress

    return smtp(plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),), **kw)


def test_greeting_and_ehlo_lists_extensions(smtp) -> None:
    """220 banner, then one EHLO line per extension, AUTH offered on a plaintext network."""
    s = plaintext_ok(smtp)
    assert s.read() == ["220 mail.example.test ESMTP mailappliance"]
    assert s.send("EHLO client\r\n") == EHLO_LINES


def test_ehlo_without_tls_outside_plaintext_networks_hides_auth(smtp) -> None:
    """On port 25 from a network not listed, AUTH is offered only after STARTTLS."""
    s = smtp()
    s.read()
    lines = s.send("EHLO client\r\n")
    assert "250-STARTTLS" in lines and not any("AUTH" in line for line in lines)


def test_smtps_port_does_not_offer_starttls(smtp) -> None:
    """Implicit TLS (465): no STARTTLS, AUTH offered."""
    s = smtp(mode=SMTPS, peer="192.0.2.7")
    s.read()
    lines = s.send("EHLO client\r\n")
    assert "250-STARTTLS" not in lines and "250-AUTH PLAIN LOGIN" in lines
    assert s.cmd("STARTTLS") == "502 5.5.1 Error: command not implemented"


def test_helo_and_ehlo_need_argument(smtp) -> None:
    """EHLO/HELO without a name: 501 5.5.4."""
    s = smtp()
    s.read()
    assert s.cmd("EHLO") == "501 5.5.4 Syntax: EHLO hostname"
    assert s.cmd("HELO") == "501 5.5.4 Syntax: HELO hostname"
    assert s.cmd("HELO client") == "250 mail.example.test"


def test_out_of_order_commands_503(smtp) -> None:
    """MAIL before HELO, RCPT before MAIL, DATA before RCPT, nested MAIL: 503 5.5.1."""
    s = smtp()
    s.read()
    assert s.cmd("MAIL FROM:<a@example.org>") == "503 5.5.1 Error: send HELO/EHLO first"
    s.send("EHLO c\r\n")
    assert s.cmd("RCPT TO:<user1@example.test>") == "503 5.5.1 Error: need MAIL command"
    assert s.cmd("DATA") == "503 5.5.1 Error: need MAIL command"
    assert s.cmd("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
    assert s.cmd("MAIL FROM:<a@example.org>") == "503 5.5.1 Error: nested MAIL command"
    assert s.cmd("DATA") == "554 5.5.1 Error: no valid recipients"


def test_unauthenticated_local_sender_530(smtp) -> None:
    """The tutorial's transcript: MAIL FROM a local domain without AUTH -> 530 5.7.0."""
    s = smtp().ready()
    assert s.cmd("MAIL FROM:<abc@example.test>") == "530 5.7.0 Authentication required"


def test_rcpt_unknown_user_and_relay_denied(smtp) -> None:
    """Unknown local user 550 5.1.1; a remote domain without AUTH/RELAY 550 5.7.1."""
    s = smtp().ready()
    s.cmd("MAIL FROM:<a@example.org>")
    assert s.cmd("RCPT TO:<nobody@example.test>") == (
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"
    )
    assert s.cmd("RCPT TO:<x@elsewhere.org>") == "550 5.7.1 <x@elsewhere.org>: Relay access denied"
    assert s.cmd("RCPT TO:<user1@example.test>") == "250 2.1.5 Ok"
    assert any("NOQUEUE: reject: RCPT" in line and "5.7.1" in line for line in smtp.logs)


def test_full_transaction_queued_with_received_header(smtp) -> None:
    """MAIL, RCPT, DATA: 354, then 250 with the queue id; body dot-unstuffed after our Received."""
    s = smtp().ready()
    s.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME")
    s.cmd("RCPT TO:<user1@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user1@example.test")
    assert s.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    assert s.send("Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n") == [
        "250 2.0.0 Ok: queued as 0000000001"
    ]
    (m,) = smtp.sink.committed
    assert "0000000001: client=unknown[127.0.0.1]" in smtp.logs
    text = bytes(m.data).decode()
    assert text.startswith("Received: from client.example.org (unknown [127.0.0.1])\r\n")
    assert "\tby mail.example.test (mailappliance) with ESMTP id 0000000001\r\n" in text
    assert text.endswith("Subject: hi\r\n\r\n.leading dot\r\nbody\r\n")
    env = m.envelope
    assert env.body == "8BITMIME" and env.mail_from == "a@example.org"
    (r,) = env.recipients
    assert r.notify == "SUCCESS,FAILURE" and r.orcpt == "rfc822;user1@example.test"
    assert r.mailboxes[0].address == "user1@example.test"


def test_pipelined_commands_answered_in_order(smtp) -> None:
    """PIPELINING: a whole transaction in one packet, replies in order."""
    s = smtp().ready()
    lines = s.send(
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.test>\r\nRCPT TO:<user2@example.test>\r\n"
        "DATA\r\nhello\r\n.\r\nQUIT\r\n"
    )
    assert lines == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as 0000000001",
        "221 2.0.0 mail.example.test Bye",
    ]


def test_size_parameter_over_limit_552(smtp) -> None:
    """SIZE= larger than max_message_size is refused at MAIL."""
    s = smtp(max_message_size=1000).ready()
    assert s.cmd("MAIL FROM:<a@example.org> SIZE=1001") == (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    )
    assert s.cmd("MAIL FROM:<a@example.org> SIZE=1000") == "250 2.1.0 Ok"


def test_message_over_limit_during_data_552(smtp) -> None:
    """A body past max_message_size is read to its end, then 552 5.3.4; nothing kept."""
    s = smtp(max_message_size=1000).ready()
    s.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.test>\r\nDATA\r\n")
    lines = s.send(("x" * 70 + "\r\n") * 30 + ".\r\n")
    assert lines == ["552 5.3.4 Message size exceeds fixed maximum message size"]
    assert smtp.sink.committed == [] and smtp.sink.begun[0].aborted
    assert s.cmd("NOOP") == "250 2.0.0 Ok"


def test_unknown_and_bad_parameters(smtp) -> None:
    """Unknown MAIL/RCPT parameters 555 5.5.4; malformed ones 501 5.5.4."""
    s = smtp().ready()
    assert s.cmd("MAIL FROM:<a@example.org> FOO=1") == "555 5.5.4 Error: unsupported parameter FOO"
    assert (
        s.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME")
        == "501 5.5.4 Error: BODY must be 7BIT or 8BITMIME"
    )
    assert s.cmd("MAIL FROM:<a@example.org> SIZE=x") == "501 5.5.4 Error: bad SIZE parameter"
    assert s.cmd("MAIL FROM:<a@example.org> RET=ALL") == "501 5.5.4 Error: RET must be FULL or HDRS"
    assert s.cmd("MAIL FROM <a@example.org>") == "501 5.5.4 Syntax: MAIL FROM:<address>"
    assert s.cmd("MAIL FROM:<not an address>") == "501 5.1.7 Bad address syntax"
    assert s.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=abc+2B") == "250 2.1.0 Ok"
    assert (
        s.cmd("RCPT TO:<user1@example.test> NOTIFY=NEVER,SUCCESS")
        == "501 5.5.4 Error: bad NOTIFY parameter"
    )
    assert s.cmd("RCPT TO:<>") == "501 5.1.3 Bad recipient address syntax"


def test_smtputf8_needed_for_non_ascii_address(smtp) -> None:
    """A UTF-8 address needs SMTPUTF8 on MAIL (553 5.6.7), and is accepted with it."""
    s = smtp().ready()
    assert s.cmd("MAIL FROM:<jörg@example.org>") == "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    assert s.cmd("MAIL FROM:<jörg@example.org> SMTPUTF8") == "250 2.1.0 Ok"


def test_max_recipients_452(smtp) -> None:
    """More RCPTs than max_recipients: 452 4.5.3, earlier ones still count."""
    s = smtp(max_recipients=1).ready()
    s.cmd("MAIL FROM:<a@example.org>")
    assert s.cmd("RCPT TO:<user1@example.test>") == "250 2.1.5 Ok"
    assert s.cmd("RCPT TO:<user2@example.test>") == "452 4.5.3 Error: too many recipients"


def test_simple_commands(smtp) -> None:
    """NOOP, RSET, VRFY (252), EXPN (502), HELP (214), unknown (500), QUIT (221)."""
    s = smtp().ready()
    assert s.cmd("NOOP") == "250 2.0.0 Ok"
    assert s.cmd("RSET") == "250 2.0.0 Ok"
    assert (
        s.cmd("VRFY user1")
        == "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
    )
    assert s.cmd("EXPN list") == "502 5.5.1 Error: command not implemented"
    assert s.send("HELP\r\n")[-1].startswith("214 2.0.0")
    assert s.cmd("FOO") == "500 5.5.2 Error: command not recognized"
    assert s.cmd("QUIT") == "221 2.0.0 mail.example.test Bye"
    assert s.transport.disconnecting


def test_non_ascii_and_binary_commands_500_session_continues(smtp) -> None:
    """Non-ASCII or invalid UTF-8 in a command: 500 5.5.2, no traceback, next command works."""
    s = smtp().ready()
    assert s.send(b"NO\xffOP\r\n") == ["500 5.5.2 Error: command contains invalid characters"]
    assert s.cmd("NOÖP") == "500 5.5.2 Error: command not recognized"
    assert s.cmd("HELP ünïcode") == "500 5.5.2 Error: non-ASCII characters in command"
    assert s.send(b"\x00\x01\x02\r\n") == ["500 5.5.2 Error: command not recognized"]
    assert s.cmd("NOOP") == "250 2.0.0 Ok"


def test_overlong_command_line_500_buffer_bounded(smtp) -> None:
    """64 MiB without CRLF: one 500 5.5.6, memory stays bounded, the session goes on."""
    s = smtp().ready()
    chunk = b"A" * (1024 * 1024)
    replies = []
    for _ in range(64):
        replies += s.send(chunk)
        assert len(s.proto.buffer) <= 2048
    assert replies == ["500 5.5.6 Error: line too long"]
    assert s.send(b"\r\nNOOP\r\n") == ["250 2.0.0 Ok"]


def test_bare_lf_in_command_refused(smtp) -> None:
    """A command ending in bare LF is not a command (its CRLF-terminated tail is refused)."""
    s = smtp().ready()
    assert s.send(b"NOOP\nNOOP\r\n") == ["500 5.5.2 Error: bare <CR> or <LF> in command"]


def data_session(smtp, **kw):
    s = smtp(**kw).ready()
    s.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.test>\r\nDATA\r\n")
    return s


def test_smuggling_lf_dot_lf_not_end_of_data(smtp) -> None:
    """`<LF>.<LF>` does not end DATA; the smuggled MAIL is never executed; message refused."""
    s = data_session(smtp)
    lines = s.send(
        "Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<user2@example.test>\r\nDATA\r\n"
        "smuggled\r\n.\r\n"
    )
    assert lines == ["550 5.5.2 Message contains bare <CR> or <LF>, refused"]
    assert smtp.sink.committed == []
    assert s.cmd("NOOP") == "250 2.0.0 Ok"


def test_smuggling_cr_dot_cr_and_bare_lf_line(smtp) -> None:
    """`<CR>.<CR>` and `.<LF>` variants are refused the same way."""
    s = data_session(smtp)
    assert s.send("a\r.\rMAIL FROM:<e@x.org>\r\n.\r\n") == [
        "550 5.5.2 Message contains bare <CR> or <LF>, refused"
    ]
    s.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.test>\r\nDATA\r\n")
    assert s.send("a\r\n.\nRSET\r\n.\r\n") == [
        "550 5.5.2 Message contains bare <CR> or <LF>, refused"
    ]


def test_overlong_data_line_stays_in_data(smtp) -> None:
    """A data line over max_text_line: DATA continues (no command execution), then 500 5.5.6."""
    s = data_session(smtp)
    replies = s.send("x" * 5000)
    replies += s.send("\r\nRSET\r\nQUIT\r\n")
    assert replies == []  # RSET and QUIT are message text here, not commands
    assert s.send(".\r\n") == ["500 5.5.6 Message line longer than 1000 octets, refused"]
    assert not s.transport.disconnecting


def test_data_split_across_packets_at_every_byte(smtp) -> None:
    """The end marker and dot-stuffing work however TCP splits the stream."""
    body = b"line1\r\n..dot\r\n.\r\n"
    for split in range(1, len(body)):
        smtp.sink.committed.clear()
        s = data_session(smtp)
        assert s.send(body[:split]) == []
        assert s.send(body[split:])[0].startswith("250 2.0.0 Ok: queued as")
        data = bytes(smtp.sink.committed[-1].data)
        assert data.endswith(b"\r\n\r\n" if False else b"line1\r\n.dot\r\n"), split


def test_empty_message_accepted(smtp) -> None:
    """A message with no lines at all ends at the first '.'."""
    s = data_session(smtp)
    assert s.send(".\r\n")[0].startswith("250 2.0.0 Ok: queued as")


def test_disk_full_452_nothing_committed(smtp) -> None:
    """Running out of space while writing: 452 4.3.1 at the end, message aborted."""
    s = data_session(smtp)
    smtp.sink.fail_write = True
    assert s.send("hello\r\n.\r\n") == ["452 4.3.1 Insufficient system storage"]
    assert smtp.sink.committed == [] and smtp.sink.begun[0].aborted


def test_commit_failures_map_to_4xx(smtp, logged_errors) -> None:
    """DiskFull at commit: 452 4.3.1; any other failure: 451 4.3.0 (never 250, never a 5xx)."""
    s = data_session(smtp)
    smtp.sink.fail_commit = DiskFull("full")
    assert s.send("hello\r\n.\r\n") == ["452 4.3.1 Insufficient system storage"]
    smtp.sink.fail_commit = OSError(5, "I/O error")
    s.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.test>\r\nDATA\r\n")
    assert s.send("hello\r\n.\r\n") == ["451 4.3.0 Error: local error in processing"]
    assert len(logged_errors) == 1 and "I/O error" in str(logged_errors[0]["log_failure"].value)
    logged_errors.clear()


def test_starttls_discards_pipelined_commands_and_resets(smtp, logged_errors) -> None:
    """STARTTLS injection: commands sent with STARTTLS are dropped; the session starts over."""
    s = smtp().ready()
    out = s.send("STARTTLS\r\nMAIL FROM:<a@example.org>\r\n")
    assert out == ["220 2.0.0 Ready to start TLS"]
    assert s.transport.tls_started_with is s.factory.tls
    assert s.proto.helo is None
    assert s.cmd("MAIL FROM:<a@example.org>") == "503 5.5.1 Error: send HELO/EHLO first"
    assert "250-STARTTLS" not in s.send("EHLO again\r\n")
    assert s.cmd("STARTTLS") == "503 5.5.1 Error: TLS already active"


def test_idle_timeout_421(smtp) -> None:
    """A silent client gets 421 4.4.2 after idle_timeout and is disconnected."""
    s = smtp(limits=SessionLimits(idle_timeout=60)).ready()
    smtp.clock.advance(59)
    assert s.read() == []
    smtp.clock.advance(2)
    assert s.read() == ["421 4.4.2 mail.example.test Error: timeout exceeded"]
    assert s.transport.disconnecting


def test_connection_limits_per_ip_and_total(smtp) -> None:
    """The (n+1)th connection from one IP gets 421 4.7.0 at once."""
    first = smtp(max_connections_per_ip=1)
    second = first.factory.buildProtocol(None)
    from tests.smtp.conftest import TLSStringTransport

    t = TLSStringTransport("127.0.0.1")
    second.makeConnection(t)
    assert t.value() == b"421 4.7.0 mail.example.test Error: too many connections\r\n"
    assert t.disconnecting
    second.connectionLost(None)
    assert first.factory.slots.connections_of("127.0.0.1") == 1
    assert len(first.factory.slots) == 1


def test_closing_connection_gives_its_slot_back_at_once(smtp) -> None:
    """After QUIT's 221 the close is under way but not done (the transport has not said
    lost yet): the same client connecting again meanwhile is served, not given 421, and the
    old session's end still logs its disconnect once."""
    from tests.smtp.conftest import Session

    first = smtp(max_connections_per_ip=1).ready()
    assert first.cmd("QUIT").startswith("221")
    assert first.transport.disconnecting
    again = Session(first.factory, first.clock, "127.0.0.1")
    assert again.read() == ["220 mail.example.test ESMTP mailappliance"]
    first.proto.connectionLost(None)
    assert first.factory.slots.connections_of("127.0.0.1") == 1  # the newcomer's
    assert sum(line.startswith("disconnect from") for line in smtp.logs) == 1


def test_too_many_errors_disconnects(smtp) -> None:
    """After max_errors bad commands: 421 4.7.0 and close."""
    s = smtp(max_errors=3).ready()
    lines = s.send("X\r\nX\r\nX\r\nX\r\nNOOP\r\n")
    assert lines[-1] == "421 4.7.0 mail.example.test Error: too many errors"
    assert s.transport.disconnecting


def test_connect_rejected_by_access_waits_for_quit(smtp) -> None:
    """access REJECT for the client: 554 greeting, 503 to everything but QUIT."""
    smtp.policy.connect = Verdict(554, "5.7.1 Access denied")
    s = smtp()
    assert s.read() == ["554 5.7.1 Access denied"]
    assert s.cmd("EHLO x") == "503 5.5.1 Error: connection rejected, send QUIT"
    assert s.cmd("QUIT") == "221 2.0.0 mail.example.test Bye"


def test_submission_requires_auth_before_mail(smtp) -> None:
    """Port 587: MAIL before AUTH -> 530 5.7.0."""
    s = smtp(mode=SUBMISSION).ready()
    assert s.cmd("MAIL FROM:<a@example.org>") == "530 5.7.0 Authentication required"


def test_auth_plain_success_then_sender_checked(smtp) -> None:
    """AUTH PLAIN with an initial response: 235; then only owned sender addresses."""
    s = plaintext_ok(smtp).ready()
    assert (
        s.cmd("AUTH PLAIN " + b64("\0user1@example.test\0secret"))
        == "235 2.7.0 Authentication successful"
    )
    assert (
        s.cmd("AUTH PLAIN " + b64("\0user1@example.test\0secret"))
        == "503 5.5.1 Error: already authenticated"
    )
    assert s.cmd("MAIL FROM:<user2@example.test>") == (
        "553 5.7.1 Sender address rejected: not owned by user user1@example.test"
    )
    assert s.cmd("MAIL FROM:<user1@example.test>") == "250 2.1.0 Ok"
    assert s.cmd("RCPT TO:<x@elsewhere.org>") == "250 2.1.5 Ok"  # authenticated: may relay
    assert "250-AUTH" not in "".join(s.send("RSET\r\nEHLO c\r\n"))


def test_auth_login_challenges(smtp) -> None:
    """AUTH LOGIN: 334 Username:, 334 Password:, 235 (the tutorial's telnet session)."""
    s = plaintext_ok(smtp).ready()
    assert s.cmd("AUTH LOGIN") == "334 " + b64("Username:")
    assert s.cmd(b64("user1@example.test")) == "334 " + b64("Password:")
    assert s.cmd(b64("secret")) == "235 2.7.0 Authentication successful"
    assert s.factory.events is not None
    assert any("sasl_method=LOGIN, sasl_username=user1@example.test" in line for line in smtp.logs)


def test_auth_wrong_password_535_and_logged(smtp) -> None:
    """Bad password: 535 5.7.8, logged with IP and user for fail2ban, password never logged."""
    s = plaintext_ok(smtp).ready()
    assert (
        s.cmd("AUTH PLAIN " + b64("\0user1@example.test\0wrong"))
        == "535 5.7.8 Error: authentication failed"
    )
    (line,) = [line for line in smtp.logs if "authentication failed" in line]
    assert "[127.0.0.1]" in line and "user=user1@example.test" in line and "wrong" not in line


def test_auth_plaintext_refused_without_tls_538(smtp) -> None:
    """PLAIN/LOGIN before TLS from an unlisted network: 538 5.7.11."""
    s = smtp().ready()
    assert s.cmd("AUTH PLAIN " + b64("\0user1@example.test\0secret")) == (
        "538 5.7.11 Encryption required for requested authentication mechanism"
    )


def test_auth_malformed_and_cancelled_501(smtp) -> None:
    """AUTH without mechanism 501; bad base64 and '*' cancel 501 5.5.2; unknown mech 504."""
    s = plaintext_ok(smtp).ready()
    assert s.cmd("AUTH") == "501 5.5.4 Syntax: AUTH mechanism"
    assert s.cmd("AUTH PLAIN !!!notbase64") == "501 5.5.2 Cannot decode base64 response"
    assert s.cmd("AUTH LOGIN") == "334 " + b64("Username:")
    assert s.cmd("*") == "501 5.5.2 Authentication cancelled"
    assert s.cmd("AUTH GSSAPI") == "504 5.5.4 Unrecognized authentication type"
    assert s.cmd("NOOP") == "250 2.0.0 Ok"


def test_auth_failures_delayed_per_ip_then_blocked(smtp) -> None:
    """Each failed login from one IP waits longer before its 535; past max_failures: 421."""
    from appliance.auth.throttle import FailureThrottle

    s = plaintext_ok(smtp).ready()
    s.factory.throttle = FailureThrottle(smtp.clock, base_delay=1.0, max_delay=16.0, max_failures=3)
    bad = "AUTH PLAIN " + b64("\0user1@example.test\0wrong") + "\r\n"
    assert s.send(bad) == []  # held back: 1 s for the first failure
    smtp.clock.advance(1)
    assert s.read() == ["535 5.7.8 Error: authentication failed"]
    assert s.send(bad) == []
    smtp.clock.advance(1)
    assert s.read() == []  # the second waits 2 s
    smtp.clock.advance(1)
    assert s.read() == ["535 5.7.8 Error: authentication failed"]
    assert s.send("NOOP\r\n") == ["250 2.0.0 Ok"]
    s.send(bad)
    smtp.clock.advance(10)
    assert s.read() == ["535 5.7.8 Error: authentication failed"]
    assert s.cmd("AUTH PLAIN " + b64("\0user1@example.test\0secret")) == (
        "421 4.7.0 mail.example.test Error: too many failed logins"
    )
    assert s.transport.disconnecting


def test_commands_wait_while_delayed_reply_pending(smtp) -> None:
    """Pipelined input after a delayed AUTH failure is answered only after that 535."""
    from appliance.auth.throttle import FailureThrottle

    s = plaintext_ok(smtp).ready()
    s.factory.throttle = FailureThrottle(smtp.clock, base_delay=1.0)
    assert s.send("AUTH PLAIN " + b64("\0user1@example.test\0wrong") + "\r\nNOOP\r\n") == []
    smtp.clock.advance(1)
    assert s.read() == ["535 5.7.8 Error: authentication failed", "250 2.0.0 Ok"]


def test_random_input_never_raises_or_logs_failure(smtp) -> None:
    """Thousands of random and half-valid lines: only SMTP replies, never a traceback."""
    import random

    rng = random.Random(20261129)
    words = [
        "EHLO x", "HELO", "MAIL FROM:<a@example.org>", "MAIL FROM:<>", "RCPT TO:<user1@example.test>",
        "RCPT TO:<x@elsewhere.org> NOTIFY=SUCCESS", "DATA", ".", "RSET", "NOOP", "AUTH PLAIN",
        "AUTH LOGIN", "*", "STARTTLS", "VRFY x", "MAIL FROM:<a@b> SIZE=99999999999", "RCPT TO:",
        "AUTH CRAM-MD5", "BDAT 10", "MAIL FROM:<\x00@x>", "AUTH PLAIN AGZvbwBiYXI=",
    ]  # fmt: skip
    for _session in range(20):
        s = plaintext_ok(smtp, max_errors=1000)
        s.read()
        for _ in range(150):
            r = rng.random()
            if r < 0.5:
                data = rng.choice(words).encode() + rng.choice([b"\r\n", b"\n", b"\r", b""])
            elif r < 0.8:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
            else:
                data = b"." * rng.randrange(3) + b"\r\n" * rng.randrange(3)
            s.proto.dataReceived(data)
            if s.transport.disconnecting:
                break
        lines = s.read()
        assert len(lines) > 20, lines  # the session went on through the garbage
        bad = [line for line in lines if not re.match(r"^[2-5]\d\d[ -]", line)]
        assert bad == []
        s.proto.connectionLost(None)
    # and the autouse logged_errors fixture fails the test on any logged traceback


def test_mail_without_room_in_queue_452(smtp) -> None:
    """MAIL asks the sink for room for SIZE= (0 without it); no room: 452 4.3.1."""
    s = smtp().ready()
    assert s.cmd("MAIL FROM:<a@example.org> SIZE=1234") == "250 2.1.0 Ok"
    s.cmd("RSET")
    smtp.sink.room = False
    assert s.cmd("MAIL FROM:<a@example.org>") == "452 4.3.1 Insufficient system storage"
    assert smtp.sink.room_asked == [1234, 0]


def test_maillog_events_have_named_fields(smtp) -> None:
    """Each maillog line is a mail event with its name and fields, not just text."""
    s = plaintext_ok(smtp).ready()
    s.cmd("AUTH PLAIN " + b64("\0user1@example.test\0secret"))
    s.send("MAIL FROM:<user1@example.test>\r\nRCPT TO:<nobody@example.test>\r\n")
    s.send("RCPT TO:<user2@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    s.proto.connectionLost(None)
    names = [e["event"] for e in smtp.events]
    assert names == ["connect", "auth", "reject", "client", "disconnect"]
    auth, reject, client = smtp.events[1:4]
    assert auth["sasl_method"] == "PLAIN" and auth["sasl_username"] == "user1@example.test"
    assert reject["stage"] == "RCPT" and reject["code"] == 550
    assert reject["rcpt"] == "nobody@example.test" and reject["mail_from"] == "user1@example.test"
    assert client["queue_id"] == "0000000001" and client["client"] == "unknown[127.0.0.1]"
    assert all(e["session_id"] == s.proto.session_id for e in smtp.events)
    assert smtp.logs[-1] == "disconnect from unknown[127.0.0.1] ehlo=1 auth=1 mail=1 rcpt=2 data=1"
