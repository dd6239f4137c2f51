"""Fused training losses (docs/losses.md): reconstruction, BEBA and SAM (and the student's reconstruction
against the teacher) from one read of `pred` and `target`, their gradient w.r.t. `pred` from one more read;
the KD term (eq. 11) as its own small fused op. Registered as `torch.ops.csakd.*` custom ops with fake
implementations and autograd, so they run under `torch.compile`. `csakd.losses` is the oracle.

Numerics: values are accumulated in fp32 (fp64 for fp64 inputs) whatever the input dtype, and the loss terms
are returned in that accumulation dtype; the gradient has pred's dtype. Sums use atomics, so results are
reproducible to rounding, not bit for bit. Targets and teacher outputs are constants: `teacher_pred` and
`teacher_fused` are detached (as in the reference objective); a `target` that requires grad is refused.
Non-finite inputs: with `check_finite=True` a ValueError; otherwise NaN/Inf propagate as in the reference: the
same terms and the same gradient elements become NaN or Inf (a NaN in pred: rec, BEBA, SAM and the gradient of
its pixel's spectrum; in target: also its whole band through the BEBA energy). A zero-norm spectrum has
cos = 0 (SAM eps 1e-8 as in the reference); a band with zero energy divides by eps (BEBA eps).

The kernels run on CUDA tensors, or on CPU tensors in the Triton interpreter when TRITON_INTERPRET=1 was set
before Triton was first imported (the test suite does); importing this module sets nothing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

import torch
from triton import knobs

from csakd._validate import check_float_tensor, check_same_shape, check_triton_device
from csakd.losses import FORMS, RECONSTRUCTION, LossWeights

from . import losses_kernels as K

TERMS = ("rec", "beba", "sam", "teacher_rec", "total")
DEFAULT_WEIGHTS = {"rec": 1.0, "beba": LossWeights.beba, "sam": LossWeights.sam,
                   "teacher_rec": LossWeights.teacher_rec}
_INTERPRETED = knobs.runtime.interpret
_MAX_NUMEL = 2 ** 30  # the kernels index with int32; headroom for the padding of the last tiles


# ---------------------------------------------------------------- custom ops

def _options(sam_form, beba_form, rec, alpha, beta, eps, weights):
    return dict(sam_paper=sam_form == "paper", beba_paper=beba_form == "paper", l1=rec == "l1", alpha=alpha,
                beta=beta, eps=eps, weights=tuple(weights))


@torch.library.custom_op("csakd::fusion_losses", mutates_args=())
def _fusion_losses_op(pred: torch.Tensor, target: torch.Tensor, teacher_pred: Optional[torch.Tensor],
                      sam_form: str, beba_form: str, rec: str, alpha: float, beta: float, eps: float,
                      weights: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rec, beba, sam, teacher_rec, total, stats, pix); stats and pix are the backward's saved sums."""
    return K.fusion_forward(pred, target, teacher_pred,
                            **_options(sam_form, beba_form, rec, alpha, beta, eps, weights))


@_fusion_losses_op.register_fake
def _(pred, target, teacher_pred, sam_form, beba_form, rec, alpha, beta, eps, weights):
    acc = K._acc_dtype(pred, target, teacher_pred)
    B, C, H, W = pred.shape
    terms = [pred.new_empty((), dtype=acc) for _ in TERMS]
    return (*terms, pred.new_empty(2 * B * C + K.N_SCALARS * K.SLOTS, dtype=acc),
            pred.new_empty(2 * B * H * W, dtype=acc))


@torch.library.custom_op("csakd::fusion_losses_backward", mutates_args=())
def _fusion_losses_backward_op(g_rec: Optional[torch.Tensor], g_beba: Optional[torch.Tensor],
                               g_sam: Optional[torch.Tensor], g_teacher_rec: Optional[torch.Tensor],
                               g_total: Optional[torch.Tensor], pred: torch.Tensor, target: torch.Tensor,
                               teacher_pred: Optional[torch.Tensor], stats: torch.Tensor, pix: torch.Tensor,
                               sam_form: str, beba_form: str, rec: str, alpha: float, beta: float, eps: float,
                               weights: list[float]) -> torch.Tensor:
    return K.fusion_backward((g_rec, g_beba, g_sam, g_teacher_rec, g_total), pred, target, teacher_pred, stats,
                             pix, **_options(sam_form, beba_form, rec, alpha, beta, eps, weights))


