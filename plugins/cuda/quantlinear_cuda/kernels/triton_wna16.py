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

from dataclasses import replace

import torch

from quantlinear import LayerSpec, Verdict
from quantlinear_triton.layers import TritonSlabBase

from .. import device as _device
from .. import ops


def rocm_reason() -> str | None:
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"this is a ROCm build of PyTorch (torch.version.hip={hip}); the CUDA plugin does not run on ROCm devices (use the rocm plugin)"
    return None


class TritonWNA16Linear(TritonSlabBase):
    name = "cuda.triton"
    priority = 60
    device_families = frozenset({"cuda"})
    ops_module = ops

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
        reason = cls.slab_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()
