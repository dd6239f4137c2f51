"""AVIRIS band tables, the paper's 224 -> 172 channel preset (docs/data.md) and bad-band detection.

Channels are AVIRIS channel numbers, 1-based (1..224). Select bands by channel, never by wavelength: AVIRIS
wavelengths are not monotonic where its spectrometers overlap (channel 32 is redder than channel 33).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import aviris_tables

AVIRIS_CHANNELS = 224


def _channel_ranges(*ranges: tuple[int, int]) -> tuple[int, ...]:
    return tuple(c for lo, hi in ranges for c in range(lo, hi + 1))


# The paper drops channels 1-10, 104-116, 152-170 and 215-224 (water vapour, detector overlap, low SNR).
AVIRIS_172_CHANNELS = _channel_ranges((11, 103), (117, 151), (171, 214))


def _check_channels(channels, available: int | None = AVIRIS_CHANNELS) -> np.ndarray:
    ch = np.asarray(channels)
    if ch.ndim != 1 or ch.size == 0 or not np.issubdtype(ch.dtype, np.integer):
        raise ValueError(f"channels: expected a non-empty 1-D list of integer channel numbers, got {channels!r}")
    if available is not None and (ch.min() < 1 or ch.max() > available):
        raise ValueError(f"channels: expected channel numbers in 1..{available}, got values "
                         f"{ch.min()}..{ch.max()}")
    return ch.astype(np.int64)


def aviris_wavelengths(channels=None) -> np.ndarray:
    """Band centres (nm) of the given AVIRIS channels (all 224 by default), package table (2014 calibration)."""
    table = np.asarray(aviris_tables.CENTERS_NM, dtype=np.float64)
    return table.copy() if channels is None else table[_check_channels(channels) - 1]


def aviris_fwhm(channels=None) -> np.ndarray:
    """Band FWHMs (nm) of the given AVIRIS channels (all 224 by default)."""
    table = np.asarray(aviris_tables.FWHM_NM, dtype=np.float64)
    return table.copy() if channels is None else table[_check_channels(channels) - 1]


def aviris_172_wavelengths() -> np.ndarray:
    """Centres (nm) of the paper's 172 channels, in channel order (not sorted)."""
    return aviris_wavelengths(AVIRIS_172_CHANNELS)


def aviris_172_fwhm() -> np.ndarray:
    return aviris_fwhm(AVIRIS_172_CHANNELS)


def channel_indices(channels, cube_channels=None, bands: int | None = None) -> np.ndarray:
    """0-based band indices of `channels` in a cube whose bands are `cube_channels` (default 1..bands)."""
    wanted = _check_channels(channels, available=None)
    if cube_channels is None:
        if bands is None:
            raise ValueError("cube_channels: expected the channel number of each band, or bands, got neither")
        cube_channels = np.arange(1, bands + 1)
    cube_channels = _check_channels(cube_channels, available=None)
    position = {int(c): i for i, c in enumerate(cube_channels)}
    missing = [int(c) for c in wanted if int(c) not in position]
    if missing:
        raise ValueError(f"channels: expected channels present in the cube (it has {len(cube_channels)} bands, "
                         f"channels {cube_channels.min()}..{cube_channels.max()}), missing {_compact(missing)}")
    return np.array([position[int(c)] for c in wanted], dtype=np.int64)


def select_bands(cube: np.ndarray, channels=AVIRIS_172_CHANNELS, cube_channels=None) -> np.ndarray:
    """The bands of an (H, W, B) cube that carry `channels` (default: the paper's 172).

    `cube_channels` gives the channel number of each of the cube's bands; without it the cube must hold all
    224 AVIRIS channels in order (as raw AVIRIS files do).
    """
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube: expected an (H, W, bands) array, got shape {cube.shape}")
    if cube_channels is None and cube.shape[2] != AVIRIS_CHANNELS:
        raise ValueError(f"cube_channels: expected the AVIRIS channel of each band for a cube that does not hold "
                         f"all {AVIRIS_CHANNELS} channels, got None for a cube of {cube.shape[2]} bands")
    if cube_channels is not None and len(cube_channels) != cube.shape[2]:
        raise ValueError(f"cube_channels: expected {cube.shape[2]} entries (one per band), got {len(cube_channels)}")
    return cube[:, :, channel_indices(channels, cube_channels, cube.shape[2])]


def _compact(values) -> str:
    """'1-3, 7, 9-10' for [1, 2, 3, 7, 9, 10]."""
    values = sorted(int(v) for v in values)
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


@dataclass(frozen=True)
class BadBandReport:
    """Bands that carry no usable signal. Indices are 0-based band positions in the cube; `labels` are the
    names the report prints (channel numbers when known, else 1-based band numbers)."""

    bands: int
    all_zero: tuple[int, ...]
    non_finite: tuple[int, ...]
    non_finite_counts: tuple[int, ...]
    labels: tuple[int, ...] = field(repr=False)
    label_kind: str = "band"

    @property
    def bad(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.all_zero) | set(self.non_finite)))

    @property
    def good(self) -> tuple[int, ...]:
        bad = set(self.bad)
        return tuple(i for i in range(self.bands) if i not in bad)

    @property
    def ok(self) -> bool:
        return not self.bad

    def __str__(self) -> str:
        if self.ok:
            return f"all {self.bands} bands are usable (none all-zero, none with NaN/Inf)"
        name = "channels" if self.label_kind == "channel" else "bands (1-based)"
        lines = [f"{len(self.bad)} of {self.bands} bands are unusable:"]
        if self.all_zero:
            lines.append(f"  all-zero {name}: {_compact(self.labels[i] for i in self.all_zero)}")
        if self.non_finite:
            worst = sorted(zip(self.non_finite_counts, self.non_finite), reverse=True)[:3]
            detail = ", ".join(f"{self.labels[i]}: {n}" for n, i in worst)
            lines.append(f"  {name} with NaN/Inf: {_compact(self.labels[i] for i in self.non_finite)} "
                         f"(most affected, values: {detail})")
        return "\n".join(lines)


def find_bad_bands(cube: np.ndarray, channels=None) -> BadBandReport:
    """Reports the bands of an (H, W, B) cube that are all zero or hold any NaN/Inf. `channels` (one per
    band) makes the report name AVIRIS channels instead of band numbers."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube: expected an (H, W, bands) array, got shape {cube.shape}")
    bands = cube.shape[2]
    flat = cube.reshape(-1, bands)
    if np.issubdtype(flat.dtype, np.floating) or np.issubdtype(flat.dtype, np.complexfloating):
        bad_counts = (~np.isfinite(flat)).sum(axis=0)
    else:
        bad_counts = np.zeros(bands, dtype=np.int64)
    all_zero = ~np.any(flat != 0, axis=0)  # NaN != 0, so a NaN band is never "all zero"
    if channels is not None:
        labels = tuple(int(c) for c in _check_channels(channels, available=None))
        if len(labels) != bands:
            raise ValueError(f"channels: expected {bands} entries (one per band), got {len(labels)}")
    else:
        labels = tuple(range(1, bands + 1))
    non_finite = np.flatnonzero(bad_counts)
    return BadBandReport(bands=bands, all_zero=tuple(int(i) for i in np.flatnonzero(all_zero)),
                         non_finite=tuple(int(i) for i in non_finite),
                         non_finite_counts=tuple(int(bad_counts[i]) for i in non_finite), labels=labels,
                         label_kind="channel" if channels is not None else "band")
