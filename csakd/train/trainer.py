"""Online knowledge-distillation co-training and its single-network and offline variants (the protocol is in
docs/data.md, the objectives in docs/losses.md).

On each batch the teacher steps first on its own noisy copy of the LR-HSI; the student then steps on another
noisy copy, distilling the teacher's outputs of that same batch (detached). Each network has its own AdamW;
the teacher's learning rate follows a cosine to `eta_min` over the run, the student's a StepLR
(`csakd.train.schedule`). Everything a step depends on is either in the checkpoint or a pure function of
(seed, epoch, batch) and the saved config, so a resumed run continues bit-identically on CPU.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .. import ops
from ..models import create
from . import distributed, schedule
from ..data import add_awgn
from .batches import EpochSampler, TrainingView, check_batch, derive_seed, fit_crop, generator
from .budget import TIMED_STEPS, CheckpointClock, StepTimer, describe_plan, make_plan
from .._files import make_folder
from .checkpoint import atomic_write_text, find_checkpoint, load_weights_into, read_state, \
    resolve_model_file, write_checkpoint
from .config import PAPER_CROP, TrainConfig
from .data import image_sizes
from .runlog import RunLog, validation_line

NETWORK_ID = {"teacher": 0, "student": 1}
LOSS_LEGEND = ("losses shown are each network's total objective. Negative totals are normal: the BEBA term "
               "carries a constant -alpha*beta offset that only shifts the value (docs/losses.md); follow the "
               "validation lines (PSNR, SAM, RMSE) for progress")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or Inf; the message names the step, the batch and the last good checkpoint."""


