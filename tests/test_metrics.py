"""Metrics (SPEC §5) against independent computations: scikit-image for PSNR and SSIM, numpy formulas written
here for SAM, RMSE and ERGAS; edge cases; numpy and torch inputs."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from csakd import metrics

RTOL = 1e-6


def pair(seed=0, shape=(3, 6, 19, 23), noise=0.05):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.1, 2.0, shape)
    return target + noise * rng.standard_normal(shape), target


# ---- oracles (written independently of csakd.metrics) -----------------------------------------------------

def psnr_oracle(pred, target, data_range=None):
    """skimage's PSNR per band (peak = band max or the fixed data range), averaged over bands, per image."""
    return np.array([np.mean([peak_signal_noise_ratio(t, p, data_range=t.max() if data_range is None else data_range)
                              for p, t in zip(pi, ti)]) for pi, ti in zip(pred, target)])


def ssim_oracle(pred, target, data_range=None):
    return np.array([np.mean([structural_similarity(t, p, data_range=t.max() if data_range is None else data_range,
                                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                    K1=0.01, K2=0.03)
                              for p, t in zip(pi, ti)]) for pi, ti in zip(pred, target)])


def sam_oracle(pred, target):
    """Per image: mean angle (degrees) over pixels with nonzero spectra in both, and the count left out."""
    values, excluded = [], []
    for p, t in zip(pred, target):
        a = p.reshape(p.shape[0], -1).T
        b = t.reshape(t.shape[0], -1).T
        na, nb = np.sqrt((a * a).sum(1)), np.sqrt((b * b).sum(1))
        keep = (na > 0) & (nb > 0)
        cos = np.clip((a[keep] * b[keep]).sum(1) / (na[keep] * nb[keep]), -1, 1)
        values.append(np.degrees(np.arccos(cos)).mean())
        excluded.append(int((~keep).sum()))
    return np.array(values), np.array(excluded)


def rmse_oracle(pred, target):
    return np.array([math.sqrt(np.mean((t - p) ** 2)) for p, t in zip(pred, target)])


def ergas_oracle(pred, target, scale):
    out = []
    for p, t in zip(pred, target):
        ratios = [np.mean((tb - pb) ** 2) / np.mean(tb) ** 2 for pb, tb in zip(p, t)]
        out.append(100.0 / scale * math.sqrt(np.mean(ratios)))
    return np.array(out)


