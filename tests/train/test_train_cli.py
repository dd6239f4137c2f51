"""`csakd train/eval/fuse/demo` from the command line: help for every option, one-line errors, the files
eval and fuse write, and the demo's report."""
import argparse
import json
import math
import re

import numpy as np
import pytest
import rasterio
import torch
from train_helpers import TINY_BANDS, tiny_config

from csakd import metrics
from csakd.cli import build_parser, main
from csakd.data import write_pair
from csakd.io import save_model
from csakd.cli.demo import DemoSettings, run_demo
from csakd.models import PRESETS
from csakd.train.trainer import build_network

pytestmark = pytest.mark.usefixtures("one_thread")

COMMANDS = ("train", "eval", "fuse", "demo")


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    sub = _subparsers()[command]
    assert sub.description
    for action in sub._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and len(action.help) > 10, action.option_strings


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "student.safetensors"
    save_model(build_network(tiny_config(), "student"), path)
    return path


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"csakd {argv[0]}: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_user_errors_end_with_one_line(capsys, student_file, tmp_path):
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "missing")], "checkpoint: no such file")
    _one_line_error(capsys, ["train", "--backend", "nonsense", "--scenes", "2", "--val-scenes", "0",
                             "--test-scenes", "0", "--scene-size", "16", "--bands", str(TINY_BANDS), "--teacher",
                             "teacher_tiny", "--student", "student_tiny", "--crop", "16", "--batch-size", "2",
                             "--out", str(tmp_path / "run")], "backend")
    assert not (tmp_path / "run").exists()
    # A dataset folder of 8-band pairs against a 16-band checkpoint.
    rng = np.random.default_rng(0)
    hr = rng.random((32, 32, 8), dtype=np.float32)
    write_pair(tmp_path / "data" / "test" / "a.npz", hr, hr[::4, ::4], hr[:, :, :4])
    _one_line_error(capsys, ["eval", "--checkpoint", str(student_file), "--data", str(tmp_path / "data")],
                    "expects (bands, msi_bands, scale) = (16, 4, 4)", "(8, 4, 4)")
    _one_line_error(capsys, ["fuse", "--checkpoint", str(student_file), "--lr-hsi", str(tmp_path / "no.npy"),
                             "--hr-msi", str(tmp_path / "no.npy"), "--out", str(tmp_path / "o.npy")], "no such file")


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, sub in _subparsers().items():
        assert name in out
        assert sub.description


def test_band_mismatch_and_unknown_backend_end_with_one_line(capsys, student_file, tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "lr8.npy", rng.random((8, 8, 8), dtype=np.float32))
    np.save(tmp_path / "lr16.npy", rng.random((8, 8, TINY_BANDS), dtype=np.float32))
    np.save(tmp_path / "msi.npy", rng.random((32, 32, 4), dtype=np.float32))
    fuse = ["fuse", "--checkpoint", str(student_file), "--hr-msi", str(tmp_path / "msi.npy"), "--device", "cpu",
            "--no-progress"]
    out = tmp_path / "fused.npy"
    _one_line_error(capsys, fuse + ["--lr-hsi", str(tmp_path / "lr8.npy"), "--out", str(out)],
                    f"lr_hsi: expected {TINY_BANDS} bands (the checkpoint's), got 8")
    assert not out.exists()  # a refused input leaves no zero-filled output file behind
    _one_line_error(capsys, fuse + ["--lr-hsi", str(tmp_path / "lr16.npy"), "--out", str(out), "--tile", "4",
                                    "--overlap", "4"], "tile/overlap")
    assert not out.exists()
    _one_line_error(capsys, fuse + ["--lr-hsi", str(tmp_path / "lr16.npy"), "--out", str(out), "--backend",
                                    "nonsense"], "backend", "nonsense")
    _one_line_error(capsys, ["eval", "--checkpoint", str(student_file), "--backend", "nonsense", "--scenes", "1",
                             "--scene-size", "16", "--device", "cpu", "--out", str(tmp_path / "eval")],
                    "backend", "nonsense")
    _one_line_error(capsys, ["eval", "--checkpoint", str(student_file), "--figures", "-1", "--scenes", "1",
                             "--scene-size", "16", "--device", "cpu", "--out", str(tmp_path / "eval")],
                    "figures: expected a number of images >= 0, got -1")
    assert not (tmp_path / "eval").exists()


