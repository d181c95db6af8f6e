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


def check_positive(**values: float | None) -> None:
    """Refuse a command-line number that must be positive; the keyword names the flag (``max_steps``)."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ReforBertInputError(f"--{name.replace('_', '-')} must be positive, got {value}")
