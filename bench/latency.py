"""Side-by-side latency of the CSAKD student and teacher, plus one teacher+student co-training step.

    python bench/latency.py                 # the machine's best device; results in runs/bench-latency-<time>/
    python bench/latency.py --quick         # seconds: tiny sizes, few iterations (CI smoke run)
    python bench/latency.py --device cpu --out bench/results/latency_cpu.json   # the committed CPU table

GPU: plain PyTorch (eager fp32 / bf16), torch.compile of the plain path, csakd's fast path and the same in a
CUDA graph, at the paper's size (LR 64²x172, HR 256²x4), B=1 and 4, in one process, CUDA events.

CPU: the paper-size student at B=1 by default, each row in its own Python process (so that each row's peak
resident memory is its own: the process's getrusage peak, imports, weights and inputs included; the resident
memory before the first forward is recorded next to it), with the same weights and inputs:

    eager fp32                    the module path, NCHW
    csakd drop-in                 csakd.create(..., dtype="auto"): the prepared path, bf16 where the CPU has
                                  native bf16 (AVX-512 BF16 / AMX), else fp32; channels-last
    csakd fp32                    the prepared path in fp32 (what "auto" runs on CPUs without native bf16)
    channels_last fp32            stock PyTorch: model and inputs .to(memory_format=torch.channels_last)
    channels_last + autocast bf16 the same under torch.autocast("cpu", torch.bfloat16)
    compile fp32 / + autocast     torch.compile (Inductor) of the module path (--no-compile skips them)
    onnxruntime fp32              the file of csakd.export(model, path, format="onnx"), CPU execution provider
    openvino f32 / bf16           the same file in OpenVINO with that inference precision hint, if installed

Each figure is the median of --iters runs after --warmup runs; "vs eager" is the ratio to eager fp32 in the same
run, and "rel L2" the relative L2 distance of the row's output to eager fp32's. Results never go to a tracked file
unless --out names it: by default they go to a fresh folder runs/bench-latency-<date>-<time>/ (git-ignored).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (best_device, environment, measured_ceilings, peak_rss_mb, rss_mb, run_dir,  # noqa: E402
                     summarize, time_fn, write_json)

import csakd  # noqa: E402
from csakd import ops  # noqa: E402
from csakd.inference.precision import precision_name  # noqa: E402
from csakd.losses import LossWeights  # noqa: E402
from csakd.models import count_macs  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU rows: (label, kind, compute dtype); `run_row` builds each kind. The drop-in's dtype is what "auto" chose.
CPU_ROWS = [("eager fp32", "eager", "fp32"), ("csakd drop-in", "csakd-auto", None),
            ("csakd fp32", "csakd-fp32", "fp32"), ("channels_last fp32", "channels-last", "fp32"),
            ("channels_last + autocast bf16", "channels-last-autocast", "bf16"),
            ("compile fp32", "compile", "fp32"), ("compile + autocast bf16", "compile-autocast", "bf16"),
            ("onnxruntime fp32", "onnxruntime", "fp32"), ("openvino f32", "openvino-f32", "fp32"),
            ("openvino bf16", "openvino-bf16", "bf16")]
TORCH_KINDS = ("eager", "csakd-auto", "csakd-fp32", "channels-last", "channels-last-autocast", "compile",
               "compile-autocast")
QUICK_KINDS = ("eager", "csakd-auto", "channels-last", "channels-last-autocast")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--models", nargs="+", default=None, help="presets to time (GPU: student teacher; CPU: student)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (GPU: 1 4, CPU: 1)")
    p.add_argument("--lr-size", type=int, default=None, help="LR side (default 64, the paper's); HR = 4x")
    p.add_argument("--bands", type=int, default=172, help="hyperspectral bands (default 172)")
    p.add_argument("--msi-bands", type=int, default=4, help="multispectral bands (default 4)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                   help="GPU: dtypes of the fast path (default fp32 bf16)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per case (GPU 50, CPU 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (GPU 10, CPU 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: threads of every row (torch, onnxruntime intra-op, OpenVINO; default torch's, "
                        "i.e. the physical cores)")
    p.add_argument("--rows", nargs="+", default=None, choices=[kind for _, kind, _ in CPU_ROWS],
                   help="CPU: the rows to run (default all that apply)")
    p.add_argument("--rounds", type=int, default=1,
                   help="CPU: run the whole set of rows this many times, interleaved, and pool the timed runs "
                        "(evens out slow drifts of a shared machine; default 1)")
    p.add_argument("--row-timeout", type=float, default=1800, help="CPU: seconds before a row is given up")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference path")
    p.add_argument("--no-onnx", action="store_true", help="CPU: skip the onnxruntime and OpenVINO rows")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (GPU: max-autotune-no-cudagraphs, CPU: default)")
    p.add_argument("--no-train", action="store_true", help="skip the co-training step")
    p.add_argument("--train-crop", type=int, default=None, help="HR crop of the training step (GPU 128, CPU 32)")
    p.add_argument("--train-batch", type=int, default=4, help="batch of the training step (default 4)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, few iterations, no compile or ONNX, four CPU rows (smoke test)")
    p.add_argument("--out", default=None,
                   help="results JSON (default: runs/bench-latency-<date>-<time>/latency.json, git-ignored)")
    p.add_argument("--_row", default=None, help=argparse.SUPPRESS)  # internal: run one CPU row (JSON spec)
    return p.parse_args(argv)


def defaults(args, device):
    gpu = device.type == "cuda"
    args.models = args.models or (["student", "teacher"] if gpu else ["student"])
    args.batch = args.batch or ([1, 4] if gpu else [1])
    args.lr_size = args.lr_size or 64
    args.dtypes = args.dtypes or (["fp32", "bf16"] if gpu else ["fp32"])
    args.iters = args.iters or (50 if gpu else 5)
    args.warmup = args.warmup or (10 if gpu else 2)
    args.threads = args.threads or torch.get_num_threads()
    args.train_crop = args.train_crop or (128 if gpu else 32)
    args.compile_mode = args.compile_mode or ("max-autotune-no-cudagraphs" if gpu else "default")
    if args.quick:
        args.batch, args.lr_size, args.iters, args.warmup = [1], 4, 3, 1
        args.train_crop, args.train_batch, args.no_compile, args.no_onnx = 16, 1, True, True
        args.rows = args.rows or list(QUICK_KINDS)
    return args


def inputs(batch, args, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    lr = torch.rand(batch, args.bands, args.lr_size, args.lr_size, generator=g)
    msi = torch.rand(batch, args.msi_bands, 4 * args.lr_size, 4 * args.lr_size, generator=g)
    return lr.to(device, dtype), msi.to(device, dtype)


# ---- GPU: every variant in this process -------------------------------------------------------------------------

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


def gpu_forward_rows(args, device, peak_flops):
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
    return rows, failures


# ---- CPU: one process per row ---------------------------------------------------------------------------------

def openvino_missing() -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"openvino is not installed ({exc}; pip install openvino)"
    return None


def cpu_row_kinds(args) -> tuple[list[tuple[str, str, str | None]], list[dict]]:
    """The CPU rows to run and the skipped ones with their reason."""
    run, skipped = [], []
    for label, kind, dtype in CPU_ROWS:
        reason = None
        if args.rows is not None and kind not in args.rows:
            continue
        if kind.startswith("compile") and args.no_compile:
            reason = "--no-compile"
        elif kind in ("onnxruntime",) or kind.startswith("openvino"):
            if args.no_onnx:
                reason = "--no-onnx"
            elif kind.startswith("openvino"):
                reason = openvino_missing()
        if reason:
            skipped.append({"variant": label, "reason": reason})
        else:
            run.append((label, kind, dtype))
    return run, skipped


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda lr, msi: torch.from_numpy(session.run(["hr_hsi"], {"lr_hsi": lr, "hr_msi": msi})[0])


def _openvino_model(path: str, threads: int, hint: str):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(lr, msi):
        return torch.from_numpy(request.infer({"lr_hsi": lr, "hr_msi": msi})[output].copy())

    return run, {"openvino": ov.get_version(),
                 "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}


def _torch_row(kind: str, spec: dict, args, lr, msi):
    """(function, inputs, extra fields) of a PyTorch row: the model built from the saved weights."""
    model = csakd.create(spec["model"], bands=args.bands, msi_bands=args.msi_bands, backend="reference")
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    model.eval()
    extra = {}
    if kind in ("csakd-auto", "csakd-fp32"):
        model.prepare("auto" if kind == "csakd-auto" else torch.float32)
        extra = {"compute_dtype": precision_name(model.inference_dtype), "layout": model._prepared.layout}
    elif kind.startswith("channels-last"):
        cl = torch.channels_last
        model.to(memory_format=cl)
        lr, msi = lr.to(memory_format=cl), msi.to(memory_format=cl)
    elif kind.startswith("compile"):
        return torch.compile(model, mode=args.compile_mode), (lr, msi), extra
    return model, (lr, msi), extra


def run_row(spec: dict) -> dict:
    """One CPU row, in this (fresh) process: builds the row's model (the saved weights, or their ONNX file), times
    it and saves its output for the parent's error figure."""
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    kind = spec["kind"]
    lr, msi = inputs(spec["batch"], args, torch.device("cpu"), torch.float32)
    if kind in TORCH_KINDS:
        fn, (lr, msi), extra = _torch_row(kind, spec, args, lr, msi)
    elif kind == "onnxruntime":
        import onnxruntime

        fn, extra = _ort_session(spec["onnx"], spec["threads"]), {"onnxruntime": onnxruntime.__version__}
        lr, msi = lr.numpy(), msi.numpy()
    elif kind.startswith("openvino"):
        fn, extra = _openvino_model(spec["onnx"], spec["threads"], kind.removeprefix("openvino-"))
        lr, msi = lr.numpy(), msi.numpy()
    else:
        raise ValueError(f"unknown row kind {kind!r}")
    context = contextlib.nullcontext
    if kind.endswith("autocast"):
        context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    rss_before = rss_mb()
    with torch.inference_mode(), context():
        t0 = time.perf_counter()
        out = fn(lr, msi)  # the first call compiles in the compile rows: timed apart
        first_call_s = time.perf_counter() - t0
        stats = time_fn(lambda: fn(lr, msi), torch.device("cpu"), max(0, args.warmup - 1), args.iters,
                        keep_times=True)
    torch.save(out.float().contiguous(), spec["output"])
    stats.update(extra, first_call_s=first_call_s, rss_before_MB=rss_before, peak_rss_MB=peak_rss_mb(),
                 threads=torch.get_num_threads())
    return stats


