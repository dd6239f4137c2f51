"""The one value scaling of csakd, applied identically by training, evaluation and fusion (docs/data.md).

The network sees `(x - lo) / (hi - lo)` for all three images of a pair (LR-HSI, HR-MSI and, in training, the
HR-HSI target), and its output is mapped back with `y * (hi - lo) + lo`. (lo, hi) is a function of what exists
at inference time:

    "lr_range"   the LR-HSI's own min and max, per image (per scene in `csakd fuse`): the default;
    "fixed"      a physical range (lo, hi) recorded with the model, e.g. (0, 10000) for reflectance x 10000,
                 the same for every image and tile.

The rule is saved in the model's config (`ModelConfig.normalisation`), so `csakd eval` and `csakd fuse` scale
inputs as the network was trained. (The paper scales by the ground truth's min/max, which does not exist at
inference time; the metrics are computed in the data's own units either way.)

A units mismatch between the two inputs (an HR-MSI in digital numbers against an LR-HSI in reflectance) is
refused by `check_units`: the MSI must be close to the LR-HSI seen through the sensor's spectral response.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("lr_range", "fixed")
# The largest factor between the MSI and the spectrally projected LR-HSI accepted as "the same units":
# atmospheric and calibration differences between two sensors stay well inside it, a unit change (x100,
# x10000, DN vs reflectance) is far outside.
UNITS_TOLERANCE = 3.0


@dataclass(frozen=True)
class Normalisation:
    rule: str = "lr_range"
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"normalisation: expected a rule in {RULES}, got {self.rule!r}")
        if self.rule == "fixed":
            if self.lo is None or self.hi is None or not float(self.hi) > float(self.lo):
                raise ValueError(f"normalisation: rule 'fixed' needs lo < hi, got lo={self.lo!r}, hi={self.hi!r}")
        elif self.lo is not None or self.hi is not None:
            raise ValueError(f"normalisation: rule {self.rule!r} takes no range, got lo={self.lo!r}, hi={self.hi!r}")

    @classmethod
    def parse(cls, value) -> "Normalisation":
        """From a config value: None, "lr_range", "fixed:LO,HI", [rule, lo, hi] or a Normalisation."""
        if value is None:
            return cls()
        if isinstance(value, Normalisation):
            return value
        if isinstance(value, str):
            rule, _, rest = value.partition(":")
            if rule == "fixed" and rest:
                try:
                    lo, hi = (float(v) for v in rest.split(","))
                except ValueError:
                    raise ValueError(f"normalisation: expected 'fixed:LO,HI', got {value!r}") from None
                return cls("fixed", lo, hi)
            return cls(rule)
        if isinstance(value, (list, tuple)) and value:
            return cls(value[0], *(float(v) for v in value[1:]))
        raise ValueError(f"normalisation: expected 'lr_range' or 'fixed:LO,HI', got {value!r}")

    def to_config(self) -> tuple:
        return (self.rule,) if self.rule != "fixed" else (self.rule, float(self.lo), float(self.hi))

    def __str__(self) -> str:
        return self.rule if self.rule != "fixed" else f"fixed:{self.lo:g},{self.hi:g}"

    def range_of(self, lr_hsi) -> tuple[float, float]:
        """(lo, hi) for an image or scene whose LR-HSI is `lr_hsi` (array or tensor, any layout), or whose
        LR-HSI's (min, max) is given as a pair."""
        if self.rule == "fixed":
            return float(self.lo), float(self.hi)
        if isinstance(lr_hsi, tuple) and len(lr_hsi) == 2:
            lo, hi = (float(v) for v in lr_hsi)
        else:
            lo, hi = float(lr_hsi.min()), float(lr_hsi.max())
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError("lr_hsi: expected finite values, found NaN or Inf")
        return (lo, hi) if hi > lo else (lo, lo + 1.0)  # a constant image: shift only

    @staticmethod
    def apply(x, lo: float, hi: float):
        return (x - lo) / (hi - lo)

    @staticmethod
    def undo(y, lo: float, hi: float):
        return y * (hi - lo) + lo


def _block_mean(msi: np.ndarray, scale: int) -> np.ndarray:
    m, h, w = msi.shape
    return msi[:, :h // scale * scale, :w // scale * scale].reshape(m, h // scale, scale, w // scale, scale) \
        .mean(axis=(2, 4))


def units_factor(lr_hsi: np.ndarray, hr_msi: np.ndarray, scale: int, srf: np.ndarray | None = None) -> np.ndarray:
    """Per MSI band, the factor a with MSI ≈ a * (LR-HSI seen by that band): least squares over the LR grid
    against `srf @ lr_hsi` (srf: M x C, rows summing to 1), or without a spectral response against the LR-HSI's
    mean over bands (coarser: a band of a dark region differs from the mean by more)."""
    lr = np.asarray(lr_hsi, dtype=np.float64)
    msi = _block_mean(np.asarray(hr_msi, dtype=np.float64), scale)
    h, w = min(lr.shape[1], msi.shape[1]), min(lr.shape[2], msi.shape[2])
    lr, msi = lr[:, :h, :w].reshape(lr.shape[0], -1), msi[:, :h, :w].reshape(msi.shape[0], -1)
    projected = srf @ lr if srf is not None else np.repeat(lr.mean(0, keepdims=True), msi.shape[0], axis=0)
    num, den = (msi * projected).sum(1), (projected * projected).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def check_units(lr_hsi: np.ndarray, hr_msi: np.ndarray, scale: int, srf: np.ndarray | None = None,
                tolerance: float | None = None) -> None:
    """ValueError when the HR-MSI is not in the LR-HSI's units (see `units_factor`), showing both ranges and
    the factor to rescale by. (C, h, w) and (M, s*h, s*w) arrays; a subsample of the scene is enough."""
    tolerance = tolerance or (UNITS_TOLERANCE if srf is not None else 2 * UNITS_TOLERANCE)
    factors = units_factor(lr_hsi, hr_msi, scale, srf)
    finite = factors[np.isfinite(factors)]
    if finite.size == 0:
        return
    typical = float(np.median(finite))
    if 1 / tolerance <= typical <= tolerance:
        return
    seen = "seen through the spectral response" if srf is not None else "averaged over bands"
    raise ValueError(
        f"hr_msi: expected values in the LR-HSI's units, got about {typical:.3g} x the LR-HSI {seen} "
        f"(HR-MSI {float(np.min(hr_msi)):.4g}..{float(np.max(hr_msi)):.4g}, LR-HSI "
        f"{float(np.min(lr_hsi)):.4g}..{float(np.max(lr_hsi)):.4g}); rescale one of them, e.g. divide the HR-MSI "
        f"by {typical:.3g} (csakd fuse --msi-scale {1 / typical:.3g})")
