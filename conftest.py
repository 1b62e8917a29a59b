"""Repository-wide pytest setup, loaded before any test module.

Triton decides at import time whether ``@triton.jit`` functions are interpreted, and many
things import it early (``torch.compile`` does).  On a machine without a CUDA GPU every Triton
kernel can only run under the interpreter, so switch it on for the whole session before
anything imports Triton; on a GPU machine leave it off so kernels compile.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
