"""The training step against a hand-written oracle of SPEC §4, the modes, schedules, noise, clipping, the
non-finite stop and the checkpoint files."""
import copy
import dataclasses
import json
import math

import pytest
import torch
from train_helpers import tiny_config

from csakd import losses
from csakd.io import save_model
from csakd.train import NonFiniteLoss, Trainer
from csakd.train.checkpoint import find_checkpoint, read_state, write_checkpoint
from csakd.train.trainer import build_network


def _first_batch(trainer):
    trainer.sampler.set_position(0, 0)
    return next(iter(trainer.loader))


def _assert_same_weights(a, b):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=ka)


def _oracle_online_step(config, batch):
    """SPEC §4 written out: the teacher steps on the batch, then the student distils its detached outputs."""
    teacher, student = build_network(config, "teacher"), build_network(config, "student")
    opt_t = torch.optim.AdamW(teacher.parameters(), lr=config.lr_teacher, weight_decay=0)
    opt_s = torch.optim.AdamW(student.parameters(), lr=config.lr_student, weight_decay=0)
    lr, msi, hr = batch["lr_hsi"], batch["hr_msi"], batch["hr_hsi"]
    yt, ft = teacher(lr, msi, return_features=True)
    losses.teacher_objective(yt, hr)["total"].backward()
    opt_t.step()
    ys, fs = student(lr, msi, return_features=True)
    losses.student_objective(ys, hr, yt.detach(), fs, ft.detach())["total"].backward()
    opt_s.step()
    return teacher, student


def test_online_step_matches_the_spec_oracle(tiny_train):
    config = tiny_config(snr_db=None)
    trainer = Trainer(config, tiny_train)
    batch = _first_batch(trainer)
    trainer.train_step(batch)
    teacher, student = _oracle_online_step(config, batch)
    _assert_same_weights(trainer.models["teacher"], teacher)
    _assert_same_weights(trainer.models["student"], student)


def test_student_mode_uses_the_reconstruction_objective_only(tiny_train):
    config = tiny_config(mode="student", snr_db=None)
    trainer = Trainer(config, tiny_train)
    assert set(trainer.models) == {"student"}
    batch = _first_batch(trainer)
    trainer.train_step(batch)
    student = build_network(config, "student")
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr_student, weight_decay=0)
    losses.teacher_objective(student(batch["lr_hsi"], batch["hr_msi"]), batch["hr_hsi"])["total"].backward()
    opt.step()
    _assert_same_weights(trainer.models["student"], student)


def test_offline_mode_distils_a_frozen_teacher(tiny_train, tmp_path):
    teacher = build_network(tiny_config(seed=5), "teacher")
    save_model(teacher, tmp_path / "teacher.safetensors")
    config = tiny_config(mode="offline", snr_db=None, teacher_checkpoint=str(tmp_path / "teacher.safetensors"))
    trainer = Trainer(config, tiny_train)
    assert set(trainer.models) == {"student"}
    batch = _first_batch(trainer)
    trainer.train_step(batch)
    _assert_same_weights(trainer.frozen_teacher, teacher)  # not trained
    student = build_network(config, "student")
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr_student, weight_decay=0)
    with torch.no_grad():
        yt, ft = teacher.eval()(batch["lr_hsi"], batch["hr_msi"], return_features=True)
    ys, fs = student(batch["lr_hsi"], batch["hr_msi"], return_features=True)
    losses.student_objective(ys, batch["hr_hsi"], yt, fs, ft)["total"].backward()
    opt.step()
    _assert_same_weights(trainer.models["student"], student)


def test_offline_teacher_must_match_the_data(tiny_train, tmp_path):
    save_model(build_network(tiny_config(bands=31), "teacher"), tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="teacher_checkpoint: expected a network for"):
        Trainer(tiny_config(mode="offline", teacher_checkpoint=str(tmp_path / "t.safetensors")), tiny_train)


def test_each_network_gets_its_own_noise_at_the_requested_snr(tiny_train):
    trainer = Trainer(tiny_config(snr_db=35.0, batch_size=4, crop=32), tiny_train)
    seen = {}
    for name, model in trainer.models.items():
        model.register_forward_pre_hook(lambda _m, args, _kw=None, name=name: seen.__setitem__(name, args[0].clone()))
    batch = _first_batch(trainer)
    trainer.train_step(batch)
    clean = batch["lr_hsi"]
    noise_t, noise_s = seen["teacher"] - clean, seen["student"] - clean
    assert not torch.equal(noise_t, noise_s)
    for noise in (noise_t, noise_s):
        snr = 10 * math.log10(float(clean.square().mean() / noise.square().mean()))
        assert abs(snr - 35.0) < 0.5


