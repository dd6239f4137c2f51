"""The prepared inference path (`DTSNet(dtype=)`, `model.prepare`): it matches the fp32 reference path, in fp32
tightly and in bf16/fp16 within tolerances derived from the unit roundoff; prepared weights follow every weight
change; training mode and gradient-enabled forwards never use it.

Tolerances for bf16/fp16. The prepared path rounds the inputs and weights once to the compute dtype and every
operation's output once (convolutions accumulate in fp32, the CSA attention and its fold are computed in fp32).
With unit roundoff u (bf16 2^-9, fp16 2^-12) the roundings of the ~10-30 layers add up like a random walk,
damped by the 0.2 residual scales: measured relative L2 errors are 2.5-3.5 u for every preset, mode and size
tried here (bf16 ~6e-3, fp16 ~8e-4; the fp16/bf16 ratio is the ratio of the u's, i.e. the error is rounding, not
a different computation). The tests bound the relative L2 error by 8 u and the largest error, relative to the
largest output magnitude, by 16 u.
"""
import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton backend runs in the interpreter on a CPU

import csakd  # noqa: E402
from csakd import ops  # noqa: E402
from csakd.inference import cpu  # noqa: E402
from csakd.inference.precision import inference_dtype  # noqa: E402
from csakd.inference.tiled import fuse_scene  # noqa: E402
from csakd.models import CSAFusion, count_macs, create, csa_reference  # noqa: E402
from csakd.ops.csa_algebra import AttentionStats, attention_from_stats, csa_folded, fold_csa_params  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MKLDNN = torch.backends.mkldnn.is_available()
FAST = [b for b in ops.available_backends(DEVICE) if b != "reference"]
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -12}
BANDS, MSI = 8, 3
# nf, gc not multiples of 16 (padding is then real) and a grouped h branch, as in the paper's student.
ODD = dict(nf=20, gc=10, h_groups=5, attn_dim=16, heads=4)


@pytest.fixture(autouse=True)
def _exact_fp32_on_gpu():
    """fp32 comparisons below are tight: no TF32 in cuDNN convolutions or matmuls (no-op on a CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(preset="student_tiny", csa="attention", backend="reference", **kw):
    torch.manual_seed(0)
    return create(preset, bands=kw.pop("bands", BANDS), msi_bands=MSI, csa=csa, backend=backend, **kw).to(DEVICE)


def _inputs(batch=2, lr=8, bands=BANDS, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, bands, lr, lr, generator=g).to(DEVICE, dtype),
            torch.rand(batch, MSI, 4 * lr, 4 * lr, generator=g).to(DEVICE, dtype))


def _reference(model, lr, msi):
    """The plain module path in fp32 (the oracle): a forward with gradients on never takes the prepared path."""
    with torch.enable_grad():
        out, fused = model(lr.float(), msi.float(), return_features=True)
    return out.detach(), fused.detach()


def _supported(dtype) -> str | None:
    """None when convolutions in `dtype` run on DEVICE, else the reason."""
    try:
        torch.nn.functional.conv2d(torch.ones(1, 2, 3, 3, dtype=dtype, device=DEVICE),
                                   torch.ones(2, 2, 3, 3, dtype=dtype, device=DEVICE), padding=1)
    except RuntimeError as error:
        return f"{dtype} convolutions are not supported on {DEVICE} by this torch build: {error}"
    return None


def _assert_within_roundoff(y, ref, dtype, what="output"):
    u = UNIT_ROUNDOFF[dtype]
    rel_l2 = ((y.float() - ref).norm() / ref.norm()).item()
    rel_max = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    assert rel_l2 <= 8 * u, f"{what}: relative L2 error {rel_l2:.2e} > 8u = {8 * u:.2e} ({dtype})"
    assert rel_max <= 16 * u, f"{what}: relative max error {rel_max:.2e} > 16u = {16 * u:.2e} ({dtype})"
    return rel_l2


# ---- agreement with the reference path ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["attention", "reference", "sum"])
def test_folded_csa_matches_the_reference_csa(mode):
    torch.manual_seed(0)
    csa = CSAFusion(24, 32, 4, mode).to(DEVICE)
    # Images of different statistics: the attention, hence the fold, differs per image.
    xs = [torch.randn(3, 24, 5, 7, device=DEVICE) * torch.tensor([0.5, 1.0, 2.0], device=DEVICE)[:, None, None, None]
          for _ in range(4)]
    ref = csa_reference(*xs, csa.params(), mode, 4)
    torch.testing.assert_close(csa_folded(*xs, csa.params(), mode, 4), ref, rtol=1e-5, atol=1e-5)
    prepared = fold_csa_params(csa.params(), mode, 4, torch.float32)
    assert ("m" in prepared) == (mode == "reference")  # only the released code's mode folds for good
    torch.testing.assert_close(csa_folded(*xs, prepared, mode, 4), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [None, False])  # on a CPU: its channels-last form, and the NCHW one
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("csa", ["attention", "reference", "sum"])
def test_fp32_prepared_path_matches_reference(csa, pad, channels_last):
    model = _model(csa=csa, **ODD)
    lr, msi = _inputs()
    ref, f_ref = _reference(model, lr, msi)
    model.prepare(torch.float32, pad=pad, channels_last=channels_last)
    with torch.inference_mode():
        out, fused = model(lr, msi, return_features=True)
    prep = model._prepared
    assert prep is not None and prep.pad == pad and prep.dtype == torch.float32
    assert prep.layout == ("nhwc" if DEVICE == "cpu" and channels_last is None and MKLDNN else "nchw")
    if pad:  # dense branches at 32 channels, the grouped h branch at its own 20
        assert prep.branches["mh"].stem[0].shape[0] == 32 and prep.branches["h"].stem[0].shape[0] == 20
        assert prep.head[0].shape[1] == 32
    assert out.shape == ref.shape and fused.shape == f_ref.shape
    # Only the summation order differs (Gram-form attention, folded projections, zero padding).
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, f_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [None, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("preset,csa", [("student_tiny", "attention"), ("student_tiny", "reference"),
                                        ("teacher_tiny", "attention")])
def test_low_precision_matches_fp32_reference(preset, csa, dtype, channels_last):
    if reason := _supported(dtype):
        pytest.skip(reason)
    model = _model(preset, csa, **ODD)
    batch = 2 if dtype == torch.bfloat16 else 1  # CPU fp16 convolutions are slow
    lr, msi = _inputs(batch=batch)
    ref, f_ref = _reference(model, lr, msi)
    model.inference_dtype = dtype
    model.channels_last = channels_last
    model.eval()
    with torch.inference_mode():
        out, fused = model(lr, msi, return_features=True)
    assert model._prepared.dtype == dtype and model._prepared.head[2].dtype == dtype
    assert out.dtype == torch.float32 and fused.dtype == torch.float32  # the inputs' dtype
    err = _assert_within_roundoff(out, ref, dtype)
    _assert_within_roundoff(fused, f_ref, dtype, "fused features")
    assert err > 0.1 * UNIT_ROUNDOFF[dtype]  # it really computed in the low precision


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("csa", ["attention", "reference", "sum"])
def test_cpu_channels_last_bf16_matches_fp32_reference(csa, pad):
    """The CPU form in bf16 (channels-last, residual scales folded into the convolutions) against the fp32
    module path: the bf16 bounds."""
    if not MKLDNN:
        pytest.skip("the CPU form needs oneDNN (torch built with MKLDNN)")
    model = _model(csa=csa, **ODD).cpu()
    lr, msi = (x.cpu() for x in _inputs())
    ref, f_ref = _reference(model, lr, msi)
    model.prepare(torch.bfloat16, pad=pad)
    with torch.inference_mode():
        out, fused_features = model(lr, msi, return_features=True)
    assert model._prepared.layout == "nhwc" and model._prepared.dtype == torch.bfloat16
    err = _assert_within_roundoff(out, ref, torch.bfloat16)
    _assert_within_roundoff(fused_features, f_ref, torch.bfloat16, "fused features")
    assert err > 0.1 * UNIT_ROUNDOFF[torch.bfloat16]


def _conv_inputs(model, lr, msi):
    """(op name, input, output) of every convolution a forward of `model` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "conv" in func.__name__:
                seen.append((func.__name__, args[0], out))
            return out

    with torch.inference_mode(), Record():
        result = model(lr, msi)
    return seen, result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_form_keeps_every_activation_channels_last(dtype):
    """Every convolution of the CPU form reads and writes channels-last tensors in the compute dtype (no layout
    round trip and no cast around any of them), the query/key features stay channels-last, and the output comes
    back in the inputs' dtype and memory format."""
    if not MKLDNN:
        pytest.skip("the CPU form needs oneDNN (torch built with MKLDNN)")
    model = _model(**ODD).cpu().prepare(dtype)
    lr, msi = (x.cpu() for x in _inputs(lr=6))
    convs, out = _conv_inputs(model, lr, msi)
    assert len(convs) >= 20
    for name, x, y in convs:
        assert x.dtype == dtype and y.dtype == dtype, name
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(), name
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous(), name
    assert out.dtype == torch.float32 and out.is_contiguous()  # NCHW in, NCHW out
    cl = torch.channels_last
    with torch.inference_mode():
        x1, x2 = model.query_key_features(lr, msi)
        out_cl, fused = model(lr.to(memory_format=cl), msi.to(memory_format=cl), return_features=True)
    assert x1.is_contiguous(memory_format=cl) and x2.is_contiguous(memory_format=cl)
    assert out_cl.is_contiguous(memory_format=cl) and fused.is_contiguous(memory_format=cl)
    assert torch.equal(out_cl, out)


def test_cpu_form_takes_a_given_attention_and_runs_tiled():
    """Tiled fusion's hooks on the CPU form: the attention computed from `query_key_features` statistics, given
    back through `attention=`, gives the forward's own result; a scene fused in tiles stays within the bf16
    bound of the fp32 module path fused in the same tiles; all of it on models built under
    torch.inference_mode()."""
    if not MKLDNN:
        pytest.skip("the CPU form needs oneDNN (torch built with MKLDNN)")
    with torch.inference_mode():
        model = _model(**ODD).cpu().eval()
        prepared = _model(**ODD).cpu()
        prepared.prepare(torch.bfloat16)
    lr, msi = (x.cpu() for x in _inputs(batch=1, lr=10))
    with torch.inference_mode():
        x1, x2 = prepared.query_key_features(lr, msi)
        attention = attention_from_stats(AttentionStats.of(x1, x2, torch.float64), prepared.csa.params(),
                                         prepared.csa.heads).float()
        own, given = prepared(lr, msi), prepared(lr, msi, attention=attention)
        whole = model(lr, msi)
    assert prepared._prepared.layout == "nhwc"
    torch.testing.assert_close(given, own, rtol=0, atol=1e-6 * own.abs().max().item())
    _assert_within_roundoff(own, whole, torch.bfloat16)
    tiles = [fuse_scene(m, lr[0].numpy(), msi[0].numpy(), tile=6, overlap=2) for m in (prepared, model)]
    _assert_within_roundoff(*(torch.from_numpy(t)[None] for t in tiles), torch.bfloat16, "tiled output")


def _native(monkeypatch, flags=(), avx512_bf16=False, amx=False, mkldnn=True):
    """Pretend this CPU has `flags` in /proc/cpuinfo and these answers from torch's own probes."""
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)


