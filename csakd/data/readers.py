"""One entry point, `read_cube(path)`, for hyperspectral cubes on disk, returned as (H, W, bands) arrays with
their band centres when the file has them.

Formats (through well-kept libraries, no hand-written parsers): .npy/.npz (numpy), MATLAB .mat v5 (scipy)
and v7.3 (HDF5 through h5py: MATLAB stores column-major, so arrays come transposed and are turned back),
plain HDF5 .h5/.hdf5 (h5py, C order), ENVI .hdr + data file, BSQ/BIL/BIP, either byte order (spectral),
TIFF/GeoTIFF (rasterio/GDAL). Anything that cannot be read as a correct array (truncated or corrupt file, a
header that disagrees with the data's size, NaN/Inf values) raises `CubeReadError` (a ValueError) that names
the file and the cause.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bands import _compact

WAVELENGTH_KEYS = ("wavelengths_nm", "wavelength_nm", "wavelengths", "wavelength", "wl", "lambda", "centers_nm",
                   "wavelengths_nm_nominal")
FWHM_KEYS = ("fwhm_nm", "fwhm", "fwhm_nm_nominal")
CHANNEL_KEYS = ("aviris_channel", "channels", "channel")
ENVI_DATA_SUFFIXES = ("", ".img", ".raw", ".dat", ".bsq", ".bil", ".bip")
AXES = "HWB"


class CubeReadError(ValueError):
    """A file that cannot be read as a correct cube; the message names the file and the cause."""


@dataclass
class Cube:
    """data: (H, W, bands) in the file's dtype; wavelengths/fwhm in nm and channels (1-based sensor channel
    numbers) when the file gives them; metadata: what else the reader learnt (units, layout, georeference)."""

    data: np.ndarray
    wavelengths: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    channels: np.ndarray | None = None
    path: str | None = None
    format: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape


def _fail(path, fmt: str, reason) -> CubeReadError:
    return CubeReadError(f"{path}: cannot read as {fmt}: {reason}")


def _pick(arrays: dict, key, path, fmt: str):
    """The cube among named arrays: `key` if given, else the only 3-D numeric array, else a conventional name."""
    if key is not None:
        if key not in arrays:
            raise _fail(path, fmt, f"key {key!r} not found; the file holds {sorted(arrays)}")
        return key
    cubes = [k for k, v in arrays.items() if np.ndim(v) == 3 and np.asarray(v).dtype.kind in "iuf"]
    if len(cubes) == 1:
        return cubes[0]
    if not cubes:
        shapes = {k: np.shape(v) for k, v in arrays.items()}
        raise _fail(path, fmt, f"expected a 3-D numeric array (H, W, bands), found {shapes or 'no arrays'}")
    # Never a guess: a dataset item holds lr_hsi, hr_msi and hr_hsi, and reading the wrong one runs silently.
    raise _fail(path, fmt, f"it holds several 3-D arrays {sorted(cubes)}; choose one with key= (csakd fuse "
                           f"--lr-key/--msi-key)")


def _vector(arrays: dict, names, exclude, metadata: dict, role: str) -> np.ndarray | None:
    lowered = {k.lower(): k for k in arrays if k != exclude}
    for name in names:
        if name in lowered:
            v = np.asarray(arrays[lowered[name]]).ravel()
            if v.dtype.kind in "iuf" and v.size:
                metadata[f"{role}_key"] = lowered[name]
                return v
    return None


def _with_vectors(data, arrays, key, path, fmt, metadata) -> Cube:
    """The cube plus band centres, FWHMs and channel numbers found under conventional names, and short
    string entries (sensor, units, source) as metadata."""
    metadata.update({k: str(v) for k, v in arrays.items()
                     if np.ndim(v) == 0 and np.asarray(v).dtype.kind == "U" and len(str(v)) <= 2000})
    wavelengths = _vector(arrays, WAVELENGTH_KEYS, key, metadata, "wavelengths")
    fwhm = _vector(arrays, FWHM_KEYS, key, metadata, "fwhm")
    channels = _vector(arrays, CHANNEL_KEYS, key, metadata, "channels")
    return Cube(data, wavelengths=None if wavelengths is None else wavelengths.astype(np.float64),
                fwhm=None if fwhm is None else fwhm.astype(np.float64),
                channels=None if channels is None else channels.astype(np.int64), path=str(path), format=fmt,
                metadata=metadata)


def _read_npy(path, key):
    # Map first: the header's shape and the data offset tell the size the file must have. A file longer than
    # that would otherwise load silently as a smaller, wrong array.
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        expected, shape, dtype = mapped.offset + mapped.nbytes, mapped.shape, mapped.dtype
        data = np.array(mapped)
        del mapped
    except Exception as exc:  # not an .npy file, a damaged header, a truncated file, pickled objects
        raise _fail(path, "npy", f"{exc} (truncated or corrupt file?)") from exc
    actual = os.path.getsize(path)
    if actual != expected:
        raise _fail(path, "npy", f"the header promises shape {shape} of {dtype} = {expected} bytes, the file has "
                    f"{actual} bytes (header disagrees with the data)")
    return Cube(data, path=str(path), format="npy")


def _read_npz(path, key):
    if not zipfile.is_zipfile(path):
        raise _fail(path, "npz", "not a valid zip archive (truncated or corrupt)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile (bad CRC), zlib.error, ValueError, EOFError
        raise _fail(path, "npz", exc) from exc
    key = _pick(arrays, key, path, "npz")
    return _with_vectors(arrays[key], arrays, key, path, "npz", {"key": key})


def _is_hdf5(path) -> bool:
    import h5py

    return h5py.is_hdf5(path)


def _read_hdf5(path, key, matlab: bool):
    import h5py

    fmt = "MATLAB v7.3 (HDF5)" if matlab else "HDF5"
    try:
        with h5py.File(path, "r") as f:
            arrays = {}
            for name, item in f.items():
                if isinstance(item, h5py.Dataset) and item.dtype.kind in "iuf":
                    # MATLAB writes column-major: an (H, W, B) variable is stored as (B, W, H).
                    arrays[name] = np.asarray(item).T if matlab else np.asarray(item)
    except Exception as exc:  # OSError for truncated or corrupt files
        raise _fail(path, fmt, exc) from exc
    key = _pick(arrays, key, path, fmt)
    return _with_vectors(arrays[key], arrays, key, path, fmt, {"key": key})


def _read_mat(path, key):
    if _is_hdf5(path):
        return _read_hdf5(path, key, matlab=True)
    from scipy.io import loadmat

    try:
        arrays = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError as exc:  # v7.3 without an HDF5 signature: a damaged file
        raise _fail(path, "MATLAB .mat", exc) from exc
    except Exception as exc:  # scipy raises ValueError/TypeError/zlib.error/OSError on damaged files
        with open(path, "rb") as f:
            header = f.read(6)
        hint = "" if header == b"MATLAB" else " (no 'MATLAB 5.0 MAT-file' header: not a .mat file?)"
        raise _fail(path, "MATLAB v5 .mat", f"{exc}{hint}") from exc
    key = _pick(arrays, key, path, "MATLAB v5 .mat")
    return _with_vectors(arrays[key], arrays, key, path, "MATLAB v5 .mat", {"key": key})


def _envi_files(path: Path) -> tuple[Path, Path]:
    if path.suffix.lower() == ".hdr":
        header = path
        for suffix in ENVI_DATA_SUFFIXES:
            for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
                if candidate.is_file():
                    return header, candidate
        raise FileNotFoundError(f"{path}: ENVI header without a data file (tried {', '.join(ENVI_DATA_SUFFIXES)})")
    for header in (path.with_suffix(".hdr"), Path(str(path) + ".hdr")):
        if header.is_file():
            return header, path
    raise FileNotFoundError(f"{path}: no ENVI header ({path.with_suffix('.hdr').name} or {path.name}.hdr)")


def _nm(values, units: str | None) -> np.ndarray:
    """Wavelengths in nm: converts micrometres (stated, or guessed from values below 30)."""
    v = np.asarray(values, dtype=np.float64)
    units = (units or "").strip().lower()
    if units.startswith("micro") or units in ("um", "µm") or (not units and v.size and np.nanmax(v) < 30):
        return v * 1000.0
    return v


def _read_envi(path, key):
    from spectral.io import envi

    header, data_file = _envi_files(Path(path))
    try:
        img = envi.open(str(header), str(data_file))
    except Exception as exc:  # spectral raises its own errors for malformed headers
        raise _fail(header, "ENVI", exc) from exc
    meta = img.metadata
    dtype = np.dtype(img.dtype)
    expected = int(meta.get("header offset", 0)) + int(np.prod(img.shape)) * dtype.itemsize
    actual = os.path.getsize(data_file)
    if actual != expected:
        raise _fail(data_file, "ENVI", f"the header promises {img.shape[0]} lines x {img.shape[1]} samples x "
                    f"{img.shape[2]} bands of {dtype} = {expected} bytes, the data file has {actual} bytes "
                    f"({'truncated' if actual < expected else 'header disagrees with the data'})")
    try:
        data = np.asarray(img.load(dtype=dtype, scale=False))
    except Exception as exc:
        raise _fail(data_file, "ENVI", exc) from exc
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    units = meta.get("wavelength units")
    wavelengths = _nm(meta["wavelength"], units) if "wavelength" in meta else None
    fwhm = _nm(meta["fwhm"], units if units else ("micrometers" if wavelengths is not None and
                                                   np.nanmax(np.asarray(meta["wavelength"], float)) < 30 else None)) \
        if "fwhm" in meta else None
    extra = {k: meta[k] for k in ("interleave", "byte order", "data type", "reflectance scale factor",
                                  "data ignore value", "bbl", "description") if k in meta}
    return Cube(data, wavelengths=wavelengths, fwhm=fwhm, path=str(data_file), format="ENVI", metadata=extra)


def _gdal_band_values(xml: str, bands: int, names) -> np.ndarray | None:
    """Per-band numeric items (e.g. wavelength) of a GDAL_METADATA TIFF tag."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    values = {}
    for item in root.iter("Item"):
        if (item.get("name") or "").lower() in names and item.get("sample") is not None:
            try:
                values[int(item.get("sample"))] = float(item.text)
            except (TypeError, ValueError):
                return None
    if sorted(values) != list(range(bands)):
        return None
    return np.array([values[i] for i in range(bands)])


