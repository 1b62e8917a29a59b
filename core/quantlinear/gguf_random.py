"""Random but valid llama.cpp blocks, for tests and benchmarks of GGUF kernels.

Why not random bytes: a block's fp16 ``d``/``dmin``/``m`` fields would then be NaN or inf now and
then, and their magnitudes would span the whole fp16 range, so products overflow and relative
errors mean nothing.  Here every byte is random except those fields, which are finite fp16
values chosen so that dequantized weights stay within about +-0.1, like a real checkpoint's.
Codes, packed sub-block scales and high-bit planes are uniformly random, so every bit of the
layouts is exercised.  Signs: ``d`` is random-signed for the types whose quantizers can store a
negative ``d`` (Q4_0, Q5_0, Q3_K, Q6_K), positive otherwise; K-quant mins are positive.
"""

from __future__ import annotations

import torch

from .formats import GGUFWeights
from .gguf_quants import SCALE_FIELDS
from .gguf_types import GGUF_TYPES

#: qtype -> (largest |integer factor| of a weight, kind of the second fp16 field: "dmin" (K-quant min),
#: "m" (Q4_1/Q5_1 offset) or None, signed d).  The fields' byte offsets are gguf_quants.SCALE_FIELDS.
_FIELDS = {
    "Q4_0": (8, None, True),
    "Q4_1": (15, "m", False),
    "Q5_0": (16, None, True),
    "Q5_1": (31, "m", False),
    "Q8_0": (128, None, False),
    "Q2_K": (45, "dmin", False),
    "Q3_K": (128, None, True),
    "Q4_K": (945, "dmin", False),
    "Q5_K": (1953, "dmin", False),
    "Q6_K": (4096, None, True),
}


def _put_f16(blocks: torch.Tensor, off: int, values: torch.Tensor) -> None:
    b = values.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
    blocks[..., off] = (b & 0xFF).to(torch.uint8)
    blocks[..., off + 1] = (b >> 8).to(torch.uint8)


def random_gguf_weights(qtype: str, K: int, N: int, seed: int = 0, amplitude: float = 0.1) -> GGUFWeights:
    """``GGUFWeights`` of ``N`` rows x ``K`` input channels of type ``qtype``, |w| <~ ``amplitude``."""
    if qtype not in _FIELDS:
        raise ValueError(f"unknown GGUF type {qtype!r}; known: {', '.join(_FIELDS)}")
    t = GGUF_TYPES[qtype]
    if K % t.block:
        raise ValueError(f"{qtype} rows are whole blocks of {t.block} channels; K={K} is not a multiple")
    g = torch.Generator().manual_seed(seed)
    nb = K // t.block
    blocks = torch.randint(0, 256, (N, nb, t.type_size), generator=g, dtype=torch.int32).to(torch.uint8)
    mag, kind, signed = _FIELDS[qtype]
    offsets = [off for _, off in SCALE_FIELDS[qtype]]
    d_off, f2_off = offsets[0], (offsets[1] if len(offsets) > 1 else None)
    d = amplitude / mag * (0.5 + 0.5 * torch.rand(N, nb, generator=g))
    if signed:
        d = torch.where(torch.rand(N, nb, generator=g) < 0.5, -d, d)
    _put_f16(blocks, d_off, d)
    if kind == "dmin":  # w = d*sc*q - dmin*m: a min about half the positive range centers weights
        ratio = {"Q2_K": 1.5, "Q4_K": 7.5, "Q5_K": 15.5}[qtype]
        _put_f16(blocks, f2_off, d * ratio * (0.6 + 0.8 * torch.rand(N, nb, generator=g)))
    elif kind == "m":  # w = d*q + m, m = the block's minimum (negative)
        _put_f16(blocks, f2_off, -d * (mag / 2) * (0.8 + 0.4 * torch.rand(N, nb, generator=g)))
    return GGUFWeights(qtype, blocks.reshape(N, nb * t.type_size).contiguous())
