"""The plugin's custom operator ``torch.ops.quantlinear_rocm.wna16_gemm`` (the shared op, this plugin's tuner)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlinear_triton import ops as _shared

from . import tune


def run_gemm(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
             bits: int, group_size: int, in_features: int, slab: int, zero_point: float, problem=None,
             plans: dict | None = None) -> Tensor:
    return _shared.run_gemm(tune.TUNER, x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point, problem,
                            plans)


wna16_gemm = _shared.define_wna16_gemm("quantlinear_rocm::wna16_gemm", run_gemm)
OP = torch.ops.quantlinear_rocm.wna16_gemm
