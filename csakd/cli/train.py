"""`csakd train` (also `python -m csakd.train`, which torchrun can launch for data-parallel training)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..losses import LossWeights
from ..train.budget import TIMED_STEPS, VALIDATIONS_PER_RUN
from ..train.config import CPU_PRESETS, GPU_PRESETS, MODES, NOISE_TARGETS, PAPER_CROP, PAPER_LR, PAPER_VAL_EVERY, \
    PRECISIONS, PRESET_LR, TrainConfig, default_presets

DEFAULTS = TrainConfig()
LOSS_DEFAULTS = LossWeights()
# What may change when a run is resumed: nothing that alters the computation.
RESUMABLE_OVERRIDES = ("max_steps", "progress", "tensorboard", "device", "ckpt_every", "ckpt_minutes")


def _snr(text: str):
    if text.lower() in ("none", "off", "inf"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of dB or 'none', got {text!r}") from None


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None,
                       help="training data: 'generated' (synthetic scenes made in memory by the embedded "
                            "generator, the default) or a dataset folder written by `csakd synth` (its 'train' "
                            "split)")
    group.add_argument("--val-data", default=None,
                       help="validation data: a dataset folder (its 'val' split) (default: with 'generated', "
                            "other generated scenes; with a folder, its 'val' split if it has one)")
    group.add_argument("--scenes", type=int, default=None,
                       help="number of generated training scenes (default 16)")
    group.add_argument("--val-scenes", type=int, default=None,
                       help="number of generated validation scenes, used to pick the best checkpoint (default 4)")
    group.add_argument("--test-scenes", type=int, default=None,
                       help="number of generated test scenes kept aside for `csakd eval --checkpoint RUN` "
                            "(default 4)")
    group.add_argument("--scene-size", type=int, default=None,
                       help="HR side of each generated scene in pixels (default 64)")
    group.add_argument("--bands", type=int, default=None,
                       help="hyperspectral bands of generated scenes (default 172, the paper's AVIRIS set)")
    group.add_argument("--data-seed", type=int, default=None, help="seed of the first generated scene (default 0)")
    group.add_argument("--degradation", default=None,
                       help="JSON file of a DegradationSpec used to make LR-HSI and HR-MSI of generated scenes "
                            "(default: the paper's Wald protocol, scale 4, PSF std 3, Landsat TM 1-4)")


def _preset_help(network: str) -> str:
    from ..models import PRESETS

    gpu, cpu = GPU_PRESETS[network == "student"], CPU_PRESETS[network == "student"]
    return (f"{network} preset, one of {', '.join(PRESETS)} (default {gpu!r}, the paper's, when training on a GPU; "
            f"{cpu!r} on a CPU, where a step of the paper's networks takes a minute or more)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="JSON file of training settings (TrainConfig fields; a run's config.json works, its "
                             "time-budget estimate is not reused); options given on the command line override it")
    parser.add_argument("--out", default=None,
                        help="run folder to create, with any missing parent folders (default "
                             "runs/train-<date>-<time>)")
    parser.add_argument("--resume", default=None, metavar="RUN",
                        help="continue the run in this folder from its last checkpoint, with its saved settings")
    add_data_arguments(parser)
    g = parser.add_argument_group("training (defaults: the paper's protocol, docs/data.md)")
    g.add_argument("--mode", choices=MODES, default=None,
                   help="online: teacher and student co-trained with online distillation (default); teacher / "
                        "student: one network alone; offline: student distilled from a frozen --teacher-checkpoint")
    g.add_argument("--teacher", default=None, help=_preset_help("teacher"))
    g.add_argument("--student", default=None, help=_preset_help("student"))
    g.add_argument("--csa", choices=("attention", "reference", "sum"), default=None,
                   help="CSA fusion mode of both networks (default 'attention')")
    g.add_argument("--normalisation", default=None,
                   help="value scaling of training, saved with the networks and applied by eval and fuse: "
                        "'lr_range' (each image's LR-HSI min/max, the default) or 'fixed:LO,HI' (a physical range, "
                        "e.g. fixed:0,10000 for reflectance x 10000; docs/data.md)")
    g.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default {DEFAULTS.epochs}; with --minutes, the most the budget may plan)")
    g.add_argument("--minutes", type=float, default=None,
                   help="time budget in minutes for the whole run, its final validation included. The schedules "
                        f"are sized from it: training steps 2-{1 + TIMED_STEPS} are timed (the first loads data "
                        "and warms up, and is left out), then one validation; the run gets the most whole epochs "
                        "whose steps and validations fit the rest of the budget (keeping one validation's time "
                        "for the last), at most --epochs, and the teacher's cosine, the student's StepLR (as "
                        "many decays as --epochs / --step-epochs) and, unless --val-every is given, about "
                        f"{VALIDATIONS_PER_RUN} validations are spread over them. Learning rates stay at their "
                        "initial values until then. The run stops at the end of those epochs or when the budget "
                        "is spent, then validates and writes its last checkpoint. The estimate is stored in the "
                        "run's config.json (key 'plan'), so --resume keeps the same schedule (default: no budget)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total (default: no limit)")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch size, split over torchrun processes (default {DEFAULTS.batch_size}); at most "
                        "the samples of an epoch (training images x --crops-per-image)")
    g.add_argument("--crop", type=int, default=None,
                   help=f"side of the random HR training crop in pixels, a multiple of the scale (default "
                        f"{PAPER_CROP}, the paper's, or the side of the smallest training image when smaller: the "
                        "default generated scenes are 64 pixels, small so that generating and validating them "
                        "stays quick on a CPU). A crop larger than the smallest image is refused")
    g.add_argument("--crops-per-image", type=int, default=None,
                   help="random crops drawn from each training image per epoch (default 1). Raise it when there "
                        "are few large images, e.g. one real scene split by region: an epoch then has images x N "
                        "samples")
    g.add_argument("--no-augment", action="store_true", default=None,
                   help="no random flips and rot90 (crops stay random)")
    g.add_argument("--lr-teacher", type=float, default=None,
                   help=f"teacher AdamW learning rate (default: the preset's, {PAPER_LR:g} as in the paper for "
                        f"the paper's presets, {PRESET_LR['teacher_tiny']:g} for the *_tiny CPU presets)")
    g.add_argument("--lr-student", type=float, default=None,
                   help=f"student AdamW learning rate (default: the preset's, {PAPER_LR:g} as in the paper for "
                        f"the paper's presets, {PRESET_LR['student_tiny']:g} for the *_tiny CPU presets)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    g.add_argument("--eta-min", type=float, default=None,
                   help=f"final learning rate of the teacher's cosine schedule (default {DEFAULTS.eta_min:g})")
    g.add_argument("--step-epochs", type=int, default=None,
                   help=f"epochs between student learning-rate decays (default {DEFAULTS.step_epochs})")
    g.add_argument("--gamma", type=float, default=None,
                   help=f"student learning-rate decay factor (default {DEFAULTS.gamma})")
    g.add_argument("--snr-db", type=_snr, default=argparse.SUPPRESS,
                   help="SNR in dB of the AWGN added to the training inputs, or 'none' (default 35)")
    g.add_argument("--noise-on", choices=NOISE_TARGETS, default=None,
                   help="which training input gets the noise (default 'lr', the LR-HSI)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip gradient norms to this value (default off)")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast precision: 'auto' is bf16 on GPU and fp32 on CPU (default 'auto')")
    g.add_argument("--backend", default=None,
                   help="kernels of models and losses: reference, triton, cuda or auto (default 'auto')")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default 'auto')")
    g.add_argument("--seed", type=int, default=None, help=f"run seed (default {DEFAULTS.seed})")
    g.add_argument("--val-every", type=int, default=None,
                   help=f"validate every this many epochs (default {PAPER_VAL_EVERY}; with --minutes, about "
                        f"{VALIDATIONS_PER_RUN} validations over the run). Each validation prints one line: PSNR, "
                        "SAM and RMSE of each network")
    g.add_argument("--ckpt-every", type=int, default=None,
                   help="also write the last checkpoint every this many steps (default 0: not by count)")
    g.add_argument("--ckpt-minutes", type=float, default=None,
                   help=f"write the last checkpoint when this many minutes passed since the previous one "
                        f"(default {DEFAULTS.ckpt_minutes:g}; 0: not by time), so a crash loses at most that much "
                        "work; it is also written at the end, and best whenever validation improves")
    g.add_argument("--teacher-checkpoint", default=None,
                   help="teacher weights for --mode offline: a .safetensors file or a run folder")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log scalars for TensorBoard under RUN/tensorboard (needs the tensorboard package)")
    g.add_argument("--no-progress", action="store_true", default=None, help="no progress bars")
    lg = parser.add_argument_group("loss weights and forms (docs/losses.md)")
    lg.add_argument("--loss-beba", type=float, default=None, help=f"BEBA weight (default {LOSS_DEFAULTS.beba})")
    lg.add_argument("--loss-sam", type=float, default=None, help=f"SAM weight (default {LOSS_DEFAULTS.sam})")
    lg.add_argument("--loss-kd", type=float, default=None, help=f"KD weight (default {LOSS_DEFAULTS.kd})")
    lg.add_argument("--loss-teacher-rec", type=float, default=None,
                    help=f"weight of the student's reconstruction of the teacher output "
                         f"(default {LOSS_DEFAULTS.teacher_rec})")
    lg.add_argument("--rec", choices=("smooth_l1", "l1"), default=None,
                    help="reconstruction loss (default 'smooth_l1', the released scripts' 'L1')")
    lg.add_argument("--sam-form", choices=("paper", "reference"), default=None, help="SAM loss form (default 'paper')")
    lg.add_argument("--beba-form", choices=("paper", "reference"), default=None,
                    help="BEBA loss form (default 'reference')")


_FIELDS = {"mode": "mode", "teacher": "teacher", "student": "student", "csa": "csa",
           "normalisation": "normalisation", "epochs": "epochs",
           "minutes": "minutes", "max_steps": "max_steps", "batch_size": "batch_size", "crop": "crop",
           "crops_per_image": "crops_per_image", "ckpt_minutes": "ckpt_minutes", "lr_teacher": "lr_teacher",
           "lr_student": "lr_student", "weight_decay": "weight_decay", "eta_min": "eta_min",
           "step_epochs": "step_epochs", "gamma": "gamma", "noise_on": "noise_on", "grad_clip": "grad_clip",
           "precision": "precision", "backend": "backend", "device": "device", "seed": "seed",
           "val_every": "val_every", "ckpt_every": "ckpt_every", "teacher_checkpoint": "teacher_checkpoint",
           "tensorboard": "tensorboard"}
_LOSS_FIELDS = {"loss_beba": "beba", "loss_sam": "sam", "loss_kd": "kd", "loss_teacher_rec": "teacher_rec",
                "rec": "rec", "sam_form": "sam_form", "beba_form": "beba_form"}
_DATA_OPTIONS = ("data", "val_data", "scenes", "val_scenes", "test_scenes", "scene_size", "bands", "data_seed",
                 "degradation")


def overrides_from_args(args) -> dict:
    """The TrainConfig fields set on the command line."""
    out = {field: getattr(args, opt) for opt, field in _FIELDS.items() if getattr(args, opt, None) is not None}
    if getattr(args, "no_augment", None):
        out["augment"] = False
    if getattr(args, "no_progress", None):
        out["progress"] = False
    if "snr_db" in vars(args):  # given on the command line ('none' is a value)
        out["snr_db"] = args.snr_db
    losses = {field: getattr(args, opt) for opt, field in _LOSS_FIELDS.items() if getattr(args, opt, None) is not None}
    if losses:
        out["losses"] = losses
    return out


def data_sources(args, defaults: dict | None = None) -> dict:
    """{"train": source, "val": source or None} from the data options (see `csakd.train.data`)."""
    import json

    from ..train.data import generated_source, with_split

    defaults = {"scenes": 16, "val_scenes": 4, "test_scenes": 4, "size": 64, "bands": 172, **(defaults or {})}
    opt = {k: getattr(args, k, None) for k in _DATA_OPTIONS}
    degradation = None
    if opt["degradation"] is not None:
        path = Path(opt["degradation"])
        if not path.is_file():
            raise FileNotFoundError(f"degradation: no such file {str(path)!r}")
        degradation = json.loads(path.read_text())
    kind = opt["data"] or "generated"
    if kind == "generated":
        def pick(key, default_key):
            return opt[key] if opt[key] is not None else defaults[default_key]

        train = generated_source(pick("scenes", "scenes"), pick("val_scenes", "val_scenes"),
                                 pick("test_scenes", "test_scenes"), pick("scene_size", "size"),
                                 pick("bands", "bands"), opt["data_seed"] or 0, degradation)
        val = with_split(train, "val")
    else:
        train = _folder(kind, "train")
        val = None
    if opt["val_data"] is not None:
        val = _folder(opt["val_data"], "val")
    elif kind != "generated":
        val = _folder(kind, "val")
    return {"train": train, "val": val}


def _folder(path: str, split: str) -> dict:
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"data: no such dataset folder {path!r} (or use 'generated')")
    return {"kind": "folder", "path": str(folder.resolve()), "split": split}


def _open(sources: dict):
    from ..train.data import open_source

    train, degradation = open_source(sources["train"])
    val = None
    if sources.get("val") is not None:
        try:
            val, _ = open_source(sources["val"])
        except ValueError:
            if sources["val"] != {**sources["train"], "split": "val"}:
                raise
            sources["val"] = None  # the training folder has no validation split
    return train, val, degradation


def _given_data_options(args) -> list[str]:
    return [k for k in _DATA_OPTIONS if getattr(args, k, None) is not None]


def _device_type(device: str) -> str:
    import torch

    return "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"


def _new_config(args, overrides: dict):
    """The config of a new run: --config, then the options given, then the data's shapes; presets the user
    left unset are the device's defaults. Returns (config, datasets, note on the presets or None)."""
    from ..train.data import shapes

    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    base.pop("plan", None)  # another run's time-budget estimate: this run makes its own
    losses = {**base.get("losses", DEFAULTS.losses), **overrides.pop("losses", {})}
    settings = {**base, **overrides}
    note = None
    unset = [n for n in ("teacher", "student") if n not in settings]
    if unset:
        device = _device_type(settings.get("device", DEFAULTS.device))
        presets = dict(zip(("teacher", "student"), default_presets(device)))
        settings.update({n: presets[n] for n in unset})
        if device == "cpu":
            note = (f"presets: {' + '.join(presets[n] for n in unset)}, the CPU default (the paper's "
                    f"{' + '.join(GPU_PRESETS)} are a GPU job; pass --teacher/--student to choose)")
    sources = data_sources(args) if (_given_data_options(args) or not base.get("data")) else base["data"]
    train, val, degradation = _open(sources)
    bands, msi_bands, scale = shapes(train)
    config = TrainConfig.from_dict({**settings, "losses": losses, "data": sources, "bands": bands,
                                    "msi_bands": msi_bands, "scale": scale})
    return config, (train, val, degradation), note


