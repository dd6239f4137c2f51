"""Named spectral responses: the paper's boxcars (unchanged, old names still load) and sensors' measured
responses from pyrsr, integrated over the HSI bands and refused where the cube does not reach."""
import json

import numpy as np
import pytest

from csakd.data import DegradationSpec, aviris_172_fwhm, aviris_172_wavelengths, spectral_response
from csakd.data.spectral_response import (ALIASES, PAPER_PRESETS, SENSORS, band_coverage, boxcar_response,
                                          check_srf, covered_ranges, format_srf_fit, gaussian_response, srf_fit,
                                          srf_names, srf_provenance)

pytest.importorskip("pyrsr")

VNIR = np.linspace(400.0, 900.0, 150)  # a 150-band cube at 400-900 nm


def centroid(row, wl):
    return float((row * wl).sum() / row.sum())


def test_sentinel2_bands_2_3_4_8_on_a_400_900_cube():
    srf = spectral_response("sentinel2a", VNIR, fwhm=None, bands=("2", "3", "4", "8"))
    assert srf.shape == (4, 150)
    np.testing.assert_allclose(srf.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(srf >= 0)
    # Centre wavelengths of S2A B2, B3, B4, B8 (ESA: 492, 560, 665, 833 nm).
    np.testing.assert_allclose([centroid(r, VNIR) for r in srf], [492, 560, 665, 833], atol=6)
    peaks = VNIR[srf.argmax(axis=1)]
    for peak, (lo, hi) in zip(peaks, [(458, 523), (543, 578), (650, 680), (785, 900)]):
        assert lo <= peak <= hi
    nir = srf[3]
    assert nir[(VNIR >= 780) & (VNIR <= 900)].sum() > 0.97  # B8 is the broad NIR band, 785-900 nm
    assert nir[VNIR < 760].sum() == 0
    assert np.all(srf[0][VNIR > 540] == 0) and np.all(srf[2][VNIR < 630] == 0)


def test_hsi_fwhm_convolves_the_measured_response():
    sampled = spectral_response("sentinel2a", VNIR)
    narrow = spectral_response("sentinel2a", VNIR, fwhm=np.full(150, 3.4))
    wide = spectral_response("sentinel2a", VNIR, fwhm=np.full(150, 40.0))
    np.testing.assert_allclose(narrow.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(narrow, sampled, atol=0.02)  # bands as narrow as their spacing: almost sampling
    # Wide HSI bands see the response from afar: weight spreads beyond the band (B4 is 650-680 nm).
    assert wide[2][(VNIR < 640) | (VNIR > 690)].sum() > 0.15 > 0.01 > sampled[2][(VNIR < 640) | (VNIR > 690)].sum()
    np.testing.assert_allclose(centroid(wide[2], VNIR), centroid(sampled[2], VNIR), atol=3)


def test_landsat8_oli_defaults_and_names():
    srf = spectral_response("Landsat-8 OLI", VNIR)
    assert srf.shape == (4, 150)  # default bands 2, 3, 4, 5: blue, green, red, NIR
    np.testing.assert_allclose(srf.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose([centroid(r, VNIR) for r in srf], [482, 561, 655, 865], atol=6)
    assert srf[3][(VNIR < 845) | (VNIR > 885)].sum() < 0.01  # OLI B5 is narrow: 851-879 nm
    np.testing.assert_allclose(spectral_response("landsat8_oli", VNIR, bands=["B2", "3", 4, "05"]), srf)
    for name in SENSORS:  # every listed sensor reads from pyrsr and gives a usable matrix for its defaults
        m = spectral_response(name, np.linspace(400, 2500, 300))
        assert m.shape == (len(SENSORS[name].default), 300)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)


def test_band_mostly_outside_the_cube_is_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        spectral_response("sentinel2a", VNIR, bands=("2", "11"))
    message = str(err.value)
    assert message.startswith("bands:") and "\n" not in message
    assert "sentinel2a band 11" in message and "1569-1658 nm" in message and "398-902 nm" in message
    with pytest.raises(ValueError, match="paper_tm_1_5_7 TM5 at 1550-1750 nm"):
        spectral_response("paper_tm_1_5_7", VNIR)
    # A gap counts: the paper's 172 AVIRIS channels skip 1320-1450 nm, where S2 B10 (cirrus, 1375 nm) lies.
    wl = aviris_172_wavelengths()
    assert len(covered_ranges(wl, aviris_172_fwhm())) == 3
    with pytest.raises(ValueError, match="band 10"):
        spectral_response("sentinel2a", wl, aviris_172_fwhm(), bands=["10"])
    spectral_response("sentinel2a", wl, aviris_172_fwhm(), bands=["11", "12"])  # in the SWIR windows: fine


@pytest.mark.parametrize("name, old", [("paper_tm_1_4", "landsat_tm_4"), ("paper_tm_1_5_7", "landsat_tm_6")])
def test_paper_presets_are_the_old_boxcars(name, old):
    wl = aviris_172_wavelengths()
    edges = {"paper_tm_1_4": [(450, 520), (520, 600), (630, 690), (770, 900)],
             "paper_tm_1_5_7": [(450, 520), (520, 600), (630, 690), (770, 900), (1550, 1750), (2090, 2350)]}[name]
    assert PAPER_PRESETS[name] == tuple((float(lo), float(hi)) for lo, hi in edges) and ALIASES[old] == name
    expected = np.array([((wl >= lo) & (wl <= hi)) / ((wl >= lo) & (wl <= hi)).sum() for lo, hi in edges])
    for preset in (name, old):
        np.testing.assert_array_equal(spectral_response(preset, wl), expected)
        np.testing.assert_array_equal(spectral_response(preset, wl), boxcar_response(edges, wl))
        np.testing.assert_array_equal(spectral_response(preset, wl, model="gaussian"), gaussian_response(edges, wl))
    assert [int(r.sum()) for r in expected > 0] == ([6, 9, 8, 14] if name == "paper_tm_1_4" else [6, 9, 8, 14, 20, 26])


def test_old_specs_load_and_new_specs_round_trip(tmp_path):
    old = {"scale": 4, "psf_sigma": 3.0, "psf_sigma_kind": "std", "psf_size": 19, "boundary": "reflect", "phase": 0,
           "srf_preset": "landsat_tm_6", "srf_ranges": None, "srf_csv": None, "srf_model": "gaussian",
           "snr_db": None, "noise_on": "lr", "noise_seed": 0, "msi_shift": [0.0, 0.0],
           "msi_affine": [[1.0, 0.0], [0.0, 1.0]], "version": 1}  # a spec.json written before measured responses
    spec = DegradationSpec.from_json(json.dumps(old))
    assert spec.srf_preset == "paper_tm_1_5_7" and spec.srf_bands is None
    assert spec == DegradationSpec(srf_preset="paper_tm_1_5_7", srf_model="gaussian")
    assert "srf_bands" not in spec.to_dict()  # the paper's protocol still reads as before
    assert DegradationSpec().srf_preset == "paper_tm_1_4" == DegradationSpec(srf_preset="landsat_tm_4").srf_preset
    wl = aviris_172_wavelengths()
    np.testing.assert_array_equal(spec.response(wl), spectral_response("landsat_tm_6", wl, model="gaussian"))

    s2 = DegradationSpec(srf_preset="Sentinel-2A", srf_bands=["B2", "3", "04", "8a"])
    assert (s2.srf_preset, s2.srf_bands) == ("sentinel2a", ("2", "3", "4", "8A"))
    assert DegradationSpec.load(s2.save(tmp_path / "spec.json")) == s2
    assert json.loads(s2.to_json())["srf_bands"] == ["2", "3", "4", "8A"]
    assert DegradationSpec(srf_preset="sentinel2b").srf_bands == ("2", "3", "4", "8")  # defaults spelled out
    assert "sentinel2a bands 2,3,4,8A (measured)" in s2.describe()
    np.testing.assert_array_equal(s2.response(VNIR), spectral_response("sentinel2a", VNIR, bands="2,3,4,8A"))


def test_name_and_band_errors_are_clear():
    with pytest.raises(ValueError, match="srf_preset: expected one of paper_tm_1_4, .*sentinel2a.*got 'sentinel'"):
        DegradationSpec(srf_preset="sentinel")
    with pytest.raises(ValueError, match="srf_bands: expected Sentinel-2A MSI bands among .*8A.*got '13'"):
        DegradationSpec(srf_preset="sentinel2a", srf_bands=["2", "13"])
    with pytest.raises(ValueError, match="srf_bands: expected None for the band-edge preset paper_tm_1_4"):
        DegradationSpec(srf_bands=["2"])
    with pytest.raises(ValueError, match="srf_bands: expected None without srf_preset"):
        DegradationSpec(srf_preset=None, srf_ranges=[(450, 520)], srf_bands=["2"])
    with pytest.raises(ValueError, match="srf_model: expected 'boxcar' .* measured"):
        DegradationSpec(srf_preset="landsat8_oli", srf_model="gaussian")
    with pytest.raises(ValueError, match="bands: expected distinct"):
        check_srf("sentinel2a", ["2", "B2"])
    with pytest.raises(ValueError, match="bands: expected None with ranges"):
        spectral_response(None, VNIR, ranges=[(450, 520)], bands=["2"])


def test_fit_report_names_fitting_and_refused_responses():
    fit = srf_fit(VNIR)
    assert set(fit) == set(srf_names())
    assert fit["paper_tm_1_4"] == () and fit["sentinel2a"] == () and fit["landsat8_oli"] == ()
    assert [b.band for b in fit["paper_tm_1_5_7"]] == ["TM5", "TM7"]
    text = format_srf_fit(VNIR)
    fits = next(line for line in text.splitlines() if "fit:" in line)
    assert "paper_tm_1_4" in fits and "sentinel2a" in fits and "paper_tm_1_5_7" not in fits
    assert "refused: paper_tm_1_5_7 (TM5 at 1550-1750 nm 0% inside" in text
    # The paper's own 172-channel cube starts at 463 nm, so TM1 (from 450 nm) is only partly covered.
    tm1 = band_coverage("paper_tm_1_4", aviris_172_wavelengths(), aviris_172_fwhm())[0]
    assert tm1.band == "TM1" and 0.8 < tm1.inside < 0.95


def test_provenance_says_which_response_and_where_it_came_from():
    measured = srf_provenance("sentinel2a", ("2", "3", "4", "8"))
    assert measured["kind"] == "measured" and measured["sensor"] == "Sentinel-2A MSI"
    assert measured["source"].startswith("pyrsr") and "esa.int" in measured["reference"]
    paper = srf_provenance("landsat_tm_4")
    assert paper["name"] == "paper_tm_1_4" and paper["bands"]["TM4"] == [770.0, 900.0] and "760" in paper["note"]
    assert srf_provenance(ranges=[(450, 520)])["ranges_nm"] == [[450.0, 520.0]]
    json.dumps([measured, paper])
