"""The dispatch point: every available backend computes what the reference path computes, for whole models and
for a few co-training steps; unknown or unavailable backends fail with a clear message."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton backend runs in the interpreter on a CPU

import csakd  # noqa: E402
from csakd import ops  # noqa: E402
from csakd.losses import LossWeights  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = [b for b in ops.available_backends(DEVICE) if b != "reference"]
# Tiny nets at tiny sizes; the CSA width is the paper's head layout scaled down.
KW = dict(bands=10, msi_bands=3)


def _inputs(batch=1, lr=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 10, lr, lr, generator=g, dtype=dtype).to(DEVICE),
            torch.rand(batch, 3, 4 * lr, 4 * lr, generator=g, dtype=dtype).to(DEVICE),
            torch.rand(batch, 10, 4 * lr, 4 * lr, generator=g, dtype=dtype).to(DEVICE))


def _pair(preset, backend):
    torch.manual_seed(0)
    ref = csakd.create(preset, backend="reference", **KW).to(DEVICE)
    fast = csakd.create(preset, backend=backend, **KW).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_some_fast_backend_is_exercised_here():
    # The C++ CPU op is always built by `pip install -e .`; without it this file would test nothing fast.
    assert FAST, f"no fast backend available on {DEVICE}: {ops.available_backends(DEVICE)}"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("preset", ["student_tiny", "teacher_tiny"])
def test_forward_and_backward_match_reference(preset, backend):
    ref, fast = _pair(preset, backend)
    lr, msi, _ = _inputs()
    y_ref, f_ref = ref(lr, msi, return_features=True)
    y_fast, f_fast = fast(lr, msi, return_features=True)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_fast, f_ref, rtol=1e-4, atol=1e-5)
    (y_ref.square().mean() + f_ref.mean()).backward()
    (y_fast.square().mean() + f_fast.mean()).backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        g_ref = p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_ref)
        g_fast = p_fast.grad if p_fast.grad is not None else torch.zeros_like(p_fast)
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-3, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _co_train(backend, steps=3):
    torch.manual_seed(0)
    teacher = csakd.create("teacher_tiny", backend=backend, **KW).to(DEVICE)
    student = csakd.create("student_tiny", backend=backend, **KW).to(DEVICE)
    # SGD keeps the weights a linear record of the gradients; Adam's first steps move every weight by about
    # lr * sign(grad), which turns a rounding-level gradient difference near zero into a full step.
    opt_t = torch.optim.SGD(teacher.parameters(), lr=1e-2, momentum=0.9)
    opt_s = torch.optim.SGD(student.parameters(), lr=1e-2, momentum=0.9)
    weights = LossWeights()
    history = []
    for step in range(steps):
        lr, msi, hr = _inputs(seed=step)
        impl = ops.resolve(backend, lr)
        yt, ft = teacher(lr, msi, return_features=True)
        lt = impl.teacher_objective(yt, hr, weights)
        opt_t.zero_grad()
        lt["total"].backward()
        opt_t.step()
        ys, fs = student(lr, msi, return_features=True)
        ls = impl.student_objective(ys, hr, yt.detach(), fs, ft.detach(), weights)
        opt_s.zero_grad()
        ls["total"].backward()
        opt_s.step()
        history.append({k: v.item() for k, v in ls.items()} | {"teacher_total": lt["total"].item()})
    return history, teacher, student


@pytest.mark.parametrize("backend", FAST)
def test_co_training_steps_match_reference(backend):
    hist_ref, t_ref, s_ref = _co_train("reference")
    hist_fast, t_fast, s_fast = _co_train(backend)
    for h_ref, h_fast in zip(hist_ref, hist_fast):
        assert h_fast.keys() == h_ref.keys()
        for key in h_ref:
            assert h_fast[key] == pytest.approx(h_ref[key], rel=1e-4, abs=1e-6), key
    for net_ref, net_fast in ((t_ref, t_fast), (s_ref, s_fast)):
        for (name, p_ref), p_fast in zip(net_ref.named_parameters(), net_fast.parameters()):
            torch.testing.assert_close(p_fast, p_ref, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_unknown_backend_is_refused_everywhere():
    with pytest.raises(ValueError, match="backend: expected one of"):
        csakd.create("student_tiny", backend="fastest", **KW)(*_inputs()[:2])
    with pytest.raises(ValueError, match="backend: expected one of"):
        csakd.set_backend("gpu")


def test_unavailable_backend_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(ops.backend, "triton_missing", lambda *a: "Triton is not installed (pip install triton)")
    ops.backend.clear_cache()
    try:
        with pytest.raises(ValueError, match="'triton' is not available: Triton is not installed"):
            csakd.create("student_tiny", backend="triton", **KW).to(DEVICE)(*_inputs()[:2])
    finally:
        ops.backend.clear_cache()


def test_process_default_and_environment(monkeypatch):
    monkeypatch.setenv("CSAKD_BACKEND", "reference")
    assert csakd.get_backend() == "reference"
    monkeypatch.setenv("CSAKD_BACKEND", "quick")
    with pytest.raises(ValueError, match="CSAKD_BACKEND: expected one of"):
        csakd.get_backend()
    csakd.set_backend("reference")
    try:
        assert csakd.get_backend() == "reference"
        assert ops.resolve(None, torch.zeros(1)).name == "reference"
    finally:
        ops.backend._process_default = None


def test_auto_resolves_to_an_available_backend_and_logs_why(caplog):
    ops.backend.clear_cache()
    with caplog.at_level("INFO", logger="csakd.ops"):
        chosen = ops.resolve("auto", torch.zeros(1, device=DEVICE))
    assert chosen.name in ops.available_backends(DEVICE)
    assert any("backend 'auto'" in r.message for r in caplog.records)
    if DEVICE == "cuda":
        assert chosen.name != "reference"
