"""The learning-rate schedule: the shapes, fitting its length to a time budget, and its checkpointed state."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import get_scheduler

from reforbert.schedule import (
    MAX_WARMUP_SHARE,
    LearningRateSchedule,
    measured_step_seconds,
    steps_that_fit,
)


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)


def rates(scheduler, steps: int) -> list[float]:
    """The rate each of ``steps`` optimizer steps is taken at."""
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize(
    ("shape", "library_name"),
    [("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")],
)
def test_each_shape_gives_the_rates_of_the_usual_warmup_schedules(shape: str, library_name: str) -> None:
    ours = LearningRateSchedule(optimizer(), shape, warmup=3, total=20)
    usual = get_scheduler(library_name, optimizer(), num_warmup_steps=3, num_training_steps=20)
    assert rates(ours, 24) == pytest.approx(rates(usual, 24), abs=1e-12)


def test_a_fitted_length_sets_the_next_rate_and_comes_back_from_a_checkpoint_unlike_the_planned_one() -> None:
    schedule = LearningRateSchedule(optimizer(), "linear", warmup=10, total=10**9)
    rates(schedule, 5)  # inside the warm-up: the length does not matter yet
    assert schedule.get_last_lr()[0] == pytest.approx(1e-3 * 5 / 10)
    schedule.fit(105)
    assert schedule.total == 105 and schedule.effective_warmup == 10
    assert schedule.get_last_lr()[0] == pytest.approx(1e-3 * 5 / 10)
    assert rates(schedule, 100)[-1] == pytest.approx(1e-3 * 1 / 95)  # the last of 105 steps
    assert schedule.get_last_lr()[0] == 0.0

    saved = json.loads(json.dumps(schedule.state_dict()))  # checkpoints keep it as JSON
    restored = LearningRateSchedule(optimizer(), "linear", warmup=10, total=10**9)
    restored.load_state_dict(saved)
    assert restored.total == 105 and restored.last_epoch == 105

    unfitted = LearningRateSchedule(optimizer(), "linear", warmup=10, total=50)
    resumed = LearningRateSchedule(optimizer(), "linear", warmup=10, total=80)  # --max-steps changed
    resumed.load_state_dict(json.loads(json.dumps(unfitted.state_dict())))
    assert resumed.total == 80 and resumed.fitted_total is None


def test_a_short_fitted_schedule_keeps_its_warmup_to_a_tenth_of_it() -> None:
    schedule = LearningRateSchedule(optimizer(), "linear", warmup=200, total=10**9)
    rates(schedule, 20)
    schedule.fit(100)
    assert schedule.effective_warmup == int(100 * MAX_WARMUP_SHARE) == 10
    # Past the shortened warm-up the rate decays from where the fit found it: 90 steps to zero.
    assert schedule.get_last_lr()[0] == pytest.approx(1e-3 * (100 - 20) / 90)


def test_steps_that_fit_leave_room_for_the_evaluations_and_a_margin() -> None:
    # Half of 200 s, less the final 4 s evaluation, at 0.25 s a step plus 4 s every 8 steps: 96 / 0.75.
    assert steps_that_fit(200.0, 0.25, eval_seconds=4.0, eval_every=8, share=0.5) == 128
    assert steps_that_fit(100.0, 0.25, share=1.0) == 400
    assert steps_that_fit(0.0, 0.1) == 1  # out of time: one step, then the budget stops the run
    assert measured_step_seconds([5.0, 4.0, 0.2, 0.1, 0.3, 0.2]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        measured_step_seconds([])
