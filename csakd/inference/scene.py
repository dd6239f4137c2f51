"""A user's scene pair on disk, as `fuse_scene` reads and writes it: inputs opened for windowed reads (GeoTIFF/COG
and ENVI through rasterio, streamed; .npy/.npz/.mat/.h5 through `read_cube`, in memory), scaled by the model's
normalisation; the fused product written by windows (GeoTIFF, COG or ENVI with the LR-HSI's CRS, the HR grid's
transform and the wavelengths; or .npy), back in the LR-HSI's units, clipped by an explicit policy."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..normalisation import Normalisation

RASTER_SUFFIXES = (".tif", ".tiff", ".hdr", ".img", ".dat", ".bsq", ".bil", ".bip", ".envi")
OUTPUT_FORMATS = {".tif": "GTiff", ".tiff": "GTiff", ".img": "ENVI", ".npy": "npy"}  # ENVI: the data file
CLIP_POLICIES = ("auto", "none", "nonnegative")
_ROWS_PER_READ = 256


class ArrayInput:
    """A cube read whole by `read_cube` (formats without windowed reads), as (bands, H, W) windows."""

    georeferenced = False
    crs = transform = nodata = None

    def __init__(self, path, key: str | None, name: str):
        from ..data.readers import read_cube

        cube = read_cube(path, key=key)
        self.path, self.name = str(path), name
        self.data = np.moveaxis(np.asarray(cube.data, dtype=np.float32), 2, 0)
        self.wavelengths, self.fwhm = cube.wavelengths, cube.fwhm
        self.shape = self.data.shape

    def read(self, window):
        row, col, h, w = window
        return self.data[:, row:row + h, col:col + w]

    def close(self) -> None:
        pass


class RasterInput:
    """A `csakd.data.geo.Raster` (or the aligned view of one) as (bands, H, W) windows."""

    def __init__(self, raster, name: str):
        self.raster, self.name, self.path = raster, name, raster.path
        self.shape = raster.shape
        self.georeferenced, self.crs, self.transform = raster.georeferenced, raster.crs, raster.transform
        self.nodata, self.wavelengths, self.fwhm = raster.nodata, raster.wavelengths, raster.fwhm

    def read(self, window):
        data = self.raster.read(window)
        if self.nodata is not None and not np.isnan(self.nodata):
            data[data == self.nodata] = np.nan
        return data

    def close(self) -> None:
        self.raster.close()


def open_input(path, key: str | None, name: str):
    """The input `path` for windowed reads; `key` chooses the array of a file that holds several."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    if path.suffix.lower() in RASTER_SUFFIXES or (path.suffix == "" and Path(f"{path}.hdr").is_file()):
        if key is not None:
            raise ValueError(f"{name}: --{name.replace('_', '-').replace('hr-', '')}-key applies to files holding "
                             f"several arrays (.npz, .mat, .h5), not to the raster {str(path)!r}")
        from ..data.geo import open_raster

        return RasterInput(open_raster(path, name), name)
    try:
        return ArrayInput(path, key, name)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _row_windows(shape, rows: int = _ROWS_PER_READ):
    _, h, w = shape
    for top in range(0, h, rows):
        yield top, 0, min(rows, h - top), w


def value_range(source) -> tuple[float, float]:
    """(min, max) of a source over its finite values, read in row strips."""
    lo, hi = np.inf, -np.inf
    for window in _row_windows(source.shape):
        block = source.read(window)
        finite = block[np.isfinite(block)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not np.isfinite(lo):
        raise ValueError(f"{source.name}: expected some finite values, found only NaN/Inf/nodata")
    return lo, hi


class Scaled:
    """A source as the network sees it: x * factor scaled by (lo, hi); NaN (nodata) pixels as lo. Sliced as
    x[:, rows, cols] by `fuse_scene`."""

    def __init__(self, source, lo: float, hi: float, factor: float = 1.0):
        self.source, self.lo, self.hi, self.factor = source, lo, hi, factor
        self.shape, self.ndim = source.shape, 3

    def __getitem__(self, index):
        _, rows, cols = index
        top, left = rows.start or 0, cols.start or 0
        bottom, right = min(rows.stop, self.shape[1]), min(cols.stop, self.shape[2])
        block = self.source.read((top, left, bottom - top, right - left)) * self.factor
        return np.nan_to_num(Normalisation.apply(block, self.lo, self.hi), nan=0.0)


class Product:
    """Writes fused blocks back in the inputs' units (`y * (hi - lo) + lo`), clipped (`clip`: "nonnegative" or
    "none"), NaN where an input pixel had no data, to `writer` (a RasterWriter or a (C, H, W) array)."""

    def __init__(self, writer, lo: float, hi: float, clip: str, lr, msi, scale: int):
        self.writer, self.lo, self.hi, self.clip = writer, lo, hi, clip
        self.lr, self.msi, self.scale = lr, msi, scale

    def _missing(self, top: int, left: int, h: int, w: int) -> np.ndarray:
        """HR pixels of the window whose LR-HSI or HR-MSI pixel is nodata/NaN."""
        s = self.scale
        lr = self.lr.read((top // s, left // s, -(-(top + h) // s) - top // s, -(-(left + w) // s) - left // s))
        lr_bad = np.repeat(np.repeat(~np.isfinite(lr).all(0), s, 0), s, 1)
        lr_bad = lr_bad[top % s:top % s + h, left % s:left % s + w]
        return lr_bad | ~np.isfinite(self.msi.read((top, left, h, w))).all(0)

    def write(self, block: np.ndarray, window) -> None:
        top, left, h, w = window
        # In float64, as evaluation de-normalises: the same pair gives the same numbers in both.
        block = Normalisation.undo(block.astype(np.float64), self.lo, self.hi).astype(np.float32)
        if self.clip == "nonnegative":
            np.maximum(block, 0, out=block)
        missing = self._missing(top, left, h, w)
        if missing.any():
            block[:, missing] = np.nan
        if hasattr(self.writer, "write"):
            self.writer.write(block, window)
        else:
            self.writer[:, top:top + h, left:left + w] = block


def clip_policy(clip: str, lr_lo: float) -> str:
    """"auto": non-negative output when the LR-HSI has no negative values, else none."""
    if clip not in CLIP_POLICIES:
        raise ValueError(f"clip: expected one of {CLIP_POLICIES}, got {clip!r}")
    if clip == "auto":
        return "nonnegative" if lr_lo >= 0 else "none"
    return clip


def output_format(out: Path, cog: bool) -> str:
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"out: expected a file ending in one of {', '.join(OUTPUT_FORMATS)}, got {str(out)!r}")
    if cog:
        if fmt != "GTiff":
            raise ValueError(f"cog: a cloud-optimised GeoTIFF needs an --out ending in .tif/.tiff, got {str(out)!r}")
        return "COG"
    return fmt


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file, an ENVI data file and its header counting as one."""
    def stem(p: Path) -> Path:
        p = p.resolve()
        return p.with_suffix("") if p.suffix.lower() in RASTER_SUFFIXES else p

    return a.resolve() == b.resolve() or stem(a) == stem(b)


def hr_transform(lr, msi, scale: int):
    """The fused product's affine transform: the aligned HR-MSI's, else the LR-HSI's refined by the scale."""
    if msi.georeferenced:
        return msi.transform
    if lr.georeferenced:
        from affine import Affine

        return lr.transform @ Affine.scale(1 / scale)
    return None
