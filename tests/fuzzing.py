"""Corruptions for the input-reader fuzz tests, and the one property every reader must keep.

A fuzz test starts from a small valid file of one format, applies a few corruptions drawn by
Hypothesis (truncation, flipped or inserted bytes, a dropped or added column, another encoding,
an edited JSON value, a deleted file), and calls the reader. The reader must either return a
correct result or raise ``ReforBertInputError`` naming the file (and a line inside it where it
gives one); any other exception fails the test, and Hypothesis shrinks it to a small example.

``REFORBERT_FUZZ_EXAMPLES`` sets the number of cases per format (200 by default); derandomised
settings make every run of the suite try the same cases.
"""

from __future__ import annotations

import bz2
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reforbert.errors import ReforBertInputError

FUZZ_EXAMPLES = int(os.environ.get("REFORBERT_FUZZ_EXAMPLES", "200"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,  # the same cases on every machine, whatever an earlier run found
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ENCODINGS = ("cp949", "utf-16", "utf-16-le", "latin-1", "utf-8-sig")

# Positions: mostly near the start, where headers and first records live, sometimes anywhere.
_positions = st.one_of(st.integers(0, 400), st.integers(0, 1 << 24))
_short_bytes = st.binary(min_size=1, max_size=8)
_odd_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\t\n\r \"'\\{}[]<>&;:,=|#0-9가힣\ufeff\x00")), st.characters(codec="utf-8")
    ),
    min_size=1,
    max_size=12,
)


@dataclass(frozen=True)
class Corruption:
    """One edit of a file's bytes; ``repr`` is what Hypothesis prints for a failing case."""

    kind: str
    position: int = 0
    size: int = 0
    payload: Any = None

    def apply(self, data: bytes) -> bytes:
        at = self.position % (len(data) + 1)
        if self.kind == "truncate":
            return data[:at]
        if self.kind == "flip":
            if not data:
                return data
            at %= len(data)
            return data[:at] + bytes([data[at] ^ (self.size or 0xFF)]) + data[at + 1 :]
        if self.kind == "insert":
            return data[:at] + self.payload + data[at:]
        if self.kind == "delete":
            return data[:at] + data[at + self.size :]
        if self.kind == "repeat":
            return data[:at] + data[at : at + self.size] * 2 + data[at + self.size :]
        if self.kind == "empty":
            return b""
        if self.kind == "reencode":
            return data.decode("utf-8", errors="replace").encode(self.payload, errors="replace")
        if self.kind == "crlf":
            return data.replace(b"\n", b"\r\n")
        if self.kind == "insert_text":
            return data[:at] + self.payload.encode("utf-8") + data[at:]
        if self.kind in ("drop_line", "repeat_line"):
            lines = data.split(b"\n")
            index = self.position % len(lines)
            if self.kind == "drop_line":
                del lines[index]
            else:
                lines.insert(index, lines[index])
            return b"\n".join(lines)
        if self.kind in ("drop_column", "add_column"):
            return _edit_columns(data, self.kind, self.position, self.size, self.payload)
        raise AssertionError(self.kind)


def _edit_columns(data: bytes, kind: str, line: int, column: int, payload: Any) -> bytes:
    """Drop or add a tab-separated column on one line (``line >= 0``) or on every line (``line < 0``)."""
    lines = data.split(b"\n")
    chosen = range(len(lines)) if line < 0 else [line % len(lines)]
    for index in chosen:
        fields = lines[index].split(b"\t")
        at = column % (len(fields) + (kind == "add_column"))
        if kind == "drop_column":
            del fields[at]
        else:
            fields.insert(at, payload.encode("utf-8"))
        lines[index] = b"\t".join(fields)
    return b"\n".join(lines)


def byte_corruptions() -> st.SearchStrategy[Corruption]:
    """Edits that know nothing of the format: for binary and text files alike."""
    return st.one_of(
        st.builds(Corruption, st.just("truncate"), _positions),
        st.builds(Corruption, st.just("flip"), _positions, st.integers(1, 255)),
        st.builds(Corruption, st.just("insert"), _positions, st.just(0), _short_bytes),
        st.builds(Corruption, st.just("delete"), _positions, st.integers(1, 64)),
        st.builds(Corruption, st.just("repeat"), _positions, st.integers(1, 64)),
        st.just(Corruption("empty")),
    )


def text_corruptions(columns: bool = False) -> st.SearchStrategy[Corruption]:
    """Byte edits plus what happens to text files: other encodings, CRLF, odd characters, lost lines."""
    options = [
        byte_corruptions(),
        st.builds(Corruption, st.just("reencode"), payload=st.sampled_from(ENCODINGS)),
        st.just(Corruption("crlf")),
        st.builds(Corruption, st.just("insert_text"), _positions, st.just(0), _odd_text),
        st.builds(Corruption, st.just("drop_line"), st.integers(0, 1 << 16)),
        st.builds(Corruption, st.just("repeat_line"), st.integers(0, 1 << 16)),
    ]
    if columns:
        line = st.one_of(st.just(-1), st.integers(0, 1 << 16))
        options += [
            st.builds(Corruption, st.just("drop_column"), line, st.integers(0, 8)),
            st.builds(Corruption, st.just("add_column"), line, st.integers(0, 8), _odd_text),
        ]
    return st.one_of(*options)


