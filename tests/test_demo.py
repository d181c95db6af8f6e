"""The embedded sample data parses in its formats, and ``reforbert demo --quick`` runs end to end,
from a checkpoint (the default) and ``--from-scratch``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from reforbert import demo
from reforbert.cli import build_parser, main
from reforbert.configuration_reforbert import ReforBertConfig
from reforbert.data.vocab import iter_documents
from reforbert.demo import (
    SAMPLE_CORPUS_DIR,
    SAMPLE_SENTIMENT_DIR,
    resolve_inputs,
    run_demo,
    sample_corpus_files,
)
from reforbert.errors import ReforBertInputError
from reforbert.modeling_reforbert import ReforBertForPreTraining
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
        run_demo(output, from_scratch=True, quick=True)
    with pytest.raises(ReforBertInputError, match="did not write"):
        run_demo(output, from_scratch=True, quick=True, overwrite=True)
    assert (output / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_demo_rejects_corpus_together_with_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ReforBertInputError, match="not both"):
        run_demo(tmp_path / "demo", from_scratch=True, corpus=tmp_path, data_dir=tmp_path, quick=True)
    assert not (tmp_path / "demo").exists()


def test_demo_rejects_an_unknown_preset_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ReforBertInputError, match="unknown preset"):
        run_demo(tmp_path / "demo", from_scratch=True, preset="huge", quick=True)
    assert not (tmp_path / "demo").exists()


def test_demo_tells_clean_text_from_wikipedia_input(tmp_path: Path) -> None:
    clean = tmp_path / "clean.txt"
    clean.write_text("제목\n첫 문단이다.\n", encoding="utf-8")
    inputs = resolve_inputs(clean, None)
    assert inputs.raw_corpus is None and inputs.corpus_files == [clean] and not inputs.is_sample_corpus
    extracted = tmp_path / "AA"
    extracted.mkdir()
    wiki_file = extracted / "wiki_00"
    wiki_file.write_text('<doc id="1" title="제목">\n제목\n문단이다.\n</doc>\n', encoding="utf-8")
    inputs = resolve_inputs(extracted, None)
    assert inputs.raw_corpus == extracted and inputs.corpus_files == []
    # Fine-tuning stays on the embedded sentiment set.
    assert inputs.sentiment_train.parent == SAMPLE_SENTIMENT_DIR and inputs.sentiment_eval is not None


def test_demo_data_dir_needs_kowiki_and_nsmc(tmp_path: Path) -> None:
    with pytest.raises(ReforBertInputError, match="kowiki"):
        resolve_inputs(None, tmp_path)


def test_demo_data_dir_uses_the_shared_layout() -> None:
    default = Path(__file__).parents[1].parent / "shared" / "data"
    shared = Path(os.environ.get("REFORBERT_SHARED_DATA", default))
    if not (shared / "kowiki").is_dir():
        pytest.skip(f"no shared data at {shared}")
    inputs = resolve_inputs(None, shared)
    assert inputs.raw_corpus == shared / "kowiki"
    assert inputs.sentiment_train == shared / "tasks" / "nsmc" / "ratings_train.proxy.txt"
    assert inputs.sentiment_eval is None  # a dev split is carved out of the train file


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    output = tmp_path / "demo"
    summary = run_demo(output, from_scratch=True, quick=True)

    assert json.loads((output / "demo_summary.json").read_text(encoding="utf-8")) == summary
    assert list(summary["stage_seconds"]) == [
        "corpus",
        "vocabulary",
        "pretraining data",
        "pretraining",
        "fine-tuning",
        "report",
    ]
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
        run_demo(output, from_scratch=True, quick=True)


# ---------------------------------------------------------------------------------------------
# The default path: fine-tune a pretrained checkpoint (a tiny stand-in here)


def test_demo_without_the_released_checkpoint_says_what_to_pass(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo, "DEFAULT_MODEL", tmp_path / "models" / "reforbert-mini-kowiki")
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "--model PATH" in error and "--from-scratch" in error and "reforbert-mini-kowiki" in error
    assert not (tmp_path / "demo").exists()


def test_demo_pretraining_flags_need_from_scratch(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--model", str(tmp_path), "--preset", "mini", "--pretrain-minutes", "1"]) == 2
    assert "--preset, --pretrain-minutes: only with --from-scratch" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path), "--from-scratch"]) == 2
    assert "either --model or --from-scratch" in capsys.readouterr().err


def test_demo_keeps_old_flag_spellings_out_of_help(capsys) -> None:
    args = build_parser(["demo"]).parse_args(["demo", "--output-dir", "elsewhere", "--finetune-minutes", "3"])
    assert args.output == "elsewhere" and args.time_budget_minutes == 3.0
    assert "--output-dir is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = capsys.readouterr().out
    assert "--output-dir" not in help_text and "--finetune-minutes" not in help_text
    assert "example:\n  reforbert demo " in help_text


@pytest.fixture
def stand_in_checkpoint(tmp_path: Path, tiny_tokenizer) -> Path:
    """A tiny random ReforBERT stored in fp16 with its tokenizer, as the released checkpoint is."""
    folder = tmp_path / "stand-in-checkpoint"
    torch.manual_seed(0)
    config = ReforBertConfig.from_preset(
        "tiny", vocab_size=len(tiny_tokenizer), hidden_size=32, num_attention_heads=2, intermediate_size=64
    )
    ReforBertForPreTraining(config).half().save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_default_demo_fine_tunes_the_given_checkpoint(tmp_path: Path, stand_in_checkpoint: Path) -> None:
    output = tmp_path / "demo"
    summary = run_demo(output, model=stand_in_checkpoint, quick=True)

    assert list(summary["stage_seconds"]) == ["model", "fine-tuning", "report"]
    assert summary["checkpoint"] == str(stand_in_checkpoint)
    assert "pretraining" not in summary and not (output / "pretraining").exists()
    results = json.loads(Path(summary["paths"]["results_json"]).read_text(encoding="utf-8"))
    assert results["task"] == "nsmc" and results["num_eval_examples"] == 100 and results["steps"] == 3
    # Fine-tuned from an fp32 copy of the fp16 checkpoint, with the same weights.
    copied = ReforBertForPreTraining.from_pretrained(summary["paths"]["model"])
    original = ReforBertForPreTraining.from_pretrained(stand_in_checkpoint)
    name = "reforbert.embeddings.word_embeddings.weight"
    assert copied.state_dict()[name].dtype == torch.float32
    assert torch.equal(copied.state_dict()[name], original.state_dict()[name].float())
    table = Path(summary["paths"]["results_table"]).read_text(encoding="utf-8")
    assert "**stand-in-checkpoint (demo, sample sentiment set)**" in table
    assert (output / "RESULTS.png").read_bytes()[:8] == PNG_MAGIC
    # The demo may replace its own folder, model copy included.
    assert run_demo(output, model=stand_in_checkpoint, quick=True, overwrite=True)["checkpoint"]
