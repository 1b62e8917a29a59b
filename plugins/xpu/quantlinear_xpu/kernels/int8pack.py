"""XPU per-channel W2-W8 through aten._weight_int8pack_mm (oneDNN) [verified: against fakes only, not on hardware].

Written against PyTorch's ``_weight_int8pack_mm_xpu`` (``aten/src/ATen/native/mkldnn/xpu/Blas.cpp``):
A fp16/bf16/fp32 2-D with a contiguous last dimension, B int8 ``[N, K]`` contiguous, scales 1-D
``[N]`` (converted to fp32 inside oneDNN); ``y = A @ (B * s)^T`` in A's dtype.

Codes are recentred to int8 around ``c = 2**(bits-1)``: ``B = q - c``.  A symmetric layer's zero
is ``c``, so the op alone is exact.  An asymmetric zero ``z`` adds a rank-1 term, computed in
fp32: ``x @ ((q - z) * s)^T = x @ (B * s)^T + rowsum(x) * ((c - z) * s)``.  Centring on
``2**(bits-1)`` (not 128) keeps both terms of that sum the size of the result for low-bit
codes, so fp16/bf16 rounding of the op's output is not amplified by cancellation.
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

from .. import device

MM_OP = "_weight_int8pack_mm"


class Int8PackLinear(QuantLinear):
    """XPU per-channel W2-W8 through aten._weight_int8pack_mm (oneDNN) [verified: against fakes only, not on hardware]."""

    name = "xpu.int8pack"
    priority = 25
    device_families = frozenset({"xpu"})
    bits = frozenset({2, 3, 4, 5, 6, 7, 8})
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    verified = device.VERIFIED

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        if spec.num_groups != 1:
            return Verdict.no(f"needs one scale per output channel; group_size={spec.scheme.group_size} gives {spec.num_groups} groups per row")
        return device.require_ops(MM_OP)

    def prepare(self, w: IntWeights) -> None:
        c = 1 << (self.spec.scheme.bits - 1)
        s = w.scales[:, 0].to(torch.float32)
        self.register_buffer("weight_int8", (w.qweight.to(torch.int16) - c).to(torch.int8).contiguous())
        self.register_buffer("channel_scales", s.contiguous())
        corr = (c - w.zeros[:, 0].to(torch.float32)) * s
        self.register_buffer("zero_term", corr if bool((corr != 0).any()) else None)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x, self.weight_int8, self.channel_scales)
        if self.zero_term is not None:
            y = (y.float() + x.sum(dim=1, keepdim=True, dtype=torch.float32) * self.zero_term).to(x.dtype)
        return y
