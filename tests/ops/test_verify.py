"""The check that gates backend "auto": a wrong or a raising fast kernel is never chosen (with one warning that
names it), a correct one is, verdicts are cached on disk and can be reset, and an explicit backend still runs
what was asked."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import csakd  # noqa: E402
from csakd import ops  # noqa: E402
from csakd.models.blocks import clra_reference  # noqa: E402
from csakd.models.csa import csa_reference  # noqa: E402
from csakd.ops import backend, verify  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KW = dict(bands=10, msi_bands=3)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("CSAKD_CACHE_DIR", str(tmp_path / "cache"))
    backend.clear_cache()
    yield
    backend.clear_cache()


def _wrong_clra(x, params, groups):
    return clra_reference(x, params, groups) * 1.01  # 1 % off: far outside any rounding bound


def _raising_csa(*args, **kwargs):
    raise RuntimeError("illegal memory access in the CSA kernel")


def _inject(monkeypatch, op, impl, fields, explicit=None):
    """A fast implementation `impl` of `op`, considered by "auto" on this device."""
    monkeypatch.setitem(backend.FAST_IMPLS[op], impl, (lambda: fields, lambda *a: None))
    candidates = backend.auto_candidates(DEVICE.split(":")[0])
    monkeypatch.setattr(backend, "auto_candidates", lambda device_type: {**candidates, op: [impl]})


def _model(csa_backend):
    torch.manual_seed(0)
    model = csakd.create("student_tiny", backend=csa_backend, **KW).to(DEVICE)
    return model


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(1, 10, 4, 4, generator=g).to(DEVICE), torch.rand(1, 3, 16, 16, generator=g).to(DEVICE))


@pytest.mark.parametrize("op,fields,what", [("clrb", {"clra": _wrong_clra}, "relative error"),
                                            ("csa", {"csa": _raising_csa}, "illegal memory access")])
def test_auto_never_chooses_a_broken_kernel_and_says_which(monkeypatch, op, fields, what):
    _inject(monkeypatch, op, "broken", fields)
    ref = _model("reference")
    auto = _model("auto")
    lr, msi = _inputs()
    with pytest.warns(RuntimeWarning, match=rf"broken {op} op.*{what}"):
        out = auto(lr, msi)
    torch.testing.assert_close(out, ref(lr, msi), rtol=0, atol=0)  # the reference ran, bit for bit
    assert ops.resolve("auto", lr, auto.config).parts[op] == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: a second model, a second forward stay silent
        _model("auto")(lr, msi)
    stored = verify.read_verdicts()
    assert [v["ok"] for k, v in stored.items() if k.startswith(f"{op} | broken")] == [False]


def test_an_explicit_backend_runs_what_was_asked_without_the_check(monkeypatch):
    monkeypatch.setitem(backend.FAST_IMPLS["clrb"], "cuda", (lambda: {"clra": _wrong_clra}, lambda *a: None))
    monkeypatch.setitem(backend.EXPLICIT, "cuda", {"clrb": "cuda"})
    lr, msi = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _model("cuda")(lr, msi)
    assert not torch.allclose(out, _model("reference")(lr, msi))  # the broken kernel did run
    assert verify.read_verdicts() == {}  # and nothing was checked


def test_a_correct_kernel_passes_and_is_chosen(monkeypatch):
    calls = []

    def counting_clra(x, params, groups):
        calls.append(1)
        return clra_reference(x, params, groups)

    _inject(monkeypatch, "clrb", "good", {"clra": counting_clra})
    lr, msi = _inputs()
    model = _model("auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(lr, msi)
    assert ops.resolve("auto", lr, model.config).parts["clrb"] == "good"
    (verdict,) = verify.read_verdicts().values()
    assert verdict["ok"] and 0 <= verdict["worst"] <= 1


def test_verdicts_are_cached_on_disk_and_reset(monkeypatch):
    checks = []
    real = verify.run_check
    monkeypatch.setattr(verify, "run_check", lambda *a: checks.append(a[0]) or real(*a))
    _inject(monkeypatch, "clrb", "good", {"clra": clra_reference})
    lr, msi = _inputs()
    _model("auto")(lr, msi)
    backend.clear_cache()  # a new process: only the file remains
    _model("auto")(lr, msi)
    assert checks == ["clrb"]
    path = verify.reset()
    assert not path.exists()
    _model("auto")(lr, msi)
    assert checks == ["clrb", "clrb"]


def test_the_check_does_not_disturb_the_random_stream_or_the_callers_modes(monkeypatch):
    _inject(monkeypatch, "clrb", "good", {"clra": clra_reference})
    lr, msi = _inputs()
    model = _model("auto").eval()
    torch.manual_seed(5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(lr, msi)  # the check itself runs with grads, fp32 inputs and no inference tensors
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)
    assert all(v["ok"] for v in verify.read_verdicts().values())


@pytest.mark.parametrize("op", ["clrb", "csa", "losses"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_real_fast_kernels_pass_their_check(op, dtype):
    (impl, (loader, missing)), = backend.FAST_IMPLS[op].items()
    reason = missing(DEVICE, dtype)
    if reason is not None:
        pytest.skip(reason)
    widths = verify.Widths(nf=20, gc=10, groups=(1, 5), attn_dim=16, heads=4, bands=12)
    verdict = verify.run_check(op, loader, torch.device(DEVICE), dtype, widths)
    assert verdict["ok"], verdict["error"]


def test_reference_mode_grads_are_checked_for_being_none():
    """A fast CSA giving zero q/k gradients where the reference gives None fails: with weight decay AdamW would
    move those weights on one backend and not on the other."""
    def zero_qk_grads(x1, x2, x3, x4, params, mode, heads, attention=None):
        out = csa_reference(x1, x2, x3, x4, params, mode, heads)
        return out + 0 * (params["wq"].sum() + params["bq"].sum() + params["wk"].sum() + params["bk"].sum())

    widths = verify.Widths(nf=20, gc=10, groups=(1,), attn_dim=16, heads=4, csa="reference")
    verdict = verify.run_check("csa", lambda: {"csa": zero_qk_grads}, torch.device("cpu"), torch.float32, widths)
    assert not verdict["ok"] and "grad wq" in verdict["error"]


def test_csakd_info_prints_verdicts_and_verifies(tmp_path):
    env = {**os.environ, "CSAKD_CACHE_DIR": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "csakd", "info"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "none yet" in out.stdout
    out = subprocess.run(run + ["--verify", "--device", "cpu", "--preset", "student_tiny", "--bands", "8"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "pass  clrb/cuda" in out.stdout or "skip  clrb/cuda" in out.stdout
    stored = json.loads((tmp_path / "cache" / verify.CACHE_NAME).read_text())
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert all(key in out.stdout for key in stored)
    out = subprocess.run(run + ["--reset"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not (tmp_path / "cache" / verify.CACHE_NAME).exists()
