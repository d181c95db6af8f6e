"""Checkpoint I/O: a save/load round trip restores every piece of state; incomplete folders are ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reforbert.checkpointing import (
    CHECKPOINT_FILES,
    TrainingObjects,
    TrainingState,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from reforbert.configuration_reforbert import IGNORE_INDEX, ReforBertConfig
from reforbert.errors import ReforBertInputError


def training_objects(seed: int) -> TrainingObjects:
    from transformers import get_scheduler

    from reforbert.modeling_reforbert import ReforBertForPreTraining

    torch.manual_seed(seed)
    config = ReforBertConfig(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        axial_position_shape=(4, 4),
        attention_backend="full",
    )
    model = ReforBertForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=10)
    return TrainingObjects(model, optimizer, scheduler)


def train_steps(objects: TrainingObjects, steps: int) -> None:
    for _ in range(steps):
        input_ids = torch.randint(7, 20, (2, 8))
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, 2] = input_ids[:, 2]
        objects.model(input_ids=input_ids, labels=labels).loss.backward()
        objects.optimizer.step()
        objects.scheduler.step()
        objects.optimizer.zero_grad()


def test_round_trip_restores_weights_optimizer_schedule_and_random_state(tmp_path: Path) -> None:
    saved = training_objects(seed=0)
    train_steps(saved, 3)
    state = TrainingState(step=3, epoch=1, position=8, tokens_seen=48, elapsed_seconds=1.5)
    folder = save_checkpoint(tmp_path, state, saved, {"seed": 0}, keep=0)
    assert folder == tmp_path / "checkpoints" / "step-3"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
    after_save = torch.rand(5)

    restored = training_objects(seed=1)  # other weights, fresh optimizer and schedule
    torch.rand(100)  # move the generator elsewhere
    assert load_checkpoint(folder, restored) == state
    torch.testing.assert_close(torch.rand(5), after_save, rtol=0, atol=0)
    for name, tensor in saved.model.state_dict().items():
        torch.testing.assert_close(restored.model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert restored.scheduler.state_dict() == saved.scheduler.state_dict()
    assert restored.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]
    # Training on from both gives the same weights: the AdamW moments came back too.
    torch.manual_seed(5)
    train_steps(saved, 1)
    torch.manual_seed(5)
    train_steps(restored, 1)
    for name, tensor in saved.model.state_dict().items():
        torch.testing.assert_close(restored.model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_only_complete_checkpoints_count_and_the_oldest_are_rotated(tmp_path: Path) -> None:
    objects = training_objects(seed=0)
    for step in (2, 9, 10):
        save_checkpoint(tmp_path, TrainingState(step=step), objects, {}, keep=0)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 9, 10]  # numeric, not text, order
    (tmp_path / "checkpoints" / ".step-11.x1.tmp").mkdir()  # a write interrupted before the rename
    (tmp_path / "checkpoints" / "step-12").mkdir()  # a folder missing its files
    (tmp_path / "checkpoints" / "step-12" / "model.safetensors").write_bytes(b"")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 9, 10]
    save_checkpoint(tmp_path, TrainingState(step=13), objects, {}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10, 13]
    assert (tmp_path / "checkpoints" / "step-12").is_dir()  # not a checkpoint: left alone


def test_a_damaged_checkpoint_is_an_input_error_naming_it(tmp_path: Path) -> None:
    objects = training_objects(seed=0)
    folder = save_checkpoint(tmp_path, TrainingState(step=1), objects, {}, keep=0)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1}))  # no optimizer or scheduler state
    with pytest.raises(ReforBertInputError, match="step-1.*cannot resume"):
        load_checkpoint(folder, training_objects(seed=0))


@pytest.mark.parametrize("value", [None, "12", -1, 1.5, True])
def test_a_trainer_state_step_that_is_not_a_count_is_named(value, tmp_path) -> None:
    from reforbert.checkpointing import training_state_from

    path = tmp_path / "trainer_state.json"
    with pytest.raises(ReforBertInputError, match="'step' must be a number >= 0"):
        training_state_from({"step": value, "epoch": 0}, path)
    assert training_state_from({"step": 3, "elapsed_seconds": 2.5}, path).step == 3
