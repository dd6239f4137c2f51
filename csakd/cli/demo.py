"""`csakd demo`: the whole job in a few minutes on a CPU. Synthesises a small dataset with the embedded scene
generator, co-trains a teacher and a student with online distillation, evaluates them against bicubic
upsampling and GSA fusion on held-out scenes and writes a Markdown report with figures.

The networks are the small CPU presets (`teacher_tiny`, `student_tiny`: fewer bands, width 32, shallow),
trained on small crops with a learning rate tuned for them: a demonstration of the method and the tooling,
not the paper's configuration (whose networks are a GPU job: one training step of them takes a minute or more
on a CPU).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._files import make_folder


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo chooses. `full()` takes ~2 minutes on 2 idle CPU cores (8 on a loaded one), `quick()`
    ~30 s."""

    bands: int = 31
    scene_size: int = 64
    train_scenes: int = 24
    val_scenes: int = 3
    test_scenes: int = 4
    epochs: int = 120
    batch_size: int = 4
    crop: int = 32
    lr_teacher: float = 1e-3
    lr_student: float = 1e-3
    step_epochs: int = 40
    gamma: float = 0.5
    val_every: int = 20
    snrs: tuple = (25.0, 30.0, 35.0, 40.0, 45.0)
    seed: int = 1029

    @classmethod
    def full(cls) -> "DemoSettings":
        return cls()

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(bands=16, scene_size=32, train_scenes=8, val_scenes=2, test_scenes=2, epochs=6, crop=32,
                   step_epochs=4, val_every=3, snrs=(30.0, 40.0))


def _train_config(s: DemoSettings, data: dict, bands: int, msi_bands: int, progress: bool):
    from ..train.config import TrainConfig

    return TrainConfig(mode="online", teacher="teacher_tiny", student="student_tiny", bands=bands,
                       msi_bands=msi_bands, epochs=s.epochs, batch_size=s.batch_size, crop=s.crop,
                       lr_teacher=s.lr_teacher, lr_student=s.lr_student, step_epochs=s.step_epochs, gamma=s.gamma,
                       val_every=s.val_every, seed=s.seed, precision="fp32", device="cpu", backend="reference",
                       progress=progress, data=data)


