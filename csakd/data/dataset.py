"""Fusion datasets: items {"lr_hsi" (C, h, w), "hr_msi" (M, H, W), "hr_hsi" (C, H, W), "min", "max", "name"}.

The three images of an item are scaled by the dataset's `Normalisation` (default: the LR-HSI's own min and max,
see `csakd.normalisation`, the same rule evaluation and fusion apply); "min"/"max" undo it
(`x * (max - min) + min`). Sources:
- `FusionDataset.from_folder`: a dataset written by `csakd synth`, or any folder of paired .npz files
  (keys hr_hsi, lr_hsi, hr_msi, each (H, W, bands) in the data's units);
- `FusionDataset.from_pairs`: the user's own (LR-HSI, HR-MSI, HR-HSI) files in any format `read_cube` reads;
- `cube_datasets`: scenes (files, a folder, arrays) tiled and degraded with a DegradationSpec;
- `generated_datasets`: N synthetic scenes, degraded with a spec, split train/test.
Degradation of a scene tile happens on the ground truth scaled to [0, 1] by its own min/max (so an SNR refers to
it, as in the reference pipeline), on access or once if cached; noise is seeded by (spec.noise_seed, tile name).
"""
from __future__ import annotations

import json
import os
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .degradation import DegradationSpec, degrade
from .generator import default_wavelengths, generate_scene
from ..normalisation import Normalisation
from .readers import read_cube
from .scenes import cube_files, prepare_scene
from .store import MANIFEST, read_pair
from .tiling import check_fractions, cropping, plan_tiles

IMAGE_KEYS = ("lr_hsi", "hr_msi", "hr_hsi")
AUTO_CACHE_BYTES = 1 << 30


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(array, dtype=np.float32), 2, 0)))


