"""Fused Triton losses (csakd.kernels.losses) against the reference losses of csakd.losses, the oracle.

Property tests draw shapes (B 1-3, C 1-200 with 172 and non-powers of two, H and W 1-24), both forms of SAM
and BEBA, smooth-L1 / L1, the teacher term, alpha/beta/eps, the loss weights and which outputs are
differentiated; they compare values and gradients w.r.t. pred with a float64 reference.

Tolerances. The fused kernels accumulate in fp32, so every value is compared with the float64 reference up to
1e-5 x its magnitude: the same quantity computed on absolute values (Σ|pointwise| / ..., |cos| <= 1), which
bounds fp32 rounding of sums over up to 3·200·576 terms (about log2(n) + a few ulp, 2e-6) with room for the
order of atomics. Gradients likewise, per element, against Σ over terms of |upstream| x |that term's
gradient|, SAM's split into its two parts |t·s1| + |p·s2| so that cancellation between them is allowed for.
bf16 / fp16 inputs are exact in fp32, so the fused values get the fp32 tolerance against the float64
reference on the same (upcast) inputs; the gradient is then rounded once to the input dtype: fp16 rounds to
nearest (2^-11 relative, 2^-25 absolute below 2^-14 where fp16 is subnormal); bf16 rounds to nearest on a GPU
(2^-8) but the Triton interpreter truncates fp32 -> bf16 (less than one bf16 ulp, 2^-7).
"""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from csakd import losses as ref
from csakd.kernels import losses as fused
from sm90_compile import register_usage

TERMS = ("rec", "beba", "sam", "teacher_rec", "total")
CUDA = torch.cuda.is_available()
ON_GPU = pytest.mark.gpu


# ---------------------------------------------------------------- oracle and magnitudes (float64)

def reference_terms(pred, target, teacher, sam_form, beba_form, rec, alpha, beta, eps, weights):
    rec_fn = ref.RECONSTRUCTION[rec]
    terms = {"rec": rec_fn(pred, target),
             "beba": ref.beba_loss(pred, target, beba_form, alpha=alpha, beta=beta, eps=eps),
             "sam": ref.sam_loss(pred, target, sam_form)}
    if teacher is not None:
        terms["teacher_rec"] = rec_fn(pred, teacher)
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def beba_pointwise(pred, target, beba_form, alpha, beta):
    d = pred - target
    dist = d.square() if beba_form == "paper" else d.abs()
    sq = dist if beba_form == "paper" else dist.square()
    return alpha * sq / beta + torch.relu(dist - beta) - alpha * beta


def energy(target, eps):
    return target.square().mean(dim=(2, 3)) + eps


def spectra(x, sam_form):
    c = x.shape[1]
    return x.movedim(1, -1).reshape(-1, c) if sam_form == "paper" else x.reshape(-1, c)


def from_spectra(v, like, sam_form):
    b, c, h, w = like.shape
    return v.reshape(b, h, w, c).movedim(-1, 1) if sam_form == "paper" else v.reshape(b, c, h, w)


def value_magnitudes(pred, target, teacher, sam_form, beba_form, rec, alpha, beta, eps, weights):
    """Each term computed on absolute values: the scale its fp32 rounding error is relative to."""
    rec_fn = ref.RECONSTRUCTION[rec]
    pw = beba_pointwise(pred, target, beba_form, alpha, beta).abs()
    mags = {"rec": rec_fn(pred, target), "sam": torch.ones((), dtype=pred.dtype, device=pred.device),
            "beba": (pw.mean(dim=(2, 3)) / energy(target, eps)).mean()}
    if teacher is not None:
        mags["teacher_rec"] = rec_fn(pred, teacher)
    mags["total"] = sum(abs(weights[k]) * v for k, v in mags.items())
    return mags


