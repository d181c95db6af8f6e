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
    for line in markdown.split("## Lift over")[0].splitlines():  # the results table only
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
        "89.59",
        "87.92",
        "81.25",
        "79.62",
        "81.59",
        "94.85",
        "51.75/79.15",
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
    code = main(
        [
            "report",
            str(small),
            str(tiny),
            "--name",
            "A",
            "--name",
            "B",
            "--output",
            str(output),
            "--png",
            str(png),
        ]
    )
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


# ---------------------------------------------------------------------------------------------
# Several seeds per task, failed runs, and the lift over a control row


def write_seed(
    folder: Path, task: str, seed: int, metrics: dict, n_eval: int = 2000, kind: str = "dev"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "task": task,
        "metrics": metrics,
        "split": {"kind": kind, "description": f"{kind} file", "carved_dev_fraction": None},
        "num_eval_examples": n_eval,
        "hyperparameters": {"seed": 1000 + seed},  # the seed in the file name wins
    }
    (folder / f"{task}.seed{seed}.json").write_text(json.dumps(data), encoding="utf-8")


def write_failure(folder: Path, task: str, seed: int, log: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"task": task, "failure": {"exit_code": 1, "log": log}}
    (folder / f"{task}.seed{seed}.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def seeded_rows(tmp_path: Path) -> tuple[Path, Path]:
    pretrained, control = tmp_path / "pretrained", tmp_path / "control"
    for seed, (nsmc, sts, em, f1) in enumerate(
        [(80, 50, 40, 60), (82, 52, 42, 61), (84, 54, 41, 62)], start=1
    ):
        write_seed(pretrained, "nsmc", seed, {"accuracy": nsmc})
        write_seed(pretrained, "korsts", seed, {"spearman": sts}, n_eval=1500)
        write_seed(pretrained, "korquad", seed, {"exact_match": em, "f1": f1}, n_eval=300)
    for seed, (nsmc, sts) in enumerate([(70, 49), (71, 50), (72, 51)], start=1):
        write_seed(control, "nsmc", seed, {"accuracy": nsmc})
        write_seed(control, "korsts", seed, {"spearman": sts}, n_eval=1500)
    write_seed(control, "korquad", 1, {"exact_match": 1.0, "f1": 9.0}, n_eval=300)
    write_failure(control, "korquad", 2, "logs/finetune-korquad-control-seed2.log")
    write_failure(control, "paws", 1, "logs/finetune-paws-control-seed1.log")
    return pretrained, control


def lift_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Lift over")[1]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "Model":
            rows[cells[1]] = cells[2:]
    return rows


def test_seeds_aggregate_to_mean_and_sample_std(seeded_rows, tmp_path):
    pretrained, control = seeded_rows
    markdown = report([pretrained, control], control="control", output=tmp_path / "R.md")
    rows = table_rows(markdown)
    # 80, 82, 84: mean 82, squared deviations 4 + 0 + 4 over n - 1 = 2 -> std 2.
    assert rows["pretrained"][0] == "82.00 ± 2.00 (dev, 2,000; n=3)"
    assert rows["pretrained"][4] == "52.00 ± 2.00 (dev, 1,500; n=3)"
    # EM 40, 42, 41 -> 41 ± 1; F1 60, 61, 62 -> 61 ± 1.
    assert rows["pretrained"][6] == "41.00 ± 1.00/61.00 ± 1.00 (dev, 300; n=3)"
    assert rows["control"][0] == "71.00 ± 1.00 (dev, 2,000; n=3)"
    # A failed run is counted and named, never dropped silently.
    assert rows["control"][6] == "1.00/9.00 (dev, 300; n=1, 1 FAILED)"
    assert rows["control"][2] == "FAILED (1 of 1 runs)"
    assert "control, korquad seed 2: exit status 1, log logs/finetune-korquad-control-seed2.log" in markdown
    assert "control, paws seed 1: exit status 1, log logs/finetune-paws-control-seed1.log" in markdown


def test_lift_over_control_against_twice_the_larger_std(seeded_rows, tmp_path):
    pretrained, control = seeded_rows
    lifts = lift_rows(report([pretrained, control], control="control", output=tmp_path / "R.md"))
    # NSMC: 82 - 71 = 11 > 2 * max(2, 1) = 4.
    assert lifts["NSMC (acc)"] == ["82.00 ± 2.00", "71.00 ± 1.00", "+11.00", "4.00", "yes"]
    # KorSTS: 52 - 50 = 2, not above 4.
    assert lifts["KorSTS (Spearman)"] == ["52.00 ± 2.00", "50.00 ± 1.00", "+2.00", "4.00", "no"]
    # One control run left: no standard deviation, so no verdict.
    assert lifts["KorQuAD (F1)"] == ["61.00 ± 1.00", "9.00", "+52.00", "–", "n/a (one run)"]
    assert lifts["KorQuAD (EM)"][2] == "+40.00"
    # PAWS has no finished control run and the pretrained row has none at all: no lift row.
    assert "PAWS (acc)" not in lifts


def test_old_single_file_layout_and_seed_layout_in_one_table(two_runs, seeded_rows, tmp_path):
    small, _ = two_runs
    pretrained, _ = seeded_rows
    rows = table_rows(report([small, pretrained], output=tmp_path / "R.md"))
    assert rows["reforbert-small"][0] == "81.23 (test, 50,000)"
    assert rows["pretrained"][0] == "82.00 ± 2.00 (dev, 2,000; n=3)"
    assert "Lift over" not in (tmp_path / "R.md").read_text(encoding="utf-8")


def test_seed_results_must_agree_on_split_and_seed(tmp_path, capsys):
    mixed = tmp_path / "mixed"
    write_seed(mixed, "nsmc", 1, {"accuracy": 80.0}, n_eval=2000)
    write_seed(mixed, "nsmc", 2, {"accuracy": 81.0}, n_eval=1000)
    with pytest.raises(ReforBertInputError, match="different evaluation splits"):
        report([mixed], output=tmp_path / "R.md")
    twice = tmp_path / "twice"
    write_seed(twice, "nsmc", 1, {"accuracy": 80.0})
    (twice / "nsmc.json").write_text(
        json.dumps(
            {
                "task": "nsmc",
                "metrics": {"accuracy": 80.0},
                "num_eval_examples": 2000,
                "split": {"kind": "dev", "description": "dev file"},
                "hyperparameters": {"seed": 1},
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ReforBertInputError, match="second result for nsmc with seed 1"):
        report([twice], output=tmp_path / "R.md")
    code = main(["report", str(twice), "--control", "nope", "--output", str(tmp_path / "R.md")])
    assert code == 2 and "--control 'nope' names no row" in capsys.readouterr().err


def test_report_cli_prints_the_lift_table(seeded_rows, tmp_path, capsys):
    pretrained, control = seeded_rows
    code = main(
        [
            "report",
            str(pretrained),
            str(control),
            "--name",
            "ReforBERT",
            "--name",
            "random init",
            "--control",
            "random init",
            "--output",
            str(tmp_path / "R.md"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "## Lift over random init" in printed
    assert lift_rows(printed)["NSMC (acc)"][-1] == "yes"
    assert (tmp_path / "R.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_bar_panels_say_not_run_where_no_row_measured_the_benchmark(two_runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reforbert.report import _draw_error_bars, load_results_folder, measured_row

    rows = [measured_row(folder.name, load_results_folder(folder)) for folder in two_runs]
    figure = plt.figure()
    _draw_error_bars(figure, figure.add_gridspec(1, len(COLUMNS)), rows)
    measured = {"nsmc", "korquad", "naver-ner", "korsts"}
    assert {column.task_name for column in COLUMNS} > measured
    for column, axes in zip(COLUMNS, figure.axes, strict=True):
        texts = [text.get_text() for text in axes.texts]
        if column.task_name in measured:
            assert axes.patches and "not run" not in texts
        else:
            assert texts == ["not run"] and not axes.patches and len(axes.get_yticks()) == 0
    plt.close(figure)
