"""Inference: the prepared path (weights cast, folded and padded once), CUDA graphs for fixed shapes, and tiled
fusion of scenes of any size."""
