"""The one dispatch point: which implementation runs the CLRAs, the CSA fusion and the losses.

Backends: "reference" (plain PyTorch, the oracle), "triton" (fused Triton CSA and losses), "cuda" (the
C++/CUDA CLRB extension, with Triton where available), "auto" (the fastest available for the device).
"""
from .backend import Backend, available_backends, get_backend, resolve, resolve_name, set_backend

__all__ = ["Backend", "available_backends", "get_backend", "resolve", "resolve_name", "set_backend"]
