"""Evaluation with the paper's metrics (docs/metrics.md): predictions are de-normalised to the data's own units
(each item's "min"/"max" undo its scaling), scored per image and averaged. A network predicts through
`fuse_scene`, exactly as `csakd fuse` runs it (tiles of 64 LR pixels with the scene's attention; one tile for
images up to that size), so an evaluated image and a fused file of the same pair are the same numbers. Optional
AWGN on the inputs at a given SNR, for the robustness sweep of the paper's Table II."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import metrics
from ..data import add_awgn
from .batches import as_chw, generator

METRICS = ("psnr", "sam", "rmse", "ergas", "ssim")
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def network_predictor(model: torch.nn.Module, device: torch.device | str = "cpu",
                      amp: torch.dtype | None = None, tile: int = 64, overlap: int = 8) -> Predictor:
    """`model` as a function (1,C,h,w), (1,M,H,W) -> (1,C,H,W) on the CPU, run as `csakd fuse` runs it."""
    from ..inference.tiled import fuse_scene

    def predict(lr: torch.Tensor, msi: torch.Tensor) -> torch.Tensor:
        out = fuse_scene(model, lr[0], msi[0], tile=tile, overlap=overlap, device=device, amp=amp)
        return torch.from_numpy(out)[None]

    return predict


def _range(item: dict) -> tuple[float, float]:
    lo, hi = item.get("min", 0.0), item.get("max", 1.0)
    return float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])


def denormalise(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Undoes `(y - min) / (max - min)`."""
    return x.double() * (hi - lo) + lo


def noisy_inputs(lr: torch.Tensor, msi: torch.Tensor, snr_db: float | None, noise_on: str, seed: int,
                 index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with AWGN at `snr_db` on the LR-HSI ("lr") or on both inputs ("both"); the draws depend only on
    (seed, SNR, image index), so every method sees the same noisy inputs."""
    if snr_db is None:
        return lr, msi
    gen = generator(seed, 4, int(round(snr_db * 1000)), index)
    lr = add_awgn(lr, snr_db, gen)
    if noise_on == "both":
        msi = add_awgn(msi, snr_db, gen)
    elif noise_on != "lr":
        raise ValueError(f"noise_on: expected 'lr' or 'both', got {noise_on!r}")
    return lr, msi


def evaluate_dataset(method, dataset, device: torch.device | str = "cpu", amp: torch.dtype | None = None,
                     snr_db: float | None = None, noise_on: str = "lr", seed: int = 0, keep_predictions: int = 0,
                     save_to=None) -> dict:
    """Scores `method` (a network, or a predictor function such as a baseline) on every item of `dataset`.

    Returns {"per_image": [{"name", metric: value, ...}], "mean": {metric: average}, "band_psnr": PSNR per
    band averaged over the images} and "predictions": the de-normalised (C, H, W) predictions of the first
    `keep_predictions` items. With `save_to` (a folder), every de-normalised prediction is also written there as
    `<name>.npy` (H, W, bands, float32), the layout `csakd fuse` writes.
    """
    predict = network_predictor(method, device, amp) if isinstance(method, torch.nn.Module) else method
    rows, predictions, band_curves = [], [], []
    if save_to is not None:
        Path(save_to).mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        item = dataset[index]
        lr, msi, hr = (as_chw(k, item[k])[None] for k in ("lr_hsi", "hr_msi", "hr_hsi"))
        lr, msi = noisy_inputs(lr, msi, snr_db, noise_on, seed, index)
        pred = predict(lr, msi)
        lo, hi = _range(item)
        pred, hr = denormalise(pred, lo, hi), denormalise(hr, lo, hi)
        values = metrics.evaluate_all(pred, hr, scale=hr.shape[-1] // lr.shape[-1])
        rows.append({"name": str(item.get("name", index)), **{k: values[k] for k in METRICS}})
        band_curves.append(band_psnr(pred[0], hr[0]))
        image = pred[0].float().numpy()
        if index < keep_predictions:
            predictions.append(image)
        if save_to is not None:
            np.save(Path(save_to) / f"{rows[-1]['name']}.npy", image.transpose(1, 2, 0))
    return {"per_image": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in METRICS},
            "band_psnr": np.mean(band_curves, axis=0).tolist(), "predictions": predictions}


def band_psnr(pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """PSNR per band of one (C, H, W) image with the paper's peak (each band's ground-truth maximum)."""
    mse = (pred.double() - truth.double()).square().mean(dim=(1, 2))
    peak = truth.double().amax(dim=(1, 2))
    return (10 * torch.log10(peak.square() / mse)).numpy()


def ground_truths(dataset, count: int) -> list[np.ndarray]:
    """The de-normalised (C, H, W) ground truth of the first `count` items."""
    out = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        out.append(denormalise(as_chw("hr_hsi", item["hr_hsi"]), *_range(item)).float().numpy())
    return out


def evaluate_methods(methods: dict, dataset, snrs=None, noise_on: str = "lr", keep_predictions: int = 2,
                     save_to=None, **kwargs) -> dict:
    """Every method on `dataset` (noise-free), plus mean metrics at each SNR of `snrs` when given:
    {name: {"per_image", "mean", "band_psnr", "predictions"[, "snr_sweep": {snr: mean metrics}]}}."""
    results = {}
    for name, method in methods.items():
        results[name] = evaluate_dataset(method, dataset, keep_predictions=keep_predictions,
                                         save_to=None if save_to is None else Path(save_to) / name, **kwargs)
        if snrs:
            results[name]["snr_sweep"] = snr_sweep(method, dataset, snrs, noise_on, **kwargs)
    return results


def snr_sweep(method, dataset, snrs=(25, 30, 35, 40, 45), noise_on: str = "lr", **kwargs) -> dict:
    """Mean metrics at each SNR (dB): {snr: {metric: value}}."""
    return {float(snr): evaluate_dataset(method, dataset, snr_db=float(snr), noise_on=noise_on, **kwargs)["mean"]
            for snr in snrs}
