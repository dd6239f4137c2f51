"""Peak memory of streamed fusion: an LR-HSI and an HR-MSI GeoTIFF read by tiles and the (bands, scale*h, scale*w)
product written by tiles, two ways: the I/O alone (csakd.data.geo, nearest upsampling of the LR tile as a cheap
stand-in for the network) and `csakd fuse` itself (`csakd.cli.fuse.fuse_files`: the scene's value range and
attention statistics in a first pass, then the network tile by tile; an untrained student_tiny at the rasters'
band count, fp32 on the CPU: memory, not quality, is measured). Reports the peak RSS against the sizes of the
rasters: streaming keeps it near the import baseline + GDAL's block cache + a few tiles, however large the scene.

The synthetic pair is written into a temporary folder (removed afterwards). Each phase runs in its own process so
that ru_maxrss, a high-water mark that never goes down, measures that phase alone. Results go to stdout as JSON,
and to --out only when given.

    python bench/geo_io_memory.py                        # HR 8192 x 8192 x 4, LR 2048 x 2048 x 32 (~10 GiB)
    python bench/geo_io_memory.py --hr-size 2048 --bands 16 --out /tmp/geo_io.json
    python bench/geo_io_memory.py --no-network           # the I/O phase only (2 minutes instead of ~25 on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks also run from a checkout that is not installed

SCALE = 4
CRS = "EPSG:32633"
X0, Y0, LR_PIXEL = 500_000.0, 4_000_000.0, 40.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def lr_strip(rows: np.ndarray, width: int, bands: int) -> np.ndarray:
    """A smooth synthetic scene, different in every band: (bands, len(rows), width)."""
    y = rows[:, None].astype(np.float32) / 97.0
    x = np.arange(width, dtype=np.float32)[None, :] / 131.0
    base = np.sin(x) * np.cos(y)
    return np.stack([0.5 + 0.4 * np.sin(base * (1 + 0.1 * b) + 0.2 * b) for b in range(bands)])


def generate(folder: Path, hr_size: int, bands: int, msi_bands: int, strip: int) -> dict:
    from affine import Affine

    from csakd.data.geo import RasterWriter

    lr_size = hr_size // SCALE
    lr_t = Affine(LR_PIXEL, 0, X0, 0, -LR_PIXEL, Y0)
    hr_t = Affine(LR_PIXEL / SCALE, 0, X0, 0, -LR_PIXEL / SCALE, Y0)
    start = time.perf_counter()
    with RasterWriter(folder / "lr.tif", bands, lr_size, lr_size, CRS, lr_t, name="lr") as lr, \
            RasterWriter(folder / "msi.tif", msi_bands, hr_size, hr_size, CRS, hr_t, name="msi") as msi:
        for r0 in range(0, lr_size, strip):
            h = min(strip, lr_size - r0)
            lr.write(lr_strip(np.arange(r0, r0 + h), lr_size, bands), (r0, 0, h, lr_size))
            hr_rows = np.arange(SCALE * r0, SCALE * (r0 + h)) / SCALE
            msi.write(lr_strip(hr_rows, hr_size, msi_bands) * 0.9, (SCALE * r0, 0, SCALE * h, hr_size))
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak_rss_mb(), 1)}


def stream(folder: Path, tile: int) -> dict:
    from csakd.data.geo import RasterWriter, check_alignment, open_raster

    baseline = peak_rss_mb()  # python + numpy + torch (imported by csakd) + rasterio/GDAL
    tracemalloc.start()
    start = time.perf_counter()
    tiles = 0
    with open_raster(folder / "lr.tif", "lr_hsi") as lr, open_raster(folder / "msi.tif", "hr_msi") as msi:
        check_alignment(lr, msi, SCALE)
        with RasterWriter(folder / "fused.tif", lr.bands, msi.height, msi.width, lr.crs, msi.transform,
                          wavelengths=lr.wavelengths, name="fused") as out:
            for r0 in range(0, lr.height, tile):
                for c0 in range(0, lr.width, tile):
                    h, w = min(tile, lr.height - r0), min(tile, lr.width - c0)
                    lr_tile = lr.read((r0, c0, h, w))
                    msi_tile = msi.read((SCALE * r0, SCALE * c0, SCALE * h, SCALE * w))
                    # Stand-in for the network: nearest upsampling, modulated by the MSI's mean so that both
                    # inputs are read and used.
                    fused = lr_tile.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
                    fused *= 1 + 0.01 * msi_tile.mean(axis=0)
                    out.write(fused, (SCALE * r0, SCALE * c0, SCALE * h, SCALE * w))
                    tiles += 1
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": round(seconds, 1), "tiles": tiles, "baseline_rss_mib": round(baseline, 1),
            "peak_rss_mib": round(peak_rss_mb(), 1), "peak_rss_above_baseline_mib": round(peak_rss_mb() - baseline, 1),
            "tracemalloc_peak_mib": mib(traced)}


def fuse(folder: Path, bands: int, msi_bands: int, tile: int) -> dict:
    import torch

    import csakd
    from csakd.cli.fuse import fuse_files

    torch.manual_seed(0)
    csakd.create("student_tiny", bands=bands, msi_bands=msi_bands).save(folder / "model.safetensors")
    baseline = peak_rss_mb()  # python + numpy + torch + rasterio/GDAL + the model
    start = time.perf_counter()
    fuse_files(folder / "model.safetensors", folder / "lr.tif", folder / "msi.tif", folder / "fused_net.tif",
               tile=tile, overlap=8, device="cpu", precision="fp32", backend="reference", progress=False)
    return {"seconds": round(time.perf_counter() - start, 1), "tile_lr": tile, "overlap_lr": 8,
            "network": "student_tiny (untrained), fp32, reference backend, CPU", "threads": torch.get_num_threads(),
            "baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak_rss_mb(), 1),
            "peak_rss_above_baseline_mib": round(peak_rss_mb() - baseline, 1)}


def run_phase(args, phase: str, folder: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--dir", str(folder), "--hr-size", str(args.hr_size),
               "--bands", str(args.bands), "--msi-bands", str(args.msi_bands), "--tile", str(args.tile),
               "--gdal-cache-mb", str(args.gdal_cache_mb), "--network-tile", str(args.network_tile)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # errors show on stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def raster_sizes(path: Path) -> dict:
    import rasterio

    with rasterio.open(path) as src:
        raw = src.count * src.height * src.width * np.dtype(src.dtypes[0]).itemsize
        return {"shape": f"{src.count} x {src.height} x {src.width}", "uncompressed_mib": mib(raw),
                "on_disk_mib": mib(path.stat().st_size)}


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hr-size", type=int, default=8192, help="HR-MSI side in pixels (LR side: this / 4)")
    p.add_argument("--bands", type=int, default=32, help="LR-HSI (and output) bands")
    p.add_argument("--msi-bands", type=int, default=4)
    p.add_argument("--tile", type=int, default=256, help="LR tile side streamed at a time")
    p.add_argument("--gdal-cache-mb", type=int, default=256,
                   help="GDAL block cache (GDAL_CACHEMAX); GDAL's default is 5%% of the RAM")
    p.add_argument("--tmpdir", default=None, help="where the temporary rasters go (default: the system's)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--network-tile", type=int, default=64, help="LR tile side of the network phase (csakd fuse's)")
    p.add_argument("--no-network", action="store_true", help="skip the network phase (csakd fuse)")
    p.add_argument("--phase", choices=("generate", "stream", "fuse"), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hr_size % SCALE or args.hr_size < SCALE:
        p.error(f"--hr-size: expected a positive multiple of {SCALE}, got {args.hr_size}")

    if args.phase:
        import rasterio

        with rasterio.Env(GDAL_CACHEMAX=args.gdal_cache_mb):  # below 100000: MB to GDAL
            if args.phase == "generate":
                result = generate(Path(args.dir), args.hr_size, args.bands, args.msi_bands, args.tile)
            elif args.phase == "stream":
                result = stream(Path(args.dir), args.tile)
            else:
                result = fuse(Path(args.dir), args.bands, args.msi_bands, args.network_tile)
        print(json.dumps(result))
        return None

    with tempfile.TemporaryDirectory(prefix="csakd_geo_io_", dir=args.tmpdir) as tmp:
        folder = Path(tmp)
        generated = run_phase(args, "generate", folder)
        streamed = run_phase(args, "stream", folder)
        fused = None if args.no_network else run_phase(args, "fuse", folder)
        sizes = {name: raster_sizes(folder / f"{name}.tif") for name in ("lr", "msi", "fused")}
    import rasterio
    from _common import cpu_model, git_commit  # imports torch: only here, in the parent process

    result = {
        "benchmark": "geo_io_memory", "scale": SCALE, "tile_lr": args.tile, "tile_hr": SCALE * args.tile,
        "gdal_cachemax_mib": args.gdal_cache_mb, "rasters": sizes,
        "total_uncompressed_mib": round(sum(s["uncompressed_mib"] for s in sizes.values()), 1),
        "generate": generated, "stream": streamed, "csakd_fuse": fused,
        # One LR tile, one MSI tile and one output tile in float32.
        "tile_arrays_mib": mib(4 * args.tile**2 * (args.bands + (args.msi_bands + args.bands) * SCALE**2)),
        "env": {"python": platform.python_version(), "numpy": np.__version__, "rasterio": rasterio.__version__,
                "gdal": rasterio.__gdal_version__, "torch": version("torch"), "cpu": cpu_model(),
                "cpus": os.cpu_count(), "machine": platform.machine(),
                "commit": os.environ.get("CSAKD_COMMIT") or git_commit(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