def grad_magnitude(pred, target, teacher, sam_form, beba_form, alpha, beta, eps, scales):
    """Per element Σ_terms |dL/d term| x |d term / d pred|, SAM as |t| s1 + |p| s2 (s1 = 1/den,
    s2 = cos |b| / (den |a|)); `scales` maps each term to a bound on |dL/d term|."""
    n = pred.numel()
    mag = (scales["rec"] + scales.get("teacher_rec", 0.0)) / n * torch.ones_like(pred)
    d = pred - target
    if beba_form == "paper":
        g = 2 * d.abs() * (alpha / beta + (d.square() > beta).to(d.dtype))
    else:
        g = 2 * alpha * d.abs() / beta + (d.abs() > beta).to(d.dtype)
    b, c = pred.shape[:2]
    mag += scales["beba"] * g / (b * c * pred.shape[2] * pred.shape[3] * energy(target, eps)[:, :, None, None])
    a, y = spectra(pred, sam_form), spectra(target, sam_form)
    na, nb = a.norm(dim=-1, keepdim=True), y.norm(dim=-1, keepdim=True)
    den = na * nb + ref.SAM_EPS
    cos = (a * y).sum(-1, keepdim=True) / den
    s2 = torch.where(na > 0, cos.abs() * nb / (den * na.clamp_min(1e-300)), torch.zeros_like(na))
    sam = (y.abs() / den + a.abs() * s2) / a.shape[0]
    return mag + scales["sam"] * from_spectra(sam, pred, sam_form)


def upstream_scales(coefs, weights):
    """Bound on |dL/d term| for L = Σ coefs[k] * out[k] (total = Σ weights[k] * term)."""
    total = abs(coefs.get("total", 0.0))
    return {k: abs(coefs.get(k, 0.0)) + abs(weights[k]) * total for k in weights}


# ---------------------------------------------------------------- inputs

def make_inputs(seed, shape, dtype, device, *, scale, teacher, zero_pixel, zero_band, sam_form):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64) * 1.5 - 0.25
    pred = target + scale * torch.randn(shape, generator=g, dtype=torch.float64)
    tp = target + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64) if teacher else None
    if zero_pixel:  # a zero spectrum in pred, and another in both pred and target (cos = 0 by the eps)
        c = shape[1]
        first, last = (pred[0, :, 0, 0], target[-1, :, -1, -1]) if sam_form == "paper" else \
            (pred.view(-1)[:c], target.view(-1)[-c:])
        first.zero_()
        last.zero_()
        (pred[-1, :, -1, -1] if sam_form == "paper" else pred.view(-1)[-c:]).zero_()
    if zero_band:  # a band with zero energy (divides by eps)
        target[0, 0] = 0
    cast = [x.to(device=device, dtype=dtype) if x is not None else None for x in (pred, target, tp)]
    return cast


def check_against_reference(pred, target, teacher, *, sam_form, beba_form, rec, alpha, beta, eps, weights, coefs,
                            grad_rtol=0.0, grad_atol=0.0):
    """Runs the fused losses on (pred, target, teacher) and compares values and d(Σ coefs·out)/d pred with the
    float64 reference on the same values."""
    p = pred.detach().clone().requires_grad_(True)
    out = fused.fusion_losses(p, target, sam_form=sam_form, beba_form=beba_form, rec=rec, alpha=alpha, beta=beta,
                              eps=eps, teacher_pred=teacher, weights=weights)
    expected_keys = set(TERMS) - (set() if teacher is not None else {"teacher_rec"})
    assert set(out) == expected_keys
    full_weights = {**fused.DEFAULT_WEIGHTS, **weights}
    used_weights = {k: full_weights[k] for k in expected_keys - {"total"}}
    p64 = pred.detach().double().requires_grad_(True)
    t64 = target.double()
    tp64 = teacher.double() if teacher is not None else None
    args = (sam_form, beba_form, rec, alpha, beta, eps, used_weights)
    expected = reference_terms(p64, t64, tp64, *args)
    mags = value_magnitudes(p64.detach(), t64, tp64, *args)
    for k in expected_keys:
        assert out[k].dtype == (torch.float64 if pred.dtype == torch.float64 else torch.float32)
        err = abs(out[k].item() - expected[k].item())
        assert err <= 1e-5 * mags[k].item() + 1e-12, (k, out[k].item(), expected[k].item(), mags[k].item())
    coefs = {k: c for k, c in coefs.items() if k in expected_keys}
    if not coefs:
        return
    sum(c * out[k] for k, c in coefs.items()).backward()
    sum(c * expected[k] for k, c in coefs.items()).backward()
    assert p.grad.dtype == pred.dtype and p.grad.shape == pred.shape
    mag = grad_magnitude(p64.detach(), t64, tp64, sam_form, beba_form, alpha, beta, eps,
                         upstream_scales(coefs, used_weights))
    got, want = p.grad.double(), p64.grad
    bound = 1e-5 * mag + grad_rtol * want.abs() + grad_atol
    bad = (got - want).abs() > bound
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} gradients off; worst "
                           f"{((got - want).abs() / bound.clamp_min(1e-300)).max().item():.3g} x tolerance")


