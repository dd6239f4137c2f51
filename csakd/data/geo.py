"""Georeferenced scenes on disk, read and written by windows through rasterio (GDAL), so that memory stays bounded
by the window however large the scene.

`open_raster` reads a GeoTIFF/COG or ENVI file with its CRS, transform, nodata and band centres; `RasterWriter`
writes one atomically (a temporary file renamed on success); `check_alignment` says whether an LR-HSI and an
HR-MSI lie on grids `scale` apart, and `aligned_msi` resamples the HR-MSI onto such a grid on the fly when they
do not. Arrays are (bands, rows, columns), rasterio's order, not read_cube's (H, W, bands).
"""
from __future__ import annotations

import glob
import math
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .readers import _envi_files, _nm

FORMATS = ("GTiff", "COG", "ENVI")
BLOCK = 256
WAVELENGTHS_TAG = "wavelengths_nm"
FWHM_TAG = "fwhm_nm"
# Relative tolerance on pixel sizes and on "no rotation": transforms that went through text (ENVI map info, WKT)
# come back with rounding in the last digits, e.g. a rotation term of -0.0 or 1e-17.
PIXEL_RTOL = 1e-6
ROTATION_RTOL = 1e-9
WARP_TOLERANCE = 0.01


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _window(window, height: int, width: int, name: str) -> Window:
    """A rasterio Window from a Window or a (row_off, col_off, height, width) tuple, checked to lie inside the
    raster: rasterio would silently clip a window that sticks out."""
    if window is None:
        return Window(0, 0, width, height)
    if isinstance(window, Window):
        r0, c0, h, w = window.row_off, window.col_off, window.height, window.width
    else:
        try:
            r0, c0, h, w = window
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a rasterio Window or a (row_off, col_off, height, width) tuple, "
                             f"got {window!r}") from None
    if not all(float(v).is_integer() for v in (r0, c0, h, w)):
        raise ValueError(f"{name}: expected whole-pixel offsets and sizes, got rows {r0}+{h}, columns {c0}+{w}")
    r0, c0, h, w = int(r0), int(c0), int(h), int(w)
    if h < 1 or w < 1 or r0 < 0 or c0 < 0 or r0 + h > height or c0 + w > width:
        raise ValueError(f"{name}: expected a non-empty window inside the {height} x {width} raster, got rows "
                         f"{r0}..{r0 + h}, columns {c0}..{c0 + w}")
    return Window(c0, r0, w, h)


# ---------------------------------------------------------------------------------------------------- reading

def _numbers(text: str) -> np.ndarray:
    """The values of an ENVI list ("{450.1, 460.2}") or a comma-separated list."""
    return np.array([float(v) for v in text.strip().strip("{}").split(",") if v.strip()])


def _per_band(dataset, key: str, ns=None) -> list | None:
    values = [dataset.tags(i, ns=ns).get(key) for i in range(1, dataset.count + 1)]
    return None if any(v is None for v in values) else values


def _band_centres(dataset) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Band centres and FWHMs in nm, and where they came from. Sources, most faithful first: the ENVI header;
    our writer's full-precision list; GDAL's per-band `wavelength` items (what GDAL carries over from ENVI into a
    GeoTIFF); GDAL's IMAGERY domain (micrometres rounded to 3 decimals); band descriptions such as "452.3 nm"."""
    envi = dataset.tags(ns="ENVI") if "ENVI" in (dataset.tag_namespaces() or []) else {}
    if "wavelength" in envi:
        raw = _numbers(envi["wavelength"])
        # Without stated units, _nm takes centres below 30 for micrometres; the FWHMs follow the centres.
        units = envi.get("wavelength_units") or ("micrometers" if raw.size and raw.max() < 30 else "nanometers")
        fwhm = _nm(_numbers(envi["fwhm"]), units) if "fwhm" in envi else None
        return _nm(raw, units), fwhm, "ENVI header"
    tags = dataset.tags()
    if WAVELENGTHS_TAG in tags:
        fwhm = _numbers(tags[FWHM_TAG]) if FWHM_TAG in tags else None
        return _numbers(tags[WAVELENGTHS_TAG]), fwhm, f"metadata item {WAVELENGTHS_TAG}"
    centres = _per_band(dataset, "wavelength")
    if centres is not None:
        units = (_per_band(dataset, "wavelength_units") or [tags.get("wavelength_units")])[0]
        fwhm = _per_band(dataset, "fwhm")
        return (_nm([float(v) for v in centres], units),
                None if fwhm is None else _nm([float(v) for v in fwhm], units), "band metadata items")
    centres = _per_band(dataset, "CENTRAL_WAVELENGTH_UM", ns="IMAGERY")
    if centres is not None:
        fwhm = _per_band(dataset, "FWHM_UM", ns="IMAGERY")
        return (np.array(centres, float) * 1000, None if fwhm is None else np.array(fwhm, float) * 1000,
                "IMAGERY metadata")
    found = [re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*nm\b.*", d or "")
             for d in dataset.descriptions]
    if found and all(found):
        return np.array([float(m.group(1)) for m in found]), None, "band descriptions"
    return None, None, ""


