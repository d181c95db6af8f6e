"""``reforbert demo``: fine-tune the released checkpoint on a sentiment sample, or run the whole pipeline.

By default the demo takes the released checkpoint ``models/reforbert-mini-kowiki`` (a ``mini``
ReforBERT pretrained on the Korean Wikipedia; ``--model`` picks another model folder) and fine-tunes
it in a few minutes on 2 CPU cores. Stages, each with a banner and its wall-clock time:

1. model        -- the checkpoint, copied with fp32 weights (it is stored in fp16; training wants fp32)
2. fine-tuning  -- sentiment classification with the NSMC task (``reforbert finetune nsmc``) on the
                   embedded sample, or on NSMC itself with ``--data-dir``
3. report       -- the results table in Markdown and PNG (``reforbert report``)

``--from-scratch`` runs the whole pipeline instead, with a tiny model pretrained for minutes:

1. corpus       -- the embedded sample corpus (already clean text), or ``--corpus`` / ``--data-dir``
                   cleaned with ``reforbert corpus``
2. vocabulary   -- a SentencePiece BPE vocabulary (``reforbert vocab``)
3. pretraining data -- MLM + NSP instances (``reforbert pretraining-data``)
4. pretraining  -- a time-boxed run of a tiny ReforBERT (``reforbert pretrain``) and its loss plot
5. fine-tuning  -- as above
6. report       -- as above

The sample corpus is about 150 KB of Korean text, far too little for the real 8000-piece
vocabulary: trained on the sample, more than half of 8000 pieces occur at most once in it, and the
embedding table would dwarf a tiny model. 3000 pieces give the most pieces seen five times or more,
so ``--from-scratch`` trains 3000 on the sample and says so; with ``--corpus`` or ``--data-dir`` it
keeps 8000. Its default budgets (4 minutes of pretraining, 2 of fine-tuning) keep it under 10 minutes
on 2 CPU cores; a model pretrained for a few minutes on a few pages shows that every stage works and
where its outputs go, not what ReforBERT can score.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reforbert.configuration_reforbert import PRESETS
from reforbert.errors import ReforBertInputError, check_positive
from reforbert.fileio import atomic_file

RESOURCES = Path(__file__).resolve().parent / "resources"
SAMPLE_CORPUS_DIR = RESOURCES / "sample_corpus"
SAMPLE_SENTIMENT_DIR = RESOURCES / "sample_sentiment"
# The released checkpoint lives in the repository, beside the package's source folder.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "reforbert-mini-kowiki"

SAMPLE_VOCAB_SIZE = 3000
QUICK_VOCAB_SIZE = 1000
# Reviews are short; 128 tokens also holds two sample-corpus sentences for next-sentence prediction.
MAX_SEQ_LEN = 128
# Tiny models trained for minutes need a far higher peak rate than BERT-base's 1e-4.
PRETRAIN_LEARNING_RATE = 1e-3
PRETRAIN_BATCH_SIZE = 32
# NSMC's published 5e-5 suits pretrained base models; small models need more (on the sample set,
# fine-tuning the --from-scratch tiny model, 5e-4 beat both 1e-4 and 1e-3).
FINETUNE_LEARNING_RATE = 5e-4
# For the released mini checkpoint, the rate chosen for NSMC on a tuning split carved from its training
# data (experiments/kowiki_mini/sweep/choice.json: 1e-3 beat 3e-4).
RELEASED_FINETUNE_LEARNING_RATE = 1e-3
# The sample corpus is small: several passes with different sentence-pair splits give more instances.
SAMPLE_DUPE_FACTOR = 5
# On real data, score on a bounded subset so that evaluation stays within the demo's minutes.
DATA_DIR_MAX_EVAL_EXAMPLES = 5000
DATA_DIR_DEV_FRACTION = 0.1

SUMMARY_FILE = "demo_summary.json"
# Everything the demo writes in its output folder; --overwrite deletes a folder holding only these.
DEMO_ENTRIES = frozenset(
    {
        "corpus",
        "vocab",
        "pretraining-data",
        "pretraining",
        "model",
        "results",
        "RESULTS.md",
        "RESULTS.png",
        SUMMARY_FILE,
    }
)


@dataclass(frozen=True)
class DemoInputs:
    """Where the demo's text and sentiment files come from, and how to describe them."""

    description: str
    raw_corpus: Path | None  # a Wikipedia dump or WikiExtractor output still to be cleaned
    corpus_files: list[Path]  # clean text, when no cleaning is needed
    sentiment_train: Path
    sentiment_eval: Path | None  # None: carve a dev split out of the train file
    is_sample_corpus: bool


