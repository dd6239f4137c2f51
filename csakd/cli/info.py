"""`csakd info`: versions, devices and which backends this installation can run."""
from __future__ import annotations

import platform


def describe() -> dict:
    import torch

    from .. import __version__, ops

    devices = ["cpu"] + ([f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
                         if torch.cuda.is_available() else [])
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "csakd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "devices": devices,
        "default_backend": ops.get_backend(),
        "backends_cpu": ops.available_backends("cpu"),
        "backends_cuda": ops.available_backends("cuda") if torch.cuda.is_available() else [],
    }


def run(_args) -> int:
    for key, value in describe().items():
        print(f"{key:>16}: {value}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print versions, devices and available backends",
                                   description="Print csakd, torch, triton and CUDA versions, the devices "
                                               "found and the backends available on each.")
    parser.set_defaults(func=run)
