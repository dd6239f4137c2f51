"""Reference models: presets, parameter and MAC counts (SPEC §2), CSA modes, input validation."""
import json
import math

import pytest
import torch

import csakd
from csakd.models import (CLRB, CSAFusion, ModelConfig, attention_weights, clrb_reference, count_macs, create,
                          csa_reference)

# SPEC §2: (preset, msi_bands) -> (parameters at C=172, conv MACs at LR 64², HR 256²)
SPEC_COUNTS = {
    ("teacher", 4): (26_807_686, 941_762_756_608),
    ("student", 4): (7_449_946, 144_767_352_832),
    ("teacher_large", 4): (37_197_862, 1_303_291_543_552),
    ("student_large", 4): (11_346_262, 399_964_143_616),
    ("teacher", 6): (26_812_330, 941_971_996_672),
    ("student", 6): (7_454_590, 144_976_592_896),
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset,msi", sorted(SPEC_COUNTS))
def test_parameter_and_mac_counts_match_spec(preset, msi):
    model = create(preset, bands=172, msi_bands=msi)
    params, macs = SPEC_COUNTS[(preset, msi)]
    assert n_params(model) == params
    assert count_macs(model, (172, 64, 64), (msi, 256, 256)) == macs


def test_large_presets_with_six_msi_bands_add_only_stem_weights():
    # Three stems see the MSI (hm, mh, m); two more input channels add 2 * 86 * 9 weights to each.
    for preset in ("teacher_large", "student_large"):
        assert n_params(create(preset, msi_bands=6)) - n_params(create(preset, msi_bands=4)) == 3 * 2 * 86 * 9


def test_mac_count_scales_with_batch_and_area():
    model = create("student")
    one = count_macs(model, (172, 16, 16), (4, 64, 64))
    assert count_macs(model, (2, 172, 16, 16), (2, 4, 64, 64)) == 2 * one
    assert count_macs(model, (172, 32, 32), (4, 128, 128)) == 4 * one


def test_top_level_classes_are_the_presets():
    assert n_params(csakd.Student()) == 7_449_946
    assert n_params(csakd.Teacher(bands=172, msi_bands=4)) == 26_807_686
    assert csakd.Student().config.h_groups == 43


def test_forward_shapes_and_features():
    torch.manual_seed(0)
    model = create("student_tiny", bands=12, msi_bands=3)
    lr, msi = torch.rand(2, 12, 5, 7), torch.rand(2, 3, 20, 28)
    out = model(lr, msi)
    assert out.shape == (2, 12, 20, 28)
    out2, fused = model(lr, msi, return_features=True)
    assert torch.equal(out, out2)
    assert fused.shape == (2, model.config.nf, 20, 28)


def test_full_student_runs_at_small_size():
    model = csakd.Student()
    out, fused = model(torch.rand(1, 172, 4, 4), torch.rand(1, 4, 16, 16), return_features=True)
    assert out.shape == (1, 172, 16, 16) and fused.shape == (1, 86, 16, 16)
    assert torch.isfinite(out).all()


def test_config_round_trips_through_json():
    cfg = create("student", msi_bands=6, csa="reference").config
    text = cfg.to_json()
    assert ModelConfig.from_json(text) == cfg
    assert json.loads(text)["depths"] == [0, 4, 4, 1]


@pytest.mark.parametrize("field,value", [("bands", 0), ("depths", (1, 2, 3)), ("csa", "softmax"),
                                         ("h_groups", 5), ("heads", 5)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_unknown_preset_and_config_keys_are_refused():
    with pytest.raises(ValueError, match="name"):
        create("professor")
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"bands": 4, "width": 3})


# ---- input validation -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return create("student_tiny", bands=8, msi_bands=3)


@pytest.mark.parametrize("lr,msi,pattern", [
    (torch.rand(8, 4, 4), torch.rand(1, 3, 16, 16), "lr_hsi: expected a 4-D tensor"),
    (torch.rand(1, 9, 4, 4), torch.rand(1, 3, 16, 16), "lr_hsi: expected 8 channels"),
    (torch.rand(1, 8, 4, 4), torch.rand(1, 4, 16, 16), "hr_msi: expected 3 channels"),
    (torch.rand(1, 8, 4, 4), torch.rand(1, 3, 12, 16), r"hr_msi: expected spatial size \(16, 16\)"),
    (torch.rand(1, 8, 4, 4), torch.rand(2, 3, 16, 16), "hr_msi: expected batch size 1"),
    (torch.ones(1, 8, 4, 4, dtype=torch.int32), torch.rand(1, 3, 16, 16), "lr_hsi: expected a floating-point"),
    (torch.full((1, 8, 4, 4), float("nan")), torch.rand(1, 3, 16, 16), "lr_hsi: expected finite"),
    (torch.rand(1, 8, 4, 4), torch.rand(1, 3, 16, 16).double(), "hr_msi: expected dtype torch.float32"),
    ([[1.0]], torch.rand(1, 3, 16, 16), "lr_hsi: expected a torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(tiny, lr, msi, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(lr, msi)


# ---- CLRB -------------------------------------------------------------------------------------------------

def test_clrb_initialisation_and_grouped_shapes():
    block = CLRB(86, 43, groups=43)
    assert block.conv1.weight.shape == (43, 2, 3, 3) and block.conv5.weight.shape == (86, 6, 3, 3)
    assert all(torch.count_nonzero(c.bias.detach()) == 0 for c in block.convs())
    # Kaiming-normal fan_in scaled by 0.1: std = 0.1 * sqrt(2 / fan_in).
    big = CLRB(86, 43).conv5.weight
    assert big.std().item() == pytest.approx(0.1 * math.sqrt(2 / (258 * 9)), rel=0.05)


def test_clrb_matches_an_explicit_dense_block():
    torch.manual_seed(1)
    block = CLRB(6, 4, groups=2)
    with torch.no_grad():
        for c in block.convs():
            c.bias.normal_()
    x = torch.randn(2, 6, 5, 4)
    conv = lambda k, inp: torch.nn.functional.conv2d(inp, getattr(block, f"conv{k}").weight,
                                                     getattr(block, f"conv{k}").bias, padding=1, groups=2)
    lrelu = lambda t: torch.where(t > 0, t, 0.2 * t)
    x1 = lrelu(conv(1, x))
    x2 = lrelu(conv(2, torch.cat([x, x1], 1)))
    x3 = lrelu(conv(3, torch.cat([x, x1, x2], 1)))
    x4 = lrelu(conv(4, torch.cat([x, x1, x2, x3], 1)))
    expected = x + 0.2 * conv(5, torch.cat([x, x1, x2, x3, x4], 1))
    torch.testing.assert_close(block(x), expected)


# ---- CSA --------------------------------------------------------------------------------------------------

def _csa_inputs(b=2, nf=8, h=4, w=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, nf, h, w, generator=g, dtype=dtype) for _ in range(4)]


def test_reference_mode_sums_values_and_gives_q_k_no_gradient():
    torch.manual_seed(0)
    csa = CSAFusion(nf=8, attn_dim=8, heads=2, mode="reference")
    xs = _csa_inputs()
    out = csa(*xs)
    out.square().sum().backward()
    assert csa.query_conv.weight.grad is None and csa.key_conv.weight.grad is None
    assert csa.value_conv.weight.grad is not None
    # Independent computation: every channel of a head is the sum of that head's v channels.
    p = csa.params()
    v = torch.einsum("oc,bchw->bohw", p["wv"], xs[2]) + p["bv"][:, None, None]
    head_sums = v.reshape(2, 2, 4, 4, 5).sum(2, keepdim=True).expand(2, 2, 4, 4, 5).reshape(2, 8, 4, 5)
    att = torch.einsum("oc,bchw->bohw", p["wo"], head_sums) + p["bo"][:, None, None] + xs[3]
    gate = torch.sigmoid(torch.einsum("oc,bchw->bohw", p["wg"], torch.cat([*xs[:3], att], 1))
                         + p["bg"][:, None, None])
    expected = sum(gate[:, i:i + 1] * x for i, x in enumerate([*xs[:3], att]))
    torch.testing.assert_close(out, expected)


def test_attention_mode_depends_on_keys():
    torch.manual_seed(0)
    csa = CSAFusion(nf=8, attn_dim=8, heads=2, mode="attention")
    x1, x2, x3, x4 = _csa_inputs()
    with torch.no_grad():
        base = csa(x1, x2, x3, x4)
        changed = csa(x1, x2.flip(-1) * 3, x3, x4)
    assert not torch.allclose(base, changed)


def test_attention_weights_are_invariant_to_tiling_the_image():
    torch.manual_seed(0)
    p = CSAFusion(nf=8, attn_dim=8, heads=2).params()
    x1, x2, _, _ = _csa_inputs()
    a = attention_weights(x1, x2, p, heads=2)
    a_tiled = attention_weights(x1.repeat(1, 1, 2, 2), x2.repeat(1, 1, 2, 2), p, heads=2)
    torch.testing.assert_close(a, a_tiled)
    assert a.shape == (2, 2, 4, 4)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 4))


def test_attention_mode_matches_the_paper_equation_per_head():
    torch.manual_seed(2)
    csa = CSAFusion(nf=6, attn_dim=4, heads=2)
    p = csa.params()
    x1, x2, x3, x4 = _csa_inputs(b=1, nf=6, h=3, w=3)
    q = (p["wq"] @ x1.reshape(6, 9) + p["bq"][:, None]).reshape(2, 2, 9)
    k = (p["wk"] @ x2.reshape(6, 9) + p["bk"][:, None]).reshape(2, 2, 9)
    v = (p["wv"] @ x3.reshape(6, 9) + p["bv"][:, None]).reshape(2, 2, 9)
    o = torch.stack([torch.softmax(q[h] @ k[h].T / 9 / math.sqrt(2), -1) @ v[h] for h in range(2)]).reshape(4, 9)
    att = p["wo"] @ o + p["bo"][:, None] + x4.reshape(6, 9)
    gate = torch.sigmoid(p["wg"] @ torch.cat([x1.reshape(6, 9), x2.reshape(6, 9), x3.reshape(6, 9), att])
                         + p["bg"][:, None])
    expected = (gate[0] * x1.reshape(6, 9) + gate[1] * x2.reshape(6, 9) + gate[2] * x3.reshape(6, 9)
                + gate[3] * att).reshape(1, 6, 3, 3)
    torch.testing.assert_close(csa(x1, x2, x3, x4), expected)


def test_sum_mode_has_no_parameters():
    csa = CSAFusion(nf=8, mode="sum")
    xs = _csa_inputs()
    assert not list(csa.parameters())
    torch.testing.assert_close(csa(*xs), xs[0] + xs[1] + xs[2] + xs[3])


@pytest.mark.parametrize("mode", ["attention", "reference"])
def test_csa_gradcheck_float64(mode):
    torch.manual_seed(0)
    csa = CSAFusion(nf=4, attn_dim=4, heads=2, mode=mode).double()
    xs = [x.requires_grad_() for x in _csa_inputs(b=1, nf=4, h=2, w=3, dtype=torch.float64)]
    params = {k: v.detach().clone().requires_grad_() for k, v in csa.params().items()}
    names = list(params)

    def fn(*args):
        return csa_reference(*args[:4], dict(zip(names, args[4:])), mode, heads=2)

    assert torch.autograd.gradcheck(fn, (*xs, *params.values()))


def test_clrb_gradcheck_float64():
    torch.manual_seed(0)
    block = CLRB(4, 2, groups=2).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    ws = [c.weight.detach().clone().requires_grad_() for c in block.convs()]
    bs = [torch.randn_like(c.bias).requires_grad_() for c in block.convs()]
    assert torch.autograd.gradcheck(lambda x, *p: clrb_reference(x, list(p[:5]), list(p[5:]), 2), (x, *ws, *bs))
