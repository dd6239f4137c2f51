"""Fusion of scenes of any size in overlapping tiles, with memory bounded by the tile size.

Convolutions are local, so a tile with enough overlap reproduces the whole-image result away from its border:
neighbouring tiles split their overlap at its middle and each output pixel is written once, by the tile that owns
it (the pixel is then at least overlap/2 from that tile's border), so the output can stream to a file. The CSA attention (mode "attention") is not local: its logits
average q_i·k_j over every pixel of the image. They need only the cross-Gram Σ_n x1[n] x2[n]ᵀ and the channel
sums of x1 and x2 (`csakd.ops.csa_algebra.AttentionStats`), so a first pass accumulates those over the whole
scene (each pixel counted once, in the tile that owns it, in float64) and the second pass gives the scene's
attention to the model in every tile (`model(..., attention=)`), on whatever path the model runs: any backend,
the prepared inference path, autocast. Tiling then changes the result only through the convolutions' borders.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..ops.csa_algebra import AttentionStats, attention_from_stats


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


def scene_attention(model, lr_hsi, hr_msi, rows, cols, tile: int, device, autocast) -> torch.Tensor:
    """First pass: the query/key features of each tile, statistics over the pixels each tile owns; returns the
    scene's attention (1, heads, d, d)."""
    s = model.config.scale
    stats = None
    h, w = lr_hsi.shape[1:]
    for r, (r_lo, r_hi) in zip(rows, _owned(rows, tile, h)):
        for c, (c_lo, c_hi) in zip(cols, _owned(cols, tile, w)):
            lr = _tensor(lr_hsi[:, r:r + tile, c:c + tile], device)
            msi = _tensor(hr_msi[:, r * s:(r + tile) * s, c * s:(c + tile) * s], device)
            with autocast():
                x1, x2 = model.query_key_features(lr, msi)
            window = (slice(None), slice(None), slice((r_lo - r) * s, (r_hi - r) * s),
                      slice((c_lo - c) * s, (c_hi - c) * s))
            part = AttentionStats.of(x1[window], x2[window], torch.float64)
            stats = part if stats is None else stats + part
    params = {k: v.detach().double() for k, v in model.csa.params().items()}
    return attention_from_stats(stats, params, model.csa.heads).float()


def fuse_scene(model, lr_hsi, hr_msi, tile: int = 64, overlap: int = 8, device: torch.device | str = "cpu",
               amp: torch.dtype | None = None, out=None, progress: bool = False):
    """Fuses lr_hsi (C, h, w) and hr_msi (M, s·h, s·w) (numpy arrays, memmaps, tensors or any object sliced as
    x[:, rows, cols] with .shape and .ndim; scaled as the model was trained) into (C, s·h, s·w) float32, in tiles
    of `tile`² LR pixels overlapping by `overlap`, on whatever path `model` runs (autocast with `amp`).

    `out`: None (a new array is returned), a (C, s·h, s·w) array to fill (e.g. a memmap), or a writer with
    `write(block, (row, col, height, width))` such as `csakd.data.geo.RasterWriter`. Each output pixel is written
    once, so the working memory is bounded by the tile size.
    """
    s = check_fuse_inputs(model, lr_hsi, hr_msi, tile, overlap)
    device = torch.device(device)
    c_bands, (h, w) = lr_hsi.shape[0], lr_hsi.shape[1:]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    if out is None:
        out = np.zeros((c_bands, h * s, w * s), dtype=np.float32)
    elif not hasattr(out, "write") and tuple(out.shape) != (c_bands, h * s, w * s):
        raise ValueError(f"out: expected shape {(c_bands, h * s, w * s)}, got {tuple(out.shape)}")

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    def emit(block, top, left):
        if hasattr(out, "write"):
            out.write(block, (top, left, block.shape[1], block.shape[2]))
        else:
            out[:, top:top + block.shape[1], left:left + block.shape[2]] = block

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            attention = None
            if model.config.csa == "attention":
                attention = scene_attention(model, lr_hsi, hr_msi, rows, cols, tile, device, autocast)
            positions = [(r, rs, c, cs) for r, rs in zip(rows, _owned(rows, th, h))
                         for c, cs in zip(cols, _owned(cols, tw, w))]
            if progress:
                from tqdm.auto import tqdm

                positions = tqdm(positions, desc="tiles", unit="tile", leave=False)
            for r, (r_lo, r_hi), c, (c_lo, c_hi) in positions:
                lr = _tensor(lr_hsi[:, r:r + th, c:c + tw], device)
                msi = _tensor(hr_msi[:, r * s:(r + th) * s, c * s:(c + tw) * s], device)
                with autocast():
                    pred = model(lr, msi, attention=attention)[0]
                owned = pred[:, (r_lo - r) * s:(r_hi - r) * s, (c_lo - c) * s:(c_hi - c) * s]
                emit(owned.float().cpu().numpy(), r_lo * s, c_lo * s)
    finally:
        model.train(was_training)
    return out