@pytest.mark.parametrize("case,expected", [
    (dict(flags={"avx512f", "avx512_bf16"}), torch.bfloat16),             # Zen 4, Cooper Lake
    (dict(flags={"avx512f", "amx_tile", "amx_bf16"}), torch.bfloat16),    # Sapphire Rapids and later
    (dict(avx512_bf16=True), torch.bfloat16),                             # no /proc/cpuinfo: torch's probe
    (dict(flags={"avx512f", "avx2", "fma"}), torch.float32),              # AVX-512 without bf16: emulated
    (dict(flags={"avx2", "fma"}), torch.float32),
    (dict(flags={"avx512_bf16"}, mkldnn=False), torch.float32),           # no oneDNN in this torch
])
def test_auto_dtype_is_bf16_only_where_the_cpu_has_native_bf16(case, expected, monkeypatch):
    _native(monkeypatch, **case)
    cpu_device = torch.device("cpu")
    assert cpu.auto_dtype(cpu_device) == expected
    assert inference_dtype("auto", cpu_device, auto="native-bf16") == expected
    assert inference_dtype("auto", cpu_device, auto="gpu-bf16") == torch.float32  # csakd fuse's rule, unchanged
    model = create("student_tiny", bands=BANDS, msi_bands=MSI, dtype="auto", **ODD).eval()
    assert model.inference_precision == "auto" and model.inference_dtype == expected
    lr, msi = _inputs(batch=1)
    ref, _ = _reference(model, lr.cpu(), msi.cpu())
    model.prepare()  # keeps "auto"
    assert model._prepared.dtype == expected and model.inference_precision == "auto"
    assert model._prepared.layout == ("nhwc" if case.get("mkldnn", True) else "nchw")
    out = _infer(model, lr.cpu(), msi.cpu())
    if expected == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    else:
        _assert_within_roundoff(out, ref, expected)
    assert model.prepare("auto")._prepared is model._prepared  # nothing changed: nothing rebuilt


def test_the_cpu_form_runs_only_where_it_is_meant_to():
    """The channels-last form is for the reference backend on a CPU in fp32/bf16; CUDA (whatever
    `channels_last` says), fp16, explicit fast backends and channels_last=False keep the NCHW form."""
    from csakd.ops.backend import REFERENCE as ref, Backend

    fast = Backend("cuda", parts={"clrb": "cuda", "csa": "reference", "losses": "reference"})
    cuda = torch.device("cuda")
    cpu_device = torch.device("cpu")
    expected = "nhwc" if MKLDNN else "nchw"
    assert cpu.layout(cpu_device, torch.bfloat16, ref, None) == expected
    assert cpu.layout(cpu_device, torch.float32, ref, True) == expected
    assert cpu.layout(cpu_device, torch.bfloat16, ref, False) == "nchw"
    assert cpu.layout(cpu_device, torch.float16, ref, None) == "nchw"
    assert cpu.layout(cpu_device, torch.bfloat16, fast, None) == "nchw"
    for channels_last in (None, True, False):
        assert cpu.layout(cuda, torch.bfloat16, ref, channels_last) == "nchw"


def test_drop_in_student_in_bf16():
    # The paper's student (172 bands, 4 MSI bands) at LR 8x8 / HR 32x32, as a user would run it.
    torch.manual_seed(0)
    model = csakd.Student(dtype="bf16").to(DEVICE).eval()
    assert model.inference_dtype == torch.bfloat16
    lr, msi = torch.rand(1, 172, 8, 8, device=DEVICE), torch.rand(1, 4, 32, 32, device=DEVICE)
    ref, _ = _reference(model, lr, msi)
    with torch.inference_mode():
        out = model(lr, msi)
    assert out.shape == (1, 172, 32, 32) and out.dtype == torch.float32
    _assert_within_roundoff(out, ref, torch.bfloat16)


