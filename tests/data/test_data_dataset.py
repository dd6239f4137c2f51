"""Tiling and splits without leaks, FusionDataset items, normalisation, augmentation and collate."""
import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from csakd.data import (DegradationSpec, FusionDataset, collate_fusion, crop_flip_rotate, cube_datasets, degrade,
                        generate_scene, generated_datasets, plan_tiles, write_pair)


def _boxes_overlap(a, b, margin=0):
    return not (a.top + a.height + margin <= b.top or b.top + b.height + margin <= a.top or
                a.left + a.width + margin <= b.left or b.left + b.width + margin <= a.left)


@given(shapes=st.lists(st.tuples(st.integers(8, 300), st.integers(8, 300)), min_size=1, max_size=5),
       tile=st.sampled_from([16, 32, 64]), overlap=st.booleans(), guard=st.integers(0, 8),
       split_by=st.sampled_from(["scene", "region"]), test=st.sampled_from([0.2, 0.3, 0.5]),
       val=st.sampled_from([0.0, 0.1]))
def test_tiles_stay_inside_their_scene_and_splits_never_touch(shapes, tile, overlap, guard, split_by, test, val):
    fractions = {k: v for k, v in {"train": 1 - test - val, "val": val, "test": test}.items() if v > 0}
    tiles = plan_tiles(shapes, tile=tile, stride=tile // 2 if overlap else None, scale=4, split_by=split_by,
                       fractions=fractions, guard=guard)
    assert len({t.name for t in tiles}) == len(tiles)
    for t in tiles:
        h, w = shapes[t.scene]
        assert 0 <= t.top and t.top + t.height <= h and 0 <= t.left and t.left + t.width <= w
        assert t.height % 4 == 0 and t.width % 4 == 0 and t.height <= tile and t.width <= tile
        assert t.split in fractions
    for a in tiles:
        for b in tiles:
            if a.scene == b.scene and a.split != b.split:
                assert split_by == "region"
                assert not _boxes_overlap(a, b, margin=guard)  # strips apart by at least the guard band


def test_scene_split_counts_and_paper_tiling():
    tiles = plan_tiles([(256, 256)] * 10, split_by="scene", fractions={"train": 0.8, "val": 0.1, "test": 0.1})
    assert [sum(t.split == s for t in tiles) for s in ("train", "val", "test")] == [8, 1, 1]
    # A 1036 x 777 scene in 259 steps (the paper's sub-images) with the 256 HR image at each top-left.
    tiles = plan_tiles([(1036, 777)], tile=256, stride=259, split_by="none")
    assert [(t.top, t.left) for t in tiles][:4] == [(0, 0), (0, 259), (0, 518), (259, 0)] and len(tiles) == 12
    small = plan_tiles([(100, 98)], split_by="region")  # smaller than a tile: one image per strip
    assert [(t.split, t.top, t.height, t.width) for t in small] == [("train", 0, 80, 96), ("test", 80, 20, 96)]
    with pytest.raises(ValueError, match="fractions"):
        plan_tiles([(64, 64)], fractions={"train": 0.9, "test": 0.2})
    with pytest.raises(ValueError, match="multiple of scale"):
        plan_tiles([(64, 64)], tile=30)


def test_cube_dataset_normalises_then_degrades():
    cube = generate_scene(96, 64, bands=24, seed=1) * 5000 + 100  # data units
    wl = np.linspace(420, 2400, 24)
    spec = DegradationSpec(srf_preset="landsat_tm_6")
    sets = cube_datasets([cube], spec=spec, wavelengths=wl, tile=32, split_by="region",
                         fractions={"train": 0.75, "test": 0.25})
    # Strips of 72 and 24 rows: the training strip in 32-pixel tiles (8 rows in none), the held-out strip whole,
    # so that every held-out pixel is scored once.
    assert len(sets["train"]) == 4 and len(sets["test"]) == 1
    assert sets["test"].samples[0].window == (72, 0, 24, 64)
    assert sets["train"].info["notes"][-1].endswith("8 of 96 rows and 0 of 64 columns are in no image (edges "
                                                    "cropped to a multiple of the scale or the tile grid, or "
                                                    "guard bands)")
    for ds in sets.values():
        for item in ds:
            top, left, h, w = ds.samples[[s.name for s in ds.samples].index(item["name"])].window
            window = cube[top:top + h, left:left + w]
            raw = torch.tensor(window, dtype=torch.float64).permute(2, 0, 1)
            lr, msi = degrade(raw, spec, wl)  # degrading the raw window = de-normalised items (affine maps)
            # The scaling is the LR-HSI's own range (what fusion has too), in the data's units.
            assert item["min"] == pytest.approx(float(lr.min()), rel=1e-5)
            assert item["max"] == pytest.approx(float(lr.max()), rel=1e-5)
            assert float(item["lr_hsi"].min()) == pytest.approx(0, abs=1e-6)
            assert float(item["lr_hsi"].max()) == pytest.approx(1, abs=1e-6)
            span = item["max"] - item["min"]
            torch.testing.assert_close(item["hr_hsi"].double() * span + item["min"], raw, rtol=1e-6, atol=1e-3)
            torch.testing.assert_close(item["lr_hsi"].double() * span + item["min"], lr, rtol=1e-5, atol=2e-3)
            torch.testing.assert_close(item["hr_msi"].double() * span + item["min"], msi, rtol=1e-5, atol=2e-3)


