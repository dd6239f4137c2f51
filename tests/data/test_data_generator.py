"""The synthetic scene: deterministic, realistic spectra, spatial structure."""
import numpy as np
import pytest

from csakd.data import aviris_172_wavelengths, generate_scene
from csakd.data.generator import ENDMEMBERS, endmember_spectra


def test_deterministic_shape_and_range():
    a = generate_scene(64, 80, seed=4)
    assert a.shape == (64, 80, 172) and a.dtype == np.float32
    assert np.array_equal(a, generate_scene(64, 80, seed=4))
    assert not np.array_equal(a, generate_scene(64, 80, seed=5))
    assert np.isfinite(a).all() and a.min() > 0 and a.max() < 1


def test_endmembers_have_their_spectral_signatures():
    wl = np.array([480.0, 550.0, 670.0, 800.0, 1650.0, 2200.0])
    s = dict(zip(ENDMEMBERS, endmember_spectra(wl)))
    veg = s["vegetation"]
    assert veg[1] > veg[0] and veg[1] > veg[2]  # green peak
    assert veg[3] > 4 * veg[2]  # red edge
    assert s["water"][3] < 0.01 < s["water"][1]  # water is dark in the NIR
    assert s["bright_soil"][4] > s["bright_soil"][0]  # soil brightens with wavelength


def test_scene_has_edges_texture_and_several_materials():
    cube = generate_scene(128, 128, seed=0)
    wl = aviris_172_wavelengths()
    red, nir = cube[:, :, np.argmin(abs(wl - 670))], cube[:, :, np.argmin(abs(wl - 800))]
    ndvi = (nir - red) / (nir + red)
    assert (ndvi > 0.6).mean() > 0.1 and (ndvi < 0.2).mean() > 0.05  # vegetated and bare/built areas
    gradient = np.abs(np.diff(nir, axis=1))
    assert np.percentile(gradient, 99) > 10 * np.median(gradient)  # sharp edges on a textured background


@pytest.mark.parametrize("bands", [31, 172, 300])
def test_band_grids(bands):
    cube = generate_scene(16, 16, bands=bands)
    assert cube.shape == (16, 16, bands)
    wl = np.linspace(420, 1000, 20)
    assert generate_scene(16, 16, bands=20, wavelengths=wl).shape == (16, 16, 20)
    with pytest.raises(ValueError, match="wavelengths"):
        generate_scene(16, 16, bands=21, wavelengths=wl)
    with pytest.raises(ValueError, match="height"):
        generate_scene(0, 16)
