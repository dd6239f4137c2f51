"""`csakd fuse`: fuse a user's LR-HSI and HR-MSI of any size with a trained network, in tiles, streaming from and
to georeferenced files."""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from .._files import output_file


def _srf_for(checkpoint, lr) -> "object | None":
    """The spectral response the network was trained with (from the run's degradation spec) on the LR-HSI's
    bands, when both are known; else None."""
    import json

    if lr.wavelengths is None:
        return None
    path = Path(checkpoint)
    for folder in (path, *path.parents[:3]):
        spec_file = folder / "degradation.json"
        if spec_file.is_file():
            from ..data import DegradationSpec

            try:
                return DegradationSpec.from_dict(json.loads(spec_file.read_text())).response(lr.wavelengths, lr.fwhm)
            except ValueError:
                return None
    return None


def fuse_files(checkpoint, lr_path, msi_path, out_path, network: str | None = None, tile: int = 64,
               overlap: int = 8, device: str = "auto", precision: str = "auto", backend: str | None = None,
               lr_key: str | None = None, msi_key: str | None = None, clip: str = "auto", msi_scale: float = 1.0,
               resample_msi: bool = False, cog: bool = False, progress: bool = True, runtime: str = "torch") -> Path:
    """Fuses the LR-HSI and HR-MSI files into the HR-HSI at `out_path`, in the LR-HSI's units and grid (see
    `csakd fuse --help`). Every input is checked before the output exists; a failure leaves no output.
    `runtime` other than "torch" runs the per-tile network from an ONNX export of it
    (`csakd.inference.runtime.ExportedNetwork`)."""
    from ..inference.precision import inference_dtype, precision_name, set_precision
    from ..inference.runtime import ExportedNetwork, auto_rule, check_runtime
    from ..inference.scene import (Product, RasterInput, Scaled, clip_policy, hr_transform, open_input,
                                   output_format, same_file, value_range)
    from ..inference.tiled import check_fuse_inputs, fuse_scene
    from ..io import load_model
    from ..normalisation import Normalisation
    from ..train.checkpoint import resolve_model_file
    from ..train.distributed import pick_device

    out_path = Path(out_path)
    fmt = output_format(out_path, cog)
    for name, given in (("lr_hsi", lr_path), ("hr_msi", msi_path)):
        if Path(given).exists() and same_file(out_path, Path(given)):
            raise ValueError(f"out: expected a new file, got the input --{name.replace('_', '-')} {str(given)!r}")
    if msi_scale <= 0:
        raise ValueError(f"msi_scale: expected a positive factor, got {msi_scale}")
    if Path(checkpoint).is_file() and network is not None:
        raise ValueError(f"network: {str(checkpoint)!r} holds one network; --network chooses within a run or "
                         f"checkpoint folder")
    model = load_model(resolve_model_file(checkpoint, network or "student"), backend=backend)
    cfg, s = model.config, model.config.scale
    lr = open_input(lr_path, lr_key, "lr_hsi")
    msi = open_input(msi_path, msi_key, "hr_msi")
    with contextlib.ExitStack() as stack:
        stack.callback(msi.close)
        stack.callback(lr.close)
        rasters = isinstance(lr, RasterInput) and isinstance(msi, RasterInput)
        if resample_msi and not (rasters and lr.georeferenced and msi.georeferenced):
            raise ValueError("resample_msi: expected a georeferenced LR-HSI and HR-MSI (GeoTIFF/COG or ENVI with a "
                             "CRS and transform)")
        if (lr.georeferenced or msi.georeferenced) and not rasters:
            raise ValueError(f"hr_msi: expected georeferenced inputs of the same kind, got "
                             f"{'a georeferenced' if lr.georeferenced else 'a plain'} LR-HSI and "
                             f"{'a georeferenced' if msi.georeferenced else 'a plain'} HR-MSI")
        if rasters:
            from ..data.geo import aligned_msi, check_alignment

            if resample_msi:
                msi.raster = aligned_msi(msi.raster, lr.raster, s)
                msi.shape, msi.transform = msi.raster.shape, msi.raster.transform
            else:
                try:
                    check_alignment(lr.raster, msi.raster, s)
                except ValueError as exc:
                    raise ValueError(f"{exc}; pass --resample-msi to resample the HR-MSI onto the LR-HSI's grid") \
                        from None
        lo_data, hi_data = value_range(lr)
        lo, hi = Normalisation.parse(cfg.normalisation).range_of((lo_data, hi_data))
        lr_in, msi_in = Scaled(lr, lo, hi), Scaled(msi, lo, hi, msi_scale)
        check_fuse_inputs(model, lr_in, msi_in, tile, overlap)
        _check_units(lr, msi, msi_scale, s, _srf_for(checkpoint, lr))
        torch_device = pick_device(device)
        dtype = inference_dtype(precision, torch_device, auto=auto_rule(runtime))
        runtime_precision = precision_name(dtype)
        check_runtime(runtime, runtime_precision, torch_device)
        set_precision(model.to(torch_device), dtype)
        if runtime != "torch":  # exported and verified before the output exists
            workspace = stack.enter_context(tempfile.TemporaryDirectory(prefix="csakd-fuse-"))
            model = ExportedNetwork(model, runtime, runtime_precision, workspace)
        output_file(out_path, "out")
        shape = (cfg.bands, lr.shape[1] * s, lr.shape[2] * s)
        product = dict(lo=lo, hi=hi, clip=clip_policy(clip, lo_data), lr=lr, msi=msi, scale=s)
        if fmt == "npy":
            _fuse_to_npy(out_path, shape, product, model, lr_in, msi_in, tile, overlap, torch_device, progress)
        else:
            from ..data.geo import RasterWriter

            with RasterWriter(out_path, *shape, crs=lr.crs or msi.crs, transform=hr_transform(lr, msi, s),
                              nodata=float("nan"), wavelengths=lr.wavelengths, fwhm=lr.fwhm, format=fmt,
                              name="out") as writer:
                fuse_scene(model, lr_in, msi_in, tile=tile, overlap=overlap, device=torch_device,
                           out=Product(writer, **product), progress=progress)
    return out_path


