"""Little-endian bit-stream packing of small unsigned integers into int32 words.

GPTQ- and AWQ-style checkpoints all store b-bit codes the same way: over blocks of 32
consecutive values, value ``i`` occupies bits ``[i*b, (i+1)*b)`` of a little-endian stream of
``b`` int32 words.  For b in {2, 4, 8} no value straddles a word (the familiar
"32/b values per word, LSB first"); for b = 3 this is exactly AutoGPTQ's hand-rolled 3-bit
routine (10 values, a straddler, 10 values, ...), and 5/6/7 bits follow the same rule
(``auto_round/utils/bit_packing.py``).  One definition therefore serves every bit width.

AWQ additionally shuffles each run of 8 values before packing (:data:`AWQ_PACK_ORDER`).
"""

from __future__ import annotations

import torch

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # stored slot j holds logical value AWQ_PACK_ORDER[j]
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # logical value i sits in stored slot AWQ_REVERSE_ORDER[i]


def values_per_block(bits: int) -> int:
    """How many values one run of whole words holds: 32/b for 2/4/8 bits, 32 otherwise."""
    return 32 // bits if 32 % bits == 0 else 32


def packed_size(num_values: int, bits: int) -> int:
    """Number of int32 words that hold ``num_values`` b-bit values (exact, or ValueError)."""
    blk = values_per_block(bits)
    if num_values % blk:
        raise ValueError(f"{num_values} values at {bits} bits do not fill whole words (need a multiple of {blk})")
    return num_values * bits // 32


def pack(values: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack unsigned ``values`` (< 2**bits) along ``dim`` into int32 words."""
    values = values.movedim(dim, -1)
    n = values.shape[-1]
    words = packed_size(n, bits)
    lead = values.shape[:-1]
    if 32 % bits == 0:
        per = 32 // bits
        v = values.reshape(*lead, words, per).to(torch.int64) & ((1 << bits) - 1)
        shifts = torch.arange(per, device=v.device, dtype=torch.int64) * bits
        out = (v << shifts).sum(-1)
    else:
        v = values.reshape(*lead, n // 32, 32).to(torch.int64) & ((1 << bits) - 1)
        pos = torch.arange(32, device=v.device, dtype=torch.int64) * bits
        word, offset = pos // 32, pos % 32
        out = torch.zeros(*v.shape[:-1], bits, dtype=torch.int64, device=v.device)
        out.index_add_(-1, word, (v << offset) & 0xFFFFFFFF)
        spill = (offset + bits) > 32
        high = torch.where(spill, v >> (32 - offset), torch.zeros_like(v))
        out.index_add_(-1, torch.clamp(word + 1, max=bits - 1), high)
    out = out & 0xFFFFFFFF
    out = torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)
    return out.reshape(*lead, words).movedim(-1, dim)


def unpack(packed: torch.Tensor, bits: int, dim: int = -1, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words along ``dim`` back to unsigned values."""
    if packed.dtype != torch.int32:
        raise ValueError(f"packed words must be int32, got {packed.dtype}")
    p = packed.movedim(dim, -1)
    words = p.shape[-1]
    lead = p.shape[:-1]
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        per = 32 // bits
        shifts = torch.arange(0, 32, bits, device=p.device, dtype=torch.int32)
        v = torch.bitwise_right_shift(p.unsqueeze(-1), shifts) & mask
        v = v.reshape(*lead, words * per)
    else:
        if words % bits:
            raise ValueError(f"{words} words are not whole {bits}-bit blocks")
        w = p.reshape(*lead, words // bits, bits).to(torch.int64) & 0xFFFFFFFF
        pos = torch.arange(32, device=p.device, dtype=torch.int64) * bits
        word, offset = pos // 32, pos % 32
        lo = w.index_select(-1, word) >> offset
        hi = w.index_select(-1, torch.clamp(word + 1, max=bits - 1)) << (32 - offset)
        spill = (offset + bits) > 32
        v = torch.where(spill, lo | hi, lo) & mask
        v = v.reshape(*lead, words // bits * 32)
    return v.to(dtype).movedim(-1, dim)


def _permute8(t: torch.Tensor, order, dim: int) -> torch.Tensor:
    t = t.movedim(dim, -1)
    n = t.shape[-1]
    if n % 8:
        raise ValueError(f"AWQ interleaving needs a multiple of 8 values, got {n}")
    idx = torch.as_tensor(order, dtype=torch.long, device=t.device)
    t = t.reshape(*t.shape[:-1], n // 8, 8).index_select(-1, idx).reshape(*t.shape[:-1], n)
    return t.movedim(-1, dim)


def pack_awq(values: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    return pack(_permute8(values, AWQ_PACK_ORDER, dim), bits, dim)


def unpack_awq(packed: torch.Tensor, bits: int, dim: int = -1, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    return _permute8(unpack(packed, bits, dim, dtype), AWQ_REVERSE_ORDER, dim)