class Raster:
    """A georeferenced raster opened for windowed reads (use `open_raster`). A context manager: leaving the
    `with` block closes the dataset."""

    def __init__(self, dataset, name: str, path: str, wavelengths=None, fwhm=None, units=None):
        self._dataset = dataset
        self.name = name
        self.path = path
        self.wavelengths = wavelengths  # nm, or None
        self.fwhm = fwhm  # nm, or None
        self.units = units  # of the pixel values (e.g. "reflectance"), when every band states the same ones

    bands = property(lambda self: self._dataset.count)
    height = property(lambda self: self._dataset.height)
    width = property(lambda self: self._dataset.width)
    shape = property(lambda self: (self._dataset.count, self._dataset.height, self._dataset.width))
    crs = property(lambda self: self._dataset.crs, doc="rasterio CRS, or None")
    transform = property(lambda self: self._dataset.transform, doc="affine.Affine (identity when none)")
    nodata = property(lambda self: self._dataset.nodata)
    dtype = property(lambda self: self._dataset.dtypes[0], doc="the stored dtype; read() gives float32")
    closed = property(lambda self: self._dataset.closed)
    subdatasets = property(lambda self: self._dataset.subdatasets, doc="other images in the file (TIFF pages)")

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform != Affine.identity()

    def read(self, window=None) -> np.ndarray:
        """(bands, h, w) float32 of `window` (a rasterio Window or a (row_off, col_off, height, width) tuple;
        None: the whole raster). Only that window is read from disk."""
        if self._dataset.closed:
            raise ValueError(f"{self.name}: the raster {self.path} is closed")
        win = _window(window, self.height, self.width, "window")
        try:
            return self._dataset.read(window=win, out_dtype="float32")
        except RasterioError as exc:  # damaged or truncated blocks surface only when read
            raise ValueError(f"{self.name}: cannot read rows {win.row_off}..{win.row_off + win.height}, columns "
                             f"{win.col_off}..{win.col_off + win.width} of {self.path}: {_one_line(exc)}") from exc

    def close(self) -> None:
        self._dataset.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"Raster({self.name!r}, {self.path}, {self.bands} bands x {self.height} x {self.width}, "
                f"{_crs_label(self.crs)})")


