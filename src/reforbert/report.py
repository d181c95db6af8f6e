"""Render fine-tuning results as the benchmark table, in Markdown and PNG.

Each results folder becomes one row. A folder holds one ``<task>.json`` per benchmark (one run each)
or several ``<task>.seed<k>.json`` (one run per seed); a cell then shows the mean ± the sample standard
deviation over the seeds and how many there were, and the PNG draws the same spread as error bars. A
run that failed is recorded as a results file holding ``failure`` (exit status, log) instead of
``metrics``: its cell says so, because averaging over only the runs that finished would flatter the row.

Every measured cell says which split it was scored on and on how many examples, because a number on a
carved dev split or a subset is not comparable with a published test-set number. The published rows of
other Korean models are shown beside ours for orientation only and are marked as such: they were not
reproduced here.

Given a control row (``--control NAME``: the same architecture fine-tuned from random weights), the
report adds every other row's lift over it per task, and whether the lift exceeds twice the larger of
the two standard deviations; a smaller difference cannot be told apart from seed noise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_file

MISSING = "–"
PUBLISHED_MARK = "published, not reproduced here"


@dataclass(frozen=True)
class Column:
    header: str
    task_name: str  # the name ``reforbert.tasks.TASKS`` and the results file use
    # Metric keys shown in the cell, joined by "/" (KorQuAD shows EM/F1).
    metrics: tuple[str, ...]


COLUMNS: tuple[Column, ...] = (
    Column("NSMC (acc)", "nsmc", ("accuracy",)),
    Column("Naver NER (F1)", "naver-ner", ("f1",)),
    Column("PAWS (acc)", "paws", ("accuracy",)),
    Column("KorNLI (acc)", "kornli", ("accuracy",)),
    Column("KorSTS (spearman)", "korsts", ("spearman",)),
    Column("Question Pair (acc)", "question-pair", ("accuracy",)),
    Column("KorQuAD (EM/F1)", "korquad", ("exact_match", "f1")),
)

# Reference rows as published by their authors (same column order as COLUMNS).
PUBLISHED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("KoBERT", ("89.59", "87.92", "81.25", "79.62", "81.59", "94.85", "51.75/79.15")),
    ("DistilKoBERT", ("88.60", "84.65", "60.50", "72.00", "72.59", "92.48", "54.40/77.97")),
    ("KoELECTRA-Small-v3", ("89.36", "85.40", "77.45", "78.60", "80.79", "94.85", "82.11/91.13")),
)


# A results file per seed is named <task>.seed<k>.json; the seed in its name wins over the one inside.
SEED_IN_NAME = re.compile(r"\.seed(\d+)\.json$")


@dataclass
class TaskRuns:
    """Every run of one benchmark in one results folder: the finished ones and the failed ones."""

    task: str
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        try:
            return [float(result["metrics"][metric]) for result in self.results]
        except KeyError as error:
            raise ReforBertInputError(f"results for {self.task} lack the metric {error}") from error

    @property
    def attempted(self) -> int:
        return len(self.results) + len(self.failures)


@dataclass
class Row:
    name: str
    cells: list[str]
    published: bool = False
    runs: dict[str, TaskRuns] = field(default_factory=dict)  # empty for published rows


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1 in the denominator; None for a single value)."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def _read_results_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReforBertInputError(f"not a valid results file: {error}", path) from error
    if not isinstance(data, dict) or "task" not in data or ("metrics" not in data and "failure" not in data):
        raise ReforBertInputError("not a results file (needs 'task' and 'metrics', or 'failure')", path)
    return data


def _seed_of(path: Path, data: dict[str, Any]) -> int | None:
    match = SEED_IN_NAME.search(path.name)
    if match:
        return int(match.group(1))
    seed = data.get("hyperparameters", {}).get("seed", data.get("seed"))
    return int(seed) if seed is not None else None


def _evaluation_split(result: dict[str, Any]) -> tuple[str, str, int]:
    return (
        split_label(result),
        str(result.get("split", {}).get("description")),
        int(result["num_eval_examples"]),
    )


def load_results_folder(folder: Path) -> dict[str, TaskRuns]:
    """Task name -> its runs, from every ``*.json`` results file in ``folder``.

    Runs of one task must have been scored on the same split: a mean over different evaluation sets
    would mean nothing, so that is an error rather than a number.
    """
    if not folder.is_dir():
        raise ReforBertInputError("results folder not found", folder)
    runs: dict[str, TaskRuns] = {}
    seen: dict[tuple[str, int], Path] = {}
    for path in sorted(folder.glob("*.json")):
        data = _read_results_file(path)
        task = str(data["task"])
        seed = _seed_of(path, data)
        if seed is not None:
            if (task, seed) in seen:
                raise ReforBertInputError(
                    f"a second result for {task} with seed {seed} (first: {seen[task, seed].name})", path
                )
            seen[task, seed] = path
        task_runs = runs.setdefault(task, TaskRuns(task))
        if "metrics" in data:
            if task_runs.results and _evaluation_split(data) != _evaluation_split(task_runs.results[0]):
                raise ReforBertInputError(
                    f"runs of {task} were scored on different evaluation splits; keep one split per folder",
                    path,
                )
            task_runs.results.append(data)
        else:
            task_runs.failures.append({"seed": seed, **data["failure"], "file": str(path)})
    if not runs:
        raise ReforBertInputError("no <task>.json or <task>.seed<k>.json results in this folder", folder)
    return runs


def split_label(result: dict[str, Any]) -> str:
    """'test', 'dev', or 'dev*' for a dev split carved out of the train file."""
    split = result.get("split", {})
    kind = split.get("kind", "?")
    return "dev*" if kind == "carved-dev" or split.get("carved_dev_fraction") else kind


def format_value(values: Sequence[float]) -> str:
    mean, std = mean_and_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_cell(runs: TaskRuns | None, column: Column) -> str:
    """``score (split, examples)`` for one run; ``mean ± std (split, examples; n=runs)`` for several."""
    if runs is None:
        return MISSING
    failed = len(runs.failures)
    if not runs.results:
        return f"FAILED ({failed} of {failed} runs)"
    value = "/".join(format_value(runs.values(key)) for key in column.metrics)
    details = f"{split_label(runs.results[0])}, {int(runs.results[0]['num_eval_examples']):,}"
    if runs.attempted > 1:
        details += f"; n={len(runs.results)}"
    if failed:
        details += f", {failed} FAILED"
    return f"{value} ({details})"


def measured_row(name: str, runs: dict[str, TaskRuns]) -> Row:
    cells = [format_cell(runs.get(column.task_name), column) for column in COLUMNS]
    return Row(name, cells, runs=runs)


def published_rows() -> list[Row]:
    return [Row(f"{name} ({PUBLISHED_MARK})", list(cells), published=True) for name, cells in PUBLISHED]


def carved_notes(named_runs: Sequence[tuple[str, dict[str, TaskRuns]]]) -> list[str]:
    """One note per (benchmark, carved split); rows are named only where not every row used it."""
    used_by: dict[tuple[str, str], list[str]] = {}
    for name, runs in named_runs:
        for column in COLUMNS:
            task_runs = runs.get(column.task_name)
            if task_runs is not None and task_runs.results and split_label(task_runs.results[0]) == "dev*":
                key = (column.header.split(" (")[0], task_runs.results[0]["split"]["description"])
                used_by.setdefault(key, []).append(name)
    notes = []
    for (task, description), names in used_by.items():
        rows = "" if len(names) == len(named_runs) else f" ({', '.join(names)})"
        notes.append(f"{task}: {description}{rows}")
    return notes


def failure_notes(named_runs: Sequence[tuple[str, dict[str, TaskRuns]]]) -> list[str]:
    """One note per failed run: which row, task and seed, its exit status and where its log is."""
    notes = []
    for name, runs in named_runs:
        for task_runs in runs.values():
            for failure in task_runs.failures:
                seed = "" if failure.get("seed") is None else f" seed {failure['seed']}"
                status = failure.get("reason") or f"exit status {failure.get('exit_code', '?')}"
                notes.append(f"{name}, {task_runs.task}{seed}: {status}, log {failure.get('log', '?')}")
    return notes


@dataclass(frozen=True)
class Lift:
    """One row's difference from the control on one metric of one benchmark."""

    row: str
    benchmark: str  # e.g. "KorQuAD (F1)"
    row_values: tuple[float, ...]
    control_values: tuple[float, ...]

    @property
    def lift(self) -> float:
        return mean_and_std(self.row_values)[0] - mean_and_std(self.control_values)[0]

    @property
    def noise(self) -> float | None:
        """Twice the larger standard deviation of the two cells; None unless both have two runs or more."""
        row_std, control_std = mean_and_std(self.row_values)[1], mean_and_std(self.control_values)[1]
        if row_std is None or control_std is None:
            return None
        return 2.0 * max(row_std, control_std)

    @property
    def verdict(self) -> str:
        if self.noise is None:
            return "n/a (one run)"
        return "yes" if self.lift > self.noise else "no"


