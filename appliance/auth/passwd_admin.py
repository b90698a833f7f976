"""Edits of the passwd file for `mailappliance user`: add, change the password, delete.

Each edit is a locked read-modify-write: an exclusive lock on `<file>.lock` serialises admin
commands (readers never need it), the file is parsed and refused if any line is broken, the
change keeps every other line (comments included) as it was, and the result replaces the file
atomically (durable.atomic_replace). A file the admin made 0640 (readable by a mail group)
stays 0640, anything else becomes 0600; the owner is kept. Edits block while hashing and
fsyncing: never call them on the reactor thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.auth.cram import cram_md5_secret
from appliance.auth.passwd_format import PasswdFileError, format_line, parse_line, parse_passwd
from appliance.auth.schemes import hash_password
from appliance.durable import atomic_replace, exclusive_lock
from appliance.names import is_user_address

if TYPE_CHECKING:
    from appliance.auth.passwd import PasswdFile

# change(lines, index): edits the file's lines in place; index maps each user to its line
Change = Callable[[list[str], dict[str, int]], None]


def add_user(
    passwd: PasswdFile,
    address: str,
    password: str,
    scheme: str = "BLF-CRYPT",
    cram_md5: bool = False,
) -> None:
    """Append a user; PasswdFileError if the address is taken or invalid."""
    address = _admin_address(address)
    stored = hash_password(password, scheme)
    cram = cram_md5_secret(password) if cram_md5 else None

    def change(lines: list[str], index: dict[str, int]) -> None:
        if address in index:
            raise PasswdFileError([f"{passwd.path}: {address} already exists"])
        lines.append(format_line([address, stored], cram))

    _edit(passwd, change)


def set_password(
    passwd: PasswdFile,
    address: str,
    password: str,
    scheme: str = "BLF-CRYPT",
    cram_md5: bool | None = None,
) -> None:
    """Replace a user's password, keeping the other fields.

    cram_md5: True stores a CRAM-MD5 secret, False removes it, None renews it only if the
    user had one (an old secret would still accept the old password).
    """
    address = _admin_address(address)
    stored = hash_password(password, scheme)
    secret = cram_md5_secret(password)

    def change(lines: list[str], index: dict[str, int]) -> None:
        if address not in index:
            raise PasswdFileError([f"{passwd.path}: no such user: {address}"])
        i = index[address]
        _, _, old_cram, fields = parse_line(lines[i].strip())
        keep = cram_md5 if cram_md5 is not None else old_cram is not None
        fields[0] = address
        fields[1] = stored
        lines[i] = format_line(fields, secret if keep else None)

    _edit(passwd, change)


def delete_user(passwd: PasswdFile, address: str) -> None:
    """Remove a user; PasswdFileError if there is no such user."""
    address = _admin_address(address)

    def change(lines: list[str], index: dict[str, int]) -> None:
        if address not in index:
            raise PasswdFileError([f"{passwd.path}: no such user: {address}"])
        del lines[index[address]]

    _edit(passwd, change)


def _admin_address(address: str) -> str:
    normalized = address.lower()
    if not is_user_address(normalized):
        raise PasswdFileError([f"expected an address like user@example.com, got {address!r}"])
    return normalized


def _edit(passwd: PasswdFile, change: Change) -> None:
    """Apply change to the file under the lock, replace it, and let passwd see it at once."""
    path = passwd.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(path.name + ".lock")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        users, problems = parse_passwd(data, str(path))
        if problems:
            raise PasswdFileError([*problems, f"{path}: fix these lines first"])
        lines = data.decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        index = {address: e.line - 1 for address, e in users.items()}
        change(lines, index)
        mode, owner = _mode_and_owner(path)
        text = "".join(line + "\n" for line in lines)
        atomic_replace(path, text.encode("utf-8"), mode, owner=owner)
    passwd.reload()


def _mode_and_owner(path: Path) -> tuple[int, tuple[int, int] | None]:
    """The replacement's mode and owner: 0640 stays 0640 (a mail group may read it), any other
    mode becomes 0600; the owner is kept. A new file is 0600 and ours."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0o600, None
    mode = 0o640 if stat.S_IMODE(st.st_mode) == 0o640 else 0o600
    return mode, (st.st_uid, st.st_gid)


__all__ = ["add_user", "delete_user", "set_password"]
