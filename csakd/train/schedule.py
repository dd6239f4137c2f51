"""Learning rates as pure functions of the epoch: the teacher's cosine annealing and the student's StepLR.

Closed forms rather than torch's schedulers so that the length of the schedule can be fixed after the run has
started (a time budget's plan, `csakd.train.budget`) and a resumed run recomputes exactly the same rates from
its epoch and its saved config, with no scheduler state to carry.
"""
from __future__ import annotations

import math

from .config import TrainConfig


def learning_rate(config: TrainConfig, network: str, epoch: int) -> float:
    """The learning rate of `network` ("teacher" or "student") during `epoch` (0-based)."""
    base = float(getattr(config, f"lr_{network}"))
    if epoch == 0 or _held(config, epoch):
        return base  # exactly the configured rate, not a cosine evaluated at 0
    if network == "teacher":
        total = config.run_epochs
        progress = min(epoch, total) / total
        return config.eta_min + (base - config.eta_min) * (1 + math.cos(math.pi * progress)) / 2
    return base * config.gamma ** (epoch // config.run_step_epochs)


def _held(config: TrainConfig, epoch: int) -> bool:
    """With a time budget the rates stay at their initial values until the run's length is estimated; the
    plan applies from the epoch after the one it was made in."""
    if config.minutes is None:
        return False
    return config.plan is None or epoch < config.plan["from_epoch"]


def apply(config: TrainConfig, optimizers: dict, epoch: int) -> None:
    for network, optimizer in optimizers.items():
        rate = learning_rate(config, network, epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate
