"""`csakd info`: versions, devices, which backends this installation can run, and the verdicts of the checks
that gate backend "auto" (`--verify` runs them now, `--reset` forgets them)."""
from __future__ import annotations

import platform


def describe() -> dict:
    import torch

    from .. import __version__, ops

    devices = ["cpu"] + ([f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
                         if torch.cuda.is_available() else [])
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "csakd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "devices": devices,
        "default_backend": ops.get_backend(),
        "backends_cpu": ops.available_backends("cpu"),
        "backends_cuda": ops.available_backends("cuda") if torch.cuda.is_available() else [],
    }


def _print_verdicts(verdicts: dict) -> None:
    from ..ops import verify

    print(f"backend checks ({verify.cache_file()}):")
    if not verdicts:
        print("  none yet: 'auto' checks each fast op the first time it would run on a device")
    for key, v in sorted(verdicts.items()):
        state = "pass" if v.get("ok") else "FAIL"
        detail = f"worst {v.get('worst', 0):.2f} of bound" if v.get("ok") else v.get("error")
        print(f"  {state}  {key}  ({detail}; {v.get('checked', '?')})")


def run(args) -> int:
    from ..ops import verify

    if args.reset:
        print(f"forgot the backend checks ({verify.reset()})")
        return 0
    for key, value in describe().items():
        print(f"{key:>16}: {value}")
    if args.verify:
        from ..inference.precision import inference_dtype
        from ..models import preset_config
        from ..train.distributed import pick_device

        device = pick_device(args.device)
        dtype = inference_dtype(args.precision, device, auto="gpu-bf16")
        config = preset_config(args.preset, bands=args.bands, msi_bands=args.msi_bands)
        print(f"checking the fast ops on {device} in {str(dtype).replace('torch.', '')} at the widths of "
              f"{args.preset} ...")
        failed = 0
        for row in verify.verify_now(device, dtype, config):
            if row["ok"] is None:
                print(f"  skip  {row['op']}/{row['impl']}: {row['error']}")
            else:
                failed += not row["ok"]
                detail = f"{row['seconds']:.1f} s" if row["ok"] else row["error"]
                print(f"  {'pass' if row['ok'] else 'FAIL'}  {row['op']}/{row['impl']}: {detail}")
        return 1 if failed else 0
    _print_verdicts(verify.read_verdicts())
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="print versions, devices, available backends and the checks behind backend 'auto'",
        description="Print csakd, torch, triton and CUDA versions, the devices found, the backends available on "
                    "each, and the verdicts of the equivalence checks that gate backend 'auto': the first time "
                    "a fast op would run on a device, 'auto' compares it with the reference path (forward and "
                    "backward, at the model's widths) and uses it only if it agrees. Verdicts are cached in the "
                    "user's cache folder (CSAKD_CACHE_DIR overrides it).")
    parser.add_argument("--verify", action="store_true",
                        help="run the checks now on --device (cached verdicts are replaced)")
    parser.add_argument("--reset", action="store_true", help="forget the cached verdicts: 'auto' checks again")
    parser.add_argument("--device", default="auto", help="device for --verify: cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="dtype for --verify (default auto: bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--preset", default="student",
                        help="network whose widths --verify checks at (default student)")
    parser.add_argument("--bands", type=int, default=172, help="hyperspectral bands for --verify (default 172)")
    parser.add_argument("--msi-bands", type=int, default=4, help="multispectral bands for --verify (default 4)")
    parser.set_defaults(func=run)
