"""Export of a network to ONNX or to a torch.export program (.pt2), checked against the eager model before
anything is written, with a model card beside the file (docs/deploy.md).

    result = csakd.export(model, "student.onnx")             # or export(model, path, format="pt2")
    result.checks                                             # max abs / relative L2 error per sample input

What is exported is a CPU float32 copy of the model, built from its config and weights; the caller's model is
left as it was (device, dtype, backend, prepared weights). ONNX always exports the reference path
(`backend="reference"`, no prepared dtype): plain convolutions, interpolations, einsums and softmax, standard
ONNX operators only, because the fast paths' custom ops (the C++ CLRB op, the Triton CSA kernels) have no ONNX
translation. A .pt2 may instead keep a fast backend's custom ops (`backend="cuda"`: `torch.ops.csakd.*` nodes,
which torch.export traces through their fake implementations); loading such a file needs the modules that
register those ops (listed in the card).

`scene_attention=True` (CSA mode "attention") adds a third input, "attention" (1, heads, d, d): the attention the
CSA applies instead of computing its own from the input, as tiled fusion of a large scene does with the scene's
attention (`csakd fuse --runtime`).

Batch size and the LR's height and width are dynamic; the HR-MSI's and the output's are scale times those
(derived dimensions "s*h", "s*w"). Before the file is moved into place it is run (onnxruntime on the CPU, or
`torch.export.load(...).module()`) on fixed sample inputs at two spatial sizes and two batch sizes and compared
with the eager model on the reference backend in fp32; a relative L2 error above `MAX_REL_L2` refuses the
export and writes nothing.

This module is callable: `csakd.export(model, path, ...)` is `csakd.export.export(model, path, ...)`.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import logging
import platform
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ._files import replace, temp_path

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
INPUT_NAMES = ("lr_hsi", "hr_msi")
ATTENTION_INPUT = "attention"
OUTPUT_NAMES = ("hr_hsi",)
# Opset 18 is the oldest the exporter writes natively (older ones go through the version converter) and is
# run by every onnxruntime since 1.14, so it is the most widely loadable choice.
DEFAULT_OPSET = 18
# The exported graph computes the same function in fp32 with other summation orders and fusions (onnxruntime
# fuses conv + bias + activation, einsum and softmax are lowered differently). Such reorderings change a sum
# of K terms by about sqrt(K) units of fp32 rounding (6e-8); through the paper teacher (K up to 258 x 9, some
# 40 layers) that stays near 1e-6 relative. 1e-5 leaves room for that, while a real difference in the graph
# (another interpolation rule at the borders, a lost bias, attention on the wrong axis) is 1e-3 or more.
MAX_REL_L2 = 1e-5
# Sample inputs (batch, LR height, LR width): traced at TRACE_SIZE, checked at SAMPLE_SIZES, which differ from
# it and from each other in batch and in both spatial sizes, so a graph specialised to the traced shape fails.
TRACE_SIZE = (2, 16, 16)
SAMPLE_SIZES = ((1, 16, 16), (2, 12, 20))
SAMPLE_SEED = 0
CARD_SUFFIX = ".card.json"
CARD_VERSION = 1
# One ONNX file holds at most 2 GiB (protobuf); larger weights would need an external data file beside it.
ONNX_MAX_BYTES = 2 ** 31 - 1
# Python modules that register each csakd custom op (what to import before loading a .pt2 that holds them).
_OP_MODULES = {"clrb_forward": "csakd.ops.clrb", "clrb_backward": "csakd.ops.clrb",
               "csa_fuse": "csakd.kernels.csa", "csa_fuse_backward": "csakd.kernels.csa",
               "csa_apply": "csakd.kernels.csa"}


@dataclass(frozen=True)
class Check:
    """The exported model against the eager one on one sample input."""

    batch: int
    lr_size: tuple[int, int]
    hr_size: tuple[int, int]
    max_abs: float
    rel_l2: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_size"], d["hr_size"] = list(self.lr_size), list(self.hr_size)
        return d


@dataclass(frozen=True)
class ExportResult:
    path: Path
    card_path: Path
    format: str
    backend: str
    opset: int | None
    checks: tuple[Check, ...]
    bound: float
    seconds: float
    card: dict = field(repr=False)

    @property
    def max_rel_l2(self) -> float:
        return max(c.rel_l2 for c in self.checks)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.checks)


def card_path(path) -> Path:
    """The model card written beside an exported file: `<file>.card.json`."""
    path = Path(path)
    return path.with_name(path.name + CARD_SUFFIX)


def export(model, path, format: str | None = None, *, opset: int | None = None, backend: str = "reference",
           source: str | None = None, scene_attention: bool = False) -> ExportResult:
    """Exports `model` (a DTSNet) to `path` as ONNX (`format="onnx"`) or as a torch.export program saved with
    `torch.export.save` (`format="pt2"`); None takes the format from the extension (.onnx, .pt2).

    The exported graph is that of a CPU float32 copy of the model on `backend` without a prepared dtype. ONNX
    takes only backend "reference" (the fast paths' custom ops have no ONNX translation), at `opset` (default
    `DEFAULT_OPSET`). A .pt2 may keep a fast backend's custom ops (e.g. "cuda": the CLRB op); a failure to
    trace them is a ValueError that says so. Batch, LR height and width are dynamic, the HR sizes are scale
    times those.

    Before anything is written at `path`, the file is run on sample inputs (see `SAMPLE_SIZES`) and compared
    with the eager model on the reference backend in fp32; a relative L2 error above `MAX_REL_L2` is a
    ValueError and nothing is written. Otherwise the file is renamed into place atomically, with the model
    card `<path>.card.json` beside it (`source`, e.g. the checkpoint, is recorded there). Missing parent
    folders are created. Returns the paths, the figures of each check and the card.

    `scene_attention=True` (CSA mode "attention" only) exports `model(lr_hsi, hr_msi, attention=attention)` with
    the attention as a third input of shape (1, heads, d, d); the checks then give each sample an attention too.
    """
    from .models import DTSNet
    from .ops.backend import BACKENDS

    start = time.perf_counter()
    if not isinstance(model, DTSNet):
        raise ValueError(f"model: expected a csakd DTSNet (e.g. from csakd.create or csakd.load), got "
                         f"{type(model).__name__}")
    path = Path(path)
    format = _check_format(format, path)
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if format == "onnx":
        if backend != "reference":
            raise ValueError(f"backend: ONNX export takes the reference path only (the custom ops of the fast "
                             f"backends have no ONNX translation), got {backend!r}")
        opset = DEFAULT_OPSET if opset is None else opset
        if not isinstance(opset, int) or isinstance(opset, bool) or opset < 1:
            raise ValueError(f"opset: expected a positive integer, got {opset!r}")
        _require_onnx()
    elif opset is not None:
        raise ValueError(f"opset: applies to format 'onnx' only, got opset {opset!r} with format {format!r}")
    if path.is_dir():
        raise ValueError(f"path: expected a file name, got the folder {str(path)!r}")
    if scene_attention and model.config.csa != "attention":
        raise ValueError(f"scene_attention: applies to CSA mode 'attention' only (the others take no attention), "
                         f"got a model in mode {model.config.csa!r}")

    created = _make_parents(path.parent)  # first: a wrong output folder fails before the slow work
    tmp = card_tmp = None
    try:
        reference = _cpu_copy(model, "reference")
        exported_model = reference if backend == "reference" else _cpu_copy(model, backend)
        if scene_attention:
            reference, exported_model = _WithAttention(reference), _WithAttention(exported_model)
        samples = sample_inputs(reference.config, attention=scene_attention)
        with torch.no_grad():
            expected = [reference(*sample) for sample in samples]
        tmp = temp_path(path)
        if format == "onnx":
            info = _write_onnx(exported_model, tmp, opset)
        else:
            info = _write_pt2(exported_model, tmp, backend)
        outputs = run_file(format, tmp, samples)
        checks = tuple(_compare(sample[0], out, ref) for sample, out, ref in zip(samples, outputs, expected))
        worst = max(checks, key=lambda c: c.rel_l2)
        if not worst.rel_l2 <= MAX_REL_L2:  # also refuses NaN
            raise ValueError(
                f"model: the exported {format} file disagrees with the eager model: relative L2 error "
                f"{worst.rel_l2:.3g} > bound {MAX_REL_L2:g} at batch {worst.batch}, LR {worst.lr_size[0]}x"
                f"{worst.lr_size[1]} (max abs error {worst.max_abs:.3g}); nothing written to {str(path)!r}")
        seconds = time.perf_counter() - start
        card = model_card(reference.config, path, format, backend, info, checks, seconds, tmp, source,
                          scene_attention)
        card_tmp = temp_path(card_path(path))
        card_tmp.write_text(json.dumps(card, indent=2) + "\n")
        replace(tmp, path, sync_folder=False)
        replace(card_tmp, card_path(path))
    except BaseException:
        for leftover in (tmp, card_tmp):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        for folder in reversed(created):  # only the folders made here, and only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return ExportResult(path, card_path(path), format, backend, info.get("opset"), checks, MAX_REL_L2, seconds,
                        card)


# ---- arguments ------------------------------------------------------------------------------------------------

def _check_format(format: str | None, path: Path) -> str:
    by_suffix = {suffix: name for name, suffix in FORMATS.items()}
    suffix = path.suffix.lower()
    if format is None:
        if suffix not in by_suffix:
            raise ValueError(f"path: expected a file ending in one of {tuple(by_suffix)} (or an explicit format), "
                             f"got {str(path)!r}")
        return by_suffix[suffix]
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {tuple(FORMATS)}, got {format!r}")
    if suffix != FORMATS[format]:
        raise ValueError(f"path: expected a file ending in {FORMATS[format]} for format {format!r}, got "
                         f"{str(path)!r}")
    return format


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if _version(name) is None]
    if missing:
        raise ValueError(f"format: 'onnx' needs the packages onnx, onnxscript and onnxruntime, missing "
                         f"{missing} (pip install {' '.join(missing)})")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- the model and its inputs -------------------------------------------------------------------------------

def _cpu_copy(model, backend: str):
    """A float32 CPU DTSNet with `model`'s config and weights on `backend`, in eval mode, with no prepared
    dtype: the module path, whose forward is the one the exporters trace."""
    from .models import from_config

    twin = from_config(model.config, backend=backend)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin.eval()


class _WithAttention(torch.nn.Module):
    """`net(lr_hsi, hr_msi, attention=attention)` with the attention as a positional input, for the exporters."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config = net, net.config
        self.train(net.training)

    def forward(self, lr_hsi, hr_msi, attention):
        return self.net(lr_hsi, hr_msi, attention=attention)


