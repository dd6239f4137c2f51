"""CLRB and CLRA: the csakd extension against eager PyTorch (cuDNN) and torch.compile of the reference.

    python bench/clrb.py                      # GPU: the full grid below (compile at B=1 only)
    python bench/clrb.py --no-compile         # eager and extension only (a minute or two on an H100)
    python bench/clrb.py --quick              # seconds on a CPU: tiny sizes, few iterations (smoke run)

Grid: block (clrb, clra) x spatial size (HR 256, LR 64) x batch (1, 4) x groups (1, 43) x dtype (bf16, fp32) x
mode (fwd, fwd+bwd), nf = 86, gc = 43. Variants: "eager" (the reference module), "compile" (torch.compile of it),
"ext" (csakd.ops.clrb, impl "auto": the tensor-core kernel for groups=1 (fp32 as TF32, as eager cuDNN with
PyTorch's default allow_tf32), the direct kernel for groups=43), "ext-aten" (the extension's ATen path over the same buffer, for comparison).
Each figure is the median of many runs after warm-up (CUDA events on a GPU); forward runs under no_grad,
fwd+bwd calls torch.autograd.grad for the input and every parameter.

Achieved rates: TFLOP/s from the conv MACs (csakd.models.blocks.clrb_flops; fwd+bwd counts 3x the forward),
GB/s from a fused-traffic model (each conv reads its input channels and writes its output channels once, the
residual reads x; the backward reads and writes twice that), which is what a perfectly fused CLRB must move.
Results are written incrementally to --out (default bench/results/clrb_<device>.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, best_device, environment, measured_ceilings, time_fn, write_json  # noqa: E402

from csakd.models.blocks import CLRA, CLRB, clrb_flops  # noqa: E402
from csakd.ops import clrb as ext  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NF, GC = 86, 43


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--blocks", nargs="+", default=["clrb", "clra"], choices=["clrb", "clra"])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 64], help="square spatial sizes (HR 256, LR 64)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--groups", type=int, nargs="+", default=[1, 43], choices=[1, 43])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--variants", nargs="+", default=["eager", "compile", "ext", "ext-aten"],
                   choices=["eager", "compile", "ext", "ext-aten"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--compile-batch", type=int, nargs="+", default=[1],
                   help="batch sizes that also time torch.compile (compiling every case takes long)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default: 'default')")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="leave torch.backends.cudnn.benchmark off (default: on, cuDNN's best algorithms)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per case (GPU 50, CPU 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (GPU 10, CPU 2)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few iterations, no compile (smoke run)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/clrb_<device>.json)")
    return p.parse_args(argv)


def defaults(args, device):
    gpu = device.type == "cuda"
    args.iters = args.iters or (50 if gpu else 5)
    args.warmup = args.warmup or (10 if gpu else 2)
    if args.quick:
        args.sizes, args.batch, args.dtypes, args.iters, args.warmup = [8], [1], ["fp32"], 2, 1
        args.no_compile = True
    if args.no_compile:
        args.variants = [v for v in args.variants if v != "compile"]
    return args


def traffic_bytes(h, w, batch, elem, mode):
    """Bytes a fully fused CLRB moves (see the module docstring); independent of groups."""
    channels = sum((NF + k * GC) + (GC if k < 4 else NF) for k in range(5)) + NF
    fwd = channels * h * w * batch * elem
    if mode == "fwd":
        return fwd
    bwd = sum(2 * (NF + k * GC) + 2 * (GC if k < 4 else NF) for k in range(5)) * h * w * batch * elem
    return fwd + bwd


def build(block, groups, device, dtype):
    torch.manual_seed(0)
    return (CLRB(NF, GC, groups) if block == "clrb" else CLRA(NF, GC, groups)).to(device, dtype)


def variant_fn(variant, block, module, args):
    if variant == "eager":
        return module
    if variant == "compile":
        return torch.compile(module, mode=args.compile_mode)
    impl = "aten" if variant == "ext-aten" else "auto"
    if block == "clrb":
        weights = [c.weight for c in module.convs()]
        biases = [c.bias for c in module.convs()]
        return lambda x: ext.clrb(x, weights, biases, module.groups, impl=impl)
    return lambda x: ext.clra_module(module, x, impl=impl)


def time_case(fn, module, x, mode, device, args):
    if mode == "fwd":
        with torch.no_grad():
            return time_fn(lambda: fn(x), device, args.warmup, args.iters)
    inputs = [x, *module.parameters()]
    grad_out = torch.randn_like(x)
    return time_fn(lambda: torch.autograd.grad(fn(x), inputs, grad_out), device, args.warmup, args.iters)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else best_device()
    args = defaults(args, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    if not ext.is_available(device):
        raise SystemExit(ext.LOAD_ERROR or f"csakd._C has no CLRB kernel for {device.type}; rebuild the package")
    env = environment(device)
    payload = {"environment": env, "ceilings": measured_ceilings(device), "settings": vars(args),
               "backend_flags": {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                                 "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32},
               "results": []}
    out = Path(args.out) if args.out else RESULTS / f"clrb_{device.type}.json"
    print(f"device: {env['device']} | torch {env['torch']} | cuda {env['cuda']} | commit {env['commit']}")
    print(f"{'block':5s} {'size':>4s} {'B':>2s} {'g':>2s} {'dtype':5s} {'mode':8s} {'variant':9s} "
          f"{'median ms':>10s} {'vs eager':>8s} {'TFLOP/s':>8s} {'GB/s':>8s}")
    for block in args.blocks:
        n_blocks = 1 if block == "clrb" else 3
        for size in args.sizes:
            for batch in args.batch:
                for groups in args.groups:
                    for dtype_name in args.dtypes:
                        dtype = DTYPES[dtype_name]
                        module = build(block, groups, device, dtype)
                        x = torch.randn(batch, NF, size, size, device=device, dtype=dtype, requires_grad=True)
                        macs = n_blocks * batch * clrb_flops(NF, GC, groups, size, size)
                        for mode in args.modes:
                            eager_ms = None
                            for variant in args.variants:
                                if variant == "compile" and batch not in args.compile_batch:
                                    continue
                                fn = variant_fn(variant, block, module, args)
                                stats = time_case(fn, module, x, mode, device, args)
                                ms = stats["median_ms"]
                                eager_ms = ms if variant == "eager" else eager_ms
                                flops = 2 * macs * (1 if mode == "fwd" else 3)
                                moved = n_blocks * traffic_bytes(size, size, batch, x.element_size(), mode)
                                row = dict(stats, block=block, size=size, batch=batch, groups=groups,
                                           dtype=dtype_name, mode=mode, variant=variant, macs=macs,
                                           tflops=flops / (ms * 1e-3) / 1e12, model_bytes=moved,
                                           gbps=moved / (ms * 1e-3) / 1e9,
                                           speedup_vs_eager=eager_ms / ms if eager_ms else None)
                                payload["results"].append(row)
                                write_json(out, payload)
                                vs = f"{row['speedup_vs_eager']:.2f}x" if eager_ms else "-"
                                print(f"{block:5s} {size:4d} {batch:2d} {groups:2d} {dtype_name:5s} {mode:8s} "
                                      f"{variant:9s} {ms:10.3f} {vs:>8s} {row['tflops']:8.2f} {row['gbps']:8.1f}",
                                      flush=True)
    print(f"results: {out}")
    return payload


if __name__ == "__main__":
    main()
