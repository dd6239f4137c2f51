"""The DTS network's wiring, pinned by an independent float64 implementation of the whole forward.

Parameter and MAC counts cannot tell a swapped branch role, a swapped interpolation mode or a transposed
attention from the real thing; this comparison can. The oracle below is written from the paper's equations
(CLRB/CLRA, the four branches, the cross self-attention fusion of eq. (9) and the head) using only
torch.nn.functional primitives. It shares no code with csakd: from the models it reads just `state_dict()`
and `config`, unpacked by key pattern into plain tensors. Every parameter in the state dict must be used by
the oracle, and the weights are re-drawn at a scale where every residual branch, bias, the attention and the
gate change the output.

Each comparison is backed by a sensitivity check: deliberately miswired variants of the oracle (branch roles
swapped in the fusion, bilinear/bicubic swapped, nearest feature upsampling replaced, attention transposed)
must miss the model by far more than the tolerance, so the comparison demonstrably can fail.
"""
from __future__ import annotations

import copy
import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F

import csakd

SLOPE = 0.2       # LReLU negative slope
RES = 0.2         # residual scaling of CLRB and CLRA
B = 2
LR_SIZE = (5, 7)  # non-square, so that an H/W transpose anywhere cannot go unnoticed

# Tolerances on the norm-wise relative error ||model - oracle|| / ||oracle|| (also applied per element to the
# max-abs error relative to max|oracle|).
# fp32: each output element is a chain of ~10-30 convolutions (dot products of up to ~2.3k terms at paper
# width), interpolations, a softmax and a sigmoid gate; fp32 rounding (eps = 1.2e-7) accumulates to a measured
# 1e-7 to 7e-7 here. 1e-5 (~80 eps) leaves >10x headroom over that and is still far below any wiring error.
FP32_RTOL = 1e-5
# float64: the same computation with eps = 2.2e-16; the measured differences are 0 to ~1e-15 (the summation
# order differs between the two implementations); 1e-10 leaves a wide margin.
FP64_RTOL = 1e-10
# A miswired oracle must miss the model by at least this many tolerances.
SENSITIVITY_FACTOR = 100
# Gain of the re-drawn query/key projection weights (see `build`).
QK_GAIN = 3.0


# ---- weights: state_dict -> plain float64 tensors ---------------------------------------------------------------

_BRANCH_KEY = re.compile(r"^branches\.(?P<branch>hm|mh|h|m)\.(?P<rest>.+)$")
_STEM_KEY = re.compile(r"^stem\.(?:.+\.)?(?P<kind>weight|bias)$")
_CLRB_KEY = re.compile(r"^\D*(?P<clra>\d+)\.\D*(?P<block>\d+)\.conv(?P<k>[1-5])\.(?P<kind>weight|bias)$")
_CSA_KEY = re.compile(r"^csa\.(?P<name>query_conv|key_conv|value_conv|output_conv|attention_weights)"
                      r"\.(?P<kind>weight|bias)$")
_CSA_ROLE = {"query_conv": "q", "key_conv": "k", "value_conv": "v", "output_conv": "o", "attention_weights": "g"}
_HEAD_KEY = re.compile(r"^(?P<name>fuse|last)\.(?P<kind>weight|bias)$")


def unpack(state_dict) -> dict:
    """{'branches': {name: {'stem': (w, b), 'clras': [[{k: (w, b)} x 3 blocks], ...]}},
    'csa': {'wq', 'bq', ...} (1x1 weights as matrices), 'fuse': (w, b), 'last': w}, all float64 copies.
    Raises if any state-dict entry is left unused."""
    branches: dict = {}
    csa: dict = {}
    head: dict = {}
    unused = []
    for key, value in state_dict.items():
        t = value.detach().to(torch.float64, copy=True)
        if (m := _BRANCH_KEY.match(key)) is not None:
            br = branches.setdefault(m["branch"], {"stem": {}, "clras": {}})
            if (s := _STEM_KEY.match(m["rest"])) is not None:
                br["stem"][s["kind"]] = t
                continue
            if (c := _CLRB_KEY.match(m["rest"])) is not None:
                block = br["clras"].setdefault(int(c["clra"]), {}).setdefault(int(c["block"]), {})
                block.setdefault(int(c["k"]), {})[c["kind"]] = t
                continue
        elif (m := _CSA_KEY.match(key)) is not None:
            role = _CSA_ROLE[m["name"]]
            csa[("w" if m["kind"] == "weight" else "b") + role] = t.flatten(1) if m["kind"] == "weight" else t
            continue
        elif (m := _HEAD_KEY.match(key)) is not None:
            head[(m["name"], m["kind"])] = t
            continue
        unused.append(key)
    assert not unused, f"state-dict entries the oracle does not know: {unused}"
    out = {"branches": {}, "csa": csa, "fuse": (head[("fuse", "weight")], head[("fuse", "bias")]),
           "last": head[("last", "weight")]}
    assert ("last", "bias") not in head, "the last head conv has no bias"
    for name, br in branches.items():
        clras = []
        for i in range(len(br["clras"])):
            blocks = br["clras"][i]
            assert sorted(blocks) == [0, 1, 2], f"{name} CLRA {i}: expected 3 CLRBs, got {sorted(blocks)}"
            clras.append([[(blocks[j][k]["weight"], blocks[j][k]["bias"]) for k in range(1, 6)]
                          for j in range(3)])
        out["branches"][name] = {"stem": (br["stem"]["weight"], br["stem"]["bias"]), "clras": clras}
    return out