def export_onnx(name, args, weights: str, path: str) -> dict:
    """csakd.export of the row models' weights to ONNX (in this process, before the rows)."""
    model = csakd.create(name, bands=args.bands, msi_bands=args.msi_bands, backend="reference")
    model.load_state_dict(torch.load(weights, weights_only=True))
    result = csakd.export(model, path, format="onnx")
    return {"seconds": result.seconds, "max_rel_l2_vs_eager": result.max_rel_l2, "opset": result.opset}


def cpu_forward_rows(args):
    rows, failures = [], []
    kinds, skipped = cpu_row_kinds(args)
    exports = {}
    with tempfile.TemporaryDirectory(prefix="csakd-latency-") as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = csakd.create(name, bands=args.bands, msi_bands=args.msi_bands)
            weights = os.path.join(tmp, f"{name}.pt")
            torch.save(model.state_dict(), weights)
            onnx = os.path.join(tmp, f"{name}.onnx")
            model_kinds = kinds
            if any(kind not in TORCH_KINDS for _, kind, _ in kinds):
                try:
                    exports[name] = export_onnx(name, args, weights, onnx)
                except Exception as exc:  # the ONNX rows of this model are skipped with the reason
                    exports[name] = {"error": repr(exc)}
                    model_kinds = [k for k in kinds if k[1] in TORCH_KINDS]
                    skipped += [{"variant": label, "model": name, "reason": f"ONNX export failed: {exc!r}"}
                                for label, kind, _ in kinds if kind not in TORCH_KINDS]
            for batch in args.batch:
                macs = count_macs(model, (batch, args.bands, args.lr_size, args.lr_size),
                                  (batch, args.msi_bands, 4 * args.lr_size, 4 * args.lr_size))
                outputs, runs, failed = {}, {}, set()
                for round_ in range(args.rounds):
                    for label, kind, dtype in model_kinds:
                        if kind in failed:
                            continue
                        output = os.path.join(tmp, f"{name}-{batch}-{kind}.pt")
                        spec = {"kind": kind, "model": name, "batch": batch, "threads": args.threads,
                                "weights": weights, "onnx": onnx, "output": output,
                                "args": {k: getattr(args, k) for k in ("bands", "msi_bands", "lr_size", "iters",
                                                                        "warmup", "compile_mode")}}
                        # A fresh Inductor cache for the run: the first round's first call is a cold compile.
                        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor")}
                        stats, error = _run_child(spec, args.row_timeout, env)
                        if error is not None:
                            failed.add(kind)
                            failures.append({"model": name, "batch": batch, "variant": label, "error": error})
                            print(f"  {name:8s} B={batch} {label:30s} FAILED: {error.splitlines()[-1][:200]}",
                                  flush=True)
                            continue
                        outputs[kind] = output
                        runs.setdefault((label, kind, dtype), []).append(stats)
                        print(f"  round {round_ + 1}/{args.rounds} {name:8s} B={batch} {label:30s} "
                              f"{stats['median_ms']:10.1f} ms  peak RSS {stats['peak_rss_MB']:.0f} MB", flush=True)
                for (label, kind, dtype), per_round in runs.items():
                    rows.append(_pooled(per_round, model=name, batch=batch, variant=label, kind=kind, macs=macs,
                                        compiled=kind.startswith("compile"),
                                        dtype=dtype or per_round[0]["compute_dtype"]))
                _errors_vs_eager(rows, outputs, name, batch)
    return rows, failures, skipped, exports


