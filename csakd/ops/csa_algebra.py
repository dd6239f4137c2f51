"""The CSA function (`csakd.models.csa.csa_reference`) in the algebraic form the fast paths use.

Attention statistics -> attention -> folded projection -> gate:
- the logits need only the per-image cross-Gram G = Σ_n x1[n] x2[n]ᵀ and the channel sums s1, s2:
  Σ_n q kᵀ = Wq G Wkᵀ + (Wq s1) bkᵀ + bq (Wk s2)ᵀ + n bq bkᵀ (`AttentionStats`, `attention_from_stats`);
- the value and output projections fold into one nf x nf map per image, `Wo o + bo = M x3 + c` with
  M = Wo·blockdiag(A)·Wv and c = Wo·blockdiag(A)·bv + bo (`fold`);
- then the gate of `csakd.models.csa.gated_sum`.
Two passes over the pixels suffice (one reduction, one per-pixel map); statistics add up over tiles, which is
how tiled fusion gets the attention of a whole scene. The prepared inference path runs `csa_folded`; the fused
Triton kernels compute the same steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.csa import PARAM_NAMES, check_attention, check_mode, gated_sum


@dataclass
class AttentionStats:
    """Σ_n x1[n] x2[n]ᵀ (B, nf, nf), Σ_n x1[n] and Σ_n x2[n] (B, nf) and the pixel count n."""

    gram: torch.Tensor
    sum1: torch.Tensor
    sum2: torch.Tensor
    count: int

    @classmethod
    def of(cls, x1: torch.Tensor, x2: torch.Tensor, dtype: torch.dtype = torch.float32) -> "AttentionStats":
        """The statistics of the (B, nf, H, W) features x1, x2, accumulated in `dtype`."""
        a, b = x1.flatten(2).to(dtype), x2.flatten(2).to(dtype)
        return cls(a @ b.transpose(1, 2), a.sum(2), b.sum(2), a.shape[2])

    def __add__(self, other: "AttentionStats") -> "AttentionStats":
        return AttentionStats(self.gram + other.gram, self.sum1 + other.sum1, self.sum2 + other.sum2,
                              self.count + other.count)


def attention_from_stats(stats: AttentionStats, params: dict[str, torch.Tensor], heads: int = 4) -> torch.Tensor:
    """`csakd.models.csa.attention_weights` from the statistics: (B, heads, d, d) in the statistics' dtype."""
    dtype = stats.gram.dtype
    wq, bq, wk, bk = (params[k].to(dtype) for k in ("wq", "bq", "wk", "bk"))
    qk = (wq @ stats.gram @ wk.T + (stats.sum1 @ wq.T)[:, :, None] * bk
          + bq[:, None] * (stats.sum2 @ wk.T)[:, None, :] + stats.count * torch.outer(bq, bk))
    d = qk.shape[-1] // heads
    blocks = torch.stack([qk[:, i * d:(i + 1) * d, i * d:(i + 1) * d] for i in range(heads)], dim=1)
    return (blocks / (stats.count * math.sqrt(d))).softmax(dim=-1)


def fold(params: dict[str, torch.Tensor], attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M = Wo·blockdiag(A)·Wv (..., nf, nf) and c = Wo·blockdiag(A)·bv + bo (..., nf), in fp32, for an
    attention A of shape (..., heads, d, d)."""
    wv, bv, wo, bo = (params[k].float() for k in ("wv", "bv", "wo", "bo"))
    attention = attention.float()
    heads, d = attention.shape[-3], attention.shape[-1]
    a_wv = attention @ wv.reshape(heads, d, -1)            # (..., heads, d, nf)
    a_bv = attention @ bv.reshape(heads, d, 1)             # (..., heads, d, 1)
    m = wo @ a_wv.flatten(-3, -2)
    c = (wo @ a_bv.flatten(-3, -2)).squeeze(-1) + bo
    return m, c


def reference_attention(params: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
    """Mode "reference" in this form: an all-ones attention (each output channel sums its head's v channels)."""
    d = params["wv"].shape[0] // heads
    return torch.ones(heads, d, d, dtype=torch.float32, device=params["wv"].device)


def fold_csa_params(params: dict[str, torch.Tensor], mode: str, heads: int,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights for `csa_folded` (or a fused kernel), prepared once: fp32 copies of the ten CSA weights
    (the attention and the per-image fold are computed in fp32) and, in mode "reference" (whose attention does
    not depend on the input), the fold itself, "m" (nf, nf) and "c" (nf,), in `dtype`."""
    if mode == "sum":
        return {}
    out = {k: params[k].detach().to(torch.float32, copy=True) for k in PARAM_NAMES}
    if mode == "reference":
        m, c = fold(out, reference_attention(out, heads))
        out["m"], out["c"] = m.to(dtype), c.to(dtype)
    return out


def csa_folded(x1, x2, x3, x4, params: dict[str, torch.Tensor], mode: str = "attention", heads: int = 4,
               attention: torch.Tensor | None = None) -> torch.Tensor:
    """`csa_reference` computed in this form: `att = M_b x3 + c_b + x4`, then the gate. The attention (from the
    statistics of x1, x2, or the given one) and the fold are fp32; the per-pixel maps run in the inputs' dtype.
    `params`: as for `csa_reference`, or prepared by `fold_csa_params` (then mode "reference" skips the fold)."""
    check_mode(mode)
    if mode == "sum":
        return x1 + x2 + x3 + x4
    dtype = x1.dtype
    b, nf = x3.shape[:2]
    if mode == "reference":
        m, c = (params["m"], params["c"]) if "m" in params else fold(params, reference_attention(params, heads))
        att = F.conv2d(x3, m.to(dtype)[:, :, None, None], c.to(dtype)) + x4
    else:
        check_attention(attention, mode, b, heads, params["wq"].shape[0] // heads)
        if attention is None:
            attention = attention_from_stats(AttentionStats.of(x1, x2), params, heads)
        m, c = fold(params, attention.expand(b, -1, -1, -1))
        att = torch.baddbmm(c.to(dtype)[:, :, None], m.to(dtype), x3.reshape(b, nf, -1)).view(x3.shape) + x4
    return gated_sum(x1, x2, x3, att, params["wg"].to(dtype), params["bg"].to(dtype))