def _seed(*parts) -> int:
    mixed = [int(p) % 2 ** 64 if isinstance(p, (int, np.integer)) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(mixed).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _scaled(lr, msi, hr, normalisation: Normalisation | None) -> dict:
    """The item: the three images scaled by the rule (None: left in the data's units)."""
    if normalisation is None:
        return {"lr_hsi": lr, "hr_msi": msi, "hr_hsi": hr, "min": 0.0, "max": 1.0}
    lo, hi = normalisation.range_of(lr)
    return {"lr_hsi": Normalisation.apply(lr, lo, hi), "hr_msi": Normalisation.apply(msi, lo, hi),
            "hr_hsi": Normalisation.apply(hr, lo, hi), "min": lo, "max": hi}


def check_pair(name: str, hr: torch.Tensor, lr: torch.Tensor, msi: torch.Tensor) -> int:
    """The scale of a (C, H, W) / (C, h, w) / (M, H, W) triple, or a ValueError naming the item."""
    if hr.ndim != 3 or lr.ndim != 3 or msi.ndim != 3:
        raise ValueError(f"{name}: expected three 3-D images, got shapes hr_hsi {tuple(hr.shape)}, "
                         f"lr_hsi {tuple(lr.shape)}, hr_msi {tuple(msi.shape)}")
    if lr.shape[0] != hr.shape[0]:
        raise ValueError(f"{name}: lr_hsi: expected {hr.shape[0]} bands (as hr_hsi), got {lr.shape[0]}")
    if msi.shape[1:] != hr.shape[1:]:
        raise ValueError(f"{name}: hr_msi: expected spatial size {tuple(hr.shape[1:])} (as hr_hsi), "
                         f"got {tuple(msi.shape[1:])}")
    scale = hr.shape[1] // lr.shape[1] if lr.shape[1] else 0
    if scale < 1 or tuple(hr.shape[1:]) != (scale * lr.shape[1], scale * lr.shape[2]):
        raise ValueError(f"{name}: hr_hsi: expected an integer multiple of lr_hsi's size {tuple(lr.shape[1:])}, "
                         f"got {tuple(hr.shape[1:])}")
    for key, x in (("hr_hsi", hr), ("lr_hsi", lr), ("hr_msi", msi)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: {key}: expected finite values, found NaN or Inf")
    return scale


# Loaders are module functions bound with partial (not lambdas) so that datasets pickle into DataLoader
# workers started with "spawn".
def _load_npz_pair(path) -> tuple:
    return tuple(_chw(a) for a in read_pair(path))


def _load_cube_pair(lr_path, msi_path, hr_path) -> tuple:
    return tuple(_chw(read_cube(p).data) for p in (hr_path, lr_path, msi_path))


def _held(data: np.ndarray) -> np.ndarray:
    return data


class _PairedSample:
    """Three images from disk, in the data's units."""

    def __init__(self, name: str, load, nbytes: int):
        self.name, self._load, self.nbytes = name, load, nbytes

    def load(self, normalisation: Normalisation | None) -> dict:
        hr, lr, msi = self._load()
        check_pair(self.name, hr, lr, msi)
        return _scaled(lr, msi, hr, normalisation)


class _TileSample:
    """A window of a scene, normalised, then degraded. `scene_data()` gives the (H, W, C) scene: an array
    held in memory, or a synthetic scene made on access."""

    def __init__(self, name: str, scene_data, window, bands: int, spec: DegradationSpec, srf: np.ndarray):
        self.name, self.scene_data, self.window, self.spec, self.srf = name, scene_data, window, spec, srf
        _, _, h, w = window
        self.nbytes = 4 * (h * w * (bands + srf.shape[0]) + (h // spec.scale) * (w // spec.scale) * bands)

    def load(self, normalisation: Normalisation | None) -> dict:
        top, left, h, w = self.window
        hr = _chw(self.scene_data()[top:top + h, left:left + w])
        lo, hi = Normalisation().range_of(hr)  # the protocol's [0, 1] scaling for the degradation and its SNR
        gen = torch.Generator().manual_seed(_seed(self.spec.noise_seed, self.name))
        lr, msi = degrade(Normalisation.apply(hr, lo, hi), self.spec, None, srf=self.srf, generator=gen)
        lr, msi = Normalisation.undo(lr, lo, hi), Normalisation.undo(msi, lo, hi)  # back to the data's units
        return _scaled(lr, msi, hr, normalisation)


def crop_flip_rotate(item: dict, crop: int | None, scale: int, generator: torch.Generator,
                     flips: bool = True) -> dict:
    """A random HR window of side `crop` aligned with the LR grid, then random horizontal/vertical flips and
    rot90 turns, all applied identically to the three images."""
    lr, msi, hr = (item[k] for k in IMAGE_KEYS)
    if crop is not None:
        if crop % scale:
            raise ValueError(f"crop: expected a multiple of the scale {scale}, got {crop}")
        size = crop // scale
        h, w = lr.shape[-2:]
        if size > min(h, w):
            raise ValueError(f"crop: expected at most {min(h, w) * scale} (the item {item.get('name')} is "
                             f"{h * scale}x{w * scale}), got {crop}")
        i = int(torch.randint(h - size + 1, (1,), generator=generator))
        j = int(torch.randint(w - size + 1, (1,), generator=generator))
        lr = lr[:, i:i + size, j:j + size]
        msi = msi[:, i * scale:(i + size) * scale, j * scale:(j + size) * scale]
        hr = hr[:, i * scale:(i + size) * scale, j * scale:(j + size) * scale]
    if flips:
        draws = torch.randint(2, (2,), generator=generator).tolist()
        turns = int(torch.randint(4, (1,), generator=generator))
        dims = [d for d, flag in zip((-1, -2), draws) if flag]

        def move(x):
            return torch.rot90(x.flip(dims) if dims else x, turns, dims=(-2, -1))

        lr, msi, hr = move(lr), move(msi), move(hr)
    out = dict(item)
    out.update(lr_hsi=lr.contiguous(), hr_msi=msi.contiguous(), hr_hsi=hr.contiguous())
    return out


class FusionDataset(Dataset):
    """Map-style dataset of fusion items (see the module docstring).

    crop: random HR crop side (a multiple of the scale), None for whole images.
    augment: random flips and rot90, identical on the three images.
    Random choices depend only on (seed, epoch, index): call `set_epoch` each epoch for new draws.
    cache: keep loaded items in memory (True/False; None = when they fit in 1 GiB).
    normalisation: the value scaling of every item (a Normalisation, or its config form; default the LR-HSI's
    range), False for the data's own units.
    """

    def __init__(self, samples, spec: DegradationSpec | None = None, wavelengths=None, crop: int | None = None,
                 augment: bool = False, seed: int = 0, cache: bool | None = None, normalisation=None,
                 info: dict | None = None):
        self.samples = list(samples)
        self.spec, self.wavelengths = spec, None if wavelengths is None else np.asarray(wavelengths)
        self.crop, self.augment, self.seed = crop, augment, seed
        self.normalisation = None if normalisation is False else Normalisation.parse(normalisation)
        self.info = dict(info or {})
        self.epoch = 0
        self.cache = cache if cache is not None else sum(s.nbytes for s in self.samples) <= AUTO_CACHE_BYTES
        self._cached: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_normalisation(self, normalisation) -> None:
        """Scale items by another rule from now on (e.g. the one a model was trained with)."""
        rule = None if normalisation is False else Normalisation.parse(normalisation)
        if rule != self.normalisation:
            self.normalisation = rule
            self._cached.clear()

    def _base(self, index: int) -> dict:
        if index in self._cached:
            return self._cached[index]
        item = self.samples[index].load(self.normalisation)
        item["name"] = self.samples[index].name
        if self.cache:
            self._cached[index] = item
        return item

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index %= len(self)
        item = self._base(index)
        if self.crop is None and not self.augment:
            return dict(item)
        scale = item["hr_hsi"].shape[-1] // item["lr_hsi"].shape[-1]
        gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, index))
        return crop_flip_rotate(item, self.crop, scale, gen, flips=self.augment)

    @classmethod
    def from_folder(cls, root, split: str | None = "train", **kwargs) -> "FusionDataset":
        """A dataset written by `csakd synth` (its dataset.json lists the splits), or paired .npz files in
        root/<split>/ (root/ itself when split is None)."""
        root = Path(root)
        manifest = root / MANIFEST
        info, spec, wavelengths = {}, None, None
        if manifest.is_file():
            info = json.loads(manifest.read_text())
            splits = info.get("splits", {})
            if split not in splits:
                raise ValueError(f"split: expected one of {sorted(splits)} (from {manifest}), got {split!r}")
            files = [root / split / f"{name}.npz" for name in splits[split]]
            if (root / "spec.json").is_file():
                spec = DegradationSpec.load(root / "spec.json")
            wavelengths = info.get("wavelengths")
        else:
            folder = root / split if split else root
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: no such folder (and no {MANIFEST} in {root})")
            files = sorted(folder.glob("*.npz"))
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{root}: files listed for split {split!r} are missing: {missing[:3]}")
        if not files:
            raise ValueError(f"root: expected paired .npz files for split {split!r} in {root}, found none")
        samples = [_PairedSample(f.stem, partial(_load_npz_pair, f), os.path.getsize(f)) for f in files]
        return cls(samples, spec=spec, wavelengths=wavelengths, info=info, **kwargs)

    @classmethod
    def from_pairs(cls, pairs, names=None, **kwargs) -> "FusionDataset":
        """The user's own data: `pairs` of (lr_hsi_path, hr_msi_path, hr_hsi_path), each any format
        `read_cube` reads, stored (H, W, bands)."""
        pairs = [tuple(p) for p in pairs]
        if any(len(p) != 3 for p in pairs):
            raise ValueError("pairs: expected (lr_hsi_path, hr_msi_path, hr_hsi_path) triples")
        names = list(names) if names is not None else [Path(p[2]).stem for p in pairs]
        samples = [_PairedSample(n, partial(_load_cube_pair, *p), sum(os.path.getsize(f) for f in p) * 2)
                   for n, p in zip(names, pairs)]
        return cls(samples, **kwargs)


def collate_fusion(batch: list[dict]) -> dict:
    """Stacks items into a batch: images (B, ...), "min"/"max" float64 (B,), "name" a list. Items must have
    equal shapes (use crop= for scenes of different sizes)."""
    if not batch:
        raise ValueError("batch: expected at least one item, got none")
    out = {}
    for key in IMAGE_KEYS:
        shapes = {tuple(item[key].shape) for item in batch}
        if len(shapes) > 1:
            raise ValueError(f"batch: expected {key} of one shape to stack, got {sorted(shapes)} "
                             f"(items {[item.get('name') for item in batch]}); crop them to one size")
        out[key] = torch.stack([item[key] for item in batch])
    for key in ("min", "max"):
        out[key] = torch.tensor([float(item[key]) for item in batch], dtype=torch.float64)
    out["name"] = [item.get("name") for item in batch]
    extra = set(batch[0]) - set(out)
    for key in extra:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def _split_kwargs(split: str, crop, augment) -> dict:
    return {"crop": crop, "augment": augment} if split == "train" else {}


def cube_datasets(cubes, spec: DegradationSpec | None = None, channels=None, wavelengths=None, fwhm=None,
                  tile: int = 256, stride: int | None = None, split_by: str = "scene", fractions=None,
                  seed: int = 0, guard: int = 0, bad_bands: str = "error", crop: int | None = None,
                  augment: bool = False, cache: bool | None = None, normalisation=None,
                  whole_splits=("val", "test")) -> dict:
    """{split: FusionDataset} from scenes: a folder, or a list of paths, Cube objects or (H, W, C) arrays.

    Each scene goes through `prepare_scene` (channel selection, wavelengths, bad bands), is tiled by
    `plan_tiles` (tile, stride, split_by "scene"/"region"/"none", fractions, guard) and every tile is
    normalised and degraded with `spec`. crop/augment apply to the "train" split only. The regions of
    `whole_splits` (held-out data) are single images, scored once per pixel (see `plan_tiles`).
    """
    spec = spec or DegradationSpec()
    if isinstance(cubes, (str, Path)) and Path(cubes).is_dir():
        cubes = cube_files(cubes)
    elif isinstance(cubes, (str, Path, np.ndarray)) or hasattr(cubes, "data"):
        cubes = [cubes]
    scenes = [prepare_scene(c, i, channels=channels, wavelengths=wavelengths, fwhm=fwhm, bad_bands=bad_bands)
              for i, c in enumerate(cubes)]
    if not scenes:
        raise ValueError("cubes: expected at least one scene, got none")
    bands = {s.data.shape[2] for s in scenes}
    if len(bands) != 1:
        raise ValueError(f"cubes: expected scenes with one band count after selection, got {sorted(bands)}")
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    tiles = plan_tiles([s.data.shape[:2] for s in scenes], names, tile=tile, stride=stride, scale=spec.scale,
                       split_by=split_by, fractions=fractions, seed=seed, guard=guard, whole_splits=whole_splits)
    srfs = [spec.response(s.wavelengths, s.fwhm) for s in scenes]
    splits = ["all"] if split_by == "none" else list(check_fractions(fractions))
    info = {"notes": [n for s in scenes for n in s.notes] + cropping([s.data.shape[:2] for s in scenes], names,
                                                                      tiles), "scenes": names}
    differ = [s.name for s in scenes[1:] if np.max(np.abs(s.wavelengths - scenes[0].wavelengths)) > 0.5]
    if differ:
        info["notes"].append(f"band centres of {differ} differ from {scenes[0].name}'s by more than 0.5 nm; each "
                             f"scene's own spectral response is used, the dataset records {scenes[0].name}'s")
    def window(t):
        return t.name, partial(_held, scenes[t.scene].data), (t.top, t.left, t.height, t.width), \
            scenes[0].data.shape[2]

    return {split: FusionDataset([_TileSample(*window(t), spec, srfs[t.scene]) for t in tiles if t.split == split],
                                 spec=spec, wavelengths=scenes[0].wavelengths, seed=seed, cache=cache,
                                 normalisation=normalisation, info=info, **_split_kwargs(split, crop, augment))
            for split in splits}


def generated_datasets(count: int, size: int = 256, spec: DegradationSpec | None = None, bands: int = 172,
                       wavelengths=None, fractions=None, seed: int = 0, crop: int | None = None,
                       augment: bool = False, cache: bool | None = None) -> dict:
    """{split: FusionDataset} of `count` synthetic scenes of size x size (bands on the AVIRIS 172 grid by
    default), degraded with `spec`, split by scene (default 80/20 train/test). Scene k uses generator seed
    derived from (seed, k), so datasets with the same seed share their scenes."""
    spec = spec or DegradationSpec()
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: expected a positive integer, got {count!r}")
    if not isinstance(size, (int, np.integer)) or size < spec.scale or size % spec.scale:
        raise ValueError(f"size: expected a positive multiple of the scale {spec.scale}, got {size!r}")
    wl = default_wavelengths(bands) if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
    srf = spec.response(wl)
    tiles = plan_tiles([(size, size)] * count, [f"generated{seed}_{k:04d}" for k in range(count)], tile=size,
                       scale=spec.scale, split_by="scene", fractions=fractions, seed=seed)
    info = {"source": "generated", "size": size, "count": count, "seed": seed}
    def scene(k):
        return partial(generate_scene, size, size, bands=len(wl), seed=_seed(seed, k), wavelengths=wl)

    return {split: FusionDataset([_TileSample(t.name, scene(t.scene), (0, 0, size, size), len(wl), spec, srf)
                                  for t in tiles if t.split == split],
                                 spec=spec, wavelengths=wl, seed=seed, cache=cache, info=info,
                                 **_split_kwargs(split, crop, augment))
            for split in check_fractions(fractions)}
