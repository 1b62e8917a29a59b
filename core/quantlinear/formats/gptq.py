"""GPTQ-family layouts: codes packed along K, zero points packed along N.

Two variants differ only in how zero points are stored:

* ``gptq`` (GPTQ "v1"): written by AutoGPTQ and by AutoRound's default
  ``auto_round:auto_gptq`` packing.  The stored zero is ``z - 1`` (clamped at 0 when
  written) and readers add 1 back (``auto_round_extension/torch/qlinear_torch_zp.py``).
  A symmetric 4-bit layer therefore stores 0x77777777, not 0x88888888.
* ``gptq_v2``: raw zero points.  Written by AutoRound's native ``auto_round`` int packing
  (asymmetric 2/3/8-bit), ``auto_round:gptqmodel`` and GPTQModel's ``checkpoint_format:
  gptq_v2``.

Tensors (K = in_features, N = out_features, G = ceil(K / group_size), b = bits):
``qweight`` int32 ``[K*b/32, N]``, ``qzeros`` int32 ``[G, N*b/32]``, ``scales`` float
``[G, N]``, optional ``g_idx`` int32 ``[K]`` (act-order), optional ``bias`` ``[N]``.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from .. import bitpack
from ..errors import CheckpointError
from ..spec import LayerSpec
from .base import IntWeights, PackingFormat, TensorSpec


class GPTQFormat(PackingFormat):
    name: ClassVar[str] = "gptq"
    zero_offset: ClassVar[int] = 1  # stored zero = true zero - zero_offset

    def check_shape(self, spec: LayerSpec) -> str | None:
        b = spec.scheme.bits
        blk = bitpack.values_per_block(b)
        if spec.in_features % blk:
            return f"in_features={spec.in_features} is not a multiple of {blk}, required to pack {b}-bit codes along K"
        if spec.out_features % blk:
            return f"out_features={spec.out_features} is not a multiple of {blk}, required to pack {b}-bit zeros along N"
        return None

    def adapt_tensor(self, tname: str, t: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
        """Drop the rows AutoRound's model-free export adds when it pads K up to whole groups.

        ``utils/model_free_utils.py`` ``quantize_weight_rtn`` pads ``in_features`` to
        ``num_groups * group_size`` before packing, so a layer with a partial last group (or
        fewer inputs than one group) stores codes for inputs that do not exist, after the real
        ones.  Any other shape is left for :meth:`validate` to report.
        """
        K, N, b = spec.in_features, spec.out_features, spec.scheme.bits
        Kp = spec.num_groups * spec.group_size
        if tname == "qweight" and not spec.act_order and Kp != K and (Kp * b) % 32 == 0 and tuple(t.shape) == (Kp * b // 32, N):
            return t[: K * b // 32]
        return t

    def infer_features(self, shapes: Mapping[str, tuple[int, ...]], bits: int) -> tuple[int, int]:
        rows, n = shapes["qweight"]
        return (shapes["g_idx"][0] if "g_idx" in shapes else rows * 32 // bits), n

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        K, N, G, b = spec.in_features, spec.out_features, spec.num_groups, spec.scheme.bits
        specs = {
            "qweight": TensorSpec((K * b // 32, N), torch.int32),
            "qzeros": TensorSpec((G, N * b // 32), torch.int32),
            "scales": TensorSpec((G, N), None),
            "g_idx": TensorSpec((K,), torch.int32, optional=True),
        }
        if spec.bias:
            specs["bias"] = TensorSpec((N,), None)
        return specs

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> IntWeights:
        b = spec.scheme.bits
        q = bitpack.unpack(tensors["qweight"], b, dim=0).t().contiguous()  # [N, K]
        z = bitpack.unpack(tensors["qzeros"], b, dim=1, dtype=torch.int16) + self.zero_offset  # [G, N]
        s = tensors["scales"]
        g_idx = normalize_g_idx(tensors.get("g_idx"), spec)
        return IntWeights(qweight=q, zeros=z.t().contiguous(), scales=s.t().contiguous(), g_idx=g_idx)

    def pack(self, weights: IntWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        b = spec.scheme.bits
        maxq = (1 << b) - 1
        out = {
            "qweight": bitpack.pack(weights.qweight.t(), b, dim=0).contiguous(),
            "qzeros": bitpack.pack((weights.zeros.t().to(torch.int32) - self.zero_offset).clamp(0, maxq), b, dim=1).contiguous(),
            "scales": weights.scales.t().contiguous(),
        }
        if weights.g_idx is not None:
            out["g_idx"] = weights.g_idx.to(torch.int32).contiguous()
        return out


class GPTQv2Format(GPTQFormat):
    name: ClassVar[str] = "gptq_v2"
    zero_offset: ClassVar[int] = 0


def normalize_g_idx(g_idx: torch.Tensor | None, spec: LayerSpec) -> torch.Tensor | None:
    """Validate a checkpoint ``g_idx``; return None when it is the trivial ``k // group_size``."""
    if g_idx is None:
        return None
    K, G, g = spec.in_features, spec.num_groups, spec.group_size
    g_idx = g_idx.to(torch.int32)
    if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= G):
        raise CheckpointError(
            f"layer {spec.name!r}: tensor {spec.name}.g_idx has values in [{int(g_idx.min())}, {int(g_idx.max())}], "
            f"expected group indices in [0, {G})"
        )
    trivial = torch.arange(K, dtype=torch.int32, device=g_idx.device) // g
    if torch.equal(g_idx, trivial):
        return None
    return g_idx


def g_idx_is_trivial(g_idx: torch.Tensor, in_features: int, group_size: int) -> bool:
    trivial = torch.arange(in_features, dtype=torch.int32, device=g_idx.device) // group_size
    return bool(torch.equal(g_idx.to(torch.int32), trivial))
