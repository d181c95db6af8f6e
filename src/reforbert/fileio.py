"""Writing outputs so that nothing half-written ever sits under a final name, and fingerprinting files.

Every file or folder is first written beside its destination under a temporary name and renamed
into place only when complete; a crash leaves the previous version (if any) untouched.

Every file digest in ReforBERT (vocabulary fingerprints, results records, downloads) comes from
:func:`stream_digest`, and both downloaders apply one checksum policy, :func:`check_download`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from reforbert.errors import ReforBertInputError


def refuse_to_overwrite(path: str | Path, overwrite: bool) -> None:
    """Stop before a run would silently replace what a user already has."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ReforBertInputError("already exists; pass --overwrite to replace it", path)


def _give_default_permissions(path: str | Path, mode: int) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give the result what open/mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator:
    """Open a temporary file beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _give_default_permissions(tmp_name, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is moved aside first and deleted only after the new folder is in place,
    so at every instant one complete version exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    # mkdtemp creates the folder private (0700); give the result the permissions a plain mkdir would.
    _give_default_permissions(tmp, 0o777)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def iter_utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 file, split on LF only (a stray CR or U+2028
    inside a line stays there); invalid bytes stop reading with an error naming the file and line."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise ReforBertInputError(
                    f"invalid UTF-8 at byte {error.start} of the line ({error.reason})", path, line_number
                ) from None


# ----------------------------------------------------------------------------------------------
# Digests and the checksum policy

ACCEPT_MISMATCH_FLAG = "--accept-checksum-mismatch"
ALLOW_UNVERIFIED_FLAG = "--allow-unverified"


def stream_digest(
    source: BinaryIO,
    algorithm: str = "sha256",
    *,
    copy_to: BinaryIO | None = None,
    on_block: Callable[[int], None] | None = None,
    block_size: int = 1 << 20,
) -> str:
    """Hex digest of everything left in ``source``, optionally copying it to ``copy_to`` on the way.

    Hashing while copying reads a download once; ``on_block`` receives each block's size (progress).
    """
    digest = hashlib.new(algorithm)
    while block := source.read(block_size):
        digest.update(block)
        if copy_to is not None:
            copy_to.write(block)
        if on_block is not None:
            on_block(len(block))
    return digest.hexdigest()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as handle:
        return stream_digest(handle, algorithm)


def sha256_of(path: str | Path) -> str:
    return file_digest(path, "sha256")


def check_download(
    path: str | Path, algorithm: str, expected: str, actual: str, *, accept_mismatch: bool, note: str = ""
) -> None:
    """The one checksum policy of every download: a file whose digest differs from the recorded one
    is refused, naming the file and both digests, unless the user explicitly accepts the mismatch
    (a mirror that recompressed a file, say), in which case it is kept with a warning.

    ``note`` says what became of the file when it is refused ("nothing was written", ...).
    """
    if actual == expected.lower():
        return
    message = f"{algorithm} checksum mismatch: expected {expected.lower()}, got {actual}"
    if accept_mismatch:
        print(f"warning: {path}: {message}; kept because {ACCEPT_MISMATCH_FLAG} was given", file=sys.stderr)
        return
    note = f"; {note}" if note else ""
    raise ReforBertInputError(f"{message}{note}; pass {ACCEPT_MISMATCH_FLAG} to keep it anyway", path)
