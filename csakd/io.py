"""Checkpoints: csakd's own files (safetensors with the config as metadata) and the authors' released
PyTorch checkpoints (their state-dict names, docs/faithfulness.md)."""
from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ._files import write_atomically
from .models import DTSNet, ModelConfig, create, from_config

logger = logging.getLogger(__name__)

FORMAT = "csakd.model"
FORMAT_VERSION = "1"


# ---- csakd's own checkpoints -------------------------------------------------------------------------------

def save_model(model: DTSNet, path) -> None:
    """Writes the model's weights and its ModelConfig (JSON), the format tag and the csakd version as a
    safetensors file. The write is atomic: a temporary file in the same folder, fsync, then os.replace, so an
    interrupted save leaves any earlier file at `path` intact."""
    if not isinstance(model, DTSNet):
        raise ValueError(f"model: expected a csakd DTSNet (e.g. from csakd.create), got {type(model).__name__}")
    from . import __version__  # late: csakd/__init__ may import this module before defining it

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "csakd_version": __version__,
                "config": model.config.to_json()}
    write_atomically(path, safetensors_bytes(tensors, metadata=metadata))


def load_model(path, backend: str | None = None) -> DTSNet:
    """Rebuilds a model written by `save_model` (its config from the metadata) and loads its weights (CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected an existing csakd model file, got {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"path: expected a safetensors file written by csakd.save_model, got {str(path)!r} "
                         f"({e})") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(f"path: expected metadata format {FORMAT!r} (a file written by csakd.save_model), "
                         f"got {metadata.get('format')!r} in {str(path)!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path: expected format_version {FORMAT_VERSION!r}, got "
                         f"{metadata.get('format_version')!r} (written by csakd {metadata.get('csakd_version')})")
    model = from_config(ModelConfig.from_json(metadata["config"]), backend=backend)
    _load_exact(model, tensors, source=str(path))
    return model


def _load_exact(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                names: Mapping[str, str] | None = None) -> None:
    """load_state_dict that refuses missing keys, unexpected keys and shape mismatches with a ValueError.
    `names` maps our parameter names to the names used in the source, for the messages."""
    names = names or {}
    own = model.state_dict()
    missing = [names.get(k, k) for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"state_dict: expected exactly the keys of the model, got {source} with missing keys "
                         f"{missing} and unexpected keys {unexpected}")
    wrong = [f"{names.get(k, k)}: expected {tuple(own[k].shape)}, got {tuple(v.shape)}"
             for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"state_dict: shape mismatches in {source}: " + "; ".join(wrong))
    model.load_state_dict(state, strict=True)


# ---- the authors' released checkpoints ---------------------------------------------------------------------

# Wrappers that the released scripts' training left in front of their names: the Teacher/Student module's
# `decoder` attribute, DataParallel's `module`, torch.compile's `_orig_mod`, in any order.
_WRAPPERS = ("decoder", "module", "_orig_mod")
_OUR_CLRB = re.compile(r"branches\.(hm|mh|h|m)\.clras\.(\d+)\.blocks\.(\d+)\.(conv[1-5]\.(?:weight|bias))")
_OUR_STEM = re.compile(r"branches\.(hm|mh|h|m)\.stem\.conv\.(weight|bias)")


def released_name(name: str) -> str:
    """The released scripts' name (after `decoder.`) of one of our state-dict entries."""
    if m := _OUR_STEM.fullmatch(name):
        return f"{m[1]}conv1.{m[2]}"
    if m := _OUR_CLRB.fullmatch(name):
        return f"{m[1]}feat.{m[2]}.MFB{int(m[3]) + 1}.{m[4]}"
    if name.startswith("csa."):
        return "fuse_att." + name[len("csa."):]
    if name.split(".")[0] in ("fuse", "last"):
        return name
    raise ValueError(f"name: expected a DTSNet state-dict key, got {name!r}")


def _strip_wrappers(key: str) -> str:
    # torch.compile may wrap any submodule, so `_orig_mod` goes wherever it is (as the released test script
    # does); the other wrappers only lead.
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    while len(parts) > 1 and parts[0] in _WRAPPERS:
        parts.pop(0)
    return ".".join(parts)


