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
    order = np.argsort(x, kind="stable")
    for ax, (i, j) in zip(axes[0], pixels):
        ax.plot(x[order], truth[order, i, j], "k-", lw=2, label="ground truth")
        for name, pred in predictions.items():
            ax.plot(x[order], pred[order, i, j], lw=1, label=name)
        ax.set_title(f"pixel ({i}, {j})")
        ax.set_xlabel("wavelength (nm)" if wavelengths is not None else "band")
    axes[0, 0].set_ylabel("value")
    axes[0, -1].legend(fontsize=8)
    return _save(fig, path)


def plot_band_psnr(curves: dict[str, np.ndarray], path, wavelengths=None) -> Path:
    """PSNR per band for each method (curves averaged over the test images by the caller)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, values in curves.items():
        x = np.asarray(wavelengths) if wavelengths is not None else np.arange(len(values))
        order = np.argsort(x, kind="stable")  # AVIRIS centres are not monotonic where spectrometers overlap
        ax.plot(x[order], np.asarray(values)[order], label=name)
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


def _csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    from .checkpoint import atomic_write_text

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_evaluation(results: dict, out_dir, truths: list[np.ndarray], wavelengths=None, figures: bool = True,
                     extra: dict | None = None) -> dict:
    """Writes metrics.json (everything but the predictions), per_image.csv, summary.csv, snr_sweep.csv when
    there is a sweep, and the figures (comparison, spectra, PSNR per band, metric vs SNR). `truths` are the
    de-normalised ground truths of the images whose predictions `results` kept. Returns the figure paths."""
    import json

    from .checkpoint import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {name: {k: v for k, v in r.items() if k != "predictions"} for name, r in results.items()}
    atomic_write_text(out / "metrics.json", json.dumps({**(extra or {}), "methods": payload}, indent=2,
                                                       default=float))
    _csv(out / "per_image.csv", [{"method": n, **row} for n, r in results.items() for row in r["per_image"]])
    _csv(out / "summary.csv", [{"method": n, **r["mean"]} for n, r in results.items()])
    sweeps = {n: r["snr_sweep"] for n, r in results.items() if "snr_sweep" in r}
    if sweeps:
        _csv(out / "snr_sweep.csv", [{"method": n, "snr_db": snr, **m} for n, s in sweeps.items()
                                     for snr, m in s.items()])
    paths = {}
    if not figures:
        return paths
    fig_dir = out / "figures"
    for k, truth in enumerate(truths):
        preds = {n: r["predictions"][k] for n, r in results.items() if len(r["predictions"]) > k}
        name = results[next(iter(results))]["per_image"][k]["name"]
        paths[f"comparison_{k}"] = plot_comparison(truth, preds, fig_dir / f"comparison_{k}.png", title=name)
        paths[f"spectra_{k}"] = plot_spectra(truth, preds, fig_dir / f"spectra_{k}.png", wavelengths=wavelengths)
    paths["band_psnr"] = plot_band_psnr({n: np.asarray(r["band_psnr"]) for n, r in results.items()},
                                        fig_dir / "band_psnr.png", wavelengths=wavelengths)
    if sweeps:
        paths["snr_sweep"] = plot_snr_sweep(sweeps, fig_dir / "snr_sweep.png")
    return paths
