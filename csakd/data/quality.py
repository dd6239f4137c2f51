"""A data-quality summary of a hyperspectral cube: negative values, all-zero or non-finite bands, bands with a
low estimated signal-to-noise ratio, and bands that no MSI band of a spectral response uses.

SNR estimate, per band: the band's mean over a robust noise standard deviation taken from differences of
horizontally neighbouring pixels, sigma = MAD(d) / (sqrt(2) * 0.6745), in dB: 20 log10(mean / sigma). A pixel
difference holds twice the noise variance (hence sqrt 2), and the median absolute deviation of Gaussian noise
is 0.6745 sigma; the median ignores the few large differences at edges. Texture at the pixel scale still adds
to sigma, so the estimate is a lower bound: a flagged band is noisy (or very textured), a smooth band is never
flagged. A band whose mean is not positive gets -inf dB (no usable signal); an all-zero band gets no estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bands import _compact, find_bad_bands

LAYOUTS = ("hwc", "chw")
SNR_THRESHOLD_DB = 20.0
MAD_TO_STD = 1.0 / (math.sqrt(2.0) * 0.6745)
# Above this many pixels per band the SNR uses evenly spaced rows: a few million differences pin the median.
MAX_SNR_PIXELS = 1 << 22
# A column whose largest weight is below this share of the matrix's largest weight feeds no MSI band (measured
# responses convolved with Gaussians have tails that never reach exactly zero).
SRF_UNUSED = 1e-6


@dataclass(frozen=True)
class QualityReport:
    """Per-band findings of `quality_report`. Indices are 0-based band positions; `labels` are the names the
    summaries print (channel numbers when known, else 1-based band numbers)."""

    bands: int
    pixels: int
    labels: tuple[int, ...]
    label_kind: str
    wavelengths: tuple[float, ...] | None
    negative_counts: tuple[int, ...]
    all_zero: tuple[int, ...]
    non_finite: tuple[int, ...]
    snr_db: tuple[float, ...]
    snr_threshold_db: float
    unused_by_srf: tuple[int, ...] | None
    worst: int = 5

    @property
    def negative_count(self) -> int:
        return int(sum(self.negative_counts))

    @property
    def negative_fraction(self) -> float:
        return self.negative_count / max(1, self.bands * self.pixels)

    @property
    def negative_bands(self) -> tuple[int, ...]:
        return tuple(i for i, n in enumerate(self.negative_counts) if n)

    @property
    def low_snr(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.snr_db) if s < self.snr_threshold_db)  # NaN compares False

    def _band(self, i: int) -> dict:
        out = {self.label_kind: self.labels[i]}
        if self.wavelengths is not None:
            out["wavelength_nm"] = round(self.wavelengths[i], 2)
        return out

    def worst_negative(self) -> list[int]:
        """The bands with the most negative values, most first (at most `worst`)."""
        return sorted(self.negative_bands, key=lambda i: -self.negative_counts[i])[:self.worst]

    def lowest_snr(self) -> list[int]:
        return sorted(self.low_snr, key=lambda i: self.snr_db[i])[:self.worst]

    def to_dict(self) -> dict:
        """A JSON-able summary (for a dataset's manifest): -inf and missing SNRs become None."""
        def names(indices):
            return [self.labels[i] for i in indices]

        return {
            "bands": self.bands, "pixels": self.pixels, "band_labels": self.label_kind,
            "negative_values": {
                "count": self.negative_count, "fraction": self.negative_fraction,
                "bands": len(self.negative_bands),
                "worst": [{**self._band(i), "count": self.negative_counts[i],
                           "fraction": self.negative_counts[i] / max(1, self.pixels)} for i in self.worst_negative()]},
            "all_zero": names(self.all_zero), "non_finite": names(self.non_finite),
            "low_snr": {"threshold_db": self.snr_threshold_db,
                        "estimator": "band mean / (MAD of horizontal neighbour differences / (sqrt(2) * 0.6745))",
                        self.label_kind + "s": names(self.low_snr),
                        "lowest": [{**self._band(i), "snr_db": _finite_or_none(self.snr_db[i])}
                                   for i in self.lowest_snr()]},
            "snr_db": [_finite_or_none(s) for s in self.snr_db],
            "unused_by_srf": None if self.unused_by_srf is None else names(self.unused_by_srf),
        }


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 2) if math.isfinite(value) else None


def _noise_std(band: np.ndarray) -> float:
    """Robust noise std of one (H, W) band from neighbour differences (vertical ones for a one-column band)."""
    d = band[:, 1:] - band[:, :-1] if band.shape[1] > 1 else band[1:, :] - band[:-1, :]
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    return float(np.median(np.abs(d - np.median(d)))) * MAD_TO_STD


def band_snr_db(band: np.ndarray) -> float:
    """The module's SNR estimate (dB) of one (H, W) band; NaN when it holds no finite value or is all zero."""
    band = np.asarray(band, dtype=np.float64)
    finite = band[np.isfinite(band)]
    if finite.size == 0 or not np.any(finite):
        return math.nan
    mean = float(finite.mean())
    if mean <= 0:
        return -math.inf
    sigma = _noise_std(band)
    if math.isnan(sigma):
        return math.nan
    return math.inf if sigma == 0 else 20.0 * math.log10(mean / sigma)


