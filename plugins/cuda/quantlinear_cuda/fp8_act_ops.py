"""The plugin's static FP8 activation quantization op ``torch.ops.quantlinear_cuda.fp8_quant_static``.

``fp8_quant_static(x, scale, fnuz=False, slab=0)`` is ``clamp(x / scale, +-448).to(float8_e4m3fn)`` (``fnuz``:
``+-224``, ``float8_e4m3fnuz``; ``slab`` > 0: in the byte order of slab words,
:func:`quantlinear_triton.fp8_act.to_slab_order`), bit-exact with ``quantlinear.fpquant.fp8_static_quantize_input``,
in one Triton launch (:mod:`quantlinear_triton.fp8_act`; the reference's torch ops where Triton cannot run).  As a custom op it is
opaque to ``torch.compile``: Inductor cannot fuse it and so cannot drop the rounding of the quotient to the promoted
dtype (its ``emulate_precision_casts=False`` default does that to the plain torch ops), and ``fullgraph=True`` traces
through it (the fake gives the output).  Captures in CUDA graphs (one launch).  Registering it imports no Triton.
The op is :func:`quantlinear_triton.scaled_mm.define_fp8_quant_static`'s, registered under this plugin's namespace
(the ROCm plugin registers its own the same way).
"""

from __future__ import annotations

import torch

from quantlinear_triton.runtime import triton_available
from quantlinear_triton.scaled_mm import define_fp8_quant_static


def how() -> str:
    """Which implementation quantizes activations (for verdicts and ``explain``)."""
    if triton_available():
        return "activations quantized by one fused Triton launch (quantlinear_cuda::fp8_quant_static, bit-exact)"
    return "activations quantized by torch ops (Triton is not installed; the fused kernel needs it)"


fp8_quant_static = define_fp8_quant_static("quantlinear_cuda::fp8_quant_static")
FP8_QUANT_OP = torch.ops.quantlinear_cuda.fp8_quant_static