channels = st.one_of(st.integers(1, 200), st.sampled_from([1, 2, 3, 7, 31, 86, 172, 199, 200]))
forms = st.sampled_from(ref.FORMS)
coef_sets = st.dictionaries(st.sampled_from(TERMS), st.sampled_from([1.0, -0.5, 2.0]), max_size=5)
weight_sets = st.dictionaries(st.sampled_from(tuple(fused.DEFAULT_WEIGHTS)), st.sampled_from([0.0, 0.1, 0.7, 1.0]),
                              max_size=4)


@given(b=st.integers(1, 3), c=channels, h=st.integers(1, 24), w=st.integers(1, 24), sam_form=forms,
       beba_form=forms, rec=st.sampled_from(tuple(ref.RECONSTRUCTION)), teacher=st.booleans(),
       scale=st.sampled_from([0.05, 0.4, 2.0]), zero_pixel=st.booleans(), zero_band=st.booleans(),
       abe=st.sampled_from([(0.5, 1.0, 0.1), (0.3, 0.25, 1e-3), (1.0, 2.0, 0.5)]), weights=weight_sets,
       coefs=coef_sets.filter(bool), seed=st.integers(0, 2 ** 16))
def test_fp32_matches_reference(b, c, h, w, sam_form, beba_form, rec, teacher, scale, zero_pixel, zero_band, abe,
                                weights, coefs, seed):
    pred, target, tp = make_inputs(seed, (b, c, h, w), torch.float32, "cpu", scale=scale, teacher=teacher,
                                   zero_pixel=zero_pixel, zero_band=zero_band, sam_form=sam_form)
    alpha, beta, eps = abe
    check_against_reference(pred, target, tp, sam_form=sam_form, beba_form=beba_form, rec=rec, alpha=alpha,
                            beta=beta, eps=eps, weights=weights, coefs=coefs)


def half_tolerances(dtype, device):
    """(rtol, atol) of one rounding of the fp32 gradient to dtype (see the module docstring)."""
    if dtype == torch.float16:
        return 2.0 ** -11, 2.0 ** -25
    return (2.0 ** -8 if device == "cuda" else 2.0 ** -7), 0.0


