"""Fused CSA attention-and-gating (SPEC §2, §7.1): `csa_fuse`, forward and backward in Triton, registered as
the `torch.ops.csakd.csa_fuse` / `csa_fuse_backward` custom ops with fake implementations and autograd, so
`torch.compile` traces it without graph breaks. `csakd.models.csa.csa_reference` is the oracle; the kernels
and the algebra they use are described in `csa_kernels`.

Inputs: x1..x4 of one shape (B, C, H, W), one dtype (fp32, bf16 or fp16), C <= 128, any B, H, W, NCHW or
channels-last (if all four share one of those layouts it is used as is, otherwise all are made contiguous;
the output and the input grads take that layout). The weights may have any floating dtype: they are used in
fp32 and their grads come back in their own dtype. Accumulation is fp32; fp32 inputs use exact-fp32 products
(no TF32). In "reference" mode wq, bq, wk, bk get zero grads (they do not enter the output). Mode "sum" is
plain `x1 + x2 + x3 + x4` in PyTorch (no weights, nothing to fuse). Double backward is not supported.
The `csakd::csa_fuse` op returns (out, stats): stats (B, 2C² + 3C) fp32 are the per-image Gram matrix, M,
channel sums and c that the backward reuses.

Without CUDA the kernels run in the Triton interpreter (set here before Triton is imported), on CPU tensors.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton import knobs  # noqa: E402

from csakd._validate import check_float_tensor, check_same_shape  # noqa: E402
from csakd.models.csa import PARAM_NAMES  # noqa: E402

from . import csa_kernels as K  # noqa: E402

MODES = ("attention", "reference", "sum")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_CHANNELS = 128  # nf and attn_dim: one [CP, CP] fp32 tile per program
_INTERPRETED = knobs.runtime.interpret
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_MAX_NUMEL = 2 ** 31 - 1  # the kernels index with int32

# Pixel chunks: each program of a per-pixel kernel loops over one chunk of one image. Reductions write one
# partial per chunk, so they get about one program per SM; the others get several to hide latency.
_CHUNK_QUANTUM = 256      # GPU chunks are multiples of the largest BLOCK
_REDUCE_PROGRAMS_PER_SM = 1   # Gram passes: a C x C partial each
_GRAD_PROGRAMS_PER_SM = 2     # gradient pass: a 4 x 4C partial each
_MAP_PROGRAMS_PER_SM = 4
# The mix kernels (one program per image, [CP, CP] fp32 "ieee" products unrolled per thread): 16 warps spread
# them thinly. At CP = 128 for sm_90 that cuts the first call's compile from 143 s (_mix_kernel) and 516 s
# (_mix_grad_kernel) at 4 warps to 5 s and 21 s (measured on a 2-core CPU), and gives the lone program more
# threads.
_MIX_WARPS = 16
# The interpreter pays per operation, not per element: one program per image, one tile per program, unless
# these are lowered (the tests do, to run the chunked loops and the partial sums).
INTERPRETER_MAX_BLOCK = 1024
INTERPRETER_TILES_PER_CHUNK = 1


def _tuned(kernel, configs):
    """Autotune on a GPU over (BLOCK, num_warps, num_stages); fixed BLOCK in the interpreter. CSAKD_AUTOTUNE=0
    keeps each list's first config (no tuning runs, one compile per kernel: GPU test sessions, where fp32
    "ieee" kernels take up to a minute each to compile)."""
    if _INTERPRETED:
        return kernel
    if os.environ.get("CSAKD_AUTOTUNE", "1") == "0":
        configs = configs[:1]
    return triton.autotune([triton.Config({"BLOCK": b}, num_warps=w, num_stages=s) for b, w, s in configs],
                           key=["CP"])(kernel)


_REDUCE_CONFIGS = [(32, 4, 2), (32, 8, 3), (64, 8, 2), (64, 4, 3)]
_MAP_CONFIGS = [(32, 4, 3), (64, 4, 2), (64, 8, 3), (128, 8, 2)]
_gram = _tuned(K._gram_kernel, _REDUCE_CONFIGS)
_apply = _tuned(K._apply_kernel, _MAP_CONFIGS)
_grad = _tuned(K._grad_kernel, _REDUCE_CONFIGS)
_gram_grad = _tuned(K._gram_grad_kernel, _MAP_CONFIGS)


def memory_format(*xs: torch.Tensor) -> torch.memory_format:
    """The layout the kernels use for these inputs (and give the output and the input grads)."""
    if all(x.is_contiguous() for x in xs):
        return torch.contiguous_format
    if all(x.is_contiguous(memory_format=torch.channels_last) for x in xs):
        return torch.channels_last
    return torch.contiguous_format


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


class _Plan:
    """Sizes, strides and launch constants shared by the launchers of one call."""

    def __init__(self, x1: torch.Tensor, wq: torch.Tensor, heads: int, fmt: torch.memory_format):
        self.B, self.C, H, W = x1.shape
        self.N, self.hw = H * W, (H, W)
        self.R = wq.shape[0]
        self.D = self.R // heads
        self.CP, self.RP = _pad(self.C), _pad(self.R)
        self.fmt = fmt
        cn = self.C * self.N
        self.strides = (cn, 1, self.C) if fmt == torch.channels_last else (cn, self.N, 1)
        self.scale = 1.0 / (self.N * math.sqrt(self.D))
        upcast = _INTERPRETED and x1.dtype == torch.bfloat16
        self.consts = dict(CP=self.CP, PREC="ieee" if x1.dtype == torch.float32 or upcast else "tf32",
                           DT=tl.float32 if upcast else _TL_DTYPES[x1.dtype], RNE=upcast)
        if _INTERPRETED:
            self.consts["BLOCK"] = min(max(16, triton.next_power_of_2(self.N)), INTERPRETER_MAX_BLOCK)
        self.device = x1.device

    def chunks(self, programs_per_sm: int) -> tuple[int, int]:
        """(number of chunks per image, pixels per chunk)."""
        if _INTERPRETED:
            chunk = self.consts["BLOCK"] * INTERPRETER_TILES_PER_CHUNK
        else:
            sms = torch.cuda.get_device_properties(self.device).multi_processor_count
            per_image = max(1, triton.cdiv(sms * programs_per_sm, self.B))
            chunk = triton.cdiv(triton.cdiv(self.N, per_image), _CHUNK_QUANTUM) * _CHUNK_QUANTUM
        return triton.cdiv(self.N, chunk), chunk

    def empty_map(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty((self.B, self.C) + self.hw, dtype=dtype, device=self.device, memory_format=self.fmt)

    def f32(self, *shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, device=self.device)


def _stats_numel(C: int) -> int:
    return 2 * C * C + 3 * C


def _params_numel(C: int, R: int) -> int:
    return 3 * (R * C + R) + C * R + C + K.N_GATES * 4 * C + K.N_GATES


def _prepare(xs, params, heads):
    fmt = memory_format(*xs)
    xs = [x.contiguous(memory_format=fmt) for x in xs]
    params = [p.to(torch.float32).contiguous() for p in params]
    return _Plan(xs[0], params[0], heads, fmt), xs, params


def _forward(x1, x2, x3, x4, params, attention: bool, heads: int):
    plan, (x1, x2, x3, x4), params = _prepare((x1, x2, x3, x4), params, heads)
    B, C, N = plan.B, plan.C, plan.N
    stats = plan.f32(B, _stats_numel(C))
    S = 0
    gram_part = sums_part = stats  # unused in "reference" mode
    if attention:
        S, chunk = plan.chunks(_REDUCE_PROGRAMS_PER_SM)
        gram_part, sums_part = plan.f32(B * S, C, C), plan.f32(B * S, 2, C)
        _gram[(S, B)](x1, x2, gram_part, sums_part, C, N, chunk, *plan.strides, **plan.consts)
    K._mix_kernel[(B,)](gram_part, sums_part, *params[:8], stats, C, plan.R, plan.D, S, float(N), plan.scale,
                        CP=plan.CP, RP=plan.RP, ATTENTION=attention, num_warps=_MIX_WARPS)
    out = plan.empty_map(x1.dtype)
    S, chunk = plan.chunks(_MAP_PROGRAMS_PER_SM)
    _apply[(S, B)](x1, x2, x3, x4, out, stats, params[8], params[9], C, N, chunk, *plan.strides, **plan.consts)
    return out, stats


def _backward(dout, x1, x2, x3, x4, params, stats, attention: bool, heads: int):
    plan, (x1, x2, x3, x4, dout), params = _prepare((x1, x2, x3, x4, dout), params, heads)
    B, C, N = plan.B, plan.C, plan.N
    if memory_format(x1, dout) != plan.fmt:  # dout alone in another layout: follow the inputs
        dout = dout.contiguous(memory_format=plan.fmt)
    dx1, dx2, dx3, dx4 = (plan.empty_map(x1.dtype) for _ in range(4))
    S_W, chunk = plan.chunks(_GRAD_PROGRAMS_PER_SM)
    dc_part = plan.f32(B * S_W, C)
    dwg_part, dbg_part = plan.f32(B * S_W, K.N_GATES, 4 * C), plan.f32(B * S_W, K.N_GATES)
    gz = plan.f32(B, 2 * K.N_GATES, N) if attention else dbg_part
    _grad[(S_W, B)](x1, x2, x3, x4, dout, stats, params[8], params[9], dx1, dx2, dx3, dx4, gz, dc_part, dwg_part,
                    dbg_part, C, N, chunk, *plan.strides, ATTENTION=attention, **plan.consts)
    # dM = Σ datt x3ᵀ: the Gram pass over (dx4, x3), dx4 being datt (its channel sums go unused)
    S_M, chunk = plan.chunks(_REDUCE_PROGRAMS_PER_SM)
    dm_part, sums_part = plan.f32(B * S_M, C, C), plan.f32(B * S_M, 2, C)
    _gram[(S_M, B)](dx4, x3, dm_part, sums_part, C, N, chunk, *plan.strides, **plan.consts)
    dgram = plan.f32(B, C * C + 2 * C) if attention else dc_part
    dparams = plan.f32(B, _params_numel(C, plan.R))
    K._mix_grad_kernel[(B,)](dm_part, dc_part, dwg_part, dbg_part, stats, *params[:8], dgram, dparams,
                             C, plan.R, plan.D, S_M, S_W, float(N), plan.scale, CP=plan.CP, RP=plan.RP,
                             ATTENTION=attention, num_warps=_MIX_WARPS)
    if attention:
        S, chunk = plan.chunks(_MAP_PROGRAMS_PER_SM)
        _gram_grad[(S, B)](x1, x2, dout, gz, dgram, params[8], dx1, dx2, C, N, chunk, *plan.strides,
                           **plan.consts)
    return dx1, dx2, dx3, dx4, dparams.sum(0)


# ---------------------------------------------------------------- custom ops

Tensor = torch.Tensor


@torch.library.custom_op("csakd::csa_fuse", mutates_args=())
def _csa_fuse_op(x1: Tensor, x2: Tensor, x3: Tensor, x4: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor,
                 wv: Tensor, bv: Tensor, wo: Tensor, bo: Tensor, wg: Tensor, bg: Tensor, mode: str,
                 heads: int) -> tuple[Tensor, Tensor]:
    """(out, stats); stats are the backward's saved per-image matrices."""
    return _forward(x1, x2, x3, x4, (wq, bq, wk, bk, wv, bv, wo, bo, wg, bg), mode == "attention", heads)


