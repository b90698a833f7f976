"""Tests for appliance.tls.context: TLS options checked against a real `openssl s_client`."""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import defer, error, protocol, reactor, ssl
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath

from appliance.errors import CAError
from appliance.tls import context as tls_context
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import check_key_permissions, make_tls_options

# Upper bound for one s_client run, enforced by coreutils `timeout` so a hung handshake
# fails the test instead of hanging the suite.
CLIENT_TIMEOUT = "20"
GREETING = b"hello from mail.test"
REPO = Path(__file__).resolve().parents[2]

# CIPHER_STRING before DHE was removed, for the controls that show what it used to allow.
OLD_CIPHER_STRING = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM"

# RFC 7919's ffdhe2048 group as PEM DH parameters (`openssl genpkey -genparam -algorithm DH
# -pkeyopt group:ffdhe2048`). OpenSSL only does TLS 1.2 DHE once DH parameters are loaded, so
# the DHE tests load these to give a DHE suite every chance to be picked.
FFDHE2048_PEM = """\
-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""

# OpenSSL (the copy inside the cryptography wheel) already refuses TLS 1.0/1.1 at its default
# security level, whatever Twisted is told. To see that *our* options refuse TLS 1.1, the
# server must run with that safety net removed: a child process whose OpenSSL config drops to
# SECLEVEL 0 and allows TLS 1.0 system-wide.
SECLEVEL0_CONF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
CipherString = DEFAULT:@SECLEVEL=0
MinProtocol = TLSv1
"""

