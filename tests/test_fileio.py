"""Outputs appear complete or not at all, with the permissions a plain open/mkdir would give."""

from __future__ import annotations

import os
import stat

import pytest

from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory, atomic_file, refuse_to_overwrite


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
