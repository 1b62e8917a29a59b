"""XPU W2/W3/W4 through aten._weight_int4pack_mm_with_scales_and_zeros (oneDNN) [verified: against fakes only, not on hardware].

Written against PyTorch's XPU implementation (``aten/src/ATen/native/mkldnn/xpu/Blas.cpp``
``_weight_int4pack_mm_xpu``, ``detail/WoQMatmul.cpp`` ``woq_matmul_int4``) and torch-xpu-ops'
packer (``src/ATen/native/xpu/WeightInt4Pack.cpp`` + ``sycl/WeightInt4PackKernel.cpp``):

* ``aten._convert_weight_to_int4pack(uint8 [N, K/2], innerKTiles=8)`` -> int32 ``[N, K/8]``;
  byte ``k/2`` of row ``n`` holds code ``k`` (even) in its low and ``k+1`` in its high nibble
  (the bytes are copied little-endian into the int32 words; oneDNN reads them as u4 ``[K, N]``
  with K contiguous).
* ``aten._weight_int4pack_mm_with_scales_and_zeros(A, B, qGroupSize, qScale, qZeros)``:
  ``y = A @ W^T`` with ``W[n, k] = (q[n, k] - qZeros[g, n]) * qScale[g, n]``, ``g = k // qGroupSize``;
  A fp16/bf16 ``[M, K]`` contiguous, qScale ``[K/g, N]`` in A's dtype, qZeros int8 ``[K/g, N]``,
  qGroupSize a multiple of 32.  The front end also lists fp32 A, but the oneDNN primitive-cache
  path it always takes (``pri_cache=true``) asserts on anything but f16/bf16, so fp32 is not
  claimed (optimum-quanto: "XPU does not support float32 for now").

That is exactly the canonical ``(q - z) * s`` with integer zeros, so 2- and 3-bit codes run
unchanged (codes and zeros below 16 fit u4 and int8).  Per-channel layers pass qGroupSize = K.
``aten._weight_int4pack_mm`` (tinygemm-style float zeros) is not used on XPU: it returns wrong
results for M = 1 (intel/torch-xpu-ops#4765).
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict
from quantlinear.errors import CheckpointError

from .. import device

PACK_OP = "_convert_weight_to_int4pack"
MM_OP = "_weight_int4pack_mm_with_scales_and_zeros"
#: innerKTiles passed to the packer (checked to be 2/4/8, layout-neutral on XPU; torchao passes 8)
INNER_K_TILES = 8


def pack_uint4_pairs(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (< 16) -> uint8 ``[N, K/2]``, even k in the low nibble."""
    q = q.to(torch.uint8)
    return ((q[:, 1::2] << 4) | q[:, 0::2]).contiguous()


class Int4OneDNNLinear(QuantLinear):
    """XPU W2/W3/W4 through aten._weight_int4pack_mm_with_scales_and_zeros (oneDNN) [verified: against fakes only, not on hardware]."""

    name = "xpu.int4"
    priority = 40
    device_families = frozenset({"xpu"})
    bits = frozenset({2, 3, 4})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    needs_whole_groups = True
    verified = device.VERIFIED

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        g = spec.group_size
        if g % 32:
            what = "per-channel: in_features" if spec.num_groups == 1 and spec.scheme.group_size in (-1, 0) else "group_size"
            return Verdict.no(f"{what}={g} is not a multiple of 32 (the oneDNN op takes groups that are multiples of 32)")
        return device.require_ops(PACK_OP, MM_OP)

    def prepare(self, w: IntWeights) -> None:
        z = w.zeros
        if int(z.min()) < -128 or int(z.max()) > 127:
            raise CheckpointError(f"layer {self.spec.name!r}: zero points outside int8 range ({int(z.min())}..{int(z.max())})")
        self.op_group = self.spec.group_size
        packed = torch.ops.aten._convert_weight_to_int4pack(pack_uint4_pairs(w.qweight), INNER_K_TILES)
        self.register_buffer("packed", packed)
        self.register_buffer("qscale", w.scales.to(self.spec.dtype).t().contiguous())
        self.register_buffer("qzeros", z.to(torch.int8).t().contiguous())

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros(x, self.packed, self.op_group, self.qscale, self.qzeros)
