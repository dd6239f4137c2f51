"""Micro-benchmark of the fused training losses (kernels/losses.py) against the reference objective
of csakd.losses in eager PyTorch and under torch.compile: forward + backward (gradient w.r.t. pred), and the
KD term alone.

    python bench/losses.py                    # GPU: B=4, 172x128² and 172x256², bf16 and fp32, + KD
    python bench/losses.py --quick            # seconds on a CPU (Triton interpreter): a smoke test for CI
    python bench/losses.py --sweep            # also time alternative tiles of the fused kernels
    python bench/losses.py --out results.json # write the results (device, versions, commit)

Each implementation is timed two ways: "launch", the call as a training loop makes it (CPU launch overhead
included when it exceeds the device time), and "graph", a CUDA graph of the same step replayed (device time
only). Times are medians after warm-up: on a GPU `triton.testing.do_bench` (CUDA events, L2 flushed before
each run so that inputs come from HBM), on a CPU wall-clock. Bandwidth counts the bytes the fused path must
move, for every implementation alike: the forward reads pred and target (and teacher_pred), the backward reads
them again and writes the gradient; "roofline" is the time those bytes take at the measured device-to-device
copy bandwidth divided by the measured time (1.0 = at the roofline).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # The CPU runs (--quick, --device cpu) use the Triton interpreter, which has to be chosen before Triton is
    # imported; the kernel modules leave that choice to their caller.
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_kernel_bench_args, best_device, environment, measured_ceilings, time_fn,  # noqa: E402
                     write_json)

from csakd import losses as reference  # noqa: E402
from csakd.kernels import losses as fused  # noqa: E402
from csakd.kernels import losses_kernels  # noqa: E402
from csakd.kernels.losses_kernels import Tile, Tiles  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLEMENTATIONS = ("eager", "compile", "fused")

# Alternatives for --sweep: (forward tile, backward tile) of the SAM form being timed.
SWEEP = {
    "paper": ([Tile(2048, 256, 8, 3), Tile(2048, 256, 8, 1), Tile(1024, 128, 4, 3), Tile(4096, 256, 8, 3),
               Tile(1024, 256, 4, 3), Tile(2048, 128, 8, 2)],
              [Tile(4096, 256, 8), Tile(2048, 256, 8), Tile(2048, 256, 4), Tile(8192, 256, 8)]),
    "reference": ([Tile(1024, 256, 4), Tile(512, 256, 2), Tile(2048, 256, 8), Tile(1024, 256, 8)],
                  [Tile(2048, 256, 8), Tile(1024, 256, 4), Tile(4096, 256, 8)]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--bands", type=int, default=172, help="bands (default 172)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="image sides (default 128 256)")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--sam-form", default="paper", choices=reference.FORMS)
    p.add_argument("--beba-form", default="reference", choices=reference.FORMS)
    p.add_argument("--teacher", action="store_true", help="student objective: add rec(pred, teacher_pred)")
    p.add_argument("--kd-channels", type=int, default=86, help="KD feature channels (default 86; 0: skip KD)")
    add_kernel_bench_args(p)
    p.add_argument("--sweep", action="store_true", help="GPU: time alternative tiles of the fused kernels")
    p.add_argument("--quick", action="store_true", help="tiny shapes, two runs, no compile (CPU smoke test)")
    p.add_argument("--out", default=None, help="results JSON (default: none; bench/results/ is the usual place)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.bands, args.sizes, args.dtypes = 1, 8, [8], ["fp32"]
        args.warmup, args.rep, args.no_compile, args.kd_channels = 1, 2, True, 4
    return args


# ---------------------------------------------------------------- timing

def median_ms(fn, device, args) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")
    return time_fn(fn, device, warmup=args.warmup, iters=args.rep)["median_ms"]


def graphed(step, device):
    """A CUDA graph of step() (warmed up on a side stream first) as a replay function."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def time_modes(step, device, args) -> dict:
    """{"launch": ms, "graph": ms}, an error string in place of a time that could not be taken (a GPU session
    is one shot: one failing implementation must not lose the others' results)."""
    try:
        out = {"launch": median_ms(step, device, args)}
    except Exception as error:  # e.g. torch.compile failing on this machine
        return {"launch": f"failed: {type(error).__name__}: {error}"}
    if device.type == "cuda":
        try:
            out["graph"] = median_ms(graphed(step, device), device, args)
        except Exception as error:  # capture is not guaranteed for every implementation; record why
            out["graph"] = f"capture failed: {type(error).__name__}: {error}"
    return out