def _hwc(cube, layout: str) -> np.ndarray:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS} ((H, W, bands) or (bands, H, W)), got {layout!r}")
    cube = np.asarray(cube)
    if cube.ndim != 3 or cube.size == 0:
        raise ValueError(f"cube: expected a non-empty 3-D array ({'H, W, bands' if layout == 'hwc' else 'bands, H, W'}"
                         f"), got shape {cube.shape}")
    if not (np.issubdtype(cube.dtype, np.integer) or np.issubdtype(cube.dtype, np.floating)):
        raise ValueError(f"cube: expected integer or floating values, got {cube.dtype}")
    return cube if layout == "hwc" else np.moveaxis(cube, 0, -1)


def quality_report(cube, wavelengths=None, srf=None, layout: str = "hwc", channels=None,
                   snr_threshold_db: float = SNR_THRESHOLD_DB, worst: int = 5) -> QualityReport:
    """Quality findings for a cube, (H, W, bands) by default as files store it, or (bands, H, W) with
    layout="chw" as tensors do.

    wavelengths: band centres (nm), one per band, to name bands in the summaries.
    srf: an (M, bands) spectral response; bands none of its MSI bands uses are reported.
    channels: sensor channel numbers, one per band, to name bands by channel.
    snr_threshold_db: bands whose estimated SNR (module docstring) is below it are flagged.
    worst: how many bands the summaries list for negative values and low SNR.
    """
    x = _hwc(cube, layout)
    h, w, bands = x.shape
    if not isinstance(snr_threshold_db, (int, float)) or not math.isfinite(snr_threshold_db):
        raise ValueError(f"snr_threshold_db: expected a finite number of dB, got {snr_threshold_db!r}")
    if not isinstance(worst, int) or worst < 1:
        raise ValueError(f"worst: expected a positive integer, got {worst!r}")
    wl = None
    if wavelengths is not None:
        wl = np.asarray(wavelengths, dtype=np.float64)
        if wl.shape != (bands,):
            raise ValueError(f"wavelengths: expected {bands} band centres (one per band), got shape {wl.shape}")
    unused = None
    if srf is not None:
        m = np.asarray(srf, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != bands or not np.all(np.isfinite(m)):
            raise ValueError(f"srf: expected a finite (M, {bands}) matrix (one column per band), got shape {m.shape}")
        unused = tuple(int(i) for i in np.flatnonzero(m.max(axis=0) <= SRF_UNUSED * max(m.max(), 0.0)))
    bad = find_bad_bands(x, channels=channels)
    step = max(1, math.ceil(h * w / MAX_SNR_PIXELS))
    negative, snr = [], []
    for b in range(bands):
        band = x[:, :, b]
        negative.append(int(np.count_nonzero(band < 0)))  # NaN < 0 is False: only real negatives count
        snr.append(math.nan if b in bad.all_zero else band_snr_db(band[::step]))
    return QualityReport(bands=bands, pixels=h * w, labels=bad.labels, label_kind=bad.label_kind,
                         wavelengths=None if wl is None else tuple(float(v) for v in wl),
                         negative_counts=tuple(negative), all_zero=bad.all_zero, non_finite=bad.non_finite,
                         snr_db=tuple(snr), snr_threshold_db=float(snr_threshold_db), unused_by_srf=unused,
                         worst=worst)


def format_quality(report: QualityReport, name: str | None = None) -> str:
    """A one-paragraph console summary of a QualityReport."""
    kind = "channel" if report.label_kind == "channel" else "band"
    kinds = "channels" if kind == "channel" else "bands"

    def label(i):
        text = f"{kind} {report.labels[i]}"
        return text + (f" ({report.wavelengths[i]:.0f} nm)" if report.wavelengths is not None else "")

    def listed(indices):
        return _compact(report.labels[i] for i in indices)

    parts = []
    if report.negative_count:
        worst = ", ".join(f"{label(i)}: {report.negative_counts[i]}" for i in report.worst_negative())
        parts.append(f"{report.negative_count} negative values ({report.negative_fraction:.2%}) in "
                     f"{len(report.negative_bands)} {kinds}, most in {worst}")
    else:
        parts.append("no negative values")
    parts.append(f"all-zero {kinds}: {listed(report.all_zero)}" if report.all_zero else f"no all-zero {kinds}")
    if report.non_finite:
        parts.append(f"{kinds} with NaN/Inf: {listed(report.non_finite)}")
    if report.low_snr:
        lowest = ", ".join(f"{label(i)}: {report.snr_db[i]:.1f} dB" for i in report.lowest_snr())
        parts.append(f"low SNR (< {report.snr_threshold_db:g} dB, band mean over a robust noise estimate) in "
                     f"{kinds} {listed(report.low_snr)}, lowest {lowest}")
    else:
        parts.append(f"no {kind} below {report.snr_threshold_db:g} dB estimated SNR")
    if report.unused_by_srf is not None:
        parts.append(f"{len(report.unused_by_srf)} {kinds} outside every MSI band"
                     + (f" ({listed(report.unused_by_srf)})" if report.unused_by_srf else ""))
    head = f"quality of {name}" if name else "quality"
    return f"{head} ({report.bands} {kinds}, {report.pixels} pixels): " + "; ".join(parts) + "."
