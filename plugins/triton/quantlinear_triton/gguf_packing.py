"""Repacking llama.cpp blocks (:class:`quantlinear.GGUFWeights`) into the layout the GGUF Triton kernels read.

Why repack: a raw block interleaves fp16 scales, 6-bit packed sub-block scales and codes whose
order differs per type (Q4_K's nibbles pair element ``l`` with ``l + 32``, Q6_K splits each code
over two arrays...).  Decoding that in a kernel costs ALU work per weight; reordering it once at
load time lets one kernel body serve every type with plain 16-byte loads.  No value is changed
and nothing is widened: the repacked tensors hold the file's bits (plus 4 bytes per K-quant
block of unpacked 6-bit scales), never a float copy of the weight.

The "sub-block layout" (every type, sub-block = 32 consecutive input channels)
-----------------------------------------------------------------------------
Each weight code is stored unsigned, ``u`` in ``[0, 2**bits)`` (Q8_0 adds 128, the others
are already unsigned), split into low bits ``LB`` (4, or 8 for Q8_0) and high bits ``HB``
(Q5: 1, Q6_K: 2):

* ``qs``  int32 ``[N, K/32 * LB]``: sub-block ``s`` has ``WPS = LB`` words; field ``f`` (bits
  ``f * LB``) of its word ``p`` holds the low bits of channel ``32 s + f * WPS + p``.  So field
  ``f`` of a sub-block's words is ``WPS`` consecutive channels: the GEMV pairs it with a
  contiguous activation vector of the same shape as the words (no layout change), and the
  tensor-core path's ``[rows, field, word]`` expansion is already in channel order;
* ``qh``  (HB > 0) ``[N, K/32 * 4]``: uint8 (HB=1) / int16 (HB=2) ``p`` of sub-block ``s``
  holds the high bits of the same channels as word ``p``, field ``f`` at bit ``f * HB``;
* ``sm``  ``[N, K/32]``, per sub-block: Q4_0/Q5_0/Q8_0 int16 ``d`` (fp16 bits); Q4_1/Q5_1
  int32 ``d | m << 16``; Q4_K/Q5_K int16 ``sc | mn << 8`` (the two 6-bit integers of the
  sub-block, unpacked); Q6_K int16 ``sc0 | sc1 << 8`` (its two int8 scales, 16 channels each);
* ``bm``  (K-quants) int32 ``[N, K/256]``: ``d | dmin << 16`` (fp16 bits; Q6_K: dmin = 0).

Dequantization, llama.cpp's arithmetic in fp32 (``dequantize_row_*`` in ``ggml-quants.c``):
``w = A * (u - OFFSET)`` for the symmetric types, ``w = A * u + B`` for the others:

=========  ==================  ===================
type       A                   OFFSET / B
=========  ==================  ===================
Q4_0/Q5_0  d                   8 / 16
Q8_0       d                   128
Q6_K       d * sc (per 16)     32
Q4_1/Q5_1  d                   B = m
Q4_K/Q5_K  d * sc              B = -(dmin * mn)
=========  ==================  ===================

``d * sc`` and ``dmin * mn`` are exact in fp32 (11-bit significand times a 6/8-bit integer),
and so is ``A * u`` for every type but Q6_K; llama.cpp's result is therefore one rounding of
the exact ``A * (u - OFFSET)`` / ``A * u + B``, which an fp32 FMA and the separate
multiply-then-add below both reproduce bit for bit (:func:`dequantize_packed`; tests check it
against ``gguf.quants.dequantize``).  The symmetric types subtract the offset first, as
llama.cpp does, so that even the sign of a zero (``d < 0``, ``q = 0``) matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantlinear.gguf_types import GGUF_TYPES

#: qtype -> (bits, low bits per field, high bits, offset added to the file's code)
CODES = {
    "Q4_0": (4, 4, 0, 0), "Q4_1": (4, 4, 0, 0), "Q5_0": (5, 4, 1, 0), "Q5_1": (5, 4, 1, 0), "Q8_0": (8, 8, 0, 128),
    "Q4_K": (4, 4, 0, 0), "Q5_K": (5, 4, 1, 0), "Q6_K": (6, 4, 2, 0),
}
#: symmetric types: w = A * (u - OFFSET); the others: w = A * u + B
OFFSET = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 128, "Q6_K": 32}
#: the types the GGUF Triton kernels implement
SUPPORTED = tuple(CODES)
#: numeric type id passed to the kernels (constexpr)
QT_ID = {name: i for i, name in enumerate(SUPPORTED)}
SUB = 32
SUPER = 256


def is_kquant(qtype: str) -> bool:
    return GGUF_TYPES[qtype].block == SUPER


@dataclass
class GGUFPacked:
    """The repacked tensors of one layer (see the module docstring)."""

    qtype: str
    in_features: int
    out_features: int
    qs: torch.Tensor
    qh: torch.Tensor | None
    sm: torch.Tensor
    bm: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.qs, self.qh, self.sm, self.bm) if t is not None]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def _wrap(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unsigned bit patterns (int64) -> the signed ``dtype`` with the same bits (two's complement)."""
    bits = torch.iinfo(dtype).bits
    x = x.to(torch.int64) & ((1 << bits) - 1)
    return (x - ((x >> (bits - 1)) << bits)).to(dtype)


