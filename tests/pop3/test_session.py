"""POP3 sessions over StringTransport: every command and error path, on a real Maildir."""

from __future__ import annotations

import base64
import dataclasses
import os

from appliance.pop3.session import POP3Session
from tests.pop3.conftest import TLS_CONTEXT, USER1, USER2, Harness

M1 = b"From: a@example.test\r\nSubject: one\r\n\r\nbody line 1\r\n.dot line\r\nline 3\r\n"
M2 = b"Subject: two\r\n\r\n..two dots\r\n.\r\nend\r\n"
M3 = b"Subject: three\r\n\r\nx\r\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def logged_in(pop: Harness, *messages: bytes):
    for m in messages:
        pop.deliver(m)
    c = pop.local()
    assert c.login().startswith("+OK Logged in")
    return c


# ---------------------------------------------------------------------------- greeting, CAPA


def test_greeting_default_banner_ok(pop: Harness) -> None:
    """A client is greeted +OK with the hostname."""
    c = pop.connect()
    assert c.greeting == b"+OK mail.example.test mailappliance ready\r\n"


def test_capa_plaintext_before_stls_offers_no_user_or_plain(pop: Harness) -> None:
    """Before STLS from a remote network CAPA lists STLS but neither USER nor SASL PLAIN."""
    c = pop.connect()
    assert c.cmd("CAPA") == (
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        "PIPELINING\r\nSTLS\r\nIMPLEMENTATION mailappliance\r\n.\r\n"
    )


def test_capa_after_stls_offers_user_and_sasl_not_stls(pop: Harness) -> None:
    """After STLS CAPA lists USER and SASL PLAIN LOGIN, and STLS no more."""
    c = pop.connect()
    assert c.cmd("STLS") == "+OK Begin TLS negotiation now\r\n"
    assert c.transport.tls_started_with is TLS_CONTEXT
    capa = c.cmd("CAPA").split("\r\n")
    assert "USER" in capa and "SASL PLAIN LOGIN" in capa and "STLS" not in capa


def test_capa_cram_md5_offered_when_backend_can(pop: Harness) -> None:
    """CRAM-MD5 is listed (even without TLS) when the authenticator can check it."""
    pop.settings = type(pop.settings)(
        "mail.example.test", mechanisms=("PLAIN", "LOGIN", "CRAM-MD5")
    )
    pop.authenticator.cram = True
    c = pop.connect()
    assert "SASL CRAM-MD5" in c.cmd("CAPA").split("\r\n")


def test_capa_implicit_tls_offers_user_not_stls(pop: Harness) -> None:
    """On the implicit-TLS port CAPA lists USER and SASL but never STLS, and STLS fails."""
    c = pop.connect(implicit_tls=True)
    capa = c.cmd("CAPA").split("\r\n")
    assert "USER" in capa and "SASL PLAIN LOGIN" in capa and "STLS" not in capa
    assert c.cmd("STLS") == "-ERR STLS not available\r\n"
    assert c.transport.tls_started_with is None


def test_capa_after_login_lists_no_login_capabilities(pop: Harness) -> None:
    """In TRANSACTION CAPA lists the mail capabilities only."""
    c = logged_in(pop)
    assert c.cmd("CAPA") == (
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        "PIPELINING\r\nIMPLEMENTATION mailappliance\r\n.\r\n"
    )


def test_capa_without_tls_context_offers_no_stls(pop: Harness) -> None:
    """A listener without a TLS context neither offers nor accepts STLS."""
    pop.tls = None
    c = pop.connect()
    assert "STLS" not in c.cmd("CAPA")
    assert c.cmd("STLS") == "-ERR STLS not available\r\n"


# ---------------------------------------------------------------------------- STLS


def test_stls_pipelined_commands_dropped(pop: Harness) -> None:
    """Commands pipelined behind STLS before the handshake are discarded, not executed."""
    c = pop.connect()
    out = c.send(b"STLS\r\nUSER user1@example.test\r\nPASS secret\r\n")
    assert out == b"+OK Begin TLS negotiation now\r\n"
    assert c.transport.written_before_tls == b"+OK Begin TLS negotiation now\r\n"
    assert pop.authenticator.checked == []
    assert c.cmd("PASS secret") == "-ERR no USER given\r\n"


