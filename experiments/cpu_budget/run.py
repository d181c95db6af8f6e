"""ReforBERT against an exact-attention BERT of the same size, on the same data and budget.

Stages (each a ``reforbert`` command in its own process, logged under OUT/logs/):

1. ``prepare``: Korean Wikipedia (``DATA/kowiki``) -> clean text -> 8000-piece vocabulary -> shards.
2. ``pretrain``: two ``mini`` models on the same shards, the same token budget and the same wall-clock
   cap: ReforBERT (``lsh`` attention, reversible layers) and the exact-attention baseline (``full``
   attention, ordinary residuals: the same weights and architecture, only the attention and the memory
   strategy differ). With ``--parallel 2`` they run side by side, one core each, so they share the
   machine evenly.
3. ``finetune``: both models on the seven benchmarks with the protocol in ``FINETUNE_PROTOCOL``.
4. ``report``: the results table (both rows beside the published ones), both pretraining curves in
   one PNG, and ``summary.json`` with every stage's wall-clock, throughput and peak memory.

Everything that is committed (results JSON, logs, plots) goes to ``--out``; the large intermediate
files (clean text, shards, weights) go to ``--work-dir``, which is never committed.

Example (the published run; about 1h45 on 2 CPU cores)::

    python experiments/cpu_budget/run.py --pretrain-minutes 30 --finetune-minutes 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    pretrain_flags: tuple[str, ...]
    # Fine-tuning inputs are at most 512 tokens, where exact attention is both exact and faster than LSH;
    # ReforBERT fine-tunes with "auto", which is how a user would run it on short inputs.
    finetune_flags: tuple[str, ...] = ()


ROWS = (
    Row(
        "reforbert-lsh-reversible",
        "ReforBERT mini (LSH, reversible)",
        ("--attention", "lsh", "--reversible"),
        finetune_flags=("--attention", "auto"),
    ),
    Row(
        "bert-full-attention",
        "Exact-attention BERT mini (full, not reversible)",
        ("--attention", "full", "--no-reversible"),
    ),
)


@dataclass(frozen=True)
class FinetuneRun:
    """How one benchmark is trained and evaluated from the files in DATA/tasks."""

    task: str
    train: str
    eval: str | None = None
    # Where no dev or test file exists here, a dev split is carved from the train file by seed 42
    # (KorQuAD by whole articles, in memory).
    dev_fraction: float | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)


FINETUNE_PROTOCOL = (
    FinetuneRun(
        "nsmc",
        "nsmc/ratings_train.proxy.txt",
        dev_fraction=0.1,
        extra=("--max-train-examples", "20000", "--max-eval-examples", "2000"),
    ),
    FinetuneRun("naver-ner", "naver_ner/train.tsv", dev_fraction=0.1),
    FinetuneRun("paws", "paws_ko/dev_2k.tsv", dev_fraction=0.2),
    FinetuneRun("kornli", "kornli/xnli.dev.ko.tsv", dev_fraction=0.2),
    FinetuneRun("korsts", "korsts/sts-train.tsv", eval="korsts/sts-dev.tsv"),
    FinetuneRun("question-pair", "question_pair/train.txt", eval="question_pair/validation.txt"),
    # Scoring 512-token windows dominates the CPU budget: score a seeded 300-question subset of the dev.
    FinetuneRun(
        "korquad", "korquad1/KorQuAD_v1.0_dev.json", dev_fraction=0.2, extra=("--max-eval-examples", "300")
    ),
)


@dataclass
class Job:
    name: str
    command: list[str]
    log: Path
    threads: int
    started: float = 0.0
    process: subprocess.Popen | None = None
    record: dict = field(default_factory=dict)


def run_jobs(jobs: list[Job], parallel: int) -> list[dict]:
    """Run jobs ``parallel`` at a time; record each one's wall-clock, exit status and peak RSS."""
    pending, running, records = list(jobs), [], []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(
                os.environ,
                OMP_NUM_THREADS=str(job.threads),
                MKL_NUM_THREADS=str(job.threads),
                TOKENIZERS_PARALLELISM="false",
                PYTHONUNBUFFERED="1",
            )
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name}: {' '.join(job.command)}", flush=True)
            handle = open(job.log, "w")  # noqa: SIM115 - closed when the job is reaped
            job.process = subprocess.Popen(job.command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            job.record["log_handle"] = handle
            job.started = time.time()
            running.append(job)
        # wait4 gives the finished child's own resource usage, so each job's peak RSS is its own.
        pid, status, usage = os.wait4(-1, 0)
        job = next((j for j in running if j.process is not None and j.process.pid == pid), None)
        if job is None:
            continue
        running.remove(job)
        job.record.pop("log_handle").close()
        code = os.waitstatus_to_exitcode(status)
        job.process.returncode = code
        record = {
            "job": job.name,
            "command": job.command,
            "exit_code": code,
            "seconds": round(time.time() - job.started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "threads": job.threads,
            "log": str(job.log),
        }
        records.append(record)
        state = "done" if code == 0 else f"FAILED (exit {code}, see {job.log})"
        print(f"[{time.strftime('%H:%M:%S')}] {state} {job.name} in {record['seconds']} s", flush=True)
    return records


def reforbert(*args: str) -> list[str]:
    return [sys.executable, "-m", "reforbert.cli", *args]


def prepare_jobs(args: argparse.Namespace) -> list[list[Job]]:
    work, logs = args.work_dir, args.out / "logs"
    corpus = work / "kowiki.txt"
    vocab = work / "vocab"
    shards = work / "shards"
    threads = os.cpu_count() or 1
    return [
        [
            Job(
                "corpus",
                reforbert("corpus", str(args.data_dir / "kowiki"), "-o", str(corpus), "--overwrite"),
                logs / "prepare-corpus.log",
                threads,
            )
        ],
        [
            Job(
                "vocab",
                reforbert("vocab", str(corpus), "-o", str(vocab), "--overwrite"),
                logs / "prepare-vocab.log",
                threads,
            )
        ],
        [
            Job(
                "shards",
                reforbert(
                    "pretraining-data",
                    str(corpus),
                    "--vocab",
                    str(vocab),
                    "-o",
                    str(shards),
                    "--max-seq-len",
                    str(args.max_seq_len),
                    "--overwrite",
                ),
                logs / "prepare-shards.log",
                threads,
            )
        ],
    ]


def pretrain_jobs(args: argparse.Namespace) -> list[Job]:
    threads = args.threads_per_job or max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = []
    for row in ROWS:
        command = reforbert(
            "pretrain",
            "--data",
            str(args.work_dir / "shards"),
            "--vocab",
            str(args.work_dir / "vocab"),
            "--output",
            str(args.work_dir / "runs" / row.name),
            "--overwrite",
            "--preset",
            args.preset,
            *row.pretrain_flags,
            "--max-seq-len",
            str(args.max_seq_len),
            "--micro-batch-size",
            str(args.micro_batch_size),
            "--global-batch-size",
            str(args.global_batch_size),
            "--learning-rate",
            str(args.learning_rate),
            "--schedule",
            "linear",
            "--time-budget-minutes",
            str(args.pretrain_minutes),
            "--precision",
            args.precision,
            "--save-steps",
            "50",
            "--eval-steps",
            "25",
            "--seed",
            "0",
        )
        if args.pretrain_tokens:
            command += ["--max-tokens", str(args.pretrain_tokens)]
        jobs.append(
            Job(f"pretrain-{row.name}", command, args.out / "logs" / f"pretrain-{row.name}.log", threads)
        )
    return jobs


def finetune_jobs(args: argparse.Namespace) -> list[Job]:
    threads = args.threads_per_job or max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = []
    for run in FINETUNE_PROTOCOL:
        if args.tasks and run.task not in args.tasks:
            continue
        for row in ROWS:
            command = reforbert(
                "finetune",
                run.task,
                "--model",
                str(args.work_dir / "runs" / row.name / "model"),
                "--train",
                str(args.data_dir / "tasks" / run.train),
                "--results-dir",
                str(args.out / row.name),
                "--overwrite",
                "--no-progress",
                "--time-budget",
                str(args.finetune_minutes),
                "--epochs",
                str(args.finetune_epochs),
                *run.extra,
                *row.finetune_flags,
            )
            if args.finetune_learning_rate:
                command += ["--learning-rate", str(args.finetune_learning_rate)]
            if run.eval:
                command += ["--eval", str(args.data_dir / "tasks" / run.eval)]
            else:
                command += ["--dev-fraction", str(run.dev_fraction)]
            jobs.append(
                Job(
                    f"finetune-{run.task}-{row.name}",
                    command,
                    args.out / "logs" / f"finetune-{run.task}-{row.name}.log",
                    threads,
                )
            )
    return jobs


def report(args: argparse.Namespace) -> None:
    runs = [args.work_dir / "runs" / row.name for row in ROWS]
    for row, run in zip(ROWS, runs, strict=True):
        if (run / "metrics.jsonl").is_file():
            shutil.copy(run / "metrics.jsonl", args.out / f"pretrain-{row.name}.metrics.jsonl")
    labels = [row.label for row in ROWS]
    subprocess.run(
        reforbert(
            "plot", *map(str, runs), "--output", str(args.out / "pretraining_curves.png"), "--labels", *labels
        ),
        check=True,
    )
    names = [arg for row in ROWS for arg in ("--name", row.label)]
    subprocess.run(
        reforbert(
            "report",
            *(str(args.out / row.name) for row in ROWS),
            *names,
            "--output",
            str(args.out / "RESULTS.md"),
        ),
        check=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help="Folder laid out like ../shared/data (kowiki/ and tasks/).",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/reforbert-cpu-budget"),
        help="Where the clean text, shards and weights go; never committed.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "experiments" / "cpu_budget" / "results",
        help="Where the committed results, logs and plots go.",
    )
    parser.add_argument(
        "--stages",
        default="prepare,pretrain,finetune,report",
        help="Comma-separated stages to run, in order.",
    )
    parser.add_argument("--preset", default="mini", help="Model size of both rows.")
    parser.add_argument("--max-seq-len", type=int, default=512, help="Pretraining sequence length.")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="Pretraining micro-batch.")
    parser.add_argument("--global-batch-size", type=int, default=32, help="Pretraining global batch.")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="Pretraining peak learning rate.")
    parser.add_argument(
        "--precision", default="bf16", help="Pretraining precision (bf16 autocast helps on AMX CPUs)."
    )
    parser.add_argument(
        "--pretrain-minutes", type=float, default=30.0, help="Wall-clock cap of each pretraining."
    )
    parser.add_argument(
        "--pretrain-tokens",
        type=int,
        default=0,
        help="Token budget of each pretraining (0: only the wall-clock cap).",
    )
    parser.add_argument(
        "--finetune-minutes", type=float, default=1.5, help="Training cap per fine-tuning run."
    )
    parser.add_argument("--finetune-epochs", type=float, default=3.0, help="Epoch cap per fine-tuning run.")
    parser.add_argument("--tasks", nargs="*", help="Only these benchmarks (default: all seven).")
    parser.add_argument(
        "--parallel", type=int, default=2, help="Jobs at a time; cores are split between them."
    )
    parser.add_argument(
        "--finetune-learning-rate",
        type=float,
        default=0.0,
        help="One learning rate for every fine-tuning run (0: each task's published rate, tuned for "
        "fully pretrained models; small models pretrained for minutes need a higher one).",
    )
    parser.add_argument(
        "--threads-per-job", type=int, default=0, help="Threads of each job (default: cores / --parallel)."
    )
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"jobs": {}}
    summary["settings"] = {k: str(v) for k, v in vars(args).items()}
    for stage in args.stages.split(","):
        started = time.time()
        if stage == "prepare":
            records = [r for group in prepare_jobs(args) for r in run_jobs(group, 1)]
        elif stage == "pretrain":
            records = run_jobs(pretrain_jobs(args), args.parallel)
        elif stage == "finetune":
            records = run_jobs(finetune_jobs(args), args.parallel)
        elif stage == "report":
            report(args)
            records = []
        else:
            parser.error(f"unknown stage {stage!r}")
        summary.setdefault("stages", {})[stage] = round(time.time() - started, 1)
        for record in records:
            summary["jobs"][record["job"]] = record
        summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        failed = [r["job"] for r in records if r["exit_code"] != 0]
        if failed and stage in ("prepare", "pretrain"):
            print(f"stage {stage} failed: {', '.join(failed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
