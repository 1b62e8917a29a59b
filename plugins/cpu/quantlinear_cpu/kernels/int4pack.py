"""2/3/4-bit weights through PyTorch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``).

The op computes ``w = (c - 8) * s + zero`` with 4-bit ``c``.  Any 2-, 3- or 4-bit code with
integer zero ``z`` fits exactly.  Codes are first recentred on the op's 8,
``c = q + 8 - 2**(bits-1)`` and ``z' = z + 8 - 2**(bits-1)``, so that
``(q - z) * s = (c - 8) * s + (8 - z') * s`` and the op's float zero ``(8 - z') * s`` is 0 for
symmetric layers and small otherwise (an uncentred 2-bit code would have ``(q - 8) * s`` and
``zero`` of ~6 s cancel to ~1.5 s, and their bf16 rounding would cost 1.5e-2 relative error).
The op accepts group sizes 32/64/128/256 only; larger groups (including per-channel) are
split into sub-groups that repeat the same scale and zero, which is exact.  The packed
layout is ISA-specific (AVX2/AVX512/NEON), so it is built at load time on the machine that
runs it and never serialized.

Activations: the op is vectorized (AVX-512/AVX2) for bf16 only; its fp16 and fp32 paths are
scalar loops, 20-50x slower (3 ms vs 0.05 ms for 2048x2048 at M=1 on a 2-core AVX-512 CPU).
So fp16 layers run the bf16 op (x -> bf16, y -> fp16): bf16 rounding of x, scales and y adds
~4e-3 relative error, inside fp16's 1e-2 budget.  fp32 is not offered: rounding through bf16
would break fp32 exactness and the exact fp32 path is slower than dense; fp32 layers go to
``cpu.native_f32`` (exact, vectorized) or ``cpu.dequant``.  Where ``cpu.native_f32`` can be
built it outranks this kernel for every dtype (fp32 compute, as fast at M=1, faster above).
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

_OP_GROUPS = (256, 128, 64, 32)


def op_group_size(group_size: int) -> int | None:
    """The largest group size the op accepts that tiles ``group_size`` exactly."""
    return next((g for g in _OP_GROUPS if group_size % g == 0), None)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[N, K]`` in [0, 16) -> the op's opaque packed layout."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


def scales_and_zeros(scales: torch.Tensor, zero: torch.Tensor, group_size: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
    """(op group size, ``[K/og, N, 2]`` tensor) for per-group ``scales``/``zero`` ``[N, G]`` (fp32)."""
    og = op_group_size(group_size)
    sz = torch.stack([scales, zero], dim=-1)  # [N, G, 2]
    sz = sz.repeat_interleave(group_size // og, dim=1).transpose(0, 1).contiguous()  # [K/og, N, 2]
    return og, sz.to(dtype)


def check_int4_op(spec: LayerSpec) -> Verdict:
    """What every kernel built on ``_weight_int4pack_mm_for_cpu`` needs: the op, and groups it can tile."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return Verdict.no(f"torch {torch.__version__} has no aten._weight_int4pack_mm_for_cpu")
    if op_group_size(spec.group_size) is None:
        return Verdict.no(f"group_size={spec.group_size} is not a multiple of 32 (the op takes groups of {'/'.join(map(str, _OP_GROUPS))})")
    return Verdict.yes()


class Int4PackLinear(QuantLinear):
    name = "cpu.int4pack"
    priority = 30
    device_families = frozenset({"cpu"})
    bits = frozenset({2, 3, 4})
    #: bf16 natively; fp16 computed in bf16 (see module docstring); fp32 not offered
    dtypes = frozenset({torch.float16, torch.bfloat16})
    out_features_multiple = 16
    needs_whole_groups = True

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        return check_int4_op(spec)

    def prepare(self, w: IntWeights) -> None:
        shift = 8 - (1 << (self.spec.scheme.bits - 1))
        s = w.scales.to(torch.float32)
        zero = (8 - (w.zeros.to(torch.float32) + shift)) * s
        self.op_group, sz = scales_and_zeros(s, zero, self.spec.group_size, torch.bfloat16)
        self.register_buffer("packed", pack_int4(w.qweight.to(torch.int16) + shift))
        self.register_buffer("scales_and_zeros", sz)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.op_group, self.scales_and_zeros)
        return y.to(x.dtype)
