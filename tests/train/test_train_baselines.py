"""Classical baselines: bicubic upsampling and GSA component substitution."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csakd import metrics
from csakd.baselines import BASELINES, bicubic, gsa


def test_bicubic_is_torch_bicubic_upsampling(tiny_train):
    item = tiny_train[0]
    lr, msi = item["lr_hsi"][None], item["hr_msi"][None]
    expected = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic(lr, msi), expected)


def test_gsa_recovers_bands_that_are_affine_in_one_msi_band():
    """If every HSI band is a_c·P + b_c for one MSI band P, GSA's output band c is an affine function of P
    (its detail injection gain is exactly a_c), so it correlates perfectly with the truth."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, 1, 32, 32, generator=g, dtype=torch.float64)
    a = torch.linspace(0.5, 2.0, 6, dtype=torch.float64).view(1, 6, 1, 1)
    b = torch.linspace(-0.2, 0.3, 6, dtype=torch.float64).view(1, 6, 1, 1)
    hr = a * p + b
    lr = F.avg_pool2d(hr, 4)
    out = gsa(lr, p)
    for c in range(6):
        corr = np.corrcoef(out[0, c].flatten().numpy(), hr[0, c].flatten().numpy())[0, 1]
        assert corr == pytest.approx(1.0, abs=1e-9)
    up_corr = np.corrcoef(bicubic(lr, p)[0, 0].flatten().numpy(), hr[0, 0].flatten().numpy())[0, 1]
    assert up_corr < 0.9


def test_gsa_beats_bicubic_on_generated_scenes(tiny_train):
    gains = []
    for k in range(len(tiny_train)):
        item = tiny_train[k]
        lr, msi, hr = item["lr_hsi"][None], item["hr_msi"][None], item["hr_hsi"][None]
        gains.append(metrics.psnr(gsa(lr, msi), hr) - metrics.psnr(bicubic(lr, msi), hr))
    assert min(gains) > 1.0, gains


def test_baselines_check_their_inputs():
    for method in BASELINES.values():
        with pytest.raises(ValueError, match="hr_msi"):
            method(torch.rand(1, 6, 8, 8), torch.rand(1, 4, 30, 30))
