"""FP8 (E4M3) weights as AutoRound 0.16.1 exports them in its ``auto_round`` format.

* FP8_STATIC (``packing_format`` ``auto_round:fp8_static``, ``group_size -1``): ``weight``
  float8_e4m3fn ``[N, K]``, ``weight_scale`` ``[N]`` (model dtype), ``input_scale`` ``[1]``
  (static per-tensor activation scale, model dtype).
* FPW8A16 (no ``packing_format``, ``group_size 0``): ``weight`` float8_e4m3fn ``[N, K]``,
  ``weight_scale`` ``[1]`` (one scale for the tensor).

``W[n, k] = fp8(weight[n, k]) * weight_scale[n or 0]``; optional ``bias [N]``.
Sources: ``auto_round/export/export_to_autoround/export_to_fp8.py`` (``pack_layer``,
``FP8QLinear``) and ``auto_round/experimental/qmodules/fp8_static.py`` (load).
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from ..errors import QuantLinearError
from ..spec import LayerSpec
from .base import FloatWeights, TensorSpec
from .fpbase import FloatFormat, require


class FP8Format(FloatFormat):
    name: ClassVar[str] = "fp8"
    data_types = frozenset({"fp"})
    marker: ClassVar[str] = "weight_scale"
    element: ClassVar[str] = "e4m3"
    layout_bits: ClassVar[int] = 8

    def check_shape(self, spec: LayerSpec) -> str | None:
        reason = super().check_shape(spec)
        if reason:
            return reason
        if spec.scheme.group_size not in (-1, 0):
            return f"format {self.name} holds one scale per output channel (group_size -1) or per tensor (0), not group_size {spec.scheme.group_size}"
        return None

    @staticmethod
    def _per_tensor(spec: LayerSpec) -> bool:
        return spec.scheme.group_size == 0

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        N, K = spec.out_features, spec.in_features
        specs = {
            "weight": TensorSpec((N, K), torch.float8_e4m3fn),
            "weight_scale": TensorSpec((1,) if self._per_tensor(spec) else (N,), None),
        }
        if not spec.scheme.weight_only:
            specs["input_scale"] = TensorSpec((1,), None)
        if spec.bias:
            specs["bias"] = TensorSpec((N,), None)
        return specs

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> FloatWeights:
        w, raw = require(tensors, spec, self.name, "weight", "weight_scale")
        self.check_fp8_codes(w, spec, "weight")
        self.check_finite(raw, spec, "weight_scale")
        N, K = spec.out_features, spec.in_features
        isc = None
        if not spec.scheme.weight_only:
            (isc,) = require(tensors, spec, self.name, "input_scale")
            self.check_finite(isc, spec, "input_scale", positive=True)
            isc = isc.reshape(1)
        return FloatWeights(
            codes=w.contiguous().view(torch.uint8),
            element=self.element,
            scales=raw.to(torch.float32).reshape(-1, 1).expand(N, 1).contiguous(),
            block_size=K,
            scale_kind="float",
            raw_scales=raw,
            input_scale=isc,
        )

    def pack(self, weights: FloatWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        codes = self.codes_for_pack(weights, spec)
        N = spec.out_features
        shape = (1,) if self._per_tensor(spec) else (N,)
        if weights.raw_scales is not None and weights.scale_kind == "float" and tuple(weights.raw_scales.shape) == shape:
            raw = weights.raw_scales.contiguous()
        else:
            s = weights.scales.to(torch.float32)
            if tuple(s.shape) != (N, 1):
                raise QuantLinearError(f"layer {spec.name!r}: FP8 weights need one scale per row, got scales {tuple(s.shape)}")
            if self._per_tensor(spec):
                if not bool((s == s[0, 0]).all()):
                    raise QuantLinearError(f"layer {spec.name!r}: per-tensor FP8 (group_size 0) needs equal scales on every row")
                s = s[:1]
            raw = s.reshape(shape).contiguous()
        out = {"weight": codes.contiguous().view(torch.float8_e4m3fn), "weight_scale": raw}
        if not spec.scheme.weight_only:
            if weights.input_scale is None:
                raise QuantLinearError(f"layer {spec.name!r}: scheme {spec.scheme.id} quantizes activations: input_scale is needed")
            out["input_scale"] = weights.input_scale.reshape(1).contiguous()
        return out
