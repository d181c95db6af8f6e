"""Pretraining engine: exact resume, checkpoint safety, distributed equivalence, outputs.

Everything runs a 2-layer, hidden-32 model on a few dozen synthetic instances on the CPU in fp32.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from vocabulary_editing import edited_vocabulary

from reforbert.configuration_reforbert import CLS_ID, NUM_SPECIAL_TOKENS, SEP_ID
from reforbert.errors import ReforBertInputError
from reforbert.fileio import sha256_of

PIECES = 60
VOCAB_SIZE = PIECES + NUM_SPECIAL_TOKENS
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB_SIZE,
    "axial_position_shape": [8, 8],
    "attention_backend": "full",
}
# Few steps, but enough to cross a checkpoint, an epoch boundary and a learning-rate change.
COMMON = dict(
    preset="tiny",
    config_overrides=TINY,
    max_seq_len=64,
    micro_batch_size=2,
    global_batch_size=4,
    learning_rate=1e-3,
    warmup_steps=2,
    schedule="linear",
    eval_fraction=0.0,
    precision="fp32",
    seed=3,
    progress=False,
)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reforbert.data.vocab import train_vocab

    folder = tmp_path_factory.mktemp("vocab")
    corpus = folder / "corpus.txt"
    rng = np.random.default_rng(0)
    syllables = [
        "가",
        "나",
        "다",
        "라",
        "마",
        "바",
        "사",
        "아",
        "자",
        "차",
        "카",
        "타",
        "파",
        "하",
        "는",
        "을",
    ]
    lines = [
        " ".join("".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(12))
        for _ in range(400)
    ]
    corpus.write_text("제목\n" + "\n".join(lines) + "\n", encoding="utf-8")  # one document: title + lines
    return train_vocab([corpus], folder / "vocab", vocab_size=PIECES)


def write_shards(folder: Path, vocab_dir: Path, count: int, seed: int = 0) -> Path:
    """``count`` random [CLS] A [SEP] B [SEP] instances of 10..30 tokens, through the shard writer."""
    from reforbert.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder)
    tokens, lengths, boundaries = [], [], []
    for _ in range(count):
        a = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, size=rng.integers(4, 13))
        b = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, size=rng.integers(4, 13))
        ids = np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]])
        tokens.append(ids)
        lengths.append(len(ids))
        boundaries.append(len(a) + 2)
    writer.add(
        np.concatenate(tokens), np.array(lengths), np.array(boundaries), rng.integers(0, 2, size=count)
    )
    writer.close(
        {
            "vocab_sha256": sha256_of(vocab_dir / "sentencepiece.model"),
            "vocab_size": VOCAB_SIZE,
            "max_seq_len": 64,
        }
    )
    return folder


REFERENCE_SETTINGS = dict(max_steps=8, save_steps=3, save_total_limit=2, eval_steps=4)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Path:
    return write_shards(tmp_path_factory.mktemp("data") / "shards", vocab_dir, count=24)


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, vocab_dir: Path) -> Path:
    """An uninterrupted 8-step run (2 epochs of 6 steps would need 24 train examples: it has 24)."""
    from reforbert.pretraining import pretrain

    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    pretrain(data_dir, vocab_dir, run_dir, **REFERENCE_SETTINGS, **COMMON)
    return run_dir


def cli_command(data_dir: Path, vocab_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reforbert.cli",
        "pretrain",
        "--data",
        str(data_dir),
        "--vocab",
        str(vocab_dir),
        "--output",
        str(run_dir),
        "--preset",
        "tiny",
        "--attention",
        "full",
        "--max-seq-len",
        "64",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "2",
        "--eval-fraction",
        "0",
        "--precision",
        "fp32",
        "--seed",
        "3",
        "--max-steps",
        "8",
        "--save-steps",
        "3",
        "--save-total-limit",
        "2",
        *[
            arg
            for key, value in TINY.items()
            if key != "attention_backend"
            for arg in ("--config", f"{key}={json.dumps(value)}")
        ],
        *extra,
    ]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_run_folder_has_model_metrics_and_rotated_checkpoints(reference_run: Path) -> None:
    from transformers import AutoModel, AutoModelForPreTraining, AutoTokenizer

    import reforbert  # noqa: F401 - registers the Auto classes

    checkpoints = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert checkpoints == ["step-6", "step-8"]  # saved at 3, 6 and the final 8; the limit keeps 2
    records = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for key in ("loss", "mlm_loss", "nsp_loss", "lr", "tokens_seen", "tokens_per_s", "mfu", "elapsed"):
        assert key in train[0], key
    assert all(0.0 < r["data_seconds"] < r["step_seconds"] for r in train)  # batch preparation is timed
    assert train[-1]["tokens_seen"] > train[0]["tokens_seen"] > 0
    assert train[0]["lr"] < train[1]["lr"]  # warm-up
    assert all(np.isfinite(r["loss"]) for r in train)
    assert (reference_run / "tensorboard").is_dir() and any((reference_run / "tensorboard").iterdir())

    model = AutoModelForPreTraining.from_pretrained(reference_run / "model")
    assert type(model).__name__ == "ReforBertForPreTraining"
    encoder = AutoModel.from_pretrained(reference_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(reference_run / "model")
    encoded = tokenizer("가나 다라", "마바", return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**encoded).last_hidden_state
    assert hidden.shape == (1, encoded["input_ids"].shape[1], 32)


def test_eval_metrics_are_logged_with_held_out_data(tmp_path: Path, data_dir: Path, vocab_dir: Path) -> None:
    from reforbert.pretraining import pretrain

    eval_dir = write_shards(tmp_path / "eval", vocab_dir, count=6, seed=1)
    run_dir = tmp_path / "run"
    pretrain(
        data_dir,
        vocab_dir,
        run_dir,
        max_steps=2,
        save_steps=2,
        eval_steps=1,
        eval_data=eval_dir,
        **{
            **COMMON,
            "config_overrides": {
                **TINY,
                "attention_backend": "lsh",
                "lsh_bucket_size": 4,
                "lsh_num_hashes": 2,
            },
            "nsp": False,
        },
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_mlm_loss" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert 0.0 <= evals[-1]["eval_mlm_accuracy"] <= 1.0 and np.isfinite(evals[-1]["eval_mlm_loss"])
    assert "eval_nsp_accuracy" not in evals[-1]  # --no-nsp
    assert all(r["nsp_loss"] is None for r in records if "loss" in r)


# Runs the CLI with a pause after every optimizer step (numerics untouched), so that the test can
# reliably SIGKILL it in the middle of training however fast the machine is.
SLOW_CLI = """
import sys, time
from reforbert import cli, pretraining
train_step = pretraining._train_step
def paused_train_step(*args, **kwargs):
    record = train_step(*args, **kwargs)
    time.sleep(0.3)
    return record
