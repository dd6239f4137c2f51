"""Data side of csakd: AVIRIS band tables, a synthetic scene generator, the explicit degradation (Wald's
protocol, SPEC §6), readers for common cube formats, leak-free tiling and fusion datasets."""
from .bands import (AVIRIS_172_CHANNELS, BadBandReport, aviris_172_fwhm, aviris_172_wavelengths, aviris_fwhm,
                    aviris_wavelengths, find_bad_bands, select_bands)
from .dataset import FusionDataset, collate_fusion, crop_flip_rotate, cube_datasets, generated_datasets
from .degradation import (DegradationSpec, add_awgn, apply_response, blur_decimate, degrade, gaussian_psf, warp)
from .generator import default_wavelengths, generate_scene
from .readers import Cube, CubeReadError, read_cube
from .scenes import Scene, prepare_scene
from .spectral_response import PRESETS as SRF_PRESETS
from .spectral_response import spectral_response
from .store import read_pair, write_pair
from .tiling import Tile, plan_tiles

__all__ = ["AVIRIS_172_CHANNELS", "BadBandReport", "Cube", "CubeReadError", "DegradationSpec", "FusionDataset",
           "SRF_PRESETS", "Scene", "Tile", "add_awgn", "apply_response", "aviris_172_fwhm", "aviris_172_wavelengths",
           "aviris_fwhm", "aviris_wavelengths", "blur_decimate", "collate_fusion", "crop_flip_rotate",
           "cube_datasets", "default_wavelengths", "degrade", "find_bad_bands", "gaussian_psf", "generate_scene",
           "generated_datasets", "plan_tiles", "prepare_scene", "read_cube", "read_pair", "select_bands",
           "spectral_response", "warp", "write_pair"]
