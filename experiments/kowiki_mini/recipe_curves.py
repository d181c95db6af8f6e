"""Held-out MLM curves of the pretraining recipes that were compared, against tokens and against minutes.

Each run is a folder of ``*.metrics.jsonl`` files written by ``reforbert pretrain`` (one per stage of a
staged recipe, in order, named ``NN-<stage>.metrics.jsonl``); the curves of a staged recipe continue
where the previous stage stopped. Evaluation records are joined with the training record of the same
step for the tokens seen and the wall-clock. A run resumed in a second invocation restarts its clock,
which is continued here.

    python experiments/kowiki_mini/recipe_curves.py experiments/kowiki_mini/results/pretraining
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("eval_mlm_loss", "held-out MLM loss"),
    ("eval_mlm_accuracy_at_mask", "held-out accuracy at [MASK] positions"),
)


def read_stage(path: Path, tokens_before: float, minutes_before: float) -> tuple[list[dict], float, float]:
    """Evaluation points of one stage as dicts with tokens, minutes and the metrics; and where it ended."""
    points, train_at_step = [], {}
    clock_offset, last_elapsed = 0.0, 0.0
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "elapsed" in record:
            if record["elapsed"] < last_elapsed:  # a resumed invocation restarts its clock
                clock_offset += last_elapsed
            last_elapsed = record["elapsed"]
            record["minutes"] = (clock_offset + record["elapsed"]) / 60.0
            train_at_step[record["step"]] = record
        elif "eval_mlm_loss" in record and record["step"] in train_at_step:
            train = train_at_step[record["step"]]
            points.append(
                {
                    **record,
                    "tokens": tokens_before + train["tokens_seen"],
                    "minutes": minutes_before + train["minutes"],
                }
            )
    last = train_at_step[max(train_at_step)]
    return points, tokens_before + last["tokens_seen"], minutes_before + last["minutes"]


def read_run(folder: Path) -> list[dict]:
    points, tokens, minutes = [], 0.0, 0.0
    for stage in sorted(folder.glob("*.metrics.jsonl")):
        stage_points, tokens, minutes = read_stage(stage, tokens, minutes)
        points += stage_points
    return points


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, help="A folder with one sub-folder of metrics files per recipe.")
    parser.add_argument("--output", type=Path, help="The PNG to write (default RUNS/recipe_curves.png).")
    args = parser.parse_args()
    runs = {folder.name: read_run(folder) for folder in sorted(args.runs.iterdir()) if folder.is_dir()}
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    # tab20: more recipes than the default cycle's 10 colours, none sharing one.
    colours = plt.get_cmap("tab20").colors
    for row, (key, label) in enumerate(PANELS):
        for column, x_key in enumerate(("tokens", "minutes")):
            axis = axes[row][column]
            for index, (name, points) in enumerate(runs.items()):
                xs = [p[x_key] / (1e6 if x_key == "tokens" else 1.0) for p in points if key in p]
                ys = [p[key] * (100.0 if "accuracy" in key else 1.0) for p in points if key in p]
                axis.plot(xs, ys, marker=".", label=name, color=colours[index % len(colours)])
            axis.set_xlabel("tokens seen (millions)" if x_key == "tokens" else "wall-clock minutes")
            axis.set_ylabel(label + (" (%)" if "accuracy" in key else ""))
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Pretraining recipes on Korean Wikipedia (each run scored at its own sequence length)")
    figure.tight_layout()
    output = args.output or args.runs / "recipe_curves.png"
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
