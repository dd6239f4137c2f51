"""What a training step sees: the epoch's sample order, crops and flips, and the seeds of the input noise; and
the checks that the crop and the batch fit the training images.

Every random choice is a pure function of (seed, epoch, sample index[, network]), so the data a run sees
does not depend on how it was interrupted, on the number of DataLoader workers or (for the order) on the
number of processes: resuming needs only the epoch and the number of batches already done.

A sample is one random crop of one image: with `crops_per_image` N, sample k of an epoch is crop k % N of
image k // N, so a single large scene still gives many steps per epoch. With N = 1 sample k is image k.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..data import crop_flip_rotate

IMAGE_KEYS = ("lr_hsi", "hr_msi", "hr_hsi")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def as_chw(name: str, x) -> torch.Tensor:
    """A (C, H, W) float32 tensor from a tensor or array of that layout."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 3:
        raise ValueError(f"{name}: expected a (bands, height, width) image, got shape {tuple(t.shape)}")
    return t.float().contiguous()


def item_name(item: dict, index: int) -> str:
    """An item's name for messages: its own, else its index in the dataset."""
    name = item.get("name") if isinstance(item, dict) else None
    return str(name) if name not in (None, "") else f"#{index}"


class TrainingView(Dataset):
    """Indexed by (epoch, sample) keys from `EpochSampler`: crop sample % crops_per_image of image
    sample // crops_per_image, cropped and augmented with a generator seeded from (seed, epoch, sample)."""

    def __init__(self, base: Dataset, crop: int, scale: int, seed: int, augment: bool = True,
                 crops_per_image: int = 1):
        self.base, self.crop, self.scale, self.seed, self.augment = base, crop, scale, seed, augment
        self.crops_per_image = crops_per_image

    def __len__(self) -> int:
        return len(self.base) * self.crops_per_image

    def __getitem__(self, key) -> dict:
        epoch, sample = key
        index = sample // self.crops_per_image
        base = self.base[index]
        item = {k: as_chw(k, base[k]) for k in IMAGE_KEYS} | {"name": item_name(base, index)}
        out = crop_flip_rotate(item, self.crop, self.scale, generator(self.seed, 1, epoch, sample), self.augment)
        return {k: out[k] for k in IMAGE_KEYS} | {"index": index, "name": item["name"]}


class EpochSampler(Sampler):
    """This process's share of the epoch's permutation of `size` samples (torch's DistributedSampler, seeded
    by the run seed and the epoch), as (epoch, sample) keys, starting after `start_batch` batches of
    `batch_size`. The samples that do not fill a last batch are left out of that epoch (a different few each
    epoch, as the order changes)."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.batch_size = batch_size
        self.inner = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=False)
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.inner.set_epoch(epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.inner) // self.batch_size

    def __iter__(self):
        order = list(self.inner)[:self.batches_per_epoch * self.batch_size]
        for index in order[self.start_batch * self.batch_size:]:
            yield self.epoch, index

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


# -- does the run fit its data? (checked before anything is written) ------------------------------------------
def fit_crop(crop: int | None, sizes: list[tuple[str, int, int]], scale: int, default: int) -> int:
    """The training crop for images of HR `sizes` ((name, height, width) each): `crop`, refused when the
    smallest image cannot hold it; None gives `default` clipped to the smallest image."""
    name, h, w = min(sizes, key=lambda s: min(s[1], s[2]))
    largest = min(h, w) // scale * scale
    if largest < scale:
        raise ValueError(f"data: expected training images of at least {scale}x{scale} pixels (the scale), got "
                         f"{name} of {h}x{w}")
    if crop is None:
        return min(default, largest)
    if crop > largest:
        raise ValueError(f"crop: expected at most {largest} (the smallest training image, {name}, is {h}x{w}), "
                         f"got {crop}")
    return crop


def max_batch(samples: int, world_size: int) -> int:
    """The largest global batch that gives every process one batch of `samples` per epoch."""
    return world_size * math.ceil(samples / world_size)


def check_batch(batch_size: int, images: int, crops_per_image: int, world_size: int = 1) -> str | None:
    """Refuses a batch larger than the epoch; returns a one-line warning when samples are left out of every
    epoch because their count is not a multiple of the batch (None when none are)."""
    samples = images * crops_per_image
    what = f"{images} training image{'s' * (images != 1)} x {crops_per_image} crop{'s' * (crops_per_image != 1)}"
    largest = max_batch(samples, world_size)
    if batch_size > largest:
        more = math.ceil(batch_size / images)
        raise ValueError(f"batch_size: expected at most {largest} ({what} per image), got {batch_size}; or raise "
                         f"crops_per_image to {more}")
    per_epoch = (math.ceil(samples / world_size) // (batch_size // world_size)) * batch_size
    left_out = samples - per_epoch
    if left_out <= 0:
        return None
    step = batch_size // math.gcd(batch_size, images)  # crops per image must be a multiple of this
    fits = [b for b in range(batch_size - 1, 0, -1) if b % world_size == 0 and samples % b == 0]
    hint = f"crops_per_image {math.ceil((crops_per_image + 1) / step) * step}"
    if fits:
        hint += f" or batch_size {fits[0]}"
    return (f"{samples} samples per epoch ({what} per image) do not fill batches of {batch_size}: {left_out} "
            f"(different ones each epoch) are left out of every epoch; {hint} uses them all")
