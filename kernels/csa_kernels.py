"""Triton kernels of the fused CSA attention-and-gating (SPEC §2, §7.1).

Per image b (C = nf channels, R = attn_dim, heads of D = R / heads, N = H·W pixels):
  logits  = blocks_D(Wq G Wkᵀ + (Wq s1) bkᵀ + bq (Wk s2 + N bk)ᵀ) / (N √D),  G = Σ_n x1 x2ᵀ, s_i = Σ_n x_i
  A       = blockdiag(softmax(logits))            ("reference" mode: blockdiag(ones), q and k unused)
  M, c    = Wo A Wv,  Wo A bv + bo                 so that att = M x3 + c + x4
  out     = Σ_k sigmoid(Wg [x1, x2, x3, att] + bg)_k · y_k,   y = (x1, x2, x3, att)

Forward: `_gram_kernel` (one read of x1, x2: per-chunk partial G, s1, s2), `_mix_kernel` (one program per
image: the tiny matrices), `_apply_kernel` (one read of x1..x4, one write of out).
Backward: `_grad_kernel` recomputes att and the gates from x1..x4 (no activations are saved: saving att would
add a full-map write to the forward and remove no read here, since x3 and every y are read anyway), writes
dx3, dx4 and either dx1, dx2 ("reference" mode) or the per-pixel gates and gate-logit grads (8 fp32 per pixel),
and reduces dM, dc, dWg, dbg per chunk; `_mix_grad_kernel` turns those into the weight grads and dG, ds1, ds2
by the chain rule through the tiny matrices; `_gram_grad_kernel` ("attention" mode) adds dG x2 + ds1 and
dGᵀ x1 + ds2 to the gate terms of dx1, dx2 from one more read of x1, x2 and the output grad.
Bytes per pixel in maps of C channels: forward 7 ("reference": 5), backward 12 + 64 B ("reference": 9).

Tiles are [CP, BLOCK] (channels padded to a power of two >= 16 and masked, BLOCK pixels); pixel tiles are
addressed by strides (sb, sc, sn) so NCHW and channels-last inputs both work without copies. Products run on
tl.dot in the input dtype with fp32 accumulation (fp32 inputs: "ieee", no TF32). Reductions write one partial
per (image, chunk) and are summed in a fixed order: results are deterministic.
The Triton interpreter (CPU) multiplies bf16 tl.dot operands as raw 16-bit integers, so there the dot operand
dtype DT is fp32 and operands are rounded to bf16 first: the same exact products and fp32 sums. The interpreter
also pays milliseconds per jit-function call, hence the few helpers inside the pixel loops.
"""
from __future__ import annotations

import triton
import triton.language as tl

GATES = 4   # the gate conv's outputs (x1, x2, x3, att)
GROWS = 16  # gate rows padded to tl.dot's minimum tile size


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
def _row(t, k, i: tl.constexpr):
    """Row i of a [GROWS, BLOCK] tile as a [BLOCK] vector."""
    return tl.sum(tl.where(k[:, None] == i, t, 0.0), axis=0)


@triton.jit
def _chunk(N, chunk):
    start = tl.program_id(0) * chunk
    return start, tl.minimum(start + chunk, N)


@triton.jit
def _gate_weights(wg_ptr, k, c, C, XT: tl.constexpr, DT: tl.constexpr):
    """The four C-column blocks of Wg (GATES x 4C) as [GROWS, CP] dot operands, rows >= GATES zero."""
    w1 = _mat(wg_ptr, k, c, GATES, C, 4 * C).to(XT).to(DT)
    w2 = _mat(wg_ptr + C, k, c, GATES, C, 4 * C).to(XT).to(DT)
    w3 = _mat(wg_ptr + 2 * C, k, c, GATES, C, 4 * C).to(XT).to(DT)
    w4 = _mat(wg_ptr + 3 * C, k, c, GATES, C, 4 * C).to(XT).to(DT)
    return w1, w2, w3, w4