@settings(max_examples=12)
@given(dtype=st.sampled_from([torch.bfloat16, torch.float16]), b=st.integers(1, 3), c=channels,
       h=st.integers(1, 24), w=st.integers(1, 24), sam_form=forms, beba_form=forms,
       rec=st.sampled_from(tuple(ref.RECONSTRUCTION)), teacher=st.booleans(), zero_band=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_half_inputs_match_reference(dtype, b, c, h, w, sam_form, beba_form, rec, teacher, zero_band, seed):
    # No zero spectra here: their gradient (~1e8 / pixels) overflows fp16, in the reference too.
    pred, target, tp = make_inputs(seed, (b, c, h, w), dtype, "cpu", scale=0.4, teacher=teacher, zero_pixel=False,
                                   zero_band=zero_band, sam_form=sam_form)
    rtol, atol = half_tolerances(dtype, "cpu")
    check_against_reference(pred, target, tp, sam_form=sam_form, beba_form=beba_form, rec=rec, alpha=0.5,
                            beta=1.0, eps=0.1, weights={}, coefs={"total": 1.0}, grad_rtol=rtol, grad_atol=atol)


@pytest.mark.parametrize("sam_form", ref.FORMS)
@pytest.mark.parametrize("shape", [(2, 300, 2, 3), (1, 260, 1, 8), (1, 513, 4, 5)])
def test_spectra_longer_than_one_chunk(sam_form, shape):
    # Spectra of more than 256 values are summed over several chunks (and, with H·W < C, a reference-form row
    # meets many bands).
    pred, target, tp = make_inputs(12, shape, torch.float32, "cpu", scale=0.4, teacher=True, zero_pixel=True,
                                   zero_band=False, sam_form=sam_form)
    check_against_reference(pred, target, tp, sam_form=sam_form, beba_form="reference", rec="smooth_l1", alpha=0.5,
                            beta=1.0, eps=0.1, weights={}, coefs={"total": 1.0, "sam": 0.5})


def test_mixed_input_dtypes():
    pred, target, tp = make_inputs(13, (2, 9, 3, 5), torch.float32, "cpu", scale=0.4, teacher=True,
                                   zero_pixel=False, zero_band=False, sam_form="paper")
    check_against_reference(pred.bfloat16().float(), target, tp.half(), sam_form="paper", beba_form="reference",
                            rec="l1", alpha=0.5, beta=1.0, eps=0.1, weights={}, coefs={"total": 1.0})
    # the same values with pred stored in bf16: the gradient comes back in bf16
    check_against_reference(pred.bfloat16(), target, tp.half(), sam_form="paper", beba_form="reference", rec="l1",
                            alpha=0.5, beta=1.0, eps=0.1, weights={}, coefs={"total": 1.0},
                            grad_rtol=half_tolerances(torch.bfloat16, "cpu")[0])


def test_float64_inputs_accumulate_in_float64():
    pred, target, tp = make_inputs(0, (2, 5, 3, 4), torch.float64, "cpu", scale=0.4, teacher=True,
                                   zero_pixel=True, zero_band=True, sam_form="paper")
    p = pred.clone().requires_grad_(True)
    out = fused.fusion_losses(p, target, teacher_pred=tp)
    expected = reference_terms(pred, target, tp, "paper", "reference", "smooth_l1", 0.5, 1.0, 0.1,
                               {"rec": 1.0, "beba": 0.1, "sam": 0.1, "teacher_rec": 0.1})
    for k, v in expected.items():
        assert out[k].dtype == torch.float64
        # alpha, beta and the SAM eps reach the kernel as fp32 scalars: 0.1 and 1e-8 are rounded to fp32.
        assert out[k].item() == pytest.approx(v.item(), rel=1e-7, abs=1e-12)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=g).requires_grad_(True)
    target, tp = torch.rand(1, 3, 2, 2, dtype=torch.float64, generator=g), torch.randn(1, 3, 2, 2, generator=g)
    for sam_form in ref.FORMS:
        def fn(x, sam_form=sam_form):
            return torch.stack(list(fused.fusion_losses(x, target, sam_form=sam_form, beba_form="paper",
                                                        teacher_pred=tp.double()).values()))
        assert torch.autograd.gradcheck(fn, (pred,))


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(1)
    big = torch.randn(2, 10, 6, 5, generator=g)
    pred = big[:, ::2].detach().requires_grad_(True)  # strided along C
    target = torch.rand(2, 6, 5, 5, generator=g).permute(0, 3, 1, 2)  # channels-last-like (2, 5, 6, 5)
    assert not pred.is_contiguous() and not target.is_contiguous()
    pc = pred.detach().contiguous().requires_grad_(True)
    for sam_form in ref.FORMS:
        a = fused.fusion_losses(pred, target, sam_form=sam_form)
        b = fused.fusion_losses(pc, target.contiguous(), sam_form=sam_form)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
        ga, = torch.autograd.grad(a["total"], pred)
        gb, = torch.autograd.grad(b["total"], pc)
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-9)