# ---- agreement with the oracles ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_matches_skimage(seed):
    pred, target = pair(seed)
    np.testing.assert_allclose(metrics.psnr(pred, target, reduction="none"), psnr_oracle(pred, target), rtol=RTOL)
    np.testing.assert_allclose(metrics.psnr(pred, target, convention="data_range", data_range=2.0, reduction="none"),
                               psnr_oracle(pred, target, data_range=2.0), rtol=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_skimage(seed):
    pred, target = pair(seed, noise=0.3)
    np.testing.assert_allclose(metrics.ssim(pred, target, reduction="none"), ssim_oracle(pred, target), rtol=RTOL)
    np.testing.assert_allclose(metrics.ssim(pred, target, convention="data_range", data_range=1.0, reduction="none"),
                               ssim_oracle(pred, target, data_range=1.0), rtol=RTOL)


def test_ssim_on_more_bands_than_one_chunk():
    pred, target = pair(2, shape=(1, 70, 12, 13), noise=0.2)
    np.testing.assert_allclose(metrics.ssim(pred, target, reduction="none"), ssim_oracle(pred, target), rtol=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_sam_rmse_ergas_match_numpy_formulas(seed):
    pred, target = pair(seed, noise=0.2)
    values, excluded = metrics.sam(pred, target, reduction="none", return_excluded=True)
    want_values, want_excluded = sam_oracle(pred, target)
    np.testing.assert_allclose(values, want_values, rtol=RTOL)
    np.testing.assert_array_equal(excluded, want_excluded)
    np.testing.assert_allclose(metrics.rmse(pred, target, reduction="none"), rmse_oracle(pred, target), rtol=RTOL)
    np.testing.assert_allclose(metrics.ergas(pred, target, scale=4, reduction="none"),
                               ergas_oracle(pred, target, 4), rtol=RTOL)


def test_sam_of_hand_computed_angles():
    # Two pixels: spectra (1, 0) vs (1, 1) is 45 degrees, (0, 2) vs (0, 3) is 0 degrees; mean 22.5.
    target = np.array([[[1.0, 0.0]], [[1.0, 3.0]]])   # (C=2, H=1, W=2)
    pred = np.array([[[1.0, 0.0]], [[0.0, 2.0]]])
    assert metrics.sam(pred, target) == pytest.approx(22.5, rel=1e-12)


def test_mean_reduction_is_the_mean_of_per_image_values():
    pred, target = pair(3)
    for name in ("psnr", "sam", "rmse", "ssim"):
        fn = getattr(metrics, name)
        assert fn(pred, target) == pytest.approx(np.mean(fn(pred, target, reduction="none")), rel=1e-12)
    assert metrics.ergas(pred, target, 4) == pytest.approx(np.mean(metrics.ergas(pred, target, 4, reduction="none")),
                                                          rel=1e-12)


def test_evaluate_all_equals_the_single_metrics():
    pred, target = pair(4)
    for reduction in ("mean", "none"):
        got = metrics.evaluate_all(pred, target, scale=4, convention="data_range", data_range=2.0,
                                   reduction=reduction)
        sam_value, excluded = metrics.sam(pred, target, reduction=reduction, return_excluded=True)
        want = {"psnr": metrics.psnr(pred, target, "data_range", 2.0, reduction),
                "sam": sam_value, "sam_excluded": excluded,
                "rmse": metrics.rmse(pred, target, reduction),
                "ergas": metrics.ergas(pred, target, 4, reduction),
                "ssim": metrics.ssim(pred, target, "data_range", 2.0, reduction)}
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# ---- edge cases -------------------------------------------------------------------------------------------

def test_zero_norm_pixels_are_excluded_and_counted():
    pred, target = pair(5, shape=(2, 5, 8, 9))
    pred[0, :, 1, 2] = 0          # zero predicted spectrum
    target[0, :, 3, 4] = 0        # zero true spectrum
    pred[1, :, 0, 0] = target[1, :, 0, 0] = 0   # both zero
    values, excluded = metrics.sam(pred, target, reduction="none", return_excluded=True)
    want_values, want_excluded = sam_oracle(pred, target)
    np.testing.assert_array_equal(excluded, [2, 1])
    np.testing.assert_array_equal(want_excluded, [2, 1])
    np.testing.assert_allclose(values, want_values, rtol=RTOL)
    assert np.all(np.isfinite(values))
    assert metrics.sam(pred, target, return_excluded=True)[1] == 3


def test_sam_refuses_an_image_without_valid_pixels():
    pred, target = pair(6, shape=(2, 3, 4, 4))
    pred[1] = 0
    with pytest.raises(ValueError, match="image 1"):
        metrics.sam(pred, target)


def test_identical_images():
    _, target = pair(7)
    for convention, data_range in (("paper", None), ("data_range", 2.0)):
        assert metrics.psnr(target, target, convention, data_range) == math.inf
        assert metrics.ssim(target, target, convention, data_range) == pytest.approx(1.0, abs=1e-12)
    assert metrics.sam(target, target) == pytest.approx(0.0, abs=1e-5)   # arccos near 1 is ill-conditioned
    assert metrics.rmse(target, target) == 0.0
    assert metrics.ergas(target, target, 4) == 0.0


def test_an_exact_image_makes_the_batch_mean_infinite_never_nan():
    pred, target = pair(8)
    pred[1] = target[1]
    per_image = metrics.psnr(pred, target, reduction="none")
    assert per_image[1] == math.inf
    assert np.isfinite(per_image[[0, 2]]).all()
    np.testing.assert_allclose(per_image[[0, 2]], psnr_oracle(pred[[0, 2]], target[[0, 2]]), rtol=RTOL)
    assert metrics.psnr(pred, target) == math.inf


def test_constant_bands():
    pred, target = pair(9, shape=(1, 4, 16, 16))
    target[0, 1] = 0.7
    pred[0, 1] = 0.5                       # constant band predicted as another constant
    target[0, 2] = pred[0, 2] = 1.3        # constant band predicted exactly
    per_band_psnr = 10 * math.log10(0.7 ** 2 / 0.2 ** 2)
    assert math.isclose(peak_signal_noise_ratio(target[0, 1], pred[0, 1], data_range=0.7), per_band_psnr,
                        rel_tol=RTOL)
    assert metrics.psnr(pred, target) == math.inf
    keep = [0, 1, 3]
    np.testing.assert_allclose(metrics.psnr(pred[:, keep], target[:, keep]),
                               psnr_oracle(pred[:, keep], target[:, keep]), rtol=RTOL)
    np.testing.assert_allclose(metrics.ssim(pred, target, reduction="none"), ssim_oracle(pred, target), rtol=RTOL)
    np.testing.assert_allclose(metrics.ergas(pred, target, 4, reduction="none"), ergas_oracle(pred, target, 4),
                               rtol=RTOL)


def test_zero_bands_under_the_paper_convention_are_refused():
    pred, target = pair(10, shape=(2, 3, 12, 12))
    target[1, 2] = 0
    for fn in (metrics.psnr, metrics.ssim):
        with pytest.raises(ValueError, match=r"target: .*image 1, band 2"):
            fn(pred, target)
        assert math.isfinite(fn(pred, target, convention="data_range", data_range=1.0))
    with pytest.raises(ValueError, match=r"target: .*ERGAS.*image 1, band 2"):
        metrics.ergas(pred, target, 4)


# ---- input forms ------------------------------------------------------------------------------------------

def test_numpy_and_torch_inputs_give_the_same_numbers():
    pred, target = pair(11, shape=(2, 5, 14, 12))
    pred32, target32 = pred.astype(np.float32), target.astype(np.float32)
    forms = [(pred32, target32), (torch.from_numpy(pred32), torch.from_numpy(target32)),
             (torch.from_numpy(pred32), target32)]
    results = [metrics.evaluate_all(p, t, scale=4, reduction="none") for p, t in forms]
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key])


