"""Where training and evaluation data come from: scenes made by the embedded generator (held in memory), or a
dataset folder written by `csakd synth`. A source is described by a small dict, stored in the run's config so
that `--resume` reopens the same data."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import DegradationSpec, aviris_172_wavelengths, degrade, generate_scene


def generated_wavelengths(bands: int) -> np.ndarray:
    """`bands` centres spread evenly (by index) over the paper's AVIRIS 172-band grid."""
    grid = aviris_172_wavelengths()
    if bands > len(grid):
        raise ValueError(f"bands: expected at most {len(grid)} for generated scenes, got {bands}")
    return grid[np.round(np.linspace(0, len(grid) - 1, bands)).astype(int)]


def normalise(cube: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(y - min) / (max - min) with the image's own extrema (SPEC §1), which are returned for de-normalising."""
    lo, hi = float(cube.min()), float(cube.max())
    if not hi > lo:
        raise ValueError(f"hr_hsi: expected an image with more than one value, got constant {lo}")
    return (cube - lo) / (hi - lo), lo, hi


class GeneratedScenes(Dataset):
    """`count` synthetic scenes of `size`² HR pixels (seeds seed, seed+1, ...), normalised per image and
    degraded with `spec`; items are dicts of (C, H, W) float32 tensors plus "min", "max" and "name"."""

    def __init__(self, count: int, size: int, bands: int, seed: int = 0, spec: DegradationSpec | None = None):
        for name, value in (("count", count), ("size", size), ("bands", bands)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.spec = spec or DegradationSpec()
        if size % self.spec.scale:
            raise ValueError(f"size: expected a multiple of the scale {self.spec.scale}, got {size}")
        self.wavelengths = generated_wavelengths(bands)
        self.items = []
        for k in range(count):
            cube, lo, hi = normalise(generate_scene(size, size, bands, seed=seed + k, wavelengths=self.wavelengths))
            hr = torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1), dtype=np.float32))
            lr, msi = degrade(hr, self.spec, self.wavelengths)
            self.items.append({"lr_hsi": lr, "hr_msi": msi, "hr_hsi": hr, "min": lo, "max": hi,
                               "name": f"generated-{seed + k}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def open_source(source: dict):
    """The dataset a source dict describes: {"kind": "generated", "count", "size", "bands", "seed",
    "degradation"} or {"kind": "folder", "path", "split"}. Returns (dataset, degradation dict or None)."""
    kind = source.get("kind")
    if kind == "generated":
        spec = DegradationSpec.from_dict(source["degradation"]) if source.get("degradation") else DegradationSpec()
        data = GeneratedScenes(source["count"], source["size"], source["bands"], source.get("seed", 0), spec)
        return data, spec.to_dict()
    if kind == "folder":
        from ..data import FusionDataset

        data = FusionDataset(source["path"], **({"split": source["split"]} if source.get("split") else {}))
        spec = getattr(data, "spec", None)
        return data, spec.to_dict() if spec is not None else None
    raise ValueError(f"data: expected a source of kind 'generated' or 'folder', got {source!r}")


def shapes(dataset) -> tuple[int, int, int]:
    """(bands, msi_bands, scale) of a dataset's first item."""
    if len(dataset) == 0:
        raise ValueError("data: expected at least one image, got an empty dataset")
    item = dataset[0]
    lr, msi = np.shape(item["lr_hsi"]), np.shape(item["hr_msi"])
    if len(lr) != 3 or len(msi) != 3 or msi[1] % lr[1]:
        raise ValueError(f"data: expected (C, h, w) LR-HSI and (M, s*h, s*w) HR-MSI items, got shapes {lr} and {msi}")
    return lr[0], msi[0], msi[1] // lr[1]
