"""Backend selection: the one place that decides which implementation runs the CLRAs, the CSA fusion and the
training objectives. Models call `resolve(backend, example_tensor, config)` on each forward (cached) and use
the returned object's functions; every path (module forward, prepared inference, tiled fusion, training)
goes through them.

    reference  plain PyTorch (csakd.models, csakd.losses): the oracle, runs everywhere
    triton     fused Triton CSA and losses (csakd.kernels); CLRAs stay on the reference path
    cuda       the C++/CUDA CLRB extension (csakd._C) for the CLRAs, plus the Triton CSA and losses on a GPU
    auto       per operation, the fast implementation for the device once it has passed its equivalence check
               against the reference there (`csakd.ops.verify`), else the reference

An explicit "triton" or "cuda" runs what was asked without the check. On a CPU, "triton" runs the kernels in
the Triton interpreter (slow; for tests) and only when TRITON_INTERPRET=1 was set before importing csakd; "cuda"
runs the extension's C++ CPU implementation.

Autocast: the fast ops cast their inputs here, at the dispatch point, to the autocast dtype of an enabled
`torch.autocast` context, as autocast does for the convolutions and matmuls of the reference path.
(`torch.library.register_autocast` would fix one cast dtype per device type, not follow the context's
bf16/fp16, and does not reach the weight lists of the CLRB op.) The losses need no cast: the fused kernels,
like the reference losses under autocast, accumulate in fp32 whatever their inputs' dtype.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import losses
from ..models.blocks import clra_reference
from ..models.csa import csa_reference

log = logging.getLogger("csakd.ops")

BACKENDS = ("reference", "triton", "cuda", "auto")
OPS = ("clrb", "csa", "losses")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_process_default: str | None = None


def check_name(name: str, arg: str = "backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{arg}: expected one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Process-wide default backend for models built with backend=None (overrides CSAKD_BACKEND)."""
    global _process_default
    _process_default = check_name(name)


def get_backend() -> str:
    if _process_default is not None:
        return _process_default
    return check_name(os.environ.get("CSAKD_BACKEND", "auto"), "CSAKD_BACKEND")


@dataclass(frozen=True)
class Backend:
    """The functions of one backend:

        clra(x, clrb_params, groups)                           clrb_params: [(weights, biases)] * 3
        csa(x1, x2, x3, x4, params, mode, heads, attention)     params as `CSAFusion.params()`
        teacher_objective, student_objective                   the signatures of `csakd.losses`

    `parts` names the implementation of each operation ("clrb", "csa", "losses")."""

    name: str
    clra: Callable = clra_reference
    csa: Callable = csa_reference
    teacher_objective: Callable = losses.teacher_objective
    student_objective: Callable = losses.student_objective
    parts: dict = field(default_factory=lambda: dict.fromkeys(OPS, "reference"))


REFERENCE = Backend("reference")


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


# ---- the fast implementations of each op, by the backend name that provides them ----------------------------