def test_zero_inputs_are_finite():
    pred = torch.zeros(1, 4, 3, 3, requires_grad=True)
    out = fused.fusion_losses(pred, torch.zeros(1, 4, 3, 3))
    # cos = 0 everywhere (SAM 1); BEBA: pointwise -alpha*beta over energy eps -> -0.5 / 0.1 = -5
    assert out["sam"].item() == pytest.approx(1.0)
    assert out["beba"].item() == pytest.approx(-5.0)
    assert out["rec"].item() == 0.0
    out["total"].backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy inside the Triton interpreter
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["pred", "target"])
@pytest.mark.parametrize("sam_form", ref.FORMS)
def test_non_finite_values_propagate_like_the_reference(value, where, sam_form):
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 5, 3, 4, generator=g), torch.rand(2, 5, 3, 4, generator=g)
    (pred if where == "pred" else target)[1, 2, 1, 3] = value
    p, p_ref = pred.clone().requires_grad_(True), pred.double().requires_grad_(True)
    out = fused.fusion_losses(p, target, sam_form=sam_form)
    expected = reference_terms(p_ref, target.double(), None, sam_form, "reference", "smooth_l1", 0.5, 1.0, 0.1,
                               {"rec": 1.0, "beba": 0.1, "sam": 0.1})
    for k in expected:
        got, want = out[k].item(), expected[k].item()
        assert math.isfinite(got) == math.isfinite(want) and (math.isfinite(got) or got == want or
                                                              math.isnan(got) and math.isnan(want)), (k, got, want)
    out["total"].backward()
    expected["total"].backward()
    assert torch.equal(p.grad.isnan(), p_ref.grad.isnan())
    assert torch.equal(p.grad.isinf(), p_ref.grad.isinf())
    with pytest.raises(ValueError, match=where):
        fused.fusion_losses(pred, target, check_finite=True)


def test_check_finite_passes_finite_inputs_and_flags_teacher():
    pred, target = torch.rand(1, 3, 2, 2), torch.rand(1, 3, 2, 2)
    fused.fusion_losses(pred, target, check_finite=True)
    with pytest.raises(ValueError, match="teacher_pred"):
        fused.fusion_losses(pred, target, teacher_pred=torch.full((1, 3, 2, 2), float("inf")), check_finite=True)


BAD_CALLS = [
    (dict(pred=torch.rand(3, 2, 2)), "pred: expected a 4-D"),
    (dict(target=torch.rand(1, 3, 2, 3)), "target: expected the shape"),
    (dict(pred=torch.ones(1, 3, 2, 2, dtype=torch.int32)), "pred: expected a floating-point"),
    (dict(teacher_pred=torch.rand(1, 2, 2, 2)), "teacher_pred: expected the shape"),
    (dict(sam_form="both"), "sam_form: expected one of"),
    (dict(beba_form="x"), "beba_form: expected one of"),
    (dict(rec="l2"), "rec: expected one of"),
    (dict(alpha=float("nan")), "alpha: expected a finite"),
    (dict(beta=0.0), "beta: expected a positive"),
    (dict(eps=-1.0), "eps: expected a non-negative"),
    (dict(weights={"kd": 1.0}), "weights: expected keys"),
    (dict(weights={"sam": "a"}), r"weights\['sam'\]: expected a finite"),
    (dict(weights=[1.0]), "weights: expected None"),
    (dict(target=torch.rand(1, 3, 2, 2, requires_grad=True)), "target: expected a tensor that does not require"),
    (dict(pred=torch.rand(1, 0, 2, 2), target=torch.rand(1, 0, 2, 2)), "pred: expected between 1 and"),
]


