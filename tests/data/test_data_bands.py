"""AVIRIS tables, the 172-channel preset (SPEC §6) and bad-band detection."""
from pathlib import Path

import numpy as np
import pytest

from csakd.data import (AVIRIS_172_CHANNELS, aviris_172_fwhm, aviris_172_wavelengths, aviris_wavelengths,
                        find_bad_bands, select_bands)

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


def test_172_preset_drops_the_papers_channels():
    dropped = set(range(1, 11)) | set(range(104, 117)) | set(range(152, 171)) | set(range(215, 225))
    assert AVIRIS_172_CHANNELS == tuple(c for c in range(1, 225) if c not in dropped)
    wl = aviris_172_wavelengths()
    assert wl.shape == (172,) and aviris_172_fwhm().shape == (172,)
    assert 460 < wl.min() < 470 and 2390 < wl.max() < 2400  # channel 11 and channel 214
    assert wl[0] == aviris_wavelengths()[10]


@needs_data
def test_package_tables_equal_the_2014_calibration_and_the_papers_list():
    z = np.load(SHARED / "aviris_calibration_tables.npz")
    np.testing.assert_array_equal(aviris_wavelengths(), z["cal2014_center_nm"])
    np.testing.assert_array_equal(aviris_wavelengths(AVIRIS_172_CHANNELS),
                                  z["cal2014_center_nm"][z["paper_keep_channels"] - 1])
    assert AVIRIS_172_CHANNELS == tuple(int(c) for c in z["paper_keep_channels"])


def test_select_bands_by_channel_number():
    cube = np.arange(2 * 2 * 224).reshape(2, 2, 224)  # band value = channel - 1 + offset
    out = select_bands(cube)
    np.testing.assert_array_equal(out[0, 0], np.array(AVIRIS_172_CHANNELS) - 1)
    partial = cube[:, :, 3:201]  # channels 4..201
    out = select_bands(partial, [11, 12, 200], cube_channels=range(4, 202))
    np.testing.assert_array_equal(out[0, 0], [10, 11, 199])
    with pytest.raises(ValueError, match="missing 202-214"):
        select_bands(partial, AVIRIS_172_CHANNELS, cube_channels=range(4, 202))
    with pytest.raises(ValueError, match="cube_channels"):
        select_bands(partial)


def test_bad_band_report_names_zero_and_nonfinite_bands():
    cube = np.ones((4, 5, 10), dtype=np.float32)
    cube[:, :, [2, 3, 4, 8]] = 0
    cube[1, 1, 6] = np.nan
    cube[0, :, 7] = np.inf
    report = find_bad_bands(cube)
    assert report.all_zero == (2, 3, 4, 8) and report.non_finite == (6, 7)
    assert report.bad == (2, 3, 4, 6, 7, 8) and report.good == (0, 1, 5, 9) and not report.ok
    text = str(report)
    assert "6 of 10 bands" in text and "all-zero bands (1-based): 3-5, 9" in text and "7-8" in text
    named = find_bad_bands(cube, channels=range(101, 111))
    assert "channels: 103-105, 109" in str(named)
    assert find_bad_bands(np.ones((2, 2, 3), dtype=np.int16)).ok


@needs_data
def test_san_diego_blank_channels_are_found():
    z = np.load(SHARED / "aviris_sandiego_100x100x224.npz")
    report = find_bad_bands(z["hsi"], channels=z["aviris_channel"])
    zero_channels = {report.labels[i] for i in report.all_zero}
    assert zero_channels == set(range(107, 114)) | set(range(153, 167)) | {224}
    assert find_bad_bands(select_bands(z["hsi"])).ok
