"""A synthetic hyperspectral scene, deterministic from a seed: the default data of csakd (no download).

The scene is a linear mixture: nine endmember spectra (healthy and dry vegetation, two soils, water,
concrete, asphalt, clay-tile and metal roofs), drawn as smooth analytic curves with their characteristic
features (chlorophyll absorption and red edge, leaf-water bands, iron and clay features, water's NIR
darkness), mixed by abundance maps built like a landscape seen at AVIRIS resolution: Voronoi field parcels
with crop-row and fractal texture, hedgerows along parcel borders, a meandering river and a lake with soft
(sub-pixel) shores, straight roads and urban blocks of buildings, all under a smooth illumination field.
Spatial scales are in pixels, not fractions of the image, so a larger image shows more of the same kind of
landscape rather than a stretched one.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .bands import aviris_172_wavelengths

ENDMEMBERS = ("vegetation", "dry_vegetation", "bright_soil", "dark_soil", "water", "concrete", "asphalt",
              "tile_roof", "metal_roof")
VEG, DRY, SOIL, DARK, WATER, CONCRETE, ASPHALT, TILE, METAL = range(len(ENDMEMBERS))

# Default band grid for band counts other than 172 when no wavelengths are given.
RANGE_NM = (400.0, 2500.0)


def _g(lam, mu, sigma):
    return np.exp(-0.5 * ((lam - mu) / sigma) ** 2)


def _s(lam, mu, width):
    return 1.0 / (1.0 + np.exp(-(lam - mu) / width))


def _leaf_water(lam, amount):
    """Transmission of leaf water: bands at 970, 1200, 1450 and 1940 nm and the SWIR continuum."""
    k = (0.08 * _g(lam, 970, 40) + 0.2 * _g(lam, 1200, 50) + 0.9 * _g(lam, 1450, 70) + 2.2 * _g(lam, 1940, 90)
         + 0.45 * _s(lam, 1300, 120) + 0.4 * _s(lam, 2050, 80))
    return np.exp(-amount * k)


def endmember_spectra(wavelengths) -> np.ndarray:
    """Reflectance (0-1) of the nine endmembers at `wavelengths` (nm): array (9, bands)."""
    lam = np.asarray(wavelengths, dtype=np.float64)
    red_edge = _s(lam, 718, 11)
    vis = 0.035 + 0.065 * _g(lam, 550, 32) - 0.012 * _g(lam, 675, 20)
    vegetation = vis * (1 - red_edge) + 0.48 * _leaf_water(lam, 1.0) * red_edge
    dry_vis = 0.05 + 0.17 * _s(lam, 620, 70)
    dry = dry_vis * (1 - _s(lam, 740, 30)) + 0.33 * _leaf_water(lam, 0.35) * _s(lam, 740, 30) \
        - 0.04 * _g(lam, 2100, 40)
    soil_continuum = 0.08 + 0.27 * (1 - np.exp(-(lam - 350) / 450))
    soil_features = 1 - 0.06 * _g(lam, 900, 90) - 0.08 * _g(lam, 1415, 30) - 0.14 * _g(lam, 1920, 45) \
        - 0.12 * _g(lam, 2205, 25)
    bright_soil = soil_continuum * soil_features
    dark_soil = 0.55 * soil_continuum * (1 - 0.15 * _g(lam, 1450, 60) - 0.3 * _g(lam, 1940, 70))
    water = (0.02 + 0.045 * _g(lam, 560, 55) + 0.02 * _g(lam, 470, 45)) * (1 - _s(lam, 720, 25)) + 0.004
    concrete = (0.22 + 0.13 * (1 - np.exp(-(lam - 350) / 300))) * (1 - 0.1 * _g(lam, 2335, 30))
    asphalt = (0.05 + 0.07 * (lam - 400) / 2100) * (1 - 0.15 * _g(lam, 1730, 20) - 0.2 * _g(lam, 2310, 30))
    tile_roof = 0.08 + 0.24 * _s(lam, 580, 18) - 0.06 * _g(lam, 880, 100) - 0.05 * _s(lam, 1800, 300)
    metal_roof = 0.5 - 0.08 * (lam - 400) / 2100 + 0.03 * _g(lam, 500, 80)
    spectra = np.stack([vegetation, dry, bright_soil, dark_soil, water, concrete, asphalt, tile_roof, metal_roof])
    return np.clip(spectra, 0.002, None)


def _smooth_field(rng, shape, length):
    """Zero-mean, unit-std Gaussian random field with correlation length `length` pixels (FFT filtering)."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    spectrum = np.fft.rfft2(rng.standard_normal(shape))
    field = np.fft.irfft2(spectrum * np.exp(-2 * (np.pi * length) ** 2 * (fy ** 2 + fx ** 2)), s=shape)
    return (field - field.mean()) / (field.std() + 1e-12)


