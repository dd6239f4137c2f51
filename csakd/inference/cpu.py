"""The prepared inference path's CPU form, and the CPU's bf16 capability behind `dtype="auto"`.

On a CPU, oneDNN runs bf16 (and fp32) convolutions fastest on channels-last (NHWC) tensors: given NCHW it
reorders every input and output to its blocked layout and back. The CPU form therefore keeps every activation
of the network channels-last from the stems to the head; concatenations along the channels and the
interpolations keep that layout, and the CSA works on the (pixels, channels) matrices the NHWC layout already
is, so no layer copies its input into another layout. The elementwise work between the convolutions takes
fewer passes over memory than the module path's: the LReLUs run in place, and the last convolution of each
CLRB is prepared with its residual scale folded in (0.2, and 0.04 for the last block of a CLRA, whose two
residuals then take one addition), so a CLRB ends with a single addition. docs/cpu.md has the measured effect
of each choice, and of those tried and left out (oneDNN's fused post-op convolutions, prepacked weights, a
shared concatenation buffer, channel padding).

The form is chosen for the reference backend on a CPU in fp32 and bf16 (`layout`); explicit fast backends
(the C++ CLRB op, the Triton interpreter) and fp16 keep the NCHW form they are written for.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..models.blocks import RES_SCALE, SLOPE
from ..ops.csa_algebra import AttentionStats, attention_from_stats, fold

LAYOUT_DTYPES = (torch.float32, torch.bfloat16)


# ---- the CPU's bf16 capability ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _torch_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private helpers of torch.cpu: absent in some builds
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def bf16_capability() -> dict:
    """What this CPU offers for bf16 inference: ATen's vector capability, native bf16 dot products (AVX-512 BF16)
    and bf16 tile multiplies (AMX), from /proc/cpuinfo or torch's own CPU probes, and whether oneDNN is built
    in. `native` is the verdict `dtype="auto"` follows."""
    flags = _cpuinfo_flags()
    avx512_bf16 = "avx512_bf16" in flags or _torch_probe("_is_avx512_bf16_supported")
    amx_bf16 = "amx_bf16" in flags or _torch_probe("_is_amx_tile_supported")
    mkldnn = torch.backends.mkldnn.is_available()
    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": avx512_bf16,
            "amx_bf16": amx_bf16, "mkldnn": mkldnn, "native": mkldnn and (avx512_bf16 or amx_bf16)}


def auto_dtype(device: torch.device) -> torch.dtype:
    """The dtype `dtype="auto"` runs in on `device`: bf16 on a CPU with native bf16 arithmetic (AVX-512 BF16 or
    AMX, through oneDNN) and on a GPU that supports bf16; fp32 elsewhere. Without native support, bf16 is
    emulated in fp32 arithmetic plus conversions, slower than fp32 and less accurate."""
    if device.type == "cpu":
        return torch.bfloat16 if bf16_capability()["native"] else torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32


# ---- which form runs ------------------------------------------------------------------------------------------

def layout(device: torch.device, dtype: torch.dtype, impl, channels_last: bool | None) -> str:
    """The form of the prepared path on `device` in `dtype` with backend `impl`: "nhwc" (this module's) on a CPU
    with oneDNN in fp32 or bf16 when no fast backend op runs, else "nchw". `channels_last=False` (the model's
    attribute, `prepare(channels_last=)`) asks for "nchw" everywhere; None and True take the rule, so CUDA keeps
    its own form either way."""
    fits = (device.type == "cpu" and dtype in LAYOUT_DTYPES and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and impl.parts["clrb"] == "reference" and impl.parts["csa"] == "reference")
    return "nhwc" if fits and channels_last is not False else "nchw"


def residual_scales(depth: int) -> list[float]:
    """The scale folded into the last convolution of each of a CLRA's `depth` blocks: RES_SCALE, and
    RES_SCALE² for the last block, whose output is added to the CLRA's input with a second RES_SCALE."""
    return [RES_SCALE] * (depth - 1) + [RES_SCALE * RES_SCALE] if depth else []


def to_nhwc(t: torch.Tensor) -> torch.Tensor:
    """A 4-D weight in the channels-last order oneDNN reads without a transpose (other tensors as they are)."""
    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t.contiguous()


# ---- the CLRA ---------------------------------------------------------------------------------------------------

def conv(x, weight, bias, groups: int = 1, lrelu: bool = False):
    """3x3 convolution (padding 1), the LReLU applied in place on its fresh output when `lrelu`."""
    y = F.conv2d(x, weight, bias, padding=1, groups=groups)
    return F.leaky_relu_(y, SLOPE) if lrelu else y


def clra(x, blocks, groups: int):
    """CLRA on weights prepared for this form: each CLRB's conv5 carries its residual scale (`residual_scales`),
    so a CLRB is y + conv5'(...), one addition into the convolution's fresh output, and the last one adds onto
    x + 0.2 y, which is the CLRA's output."""
    if not blocks:
        return torch.add(x, x, alpha=RES_SCALE)
    y = x
    for i, (weights, biases) in enumerate(blocks):
        feats = [y]
        for w, b in zip(weights[:-1], biases[:-1]):
            feats.append(conv(torch.cat(feats, dim=1), w, b, groups, lrelu=True))
        other = y if i < len(blocks) - 1 else torch.add(x, y, alpha=RES_SCALE)
        y = conv(torch.cat(feats, dim=1), weights[-1], biases[-1], groups).add_(other)
    return y


# ---- the CSA on (pixels, channels) matrices ---------------------------------------------------------------------

def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels-last as its (B, H*W, C) matrix: a view, no copy."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, c, h, w = like.shape
    return rows.view(b, h, w, c).permute(0, 3, 1, 2)


def csa(x1, x2, x3, x4, params: dict[str, torch.Tensor], mode: str, heads: int, attention=None):
    """`csakd.ops.csa_algebra.csa_folded` on channels-last features: the statistics, the attention and the fold
    in fp32, the per-pixel maps in the features' dtype as matrix products over the pixels; returns the fused
    features channels-last."""
    if mode == "sum":
        return x1 + x2 + x3 + x4
    dtype = x1.dtype
    b, nf = x3.shape[:2]
    r1, r2, r3, r4 = (_rows(x) for x in (x1, x2, x3, x4))
    if mode == "reference":
        m, c = params["m"], params["c"]
        att = torch.addmm(c, r3.reshape(-1, nf), m.T).view_as(r3).add_(r4)
    else:
        if attention is None:
            a, k = r1.float(), r2.float()
            stats = AttentionStats(a.transpose(1, 2) @ k, a.sum(1), k.sum(1), a.shape[1])
            attention = attention_from_stats(stats, params, heads)
        m, c = fold(params, attention.expand(b, -1, -1, -1))
        att = torch.baddbmm(r4 + c.to(dtype)[:, None, :], r3, m.to(dtype).transpose(1, 2))
    # The gate's logits, (B, 4, pixels): the 1x1 weights times each feature, without concatenating them.
    wg = params["wg_c"]
    logits = params["bg_c"][:, None].expand(b, 4, r1.shape[1]).clone()
    for i, r in enumerate((r1, r2, r3, att)):
        logits.baddbmm_(wg[:, i * nf:(i + 1) * nf].expand(b, 4, nf), r.transpose(1, 2))
    gate = torch.sigmoid(logits).transpose(1, 2)  # (B, pixels, 4)
    out = r1 * gate[..., 0:1]
    for i, r in enumerate((r2, r3, att), start=1):
        out.addcmul_(r, gate[..., i:i + 1])
    return _image(out, x1)


def gate_params(params: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The gate's weights in the compute dtype ("wg_c", "bg_c"), prepared once next to the fp32 CSA weights."""
    if "wg" not in params:
        return {}
    return {"wg_c": params["wg"].to(dtype), "bg_c": params["bg"].to(dtype)}


# ---- the parts of `dts_forward` ------------------------------------------------------------------------------

def parts(prep, mode: str, heads: int, attention=None):
    """(branch, csa, head) of `csakd.models.network.dts_forward` in this form, on weights `build` prepared."""
    dtype = prep.dtype

    def branch(name, x):
        b = prep.branches[name]
        x = conv(x.to(dtype, memory_format=torch.channels_last), *b.stem, lrelu=True)
        for blocks in b.clras:
            x = clra(x, blocks, b.groups)
        if b.pad_out:
            x = F.pad(x, (0, 0, 0, 0, 0, b.pad_out)).contiguous(memory_format=torch.channels_last)
        return x

    def fuse(x1, x2, x3, x4):
        return csa(x1, x2, x3, x4, prep.csa, mode, heads, attention)

    def head(fused):
        fuse_w, fuse_b, last_w = prep.head
        return conv(conv(fused, fuse_w, fuse_b, lrelu=True), last_w, None)

    return branch, fuse, head
