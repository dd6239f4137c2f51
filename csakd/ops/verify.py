"""The equivalence check that gates "auto": before a fast implementation of an op runs on a device for the first
time, it computes a small forward and backward at the model's own widths next to the reference, and "auto"
uses it only if it agrees.

Bound: for each output, and for all the gradients together, the relative L2 error against the reference evaluated
in float64 on the same (rounded) inputs must not exceed max(4 x the reference's own error in that dtype, 8 unit
roundoffs of the dtype), and a gradient must be None exactly where the reference's is. An exception counts as a
failure.

Verdicts are cached in memory and on disk, keyed by op, implementation, device name, dtype, the torch / Triton /
csakd versions and the widths, in `cache_file()` (the user's cache folder, or CSAKD_CACHE_DIR). Delete that file,
or run `csakd info --reset`, to check again; `csakd info --verify` runs the checks now.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import losses
from ..models.blocks import clra_reference
from ..models.csa import PARAM_NAMES, csa_reference

CACHE_NAME = "backend-verdicts.json"
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11,
                 torch.float64: 2.0 ** -53}
REF_FACTOR, ROUNDOFF_FACTOR = 4.0, 8.0
SIDE = 8  # pixels per side of the check's images: small, but every kernel's tiles and edges are exercised


@dataclass(frozen=True)
class Widths:
    """The sizes a model runs the ops at: CLRB (nf, gc, each groups value), CSA (nf, attn_dim, heads, mode),
    losses (bands)."""

    nf: int = 86
    gc: int = 43
    groups: tuple[int, ...] = (1, 43)
    attn_dim: int = 64
    heads: int = 4
    csa: str = "attention"
    bands: int = 172

    @classmethod
    def of(cls, config=None) -> "Widths":
        if config is None:
            return cls()
        depths = dict(zip(("hm", "mh", "h", "m"), config.depths))
        groups = sorted({config.h_groups if name == "h" else 1 for name, d in depths.items() if d > 0} or {1})
        return cls(config.nf, config.gc, tuple(groups), config.attn_dim, config.heads, config.csa, config.bands)

    def for_op(self, op: str) -> str:
        if op == "clrb":
            return f"nf={self.nf},gc={self.gc},groups={'/'.join(map(str, self.groups))}"
        if op == "csa":
            return f"nf={self.nf},attn_dim={self.attn_dim},heads={self.heads},mode={self.csa}"
        return f"bands={self.bands}"


# ---- cache ---------------------------------------------------------------------------------------------------

_MEMORY: dict[str, dict] = {}
_WARNED: set[str] = set()


def clear_memory() -> None:
    _MEMORY.clear()
    _WARNED.clear()


def cache_file() -> Path:
    folder = os.environ.get("CSAKD_CACHE_DIR")
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("csakd")
    return Path(folder) / CACHE_NAME


def read_verdicts() -> dict[str, dict]:
    """The verdicts on disk ({} when there are none or the file is unreadable)."""
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, verdict: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**read_verdicts(), key: verdict}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".verdicts-", delete=False) as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(f.name, path)
    except OSError as error:  # a read-only cache folder: the verdict still holds for this process
        warnings.warn(f"csakd: could not save the backend check in {path} ({error})", stacklevel=3)


def reset() -> Path:
    """Deletes the cached verdicts (the next "auto" on each device checks again); returns the file's path."""
    from . import backend

    backend.clear_cache()  # the built backends and the verdicts in memory
    path = cache_file()
    path.unlink(missing_ok=True)
    return path


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{device.type}:{platform.processor() or platform.machine()}"


def _versions() -> str:
    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return f"torch {torch.__version__}, triton {triton_version}, csakd {__version__}"


def verdict_key(op: str, impl: str, device: torch.device, dtype: torch.dtype, widths: Widths) -> str:
    return " | ".join((op, impl, device_name(device), str(dtype).replace("torch.", ""), _versions(),
                       widths.for_op(op)))


# ---- the gate ------------------------------------------------------------------------------------------------

def passes(op: str, impl: str, loader: Callable[[], dict], device: torch.device, dtype: torch.dtype,
           widths: Widths) -> bool:
    """Whether `impl` of `op` may run under "auto" (checking it once per key, warning once if it fails)."""
    key = verdict_key(op, impl, device, dtype, widths)
    verdict = _MEMORY.get(key) or read_verdicts().get(key)
    if verdict is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return False  # no check inside a CUDA graph capture: the reference this time, checked next time
        verdict = run_check(op, loader, device, dtype, widths)
        _store(key, verdict)
    _MEMORY[key] = verdict
    if not verdict["ok"] and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"csakd: backend 'auto' does not use the {impl} {op} op on {device_name(device)} "
                      f"({str(dtype).replace('torch.', '')}): {verdict['error']}; using the reference path for "
                      f"it. An explicit backend={impl!r} still runs it.", RuntimeWarning, stacklevel=2)
    return bool(verdict["ok"])