def _fractal(rng, shape, length, octaves=4):
    """Sum of smooth fields at halving lengths with halving amplitudes: texture with detail at every scale."""
    total = sum(0.5 ** o * _smooth_field(rng, shape, max(length / 2 ** o, 0.5)) for o in range(octaves))
    return total / np.sqrt(sum(0.25 ** o for o in range(octaves)))


def _soft(distance):
    """Coverage of a pixel whose centre lies `distance` px inside (>0) or outside (<0) an edge."""
    return np.clip(distance + 0.5, 0.0, 1.0)


def _parcels(rng, yy, xx, abundances):
    """Voronoi field parcels with crop rows or fractal texture; hedgerows along their borders."""
    h, w = yy.shape
    count = max(3, int(h * w / 2300))
    seeds = rng.uniform([-8, -8], [h + 8, w + 8], size=(count, 2))
    distances, owner = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    owner = owner[:, 0].reshape(h, w)
    border = (distances[:, 1] - distances[:, 0]).reshape(h, w)

    # Per parcel: dominant cover, its mix with a second cover, crop-row orientation, period and strength.
    kinds = rng.choice([VEG, DRY, SOIL, DARK], size=count, p=[0.4, 0.2, 0.25, 0.15])
    partner = rng.choice([VEG, DRY, SOIL, DARK], size=count)
    purity = rng.uniform(0.55, 0.95, size=count)
    angle = rng.uniform(0, np.pi, size=count)
    period = rng.uniform(3, 9, size=count)
    rows = rng.uniform(0, 0.35, size=count) * (rng.random(count) < 0.6)
    texture = _fractal(rng, (h, w), 6.0)

    phase = (np.cos(angle[owner]) * xx + np.sin(angle[owner]) * yy) * 2 * np.pi / period[owner]
    main = np.clip(purity[owner] + rows[owner] * np.sin(phase) + 0.08 * texture, 0, 1)
    # Each statement touches every pixel once, so fancy-index += is exact (no repeated indices).
    abundances[yy, xx, kinds[owner]] += main
    abundances[yy, xx, partner[owner]] += 1 - main

    hedge = _soft((1.6 - border) * 1.5) * (rng.random(count) < 0.7)[owner] * (_fractal(rng, (h, w), 3.0) > -0.6)
    return owner, hedge


def _blend(abundances, alpha, cover):
    """Paints `cover` (an endmember index or an (H, W, E) mixture) over the scene with coverage `alpha`."""
    abundances *= (1 - alpha)[..., None]
    if isinstance(cover, (int, np.integer)):
        abundances[..., cover] += alpha
    else:
        abundances += alpha[..., None] * cover


def _river(rng, yy, xx):
    h, w = yy.shape
    vertical = rng.random() < 0.5
    along, across, span, extent = (yy, xx, h, w) if vertical else (xx, yy, w, h)
    t = np.arange(span)
    centre = extent * rng.uniform(0.25, 0.75) + sum(
        rng.uniform(4, 14) * np.sin(2 * np.pi * t / rng.uniform(60, 240) + rng.uniform(0, 2 * np.pi))
        for _ in range(3))
    half_width = rng.uniform(2.0, 6.0) * (1 + 0.3 * np.sin(2 * np.pi * t / rng.uniform(80, 200)))
    return _soft(half_width[along] - np.abs(across - centre[along]))