def _pooled(per_round: list[dict], **fields) -> dict:
    """One row from its rounds: the timed runs of every round pooled, each round's median, the first round's
    first call (a cold compile in the compile rows), the largest peak resident memory."""
    first = per_round[0]
    row = {k: v for k, v in first.items() if k not in ("times_ms", "median_ms", "min_ms", "p25_ms", "p75_ms", "iters")}
    row.update(summarize([t for r in per_round for t in r["times_ms"]]))
    row.update(fields, rounds=len(per_round), round_medians_ms=[r["median_ms"] for r in per_round],
               peak_rss_MB=max(r["peak_rss_MB"] for r in per_round),
               rss_before_MB=max(r["rss_before_MB"] for r in per_round))
    if row["kind"] == "csakd-auto":
        row["variant"] = f"csakd drop-in (auto: {row['compute_dtype']})"
    return row


def _run_child(spec: dict, timeout: float, env: dict) -> tuple[dict | None, str | None]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", "cpu", "--_row", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")[-2000:]
    return json.loads(lines[-1]), None


def _errors_vs_eager(rows, outputs, name, batch):
    if "eager" not in outputs:
        return
    ref = torch.load(outputs["eager"], weights_only=True)
    for r in rows:
        if r["model"] == name and r["batch"] == batch and r["kind"] in outputs:
            out = torch.load(outputs[r["kind"]], weights_only=True)
            r["rel_l2_vs_eager_fp32"] = ((out - ref).norm() / ref.norm()).item()


