"""`csakd.export` and `csakd export`: ONNX and .pt2 files that reproduce the eager model at shapes other than
the traced one, refusal of a disagreeing file, the model card, the command line and its errors."""
import datetime
import functools
import hashlib
import json
import re
import shlex
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import csakd
import csakd.export as export_module
from csakd.cli import main
from csakd.models.csa import MODES

TINY = ("student_tiny", "teacher_tiny")
BOUND = export_module.MAX_REL_L2
# Inputs of the tests' own checks: other shapes and another seed than the export's built-in check uses.
OWN_SIZES = ((2, 16, 16), (1, 12, 20), (1, 5, 7))


def tiny(preset, csa="attention"):
    torch.manual_seed(0)
    return csakd.create(preset, bands=8, msi_bands=4, csa=csa).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(preset, csa, format) -> (model, result), each exported once per module."""
    folder = tmp_path_factory.mktemp("exported")

    @functools.lru_cache(maxsize=None)
    def run(preset, csa, format):
        model = tiny(preset, csa)
        return model, csakd.export(model, folder / f"{preset}_{csa}.{format}")

    return run


def rel_l2(out, ref):
    out, ref = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    return float((out - ref).norm() / ref.norm())


def own_samples(config):
    return export_module.sample_inputs(config, OWN_SIZES, seed=1234)


def eager(model, lr, msi):
    with torch.no_grad():
        return model(lr, msi)


# ---- ONNX -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("csa", MODES)
@pytest.mark.parametrize("preset", TINY)
def test_onnx_file_matches_the_eager_model_at_other_batches_and_sizes(exported, preset, csa):
    model, result = exported(preset, csa, "onnx")
    assert result.format == "onnx" and result.path.is_file()
    assert [(c.batch, c.lr_size) for c in result.checks] == [(b, (h, w)) for b, h, w in export_module.SAMPLE_SIZES]
    assert all(c.rel_l2 <= BOUND for c in result.checks)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for lr, msi in own_samples(model.config):
        (out,) = session.run(["hr_hsi"], {"lr_hsi": lr.numpy(), "hr_msi": msi.numpy()})
        ref = eager(model, lr, msi)
        assert out.dtype == np.float32 and out.shape == tuple(ref.shape)
        assert rel_l2(out, ref) <= BOUND


def test_onnx_graph_is_standard_operators_at_the_opset_with_named_dynamic_inputs(exported):
    _, result = exported("student_tiny", "attention", "onnx")
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    assert {(o.domain or "", o.version) for o in proto.opset_import} == {("", export_module.DEFAULT_OPSET)}
    assert {n.domain for n in proto.graph.node} == {""} and not proto.functions

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    lr, msi = proto.graph.input
    (out,) = proto.graph.output
    assert (lr.name, msi.name, out.name) == ("lr_hsi", "hr_msi", "hr_hsi")
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in (lr, msi, out))
    assert dims(lr) == ["batch", 8, "h", "w"]
    assert dims(msi) == ["batch", 4, "4*h", "4*w"]
    assert dims(out) == ["batch", 8, "4*h", "4*w"]


def test_onnx_opset_can_be_chosen_and_is_checked(tmp_path):
    result = csakd.export(tiny("student_tiny", "sum"), tmp_path / "m.onnx", opset=20)
    assert result.opset == 20 and result.card["opset"] == 20
    assert {o.version for o in onnx.load(str(result.path)).opset_import if not o.domain} == {20}


def test_onnx_takes_the_reference_backend_only(tmp_path):
    with pytest.raises(ValueError, match=r"^backend: ONNX export takes the reference path only .* got 'cuda'$"):
        csakd.export(tiny("student_tiny"), tmp_path / "m.onnx", backend="cuda")
    assert list(tmp_path.iterdir()) == []


# ---- torch.export (.pt2) ------------------------------------------------------------------------------------

def test_pt2_program_matches_the_eager_model_and_keeps_hr_equal_scale_times_lr(exported):
    # teacher_tiny's .pt2 round trip is part of the command-line test below
    model, result = exported("student_tiny", "attention", "pt2")
    assert result.format == "pt2" and result.opset is None
    assert all(c.rel_l2 <= BOUND for c in result.checks)
    program = torch.export.load(result.path)
    module = program.module()
    for lr, msi in own_samples(model.config):
        assert rel_l2(eager(module, lr, msi), eager(model, lr, msi)) <= BOUND
    assert not [n for n in program.graph.nodes
                if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                and n.target.namespace not in ("aten", "prims")]
    lr, msi = own_samples(model.config)[1]
    with pytest.raises(Exception, match="hr_msi"):  # the derived dims are kept as a guard of the program
        module(lr, msi[..., :-1])


def test_pt2_keeps_the_custom_clrb_op_of_the_cuda_backend(tmp_path):
    from csakd.ops import clrb

    if clrb.LOAD_ERROR is not None:
        pytest.skip(f"the C++ extension is not built: {clrb.LOAD_ERROR}")
    model = tiny("student_tiny", "reference")
    result = csakd.export(model, tmp_path / "fast.pt2", backend="cuda")
    assert result.backend == "cuda" and all(c.rel_l2 <= BOUND for c in result.checks)
    assert "csakd::clrb_forward" in result.card["custom_ops"]
    assert "csakd.ops.clrb" in result.card["requires_imports"]
    targets = {str(n.target) for n in torch.export.load(result.path).graph.nodes if n.op == "call_function"}
    assert "csakd.clrb_forward.default" in targets


def test_pt2_export_of_a_custom_op_without_fake_implementation_says_so(tmp_path, monkeypatch):
    from csakd.models.blocks import clra_reference
    from csakd.ops import backend as backends

    @torch.library.custom_op("csakd_test::opaque_clra", mutates_args=())
    def opaque_clra(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                    groups: int) -> torch.Tensor:
        n = len(weights) // 5
        params = [(weights[5 * i:5 * i + 5], biases[5 * i:5 * i + 5]) for i in range(n)]
        return clra_reference(x, params, groups)

    def clra(x, clrb_params, groups):
        return opaque_clra(x, [w for ws, _ in clrb_params for w in ws], [b for _, bs in clrb_params for b in bs],
                           groups)

    monkeypatch.setitem(backends.FAST_IMPLS["clrb"], "cuda", (lambda: {"clra": clra}, lambda *a: None))
    monkeypatch.setitem(backends.EXPLICIT, "cuda", {"clrb": "cuda"})
    backends.clear_cache()
    try:
        with pytest.raises(ValueError, match=r"^backend: torch.export could not trace the custom ops of backend "
                                             r"'cuda' \(.*\); export with backend 'reference' instead$"):
            csakd.export(tiny("student_tiny"), tmp_path / "m.pt2", backend="cuda")
    finally:
        backends.clear_cache()
    assert list(tmp_path.iterdir()) == []


# ---- refusal and writing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("format, existing", [("onnx", False), ("pt2", True)])
def test_a_disagreeing_export_is_refused_and_nothing_is_written(tmp_path, monkeypatch, format, existing):
    run_file = export_module.run_file

    def perturbed(fmt, path, samples):  # what a wrong graph would compute: 1e-4 relative off
        return [out * (1 + 1e-4) for out in run_file(fmt, path, samples)]

    monkeypatch.setattr(export_module, "run_file", perturbed)
    if existing:  # an earlier export at the same name stays as it was
        target = tmp_path / f"m.{format}"
        target.write_bytes(b"an earlier export")
    else:  # no file, no card, and none of the folders made for them
        target = tmp_path / "new" / "deeper" / f"m.{format}"
    with pytest.raises(ValueError, match=r"^model: the exported .* disagrees with the eager model: relative L2 "
                                         r"error 0\.0001 > bound 1e-05 at batch \d, LR \d+x\d+ .*nothing written"):
        csakd.export(tiny("student_tiny", "sum"), target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["m." + format] if existing else [])
    if existing:
        assert target.read_bytes() == b"an earlier export"


def test_an_error_just_under_the_bound_passes(tmp_path, monkeypatch):
    """The check compares the relative L2 error of each sample with the bound, nothing stricter."""
    run_file = export_module.run_file
    monkeypatch.setattr(export_module, "run_file",
                        lambda fmt, path, samples: [o * (1 + BOUND / 2) for o in run_file(fmt, path, samples)])
    result = csakd.export(tiny("student_tiny", "sum"), tmp_path / "m.pt2")
    assert all(BOUND / 4 < c.rel_l2 <= BOUND for c in result.checks)


def test_replaces_an_existing_file_and_leaves_the_callers_model_as_it_was(tmp_path):
    target = tmp_path / "m.pt2"
    target.write_bytes(b"old")
    target.chmod(0o640)
    model = csakd.create("student_tiny", bands=8, msi_bands=4, csa="sum", backend="auto", dtype=torch.float32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = csakd.export(model, target)
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.pt2.card.json"]
    assert result.card_path == tmp_path / "m.pt2.card.json"
    # The export ran on a CPU float32 reference copy: the model keeps its mode, backend, dtype and weights.
    assert model.training and model.backend == "auto" and model.inference_dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, message", [
    (dict(path="m.onnx", format="pt2"), r"^path: expected a file ending in \.pt2 for format 'pt2', got '.*m\.onnx'$"),
    (dict(path="m.bin"), r"^path: expected a file ending in one of \('\.onnx', '\.pt2'\) .*got '.*m\.bin'$"),
    (dict(path="m.onnx", format="tflite"), r"^format: expected one of \('onnx', 'pt2'\), got 'tflite'$"),
    (dict(path="m.pt2", opset=18), r"^opset: applies to format 'onnx' only"),
    (dict(path="m.onnx", opset=0), r"^opset: expected a positive integer, got 0$"),
    (dict(path="m.pt2", backend="fast"), r"^backend: expected one of .*, got 'fast'$"),
])
def test_argument_errors(tmp_path, kwargs, message):
    kwargs["path"] = tmp_path / kwargs["path"]
    with pytest.raises(ValueError, match=message):
        csakd.export(tiny("student_tiny"), **kwargs)
    with pytest.raises(ValueError, match=r"^model: expected a csakd DTSNet .*got Linear$"):
        csakd.export(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"^path: expected a folder at '.*file', got a file$"):
        csakd.export(tiny("student_tiny"), tmp_path / "file" / "m.onnx")


# ---- the model card ---------------------------------------------------------------------------------------------

def test_model_card_describes_the_file(exported):
    model, result = exported("student_tiny", "attention", "onnx")
    card = json.loads(result.card_path.read_text())
    assert result.card_path.name == "student_tiny_attention.onnx.card.json"
    assert card == json.loads(json.dumps(result.card))
    config = model.config
    assert card["file"] == result.path.name
    assert card["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert (card["format"], card["opset"], card["backend"]) == ("onnx", export_module.DEFAULT_OPSET, "reference")
    assert card["graph"] == "reference path: standard operators only"
    assert "Conv" in card["operators"] and "Resize" in card["operators"]
    assert card["preset"] == "student_tiny" and card["config"] == config.to_dict()
    assert (card["bands"], card["msi_bands"], card["scale"], card["csa"]) == (8, 4, 4, "attention")
    normalisation = getattr(config, "normalisation", None)
    assert card["normalisation"] == (None if normalisation is None else json.loads(json.dumps(normalisation)))
    assert card["inputs"] == [{"name": "lr_hsi", "shape": ["batch", 8, "h", "w"], "dtype": "float32"},
                              {"name": "hr_msi", "shape": ["batch", 4, "4*h", "4*w"], "dtype": "float32"}]
    assert card["outputs"] == [{"name": "hr_hsi", "shape": ["batch", 8, "4*h", "4*w"], "dtype": "float32"}]
    assert (card["layout"], card["dtype"]) == ("NCHW", "float32")
    assert set(card["dynamic_dims"]) == {"batch", "h", "w", "4*h", "4*w"}
    verification = card["verification"]
    assert verification["bound_rel_l2"] == BOUND
    assert verification["checks"] == [c.to_dict() for c in result.checks]
    assert verification["runtime"] == "onnxruntime CPUExecutionProvider"
    assert card["versions"]["csakd"] == csakd.__version__ and card["versions"]["torch"] == torch.__version__
    assert card["versions"]["onnx"] == onnx.__version__
    assert card["versions"]["onnxruntime"] == onnxruntime.__version__
    date = datetime.datetime.fromisoformat(card["date"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 3600


# ---- the command line ---------------------------------------------------------------------------------------

def docs_quick_start():
    """The first bash and python blocks of docs/deploy.md: save a model, export it, run it with onnxruntime."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```(bash|python)\n(.*?)```", text, re.S)
    bash = next(body for kind, body in blocks if kind == "bash").strip().splitlines()
    python = next(body for kind, body in blocks if kind == "python")
    return bash, python


