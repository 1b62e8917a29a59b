"""The general CPU kernel: any int scheme (2-8 bits, any group size, act-order), any dtype.

Weights stay as uint8 codes plus per-group scales and zeros; each call dequantizes a block
of output channels at a time into a bounded scratch buffer and multiplies, so no float copy
of the whole weight ever persists (or even exists at once for large layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantlinear import IntWeights, QuantLinear

#: Upper bound on the scratch float weight block, in elements.
BLOCK_ELEMENTS = 1 << 22


class DequantLinear(QuantLinear):
    name = "cpu.dequant"
    priority = 0
    device_families = frozenset({"cpu"})
    bits = frozenset({2, 3, 4, 5, 6, 7, 8})
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    handles_g_idx = True

    def prepare(self, w: IntWeights) -> None:
        dt = self.spec.dtype
        gi = w.group_index(self.spec.group_size)
        self.register_buffer("codes", w.qweight.contiguous())
        self.register_buffer("scales", w.scales.to(dt).contiguous())
        self.register_buffer("zeros", w.zeros.to(dt).contiguous())
        self.register_buffer("group_of_k", gi if w.g_idx is not None else None)
        self.block_rows = max(1, BLOCK_ELEMENTS // max(1, self.in_features))

    def _dequant_rows(self, r0: int, r1: int) -> torch.Tensor:
        q = self.codes[r0:r1].to(self.spec.dtype)
        s, z = self.scales[r0:r1], self.zeros[r0:r1]
        if self.group_of_k is not None:
            return (q - z.index_select(1, self.group_of_k)) * s.index_select(1, self.group_of_k)
        g = self.spec.group_size
        K = self.in_features
        G = s.shape[1]
        if G * g == K:
            return ((q.view(r1 - r0, G, g) - z.unsqueeze(-1)) * s.unsqueeze(-1)).view(r1 - r0, K)
        return (q - z.repeat_interleave(g, 1)[:, :K]) * s.repeat_interleave(g, 1)[:, :K]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        N = self.out_features
        if self.block_rows >= N:
            return F.linear(x, self._dequant_rows(0, N))
        y = torch.empty(x.shape[0], N, dtype=x.dtype, device=x.device)
        for r0 in range(0, N, self.block_rows):
            r1 = min(N, r0 + self.block_rows)
            y[:, r0:r1] = F.linear(x, self._dequant_rows(r0, r1))
        return y