def test_stls_twice_refused(pop: Harness) -> None:
    """A second STLS is refused."""
    c = pop.connect()
    c.cmd("STLS")
    assert c.cmd("STLS") == "-ERR TLS already active\r\n"


def test_stls_then_login_logs_tls(pop: Harness) -> None:
    """A login after STLS is logged with TLS, in Dovecot's words."""
    c = pop.connect()
    c.cmd("STLS")
    assert c.login() == "+OK Logged in, 0 messages\r\n"
    assert pop.lines("login") == [
        "pop3-login: Login: user=<user1@example.test>, method=USER, rip=192.0.2.7,"
        " lip=192.0.2.1, TLS"
    ]


def test_stls_in_transaction_refused(pop: Harness) -> None:
    """STLS after login is out of state."""
    c = logged_in(pop)
    assert c.cmd("STLS") == "-ERR STLS not allowed in the TRANSACTION state\r\n"


# ---------------------------------------------------------------------------- USER / PASS


def test_user_pass_good_logs_in(pop: Harness) -> None:
    """USER/PASS with a good password enters TRANSACTION; the login event has the fields."""
    pop.deliver(M1)
    c = pop.local()
    assert c.cmd(f"USER {USER1}") == "+OK\r\n"
    assert c.cmd("PASS secret") == "+OK Logged in, 1 messages\r\n"
    event = [e for e in pop.events if e["event"] == "login"][0]
    assert event["user"] == USER1 and event["client"] == "127.0.0.1"
    assert event["sasl_method"] == "USER" and event["tls"] is False


def test_pass_with_spaces_kept(pop: Harness) -> None:
    """PASS takes the rest of the line, spaces included."""
    c = pop.local()
    c.cmd(f"USER {USER2}")
    assert c.cmd("PASS pass word").startswith("+OK Logged in")


def test_user_pass_bad_answered_after_delay(pop: Harness) -> None:
    """A wrong password is answered -ERR [AUTH] only after the throttle's delay, and logged."""
    c = pop.local()
    c.cmd(f"USER {USER1}")
    assert c.cmd("PASS wrong") == ""
    pop.clock.advance(1.0)
    assert c.read() == b"-ERR [AUTH] Authentication failed\r\n"
    assert pop.lines("auth_failed") == [
        "pop3-login: Disconnected (auth failed, 1 attempts): user=<user1@example.test>,"
        " method=USER, rip=127.0.0.1, lip=192.0.2.1"
    ]
    assert c.cmd("STAT") == "-ERR STAT not allowed in the AUTHORIZATION state\r\n"


def test_user_plaintext_refused_without_tls(pop: Harness) -> None:
    """USER from a remote network without TLS is refused in Dovecot's words."""
    c = pop.connect()
    assert c.cmd(f"USER {USER1}") == (
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
    )
    assert c.cmd("PASS secret") == "-ERR no USER given\r\n"
    assert pop.authenticator.checked == []


def test_pass_without_user_refused(pop: Harness) -> None:
    """PASS needs a USER first."""
    c = pop.local()
    assert c.cmd("PASS secret") == "-ERR no USER given\r\n"


def test_user_without_name_refused(pop: Harness) -> None:
    """USER needs an argument."""
    c = pop.local()
    assert c.cmd("USER") == "-ERR USER needs a user name\r\n"


def test_login_backend_down_temporary_failure(pop: Harness) -> None:
    """A backend that cannot answer gives -ERR [SYS/TEMP] and the attempt does not count."""
    pop.authenticator.unavailable = True
    c = pop.local()
    c.cmd(f"USER {USER1}")
    assert c.cmd("PASS secret") == "-ERR [SYS/TEMP] Temporary authentication failure\r\n"
    assert pop.throttle.recent_failures("127.0.0.1") == 0


def test_throttle_block_answered_without_checking(pop: Harness) -> None:
    """A client past its failures is refused -ERR [SYS/TEMP] and the password not checked."""
    c = pop.local()
    out = ""
    for _ in range(3):
        out += c.cmd(f"USER {USER1}")
        out += c.cmd("PASS wrong")
        pop.clock.advance(20)
    out += c.read().decode()
    assert out.count("-ERR [AUTH] Authentication failed") == 3
    checked = list(pop.authenticator.checked)
    c2 = pop.local()
    c2.cmd(f"USER {USER1}")
    assert c2.cmd("PASS secret") == "-ERR [SYS/TEMP] Too many failed logins\r\n"
    assert c2.closed
    assert pop.authenticator.checked == checked
    assert pop.lines("auth_refused")
    c3 = pop.local()
    assert c3.cmd("AUTH PLAIN " + b64(b"\0user1@example.test\0secret")) == (
        "-ERR [SYS/TEMP] Too many failed logins\r\n"
    )
    assert pop.authenticator.checked == checked


