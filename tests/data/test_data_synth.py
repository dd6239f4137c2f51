"""`csakd synth` writes datasets that FusionDataset loads, with the spec and provenance beside them."""
import json

import numpy as np
import pytest
import torch

from csakd.cli import build_parser, main
from csakd.data import (AVIRIS_172_CHANNELS, DegradationSpec, FusionDataset, generate_scene,
                        generated_datasets, spectral_response)


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
    # 51 train rows: 3 x 3 tiles of 16; 13 test rows: the held-out strip whole, cropped to 12 x 48 (scale 4)
    assert len(train) == 9 and len(test) == 1 and test[0]["hr_hsi"].shape[1:] == (12, 48)
    assert any("rows and 0 of 48 columns are in no image" in n for n in manifest["notes"])
    assert all(t["hr_hsi"].shape[0] == 172 for t in (train[0], test[0]))
    out_all = tmp_path / "all"
    assert main(["synth", "--source", str(tmp_path / "scene.npy"), "--out", str(out_all), "--channels", "all",
                 "--tile", "32", "--no-progress"]) == 0
    assert json.loads((out_all / "dataset.json").read_text())["bands"] == 217  # 7 zero bands dropped
    assert main(["synth", "--source", str(tmp_path / "scene.npy"), "--out", str(tmp_path / "x"),
                 "--channels", "all", "--bad-bands", "error", "--no-progress"]) == 2
    assert "7 of 224 bands are unusable" in capsys.readouterr().err


def test_jasper_ridge_with_defaults(tmp_path, real_scene):
    out = tmp_path / "jasper"
    source = real_scene("aviris_jasperridge_100x100x198.npz")
    assert main(["synth", "--source", str(source), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["source"]["channels"] == list(AVIRIS_172_CHANNELS)
    train, test = FusionDataset.from_folder(out, "train"), FusionDataset.from_folder(out, "test")
    assert train[0]["hr_hsi"].shape == (172, 80, 100) and train[0]["lr_hsi"].shape == (172, 20, 25)
    assert test[0]["hr_msi"].shape == (4, 20, 100)
    z = np.load(source)
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


def vnir_cube(path, bands=150, size=32):
    """A generated scene on a 400-900 nm grid, saved with its band centres."""
    wl = np.linspace(400.0, 900.0, bands)
    np.savez(path, hsi=generate_scene(size, size, bands=bands, wavelengths=wl), wavelengths=wl)
    return path


def test_measured_response_is_used_recorded_and_checked(tmp_path, capsys):
    pytest.importorskip("pyrsr")
    cube = vnir_cube(tmp_path / "vnir.npz")
    out = tmp_path / "s2"
    assert main(["synth", "--source", str(cube), "--out", str(out), "--srf", "Sentinel-2A", "--srf-bands",
                 "2,3,4,8", "--tile", "16", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    spec = DegradationSpec.load(out / "spec.json")
    assert (spec.srf_preset, spec.srf_bands) == ("sentinel2a", ("2", "3", "4", "8"))
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["srf"]["kind"] == "measured" and manifest["srf"]["source"].startswith("pyrsr")
    assert manifest["msi_bands"] == 4 and "sentinel2a bands 2,3,4,8 (measured)" in manifest["spec_description"]
    header = (out / "srf.csv").read_text().splitlines()[0]
    assert header == "wavelength_nm,sentinel2a_band_2,sentinel2a_band_3,sentinel2a_band_4,sentinel2a_band_8"
    srf = np.loadtxt(out / "srf.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(srf[:, 1:], spectral_response("sentinel2a", srf[:, 0]).T, atol=1e-6)
    quality = manifest["quality"]["vnir"]
    assert quality["bands"] == 150 and quality["negative_values"]["count"] == 0
    assert quality["unused_by_srf"] and len(quality["snr_db"]) == 150
    fits = next(line for line in printed.splitlines() if line.strip().startswith("fit:"))
    assert "paper_tm_1_4" in fits and "sentinel2a" in fits and "paper_tm_1_5_7" not in fits
    assert "refused: paper_tm_1_5_7 (TM5" in printed and "quality of vnir (150 bands" in printed

    # A band outside the cube's range is refused with one error line, after the list of what would fit.
    assert main(["synth", "--source", str(cube), "--out", str(tmp_path / "b11"), "--srf", "sentinel2a",
                 "--srf-bands", "2,11", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("csakd synth: error: bands:") and "sentinel2a band 11 at 1569-1658 nm" in err[-1]
    assert any(line.strip().startswith("fit:") for line in err) and not (tmp_path / "b11").exists()
    assert main(["synth", "--source", str(cube), "--out", str(tmp_path / "tm"), "--srf-bands", "2",
                 "--no-progress"]) == 2
    assert "--srf-bands: expected --srf naming a measured sensor" in capsys.readouterr().err


def test_old_preset_names_and_old_specs_still_work(tmp_path):
    old_spec = tmp_path / "old.json"
    old_spec.write_text(json.dumps({"scale": 4, "psf_sigma": 3.0, "psf_sigma_kind": "std", "psf_size": 19,
                                    "boundary": "reflect", "phase": 0, "srf_preset": "landsat_tm_6",
                                    "srf_ranges": None, "srf_csv": None, "srf_model": "boxcar", "snr_db": None,
                                    "noise_on": "lr", "noise_seed": 0, "msi_shift": [0.0, 0.0],
                                    "msi_affine": [[1.0, 0.0], [0.0, 1.0]], "version": 1}))
    args = ["--source", "generated", "--count", "2", "--size", "16", "--no-progress"]
    assert main(["synth", "--out", str(tmp_path / "a"), "--spec", str(old_spec)] + args) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), "--srf", "landsat_tm_6"] + args) == 0
    for name in ("a", "b"):
        spec = json.loads((tmp_path / name / "spec.json").read_text())
        assert spec["srf_preset"] == "paper_tm_1_5_7" and "srf_bands" not in spec
        assert json.loads((tmp_path / name / "dataset.json").read_text())["msi_bands"] == 6


def test_list_srf_prints_the_names_and_what_fits(tmp_path, capsys):
    assert main(["synth", "--list-srf"]) == 0
    names = capsys.readouterr().out
    for name in ("paper_tm_1_4", "paper_tm_1_5_7", "sentinel2a", "sentinel2b", "landsat5_tm", "landsat7_etm",
                 "landsat8_oli", "landsat9_oli", "landsat_tm_4 = paper_tm_1_4"):
        assert name in names
    assert main(["synth", "--list-srf", "--source", str(vnir_cube(tmp_path / "c.npz"))]) == 0
    assert "refused: paper_tm_1_5_7" in capsys.readouterr().out


def test_training_runs_on_synth_defaults(tmp_path, monkeypatch):
    """`csakd synth` with every default (generated scenes, a run folder of its own), then `csakd train` on it
    with every default but one step."""
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--no-progress"]) == 0
    (data,) = (tmp_path / "runs").iterdir()
    assert data.name.startswith("synth-") and (data / "dataset.json").is_file()
    assert main(["train", "--data", str(data), "--max-steps", "1", "--no-progress", "--out", "run"]) == 0
    assert (tmp_path / "run" / "last" / "student.safetensors").is_file()
