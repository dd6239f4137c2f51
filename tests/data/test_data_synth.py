"""`csakd synth` writes datasets that FusionDataset loads, with the spec and provenance beside them."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from csakd.cli import build_parser, main
from csakd.data import AVIRIS_172_CHANNELS, DegradationSpec, FusionDataset, generated_datasets

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


def test_generated_dataset_round_trip(tmp_path):
    out = tmp_path / "gen"
    assert main(["synth", "--source", "generated", "--count", "5", "--size", "32", "--bands", "16", "--snr", "30",
                 "--noise-on", "both", "--psf-sigma", "4", "--psf-sigma-kind", "variance", "--out", str(out),
                 "--no-progress"]) == 0
    spec = DegradationSpec.load(out / "spec.json")
    assert (spec.psf_std, spec.psf_sigma_kind, spec.snr_db, spec.noise_on) == (2.0, "variance", 30.0, "both")
    manifest = json.loads((out / "dataset.json").read_text())
    assert "variance" in manifest["psf_note"] and manifest["source"]["kind"] == "generated"
    assert len(manifest["wavelengths"]) == 16 and manifest["msi_bands"] == 4
    srf = np.loadtxt(out / "srf.csv", delimiter=",", skiprows=1)
    assert srf.shape == (16, 5)
    np.testing.assert_allclose(srf[:, 1:].sum(axis=0), 1.0, atol=1e-8)
    expected = generated_datasets(5, 32, spec=spec, bands=16)
    for split in ("train", "test"):
        loaded = FusionDataset.from_folder(out, split)
        assert loaded.spec == spec and loaded.names == expected[split].names
        for a, b in zip(loaded, expected[split]):
            for key in ("lr_hsi", "hr_msi", "hr_hsi"):
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
            assert a["min"] == pytest.approx(b["min"]) and a["max"] == pytest.approx(b["max"])


def test_existing_dataset_needs_overwrite(tmp_path, capsys):
    args = ["synth", "--source", "generated", "--count", "2", "--size", "16", "--bands", "16", "--out",
            str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--count", "3"]) == 0
    assert len(FusionDataset.from_folder(tmp_path, "train")) + len(FusionDataset.from_folder(tmp_path, "test")) == 3


def test_help_explains_every_option():
    parser = build_parser()
    synth = parser._subparsers._group_actions[0].choices["synth"]
    for action in synth._actions:
        assert action.help, f"{action.option_strings} has no help"
    assert "hr_hsi, lr_hsi, hr_msi" in synth.epilog  # how to bring one's own paired data


def test_cube_file_with_bad_bands_and_region_split(tmp_path, capsys):
    cube = np.random.default_rng(0).random((64, 48, 224)).astype(np.float32) + 0.1
    cube[:, :, 106:113] = 0  # blanked channels 107-113, outside the paper's 172
    np.save(tmp_path / "scene.npy", cube)
    out = tmp_path / "ds"
    assert main(["synth", "--source", str(tmp_path / "scene.npy"), "--out", str(out), "--tile", "16",
                 "--no-progress"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["bands"] == 172 and manifest["tiling"]["split_by"] == "region"
    assert manifest["source"]["files"][0]["sha256"]
    assert any("AVIRIS" in n for n in manifest["notes"])
    train, test = FusionDataset.from_folder(out, "train"), FusionDataset.from_folder(out, "test")
    assert len(train) == 9 and len(test) == 3  # 51 train rows: 3 x 3 tiles; 13 test rows: 12-row images
    assert all(t["hr_hsi"].shape[0] == 172 for t in (train[0], test[0]))
    out_all = tmp_path / "all"
    assert main(["synth", "--source", str(tmp_path / "scene.npy"), "--out", str(out_all), "--channels", "all",
                 "--tile", "32", "--no-progress"]) == 0
    assert json.loads((out_all / "dataset.json").read_text())["bands"] == 217  # 7 zero bands dropped
    assert main(["synth", "--source", str(tmp_path / "scene.npy"), "--out", str(tmp_path / "x"),
                 "--channels", "all", "--bad-bands", "error", "--no-progress"]) == 2
    assert "7 of 224 bands are unusable" in capsys.readouterr().err


@needs_data
def test_jasper_ridge_with_defaults(tmp_path):
    out = tmp_path / "jasper"
    assert main(["synth", "--source", str(SHARED / "aviris_jasperridge_100x100x198.npz"), "--out", str(out),
                 "--no-progress"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["source"]["channels"] == list(AVIRIS_172_CHANNELS)
    train, test = FusionDataset.from_folder(out, "train"), FusionDataset.from_folder(out, "test")
    assert train[0]["hr_hsi"].shape == (172, 80, 100) and train[0]["lr_hsi"].shape == (172, 20, 25)
    assert test[0]["hr_msi"].shape == (4, 20, 100)
    z = np.load(SHARED / "aviris_jasperridge_100x100x198.npz")
    gt = z["hsi"][:80, :, z["paper_keep_mask"]].astype(np.float64)
    item = train[0]
    restored = item["hr_hsi"].double().numpy().transpose(1, 2, 0) * (item["max"] - item["min"]) + item["min"]
    np.testing.assert_allclose(restored, gt, rtol=0, atol=1e-3)  # float32 storage of integer counts


def test_folder_of_cubes_splits_by_scene(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(3):
        np.save(tmp_path / f"cube{k}.npy", rng.random((32, 40, 20)).astype(np.float32))
    wavelengths = tmp_path / "wl.csv"
    wavelengths.write_text(",".join(str(v) for v in np.linspace(400, 1000, 20)))
    out = tmp_path / "ds"
    assert main(["synth", "--source", str(tmp_path), "--out", str(out), "--wavelengths", str(wavelengths),
                 "--tile", "16", "--test-fraction", "0.34", "--no-progress"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["tiling"]["split_by"] == "scene" and len(manifest["source"]["files"]) == 3
    scenes = {split: {name.split("_")[0] for name in names} for split, names in manifest["splits"].items()}
    assert len(scenes["train"]) == 2 and len(scenes["test"]) == 1 and not scenes["train"] & scenes["test"]
    assert len(FusionDataset.from_folder(out, "train")) == 8  # 2 scenes x (2 x 2) tiles of 16
    np.testing.assert_allclose(manifest["wavelengths"], np.linspace(400, 1000, 20))
