"""Degradation (Wald's protocol, SPEC §6) against independent oracles: scipy convolution for the blur,
the SNR formula, skimage's phase correlation for the misregistration."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.signal import convolve2d
from skimage.registration import phase_cross_correlation

from csakd.data import (AVIRIS_172_CHANNELS, DegradationSpec, add_awgn, aviris_172_wavelengths, blur_decimate,
                        degrade, gaussian_psf, generate_scene, spectral_response, warp)

# numpy's padding extends periodically however far the kernel reaches (scipy.ndimage's modes do not once
# the kernel is larger than the image).
NUMPY_PAD = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge", "circular": "wrap",
             "zeros": "constant"}


@pytest.mark.parametrize("sigma,kind,size", [(3.0, "std", None), (3.0, "variance", None), (1.5, "std", 7),
                                              (0.0, "std", 5), (9.0, "variance", 13)])
def test_psf_sums_to_one_and_is_the_sampled_gaussian(sigma, kind, size):
    psf = gaussian_psf(sigma, size=size, kind=kind)
    std = sigma if kind == "std" else np.sqrt(sigma)
    side = size if size is not None else 2 * int(np.ceil(3 * std)) + 1
    assert psf.shape == (side, side)
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    r = np.arange(side) - side // 2
    expected = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std ** 2)) if std > 0 else \
        ((r[:, None] == 0) & (r[None, :] == 0)).astype(float)
    np.testing.assert_allclose(psf, expected / expected.sum(), rtol=1e-12, atol=1e-15)


def test_default_spec_states_std_3_and_kernel_19():
    spec = DegradationSpec()
    assert (spec.scale, spec.psf_std, spec.psf_sigma_kind, spec.psf_size) == (4, 3.0, "std", 19)
    assert "std 3" in spec.describe()


@given(h=st.integers(1, 6), w=st.integers(1, 6), scale=st.sampled_from([1, 2, 3, 4]), data=st.data(),
       boundary=st.sampled_from(sorted(NUMPY_PAD)), std=st.sampled_from([0.5, 1.0, 3.0]))
def test_blur_decimate_matches_padding_then_convolution(h, w, scale, data, boundary, std):
    phase = data.draw(st.integers(0, scale - 1))
    spec = DegradationSpec(scale=scale, psf_sigma=std, phase=phase, boundary=boundary)
    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((2, 3, h * scale, w * scale))
    out = blur_decimate(torch.tensor(x), spec).numpy()
    psf = gaussian_psf(std)
    for n in range(2):
        for c in range(3):
            r = psf.shape[0] // 2
            full = convolve2d(np.pad(x[n, c], r, mode=NUMPY_PAD[boundary]), psf, mode="valid")
            np.testing.assert_allclose(out[n, c], full[phase::scale, phase::scale], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("boundary", ["reflect", "symmetric", "replicate", "circular"])
def test_constant_image_stays_constant(boundary):
    spec = DegradationSpec(boundary=boundary, srf_preset="landsat_tm_6")
    hr = torch.full((2, 172, 32, 48), 0.37, dtype=torch.float64)
    lr, msi = degrade(hr, spec, aviris_172_wavelengths())
    assert lr.shape == (2, 172, 8, 12) and msi.shape == (2, 6, 32, 48)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.37), rtol=0, atol=1e-14)
    torch.testing.assert_close(msi, torch.full_like(msi, 0.37), rtol=0, atol=1e-14)


def test_degrade_is_affine_equivariant_so_normalising_before_or_after_agrees():
    spec = DegradationSpec(srf_preset="landsat_tm_6")
    wl = aviris_172_wavelengths()
    x = torch.tensor(generate_scene(32, 32, seed=3)).permute(2, 0, 1).double()
    lr, msi = degrade(x, spec, wl)
    lr2, msi2 = degrade(5 * x - 2, spec, wl)
    torch.testing.assert_close(lr2, 5 * lr - 2)
    torch.testing.assert_close(msi2, 5 * msi - 2)


@pytest.mark.parametrize("preset", ["landsat_tm_4", "landsat_tm_6"])
def test_boxcar_rows_sum_to_one_and_vanish_outside_their_range(preset):
    wl = aviris_172_wavelengths()
    srf = spectral_response(preset, wl)
    ranges = {"landsat_tm_4": [(450, 520), (520, 600), (630, 690), (770, 900)],
              "landsat_tm_6": [(450, 520), (520, 600), (630, 690), (770, 900), (1550, 1750), (2090, 2350)]}[preset]
    assert srf.shape == (len(ranges), 172)
    np.testing.assert_allclose(srf.sum(axis=1), 1.0, atol=1e-12)
    for row, (lo, hi) in zip(srf, ranges):
        inside = (wl >= lo) & (wl <= hi)
        assert np.all(row[~inside] == 0)
        np.testing.assert_allclose(row[inside], 1 / inside.sum())  # a boxcar: equal weights


def test_gaussian_and_csv_responses():
    wl = aviris_172_wavelengths()
    g = spectral_response("landsat_tm_4", wl, model="gaussian")
    np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.abs(wl[g.argmax(axis=1)] - np.array([485, 560, 660, 835])) < 10)
    widened = spectral_response("landsat_tm_4", wl, model="gaussian", fwhm=np.full(172, 40.0))
    assert widened[0].max() < g[0].max()  # wider HSI bands spread the weight


def test_csv_response_interpolates_and_normalises(tmp_path):
    path = tmp_path / "srf.csv"
    path.write_text("wavelength,blue,nir\n400,0,0\n450,1,0\n500,1,0\n550,0,0\n800,0,2\n900,0,2\n")
    wl = np.array([420.0, 450.0, 475.0, 525.0, 600.0, 850.0, 950.0])
    srf = spectral_response(None, wl, csv_path=path)
    blue = np.array([0.4, 1, 1, 0.5, 0, 0, 0])
    nir = np.array([0, 0, 0, 0, 2 * 50 / 250, 2, 0])
    np.testing.assert_allclose(srf, np.stack([blue / blue.sum(), nir / nir.sum()]))


def test_response_errors_are_clear():
    with pytest.raises(ValueError, match="band 1"):
        spectral_response(None, np.array([600.0, 700.0]), ranges=[(450, 520)])
    with pytest.raises(ValueError, match="preset"):
        spectral_response("sentinel", aviris_172_wavelengths())
    with pytest.raises(ValueError, match="exactly one"):
        spectral_response("landsat_tm_4", aviris_172_wavelengths(), ranges=[(450, 520)])


@pytest.mark.parametrize("snr", [20.0, 35.0])
def test_measured_snr_matches_the_request(snr):
    x = torch.rand(4, 16, 256, 256) + 0.2
    y = add_awgn(x, snr, torch.Generator().manual_seed(1))
    measured = 10 * np.log10(float(x.double().square().mean()) / float((y - x).double().square().mean()))
    assert abs(measured - snr) < 0.2


def test_noise_is_seeded_and_goes_where_asked():
    x = torch.tensor(generate_scene(64, 64)).permute(2, 0, 1)
    wl = aviris_172_wavelengths()
    clean = degrade(x, DegradationSpec(), wl)
    lr_only = degrade(x, DegradationSpec(snr_db=30, noise_on="lr", noise_seed=5), wl)
    msi_only = degrade(x, DegradationSpec(snr_db=30, noise_on="msi", noise_seed=5), wl)
    assert torch.equal(lr_only[1], clean[1]) and not torch.equal(lr_only[0], clean[0])
    assert torch.equal(msi_only[0], clean[0]) and not torch.equal(msi_only[1], clean[1])
    again = degrade(x, DegradationSpec(snr_db=30, noise_on="lr", noise_seed=5), wl)
    assert torch.equal(again[0], lr_only[0])
    other = degrade(x, DegradationSpec(snr_db=30, noise_on="lr", noise_seed=6), wl)
    assert not torch.equal(other[0], lr_only[0])


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.7), (2.25, 1.5), (-1.6, 0.4)])
def test_misregistration_shift_is_recovered_by_phase_correlation(shift):
    scene = generate_scene(160, 160, seed=2)
    x = torch.tensor(scene).permute(2, 0, 1).double()
    wl = aviris_172_wavelengths()
    _, msi = degrade(x, DegradationSpec(), wl)
    _, moved = degrade(x, DegradationSpec(msi_shift=shift), wl)
    # Interiors (the reflected border is no true shift), mean removed and Hann-windowed so that the frame
    # does not pull the peak to zero; the upsampled cross-correlation peak (Guizar-Sicairos et al.) is
    # unbiased here, whereas whitening (phase-only) weights the aliased top octave as much as the rest.
    window = np.outer(np.hanning(128), np.hanning(128))
    ref, mov = (m[2, 16:-16, 16:-16].numpy() for m in (msi, moved))
    found, _, _ = phase_cross_correlation((mov - mov.mean()) * window, (ref - ref.mean()) * window,
                                          upsample_factor=100, normalization=None)
    np.testing.assert_allclose(found, shift, atol=0.05)


def test_affine_moves_a_point_as_stated():
    h, w = 64, 80
    yy, xx = np.mgrid[:h, :w]
    p = np.array([20.0, 50.0])  # (y, x)
    blob = torch.tensor(np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / (2 * 2.0 ** 2)))[None, None]
    angle = np.deg2rad(4.0)
    a = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * 1.02
    out = warp(blob, shift=(1.5, -2.0), affine=a)[0, 0].numpy()
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    expected = a @ (p - centre) + centre + np.array([1.5, -2.0])
    found = np.array([(yy * out).sum(), (xx * out).sum()]) / out.sum()
    np.testing.assert_allclose(found, expected, atol=0.05)


def test_spec_json_round_trip_and_validation(tmp_path):
    spec = DegradationSpec(scale=8, psf_sigma=4.0, psf_sigma_kind="variance", boundary="circular", phase=3,
                           srf_preset=None, srf_ranges=[(450, 520), (770, 900)], snr_db=30, noise_on="both",
                           noise_seed=7, msi_shift=[0.5, -0.25], msi_affine=[[1.01, 0.0], [0.0, 0.99]])
    assert DegradationSpec.from_json(spec.to_json()) == spec
    assert DegradationSpec.load(spec.save(tmp_path / "spec.json")) == spec
    assert json.loads(spec.to_json())["psf_sigma_kind"] == "variance"
    assert spec.psf_std == 2.0 and spec.psf_size == 13
    for bad, match in [({"scale": 0}, "scale"), ({"psf_sigma_kind": "fwhm"}, "psf_sigma_kind"),
                       ({"psf_size": 4}, "psf_size"), ({"phase": 4}, "phase"), ({"boundary": "wrap"}, "boundary"),
                       ({"srf_preset": None}, "exactly one"), ({"noise_on": "hr"}, "noise_on"),
                       ({"snr_db": float("nan")}, "snr_db"), ({"msi_shift": (1, 2, 3)}, "msi_shift"),
                       ({"msi_affine": [[0, 0], [0, 0]]}, "msi_affine")]:
        with pytest.raises(ValueError, match=match):
            DegradationSpec(**bad)
    with pytest.raises(ValueError, match="unknown"):
        DegradationSpec.from_dict({"scale": 4, "blur": 3})
    with pytest.raises(ValueError, match="invalid JSON"):
        DegradationSpec.from_json("{scale: 4")


def test_degrade_accepts_chw_and_batches_and_checks_inputs():
    wl = aviris_172_wavelengths()
    x = torch.tensor(generate_scene(32, 32)).permute(2, 0, 1)
    lr, msi = degrade(x, DegradationSpec(), wl)
    lrb, msib = degrade(torch.stack([x, x.flip(-1)]), DegradationSpec(), wl)
    assert lr.shape == (172, 8, 8) and msi.shape == (4, 32, 32) and lr.dtype == torch.float32
    torch.testing.assert_close(lrb[0], lr)
    with pytest.raises(ValueError, match="divisible by scale 4"):
        degrade(x[:, :30], DegradationSpec(), wl)
    with pytest.raises(ValueError, match="wavelengths: expected 172"):
        degrade(x, DegradationSpec(), wl[:100])
    bad = x.clone()
    bad[5, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        degrade(bad, DegradationSpec(), wl)
    with pytest.raises(ValueError, match="floating"):
        degrade(x.to(torch.int32), DegradationSpec(), wl)
    assert len(AVIRIS_172_CHANNELS) == 172


def test_half_precision_inputs_are_degraded_in_float32():
    wl = aviris_172_wavelengths()
    x = torch.tensor(generate_scene(32, 32)).permute(2, 0, 1)
    spec = DegradationSpec(msi_shift=(0.5, 0.25), snr_db=40)
    lr, msi = degrade(x.bfloat16().float(), spec, wl)
    lr16, msi16 = degrade(x.bfloat16(), spec, wl)
    assert lr16.dtype == msi16.dtype == torch.bfloat16
    torch.testing.assert_close(lr16, lr.bfloat16(), rtol=0, atol=0)  # the float32 result, rounded once
    torch.testing.assert_close(msi16, msi.bfloat16(), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_degrade_on_gpu_matches_cpu(dtype):
    wl = aviris_172_wavelengths()
    x = torch.tensor(generate_scene(256, 256)).permute(2, 0, 1)[None].repeat(4, 1, 1, 1)
    spec = DegradationSpec(snr_db=35, noise_on="both", msi_shift=(0.5, -0.5))
    lr, msi = degrade(x, spec, wl)
    lr_gpu, msi_gpu = degrade(x.cuda().to(dtype), spec, wl)
    assert lr_gpu.device.type == "cuda" and lr_gpu.dtype == dtype
    # bf16: the input and the outputs are rounded once each (relative step 2^-8).
    rtol, atol = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 4e-3)}[dtype]
    torch.testing.assert_close(lr_gpu.float().cpu(), lr, rtol=rtol, atol=atol)
    torch.testing.assert_close(msi_gpu.float().cpu(), msi, rtol=rtol, atol=atol)