pretraining._train_step = paused_train_step
sys.exit(cli.main(sys.argv[1:]))
"""


def start_slow_run(data_dir: Path, vocab_dir: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """The reference run's command in a subprocess whose steps are slowed down, to be interrupted; in a
    process group of its own, which a test may signal as a terminal's Ctrl-C or a scheduler would."""
    command = [
        sys.executable,
        "-c",
        SLOW_CLI,
        *cli_command(data_dir, vocab_dir, run_dir, "--eval-steps", "4", *extra)[3:],
    ]
    return subprocess.Popen(
        command,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def run_and_compare_with(
    reference_run: Path, data_dir: Path, vocab_dir: Path, run_dir: Path, **extra: object
) -> None:
    """Run ``run_dir`` to the end with the reference run's settings and ``extra`` ones (resume=True
    continues an interrupted run); its losses and weights must be the reference's."""
    from reforbert.pretraining import pretrain

    pretrain(data_dir, vocab_dir, run_dir, **REFERENCE_SETTINGS, **extra, **COMMON)
    reference, again = losses(reference_run), losses(run_dir)
    assert sorted(again) == list(range(1, 9))
    for step in reference:
        assert abs(reference[step] - again[step]) <= 1e-6, (step, reference[step], again[step])
    assert_same_weights(final_weights(reference_run), final_weights(run_dir), atol=1e-6)


def test_kill_and_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path
) -> None:
    run_dir = tmp_path / "killed"
    process = start_slow_run(data_dir, vocab_dir, run_dir)
    # Kill at an arbitrary step after the first checkpoint (step 3) and before the end (step 8); the
    # deadline is generous because a busy machine can take minutes to start the subprocess.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = losses(run_dir) if (run_dir / "metrics.jsonl").exists() else {}
        if (run_dir / "checkpoints" / "step-3").is_dir() and max(steps, default=0) >= 4:
            break
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "model").exists()
    assert max(losses(run_dir)) < 8
    # A checkpoint half-written when the kill came must be ignored by --resume.
    half = run_dir / "checkpoints" / ".step-9.abc123.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)

    run_and_compare_with(reference_run, data_dir, vocab_dir, run_dir, resume=True)
    assert not half.exists()


