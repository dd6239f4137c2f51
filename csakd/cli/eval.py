"""`csakd eval`: a checkpoint (and optionally the classical baselines) on a dataset, with the paper's metrics per
image and averaged, an optional robustness sweep over input SNR, JSON + CSV output and PNG figures."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..train.checkpoint import resolve_model_file
from .._files import make_folder

DEFAULT_SNRS = (25.0, 30.0, 35.0, 40.0, 45.0)


def _snr_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of dB, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one SNR, got {text!r}")
    return values


def load_networks(checkpoint, which: str = "all", backend: str | None = None) -> dict:
    """{name: model} from a .safetensors file (named 'model'), a checkpoint folder or a run folder."""
    from ..io import load_model

    path = Path(checkpoint)
    if path.is_file():
        return {path.stem: load_model(path, backend=backend)}
    names = ("teacher", "student") if which == "all" else (which,)
    models = {}
    for name in names:
        try:
            models[name] = load_model(resolve_model_file(path, name), backend=backend)
        except FileNotFoundError:
            if which != "all":
                raise
    if not models:
        raise FileNotFoundError(f"checkpoint: no teacher or student weights in {str(path)!r}")
    return models


def check_compatible(models: dict, dataset) -> None:
    from ..train.data import shapes

    bands, msi_bands, scale = shapes(dataset)
    for name, model in models.items():
        cfg = model.config
        if (cfg.bands, cfg.msi_bands, cfg.scale) != (bands, msi_bands, scale):
            raise ValueError(f"checkpoint: the {name} expects (bands, msi_bands, scale) = "
                             f"{(cfg.bands, cfg.msi_bands, cfg.scale)}, the data has {(bands, msi_bands, scale)}")


def dataset_for(args, models: dict):
    """The evaluation data: --data if given, else the run's test split (or validation data) when --checkpoint
    is a run folder, else generated scenes matching the checkpoint's band count."""
    import json

    from ..train.config import TrainConfig
    from ..train.data import generated_source, open_source, with_split

    run_config = Path(args.checkpoint) / "config.json"
    if args.data is None and run_config.is_file():
        data = TrainConfig.load(run_config).data
        source = (with_split(data["train"], "test") if data.get("train") else None) or data.get("val")
        if source is None:
            raise ValueError(f"data: the run {args.checkpoint!r} has no test or validation data; give --data")
    elif args.data in (None, "generated"):
        degradation = None
        if args.degradation:
            path = Path(args.degradation)
            if not path.is_file():
                raise FileNotFoundError(f"degradation: no such file {str(path)!r}")
            degradation = json.loads(path.read_text())
        source = generated_source(0, 0, args.scenes, args.scene_size, next(iter(models.values())).config.bands,
                                  args.data_seed, degradation, split="test")
    else:
        if not Path(args.data).exists():
            raise FileNotFoundError(f"data: no such dataset folder {args.data!r} (or use 'generated')")
        source = {"kind": "folder", "path": str(Path(args.data).resolve()), "split": args.split}
    dataset, _ = open_source(source)
    return dataset


