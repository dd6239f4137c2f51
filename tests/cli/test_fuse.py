"""`csakd fuse` on a user's own files: a georeferenced GeoTIFF pair in, a georeferenced product out; every bad
input refused with one line naming the argument, exit status 2 and no file left behind."""
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

import csakd
from csakd.cli import main
from csakd.data.spectral_response import spectral_response

BANDS, LR_SIZE, SCALE = 150, (12, 10), 4
WAVELENGTHS = np.linspace(400, 900, BANDS)
CRS = "EPSG:32633"


def _write(path, data, pixel, origin=(500000.0, 4000000.0), wavelengths=None, crs=CRS):
    with rasterio.open(path, "w", driver="GTiff", dtype="float32", count=data.shape[0], height=data.shape[1],
                       width=data.shape[2], crs=crs, transform=from_origin(*origin, pixel, pixel)) as dst:
        dst.write(data.astype(np.float32))
        for i, wl in enumerate(wavelengths if wavelengths is not None else []):
            dst.set_band_description(i + 1, f"{wl:.2f} nm")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A reflectance-like HR cube, its LR-HSI (4x4 block means) and its Sentinel-2 bands 2, 3, 4, 8."""
    folder = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    h, w = LR_SIZE[0] * SCALE, LR_SIZE[1] * SCALE
    base = np.linspace(0.05, 0.5, BANDS)[:, None, None]
    hr = base * (1 + 0.3 * rng.random((1, h, w))) + 0.02 * rng.random((BANDS, h, w))
    lr = hr.reshape(BANDS, LR_SIZE[0], SCALE, LR_SIZE[1], SCALE).mean(axis=(2, 4))
    srf = spectral_response("sentinel2a", WAVELENGTHS, bands=("2", "3", "4", "8"))
    msi = np.einsum("mc,chw->mhw", srf, hr)
    _write(folder / "lr.tif", lr, 40.0, wavelengths=WAVELENGTHS)
    _write(folder / "msi.tif", msi, 10.0)
    torch.manual_seed(0)
    csakd.create("student_tiny", bands=BANDS, msi_bands=4).save(folder / "model.safetensors")
    return folder


def _fuse(scene, out, *extra, lr="lr.tif", msi="msi.tif"):
    return main(["fuse", "--checkpoint", str(scene / "model.safetensors"), "--lr-hsi", str(scene / lr),
                 "--hr-msi", str(scene / msi), "--out", str(out), "--tile", "8", "--overlap", "2", "--device", "cpu",
                 "--no-progress", *extra])


def test_a_georeferenced_pair_gives_a_georeferenced_product(scene, tmp_path):
    out = tmp_path / "new" / "folder" / "fused.tif"  # missing parents are created
    assert _fuse(scene, out) == 0
    with rasterio.open(out) as product, rasterio.open(scene / "msi.tif") as msi:
        assert product.count == BANDS and (product.height, product.width) == (msi.height, msi.width)
        assert product.crs == msi.crs and product.transform == msi.transform
        assert product.interleaving == rasterio.enums.Interleaving.band
        values = product.read()
    assert np.isfinite(values).all() and values.min() >= 0  # "auto" clips: the LR-HSI has no negative value
    from csakd.data.geo import open_raster

    with open_raster(out) as product:
        np.testing.assert_allclose(product.wavelengths, WAVELENGTHS, atol=0.01)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fused.tif"]


def test_envi_and_cog_outputs(scene, tmp_path):
    assert _fuse(scene, tmp_path / "fused.img") == 0
    assert (tmp_path / "fused.hdr").is_file()
    assert "wavelength" in (tmp_path / "fused.hdr").read_text()
    assert _fuse(scene, tmp_path / "cog.tif", "--cog") == 0
    with rasterio.open(tmp_path / "fused.img") as envi, rasterio.open(tmp_path / "cog.tif") as cog:
        np.testing.assert_array_equal(envi.read(), cog.read())


def _refused(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_are_refused_with_one_line_and_leave_nothing(scene, tmp_path, capsys):
    out = tmp_path / "out" / "fused.tif"
    # an HR-MSI in other units (reflectance x 10000 against reflectance)
    with rasterio.open(scene / "msi.tif") as src:
        _write(tmp_path / "msi_dn.tif", src.read() * 10000, 10.0)
    _refused(capsys, _fuse(scene, out, msi=tmp_path / "msi_dn.tif"), "hr_msi: expected values in the LR-HSI's units",
             "--msi-scale")
    assert _fuse(scene, tmp_path / "scaled.tif", "--msi-scale", "0.0001", msi=tmp_path / "msi_dn.tif") == 0
    # a grid shifted by half an HR pixel, then resampled on request
    with rasterio.open(scene / "msi.tif") as src:
        _write(tmp_path / "msi_shift.tif", src.read(), 10.0, origin=(500005.0, 4000000.0))
    _refused(capsys, _fuse(scene, out, msi=tmp_path / "msi_shift.tif"), "hr_msi:", "--resample-msi")
    assert _fuse(scene, tmp_path / "resampled.tif", "--resample-msi", msi=tmp_path / "msi_shift.tif") == 0
    # another CRS
    with rasterio.open(scene / "msi.tif") as src:
        _write(tmp_path / "msi_crs.tif", src.read(), 10.0, crs="EPSG:32634")
    _refused(capsys, _fuse(scene, out, msi=tmp_path / "msi_crs.tif"), "hr_msi:", "CRS")
    # the output naming an input
    _refused(capsys, _fuse(scene, scene / "lr.tif"), "out: expected a new file, got the input --lr-hsi")
    # --network on a file that holds one network
    _refused(capsys, _fuse(scene, out, "--network", "teacher"), "network:", "holds one network")
    # an unknown output format
    _refused(capsys, _fuse(scene, tmp_path / "fused.png"), "out: expected a file ending in")
    assert not out.parent.exists()


def test_a_dataset_item_needs_a_key(scene, tmp_path, capsys):
    """A `csakd synth` item holds lr_hsi, hr_msi and hr_hsi: reading one of them by guess ran silently on the
    ground truth."""
    with rasterio.open(scene / "lr.tif") as lr, rasterio.open(scene / "msi.tif") as msi:
        lr_hwc, msi_hwc = lr.read().transpose(1, 2, 0), msi.read().transpose(1, 2, 0)
    np.savez(tmp_path / "item.npz", lr_hsi=lr_hwc, hr_msi=msi_hwc, hr_hsi=np.repeat(np.repeat(lr_hwc, 4, 0), 4, 1))
    out = tmp_path / "fused.npy"
    args = ["fuse", "--checkpoint", str(scene / "model.safetensors"), "--lr-hsi", str(tmp_path / "item.npz"),
            "--hr-msi", str(tmp_path / "item.npz"), "--out", str(out), "--device", "cpu", "--no-progress"]
    _refused(capsys, main(args), "lr_hsi:", "['hr_hsi', 'hr_msi', 'lr_hsi']", "key")
    assert not out.exists()
    assert main(args + ["--lr-key", "lr_hsi", "--msi-key", "hr_msi"]) == 0
    assert np.load(out).shape == (48, 40, BANDS)


def test_an_output_folder_that_cannot_be_made_names_the_argument(scene, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the output folder should be")
    _refused(capsys, _fuse(scene, tmp_path / "taken" / "fused.tif"), "out: cannot create", "taken")


def _rel_l2(a, b):
    return float(np.linalg.norm((a.astype(np.float64) - b)) / np.linalg.norm(b.astype(np.float64)))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_another_runtime_gives_the_torch_product(scene, tmp_path, runtime):
    """--runtime runs each tile through a verified ONNX export that takes the scene's attention as an input."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    assert _fuse(scene, tmp_path / "torch.npy", "--precision", "fp32") == 0
    assert _fuse(scene, tmp_path / "other.npy", "--precision", "fp32", "--runtime", runtime) == 0
    expected, got = np.load(tmp_path / "torch.npy"), np.load(tmp_path / "other.npy")
    assert got.shape == expected.shape == (48, 40, BANDS)
    assert _rel_l2(got, expected) <= csakd.export.MAX_REL_L2
    if runtime == "openvino":
        assert _fuse(scene, tmp_path / "bf16.npy", "--precision", "bf16", "--runtime", runtime) == 0
        assert _rel_l2(np.load(tmp_path / "bf16.npy"), expected) <= 8 * 2.0 ** -8  # the suite's bf16 bound


