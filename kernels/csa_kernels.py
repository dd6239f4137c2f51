"""Triton kernels of the fused CSA attention-and-gating (the algebra of `csakd.ops.csa_algebra`, docs/csa.md).

Per image b (C = nf channels, R = attn_dim, heads of D = R / heads, N = H·W pixels):
  logits  = blocks_D(Wq G Wkᵀ + (Wq s1) bkᵀ + bq (Wk s2 + N bk)ᵀ) / (N √D),  G = Σ_n x1 x2ᵀ, s_i = Σ_n x_i
  A       = blockdiag(softmax(logits))            ("reference" mode: blockdiag(ones), q and k unused)
  M, c    = Wo A Wv,  Wo A bv + bo                 so that att = M x3 + c + x4
  out     = Σ_k sigmoid(Wg [x1, x2, x3, att] + bg)_k · y_k,   y = (x1, x2, x3, att)

The per-image "stats" row that the kernels share is [G (C·C) | s1 (C) | s2 (C) | M (C·C) | c (C)]: the Gram pass
(and its reduction) fills the first C·C + 2C, `_mix_kernel` the rest; `_apply_kernel` and `_grad_kernel` read M
and c, `_mix_grad_kernel` reads G, s1, s2. A caller-given attention skips the first two steps: M and c are folded
in PyTorch and written into the same row.

Forward: `_gram_kernel` (one read of x1, x2: per-chunk partial [G | s1 | s2]), `_reduce_partials` (the chunks'
partials summed in parallel: programs over tiles of the row, each summing every chunk's slice of its tile),
`_mix_kernel` (one program per image: the tiny matrices, from one reduced row), `_apply_kernel` (one read of
x1..x4, one write of out).
Backward: `_grad_kernel` recomputes att and the gates from x1..x4 (no activations are saved: saving att would
add a full-map write to the forward and remove no read here, since x3 and every y are read anyway), writes
dx4 = datt, dx3 and either dx1, dx2 ("reference" mode) or the per-pixel gates and gate-logit grads (8 fp32 per
pixel), and reduces per chunk the row [dc = Σ datt | dWg | dbg], which is the tail [dbo | dWg | dbg] of a
weight-grad row; `_gram_kernel` run on (dx4, x3) reduces dM = Σ datt x3ᵀ (a second pass of two maps instead of a
[CP, CP] fp32 accumulator live through the gradient pass's loop); `_reduce_partials` sums both kinds of partials;
`_mix_grad_kernel` turns them into the weight grads and dG, ds1, ds2 by the chain rule through the tiny
matrices; `_gram_grad_kernel` ("attention" mode) adds dG x2 + ds1 and dGᵀ x1 + ds2 to the gate terms of dx1,
dx2 from one more read of x1, x2 and the output grad.
Bytes per pixel in maps of C channels: forward 7 ("reference": 5), backward 14 + 64 B ("reference": 11).

Tiles are [BLOCK, CP] (BLOCK pixels, channels padded to a power of two >= 16 and masked); pixel tiles are
addressed by strides (sb, sc, sn) so NCHW and channels-last inputs both work without copies. Products run on
tl.dot in the input dtype with fp32 accumulation (fp32 inputs: "ieee", no TF32). Partials are summed in a fixed
order (no atomics): results are bitwise reproducible.
The Triton interpreter (CPU) multiplies bf16 tl.dot operands as raw 16-bit integers, so there the dot operand
dtype DT is fp32 and operands are rounded to bf16 first: the same exact products and fp32 sums. Its fp32 ->
bf16 cast truncates where a GPU rounds to nearest even, so there (RNE) `_cast` rounds on the bits. The
interpreter also pays milliseconds per jit-function call, hence the few helpers inside the pixel loops.
Module globals used inside kernels are tl.constexpr (the compiler rejects plain Python globals; the
interpreter does not). `n_bucket` arguments are unused by the kernels: they are the autotuner's key (kernels/csa.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

N_GATES = 4                  # the gate conv's outputs (x1, x2, x3, att)
GATES = tl.constexpr(N_GATES)
GROWS = tl.constexpr(16)     # gate rows padded to tl.dot's minimum tile size


# ---------------------------------------------------------------- small helpers

@triton.jit
def _mat(ptr, rows, cols, n_rows, n_cols, ld):
    """rows x cols tile of a row-major matrix with leading dimension ld, zero outside (n_rows, n_cols)."""
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return tl.load(ptr + rows[:, None] * ld + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_mat(ptr, value, rows, cols, n_rows, n_cols, ld):
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    tl.store(ptr + rows[:, None] * ld + cols[None, :], value, mask=mask)


@triton.jit
def _vec(ptr, idx, n):
    return tl.load(ptr + idx, mask=idx < n, other=0.0)


@triton.jit
def _col(t, k, i: tl.constexpr):
    """Column i of a [BLOCK, GROWS] tile as a [BLOCK] vector."""
    return tl.sum(tl.where(k[None, :] == i, t, 0.0), axis=1)


@triton.jit
def _cast(x, XT: tl.constexpr, RNE: tl.constexpr):
    """fp32 x rounded to the input dtype XT, to nearest even as a GPU converts. RNE (bf16 in the interpreter,
    whose fp32 -> bf16 cast truncates: a one-sided error up to 2^-7 that compounds through the rounded dot
    operands, and wrong subnormals) rounds on the bits instead; NaN stays NaN."""
    if RNE:
        bits = x.to(tl.uint32, bitcast=True)
        top = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        top = tl.where(x == x, top, (bits >> 16) | 0x40)
        y = top.to(tl.uint16).to(XT, bitcast=True)
    else:
        y = x.to(XT)
    return y


@triton.jit
def _chunk(N, chunk):
    start = tl.program_id(0) * chunk
    return start, tl.minimum(start + chunk, N)


@triton.jit
def _gate_weights(wg_ptr, k, c, C, XT: tl.constexpr, DT: tl.constexpr, RNE: tl.constexpr):
    """The four C-column blocks of Wg (GATES x 4C) as [GROWS, CP] dot operands, rows >= GATES zero."""
    w1 = _cast(_mat(wg_ptr, k, c, GATES, C, 4 * C), XT, RNE).to(DT)
    w2 = _cast(_mat(wg_ptr + C, k, c, GATES, C, 4 * C), XT, RNE).to(DT)
    w3 = _cast(_mat(wg_ptr + 2 * C, k, c, GATES, C, 4 * C), XT, RNE).to(DT)
    w4 = _cast(_mat(wg_ptr + 3 * C, k, c, GATES, C, 4 * C), XT, RNE).to(DT)
    return w1, w2, w3, w4


@triton.jit
def _same_head(r, R, D):
    return ((r[:, None] // D) == (r[None, :] // D)) & (r[:, None] < R) & (r[None, :] < R)


@triton.jit
def _logits(G, s1, s2, wq, bq, wk, bk, n_pix):
    """Σ_n q kᵀ from the Gram matrix (before the 1/(N √D) scale), with G Wkᵀ, Wq s1 and Wk s2 for reuse."""
    gwk = tl.dot(G, tl.trans(wk), input_precision="ieee")
    q1 = tl.sum(wq * s1[None, :], axis=1)
    k2 = tl.sum(wk * s2[None, :], axis=1)
    P = tl.dot(wq, gwk, input_precision="ieee")
    P += q1[:, None] * bk[None, :] + bq[:, None] * (k2 + n_pix * bk)[None, :]
    return P, gwk, q1, k2


@triton.jit
def _block_softmax(P, scale, same, valid_row):
    """Row softmax restricted to each head's D x D block; zero outside the blocks."""
    logits = tl.where(same, P * scale, float("-inf"))
    mx = tl.where(valid_row, tl.max(logits, axis=1), 0.0)
    e = tl.exp(logits - mx[:, None])
    den = tl.sum(e, axis=1)
    return e / tl.where(den > 0, den, 1.0)[:, None]


