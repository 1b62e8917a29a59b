"""FP8 E4M3 weights (FPW8A16, FP8_STATIC) on the CPU: two kernels.

* ``cpu.fp8`` (what ``auto`` picks): rows are decoded exactly (``fp8 * scale`` in fp32) block by
  block, cast to the compute dtype and multiplied.  Static FP8 activations (FP8_STATIC) are
  quantized first with the layer's ``input_scale`` (the codes of AutoRound's
  ``WeightFP8ActFP8StaticQuantLinear``) and dequantized exactly.  In bf16 this is AutoRound's
  own computation bit for bit (its bf16 products are the correctly rounded exact ones); in
  fp32 it is exact where AutoRound rounds ``fp8 * scale`` to bf16 first.
* ``cpu.fp8_scaled_mm`` (static FP8 activations only; by name or a raised priority): both FP8
  operands through ``torch._scaled_mm`` with the per-tensor input scale and the per-row (or
  per-tensor) weight scale, an exact fp32-accumulated ``sum(x8 * w8) * s_in * s_w`` rounded once
  to the output dtype (the semantics of FP8 GEMM kernels).  On torch 2.13's CPU build it is
  1.5-2x slower than ``cpu.fp8`` (measured on 4096x4096 layers, M = 1..512), hence its low priority.

The FP8 bytes are kept as uint8 (never as a float tensor), the scales as fp32.
"""

from __future__ import annotations

import torch

from quantlinear import LayerSpec, Verdict, fpquant
from quantlinear.formats import FloatWeights

from .floatbase import FloatDequantLinear


def scaled_mm_available() -> bool:
    return hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn")


class FP8Linear(FloatDequantLinear):
    name = "cpu.fp8"
    priority = 20
    data_types = frozenset({"fp"})
    bits = frozenset({8})
    group_sizes = frozenset({-1, 0})
    formats = frozenset({"fp8"})
    act_kinds = frozenset({"fp8_static"})

    def prepare(self, w: FloatWeights) -> None:
        self._setup_rows()
        N = self.out_features
        self.register_buffer("fp8_bytes", w.codes.contiguous())
        self.register_buffer("row_scales", w.scales.to(torch.float32).reshape(N).contiguous())
        isc = w.input_scale
        self.register_buffer("input_scale", None if isc is None else isc.reshape(1).clone())

    def dequant_rows(self, r0: int, r1: int) -> torch.Tensor:
        return self.fp8_bytes[r0:r1].view(torch.float8_e4m3fn).to(torch.float32) * self.row_scales[r0:r1].unsqueeze(-1)


class FP8ScaledMMLinear(FP8Linear):
    name = "cpu.fp8_scaled_mm"
    priority = 5

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        v = super().check(spec)
        if not v:
            return v
        if spec.scheme.weight_only:
            return Verdict.no("needs FP8 activations (a static input_scale): the scheme is weight-only")
        if not scaled_mm_available():
            return Verdict.no(f"torch {torch.__version__} has no torch._scaled_mm")
        return Verdict.yes()

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        x8 = fpquant.fp8_static_quantize_input(x, self.input_scale)
        sa = self.input_scale.to(torch.float32).reshape(1, 1).expand(x.shape[0], 1).contiguous()
        sb = self.row_scales.reshape(1, -1)
        w8 = self.fp8_bytes.view(torch.float8_e4m3fn)
        return torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sb, bias=self.bias, out_dtype=x.dtype)
