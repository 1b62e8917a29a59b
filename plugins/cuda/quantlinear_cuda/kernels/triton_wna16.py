"""``cuda.triton``: weight-only int (2/3/4/8-bit) x fp16/bf16 (fp32) through Triton.

One layer, dispatched per call on M: a CUDA-core GEMV for decode-sized M, a tensor-core
GEMM (dequantize in registers, ``tl.dot``) for larger M, and, for large M where the product
is compute-bound, dequantization into a temporary float weight followed by cuBLAS (the
temporary lives for one call; ``QUANTLINEAR_CUDA_DQMM=0`` forbids that path).  Which one
runs, with which tiles and split-K, comes from the tuning table (:mod:`..tune`), so the
thresholds are whatever was measured on the GPU at hand (shipped: ``tuned/sm90.json``).

``prepare`` repacks the canonical codes once into the slab-interleaved int32 layout
(:mod:`..packing`), keeps the checkpoint's scales bit-exact, and drops zero points when
they are one constant (every symmetric checkpoint).  No float copy of the weight is kept.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

from .. import device as _device
from .. import ops, tune
from ..packing import SlabMeta, choose_slab, constant_zero, pack_codes, pack_scales, pack_zeros


def rocm_reason() -> str | None:
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"this is a ROCm build of PyTorch (torch.version.hip={hip}); the CUDA plugin does not run on ROCm devices (use the rocm plugin)"
    return None


class TritonWNA16Linear(QuantLinear):
    name = "cuda.triton"
    priority = 60
    device_families = frozenset({"cuda"})
    bits = frozenset({2, 3, 4, 8})
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    fuses_bias = True

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
        if choose_slab(spec.group_size, spec.in_features) is None:
            return Verdict.no(f"group_size={spec.group_size} must be a multiple of 16 or span all {spec.in_features} input channels")
        return Verdict.yes()

    def prepare(self, w: IntWeights) -> None:
        s = self.spec
        bits, g, K, N = s.scheme.bits, s.group_size, s.in_features, s.out_features
        slab = choose_slab(g, K)
        self.meta = SlabMeta(bits, slab, g, K, N)
        zc = constant_zero(w.zeros)
        self.register_buffer("w_slab", pack_codes(w.qweight, bits, slab))
        self.register_buffer("w_scales", pack_scales(w.scales))
        self.register_buffer("w_zeros", None if zc is not None else pack_zeros(w.zeros))
        self.zero_point = float(zc if zc is not None else 0)
        self.problem = tune.Problem(bits, slab, g, zc is None, ops.dtype_name(s.dtype), N, K)
        if self.w_slab.is_cuda:  # allocate the split-K counters now, never during a graph capture
            ops._triton_kernels().counters(self.w_slab.device)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        m = self.meta
        if not torch.compiler.is_compiling() and type(x) is torch.Tensor and not x.is_meta:
            # eager: skip the dispatcher round trip (same code the op runs)
            return ops.run_gemm(x, self.w_slab, self.w_scales, self.w_zeros, self.bias, m.bits, m.group_size, m.in_features, m.slab,
                                self.zero_point, self.problem)
        return torch.ops.quantlinear_cuda.wna16_gemm(x, self.w_slab, self.w_scales, self.w_zeros, self.bias, m.bits, m.group_size,
                                                     m.in_features, m.slab, self.zero_point)

    def packed_bytes(self) -> int:
        """Bytes the kernels read per call for the weight (codes, scales, zeros)."""
        return sum(t.numel() * t.element_size() for t in (self.w_slab, self.w_scales, self.w_zeros) if t is not None)
