"""The plugin's custom operators (namespace ``quantlinear_cuda``), with fake implementations.

``torch.ops.quantlinear_cuda.wna16_gemm`` is opaque to ``torch.compile`` (no graph break:
its fake implementation gives the output's shape and dtype) and captures in CUDA graphs
(one Triton launch; split-K needs no memset).  The launch configuration, and with it the
GEMV/tensor-core dispatch on M, is chosen inside the op at run time from the tuning table
(:mod:`quantlinear_cuda.tune`).  Registering the ops imports no Triton.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import tune

_kernels = None


def _triton_kernels():
    global _kernels
    if _kernels is None:
        from . import triton_kernels

        _kernels = triton_kernels
    return _kernels


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def run_gemm(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
             bits: int, group_size: int, in_features: int, slab: int, zero_point: float,
             problem: "tune.Problem | None" = None) -> Tensor:
    """Choose the launch configuration for this M (tuning on first use if enabled) and launch."""
    k = _triton_kernels()
    if problem is None:
        problem = tune.Problem(bits, slab, group_size, zeros is not None, dtype_name(x.dtype), qweight.shape[0], in_features)

    def run(cfg: dict) -> Tensor:
        return k.launch(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features, zero_point, cfg)

    cfg = tune.TUNER.get(x.device, problem, x.shape[0], run)
    if cfg["kernel"] == "dqmm" and not tune.dqmm_enabled():
        from .device import device_props

        cfg = tune.default_config(problem, x.shape[0], device_props(x.device), allow_dqmm=False)
    return run(cfg)


@torch.library.custom_op("quantlinear_cuda::wna16_gemm", mutates_args=())
def wna16_gemm(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
               bits: int, group_size: int, in_features: int, slab: int, zero_point: float) -> Tensor:
    """``x @ W^T (+ bias)`` for W in the slab layout (see :mod:`quantlinear_cuda.packing`)."""
    return run_gemm(x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point)


@wna16_gemm.register_fake
def _wna16_gemm_fake(x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == in_features, lambda: f"x has {x.shape[1]} features, expected {in_features}")
    torch._check(qweight.dim() == 2 and qweight.dtype == torch.int32, lambda: "qweight must be a 2-D int32 tensor")
    return x.new_empty((x.shape[0], qweight.shape[0]))