def test_resume_without_checkpoint_is_an_error(tmp_path: Path, data_dir: Path, vocab_dir: Path) -> None:
    from reforbert.pretraining import pretrain

    (tmp_path / "run" / "checkpoints" / ".step-3.x.tmp").mkdir(parents=True)  # only a half-written one
    with pytest.raises(ReforBertInputError, match="no complete checkpoint"):
        pretrain(data_dir, vocab_dir, tmp_path / "run", max_steps=2, resume=True, **COMMON)


def test_existing_output_is_refused_without_resume_or_overwrite(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from reforbert import cli
    from reforbert.pretraining import pretrain

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ReforBertInputError, match="already exists"):
        pretrain(data_dir, vocab_dir, run_dir, max_steps=1, **COMMON)
    assert cli.main(cli_command(data_dir, vocab_dir, run_dir)[3:]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reforbert import pretraining
    from reforbert.modeling_reforbert import ReforBertForPreTraining

    original = ReforBertForPreTraining.forward
    calls = {"n": 0}

    def forward_that_diverges(self, *args, **kwargs):  # noqa: ANN001, ANN202
        output = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 6:  # 2 micro-batches per step: step 4 diverges
            output.mlm_loss = output.mlm_loss * float("nan")
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(ReforBertForPreTraining, "forward", forward_that_diverges)
    run_dir = tmp_path / "run"
    with pytest.raises(pretraining.NonFiniteLossError, match="step 4.*step-2"):
        pretraining.pretrain(data_dir, vocab_dir, run_dir, max_steps=8, save_steps=2, **COMMON)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]
    assert not (run_dir / "model").exists()
    state = json.loads((run_dir / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["step"] == 2
    assert max(losses(run_dir)) == 3


def test_out_of_memory_names_the_levers(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reforbert import pretraining
    from reforbert.modeling_reforbert import ReforBertForPreTraining

    def forward_out_of_memory(self, *args, **kwargs):  # noqa: ANN001, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ReforBertForPreTraining, "forward", forward_out_of_memory)
    with pytest.raises(pretraining.PretrainingOutOfMemory) as caught:
        pretraining.pretrain(data_dir, vocab_dir, tmp_path / "run", max_steps=2, **COMMON)
    for lever in ("--reversible", "--ff-chunk-size", "--micro-batch-size", "--attention lsh"):
        assert lever in str(caught.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process(tmp_path: Path, data_dir: Path, vocab_dir: Path) -> None:
    """torchrun-style gloo run on 2 CPU processes (micro-batch 2 each) = 1 process accumulating 2 x 2."""
    from reforbert.pretraining import pretrain

    single = tmp_path / "single"
    pretrain(data_dir, vocab_dir, single, max_steps=3, save_steps=3, **COMMON)
    double = tmp_path / "double"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "reforbert.cli",
        *cli_command(data_dir, vocab_dir, double, "--max-steps", "3")[3:],
    ]
    # Generous: a busy machine can take minutes to start two processes that import torch.
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-5
    assert_same_weights(final_weights(single), final_weights(double), atol=1e-5)


def test_micro_batch_split_changes_neither_the_loss_nor_the_weights(
    tmp_path: Path, data_dir: Path, vocab_dir: Path
) -> None:
    """4 micro-batches of 1 = 1 micro-batch of 4: the MLM loss is a mean over the global batch's masked
    tokens, not a mean of micro-batch means (the examples hold different numbers of masked tokens)."""
    from reforbert.pretraining import pretrain

    settings = {**COMMON, "config_overrides": {**TINY, "hidden_dropout_prob": 0.0}}
    settings.pop("micro_batch_size")
    settings.update(max_steps=3, save_steps=3)
    runs = {}
    for micro_batch_size in (1, 4):
        run_dir = tmp_path / f"micro-{micro_batch_size}"
        pretrain(data_dir, vocab_dir, run_dir, micro_batch_size=micro_batch_size, **settings)
        runs[micro_batch_size] = run_dir
    one, four = losses(runs[1]), losses(runs[4])
    assert sorted(one) == sorted(four) == [1, 2, 3]
    for step in one:
        assert abs(one[step] - four[step]) <= 1e-5
    assert_same_weights(final_weights(runs[1]), final_weights(runs[4]), atol=1e-5)


def test_data_workers_train_exactly_as_the_loop_alone(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path
) -> None:
    # The reference run's 8 steps of 4 examples out of 24 cross an epoch boundary.
    run_and_compare_with(reference_run, data_dir, vocab_dir, tmp_path / "workers", data_workers=2)


def test_upcoming_steps_follow_the_order_from_any_state_across_epochs() -> None:
    from reforbert.checkpointing import TrainingState
    from reforbert.pretraining import GlobalBatchOrder, upcoming_steps

    order = GlobalBatchOrder(list(range(10)), global_batch_size=3, seed=4)  # 3 steps an epoch
    state = TrainingState(step=2, epoch=0, position=6)
    foreseen = upcoming_steps(order, state)
    keys = [next(foreseen) for _ in range(7)]
    assert state == TrainingState(step=2, epoch=0, position=6)  # only a copy moved on
    for key in keys:
        indices, epoch = order.next_batch(state)
        assert key == (tuple(indices), epoch)
    assert [epoch for _, epoch in keys] == [0, 1, 1, 1, 2, 2, 2]


def test_an_epochs_permutation_is_the_same_however_often_and_in_what_order_it_is_asked_for() -> None:
    from reforbert.pretraining import GlobalBatchOrder

    def fresh(epoch: int) -> list[int]:
        return GlobalBatchOrder(list(range(50)), global_batch_size=5, seed=9).permutation(epoch).tolist()

    order = GlobalBatchOrder(list(range(50)), global_batch_size=5, seed=9)
    for epoch in (0, 1, 0, 2, 1, 3, 0):  # kept, revisited after being dropped, ahead of the loop
        assert order.permutation(epoch).tolist() == fresh(epoch), epoch
    assert fresh(0) != fresh(1) and sorted(fresh(0)) == list(range(50))


def test_group_by_length_sorts_a_global_batch_by_length_then_index() -> None:
    from reforbert.pretraining import group_by_length

    indices = [40, 7, 13, 2, 99]
    lengths = [30, 12, 30, 64, 12]
    assert group_by_length(indices, lengths) == [7, 99, 13, 40, 2]


def test_plot_draws_one_and_several_runs(tmp_path: Path, reference_run: Path) -> None:
    from reforbert import cli
    from reforbert.plotting import plot_runs

    assert cli.main(["plot", str(reference_run)]) == 0
    assert (reference_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = plot_runs([reference_run, reference_run], tmp_path / "compare.png", labels=["a", "b"])
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ReforBertInputError, match="metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "none.png")


def test_bf16_autocast_trains_on_cpu_and_resume_refuses_changed_settings(
    tmp_path: Path, data_dir: Path, vocab_dir: Path
) -> None:
    from reforbert.pretraining import pretrain

    run_dir = tmp_path / "run"
    summary = pretrain(
        data_dir, vocab_dir, run_dir, max_steps=1, save_steps=1, **{**COMMON, "precision": "bf16"}
    )
    assert np.isfinite(summary["loss"]) and "bf16" in (run_dir / "run_settings.json").read_text()
    with pytest.raises(ReforBertInputError, match="global_batch_size"):
        pretrain(data_dir, vocab_dir, run_dir, max_steps=2, resume=True, **{**COMMON, "global_batch_size": 8})


def test_time_budget_stops_after_the_current_step_and_saves(
    tmp_path: Path, data_dir: Path, vocab_dir: Path
) -> None:
    from reforbert.pretraining import pretrain

    run_dir = tmp_path / "run"
    summary = pretrain(data_dir, vocab_dir, run_dir, time_budget_minutes=0.0, save_steps=100, **COMMON)
    assert summary["step"] == 1
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-1"]
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_a_schedule_fitted_to_the_time_budget_ends_the_run_and_is_kept_on_resume(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reforbert.pretraining as pretraining
    from reforbert.schedule import FIT_AFTER_STEPS

    # The pace a machine measures is not the test's business: whatever it is, 6 more steps fit.
    monkeypatch.setattr(pretraining, "steps_that_fit", lambda *args, **kwargs: 6)
    settings = {**COMMON, "warmup_steps": 2, "save_steps": 2, "save_total_limit": 0}
    budget = {"time_budget_minutes": 30.0, "fit_schedule_to_time_budget": True}
    run_dir = tmp_path / "run"
    summary = pretraining.pretrain(data_dir, vocab_dir, run_dir, **budget, **settings)

    total = FIT_AFTER_STEPS + 6
    assert summary["step"] == total  # the schedule's end, long before the budget's
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "schedule_steps" in r] == [
        {"step": FIT_AFTER_STEPS, "schedule_steps": total, "fitted_step_seconds": pytest.approx(0, abs=60)}
    ]
    rates = {r["step"]: r["lr"] for r in records if "lr" in r}
    peak = settings["learning_rate"]
    assert rates[2] == pytest.approx(peak * 1 / 2)  # warm-up
    assert rates[FIT_AFTER_STEPS] == pytest.approx(peak)  # before the fit: no decay to speak of
    for step in range(FIT_AFTER_STEPS + 1, total + 1):  # after it: linear to zero at the fitted end
        assert rates[step] == pytest.approx(peak * (total - step + 1) / (total - 2))
    run_settings = json.loads((run_dir / "run_settings.json").read_text())
    assert run_settings["schedule_steps"] == total and run_settings["schedule_fitted_to_time_budget"]

    # Interrupted after the fit: the resumed invocation keeps the fitted end, although 100 more steps
    # would fit now, and finishes as the uninterrupted run did.
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "model")
    for checkpoint in (resumed / "checkpoints").iterdir():
        if int(checkpoint.name.split("-")[1]) > FIT_AFTER_STEPS + 2:
            shutil.rmtree(checkpoint)
    monkeypatch.setattr(pretraining, "steps_that_fit", lambda *args, **kwargs: 100)
    again = pretraining.pretrain(data_dir, vocab_dir, resumed, resume=True, **budget, **settings)
    assert again["step"] == total
    assert_same_weights(final_weights(resumed), final_weights(run_dir), atol=0)
    with pytest.raises(ReforBertInputError, match="needs --time-budget-minutes"):
        pretraining.pretrain(
            data_dir, vocab_dir, tmp_path / "no-budget", **budget | {"time_budget_minutes": None}, **settings
        )


# ---------------------------------------------------------------------------------------------------
# Arguments: whole-word masking, --init-from, recipes, and run folders written by earlier versions


def continuation_pairs_split(batch: dict, features: list[dict], word_starts: torch.Tensor) -> int:
    """How many (piece, next piece of the same word) pairs have one masked and the other not."""
    from reforbert.configuration_reforbert import IGNORE_INDEX

    split = 0
    for row, feature in enumerate(features):
        ids = torch.as_tensor(feature["input_ids"])
        selected = batch["labels"][row, : len(ids)] != IGNORE_INDEX
        ordinary = ids >= NUM_SPECIAL_TOKENS
        continues = ordinary[1:] & ordinary[:-1] & ~word_starts[ids[1:]]
        split += int((continues & (selected[1:] != selected[:-1])).sum())
    return split


@pytest.mark.parametrize("whole_word_mask", [True, False])
def test_whole_word_masking_masks_every_piece_of_a_word_together(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, whole_word_mask: bool
) -> None:
    from reforbert.data.masking import load_word_start_table
    from reforbert.pretraining import build_batch_makers, build_config, load_data
    from reforbert.pretraining_arguments import PretrainingArguments

    args = PretrainingArguments.resolve(
        data=data_dir, vocab=vocab_dir, output=tmp_path, whole_word_mask=whole_word_mask, **COMMON
    )
    make_batch, _ = build_batch_makers(args, build_config("tiny", TINY), load_data(args))
    indices = list(range(24))
    features = make_batch.read(indices)
    split = continuation_pairs_split(
        make_batch.collate(features, 0), features, load_word_start_table(vocab_dir)
    )
    if whole_word_mask:
        assert split == 0
    else:  # the check above can fail: token-level masking splits words
        assert split > 0


def test_held_out_masking_rate_is_fixed_apart_from_the_training_rate(
    tmp_path: Path, data_dir: Path, vocab_dir: Path
) -> None:
    from reforbert.configuration_reforbert import IGNORE_INDEX
    from reforbert.pretraining import BatchMaker, build_batch_makers, build_config, load_data
    from reforbert.pretraining_arguments import PretrainingArguments

    args = PretrainingArguments.resolve(
        data=data_dir, vocab=vocab_dir, output=tmp_path, mlm_probability=0.5, **COMMON
    )
    make_batch, make_eval_batch = build_batch_makers(args, build_config("tiny", TINY), load_data(args))

    def masked_share(maker: BatchMaker) -> float:
        batch = maker.collate(maker.read(list(range(24))), 0)
        real = batch["attention_mask"].bool() & (batch["input_ids"] >= NUM_SPECIAL_TOKENS)
        return float((batch["labels"] != IGNORE_INDEX).sum() / real.sum())

    # 0.5 against the default 0.15 of held-out evaluation: far apart for a few thousand tokens.
    assert masked_share(make_batch) > 0.4
    assert masked_share(make_eval_batch) < 0.25
    with pytest.raises(ReforBertInputError, match="--eval-mlm-probability must be in"):
        PretrainingArguments.resolve(data="d", vocab="v", output="o", eval_mlm_probability=1.5).validate()


def test_whole_word_masking_is_recorded_and_kept_on_resume(
    tmp_path: Path, data_dir: Path, vocab_dir: Path
) -> None:
    from reforbert.pretraining import pretrain

    run_dir = tmp_path / "run"
    pretrain(data_dir, vocab_dir, run_dir, max_steps=1, save_steps=1, whole_word_mask=True, **COMMON)
    assert json.loads((run_dir / "run_settings.json").read_text())["whole_word_mask"] is True
    with pytest.raises(ReforBertInputError, match="whole_word_mask: True -> False"):
        pretrain(data_dir, vocab_dir, run_dir, max_steps=2, resume=True, **COMMON)


def test_init_from_starts_a_new_run_from_a_saved_model(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path
) -> None:
    from reforbert.pretraining import build_model, model_config, pretrain
    from reforbert.pretraining_arguments import PretrainingArguments

    source = reference_run / "model"
    settings = {**COMMON, "preset": "mini", "config_overrides": {}}  # the saved config wins over the preset
    args = PretrainingArguments.resolve(
        data=data_dir, vocab=vocab_dir, output=tmp_path / "new", init_from=source, **settings
    )
    config = model_config(args, resume_from=None)
    assert config.hidden_size == TINY["hidden_size"]
    weights = build_model(args, config).state_dict()
    for name, tensor in load_file(str(source / "model.safetensors")).items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)

    run_dir = tmp_path / "phase2"
    pretrain(data_dir, vocab_dir, run_dir, init_from=source, max_steps=2, save_steps=2, **settings)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2] and train[0]["lr"] < train[1]["lr"]  # a fresh schedule
    assert json.loads((run_dir / "run_settings.json").read_text())["init_from"] == str(source)


def test_a_model_folder_serves_as_vocabulary_without_its_weights_replacing_the_trained_ones(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path
) -> None:
    from reforbert import ReforBertForPreTraining
    from reforbert.checkpointing import list_checkpoints
    from reforbert.pretraining import pretrain

    # A trained model's folder: weights, config, the tokenizer files and a card.
    model_as_vocab = shutil.copytree(reference_run / "model", tmp_path / "released")
    (model_as_vocab / "README.md").write_text("the card of another model\n")
    run_dir = tmp_path / "run"
    pretrain(data_dir, model_as_vocab, run_dir, max_steps=2, save_steps=2, **COMMON)
    final, trained = run_dir / "model", list_checkpoints(run_dir)[-1][1]
    # Through the model class: the two files name the tied embedding/decoder weight differently.
    saved = ReforBertForPreTraining.from_pretrained(str(final)).state_dict()
    at_the_end = ReforBertForPreTraining.from_pretrained(str(trained)).state_dict()
    for name, tensor in at_the_end.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=name)
    assert not (final / "README.md").exists()
    assert (final / "sentencepiece.model").read_bytes() == (vocab_dir / "sentencepiece.model").read_bytes()