def test_cli_exports_a_saved_model_end_to_end_as_the_docs_show(tmp_path, monkeypatch, capsys):
    (save_line, export_line), snippet = docs_quick_start()
    monkeypatch.chdir(tmp_path)
    python, flag, code = shlex.split(save_line)
    assert (python, flag) == ("python", "-c")
    exec(code, {})  # model.save(path) of an untrained student_tiny
    program, *argv = shlex.split(export_line)
    assert program == "csakd" and argv[0] == "export" and "--out" in argv
    out = Path(argv[argv.index("--out") + 1])
    assert out.parent != Path(".") and not out.parent.exists()  # the command creates the folder
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"to {out} " in printed and "ONNX opset 18, reference path" in printed
    card = json.loads(out.with_name(out.name + ".card.json").read_text())
    checkpoint = argv[argv.index("--checkpoint") + 1]
    assert card["source"] == checkpoint
    for check in card["verification"]["checks"]:
        h, w = check["lr_size"]
        assert (f"check batch {check['batch']}, LR {h}x{w}: max abs error {check['max_abs']:.2e}, relative L2 "
                f"error {check['rel_l2']:.2e} (bound 1e-05)") in printed
    exec(snippet, {})  # the docs' five lines of onnxruntime, as written
    assert capsys.readouterr().out.strip() == f"(1, {card['bands']}, 64, 64)"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    loaded = csakd.load(checkpoint).eval()
    for lr, msi in own_samples(loaded.config):
        (fused,) = session.run(None, {"lr_hsi": lr.numpy(), "hr_msi": msi.numpy()})
        assert rel_l2(fused, eager(loaded, lr, msi)) <= BOUND


