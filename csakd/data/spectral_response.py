"""Spectral response matrices (M x C): how each multispectral band integrates the hyperspectral bands.

Rows sum to 1, so a spectrally flat scene keeps its value and the MSI stays in the HSI's units.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# Landsat TM band ranges in nm (SPEC §6): bands 1-4, and 1-5 plus 7.
PRESETS = {
    "landsat_tm_4": ((450.0, 520.0), (520.0, 600.0), (630.0, 690.0), (770.0, 900.0)),
    "landsat_tm_6": ((450.0, 520.0), (520.0, 600.0), (630.0, 690.0), (770.0, 900.0), (1550.0, 1750.0),
                     (2090.0, 2350.0)),
}
MODELS = ("boxcar", "gaussian")
FWHM_TO_STD = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def _wavelengths(wavelengths) -> np.ndarray:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size == 0 or not np.all(np.isfinite(wl)) or wl.min() <= 0:
        raise ValueError(f"wavelengths: expected a 1-D array of positive finite band centres in nm, got "
                         f"{'shape ' + str(wl.shape) if wl.ndim != 1 else 'values ' + str(wl[:4]) + '...'}")
    return wl


def _ranges(ranges) -> tuple[tuple[float, float], ...]:
    try:
        out = tuple((float(lo), float(hi)) for lo, hi in ranges)
    except (TypeError, ValueError):
        raise ValueError(f"ranges: expected a list of (low_nm, high_nm) pairs, got {ranges!r}") from None
    if not out or any(not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi) for lo, hi in out):
        raise ValueError(f"ranges: expected non-empty (low_nm, high_nm) pairs with 0 < low < high, got {ranges!r}")
    return out


def _normalise_rows(matrix: np.ndarray, names) -> np.ndarray:
    sums = matrix.sum(axis=1)
    empty = [names[i] for i in np.flatnonzero(sums <= 0)]
    if empty:
        raise ValueError(f"wavelengths: expected at least one hyperspectral band inside every multispectral band, "
                         f"got none for {', '.join(empty)}")
    return matrix / sums[:, None]


def boxcar_response(ranges, wavelengths) -> np.ndarray:
    """Each MSI band is the mean of the HSI bands whose centre lies in [low, high] (inclusive)."""
    wl = _wavelengths(wavelengths)
    ranges = _ranges(ranges)
    matrix = np.array([(wl >= lo) & (wl <= hi) for lo, hi in ranges], dtype=np.float64)
    return _normalise_rows(matrix, [f"band {i + 1} ({lo:g}-{hi:g} nm)" for i, (lo, hi) in enumerate(ranges)])


def gaussian_response(ranges, wavelengths, fwhm=None) -> np.ndarray:
    """Each MSI band a Gaussian centred on its range with the range's width as FWHM. With the HSI bands'
    own FWHMs the weight is the overlap integral of two Gaussians: a Gaussian of the summed variances."""
    wl = _wavelengths(wavelengths)
    ranges = _ranges(ranges)
    hsi_var = np.zeros_like(wl)
    if fwhm is not None:
        fw = np.asarray(fwhm, dtype=np.float64)
        if fw.shape != wl.shape or not np.all(np.isfinite(fw)) or fw.min() < 0:
            raise ValueError(f"fwhm: expected {wl.size} non-negative values (one per band), got shape {fw.shape}")
        hsi_var = (fw * FWHM_TO_STD) ** 2
    rows = []
    for lo, hi in ranges:
        var = ((hi - lo) * FWHM_TO_STD) ** 2 + hsi_var
        rows.append(np.exp(-0.5 * (wl - 0.5 * (lo + hi)) ** 2 / var) / np.sqrt(var))
    return _normalise_rows(np.array(rows), [f"band {i + 1}" for i in range(len(ranges))])


def read_response_csv(path, wavelengths) -> np.ndarray:
    """User-given responses: a CSV whose first column is wavelength (nm) and each further column one MSI
    band's relative response (an optional header row names them). Responses are interpolated linearly at
    the HSI band centres, zero outside the tabulated range, and rows normalised."""
    wl = _wavelengths(wavelengths)
    path = Path(path)
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    try:
        float(rows[0][0])
    except (IndexError, ValueError):
        rows = rows[1:]  # header row
    try:
        table = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"srf_csv: expected numeric rows 'wavelength_nm, response_1, ...' in {path}, "
                         f"got {exc}") from None
    if table.ndim != 2 or table.shape[1] < 2 or table.shape[0] < 2:
        raise ValueError(f"srf_csv: expected at least two rows of a wavelength column and one or more response "
                         f"columns in {path}, got {table.shape}")
    order = np.argsort(table[:, 0])
    table = table[order]
    if np.any(np.diff(table[:, 0]) <= 0) or np.any(table[:, 1:] < 0) or not np.all(np.isfinite(table)):
        raise ValueError(f"srf_csv: expected distinct wavelengths and finite non-negative responses in {path}")
    matrix = np.array([np.interp(wl, table[:, 0], table[:, j], left=0.0, right=0.0)
                       for j in range(1, table.shape[1])])
    return _normalise_rows(matrix, [f"column {j + 1} of {path.name}" for j in range(1, table.shape[1])])


def spectral_response(preset: str | None = "landsat_tm_4", wavelengths=None, fwhm=None, model: str = "boxcar",
                      ranges=None, csv_path=None) -> np.ndarray:
    """The (M, C) spectral response matrix for HSI band centres `wavelengths` (nm).

    Exactly one source: a `preset` (landsat_tm_4, landsat_tm_6), explicit `ranges` [(low, high), ...] in nm,
    or `csv_path` with tabulated responses. `model` shapes preset/range bands: "boxcar" (default, as the paper)
    or "gaussian" (range width as FWHM; `fwhm`, the HSI bands' FWHMs, widens it when given).
    """
    if wavelengths is None:
        raise ValueError("wavelengths: expected the HSI band centres in nm, got None")
    sources = [s for s, v in (("preset", preset), ("ranges", ranges), ("csv_path", csv_path)) if v is not None]
    if len(sources) != 1:
        raise ValueError(f"preset/ranges/csv_path: expected exactly one source of responses, got "
                         f"{sources or 'none'}")
    if csv_path is not None:
        return read_response_csv(csv_path, wavelengths)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        ranges = PRESETS[preset]
    if model == "boxcar":
        return boxcar_response(ranges, wavelengths)
    if model == "gaussian":
        return gaussian_response(ranges, wavelengths, fwhm)
    raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
