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

NETWORKS = ("teacher", "student")
STATE_FILE = "state.pt"


def atomic_write_text(path, text: str) -> None:
    """Writes `text` to a temporary file in the same folder, fsyncs it, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes rw------- files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_folder(path, argument: str) -> Path:
    """Creates the folder `path` and its missing parents; an existing folder must be writable. Errors name
    `argument`, the option or parameter the path came from: "out: cannot create 'x' (Permission denied)"."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{argument}: cannot create {str(path)!r} (a file of that name exists)") from None
    except OSError as exc:
        raise ValueError(f"{argument}: cannot create {str(path)!r} ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{argument}: cannot write in {str(path)!r} (Permission denied)")
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        _fsync_dir(tmp)
        old = _old(path)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
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
