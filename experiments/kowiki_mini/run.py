"""The released ReforBERT mini against a random-initialisation control, 3 seeds per benchmark.

Stages (every fine-tuning run is a ``reforbert finetune`` in its own process, logged under OUT/logs/):

1. ``sweep``: per benchmark, the pretrained row is fine-tuned once per learning rate (and epoch count) of
   a small grid, and scored on a TUNING split carved out of the training part only; the best setting
   is written to OUT/sweep/choice.json. The split that is reported is never looked at here.
2. ``finetune``: both rows (the checkpoint given by ``--model``, and the same architecture from random
   weights) x every seed, with the chosen setting, scored on the reported dev split:
   OUT/results/<row>/<task>.seed<k>.json. A run that fails leaves a failure record at the same path
   (its exit status and log), so the table shows the hole instead of averaging over the survivors.
   Each result records its setting (finetune flags without the seed, digest of the weights); a later
   invocation with more seeds keeps the earlier seeds of the same setting and moves every other
   earlier result of the cells it runs to OUT/replaced/<time>/, so no table averages two settings.
3. ``report``: OUT/RESULTS.md and OUT/RESULTS.png (mean ± std per cell, the lift over the control,
   error bars) via ``reforbert report``; OUT/summary.json holds every job's wall-clock and exit status.

Both the reported and the tuning splits are carved in memory by ``SPLIT_SEED``, the same for every
run, so the three seeds differ only in training (head initialisation, order, sampled subset) and are
scored on the same examples. Naver NER and KorQuAD may not be copied or re-split on disk, which is why
the carving happens inside the fine-tuning process (``job`` below) instead of in files.

The budget flags scale it from 2 CPU cores (the defaults; README.md gives the measured budget) to a
GPU. Examples::

    python experiments/kowiki_mini/run.py                          # sweep, finetune, report
    python experiments/kowiki_mini/run.py --stages finetune,report --seeds 1 2 3 4 5
    python experiments/kowiki_mini/run.py --model NEW_CHECKPOINT --rows pretrained   # keep OUT's control
    # KorSTS on all its training pairs, its learning rate chosen at the 4 epochs it is reported with:
    python experiments/kowiki_mini/run.py --tasks korsts --max-train-examples korsts=0 \\
        --task-epochs korsts=4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reforbert.configuration_reforbert import LEGACY_SPECIAL_TOKEN_FIELDS
from reforbert.fileio import sha256_of

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = REPO / "models" / "reforbert-mini-kowiki"

PRETRAINED, CONTROL = "pretrained", "control"
CONTROL_LABEL = "same architecture, random init (control)"
# One seed carves every reported and tuning split, whatever the training seed.
SPLIT_SEED = 42
# The share of the training part set aside to choose the learning rate on.
TUNING_FRACTION = 0.1
CONTROL_INIT_SEED = 0
# OUT/<this>: the config the control row was built from, so that a kept control can be checked.
CONTROL_CONFIG_FILE = "control-config.json"
# Files of a model folder that hold or describe its weights; everything else (the tokenizer) is copied.
WEIGHT_FILES = ("config.json", "generation_config.json", "README.md")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class TaskProtocol:
    """How one benchmark is trained and scored from the files in DATA/tasks."""

    task: str
    train: str
    # The reported split: an evaluation file, or else a fraction carved out of the train file.
    eval: str | None = None
    reported_fraction: float | None = None
    # A seeded subset of the training part, where the whole would not fit the CPU budget (None: all).
    max_train_examples: int | None = None
    # A subset of the carved evaluation split, drawn by SPLIT_SEED so that every run scores the same one.
    max_eval_examples: int | None = None
    extra: tuple[str, ...] = ()


# The training subsets are sized so that 3 epochs fit in the default 2.25-minute budget on one CPU thread
# at the rates measured on this hardware (README.md); on a GPU pass --max-train-examples TASK=0.
PROTOCOL = (
    TaskProtocol(
        "nsmc",
        "nsmc/ratings_train.proxy.txt",
        reported_fraction=0.1,
        max_train_examples=3000,
        max_eval_examples=2000,
    ),
    TaskProtocol("naver-ner", "naver_ner/train.tsv", reported_fraction=0.1, max_train_examples=2200),
    TaskProtocol("paws", "paws_ko/dev_2k.tsv", reported_fraction=0.2),
    TaskProtocol("kornli", "kornli/xnli.dev.ko.tsv", reported_fraction=0.2),
    TaskProtocol("korsts", "korsts/sts-train.tsv", eval="korsts/sts-dev.tsv", max_train_examples=2500),
    TaskProtocol("question-pair", "question_pair/train.txt", eval="question_pair/validation.txt"),
    # Windows of 512 tokens cost most on CPU: 384 tokens, and seeded subsets of the questions.
    TaskProtocol(
        "korquad",
        "korquad1/KorQuAD_v1.0_dev.json",
        reported_fraction=0.2,
        max_train_examples=400,
        max_eval_examples=300,
        extra=("--max-seq-length", "384"),
    ),
)
TASK_NAMES = tuple(protocol.task for protocol in PROTOCOL)


# ----------------------------------------------------------------------------------------------
# Running jobs side by side


@dataclass
class Job:
    name: str
    command: list[str]
    log: Path
    threads: int
    result: Path | None = None  # where a finished run's results file lands
    task: str = ""
    seed: int | None = None
    started: float = 0.0
    process: subprocess.Popen | None = None
    handle: Any = None
    record: dict[str, Any] = field(default_factory=dict)


def run_jobs(jobs: Sequence[Job], parallel: int) -> list[dict[str, Any]]:
    """Run ``jobs`` ``parallel`` at a time; return each one's wall-clock, exit status and peak RSS."""
    pending, running, records = list(jobs), [], []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            threads = str(job.threads)
            env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name}", flush=True)
            job.handle = open(job.log, "w", encoding="utf-8")  # noqa: SIM115 - closed when reaped
            job.handle.write("$ " + " ".join(job.command) + "\n")
            job.handle.flush()
            job.process = subprocess.Popen(job.command, stdout=job.handle, stderr=subprocess.STDOUT, env=env)
            job.started = time.time()
            running.append(job)
        # wait4 reports the finished child's own resource usage, so each job's peak RSS is its own.
        pid, status, usage = os.wait4(-1, 0)
        job = next((j for j in running if j.process is not None and j.process.pid == pid), None)
        if job is None:
            continue
        running.remove(job)
        job.handle.close()
        code = os.waitstatus_to_exitcode(status)
        job.process.returncode = code
        record = {
            "job": job.name,
            "exit_code": code,
            "seconds": round(time.time() - job.started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "threads": job.threads,
            "log": str(job.log),
            "command": job.command,
        }
        if code == 0 and job.result is not None and job.result.is_file():
            results = json.loads(job.result.read_text(encoding="utf-8"))
            for key in ("train_seconds", "eval_seconds", "steps", "planned_steps", "stopped_by_time_budget"):
                record[key] = results.get(key)
        elif job.result is not None:
            write_failure(job.result, job.task, job.seed, code, job.log)
        records.append(record)
        state = "done" if code == 0 else f"FAILED (exit {code}, see {job.log})"
        print(f"[{time.strftime('%H:%M:%S')}] {state} {job.name} in {record['seconds']} s", flush=True)
    return records


def write_failure(
    path: Path, task: str, seed: int | None, exit_code: int | None, log: Path | str, reason: str | None = None
) -> None:
    """The record ``reforbert report`` shows as a failed run, in place of the results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {"exit_code": exit_code, "log": str(log)}
    if reason is not None:
        details["reason"] = reason
    record = {"task": task, "seed": seed, "failure": details}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# One fine-tuning run with the protocol's splits (``run.py job``, in the job's own process)


def install_protocol_split(
    task_name: str, reported_fraction: float | None, tuning_fraction: float | None, max_eval: int | None
) -> list[tuple[int, int]]:
    """Make ``reforbert finetune`` carve this protocol's split when it carves a dev split.

    Replaces the task's class in the registry with a subclass whose ``split_dev`` ignores the
    training seed: it sets the reported split aside by SPLIT_SEED, then (when tuning) carves the
    tuning split out of what is left, and draws the evaluation subset by SPLIT_SEED. Returns the list
    that each carve appends ``(train size, carved size, evaluation size)`` to, so the caller can check
    that it ran.
    """
    from reforbert.tasks import TASKS

    # Installing twice must not carve twice: always derive from the registered benchmark itself.
    base = getattr(TASKS[task_name], "benchmark_class", TASKS[task_name])
    carves: list[tuple[int, int, int]] = []

    class ProtocolSplit(base):  # type: ignore[valid-type, misc]
        benchmark_class = base

        def split_dev(self, examples: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
            train, held_out = list(examples), []
            if reported_fraction is not None:
                train, held_out = base.split_dev(self, train, reported_fraction, SPLIT_SEED)
            if tuning_fraction is not None:
                train, held_out = base.split_dev(self, train, tuning_fraction, SPLIT_SEED)
            carved = len(held_out)
            if max_eval is not None and max_eval < carved:
                keep = sorted(random.Random(SPLIT_SEED).sample(range(carved), max_eval))
                held_out = [held_out[i] for i in keep]
            carves.append((len(train), carved, len(held_out)))
            return train, held_out

    ProtocolSplit.__name__ = ProtocolSplit.__qualname__ = base.__name__
    TASKS[task_name] = ProtocolSplit
    return carves


def split_record(args: argparse.Namespace, train_file: str, carved: int, scored: int) -> dict[str, Any]:
    """What the results file says about the evaluation split, in the words ``reforbert report`` shows."""
    sample = f", {scored:,} of its {carved:,} sampled by seed {SPLIT_SEED}" if scored < carved else ""
    if args.tuning_fraction is not None:
        reported = (
            f" after the reported {args.reported_fraction * 100:g}% was set aside"
            if args.reported_fraction
            else ""
        )
        description = (
            f"tuning split: {args.tuning_fraction * 100:g}% of the training part of {train_file}"
            f"{reported}, by seed {SPLIT_SEED}{sample}"
        )
        return {"kind": "tuning", "description": description, "carved_dev_fraction": args.tuning_fraction}
    description = (
        f"carved dev of {args.reported_fraction * 100:g}% of {train_file} by seed {SPLIT_SEED}{sample}"
    )
    return {"kind": "carved-dev", "description": description, "carved_dev_fraction": args.reported_fraction}


def run_job(args: argparse.Namespace, finetune_args: list[str]) -> int:
    from reforbert.cli import main as reforbert_main

    carves_split = args.reported_fraction is not None or args.tuning_fraction is not None
    carves = install_protocol_split(
        args.task, args.reported_fraction, args.tuning_fraction, args.max_eval_examples
    )
    with tempfile.TemporaryDirectory(prefix="kowiki-mini-job-") as scratch:
        code = reforbert_main(["finetune", args.task, *finetune_args, "--results-dir", scratch])
        if code != 0:
            return code
        results = json.loads((Path(scratch) / f"{args.task}.json").read_text(encoding="utf-8"))
    if carves_split:
        if len(carves) != 1 or carves[0][2] != results["num_eval_examples"]:
            print(
                "error: reforbert finetune did not carve its evaluation split through Task.split_dev; "
                "the protocol's splits were not applied",
                file=sys.stderr,
            )
            return 1
        train_file = Path(results["split"]["train_file"]).name
        results["split"].update(split_record(args, train_file, carves[0][1], carves[0][2]))
    results["protocol"] = protocol_record(args, finetune_args)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    partial = args.result.with_name(args.result.name + ".partial")
    partial.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    partial.replace(args.result)
    return 0


def protocol_record(job_args: argparse.Namespace, finetune_args: Sequence[str]) -> dict[str, Any]:
    """What a results file records of how it was produced: the protocol's split of the evaluation data
    and the run's setting. Seeds of a task are averaged only where all of it agrees."""
    return {
        "split_seed": SPLIT_SEED,
        "reported_fraction": job_args.reported_fraction,
        "tuning_fraction": job_args.tuning_fraction,
        "max_eval_examples": job_args.max_eval_examples,
        "setting": run_setting(finetune_args),
    }


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of the weights a run fine-tunes (one per file, joined by "+", for sharded weights): the
    same flags on other weights are another setting."""
    return "+".join(sha256_of(path) for path in sorted(model_dir.glob("*.safetensors")))


def run_setting(finetune_args: Sequence[str]) -> dict[str, Any]:
    """What a finetune run's score depends on besides its seed and the protocol's fixed splits: its
    flags, with the model folder's path replaced by its weights' digest, since work folders move.
    Seeds of a task are averaged only where this agrees."""
    flags, model_dir = [], None
    arguments = iter(finetune_args)
    for flag in arguments:
        if flag in ("--seed", "--model"):
            value = next(arguments, "")
            if flag == "--model":
                model_dir = Path(value)
            continue
        flags.append(flag)
    return {
        "finetune_flags": flags,
        "weights_sha256": weights_digest(model_dir) if model_dir is not None else None,
    }


def job_finetune_args(job: Job) -> list[str]:
    """The ``reforbert finetune`` flags of a ``run.py job`` command (everything after ``--``)."""
    return job.command[job.command.index("--") + 1 :]


def job_protocol(job: Job) -> dict[str, Any]:
    """The protocol record the run of ``job`` will write into its results file."""
    own_flags = job.command[job.command.index("job") + 1 : job.command.index("--")]
    return protocol_record(job_parser().parse_args(own_flags), job_finetune_args(job))


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py job", description="One fine-tuning run with the protocol's splits."
    )
    parser.add_argument("--task", required=True, choices=TASK_NAMES, help="The benchmark.")
    parser.add_argument("--result", type=Path, required=True, help="Where the results file goes.")
    parser.add_argument(
        "--reported-fraction", type=float, help="The reported dev split carved from the train file."
    )
    parser.add_argument(
        "--tuning-fraction", type=float, help="Score on this share of the training part instead."
    )
    parser.add_argument(
        "--max-eval-examples", type=int, help="Score a subset of this size, drawn by the split seed."
    )
    return parser


# ----------------------------------------------------------------------------------------------
# The stages


def reforbert_job(protocol: TaskProtocol, args: argparse.Namespace, result: Path, tuning: bool) -> list[str]:
    """The command of one run: ``run.py job`` with the protocol's split, then the finetune flags."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "job",
        "--task",
        protocol.task,
        "--result",
        str(result),
    ]
    if protocol.reported_fraction is not None:
        command += ["--reported-fraction", str(protocol.reported_fraction)]
    if tuning:
        command += ["--tuning-fraction", str(TUNING_FRACTION)]
    if protocol.max_eval_examples is not None:
        command += ["--max-eval-examples", str(protocol.max_eval_examples)]
    command += ["--", "--train", str(args.data_dir / "tasks" / protocol.train)]
    if protocol.eval is not None and not tuning:
        command += ["--eval", str(args.data_dir / "tasks" / protocol.eval)]
    else:
        # Any fraction makes finetune carve; the protocol's split decides which examples.
        command += ["--dev-fraction", str(TUNING_FRACTION if tuning else protocol.reported_fraction)]
    limit = train_limit(protocol, args)
    if limit is not None:
        command += ["--max-train-examples", str(limit)]
    command += [
        "--overwrite",
        "--no-progress",
        "--attention",
        "auto",
        "--time-budget-minutes",
        str(args.time_budget_minutes),
        *protocol.extra,
    ]
    return command


