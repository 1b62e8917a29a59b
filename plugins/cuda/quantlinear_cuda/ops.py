"""The plugin's custom operator ``torch.ops.quantlinear_cuda.wna16_gemm``, with a fake implementation.

The op and its dispatch are the shared ones (:mod:`quantlinear_triton.ops`), bound to this
plugin's tuner (:mod:`quantlinear_cuda.tune`).  Registering the op imports no Triton.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlinear_triton import ops as _shared
from quantlinear_triton.ops import dtype_name  # noqa: F401

from . import tune


def run_gemm(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
             bits: int, group_size: int, in_features: int, slab: int, zero_point: float,
             problem: "tune.Problem | None" = None, plans: dict | None = None) -> Tensor:
    """Choose the launch configuration for this M (tuning on first use if enabled) and launch (``plans``: the layer's
    launch plans, :func:`quantlinear_triton.ops.run_gemm`)."""
    return _shared.run_gemm(tune.TUNER, x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point, problem,
                            plans)


wna16_gemm = _shared.define_wna16_gemm("quantlinear_cuda::wna16_gemm", run_gemm)
OP = torch.ops.quantlinear_cuda.wna16_gemm
