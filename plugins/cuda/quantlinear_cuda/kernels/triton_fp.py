"""``cuda.triton_fp``: MXFP4 / MXFP8 / MXINT4 / NVFP4 / FP8 (FPW8A16, FP8_STATIC) through Triton.

One layer, dispatched per call on M: a CUDA-core GEMV for decode-sized M and a tensor-core
``tl.dot`` GEMM beyond, both decoding the stored codes and scale bytes in registers
(:mod:`quantlinear_triton.fp_kernels`).  Activations are quantized first where the scheme does
(MX per 32, NVFP4 with ``input_global_scale``, FP8 with the static ``input_scale``), in one
launch, bit-exact with :mod:`quantlinear.fpquant`.  FP8 weight bytes are converted by the
hardware on sm89+ (``float8e4nv``; ``QUANTLINEAR_CUDA_FP8_DECODE=bits`` forces the bit decode) and
by an exact integer bit decode before.  Configurations:
:mod:`..fp_ops` (a deterministic table until measured; tuning with ``QUANTLINEAR_CUDA_FP_TUNE=1``).

Verified in Triton's interpreter (CPU) and by compiling for sm80/sm90; see docs/float-schemes.md.
"""

from __future__ import annotations

import os

import torch

from quantlinear import LayerSpec
from quantlinear_triton.fp_layers import FloatTritonBase
from quantlinear_triton.fp_packing import E4M3, E4M3_NV

from .. import device as _device
from .. import fp_ops
from .common import TritonCudaKernel


class TritonFPLinear(TritonCudaKernel, FloatTritonBase):
    name = "cuda.triton_fp"
    priority = 60
    device_families = frozenset({"cuda"})
    reads_weights_early = True  # (mmv's ``early`` configurations, quantlinear_triton.kernels_mmv)
    ops_module = fp_ops

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        return cls.scheme_reason(spec)

    def fp8_decode(self):
        return fp8_decode_for(self.spec), None

    def mmv_scales(self) -> bool:
        """fp16 MXFP4 / NVFP4 layers keep ``mmv``'s scales on devices that run it (sm_80+, compiled; NVFP4's scale
        conversion sm_89+)."""
        if self.spec.dtype != torch.float16:
            return False
        try:
            props = _device.device_props(self.spec.device)
        except RuntimeError:  # not a CUDA device
            return False
        nv = self.spec.scheme.data_type == "nv_fp"
        return fp_ops.SPACE.mmv(props) and (not nv or props.capability >= (8, 9))


def fp8_decode_for(spec: LayerSpec) -> int:
    """How FP8 weight elements of ``spec``'s layer are decoded: hardware e4m3 conversion where it exists (sm89+), the
    exact bit decode before (also used by ``cuda.fp8_scaled_mm``'s small-M GEMV).

    ``QUANTLINEAR_CUDA_FP8_DECODE=bits`` forces the bit decode (to compare the two on a GPU: the conversion runs on a
    slower pipe, the bit decode on the integer units).
    """
    if os.environ.get("QUANTLINEAR_CUDA_FP8_DECODE", "").strip().lower() == "bits":
        return E4M3
    return E4M3_NV if _device.device_props(spec.device).capability >= (8, 9) else E4M3
