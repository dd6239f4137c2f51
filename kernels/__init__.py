"""Fused Triton kernels of csakd, installed as `csakd.kernels`.

Each module holds its kernels, their launcher, the `torch.library` custom op and its autograd; the dispatch in
`csakd.ops` decides when they run. On a machine without a GPU they run under `TRITON_INTERPRET=1` (tests).
"""
