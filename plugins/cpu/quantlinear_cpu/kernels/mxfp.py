"""MXFP4, MXFP8 and MXINT4 (OCP microscaling, one E8M0 scale per 32 inputs) on the CPU.

Keeps the checkpoint encoding: 4-bit codes packed two per byte (or FP8 bytes) plus the E8M0
bytes; each call decodes a block of rows exactly (``value * 2 ** (e - 127)`` in fp32), casts it
to the compute dtype and multiplies.  Activations of MX schemes are quantized per block of
``act_group_size`` first, as AutoRound's ``MXQuantLinearBase.qdq_input`` does (``mx_fp`` floor
or ``mx_fp_rceil`` exponents; ``mx_int`` activations on the FP4 grid, like AutoRound).
"""

from __future__ import annotations

import torch

from quantlinear import fpcodes
from quantlinear.formats import FloatWeights

from .floatbase import FloatDequantLinear, byte_table


class MXLinear(FloatDequantLinear):
    name = "cpu.mx"
    priority = 10
    data_types = frozenset({"mx_fp", "mx_fp_rceil", "mx_int"})
    bits = frozenset({4, 8})
    group_sizes = frozenset({32})
    formats = frozenset({"mxfp4", "mxfp8", "mxint4"})
    in_features_multiple = 32
    act_kinds = frozenset({"mx"})

    def prepare(self, w: FloatWeights) -> None:
        self._setup_rows()
        self.element = w.element
        self.four_bit = w.element in ("e2m1", "e0m4")
        raw = w.raw_scales if w.scale_kind == "e8m0" and w.raw_scales is not None else fpcodes.encode_e8m0(w.scales)
        self.register_buffer("e8m0", raw.contiguous())
        if self.four_bit:
            self.register_buffer("packed", fpcodes.pack_nibbles(w.codes).contiguous())
            self.register_buffer("byte_lut", byte_table(w.element))
        else:
            self.register_buffer("fp8_bytes", w.codes.contiguous())

    def dequant_rows(self, r0: int, r1: int) -> torch.Tensor:
        n = r1 - r0
        if self.four_bit:
            v = self.byte_lut[self.packed[r0:r1].long()]
        else:
            v = self.fp8_bytes[r0:r1].view(torch.float8_e4m3fn).to(torch.float32)
        s = torch.exp2(self.e8m0[r0:r1].to(torch.float32) - 127.0)
        return (v.view(n, -1, 32) * s.unsqueeze(-1)).view(n, self.in_features)
