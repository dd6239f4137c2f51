"""Tiled fusion: the scene-wide attention statistics, agreement with whole-image inference, bounded memory."""
import copy
import json
import math
import textwrap

import numpy as np
import pytest
import torch
from train_helpers import run_python

import csakd
from csakd.models import attention_weights
from csakd.inference.tiled import fuse_scene, tile_starts
from csakd.ops.csa_algebra import AttentionStats, attention_from_stats


NARROW = dict(nf=16, gc=8, attn_dim=16, h_groups=4)  # student_tiny's depth at half its width: cheap tests


def _model(csa="attention", seed=0):
    torch.manual_seed(seed)
    model = csakd.create("student_tiny", bands=8, msi_bands=4, csa=csa, **NARROW).eval()
    if csa == "attention":
        # Default init makes the attention nearly uniform and its effect on the output small; sharper logits
        # and a stronger output projection make the tests discriminate.
        with torch.no_grad():
            model.csa.query_conv.weight.mul_(8)
            model.csa.key_conv.weight.mul_(8)
            model.csa.output_conv.weight.mul_(10)
    return model


def _inputs(h, w, bands=8, seed=1):
    """Smooth spectral patterns plus texture; the right half has other spectra, so tiles differ."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 4 * h), torch.linspace(0, 3, 4 * w), indexing="ij")
    hr = torch.stack([torch.sin(yy * (k + 1) + xx * (k % 3)) for k in range(bands)]) * 0.3 + 0.5
    hr = hr + 0.05 * torch.rand(bands, 4 * h, 4 * w, generator=g)
    hr[:, :, 2 * w:] = hr.flip(0)[:, :, 2 * w:] * 1.5
    lr = torch.nn.functional.avg_pool2d(hr[None], 4)[0]
    msi = torch.stack([hr[k::4].mean(0) for k in range(4)])
    return lr.numpy(), msi.numpy()


def _psnr(a, b):
    return 10 * math.log10((b.max() - b.min()) ** 2 / float(((a - b) ** 2).mean()))


def test_tile_starts_cover_the_axis_with_the_requested_overlap():
    for size, tile, overlap in [(100, 32, 8), (64, 16, 4), (17, 16, 3), (10, 16, 4)]:
        starts = tile_starts(size, tile, overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[0] == 0 and starts[-1] + min(tile, size) == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_accumulated_statistics_give_the_whole_image_attention():
    torch.manual_seed(3)
    model = _model()
    x1, x2 = torch.randn(1, 16, 12, 10), torch.randn(1, 16, 12, 10) + 0.5
    stats = None
    for rows in (slice(0, 5), slice(5, 12)):  # any partition of the pixels
        part = AttentionStats.of(x1[:, :, rows], x2[:, :, rows], torch.float64)
        stats = part if stats is None else stats + part
    params = {k: v.double() for k, v in model.csa.params().items()}
    expected = attention_weights(x1.double(), x2.double(), params, model.csa.heads)
    torch.testing.assert_close(attention_from_stats(stats, params, model.csa.heads), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("csa", ["attention", "reference", "sum"])
def test_one_tile_equals_the_model(csa):
    model = _model(csa)
    lr, msi = _inputs(12, 10)
    with torch.no_grad():
        whole = model(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None])[0].numpy()
    np.testing.assert_allclose(fuse_scene(model, lr, msi, tile=64, overlap=8), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("csa", ["attention", "reference"])
def test_tiled_matches_whole_scene_to_45_db(csa):
    model = _model(csa)
    lr, msi = _inputs(32, 28)
    with torch.no_grad():
        whole = model(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None])[0].numpy()
    tiled = fuse_scene(model, lr, msi, tile=16, overlap=4)
    assert _psnr(tiled, whole) >= 45


@pytest.mark.parametrize("backend", csakd.available_backends("cpu"))
@pytest.mark.parametrize("csa", ["attention", "reference"])
def test_tiled_matches_whole_scene_on_every_backend(csa, backend):
    """The scene attention reaches every backend's CSA (the fused kernels take it as an argument)."""
    model = _model(csa)
    lr, msi = _inputs(32, 28)
    with torch.no_grad():
        whole = model(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None])[0].numpy()
    fast = csakd.create("student_tiny", bands=8, msi_bands=4, csa=csa, backend=backend, **NARROW).eval()
    fast.load_state_dict(model.state_dict())
    assert _psnr(fuse_scene(fast, lr, msi, tile=16, overlap=4), whole) >= 45