def test_login_without_throttle_works(pop: Harness) -> None:
    """A listener without a throttle checks logins directly."""
    pop.use_throttle = False
    c = pop.local()
    c.cmd(f"USER {USER1}")
    assert c.cmd("PASS wrong") == "-ERR [AUTH] Authentication failed\r\n"
    assert c.login().startswith("+OK Logged in")


# ---------------------------------------------------------------------------- AUTH


def test_auth_plain_initial_response(pop: Harness) -> None:
    """AUTH PLAIN with an initial response logs in."""
    c = pop.local()
    assert c.cmd("AUTH PLAIN " + b64(b"\0user1@example.test\0secret")).startswith("+OK Logged in")
    assert pop.events[-1]["sasl_method"] == "PLAIN"


def test_auth_plain_challenge(pop: Harness) -> None:
    """AUTH PLAIN without one gets an empty '+ ' challenge."""
    c = pop.local()
    assert c.cmd("AUTH PLAIN") == "+ \r\n"
    assert c.cmd(b64(b"\0user1@example.test\0secret")).startswith("+OK Logged in")


def test_auth_login_challenges(pop: Harness) -> None:
    """AUTH LOGIN asks for the user name and the password with '+ ' challenges."""
    c = pop.local()
    assert c.cmd("AUTH LOGIN") == "+ VXNlcm5hbWU6\r\n"
    assert c.cmd(b64(USER1.encode())) == "+ UGFzc3dvcmQ6\r\n"
    assert c.cmd(b64(b"secret")).startswith("+OK Logged in")


def test_auth_login_initial_response(pop: Harness) -> None:
    """AUTH LOGIN with the user name as initial response asks for the password only."""
    c = pop.local()
    assert c.cmd("AUTH LOGIN " + b64(USER1.encode())) == "+ UGFzc3dvcmQ6\r\n"
    assert c.cmd(b64(b"secret")).startswith("+OK Logged in")


def test_auth_cancel(pop: Harness) -> None:
    """A '*' cancels the exchange; later lines are commands again."""
    c = pop.local()
    c.cmd("AUTH LOGIN")
    assert c.cmd("*") == "-ERR Authentication cancelled\r\n"
    assert c.cmd("NOOP") == "-ERR NOOP not allowed in the AUTHORIZATION state\r\n"


def test_auth_bad_base64(pop: Harness) -> None:
    """Bad base64 in the exchange ends it with -ERR."""
    c = pop.local()
    c.cmd("AUTH PLAIN")
    assert c.cmd("!!!") == "-ERR Cannot decode base64 response\r\n"


def test_auth_plain_wrong_password_failed(pop: Harness) -> None:
    """A wrong password over AUTH PLAIN is a failed login, after the delay."""
    c = pop.local()
    assert c.cmd("AUTH PLAIN " + b64(b"\0user1@example.test\0nope")) == ""
    pop.clock.advance(1)
    assert c.read() == b"-ERR [AUTH] Authentication failed\r\n"
    assert "method=PLAIN" in pop.lines("auth_failed")[0]


def test_auth_plain_other_authzid_failed(pop: Harness) -> None:
    """A PLAIN authzid other than the user counts as a failed login."""
    c = pop.local()
    c.cmd("AUTH PLAIN " + b64(b"user2@example.test\0user1@example.test\0secret"))
    pop.clock.advance(1)
    assert c.read() == b"-ERR [AUTH] Authentication failed\r\n"
    assert pop.throttle.recent_failures("127.0.0.1") == 1


def test_auth_plain_refused_without_tls(pop: Harness) -> None:
    """AUTH PLAIN from a remote network without TLS is refused."""
    c = pop.connect()
    assert c.cmd("AUTH PLAIN " + b64(b"\0user1@example.test\0secret")) == (
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n"
    )
    assert pop.authenticator.checked == []


def test_auth_unknown_mechanism(pop: Harness) -> None:
    """An unknown mechanism is refused."""
    c = pop.local()
    assert c.cmd("AUTH GSSAPI") == "-ERR Unsupported authentication mechanism\r\n"


