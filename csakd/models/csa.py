"""Cross Self-Attention fusion (SPEC §2).

x1 = up(Z_h) is the query source, x2 = Z_m the key source, x3 = up(Z_mh) the value source, x4 = Z_hm.
`csa_reference` is the functional oracle for the fused Triton kernel; `CSAFusion.forward` calls it.
`csa_folded` computes the same function from the SPEC §2 algebra (Gram-form logits, the value and output
projections folded into one nf x nf map per image); the prepared inference path uses it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PARAM_NAMES = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "wg", "bg")


def _proj(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1x1 convolution with a 2-D weight (out, in)."""
    return F.conv2d(x, w[:, :, None, None], b)


def attention_weights(x1, x2, params: dict[str, torch.Tensor], heads: int = 4) -> torch.Tensor:
    """softmax_j(mean_n(q_i[n] k_j[n]) / sqrt(d)) per image and head: (B, heads, d, d)."""
    b, _, h, w = x1.shape
    n = h * w
    q = _proj(x1, params["wq"], params["bq"])
    d = q.shape[1] // heads
    q = q.reshape(b, heads, d, n)
    k = _proj(x2, params["wk"], params["bk"]).reshape(b, heads, d, n)
    logits = torch.einsum("bhin,bhjn->bhij", q, k) / (n * math.sqrt(d))
    return logits.softmax(dim=-1)


def csa_reference(x1, x2, x3, x4, params: dict[str, torch.Tensor], mode: str = "attention",
                  heads: int = 4) -> torch.Tensor:
    """fused = w0*x1 + w1*x2 + w2*x3 + w3*att, w = sigmoid(Wg [x1, x2, x3, att] + bg).

    mode "attention": the paper's eq. (9), logits_ij = mean_n(q_i[n] k_j[n]) / sqrt(d) per head.
    mode "reference": the released scripts' behaviour; their second einsum does not apply the attention,
    so each output channel of a head is the sum of that head's v channels (q and k get no gradient).
    mode "sum": x1 + x2 + x3 + x4 (the paper's "without CSA" ablation, no parameters used).
    """
    if mode == "sum":
        return x1 + x2 + x3 + x4
    b, _, h, w = x1.shape
    n = h * w
    v = _proj(x3, params["wv"], params["bv"])
    d = v.shape[1] // heads
    v = v.reshape(b, heads, d, n)
    if mode == "attention":
        o = torch.einsum("bhij,bhjn->bhin", attention_weights(x1, x2, params, heads), v)
    elif mode == "reference":
        o = v.sum(dim=2, keepdim=True).expand(b, heads, d, n)
    else:
        raise ValueError(f"mode: expected 'attention', 'reference' or 'sum', got {mode!r}")
    att = _proj(o.reshape(b, heads * d, h, w), params["wo"], params["bo"]) + x4
    gate = torch.sigmoid(_proj(torch.cat([x1, x2, x3, att], dim=1), params["wg"], params["bg"]))
    return gate[:, 0:1] * x1 + gate[:, 1:2] * x2 + gate[:, 2:3] * x3 + gate[:, 3:4] * att