class _Warnings(logging.Handler):
    """Collects tifffile's log warnings: it reports a broken page chain as a warning and carries on with the
    pages it could read, which would give a cube with silently missing or zero-filled bands."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _read_tiff(path, key):
    """A multi-page TIFF stack (one band a page, as scientific tools write them) through tifffile; a GeoTIFF/COG
    or any single-image TIFF through GDAL (rasterio: every compression and layout, band centres from band
    descriptions or GDAL metadata). tifffile checks the file's structure first in both cases: GDAL reads the
    first page of a damaged file without complaint."""
    import tifffile

    size = os.path.getsize(path)
    log = logging.getLogger("tifffile")
    warnings = _Warnings()
    log.addHandler(warnings)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            pages = list(series.pages)
            if any(p is None for p in pages):
                raise ValueError("pages of the image are missing")
            for page in pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
                if not ends or max(ends) > size:
                    raise ValueError(f"image data of page {page.index} lies beyond the end of the "
                                     f"{size}-byte file (truncated)")
            stack = len(pages) > 1
            data = series.asarray() if stack else None
            gdal = pages[0].tags.get("GDAL_METADATA")
            gdal = gdal.value if gdal is not None else None
            geotiff = "GeoKeyDirectoryTag" in pages[0].tags
    except Exception as exc:  # tifffile.TiffFileError, ValueError, struct errors on damaged files
        raise _fail(path, "TIFF", exc) from exc
    finally:
        log.removeHandler(warnings)
    if warnings.messages:
        raise _fail(path, "TIFF", f"damaged file: {'; '.join(warnings.messages[:3])}")
    if not stack:
        return _read_gdal_tiff(path)
    if data.ndim != 3 or "Y" not in axes or "X" not in axes:
        raise _fail(path, "TIFF", f"expected a 3-D multi-band image with Y and X axes, got axes {axes!r} "
                    f"shape {data.shape}")
    band_axis = next(i for i, a in enumerate(axes) if a not in "YX")
    data = np.moveaxis(data, [axes.index("Y"), axes.index("X"), band_axis], [0, 1, 2])
    wavelengths = fwhm = None
    if gdal is not None:
        wavelengths = _gdal_band_values(gdal, data.shape[2], ("wavelength", "wavelengths",
                                                                    "central_wavelength"))
        fwhm = _gdal_band_values(gdal, data.shape[2], ("fwhm",))
    return Cube(data, wavelengths=wavelengths, fwhm=fwhm, path=str(path), format="TIFF",
                metadata={"axes": axes, "geotiff": geotiff})


def _read_gdal_tiff(path) -> Cube:
    from .geo import open_raster

    try:
        with open_raster(path, "cube") as raster:
            data = np.moveaxis(raster.read(), 0, 2)
            if np.dtype(raster.dtype).kind in "iu":
                data = data.astype(raster.dtype)  # the stored integers, as the other readers give them
            return Cube(data, wavelengths=raster.wavelengths, fwhm=raster.fwhm, path=str(path), format="TIFF",
                        metadata={"axes": "YXS", "geotiff": raster.georeferenced})
    except ValueError as exc:  # unreadable or damaged blocks: geo names the cause
        raise _fail(path, "TIFF", str(exc).removeprefix("cube: ")) from exc


READERS = {".npy": _read_npy, ".npz": _read_npz, ".mat": _read_mat, ".tif": _read_tiff, ".tiff": _read_tiff,
           ".h5": lambda p, k: _read_hdf5(p, k, matlab=False), ".hdf5": lambda p, k: _read_hdf5(p, k, matlab=False),
           **{s: _read_envi for s in (".hdr", ".img", ".raw", ".dat", ".bsq", ".bil", ".bip")}}


def _check_vector(cube: Cube, name: str) -> None:
    v = getattr(cube, name)
    if v is not None and v.shape != (cube.data.shape[2],):
        raise CubeReadError(f"{cube.path}: {name} has {v.size} entries but the cube has {cube.data.shape[2]} bands")
    if v is not None and name != "channels" and (not np.all(np.isfinite(v)) or v.min() <= 0):
        raise CubeReadError(f"{cube.path}: {name} must be positive and finite, got range {v.min()}..{v.max()}")


def read_cube(path, key: str | None = None, layout: str | None = None, allow_nonfinite: bool = False) -> Cube:
    """Reads a hyperspectral cube as (H, W, bands).

    key: the variable to read from .npz/.mat/.h5 files holding several 3-D arrays.
    layout: the axis order of the stored array when it is not (H, W, bands), e.g. "BHW" (ignored for
    ENVI and TIFF, whose headers state it).
    allow_nonfinite: keep NaN/Inf values instead of refusing the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        if suffix == "" and (Path(str(path) + ".hdr").is_file() or path.with_suffix(".hdr").is_file()):
            reader = _read_envi
        else:
            raise CubeReadError(f"{path}: unknown cube format {suffix!r}; expected one of "
                                f"{', '.join(sorted(READERS))} (or an ENVI data file beside its .hdr)")
    cube = reader(path, key)
    data = np.asarray(cube.data)
    if data.dtype.kind not in "iuf":
        raise CubeReadError(f"{cube.path}: expected a numeric (integer or float) cube, got dtype {data.dtype}")
    if layout is not None and cube.format not in ("ENVI", "TIFF"):
        if sorted(layout.upper()) != sorted(AXES):
            raise ValueError(f"layout: expected a permutation of {AXES!r} (e.g. 'BHW'), got {layout!r}")
        data = np.transpose(data, [layout.upper().index(a) for a in AXES]) if data.ndim == 3 else data
    if data.ndim != 3:
        raise CubeReadError(f"{cube.path}: expected a 3-D cube (H, W, bands), got shape {data.shape}")
    cube.data = data
    for name in ("wavelengths", "fwhm", "channels"):
        _check_vector(cube, name)
    if data.dtype.kind == "f" and not allow_nonfinite:
        bad = ~np.isfinite(data)
        if bad.any():
            bands = np.flatnonzero(bad.any(axis=(0, 1))) + 1
            raise CubeReadError(f"{cube.path}: expected finite values, found {int(bad.sum())} NaN/Inf in bands "
                                f"(1-based) {_compact(bands)}; pass allow_nonfinite=True to keep them and "
                                f"find_bad_bands() to locate them")
    return cube