def run_check(op: str, loader: Callable[[], dict], device: torch.device, dtype: torch.dtype,
              widths: Widths) -> dict:
    """{"ok", "error", "worst" (the largest error / bound ratio), "seconds", "checked"}."""
    start = time.perf_counter()
    worst = 0.0
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            worst = CHECKS[op](loader(), device, dtype, widths)
        error = None
    except Exception as exc:  # noqa: BLE001 - any failure of a fast kernel disqualifies it
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return {"ok": error is None, "error": error, "worst": worst, "seconds": round(time.perf_counter() - start, 3),
            "checked": time.strftime("%Y-%m-%dT%H:%M:%S")}


class Mismatch(AssertionError):
    pass


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    diff = (got.double() - want).norm().item()
    return diff / max(want.norm().item(), 1e-30)


def _compare(names, fast, in_dtype, exact, dtype, n_outputs: int) -> float:
    """The largest error / bound ratio over the first `n_outputs` results (each on its own) and the gradients
    that follow them (together: a single weight's gradient can be a sum of cancelling terms whose relative
    error in bf16 is large for any evaluation order, the reference's included). Mismatch when out of bound."""
    for name, got, want in zip(names, fast, exact):
        if (got is None) != (want is None):
            raise Mismatch(f"{name}: the reference gives {'no' if want is None else 'a'} gradient, the fast op "
                           f"{'none' if got is None else 'one'}")
        if want is not None and got.shape != want.shape:
            raise Mismatch(f"{name}: shape {tuple(got.shape)}, the reference's {tuple(want.shape)}")
    groups = [([i], names[i]) for i in range(n_outputs)]
    grads = [i for i in range(n_outputs, len(names)) if exact[i] is not None]
    if grads:
        groups.append((grads, "gradients"))
    worst, floor = 0.0, ROUNDOFF_FACTOR * UNIT_ROUNDOFF[dtype]
    for indices, name in groups:
        def flat(results):
            return torch.cat([results[i].double().flatten() for i in indices])

        want = flat(exact)
        err, bound = _rel(flat(fast), want), max(REF_FACTOR * _rel(flat(in_dtype), want), floor)
        if not math.isfinite(err) or err > bound:
            worst_tensor = max(indices, key=lambda i: _rel(fast[i], exact[i]))
            raise Mismatch(f"{name} relative error {err:.3g} > bound {bound:.3g} (worst: {names[worst_tensor]})")
        worst = max(worst, err / bound)
    return worst


def _random(generator, *shape, scale=1.0):
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def _run(fn, inputs: list, grad_of: list[int], upstream, device, dtype, keep_fp32=()):
    """fn(*tensors) on the inputs cast to `dtype` (indices in keep_fp32 stay float64 -> fp32 targets) with the
    gradient of Σ out·upstream w.r.t. inputs[grad_of]; returns [out, *grads]."""
    tensors = []
    for i, t in enumerate(inputs):
        cast = torch.float32 if (i in keep_fp32 and dtype != torch.float64) else dtype
        t = t.to(device=device, dtype=cast).detach()
        tensors.append(t.requires_grad_(i in grad_of))
    out = fn(*tensors)
    outs = out if isinstance(out, (tuple, list)) else [out]
    total = sum((o.double() * u.to(device)).sum() for o, u in zip(outs, upstream))
    grads = torch.autograd.grad(total, [tensors[i] for i in grad_of], allow_unused=True)
    return [*outs, *grads]


def _three_ways(fast_fn, ref_fn, inputs, grad_of, upstream, device, dtype, keep_fp32=()):
    rounded = [t.to(torch.float32 if (i in keep_fp32) else dtype).double() for i, t in enumerate(inputs)]
    fast = _run(fast_fn, inputs, grad_of, upstream, device, dtype, keep_fp32)
    in_dtype = _run(ref_fn, inputs, grad_of, upstream, device, dtype, keep_fp32)
    exact = _run(ref_fn, rounded, grad_of, upstream, device, torch.float64)
    return fast, in_dtype, exact