@pytest.mark.parametrize("kwargs,match", BAD_CALLS)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(pred=torch.rand(1, 3, 2, 2), target=torch.rand(1, 3, 2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused.fusion_losses(args.pop("pred"), args.pop("target"), **args)


def test_weights_accept_loss_weights_and_partial_mappings():
    pred, target, tp = make_inputs(3, (1, 4, 3, 3), torch.float32, "cpu", scale=0.4, teacher=True,
                                   zero_pixel=False, zero_band=False, sam_form="paper")
    lw = ref.LossWeights(beba=0.2, sam=0.3, teacher_rec=0.4)
    a = fused.fusion_losses(pred, target, teacher_pred=tp, weights=lw)
    b = fused.fusion_losses(pred, target, teacher_pred=tp, weights={"beba": 0.2, "sam": 0.3, "teacher_rec": 0.4})
    want = a["rec"] + 0.2 * a["beba"] + 0.3 * a["sam"] + 0.4 * a["teacher_rec"]
    assert a["total"].item() == pytest.approx(want.item(), rel=1e-6)
    assert b["total"].item() == pytest.approx(want.item(), rel=1e-6)


# ---------------------------------------------------------------- KD

def check_kd(student, teacher, rtol=0.0, atol=0.0):
    s = student.detach().clone().requires_grad_(True)
    loss = fused.kd_loss_fused(s, teacher)
    s64 = student.detach().double().requires_grad_(True)
    expected = ref.kd_loss(s64, teacher.double())
    # magnitude: mean of |max(x,0)| + |x z| + log(1 + e^-|x|) bounds the fp32 rounding of the sum. The fp64
    # oracle rounds too, on terms of |x|'s size: PyTorch's formula (1 - z) x + max(-x, 0) + log(...) cancels them,
    # so at x = -35.4, z = 8e-23 it gives 0 where the loss is 4.248e-16 (the fused kernel's value; drawn example).
    x, z = s64.detach(), torch.sigmoid(teacher.double())
    mag = (x.clamp_min(0) + (x * z).abs() + torch.log1p(torch.exp(-x.abs()))).mean()
    oracle_rounding = 16 * 2.0 ** -53 * (x.abs() + 1).mean()
    assert abs(loss.item() - expected.item()) <= 1e-5 * mag.item() + oracle_rounding.item()
    loss.backward(torch.full_like(loss, 1.5))
    expected.backward(torch.full_like(expected, 1.5))
    # per element |sigmoid(x)| + |z| over n: both sigmoids carry fp32 rounding
    bound = 1e-5 * 1.5 * (torch.sigmoid(x) + z) / x.numel() + rtol * s64.grad.abs() + atol
    assert ((s.grad.double() - s64.grad).abs() <= bound).all()


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # exp(-x) of the interpreter's sigmoid: 1/(1+inf) = 0
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), scale=st.sampled_from([0.5, 4.0, 30.0]),
       seed=st.integers(0, 2 ** 16))
@example(shape=[1], scale=30.0, seed=1136)
def test_kd_matches_reference(shape, scale, seed):
    g = torch.Generator().manual_seed(seed)
    check_kd(scale * torch.randn(shape, generator=g), scale * torch.randn(shape, generator=g))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kd_half_inputs(dtype):
    g = torch.Generator().manual_seed(4)
    s, t = (3 * torch.randn(2, 86, 5, 7, generator=g)).to(dtype), (3 * torch.randn(2, 86, 5, 7, generator=g)).to(dtype)
    check_kd(s, t, *half_tolerances(dtype, "cpu"))


def test_kd_validates_and_detaches_teacher():
    with pytest.raises(ValueError, match="teacher_fused: expected the shape"):
        fused.kd_loss_fused(torch.rand(2, 3), torch.rand(3, 2))
    t = torch.randn(2, 3, requires_grad=True)
    s = torch.randn(2, 3, requires_grad=True)
    fused.kd_loss_fused(s, t).backward()
    assert t.grad is None and s.grad is not None


# ---------------------------------------------------------------- objectives, custom ops, compile

def test_objectives_match_reference():
    pred, target, tp = make_inputs(5, (2, 6, 4, 5), torch.float32, "cpu", scale=0.4, teacher=True,
                                   zero_pixel=False, zero_band=False, sam_form="paper")
    g = torch.Generator().manual_seed(6)
    fs, ft = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    w = ref.LossWeights(beba=0.2, sam=0.3, kd=0.4, teacher_rec=0.5, rec="l1", sam_form="reference",
                        beba_form="paper")
    got_t = fused.teacher_objective(pred, target, w)
    want_t = ref.teacher_objective(pred.double(), target.double(), w)
    got_s = fused.student_objective(pred, target, tp, fs, ft, w)
    want_s = ref.student_objective(pred.double(), target.double(), tp.double(), fs.double(), ft.double(), w)
    for got, want in ((got_t, want_t), (got_s, want_s)):
        assert set(got) == set(want)
        for k in want:
            assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("sam_form", ref.FORMS)
