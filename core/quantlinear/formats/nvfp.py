"""NVFP4 as AutoRound 0.16.1 exports it (``packing_format`` ``auto_round:llm_compressor``, ``data_type`` ``nv_fp``).

Tensors (K = in_features, N = out_features):

* ``weight_packed`` uint8 ``[N, K/2]``: E2M1 codes, even k in the low nibble (as MXFP4);
* ``weight_scale`` float8_e4m3fn ``[N, K/16]``: block scales;
* ``weight_global_scale`` ``[1]`` (fp32; any float dtype is read and upcast, as AutoRound's
  loader does): ``448 * 6 / amax`` of the weight (shared by q/k/v and by gate/up by default);
* ``input_global_scale`` ``[1]``: the activations' global scale, present when the scheme
  quantizes activations (``act_bits <= 8``);
* optional ``bias [N]``.

``W[n, k] = e2m1(code) * (1 / weight_global_scale) * weight_scale[n, k // 16]``
(``auto_round/experimental/qmodules/nvfp4.py`` ``_dequant_nvfp4_tensor``).
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from .. import fpcodes
from ..errors import QuantLinearError
from ..spec import LayerSpec
from .base import FloatWeights, TensorSpec
from .fpbase import FloatFormat, require

NV_BLOCK = 16


class NVFP4Format(FloatFormat):
    name: ClassVar[str] = "nvfp4"
    data_types = frozenset({"nv_fp"})
    marker: ClassVar[str] = "weight_packed"
    element: ClassVar[str] = "e2m1"
    block: ClassVar[int] = NV_BLOCK
    layout_bits: ClassVar[int] = 4

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        N, K = spec.out_features, spec.in_features
        specs = {
            "weight_packed": TensorSpec((N, K // 2), torch.uint8),
            "weight_scale": TensorSpec((N, K // NV_BLOCK), torch.float8_e4m3fn),
            "weight_global_scale": TensorSpec((1,), None),
        }
        if not spec.scheme.weight_only:
            specs["input_global_scale"] = TensorSpec((1,), None)
        if spec.bias:
            specs["bias"] = TensorSpec((N,), None)
        return specs

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> FloatWeights:
        packed, raw, gs = require(tensors, spec, self.name, "weight_packed", "weight_scale", "weight_global_scale")
        self.check_fp8_codes(raw, spec, "weight_scale")
        self.check_finite(gs, spec, "weight_global_scale", positive=True)
        igs = None
        if not spec.scheme.weight_only:
            (igs,) = require(tensors, spec, self.name, "input_global_scale")
            self.check_finite(igs, spec, "input_global_scale", positive=True)
            igs = igs.to(torch.float32).reshape(1)
        return FloatWeights(
            codes=fpcodes.unpack_nibbles(packed),
            element=self.element,
            scales=raw.to(torch.float32),
            block_size=NV_BLOCK,
            scale_kind="e4m3",
            raw_scales=raw,
            global_scale=gs.to(torch.float32).reshape(1),
            input_global_scale=igs,
        )

    def pack(self, weights: FloatWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        codes = self.codes_for_pack(weights, spec)
        N, K = spec.out_features, spec.in_features
        if weights.global_scale is None:
            raise QuantLinearError(f"layer {spec.name!r}: NVFP4 weights need a global_scale")
        out = {
            "weight_packed": fpcodes.pack_nibbles(codes).contiguous(),
            "weight_scale": self.raw_scales_for_pack(weights, spec, "e4m3", (N, K // NV_BLOCK)),
            "weight_global_scale": weights.global_scale.to(torch.float32).reshape(1).contiguous(),
        }
        if not spec.scheme.weight_only:
            if weights.input_global_scale is None:
                raise QuantLinearError(f"layer {spec.name!r}: scheme {spec.scheme.id} quantizes activations: input_global_scale is needed")
            out["input_global_scale"] = weights.input_global_scale.to(torch.float32).reshape(1).contiguous()
        return out