# ---- the co-training step ---------------------------------------------------------------------------------------

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


# ---- main -------------------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    if args._row is not None:  # a CPU row's own process: one JSON line on stdout
        print(json.dumps(run_row(json.loads(args._row))), flush=True)
        return None
    device = torch.device(args.device) if args.device else best_device()
    args = defaults(args, device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else run_dir("latency") / "latency.json"
    env = environment(device)
    ceilings = measured_ceilings(device)
    peak_flops = ceilings.get("bf16_matmul_flops")
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    if device.type == "cpu":
        print(f"CPU: {env['cpu']['bf16']} | {args.threads} threads | load {env['cpu']['load_average_1_5_15']}")
        rows, failures, skipped, exports = cpu_forward_rows(args)
    else:
        print(f"fast path on this device: {ops.resolve_name('auto', device)}")
        (rows, failures), skipped, exports = gpu_forward_rows(args, device, peak_flops), [], {}
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
    for s in skipped:
        print(f"skipped: {s['variant']} ({s['reason']})")
    if device.type == "cpu":
        env["cpu"]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    settings = {k: v for k, v in vars(args).items() if k != "_row"}
    payload = {"environment": env, "ceilings": ceilings, "settings": settings, "forward": rows,
               "training": train_rows, "failures": failures, "skipped": skipped, "onnx_export": exports}
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
    print(f"{'model':8s} {'B':>2s} {'variant':32s} {'median ms':>10s} {'vs eager':>9s} {'vs compile':>10s} "
          f"{'rel L2':>8s} {'peak MB':>8s} {'roofline':>8s}")
    for r in rows:
        vc = f"{r['speedup_vs_compile']:.2f}x" if "speedup_vs_compile" in r else "-"
        mem = r.get("peak_memory_MB", r.get("peak_rss_MB"))
        mem = f"{mem:.0f}" if mem is not None else "-"
        roof = f"{100 * r['roofline_fraction']:.1f}%" if "roofline_fraction" in r else "-"
        ve = f"{r['speedup_vs_eager_fp32']:.2f}x" if "speedup_vs_eager_fp32" in r else "-"
        err = f"{r['rel_l2_vs_eager_fp32']:.1e}" if "rel_l2_vs_eager_fp32" in r else "-"
        print(f"{r['model']:8s} {r['batch']:2d} {r['variant']:32s} {r['median_ms']:10.3f} "
              f"{ve:>9s} {vc:>10s} {err:>8s} {mem:>8s} {roof:>8s}")
    for r in train_rows:
        mem = f"{r['peak_memory_MB']:.0f}" if "peak_memory_MB" in r else "-"
        print(f"co-train B={r['batch']} {r['crop']}² {r['backend']:10s} {r['median_ms']:10.3f} ms "
              f"{r['speedup_vs_reference']:.2f}x vs reference, peak {mem} MB")


if __name__ == "__main__":
    main()
