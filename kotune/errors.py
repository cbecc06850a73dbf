"""User-facing errors.

A ``KotuneError`` is a mistake the user can fix (bad file, bad option). The CLI
prints it as one ``error: ...`` line and exits with code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class KotuneError(Exception):
    """A user mistake: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path + (f" line {line}" if line is not None else "") + ": "
        super().__init__(where + message)