def attention_shape(config) -> tuple[int, int, int, int]:
    """The shape of a given CSA attention for `config`: (1, heads, d, d)."""
    d = config.attn_dim // config.heads
    return (1, config.heads, d, d)


def sample_inputs(config, sizes=SAMPLE_SIZES, seed: int = SAMPLE_SEED,
                  attention: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """Deterministic (lr_hsi, hr_msi) pairs for `config` at (batch, h, w) each: uniform in [0, 1), the range
    the network sees after normalisation; with `attention`, a third element, a softmax over random logits."""
    generator = torch.Generator().manual_seed(seed)
    s = config.scale
    samples = []
    for b, h, w in sizes:
        sample = (torch.rand(b, config.bands, h, w, generator=generator),
                  torch.rand(b, config.msi_bands, s * h, s * w, generator=generator))
        if attention:
            sample += (torch.randn(attention_shape(config), generator=generator).softmax(-1),)
        samples.append(sample)
    return samples


def dynamic_shapes(scale: int, attention: bool = False) -> dict:
    """torch.export dynamic shapes of the forward's inputs: batch, h and w free, the HR sizes scale*h, scale*w,
    a given attention static. (Derived dimensions keep the network's own shape check, HR = scale x LR, provable
    while tracing.)"""
    from torch.export import Dim

    batch, h, w = Dim("batch", min=1), Dim("h", min=1), Dim("w", min=1)
    shapes = {"lr_hsi": {0: batch, 2: h, 3: w}, "hr_msi": {0: batch, 2: scale * h, 3: scale * w}}
    if attention:
        shapes[ATTENTION_INPUT] = None
    return shapes


def _has_attention_input(model) -> bool:
    return isinstance(model, _WithAttention)


def _one_line(exc: BaseException) -> str:
    """The innermost cause's first line: exporter errors wrap the useful message in pages of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


@contextlib.contextmanager
def _quiet_exporter():
    """Silences the exporters' deprecation warnings and the ONNX registry's notes about optional packages
    (torchvision ops it skips): they concern torch's internals, not the exported model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _trace(model):
    attention = _has_attention_input(model)
    return torch.export.export(model, sample_inputs(model.config, (TRACE_SIZE,), attention=attention)[0],
                               dynamic_shapes=dynamic_shapes(model.config.scale, attention))


# ---- writers --------------------------------------------------------------------------------------------------

def _write_onnx(model, tmp: Path, opset: int) -> dict:
    import onnx

    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if nbytes > ONNX_MAX_BYTES:
        raise ValueError(f"model: expected weights under 2 GiB for a single ONNX file, got {nbytes / 2**30:.2f} GiB")
    attention = _has_attention_input(model)
    names = INPUT_NAMES + ((ATTENTION_INPUT,) if attention else ())
    example = sample_inputs(model.config, (TRACE_SIZE,), attention=attention)[0]
    try:
        with _quiet_exporter():
            program = torch.onnx.export(model, example, None, dynamo=True, verbose=False, opset_version=opset,
                                        input_names=list(names), output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=dynamic_shapes(model.config.scale, attention))
            program.save(tmp, external_data=False)
    except Exception as exc:
        raise ValueError(f"model: the ONNX exporter failed at opset {opset} ({_one_line(exc)})") from exc
    proto = onnx.load(str(tmp), load_external_data=False)
    written = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if written.get("ai.onnx") != opset:
        raise ValueError(f"opset: expected the file at opset {opset}, got {written.get('ai.onnx')}")
    inputs = tuple(i.name for i in proto.graph.input)
    outputs = tuple(o.name for o in proto.graph.output)
    if inputs != names or outputs != OUTPUT_NAMES:
        raise ValueError(f"model: expected inputs {names} and outputs {OUTPUT_NAMES} in the ONNX graph, "
                         f"got {inputs} and {outputs}")
    return {"opset": opset, "operators": sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}"
                                                 for n in proto.graph.node})}