def _check_units(lr, msi, msi_scale: float, scale: int, srf) -> None:
    """The units check on a central window of at most 64 x 64 LR pixels."""
    import numpy as np

    from ..normalisation import check_units

    _, h, w = lr.shape
    side_h, side_w = min(h, 64), min(w, 64)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    lr_block = lr.read((top, left, side_h, side_w))
    msi_block = msi.read((top * scale, left * scale, side_h * scale, side_w * scale)) * msi_scale
    keep = np.isfinite(lr_block).all(0)
    if keep.any():
        check_units(np.nan_to_num(lr_block), np.nan_to_num(msi_block), scale, srf)


def _fuse_to_npy(out_path, shape, product, model, lr_in, msi_in, tile, overlap, device, progress) -> None:
    """An .npy output written through a memory map in the (H, W, bands) layout of the inputs' files; removed if
    fusion fails."""
    import numpy as np

    from ..inference.scene import Product
    from ..inference.tiled import fuse_scene

    c, hh, ww = shape
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(hh, ww, c))
        fuse_scene(model, lr_in, msi_in, tile=tile, overlap=overlap, device=device,
                   out=Product(out.transpose(2, 0, 1), **product), progress=progress)
        out.flush()
        del out
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run(args) -> int:
    t0 = time.perf_counter()
    path = fuse_files(args.checkpoint, args.lr_hsi, args.hr_msi, args.out, args.network, args.tile, args.overlap,
                      args.device, args.precision, args.backend, args.lr_key, args.msi_key, args.clip,
                      args.msi_scale, args.resample_msi, args.cog, progress=not args.no_progress,
                      runtime=args.runtime)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fuse", help="fuse an LR-HSI and an HR-MSI file of any size with a trained network",
        description="Fuse an LR-HSI and an HR-MSI into an HR-HSI with a trained network, in overlapping tiles so "
                    "that memory stays bounded by the tile size. GeoTIFF/COG and ENVI inputs are read and the "
                    "output written by windows, with the LR-HSI's CRS, the HR grid's transform and the band "
                    "wavelengths; the two grids must align (HR pixel = LR pixel / scale, same origin) or "
                    "--resample-msi resamples the HR-MSI onto the aligned grid. Inputs are scaled as the network "
                    "was trained (docs/data.md, 'Value scaling'), the output is in the LR-HSI's units. In CSA "
                    "'attention' mode the attention statistics are gathered over the whole scene first, so tiling "
                    "changes the result only at convolution borders (docs/csa.md).")
    parser.add_argument("--checkpoint", required=True,
                        help="a .safetensors model file, a checkpoint folder (last/best) or a run folder")
    parser.add_argument("--network", choices=("student", "teacher"), default=None,
                        help="which network of a run or checkpoint folder to use (default student)")
    parser.add_argument("--lr-hsi", required=True,
                        help="low-resolution hyperspectral cube: GeoTIFF/COG, ENVI (.hdr or data file), or "
                             ".npy/.npz/.mat/.h5 (height x width x bands)")
    parser.add_argument("--lr-key", default=None, help="array to read from an --lr-hsi file holding several")
    parser.add_argument("--hr-msi", required=True, help="high-resolution multispectral image (scale x finer)")
    parser.add_argument("--msi-key", default=None, help="array to read from an --hr-msi file holding several")
    parser.add_argument("--out", required=True,
                        help="output file: .tif/.tiff (band-interleaved GeoTIFF), .img (ENVI, with its .hdr beside) or .npy "
                             "(height x width x bands); missing folders are created; refused if it names an input")
    parser.add_argument("--cog", action="store_true", help="write a cloud-optimised GeoTIFF (with a .tif --out)")
    parser.add_argument("--clip", choices=("auto", "none", "nonnegative"), default="auto",
                        help="output clipping: nonnegative clips below 0, none keeps every value (default auto: "
                             "nonnegative when the LR-HSI has no negative values, else none)")
    parser.add_argument("--msi-scale", type=float, default=1.0,
                        help="multiply the HR-MSI by this factor first, to bring it to the LR-HSI's units "
                             "(e.g. 0.0001 for reflectance x 10000 against reflectance); the units are checked")
    parser.add_argument("--resample-msi", action="store_true",
                        help="resample a georeferenced HR-MSI onto the grid aligned with the LR-HSI (bilinear)")
    parser.add_argument("--tile", type=int, default=64, help="tile side in LR-HSI pixels (default 64)")
    parser.add_argument("--overlap", type=int, default=8,
                        help="overlap of neighbouring tiles in LR-HSI pixels (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="inference precision: fp32, or bf16/fp16 on the prepared inference path (default auto: "
                             "bf16 where the device computes it natively: a GPU, or a CPU with AVX-512 BF16 or AMX; "
                             "else fp32)")
    parser.add_argument("--backend", default=None,
                        help="kernels: reference, triton, cuda or auto (default: the process default)")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch",
                        help="what runs the network on each tile: torch (default), or onnxruntime / openvino "
                             "(CPU) on an ONNX export of it made and verified at the start; the scene's attention "
                             "statistics are still gathered in PyTorch. onnxruntime runs fp32; openvino fp32 or "
                             "bf16 (--precision; auto as for torch). docs/deploy.md compares their speed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


__all__ = ["fuse_files", "register", "run"]
