"""Fused CSA attention-and-gating (the two-pass algebra of `csakd.ops.csa_algebra`; sizes and rooflines in
docs/csa.md): `csa_fuse`, forward and backward in Triton, registered as the `torch.ops.csakd.csa_fuse` /
`csa_fuse_backward` / `csa_apply` custom ops with fake implementations (and autograd for the first), so
`torch.compile` traces it without graph breaks. `csakd.models.csa.csa_reference` is the oracle; the kernels
and the algebra they use are described in `csa_kernels`.

Inputs: x1..x4 of one shape (B, C, H, W), one dtype (fp32, bf16 or fp16), C <= 128, any B, H, W, NCHW or
channels-last (if all four share one of those layouts it is used as is, otherwise all are made contiguous;
the output and the input grads take that layout). The weights may have any floating dtype: they are used in
fp32 and their grads come back in their own dtype. Accumulation is fp32; fp32 inputs use exact-fp32 products
(no TF32). In "reference" mode wq, bq, wk, bk get no grad (None, as from the reference, where they do not
enter the output). Mode "sum" is plain `x1 + x2 + x3 + x4` in PyTorch (no weights, nothing to fuse). Double
backward is not supported.
The `csakd::csa_fuse` op returns (out, stats): stats (B, 2C² + 3C) fp32 are the per-image rows
[G | s1 | s2 | M | c] (Gram matrix, channel sums, folded map and offset) that the backward reuses.

A given `attention` (tiled fusion of a large scene applies the attention of the whole scene in every tile) runs
`csakd::csa_apply`: M and c are folded from it in PyTorch (`csa_algebra.fold`, fp32) and only the per-pixel
pass runs. That op has no backward: a given attention is for inference.

The kernels run on CUDA tensors, or on CPU tensors in the Triton interpreter when TRITON_INTERPRET=1 was set
before Triton was first imported (the test suite does); importing this module sets nothing.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
import triton
import triton.language as tl
from triton import knobs

from csakd._validate import check_float_tensor, check_same_shape, check_triton_device
from csakd.models.csa import PARAM_NAMES, check_attention
from csakd.ops.csa_algebra import fold

from . import csa_kernels as K

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
# `_reduce_partials` sums the chunks' partial rows (B·S rows of C² + 2C or 17C + 4 floats) into one row per
# image, in parallel over [_SUM_ROWS, _SUM_COLS] tiles, so that the one-program-per-image mix kernels read one row:
# at B = 1, nf = 86 and 132 chunks the Gram partials are 4 MB, which one program (the mix kernel's former serial
# loop) reads in tens of µs, 119 programs in about one (from L2, where the Gram pass just wrote them). A split
# reduction rather than atomics in the Gram pass: one more launch, but a fixed summation order, so results stay
# bitwise reproducible. Not autotuned: 4 MB next to the forward's 79 MB of maps (bf16, 256²).
_SUM_ROWS, _SUM_COLS, _SUM_WARPS = 32, 64, 4
# The mix kernels (one program per image, [CP, CP] fp32 "ieee" products unrolled per thread): 16 warps spread
# them thinly and give the lone program more threads. At CP = 128 they still spill 11-22 KB per thread, and
# _mix_grad_kernel[ATTENTION=True] takes ~6 minutes to compile for sm_90 on a 2-core CPU (the others 10-30 s).
_MIX_WARPS = 16
# The interpreter pays per operation, not per element: one program per image, one tile per program, unless
# these are lowered (the tests do, to run the chunked loops, the partial sums and their reduction in tiles).
INTERPRETER_MAX_BLOCK = 1024
INTERPRETER_TILES_PER_CHUNK = 1
INTERPRETER_SUM_COLS = 1 << 15
# The autotuner's key besides CP and the dtypes: the pixels of the whole batch, to a power of two in this
# range. The work per program, which decides the best tile, grows with B·N / SMs; a bucket rather than N
# itself, so that the tiles of a tiled scene (all sizes) do not each start a tuning run.
_BUCKET_MIN, _BUCKET_MAX = 1 << 12, 1 << 22


def _tuned(kernel, configs):
    """Autotune on a GPU over (BLOCK, num_warps, num_stages), keyed on CP, the pixel bucket (`n_bucket`) and
    the dtypes; fixed BLOCK in the interpreter. CSAKD_AUTOTUNE=0 keeps each list's first config (no tuning runs,
    one compile per kernel: GPU test sessions, where fp32 "ieee" kernels take up to a minute each to compile)."""
    if _INTERPRETED:
        return kernel
    if os.environ.get("CSAKD_AUTOTUNE", "1") == "0":
        configs = configs[:1]
    return triton.autotune([triton.Config({"BLOCK": b}, num_warps=w, num_stages=s) for b, w, s in configs],
                           key=["CP", "n_bucket"])(kernel)


# (BLOCK, num_warps, num_stages) per kernel, the first being the CSAKD_AUTOTUNE=0 choice: configurations that
# compile for sm_90 without register spills at the paper's widths (nf = 86, CP = 128) in bf16 and fp16, NCHW
# (test_every_config_compiles_for_sm90). Of 10 tried per kernel, BLOCK = 128, 16 warps and (but in the Gram pass)
# 4 warps spilled; the gating and gradient passes have one spill-free configuration each. Channels-last at
# nf = 86 spills 170-220 B in those two in every configuration tried (pixel rows of 172 B are not 16-byte
# aligned: no vector loads); at nf = 96 it does not. fp32 spills too ("ieee" products, see the test).
CONFIGS = {"gram": [(64, 8, 2), (32, 8, 1)],
           "apply": [(64, 8, 1)],
           "grad": [(32, 8, 2)],
           "gram_grad": [(32, 8, 1), (64, 8, 1)]}
_gram = _tuned(K._gram_kernel, CONFIGS["gram"])
_apply = _tuned(K._apply_kernel, CONFIGS["apply"])
_grad = _tuned(K._grad_kernel, CONFIGS["grad"])
_gram_grad = _tuned(K._gram_grad_kernel, CONFIGS["gram_grad"])


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

    def __init__(self, x1: torch.Tensor, R: int, heads: int, fmt: torch.memory_format):
        self.B, self.C, H, W = x1.shape
        self.N, self.hw = H * W, (H, W)
        self.R = R
        self.D = self.R // heads
        self.CP, self.RP = _pad(self.C), _pad(self.R)
        self.fmt = fmt
        cn = self.C * self.N
        self.strides = (cn, 1, self.C) if fmt == torch.channels_last else (cn, self.N, 1)
        self.scale = 1.0 / (self.N * math.sqrt(self.D))
        self.n_bucket = min(max(triton.next_power_of_2(self.B * self.N), _BUCKET_MIN), _BUCKET_MAX)
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

    def reduce_into(self, S: int, length: int, out: torch.Tensor, row_stride: int, launch) -> None:
        """Runs `launch(rows, stride)`, a pass that writes one row of `length` floats per (image, chunk) at
        rows[(image · S + chunk) · stride:], so that `out` (rows row_stride apart) ends up with one per-image
        sum: with one chunk per image the pass writes `out` itself, else partials that `_reduce_partials` sums."""
        if S == 1:
            launch(out, row_stride)
            return
        part = self.f32(self.B * S, length)
        launch(part, length)
        cols = (min(triton.next_power_of_2(length), INTERPRETER_SUM_COLS) if _INTERPRETED else _SUM_COLS)
        K._reduce_partials[(triton.cdiv(length, cols), self.B)](part, out, S, length, row_stride,
                                                                  BLOCK_S=_SUM_ROWS, BLOCK_L=cols,
                                                                  num_warps=_SUM_WARPS)


def _stats_numel(C: int) -> int:
    return 2 * C * C + 3 * C


def _params_numel(C: int, R: int) -> int:
    return 3 * (R * C + R) + C * R + C + K.N_GATES * 4 * C + K.N_GATES


def _prepare(xs, params, R, heads):
    fmt = memory_format(*xs)
    xs = [x.contiguous(memory_format=fmt) for x in xs]
    params = [p.to(torch.float32).contiguous() for p in params]
    return _Plan(xs[0], R, heads, fmt), xs, params


def _forward(x1, x2, x3, x4, params, attention: bool, heads: int):
    plan, (x1, x2, x3, x4), params = _prepare((x1, x2, x3, x4), params, params[0].shape[0], heads)
    B, C, N = plan.B, plan.C, plan.N
    stats = plan.f32(B, _stats_numel(C))
    if attention:  # [G | s1 | s2] of each image into the head of its stats row
        S, chunk = plan.chunks(_REDUCE_PROGRAMS_PER_SM)
        plan.reduce_into(S, C * C + 2 * C, stats, stats.shape[1], lambda rows, stride: _gram[(S, B)](
            x1, x2, rows, stride, C, N, chunk, *plan.strides, plan.n_bucket, **plan.consts))
    K._mix_kernel[(B,)](stats, *params[:8], C, plan.R, plan.D, float(N), plan.scale,
                        CP=plan.CP, RP=plan.RP, ATTENTION=attention, num_warps=_MIX_WARPS)
    return _apply_pass(plan, x1, x2, x3, x4, stats, params[8], params[9]), stats


def _apply_pass(plan, x1, x2, x3, x4, stats, wg, bg):
    out = plan.empty_map(x1.dtype)
    S, chunk = plan.chunks(_MAP_PROGRAMS_PER_SM)
    _apply[(S, plan.B)](x1, x2, x3, x4, out, stats, wg, bg, plan.C, plan.N, chunk, *plan.strides, plan.n_bucket,
                        **plan.consts)
    return out


def _apply_given(x1, x2, x3, x4, m, c, wg, bg):
    """The per-pixel pass with a given fold: M (1 or B, C, C) and c (1 or B, C) written where `_apply_kernel`
    reads them in a stats row (its G, s1, s2 are not read)."""
    plan, (x1, x2, x3, x4), (m, c, wg, bg) = _prepare((x1, x2, x3, x4), (m, c, wg, bg), 1, 1)
    B, C = plan.B, plan.C
    stats = plan.f32(B, _stats_numel(C))
    stats[:, :C * C + 2 * C] = 0.0
    stats[:, C * C + 2 * C:2 * C * C + 2 * C] = m.reshape(-1, C * C)
    stats[:, 2 * C * C + 2 * C:] = c.reshape(-1, C)
    return _apply_pass(plan, x1, x2, x3, x4, stats, wg, bg)


def _backward(dout, x1, x2, x3, x4, params, stats, attention: bool, heads: int):
    plan, (x1, x2, x3, x4, dout), params = _prepare((x1, x2, x3, x4, dout), params, params[0].shape[0], heads)
    B, C, N, R = plan.B, plan.C, plan.N, plan.R
    if memory_format(x1, dout) != plan.fmt:  # dout alone in another layout: follow the inputs
        dout = dout.contiguous(memory_format=plan.fmt)
    dx1, dx2, dx3, dx4 = (plan.empty_map(x1.dtype) for _ in range(4))
    dparams = plan.f32(B, _params_numel(C, R))
    # [dc | dWg | dbg] per chunk, summed into the tail [dbo | dWg | dbg] of each image's dparams row
    tail = 3 * (R * C + R) + C * R
    S_W, chunk_w = plan.chunks(_GRAD_PROGRAMS_PER_SM)
    gz = plan.f32(B, 2 * K.N_GATES, N) if attention else dparams
    plan.reduce_into(S_W, dparams.shape[1] - tail, dparams[:, tail:], dparams.shape[1],
                     lambda rows, stride: _grad[(S_W, B)](
                         x1, x2, x3, x4, dout, stats, params[8], params[9], dx1, dx2, dx3, dx4, gz, rows, stride,
                         C, N, chunk_w, *plan.strides, plan.n_bucket, ATTENTION=attention, **plan.consts))
    # dM = Σ datt x3ᵀ: the Gram pass over (dx4, x3), dx4 being datt (its channel sums go unused)
    S_M, chunk_m = plan.chunks(_REDUCE_PROGRAMS_PER_SM)
    dm = plan.f32(B, C * C + 2 * C)
    plan.reduce_into(S_M, C * C + 2 * C, dm, dm.shape[1], lambda rows, stride: _gram[(S_M, B)](
        dx4, x3, rows, stride, C, N, chunk_m, *plan.strides, plan.n_bucket, **plan.consts))
    dgram = plan.f32(B, C * C + 2 * C) if attention else dm
    K._mix_grad_kernel[(B,)](dm, stats, *params[:8], dgram, dparams, C, R, plan.D, float(N), plan.scale,
                             CP=plan.CP, RP=plan.RP, ATTENTION=attention, num_warps=_MIX_WARPS)
    if attention:
        S, chunk = plan.chunks(_MAP_PROGRAMS_PER_SM)
        _gram_grad[(S, B)](x1, x2, dout, gz, dgram, params[8], dx1, dx2, C, N, chunk, *plan.strides,
                           plan.n_bucket, **plan.consts)
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
    dparams = [g.view(p.shape).to(p.dtype) for g, p in zip(torch.split(dflat, [p.numel() for p in params]), params)]
    if ctx.mode == "reference":
        # q and k do not enter the output: no grad, as from the reference. A zero grad would not be the same:
        # AdamW's weight decay (and momentum) then moves those weights, where a None grad leaves them alone.
        dparams[:4] = [None] * 4
    return (*dxs, *dparams, None, None)


_csa_fuse_op.register_autograd(_backward_fn, setup_context=_setup_context)


# A given attention runs its own op rather than an optional argument of csakd::csa_fuse: it needs none of the
# q/k/v/o weights (the fold runs in PyTorch before it, traced by torch.compile like any other op), saves no
# stats, and has no backward, so the training op's schema, saved tensors and autograd stay as they are.
@torch.library.custom_op("csakd::csa_apply", mutates_args=())
def _csa_apply_op(x1: Tensor, x2: Tensor, x3: Tensor, x4: Tensor, m: Tensor, c: Tensor, wg: Tensor,
                  bg: Tensor) -> Tensor:
    """The gated output for att = M x3 + c + x4 with a given fold M (1 or B, C, C), c (1 or B, C)."""
    return _apply_given(x1, x2, x3, x4, m, c, wg, bg)


@_csa_apply_op.register_fake
def _(x1, x2, x3, x4, m, c, wg, bg):
    return torch.empty(x1.shape, dtype=x1.dtype, device=x1.device, memory_format=memory_format(x1, x2, x3, x4))


# ---------------------------------------------------------------- public API

def _check_device(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    check_triton_device(name, x, like, "x1", _INTERPRETED)


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


def _check_sizes(x1: torch.Tensor, R: int) -> None:
    """Every buffer the kernels index (maps, gate buffer, stats and weight-grad rows) fits int32 offsets."""
    B, C, H, W = x1.shape
    largest = B * max(C * H * W, 2 * K.N_GATES * H * W, _stats_numel(C), _params_numel(C, R))
    if largest > _MAX_NUMEL:
        raise ValueError(f"x1: shape {tuple(x1.shape)} needs buffers of {largest} elements, more than the kernels' "
                         f"int32 indexing allows ({_MAX_NUMEL}); split the batch")


def csa_fuse(x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor,
             params: Mapping[str, torch.Tensor] | None, mode: str = "attention", heads: int = 4, *,
             attention: torch.Tensor | None = None, check_finite: bool = False) -> torch.Tensor:
    """The CSA fusion of `csa_reference(x1, x2, x3, x4, params, mode, heads, attention)` by the fused kernels.

    x1..x4: (B, nf, H, W), one dtype (fp32/bf16/fp16) and device; params: wq, bq, ..., wg, bg as in
    `CSAFusion.params()` (unused in mode "sum"). `attention` (mode "attention" only): a (1 or B, heads, d, d)
    tensor of any floating dtype applied instead of the attention of x1, x2 (d = attn_dim / heads); for
    inference: with grad mode on, no input or weight may require grad. `check_finite` adds a NaN/Inf check of
    the inputs (a device sync); otherwise NaN/Inf propagate as in the reference.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"heads: expected a positive integer, got {heads!r}")
    if mode != "attention":
        check_attention(attention, mode, 0, heads, 0)  # raises for any given attention: mode first
    check_float_tensor("x1", x1, ndim=4, finite=check_finite)
    if x1.dtype not in DTYPES:
        raise ValueError(f"x1: expected dtype float32, bfloat16 or float16, got {x1.dtype}")
    _check_device("x1", x1, x1)
    for name, x in (("x2", x2), ("x3", x3), ("x4", x4)):
        check_float_tensor(name, x, ndim=4, finite=check_finite)
        check_same_shape("x1", x1, name, x)
        if x.dtype != x1.dtype:
            raise ValueError(f"{name}: expected dtype {x1.dtype} (as x1), got {x.dtype}")
        _check_device(name, x, x1)
    if mode == "sum":
        return x1 + x2 + x3 + x4
    if not 1 <= x1.shape[1] <= MAX_CHANNELS or min(x1.shape) < 1:
        raise ValueError(f"x1: expected a non-empty (B, nf, H, W) tensor with nf <= {MAX_CHANNELS}, "
                         f"got shape {tuple(x1.shape)}")
    weights = _check_params(params, x1, heads, check_finite)
    R = weights[0].shape[0]
    _check_sizes(x1, R)
    if attention is None:
        out, _ = torch.ops.csakd.csa_fuse(x1, x2, x3, x4, *weights, mode, heads)
        return out
    check_attention(attention, mode, x1.shape[0], heads, R // heads)
    check_float_tensor("attention", attention, finite=check_finite)
    _check_device("attention", attention, x1)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, x3, x4, attention, *weights)):
        raise ValueError("attention: a given attention is for inference only (the kernels compute no gradients "
                         "with it); call under torch.no_grad() or pass tensors that do not require grad")
    m, c = fold(params, attention)
    return torch.ops.csakd.csa_apply(x1, x2, x3, x4, m, c, weights[8], weights[9])