def test_auth_bare_lists_mechanisms(pop: Harness) -> None:
    """A bare AUTH lists the offered mechanisms."""
    c = pop.local()
    assert c.cmd("AUTH") == "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"


def test_auth_response_line_too_long(pop: Harness) -> None:
    """An over-long SASL response ends the exchange with -ERR."""
    c = pop.local()
    c.cmd("AUTH PLAIN")
    assert c.send(b"A" * 20000 + b"\r\n") == b"-ERR line too long\r\n"
    assert c.cmd("NOOP").startswith("-ERR NOOP not allowed")


# ---------------------------------------------------------------------------- mailbox lock


def test_second_session_in_use(pop: Harness) -> None:
    """A second session on a locked mailbox gets [IN-USE]; the login counts as success."""
    c1 = logged_in(pop, M1)
    c2 = pop.local()
    c2.cmd(f"USER {USER1}")
    assert c2.cmd("PASS secret") == "-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n"
    assert pop.throttle.recent_failures("127.0.0.1") == 0
    assert c1.cmd("STAT") == f"+OK 1 {len(M1)}\r\n"


def test_quit_releases_lock(pop: Harness) -> None:
    """After QUIT the next session gets the mailbox."""
    c1 = logged_in(pop)
    c1.cmd("QUIT")
    c1.drop()
    c2 = pop.local()
    assert c2.login().startswith("+OK Logged in")


def test_dropped_connection_deletes_nothing_releases_lock(pop: Harness) -> None:
    """A connection lost in TRANSACTION applies no deletion and frees the mailbox."""
    c1 = logged_in(pop, M1, M2)
    assert c1.cmd("DELE 1") == "+OK message 1 deleted\r\n"
    c1.drop()
    assert len(pop.files()) == 2
    c2 = pop.local()
    assert c2.login() == "+OK Logged in, 2 messages\r\n"
    assert "Connection closed" in pop.lines("logout")[0]


def test_lock_refreshed_while_session_lasts(pop: Harness) -> None:
    """The lock is refreshed every refresh_interval through the pool."""
    c = logged_in(pop)
    interval = c.session.lock.refresh_interval
    pop.pool.calls.clear()
    pop.clock.advance(interval)
    pop.clock.advance(interval)
    assert pop.pool.calls == ["refresh", "refresh"]
    assert c.cmd("NOOP") == "+OK\r\n"


def test_lock_taken_over_session_closes(pop: Harness) -> None:
    """A lock lost to a stale takeover ends the session without UPDATE."""
    c = logged_in(pop, M1)
    c.cmd("DELE 1")
    lock = c.session.lock
    os.unlink(lock.path)
    pop.clock.advance(lock.refresh_interval)
    assert c.read() == b"-ERR [SYS/TEMP] Mailbox lock lost, closing\r\n"
    assert c.closed
    c.drop()
    assert len(pop.files()) == 1


# ---------------------------------------------------------------------------- TRANSACTION


def test_stat_list_uidl(pop: Harness) -> None:
    """STAT, LIST and UIDL give the counts, the sizes and Dovecot-style UIDLs."""
    c = logged_in(pop, M1, M2)
    total = len(M1) + len(M2)
    assert c.cmd("STAT") == f"+OK 2 {total}\r\n"
    assert (
        c.cmd("LIST") == f"+OK 2 messages ({total} octets)\r\n1 {len(M1)}\r\n2 {len(M2)}\r\n.\r\n"
    )
    assert c.cmd("LIST 2") == f"+OK 2 {len(M2)}\r\n"
    drop = c.session.maildrop
    v = drop.uidvalidity
    u1, u2 = (m.uidl for m in drop.messages)
    assert u1 == f"{1:08X}{v:08X}"
    assert c.cmd("UIDL") == f"+OK\r\n1 {u1}\r\n2 {u2}\r\n.\r\n"
    assert c.cmd("UIDL 1") == f"+OK 1 {u1}\r\n"


def test_uidl_stable_across_sessions(pop: Harness) -> None:
    """A message keeps its UIDL in the next session."""
    c = logged_in(pop, M1)
    first = c.cmd("UIDL 1")
    c.cmd("QUIT")
    c.drop()
    pop.deliver(M2)
    c2 = pop.local()
    c2.login()
    assert c2.cmd("UIDL 1") == first


