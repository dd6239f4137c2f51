"""Build script: declares the package (with `kernels/` installed as `csakd.kernels`) and, when torch and a
compiler are available, the C++ (and CUDA) CLRB extension `csakd._C`.

CSAKD_BUILD_CUDA=1 forces the CUDA part (fails loudly if impossible), =0 skips it; unset builds it when the
installed torch has CUDA and nvcc is found. Without torch at build time (build with --no-build-isolation) or
without a C++ compiler, the pure-Python package installs and the reference path is used.
"""
import os
import shutil
import sys
from glob import glob

from setuptools import find_packages, setup

packages = find_packages(include=["csakd", "csakd.*"]) + ["csakd.kernels"]
package_dir = {"csakd.kernels": "kernels"}

CPU_SOURCES = ["csrc/clrb/module.cpp", "csrc/clrb/clrb.cpp", "csrc/clrb/clrb_cpu.cpp"]
CUDA_SOURCES = ["csrc/clrb/clrb_cuda.cpp"] + sorted(glob("csrc/clrb/*.cu"))


def note(message: str) -> None:
    print(f"csakd setup: {message}", file=sys.stderr)


def cuda_mode() -> str | None:
    mode = os.environ.get("CSAKD_BUILD_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"CSAKD_BUILD_CUDA: expected 0, 1 or unset, got {mode!r}")
    return mode or None


def extension_build():
    """(ext_modules, cmdclass) building csakd._C, or ([], {}) with a message saying why it is skipped."""
    forced = cuda_mode()
    try:
        from torch.utils import cpp_extension
        import torch
    except ImportError:
        if forced == "1":
            raise SystemExit("CSAKD_BUILD_CUDA=1 but torch is not importable (use --no-build-isolation)")
        note("torch is not importable at build time (use pip's --no-build-isolation); skipping the C++ "
             "extension, the reference path will be used")
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        if forced == "1":
            raise SystemExit("CSAKD_BUILD_CUDA=1 but no C++ compiler was found")
        note("no C++ compiler found; skipping the C++ extension, the reference path will be used")
        return [], {}

    cuda_ok = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and \
        os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    if forced == "1" and not cuda_ok:
        raise SystemExit(f"CSAKD_BUILD_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc was not found "
                         f"(CUDA_HOME={cpp_extension.CUDA_HOME})")
    with_cuda = cuda_ok if forced is None else forced == "1"
    note(f"building csakd._C for CPU{' and CUDA' if with_cuda else ''} with torch {torch.__version__}")

    # Not py_limited_api: the library is tied to the installed torch's C++ ABI anyway, so the limited API gains
    # nothing, and it compiles and links the library unlike other torch extensions (-DPy_LIMITED_API, without
    # libtorch_python, which turns the ops' c10::Error into RuntimeError).
    cxx_flags = ["-O3"]
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            "csakd._C", CPU_SOURCES + CUDA_SOURCES,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]})
    else:
        ext = cpp_extension.CppExtension("csakd._C", CPU_SOURCES, extra_compile_args={"cxx": cxx_flags})

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """A failed build of the extension leaves the pure-Python package installed (unless CUDA was forced)."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as error:  # compiler errors surface as several exception types
                if forced == "1":
                    raise
                note(f"building the C++ extension failed ({type(error).__name__}: {error}); installing without "
                     f"it, the reference path will be used")

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extension_build()
setup(packages=packages, package_dir=package_dir, ext_modules=ext_modules, cmdclass=cmdclass)
