"""Training, evaluation and fusion: online distillation (docs/data.md), resumable runs, evaluation with the
paper's metrics and baselines, and tiled fusion of scenes of any size."""
from .config import TrainConfig
from .trainer import NonFiniteLoss, Trainer

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer"]
