"""The kowiki_mini fine-tuning protocol: its splits, its choice of settings, and one tiny run end to end."""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import random
import sys
import time
from pathlib import Path

import pytest
import torch

from reforbert.configuration_reforbert import ReforBertConfig
from reforbert.modeling_reforbert import ReforBertForPreTraining
from reforbert.tasks import TASKS, get_task

RUN_PY = Path(__file__).resolve().parents[1] / "experiments" / "kowiki_mini" / "run.py"


def load_script(name: str, path: Path):
    """Import an experiment script (not a package module) under ``name`` for the duration of a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def experiment():
    yield from load_script("kowiki_mini_run", RUN_PY)


@pytest.fixture(scope="module")
def release():
    yield from load_script("kowiki_mini_release", RUN_PY.with_name("release.py"))


@pytest.fixture(scope="module")
def gpu_session():
    yield from load_script("kowiki_mini_gpu_session", RUN_PY.with_name("gpu_session.py"))


def write_nsmc(path: Path, n: int) -> None:
    """Positive exactly when the review holds 좋다."""
    rng = random.Random(0)
    lines = ["id\tdocument\tlabel"]
    for index in range(n):
        words = [rng.choice(["영화", "배우", "장면", "이야기", "음악"]) for _ in range(rng.randint(2, 4))]
        if index % 2:
            words.insert(rng.randrange(len(words) + 1), "좋다")
        lines.append(f"{1000 + index}\t{' '.join(words)}\t{index % 2}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_protocol_split_is_fixed_across_seeds_and_tuning_never_touches_the_reported_split(
    experiment, tmp_path, monkeypatch
):
    path = tmp_path / "nsmc.txt"
    write_nsmc(path, 200)
    examples = get_task("nsmc").read(path)
    monkeypatch.setitem(TASKS, "nsmc", TASKS["nsmc"])  # restored after the test

    reported_ids = []
    for seed in (1, 2, 3):
        experiment.install_protocol_split("nsmc", 0.1, None, None)
        train, reported = get_task("nsmc").split_dev(examples, 0.5, seed)  # fraction and seed are ignored
        reported_ids.append([example.line for example in reported])
        assert len(reported) == 20 and len(train) == 180
    assert reported_ids[0] == reported_ids[1] == reported_ids[2]

    carves = experiment.install_protocol_split("nsmc", 0.1, 0.1, 5)
    tuning_train, tuning = get_task("nsmc").split_dev(examples, 0.1, 7)
    assert carves == [(162, 18, 5)]  # 18 of the 180 training examples carved, 5 of them sampled
    tuning_lines = {example.line for example in tuning}
    assert not tuning_lines & set(reported_ids[0])
    assert not {example.line for example in tuning_train} & (tuning_lines | set(reported_ids[0]))


def write_sweep_result(folder: Path, name: str, main: float, f1: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "task": "korquad",
        "main_metric": "exact_match",
        "metrics": {"exact_match": main, "f1": f1},
        "split": {"description": "tuning split"},
    }
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def test_choice_takes_the_best_tuning_score_and_records_failures(experiment, tmp_path):
    sweep = tmp_path / "sweep" / "pretrained"
    write_sweep_result(sweep, "korquad.lr0.0001.ep2.json", 10.0, 30.0)
    write_sweep_result(sweep, "korquad.lr0.0003.ep2.json", 12.0, 31.0)
    write_sweep_result(sweep, "korquad.lr0.0003.ep4.json", 12.0, 35.0)  # same EM: F1 breaks the tie
    experiment.write_failure(sweep / "korquad.lr0.001.ep2.json", "korquad", 1, 137, "logs/x.log")
    args = experiment.build_parser().parse_args(
        [
            "--out",
            str(tmp_path),
            "--tasks",
            "korquad",
            "--learning-rates",
            "1e-4",
            "3e-4",
            "1e-3",
            "--epochs",
            "2",
            "4",
        ]
    )
    choice = experiment.choose(args)
    korquad = choice["rows"]["pretrained"]["korquad"]
    assert (korquad["learning_rate"], korquad["epochs"], korquad["tuning_score"]) == (3e-4, 4.0, 12.0)
    assert len(korquad["candidates"]) == 4
    assert [c["failure"]["exit_code"] for c in korquad["candidates"] if "failure" in c] == [137]
    # Without a sweep of its own the control takes the pretrained row's setting.
    setting = experiment.chosen_setting(choice, "control", "korquad")
    assert setting["learning_rate"] == 3e-4 and setting["chosen_for"] == "pretrained"


def test_keep_sweep_results_runs_only_the_settings_without_finished_scores(experiment, tmp_path):
    sweep = tmp_path / "sweep" / "pretrained"
    write_sweep_result(sweep, "nsmc.lr0.0003.ep2.json", 70.0, 0.0)
    experiment.write_failure(sweep / "nsmc.lr0.001.ep2.json", "nsmc", 1, 137, "logs/x.log")
    grid = [
        "--out",
        str(tmp_path),
        "--tasks",
        "nsmc",
        "--epochs",
        "2",
        "--learning-rates",
        "3e-4",
        "1e-3",
        "3e-3",
    ]

    def sweep_jobs(argv: list[str]) -> list:
        args = experiment.build_parser().parse_args(argv)
        args.max_train_examples = experiment.parse_limits(args.max_train_examples)  # as main() does
        return experiment.sweep_jobs(args)

    assert len(sweep_jobs(grid)) == 3
    kept = sweep_jobs([*grid, "--keep-sweep-results"])
    # The finished 3e-4 is kept; the failed 1e-3 and the missing 3e-3 run.
    assert [job.name for job in kept] == [
        "sweep-nsmc-pretrained-lr0.001-ep2",
        "sweep-nsmc-pretrained-lr0.003-ep2",
    ]


def test_rows_pretrained_keeps_the_control_only_for_the_config_it_was_built_from(experiment, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    config = ReforBertConfig.from_preset("tiny")
    config.save_pretrained(model)
    out = tmp_path / "out"

    def parse(*rows: str):
        args = experiment.build_parser().parse_args(
            ["--out", str(out), "--model", str(model), "--tasks", "nsmc", "--rows", *rows, "--sweep-control"]
        )
        args.max_train_examples = experiment.parse_limits(args.max_train_examples)
        return args

    out.mkdir()
    both = parse("pretrained", "control")
    experiment.check_control_config(both)  # records the config the control is built from
    assert {job.name.split("-")[2] for job in experiment.sweep_jobs(both)} == {"pretrained", "control"}
    (out / "results" / "control").mkdir(parents=True)
    (out / "results" / "control" / "nsmc.seed1.json").write_text("{}", encoding="utf-8")

    kept = parse("pretrained")
    experiment.check_control_config(kept)  # same config: the control row may be kept
    assert {job.name.split("-")[2] for job in experiment.sweep_jobs(kept)} == {"pretrained"}
    jobs, _ = experiment.finetune_jobs(
        kept, {"rows": {"pretrained": {"nsmc": {"learning_rate": 1e-3, "epochs": 2}}}}
    )
    assert {job.name.split("-")[2] for job in jobs} == {"pretrained"}

    # Special-token ids that configurations from earlier versions carry build the same control.
    for field, value in (("sep_token_id", 4), ("cls_token_id", 5), ("mask_token_id", 6)):
        setattr(config, field, value)
    config.save_pretrained(model)
    assert "cls_token_id" in json.loads((model / "config.json").read_text(encoding="utf-8"))
    experiment.check_control_config(kept)

    config.hidden_size = 64  # another architecture would need another control
    config.save_pretrained(model)
    with pytest.raises(SystemExit, match="control-config.json"):
        experiment.check_control_config(kept)


def test_finetune_epochs_override_the_sweeps_epoch_count_only_for_the_named_task(experiment, tmp_path):
    argv = ["--out", str(tmp_path), "--tasks", "nsmc", "korsts", "--seeds", "1", "--rows", "pretrained"]
    choice = {
        "rows": {"pretrained": {task: {"learning_rate": 1e-3, "epochs": 2.0} for task in ("nsmc", "korsts")}}
    }

    def epochs_by_task(extra: list[str]) -> dict[str, str]:
        args = experiment.build_parser().parse_args([*argv, *extra])
        args.max_train_examples = experiment.parse_limits(args.max_train_examples)
        jobs, _ = experiment.finetune_jobs(args, choice)
        return {job.task: job.command[job.command.index("--epochs") + 1] for job in jobs}

    assert epochs_by_task([]) == {"nsmc": "2.0", "korsts": "2.0"}
    assert epochs_by_task(["--finetune-epochs", "korsts=4"]) == {"nsmc": "2.0", "korsts": "4.0"}
    with pytest.raises(SystemExit):
        experiment.build_parser().parse_args(["--finetune-epochs", "korsts=none"])


def test_task_epochs_sweep_the_named_task_at_the_epochs_the_finetune_stage_uses(experiment, tmp_path):
    argv = ["--out", str(tmp_path), "--tasks", "nsmc", "paws", "--rows", "pretrained", "--seeds", "1"]
    argv += ["--learning-rates", "3e-4", "1e-3", "--epochs", "2", "3", "--task-epochs", "paws=5"]
    args = experiment.build_parser().parse_args(argv)
    args.max_train_examples = experiment.parse_limits(args.max_train_examples)

    swept = sorted(job.name for job in experiment.sweep_jobs(args))
    assert swept == sorted(
        [f"sweep-nsmc-pretrained-lr{lr}-ep{ep}" for lr in ("0.0003", "0.001") for ep in (2, 3)]
        + ["sweep-paws-pretrained-lr0.0003-ep5", "sweep-paws-pretrained-lr0.001-ep5"]
    )

    sweep = tmp_path / "sweep" / "pretrained"
    write_sweep_result(sweep, "paws.lr0.0003.ep5.json", 55.0, 0.0)
    write_sweep_result(sweep, "paws.lr0.001.ep5.json", 58.0, 0.0)
    # A result at the grid's epochs is not a candidate for a task swept at its own epochs.
    write_sweep_result(sweep, "paws.lr0.0003.ep2.json", 90.0, 0.0)
    choice = experiment.choose(args)
    paws = choice["rows"]["pretrained"]["paws"]
    assert (paws["learning_rate"], paws["epochs"]) == (1e-3, 5.0)
    assert len(paws["candidates"]) == 2

    jobs, _ = experiment.finetune_jobs(args, choice)
    paws_job = next(job for job in jobs if job.task == "paws")
    assert paws_job.command[paws_job.command.index("--epochs") + 1] == "5.0"
    assert paws_job.command[paws_job.command.index("--learning-rate") + 1] == "0.001"


def test_a_partial_run_is_recorded_under_its_own_rows_and_tasks(experiment, tmp_path):
    def label(stage: str, *argv: str) -> str:
        args = experiment.build_parser().parse_args(["--out", str(tmp_path), *argv])
        return experiment.stage_label(stage, args)

    assert label("finetune") == "finetune"
    assert label("finetune", "--rows", "control", "pretrained") == "finetune"
    assert label("finetune", "--rows", "pretrained") == "finetune (pretrained row)"
    assert label("sweep", "--tasks", "paws", "kornli") == "sweep (paws, kornli)"
    assert label("finetune", "--rows", "control", "--tasks", "korsts") == "finetune (control row; korsts)"
    assert label("report", "--rows", "pretrained", "--tasks", "korsts") == "report"


def test_a_finetune_stage_adds_seeds_of_its_setting_and_sets_every_other_result_aside(experiment, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    (work / "pretrained-model").mkdir(parents=True)
    (work / "pretrained-model" / "model.safetensors").write_bytes(b"weights")
    flags = ["--out", str(out), "--work-dir", str(work), "--tasks", "nsmc", "--rows", "pretrained"]
    args = experiment.build_parser().parse_args([*flags, "--seeds", "2"])
    args.max_train_examples = experiment.parse_limits(args.max_train_examples)
    choice = {"rows": {"pretrained": {"nsmc": {"learning_rate": 1e-3, "epochs": 1.0}}}}
    jobs, skipped = experiment.finetune_jobs(args, choice)
    assert [job.seed for job in jobs] == [2] and skipped == []
    protocol = experiment.job_protocol(jobs[0])
    assert protocol["reported_fraction"] is not None and protocol["setting"]["weights_sha256"]
    results = out / "results" / "pretrained"
    results.mkdir(parents=True)

    def write(name: str, record: dict) -> None:
        (results / name).write_text(json.dumps({"metrics": {"accuracy": 80.0}, "protocol": record}))

    write("nsmc.seed1.json", protocol)  # an earlier seed of this setting and split: kept
    write("nsmc.seed2.json", protocol)  # the seed this stage reruns
    write("nsmc.seed3.json", {**protocol, "setting": {**protocol["setting"], "weights_sha256": "other"}})
    write("nsmc.seed4.json", {})  # older than recorded settings
    write("nsmc.seed5.json", {**protocol, "max_eval_examples": 500})  # scored on another subset
    write("paws.seed1.json", {})  # a task this stage does not run

    moved = experiment.set_aside_results_of_other_settings(args, jobs)

    assert sorted(path.name for path in results.iterdir()) == ["nsmc.seed1.json", "paws.seed1.json"]
    assert sorted(path.name for path in moved) == [
        "nsmc.seed2.json",
        "nsmc.seed3.json",
        "nsmc.seed4.json",
        "nsmc.seed5.json",
    ]
    for path in moved:  # set aside, never deleted
        assert path.parents[2] == out / "replaced" and path.parent.name == "pretrained"
        assert json.loads(path.read_text())["metrics"] == {"accuracy": 80.0}


def test_report_of_an_out_without_a_control_row_shows_the_pretrained_row_alone(experiment, tmp_path):
    out = tmp_path / "out"
    args = experiment.build_parser().parse_args(["--out", str(out), "--stages", "report"])
    with pytest.raises(SystemExit, match="no results to report"):
        experiment.report(args)

    results = out / "results" / "pretrained"
    results.mkdir(parents=True)
    for seed, accuracy in ((1, 83.0), (2, 84.0)):
        split = {"kind": "carved-dev", "description": "carved dev", "carved_dev_fraction": 0.1}
        record = {"task": "nsmc", "metrics": {"accuracy": accuracy}, "split": split, "num_eval_examples": 20}
        (results / f"nsmc.seed{seed}.json").write_text(json.dumps(record))
    experiment.report(args)

    table = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert "83.50 ± 0.71" in table and "control" not in table.lower()
    assert (out / "RESULTS.png").is_file()


def test_run_setting_ignores_the_seed_and_the_model_folder_but_not_its_weights(experiment, tmp_path):
    first, moved, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, weights in ((first, b"w1"), (moved, b"w1"), (other, b"w2")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)

    def setting(model: Path, seed: str, learning_rate: str = "1e-3") -> dict:
        flags = ["--train", "t.txt", "--model", str(model), "--seed", seed, "--learning-rate", learning_rate]
        return experiment.run_setting(flags)

    assert setting(first, "1") == setting(moved, "2")
    assert setting(first, "1") != setting(other, "1")
    assert setting(first, "1") != setting(first, "1", learning_rate="3e-3")


@pytest.mark.slow
def test_sweep_finetune_report_end_to_end(experiment, tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    config = ReforBertConfig.from_preset(
        "tiny", vocab_size=len(tiny_tokenizer), hidden_size=32, num_attention_heads=2, intermediate_size=64
    )
    # Stored in fp16 as the released checkpoint is.
    ReforBertForPreTraining(config).half().save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data"
    write_nsmc(data / "tasks" / "nsmc" / "ratings_train.proxy.txt", 60)
    # No Question Pair files: its runs fail, and the table has to say so.
    out, work = tmp_path / "out", tmp_path / "work"

    code = experiment.main(
        [
            "--model",
            str(model_dir),
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--work-dir",
            str(work),
            "--tasks",
            "nsmc",
            "question-pair",
            "--seeds",
            "1",
            "2",
            "--learning-rates",
            "1e-3",
            "--epochs",
            "1",
            "--time-budget-minutes",
            "1",
            "--parallel",
            "2",
            "--threads-per-job",
            "1",
        ]
    )
    assert code == 1  # some runs failed

    choice = json.loads((out / "sweep" / "choice.json").read_text(encoding="utf-8"))
    assert choice["rows"]["pretrained"]["nsmc"]["learning_rate"] == 1e-3
    assert choice["rows"]["pretrained"]["question-pair"]["learning_rate"] is None
    tuning = json.loads((out / "sweep" / "pretrained" / "nsmc.lr0.001.ep1.json").read_text(encoding="utf-8"))
    # 60 rows: 6 reported, then 5 of the other 54 to tune on.
    assert tuning["split"]["kind"] == "tuning" and tuning["num_eval_examples"] == 5

    for row in ("pretrained", "control"):
        for seed in (1, 2):
            result = json.loads((out / "results" / row / f"nsmc.seed{seed}.json").read_text(encoding="utf-8"))
            assert result["split"]["description"] == "carved dev of 10% of ratings_train.proxy.txt by seed 42"
            assert result["num_eval_examples"] == 6 and result["num_train_examples"] == 54
            assert result["hyperparameters"]["seed"] == seed
            assert result["hyperparameters"]["learning_rate"] == 1e-3
            failure = json.loads(
                (out / "results" / row / f"question-pair.seed{seed}.json").read_text(encoding="utf-8")
            )
            assert failure["failure"]["log"].endswith(f"finetune-question-pair-{row}-seed{seed}.log")

    pretrained = ReforBertForPreTraining.from_pretrained(work / "pretrained-model")
    control = ReforBertForPreTraining.from_pretrained(work / "control-model")
    original = ReforBertForPreTraining.from_pretrained(model_dir)
    embedding = "reforbert.embeddings.word_embeddings.weight"
    assert pretrained.state_dict()[embedding].dtype == control.state_dict()[embedding].dtype == torch.float32
    assert torch.equal(pretrained.state_dict()[embedding], original.state_dict()[embedding].float())
    assert not torch.equal(control.state_dict()[embedding], pretrained.state_dict()[embedding])
    assert (work / "control-model" / "tokenizer.json").is_file()

    table = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert table.count("FAILED (2 of 2 runs)") == 2  # Question Pair, both rows
    assert "question-pair seed 1: not run: no learning rate chosen, log" in table
    assert "(dev*, 6; n=2)" in table
    assert "## Lift over same architecture, random init (control)" in table
    assert (out / "RESULTS.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["jobs"]["sweep-question-pair-pretrained-lr0.001-ep1"]["exit_code"] == 2
    assert summary["jobs"]["finetune-nsmc-control-seed2"]["exit_code"] == 0
    partial = ("sweep (nsmc, question-pair)", "finetune (nsmc, question-pair)")
    assert set(summary["stages"]) == {*partial, "report"}

    # A later invocation adds a seed to the runs of the same setting instead of replacing them.
    recorded = json.loads((out / "results" / "pretrained" / "nsmc.seed1.json").read_text(encoding="utf-8"))
    weights = experiment.weights_digest(work / "pretrained-model")
    assert recorded["protocol"]["setting"]["weights_sha256"] == weights
    more = ["--model", str(model_dir), "--data-dir", str(data), "--out", str(out), "--work-dir", str(work)]
    more += ["--tasks", "nsmc", "--rows", "pretrained", "--seeds", "3", "--stages", "finetune,report"]
    more += ["--time-budget-minutes", "1", "--threads-per-job", "1"]
    assert experiment.main(more) == 0
    assert sorted(path.name for path in (out / "results" / "pretrained").glob("nsmc.*")) == [
        f"nsmc.seed{seed}.json" for seed in (1, 2, 3)
    ]
    assert not (out / "replaced").exists()
    assert "(dev*, 6; n=3)" in (out / "RESULTS.md").read_text(encoding="utf-8")

    # A later report-only invocation records its own settings beside, not over, those the runs used.
    assert experiment.main(["--model", str(model_dir), "--out", str(out), "--stages", "report"]) == 0
    settings = json.loads((out / "summary.json").read_text(encoding="utf-8"))["settings"]
    assert settings[partial[0]]["learning_rates"] == settings[partial[1]]["learning_rates"] == "[0.001]"
    assert settings["report"]["stages"] == "report"


def write_stage_run(
    folder: Path,
    mlm_probability: float,
    resumed: bool,
    data: Path | None = None,
    seed: int = 0,
    fitted_to_budget: bool = False,
    precision: str = "bf16",
) -> None:
    """A run folder as `reforbert pretrain` leaves it, with two invocations when ``resumed``."""
    folder.mkdir(parents=True)
    settings = {
        "data": str(data or folder.parent / "train128"),
        "seed": seed,
        "max_seq_len": 128,
        "micro_batch_size": 64,
        "global_batch_size": 64,
        "learning_rate": 2e-3,
        "mlm_probability": mlm_probability,
        "warmup_steps": 100,
        "max_steps": 8000 if fitted_to_budget else 4200,
        "schedule_steps": 4200,
        "compile": True,
        "precision": precision,
    }
    if fitted_to_budget:
        settings["schedule_fitted_to_time_budget"] = True
    (folder / "run_settings.json").write_text(json.dumps(settings), encoding="utf-8")
    clock = [60.0, 120.0, 30.0, 90.0] if resumed else [60.0, 120.0, 180.0, 240.0]
    records = []
    for step, elapsed in enumerate(clock, start=1):
        records.append({"step": step, "tokens_seen": 1000 * step, "elapsed": elapsed})
    records.append(
        {"step": 4, "eval_mlm_loss": 4.5, "eval_mlm_accuracy_at_mask": 0.2, "eval_nsp_accuracy": 0.8}
    )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_release_card_facts_sum_both_invocations_and_name_each_stage_masking_rate(
    release, tmp_path: Path
) -> None:
    write_stage_run(tmp_path / "s1", 0.15, resumed=True)
    write_stage_run(tmp_path / "s2", 0.25, resumed=False)
    stages = [{**release.stage_facts(tmp_path / name), "budget_minutes": 10} for name in ("s1", "s2")]
    # A resumed invocation restarts its clock: 120 s of the first plus 90 s of the second.
    assert stages[0]["minutes"] == pytest.approx(3.5)
    assert stages[1]["minutes"] == pytest.approx(4.0)
    table = release.stage_table(stages).splitlines()
    assert "| 15% |" in table[2] and "| 25% |" in table[3]
    assert "4.50 / 20.0% / 80.0%" in table[3]
    commands = release.reproduce_commands(stages)
    assert "--mlm-probability 0.15" in commands and "--mlm-probability 0.25" in commands
    assert "--init-from runs/s1/model" in commands
    # Both stop at step 4 of a 4,200-step schedule, inside its 100 warm-up steps.
    notes = release.schedule_notes(stages)
    assert notes.startswith("Stage 1 was stopped by its time budget at step 4, still warming up")
    assert "(in 2 invocations" in notes and notes.count("invocations") == 1


def test_release_card_says_a_stage_that_finished_its_schedule_did(release, tmp_path: Path) -> None:
    write_stage_run(tmp_path / "s1", 0.25, resumed=False)
    stage = {**release.stage_facts(tmp_path / "s1"), "budget_minutes": 10, "schedule_steps": 4}
    assert release.schedule_notes([stage]) == "Stage 1 ran all 4 steps of its schedule."
    # Stopped after warm-up: linear decay from the peak at step 100 to 0 at step 200, stopped at 150.
    stopped = {**stage, "steps": 150, "warmup_steps": 100, "schedule_steps": 200}
    assert "at step 150 of 200, the learning rate at 50% of its peak" in release.schedule_notes([stopped])


def test_release_card_rebuilds_each_stage_data_draw_and_seed(release, tmp_path: Path) -> None:
    """A stage that continues at the same length on a second draw of pairs names that draw and its seeds."""
    second_draw = tmp_path / "train128b"
    second_draw.mkdir()
    (second_draw / "metadata.json").write_text(json.dumps({"seed": 2}), encoding="utf-8")
    write_stage_run(tmp_path / "s1", 0.25, resumed=False)
    write_stage_run(tmp_path / "s2", 0.25, resumed=False, data=second_draw, seed=1)
    stages = [{**release.stage_facts(tmp_path / name), "budget_minutes": 10} for name in ("s1", "s2")]
    assert [(stage["data"], stage["data_seed"], stage["seed"]) for stage in stages] == [
        ("train128", 0, 0),
        ("train128b", 2, 1),
    ]
    data = release.data_commands(stages).splitlines()
    assert data == [
        "reforbert pretraining-data train.txt --vocab vocab -o train128 --max-seq-len 128",
        "reforbert pretraining-data heldout.txt --vocab vocab -o heldout128 --max-seq-len 128 --seed 1",
        "reforbert pretraining-data train.txt --vocab vocab -o train128b --max-seq-len 128 --seed 2",
    ]
    first, second = release.reproduce_commands(stages).split("reforbert pretrain ")[1:]
    assert "--data train128 " in first and "--seed" not in first
    assert "--data train128b " in second and "--init-from runs/s1/model --seed 1" in second
    assert "| `train128b` | 128 |" in release.stage_table(stages).splitlines()[3]


def test_release_card_reproduces_a_fitted_schedule_by_fitting_again(release, tmp_path: Path) -> None:
    """A stage whose schedule was fitted to its budget is rerun with the fit, not its host's fitted length."""
    write_stage_run(tmp_path / "s1", 0.25, resumed=False)
    write_stage_run(tmp_path / "s2", 0.25, resumed=False, fitted_to_budget=True, precision="fp32")
    stages = [{**release.stage_facts(tmp_path / name), "budget_minutes": 30} for name in ("s1", "s2")]
    first, second = release.reproduce_commands(stages).split("reforbert pretrain ")[1:]
    # Each stage is rerun at the precision it ran at (the second on a host without bf16 units).
    assert "--precision bf16 " in first and "--precision fp32 " in second
    assert "--max-steps 4200 --time-budget-minutes 30" in first
    assert "fit-schedule" not in first
    assert "--max-steps 8000 --time-budget-minutes 30 --fit-schedule-to-time-budget" in second
    finished = [{**stage, "steps": 4200} for stage in stages]
    notes = release.schedule_notes(finished)
    assert "Stage 1 ran all 4,200 steps of its schedule." in notes
    assert "Stage 2 ran all 4,200 steps of its schedule (a length fitted to its 30-minute budget)." in notes