def run(args) -> int:
    from .._files import make_folder
    from ..train.checkpoint import find_checkpoint
    from ..train.trainer import Trainer

    overrides = overrides_from_args(args)
    note = None
    if args.resume:
        run_dir = Path(args.resume)
        config = TrainConfig.load(run_dir / "config.json")
        changed = sorted(k for k in overrides if k not in RESUMABLE_OVERRIDES and overrides[k] != getattr(config, k))
        if changed or args.config or _given_data_options(args):
            raise ValueError(f"resume: the run's saved settings are used; expected only "
                             f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE_OVERRIDES)}, got changes "
                             f"to {changed + _given_data_options(args) + (['config'] if args.config else [])}")
        config = config.replace(**{k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES})
        train, val, degradation = _open(config.data)
    else:
        run_dir = Path(args.out) if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        if find_checkpoint(run_dir / "last") is not None:
            raise ValueError(f"out: {str(run_dir)!r} already holds a run; continue it with --resume {run_dir} or "
                             f"choose another --out")
        config, (train, val, degradation), note = _new_config(args, overrides)
    # Every refusal (crop, batch, an existing run, ...) comes from here, before the run folder exists.
    trainer = Trainer(config, train, val, run_dir=run_dir, degradation=degradation, resume=bool(args.resume))
    if trainer.ctx.is_main:
        if not args.resume:
            make_folder(run_dir, "out")
        print(f"run folder: {run_dir}")
        if note:
            print(note)
    try:
        summary = trainer.fit()
    finally:
        trainer.shutdown()
    if trainer.ctx.is_main:
        best = summary["best"]
        best_text = f"; best {best['metric']} {best['value']:.3f} at step {best['step']}" if best else ""
        budget = f" (time budget {config.minutes:g} min)" if config.minutes is not None else ""
        steps, epochs = summary["step"], summary["epoch"]
        print(f"done: {steps} step{'s' * (steps != 1)}, {epochs} epoch{'s' * (epochs != 1)}{budget}{best_text}; "
              f"checkpoints in {run_dir}")
    return 0


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m csakd.train", description=DESCRIPTION, epilog=EPILOG)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