def test_low_precision_inputs_give_low_precision_outputs():
    model = _model(dtype=torch.bfloat16).eval()
    lr, msi = _inputs(dtype=torch.bfloat16)
    with torch.inference_mode():
        out, fused = model(lr, msi, return_features=True)
    assert out.dtype == torch.bfloat16 and fused.dtype == torch.bfloat16
    _assert_within_roundoff(out, _reference(model, lr, msi)[0], torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", FAST)
def test_fast_backends_run_the_prepared_path(backend, dtype):
    model = _model(csa="attention", backend=backend, **ODD)
    lr, msi = _inputs(batch=1, lr=4)
    ref, _ = _reference(model, lr, msi)  # plain path on `backend`, itself tested against the reference
    model.prepare(dtype, pad=True)
    with torch.inference_mode():
        out = model(lr, msi)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    else:
        _assert_within_roundoff(out, ref, dtype)


def test_autocast_does_not_change_the_prepared_dtype():
    model = _model(**ODD).prepare(torch.float32)
    lr, msi = _inputs()
    ref, _ = _reference(model, lr, msi)
    with torch.inference_mode(), torch.autocast(lr.device.type, dtype=torch.bfloat16):
        out = model(lr, msi)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# ---- prepared weights follow the parameters --------------------------------------------------------------------

def _infer(model, lr, msi):
    with torch.inference_mode():
        return model(lr, msi)


def _check_current(model, lr, msi):
    """The prepared fp32 output equals the reference output of the model's current weights."""
    out = _infer(model, lr, msi)
    torch.testing.assert_close(out, _reference(model, lr, msi)[0], rtol=1e-5, atol=1e-6)
    return out


def test_in_place_weight_change_refreshes_prepared_weights_in_place():
    model = _model(**ODD).prepare(torch.float32, pad=True)
    lr, msi = _inputs()
    before = _check_current(model, lr, msi).clone()
    prep = model._prepared
    pointers = [t.data_ptr() for t in prep.tensors()]
    with torch.no_grad():
        model.branches["mh"].clras[0].blocks[1].conv3.weight.mul_(3.0)
        model.csa.value_conv.bias.add_(0.5)
    after = _check_current(model, lr, msi)
    assert not torch.allclose(after, before, rtol=1e-3, atol=1e-4)
    # Same object, same buffers (CUDA graphs captured on them stay valid), refreshed once.
    assert model._prepared is prep and prep.refreshes == 1
    assert [t.data_ptr() for t in prep.tensors()] == pointers
    _infer(model, lr, msi)
    assert prep.refreshes == 1  # nothing changed since: no rebuild


@pytest.mark.parametrize("optimizer", ["sgd_loop", "sgd_foreach", "adam_fused"])
def test_optimizer_steps_are_seen(optimizer):
    model = _model(**ODD).prepare(torch.float32)
    lr, msi = _inputs()
    before = _check_current(model, lr, msi).clone()
    if optimizer == "adam_fused":
        # Fused kernels bypass autograd's version counters; switching to train mode marks the weights stale.
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-1, foreach=optimizer == "sgd_foreach")
    model.train()
    model(lr, msi).square().mean().backward()
    opt.step()
    model.eval()
    after = _check_current(model, lr, msi)
    assert not torch.allclose(after, before, rtol=1e-3, atol=1e-4)


def test_load_state_dict_and_dtype_round_trip_are_seen():
    model = _model(**ODD).prepare(torch.float32)
    lr, msi = _inputs()
    _check_current(model, lr, msi)
    torch.manual_seed(1)
    other = create("student_tiny", bands=BANDS, msi_bands=MSI, **ODD).to(DEVICE)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(_infer(model, lr, msi), _reference(other, lr, msi)[0], rtol=1e-5, atol=1e-6)
    model.load_state_dict(copy.deepcopy(_model(**ODD).state_dict()), assign=True)  # new parameter objects
    _check_current(model, lr, msi)
    model.to(torch.bfloat16).to(torch.float32)  # new storage and rounded values
    _check_current(model, lr, msi)


def test_writes_autograd_does_not_see_need_invalidate_or_a_mode_switch():
    model = _model(**ODD).prepare(torch.float32)
    lr, msi = _inputs()
    _check_current(model, lr, msi)
    weight = model.last.weight
    weight.data.mul_(2.0)  # no version bump
    model.invalidate_prepared()
    _check_current(model, lr, msi)
    weight.data.mul_(0.5)
    model.train()
    model.eval()
    _check_current(model, lr, msi)


def test_dtype_change_rebuilds():
    model = _model(**ODD).prepare(torch.float32)
    lr, msi = _inputs()
    _check_current(model, lr, msi)
    model.prepare(torch.bfloat16)
    assert model._prepared.dtype == torch.bfloat16
    _assert_within_roundoff(_infer(model, lr, msi), _reference(model, lr, msi)[0], torch.bfloat16)


