"""Helpers of the training tests: tiny configurations and subprocess runs (small enough that a step takes
milliseconds)."""
import os
import subprocess
import sys
from pathlib import Path

from csakd.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY_BANDS = 16  # the fewest evenly spread AVIRIS bands that cover every Landsat TM 1-4 range


def tiny_config(**changes) -> TrainConfig:
    base = dict(teacher="teacher_tiny", student="student_tiny", bands=TINY_BANDS, msi_bands=4, epochs=2,
                batch_size=2, crop=16, lr_teacher=1e-3, lr_student=1e-3, val_every=1, progress=False,
                device="cpu", backend="reference", precision="fp32")
    return TrainConfig(**{**base, **changes})


def run_python(args, timeout=180, env=None, **kwargs) -> subprocess.CompletedProcess:
    """`python args...` from the repository root with one torch thread (reproducible, and two such processes
    share the two cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


TINY_TRAIN_ARGS = ["--scenes", "4", "--val-scenes", "1", "--scene-size", "32", "--bands", str(TINY_BANDS),
                   "--teacher", "teacher_tiny", "--student", "student_tiny", "--batch-size", "2", "--crop", "16",
                   "--lr-teacher", "1e-3", "--lr-student", "1e-3", "--device", "cpu", "--backend", "reference",
                   "--precision", "fp32", "--no-progress"]
