"""Time of `csakd.data.degrade` (Wald's protocol: blur + decimation, spectral response, optional noise and
misregistration) on a batch of HR-HSI cubes, and of the synthetic scene generator.

    python bench/degrade.py                      # batch 4 of 256x256x172, the machine's best device
    python bench/degrade.py --quick              # seconds: fewer runs (CI smoke run)
    python bench/degrade.py --out bench/results/degrade_cpu.json

Target (issue 4): a batch of 4 HR-HSI of 256^2 x 172 in under 1 s on the 2-core CPU. Each figure is the
median of many runs after warm-up (CUDA events on a GPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, best_device, environment, time_fn, write_json  # noqa: E402

from csakd.data import DegradationSpec, aviris_172_wavelengths, degrade, generate_scene  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CASES = {
    "clean (blur, decimate, SRF)": {},
    "AWGN 35 dB on both": {"snr_db": 35.0, "noise_on": "both"},
    "AWGN 35 dB + MSI shift (0.5, -0.25)": {"snr_db": 35.0, "noise_on": "both", "msi_shift": (0.5, -0.25)},
    "Landsat TM 6 bands, Gaussian SRF": {"srf_preset": "landsat_tm_6", "srf_model": "gaussian"},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch", type=int, default=4, help="HR-HSI per batch (default 4)")
    p.add_argument("--size", type=int, default=256, help="HR side (default 256)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                   help="dtypes (GPU: fp32 bf16, CPU: fp32)")
    p.add_argument("--iters", type=int, default=None, help="timed runs (GPU 50, CPU 15)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs (GPU 10, CPU 3)")
    p.add_argument("--quick", action="store_true", help="few runs (smoke test)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/degrade_<device>.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else best_device()
    gpu = device.type == "cuda"
    iters = 3 if args.quick else (args.iters or (50 if gpu else 15))
    warmup = 1 if args.quick else (args.warmup or (10 if gpu else 3))
    dtypes = args.dtypes or (["fp32", "bf16"] if gpu else ["fp32"])
    wavelengths = aviris_172_wavelengths()

    generate = time_fn(lambda: generate_scene(args.size, args.size, seed=0), torch.device("cpu"),
                       warmup=1, iters=3 if args.quick else 7)
    print(f"generate_scene {args.size}x{args.size}x172 (numpy, CPU): {generate['median_ms']:.1f} ms")
    scenes = [torch.from_numpy(generate_scene(args.size, args.size, seed=k)).permute(2, 0, 1)
              for k in range(args.batch)]
    batch = torch.stack(scenes).to(device)

    rows = []
    for dtype_name in dtypes:
        x = batch.to(DTYPES[dtype_name])
        for case, fields in CASES.items():
            spec = DegradationSpec(**fields)
            result = time_fn(lambda: degrade(x, spec, wavelengths), device, warmup=warmup, iters=iters)
            rows.append({"case": case, "dtype": dtype_name, **result})
            print(f"degrade B={args.batch} {args.size}^2x172 {dtype_name:5s} {case:38s} "
                  f"{result['median_ms']:8.1f} ms (min {result['min_ms']:.1f})")
    payload = {"benchmark": "degrade", "environment": environment(device), "batch": args.batch, "size": args.size,
               "bands": 172, "iters": iters, "warmup": warmup, "generate_scene_ms": generate["median_ms"],
               "results": rows, "target": "batch 4 of 256^2x172 under 1000 ms on the 2-core CPU"}
    out = args.out or RESULTS / f"degrade_{device.type}.json"
    write_json(out, payload)
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
