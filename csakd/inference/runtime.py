"""The per-tile network of tiled fusion run by another inference runtime (`csakd fuse --runtime`).

The network is exported to ONNX once per run (`csakd.export`, verified against the eager model before use); in
CSA mode "attention" the graph takes the attention as an input, so every tile applies the scene's attention, as
on the PyTorch path. The scene-statistics pass (query/key features of each tile) stays in PyTorch: it needs
the branches only, and its float64 statistics are the same whatever runs the second pass.

    network = ExportedNetwork(model, "openvino", precision="bf16", folder=tmp)
    fuse_scene(network, lr, msi, ...)        # network(lr, msi, attention=A) runs the exported graph

Runtimes: "onnxruntime" (CPU execution provider, fp32) and "openvino" (its CPU plugin, fp32 or bf16 through
its inference precision hint; bf16 needs a CPU with native bf16, as for PyTorch's bf16 path).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

RUNTIMES = ("torch", "onnxruntime", "openvino")
# The export needs onnx and onnxscript, and checks the file in onnxruntime, whichever runtime then runs it.
_PACKAGES = {"onnxruntime": ("onnx", "onnxscript", "onnxruntime"),
             "openvino": ("onnx", "onnxscript", "onnxruntime", "openvino")}
_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


def auto_rule(runtime: str) -> str:
    """What `--precision auto` means with `runtime`, as a rule of `csakd.inference.precision.inference_dtype`:
    bf16 where the device computes it natively if the runtime runs bf16, else fp32."""
    return "native-bf16" if runtime == "torch" or "bf16" in _PRECISIONS.get(runtime, ()) else "fp32"


def check_runtime(runtime: str, precision: str, device: torch.device) -> None:
    """Refuses a runtime csakd cannot run here, naming the option to change."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: expected one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return
    if device.type != "cpu":
        raise ValueError(f"runtime: {runtime!r} runs on the CPU (--device cpu), got device {device.type!r}")
    missing = [p for p in _PACKAGES[runtime] if _installed(p) is None]
    if missing:
        raise ValueError(f"runtime: {runtime!r} needs the packages {', '.join(_PACKAGES[runtime])}; missing "
                         f"{', '.join(missing)} (pip install {' '.join(missing)})")
    if precision not in _PRECISIONS[runtime]:
        raise ValueError(f"precision: runtime {runtime!r} runs {' or '.join(_PRECISIONS[runtime])}, got {precision!r}")


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


class ExportedNetwork:
    """`model` with its forward replaced by the ONNX export of it run in `runtime`; everything else (config,
    query_key_features, csa, train/eval) is the PyTorch model's. Inputs and outputs are float32 CPU tensors."""

    def __init__(self, model, runtime: str, precision: str, folder):
        from ..export import ATTENTION_INPUT, INPUT_NAMES, export

        check_runtime(runtime, precision, torch.device("cpu"))
        self._model, self.runtime, self.precision = model, runtime, precision
        self._attention = model.config.csa == "attention"
        self._names = INPUT_NAMES + ((ATTENTION_INPUT,) if self._attention else ())
        path = Path(folder) / "network.onnx"
        self.export = export(model, path, scene_attention=self._attention)
        if runtime == "onnxruntime":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self._run = lambda feeds: session.run(None, feeds)[0]
        else:
            import openvino

            hint = {"fp32": "f32", "bf16": "bf16"}[precision]
            compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
            request = compiled.create_infer_request()
            self._run = lambda feeds: request.infer(feeds)[compiled.output(0)]

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, lr_hsi: torch.Tensor, hr_msi: torch.Tensor, attention: torch.Tensor | None = None):
        inputs = [lr_hsi, hr_msi]
        if self._attention:
            if attention is None:
                raise ValueError("attention: the exported graph takes the CSA attention as an input (the scene's, "
                                 "from tiled fusion's first pass); got None")
            inputs.append(attention)
        elif attention is not None:
            raise ValueError(f"attention: only CSA mode 'attention' applies an attention, got mode "
                             f"{self._model.config.csa!r}")
        feeds = {n: np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
                 for n, x in zip(self._names, inputs)}
        return torch.from_numpy(np.array(self._run(feeds), dtype=np.float32, copy=True))


__all__ = ["ExportedNetwork", "RUNTIMES", "auto_rule", "check_runtime"]
