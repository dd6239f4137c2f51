"""What a training step sees: the epoch's sample order, crops and flips, and the seeds of the input noise.

Every random choice is a pure function of (seed, epoch, sample index[, network]), so the data a run sees
does not depend on how it was interrupted, on the number of DataLoader workers or (for the order) on the
number of processes: resuming needs only the epoch and the number of batches already done.
"""
from __future__ import annotations

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


class TrainingView(Dataset):
    """Indexed by (epoch, index) keys from `EpochSampler`: the base item, cropped and augmented with a
    generator seeded from (seed, epoch, index)."""

    def __init__(self, base: Dataset, crop: int, scale: int, seed: int, augment: bool = True):
        self.base, self.crop, self.scale, self.seed, self.augment = base, crop, scale, seed, augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key) -> dict:
        epoch, index = key
        item = self.base[index]
        item = {k: as_chw(k, item[k]) for k in IMAGE_KEYS}
        out = crop_flip_rotate(item, self.crop, self.scale, generator(self.seed, 1, epoch, index), self.augment)
        return {k: out[k] for k in IMAGE_KEYS} | {"index": index}


class EpochSampler(Sampler):
    """This process's share of the epoch's permutation (torch's DistributedSampler, seeded by the run seed and
    the epoch), as (epoch, index) keys, starting after `start_batch` batches of `batch_size`."""

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

