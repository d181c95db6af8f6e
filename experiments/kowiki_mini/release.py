"""Package a pretrained ReforBERT run as the released checkpoint folder, with its model card.

Writes DESTINATION/ with fp16 ``model.safetensors`` (the config says float32, so ``from_pretrained``
widens the weights back for training on any device), ``config.json``, the tokenizer files and README.md,
the model card, filled in from what was measured: each pretraining stage's run folder (settings, steps,
tokens, wall-clock) and the held-out scores written by ``heldout_mlm.py``.

    python experiments/kowiki_mini/release.py --stages runs/s1 runs/s2 runs/s3 \\
        --heldout-scores experiments/kowiki_mini/results/heldout_mlm.json \\
        --destination models/reforbert-mini-kowiki
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

import reforbert  # noqa: F401 - registers ReforBERT with the Auto classes
from reforbert.data.vocab import set_model_max_length
from reforbert.fileio import atomic_directory
from reforbert.modeling_reforbert import ReforBertForPreTraining

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
# The held-out instances are drawn with their own seed, so they never repeat a training draw's pairs.
HELDOUT_DATA_SEED = 1


def stage_facts(run_dir: Path) -> dict:
    """Settings and totals of one `reforbert pretrain` run folder (all its invocations)."""
    settings = json.loads((run_dir / "run_settings.json").read_text(encoding="utf-8"))
    seconds, last_elapsed, last, evaluations, invocations = 0.0, 0.0, None, [], 1
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "eval_mlm_loss" in record:
            evaluations.append(record)
        elif "elapsed" in record:
            if record["elapsed"] < last_elapsed:  # a resumed invocation restarts its clock
                seconds += last_elapsed
                invocations += 1
            last_elapsed, last = record["elapsed"], record
    data = Path(settings.get("data", f"train{settings['max_seq_len']}"))
    return {
        # The data folder by name, and the seed it was drawn with (its metadata, where still on disk).
        "data": data.name,
        "data_seed": data_seed(data),
        "seed": settings.get("seed", 0),
        "max_seq_len": settings["max_seq_len"],
        "micro_batch_size": settings["micro_batch_size"],
        "global_batch_size": settings["global_batch_size"],
        "learning_rate": settings["learning_rate"],
        "mlm_probability": settings["mlm_probability"],
        "warmup_steps": settings["warmup_steps"],
        "schedule_steps": settings["schedule_steps"],
        # A schedule fitted to the time budget (--fit-schedule-to-time-budget) is reproduced by fitting
        # again under the same cap, not by its fitted length, which depends on the host's speed.
        "schedule_fitted": settings.get("schedule_fitted_to_time_budget", False),
        "max_steps": settings.get("max_steps", settings["schedule_steps"]),
        "compile": settings.get("compile", False),
        # Stages ran on different hosts: bf16 autocast where the CPU has bf16 units, fp32 where it has not.
        "precision": settings["precision"],
        "steps": last["step"],
        "tokens": last["tokens_seen"],
        "minutes": (seconds + last_elapsed) / 60.0,
        "invocations": invocations,
        "last_evaluation": evaluations[-1] if evaluations else {},
    }


def data_seed(data: Path) -> int:
    metadata = data / "metadata.json"
    if not metadata.is_file():
        return 0
    return json.loads(metadata.read_text(encoding="utf-8")).get("seed", 0)


def stage_table(stages: list[dict]) -> str:
    lines = [
        "| stage | data | length | global batch | masked | peak LR (warm-up, schedule) | steps | tokens | "
        "wall-clock | held-out MLM loss / acc. at [MASK] / NSP acc. at its length (15% masked) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for number, stage in enumerate(stages, start=1):
        last = stage["last_evaluation"]
        scores = (
            f"{last['eval_mlm_loss']:.2f} / {100 * last['eval_mlm_accuracy_at_mask']:.1f}% / "
            f"{100 * last['eval_nsp_accuracy']:.1f}%"
            if last
            else "–"
        )
        lines.append(
            f"| {number} | `{stage['data']}` | {stage['max_seq_len']} | {stage['global_batch_size']} | "
            f"{100 * stage['mlm_probability']:g}% | {stage['learning_rate']:g} "
            f"({stage['warmup_steps']} warm-up, linear to 0 at step "
            f"{stage['schedule_steps']}) | {stage['steps']:,} | {stage['tokens']:,} | "
            f"{stage['minutes']:.1f} min | {scores} |"
        )
    return "\n".join(lines)


def schedule_notes(stages: list[dict]) -> str:
    """How each stage ended: all its scheduled steps, or stopped by its time budget part-way."""
    notes = []
    for number, stage in enumerate(stages, start=1):
        steps, scheduled = stage["steps"], stage["schedule_steps"]
        if steps >= scheduled:
            ending = f"ran all {scheduled:,} steps of its schedule"
            if stage["schedule_fitted"]:
                ending += f" (a length fitted to its {stage['budget_minutes']:g}-minute budget)"
        elif steps < stage["warmup_steps"]:
            ending = f"was stopped by its time budget at step {steps:,}, still warming up"
        else:
            # Linear decay to 0 at the scheduled step: the rate left when the budget stopped it.
            left = (scheduled - steps) / (scheduled - stage["warmup_steps"])
            ending = (
                f"was stopped by its time budget at step {steps:,} of {scheduled:,}, the learning rate "
                f"at {100 * left:.0f}% of its peak"
            )
        if stage["invocations"] > 1:
            ending += f" (in {stage['invocations']} invocations, resumed from checkpoints)"
        notes.append(f"Stage {number} {ending}.")
    return " ".join(notes)


def seed_flag(seed: int) -> str:
    return f" --seed {seed}" if seed else ""


def data_commands(stages: list[dict]) -> str:
    """The `reforbert pretraining-data` commands behind the stages' data and held-out folders."""
    commands, made = [], set()
    for stage in stages:
        length = stage["max_seq_len"]
        for source, name, seed in (
            ("train.txt", stage["data"], stage["data_seed"]),
            ("heldout.txt", f"heldout{length}", HELDOUT_DATA_SEED),
        ):
            if name not in made:
                made.add(name)
                commands.append(
                    f"reforbert pretraining-data {source} --vocab vocab -o {name} --max-seq-len {length}"
                    + seed_flag(seed)
                )
    return "\n".join(commands)


