"""Cross Self-Attention fusion, written to be read next to the paper (eqs. 8-10).

x1 = up(Z_h) is the query source, x2 = Z_m the key source, x3 = up(Z_mh) the value source, x4 = Z_hm.
`csa_reference` is the function every fast path computes (and is tested against); `CSAFusion.forward` calls it.
The algebraic forms the fast paths use (Gram statistics, folded projections) live in `csakd.ops.csa_algebra`.

An `attention` given by the caller replaces the one computed from x1 and x2: tiled fusion of a large scene
computes it once from statistics over the whole scene and applies it in every tile.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PARAM_NAMES = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "wg", "bg")
MODES = ("attention", "reference", "sum")


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


def gated_sum(x1, x2, x3, att, wg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """w = sigmoid(Wg [x1, x2, x3, att] + bg); w0*x1 + w1*x2 + w2*x3 + w3*att."""
    gate = torch.sigmoid(_proj(torch.cat([x1, x2, x3, att], dim=1), wg, bg))
    return gate[:, 0:1] * x1 + gate[:, 1:2] * x2 + gate[:, 2:3] * x3 + gate[:, 3:4] * att


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")


def check_attention(attention, mode: str, batch: int, heads: int, d: int) -> None:
    """A caller-given attention: mode "attention" only, shape (1 or B, heads, d, d)."""
    if attention is None:
        return
    if mode != "attention":
        raise ValueError(f"attention: only CSA mode 'attention' applies an attention, got mode {mode!r}")
    if (not isinstance(attention, torch.Tensor) or attention.ndim != 4 or attention.shape[0] not in (1, batch)
            or tuple(attention.shape[1:]) != (heads, d, d)):
        raise ValueError(f"attention: expected a tensor of shape (1 or {batch}, {heads}, {d}, {d}), got "
                         f"{tuple(attention.shape) if isinstance(attention, torch.Tensor) else type(attention)}")


def csa_reference(x1, x2, x3, x4, params: dict[str, torch.Tensor], mode: str = "attention", heads: int = 4,
                  attention: torch.Tensor | None = None) -> torch.Tensor:
    """fused = w0*x1 + w1*x2 + w2*x3 + w3*att with att = Wo o + bo + x4, w from `gated_sum`.

    mode "attention": the paper's eq. (9): o_i = Σ_j A_ij v_j with A = `attention_weights(x1, x2)` per head, or
    the given `attention` (1 or B, heads, d, d).
    mode "reference": the released scripts' behaviour; their second einsum does not apply the attention,
    so each output channel of a head is the sum of that head's v channels (q and k get no gradient).
    mode "sum": x1 + x2 + x3 + x4 (the paper's "without CSA" ablation, no parameters used).
    """
    check_mode(mode)
    if mode == "sum":
        return x1 + x2 + x3 + x4
    b, _, h, w = x1.shape
    v = _proj(x3, params["wv"], params["bv"])
    d = v.shape[1] // heads
    check_attention(attention, mode, b, heads, d)
    v = v.reshape(b, heads, d, h * w)
    if mode == "attention":
        a = attention_weights(x1, x2, params, heads) if attention is None else attention.expand(b, -1, -1, -1)
        o = torch.einsum("bhij,bhjn->bhin", a.to(v.dtype), v)
    else:
        o = v.sum(dim=2, keepdim=True).expand(b, heads, d, h * w)
    att = _proj(o.reshape(b, heads * d, h, w), params["wo"], params["bo"]) + x4
    return gated_sum(x1, x2, x3, att, params["wg"], params["bg"])


class CSAFusion(nn.Module):
    def __init__(self, nf: int = 86, attn_dim: int = 64, heads: int = 4, mode: str = "attention"):
        super().__init__()
        check_mode(mode)
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

    def forward(self, x1, x2, x3, x4, attention: torch.Tensor | None = None) -> torch.Tensor:
        return csa_reference(x1, x2, x3, x4, self.params(), self.mode, self.heads, attention)
