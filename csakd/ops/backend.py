"""Backend selection: the one place that decides which implementation runs the CLRAs, the CSA fusion and the
training objectives. Models call `resolve(backend, example_tensor)` on each forward (cached per device type
and dtype) and use the returned object's callables.

    reference  plain PyTorch (csakd.models, csakd.losses): the oracle, runs everywhere
    triton     fused Triton CSA and losses (csakd.kernels); CLRAs stay on the reference path
    cuda       the C++/CUDA CLRB extension (csakd._C) for the CLRAs, plus the Triton CSA and losses on a GPU
    auto       the fastest available for the device and dtype (logged once with the reason)

On a CPU, "triton" runs the kernels in the Triton interpreter (slow; for tests) and only when
TRITON_INTERPRET=1 is set; "cuda" runs the extension's C++ CPU implementation.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import losses
from ..models.blocks import clra_reference

log = logging.getLogger("csakd.ops")

BACKENDS = ("reference", "triton", "cuda", "auto")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
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
    and the two training objectives with the signatures of `csakd.losses`.

    The prepared inference path (`DTSNet.prepare`) runs on weights that are not module parameters and uses the
    functional forms: `clra_fn(x, [(weights, biases)] * 3, groups)`, and `csa_fn(x1, x2, x3, x4, params, mode,
    heads)` for a fused CSA kernel, None where the backend has none (that path then uses the folded PyTorch
    formulation `csakd.models.csa.csa_folded`)."""

    name: str
    clra: Callable
    csa: Callable
    teacher_objective: Callable
    student_objective: Callable
    clra_fn: Callable = clra_reference
    csa_fn: Callable | None = None


def _call_module(module, *args):
    return module(*args)


REFERENCE = Backend("reference", clra=_call_module, csa=_call_module,
                    teacher_objective=losses.teacher_objective, student_objective=losses.student_objective)


# ---- availability: None when usable, else the reason -------------------------------------------------------

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_missing(device_type: str, dtype: torch.dtype) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install triton)"
    if device_type != "cuda" and not _interpreting():
        return (f"the Triton kernels need a CUDA GPU (device is {device_type}; set TRITON_INTERPRET=1 before "
                f"importing csakd to run them slowly in the interpreter)")
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if dtype not in TRITON_DTYPES:
        return f"the Triton kernels take float32, bfloat16 or float16, not {dtype}"
    return None


def extension_missing(device_type: str, dtype: torch.dtype) -> str | None:
    from . import clrb

    if clrb.LOAD_ERROR is not None:
        return clrb.LOAD_ERROR
    if not clrb.is_available(device_type):
        return (f"the C++ extension was built without {device_type.upper()} support "
                f"(rebuild on a machine with CUDA, CSAKD_BUILD_CUDA=1)")
    return None


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    device_type = torch.device(device).type
    names = ["reference"]
    if triton_missing(device_type, dtype) is None:
        names.append("triton")
    if extension_missing(device_type, dtype) is None:
        names.append("cuda")
    return names


# ---- construction --------------------------------------------------------------------------------------------

def _triton_parts():
    from ..kernels import csa as csa_kernels
    from ..kernels import losses as loss_kernels

    def csa(module, x1, x2, x3, x4):
        if module.mode == "sum":
            return module(x1, x2, x3, x4)
        return csa_kernels.csa_fuse(x1, x2, x3, x4, module.params(), module.mode, module.heads)

    return dict(csa=csa, csa_fn=csa_kernels.csa_fuse, teacher_objective=loss_kernels.teacher_objective,
                student_objective=loss_kernels.student_objective)


def _extension_clra():
    from . import clrb

    return dict(clra=clrb.clra_module, clra_fn=clrb.clra)


def _auto_choice(device_type: str, dtype: torch.dtype) -> tuple[str, str]:
    """(backend, reason) that "auto" means for this device and dtype."""
    no_ext = extension_missing(device_type, dtype)
    if device_type == "cuda":
        no_triton = triton_missing(device_type, dtype)
        if no_ext is None:
            return "cuda", "CUDA CLRB extension" + ("" if no_triton else " with the Triton CSA and losses")
        if no_triton is None:
            return "triton", f"Triton CSA and losses; CLRAs on the reference path because {no_ext}"
        return "reference", f"no fast path: {no_ext}; {no_triton}"
    # On a CPU the extension's C++ op calls the same ATen convolutions as the eager path (it only saves the
    # concatenations), so "auto" keeps the reference path there; ask for "cuda" to use it.
    return "reference", "plain PyTorch on the CPU" + (f" ({no_ext})" if no_ext else "")


# Built backends by (name, device type, dtype, interpreting). A plain dict rather than functools.lru_cache:
# torch.compile traces the model's forward, which resolves its backend, and dynamo guards a dict lookup but
# only warns about (and bypasses) an lru_cache wrapper.
_BUILT: dict[tuple, Backend] = {}


def clear_cache() -> None:
    """Forget the built backends (after the environment changed, e.g. in tests)."""
    _BUILT.clear()


def _build(name: str, device_type: str, dtype: torch.dtype, interpreting: bool) -> Backend:
    key = (name, device_type, dtype, interpreting)
    built = _BUILT.get(key)
    if built is None:
        built = _BUILT[key] = _make(name, device_type, dtype)
    return built


def _make(name: str, device_type: str, dtype: torch.dtype) -> Backend:
    if name == "auto":
        name, reason = _auto_choice(device_type, dtype)
        log.info("csakd backend 'auto' on %s/%s: %s (%s)", device_type, str(dtype).replace("torch.", ""),
                 name, reason)
    if name == "reference":
        return REFERENCE
    if name == "triton":
        missing = triton_missing(device_type, dtype)
        if missing:
            raise ValueError(f"backend: 'triton' is not available: {missing}")
        return Backend("triton", clra=_call_module, **_triton_parts())
    missing = extension_missing(device_type, dtype)
    if missing:
        raise ValueError(f"backend: 'cuda' is not available: {missing}")
    parts = dict(csa=_call_module, teacher_objective=losses.teacher_objective,
                 student_objective=losses.student_objective)
    if triton_missing(device_type, dtype) is None:
        parts = _triton_parts()
    return Backend("cuda", **_extension_clra(), **parts)


def resolve(backend: str | None, example: torch.Tensor) -> Backend:
    """The implementation set for `backend` (None: the process default) on `example`'s device and dtype."""
    name = _check_name(backend) if backend is not None else get_backend()
    return _build(name, example.device.type, example.dtype, _interpreting())


def resolve_name(backend: str | None, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend that `backend` (None: the process default) means on `device`."""
    name = _check_name(backend) if backend is not None else get_backend()
    if name == "auto":
        return _auto_choice(torch.device(device).type, dtype)[0]
    return name