def sample_corpus_files() -> list[Path]:
    files = sorted(SAMPLE_CORPUS_DIR.glob("*.txt"))
    if not files:
        raise ReforBertInputError("the sample corpus is missing from the package", SAMPLE_CORPUS_DIR)
    return files


def resolve_inputs(corpus: str | Path | None, data_dir: str | Path | None) -> DemoInputs:
    """The corpus and the sentiment files for the demo's options."""
    from reforbert.data.corpus import input_kind

    if corpus is not None and data_dir is not None:
        raise ReforBertInputError("give either --corpus or --data-dir, not both")
    sample_train, sample_eval = SAMPLE_SENTIMENT_DIR / "train.txt", SAMPLE_SENTIMENT_DIR / "test.txt"
    if data_dir is not None:
        data_dir = Path(data_dir)
        kowiki = data_dir / "kowiki"
        nsmc_train = data_dir / "tasks" / "nsmc" / "ratings_train.proxy.txt"
        for path in (kowiki, nsmc_train):
            if not path.exists():
                raise ReforBertInputError("not found: --data-dir must hold kowiki/ and tasks/nsmc/", path)
        return DemoInputs(f"Korean Wikipedia and NSMC from {data_dir}", kowiki, [], nsmc_train, None, False)
    if corpus is not None:
        corpus = Path(corpus)
        if not corpus.exists():
            raise ReforBertInputError("no such file or folder", corpus)
        try:
            input_kind(corpus)
            raw, clean = corpus, []
        except ReforBertInputError:
            # Neither a dump nor WikiExtractor output: clean text in the corpus format.
            raw, clean = None, [corpus]
        return DemoInputs(f"the corpus {corpus}", raw, clean, sample_train, sample_eval, False)
    files = sample_corpus_files()
    return DemoInputs("the embedded sample data", None, files, sample_train, sample_eval, True)


def prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse an existing folder unless ``overwrite``; never delete anything the demo did not write."""
    if not output_dir.exists():
        return
    if not overwrite:
        raise ReforBertInputError("already exists; pass --overwrite to replace it", output_dir)
    if not output_dir.is_dir():
        raise ReforBertInputError("exists and is not a folder", output_dir)
    foreign = sorted(entry.name for entry in output_dir.iterdir() if entry.name not in DEMO_ENTRIES)
    if foreign:
        raise ReforBertInputError(
            f"holds files the demo did not write ({', '.join(foreign[:5])}); refusing to delete it",
            output_dir,
        )
    shutil.rmtree(output_dir)


class StageClock:
    """Prints a banner per stage and records its wall-clock seconds."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.number += 1
        print(f"\n=== [{self.number}/{self.total}] {name}: {what}", flush=True)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        print(f"=== {name} done in {format_seconds(self.seconds[name])}", flush=True)


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{rest:.1f} s"


def _last_eval_record(run_dir: Path) -> dict[str, Any]:
    from reforbert.plotting import iter_metrics

    evaluations = [record for record in iter_metrics(run_dir) if "eval_mlm_loss" in record]
    return evaluations[-1] if evaluations else {}