# The child server: "ours" serves make_tls_options(); "lowered" is the control, a Twisted
# server that was asked to allow TLS 1.1, to prove the harness can see an accepted TLS 1.1.
CHILD_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from twisted.internet import protocol, reactor, ssl

    from appliance.tls.context import make_tls_options

    mode, cert, key, greeting = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    if mode == "ours":
        options = make_tls_options(cert, key)
    else:
        options = ssl.CertificateOptions(
            privateKey=serialization.load_pem_private_key(key.read_bytes(), None),
            certificate=x509.load_pem_x509_certificate(cert.read_bytes()),
            insecurelyLowerMinimumTo=ssl.TLSVersion.TLSv1_1,
        )


    class Greeter(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(greeting.encode() + b"\\r\\n")
            self.transport.loseConnection()


    port = reactor.listenSSL(
        0, protocol.Factory.forProtocol(Greeter), options, interface="127.0.0.1"
    )
    print(port.getHost().port, flush=True)
    reactor.callLater(60, reactor.stop)  # never outlive a crashed test run
    reactor.run()
    """
)


def quiet(_line: str) -> None:
    """Progress sink for tests that do not look at the messages."""


@dataclass
class Pki:
    ca: CertificateAuthority
    cert: Path
    key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("Test CA", progress=quiet)
    key, cert = authority.issue(
        "mail.test",
        ["smtp.test"],
        key_out=tmp_path / "server.key",
        cert_out=tmp_path / "server.crt",
        progress=quiet,
    )
    return Pki(authority, cert, key)


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """An RSA server certificate: DHE suites (DHE-RSA-*) need an RSA key to be usable at all."""
    base = tmp_path_factory.mktemp("rsa")
    authority = CertificateAuthority(base / "ca")
    authority.init("Test CA", progress=quiet)
    key, cert = authority.issue(
        "mail.test",
        [],
        key_type="rsa-3072",
        key_out=base / "server.key",
        cert_out=base / "server.crt",
        progress=quiet,
    )
    return Pki(authority, cert, key)


@pytest.fixture
def dh_params(tmp_path: Path) -> Path:
    path = tmp_path / "ffdhe2048.pem"
    path.write_text(FFDHE2048_PEM)
    return path


class Greeter(protocol.Protocol):
    """Says one line and hangs up, so a client run with -ign_eof ends on the server's close."""

    def connectionMade(self) -> None:
        self.transport.write(GREETING + b"\r\n")
        self.transport.loseConnection()


@dataclass
class ClientResult:
    code: int
    output: str


@defer.inlineCallbacks
def run_s_client(options, ca_file: Path, *extra: str, servername: str = "mail.test"):  # type: ignore[no-untyped-def]
    """Serve `options` on a loopback port, run openssl s_client against it, return its result."""
    factory = protocol.Factory.forProtocol(Greeter)
    port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
    try:
        args = [
            CLIENT_TIMEOUT, "openssl", "s_client",
            "-connect", f"127.0.0.1:{port.getHost().port}",
            "-servername", servername, "-verify_hostname", servername,
            "-verify_return_error", "-CAfile", str(ca_file), "-ign_eof", *extra,
        ]  # fmt: skip
        # stdinBytes=b"" closes s_client's stdin at once; -ign_eof keeps it waiting for the
        # greeting until the server hangs up.
        out, err, code = yield getProcessOutputAndValue(
            "timeout", args, env=os.environ, stdinBytes=b""
        )
    finally:
        yield port.stopListening()
    return ClientResult(code, (out + err).decode("utf-8", "replace"))


class ChildServer(protocol.ProcessProtocol):
    """A server in a child process: `port` fires with its port, `ended` when it exits."""

    def __init__(self) -> None:
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.port.called and b"\n" in self.output:
            self.port.callback(int(self.output.split(b"\n", 1)[0]))

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        if not self.port.called:
            self.port.errback(RuntimeError(f"child server died: {self.output!r}"))
        self.ended.callback(None)


@defer.inlineCallbacks
def s_client_against_seclevel0_child(mode: str, pki: Pki, tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    """Run the CHILD_SERVER in `mode` at OpenSSL SECLEVEL 0, then s_client against it."""
    conf = tmp_path / "seclevel0.cnf"
    conf.write_text(SECLEVEL0_CONF)
    env = {**os.environ, "OPENSSL_CONF": str(conf), "PYTHONPATH": str(REPO)}
    child = ChildServer()
    process = reactor.spawnProcess(
        child,
        sys.executable,
        [sys.executable, "-c", CHILD_SERVER, mode, str(pki.cert), str(pki.key), GREETING.decode()],
        env=env,
    )
    try:
        port = yield child.port.addTimeout(30, reactor)
        args = [
            CLIENT_TIMEOUT, "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
            "-CAfile", str(pki.ca.certificate_path), "-verify_return_error", "-ign_eof", *extra,
        ]  # fmt: skip
        out, err, code = yield getProcessOutputAndValue(
            "timeout", args, env=os.environ, stdinBytes=b""
        )
    finally:
        try:
            process.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass
        yield child.ended
    return ClientResult(code, (out + err).decode("utf-8", "replace"))


def assert_handshake_ok(result: ClientResult, protocol_name: str) -> None:
    assert result.code == 0, result.output
    assert "Verify return code: 0 (ok)" in result.output
    assert f"Protocol  : {protocol_name}" in result.output
    assert GREETING.decode() in result.output


def assert_handshake_refused(result: ClientResult) -> None:
    """The server ended the handshake with a handshake_failure alert (no shared suite/group)."""
    assert result.code not in (0, 124), result.output
    assert "alert handshake failure" in result.output, result.output
    assert "Server Temp Key" not in result.output
    assert GREETING.decode() not in result.output


def assert_server_refused_version(result: ClientResult) -> None:
    # Alert 70 is sent by the server; a client-side refusal would say "no protocols available".
    assert result.code != 0, result.output
    assert result.code != 124, "s_client timed out"
    assert "alert protocol version" in result.output
    assert "no protocols available" not in result.output
    assert GREETING.decode() not in result.output


# --------------------------------------------------------------------------- handshakes


@pytest_twisted.inlineCallbacks
def test_make_tls_options_default_client_verifies_and_reads_greeting(pki: Pki):
    """s_client with our CA verifies the chain and host name and gets the greeting."""
    result = yield run_s_client(make_tls_options(pki.cert, pki.key), pki.ca.certificate_path)
    assert_handshake_ok(result, "TLSv1.3")


@pytest_twisted.inlineCallbacks
def test_make_tls_options_tls12_client_accepted_with_aead_cipher(pki: Pki):
    """A TLS 1.2-only client connects and gets a forward-secret AEAD suite."""
    result = yield run_s_client(
        make_tls_options(pki.cert, pki.key), pki.ca.certificate_path, "-tls1_2"
    )
    assert_handshake_ok(result, "TLSv1.2")
    assert "Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" in result.output


@pytest_twisted.inlineCallbacks
def test_make_tls_options_tls13_client_accepted(pki: Pki):
    """A TLS 1.3-only client connects."""
    result = yield run_s_client(
        make_tls_options(pki.cert, pki.key), pki.ca.certificate_path, "-tls1_3"
    )
    assert_handshake_ok(result, "TLSv1.3")


@pytest_twisted.inlineCallbacks
def test_make_tls_options_tls11_client_refused_by_server(pki: Pki):
    """A TLS 1.1 client allowed every cipher (SECLEVEL=0) gets a protocol_version alert.

    In this process OpenSSL's default security level would refuse TLS 1.1 on its own; the
    SECLEVEL 0 child-process test below shows our options refuse it without that help.
    """
    result = yield run_s_client(
        make_tls_options(pki.cert, pki.key),
        pki.ca.certificate_path,
        "-tls1_1",
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
    )
    assert_server_refused_version(result)


def test_make_tls_options_context_disables_ssl3_tls10_tls11(pki: Pki) -> None:
    """The OpenSSL context carries the no-SSLv3/TLSv1.0/TLSv1.1 flags but allows 1.2 and 1.3."""
    flags = make_tls_options(pki.cert, pki.key).getContext().set_options(0)
    for old in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
        assert flags & old
    assert not flags & SSL.OP_NO_TLSv1_2
    assert not flags & SSL.OP_NO_TLSv1_3


def test_make_tls_options_min_13_context_disables_tls12(pki: Pki) -> None:
    """min_version '1.3' adds the no-TLSv1.2 flag."""
    flags = make_tls_options(pki.cert, pki.key, min_version="1.3").getContext().set_options(0)
    assert flags & SSL.OP_NO_TLSv1_2
    assert not flags & SSL.OP_NO_TLSv1_3


@pytest_twisted.inlineCallbacks
def test_make_tls_options_tls11_refused_even_at_server_seclevel0(pki: Pki, tmp_path: Path):
    """With OpenSSL's own TLS 1.1 ban lifted (SECLEVEL 0), our options still refuse TLS 1.1."""
    result = yield s_client_against_seclevel0_child(
        "ours", pki, tmp_path, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"
    )
    assert_server_refused_version(result)


@pytest_twisted.inlineCallbacks
def test_seclevel0_harness_lowered_twisted_server_accepts_tls11(pki: Pki, tmp_path: Path):
    """Control: at SECLEVEL 0 a Twisted server told to allow TLS 1.1 does complete it."""
    result = yield s_client_against_seclevel0_child(
        "lowered", pki, tmp_path, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"
    )
    assert result.code == 0, result.output
    assert "Protocol  : TLSv1.1" in result.output
    assert GREETING.decode() in result.output


@pytest_twisted.inlineCallbacks
def test_make_tls_options_min_13_refuses_tls12_client(pki: Pki):
    """min_version '1.3' makes the server refuse a TLS 1.2 client."""
    options = make_tls_options(pki.cert, pki.key, min_version="1.3")
    result = yield run_s_client(options, pki.ca.certificate_path, "-tls1_2")
    assert_server_refused_version(result)
    result = yield run_s_client(options, pki.ca.certificate_path)
    assert_handshake_ok(result, "TLSv1.3")


@pytest_twisted.inlineCallbacks
def test_make_tls_options_cbc_only_client_refused(pki: Pki):
    """A TLS 1.2 client offering only a CBC suite finds no shared cipher."""
    result = yield run_s_client(
        make_tls_options(pki.cert, pki.key),
        pki.ca.certificate_path,
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-SHA",
    )
    assert result.code not in (0, 124), result.output
    assert "alert handshake failure" in result.output


@pytest_twisted.inlineCallbacks
def test_twisted_default_ciphers_cbc_client_accepted(pki: Pki):
    """Control: Twisted's default cipher list would have accepted that CBC-only client."""
    options = ssl.CertificateOptions(
        privateKey=serialization.load_pem_private_key(pki.key.read_bytes(), password=None),
        certificate=x509.load_pem_x509_certificate(pki.cert.read_bytes()),
    )
    result = yield run_s_client(
        options, pki.ca.certificate_path, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"
    )
    assert_handshake_ok(result, "TLSv1.2")


def test_make_tls_options_cipher_list_aead_with_forward_secrecy_only(pki: Pki) -> None:
    """Every suite the server offers is TLS 1.3 or ECDHE with GCM or ChaCha20-Poly1305."""
    context = make_tls_options(pki.cert, pki.key).getContext()
    names = SSL.Connection(context, None).get_cipher_list()
    assert any(n.startswith("ECDHE-") for n in names)
    for name in names:
        if name.startswith("TLS_"):
            continue  # TLS 1.3 suites: AEAD by definition
        assert name.startswith("ECDHE-"), name
        assert "GCM" in name or "CHACHA20-POLY1305" in name, name


@pytest_twisted.inlineCallbacks
def test_make_tls_options_chain_file_sent_after_certificate(pki: Pki):
    """Certificates from chain_paths are sent after the server certificate."""
    options = make_tls_options(pki.cert, pki.key, chain_paths=[pki.ca.certificate_path])
    result = yield run_s_client(options, pki.ca.certificate_path, "-showcerts")
    assert_handshake_ok(result, "TLSv1.3")
    assert " 0 s:CN = mail.test" in result.output
    assert " 1 s:CN = Test CA" in result.output


# --------------------------------------------------------------------------- key exchange

# A TLS 1.2 client that can only do finite-field DHE: DHE suites only, or only the ffdhe2048
# group (then ECDHE has no curve to use and DHE is all that is left).
DHE_ONLY_TLS12_CLIENTS = [
    pytest.param(("-cipher", "DHE-RSA-AES128-GCM-SHA256"), id="dhe-cipher"),
    pytest.param(("-groups", "ffdhe2048"), id="ffdhe2048-group"),
]


def options_with_dh_parameters(pki: Pki, dh_params: Path) -> ssl.CertificateOptions:
    """Our options with DH parameters loaded too, the one thing OpenSSL needs for TLS 1.2 DHE."""
    options = make_tls_options(pki.cert, pki.key)
    options.getContext().load_tmp_dh(str(dh_params))
    return options


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("client", DHE_ONLY_TLS12_CLIENTS)
def test_make_tls_options_tls12_dhe_only_client_refused(
    rsa_pki: Pki, dh_params: Path, client: tuple[str, ...]
):
    """A TLS 1.2 client that can only do DHE is refused, even with DH parameters loaded."""
    result = yield run_s_client(
        options_with_dh_parameters(rsa_pki, dh_params),
        rsa_pki.ca.certificate_path,
        "-tls1_2",
        *client,
    )
    assert_handshake_refused(result)


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("client", DHE_ONLY_TLS12_CLIENTS)
def test_old_cipher_string_with_dh_parameters_negotiated_tls12_dhe(
    rsa_pki: Pki, dh_params: Path, client: tuple[str, ...]
):
    """Control: with DHE+AESGCM in the cipher list those clients did get ffdhe2048 DHE."""
    options = ssl.CertificateOptions(
        privateKey=serialization.load_pem_private_key(rsa_pki.key.read_bytes(), password=None),
        certificate=x509.load_pem_x509_certificate(rsa_pki.cert.read_bytes()),
        dhParameters=ssl.DiffieHellmanParameters.fromFile(FilePath(str(dh_params))),
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(OLD_CIPHER_STRING),
    )
    result = yield run_s_client(options, rsa_pki.ca.certificate_path, "-tls1_2", *client)
    assert_handshake_ok(result, "TLSv1.2")
    assert "Cipher is DHE-RSA-AES" in result.output
    assert "Server Temp Key: DH, 2048 bits" in result.output


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize(
    ("groups", "temp_key"),
    [
        (None, "X25519, 253 bits"),  # the client's default list: our first choice wins
        ("X25519", "X25519, 253 bits"),
        ("P-256", "ECDH, prime256v1, 256 bits"),
        ("P-384", "ECDH, secp384r1, 384 bits"),
    ],
)
def test_make_tls_options_tls12_ecdhe_client_gets_allowed_curve(
    rsa_pki: Pki, groups: str | None, temp_key: str
):
    """A TLS 1.2 ECDHE client gets an ECDHE suite over X25519, P-256 or P-384.

    An RSA certificate, because in TLS 1.2 the client's groups also limit the curve of an ECDSA
    certificate: a P-256 certificate could not be served to an X25519-only client at all.
    """
    extra = ("-groups", groups) if groups else ()
    result = yield run_s_client(
        make_tls_options(rsa_pki.cert, rsa_pki.key), rsa_pki.ca.certificate_path, "-tls1_2", *extra
    )
    assert_handshake_ok(result, "TLSv1.2")
    assert "Cipher is ECDHE-RSA-" in result.output
    assert f"Server Temp Key: {temp_key}" in result.output


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_make_tls_options_other_curve_refused(rsa_pki: Pki, version: str):
    """A client offering only P-521 (a curve outside the list) is refused in 1.2 and 1.3.

    An RSA certificate, so that in TLS 1.2 it is the key exchange that fails, not the choice of
    certificate (a P-256 ECDSA one is unusable for a P-521-only client anyway).
    """
    result = yield run_s_client(
        make_tls_options(rsa_pki.cert, rsa_pki.key),
        rsa_pki.ca.certificate_path,
        version,
        "-groups",
        "P-521",
    )
    assert_handshake_refused(result)


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("min_version", ["1.2", "1.3"])
def test_make_tls_options_tls13_ffdhe_only_client_refused(pki: Pki, min_version: str):
    """A TLS 1.3 client offering only the ffdhe2048 group gets a handshake_failure alert."""
    result = yield run_s_client(
        make_tls_options(pki.cert, pki.key, min_version=min_version),
        pki.ca.certificate_path,
        "-tls1_3",
        "-groups",
        "ffdhe2048",
    )
    assert_handshake_refused(result)


@pytest_twisted.inlineCallbacks
def test_twisted_default_groups_tls13_ffdhe_client_accepted(pki: Pki):
    """Control: OpenSSL's default groups let that TLS 1.3 client do ffdhe2048."""
    options = ssl.CertificateOptions(
        privateKey=serialization.load_pem_private_key(pki.key.read_bytes(), password=None),
        certificate=x509.load_pem_x509_certificate(pki.cert.read_bytes()),
    )
    result = yield run_s_client(options, pki.ca.certificate_path, "-tls1_3", "-groups", "ffdhe2048")
    assert_handshake_ok(result, "TLSv1.3")
    assert "Server Temp Key: DH, 2048 bits" in result.output


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize(
    ("groups", "temp_key"),
    [
        ("X25519", "X25519, 253 bits"),
        ("P-256", "ECDH, prime256v1, 256 bits"),
        ("P-384", "ECDH, secp384r1, 384 bits"),
        ("ffdhe2048:P-384", "ECDH, secp384r1, 384 bits"),
    ],
)
def test_make_tls_options_tls13_allowed_group_accepted(pki: Pki, groups: str, temp_key: str):
    """TLS 1.3 key shares over X25519, P-256 and P-384 work (via a HelloRetryRequest if the
    client's first key share was ffdhe2048)."""
    result = yield run_s_client(
        make_tls_options(pki.cert, pki.key), pki.ca.certificate_path, "-tls1_3", "-groups", groups
    )
    assert_handshake_ok(result, "TLSv1.3")
    assert f"Server Temp Key: {temp_key}" in result.output


def test_make_tls_options_groups_binding_missing_raises(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SSL_CTX_set1_curves_list in the binding, start-up fails instead of offering DHE."""

    class BindingWithoutGroups:
        lib = object()

    monkeypatch.setattr(tls_context, "Binding", BindingWithoutGroups)
    with pytest.raises(CAError) as info:
        make_tls_options(pki.cert, pki.key)
    assert str(info.value) == (
        "cannot limit TLS key exchange to X25519, P-256, P-384: this pyOpenSSL/cryptography "
        "build does not expose SSL_CTX_set1_curves_list; refusing to start with OpenSSL's "
        "default groups (finite-field DHE included)"
    )


def test_make_tls_options_groups_refused_by_openssl_raises(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A groups list OpenSSL rejects is a CAError, and leaves no error behind for the next call."""
    monkeypatch.setattr(tls_context, "GROUPS", "X25519:no-such-group")
    with pytest.raises(CAError, match="OpenSSL refused the TLS key exchange groups"):
        make_tls_options(pki.cert, pki.key)
    monkeypatch.undo()
    assert make_tls_options(pki.cert, pki.key).getContext() is not None


# --------------------------------------------------------------------------- loading errors


def test_make_tls_options_other_key_raises_mismatch(pki: Pki, tmp_path: Path) -> None:
    """A key that is not the certificate's is refused with both file names."""
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CAError) as info:
        make_tls_options(pki.cert, other)
    assert str(info.value) == f"key {other} does not match certificate {pki.cert}"


def test_make_tls_options_missing_certificate_names_file(pki: Pki, tmp_path: Path) -> None:
    """A certificate file that cannot be read is named in the error."""
    missing = tmp_path / "nope.crt"
    with pytest.raises(CAError) as info:
        make_tls_options(missing, pki.key)
    assert str(info.value) == f"cannot read certificate {missing}: No such file or directory"


def test_make_tls_options_garbage_certificate_names_file(pki: Pki, tmp_path: Path) -> None:
    """A certificate file without PEM certificates is named in the error."""
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate\n")
    with pytest.raises(CAError) as info:
        make_tls_options(bad, pki.key)
    assert str(info.value) == f"certificate {bad} is not a PEM certificate file"


def test_make_tls_options_garbage_key_names_file(pki: Pki, tmp_path: Path) -> None:
    """A key file that is not a PEM key is named in the error."""
    bad = tmp_path / "bad.key"
    bad.write_bytes(pki.cert.read_bytes())
    with pytest.raises(CAError) as info:
        make_tls_options(pki.cert, bad)
    assert str(info.value) == f"key {bad} is not a PEM private key"


def test_make_tls_options_encrypted_key_explains_passphrase(pki: Pki, tmp_path: Path) -> None:
    """A passphrase-protected key is refused with a hint rather than a prompt."""
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CAError, match="is encrypted; the server needs it without a passphrase"):
        make_tls_options(pki.cert, locked)


def test_make_tls_options_missing_chain_file_names_file(pki: Pki, tmp_path: Path) -> None:
    """An unreadable chain file is named in the error."""
    missing = tmp_path / "chain.pem"
    with pytest.raises(CAError, match=f"cannot read chain file {missing}"):
        make_tls_options(pki.cert, pki.key, chain_paths=[missing])


def test_make_tls_options_unknown_min_version_raises(pki: Pki) -> None:
    """Only '1.2' and '1.3' are accepted as minimum versions."""
    with pytest.raises(
        CAError, match=r"unsupported minimum TLS version '1.1' \(choose 1.2 or 1.3\)"
    ):
        make_tls_options(pki.cert, pki.key, min_version="1.1")


def test_make_tls_options_fullchain_certificate_file_splits_chain(pki: Pki, tmp_path: Path) -> None:
    """A cert file with leaf + CA (certbot's fullchain.pem) uses the leaf and sends the rest."""
    full = tmp_path / "fullchain.pem"
    full.write_bytes(pki.cert.read_bytes() + pki.ca.certificate_path.read_bytes())
    options = make_tls_options(full, pki.key)
    assert len(options.extraCertChain) == 1


def test_make_tls_options_rsa_certificate_serves_tls12(tmp_path: Path) -> None:
    """An rsa-3072 pair from our CA loads too (RSA keys take the same path as EC ones)."""
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("Test CA", progress=quiet)
    key, cert = authority.issue("mail.test", [], key_type="rsa-3072", progress=quiet)
    assert make_tls_options(cert, key).getContext() is not None


# --------------------------------------------------------------------------- permissions


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "k.pem"
    path.write_text("key")
    return path


def test_check_key_permissions_0600_returns_none(key_file: Path) -> None:
    """A 0600 key needs no warning."""
    os.chmod(key_file, 0o600)
    assert check_key_permissions(key_file) is None


def test_check_key_permissions_0644_warns_with_mode(key_file: Path) -> None:
    """A world-readable key gets the chmod advice with its mode."""
    os.chmod(key_file, 0o644)
    assert check_key_permissions(key_file) == (
        f"key file {key_file} is readable by group/others (mode 0644); chmod 600 it"
    )


def test_check_key_permissions_0640_warns(key_file: Path) -> None:
    """A group-readable key is also flagged."""
    os.chmod(key_file, 0o640)
    assert check_key_permissions(key_file) == (
        f"key file {key_file} is readable by group/others (mode 0640); chmod 600 it"
    )


def test_check_key_permissions_other_writable_warns_accessible(key_file: Path) -> None:
    """Write access for others, even without read, is flagged too."""
    os.chmod(key_file, 0o602)
    assert check_key_permissions(key_file) == (
        f"key file {key_file} is accessible by group/others (mode 0602); chmod 600 it"
    )


def test_check_key_permissions_missing_file_returns_none(tmp_path: Path) -> None:
    """A missing key is make_tls_options' to report, not a permissions problem."""
    assert check_key_permissions(tmp_path / "none.pem") is None