def run(args) -> int:
    import torch

    from ..baselines import BASELINES
    from ..train.distributed import pick_device
    from ..inference.precision import inference_dtype, set_precision
    from ..train.evaluate import evaluate_methods, ground_truths
    from ..train.report import write_evaluation

    if args.figures < 0:
        raise ValueError(f"figures: expected a number of images >= 0, got {args.figures}")
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint: no such file or folder {args.checkpoint!r}")
    models = load_networks(args.checkpoint, args.network, args.backend)
    device = pick_device(args.device)
    dtype = inference_dtype(args.precision, device, auto="fp32")
    dataset = dataset_for(args, models)
    check_compatible(models, dataset)
    rules = {model.config.normalisation for model in models.values()}
    if len(rules) > 1:
        raise ValueError(f"checkpoint: the networks were trained with different value scalings {sorted(rules)}; "
                         f"evaluate them one at a time with --network")
    dataset.set_normalisation(rules.pop())  # the scaling the networks were trained with
    for model in models.values():
        set_precision(model.to(device), dtype)
    methods = dict(models)
    if args.baselines:
        methods.update(BASELINES)
    snrs = args.snrs if args.snr_sweep else None
    t0 = time.perf_counter()
    out = make_folder(args.out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S"), "out")
    results = evaluate_methods(methods, dataset, snrs=snrs, noise_on=args.noise_on, keep_predictions=args.figures,
                               save_to=out / "predictions" if args.save_predictions else None, device=device,
                               seed=args.seed)
    truths = ground_truths(dataset, args.figures)
    write_evaluation(results, out, truths, getattr(dataset, "wavelengths", None), figures=args.figures > 0,
                     extra={"checkpoint": str(args.checkpoint), "images": len(dataset), "noise_on": args.noise_on,
                            "torch": torch.__version__, "device": str(device),
                            "precision": str(dtype).replace("torch.", "")})
    print(f"{'method':>10} {'PSNR':>8} {'SAM':>8} {'RMSE':>10} {'ERGAS':>8} {'SSIM':>7}")
    for name, r in results.items():
        m = r["mean"]
        print(f"{name:>10} {m['psnr']:8.3f} {m['sam']:8.3f} {m['rmse']:10.4g} {m['ergas']:8.3f} {m['ssim']:7.4f}")
    print(f"{len(dataset)} images in {time.perf_counter() - t0:.1f} s; results in {out}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint (and baselines) with PSNR/SAM/RMSE/ERGAS/SSIM",
        description="Evaluate a trained network on a dataset with the paper's metrics (de-normalised images, "
                    "per image and averaged), optionally against bicubic and GSA baselines and over a sweep of "
                    "input SNRs. Writes metrics.json, per_image.csv, summary.csv, snr_sweep.csv and PNG figures.")
    parser.add_argument("--checkpoint", required=True,
                        help="a .safetensors model file, a checkpoint folder (last/best) or a run folder")
    parser.add_argument("--network", choices=("all", "student", "teacher"), default="all",
                        help="which network of a run/checkpoint folder to evaluate (default: all present)")
    parser.add_argument("--data", default=None,
                        help="'generated' (synthetic scenes matching the checkpoint's bands) or a dataset folder "
                             "written by `csakd synth` (default: when --checkpoint is a run folder, its held-out "
                             "test scenes, else its validation data; otherwise 'generated')")
    parser.add_argument("--split", default="test", help="split of a dataset folder to evaluate (default 'test')")
    parser.add_argument("--scenes", type=int, default=4, help="number of generated test scenes (default 4)")
    parser.add_argument("--scene-size", type=int, default=64, help="HR side of generated scenes (default 64)")
    parser.add_argument("--data-seed", type=int, default=1000,
                        help="seed of the first generated test scene (default 1000, away from training seeds)")
    parser.add_argument("--degradation", default=None,
                        help="JSON DegradationSpec for generated scenes (default: the paper's Wald protocol)")
    parser.add_argument("--baselines", action="store_true", help="also evaluate bicubic upsampling and GSA fusion")
    parser.add_argument("--snr-sweep", action="store_true",
                        help="also evaluate with AWGN on the inputs at each SNR of --snrs (paper's Table II)")
    parser.add_argument("--snrs", type=_snr_list, default=DEFAULT_SNRS,
                        help="comma-separated SNRs in dB for --snr-sweep (default 25,30,35,40,45)")
    parser.add_argument("--noise-on", choices=("lr", "both"), default="lr",
                        help="inputs that get noise in the sweep: the LR-HSI, or both LR-HSI and HR-MSI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sweep's noise (default 0)")
    parser.add_argument("--figures", type=int, default=2,
                        help="images to draw comparison and spectra figures for (default 2; 0: no figures)")
    parser.add_argument("--out", default=None,
                        help="output folder, created with its missing parents (default runs/eval-<date>-<time>)")
    parser.add_argument("--save-predictions", action="store_true",
                        help="also write every prediction, in the data's units, to OUT/predictions/METHOD/NAME.npy "
                             "(height x width x bands, as csakd fuse writes .npy)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="inference precision: fp32, or bf16/fp16 on the prepared inference path (default auto: "
                             "fp32, the precision of the reported metrics)")
    parser.add_argument("--backend", default=None,
                        help="kernels: reference, triton, cuda or auto (default: the process default)")
    parser.set_defaults(func=run)


__all__ = ["check_compatible", "load_networks", "register", "run"]
