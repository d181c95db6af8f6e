"""Where Wikipedia articles come from: a MediaWiki XML dump, WikiExtractor output, or the web.

Readers stream: they hold one page (or one document) at a time, so a multi-gigabyte dump is read
with constant memory. Every malformed input becomes a ``ReforBertInputError`` naming the file and
the line (or, for a compressed stream, the byte offset) where reading stopped.
"""

from __future__ import annotations

import bz2
import html
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from reforbert.errors import ReforBertInputError
from reforbert.fileio import ALLOW_UNVERIFIED_FLAG, check_download, file_digest

DEFAULT_DUMP_URL = "https://dumps.wikimedia.org/kowiki/latest/kowiki-latest-pages-articles.xml.bz2"
# Wikimedia publishes one checksum file per dump run, listing every file of the run.
DEFAULT_CHECKSUMS_URL = "https://dumps.wikimedia.org/kowiki/latest/kowiki-latest-sha1sums.txt"

ARTICLE_NAMESPACE = "0"
_REDIRECT_TEXT = re.compile(r"^\s*#\s*(?:redirect|넘겨주기)\b", re.IGNORECASE)
_EXTRACTED_FILE_NAME = re.compile(r"^wiki_\d+(?:\.bz2)?$")
_DOC_START = re.compile(r"^<doc\b([^>]*)>\s*$")
_DOC_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')

Progress = Callable[[int], None]  # called with the number of input bytes just consumed


