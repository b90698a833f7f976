"""The passwd file (parsing, reload, admin edits) and `mailappliance user`."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from appliance import cli, paths
from appliance.auth import schemes
from appliance.auth.cram import cram_md5_secret
from appliance.auth.passwd import PasswdFile
from appliance.auth.passwd_admin import add_user, delete_user, set_password
from appliance.auth.passwd_checker import PasswdFileChecker
from appliance.auth.passwd_format import PasswdFileError, parse_passwd
from appliance.auth.schemes import hash_password, verify_password
from appliance.config import Config, Section

REPO = Path(__file__).resolve().parents[2]

# `doveadm pw -s CRAM-MD5` output quoted in postfixadmin's test suite (spec/spec_helper.rb)
DOVECOT_CRAM_MD5 = {
    "password": "9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740",
    "new_password": "820de4c70957274d41111c5fbcae4c87240c9f047fc56f3e720f103571be6cbc",
}


# --------------------------------------------------------------------------- helpers
# (test_passwd_checker.py imports these too)


class ThreadlessReactor(Clock):
    """A Clock that deferToThreadPool can report to: callFromThread runs at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlineThreadPool:
    """Runs the 'threaded' call synchronously, so Clock-driven tests need no real thread."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """New hashes use the cheapest costs; tests about the real cost undo it themselves."""
    monkeypatch.setattr(schemes, "BCRYPT_ROUNDS", 4)
    monkeypatch.setattr(schemes, "SHA512_ROUNDS", 1000)
    monkeypatch.setattr(schemes, "ARGON2_MEMORY_KIB", 1024)
    monkeypatch.setattr(schemes, "ARGON2_TIME_COST", 1)


@pytest.fixture
def warnings(log_lines: list[str]) -> list[str]:
    """Every log line emitted during the test, formatted (tests/conftest.py's log_lines)."""
    return log_lines


def replace_file(path: Path, text: str) -> None:
    """Rewrite the file the way careful editors do: a new inode renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def offline_file(path: Path, **kwargs: Any) -> tuple[PasswdFile, ThreadlessReactor]:
    reactor = ThreadlessReactor()
    reactor.advance(1000)
    return PasswdFile(path, reactor=reactor, threadpool=InlineThreadPool(), **kwargs), reactor


def login(checker: PasswdFileChecker, username: str | bytes, password: str | bytes) -> Any:
    """The avatar id, or the Failure, of a synchronous (inline thread pool) check."""
    results: list[Any] = []
    d = checker.requestAvatarId(UsernamePassword(username, password))
    d.addBoth(results.append)
    assert results, "the check did not finish synchronously"
    return results[0]


# --------------------------------------------------------------------------- parsing


def test_parse_passwd_dovecot_format_accepted() -> None:
    """Comments, blank lines, userdb fields and extra fields parse; addresses are lower-cased."""
    blf = hash_password("a")
    text = (
        "# users of 163.com\n"
        "\n"
        f"User1@163.COM:{blf}:1000:1000::/home/user1::userdb_quota_rule=*:storage=1G\n"
        f"user2@163.com:{blf}::::::cram_md5={{CRAM-MD5}}{DOVECOT_CRAM_MD5['password']}\n"
        "mailonly@163.com:\n"
        f"user3@163.com:{{CRAM-MD5}}{DOVECOT_CRAM_MD5['new_password'].upper()}\n"
    )
    users, problems = parse_passwd(text.encode(), "passwd")
    assert problems == []
    assert sorted(users) == ["mailonly@163.com", "user1@163.com", "user2@163.com", "user3@163.com"]
    assert users["user1@163.com"].cram_md5 is None
    assert users["user2@163.com"].cram_md5 == DOVECOT_CRAM_MD5["password"]
    assert users["user3@163.com"].cram_md5 == DOVECOT_CRAM_MD5["new_password"]
    assert users["mailonly@163.com"].password == ""


def test_parse_passwd_bad_lines_named_by_file_and_line() -> None:
    """Each broken line is one problem `file:line: message`, without echoing the hash."""
    blf = hash_password("a")
    text = (
        f"ok@163.com:{blf}\n"
        "no-colon-here\n"
        f"user@:{blf}\n"
        "x@163.com:{PLAIN}secret\n"
        f"OK@163.com:{blf}\n"
        f"y@163.com:{blf}::::::cram_md5={{CRAM-MD5}}abc\n"
    )
    data = text.encode() + b"\xff@163.com:x\n"
    _, problems = parse_passwd(data, "/etc/passwd.mail")
    assert problems == [
        "/etc/passwd.mail:2: expected user@domain:{SCHEME}hash",
        "/etc/passwd.mail:3: expected an address like user@example.com, got 'user@'",
        "/etc/passwd.mail:4: unsupported password scheme {PLAIN} "
        "(supported: BLF-CRYPT, SHA512-CRYPT, ARGON2ID, CRAM-MD5)",
        "/etc/passwd.mail:5: ok@163.com already defined on line 1",
        "/etc/passwd.mail:6: cram_md5: malformed CRAM-MD5 hash",
        "/etc/passwd.mail:7: not UTF-8",
    ]
    assert not any("secret" in p for p in problems)


# --------------------------------------------------------------------------- PasswdFile


def test_passwd_file_rewrite_seen_after_a_second(tmp_path: Path) -> None:
    """Write, log in, rewrite with a new password: within the second the old table is used
    (one stat per second), after it the new password works and the old one fails."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('old')}\n")
    passwd, reactor = offline_file(path)
    checker = PasswdFileChecker(passwd)
    assert login(checker, b"user1@163.com", b"old") == "user1@163.com"

    replace_file(path, f"user1@163.com:{hash_password('new')}\nuser2@163.com:\n")
    reactor.advance(0.5)
    assert login(checker, b"user1@163.com", b"old") == "user1@163.com"

    reactor.advance(0.6)
    assert isinstance(login(checker, b"user1@163.com", b"old"), Failure)
    assert login(checker, b"user1@163.com", b"new") == "user1@163.com"
    assert passwd.users() == ["user1@163.com", "user2@163.com"]