def train_limit(protocol: TaskProtocol, args: argparse.Namespace) -> int | None:
    limit = args.max_train_examples.get(protocol.task, protocol.max_train_examples)
    return limit or None  # 0: no limit


def selected(args: argparse.Namespace) -> list[TaskProtocol]:
    return [protocol for protocol in PROTOCOL if protocol.task in args.tasks]


def threads_per_job(args: argparse.Namespace) -> int:
    return args.threads_per_job or max(1, (os.cpu_count() or 1) // args.parallel)


def model_dirs(args: argparse.Namespace) -> dict[str, Path]:
    """The folder each row fine-tunes from (both prepared by ``prepare_models``)."""
    return {PRETRAINED: args.work_dir / "pretrained-model", CONTROL: args.work_dir / "control-model"}


def copy_tokenizer_files(source: Path, output: Path) -> None:
    for path in source.iterdir():
        if path.is_file() and path.name not in WEIGHT_FILES and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, output / path.name)


def prepare_models(model_dir: Path, folders: dict[str, Path]) -> None:
    """Both rows as fp32 model folders with the checkpoint's tokenizer files.

    The pretrained row: the checkpoint's weights widened to fp32. A released checkpoint is stored in
    fp16, and transformers 5 loads a model in the dtype it was saved in, so without this the pretrained
    row would be fine-tuned with fp16 weights and the fp32 control would not be a like-for-like control.
    The control: the same config from random weights (a fixed seed), initialised as pretraining does.
    """
    import torch
    from transformers import AutoConfig

    from reforbert.modeling_reforbert import ReforBertForPreTraining

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(CONTROL_INIT_SEED)
    models = {
        PRETRAINED: ReforBertForPreTraining.from_pretrained(model_dir, dtype=torch.float32),
        # The constructor builds fp32 weights whatever dtype the config records.
        CONTROL: ReforBertForPreTraining(config).float(),
    }
    for row, model in models.items():
        output = folders[row]
        if output.exists():
            shutil.rmtree(output)
        model.save_pretrained(output)
        copy_tokenizer_files(model_dir, output)
    print(f"pretrained row: {model_dir} in fp32 -> {folders[PRETRAINED]}")
    print(f"control row: the same config from random weights -> {folders[CONTROL]}")


