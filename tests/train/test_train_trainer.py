"""The training step against a hand-written oracle of the training protocol (docs/data.md), the modes, schedules, noise, clipping, the
non-finite stop and the checkpoint files."""
import copy
import dataclasses
import json
import math
import re
import time

import pytest
import torch
from train_helpers import tiny_config

from csakd import losses
from csakd.io import save_model
from csakd.train import NonFiniteLoss, TrainConfig, Trainer
from csakd.train.budget import TIMED_STEPS, CheckpointClock, make_plan
from csakd.train.checkpoint import find_checkpoint, read_state, write_checkpoint
from csakd.train.schedule import learning_rate
from csakd.train.trainer import build_network

pytestmark = pytest.mark.usefixtures("one_thread")


def _first_batch(trainer):
    trainer.sampler.set_position(0, 0)
    return next(iter(trainer.loader))


def _assert_same_weights(a, b):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=ka)


def _oracle_online_step(config, batch):
    """The protocol written out: the teacher steps on the batch, then the student distils its detached outputs."""
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


def test_cpu_rejects_fp16_and_unknown_backends(tiny_train):
    # bf16 autocast runs on CPUs; fp16 autocast does not, and is refused.
    with pytest.raises(ValueError, match="precision: expected 'fp32', 'bf16' or 'auto' on a CPU, got 'fp16'"):
        Trainer(tiny_config(precision="fp16"), tiny_train)
    assert Trainer(tiny_config(precision="bf16"), tiny_train).amp == torch.bfloat16
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


