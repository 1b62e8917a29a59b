"""Per-channel 8-bit weights through PyTorch's ``aten._weight_int8pack_mm`` (``y = x @ (B * s)^T``).

Codes are recentred to int8 (``B = q - 128``).  A symmetric layer's zero is 128, so the op
alone is exact.  An asymmetric zero ``z`` adds a rank-1 term computed in the same call:
``x @ ((q - z) * s)^T = x @ (B * s)^T + rowsum(x) * ((128 - z) * s)``.

Activations: like the int4 op, this op is vectorized for bf16 only (fp16/fp32 run a scalar
loop, 10-30x slower than bf16), so fp16 layers are computed in bf16 (~4e-3 relative error,
inside fp16's 1e-2) and fp32 layers are left to ``cpu.native_f32`` (exact) or ``cpu.dequant``.
Grouped 8-bit layers go to ``cpu.int4x2``.  ``cpu.native_f32`` outranks this kernel where it can
be built.
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict


class Int8PackLinear(QuantLinear):
    name = "cpu.int8pack"
    priority = 25
    device_families = frozenset({"cpu"})
    bits = frozenset({8})
    #: bf16 natively; fp16 computed in bf16; fp32 not offered (scalar op path)
    dtypes = frozenset({torch.float16, torch.bfloat16})

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        if spec.num_groups != 1:
            return Verdict.no(f"needs one scale per output channel; group_size={spec.scheme.group_size} gives {spec.num_groups} groups per row")
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return Verdict.no(f"torch {torch.__version__} has no aten._weight_int8pack_mm")
        return Verdict.yes()

    def prepare(self, w: IntWeights) -> None:
        s = w.scales[:, 0].to(torch.float32)
        self.register_buffer("weight_int8", (w.qweight.to(torch.int16) - 128).to(torch.int8).contiguous())
        self.register_buffer("channel_scales", s.to(torch.bfloat16))
        corr = (128 - w.zeros[:, 0].to(torch.float32)) * s
        self.register_buffer("zero_term", corr if bool((corr != 0).any()) else None)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight_int8, self.channel_scales)
        if self.zero_term is not None:
            y = torch.addcmul(y.to(torch.float32), x.sum(dim=1, keepdim=True, dtype=torch.float32), self.zero_term)
        return y.to(x.dtype)
