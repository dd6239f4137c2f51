"""A user's own georeferenced scene end to end, as the README's "Train on your own scene" and "Fuse your own
scene" run it: a 150-band hyperspectral GeoTIFF at 400-900 nm (not AVIRIS) and Sentinel-2 bands 2, 3, 4, 8
(measured responses), `csakd synth` -> `csakd train --minutes 1` -> `csakd eval` -> `csakd fuse`."""
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from csakd.cli import main
from csakd.data.generator import generate_scene
from csakd.data.geo import open_raster
from csakd.data.spectral_response import spectral_response

BANDS, SIDE, SCALE = 150, 96, 4
WAVELENGTHS = np.linspace(400, 900, BANDS)


def _write(path, data, pixel, wavelengths=None):
    with rasterio.open(path, "w", driver="GTiff", dtype="float32", count=data.shape[0], height=data.shape[1],
                       width=data.shape[2], crs="EPSG:32633",
                       transform=from_origin(500000.0, 4000000.0, pixel, pixel)) as dst:
        dst.write(data.astype(np.float32))
        for i, wl in enumerate(wavelengths if wavelengths is not None else []):
            dst.set_band_description(i + 1, f"{wl:.2f} nm")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    hr = generate_scene(SIDE, SIDE, bands=BANDS, seed=3, wavelengths=WAVELENGTHS).transpose(2, 0, 1)
    _write(folder / "hr.tif", hr, 10.0, WAVELENGTHS)  # the scene a training set is synthesised from
    lr = hr.reshape(BANDS, SIDE // SCALE, SCALE, SIDE // SCALE, SCALE).mean(axis=(2, 4))
    srf = spectral_response("sentinel2a", WAVELENGTHS, bands=("2", "3", "4", "8"))
    _write(folder / "lr.tif", lr, 40.0, WAVELENGTHS)  # the pair a user fuses
    _write(folder / "msi.tif", np.einsum("mc,chw->mhw", srf, hr), 10.0)
    return folder


def test_synth_train_eval_fuse_on_a_georeferenced_sentinel2_pair(scene, capsys):
    data, run, evaluation = scene / "data", scene / "run", scene / "eval"
    assert main(["synth", "--source", str(scene / "hr.tif"), "--out", str(data), "--srf", "sentinel2a",
                 "--srf-bands", "2,3,4,8", "--tile", "32", "--split-by", "region", "--no-progress"]) == 0
    assert main(["train", "--data", str(data), "--teacher", "teacher_tiny", "--student", "student_tiny",
                 "--crop", "16", "--crops-per-image", "2", "--minutes", "1", "--device", "cpu", "--backend",
                 "reference", "--no-progress", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "PSNR" in out
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--split", "test", "--device", "cpu",
                 "--figures", "0", "--save-predictions", "--out", str(evaluation)]) == 0

    # The user's pair: a georeferenced product on the HR-MSI's grid, with the LR-HSI's wavelengths.
    fused = scene / "products" / "fused.tif"
    assert main(["fuse", "--checkpoint", str(run), "--lr-hsi", str(scene / "lr.tif"), "--hr-msi",
                 str(scene / "msi.tif"), "--out", str(fused), "--device", "cpu", "--no-progress"]) == 0
    with rasterio.open(fused) as product, rasterio.open(scene / "msi.tif") as msi:
        assert product.count == BANDS and product.shape == msi.shape
        assert product.crs == msi.crs and product.transform == msi.transform
        assert np.isfinite(product.read()).all()
    with open_raster(fused) as product:
        np.testing.assert_allclose(product.wavelengths, WAVELENGTHS, atol=0.01)

    # Evaluation and fusion of the same pair give the same numbers: one scaling, one tiled forward.
    (item,) = sorted((data / "test").glob("*.npz"))
    same = scene / "products" / "same.npy"
    assert main(["fuse", "--checkpoint", str(run), "--lr-hsi", str(item), "--lr-key", "lr_hsi", "--hr-msi",
                 str(item), "--msi-key", "hr_msi", "--clip", "none", "--out", str(same), "--device", "cpu",
                 "--no-progress"]) == 0
    evaluated = np.load(evaluation / "predictions" / "student" / f"{item.stem}.npy")
    np.testing.assert_array_equal(np.load(same), evaluated)
