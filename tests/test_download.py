"""Benchmark downloads against a local HTTP server: checksums, archives, refusing to overwrite."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from reforbert import cli
from reforbert.errors import ReforBertInputError
from reforbert.tasks import TASKS, download
from reforbert.tasks.download import RemoteFile, download_files, download_task

STS = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\ng\tf\t2012\t1\t5.000\t가\t가\n".encode()
PAWS = "id\tsentence1\tsentence2\tlabel\n4\t가\t나\t1\n".encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serve a folder with a plain file and a .tar.gz on 127.0.0.1; yields its base URL."""
    root = tmp_path_factory.mktemp("served")
    (root / "sts-dev.tsv").write_bytes(STS)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("x-final/ko/dev_2k.tsv")
        info.size = len(PAWS)
        tar.addfile(info, io.BytesIO(PAWS))
    (root / "x-final.tar.gz").write_bytes(buffer.getvalue())

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_matching_checksum_writes_the_file(server, tmp_path):
    out = tmp_path / "out"
    written = download_files([RemoteFile("sts-dev.tsv", f"{server}/sts-dev.tsv", sha256(STS))], out)
    assert written == {"sts-dev.tsv": sha256(STS)}
    assert (out / "sts-dev.tsv").read_bytes() == STS
    assert sorted(path.name for path in out.iterdir()) == ["sts-dev.tsv"]


def test_mismatching_checksum_leaves_no_file(server, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ReforBertInputError, match="checksum mismatch"):
        download_files([RemoteFile("sts-dev.tsv", f"{server}/sts-dev.tsv", "0" * 64)], out)
    assert list(out.iterdir()) == []  # neither the file nor a temporary


def test_mismatching_checksum_is_kept_only_when_accepted(server, tmp_path, monkeypatch, capsys):
    """The same policy as the corpus download: refuse, naming the file and both digests, unless accepted."""
    out = tmp_path / "out"
    remote = RemoteFile("sts-dev.tsv", f"{server}/sts-dev.tsv", "0" * 64)
    with pytest.raises(ReforBertInputError) as refused:
        download_files([remote], out)
    message = str(refused.value)
    assert message.startswith(f"{out / 'sts-dev.tsv'}: sha256 checksum mismatch: expected {'0' * 64}, got ")
    assert sha256(STS) in message and "--accept-checksum-mismatch" in message and "\n" not in message
    monkeypatch.setitem(download.SOURCES, "korsts", (remote,))
    assert cli.main(["data", "download", "korsts", "-o", str(out), "--accept-checksum-mismatch"]) == 0
    captured = capsys.readouterr()
    assert "kept DESPITE a checksum mismatch" in captured.out and "warning:" in captured.err
    assert (out / "sts-dev.tsv").read_bytes() == STS


def test_existing_file_is_not_replaced_without_overwrite(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sts-dev.tsv").write_text("mine")
    remote = RemoteFile("sts-dev.tsv", f"{server}/sts-dev.tsv", sha256(STS))
    with pytest.raises(ReforBertInputError, match="already exists"):
        download_files([remote], out)
    assert (out / "sts-dev.tsv").read_text() == "mine"
    download_files([remote], out, overwrite=True)
    assert (out / "sts-dev.tsv").read_bytes() == STS


def test_archive_member_is_extracted_and_verified(server, tmp_path):
    remote = RemoteFile(
        "dev_2k.tsv", f"{server}/x-final.tar.gz", sha256(PAWS), member="x-final/ko/dev_2k.tsv"
    )
    download_files([remote], tmp_path / "out")
    assert (tmp_path / "out" / "dev_2k.tsv").read_bytes() == PAWS
    missing = RemoteFile("test_2k.tsv", f"{server}/x-final.tar.gz", None, member="x-final/ko/test_2k.tsv")
    with pytest.raises(ReforBertInputError, match="holds no x-final/ko/test_2k.tsv"):
        download_files([missing], tmp_path / "out", allow_unverified=True)
    assert not (tmp_path / "out" / "test_2k.tsv").exists()


def test_files_without_checksum_need_explicit_permission(server, tmp_path):
    remote = RemoteFile("sts-dev.tsv", f"{server}/sts-dev.tsv", None)
    with pytest.raises(
        ReforBertInputError, match="no recorded checksum for sts-dev.tsv; pass --allow-unverified"
    ):
        download_files([remote], tmp_path / "a")
    assert not (tmp_path / "a").exists()
    verified = RemoteFile(
        "dev_2k.tsv", f"{server}/x-final.tar.gz", sha256(PAWS), member="x-final/ko/dev_2k.tsv"
    )
    assert set(download_files([remote, verified], tmp_path / "c")) == {
        "dev_2k.tsv"
    }  # the unverified one skipped
    assert download_files([remote], tmp_path / "b", allow_unverified=True) == {"sts-dev.tsv": sha256(STS)}


def test_unreachable_server_is_an_input_error(tmp_path):
    remote = RemoteFile("x.tsv", "http://127.0.0.1:9/x.tsv", "0" * 64)
    with pytest.raises(ReforBertInputError, match="download of http://127.0.0.1:9/x.tsv failed"):
        download_files([remote], tmp_path / "out")
    assert not (tmp_path / "out" / "x.tsv").exists()


def test_every_task_has_sources_and_naver_ner_is_refused(tmp_path):
    assert set(download.SOURCES) == set(TASKS)
    for files in download.SOURCES.values():
        for remote in files:
            assert remote.sha256 is None or len(remote.sha256) == 64
    with pytest.raises(ReforBertInputError, match="naver-ner cannot be downloaded"):
        download_task("naver-ner", tmp_path)


def test_command_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        download.SOURCES, "korsts", (RemoteFile("sts-dev.tsv", f"{server}/sts-dev.tsv", sha256(STS)),)
    )
    out = tmp_path / "korsts"
    assert cli.main(["data", "download", "korsts", "--output", str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    assert (out / "sts-dev.tsv").read_bytes() == STS
    assert cli.main(["data", "download", "korsts", "--output", str(out)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
