"""Cross Self-Attention fusion (SPEC §2).

x1 = up(Z_h) is the query source, x2 = Z_m the key source, x3 = up(Z_mh) the value source, x4 = Z_hm.
`csa_reference` is the functional oracle for the fused Triton kernel; `CSAFusion.forward` calls it.
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