def metric_label(column: Column, metric: str) -> str:
    name = column.header.split(" (")[0]
    short = {"accuracy": "acc", "exact_match": "EM", "f1": "F1", "spearman": "Spearman"}.get(metric, metric)
    return f"{name} ({short})"


def lifts_over(control: str, named_runs: Sequence[tuple[str, dict[str, TaskRuns]]]) -> list[Lift]:
    """Every other row's lift over ``control`` on every metric both rows have at least one run of."""
    control_runs = dict(named_runs)[control]
    lifts = []
    for name, runs in named_runs:
        if name == control:
            continue
        for column in COLUMNS:
            mine, theirs = runs.get(column.task_name), control_runs.get(column.task_name)
            if mine is None or theirs is None or not mine.results or not theirs.results:
                continue
            for metric in column.metrics:
                lifts.append(
                    Lift(
                        name,
                        metric_label(column, metric),
                        tuple(mine.values(metric)),
                        tuple(theirs.values(metric)),
                    )
                )
    return lifts


def render_lifts(control: str, lifts: Sequence[Lift]) -> list[str]:
    lines = [
        f"## Lift over {control}",
        "",
        "Mean difference from the control row, and whether it exceeds twice the larger of the two "
        "sample standard deviations (the noise between seeds).",
        "",
        "| Model | Benchmark | model | control | lift | 2 × larger std | lift > 2 × std |",
        "|---|---|:---:|:---:|:---:|:---:|:---:|",
    ]
    for lift in lifts:
        noise = MISSING if lift.noise is None else f"{lift.noise:.2f}"
        lines.append(
            f"| {lift.row} | {lift.benchmark} | {format_value(lift.row_values)} | "
            f"{format_value(lift.control_values)} | {lift.lift:+.2f} | {noise} | {lift.verdict} |"
        )
    if not lifts:
        lines.append(f"| {MISSING} | no benchmark has runs in both rows | | | | | |")
    lines.append("")
    return lines


