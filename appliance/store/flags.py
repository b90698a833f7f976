"""Message flags in Maildir names: system flags and keywords in the ':2,' suffix.

System flags are Maildir's capital letters (D F R S T); IMAP keywords ($Forwarded, Junk,
anything a client makes up) are the letters a..z, each standing for the keyword on that line
of the folder's `dovecot-keywords` file, as Dovecot keeps them:

    0 $Forwarded
    1 $Junk

so a Maildir moved between Dovecot and the appliance keeps its keywords. A folder holds at
most 26 keywords; one more is refused (KeywordsFull). Blocking: worker thread only.
"""

from __future__ import annotations

from pathlib import Path

from appliance.durable import FILE_MODE, atomic_replace, exclusive_lock

KEYWORDS_FILE = "dovecot-keywords"
MAX_KEYWORDS = 26
# Maildir info letters <-> IMAP system flags (RFC 3501 2.3.2)
LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
SYSTEM = {flag.upper(): letter for letter, flag in LETTERS.items()}  # "\\SEEN" -> "S"
SYSTEM_FLAGS = frozenset(LETTERS.values())


class KeywordsFull(ValueError):
    """A folder already has 26 keywords."""


def canonical(flag: str) -> str:
    """A system flag spelled as RFC 3501 does (\\seen -> \\Seen); a keyword unchanged."""
    letter = SYSTEM.get(flag.upper())
    return LETTERS[letter] if letter is not None else flag


class Keywords:
    """The keyword letters of one folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEYWORDS_FILE
        self.names: list[str] = []
        self._stamp: tuple[int, int] | None = None

    def load(self) -> list[str]:
        """The keywords, by letter index (re-read only when the file changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.names, self._stamp = [], None
            return self.names
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            names: list[str] = []
            for line in self.path.read_text("utf-8", "replace").splitlines():
                number, _, name = line.partition(" ")
                if number.isdigit() and name and int(number) < MAX_KEYWORDS:
                    index = int(number)
                    names.extend([""] * (index + 1 - len(names)))
                    names[index] = name
            self.names, self._stamp = names, stamp
        return self.names

    def flags_of(self, info: str) -> frozenset[str]:
        """The IMAP flags the letters after ':2,' stand for."""
        names = None
        flags = []
        for c in info:
            if c in LETTERS:
                flags.append(LETTERS[c])
            elif "a" <= c <= "z":
                if names is None:
                    names = self.load()
                index = ord(c) - 97
                if index < len(names) and names[index]:
                    flags.append(names[index])
        return frozenset(flags)

    def letters_of(self, flags: frozenset[str]) -> str:
        """The info letters for these flags, adding keywords not yet known to the file."""
        letters = []
        wanted = []
        for flag in flags:
            letter = SYSTEM.get(flag.upper())
            if letter is not None:
                letters.append(letter)
            elif not flag.startswith("\\"):
                wanted.append(flag)
        if wanted:
            letters += self._keyword_letters(wanted)
        return "".join(sorted(letters))

    def _keyword_letters(self, wanted: list[str]) -> list[str]:
        names = self.load()
        index = {name.lower(): i for i, name in enumerate(names) if name}
        if all(w.lower() in index for w in wanted):
            return [chr(97 + index[w.lower()]) for w in wanted]
        with exclusive_lock(self.path.with_name(KEYWORDS_FILE + ".lock")):
            names = list(self.load())
            index = {name.lower(): i for i, name in enumerate(names) if name}
            for w in wanted:
                if w.lower() not in index:
                    free = [i for i in range(MAX_KEYWORDS) if i >= len(names) or not names[i]]
                    if not free:
                        raise KeywordsFull("too many keywords in this folder")
                    names.extend([""] * (free[0] + 1 - len(names)))
                    names[free[0]] = w
                    index[w.lower()] = free[0]
            text = "".join(f"{i} {name}\n" for i, name in enumerate(names) if name)
            atomic_replace(self.path, text.encode("utf-8"), FILE_MODE)
            self.load()
        return [chr(97 + index[w.lower()]) for w in wanted]

    def known(self) -> list[str]:
        return [name for name in self.load() if name]