def run_demo(out_dir, settings: DemoSettings, progress: bool = True, log=print) -> dict:
    """Runs the demo into `out_dir` and returns its summary (also written as summary.json)."""
    from ..baselines import BASELINES
    from ..io import load_model
    from ..train.checkpoint import resolve_model_file
    from ..train.data import generated_source, open_source, shapes, with_split
    from ..train.evaluate import evaluate_methods, ground_truths
    from ..train.report import plot_training_curve, write_evaluation
    from ..train.runlog import RunLog
    from ..train.trainer import Trainer

    s = settings
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out: expected a new or empty folder, got {str(out)!r} with files in it")
    make_folder(out, "out")
    t_start = time.perf_counter()
    torch.manual_seed(s.seed)

    train_source = generated_source(s.train_scenes, s.val_scenes, s.test_scenes, s.scene_size, s.bands, seed=0)
    sources = {"train": train_source, "val": with_split(train_source, "val")}
    test_source = with_split(train_source, "test")
    log(f"synthesising {s.train_scenes} training, {s.val_scenes} validation and {s.test_scenes} test scenes "
        f"({s.scene_size}x{s.scene_size}, {s.bands} bands)")
    train, degradation = open_source(sources["train"])
    val, _ = open_source(sources["val"])
    test, _ = open_source(test_source)
    bands, msi_bands, scale = shapes(train)
    t_data = time.perf_counter() - t_start

    config = _train_config(s, sources, bands, msi_bands, progress)
    log(f"co-training teacher_tiny and student_tiny for {s.epochs} epochs (online distillation, CPU)")
    t0 = time.perf_counter()
    trainer = Trainer(config, train, val, run_dir=out / "run", degradation=degradation,
                      echo=log if progress else None)
    summary = trainer.fit()
    t_train = time.perf_counter() - t0

    log("evaluating on held-out scenes against bicubic and GSA")
    t0 = time.perf_counter()
    models = {name: load_model(resolve_model_file(out / "run", name)) for name in ("teacher", "student")}
    methods = {**models, **BASELINES}
    results = evaluate_methods(methods, test, snrs=s.snrs, noise_on="lr", keep_predictions=2)
    figures = write_evaluation(results, out / "eval", ground_truths(test, 2), test.wavelengths,
                               extra={"test_scenes": test_source})
    rows = RunLog(out / "run").rows
    figures["training"] = plot_training_curve(rows, out / "eval" / "figures" / "training.png")
    t_eval = time.perf_counter() - t0

    means = {name: r["mean"] for name, r in results.items()}
    result = {
        "settings": dataclasses.asdict(s),
        "presets": {name: m.config.to_dict() for name, m in models.items()},
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "degradation": degradation,
        "means": means,
        "best": summary["best"],
        "steps": summary["step"],
        "seconds": {"data": t_data, "train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t_start},
        "student_minus_bicubic_psnr": means["student"]["psnr"] - means["bicubic"]["psnr"],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    write_report(out, result, results, figures)
    return result


def write_report(out: Path, result: dict, results: dict, figures: dict) -> Path:
    from ..train.report import markdown_table

    s = result["settings"]
    fmt = {"psnr": ".2f", "sam": ".2f", "rmse": ".4f", "ergas": ".2f", "ssim": ".4f"}
    table = markdown_table([{"method": n, **m} for n, m in result["means"].items()],
                           ["method", "psnr", "sam", "rmse", "ergas", "ssim"], fmt)
    sweep_rows = []
    for name, r in results.items():
        sweep_rows.append({"method": name, **{f"{snr:g} dB": f"{v['psnr']:.2f}" for snr, v in r["snr_sweep"].items()}})
    sweep = markdown_table(sweep_rows, ["method"] + [f"{snr:g} dB" for snr in s["snrs"]])
    rel = {k: Path(p).relative_to(out).as_posix() for k, p in figures.items()}
    sec = result["seconds"]
    lines = [
        "# csakd demo report", "",
        f"Student PSNR on {s['test_scenes']} held-out generated scenes: "
        f"**{result['means']['student']['psnr']:.2f} dB**, "
        f"bicubic upsampling {result['means']['bicubic']['psnr']:.2f} dB "
        f"({result['student_minus_bicubic_psnr']:+.2f} dB), GSA {result['means']['gsa']['psnr']:.2f} dB.", "",
        "**This is a small CPU demonstration, not the paper's configuration.** The networks are the `teacher_tiny` "
        f"and `student_tiny` presets ({result['parameters']['teacher']:,} and {result['parameters']['student']:,} "
        f"parameters; the paper's are 26.8M and 7.45M) on {s['bands']} bands instead of 172, trained for "
        f"{s['epochs']} epochs ({result['steps']} steps) on {s['crop']}x{s['crop']} crops of {s['train_scenes']} "
        f"generated {s['scene_size']}x{s['scene_size']} scenes with learning rate {s['lr_teacher']:g} (tuned for "
        "these small networks; the paper uses 1e-4 for 600 epochs on 128x128 crops).", "",
        "## Setup", "",
        f"- Data: {s['train_scenes'] + s['val_scenes'] + s['test_scenes']} scenes of the embedded synthetic scene "
        f"generator, split by scene: {s['train_scenes']} for training, {s['val_scenes']} for validation (checkpoint "
        f"selection) and {s['test_scenes']} held out for the test below.",
        "- Degradation (Wald's protocol): " + _describe_degradation(result["degradation"]),
        f"- Training: online distillation (docs/data.md), AdamW, teacher cosine to 1e-10, student StepLR every "
        f"{s['step_epochs']} epochs x{s['gamma']}, AWGN at 35 dB on the LR-HSI, batch {s['batch_size']}, seed "
        f"{s['seed']}. Run folder: `run/` (config, metrics log, checkpoints).",
        f"- Metrics on de-normalised images, paper convention (PSNR peak = each band's maximum; SAM in degrees).",
        f"- Time: data {sec['data']:.0f} s, training {sec['train']:.0f} s, evaluation {sec['evaluate']:.0f} s, "
        f"total {sec['total']:.0f} s ({result['threads']} threads, torch {result['torch']}).", "",
        "## Held-out scenes", "", table, "",
        f"![training curve]({rel['training']})", "",
        f"![comparison]({rel['comparison_0']})", "",
        f"![comparison]({rel['comparison_1']})", "" if "comparison_1" in rel else "",
        f"![spectra]({rel['spectra_0']})", "",
        f"![PSNR per band]({rel['band_psnr']})", "",
        "## Robustness: AWGN on the LR-HSI (PSNR, dB)", "", sweep, "",
        f"![metric vs SNR]({rel['snr_sweep']})", "",
        "Files: `eval/metrics.json`, `eval/per_image.csv`, `eval/summary.csv`, `eval/snr_sweep.csv`, "
        "`summary.json`.", "",
    ]
    if "comparison_1" not in rel:
        lines = [line for line in lines if "comparison_1" not in line]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _describe_degradation(spec: dict | None) -> str:
    if not spec:
        return "default"
    from ..data import DegradationSpec

    return DegradationSpec.from_dict(spec).describe()


def run(args) -> int:
    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    if args.epochs is not None:
        if args.epochs < 1:  # refused before the report folder is made or any scene synthesised
            raise ValueError(f"epochs: expected a positive integer, got {args.epochs}")
        settings = dataclasses.replace(settings, epochs=args.epochs)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    result = run_demo(out, settings, progress=not args.no_progress)
    m = result["means"]
    print(f"student {m['student']['psnr']:.2f} dB, teacher {m['teacher']['psnr']:.2f} dB, bicubic "
          f"{m['bicubic']['psnr']:.2f} dB, GSA {m['gsa']['psnr']:.2f} dB (PSNR on held-out scenes); "
          f"{result['seconds']['total']:.0f} s")
    print(f"report: {out / 'report.md'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole job in minutes on a CPU: synthesise, co-train, evaluate, report",
        description="Synthesise a small dataset with the embedded scene generator, co-train a teacher and a "
                    "student with online distillation (small CPU presets, not the paper's configuration), "
                    "evaluate them against bicubic and GSA on held-out scenes and write a Markdown report with "
                    "figures to the folder it prints. About 2 minutes on 2 idle CPU cores (longer on a busy "
                    "machine); --quick about 30 s.")
    parser.add_argument("--out", default=None, help="report folder to create (default runs/demo-<date>-<time>)")
    parser.add_argument("--quick", action="store_true",
                        help="a ~30 s smoke run (fewer, smaller scenes and epochs) for CI")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of training epochs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


__all__ = ["DemoSettings", "register", "run", "run_demo"]