def _open_maybe_bz2(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(raw file, decompressed stream); the raw file's position is the progress in input bytes."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller, together with the stream
    except FileNotFoundError:
        raise ReforBertInputError("no such file", path) from None
    except IsADirectoryError:
        raise ReforBertInputError("is a folder, expected a file", path) from None
    if path.name.endswith(".bz2"):
        return raw, bz2.BZ2File(raw)
    return raw, raw


def _local_name(tag: str) -> str:
    """`{http://www.mediawiki.org/xml/export-0.10/}page` -> `page` (the export version varies)."""
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((child for child in element if _local_name(child.tag) == name), None)


def iter_dump_pages(
    path: str | Path, skipped: Counter[str] | None = None, progress: Progress | None = None
) -> Iterator[tuple[str, str]]:
    """Yield (title, wikitext) of the articles in a MediaWiki dump (``.xml`` or ``.xml.bz2``).

    Only namespace-0 pages that are not redirects are yielded; the others are counted in
    ``skipped`` under "redirect" and "non-article namespace".
    """
    path = Path(path)
    skipped = Counter() if skipped is None else skipped
    raw, stream = _open_maybe_bz2(path)
    pages = 0
    reported = 0
    root: ET.Element | None = None
    try:
        for event, element in ET.iterparse(stream, events=("start", "end")):
            if root is None:
                root = element
                if _local_name(root.tag) != "mediawiki":
                    raise ReforBertInputError(
                        f"not a MediaWiki dump: the root element is <{_local_name(root.tag)}>, "
                        "expected <mediawiki>",
                        path,
                    )
            if event != "end" or _local_name(element.tag) != "page":
                continue
            pages += 1
            title, text, reason = _read_page(element)
            # Finished pages stay attached to the root unless cleared: that would hold the whole dump.
            root.clear()
            if progress is not None:
                position = raw.tell()
                progress(position - reported)
                reported = position
            if reason:
                skipped[reason] += 1
            else:
                yield title, text
    except ET.ParseError as error:
        line, column = error.position
        reason = str(error).split(":")[0]
        raise ReforBertInputError(f"not valid XML: {reason} (column {column})", path, line) from None
    except EOFError:
        raise ReforBertInputError(
            f"truncated bz2 file: the compressed stream ends early, at byte {raw.tell()}", path
        ) from None
    except OSError as error:  # bz2 raises OSError("Invalid data stream") for corrupt input
        raise ReforBertInputError(f"cannot decompress ({error}) near byte {raw.tell()}", path) from None
    finally:
        stream.close()
        raw.close()
    if pages == 0:
        raise ReforBertInputError("the dump has no <page> elements", path)


def _read_page(page: ET.Element) -> tuple[str, str, str | None]:
    """(title, wikitext, reason to skip or None) of one <page> element."""
    title_element = _child(page, "title")
    title = (title_element.text or "") if title_element is not None else ""
    namespace_element = _child(page, "ns")
    namespace = (namespace_element.text or "").strip() if namespace_element is not None else ARTICLE_NAMESPACE
    revision = _child(page, "revision")
    text_element = _child(revision, "text") if revision is not None else None
    text = (text_element.text or "") if text_element is not None else ""
    if namespace != ARTICLE_NAMESPACE:
        return title, text, "non-article namespace"
    if _child(page, "redirect") is not None or _REDIRECT_TEXT.match(text):
        return title, text, "redirect"
    return title, text, None


def extracted_files(path: str | Path) -> list[Path]:
    """The WikiExtractor files (``wiki_NN`` or ``wiki_NN.bz2``) under a folder, in a stable order."""
    path = Path(path)
    if not path.exists():
        raise ReforBertInputError("no such file or folder", path)
    if path.is_file():
        return [path]
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and _EXTRACTED_FILE_NAME.match(p.name)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise ReforBertInputError("no WikiExtractor files (named wiki_NN) in this folder", path)
    return files


def iter_extracted_docs(path: str | Path, progress: Progress | None = None) -> Iterator[tuple[str, str]]:
    """Yield (title, body) of every ``<doc …>`` block of a WikiExtractor file or folder."""
    documents = 0
    for file in extracted_files(path):
        for document in _iter_extracted_file(file, progress):
            documents += 1
            yield document
    if documents == 0:
        raise ReforBertInputError("no <doc …> blocks: not WikiExtractor output", path)


def _iter_extracted_file(path: Path, progress: Progress | None) -> Iterator[tuple[str, str]]:
    raw, stream = _open_maybe_bz2(path)
    title: str | None = None
    body: list[str] = []
    line_number = 0
    try:
        for line_number, line_bytes in enumerate(stream, start=1):
            if progress is not None:
                progress(len(line_bytes))
            try:
                line = line_bytes.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise ReforBertInputError(
                    f"invalid UTF-8 (byte {error.start} of the line)", path, line_number
                ) from None
            if title is None:
                start = _DOC_START.match(line)
                if start:
                    attributes = dict(_DOC_ATTRIBUTE.findall(start.group(1)))
                    title = html.unescape(attributes.get("title", "")).strip()
                    body = []
                elif line.strip():
                    raise ReforBertInputError(
                        "text outside a <doc …> block: not WikiExtractor output", path, line_number
                    )
            elif line.strip() == "</doc>":
                # WikiExtractor repeats the title as the first line of the body.
                if body and body[0].strip() == title:
                    body = body[1:]
                yield title, "\n".join(body)
                title = None
            else:
                body.append(line)
    except EOFError:
        raise ReforBertInputError(
            f"truncated bz2 file: the compressed stream ends early, at byte {raw.tell()}", path
        ) from None
    except OSError as error:
        raise ReforBertInputError(f"cannot decompress ({error}) near byte {raw.tell()}", path) from None
    finally:
        stream.close()
        raw.close()
    if title is not None:
        raise ReforBertInputError(f"the file ends inside <doc title={title!r}>: no </doc>", path, line_number)


# --- download -----------------------------------------------------------------------------------

_HASH_BY_HEX_LENGTH = {32: "md5", 40: "sha1", 64: "sha256"}


def published_checksum(checksums_url: str, file_name: str, timeout: float = 60) -> tuple[str, str]:
    """(algorithm, hex digest) of ``file_name`` in a ``<hex>  <name>`` checksum list (md5sums/sha1sums)."""
    try:
        with urllib.request.urlopen(checksums_url, timeout=timeout) as response:
            listing = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as error:
        raise ReforBertInputError(f"cannot fetch the checksum list: {error}", checksums_url) from None
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == file_name:
            algorithm = _HASH_BY_HEX_LENGTH.get(len(fields[0]))
            if algorithm:
                return algorithm, fields[0].lower()
    raise ReforBertInputError(f"no checksum for {file_name} in the checksum list", checksums_url)


def download_dump(
    url: str,
    destination: str | Path,
    *,
    sha1: str | None = None,
    md5: str | None = None,
    checksums_url: str | None = None,
    allow_unverified: bool = False,
    accept_mismatch: bool = False,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
    show_progress: bool = True,
) -> Path:
    """Download ``url`` to ``destination``, resuming a previous partial download, then verify it.

    Bytes arrive in ``destination + ".part"``, which is renamed only after the checksum matches,
    so the final name never holds an incomplete or corrupt file. An interrupted run leaves the
    ``.part`` file; the next run asks the server only for the missing bytes (HTTP Range).
    The checksum policy is that of every ReforBERT download (:func:`reforbert.fileio.check_download`):
    without a known checksum nothing is fetched unless ``allow_unverified``; a mismatch is refused
    unless ``accept_mismatch``.
    """
    destination = Path(destination)
    expected = _expected_checksum(url, sha1=sha1, md5=md5, checksums_url=checksums_url, timeout=timeout)
    if expected is None and not allow_unverified:
        raise ReforBertInputError(
            f"no checksum known for this download; pass --sha1, --md5 or --checksums-url, "
            f"or {ALLOW_UNVERIFIED_FLAG} to fetch it unverified",
            url,
        )
    if destination.exists():
        if expected is not None:
            _verify(destination, expected, accept_mismatch=accept_mismatch, remove_on_mismatch=False)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    _fetch_with_resume(url, partial, timeout=timeout, chunk_size=chunk_size, show_progress=show_progress)
    if expected is not None:
        _verify(
            partial, expected, accept_mismatch=accept_mismatch, remove_on_mismatch=True, shown_as=destination
        )
    else:
        digest = file_digest(partial)
        print(f"warning: {url} was not verified (no checksum known); its sha256 is {digest}", file=sys.stderr)
    os.replace(partial, destination)
    return destination


def _expected_checksum(
    url: str, *, sha1: str | None, md5: str | None, checksums_url: str | None, timeout: float
) -> tuple[str, str] | None:
    if sha1:
        return "sha1", sha1.strip().lower()
    if md5:
        return "md5", md5.strip().lower()
    if checksums_url is None and url == DEFAULT_DUMP_URL:
        checksums_url = DEFAULT_CHECKSUMS_URL
    if checksums_url:
        return published_checksum(checksums_url, url.rstrip("/").rsplit("/", 1)[-1], timeout=timeout)
    return None


def _verify(
    path: Path,
    expected: tuple[str, str],
    *,
    accept_mismatch: bool,
    remove_on_mismatch: bool,
    shown_as: Path | None = None,
) -> None:
    algorithm, want = expected
    got = file_digest(path, algorithm)
    note = ""
    if got != want and remove_on_mismatch and not accept_mismatch:
        # A corrupt partial file would be resumed forever; start over next time.
        path.unlink()
        note = "the download was removed, run again to fetch it anew"
    check_download(shown_as or path, algorithm, want, got, accept_mismatch=accept_mismatch, note=note)


def _fetch_with_resume(
    url: str, partial: Path, *, timeout: float, chunk_size: int, show_progress: bool
) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "reforbert-corpus"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after `offset`: the partial file is already complete
            return
        raise ReforBertInputError(f"download failed: HTTP {error.code} {error.reason}", url) from None
    except (urllib.error.URLError, OSError) as error:
        raise ReforBertInputError(f"download failed: {error}", url) from None
    with response:
        if offset and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise ReforBertInputError(f"the server resumed at the wrong place ({content_range!r})", url)
            mode = "ab"
        else:  # the server ignored the Range header: start from the beginning
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        with (
            open(partial, mode) as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc="download",
                disable=not show_progress,
            ) as bar,
        ):
            try:
                while chunk := response.read(chunk_size):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                raise ReforBertInputError(
                    f"download interrupted after {received} bytes ({error}); run again to resume", url
                ) from None
    if total is not None and received < total:
        raise ReforBertInputError(
            f"download interrupted after {received} of {total} bytes; run again to resume", url
        )