def test_retr_dot_stuffed_exact_bytes(pop: Harness) -> None:
    """RETR sends the size LIST says, dot-stuffed, ended by '.'."""
    c = logged_in(pop, M1, M2)
    assert (
        c.cmd("RETR 1")
        == (
            f"+OK {len(M1)} octets\r\n".encode()
            + b"From: a@example.test\r\nSubject: one\r\n\r\nbody line 1\r\n..dot line\r\nline 3\r\n"
            + b".\r\n"
        ).decode()
    )
    out = c.cmd("RETR 2")
    assert out == (f"+OK {len(M2)} octets\r\nSubject: two\r\n\r\n...two dots\r\n..\r\nend\r\n.\r\n")
    body = out.split("\r\n", 1)[1][: -len(".\r\n")]
    unstuffed = "\r\n".join(
        line[1:] if line.startswith(".") else line for line in body.split("\r\n")
    )
    assert len(unstuffed.encode()) == len(M2)


def test_retr_binary_and_missing_final_crlf(pop: Harness) -> None:
    """8-bit bytes pass unchanged; a last line without CRLF is ended before the '.'."""
    msg = b"Subject: bin\r\n\r\n\xff\xfe\x00\x01\r\n.last"
    c = logged_in(pop, msg)
    assert c.send(b"RETR 1\r\n") == (
        f"+OK {len(msg)} octets\r\n".encode() + b"Subject: bin\r\n\r\n\xff\xfe\x00\x01\r\n..last"
        b"\r\n.\r\n"
    )


def test_retr_bare_lf_converted(pop: Harness) -> None:
    """A message stored with bare LF goes out with CRLF."""
    msg = b"Subject: lf\n\n.a\nb\n"
    c = logged_in(pop, msg)
    assert c.send(b"RETR 1\r\n").split(b"\r\n", 1)[1] == b"Subject: lf\r\n\r\n..a\r\nb\r\n.\r\n"


def test_retr_large_message_streamed_in_chunks(pop: Harness) -> None:
    """A large message is read in 64 KiB chunks and arrives whole and stuffed."""
    lines = [b".line %06d" % i for i in range(20000)]
    msg = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    c = logged_in(pop, msg)
    pop.pool.calls.clear()
    out = c.send(b"RETR 1\r\n")
    assert pop.pool.calls.count("read") >= len(msg) // (64 * 1024)
    expected = b"Subject: big\r\n\r\n" + b"\r\n".join(b"." + x for x in lines) + b"\r\n.\r\n"
    assert out == f"+OK {len(msg)} octets\r\n".encode() + expected


def pause_on_big_writes(c) -> list[bytes]:
    """Make the transport say its buffer is full after every write of message bytes."""
    writes: list[bytes] = []
    write = c.transport.write

    def full_after(data: bytes) -> None:
        write(data)
        writes.append(data)
        if len(data) > 1000:
            c.session.pauseProducing()

    c.transport.write = full_after
    return writes


def test_retr_small_messages_one_worker_job_for_many(pop: Harness) -> None:
    """The first RETR of small messages reads them ahead in one worker job (with the reads
    in the pool: quick_store_calls off); the RETRs after it are answered without one (a
    thread hand-off per message cost most of a RETR)."""
    pop.settings = dataclasses.replace(pop.settings, quick_store_calls=False)
    c = logged_in(pop, b"Subject: small\r\n\r\nhi\r\n", b"Subject: two\r\n\r\n.x\r\n")
    pop.pool.calls.clear()
    out = c.send(b"RETR 1\r\n")
    assert out == b"+OK 22 octets\r\nSubject: small\r\n\r\nhi\r\n.\r\n"
    assert pop.pool.calls == ["read"]
    assert c.send(b"RETR 2\r\n") == b"+OK 20 octets\r\nSubject: two\r\n\r\n..x\r\n.\r\n"
    assert pop.pool.calls == ["read"]


