"""AWQ GEMM layout (AutoAWQ ``version: gemm``; AutoRound's ``auto_round:auto_awq``).

Both codes and zero points are packed along **N** with AWQ's interleave (each run of 8
output channels stored in the order 0,2,4,6,1,3,5,7), and zero points are raw (no offset).
Tensors: ``qweight`` int32 ``[K, N*b/32]``, ``qzeros`` int32 ``[G, N*b/32]``, ``scales``
``[G, N]``, optional ``bias`` ``[N]``.  Symmetric checkpoints store the constant zero
``2**(b-1)``.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from .. import bitpack
from ..spec import LayerSpec
from .base import IntWeights, PackingFormat, TensorSpec


class AWQFormat(PackingFormat):
    name: ClassVar[str] = "awq"

    def check_shape(self, spec: LayerSpec) -> str | None:
        b = spec.scheme.bits
        blk = max(8, bitpack.values_per_block(b))
        if spec.out_features % blk:
            return f"out_features={spec.out_features} is not a multiple of {blk}, required by AWQ packing along N"
        return None

    def adapt_tensor(self, tname: str, t: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
        """Drop padded input rows (AutoRound's model-free export pads K to whole groups; see GPTQFormat)."""
        Kp = spec.num_groups * spec.group_size
        if tname == "qweight" and Kp != spec.in_features and tuple(t.shape) == (Kp, spec.out_features * spec.scheme.bits // 32):
            return t[: spec.in_features]
        return t

    def infer_features(self, shapes: Mapping[str, tuple[int, ...]], bits: int) -> tuple[int, int]:
        k, cols = shapes["qweight"]
        return k, cols * 32 // bits

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        K, N, G, b = spec.in_features, spec.out_features, spec.num_groups, spec.scheme.bits
        specs = {
            "qweight": TensorSpec((K, N * b // 32), torch.int32),
            "qzeros": TensorSpec((G, N * b // 32), torch.int32),
            "scales": TensorSpec((G, N), None),
        }
        if spec.bias:
            specs["bias"] = TensorSpec((N,), None)
        return specs

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> IntWeights:
        b = spec.scheme.bits
        q = bitpack.unpack_awq(tensors["qweight"], b, dim=1).t().contiguous()  # [N, K]
        z = bitpack.unpack_awq(tensors["qzeros"], b, dim=1, dtype=torch.int16)  # [G, N]
        return IntWeights(qweight=q, zeros=z.t().contiguous(), scales=tensors["scales"].t().contiguous())

    def pack(self, weights: IntWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        b = spec.scheme.bits
        if weights.g_idx is not None:
            raise ValueError("the AWQ layout cannot store act-order (g_idx)")
        return {
            "qweight": bitpack.pack_awq(weights.qweight.t(), b, dim=1).contiguous(),
            "qzeros": bitpack.pack_awq(weights.zeros.t().to(torch.int32), b, dim=1).contiguous(),
            "scales": weights.scales.t().contiguous(),
        }