# ---------------------------------------------------------------- the objective, three ways

def reference_total(pred, target, teacher_pred, weights):
    terms = reference.teacher_objective(pred, target, weights)
    total = terms["total"]
    if teacher_pred is not None:
        total = total + weights.teacher_rec * reference.RECONSTRUCTION[weights.rec](pred, teacher_pred.detach())
    return total


def fused_total(pred, target, teacher_pred, weights):
    return fused.fusion_losses(pred, target, sam_form=weights.sam_form, beba_form=weights.beba_form,
                               rec=weights.rec, teacher_pred=teacher_pred, weights=weights)["total"]


def objective_step(impl, pred, target, teacher_pred, weights, args):
    if impl == "fused":
        fn = fused_total
    elif impl == "compile":
        fn = torch.compile(reference_total, mode=args.compile_mode, dynamic=False)
    else:
        fn = reference_total
    return lambda: torch.autograd.grad(fn(pred, target, teacher_pred, weights), pred)


def make_inputs(shape, dtype, device, teacher: bool):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(shape, generator=g)
    pred = target + 0.1 * torch.randn(shape, generator=g)
    tp = target + 0.1 * torch.randn(shape, generator=g) if teacher else None
    cast = lambda x: x.to(device, dtype) if x is not None else None  # noqa: E731
    return cast(pred).requires_grad_(True), cast(target), cast(tp)


def check_agreement(pred, target, tp, weights) -> float:
    """Relative difference of the fused total from the reference in float64 (a sanity check of the run)."""
    want = reference_total(pred.detach().double(), target.double(), tp.double() if tp is not None else None,
                           weights).item()
    got = fused_total(pred.detach(), target, tp, weights).item()
    return abs(got - want) / max(abs(want), 1e-30)


def bench_objective(args, device, copy_bw) -> list[dict]:
    weights = reference.LossWeights(sam_form=args.sam_form, beba_form=args.beba_form)
    rows = []
    for size in args.sizes:
        shape = (args.batch, args.bands, size, size)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            pred, target, tp = make_inputs(shape, dtype, device, args.teacher)
            n_inputs = 3 if args.teacher else 2
            nbytes = (2 * n_inputs + 1) * pred.numel() * pred.element_size()
            base = dict(case="objective", shape=list(shape), dtype=dtype_name, sam_form=args.sam_form,
                        beba_form=args.beba_form, teacher=args.teacher, bytes=nbytes,
                        fused_rel_diff=check_agreement(pred, target, tp, weights))
            for impl in IMPLEMENTATIONS:
                if impl == "compile" and args.no_compile:
                    continue
                torch._dynamo.reset()
                step = objective_step(impl, pred, target, tp, weights, args)
                for mode, ms in time_modes(step, device, args).items():
                    rows.append(with_bandwidth(dict(base, impl=impl, mode=mode), ms, copy_bw))
            if args.sweep and device.type == "cuda":
                rows += sweep_tiles(base, pred, target, tp, weights, device, copy_bw, args)
            del pred, target, tp
    return rows


def with_bandwidth(row: dict, ms, copy_bw) -> dict:
    if isinstance(ms, str):
        return dict(row, error=ms)
    row.update(median_ms=ms, achieved_Bps=row["bytes"] / (ms * 1e-3))
    if copy_bw:
        row["roofline"] = row["achieved_Bps"] / copy_bw
    return row


def sweep_tiles(base, pred, target, tp, weights, device, copy_bw, args) -> list[dict]:
    """Times the fused step with each alternative forward tile (default backward), then each backward tile
    with the best forward one; restores the default tiles."""
    default = losses_kernels.GPU_TILES
    fwd_field, bwd_field = ("fwd_paper", "bwd_paper") if args.sam_form == "paper" else \
        ("fwd_reference", "bwd_reference")
    fwd_tiles, bwd_tiles = SWEEP[args.sam_form]
    step = objective_step("fused", pred, target, tp, weights, args)
    rows = []
    try:
        best, best_ms = default, float("inf")
        for field, tiles in ((fwd_field, fwd_tiles), (bwd_field, bwd_tiles)):
            for tile in tiles:
                losses_kernels.GPU_TILES = Tiles(**{**vars(best), field: tile})
                ms = time_modes(step, device, args).get("graph", "launch failed")
                row = with_bandwidth(dict(base, impl="fused", mode="graph", sweep=field, tile=vars(tile)), ms,
                                     copy_bw)
                rows.append(row)
                print(f"    sweep {field} {tile}: {row.get('median_ms', row.get('error'))}", flush=True)
                if row.get("median_ms", best_ms) < best_ms:
                    best, best_ms = losses_kernels.GPU_TILES, row["median_ms"]
            losses_kernels.GPU_TILES = best
    finally:
        losses_kernels.GPU_TILES = default
    return rows


