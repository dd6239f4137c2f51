"""Compiling Triton kernels for an H100 (sm_90) on a machine without a GPU, in a process where Triton is not
interpreted (the interpreter accepts code the compiler rejects, e.g. a plain Python global inside @jit), and
reading each kernel's register / local-memory use back from the cubin. Local memory includes the stack frame,
where ptxas puts register spills (cuobjdump's STACK; its LOCAL stays 0 for a spilling Triton kernel). The kernel
tests pass a script that calls `compile_sm90` for their specialisations; `register_usage` runs it and returns one
row per kernel."""
from __future__ import annotations

import os
import subprocess
import sys

_PRELUDE = r"""
import os, re, subprocess, tempfile
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_sm90(fn, sig, consts, attrs, label, **options):
    kernel = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([_CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack, local = re.search(r"REG:(\d+) STACK:(\d+).*?LOCAL:(\d+)", usage).groups()
    print("USAGE", label, regs, int(stack) + int(local), flush=True)
"""


def register_usage(script: str, timeout: int) -> list[tuple[str, int, int]]:
    """Runs `script` (which calls `compile_sm90`) and returns (label, registers, local-memory bytes: spills)
    per kernel."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    run = subprocess.run([sys.executable, "-c", _PRELUDE + script], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split()[1:] for line in run.stdout.split("\n") if line.startswith("USAGE ")]
    return [(label, int(regs), int(local)) for label, regs, local in rows]