# ---- the oracle ------------------------------------------------------------------------------------------------

def lrelu(x):
    return torch.where(x >= 0, x, SLOPE * x)


def conv3x3(x, w, b=None, groups=1):
    assert w.shape[-2:] == (3, 3)
    return F.conv2d(x, w, b, stride=1, padding=1, groups=groups)


def conv1x1(x, w, b):
    """w: (out, in) matrix."""
    return torch.einsum("oc,bchw->bohw", w, x) + b[None, :, None, None]


def nearest_up(x, s):
    """Nearest-neighbour upsampling by an integer factor: every pixel becomes an s x s block."""
    return x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)


def clrb(x, convs, groups):
    """x + 0.2 * conv5([x, x1..x4]), x_k = lrelu(conv_k([x, x1..x_{k-1}])), all five convs grouped alike."""
    feats = [x]
    for w, b in convs[:4]:
        feats.append(lrelu(conv3x3(torch.cat(feats, dim=1), w, b, groups)))
    w5, b5 = convs[4]
    return x + RES * conv3x3(torch.cat(feats, dim=1), w5, b5, groups)


def clra(x, blocks, groups):
    y = x
    for convs in blocks:
        y = clrb(y, convs, groups)
    return x + RES * y


def branch(x, params, groups):
    w, b = params["stem"]
    x = lrelu(conv3x3(x, w, b))
    for blocks in params["clras"]:
        x = clra(x, blocks, groups)
    return x


def softmax_last(z):
    z = z - z.amax(dim=-1, keepdim=True)
    e = torch.exp(z)
    return e / e.sum(dim=-1, keepdim=True)


def csa_fusion(x1, x2, x3, x4, p, mode, heads, transpose_attention=False):
    """Cross self-attention fusion: Q from x1, K from x2, V from x3, residual x4, then the 4-way gate."""
    if mode == "sum":
        return x1 + x2 + x3 + x4
    b, _, h, w = x1.shape
    n = h * w
    v = conv1x1(x3, p["wv"], p["bv"])
    r = v.shape[1]
    d = r // heads
    v = v.reshape(b, heads, d, n)
    if mode == "attention":
        q = conv1x1(x1, p["wq"], p["bq"]).reshape(b, heads, d, n)
        k = conv1x1(x2, p["wk"], p["bk"]).reshape(b, heads, d, n)
        logits = (q @ k.transpose(-1, -2)) / n / math.sqrt(d)   # mean over positions, / sqrt(d)
        a = softmax_last(logits)                                # softmax over the key index j
        if transpose_attention:
            a = a.transpose(-1, -2)
    elif mode == "reference":
        # the released code: the attention is never applied; every output channel of a head is the sum of
        # that head's d value channels
        a = torch.ones(b, heads, d, d, dtype=v.dtype)
    else:
        raise AssertionError(mode)
    o = (a @ v).reshape(b, r, h, w)
    att = conv1x1(o, p["wo"], p["bo"]) + x4
    z = conv1x1(torch.cat([x1, x2, x3, att], dim=1), p["wg"], p["bg"])
    gate = 1.0 / (1.0 + torch.exp(-z))
    return gate[:, 0:1] * x1 + gate[:, 1:2] * x2 + gate[:, 2:3] * x3 + gate[:, 3:4] * att


def branch_features(lr_hsi, hr_msi, weights, cfg, swap_interpolation=False):
    """The four branch outputs (Z_hm at HR, Z_mh and Z_h at LR, Z_m at HR) in float64."""
    lr_hsi, hr_msi = lr_hsi.double(), hr_msi.double()
    up_mode, down_mode = ("bicubic", "bilinear") if swap_interpolation else ("bilinear", "bicubic")
    up_lr = F.interpolate(lr_hsi, size=tuple(hr_msi.shape[-2:]), mode=up_mode, align_corners=False)
    down_msi = F.interpolate(hr_msi, size=tuple(lr_hsi.shape[-2:]), mode=down_mode, align_corners=False)
    br = weights["branches"]
    return {"hm": branch(torch.cat([up_lr, hr_msi], dim=1), br["hm"], 1),
            "mh": branch(torch.cat([lr_hsi, down_msi], dim=1), br["mh"], 1),
            "h": branch(lr_hsi, br["h"], cfg.h_groups),
            "m": branch(hr_msi, br["m"], 1)}


