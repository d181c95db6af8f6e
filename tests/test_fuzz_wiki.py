"""Fuzzing `reforbert corpus`: WikiExtractor output and MediaWiki XML dumps, plain and bz2.

Every corrupted input ends in clean text (readable UTF-8, at least one document) or in one
``ReforBertInputError`` naming the input file; the output file appears only on success and no
temporary file is left beside it.
"""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import pytest
from fuzzing import (
    apply_file_corruptions,
    assert_one_line_error,
    error_lines,
    file_corruptions,
    leftovers,
    outcome,
    run_cli,
    run_fuzz,
)
from hypothesis import strategies as st
from test_corpus import CARTER_EXTRACTED, MIN_CHARS, SAMPLE_DUMP

from reforbert.cli import main
from reforbert.data.corpus import build_corpus, iter_documents

EXTRACTED = (
    CARTER_EXTRACTED
    + '<doc id="9" url="https://ko.wikipedia.org/wiki?curid=9" title="한국어">\n한국어\n\n'
    + "한국어는 대한민국과 조선민주주의인민공화국의 공용어이다. 세계에서 널리 쓰인다.\n</doc>\n"
)


def check_corpus_build(source: Path, output: Path) -> None:
    """Build the corpus; on success the readers read back what was kept, on failure nothing is left."""
    try:
        stats, error = outcome(
            lambda: build_corpus([source], output, min_chars=MIN_CHARS, workers=1, show_progress=False),
            source,
        )
        if error is None:
            documents = list(iter_documents(output))  # also checks that the output is valid UTF-8
            assert stats.documents_kept == len(documents) >= 1
            assert stats.paragraphs_kept == sum(len(paragraphs) for paragraphs in documents)
        else:
            assert not output.exists()
        assert leftovers(output.parent) == []
    finally:
        output.unlink(missing_ok=True)


def fuzz_one_source_file(source: Path, output: Path, valid: bytes) -> None:
    """Corrupt ``valid`` (before or, for a .bz2 name, after compressing it) into ``source`` and build
    the corpus from it."""
    compressed = source.name.endswith(".bz2")

    def case(drawn: tuple) -> None:
        corruptions, compressed_side = drawn
        if compressed and compressed_side:
            data = apply_file_corruptions(bz2.compress(valid), corruptions)
        else:
            data = apply_file_corruptions(valid, corruptions)
            data = bz2.compress(data) if compressed else data
        source.write_bytes(data)
        check_corpus_build(source, output)

    run_fuzz(st.tuples(file_corruptions(), st.booleans()), case)


@pytest.mark.parametrize("name", ["wiki_00", "wiki_00.bz2"])
def test_fuzz_wikiextractor_output(tmp_path: Path, name: str) -> None:
    source, output = tmp_path / "AA" / name, tmp_path / "out" / "corpus.txt"
    source.parent.mkdir()
    output.parent.mkdir()
    valid = EXTRACTED.encode("utf-8")

    fuzz_one_source_file(source, output, valid)


@pytest.mark.parametrize("name", ["kowiki-pages-articles.xml", "kowiki-pages-articles.xml.bz2"])
def test_fuzz_xml_dump(tmp_path: Path, name: str) -> None:
    source, output = tmp_path / name, tmp_path / "out" / "corpus.txt"
    output.parent.mkdir()
    valid = SAMPLE_DUMP.encode("utf-8")

    fuzz_one_source_file(source, output, valid)


def test_fuzz_wikiextractor_folder(tmp_path: Path) -> None:
    """A folder of several files: the error names the file that is broken, not just the folder."""
    folder, output = tmp_path / "extracted", tmp_path / "out" / "corpus.txt"
    output.parent.mkdir()
    valid = EXTRACTED.encode("utf-8")

    def case(drawn: tuple) -> None:
        corruptions, which = drawn
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "AA").mkdir(parents=True)
        files = [folder / "AA" / f"wiki_0{index}" for index in range(3)]
        for file in files:
            file.write_bytes(valid)
        files[which].write_bytes(apply_file_corruptions(valid, corruptions))
        stats, error = outcome(
            lambda: build_corpus([folder], output, min_chars=MIN_CHARS, workers=1, show_progress=False),
            files[which],
            folder,
        )
        if error is not None and str(files[which]) not in str(error):
            # Only a verdict on the whole input may name the folder instead of a file.
            assert "nothing kept" in str(error) or "no <doc" in str(error), str(error)
        assert output.exists() == (error is None)
        output.unlink(missing_ok=True)
        assert leftovers(output.parent) == []

    run_fuzz(st.tuples(file_corruptions(), st.integers(0, 2)), case)


def test_cli_corrupt_dump_and_cp949_extracted_output(tmp_path: Path, capsys) -> None:
    dump = tmp_path / "kowiki-pages-articles.xml.bz2"
    dump.write_bytes(bz2.compress(SAMPLE_DUMP.encode("utf-8"))[:-40])
    output = tmp_path / "corpus.txt"
    result = run_cli("corpus", str(dump), "--output", str(output), "--workers", "1")
    assert_one_line_error(result, "corpus", str(dump), "truncated bz2")
    # The same path in-process (a second interpreter would only cost time).
    extracted = tmp_path / "wiki_00"
    extracted.write_bytes(EXTRACTED.encode("cp949"))
    code = main(["corpus", str(extracted), "--output", str(output), "--workers", "1"])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"reforbert corpus: error: {extracted}:1: ") and "UTF-8" in lines[0]
    assert not output.exists() and leftovers(tmp_path) == []
