"""The prepared inference path of `DTSNet` (used in eval mode with gradients off, once an inference dtype is
set: `DTSNet(..., dtype=)` or `model.prepare(dtype)`).

Weights are prepared once per (dtype, device, padding): cast to the compute dtype, optionally zero-padded to
tensor-core friendly channel counts (43 -> 48, 86 -> 96), and the CSA weights folded for
`csakd.ops.csa_algebra.csa_folded` (mode "reference" folds the value and output projections into one nf x nf
map for good). The network's wiring is `csakd.models.network.dts_forward`, the same as the module path's. The
prepared tensors are plain tensors, not parameters: they are keyed on the parameters themselves (identity and
autograd version counter) and refreshed, in place where the shapes allow (so CUDA graphs captured on them stay
valid), as soon as a parameter changes: an optimizer step through ordinary in-place ops, `load_state_dict`
(also with `assign=True`), `.to()`/`.cuda()`/`.half()` (which mark them stale). Changes autograd does not
record (`p.data` writes or assignments, fused optimizer kernels such as `Adam(fused=True)`, replacing a whole
submodule) are caught by switching mode with `model.train()`/`.eval()`, or by `model.invalidate_prepared()`.
Parameters created under `torch.inference_mode()` have no version counter: they are tracked by identity only
(they cannot be trained, and an in-place change to them needs `invalidate_prepared()`).

Zero padding is exact: padded output channels have zero weights and bias, so they stay zero through every
LReLU and residual, and padded input channels meet zero weight columns. Only the dense (groups = 1) branches
are padded; a grouped branch (the student's h branch) runs at its own width and its output is zero-padded.

On a CPU (reference backend, fp32 or bf16) the path runs in its channels-last form (`csakd.inference.cpu`):
weights prepared channels-last with the CLRB residual scales folded into the last convolutions, activations
channels-last throughout, oneDNN's fused convolutions. `dtype="auto"` is bf16 where the device computes it
natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX), else fp32 (`csakd.inference.cpu.auto_dtype`).
"""
from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.blocks import SLOPE
from ..ops.csa_algebra import csa_folded, fold_csa_params
from . import cpu

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ALIASES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
PAD_MULTIPLE = 16


