"""``cuda.triton_gguf``: llama.cpp's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K through Triton.

One layer, dispatched per call on M: a CUDA-core GEMV for decode (weights streamed once as
16-byte loads, a sub-block's 32 products summed before its scale is applied once; for fp16
activations the codes are decoded as fp16 pairs and multiplied with fp16x2 instructions), a
tensor-core ``tl.dot`` GEMM up to 256 rows (each sub-block dequantized in registers exactly as
llama.cpp does, then rounded to the activation dtype), and beyond (fp16/bf16) dequantize-then-cuBLAS
(:mod:`quantlinear_triton.gguf_kernels`).  ``prepare`` repacks the file's blocks once
(:mod:`quantlinear_triton.gguf_packing`: the same bits reordered, no float copy of the weight).
Configurations: :mod:`..gguf_ops` (a deterministic table until measured; tuning with
``QUANTLINEAR_CUDA_GGUF_TUNE=1``).

Verified in Triton's interpreter (CPU) against ``gguf.quants.dequantize`` and by compiling for sm90.
"""

from __future__ import annotations

from quantlinear import LayerSpec
from quantlinear_triton.gguf_layers import GGUFTritonBase

from .. import gguf_ops
from .common import TritonCudaKernel


class TritonGGUFLinear(TritonCudaKernel, GGUFTritonBase):
    name = "cuda.triton_gguf"
    priority = 60
    device_families = frozenset({"cuda"})
    ops_module = gguf_ops

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        return cls.scheme_reason(spec)