def test_a_single_image_equals_a_batch_of_one():
    pred, target = pair(12, shape=(1, 5, 12, 12))
    single = metrics.evaluate_all(pred[0], target[0], scale=4, reduction="none")
    batch = metrics.evaluate_all(pred, target, scale=4, reduction="none")
    for key in batch:
        assert single[key].shape == (1,)
        np.testing.assert_array_equal(single[key], batch[key])


def test_integer_inputs_are_accepted():
    rng = np.random.default_rng(13)
    target = rng.integers(100, 4000, (1, 3, 12, 12), dtype=np.int16)
    pred = target + rng.integers(-50, 50, target.shape, dtype=np.int16)
    np.testing.assert_allclose(metrics.psnr(pred, target, reduction="none"),
                               psnr_oracle(pred.astype(np.float64), target.astype(np.float64)), rtol=RTOL)


@pytest.mark.parametrize("bad,pattern", [
    (dict(target=np.ones((1, 3, 12, 11))),
     r"target: expected the shape of pred \(1, 3, 12, 12\), got \(1, 3, 12, 11\)"),
    (dict(pred=np.ones((3, 12))), r"pred: expected a \(C, H, W\) or \(B, C, H, W\).*got shape \(3, 12\)"),
    (dict(pred=np.ones((1, 1, 3, 12, 12))), r"pred: expected .*got shape \(1, 1, 3, 12, 12\)"),
    (dict(pred=np.full((1, 3, 12, 12), np.nan)), r"pred: expected finite values"),
    (dict(target=np.full((1, 3, 12, 12), np.inf)), r"target: expected finite values"),
    (dict(pred=[[[1.0]]]), r"pred: expected a torch.Tensor or numpy.ndarray, got list"),
    (dict(pred=np.ones((1, 3, 12, 12), dtype=bool)), r"pred: expected a real numeric array, got dtype bool"),
    (dict(convention="dB"), r"convention: expected one of \('paper', 'data_range'\), got 'dB'"),
    (dict(convention="data_range"), r"data_range: expected a positive finite number"),
    (dict(convention="data_range", data_range=-1.0), r"data_range: expected a positive finite number.*-1.0"),
    (dict(data_range=1.0), r"data_range: expected None with convention='paper'"),
    (dict(reduction="sum"), r"reduction: expected one of \('mean', 'none'\), got 'sum'"),
])
def test_bad_inputs_are_refused_with_a_named_argument(bad, pattern):
    args = dict(pred=np.ones((1, 3, 12, 12)), target=np.ones((1, 3, 12, 12)), convention="paper", data_range=None,
                reduction="mean")
    args.update(bad)
    with pytest.raises(ValueError, match=pattern):
        metrics.psnr(**args)


def test_other_argument_checks():
    x = np.ones((1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"scale: expected a positive finite number.*got 0"):
        metrics.ergas(x, x, scale=0)
    with pytest.raises(ValueError, match=r"scale: .*got True"):
        metrics.evaluate_all(x, x, scale=True)
    with pytest.raises(ValueError, match=r"pred: expected a spatial size of at least 11x11.*got 8x8"):
        metrics.ssim(x, x)


@pytest.mark.gpu
def test_cuda_tensors_give_the_cpu_numbers():
    pred, target = (a.astype(np.float32) for a in pair(14, shape=(2, 172, 64, 64)))
    cpu = metrics.evaluate_all(pred, target, scale=4, reduction="none")
    gpu = metrics.evaluate_all(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda(), scale=4,
                               reduction="none")
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-9)   # same float64 math, other summation order
    with pytest.raises(ValueError, match="target: expected the device of pred"):
        metrics.psnr(torch.from_numpy(pred).cuda(), torch.from_numpy(target))