def _roads(rng, yy, xx):
    h, w = yy.shape
    alpha = np.zeros((h, w))
    for _ in range(rng.integers(1, 3 + (h * w) // 60000)):
        theta = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        distance = np.abs(-(yy - y0) * np.cos(theta) + (xx - x0) * np.sin(theta))
        alpha = np.maximum(alpha, _soft(rng.uniform(0.8, 2.2) - distance))
    return alpha


def _buildings(rng, yy, xx, parcel, urban):
    """Blocks of buildings (concrete, tile or metal roofs) on asphalt/concrete ground in urban parcels."""
    h, w = yy.shape
    theta = rng.uniform(0, np.pi / 2)
    u = np.cos(theta) * xx + np.sin(theta) * yy
    v = -np.sin(theta) * xx + np.cos(theta) * yy
    pu, pv = rng.uniform(9, 16), rng.uniform(9, 16)
    bu, bv = pu * rng.uniform(0.45, 0.75), pv * rng.uniform(0.45, 0.75)
    inside = _soft(np.minimum(np.minimum(u % pu, bu - u % pu), np.minimum(v % pv, bv - v % pv)))
    cell = (np.floor(u / pu).astype(np.int64) * 7919 + np.floor(v / pv).astype(np.int64)) % 1021
    roof = np.array([CONCRETE, TILE, METAL, TILE])[rng.integers(0, 4, size=1021)][cell]
    mixture = np.zeros((h, w, len(ENDMEMBERS)))
    ground = np.where(rng.random(parcel.max() + 1) < 0.5, ASPHALT, CONCRETE)[parcel]
    mixture[yy, xx, ground] = 1 - inside
    mixture[yy, xx, roof] += inside
    return urban[parcel].astype(np.float64), mixture


def default_wavelengths(bands: int = 172) -> np.ndarray:
    """The AVIRIS 172-band grid of the paper for 172 bands, an evenly spaced subset of it for fewer, an even
    400-2500 nm grid for more."""
    if not isinstance(bands, (int, np.integer)) or bands < 1:
        raise ValueError(f"bands: expected a positive integer, got {bands!r}")
    grid = aviris_172_wavelengths()
    if bands <= len(grid):
        return grid[np.round(np.linspace(0, len(grid) - 1, bands)).astype(int)]
    return np.linspace(*RANGE_NM, bands)


def generate_scene(height: int, width: int, bands: int = 172, seed: int = 0, wavelengths=None) -> np.ndarray:
    """A realistic synthetic reflectance cube (height, width, bands), float32, values about 0-0.6.

    `wavelengths` (nm, one per band) defaults to `default_wavelengths(bands)`. The same (height, width, seed)
    gives the same landscape whatever the band grid.
    """
    for name, value in (("height", height), ("width", width), ("bands", bands)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    wavelengths = default_wavelengths(bands) if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
    if wavelengths.shape != (bands,) or not np.all(np.isfinite(wavelengths)) or wavelengths.min() <= 0:
        raise ValueError(f"wavelengths: expected {bands} positive finite values in nm (one per band), got "
                         f"shape {wavelengths.shape}")

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    abundances = np.zeros((height, width, len(ENDMEMBERS)))
    parcel, hedge = _parcels(rng, yy, xx, abundances)
    urban = rng.random(parcel.max() + 1) < 0.15
    alpha, mixture = _buildings(rng, yy, xx, parcel, urban)
    _blend(abundances, alpha, mixture)
    _blend(abundances, hedge * (1 - alpha), VEG)
    _blend(abundances, _roads(rng, yy, xx), ASPHALT)
    lake = _soft(4 * (_smooth_field(rng, (height, width), 25.0) - 2.0))
    water = np.maximum(lake, _river(rng, yy, xx) if rng.random() < 0.8 else 0.0)
    _blend(abundances, water, WATER)

    illumination = 1 + 0.07 * _fractal(rng, (height, width), 20.0, octaves=3)
    spectra = endmember_spectra(wavelengths).astype(np.float32)
    cube = (abundances * illumination[..., None]).astype(np.float32).reshape(-1, len(ENDMEMBERS)) @ spectra
    return cube.reshape(height, width, bands)
