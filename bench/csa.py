"""Micro-benchmark of the fused CSA (kernels/csa.py, docs/csa.md) against the reference `csa_reference` in eager
PyTorch and under torch.compile, forward and forward+backward.

    python bench/csa.py                      # GPU: B=1 and 4, 256², nf=86, bf16 and fp32, attention mode
    python bench/csa.py --quick              # seconds on a CPU (Triton interpreter): a smoke test for CI
    python bench/csa.py --peak-gbps 3350     # also compare with a nominal HBM bandwidth (GB/s)
    python bench/csa.py --out results.json   # also write the results (device, versions, commit)

Times are medians after warm-up: on a GPU `triton.testing.do_bench` (CUDA events, L2 flushed before each run,
so the inputs come from HBM), on a CPU wall-clock. Bandwidth is the fused kernels' bytes (x1, x2 read by the
Gram pass; x1..x4 read and out written by the gating pass; backward: 14 maps and 64 B/pixel, "reference"
mode 11 maps, see kernels/csa_kernels.py) over the time, for every implementation alike ("effective"),
compared with a measured device copy (%copy) and with the nominal peak of the device (%peak: --peak-gbps, or
a table of known GPUs). "%roof" is the H100 roofline estimate for bf16, B=1, 256², nf=86 (those bytes at
3.0 TB/s: forward 26 µs, backward 54 µs) scaled by batch, pixels, channels and element size, divided by the
measured time (100 = at the roofline).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # The CPU runs (--quick, --device cpu) use the Triton interpreter, which has to be chosen before Triton is
    # imported; the kernel modules leave that choice to their caller.
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_kernel_bench_args, best_device, environment, measured_ceilings,  # noqa: E402
                     time_fn, write_json)

from csakd.kernels import csa as fused  # noqa: E402
from csakd.models.csa import PARAM_NAMES, CSAFusion, csa_reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROOFLINE_US = {"forward": 26.0, "backward": 54.0}  # H100, bf16, B=1, 256², nf=86: the fused bytes at 3.0 TB/s
ROOFLINE_SHAPE = (86, 256 * 256, 2)                # channels, pixels, bytes per element of those figures


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    p.add_argument("--size", type=int, default=256, help="HR side (default 256)")
    p.add_argument("--nf", type=int, default=86, help="feature channels (default 86)")
    p.add_argument("--attn-dim", type=int, default=64, help="attention width (default 64)")
    p.add_argument("--heads", type=int, default=4, help="heads (default 4)")
    p.add_argument("--mode", default="attention", choices=["attention", "reference"], help="CSA mode")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--passes", nargs="+", default=["forward", "forward+backward"],
                   choices=["forward", "forward+backward"])
    add_kernel_bench_args(p)
    p.add_argument("--channels-last", action="store_true", help="inputs in channels-last layout")
    p.add_argument("--quick", action="store_true", help="tiny shapes, two runs, no compile (CPU smoke test)")
    p.add_argument("--out", default=None, help="results JSON (default: none; bench/results/ is the usual place)")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help="nominal memory bandwidth in GB/s (default: from a table of known GPUs, else none)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.dtypes, args.warmup, args.rep, args.no_compile = [1], 8, ["fp32"], 1, 2, True
        args.nf, args.attn_dim = 16, 16
    return args


def make_inputs(batch, args, device, dtype):
    g = torch.Generator().manual_seed(0)
    shape = (batch, args.nf, args.size, args.size)
    xs = [torch.randn(shape, generator=g) for _ in range(4)]
    torch.manual_seed(0)
    params = {n: p.detach() for n, p in CSAFusion(args.nf, args.attn_dim, args.heads, args.mode).params().items()}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    xs = [x.to(device, dtype).contiguous(memory_format=fmt) for x in xs]
    params = {n: p.to(device, dtype) for n, p in params.items()}
    dout = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=fmt)
    return xs, params, dout


# Nominal HBM bandwidth (GB/s) by device-name fragment, most specific first (SXM parts unless named).
NOMINAL_GBPS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
                ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0), ("L40S", 864.0))


def nominal_peak_Bps(device, args):
    if args.peak_gbps:
        return args.peak_gbps * 1e9
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbps * 1e9 for key, gbps in NOMINAL_GBPS if key in name), None)


def bytes_moved(pass_name, mode, batch, channels, pixels, esize):
    """The fused kernels' traffic: forward 7 maps (reference mode 5), backward 14 maps + 64 B/pixel (11 maps)."""
    one_map = batch * channels * pixels * esize
    forward = (7 if mode == "attention" else 5) * one_map
    backward = 14 * one_map + 64 * batch * pixels if mode == "attention" else 11 * one_map
    return forward if pass_name == "forward" else forward + backward


def roofline_us(pass_name, batch, channels, pixels, esize):
    c0, n0, e0 = ROOFLINE_SHAPE
    us = ROOFLINE_US["forward"] + (ROOFLINE_US["backward"] if pass_name == "forward+backward" else 0.0)
    return us * batch * (channels / c0) * (pixels / n0) * (esize / e0)


def make_runner(fn, xs, params, dout, pass_name):
    if pass_name == "forward":
        def run():
            with torch.no_grad():
                return fn(*xs, params)
        return run
    xs = [x.detach().requires_grad_() for x in xs]
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    inputs = xs + [params[n] for n in PARAM_NAMES]

    def run():
        return torch.autograd.grad(fn(*xs, params), inputs, dout, allow_unused=True)
    return run