def test_gpu_session_stages_fit_their_schedules_to_their_share_of_the_time(
    gpu_session, tmp_path: Path
) -> None:
    session = gpu_session.Session(
        argparse.Namespace(work=tmp_path, minutes=10.0, precision="bf16", global_batch_size=0)
    )
    stage = gpu_session.STAGES[1]
    command = [str(part) for part in gpu_session.pretrain_command(session, stage, tmp_path, 2.5)]
    assert "--fit-schedule-to-time-budget" in command and "--max-steps" not in command
    assert command[command.index("--time-budget-minutes") + 1] == "2.50"
    assert command[command.index("--init-from") + 1] == str(tmp_path / "runs" / "s1" / "model")
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 10, "loss": 9.0}, {"step": 20, "schedule_steps": 900, "fitted_step_seconds": 0.02}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert gpu_session.fitted_schedule(run) == {"schedule_steps": 900, "fitted_step_seconds": 0.02}


def test_gpu_session_refuses_missing_inputs_in_one_line(gpu_session, tmp_path: Path, capsys) -> None:
    assert gpu_session.main(["run", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: missing train.txt.xz, heldout.txt.xz (make them with `pack`)"
    )
    assert gpu_session.main(["pack", "--kowiki", str(tmp_path / "nowhere"), "--to", str(tmp_path / "p")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "p").exists()
    for name in gpu_session.PACKED_FILES:
        (tmp_path / name).write_bytes(b"")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    argv = ["run", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--work", str(mine)]
    assert gpu_session.main(argv) == 2
    assert "not an earlier session's scratch folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "a user's file"


def test_gpu_session_packs_only_the_benchmarks_that_may_be_copied_and_unpacks_them_unchanged(
    gpu_session, experiment, tmp_path: Path
) -> None:
    # Every portable benchmark is one run.py trains from that folder; Naver NER (no copies allowed) is not.
    folders = {protocol.task: protocol.train.split("/")[0] for protocol in experiment.PROTOCOL}
    assert {task: folders[task] for task in gpu_session.PORTABLE_TASKS} == gpu_session.PORTABLE_TASKS
    assert "naver-ner" not in gpu_session.PORTABLE_TASKS
    source = tmp_path / "tasks"
    files = {
        "nsmc/ratings_train.proxy.txt": "id\tdocument\tlabel\n1\t좋다\t1\n",
        "nsmc/SOURCE.md": "CC0",
        "naver_ner/train.tsv": "words\ttags\n",
        "korquad1/KorQuAD_v1.0_dev.json": '{"data": []}',
    }
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text, encoding="utf-8")
    packed = tmp_path / "packed"
    gpu_session.pack_tasks(source, packed)
    assert not (packed / "naver_ner").exists()
    assert not list(packed.rglob("*.partial"))
    gpu_session.pack_tasks(source, packed)  # a second pack replaces the first
    unpacked = tmp_path / "unpacked"
    gpu_session.unpack_tasks(packed, unpacked)
    found = {str(path.relative_to(unpacked)) for path in unpacked.rglob("*") if path.is_file()}
    assert found == {name for name in files if not name.startswith("naver_ner")}
    for name in found:
        assert (unpacked / name).read_bytes() == (source / name).read_bytes()


def test_gpu_session_fine_tunes_the_release_on_the_unpacked_benchmarks_with_the_flags_given_last(
    gpu_session, tmp_path: Path
) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    (work / gpu_session.RELEASE).mkdir(parents=True)
    (work / gpu_session.RELEASE / "config.json").write_text("{}")
    (data / "tasks" / "question_pair").mkdir(parents=True)
    (data / "tasks" / "question_pair" / "train.txt.xz").write_bytes(lzma.compress(b"question1\tquestion2\n"))
    args = argparse.Namespace(
        work=work, minutes=10.0, data=data, finetune_minutes=2.0, finetune_parallel=3,
        finetune_flags="--seeds 1 --tasks question-pair",
    )  # fmt: skip
    session = gpu_session.Session(args)
    commands = []

    def step(name, command, limit_s):
        commands.append((name, [str(part) for part in command], limit_s))
        return True

    session.step = step
    assert gpu_session.finetune(session)
    assert [name for name, _, _ in commands] == ["finetune-sweep", "finetune-seeds", "finetune-report"]
    assert (work / "data" / "tasks" / "question_pair" / "train.txt").read_bytes() == b"question1\tquestion2\n"
    for command, stage in zip([c for _, c, _ in commands], ("sweep", "finetune", "report"), strict=True):
        assert command[command.index("--stages") + 1] == stage
        assert command[command.index("--model") + 1] == str(work / gpu_session.RELEASE)
        assert command[command.index("--data-dir") + 1] == str(work / "data")
        assert command[command.index("--tasks") + 1 :][:2] == ["question-pair", "--parallel"]
        assert command[-4:] == ["--seeds", "1", "--tasks", "question-pair"]
    assert commands[0][2] == pytest.approx(gpu_session.SWEEP_SHARE * 120)
    # Each run's training stops in time to report within its step's limit.
    cap = float(commands[0][1][commands[0][1].index("--time-budget-minutes") + 1])
    assert 60 * cap + gpu_session.FINETUNE_RUN_OVERHEAD_S <= commands[0][2] + 0.6


def test_a_gpu_session_step_stopped_by_its_limit_takes_the_processes_it_started_along(
    gpu_session, tmp_path: Path
) -> None:
    session = gpu_session.Session(argparse.Namespace(work=tmp_path, minutes=5.0))
    child_pid_file = tmp_path / "child.pid"
    spawn = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid)); time.sleep(120)"
    )
    assert not session.step("sleeper", [sys.executable, "-c", spawn], limit_s=3)
    assert session.records[-1]["status"] == "timed out"
    child = int(child_pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_alive(child):
        time.sleep(0.1)
    assert not process_alive(child)
    assert "time.sleep(120)" in (tmp_path / "logs" / "sleeper.log").read_text()


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_unknown_characters_names_what_the_vocabulary_cannot_read(tiny_tokenizer, tmp_path, capsys):
    gen = load_script("kowiki_mini_unknown_characters", RUN_PY.with_name("unknown_characters.py"))
    script = next(gen)
    stats = script.unknown_statistics(tiny_tokenizer, ["좋다 ♥", "ㅜㅜ 슬프다", "좋다 영화"], top=5)
    assert stats["texts"] == 3 and stats["texts_with_unknown"] == 2
    # The tiny vocabulary reads a word that holds an unknown character as one [UNK].
    assert stats["unknown_tokens"] == 2
    assert dict(stats["top_unknown_characters"]) == {"ㅜ": 2, "♥": 1}
    # Bad input: the file and line named, a non-zero exit.
    (tmp_path / "short.tsv").write_text("id\tdocument\n1\n", encoding="utf-8")
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert script.main([str(tmp_path / "tokenizer"), str(tmp_path / "short.tsv"), "--column", "1"]) == 1
    assert f"{tmp_path / 'short.tsv'}:2:" in capsys.readouterr().err
    next(gen, None)
