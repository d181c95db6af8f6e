"""``reforbert demo``: the whole pipeline, end to end, on the sample data shipped with the package.

Stages, each with a banner and its wall-clock time:

1. corpus       -- the embedded sample corpus (already clean text), or ``--corpus`` / ``--data-dir``
                   cleaned with ``reforbert corpus``
2. vocabulary   -- a SentencePiece BPE vocabulary (``reforbert vocab``)
3. pretraining data -- MLM + NSP instances (``reforbert pretraining-data``)
4. pretraining  -- a time-boxed run of a tiny ReforBERT (``reforbert pretrain``) and its loss plot
5. fine-tuning  -- sentiment classification with the NSMC task (``reforbert finetune nsmc``)
6. report       -- the results table in Markdown and PNG (``reforbert report``)

The sample corpus is about 150 KB of Korean text, far too little for the real 8000-piece
vocabulary: trained on the sample, more than half of 8000 pieces occur at most once in it, and the
embedding table would dwarf a tiny model. 3000 pieces give the most pieces seen five times or more,
so the demo trains 3000 on the sample and says so; with ``--corpus`` or ``--data-dir`` it keeps 8000.

The default budgets (4 minutes of pretraining, 2 of fine-tuning) keep the whole demo under 10
minutes on 2 CPU cores. A model pretrained for a few minutes on a few pages is not a good model:
the demo shows that every stage works and where its outputs go, not what ReforBERT can score.
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
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_file

RESOURCES = Path(__file__).resolve().parent / "resources"
SAMPLE_CORPUS_DIR = RESOURCES / "sample_corpus"
SAMPLE_SENTIMENT_DIR = RESOURCES / "sample_sentiment"

SAMPLE_VOCAB_SIZE = 3000
QUICK_VOCAB_SIZE = 1000
# Reviews are short; 128 tokens also holds two sample-corpus sentences for next-sentence prediction.
MAX_SEQ_LEN = 128
# Tiny models trained for minutes need a far higher peak rate than BERT-base's 1e-4.
PRETRAIN_LEARNING_RATE = 1e-3
PRETRAIN_BATCH_SIZE = 32
# NSMC's published 5e-5 suits pretrained base models; a tiny model pretrained for minutes needs more
# (on the sample set 5e-4 beat both 1e-4 and 1e-3).
FINETUNE_LEARNING_RATE = 5e-4
# The sample corpus is small: several passes with different sentence-pair splits give more instances.
SAMPLE_DUPE_FACTOR = 5
# On real data, score on a bounded subset so that evaluation stays within the demo's minutes.
DATA_DIR_MAX_EVAL_EXAMPLES = 5000
DATA_DIR_DEV_FRACTION = 0.1

SUMMARY_FILE = "demo_summary.json"
# Everything the demo writes in its output folder; --overwrite deletes a folder holding only these.
DEMO_ENTRIES = frozenset({"corpus", "vocab", "pretraining-data", "pretraining", "results", "RESULTS.md",
                          "RESULTS.png", SUMMARY_FILE})


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


def run_demo(
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
    from reforbert.finetuning import finetune
    from reforbert.plotting import plot_run
    from reforbert.pretraining import pretrain
    from reforbert.report import report

    output_dir = Path(output_dir)
    inputs = resolve_inputs(corpus, data_dir)
    if preset not in PRESETS:  # checked here, not minutes later when pretraining starts
        raise ReforBertInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    for name, value in (("--pretrain-minutes", pretrain_minutes), ("--finetune-minutes", finetune_minutes),
                        ("--pretrain-steps", pretrain_steps), ("--finetune-epochs", finetune_epochs)):
        if value <= 0:
            raise ReforBertInputError(f"{name} must be positive, got {value}")
    batch_size = PRETRAIN_BATCH_SIZE
    if quick:
        pretrain_steps, finetune_steps, batch_size = min(pretrain_steps, 3), min(finetune_steps or 3, 3), 8
    if vocab_size is None:
        vocab_size = (QUICK_VOCAB_SIZE if quick
                      else SAMPLE_VOCAB_SIZE if inputs.is_sample_corpus else DEFAULT_PIECES)
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
            print(f"note: {vocab_size} pieces instead of ReforBERT's {DEFAULT_PIECES}, because the "
                  f"{'sample ' if inputs.is_sample_corpus else ''}corpus is small; "
                  f"the real pipeline (`reforbert vocab`) keeps {DEFAULT_PIECES}")
        vocab_dir = train_vocab(corpus_files, output_dir / "vocab", vocab_size=vocab_size, seed=seed,
                                model_max_length=MAX_SEQ_LEN)

    with clock.stage("pretraining data", f"MLM + NSP instances of up to {MAX_SEQ_LEN} tokens"):
        data_dir_out = output_dir / "pretraining-data"
        make_pretraining_data(corpus_files, vocab_dir, data_dir_out, max_seq_len=MAX_SEQ_LEN,
                              dupe_factor=SAMPLE_DUPE_FACTOR if inputs.is_sample_corpus else 1,
                              seed=seed, workers=workers)

    budget = f"{pretrain_steps} steps or {pretrain_minutes:g} min, whichever comes first"
    with clock.stage("pretraining", f"ReforBERT-{preset}, MLM + NSP, {budget}"):
        run_dir = output_dir / "pretraining"
        pretrain_summary = pretrain(
            data_dir_out, vocab_dir, run_dir, preset=preset, max_seq_len=MAX_SEQ_LEN,
            micro_batch_size=batch_size, global_batch_size=batch_size,
            learning_rate=PRETRAIN_LEARNING_RATE, max_steps=pretrain_steps,
            time_budget_minutes=pretrain_minutes,
            # One checkpoint at the end only: the demo never resumes, and saving costs minutes on CPU.
            save_steps=pretrain_steps, save_total_limit=1,
            eval_steps=pretrain_steps if quick else max(1, pretrain_steps // 10), seed=seed,
        )
        curves_png = plot_run(run_dir)
        print(f"loss curves -> {curves_png}")

    model_dir = run_dir / "model"
    results_dir = output_dir / "results"
    with clock.stage("fine-tuning", "sentiment classification (NSMC task)"):
        results = finetune(
            "nsmc", model_dir, inputs.sentiment_train, inputs.sentiment_eval, results_dir=results_dir,
            dev_fraction=DATA_DIR_DEV_FRACTION if inputs.sentiment_eval is None else None,
            max_eval_examples=DATA_DIR_MAX_EVAL_EXAMPLES if inputs.sentiment_eval is None else None,
            epochs=finetune_epochs, max_steps=finetune_steps, time_budget_minutes=finetune_minutes,
            learning_rate=FINETUNE_LEARNING_RATE, batch_size=batch_size, seed=seed,
        )

    with clock.stage("report", "results table (Markdown + PNG)"):
        table_md, table_png = output_dir / "RESULTS.md", output_dir / "RESULTS.png"
        # The column says NSMC; the row says when the scores come from the sample sentiment set instead.
        row = f"ReforBERT-{preset} (demo{', sample sentiment set' if inputs.sentiment_eval else ''})"
        print(report([results_dir], names=[row], output=table_md, png=table_png))

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
        "finetuning": {
            "task": "nsmc",
            "accuracy": results["metrics"]["accuracy"],
            "eval_examples": results["num_eval_examples"],
            "split": results["split"]["description"],
            "steps": results["steps"],
        },
    }
    with atomic_file(output_dir / SUMMARY_FILE, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    print_summary(summary, output_dir)
    return summary


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_summary(summary: dict[str, Any], output_dir: Path) -> None:
    paths, pre, fine = summary["paths"], summary["pretraining"], summary["finetuning"]
    loss = pre["held_out_mlm_loss"]
    lines = [
        "",
        f"=== reforbert demo finished in {format_seconds(summary['total_seconds'])}",
        "stage times: " + ", ".join(f"{name} {format_seconds(s)}"
                                    for name, s in summary["stage_seconds"].items()),
        f"pretraining: {pre['steps']} steps, {pre['tokens_seen']:,} tokens; held-out MLM loss "
        f"{'n/a' if loss is None else f'{loss:.3f}'}, MLM accuracy {_percent(pre['held_out_mlm_accuracy'])}, "
        f"NSP accuracy {_percent(pre['held_out_nsp_accuracy'])}",
        f"fine-tuning: NSMC-format sentiment accuracy {fine['accuracy']:.2f}% on {fine['eval_examples']} "
        f"examples ({fine['split']}) after {fine['steps']} steps",
        "",
        f"model (AutoModelForMaskedLM / AutoTokenizer): {paths['model']}",
        f"loss curves:    {paths['loss_curves']}",
        f"results JSON:   {paths['results_json']}",
        f"results table:  {paths['results_table']} and {paths['results_table_png']}",
        f"summary:        {output_dir / SUMMARY_FILE}",
    ]
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--output-dir", default="reforbert-demo",
        help="The folder to create for every output of the demo (default %(default)s).")
    add("--corpus", help="Pretrain on this text instead of the sample: a Wikipedia XML dump, a WikiExtractor "
        "folder, or clean text in the corpus format. Fine-tuning still uses the sample sentiment set.")
    add("--data-dir", help="A folder holding kowiki/ (WikiExtractor output) and tasks/nsmc/; pretrain on the "
        "Wikipedia text and fine-tune on NSMC with a dev split carved out of its train file.")
    add("--preset", default="tiny", choices=list(PRESETS),
        help="The model size to pretrain (default %(default)s).")
    add("--vocab-size", type=int, help="Vocabulary pieces besides the 7 specials "
        f"(default {SAMPLE_VOCAB_SIZE} on the sample corpus, 8000 otherwise).")
    add("--pretrain-minutes", type=float, default=4.0,
        help="Stop pretraining after this many minutes (default %(default)s).")
    add("--pretrain-steps", type=int, default=400,
        help="Stop pretraining after this many optimizer steps (default %(default)s).")
    add("--finetune-minutes", type=float, default=2.0,
        help="Stop fine-tuning after this many minutes (default %(default)s).")
    add("--finetune-epochs", type=float, default=10.0,
        help="Fine-tune for at most this many epochs (default %(default)s).")
    add("--quick", action="store_true", help="A few steps per stage only, to check that everything runs.")
    add("--workers", type=int,
        help="Processes for corpus cleaning and pretraining data (default: all cores).")
    add("--seed", type=int, default=0, help="The seed for every stage.")
    add("--overwrite", action="store_true", help="Replace an existing output folder written by the demo.")


def run(args: argparse.Namespace) -> int:
    run_demo(
        args.output_dir, corpus=args.corpus, data_dir=args.data_dir, preset=args.preset,
        vocab_size=args.vocab_size,
        pretrain_minutes=args.pretrain_minutes, pretrain_steps=args.pretrain_steps,
        finetune_minutes=args.finetune_minutes, finetune_epochs=args.finetune_epochs, quick=args.quick,
        workers=args.workers, seed=args.seed, overwrite=args.overwrite,
    )
    return 0
