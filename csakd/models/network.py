"""The Dual Two-Streamed (DTS) network: four branches of CLRAs, CSA fusion and the head (SPEC §2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_fusion_inputs
from .blocks import CLRA, SLOPE, Stem
from .config import ModelConfig, preset_config
from .csa import CSAFusion


class Branch(nn.Module):
    """Stem followed by `depth` CLRAs."""

    def __init__(self, cin: int, nf: int, gc: int, depth: int, groups: int):
        super().__init__()
        self.stem = Stem(cin, nf)
        self.clras = nn.ModuleList(CLRA(nf, gc, groups) for _ in range(depth))

    def forward(self, x: torch.Tensor, run_clra) -> torch.Tensor:
        x = self.stem(x)
        for clra in self.clras:
            x = run_clra(clra, x)
        return x


class DTSNet(nn.Module):
    """Fuses lr_hsi (B, C, h, w) and hr_msi (B, M, s*h, s*w) into hr_hsi (B, C, s*h, s*w).

    `backend` picks the implementation of the CLRAs and the CSA through `csakd.ops` (None: the process-wide
    default, see `csakd.set_backend`); parameters and results are the same on every backend.
    """

    def __init__(self, config: ModelConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        self.backend = backend
        c, m, nf, gc = config.bands, config.msi_bands, config.nf, config.gc
        d_hm, d_mh, d_h, d_m = config.depths
        self.branches = nn.ModuleDict({
            "hm": Branch(c + m, nf, gc, d_hm, 1),
            "mh": Branch(c + m, nf, gc, d_mh, 1),
            "h": Branch(c, nf, gc, d_h, config.h_groups),
            "m": Branch(m, nf, gc, d_m, 1),
        })
        self.csa = CSAFusion(nf, config.attn_dim, config.heads, config.csa)
        self.fuse = nn.Conv2d(nf, c, 3, padding=1)
        self.last = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, lr_hsi: torch.Tensor, hr_msi: torch.Tensor, return_features: bool = False):
        cfg = self.config
        check_fusion_inputs(lr_hsi, hr_msi, cfg.bands, cfg.msi_bands, cfg.scale)
        from .. import ops  # late import: ops imports the models for its reference path

        impl = ops.resolve(self.backend, lr_hsi)
        hr_size = hr_msi.shape[-2:]
        up_lr = F.interpolate(lr_hsi, size=hr_size, mode="bilinear", align_corners=False)
        down_msi = F.interpolate(hr_msi, size=lr_hsi.shape[-2:], mode="bicubic", align_corners=False)

        x4 = self.branches["hm"](torch.cat([up_lr, hr_msi], dim=1), impl.clra)
        x3 = self.branches["mh"](torch.cat([lr_hsi, down_msi], dim=1), impl.clra)
        x1 = self.branches["h"](lr_hsi, impl.clra)
        x2 = self.branches["m"](hr_msi, impl.clra)
        x3 = F.interpolate(x3, size=hr_size, mode="nearest")
        x1 = F.interpolate(x1, size=hr_size, mode="nearest")

        fused = impl.csa(self.csa, x1, x2, x3, x4)
        hr_hsi = self.last(F.leaky_relu(self.fuse(fused), SLOPE))
        return (hr_hsi, fused) if return_features else hr_hsi

    def save(self, path) -> None:
        from ..io import save_model

        save_model(self, path)


def _preset_class(preset: str, doc: str):
    def __init__(self, bands: int = 172, msi_bands: int = 4, scale: int = 4, csa: str = "attention",
                 backend: str | None = None, **overrides):
        DTSNet.__init__(self, preset_config(preset, bands=bands, msi_bands=msi_bands, scale=scale, csa=csa,
                                            **overrides), backend=backend)

    return type(preset.title().replace("_", ""), (DTSNet,), {"__init__": __init__, "__doc__": doc})


Teacher = _preset_class("teacher", "The CSAKD teacher (depths 6/6/4/4, 26.8M parameters at C=172, M=4).")
Student = _preset_class("student", "The CSAKD student (depths 0/4/4/1, grouped h branch, 7.45M parameters).")
TeacherLarge = _preset_class("teacher_large", "The large teacher (depths 8/8/6/6).")
StudentLarge = _preset_class("student_large", "The large student, 'Student-L-Ext' (depths 0/4/4/4).")


def create(name: str, bands: int = 172, msi_bands: int = 4, scale: int = 4, csa: str = "attention",
           backend: str | None = None, **overrides) -> DTSNet:
    """Builds a preset ('teacher', 'student', 'teacher_large', 'student_large', or the small CPU presets
    'teacher_tiny'/'student_tiny'); `overrides` change any ModelConfig field."""
    return DTSNet(preset_config(name, bands=bands, msi_bands=msi_bands, scale=scale, csa=csa, **overrides),
                  backend=backend)


def from_config(config: ModelConfig, backend: str | None = None) -> DTSNet:
    return DTSNet(config, backend=backend)
