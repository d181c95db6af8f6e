"""The results table: exact cells from fixture results files, published rows marked, PNG written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reforbert.cli import main
from reforbert.errors import ReforBertInputError
from reforbert.report import COLUMNS, PUBLISHED_MARK, report
from reforbert.tasks import TASKS


def write_result(
    folder: Path, task: str, metrics: dict, n_eval: int, kind: str, fraction: float | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    description = f"carved dev of {fraction * 100:g}% of train.txt by seed 42" if fraction else f"{kind} file"
    data = {
        "task": task,
        "metrics": metrics,
        "split": {"kind": kind, "description": description, "carved_dev_fraction": fraction},
        "num_eval_examples": n_eval,
    }
    (folder / f"{task}.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    small = tmp_path / "reforbert-small"
    write_result(small, "nsmc", {"accuracy": 81.234}, 50000, "test")
    write_result(small, "korquad", {"exact_match": 40.5, "f1": 61.25}, 5774, "dev")
    write_result(small, "naver-ner", {"f1": 70.0, "precision": 1.0}, 9000, "carved-dev", 0.1)
    tiny = tmp_path / "tiny"
    write_result(tiny, "korsts", {"spearman": 55.556, "pearson": 56.0}, 1500, "dev")
    return small, tiny


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| Model"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("*")] = cells[1:]
    return rows


def test_report_renders_exact_cells_and_png(two_runs, tmp_path):
    small, tiny = two_runs
    output = tmp_path / "out" / "RESULTS.md"
    markdown = report([small, tiny], output=output)

    rows = table_rows(markdown)
    assert rows["reforbert-small"] == [
        "81.23 (test, 50,000)",
        "70.00 (dev*, 9,000)",
        "–",
        "–",
        "–",
        "–",
        "40.50/61.25 (dev, 5,774)",
    ]
    assert rows["tiny"] == ["–", "–", "–", "–", "55.56 (dev, 1,500)", "–", "–"]
    assert rows[f"KoBERT ({PUBLISHED_MARK})"] == [
        "89.59", "87.92", "81.25", "79.62", "81.59", "94.85", "51.75/79.15",
    ]
    assert rows[f"KoELECTRA-Small-v3 ({PUBLISHED_MARK})"][-1] == "82.11/91.13"
    assert rows[f"DistilKoBERT ({PUBLISHED_MARK})"][2] == "60.50"
    assert "Naver NER: carved dev of 10% of train.txt by seed 42 (reforbert-small)" in markdown
    assert output.read_text(encoding="utf-8") == markdown
    png = output.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cli_names_rows_and_prints(two_runs, tmp_path, capsys):
    small, tiny = two_runs
    output = tmp_path / "table.md"
    png = tmp_path / "table-image.png"
    code = main(["report", str(small), str(tiny), "--name", "A", "--name", "B",
                 "--output", str(output), "--png", str(png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert set(table_rows(printed)) >= {"A", "B"}
    assert png.is_file() and output.is_file()


def test_report_bad_input(two_runs, tmp_path, capsys):
    small, _ = two_runs
    with pytest.raises(ReforBertInputError, match="results folder not found"):
        report([tmp_path / "nope"], output=tmp_path / "r.md")
    with pytest.raises(ReforBertInputError, match="--name was given 2 times for 1"):
        report([small], names=["a", "b"], output=tmp_path / "r.md")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "nsmc.json").write_text("{not json", encoding="utf-8")
    assert main(["report", str(broken), "--output", str(tmp_path / "r.md")]) == 2
    error = capsys.readouterr().err
    assert "nsmc.json" in error and "not a valid results file" in error
    assert not (tmp_path / "r.md").exists()


def test_every_column_names_a_registered_task_and_its_main_metric():
    for column in COLUMNS:
        task = TASKS[column.task_name]
        assert task.main_metric == column.metrics[0], column.header
