"""Image-quality metrics of fused hyperspectral images (docs/metrics.md): PSNR, SAM, RMSE, ERGAS and SSIM.

Inputs are `pred` and `target` as torch tensors or numpy arrays (any mix of the two) shaped (C, H, W) for one
image or (B, C, H, W) for a batch, channels first (NCHW); images stored as H x W x bands must be transposed
by the caller. Integer and floating inputs are accepted and computed in float64 on the tensor's device.
Every metric is computed per image; `reduction="mean"` returns the average over the batch as a Python float,
`reduction="none"` the per-image values as a float64 numpy array of shape (B,) (B = 1 for a (C, H, W) input).
The paper computes its metrics on de-normalised images (original radiance units); undoing the per-image
min/max scaling is the caller's job.

Conventions (`convention=`, for PSNR and SSIM, the metrics that need a peak value): published tables differ by
several dB on this alone, so the choice is explicit.
- "paper": each band's peak is that band's ground-truth maximum (the paper's §IV-A-3).
- "data_range": one fixed peak, the `data_range` argument (e.g. 1.0 for data scaled to [0, 1]), as most
  fusion toolboxes compute it.
Both conventions average per-band PSNRs; they differ only in the peak.

Degenerate cases are decided, not left to NaN:
- PSNR of an exactly reproduced band is +inf, so an image with such a band has PSNR +inf and a batch mean
  containing it is +inf (never NaN: every other value is finite). Filter with `reduction="none"` if needed.
- Under "paper", a band whose ground-truth maximum is 0 has no peak: ValueError (use "data_range").
- SAM excludes pixels where either spectrum has zero norm and counts them (`return_excluded=True`); an image
  with no valid pixel has no SAM: ValueError.
- ERGAS of a band with zero ground-truth mean is undefined: ValueError.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

CONVENTIONS = ("paper", "data_range")
REDUCTIONS = ("mean", "none")

# SSIM constants of Wang et al. (2004): Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Bands filtered at once: a few MiB of float64 per quantity stays in cache (4x faster on the CPU than whole
# images) and bounds the temporaries.
_SSIM_CHUNK_ELEMENTS = 1 << 18


def _as_batch(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iuf":
            raise ValueError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name}: expected a real numeric tensor, got dtype {x.dtype}")
        t = x.detach()
    else:
        raise ValueError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if t.ndim not in (3, 4):
        raise ValueError(f"{name}: expected a (C, H, W) or (B, C, H, W) array (channels first), "
                         f"got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")
    return t if t.ndim == 4 else t.unsqueeze(0)


def _pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _as_batch("pred", pred), _as_batch("target", target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor) and pred.device != target.device:
        raise ValueError(f"target: expected the device of pred ({pred.device}), got {target.device}")
    device = pred.device if isinstance(pred, torch.Tensor) else t.device
    return p.to(device), t.to(device)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _reduce(values: torch.Tensor, reduction: str):
    return float(values.mean()) if reduction == "mean" else values.cpu().numpy()


def _reduce_counts(counts: torch.Tensor, reduction: str):
    return int(counts.sum()) if reduction == "mean" else counts.cpu().numpy()


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _peaks(target: torch.Tensor, convention: str, data_range) -> torch.Tensor:
    """(B, C) peak values of the chosen convention."""
    _check_choice("convention", convention, CONVENTIONS)
    if convention == "paper":
        if data_range is not None:
            raise ValueError(f"data_range: expected None with convention='paper' (the peak is each band's "
                             f"ground-truth maximum), got {data_range!r}")
        peak = target.amax(dim=(2, 3))
        if bool((peak == 0).any()):
            image, band = _first_index(peak == 0)
            raise ValueError(f"target: expected a nonzero maximum in every band (convention='paper' uses it as "
                             f"the peak), got 0 in image {image}, band {band}; use convention='data_range'")
        return peak
    if (data_range is None or isinstance(data_range, bool) or not isinstance(data_range, Real)
            or not math.isfinite(data_range) or data_range <= 0):
        raise ValueError(f"data_range: expected a positive finite number with convention='data_range', "
                         f"got {data_range!r}")
    return torch.full(target.shape[:2], float(data_range), dtype=target.dtype, device=target.device)


def _band_mse(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (p - t).square().mean(dim=(2, 3))


def _psnr_values(p, t, convention, data_range) -> torch.Tensor:
    peak = _peaks(t, convention, data_range)
    # peak² > 0 and mse >= 0: an exact band gives +inf, never NaN.
    return (10 * torch.log10(peak.square() / _band_mse(p, t))).mean(dim=1)


def _sam_values(p, t) -> tuple[torch.Tensor, torch.Tensor]:
    dot = (p * t).sum(dim=1)
    norms = p.norm(dim=1) * t.norm(dim=1)
    valid = norms > 0
    counts = valid.sum(dim=(1, 2))
    if bool((counts == 0).any()):
        image = _first_index(counts == 0)[0]
        raise ValueError(f"pred/target: expected at least one pixel with nonzero spectra in both, got none in "
                         f"image {image}; SAM is undefined there")
    cos = (dot / torch.where(valid, norms, torch.ones_like(norms))).clamp(-1.0, 1.0)
    angles = torch.rad2deg(torch.arccos(cos)) * valid
    return angles.sum(dim=(1, 2)) / counts, valid[0].numel() - counts


def _rmse_values(p, t) -> torch.Tensor:
    return (p - t).square().mean(dim=(1, 2, 3)).sqrt()


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a positive finite number (HR/LR resolution ratio), got {scale!r}")
    return float(scale)


def _ergas_values(p, t, scale) -> torch.Tensor:
    scale = _check_scale(scale)
    means = t.mean(dim=(2, 3))
    if bool((means == 0).any()):
        image, band = _first_index(means == 0)
        raise ValueError(f"target: expected a nonzero mean in every band (ERGAS divides by it), got 0 in image "
                         f"{image}, band {band}")
    return (100.0 / scale) * (_band_mse(p, t) / means.square()).mean(dim=1).sqrt()


def _gaussian_window() -> list[float]:
    r = SSIM_WINDOW // 2
    w = [math.exp(-(x * x) / (2 * SSIM_SIGMA ** 2)) for x in range(-r, r + 1)]
    return [v / sum(w) for v in w]


def _blur(z: torch.Tensor, window: list[float]) -> torch.Tensor:
    """Separable Gaussian over the last two axes without padding (only windows inside the image count).
    In-place shifted sums: float64 convolution on the CPU is far slower for a kernel this small."""
    r = len(window)
    w_out, h_out = z.shape[-1] - r + 1, z.shape[-2] - r + 1
    rows = z[..., :w_out] * window[0]
    for k in range(1, r):
        rows.add_(z[..., k:k + w_out], alpha=window[k])
    out = rows[..., :h_out, :] * window[0]
    for k in range(1, r):
        out.add_(rows[..., k:k + h_out, :], alpha=window[k])
    return out


def _ssim_bands(x: torch.Tensor, y: torch.Tensor, peak: torch.Tensor, window: list[float]) -> torch.Tensor:
    """Mean SSIM map of each band of x, y (n, H, W) over the positions where the window fits."""
    mx, my, mxx, myy, mxy = _blur(torch.stack([x, y, x * x, y * y, x * y]), window)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1 = (SSIM_K1 * peak).square().view(-1, 1, 1)
    c2 = (SSIM_K2 * peak).square().view(-1, 1, 1)
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2))


def _ssim_values(p, t, convention, data_range) -> torch.Tensor:
    peak = _peaks(t, convention, data_range)
    h, w = p.shape[-2:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"pred: expected a spatial size of at least {SSIM_WINDOW}x{SSIM_WINDOW} (the SSIM "
                         f"window), got {h}x{w}")
    window = _gaussian_window()
    chunk = max(1, _SSIM_CHUNK_ELEMENTS // (h * w))
    per_band = torch.stack([
        torch.cat([_ssim_bands(p[b, c:c + chunk], t[b, c:c + chunk], peak[b, c:c + chunk], window)
                   for c in range(0, p.shape[1], chunk)])
        for b in range(p.shape[0])])
    return per_band.mean(dim=1)


def psnr(pred, target, convention: str = "paper", data_range: float | None = None, reduction: str = "mean"):
    """Per image, the mean over bands of 10·log10(peak_b² / MSE_b), in dB.

    peak_b is band b's ground-truth maximum (convention="paper") or `data_range` ("data_range"). An exactly
    reproduced band gives +inf (see the module notes).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    p, t = _pair(pred, target)
    return _reduce(_psnr_values(p, t, convention, data_range), reduction)


