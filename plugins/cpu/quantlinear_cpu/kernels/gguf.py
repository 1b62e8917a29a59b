"""llama.cpp's block types (Q4_0 ... Q6_K) on the CPU: one kernel for the ten GGUF formats.

Keeps the file's blocks as they are (uint8 ``[N, row_bytes]``); each call decodes a bounded block
of output rows with the core's reference :func:`quantlinear.gguf_quants.dequantize_rows` (exact,
fp32), casts it to the activation dtype and multiplies, so no float copy of the weight persists
(the pattern of ``cpu.dequant`` / ``floatbase.py``).  Correct for every type and dtype; not a
llama.cpp-speed kernel (no integer dot products).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantlinear import GGUFWeights, QuantLinear
from quantlinear.formats import GGUF_FORMATS
from quantlinear.gguf_quants import dequantize_rows

#: Upper bound on the scratch float weight block, in elements (as cpu.dequant).
BLOCK_ELEMENTS = 1 << 22


class GGUFLinear(QuantLinear):
    name = "cpu.gguf"
    priority = 0
    device_families = frozenset({"cpu"})
    data_types = frozenset({"gguf"})
    bits = frozenset({2, 3, 4, 5, 6, 8})
    group_sizes = frozenset({32, 256})
    formats = frozenset(GGUF_FORMATS)
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    fuses_bias = True

    def prepare(self, w: GGUFWeights) -> None:
        self.qtype = w.qtype
        self.register_buffer("blocks", w.data.contiguous())
        self.block_rows = max(1, BLOCK_ELEMENTS // max(1, self.in_features))

    def _rows(self, r0: int, r1: int, dt: torch.dtype) -> torch.Tensor:
        return dequantize_rows(self.qtype, self.blocks[r0:r1]).to(dt)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        dt, N = x.dtype, self.out_features
        if self.block_rows >= N:
            return F.linear(x, self._rows(0, N, dt), self.bias)
        y = torch.empty(x.shape[0], N, dtype=dt, device=x.device)
        for r0 in range(0, N, self.block_rows):
            r1 = min(N, r0 + self.block_rows)
            y[:, r0:r1] = F.linear(x, self._rows(r0, r1, dt), None if self.bias is None else self.bias[r0:r1])
        return y