def render_markdown(
    rows: Sequence[Row],
    notes: Sequence[str],
    failures: Sequence[str] = (),
    lift_lines: Sequence[str] = (),
) -> str:
    header = ["Model", *(column.header for column in COLUMNS)]
    lines = [
        "# ReforBERT fine-tuning results",
        "",
        "Measured cells read `score (split, number of evaluation examples)`; with several runs (seeds) "
        "`mean ± sample standard deviation (split, examples; n=runs)`. "
        f"Rows marked *{PUBLISHED_MARK}* are the authors' own numbers, shown for orientation.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * len(COLUMNS)) + "|",
    ]
    for row in rows:
        name = f"*{row.name}*" if row.published else f"**{row.name}**"
        lines.append("| " + " | ".join([name, *row.cells]) + " |")
    lines.append("")
    if notes:
        lines.append("dev\\*: a dev split carved out of the train file (no separate evaluation file given):")
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
        lines.append("")
    if failures:
        lines.append("FAILED runs (not averaged into any cell):")
        lines.append("")
        lines.extend(f"- {failure}" for failure in failures)
        lines.append("")
    lines.extend(lift_lines)
    return "\n".join(lines)


def _draw_table(axes: Any, rows: Sequence[Row]) -> None:
    header = ["Model", *(column.header.replace(" (", "\n(") for column in COLUMNS)]
    # Split "score (split, n)" over two lines so the cells stay narrow; wrap long model names.
    body = [[textwrap.fill(row.name, 32), *(c.replace(" (", "\n(") for c in row.cells)] for row in rows]
    axes.axis("off")
    model_share = 0.2
    widths = [model_share] + [(1.0 - model_share) / len(COLUMNS)] * len(COLUMNS)
    table = axes.table(cellText=body, colLabels=header, loc="center", cellLoc="center", colWidths=widths)
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1.0, 3.2)
    for (row_index, _), cell in table.get_celld().items():
        if row_index == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#dde4ee")
        elif rows[row_index - 1].published:
            cell.set_facecolor("#f0f0f0")
            cell.set_text_props(color="#555555", style="italic")


