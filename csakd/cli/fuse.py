"""`csakd fuse`: fuse an LR-HSI file and an HR-MSI file of any size with a trained network, in tiles."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OUTPUT_SUFFIXES = (".npy", ".tif", ".tiff")


def _read(path: str, name: str) -> np.ndarray:
    from ..data import read_cube

    if not Path(path).exists():
        raise FileNotFoundError(f"{name}: no such file {path!r}")
    return np.asarray(read_cube(path).data)


def fuse_files(checkpoint, lr_path, msi_path, out_path, network: str = "student", tile: int = 64,
               overlap: int = 8, device: str = "auto", precision: str = "auto", backend: str | None = None,
               progress: bool = True) -> Path:
    """Reads both cubes (H x W x bands), scales them with the LR-HSI's min/max as the training data were
    scaled, fuses in tiles and writes the (s·H) x (s·W) x bands result in the LR-HSI's units."""
    from ..io import load_model
    from ..train.checkpoint import resolve_model_file
    from ..inference.precision import inference_dtype, set_precision
    from ..inference.tiled import check_fuse_inputs, fuse_scene
    from ..train.distributed import pick_device

    out_path = Path(out_path)
    if out_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"out: expected a file ending in one of {OUTPUT_SUFFIXES}, got {str(out_path)!r}")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"out: the folder {str(out_path.parent)!r} does not exist")
    model = load_model(resolve_model_file(checkpoint, network), backend=backend)
    torch_device = pick_device(device)
    dtype = inference_dtype(precision, torch_device, auto="gpu-bf16")
    lr, msi = _read(lr_path, "lr_hsi"), _read(msi_path, "hr_msi")
    lo, hi = float(lr.min()), float(lr.max())
    if not hi > lo:
        raise ValueError(f"lr_hsi: expected more than one value in {lr_path!r}, got constant {lo}")
    # Channels-first float32 copies of the inputs (the output is s² C/M times larger than either).
    lr_chw = ((lr.transpose(2, 0, 1).astype(np.float32) - lo) / (hi - lo))
    msi_chw = ((msi.transpose(2, 0, 1).astype(np.float32) - lo) / (hi - lo))
    # Checked before the output file exists: a refused input must not leave a zero-filled file behind.
    s = check_fuse_inputs(model, lr_chw, msi_chw, tile, overlap)
    shape = (lr.shape[0] * s, lr.shape[1] * s, lr.shape[2])
    try:
        if out_path.suffix.lower() == ".npy":
            out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=shape)
        else:
            out = np.empty(shape, dtype=np.float32)
        fuse_scene(set_precision(model.to(torch_device), dtype), lr_chw, msi_chw, tile=tile, overlap=overlap,
                   device=torch_device, out=out.transpose(2, 0, 1), progress=progress)
        for y in range(0, shape[0], tile * s):  # back to the input's units, in strips
            out[y:y + tile * s] = out[y:y + tile * s] * (hi - lo) + lo
        if isinstance(out, np.memmap):
            out.flush()
        else:
            import tifffile

            tifffile.imwrite(out_path, out)
    except BaseException:  # an error or Ctrl-C half-way: no partial result that looks like a finished one
        out = None
        out_path.unlink(missing_ok=True)
        raise
    return out_path


def run(args) -> int:
    t0 = time.perf_counter()
    path = fuse_files(args.checkpoint, args.lr_hsi, args.hr_msi, args.out, args.network, args.tile, args.overlap,
                      args.device, args.precision, args.backend, progress=not args.no_progress)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fuse", help="fuse an LR-HSI and an HR-MSI file of any size with a trained network",
        description="Fuse an LR-HSI and an HR-MSI (files of height x width x bands: .npy, .npz, .mat, ENVI, "
                    "TIFF) into an HR-HSI with a trained network, in overlapping tiles blended together so that "
                    "memory stays bounded by the tile size. In CSA 'attention' mode the attention statistics are "
                    "gathered over the whole scene first, so tiling changes the result only at conv borders.")
    parser.add_argument("--checkpoint", required=True,
                        help="a .safetensors model file, a checkpoint folder (last/best) or a run folder")
    parser.add_argument("--network", choices=("student", "teacher"), default="student",
                        help="which network of a run/checkpoint folder to use (default student)")
    parser.add_argument("--lr-hsi", required=True, help="low-resolution hyperspectral cube file")
    parser.add_argument("--hr-msi", required=True, help="high-resolution multispectral cube file (scale x larger)")
    parser.add_argument("--out", required=True,
                        help="output file: .npy (written through a memory map) or .tif/.tiff; H x W x bands")
    parser.add_argument("--tile", type=int, default=64, help="tile side in LR-HSI pixels (default 64)")
    parser.add_argument("--overlap", type=int, default=8,
                        help="overlap of neighbouring tiles in LR-HSI pixels, blended linearly (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="inference precision: fp32, or bf16/fp16 on the prepared inference path (default auto: "
                             "bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--backend", default=None,
                        help="kernels: reference, triton, cuda or auto (default: the process default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


__all__ = ["fuse_files", "register", "run"]