@triton.jit
def _gate(x1, x2, x3, x4, m, cv, w1, w2, w3, w4, bgv, PREC: tl.constexpr, XT: tl.constexpr):
    """att = M x3 + c + x4 in fp32, att rounded to the input dtype XT (the gate's matmul operand), and the
    gates sigmoid(Wg [x1, x2, x3, att] + bg) as a [GROWS, BLOCK] tile (rows >= GATES are unused)."""
    att = tl.dot(m, x3, input_precision=PREC) + cv[:, None] + x4.to(tl.float32)
    att_x = att.to(XT).to(x1.dtype)
    z = tl.dot(w1, x1, input_precision=PREC)
    z = tl.dot(w2, x2, z, input_precision=PREC)
    z = tl.dot(w3, x3, z, input_precision=PREC)
    z = tl.dot(w4, att_x, z, input_precision=PREC)
    return att, att_x, tl.sigmoid(z + bgv[:, None])


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
# Per-pixel kernels: grid (chunks, images); tiles are loaded in the dot operand dtype DT (the input dtype, or
# fp32 for bf16 in the interpreter) and XT is the input dtype, to which dot operands computed here are rounded.

@triton.jit
def _gram_kernel(x1_ptr, x2_ptr, gram_part_ptr, sums_part_ptr, C, N, chunk, sb, sc, sn,
                 CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr):
    """Partial Σ x1 x2ᵀ, Σ x1, Σ x2 over one chunk of one image's pixels."""
    b = tl.program_id(1)
    part = b * tl.num_programs(0) + tl.program_id(0)
    c = tl.arange(0, CP)
    cmask = c < C
    start, end = _chunk(N, chunk)
    acc = tl.zeros([CP, CP], tl.float32)
    s1 = tl.zeros([CP], tl.float32)
    s2 = tl.zeros([CP], tl.float32)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        offs = b * sb + c[:, None] * sc + n[None, :] * sn
        mask = cmask[:, None] & (n < end)[None, :]
        a = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        k = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        acc = tl.dot(a, tl.trans(k), acc, input_precision=PREC)
        s1 += tl.sum(a.to(tl.float32), axis=1)
        s2 += tl.sum(k.to(tl.float32), axis=1)
    _store_mat(gram_part_ptr + part * C * C, acc, c, c, C, C, C)
    tl.store(sums_part_ptr + part * 2 * C + c, s1, mask=cmask)
    tl.store(sums_part_ptr + part * 2 * C + C + c, s2, mask=cmask)


@triton.jit
def _mix_kernel(gram_part_ptr, sums_part_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr, wo_ptr, bo_ptr,
                stats_ptr, C, R, D, S, n_pix, scale,
                CP: tl.constexpr, RP: tl.constexpr, ATTENTION: tl.constexpr):
    """One program per image: sums the S partials and writes the per-image stats row
    [G (C·C) | M (C·C) | s1 (C) | s2 (C) | c (C)]; G, s1, s2 stay zero in "reference" mode."""
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
    G = tl.zeros([CP, CP], tl.float32)
    s1 = tl.zeros([CP], tl.float32)
    s2 = tl.zeros([CP], tl.float32)
    if ATTENTION:
        for s in range(S):
            part = b * S + s
            G += _mat(gram_part_ptr + part * C * C, c, c, C, C, C)
            s1 += _vec(sums_part_ptr + part * 2 * C, c, C)
            s2 += _vec(sums_part_ptr + part * 2 * C + C, c, C)
        wq = _mat(wq_ptr, r, c, R, C, C)
        wk = _mat(wk_ptr, r, c, R, C, C)
        P, gwk, q1, k2 = _logits(G, s1, s2, wq, _vec(bq_ptr, r, R), wk, _vec(bk_ptr, r, R), n_pix)
        A = _block_softmax(P, scale, same, r < R)
    else:
        A = tl.where(same, 1.0, 0.0)
    M = tl.dot(wo, tl.dot(A, wv, input_precision="ieee"), input_precision="ieee")
    cv = tl.sum(wo * tl.sum(A * bv[None, :], axis=1)[None, :], axis=1) + bo
    _store_mat(stats, G, c, c, C, C, C)
    _store_mat(stats + C * C, M, c, c, C, C, C)
    tl.store(stats + 2 * C * C + c, s1, mask=cmask)
    tl.store(stats + 2 * C * C + C + c, s2, mask=cmask)
    tl.store(stats + 2 * C * C + 2 * C + c, cv, mask=cmask)