# Config fields that build no different control: those describing the saved file, and the special-token
# ids that configurations from earlier versions carry but the model never reads (the tokenizer owns them).
CONTROL_IRRELEVANT_FIELDS = (
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_name_or_path",
    *LEGACY_SPECIAL_TOKEN_FIELDS,
)


def control_config(model_dir: Path) -> dict[str, Any]:
    """What the control row's weights and training depend on: the checkpoint's config, minus the fields
    that build no different control."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for key in CONTROL_IRRELEVANT_FIELDS:
        config.pop(key, None)
    return config


def check_control_config(args: argparse.Namespace) -> None:
    """Record the control's config in OUT, or, when the control row is kept from an earlier run
    (``--rows pretrained``), refuse a checkpoint whose config would build a different control."""
    record = args.out / CONTROL_CONFIG_FILE
    current = control_config(args.model)
    if CONTROL in args.rows:
        record.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    if not any((args.out / "results" / CONTROL).glob("*.json")):
        return
    if not record.is_file():
        raise SystemExit(
            f"{record}: missing, so the control results in {args.out} cannot be checked against "
            f"{args.model}; rerun with --rows pretrained control"
        )
    if json.loads(record.read_text(encoding="utf-8")) != current:
        raise SystemExit(
            f"{record}: the kept control row was built from another config than {args.model}/config.json; "
            "rerun with --rows pretrained control"
        )


def sweep_jobs(args: argparse.Namespace) -> list[Job]:
    swept = (PRETRAINED, CONTROL) if args.sweep_control else (PRETRAINED,)
    rows = [row for row in swept if row in args.rows]
    jobs = []
    for protocol in selected(args):
        for row in rows:
            for learning_rate in args.learning_rates:
                for epochs in epoch_grid(args, protocol.task):
                    name = f"sweep-{protocol.task}-{row}-lr{learning_rate:g}-ep{epochs:g}"
                    result = sweep_result(args, row, protocol.task, learning_rate, epochs)
                    if args.keep_sweep_results and finished_result(result):
                        continue
                    command = reforbert_job(protocol, args, result, tuning=True)
                    command += ["--model", str(model_dirs(args)[row]), "--seed", str(args.sweep_seed)]
                    command += ["--learning-rate", str(learning_rate), "--epochs", str(epochs)]
                    log = args.out / "logs" / f"{name}.log"
                    jobs.append(
                        Job(name, command, log, threads_per_job(args), result, protocol.task, args.sweep_seed)
                    )
    return jobs


def sweep_result(args: argparse.Namespace, row: str, task: str, learning_rate: float, epochs: float) -> Path:
    """Where the sweep run of one (row, task, learning rate, epochs) writes its scores."""
    return args.out / "sweep" / row / f"{task}.lr{learning_rate:g}.ep{epochs:g}.json"


def epoch_grid(args: argparse.Namespace, task: str) -> list[float]:
    """The epoch counts the sweep tries for ``task``: its ``--task-epochs`` if given, else ``--epochs``."""
    fixed = dict(args.task_epochs)
    return [fixed[task]] if task in fixed else list(args.epochs)


def finished_result(path: Path) -> bool:
    """Whether ``path`` holds the scores of a finished run (not a failure record)."""
    if not path.is_file():
        return False
    return "metrics" in json.loads(path.read_text(encoding="utf-8"))


def score_of(results: dict[str, Any]) -> tuple[float, ...]:
    """The main metric, then every other metric as a tie-break (KorQuAD: EM, then F1)."""
    metrics = results["metrics"]
    main = results["main_metric"]
    others = [
        value for key, value in sorted(metrics.items()) if key != main and isinstance(value, (int, float))
    ]
    return (float(metrics[main]), *map(float, others))


def choose(args: argparse.Namespace) -> dict[str, Any]:
    """Read the sweep's results; per row and task, the best setting on the tuning split."""
    rows: dict[str, dict[str, Any]] = {}
    for row in (PRETRAINED, CONTROL):
        for protocol in selected(args):
            candidates = []
            for learning_rate in args.learning_rates:
                for epochs in epoch_grid(args, protocol.task):
                    path = sweep_result(args, row, protocol.task, learning_rate, epochs)
                    if not path.is_file():
                        continue
                    data = json.loads(path.read_text(encoding="utf-8"))
                    candidate = {"learning_rate": learning_rate, "epochs": epochs, "file": str(path)}
                    if "metrics" in data:
                        candidate.update(
                            metric=data["main_metric"], score=data["metrics"][data["main_metric"]]
                        )
                        candidate["sort_key"] = score_of(data)
                        candidate["tuning_split"] = data["split"]["description"]
                    else:
                        candidate["failure"] = data["failure"]
                    candidates.append(candidate)
            finished = [c for c in candidates if "sort_key" in c]
            if not candidates:
                continue
            best = max(finished, key=lambda c: c["sort_key"]) if finished else None
            for candidate in candidates:
                candidate.pop("sort_key", None)
            rows.setdefault(row, {})[protocol.task] = {
                "learning_rate": best["learning_rate"] if best else None,
                "epochs": best["epochs"] if best else None,
                "metric": best["metric"] if best else None,
                "tuning_score": best["score"] if best else None,
                "candidates": candidates,
            }
    return {"split_seed": SPLIT_SEED, "tuning_fraction": TUNING_FRACTION, "rows": rows}


