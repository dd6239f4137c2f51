"""Multiply-accumulate counter: every conv weight MAC (3x3 and 1x1, CSA projections included), not the
attention products nor interpolation (the convention of SPEC §2 and the paper's tables)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .blocks import CLRB
from .csa import CSAFusion


def count_macs(model: nn.Module, lr_shape, hr_shape) -> int:
    """MACs of one forward pass. Shapes are (C, h, w) or (B, C, h, w); the count covers the whole batch.

    Runs the model on the meta device (no arithmetic, no memory) with the reference backend and sums
    weight.numel() x output pixels over every Conv2d call.
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
        meta.inference_dtype = None  # the module path, whose Conv2d calls the hooks see
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        total += module.weight.numel() * output.shape[0] * output.shape[-2] * output.shape[-1]

    def functional_hook(module, _inputs, output):
        # CLRB and CSA run their convs through one functional reference (shared with the kernels' tests),
        # so the Conv2d hooks never fire for them; every one of their weights acts once per output pixel.
        nonlocal total
        per_pixel = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))
        total += per_pixel * output.shape[0] * output.shape[-2] * output.shape[-1]

    handles = []
    for m in meta.modules():
        if isinstance(m, (CLRB, CSAFusion)):
            handles.append(m.register_forward_hook(functional_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            meta(torch.empty(lr_shape, device="meta"), torch.empty(hr_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total