def test_retr_waits_for_client_to_read(pop: Harness) -> None:
    """While the transport's buffer is full no further chunk is read or sent."""
    msg = b"Subject: big\r\n\r\n" + b"y" * (300 * 1024) + b"\r\n"
    c = logged_in(pop, msg)
    writes = pause_on_big_writes(c)
    pop.pool.calls.clear()
    out = c.send(b"RETR 1\r\nNOOP\r\n")
    assert out.startswith(b"+OK 307218 octets\r\nSubject: big")
    assert len(out) < 70 * 1024 and pop.pool.calls == ["_open_first"]  # open + first read
    rounds = 0
    while c.session.write_blocked:
        rounds += 1
        assert pop.pool.calls.count("read") == rounds - 1
        c.session.resumeProducing()
        out += c.read()
    assert rounds == 5  # five 64 KiB chunks, each sent once the previous one was read
    assert out.endswith(b"y\r\n.\r\n+OK\r\n")  # NOOP answered only after the message
    assert len(writes) >= 5


def test_retr_client_never_reads_cut_off(pop: Harness) -> None:
    """A client that reads nothing for command_timeout during RETR is cut off."""
    c = logged_in(pop, b"Subject: x\r\n\r\n" + b"y" * 200000 + b"\r\n")
    pause_on_big_writes(c)
    c.cmd("RETR 1")
    pop.clock.advance(pop.settings.limits.command_timeout - 1)
    assert not c.transport.aborted
    pop.clock.advance(1)
    assert c.transport.aborted
    c.drop()
    assert "client not reading" in pop.lines("logout")[0]
    assert pop.pool.calls[-1] == "release"


def test_top_headers_blank_line_and_k_lines(pop: Harness) -> None:
    """TOP n k sends the headers, the blank line and k body lines, dot-stuffed."""
    c = logged_in(pop, M1)
    assert c.cmd("TOP 1 0") == ("+OK\r\nFrom: a@example.test\r\nSubject: one\r\n\r\n.\r\n")
    assert c.cmd("TOP 1 2") == (
        "+OK\r\nFrom: a@example.test\r\nSubject: one\r\n\r\nbody line 1\r\n..dot line\r\n.\r\n"
    )
    assert c.cmd("TOP 1 99").endswith("line 3\r\n.\r\n")


def test_top_bad_arguments(pop: Harness) -> None:
    """TOP needs a valid number and line count."""
    c = logged_in(pop, M1)
    assert c.cmd("TOP 1") == "-ERR TOP needs a message number and a line count\r\n"
    assert c.cmd("TOP 1 x") == "-ERR invalid line count\r\n"
    assert c.cmd("TOP 5 1") == "-ERR no such message\r\n"


def test_bad_message_numbers(pop: Harness) -> None:
    """Numbers outside the maildrop, zero, or not numbers at all: no such message."""
    c = logged_in(pop, M1)
    for arg in ("0", "2", "-1", "x", "99999999999999"):
        assert c.cmd(f"RETR {arg}") == "-ERR no such message\r\n"
    assert c.cmd("LIST 3") == "-ERR no such message\r\n"
    assert c.cmd("DELE") == "-ERR message number required\r\n"


def test_dele_twice(pop: Harness) -> None:
    """A second DELE of a message is refused."""
    c = logged_in(pop, M1, M2)
    assert c.cmd("DELE 1") == "+OK message 1 deleted\r\n"
    assert c.cmd("DELE 1") == "-ERR message 1 already deleted\r\n"


def test_dele_then_retr_list_uidl(pop: Harness) -> None:
    """A deleted message cannot be read or listed; STAT and LIST leave it out."""
    c = logged_in(pop, M1, M2)
    c.cmd("DELE 1")
    assert c.cmd("RETR 1") == "-ERR message 1 already deleted\r\n"
    assert c.cmd("TOP 1 0") == "-ERR message 1 already deleted\r\n"
    assert c.cmd("LIST 1") == "-ERR message 1 already deleted\r\n"
    assert c.cmd("UIDL 1") == "-ERR message 1 already deleted\r\n"
    assert c.cmd("STAT") == f"+OK 1 {len(M2)}\r\n"
    assert c.cmd("LIST") == f"+OK 1 messages ({len(M2)} octets)\r\n2 {len(M2)}\r\n.\r\n"


def test_rset_undeletes(pop: Harness) -> None:
    """RSET unmarks the deletions; QUIT then deletes nothing."""
    c = logged_in(pop, M1, M2)
    c.cmd("DELE 1")
    assert c.cmd("RSET") == f"+OK maildrop has 2 messages ({len(M1) + len(M2)} octets)\r\n"
    assert c.cmd("RETR 1").startswith("+OK")
    c.cmd("QUIT")
    assert len(pop.files()) == 2


