"""Every backend inside the flows users run, under `torch.autocast` (bf16): one co-training step of the trainer,
evaluation (the function behind `csakd eval`) and tiled fusion (behind `csakd fuse`).

Bound, as in the kernels' own bf16 tests: against the fp32 reference path, a backend's relative L2 error may be
at most twice the reference path's own error in the same bf16 flow, or 8 unit roundoffs of bf16 (2^-8), whichever
is larger. A backend that computed something else (a wrong kernel, a missed cast, a dropped term) is off by far
more; two correct evaluations in bf16 differ by rounding only.
"""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton backend runs in the interpreter on a CPU

import csakd  # noqa: E402
from csakd import ops  # noqa: E402
from csakd.inference.tiled import fuse_scene  # noqa: E402
from csakd.train import TrainConfig, Trainer  # noqa: E402
from csakd.train.data import generated_source, open_source  # noqa: E402
from csakd.train.evaluate import evaluate_dataset  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ops.available_backends(DEVICE)
BF16_U = 2.0 ** -8
BANDS, MSI = 16, 4


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


def _check(name, got, ref_bf16, ref_fp32):
    bound = max(2 * _rel(ref_bf16, ref_fp32), 8 * BF16_U)
    err = _rel(got, ref_fp32)
    assert err <= bound, f"{name}: relative L2 error {err:.3g} against fp32 > bound {bound:.3g}"


@pytest.fixture(scope="module")
def data():
    return open_source(generated_source(2, 0, 0, size=32, bands=BANDS, seed=0))[0]


def _step(data, backend, precision):
    """One co-training step of the trainer; the step's losses and each network's gradients."""
    config = TrainConfig(teacher="teacher_tiny", student="student_tiny", bands=BANDS, msi_bands=MSI, epochs=1,
                         batch_size=2, crop=16, lr_teacher=1e-3, lr_student=1e-3, progress=False, device=DEVICE,
                         backend=backend, precision=precision, snr_db=None)
    trainer = Trainer(config, data)
    grads = {}
    update = trainer._update

    def recording_update(name, total):
        update(name, total)
        grads[name] = [p.grad for p in trainer.models[name].parameters()]

    trainer._update = recording_update
    losses = trainer.train_step(next(iter(trainer.loader)))
    trainer.shutdown()
    return losses, grads


@pytest.mark.parametrize("backend", BACKENDS)
def test_co_training_step_under_bf16_autocast(data, backend):
    exact_losses, exact = _step(data, "reference", "fp32")
    ref_losses, ref = _step(data, "reference", "bf16")
    losses, got = _step(data, backend, "bf16")
    assert losses.keys() == exact_losses.keys() == {"teacher", "student"}
    for name in exact:
        _check(f"{name} loss", losses[name], ref_losses[name], exact_losses[name])
        assert [g is None for g in got[name]] == [g is None for g in exact[name]], name
        flat = [torch.cat([g.flatten().float() for g in grads if g is not None]) for grads in
                (got[name], ref[name], exact[name])]
        _check(f"{name} gradients", *flat)


def _models(csa="attention"):
    torch.manual_seed(0)
    model = csakd.create("student_tiny", bands=BANDS, msi_bands=MSI, csa=csa, backend="reference")
    if csa == "attention":  # sharper attention than the default init, so that it matters
        with torch.no_grad():
            model.csa.query_conv.weight.mul_(8)
            model.csa.key_conv.weight.mul_(8)
    return model.to(DEVICE)


def _with_backend(model, backend):
    clone = csakd.create("student_tiny", bands=BANDS, msi_bands=MSI, csa=model.config.csa, backend=backend)
    clone.load_state_dict(model.state_dict())
    return clone.to(DEVICE).eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_under_bf16_autocast(data, backend):
    model = _models()
    runs = {}
    for name, (impl, amp) in {"exact": ("reference", None), "ref": ("reference", torch.bfloat16),
                              "got": (backend, torch.bfloat16)}.items():
        runs[name] = evaluate_dataset(_with_backend(model, impl), data, DEVICE, amp=amp, keep_predictions=2)
    for index in range(2):
        _check(f"prediction {index}", *(runs[k]["predictions"][index] for k in ("got", "ref", "exact")))
    assert runs["got"]["mean"]["psnr"] == pytest.approx(runs["exact"]["mean"]["psnr"], abs=0.5)


def _scene(h=20, w=18, seed=1):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(BANDS, 4 * h, 4 * w, generator=g) * 0.2 + torch.linspace(0, 1, 4 * w)
    lr = torch.nn.functional.avg_pool2d(hr[None], 4)[0]
    msi = torch.stack([hr[k::MSI].mean(0) for k in range(MSI)])
    return lr.numpy(), msi.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiled_fusion_under_bf16_autocast(backend):
    model = _models()
    lr, msi = _scene()
    exact = fuse_scene(_with_backend(model, "reference"), lr, msi, tile=8, overlap=2, device=DEVICE)
    ref = fuse_scene(_with_backend(model, "reference"), lr, msi, tile=8, overlap=2, device=DEVICE,
                     amp=torch.bfloat16)
    got = fuse_scene(_with_backend(model, backend), lr, msi, tile=8, overlap=2, device=DEVICE, amp=torch.bfloat16)
    _check("tiled fusion", got, ref, exact)
    assert np.isfinite(got).all()
