"""Spectral response matrices (M x C): how each multispectral band integrates the hyperspectral bands.

Rows sum to 1, so a spectrally flat scene keeps its value and the MSI stays in the HSI's units.

Named responses (`srf_names()`; docs/data.md has the details):
- the paper's protocol, boxcars over the Landsat TM band edges the paper gives: `paper_tm_1_4` (TM bands 1-4:
  450-520, 520-600, 630-690, 770-900 nm) and `paper_tm_1_5_7` (adds 1550-1750 and 2090-2350 nm). The paper puts
  TM4's lower edge at 770 nm where the published band starts at 760 nm; the presets keep the paper's numbers
  (the measured `landsat5_tm` is the real sensor). Their former names landsat_tm_4 / landsat_tm_6 still load.
- measured responses of real sensors (`sentinel2a`, `landsat8_oli`, ...), read from the pyrsr package.
Besides names: explicit (low, high) ranges in nm, or a CSV of tabulated responses.

A band whose response lies mostly outside the wavelengths the cube covers is refused: its MSI image would be
made of the few HSI bands at its edge, not the band it claims to be.
"""
from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

PAPER_PRESETS = {
    "paper_tm_1_4": ((450.0, 520.0), (520.0, 600.0), (630.0, 690.0), (770.0, 900.0)),
    "paper_tm_1_5_7": ((450.0, 520.0), (520.0, 600.0), (630.0, 690.0), (770.0, 900.0), (1550.0, 1750.0),
                       (2090.0, 2350.0)),
}
PAPER_BAND_NAMES = {"paper_tm_1_4": ("TM1", "TM2", "TM3", "TM4"),
                    "paper_tm_1_5_7": ("TM1", "TM2", "TM3", "TM4", "TM5", "TM7")}
# The band-edge presets (the only ones `model` shapes).
PRESETS = PAPER_PRESETS
# Names of earlier versions, kept so that saved specs and scripts still load.
ALIASES = {"landsat_tm_4": "paper_tm_1_4", "landsat_tm_6": "paper_tm_1_5_7"}
DEFAULT_SRF = "paper_tm_1_4"
MODELS = ("boxcar", "gaussian")
FWHM_TO_STD = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
# "Mostly outside": less than this share of a band's response falls where the cube has bands.
MIN_COVERAGE = 0.5
# A preset "fits" a cube when every band has at least this share inside (the rest is the tails' noise).
FULL_COVERAGE = 0.99


@dataclass(frozen=True)
class Sensor:
    """A measured sensor: pyrsr's (satellite, sensor) names, the reflective bands offered (thermal bands lie
    far beyond any imaging spectrometer) and the default selection (blue, green, red, near infrared)."""

    satellite: str
    sensor: str
    bands: tuple[str, ...]
    default: tuple[str, ...]
    title: str


_S2 = ("1", "2", "3", "4", "5", "6", "7", "8", "8A", "9", "10", "11", "12")
_TM = ("1", "2", "3", "4", "5", "7")
_OLI = ("1", "2", "3", "4", "5", "6", "7", "8", "9")
_MODIS = tuple(str(b) for b in range(1, 17))
SENSORS = {
    "sentinel2a": Sensor("Sentinel-2A", "MSI", _S2, ("2", "3", "4", "8"), "Sentinel-2A MSI"),
    "sentinel2b": Sensor("Sentinel-2B", "MSI", _S2, ("2", "3", "4", "8"), "Sentinel-2B MSI"),
    "landsat4_tm": Sensor("Landsat-4", "TM", _TM, ("1", "2", "3", "4"), "Landsat-4 TM"),
    "landsat5_tm": Sensor("Landsat-5", "TM", _TM, ("1", "2", "3", "4"), "Landsat-5 TM"),
    "landsat7_etm": Sensor("Landsat-7", "ETM+", _TM + ("8",), ("1", "2", "3", "4"), "Landsat-7 ETM+"),
    "landsat8_oli": Sensor("Landsat-8", "OLI_TIRS", _OLI, ("2", "3", "4", "5"), "Landsat-8 OLI"),
    "landsat9_oli": Sensor("Landsat-9", "OLI_TIRS", _OLI, ("2", "3", "4", "5"), "Landsat-9 OLI-2"),
    "rapideye": Sensor("RapidEye", "MSI", ("1", "2", "3", "4", "5"), ("1", "2", "3", "5"), "RapidEye MSI"),
    "spot5_hrg": Sensor("SPOT-5", "HRG1", ("1", "2", "3", "4", "5"), ("1", "2", "3"), "SPOT-5 HRG1"),
    "terra_modis": Sensor("Terra", "MODIS", _MODIS, ("3", "4", "1", "2"), "Terra MODIS"),
    "aqua_modis": Sensor("Aqua", "MODIS", _MODIS, ("3", "4", "1", "2"), "Aqua MODIS"),
    "terra_aster": Sensor("Terra", "ASTER", ("1", "2", "3N", "3B", "4", "5", "6", "7", "8", "9"),
                          ("1", "2", "3N"), "Terra ASTER"),
}