def _write(text: str) -> None:
    # Through tqdm so that a line printed while a progress bar is shown does not break it.
    from tqdm.auto import tqdm

    tqdm.write(text)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training, None for fp32. "auto" is bf16 on a GPU that supports it (else fp16), fp32
    on a CPU; bf16 autocast also runs on CPUs (fast where they have native bf16)."""
    if device.type != "cuda":
        if precision == "fp16":
            raise ValueError("precision: expected 'fp32', 'bf16' or 'auto' on a CPU, got 'fp16'")
        return torch.bfloat16 if precision == "bf16" else None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_network(config: TrainConfig, network: str) -> torch.nn.Module:
    """The teacher or student preset of `config`, initialised from a seed of its own so that its weights do
    not depend on which other networks the mode builds."""
    torch.manual_seed(derive_seed(config.seed, 2, NETWORK_ID[network]))
    return create(getattr(config, network), bands=config.bands, msi_bands=config.msi_bands, scale=config.scale,
                  csa=config.csa, backend=config.backend, normalisation=config.normalisation)


def load_frozen_teacher(config: TrainConfig) -> torch.nn.Module:
    from ..io import load_model

    model = load_model(resolve_model_file(config.teacher_checkpoint, "teacher"), backend=config.backend)
    got = (model.config.bands, model.config.msi_bands, model.config.scale)
    want = (config.bands, config.msi_bands, config.scale)
    if got != want:
        raise ValueError(f"teacher_checkpoint: expected a network for (bands, msi_bands, scale) = {want}, "
                         f"got {got}")
    model.requires_grad_(False)
    return model.eval()


class Trainer:
    """Trains on `train_set` (items with "lr_hsi" (C,h,w), "hr_msi" (M,sh,sw), "hr_hsi" (C,sh,sw), scaled to
    [0, 1] per image) and validates on `val_set` (items also carrying "min"/"max" to undo the scaling).

    Construction checks that the run fits its data (crop, batch) and refuses it otherwise, before anything
    is written; `fit()` creates `run_dir` (with missing parents) and writes the resolved config, the
    degradation spec, the metrics log and the checkpoints into it. With `resume=True` training continues from
    its `last` checkpoint. `echo` receives the console lines (setup, warnings, validations; None: silent).
    """

    def __init__(self, config: TrainConfig, train_set, val_set=None, run_dir=None, degradation: dict | None = None,
                 resume: bool = False, echo=_write):
        self.train_set, self.val_set, self.degradation, self.resumed = train_set, val_set, degradation, resume
        for dataset in (train_set, val_set):  # the value scaling the networks are built with (saved in them)
            if hasattr(dataset, "set_normalisation"):
                dataset.set_normalisation(config.normalisation)
        device_type = "cuda" if config.device.startswith("cuda") or (
            config.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.ctx = distributed.init(device_type)
        self.echo = echo if self.ctx.is_main else None
        self.device = distributed.pick_device(config.device, self.ctx.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp = amp_dtype(config.precision, self.device)
        if config.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size: expected a multiple of the {self.ctx.world_size} processes, "
                             f"got {config.batch_size}")
        # Does the run fit its data? Checked before anything is built or written.
        self.sizes = image_sizes(train_set)
        crop = fit_crop(config.crop, self.sizes, config.scale, PAPER_CROP)
        self.config = config = config.replace(crop=crop) if crop != config.crop else config
        self.left_out = check_batch(config.batch_size, len(train_set), config.crops_per_image, self.ctx.world_size)
        self.local_batch = config.batch_size // self.ctx.world_size
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if not resume and self.ctx.is_main and self.run_dir is not None \
                and find_checkpoint(self.run_dir / "last") is not None:
            raise ValueError(f"run_dir: {str(self.run_dir)!r} already holds a run; resume it or choose another")
        self.weights = config.loss_weights()

        self.models: dict[str, torch.nn.Module] = {}
        if config.trains_teacher:
            self.models["teacher"] = build_network(config, "teacher")
        if config.trains_student:
            self.models["student"] = build_network(config, "student")
        self.frozen_teacher = load_frozen_teacher(config).to(self.device) if config.mode == "offline" else None
        for model in self.models.values():
            model.to(self.device)
        # The objectives see the networks' outputs: the autocast dtype, at the networks' widths.
        network = next(iter(self.models.values()))
        self.impl = ops.resolve(config.backend, torch.empty(0, device=self.device, dtype=self.amp or torch.float32),
                                network.config)
        self.optimizers = {name: torch.optim.AdamW(m.parameters(), lr=getattr(config, f"lr_{name}"),
                                                   weight_decay=config.weight_decay)
                           for name, m in self.models.items()}
        schedule.apply(config, self.optimizers, 0)
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
                        for name in self.models}

        self.sampler = EpochSampler(len(train_set) * config.crops_per_image, self.local_batch, config.seed,
                                    self.ctx.rank, self.ctx.world_size)
        self.loader = DataLoader(TrainingView(train_set, config.crop, config.scale, config.seed, config.augment,
                                              config.crops_per_image),
                                 batch_size=self.local_batch, sampler=self.sampler, drop_last=True)
        self.state = {"step": 0, "epoch": 0, "batch": 0, "best": None, "running": _zero_running(),
                      "elapsed_s": 0.0, "wall_s": 0.0, "validated_at": None}
        self.log = RunLog(self.run_dir, enabled=self.ctx.is_main, tensorboard=config.tensorboard, keep_rows=resume)
        if resume:
            self._restore()
        self.parallel = {name: self._wrap(m) for name, m in self.models.items()}
        self._mark = time.perf_counter()
        self._out_of_time = False

    # -- setup ---------------------------------------------------------------------------------------------
    def _wrap(self, model):
        if not self.ctx.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # In the released "reference" CSA mode the query/key convs never reach the output.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.config.csa == "reference")

    def _start_run_dir(self) -> None:
        make_folder(self.run_dir, "run_dir")
        self.config.save(self.run_dir / "config.json")
        if self.degradation is not None:
            atomic_write_text(self.run_dir / "degradation.json", json.dumps(self.degradation, indent=2,
                                                                            sort_keys=True))

    def _restore(self) -> None:
        if self.run_dir is None:
            raise ValueError("run_dir: resuming needs the run folder, got None")
        folder = find_checkpoint(self.run_dir / "last")
        if folder is None:
            raise FileNotFoundError(f"resume: no checkpoint in {str(self.run_dir / 'last')!r}")
        state = read_state(folder)
        for name, model in self.models.items():
            load_weights_into(model, folder / f"{name}.safetensors")
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            self.scalers[name].load_state_dict(state["scalers"][name])
        torch.set_rng_state(state["rng"])
        self.state = {k: state[k] for k in ("step", "epoch", "batch", "best", "running", "elapsed_s")}
        self.state["wall_s"] = state.get("wall_s", self.state["elapsed_s"])
        self.state["validated_at"] = state.get("validated_at")
        # The rates are a function of the epoch and the config (its time-budget plan included).
        schedule.apply(self.config, self.optimizers, self.state["epoch"])
        self.log.truncate_after(self.state["step"])

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        return dict(self.state, optimizers={n: o.state_dict() for n, o in self.optimizers.items()},
                    scalers={n: s.state_dict() for n, s in self.scalers.items()}, rng=torch.get_rng_state(),
                    config=self.config.to_dict())

    def save(self, which: str = "last") -> Path | None:
        if not self.ctx.is_main or self.run_dir is None:
            return None
        self._tick()
        return write_checkpoint(self.run_dir / which, self.models, self._checkpoint_state())

    def _last_good(self) -> str:
        if self.run_dir is None:
            return "none (no run folder)"
        folder = find_checkpoint(self.run_dir / "last")
        if folder is None:
            return "none written yet"
        return f"{folder} (step {read_state(folder)['step']})"

    # -- one step ------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _noisy(self, lr, msi, network: str):
        cfg = self.config
        if cfg.snr_db is None:
            return lr, msi
        key = (cfg.seed, 3, self.state["epoch"], self.state["batch"], self.ctx.rank, NETWORK_ID[network])
        gen = generator(*key)
        if cfg.noise_on in ("lr", "both"):
            lr = add_awgn(lr, cfg.snr_db, gen)
        if cfg.noise_on in ("msi", "both"):
            msi = add_awgn(msi, cfg.snr_db, gen)
        return lr, msi

    def _check_finite(self, name: str, total: torch.Tensor, batch: dict) -> None:
        if bool(torch.isfinite(total)):
            return
        raise NonFiniteLoss(
            f"non-finite {name} loss ({float(total.detach())}) at step {self.state['step'] + 1} (epoch "
            f"{self.state['epoch']}, batch {self.state['batch']}, images {list(batch['name'])}); last good "
            f"checkpoint: {self._last_good()}")

    def _update(self, name: str, total: torch.Tensor) -> None:
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if self.config.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.models[name].parameters(), self.config.grad_clip)
        scaler.step(opt)
        scaler.update()

    def train_step(self, batch: dict) -> dict[str, float]:
        lr, msi, hr = (batch[k].to(self.device, non_blocking=True) for k in ("lr_hsi", "hr_msi", "hr_hsi"))
        losses = {}
        teacher_out = None
        if "teacher" in self.models or self.frozen_teacher is not None:
            t_lr, t_msi = self._noisy(lr, msi, "teacher")
            if "teacher" in self.models:
                self.models["teacher"].train()
                with self._autocast():
                    pred, fused = self.parallel["teacher"](t_lr, t_msi, return_features=True)
                terms = self.impl.teacher_objective(pred, hr, self.weights)
                self._check_finite("teacher", terms["total"], batch)
                self._update("teacher", terms["total"])
                losses["teacher"] = terms["total"].detach()
            else:
                with torch.no_grad(), self._autocast():
                    pred, fused = self.frozen_teacher(t_lr, t_msi, return_features=True)
            teacher_out = (pred.detach(), fused.detach())
        if "student" in self.models:
            s_lr, s_msi = self._noisy(lr, msi, "student")
            self.models["student"].train()
            with self._autocast():
                pred, fused = self.parallel["student"](s_lr, s_msi, return_features=True)
            if self.config.distils:
                terms = self.impl.student_objective(pred, hr, teacher_out[0], fused, teacher_out[1], self.weights)
            else:
                terms = self.impl.teacher_objective(pred, hr, self.weights)
            self._check_finite("student", terms["total"], batch)
            self._update("student", terms["total"])
            losses["student"] = terms["total"].detach()
        return {k: float(v) for k, v in losses.items()}

    # -- validation ----------------------------------------------------------------------------------------
    def _validate(self) -> dict:
        from .evaluate import evaluate_dataset

        row = {}
        if self.val_set is None:
            return row
        for name, model in self.models.items():
            # fp32 whatever the training precision: these are the figures compared with the paper's
            summary = evaluate_dataset(model, self.val_set, self.device)["mean"]
            row.update({f"val_{name}_{k}": v for k, v in summary.items()})
        return row

    def _end_of_epoch_row(self) -> dict:
        running = self.state["running"]
        n = max(running["count"], 1)
        row = {"epoch": self.state["epoch"], "step": self.state["step"],
               "time_s": round(self.state["elapsed_s"], 3)}
        for name in self.models:
            row[f"train_{name}_loss"] = running[name] / n
            row[f"lr_{name}"] = self.optimizers[name].param_groups[0]["lr"]
        return row

    def _evaluate_and_log(self) -> None:
        """Validation on rank 0 (the others wait), one metrics row and one console line, and `best` when the
        monitored network's PSNR improved."""
        if self.ctx.is_main:
            row = self._end_of_epoch_row()
            row.update(self._validate())
            key = "val_student_psnr" if "student" in self.models else "val_teacher_psnr"
            if key in row and (self.state["best"] is None or row[key] > self.state["best"]["value"]):
                self.state["best"] = {"metric": key, "value": row[key], "step": self.state["step"]}
                self.save("best")
            self.log.append(row)
            self._say(validation_line(row, self.models))
        self.state["running"] = _zero_running()
        self.state["validated_at"] = self.state["step"]
        self.state["best"] = self.ctx.broadcast_object(self.state["best"])
        self.ctx.barrier()
        self._tick()

    # -- the run -------------------------------------------------------------------------------------------
    def _say(self, text: str | None) -> None:
        if text and self.echo is not None:
            self.echo(text)

    def _tick(self) -> None:
        """Adds the time since the last tick to the run's wall time (which a time budget counts, across
        resumes: work lost in a crash is not counted)."""
        now = time.perf_counter()
        self.state["wall_s"] += now - self._mark
        self._mark = now

    def _finished(self) -> bool:
        cfg = self.config
        return (self.state["epoch"] >= cfg.run_epochs or self._out_of_time
                or (cfg.max_steps is not None and self.state["step"] >= cfg.max_steps))

    def describe(self) -> list[str]:
        """The run's first console lines: what trains on what, the schedule, the checkpoints, the losses."""
        cfg, per_epoch = self.config, self.sampler.batches_per_epoch
        images, samples = len(self.train_set), len(self.train_set) * cfg.crops_per_image
        lines = [f"training {' + '.join(getattr(cfg, n) for n in self.models)} ({cfg.mode}"
                 f"{' distillation' if cfg.mode in ('online', 'offline') else ' alone'}) on {self.device}, "
                 f"{cfg.bands} bands, scale {cfg.scale}",
                 f"data: {images} training image{'s' * (images != 1)}, {cfg.crops_per_image} random {cfg.crop}x"
                 f"{cfg.crop} crop{'s' * (cfg.crops_per_image != 1)} of each per epoch: {samples} samples, "
                 f"{_count(per_epoch, 'step')} of batch {cfg.batch_size} per epoch; "
                 f"{_count(len(self.val_set) if self.val_set is not None else 0, 'validation image')}"]
        rates = ", ".join(f"{n} {getattr(cfg, f'lr_{n}'):g}" for n in self.models)
        if cfg.minutes is not None and cfg.plan is None:
            lines.append(f"schedule: time budget {cfg.minutes:g} min (at most {cfg.epochs} epochs); learning rates "
                         f"{rates}, held until the steps the budget allows are estimated from steps 2-"
                         f"{1 + TIMED_STEPS}")
        else:
            lines.append(f"schedule: {cfg.run_epochs} epochs; learning rates {rates} (teacher: cosine to "
                         f"{cfg.eta_min:g}; student: x{cfg.gamma:g} every {_count(cfg.run_step_epochs, 'epoch')}); "
                         f"validation every {_count(cfg.run_val_every, 'epoch')}")
        when = [f"every {_count(cfg.ckpt_every, 'step')}"] if cfg.ckpt_every else []
        when += [f"every {cfg.ckpt_minutes:g} min"] if cfg.ckpt_minutes else []
        lines.append(f"checkpoints: last {', '.join(when + ['at the end'])}; best when the validation PSNR "
                     f"improves")
        if self.left_out:
            lines.append(f"warning: {self.left_out}")
        lines.append(LOSS_LEGEND)
        return lines

    def fit(self) -> dict:
        """Trains until `epochs` (or `max_steps`, or the time budget) and returns the final state summary."""
        if self.ctx.is_main and self.run_dir is not None and not self.resumed:
            self._start_run_dir()
        if self.resumed:
            self._say(f"resuming at step {self.state['step']} (epoch {self.state['epoch']}, batch "
                      f"{self.state['batch']})")
        for line in self.describe():
            self._say(line)
        per_epoch = self.sampler.batches_per_epoch
        clock = CheckpointClock(self.config.ckpt_every, self.config.ckpt_minutes)
        timer = StepTimer()
        self._mark = time.perf_counter()
        self._out_of_time = self._budget_spent()
        try:
            while not self._finished():
                self.sampler.set_position(self.state["epoch"], self.state["batch"])
                bar = self.log.progress(total=per_epoch, initial=self.state["batch"],
                                        desc=f"epoch {self.state['epoch'] + 1}/{self.config.run_epochs}",
                                        enabled=self.config.progress)
                fetched = time.perf_counter()
                for batch in self.loader:
                    t0 = time.perf_counter()
                    losses = self.train_step(batch)
                    done = time.perf_counter()
                    timer.add(done - fetched)
                    self._account(losses, done - t0)
                    self.log.step(bar, self.state["step"], losses, self.config.batch_size / max(done - t0, 1e-9))
                    self._check_budget(timer)
                    if self.state["batch"] == per_epoch:
                        bar.close()
                        self._end_epoch()
                    if self._finished():
                        break
                    if self.ctx.is_main and clock.due(self.state["step"]):
                        self.save("last")
                        clock.written()
                    fetched = time.perf_counter()
                bar.close()
            if self.state["validated_at"] != self.state["step"]:
                self._evaluate_and_log()
            self.save("last")
        finally:
            self.log.close()
        return {"step": self.state["step"], "epoch": self.state["epoch"], "best": self.state["best"],
                "plan": self.config.plan, "run_dir": str(self.run_dir) if self.run_dir is not None else None}

    def _account(self, losses: dict, dt: float) -> None:
        running = self.state["running"]
        for name, value in losses.items():
            running[name] += value
        running["count"] += 1
        self.state["step"] += 1
        self.state["batch"] += 1
        self.state["elapsed_s"] += dt
        self._tick()

    def _budget_spent(self) -> bool:
        """Whether the time budget, less the time kept for the final validation, is spent, as rank 0 sees it
        (every process stops at the same step)."""
        cfg = self.config
        if cfg.minutes is None:
            return False
        reserve = cfg.plan["val_seconds"] if cfg.plan else 0.0
        return bool(self.ctx.broadcast_object(self.state["wall_s"] + reserve >= cfg.minutes * 60))

    def _check_budget(self, timer: StepTimer) -> None:
        """Stops the run when its time budget is spent, and sizes the schedules once the first steps are timed
        (or when the budget ran out first)."""
        cfg = self.config
        if cfg.minutes is None:
            return
        self._out_of_time = self._budget_spent()
        if cfg.plan is not None or not (timer.ready or self._out_of_time):
            return
        val_seconds = 0.0
        if not self._out_of_time and self.val_set is not None:
            # One validation now, timed: the plan counts what the run's validations will cost.
            start = time.perf_counter()
            self._evaluate_and_log()
            val_seconds = self.ctx.broadcast_object(time.perf_counter() - start)
        plan = None
        if self.ctx.is_main:
            plan = make_plan(cfg, timer.mean(), len(timer.seconds) or 1, val_seconds, self.state["step"],
                             self.state["wall_s"], self.state["epoch"], self.sampler.batches_per_epoch)
        self.config = cfg.replace(plan=self.ctx.broadcast_object(plan))
        if self.ctx.is_main and self.run_dir is not None:
            self.config.save(self.run_dir / "config.json")  # a resumed run keeps this schedule
        self._say(describe_plan(self.config.plan, self.sampler.batches_per_epoch))
        self._out_of_time = self._budget_spent()

    def _end_epoch(self) -> None:
        self.state["epoch"] += 1
        self.state["batch"] = 0
        schedule.apply(self.config, self.optimizers, self.state["epoch"])
        every = self.config.run_val_every
        if every and self.state["epoch"] % every == 0 and self.state["validated_at"] != self.state["step"]:
            self._evaluate_and_log()

    def shutdown(self) -> None:
        distributed.shutdown(self.ctx)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _zero_running() -> dict:
    return {"teacher": 0.0, "student": 0.0, "count": 0}