def _fold(params: dict[str, torch.Tensor], attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M = Wo·blockdiag(A)·Wv (..., nf, nf) and c = Wo·blockdiag(A)·bv + bo (..., nf), in fp32, for an
    attention A of shape (..., heads, d, d): then `Wo o + bo = M x3 + c` for o = blockdiag(A) (Wv x3 + bv)."""
    wv, bv, wo, bo = (params[k].float() for k in ("wv", "bv", "wo", "bo"))
    heads, d = attention.shape[-3], attention.shape[-1]
    a_wv = attention @ wv.reshape(heads, d, -1)            # (..., heads, d, nf)
    a_bv = attention @ bv.reshape(heads, d, 1)             # (..., heads, d, 1)
    m = wo @ a_wv.flatten(-3, -2)
    c = (wo @ a_bv.flatten(-3, -2)).squeeze(-1) + bo
    return m, c


def gram_attention(x1, x2, params: dict[str, torch.Tensor], heads: int = 4) -> torch.Tensor:
    """`attention_weights` from the per-image cross-Gram G = Σ_n x1[n] x2[n]ᵀ and the channel sums s1, s2
    (fp32): Σ_n q kᵀ = Wq G Wkᵀ + (Wq s1) bkᵀ + bq (Wk s2)ᵀ + n bq bkᵀ. Returns (B, heads, d, d) fp32."""
    b, nf, h, w = x1.shape
    n = h * w
    a1, a2 = x1.reshape(b, nf, n).float(), x2.reshape(b, nf, n).float()
    wq, bq, wk, bk = (params[k].float() for k in ("wq", "bq", "wk", "bk"))
    qk = (wq @ (a1 @ a2.transpose(1, 2)) @ wk.T + (a1.sum(2) @ wq.T)[:, :, None] * bk
          + bq[:, None] * (a2.sum(2) @ wk.T)[:, None, :] + n * torch.outer(bq, bk))
    d = qk.shape[-1] // heads
    blocks = torch.stack([qk[:, i * d:(i + 1) * d, i * d:(i + 1) * d] for i in range(heads)], dim=1)
    return (blocks / (n * math.sqrt(d))).softmax(dim=-1)


def fold_csa_params(params: dict[str, torch.Tensor], mode: str, heads: int,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights for `csa_folded` (or a fused kernel), prepared once: fp32 copies of the ten CSA weights
    (the attention and the per-image fold are computed in fp32) and, in mode "reference" (whose attention is all
    ones, independent of the input), the fold itself, "m" (nf, nf) and "c" (nf,), in `dtype`."""
    if mode == "sum":
        return {}
    out = {k: params[k].detach().to(torch.float32, copy=True) for k in PARAM_NAMES}
    if mode == "reference":
        d = params["wv"].shape[0] // heads
        ones = torch.ones(heads, d, d, dtype=torch.float32, device=params["wv"].device)
        m, c = _fold(out, ones)
        out["m"], out["c"] = m.to(dtype), c.to(dtype)
    return out


def csa_folded(x1, x2, x3, x4, params: dict[str, torch.Tensor], mode: str = "attention",
               heads: int = 4) -> torch.Tensor:
    """`csa_reference` computed as SPEC §2 suggests for a fused kernel: `att = M_b x3 + c_b + x4` with the
    per-image M_b = Wo·blockdiag(A_b)·Wv, the attention A_b from the cross-Gram of x1 and x2. The attention and
    the fold are computed in fp32; the per-pixel maps (M_b, the gate) run in the inputs' dtype. `params`: as
    for `csa_reference`, or prepared by `fold_csa_params` (then mode "reference" skips the fold)."""
    if mode == "sum":
        return x1 + x2 + x3 + x4
    if mode not in ("attention", "reference"):
        raise ValueError(f"mode: expected 'attention', 'reference' or 'sum', got {mode!r}")
    dtype = x1.dtype
    if mode == "reference":
        if "m" in params:
            m, c = params["m"], params["c"]
        else:
            d = params["wv"].shape[0] // heads
            m, c = _fold(params, torch.ones(heads, d, d, dtype=torch.float32, device=x1.device))
        att = F.conv2d(x3, m.to(dtype)[:, :, None, None], c.to(dtype)) + x4
    else:
        m, c = _fold(params, gram_attention(x1, x2, params, heads))
        b, nf = x3.shape[:2]
        att = torch.baddbmm(c.to(dtype)[:, :, None], m.to(dtype), x3.reshape(b, nf, -1)).view(x3.shape) + x4
    wg, bg = params["wg"].to(dtype), params["bg"].to(dtype)
    gate = torch.sigmoid(F.conv2d(torch.cat([x1, x2, x3, att], dim=1), wg[:, :, None, None], bg))
    return gate[:, 0:1] * x1 + gate[:, 1:2] * x2 + gate[:, 2:3] * x3 + gate[:, 3:4] * att


class CSAFusion(nn.Module):
    def __init__(self, nf: int = 86, attn_dim: int = 64, heads: int = 4, mode: str = "attention"):
        super().__init__()
        self.nf, self.attn_dim, self.heads, self.mode = nf, attn_dim, heads, mode
        if mode != "sum":
            self.query_conv = nn.Conv2d(nf, attn_dim, 1)
            self.key_conv = nn.Conv2d(nf, attn_dim, 1)
            self.value_conv = nn.Conv2d(nf, attn_dim, 1)
            self.output_conv = nn.Conv2d(attn_dim, nf, 1)
            self.attention_weights = nn.Conv2d(4 * nf, 4, 1)

    def params(self) -> dict[str, torch.Tensor]:
        """The CSA weights as 2-D matrices and bias vectors (views of the parameters)."""
        if self.mode == "sum":
            return {}
        convs = (self.query_conv, self.key_conv, self.value_conv, self.output_conv, self.attention_weights)
        out = {}
        for (wn, bn), conv in zip(zip(PARAM_NAMES[::2], PARAM_NAMES[1::2]), convs):
            out[wn] = conv.weight.flatten(1)
            out[bn] = conv.bias
        return out

    def forward(self, x1, x2, x3, x4) -> torch.Tensor:
        return csa_reference(x1, x2, x3, x4, self.params(), self.mode, self.heads)
