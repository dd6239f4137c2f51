"""`csakd fuse` end to end with each --runtime on the CPU: the paper student (untrained weights: speed, not
quality), a synthetic LR-HSI / HR-MSI pair in .npy files, the product to .npy. Rounds alternate the runtimes
in one process; the median per runtime is reported with its ratio to torch and the relative L2 of its product
against torch fp32's. A runtime's time includes its scene-statistics pass in PyTorch and, in a separate
figure, the ONNX export and verification it makes once per run.

    python bench/fuse_runtime.py                      # LR 96² x 172, tile 64: 4 tiles; 3 rounds
    python bench/fuse_runtime.py --out bench/results/fuse_runtime_cpu.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks also run from a checkout

from _common import environment, run_dir, write_json  # noqa: E402

import csakd  # noqa: E402
from csakd.cli.fuse import fuse_files  # noqa: E402
from csakd.inference.runtime import ExportedNetwork, check_runtime  # noqa: E402

VARIANTS = (("torch", "fp32"), ("torch", "auto"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
            ("openvino", "auto"))


def _available(runtime: str) -> bool:
    """Whether `csakd fuse --runtime` can run `runtime` here (its packages installed)."""
    try:
        check_runtime(runtime, "fp32", torch.device("cpu"))
        return True
    except ValueError:
        return False


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr-size", type=int, default=96, help="LR-HSI side in pixels (HR: 4x)")
    p.add_argument("--bands", type=int, default=172)
    p.add_argument("--preset", default="student")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the JSON here (default: a fresh folder under runs/)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="csakd-fuse-bench-") as tmp:
        tmp = Path(tmp)
        model = csakd.create(args.preset, bands=args.bands, msi_bands=4)
        model.save(tmp / "model.safetensors")
        n = args.lr_size
        lr = 0.1 + 0.8 * rng.random((n, n, args.bands), dtype=np.float32)
        msi = 0.1 + 0.8 * rng.random((4 * n, 4 * n, 4), dtype=np.float32)
        np.save(tmp / "lr.npy", lr)
        np.save(tmp / "msi.npy", msi)
        variants = [v for v in VARIANTS if _available(v[0])]
        export_seconds = {}
        for runtime in sorted({r for r, _ in variants} - {"torch"}):
            start = time.perf_counter()
            ExportedNetwork(csakd.load(tmp / "model.safetensors"), runtime, "fp32", tmp / f"export-{runtime}")
            export_seconds[runtime] = round(time.perf_counter() - start, 1)
        times = {v: [] for v in variants}
        products = {}
        for round_ in range(args.rounds):
            for runtime, precision in variants:
                out = tmp / f"{runtime}-{precision}.npy"
                out.unlink(missing_ok=True)
                start = time.perf_counter()
                fuse_files(tmp / "model.safetensors", tmp / "lr.npy", tmp / "msi.npy", out, tile=args.tile,
                           device="cpu", precision=precision, progress=False, runtime=runtime)
                times[(runtime, precision)].append(time.perf_counter() - start)
                if round_ == 0:
                    products[(runtime, precision)] = np.load(out)
                print(f"round {round_ + 1}: {runtime:12s} {precision:5s} {times[(runtime, precision)][-1]:7.1f} s",
                      flush=True)
    reference = products[("torch", "fp32")].astype(np.float64)
    base = statistics.median(times[("torch", "fp32")])
    default = statistics.median(times[("torch", "auto")])
    rows = []
    for (runtime, precision), ts in times.items():
        median = statistics.median(ts)
        diff = products[(runtime, precision)].astype(np.float64) - reference
        # The export each non-torch run makes first, timed apart: an estimate, meaningless where the runs are
        # no longer than it (small scenes), so left out there.
        fusing = median - export_seconds.get(runtime, 0.0)
        fusing = fusing if fusing > 0.1 * median else None
        rows.append({"runtime": runtime, "precision": precision, "median_s": round(median, 2),
                     "median_without_export_s": None if fusing is None else round(fusing, 2),
                     "without_export_vs_torch_auto": None if fusing is None else round(default / fusing, 3),
                     "seconds": [round(t, 2) for t in ts], "vs_torch_fp32": round(base / median, 3),
                     "vs_torch_auto": round(default / median, 3),
                     "rel_l2_vs_torch_fp32": float(np.linalg.norm(diff) / np.linalg.norm(reference))})
    result = {"benchmark": "fuse_runtime", "preset": args.preset, "lr": [args.bands, args.lr_size, args.lr_size],
              "tile": args.tile, "rounds": args.rounds, "export_and_verify_s": export_seconds, "rows": rows,
              "env": environment(torch.device("cpu"))}
    for row in rows:
        ratio = row["without_export_vs_torch_auto"]
        print(f"{row['runtime']:12s} {row['precision']:5s} {row['median_s']:7.1f} s  {row['vs_torch_fp32']:.2f}x "
              f"torch fp32  {row['vs_torch_auto']:.2f}x torch auto ({'-' if ratio is None else f'{ratio:.2f}x'} "
              f"without the export)  rel L2 {row['rel_l2_vs_torch_fp32']:.1e}")
    path = Path(args.out) if args.out else run_dir("fuse-runtime") / "fuse_runtime.json"
    write_json(path, result)
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