def test_passwd_file_broken_rewrite_keeps_previous_users(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A rewrite with a broken line keeps the previous users and logs file:line once."""
    path = tmp_path / "passwd"
    path.write_text(f"user1@163.com:{hash_password('pw')}\n")
    passwd, reactor = offline_file(path)
    replace_file(path, f"# comment\nuser1@163.com:{hash_password('other')}\nbroken line\n")
    reactor.advance(2)
    assert passwd.users() == ["user1@163.com"]
    assert login(PasswdFileChecker(passwd), "user1@163.com", "pw") == "user1@163.com"
    expected = f"{path}:3: expected user@domain:{{SCHEME}}hash; keeping the previous 1 users"
    assert warnings.count(expected) == 1
    reactor.advance(2)
    passwd.users()
    assert warnings.count(expected) == 1

    replace_file(path, f"user9@163.com:{hash_password('pw')}\n")
    reactor.advance(2)
    assert passwd.users() == ["user9@163.com"]


def test_passwd_file_lookups_stat_at_most_once_per_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many lookups within a second cost one stat(); the next second costs one more."""
    path = tmp_path / "passwd"
    path.write_text("user1@163.com:\n")
    passwd, reactor = offline_file(path)
    calls: list[Any] = []
    real_stat = os.stat

    def counting_stat(p: Any, *a: Any, **kw: Any) -> os.stat_result:
        calls.append(p)
        return real_stat(p, *a, **kw)

    monkeypatch.setattr(os, "stat", counting_stat)
    reactor.advance(5)
    for _ in range(100):
        passwd.exists("user1@163.com")
        reactor.advance(0.001)
    assert len(calls) == 1
    reactor.advance(1)
    passwd.exists("user1@163.com")
    assert len(calls) == 2


def test_passwd_file_exists_case_and_default_domain_true(tmp_path: Path) -> None:
    """exists() lower-cases and, with default_domain, accepts a bare user name."""
    path = tmp_path / "passwd"
    path.write_text("user1@163.com:\n")
    passwd, _ = offline_file(path, default_domain="163.COM")
    results: list[bool] = []
    for name in ("USER1@163.com", "user1", "user2", "user1@sina.com", "not an address"):
        passwd.exists(name).addCallback(results.append)
    assert results == [True, True, False, False, False]
    plain, _ = offline_file(path)
    plain.exists("user1").addCallback(results.append)
    assert results[-1] is False


def test_passwd_file_missing_file_no_users(tmp_path: Path, warnings: list[str]) -> None:
    """A missing file is an empty directory, logged once."""
    passwd, reactor = offline_file(tmp_path / "passwd")
    assert passwd.users() == []
    reactor.advance(5)
    assert passwd.users() == []
    assert sum("no such file" in w for w in warnings) == 1
    assert f"{tmp_path / 'passwd'}: no such file; keeping the previous 0 users" in warnings


# --------------------------------------------------------------------------- admin edits


def test_passwd_file_add_mode_0600_and_comments_kept(tmp_path: Path) -> None:
    """add() appends atomically with mode 0600; comments and other lines stay as they were."""
    path = tmp_path / "passwd"
    head = "# managed by mailappliance\n\nuser1@163.com:{CRAM-MD5}" + DOVECOT_CRAM_MD5["password"]
    path.write_text(head + "\n")
    path.chmod(0o644)
    passwd = PasswdFile(path)
    add_user(passwd, "User2@163.com", "pw2", scheme="SHA512-CRYPT", cram_md5=True)
    text = path.read_text()
    assert text.startswith(head + "\nuser2@163.com:{SHA512-CRYPT}$6$rounds=1000$")
    assert text.endswith(f"::::::cram_md5={{CRAM-MD5}}{cram_md5_secret('pw2')}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert passwd.users() == ["user1@163.com", "user2@163.com"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_passwd_file_add_new_file_mode_0600(tmp_path: Path) -> None:
    """The first add creates the folder and a 0600 file."""
    path = tmp_path / "state" / "passwd"
    add_user(PasswdFile(path), "user1@163.com", "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("user1@163.com:{BLF-CRYPT}$2b$04$")


def test_passwd_file_edit_keeps_mode_0640(tmp_path: Path) -> None:
    """A file the admin made 0640 (readable by a mail group) stays 0640."""
    path = tmp_path / "passwd"
    path.write_text("")
    path.chmod(0o640)
    add_user(PasswdFile(path), "user1@163.com", "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_passwd_file_set_password_keeps_fields_and_renews_cram(tmp_path: Path) -> None:
    """set_password replaces the hash, keeps userdb and extra fields, renews CRAM-MD5."""
    path = tmp_path / "passwd"
    old_cram = cram_md5_secret("old")
    path.write_text(
        f"user1@163.com:{hash_password('old')}:1000:100::/home/u1::quota=1G cram_md5={{CRAM-MD5}}{old_cram}\n"
    )
    passwd = PasswdFile(path)
    set_password(passwd, "user1@163.com", "new", scheme="ARGON2ID")
    fields = path.read_text().rstrip("\n").split(":", 7)
    assert fields[2:7] == ["1000", "100", "", "/home/u1", ""]
    assert fields[7] == f"quota=1G cram_md5={{CRAM-MD5}}{cram_md5_secret('new')}"
    assert verify_password("new", fields[1]) and not verify_password("old", fields[1])

    set_password(passwd, "user1@163.com", "newer", cram_md5=False)
    fields = path.read_text().rstrip("\n").split(":", 7)
    assert fields[7] == "quota=1G"


def test_passwd_file_admin_errors_clear(tmp_path: Path) -> None:
    """Adding an existing user, changing or deleting an unknown one raise PasswdFileError."""
    path = tmp_path / "passwd"
    passwd = PasswdFile(path)
    add_user(passwd, "user1@163.com", "pw")
    with pytest.raises(PasswdFileError, match="user1@163.com already exists"):
        add_user(passwd, "USER1@163.com", "pw")
    with pytest.raises(PasswdFileError, match="no such user: user2@163.com"):
        delete_user(passwd, "user2@163.com")
    with pytest.raises(PasswdFileError, match="no such user: user2@163.com"):
        set_password(passwd, "user2@163.com", "pw")
    with pytest.raises(PasswdFileError, match="expected an address"):
        add_user(passwd, "user2", "pw")
    delete_user(passwd, "User1@163.com")
    assert passwd.users() == []
    assert path.read_text() == ""


def test_passwd_file_edit_of_broken_file_refused(tmp_path: Path) -> None:
    """An edit never rewrites a file with broken lines; it names them instead."""
    path = tmp_path / "passwd"
    path.write_text("garbage\n")
    with pytest.raises(PasswdFileError) as e:
        add_user(PasswdFile(path), "user1@163.com", "pw")
    assert e.value.problems[0] == f"{path}:1: expected user@domain:{{SCHEME}}hash"
    assert path.read_text() == "garbage\n"


# --------------------------------------------------------------------------- CLI


def lab_ini(tmp_path: Path) -> Path:
    ini = tmp_path / "lab.ini"
    ini.write_text("[appliance]\nhostname = mail.163.com\nstate_dir = state\n")
    return ini


def run_cli(monkeypatch: pytest.MonkeyPatch, ini: Path, *args: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(["--config", str(ini), "user", *args])


def test_cli_user_add_password_stdin_then_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """user add --password-stdin stores a verifying hash in <state_dir>/passwd (0600); list
    prints one address per line."""
    ini = lab_ini(tmp_path)
    assert (
        run_cli(monkeypatch, ini, "add", "User1@163.com", "--password-stdin", stdin="pw 1\n") == 0
    )
    assert (
        run_cli(
            monkeypatch,
            ini,
            "add",
            "user2@163.com",
            "--password-stdin",
            "--scheme",
            "sha512-crypt",
            "--cram-md5",
            stdin="pw2\r\n",
        )
        == 0
    )
    path = tmp_path / "state" / "passwd"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    capsys.readouterr()
    assert run_cli(monkeypatch, ini, "list") == 0
    assert capsys.readouterr().out == "user1@163.com\nuser2@163.com\n"
    users, _ = parse_passwd(path.read_bytes(), "passwd")
    assert verify_password("pw 1", users["user1@163.com"].password)
    assert users["user2@163.com"].password.startswith("{SHA512-CRYPT}$6$")
    assert verify_password("pw2", users["user2@163.com"].password)
    assert users["user2@163.com"].cram_md5 == cram_md5_secret("pw2")


def test_cli_user_add_prompt_asks_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --password-stdin the password is asked twice; a mismatch stores nothing."""
    ini = lab_ini(tmp_path)
    answers = iter(["one", "two", "same", "same"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli.getpass, "getpass", fake_getpass)
    assert run_cli(monkeypatch, ini, "add", "user1@163.com") == 1
    assert capsys.readouterr().err == "mailappliance: passwords do not match\n"
    assert not (tmp_path / "state" / "passwd").exists()
    assert run_cli(monkeypatch, ini, "add", "user1@163.com") == 0
    assert prompts == ["Password: ", "Password again: "] * 2
    users, _ = parse_passwd((tmp_path / "state" / "passwd").read_bytes(), "passwd")
    assert verify_password("same", users["user1@163.com"].password)


def test_cli_user_passwd_and_del(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """passwd changes the hash (keeping a CRAM-MD5 secret current); del removes the user;
    del of an unknown user exits 1 naming it."""
    ini = lab_ini(tmp_path)
    path = tmp_path / "state" / "passwd"
    run_cli(monkeypatch, ini, "add", "user1@163.com", "--password-stdin", "--cram-md5", stdin="a\n")
    assert (
        run_cli(monkeypatch, ini, "passwd", "USER1@163.com", "--password-stdin", stdin="b\n") == 0
    )
    entry = parse_passwd(path.read_bytes(), "passwd")[0]["user1@163.com"]
    assert verify_password("b", entry.password) and entry.cram_md5 == cram_md5_secret("b")
    assert run_cli(monkeypatch, ini, "del", "user1@163.com") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, ini, "del", "user1@163.com") == 1
    assert capsys.readouterr().err == f"mailappliance: no such user: user1@163.com (in {path})\n"
    assert (
        run_cli(monkeypatch, ini, "passwd", "user9@163.com", "--password-stdin", stdin="x\n") == 1
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["add", "user1", "--password-stdin"], "pw\n", "expected an address like user@example.com"),
        (["add", "a@b@163.com", "--password-stdin"], "pw\n", "expected an address"),
        (["add", "user1@163.com", "--password-stdin"], "\n", "no password on standard input"),
        (["add", "user1@163.com", "--password-stdin"], "x" * 73 + "\n", "only the first 72 bytes"),
    ],
)
def test_cli_user_add_bad_input_exit_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    """Bad addresses, empty and over-long BLF-CRYPT passwords: exit 1 with one clear line."""
    assert run_cli(monkeypatch, lab_ini(tmp_path), *args, stdin=stdin) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailappliance: ") and message in err and "Traceback" not in err


def test_cli_user_broken_file_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """list and edits on a file with broken lines exit 1 naming file and line."""
    ini = lab_ini(tmp_path)
    path = tmp_path / "state" / "passwd"
    path.parent.mkdir()
    path.write_text("oops\n")
    assert run_cli(monkeypatch, ini, "list") == 1
    assert (
        capsys.readouterr().err == f"mailappliance: {path}:1: expected user@domain:{{SCHEME}}hash\n"
    )


@pytest.mark.parametrize(
    "args",
    [["user"], ["user", "add"], ["user", "passwd"], ["user", "del"], ["user", "list"]],
)
def test_cli_user_help_every_level_exit_0(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--help works on user and on each of its subcommands."""
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mailappliance user")


def test_paths_passwd_file_auth_section_or_state_dir(tmp_path: Path) -> None:
    """passwd_file takes [auth] passwd_file if set, else <state_dir>/passwd."""
    appliance = Section("appliance", {"state_dir": tmp_path / "state"})
    without = Config(path=tmp_path / "x.ini", sections={"appliance": appliance})
    assert paths.passwd_file(without) == tmp_path / "state" / "passwd"
    unset = Config(
        path=tmp_path / "x.ini",
        sections={"appliance": appliance, "auth": Section("auth", {"passwd_file": None})},
    )
    assert paths.passwd_file(unset) == tmp_path / "state" / "passwd"
    configured = Config(
        path=tmp_path / "x.ini",
        sections={
            "appliance": appliance,
            "auth": Section("auth", {"passwd_file": tmp_path / "etc" / "users"}),
        },
    )
    assert paths.passwd_file(configured) == tmp_path / "etc" / "users"


def test_cli_user_subprocess_add_list(tmp_path: Path) -> None:
    """The installed `mailappliance` script adds a user from stdin and lists it."""
    ini = lab_ini(tmp_path)
    exe = REPO / ".venv" / "bin" / "mailappliance"
    add = subprocess.run(
        [str(exe), "--config", str(ini), "user", "add", "user1@163.com", "--password-stdin"],
        input="secret\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert add.returncode == 0, add.stderr
    listing = subprocess.run(
        [str(exe), "--config", str(ini), "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and listing.stdout == "user1@163.com\n"
    entry = parse_passwd((tmp_path / "state" / "passwd").read_bytes(), "p")[0]["user1@163.com"]
    assert entry.password.startswith("{BLF-CRYPT}$2b$12$")
    assert verify_password("secret", entry.password)
