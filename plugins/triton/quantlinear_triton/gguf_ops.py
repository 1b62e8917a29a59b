"""The per-call dispatch of the GGUF Triton kernels and a factory for a plugin's ``gguf_gemm`` custom op.

Each GPU plugin registers its own op (``torch.ops.quantlinear_cuda.gguf_gemm``) through
:func:`define_gguf_gemm`, bound to its own tuner.  The op is opaque to ``torch.compile`` (no graph
break: its fake implementation gives the output's shape and dtype) and captures in CUDA graphs
(one Triton launch; split-K needs no memset).  The GEMV / tensor-core / dequantize-then-BLAS
choice is made inside the op, per call, from the tuner.  Registering an op imports no Triton.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from . import tune
from .gguf_packing import CODES, SUPPORTED
from .gguf_tune import GGUFProblem
from .ops import dtype_name

_kernels = None


def gguf_kernels():
    """:mod:`quantlinear_triton.gguf_kernels`, imported (with Triton) on first use."""
    global _kernels
    if _kernels is None:
        from . import gguf_kernels

        _kernels = gguf_kernels
    return _kernels


def run_gemm(tuner: "tune.Tuner", x: Tensor, qs: Tensor, qh: Optional[Tensor], sm: Tensor, bm: Optional[Tensor],
             bias: Optional[Tensor], qtype: str, problem: GGUFProblem | None = None) -> Tensor:
    """Choose the launch configuration for this M from ``tuner`` (tuning on first use if enabled) and launch."""
    k = gguf_kernels()
    if problem is None:
        problem = GGUFProblem(qtype, dtype_name(x.dtype), qs.shape[0], x.shape[1])

    def run(cfg: dict) -> Tensor:
        return k.launch(x, qs, qh, sm, bm, bias, qtype, cfg)

    cfg = tuner.get(x.device, problem, x.shape[0], run)
    if cfg["kernel"] == "dqmm" and not tuner.dqmm_enabled():
        cfg = tuner.default_config(problem, x.shape[0], tuner.device_props(x.device), allow_dqmm=False)
    return run(cfg)


def define_gguf_gemm(qualname: str, run: Callable[..., Tensor]):
    """Register ``qualname`` (``"<namespace>::gguf_gemm"``) as a custom op running ``run`` (with a fake)."""

    def gguf_gemm(x: Tensor, qs: Tensor, qh: Optional[Tensor], sm: Tensor, bm: Optional[Tensor], bias: Optional[Tensor],
                  qtype: str) -> Tensor:
        return run(x, qs, qh, sm, bm, bias, qtype)

    gguf_gemm.__doc__ = "``x @ W^T (+ bias)`` for W in GGUF's sub-block layout (see :mod:`quantlinear_triton.gguf_packing`)."
    op = torch.library.custom_op(qualname, mutates_args=())(gguf_gemm)

    @op.register_fake
    def _gguf_gemm_fake(x, qs, qh, sm, bm, bias, qtype):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        torch._check(qtype in SUPPORTED, lambda: f"GGUF type {qtype} has no Triton kernel (supported: {', '.join(SUPPORTED)})")
        torch._check(qs.dim() == 2 and qs.dtype == torch.int32, lambda: "qs must be a 2-D int32 tensor")
        torch._check(x.shape[1] % 32 == 0 and qs.shape[1] * 32 == x.shape[1] * qs_words_per_sub(qtype),
                     lambda: f"x has {x.shape[1]} features; the {qtype} weight holds {qs.shape[1] * 32 // qs_words_per_sub(qtype)}")
        return x.new_empty((x.shape[0], qs.shape[0]))

    return op


def qs_words_per_sub(qtype: str) -> int:
    """int32 words of ``qs`` per 32-channel sub-block (8 for Q8_0, 4 otherwise)."""
    return CODES[qtype][1]