def _key(name: str) -> str:
    """Names match whatever their case and separators: "Sentinel-2A", "sentinel2a" and "SENTINEL_2A" agree."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_LOOKUP = {**{_key(n): n for n in (*PAPER_PRESETS, *SENSORS)}, **{_key(a): c for a, c in ALIASES.items()}}


def srf_names() -> tuple[str, ...]:
    """Every response name: the paper's presets, then the measured sensors."""
    return (*PAPER_PRESETS, *SENSORS)


def canonical_srf_name(name, arg: str = "preset") -> str:
    """The canonical name of a preset or sensor (an old name maps to its new one)."""
    if not isinstance(name, str) or _key(name) not in _LOOKUP:
        raise ValueError(f"{arg}: expected one of {', '.join(srf_names())} (former names: {', '.join(ALIASES)}), "
                         f"got {name!r}")
    return _LOOKUP[_key(name)]


def is_measured(name: str) -> bool:
    return canonical_srf_name(name) in SENSORS


def _band_label(sensor: Sensor, band, arg: str) -> str:
    text = str(band).strip().upper()
    text = (text[1:] if text.startswith("B") else text).lstrip("0")
    for label in sensor.bands:
        if label.upper() == text:
            return label
    raise ValueError(f"{arg}: expected {sensor.title} bands among {', '.join(sensor.bands)}, got {band!r}")


def check_srf(preset, bands=None, model: str = "boxcar", arg: str = "preset", bands_arg: str = "bands",
              model_arg: str = "model") -> tuple[str, tuple[str, ...] | None]:
    """(canonical name, band labels) of a named response; a measured sensor without `bands` gets its
    defaults, spelled out so that a saved spec keeps meaning the same bands. Band-edge presets take no bands,
    and `model` shapes only them (a measured response is used as measured)."""
    name = canonical_srf_name(preset, arg)
    if model not in MODELS:
        raise ValueError(f"{model_arg}: expected one of {MODELS}, got {model!r}")
    if name not in SENSORS:
        if bands is not None:
            raise ValueError(f"{bands_arg}: expected None for the band-edge preset {name} (bands choose among a "
                             f"measured sensor's bands), got {bands!r}")
        return name, None
    if model != "boxcar":
        raise ValueError(f"{model_arg}: expected 'boxcar' (ignored) for the measured response {name}, which is "
                         f"used as measured, got {model!r}")
    sensor = SENSORS[name]
    if bands is None:
        return name, sensor.default
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    try:
        labels = tuple(_band_label(sensor, b, bands_arg) for b in bands)
    except TypeError:
        raise ValueError(f"{bands_arg}: expected a list of {sensor.title} band names, got {bands!r}") from None
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"{bands_arg}: expected distinct {sensor.title} bands (among {', '.join(sensor.bands)}), "
                         f"got {bands!r}")
    return name, labels


def _wavelengths(wavelengths) -> np.ndarray:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size == 0 or not np.all(np.isfinite(wl)) or wl.min() <= 0:
        raise ValueError(f"wavelengths: expected a 1-D array of positive finite band centres in nm, got "
                         f"{'shape ' + str(wl.shape) if wl.ndim != 1 else 'values ' + str(wl[:4]) + '...'}")
    return wl


def _fwhm(fwhm, wl: np.ndarray) -> np.ndarray | None:
    if fwhm is None:
        return None
    fw = np.asarray(fwhm, dtype=np.float64)
    if fw.shape != wl.shape or not np.all(np.isfinite(fw)) or fw.min() < 0:
        raise ValueError(f"fwhm: expected {wl.size} non-negative values (one per band), got shape {fw.shape}")
    return fw


