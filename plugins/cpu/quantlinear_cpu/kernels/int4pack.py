"""2/3/4-bit weights through PyTorch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``).

The op computes ``w = (q - 8) * s + zero`` with 4-bit ``q``.  Any 2-, 3- or 4-bit code with
integer zero ``z`` fits exactly: ``(q - z) * s = (q - 8) * s + (8 - z) * s``, so the op's
float zero is ``(8 - z) * s``.  The op accepts group sizes 32/64/128/256 only; larger groups
(including per-channel) are split into sub-groups that repeat the same scale and zero, which
is exact.  The packed layout is ISA-specific (AVX2/AVX512/NEON), so it is built at load
time on the machine that runs it and never serialized.
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

_OP_GROUPS = (256, 128, 64, 32)


def op_group_size(group_size: int) -> int | None:
    """The largest group size the op accepts that tiles ``group_size`` exactly."""
    return next((g for g in _OP_GROUPS if group_size % g == 0), None)


class Int4PackLinear(QuantLinear):
    name = "cpu.int4pack"
    priority = 30
    device_families = frozenset({"cpu"})
    bits = frozenset({2, 3, 4})
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    out_features_multiple = 16
    needs_whole_groups = True

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return Verdict.no(f"torch {torch.__version__} has no aten._weight_int4pack_mm_for_cpu")
        if op_group_size(spec.group_size) is None:
            return Verdict.no(f"group_size={spec.group_size} is not a multiple of 32 (the op takes groups of {'/'.join(map(str, _OP_GROUPS))})")
        return Verdict.yes()

    def prepare(self, w: IntWeights) -> None:
        g = self.spec.group_size
        og = op_group_size(g)
        rep = g // og
        q = w.qweight.to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        s = w.scales.to(torch.float32)
        zero = (8 - w.zeros.to(torch.float32)) * s
        sz = torch.stack([s, zero], dim=-1)  # [N, G, 2]
        sz = sz.repeat_interleave(rep, dim=1).transpose(0, 1).contiguous()  # [K/og, N, 2]
        self.op_group = og
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", sz.to(self.spec.dtype))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.op_group, self.scales_and_zeros)
