"""Online knowledge-distillation co-training (SPEC §4) and its single-network and offline variants.

On each batch the teacher steps first on its own noisy copy of the LR-HSI; the student then steps on another
noisy copy, distilling the teacher's outputs of that same batch (detached). Each network has its own AdamW;
the teacher's learning rate follows a cosine to `eta_min` over the run, the student's a StepLR. Everything a
step depends on is either in the checkpoint or a pure function of (seed, epoch, batch), so a resumed run
continues bit-identically on CPU.
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
from . import distributed
from ..data import add_awgn
from .batches import EpochSampler, TrainingView, derive_seed, generator
from .checkpoint import NETWORKS, atomic_write_text, find_checkpoint, load_weights_into, read_state, \
    resolve_model_file, write_checkpoint
from .config import TrainConfig
from .runlog import RunLog

NETWORK_ID = {"teacher": 0, "student": 1}


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or Inf; the message names the step, the batch and the last good checkpoint."""


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
                  csa=config.csa, backend=config.backend)


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

    `run_dir` receives the resolved config, the degradation spec, the metrics log and the checkpoints; with
    `resume=True` training continues from its `last` checkpoint.
    """

    def __init__(self, config: TrainConfig, train_set, val_set=None, run_dir=None, degradation: dict | None = None,
                 resume: bool = False):
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        device_type = "cuda" if config.device.startswith("cuda") or (
            config.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.ctx = distributed.init(device_type)
        self.device = distributed.pick_device(config.device, self.ctx.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp = amp_dtype(config.precision, self.device)
        if config.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size: expected a multiple of the {self.ctx.world_size} processes, "
                             f"got {config.batch_size}")
        self.local_batch = config.batch_size // self.ctx.world_size
        self.weights = config.loss_weights()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = RunLog(self.run_dir, enabled=self.ctx.is_main, tensorboard=config.tensorboard)

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
        self.schedulers = {}
        if "teacher" in self.optimizers:
            self.schedulers["teacher"] = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizers["teacher"], T_max=config.epochs, eta_min=config.eta_min)
        if "student" in self.optimizers:
            self.schedulers["student"] = torch.optim.lr_scheduler.StepLR(
                self.optimizers["student"], step_size=config.step_epochs, gamma=config.gamma)
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
                        for name in self.models}

        self.sampler = EpochSampler(len(train_set), self.local_batch, config.seed, self.ctx.rank,
                                    self.ctx.world_size)
        if self.sampler.batches_per_epoch < 1:
            raise ValueError(f"batch_size: expected at most {len(train_set)} (the training set's size), "
                             f"got {config.batch_size}")
        self.loader = DataLoader(TrainingView(train_set, config.crop, config.scale, config.seed, config.augment),
                                 batch_size=self.local_batch, sampler=self.sampler, drop_last=True)
        self.state = {"step": 0, "epoch": 0, "batch": 0, "best": None, "running": _zero_running(),
                      "elapsed_s": 0.0}
        if resume:
            self._restore()
        elif self.ctx.is_main and self.run_dir is not None:
            self._start_run_dir(degradation)
        self.parallel = {name: self._wrap(m) for name, m in self.models.items()}

    # -- setup ---------------------------------------------------------------------------------------------
    def _wrap(self, model):
        if not self.ctx.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # In the released "reference" CSA mode the query/key convs never reach the output.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.config.csa == "reference")

    def _start_run_dir(self, degradation) -> None:
        if find_checkpoint(self.run_dir / "last") is not None:
            raise ValueError(f"run_dir: {str(self.run_dir)!r} already holds a run; resume it or choose another")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.run_dir / "config.json")
        if degradation is not None:
            atomic_write_text(self.run_dir / "degradation.json", json.dumps(degradation, indent=2, sort_keys=True))

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
            self.schedulers[name].load_state_dict(state["schedulers"][name])
            self.scalers[name].load_state_dict(state["scalers"][name])
        torch.set_rng_state(state["rng"])
        self.state = {k: state[k] for k in ("step", "epoch", "batch", "best", "running", "elapsed_s")}
        self.log.truncate_after(self.state["step"])

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        return dict(self.state, optimizers={n: o.state_dict() for n, o in self.optimizers.items()},
                    schedulers={n: s.state_dict() for n, s in self.schedulers.items()},
                    scalers={n: s.state_dict() for n, s in self.scalers.items()}, rng=torch.get_rng_state(),
                    config=self.config.to_dict())

    def save(self, which: str = "last") -> Path | None:
        if not self.ctx.is_main or self.run_dir is None:
            return None
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
            f"non-finite {name} loss ({float(total.detach())}) at step {self.state['step'] + 1} (epoch {self.state['epoch']}, "
            f"batch {self.state['batch']}, samples {batch['index'].tolist()}); last good checkpoint: "
            f"{self._last_good()}")

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

    # -- the run -------------------------------------------------------------------------------------------
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
        """Validation on rank 0 (the others wait), one metrics row, and `best` when the monitored network's
        PSNR improved."""
        if self.ctx.is_main:
            row = self._end_of_epoch_row()
            row.update(self._validate())
            key = "val_student_psnr" if "student" in self.models else "val_teacher_psnr"
            if key in row and (self.state["best"] is None or row[key] > self.state["best"]["value"]):
                self.state["best"] = {"metric": key, "value": row[key], "step": self.state["step"]}
                self.save("best")
            self.log.append(row)
        self.state["running"] = _zero_running()
        self.state["best"] = self.ctx.broadcast_object(self.state["best"])
        self.ctx.barrier()

    def _finished(self) -> bool:
        cfg = self.config
        return self.state["epoch"] >= cfg.epochs or (cfg.max_steps is not None and self.state["step"] >= cfg.max_steps)

    def fit(self) -> dict:
        """Trains until `epochs` (or `max_steps`) and returns the final state summary."""
        cfg = self.config
        per_epoch = self.sampler.batches_per_epoch
        try:
            while not self._finished():
                self.sampler.set_position(self.state["epoch"], self.state["batch"])
                bar = self.log.progress(total=per_epoch, initial=self.state["batch"],
                                        desc=f"epoch {self.state['epoch'] + 1}/{cfg.epochs}",
                                        enabled=cfg.progress)
                for batch in self.loader:
                    t0 = time.perf_counter()
                    losses = self.train_step(batch)
                    dt = time.perf_counter() - t0
                    self._account(losses, dt)
                    self.log.step(bar, self.state["step"], losses, self.config.batch_size / max(dt, 1e-9))
                    if cfg.ckpt_every and self.state["step"] % cfg.ckpt_every == 0:
                        self.save("last")
                    if cfg.max_steps is not None and self.state["step"] >= cfg.max_steps:
                        break
                bar.close()
                if self.state["batch"] == per_epoch:
                    self._end_epoch()
                elif self._finished():
                    self._evaluate_and_log()
                    self.save("last")
        finally:
            self.log.close()
        return {"step": self.state["step"], "epoch": self.state["epoch"], "best": self.state["best"],
                "run_dir": str(self.run_dir) if self.run_dir is not None else None}

    def _account(self, losses: dict, dt: float) -> None:
        running = self.state["running"]
        for name, value in losses.items():
            running[name] += value
        running["count"] += 1
        self.state["step"] += 1
        self.state["batch"] += 1
        self.state["elapsed_s"] += dt

    def _end_epoch(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.state["epoch"] += 1
        self.state["batch"] = 0
        if self.state["epoch"] % self.config.val_every == 0 or self._finished():
            self._evaluate_and_log()
        self.save("last")

    def shutdown(self) -> None:
        distributed.shutdown(self.ctx)


def _zero_running() -> dict:
    return {"teacher": 0.0, "student": 0.0, "count": 0}
