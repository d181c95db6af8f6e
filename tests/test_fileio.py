"""Outputs appear complete or not at all, with the permissions a plain open/mkdir would give; digests
and the one checksum policy of every download."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import pytest

from reforbert.errors import ReforBertInputError
from reforbert.fileio import (
    atomic_directory,
    atomic_file,
    check_download,
    file_digest,
    refuse_to_overwrite,
    sha256_of,
    stream_digest,
)


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_finished_outputs_get_default_permissions(tmp_path):
    with atomic_file(tmp_path / "out.txt", "w") as handle:
        handle.write("done")
    with atomic_directory(tmp_path / "folder") as folder:
        (folder / "inside.txt").write_text("done")
    umask = current_umask()
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask


def test_a_failure_keeps_the_previous_version_and_leaves_no_temporary_files(tmp_path):
    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "out.txt", "w") as handle:
        handle.write("half")
        raise RuntimeError("crash while writing")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "folder") as folder:
        (folder / "new.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (tmp_path / "out.txt").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.txt"]


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "out.txt").write_text("mine")
    with pytest.raises(ReforBertInputError, match="out.txt"):
        refuse_to_overwrite(tmp_path / "out.txt", overwrite=False)
    refuse_to_overwrite(tmp_path / "out.txt", overwrite=True)


def test_digests_match_hashlib_and_copying_reads_the_stream_once(tmp_path):
    data = os.urandom(3 * 1024 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    for algorithm in ("md5", "sha1", "sha256"):
        assert file_digest(path, algorithm) == hashlib.new(algorithm, data).hexdigest()
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
    copy, blocks = io.BytesIO(), []
    digest = stream_digest(io.BytesIO(data), copy_to=copy, on_block=blocks.append, block_size=1024)
    assert digest == hashlib.sha256(data).hexdigest() and copy.getvalue() == data
    assert blocks == [1024, 1024, 1024, 7]


def test_checksum_policy_refuses_a_mismatch_unless_accepted(tmp_path, capsys):
    path = tmp_path / "file.tsv"
    check_download(path, "sha256", "AB" * 32, "ab" * 32, accept_mismatch=False)  # hex case does not matter
    with pytest.raises(ReforBertInputError) as refused:
        check_download(path, "md5", "0" * 32, "1" * 32, accept_mismatch=False, note="nothing was written")
    assert str(refused.value) == (
        f"{path}: md5 checksum mismatch: expected {'0' * 32}, got {'1' * 32}; nothing was written; "
        "pass --accept-checksum-mismatch to keep it anyway"
    )
    check_download(path, "md5", "0" * 32, "1" * 32, accept_mismatch=True)
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {path}: md5 checksum mismatch") and warning.count("\n") == 1