def open_raster(path, name: str = "input") -> Raster:
    """Opens a GeoTIFF/COG or ENVI raster (the data file or its .hdr) for windowed reads. Errors name `name`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file {path}")
    if path.is_dir():
        raise ValueError(f"{name}: expected a raster file, got the directory {path}")
    if path.suffix.lower() == ".hdr":  # GDAL opens ENVI through the data file
        try:
            path = _envi_files(path)[1]
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{name}: {exc}") from None
    with warnings.catch_warnings():
        # Ungeoreferenced rasters are legal here (check_alignment decides what they may be used for).
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(path)
        except RasterioError as exc:
            raise ValueError(f"{name}: cannot open {path} as a raster (GeoTIFF/COG or ENVI): "
                             f"{_one_line(exc)}") from exc
    try:
        if dataset.count < 1:
            raise ValueError(f"{name}: expected raster bands in {path}, found none (a container of "
                             f"subdatasets?)")
        try:
            wavelengths, fwhm, source = _band_centres(dataset)
        except ValueError as exc:  # a number that does not parse
            raise ValueError(f"{name}: cannot read the band centres of {path}: {_one_line(exc)}") from exc
        for label, values in (("wavelengths", wavelengths), ("fwhm", fwhm)):
            if values is not None and values.shape != (dataset.count,):
                raise ValueError(f"{name}: expected {dataset.count} {label} (one a band) in the {source} of "
                                 f"{path}, got {values.size}")
            if values is not None and (not np.all(np.isfinite(values)) or values.min() <= 0):
                raise ValueError(f"{name}: expected positive finite {label} in the {source} of {path}, got range "
                                 f"{values.min()}..{values.max()}")
    except ValueError:
        dataset.close()
        raise
    units = set(dataset.units)
    return Raster(dataset, name, str(path), wavelengths, fwhm, (units.pop() or None) if len(units) == 1 else None)


# ---------------------------------------------------------------------------------------------------- writing

def _vector(name: str, values, bands: int) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.shape != (bands,) or not np.all(np.isfinite(v)) or v.min() <= 0:
        raise ValueError(f"{name}: expected {bands} positive finite values in nm (one a band), got "
                         f"{v.size} values" + (f" in {v.min()}..{v.max()}" if v.size else ""))
    return v


def _check_nodata(nodata, dtype: np.dtype):
    if nodata is None:
        return None
    try:
        value = float(nodata)
    except (TypeError, ValueError):
        raise ValueError(f"nodata: expected a number or None, got {nodata!r}") from None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not value.is_integer() or not info.min <= value <= info.max:
            raise ValueError(f"nodata: expected an integer in {info.min}..{info.max} for dtype {dtype}, got "
                             f"{nodata!r}")
    return value


def _cast(data: np.ndarray, dtype: np.dtype, nodata) -> np.ndarray:
    """`data` as `dtype`. Float into integer rounds and clips: a plain cast would wrap out-of-range values round
    (300 -> 44 in uint8) and turn NaN into an arbitrary number."""
    if data.dtype == dtype or dtype.kind == "f" or data.dtype.kind not in "f":
        return data.astype(dtype, copy=False)
    finite = np.isfinite(data)
    if not finite.all() and nodata is None:
        raise ValueError(f"data: found NaN/Inf, which dtype {dtype} cannot hold without a nodata value")
    info = np.iinfo(dtype)
    out = np.clip(np.rint(np.where(finite, data, 0)), info.min, info.max).astype(dtype)
    out[~finite] = nodata if nodata is not None else 0
    return out


class RasterWriter:
    """Writes a (bands, height, width) raster by windows: band-interleaved, 256-pixel tiled, deflate-compressed
    GeoTIFF (predictor 3 for floats), a COG (the GeoTIFF translated at close) or ENVI (.hdr beside the data file,
    with wavelength, fwhm and map info). Atomic: everything goes to temporary files in the output's folder and is
    renamed into place on a successful close; an exception inside the `with` block removes them all.

    crs/transform: None writes an ungeoreferenced raster. wavelengths/fwhm: nm, one a band. units: the units of
    the pixel values (GeoTIFF/COG only; ENVI headers have no field for them).
    """

    def __init__(self, path, bands: int, height: int, width: int, crs, transform, nodata=None, wavelengths=None,
                 fwhm=None, format: str = "GTiff", dtype="float32", name: str = "out", units: str | None = None):
        self.name = name
        self.format = next((f for f in FORMATS if f.lower() == str(format).lower()), None)
        if self.format is None:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
        self.bands = _positive_int("bands", bands)
        self.height = _positive_int("height", height)
        self.width = _positive_int("width", width)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype: expected a numeric dtype name such as 'float32', got {dtype!r}") from None
        if self.dtype.kind not in "iuf" or self.dtype.itemsize > 8 or self.dtype == np.float16:
            raise ValueError(f"dtype: expected one of uint8..uint64, int8..int64, float32, float64, got {dtype!r}")
        try:
            self.crs = None if crs is None else CRS.from_user_input(crs)
        except CRSError as exc:
            raise ValueError(f"crs: expected a CRS (rasterio CRS, 'EPSG:32633', WKT) or None, got {crs!r}: "
                             f"{_one_line(exc)}") from None
        if transform is not None and not isinstance(transform, Affine):
            raise ValueError(f"transform: expected an affine.Affine or None, got {type(transform).__name__} "
                             f"(build one with rasterio.transform.from_origin)")
        self.transform = transform
        self.nodata = _check_nodata(nodata, self.dtype)
        self.wavelengths = _vector("wavelengths", wavelengths, self.bands)
        self.fwhm = _vector("fwhm", fwhm, self.bands)
        self.units = units

        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"{name}: expected a file path, got the directory {self.path}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{name}: the folder {self.path.parent} does not exist")
        if self.format == "ENVI" and self.path.suffix.lower() == ".hdr":
            raise ValueError(f"{name}: expected the ENVI data file path (e.g. {self.path.with_suffix('.img').name}),"
                             f" got the header path {self.path}")
        # Same folder as the output, so that the final rename stays on one file system (atomic); hidden and
        # unique, so that concurrent writers and other files never clash with it.
        self._stem = f".{self.path.name}.{uuid.uuid4().hex[:12]}"
        self._tmp = self.path.parent / (self._stem + (".tmp" if self.format == "ENVI" else ".tif"))
        self._dataset = None
        try:
            self._dataset = self._open()
        except Exception:
            self._discard()
            raise

    def _open(self):
        profile = dict(driver="GTiff" if self.format != "ENVI" else "ENVI", width=self.width, height=self.height,
                       count=self.bands, dtype=self.dtype.name, crs=self.crs, transform=self.transform,
                       nodata=self.nodata)
        if self.format == "ENVI":
            # REPLACE: the header of x.tmp is x.hdr, renamed next to the data file as GDAL and ENVI look for it.
            profile.update(interleave="bsq", SUFFIX="REPLACE")
        else:
            profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK, interleave="band", compress="deflate",
                           predictor=3 if self.dtype.kind == "f" else 2, BIGTIFF="IF_SAFER")
        # No .aux.xml side files: everything belongs in the GeoTIFF tags or the ENVI header.
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                dataset = rasterio.open(self._tmp, "w", **profile)
            except RasterioError as exc:
                raise ValueError(f"{self.name}: cannot create {self.path} as {self.format}: {_one_line(exc)}") \
                    from exc
            try:
                self._describe(dataset)
            except BaseException:
                dataset.close()
                raise
        return dataset

    def _describe(self, dataset) -> None:
        if self.wavelengths is not None:
            for i, w in enumerate(self.wavelengths, 1):
                dataset.set_band_description(i, f"{w:g} nm")
        if self.units and self.format != "ENVI":
            dataset.units = [self.units] * self.bands
        if self.wavelengths is None:
            return
        listed = {"wavelength": self.wavelengths, "fwhm": self.fwhm}
        if self.format == "ENVI":
            dataset.update_tags(ns="ENVI", wavelength_units="Nanometers", **{
                k: "{" + ", ".join(repr(float(x)) for x in v) + "}" for k, v in listed.items() if v is not None})
            return
        # The full-precision list for open_raster, plus GDAL's per-band items that other tools (and read_cube)
        # understand.
        dataset.update_tags(**{WAVELENGTHS_TAG: ",".join(repr(float(x)) for x in self.wavelengths)},
                            **({FWHM_TAG: ",".join(repr(float(x)) for x in self.fwhm)} if self.fwhm is not None
                               else {}))
        for i in range(self.bands):
            dataset.update_tags(i + 1, wavelength=repr(float(self.wavelengths[i])), wavelength_units="nm",
                                **({"fwhm": repr(float(self.fwhm[i]))} if self.fwhm is not None else {}))

    def write(self, data, window=None) -> None:
        """Writes `data` (bands, h, w) into `window` (a rasterio Window or a (row_off, col_off, height, width)
        tuple; None: the whole raster)."""
        if self._dataset is None:
            raise ValueError(f"{self.name}: the writer of {self.path} is closed")
        win = _window(window, self.height, self.width, "window")
        if hasattr(data, "detach"):  # a torch tensor, possibly on a GPU
            data = data.detach().cpu().numpy()
        data = np.asarray(data)
        expected = (self.bands, int(win.height), int(win.width))
        if data.shape != expected:
            raise ValueError(f"data: expected shape {expected} (bands, window height, window width), got "
                             f"{data.shape}")
        if data.dtype.kind not in "iufb":
            raise ValueError(f"data: expected a numeric array, got dtype {data.dtype}")
        self._dataset.write(_cast(data, self.dtype, self.nodata), window=win)

    def close(self) -> None:
        """Finishes the file and renames it into place (idempotent)."""
        if self._dataset is None:
            return
        dataset, self._dataset = self._dataset, None
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"):
                dataset.close()
                final = self._tmp
                if self.format == "COG":
                    final = self.path.parent / (self._stem + ".cog.tif")
                    rasterio.shutil.copy(self._tmp, final, driver="COG", **_cog_options())
            if self.format == "ENVI":
                header = self._tmp.with_suffix(".hdr")
                # GDAL writes the (temporary) data file name as the header's description.
                header.write_text(header.read_text().replace(self._tmp.name, self.path.name))
                os.replace(final, self.path)
                os.replace(header, self.path.with_suffix(".hdr"))
            else:
                os.replace(final, self.path)
        except BaseException:
            self._discard()
            raise
        self._discard()  # what is left: the GeoTIFF a COG was translated from

    def abort(self) -> None:
        """Closes without keeping anything: removes the temporary files."""
        dataset, self._dataset = self._dataset, None
        if dataset is not None:
            try:
                with rasterio.Env(GDAL_PAM_ENABLED="NO"):
                    dataset.close()
            except RasterioError:
                pass  # the files go anyway
        self._discard()

    def _discard(self) -> None:
        for leftover in self.path.parent.glob(glob.escape(self._stem) + "*"):
            leftover.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _cog_options() -> dict:
    options = dict(COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=BLOCK, BIGTIFF="IF_SAFER")
    # The COG driver writes band-interleaved files only from GDAL 3.11; older ones refuse the option with a
    # warning and interleave by pixel.
    if tuple(int(x) for x in rasterio.__gdal_version__.split(".")[:2]) >= (3, 11):
        options["INTERLEAVE"] = "BAND"
    return options


# ---------------------------------------------------------------------------------------------------- alignment

def _crs_label(crs) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _check_north_up(raster) -> None:
    t = raster.transform
    if abs(t.b) > ROTATION_RTOL * abs(t.a) or abs(t.d) > ROTATION_RTOL * abs(t.e):
        raise ValueError(f"{raster.name}: expected a north-up grid without rotation, got rotation terms "
                         f"b={t.b:g}, d={t.d:g} in its transform")


def _apply(t: Affine, col, row):
    return t.c + col * t.a + row * t.b, t.f + col * t.d + row * t.e


def _pixel_ratios(msi, crs, grid: Affine) -> tuple[float, float]:
    """Destination pixels per MSI pixel along x and y, measured at the MSI's centre pixel."""
    col, row = msi.width / 2, msi.height / 2
    xs, ys = _apply(msi.transform, np.array([col, col + 1, col]), np.array([row, row, row + 1]))
    if msi.crs != crs:
        xs, ys = rasterio.warp.transform(msi.crs, crs, xs, ys)
    cols, rows = _apply(~grid, np.asarray(xs), np.asarray(ys))
    return (float(np.hypot(cols[1] - cols[0], rows[1] - rows[0])),
            float(np.hypot(cols[2] - cols[0], rows[2] - rows[0])))