def reproduce_commands(stages: list[dict]) -> str:
    """The `reforbert pretrain` command of each stage, from the settings it recorded."""
    commands = []
    for number, stage in enumerate(stages, start=1):
        length = stage["max_seq_len"]
        micro = stage["micro_batch_size"]
        fitted = stage["schedule_fitted"]
        schedule = (
            f"--max-steps {stage['max_steps'] if fitted else stage['schedule_steps']} "
            f"--time-budget-minutes {stage['budget_minutes']:g}"
            + (" --fit-schedule-to-time-budget" if fitted else "")
        )
        init = f" --init-from runs/s{number - 1}/model" if number > 1 else ""
        commands.append(
            f"reforbert pretrain --data {stage['data']} --eval-data heldout{length} --vocab vocab "
            f"--output runs/s{number}{init}{seed_flag(stage['seed'])} \\\n"
            f"    --preset mini --attention full --no-reversible --config hidden_dropout_prob=0.0 "
            f"--precision {stage['precision']} --max-seq-len {length} "
            f"--mlm-probability {stage['mlm_probability']:g} \\\n"
            f"    --global-batch-size {stage['global_batch_size']} --micro-batch-size {micro} "
            f"--learning-rate {stage['learning_rate']:g} --warmup-steps {stage['warmup_steps']} {schedule}"
            + (" --compile" if stage["compile"] else "")
        )
    return "\n".join(commands)


def lsh_comparison(paths: list[Path] | None) -> str:
    """A sentence comparing held-out scores with exact and with LSH attention (heldout_mlm.py --attention)."""
    if not paths:
        return ""
    scores = {}
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        scores[record["attention"]] = record
    if set(scores) != {"full", "lsh"}:
        raise SystemExit(f"--lsh-comparison needs one full and one lsh score file, got {sorted(scores)}")
    full, lsh = scores["full"], scores["lsh"]
    return (
        f" On {full['instances']:,} held-out instances of up to {full['longest_instance']} tokens with the"
        f" same masks, LSH attention (buckets of {lsh['lsh_bucket_size']}, {lsh['lsh_num_hashes']} rounds)"
        f" scores MLM loss {lsh['mlm_loss']:.3f} and {100 * lsh['mlm_accuracy_at_mask']:.1f}% at `[MASK]`"
        f" against {full['mlm_loss']:.3f} and {100 * full['mlm_accuracy_at_mask']:.1f}% with exact"
        f" attention (NSP {100 * lsh['nsp_accuracy']:.1f}% against {100 * full['nsp_accuracy']:.1f}%)."
    )


