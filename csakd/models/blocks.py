"""Cross-Layer Residual Block (CLRB) and Cross-Layer Residual Aggregation (CLRA) (docs/architecture.md).

The functional `clrb_reference` is the oracle the fused CLRB kernels are tested against; the module's
forward is that same function.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.2       # LReLU negative slope, everywhere in the network
RES_SCALE = 0.2   # residual scaling of CLRB and CLRA


def clrb_reference(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                   groups: int = 1) -> torch.Tensor:
    """x + 0.2 * conv5([x, x1, x2, x3, x4]) with x_k = lrelu(conv_k([x, x1, ..., x_{k-1}]))."""
    feats = [x]
    for k, (w, b) in enumerate(zip(weights, biases)):
        y = F.conv2d(torch.cat(feats, dim=1), w, b, padding=1, groups=groups)
        if k < len(weights) - 1:
            feats.append(F.leaky_relu(y, SLOPE))
    return x + RES_SCALE * y


def clra_reference(x: torch.Tensor, clrb_params, groups: int = 1) -> torch.Tensor:
    """CLRA from weights: one `clrb_reference` per (weights, biases) pair, then `x + 0.2 * y` (as `CLRA`)."""
    y = x
    for weights, biases in clrb_params:
        y = clrb_reference(y, weights, biases, groups)
    return x + RES_SCALE * y


class CLRB(nn.Module):
    """Five dense 3x3 convs: in channels nf + k*gc, out gc (conv1-4) and nf (conv5)."""

    def __init__(self, nf: int = 86, gc: int = 43, groups: int = 1):
        super().__init__()
        if nf % groups or gc % groups:
            raise ValueError(f"groups: expected a divisor of nf={nf} and gc={gc}, got {groups}")
        self.nf, self.gc, self.groups = nf, gc, groups
        for k in range(5):
            out = gc if k < 4 else nf
            setattr(self, f"conv{k + 1}", nn.Conv2d(nf + k * gc, out, 3, padding=1, groups=groups))
        self.reset_parameters()

    def convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3, self.conv4, self.conv5]

    def reset_parameters(self) -> None:
        # ESRGAN-style: Kaiming-normal (fan_in, a=0) scaled by 0.1 keeps the residual branches small at start.
        for conv in self.convs():
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = self.convs()
        return clrb_reference(x, [c.weight for c in convs], [c.bias for c in convs], self.groups)


class CLRA(nn.Module):
    """Three CLRBs in sequence with a 0.2-scaled residual around them."""

    def __init__(self, nf: int = 86, gc: int = 43, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.blocks = nn.ModuleList(CLRB(nf, gc, groups) for _ in range(3))

    def params(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The (weights, biases) of each block, as `clra_reference` and the fast CLRA ops take them."""
        return [([c.weight for c in block.convs()], [c.bias for c in block.convs()]) for block in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clra_reference(x, self.params(), self.groups)


class Stem(nn.Module):
    """3x3 conv + LReLU to the feature width."""

    def __init__(self, cin: int, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, nf, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), SLOPE)


def clrb_flops(nf: int, gc: int, groups: int, h: int, w: int) -> int:
    """Multiply-accumulates of one CLRB at h x w (used by benchmarks for achieved TFLOP/s)."""
    macs = 0
    for k in range(5):
        out = gc if k < 4 else nf
        macs += out * (nf + k * gc) // groups * 9 * h * w
    return macs


__all__ = ["CLRB", "CLRA", "Stem", "clra_reference", "clrb_reference", "clrb_flops", "SLOPE", "RES_SCALE"]
