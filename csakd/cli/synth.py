"""`csakd synth`: writes a ready fusion dataset (HR-HSI, LR-HSI, HR-MSI per item, the DegradationSpec, the
spectral response and a provenance manifest with a data-quality summary) from synthetic scenes, a cube file or a
folder of cubes."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._files import make_folder

from ..data.bands import AVIRIS_172_CHANNELS, AVIRIS_CHANNELS
from ..data.dataset import cube_datasets, generated_datasets
from ..data.degradation import BOUNDARIES, NOISE_TARGETS, SIGMA_KINDS, DegradationSpec
from ..data.generator import default_wavelengths
from ..data.quality import SNR_THRESHOLD_DB, format_quality, quality_report
from ..data.readers import read_cube
from ..data.scenes import BAD_BAND_POLICIES, cube_files, prepare_scene
from ..data.spectral_response import (DEFAULT_SRF, MODELS, canonical_srf_name, describe_srfs, format_srf_fit,
                                      is_measured, srf_provenance)
from ..data.store import MANIFEST, write_manifest, write_pair, write_srf_csv
from ..data.tiling import SPLIT_MODES

FORMAT = "csakd-fusion-dataset"
NORMALISATION_NOTE = ("Items are stored in the data's units. FusionDataset scales each item by its hr_hsi min/max "
                      "to [0, 1]; the LR-HSI and HR-MSI were computed from that normalised image, so a "
                      "noise SNR refers to it.")

EPILOG = """examples:
  csakd synth --source generated --count 8 --out data/gen8
  csakd synth --source scene.npz --out data/scene --snr 35 --noise-on both
  csakd synth --source cubes/ --out data/avi --tile 256 --split-by region --spec my_spec.json
  csakd synth --source scene.npz --out data/s2 --srf sentinel2a --srf-bands 2,3,4,8
  csakd synth --list-srf --source scene.npz      (the response names, and which fit the scene's bands)

Already have paired data (your own LR-HSI, HR-MSI and ground truth)? Skip synth: put NAME.npz files with
arrays hr_hsi, lr_hsi, hr_msi (each H x W x bands) in DIR/train and DIR/test and load them with
csakd.data.FusionDataset.from_folder(DIR, "train"), or use FusionDataset.from_pairs for other formats.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _ranges(text: str) -> tuple:
    try:
        return tuple(tuple(float(v) for v in part.split("-")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ranges like '450-520,520-600', got {text!r}") from None


def _srf_name(text: str) -> str:
    try:
        return canonical_srf_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("preset: ")) from None


def _band_list(text: str) -> tuple:
    bands = tuple(b.strip() for b in text.split(",") if b.strip())
    if not bands:
        raise argparse.ArgumentTypeError(f"expected band names like '2,3,4,8', got {text!r}")
    return bands


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth", help="write a fusion dataset (HR-HSI, LR-HSI, HR-MSI) from cubes or synthetic scenes",
        description=__doc__ + "\nEvery degradation choice is explicit and saved as spec.json beside the data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source")
    src.add_argument("--source", default="generated",
                     help="'generated' (synthetic scenes made here, the default), a cube file (.npy .npz .mat .h5 "
                          ".tif ENVI .hdr/.img) or a folder of cube files")
    src.add_argument("--out", type=Path, default=None,
                     help="output folder, created with its missing parents (default runs/synth-<date>-<time>)")
    src.add_argument("--count", type=_positive_int, default=8, help="generated: number of scenes (default 8)")
    src.add_argument("--size", type=_positive_int, default=256, help="generated: scene side in HR pixels "
                                                                      "(default 256)")
    src.add_argument("--bands", type=_positive_int, default=172,
                     help="generated: number of bands (default 172, the AVIRIS grid of the paper)")
    src.add_argument("--seed", type=int, default=0, help="seed of the generated scenes and of the scene split "
                                                         "(default 0)")
    src.add_argument("--channels", default="auto",
                     help="cubes: bands to keep: 'aviris172' (the paper's 172 AVIRIS channels, located by the "
                          "file's channel list or a 224-band cube), 'all', a list like '11-103,117-151', or "
                          "'auto' (default: aviris172 when the cube is AVIRIS with all of them, else all)")
    src.add_argument("--key", default=None, help="cubes: variable to read from .npz/.mat/.h5 files holding several")
    src.add_argument("--wavelengths", type=Path, default=None,
                     help="cubes: text/CSV file of band centres in nm (one per kept band) for files without them")
    src.add_argument("--bad-bands", choices=BAD_BAND_POLICIES, default="drop",
                     help="cubes: all-zero or NaN/Inf bands: drop them (default, reported), keep them, or stop")

    tiles = p.add_argument_group("tiles and splits")
    tiles.add_argument("--tile", type=_positive_int, default=256,
                       help="HR image side cut from cubes (default 256, the paper's); a scene or split region "
                            "smaller than the tile gives one image of its size cropped to a multiple of the scale")
    tiles.add_argument("--stride", type=_positive_int, default=None, help="step between tiles (default: the tile)")
    tiles.add_argument("--split-by", choices=("auto",) + SPLIT_MODES, default="auto",
                       help="scene: whole scenes per split; region: each scene cut into train/val/test strips "
                            "along its longer side, so neighbouring tiles never straddle splits; none: one split "
                            "'all'. auto (default): scene for several scenes or generated, region for one cube")
    tiles.add_argument("--test-fraction", type=_fraction, default=0.2, help="share of the test split (default 0.2)")
    tiles.add_argument("--val-fraction", type=_fraction, default=0.0, help="share of a val split (default 0)")
    tiles.add_argument("--guard", type=int, default=0, help="region split: pixels left out between strips")

    deg = p.add_argument_group("degradation (defaults: the paper's protocol, see docs/data.md; flags override "
                               "--spec)")
    deg.add_argument("--spec", type=Path, default=None, help="DegradationSpec JSON to start from")
    deg.add_argument("--scale", type=_positive_int, default=None, help="resolution ratio (default 4)")
    deg.add_argument("--psf-sigma", type=float, default=None, help="Gaussian PSF sigma in HR pixels (default 3)")
    deg.add_argument("--psf-sigma-kind", choices=SIGMA_KINDS, default=None,
                     help="whether --psf-sigma is a standard deviation (default) or a variance")
    deg.add_argument("--psf-size", type=int, default=None, help="odd kernel side (default 2*ceil(3*std)+1)")
    deg.add_argument("--boundary", choices=BOUNDARIES, default=None, help="blur boundary rule (default reflect)")
    deg.add_argument("--phase", type=int, default=None,
                     help="decimation phase: LR pixel i = blurred HR pixel i*scale + phase (default 0)")
    deg.add_argument("--srf", type=_srf_name, default=None, metavar="NAME",
                     help="MSI spectral response by name: the paper's boxcars paper_tm_1_4 (default, Landsat TM "
                          "1-4) or paper_tm_1_5_7, or a sensor's measured response (sentinel2a, landsat8_oli, "
                          "...); --list-srf shows them all")
    deg.add_argument("--srf-bands", type=_band_list, default=None, metavar="B,B,...",
                     help="a measured sensor's bands, e.g. 2,3,4,8 for Sentinel-2 (default: its blue, green, red "
                          "and NIR bands)")
    deg.add_argument("--list-srf", action="store_true",
                     help="print the response names and exit; with --source, also which fit its bands")
    deg.add_argument("--srf-ranges", type=_ranges, default=None, help="MSI bands as nm ranges '450-520,770-900'")
    deg.add_argument("--srf-csv", type=Path, default=None,
                     help="CSV of responses: wavelength_nm, then one column per MSI band")
    deg.add_argument("--srf-model", choices=MODELS, default=None, help="band shape for presets/ranges "
                                                                       "(default boxcar)")
    deg.add_argument("--snr", type=float, default=None, help="AWGN SNR in dB (default: no noise)")
    deg.add_argument("--noise-on", choices=NOISE_TARGETS, default=None, help="where the noise goes (default lr)")
    deg.add_argument("--noise-seed", type=int, default=None, help="noise seed (default 0)")
    deg.add_argument("--msi-shift", type=float, nargs=2, metavar=("DY", "DX"), default=None,
                     help="MSI misregistration in HR pixels (content moves down/right)")
    deg.add_argument("--msi-affine", type=float, nargs=4, metavar=("A11", "A12", "A21", "A22"), default=None,
                     help="MSI misregistration: linear map about the image centre, (y, x) order")

    p.add_argument("--snr-threshold", type=float, default=SNR_THRESHOLD_DB,
                   help=f"data-quality summary: flag bands whose estimated SNR is below this many dB (default "
                        f"{SNR_THRESHOLD_DB:g})")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def build_spec(args) -> DegradationSpec:
    fields = DegradationSpec.load(args.spec).to_dict() if args.spec else {}
    overrides = {"scale": args.scale, "psf_sigma": args.psf_sigma, "psf_sigma_kind": args.psf_sigma_kind,
                 "psf_size": args.psf_size, "boundary": args.boundary, "phase": args.phase,
                 "srf_model": args.srf_model, "snr_db": args.snr, "noise_on": args.noise_on,
                 "noise_seed": args.noise_seed, "msi_shift": args.msi_shift,
                 "msi_affine": None if args.msi_affine is None else [args.msi_affine[:2], args.msi_affine[2:]]}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if args.psf_sigma is not None and args.psf_size is None:
        fields.pop("psf_size", None)  # re-derive the kernel from the new sigma
    sources = {"srf_preset": args.srf, "srf_ranges": args.srf_ranges,
               "srf_csv": None if args.srf_csv is None else str(args.srf_csv)}
    if any(v is not None for v in sources.values()):
        fields.update(sources)
        fields["srf_bands"] = args.srf_bands  # None: a sensor's defaults, or no bands for other sources
        if args.srf is not None and is_measured(args.srf) and args.srf_model is None:
            fields["srf_model"] = "boxcar"  # a --spec's gaussian shapes band edges, not a measured curve
    elif args.srf_bands is not None:
        fields["srf_bands"] = args.srf_bands
    preset = fields.get("srf_preset", DEFAULT_SRF)
    if args.srf_bands is not None and (preset is None or not is_measured(preset)):
        raise ValueError(f"--srf-bands: expected --srf naming a measured sensor (see --list-srf), got the "
                         f"response {preset or 'of --srf-ranges/--srf-csv'}")
    return DegradationSpec.from_dict(fields)


def parse_channels(text: str):
    if text in ("auto", "all"):
        return text
    if text == "aviris172":
        return AVIRIS_172_CHANNELS
    try:
        out = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        return tuple(out)
    except ValueError:
        raise ValueError(f"--channels: expected auto, all, aviris172 or a list like '11-103,117-151', "
                         f"got {text!r}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _auto_channels(cubes) -> tuple | None:
    """The paper's 172 channels when every cube is AVIRIS data that holds them all, else None (all bands)."""
    for cube in cubes:
        available = set(cube.channels.tolist()) if cube.channels is not None else (
            set(range(1, AVIRIS_CHANNELS + 1)) if cube.data.shape[2] == AVIRIS_CHANNELS else set())
        if not set(AVIRIS_172_CHANNELS) <= available:
            return None
    return AVIRIS_172_CHANNELS


def _prepare_out(out: Path, overwrite: bool) -> None:
    manifest = out / MANIFEST
    if manifest.exists():
        if not overwrite:
            raise ValueError(f"out: {out} already holds a dataset ({MANIFEST}); pass --overwrite to replace it")
        old = json.loads(manifest.read_text())
        for split, names in old.get("splits", {}).items():
            for name in names:
                (out / split / f"{name}.npz").unlink(missing_ok=True)
        manifest.unlink()
    make_folder(out, "out")


def _fractions(args) -> dict:
    fractions = {"train": 1 - args.test_fraction - args.val_fraction, "val": args.val_fraction,
                 "test": args.test_fraction}
    if fractions["train"] <= 0:
        raise ValueError(f"--test-fraction/--val-fraction: expected a sum below 1, got "
                         f"{args.test_fraction + args.val_fraction}")
    return {k: v for k, v in fractions.items() if v > 0}


def _read_cubes(args):
    """(files, cubes, channels or None, wavelengths or None) of a cube source."""
    path = Path(args.source)
    if not path.exists():
        raise FileNotFoundError(f"--source: {path} does not exist (expected 'generated', a cube file or a folder)")
    files = cube_files(path) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"--source: expected cube files in {path}, found none")
    cubes = [read_cube(f, key=args.key, allow_nonfinite=True) for f in files]
    channels = parse_channels(args.channels)
    channels = _auto_channels(cubes) if channels == "auto" else (None if channels == "all" else channels)
    wavelengths = np.loadtxt(args.wavelengths, delimiter="," if args.wavelengths and
                             args.wavelengths.suffix == ".csv" else None).ravel() if args.wavelengths else None
    return files, cubes, channels, wavelengths


def _response(spec, wavelengths, fwhm=None) -> np.ndarray:
    """The spec's response for these bands; when it is refused, which named responses would fit goes to the
    console first (the error itself names the band that does not)."""
    try:
        return spec.response(wavelengths, fwhm)
    except ValueError:
        print(format_srf_fit(wavelengths, fwhm), file=sys.stderr)
        raise
    except ImportError as exc:  # pyrsr missing: one error line, not a traceback
        raise RuntimeError(str(exc)) from None


def _inspect_scenes(cubes, channels, wavelengths, args, spec) -> tuple[dict, str]:
    """({scene: QualityReport}, the fit lines of the first scene's bands), each scene prepared as the dataset
    will be (channels, wavelengths, bad bands) and dropped again before the next, so one extra copy at most."""
    reports, fit = {}, None
    for i, cube in enumerate(cubes):
        scene = prepare_scene(cube, i, channels=channels, wavelengths=wavelengths, bad_bands=args.bad_bands)
        srf = _response(spec, scene.wavelengths, scene.fwhm)
        fit = fit or format_srf_fit(scene.wavelengths, scene.fwhm)
        name = scene.name if scene.name not in reports else f"{scene.name}_{i}"
        reports[name] = quality_report(scene.data, scene.wavelengths, srf, channels=scene.channels,
                                       snr_threshold_db=args.snr_threshold)
    return reports, fit


def _datasets(args, spec):
    fractions = _fractions(args)
    if args.source == "generated":
        if args.split_by not in ("auto", "scene"):
            raise ValueError(f"--split-by: generated scenes are independent, expected scene or auto, "
                             f"got {args.split_by}")
        wavelengths = default_wavelengths(args.bands)
        _response(spec, wavelengths)
        datasets = generated_datasets(args.count, args.size, spec=spec, bands=args.bands, fractions=fractions,
                                      seed=args.seed, cache=False)
        source = {"kind": "generated", "count": args.count, "size": args.size, "bands": args.bands,
                  "seed": args.seed, "generator": "csakd.data.generate_scene"}
        return datasets, source, "scene", {}, format_srf_fit(wavelengths)
    files, cubes, channels, wavelengths = _read_cubes(args)
    reports, fit = _inspect_scenes(cubes, channels, wavelengths, args, spec)
    split_by = args.split_by if args.split_by != "auto" else ("scene" if len(cubes) > 1 else "region")
    datasets = cube_datasets(cubes, spec=spec, channels=channels, wavelengths=wavelengths, tile=args.tile,
                             stride=args.stride, split_by=split_by, fractions=fractions, seed=args.seed,
                             guard=args.guard, bad_bands=args.bad_bands, cache=False)
    source = {"kind": "files", "channels": "all" if channels is None else list(channels),
              "files": [{"path": str(f.resolve()), "sha256": _sha256(f), "format": c.format,
                         "shape": list(c.data.shape), "dtype": str(c.data.dtype),
                         "metadata": {k: v for k, v in c.metadata.items() if isinstance(v, (str, int, float))}}
                        for f, c in zip(files, cubes)]}
    return datasets, source, split_by, reports, fit


def list_srf(args) -> int:
    """--list-srf: the names; with --source, which of them fit its (first scene's) bands."""
    print(describe_srfs())
    if args.source == "generated":
        print(format_srf_fit(default_wavelengths(args.bands)))
    elif args.source is not None:
        _files, cubes, channels, wavelengths = _read_cubes(args)
        scene = prepare_scene(cubes[0], 0, channels=channels, wavelengths=wavelengths, bad_bands=args.bad_bands)
        print(format_srf_fit(scene.wavelengths, scene.fwhm))
    return 0


# A folder of many cubes would flood the console; every report is in the manifest.
QUALITY_PRINTED = 3


def run(args) -> int:
    from tqdm import tqdm

    from .. import __version__

    if args.list_srf:
        return list_srf(args)
    if args.out is None:
        args.out = Path("runs") / time.strftime("synth-%Y%m%d-%H%M%S")
    spec = build_spec(args)
    datasets, source, split_by, reports, fit = _datasets(args, spec)
    first = next((d for d in datasets.values() if len(d)), None)
    if first is None:
        raise ValueError(f"--tile: no image could be cut from the source with tile {args.tile} and scale "
                         f"{spec.scale}")
    _prepare_out(args.out, args.overwrite)
    wavelengths = np.asarray(first.wavelengths, dtype=np.float64)
    srf = first.samples[0].srf
    provenance = srf_provenance(spec.srf_preset, spec.srf_bands, spec.srf_ranges, spec.srf_csv, spec.srf_model)
    spec.save(args.out / "spec.json")
    write_srf_csv(args.out / "srf.csv", srf, wavelengths, labels=_msi_labels(provenance, srf.shape[0]))

    items, splits = {}, {}
    total = sum(len(d) for d in datasets.values())
    with tqdm(total=total, desc="csakd synth", unit="image", file=sys.stderr, disable=args.no_progress) as bar:
        for split, dataset in datasets.items():
            splits[split] = []
            for index in range(len(dataset)):
                item = dataset[index]
                lo, hi = item["min"], item["max"]
                images = [(item[k].numpy().transpose(1, 2, 0) * (hi - lo) + lo) for k in
                          ("hr_hsi", "lr_hsi", "hr_msi")]
                write_pair(args.out / split / f"{item['name']}.npz", *images)
                sample = dataset.samples[index]
                items[item["name"]] = {"split": split, "window": list(sample.window), "min": lo, "max": hi,
                                       "hr_shape": list(images[0].shape), "lr_shape": list(images[1].shape),
                                       "msi_shape": list(images[2].shape)}
                splits[split].append(item["name"])
                bar.update()

    manifest = {
        "format": FORMAT, "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "csakd_version": __version__,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "source": source, "bands": int(len(wavelengths)), "msi_bands": int(srf.shape[0]), "scale": spec.scale,
        "wavelengths": wavelengths.tolist(), "spec": spec.to_dict(), "spec_description": spec.describe(),
        "srf": provenance,
        "psf_note": f"the PSF sigma {spec.psf_sigma:g} is a {spec.psf_sigma_kind} (std {spec.psf_std:g} HR pixels); "
                    f"the paper's 'sigma = 3' does not say which",
        "normalisation": NORMALISATION_NOTE,
        "tiling": {"tile": args.tile, "stride": args.stride or args.tile, "split_by": split_by,
                   "test_fraction": args.test_fraction, "val_fraction": args.val_fraction, "guard": args.guard},
        "quality": {name: report.to_dict() for name, report in reports.items()},
        "notes": first.info.get("notes", []), "splits": splits, "items": items,
    }
    write_manifest(args.out, manifest)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"csakd synth: wrote {total} images ({counts}) to {args.out}: {len(wavelengths)} bands, "
          f"{srf.shape[0]} MSI bands, scale {spec.scale}; {spec.describe()}")
    print(fit)
    for name, report in list(reports.items())[:QUALITY_PRINTED]:
        print(format_quality(report, name))
    if len(reports) > QUALITY_PRINTED:
        print(f"quality of {len(reports) - QUALITY_PRINTED} more scenes: see {args.out / MANIFEST}")
    for note in manifest["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _msi_labels(provenance: dict, count: int) -> list[str]:
    """srf.csv column names: the sensor's band names for a named response, else msi_band_1..M."""
    if provenance.get("kind") == "measured":
        return [f"{provenance['name']}_band_{b}" for b in provenance["bands"]]
    if provenance.get("kind") == "paper band edges":
        return [f"{provenance['name']}_{b}" for b in provenance["bands"]]
    return [f"msi_band_{m + 1}" for m in range(count)]