def test_demo_refuses_bad_epochs_before_making_its_folder(capsys, tmp_path):
    _one_line_error(capsys, ["demo", "--epochs", "0", "--out", str(tmp_path / "demo"), "--no-progress"],
                    "epochs: expected a positive integer, got 0")
    assert not (tmp_path / "demo").exists()


def test_eval_writes_metrics_tables_and_figures(student_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(student_file), "--data", "generated", "--scenes", "2", "--scene-size",
                 "32", "--baselines", "--snr-sweep", "--snrs", "30,40", "--figures", "1", "--out", str(out),
                 "--device", "cpu"]) == 0
    result = json.loads((out / "metrics.json").read_text())["methods"]
    assert set(result) == {"student", "bicubic", "gsa"}
    assert set(result["student"]["snr_sweep"]) == {"30.0", "40.0"}
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 3 * 2
    assert len((out / "snr_sweep.csv").read_text().splitlines()) == 1 + 3 * 2
    for name in ("comparison_0", "spectra_0", "band_psnr", "snr_sweep"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    # Bicubic's PSNR recomputed here from the data, de-normalised, with the metric alone.
    from csakd.train.data import generated_source, open_source

    data, _ = open_source(generated_source(0, 0, 2, 32, TINY_BANDS, 1000, split="test"))
    psnrs = []
    for k in range(2):
        item = data[k]
        up = torch.nn.functional.interpolate(item["lr_hsi"][None].double(), scale_factor=4, mode="bicubic")
        span = item["max"] - item["min"]
        psnrs.append(metrics.psnr(up * span + item["min"], item["hr_hsi"][None].double() * span + item["min"]))
    assert result["bicubic"]["mean"]["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-6)
    assert "bicubic" in capsys.readouterr().out


def test_fuse_cli_tiles_match_whole_image_inference(student_file, tmp_path):
    rng = np.random.default_rng(1)
    hr = (np.cumsum(rng.random((48, 40, TINY_BANDS)), axis=0) * 100 + 500).astype(np.float32)
    lr = hr.reshape(12, 4, 10, 4, TINY_BANDS).mean(axis=(1, 3))
    msi = hr[:, :, ::4]
    np.save(tmp_path / "lr.npy", lr)
    np.save(tmp_path / "msi.npy", msi)
    args = ["fuse", "--checkpoint", str(student_file), "--lr-hsi", str(tmp_path / "lr.npy"), "--hr-msi",
            str(tmp_path / "msi.npy"), "--tile", "8", "--overlap", "3", "--device", "cpu", "--no-progress",
            "--clip", "none"]
    assert main(args + ["--out", str(tmp_path / "out.npy")]) == 0
    assert main(args + ["--out", str(tmp_path / "out.tif")]) == 0
    fused = np.load(tmp_path / "out.npy")
    assert fused.shape == (48, 40, TINY_BANDS)
    with rasterio.open(tmp_path / "out.tif") as tif:  # band-interleaved: (bands, H, W)
        np.testing.assert_array_equal(tif.read().transpose(1, 2, 0), fused)

    model = build_network(tiny_config(), "student").eval()
    lo, hi = lr.min(), lr.max()
    with torch.no_grad():
        whole = model(torch.from_numpy((lr.transpose(2, 0, 1) - lo) / (hi - lo))[None],
                      torch.from_numpy((msi.transpose(2, 0, 1) - lo) / (hi - lo))[None])[0]
    whole = whole.numpy().transpose(1, 2, 0) * (hi - lo) + lo
    psnr = 10 * math.log10(float(np.ptp(whole)) ** 2 / float(((fused - whole) ** 2).mean()))
    assert psnr >= 45


def test_demo_writes_a_report_with_its_figures(tmp_path):
    settings = DemoSettings(bands=TINY_BANDS, scene_size=32, train_scenes=4, val_scenes=1, test_scenes=2, epochs=2,
                            crop=16, step_epochs=1, val_every=1, snrs=(30.0, 40.0))
    result = run_demo(tmp_path / "demo", settings, progress=False, log=lambda *_: None)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "not the paper's configuration" in report
    for line in report.splitlines():
        if line.startswith("!["):
            target = line[line.index("(") + 1:-1]
            assert (tmp_path / "demo" / target).is_file(), target
    assert set(result["means"]) == {"teacher", "student", "bicubic", "gsa"}
    assert result["steps"] == 2  # 4 training scenes, batch 4, 2 epochs
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["settings"]["epochs"] == 2


TINY_DATA = ["--scenes", "4", "--val-scenes", "1", "--test-scenes", "0", "--scene-size", "32", "--bands",
             str(TINY_BANDS), "--device", "cpu", "--backend", "reference", "--precision", "fp32", "--no-progress"]


def test_train_help_names_the_presets_the_defaults_and_why_losses_go_negative(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in PRESETS:
        assert name in text
    for option in ("--crops-per-image", "--minutes", "--ckpt-minutes", "--ckpt-every"):
        assert option in text
    assert "default 'teacher', the paper's, when training on a GPU; 'teacher_tiny' on a CPU" in text
    assert "default: the preset's, 0.0001 as in the paper for the paper's presets, 0.001 for the *_tiny" in text
    assert "Negative totals are normal" in text and "docs/losses.md" in text


@pytest.mark.parametrize("extra, fragments", [
    (["--crop", "64"], ["crop: expected at most 32 (the smallest training image, generated0_", "is 32x32), got 64"]),
    (["--batch-size", "8"], ["batch_size: expected at most 4 (4 training images x 1 crop per image), got 8; or "
                             "raise crops_per_image to 2"]),
    (["--crops-per-image", "0"], ["crops_per_image: expected a positive integer, got 0"]),
    (["--minutes", "-1"], ["minutes: expected a positive number of minutes or None, got -1.0"]),
])
def test_train_refusals_leave_no_files(capsys, tmp_path, extra, fragments):
    _one_line_error(capsys, ["train", *TINY_DATA, *extra, "--out", str(tmp_path / "runs" / "run")], *fragments)
    assert list(tmp_path.iterdir()) == []


def test_train_out_errors_name_the_option(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    _one_line_error(capsys, ["train", *TINY_DATA, "--max-steps", "1", "--out", str(tmp_path / "file" / "run")],
                    f"out: cannot create {str(tmp_path / 'file' / 'run')!r} (Not a directory)")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    (tmp_path / "old" / "last").mkdir(parents=True)
    (tmp_path / "old" / "last" / "state.pt").write_bytes(b"")
    _one_line_error(capsys, ["train", *TINY_DATA, "--max-steps", "1", "--out", str(tmp_path / "old")],
                    f"out: {str(tmp_path / 'old')!r} already holds a run; continue it with --resume")
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["last"]


def test_train_creates_missing_parents_and_prints_setup_validation_and_summary(capsys, tmp_path):
    run = tmp_path / "a" / "b" / "run"
    assert main(["train", *TINY_DATA, "--teacher", "teacher_tiny", "--student", "student_tiny", "--crop", "16",
                 "--batch-size", "2", "--crops-per-image", "2", "--max-steps", "1", "--out", str(run)]) == 0
    assert (run / "last" / "state.pt").is_file() and (run / "config.json").is_file()
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out
    assert "data: 4 training images, 2 random 16x16 crops of each per epoch: 8 samples, 4 steps of batch 2" in out
    assert "Negative totals are normal" in out
    assert re.search(r"validation at epoch 0, step 1: teacher PSNR [\d.]+ dB, SAM [\d.]+ deg, RMSE \S+ \| student "
                     r"PSNR", out), out
    assert "done: 1 step, 0 epochs; best val_student_psnr" in out
    config = json.loads((run / "config.json").read_text())
    assert (config["crop"], config["crops_per_image"], config["lr_teacher"]) == (16, 2, 1e-3)