def _write_pt2(model, tmp: Path, backend: str) -> dict:
    try:
        with _quiet_exporter():
            program = _trace(model)
    except ValueError:
        raise  # csakd's own argument errors (e.g. a backend not available here) already say what is wrong
    except Exception as exc:
        if backend == "reference":
            raise ValueError(f"model: torch.export failed on the reference path ({_one_line(exc)})") from exc
        raise ValueError(f"backend: torch.export could not trace the custom ops of backend {backend!r} "
                         f"({_one_line(exc)}); export with backend 'reference' instead") from exc
    torch.export.save(program, tmp)
    custom = sorted({f"{t.namespace}::{t._opname}" for t in _call_targets(program)
                     if isinstance(t, torch._ops.OpOverload) and t.namespace not in ("aten", "prims")})
    modules = sorted({_OP_MODULES.get(op.split("::")[1], "csakd") for op in custom if op.startswith("csakd::")})
    return {"custom_ops": custom, "requires_imports": modules}


def _call_targets(program):
    for module in program.graph_module.modules():
        for node in module.graph.nodes:
            if node.op == "call_function":
                yield node.target


# ---- verification ---------------------------------------------------------------------------------------------

def run_file(format: str, path: Path, samples) -> list[torch.Tensor]:
    """Runs an exported file on each (lr_hsi, hr_msi[, attention]) of `samples`: onnxruntime's CPU provider for
    ONNX, the loaded program's module for .pt2."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = INPUT_NAMES + (ATTENTION_INPUT,)
        return [torch.from_numpy(session.run(list(OUTPUT_NAMES),
                                             {n: x.numpy() for n, x in zip(names, sample)})[0])
                for sample in samples]
    module = torch.export.load(path).module()
    with torch.no_grad():
        return [module(*sample) for sample in samples]


def _compare(lr: torch.Tensor, out: torch.Tensor, ref: torch.Tensor) -> Check:
    hr_size = tuple(ref.shape[-2:])
    if tuple(out.shape) != tuple(ref.shape):
        return Check(lr.shape[0], tuple(lr.shape[-2:]), hr_size, float("inf"), float("inf"))
    diff = out.double() - ref.double()
    rel = float(diff.norm() / ref.double().norm().clamp_min(torch.finfo(torch.float64).tiny))
    return Check(lr.shape[0], tuple(lr.shape[-2:]), hr_size, float(diff.abs().max()), rel)


# ---- the model card -------------------------------------------------------------------------------------------

def model_card(config, path: Path, format: str, backend: str, info: dict, checks, seconds: float, written: Path,
               source: str | None, scene_attention: bool = False) -> dict:
    """What a deployment needs to know about the exported file (the fields are listed in docs/deploy.md)."""
    from . import __version__

    s, c, m = config.scale, config.bands, config.msi_bands
    dims = ["batch", c, f"{s}*h", f"{s}*w"]
    return {
        "card_version": CARD_VERSION,
        "file": path.name,
        "sha256": _sha256(written),
        "format": format,
        **({"opset": info["opset"], "operators": info["operators"]} if format == "onnx" else
           {"custom_ops": info["custom_ops"], "requires_imports": info["requires_imports"]}),
        "backend": backend,
        # "auto" resolves to the reference path on the CPU, where the copy is traced: the ops decide.
        "graph": (f"backend {backend!r}: custom ops {info['custom_ops']}" if info.get("custom_ops") else
                  "reference path: standard operators only"),
        "preset": config.name,
        "config": config.to_dict(),
        "bands": c,
        "msi_bands": m,
        "scale": s,
        "csa": config.csa,
        "normalisation": _normalisation(config),
        "inputs": [{"name": "lr_hsi", "shape": ["batch", c, "h", "w"], "dtype": "float32"},
                   {"name": "hr_msi", "shape": ["batch", m, f"{s}*h", f"{s}*w"], "dtype": "float32"}]
        + ([{"name": ATTENTION_INPUT, "shape": list(attention_shape(config)), "dtype": "float32",
             "meaning": "the CSA attention applied instead of the input's own (a scene's, for tiled fusion)"}]
           if scene_attention else []),
        "outputs": [{"name": "hr_hsi", "shape": dims, "dtype": "float32"}],
        "layout": "NCHW",
        "dtype": "float32",
        "dynamic_dims": {"batch": {"min": 1}, "h": {"min": 1}, "w": {"min": 1},
                         f"{s}*h": f"{s} x h (derived)", f"{s}*w": f"{s} x w (derived)"},
        "verification": {
            "against": "the eager model, backend 'reference', float32, CPU",
            "runtime": ("onnxruntime CPUExecutionProvider" if format == "onnx" else
                        "torch.export.load(...).module(), CPU"),
            "inputs": f"uniform [0, 1), torch.Generator seed {SAMPLE_SEED}"
                      + ("; attention: softmax of standard normal logits" if scene_attention else ""),
            "bound_rel_l2": MAX_REL_L2,
            "checks": [check.to_dict() for check in checks],
        },
        "export_seconds": round(seconds, 2),
        "source": source,
        "versions": {"csakd": __version__, "torch": torch.__version__, "onnx": _version("onnx"),
                     "onnxscript": _version("onnxscript"), "onnxruntime": _version("onnxruntime"),
                     "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _normalisation(config):
    """The config's value scaling rule (as JSON), or None when the config has none."""
    value = getattr(config, "normalisation", None)
    if value is None:
        return None
    if hasattr(value, "to_config"):
        value = value.to_config()
    return json.loads(json.dumps(value, default=str))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- files ----------------------------------------------------------------------------------------------------

def _make_parents(folder: Path) -> list[Path]:
    """Creates `folder` and its missing parents; returns the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path: expected a folder at {str(folder)!r}, got a file")
    created = []
    for f in reversed(missing):
        f.mkdir()
        created.append(f)
    return created


class _CallableModule(types.ModuleType):
    """`csakd.export` is this module (so `csakd.export.MAX_REL_L2` and monkeypatching work) and also the
    function: importing the submodule binds it as the package attribute, which would hide a function of the
    same name defined in `csakd/__init__.py`."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ATTENTION_INPUT", "CARD_SUFFIX", "Check", "DEFAULT_OPSET", "ExportResult", "FORMATS", "INPUT_NAMES",
           "MAX_REL_L2", "OUTPUT_NAMES", "SAMPLE_SIZES", "attention_shape", "card_path", "dynamic_shapes", "export",
           "model_card", "run_file", "sample_inputs"]
