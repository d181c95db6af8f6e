"""The embedded sample data parses in its formats, and ``reforbert demo --quick`` runs end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from reforbert.data.vocab import iter_documents
from reforbert.demo import SAMPLE_CORPUS_DIR, SAMPLE_SENTIMENT_DIR, run_demo, sample_corpus_files
from reforbert.errors import ReforBertInputError
from reforbert.tasks import get_task

# What resources/README.md states about the sample data.
SAMPLE_DOCUMENTS = 136
SENTIMENT_COUNTS = {"train.txt": {0: 170, 1: 170}, "test.txt": {0: 50, 1: 50}}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sample_corpus_is_in_the_corpus_format() -> None:
    files = sample_corpus_files()
    titles: list[str] = []
    for path in files:
        raw = path.read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n") and not raw.endswith(b"\n\n"), path
        blocks = raw.decode("utf-8").strip("\n").split("\n\n")
        for block in blocks:
            lines = block.split("\n")
            assert all(line.strip() == line and line for line in lines), (path, lines[0])
            title, paragraphs = lines[0], lines[1:]
            # A title is a name, not a sentence; every article has several real paragraphs.
            assert len(title) <= 20 and not title.endswith("."), (path, title)
            assert len(paragraphs) >= 3 and all(p.endswith(".") for p in paragraphs), (path, title)
            titles.append(title)
        # The pipeline's own reader sees the same documents, with the title dropped.
        assert [len(doc) for doc in iter_documents(path)] == [len(b.split("\n")) - 1 for b in blocks]
    assert len(titles) == SAMPLE_DOCUMENTS
    assert len(set(titles)) == len(titles), [t for t, n in Counter(titles).items() if n > 1]
    assert all(path.parent == SAMPLE_CORPUS_DIR for path in files)


@pytest.mark.parametrize("name", sorted(SENTIMENT_COUNTS))
def test_sample_sentiment_reads_with_the_nsmc_task(name: str) -> None:
    examples = get_task("nsmc").read(SAMPLE_SENTIMENT_DIR / name)
    assert dict(Counter(example.label for example in examples)) == SENTIMENT_COUNTS[name]
    assert all(example.text_a and example.text_b is None for example in examples)


def test_sample_sentiment_ids_are_unique_and_splits_do_not_overlap() -> None:
    rows = {}
    for name in SENTIMENT_COUNTS:
        lines = (SAMPLE_SENTIMENT_DIR / name).read_text(encoding="utf-8").splitlines()
        assert lines[0] == "id\tdocument\tlabel"
        rows[name] = [line.split("\t") for line in lines[1:]]
    ids = [int(row[0]) for split in rows.values() for row in split]
    assert len(ids) == len(set(ids))
    train_texts = {row[1] for row in rows["train.txt"]}
    assert not train_texts & {row[1] for row in rows["test.txt"]}


def test_demo_refuses_an_existing_folder_and_never_deletes_foreign_files(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    output.mkdir()
    (output / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ReforBertInputError, match="already exists"):
        run_demo(output, quick=True)
    with pytest.raises(ReforBertInputError, match="did not write"):
        run_demo(output, quick=True, overwrite=True)
    assert (output / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_demo_rejects_corpus_together_with_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ReforBertInputError, match="not both"):
        run_demo(tmp_path / "demo", corpus=tmp_path, data_dir=tmp_path, quick=True)
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    output = tmp_path / "demo"
    summary = run_demo(output, quick=True)

    assert json.loads((output / "demo_summary.json").read_text(encoding="utf-8")) == summary
    assert list(summary["stage_seconds"]) == [
        "corpus", "vocabulary", "pretraining data", "pretraining", "fine-tuning", "report"]
    paths = {key: Path(value) for key, value in summary["paths"].items()}

    results = json.loads(paths["results_json"].read_text(encoding="utf-8"))
    assert results["task"] == "nsmc" and results["num_eval_examples"] == 100
    assert 0.0 <= results["metrics"]["accuracy"] <= 100.0
    assert summary["finetuning"]["accuracy"] == results["metrics"]["accuracy"]
    assert summary["pretraining"]["steps"] == 3

    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    model = AutoModelForMaskedLM.from_pretrained(paths["model"])
    assert len(tokenizer) == model.config.vocab_size == 1007
    encoded = tokenizer("서울은 대한민국의 수도이다.", return_tensors="pt")
    logits = model(**encoded).logits
    assert logits.shape == (1, encoded["input_ids"].shape[1], 1007)

    for key in ("loss_curves", "results_table_png"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC, key
    table = paths["results_table"].read_text(encoding="utf-8")
    assert f"{results['metrics']['accuracy']:.2f} (test, 100)" in table

    with pytest.raises(ReforBertInputError, match="already exists"):
        run_demo(output, quick=True)