def chosen_setting(choice: dict[str, Any], row: str, task: str) -> dict[str, Any] | None:
    """The row's own choice where its sweep ran, else the pretrained row's (the control's default)."""
    for source in (row, PRETRAINED):
        setting = choice["rows"].get(source, {}).get(task)
        if setting is not None and setting["learning_rate"] is not None:
            return {**setting, "chosen_for": source}
    return None


def finetune_jobs(args: argparse.Namespace, choice: dict[str, Any]) -> tuple[list[Job], list[dict[str, Any]]]:
    """The runs of the finetune stage, and a record for every run that cannot start (no setting chosen;
    ``record_skipped_runs`` writes their failure records)."""
    jobs, skipped = [], []
    epochs_override = dict(args.finetune_epochs)
    for protocol in selected(args):
        for row, model in model_dirs(args).items():
            if row not in args.rows:
                continue
            setting = chosen_setting(choice, row, protocol.task)
            for seed in args.seeds:
                name = f"finetune-{protocol.task}-{row}-seed{seed}"
                result = args.out / "results" / row / f"{protocol.task}.seed{seed}.json"
                log = args.out / "logs" / f"{name}.log"
                if setting is None:
                    reason = "no learning rate chosen: every sweep run of this task failed or none ran"
                    skipped.append(
                        {
                            "job": name,
                            "exit_code": None,
                            "seconds": 0.0,
                            "log": str(log),
                            "reason": reason,
                            "result": str(result),
                            "task": protocol.task,
                            "seed": seed,
                        }
                    )
                    continue
                command = reforbert_job(protocol, args, result, tuning=False)
                command += ["--model", str(model), "--seed", str(seed)]
                epochs = epochs_override.get(protocol.task, setting["epochs"])
                command += ["--learning-rate", str(setting["learning_rate"]), "--epochs", str(epochs)]
                jobs.append(Job(name, command, log, threads_per_job(args), result, protocol.task, seed))
    return jobs, skipped