@pytest.mark.parametrize("teacher", [False, True])
def test_opcheck_fusion_losses(sam_form, teacher):
    g = torch.Generator().manual_seed(7)
    pred = torch.randn(2, 3, 2, 3, generator=g).requires_grad_(True)
    target = torch.rand(2, 3, 2, 3, generator=g)
    tp = torch.randn(2, 3, 2, 3, generator=g) if teacher else None
    args = (pred, target, tp, sam_form, "reference", "smooth_l1", 0.5, 1.0, 0.1, [1.0, 0.1, 0.1, 0.1])
    torch.library.opcheck(torch.ops.csakd.fusion_losses.default, args)


def test_opcheck_kd_loss():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 4, 3, generator=g).requires_grad_(True)
    torch.library.opcheck(torch.ops.csakd.kd_loss.default, (s, torch.randn(2, 4, 3, generator=g)))


def _objective(pred, target, tp, fs, ft):
    out = fused.fusion_losses(pred, target, teacher_pred=tp)
    return out["total"] + 0.1 * fused.kd_loss_fused(fs, ft), out["sam"]


def _compiled_matches_eager(device, dtype, backend, shape=(2, 5, 3, 4)):
    # Same kernels in both; only the order of the atomics may differ (a bf16 gradient may round one ulp apart).
    rtol = 1e-5 if dtype == torch.float32 else 2.0 ** -7
    g = torch.Generator().manual_seed(9)
    pred, target, tp = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(3))
    fs, ft = (torch.randn(shape[0], 3, *shape[2:], generator=g).to(device, dtype) for _ in range(2))
    pred.requires_grad_(True)
    fs.requires_grad_(True)
    torch._dynamo.reset()
    compiled = torch.compile(_objective, backend=backend, fullgraph=True)
    for fn in (_objective, compiled):
        total, sam = fn(pred, target, tp, fs, ft)
        grads = torch.autograd.grad(total + sam, (pred, fs))
        if fn is _objective:
            want = (total.detach(), sam.detach(), *grads)
        else:
            for a, b in zip((total.detach(), sam.detach(), *grads), want):
                torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6)


def test_traces_under_torch_compile_cpu():
    # aot_eager traces forward and backward through AOTAutograd with the fake kernels, fullgraph: no graph breaks.
    _compiled_matches_eager("cpu", torch.float32, "aot_eager")


def test_make_fx_trace_holds_the_two_ops():
    from torch.fx.experimental.proxy_tensor import make_fx

    def fwd_bwd(pred, target):
        return torch.autograd.grad(fused.fusion_losses(pred, target)["total"], pred)

    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    graph = make_fx(fwd_bwd, tracing_mode="fake")(pred, torch.rand(1, 3, 2, 2))
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert {"csakd.fusion_losses.default", "csakd.fusion_losses_backward.default"} <= targets


# The kernels with their GPU tiles, as training launches them (bf16, C = 172 at 128²).
_COMPILE_FOR_SM90 = r"""
from csakd.kernels import losses_kernels as K

types = dict(stats_ptr="*fp32", pix_ptr="*fp32", g_rec_ptr="*fp32", g_beba_ptr="*fp32", g_sam_ptr="*fp32",
             g_trec_ptr="*fp32", g_total_ptr="*fp32", rec_ptr="*fp32", beba_ptr="*fp32", sam_ptr="*fp32",
             trec_ptr="*fp32", total_ptr="*fp32", g_ptr="*fp32", out_ptr="*fp32", alpha="fp32", beta="fp32",
             sam_eps="fp32", eps="fp32", w_rec="fp32", w_beba="fp32", w_sam="fp32", w_teacher="fp32")
aligned = {"HW", "n_pix", "BC", "n"}  # multiples of 16 at the paper size; Triton specialises them so


def compile_loss(fn, consts, warps):
    sig = {a: "constexpr" if a in consts else types.get(a, "*bf16" if a.endswith("_ptr") else "i32")
           for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if sig[a] != "constexpr" and (sig[a].startswith("*") or a in aligned)}
    compile_sm90(fn, sig, consts, attrs, fn.__name__, num_warps=warps)


T = K.GPU_TILES
common = dict(HAS_TEACHER=True, L1=False, BEBA_PAPER=False, ACC=tl.float32)
for paper, fwd, bwd, kfwd, kbwd in ((True, T.fwd_paper, T.bwd_paper, K._forward_paper_kernel,
                                     K._backward_paper_kernel),
                                    (False, T.fwd_reference, T.bwd_reference, K._forward_reference_kernel,
                                     K._backward_reference_kernel)):
    names = ("BLOCK_C", "BLOCK_P") if paper else ("BLOCK_R", "BLOCK_K")
    r, c = K._blocks(172, 128 * 128, paper, fwd)
    extra = dict(STAGES=fwd.stages) if paper else {}
    compile_loss(kfwd, dict(common, SLOTS=K.SLOTS, **dict(zip(names, (r, c))), **extra), fwd.warps)
    r, c = K._blocks(172, 128 * 128, paper, bwd)
    compile_loss(kbwd, dict(common, G_MASK=31, **dict(zip(names, (r, c)))), bwd.warps)
compile_loss(K._finalize_kernel, dict(HAS_TEACHER=True, ACC=tl.float32, SLOTS=K.SLOTS, BLOCK=1024), 4)
compile_loss(K._kd_forward_kernel, dict(ACC=tl.float32, BLOCK=K.KD_BLOCK, TILES=K.KD_TILES, STAGES=K.KD_STAGES), 8)
compile_loss(K._kd_backward_kernel, dict(ACC=tl.float32, BLOCK=K.KD_BLOCK), 8)
"""


