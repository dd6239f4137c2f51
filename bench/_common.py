"""Shared helpers of the benchmark scripts: timing (median after warm-up, CUDA events on GPU), the device's
measured ceilings, and the metadata every results JSON carries."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # benchmarks also run from a checkout that is not installed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int = 5, iters: int = 20) -> dict:
    """Median, min and spread of `fn()` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "min_ms": min(times), "p25_ms": q[0], "p75_ms": q[2],
            "iters": iters}


def measured_ceilings(device: torch.device) -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate, measured here."""
    if device.type != "cuda":
        return {}
    n = 1 << 28  # 512 MiB of bf16 per buffer: far beyond L2
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    copy = time_fn(lambda: b.copy_(a), device, warmup=3, iters=20)
    bw = 2 * a.numel() * a.element_size() / (copy["median_ms"] * 1e-3)
    del a, b
    m = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    mm = time_fn(lambda: m @ m, device, warmup=3, iters=10)
    flops = 2 * 8192 ** 3 / (mm["median_ms"] * 1e-3)
    return {"copy_bandwidth_Bps": bw, "bf16_matmul_flops": flops}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return f"{commit}+dirty" if commit and dirty else commit
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CSAKD_COMMIT")


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": name,
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": os.environ.get("CSAKD_COMMIT") or git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def add_kernel_bench_args(p) -> None:
    """The timing options the kernel micro-benchmarks (csa.py, losses.py) share."""
    p.add_argument("--warmup", type=int, default=25, help="GPU: warm-up ms for do_bench; CPU: untimed runs")
    p.add_argument("--rep", type=int, default=200, help="GPU: timed ms for do_bench; CPU: timed runs")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode of the reference")