@triton.jit
def _apply_kernel(x1_ptr, x2_ptr, x3_ptr, x4_ptr, out_ptr, stats_ptr, wg_ptr, bg_ptr, C, N, chunk, sb, sc, sn,
                  CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr):
    """out = Σ_k g_k y_k over one chunk of one image's pixels."""
    b = tl.program_id(1)
    c = tl.arange(0, CP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    XT: tl.constexpr = x1_ptr.dtype.element_ty
    stats = stats_ptr + b * (2 * C * C + 3 * C)
    m = _mat(stats + C * C, c, c, C, C, C).to(XT).to(DT)
    cv = _vec(stats + 2 * C * C + 2 * C, c, C)
    w1, w2, w3, w4 = _gate_weights(wg_ptr, k, c, C, XT, DT)
    bgv = _vec(bg_ptr, k, GATES)
    start, end = _chunk(N, chunk)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        offs = b * sb + c[:, None] * sc + n[None, :] * sn
        mask = cmask[:, None] & (n < end)[None, :]
        x1 = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        x2 = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        x3 = tl.load(x3_ptr + offs, mask=mask, other=0.0).to(DT)
        x4 = tl.load(x4_ptr + offs, mask=mask, other=0.0)
        att, att_x, g = _gate(x1, x2, x3, x4, m, cv, w1, w2, w3, w4, bgv, PREC, XT)
        out = (_row(g, k, 0)[None, :] * x1.to(tl.float32) + _row(g, k, 1)[None, :] * x2.to(tl.float32)
               + _row(g, k, 2)[None, :] * x3.to(tl.float32) + _row(g, k, 3)[None, :] * att)
        tl.store(out_ptr + offs, out.to(XT), mask=mask)


# ---------------------------------------------------------------- backward

@triton.jit
def _grad_kernel(x1_ptr, x2_ptr, x3_ptr, x4_ptr, do_ptr, stats_ptr, wg_ptr, bg_ptr,
                 dx1_ptr, dx2_ptr, dx3_ptr, dx4_ptr, gz_ptr, dm_part_ptr, dc_part_ptr, dwg_part_ptr, dbg_part_ptr,
                 C, N, chunk, sb, sc, sn,
                 CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, ATTENTION: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Per pixel: dx3, dx4 and (reference mode) dx1, dx2, or (attention mode) the gates and gate-logit grads
    into gz (B, 8, N); per chunk: partial dM = Σ datt x3ᵀ, dc = Σ datt, dWg = Σ dz yᵀ, dbg = Σ dz."""
    b = tl.program_id(1)
    part = b * tl.num_programs(0) + tl.program_id(0)
    c = tl.arange(0, CP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    XT: tl.constexpr = x1_ptr.dtype.element_ty
    stats = stats_ptr + b * (2 * C * C + 3 * C)
    m = _mat(stats + C * C, c, c, C, C, C).to(XT).to(DT)
    mt = tl.trans(m)
    cv = _vec(stats + 2 * C * C + 2 * C, c, C)
    w1, w2, w3, w4 = _gate_weights(wg_ptr, k, c, C, XT, DT)
    bgv = _vec(bg_ptr, k, GATES)
    acc_m = tl.zeros([CP, CP], tl.float32)
    acc_c = tl.zeros([CP], tl.float32)
    acc_w1 = tl.zeros([GROWS, CP], tl.float32)
    acc_w2 = tl.zeros([GROWS, CP], tl.float32)
    acc_w3 = tl.zeros([GROWS, CP], tl.float32)
    acc_w4 = tl.zeros([GROWS, CP], tl.float32)
    acc_b = tl.zeros([GROWS], tl.float32)
    start, end = _chunk(N, chunk)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        nmask = n < end
        offs = b * sb + c[:, None] * sc + n[None, :] * sn
        mask = cmask[:, None] & nmask[None, :]
        x1 = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        x2 = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        x3 = tl.load(x3_ptr + offs, mask=mask, other=0.0).to(DT)
        x4 = tl.load(x4_ptr + offs, mask=mask, other=0.0)
        do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        att, att_x, g = _gate(x1, x2, x3, x4, m, cv, w1, w2, w3, w4, bgv, PREC, XT)
        # d out / d g_k = <dout, y_k> per pixel; masked pixels have dout = 0, so they add nothing below.
        dg = (tl.where(k[:, None] == 0, tl.sum(do * x1.to(tl.float32), axis=0)[None, :], 0.0)
              + tl.where(k[:, None] == 1, tl.sum(do * x2.to(tl.float32), axis=0)[None, :], 0.0)
              + tl.where(k[:, None] == 2, tl.sum(do * x3.to(tl.float32), axis=0)[None, :], 0.0)
              + tl.where(k[:, None] == 3, tl.sum(do * att, axis=0)[None, :], 0.0))
        dz = dg * g * (1.0 - g)
        dz_x = dz.to(XT).to(DT)
        datt = _row(g, k, 3)[None, :] * do + tl.dot(tl.trans(w4), dz_x, input_precision=PREC)
        datt_x = datt.to(XT).to(DT)
        dx3 = (_row(g, k, 2)[None, :] * do + tl.dot(tl.trans(w3), dz_x, input_precision=PREC)
               + tl.dot(mt, datt_x, input_precision=PREC))
        tl.store(dx4_ptr + offs, datt.to(XT), mask=mask)
        tl.store(dx3_ptr + offs, dx3.to(XT), mask=mask)
        if ATTENTION:
            gmask = (k < GATES)[:, None] & nmask[None, :]
            gz = gz_ptr + b * 2 * GATES * N + k[:, None] * N + n[None, :]
            tl.store(gz, g, mask=gmask)
            tl.store(gz + GATES * N, dz, mask=gmask)
        else:
            dx1 = _row(g, k, 0)[None, :] * do + tl.dot(tl.trans(w1), dz_x, input_precision=PREC)
            dx2 = _row(g, k, 1)[None, :] * do + tl.dot(tl.trans(w2), dz_x, input_precision=PREC)
            tl.store(dx1_ptr + offs, dx1.to(XT), mask=mask)
            tl.store(dx2_ptr + offs, dx2.to(XT), mask=mask)
        acc_m = tl.dot(datt_x, tl.trans(x3), acc_m, input_precision=PREC)
        acc_c += tl.sum(datt, axis=1)
        acc_w1 = tl.dot(dz_x, tl.trans(x1), acc_w1, input_precision=PREC)
        acc_w2 = tl.dot(dz_x, tl.trans(x2), acc_w2, input_precision=PREC)
        acc_w3 = tl.dot(dz_x, tl.trans(x3), acc_w3, input_precision=PREC)
        acc_w4 = tl.dot(dz_x, tl.trans(att_x), acc_w4, input_precision=PREC)
        acc_b += tl.sum(dz, axis=1)
    _store_mat(dm_part_ptr + part * C * C, acc_m, c, c, C, C, C)
    tl.store(dc_part_ptr + part * C + c, acc_c, mask=cmask)
    dwg = dwg_part_ptr + part * GATES * 4 * C
    _store_mat(dwg, acc_w1, k, c, GATES, C, 4 * C)
    _store_mat(dwg + C, acc_w2, k, c, GATES, C, 4 * C)
    _store_mat(dwg + 2 * C, acc_w3, k, c, GATES, C, 4 * C)
    _store_mat(dwg + 3 * C, acc_w4, k, c, GATES, C, 4 * C)
    tl.store(dbg_part_ptr + part * GATES + k, acc_b, mask=k < GATES)


@triton.jit
def _mix_grad_kernel(dm_part_ptr, dc_part_ptr, dwg_part_ptr, dbg_part_ptr, stats_ptr,
                     wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr, wo_ptr, bo_ptr,
                     dgram_ptr, dparams_ptr, C, R, D, S, n_pix, scale,
                     CP: tl.constexpr, RP: tl.constexpr, ATTENTION: tl.constexpr):
    """One program per image: sums the chunk partials and back-propagates dM, dc through M = Wo A Wv,
    c = Wo A bv + bo, the block softmax and the Gram-form logits. Writes this image's row of dparams (the
    weight grads flattened in PARAM_NAMES order) and of dgram [dG (C·C) | ds1 (C) | ds2 (C)]."""
    b = tl.program_id(0)
    c = tl.arange(0, CP)
    r = tl.arange(0, RP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    dM = tl.zeros([CP, CP], tl.float32)
    dc = tl.zeros([CP], tl.float32)
    dw1 = tl.zeros([GROWS, CP], tl.float32)
    dw2 = tl.zeros([GROWS, CP], tl.float32)
    dw3 = tl.zeros([GROWS, CP], tl.float32)
    dw4 = tl.zeros([GROWS, CP], tl.float32)
    dbg = tl.zeros([GROWS], tl.float32)
    for s in range(S):
        part = b * S + s
        dM += _mat(dm_part_ptr + part * C * C, c, c, C, C, C)
        dc += _vec(dc_part_ptr + part * C, c, C)
        dwg = dwg_part_ptr + part * GATES * 4 * C
        dw1 += _mat(dwg, k, c, GATES, C, 4 * C)
        dw2 += _mat(dwg + C, k, c, GATES, C, 4 * C)
        dw3 += _mat(dwg + 2 * C, k, c, GATES, C, 4 * C)
        dw4 += _mat(dwg + 3 * C, k, c, GATES, C, 4 * C)
        dbg += _vec(dbg_part_ptr + part * GATES, k, GATES)

    # offsets of wq, bq, wk, bk, wv, bv, wo, bo, wg, bg in a dparams row
    o_wk = R * C + R
    o_wv = 2 * o_wk
    o_wo = 3 * o_wk
    o_wg = o_wo + C * R + C
    out = dparams_ptr + b * (o_wg + 4 * GATES * C + GATES)

    stats = stats_ptr + b * (2 * C * C + 3 * C)
    wv = _mat(wv_ptr, r, c, R, C, C)
    bv = _vec(bv_ptr, r, R)
    wo = _mat(wo_ptr, c, r, C, R, R)
    same = _same_head(r, R, D)
    if ATTENTION:
        G = _mat(stats, c, c, C, C, C)
        s1 = _vec(stats + 2 * C * C, c, C)
        s2 = _vec(stats + 2 * C * C + C, c, C)
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
    tl.store(out + o_wo + C * R + c, dc, mask=cmask)
    _store_mat(out + o_wg, dw1, k, c, GATES, C, 4 * C)
    _store_mat(out + o_wg + C, dw2, k, c, GATES, C, 4 * C)
    _store_mat(out + o_wg + 2 * C, dw3, k, c, GATES, C, 4 * C)
    _store_mat(out + o_wg + 3 * C, dw4, k, c, GATES, C, 4 * C)
    tl.store(out + o_wg + 4 * GATES * C + k, dbg, mask=k < GATES)

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


@triton.jit
def _gram_grad_kernel(x1_ptr, x2_ptr, do_ptr, gz_ptr, dgram_ptr, wg_ptr, dx1_ptr, dx2_ptr,
                      C, N, chunk, sb, sc, sn,
                      CP: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr):
    """Attention mode: dx1 = g0 dout + Wg1ᵀ dz + dG x2 + ds1, dx2 = g1 dout + Wg2ᵀ dz + dGᵀ x1 + ds2."""
    b = tl.program_id(1)
    c = tl.arange(0, CP)
    k = tl.arange(0, GROWS)
    cmask = c < C
    XT: tl.constexpr = x1_ptr.dtype.element_ty
    dgram = dgram_ptr + b * (C * C + 2 * C)
    dG = _mat(dgram, c, c, C, C, C).to(XT).to(DT)
    dGt = tl.trans(dG)
    ds1 = _vec(dgram + C * C, c, C)
    ds2 = _vec(dgram + C * C + C, c, C)
    w1, w2, w3, w4 = _gate_weights(wg_ptr, k, c, C, XT, DT)
    w1t = tl.trans(w1)
    w2t = tl.trans(w2)
    start, end = _chunk(N, chunk)
    for p0 in range(start, end, BLOCK):
        n = p0 + tl.arange(0, BLOCK)
        nmask = n < end
        offs = b * sb + c[:, None] * sc + n[None, :] * sn
        mask = cmask[:, None] & nmask[None, :]
        x1 = tl.load(x1_ptr + offs, mask=mask, other=0.0).to(DT)
        x2 = tl.load(x2_ptr + offs, mask=mask, other=0.0).to(DT)
        do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gmask = (k < GATES)[:, None] & nmask[None, :]
        gz = gz_ptr + b * 2 * GATES * N + k[:, None] * N + n[None, :]
        g = tl.load(gz, mask=gmask, other=0.0)
        dz_x = tl.load(gz + GATES * N, mask=gmask, other=0.0).to(XT).to(DT)
        dx1 = (_row(g, k, 0)[None, :] * do + tl.dot(w1t, dz_x, input_precision=PREC)
               + tl.dot(dG, x2, input_precision=PREC) + ds1[:, None])
        dx2 = (_row(g, k, 1)[None, :] * do + tl.dot(w2t, dz_x, input_precision=PREC)
               + tl.dot(dGt, x1, input_precision=PREC) + ds2[:, None])
        tl.store(dx1_ptr + offs, dx1.to(XT), mask=mask)
        tl.store(dx2_ptr + offs, dx2.to(XT), mask=mask)