def test_noop(pop: Harness) -> None:
    """NOOP in TRANSACTION answers +OK."""
    c = logged_in(pop)
    assert c.cmd("NOOP") == "+OK\r\n"


# ---------------------------------------------------------------------------- QUIT and UPDATE


def test_quit_in_authorization_closes_without_update(pop: Harness) -> None:
    """QUIT before login signs off and deletes nothing."""
    pop.deliver(M1)
    c = pop.local()
    assert c.cmd("QUIT") == "+OK mail.example.test signing off\r\n"
    assert c.closed
    assert len(pop.files()) == 1
    assert "apply_deletions" not in pop.pool.calls


def test_quit_in_transaction_applies_deletions(pop: Harness) -> None:
    """QUIT deletes the messages marked, durably; the logout line has the counts."""
    c = logged_in(pop, M1, M2, M3)
    before = pop.files()
    c.cmd("RETR 2")
    c.cmd("DELE 1")
    c.cmd("DELE 3")
    assert c.cmd("QUIT") == "+OK mail.example.test signing off (1 messages left)\r\n"
    assert c.closed
    after = pop.files()
    assert len(after) == 1 and after[0] not in before[:1]
    assert after[0].endswith(",S")  # retrieved: Seen, moved to cur/
    c.drop()
    retr = len(M2) + 2  # two dot-stuffed lines
    assert pop.lines("logout") == [
        f"pop3({USER1}): Disconnected: Logged out top=0/0, retr=1/{retr}, del=2/3,"
        f" size={len(M1) + len(M2) + len(M3)}"
    ]
    assert c.session.lock is None


def test_quit_update_failure_reported(pop: Harness, monkeypatch) -> None:
    """A deletion that fails is answered -ERR [SYS/TEMP] and the lock still released."""
    c = logged_in(pop, M1)
    c.cmd("DELE 1")

    def fail(numbers, retrieved=()):
        raise OSError("read-only file system")

    monkeypatch.setattr(c.session.maildrop, "apply_deletions", fail)
    assert c.cmd("QUIT") == "-ERR [SYS/TEMP] some deleted messages not removed\r\n"
    assert c.closed
    c2 = pop.local()
    assert c2.login().startswith("+OK Logged in")


# ---------------------------------------------------------------------------- errors and limits


def test_unknown_command(pop: Harness) -> None:
    """An unknown command is -ERR and the session goes on."""
    c = pop.local()
    assert c.cmd("XYZZY") == "-ERR unknown command\r\n"
    assert c.cmd("APOP user digest") == "-ERR unknown command\r\n"
    assert c.cmd("") == "-ERR unknown command\r\n"
    assert c.cmd("QUIT").startswith("+OK")


def test_out_of_state_commands(pop: Harness) -> None:
    """Transaction commands before login and login commands after it are refused."""
    c = pop.local()
    for verb in ("STAT", "LIST", "RETR 1", "TOP 1 1", "UIDL", "DELE 1", "RSET", "NOOP"):
        assert c.cmd(verb) == (f"-ERR {verb.split()[0]} not allowed in the AUTHORIZATION state\r\n")
    c.login()
    for verb in ("USER x", "PASS y", "AUTH PLAIN"):
        assert c.cmd(verb) == f"-ERR {verb.split()[0]} not allowed in the TRANSACTION state\r\n"


def test_over_long_line(pop: Harness) -> None:
    """A line past max_command_line is -ERR, skipped up to its CRLF, and the session goes on."""
    c = pop.local()
    assert c.send(b"USER " + b"a" * 600 + b"\r\nCAPA\r\n").startswith(
        b"-ERR line too long\r\n+OK Capability list follows"
    )
    assert c.send(b"X" * 1000) == b"-ERR line too long\r\n"
    assert c.send(b"yyy\r\nNOOP\r\n") == b"-ERR NOOP not allowed in the AUTHORIZATION state\r\n"


def test_bare_lf_and_non_ascii_commands(pop: Harness) -> None:
    """A bare LF or non-ASCII in a command is refused without a traceback."""
    c = pop.local()
    assert c.send(b"NOOP\nQUIT\r\n") == b"-ERR bare CR or LF in command\r\n"
    assert c.send(b"\xff\xfe\r\n") == b"-ERR unknown command\r\n"
    c.login()
    assert c.send(b"LIST \xff\r\n") == b"-ERR invalid characters in command\r\n"


