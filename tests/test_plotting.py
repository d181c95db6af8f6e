"""``reforbert plot``: curves from metrics.jsonl, including logs that lack some metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reforbert.errors import ReforBertInputError
from reforbert.plotting import _read_run, draw_curves, plot_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir: Path, records: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    lines = [json.dumps(record) for record in records]
    (run_dir / "metrics.jsonl").write_text(
        "\n".join(lines) + '\n{"step": 9, "lo', encoding="utf-8"
    )  # cut off
    return run_dir


def train_record(step: int, **extra: float) -> dict:
    return {"step": step, "loss": 5.0 - 0.1 * step, "mlm_loss": 4.0, "tokens_seen": 100 * step, **extra}


def legend_labels(run_dirs: list[Path]) -> list[set[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw_curves([_read_run(d) for d in run_dirs], [d.name for d in run_dirs])
    labels = [{line.get_label() for line in axis.get_lines()} for axis in figure.axes]
    plt.close(figure)
    return labels


def test_held_out_accuracy_at_mask_is_drawn_when_logged(tmp_path: Path) -> None:
    run = write_metrics(
        tmp_path / "new",
        [
            train_record(1, mlm_accuracy=0.1, nsp_loss=0.7),
            train_record(2, mlm_accuracy=0.2, nsp_loss=0.6),
            {"step": 2, "eval_mlm_loss": 4.1, "eval_mlm_accuracy": 0.3, "eval_mlm_accuracy_at_mask": 0.2},
        ],
    )
    _, _, accuracy = legend_labels([run])
    assert {"new held-out MLM", "new held-out MLM at [MASK]", "new train MLM"} <= accuracy
    output = plot_runs([run], tmp_path / "curves.png")
    assert output.read_bytes()[:8] == PNG_SIGNATURE


def test_a_log_without_some_metrics_still_draws(tmp_path: Path) -> None:
    # An older run: no accuracy at [MASK], no NSP; and a run that never evaluated.
    older = write_metrics(
        tmp_path / "older", [train_record(1), {"step": 1, "eval_mlm_loss": 4.5, "eval_mlm_accuracy": 0.1}]
    )
    unevaluated = write_metrics(tmp_path / "unevaluated", [train_record(1), train_record(2)])
    loss, held_out, accuracy = legend_labels([older, unevaluated])
    assert "older nsp_loss" not in loss and "older mlm_loss" in loss
    assert not any("[MASK]" in label for label in accuracy)
    assert not any(label.startswith("unevaluated") for label in held_out)
    output = plot_runs([older, unevaluated], tmp_path / "both.png", labels=["older", "unevaluated"])
    assert output.read_bytes()[:8] == PNG_SIGNATURE


def test_a_log_without_training_steps_is_an_input_error(tmp_path: Path) -> None:
    run = write_metrics(tmp_path / "empty", [{"step": 1, "eval_mlm_loss": 4.0}])
    with pytest.raises(ReforBertInputError, match="no training steps"):
        plot_runs([run], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
