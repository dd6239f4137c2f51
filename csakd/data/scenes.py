"""A scene ready for degradation: float32 (H, W, C) data with its band centres, after band selection and
bad-band handling, plus notes saying what was decided (they go into the provenance of a dataset)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bands import AVIRIS_CHANNELS, aviris_fwhm, aviris_wavelengths, channel_indices, find_bad_bands
from .readers import Cube, read_cube

BAD_BAND_POLICIES = ("error", "drop", "keep")


@dataclass
class Scene:
    name: str
    data: np.ndarray  # (H, W, C) float32
    wavelengths: np.ndarray
    fwhm: np.ndarray | None = None
    channels: np.ndarray | None = None
    source: str | None = None
    notes: list = field(default_factory=list)


def _as_cube(item, index: int) -> tuple[Cube, str]:
    if isinstance(item, Cube):
        return item, Path(item.path).stem if item.path else f"scene{index:04d}"
    if isinstance(item, (str, Path)):
        return read_cube(item, allow_nonfinite=True), Path(item).stem
    data = np.asarray(item)
    return Cube(data, format="array"), f"scene{index:04d}"


def prepare_scene(item, index: int = 0, channels=None, wavelengths=None, fwhm=None, bad_bands: str = "error",
                  name: str | None = None) -> Scene:
    """A Scene from a Cube, a path or an (H, W, C) array.

    channels: sensor channel numbers to keep (e.g. AVIRIS_172_CHANNELS), located through the cube's own
    channel list, or channel = band number for a 224-band cube.
    wavelengths/fwhm: band centres/widths in nm when the file has none (after selection: one per kept band).
    A 224-band cube without them gets the package's AVIRIS table (noted).
    bad_bands: what to do with all-zero or NaN/Inf bands: "error" (default), "drop" (noted), "keep".
    """
    if bad_bands not in BAD_BAND_POLICIES:
        raise ValueError(f"bad_bands: expected one of {BAD_BAND_POLICIES}, got {bad_bands!r}")
    cube, default_name = _as_cube(item, index)
    name = name or default_name
    data = cube.data
    if data.ndim != 3:
        raise ValueError(f"{name}: expected an (H, W, bands) cube, got shape {data.shape}")
    notes = []
    wl = cube.wavelengths if wavelengths is None else None
    fw = cube.fwhm if fwhm is None else None
    cube_channels = cube.channels
    if wl is None and wavelengths is None and data.shape[2] == AVIRIS_CHANNELS and cube_channels is None:
        wl, fw = aviris_wavelengths(), aviris_fwhm()
        notes.append(f"{name}: no band centres in the file; 224 bands taken as AVIRIS channels 1-224 with the "
                     f"package's 2014 AVIRIS calibration")
    if channels is not None:
        if cube_channels is None and data.shape[2] != AVIRIS_CHANNELS:
            raise ValueError(f"channels: {name} has {data.shape[2]} bands and no channel list, so channels "
                             f"cannot be located; pass a cube with channel numbers or select bands yourself")
        idx = channel_indices(channels, cube_channels, data.shape[2])
        data = data[:, :, idx]
        wl = wl[idx] if wl is not None else None
        fw = fw[idx] if fw is not None else None
        cube_channels = np.asarray(channels, dtype=np.int64) if cube_channels is None else cube_channels[idx]
        notes.append(f"{name}: kept {len(idx)} channels by channel number")
    if wavelengths is not None:
        wl = np.asarray(wavelengths, dtype=np.float64)
    if fwhm is not None:
        fw = np.asarray(fwhm, dtype=np.float64)
    if wl is None and cube_channels is not None and cube_channels.max() <= AVIRIS_CHANNELS:
        wl, fw = aviris_wavelengths(cube_channels), aviris_fwhm(cube_channels)
        notes.append(f"{name}: no band centres in the file; AVIRIS channels looked up in the package's 2014 table")
    if wl is None:
        raise ValueError(f"wavelengths: {name} has no band centres; expected wavelengths (nm, one per band) "
                         f"to build the spectral response")
    if wl.shape != (data.shape[2],):
        raise ValueError(f"wavelengths: expected {data.shape[2]} values for {name}, got shape {wl.shape}")

    report = find_bad_bands(data, channels=cube_channels)
    if not report.ok:
        if bad_bands == "error":
            raise ValueError(f"{name}: {report}\n(choose bad_bands='drop' to remove them, or select channels)")
        if bad_bands == "drop":
            keep = np.array(report.good, dtype=np.int64)
            data, wl = data[:, :, keep], wl[keep]
            fw = fw[keep] if fw is not None else None
            cube_channels = cube_channels[keep] if cube_channels is not None else None
            notes.append(f"{name}: dropped bad bands: {report}")
        else:
            notes.append(f"{name}: kept bad bands: {report}")
    return Scene(name=name, data=np.ascontiguousarray(data, dtype=np.float32), wavelengths=wl, fwhm=fw,
                 channels=cube_channels, source=cube.path, notes=notes)


def cube_files(folder) -> list[Path]:
    """The cube files of a folder (ENVI counted once, by its header), sorted by name."""
    from .readers import READERS

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READERS)
    headers = {p.with_suffix("") for p in files if p.suffix.lower() == ".hdr"}
    return [p for p in files if p.suffix.lower() == ".hdr" or p.with_suffix("") not in headers]
