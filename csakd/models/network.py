"""The Dual Two-Streamed (DTS) network: four branches of CLRAs, CSA fusion and the head (docs/architecture.md).

`dts_forward` is the network's wiring, written once: which input feeds which branch at which resolution, the
interpolations, the CSA inputs and the head. It takes the parts as functions, so the module path (parameters
through the chosen backend) and the prepared inference path (`csakd.inference.prepared`) run the same wiring.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_fusion_inputs
from ..inference import prepared as inference
from .blocks import CLRA, SLOPE, Stem
from .config import ModelConfig, preset_config
from .csa import CSAFusion, check_attention

BranchFn = Callable[[str, torch.Tensor], torch.Tensor]


def query_key_features(lr_hsi: torch.Tensor, hr_msi: torch.Tensor, branch: BranchFn):
    """x1 = up(Z_h), the CSA's query source, and x2 = Z_m, its key source, at HR."""
    x1 = F.interpolate(branch("h", lr_hsi), size=hr_msi.shape[-2:], mode="nearest")
    x2 = branch("m", hr_msi)
    return x1, x2


def dts_forward(lr_hsi: torch.Tensor, hr_msi: torch.Tensor, branch: BranchFn, csa, head):
    """(hr_hsi, fused) of the DTS network; branch(name, x) runs branch "hm", "mh", "h" or "m" on x,
    csa(x1, x2, x3, x4) fuses, head(fused) reconstructs."""
    hr_size = hr_msi.shape[-2:]
    up_lr = F.interpolate(lr_hsi, size=hr_size, mode="bilinear", align_corners=False)
    down_msi = F.interpolate(hr_msi, size=lr_hsi.shape[-2:], mode="bicubic", align_corners=False)
    x1, x2 = query_key_features(lr_hsi, hr_msi, branch)
    x3 = F.interpolate(branch("mh", torch.cat([lr_hsi, down_msi], dim=1)), size=hr_size, mode="nearest")
    x4 = branch("hm", torch.cat([up_lr, hr_msi], dim=1))
    fused = csa(x1, x2, x3, x4)
    return head(fused), fused


class Branch(nn.Module):
    """Stem followed by `depth` CLRAs."""

    def __init__(self, cin: int, nf: int, gc: int, depth: int, groups: int):
        super().__init__()
        self.stem = Stem(cin, nf)
        self.clras = nn.ModuleList(CLRA(nf, gc, groups) for _ in range(depth))

    def forward(self, x: torch.Tensor, clra=None) -> torch.Tensor:
        """`clra(x, clrb_params, groups)` runs each CLRA (default: the modules themselves)."""
        x = self.stem(x)
        for block in self.clras:
            x = block(x) if clra is None else clra(x, block.params(), block.groups)
        return x


