"""Real-data check: a student (optionally co-trained online with a teacher) trained for a bounded time on the CPU
on one region of two real AVIRIS scenes and scored on a held-out region of the same scenes, against bicubic
upsampling and GSA fusion (csakd.baselines).

    python bench/real_data.py                          # 8 minutes of online co-training (docs/data.md), then eval
    python bench/real_data.py --mode student           # the student alone (reconstruction objective)
    python bench/real_data.py --minutes 1 --out /tmp/r.json

Data: Jasper Ridge (100x100, 198 AVIRIS channels) and San Diego (100x100, all 224 channels) from
../shared/data (see its README.md). Both hold all 172 channels the paper keeps, so the package's band handling
selects them by AVIRIS channel number (`cube_datasets(channels=AVIRIS_172_CHANNELS)`, bad-band policy "error":
none of the 172 is all-zero or NaN); each scene's spectral response is built from its own band centres (Jasper:
exact header values; San Diego: the nominal 2014 calibration shipped with the file).

Split (`split_by="region"`): each 100x100 scene is cut into row strips, the top 60% for training and the bottom
40% held out for the test, with an 8-pixel guard band between them; every strip is one tile, normalised by its
own min/max and degraded on its own with the paper's Wald protocol (`DegradationSpec()`: scale 4, Gaussian PSF
std 3 HR px, Landsat TM bands 1-4 boxcar SRF, no noise). Training takes random 32x32 HR crops (8x8 LR) with
flips/rot90 from the two training strips and adds AWGN at 35 dB to the LR-HSI (docs/data.md); the test is noise-free
on the whole held-out strips. No validation split: the networks are scored as they are when the time is up.

Networks: the small CPU presets `student_tiny` / `teacher_tiny` with the demo's learning rate 1e-3, an
honest small-CPU configuration, NOT the paper's (a paper-size co-training step takes about a minute here). The training budget
(--minutes) covers a 4-step timing run that sizes the learning-rate schedules, then training for the planned
epochs or until the time is up, whichever comes first (checked at the end of each 8-step epoch; at least one
epoch). The JSON records the steps done, the plan and the step times. The scenes are 100x100: far too little data for real training;
this checks that the pipeline runs end to end on real spectra and reports where the student stands.

Exits 0 with a message when the data folder or a scene file is absent.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, environment, write_json  # noqa: E402

SCENES = {"jasper_ridge": "aviris_jasperridge_100x100x198.npz", "san_diego": "aviris_sandiego_100x100x224.npz"}
FRACTIONS = {"train": 0.6, "test": 0.4}
GUARD = 8
REPEAT = 16  # each training strip appears 16 times per epoch (different random crops): 32 crops, 8 steps of 4
CALIBRATION_STEPS = 4
METRICS = ("psnr", "sam", "rmse", "ergas", "ssim")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="folder holding the two scene files (default ../shared/data)")
    p.add_argument("--minutes", type=float, default=8.0,
                   help="wall-clock training budget in minutes, timing run included (default 8)")
    p.add_argument("--mode", choices=("online", "student"), default="online",
                   help="online: teacher and student co-trained with online distillation (docs/data.md); student: the "
                        "student alone with the reconstruction objective (default online)")
    p.add_argument("--crop", type=int, default=32, help="HR training crop side, a multiple of 4 (default 32)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of both networks (default 1e-3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on the shared 2-core machine, 2 OpenMP threads competing "
                        "with other jobs made steps 5-60x slower than 1 thread; use 2 on an idle machine)")
    p.add_argument("--seed", type=int, default=1029, help="training seed (default 1029, the paper's)")
    p.add_argument("--out", default=str(RESULTS / "real_data_cpu.json"),
                   help="results JSON (default bench/results/real_data_cpu.json)")
    args = p.parse_args(argv)
    if not args.minutes > 0:
        p.error(f"--minutes: expected a positive number, got {args.minutes}")
    if args.threads < 1:
        p.error(f"--threads: expected a positive integer, got {args.threads}")
    return args


class Repeat(torch.utils.data.Dataset):
    """`base` repeated `times` times: with the trainer's per-(epoch, index) crops, each copy gives another
    random crop of the same strip."""

    def __init__(self, base, times: int):
        self.base, self.times = base, times

    def __len__(self) -> int:
        return len(self.base) * self.times

    def __getitem__(self, index: int) -> dict:
        return self.base[index % len(self.base)]


def student_better(student: dict, baseline: dict) -> dict[str, bool]:
    """Per metric, whether the student's value is the better one (PSNR higher, SAM and RMSE lower)."""
    return {"psnr": student["psnr"] > baseline["psnr"], "sam": student["sam"] < baseline["sam"],
            "rmse": student["rmse"] < baseline["rmse"]}