def corruption_lists(single: st.SearchStrategy[Corruption]) -> st.SearchStrategy[list[Corruption]]:
    return st.lists(single, min_size=1, max_size=3)


def corrupt(data: bytes, corruptions: list[Corruption]) -> bytes:
    for corruption in corruptions:
        data = corruption.apply(data)
    return data


# ------------------------------------------------------------------ JSON documents

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    # Small enough that a model built from an edited config.json stays small (sizes, layer counts).
    st.integers(-1024, 1024),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


@dataclass(frozen=True)
class JsonEdit:
    """Replace or delete the n-th value of a JSON document (counted depth-first)."""

    node: int
    delete: bool
    value: Any = None

    def apply(self, document: Any) -> Any:
        nodes = list(_walk(document))
        container, key = nodes[self.node % len(nodes)]
        if container is None:  # the root itself
            return None if self.delete else self.value
        if self.delete:
            del container[key]
        else:
            container[key] = self.value
        return document


def _walk(value: Any, container: Any = None, key: Any = None):
    yield container, key
    if isinstance(value, dict):
        for child_key in list(value):
            yield from _walk(value[child_key], value, child_key)
    elif isinstance(value, list):
        for index in range(len(value)):
            yield from _walk(value[index], value, index)


json_edits = st.builds(JsonEdit, st.integers(0, 1 << 16), st.booleans(), json_values)


def edit_json(data: bytes, edits: list[JsonEdit]) -> bytes:
    document = json.loads(data)
    for edit in edits:
        document = edit.apply(document)
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def file_corruptions(json_file: bool = False, columns: bool = False) -> st.SearchStrategy:
    """A list of corruptions for one file: byte/text edits, or (for JSON) value edits."""
    text = corruption_lists(text_corruptions(columns))
    if not json_file:
        return text.map(lambda edits: ("bytes", edits))
    return st.one_of(
        text.map(lambda edits: ("bytes", edits)),
        st.lists(json_edits, min_size=1, max_size=3).map(lambda edits: ("json", edits)),
    )


def apply_file_corruptions(data: bytes, corruptions: tuple[str, list]) -> bytes:
    kind, edits = corruptions
    return edit_json(data, edits) if kind == "json" else corrupt(data, edits)


# ------------------------------------------------------------------ the property


def check_input_error(error: ReforBertInputError, *paths: Path) -> None:
    """The error names one of ``paths`` (a file, or the folder holding it) and a line inside it."""
    message = str(error)
    assert "\n" not in message, f"an error message must be one line: {message!r}"
    named = [Path(p) for p in paths if str(p) in message]
    assert named, f"the error names none of {[str(p) for p in paths]}: {message}"
    if error.line is not None:
        assert error.path is not None
        file = Path(error.path)
        if file.is_file():
            data = file.read_bytes()
            if file.name.endswith(".bz2"):  # lines count in the decompressed text
                with contextlib.suppress(OSError, EOFError, ValueError):
                    data = bz2.decompress(data)
            # XML parsers also end a line at a lone CR, as the XML specification says.
            line_count = (
                max(data.count(b"\n"), data.replace(b"\r\n", b"\n").count(b"\r") + data.count(b"\n")) + 1
            )
            assert 1 <= error.line <= line_count, f"line {error.line} outside the file: {message}"


def run_fuzz(strategy: st.SearchStrategy, case: Callable[[Any], None]) -> int:
    """Run ``case`` on FUZZ_EXAMPLES drawn values; fail unless that many cases really ran."""
    calls = 0

    @FUZZ_SETTINGS
    @given(strategy)
    def fuzz(value: Any) -> None:
        nonlocal calls
        calls += 1
        case(value)

    fuzz()
    assert calls >= FUZZ_EXAMPLES, f"only {calls} cases ran"
    return calls


def outcome(reader: Callable[[], Any], *named: Path) -> tuple[Any, ReforBertInputError | None]:
    """(result, None) or (None, error) after checking that the error names one of ``named``."""
    try:
        return reader(), None
    except ReforBertInputError as error:
        check_input_error(error, *named)
        return None, error


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders that a failed write left behind (atomic writes use a leading dot)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# ------------------------------------------------------------------ the command line

# tqdm's redraws all show the elapsed time in brackets: "corpus: 0.00B [00:00, ?B/s]",
# "corpus:  50%|█   | 1/2 [00:01<00:01, 3.0B/s]".
_PROGRESS_BAR = re.compile(r"\[\d+:\d\d(?::\d\d)?[<,\]]")


def run_cli(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``reforbert ARGUMENTS`` in a fresh interpreter, as a user runs it."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "reforbert.cli", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=300,
    )


def error_lines(stderr: str) -> list[str]:
    """stderr without progress-bar redraws (tqdm writes them to stderr)."""
    pieces = re.split(r"[\r\n]+", stderr)
    return [
        piece
        for piece in pieces
        if piece.strip() and (piece.startswith("reforbert ") or not _PROGRESS_BAR.search(piece))
    ]


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, *expected: str) -> str:
    lines = error_lines(result.stderr)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"reforbert {command}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]
