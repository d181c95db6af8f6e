"""Throughput and peak memory of the data pipeline: Wikipedia text -> corpus -> vocabulary -> shards.

Runs each stage in its own child process pinned to 2 cores (so stages do not share a memory peak)
on a ~10 MB slice and on the whole shared Korean Wikipedia text, and writes
``benchmarks/results/data_pipeline.{json,md}``.

    python benchmarks/data_pipeline.py                 # 10 MB and full
    python benchmarks/data_pipeline.py --sizes 10      # only the 10 MB slice

Peak RSS is ``ru_maxrss`` of the stage's main process and, separately, of its largest worker
process (``RUSAGE_CHILDREN`` reports the largest finished descendant, not a sum).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("REFORBERT_SHARED_DATA", REPO.parent / "shared" / "data")) / "kowiki"
CORES = 2


# ----------------------------------------------------------------------------------------------
# Child side: run one stage and print its measurements as one JSON line


def _pin_to_cores() -> None:
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(available[:CORES]))


def _extracted_to_corpus(source: Path, output: Path) -> None:
    """Fallback when ``reforbert corpus`` is unavailable: drop the <doc> markup, nothing else."""
    with open(output, "w", encoding="utf-8") as out:
        for file in sorted(p for p in source.rglob("wiki_*") if p.is_file()):
            with open(file, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line.startswith("<doc"):
                        continue
                    if line == "</doc>":
                        out.write("\n")
                    elif line:
                        out.write(line + "\n")


def run_stage(stage: str, source: Path, work: Path) -> dict:
    _pin_to_cores()
    start = time.perf_counter()
    import reforbert  # noqa: F401 -- torch + transformers: timed apart from the stage's own work

    result: dict = {"stage": stage, "import_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    corpus, vocab, shards = work / "corpus.txt", work / "vocab", work / "shards"
    if stage == "corpus":
        try:
            from reforbert.data.corpus import build_corpus
        except ImportError:
            _extracted_to_corpus(source, corpus)
            result["skipped"] = "reforbert.data.corpus.build_corpus is not available; markup stripped only"
        else:
            stats = build_corpus([source], corpus, workers=CORES, overwrite=True, show_progress=False)
            result["documents_kept"] = stats.documents_kept
        result["input_bytes"] = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    elif stage == "vocab":
        from reforbert.data.vocab import train_vocab

        train_vocab([corpus], vocab, overwrite=True)
        result["input_bytes"] = corpus.stat().st_size
    elif stage == "shards":
        from reforbert.data.pretraining_data import make_pretraining_data

        metadata = make_pretraining_data(
            [corpus], vocab, shards, workers=CORES, progress=False, overwrite=True
        )
        result["input_bytes"] = corpus.stat().st_size
        result["statistics"] = metadata["statistics"]
        result["output_bytes"] = sum(p.stat().st_size for p in shards.iterdir())
    result["seconds"] = time.perf_counter() - start
    # ru_maxrss is in kilobytes on Linux.
    result["peak_rss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


# ----------------------------------------------------------------------------------------------
# Parent side


def slice_of(data: Path, megabytes: float | None, folder: Path) -> Path:
    """A folder of links to the first WikiExtractor files adding up to ``megabytes`` (None: all)."""
    files = sorted(p for p in data.rglob("wiki_*") if p.is_file())
    if megabytes is None:
        return data
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for file in files:
        (folder / file.name).symlink_to(file)
        total += file.stat().st_size
        if total >= megabytes * 1e6:
            break
    return folder


def measure(source: Path, work: Path) -> list[dict]:
    results = []
    for stage in ("corpus", "vocab", "shards"):
        command = [sys.executable, __file__, "--child", stage, str(source), str(work)]
        process = subprocess.run(command, capture_output=True, text=True, check=False)
        if process.returncode != 0:
            raise SystemExit(f"stage {stage} failed:\n{process.stderr[-3000:]}")
        results.append(json.loads(process.stdout.strip().splitlines()[-1]))
        print(f"  {stage}: {results[-1]['import_seconds'] + results[-1]['seconds']:.1f} s", flush=True)
    return results


def render_markdown(report: dict) -> str:
    lines = [
        "# Data pipeline benchmark",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}, pinned to {CORES} cores.",
        "",
        "Seconds exclude starting Python and importing reforbert (torch, transformers), shown apart;",
        "the total includes both. MB/s is input megabytes per stage second.",
        "",
        "| input | stage | input MB | import s | seconds | MB/s | peak RSS main MB | peak RSS worker MB "
        "| note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in report["runs"]:
        for stage in run["stages"]:
            mb = stage["input_bytes"] / 1e6
            lines.append(
                f"| {run['label']} | {stage['stage']} | {mb:.1f} | {stage['import_seconds']:.1f} | "
                f"{stage['seconds']:.1f} | "
                f"{mb / stage['seconds']:.1f} | {stage['peak_rss_main_mb']:.0f} | "
                f"{stage['peak_rss_worker_mb']:.0f} | {stage.get('skipped', '')} |"
            )
        lines.append(f"| {run['label']} | **total** | | | {run['total_seconds']:.1f} | | | | |")
    lines += ["", "Corpus statistics (shards stage):", ""]
    for run in report["runs"]:
        stats = run["stages"][-1]["statistics"]
        lines.append(
            f"- {run['label']}: {stats['documents']:,} documents, {stats['sentences']:,} sentences, "
            f"{stats['corpus_tokens']:,} tokens -> {stats['instances']:,} instances "
            f"({stats['is_next'] / stats['instances']:.1%} is-next), "
            f"{stats['instance_tokens']:,} instance tokens"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WikiExtractor folder")
    parser.add_argument("--sizes", nargs="+", default=["10", "full"], help="MB per run, or 'full'")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "SOURCE", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, source, work = args.child
        print(json.dumps(run_stage(stage, Path(source), Path(work))))
        return
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no WikiExtractor text here (set REFORBERT_SHARED_DATA)")
    report = {
        "command": "python benchmarks/data_pipeline.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="reforbert-bench-") as scratch:
        for size in args.sizes:
            label = "full" if size == "full" else f"{size} MB"
            print(f"{label}:", flush=True)
            work = Path(scratch) / label.replace(" ", "")
            work.mkdir()
            source = slice_of(args.data, None if size == "full" else float(size), work / "input")
            stages = measure(source, work)
            report["runs"].append(
                {
                    "label": label,
                    "stages": stages,
                    "total_seconds": sum(s["seconds"] + s["import_seconds"] for s in stages),
                }
            )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "data_pipeline.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown = render_markdown(report)
    (args.results / "data_pipeline.md").write_text(markdown, encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
