"""Where the time goes: torch.profiler table of one model's forward (and optionally a training step).

    python bench/profile_model.py --model student --dtype bf16 --backend reference
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_device  # noqa: E402

import csakd  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="student", help="preset (default student)")
    p.add_argument("--backend", default="reference", help="reference, triton, cuda or auto")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="dtype of model and inputs")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--lr-size", type=int, default=64, help="LR side (default 64; HR = 4x)")
    p.add_argument("--rows", type=int, default=25, help="rows of the table")
    p.add_argument("--trace", default=None, help="write a Chrome trace JSON here")
    args = p.parse_args(argv)
    device = best_device()
    dtype = DTYPES[args.dtype]
    model = csakd.create(args.model, backend=args.backend).to(device, dtype).eval()
    lr = torch.rand(args.batch, 172, args.lr_size, args.lr_size, device=device, dtype=dtype)
    msi = torch.rand(args.batch, 4, 4 * args.lr_size, 4 * args.lr_size, device=device, dtype=dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        for _ in range(3):
            model(lr, msi)
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(5):
                model(lr, msi)
            if device.type == "cuda":
                torch.cuda.synchronize()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"{args.model} {args.backend} {args.dtype} B={args.batch} LR {args.lr_size}² on {device} (5 forwards)")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