def test_init_from_refuses_another_vocabulary_in_one_line(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    from reforbert import cli

    resized = shutil.copytree(reference_run / "model", tmp_path / "resized")
    config = json.loads((resized / "config.json").read_text())
    (resized / "config.json").write_text(json.dumps({**config, "vocab_size": 99}))

    def rename_a_piece(proto) -> None:
        proto.pieces[10].piece += "x"

    retrained = edited_vocabulary(reference_run / "model", tmp_path / "retrained", rename_a_piece)
    weights_only_as_pickle = tmp_path / "pickled"
    weights_only_as_pickle.mkdir()
    shutil.copy(reference_run / "model" / "config.json", weights_only_as_pickle)
    for model_dir, message in (
        (resized, "vocabulary of 99 pieces but --vocab"),
        (retrained, "trained with another vocabulary"),
        (weights_only_as_pickle, "no model.safetensors"),
    ):
        argv = cli_command(
            data_dir, vocab_dir, tmp_path / f"run-{model_dir.name}", "--init-from", str(model_dir)
        )
        assert cli.main(argv[3:]) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and message in error and str(model_dir) in error, error


def test_init_from_accepts_the_same_vocabulary_trained_again_elsewhere(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path
) -> None:
    from reforbert.pretraining import pretrain

    # `reforbert vocab` writes its scratch folder's path into the model: a rebuilt vocabulary differs
    # from the released model's copy in those bytes only, and must still be accepted.
    def move_scratch(proto) -> None:
        proto.trainer_spec.input[:] = ["/another/scratch/sentences.txt"]
        proto.trainer_spec.model_prefix = "/another/scratch/sentencepiece"

    moved = edited_vocabulary(reference_run / "model", tmp_path / "moved", move_scratch)
    assert (moved / "sentencepiece.model").read_bytes() != (vocab_dir / "sentencepiece.model").read_bytes()
    run_dir = tmp_path / "run"
    pretrain(data_dir, vocab_dir, run_dir, max_steps=1, save_steps=1, init_from=moved, **COMMON)
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_a_recipe_fills_the_flags_not_given_and_run_settings_record_the_result(
    tmp_path: Path, data_dir: Path, vocab_dir: Path
) -> None:
    from reforbert import cli

    run_dir = tmp_path / "run"
    argv = cli_command(
        data_dir,
        vocab_dir,
        run_dir,
        "--recipe",
        "budget-stage2-len128",
        "--max-steps",
        "1",
        "--no-progress",
    )
    assert cli.main(argv[3:]) == 0
    settings = json.loads((run_dir / "run_settings.json").read_text())
    assert settings["recipe"] == "budget-stage2-len128"
    # From the recipe: no reversible layers, no hidden dropout, 25% masked; from the command line: the rest.
    assert settings["reversible"] is False and settings["model"]["reversible"] is False
    assert settings["model"]["hidden_dropout_prob"] == 0.0
    assert (settings["max_seq_len"], settings["global_batch_size"], settings["warmup_steps"]) == (64, 4, 2)
    assert settings["precision"] == "fp32"
    assert settings["mlm_probability"] == 0.25 and settings["eval_mlm_probability"] == 0.15
    assert settings["compile"] is False


# What the pretraining loop recorded in a checkpoint's settings before PretrainingArguments existed.
EARLIER_SETTINGS_KEYS = (
    "data",
    "global_batch_size",
    "seed",
    "mlm_probability",
    "nsp",
    "max_seq_len",
    "micro_batch_size",
    "learning_rate",
    "schedule",
    "precision",
    "preset",
    "processes",
)


def test_resume_from_a_run_folder_written_before_the_arguments_dataclass(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reforbert import pretraining

    class Interrupted(Exception):
        pass

    train_step = pretraining._train_step

    def step_then_stop_after_step_5(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        record = train_step(*args, **kwargs)
        if record["step"] == 5:
            raise Interrupted
        return record

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(pretraining, "_train_step", step_then_stop_after_step_5)
        with pytest.raises(Interrupted):
            pretraining.pretrain(
                data_dir,
                vocab_dir,
                run_dir,
                max_steps=8,
                save_steps=3,
                save_total_limit=2,
                eval_steps=4,
                **COMMON,
            )
    # Make the folder what earlier versions wrote: settings without the newer keys.
    state_file = run_dir / "checkpoints" / "step-3" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["settings"] = {key: state["settings"][key] for key in EARLIER_SETTINGS_KEYS}
    state_file.write_text(json.dumps(state, indent=1))
    run_settings = json.loads((run_dir / "run_settings.json").read_text())
    earlier = EARLIER_SETTINGS_KEYS + ("schedule_steps", "warmup_steps", "model")
    (run_dir / "run_settings.json").write_text(json.dumps({key: run_settings[key] for key in earlier}))

    run_and_compare_with(reference_run, data_dir, vocab_dir, run_dir, resume=True)


# ---------------------------------------------------------------------------------------------------
# Preemption, damaged checkpoints and failed writes


@pytest.mark.parametrize("data_workers", [0, 2])
def test_sigterm_finishes_the_step_saves_and_the_resumed_run_equals_the_uninterrupted_one(
    tmp_path: Path, data_dir: Path, vocab_dir: Path, reference_run: Path, data_workers: int
) -> None:
    run_dir = tmp_path / "preempted"
    process = start_slow_run(data_dir, vocab_dir, run_dir, "--data-workers", str(data_workers))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if max(losses(run_dir) if (run_dir / "metrics.jsonl").exists() else {}, default=0) >= 2:
            break
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)  # the whole group: the data workers too
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    last_line = stderr.decode().strip().splitlines()[-1]
    stopped_at = max(losses(run_dir))
    assert stopped_at < 8 and "SIGTERM" in last_line and "--resume" in last_line
    assert f"step-{stopped_at}" in last_line and (run_dir / "checkpoints" / f"step-{stopped_at}").is_dir()
    assert not (run_dir / "model").exists()

    run_and_compare_with(reference_run, data_dir, vocab_dir, run_dir, resume=True)


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, vocab_dir: Path) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    from reforbert.pretraining import pretrain

    run_dir = tmp_path_factory.mktemp("two") / "run"
    pretrain(data_dir, vocab_dir, run_dir, max_steps=4, save_steps=2, **COMMON)
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return shutil.copytree(run_dir, tmp_path / "run")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


DAMAGE = {
    "truncated model.safetensors": (
        lambda f: truncate(f / "model.safetensors"),
        "model.safetensors is truncated",
    ),
    "missing optimizer state": (
        lambda f: (f / "optimizer.safetensors").unlink(),
        "missing optimizer.safetensors",
    ),
    "another vocabulary": (
        lambda f: edit_config(f, vocab_size=99),
        "written for another model or vocabulary (vocab_size 99 instead of 67",
    ),
    "another model": (
        lambda f: edit_config(f, hidden_size=64),
        "written for another model or vocabulary (hidden_size 64 instead of 32",
    ),
    "cut trainer state": (lambda f: (f / "trainer_state.json").write_text('{"step": 4, "sch'), "unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(
    tmp_path: Path, two_checkpoint_run: Path, vocab_dir: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    from reforbert.pretraining import _checkpoint_to_resume
    from reforbert.pretraining_arguments import PretrainingArguments

    run_dir = copy_of(two_checkpoint_run, tmp_path)
    spoil, problem = DAMAGE[damage]
    spoil(run_dir / "checkpoints" / "step-4")
    args = PretrainingArguments(data="unused", vocab=str(vocab_dir), output=str(run_dir), resume=True)
    assert _checkpoint_to_resume(args, is_main=True) == run_dir / "checkpoints" / "step-2"
    warning = capsys.readouterr().err
    assert f"cannot resume from step-4: {problem}" in warning and "resuming from step-2 instead" in warning


def test_resume_falls_back_and_continues_the_run(
    tmp_path: Path, two_checkpoint_run: Path, data_dir: Path, vocab_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from reforbert import cli

    run_dir = copy_of(two_checkpoint_run, tmp_path)
    truncate(run_dir / "checkpoints" / "step-4" / "optimizer.safetensors")
    argv = cli_command(data_dir, vocab_dir, run_dir, "--max-steps", "4", "--save-steps", "2", "--resume")
    assert cli.main(argv[3:]) == 0
    assert "resuming from step-2 instead" in capsys.readouterr().err
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    # Steps 3 and 4 were trained again from step 2: the same losses as the first time.
    assert losses(run_dir) == pytest.approx(losses(two_checkpoint_run), abs=1e-6)


def test_without_a_usable_checkpoint_resume_stops_and_names_each_problem(
    tmp_path: Path, two_checkpoint_run: Path, data_dir: Path, vocab_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from reforbert import cli

    run_dir = copy_of(two_checkpoint_run, tmp_path)
    truncate(run_dir / "checkpoints" / "step-4" / "model.safetensors")
    edit_config(run_dir / "checkpoints" / "step-2", vocab_size=99)
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    argv = cli_command(data_dir, vocab_dir, run_dir, "--max-steps", "4", "--resume")
    assert cli.main(argv[3:]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no complete checkpoint" in error and "step-4: model.safetensors" in error and "step-2:" in error
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before  # nothing started from scratch


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_file_size_limit_is_a_one_line_error_that_keeps_the_previous_checkpoint(
    tmp_path: Path, two_checkpoint_run: Path, data_dir: Path, vocab_dir: Path
) -> None:
    import resource

    run_dir = copy_of(two_checkpoint_run, tmp_path)
    kept = {name: file_digests(run_dir / name) for name in ("checkpoints", "model")}
    # Room for the model weights (about 80 kB) but not for the optimizer state (twice that).
    limit = 120_000

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = cli_command(data_dir, vocab_dir, run_dir, "--max-steps", "6", "--save-steps", "2", "--resume")
    result = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("reforbert pretrain: error: ") and "could not write the checkpoint" in error
    assert "File too large" in error and "step-4 is intact" in error
    assert file_digests(run_dir / "checkpoints") == kept["checkpoints"]  # no step-6, no temporary folder
    assert file_digests(run_dir / "model") == kept["model"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_a_one_line_error_and_changes_nothing(
    tmp_path: Path, two_checkpoint_run: Path, data_dir: Path, vocab_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from reforbert import cli

    run_dir = copy_of(two_checkpoint_run, tmp_path)
    before = file_digests(run_dir)
    folders = [run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        argv = cli_command(data_dir, vocab_dir, run_dir, "--max-steps", "6", "--save-steps", "2", "--resume")
        assert cli.main(argv[3:]) == 2
    finally:
        for folder in folders:
            folder.chmod(0o755)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("reforbert pretrain: error: ") and "could not write" in error
    assert file_digests(run_dir) == before
