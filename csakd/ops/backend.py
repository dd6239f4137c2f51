"""Backend selection. Models call `resolve(backend, example_tensor)` once per forward and use the returned
object's `clra` and `csa` callables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import losses

BACKENDS = ("reference", "triton", "cuda", "auto")
_process_default: str | None = None


def _check_name(name: str, arg: str = "backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{arg}: expected one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Process-wide default backend for models built with backend=None (overrides CSAKD_BACKEND)."""
    global _process_default
    _process_default = _check_name(name)


def get_backend() -> str:
    if _process_default is not None:
        return _process_default
    return _check_name(os.environ.get("CSAKD_BACKEND", "auto"), "CSAKD_BACKEND")


@dataclass(frozen=True)
class Backend:
    """Implementations of the three fast-path operations: `clra(module, x)`, `csa(module, x1, x2, x3, x4)`,
    and the two training objectives with the signatures of `csakd.losses`."""

    name: str
    clra: Callable
    csa: Callable
    teacher_objective: Callable
    student_objective: Callable


def _call_module(module, *args):
    return module(*args)


REFERENCE = Backend("reference", clra=_call_module, csa=_call_module,
                    teacher_objective=losses.teacher_objective, student_objective=losses.student_objective)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    return ["reference"]


def resolve_name(backend: str | None, device: torch.device | str) -> str:
    """The concrete backend that `backend` (None: the process default) means on `device`."""
    name = _check_name(backend) if backend is not None else get_backend()
    return "reference" if name == "auto" else name


def resolve(backend: str | None, example: torch.Tensor) -> Backend:
    name = _check_name(backend) if backend is not None else get_backend()
    if name in ("reference", "auto"):
        return REFERENCE
    raise ValueError(f"backend: {name!r} is not available in this build (no fast kernels are registered yet); "
                     f"use 'reference' or 'auto'")
