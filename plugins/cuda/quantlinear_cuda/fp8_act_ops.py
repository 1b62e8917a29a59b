"""The plugin's static FP8 activation quantization op ``torch.ops.quantlinear_cuda.fp8_quant_static``.

``fp8_quant_static(x, scale, fnuz=False, slab=0)`` is ``clamp(x / scale, +-448).to(float8_e4m3fn)`` (``fnuz``:
``+-224``, ``float8_e4m3fnuz``; ``slab`` > 0: in the byte order of slab words, :func:`quantlinear_triton.fp8_act.to_slab_order`), bit-exact with ``quantlinear.fpquant.fp8_static_quantize_input``, in one Triton
launch (:mod:`quantlinear_triton.fp8_act`; the reference's torch ops where Triton cannot run).  As a custom op it is
opaque to ``torch.compile``: Inductor cannot fuse it and so cannot drop the rounding of the quotient to the promoted
dtype (its ``emulate_precision_casts=False`` default does that to the plain torch ops), and ``fullgraph=True`` traces
through it (the fake gives the output).  Captures in CUDA graphs (one launch).  Registering it imports no Triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantlinear_triton.runtime import triton_available


def define_fp8_quant_static(qualname: str):
    """Register ``qualname`` (``"<namespace>::fp8_quant_static"``) as the custom op (with a fake)."""

    def fp8_quant_static(x: Tensor, scale: Tensor, fnuz: bool = False, slab: int = 0) -> Tensor:
        from quantlinear_triton import fp8_act

        return fp8_act.quantize_static(x, scale, fnuz, slab=slab)

    fp8_quant_static.__doc__ = ("``clamp(x / scale, +-qmax)`` in FP8, bit-exact with the reference (one Triton launch); "
                                "``slab`` > 0: columns in the byte order of slab words, K padded to whole tiles")
    op = torch.library.custom_op(qualname, mutates_args=())(fp8_quant_static)

    @op.register_fake
    def _fake(x, scale, fnuz=False, slab=0):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        torch._check(scale.numel() == 1, lambda: "the static input scale must have one element")
        K = x.shape[1] if not slab else (x.shape[1] + 4 * slab - 1) // (4 * slab) * (4 * slab)
        return x.new_empty((x.shape[0], K), dtype=torch.float8_e4m3fnuz if fnuz else torch.float8_e4m3fn)

    return op


def how() -> str:
    """Which implementation quantizes activations (for verdicts and ``explain``)."""
    if triton_available():
        return "activations quantized by one fused Triton launch (quantlinear_cuda::fp8_quant_static, bit-exact)"
    return "activations quantized by torch ops (Triton is not installed; the fused kernel needs it)"


fp8_quant_static = define_fp8_quant_static("quantlinear_cuda::fp8_quant_static")
FP8_QUANT_OP = torch.ops.quantlinear_cuda.fp8_quant_static