def check_alignment(lr, msi, scale: int, tolerance: float = 0.1) -> str:
    """Checks that `msi` lies on the grid `scale` times finer than `lr`'s: same CRS, pixel size lr's / scale,
    north-up, origins within `tolerance` HR pixel, and exactly scale x lr's size. Returns "georeferenced", or
    "ungeoreferenced" when neither has a CRS/transform and only the sizes could be checked. Raises ValueError
    with one line saying what differs."""
    scale = _positive_int("scale", scale)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance: expected a non-negative number of HR pixels, got {tolerance!r}")
    status = "georeferenced"
    if not lr.georeferenced and not msi.georeferenced:
        status = "ungeoreferenced"
    elif lr.georeferenced != msi.georeferenced:
        has, lacks = (lr, msi) if lr.georeferenced else (msi, lr)
        raise ValueError(f"{lacks.name}: expected georeferencing like {has.name} ({_crs_label(has.crs)}), got "
                         f"none (no CRS or transform)")
    else:
        if lr.crs != msi.crs:
            raise ValueError(f"{msi.name}: expected the CRS of {lr.name} ({_crs_label(lr.crs)}), got "
                             f"{_crs_label(msi.crs)}")
        _check_north_up(lr)
        _check_north_up(msi)
        a, e = lr.transform.a / scale, lr.transform.e / scale
        ma, me = msi.transform.a, msi.transform.e
        if abs(ma - a) > PIXEL_RTOL * abs(a) or abs(me - e) > PIXEL_RTOL * abs(e):
            raise ValueError(f"{msi.name}: expected pixel size ({a:g}, {e:g}) ({lr.name}'s ({lr.transform.a:g}, "
                             f"{lr.transform.e:g}) / scale {scale}), got ({ma:g}, {me:g}) (ratio "
                             f"{lr.transform.a / ma:g} to {lr.name}'s)")
        # + 0.0 turns -0.0 into 0.0 for the message.
        columns = (msi.transform.c - lr.transform.c) / a + 0.0
        rows = (msi.transform.f - lr.transform.f) / e + 0.0
        if abs(columns) > tolerance or abs(rows) > tolerance:
            raise ValueError(f"{msi.name}: expected the origin of {lr.name} ({lr.transform.c:.6g}, "
                             f"{lr.transform.f:.6g}) within {tolerance:g} HR pixel, got ({msi.transform.c:.6g}, "
                             f"{msi.transform.f:.6g}) (off by {columns:+.3g} columns, {rows:+.3g} rows of HR "
                             f"pixels)")
    height, width = scale * lr.height, scale * lr.width
    if (msi.height, msi.width) != (height, width):
        raise ValueError(f"{msi.name}: expected {height} x {width} pixels (scale {scale} x {lr.name}'s "
                         f"{lr.height} x {lr.width}), got {msi.height} x {msi.width} ({msi.height - height:+d} "
                         f"rows, {msi.width - width:+d} columns)")
    return status


