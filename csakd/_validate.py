"""Input checks shared by every public entry point. Each raises ValueError naming the argument, what was
expected and what came."""
from __future__ import annotations

import torch


def check_float_tensor(name: str, x, ndim: int | None = None, channels: int | None = None,
                       finite: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (dim 1), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    # The finiteness check syncs with the device; skip it while tracing for torch.compile and while capturing a
    # CUDA graph (csakd.compile_for), where a sync is an error.
    if (finite and x.device.type != "meta" and not torch.compiler.is_compiling() and x.numel()
            and not (x.device.type == "cuda" and torch.cuda.is_current_stream_capturing())
            and not bool(torch.isfinite(x).all())):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def check_fusion_inputs(lr_hsi, hr_msi, bands: int, msi_bands: int, scale: int) -> None:
    """lr_hsi (B, bands, h, w) and hr_msi (B, msi_bands, scale*h, scale*w)."""
    check_float_tensor("lr_hsi", lr_hsi, ndim=4, channels=bands)
    check_float_tensor("hr_msi", hr_msi, ndim=4, channels=msi_bands)
    if hr_msi.shape[0] != lr_hsi.shape[0]:
        raise ValueError(f"hr_msi: expected batch size {lr_hsi.shape[0]} (that of lr_hsi), got {hr_msi.shape[0]}")
    h, w = lr_hsi.shape[-2:]
    if tuple(hr_msi.shape[-2:]) != (scale * h, scale * w):
        raise ValueError(f"hr_msi: expected spatial size {(scale * h, scale * w)} (scale {scale} x lr_hsi "
                         f"{(h, w)}), got {tuple(hr_msi.shape[-2:])}")
    if hr_msi.dtype != lr_hsi.dtype or hr_msi.device != lr_hsi.device:
        raise ValueError(f"hr_msi: expected dtype {lr_hsi.dtype} on {lr_hsi.device} (as lr_hsi), "
                         f"got {hr_msi.dtype} on {hr_msi.device}")


def check_triton_device(name: str, x, like, like_name: str, interpreted: bool) -> None:
    """A fused kernel's tensor argument: on the device of `like` (the argument named `like_name`), and on a GPU
    unless the Triton interpreter runs the kernels."""
    if x.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device} (as {like_name}), got {x.device}")
    if x.device.type != "cuda" and not interpreted:
        raise ValueError(f"{name}: expected a CUDA tensor (CPU tensors need TRITON_INTERPRET=1 set before Triton "
                         f"is imported), got {x.device}")


def from_known_keys(cls, d: dict):
    """A dataclass config from a dict, refusing keys it does not know (a typo would otherwise be ignored)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
    return cls(**d)
