"""Checkpoints: csakd's safetensors files (round trip, atomic writes) and the released scripts' state dicts."""
import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import csakd
from csakd import io
from csakd.models import create


def released_state_dict(model, prefix="decoder."):
    """The model's weights under the released scripts' names, built by walking our modules (independent of
    csakd.io's own mapping): {b}conv1, {b}feat.{i}.MFB{j}.conv{k}, fuse_att.*, fuse, last."""
    out = {}

    def put(name, conv):
        out[f"{prefix}{name}.weight"] = conv.weight.detach().clone()
        if conv.bias is not None:
            out[f"{prefix}{name}.bias"] = conv.bias.detach().clone()

    for b in ("hm", "mh", "h", "m"):
        branch = model.branches[b]
        put(f"{b}conv1", branch.stem.conv)
        for i, clra in enumerate(branch.clras):
            for j, block in enumerate(clra.blocks, start=1):
                for k in range(1, 6):
                    put(f"{b}feat.{i}.MFB{j}.conv{k}", getattr(block, f"conv{k}"))
    for name in ("query_conv", "key_conv", "value_conv", "output_conv", "attention_weights"):
        put(f"fuse_att.{name}", getattr(model.csa, name))
    put("fuse", model.fuse)
    put("last", model.last)
    assert len(out) == len(model.state_dict())
    return out


def unused_hm_clra(prefix="decoder.", nf=32, gc=16):
    """The weights of the hm CLRA that the released student builds but never runs."""
    out = {}
    for j in (1, 2, 3):
        for k in range(1, 6):
            cin, cout = nf + gc * (k - 1), gc if k < 5 else nf
            out[f"{prefix}hmfeat.0.MFB{j}.conv{k}.weight"] = torch.randn(cout, cin, 3, 3)
            out[f"{prefix}hmfeat.0.MFB{j}.conv{k}.bias"] = torch.randn(cout)
    return out


def inputs(bands=16, msi_bands=4, lr=8, scale=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, bands, lr, lr, generator=g), torch.rand(1, msi_bands, scale * lr, scale * lr, generator=g))


# The student preset's depths at a narrow width keep most tests fast; the full widths are tested below.
NARROW = dict(nf=32, gc=16, attn_dim=32, h_groups=16)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(1)
    return create("student", bands=16, msi_bands=4, csa="reference", **NARROW)


def load_narrow(state, **kwargs):
    return io.load_reference_checkpoint(state, "student", **{"bands": 16, "msi_bands": 4, **NARROW, **kwargs})


# ---- released checkpoints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["decoder.", "module.decoder.", "_orig_mod.decoder.", "decoder._orig_mod.",
                                    "module._orig_mod.decoder."])
def test_student_checkpoint_loads_under_every_prefix(student, prefix):
    state = {**released_state_dict(student, prefix), **unused_hm_clra(prefix)}
    loaded = load_narrow(state)
    assert loaded.config.csa == "reference"
    lr_hsi, hr_msi = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(lr_hsi, hr_msi), student(lr_hsi, hr_msi))


def test_teacher_checkpoint_loads_and_reproduces_outputs():
    torch.manual_seed(2)
    teacher = create("teacher", bands=16, msi_bands=4, csa="reference")
    loaded = io.load_reference_checkpoint(released_state_dict(teacher), "teacher", bands=16, msi_bands=4)
    own = teacher.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
    lr_hsi, hr_msi = inputs(lr=4)
    with torch.no_grad():
        assert torch.equal(loaded(lr_hsi, hr_msi, return_features=True)[0], teacher(lr_hsi, hr_msi))


def test_full_student_checkpoint_ignores_the_unused_hm_weights_with_a_note(caplog):
    torch.manual_seed(3)
    student = create("student", bands=16, msi_bands=4, csa="reference")
    state = {**released_state_dict(student), **unused_hm_clra(nf=86, gc=43)}
    with caplog.at_level(logging.INFO, logger="csakd.io"):
        loaded = io.load_reference_checkpoint(state, "student", bands=16, msi_bands=4)
    notes = [r for r in caplog.records if r.name == "csakd.io" and "hmfeat" in r.getMessage()]
    assert len(notes) == 1 and "ignoring 30 hmfeat.* weights" in notes[0].getMessage()
    lr_hsi, hr_msi = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(lr_hsi, hr_msi), student(lr_hsi, hr_msi))


def test_no_note_without_hm_weights(student, caplog):
    with caplog.at_level(logging.INFO, logger="csakd.io"):
        load_narrow(released_state_dict(student))
    assert not [r for r in caplog.records if r.name == "csakd.io"]


@pytest.mark.parametrize("suffix,wrap", [(".pth", None), (".pt", "state_dict"), (".pth", "model"),
                                         (".safetensors", None)])
def test_checkpoint_files_and_wrapped_dicts(student, tmp_path, suffix, wrap):
    state = released_state_dict(student)
    path = tmp_path / f"best{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state if wrap is None else {wrap: state, "epoch": 12}, path)
    loaded = load_narrow(path)
    lr_hsi, hr_msi = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(lr_hsi, hr_msi), student(lr_hsi, hr_msi))


