"""The one exception type that the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class ReforBertInputError(Exception):
    """Bad user input: a missing or malformed file, an unknown label, an incompatible checkpoint.

    The message names the file and, where it applies, the line (``path:line: what is wrong``), so
    that a user can jump straight to the problem.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        location = ""
        if path is not None:
            location = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(location + message)
        self.path = path
        self.line = line