class DTSNet(nn.Module):
    """Fuses lr_hsi (B, C, h, w) and hr_msi (B, M, s*h, s*w) into hr_hsi (B, C, s*h, s*w).

    `backend` picks the implementation of the CLRAs and the CSA through `csakd.ops` (None: the process-wide
    default, see `csakd.set_backend`); parameters and results are the same on every backend.

    `dtype` (torch.float32, torch.bfloat16 or torch.float16, "auto"; None: off) turns on the prepared inference
    path: in eval mode with gradients off (`torch.inference_mode()` or `torch.no_grad()`), the forward casts the
    inputs to `dtype`, runs the network on weights prepared once for that dtype (see `prepare`) through the
    chosen backend, and returns the output (and features) in the inputs' dtype. "auto" is bf16 where the
    parameters' device computes it natively (a GPU with bf16; a CPU with AVX-512 BF16 or AMX), else fp32.
    Training mode, or any forward with gradients on, runs the module path on the parameters in the inputs'
    dtype, as without `dtype`.

    `attention` (mode "attention" only; (1 or B, heads, d, d)) replaces the attention computed from the
    inputs: tiled fusion passes the attention of the whole scene (see `csakd.inference.tiled`).
    """

    def __init__(self, config: ModelConfig, backend: str | None = None, dtype=None):
        super().__init__()
        if backend is not None:
            from ..ops.backend import check_name  # late import: ops imports the models for its reference path

            check_name(backend)
        self.config = config
        self.backend = backend
        self._inference_dtype = None if dtype is None else inference.check_dtype(dtype)
        self.pad_channels: bool | None = None  # prepared path: None pads where it pays (see `prepare`)
        self.channels_last: bool | None = None  # prepared path on a CPU: None runs the channels-last form
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

    def head(self, fused: torch.Tensor) -> torch.Tensor:
        """conv(nf -> C) + LReLU, then conv(C -> C) without bias."""
        return self.last(F.leaky_relu(self.fuse(fused), SLOPE))

    def _check(self, lr_hsi, hr_msi, attention) -> None:
        cfg = self.config
        check_fusion_inputs(lr_hsi, hr_msi, cfg.bands, cfg.msi_bands, cfg.scale)
        check_attention(attention, cfg.csa, lr_hsi.shape[0], cfg.heads, cfg.attn_dim // cfg.heads)

    def _uses_prepared(self) -> bool:
        return self._inference_dtype is not None and not self.training and not torch.is_grad_enabled()

    def _module_parts(self, example: torch.Tensor, attention=None):
        """(branch, csa, head) on the parameters, through the backend chosen for `example`."""
        from .. import ops  # late import: ops imports the models for its reference path

        impl = ops.resolve(self.backend, example, self.config)
        csa = self.csa

        def branch(name, x):
            return self.branches[name](x, impl.clra)

        def fuse(x1, x2, x3, x4):
            return impl.csa(x1, x2, x3, x4, csa.params(), csa.mode, csa.heads, attention)

        return branch, fuse, self.head

    def forward(self, lr_hsi: torch.Tensor, hr_msi: torch.Tensor, return_features: bool = False,
                attention: torch.Tensor | None = None):
        self._check(lr_hsi, hr_msi, attention)
        if self._uses_prepared():
            return inference.forward(self, lr_hsi, hr_msi, return_features, attention)
        hr_hsi, fused = dts_forward(lr_hsi, hr_msi, *self._module_parts(lr_hsi, attention))
        return (hr_hsi, fused) if return_features else hr_hsi

    def query_key_features(self, lr_hsi: torch.Tensor, hr_msi: torch.Tensor):
        """(x1, x2): the CSA's query and key sources (B, nf, s*h, s*w) for these inputs, on the same path as the
        forward; tiled fusion gathers the scene's attention statistics from them."""
        self._check(lr_hsi, hr_msi, None)
        if self._uses_prepared():
            return inference.query_key_features(self, lr_hsi, hr_msi)
        return query_key_features(lr_hsi, hr_msi, self._module_parts(lr_hsi)[0])

    # ---- prepared inference path ------------------------------------------------------------------------------

    @property
    def inference_dtype(self) -> torch.dtype | None:
        """The compute dtype of the prepared inference path on the parameters' device (None: off); set it to a
        dtype, its name or "auto" (see `inference_precision`)."""
        if self._inference_dtype is None:
            return None
        return inference.resolve_dtype(self._inference_dtype, next(self.parameters()).device)

    @property
    def inference_precision(self) -> torch.dtype | str | None:
        """What was asked for: a dtype, "auto" (resolved per device by `inference_dtype`), or None."""
        return self._inference_dtype

    @inference_dtype.setter
    def inference_dtype(self, dtype) -> None:
        self._inference_dtype = None if dtype is None else inference.check_dtype(dtype)
        if dtype is None:
            self._prepared = None

    def prepare(self, dtype=None, pad: bool | None = None, channels_last: bool | None = None) -> "DTSNet":
        """Turns on the prepared inference path in `dtype` (default: the one set, else float32; "auto": bf16
        where the device computes it natively, else fp32), prepares the weights now for the parameters' device,
        and returns the model (in eval mode).

        Prepared weights: the parameters cast to `dtype`, CSA weights folded (`csakd.models.csa.csa_folded`),
        and with `pad` the dense branches zero-padded to multiples of 16 channels (86 -> 96, 43 -> 48) for
        tensor cores; `pad=None` pads on CUDA in bf16/fp16 when the CLRAs run through cuDNN. On a CPU, fp32 and
        bf16 run in the channels-last form (`csakd.inference.cpu`) unless `channels_last=False`. They are
        rebuilt when any parameter changes (see `csakd.inference.prepared`); `invalidate_prepared()` forces
        that.
        """
        if dtype is not None or self._inference_dtype is None:
            self.inference_dtype = dtype if dtype is not None else torch.float32
        self.pad_channels = pad
        self.channels_last = channels_last
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