def timed_trainer(deadline: float, report_every: float = 30.0):
    """csakd's Trainer, also finished when `deadline` (time.perf_counter) has passed; the check happens
    at the end of each epoch, so a run overshoots by at most one epoch, and it always trains one epoch."""
    from csakd.train.trainer import Trainer

    class TimedTrainer(Trainer):
        _last_report = time.perf_counter()
        step_starts: list = []

        def train_step(self, batch):
            self.step_starts.append(time.perf_counter())
            return super().train_step(batch)

        def _finished(self) -> bool:
            return super()._finished() or (self.state["epoch"] >= 1 and time.perf_counter() >= deadline)

        def _end_epoch(self) -> None:
            running = dict(self.state["running"])
            super()._end_epoch()
            now = time.perf_counter()
            if now - self._last_report >= report_every:
                self._last_report = now
                n = max(running["count"], 1)
                losses = ", ".join(f"{k} loss {running[k] / n:.4f}" for k in self.models)
                print(f"  step {self.state['step']} (epoch {self.state['epoch']}): {losses}; "
                      f"{max(deadline - now, 0):.0f} s left", flush=True)

    return TimedTrainer


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data)
    files = {name: data_dir / f for name, f in SCENES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        print(f"real_data: skipped: scene files not found ({', '.join(missing)}); this benchmark needs the "
              f"shared real scenes in {data_dir}")
        return 0

    from csakd.baselines import BASELINES
    from csakd.data import AVIRIS_172_CHANNELS, DegradationSpec, cube_datasets
    from csakd.train.config import TrainConfig
    from csakd.train.data import shapes
    from csakd.train.evaluate import evaluate_methods

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    spec = DegradationSpec()
    splits = cube_datasets([str(p) for p in files.values()], spec=spec, channels=AVIRIS_172_CHANNELS, tile=256,
                           split_by="region", fractions=FRACTIONS, guard=GUARD, bad_bands="error")
    train, test = splits["train"], splits["test"]
    bands, msi_bands, scale = shapes(train)
    windows = {split: [{"name": s.name, "top_left_height_width": list(s.window)} for s in d.samples]
               for split, d in splits.items()}
    print(f"real_data: {len(train)} training and {len(test)} held-out strips, {bands} bands -> {msi_bands} MSI "
          f"bands, scale {scale}; {args.mode} training for {args.minutes:g} min on "
          f"{torch.get_num_threads()} CPU threads")

    config = TrainConfig(mode=args.mode, teacher="teacher_tiny", student="student_tiny", bands=bands,
                         msi_bands=msi_bands, scale=scale, epochs=1, batch_size=args.batch, crop=args.crop,
                         lr_teacher=args.lr, lr_student=args.lr, seed=args.seed, precision="fp32", device="cpu",
                         backend="reference", progress=False, val_every=10 ** 6, max_steps=CALIBRATION_STEPS)
    train_view = Repeat(train, REPEAT)
    steps_per_epoch = len(train_view) // args.batch
    Trainer = timed_trainer(deadline)

    # Timing run: a few steps of the same configuration size the schedules (cosine / StepLR over epochs).
    calibration = Trainer(config, train_view, None)
    calibration.step_starts = []
    calibration.fit()
    starts = calibration.step_starts + [time.perf_counter()]
    calib_s = statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))  # the first step warms up
    del calibration
    left = deadline - time.perf_counter()
    epochs = max(1, int(left / calib_s) // steps_per_epoch)
    config = config.replace(epochs=epochs, step_epochs=max(1, epochs // 3), gamma=0.5, max_steps=None)
    print(f"  timing run: {calib_s:.2f} s/step; planning {epochs} epochs of {steps_per_epoch} steps "
          f"(student StepLR x0.5 every {config.step_epochs} epochs"
          f"{', teacher cosine to 1e-10' if config.trains_teacher else ''})", flush=True)

    t0 = time.perf_counter()
    trainer = Trainer(config, train_view, None)
    summary = trainer.fit()
    t_train = time.perf_counter() - t0
    print(f"  trained {summary['step']} steps ({summary['epoch']} epochs) in {t_train:.0f} s", flush=True)

    t0 = time.perf_counter()
    methods = {**{name: trainer.models[name] for name in ("student", "teacher") if name in trainer.models},
               **BASELINES}
    results = evaluate_methods(methods, test, keep_predictions=0)
    t_eval = time.perf_counter() - t0

    means = {name: r["mean"] for name, r in results.items()}
    student = means["student"]
    comparison = {
        base: {"psnr_gain_db": student["psnr"] - means[base]["psnr"],
               "sam_change_deg": student["sam"] - means[base]["sam"],
               "rmse_change": student["rmse"] - means[base]["rmse"],
               "student_better": student_better(student, means[base])}
        for base in BASELINES}
    per_scene = {}
    for k, row in enumerate(results["student"]["per_image"]):
        per_scene[row["name"]] = {
            name: {m: results[name]["per_image"][k][m] for m in ("psnr", "sam", "rmse")} for name in results}
        per_scene[row["name"]]["student_better"] = {
            base: student_better(row, results[base]["per_image"][k]) for base in BASELINES}
    payload = {
        "benchmark": "real_data",
        "environment": environment(torch.device("cpu")),
        "load_average_1_5_15min": list(os.getloadavg()),
        "note": "2-core CPU shared with other jobs while this ran: the step rate (and so the number of steps "
                "done in the budget) is noisy.",
        "data": {
            "folder": str(data_dir), "files": {k: p.name for k, p in files.items()},
            "bands": bands, "band_handling": "AVIRIS channels 11-103, 117-151, 171-214 (the paper's 172) selected "
            "by channel number from Jasper Ridge's 198 and San Diego's 224 bands (cube_datasets "
            "channels=AVIRIS_172_CHANNELS, bad_bands='error'); each scene's SRF from its own band centres",
            "notes": train.info.get("notes", []),
            "split": {"split_by": "region", "fractions": FRACTIONS, "guard_px": GUARD,
                      "tiles (top, left, height, width) in HR pixels": windows},
            "normalisation": "each strip scaled to [0, 1] by its own ground-truth min/max; metrics on de-normalised "
                             "values (reflectance x 10000)",
            "training_view": f"each training strip repeated {REPEAT}x per epoch, random {args.crop}x{args.crop} HR "
                             f"crops with flips/rot90, AWGN 35 dB on the LR-HSI",
            "test_input_noise": None,
        },
        "degradation": spec.to_dict(),
        "degradation_text": spec.describe(),
        "mode": args.mode,
        "config": config.to_dict(),
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in trainer.models.items()},
        "time_budget_s": args.minutes * 60,
        "calibration_s_per_step": calib_s,
        "steps_done": summary["step"],
        "epochs_done": summary["epoch"],
        "epochs_planned": epochs,
        "train_s_per_step": t_train / max(summary["step"], 1),
        "seconds": {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t_start},
        "metrics": {name: {"mean": r["mean"], "per_image": r["per_image"]} for name, r in results.items()},
        "student_vs_baselines": comparison,
        "per_scene": per_scene,
    }
    out = write_json(args.out, payload)

    print(f"\nheld-out strips ({len(test)}), metrics on de-normalised values:")
    print(f"  {'method':8s} " + " ".join(f"{m:>9s}" for m in METRICS))
    for name, m in means.items():
        print(f"  {name:8s} " + " ".join(f"{m[k]:9.4f}" for k in METRICS))
    for base, c in comparison.items():
        verdict = "beats" if all(c["student_better"].values()) else (
            "does not beat" if not any(c["student_better"].values()) else "partly beats")
        print(f"  student {verdict} {base}: PSNR {c['psnr_gain_db']:+.2f} dB, SAM {c['sam_change_deg']:+.2f} deg, "
              f"RMSE {c['rmse_change']:+.2f}")
    print("per held-out strip (PSNR dB / SAM deg / RMSE):")
    for scene, values in per_scene.items():
        cells = "; ".join(f"{name} {v['psnr']:.2f} / {v['sam']:.2f} / {v['rmse']:.1f}"
                          for name, v in values.items() if name != "student_better")
        print(f"  {scene}: {cells}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