# ---------------------------------------------------------------- KD

def bench_kd(args, device, copy_bw) -> list[dict]:
    rows = []
    for size in args.sizes:
        shape = (args.batch, args.kd_channels, size, size)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            g = torch.Generator().manual_seed(1)
            student = (2 * torch.randn(shape, generator=g)).to(device, dtype).requires_grad_(True)
            teacher = (2 * torch.randn(shape, generator=g)).to(device, dtype)
            base = dict(case="kd", shape=list(shape), dtype=dtype_name,
                        bytes=5 * student.numel() * student.element_size())
            for impl in IMPLEMENTATIONS:
                if impl == "compile" and args.no_compile:
                    continue
                torch._dynamo.reset()
                fn = {"eager": reference.kd_loss, "fused": fused.kd_loss_fused,
                      "compile": torch.compile(reference.kd_loss, mode=args.compile_mode, dynamic=False)
                      if impl == "compile" else None}[impl]
                step = lambda fn=fn: torch.autograd.grad(fn(student, teacher), student)  # noqa: E731
                for mode, ms in time_modes(step, device, args).items():
                    rows.append(with_bandwidth(dict(base, impl=impl, mode=mode), ms, copy_bw))
    return rows


# ---------------------------------------------------------------- report

def add_speedups(rows: list[dict]) -> None:
    def key(r):
        return (r["case"], tuple(r["shape"]), r["dtype"], r["mode"])

    plain = {(key(r), r["impl"]): r["median_ms"] for r in rows if "median_ms" in r and "sweep" not in r}
    for r in rows:
        if "median_ms" not in r:
            continue
        for impl in ("eager", "compile"):
            if (key(r), impl) in plain:
                r[f"speedup_vs_{impl}"] = plain[(key(r), impl)] / r["median_ms"]


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':9s} {'shape':18s} {'dtype':5s} {'impl':8s} {'mode':6s} {'median ms':>10s} {'GB/s':>8s} "
          f"{'roofline':>8s} {'vs eager':>8s} {'vs compile':>10s}")
    for r in rows:
        if "sweep" in r:
            continue
        shape = "x".join(map(str, r["shape"]))
        if "median_ms" not in r:
            print(f"{r['case']:9s} {shape:18s} {r['dtype']:5s} {r['impl']:8s} {r['mode']:6s} {r['error']}")
            continue
        cells = [f"{100 * r['roofline']:.1f}%" if "roofline" in r else "-"]
        cells += [f"{r[k]:.2f}x" if k in r else "-" for k in ("speedup_vs_eager", "speedup_vs_compile")]
        print(f"{r['case']:9s} {shape:18s} {r['dtype']:5s} {r['impl']:8s} {r['mode']:6s} {r['median_ms']:10.4f} "
              f"{r['achieved_Bps'] / 1e9:8.1f} {cells[0]:>8s} {cells[1]:>8s} {cells[2]:>10s}")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device) if args.device else best_device()
    env = environment(device)
    ceilings = measured_ceilings(device)
    copy_bw = ceilings.get("copy_bandwidth_Bps")
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    if copy_bw:
        print(f"measured copy bandwidth: {copy_bw / 1e12:.2f} TB/s")
    rows = bench_objective(args, device, copy_bw)
    if args.kd_channels:
        rows += bench_kd(args, device, copy_bw)
    add_speedups(rows)
    print_table(rows)
    diffs = [r["fused_rel_diff"] for r in rows if "fused_rel_diff" in r]
    if diffs:
        print(f"fused total vs float64 reference: median relative difference {statistics.median(diffs):.2e}")
    payload = {"environment": env, "ceilings": ceilings, "settings": vars(args),
               "tiles": {k: vars(v) for k, v in vars(losses_kernels.GPU_TILES).items()}, "rows": rows}
    if args.out:
        print(f"results: {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
