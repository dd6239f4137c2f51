"""The CLRB / CLRA fast path: the C++/CUDA op `torch.ops.csakd.clrb_forward` (built from `csrc/` into
`csakd._C`), its autograd and its fake (meta) implementation for torch.compile.

    out = clrb(x, weights, biases, groups)              # == csakd.models.blocks.clrb_reference
    out = clra(x, [(weights, biases)] * 3, groups)      # == CLRA

`impl` (default: the environment variable CSAKD_CLRB_IMPL, else "auto") picks the forward implementation:
"auto" (the custom CUDA kernel that applies, ATen elsewhere), "aten" (ATen calls over the same buffer, on any
device: the fallback when a custom kernel misbehaves), "mma" / "direct" (force the CUDA tensor-core kernel for
groups=1, or the direct kernel for any groups; an error where they do not apply). The tensor-core kernel runs
bf16/fp16 as they are and fp32 as TF32; "auto" takes it for fp32 only while torch.backends.cudnn.allow_tf32 is
set (PyTorch's default), as cuDNN would. The direct kernel is what "auto" picks for grouped convs with at most
16 input channels per group (the student's g = 43). The backward always runs ATen convolution_backward calls over
the saved buffer (first derivatives only: the backward op itself is not differentiable).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .._validate import check_float_tensor
from ..models.blocks import CLRA, RES_SCALE

IMPLS = ("auto", "aten", "mma", "direct")

try:
    from .. import _C  # noqa: F401  (loading the library registers torch.ops.csakd.*)

    LOAD_ERROR: str | None = None
except ImportError as error:
    LOAD_ERROR = f"csakd._C could not be imported ({error}); reinstall with `pip install --no-build-isolation -e .`"


def is_available(device: torch.device | str = "cpu") -> bool:
    """Whether the extension is built and has a kernel for `device`'s type."""
    if LOAD_ERROR is not None:
        return False
    key = torch.device(device).type.upper()
    return torch._C._dispatch_has_kernel_for_dispatch_key("csakd::clrb_forward", key)


def resolve_impl(impl: str | None) -> str:
    if impl is None:
        value = os.environ.get("CSAKD_CLRB_IMPL", "auto")
        if value not in IMPLS:
            raise ValueError(f"CSAKD_CLRB_IMPL: expected one of {IMPLS}, got {value!r}")
        return value
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    return impl


def check_clrb_args(x, weights, biases, groups) -> None:
    """ValueError naming the argument for anything the op would reject (shapes as in docs/architecture.md)."""
    check_float_tensor("x", x, ndim=4, finite=False)  # a finiteness check would sync the device every call
    for name, seq in (("weights", weights), ("biases", biases)):
        if not isinstance(seq, Sequence) or len(seq) != 5:
            raise ValueError(f"{name}: expected a sequence of 5 tensors, got {type(seq).__name__} "
                             f"of length {len(seq) if isinstance(seq, Sequence) else 'n/a'}")
    nf = x.shape[1]
    if not isinstance(weights[0], torch.Tensor) or weights[0].ndim != 4:
        raise ValueError(f"weights[0]: expected a 4-D tensor, got {getattr(weights[0], 'shape', weights[0])}")
    gc = weights[0].shape[0]
    if not isinstance(groups, int) or groups < 1 or nf % groups or gc % groups:
        raise ValueError(f"groups: expected a positive divisor of nf={nf} and gc={gc}, got {groups!r}")
    for k in range(5):
        cin, cout = nf + k * gc, (gc if k < 4 else nf)
        for name, t, shape in ((f"weights[{k}]", weights[k], (cout, cin // groups, 3, 3)),
                               (f"biases[{k}]", biases[k], (cout,))):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape} (nf={nf}, gc={gc}, groups={groups}), "
                                 f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.dtype != x.dtype or t.device != x.device:
                raise ValueError(f"{name}: expected dtype {x.dtype} on {x.device} (as x), got {t.dtype} on "
                                 f"{t.device}")


def _require(device: torch.device) -> None:
    if not torch.compiler.is_compiling() and not is_available(device):
        raise RuntimeError(LOAD_ERROR or f"csakd._C has no CLRB kernel for {device.type} in this build")


def clrb(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], groups: int = 1,
         impl: str | None = None) -> torch.Tensor:
    """One CLRB, `x + 0.2 * conv5([x, x1..x4])` (as `clrb_reference`), differentiable in x, weights, biases."""
    check_clrb_args(x, weights, biases, groups)
    impl = resolve_impl(impl)
    _require(x.device)
    out, _ = torch.ops.csakd.clrb_forward(x, list(weights), list(biases), groups, impl)
    return out


def clra(x: torch.Tensor, clrb_params: Sequence[tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]],
         groups: int = 1, impl: str | None = None) -> torch.Tensor:
    """CLRA: CLRBs in sequence, one per (weights, biases) pair, with the 0.2-scaled residual around them."""
    if not isinstance(clrb_params, Sequence) or not clrb_params:
        raise ValueError(f"clrb_params: expected a non-empty sequence of (weights, biases) pairs, got "
                         f"{type(clrb_params).__name__}")
    y = x
    for weights, biases in clrb_params:
        y = clrb(y, weights, biases, groups, impl)
    return x + RES_SCALE * y


def clra_module(module: CLRA, x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """`module(x)` computed by the extension."""
    return clra(x, module.params(), module.groups, impl)


def _register() -> None:
    @torch.library.register_fake("csakd::clrb_forward")
    def _forward_fake(x, weights, biases, groups, impl):
        batch, nf, height, width = x.shape
        buffer_channels = nf + 4 * weights[0].shape[0]
        return x.new_empty(x.shape), x.new_empty((batch, buffer_channels, height, width))

    @torch.library.register_fake("csakd::clrb_backward")
    def _backward_fake(grad_out, buffer, weights, groups):
        return (grad_out.new_empty(grad_out.shape), [w.new_empty(w.shape) for w in weights],
                [w.new_empty(w.shape[:1]) for w in weights])

    def setup_context(ctx, inputs, output):
        _, weights, _, groups, _ = inputs
        _, buffer = output
        ctx.groups = groups
        ctx.mark_non_differentiable(buffer)
        ctx.save_for_backward(buffer, *weights)

    def backward(ctx, grad_out, _grad_buffer):
        buffer, *weights = ctx.saved_tensors
        grad_x, grad_w, grad_b = torch.ops.csakd.clrb_backward(grad_out, buffer, weights, ctx.groups)
        return grad_x, list(grad_w), list(grad_b), None, None

    torch.library.register_autograd("csakd::clrb_forward", backward, setup_context=setup_context)


if LOAD_ERROR is None:
    _register()

__all__ = ["IMPLS", "LOAD_ERROR", "clra", "clra_module", "clrb", "is_available", "resolve_impl"]