DESCRIPTION = ("Train a CSAKD teacher and student with online knowledge distillation (or one network alone, or "
               "a student distilled from a frozen teacher). Writes a run folder with the resolved config, the "
               "degradation spec, metrics.jsonl/csv and the last/best checkpoints; --resume RUN continues it. "
               "With no options it trains on generated scenes (the small presets on a CPU); --minutes M gives "
               "the run a time budget. Launch with `torchrun --nproc-per-node N -m csakd.train ...` for "
               "data-parallel training.")
EPILOG = ("The progress bar shows each network's total loss. Negative totals are normal: the BEBA term has a "
          "constant -alpha*beta offset (-0.5 per band, divided by the band's energy) that shifts the value "
          "without changing the gradient (docs/losses.md, 'Why logged losses are negative'). Follow the "
          "validation lines (PSNR, SAM, RMSE per network) instead. Training options that do not fit the data "
          "(a crop larger than the images, a batch larger than an epoch) are refused before the run folder is "
          "made, naming the largest value that works.")


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train teacher and student (online distillation)",
                                   description=DESCRIPTION, epilog=EPILOG)
    build_parser(parser)


def main(argv=None) -> int:
    import sys

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"csakd train: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_arguments", "add_data_arguments", "build_parser", "data_sources", "main", "register", "run"]