def check_dtype(dtype) -> torch.dtype | str:
    """torch.float32/bfloat16/float16 or one of their names ('fp32', 'bf16', 'fp16', ...), or "auto" (kept as
    "auto": see `resolve_dtype`); else ValueError."""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return "auto"
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _ALIASES:
        return _ALIASES[dtype.lower().removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES:
        return dtype
    raise ValueError(f"dtype: expected one of torch.float32, torch.bfloat16, torch.float16 (or 'fp32', 'bf16', "
                     f"'fp16', 'auto'), got {dtype!r}")


def resolve_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    """The compute dtype a checked `dtype` means on `device` ("auto": `csakd.inference.cpu.auto_dtype`)."""
    return cpu.auto_dtype(device) if dtype == "auto" else dtype


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad(t: torch.Tensor, dtype: torch.dtype, out: tuple[int, int] | None = None,
         ins: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """A new tensor: `t` cast to dtype, dim 0 zero-padded from out[0] to out[1] and dim 1 (if any) laid out
    as the segments `ins` [(size, padded size), ...]: each segment's channels, then its zero padding."""
    out = out or (t.shape[0], t.shape[0])
    if t.ndim == 1:
        result = t.new_zeros(out[1], dtype=dtype)
        result[:out[0]] = t
        return result
    ins = ins or [(t.shape[1], t.shape[1])]
    result = t.new_zeros((out[1], sum(padded for _, padded in ins), *t.shape[2:]), dtype=dtype)
    src = dst = 0
    for size, padded in ins:
        result[:out[0], dst:dst + size] = t[:, src:src + size]
        src, dst = src + size, dst + padded
    return result


@dataclass
class PreparedBranch:
    stem: tuple[torch.Tensor, torch.Tensor]
    clras: list[list[tuple[list[torch.Tensor], list[torch.Tensor]]]]
    groups: int
    pad_out: int  # zero channels appended to the branch output (a grouped branch inside a padded model)


@dataclass
class Prepared:
    """Weights of one model prepared for one (dtype, device, padding, layout); `key` None marks them stale.
    `layout` "nhwc" is the CPU form (`csakd.inference.cpu`): channels-last weights, residual scales folded."""

    dtype: torch.dtype
    device: torch.device
    pad: bool
    branches: dict[str, PreparedBranch]
    csa: dict[str, torch.Tensor]
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    modules: tuple = ()
    source: tuple[torch.Tensor, ...] = ()   # the parameters it was built from
    key: tuple | None = None                # their autograd version counters then
    refreshes: int = field(default=0)
    layout: str = "nchw"

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for branch in self.branches.values():
            out += list(branch.stem)
            for clra in branch.clras:
                for weights, biases in clra:
                    out += weights + biases
        return out + list(self.csa.values()) + list(self.head)


def _parameters(modules) -> list[torch.Tensor]:
    # Walking a cached module list is ~20x cheaper than model.parameters(): this runs on every forward.
    return [p for m in modules for p in m._parameters.values() if p is not None]


def _versions(params) -> tuple[int, ...]:
    return tuple(-1 if p.is_inference() else p._version for p in params)


def _is_current(prep: Prepared) -> bool:
    if prep.key is None:
        return False
    params = _parameters(prep.modules)
    return (len(params) == len(prep.source) and all(map(operator.is_, params, prep.source))
            and _versions(params) == prep.key)


def build(model, dtype: torch.dtype, pad: bool, layout: str = "nchw") -> Prepared:
    """Prepares `model`'s weights (on the parameters' device) for the inference path in `layout`."""
    cfg = model.config
    nf, gc = cfg.nf, cfg.gc
    nf_p, gc_p = (_round_up(nf, PAD_MULTIPLE), _round_up(gc, PAD_MULTIPLE)) if pad else (nf, gc)
    modules = tuple(model.modules())
    params = tuple(_parameters(modules))
    device = params[0].device
    nhwc = layout == "nhwc"
    # Plain tensors even when called under torch.inference_mode(): they can be refreshed in place later.
    with torch.inference_mode(False), torch.no_grad():
        branches = {}
        for name, branch in model.branches.items():
            groups = branch.clras[0].blocks[0].groups if len(branch.clras) else 1
            dense = groups == 1
            width, grow = (nf_p, gc_p) if dense else (nf, gc)
            conv = branch.stem.conv
            stem = (_pad(conv.weight, dtype, (nf, width)), _pad(conv.bias, dtype, (nf, width)))
            clras = []
            for clra in branch.clras:
                blocks = []
                scales = cpu.residual_scales(len(clra.blocks)) if nhwc else [1.0] * len(clra.blocks)
                for block, scale in zip(clra.blocks, scales):
                    weights, biases = [], []
                    for k, c in enumerate(block.convs()):
                        out = (gc, grow) if k < 4 else (nf, width)
                        ins = [(nf, width)] + [(gc, grow)] * k if dense else None
                        s = scale if k == 4 else 1.0  # scaled in fp32, rounded once to `dtype`
                        weights.append(_pad(c.weight * s, dtype, out, ins))
                        biases.append(_pad(c.bias * s, dtype, out))
                    blocks.append(([cpu.to_nhwc(w) for w in weights] if nhwc else weights, biases))
                clras.append(blocks)
            if nhwc:
                stem = (cpu.to_nhwc(stem[0]), stem[1])
            branches[name] = PreparedBranch(stem, clras, groups, nf_p - width)
        csa = {}
        if model.csa.mode != "sum":
            p = model.csa.params()
            r = cfg.attn_dim
            f32 = torch.float32
            padded = {"wq": _pad(p["wq"], f32, ins=[(nf, nf_p)]), "wk": _pad(p["wk"], f32, ins=[(nf, nf_p)]),
                      "wv": _pad(p["wv"], f32, ins=[(nf, nf_p)]), "wo": _pad(p["wo"], f32, (nf, nf_p), [(r, r)]),
                      "bo": _pad(p["bo"], f32, (nf, nf_p)), "wg": _pad(p["wg"], f32, ins=[(nf, nf_p)] * 4),
                      "bq": p["bq"], "bk": p["bk"], "bv": p["bv"], "bg": p["bg"]}
            csa = fold_csa_params(padded, model.csa.mode, model.csa.heads, dtype)
            if nhwc:
                csa.update(cpu.gate_params(csa, dtype))
        head = (_pad(model.fuse.weight, dtype, ins=[(nf, nf_p)]), _pad(model.fuse.bias, dtype),
                _pad(model.last.weight, dtype))
        if nhwc:
            head = (cpu.to_nhwc(head[0]), head[1], cpu.to_nhwc(head[2]))
    return Prepared(dtype, device, pad, branches, csa, head, modules, params, _versions(params), layout=layout)


def prepared(model, dtype: torch.dtype, pad: bool, layout: str = "nchw") -> Prepared:
    """The model's prepared weights for (dtype, pad, layout), built or refreshed if any parameter changed."""
    prep = model._prepared
    same = prep is not None and (prep.dtype, prep.pad, prep.layout) == (dtype, pad, layout)
    if same and _is_current(prep):
        return prep
    fresh = build(model, dtype, pad, layout)
    if same and prep.device == fresh.device:
        old, new = prep.tensors(), fresh.tensors()
        if len(old) == len(new) and all(a.shape == b.shape for a, b in zip(old, new)):
            with torch.inference_mode(False), torch.no_grad():  # same buffers: captured graphs stay valid
                for a, b in zip(old, new):
                    a.copy_(b)
            prep.modules, prep.source, prep.key = fresh.modules, fresh.source, fresh.key
            prep.refreshes += 1
            return prep
    model._prepared = fresh
    return fresh


def default_pad(device: torch.device, dtype: torch.dtype, impl) -> bool:
    """Padding pays where cuDNN runs the 16-bit convolutions on tensor cores (CUDA, CLRAs on the reference
    path). The CUDA CLRB extension pads inside its own kernel, and CPUs gain nothing from more channels."""
    return device.type == "cuda" and dtype != torch.float32 and impl.parts["clrb"] == "reference"


def current(model, device: torch.device):
    """(backend, prepared weights) of `model`'s inference path on `device`, the weights refreshed if stale."""
    from .. import ops

    dtype = resolve_dtype(model._inference_dtype, device)
    impl = ops.resolve(model.backend, torch.empty(0, dtype=dtype, device=device), model.config)
    pad = model.pad_channels if model.pad_channels is not None else default_pad(device, dtype, impl)
    return impl, prepared(model, dtype, pad, cpu.layout(device, dtype, impl, getattr(model, "channels_last", None)))


def _parts(model, impl, prep: Prepared, attention=None):
    """(branch, csa, head) of `csakd.models.network.dts_forward` on the prepared weights, in their dtype."""
    dtype, mode, heads = prep.dtype, model.csa.mode, model.csa.heads
    if prep.layout == "nhwc":
        return cpu.parts(prep, mode, heads, attention)
    # With no fused CSA kernel, the folded PyTorch form: the same function, fewer per-pixel passes.
    csa_fn = impl.csa if impl.parts["csa"] != "reference" else csa_folded

    def branch(name, x):
        b = prep.branches[name]
        x = F.leaky_relu(F.conv2d(x.to(dtype), *b.stem, padding=1), SLOPE)
        for clra in b.clras:
            x = impl.clra(x, clra, b.groups)
        return F.pad(x, (0, 0, 0, 0, 0, b.pad_out)) if b.pad_out else x

    def csa(x1, x2, x3, x4):
        if mode == "sum":
            return x1 + x2 + x3 + x4
        return csa_fn(x1, x2, x3, x4, prep.csa, mode, heads, attention)

    def head(fused):
        fuse_w, fuse_b, last_w = prep.head
        return F.conv2d(F.leaky_relu(F.conv2d(fused, fuse_w, fuse_b, padding=1), SLOPE), last_w, padding=1)

    return branch, csa, head


def _autocast_off(device: torch.device):
    """The prepared path computes in its own dtype: an enclosing autocast context is switched off."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout PyTorch's own convolutions would give an output computed from `x`."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _inputs(prep: Prepared, *xs: torch.Tensor):
    """The inputs as the prepared form reads them: in the CPU form channels-last and already in the compute
    dtype, so that the interpolations and concatenations of the wiring run in that layout and dtype (in bf16
    they write half the bytes, and ATen's fp32 bilinear upsampling of channels-last images is single-threaded);
    elsewhere as given (the stems cast)."""
    if prep.layout != "nhwc":
        return xs
    return tuple(x.to(prep.dtype, memory_format=torch.channels_last) for x in xs)


def forward(model, lr_hsi: torch.Tensor, hr_msi: torch.Tensor, return_features: bool = False, attention=None):
    """`DTSNet.forward` on prepared weights, in `model.inference_dtype` (interpolations in the inputs' dtype, in
    the compute dtype in the CPU form); returns the output (and the fused features) in the inputs' dtype (and
    in the CPU form, in their memory format)."""
    from ..models.network import dts_forward

    impl, prep = current(model, lr_hsi.device)
    # The CPU form hands back the layout it was given; the NCHW form keeps whatever its convolutions returned.
    dtype, fmt = lr_hsi.dtype, _memory_format(hr_msi) if prep.layout == "nhwc" else torch.preserve_format
    with _autocast_off(lr_hsi.device):
        hr_hsi, fused = dts_forward(*_inputs(prep, lr_hsi, hr_msi), *_parts(model, impl, prep, attention))
    hr_hsi = hr_hsi.to(dtype, memory_format=fmt)
    if not return_features:
        return hr_hsi
    return hr_hsi, fused[:, :model.config.nf].to(dtype, memory_format=fmt)


def query_key_features(model, lr_hsi: torch.Tensor, hr_msi: torch.Tensor):
    """`DTSNet.query_key_features` on prepared weights (nf channels, the prepared dtype; channels-last in the
    CPU form)."""
    from ..models.network import query_key_features as wiring

    impl, prep = current(model, lr_hsi.device)
    with _autocast_off(lr_hsi.device):
        x1, x2 = wiring(*_inputs(prep, lr_hsi, hr_msi), _parts(model, impl, prep)[0])
    nf = model.config.nf
    return x1[:, :nf], x2[:, :nf]
