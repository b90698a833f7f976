"""A private OpenLDAP slapd for tests: loopback only, foreground, its config and DB in tmp.

Other test modules reuse it::

    from tests.auth.slapd import slapd  # noqa: F401  (the module-scoped fixture)

    def test_something(slapd: Slapd) -> None:
        slapd.url            # ldap://127.0.0.1:PORT (StartTLS available)
        slapd.ldaps_url      # ldaps://127.0.0.1:PORT
        slapd.base_dn        # dc=example,dc=test
        slapd.bind_dn        # the service account the appliance binds as
        slapd.bind_password
        slapd.ca_file        # CA certificate that signed the server certificate
        slapd.users          # {"user1@163.com": "password", ...} loaded at start
        slapd.add_user("user5", "user5@163.com", "secret")
        slapd.stop(); slapd.start()    # same ports, same data
        slapd.pause(); slapd.resume()  # SIGSTOP/SIGCONT: a hung directory

The server certificate is for localhost and 127.0.0.1, issued by our own CA
(appliance.tls.ca). Entries are loaded with slapadd before the first start and added later with
ldapadd, so the directory is never filled by the code under test. Needs Debian's `slapd` and
`ldap-utils`; the tests that use the fixture are skipped when they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.tls.ca import CertificateAuthority

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
BASE_DN = "dc=example,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "root-secret"
SERVICE_DN = f"cn=mailappliance,{BASE_DN}"
SERVICE_PASSWORD = "service-secret"
# the tutorial's 163.com users
USERS = {"user1@163.com": "user1-pass", "user2@163.com": "user2-pass"}
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_TOOLS = ("slapd", "slapadd", "slappasswd", "ldapadd")


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise FileNotFoundError(name)
    return path


def missing_tools() -> list[str]:
    """The Debian tools the fixture needs that are not installed."""
    missing = []
    for name in _TOOLS:
        try:
            _tool(name)
        except FileNotFoundError:
            missing.append(name)
    return missing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def hash_password(password: str) -> str:
    """A {SSHA} userPassword value, made by slappasswd as an admin would."""
    out = subprocess.run(
        [_tool("slappasswd"), "-s", password], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def user_ldif(uid: str, mail: str, password: str) -> str:
    return (
        f"dn: uid={uid},{PEOPLE_DN}\n"
        "objectClass: inetOrgPerson\n"
        f"uid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {mail}\n"
        f"userPassword: {hash_password(password)}\n\n"
    )


class Slapd:
    """One slapd process on 127.0.0.1 (ldap:// and ldaps://), stopped and started by PID."""

    base_dn = BASE_DN
    bind_dn = SERVICE_DN
    bind_password = SERVICE_PASSWORD
    root_dn = ROOT_DN
    root_password = ROOT_PASSWORD

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.ca_dir = self.directory / "ca"
        self.ca_file = self.ca_dir / "ca.crt"
        self.config_file = self.directory / "slapd.conf"
        self.log_file = self.directory / "slapd.log"
        self.port = _free_port()
        self.ldaps_port = _free_port()
        self.users: dict[str, str] = dict(USERS)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Issue the server certificate, write slapd.conf and load the initial entries."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "db").mkdir(exist_ok=True)
        ca = CertificateAuthority(self.ca_dir)
        ca.init("slapd test CA", progress=lambda line: None)
        key, cert = ca.issue(
            "localhost",
            ["127.0.0.1"],
            key_out=self.directory / "server.key",
            cert_out=self.directory / "server.crt",
            progress=lambda line: None,
        )
        self.config_file.write_text(
            f"include {SCHEMA_DIR}/core.schema\n"
            f"include {SCHEMA_DIR}/cosine.schema\n"
            f"include {SCHEMA_DIR}/inetorgperson.schema\n"
            f"pidfile {self.directory}/slapd.pid\n"
            f"argsfile {self.directory}/slapd.args\n"
            f"modulepath {MODULE_DIR}\n"
            "moduleload back_mdb\n"
            f"TLSCACertificateFile {self.ca_file}\n"
            f"TLSCertificateFile {cert}\n"
            f"TLSCertificateKeyFile {key}\n"
            "database mdb\n"
            f'suffix "{BASE_DN}"\n'
            f'rootdn "{ROOT_DN}"\n'
            f"rootpw {hash_password(ROOT_PASSWORD)}\n"
            f"directory {self.directory}/db\n"
            "index objectClass eq\n"
            "index mail,uid eq\n"
            "access to attrs=userPassword by anonymous auth by self write by * none\n"
            "access to * by * read\n"
        )
        ldif = (
            f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
            "dc: example\no: example\n\n"
            f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n\n"
            f"dn: {SERVICE_DN}\nobjectClass: simpleSecurityObject\n"
            "objectClass: organizationalRole\ncn: mailappliance\n"
            f"userPassword: {hash_password(SERVICE_PASSWORD)}\n\n"
        )
        for mail, password in self.users.items():
            ldif += user_ldif(mail.split("@")[0], mail, password)
        init = self.directory / "init.ldif"
        init.write_text(ldif)
        subprocess.run(
            [_tool("slapadd"), "-f", str(self.config_file), "-l", str(init)],
            check=True,
            capture_output=True,
        )

    # ------------------------------------------------------------------ process

    def start(self) -> None:
        """Start slapd in the foreground and wait (at most 20 s) until both ports accept."""
        if self.process is not None:
            raise RuntimeError("slapd is already running")
        urls = f"{self.url}/ {self.ldaps_url}/"
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [_tool("slapd"), "-f", str(self.config_file), "-h", urls, "-d", "stats"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not (_accepts(self.port) and _accepts(self.ldaps_port)):
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"slapd exited at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"slapd not listening after {READY_TIMEOUT} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate slapd (SIGTERM, then SIGKILL after 10 s) and wait until it has exited."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused slapd cannot act on SIGTERM
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ data

    def add_user(self, uid: str, mail: str, password: str) -> str:
        """Add an inetOrgPerson with ldapadd (as rootdn) to the running server; return its DN."""
        self.ldapadd(user_ldif(uid, mail, password))
        self.users.setdefault(mail, password)
        return f"uid={uid},{PEOPLE_DN}"

    def ldapadd(self, ldif: str) -> None:
        result = subprocess.run(
            [_tool("ldapadd"), "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ldapadd failed: {result.stderr.strip()}")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A running slapd with the service account and user1/user2@163.com; killed at teardown."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs Debian slapd and ldap-utils (missing: {', '.join(missing)})")
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.setup()
    server.start()
    try:
        yield server
    finally:
        server.stop()