def sam(pred, target, reduction: str = "mean", return_excluded: bool = False):
    """Spectral angle mapper in degrees: per image, the mean over pixels of the angle between the predicted
    and true spectra (cosine clipped to [-1, 1]).

    Pixels where either spectrum has zero norm are left out. With `return_excluded=True` the result is a pair
    `(sam, excluded)`: the number of pixels left out, summed over the batch (reduction="mean") or per image as
    an int64 array ("none").
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    p, t = _pair(pred, target)
    values, excluded = _sam_values(p, t)
    result = _reduce(values, reduction)
    if not return_excluded:
        return result
    return result, _reduce_counts(excluded, reduction)


def rmse(pred, target, reduction: str = "mean"):
    """Per image, sqrt(mean over all elements of (target - pred)²), in the units of the data."""
    _check_choice("reduction", reduction, REDUCTIONS)
    p, t = _pair(pred, target)
    return _reduce(_rmse_values(p, t), reduction)


def ergas(pred, target, scale: float, reduction: str = "mean"):
    """Per image, (100 / scale) · sqrt(mean_b(MSE_b / mean(target_b)²)); `scale` is the HR/LR ratio (4)."""
    _check_choice("reduction", reduction, REDUCTIONS)
    p, t = _pair(pred, target)
    return _reduce(_ergas_values(p, t, scale), reduction)


def ssim(pred, target, convention: str = "paper", data_range: float | None = None, reduction: str = "mean"):
    """Per image, the mean over bands of the single-band SSIM of Wang et al. (2004).

    Gaussian window 11 x 11 with sigma 1.5 (weights normalised to sum 1), K1 = 0.01, K2 = 0.03,
    C1 = (K1·L)², C2 = (K2·L)², population (not sample) covariances; the SSIM map is averaged over the
    positions where the window lies inside the image (as scikit-image's `structural_similarity` with
    `gaussian_weights=True, use_sample_covariance=False`). L is the band's ground-truth maximum
    (convention="paper", the same peak as PSNR) or `data_range` ("data_range"). Needs H, W >= 11.
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    p, t = _pair(pred, target)
    return _reduce(_ssim_values(p, t, convention, data_range), reduction)


def evaluate_all(pred, target, scale: float, convention: str = "paper", data_range: float | None = None,
                 reduction: str = "mean") -> dict:
    """All five metrics at once: {"psnr", "sam", "rmse", "ergas", "ssim", "sam_excluded"}.

    Inputs are checked and converted once; each value is what the single-metric function returns with the
    same arguments (`sam_excluded` as with `return_excluded=True`).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_scale(scale)
    p, t = _pair(pred, target)
    sam_values, excluded = _sam_values(p, t)
    values = {
        "psnr": _psnr_values(p, t, convention, data_range),
        "sam": sam_values,
        "rmse": _rmse_values(p, t),
        "ergas": _ergas_values(p, t, scale),
        "ssim": _ssim_values(p, t, convention, data_range),
    }
    out = {name: _reduce(v, reduction) for name, v in values.items()}
    out["sam_excluded"] = _reduce_counts(excluded, reduction)
    return out


__all__ = ["CONVENTIONS", "SSIM_K1", "SSIM_K2", "SSIM_SIGMA", "SSIM_WINDOW", "ergas", "evaluate_all", "psnr",
           "rmse", "sam", "ssim"]
