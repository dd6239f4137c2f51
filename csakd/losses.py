"""Training losses of CSAKD (docs/losses.md), in plain PyTorch: the reference the fused Triton losses are tested
against. All means run over the batch as well."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._validate import check_float_tensor, check_same_shape

SAM_EPS = 1e-8
FORMS = ("paper", "reference")


def _check_pair(pred, target):
    check_float_tensor("pred", pred, ndim=4, finite=False)
    check_float_tensor("target", target, ndim=4, finite=False)
    check_same_shape("pred", pred, "target", target)


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")


def smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The released scripts' "L1": Huber with beta = 1."""
    return F.smooth_l1_loss(pred, target, beta=1.0)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(pred, target)


RECONSTRUCTION = {"smooth_l1": smooth_l1, "l1": l1}


def sam_loss(pred: torch.Tensor, target: torch.Tensor, form: str = "paper") -> torch.Tensor:
    """1 - mean cosine between spectra, cos = dot / (|a| |b| + 1e-8) (eq. 13).

    form "paper": spectra are the C values of each pixel. form "reference": the released scripts reshape
    NCHW to (-1, C) without a permute, so their "spectra" are runs of C consecutive values in memory.
    """
    _check_pair(pred, target)
    _check_form(form)
    c = pred.shape[1]
    if form == "paper":
        a, b = pred.movedim(1, -1).reshape(-1, c), target.movedim(1, -1).reshape(-1, c)
    else:
        a, b = pred.reshape(-1, c), target.reshape(-1, c)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + SAM_EPS)
    return 1 - cos.mean()


def beba_loss(pred: torch.Tensor, target: torch.Tensor, form: str = "reference", alpha: float = 0.5,
              beta: float = 1.0, eps: float = 0.1) -> torch.Tensor:
    """Band-energy-balanced loss (eq. 12): per image b and band c,
    L_bc = mean_hw(alpha*D/beta + relu(D - beta) - alpha*beta) / mean_hw(y^2 + eps).

    form "paper": D = (pred - y)^2. form "reference" (the released scripts): with d = |pred - y|,
    alpha*d^2/beta + relu(d - beta) - alpha*beta.
    """
    _check_pair(pred, target)
    _check_form(form)
    diff = pred - target
    if form == "paper":
        dist = diff.square()
        pointwise = alpha * dist / beta + F.relu(dist - beta) - alpha * beta
    else:
        dist = diff.abs()
        pointwise = alpha * dist.square() / beta + F.relu(dist - beta) - alpha * beta
    energy = (target.square() + eps).mean(dim=(2, 3))
    return (pointwise.mean(dim=(2, 3)) / energy).mean()


def kd_loss(student_fused: torch.Tensor, teacher_fused: torch.Tensor) -> torch.Tensor:
    """Eq. (11): BCE with logits of the student's fused features against the teacher's sigmoid."""
    check_float_tensor("student_fused", student_fused, finite=False)
    check_float_tensor("teacher_fused", teacher_fused, finite=False)
    check_same_shape("student_fused", student_fused, "teacher_fused", teacher_fused)
    return F.binary_cross_entropy_with_logits(student_fused, torch.sigmoid(teacher_fused.detach()))


@dataclass(frozen=True)
class LossWeights:
    """λ of the objectives (docs/losses.md); forms and reconstruction kind of the terms."""

    beba: float = 0.1
    sam: float = 0.1
    kd: float = 0.1
    teacher_rec: float = 0.1
    rec: str = "smooth_l1"
    sam_form: str = "paper"
    beba_form: str = "reference"

    def __post_init__(self):
        if self.rec not in RECONSTRUCTION:
            raise ValueError(f"rec: expected one of {sorted(RECONSTRUCTION)}, got {self.rec!r}")
        _check_form(self.sam_form)
        _check_form(self.beba_form)


def teacher_objective(pred: torch.Tensor, target: torch.Tensor,
                      weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """rec(Yt, Y) + λ_beba BEBA(Yt, Y) + λ_sam SAM(Yt, Y); returns the total and each term."""
    terms = {
        "rec": RECONSTRUCTION[weights.rec](pred, target),
        "beba": beba_loss(pred, target, weights.beba_form),
        "sam": sam_loss(pred, target, weights.sam_form),
    }
    terms["total"] = terms["rec"] + weights.beba * terms["beba"] + weights.sam * terms["sam"]
    return terms


def student_objective(pred: torch.Tensor, target: torch.Tensor, teacher_pred: torch.Tensor,
                      student_fused: torch.Tensor, teacher_fused: torch.Tensor,
                      weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Teacher objective's terms on the student plus λ_kd KD + λ_t rec(Ys, Yt) (teacher outputs detached)."""
    terms = teacher_objective(pred, target, weights)
    terms["kd"] = kd_loss(student_fused, teacher_fused)
    terms["teacher_rec"] = RECONSTRUCTION[weights.rec](pred, teacher_pred.detach())
    terms["total"] = terms["total"] + weights.kd * terms["kd"] + weights.teacher_rec * terms["teacher_rec"]
    return terms
