"""OCP microscaling layouts as AutoRound 0.16.1 exports them (one E8M0 scale per 32 input channels).

* ``mxfp4`` (``packing_format`` ``auto_round:llm_compressor``, ``data_type`` ``mx_fp`` /
  ``mx_fp_rceil``, 4 bits): ``weight_packed`` uint8 ``[N, K/2]`` E2M1 codes, even k in the low
  nibble; ``weight_scale`` uint8 ``[N, K/32]`` E8M0.
* ``mxfp8`` (same packing, 8 bits): ``weight`` float8_e4m3fn ``[N, K]``; ``weight_scale`` as above.
* ``mxint4`` (``packing_format`` ``auto_round``, ``data_type`` ``mx_int``, 4 bits): like ``mxfp4``
  with sign-magnitude ``m / 4`` codes (AutoRound's "E0M4").

``W[n, k] = value(code[n, k]) * 2 ** (weight_scale[n, k // 32] - 127)``; optional ``bias [N]``.
Sources: ``auto_round/export/export_to_autoround/qlinear_fp.py`` / ``qlinear_int.py`` (pack) and
``auto_round/experimental/qmodules/mx.py`` (load).
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from .. import fpcodes
from ..spec import LayerSpec
from .base import FloatWeights, TensorSpec
from .fpbase import FloatFormat, require

MX_BLOCK = 32


class MXFP4Format(FloatFormat):
    name: ClassVar[str] = "mxfp4"
    data_types = frozenset({"mx_fp", "mx_fp_rceil"})
    marker: ClassVar[str] = "weight_packed"
    element: ClassVar[str] = "e2m1"
    block: ClassVar[int] = MX_BLOCK
    layout_bits: ClassVar[int] = 4

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        N, K = spec.out_features, spec.in_features
        specs = {
            "weight_packed": TensorSpec((N, K // 2), torch.uint8),
            "weight_scale": TensorSpec((N, K // MX_BLOCK), torch.uint8),
        }
        if spec.bias:
            specs["bias"] = TensorSpec((N,), None)
        return specs

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> FloatWeights:
        packed, raw = require(tensors, spec, self.name, "weight_packed", "weight_scale")
        scales = self.decode_e8m0_checked(raw, spec, "weight_scale")
        return FloatWeights(fpcodes.unpack_nibbles(packed), self.element, scales, MX_BLOCK, "e8m0", raw)

    def pack(self, weights: FloatWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        codes = self.codes_for_pack(weights, spec)
        N, K = spec.out_features, spec.in_features
        return {
            "weight_packed": fpcodes.pack_nibbles(codes).contiguous(),
            "weight_scale": self.raw_scales_for_pack(weights, spec, "e8m0", (N, K // MX_BLOCK)),
        }


class MXINT4Format(MXFP4Format):
    name: ClassVar[str] = "mxint4"
    data_types = frozenset({"mx_int"})
    element: ClassVar[str] = "e0m4"


class MXFP8Format(FloatFormat):
    name: ClassVar[str] = "mxfp8"
    data_types = frozenset({"mx_fp", "mx_fp_rceil"})
    marker: ClassVar[str] = "weight_scale"
    element: ClassVar[str] = "e4m3"
    block: ClassVar[int] = MX_BLOCK
    layout_bits: ClassVar[int] = 8

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        N, K = spec.out_features, spec.in_features
        specs = {
            "weight": TensorSpec((N, K), torch.float8_e4m3fn),
            "weight_scale": TensorSpec((N, K // MX_BLOCK), torch.uint8),
        }
        if spec.bias:
            specs["bias"] = TensorSpec((N,), None)
        return specs

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> FloatWeights:
        w, raw = require(tensors, spec, self.name, "weight", "weight_scale")
        self.check_fp8_codes(w, spec, "weight")
        scales = self.decode_e8m0_checked(raw, spec, "weight_scale")
        return FloatWeights(w.contiguous().view(torch.uint8), self.element, scales, MX_BLOCK, "e8m0", raw)

    def pack(self, weights: FloatWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        codes = self.codes_for_pack(weights, spec)
        N, K = spec.out_features, spec.in_features
        return {
            "weight": codes.contiguous().view(torch.float8_e4m3fn),
            "weight_scale": self.raw_scales_for_pack(weights, spec, "e8m0", (N, K // MX_BLOCK)),
        }
