"""Triton kernels of the fused training losses (docs/losses.md) and their launchers.

Layout: a contiguous NCHW tensor is, in memory, B·C "bands" of HW consecutive values and, equally, B·HW
"rows" of C consecutive values (the reference form's SAM spectra). Flat index f lies in band f // HW and in
reference row f // C; its paper-form pixel is (f // (C·HW))·HW + f % HW.

Forward, one read of pred/target(/teacher): a paper-form kernel tiles (bands x pixels) and loops over C so each
pixel's spectrum is summed in registers; a reference-form kernel tiles (rows x C). Both add per-band sums
(BEBA numerator and sum of y²) and the scalar sums (reconstruction, teacher reconstruction, SAM cosines) into a
zeroed fp32 `stats` buffer with atomics, and store two SAM coefficients per spectrum for the backward. A
one-program kernel then turns the sums into the loss terms. Backward, one more read: an elementwise kernel (a
tile of the same shape as its forward's) combines the four terms' gradients from the saved band sums and
spectrum coefficients. Launches per call: a memset, two forward kernels, one backward kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Atomics only accumulate (read after the kernel ends): relaxed order, no fences. Scalar sums are spread over
# this many slots (program id modulo) so that thousands of programs do not serialise on three addresses; the
# finalize kernel adds the slots.
SLOTS = 64
N_SCALARS = 3  # reconstruction, teacher reconstruction, SAM cosine
SAM_EPS = 1e-8


# ---------------------------------------------------------------- pointwise pieces shared by the kernels

@triton.jit
def _sgn(x):
    # 0 at 0 and NaN at NaN, like torch's sgn in the reference's autograd.
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x))


@triton.jit
def _rec_value(d, L1: tl.constexpr):
    ad = tl.abs(d)
    if L1:
        return ad
    return tl.where(ad < 1.0, 0.5 * d * d, ad - 0.5)


@triton.jit
def _rec_grad(d, L1: tl.constexpr):
    if L1:
        return _sgn(d)
    return tl.where(tl.abs(d) < 1.0, d, _sgn(d))


@triton.jit
def _beba_value(d, alpha, beta, BEBA_PAPER: tl.constexpr):
    if BEBA_PAPER:
        dist = d * d
        return alpha * dist / beta + tl.where(dist > beta, dist - beta, 0.0) - alpha * beta
    dist = tl.abs(d)
    return alpha * (dist * dist) / beta + tl.where(dist > beta, dist - beta, 0.0) - alpha * beta


@triton.jit
def _beba_grad(d, alpha, beta, BEBA_PAPER: tl.constexpr):
    if BEBA_PAPER:
        return 2.0 * d * (alpha / beta + tl.where(d * d > beta, 1.0, 0.0))
    return 2.0 * alpha * d / beta + tl.where(tl.abs(d) > beta, _sgn(d), 0.0)


@triton.jit
def _sam_finish(dot, na2, nb2, sam_eps):
    """cos = dot / (|a||b| + eps) and the two coefficients of its gradient w.r.t. a:
    d cos / d a = b * s1 - a * s2, s1 = 1 / den, s2 = cos |b| / (den |a|) (0 where |a| = 0, as torch's norm)."""
    na = tl.sqrt(na2)
    nb = tl.sqrt(nb2)
    den = na * nb + sam_eps
    cos = dot / den
    s2 = tl.where(na > 0, cos * (nb / den) / tl.where(na > 0, na, 1.0), 0.0)
    return cos, 1.0 / den, s2


@triton.jit
def _add_scalars(stats_ptr, BC, rec, trec, cos, HAS_TEACHER: tl.constexpr, SLOTS: tl.constexpr):
    slot = stats_ptr + 2 * BC + tl.program_id(0) % SLOTS
    tl.atomic_add(slot, rec, sem="relaxed")
    if HAS_TEACHER:
        tl.atomic_add(slot + SLOTS, trec, sem="relaxed")
    tl.atomic_add(slot + 2 * SLOTS, cos, sem="relaxed")


# ---------------------------------------------------------------- forward

@triton.jit
def _accumulate(pred_ptr, target_ptr, teacher_ptr, offs, mask, dot, na2, nb2, rec, trec, alpha, beta,
                HAS_TEACHER: tl.constexpr, L1: tl.constexpr, BEBA_PAPER: tl.constexpr, ACC: tl.constexpr):
    """Loads one chunk and adds it to the elementwise accumulators; returns them with the chunk's BEBA
    pointwise values and y² (zero where masked), which the caller sums per band."""
    p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(ACC)
    t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(ACC)
    d = p - t
    tt = t * t
    rec += _rec_value(d, L1)
    if HAS_TEACHER:
        tp = tl.load(teacher_ptr + offs, mask=mask, other=0.0).to(ACC)
        trec += _rec_value(p - tp, L1)
    pw = tl.where(mask, _beba_value(d, alpha, beta, BEBA_PAPER), 0.0)
    return dot + p * t, na2 + p * p, nb2 + tt, rec, trec, pw, tt


@triton.jit
def _finish(stats_ptr, pix_ptr, pix, valid, dot, na2, nb2, rec, trec, BC, n_pix, sam_eps,
            HAS_TEACHER: tl.constexpr, SLOTS: tl.constexpr):
    """dot, na2, nb2: the tile's per-spectrum sums; rec, trec: its reconstruction sums. Stores the SAM
    coefficients of spectra `pix` and adds the scalar sums."""
    cos, s1, s2 = _sam_finish(dot, na2, nb2, sam_eps)
    tl.store(pix_ptr + pix, s1, mask=valid)
    tl.store(pix_ptr + n_pix + pix, s2, mask=valid)
    _add_scalars(stats_ptr, BC, rec, trec, tl.sum(tl.where(valid, cos, 0.0), 0), HAS_TEACHER, SLOTS)


@triton.jit
def _forward_paper_kernel(pred_ptr, target_ptr, teacher_ptr, stats_ptr, pix_ptr, C, HW, BC, n_pix,
                          alpha, beta, sam_eps,
                          HAS_TEACHER: tl.constexpr, L1: tl.constexpr, BEBA_PAPER: tl.constexpr,
                          ACC: tl.constexpr, SLOTS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                          STAGES: tl.constexpr):
    """One program: image b = program_id(1), BLOCK_P pixels, all C bands in BLOCK_C chunks."""
    b = tl.program_id(1)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    cs = tl.arange(0, BLOCK_C)
    zero = tl.zeros([BLOCK_C, BLOCK_P], ACC)
    dot, na2, nb2, rec, trec = zero, zero, zero, zero, zero
    for c0 in tl.range(0, C, BLOCK_C, num_stages=STAGES):
        c = c0 + cs
        cmask = c < C
        mask = cmask[:, None] & pmask[None, :]
        dot, na2, nb2, rec, trec, pw, tt = _accumulate(
            pred_ptr, target_ptr, teacher_ptr, (b * C + c)[:, None] * HW + hw[None, :], mask, dot, na2, nb2, rec,
            trec, alpha, beta, HAS_TEACHER, L1, BEBA_PAPER, ACC)
        tl.atomic_add(stats_ptr + b * C + c, tl.sum(pw, 1), mask=cmask, sem="relaxed")
        tl.atomic_add(stats_ptr + BC + b * C + c, tl.sum(tt, 1), mask=cmask, sem="relaxed")
    _finish(stats_ptr, pix_ptr, b * HW + hw, pmask, tl.sum(dot, 0), tl.sum(na2, 0), tl.sum(nb2, 0),
            tl.sum(tl.sum(rec, 1), 0), tl.sum(tl.sum(trec, 1), 0), BC, n_pix, sam_eps, HAS_TEACHER, SLOTS)


@triton.jit
def _forward_reference_kernel(pred_ptr, target_ptr, teacher_ptr, stats_ptr, pix_ptr, C, HW, BC, n_pix,
                              alpha, beta, sam_eps, J,
                              HAS_TEACHER: tl.constexpr, L1: tl.constexpr, BEBA_PAPER: tl.constexpr,
                              ACC: tl.constexpr, SLOTS: tl.constexpr, BLOCK_R: tl.constexpr,
                              BLOCK_K: tl.constexpr):
    """One program: BLOCK_R rows of C consecutive values (a contiguous flat range), C in BLOCK_K chunks."""
    r0 = tl.program_id(0) * BLOCK_R
    rows = r0 + tl.arange(0, BLOCK_R)
    rmask = rows < n_pix
    ks = tl.arange(0, BLOCK_K)
    zero = tl.zeros([BLOCK_R, BLOCK_K], ACC)
    dot, na2, nb2, rec, trec = zero, zero, zero, zero, zero
    for k0 in range(0, C, BLOCK_K):
        k = k0 + ks
        mask = rmask[:, None] & (k < C)[None, :]
        dot, na2, nb2, rec, trec, pw, tt = _accumulate(
            pred_ptr, target_ptr, teacher_ptr, rows[:, None] * C + k[None, :], mask, dot, na2, nb2, rec, trec,
            alpha, beta, HAS_TEACHER, L1, BEBA_PAPER, ACC)
        # Each row's chunk starts in band g0 and meets at most J bands (J = 2 once HW >= the chunk).
        start = rows * C + k0
        g0 = start // HW
        for j in range(J):
            lo = (g0 + j) * HW - start  # chunk-relative start of band g0 + j in each row
            inside = (ks[None, :] >= lo[:, None]) & (ks[None, :] < (lo + HW)[:, None])
            met = rmask & (lo < C - k0) & (lo < BLOCK_K)
            tl.atomic_add(stats_ptr + g0 + j, tl.sum(tl.where(inside, pw, 0.0), 1), mask=met, sem="relaxed")
            tl.atomic_add(stats_ptr + BC + g0 + j, tl.sum(tl.where(inside, tt, 0.0), 1), mask=met, sem="relaxed")
    _finish(stats_ptr, pix_ptr, rows, rmask, tl.sum(dot, 1), tl.sum(na2, 1), tl.sum(nb2, 1),
            tl.sum(tl.sum(rec, 1), 0), tl.sum(tl.sum(trec, 1), 0), BC, n_pix, sam_eps, HAS_TEACHER, SLOTS)


@triton.jit
def _finalize_kernel(stats_ptr, rec_ptr, beba_ptr, sam_ptr, trec_ptr, total_ptr, BC, HW, n, n_pix, eps,
                     w_rec, w_beba, w_sam, w_teacher,
                     HAS_TEACHER: tl.constexpr, ACC: tl.constexpr, SLOTS: tl.constexpr, BLOCK: tl.constexpr):
    """Loss terms from the sums: BEBA = mean_bc (S_pw / HW) / (S_yy / HW + eps), the rest are means."""
    ratio = tl.zeros([BLOCK], ACC)
    for i0 in range(0, BC, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = i < BC
        s_pw = tl.load(stats_ptr + i, mask=m, other=0.0)
        s_yy = tl.load(stats_ptr + BC + i, mask=m, other=1.0)
        ratio += tl.where(m, (s_pw / HW) / (s_yy / HW + eps), 0.0)
    beba = tl.sum(ratio, 0) / BC
    slots = stats_ptr + 2 * BC + tl.arange(0, SLOTS)
    rec = tl.sum(tl.load(slots), 0) / n
    trec = tl.sum(tl.load(slots + SLOTS), 0) / n
    sam = 1.0 - tl.sum(tl.load(slots + 2 * SLOTS), 0) / n_pix
    total = w_rec * rec + w_beba * beba + w_sam * sam
    if HAS_TEACHER:
        total += w_teacher * trec
    tl.store(rec_ptr, rec)
    tl.store(beba_ptr, beba)
    tl.store(sam_ptr, sam)
    tl.store(trec_ptr, trec)
    tl.store(total_ptr, total)


# ---------------------------------------------------------------- backward

@triton.jit
def _upstream(g_rec_ptr, g_beba_ptr, g_sam_ptr, g_trec_ptr, g_total_ptr, w_rec, w_beba, w_sam, w_teacher,
              G_MASK: tl.constexpr, ACC: tl.constexpr):
    """dL/d(term) = the term's own upstream gradient + its weight x the total's. G_MASK bit i: the upstream
    gradient of (rec, beba, sam, teacher_rec, total)[i] exists (autograd passes None for unused outputs)."""
    k_rec = tl.zeros([1], ACC)
    k_beba = tl.zeros([1], ACC)
    k_sam = tl.zeros([1], ACC)
    k_trec = tl.zeros([1], ACC)
    if (G_MASK & 1) != 0:
        k_rec += tl.load(g_rec_ptr).to(ACC)
    if (G_MASK & 2) != 0:
        k_beba += tl.load(g_beba_ptr).to(ACC)
    if (G_MASK & 4) != 0:
        k_sam += tl.load(g_sam_ptr).to(ACC)
    if (G_MASK & 8) != 0:
        k_trec += tl.load(g_trec_ptr).to(ACC)
    if (G_MASK & 16) != 0:
        g_total = tl.load(g_total_ptr).to(ACC)
        k_rec += w_rec * g_total
        k_beba += w_beba * g_total
        k_sam += w_sam * g_total
        k_trec += w_teacher * g_total
    return tl.sum(k_rec, 0), tl.sum(k_beba, 0), tl.sum(k_sam, 0), tl.sum(k_trec, 0)


@triton.jit
def _pointwise_grad(p, t, tp, band_scale, s1, s2, k_rec_n, k_trec_n, k_sam_n, alpha, beta,
                    HAS_TEACHER: tl.constexpr, L1: tl.constexpr, BEBA_PAPER: tl.constexpr):
    d = p - t
    g = k_rec_n * _rec_grad(d, L1) + band_scale * _beba_grad(d, alpha, beta, BEBA_PAPER)
    g -= k_sam_n * (t * s1 - p * s2)
    if HAS_TEACHER:
        g += k_trec_n * _rec_grad(p - tp, L1)
    return g


@triton.jit
def _backward_paper_kernel(pred_ptr, target_ptr, teacher_ptr, stats_ptr, pix_ptr, grad_ptr,
                           g_rec_ptr, g_beba_ptr, g_sam_ptr, g_trec_ptr, g_total_ptr,
                           C, HW, BC, n, n_pix, alpha, beta, eps, w_rec, w_beba, w_sam, w_teacher,
                           HAS_TEACHER: tl.constexpr, L1: tl.constexpr, BEBA_PAPER: tl.constexpr,
                           G_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_P: tl.constexpr):
    """Tile of BLOCK_C bands x BLOCK_P pixels: band scale per row, SAM coefficients per column."""
    k_rec, k_beba, k_sam, k_trec = _upstream(g_rec_ptr, g_beba_ptr, g_sam_ptr, g_trec_ptr, g_total_ptr,
                                             w_rec, w_beba, w_sam, w_teacher, G_MASK, ACC)
    n_cb = tl.cdiv(C, BLOCK_C)
    b = tl.program_id(1) // n_cb
    c = (tl.program_id(1) % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = hw < HW
    mask = cmask[:, None] & pmask[None, :]
    # d BEBA / d pw = 1 / (BC · HW · E), E = S_yy / HW + eps
    s_yy = tl.load(stats_ptr + BC + b * C + c, mask=cmask, other=1.0)
    band_scale = k_beba / (BC * (s_yy + eps * HW))
    s1 = tl.load(pix_ptr + b * HW + hw, mask=pmask, other=0.0)
    s2 = tl.load(pix_ptr + n_pix + b * HW + hw, mask=pmask, other=0.0)
    offs = (b * C + c)[:, None] * HW + hw[None, :]
    p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(ACC)
    t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(ACC)
    tp = p
    if HAS_TEACHER:
        tp = tl.load(teacher_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = _pointwise_grad(p, t, tp, band_scale[:, None], s1[None, :], s2[None, :], k_rec / n, k_trec / n,
                        k_sam / n_pix, alpha, beta, HAS_TEACHER, L1, BEBA_PAPER)
    tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_reference_kernel(pred_ptr, target_ptr, teacher_ptr, stats_ptr, pix_ptr, grad_ptr,
                               g_rec_ptr, g_beba_ptr, g_sam_ptr, g_trec_ptr, g_total_ptr,
                               C, HW, BC, n, n_pix, alpha, beta, eps, w_rec, w_beba, w_sam, w_teacher, J,
                               HAS_TEACHER: tl.constexpr, L1: tl.constexpr, BEBA_PAPER: tl.constexpr,
                               G_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                               BLOCK_K: tl.constexpr):
    """Tile of BLOCK_R rows x BLOCK_K values: SAM coefficients per row, band scale per touched band."""
    k_rec, k_beba, k_sam, k_trec = _upstream(g_rec_ptr, g_beba_ptr, g_sam_ptr, g_trec_ptr, g_total_ptr,
                                             w_rec, w_beba, w_sam, w_teacher, G_MASK, ACC)
    n_kb = tl.cdiv(C, BLOCK_K)
    r0 = (tl.program_id(0) // n_kb) * BLOCK_R
    k0 = (tl.program_id(0) % n_kb) * BLOCK_K
    rows = r0 + tl.arange(0, BLOCK_R)
    k = k0 + tl.arange(0, BLOCK_K)
    rmask = rows < n_pix
    mask = rmask[:, None] & (k < C)[None, :]
    f = rows[:, None] * C + k[None, :]
    start = rows * C + k0
    g0 = start // HW
    band_scale = tl.zeros([BLOCK_R, BLOCK_K], ACC)
    for j in range(J):
        lo = (g0 + j) * HW - start
        inside = (k[None, :] - k0 >= lo[:, None]) & (k[None, :] - k0 < (lo + HW)[:, None])
        s_yy = tl.load(stats_ptr + BC + g0 + j, mask=rmask & (g0 + j < BC), other=1.0)
        band_scale = tl.where(inside, (k_beba / (BC * (s_yy + eps * HW)))[:, None], band_scale)
    s1 = tl.load(pix_ptr + rows, mask=rmask, other=0.0)
    s2 = tl.load(pix_ptr + n_pix + rows, mask=rmask, other=0.0)
    p = tl.load(pred_ptr + f, mask=mask, other=0.0).to(ACC)
    t = tl.load(target_ptr + f, mask=mask, other=0.0).to(ACC)
    tp = p
    if HAS_TEACHER:
        tp = tl.load(teacher_ptr + f, mask=mask, other=0.0).to(ACC)
    g = _pointwise_grad(p, t, tp, band_scale, s1[:, None], s2[:, None], k_rec / n, k_trec / n,
                        k_sam / n_pix, alpha, beta, HAS_TEACHER, L1, BEBA_PAPER)
    tl.store(grad_ptr + f, g.to(grad_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- KD: BCE with logits vs sigmoid(teacher)

@triton.jit
def _kd_forward_kernel(x_ptr, t_ptr, out_ptr, n, ACC: tl.constexpr, BLOCK: tl.constexpr,
                       TILES: tl.constexpr, STAGES: tl.constexpr):
    """Adds sum(loss) / n of TILES consecutive blocks to out; loss = max(x, 0) - x z + log(1 + exp(-|x|))."""
    acc = tl.zeros([BLOCK], ACC)
    for i in tl.range(0, TILES, num_stages=STAGES):
        offs = (tl.program_id(0) * TILES + i) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
        z = tl.sigmoid(tl.load(t_ptr + offs, mask=m, other=0.0).to(ACC))
        e = tl.exp(-tl.abs(x))
        # log1p(e): the series where 1 + e would round e away (confident logits)
        loss = tl.maximum(x, 0.0) - x * z + tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
        acc += tl.where(m, loss, 0.0)
    tl.atomic_add(out_ptr, tl.sum(acc, 0) / n, sem="relaxed")


@triton.jit
def _kd_backward_kernel(x_ptr, t_ptr, g_ptr, grad_ptr, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
    t = tl.load(t_ptr + offs, mask=m, other=0.0).to(ACC)
    scale = tl.load(g_ptr).to(ACC) / n
    g = (tl.sigmoid(x) - tl.sigmoid(t)) * scale
    tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------- launchers

@dataclass(frozen=True)
class Tile:
    """One kernel's tile: about `elems` values, at most `max_p` pixels along the contiguous axis (paper form;
    the reference form takes a whole spectrum of up to 256 values), `warps` warps, and `stages` software
    pipeline stages of the forward's loop over C (asynchronous copies: more bytes in flight per register)."""

    elems: int
    max_p: int = 256
    warps: int = 8
    stages: int = 1


@dataclass(frozen=True)
class Tiles:
    """Tiles of the four fusion kernels. GPU defaults chosen for an H100 from the compiled register counts
    (about 80 registers in the paper forward, 60-95 in the backwards, no spills); `bench/losses.py --sweep`
    times alternatives. The reference form's spectra start at unaligned offsets r·C, so its loads are not
    vectorised and its forward needs more registers: smaller tiles."""

    fwd_paper: Tile = Tile(2048, 256, 8, 3)
    fwd_reference: Tile = Tile(1024, 256, 4)
    bwd_paper: Tile = Tile(4096, 256, 8)
    bwd_reference: Tile = Tile(2048, 256, 8)


# The bench may replace GPU_TILES to time other tiles. The interpreter runs few large tiles (its cost is per
# program and per operation, not per element).
GPU_TILES = Tiles()
INTERPRETER_TILES = Tiles(*(Tile(65536, 1024),) * 4)
KD_BLOCK, KD_TILES, KD_STAGES = 4096, 4, 3


def _tiles(x: torch.Tensor) -> Tiles:
    return GPU_TILES if x.device.type == "cuda" else INTERPRETER_TILES


def _acc_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _tl(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _np2(x: int) -> int:
    return triton.next_power_of_2(max(1, x))


def _blocks(C: int, HW: int, sam_paper: bool, tile: Tile) -> tuple[int, int]:
    """(rows, cols) of a tile: paper form (bands, pixels); reference form (rows of C, a row's values, at most
    256 so that a paper-size spectrum fits in one chunk)."""
    if sam_paper:
        cols = min(_np2(HW), tile.max_p)
        return min(_np2(C), max(1, tile.elems // cols)), cols
    cols = min(_np2(C), 256)
    return max(1, tile.elems // cols), cols


def _bands_met(C: int, HW: int, block_k: int) -> int:
    """Most bands one row's chunk of min(block_k, C) consecutive values can meet."""
    return (min(block_k, C) - 1) // HW + 2


def fusion_forward(pred, target, teacher, *, sam_paper: bool, beba_paper: bool, l1: bool, alpha: float,
                   beta: float, eps: float, weights: tuple[float, float, float, float]):
    """Loss terms (rec, beba, sam, teacher_rec, total) as 0-d tensors, plus the `stats` and per-pixel `pix`
    buffers the backward needs. Inputs must be contiguous, of one shape (B, C, H, W), on one device."""
    B, C, H, W = pred.shape
    HW, BC, n_pix = H * W, B * C, B * H * W
    acc = _acc_dtype(pred, target, teacher)
    tile = _tiles(pred).fwd_paper if sam_paper else _tiles(pred).fwd_reference
    stats = torch.zeros(2 * BC + N_SCALARS * SLOTS, dtype=acc, device=pred.device)
    pix = torch.empty(2 * n_pix, dtype=acc, device=pred.device)
    has_teacher = teacher is not None
    common = dict(HAS_TEACHER=has_teacher, L1=l1, BEBA_PAPER=beba_paper, ACC=_tl(acc), SLOTS=SLOTS,
                  num_warps=tile.warps)
    args = (pred, target, teacher if has_teacher else pred, stats, pix, C, HW, BC, n_pix, alpha, beta, SAM_EPS)
    rows, cols = _blocks(C, HW, sam_paper, tile)
    if sam_paper:
        _forward_paper_kernel[(triton.cdiv(HW, cols), B)](*args, BLOCK_C=rows, BLOCK_P=cols, STAGES=tile.stages,
                                                          **common)
    else:
        _forward_reference_kernel[(triton.cdiv(n_pix, rows),)](*args, _bands_met(C, HW, cols), BLOCK_R=rows,
                                                               BLOCK_K=cols, **common)
    terms = [torch.empty((), dtype=acc, device=pred.device) for _ in range(5)]
    _finalize_kernel[(1,)](stats, *terms, BC, HW, pred.numel(), n_pix, eps, *weights, HAS_TEACHER=has_teacher,
                           ACC=_tl(acc), SLOTS=SLOTS, BLOCK=min(1024, _np2(BC)))
    return (*terms, stats, pix)


def fusion_backward(grads, pred, target, teacher, stats, pix, *, sam_paper: bool, beba_paper: bool, l1: bool,
                    alpha: float, beta: float, eps: float,
                    weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Gradient w.r.t. pred given the upstream gradients of (rec, beba, sam, teacher_rec, total), any None."""
    B, C, H, W = pred.shape
    HW, BC, n_pix = H * W, B * C, B * H * W
    acc = _acc_dtype(pred, target, teacher)
    tile = _tiles(pred).bwd_paper if sam_paper else _tiles(pred).bwd_reference
    grad = torch.empty_like(pred)
    g_mask = sum(1 << i for i, g in enumerate(grads) if g is not None)
    g_ptrs = [g if g is not None else stats for g in grads]
    has_teacher = teacher is not None
    args = (pred, target, teacher if has_teacher else pred, stats, pix, grad, *g_ptrs, C, HW, BC, pred.numel(),
            n_pix, alpha, beta, eps, *weights)
    common = dict(HAS_TEACHER=has_teacher, L1=l1, BEBA_PAPER=beba_paper, G_MASK=g_mask, ACC=_tl(acc),
                  num_warps=tile.warps)
    rows, cols = _blocks(C, HW, sam_paper, tile)
    if sam_paper:
        grid = (triton.cdiv(HW, cols), B * triton.cdiv(C, rows))
        _backward_paper_kernel[grid](*args, BLOCK_C=rows, BLOCK_P=cols, **common)
    else:
        grid = (triton.cdiv(n_pix, rows) * triton.cdiv(C, cols),)
        _backward_reference_kernel[grid](*args, _bands_met(C, HW, cols), BLOCK_R=rows, BLOCK_K=cols, **common)
    return grad


def kd_forward(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean BCE-with-logits(student, sigmoid(teacher)); contiguous inputs of one shape."""
    acc = _acc_dtype(student, teacher)
    out = torch.zeros((), dtype=acc, device=student.device)
    n = student.numel()
    _kd_forward_kernel[(triton.cdiv(n, KD_BLOCK * KD_TILES),)](student, teacher, out, n, ACC=_tl(acc),
                                                              BLOCK=KD_BLOCK, TILES=KD_TILES, STAGES=KD_STAGES,
                                                              num_warps=8)
    return out


def kd_backward(grad_out: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    grad = torch.empty_like(student)
    n = student.numel()
    _kd_backward_kernel[(triton.cdiv(n, KD_BLOCK),)](student, teacher, grad_out, grad, n,
                                                    ACC=_tl(_acc_dtype(student, teacher)), BLOCK=KD_BLOCK,
                                                    num_warps=8)
    return grad
