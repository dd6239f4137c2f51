"""Training configuration: one dataclass with the SPEC §4 defaults, validated on construction and stored as
JSON in every run directory (the resolved form, after the command line and the data have filled it in)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..losses import LossWeights
from ..models.config import CSA_MODES, PRESETS

MODES = ("online", "teacher", "student", "offline")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NOISE_TARGETS = ("lr", "msi", "both")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults follow the paper and the released scripts (SPEC §4).

    mode "online": teacher and student step together on each batch (online distillation); "teacher" or
    "student": one network alone with the reconstruction objective; "offline": the student distils a frozen
    teacher loaded from `teacher_checkpoint`.
    `batch_size` is the global batch: under torchrun each of N processes takes batch_size / N samples.
    `data` records where the training and validation data come from (see `csakd.train.data`), so that a run
    can be resumed from its folder alone.
    Schedulers step once per epoch: the teacher's cosine reaches `eta_min` after `epochs`, the student's
    StepLR multiplies by `gamma` every `step_epochs`. `snr_db` None trains without input noise.
    """

    mode: str = "online"
    teacher: str = "teacher"
    student: str = "student"
    csa: str = "attention"
    bands: int = 172
    msi_bands: int = 4
    scale: int = 4
    epochs: int = 600
    batch_size: int = 4
    crop: int = 128
    augment: bool = True
    lr_teacher: float = 1e-4
    lr_student: float = 1e-4
    weight_decay: float = 0.0
    eta_min: float = 1e-10
    step_epochs: int = 100
    gamma: float = 0.9
    snr_db: float | None = 35.0
    noise_on: str = "lr"
    grad_clip: float | None = None
    precision: str = "auto"
    backend: str = "auto"
    device: str = "auto"
    seed: int = 1029
    val_every: int = 2
    ckpt_every: int = 0
    max_steps: int | None = None
    teacher_checkpoint: str | None = None
    tensorboard: bool = False
    progress: bool = True
    data: dict = field(default_factory=dict)
    losses: dict = field(default_factory=lambda: dataclasses.asdict(LossWeights()))

    def __post_init__(self):
        _choice("mode", self.mode, MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("noise_on", self.noise_on, NOISE_TARGETS)
        _choice("csa", self.csa, CSA_MODES)
        for key in ("teacher", "student"):
            _choice(key, getattr(self, key), tuple(sorted(PRESETS)))
        for key in ("bands", "msi_bands", "scale", "epochs", "batch_size", "crop", "step_epochs", "val_every"):
            _positive_int(key, getattr(self, key))
        for key in ("ckpt_every", "seed"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        if self.crop % self.scale:
            raise ValueError(f"crop: expected a multiple of scale={self.scale}, got {self.crop}")
        for key in ("lr_teacher", "lr_student", "gamma"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"{key}: expected a positive number, got {getattr(self, key)!r}")
        for key in ("weight_decay", "eta_min"):
            if not float(getattr(self, key)) >= 0:
                raise ValueError(f"{key}: expected a non-negative number, got {getattr(self, key)!r}")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise ValueError(f"grad_clip: expected a positive number or None, got {self.grad_clip!r}")
        if self.mode == "offline" and not self.teacher_checkpoint:
            raise ValueError("teacher_checkpoint: expected a checkpoint path in mode 'offline', got None")
        self.loss_weights()  # validates the loss settings

    @property
    def trains_teacher(self) -> bool:
        return self.mode in ("online", "teacher")

    @property
    def trains_student(self) -> bool:
        return self.mode in ("online", "student", "offline")

    @property
    def distils(self) -> bool:
        return self.mode in ("online", "offline")

    def loss_weights(self) -> LossWeights:
        known = {f.name for f in dataclasses.fields(LossWeights)}
        unknown = set(self.losses) - known
        if unknown:
            raise ValueError(f"losses: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return LossWeights(**self.losses)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path) -> None:
        from .checkpoint import atomic_write_text

        # Key order is kept: the scene split of generated data follows the order of its fractions.
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: no such file {str(path)!r}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config: {str(path)!r} is not valid JSON ({exc})") from None

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