def fuse_and_head(z, weights, cfg, miswire=None):
    """Feature upsampling, the CSA fusion and the head on branch outputs `z`: (hr_hsi, fused)."""
    s = cfg.scale
    if miswire == "bilinear feature upsampling":
        def feature_up(x):
            return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    else:
        def feature_up(x):
            return nearest_up(x, s)
    x1, x2, x3, x4 = feature_up(z["h"]), z["m"], feature_up(z["mh"]), z["hm"]
    if miswire == "h<->m in the fusion":
        x1, x2 = x2, x1
    elif miswire == "mh<->hm in the fusion":
        x3, x4 = x4, x3
    fused = csa_fusion(x1, x2, x3, x4, weights["csa"], cfg.csa, cfg.heads,
                       transpose_attention=miswire == "attention transposed")
    wf, bf = weights["fuse"]
    out = conv3x3(lrelu(conv3x3(fused, wf, bf)), weights["last"])
    return out, fused


def oracle(lr_hsi, hr_msi, weights, cfg, miswire: str | None = None, z=None):
    """The DTS forward in float64: returns (hr_hsi, fused). `miswire` names a deliberate wiring error; `z`:
    branch outputs already computed for these inputs and weights (reused where the miswiring allows)."""
    if z is None or miswire == "bilinear<->bicubic":
        z = branch_features(lr_hsi, hr_msi, weights, cfg, swap_interpolation=miswire == "bilinear<->bicubic")
    return fuse_and_head(z, weights, cfg, miswire)


def miswirings(mode):
    """The deliberate wiring errors that change the output in this CSA mode (in "sum" the fusion is
    symmetric in its inputs, so role swaps there are no error)."""
    common = ["bilinear<->bicubic", "bilinear feature upsampling"]
    if mode == "sum":
        return common
    roles = ["h<->m in the fusion", "mh<->hm in the fusion"]
    return common + roles + (["attention transposed"] if mode == "attention" else [])


# ---- fixtures ---------------------------------------------------------------------------------------------------

def build(preset, mode, bands, msi_bands, seed=0):
    """A model with every parameter re-drawn: weights normal with std gain/sqrt(fan_in), biases normal(0, 0.2).
    Gain 1 (unit gain) makes each CLRB's 0.2-scaled residual branch a sizable fraction of its input, unlike the
    tiny default init; the query and key projections get gain QK_GAIN so that the attention logits are O(1)
    and the softmax is far from uniform (else a transposed or ignored attention would barely show). Nonzero
    biases make a dropped or misplaced bias show."""
    model = csakd.create(preset, bands=bands, msi_bands=msi_bands, scale=4, csa=mode, backend="reference")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                gain = QK_GAIN if re.search(r"(query|key)", name) else 1.0
                std = gain / math.sqrt(p[0].numel())
            else:
                std = 0.2
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
    return model.eval()


def inputs(cfg, lr_size=LR_SIZE, seed=1):
    gen = torch.Generator().manual_seed(seed)
    h, w = lr_size
    s = cfg.scale
    lr = torch.rand(B, cfg.bands, h, w, generator=gen, dtype=torch.float64)
    hr = torch.rand(B, cfg.msi_bands, s * h, s * w, generator=gen, dtype=torch.float64)
    return lr, hr


def rel_errors(actual, expected):
    """(norm-wise relative error, max-abs error relative to max|expected|), in float64."""
    diff = actual.double() - expected
    return (diff.norm() / expected.norm()).item(), (diff.abs().max() / expected.abs().max()).item()


@functools.lru_cache(maxsize=None)
def case(preset, mode, bands, msi_bands, lr_size):
    """(model, lr_hsi, hr_msi, oracle (hr_hsi, fused), {miswiring: miswired oracle (hr_hsi, fused)}), computed
    once and shared by the float32 and float64 comparisons."""
    model = build(preset, mode, bands, msi_bands)
    cfg = model.config
    lr, hr = inputs(cfg, lr_size)
    weights = unpack(model.state_dict())
    assert [len(weights["branches"][k]["clras"]) for k in ("hm", "mh", "h", "m")] == list(cfg.depths)
    assert (weights["csa"] == {}) == (cfg.csa == "sum")
    z = branch_features(lr, hr, weights, cfg)
    expected = oracle(lr, hr, weights, cfg, z=z)
    miswired = {m: oracle(lr, hr, weights, cfg, m, z=z) for m in miswirings(cfg.csa)}
    return model, lr, hr, expected, miswired