def resolve_checkpoint(model: str | Path | None) -> Path:
    """The model folder to fine-tune: ``model``, or the released checkpoint in the repository."""
    if model is None:
        if not (DEFAULT_MODEL / "config.json").is_file():
            raise ReforBertInputError(
                "the released checkpoint is not here (it ships with the repository, not with the package); "
                "pass --model PATH, or --from-scratch to pretrain a tiny model first",
                DEFAULT_MODEL,
            )
        return DEFAULT_MODEL
    model = Path(model)
    if not (model / "config.json").is_file():
        raise ReforBertInputError(
            "not a model folder (no config.json); pass e.g. a pretraining RUN/model", model
        )
    return model


def resolve_sentiment(data_dir: str | Path | None) -> tuple[str, Path, Path | None]:
    """A description, the train file and the eval file (None: carve a dev split) of the sentiment data."""
    if data_dir is None:
        return (
            "the embedded sample sentiment set",
            SAMPLE_SENTIMENT_DIR / "train.txt",
            SAMPLE_SENTIMENT_DIR / "test.txt",
        )
    nsmc_train = Path(data_dir) / "tasks" / "nsmc" / "ratings_train.proxy.txt"
    if not nsmc_train.is_file():
        raise ReforBertInputError("not found: --data-dir must hold tasks/nsmc/", nsmc_train)
    return f"NSMC from {data_dir}", nsmc_train, None


def copy_in_fp32(model_dir: Path, output: Path) -> int:
    """Save ``model_dir``'s weights as fp32 and its tokenizer to ``output``; returns the parameter count.

    A released checkpoint is stored in fp16 to keep it small, and transformers 5 loads a model in the
    dtype it was saved in; fine-tuning needs fp32 weights (bf16 autocast still does the arithmetic).
    """
    import torch
    from transformers import AutoModelForPreTraining, AutoTokenizer

    import reforbert  # noqa: F401 - registers ReforBERT with the Auto classes

    try:
        model = AutoModelForPreTraining.from_pretrained(model_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as error:
        raise ReforBertInputError(
            f"cannot load a model and its tokenizer from this folder: {error}", model_dir
        ) from error
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return sum(parameter.numel() for parameter in model.parameters())


def finetune_stage(
    clock: StageClock,
    model_dir: Path,
    train: Path,
    evaluation: Path | None,
    results_dir: Path,
    *,
    epochs: float,
    max_steps: int | None,
    minutes: float,
    batch_size: int,
    seed: int,
    learning_rate: float = FINETUNE_LEARNING_RATE,
) -> dict[str, Any]:
    from reforbert.finetuning import finetune

    with clock.stage("fine-tuning", "sentiment classification (NSMC task)"):
        return finetune(
            "nsmc",
            model_dir,
            train,
            evaluation,
            results_dir=results_dir,
            dev_fraction=DATA_DIR_DEV_FRACTION if evaluation is None else None,
            max_eval_examples=DATA_DIR_MAX_EVAL_EXAMPLES if evaluation is None else None,
            epochs=epochs,
            max_steps=max_steps,
            time_budget_minutes=minutes,
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed,
        )


def report_stage(clock: StageClock, results_dir: Path, output_dir: Path, row: str) -> tuple[Path, Path]:
    from reforbert.report import report

    with clock.stage("report", "results table (Markdown + PNG)"):
        table_md, table_png = output_dir / "RESULTS.md", output_dir / "RESULTS.png"
        print(report([results_dir], names=[row], output=table_md, png=table_png))
    return table_md, table_png


def finetuning_summary(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": "nsmc",
        "accuracy": results["metrics"]["accuracy"],
        "eval_examples": results["num_eval_examples"],
        "split": results["split"]["description"],
        "steps": results["steps"],
    }


def run_demo(
    output_dir: str | Path = "reforbert-demo",
    *,
    model: str | Path | None = None,
    from_scratch: bool = False,
    data_dir: str | Path | None = None,
    finetune_minutes: float = 2.0,
    finetune_epochs: float = 10.0,
    finetune_steps: int | None = None,
    quick: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    **from_scratch_options: Any,
) -> dict[str, Any]:
    """Fine-tune a checkpoint (``model``, default the released one) on the sentiment sample and report.

    With ``from_scratch`` run the whole pipeline instead (:func:`run_from_scratch`, which takes
    ``from_scratch_options``). ``quick`` shrinks fine-tuning to a few steps (for tests and smoke checks).
    Writes ``output_dir/demo_summary.json`` last and returns its contents.
    """
    common = dict(
        data_dir=data_dir,
        finetune_minutes=finetune_minutes,
        finetune_epochs=finetune_epochs,
        finetune_steps=finetune_steps,
        quick=quick,
        seed=seed,
        overwrite=overwrite,
    )
    if from_scratch:
        if model is not None:
            raise ReforBertInputError("give either --model or --from-scratch, not both")
        return run_from_scratch(output_dir, **common, **from_scratch_options)
    if from_scratch_options:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(from_scratch_options))
        raise ReforBertInputError(f"{flags}: only with --from-scratch (they shape pretraining)")
    return run_from_checkpoint(output_dir, model=model, **common)