# Two probes of what the model knows, completed by the released weights for the card's known limits.
FILL_MASK_PROBES = ("그는 1990년에 대학을 [MASK]했다.", "대한민국의 수도는 [MASK]이다.")


def fill_mask_examples(model_dir: Path, top_k: int = 3) -> str:
    """The released model's top completions of each probe, with their probabilities, as card text."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=top_k)
    described = []
    for probe in FILL_MASK_PROBES:
        guesses = ", ".join(
            f"{guess['token_str'].strip()} ({100 * guess['score']:.0f}%)" for guess in fill(probe)
        )
        described.append(f"`{probe}` → {guesses}")
    return "; ".join(described)


def write_release(model_dir: Path, destination: Path, card_template: str, facts: dict) -> None:
    model = ReforBertForPreTraining.from_pretrained(str(model_dir), dtype=torch.float32)
    # Pretraining ran without dropout; fine-tuning starts from BERT's usual 0.1 on hidden states.
    model.config.hidden_dropout_prob = 0.1
    model.config.attention_backend = "auto"
    with atomic_directory(destination) as tmp:
        model.half().save_pretrained(str(tmp), safe_serialization=True)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["dtype"] = "float32"  # stored as fp16 for size; loaded and trained as fp32
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for entry in model_dir.iterdir():
            if entry.is_file() and entry.suffix != ".safetensors" and entry.name != "config.json":
                shutil.copy2(entry, tmp / entry.name)
        # The tokenizer says what the model takes, not the length it was pretrained at.
        set_model_max_length(tmp, model.config.max_position_embeddings)
        card = card_template.format(**facts, fill_mask_examples=fill_mask_examples(tmp))
        (tmp / "README.md").write_text(card, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stages", type=Path, nargs="+", required=True, help="The stages' run folders, in order."
    )
    parser.add_argument("--heldout-scores", type=Path, required=True, help="JSON written by heldout_mlm.py.")
    parser.add_argument("--destination", type=Path, required=True, help="The release folder to (re)write.")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        nargs="+",
        required=True,
        help="Each stage's --time-budget-minutes (per invocation), for the reproduce commands.",
    )
    parser.add_argument(
        "--hardware",
        default=platform.processor() or platform.machine(),
        help="What the stages ran on, for the card.",
    )
    parser.add_argument(
        "--lsh-comparison",
        type=Path,
        nargs=2,
        metavar=("FULL_JSON", "LSH_JSON"),
        help="heldout_mlm.py scores of the same instances with --attention full and lsh, for the card.",
    )
    args = parser.parse_args()
    if len(args.budget_minutes) != len(args.stages):
        parser.error("give one --budget-minutes value per stage")
    stages = [
        {**stage_facts(run), "budget_minutes": minutes}
        for run, minutes in zip(args.stages, args.budget_minutes, strict=True)
    ]
    scores = json.loads(args.heldout_scores.read_text(encoding="utf-8"))
    facts = {
        "stage_table": stage_table(stages),
        "data_commands": data_commands(stages),
        "reproduce_commands": reproduce_commands(stages),
        "final_run": f"runs/s{len(stages)}",
        "stage_runs": " ".join(f"runs/s{number}" for number in range(1, len(stages) + 1)),
        "schedule_notes": schedule_notes(stages),
        "total_steps": f"{sum(s['steps'] for s in stages):,}",
        "total_tokens": f"{sum(s['tokens'] for s in stages):,}",
        "total_minutes": f"{sum(s['minutes'] for s in stages):.1f}",
        "hardware": args.hardware,
        "budget_minutes": " ".join(f"{minutes:g}" for minutes in args.budget_minutes),
        "heldout_instances": f"{scores['instances']:,}",
        "heldout_masked": f"{scores['masked_tokens']:,}",
        "mlm_loss": f"{scores['mlm_loss']:.3f}",
        "mlm_accuracy": f"{100 * scores['mlm_accuracy']:.1f}",
        "mlm_accuracy_at_mask": f"{100 * scores['mlm_accuracy_at_mask']:.1f}",
        "nsp_accuracy": f"{100 * scores['nsp_accuracy']:.1f}",
        "lsh_comparison": lsh_comparison(args.lsh_comparison),
    }
    write_release(
        args.stages[-1] / "model", args.destination, CARD_TEMPLATE.read_text(encoding="utf-8"), facts
    )
    print(f"wrote {args.destination}")


if __name__ == "__main__":
    main()
