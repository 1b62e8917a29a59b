"""``cuda.triton_gguf``: llama.cpp's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K through Triton.

One layer, dispatched per call on M: a CUDA-core GEMV for decode (weights streamed once as
16-byte loads, a sub-block's 32 products summed before its scale is applied once), a
tensor-core ``tl.dot`` GEMM beyond (each sub-block dequantized in registers exactly as
llama.cpp does, then rounded to the activation dtype), and from 512 rows dequantize-then-cuBLAS
(:mod:`quantlinear_triton.gguf_kernels`).  ``prepare`` repacks the file's blocks once
(:mod:`quantlinear_triton.gguf_packing`: the same bits reordered, no float copy of the weight).
Configurations: :mod:`..gguf_ops` (a deterministic table until measured; tuning with
``QUANTLINEAR_CUDA_GGUF_TUNE=1``).

Verified in Triton's interpreter (CPU) against ``gguf.quants.dequantize`` and by compiling for sm90.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from quantlinear import LayerSpec, Verdict
from quantlinear_triton.gguf_layers import GGUFTritonBase

from .. import device as _device
from .. import gguf_ops
from .triton_wna16 import rocm_reason


class TritonGGUFLinear(GGUFTritonBase):
    name = "cuda.triton_gguf"
    priority = 60
    device_families = frozenset({"cuda"})
    ops_module = gguf_ops

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