def run_from_checkpoint(
    output_dir: str | Path,
    *,
    model: str | Path | None,
    data_dir: str | Path | None,
    finetune_minutes: float,
    finetune_epochs: float,
    finetune_steps: int | None,
    quick: bool,
    seed: int,
    overwrite: bool,
) -> dict[str, Any]:
    """Copy the checkpoint in fp32 -> fine-tune it on sentiment -> report."""
    output_dir = Path(output_dir)
    checkpoint = resolve_checkpoint(model)
    description, train, evaluation = resolve_sentiment(data_dir)
    check_positive(time_budget_minutes=finetune_minutes, finetune_epochs=finetune_epochs)
    batch_size = PRETRAIN_BATCH_SIZE
    if quick:
        finetune_steps, batch_size = min(finetune_steps or 3, 3), 8
    prepare_output_dir(output_dir, overwrite)
    output_dir.mkdir(parents=True)

    clock = StageClock(total=3)
    print(f"reforbert demo: fine-tune {checkpoint} on {description} -> {output_dir}")
    model_dir = output_dir / "model"
    with clock.stage("model", f"{checkpoint.name} with fp32 weights"):
        parameters = copy_in_fp32(checkpoint, model_dir)
        print(f"{parameters:,} parameters -> {model_dir}")
    results_dir = output_dir / "results"
    results = finetune_stage(
        clock,
        model_dir,
        train,
        evaluation,
        results_dir,
        epochs=finetune_epochs,
        max_steps=finetune_steps,
        minutes=finetune_minutes,
        batch_size=batch_size,
        seed=seed,
        learning_rate=RELEASED_FINETUNE_LEARNING_RATE,
    )
    # The column says NSMC; the row says when the scores come from the sample sentiment set instead.
    row = f"{checkpoint.name} (demo{', sample sentiment set' if evaluation else ''})"
    table_md, table_png = report_stage(clock, results_dir, output_dir, row)

    summary = {
        "inputs": description,
        "checkpoint": str(checkpoint),
        "stage_seconds": clock.seconds,
        "total_seconds": round(sum(clock.seconds.values()), 1),
        "paths": {
            "model": str(model_dir),
            "results_json": str(results_dir / "nsmc.json"),
            "results_table": str(table_md),
            "results_table_png": str(table_png),
        },
        "finetuning": finetuning_summary(results),
    }
    return write_summary(summary, output_dir)