def _read_state_dict(path_or_state_dict) -> tuple[Mapping, str]:
    if isinstance(path_or_state_dict, Mapping):
        state, source = path_or_state_dict, "the given state dict"
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"path_or_state_dict: expected an existing checkpoint file, got {str(path)!r}")
        source = str(path)
        try:
            state = (load_file(str(path)) if path.suffix == ".safetensors"
                     else torch.load(path, map_location="cpu", weights_only=True))
        except (pickle.UnpicklingError, SafetensorError, RuntimeError) as e:
            raise ValueError(f"path_or_state_dict: expected a checkpoint of tensors (a state dict, loadable with "
                             f"weights_only=True), got {source} that fails to load: {e}") from e
    else:
        raise ValueError(f"path_or_state_dict: expected a path or a state dict, got "
                         f"{type(path_or_state_dict).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"path_or_state_dict: expected a state dict (a mapping of names to tensors), got "
                         f"{type(state).__name__} from {source}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"path_or_state_dict: expected tensors for every key, got other values for "
                         f"{not_tensors} in {source}")
    return state, source


def load_reference_checkpoint(path_or_state_dict, preset: str, bands: int = 172, msi_bands: int = 4,
                              scale: int = 4, backend: str | None = None, **overrides) -> DTSNet:
    """Builds `preset` with csa="reference" and loads a checkpoint of the authors' released scripts into it.

    Accepts a .pth/.pt file (loaded with `torch.load(weights_only=True)`), a .safetensors file or a state
    dict, possibly wrapped as {"state_dict": ...} or {"model": ...}. Their names map onto ours as
    `[decoder.|module.|_orig_mod.]*` + `{b}conv1` -> `branches.{b}.stem.conv`,
    `{b}feat.{i}.MFB{j}.conv{k}` -> `branches.{b}.clras.{i}.blocks.{j-1}.conv{k}`, `fuse_att.X` -> `csa.X`,
    `fuse`, `last` unchanged. The released student builds an hm CLRA that it never runs; when the preset's
    hm depth is 0 those `hmfeat.*` weights are ignored with a logged note. Any other unknown key, any missing
    key and any shape mismatch is a ValueError that lists them (in the released names).
    `overrides` change ModelConfig fields, for checkpoints trained with other widths (the scripts'
    --num_base_chs and --num_agg_feat are `nf` and `gc`).
    """
    if "csa" in overrides:
        raise ValueError(f"csa: expected no override (a released checkpoint implies csa='reference'), got "
                         f"{overrides['csa']!r}")
    state, source = _read_state_dict(path_or_state_dict)
    model = create(preset, bands=bands, msi_bands=msi_bands, scale=scale, csa="reference", backend=backend,
                   **overrides)
    ours_by_theirs = {released_name(k): k for k in model.state_dict()}

    renamed, ignored, unknown = {}, [], []
    originals: dict[str, str] = {}
    for key, value in state.items():
        theirs = _strip_wrappers(key)
        if theirs in originals:
            raise ValueError(f"path_or_state_dict: expected each weight once, got {originals[theirs]!r} and "
                             f"{key!r} in {source}")
        originals[theirs] = key
        if theirs in ours_by_theirs:
            renamed[ours_by_theirs[theirs]] = value
        elif theirs.startswith("hmfeat.") and model.config.depths[0] == 0:
            ignored.append(key)
        else:
            unknown.append(key)
    missing = [f"decoder.{theirs}" for theirs, ours in ours_by_theirs.items() if ours not in renamed]
    if unknown or missing:
        raise ValueError(f"path_or_state_dict: expected the released {preset!r} weights, got {source} with "
                         f"unknown keys {unknown} and missing keys {missing}")
    if ignored:
        logger.info("ignoring %d hmfeat.* weights from %s: the released student builds that hm CLRA but never "
                    "runs it (preset %r has hm depth 0)", len(ignored), source, preset)
    names = {ours: originals[theirs] for theirs, ours in ours_by_theirs.items()}
    _load_exact(model, renamed, source, names)
    return model


__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "load_reference_checkpoint", "released_name", "save_model"]