def _ranges(ranges) -> tuple[tuple[float, float], ...]:
    try:
        out = tuple((float(lo), float(hi)) for lo, hi in ranges)
    except (TypeError, ValueError):
        raise ValueError(f"ranges: expected a list of (low_nm, high_nm) pairs, got {ranges!r}") from None
    if not out or any(not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi) for lo, hi in out):
        raise ValueError(f"ranges: expected non-empty (low_nm, high_nm) pairs with 0 < low < high, got {ranges!r}")
    return out


def _normalise_rows(matrix: np.ndarray, names) -> np.ndarray:
    sums = matrix.sum(axis=1)
    empty = [names[i] for i in np.flatnonzero(sums <= 0)]
    if empty:
        raise ValueError(f"wavelengths: expected at least one hyperspectral band inside every multispectral band, "
                         f"got none for {', '.join(empty)}")
    return matrix / sums[:, None]


# ----------------------------------------------------------------------------------------------------------------
# What a cube covers, and how much of each MSI band falls there


def covered_ranges(wavelengths, fwhm=None) -> tuple[tuple[float, float], ...]:
    """The spectral ranges (nm) a cube's bands cover: runs of band centres at most 3 median spacings apart
    (a wider gap, such as dropped water-vapour bands, is not covered), widened at each end by half a band width
    (FWHM/2, or half the median spacing without FWHMs). Band order does not matter (AVIRIS's is not sorted)."""
    wl = _wavelengths(wavelengths)
    fw = _fwhm(fwhm, wl)
    order = np.argsort(wl, kind="stable")
    centres = wl[order]
    steps = np.diff(centres)
    spacing = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 0.0
    half = fw[order] / 2 if fw is not None else np.full(centres.size, spacing / 2)
    joined = (steps <= 3 * spacing) | (steps <= half[:-1] + half[1:])
    runs, start = [], 0
    for i in range(centres.size):
        if i == centres.size - 1 or not joined[i]:
            lo = min(centres[j] - half[j] for j in range(start, i + 1))
            hi = max(centres[j] + half[j] for j in range(start, i + 1))
            runs.append((float(lo), float(hi)))
            start = i + 1
    return tuple(runs)


def _fmt_ranges(ranges) -> str:
    return ", ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in ranges) + " nm"


def _interval_coverage(lo: float, hi: float, covered) -> float:
    inside = sum(max(0.0, min(hi, b) - max(lo, a)) for a, b in covered)
    return inside / (hi - lo)


def _curve_coverage(grid: np.ndarray, response: np.ndarray, covered) -> float:
    inside = np.zeros(grid.shape, dtype=bool)
    for a, b in covered:
        inside |= (grid >= a) & (grid <= b)
    return float(response[inside].sum() / response.sum())


@dataclass(frozen=True)
class BandCoverage:
    """One MSI band against a cube: the response's name, the band's name, its extent (band edges, or the
    measured curve's half-maximum range) and the share of its response that falls where the cube has bands."""

    response: str
    band: str
    low_nm: float
    high_nm: float
    inside: float

    def __str__(self) -> str:
        return f"{self.band} at {self.low_nm:.0f}-{self.high_nm:.0f} nm {self.inside:.0%} inside"