# ---------------------------------------------------------------- forward
# Per-pixel kernels: grid (chunks, images). Tiles are [BLOCK, CP], pixels as rows, so every matmul has the
# pixel tile as its left operand and a loop-invariant matrix (M, Wg) on the right. They are loaded in the dot
# operand dtype DT (the input dtype, or fp32 for bf16 in the interpreter); XT is the input dtype, to which
# dot operands computed here are rounded.

@triton.jit(do_not_specialize=["n_bucket"])
def _gram_kernel(x1_ptr, x2_ptr, part_ptr, row_stride, C, N, chunk, sb, sc, sn, n_bucket,
                 CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, RNE: tl.constexpr, BLOCK: tl.constexpr):
    """The row [Σ x1 x2ᵀ | Σ x1 | Σ x2] (C·C + 2C) over one chunk of one image's pixels, at row
    (image · chunks + chunk) of part_ptr (rows row_stride apart: one chunk per image writes the stats row)."""
    b = tl.program_id(1)
    row = part_ptr + (b * tl.num_programs(0) + tl.program_id(0)) * row_stride
    c = tl.arange(0, CP)
    cmask = c < C
    start, end = _chunk(N, chunk)
    acc = tl.zeros([CP, CP], tl.float32)
    s1 = tl.zeros([CP], tl.float32)
    s2 = tl.zeros([CP], tl.float32)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        offs = b * sb + n[:, None] * sn + c[None, :] * sc
        mask = (n < end)[:, None] & cmask[None, :]
        a = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        k = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        acc = tl.dot(tl.trans(a), k, acc, input_precision=PREC)
        s1 += tl.sum(a.to(tl.float32), axis=0)
        s2 += tl.sum(k.to(tl.float32), axis=0)
    _store_mat(row, acc, c, c, C, C, C)
    tl.store(row + C * C + c, s1, mask=cmask)
    tl.store(row + C * C + C + c, s2, mask=cmask)


