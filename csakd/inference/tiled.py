"""Fusion of scenes of any size in overlapping tiles, with memory bounded by the tile size.

Convolutions are local, so a tile with enough overlap reproduces the whole-image result away from its border,
and the overlaps are blended with linear ramps. The CSA attention (mode "attention") is not local: its logits
average q_i·k_j over every pixel of the image. They need only the cross-Gram Σ_n x1[n] x2[n]ᵀ and the channel
sums of x1 and x2 (SPEC §2), so a first pass accumulates those over the whole scene (each pixel counted once,
in the tile that owns it) and the second pass applies the scene's attention in every tile. Tiling then
changes the result only through the convolutions' borders.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size), neighbours overlapping by >= `overlap`."""
    if tile >= size:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _owned(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The part of each tile that owns its pixels: neighbours split their overlap at its middle."""
    bounds = []
    for k, start in enumerate(starts):
        lo = 0 if k == 0 else (start + starts[k - 1] + tile) // 2
        hi = size if k == len(starts) - 1 else (starts[k + 1] + start + tile) // 2
        bounds.append((lo, hi))
    return bounds


def _ramp(length: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    """Blending weights along one axis of a tile: linear ramps over the overlap on sides with a neighbour."""
    x = np.arange(length, dtype=np.float64) + 0.5
    w = np.ones(length)
    if overlap > 0 and left:
        w = np.minimum(w, x / overlap)
    if overlap > 0 and right:
        w = np.minimum(w, (length - x) / overlap)
    return np.maximum(w, 1e-3)


def _tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x[None].to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)


def check_fuse_inputs(model, lr_hsi, hr_msi, tile: int, overlap: int) -> int:
    """Refuses a tiling or images `model` cannot fuse, with a message naming the argument; returns the scale."""
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"tile/overlap: expected tile >= 1 and 0 <= overlap < tile, got {tile} and {overlap}")
    cfg = model.config
    if lr_hsi.ndim != 3 or hr_msi.ndim != 3:
        raise ValueError(f"lr_hsi/hr_msi: expected (bands, height, width) images, got shapes "
                         f"{tuple(lr_hsi.shape)} and {tuple(hr_msi.shape)}")
    if lr_hsi.shape[0] != cfg.bands:
        raise ValueError(f"lr_hsi: expected {cfg.bands} bands (the checkpoint's), got {lr_hsi.shape[0]}")
    if hr_msi.shape[0] != cfg.msi_bands:
        raise ValueError(f"hr_msi: expected {cfg.msi_bands} bands (the checkpoint's), got {hr_msi.shape[0]}")
    h, w = lr_hsi.shape[1:]
    if tuple(hr_msi.shape[1:]) != (cfg.scale * h, cfg.scale * w):
        raise ValueError(f"hr_msi: expected size {(cfg.scale * h, cfg.scale * w)} (scale {cfg.scale} x the "
                         f"LR-HSI's {(h, w)}), got {tuple(hr_msi.shape[1:])}")
    return cfg.scale


class SceneAttention:
    """Accumulates Σ x1 x2ᵀ, Σ x1, Σ x2 and the pixel count over tiles; yields the scene's attention."""

    def __init__(self, nf: int, device):
        self.gram = torch.zeros(nf, nf, dtype=torch.float64, device=device)
        self.sum1 = torch.zeros(nf, dtype=torch.float64, device=device)
        self.sum2 = torch.zeros(nf, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x1: torch.Tensor, x2: torch.Tensor) -> None:
        a, b = x1.double().flatten(1), x2.double().flatten(1)
        self.gram += a @ b.T
        self.sum1 += a.sum(1)
        self.sum2 += b.sum(1)
        self.count += a.shape[1]

    def weights(self, params: dict, heads: int) -> torch.Tensor:
        """softmax_j(mean_n(q_i k_j) / sqrt(d)) per head, (heads, d, d), from the accumulated statistics:
        Σ q kᵀ = Wq G Wkᵀ + Wq s1 bkᵀ + bq (Wk s2)ᵀ + n bq bkᵀ."""
        wq, bq, wk, bk = (params[k].double() for k in ("wq", "bq", "wk", "bk"))
        qk = wq @ self.gram @ wk.T + torch.outer(wq @ self.sum1, bk) + torch.outer(bq, wk @ self.sum2) \
            + self.count * torch.outer(bq, bk)
        d = qk.shape[0] // heads
        blocks = torch.stack([qk[h * d:(h + 1) * d, h * d:(h + 1) * d] for h in range(heads)])
        return (blocks / (self.count * math.sqrt(d))).softmax(dim=-1)


def csa_given_attention(x1, x2, x3, x4, params: dict, attention: torch.Tensor) -> torch.Tensor:
    """The CSA output with a fixed attention (heads, d, d): att = M x3 + c + x4 with
    M = Wo·blockdiag(A)·Wv and c = Wo·blockdiag(A)·bv + bo, then the gate."""
    mix = torch.block_diag(*attention.double())
    wo = params["wo"].double()
    m = (wo @ mix @ params["wv"].double()).to(x3.dtype)
    c = (wo @ mix @ params["bv"].double() + params["bo"].double()).to(x3.dtype)
    att = F.conv2d(x3, m[:, :, None, None], c) + x4
    gate = torch.sigmoid(F.conv2d(torch.cat([x1, x2, x3, att], 1), params["wg"][:, :, None, None], params["bg"]))
    return gate[:, 0:1] * x1 + gate[:, 1:2] * x2 + gate[:, 2:3] * x3 + gate[:, 3:4] * att


def _scene_attention(model, lr_hsi, hr_msi, rows, cols, tile, device, autocast):
    """First pass: the h and m branches on each tile, statistics over the pixels each tile owns."""
    cfg = model.config
    s = cfg.scale
    stats = SceneAttention(cfg.nf, device)
    h, w = lr_hsi.shape[1:]
    row_own, col_own = _owned(rows, tile, h), _owned(cols, tile, w)
    for r, (r_lo, r_hi) in zip(rows, row_own):
        for c, (c_lo, c_hi) in zip(cols, col_own):
            lr = _tensor(lr_hsi[:, r:r + tile, c:c + tile], device)
            msi = _tensor(hr_msi[:, r * s:(r + tile) * s, c * s:(c + tile) * s], device)
            clra = ops.resolve(model.backend, lr).clra
            with autocast():
                x1 = F.interpolate(model.branches["h"](lr, clra), size=msi.shape[-2:], mode="nearest")
                x2 = model.branches["m"](msi, clra)
            window = (slice(None), slice(None), slice((r_lo - r) * s, (r_hi - r) * s),
                      slice((c_lo - c) * s, (c_hi - c) * s))
            stats.add(x1[window][0], x2[window][0])
    return stats.weights(model.csa.params(), model.csa.heads)


def fuse_scene(model, lr_hsi, hr_msi, tile: int = 64, overlap: int = 8, device: torch.device | str = "cpu",
               amp: torch.dtype | None = None, out: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """Fuses lr_hsi (C, h, w) and hr_msi (M, s·h, s·w) (numpy arrays, memmaps or tensors, scaled as the model
    was trained) into (C, s·h, s·w) float32, in tiles of `tile`² LR pixels overlapping by `overlap`.

    `out`, if given, is the (C, s·h, s·w) float32 array to fill (e.g. a memmap); the working memory is then
    bounded by the tile size.
    """
    s = check_fuse_inputs(model, lr_hsi, hr_msi, tile, overlap)
    device = torch.device(device)
    c_bands, (h, w) = lr_hsi.shape[0], lr_hsi.shape[1:]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    if out is None:
        out = np.zeros((c_bands, h * s, w * s), dtype=np.float32)
    elif out.shape != (c_bands, h * s, w * s):
        raise ValueError(f"out: expected shape {(c_bands, h * s, w * s)}, got {tuple(out.shape)}")
    else:
        out[...] = 0
    weight_sum = np.zeros((h * s, w * s), dtype=np.float32)

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    was_training = model.training
    model.eval()
    hook, applied = None, []
    try:
        with torch.no_grad():
            if model.config.csa == "attention":
                attention = _scene_attention(model, lr_hsi, hr_msi, rows, cols, tile, device, autocast)
                params = model.csa.params()

                def scene_csa(_module, inputs, _tile_output):
                    applied.append(True)
                    return csa_given_attention(*inputs, params, attention.to(inputs[0].device))

                hook = model.csa.register_forward_hook(scene_csa)
            positions = [(r, c) for r in rows for c in cols]
            if progress:
                from tqdm.auto import tqdm

                positions = tqdm(positions, desc="tiles", unit="tile", leave=False)
            for r, c in positions:
                lr = _tensor(lr_hsi[:, r:r + th, c:c + tw], device)
                msi = _tensor(hr_msi[:, r * s:(r + th) * s, c * s:(c + tw) * s], device)
                with autocast():
                    pred = model(lr, msi)[0].float().cpu().numpy()
                if hook is not None and not applied:
                    raise RuntimeError(f"backend {model.backend!r} runs the CSA without calling its module, so the "
                                       f"scene-wide attention cannot be applied; fuse with backend 'reference'")
                wy = _ramp(th * s, overlap * s, r > 0, r + th < h)
                wx = _ramp(tw * s, overlap * s, c > 0, c + tw < w)
                weight = np.outer(wy, wx).astype(np.float32)
                window = (slice(r * s, (r + th) * s), slice(c * s, (c + tw) * s))
                out[(slice(None), *window)] += pred * weight
                weight_sum[window] += weight
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    for y in range(0, h * s, tile * s):  # normalise in row strips: no full-size temporary
        out[:, y:y + tile * s] /= weight_sum[None, y:y + tile * s]
    return out
