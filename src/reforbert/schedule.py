"""The learning-rate schedule of pretraining, and its length fitted to a time budget.

A schedule warms up linearly for ``warmup`` steps, then holds (``constant``) or decays to zero at its last
step (``linear``, or half a cosine). Its length is usually known before training: ``--max-steps``, the
steps ``--max-tokens`` should take, or one epoch. Under a time budget it is not: a run stopped by the
clock ends with the rate still high, and a length guessed from another machine's speed is wrong on this
one. With ``--fit-schedule-to-time-budget`` the run measures its own pace over its first steps (all of
them inside the warm-up, whose rate does not depend on the length) and then fixes the length so that
the decay ends just before the deadline, leaving room for the evaluations still to come.

The fitted length is kept in the schedule's state, so a checkpoint restores it on ``--resume``; the
length that comes from the arguments is not, so a resumed run may still change ``--max-steps``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULE_SHAPES = ("linear", "cosine", "constant")
# Steps whose pace is measured before the length is fitted; the first half of them (start-up, kernel
# selection, compilation) does not count.
FIT_AFTER_STEPS = 20
# Share of the time left that the fitted steps may fill; the rest absorbs checkpoints and slower steps.
FIT_TIME_SHARE = 0.95
# A held-out example costs about a third of a training example: a forward pass without the backward.
EVAL_COST_PER_TRAINING_EXAMPLE = 1 / 3
# Under a fitted length the warm-up takes at most this share of it, so that a short budget still decays.
MAX_WARMUP_SHARE = 0.1


class LearningRateSchedule(LambdaLR):
    """Linear warm-up, then ``linear``/``cosine`` decay to zero at ``total`` steps, or ``constant``."""

    # Set from the arguments of each invocation, never restored from a checkpoint.
    _FROM_ARGUMENTS = ("shape", "warmup", "planned_total")

    def __init__(self, optimizer: torch.optim.Optimizer, shape: str, warmup: int, total: int) -> None:
        if shape not in SCHEDULE_SHAPES:
            raise ValueError(f"unknown schedule {shape!r}; choose {', '.join(SCHEDULE_SHAPES)}")
        self.shape, self.warmup, self.planned_total = shape, warmup, total
        self.fitted_total: int | None = None  # restored by load_state_dict, unlike the three above
        super().__init__(optimizer, lambda step: self.factor(step))

    @property
    def total(self) -> int:
        return self.fitted_total if self.fitted_total is not None else self.planned_total

    @property
    def effective_warmup(self) -> int:
        if self.fitted_total is None:
            return self.warmup
        return min(self.warmup, int(self.fitted_total * MAX_WARMUP_SHARE))

    def factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of the peak."""
        warmup, total = self.effective_warmup, self.total
        if step < warmup:
            return step / max(1, warmup)
        if self.shape == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if self.shape == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def fit(self, total: int) -> None:
        """Fix the schedule's length at ``total`` steps from now on, and the rate of the next step."""
        self.fitted_total = total
        factor = self.factor(self.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in self._FROM_ARGUMENTS:
            state.pop(key, None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {key: value for key, value in state_dict.items() if key not in self._FROM_ARGUMENTS}
        super().load_state_dict(state)


def steps_that_fit(
    remaining_seconds: float,
    step_seconds: float,
    *,
    eval_seconds: float = 0.0,
    eval_every: int = 0,
    share: float = FIT_TIME_SHARE,
) -> int:
    """How many more steps fit in ``remaining_seconds`` at ``step_seconds`` a step, with an evaluation of
    ``eval_seconds`` every ``eval_every`` steps and one at the end (at least one step)."""
    usable = remaining_seconds * share - eval_seconds
    per_step = step_seconds + (eval_seconds / eval_every if eval_every > 0 else 0.0)
    return max(1, int(usable / max(per_step, 1e-9)))


def measured_step_seconds(step_seconds: Sequence[float]) -> float:
    """The median over the last half of the measured steps: the first ones pay for start-up."""
    if not step_seconds:
        raise ValueError("no step times measured")
    return statistics.median(step_seconds[len(step_seconds) // 2 :])
