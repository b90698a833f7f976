"""The IMAP session over StringTransport: each command and its error paths (RFC 3501 and the
extensions advertised), on a real Maildir."""

from __future__ import annotations

import re

from tests.imap.conftest import USER1, USER2, message


def test_greeting_capabilities_and_logindisabled_before_tls(imap) -> None:
    c = imap.connect()  # not a plaintext network
    assert c.greeting.startswith("* OK [CAPABILITY IMAP4rev1 ")
    caps = c.cmd("CAPABILITY")
    assert "STARTTLS" in caps and "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps
    out = c.cmd("LOGIN user1@example.test secret")
    assert out.startswith("T NO [PRIVACYREQUIRED]"), out
    assert imap.authenticator.checked == []
    local = imap.local()
    caps = local.cmd("CAPABILITY")
    assert "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps


def test_starttls_drops_pipelined_commands(imap) -> None:
    c = imap.connect()
    out = c.send(b"a STARTTLS\r\nb LOGIN user1@example.test secret\r\n")
    assert out == "a OK Begin TLS negotiation now.\r\n"
    assert c.transport.tls_started_with is not None
    caps = c.cmd("CAPABILITY")
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
    assert imap.authenticator.checked == []
    assert c.cmd("STARTTLS").startswith("T BAD")


def test_login_good_and_bad_with_events(imap) -> None:
    c = imap.local()
    assert c.cmd("LOGIN user1@example.test wrong") == ""  # answered after the throttle's delay
    imap.clock.advance(60)
    assert c.read().startswith("a1 NO [AUTHENTICATIONFAILED]")
    out = c.cmd('LOGIN "user1@example.test" "secret"')
    assert out.startswith("T OK [CAPABILITY IMAP4rev1"), out
    assert c.cmd("LOGIN x y").startswith("T BAD")  # already authenticated
    assert any("imap-login: Login: user=<user1@example.test>" in line for line in imap.lines())
    assert any("auth failed, 1 attempts" in line for line in imap.lines("auth_failed"))


def test_authenticate_plain_with_and_without_initial_response(imap) -> None:
    import base64

    token = base64.b64encode(b"\0user1@example.test\0secret").decode()
    c = imap.local()
    assert c.cmd(f"AUTHENTICATE PLAIN {token}").startswith("T OK")
    c2 = imap.local()
    out = c2.cmd("AUTHENTICATE PLAIN")
    assert out == "+ \r\n"
    assert c2.raw(token).startswith("a1 OK")
    c3 = imap.local()
    c3.cmd("AUTHENTICATE PLAIN")
    assert c3.raw("*").startswith("a1 BAD")
    assert c3.cmd("NOOP").startswith("T OK")


def test_throttle_blocks_after_failures(imap) -> None:
    c = imap.local()
    for _ in range(3):
        c.cmd("LOGIN user1@example.test wrong")
        imap.clock.advance(60)
    out = c.cmd("LOGIN user1@example.test secret")
    assert "T NO [UNAVAILABLE]" in out and c.closed


def test_bad_commands_never_break_the_session(imap) -> None:
    c = imap.local()
    assert c.raw("").startswith("* BAD")
    assert c.cmd("FOO").startswith("T BAD")
    assert c.cmd('LOGIN "unterminated').startswith("T BAD")
    assert c.cmd("SELECT INBOX").startswith("T BAD")  # not authenticated
    assert c.raw("a1 LOGIN (nested (list)").startswith("a1 BAD")
    c.login()
    assert c.cmd("FETCH 1 FLAGS").startswith("T BAD")  # nothing selected
    assert c.cmd("SELECT").startswith("T BAD")
    assert c.cmd("UID BOGUS 1").startswith("T BAD")
    assert c.cmd("NOOP").startswith("T OK")
    assert not c.closed


def test_too_many_errors_close(imap) -> None:
    c = imap.local()
    for _ in range(imap.settings.max_errors + 1):
        c.cmd("BOGUS")
    assert c.closed


