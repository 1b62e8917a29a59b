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
from dataclasses import replace

import torch

from quantlinear import LayerSpec, Verdict
from quantlinear_triton.fp_layers import FloatTritonBase
from quantlinear_triton.fp_packing import E4M3, E4M3_NV

from .. import device as _device
from .. import fp_ops
from .triton_wna16 import rocm_reason


class TritonFPLinear(FloatTritonBase):
    name = "cuda.triton_fp"
    priority = 60
    device_families = frozenset({"cuda"})
    ops_module = fp_ops

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> Verdict:
        # Test-only: with TRITON_INTERPRET=1 and the plugin's CPU switch on, CPU layers run
        # through Triton's interpreter (see quantlinear_cuda.device).
        if spec.device.type == "cpu" and _device.cpu_interpret_enabled():
            return super().can_implement(replace(spec, device=torch.device("cuda")))
        return super().can_implement(spec)

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        reason = rocm_reason()
        if reason:
            return Verdict.no(reason)
        try:
            props = _device.device_props(spec.device)
        except Exception as e:
            return Verdict.no(f"cannot use {spec.device}: {e}")
        if props.hip:
            return Verdict.no(f"{props.name} is a ROCm/HIP device; the CUDA plugin does not claim ROCm devices")
        if not _device.triton_available():
            return Verdict.no("Triton is not installed (pip install triton, or quantlinear-cuda[triton])")
        if props.capability < (7, 5):
            return Verdict.no(f"{props.name} is {props.arch}; the Triton kernels need compute capability 7.5 or newer")
        if spec.dtype == torch.bfloat16 and props.capability < (8, 0):
            return Verdict.no(f"bfloat16 tensor-core dot needs compute capability 8.0+ ({props.name} is {props.arch})")
        reason = cls.scheme_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()

    def fp8_decode(self):
        """Hardware e4m3 conversion where it exists (sm89+), the exact bit decode before.

        ``QUANTLINEAR_CUDA_FP8_DECODE=bits`` forces the bit decode (to compare the two on a GPU:
        the conversion runs on a slower pipe, the bit decode on the integer units).
        """
        if os.environ.get("QUANTLINEAR_CUDA_FP8_DECODE", "").strip().lower() == "bits":
            return E4M3, None
        props = _device.device_props(self.spec.device)
        return (E4M3_NV if props.capability >= (8, 9) else E4M3), None