@lru_cache(maxsize=None)
def _measured(name: str, band: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelengths_nm, response scaled to peak 1) of one band, as pyrsr tabulates it (1 nm steps)."""
    sensor = SENSORS[name]
    try:
        from pyrsr import RSR
    except ImportError:
        raise ImportError(f"preset: the measured response {name} needs the pyrsr package (pip install pyrsr)") \
            from None
    rsr = RSR(satellite=sensor.satellite, sensor=sensor.sensor, LayerBandsAssignment=[band])
    grid = np.array(rsr.rsrs_wvl, dtype=np.float64)
    response = np.clip(np.array(rsr.rsrs_norm01[band], dtype=np.float64), 0, None)
    grid.setflags(write=False)
    response.setflags(write=False)
    return grid, response


def _half_maximum_range(grid: np.ndarray, response: np.ndarray) -> tuple[float, float]:
    above = grid[response >= 0.5 * response.max()]
    return float(above.min()), float(above.max())


def band_coverage(preset, wavelengths, fwhm=None, bands=None, ranges=None) -> tuple[BandCoverage, ...]:
    """How much of each band of a named response (or of explicit `ranges`) the cube's bands cover."""
    covered = covered_ranges(wavelengths, fwhm)
    if preset is None:
        ranges = _ranges(ranges)
        return tuple(BandCoverage("ranges", f"band {i + 1}", lo, hi, _interval_coverage(lo, hi, covered))
                     for i, (lo, hi) in enumerate(ranges))
    name, labels = check_srf(preset, bands)
    if labels is None:
        return tuple(BandCoverage(name, b, lo, hi, _interval_coverage(lo, hi, covered))
                     for b, (lo, hi) in zip(PAPER_BAND_NAMES[name], PAPER_PRESETS[name]))
    out = []
    for label in labels:
        grid, response = _measured(name, label)
        out.append(BandCoverage(name, f"band {label}", *_half_maximum_range(grid, response),
                                _curve_coverage(grid, response, covered)))
    return tuple(out)


def _refuse_uncovered(coverage, wavelengths, fwhm, arg: str, min_coverage: float) -> None:
    for band in coverage:
        if band.inside < min_coverage:
            raise ValueError(f"{arg}: expected MSI bands mostly inside the cube's bands "
                             f"({_fmt_ranges(covered_ranges(wavelengths, fwhm))}), got {band.response} "
                             f"{band.band} at {band.low_nm:.0f}-{band.high_nm:.0f} nm with {band.inside:.0%} of "
                             f"it inside")


def measured_available() -> bool:
    """Whether the pyrsr package, which holds the measured curves, is installed."""
    return importlib.util.find_spec("pyrsr") is not None


def srf_fit(wavelengths, fwhm=None) -> dict[str, tuple[BandCoverage, ...]]:
    """For every named response (sensors with their default bands; none without pyrsr): its bands that do not
    fit the cube (less than FULL_COVERAGE inside); an empty tuple means the response fits."""
    names = srf_names() if measured_available() else tuple(PAPER_PRESETS)
    return {name: tuple(b for b in band_coverage(name, wavelengths, fwhm) if b.inside < FULL_COVERAGE)
            for name in names}


