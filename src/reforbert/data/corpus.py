"""`reforbert corpus`: Korean Wikipedia (XML dump or WikiExtractor output) -> clean text.

Output format (the pretraining text format): for each document its title on one line, then one
paragraph per line, and a blank line between documents; UTF-8 with LF line ends. The readers of
that format (:func:`iter_documents`, :func:`split_sentences`) live here too, beside the writer.

Documents are read in the main process and cleaned in worker processes, in batches submitted
through a bounded window, so memory stays constant however large the dump, and results are
written in input order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from reforbert.data import wiki_sources
from reforbert.data.wikitext import extracted_to_paragraphs, wikitext_to_paragraphs
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_file, iter_utf8_lines, refuse_to_overwrite

# Stubs shorter than this (after cleaning) are one- or two-sentence definitions ("X는 Y의 Z이다."):
# they give no sentence pairs for next-sentence prediction and repeat the same few patterns
# thousands of times. 200 characters keeps the median article (about 400) and drops the third
# of kowiki that is stubs.
DEFAULT_MIN_CHARS = 200
BATCH_SIZE = 64  # documents per task sent to a worker: large enough to amortise the pickling

DUMP = "dump"
EXTRACTED = "extracted"

REASON_EMPTY = "empty after cleaning"
REASON_SHORT = "shorter than min-chars"
REASON_DUPLICATE = "duplicate body"
REASON_NO_TITLE = "no title"


@dataclass
class CorpusStats:
    """What a corpus build read, kept and dropped (with the reason for every drop)."""

    output: Path | None = None
    input_bytes: int = 0
    documents_read: int = 0
    documents_kept: int = 0
    paragraphs_kept: int = 0
    characters_kept: int = 0  # characters of the kept bodies, newlines excluded
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def documents_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        lines = [
            f"corpus: {self.output}",
            f"  read {self.input_bytes:,} input bytes: "
            f"{self.documents_read + self.dropped_before_cleaning:,} pages or documents",
            f"  kept {self.documents_kept:,} documents, {self.paragraphs_kept:,} paragraphs, "
            f"{self.characters_kept:,} characters",
            f"  dropped {self.documents_dropped:,} documents:",
        ]
        lines += [f"    {reason}: {count:,}" for reason, count in sorted(self.dropped.items())]
        return "\n".join(lines)

    @property
    def dropped_before_cleaning(self) -> int:
        """Pages the readers skipped (redirects, other namespaces): never counted as read documents."""
        return sum(
            count
            for reason, count in self.dropped.items()
            if reason not in (REASON_EMPTY, REASON_SHORT, REASON_DUPLICATE, REASON_NO_TITLE)
        )


def input_kind(path: Path) -> str:
    """DUMP or EXTRACTED, from the name and, failing that, the first bytes."""
    if path.is_dir():
        return EXTRACTED
    if not path.exists():
        raise ReforBertInputError("no such file or folder", path)
    name = path.name.lower()
    if name.endswith((".xml", ".xml.bz2")):
        return DUMP
    head = _first_bytes(path).lstrip()
    if head.startswith(b"<doc"):
        return EXTRACTED
    if head.startswith((b"<?xml", b"<mediawiki")):
        return DUMP
    raise ReforBertInputError(
        "not a MediaWiki XML dump (*.xml, *.xml.bz2) nor WikiExtractor output (<doc …> blocks)", path
    )


def _first_bytes(path: Path, size: int = 512) -> bytes:
    raw, stream = wiki_sources._open_maybe_bz2(path)
    try:
        return stream.read(size)
    except (EOFError, OSError):
        return b""  # a corrupt bz2 file: the reader reports it with its byte offset
    finally:
        stream.close()
        raw.close()


def _input_bytes(path: Path, kind: str) -> int:
    if kind == EXTRACTED:
        return sum(file.stat().st_size for file in wiki_sources.extracted_files(path))
    return path.stat().st_size


def clean_batch(batch: list[tuple[str, str, str]]) -> list[tuple[str, list[str]]]:
    """(kind, title, text) documents -> (title, paragraphs); runs in a worker process."""
    cleaned = []
    for kind, title, text in batch:
        to_paragraphs = wikitext_to_paragraphs if kind == DUMP else extracted_to_paragraphs
        # The title must stay one non-empty line: readers take the first line of a document as its title.
        cleaned.append((" ".join(title.split()), to_paragraphs(text)))
    return cleaned


def _batches(items: Iterable[tuple[str, str, str]], size: int) -> Iterator[list[tuple[str, str, str]]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _clean_in_order(items: Iterable[tuple[str, str, str]], workers: int) -> Iterator[tuple[str, list[str]]]:
    """Clean documents on ``workers`` processes, yielding results in input order.

    ``Pool.imap`` would read its whole input ahead of the workers (unbounded memory on a dump);
    a window of a few batches per worker keeps every core busy and memory flat.
    """
    if workers <= 1:
        for batch in _batches(items, BATCH_SIZE):
            yield from clean_batch(batch)
        return
    with multiprocessing.Pool(workers) as pool:
        pending: deque = deque()
        for batch in _batches(items, BATCH_SIZE):
            pending.append(pool.apply_async(clean_batch, (batch,)))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def build_corpus(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    min_chars: int = DEFAULT_MIN_CHARS,
    workers: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> CorpusStats:
    """Clean Wikipedia ``inputs`` (dumps and/or WikiExtractor folders) into one text file."""
    output = Path(output)
    if not inputs:
        raise ReforBertInputError("no input given: pass a dump, a WikiExtractor folder, or --download")
    if min_chars < 0:
        raise ReforBertInputError(f"--min-chars must be >= 0, got {min_chars}")
    sources = [(Path(path), input_kind(Path(path))) for path in inputs]
    refuse_to_overwrite(output, overwrite)
    for path, _ in sources:
        if path.resolve() == output.resolve():
            raise ReforBertInputError("the output would replace this input", path)
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)

    stats = CorpusStats(output=output, input_bytes=sum(_input_bytes(path, kind) for path, kind in sources))
    seen_bodies: set[int] = set()  # 8-byte hashes: a million documents cost tens of MB, not the text
    with tqdm(
        total=stats.input_bytes, unit="B", unit_scale=True, desc="corpus", disable=not show_progress
    ) as bar:
        documents = _read_all(sources, stats.dropped, bar.update)
        with atomic_file(output, "w", encoding="utf-8") as handle:
            for title, paragraphs in _clean_in_order(documents, workers):
                stats.documents_read += 1
                reason = _reason_to_drop(paragraphs, min_chars, seen_bodies) if title else REASON_NO_TITLE
                if reason:
                    stats.dropped[reason] += 1
                    continue
                if stats.documents_kept:
                    handle.write("\n")
                handle.write(title + "\n")
                handle.write("".join(paragraph + "\n" for paragraph in paragraphs))
                stats.documents_kept += 1
                stats.paragraphs_kept += len(paragraphs)
                stats.characters_kept += sum(len(paragraph) for paragraph in paragraphs)
            if stats.documents_kept == 0:
                # Raised inside the block so that atomic_file removes the empty temporary file.
                raise ReforBertInputError(
                    f"nothing kept: {stats.documents_read} documents read, all dropped "
                    f"({_format_reasons(stats.dropped)})",
                    sources[0][0] if len(sources) == 1 else ", ".join(str(path) for path, _ in sources),
                )
    if show_progress:
        print(stats.summary())
    return stats


def _read_all(
    sources: Sequence[tuple[Path, str]], skipped: Counter[str], progress: wiki_sources.Progress
) -> Iterator[tuple[str, str, str]]:
    for path, kind in sources:
        if kind == DUMP:
            pages = wiki_sources.iter_dump_pages(path, skipped=skipped, progress=progress)
        else:
            pages = wiki_sources.iter_extracted_docs(path, progress=progress)
        for title, text in pages:
            yield kind, title, text


def _reason_to_drop(paragraphs: list[str], min_chars: int, seen_bodies: set[int]) -> str | None:
    if not paragraphs:
        return REASON_EMPTY
    body = "\n".join(paragraphs)
    if len(body) - (len(paragraphs) - 1) < min_chars:
        return REASON_SHORT
    key = int.from_bytes(hashlib.blake2b(body.encode("utf-8"), digest_size=8).digest(), "big")
    if key in seen_bodies:
        return REASON_DUPLICATE
    seen_bodies.add(key)
    return None


def _format_reasons(dropped: Counter[str]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(dropped.items())) or "no documents"


# --- reading the corpus back --------------------------------------------------------------------
# The vocabulary and the pretraining data read what build_corpus writes: per document a title line,
# then one paragraph per line, and a blank line between documents.

# A sentence ends at . ? ! (optionally followed by a closing quote or bracket) before a space.
# Korean prose ends nearly every sentence with "다." so this simple rule works well.
_SENTENCE_END = re.compile(r"(?<=[.?!])[\"'”’)\]]*\s+")


def check_corpus_files(corpus_files: Iterable[str | Path]) -> list[Path]:
    files = [Path(file) for file in corpus_files]
    if not files:
        raise ReforBertInputError("no corpus files given")
    for file in files:
        if not file.is_file():
            raise ReforBertInputError("no such corpus file", file)
    return files


def iter_documents(path: Path) -> Iterator[list[str]]:
    """Yield each document's paragraph lines (the title line is dropped, see below)."""
    document: list[str] = []
    for _, line in iter_utf8_lines(path):
        if line.strip():
            document.append(line.strip())
        elif document:
            yield document[1:]
            document = []
    if document:
        yield document[1:]
    # The title is dropped: it is not a sentence and the first paragraph nearly always repeats it.


