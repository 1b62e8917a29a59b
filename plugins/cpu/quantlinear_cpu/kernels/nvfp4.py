"""NVFP4 (E2M1 codes, an E4M3 scale per 16 inputs, a global scale) on the CPU.

Keeps the checkpoint encoding (codes packed two per byte, float8 block scales) and decodes a
block of rows per call as AutoRound's ``NVFP4QuantLinear`` does, in fp32:
``e2m1 * (1 / weight_global_scale) * weight_scale``.  When the scheme quantizes activations
(``nv_fp4_with_static_gs``), they are quantized per 16 with the static ``input_global_scale``
first (``fpquant.nvfp4_qdq``, AutoRound's ``ref_nvfp4_quant``).
"""

from __future__ import annotations

import torch

from quantlinear import fpcodes
from quantlinear.formats import FloatWeights

from .floatbase import FloatDequantLinear, byte_table


class NVFP4Linear(FloatDequantLinear):
    name = "cpu.nvfp4"
    priority = 10
    data_types = frozenset({"nv_fp"})
    bits = frozenset({4})
    group_sizes = frozenset({16})
    formats = frozenset({"nvfp4"})
    in_features_multiple = 16
    act_kinds = frozenset({"nvfp4"})

    def prepare(self, w: FloatWeights) -> None:
        self._setup_rows()
        raw = w.raw_scales if w.scale_kind == "e4m3" and w.raw_scales is not None else w.scales.to(torch.float8_e4m3fn)
        gs = w.global_scale.to(torch.float32).reshape(())
        self.register_buffer("packed", fpcodes.pack_nibbles(w.codes).contiguous())
        self.register_buffer("block_scales", raw.contiguous().view(torch.uint8))
        self.register_buffer("byte_lut", byte_table("e2m1"))
        self.register_buffer("inv_global_scale", torch.where(gs == 0, torch.zeros_like(gs), 1.0 / gs))
        igs = w.input_global_scale
        self.register_buffer("input_global_scale", None if igs is None else igs.to(torch.float32).reshape(1))

    def dequant_rows(self, r0: int, r1: int) -> torch.Tensor:
        n = r1 - r0
        v = self.byte_lut[self.packed[r0:r1].long()].view(n, self.in_features) * self.inv_global_scale
        s = self.block_scales[r0:r1].view(torch.float8_e4m3fn).to(torch.float32)
        return (v.view(n, -1, 16) * s.unsqueeze(-1)).view(n, self.in_features)
