#!/usr/bin/env bash
# Compiles every CUDA source under csrc/ with nvcc for Hopper (sm_90) into a temporary folder, so that CI on a
# machine whose torch has no CUDA still catches compile errors in the kernels (the .cu files include no torch
# headers), then syntax-checks the C++ side that calls them (clrb_cuda.cpp) against torch's headers. Exits
# non-zero on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "compile_cuda: nvcc not found" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mapfile -t sources < <(find csrc -name '*.cu' | sort)
if [ "${#sources[@]}" -eq 0 ]; then
    echo "compile_cuda: no .cu files under csrc/" >&2
    exit 1
fi
for src in "${sources[@]}"; do
    echo "compile_cuda: $src"
    "$NVCC" -arch=sm_90 -std=c++17 -O3 -Werror all-warnings -c "$src" -o "$tmp/$(basename "$src" .cu).o"
done
echo "compile_cuda: ${#sources[@]} file(s) compiled for sm_90"

# The CPU torch wheel ships c10/cuda headers but not the one CMake generates for CUDA builds; an empty stand-in
# is enough for a syntax check.
if python -c "import torch" 2>/dev/null; then
    mkdir -p "$tmp/include/c10/cuda/impl"
    echo '#pragma once' > "$tmp/include/c10/cuda/impl/cuda_cmake_macros.h"
    mapfile -t includes < <(python -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
for path in include_paths() + [sysconfig.get_paths()['include']]:
    print('-isystem' + path)")
    cuda_include="${CUDA_HOME:-/usr/local/cuda}/include"
    for src in $(find csrc -name '*_cuda.cpp' | sort); do
        echo "compile_cuda: syntax check of $src"
        "${CXX:-c++}" -std=c++20 -Wall -Werror -fsyntax-only -I"$tmp/include" "${includes[@]}" -I"$cuda_include" "$src"
    done
fi
