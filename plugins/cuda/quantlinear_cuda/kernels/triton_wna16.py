"""``cuda.triton``: weight-only int (2/3/4/8-bit) x fp16/bf16 (fp32) through Triton.

One layer, dispatched per call on M: a CUDA-core GEMV for decode-sized M, a tensor-core
GEMM (dequantize in registers, ``tl.dot``) for larger M, and, for large M where the product
is compute-bound, dequantization into a temporary float weight followed by cuBLAS (the
temporary lives for one call; ``QUANTLINEAR_CUDA_DQMM=0`` forbids that path).  Which one
runs, with which tiles and split-K, comes from the tuning table (:mod:`..tune`, over the shared tuner), so the
thresholds are whatever was measured on the GPU at hand (shipped: ``tuned/sm90.json``).

``prepare`` repacks the canonical codes once into the slab-interleaved int32 layout
(:mod:`quantlinear_triton.packing`), keeps the checkpoint's scales bit-exact, and drops zero points when
they are one constant (every symmetric checkpoint).  No float copy of the weight is kept.
"""

from __future__ import annotations

from quantlinear import LayerSpec
from quantlinear_triton.layers import TritonSlabBase

from .. import ops
from .common import TritonCudaKernel


class TritonWNA16Linear(TritonCudaKernel, TritonSlabBase):
    name = "cuda.triton"
    priority = 60
    device_families = frozenset({"cuda"})
    reads_weights_early = True  # (mmv's ``early`` configurations, quantlinear_triton.kernels_mmv)
    ops_module = ops

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        return cls.slab_reason(spec)