@_fusion_losses_backward_op.register_fake
def _(g_rec, g_beba, g_sam, g_teacher_rec, g_total, pred, *rest):
    return torch.empty_like(pred)


def _fusion_setup_context(ctx, inputs, output):
    pred, target, teacher_pred, *options = inputs
    stats, pix = output[-2:]
    ctx.save_for_backward(pred, target, teacher_pred, stats, pix)
    ctx.options = options
    ctx.mark_non_differentiable(stats, pix)
    ctx.set_materialize_grads(False)  # unused terms cost nothing in the backward


def _fusion_backward(ctx, g_rec, g_beba, g_sam, g_teacher_rec, g_total, _g_stats, _g_pix):
    pred, target, teacher_pred, stats, pix = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = torch.ops.csakd.fusion_losses_backward(g_rec, g_beba, g_sam, g_teacher_rec, g_total, pred, target,
                                                      teacher_pred, stats, pix, *ctx.options)
    return (grad,) + (None,) * 9


_fusion_losses_op.register_autograd(_fusion_backward, setup_context=_fusion_setup_context)


@torch.library.custom_op("csakd::kd_loss", mutates_args=())
def _kd_loss_op(student_fused: torch.Tensor, teacher_fused: torch.Tensor) -> torch.Tensor:
    return K.kd_forward(student_fused, teacher_fused)


@_kd_loss_op.register_fake
def _(student_fused, teacher_fused):
    return student_fused.new_empty((), dtype=K._acc_dtype(student_fused, teacher_fused))


@torch.library.custom_op("csakd::kd_loss_backward", mutates_args=())
def _kd_loss_backward_op(grad: torch.Tensor, student_fused: torch.Tensor,
                         teacher_fused: torch.Tensor) -> torch.Tensor:
    return K.kd_backward(grad, student_fused, teacher_fused)


@_kd_loss_backward_op.register_fake
def _(grad, student_fused, teacher_fused):
    return torch.empty_like(student_fused)


def _kd_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _kd_backward(ctx, grad):
    student, teacher = ctx.saved_tensors
    return torch.ops.csakd.kd_loss_backward(grad, student, teacher), None


_kd_loss_op.register_autograd(_kd_backward, setup_context=_kd_setup_context)


# ---------------------------------------------------------------- public API

def _check_number(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and nonnegative:
        ok = value >= 0
    if not ok:
        kind = "a positive" if positive else "a non-negative" if nonnegative else "a"
        raise ValueError(f"{name}: expected {kind} finite number, got {value!r}")
    return float(value)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def _resolve_weights(weights) -> list[float]:
    """weights: None (LossWeights' defaults, rec 1), a LossWeights (its λ, rec 1) or a mapping overriding
    some of rec / beba / sam / teacher_rec."""
    if weights is None:
        weights = {}
    elif isinstance(weights, LossWeights):
        weights = {"beba": weights.beba, "sam": weights.sam, "teacher_rec": weights.teacher_rec}
    elif not isinstance(weights, Mapping):
        raise ValueError(f"weights: expected None, a LossWeights or a mapping of {tuple(DEFAULT_WEIGHTS)}, "
                         f"got {type(weights).__name__}")
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"weights: expected keys among {tuple(DEFAULT_WEIGHTS)}, got {sorted(unknown)}")
    merged = {**DEFAULT_WEIGHTS, **weights}
    return [_check_number(f"weights[{k!r}]", merged[k]) for k in DEFAULT_WEIGHTS]


