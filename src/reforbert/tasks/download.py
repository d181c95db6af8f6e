"""``reforbert data download TASK``: fetch a benchmark's original files from their public homes.

Every file whose SHA-256 is known is verified before it appears under its final name; a mismatch
leaves nothing behind unless ``--accept-checksum-mismatch`` keeps it (with a warning), the policy
``reforbert corpus --download`` follows too. Files with no recorded checksum (the large official
training files) are fetched only with ``--allow-unverified``, and their checksum is printed so that
it can be recorded. Existing files are never replaced without ``--overwrite``.

Naver NER is not downloadable: Naver restricts its data to research and contest use with no
redistribution, and the benchmark's converted split has no official public home.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from reforbert.errors import ReforBertInputError
from reforbert.fileio import (
    ACCEPT_MISMATCH_FLAG,
    ALLOW_UNVERIFIED_FLAG,
    atomic_file,
    check_download,
    refuse_to_overwrite,
    stream_digest,
)


@dataclass(frozen=True)
class RemoteFile:
    """One benchmark file: where it lives, its checksum, and (for archives) its path inside the archive."""

    name: str  # file name written into the output folder
    url: str
    sha256: str | None  # None: no checksum is recorded, download only when explicitly allowed
    member: str | None = None  # the file's path inside a .tar.gz at ``url``


_GITHUB = "https://raw.githubusercontent.com"
_KORNLU = f"{_GITHUB}/kakaobrain/KorNLUDatasets/master"
_PAWSX = "https://storage.googleapis.com/paws/pawsx/x-final.tar.gz"

# Checksums are those of the copies the task readers were checked against (see each task's SOURCE notes).
SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "nsmc": (
        # The official split; the results used a documented re-sample because these were unavailable.
        RemoteFile("ratings_train.txt", f"{_GITHUB}/e9t/nsmc/master/ratings_train.txt", None),
        RemoteFile("ratings_test.txt", f"{_GITHUB}/e9t/nsmc/master/ratings_test.txt", None),
    ),
    "naver-ner": (),
    "paws": (
        RemoteFile(
            "dev_2k.tsv",
            _PAWSX,
            "ec6f963972f61f50b164bcf62c8ee06e6565c365d871d14d85e08f398d402b99",
            member="x-final/ko/dev_2k.tsv",
        ),
        RemoteFile("translated_train.tsv", _PAWSX, None, member="x-final/ko/translated_train.tsv"),
        RemoteFile("test_2k.tsv", _PAWSX, None, member="x-final/ko/test_2k.tsv"),
    ),
    "kornli": (
        RemoteFile(
            "xnli.dev.ko.tsv",
            f"{_KORNLU}/KorNLI/xnli.dev.ko.tsv",
            "821fb1c1c2e538ac2724a6132da36ffa379eb9a542ceb89243b3cf711377382c",
        ),
        RemoteFile("multinli.train.ko.tsv", f"{_KORNLU}/KorNLI/multinli.train.ko.tsv", None),
        RemoteFile("snli_1.0_train.ko.tsv", f"{_KORNLU}/KorNLI/snli_1.0_train.ko.tsv", None),
        RemoteFile("xnli.test.ko.tsv", f"{_KORNLU}/KorNLI/xnli.test.ko.tsv", None),
    ),
    "korsts": (
        RemoteFile(
            "sts-train.tsv",
            f"{_KORNLU}/KorSTS/sts-train.tsv",
            "b5aaa7f957d6ff46f4b6834a8b0f024a9234a6eefe9289aed66746b4533da3b8",
        ),
        RemoteFile(
            "sts-dev.tsv",
            f"{_KORNLU}/KorSTS/sts-dev.tsv",
            "d835b65b424401fbcce6be28a78159df8d61f5b19977ea7a0b83b8cb6105f393",
        ),
        RemoteFile("sts-test.tsv", f"{_KORNLU}/KorSTS/sts-test.tsv", None),
    ),
    "question-pair": (
        RemoteFile(
            "train.txt",
            f"{_GITHUB}/songys/Question_pair/master/train.txt",
            "addf4c88b19066ad55a09f466c5c3f6428b3f2bd5d55100d3ca5b93d9d8daff9",
        ),
        RemoteFile(
            "validation.txt",
            f"{_GITHUB}/songys/Question_pair/master/validation.txt",
            "3928c783f561f36547fd8e0c9d78a6e1d6013db3debcf559c4135aa5536badea",
        ),
        RemoteFile("test.txt", f"{_GITHUB}/songys/Question_pair/master/test.txt", None),
    ),
    "korquad": (
        RemoteFile(
            "KorQuAD_v1.0_dev.json",
            "https://korquad.github.io/dataset/KorQuAD_v1.0_dev.json",
            "25ffeb51e6c51ec02c071b60a10188e10005c144110f0d876b26079d80a35bdf",
        ),
        RemoteFile(
            "KorQuAD_v1.0_train.json", "https://korquad.github.io/dataset/KorQuAD_v1.0_train.json", None
        ),
    ),
}

_NOT_DOWNLOADABLE = {
    "naver-ner": "Naver restricts the NLP Challenge data to research and contest use with no redistribution; "
    "obtain it under those terms from github.com/naver/nlp-challenge and convert it to 'words<TAB>tags'",
}


def _copy_hashing(source: BinaryIO, destination: BinaryIO, total: int | None, label: str) -> str:
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False) as progress:
        return stream_digest(source, "sha256", copy_to=destination, on_block=progress.update)


def _fetch_to(url: str, destination: BinaryIO, label: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            return _copy_hashing(response, destination, int(length) if length else None, label)
    except (urllib.error.URLError, OSError) as error:
        raise ReforBertInputError(f"download of {url} failed: {error}") from error


def download_files(
    files: Sequence[RemoteFile],
    output_dir: str | Path,
    overwrite: bool = False,
    allow_unverified: bool = False,
    timeout: float = 60.0,
    accept_mismatch: bool = False,
) -> dict[str, str]:
    """Download ``files`` into ``output_dir``; return {file name: sha256} of what was written.

    Each file is written under a temporary name and renamed only after its checksum matched (or,
    with ``accept_mismatch``, after a warning that it did not).
    """
    output_dir = Path(output_dir)
    wanted = [remote for remote in files if remote.sha256 is not None or allow_unverified]
    if not wanted:
        names = ", ".join(remote.name for remote in files)
        raise ReforBertInputError(
            f"no recorded checksum for {names}; pass {ALLOW_UNVERIFIED_FLAG} to fetch them"
        )
    for remote in wanted:  # refuse before fetching anything
        refuse_to_overwrite(output_dir / remote.name, overwrite)
    written: dict[str, str] = {}
    archives: dict[str, Path] = {}
    scratch = Path(tempfile.mkdtemp(prefix="reforbert-download-"))
    try:
        for remote in wanted:
            target = output_dir / remote.name
            with atomic_file(target, "wb") as handle:
                if remote.member is None:
                    actual = _fetch_to(remote.url, handle, remote.name, timeout)
                else:
                    if remote.url not in archives:
                        archive = scratch / f"archive-{len(archives)}.tar.gz"
                        with open(archive, "wb") as archive_handle:
                            _fetch_to(remote.url, archive_handle, Path(remote.url).name, timeout)
                        archives[remote.url] = archive
                    actual = _extract_member(archives[remote.url], remote, handle)
                if remote.sha256 is not None:
                    check_download(
                        target,
                        "sha256",
                        remote.sha256,
                        actual,
                        accept_mismatch=accept_mismatch,
                        note=f"nothing was written (from {remote.url})",
                    )
            written[remote.name] = actual
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def _extract_member(archive: Path, remote: RemoteFile, destination: BinaryIO) -> str:
    """Copy one named member out of a tar archive (only that member is read: no paths are created)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            try:
                member = tar.getmember(remote.member)
            except KeyError:
                raise ReforBertInputError(f"{remote.url} holds no {remote.member}") from None
            source = tar.extractfile(member)
            if source is None:
                raise ReforBertInputError(f"{remote.member} in {remote.url} is not a regular file")
            return _copy_hashing(source, destination, member.size, remote.name)
    except tarfile.TarError as error:
        raise ReforBertInputError(f"{remote.url} is not a readable tar archive: {error}") from error


