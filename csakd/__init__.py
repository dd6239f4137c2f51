"""csakd: hyperspectral super-resolution by fusing a low-resolution hyperspectral image with a
high-resolution multispectral image (CSAKD, Hsu et al., IEEE TIP 2024).

The public names load on first use, so that `import csakd` (and `csakd --help`) stays fast."""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(("DTSNet", "ModelConfig", "Student", "StudentLarge", "Teacher", "TeacherLarge", "count_macs",
                     "create"), "csakd.models"),
    "compile_for": "csakd.inference.graphs",
    **dict.fromkeys(("available_backends", "get_backend", "set_backend"), "csakd.ops"),
}


def __getattr__(name):
    if name == "export":  # a callable module: csakd.export(model, path, format=...)
        return importlib.import_module("csakd.export")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'csakd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | {"export"})


def load(path, backend: str | None = None):
    """Loads a model saved with `model.save(path)` (safetensors with the config as metadata)."""
    from .io import load_model

    return load_model(path, backend=backend)


__all__ = ["DTSNet", "ModelConfig", "Student", "StudentLarge", "Teacher", "TeacherLarge", "available_backends",
           "compile_for", "count_macs", "create", "export", "get_backend", "load", "set_backend", "__version__"]
