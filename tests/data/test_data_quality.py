"""The data-quality summary: negative values, empty bands, low estimated SNR and bands no MSI band uses, on
synthetic cubes and on the real AVIRIS scenes."""
import json

import numpy as np
import pytest

from csakd.data import format_quality, quality_report, spectral_response
from csakd.data.quality import band_snr_db


def smooth_cube(h=48, w=40, bands=6, seed=0):
    """Smooth positive bands (a gentle ramp plus low-frequency waves) with faint noise: high SNR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 1.0 + 0.3 * np.sin(3 * xx) * np.cos(2 * yy)
    cube = np.stack([base * (1 + 0.1 * b) for b in range(bands)], axis=-1)
    return cube + rng.normal(0, 1e-3, cube.shape)


def test_noise_band_is_flagged_smooth_band_is_not_and_negatives_are_counted():
    cube = smooth_cube()
    rng = np.random.default_rng(1)
    cube[:, :, 2] = 0.2 + rng.normal(0, 1.0, cube.shape[:2])  # pure noise around a small mean: SNR ~ -14 dB
    cube[5, 7, 4] = -0.5  # one negative value in a clean band
    cube[:, :, 5] = 0.0
    report = quality_report(cube)
    assert report.low_snr == (2,)
    assert report.snr_db[0] > 40 and report.snr_db[2] < 0
    assert np.isnan(report.snr_db[5]) and report.all_zero == (5,)  # an empty band is "all zero", not "low SNR"
    noise_negatives = int((cube[:, :, 2] < 0).sum())
    assert report.negative_counts[4] == 1 and report.negative_count == noise_negatives + 1
    assert report.negative_fraction == pytest.approx((noise_negatives + 1) / cube.size)
    assert report.worst_negative() == [2, 4] and report.unused_by_srf is None


def test_snr_estimator_recovers_the_noise_level():
    rng = np.random.default_rng(2)
    band = 10.0 + rng.normal(0, 0.5, (200, 200))  # SNR = 10 / 0.5 = 20 (26 dB)
    assert band_snr_db(band) == pytest.approx(20 * np.log10(20), abs=0.3)
    ramp = np.tile(np.linspace(1, 2, 50), (30, 1))  # perfectly smooth: no noise at all
    assert band_snr_db(ramp) == np.inf
    assert band_snr_db(-ramp) == -np.inf  # no positive signal
    assert band_snr_db(ramp[:, :1]) == np.inf  # a one-column band uses vertical differences


def test_layouts_nan_bands_srf_columns_and_json():
    cube = smooth_cube(bands=5)
    cube[3, 3, 1] = np.nan
    wl = np.array([450.0, 550.0, 650.0, 1000.0, 1600.0])
    srf = spectral_response(None, wl, ranges=[(400, 700)])  # bands 4 and 5 feed no MSI band
    hwc = quality_report(cube, wl, srf, channels=[11, 12, 13, 14, 15], snr_threshold_db=50)
    chw = quality_report(np.moveaxis(cube, -1, 0), wl, srf, layout="chw", channels=[11, 12, 13, 14, 15],
                         snr_threshold_db=50)
    assert hwc == chw
    assert hwc.non_finite == (1,) and hwc.unused_by_srf == (3, 4)
    assert not np.isnan(hwc.snr_db[1])  # estimated from the finite pixels
    data = hwc.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["band_labels"] == "channel" and data["unused_by_srf"] == [14, 15] and data["non_finite"] == [12]
    text = format_quality(hwc, "scene")
    assert text.startswith("quality of scene (5 channels, 1920 pixels): no negative values")
    assert "channels with NaN/Inf: 12" in text and "2 channels outside every MSI band (14-15)" in text
    assert "\n" not in text


def test_argument_errors_name_the_argument():
    cube = smooth_cube()
    for kwargs, match in [({"layout": "whc"}, "layout"), ({"wavelengths": [1.0, 2.0]}, "wavelengths: expected 6"),
                          ({"srf": np.ones((2, 5))}, r"srf: expected a finite \(M, 6\)"),
                          ({"snr_threshold_db": float("nan")}, "snr_threshold_db"), ({"worst": 0}, "worst")]:
        with pytest.raises(ValueError, match=match):
            quality_report(cube, **kwargs)
    with pytest.raises(ValueError, match="cube: expected a non-empty 3-D array"):
        quality_report(cube[:, :, 0])


def test_san_diego_noisy_and_blanked_channels(real_scene):
    with np.load(real_scene("aviris_sandiego_100x100x224.npz")) as z:
        hsi, channels, wl = z["hsi"], z["aviris_channel"], z["wavelengths_nm_nominal"]
    report = quality_report(hsi, wl, channels=channels)
    label = dict(enumerate(report.labels))
    all_zero = {label[i] for i in report.all_zero}
    assert all_zero == set(range(107, 114)) | set(range(153, 167)) | {224}
    negative = {label[i] for i in report.negative_bands}
    low = {label[i] for i in report.low_snr}
    assert {1, 2, 3} <= negative and {1, 2, 3} <= low
    assert not low & set(range(11, 104))  # the paper's clean VNIR channels are not flagged
    assert label[report.worst_negative()[0]] == 1
    assert "all-zero channels: 107-113, 153-166, 224" in format_quality(report)


def test_jasper_ridge_negatives_are_in_the_swir(real_scene):
    pytest.importorskip("pyrsr")
    with np.load(real_scene("aviris_jasperridge_100x100x198.npz")) as z:
        hsi, channels, wl, fwhm = z["hsi"], z["aviris_channel"], z["wavelengths_nm"], z["fwhm_nm"]
    srf = spectral_response("sentinel2a", wl, fwhm)
    report = quality_report(hsi, wl, srf, channels=channels)
    counts = np.array(report.negative_counts)
    assert report.negative_count == 16017 and not report.all_zero
    # Apart from the first channels at the blue end (4-5, ~400 nm, mostly negative), the negatives lie in the
    # SWIR, and so do most bands holding any.
    blue_end = wl < 420
    assert counts[~blue_end & (wl > 1000)].sum() > 0.95 * counts[~blue_end].sum()
    assert (counts[wl > 1000] > 0).sum() > 0.8 * (counts > 0).sum()
    # Sentinel-2 B2, B3, B4, B8 (half maximum 460-524, 543-578, 650-680, 785-900 nm) leave the rest unused.
    inside = np.zeros(wl.shape, dtype=bool)
    for lo, hi in [(460, 524), (543, 578), (650, 680), (785, 900)]:
        inside |= (wl >= lo) & (wl <= hi)
    unused = np.zeros(wl.shape, dtype=bool)
    unused[list(report.unused_by_srf)] = True
    assert not np.any(unused & inside) and np.all(unused[wl > 1000])
