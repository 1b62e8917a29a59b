"""A token embedding kept in its GGUF blocks: only the looked-up rows are dequantized.

llama.cpp quantizes ``token_embd`` (Q4_K in a q4_k_m file, Q6_K when it doubles as the output
layer).  Dequantizing it at load time would hold ``vocab x hidden`` floats (1 GiB in bf16 for a
128k-vocabulary 8B model, 2.5x its Q6_K size); this module keeps the file's bytes and decodes
``len(ids)`` rows per call, exactly (:func:`quantlinear.gguf_quants.dequantize_rows`, pure torch,
any device).  When the file has no ``output.weight`` the lm_head is a quantized linear over
the same bytes (one tensor shared by both on the CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from ..gguf_quants import dequantize_rows
from ..gguf_types import GGUF_TYPES


class GGUFEmbedding(nn.Module):
    """``nn.Embedding`` lookalike over GGUF blocks; buffer ``weight``: uint8 ``[num_embeddings, row_bytes]``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, qtype: str, dtype: torch.dtype,
                 padding_idx: int | None = None, device: torch.device | str = "meta") -> None:
        super().__init__()
        t = GGUF_TYPES[qtype]
        self.num_embeddings, self.embedding_dim, self.qtype = num_embeddings, embedding_dim, qtype
        self.padding_idx, self.dtype = padding_idx, dtype
        self.register_buffer("weight", torch.empty(num_embeddings, t.row_bytes(embedding_dim), dtype=torch.uint8, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight.index_select(0, ids.reshape(-1))
        return dequantize_rows(self.qtype, rows).to(self.dtype).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}, dtype={str(self.dtype).replace('torch.', '')}"