def test_kernels_compile_for_sm90_without_spills():
    # The interpreter accepts code the compiler may not: compile for an H100 and check that nothing spills.
    usage = register_usage(_COMPILE_FOR_SM90, timeout=600)
    assert len(usage) == 7, usage
    for label, regs, local in usage:
        assert local == 0, f"{label} spills: {regs} registers, {local} bytes of local memory"


# ---------------------------------------------------------------- GPU

@ON_GPU
@settings(max_examples=40)
@given(dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), b=st.integers(1, 4),
       c=st.sampled_from([1, 3, 31, 86, 172, 200, 257]), h=st.integers(1, 130), w=st.integers(1, 130),
       sam_form=forms, beba_form=forms, rec=st.sampled_from(tuple(ref.RECONSTRUCTION)), teacher=st.booleans(),
       coefs=coef_sets.filter(bool), seed=st.integers(0, 2 ** 16))
def test_gpu_matches_reference(dtype, b, c, h, w, sam_form, beba_form, rec, teacher, coefs, seed):
    pred, target, tp = make_inputs(seed, (b, c, h, w), dtype, "cuda", scale=0.4, teacher=teacher,
                                   zero_pixel=dtype == torch.float32, zero_band=True, sam_form=sam_form)
    rtol, atol = half_tolerances(dtype, "cuda") if dtype != torch.float32 else (0.0, 0.0)
    check_against_reference(pred, target, tp, sam_form=sam_form, beba_form=beba_form, rec=rec, alpha=0.5, beta=1.0,
                            eps=0.1, weights={}, coefs=coefs, grad_rtol=rtol, grad_atol=atol)


@ON_GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sam_form", ref.FORMS)
def test_gpu_training_crop(dtype, sam_form):
    pred, target, tp = make_inputs(10, (4, 172, 128, 128), dtype, "cuda", scale=0.1, teacher=True,
                                   zero_pixel=False, zero_band=False, sam_form=sam_form)
    rtol, atol = half_tolerances(dtype, "cuda") if dtype != torch.float32 else (0.0, 0.0)
    check_against_reference(pred, target, tp, sam_form=sam_form, beba_form="reference", rec="smooth_l1", alpha=0.5,
                            beta=1.0, eps=0.1, weights={}, coefs={"total": 1.0}, grad_rtol=rtol, grad_atol=atol)


@ON_GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_kd(dtype):
    g = torch.Generator().manual_seed(11)
    s, t = (2 * torch.randn(4, 86, 128, 128, generator=g)).to("cuda", dtype), \
        (2 * torch.randn(4, 86, 128, 128, generator=g)).to("cuda", dtype)
    check_kd(s, t, *(half_tolerances(dtype, "cuda") if dtype != torch.float32 else (0.0, 0.0)))


@ON_GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_inductor_compile(dtype):
    _compiled_matches_eager("cuda", dtype, "inductor", shape=(2, 172, 32, 32))