@triton.jit
def _reduce_partials(part_ptr, out_ptr, S, L, out_stride, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr):
    """out[b, :L] = Σ_s part[b, s, :L] for part (B, S, L) contiguous and out rows out_stride apart. Grid
    (tiles of L, B): each program sums its BLOCK_L columns over every s, BLOCK_S rows per load, in a fixed
    order (deterministic)."""
    b = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    rows = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_S, BLOCK_L], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + rows
        mask = (s < S)[:, None] & (cols < L)[None, :]
        acc += tl.load(part_ptr + (b * S + s[:, None]) * L + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + b * out_stride + cols, tl.sum(acc, axis=0), mask=cols < L)


@triton.jit
def _mix_kernel(stats_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr, wo_ptr, bo_ptr, C, R, D, n_pix, scale,
                CP: tl.constexpr, RP: tl.constexpr, ATTENTION: tl.constexpr):
    """One program per image: from G, s1, s2 of its stats row (the reduced Gram pass) writes M and c there;
    in "reference" mode (no Gram pass) writes G, s1, s2 as zeros."""
    b = tl.program_id(0)
    c = tl.arange(0, CP)
    r = tl.arange(0, RP)
    cmask = c < C
    stats = stats_ptr + b * (2 * C * C + 3 * C)
    wv = _mat(wv_ptr, r, c, R, C, C)
    bv = _vec(bv_ptr, r, R)
    wo = _mat(wo_ptr, c, r, C, R, R)
    bo = _vec(bo_ptr, c, C)
    same = _same_head(r, R, D)
    if ATTENTION:
        G = _mat(stats, c, c, C, C, C)
        s1 = _vec(stats + C * C, c, C)
        s2 = _vec(stats + C * C + C, c, C)
        wq = _mat(wq_ptr, r, c, R, C, C)
        wk = _mat(wk_ptr, r, c, R, C, C)
        P, gwk, q1, k2 = _logits(G, s1, s2, wq, _vec(bq_ptr, r, R), wk, _vec(bk_ptr, r, R), n_pix)
        A = _block_softmax(P, scale, same, r < R)
    else:
        A = tl.where(same, 1.0, 0.0)
        _store_mat(stats, tl.zeros([CP, CP], tl.float32), c, c, C, C, C)
        tl.store(stats + C * C + c, tl.zeros([CP], tl.float32), mask=cmask)
        tl.store(stats + C * C + C + c, tl.zeros([CP], tl.float32), mask=cmask)
    M = tl.dot(wo, tl.dot(A, wv, input_precision="ieee"), input_precision="ieee")
    cv = tl.sum(wo * tl.sum(A * bv[None, :], axis=1)[None, :], axis=1) + bo
    _store_mat(stats + C * C + 2 * C, M, c, c, C, C, C)
    tl.store(stats + 2 * C * C + 2 * C + c, cv, mask=cmask)