def test_cli_exports_the_chosen_network_of_a_checkpoint_folder(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    tiny("student_tiny").save(folder / "student.safetensors")
    tiny("teacher_tiny", "reference").save(folder / "teacher.safetensors")
    out = tmp_path / "teacher.pt2"
    assert main(["export", "--checkpoint", str(folder), "--network", "teacher", "--format", "pt2",
                 "--out", str(out)]) == 0
    assert "exported teacher_tiny (csa reference" in capsys.readouterr().out
    card = json.loads((tmp_path / "teacher.pt2.card.json").read_text())
    assert card["preset"] == "teacher_tiny" and card["source"] == str(folder / "teacher.safetensors")
    assert card["custom_ops"] == [] and "opset" not in card


def _cli_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_cli_errors_are_one_line(tmp_path, capsys):
    saved = tmp_path / "model.safetensors"
    tiny("student_tiny").save(saved)
    base = ["export", "--checkpoint", str(saved)]
    assert _cli_error(["export", "--checkpoint", str(tmp_path / "nope.safetensors"), "--format", "onnx",
                       "--out", str(tmp_path / "m.onnx")], capsys) == \
        f"csakd export: error: checkpoint: no such file or folder {str(tmp_path / 'nope.safetensors')!r}"
    assert _cli_error(base + ["--format", "onnx", "--out", str(tmp_path / "m.pt2")], capsys) == \
        f"csakd export: error: out: expected a file ending in .onnx for --format onnx, got {str(tmp_path / 'm.pt2')!r}"
    assert _cli_error(base + ["--network", "teacher", "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                      capsys).startswith("csakd export: error: network: applies to a run or checkpoint folder")
    assert _cli_error(base + ["--format", "pt2", "--opset", "18", "--out", str(tmp_path / "m.pt2")],
                      capsys).startswith("csakd export: error: opset: applies to --format onnx only")
    assert _cli_error(base + ["--format", "onnx", "--backend", "cuda", "--out", str(tmp_path / "m.onnx")],
                      capsys).startswith("csakd export: error: backend: ONNX export takes the reference path only")
    (tmp_path / "taken").write_text("")
    assert _cli_error(base + ["--format", "onnx", "--out", str(tmp_path / "taken" / "m.onnx")],
                      capsys).startswith("csakd export: error: path: expected a folder at")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "taken"]


def test_cli_scene_attention_adds_the_attention_input(tmp_path, capsys):
    saved = tmp_path / "model.safetensors"
    model = tiny("student_tiny")
    model.save(saved)
    out = tmp_path / "scene.onnx"
    assert main(["export", "--checkpoint", str(saved), "--format", "onnx", "--out", str(out),
                 "--scene-attention"]) == 0
    card = json.loads((tmp_path / "scene.onnx.card.json").read_text())
    assert [i["name"] for i in card["inputs"]] == ["lr_hsi", "hr_msi", "attention"]
    assert card["inputs"][2]["shape"] == [1, 4, 8, 8]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    loaded = csakd.load(saved).eval()
    lr, msi = own_samples(loaded.config)[0]
    attention = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).softmax(-1)
    (fused,) = session.run(None, {"lr_hsi": lr.numpy(), "hr_msi": msi.numpy(), "attention": attention.numpy()})
    with torch.no_grad():
        assert rel_l2(fused, loaded(lr, msi, attention=attention)) <= BOUND
    reference_mode = tmp_path / "reference.safetensors"
    tiny("student_tiny", "reference").save(reference_mode)
    assert _cli_error(["export", "--checkpoint", str(reference_mode), "--format", "onnx", "--out",
                       str(tmp_path / "r.onnx"), "--scene-attention"], capsys).startswith(
        "csakd export: error: scene_attention: applies to CSA mode 'attention' only")
    assert not (tmp_path / "r.onnx").exists()


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--checkpoint", "--network", "--format", "--out", "--opset", "--backend", "--scene-attention"):
        assert option in text
    assert "onnx" in text and "pt2" in text and "student,teacher" in text


# ---- paper sizes and AOTInductor (slow) ---------------------------------------------------------------------

@pytest.mark.slow
def test_paper_presets_export_to_onnx(tmp_path):
    """The paper's student in every CSA mode and the teacher in one: the CSA is the same module in both (nf 86,
    attn_dim 64, 4 heads), so the teacher's other modes add no new graph, only a minute each on two cores."""
    for preset, csa in [("student", mode) for mode in MODES] + [("teacher", "attention")]:
        torch.manual_seed(0)
        start = time.perf_counter()
        result = csakd.export(csakd.create(preset, csa=csa), tmp_path / f"{preset}_{csa}.onnx")
        figures = ", ".join(f"b{c.batch} {c.lr_size}: {c.max_abs:.1e}/{c.rel_l2:.1e}" for c in result.checks)
        print(f"{preset} {csa}: {time.perf_counter() - start:.0f} s, max abs/rel L2 {figures}")
        assert all(c.rel_l2 <= BOUND for c in result.checks)
        result.path.unlink()  # the teacher is 100 MB a file


@pytest.mark.slow
def test_aot_inductor_compiles_and_runs_the_reference_pt2(exported, tmp_path):
    model, result = exported("student_tiny", "attention", "pt2")
    program = torch.export.load(result.path)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "compiled.pt2"))
    compiled = torch._inductor.aoti_load_package(package)
    for lr, msi in own_samples(model.config):
        assert rel_l2(compiled(lr, msi), eager(model, lr, msi)) <= BOUND
