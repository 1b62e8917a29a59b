"""5- to 8-bit grouped weights as two 4-bit halves through ``aten._weight_int4pack_mm_for_cpu``.

Why: the int8 op (``cpu.int8pack``) takes one scale per output channel, so grouped 8-bit
layers (AutoRound's W8A16 is g128) would fall back to dequantize-and-matmul.  Splitting each
b-bit code into its top 4 bits and the rest, ``q = 2**(b-4) * hi + lo``, keeps the groups and
stays exact in integers.  ``hi`` is already centred on the op's implicit 8; ``lo`` is
recentred to ``lo' = lo + 8 - 2**(b-5)`` so neither call carries a large offset that would
cancel after bf16 rounding::

    (q - z) * s = (hi - 8) * (2**(b-4) s) + (lo' - 8) * s + (2**(b-1) + 2**(b-5) - z) * s

The first two terms are two calls of the vectorized int4 op (zero term 0), reading 1 byte
per weight in all; the ``lo`` call carries at most 1/16 of the magnitude, so the result's
error is that of one bf16 int4 call.  The last term is the same for every k of a group, so
it is added exactly in fp32 as ``groupsum(x) @ (offset * s)``, a tiny ``[M, G] x [G, N]``
product.  Activations run in bf16 like ``cpu.int4pack`` (fp16 through bf16; fp32 is left to
``cpu.native_f32``, which also outranks this kernel where it can be built: it reads the same
1 byte per weight in one pass instead of two, 2-2.5x faster at every M measured).
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

from .int4pack import check_int4_op, pack_int4, scales_and_zeros


class Int4x2Linear(QuantLinear):
    name = "cpu.int4x2"
    priority = 20
    device_families = frozenset({"cpu"})
    bits = frozenset({5, 6, 7, 8})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    out_features_multiple = 16
    needs_whole_groups = True

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        return check_int4_op(spec)

    def prepare(self, w: IntWeights) -> None:
        gs = self.spec.group_size
        s = w.scales.to(torch.float32)
        zero = torch.zeros_like(s)
        b = self.spec.scheme.bits
        q = w.qweight.to(torch.int16)
        hi, lo = q >> (b - 4), (q & ((1 << (b - 4)) - 1)) + 8 - (1 << (b - 5))
        offset = (1 << (b - 1)) + (1 << (b - 5)) - w.zeros.to(torch.float32)
        self.op_group, sz_hi = scales_and_zeros(float(1 << (b - 4)) * s, zero, gs, torch.bfloat16)
        _, sz_lo = scales_and_zeros(s, zero, gs, torch.bfloat16)
        self.register_buffer("packed_hi", pack_int4(hi))
        self.register_buffer("packed_lo", pack_int4(lo))
        self.register_buffer("sz_hi", sz_hi)
        self.register_buffer("sz_lo", sz_lo)
        self.register_buffer("group_zero", (offset * s).t().contiguous())  # [G, N]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        y = mm(xb, self.packed_hi, self.op_group, self.sz_hi).to(torch.float32)
        y += mm(xb, self.packed_lo, self.op_group, self.sz_lo)
        gsum = x.view(x.shape[0], -1, self.spec.group_size).sum(-1, dtype=torch.float32)  # [M, G]
        y.addmm_(gsum, self.group_zero)
        return y.to(x.dtype)
