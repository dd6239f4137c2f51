"""A run's time budget (`TrainConfig.minutes`): the estimate of how many steps it allows and the schedule
sized to that estimate, and the clock that spaces `last` checkpoints.

The estimate times whole training steps (fetching the batch included) of the running process. The first step
is left out: it loads and caches data and warms up kernels and allocators, and is slower than the rest. After
`TIMED_STEPS` more steps the run validates once, timed, and `make_plan` finds the most whole epochs whose steps
and validations fit the budget left, keeping one validation's time for the final one. The schedules are sized
to those epochs, and the run stops when they end or when the budget (less that final validation) is spent,
whichever comes first.
"""
from __future__ import annotations

import time

from .config import TrainConfig

TIMED_STEPS = 5
# Validations over a budgeted run when `val_every` is not given: enough to pick a good `best`, few enough
# that they cost little of the budget.
VALIDATIONS_PER_RUN = 10


class StepTimer:
    """Wall time of this process's steps, first one excluded."""

    def __init__(self):
        self.seconds: list[float] = []
        self.first: float | None = None

    def add(self, seconds: float) -> None:
        if self.first is None:
            self.first = seconds
        else:
            self.seconds.append(seconds)

    @property
    def ready(self) -> bool:
        return len(self.seconds) >= TIMED_STEPS

    def mean(self) -> float | None:
        """The mean of the timed steps (the first step alone when the budget ran out before any other)."""
        if self.seconds:
            return sum(self.seconds) / len(self.seconds)
        return self.first


def make_plan(config: TrainConfig, step_seconds: float, timed_steps: int, val_seconds: float, step: int,
              spent_s: float, epoch: int, steps_per_epoch: int) -> dict:
    """The schedule a budget of `config.minutes` allows, `spent_s` seconds and `step` steps into the run (during
    0-based `epoch`), for steps of `step_seconds` (the mean of `timed_steps`) and validations of `val_seconds`:
    the most whole epochs (at least to the end of the epoch under way, at most `config.epochs` and what
    `max_steps` allows) whose remaining steps and validations fit the budget left after one final validation. The student's StepLR keeps its number
    of decays (`epochs / step_epochs`, 6 by default) over that length; validation is every `val_every` epochs,
    or about `VALIDATIONS_PER_RUN` times over the run when `val_every` is None."""
    left = config.minutes * 60 - spent_s - val_seconds
    most = config.epochs
    if config.max_steps is not None:
        most = min(most, max(1, config.max_steps // steps_per_epoch))

    def val_every(epochs: int) -> int:
        return config.val_every or max(1, epochs // VALIDATIONS_PER_RUN)

    def cost(epochs: int) -> float:
        return (epochs * steps_per_epoch - step) * step_seconds + (epochs // val_every(epochs)) * val_seconds

    # The epoch under way is finished in any case (unless the budget runs out first).
    epochs = epoch + 1
    for candidate in range(most, epoch + 1, -1):
        if cost(candidate) <= left:
            epochs = candidate
            break
    decays = config.epochs / config.step_epochs
    return {"minutes": config.minutes, "step_seconds": round(step_seconds, 6), "timed_steps": int(timed_steps),
            "val_seconds": round(val_seconds, 6),
            "steps": int(min(epochs * steps_per_epoch, config.max_steps or epochs * steps_per_epoch)),
            "epochs": int(epochs),
            "step_epochs": int(max(1, round(epochs / decays))), "val_every": int(val_every(epochs)),
            "made_at_step": int(step), "from_epoch": int(epoch) + 1}


def describe_plan(plan: dict, steps_per_epoch: int) -> str:
    def count(n, noun):
        return f"{n} {noun}{'s' * (n != 1)}"

    return (f"time budget {plan['minutes']:g} min: {plan['step_seconds']:.3g} s per step (mean of "
            f"{count(plan['timed_steps'], 'timed step')}) and {plan['val_seconds']:.3g} s per validation allow "
            f"{count(plan['epochs'], 'epoch')} of {count(steps_per_epoch, 'step')} ({plan['steps']} in all); the "
            f"schedules are sized to them (student decay every {count(plan['step_epochs'], 'epoch')}, validation "
            f"every {count(plan['val_every'], 'epoch')})")


class CheckpointClock:
    """When `last` is due: every `every_steps` steps and every `every_minutes` minutes of this process's run
    time since the previous write (0 disables either)."""

    def __init__(self, every_steps: int, every_minutes: float, clock=time.monotonic):
        self.every_steps, self.every_s, self.clock = every_steps, every_minutes * 60, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        by_count = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_s) and self.clock() - self.last >= self.every_s
        return by_count or by_time

    def written(self) -> None:
        self.last = self.clock()


__all__ = ["CheckpointClock", "StepTimer", "TIMED_STEPS", "VALIDATIONS_PER_RUN", "describe_plan", "make_plan"]
