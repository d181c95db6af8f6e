"""Ten minutes of one GPU: a stronger `mini` checkpoint, its fine-tuning table and the GPU benchmark rows.

GPU time is often short (a rented instance, a cluster's short queue), on a machine that may have no
network access and no copy of ../shared/data. So what it needs is prepared beforehand on any machine, it
runs one command, and everything it produces comes back as one archive:

    # here, once (reads ../shared/data): the cleaned Korean Wikipedia, split and compressed (~26 MB),
    # and the benchmark files that may be copied (~25 MB)
    python experiments/kowiki_mini/gpu_session.py pack --to .gpu-data
    # there, from the repository root, with .gpu-data copied along
    python experiments/kowiki_mini/gpu_session.py run --data .gpu-data --out gpu-results

`run`, on the GPU machine:

1. makes the pretraining instances from the packed text (all cores; the released vocabulary);
2. gives each pretraining stage its share of the time, and the stage sizes its own schedule to it from
   the pace of its first steps (`--fit-schedule-to-time-budget`): a linear decay that reaches zero by the
   deadline, not one cut off by the clock;
3. pretrains `mini` from random weights in two stages, length 32 then 128, bf16 (the curriculum that
   left the unigram plateau on the CPU, see this folder's README);
4. scores the held-out documents (`heldout_mlm.py`, length 128, 15% masked) and writes the fp16 release
   folder (`release.py`; its card is rewritten afterwards, with the fine-tuning table);
5. fine-tunes the release and its random-initialisation control on the packed benchmarks with this
   folder's protocol (`run.py`: a learning-rate sweep per row on tuning splits, then 3 seeds per cell on
   the reported splits, then the report), many runs side by side on the one GPU, each on a core of its own;
   Naver NER is not among them (its license forbids copying the file), so it is fine-tuned afterwards
   where ../shared/data is;
6. runs `benchmarks/model_throughput.py --targets gpu` in the time that is left;
7. packs the stage folders (metrics and settings; no checkpoints), the release folder, the scores, the
   fine-tuning results, the benchmark results and every log into OUT/gpu-session.tar.gz and prints a
   summary (also OUT/summary.md).

Each step runs in its own process group under a time limit, and a failed step stops only what needs its
output (the benchmark runs even if pretraining failed): whatever was produced comes back.
``run --precision fp32 --targets none --minutes 9 --pretrain-minutes 3 --max-text-mb 3
--global-batch-size 16 --finetune-minutes 3 --finetune-flags "--tasks question-pair --seeds 1 2
--learning-rates 1e-3 --max-train-examples question-pair=300 --task-epochs question-pair=1"`` rehearses
the whole session on a CPU with a slice of the text and one small benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_KOWIKI = REPO.parent / "shared" / "data" / "kowiki"
DEFAULT_TASKS = REPO.parent / "shared" / "data" / "tasks"
VOCAB = REPO / "models" / "reforbert-mini-kowiki"  # the released vocabulary: models stay comparable
PACKED_FILES = ("train.txt.xz", "heldout.txt.xz")
ARCHIVE = "gpu-session.tar.gz"
# What of the scratch folder comes back (the fine-tuning's model folders, under finetune-models, do not).
# The release folder is named as the released checkpoint, so that the fine-tuning table's row reads so.
RELEASE = VOCAB.name
ARCHIVED = ("summary.md", "heldout_mlm.json", "logs", "runs", RELEASE, "finetune", "benchmark")
WORK_MARKER = ".gpu-session-scratch"  # only a folder holding it is emptied by a later run


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    max_seq_len: int
    global_batch_size: int
    learning_rate: float
    warmup_steps: int
    mlm_probability: float
    share: float  # of the pretraining minutes
    dupe_factor: int  # passes over the text when its instances are made, each with new splits

    @property
    def data(self) -> str:
        return f"train{self.max_seq_len}"

    @property
    def heldout(self) -> str:
        return f"heldout{self.max_seq_len}"


# The CPU releases' curriculum (stage 1 at length 32 masking 15%, then length 128 masking 25%, peak rate
# 2e-3), with twice their batch of 64: a mini step is too small to keep a GPU busy at 64.
STAGES = (
    Stage("s1", 32, 128, 2e-3, 200, 0.15, share=0.25, dupe_factor=1),
    Stage("s2", 128, 128, 2e-3, 300, 0.25, share=0.75, dupe_factor=5),
)
START_UP_S = 25.0  # per pretraining process, before its clock starts: imports, the data, the model
RELEASE_S = 90.0  # scoring the held-out documents and writing the release folder, after pretraining
EVAL_EVERY = 500
EVAL_EXAMPLES = 2000

# The benchmarks fine-tuned on the GPU machine (run.py's names) and the folder of ../shared/data/tasks
# each reads, copied there unmodified by `pack`. Not Naver NER: its license allows no copy anywhere.
PORTABLE_TASKS = {
    "nsmc": "nsmc",
    "paws": "paws_ko",
    "kornli": "kornli",
    "korsts": "korsts",
    "question-pair": "question_pair",
    "korquad": "korquad1",
}
# run.py's flags on the GPU: the CPU protocol's grid, epochs and splits (so that the tables compare),
# with the CPU's training subsets lifted where a GPU affords them in its share of the session (NSMC:
# 30,000 of its 121,500 training reviews instead of 10,000; KorQuAD: every training question).
GPU_FINETUNE_FLAGS = (
    "--learning-rates 3e-4 1e-3 3e-3 --sweep-control "
    "--task-epochs nsmc=2 paws=5 kornli=5 korsts=4 question-pair=4 korquad=3 "
    "--max-train-examples nsmc=30000 korsts=0 korquad=0"
)
# Shares of the fine-tuning minutes: the sweep, then the seeds; the report takes the rest (seconds).
SWEEP_SHARE, SEEDS_SHARE = 0.46, 0.46
# A fine-tuning run's start-up (imports, the GPU, tokenising its data) and evaluation, besides its
# training: its training is capped at what is left of its step's time, so that a slow run stops and
# reports (``stopped_by_time_budget``) instead of being killed with its step.
FINETUNE_RUN_OVERHEAD_S = 25.0


class Session:
    """The steps of `run`, each logged to WORK/logs and recorded in the summary, in order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + 60 * args.minutes
        self.records: list[dict] = []

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, command: Sequence[str], limit_s: float) -> bool:
        """Run one command under a time limit, its output in WORK/logs/NAME.log; True if it succeeded."""
        limit_s = max(1.0, min(limit_s, self.seconds_left()))
        log = self.logs / f"{name}.log"
        started = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name} (at most {limit_s:.0f} s)", flush=True)
        with log.open("w", encoding="utf-8") as stream:
            stream.write(" ".join(map(str, command)) + "\n")
            stream.flush()
            # A process group of its own, so that a step stopped by its limit takes its children along
            # (fine-tuning runs, data workers) instead of leaving them on the GPU for the next step.
            process = subprocess.Popen(
                list(map(str, command)),
                stdout=stream,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
            try:
                status: int | str = process.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                stop_process_group(process)
                status = "timed out"
        seconds = time.monotonic() - started
        self.records.append({"step": name, "status": status, "seconds": round(seconds, 1)})
        if status != 0:
            print(f"  {name}: {status} after {seconds:.0f} s; the end of {log}:", flush=True)
            print(
                "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:]), flush=True
            )
        return status == 0


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the process and everything it started, SIGKILL to what is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the parent if it lingers, children that outlived it
    process.wait()


def reforbert(*arguments: object) -> list[str]:
    return [sys.executable, "-m", "reforbert.cli", *map(str, arguments)]


def make_instances(session: Session) -> bool:
    args, work = session.args, session.work
    for name in ("train", "heldout"):
        with lzma.open(args.data / f"{name}.txt.xz", "rt", encoding="utf-8") as source:
            text = source.read()
        if args.max_text_mb:  # a rehearsal trains on a slice
            text = text[: int(args.max_text_mb * 1e6)]
        (work / f"{name}.txt").write_text(text, encoding="utf-8")
    workers = os.cpu_count() or 1
    ok = True
    for stage in STAGES:
        for part, seed, dupe in (("train", 0, stage.dupe_factor), ("heldout", 1, 1)):
            output = work / (stage.data if part == "train" else stage.heldout)
            ok &= session.step(
                f"instances-{output.name}",
                reforbert(
                    "pretraining-data",
                    work / f"{part}.txt",
                    "--vocab",
                    VOCAB,
                    "-o",
                    output,
                    "--max-seq-len",
                    stage.max_seq_len,
                    "--seed",
                    seed,
                    "--dupe-factor",
                    dupe,
                    "--workers",
                    workers,
                    "--overwrite",
                ),
                limit_s=300,
            )
    return ok


def pretrain_command(session: Session, stage: Stage, output: Path, minutes: float) -> list[str]:
    """One stage, its schedule sized by the run itself to ``minutes`` (``--fit-schedule-to-time-budget``:
    the first steps' pace fixes its length, so that the rate reaches zero at the deadline)."""
    work, args = session.work, session.args
    batch = args.global_batch_size or stage.global_batch_size
    command = reforbert(
        "pretrain", "--data", work / stage.data, "--eval-data", work / stage.heldout, "--vocab", VOCAB,
        "--output", output, "--overwrite", "--preset", "mini", "--attention", "full", "--no-reversible",
        "--config", "hidden_dropout_prob=0.0", "--precision", args.precision,
        "--max-seq-len", stage.max_seq_len, "--mlm-probability", stage.mlm_probability,
        "--global-batch-size", batch, "--micro-batch-size", batch,
        "--learning-rate", stage.learning_rate, "--warmup-steps", stage.warmup_steps,
        "--time-budget-minutes", f"{minutes:.2f}", "--fit-schedule-to-time-budget",
        "--eval-steps", EVAL_EVERY, "--eval-max-examples", EVAL_EXAMPLES, "--save-steps", EVAL_EVERY,
        "--save-total-limit", 1, "--log-every", 10, "--no-progress",
        # Batches made ahead by the machine's cores, so that the GPU does not wait for them.
        "--data-workers", min(8, max(1, (os.cpu_count() or 1) - 2)),
    )  # fmt: skip
    if stage is not STAGES[0]:
        command += ["--init-from", work / "runs" / STAGES[STAGES.index(stage) - 1].name / "model"]
    return command


def fitted_schedule(run: Path) -> dict:
    """The schedule length the run fitted to its budget, and the step time it was fitted from."""
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "schedule_steps" in record:
            return {key: record[key] for key in ("schedule_steps", "fitted_step_seconds")}
    return {}


def pretrain(session: Session) -> list[dict]:
    """Run every stage in its share of the pretraining minutes; returns what each was given and fitted."""
    work, plans = session.work, []
    for stage in STAGES:
        stage_seconds = 60 * session.args.pretrain_minutes * stage.share
        plan = {"stage": stage.name, "seconds": stage_seconds}
        plans.append(plan)
        # The budget counts from the first step: the process's start-up comes out of the stage's share,
        # and the session's later steps keep their time (scoring and release, fine-tuning, packing).
        later_s = RELEASE_S + 60 * session.args.finetune_minutes + session.args.reserve_s
        budget_s = min(stage_seconds - START_UP_S, session.seconds_left() - START_UP_S - later_s)
        if budget_s < 15:
            session.records.append({"step": f"pretrain-{stage.name}", "status": "skipped: no time left"})
            return plans
        run = work / "runs" / stage.name
        ran = session.step(
            f"pretrain-{stage.name}",
            pretrain_command(session, stage, run, budget_s / 60),
            limit_s=budget_s + START_UP_S + 60,
        )
        if (run / "metrics.jsonl").is_file():
            plan.update(fitted_schedule(run))
        if not ran:
            return plans
    return plans


def release(session: Session, plans: list[dict]) -> bool:
    work = session.work
    runs = [work / "runs" / stage.name for stage in STAGES]
    if not (runs[-1] / "model" / "config.json").is_file():
        return False
    scores = work / "heldout_mlm.json"
    if not session.step(
        "heldout-mlm",
        [
            sys.executable,
            HERE / "heldout_mlm.py",
            runs[-1] / "model",
            work / STAGES[-1].heldout,
            "--output",
            scores,
        ],
        limit_s=180,
    ):
        return False
    return session.step(
        "release",
        [
            sys.executable, HERE / "release.py", "--stages", *runs, "--heldout-scores", scores,
            "--budget-minutes", *(f"{plan['seconds'] / 60:.2f}" for plan in plans),
            "--hardware", session.args.hardware, "--destination", work / RELEASE,
        ],
        limit_s=120,
    )  # fmt: skip


def finetune(session: Session) -> bool:
    """The release and its control on the packed benchmarks: run.py's sweep, seeds and report, each a
    step of its own, so that a sweep stopped by its limit still leaves its finished runs' scores."""
    args, work = session.args, session.work
    tasks = [task for task, folder in PORTABLE_TASKS.items() if (args.data / "tasks" / folder).is_dir()]
    if not tasks or not (work / RELEASE / "config.json").is_file():
        session.records.append({"step": "finetune", "status": "skipped: no release or no packed tasks"})
        return False
    unpack_tasks(args.data / "tasks", work / "data" / "tasks")
    base = [
        sys.executable, HERE / "run.py", "--model", work / RELEASE, "--data-dir", work / "data",
        "--out", work / "finetune", "--work-dir", work / "finetune-models", "--tasks", *tasks,
        "--parallel", args.finetune_parallel or os.cpu_count() or 1, "--threads-per-job", 1,
    ]  # fmt: skip
    seconds = 60 * args.finetune_minutes
    cap_minutes = max(0.25, (SWEEP_SHARE * seconds - FINETUNE_RUN_OVERHEAD_S) / 60)
    base += ["--time-budget-minutes", f"{cap_minutes:.2f}"]
    flags = shlex.split(args.finetune_flags)  # after the defaults: a flag given here wins
    swept = session.step("finetune-sweep", [*base, "--stages", "sweep", *flags], SWEEP_SHARE * seconds)
    seeds = swept and session.step(
        "finetune-seeds", [*base, "--stages", "finetune", *flags], SEEDS_SHARE * seconds
    )
    # The report of whatever finished: a cell whose runs were cut short shows them as missing.
    reported = session.step("finetune-report", [*base, "--stages", "report", *flags], limit_s=60)
    return swept and seeds and reported


def benchmark(session: Session) -> bool:
    budget = session.seconds_left() - session.args.reserve_s
    if budget < 60:
        session.records.append({"step": "benchmark", "status": "skipped: too little time left"})
        return False
    return session.step(
        "benchmark",
        [
            sys.executable, REPO / "benchmarks" / "model_throughput.py", "--targets", session.args.targets,
            "--total-budget", f"{budget - 30:.0f}", "--output-dir", session.work / "benchmark", "--overwrite",
        ],
        limit_s=budget,
    )  # fmt: skip


def summary(session: Session, plans: list[dict]) -> str:
    lines = [f"# GPU session, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {r['step']} | {r['status']} | {r.get('seconds', '')} |" for r in session.records]
    lines += ["", "Pretraining plan: " + json.dumps(plans)]
    scores = session.work / "heldout_mlm.json"
    if scores.is_file():
        held = json.loads(scores.read_text(encoding="utf-8"))
        lines += [
            "",
            f"Held-out (length 128, 15% masked, {held['instances']:,} instances): "
            f"MLM loss {held['mlm_loss']:.3f}, accuracy {100 * held['mlm_accuracy']:.1f}%, "
            f"at [MASK] {100 * held['mlm_accuracy_at_mask']:.1f}%, NSP {100 * held['nsp_accuracy']:.1f}%",
        ]
    results = session.work / "finetune" / "RESULTS.md"
    if results.is_file():
        lines += ["", results.read_text(encoding="utf-8")]
    table = session.work / "benchmark" / "model_throughput.md"
    if table.is_file():
        lines += ["", table.read_text(encoding="utf-8")]
    return "\n".join(lines) + "\n"


def pack_results(session: Session, text: str, out: Path) -> Path:
    """OUT/gpu-session.tar.gz: everything but checkpoints and data, and the fp32 models (the release
    folder holds the final one in fp16: the archive must stay under the 16 MiB a returned file may be)."""
    (session.work / "summary.md").write_text(text, encoding="utf-8")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        skipped = {"checkpoints", "model"} if "runs" in parts else set()
        return None if skipped & set(parts) else info

    out.mkdir(parents=True, exist_ok=True)
    archive = out / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name in ARCHIVED:
            if (session.work / name).exists():
                tar.add(session.work / name, arcname=name, filter=keep)
    (out / "summary.md").write_text(text, encoding="utf-8")
    return archive


def run(args: argparse.Namespace) -> int:
    missing = [name for name in PACKED_FILES if not (args.data / name).is_file()]
    if missing:
        print(f"error: {args.data}: missing {', '.join(missing)} (make them with `pack`)", file=sys.stderr)
        return 2
    problem = None
    if (args.out / ARCHIVE).exists():
        problem = f"{args.out / ARCHIVE}: already there (move it, or choose another --out)"
    elif args.work.exists() and any(args.work.iterdir()) and not (args.work / WORK_MARKER).exists():
        problem = (
            f"{args.work}: not empty and not an earlier session's scratch folder (choose another --work)"
        )
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.work.exists():
        shutil.rmtree(args.work)  # an earlier session's scratch: its results went to its archive
    args.work.mkdir(parents=True)
    (args.work / WORK_MARKER).write_text("scratch of experiments/kowiki_mini/gpu_session.py\n")
    # The package may not be installable there (nothing can be downloaded): its source always is.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])
    )
    session = Session(args)
    plans: list[dict] = []
    if make_instances(session):
        plans = pretrain(session)
        if release(session, plans) and args.finetune_minutes > 0:
            finetune(session)
    if args.targets != "none":
        benchmark(session)
    text = summary(session, plans)
    print(text)
    archive = pack_results(session, text, args.out)
    print(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return 0 if all(r["status"] == 0 for r in session.records) else 1


def pack(args: argparse.Namespace) -> int:
    """Clean and split the Korean Wikipedia as the releases did, compress it into ``--to``."""
    if not args.kowiki.is_dir():
        print(
            f"error: {args.kowiki}: no such folder (the Korean Wikipedia of ../shared/data)", file=sys.stderr
        )
        return 2
    args.to.mkdir(parents=True, exist_ok=True)
    scratch = args.to / "unpacked"
    scratch.mkdir(exist_ok=True)
    corpus, train, heldout = (scratch / name for name in ("kowiki.txt", "train.txt", "heldout.txt"))
    subprocess.run(reforbert("corpus", args.kowiki, "-o", corpus), check=True)
    split = [sys.executable, HERE / "split_documents.py", corpus, "--train", train, "--heldout", heldout]
    subprocess.run(list(map(str, split)), check=True)
    for source in (train, heldout):
        target = args.to / f"{source.name}.xz"
        compress(source, target)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    shutil.rmtree(scratch)
    pack_tasks(args.tasks, args.to / "tasks")
    return 0


def pack_tasks(source: Path, destination: Path) -> None:
    """The portable benchmarks' files (with their SOURCE.md: origin and license), each xz-compressed: the
    decompressed file is the original, byte for byte, and the whole fits what a GPU call can take along."""
    if not source.is_dir():
        print(f"{source}: no such folder; the GPU session will not fine-tune", file=sys.stderr)
        return
    for folder in PORTABLE_TASKS.values():
        if not (source / folder).is_dir():
            print(f"{source / folder}: no such folder; skipped", file=sys.stderr)
            continue
        for path in sorted((source / folder).iterdir()):
            if path.is_file():
                compress(path, destination / folder / f"{path.name}.xz")
        print(f"packed {source / folder} -> {destination / folder}")


def compress(source: Path, target: Path) -> None:
    """``target``, the xz of ``source``; never a half-written file under the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with source.open("rb") as reader, lzma.open(partial, "wb", preset=6) as writer:
        shutil.copyfileobj(reader, writer, length=1 << 20)
    partial.replace(target)


def unpack_tasks(packed: Path, destination: Path) -> None:
    """The benchmark files as ``pack_tasks`` found them, laid out as run.py's --data-dir/tasks wants."""
    for path in sorted(packed.glob("*/*.xz")):
        target = destination / path.parent.name / path.name.removesuffix(".xz")
        target.parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(path, "rb") as reader, target.open("wb") as writer:
            shutil.copyfileobj(reader, writer, length=1 << 20)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack", help="Prepare the text the GPU machine pretrains on.")
    packer.add_argument("--kowiki", type=Path, default=DEFAULT_KOWIKI, help="WikiExtractor output folder.")
    packer.add_argument(
        "--tasks", type=Path, default=DEFAULT_TASKS, help="The benchmarks' folder (../shared/data/tasks)."
    )
    packer.add_argument("--to", type=Path, default=REPO / ".gpu-data", help="Where the packed text goes.")
    runner = commands.add_parser("run", help="The session itself, on the GPU machine.")
    runner.add_argument("--data", type=Path, default=REPO / ".gpu-data", help="What `pack` wrote.")
    runner.add_argument("--out", type=Path, required=True, help="Where the archive and summary go.")
    runner.add_argument("--work", type=Path, default=Path("/tmp/reforbert-gpu-session"), help="Scratch.")
    runner.add_argument("--minutes", type=float, default=9.7, help="The whole session's wall-clock.")
    runner.add_argument("--pretrain-minutes", type=float, default=4.5, help="Probes and stages, together.")
    runner.add_argument(
        "--finetune-minutes", type=float, default=3.5, help="Sweep, seeds and report together (0: none)."
    )
    runner.add_argument(
        "--finetune-flags",
        default=GPU_FINETUNE_FLAGS,
        help="run.py's flags for the fine-tuning (default: the GPU protocol; see GPU_FINETUNE_FLAGS).",
    )
    runner.add_argument(
        "--finetune-parallel", type=int, default=0, help="Fine-tuning runs at a time (default: one a core)."
    )
    runner.add_argument("--reserve-s", type=float, default=25.0, help="Seconds kept for packing up.")
    runner.add_argument(
        "--precision", default="bf16", help="Pretraining precision (fp32 for a CPU rehearsal)."
    )
    runner.add_argument("--targets", choices=("gpu", "cpu", "none"), default="gpu", help="Benchmark rows.")
    runner.add_argument("--hardware", default="one NVIDIA H200, bf16 autocast", help="For the model card.")
    runner.add_argument("--max-text-mb", type=float, default=0.0, help="Use only this much text (rehearsal).")
    runner.add_argument(
        "--global-batch-size", type=int, default=0, help="Every stage's batch instead of its own (rehearsal)."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return pack(args) if args.command == "pack" else run(args)


if __name__ == "__main__":
    sys.exit(main())
