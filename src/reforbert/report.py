"""Render fine-tuning results (``results/<task>.json`` files) as the benchmark table, in Markdown and PNG.

Each results folder becomes one row. Every measured cell says which split it was scored on and on
how many examples, because a number on a carved dev split or a subset is not comparable with a
published test-set number. The published rows of other Korean models are shown beside ours for
orientation only and are marked as such: they were not reproduced here.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class Row:
    name: str
    cells: list[str]
    published: bool = False


def load_results_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """Task name -> results dictionary for every ``*.json`` results file in ``folder``."""
    if not folder.is_dir():
        raise ReforBertInputError("results folder not found", folder)
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ReforBertInputError(f"not a valid results file: {error}", path) from error
        if not isinstance(data, dict) or "task" not in data or "metrics" not in data:
            raise ReforBertInputError("not a results file (needs 'task' and 'metrics')", path)
        results[data["task"]] = data
    if not results:
        raise ReforBertInputError("no <task>.json results in this folder", folder)
    return results


def split_label(result: dict[str, Any]) -> str:
    """'test', 'dev', or 'dev*' for a dev split carved out of the train file."""
    split = result.get("split", {})
    kind = split.get("kind", "?")
    return "dev*" if kind == "carved-dev" or split.get("carved_dev_fraction") else kind


def format_cell(result: dict[str, Any] | None, column: Column) -> str:
    if result is None:
        return MISSING
    metrics = result["metrics"]
    try:
        value = "/".join(f"{float(metrics[key]):.2f}" for key in column.metrics)
    except KeyError as error:
        raise ReforBertInputError(f"results for {result['task']} lack the metric {error}") from error
    return f"{value} ({split_label(result)}, {int(result['num_eval_examples']):,})"


def measured_row(name: str, results: dict[str, dict[str, Any]]) -> Row:
    cells = []
    for column in COLUMNS:
        cells.append(format_cell(results.get(column.task_name), column))
    return Row(name, cells)


def published_rows() -> list[Row]:
    return [Row(f"{name} ({PUBLISHED_MARK})", list(cells), published=True) for name, cells in PUBLISHED]


def carved_notes(named_results: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """One note per (benchmark, carved split); rows are named only where not every row used it."""
    used_by: dict[tuple[str, str], list[str]] = {}
    for name, results in named_results:
        for column in COLUMNS:
            result = results.get(column.task_name)
            if result is not None and split_label(result) == "dev*":
                key = (column.header.split(" (")[0], result["split"]["description"])
                used_by.setdefault(key, []).append(name)
    notes = []
    for (task, description), names in used_by.items():
        rows = "" if len(names) == len(named_results) else f" ({', '.join(names)})"
        notes.append(f"{task}: {description}{rows}")
    return notes


def render_markdown(rows: Sequence[Row], notes: Sequence[str]) -> str:
    header = ["Model", *(column.header for column in COLUMNS)]
    lines = [
        "# ReforBERT fine-tuning results",
        "",
        "Measured cells read `score (split, number of evaluation examples)`. "
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
    return "\n".join(lines)


def render_png(rows: Sequence[Row], notes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header = ["Model", *(column.header.replace(" (", "\n(") for column in COLUMNS)]
    # Split "score (split, n)" over two lines so the cells stay narrow; wrap long model names.
    body = [[textwrap.fill(row.name, 32), *(c.replace(" (", "\n(") for c in row.cells)] for row in rows]
    footnote = ""
    if notes:
        footnote = "\n".join(
            textwrap.fill(line, 150) for line in ["dev*: carved out of the train file.", *notes]
        )
    footnote_lines = footnote.count("\n") + 1 if footnote else 0
    table_height = 0.6 + 0.75 * (len(rows) + 1)
    footnote_height = 0.2 + 0.16 * footnote_lines
    figure = plt.figure(figsize=(2.0 * len(header) + 1.0, table_height + footnote_height))
    footnote_share = footnote_height / (table_height + footnote_height)
    axes = figure.add_axes((0.01, footnote_share, 0.98, 1.0 - footnote_share))
    axes.axis("off")
    model_share = 0.2
    widths = [model_share] + [(1.0 - model_share) / len(COLUMNS)] * len(COLUMNS)
    table = axes.table(cellText=body, colLabels=header, loc="center", cellLoc="center", colWidths=widths)
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 3.2)
    for (row_index, _), cell in table.get_celld().items():
        if row_index == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#dde4ee")
        elif rows[row_index - 1].published:
            cell.set_facecolor("#f0f0f0")
            cell.set_text_props(color="#555555", style="italic")
    axes.set_title("ReforBERT fine-tuning results (grey: published, not reproduced here)", fontsize=10)
    if footnote:
        figure.text(0.01, 0.01, footnote, fontsize=7, va="bottom")
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=150)
    plt.close(figure)


def report(
    results_dirs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    output: str | Path = "RESULTS.md",
    png: str | Path | None = None,
) -> str:
    """Write the table as Markdown (``output``) and PNG (``png``, default beside it); return the Markdown."""
    if not results_dirs:
        raise ReforBertInputError("give at least one results folder")
    folders = [Path(d) for d in results_dirs]
    if names is not None and len(names) != len(folders):
        raise ReforBertInputError(f"--name was given {len(names)} times for {len(folders)} results folders")
    row_names = list(names) if names is not None else [f.resolve().name for f in folders]
    named_results = [(name, load_results_folder(f)) for name, f in zip(row_names, folders, strict=True)]
    rows = [measured_row(name, results) for name, results in named_results] + published_rows()
    notes = carved_notes(named_results)
    markdown = render_markdown(rows, notes)
    output = Path(output)
    png_path = Path(png) if png is not None else output.with_suffix(".png")
    with atomic_file(output, "w", encoding="utf-8") as handle:
        handle.write(markdown)
    render_png(rows, notes, png_path)
    return markdown


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="folders holding <task>.json")
    parser.add_argument("--name", action="append", dest="names", help="row name per folder (repeat in order)")
    parser.add_argument("--output", default="RESULTS.md", help="Markdown file to write (default RESULTS.md)")
    parser.add_argument("--png", help="PNG file to write (default: the Markdown name with .png)")


def run(args: argparse.Namespace) -> int:
    markdown = report(args.results_dirs, names=args.names, output=args.output, png=args.png)
    print(markdown)
    png = args.png or str(Path(args.output).with_suffix(".png"))
    print(f"wrote {args.output} and {png}")
    return 0