def _check_device(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    check_triton_device(name, x, like, "pred", _INTERPRETED)
    if not 0 < x.numel() <= _MAX_NUMEL:
        raise ValueError(f"{name}: expected between 1 and {_MAX_NUMEL} elements, got {x.numel()}")


def fusion_losses(pred: torch.Tensor, target: torch.Tensor, *, sam_form: str = "paper",
                  beba_form: str = "reference", alpha: float = 0.5, beta: float = 1.0, eps: float = 0.1,
                  rec: str = "smooth_l1", teacher_pred: torch.Tensor | None = None, weights=None,
                  check_finite: bool = False) -> dict[str, torch.Tensor]:
    """The terms "rec", "beba", "sam" (and "teacher_rec" = rec(pred, teacher_pred) when teacher_pred is given)
    of docs/losses.md on (B, C, H, W) tensors, and "total" = Σ weight · term (weights: see `_resolve_weights`).

    Equal to csakd.losses' smooth_l1 / l1, beba_loss(form=beba_form, alpha, beta, eps) and
    sam_loss(form=sam_form); differentiable w.r.t. pred only.
    """
    check_float_tensor("pred", pred, ndim=4, finite=check_finite)
    check_float_tensor("target", target, ndim=4, finite=check_finite)
    check_same_shape("pred", pred, "target", target)
    _check_device("pred", pred, pred)
    _check_device("target", target, pred)
    if target.requires_grad and torch.is_grad_enabled():
        raise ValueError("target: expected a tensor that does not require grad (the fused losses differentiate "
                         "pred only; detach it), got requires_grad=True")
    if teacher_pred is not None:
        check_float_tensor("teacher_pred", teacher_pred, ndim=4, finite=check_finite)
        check_same_shape("pred", pred, "teacher_pred", teacher_pred)
        _check_device("teacher_pred", teacher_pred, pred)
        teacher_pred = teacher_pred.detach().contiguous()
    _check_choice("sam_form", sam_form, FORMS)
    _check_choice("beba_form", beba_form, FORMS)
    _check_choice("rec", rec, tuple(RECONSTRUCTION))
    alpha = _check_number("alpha", alpha)
    beta = _check_number("beta", beta, positive=True)
    eps = _check_number("eps", eps, nonnegative=True)
    outs = torch.ops.csakd.fusion_losses(pred.contiguous(), target.contiguous(), teacher_pred, sam_form,
                                         beba_form, rec, alpha, beta, eps, _resolve_weights(weights))
    terms = dict(zip(TERMS, outs))
    if teacher_pred is None:
        del terms["teacher_rec"]
    return terms


def kd_loss_fused(student_fused: torch.Tensor, teacher_fused: torch.Tensor, *,
                  check_finite: bool = False) -> torch.Tensor:
    """Eq. (11), equal to csakd.losses.kd_loss: mean BCE with logits of the student's fused features against
    sigmoid(teacher's), differentiable w.r.t. the student only."""
    check_float_tensor("student_fused", student_fused, finite=check_finite)
    check_float_tensor("teacher_fused", teacher_fused, finite=check_finite)
    check_same_shape("student_fused", student_fused, "teacher_fused", teacher_fused)
    _check_device("student_fused", student_fused, student_fused)
    _check_device("teacher_fused", teacher_fused, student_fused)
    return torch.ops.csakd.kd_loss(student_fused.contiguous(), teacher_fused.detach().contiguous())


def teacher_objective(pred: torch.Tensor, target: torch.Tensor,
                      weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """csakd.losses.teacher_objective on the fused kernels (same signature and terms)."""
    return fusion_losses(pred, target, sam_form=weights.sam_form, beba_form=weights.beba_form, rec=weights.rec,
                         weights=weights)


def student_objective(pred: torch.Tensor, target: torch.Tensor, teacher_pred: torch.Tensor,
                      student_fused: torch.Tensor, teacher_fused: torch.Tensor,
                      weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """csakd.losses.student_objective on the fused kernels (same signature and terms)."""
    terms = fusion_losses(pred, target, sam_form=weights.sam_form, beba_form=weights.beba_form, rec=weights.rec,
                          teacher_pred=teacher_pred, weights=weights)
    terms["kd"] = kd_loss_fused(student_fused, teacher_fused)
    terms["total"] = terms["total"] + weights.kd * terms["kd"]
    return terms
