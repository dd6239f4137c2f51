"""The CLRB extension op (csakd.ops.clrb) against the reference CLRB/CLRA of csakd.models.blocks.

CPU: float64 forward and gradients to round-off, float32 within rtol 1e-4 of a float64 oracle (evaluated on the
LReLU pieces the op took, see KINK_MARGIN), the buffer layout
the backward relies on, opcheck, torch.compile, argument errors. GPU (marked): every implementation (the
tensor-core "mma" kernel, the "direct" kernel, the ATen fallback) in fp32/bf16/fp16 on larger shapes.

Tolerances (against a float64 oracle fed the same rounded inputs, as max |error| / max |oracle|): fp32 with TF32
off 1e-5 (gradients 1e-4); the fp32 tensor-core kernel, which runs in TF32 like cuDNN when TF32 is allowed, 5e-3;
fp16 3e-3; bf16 2e-2. The low-precision bounds allow a few roundings of the inputs and of the stored activations
(TF32 and fp16 keep 11 bits, bf16 8) and are several times what eager PyTorch shows on the same inputs;
gradients in low precision must stay within 2x eager's error plus the same bound.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from csakd.models.blocks import CLRA, RES_SCALE, SLOPE, clrb_reference
from csakd.ops import clrb as op

# (nf, gc, groups): the paper's widths dense and grouped, and a small width for fast grouped variety.
CONFIGS = [(86, 43, 1), (86, 43, 43), (8, 4, 1), (8, 4, 2), (8, 4, 4)]
GPU = torch.device("cuda") if torch.cuda.is_available() else None
LOW_PRECISION_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}
TF32_TOL = 5e-3


def make_params(nf, gc, groups, dtype=torch.float64, device="cpu", seed=0):
    """Weights with unit-gain fan-in scaling and non-zero biases, so both LReLU branches and the residual matter."""
    g = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for k in range(5):
        cin, cout = (nf + k * gc) // groups, gc if k < 4 else nf
        weights.append(torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64) / (9 * cin) ** 0.5)
        biases.append(0.1 * torch.randn(cout, generator=g, dtype=torch.float64))
    return ([w.to(device, dtype).requires_grad_() for w in weights],
            [b.to(device, dtype).requires_grad_() for b in biases])


def make_input(batch, nf, h, w, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, nf, h, w, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()


def as_f64(tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


def value_and_grads(fn, x, weights, biases, grad_out):
    out = fn(x, weights, biases)
    grads = torch.autograd.grad(out, [x, *weights, *biases], grad_out)
    return out.detach(), grads


def max_rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_close_to_scale(actual, expected, rtol, name):
    """|actual - expected| <= rtol * (|expected| + max |expected|): relative where values are large, relative to
    the tensor's scale where they cross zero."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


NAMES = ["x"] + [f"weights[{k}]" for k in range(5)] + [f"biases[{k}]" for k in range(5)]

# LReLU has a kink at 0: a pre-activation within rounding of 0 may land on either side in fp32 (any fp32
# evaluation, PyTorch's included), and its gradient then differs by (1 - SLOPE) times a 3x3 neighbourhood of
# every channel, far beyond rounding. The fp32 tests therefore compare with the float64 reference evaluated on
# the pieces the op chose, and check separately that the op chose a piece other than float64's only where the
# float64 pre-activation is within KINK_MARGIN of its layer's scale from 0.
KINK_MARGIN = 1e-5


def clrb_on_pieces(x, weights, biases, groups, masks):
    """clrb_reference with each LReLU's branch given by `masks` (True: identity, False: SLOPE), after checking
    that a mask differs from the sign of its pre-activation only within KINK_MARGIN of the layer's scale."""
    feats = [x]
    for k, (w, b) in enumerate(zip(weights, biases)):
        y = F.conv2d(torch.cat(feats, dim=1), w, b, padding=1, groups=groups)
        if k < 4:
            differ = masks[k] != (y.detach() > 0)
            if bool(differ.any()):
                worst = y.detach()[differ].abs().max().item()
                assert worst <= KINK_MARGIN * y.detach().abs().max().item(), (
                    f"conv{k + 1}: the op took the other LReLU branch at a pre-activation of {worst:.3g}")
            feats.append(torch.where(masks[k], y, SLOPE * y))
    return x + RES_SCALE * y