def check_clrb(impl: dict, device, dtype, widths: Widths) -> float:
    g = torch.Generator().manual_seed(1)
    nf, gc, worst = widths.nf, widths.gc, 0.0
    for groups in widths.groups:
        ws, bs = [], []
        for _ in range(3):
            for k in range(5):
                cin, cout = nf + k * gc, gc if k < 4 else nf
                ws.append(_random(g, cout, cin // groups, 3, 3, scale=(9 * cin / groups) ** -0.5))
                bs.append(_random(g, cout, scale=0.1))
        x = _random(g, 2, nf, SIDE, SIDE)
        inputs = [x, *ws, *bs]

        def split(x, *p):
            return x, [(list(p[5 * i:5 * i + 5]), list(p[15 + 5 * i:15 + 5 * i + 5])) for i in range(3)]

        upstream = [_random(g, 2, nf, SIDE, SIDE)]
        results = _three_ways(lambda *t: impl["clra"](*split(*t), groups),
                              lambda *t: clra_reference(*split(*t), groups),
                              inputs, list(range(len(inputs))), upstream, device, dtype)
        names = ["output", "grad x"] + [f"grad w{i}" for i in range(15)] + [f"grad b{i}" for i in range(15)]
        worst = max(worst, _compare([f"groups={groups} {n}" for n in names], *results, dtype, 1))
    return worst


def check_csa(impl: dict, device, dtype, widths: Widths) -> float:
    if widths.csa == "sum":
        return 0.0  # no CSA op runs in mode "sum"
    g = torch.Generator().manual_seed(2)
    nf, r = widths.nf, widths.attn_dim
    shapes = {"wq": (r, nf), "bq": (r,), "wk": (r, nf), "bk": (r,), "wv": (r, nf), "bv": (r,), "wo": (nf, r),
              "bo": (nf,), "wg": (4, 4 * nf), "bg": (4,)}
    params = [_random(g, *shapes[n], scale=shapes[n][-1] ** -0.5 if len(shapes[n]) == 2 else 0.1)
              for n in PARAM_NAMES]
    xs = [_random(g, 2, nf, SIDE, SIDE) for _ in range(4)]

    def call(fn):
        return lambda *t: fn(*t[:4], dict(zip(PARAM_NAMES, t[4:])), widths.csa, widths.heads)

    results = _three_ways(call(impl["csa"]), call(csa_reference), xs + params, list(range(14)),
                          [_random(g, 2, nf, SIDE, SIDE)], device, dtype)
    names = ["output"] + [f"grad x{i}" for i in range(1, 5)] + [f"grad {n}" for n in PARAM_NAMES]
    return _compare(names, *results, dtype, 1)


OBJECTIVE_TERMS = {"teacher": ("rec", "beba", "sam", "total"),
                   "student": ("rec", "beba", "sam", "kd", "teacher_rec", "total")}


def check_losses(impl: dict, device, dtype, widths: Widths) -> float:
    g = torch.Generator().manual_seed(3)
    shape, fused = (2, widths.bands, SIDE, SIDE), (2, widths.nf, SIDE, SIDE)
    target = torch.rand(*shape, generator=g, dtype=torch.float64)
    inputs = [target + _random(g, *shape, scale=0.1), target, target + _random(g, *shape, scale=0.1),
              _random(g, *fused), _random(g, *fused)]  # pred, target, teacher pred, student/teacher features
    reference = {"teacher_objective": losses.teacher_objective, "student_objective": losses.student_objective}
    weights = losses.LossWeights()
    worst = 0.0
    for kind, terms in OBJECTIVE_TERMS.items():
        def call(objectives, kind=kind, terms=terms):
            def run(pred, target, teacher, s_fused, t_fused):
                args = (pred, target) if kind == "teacher" else (pred, target, teacher, s_fused, t_fused)
                values = objectives[f"{kind}_objective"](*args, weights)
                return [values[t] for t in terms]
            return run

        upstream = [torch.tensor(1.0 + i, dtype=torch.float64) for i in range(len(terms))]
        grad_of = [0, 3] if kind == "student" else [0]
        results = _three_ways(call(impl), call(reference), inputs, grad_of, upstream, device, dtype, keep_fp32=(1,))
        names = [f"{kind} {t}" for t in terms] + [f"{kind} grad pred", f"{kind} grad features"][:len(grad_of)]
        worst = max(worst, _compare(names, *results, dtype, len(terms)))
    return worst


CHECKS = {"clrb": check_clrb, "csa": check_csa, "losses": check_losses}


def verify_now(device: torch.device | str, dtype: torch.dtype = torch.float32, config=None) -> list[dict]:
    """Runs every fast implementation's check on `device` now (ignoring cached verdicts) and stores the results:
    [{"op", "impl", "key", **verdict}] (an unavailable implementation is reported with its reason)."""
    from . import backend

    device = torch.device(device)
    widths = Widths.of(config)
    rows = []
    for op, impls in backend.FAST_IMPLS.items():
        for impl, (loader, missing_fn) in impls.items():
            key = verdict_key(op, impl, device, dtype, widths)
            missing = missing_fn(device.type, dtype)
            if missing is not None:
                rows.append({"op": op, "impl": impl, "key": key, "ok": None, "error": f"unavailable: {missing}"})
                continue
            verdict = run_check(op, loader, device, dtype, widths)
            _store(key, verdict)
            _MEMORY[key] = verdict
            rows.append({"op": op, "impl": impl, "key": key, **verdict})
    backend._BUILT.clear()  # backends built before follow the new verdicts
    return rows


__all__ = ["Widths", "cache_file", "check_clrb", "check_csa", "check_losses", "passes", "read_verdicts", "reset",
           "run_check", "verdict_key", "verify_now"]