def test_generated_datasets_are_deterministic_and_noise_is_seeded():
    spec = DegradationSpec(snr_db=30, noise_on="both")
    a = generated_datasets(5, 32, spec=spec, bands=16, cache=False)
    b = generated_datasets(5, 32, spec=spec, bands=16, cache=True)
    assert (len(a["train"]), len(a["test"])) == (4, 1) and not set(a["train"].names) & set(a["test"].names)
    for key in ("lr_hsi", "hr_msi", "hr_hsi"):
        assert torch.equal(a["train"][2][key], b["train"][2][key])
        assert torch.equal(a["train"][2][key], a["train"][2][key])
    assert not torch.equal(a["train"][0]["lr_hsi"], a["train"][1]["lr_hsi"])
    item = a["test"][0]
    assert item["lr_hsi"].shape == (16, 8, 8) and item["hr_msi"].shape == (4, 32, 32)


def test_augmentation_is_identical_on_the_three_images():
    lr = torch.randn(3, 6, 5)
    hr = lr.repeat_interleave(4, -2).repeat_interleave(4, -1)  # each LR pixel a 4x4 HR block
    item = {"lr_hsi": lr, "hr_hsi": hr, "hr_msi": hr[:2] * 2, "min": 0.0, "max": 1.0, "name": "x"}
    seen = set()
    for seed in range(40):
        out = crop_flip_rotate(item, 12, 4, torch.Generator().manual_seed(seed))
        assert out["lr_hsi"].shape == (3, 3, 3) and out["hr_hsi"].shape == (3, 12, 12)
        expected = out["lr_hsi"].repeat_interleave(4, -2).repeat_interleave(4, -1)
        assert torch.equal(out["hr_hsi"], expected) and torch.equal(out["hr_msi"], expected[:2] * 2)
        seen.add(tuple(out["lr_hsi"][0].flatten()[:3].tolist()))
    assert len(seen) > 10
    with pytest.raises(ValueError, match="multiple of the scale"):
        crop_flip_rotate(item, 10, 4, torch.Generator())
    with pytest.raises(ValueError, match="at most 20"):
        crop_flip_rotate(item, 24, 4, torch.Generator())


def test_dataset_augmentation_follows_seed_and_epoch():
    ds = generated_datasets(2, 32, bands=16, crop=16, augment=True, fractions={"train": 1.0})["train"]
    first = ds[0]["hr_hsi"]
    assert first.shape == (16, 16, 16) and torch.equal(first, ds[0]["hr_hsi"])
    different = False
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        different |= not torch.equal(first, ds[0]["hr_hsi"])
    assert different


def test_collate_and_dataloader():
    ds = generated_datasets(4, 32, bands=16, fractions={"train": 1.0})["train"]
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fusion)))
    assert batch["lr_hsi"].shape == (3, 16, 8, 8) and batch["hr_hsi"].shape == (3, 16, 32, 32)
    assert batch["min"].dtype == torch.float64 and batch["min"].shape == (3,) and len(batch["name"]) == 3
    with pytest.raises(ValueError, match="one shape"):
        collate_fusion([ds[0], {**ds[1], "hr_hsi": ds[1]["hr_hsi"][:, :16]}])


def test_user_paired_data_from_folder_and_from_pairs(tmp_path):
    rng = np.random.default_rng(0)
    hr = rng.random((16, 16, 5)).astype(np.float32) * 300 + 50
    lr, msi = hr[::4, ::4], hr[:, :, :3]
    write_pair(tmp_path / "train" / "a.npz", hr, lr, msi)
    ds = FusionDataset.from_folder(tmp_path, "train")
    item = ds[0]
    assert item["name"] == "a" and item["min"] == pytest.approx(lr.min()) and item["max"] == pytest.approx(lr.max())
    span = item["max"] - item["min"]
    np.testing.assert_allclose(item["lr_hsi"].numpy().transpose(1, 2, 0) * span + item["min"], lr, rtol=1e-5)
    scipy.io.savemat(tmp_path / "lr.mat", {"x": lr})
    np.save(tmp_path / "msi.npy", msi)
    np.save(tmp_path / "gt.npy", hr)
    pairs = FusionDataset.from_pairs([(tmp_path / "lr.mat", tmp_path / "msi.npy", tmp_path / "gt.npy")])
    for key in ("lr_hsi", "hr_msi", "hr_hsi"):
        torch.testing.assert_close(pairs[0][key], item[key])
    np.save(tmp_path / "bad_lr.npy", hr[::3, ::3])
    with pytest.raises(ValueError, match="integer multiple"):
        FusionDataset.from_pairs([(tmp_path / "bad_lr.npy", tmp_path / "msi.npy", tmp_path / "gt.npy")])[0]
    with pytest.raises(FileNotFoundError):
        FusionDataset.from_folder(tmp_path, "test")


def test_datasets_pickle_for_spawned_workers(tmp_path):
    import pickle

    cube = generate_scene(32, 32, bands=16, seed=2)
    for ds in (generated_datasets(2, 16, bands=16)["train"],
               cube_datasets([cube], wavelengths=np.linspace(400, 1000, 16), tile=16, split_by="none")["all"]):
        clone = pickle.loads(pickle.dumps(ds))
        assert torch.equal(clone[0]["lr_hsi"], ds[0]["lr_hsi"])
    write_pair(tmp_path / "train" / "a.npz", cube, cube[::4, ::4], cube[:, :, :3])
    ds = FusionDataset.from_folder(tmp_path, "train")
    assert torch.equal(pickle.loads(pickle.dumps(ds))[0]["hr_msi"], ds[0]["hr_msi"])
