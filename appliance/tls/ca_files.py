"""The CA's files on disk, laid out the way `openssl ca` lays them out.

A CA directory holds::

    ca.crt              self-signed CA certificate (hand this to clients)
    private/ca.key      CA key, PEM, unencrypted, 0600 in a 0700 folder
    serial              next serial number, hex, like openssl's serial file
    index.txt           one line per issued certificate, openssl's format
    index.txt.attr      "unique_subject = no", for `openssl ca` run by hand
    newcerts/<SER>.pem  a copy of every certificate issued
    issued/<cn>.key/crt default output of `issue`

Because the files follow openssl's conventions an admin can still inspect them with
`openssl ca`/`openssl x509`. This module knows that layout: the paths, the serial file,
index.txt (its lines and its times) and how the CA reads, writes and locks its files, going
through appliance.durable and turning OSError into CAError. What goes into a certificate is
appliance.tls.ca's business. Everything here blocks.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance import durable
from appliance.errors import CAError

# The ASN.1 times as openssl stores them in index.txt: UTCTime, and GeneralizedTime outside
# 1950-2049.
_UTC_TIME = "%y%m%d%H%M%SZ"
_GENERALIZED_TIME = "%Y%m%d%H%M%SZ"


@dataclass(frozen=True)
class IssuedCert:
    """One line of index.txt."""

    status: str  # "V" valid, "R" revoked, "E" expired
    serial: int
    not_after: datetime  # aware, UTC
    subject: str  # "/CN=mail.163.com"
    path: Path  # newcerts/<SERIALHEX>.pem


# --------------------------------------------------------------------------- file access


def read_file(path: Path, what: str) -> bytes:
    """The bytes of path; CAError naming `what` ("CA key", "index"...) if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read {what} {path}: {e.strerror or e}") from e


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace path with data durably and with exactly `mode` from its creation.

    Readers see the old or the new file, never a mix, and a key is never readable by anyone
    else, not even for a moment (see durable.atomic_replace).
    """
    try:
        durable.atomic_replace(path, data, mode)
    except OSError as e:
        raise CAError(f"cannot write {path}: {e.strerror or e}") from e


def make_dir(path: Path, mode: int | None) -> None:
    """Create path and missing parents; only path itself, if we create it, gets `mode`.

    Missing parents get the umask's default; mode None gives path the umask's default too.
    """
    try:
        durable.make_dirs(path, mode)
    except FileExistsError:
        raise CAError(f"cannot create folder {path}: a file is in the way") from None
    except OSError as e:
        raise CAError(f"cannot create folder {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------------- serials and times


def serial_hex(serial: int) -> str:
    """A serial as openssl writes it: upper-case hex with an even number of digits."""
    text = format(serial, "X")
    return text if len(text) % 2 == 0 else "0" + text


def random_serial() -> int:
    """A first serial for a new CA: 16 hex digits whose top bit is clear.

    The clear top bit keeps the DER INTEGER positive and 8 bytes long. A random start keeps
    serials unique even if the CA is ever re-created with the same name; clients (Firefox)
    refuse two different certificates with one issuer+serial.
    """
    return secrets.randbits(63) | (1 << 60)


def index_time(when: datetime) -> str:
    """when as index.txt stores it: UTCTime until 2049, GeneralizedTime after."""
    fmt = _UTC_TIME if 1950 <= when.year < 2050 else _GENERALIZED_TIME
    return when.astimezone(UTC).strftime(fmt)


def parse_index_time(text: str) -> datetime:
    """The aware UTC datetime of an index.txt time; ValueError if it is not one."""
    fmt = _UTC_TIME if len(text) == 13 else _GENERALIZED_TIME
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def day(when: datetime) -> str:
    """The UTC date of when, as messages show it (2026-12-01)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d")


# --------------------------------------------------------------------------- the directory


class CAFiles:
    """The files of one CA directory; see the module docstring for the layout."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def certificate_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key_path(self) -> Path:
        return self.directory / "private" / "ca.key"

    @property
    def serial_path(self) -> Path:
        return self.directory / "serial"

    @property
    def index_path(self) -> Path:
        return self.directory / "index.txt"

    @property
    def attr_path(self) -> Path:
        return self.directory / "index.txt.attr"

    @property
    def newcerts_path(self) -> Path:
        return self.directory / "newcerts"

    def exists(self) -> bool:
        # ca.crt is written last by init(), so its presence means the CA is complete.
        return self.certificate_path.is_file()

    def _require(self) -> None:
        if not self.exists():
            raise CAError(f"no CA in {self.directory}: run 'mailappliance ca init' first")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the CA's lock (call after _require: the directory must exist).

        Serialises serial/index updates between the daemon and a concurrent CLI run without
        adding a lock file to openssl's layout: flock works on the directory itself.
        """
        with ExitStack() as stack:
            try:
                stack.enter_context(durable.exclusive_lock(self.directory))
            except OSError as e:
                raise CAError(f"cannot open {self.directory}: {e.strerror or e}") from e
            yield

    # ------------------------------------------------------------------ serial file

    def _read_serial(self) -> int:
        text = read_file(self.serial_path, "serial file").decode("ascii", "replace").strip()
        try:
            serial = int(text, 16)
        except ValueError:
            raise CAError(f"serial file {self.serial_path} does not hold a hex number") from None
        if serial < 1:
            raise CAError(f"serial file {self.serial_path} holds {text!r}; serials start at 1")
        return serial

    def _write_serial(self, serial: int) -> None:
        write_file(self.serial_path, (serial_hex(serial) + "\n").encode(), 0o644)

    # ------------------------------------------------------------------ the database

    def _create_database(self) -> None:
        """Write a new CA's serial (a random start), empty index.txt and index.txt.attr."""
        self._write_serial(random_serial())
        write_file(self.index_path, b"", 0o644)
        # Lets an admin re-issue a host name with `openssl ca` by hand, as we do on renewal.
        write_file(self.attr_path, b"unique_subject = no\n", 0o644)

    def _record(self, serial: int, cert_pem: bytes, not_after: datetime, subject: str) -> None:
        """Keep a copy in newcerts/ and append the certificate's line to index.txt."""
        hex_serial = serial_hex(serial)
        write_file(self.newcerts_path / f"{hex_serial}.pem", cert_pem, 0o644)
        line = f"V\t{index_time(not_after)}\t\t{hex_serial}\tunknown\t{subject}\n"
        index = read_file(self.index_path, "index") if self.index_path.exists() else b""
        if index and not index.endswith(b"\n"):
            index += b"\n"
        write_file(self.index_path, index + line.encode(), 0o644)

    def _read_index(self, now: datetime) -> list[IssuedCert]:
        """Every line of index.txt; valid ones past their expiry at now show as "E"."""
        text = read_file(self.index_path, "index").decode("utf-8", "replace")
        result = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                if len(fields) != 6 or fields[0] not in ("V", "R", "E"):
                    raise ValueError(line)
                status, expiry, _revoked, hex_serial, _file, subject = fields
                not_after = parse_index_time(expiry)
                serial = int(hex_serial, 16)
            except ValueError:
                raise CAError(f"{self.index_path}:{number}: not an index.txt line") from None
            if status == "V" and not_after < now:
                status = "E"
            result.append(
                IssuedCert(
                    status=status,
                    serial=serial,
                    not_after=not_after,
                    subject=subject,
                    path=self.newcerts_path / f"{hex_serial.upper()}.pem",
                )
            )
        return result