def write_summary(summary: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    with atomic_file(output_dir / SUMMARY_FILE, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    print_summary(summary, output_dir)
    return summary


def run_from_scratch(
    output_dir: str | Path = "reforbert-demo",
    *,
    corpus: str | Path | None = None,
    data_dir: str | Path | None = None,
    preset: str = "tiny",
    vocab_size: int | None = None,
    pretrain_minutes: float = 4.0,
    pretrain_steps: int = 400,
    finetune_minutes: float = 2.0,
    finetune_epochs: float = 10.0,
    finetune_steps: int | None = None,
    quick: bool = False,
    workers: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run corpus -> vocabulary -> pretraining data -> pretraining -> fine-tuning -> report.

    Pretraining stops after ``pretrain_steps`` optimizer steps or ``pretrain_minutes``, whichever
    comes first; fine-tuning after ``finetune_epochs``, ``finetune_steps`` or ``finetune_minutes``.
    On the sample corpus the vocabulary has ``SAMPLE_VOCAB_SIZE`` pieces (see the module docstring),
    otherwise 8000, unless ``vocab_size`` is given. ``quick`` shrinks everything to a few steps (for
    tests and smoke checks). Writes ``output_dir/demo_summary.json`` last and returns its contents.
    """
    from reforbert.data.corpus import build_corpus
    from reforbert.data.pretraining_data import make_pretraining_data
    from reforbert.data.vocab import DEFAULT_PIECES, train_vocab
    from reforbert.plotting import plot_run
    from reforbert.pretraining import pretrain

    output_dir = Path(output_dir)
    inputs = resolve_inputs(corpus, data_dir)
    if preset not in PRESETS:  # checked here, not minutes later when pretraining starts
        raise ReforBertInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    check_positive(
        pretrain_minutes=pretrain_minutes,
        time_budget_minutes=finetune_minutes,
        pretrain_steps=pretrain_steps,
        finetune_epochs=finetune_epochs,
    )
    batch_size = PRETRAIN_BATCH_SIZE
    if quick:
        pretrain_steps, finetune_steps, batch_size = min(pretrain_steps, 3), min(finetune_steps or 3, 3), 8
    if vocab_size is None:
        vocab_size = (
            QUICK_VOCAB_SIZE if quick else SAMPLE_VOCAB_SIZE if inputs.is_sample_corpus else DEFAULT_PIECES
        )
    prepare_output_dir(output_dir, overwrite)
    output_dir.mkdir(parents=True)

    clock = StageClock(total=6)
    print(f"reforbert demo: {inputs.description} -> {output_dir}")

    with clock.stage("corpus", "clean text for pretraining"):
        if inputs.raw_corpus is not None:
            stats = build_corpus([inputs.raw_corpus], output_dir / "corpus" / "corpus.txt", workers=workers)
            print(stats.summary())
            corpus_files = [output_dir / "corpus" / "corpus.txt"]
        else:
            corpus_files = inputs.corpus_files
            size = sum(path.stat().st_size for path in corpus_files)
            where = corpus_files[0].parent
            print(f"{len(corpus_files)} file(s), {size / 1000:.0f} KB of clean text in {where}")

    with clock.stage("vocabulary", f"SentencePiece BPE, {vocab_size} pieces + 7 specials"):
        if vocab_size != DEFAULT_PIECES:
            print(
                f"note: {vocab_size} pieces instead of ReforBERT's {DEFAULT_PIECES}, because the "
                f"{'sample ' if inputs.is_sample_corpus else ''}corpus is small; "
                f"the real pipeline (`reforbert vocab`) keeps {DEFAULT_PIECES}"
            )
        vocab_dir = train_vocab(corpus_files, output_dir / "vocab", vocab_size=vocab_size, seed=seed)

    with clock.stage("pretraining data", f"MLM + NSP instances of up to {MAX_SEQ_LEN} tokens"):
        data_dir_out = output_dir / "pretraining-data"
        make_pretraining_data(
            corpus_files,
            vocab_dir,
            data_dir_out,
            max_seq_len=MAX_SEQ_LEN,
            dupe_factor=SAMPLE_DUPE_FACTOR if inputs.is_sample_corpus else 1,
            seed=seed,
            workers=workers,
        )

    budget = f"{pretrain_steps} steps or {pretrain_minutes:g} min, whichever comes first"
    with clock.stage("pretraining", f"ReforBERT-{preset}, MLM + NSP, {budget}"):
        run_dir = output_dir / "pretraining"
        pretrain_summary = pretrain(
            data_dir_out,
            vocab_dir,
            run_dir,
            preset=preset,
            max_seq_len=MAX_SEQ_LEN,
            micro_batch_size=batch_size,
            global_batch_size=batch_size,
            learning_rate=PRETRAIN_LEARNING_RATE,
            max_steps=pretrain_steps,
            time_budget_minutes=pretrain_minutes,
            # One checkpoint at the end only: the demo never resumes, and saving costs minutes on CPU.
            save_steps=pretrain_steps,
            save_total_limit=1,
            eval_steps=pretrain_steps if quick else max(1, pretrain_steps // 10),
            seed=seed,
        )
        curves_png = plot_run(run_dir)
        print(f"loss curves -> {curves_png}")

    model_dir = run_dir / "model"
    results_dir = output_dir / "results"
    results = finetune_stage(
        clock,
        model_dir,
        inputs.sentiment_train,
        inputs.sentiment_eval,
        results_dir,
        epochs=finetune_epochs,
        max_steps=finetune_steps,
        minutes=finetune_minutes,
        batch_size=batch_size,
        seed=seed,
    )
    # The column says NSMC; the row says when the scores come from the sample sentiment set instead.
    row = f"ReforBERT-{preset} (demo{', sample sentiment set' if inputs.sentiment_eval else ''})"
    table_md, table_png = report_stage(clock, results_dir, output_dir, row)

    evaluation = _last_eval_record(run_dir)
    summary = {
        "inputs": inputs.description,
        "vocab_size": vocab_size,
        "preset": preset,
        "stage_seconds": clock.seconds,
        "total_seconds": round(sum(clock.seconds.values()), 1),
        "paths": {
            "vocabulary": str(vocab_dir),
            "pretraining_run": str(run_dir),
            "model": str(model_dir),
            "loss_curves": str(curves_png),
            "results_json": str(results_dir / "nsmc.json"),
            "results_table": str(table_md),
            "results_table_png": str(table_png),
        },
        "pretraining": {
            "steps": pretrain_summary["step"],
            "tokens_seen": pretrain_summary["tokens_seen"],
            "final_train_loss": pretrain_summary.get("loss"),
            "held_out_mlm_loss": evaluation.get("eval_mlm_loss"),
            "held_out_mlm_accuracy": evaluation.get("eval_mlm_accuracy"),
            "held_out_nsp_accuracy": evaluation.get("eval_nsp_accuracy"),
        },
        "finetuning": finetuning_summary(results),
    }
    return write_summary(summary, output_dir)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_summary(summary: dict[str, Any], output_dir: Path) -> None:
    paths, fine = summary["paths"], summary["finetuning"]
    lines = [
        "",
        f"=== reforbert demo finished in {format_seconds(summary['total_seconds'])}",
        "stage times: "
        + ", ".join(f"{name} {format_seconds(s)}" for name, s in summary["stage_seconds"].items()),
    ]
    pre = summary.get("pretraining")
    if pre is not None:
        loss = pre["held_out_mlm_loss"]
        lines.append(
            f"pretraining: {pre['steps']} steps, {pre['tokens_seen']:,} tokens; held-out MLM loss "
            f"{'n/a' if loss is None else f'{loss:.3f}'}, "
            f"MLM accuracy {_percent(pre['held_out_mlm_accuracy'])}, "
            f"NSP accuracy {_percent(pre['held_out_nsp_accuracy'])}"
        )
    else:
        lines.append(f"checkpoint: {summary['checkpoint']}")
    lines += [
        f"fine-tuning: NSMC-format sentiment accuracy {fine['accuracy']:.2f}% on {fine['eval_examples']} "
        f"examples ({fine['split']}) after {fine['steps']} steps",
        "",
        f"model (AutoModelForMaskedLM / AutoTokenizer): {paths['model']}",
    ]
    if "loss_curves" in paths:
        lines.append(f"loss curves:    {paths['loss_curves']}")
    lines += [
        f"results JSON:   {paths['results_json']}",
        f"results table:  {paths['results_table']} and {paths['results_table_png']}",
        f"summary:        {output_dir / SUMMARY_FILE}",
    ]
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Command line


# Flags that shape pretraining: with --from-scratch only, so their defaults live in run_from_scratch.
FROM_SCRATCH_FLAGS = ("corpus", "preset", "vocab_size", "pretrain_minutes", "pretrain_steps", "workers")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_deprecated_alias, add_example

    add = parser.add_argument
    output = add(
        "--output",
        default="reforbert-demo",
        help="The folder to create for every output of the demo (default %(default)s).",
    )
    add_deprecated_alias(parser, output, "--output-dir")
    add(
        "--model",
        help="The model folder to fine-tune (default: the released checkpoint, "
        "models/reforbert-mini-kowiki in the repository).",
    )
    add(
        "--from-scratch",
        action="store_true",
        help="Run the whole pipeline instead: clean a corpus, train a "
        "vocabulary, pretrain a tiny ReforBERT for a few minutes, then fine-tune and report.",
    )
    add(
        "--data-dir",
        help="A folder laid out like ../shared/data: fine-tune on NSMC from tasks/nsmc/ (a dev "
        "split carved out of its train file) instead of the sample; with --from-scratch also pretrain on "
        "kowiki/.",
    )
    add(
        "--time-budget-minutes",
        type=float,
        default=2.0,
        help="Stop fine-tuning after this many minutes (default %(default)s).",
    )
    time_budget = parser._option_string_actions["--time-budget-minutes"]
    add_deprecated_alias(parser, time_budget, "--finetune-minutes")
    add(
        "--finetune-epochs",
        type=float,
        default=10.0,
        help="Fine-tune for at most this many epochs (default %(default)s).",
    )
    add("--quick", action="store_true", help="A few steps per stage only, to check that everything runs.")
    add("--seed", type=int, default=0, help="The seed for every stage.")
    add("--overwrite", action="store_true", help="Replace an existing output folder written by the demo.")
    scratch = parser.add_argument_group("with --from-scratch only")
    scratch.add_argument(
        "--corpus",
        help="Pretrain on this text instead of the sample: a Wikipedia XML dump, "
        "a WikiExtractor folder, or clean text in the corpus format.",
    )
    scratch.add_argument("--preset", choices=list(PRESETS), help="The model size to pretrain (default tiny).")
    scratch.add_argument(
        "--vocab-size",
        type=int,
        help="Vocabulary pieces besides the 7 specials "
        f"(default {SAMPLE_VOCAB_SIZE} on the sample corpus, 8000 otherwise).",
    )
    scratch.add_argument(
        "--pretrain-minutes", type=float, help="Stop pretraining after this many minutes (default 4)."
    )
    scratch.add_argument(
        "--pretrain-steps", type=int, help="Stop pretraining after this many optimizer steps (default 400)."
    )
    scratch.add_argument(
        "--workers", type=int, help="Processes for corpus cleaning and pretraining data (default: all cores)."
    )
    add_example(
        parser,
        "reforbert demo                                   # fine-tune the released checkpoint",
        "reforbert demo --model RUN/model --output my-demo",
        "reforbert demo --from-scratch --quick            # every stage, a few steps each",
    )


def run(args: argparse.Namespace) -> int:
    from_scratch_options = {
        name: getattr(args, name) for name in FROM_SCRATCH_FLAGS if getattr(args, name) is not None
    }
    run_demo(
        args.output,
        model=args.model,
        from_scratch=args.from_scratch,
        data_dir=args.data_dir,
        finetune_minutes=args.time_budget_minutes,
        finetune_epochs=args.finetune_epochs,
        quick=args.quick,
        seed=args.seed,
        overwrite=args.overwrite,
        **from_scratch_options,
    )
    return 0
