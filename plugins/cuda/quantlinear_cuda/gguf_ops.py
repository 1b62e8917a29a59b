"""The plugin's GGUF custom operator ``torch.ops.quantlinear_cuda.gguf_gemm`` and its tuner.

The op and its per-call path are the shared ones (:mod:`quantlinear_triton.gguf_ops`); this module
binds them to the CUDA GGUF space (:class:`quantlinear_triton.gguf_tune.GGUFSpace` over this
plugin's device properties: SM count).  Switches: ``QUANTLINEAR_CUDA_GGUF_TUNE=1`` tunes on first
use (off by default), ``QUANTLINEAR_CUDA_GGUF_TUNE_CACHE`` moves or disables the user cache,
``QUANTLINEAR_CUDA_GGUF_DQMM=0`` forbids dequantize-then-cuBLAS.  Registering the op imports no
Triton.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from quantlinear_triton import gguf_ops as _shared
from quantlinear_triton.gguf_tune import GGUFProblem, GGUFSpace, make_tuner

from . import device as _device

SPACE = GGUFSpace("cuda_gguf", Path(__file__).parent / "tuned", lambda d: _device.device_props(d), units=lambda p: p.sm_count)
TUNER = make_tuner(SPACE)


def run_gemm(x: Tensor, qs: Tensor, qh: Optional[Tensor], sm: Tensor, bm: Optional[Tensor], bias: Optional[Tensor], qtype: str,
             problem: GGUFProblem | None = None) -> Tensor:
    """Choose the launch configuration for this M (tuning on first use if enabled) and launch."""
    return _shared.run_gemm(TUNER, x, qs, qh, sm, bm, bias, qtype, problem)


gguf_gemm = _shared.define_gguf_gemm("quantlinear_cuda::gguf_gemm", run_gemm)
OP = torch.ops.quantlinear_cuda.gguf_gemm
