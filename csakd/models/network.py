"""The Dual Two-Streamed (DTS) network: four branches of CLRAs, CSA fusion and the head (SPEC §2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_fusion_inputs
from ..inference import prepared as inference
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

    `dtype` (torch.float32, torch.bfloat16 or torch.float16; None: off) turns on the prepared inference path:
    in eval mode with gradients off (`torch.inference_mode()` or `torch.no_grad()`), the forward casts the
    inputs to `dtype`, runs the network on weights prepared once for that dtype (see `prepare`) through the
    chosen backend, and returns the output (and features) in the inputs' dtype. Training mode, or any forward
    with gradients on, runs the module path on the parameters in the inputs' dtype, as without `dtype`.
    """

    def __init__(self, config: ModelConfig, backend: str | None = None, dtype=None):
        super().__init__()
        self.config = config
        self.backend = backend
        self._inference_dtype = None if dtype is None else inference.check_dtype(dtype)
        self.pad_channels: bool | None = None  # prepared path: None pads where it pays (see `prepare`)
        self._prepared: inference.Prepared | None = None
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
        if self._inference_dtype is not None and not self.training and not torch.is_grad_enabled():
            return inference.forward(self, lr_hsi, hr_msi, return_features)
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

    # ---- prepared inference path ------------------------------------------------------------------------------

    @property
    def inference_dtype(self) -> torch.dtype | None:
        """The compute dtype of the prepared inference path (None: off)."""
        return self._inference_dtype

    @inference_dtype.setter
    def inference_dtype(self, dtype) -> None:
        self._inference_dtype = None if dtype is None else inference.check_dtype(dtype)
        if dtype is None:
            self._prepared = None

    def prepare(self, dtype=None, pad: bool | None = None) -> "DTSNet":
        """Turns on the prepared inference path in `dtype` (default: the one set, else float32), prepares the
        weights now for the parameters' device, and returns the model (in eval mode).

        Prepared weights: the parameters cast to `dtype`, CSA weights folded (`csakd.models.csa.csa_folded`),
        and with `pad` the dense branches zero-padded to multiples of 16 channels (86 -> 96, 43 -> 48) for
        tensor cores; `pad=None` pads on CUDA in bf16/fp16 when the CLRAs run through cuDNN. They are rebuilt
        when any parameter changes (see `csakd.inference.prepared`); `invalidate_prepared()` forces that.
        """
        if dtype is not None or self._inference_dtype is None:
            self.inference_dtype = dtype if dtype is not None else torch.float32
        self.pad_channels = pad
        self.eval()
        inference.current(self, next(self.parameters()).device)
        return self

    def invalidate_prepared(self) -> None:
        """Marks the prepared weights stale: the next inference forward rebuilds them (in place where it can).
        Needed only after changes that autograd's version counters miss (`p.data` writes or assignments, fused
        optimizers, replacing a submodule) while the model stays in eval mode; switching mode with
        `train()`/`eval()` does the same."""
        prep = getattr(self, "_prepared", None)
        if prep is not None:
            prep.key = None

    def train(self, mode: bool = True):
        if mode != self.training:
            self.invalidate_prepared()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self.invalidate_prepared()
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_prepared"] = None  # derived tensors: never pickled or deep-copied
        return state

    def save(self, path) -> None:
        from ..io import save_model

        save_model(self, path)


def _preset_class(preset: str, doc: str):
    def __init__(self, bands: int = 172, msi_bands: int = 4, scale: int = 4, csa: str = "attention",
                 backend: str | None = None, dtype=None, **overrides):
        DTSNet.__init__(self, preset_config(preset, bands=bands, msi_bands=msi_bands, scale=scale, csa=csa,
                                            **overrides), backend=backend, dtype=dtype)

    return type(preset.title().replace("_", ""), (DTSNet,), {"__init__": __init__, "__doc__": doc})


Teacher = _preset_class("teacher", "The CSAKD teacher (depths 6/6/4/4, 26.8M parameters at C=172, M=4).")
Student = _preset_class("student", "The CSAKD student (depths 0/4/4/1, grouped h branch, 7.45M parameters).")
TeacherLarge = _preset_class("teacher_large", "The large teacher (depths 8/8/6/6).")
StudentLarge = _preset_class("student_large", "The large student, 'Student-L-Ext' (depths 0/4/4/4).")


def create(name: str, bands: int = 172, msi_bands: int = 4, scale: int = 4, csa: str = "attention",
           backend: str | None = None, dtype=None, **overrides) -> DTSNet:
    """Builds a preset ('teacher', 'student', 'teacher_large', 'student_large', or the small CPU presets
    'teacher_tiny'/'student_tiny'); `overrides` change any ModelConfig field; `dtype` sets the inference
    dtype (see `DTSNet`)."""
    return DTSNet(preset_config(name, bands=bands, msi_bands=msi_bands, scale=scale, csa=csa, **overrides),
                  backend=backend, dtype=dtype)


def from_config(config: ModelConfig, backend: str | None = None, dtype=None) -> DTSNet:
    return DTSNet(config, backend=backend, dtype=dtype)