def test_select_examine_status_and_recent(imap) -> None:
    imap.deliver(message("one"))
    imap.deliver(message("two"))
    c = imap.logged_in()
    out = c.ok("EXAMINE INBOX")
    assert "* 2 EXISTS" in out and "* 2 RECENT" in out and "[READ-ONLY]" in out
    assert "* OK [UNSEEN 1]" in out and "[UIDNEXT 3]" in out
    assert "STATUS INBOX (RECENT 2)" in c.ok("STATUS INBOX (RECENT)")
    out = c.ok("SELECT INBOX")
    assert "* 2 RECENT" in out and "[READ-WRITE]" in out and "PERMANENTFLAGS" in out
    c2 = imap.logged_in()
    assert "* 0 RECENT" in c2.ok("SELECT INBOX")  # the first session claimed them
    assert "MESSAGES 2 RECENT 0 UIDNEXT 3" in c2.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT)")
    assert c.cmd("SELECT nonexistent").startswith("T NO [NONEXISTENT]")
    assert c.cmd("FETCH 1 FLAGS").startswith("T BAD")  # the failed SELECT unselected


def test_fetch_items(imap) -> None:
    imap.deliver(message("hello", "line one\r\nline two"))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    out = c.ok("FETCH 1 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert re.search(r'\* 1 FETCH \(UID 1 FLAGS \(\\Recent\) RFC822.SIZE \d+ INTERNALDATE "', out)
    assert 'ENVELOPE ("Mon, 1 Jan 2024 00:00:00 +0000" "hello"' in out
    out = c.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
    assert "BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: hello\r\n\r\n" in out
    assert "\\Seen" not in c.ok("FETCH 1 FLAGS")
    out = c.ok("FETCH 1 BODY[TEXT]<5.3>")
    assert "BODY[TEXT]<5> {3}\r\none" in out and "FLAGS (\\Recent \\Seen)" in out
    out = c.ok("UID FETCH 1 BODYSTRUCTURE")
    assert '* 1 FETCH (UID 1 BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii")' in out
    assert c.cmd("FETCH 1 (BOGUS)").startswith("T BAD")
    assert c.cmd("FETCH 2 FLAGS").startswith("T BAD")  # beyond EXISTS
    assert c.ok("UID FETCH 99 FLAGS") == "T OK Fetch completed.\r\n"


def test_store_flags_keywords_and_silent(imap) -> None:
    imap.deliver(message("a"))
    imap.deliver(message("b"))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    out = c.ok("STORE 1:2 +FLAGS (\\Seen $Work)")
    assert "* FLAGS (" in out and "$Work" in out
    assert "* 1 FETCH (FLAGS ($Work \\Recent \\Seen))" in out
    assert "FETCH" not in c.ok("STORE 1 -FLAGS.SILENT ($Work)")
    assert "* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))" in c.ok("UID STORE 2 FLAGS (\\Flagged)")
    assert c.cmd("STORE 1 +FLAGS (\\Bogus)").startswith("T BAD")
    listing = imap.store.list_messages(
        __import__("appliance.interfaces").interfaces.Mailbox.of(USER1)
    )
    assert [set(m.flags) for m in listing.messages] == [{"\\Seen"}, {"\\Flagged"}]


def test_two_sessions_see_each_others_changes(imap) -> None:
    imap.deliver(message("a"))
    c1, c2 = imap.logged_in(), imap.logged_in()
    c1.ok("SELECT INBOX")
    c2.ok("SELECT INBOX")
    c1.ok("STORE 1 +FLAGS (\\Answered)")
    c2.ok("STORE 1 +FLAGS (\\Flagged)")
    imap.clock.advance(0)
    out = c1.ok("NOOP")
    assert "* 1 FETCH (FLAGS (\\Answered \\Flagged" in out, out
    imap.deliver(message("b"))
    out = c2.ok("NOOP")
    assert "* 2 EXISTS" in out
    c1.ok("STORE 1 +FLAGS (\\Deleted)")
    assert "* 1 EXPUNGE" in c1.ok("EXPUNGE")
    out = c2.ok("FETCH 1:* FLAGS")  # no EXPUNGE during a FETCH
    assert "EXPUNGE" not in out
    assert "* 1 EXPUNGE" in c2.ok("NOOP")


def test_keyword_new_to_a_session_announced_in_flags_before_it_is_used(imap) -> None:
    """Another session's new keyword (STORE, or a message APPENDed with one): this session
    gets FLAGS and PERMANENTFLAGS naming it before the FETCH or EXISTS that carries it, once
    (imaptest's "Keyword used without being in FLAGS"); a read-only session gets FLAGS too."""
    imap.deliver(message("a"))
    c1, c2, c3 = imap.logged_in(), imap.logged_in(), imap.logged_in()
    c1.ok("SELECT INBOX")
    c2.ok("SELECT INBOX")
    c3.ok("EXAMINE INBOX")
    c1.ok("STORE 1 +FLAGS ($Label5)")
    imap.clock.advance(0)
    out = c2.ok("NOOP")
    flags = "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label5)"
    assert flags in out and "Flags permitted." in out, out
    assert out.index(flags) < out.index("* 1 FETCH (FLAGS ($Label5))"), out
    assert "* FLAGS" not in c2.ok("NOOP")
    out = c3.ok("NOOP")
    assert flags in out and "[PERMANENTFLAGS ()] Read-only mailbox." in out, out
    data = message("b")
    c1.send(b"a1 APPEND INBOX ($Junk) {%d}\r\n" % len(data))
    assert "a1 OK [APPENDUID" in c1.send(data + b"\r\n")
    out = c2.ok("NOOP")
    assert out.index("$Label5 $Junk)") < out.index("* 2 EXISTS"), out
    assert "* FLAGS" not in c2.ok("FETCH 1:* FLAGS")


def test_copy_move_uidplus(imap) -> None:
    imap.deliver(message("a"))
    imap.deliver(message("b"))
    c = imap.logged_in()
    c.ok("CREATE Work")
    c.ok("SELECT INBOX")
    out = c.ok("COPY 1:2 Work")
    assert re.search(r"T OK \[COPYUID \d+ 1:2 1,2\] Copy completed", out), out
    out = c.ok("UID MOVE 1 Work")
    assert re.search(r"\* OK \[COPYUID \d+ 1 3\]", out) and "* 1 EXPUNGE" in out
    assert c.cmd("COPY 1 Nowhere").startswith("T NO [TRYCREATE]")
    assert "MESSAGES 3" in c.ok("STATUS Work (MESSAGES)")


def test_append_literals_and_appenduid(imap) -> None:
    c = imap.logged_in()
    data = message("appended")
    out = c.send(b'a1 APPEND INBOX (\\Seen) "17-Jul-1996 02:44:25 -0700" {%d}\r\n' % len(data))
    assert out == "+ OK\r\n"
    out = c.send(data + b"\r\n")
    assert re.match(r"a1 OK \[APPENDUID \d+ 1\] Append completed", out), out
    out = c.send(b"a2 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    assert re.match(r"a2 OK \[APPENDUID \d+ 2\]", out), out
    assert c.cmd("APPEND Nowhere {1+}\r\nx").startswith("T NO [TRYCREATE]")
    c.ok("SELECT INBOX")
    out = c.ok("FETCH 1 (FLAGS INTERNALDATE)")
    assert 'INTERNALDATE "17-Jul-1996 09:44:25 +0000"' in out and "\\Seen" in out


def test_literal_too_large_refused(imap) -> None:
    from dataclasses import replace

    imap.settings = replace(imap.settings, max_literal=1000)
    c = imap.logged_in()
    assert c.send(b"a1 APPEND INBOX {100000}\r\n").startswith("a1 BAD")
    out = c.send(b"a2 APPEND INBOX {100000+}\r\n" + b"x" * 100000 + b"\r\n")
    assert out.startswith("a2 BAD")
    assert c.cmd("NOOP").startswith("T OK")


def test_folders_create_rename_delete_list_subscribe(imap) -> None:
    c = imap.logged_in()
    out = c.ok('LIST "" "*"')
    for name, attr in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                       ("Junk", "\\Junk"), ("Archive", "\\Archive")):  # fmt: skip
        assert re.search(rf'\* LIST \([^)]*\{attr}[^)]*\) "/" {name}\r\n', out), out
    assert '* LIST (\\HasNoChildren) "/" INBOX' in out
    c.ok("CREATE Projects/2026/")
    assert c.cmd("CREATE Projects/2026").startswith("T NO [ALREADYEXISTS]")
    out = c.ok('LIST "" Projects*')
    assert '(\\Noselect \\HasChildren) "/" Projects' in out and '"/" Projects/2026' in out
    c.ok("RENAME Projects/2026 Old/2026")
    assert "Old/2026" in c.ok('LIST "" %/%')
    assert c.cmd("DELETE Nope").startswith("T NO [NONEXISTENT]")
    assert c.cmd("DELETE INBOX").startswith("T NO")
    c.ok("SUBSCRIBE Old/2026")
    assert '* LSUB () "/" Old/2026' in c.ok('LSUB "" Old/*')
    assert '(\\Noselect) "/" Old' in c.ok('LSUB "" %')
    out = c.ok('LIST (SUBSCRIBED) "" "Old*" RETURN (CHILDREN)')
    assert '(\\HasNoChildren \\Subscribed) "/" Old/2026' in out
    out = c.ok('LIST "" Sent RETURN (STATUS (MESSAGES UNSEEN))')
    assert "* STATUS Sent (MESSAGES 0 UNSEEN 0)" in out
    c.ok("DELETE Old/2026")
    assert "Old/2026" not in c.ok('LIST "" *')
    assert '* LIST (\\Noselect) "/" ""' in c.ok('LIST "" ""')
    assert c.cmd('LIST (BOGUS) "" *').startswith("T BAD")


def test_search_sort_thread_esearch(imap) -> None:
    imap.deliver(message("Re: apples", "green apples"))
    imap.deliver(message("bananas", "yellow", sender="z@example.test"))
    imap.deliver(message("apples", "red apples"))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    assert "* SEARCH 1 3\r\n" in c.ok("SEARCH BODY apples")
    assert "* SEARCH 2\r\n" in c.ok("UID SEARCH FROM z@example.test")
    assert "* SEARCH 1 2 3\r\n" in c.ok("SEARCH CHARSET UTF-8 ALL")
    assert c.cmd("SEARCH CHARSET KOI8-R ALL").startswith("T NO [BADCHARSET")
    assert c.cmd("SEARCH BOGUSKEY").startswith("T BAD")
    assert '* ESEARCH (TAG "a8") MIN 1 COUNT 3' in c.ok("SEARCH RETURN (MIN COUNT) ALL")
    assert "* SORT 1 3 2\r\n" in c.ok("SORT (SUBJECT) UTF-8 ALL")
    assert "* THREAD " in c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL")


def test_idle_gets_exists_when_mail_is_delivered(imap) -> None:
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    assert c.cmd("IDLE") == "+ idling\r\n"
    imap.deliver(message("pushed"))  # announce() -> the watcher
    out = c.read()
    assert "* 1 EXISTS" in out and "* 1 RECENT" in out
    assert c.raw("DONE").startswith("a3 OK Idle completed")
    assert c.cmd("NOOP").startswith("T OK")


def test_idle_poll_sees_changes_from_elsewhere(imap) -> None:
    from appliance.interfaces import Mailbox

    c = imap.logged_in()
    c.ok("SELECT INBOX")
    c.cmd("IDLE")
    imap.store.deliver(Mailbox.of(USER1), iter([message("elsewhere")]))  # no announce
    assert c.read() == ""
    imap.clock.advance(imap.settings.idle_poll)
    assert "* 1 EXISTS" in c.read()


def test_close_expunges_unselect_does_not(imap) -> None:
    imap.deliver(message("a"))
    imap.deliver(message("b"))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("UNSELECT")  # leaves the \Deleted message
    assert "* 2 EXISTS" in c.ok("SELECT INBOX")
    out = c.ok("CLOSE")
    assert "EXPUNGE" not in out
    assert "* 1 EXISTS" in c.ok("SELECT INBOX")


def test_id_enable_namespace_logout(imap) -> None:
    c = imap.local()
    c.login(USER2, "pass word")
    assert '* ID ("name" "mailappliance"' in c.ok('ID ("name" "test")')
    assert "* ENABLED" in c.ok("ENABLE CONDSTORE")
    assert '* NAMESPACE (("" "/")) NIL NIL' in c.ok("NAMESPACE")
    out = c.cmd("LOGOUT")
    assert out.startswith("* BYE") and "T OK" in out and c.closed
    c.session.connectionLost(None)
    assert any("imap(user2@example.test): Disconnected: Logged out" in x for x in imap.lines())


def test_fetch_body_reports_flags_only_of_the_messages_it_marked_seen(imap) -> None:
    """FETCH 1:3 BODY[TEXT] with message 2 already \\Seen: FLAGS comes with 1 and 3 (which
    this FETCH marked), not with 2; a FETCH that sets nothing (BODY.PEEK[]) adds no FLAGS."""
    for n in range(3):
        imap.deliver(message(f"m{n}", "text"))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    c.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
    out = c.ok("FETCH 1:3 BODY[TEXT]")
    lines = [line for line in out.split("\r\n") if "FETCH (" in line]
    assert len(lines) == 3, out
    assert lines[0].startswith("* 1 FETCH (BODY[TEXT] {6}") and "FLAGS (\\Recent \\Seen)" in out
    assert [("FLAGS" in line) for line in out.split("* ")[1:]] == [True, False, True], out
    peek = c.ok("FETCH 1:3 BODY.PEEK[TEXT]")
    assert "FLAGS" not in peek and peek.count("FETCH (BODY[TEXT]") == 3, peek