def test_missing_and_unknown_keys_are_listed(student):
    state = released_state_dict(student, "module.decoder.")
    del state["module.decoder.hfeat.2.MFB3.conv4.bias"], state["module.decoder.fuse_att.key_conv.weight"]
    state["module.decoder.extra.weight"] = torch.zeros(3)
    state["module.decoder.mfeat.1.MFB1.conv1.weight"] = torch.zeros(3)   # the student has one m CLRA
    with pytest.raises(ValueError) as err:
        load_narrow(state)
    message = str(err.value)
    assert message.startswith("path_or_state_dict: expected the released 'student' weights")
    assert ("unknown keys ['module.decoder.extra.weight', 'module.decoder.mfeat.1.MFB1.conv1.weight']"
            in message)
    assert "missing keys ['decoder.hfeat.2.MFB3.conv4.bias', 'decoder.fuse_att.key_conv.weight']" in message


def test_the_teacher_needs_its_hm_weights():
    narrow = dict(nf=32, gc=16, attn_dim=32)
    state = released_state_dict(create("teacher", bands=16, msi_bands=4, csa="reference", **narrow))
    del state["decoder.hmfeat.5.MFB1.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['decoder.hmfeat.5.MFB1.conv1.weight'\]"):
        io.load_reference_checkpoint(state, "teacher", bands=16, msi_bands=4, **narrow)
    with pytest.raises(ValueError, match=r"csa: expected no override.*got 'attention'"):
        io.load_reference_checkpoint(state, "teacher", csa="attention")


def test_shape_mismatches_are_named(student):
    state = released_state_dict(student, "module.decoder.")
    with pytest.raises(ValueError) as err:
        load_narrow(state, bands=17)
    message = str(err.value)
    assert "state_dict: shape mismatches" in message
    assert "module.decoder.hconv1.weight: expected (32, 17, 3, 3), got (32, 16, 3, 3)" in message
    assert "module.decoder.last.weight: expected (17, 17, 3, 3), got (16, 16, 3, 3)" in message


def test_bad_checkpoint_containers_are_refused(student, tmp_path):
    with pytest.raises(ValueError, match=r"path_or_state_dict: expected a path or a state dict, got list"):
        io.load_reference_checkpoint([1, 2], "student")
    with pytest.raises(ValueError, match=r"expected tensors for every key, got other values for \['decoder.x'\]"):
        io.load_reference_checkpoint({"decoder.x": 3}, "student")
    state = released_state_dict(student)
    state["module.decoder.last.weight"] = state["decoder.last.weight"]
    with pytest.raises(ValueError, match=r"expected each weight once, got 'decoder.last.weight' and "
                                         r"'module.decoder.last.weight'"):
        load_narrow(state)
    pickled = tmp_path / "module.pth"
    torch.save(student, pickled)   # a whole module: not loadable with weights_only=True
    with pytest.raises(ValueError, match=r"path_or_state_dict: expected a checkpoint of tensors"):
        load_narrow(pickled)
    with pytest.raises(FileNotFoundError, match="path_or_state_dict"):
        io.load_reference_checkpoint(tmp_path / "absent.pth", "student")


def test_released_name_of_every_kind_of_key():
    assert io.released_name("branches.mh.stem.conv.bias") == "mhconv1.bias"
    assert io.released_name("branches.h.clras.3.blocks.2.conv5.weight") == "hfeat.3.MFB3.conv5.weight"
    assert io.released_name("csa.attention_weights.weight") == "fuse_att.attention_weights.weight"
    assert io.released_name("last.weight") == "last.weight"
    with pytest.raises(ValueError, match="name: expected a DTSNet state-dict key, got 'head.weight'"):
        io.released_name("head.weight")


# ---- csakd's own checkpoints ------------------------------------------------------------------------------

def tiny(seed):
    torch.manual_seed(seed)
    return create("student_tiny", bands=16, msi_bands=4, csa="attention")


def test_save_load_round_trip(tmp_path):
    model = tiny(3)
    path = tmp_path / "student.safetensors"
    model.save(path)
    loaded = csakd.load(path)
    assert loaded.config == model.config
    lr_hsi, hr_msi = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(lr_hsi, hr_msi), model(lr_hsi, hr_msi))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "csakd.model" and meta["format_version"] == "1"
    assert meta["csakd_version"] == csakd.__version__
    assert json.loads(meta["config"]) == model.config.to_dict()
    assert (path.stat().st_mode & 0o777) == 0o644


def test_load_model_refuses_foreign_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match=r"path: expected metadata format 'csakd.model'.*got None"):
        io.load_model(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="path: expected a safetensors file written by csakd.save_model"):
        io.load_model(garbage)
    with pytest.raises(FileNotFoundError, match="path: expected an existing csakd model file"):
        io.load_model(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="model: expected a csakd DTSNet.*got Linear"):
        io.save_model(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_save_leaves_the_old_file_intact(tmp_path, monkeypatch, error):
    path = tmp_path / "model.safetensors"
    old = tiny(4)
    old.save(path)
    before = path.read_bytes()

    def write_half_then_fail(f, data):
        f.write(memoryview(data)[: len(data) // 2])
        raise error

    monkeypatch.setattr(csakd._files, "_write_chunks", write_half_then_fail)
    with pytest.raises(type(error)):
        tiny(5).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temporary file left behind
    monkeypatch.undo()
    lr_hsi, hr_msi = inputs()
    with torch.no_grad():
        assert torch.equal(csakd.load(path)(lr_hsi, hr_msi), old(lr_hsi, hr_msi))


def test_save_overwrites_and_keeps_permissions(tmp_path):
    path = tmp_path / "model.safetensors"
    tiny(6).save(path)
    path.chmod(0o600)
    new = tiny(7)
    new.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert csakd.load(path).state_dict()["last.weight"].equal(new.state_dict()["last.weight"])
