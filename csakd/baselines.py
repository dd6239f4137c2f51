"""Classical baselines for an honest comparison: bicubic upsampling of the LR-HSI (no MSI at all), and GSA,
adaptive Gram-Schmidt component substitution (Aiazzi, Baronti, Selva, IEEE TGRS 2007) in the form used for
hyperspectral/multispectral fusion (Yokoya, Grohnfeldt, Chanussot, IEEE GRSM 2017): each hyperspectral band
is assigned to the multispectral band it correlates with best, and each group gets the spatial detail of its
multispectral band.

Every baseline maps lr_hsi (B, C, h, w) and hr_msi (B, M, s·h, s·w) to (B, C, s·h, s·w) like the networks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_fusion_inputs


def _scale_of(lr_hsi: torch.Tensor, hr_msi: torch.Tensor) -> int:
    h, w = lr_hsi.shape[-2:]
    s = hr_msi.shape[-2] // h if h else 0
    if s < 1:
        raise ValueError(f"hr_msi: expected a spatial size that is an integer multiple of lr_hsi's {(h, w)}, "
                         f"got {tuple(hr_msi.shape[-2:])}")
    check_fusion_inputs(lr_hsi, hr_msi, lr_hsi.shape[1], hr_msi.shape[1], s)
    return s


def bicubic(lr_hsi: torch.Tensor, hr_msi: torch.Tensor) -> torch.Tensor:
    """Bicubic upsampling of the LR-HSI to the MSI's grid (align_corners=False); ignores the MSI."""
    _scale_of(lr_hsi, hr_msi)
    return F.interpolate(lr_hsi, size=hr_msi.shape[-2:], mode="bicubic", align_corners=False)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _gsa_one(lr: torch.Tensor, msi: torch.Tensor, scale: int) -> torch.Tensor:
    """GSA of one image: lr (C, h, w), msi (M, H, W), float64."""
    c, m = lr.shape[0], msi.shape[0]
    up = F.interpolate(lr[None], size=msi.shape[-2:], mode="bicubic", align_corners=False)[0].reshape(c, -1)
    # The MSI seen at the LR-HSI's resolution (box average over each s x s cell).
    msi_lr = F.avg_pool2d(msi[None], scale)[0].reshape(m, -1)
    lr_flat = lr.reshape(c, -1)
    group = (_standardise(lr_flat) @ _standardise(msi_lr).T).argmax(dim=1)  # (C,) best-correlated MSI band
    out = up.clone()
    msi_flat = msi.reshape(m, -1)
    for k in range(m):
        members = (group == k).nonzero().flatten()
        if members.numel() == 0:
            continue
        # Intensity: the least-squares combination of the group's bands (plus a constant) that best explains
        # MSI band k at low resolution, applied to the upsampled bands.
        design = torch.cat([lr_flat[members], torch.ones_like(lr_flat[:1])]).T
        alpha = torch.linalg.lstsq(design, msi_lr[k:k + 1].T, driver="gelsd").solution.flatten()
        intensity = alpha[:-1] @ up[members] + alpha[-1]
        # MSI band matched to the intensity's mean and spread, then its detail injected with GSA's gains.
        band = msi_flat[k]
        matched = (band - band.mean()) * (intensity.std() / band.std().clamp_min(1e-12)) + intensity.mean()
        centred = intensity - intensity.mean()
        gains = ((up[members] - up[members].mean(dim=1, keepdim=True)) @ centred) / centred.square().sum().clamp_min(
            1e-12)
        out[members] = up[members] + gains[:, None] * (matched - intensity)[None]
    return out.reshape(c, *msi.shape[-2:])


def gsa(lr_hsi: torch.Tensor, hr_msi: torch.Tensor) -> torch.Tensor:
    """Adaptive Gram-Schmidt component substitution, per image (computed in float64)."""
    scale = _scale_of(lr_hsi, hr_msi)
    out = torch.stack([_gsa_one(lr.double(), msi.double(), scale) for lr, msi in zip(lr_hsi, hr_msi)])
    return out.to(lr_hsi.dtype)


BASELINES = {"bicubic": bicubic, "gsa": gsa}

__all__ = ["BASELINES", "bicubic", "gsa"]
