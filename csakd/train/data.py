"""Where training and evaluation data come from, as a small dict stored in the run's config (so that `--resume`
and `csakd eval` reopen the same data):

- {"kind": "generated", "count", "size", "bands", "seed", "fractions", "split", "degradation"}: scenes of the
  embedded generator, split by scene into train/val/test (`csakd.data.generated_datasets`);
- {"kind": "folder", "path", "split"}: a dataset folder written by `csakd synth` (`FusionDataset.from_folder`).
"""
from __future__ import annotations

import numpy as np

from ..data import DegradationSpec, FusionDataset, generated_datasets


def generated_source(train: int, val: int, test: int, size: int, bands: int, seed: int = 0,
                     degradation: dict | None = None, split: str = "train") -> dict:
    """`train + val + test` generated scenes split by scene; the source of one split of them."""
    counts = {"train": train, "val": val, "test": test}
    for name, value in {**counts, "size": size, "bands": bands}.items():
        if not isinstance(value, int) or value < 0 or (value == 0 and name in ("size", "bands")):
            raise ValueError(f"{name}: expected a {'positive' if name in ('size', 'bands') else 'non-negative'} "
                             f"integer, got {value!r}")
    if counts[split] < 1:
        raise ValueError(f"split: expected a split with scenes, got {split!r} with none ({counts})")
    total = sum(counts.values())
    return {"kind": "generated", "count": total, "size": size, "bands": bands, "seed": seed,
            "fractions": {k: v / total for k, v in counts.items() if v}, "split": split, "degradation": degradation}


def with_split(source: dict, split: str) -> dict | None:
    """The same data's other split (None when a generated source has no such split)."""
    if source["kind"] == "generated" and split not in source["fractions"]:
        return None
    return {**source, "split": split}


def open_source(source: dict):
    """The dataset a source dict describes (whole images, scaled to [0, 1] per image) and its degradation
    spec as a dict (None when unknown)."""
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind == "generated":
        spec = DegradationSpec.from_dict(source["degradation"]) if source.get("degradation") else DegradationSpec()
        splits = generated_datasets(source["count"], source["size"], spec, bands=source["bands"],
                                    fractions=source["fractions"], seed=source["seed"])
        return splits[source["split"]], spec.to_dict()
    if kind == "folder":
        data = FusionDataset.from_folder(source["path"], split=source.get("split"))
        return data, data.spec.to_dict() if data.spec is not None else None
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


def image_sizes(dataset) -> list[tuple[str, int, int]]:
    """(name, height, width) of the HR images of `dataset`, named by their index when they have no name.

    Read without loading where the dataset knows them (tiles of scenes and generated scenes carry their
    window); otherwise from the items themselves when the dataset keeps them in memory anyway (it loads them
    in the first epoch), else from the first item only (a smaller later image is then reported, by name, when
    it is first cropped).
    """
    from .batches import item_name

    samples = getattr(dataset, "samples", None)
    windows = [getattr(s, "window", None) for s in samples] if samples is not None else [None]
    if samples is not None and len(samples) == len(dataset) and all(w is not None and len(w) == 4 for w in windows):
        return [(str(s.name) if getattr(s, "name", None) else f"#{i}", int(w[2]), int(w[3]))
                for i, (s, w) in enumerate(zip(samples, windows))]
    count = len(dataset) if getattr(dataset, "cache", False) else min(len(dataset), 1)
    sizes = []
    for index in range(count):
        item = dataset[index]
        h, w = np.shape(item["hr_hsi"])[-2:]
        sizes.append((item_name(item, index), int(h), int(w)))
    return sizes
