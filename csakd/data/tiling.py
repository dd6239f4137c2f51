"""Where the HR images of a dataset come from: tiles of scenes, assigned to splits without spatial leaks.

The paper cuts AVIRIS flights into 259x259 sub-images, keeps the top-left 256x256 and splits the 2,078
images at random, so neighbouring tiles of the same flight land in train and test. Here a split takes whole
scenes ("scene") or, inside every scene, a contiguous strip along its longer side ("region"), with an
optional guard band between strips; tiles are cut inside a strip and never cross into another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLIT_MODES = ("scene", "region", "none")
DEFAULT_FRACTIONS = {"train": 0.8, "test": 0.2}


@dataclass(frozen=True)
class Tile:
    """An HR window (top, left, height, width) of scene `scene`, assigned to `split`."""

    scene: int
    name: str
    split: str
    top: int
    left: int
    height: int
    width: int


def check_fractions(fractions) -> dict[str, float]:
    if fractions is None:
        return dict(DEFAULT_FRACTIONS)
    if not isinstance(fractions, dict) or not fractions:
        raise ValueError(f"fractions: expected a dict split name -> fraction, got {fractions!r}")
    bad = {k: v for k, v in fractions.items() if not isinstance(k, str) or not isinstance(v, (int, float))
           or not 0 <= v <= 1}
    total = sum(float(v) for v in fractions.values())
    if bad or abs(total - 1) > 1e-6:
        raise ValueError(f"fractions: expected fractions in [0, 1] summing to 1, got {fractions!r}")
    return {k: float(v) for k, v in fractions.items()}


def _counts(total: int, fractions: dict[str, float]) -> dict[str, int]:
    """Splits `total` items by largest remainder, giving every split with a positive fraction at least one
    item when there are enough."""
    raw = {k: total * f for k, f in fractions.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:total - sum(counts.values())]:
        counts[k] += 1
    for k in fractions:
        if fractions[k] > 0 and counts[k] == 0:
            donor = max(counts, key=counts.get)
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[k] += 1
    return counts


def _tile_axis(start: int, length: int, tile: int, stride: int, scale: int) -> list[tuple[int, int]]:
    """(offset, size) windows along one axis of a strip; a strip shorter than the tile gives one window of
    its length rounded down to a multiple of `scale` (none if that is 0)."""
    if length < tile:
        size = length // scale * scale
        return [(start, size)] if size else []
    return [(start + k * stride, tile) for k in range((length - tile) // stride + 1)]


def plan_tiles(shapes, names=None, tile: int = 256, stride: int | None = None, scale: int = 4,
               split_by: str = "scene", fractions=None, seed: int = 0, guard: int = 0,
               whole_splits=()) -> list[Tile]:
    """Tiles of scenes with (height, width) `shapes`, each assigned to a split.

    tile/stride: HR window side and step (stride defaults to the tile: no overlap). Scenes or strips
    smaller than the tile give one window, cropped to a multiple of `scale`.
    whole_splits: splits whose regions are not tiled but kept whole (cropped to a multiple of `scale`): held-out
    data is then scored once per pixel, every pixel (overlapping tiles would score some twice, the remainder of
    the last tile none); evaluation fuses a large region in tiles itself. `cropping` reports what is dropped.
    split_by: "scene" (whole scenes per split, shuffled with `seed`), "region" (each scene cut into
    consecutive strips along its longer side, in the order of `fractions`, `guard` pixels dropped between
    strips) or "none" (every tile in split "all").
    """
    shapes = [tuple(int(v) for v in s) for s in shapes]
    names = list(names) if names is not None else [f"scene{i:04d}" for i in range(len(shapes))]
    if len(names) != len(shapes):
        raise ValueError(f"names: expected {len(shapes)} names (one per scene), got {len(names)}")
    if split_by not in SPLIT_MODES:
        raise ValueError(f"split_by: expected one of {SPLIT_MODES}, got {split_by!r}")
    for name, value in (("tile", tile), ("scale", scale)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if tile % scale:
        raise ValueError(f"tile: expected a multiple of scale {scale}, got {tile}")
    stride = tile if stride is None else stride
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride!r}")
    if not isinstance(guard, (int, np.integer)) or guard < 0:
        raise ValueError(f"guard: expected a non-negative integer, got {guard!r}")
    fractions = check_fractions(fractions)

    regions = []  # (scene, split, top, left, height, width)
    if split_by == "none":
        regions = [(i, "all", 0, 0, h, w) for i, (h, w) in enumerate(shapes)]
    elif split_by == "scene":
        order = np.random.default_rng(seed).permutation(len(shapes))
        start = 0
        for split, n in _counts(len(shapes), fractions).items():
            regions += [(int(i), split, 0, 0, *shapes[i]) for i in sorted(order[start:start + n])]
            start += n
    else:
        for i, (h, w) in enumerate(shapes):
            vertical = h >= w  # strips cut across the longer side
            length = (h if vertical else w) - guard * (sum(f > 0 for f in fractions.values()) - 1)
            offset = 0
            for split, n in _counts(max(length, 0), fractions).items():
                if n == 0:
                    continue
                regions.append((i, split, offset, 0, n, w) if vertical else (i, split, 0, offset, h, n))
                offset += n + guard

    tiles = []
    for scene, split, top, left, h, w in regions:
        if split in whole_splits:
            th, tw = h // scale * scale, w // scale * scale
            if th and tw:
                whole = (top, left, th, tw) == (0, 0, *shapes[scene])
                tiles.append(Tile(scene, names[scene] if whole else f"{names[scene]}_{split}", split, top, left,
                                  th, tw))
            continue
        for y, th in _tile_axis(top, h, tile, stride, scale):
            for x, tw in _tile_axis(left, w, tile, stride, scale):
                whole = (y, x, th, tw) == (0, 0, *shapes[scene])
                tiles.append(Tile(scene, names[scene] if whole else f"{names[scene]}_y{y}_x{x}", split, y, x,
                                  th, tw))
    return tiles


def cropping(shapes, names, tiles: list[Tile]) -> list[str]:
    """One line per scene saying how many of its rows and columns no tile uses (edges cropped to a multiple of
    the scale or of the tile stride, guard bands between splits)."""
    notes = []
    for scene, ((h, w), name) in enumerate(zip(shapes, names)):
        used = np.zeros((h, w), bool)
        for t in tiles:
            if t.scene == scene:
                used[t.top:t.top + t.height, t.left:t.left + t.width] = True
        rows, cols = int((~used.any(1)).sum()), int((~used.any(0)).sum())
        if rows or cols:
            notes.append(f"{name}: {rows} of {h} rows and {cols} of {w} columns are in no image (edges cropped to "
                         f"a multiple of the scale or the tile grid, or guard bands)")
    return notes