def format_srf_fit(wavelengths, fwhm=None) -> str:
    """Console lines saying which named responses fit a cube's wavelength range, and why the others do not."""
    fit = srf_fit(wavelengths, fwhm)
    groups = {"fit": [], "partly outside (used as far as covered)": [], "refused": []}
    for name, misfits in fit.items():
        if not misfits:
            groups["fit"].append(name)
            continue
        verdict = "refused" if min(b.inside for b in misfits) < MIN_COVERAGE else \
            "partly outside (used as far as covered)"
        groups[verdict].append(f"{name} ({', '.join(str(b) for b in misfits)})")
    lines = [f"spectral responses for these bands ({_fmt_ranges(covered_ranges(wavelengths, fwhm))}; sensors "
             f"with their default bands):"]
    lines += [f"  {verdict}: {', '.join(names)}" for verdict, names in groups.items() if names]
    if not measured_available():
        lines.append("  (measured sensor responses need the pyrsr package: pip install pyrsr)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Response matrices


def boxcar_response(ranges, wavelengths) -> np.ndarray:
    """Each MSI band is the mean of the HSI bands whose centre lies in [low, high] (inclusive)."""
    wl = _wavelengths(wavelengths)
    ranges = _ranges(ranges)
    matrix = np.array([(wl >= lo) & (wl <= hi) for lo, hi in ranges], dtype=np.float64)
    return _normalise_rows(matrix, [f"band {i + 1} ({lo:g}-{hi:g} nm)" for i, (lo, hi) in enumerate(ranges)])


def gaussian_response(ranges, wavelengths, fwhm=None) -> np.ndarray:
    """Each MSI band a Gaussian centred on its range with the range's width as FWHM. With the HSI bands'
    own FWHMs the weight is the overlap integral of two Gaussians: a Gaussian of the summed variances."""
    wl = _wavelengths(wavelengths)
    ranges = _ranges(ranges)
    fw = _fwhm(fwhm, wl)
    hsi_var = np.zeros_like(wl) if fw is None else (fw * FWHM_TO_STD) ** 2
    rows = []
    for lo, hi in ranges:
        var = ((hi - lo) * FWHM_TO_STD) ** 2 + hsi_var
        rows.append(np.exp(-0.5 * (wl - 0.5 * (lo + hi)) ** 2 / var) / np.sqrt(var))
    return _normalise_rows(np.array(rows), [f"band {i + 1}" for i in range(len(ranges))])


def _measured_weights(grid: np.ndarray, response: np.ndarray, wl: np.ndarray, fw: np.ndarray | None) -> np.ndarray:
    """The response integrated over each HSI band: against the band's Gaussian of its FWHM when known, else
    sampled at the band centre. A Gaussian narrower than two grid steps is too coarsely sampled on the 1 nm
    table to integrate, so such bands are sampled at the centre too."""
    weights = np.interp(wl, grid, response, left=0.0, right=0.0)
    if fw is None:
        return weights
    step = float(np.median(np.diff(grid)))
    wide = fw >= 2 * step
    if np.any(wide):
        std = fw[wide, None] * FWHM_TO_STD
        kernel = np.exp(-0.5 * ((grid[None, :] - wl[wide, None]) / std) ** 2) * (step / (np.sqrt(2 * np.pi) * std))
        weights[wide] = kernel @ response
    return weights


def measured_response(preset: str, wavelengths, fwhm=None, bands=None, min_coverage: float = MIN_COVERAGE) \
        -> np.ndarray:
    """The (M, C) matrix of a measured sensor's `bands` (default: its blue, green, red and NIR bands)."""
    name, labels = check_srf(preset, bands)
    if labels is None:
        raise ValueError(f"preset: expected a measured sensor ({', '.join(SENSORS)}), got the band-edge "
                         f"preset {name}")
    wl = _wavelengths(wavelengths)
    fw = _fwhm(fwhm, wl)
    _refuse_uncovered(band_coverage(name, wl, fw, labels), wl, fw, "bands", min_coverage)
    matrix = np.array([_measured_weights(*_measured(name, b), wl, fw) for b in labels])
    return _normalise_rows(matrix, [f"{name} band {b}" for b in labels])


def read_response_csv(path, wavelengths) -> np.ndarray:
    """User-given responses: a CSV whose first column is wavelength (nm) and each further column one MSI
    band's relative response (an optional header row names them). Responses are interpolated linearly at
    the HSI band centres, zero outside the tabulated range, and rows normalised."""
    wl = _wavelengths(wavelengths)
    path = Path(path)
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    try:
        float(rows[0][0])
    except (IndexError, ValueError):
        rows = rows[1:]  # header row
    try:
        table = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"srf_csv: expected numeric rows 'wavelength_nm, response_1, ...' in {path}, "
                         f"got {exc}") from None
    if table.ndim != 2 or table.shape[1] < 2 or table.shape[0] < 2:
        raise ValueError(f"srf_csv: expected at least two rows of a wavelength column and one or more response "
                         f"columns in {path}, got {table.shape}")
    order = np.argsort(table[:, 0])
    table = table[order]
    if np.any(np.diff(table[:, 0]) <= 0) or np.any(table[:, 1:] < 0) or not np.all(np.isfinite(table)):
        raise ValueError(f"srf_csv: expected distinct wavelengths and finite non-negative responses in {path}")
    matrix = np.array([np.interp(wl, table[:, 0], table[:, j], left=0.0, right=0.0)
                       for j in range(1, table.shape[1])])
    return _normalise_rows(matrix, [f"column {j + 1} of {path.name}" for j in range(1, table.shape[1])])