@_csa_fuse_op.register_fake
def _(x1, x2, x3, x4, wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, mode, heads):
    B, C = x1.shape[:2]
    out = torch.empty(x1.shape, dtype=x1.dtype, device=x1.device, memory_format=memory_format(x1, x2, x3, x4))
    return out, x1.new_empty((B, _stats_numel(C)), dtype=torch.float32)


@torch.library.custom_op("csakd::csa_fuse_backward", mutates_args=())
def _csa_fuse_backward_op(dout: Tensor, x1: Tensor, x2: Tensor, x3: Tensor, x4: Tensor, wq: Tensor, bq: Tensor,
                          wk: Tensor, bk: Tensor, wv: Tensor, bv: Tensor, wo: Tensor, bo: Tensor, wg: Tensor,
                          bg: Tensor, stats: Tensor, mode: str,
                          heads: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx1, dx2, dx3, dx4, dparams): dparams is every weight grad, flattened in PARAM_NAMES order, fp32."""
    return _backward(dout, x1, x2, x3, x4, (wq, bq, wk, bk, wv, bv, wo, bo, wg, bg), stats,
                     mode == "attention", heads)


@_csa_fuse_backward_op.register_fake
def _(dout, x1, x2, x3, x4, wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, stats, mode, heads):
    fmt = memory_format(x1, x2, x3, x4)
    dxs = tuple(torch.empty(x1.shape, dtype=x1.dtype, device=x1.device, memory_format=fmt) for _ in range(4))
    return (*dxs, x1.new_empty((_params_numel(x1.shape[1], wq.shape[0]),), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    *tensors, mode, heads = inputs
    ctx.save_for_backward(*tensors, output[1])
    ctx.mode, ctx.heads = mode, heads
    ctx.mark_non_differentiable(output[1])


def _backward_fn(ctx, dout, _dstats):
    *tensors, stats = ctx.saved_tensors
    *dxs, dflat = torch.ops.csakd.csa_fuse_backward(dout, *tensors, stats, ctx.mode, ctx.heads)
    params = tensors[4:]
    dparams = torch.split(dflat, [p.numel() for p in params])
    return (*dxs, *(g.view(p.shape).to(p.dtype) for g, p in zip(dparams, params)), None, None)


_csa_fuse_op.register_autograd(_backward_fn, setup_context=_setup_context)


# ---------------------------------------------------------------- public API

def _check_device(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    if x.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device} (as x1), got {x.device}")
    if x.device.type != "cuda" and not _INTERPRETED:
        raise ValueError(f"{name}: expected a CUDA tensor (CPU tensors need TRITON_INTERPRET=1 set before Triton "
                         f"is imported), got {x.device}")


def _param_shapes(C: int, R: int) -> dict[str, tuple[int, ...]]:
    return {"wq": (R, C), "bq": (R,), "wk": (R, C), "bk": (R,), "wv": (R, C), "bv": (R,), "wo": (C, R),
            "bo": (C,), "wg": (K.N_GATES, 4 * C), "bg": (K.N_GATES,)}


def _check_params(params, x1: torch.Tensor, heads: int, check_finite: bool) -> list[torch.Tensor]:
    if not isinstance(params, Mapping):
        raise ValueError(f"params: expected a mapping with keys {PARAM_NAMES}, got {type(params).__name__}")
    missing = [n for n in PARAM_NAMES if n not in params]
    if missing:
        raise ValueError(f"params: expected keys {PARAM_NAMES}, missing {missing}")
    for name in PARAM_NAMES:
        check_float_tensor(f"params['{name}']", params[name], finite=check_finite)
        _check_device(f"params['{name}']", params[name], x1)
    C, wq = x1.shape[1], params["wq"]
    if wq.ndim != 2:
        raise ValueError(f"params['wq']: expected a 2-D (attn_dim, {C}) weight, got shape {tuple(wq.shape)}")
    R = wq.shape[0]
    if not 1 <= R <= MAX_CHANNELS or R % heads:
        raise ValueError(f"params['wq']: expected attn_dim (rows) in 1..{MAX_CHANNELS} divisible by heads={heads}, "
                         f"got {R}")
    for name, shape in _param_shapes(C, R).items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"params['{name}']: expected shape {shape} (nf={C}, attn_dim={R}), "
                             f"got {tuple(params[name].shape)}")
    return [params[n] for n in PARAM_NAMES]


def csa_fuse(x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor,
             params: Mapping[str, torch.Tensor] | None, mode: str = "attention", heads: int = 4, *,
             check_finite: bool = False) -> torch.Tensor:
    """The CSA fusion of `csa_reference(x1, x2, x3, x4, params, mode, heads)` by the fused kernels.

    x1..x4: (B, nf, H, W), one dtype (fp32/bf16/fp16) and device; params: wq, bq, ..., wg, bg as in
    `CSAFusion.params()` (unused in mode "sum"). `check_finite` adds a NaN/Inf check of the inputs (a device
    sync); otherwise NaN/Inf propagate as in the reference.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"heads: expected a positive integer, got {heads!r}")
    check_float_tensor("x1", x1, ndim=4, finite=check_finite)
    if x1.dtype not in DTYPES:
        raise ValueError(f"x1: expected dtype float32, bfloat16 or float16, got {x1.dtype}")
    for name, x in (("x2", x2), ("x3", x3), ("x4", x4)):
        check_float_tensor(name, x, ndim=4, finite=check_finite)
        check_same_shape("x1", x1, name, x)
        if x.dtype != x1.dtype:
            raise ValueError(f"{name}: expected dtype {x1.dtype} (as x1), got {x.dtype}")
        _check_device(name, x, x1)
    _check_device("x1", x1, x1)
    if mode == "sum":
        return x1 + x2 + x3 + x4
    if not 1 <= x1.shape[1] <= MAX_CHANNELS or min(x1.shape) < 1:
        raise ValueError(f"x1: expected a non-empty (B, nf, H, W) tensor with nf <= {MAX_CHANNELS}, "
                         f"got shape {tuple(x1.shape)}")
    if x1.numel() > _MAX_NUMEL:
        raise ValueError(f"x1: expected at most {_MAX_NUMEL} elements (int32 indexing), got {x1.numel()}")
    weights = _check_params(params, x1, heads, check_finite)
    out, _ = torch.ops.csakd.csa_fuse(x1, x2, x3, x4, *weights, mode, heads)
    return out
