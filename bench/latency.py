"""Side-by-side latency of the CSAKD student and teacher: plain PyTorch (eager fp32 / bf16), torch.compile of
the plain path, and csakd's fast path, plus one teacher+student co-training step.

    python bench/latency.py                 # the machine's best device, paper size on a GPU
    python bench/latency.py --quick         # seconds: tiny sizes, few iterations (CI smoke run)

On a GPU the defaults are the paper's size (LR 64²x172, HR 256²x4) at B=1 and 4; on a CPU the defaults are
smaller (LR 16², HR 64², B=1) so that the run takes about a minute. Each figure is the median of many runs
after warm-up (CUDA events on a GPU). Ratios are against eager fp32 and against torch.compile.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, best_device, environment, measured_ceilings, time_fn, write_json  # noqa: E402

import csakd  # noqa: E402
from csakd import ops  # noqa: E402
from csakd.losses import LossWeights  # noqa: E402
from csakd.models import count_macs  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--models", nargs="+", default=["student", "teacher"], help="presets to time")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (GPU: 1 4, CPU: 1)")
    p.add_argument("--lr-size", type=int, default=None, help="LR side (GPU: 64, CPU: 16); HR = 4x")
    p.add_argument("--bands", type=int, default=172, help="hyperspectral bands (default 172)")
    p.add_argument("--msi-bands", type=int, default=4, help="multispectral bands (default 4)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                   help="dtypes of the fast path (GPU: fp32 bf16, CPU: fp32)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per case (GPU 50, CPU 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (GPU 10, CPU 2)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference path")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (GPU: max-autotune-no-cudagraphs, CPU: default)")
    p.add_argument("--no-train", action="store_true", help="skip the co-training step")
    p.add_argument("--train-crop", type=int, default=None, help="HR crop of the training step (GPU 128, CPU 32)")
    p.add_argument("--train-batch", type=int, default=4, help="batch of the training step (default 4)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few iterations, no compile (smoke test)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/latency_<device>.json)")
    return p.parse_args(argv)


def defaults(args, device):
    gpu = device.type == "cuda"
    args.batch = args.batch or ([1, 4] if gpu else [1])
    args.lr_size = args.lr_size or (64 if gpu else 16)
    args.dtypes = args.dtypes or (["fp32", "bf16"] if gpu else ["fp32"])
    args.iters = args.iters or (50 if gpu else 5)
    args.warmup = args.warmup or (10 if gpu else 2)
    args.train_crop = args.train_crop or (128 if gpu else 32)
    args.compile_mode = args.compile_mode or ("max-autotune-no-cudagraphs" if gpu else "default")
    if args.quick:
        args.batch, args.lr_size, args.iters, args.warmup = [1], 4, 3, 1
        args.train_crop, args.train_batch, args.no_compile = 16, 1, True
    return args


def inputs(batch, args, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    lr = torch.rand(batch, args.bands, args.lr_size, args.lr_size, generator=g)
    msi = torch.rand(batch, args.msi_bands, 4 * args.lr_size, 4 * args.lr_size, generator=g)
    return lr.to(device, dtype), msi.to(device, dtype)


def forward_cases(name, args, device):
    """(label, backend, dtype, compiled) of each forward variant."""
    cases = [("eager fp32", "reference", "fp32", False)]
    if device.type == "cuda":
        cases.append(("eager bf16", "reference", "bf16", False))
    if not args.no_compile:
        cases += [(f"compile {d}", "reference", d, True) for d in args.dtypes]
    # csakd's drop-in path: backend "auto" with the prepared inference weights (`dtype=`), and on a GPU the
    # same captured in a CUDA graph (`csakd.compile_for`), which removes the per-kernel launch cost.
    cases += [(f"csakd {d}", "auto", d, False) for d in args.dtypes]
    if device.type == "cuda":
        cases += [(f"csakd {d} graph", "auto", d, "graph") for d in args.dtypes]
    return cases


def time_forward(name, batch, label, backend, dtype_name, compiled, args, device):
    dtype = DTYPES[dtype_name]
    if label.startswith("csakd"):  # fp32 weights, prepared once for `dtype`
        model = csakd.create(name, bands=args.bands, msi_bands=args.msi_bands, backend=backend,
                             dtype=dtype).to(device).eval()
    else:
        model = csakd.create(name, bands=args.bands, msi_bands=args.msi_bands, backend=backend).to(device, dtype)
        model.eval()
    lr, msi = inputs(batch, args, device, dtype)
    if compiled == "graph":
        fn = csakd.compile_for(model, tuple(lr.shape), tuple(msi.shape), dtype)
    elif compiled:
        fn = torch.compile(model, mode=args.compile_mode)
    else:
        fn = model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        stats = time_fn(lambda: fn(lr, msi), device, args.warmup, args.iters)
    if device.type == "cuda":
        stats["peak_memory_MB"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return stats


def co_training_step(teacher, student, opt_t, opt_s, batch, impl, autocast):
    """One online-distillation step (docs/data.md): teacher steps, then the student with detached teacher outputs."""
    lr, msi, hr = batch
    weights = LossWeights()
    with autocast():
        yt, ft = teacher(lr, msi, return_features=True)
        lt = impl.teacher_objective(yt.float(), hr, weights)["total"]
    opt_t.zero_grad(set_to_none=True)
    lt.backward()
    opt_t.step()
    with autocast():
        ys, fs = student(lr, msi, return_features=True)
        ls = impl.student_objective(ys.float(), hr, yt.detach().float(), fs.float(), ft.detach().float(),
                                    weights)["total"]
    opt_s.zero_grad(set_to_none=True)
    ls.backward()
    opt_s.step()


def time_training(backend, args, device):
    torch.manual_seed(0)
    teacher = csakd.create("teacher", bands=args.bands, msi_bands=args.msi_bands, backend=backend).to(device)
    student = csakd.create("student", bands=args.bands, msi_bands=args.msi_bands, backend=backend).to(device)
    opt_t = torch.optim.AdamW(teacher.parameters(), lr=1e-4, weight_decay=0)
    opt_s = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0)
    crop = args.train_crop
    g = torch.Generator().manual_seed(1)
    b = args.train_batch
    batch = (torch.rand(b, args.bands, crop // 4, crop // 4, generator=g).to(device),
             torch.rand(b, args.msi_bands, crop, crop, generator=g).to(device),
             torch.rand(b, args.bands, crop, crop, generator=g).to(device))
    impl = ops.resolve(backend, batch[0])
    if device.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        torch.cuda.reset_peak_memory_stats(device)
    else:
        autocast = contextlib.nullcontext
    stats = time_fn(lambda: co_training_step(teacher, student, opt_t, opt_s, batch, impl, autocast), device,
                    max(1, args.warmup // 2), max(3, args.iters // 5))
    if device.type == "cuda":
        stats["peak_memory_MB"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return stats


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else best_device()
    args = defaults(args, device)
    env = environment(device)
    ceilings = measured_ceilings(device)
    peak_flops = ceilings.get("bf16_matmul_flops")
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    print(f"fast path on this device: {ops.resolve_name('auto', device)}")
    rows, failures = [], []
    for name in args.models:
        model = csakd.create(name, bands=args.bands, msi_bands=args.msi_bands)
        for batch in args.batch:
            macs = count_macs(model, (batch, args.bands, args.lr_size, args.lr_size),
                              (batch, args.msi_bands, 4 * args.lr_size, 4 * args.lr_size))
            for label, backend, dtype_name, compiled in forward_cases(name, args, device):
                try:
                    stats = time_forward(name, batch, label, backend, dtype_name, compiled, args, device)
                except Exception as exc:  # record it and time the other variants (a GPU run is scarce)
                    failures.append({"model": name, "batch": batch, "variant": label, "error": repr(exc)})
                    print(f"  {name:8s} B={batch} {label:12s} FAILED: {exc!r}", flush=True)
                    continue
                stats.update(model=name, batch=batch, variant=label, backend=backend, dtype=dtype_name,
                             compiled=compiled, macs=macs)
                if peak_flops:
                    stats["roofline_fraction"] = 2 * macs / (stats["median_ms"] * 1e-3) / peak_flops
                rows.append(stats)
                print(f"  {name:8s} B={batch} {label:12s} {stats['median_ms']:10.3f} ms", flush=True)
    train_rows = []
    if not args.no_train:
        for backend in dict.fromkeys(["reference", "auto"]):
            if backend == "auto" and ops.resolve_name("auto", device) == "reference":
                continue
            stats = time_training(backend, args, device)
            stats.update(backend=backend, batch=args.train_batch, crop=args.train_crop)
            train_rows.append(stats)
            print(f"  co-training step ({backend}) {stats['median_ms']:10.3f} ms", flush=True)
    add_ratios(rows, train_rows)
    print_table(rows, train_rows)
    out = Path(args.out) if args.out else RESULTS / f"latency_{device.type}.json"
    payload = {"environment": env, "ceilings": ceilings, "settings": vars(args), "forward": rows,
               "training": train_rows, "failures": failures}
    print(f"results: {write_json(out, payload)}")
    return payload


def add_ratios(rows, train_rows):
    for r in rows:
        same = [x for x in rows if x["model"] == r["model"] and x["batch"] == r["batch"]]
        eager = next((x for x in same if x["variant"] == "eager fp32"), None)
        if eager is not None:
            r["speedup_vs_eager_fp32"] = eager["median_ms"] / r["median_ms"]
        compiled = [x for x in same if x["compiled"] is True and x["dtype"] == r["dtype"]]
        if compiled:
            r["speedup_vs_compile"] = compiled[0]["median_ms"] / r["median_ms"]
    if train_rows:
        base = train_rows[0]["median_ms"]
        for r in train_rows:
            r["speedup_vs_reference"] = base / r["median_ms"]


def print_table(rows, train_rows):
    print()
    print(f"{'model':8s} {'B':>2s} {'variant':16s} {'median ms':>10s} {'vs eager':>9s} {'vs compile':>10s} "
          f"{'peak MB':>8s} {'roofline':>8s}")
    for r in rows:
        vc = f"{r['speedup_vs_compile']:.2f}x" if "speedup_vs_compile" in r else "-"
        mem = f"{r['peak_memory_MB']:.0f}" if "peak_memory_MB" in r else "-"
        roof = f"{100 * r['roofline_fraction']:.1f}%" if "roofline_fraction" in r else "-"
        ve = f"{r['speedup_vs_eager_fp32']:.2f}x" if "speedup_vs_eager_fp32" in r else "-"
        print(f"{r['model']:8s} {r['batch']:2d} {r['variant']:16s} {r['median_ms']:10.3f} "
              f"{ve:>9s} {vc:>10s} {mem:>8s} {roof:>8s}")
    for r in train_rows:
        mem = f"{r['peak_memory_MB']:.0f}" if "peak_memory_MB" in r else "-"
        print(f"co-train B={r['batch']} {r['crop']}² {r['backend']:10s} {r['median_ms']:10.3f} ms "
              f"{r['speedup_vs_reference']:.2f}x vs reference, peak {mem} MB")


if __name__ == "__main__":
    main()
