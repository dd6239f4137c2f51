"""Data side of csakd: AVIRIS band tables, a synthetic scene generator, the explicit degradation (Wald's
protocol, SPEC §6), readers for common cube formats and fusion datasets."""
from .bands import (AVIRIS_172_CHANNELS, BadBandReport, aviris_172_fwhm, aviris_172_wavelengths, aviris_fwhm,
                    aviris_wavelengths, find_bad_bands, select_bands)
from .degradation import (DegradationSpec, add_awgn, apply_response, blur_decimate, degrade, gaussian_psf, warp)
from .generator import generate_scene
from .readers import Cube, CubeReadError, read_cube
from .spectral_response import PRESETS as SRF_PRESETS
from .spectral_response import spectral_response

__all__ = ["AVIRIS_172_CHANNELS", "BadBandReport", "Cube", "CubeReadError", "read_cube", "DegradationSpec", "SRF_PRESETS", "add_awgn", "apply_response",
           "aviris_172_fwhm", "aviris_172_wavelengths", "aviris_fwhm", "aviris_wavelengths", "blur_decimate",
           "degrade", "find_bad_bands", "gaussian_psf", "generate_scene", "select_bands", "spectral_response",
           "warp"]
