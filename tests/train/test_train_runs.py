"""Whole runs through the command line: SIGKILL mid-epoch then --resume ends bit-identical to an uninterrupted
run; two gloo processes under torchrun equal one process over the same global batch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import ROOT, TINY_TRAIN_ARGS, run_python, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

RESUME_ARGS = TINY_TRAIN_ARGS + ["--scenes", "8", "--epochs", "3", "--ckpt-every", "3", "--val-every", "1"]


def _weights(run, network):
    return load_file(str(run / "last" / f"{network}.safetensors"))


def _assert_identical(a, b):
    for network in ("teacher", "student"):
        wa, wb = _weights(a, network), _weights(b, network)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{network} {key} differs"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _meta(run):
    try:
        return json.loads((run / "last" / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    cmd = [sys.executable, "-m", "csakd.train"]
    ref = subprocess.Popen(cmd + ["--out", str(reference)] + RESUME_ARGS, cwd=ROOT, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(cmd + ["--out", str(killed)] + RESUME_ARGS, cwd=ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    # 4 steps per epoch, a checkpoint every 3 steps: kill as soon as one lands in the middle of an epoch.
    while victim.poll() is None and time.monotonic() < deadline:
        meta = _meta(killed)
        if meta and meta["batch"] != 0:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
    meta = _meta(killed)
    assert meta is not None and meta["batch"] != 0 and meta["step"] < 12, meta

    resumed = run_python(["-m", "csakd.train", "--resume", str(killed), "--no-progress"], timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=240) == 0, ref.stderr.read()
    _assert_identical(killed, reference)

    def validation(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["val_student_psnr"], r["val_teacher_psnr"]) for r in rows]

    assert validation(killed) == validation(reference)


def test_resume_refuses_changed_settings(tmp_path):
    tiny_config(epochs=3).save(tmp_path / "config.json")
    proc = run_python(["-m", "csakd.train", "--resume", str(tmp_path), "--epochs", "5"])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "csakd train: error: resume:" in proc.stderr and "epochs" in proc.stderr


def test_two_gloo_processes_equal_one_process_over_the_global_batch(tmp_path):
    args = TINY_TRAIN_ARGS + ["--scenes", "8", "--batch-size", "4", "--epochs", "2", "--snr-db", "none",
                              "--val-every", "2"]
    single = subprocess.Popen([sys.executable, "-m", "csakd.train", "--out", str(tmp_path / "single")] + args,
                              cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ddp = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "csakd.train",
                      "--out", str(tmp_path / "ddp")] + args, timeout=300)
    assert ddp.returncode == 0, ddp.stderr
    assert single.wait(timeout=300) == 0, single.stderr.read()
    for network in ("teacher", "student"):
        a, b = _weights(tmp_path / "single", network), _weights(tmp_path / "ddp", network)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=2e-6, msg=f"{network} {key}")
        # The comparison is meaningful only if training moved the weights.
        init = _initial(network)
        changed = any(not torch.allclose(a[k], init[k]) for k in a)
        assert changed
    # Only rank 0 wrote: one metrics row per validation, no duplicates.
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1


def _initial(network):
    from csakd.train.trainer import build_network

    return build_network(tiny_config(), network).state_dict()


def test_train_with_every_default_runs_one_step(tmp_path):
    """`csakd train --max-steps 1` as a new user types it: generated data, the device's presets, the default crop
    clipped to the 64-pixel generated scenes, a run folder under ./runs."""
    from csakd.train.checkpoint import read_state
    from csakd.train.config import default_presets

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "csakd", "train", "--max-steps", "1"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("train-")
    assert read_state(run / "last")["step"] == 1
    config = json.loads((run / "config.json").read_text())
    teacher, student = default_presets("cuda" if torch.cuda.is_available() else "cpu")
    assert (config["teacher"], config["student"], config["crop"]) == (teacher, student, 64)
    assert config["lr_teacher"] == (1e-3 if teacher == "teacher_tiny" else 1e-4)
    out = proc.stdout
    assert "Negative totals are normal" in out and "validation at epoch 0, step 1: teacher PSNR" in out
    assert "done: 1 step, 0 epochs" in out
    print(f"csakd train --max-steps 1 with every default: {took:.1f} s")  # shown with pytest -s
