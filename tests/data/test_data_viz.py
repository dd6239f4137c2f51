"""csakd.viz writes PNGs of a false-colour scene, the SRF curves and per-pixel spectra."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from csakd import viz
from csakd.data import aviris_172_wavelengths, generate_scene, spectral_response
from csakd.data.generator import ENDMEMBERS, endmember_spectra

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def out_dir(tmp_path):
    """CSAKD_VIZ_DIR keeps the pictures for a person to look at; otherwise a temporary folder."""
    keep = os.environ.get("CSAKD_VIZ_DIR")
    return Path(keep) if keep else tmp_path


def test_false_colour_picks_bands_by_wavelength():
    wl = np.array([900.0, 460.0, 640.0, 551.0, 700.0])
    assert viz.rgb_band_indices(wl) == (2, 3, 1)
    cube = np.random.default_rng(0).random((8, 9, 5))
    rgb = viz.false_colour(cube, wl)
    assert rgb.shape == (8, 9, 3) and rgb.min() >= 0 and rgb.max() <= 1
    lo, hi = np.percentile(cube[:, :, 3], (2, 98))
    np.testing.assert_allclose(rgb[:, :, 1], np.clip((cube[:, :, 3] - lo) / (hi - lo), 0, 1))
    chw = torch.tensor(cube).permute(2, 0, 1)  # torch tensors are (bands, H, W)
    np.testing.assert_allclose(viz.false_colour(chw, wl), rgb)
    with pytest.raises(ValueError, match="wavelengths"):
        viz.false_colour(cube, wl[:4])


def test_pngs_of_scene_srf_and_spectra(out_dir):
    wl = aviris_172_wavelengths()
    scene = generate_scene(192, 192, seed=0)
    paths = [
        viz.save_false_colour(out_dir / "scene_natural.png", scene, wl, title="generated scene, seed 0"),
        viz.save_false_colour(out_dir / "scene_cir.png", scene, wl, rgb_nm=viz.COLOUR_INFRARED_NM,
                              title="colour infrared"),
        viz.plot_srf(out_dir / "srf_landsat_tm_6.png", spectral_response("landsat_tm_6", wl), wl,
                     labels=["TM1", "TM2", "TM3", "TM4", "TM5", "TM7"], title="Landsat TM 1-5, 7 (boxcar)"),
        viz.plot_srf(out_dir / "srf_landsat_tm_4_gaussian.png",
                     spectral_response("landsat_tm_4", wl, model="gaussian"), wl, title="Landsat TM 1-4 (Gaussian)"),
        viz.plot_spectra(out_dir / "spectra.png", scene, wl, [(20, 30), (100, 100), (150, 40)],
                         ylabel="reflectance"),
    ]
    spectra = endmember_spectra(wl)  # the library as a 'cube' of one row
    paths.append(viz.plot_spectra(out_dir / "endmembers.png", spectra[None], wl,
                                  [(0, k) for k in range(len(ENDMEMBERS))], labels=ENDMEMBERS,
                                  title="endmember library", ylabel="reflectance"))
    if (SHARED / "aviris_jasperridge_100x100x198.npz").is_file():
        z = np.load(SHARED / "aviris_jasperridge_100x100x198.npz")
        paths.append(viz.save_false_colour(out_dir / "jasper_ridge.png", z["hsi"], z["wavelengths_nm"],
                                           title="AVIRIS Jasper Ridge"))
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    with pytest.raises(ValueError, match="pixels"):
        viz.plot_spectra(out_dir / "x.png", scene, wl, [(500, 0)])
