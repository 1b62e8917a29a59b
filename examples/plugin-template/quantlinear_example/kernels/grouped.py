"""Group-wise integer matmul without dequantizing the weight.

``y[m, n] = sum_g s[n, g] * (x_g @ q_g^T)[m, n] - sum_g (z * s)[n, g] * sum_k x_g[m, k]``:
codes are multiplied as small integers held in the activation dtype, and scales and zeros are
applied once per group on the (much smaller) partial products.
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, QuantLinear


class GroupedIntMatmul(QuantLinear):
    name = "example.grouped"
    priority = -10
    device_families = frozenset({"cpu", "cuda"})
    bits = frozenset({2, 3, 4, 8})
    sym = frozenset({True, False})
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    needs_whole_groups = True

    def prepare(self, w: IntWeights) -> None:
        N, K = w.qweight.shape
        G = w.scales.shape[1]
        self.register_buffer("codes", w.qweight.view(N, G, K // G).contiguous())
        self.register_buffer("scales", w.scales.to(self.spec.dtype))
        self.register_buffer("zero_scales", (w.zeros.float() * w.scales.float()).to(self.spec.dtype))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        M = x.shape[0]
        N, G, g = self.codes.shape
        xg = x.view(M, G, g)
        partial = torch.einsum("mgk,ngk->mng", xg, self.codes.to(x.dtype))  # [M, N, G]
        y = (partial * self.scales).sum(-1)
        return y - xg.sum(-1) @ self.zero_scales.t()