def float64_oracle_on_op_pieces(x, weights, biases, grad_out, groups, impl="auto"):
    """(out, grads) of the float64 reference on the LReLU pieces the op took: the signs of the activations in
    its saved buffer, after x."""
    nf, gc = x.shape[1], weights[0].shape[0]
    with torch.no_grad():
        _, buffer = torch.ops.csakd.clrb_forward(x, [w.detach() for w in weights], [b.detach() for b in biases],
                                                 groups, impl)
    masks = [buffer[:, nf + k * gc: nf + (k + 1) * gc] > 0 for k in range(4)]
    return value_and_grads(lambda *a: clrb_on_pieces(*a, groups, masks), as_f64([x])[0], as_f64(weights),
                           as_f64(biases), grad_out.double())


def test_extension_is_built_for_cpu():
    assert op.LOAD_ERROR is None, op.LOAD_ERROR
    assert op.is_available("cpu")


@settings(max_examples=12)  # float64 convolutions take ATen's slow path on CPU; float32 below draws the full count
@given(config=st.sampled_from(CONFIGS), batch=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
       seed=st.integers(0, 2**16))
def test_float64_forward_and_gradients_equal_reference(config, batch, h, w, seed):
    nf, gc, groups = config
    weights, biases = make_params(nf, gc, groups, seed=seed)
    x = make_input(batch, nf, h, w, seed=seed + 1)
    grad_out = torch.randn(batch, nf, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out, grads = value_and_grads(lambda *a: op.clrb(*a, groups), x, weights, biases, grad_out)
    ref, ref_grads = value_and_grads(lambda *a: clrb_reference(*a, groups), x, weights, biases, grad_out)
    assert_close_to_scale(out, ref, 1e-10, "out")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert_close_to_scale(g, r, 1e-10, name)


@given(config=st.sampled_from(CONFIGS), batch=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
       seed=st.integers(0, 2**16))
@example(config=(86, 43, 1), batch=1, h=4, w=12, seed=4)  # conv3 pre-activation 1.2e-7 lands on the other side
def test_float32_forward_and_gradients_match_float64_reference(config, batch, h, w, seed):
    nf, gc, groups = config
    weights, biases = make_params(nf, gc, groups, torch.float32, seed=seed)
    x = make_input(batch, nf, h, w, torch.float32, seed=seed + 1)
    grad_out = torch.randn(batch, nf, h, w, generator=torch.Generator().manual_seed(seed))
    out, grads = value_and_grads(lambda *a: op.clrb(*a, groups), x, weights, biases, grad_out)
    ref, ref_grads = float64_oracle_on_op_pieces(x, weights, biases, grad_out, groups)
    assert out.dtype == torch.float32
    assert_close_to_scale(out, ref, 1e-4, "out")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert g.dtype == torch.float32
        assert_close_to_scale(g, r, 1e-4, name)


@pytest.mark.parametrize("nf, gc, groups", [(86, 43, 43), (8, 4, 1)])
def test_buffer_holds_x_then_the_activations(nf, gc, groups):
    """The layout the backward relies on, against features built here with plain conv2d + leaky_relu."""
    weights, biases = make_params(nf, gc, groups)
    x = make_input(2, nf, 5, 7).detach()
    out, buffer = torch.ops.csakd.clrb_forward(x, [w.detach() for w in weights], [b.detach() for b in biases],
                                               groups, "auto")
    feats = [x]
    for k in range(4):
        y = F.conv2d(torch.cat(feats, 1), weights[k].detach(), biases[k].detach(), padding=1, groups=groups)
        feats.append(torch.where(y > 0, y, SLOPE * y))
    torch.testing.assert_close(buffer, torch.cat(feats, 1), rtol=1e-12, atol=1e-12)
    y5 = F.conv2d(buffer, weights[4].detach(), biases[4].detach(), padding=1, groups=groups)
    torch.testing.assert_close(out, x + RES_SCALE * y5, rtol=1e-12, atol=1e-12)


def test_non_contiguous_input():
    weights, biases = make_params(8, 4, 2)
    base = make_input(2, 8, 9, 12).detach()
    for x in (base[:, :, :, ::2], base.to(memory_format=torch.channels_last)):
        assert not x.is_contiguous()
        torch.testing.assert_close(op.clrb(x, weights, biases, 2), clrb_reference(x, weights, biases, 2),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 4])