def check(key, dtype, rtol, prepared=False):
    """The model run in `dtype` (with `prepared`: through the prepared inference path) against the float64
    oracle, then the comparison's sensitivity."""
    model, lr, hr, expected, miswired = case(*key)
    cfg = model.config
    model = copy.deepcopy(model).to(dtype)
    if prepared:
        model.prepare(dtype)
    with torch.no_grad():
        out, fused = model(lr.to(dtype), hr.to(dtype), return_features=True)
    assert out.dtype == dtype and fused.dtype == dtype
    s = cfg.scale
    assert out.shape == (B, cfg.bands, s * lr.shape[2], s * lr.shape[3])
    assert fused.shape == (B, cfg.nf, s * lr.shape[2], s * lr.shape[3])
    for what, a, e in zip(("hr_hsi", "fused"), (out, fused), expected):
        norm_err, max_err = rel_errors(a, e)
        assert norm_err <= rtol and max_err <= rtol, (
            f"{cfg.name}/{cfg.csa} {dtype} {what}: relative error {norm_err:.3e} (norm), {max_err:.3e} (max) "
            f"exceeds {rtol:.0e}")

    # The comparison can fail: each miswired oracle misses this very model output by far more than the tolerance.
    for miswire, bad in miswired.items():
        for what, a, e in zip(("hr_hsi", "fused"), (out, fused), bad):
            norm_err, _ = rel_errors(a, e)
            assert norm_err > SENSITIVITY_FACTOR * rtol, (
                f"{cfg.name}/{cfg.csa}: the oracle miswired as '{miswire}' matches the model's {what} "
                f"to {norm_err:.3e}: the comparison would not catch that wiring error")


# ---- tests ------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for this module: its tensors are tiny, so per-op thread synchronisation dominates
    (and balloons when the cores are shared); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = [(preset, mode) for preset in ("student_tiny", "teacher_tiny") for mode in ("attention", "reference", "sum")]
DTYPES = pytest.mark.parametrize("dtype,rtol", [(torch.float32, FP32_RTOL), (torch.float64, FP64_RTOL)],
                                 ids=["float32", "float64"])


@DTYPES
@pytest.mark.parametrize("preset,mode", TINY)
def test_tiny_presets_match_float64_oracle(preset, mode, dtype, rtol):
    check((preset, mode, 8, 3, LR_SIZE), dtype, rtol)


@DTYPES
def test_paper_width_student_matches_float64_oracle(dtype, rtol):
    """nf=86, gc=43, the h branch grouped 43 ways, 4 heads of 16: the paper's student at 16 bands."""
    key = ("student", "attention", 16, 4, (4, 5))
    cfg = case(*key)[0].config
    assert (cfg.nf, cfg.gc, cfg.h_groups, cfg.attn_dim, cfg.heads) == (86, 43, 43, 64, 4)
    check(key, dtype, rtol)


@pytest.mark.parametrize("key", [(preset, mode, 8, 3, LR_SIZE) for preset, mode in TINY]
                         + [("student", "attention", 16, 4, (4, 5))], ids=lambda k: f"{k[0]}-{k[1]}")
def test_prepared_float32_path_matches_float64_oracle(key):
    """The prepared inference path (eval, gradients off, weights prepared for float32, the CSA folded) is a
    second implementation of the forward: the same wiring check applies."""
    check(key, torch.float32, FP32_RTOL, prepared=True)


def test_oracle_uses_every_path():
    """The re-drawn weights make each part of the forward matter: dropping any one piece of the oracle (a
    branch's CLRB residuals, the biases, the learned attention) moves the output by far more than the fp32
    tolerance. Guards the comparisons above against a weight scale that would hide a path."""
    model, lr, hr, (ref_out, _), _ = case("teacher_tiny", "attention", 8, 3, LR_SIZE)
    cfg = model.config

    def changed(mutate):
        w = unpack(model.state_dict())
        mutate(w)
        return rel_errors(oracle(lr, hr, w, cfg)[0], ref_out)[0]

    def zero_conv5(w, name):
        for blocks in w["branches"][name]["clras"]:
            for convs in blocks:
                for t in convs[4]:
                    t.zero_()

    def zero_biases(w):
        for br in w["branches"].values():
            br["stem"][1].zero_()
            for blocks in br["clras"]:
                for convs in blocks:
                    for _, b in convs:
                        b.zero_()

    threshold = SENSITIVITY_FACTOR * FP32_RTOL
    for name in ("hm", "mh", "h", "m"):
        assert changed(lambda w, name=name: zero_conv5(w, name)) > threshold, name
    assert changed(zero_biases) > threshold
    assert changed(lambda w: [w["csa"][k].zero_() for k in ("wq", "bq")]) > threshold  # uniform attention
