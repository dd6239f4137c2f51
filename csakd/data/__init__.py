"""Data side of csakd: AVIRIS band tables, a synthetic scene generator, the explicit degradation (Wald's
protocol, docs/data.md), spectral responses (the paper's and measured sensors'), readers for common cube
formats, a data-quality summary, leak-free tiling and fusion datasets."""
from .bands import (AVIRIS_172_CHANNELS, BadBandReport, aviris_172_fwhm, aviris_172_wavelengths, aviris_fwhm,
                    aviris_wavelengths, find_bad_bands, select_bands)
from .dataset import FusionDataset, collate_fusion, crop_flip_rotate, cube_datasets, generated_datasets
from .degradation import (DegradationSpec, add_awgn, apply_response, blur_decimate, degrade, gaussian_psf, warp)
from .generator import default_wavelengths, generate_scene
from .quality import QualityReport, format_quality, quality_report
from .readers import Cube, CubeReadError, read_cube
from .scenes import Scene, prepare_scene
from .spectral_response import PRESETS as SRF_PRESETS
from .spectral_response import SENSORS as SRF_SENSORS
from .spectral_response import format_srf_fit, spectral_response, srf_fit, srf_names, srf_provenance
from .store import read_pair, write_pair
from .tiling import Tile, plan_tiles

__all__ = ["AVIRIS_172_CHANNELS", "BadBandReport", "Cube", "CubeReadError", "DegradationSpec", "FusionDataset",
           "QualityReport", "SRF_PRESETS", "SRF_SENSORS", "Scene", "Tile", "add_awgn", "apply_response",
           "aviris_172_fwhm", "aviris_172_wavelengths", "aviris_fwhm", "aviris_wavelengths", "blur_decimate",
           "collate_fusion", "crop_flip_rotate", "cube_datasets", "default_wavelengths", "degrade", "find_bad_bands",
           "format_quality", "format_srf_fit", "gaussian_psf", "generate_scene", "generated_datasets", "plan_tiles",
           "prepare_scene", "quality_report", "read_cube", "read_pair", "select_bands", "spectral_response",
           "srf_fit", "srf_names", "srf_provenance", "warp", "write_pair"]