@pytest.mark.parametrize("csa", ["attention", "reference"])
def test_tiled_prepared_bf16_matches_the_fp32_whole_image(csa):
    """A prepared bf16 model (the path `csakd fuse --precision bf16` runs) in tiles, against the fp32 module
    path on the whole image: the suite's bf16 bound (relative L2 <= 8u, u = 2^-9, as tests/test_inference.py)."""
    model = _model(csa)
    lr, msi = _inputs(32, 28)
    with torch.no_grad():
        whole = model(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None])[0].numpy()
    prepared = copy.deepcopy(model).prepare(torch.bfloat16)
    tiled = fuse_scene(prepared, lr, msi, tile=16, overlap=4)
    rel = float(np.linalg.norm(tiled - whole) / np.linalg.norm(whole))
    assert rel <= 8 * 2.0 ** -9, rel


def test_scene_attention_is_what_makes_attention_tiles_agree():
    """Without the first pass each tile would use its own attention: measurably worse than with it."""
    model = _model("attention")
    lr, msi = _inputs(32, 28)
    with torch.no_grad():
        whole = model(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None])[0].numpy()
    with_scene = _psnr(fuse_scene(model, lr, msi, tile=16, overlap=4), whole)
    local = _psnr(fuse_scene(_local_attention_model(model), lr, msi, tile=16, overlap=4), whole)
    assert local < with_scene - 6, (local, with_scene)


def _local_attention_model(model):
    """The same weights with tile-local attention: "attention" mode hidden from fuse_scene's first pass."""
    clone = csakd.create("student_tiny", bands=8, msi_bands=4, csa="attention", **NARROW).eval()
    clone.load_state_dict(model.state_dict())
    clone.config = clone.config.replace(csa="reference")  # fuse_scene then skips the scene statistics
    return clone


def test_bad_inputs_name_the_argument():
    model = _model()
    lr, msi = _inputs(8, 8)
    with pytest.raises(ValueError, match="lr_hsi: expected 8 bands"):
        fuse_scene(model, lr[:5], msi)
    with pytest.raises(ValueError, match="hr_msi: expected size"):
        fuse_scene(model, lr, msi[:, :-4])
    with pytest.raises(ValueError, match="tile/overlap"):
        fuse_scene(model, lr, msi, tile=8, overlap=8)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    import csakd
    from csakd.inference.tiled import fuse_scene

    def rss_peak_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1])

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def current_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])

    torch.manual_seed(0)
    model = csakd.create("student_tiny", bands=8, msi_bands=4).eval()
    out = {}
    for name, side in [("warmup", 24), ("small", 48), ("large", 96), ("whole_large", 96)]:
        rng = np.random.default_rng(0)
        lr = rng.random((8, side, side), dtype=np.float32)
        msi = rng.random((4, 4 * side, 4 * side), dtype=np.float32)
        result = np.zeros((8, 4 * side, 4 * side), np.float32)
        result[...] = 1  # touch the pages: the output is part of the baseline, not the increment
        reset_peak()
        base = current_kb()
        if name == "whole_large":
            with torch.no_grad():
                model(torch.from_numpy(lr)[None], torch.from_numpy(msi)[None])
        else:
            fuse_scene(model, lr, msi, tile=12, overlap=4, out=result)
        out[name] = rss_peak_kb() - base
    print(json.dumps(out))
""")


def test_peak_memory_is_bounded_by_the_tile_not_the_scene(tmp_path):
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    proc = run_python([str(script)], timeout=240)
    assert proc.returncode == 0, proc.stderr
    kb = json.loads(proc.stdout.strip().splitlines()[-1])
    # The large scene has 4x the pixels of the small one. Tiled, the extra memory stays that of a tile (plus the
    # per-pixel blending weights, 1/8 of the output here); whole-image inference needs many times more.
    weights_kb = 96 * 4 * 96 * 4 * 4 / 1024
    assert kb["large"] <= kb["small"] + weights_kb + 4096, kb
    assert kb["whole_large"] > 4 * kb["large"], kb