def spectral_response(preset: str | None = DEFAULT_SRF, wavelengths=None, fwhm=None, model: str = "boxcar",
                      ranges=None, csv_path=None, bands=None, min_coverage: float = MIN_COVERAGE) -> np.ndarray:
    """The (M, C) spectral response matrix for HSI band centres `wavelengths` (nm).

    Exactly one source: a `preset` name (`srf_names()`: the paper's paper_tm_1_4 / paper_tm_1_5_7 boxcars, or
    a measured sensor such as sentinel2a with its `bands`, e.g. ("2", "3", "4", "8")), explicit `ranges`
    [(low, high), ...] in nm, or `csv_path` with tabulated responses.
    `model` shapes band-edge presets and ranges: "boxcar" (default, as the paper) or "gaussian" (range width as
    FWHM). `fwhm`, the HSI bands' FWHMs, widens a Gaussian band and is what a measured response is integrated
    against (without it the response is sampled at the band centres).
    A named or ranged band with less than `min_coverage` of its response inside the cube's bands is refused.
    """
    if wavelengths is None:
        raise ValueError("wavelengths: expected the HSI band centres in nm, got None")
    sources = [s for s, v in (("preset", preset), ("ranges", ranges), ("csv_path", csv_path)) if v is not None]
    if len(sources) != 1:
        raise ValueError(f"preset/ranges/csv_path: expected exactly one source of responses, got "
                         f"{sources or 'none'}")
    if csv_path is not None:
        return read_response_csv(csv_path, wavelengths)
    if preset is not None:
        name, labels = check_srf(preset, bands, model)
        if labels is not None:
            return measured_response(name, wavelengths, fwhm, labels, min_coverage)
        ranges = PAPER_PRESETS[name]
        _refuse_uncovered(band_coverage(name, wavelengths, fwhm), wavelengths, fwhm, "preset", min_coverage)
    else:
        if bands is not None:
            raise ValueError(f"bands: expected None with ranges (bands choose a measured sensor's bands), "
                             f"got {bands!r}")
        _refuse_uncovered(band_coverage(None, wavelengths, fwhm, ranges=ranges), wavelengths, fwhm, "ranges",
                          min_coverage)
    if model == "boxcar":
        return boxcar_response(ranges, wavelengths)
    if model == "gaussian":
        return gaussian_response(ranges, wavelengths, fwhm)
    raise ValueError(f"model: expected one of {MODELS}, got {model!r}")


# ----------------------------------------------------------------------------------------------------------------
# Provenance


def _pyrsr_reference(sensor: Sensor) -> str | None:
    """The source pyrsr names for a sensor's curves (its data folder's 'reference' file), if it has one."""
    try:
        import pyrsr
        path = Path(pyrsr.__path__[0]) / "data" / sensor.satellite / sensor.sensor / "reference"
        return "; ".join(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (ImportError, OSError):
        return None


def srf_provenance(preset=None, bands=None, ranges=None, csv_path=None, model: str = "boxcar") -> dict:
    """A JSON-able record of which response was used, for a dataset's manifest."""
    if csv_path is not None:
        return {"kind": "csv", "path": str(csv_path)}
    if preset is None:
        return {"kind": "ranges", "model": model, "ranges_nm": [list(r) for r in _ranges(ranges)]}
    name, labels = check_srf(preset, bands, model)
    if labels is None:
        return {"kind": "paper band edges", "name": name, "model": model,
                "bands": {b: list(r) for b, r in zip(PAPER_BAND_NAMES[name], PAPER_PRESETS[name])},
                "note": "Landsat TM band edges as the paper gives them (TM4 from 770 nm; the published band "
                        "starts at 760 nm)"}
    sensor = SENSORS[name]
    try:
        from importlib.metadata import version
        source = f"pyrsr {version('pyrsr')}"
    except Exception:  # metadata missing: still record where the curves came from
        source = "pyrsr"
    out = {"kind": "measured", "name": name, "sensor": sensor.title, "pyrsr_satellite": sensor.satellite,
           "pyrsr_sensor": sensor.sensor, "bands": list(labels), "source": source}
    reference = _pyrsr_reference(sensor)
    if reference:
        out["reference"] = reference
    return out


def describe_srfs() -> str:
    """One line per named response: what it is and which bands it offers (for `csakd synth --list-srf`)."""
    lines = []
    for name, ranges in PAPER_PRESETS.items():
        edges = ", ".join(f"{b} {lo:g}-{hi:g}" for b, (lo, hi) in zip(PAPER_BAND_NAMES[name], ranges))
        lines.append(f"{name:<15} the paper's boxcars: {edges} nm")
    for name, sensor in SENSORS.items():
        lines.append(f"{name:<15} {sensor.title}, measured (pyrsr): bands {','.join(sensor.bands)}; "
                     f"default {','.join(sensor.default)}")
    lines.append(f"former names: {', '.join(f'{a} = {c}' for a, c in ALIASES.items())}")
    return "\n".join(lines)
