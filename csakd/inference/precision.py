"""What `--precision` means for inference (`csakd eval`, `csakd fuse`): the prepared path in bf16/fp16, or the
plain fp32 forward. Metrics reported against the paper are fp32 unless another precision is asked for; a fused
product defaults to bf16 on a GPU."""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_dtype(precision: str, device: torch.device, auto: str) -> torch.dtype:
    """The compute dtype for `precision` on `device`; "auto" means `auto`: "fp32"; "gpu-bf16" (bf16 on a GPU that
    supports it, else fp32); or "native-bf16" (bf16 wherever the device computes it natively: such a GPU, or a
    CPU with AVX-512 BF16 or AMX; else fp32; the rule of `DTSNet(dtype="auto")`, see
    `csakd.inference.cpu.auto_dtype`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    if auto == "native-bf16":
        from .cpu import auto_dtype

        return auto_dtype(device)
    if auto == "gpu-bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """The `--precision` name of a compute dtype: "fp32", "bf16" or "fp16"."""
    return next(name for name, d in _DTYPES.items() if d == dtype)


def set_precision(model, dtype: torch.dtype):
    """`model` ready to run inference in `dtype`: the prepared path for bf16/fp16, the module path for fp32."""
    if dtype == torch.float32:
        model.inference_dtype = None
        return model.eval()
    return model.prepare(dtype)
