"""Plots of hyperspectral data (PNG, matplotlib's Agg canvas, no pyplot state): a false-colour picture of a
cube chosen by wavelength, the spectral response curves of the MSI bands over the HSI band centres, and
per-pixel spectra.

Cubes are numpy arrays laid out (H, W, bands), as files are, or torch tensors laid out (bands, H, W), as the
networks use. Wavelengths are band centres in nm, one per band, in any order (AVIRIS's are not
sorted where its spectrometers overlap); curves are drawn in wavelength order and broken across the gaps of
dropped bands.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Red, green, blue of a natural-colour picture, in nm.
NATURAL_RGB_NM = (640.0, 550.0, 460.0)
COLOUR_INFRARED_NM = (860.0, 650.0, 550.0)


def _hwb(cube) -> np.ndarray:
    try:
        import torch

        if isinstance(cube, torch.Tensor):
            if cube.ndim != 3:
                raise ValueError(f"cube: expected a (bands, H, W) tensor, got shape {tuple(cube.shape)}")
            cube = cube.detach().cpu()
            if cube.dtype in (torch.bfloat16, torch.float16):
                cube = cube.float()  # numpy has no bfloat16
            return cube.numpy().transpose(1, 2, 0)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube: expected an (H, W, bands) array, got shape {cube.shape}")
    return cube


def _wavelengths(wavelengths, bands: int) -> np.ndarray:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.shape != (bands,) or not np.all(np.isfinite(wl)):
        raise ValueError(f"wavelengths: expected {bands} finite band centres in nm, got shape {wl.shape}")
    return wl


def rgb_band_indices(wavelengths, rgb_nm=NATURAL_RGB_NM) -> tuple[int, int, int]:
    """The bands whose centres are closest to the red, green and blue wavelengths asked for."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    return tuple(int(np.argmin(np.abs(wl - target))) for target in rgb_nm)


def false_colour(cube, wavelengths, rgb_nm=NATURAL_RGB_NM, percentiles=(2.0, 98.0)) -> np.ndarray:
    """(H, W, 3) float image in [0, 1]: the bands nearest `rgb_nm`, each stretched between its percentiles."""
    data = _hwb(cube)
    wl = _wavelengths(wavelengths, data.shape[2])
    out = np.empty(data.shape[:2] + (3,))
    for k, band in enumerate(rgb_band_indices(wl, rgb_nm)):
        lo, hi = np.percentile(data[:, :, band], percentiles)
        out[:, :, k] = (data[:, :, band] - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(out, 0.0, 1.0)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _broken_line(wl: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by wavelength, with NaN inserted where consecutive centres are more than 3 median steps apart
    (dropped water-vapour bands), so lines do not bridge the gaps."""
    order = np.argsort(wl, kind="stable")
    x, y = wl[order], np.asarray(values, dtype=np.float64)[..., order]
    if x.size < 3:
        return x, y
    steps = np.diff(x)
    gaps = np.flatnonzero(steps > 3 * np.median(steps[steps > 0]))
    x = np.insert(x, gaps + 1, np.nan)
    y = np.insert(y, gaps + 1, np.nan, axis=-1)
    return x, y


def save_false_colour(path, cube, wavelengths, rgb_nm=NATURAL_RGB_NM, title: str | None = None) -> Path:
    """A PNG of the false-colour picture, the bands used named in the title."""
    data = _hwb(cube)
    wl = _wavelengths(wavelengths, data.shape[2])
    bands = rgb_band_indices(wl, rgb_nm)
    h, w = data.shape[:2]
    fig = _figure(6.0, 6.0 * h / w + 0.6)
    ax = fig.add_subplot()
    ax.imshow(false_colour(data, wl, rgb_nm))
    used = ", ".join(f"{c} {wl[b]:.0f} nm" for c, b in zip("RGB", bands))
    ax.set_title(f"{title + ': ' if title else ''}{used}", fontsize=9)
    ax.set_axis_off()
    return _save(fig, path)


def plot_srf(path, srf, wavelengths, labels=None, title: str | None = None) -> Path:
    """The (M, C) spectral response: each MSI band's weight on every HSI band centre, plus the centres as a
    rug, so empty and overlapping ranges are visible."""
    srf = np.asarray(srf, dtype=np.float64)
    if srf.ndim != 2:
        raise ValueError(f"srf: expected an (M, C) matrix, got shape {srf.shape}")
    wl = _wavelengths(wavelengths, srf.shape[1])
    labels = list(labels) if labels is not None else [f"MSI band {m + 1}" for m in range(srf.shape[0])]
    if len(labels) != srf.shape[0]:
        raise ValueError(f"labels: expected {srf.shape[0]} labels (one per MSI band), got {len(labels)}")
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    for row, label in zip(srf, labels):
        x, y = _broken_line(wl, row)
        line, = ax.plot(x, y, lw=1.4, label=label)
        ax.fill_between(x, 0, y, color=line.get_color(), alpha=0.25)
    ax.plot(wl, np.zeros_like(wl), "|", color="0.3", ms=6, label=f"{len(wl)} HSI band centres")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("weight (rows sum to 1)")
    ax.set_title(title or "spectral response of the MSI bands", fontsize=10)
    ax.set_ylim(bottom=-0.02 * max(srf.max(), 1e-12))
    ax.legend(fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_spectra(path, cube, wavelengths, pixels, labels=None, rgb_nm=NATURAL_RGB_NM, title: str | None = None,
                 ylabel: str = "value") -> Path:
    """The spectra of the given (row, col) pixels, beside a false-colour picture marking where they are."""
    data = _hwb(cube)
    wl = _wavelengths(wavelengths, data.shape[2])
    pixels = [tuple(int(v) for v in p) for p in pixels]
    h, w = data.shape[:2]
    bad = [p for p in pixels if len(p) != 2 or not (0 <= p[0] < h and 0 <= p[1] < w)]
    if not pixels or bad:
        raise ValueError(f"pixels: expected (row, col) pairs inside the {h}x{w} image, got {bad or 'none'}")
    labels = list(labels) if labels is not None else [f"({r}, {c})" for r, c in pixels]
    if len(labels) != len(pixels):
        raise ValueError(f"labels: expected {len(pixels)} labels (one per pixel), got {len(labels)}")
    fig = _figure(11.0, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.7])
    left.imshow(false_colour(data, wl, rgb_nm))
    left.set_axis_off()
    for (r, c), label in zip(pixels, labels):
        x, y = _broken_line(wl, data[r, c])
        line, = right.plot(x, y, lw=1.3, label=label)
        left.plot(c, r, "o", mfc="none", mec=line.get_color(), mew=2, ms=9)
    right.set_xlabel("wavelength (nm)")
    right.set_ylabel(ylabel)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title or "per-pixel spectra", fontsize=10)
    return _save(fig, path)
