"""Shared helpers of the benchmark scripts: timing (median after warm-up, CUDA events on GPU), the device's
measured ceilings, the metadata every results JSON carries (for a CPU: its model, load and bf16 capability),
memory figures of the running process, and fresh run folders for results."""
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
RUNS = ROOT / "runs"  # git-ignored: where results go unless --out names a file
sys.path.insert(0, str(ROOT))  # benchmarks also run from a checkout that is not installed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int = 5, iters: int = 20, keep_times: bool = False) -> dict:
    """Median, min and spread of `fn()` in milliseconds after `warmup` untimed calls (and each time, in
    "times_ms", with `keep_times`)."""
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
    return summarize(times) | ({"times_ms": times} if keep_times else {})


def summarize(times: list[float]) -> dict:
    """Median, min, quartiles and count of times in milliseconds."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "min_ms": min(times), "p25_ms": q[0], "p75_ms": q[2],
            "iters": len(times)}


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


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_info() -> dict:
    """The CPU a run measured: model, logical cores, load averages at the time (a shared machine's load changes
    the figures), and the bf16 capability csakd's `dtype="auto"` decides on."""
    from csakd.inference.cpu import bf16_capability

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"model": cpu_model(), "logical_cores": os.cpu_count(), "load_average_1_5_15": load,
            "bf16": bf16_capability()}


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": name,
        "device_type": device.type,
        "cpu": cpu_info(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": os.environ.get("CSAKD_COMMIT") or git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_dir(name: str) -> Path:
    """A fresh folder runs/bench-<name>-<UTC date>-<time>[-n]/ for a run's results: benchmarks write tracked
    files (bench/results/) only when --out names them."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = RUNS / f"bench-{name}-{stamp}" if n == 0 else RUNS / f"bench-{name}-{stamp}-{n}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder under {RUNS}")


def rss_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB: VmHWM of /proc/self/status on Linux (the high-water
    mark of this program's own memory; getrusage's ru_maxrss would also count the parent's resident memory at
    the fork that started it), getrusage elsewhere (bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 10
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


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