def test_too_many_errors_closes(pop: Harness) -> None:
    """Past max_errors -ERR replies the connection is closed."""
    c = pop.local()
    out = c.send(b"BAD\r\n" * 25).decode()
    assert out.count("-ERR unknown command") == 21
    assert out.endswith("-ERR Too many errors, closing connection\r\n")
    assert c.closed


def test_idle_timeout(pop: Harness) -> None:
    """A client silent for the idle timeout gets -ERR [SYS/TEMP] ... timeout and is closed."""
    c = logged_in(pop, M1)
    c.cmd("DELE 1")
    pop.clock.advance(599)
    assert not c.closed
    pop.clock.advance(1)
    assert c.read().startswith(b"-ERR [SYS/TEMP] Disconnected for inactivity")
    assert c.closed
    c.drop()
    assert len(pop.files()) == 1
    assert "Disconnected for inactivity" in pop.lines("logout")[0]


def test_login_timeout_before_login(pop: Harness) -> None:
    """A client that never logs in is cut at the greeting deadline."""
    c = pop.connect()
    pop.clock.advance(pop.settings.limits.greeting_timeout)
    assert c.read() == b"-ERR [SYS/TEMP] Disconnected for inactivity, greeting timeout\r\n"
    assert pop.lines("timeout")


def test_connection_slots_per_ip(pop: Harness) -> None:
    """A client past its connection share is turned away."""
    pop.settings = type(pop.settings)("mail.example.test", max_connections_per_ip=1)
    from appliance.limits import ConnectionSlots

    pop.slots = ConnectionSlots(10, 1)
    pop.connect()
    c2 = pop.connect()
    assert c2.greeting == b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
    assert c2.closed


def test_closing_session_gives_its_slot_back_at_once(pop: Harness) -> None:
    """After QUIT's +OK the close is under way, not done: the same client is served again."""
    from appliance.limits import ConnectionSlots

    pop.slots = ConnectionSlots(10, 1)
    c1 = pop.connect()
    c1.cmd("QUIT")
    assert c1.closed
    c2 = pop.connect()
    assert c2.greeting.startswith(b"+OK") and not c2.closed
    c1.drop()
    assert pop.slots.connections_of("192.0.2.7") == 1


def test_slot_eviction_closes_idle_session(pop: Harness) -> None:
    """With every slot taken, the idle unauthenticated session makes room."""
    from appliance.limits import ConnectionSlots

    pop.slots = ConnectionSlots(1, 5)
    c1 = pop.connect("192.0.2.7")
    c2 = pop.connect("192.0.2.8")
    assert c1.read() == b"-ERR [SYS/TEMP] closing idle session\r\n"
    assert c1.closed
    assert c2.greeting.startswith(b"+OK")


def test_logged_in_session_not_evicted(pop: Harness) -> None:
    """A session that has logged in keeps its slot."""
    from appliance.limits import ConnectionSlots

    pop.slots = ConnectionSlots(1, 5)
    c1 = logged_in(pop)
    c2 = pop.connect("192.0.2.8")
    assert c2.closed and not c1.closed
    assert isinstance(c1.session, POP3Session)


def test_auth_cram_md5_challenge_checked(pop: Harness) -> None:
    """AUTH CRAM-MD5 sends a base64 challenge and hands the digest to the authenticator."""
    pop.settings = type(pop.settings)("mail.example.test", mechanisms=("PLAIN", "CRAM-MD5"))
    pop.authenticator.cram = True
    c = pop.connect()
    challenge = c.cmd("AUTH CRAM-MD5")
    assert challenge.startswith("+ ") and base64.b64decode(challenge[2:]).startswith(b"<")
    assert c.cmd(b64(b"user1@example.test " + b"0" * 32)) == ""
    pop.clock.advance(1)
    assert c.read() == b"-ERR [AUTH] Authentication failed\r\n"
    assert "method=CRAM-MD5" in pop.lines("auth_failed")[0]


def test_login_locked_mailbox_after_connection_lost_releases(pop: Harness) -> None:
    """A connection lost while its login is being checked leaves no lock behind."""
    c = pop.local()
    c.cmd(f"USER {USER1}")
    c.cmd("PASS wrong")
    c.drop()
    pop.clock.advance(1)
    c2 = pop.local()
    assert c2.login().startswith("+OK Logged in")