def aligned_msi(msi: Raster, lr: Raster, scale: int, resampling: str = "bilinear") -> Raster:
    """`msi` resampled on the fly onto the grid `scale` times finer than `lr`'s (same CRS and origin, pixel
    lr's / scale, scale x lr's size) through a GDAL warped VRT: reads stay windowed. Pixels outside the MSI read
    as its nodata (NaN when it has none). `msi` must stay open while the result is used; closing the result
    leaves `msi` open."""
    scale = _positive_int("scale", scale)
    try:
        method = resampling if isinstance(resampling, Resampling) else Resampling[resampling]
    except (KeyError, TypeError):
        raise ValueError(f"resampling: expected one of {', '.join(r.name for r in Resampling)}, got "
                         f"{resampling!r}") from None
    for raster in (msi, lr):
        if raster.crs is None:
            raise ValueError(f"{raster.name}: expected a CRS to resample {msi.name} onto {lr.name}'s grid, got "
                             f"none")
    t = lr.transform
    grid = Affine(t.a / scale, t.b / scale, t.c, t.d / scale, t.e / scale, t.f)
    nodata = msi.nodata if msi.nodata is not None else math.nan
    x_scale, y_scale = _pixel_ratios(msi, lr.crs, grid)
    try:
        # XSCALE/YSCALE fixed for the whole raster: GDAL otherwise estimates the kernel's scale from each window
        # it warps, so the same pixel came out differently in a full read and in a tile (1e-4 on a 0..1 ramp), a
        # seam between tiles. tolerance: the transformer's approximation error in pixels (GDAL's default 0.125
        # would misplace 10 m pixels by up to 1.25 m, differently from window to window).
        vrt = WarpedVRT(msi._dataset, crs=lr.crs, transform=grid, width=lr.width * scale,
                        height=lr.height * scale, resampling=method, dtype="float32", src_nodata=msi.nodata,
                        nodata=nodata, tolerance=WARP_TOLERANCE, XSCALE=repr(x_scale), YSCALE=repr(y_scale))
    except RasterioError as exc:
        raise ValueError(f"{msi.name}: cannot resample onto {lr.name}'s grid: {_one_line(exc)}") from exc
    return Raster(vrt, msi.name, msi.path, msi.wavelengths, msi.fwhm, msi.units)
