"""``cuda.tinygemm``: PyTorch's own CUDA int4 kernel (``aten._weight_int4pack_mm``).

tinygemm computes ``w = (q - 8) * s + zero`` with 4-bit ``q``, bf16 activations only, on
sm80+.  Any 2-, 3- or 4-bit code with integer zero ``z`` fits exactly with the float zero
``(8 - z) * s``.  The op takes group sizes 32..256; larger groups (and per-channel) are
split into sub-groups repeating the same scale and zero, which is exact.  Scales and zeros
are rounded to bf16 (the op's format).

Lower priority than ``cuda.triton``: ``auto`` takes it where the Triton kernels cannot run
(Triton missing) and it can.  It is an aten op, so ``torch.compile`` and CUDA graphs take
it as is.
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

from .. import device as _device
from ..packing import TINYGEMM_GROUPS, tinygemm_group, tinygemm_inner_k_tiles, tinygemm_nibbles, tinygemm_scales_and_zeros
from .triton_wna16 import rocm_reason


class TinyGemmLinear(QuantLinear):
    name = "cuda.tinygemm"
    priority = 40
    device_families = frozenset({"cuda"})
    bits = frozenset({2, 3, 4})
    dtypes = frozenset({torch.bfloat16})
    out_features_multiple = 8
    needs_whole_groups = True

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        reason = rocm_reason()
        if reason:
            return Verdict.no(reason)
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm") or not hasattr(torch.ops.aten, "_convert_weight_to_int4pack"):
            return Verdict.no(f"torch {torch.__version__} has no aten._weight_int4pack_mm")
        try:
            props = _device.device_props(spec.device)
        except Exception as e:
            return Verdict.no(f"cannot use {spec.device}: {e}")
        if props.hip:
            return Verdict.no(f"{props.name} is a ROCm/HIP device; the CUDA plugin does not claim ROCm devices")
        if props.capability < (8, 0):
            return Verdict.no(f"tinygemm needs compute capability 8.0+ ({props.name} is {props.arch})")
        if tinygemm_group(spec.group_size) is None:
            return Verdict.no(f"group_size={spec.group_size} is not a multiple of 32 (the op takes groups of {'/'.join(map(str, TINYGEMM_GROUPS))})")
        if tinygemm_inner_k_tiles(spec.in_features) is None:
            return Verdict.no(f"in_features={spec.in_features} is not a multiple of 32")
        return Verdict.yes()

    def prepare(self, w: IntWeights) -> None:
        g = self.spec.group_size
        og = tinygemm_group(g)
        self.op_group = og
        self.inner_k_tiles = tinygemm_inner_k_tiles(self.in_features)
        packed = torch.ops.aten._convert_weight_to_int4pack(tinygemm_nibbles(w.qweight), self.inner_k_tiles)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", tinygemm_scales_and_zeros(w, g, og, torch.bfloat16))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm(x, self.packed, self.op_group, self.scales_and_zeros)

    def packed_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales_and_zeros))
