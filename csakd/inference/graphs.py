"""CUDA graphs for fixed input shapes: capture a model's inference forward once, then replay it with almost no
launch overhead (the student's many small convolutions make launch cost visible at B=1).

With a model whose inference dtype is set (`csakd.Student(dtype=torch.bfloat16)` or `model.prepare(dtype)`),
the captured forward is the prepared inference path: its prepared weights are checked before each replay and
refreshed in place when a parameter changed, so replays follow weight updates; when they cannot be refreshed
in place (e.g. the model moved), the forward is captured again."""
from __future__ import annotations

import torch
from torch import nn


class GraphedForward:
    """Callable replaying a captured CUDA graph of `model(lr_hsi, hr_msi)` for one pair of shapes and dtype.

    Inputs are copied into static buffers; the returned tensor is a static output buffer that the next call
    overwrites (clone it to keep it). In-place updates of the parameters' values are seen by later replays
    (for a prepared model, through the refresh of its prepared weights before each replay); parameters
    replaced by new tensors are not, except on a prepared model, which is then captured again.
    """

    def __init__(self, model: nn.Module, lr_shape, hr_shape, dtype=torch.float32, device=None, warmup: int = 3):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"device: CUDA graphs need a CUDA device, got {device}")
        self.model, self.dtype, self.warmup = model.eval(), dtype, warmup
        self.lr = torch.zeros(tuple(lr_shape), device=device, dtype=dtype).uniform_()
        self.hr = torch.zeros(tuple(hr_shape), device=device, dtype=dtype).uniform_()
        self.captures = 0
        self._capture()

    def _prepared(self):
        """The model's current prepared weights (refreshed if stale), None for a model without them."""
        if getattr(self.model, "inference_dtype", None) is None:
            return None
        from . import prepared as inference

        return inference.current(self.model, self.lr.device)[1]

    def _capture(self) -> None:
        model, device = self.model, self.lr.device
        self.prepared = self._prepared()  # built here, outside the side stream and the capture
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(self.warmup):  # compiles kernels and fills caches outside the capture
                model(self.lr, self.hr)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = model(self.lr, self.hr)
        self.captures += 1

    def __call__(self, lr_hsi: torch.Tensor, hr_msi: torch.Tensor) -> torch.Tensor:
        for name, static, given in (("lr_hsi", self.lr, lr_hsi), ("hr_msi", self.hr, hr_msi)):
            if given.shape != static.shape:
                raise ValueError(f"{name}: expected shape {tuple(static.shape)} (captured), got {tuple(given.shape)}")
        if self.prepared is not None and self._prepared() is not self.prepared:
            self._capture()
        self.lr.copy_(lr_hsi)
        self.hr.copy_(hr_msi)
        self.graph.replay()
        return self.out


def compile_for(model: nn.Module, lr_shape, hr_shape, dtype=torch.float32) -> GraphedForward:
    """Captures `model` for inputs of `lr_shape` (B, C, h, w) and `hr_shape` (B, M, s*h, s*w) of `dtype` in a
    CUDA graph; calling the result runs the captured forward (see `GraphedForward`). Combine with a prepared
    model for bf16/fp16 inference: `csakd.compile_for(csakd.Student(dtype=torch.bfloat16).cuda(), ...)`."""
    return GraphedForward(model, lr_shape, hr_shape, dtype)