def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype an enabled autocast context would compute `x`'s device's convolutions in, else None."""
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _extension_clra():
    from . import clrb

    def clra(x, clrb_params, groups):
        dtype = autocast_dtype(x)
        if dtype is None:
            return clrb.clra(x, clrb_params, groups)
        cast = [([w.to(dtype) for w in ws], [b.to(dtype) for b in bs]) for ws, bs in clrb_params]
        with torch.autocast(x.device.type, enabled=False):
            return clrb.clra(x.to(dtype), cast, groups)

    return clra


def _triton_csa():
    from ..kernels import csa as csa_kernels

    def csa(x1, x2, x3, x4, params, mode="attention", heads=4, attention=None):
        dtype = autocast_dtype(x1)
        if dtype is not None:
            x1, x2, x3, x4 = (x.to(dtype) for x in (x1, x2, x3, x4))
        return csa_kernels.csa_fuse(x1, x2, x3, x4, params, mode, heads, attention=attention)

    return csa


def _triton_losses():
    from ..kernels import losses as loss_kernels

    return dict(teacher_objective=loss_kernels.teacher_objective, student_objective=loss_kernels.student_objective)


# op -> {backend name: (loader returning the Backend fields for that op, availability check)}. Tests add
# deliberately broken entries here to check that "auto" never chooses them.
FAST_IMPLS: dict[str, dict[str, tuple[Callable[[], dict], Callable[[str, torch.dtype], str | None]]]] = {
    "clrb": {"cuda": (lambda: {"clra": _extension_clra()}, lambda *a: extension_missing(*a))},
    "csa": {"triton": (lambda: {"csa": _triton_csa()}, lambda *a: triton_missing(*a))},
    "losses": {"triton": (_triton_losses, lambda *a: triton_missing(*a))},
}
# What each explicit backend name runs for each op ("cuda" adds the Triton CSA and losses where they run).
EXPLICIT = {"triton": {"csa": "triton", "losses": "triton"},
            "cuda": {"clrb": "cuda", "csa": "triton", "losses": "triton"}}


def auto_candidates(device_type: str) -> dict[str, list[str]]:
    """The fast implementations "auto" considers per op on a device type. On a CPU none: the extension's C++ op
    calls the same ATen convolutions as the eager path (it only saves the concatenations) and Triton runs only
    in its interpreter there; ask for "cuda" to use it."""
    if device_type == "cuda":
        return {"clrb": ["cuda"], "csa": ["triton"], "losses": ["triton"]}
    return {}


# ---- construction --------------------------------------------------------------------------------------------

# Built backends by (name, device, dtype, interpreting, widths). A plain dict rather than functools.lru_cache:
# torch.compile traces the model's forward, which resolves its backend, and dynamo guards a dict lookup but
# only warns about (and bypasses) an lru_cache wrapper.
_BUILT: dict[tuple, Backend] = {}


def clear_cache() -> None:
    """Forget the built backends and the in-memory verdicts (after the environment changed, e.g. in tests)."""
    from . import verify

    _BUILT.clear()
    verify.clear_memory()


def _compose(name: str, chosen: dict[str, str]) -> Backend:
    fields, parts = {}, dict.fromkeys(OPS, "reference")
    for op, impl in chosen.items():
        fields.update(FAST_IMPLS[op][impl][0]())
        parts[op] = impl
    return Backend(name, parts=parts, **fields)


def _explicit(name: str, device_type: str, dtype: torch.dtype) -> Backend:
    chosen = {}
    for op, impl in EXPLICIT[name].items():
        missing = FAST_IMPLS[op][impl][1](device_type, dtype)
        if missing is None:
            chosen[op] = impl
        elif op == "clrb" or name == "triton":  # the backend's own op must run; "cuda"'s Triton parts are extras
            raise ValueError(f"backend: {name!r} is not available: {missing}")
    return _compose(name, chosen)


def _auto(device: torch.device, dtype: torch.dtype, widths) -> Backend:
    from . import verify

    chosen, notes = {}, []
    for op, impls in auto_candidates(device.type).items():
        for impl in impls:
            loader, missing_fn = FAST_IMPLS[op][impl]
            missing = missing_fn(device.type, dtype)
            if missing is not None:
                notes.append(f"{op}: {impl} unavailable ({missing})")
                continue
            if verify.passes(op, impl, loader, device, dtype, widths):
                chosen[op] = impl
                break
    name = "cuda" if "clrb" in chosen else "triton" if chosen else "reference"
    backend = _compose(name, chosen)
    log.info("csakd backend 'auto' on %s/%s: %s", device, str(dtype).replace("torch.", ""),
             ", ".join(f"{op}={impl}" for op, impl in backend.parts.items()) + "".join(f"; {n}" for n in notes))
    return backend


@torch.compiler.disable  # a first resolution may run the equivalence checks: eagerly, never traced
def _build(name: str, device: torch.device, dtype: torch.dtype, widths) -> Backend:
    if name == "reference":
        return REFERENCE
    if name == "auto":
        return _auto(device, dtype, widths)
    return _explicit(name, device.type, dtype)


def resolve(backend: str | None, example: torch.Tensor, config=None) -> Backend:
    """The implementation set for `backend` (None: the process default) on `example`'s device and dtype.
    `config` (a ModelConfig) gives the widths at which "auto" checks the fast ops (default: the paper's)."""
    name = check_name(backend) if backend is not None else get_backend()
    device = example.device
    widths = None
    if name == "auto":
        from .verify import Widths

        widths = Widths.of(config)
    key = (name, device, example.dtype, _interpreting(), widths)
    built = _BUILT.get(key)
    if built is None:
        built = _BUILT[key] = _build(name, device, example.dtype, widths)
    return built


def resolve_name(backend: str | None, device: torch.device | str, dtype: torch.dtype = torch.float32,
                 config=None) -> str:
    """The concrete backend that `backend` (None: the process default) means on `device`."""
    return resolve(backend, torch.empty(0, device=device, dtype=dtype), config).name
