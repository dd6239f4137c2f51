"""Multiply-accumulate counter: every conv weight MAC (3x3 and 1x1, CSA projections included), not the
attention products nor interpolation (the convention of the paper's tables)."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


class _ConvMacs(TorchDispatchMode):
    """Sums weight.numel() x output pixels over every convolution: each weight acts once per output pixel
    (a grouped weight's numel already counts only its group's inputs)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            self.total += args[1].numel() * out.shape[0] * out.shape[-2] * out.shape[-1]
        return out


def count_macs(model: nn.Module, lr_shape, hr_shape) -> int:
    """MACs of one forward pass. Shapes are (C, h, w) or (B, C, h, w); the count covers the whole batch.

    Runs the model on the meta device (no arithmetic, no memory) on the reference backend's module path and
    counts the convolutions it dispatches.
    """
    lr_shape, hr_shape = tuple(lr_shape), tuple(hr_shape)
    if len(lr_shape) == 3:
        lr_shape = (1, *lr_shape)
    if len(hr_shape) == 3:
        hr_shape = (1, *hr_shape)
    if len(lr_shape) != 4 or len(hr_shape) != 4:
        raise ValueError(f"lr_shape/hr_shape: expected (C, h, w) or (B, C, h, w), got {lr_shape} and {hr_shape}")
    meta = copy.deepcopy(model).to("meta")
    if hasattr(meta, "backend"):
        meta.backend = "reference"
    if hasattr(meta, "inference_dtype"):
        meta.inference_dtype = None  # the module path: the prepared one pads channels
    counter = _ConvMacs()
    with torch.no_grad(), counter:
        meta(torch.empty(lr_shape, device="meta"), torch.empty(hr_shape, device="meta"))
    csa = getattr(meta, "csa", None)
    if getattr(csa, "mode", None) == "reference":
        # The released code computes q and k in this mode although they never reach the output; the paper's
        # tables count them, csakd skips them.
        total_pixels = hr_shape[0] * hr_shape[2] * hr_shape[3]
        counter.total += (csa.query_conv.weight.numel() + csa.key_conv.weight.numel()) * total_pixels
    return counter.total
