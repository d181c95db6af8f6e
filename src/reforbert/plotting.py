"""``reforbert plot RUN_DIR``: a run's training and held-out curves as one PNG.

Reads RUN/metrics.jsonl (written by ``reforbert pretrain``) and draws three panels against the
number of tokens seen, so runs with different batch sizes line up: training losses (total, MLM,
NSP), held-out MLM loss, and accuracies (held-out MLM, held-out MLM at the positions shown as [MASK],
and NSP; training MLM accuracy as a thin line). A metric that a log does not hold is left out, so logs
of older runs draw too. :func:`plot_runs` overlays several runs in one figure, one colour per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_file


def iter_metrics(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The records of RUN/metrics.jsonl, skipping a half-written last line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise ReforBertInputError("no metrics.jsonl in this run folder", path.parent)
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                yield record


def _read_run(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train, evaluation = [], []
    tokens_at_step: dict[int, float] = {}
    for record in iter_metrics(run_dir):
        if "loss" in record:
            train.append(record)
            tokens_at_step[record["step"]] = record.get("tokens_seen", record["step"])
        elif any(key.startswith("eval_") for key in record):
            evaluation.append(record)
    for record in evaluation:
        record.setdefault("tokens_seen", tokens_at_step.get(record["step"], record["step"]))
    if not train:
        raise ReforBertInputError("metrics.jsonl holds no training steps", run_dir / "metrics.jsonl")
    return train, evaluation


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["tokens_seen"], r[key]) for r in records if r.get(key) is not None]
    return [x for x, _ in points], [y for _, y in points]


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, so early points are not pulled to zero."""
    smoothed, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**count))
    return smoothed


def plot_runs(
    run_dirs: Sequence[str | Path], output_png: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Overlay the curves of ``run_dirs`` in ``output_png``; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ReforBertInputError("no run folders given")
    if labels is not None and len(labels) != len(run_dirs):
        raise ReforBertInputError(f"{len(labels)} labels for {len(run_dirs)} runs")
    labels = list(labels) if labels is not None else [d.name for d in run_dirs]
    figure = draw_curves([_read_run(d) for d in run_dirs], labels)
    output_png = Path(output_png)
    with atomic_file(output_png, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    return output_png


def draw_curves(runs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]], labels: list[str]) -> Any:
    """A figure of three panels (training loss, held-out loss, accuracies) with every run's curves."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, ((train, evaluation), label) in enumerate(zip(runs, labels, strict=True)):
        _draw_run(axes, train, evaluation, label, colours[number % len(colours)])
    for axis, title, ylabel in zip(
        axes,
        ("Training loss (smoothed; raw faint)", "Held-out MLM loss", "Accuracy"),
        ("loss", "loss", "accuracy"),
        strict=True,
    ):
        axis.set_title(title)
        axis.set_xlabel("tokens seen")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=7)
        else:
            axis.text(
                0.5, 0.5, "no held-out evaluations logged", ha="center", va="center", transform=axis.transAxes
            )
    figure.tight_layout()
    return figure


def _draw_run(
    axes: Sequence[Any],
    train: list[dict[str, Any]],
    evaluation: list[dict[str, Any]],
    label: str,
    colour: str,
) -> None:
    """One run's curves in one colour; a metric the run's log does not hold is skipped."""
    loss_axis, eval_axis, accuracy_axis = axes
    for key, style in (("loss", "-"), ("mlm_loss", "--"), ("nsp_loss", ":")):
        x, y = _series(train, key)
        if y:
            loss_axis.plot(x, y, color=colour, alpha=0.2, linewidth=0.8)
            loss_axis.plot(x, _smooth(y), color=colour, linestyle=style, label=f"{label} {key}")
    x, y = _series(evaluation, "eval_mlm_loss")
    if y:
        eval_axis.plot(x, y, color=colour, marker="o", markersize=3, label=f"{label} held-out MLM loss")
    for key, style, name in (
        ("eval_mlm_accuracy", "-", "held-out MLM"),
        # The model cannot copy the answer at these positions: the accuracy learnt from context.
        ("eval_mlm_accuracy_at_mask", "-.", "held-out MLM at [MASK]"),
        ("eval_nsp_accuracy", "--", "held-out NSP"),
    ):
        x, y = _series(evaluation, key)
        if y:
            accuracy_axis.plot(
                x, y, color=colour, linestyle=style, marker="o", markersize=3, label=f"{label} {name}"
            )
    x, y = _series(train, "mlm_accuracy")
    if y:
        accuracy_axis.plot(x, _smooth(y), color=colour, linewidth=0.8, alpha=0.5, label=f"{label} train MLM")


def plot_run(run_dir: str | Path, output_png: str | Path | None = None) -> Path:
    """One run's curves; by default written to RUN_DIR/curves.png."""
    run_dir = Path(run_dir)
    return plot_runs([run_dir], output_png or run_dir / "curves.png")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="A pretraining run folder (holding metrics.jsonl); several are overlaid in one figure.",
    )
    parser.add_argument(
        "--output",
        help="The PNG to write; by default RUN_DIR/curves.png for a single run "
        "and curves.png in the current folder for several.",
    )
    parser.add_argument("--labels", nargs="+", help="One legend label per run; by default the folder names.")


def run(args: argparse.Namespace) -> int:
    if len(args.run_dirs) == 1 and args.output is None:
        output = Path(args.run_dirs[0]) / "curves.png"
    else:
        output = Path(args.output or "curves.png")
    path = plot_runs(args.run_dirs, output, labels=args.labels)
    print(f"wrote {path}")
    return 0
