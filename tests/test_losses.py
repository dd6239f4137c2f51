"""Reference losses (SPEC §3) against hand-computed small cases and gradcheck."""
import math

import pytest
import torch

from csakd.losses import (LossWeights, beba_loss, kd_loss, l1, sam_loss, smooth_l1, student_objective,
                          teacher_objective)


def test_smooth_l1_is_huber_with_beta_one():
    pred = torch.tensor([0.0, 0.5, 3.0]).reshape(1, 3, 1, 1)
    target = torch.zeros(1, 3, 1, 1)
    # 0, 0.5 * 0.25, 3 - 0.5
    assert smooth_l1(pred, target).item() == pytest.approx((0 + 0.125 + 2.5) / 3)
    assert l1(pred, target).item() == pytest.approx(3.5 / 3)


def test_sam_paper_form_by_hand():
    # Two pixels with 2 bands: identical direction (cos 1) and orthogonal (cos 0).
    pred = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])       # (1, 2, 1, 2): pixel0 = (1,0), pixel1 = (1,0)
    target = torch.tensor([[[[2.0, 0.0]], [[0.0, 3.0]]]])     # pixel0 = (2,0), pixel1 = (0,3)
    cos0 = 2.0 / (1.0 * 2.0 + 1e-8)
    assert sam_loss(pred, target, "paper").item() == pytest.approx(1 - (cos0 + 0.0) / 2, abs=1e-7)


def test_sam_reference_form_takes_runs_of_memory():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    a, b = pred.flatten().reshape(-1, 3), target.flatten().reshape(-1, 3)
    expected = 1 - torch.stack([torch.dot(x, y) / (x.norm() * y.norm() + 1e-8) for x, y in zip(a, b)]).mean()
    assert sam_loss(pred, target, "reference").item() == pytest.approx(expected.item(), abs=1e-6)
    assert sam_loss(pred, target, "paper").item() != pytest.approx(expected.item(), abs=1e-4)


def test_sam_zero_pixel_stays_finite():
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.rand(1, 3, 2, 2)
    assert sam_loss(pred, target).item() == pytest.approx(1.0)


def test_beba_by_hand_both_forms():
    # One image, one band, two pixels: y = (1, 3), pred = (1.5, 1).  d = (0.5, 2).
    y = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    p = torch.tensor([1.5, 1.0]).reshape(1, 1, 1, 2)
    energy = (1 + 9) / 2 + 0.1
    d = [0.5, 2.0]
    ref = sum(0.5 * x * x + max(x - 1, 0) - 0.5 for x in d) / 2 / energy
    paper = sum(0.5 * x * x + max(x * x - 1, 0) - 0.5 for x in d) / 2 / energy
    assert beba_loss(p, y, "reference").item() == pytest.approx(ref)
    assert beba_loss(p, y, "paper").item() == pytest.approx(paper)


def test_beba_averages_over_images_and_bands():
    torch.manual_seed(0)
    p, y = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    per = torch.stack([beba_loss(p[b:b + 1, c:c + 1], y[b:b + 1, c:c + 1]) for b in range(2) for c in range(3)])
    assert beba_loss(p, y).item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_kd_loss_is_bce_against_teacher_sigmoid():
    s, t = torch.tensor([0.3, -1.0]), torch.tensor([2.0, 0.0])
    pt = torch.sigmoid(t)
    ps = torch.sigmoid(s)
    expected = -(pt * ps.log() + (1 - pt) * (1 - ps).log()).mean()
    assert kd_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_objectives_combine_terms_with_weights():
    torch.manual_seed(0)
    y, yt, ys = torch.rand(1, 4, 3, 3), torch.rand(1, 4, 3, 3), torch.rand(1, 4, 3, 3, requires_grad=True)
    fs, ft = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    w = LossWeights(beba=0.2, sam=0.3, kd=0.4, teacher_rec=0.5, rec="l1")
    t = teacher_objective(yt, y, w)
    assert t["total"].item() == pytest.approx((l1(yt, y) + 0.2 * beba_loss(yt, y) + 0.3 * sam_loss(yt, y)).item())
    s = student_objective(ys, y, yt, fs, ft, w)
    expected = (l1(ys, y) + 0.2 * beba_loss(ys, y) + 0.3 * sam_loss(ys, y) + 0.4 * kd_loss(fs, ft)
                + 0.5 * l1(ys, yt))
    assert s["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(s) == {"rec", "beba", "sam", "kd", "teacher_rec", "total"}


def test_bad_loss_arguments():
    a = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="target: expected the shape"):
        sam_loss(a, torch.rand(1, 2, 3, 4))
    with pytest.raises(ValueError, match="form"):
        beba_loss(a, a, form="papers")
    with pytest.raises(ValueError, match="rec"):
        LossWeights(rec="l2")
    with pytest.raises(ValueError, match="pred: expected a 4-D"):
        sam_loss(a[0], a[0])


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_loss_gradcheck_float64(form):
    torch.manual_seed(0)
    p = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 2, 3, dtype=torch.float64) * 2  # some |d| > beta, away from the kinks
    assert torch.autograd.gradcheck(lambda p: sam_loss(p, y, form), (p,))
    assert torch.autograd.gradcheck(lambda p: beba_loss(p, y, form), (p,))
    assert torch.autograd.gradcheck(lambda p: smooth_l1(p, y), (p,))
    s = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, y[0, :, 0, :2].T), (s,))
    assert math.isfinite(beba_loss(p, torch.zeros_like(y), form).item())
