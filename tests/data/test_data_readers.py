"""read_cube: each format written by its own library and read back; damaged files give clear errors."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
from spectral.io import envi

from csakd.data import AVIRIS_172_CHANNELS, CubeReadError, find_bad_bands, read_cube, select_bands

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")

WAVELENGTHS = np.array([450.0, 550.0, 650.0, 750.0, 850.0])


@pytest.fixture
def cube():
    return np.random.default_rng(0).random((6, 7, 5)).astype(np.float32) * 1000


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    out = path.with_name("truncated_" + path.name)
    out.write_bytes(data[:int(len(data) * fraction)])
    return out


def test_npy_and_npz(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    assert np.array_equal(read_cube(tmp_path / "c.npy").data, cube)
    np.savez_compressed(tmp_path / "c.npz", hsi=cube, wavelengths_nm=WAVELENGTHS, fwhm=np.full(5, 10.0),
                        aviris_channel=np.arange(20, 25), sensor=np.array("test sensor"))
    c = read_cube(tmp_path / "c.npz")
    assert np.array_equal(c.data, cube) and np.array_equal(c.wavelengths, WAVELENGTHS)
    assert np.array_equal(c.channels, np.arange(20, 25)) and c.metadata["sensor"] == "test sensor"
    np.save(tmp_path / "bhw.npy", np.moveaxis(cube, 2, 0))
    assert np.array_equal(read_cube(tmp_path / "bhw.npy", layout="BHW").data, cube)


def test_npz_with_several_cubes_needs_a_key(tmp_path, cube):
    np.savez(tmp_path / "two.npz", first=cube, second=cube + 1)
    with pytest.raises(CubeReadError, match=r"several 3-D arrays \['first', 'second'\]; choose one with key="):
        read_cube(tmp_path / "two.npz")
    # A dataset item's conventional names are no reason to guess: hr_hsi is the ground truth, not an input.
    np.savez(tmp_path / "item.npz", lr_hsi=cube, hr_msi=cube[..., :2], hr_hsi=cube)
    with pytest.raises(CubeReadError, match="several 3-D arrays"):
        read_cube(tmp_path / "item.npz")
    assert np.array_equal(read_cube(tmp_path / "two.npz", key="second").data, cube + 1)
    with pytest.raises(CubeReadError, match="key 'third' not found"):
        read_cube(tmp_path / "two.npz", key="third")


def test_mat_v5_and_v73(tmp_path, cube):
    scipy.io.savemat(tmp_path / "v5.mat", {"img": cube, "wavelength": WAVELENGTHS[None, :]})
    c = read_cube(tmp_path / "v5.mat")
    assert c.format == "MATLAB v5 .mat" and np.array_equal(c.data, cube)
    assert np.array_equal(c.wavelengths, WAVELENGTHS)
    # MATLAB v7.3 = HDF5 with a 512-byte user block, arrays stored column-major (transposed).
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f["img"] = cube.T
        f["wavelength"] = WAVELENGTHS[:, None].T
    c = read_cube(tmp_path / "v73.mat")
    assert c.format == "MATLAB v7.3 (HDF5)" and np.array_equal(c.data, cube)
    assert np.array_equal(c.wavelengths, WAVELENGTHS)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["cube"] = cube
    assert np.array_equal(read_cube(tmp_path / "plain.h5").data, cube)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("byteorder", [0, 1])
def test_envi(tmp_path, interleave, byteorder):
    cube = np.random.default_rng(1).integers(-300, 9000, (6, 7, 5)).astype(np.int16)
    envi.save_image(str(tmp_path / "scene.hdr"), cube, dtype=np.int16, interleave=interleave,
                    byteorder=byteorder, metadata={"wavelength": list(WAVELENGTHS / 1000),
                                                   "wavelength units": "Micrometers", "fwhm": [0.01] * 5})
    for path in (tmp_path / "scene.hdr", tmp_path / "scene.img"):
        c = read_cube(path)
        assert c.format == "ENVI" and c.data.dtype == np.int16 and c.data.dtype.isnative
        assert np.array_equal(c.data, cube) and c.metadata["interleave"] == interleave
        np.testing.assert_allclose(c.wavelengths, WAVELENGTHS)
        np.testing.assert_allclose(c.fwhm, np.full(5, 10.0))


def test_tiff_and_geotiff(tmp_path, cube):
    tifffile.imwrite(tmp_path / "contig.tif", cube, planarconfig="contig")
    assert np.array_equal(read_cube(tmp_path / "contig.tif").data, cube)
    gdal = "<GDALMetadata>" + "".join(
        f'<Item name="wavelength" sample="{i}">{w}</Item>' for i, w in enumerate(WAVELENGTHS)) + "</GDALMetadata>"
    geokeys = (1, 1, 0, 1, 1024, 0, 1, 2)  # GeoKeyDirectory: model type = projected
    tifffile.imwrite(tmp_path / "geo.tif", np.moveaxis(cube, 2, 0), photometric="minisblack",
                     planarconfig="separate",
                     extratags=[(42112, "s", 0, gdal, True), (34735, "H", len(geokeys), geokeys, True),
                                (33550, "d", 3, (20.0, 20.0, 0.0), True),
                                (33922, "d", 6, (0, 0, 0, 500000.0, 4100000.0, 0), True)])
    c = read_cube(tmp_path / "geo.tif")
    assert np.array_equal(c.data, cube) and c.metadata["geotiff"]
    np.testing.assert_allclose(c.wavelengths, WAVELENGTHS)


def test_truncated_files_are_refused(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    np.savez_compressed(tmp_path / "c.npz", hsi=cube)
    scipy.io.savemat(tmp_path / "c.mat", {"hsi": cube})
    with h5py.File(tmp_path / "h.mat", "w", userblock_size=512) as f:
        f["hsi"] = cube.T
    tifffile.imwrite(tmp_path / "c.tif", cube)
    for name in ("c.npy", "c.npz", "c.mat", "h.mat", "c.tif"):
        with pytest.raises(CubeReadError, match="truncated_" + name):
            read_cube(truncate(tmp_path / name))
    envi.save_image(str(tmp_path / "e.hdr"), cube, interleave="bil")
    (tmp_path / "e.img").write_bytes((tmp_path / "e.img").read_bytes()[:-100])
    with pytest.raises(CubeReadError, match=r"promises 6 lines x 7 samples x 5 bands .*\(truncated\)"):
        read_cube(tmp_path / "e.hdr")


def test_lying_headers_are_refused(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    raw = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "lie.npy").write_bytes(raw.replace(b"(6, 7, 5)", b"(6, 7, 4)"))
    with pytest.raises(CubeReadError, match="header disagrees"):
        read_cube(tmp_path / "lie.npy")
    envi.save_image(str(tmp_path / "e.hdr"), cube, interleave="bsq")
    header = (tmp_path / "e.hdr").read_text().replace("bands = 5", "bands = 4")
    (tmp_path / "e.hdr").write_text(header)
    with pytest.raises(CubeReadError, match="header disagrees"):
        read_cube(tmp_path / "e.hdr")
    np.savez(tmp_path / "wl.npz", hsi=cube, wavelengths=WAVELENGTHS[:4])
    with pytest.raises(CubeReadError, match="wavelengths has 4 entries but the cube has 5 bands"):
        read_cube(tmp_path / "wl.npz")


def test_garbage_nan_and_wrong_shapes(tmp_path, cube):
    for name in ("g.npy", "g.npz", "g.mat", "g.tif", "g.h5"):
        (tmp_path / name).write_bytes(b"not a cube at all" * 20)
        with pytest.raises(CubeReadError, match=name):
            read_cube(tmp_path / name)
    bad = cube.copy()
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(CubeReadError, match=r"1 NaN/Inf in bands \(1-based\) 4"):
        read_cube(tmp_path / "nan.npy")
    assert np.isnan(read_cube(tmp_path / "nan.npy", allow_nonfinite=True).data).sum() == 1
    np.save(tmp_path / "flat.npy", cube[:, :, 0])
    with pytest.raises(CubeReadError, match="expected a 3-D cube"):
        read_cube(tmp_path / "flat.npy")
    (tmp_path / "c.xyz").write_bytes(b"x")
    with pytest.raises(CubeReadError, match="unknown cube format"):
        read_cube(tmp_path / "c.xyz")
    with pytest.raises(FileNotFoundError):
        read_cube(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="layout"):
        np.save(tmp_path / "c.npy", cube)
        read_cube(tmp_path / "c.npy", layout="HWX")


@needs_data
def test_real_jasper_ridge_scene():
    c = read_cube(SHARED / "aviris_jasperridge_100x100x198.npz")
    assert c.shape == (100, 100, 198) and c.data.dtype == np.int16
    assert c.wavelengths.shape == (198,) and c.channels[0] == 4
    x172 = select_bands(c.data, AVIRIS_172_CHANNELS, cube_channels=c.channels)
    z = np.load(SHARED / "aviris_jasperridge_100x100x198.npz")
    assert np.array_equal(x172, z["hsi"][:, :, z["paper_keep_mask"]])


@needs_data
def test_real_san_diego_scene():
    c = read_cube(SHARED / "aviris_sandiego_100x100x224.npz")
    assert c.shape == (100, 100, 224) and c.wavelengths.shape == (224,)
    assert c.metadata["wavelengths_key"] == "wavelengths_nm_nominal"
    assert len(find_bad_bands(c.data).all_zero) == 22
    assert find_bad_bands(select_bands(c.data)).ok
