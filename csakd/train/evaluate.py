"""Evaluation with the paper's metrics (SPEC §5): predictions are de-normalised to the data's own units
(each item's "min"/"max" undo the per-image scaling), scored per image and averaged. Optional AWGN on the
inputs at a given SNR, for the robustness sweep of the paper's Table II."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from .. import metrics
from .batches import add_noise, as_chw, generator

METRICS = ("psnr", "sam", "rmse", "ergas", "ssim")
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def network_predictor(model: torch.nn.Module, device: torch.device | str = "cpu",
                      amp: torch.dtype | None = None) -> Predictor:
    """`model` as a function (1,C,h,w), (1,M,H,W) -> (1,C,H,W) on the CPU, run in eval mode without grads."""
    device = torch.device(device)

    def predict(lr: torch.Tensor, msi: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        try:
            with torch.no_grad(), autocast:
                out = model(lr.to(device), msi.to(device))
        finally:
            model.train(was_training)
        return out.float().cpu()

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
    lr = add_noise(lr, snr_db, gen)
    if noise_on == "both":
        msi = add_noise(msi, snr_db, gen)
    elif noise_on != "lr":
        raise ValueError(f"noise_on: expected 'lr' or 'both', got {noise_on!r}")
    return lr, msi


def evaluate_dataset(method, dataset, device: torch.device | str = "cpu", amp: torch.dtype | None = None,
                     snr_db: float | None = None, noise_on: str = "lr", seed: int = 0, scale: int | None = None,
                     keep_predictions: bool = False) -> dict:
    """Scores `method` (a network, or a predictor function such as a baseline) on every item of `dataset`.

    Returns {"per_image": [{"name", metric: value, ...}], "mean": {metric: average}} and, with
    `keep_predictions`, "predictions": the de-normalised (C, H, W) predictions in item order.
    """
    predict = network_predictor(method, device, amp) if isinstance(method, torch.nn.Module) else method
    rows, predictions = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        lr, msi, hr = (as_chw(k, item[k])[None] for k in ("lr_hsi", "hr_msi", "hr_hsi"))
        lr, msi = noisy_inputs(lr, msi, snr_db, noise_on, seed, index)
        pred = predict(lr, msi)
        lo, hi = _range(item)
        pred, hr = denormalise(pred, lo, hi), denormalise(hr, lo, hi)
        s = scale if scale is not None else hr.shape[-1] // lr.shape[-1]
        values = metrics.evaluate_all(pred, hr, scale=s)
        rows.append({"name": str(item.get("name", index)), **{k: values[k] for k in METRICS}})
        if keep_predictions:
            predictions.append(pred[0].float())
    result = {"per_image": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in METRICS}}
    if keep_predictions:
        result["predictions"] = predictions
    return result


def snr_sweep(method, dataset, snrs=(25, 30, 35, 40, 45), noise_on: str = "lr", **kwargs) -> dict:
    """Mean metrics at each SNR (dB): {snr: {metric: value}}."""
    return {float(snr): evaluate_dataset(method, dataset, snr_db=float(snr), noise_on=noise_on, **kwargs)["mean"]
            for snr in snrs}