def test_a_runtime_that_cannot_run_the_precision_is_refused(scene, tmp_path, capsys):
    out = tmp_path / "fused.npy"
    _refused(capsys, _fuse(scene, out, "--runtime", "onnxruntime", "--precision", "bf16"),
             "precision: runtime 'onnxruntime' runs fp32")
    assert not out.exists()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_exported_network_applies_the_attention_it_is_given(tmp_path, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from csakd.inference.runtime import ExportedNetwork

    torch.manual_seed(0)
    model = csakd.create("student_tiny", bands=8, msi_bands=4).eval()
    network = ExportedNetwork(model, runtime, "fp32", tmp_path)
    assert network.config is model.config and network.query_key_features == model.query_key_features
    lr, msi = torch.rand(1, 8, 12, 12), torch.rand(1, 4, 48, 48)
    outputs = []
    for seed in (1, 2):
        attention = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).mul(3).softmax(-1)
        with torch.no_grad():
            expected = model(lr, msi, attention=attention)
        got = network(lr, msi, attention=attention)
        assert float((got - expected).norm() / expected.norm()) <= csakd.export.MAX_REL_L2
        outputs.append(got)
    assert float((outputs[0] - outputs[1]).norm() / outputs[0].norm()) > 1e-3
    with pytest.raises(ValueError, match="attention:"):
        network(lr, msi)


def test_check_runtime_names_what_is_missing(monkeypatch):
    from csakd.inference import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_installed", lambda package: "1.0")  # the refusals below, whatever is installed
    runtime.check_runtime("torch", "bf16", cpu)
    with pytest.raises(ValueError, match="runtime: 'onnxruntime' runs on the CPU"):
        runtime.check_runtime("onnxruntime", "fp32", torch.device("cuda"))
    with pytest.raises(ValueError, match="runtime: expected one of"):
        runtime.check_runtime("tensorrt", "fp32", cpu)
    with pytest.raises(ValueError, match="precision: runtime 'openvino' runs fp32 or bf16, got 'fp16'"):
        runtime.check_runtime("openvino", "fp16", cpu)
    monkeypatch.setattr(runtime, "_installed", lambda package: None if package == "openvino" else "1.0")
    with pytest.raises(ValueError, match="missing openvino \\(pip install openvino\\)"):
        runtime.check_runtime("openvino", "fp32", cpu)
