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

from quantlinear import LayerSpec, Verdict
from quantlinear_triton.layers import TinyGemmBase

from .common import nvidia_device


class TinyGemmLinear(TinyGemmBase):
    name = "cuda.tinygemm"
    priority = 40
    device_families = frozenset({"cuda"})
    out_features_multiple = 8

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        props, reason = nvidia_device(spec)
        reason = reason or cls.op_reason()
        if reason:
            return Verdict.no(reason)
        if props.capability < (8, 0):
            return Verdict.no(f"tinygemm needs compute capability 8.0+ ({props.name} is {props.arch})")
        reason = cls.layout_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()
