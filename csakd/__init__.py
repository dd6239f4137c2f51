"""csakd: hyperspectral super-resolution by fusing a low-resolution hyperspectral image with a
high-resolution multispectral image (CSAKD, Hsu et al., IEEE TIP 2024)."""
from .models import DTSNet, ModelConfig, Student, StudentLarge, Teacher, TeacherLarge, count_macs, create
from .inference.graphs import compile_for
from .ops import available_backends, get_backend, set_backend

__version__ = "0.1.0"


def load(path, backend: str | None = None):
    """Loads a model saved with `model.save(path)` (safetensors with the config as metadata)."""
    from .io import load_model

    return load_model(path, backend=backend)


__all__ = ["DTSNet", "ModelConfig", "Student", "StudentLarge", "Teacher", "TeacherLarge", "available_backends",
           "compile_for", "count_macs", "create", "get_backend", "load", "set_backend", "__version__"]