def test_schedules_reach_their_targets(tiny_train):
    config = tiny_config(epochs=4, step_epochs=2, gamma=0.5, val_every=10, snr_db=None, eta_min=1e-6)
    trainer = Trainer(config, tiny_train)
    trainer.fit()
    assert trainer.optimizers["teacher"].param_groups[0]["lr"] == pytest.approx(1e-6)
    assert trainer.optimizers["student"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 2)


def test_gradient_clipping_bounds_the_norm_seen_by_the_optimizer(tiny_train):
    trainer = Trainer(tiny_config(grad_clip=1e-3, snr_db=None), tiny_train)
    norms = []

    def record(optimizer, *_):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    for opt in trainer.optimizers.values():
        opt.register_step_pre_hook(record)
    trainer.train_step(_first_batch(trainer))
    assert len(norms) == 2 and all(n <= 1e-3 * (1 + 1e-5) for n in norms)


def test_non_finite_loss_names_step_batch_and_last_checkpoint(tiny_train, tmp_path):
    trainer = Trainer(tiny_config(ckpt_every=1, snr_db=None), tiny_train, run_dir=tmp_path / "run")
    real = trainer.impl
    calls = {"n": 0}

    def poisoned(pred, target, weights):
        calls["n"] += 1
        terms = real.teacher_objective(pred, target, weights)
        if calls["n"] == 2:
            terms["total"] = terms["total"] * float("nan")
        return terms

    trainer.impl = dataclasses.replace(real, teacher_objective=poisoned)
    with pytest.raises(NonFiniteLoss) as info:
        trainer.fit()
    message = str(info.value)
    assert "non-finite teacher loss" in message and "at step 2 (epoch 0, batch 1" in message
    assert f"{tmp_path / 'run' / 'last'} (step 1)" in message


def test_cpu_rejects_half_precision_and_unknown_backends(tiny_train):
    with pytest.raises(ValueError, match="precision: expected 'fp32' or 'auto' on CPU"):
        Trainer(tiny_config(precision="bf16"), tiny_train)
    with pytest.raises(ValueError, match="backend"):
        Trainer(tiny_config(backend="nonsense"), tiny_train)


def test_run_folder_holds_config_degradation_metrics_and_checkpoints(tiny_train, tiny_val, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(epochs=2, val_every=1), tiny_train, tiny_val, run_dir=run,
                      degradation=tiny_train.spec.to_dict())
    trainer.fit()
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert json.loads((run / "degradation.json").read_text())["psf_sigma"] == 3.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,time_s,")
    state = read_state(run / "last")
    assert state["step"] == 4 and state["epoch"] == 2 and state["batch"] == 0
    assert set(state["optimizers"]) == {"teacher", "student"}
    best = read_state(run / "best")["best"]
    assert best["value"] == max(r["val_student_psnr"] for r in rows)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tiny_config(), tiny_train, run_dir=run)


def test_checkpoint_swap_keeps_the_previous_one_when_a_write_fails(tmp_path, monkeypatch):
    model = build_network(tiny_config(), "student")
    write_checkpoint(tmp_path / "last", {"student": model}, {"step": 1})
    import csakd.io

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(csakd.io, "save_model", broken)
    with pytest.raises(OSError):
        write_checkpoint(tmp_path / "last", {"student": model}, {"step": 2})
    assert read_state(tmp_path / "last")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    # A crash between the two renames leaves only the previous folder: it is found.
    (tmp_path / "last").rename(tmp_path / ".last.old")
    assert find_checkpoint(tmp_path / "last") == tmp_path / ".last.old"


def test_config_round_trips_and_rejects_bad_values(tmp_path):
    config = tiny_config(snr_db=None, grad_clip=0.5)
    config.save(tmp_path / "c.json")
    assert type(config).load(tmp_path / "c.json") == config
    for bad, match in [(dict(mode="x"), "mode: expected one of"), (dict(crop=18), "crop: expected a multiple"),
                       (dict(mode="offline"), "teacher_checkpoint"), (dict(losses={"kdd": 1}), "losses: unknown"),
                       (dict(batch_size=0), "batch_size: expected a positive integer")]:
        with pytest.raises(ValueError, match=match):
            tiny_config(**bad)
    assert copy.copy(config) == config
