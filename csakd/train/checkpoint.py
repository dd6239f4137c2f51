"""Run checkpoints: a folder per checkpoint (`last`, `best`) holding each network's weights as safetensors (the
format `csakd.load` reads) and `state.pt` with everything else needed to continue exactly: optimizer,
scheduler and grad-scaler states, the step, the position in the epoch's data order, RNG state and running
loss sums. A checkpoint folder is written beside its final name and swapped in by renames, so a crash at any
moment leaves either the old or the new checkpoint complete."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .._files import fsync_folder, write_atomically

NETWORKS = ("teacher", "student")
STATE_FILE = "state.pt"


def atomic_write_text(path, text: str) -> None:
    """Writes `text` to `path` atomically, making missing folders."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def write_checkpoint(path, models: dict, state: dict) -> Path:
    """Writes `models` (name -> module, saved as `<name>.safetensors`) and `state` into the folder `path`,
    replacing a previous checkpoint there only once the new one is complete on disk."""
    from ..io import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes rwx------ folders
        for name, model in models.items():
            save_model(model, tmp / f"{name}.safetensors")
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / "meta.json").write_text(json.dumps({"step": state.get("step"), "epoch": state.get("epoch"),
                                                   "batch": state.get("batch"), "networks": sorted(models)}))
        fsync_folder(tmp)
        old = _old(path)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_folder(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def find_checkpoint(path) -> Path | None:
    """The complete checkpoint folder for `path`: itself, or the previous one kept while a newer one was
    being swapped in when the process died."""
    path = Path(path)
    for candidate in (path, _old(path)):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def read_state(path) -> dict:
    path = Path(path)
    # RNG states are uint8 tensors and the rest plain containers: the safe loader suffices.
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def load_weights_into(model: torch.nn.Module, path) -> None:
    """Loads a `.safetensors` file written by `csakd.io.save_model` into an existing module."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def resolve_model_file(path, network: str = "student") -> Path:
    """A weights file from a user's `--checkpoint`: a `.safetensors` file, a checkpoint folder, or a run
    folder (its `best`, else its `last` checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no such file or folder {str(path)!r}")
    for folder in (path, *(c for c in (find_checkpoint(path / "best"), find_checkpoint(path / "last")) if c)):
        candidate = folder / f"{network}.safetensors"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"checkpoint: no {network}.safetensors in {str(path)!r} or its best/last checkpoints")