def _u16(b: torch.Tensor, off: int) -> torch.Tensor:
    """Little-endian uint16 at byte ``off`` of each block, as int32 (the fp16 bits)."""
    return b[..., off].to(torch.int32) | (b[..., off + 1].to(torch.int32) << 8)


def _nibbles_half(qs: torch.Tensor) -> torch.Tensor:
    """Q4_0-style ``qs[16]``: element l = low nibble of byte l, l + 16 = its high nibble."""
    return torch.cat([qs & 15, qs >> 4], dim=-1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """``qh[4]`` (uint32 LE) -> 32 bits, bit j = element j."""
    j = torch.arange(32, device=qh.device)
    return (qh[..., j // 8] >> (j % 8).to(torch.uint8)) & 1


def _kscales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 scale bytes -> (sc[8], mn[8]) 6-bit integers (``get_scale_min_k4``)."""
    s = s.to(torch.int32)
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([lo & 63, (hi & 15) | ((lo >> 6) << 4)], dim=-1)
    mn = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=-1)
    return sc, mn


def decode_raw(qtype: str, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Raw rows uint8 ``[R, row_bytes]`` -> (codes ``u`` uint8 ``[R, K]``, ``sm``, ``bm``) of the sub-block layout."""
    t = GGUF_TYPES[qtype]
    R = data.shape[0]
    b = data.view(R, -1, t.type_size)
    nb = b.shape[1]
    bm = None
    if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        d = _u16(b, 0)
        off = 2 if qtype in ("Q4_0", "Q5_0", "Q8_0") else 4
        if qtype == "Q8_0":
            u = b[..., 2:34] ^ 0x80  # int8 q + 128
        else:
            u = _nibbles_half(b[..., off + (4 if qtype in ("Q5_0", "Q5_1") else 0):])
            if qtype in ("Q5_0", "Q5_1"):
                u = u | (_bits32(b[..., off:off + 4]) << 4)
        sm = _wrap(d, torch.int16) if off == 2 else _wrap(d.to(torch.int64) | (_u16(b, 2).to(torch.int64) << 16), torch.int32)
        return u.reshape(R, -1), sm.reshape(R, nb), None
    if qtype in ("Q4_K", "Q5_K"):
        bm = _wrap(_u16(b, 0).to(torch.int64) | (_u16(b, 2).to(torch.int64) << 16), torch.int32)
        sc, mn = _kscales(b[..., 4:16])
        qs = b[..., 16:144] if qtype == "Q4_K" else b[..., 48:176]
        lo = qs.reshape(R, nb, 4, 1, 32) >> torch.tensor([0, 4], dtype=torch.uint8, device=data.device).view(1, 1, 1, 2, 1)
        u = (lo & 15).reshape(R, nb, 8, 32)  # [.., sub 2c+h, l] = nibble h of qs[32c + l]
        if qtype == "Q5_K":
            qh = b[..., 16:48].reshape(R, nb, 1, 32) >> torch.arange(8, dtype=torch.uint8, device=data.device).view(1, 1, 8, 1)
            u = u | ((qh & 1) << 4)
        sm = sc | (mn << 8)
        return u.reshape(R, -1), _wrap(sm.reshape(R, nb * 8), torch.int16), bm
    if qtype == "Q6_K":
        bm = _u16(b, 208)
        ql = b[..., 0:128].reshape(R, nb, 2, 1, 64) >> torch.tensor([0, 4], dtype=torch.uint8, device=data.device).view(1, 1, 1, 2, 1)
        qh = b[..., 128:192].reshape(R, nb, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=data.device).view(1, 1, 1, 4, 1)
        u = (ql & 15).reshape(R, nb, 256) | ((qh & 3).reshape(R, nb, 256) << 4)
        sc = b[..., 192:208].to(torch.int32).reshape(R, nb, 8, 2)  # bytes: int8 bits
        sm = sc[..., 0] | (sc[..., 1] << 8)
        return u.reshape(R, -1), _wrap(sm.reshape(R, nb * 8), torch.int16), bm
    raise ValueError(f"GGUF type {qtype} has no Triton layout (supported: {', '.join(SUPPORTED)})")


def pack_codes(u: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes uint8 ``[R, K]`` -> (``qs`` int32, ``qh`` uint8/int16 or None) of the sub-block layout."""
    _, LB, HB, _ = CODES[qtype]
    R, K = u.shape
    wps, fpw = LB, SUB // LB
    # [R, sub, field, word] -> [R, sub, word, field]: field f of word p is channel f * wps + p
    t = u.view(R, K // SUB, fpw, wps).transpose(2, 3).to(torch.int64)
    lo = ((t & ((1 << LB) - 1)) << (torch.arange(fpw, device=u.device) * LB)).sum(dim=-1)  # disjoint bits: sum == or
    qs = _wrap(lo.reshape(R, -1), torch.int32)
    if HB == 0:
        return qs, None
    hi = ((t >> LB) << (torch.arange(fpw, device=u.device) * HB)).sum(dim=-1).reshape(R, -1)
    return qs, (hi.to(torch.uint8) if HB == 1 else _wrap(hi, torch.int16))


def repack(qtype: str, data: torch.Tensor, in_features: int, chunk_rows: int = 2048) -> GGUFPacked:
    """Raw rows (``GGUFWeights.data``) -> :class:`GGUFPacked`, on ``data``'s device, in row chunks."""
    if qtype not in CODES:
        raise ValueError(f"GGUF type {qtype} has no Triton layout (supported: {', '.join(SUPPORTED)})")
    N = data.shape[0]
    parts: dict[str, list[torch.Tensor]] = {"qs": [], "qh": [], "sm": [], "bm": []}
    for r0 in range(0, N, chunk_rows):
        u, sm, bm = decode_raw(qtype, data[r0:r0 + chunk_rows])
        qs, qh = pack_codes(u, qtype)
        for k, v in (("qs", qs), ("qh", qh), ("sm", sm), ("bm", bm)):
            if v is not None:
                parts[k].append(v)
    cat = {k: (torch.cat(v).contiguous() if v else None) for k, v in parts.items()}
    return GGUFPacked(qtype, in_features, N, cat["qs"], cat["qh"], cat["sm"], cat["bm"])


def _f16(bits: torch.Tensor) -> torch.Tensor:
    """fp16 bit patterns (int, low 16 bits) -> fp32 values."""
    return _wrap(bits, torch.int16).view(torch.float16).to(torch.float32)


def unpack_codes(p: GGUFPacked) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: codes ``u`` int32 ``[N, K]``."""
    _, LB, HB, _ = CODES[p.qtype]
    N, K = p.out_features, p.in_features
    wps, fpw = LB, SUB // LB
    f = torch.arange(fpw, device=p.qs.device)
    w = p.qs.to(torch.int64).view(N, -1, wps, 1) & 0xFFFFFFFF
    u = (w >> (f * LB)) & ((1 << LB) - 1)  # [N, sub, word, field]
    if HB:
        h = p.qh.to(torch.int64).view(N, -1, wps, 1) & 0xFFFF
        u = u | (((h >> (f * HB)) & ((1 << HB) - 1)) << LB)
    return u.transpose(2, 3).reshape(N, K).to(torch.int32)


def sub_scales(p: GGUFPacked) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 ``(A, B)`` per sub-block ``[N, K/32]`` (Q6_K: ``A`` per 16 channels, ``[N, K/16]``), exact.

    ``B`` is None for the symmetric types, whose weight is ``A * (u - OFFSET)``.
    """
    q = p.qtype
    if q in ("Q4_0", "Q5_0", "Q8_0"):
        return _f16(p.sm), None
    if q in ("Q4_1", "Q5_1"):
        return _f16(p.sm), _f16(p.sm.to(torch.int32) >> 16)
    sub_per_block = SUPER // SUB
    d = _f16(p.bm).repeat_interleave(sub_per_block, dim=1)
    s = p.sm.to(torch.int32)
    if q == "Q6_K":
        sc = torch.stack([(s << 24) >> 24, s >> 8], dim=-1).flatten(1).to(torch.float32)  # int8, int8 (sign-extended)
        return d.repeat_interleave(2, dim=1) * sc, None
    dmin = _f16(p.bm.to(torch.int32) >> 16).repeat_interleave(sub_per_block, dim=1)
    return d * (s & 0xFF).to(torch.float32), -(dmin * ((s >> 8) & 0xFF).to(torch.float32))


def dequantize_packed(p: GGUFPacked) -> torch.Tensor:
    """fp32 ``[N, K]`` weight from the repacked tensors, bit-identical to llama.cpp's dequantization."""
    A, B = sub_scales(p)
    group = p.in_features // A.shape[1]
    u = unpack_codes(p).to(torch.float32)
    A = A.repeat_interleave(group, dim=1)
    if B is None:
        return A * (u - float(OFFSET[p.qtype]))  # llama.cpp: d * (q - 8) (Q6_K: (d * sc) * q): one rounding, signed zeros too
    return A * u + B.repeat_interleave(group, dim=1)  # A * u is exact: one rounding, as llama.cpp's d1 * q - m1


def dequantize_raw(qtype: str, data: torch.Tensor, in_features: int) -> torch.Tensor:
    """fp32 reference dequantization of raw rows (torch, any device): the ground truth tests and benchmarks use."""
    return dequantize_packed(repack(qtype, data, in_features))