def _draw_error_bars(figure: Any, grid: Any, rows: Sequence[Row]) -> None:
    """One panel per benchmark: each measured row's mean as a bar, ± one standard deviation."""
    measured = [row for row in rows if not row.published]
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for index, column in enumerate(COLUMNS):
        axes = figure.add_subplot(grid[index])
        metric = column.metrics[-1]  # KorQuAD: F1, the smoother of its two metrics
        axes.set_title(metric_label(column, metric), fontsize=8)
        if all(row.runs.get(column.task_name) is None for row in measured):
            # A partial run: say so instead of drawing an empty scale around zero.
            axes.text(0.5, 0.5, "not run", transform=axes.transAxes, ha="center", color="grey", fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        for position, row in enumerate(measured):
            runs = row.runs.get(column.task_name)
            if runs is None:
                continue
            if not runs.results:
                axes.text(position, 0, "failed", ha="center", va="bottom", color="#c44e52", fontsize=7)
                continue
            mean, std = mean_and_std(runs.values(metric))
            axes.bar(position, mean, color=colours[position % len(colours)], width=0.7)
            if std is not None:
                axes.errorbar(position, mean, yerr=std, color="black", capsize=3, linewidth=1)
            label = f"n={len(runs.results)}" + (f"\n{len(runs.failures)} failed" if runs.failures else "")
            axes.text(position, mean + (std or 0.0), label, ha="center", va="bottom", fontsize=6)
        axes.set_xticks(range(len(measured)))
        axes.set_xticklabels([textwrap.fill(row.name, 14) for row in measured], fontsize=6, rotation=30)
        axes.tick_params(axis="y", labelsize=6)
        axes.grid(axis="y", alpha=0.3)
        axes.margins(y=0.2)


def render_png(rows: Sequence[Row], notes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    footnote_lines = ["Bars: mean; error bars: ± one sample standard deviation over seeds."]
    if notes:
        footnote_lines += ["dev*: carved out of the train file.", *notes]
    footnote = "\n".join(textwrap.fill(line, 150) for line in footnote_lines)
    table_height = 0.6 + 0.75 * (len(rows) + 1)
    bars_height = 2.4
    footnote_height = 0.3 + 0.16 * (footnote.count("\n") + 1)
    total = table_height + bars_height + footnote_height
    figure = plt.figure(figsize=(2.0 * (len(COLUMNS) + 1) + 1.0, total))
    table_axes = figure.add_axes((0.01, (bars_height + footnote_height) / total, 0.98, table_height / total))
    _draw_table(table_axes, rows)
    table_axes.set_title("ReforBERT fine-tuning results (grey: published, not reproduced here)", fontsize=10)
    grid = figure.add_gridspec(
        1,
        len(COLUMNS),
        left=0.04,
        right=0.99,
        bottom=(footnote_height + 0.55) / total,
        top=(footnote_height + bars_height - 0.3) / total,
        wspace=0.35,
    )
    _draw_error_bars(figure, grid, rows)
    figure.text(0.01, 0.01, footnote, fontsize=7, va="bottom")
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=150)
    plt.close(figure)


def report(
    results_dirs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    control: str | None = None,
    output: str | Path = "RESULTS.md",
    png: str | Path | None = None,
) -> str:
    """Write the table as Markdown (``output``) and PNG (``png``, default beside it); return the Markdown.

    ``control`` names the row (a ``names`` entry, or a folder name) that the others' lifts are
    measured against.
    """
    if not results_dirs:
        raise ReforBertInputError("give at least one results folder")
    folders = [Path(d) for d in results_dirs]
    if names is not None and len(names) != len(folders):
        raise ReforBertInputError(f"--name was given {len(names)} times for {len(folders)} results folders")
    row_names = list(names) if names is not None else [f.resolve().name for f in folders]
    if len(set(row_names)) != len(row_names):
        raise ReforBertInputError(f"two rows share a name ({', '.join(row_names)}); give each a --name")
    if control is not None and control not in row_names:
        raise ReforBertInputError(f"--control {control!r} names no row; the rows are: {', '.join(row_names)}")
    named_runs = [(name, load_results_folder(f)) for name, f in zip(row_names, folders, strict=True)]
    rows = [measured_row(name, runs) for name, runs in named_runs] + published_rows()
    notes = carved_notes(named_runs)
    lift_lines = render_lifts(control, lifts_over(control, named_runs)) if control is not None else []
    markdown = render_markdown(rows, notes, failure_notes(named_runs), lift_lines)
    output = Path(output)
    png_path = Path(png) if png is not None else output.with_suffix(".png")
    with atomic_file(output, "w", encoding="utf-8") as handle:
        handle.write(markdown)
    render_png(rows, notes, png_path)
    return markdown


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_example

    parser.add_argument(
        "results_dirs",
        nargs="+",
        metavar="RESULTS_DIR",
        help="A folder of results files, <task>.json or <task>.seed<k>.json (one row of the table each).",
    )
    parser.add_argument(
        "--name", action="append", dest="names", help="The row name of each folder (repeat, in folder order)."
    )
    parser.add_argument(
        "--control",
        help="The row (a --name, or a folder name) that the other rows' lifts are measured against, "
        "e.g. the same architecture fine-tuned from random weights.",
    )
    parser.add_argument(
        "--output", default="RESULTS.md", help="The Markdown file to write (default %(default)s)."
    )
    parser.add_argument("--png", help="The PNG file to write (default: the Markdown name with .png).")
    add_example(
        parser,
        "reforbert report results/                # one row: the folder's <task>.json files",
        "reforbert report results/pretrained results/control --name ReforBERT --name control "
        "--control control",
    )


def run(args: argparse.Namespace) -> int:
    markdown = report(
        args.results_dirs, names=args.names, control=args.control, output=args.output, png=args.png
    )
    print(markdown)
    png = args.png or str(Path(args.output).with_suffix(".png"))
    print(f"wrote {args.output} and {png}")
    return 0