def test_clra_matches_module(groups):
    module = CLRA(8, 4, groups).double()
    for p in module.parameters():  # the module's init leaves zero biases and tiny weights: make them matter
        torch.nn.init.normal_(p, std=0.3)
    x = make_input(2, 8, 6, 5)
    grad_out = torch.randn_like(x)
    out = op.clra_module(module, x)
    ref = module(x)
    assert_close_to_scale(out.detach(), ref.detach(), 1e-10, "out")
    params = [x, *module.parameters()]
    for g, r in zip(torch.autograd.grad(out, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
        assert_close_to_scale(g, r, 1e-10, "grad")


@pytest.mark.parametrize("nf, gc, groups", [(8, 4, 1), (8, 4, 4)])
def test_opcheck(nf, gc, groups):
    weights, biases = make_params(nf, gc, groups, torch.float32)
    x = make_input(2, nf, 4, 5, torch.float32)
    torch.library.opcheck(torch.ops.csakd.clrb_forward.default, (x, weights, biases, groups, "auto"))
    buffer = torch.ops.csakd.clrb_forward(x.detach(), [w.detach() for w in weights], [b.detach() for b in biases],
                                          groups, "auto")[1]
    torch.library.opcheck(torch.ops.csakd.clrb_backward.default,
                          (torch.randn_like(x.detach()), buffer, [w.detach() for w in weights], groups))


def test_torch_compile_full_graph():
    weights, biases = make_params(8, 4, 2, torch.float32)
    x = make_input(1, 8, 6, 6, torch.float32)
    grad_out = torch.randn(1, 8, 6, 6)
    compiled = torch.compile(lambda x, w, b: op.clrb(x, w, b, 2), backend="aot_eager", fullgraph=True)
    out, grads = value_and_grads(compiled, x, weights, biases, grad_out)
    ref, ref_grads = value_and_grads(lambda *a: clrb_reference(*a, 2), x, weights, biases, grad_out)
    assert_close_to_scale(out, ref.double(), 1e-5, "out")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert_close_to_scale(g, r.double(), 1e-5, name)


def test_impl_selection_on_cpu(monkeypatch):
    weights, biases = make_params(8, 4, 1)
    x = make_input(1, 8, 3, 3)
    ref = clrb_reference(x, weights, biases, 1)
    torch.testing.assert_close(op.clrb(x, weights, biases, 1, impl="aten"), ref)
    with pytest.raises(RuntimeError, match="CUDA kernel"):
        op.clrb(x, weights, biases, 1, impl="mma")
    with pytest.raises(ValueError, match="impl"):
        op.clrb(x, weights, biases, 1, impl="fast")
    monkeypatch.setenv("CSAKD_CLRB_IMPL", "nope")
    with pytest.raises(ValueError, match="CSAKD_CLRB_IMPL"):
        op.clrb(x, weights, biases, 1)
    monkeypatch.setenv("CSAKD_CLRB_IMPL", "aten")
    torch.testing.assert_close(op.clrb(x, weights, biases, 1), ref)


def test_bad_arguments_name_the_argument():
    weights, biases = make_params(8, 4, 2)
    x = make_input(1, 8, 3, 3)
    cases = [
        (dict(x=x[0]), "x: expected a 4-D"),
        (dict(weights=weights[:4]), "weights: expected a sequence of 5"),
        (dict(biases=biases[:1]), "biases: expected a sequence of 5"),
        (dict(groups=3), "groups: expected a positive divisor"),
        (dict(groups=0), "groups: expected a positive divisor"),
        (dict(weights=[weights[0], weights[1].transpose(0, 1), *weights[2:]]), r"weights\[1\]: expected shape"),
        (dict(biases=[*biases[:4], biases[4][:3]]), r"biases\[4\]: expected shape"),
        (dict(weights=[weights[0].float(), *weights[1:]]), r"weights\[0\]: expected dtype torch.float64"),
        (dict(x=make_input(1, 6, 3, 3)), r"weights\[0\]: expected shape"),
    ]
    for overrides, message in cases:
        args = dict(x=x, weights=weights, biases=biases, groups=2) | overrides
        with pytest.raises(ValueError, match=message):
            op.clrb(**args)
    with pytest.raises(ValueError, match="clrb_params"):
        op.clra(x, [], 2)


def test_op_checks_arguments_itself():
    """Direct calls of torch.ops.csakd.* (bypassing the Python checks) get the C++ checks."""
    weights, biases = make_params(8, 4, 2)
    x = make_input(1, 8, 3, 3).detach()
    w = [t.detach() for t in weights]
    b = [t.detach() for t in biases]
    with pytest.raises(RuntimeError, match="expected groups dividing"):
        torch.ops.csakd.clrb_forward(x, w, b, 3, "auto")
    with pytest.raises(RuntimeError, match=r"expected weights\[2\] of shape"):
        torch.ops.csakd.clrb_forward(x, [*w[:2], w[3], *w[3:]], b, 2, "auto")
    with pytest.raises(RuntimeError, match="expected buffer of shape"):
        torch.ops.csakd.clrb_backward(x, x, w, 2)


# ---------------------------------------------------------------------------------------------------------------
# GPU


def gpu_impls(groups, dtype):
    """The exact-precision implementations for this configuration on the GPU (fp32 "mma" is TF32: tested apart)."""
    impls = ["auto", "aten", "direct"]
    if groups == 1 and dtype in (torch.bfloat16, torch.float16):
        impls.append("mma")
    return impls


@contextlib.contextmanager
def no_tf32():
    """Exact fp32 convolutions in cuDNN (PyTorch lets cuDNN use TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gpu_case(nf, gc, groups, dtype, batch, h, w, seed):
    weights, biases = make_params(nf, gc, groups, dtype, GPU, seed)
    x = make_input(batch, nf, h, w, dtype, GPU, seed + 1)
    grad_out = torch.randn(batch, nf, h, w, generator=torch.Generator().manual_seed(seed)).to(GPU, dtype)
    ref = value_and_grads(lambda *a: clrb_reference(*a, groups), as_f64([x])[0], as_f64(weights), as_f64(biases),
                          grad_out.double())
    return x, weights, biases, grad_out, ref


@pytest.mark.gpu
def test_gpu_extension_is_built():
    assert op.is_available("cuda"), op.LOAD_ERROR or "csakd._C was built without CUDA"


@pytest.mark.gpu
@settings(max_examples=40)
@given(config=st.sampled_from(CONFIGS), batch=st.integers(1, 3), h=st.integers(1, 70), w=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_gpu_float32_every_impl_matches_float64(config, batch, h, w, seed):
    nf, gc, groups = config
    x, weights, biases, grad_out, (ref, ref_grads) = gpu_case(nf, gc, groups, torch.float32, batch, h, w, seed)
    for impl in gpu_impls(groups, torch.float32):
        with no_tf32():
            out, grads = value_and_grads(lambda *a: op.clrb(*a, groups, impl=impl), x, weights, biases, grad_out)
            ref, ref_grads = float64_oracle_on_op_pieces(x, weights, biases, grad_out, groups, impl)
        assert_close_to_scale(out, ref, 1e-5, f"{impl} out")
        for name, g, r in zip(NAMES, grads, ref_grads):
            assert_close_to_scale(g, r, 1e-4, f"{impl} {name}")


@pytest.mark.gpu
@settings(max_examples=40)
@given(config=st.sampled_from(CONFIGS), dtype=st.sampled_from([torch.bfloat16, torch.float16]),
       batch=st.integers(1, 3), h=st.integers(1, 70), w=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_gpu_low_precision_every_impl_within_stated_tolerance(config, dtype, batch, h, w, seed):
    nf, gc, groups = config
    x, weights, biases, grad_out, (ref, ref_grads) = gpu_case(nf, gc, groups, dtype, batch, h, w, seed)
    eager, eager_grads = value_and_grads(lambda *a: clrb_reference(*a, groups), x, weights, biases, grad_out)
    tol = LOW_PRECISION_TOL[dtype]
    for impl in gpu_impls(groups, dtype):
        out, grads = value_and_grads(lambda *a: op.clrb(*a, groups, impl=impl), x, weights, biases, grad_out)
        assert out.dtype == dtype
        err = max_rel_err(out, ref)
        assert err <= tol, f"{impl}: forward error {err:.2e} > {tol:.0e} (eager {max_rel_err(eager, ref):.2e})"
        for name, g, e, r in zip(NAMES, grads, eager_grads, ref_grads):
            err, eager_err = max_rel_err(g, r), max_rel_err(e, r)
            assert err <= 2 * eager_err + tol, f"{impl} {name}: error {err:.2e}, eager {eager_err:.2e}"


@pytest.mark.gpu
@settings(max_examples=20)
@given(config=st.sampled_from([c for c in CONFIGS if c[2] == 1]), batch=st.integers(1, 3), h=st.integers(1, 70),
       w=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_gpu_float32_tensor_core_kernel_within_tf32_tolerance(config, batch, h, w, seed):
    nf, gc, groups = config
    x, weights, biases, grad_out, (ref, ref_grads) = gpu_case(nf, gc, groups, torch.float32, batch, h, w, seed)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # "auto" takes the TF32 kernel only where cuDNN may use TF32
    try:
        _, eager_grads = value_and_grads(lambda *a: clrb_reference(*a, groups), x, weights, biases, grad_out)
        for impl in ("mma", "auto"):
            out, grads = value_and_grads(lambda *a: op.clrb(*a, groups, impl=impl), x, weights, biases, grad_out)
            err = max_rel_err(out, ref)
            assert err <= TF32_TOL, f"{impl}: forward error {err:.2e} > {TF32_TOL:.0e}"
            for name, g, e, r in zip(NAMES, grads, eager_grads, ref_grads):  # the backward is cuDNN's, in TF32 too
                err, eager_err = max_rel_err(g, r), max_rel_err(e, r)
                assert err <= 2 * eager_err + TF32_TOL, f"{impl} {name}: error {err:.2e}, eager {eager_err:.2e}"
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("groups", [1, 43])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("batch, size", [(1, 256), (4, 64), (2, (37, 129))])
def test_gpu_paper_size_kernels_and_aten_path(groups, dtype, batch, size):
    h, w = (size, size) if isinstance(size, int) else size
    weights, biases = make_params(86, 43, groups, dtype, GPU)
    x = make_input(batch, 86, h, w, dtype, GPU).detach()
    w_, b_ = [t.detach() for t in weights], [t.detach() for t in biases]
    ref = clrb_reference(x.double(), [t.double() for t in w_], [t.double() for t in b_], groups)
    tol = LOW_PRECISION_TOL.get(dtype, TF32_TOL)  # fp32 dense takes the TF32 kernel
    for impl in ("mma" if groups == 1 else "direct", "aten"):
        err = max_rel_err(op.clrb(x, w_, b_, groups, impl=impl), ref)
        assert err <= tol, f"{impl}: error {err:.2e} > {tol:.0e}"


@pytest.mark.gpu
def test_gpu_clra_and_opcheck():
    module = CLRA(86, 43, 43).to(GPU)
    x = torch.randn(2, 86, 24, 40, device=GPU, requires_grad=True)
    with no_tf32():
        out, ref = op.clra_module(module, x), module(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    weights, biases = make_params(8, 4, 1, torch.bfloat16, GPU)
    xb = make_input(2, 8, 9, 11, torch.bfloat16, GPU)
    for impl in ("mma", "aten"):
        torch.library.opcheck(torch.ops.csakd.clrb_forward.default, (xb, weights, biases, 1, impl),
                              atol=1e-2, rtol=1e-2)