# ---- training and gradients never use it -------------------------------------------------------------------------

def test_training_mode_and_grad_enabled_forwards_use_the_module_path():
    plain, prepared = _model(**ODD), _model(dtype=torch.bfloat16, **ODD)
    lr, msi = _inputs()
    # Training mode: same output and gradients as a model without `dtype`, in fp32.
    outs = []
    for model in (plain, prepared):
        model.train()
        out = model(lr, msi)
        out.square().mean().backward()
        outs.append(out)
    assert outs[1].dtype == torch.float32 and prepared._prepared is None
    assert torch.equal(outs[0], outs[1])
    for p_plain, p_prep in zip(plain.parameters(), prepared.parameters()):
        assert torch.equal(p_plain.grad, p_prep.grad)
    # Eval mode with gradients on (e.g. a validation step that backpropagates): still the module path.
    plain.eval()
    prepared.eval()
    out = prepared(lr, msi)
    assert out.requires_grad and prepared._prepared is None
    assert torch.equal(out, plain(lr, msi))
    # Prepared, then trained: training forwards ignore the prepared weights.
    prepared.prepare()
    prepared.train()
    assert torch.equal(prepared(lr, msi), plain(lr, msi))


def test_mac_count_and_copies_ignore_the_prepared_path():
    model = _model(dtype=torch.bfloat16, **ODD).eval()
    lr, msi = _inputs()
    _infer(model, lr, msi)
    assert model._prepared is not None
    assert count_macs(model, (BANDS, 8, 8), (MSI, 32, 32)) == count_macs(_model(**ODD), (BANDS, 8, 8), (MSI, 32, 32))
    twin = copy.deepcopy(model)
    assert twin._prepared is None and twin.inference_dtype == torch.bfloat16
    assert set(twin.state_dict()) == set(_model(**ODD).state_dict())
    assert torch.equal(_infer(twin, lr, msi), _infer(model, lr, msi))


# ---- arguments -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, "fp8", "double", 16])
def test_unsupported_dtype_is_refused_clearly(dtype):
    with pytest.raises(ValueError, match="dtype: expected one of torch.float32, torch.bfloat16, torch.float16"):
        csakd.Student(dtype=dtype)
    model = _model()
    with pytest.raises(ValueError, match="dtype: expected one of"):
        model.prepare(dtype)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        model.inference_dtype = dtype


@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("float16", torch.float16),
                                        ("fp32", torch.float32), ("torch.bfloat16", torch.bfloat16)])
def test_dtype_names(name, dtype):
    assert create("student_tiny", bands=BANDS, msi_bands=MSI, dtype=name).inference_dtype == dtype


def test_compile_for_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the graph test below runs instead")
    with pytest.raises(ValueError, match="device: CUDA graphs need a CUDA device"):
        csakd.compile_for(_model(), (1, BANDS, 4, 4), (1, MSI, 16, 16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_of_the_prepared_path_follows_weight_updates(dtype):
    model = _model(dtype=dtype, **ODD).eval()
    lr, msi = _inputs(batch=1)

    def check(y):
        ref, _ = _reference(model, lr, msi)
        if dtype == torch.float32:
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
        else:
            _assert_within_roundoff(y, ref, dtype)

    graphed = csakd.compile_for(model, lr.shape, msi.shape)
    check(graphed(lr, msi).clone())
    with torch.no_grad():
        model.last.weight.mul_(2.0)
    check(graphed(lr, msi).clone())
    assert graphed.captures == 1  # refreshed in place, not captured again
    model.load_state_dict(_model(**ODD).state_dict(), assign=True)  # new parameters, same shapes: in place
    check(graphed(lr, msi).clone())
    assert graphed.captures == 1 and model._prepared.refreshes == 2
    model.pad_channels = not model._prepared.pad  # other prepared buffers: captured again
    check(graphed(lr, msi).clone())
    assert graphed.captures == 2