@triton.jit(do_not_specialize=["n_bucket"])
def _apply_kernel(x1_ptr, x2_ptr, x3_ptr, x4_ptr, out_ptr, stats_ptr, wg_ptr, bg_ptr, C, N, chunk, sb, sc, sn,
                  n_bucket, CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, RNE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """out = Σ_k g_k y_k over one chunk of one image's pixels. x1..x3 are loaded again for the final sum (a
    cache hit) rather than kept live through the gate matmuls: fewer registers, no spills."""
    b = tl.program_id(1)
    c = tl.arange(0, CP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    XT: tl.constexpr = x1_ptr.dtype.element_ty
    stats = stats_ptr + b * (2 * C * C + 3 * C)
    mt = tl.trans(_cast(_mat(stats + C * C + 2 * C, c, c, C, C, C), XT, RNE).to(DT))
    cv = _vec(stats + 2 * C * C + 2 * C, c, C)
    w1, w2, w3, w4 = _gate_weights(wg_ptr, k, c, C, XT, DT, RNE)
    bgv = _vec(bg_ptr, k, GATES)
    start, end = _chunk(N, chunk)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        offs = b * sb + n[:, None] * sn + c[None, :] * sc
        mask = (n < end)[:, None] & cmask[None, :]
        x3 = tl.load(x3_ptr + offs, mask=mask, other=0.0).to(DT)
        att = tl.dot(x3, mt, input_precision=PREC) + cv[None, :] + tl.load(x4_ptr + offs, mask=mask, other=0.0)
        z = tl.dot(x3, tl.trans(w3), input_precision=PREC)
        z = tl.dot(_cast(att, XT, RNE).to(DT), tl.trans(w4), z, input_precision=PREC)
        z = tl.dot(tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT), tl.trans(w1), z, input_precision=PREC)
        z = tl.dot(tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT), tl.trans(w2), z, input_precision=PREC)
        g = tl.sigmoid(z + bgv[None, :])
        out = _col(g, k, 3)[:, None] * att
        out += _col(g, k, 2)[:, None] * tl.load(x3_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out += _col(g, k, 0)[:, None] * tl.load(x1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out += _col(g, k, 1)[:, None] * tl.load(x2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, _cast(out, XT, RNE), mask=mask)


# ---------------------------------------------------------------- backward

@triton.jit(do_not_specialize=["n_bucket"])
def _grad_kernel(x1_ptr, x2_ptr, x3_ptr, x4_ptr, do_ptr, stats_ptr, wg_ptr, bg_ptr,
                 dx1_ptr, dx2_ptr, dx3_ptr, dx4_ptr, gz_ptr, part_ptr, row_stride,
                 C, N, chunk, sb, sc, sn, n_bucket,
                 CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, RNE: tl.constexpr,
                 ATTENTION: tl.constexpr, BLOCK: tl.constexpr):
    """Per pixel: dx4 = datt, dx3 and (reference mode) dx1, dx2, or (attention mode) the gates and gate-logit
    grads into gz (B, 8, N); per chunk, the row [dc | dWg | dbg] (C + 4·4C + 4, the layout of dbo, dWg, dbg in
    a weight-grad row) at row (image · chunks + chunk) of part_ptr, rows row_stride apart: dc = Σ datt (of the
    fp32 datt: the sum of its rounded copy dx4 would add that rounding's error to dbo and dbv), dWg = Σ dz yᵀ,
    dbg = Σ dz. (dM = Σ datt x3ᵀ is the Gram kernel run on dx4 and x3.) Inputs are loaded again where used late,
    as in `_apply_kernel`."""
    b = tl.program_id(1)
    row = part_ptr + (b * tl.num_programs(0) + tl.program_id(0)) * row_stride
    c = tl.arange(0, CP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    XT: tl.constexpr = x1_ptr.dtype.element_ty
    stats = stats_ptr + b * (2 * C * C + 3 * C)
    m = _cast(_mat(stats + C * C + 2 * C, c, c, C, C, C), XT, RNE).to(DT)
    cv = _vec(stats + 2 * C * C + 2 * C, c, C)
    w1, w2, w3, w4 = _gate_weights(wg_ptr, k, c, C, XT, DT, RNE)
    bgv = _vec(bg_ptr, k, GATES)
    acc_w1 = tl.zeros([CP, GROWS], tl.float32)
    acc_w2 = tl.zeros([CP, GROWS], tl.float32)
    acc_w3 = tl.zeros([CP, GROWS], tl.float32)
    acc_w4 = tl.zeros([CP, GROWS], tl.float32)
    acc_b = tl.zeros([GROWS], tl.float32)
    acc_c = tl.zeros([CP], tl.float32)
    start, end = _chunk(N, chunk)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        nmask = n < end
        offs = b * sb + n[:, None] * sn + c[None, :] * sc
        mask = nmask[:, None] & cmask[None, :]
        do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # gate logits z and d out / d g_k = <dout, y_k>; masked pixels have dout = 0 and add nothing below
        x3 = tl.load(x3_ptr + offs, mask=mask, other=0.0).to(DT)
        att = tl.dot(x3, tl.trans(m), input_precision=PREC) + cv[None, :] + tl.load(x4_ptr + offs, mask=mask,
                                                                                    other=0.0)
        att_x = _cast(att, XT, RNE).to(DT)
        z = tl.dot(x3, tl.trans(w3), input_precision=PREC)
        dg = tl.where(k[None, :] == 2, tl.sum(do * x3.to(tl.float32), axis=1)[:, None], 0.0)
        z = tl.dot(att_x, tl.trans(w4), z, input_precision=PREC)
        dg += tl.where(k[None, :] == 3, tl.sum(do * att, axis=1)[:, None], 0.0)
        x1 = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        z = tl.dot(x1, tl.trans(w1), z, input_precision=PREC)
        dg += tl.where(k[None, :] == 0, tl.sum(do * x1.to(tl.float32), axis=1)[:, None], 0.0)
        x2 = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        z = tl.dot(x2, tl.trans(w2), z, input_precision=PREC)
        dg += tl.where(k[None, :] == 1, tl.sum(do * x2.to(tl.float32), axis=1)[:, None], 0.0)
        g = tl.sigmoid(z + bgv[None, :])
        dz = dg * g * (1.0 - g)
        dz_x = _cast(dz, XT, RNE).to(DT)
        datt = _col(g, k, 3)[:, None] * do + tl.dot(dz_x, w4, input_precision=PREC)
        tl.store(dx4_ptr + offs, _cast(datt, XT, RNE), mask=mask)
        acc_c += tl.sum(datt, axis=0)
        dx3 = (_col(g, k, 2)[:, None] * do + tl.dot(dz_x, w3, input_precision=PREC)
               + tl.dot(_cast(datt, XT, RNE).to(DT), m, input_precision=PREC))
        tl.store(dx3_ptr + offs, _cast(dx3, XT, RNE), mask=mask)
        if ATTENTION:
            gmask = nmask[:, None] & (k < GATES)[None, :]
            gz = gz_ptr + b * 2 * GATES * N + k[None, :] * N + n[:, None]
            tl.store(gz, g, mask=gmask)
            tl.store(gz + GATES * N, dz, mask=gmask)
        else:
            dx1 = _col(g, k, 0)[:, None] * do + tl.dot(dz_x, w1, input_precision=PREC)
            tl.store(dx1_ptr + offs, _cast(dx1, XT, RNE), mask=mask)
            dx2 = _col(g, k, 1)[:, None] * do + tl.dot(dz_x, w2, input_precision=PREC)
            tl.store(dx2_ptr + offs, _cast(dx2, XT, RNE), mask=mask)
        acc_w4 = tl.dot(tl.trans(att_x), dz_x, acc_w4, input_precision=PREC)
        acc_w3 = tl.dot(tl.trans(tl.load(x3_ptr + offs, mask=mask, other=0.0).to(DT)), dz_x, acc_w3,
                        input_precision=PREC)
        acc_w1 = tl.dot(tl.trans(tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)), dz_x, acc_w1,
                        input_precision=PREC)
        acc_w2 = tl.dot(tl.trans(tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)), dz_x, acc_w2,
                        input_precision=PREC)
        acc_b += tl.sum(dz, axis=0)
    tl.store(row + c, acc_c, mask=cmask)
    dwg = row + C
    _store_mat(dwg, tl.trans(acc_w1), k, c, GATES, C, 4 * C)
    _store_mat(dwg + C, tl.trans(acc_w2), k, c, GATES, C, 4 * C)
    _store_mat(dwg + 2 * C, tl.trans(acc_w3), k, c, GATES, C, 4 * C)
    _store_mat(dwg + 3 * C, tl.trans(acc_w4), k, c, GATES, C, 4 * C)
    tl.store(dwg + GATES * 4 * C + k, acc_b, mask=k < GATES)


@triton.jit
def _mix_grad_kernel(dm_ptr, stats_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr, wo_ptr, bo_ptr,
                     dgram_ptr, dparams_ptr, C, R, D, n_pix, scale,
                     CP: tl.constexpr, RP: tl.constexpr, ATTENTION: tl.constexpr):
    """One program per image: back-propagates dM (the first C·C of its row of dm_ptr, the reduced Gram pass over
    (datt, x3)) and dc (= dbo, already in its dparams row with dWg and dbg) through M = Wo A Wv,
    c = Wo A bv + bo, the block softmax and the Gram-form logits. Writes the rest of this image's dparams row
    (the weight grads flattened in PARAM_NAMES order) and its row of dgram [dG (C·C) | ds1 (C) | ds2 (C)]."""
    b = tl.program_id(0)
    c = tl.arange(0, CP)
    r = tl.arange(0, RP)
    cmask = c < C

    # offsets of wq, bq, wk, bk, wv, bv, wo, bo, wg, bg in a dparams row
    o_wk = R * C + R
    o_wv = 2 * o_wk
    o_wo = 3 * o_wk
    o_wg = o_wo + C * R + C
    out = dparams_ptr + b * (o_wg + 4 * GATES * C + GATES)
    dM = _mat(dm_ptr + b * (C * C + 2 * C), c, c, C, C, C)
    dc = _vec(out + o_wo + C * R, c, C)

    stats = stats_ptr + b * (2 * C * C + 3 * C)
    wv = _mat(wv_ptr, r, c, R, C, C)
    bv = _vec(bv_ptr, r, R)
    wo = _mat(wo_ptr, c, r, C, R, R)
    same = _same_head(r, R, D)
    if ATTENTION:
        G = _mat(stats, c, c, C, C, C)
        s1 = _vec(stats + C * C, c, C)
        s2 = _vec(stats + C * C + C, c, C)
        wq = _mat(wq_ptr, r, c, R, C, C)
        bq = _vec(bq_ptr, r, R)
        wk = _mat(wk_ptr, r, c, R, C, C)
        bk = _vec(bk_ptr, r, R)
        P, gwk, q1, k2 = _logits(G, s1, s2, wq, bq, wk, bk, n_pix)
        A = _block_softmax(P, scale, same, r < R)
    else:
        A = tl.where(same, 1.0, 0.0)

    # M = Wo A Wv, c = Wo A bv + bo
    av = tl.dot(A, wv, input_precision="ieee")
    abv = tl.sum(A * bv[None, :], axis=1)
    wtdm = tl.dot(tl.trans(wo), dM, input_precision="ieee")   # Woᵀ dM
    wtdc = tl.sum(wo * dc[:, None], axis=0)                    # Woᵀ dc
    dwo = tl.dot(dM, tl.trans(av), input_precision="ieee") + dc[:, None] * abv[None, :]
    dwv = tl.dot(tl.trans(A), wtdm, input_precision="ieee")
    dbv = tl.sum(A * wtdc[:, None], axis=0)
    _store_mat(out + o_wv, dwv, r, c, R, C, C)
    tl.store(out + o_wv + R * C + r, dbv, mask=r < R)
    _store_mat(out + o_wo, dwo, c, r, C, R, R)

    zero_rc = tl.zeros([RP, CP], tl.float32)
    zero_r = tl.zeros([RP], tl.float32)
    if ATTENTION:
        # softmax backward inside each head's block (A is zero elsewhere), then P = Wq K' + bq k'ᵀ
        # = Q' Wkᵀ + q' bkᵀ with K' = G Wkᵀ + s1 bkᵀ, k' = Wk s2 + N bk, Q' = Wq G + bq s2ᵀ, q' = Wq s1 + N bq.
        dA = tl.dot(wtdm, tl.trans(wv), input_precision="ieee") + wtdc[:, None] * bv[None, :]
        dP = A * (dA - tl.sum(dA * A, axis=1)[:, None]) * scale
        dwq = tl.dot(dP, tl.trans(gwk + s1[:, None] * bk[None, :]), input_precision="ieee")
        dbq = tl.sum(dP * (k2 + n_pix * bk)[None, :], axis=1)
        qg = tl.dot(wq, G, input_precision="ieee") + bq[:, None] * s2[None, :]
        dwk = tl.dot(tl.trans(dP), qg, input_precision="ieee")
        dbk = tl.sum(dP * (q1 + n_pix * bq)[:, None], axis=0)
        dG = tl.dot(tl.trans(wq), tl.dot(dP, wk, input_precision="ieee"), input_precision="ieee")
        ds1 = tl.sum(wq * tl.sum(dP * bk[None, :], axis=1)[:, None], axis=0)
        ds2 = tl.sum(wk * tl.sum(dP * bq[:, None], axis=0)[:, None], axis=0)
        dgram = dgram_ptr + b * (C * C + 2 * C)
        _store_mat(dgram, dG, c, c, C, C, C)
        tl.store(dgram + C * C + c, ds1, mask=cmask)
        tl.store(dgram + C * C + C + c, ds2, mask=cmask)
    else:
        dwq = zero_rc
        dbq = zero_r
        dwk = zero_rc
        dbk = zero_r
    _store_mat(out, dwq, r, c, R, C, C)
    tl.store(out + R * C + r, dbq, mask=r < R)
    _store_mat(out + o_wk, dwk, r, c, R, C, C)
    tl.store(out + o_wk + R * C + r, dbk, mask=r < R)


@triton.jit(do_not_specialize=["n_bucket"])
def _gram_grad_kernel(x1_ptr, x2_ptr, do_ptr, gz_ptr, dgram_ptr, wg_ptr, dx1_ptr, dx2_ptr,
                      C, N, chunk, sb, sc, sn, n_bucket,
                      CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, RNE: tl.constexpr, BLOCK: tl.constexpr):
    """Attention mode: dx1 = g0 dout + Wg1ᵀ dz + dG x2 + ds1, dx2 = g1 dout + Wg2ᵀ dz + dGᵀ x1 + ds2."""
    b = tl.program_id(1)
    c = tl.arange(0, CP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    XT: tl.constexpr = x1_ptr.dtype.element_ty
    dgram = dgram_ptr + b * (C * C + 2 * C)
    dG = _cast(_mat(dgram, c, c, C, C, C), XT, RNE).to(DT)
    dGt = tl.trans(dG)
    ds1 = _vec(dgram + C * C, c, C)
    ds2 = _vec(dgram + C * C + C, c, C)
    w1 = _cast(_mat(wg_ptr, k, c, GATES, C, 4 * C), XT, RNE).to(DT)
    w2 = _cast(_mat(wg_ptr + C, k, c, GATES, C, 4 * C), XT, RNE).to(DT)
    start, end = _chunk(N, chunk)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        nmask = n < end
        offs = b * sb + n[:, None] * sn + c[None, :] * sc
        mask = nmask[:, None] & cmask[None, :]
        x1 = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        x2 = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gmask = nmask[:, None] & (k < GATES)[None, :]
        gz = gz_ptr + b * 2 * GATES * N + k[None, :] * N + n[:, None]
        g = tl.load(gz, mask=gmask, other=0.0)
        dz_x = _cast(tl.load(gz + GATES * N, mask=gmask, other=0.0), XT, RNE).to(DT)
        dx1 = (_col(g, k, 0)[:, None] * do + tl.dot(dz_x, w1, input_precision=PREC)
               + tl.dot(x2, dGt, input_precision=PREC) + ds1[None, :])
        dx2 = (_col(g, k, 1)[:, None] * do + tl.dot(dz_x, w2, input_precision=PREC)
               + tl.dot(x1, dG, input_precision=PREC) + ds2[None, :])
        tl.store(dx1_ptr + offs, _cast(dx1, XT, RNE), mask=mask)
        tl.store(dx2_ptr + offs, _cast(dx2, XT, RNE), mask=mask)
