"""Figures (PNG, matplotlib's Agg backend) and Markdown tables for evaluations and the demo report.

Every figure function takes (C, H, W) numpy images in the data's units and writes one PNG; images are
false-coloured from three bands with a shared percentile stretch so prediction and truth compare fairly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def rgb_bands(bands: int) -> tuple[int, int, int]:
    """Three band indices (red, green, blue) spread over the spectrum when wavelengths are unknown."""
    return tuple(min(bands - 1, int(round(f * (bands - 1)))) for f in (0.75, 0.45, 0.15))


def false_colour(image: np.ndarray, bands: tuple[int, int, int], reference: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) in [0, 1]: the chosen bands stretched between the 1st and 99th percentiles of `reference`
    (default: the image itself), per channel."""
    ref = image if reference is None else reference
    out = np.empty(image.shape[1:] + (3,), dtype=np.float64)
    for k, b in enumerate(bands):
        lo, hi = np.percentile(ref[b], (1, 99))
        out[..., k] = (image[b] - lo) / max(hi - lo, 1e-12)
    return np.clip(out, 0, 1)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_comparison(truth: np.ndarray, predictions: dict[str, np.ndarray], path, title: str = "",
                    bands: tuple[int, int, int] | None = None) -> Path:
    """False colour of the ground truth and each prediction (top row) and each prediction's per-pixel
    RMSE over bands (bottom row, one shared colour scale)."""
    plt = _pyplot()
    bands = bands or rgb_bands(truth.shape[0])
    n = len(predictions) + 1
    errors = {k: np.sqrt(((p - truth) ** 2).mean(0)) for k, p in predictions.items()}
    vmax = max(float(np.percentile(e, 99)) for e in errors.values()) or 1.0
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    axes[0, 0].imshow(false_colour(truth, bands))
    axes[0, 0].set_title("ground truth")
    axes[1, 0].axis("off")
    for k, (name, pred) in enumerate(predictions.items(), start=1):
        axes[0, k].imshow(false_colour(pred, bands, reference=truth))
        axes[0, k].set_title(name)
        im = axes[1, k].imshow(errors[name], cmap="magma", vmin=0, vmax=vmax)
        axes[1, k].set_title(f"{name}: RMSE map")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1, 1:].tolist(), shrink=0.8, label="per-pixel RMSE")
    fig.suptitle(title or f"false colour (bands {bands[0]}, {bands[1]}, {bands[2]})")
    return _save(fig, path)


def spectra_pixels(truth: np.ndarray, count: int = 3) -> list[tuple[int, int]]:
    """Pixels with the lowest, median and highest mean radiance: different materials, deterministically."""
    brightness = truth.mean(0).ravel()
    order = np.argsort(brightness, kind="stable")
    picks = [order[int(round(q * (len(order) - 1)))] for q in np.linspace(0.05, 0.95, count)]
    return [tuple(int(v) for v in np.unravel_index(p, truth.shape[1:])) for p in picks]


def plot_spectra(truth: np.ndarray, predictions: dict[str, np.ndarray], path,
                 pixels: list[tuple[int, int]] | None = None, wavelengths=None) -> Path:
    plt = _pyplot()
    pixels = pixels or spectra_pixels(truth)
    x = np.asarray(wavelengths) if wavelengths is not None else np.arange(truth.shape[0])
    fig, axes = plt.subplots(1, len(pixels), figsize=(4.2 * len(pixels), 3.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], pixels):
        ax.plot(x, truth[:, i, j], "k-", lw=2, label="ground truth")
        for name, pred in predictions.items():
            ax.plot(x, pred[:, i, j], lw=1, label=name)
        ax.set_title(f"pixel ({i}, {j})")
        ax.set_xlabel("wavelength (nm)" if wavelengths is not None else "band")
    axes[0, 0].set_ylabel("value")
    axes[0, -1].legend(fontsize=8)
    return _save(fig, path)


def band_psnr(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """PSNR per band with the paper's peak (the band's ground-truth maximum), in dB."""
    mse = ((pred.astype(np.float64) - truth) ** 2).reshape(truth.shape[0], -1).mean(1)
    peak = truth.reshape(truth.shape[0], -1).max(1).astype(np.float64)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(peak ** 2 / mse)


def plot_band_psnr(curves: dict[str, np.ndarray], path, wavelengths=None) -> Path:
    """PSNR per band for each method (curves averaged over the test images by the caller)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, values in curves.items():
        x = np.asarray(wavelengths) if wavelengths is not None else np.arange(len(values))
        ax.plot(x, values, label=name)
    ax.set_xlabel("wavelength (nm)" if wavelengths is not None else "band")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_snr_sweep(sweeps: dict[str, dict[float, dict]], path, metrics=("psnr", "sam")) -> Path:
    """Each method's mean metrics against the input SNR."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, sweep in sweeps.items():
            snrs = sorted(sweep)
            ax.plot(snrs, [sweep[s][metric] for s in snrs], "o-", label=name)
        ax.set_xlabel("input SNR (dB)")
        ax.set_ylabel({"psnr": "PSNR (dB)", "sam": "SAM (degrees)"}.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8)
    return _save(fig, path)


def plot_training_curve(rows: list[dict], path) -> Path:
    """Validation PSNR of each network over the training steps (from the run's metrics log)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    for name in ("teacher", "student"):
        points = [(r["step"], r[f"val_{name}_psnr"]) for r in rows if f"val_{name}_psnr" in r]
        if points:
            ax.plot(*zip(*points), "o-", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def markdown_table(rows: list[dict], columns: list[str], formats: dict[str, str] | None = None) -> str:
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format(row[c], formats.get(c, "")) if isinstance(row.get(c), float) else str(row.get(c, ""))
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