def record_skipped_runs(skipped: Sequence[dict[str, Any]]) -> None:
    """A log line and a failure record for each run that could not start, where its result would be."""
    for record in skipped:
        log = Path(record["log"])
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(record["reason"] + "\n", encoding="utf-8")
        write_failure(
            Path(record["result"]),
            record["task"],
            record["seed"],
            None,
            log,
            reason="not run: no learning rate chosen",
        )


def set_aside_results_of_other_settings(
    args: argparse.Namespace, jobs: Sequence[Job], skipped: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    """Before a finetune stage, move out of OUT/results every earlier result of the (row, task) cells it
    runs that the report must not average with its own: the seeds it reruns, and other seeds trained
    with another setting or evaluation split (or too old to record them). Seeds of the same protocol
    record stay, so seeds can be added in later invocations. Nothing is deleted: set-aside files go to
    OUT/replaced/<time>/<row>/. Returns where they went."""
    # (row, task) -> the protocol record this stage trains it with (None: it cannot start), and its
    # result files
    cells: dict[tuple[str, str], tuple[dict[str, Any] | None, set[str]]] = {}
    for job in jobs:
        cell = (job.result.parent.name, job.task)
        if cell not in cells:  # the seeds of a cell share their setting: hash its weights once
            cells[cell] = (job_protocol(job), set())
        cells[cell][1].add(job.result.name)
    for record in skipped:
        result = Path(record["result"])
        cells.setdefault((result.parent.name, record["task"]), (None, set()))[1].add(result.name)
    destination = args.out / "replaced" / time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for (row, task), (protocol, rerun) in cells.items():
        for earlier in sorted((args.out / "results" / row).glob(f"{task}.seed*.json")):
            recorded = json.loads(earlier.read_text(encoding="utf-8")).get("protocol")
            if earlier.name not in rerun and protocol is not None and recorded == protocol:
                continue
            target = destination / row / earlier.name
            target.parent.mkdir(parents=True, exist_ok=True)
            earlier.replace(target)
            moved.append(target)
    if moved:
        print(f"set {len(moved)} earlier results aside (rerun, or another setting) in {destination}")
    return moved


def report(args: argparse.Namespace) -> None:
    """RESULTS.md and RESULTS.png from the rows that have results in OUT (an OUT that only ever ran
    ``--rows pretrained`` has no control row, and then no lift column)."""
    labels = {PRETRAINED: f"{args.model.resolve().name}, pretrained", CONTROL: CONTROL_LABEL}
    rows = [row for row in (PRETRAINED, CONTROL) if (args.out / "results" / row).is_dir()]
    if not rows:
        raise SystemExit(f"error: {args.out / 'results'}: no results to report; run the finetune stage first")
    command = [sys.executable, "-m", "reforbert.cli", "report"]
    command += [str(args.out / "results" / row) for row in rows]
    for row in rows:
        command += ["--name", labels[row]]
    if CONTROL in rows:
        command += ["--control", CONTROL_LABEL]
    command += ["--output", str(args.out / "RESULTS.md")]
    subprocess.run(command, check=True)


# ----------------------------------------------------------------------------------------------
# Command line


def parse_limits(values: Sequence[str]) -> dict[str, int]:
    limits = {}
    for value in values:
        task, _, number = value.partition("=")
        if task not in TASK_NAMES or not number.isdigit():
            raise argparse.ArgumentTypeError(
                f"--max-train-examples wants TASK=N with a task of {TASK_NAMES}: {value!r}"
            )
        limits[task] = int(number)
    return limits


def task_epochs(value: str) -> tuple[str, float]:
    """One ``TASK=EPOCHS`` of ``--task-epochs`` or ``--finetune-epochs``."""
    task, _, number = value.partition("=")
    try:
        epochs = float(number)
    except ValueError:
        epochs = 0.0
    if task not in TASK_NAMES or epochs <= 0:
        raise argparse.ArgumentTypeError(f"wants TASK=EPOCHS with a task of {TASK_NAMES}: {value!r}")
    return task, epochs


def stage_label(stage: str, args: argparse.Namespace) -> str:
    """The key under which summary.json records a stage's clock and settings.

    A sweep or finetune run of some rows or tasks gets its own key (``finetune (pretrained row; korsts)``),
    so that it does not overwrite the record of the run that produced the table's other cells.
    """
    if stage == "report":
        return stage
    scope = []
    if set(args.rows) != {PRETRAINED, CONTROL}:
        scope.append(f"{', '.join(args.rows)} row")
    if set(args.tasks) != set(TASK_NAMES):
        scope.append(", ".join(args.tasks))
    return f"{stage} ({'; '.join(scope)})" if scope else stage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="The pretrained model folder (default: the released checkpoint).",
    )
    add(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help="A folder laid out like ../shared/data (it needs tasks/).",
    )
    add(
        "--out",
        type=Path,
        default=REPO / "experiments" / "kowiki_mini",
        help="Where results, logs, the choice of settings and the report go.",
    )
    add(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "reforbert-kowiki-mini",
        help="Where both rows' fp32 model folders are built; never committed.",
    )
    add(
        "--stages",
        default="sweep,finetune,report",
        help="Comma-separated stages to run, in order: sweep, finetune, report.",
    )
    add(
        "--tasks",
        nargs="+",
        default=list(TASK_NAMES),
        choices=TASK_NAMES,
        metavar="TASK",
        help="Only these benchmarks (default: all seven).",
    )
    add(
        "--seeds",
        nargs="+",
        type=int,
        default=[1, 2, 3],
        help="The training seeds of the finetune stage (default: 1 2 3).",
    )
    add("--sweep-seed", type=int, default=1, help="The one training seed of the sweep.")
    add(
        "--learning-rates",
        nargs="+",
        type=float,
        default=[1e-4, 3e-4, 1e-3],
        help="The sweep's learning rates.",
    )
    add(
        "--epochs",
        nargs="+",
        type=float,
        default=[3.0],
        help="The sweep's epoch counts (the finetune stage uses the chosen one unless --finetune-epochs "
        "names the task).",
    )
    add(
        "--sweep-control",
        action="store_true",
        help="Sweep the control row too (by default it uses the pretrained row's choice).",
    )
    add(
        "--rows",
        nargs="+",
        choices=[PRETRAINED, CONTROL],
        default=[PRETRAINED, CONTROL],
        help="The rows the sweep and finetune stages run. The control depends only on the checkpoint's "
        "config, so a new checkpoint of the same config may keep OUT's control row: --rows pretrained "
        f"(refused when OUT/{CONTROL_CONFIG_FILE} differs from the new config).",
    )
    add(
        "--keep-sweep-results",
        action="store_true",
        help="Run only the sweep settings without a finished results file in OUT/sweep (to widen a grid); "
        "the choice is still made over the whole grid. Only for the same --model and data.",
    )
    add(
        "--time-budget-minutes",
        type=float,
        default=2.25,
        help="Training wall-clock cap of each run, in minutes; evaluation comes on top.",
    )
    add(
        "--max-train-examples",
        nargs="+",
        default=[],
        metavar="TASK=N",
        help="Override the protocol's training subset of a task (N=0: all of it), e.g. nsmc=20000.",
    )
    add(
        "--task-epochs",
        nargs="+",
        type=task_epochs,
        default=[],
        metavar="TASK=EPOCHS",
        help="Train a task for this many epochs in the sweep and the finetune stage alike (instead of the "
        "--epochs grid), so that its learning rate is chosen at the epoch count and data it is reported "
        "with, e.g. paws=5.",
    )
    add(
        "--finetune-epochs",
        nargs="+",
        type=task_epochs,
        default=[],
        metavar="TASK=EPOCHS",
        help="Train the finetune stage of a task for this many epochs instead of the sweep's choice (the "
        "learning rate still comes from a sweep at other epochs), e.g. korsts=4 where the sweep could not "
        "afford the longer run; --task-epochs is the consistent choice.",
    )
    add("--parallel", type=int, default=2, help="Runs at a time; the cores are split between them.")
    add("--threads-per-job", type=int, default=0, help="Threads of each run (default: cores / --parallel).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"]:
        split = argv.index("--") if "--" in argv else len(argv)
        return run_job(job_parser().parse_args(argv[1:split]), argv[split + 1 :])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.max_train_examples = parse_limits(args.max_train_examples)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    stages = args.stages.split(",")
    unknown = [stage for stage in stages if stage not in ("sweep", "finetune", "report")]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from sweep, finetune, report")
    if {"sweep", "finetune"} & set(stages) and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no model folder there (config.json missing)")
    if {"sweep", "finetune"} & set(stages) and not (args.data_dir / "tasks").is_dir():
        parser.error(f"--data-dir {args.data_dir}: no tasks/ folder there")

    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    summary.setdefault("jobs", {})
    settings = {key: str(value) for key, value in vars(args).items()}
    # Settings are kept per stage: a later `--stages report` must not overwrite what the sweep and the
    # finetune stage ran with (an older summary's single flat record is dropped).
    summary["settings"] = {
        stage: values for stage, values in summary.get("settings", {}).items() if isinstance(values, dict)
    }
    choice_path = args.out / "sweep" / "choice.json"
    prepared, any_failed = False, False
    for stage in stages:
        started = time.time()
        records: list[dict[str, Any]] = []
        if stage in ("sweep", "finetune") and not prepared:
            check_control_config(args)
            prepare_models(args.model, model_dirs(args))
            prepared = True
        if stage == "sweep":
            records = run_jobs(sweep_jobs(args), args.parallel)
            choice = choose(args)
            if choice_path.is_file():  # a sweep of some tasks keeps the others' earlier choices
                earlier = json.loads(choice_path.read_text(encoding="utf-8"))
                for row, tasks in earlier.get("rows", {}).items():
                    choice["rows"][row] = {**tasks, **choice["rows"].get(row, {})}
            choice_path.parent.mkdir(parents=True, exist_ok=True)
            choice_path.write_text(json.dumps(choice, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {choice_path}")
        elif stage == "finetune":
            if not choice_path.is_file():
                parser.error(f"no {choice_path}: run the sweep stage first")
            jobs, records = finetune_jobs(args, json.loads(choice_path.read_text(encoding="utf-8")))
            set_aside_results_of_other_settings(args, jobs, records)
            record_skipped_runs(records)
            records += run_jobs(jobs, args.parallel)
        else:
            report(args)
        label = stage_label(stage, args)
        summary.setdefault("stages", {})[label] = round(time.time() - started, 1)
        summary["settings"][label] = settings
        for record in records:
            summary["jobs"][record["job"]] = record
        summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        failed = [record["job"] for record in records if record["exit_code"] != 0]
        if failed:
            any_failed = True
            print(
                f"{stage}: {len(failed)} of {len(records)} runs failed: {', '.join(failed)}", file=sys.stderr
            )
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main())