def median_ms(run, device, args):
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(run, warmup=args.warmup, rep=args.rep, return_mode="median"))
    return time_fn(run, device, warmup=args.warmup, iters=args.rep)["median_ms"]


def implementations(args):
    mode, heads = args.mode, args.heads

    def reference(x1, x2, x3, x4, params):
        return csa_reference(x1, x2, x3, x4, params, mode, heads)

    def fused_csa(x1, x2, x3, x4, params):
        return fused.csa_fuse(x1, x2, x3, x4, params, mode, heads)

    impls = {"fused": fused_csa, "eager": reference}
    if not args.no_compile:
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        impls["compile"] = torch.compile(reference, mode=args.compile_mode, dynamic=False)
    return impls


def autotuned_configs():
    """The configurations the GPU autotuner chose, per kernel (empty in the interpreter)."""
    chosen = {}
    for name in ("_gram", "_apply", "_grad", "_gram_grad"):
        kernel = getattr(fused, name)
        for key, config in getattr(kernel, "cache", {}).items():
            chosen[f"{name}{list(key)}"] = str(config)
    return chosen


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else best_device()
    if device.type != "cuda" and not args.quick and args.device is None:
        sys.exit("bench/csa.py: no CUDA device. Without one the fused kernels run in the Triton interpreter "
                 "(minutes per call at 256²): use --quick for a small CPU smoke run, or --device cpu with "
                 "small --size/--nf to force a CPU run.")
    env = environment(device)
    ceilings = measured_ceilings(device)
    peak = ceilings.get("copy_bandwidth_Bps")
    nominal = nominal_peak_Bps(device, args)
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    if peak:
        print(f"measured device copy bandwidth: {peak / 1e9:.0f} GB/s")
    if nominal:
        print(f"nominal peak bandwidth: {nominal / 1e9:.0f} GB/s")
    impls = implementations(args)
    pixels = args.size * args.size
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        esize = torch.empty((), dtype=dtype).element_size()
        for batch in args.batch:
            xs, params, dout = make_inputs(batch, args, device, dtype)
            for pass_name in args.passes:
                nbytes = bytes_moved(pass_name, args.mode, batch, args.nf, pixels, esize)
                for impl, fn in impls.items():
                    ms = median_ms(make_runner(fn, xs, params, dout, pass_name), device, args)
                    row = {"impl": impl, "dtype": dtype_name, "batch": batch, "pass": pass_name, "mode": args.mode,
                           "size": args.size, "nf": args.nf, "median_ms": ms, "bytes": nbytes,
                           "bandwidth_GBps": nbytes / (ms * 1e-3) / 1e9}
                    if peak:
                        row["fraction_of_copy_bandwidth"] = nbytes / (ms * 1e-3) / peak
                    if nominal:
                        row["fraction_of_nominal_peak"] = nbytes / (ms * 1e-3) / nominal
                    if device.type == "cuda" and args.mode == "attention":
                        row["roofline_us"] = roofline_us(pass_name, batch, args.nf, pixels, esize)
                        row["fraction_of_roofline"] = row["roofline_us"] / (ms * 1e3)
                    rows.append(row)
                    print(f"  {dtype_name} B={batch} {pass_name:16s} {impl:8s} {ms:9.3f} ms", flush=True)
            del xs, params, dout
    add_speedups(rows)
    print_table(rows)
    payload = {"environment": env, "ceilings": dict(ceilings, nominal_peak_Bps=nominal), "settings": vars(args),
               "results": rows,
               "autotuned": autotuned_configs()}
    if args.out:
        print(f"results: {write_json(args.out, payload)}")
    return payload


def add_speedups(rows):
    for r in rows:
        same = {x["impl"]: x["median_ms"] for x in rows
                if (x["dtype"], x["batch"], x["pass"]) == (r["dtype"], r["batch"], r["pass"])}
        r["speedup_vs_eager"] = same["eager"] / r["median_ms"]
        if "compile" in same:
            r["speedup_vs_compile"] = same["compile"] / r["median_ms"]


def print_table(rows):
    head = (f"{'dtype':5s} {'B':>2s} {'pass':16s} {'impl':8s} {'ms':>9s} {'GB/s':>8s} {'%copy':>6s} {'%peak':>6s} "
            f"{'%roof':>6s} {'x eager':>8s} {'x compile':>9s}")
    print(head)
    print("-" * len(head))

    def pct(value):
        return f"{100 * value:6.1f}" if value is not None else f"{'-':>6s}"

    for r in rows:
        vs_compile = r.get("speedup_vs_compile")
        print(f"{r['dtype']:5s} {r['batch']:2d} {r['pass']:16s} {r['impl']:8s} {r['median_ms']:9.3f} "
              f"{r['bandwidth_GBps']:8.1f} {pct(r.get('fraction_of_copy_bandwidth'))} "
              f"{pct(r.get('fraction_of_nominal_peak'))} "
              f"{pct(r.get('fraction_of_roofline'))} {r['speedup_vs_eager']:8.2f} "
              f"{(f'{vs_compile:9.2f}' if vs_compile else f'{chr(45):>9s}')}")


if __name__ == "__main__":
    main()