def download_task(
    task: str,
    output_dir: str | Path,
    overwrite: bool = False,
    allow_unverified: bool = False,
    accept_mismatch: bool = False,
) -> dict[str, str]:
    """Download the files of the benchmark registered as ``task`` into ``output_dir``."""
    if task not in SOURCES:
        raise ReforBertInputError(f"unknown task {task!r}; known tasks: {', '.join(SOURCES)}")
    if task in _NOT_DOWNLOADABLE:
        raise ReforBertInputError(f"{task} cannot be downloaded: {_NOT_DOWNLOADABLE[task]}")
    return download_files(
        SOURCES[task],
        output_dir,
        overwrite=overwrite,
        allow_unverified=allow_unverified,
        accept_mismatch=accept_mismatch,
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_example

    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    download = actions.add_parser(
        "download",
        help="Download a benchmark's files and verify their checksums.",
        description="Download a benchmark's files and verify their SHA-256 checksums. A file whose "
        "checksum differs from the recorded one is refused (nothing is written) unless "
        f"{ACCEPT_MISMATCH_FLAG} is given; a file with no recorded checksum is fetched only with "
        f"{ALLOW_UNVERIFIED_FLAG}.",
    )
    download.add_argument("task", choices=list(SOURCES), help="The benchmark whose files to download.")
    download.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="The folder to write the files into (default: data/TASK).",
    )
    download.add_argument("--overwrite", action="store_true", help="Replace files that already exist.")
    download.add_argument(
        ALLOW_UNVERIFIED_FLAG,
        action="store_true",
        help="Also fetch the official files that have no recorded checksum; their checksum is printed "
        "after the download so that it can be recorded.",
    )
    download.add_argument(
        ACCEPT_MISMATCH_FLAG,
        action="store_true",
        dest="accept_mismatch",
        help="Keep a file whose checksum differs from the recorded one, with a warning, instead of "
        "refusing it.",
    )
    for command in (parser, download):
        add_example(command, "reforbert data download korsts --output data/korsts")


def run(args: argparse.Namespace) -> int:
    output_dir = args.output if args.output is not None else Path("data") / args.task
    written = download_task(
        args.task,
        output_dir,
        overwrite=args.overwrite,
        allow_unverified=args.allow_unverified,
        accept_mismatch=args.accept_mismatch,
    )
    recorded = {remote.name: remote.sha256 for remote in SOURCES[args.task]}
    for name, digest in written.items():
        if recorded[name] is None:
            status = "NOT verified (no recorded checksum)"
        else:
            status = "verified" if digest == recorded[name] else "kept DESPITE a checksum mismatch"
        print(f"{output_dir / name}  sha256 {digest}  {status}")
    skipped = [remote.name for remote in SOURCES[args.task] if remote.name not in written]
    if skipped:
        print(f"skipped (no recorded checksum; pass {ALLOW_UNVERIFIED_FLAG}): {', '.join(skipped)}")
    return 0