# -- data fit, crops per image, time budget, checkpoints ------------------------------------------------------
def _unnamed(item, side=None):
    """A dataset item as a plain dict without a name, cut to an HR side of `side` pixels if given."""
    out = {k: item[k] for k in ("lr_hsi", "hr_msi", "hr_hsi", "min", "max")}
    if side is not None:
        out.update(lr_hsi=out["lr_hsi"][:, :side // 4, :side // 4], hr_msi=out["hr_msi"][:, :side, :side],
                   hr_hsi=out["hr_hsi"][:, :side, :side])
    return out


def test_crops_per_image_give_n_times_images_samples_per_epoch(tiny_train):
    trainer = Trainer(tiny_config(crops_per_image=3, batch_size=2), tiny_train)
    assert trainer.sampler.batches_per_epoch == 6  # 4 images x 3 crops / batch 2
    trainer.sampler.set_position(0, 0)
    images = torch.cat([batch["index"] for batch in trainer.loader]).tolist()
    assert sorted(images) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    view = trainer.loader.dataset
    crops = [view[(0, k)]["hr_hsi"] for k in range(3)]  # the three crops of image 0 in epoch 0
    assert not (torch.equal(crops[0], crops[1]) and torch.equal(crops[1], crops[2]))
    # A pure function of (seed, epoch, sample): drawn again identically, differently in the next epoch.
    assert all(torch.equal(view[(0, k)]["hr_hsi"], crops[k]) for k in range(3))
    assert not all(torch.equal(view[(1, k)]["hr_hsi"], crops[k]) for k in range(3))


def test_the_default_crop_fits_the_data_and_a_larger_one_is_refused_before_any_file(tiny_train, tmp_path):
    run = tmp_path / "run"
    assert Trainer(tiny_config(crop=None), tiny_train, run_dir=run).config.crop == 32  # 128 clipped to the images
    with pytest.raises(ValueError, match=r"^crop: expected at most 32 \(the smallest training image, "
                                         r"generated0_\d+, is 32x32\), got 64$"):
        Trainer(tiny_config(crop=64), tiny_train, run_dir=run)
    with pytest.raises(ValueError, match=r"^batch_size: expected at most 4 \(4 training images x 1 crop per "
                                         r"image\), got 6; or raise crops_per_image to 2$"):
        Trainer(tiny_config(batch_size=6), tiny_train, run_dir=run)
    assert Trainer(tiny_config(batch_size=6, crops_per_image=2), tiny_train).sampler.batches_per_epoch == 1
    assert list(tmp_path.iterdir()) == []


def test_samples_left_out_of_every_epoch_are_announced_once(tiny_train):
    lines = []
    trainer = Trainer(tiny_config(batch_size=3, epochs=2, val_every=10), tiny_train, echo=lines.append)
    trainer.fit()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == ["warning: 4 samples per epoch (4 training images x 1 crop per image) do not fill batches "
                        "of 3: 1 (different ones each epoch) are left out of every epoch; crops_per_image 3 or "
                        "batch_size 2 uses them all"]
    assert trainer.state["step"] == 2  # one batch of 3 per epoch
    assert Trainer(tiny_config(batch_size=3, crops_per_image=3), tiny_train).left_out is None


def test_items_without_a_name_are_named_by_their_index(tiny_train):
    small, large = _unnamed(tiny_train[0], side=16), _unnamed(tiny_train[1])
    with pytest.raises(ValueError, match=r"crop: expected at most 16 \(the smallest training image, #0, is 16x16\)"):
        Trainer(tiny_config(crop=32, batch_size=1), [small, large])
    # A plain list is not held in memory by the dataset, so only its first item is checked up front; a smaller
    # one later is reported, by its index, when it is first cropped.
    trainer = Trainer(tiny_config(crop=32, batch_size=2, augment=False), [large, small])
    with pytest.raises(ValueError, match=r"crop: expected at most 16 \(the item #1 is 16x16\), got 32"):
        trainer.fit()


def test_make_plan_fits_the_remaining_steps_and_validations_in_the_budget():
    config = tiny_config(minutes=1.0, epochs=600, step_epochs=100, val_every=None)
    # 60 s budget, 10 s spent, 5 s kept for the final validation: 45 s for steps of 1 s and validations of 5 s.
    # 5 epochs of 4 steps, 6 already done: 14 steps + 5 validations (every epoch) = 39 s; 6 epochs need 48 s.
    plan = make_plan(config, step_seconds=1.0, timed_steps=5, val_seconds=5.0, step=6, spent_s=10.0, epoch=1,
                     steps_per_epoch=4)
    assert (plan["epochs"], plan["steps"], plan["val_every"], plan["step_epochs"], plan["from_epoch"]) == (5, 20, 1, 1, 2)
    # Long budgets: about ten validations, and the student keeps its 6 decays.
    plan = make_plan(config.replace(minutes=100.0), 1.0, 5, 5.0, 6, 10.0, 1, 4)
    assert plan["epochs"] == 600 and plan["val_every"] == 60 and plan["step_epochs"] == 100
    plan = make_plan(config.replace(minutes=10.0), 1.0, 5, 5.0, 6, 10.0, 1, 4)
    assert plan["epochs"] == 135 and plan["val_every"] == 13 and plan["step_epochs"] == 22
    assert 4 * plan["epochs"] - 6 + plan["epochs"] // 13 * 5 <= 600 - 15 < 4 * 136 - 6 + 136 // 13 * 5
    # A budget nearly spent still lets the epoch under way (the third) finish.
    assert make_plan(config, 1.0, 5, 5.0, step=6, spent_s=58.0, epoch=2, steps_per_epoch=2)["epochs"] == 3


def test_time_budget_stops_the_run_and_sizes_the_schedule(tiny_train, tiny_val, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(epochs=600, minutes=0.1, val_every=None, step_epochs=100, eta_min=1e-6)
    lines = []
    trainer = Trainer(config, tiny_train, tiny_val, run_dir=run, echo=lines.append)
    start = time.monotonic()
    summary = trainer.fit()
    took = time.monotonic() - start
    plan = summary["plan"]
    # Sized after the first step and TIMED_STEPS timed ones (600 epochs of 2 steps would take minutes).
    assert plan["made_at_step"] == 1 + TIMED_STEPS and plan["timed_steps"] == TIMED_STEPS
    assert 1 <= plan["epochs"] < 600 and plan["steps"] == 2 * plan["epochs"]
    assert plan["step_epochs"] == max(1, round(plan["epochs"] / 6))
    # Stopped by the budget (less the final validation) or at the end of the sized schedule, whichever first.
    state = read_state(run / "last")
    assert state["epoch"] <= plan["epochs"]
    assert state["epoch"] == plan["epochs"] or state["wall_s"] + plan["val_seconds"] >= 6.0
    assert took < 6.0 + 10  # the final validation and checkpoint come after the budget
    # The plan is in the saved config and sets the rates: the teacher's cosine ends at eta_min after its epochs.
    saved = TrainConfig.load(run / "config.json")
    assert saved.plan == plan
    assert learning_rate(saved, "teacher", plan["epochs"]) == pytest.approx(1e-6)
    for name, optimizer in trainer.optimizers.items():
        assert optimizer.param_groups[0]["lr"] == learning_rate(saved, name, state["epoch"])
    assert any(line.startswith("time budget 0.1 min:") for line in lines)
    # A resumed run keeps the schedule and, its budget spent, only checks out.
    resumed = Trainer(saved, tiny_train, tiny_val, run_dir=run, resume=True, echo=None)
    assert resumed.config.plan == plan
    assert resumed.optimizers["teacher"].param_groups[0]["lr"] == learning_rate(saved, "teacher", state["epoch"])
    assert resumed.fit()["step"] == state["step"]


def _count_saves(trainer, monkeypatch):
    written = []
    real = trainer.save

    def save(which="last"):
        written.append((which, trainer.state["step"]))
        return real(which)

    monkeypatch.setattr(trainer, "save", save)
    return written


@pytest.mark.parametrize("changes, lasts", [({}, [4]), ({"ckpt_every": 3}, [3, 4]),
                                            ({"ckpt_minutes": 1e-9}, [1, 2, 3, 4])])
def test_last_is_written_by_step_count_or_time_not_after_every_epoch(tiny_train, tiny_val, tmp_path, monkeypatch,
                                                                     changes, lasts):
    # 4 epochs of one step (4 images, batch 4). By default (every 10 minutes) only the end of this short run
    # writes `last`; a time interval of ~0 writes it after every step, so a crash loses nothing.
    trainer = Trainer(tiny_config(epochs=4, batch_size=4, val_every=1, **changes), tiny_train, tiny_val,
                      run_dir=tmp_path / "run", echo=None)
    written = _count_saves(trainer, monkeypatch)
    trainer.fit()
    assert [step for which, step in written if which == "last"] == lasts
    best = [step for which, step in written if which == "best"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    improved = [r["step"] for k, r in enumerate(rows)
                if r["val_student_psnr"] > max([q["val_student_psnr"] for q in rows[:k]], default=-math.inf)]
    assert best == improved


def test_checkpoint_clock_counts_steps_and_minutes():
    now = [0.0]
    clock = CheckpointClock(every_steps=0, every_minutes=10, clock=lambda: now[0])
    now[0] = 599.0
    assert not clock.due(1)
    now[0] = 600.0
    assert clock.due(2)
    clock.written()
    now[0] = 1199.0
    assert not clock.due(3)
    assert CheckpointClock(every_steps=3, every_minutes=0, clock=lambda: 1e9).due(6)
    assert not CheckpointClock(every_steps=3, every_minutes=0, clock=lambda: 1e9).due(7)


def test_default_learning_rate_follows_the_preset():
    assert TrainConfig().lr_teacher == TrainConfig().lr_student == 1e-4  # the paper's presets
    config = TrainConfig(teacher="teacher_tiny", student="student")
    assert (config.lr_teacher, config.lr_student) == (1e-3, 1e-4)
    assert TrainConfig(teacher="teacher_tiny", lr_teacher=5e-4).lr_teacher == 5e-4
    assert TrainConfig.from_dict(config.to_dict()) == config  # saved resolved


def test_validation_prints_one_line_per_network_metrics(tiny_train, tiny_val):
    lines = []
    Trainer(tiny_config(epochs=1, val_every=1), tiny_train, tiny_val, echo=lines.append).fit()
    shown = [line for line in lines if line.startswith("validation")]
    assert len(shown) == 1
    assert re.fullmatch(r"validation at epoch 1, step 2: teacher PSNR [\d.]+ dB, SAM [\d.]+ deg, RMSE [\d.e-]+ \| "
                        r"student PSNR [\d.]+ dB, SAM [\d.]+ deg, RMSE [\d.e-]+", shown[0]), shown[0]
    assert any("Negative totals are normal" in line and "docs/losses.md" in line for line in lines)
