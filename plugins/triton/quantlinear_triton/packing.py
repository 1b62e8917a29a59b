"""Repacking canonical :class:`IntWeights` into the layouts the GPU kernels read (CUDA and ROCm plugins).

Triton layout ("slab-interleaved", in row groups; one int32 tensor of ``N * KW`` words)
--------------------------------------------------------------------------------------
Each output row ``n`` is cut along K into tiles of ``T = SLAB * VPW`` codes, where
``VPW = 32 // bits`` codes share one int32 word (2-bit: 16, 3-bit: 10, 4-bit: 8, 8-bit: 4)
and ``SLAB`` (16 or 32) is a number of words.  Word ``p`` of row ``n``'s tile ``t`` holds, at
bit offset ``j * bits``, the code of input channel ``k = t*T + j*SLAB + p``.  So one
shift-and-mask of a row's ``SLAB`` consecutive words yields ``SLAB`` *consecutive* input
channels: the kernels never reshape or gather, a tile is a plain 2-D load, and the activation
slab it pairs with is a contiguous load too.  3-bit codes use 10 per word (30 of 32 bits).  K
is padded to a whole number of tiles with code 0; the kernels mask those channels out.

The rows are stored in groups of :data:`GROUP_ROWS` (16, one MMA row block), each group
tile-major: row ``n`` of group ``g = n // 16`` (``h`` rows: 16, the last group ``N % 16`` where
that is not 0) keeps its tile ``t`` inside the run of ``h SLAB`` words that starts at word
``16 g KW + t h SLAB`` (:func:`word_offsets`).  So a group's tile is one contiguous run, and a
group's whole K is one run of ``h KW`` words, as a row block's is in a row-major matrix.  Inside
the run of a full group of 32-word tiles, the words are in the order the decode kernel's warp
loads them (*load order*): word ``w`` of row ``r = n % 16`` sits at
``256 (r // 8) + 16 (r % 8) + 128 (w // 16) + w % 16``, i.e. the run is four 512-byte blocks --
rows 0-7 words 0-15, rows 0-7 words 16-31, rows 8-15 words 0-15, rows 8-15 words 16-31 -- each
exactly one 16-byte load instruction of a warp (lane ``4 r + q`` takes words ``4q .. 4q + 3``).
A short last group, and 16-word tiles, keep their rows one after the other (``32 r + w``).  As
a row's base and a per-word hop: ``base(r) + w + hop * (w // 16)``, ``hop`` 112 in load order,
else 0.  The tensor keeps the shape ``[N, KW]`` so that its shape still names the layer's rows
and words; never index it as a row-major matrix (:func:`row_major_words`, :func:`unpack_codes`).

Why: a warp of the decode kernel (``mmv``) reads a 16-row group's tile at each step; row-major,
those are 16 runs of 128 bytes ``KW`` words apart; grouped, one 2 KB run, which on an H100
(CUDA-graph chains, same run; ``plugins/cuda/benchmarks/results/h100-session19-probes-2026-11-27.txt``)
took M = 1 on 14336 x 4096 from 13.8 to 13.2 us with the same configuration, MXFP4 there from
15.5 to 14.7 (activation kernel included), M = 2..16 0-3% lower, and left the prefill kernel
(``wg``) at M = 256 / 1024 within -1..+2.5%.  Storing every row's tile ``t`` side by side across
the whole tensor (step-major) was faster still at M <= 16 (13.1 us there) but cost ``wg`` up to
12% at M = 1024 (a program's weights then span the whole tensor).  With the rows one after the
other inside the run, each of the warp's 16-byte loads touched half of eight 128-byte lines; in
load order it reads four whole lines, 512 contiguous bytes: on an H100 (same run,
``results/h100-session20-coalesced-probe-2026-11-27.json``) 14336 x 4096 M = 1 13.04 -> 12.71 us,
4096 x 14336 12.75 -> 12.31, the 117 MB shapes 45.6 -> 44.1 / 44.3, M = 16 1-3% and MXFP4 / NVFP4
M = 1 3-7% lower.

Every slab lies inside one quantization group (``SLAB`` divides the group size, or there is
one group per row), so scales/zeros are one value per (row, slab).  Scales keep the
checkpoint's exact values (fp16 scales stay fp16, even for bf16 activations: the kernels
compute in fp32), stored ``[G, N]`` so a block of rows reads them contiguously.  Zero points
are dropped entirely when every group of the layer has the same zero (every symmetric
checkpoint): the kernels then subtract one constant.  Otherwise they are stored as uint8
``[G, N]`` (int16 when a zero does not fit).

tinygemm layout
---------------
``aten._convert_weight_to_int4pack`` of uint8 ``[N, K/2]`` (even k in the high nibble) and
``qScaleAndZeros [K/g, N, 2]`` with ``zero = (8 - z) * s``, as PyTorch's int4 kernel wants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantlinear import IntWeights

#: bits -> codes per int32 word
VPW = {2: 16, 3: 10, 4: 8, 5: 6, 6: 5, 7: 4, 8: 4}

#: code widths of the paired GEMV (``gemv16``) per activation dtype (bf16: ``128 + q`` is exact in bf16 for q < 128 only)
GEMV16_BITS = {torch.float16: (2, 4, 8), torch.bfloat16: (2, 4)}

#: 2**23: OR-ing a code into the mantissa of this float gives 2**23 + code exactly
MAGIC = 8388608.0


def values_per_word(bits: int) -> int:
    return VPW[bits]


def choose_slab(group_size: int, in_features: int) -> int | None:
    """Words per slab for a layer: 32 where the groups allow it, else 16, else None."""
    if group_size >= in_features:
        return 32
    for slab in (32, 16):
        if group_size % slab == 0:
            return slab
    return None


@dataclass(frozen=True)
class SlabMeta:
    bits: int
    slab: int
    group_size: int  # effective (per-channel: in_features)
    in_features: int
    out_features: int

    @property
    def vpw(self) -> int:
        return VPW[self.bits]

    @property
    def tile_k(self) -> int:
        return self.slab * self.vpw

    @property
    def k_tiles(self) -> int:
        return -(-self.in_features // self.tile_k)

    @property
    def words_per_row(self) -> int:
        return self.k_tiles * self.slab


def slabs_per_group(bits: int, slab: int, group_size: int, in_features: int) -> int:
    """How many consecutive slabs of a tile share one scale, from the group layout."""
    vpw = 32 // bits
    T = slab * vpw
    if group_size >= in_features:
        return vpw
    if T % group_size == 0:
        return group_size // slab
    if group_size % T == 0:
        return vpw
    return 1


#: rows a group of the word layout holds (see the module docstring)
GROUP_ROWS = 16


#: the extra words between the two 16-word halves of a row's 32-word tile in load order (module docstring)
LOAD_ORDER_HOP = 112


def word_offsets(rows: torch.Tensor, N: int, KW: int, unit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rows ``rows``' words start, how far apart their ``unit``-word tiles lie, and their hop (the kernels
    compute the same): word ``w`` of tile ``t`` of row ``n`` is at ``base + t * stride + w + hop * (w // 16)``."""
    g16 = rows - rows % GROUP_ROWS
    r = rows - g16
    h = (N - g16).clamp(max=GROUP_ROWS)
    if unit != 32:
        return g16 * KW + r * unit, h * unit, torch.zeros_like(rows)
    full = h == GROUP_ROWS
    base = g16 * KW + torch.where(full, 256 * (r // 8) + 16 * (r % 8), 32 * r)
    return base, h * 32, torch.where(full, LOAD_ORDER_HOP, 0)


def _load_order(tiles: torch.Tensor) -> torch.Tensor:
    """``[..., 16 rows, 32 words]`` full-group tiles -> the same words in load order (module docstring)."""
    lead = tiles.shape[:-2]
    return tiles.reshape(*lead, 2, 8, 2, 16).transpose(-3, -2).reshape(*lead, GROUP_ROWS, 32)


def _from_load_order(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_load_order`."""
    lead = tiles.shape[:-2]
    return tiles.reshape(*lead, 2, 2, 8, 16).transpose(-3, -2).reshape(*lead, GROUP_ROWS, 32)


def grouped_words(rm: torch.Tensor, unit: int) -> torch.Tensor:
    """Row-major words ``[N, KW]`` -> the grouped tile-major layout (module docstring; tiles of ``unit`` words, full
    groups of 32-word tiles in load order)."""
    N, KW = rm.shape
    G, h = divmod(N, GROUP_ROWS)
    full = rm[:G * GROUP_ROWS].reshape(G, GROUP_ROWS, KW // unit, unit).permute(0, 2, 1, 3)
    if unit == 32:
        full = _load_order(full)
    last = rm[G * GROUP_ROWS:].reshape(h, KW // unit, unit).permute(1, 0, 2).reshape(-1)
    return torch.cat([full.reshape(-1), last]).view(N, KW)


def row_major_words(words: torch.Tensor, unit: int) -> torch.Tensor:
    """The grouped words ``[N, KW]`` (:func:`grouped_words`) as a row-major ``[N, KW]`` copy: row ``n``'s words in
    order (tests, debugging, exports)."""
    N, KW = words.shape
    G, h = divmod(N, GROUP_ROWS)
    flat = words.reshape(-1)
    full = flat[:G * GROUP_ROWS * KW].view(G, KW // unit, GROUP_ROWS, unit)
    if unit == 32:
        full = _from_load_order(full)
    full = full.permute(0, 2, 1, 3).reshape(G * GROUP_ROWS, KW)
    last = flat[G * GROUP_ROWS * KW:].view(KW // unit, h, unit).permute(1, 0, 2).reshape(h, KW)
    return torch.cat([full, last])


def pack_codes(q: torch.Tensor, bits: int, slab: int, *, chunk_rows: int = 2048) -> torch.Tensor:
    """uint8 codes ``[N, K]`` -> int32 ``[N, KW]`` words in the grouped slab layout (see the module docstring)."""
    N, K = q.shape
    vpw = VPW[bits]
    T = slab * vpw
    kt = -(-K // T)
    chunk_rows = max(GROUP_ROWS, chunk_rows // GROUP_ROWS * GROUP_ROWS)  # (whole groups a chunk; the last may be short)
    out = torch.empty(N * kt * slab, dtype=torch.int32, device=q.device)
    shifts = (torch.arange(vpw, device=q.device, dtype=torch.int64) * bits).view(1, 1, vpw, 1)
    for r0 in range(0, N, chunk_rows):
        r1 = min(N, r0 + chunk_rows)
        qp = torch.zeros(r1 - r0, kt * T, dtype=torch.int64, device=q.device)
        qp[:, :K] = q[r0:r1].to(torch.int64)
        words = (qp.view(r1 - r0, kt, vpw, slab) << shifts).sum(dim=2)  # disjoint bits: sum == or
        words = torch.where(words >= 2**31, words - 2**32, words)
        out[r0 * kt * slab:r1 * kt * slab] = grouped_words(words.view(r1 - r0, kt * slab).to(torch.int32), slab).view(-1)
    return out.view(N, kt * slab)


def unpack_codes(words: torch.Tensor, bits: int, slab: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes` (tests, debugging)."""
    N, KW = words.shape
    vpw = VPW[bits]
    kt = KW // slab
    w = row_major_words(words, slab).to(torch.int64).view(N, kt, 1, slab) & 0xFFFFFFFF
    shifts = (torch.arange(vpw, device=words.device, dtype=torch.int64) * bits).view(1, 1, vpw, 1)
    q = (w >> shifts) & ((1 << bits) - 1)
    return q.view(N, kt * vpw * slab)[:, :in_features].to(torch.uint8)


def constant_zero(zeros: torch.Tensor) -> int | None:
    """The zero point shared by every group, or None when they differ."""
    if zeros.numel() == 0:
        return 0
    first = zeros.reshape(-1)[:1]
    if bool((zeros == first).all()):
        return int(first.item())
    return None


def pack_zeros(zeros: torch.Tensor) -> torch.Tensor:
    """int16 ``[N, G]`` true zeros -> ``[G, N]`` uint8 (int16 if out of range)."""
    zt = zeros.t().contiguous()
    if int(zt.min()) >= 0 and int(zt.max()) <= 255:
        return zt.to(torch.uint8)
    return zt.to(torch.int16)


def pack_scales(scales: torch.Tensor) -> torch.Tensor:
    """``[N, G]`` -> ``[G, N]``, values unchanged (fp16 stays fp16; others become fp32)."""
    s = scales.t().contiguous()
    return s if s.dtype in (torch.float16, torch.float32) else s.to(torch.float32)


def dequantize_slabs(words: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, zero_point: int, meta: SlabMeta) -> torch.Tensor:
    """fp32 ``[N, K]`` weight from the packed tensors (reference for tests)."""
    q = unpack_codes(words, meta.bits, meta.slab, meta.in_features).to(torch.float32)
    gi = torch.arange(meta.in_features, device=q.device) // meta.group_size
    s = scales.t().to(torch.float32).index_select(1, gi)
    z = torch.full_like(s, float(zero_point)) if zeros is None else zeros.t().to(torch.float32).index_select(1, gi)
    return (q - z) * s


# ---- tinygemm -----------------------------------------------------------------------------
TINYGEMM_GROUPS = (256, 128, 64, 32)


def tinygemm_group(group_size: int) -> int | None:
    """The largest group size tinygemm accepts that tiles ``group_size`` exactly."""
    return next((g for g in TINYGEMM_GROUPS if group_size % g == 0), None)


def tinygemm_inner_k_tiles(in_features: int) -> int | None:
    return next((t for t in (8, 4, 2) if in_features % (t * 16) == 0), None)


def tinygemm_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (< 16) -> uint8 ``[N, K/2]``, even k in the high nibble."""
    q = q.to(torch.uint8)
    return ((q[:, 0::2] << 4) | q[:, 1::2]).contiguous()


def tinygemm_scales_and_zeros(w: IntWeights, group_size: int, op_group: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``[K/op_group, N, 2]``: (s, (8 - z) * s) so that ``(q - 8) * s + zero == (q - z) * s``."""
    s = w.scales.to(torch.float32)
    zero = (8 - w.zeros.to(torch.float32)) * s
    sz = torch.stack([s, zero], dim=-1)  # [N, G, 2]
    rep = group_size // op_group
    if rep > 1:
        sz = sz.repeat_interleave(rep, dim=1)
    return sz.transpose(0, 1).contiguous().to(dtype)
