"""Exceptions that carry a message meant for the admin, never a traceback."""

from __future__ import annotations


class ApplianceError(Exception):
    """An error whose str() is a complete, user-facing sentence."""


class ConfigError(ApplianceError):
    """One or more configuration problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ZoneError(ApplianceError):
    """A zone file that cannot be loaded: names the file, the line and the problem."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")


class CAError(ApplianceError):
    """A certificate-authority operation that cannot be done (missing CA, bad name...)."""
