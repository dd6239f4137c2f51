"""On-disk layout of a fusion dataset (what `csakd synth` writes and `FusionDataset.from_folder` reads):

    DIR/dataset.json        manifest: splits -> item names, shapes, band centres, provenance (source files and
                            their sha256, the spec, "srf": which spectral response and where its curves came
                            from, "quality": a data-quality summary per source scene)
    DIR/spec.json           the DegradationSpec
    DIR/srf.csv             the spectral response used (one row per HSI band: wavelength, then M weights; the
                            header names the MSI bands), readable back with --srf-csv
    DIR/<split>/<name>.npz  hr_hsi (H, W, C), lr_hsi (h, w, C), hr_msi (H, W, M): float32, the data's units

A folder of such .npz files without a manifest is a valid dataset too (the user's own paired data).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

MANIFEST = "dataset.json"
PAIR_KEYS = ("hr_hsi", "lr_hsi", "hr_msi")


def write_pair(path, hr_hsi: np.ndarray, lr_hsi: np.ndarray, hr_msi: np.ndarray, **extra) -> Path:
    """Writes one item (three (H, W, bands) arrays, plus any extra arrays) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in zip(PAIR_KEYS, (hr_hsi, lr_hsi, hr_msi))}
    np.savez(tmp, **arrays, **{k: np.asarray(v) for k, v in extra.items()})
    os.replace(tmp, path)
    return path


def read_pair(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hr_hsi, lr_hsi, hr_msi) of one item, each (H, W, bands)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in PAIR_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: expected arrays {PAIR_KEYS}, missing {missing} (has {z.files})")
            return tuple(z[k] for k in PAIR_KEYS)
    except ValueError:
        raise
    except Exception as exc:  # zipfile/zlib/OS errors of a damaged file
        raise ValueError(f"{path}: cannot read the paired item: {exc}") from exc


def write_manifest(root, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_srf_csv(path, srf: np.ndarray, wavelengths, labels=None) -> Path:
    """One row per HSI band: its centre (nm) and its weight in each MSI band; `labels` name the MSI bands
    (default msi_band_1..M)."""
    path = Path(path)
    labels = [f"msi_band_{m + 1}" for m in range(srf.shape[0])] if labels is None else [str(v) for v in labels]
    if len(labels) != srf.shape[0]:
        raise ValueError(f"labels: expected {srf.shape[0]} MSI band names (one per row of srf), got {len(labels)}")
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["wavelength_nm"] + labels)
        for c, wl in enumerate(wavelengths):
            out.writerow([f"{wl:.6f}"] + [f"{v:.10g}" for v in srf[:, c]])
    return path
