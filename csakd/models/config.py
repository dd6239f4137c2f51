"""Model configuration: a plain dataclass with the paper's defaults (docs/architecture.md), validated on
construction and round-tripped through JSON (it is stored in every checkpoint)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .._validate import from_known_keys

CSA_MODES = ("attention", "reference", "sum")
BRANCHES = ("hm", "mh", "h", "m")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Dual Two-Streamed network.

    `depths` is the number of CLRA blocks per branch in the order (hm, mh, h, m); `h_groups` is the
    convolution groups of the h branch's CLRBs (the student uses 43). `nf` and `gc` are the paper's 86 and 43
    for every band count unless set explicitly. `normalisation` is the value scaling the network is trained and
    run with (`csakd.normalisation`: ("lr_range",) or ("fixed", lo, hi)).
    """

    bands: int = 172
    msi_bands: int = 4
    scale: int = 4
    nf: int = 86
    gc: int = 43
    depths: tuple[int, int, int, int] = (6, 6, 4, 4)
    h_groups: int = 1
    csa: str = "attention"
    attn_dim: int = 64
    heads: int = 4
    name: str = "custom"
    normalisation: tuple = ("lr_range",)

    def __post_init__(self):
        from ..normalisation import Normalisation

        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "normalisation", Normalisation.parse(self.normalisation).to_config())
        for key in ("bands", "msi_bands", "scale", "nf", "gc", "h_groups", "attn_dim", "heads"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if len(self.depths) != 4 or any(d < 0 for d in self.depths):
            raise ValueError(f"depths: expected 4 non-negative integers (hm, mh, h, m), got {self.depths!r}")
        if self.csa not in CSA_MODES:
            raise ValueError(f"csa: expected one of {CSA_MODES}, got {self.csa!r}")
        if self.gc % self.h_groups or self.nf % self.h_groups:
            raise ValueError(f"h_groups: expected a divisor of gc={self.gc} and nf={self.nf}, got {self.h_groups}")
        if self.attn_dim % self.heads:
            raise ValueError(f"heads: expected a divisor of attn_dim={self.attn_dim}, got {self.heads}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["depths"] = list(self.depths)
        d["normalisation"] = list(self.normalisation)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return from_known_keys(cls, d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# The paper's depth table. The student's hm branch keeps its stem but no CLRA (docs/architecture.md).
PRESETS: dict[str, dict] = {
    "teacher": dict(depths=(6, 6, 4, 4), h_groups=1),
    "student": dict(depths=(0, 4, 4, 1), h_groups=43),
    "teacher_large": dict(depths=(8, 8, 6, 6), h_groups=1),
    "student_large": dict(depths=(0, 4, 4, 4), h_groups=43),
    # A small CPU preset for demos and tests: fewer channels, clearly not the paper's configuration.
    "student_tiny": dict(depths=(0, 1, 1, 1), h_groups=8, nf=32, gc=16, attn_dim=32, heads=4),
    "teacher_tiny": dict(depths=(1, 2, 1, 1), h_groups=1, nf=32, gc=16, attn_dim=32, heads=4),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"name: expected one of {sorted(PRESETS)}, got {name!r}")
    return ModelConfig(**{**PRESETS[name], "name": name, **overrides})