def split_sentences(paragraph: str) -> list[str]:
    return [sentence for sentence in _SENTENCE_END.split(paragraph) if sentence]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_example
    from reforbert.fileio import ACCEPT_MISMATCH_FLAG, ALLOW_UNVERIFIED_FLAG

    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="MediaWiki dumps (*.xml, *.xml.bz2) and/or WikiExtractor output folders or files to clean.",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="The clean text file to write.")
    parser.add_argument(
        "--min-chars",
        type=int,
        default=DEFAULT_MIN_CHARS,
        help=f"Drop documents whose cleaned body is shorter than this many characters "
        f"(default {DEFAULT_MIN_CHARS}).",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="The number of cleaning processes (default: all cores)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output file.")
    parser.add_argument(
        "--download",
        nargs="?",
        const=wiki_sources.DEFAULT_DUMP_URL,
        default=None,
        metavar="URL",
        help=f"Download a dump first (default: {wiki_sources.DEFAULT_DUMP_URL}); a partial download "
        "is resumed.",
    )
    parser.add_argument(
        "--download-to",
        type=Path,
        default=None,
        help="Where to save the download (default: beside the output, under the URL's file name).",
    )
    parser.add_argument("--sha1", default=None, help="The expected SHA-1 of the download.")
    parser.add_argument("--md5", default=None, help="The expected MD5 of the download.")
    parser.add_argument(
        "--checksums-url",
        default=None,
        help="The dump's published checksum list (md5sums/sha1sums); the default URL uses its own list.",
    )
    parser.add_argument(
        ALLOW_UNVERIFIED_FLAG,
        action="store_true",
        help="Download even when no checksum is known for the URL; its sha256 is printed afterwards.",
    )
    parser.add_argument(
        ACCEPT_MISMATCH_FLAG,
        action="store_true",
        dest="accept_mismatch",
        help="Keep a download whose checksum differs from the expected one, with a warning, instead of "
        "refusing it.",
    )
    add_example(
        parser,
        "reforbert corpus --download -o corpus/kowiki.txt",
        "reforbert corpus text/AA text/AB -o corpus/kowiki.txt --workers 8",
    )


def run(args: argparse.Namespace) -> int:
    inputs = list(args.inputs)
    refuse_to_overwrite(args.output, args.overwrite)  # before a download that may take an hour
    if args.download:
        destination = args.download_to or args.output.parent / args.download.rstrip("/").rsplit("/", 1)[-1]
        inputs.append(
            wiki_sources.download_dump(
                args.download,
                destination,
                sha1=args.sha1,
                md5=args.md5,
                checksums_url=args.checksums_url,
                allow_unverified=args.allow_unverified,
                accept_mismatch=args.accept_mismatch,
            )
        )
    build_corpus(
        inputs, args.output, min_chars=args.min_chars, workers=args.workers, overwrite=args.overwrite
    )
    return 0
