"""Wald's protocol made explicit (docs/data.md): HR-HSI -> (LR-HSI, HR-MSI) from a serialisable `DegradationSpec`.

LR-HSI: Gaussian blur (PSF), then decimation by `scale` at a stated phase, then optional AWGN.
HR-MSI: spectral response (M x C, rows sum to 1), then optional misregistration, then optional AWGN.
Blur and decimation are one linear map per axis, `lr = D_h @ x @ D_w^T`, with the boundary rule folded into
the (h x H) and (w x W) matrices: exact for every boundary mode, no padding copies, and two GEMMs that run as
well on a GPU as on a CPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._validate import check_float_tensor
from .spectral_response import DEFAULT_SRF, MODELS, check_srf, spectral_response

SIGMA_KINDS = ("std", "variance")
# Names as torch.nn.functional.pad; "symmetric" repeats the edge pixel (MATLAB 'symmetric', scipy 'reflect'),
# "reflect" does not (scipy 'mirror').
BOUNDARIES = ("reflect", "symmetric", "replicate", "circular", "zeros")
NOISE_TARGETS = ("lr", "msi", "both")
FORMAT_VERSION = 1


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class DegradationSpec:
    """Every choice of the simulated acquisition. Defaults follow the paper (docs/data.md): scale 4, Gaussian PSF
    with standard deviation 3 HR pixels (the paper's "sigma = 3" does not say std or variance: std is our
    reading, stated in every saved spec), Landsat TM bands 1-4 as boxcars, no noise, no misregistration.

    psf_size: odd kernel side; None picks 2*ceil(3*std)+1 (19 for std 3).
    phase: decimation offset: LR pixel i is blurred HR pixel i*scale + phase (0 = `x[::scale]`).
    srf_*: exactly one of srf_preset (a name of `spectral_response.srf_names()`; former names are stored as
    their new ones) / srf_ranges (nm pairs) / srf_csv (file), shaped by srf_model. srf_bands: a measured
    sensor's bands (its defaults, spelled out, when not given); None for the other sources.
    snr_db / noise_on / noise_seed: AWGN on "lr", "msi" or "both", power over the whole tensor (docs/data.md).
    msi_shift: (dy, dx) in HR pixels, content moves down/right; msi_affine: 2x2 linear part about the image
    centre (identity = none). Applied to the MSI only, modelling misregistration between the sensors.
    """

    scale: int = 4
    psf_sigma: float = 3.0
    psf_sigma_kind: str = "std"
    psf_size: int | None = None
    boundary: str = "reflect"
    phase: int = 0
    srf_preset: str | None = DEFAULT_SRF
    srf_bands: tuple | None = None
    srf_ranges: tuple | None = None
    srf_csv: str | None = None
    srf_model: str = "boxcar"
    snr_db: float | None = None
    noise_on: str = "lr"
    noise_seed: int = 0
    msi_shift: tuple = (0.0, 0.0)
    msi_affine: tuple = ((1.0, 0.0), (0.0, 1.0))
    version: int = field(default=FORMAT_VERSION)

    def __post_init__(self):
        def set_(name, value):  # the dataclass is frozen; normalised values are stored once, here
            object.__setattr__(self, name, value)

        if not isinstance(self.scale, (int, np.integer)) or isinstance(self.scale, bool) or self.scale < 1:
            raise ValueError(f"scale: expected a positive integer, got {self.scale!r}")
        if not _is_number(self.psf_sigma) or self.psf_sigma < 0:
            raise ValueError(f"psf_sigma: expected a finite number >= 0, got {self.psf_sigma!r}")
        if self.psf_sigma_kind not in SIGMA_KINDS:
            raise ValueError(f"psf_sigma_kind: expected one of {SIGMA_KINDS}, got {self.psf_sigma_kind!r}")
        if self.psf_size is None:
            set_("psf_size", 2 * math.ceil(3 * self.psf_std) + 1)
        elif not isinstance(self.psf_size, (int, np.integer)) or self.psf_size < 1 or self.psf_size % 2 == 0:
            raise ValueError(f"psf_size: expected an odd positive integer or None, got {self.psf_size!r}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {self.boundary!r}")
        if not isinstance(self.phase, (int, np.integer)) or not 0 <= self.phase < self.scale:
            raise ValueError(f"phase: expected an integer in 0..{self.scale - 1} (scale {self.scale}), "
                             f"got {self.phase!r}")
        sources = [n for n in ("srf_preset", "srf_ranges", "srf_csv") if getattr(self, n) is not None]
        if len(sources) != 1:
            raise ValueError(f"srf_preset/srf_ranges/srf_csv: expected exactly one, got {sources or 'none'}")
        if self.srf_preset is not None:
            name, bands = check_srf(self.srf_preset, self.srf_bands, self.srf_model, "srf_preset", "srf_bands",
                                    "srf_model")
            set_("srf_preset", name)
            set_("srf_bands", bands)
        elif self.srf_bands is not None:
            raise ValueError(f"srf_bands: expected None without srf_preset (bands choose a measured sensor's "
                             f"bands), got {self.srf_bands!r}")
        if self.srf_ranges is not None:
            try:
                ranges = tuple((float(lo), float(hi)) for lo, hi in self.srf_ranges)
            except (TypeError, ValueError):
                ranges = ()
            if not ranges or any(not (0 < lo < hi < math.inf) for lo, hi in ranges):
                raise ValueError(f"srf_ranges: expected (low_nm, high_nm) pairs with 0 < low < high, "
                                 f"got {self.srf_ranges!r}")
            set_("srf_ranges", ranges)
        if self.srf_csv is not None:
            set_("srf_csv", str(self.srf_csv))
        if self.srf_model not in MODELS:
            raise ValueError(f"srf_model: expected one of {MODELS}, got {self.srf_model!r}")
        if self.snr_db is not None and not _is_number(self.snr_db):
            raise ValueError(f"snr_db: expected a finite number (dB) or None, got {self.snr_db!r}")
        if self.noise_on not in NOISE_TARGETS:
            raise ValueError(f"noise_on: expected one of {NOISE_TARGETS}, got {self.noise_on!r}")
        if not isinstance(self.noise_seed, (int, np.integer)) or self.noise_seed < 0:
            raise ValueError(f"noise_seed: expected a non-negative integer, got {self.noise_seed!r}")
        shift = tuple(self.msi_shift) if isinstance(self.msi_shift, (list, tuple)) else ()
        if len(shift) != 2 or not all(_is_number(v) for v in shift):
            raise ValueError(f"msi_shift: expected two finite numbers (dy, dx) in HR pixels, got {self.msi_shift!r}")
        set_("msi_shift", tuple(float(v) for v in shift))
        try:
            affine = np.array(self.msi_affine, dtype=np.float64)
        except (TypeError, ValueError):
            affine = np.zeros(0)
        if affine.shape != (2, 2) or not np.all(np.isfinite(affine)) or np.linalg.det(affine) <= 0:
            raise ValueError(f"msi_affine: expected a 2x2 matrix with positive determinant (identity = none), "
                             f"got {self.msi_affine!r}")
        set_("msi_affine", tuple(tuple(float(v) for v in row) for row in affine))
        if self.version != FORMAT_VERSION:
            raise ValueError(f"version: expected {FORMAT_VERSION}, got {self.version!r}")

    @property
    def psf_std(self) -> float:
        """The PSF's standard deviation in HR pixels, whichever way psf_sigma was given."""
        return float(self.psf_sigma if self.psf_sigma_kind == "std" else math.sqrt(self.psf_sigma))

    @property
    def misregistered(self) -> bool:
        return self.msi_shift != (0.0, 0.0) or self.msi_affine != ((1.0, 0.0), (0.0, 1.0))

    def response(self, wavelengths, fwhm=None) -> np.ndarray:
        """The (M, C) spectral response matrix for these HSI band centres."""
        return spectral_response(self.srf_preset, wavelengths, fwhm=fwhm, model=self.srf_model,
                                 ranges=self.srf_ranges, csv_path=self.srf_csv, bands=self.srf_bands)

    def describe(self) -> str:
        srf = self.srf_preset or (f"ranges {self.srf_ranges}" if self.srf_ranges else f"CSV {self.srf_csv}")
        shape = self.srf_model
        if self.srf_bands is not None:
            srf, shape = f"{srf} bands {','.join(self.srf_bands)}", "measured"
        noise = f"AWGN {self.snr_db:g} dB on {self.noise_on} (seed {self.noise_seed})" if self.snr_db is not None \
            else "no noise"
        return (f"scale {self.scale}, Gaussian PSF std {self.psf_std:g} HR px ({self.psf_sigma_kind} "
                f"{self.psf_sigma:g} given), {self.psf_size}x{self.psf_size}, boundary {self.boundary}, "
                f"phase {self.phase}; SRF {srf} ({shape}); {noise}; MSI shift {self.msi_shift}, "
                f"affine {self.msi_affine}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["msi_shift"] = list(self.msi_shift)
        out["msi_affine"] = [list(r) for r in self.msi_affine]
        if self.srf_ranges is not None:
            out["srf_ranges"] = [list(r) for r in self.srf_ranges]
        if self.srf_bands is None:
            del out["srf_bands"]  # so that a spec of the paper's protocol reads as it did before srf_bands
        else:
            out["srf_bands"] = list(self.srf_bands)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "DegradationSpec":
        if not isinstance(data, dict):
            raise ValueError(f"data: expected a dict of DegradationSpec fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"data: expected only DegradationSpec fields {sorted(names)}, got unknown {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "DegradationSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"text: expected a JSON object of DegradationSpec fields, got invalid JSON ({exc})") \
                from None
        return cls.from_dict(data)

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path) -> "DegradationSpec":
        return cls.from_json(Path(path).read_text())


def gaussian_kernel_1d(std: float, size: int) -> np.ndarray:
    """Sampled 1-D Gaussian of `size` taps (odd), normalised to sum 1; std 0 gives the identity tap."""
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected an odd positive integer, got {size!r}")
    if not _is_number(std) or std < 0:
        raise ValueError(f"std: expected a finite number >= 0, got {std!r}")
    t = np.arange(size, dtype=np.float64) - size // 2
    k = np.exp(-0.5 * (t / std) ** 2) if std > 0 else (t == 0).astype(np.float64)
    return k / k.sum()


def gaussian_psf(sigma: float = 3.0, size: int | None = None, kind: str = "std") -> np.ndarray:
    """The 2-D Gaussian PSF (size x size, sums to 1); `kind` says whether `sigma` is a std or a variance."""
    spec = DegradationSpec(psf_sigma=sigma, psf_sigma_kind=kind, psf_size=size)
    k = gaussian_kernel_1d(spec.psf_std, spec.psf_size)
    return np.outer(k, k)


def _boundary_index(i: np.ndarray, length: int, boundary: str) -> np.ndarray:
    """Maps positions outside [0, length) onto the image; -1 marks "zero" (for boundary 'zeros')."""
    if boundary == "replicate":
        return np.clip(i, 0, length - 1)
    if boundary == "circular":
        return np.mod(i, length)
    if boundary == "zeros":
        return np.where((i >= 0) & (i < length), i, -1)
    if boundary == "symmetric":
        m = np.mod(i, 2 * length)
        return np.where(m >= length, 2 * length - 1 - m, m)
    if length == 1:  # reflect
        return np.zeros_like(i)
    m = np.mod(i, 2 * length - 2)
    return np.where(m >= length, 2 * length - 2 - m, m)


@lru_cache(maxsize=64)
def blur_decimate_matrix(length: int, std: float, size: int, scale: int, phase: int,
                         boundary: str) -> np.ndarray:
    """(length // scale, length) matrix: 1-D Gaussian blur with the boundary rule, then every `scale`-th
    sample from `phase`. Read-only (cached)."""
    kernel = gaussian_kernel_1d(std, size)
    outputs = length // scale
    centres = np.arange(outputs) * scale + phase
    taps = centres[:, None] + np.arange(size)[None, :] - size // 2
    cols = _boundary_index(taps, length, boundary)
    rows = np.broadcast_to(np.arange(outputs)[:, None], cols.shape)
    weights = np.broadcast_to(kernel, cols.shape)
    keep = cols >= 0
    matrix = np.zeros((outputs, length))
    np.add.at(matrix, (rows[keep], cols[keep]), weights[keep])
    matrix.setflags(write=False)
    return matrix


def _batched(name: str, x) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W) view of a 3-D or 4-D float tensor, checked finite. A NaN or Inf makes the sum non-finite,
    and a sum is 20x cheaper than isfinite() on a large cube; only then is every element checked (the sum
    may merely have overflowed)."""
    unbatched = isinstance(x, torch.Tensor) and x.ndim == 3
    check_float_tensor(name, x, ndim=None if unbatched else 4, finite=False)
    if not bool(torch.isfinite(x.sum())):
        check_float_tensor(name, x)
    return (x[None], True) if unbatched else (x, False)


def blur_decimate(hr_hsi: torch.Tensor, spec: DegradationSpec) -> torch.Tensor:
    """Blur with the spec's PSF and decimate by its scale: (N, C, H, W) -> (N, C, H/s, W/s)."""
    h, w = hr_hsi.shape[-2:]
    if h % spec.scale or w % spec.scale:
        raise ValueError(f"hr_hsi: expected height and width divisible by scale {spec.scale}, got {(h, w)}")
    like = {"dtype": hr_hsi.dtype, "device": hr_hsi.device}
    dh = torch.tensor(blur_decimate_matrix(h, spec.psf_std, spec.psf_size, spec.scale, spec.phase,
                                              spec.boundary), **like)
    dw = torch.tensor(blur_decimate_matrix(w, spec.psf_std, spec.psf_size, spec.scale, spec.phase,
                                              spec.boundary), **like)
    return torch.matmul(dh, torch.matmul(hr_hsi, dw.T))


def apply_response(hr_hsi: torch.Tensor, srf) -> torch.Tensor:
    """(N, C, H, W) -> (N, M, H, W) with an (M, C) response matrix."""
    n, c, h, w = hr_hsi.shape
    srf = torch.as_tensor(np.asarray(srf) if not isinstance(srf, torch.Tensor) else srf,
                          dtype=hr_hsi.dtype, device=hr_hsi.device)
    if srf.ndim != 2 or srf.shape[1] != c:
        raise ValueError(f"srf: expected an (M, {c}) matrix (one column per HSI band), got {tuple(srf.shape)}")
    return torch.matmul(srf, hr_hsi.reshape(n, c, h * w)).reshape(n, srf.shape[0], h, w)


def warp(x: torch.Tensor, shift=(0.0, 0.0), affine=((1.0, 0.0), (0.0, 1.0))) -> torch.Tensor:
    """Moves the content of (N, C, H, W) images: a point p goes to A (p - c) + c + shift, c the image centre,
    shift (dy, dx) in pixels. Bicubic resampling, reflected at the borders."""
    n, _, h, w = x.shape
    a_inv = np.linalg.inv(np.array(affine, dtype=np.float64)[::-1, ::-1])  # (y, x) -> grid_sample's (x, y)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    # Output pixel q samples the input at a_inv (q - centre - shift) + centre, in pixels; conjugated by the
    # pixel -> normalised map of align_corners=False (u = (2p + 1) / L - 1) it is affine_grid's theta.
    pixel_map = np.eye(3)
    pixel_map[:2, :2] = a_inv
    pixel_map[:2, 2] = centre - a_inv @ (centre + np.array([shift[1], shift[0]]))
    to_norm = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    theta = (to_norm @ pixel_map @ np.linalg.inv(to_norm))[:2]
    grid = F.affine_grid(torch.as_tensor(theta, dtype=x.dtype, device=x.device).expand(n, 2, 3), list(x.shape),
                         align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)


def add_awgn(x: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`x + randn * sqrt(mean(x^2) / 10^(snr/10))`, the power measured over the whole tensor (docs/data.md).
    Noise is drawn in float32 on the generator's device (CPU without one), so a seed gives the same draw
    whatever the dtype or device of `x`."""
    check_float_tensor("x", x)
    if not _is_number(snr_db):
        raise ValueError(f"snr_db: expected a finite number (dB), got {snr_db!r}")
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=device)
    sigma = torch.sqrt(x.detach().float().square().mean() / 10 ** (snr_db / 10))
    return x + (noise.to(x.device) * sigma).to(x.dtype)


def degrade(hr_hsi: torch.Tensor, spec: DegradationSpec, wavelengths, fwhm=None, srf=None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr_hsi, hr_msi) from hr_hsi (N, C, H, W) or (C, H, W), on hr_hsi's device and dtype (float16 and
    bfloat16 inputs are processed in float32).

    `wavelengths` (and optionally `fwhm`) are the C band centres in nm, from which the spec's spectral
    response is built; `srf` (M, C) overrides it. Noise uses `generator`, else one seeded with
    spec.noise_seed (drawn on the CPU, so a seed gives the same data on any device; pass a CUDA generator
    to draw on the GPU); with noise on both, the LR-HSI draw comes first.
    """
    if not isinstance(spec, DegradationSpec):
        raise ValueError(f"spec: expected a DegradationSpec, got {type(spec).__name__}")
    x, unbatched = _batched("hr_hsi", hr_hsi)
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        # Half-precision operator weights would break "rows sum to 1" by ~0.4% and resample grids by up to half
        # a pixel: compute in float32, round the results once.
        x = x.float()
    if srf is None:
        wl = np.asarray(wavelengths, dtype=np.float64) if wavelengths is not None else None
        if wl is None or wl.shape != (x.shape[1],):
            raise ValueError(f"wavelengths: expected {x.shape[1]} band centres in nm (one per channel of hr_hsi), "
                             f"got {None if wl is None else wl.shape}")
        srf = spec.response(wl, fwhm)
    lr = blur_decimate(x, spec)
    msi = apply_response(x, srf)
    if spec.misregistered:
        msi = warp(msi, spec.msi_shift, spec.msi_affine)
    if spec.snr_db is not None:
        gen = generator if generator is not None else torch.Generator().manual_seed(spec.noise_seed)
        if spec.noise_on in ("lr", "both"):
            lr = add_awgn(lr, spec.snr_db, gen)
        if spec.noise_on in ("msi", "both"):
            msi = add_awgn(msi, spec.snr_db, gen)
    lr, msi = lr.to(dtype), msi.to(dtype)
    return (lr[0], msi[0]) if unbatched else (lr, msi)
