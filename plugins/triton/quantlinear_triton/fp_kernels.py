"""Triton kernels for the float / microscaling schemes: ``y = actq(x) @ W^T (+ b)``, W decoded in registers.

Imported lazily (first launch); importing it imports Triton.  The weight layout is
:mod:`quantlinear_triton.fp_packing`'s (codes slab-interleaved in int32 words, block scales as
bytes ``[G, N]``, a per-row fp32 factor).  No float copy of the weight exists at any time.

* ``_fp_gemv_kernel`` (decode, small M; CUDA cores): a program owns ``BN`` rows and a range of K
  tiles, loads ``[BN, SLAB]`` words per tile (16-byte vectors, the next tile prefetched), decodes
  each plane to fp32, multiplies by the plane's block scale (exact) and accumulates ``w * x``
  element-wise in fp32; rows are reduced once after the K loop.  Weights are read exactly once.
* ``_fp_gemv16_kernel`` (``gemv16``: fp16 activations, E2M1 / E0M4 / hardware E4M3 on CUDA): the
  same loop with two codes decoded per PTX sequence into an fp16x2 pair, multiplied by the activation
  pair in f16x2, four products per block summed in fp16 (``psum`` 4), then fp32 with the block scale;
  the weight is decoded to ``value / 32`` (``/ 2048``) so that no fp16 product or sum can overflow.
  Without PTX (interpreter, ROCm) the same schedule on exact fp32 values.  ``dqmm`` (large M): the
  weight dequantized into a temporary by ``_fp_dequant_kernel``, then ``F.linear`` (cuBLAS).
* ``FOLD`` (``gemv16``, psum 4): 4-bit activations
  as :func:`quantize_activations_split` writes them (unscaled E2M1 values as packed fp16 pairs, fp32
  block scales folded into the weight's); the PTX decode then needs no power-of-two multiply, and
  every fp16 product and 4-term sum is exact (``_quad_prod_fold``).
* ``_fp_dot_kernel`` (larger M; tensor cores / matrix cores): each plane is decoded and scaled in
  fp32, cast to the activation dtype and fed to ``tl.dot`` (fp32 accumulation; ``ieee`` precision
  for fp32 activations).  ``SWAP`` computes ``y^T = W x^T`` so that the skinny M side is the narrow
  side of the instruction, as the int kernels do.
* Both split K over programs where N alone gives too few: partials go to the int kernels' persistent fp32 workspace and the
  last program of a tile (a counter per tile, the int kernels' persistent buffer, reset by that
  program) reduces them in a fixed order: one launch, deterministic, CUDA-graph safe.
* ``_act_quant_kernel``: the schemes' activation quantization in one launch, bit-exact with
  :mod:`quantlinear.fpquant` (see :func:`quantize_activations`; ``SPLIT``: values and block scales
  apart, :func:`quantize_activations_split`).
* ``_fp_dequant_kernel``: the fp32 (or half) weight, in the reference's operation order (tests).

Decoding, without tables or conversions: an element's magnitude bits are shifted into the
exponent/mantissa fields of an fp32 (``E2M1`` ``e1 e0 m`` -> bits 24..22, ``E4M3`` ``eeee mmm``
-> bits 26..20, ``E5M2`` -> 27..21, ``E0M4`` ``m`` -> 23..21) and the sign into bit 31; the float
that reads is the element value times ``2**-126`` (``2**-120``, ``2**-112``, ``2**-126``) --
subnormal exactly where the element is subnormal -- and one multiplication by the power of two
restores it, exactly (fp32 subnormals are not flushed: Triton's NVIDIA backend sets FTZ for
libdevice calls only, its AMD backend keeps IEEE denormals).  FP8 can instead be decoded by the
hardware (``ELEM`` E4M3_NV: ``tl.float8e4nv``, sm89+; E4M3_B8: e4m3fnuz bytes, ``tl.float8e4b8``,
gfx942).  E8M0 scales are ``bitcast(e << 23)`` (``e = 0``: ``2**-127``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantlinear.errors import QuantLinearError

from .fp_packing import A_FP8, A_MX_E2M1, A_NONE, A_NVFP4, A_RCEIL, E0M4, E2M1, E4M3_NV, S_NONE, bits_of, row_words, slab_for
from . import launch as _fast
from .kernels import (BACKEND_OPTIONS, COUNTER_SLOTS, MAXS, _asm_ok, _pack_h2, _pdl_enter, _pdl_exit, _tile_of, _word_cols, _word_rows, pdl_ok,
                      reserve, split_buffers)
from .runtime import interpreting


# ---- element and scale decoding -------------------------------------------------------------------
@triton.jit
def _decode(c, ELEM: tl.constexpr):
    """Codes in the low bits of int32 ``c`` (higher bits ignored) -> exact fp32 element values."""
    if ELEM == 0:  # E2M1
        v = (((c & 7) << 22) | ((c & 8) << 28)).to(tl.float32, bitcast=True) * 8.507059173023462e37  # 2**126
    elif ELEM == 1:  # E0M4 (m / 4)
        v = (((c & 7) << 21) | ((c & 8) << 28)).to(tl.float32, bitcast=True) * 8.507059173023462e37
    elif ELEM == 2:  # E4M3 (e4m3fn bytes; e4m3fnuz bytes but its NaN)
        v = (((c & 0x7F) << 20) | ((c & 0x80) << 24)).to(tl.float32, bitcast=True) * 1.329227995784916e36  # 2**120
    elif ELEM == 3:  # E5M2
        v = (((c & 0x7F) << 21) | ((c & 0x80) << 24)).to(tl.float32, bitcast=True) * 5.192296858534828e33  # 2**112
    elif ELEM == 4:  # E4M3 by the hardware
        v = (c & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:  # e4m3fnuz bytes by the hardware: half the e4m3fn value of the same byte
        v = (c & 0xFF).to(tl.uint8).to(tl.float8e4b8, bitcast=True).to(tl.float32) * 2.0
    return v


@triton.jit
def _block_scale(b, SCALE: tl.constexpr):
    """Scale bytes (int32) -> fp32: E8M0 ``2**(b - 127)`` or E4M3."""
    if SCALE == 1:
        v = tl.where(b == 0, 0x400000, b << 23).to(tl.float32, bitcast=True)
    else:
        v = _decode(b, 2)
    return v


@triton.jit
def _e8m0_times(b, xs):
    """E8M0 scale bytes ``b`` (int32 ``[BN]``) times ``xs``, an fp32 power of two ``2**-127 .. 2**127`` (an MX activation
    block scale), as one integer multiply-add per byte: ``2**(b - 127) * 2**(e - 127)`` has the exponent field
    ``b + e - 127`` (``e`` the E8M0 code of ``xs``: its bits >> 23, also for the subnormal ``2**-127``).  Exact where
    the product is a normal fp32; products below ``2**-126`` (contributions under ~1e-36) become 0 instead of a
    subnormal, products of ``2**128`` and more (which overflow fp32 either way) NaN instead of inf.
    """
    addend = ((xs.to(tl.int32, bitcast=True) >> 23) - 127) << 23  # once per block, for all rows
    return tl.maximum(b * 8388608 + addend, 0).to(tl.float32, bitcast=True)


# ---- the end of a GEMM tile: split-K reduction, row scale, bias, store ------------------------------
@triton.jit
def _fp_store(acc, offs, mask, offs_n, n_mask, y_ptr, r_ptr, b_ptr,
              N_IS_DIM0: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr):
    if HAS_ROWS:
        r = tl.load(r_ptr + offs_n, mask=n_mask, other=0.0)
        if N_IS_DIM0:
            acc = acc * r[:, None]
        else:
            acc = acc * r[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if N_IS_DIM0:
            acc = acc + b[:, None]
        else:
            acc = acc + b[None, :]
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fp_finish(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, r_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
               N_IS_DIM0: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr):
    if N_IS_DIM0:
        offs = offs_m[None, :] * N + offs_n[:, None]
        mask = n_mask[:, None] & m_mask[None, :]
    else:
        offs = offs_m[:, None] * N + offs_n[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
    if USE_SPLIT:
        tl.store(ws_ptr + pid_k * M * N + offs, acc, mask=mask)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        if old == split_k - 1:  # every other split of this tile has stored its partial
            total = tl.zeros_like(acc)
            for s in range(0, split_k):
                total += tl.load(ws_ptr + s * M * N + offs, mask=mask, other=0.0, cache_modifier=".cg")
            _fp_store(total, offs, mask, offs_n, n_mask, y_ptr, r_ptr, b_ptr, N_IS_DIM0, HAS_ROWS, HAS_BIAS)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")  # ready for the next launch
    else:
        _fp_store(acc, offs, mask, offs_n, n_mask, y_ptr, r_ptr, b_ptr, N_IS_DIM0, HAS_ROWS, HAS_BIAS)


# ---- GEMV (decode) --------------------------------------------------------------------------------
@triton.jit
def _wrow(offs_n, N, KW, SLAB: tl.constexpr, BITS: tl.constexpr):
    """Where rows ``offs_n``' words start, how far apart their slabs (4-bit codes: 32-word units) lie, and their hop,
    see :func:`.fp_packing.pack_slabs`: 4-bit codes in the grouped layout of :mod:`.packing` by 32-word units (full
    groups in load order; :func:`.kernels._word_rows`, ``KW`` rounded up to whole units); 8-bit codes row-major
    (``torch._scaled_mm`` reads FP8 bytes as a matrix)."""
    if BITS == 4:
        return _word_rows(offs_n, N, tl.cdiv(KW, 32) * 32, 32)
    return offs_n * KW, offs_n * 0 + SLAB, offs_n * 0


@triton.jit
def _wslab(t, wst, hop, SLAB: tl.constexpr, BITS: tl.constexpr):
    """Words from rows' slab 0 to their slab ``t``, ``[BN, 1]``, from :func:`_wrow`'s stride ``wst`` and hop (4-bit
    16-word slabs: two to a unit, the second ``16 + hop`` words after the first)."""
    U: tl.constexpr = 32 // SLAB if BITS == 4 else 1
    if U == 1:
        return (t * wst)[:, None]
    return ((t // U) * wst + (t % U) * (SLAB + hop))[:, None]


@triton.jit
def _fp_gemv_kernel(x_ptr, w_ptr, s_ptr, r_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, KW, G, tiles_per_split, split_k,
                    ELEM: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr, SLAB: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
                    USE_SPLIT: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr = False):
    VPW: tl.constexpr = 32 // BITS
    T: tl.constexpr = SLAB * VPW
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    num_pid_n = tl.num_programs(0)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, SLAB)
    offs_m = pid_m * BM + tl.arange(0, BM)
    n_mask = offs_n < N
    m_mask = offs_m < M
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, KW // SLAB)
    wrow, wst, hop = _wrow(offs_n, N, KW, SLAB, BITS)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    x_ptrs = x_ptr + offs_m[:, None] * K + offs_p[None, :]
    _pdl_enter(PDL)
    w_next = tl.load(w_ptrs + _wslab(t_start, wst, hop, SLAB, BITS), mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    if BM == 1:
        acc = tl.zeros([BN, SLAB], dtype=tl.float32)  # one FMA per weight; rows reduced after the loop
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    for t in range(t_start, t_end):
        w = w_next
        w_next = tl.load(w_ptrs + _wslab(t + 1, wst, hop, SLAB, BITS), mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
        for j in tl.static_range(VPW):
            k0 = t * T + j * SLAB
            dq = _decode(w >> (j * BITS), ELEM)
            if SCALE != 0:
                g = tl.minimum(t * VPW + j, G - 1)  # padded planes: any valid block (x is 0 there)
                sb = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.int32)
                dq = dq * _block_scale(sb, SCALE)[:, None]
            if EVEN_K:
                xv = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0).to(tl.float32)
            else:
                xv = tl.load(x_ptrs + k0, mask=m_mask[:, None] & ((k0 + offs_p) < K)[None, :], other=0.0).to(tl.float32)
            if BM == 1:
                acc += dq * xv
            else:
                acc += tl.sum(dq[None, :, :] * xv[:, None, :], axis=2)
    if BM == 1:
        out = tl.sum(acc, axis=1)[None, :]
    else:
        out = acc
    _pdl_exit(PDL)
    _fp_finish(out, offs_m, offs_n, m_mask, n_mask, y_ptr, r_ptr, b_ptr, ws_ptr, cnt_ptr, pid_m * num_pid_n + pid_n, pid_k,
               split_k, M, N, False, HAS_ROWS, HAS_BIAS, USE_SPLIT)


def _quad_ptx(decode, c: str | None = None) -> str:
    """PTX of :func:`_quad_prod_h` / :func:`_quad_prod_fold`: words ``$2..$5`` each decoded to an fp16 pair in ``t`` by
    ``decode(word)``, times ``c`` (a power of two, when given), times the activation pair ``$6..$9``, summed in f16x2
    into ``s``; the sum's two lanes out as fp32 ``$0``, ``$1``.  ``$10`` / ``$11``: the rotations of 4-bit decodes."""
    out = "{ .reg .b32 " + ("a, b, t, c, s" if c else "a, b, t, s") + "; .reg .b16 l, h; " + (f"mov.b32 c, {c}; " if c else "")
    for i in range(4):
        out += decode(f"${2 + i}") + ("mul.rn.f16x2 t, t, c; " if c else "")
        out += f"mul.rn.f16x2 s, t, ${6 + i}; " if i == 0 else f"fma.rn.f16x2 s, t, ${6 + i}, s; "
    return out + "mov.b32 {l, h}, s; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }"


def _rotated4(mask: str):
    """4-bit code pair -> fp16 pair: rotate the magnitude bits under ``mask`` (fp16 bits 11-9 for E2M1, 9-7 for E0M4)
    and the sign bit to bit 15 of each half (funnel shifts by ``$10`` / ``$11``), one lop3 joins them."""
    return lambda w: (f"shf.l.wrap.b32 a, {w}, {w}, $10; shf.l.wrap.b32 b, {w}, {w}, $11; and.b32 b, b, 0x80008000; "
                      f"lop3.b32 t, a, {mask}, b, 0xEA; ")


def _e4m3_pair(half: str):
    """Two E4M3 bytes (the word's low or high half) -> fp16 pair by the hardware (sm89+)."""
    return lambda w: f"mov.b32 {{l, h}}, {w}; cvt.rn.f16x2.e4m3x2 t, {half}; "


_QUAD_IO = tl.constexpr("=r,=r,r,r,r,r,r,r,r,r,r,r")
_QUAD_E2M1 = tl.constexpr(_quad_ptx(_rotated4("0x0E000E00"), "0x60006000"))  # value / 32
_QUAD_E0M4 = tl.constexpr(_quad_ptx(_rotated4("0x03800380"), "0x64006400"))  # value / 32
_QUAD_E4M3_LO = tl.constexpr(_quad_ptx(_e4m3_pair("l"), "0x10001000"))  # value / 2048
_QUAD_E4M3_HI = tl.constexpr(_quad_ptx(_e4m3_pair("h"), "0x10001000"))
_QUAD_E2M1_FOLD = tl.constexpr(_quad_ptx(_rotated4("0x0E000E00")))  # value * 2**-14, unscaled activations
_QUAD_E0M4_FOLD = tl.constexpr(_quad_ptx(_rotated4("0x03800380")))  # value * 2**-15


# ---- paired-fp16 GEMV (fp16 activations; E2M1, E0M4, E4M3 on sm89+) ---------------------------------------
@triton.jit
def _pair_prod_h(w, xp, ELEM: tl.constexpr, HALF: tl.constexpr):
    """Per word, two codes decoded straight into an fp16 pair, times the activation pair ``xp``; both products in fp32 (CUDA).

    E2M1 / E0M4: the codes at bits 0-3 (low lane) and 16-19 (high lane) of ``w``.  The magnitude bits go
    to fp16 bits 11-9 (E2M1 ``e1 e0 m``: the value times ``2**-14``, 0.5 a subnormal) or 9-7 (E0M4 ``m``:
    ``m * 2**-17``), the sign to bit 15, and one ``mul.f16x2`` by ``2**11`` / ``2**12`` makes each lane
    exactly ``value / 8`` (normal: >= 2**-5).  E4M3 (``HALF`` 0 / 1: bytes 0-1 / 2-3 of ``w``): one
    ``cvt.rn.f16x2.e4m3x2`` (sm89+), times ``2**-9`` (exact; ``value / 512``).  The weight is scaled down so
    that no fp16 product can overflow (|w| <= 0.875, |x| <= 65504); the caller multiplies the sum back.
    """
    if ELEM == 0:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 a, b, t, c; .reg .b16 l, h; shl.b32 a, $2, 9; shl.b32 b, $2, 12; and.b32 b, b, 0x80008000; "
            "lop3.b32 t, a, 0x0E000E00, b, 0xEA; mov.b32 c, 0x68006800; mul.rn.f16x2 t, t, c; mul.rn.f16x2 t, t, $3; "
            "mov.b32 {l, h}, t; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=r,=r,r,r", [w, xp], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    elif ELEM == 1:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 a, b, t, c; .reg .b16 l, h; shl.b32 a, $2, 7; shl.b32 b, $2, 12; and.b32 b, b, 0x80008000; "
            "lop3.b32 t, a, 0x03800380, b, 0xEA; mov.b32 c, 0x6C006C00; mul.rn.f16x2 t, t, c; mul.rn.f16x2 t, t, $3; "
            "mov.b32 {l, h}, t; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=r,=r,r,r", [w, xp], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    elif HALF == 0:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t, c; .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.rn.f16x2.e4m3x2 t, l; mov.b32 c, 0x18001800; "
            "mul.rn.f16x2 t, t, c; mul.rn.f16x2 t, t, $3; mov.b32 {l, h}, t; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=r,=r,r,r", [w, xp], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t, c; .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.rn.f16x2.e4m3x2 t, h; mov.b32 c, 0x18001800; "
            "mul.rn.f16x2 t, t, c; mul.rn.f16x2 t, t, $3; mov.b32 {l, h}, t; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=r,=r,r,r", [w, xp], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def _quad_prod_h(w0, w1, w2, w3, x0, x1, x2, x3, ra, rb, ELEM: tl.constexpr, HALF: tl.constexpr):
    """Four words' code pairs (as :func:`_pair_prod_h`) times four activation pairs, summed in fp16x2; the pair in fp32 (CUDA).

    The weight is decoded to ``value / 32`` (E2M1 ``* 2**9``, E0M4 ``* 2**10``; normal, >= 2**-7) or
    ``value / 2048`` (E4M3, ``* 2**-11``, exact), so a sum of four fp16 products stays below
    ``4 * 0.22 * 65504``: it cannot overflow for any finite fp16 activation.  4-bit codes: the pair sits
    at bits ``4i .. 4i + 3`` and ``4i + 16 ..`` of each word; ``ra`` / ``rb`` rotate the magnitude bits to
    fp16 bits 11-9 (E0M4 9-7) and the sign bit to 15 (funnel shifts, the rotation a constant).
    """
    if ELEM == 0:
        asm: tl.constexpr = _QUAD_E2M1
    elif ELEM == 1:
        asm: tl.constexpr = _QUAD_E0M4
    elif HALF == 0:
        asm: tl.constexpr = _QUAD_E4M3_LO
    else:
        asm: tl.constexpr = _QUAD_E4M3_HI
    return tl.inline_asm_elementwise(asm, _QUAD_IO, [w0, w1, w2, w3, x0, x1, x2, x3, ra, rb], dtype=(tl.float32, tl.float32),
                                     is_pure=True, pack=1)


@triton.jit
def _quad_prod_fold(w0, w1, w2, w3, x0, x1, x2, x3, ra, rb, ELEM: tl.constexpr):
    """:func:`_quad_prod_h` for unscaled 4-bit activation values (``FOLD``): no power-of-two multiply.

    The activation pairs hold E2M1 grid values (``|v| <= 6``, multiples of 0.5; the block scale is
    applied in fp32 with the weight's), so the weight lanes are used as read: ``value * 2**-14``
    (E2M1, 0.5 a subnormal) or ``value * 2**-15`` (E0M4).  Every product is a multiple of ``2**-18``
    below ``2**-8`` and a sum of four below ``2**-6``: exact in fp16 (subnormals included), so the
    pair sum is the exact block partial times ``2**-14`` / ``2**-15``.  Per code pair: two funnel
    shifts, an and, a lop3 and the f16x2 fma.
    """
    if ELEM == 0:
        asm: tl.constexpr = _QUAD_E2M1_FOLD
    else:
        asm: tl.constexpr = _QUAD_E0M4_FOLD
    return tl.inline_asm_elementwise(asm, _QUAD_IO, [w0, w1, w2, w3, x0, x1, x2, x3, ra, rb], dtype=(tl.float32, tl.float32),
                                     is_pure=True, pack=1)


@triton.jit
def _quarters(v, S4: tl.constexpr):
    """``[R, 4 * S4]`` -> its four slices ``p = 4q + r``, r = 0..3, each ``[R, S4]`` (in-thread: free)."""
    a, b = tl.split(tl.reshape(v, [v.shape[0], S4, 2, 2]))
    v0, v2 = tl.split(a)
    v1, v3 = tl.split(b)
    return v0, v1, v2, v3


@triton.jit
def _fp_gemv16_kernel(x_ptr, w_ptr, s_ptr, r_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, xs_ptr, M, N, K, KW, G, tiles_per_split,
                      split_k, ELEM: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr, SLAB: tl.constexpr,
                      BN: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr,
                      EVEN_K: tl.constexpr, ASM: tl.constexpr, PSUM: tl.constexpr, FOLD: tl.constexpr = False,
                      PDL: tl.constexpr = False, EVEN_N: tl.constexpr = False):
    # fp16 activations, one row of x per program (grid dim 1).  A word's two codes at bits 4i.. / 16 + 4i..
    # (planes i and i + 4 of a 4-bit tile) or its bytes 0, 1 / 2, 3 (planes 2i, 2i + 1 of an FP8 tile)
    # are decoded into one fp16 pair and multiplied by the activation pair in one f16x2 instruction
    # (ASM, _pair_prod_h); the products are accumulated in fp32 with their block scales.  PSUM: the
    # products of four words of a row (channels 4q .. 4q + 3 of a plane: one block) are first summed in
    # fp16x2 (_quad_prod_h), so the fp32 conversion and the scale FMA happen once per 4 pairs.  Without
    # ASM (interpreter, ROCm) the same schedule (the same splits) runs on exact fp32 values.  FOLD (4-bit
    # activations, PSUM): x is int32 [M, KW * H], the fp16 pairs (planes i, i + H of each tile) of the
    # unscaled E2M1 activation values as quantize_activations_split packs them (one block = one plane),
    # and xs_ptr their fp32 block scales [M, G], folded into the weight's block scale; the pair decode
    # needs no power-of-two multiply (_quad_prod_fold) and no activation packing.
    VPW: tl.constexpr = 32 // BITS
    H: tl.constexpr = VPW // 2
    T: tl.constexpr = SLAB * VPW
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    num_pid_n = tl.num_programs(0)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, KW // SLAB)
    wrow, wst, hop = _wrow(offs_n, N, KW, SLAB, BITS)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    x_row = x_ptr + m * K + offs_p
    xp_row = x_ptr + m * (KW * H) + offs_p  # FOLD: int32 pairs [M, KW * H]
    if EVEN_N:  # E8M0 scale bytes read without a mask (rows past N: the last row's; never stored)
        s_row = s_ptr + offs_n
    else:
        s_row = s_ptr + tl.minimum(offs_n, N - 1)
    _pdl_enter(PDL)
    w_next = tl.load(w_ptrs + _wslab(t_start, wst, hop, SLAB, BITS), mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    S4: tl.constexpr = SLAB // 4
    if PSUM:
        acc = tl.zeros([BN, S4], dtype=tl.float32)
    else:
        acc = tl.zeros([BN, SLAB], dtype=tl.float32)
    for t in range(t_start, t_end):
        w = w_next
        w_next = tl.load(w_ptrs + _wslab(t + 1, wst, hop, SLAB, BITS), mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
        if PSUM:
            w0, w1, w2, w3 = _quarters(w, S4)
        for i in tl.static_range(H):
            if BITS == 4:  # planes i and i + 4
                ja = i
                jb = i + H
            else:  # FP8: planes 2i and 2i + 1
                ja = 2 * i
                jb = 2 * i + 1
            ka = t * T + ja * SLAB
            kb = t * T + jb * SLAB
            if FOLD:  # the pairs as the activation kernel packed them (whole tiles, zero-padded)
                xp = tl.load(xp_row + (t * H + i) * SLAB)
                if not ASM:
                    xa = (xp & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
                    xb = ((xp >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
            elif EVEN_K:
                xa = tl.load(x_row + ka)
                xb = tl.load(x_row + kb)
            else:
                xa = tl.load(x_row + ka, mask=(ka + offs_p) < K, other=0.0)
                xb = tl.load(x_row + kb, mask=(kb + offs_p) < K, other=0.0)
            if PSUM:
                if ASM:
                    if FOLD:
                        x0, x1, x2, x3 = _quarters(xp[None, :], S4)
                    else:
                        x0, x1, x2, x3 = _quarters(_pack_h2(xa, xb)[None, :], S4)
                    if ELEM == 1:
                        rot_a = (7 - 4 * i) % 32
                    else:
                        rot_a = (9 - 4 * i) % 32
                    ra = tl.full([BN, S4], rot_a, tl.int32)
                    rb = tl.full([BN, S4], (12 - 4 * i) % 32, tl.int32)
                    if FOLD:
                        lo, hi = _quad_prod_fold(w0, w1, w2, w3, tl.broadcast_to(x0, [BN, S4]), tl.broadcast_to(x1, [BN, S4]),
                                                 tl.broadcast_to(x2, [BN, S4]), tl.broadcast_to(x3, [BN, S4]), ra, rb, ELEM)
                    else:
                        lo, hi = _quad_prod_h(w0, w1, w2, w3, tl.broadcast_to(x0, [BN, S4]), tl.broadcast_to(x1, [BN, S4]),
                                              tl.broadcast_to(x2, [BN, S4]), tl.broadcast_to(x3, [BN, S4]), ra, rb, ELEM, i)
                else:
                    a0, a1, a2, a3 = _quarters(xa.to(tl.float32)[None, :], S4)
                    b0, b1, b2, b3 = _quarters(xb.to(tl.float32)[None, :], S4)
                    lo = (_decode(w0 >> (BITS * ja), ELEM) * a0 + _decode(w1 >> (BITS * ja), ELEM) * a1
                          + _decode(w2 >> (BITS * ja), ELEM) * a2 + _decode(w3 >> (BITS * ja), ELEM) * a3)
                    hi = (_decode(w0 >> (BITS * jb), ELEM) * b0 + _decode(w1 >> (BITS * jb), ELEM) * b1
                          + _decode(w2 >> (BITS * jb), ELEM) * b2 + _decode(w3 >> (BITS * jb), ELEM) * b3)
            elif ASM:
                xp = tl.broadcast_to(_pack_h2(xa, xb)[None, :], [BN, SLAB])
                if BITS == 4:
                    lo, hi = _pair_prod_h(w >> (4 * i), xp, ELEM, 0)
                else:
                    lo, hi = _pair_prod_h(w, xp, ELEM, i)
            else:
                lo = _decode(w >> (BITS * ja), ELEM) * xa.to(tl.float32)[None, :]
                hi = _decode(w >> (BITS * jb), ELEM) * xb.to(tl.float32)[None, :]
            if SCALE != 0:
                ga = tl.minimum(t * VPW + ja, G - 1)  # padded planes: any valid block (x is 0 there)
                gb = tl.minimum(t * VPW + jb, G - 1)
                if FOLD and SCALE == 1:  # E8M0 times a power-of-two activation scale: the product's exponent field
                    sa = _e8m0_times(tl.load(s_row + ga * N).to(tl.int32), tl.load(xs_ptr + m * G + ga))
                    sb = _e8m0_times(tl.load(s_row + gb * N).to(tl.int32), tl.load(xs_ptr + m * G + gb))
                else:
                    sa = _block_scale(tl.load(s_ptr + ga * N + offs_n, mask=n_mask, other=0).to(tl.int32), SCALE)
                    sb = _block_scale(tl.load(s_ptr + gb * N + offs_n, mask=n_mask, other=0).to(tl.int32), SCALE)
                    if FOLD:  # the activation blocks' scales (padded planes: x is 0 there)
                        sa = sa * tl.load(xs_ptr + m * G + ga)
                        sb = sb * tl.load(xs_ptr + m * G + gb)
                acc += lo * sa[:, None]  # two FMAs
                acc += hi * sb[:, None]
            else:
                acc += lo
                acc += hi
    out = tl.sum(acc, axis=1)[None, :]
    if ASM:  # the pair decode gave value / 8, value / 32 summed (FP8: / 512, / 2048); exact
        if FOLD:  # value * 2**-14 (E2M1), * 2**-15 (E0M4)
            if ELEM == 0:
                out = out * 16384.0
            else:
                out = out * 32768.0
        elif PSUM:
            if BITS == 4:
                out = out * 32.0
            else:
                out = out * 2048.0
        else:
            if BITS == 4:
                out = out * 8.0
            else:
                out = out * 512.0
    offs_m = m + tl.arange(0, 1)
    _pdl_exit(PDL)
    _fp_finish(out, offs_m, offs_n, offs_m < M, n_mask, y_ptr, r_ptr, b_ptr, ws_ptr, cnt_ptr, m * num_pid_n + pid_n, pid_k,
               split_k, M, N, False, HAS_ROWS, HAS_BIAS, USE_SPLIT)


# ---- tl.dot GEMM --------------------------------------------------------------------------------
@triton.jit
def _fp_dot_kernel(x_ptr, w_ptr, s_ptr, r_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, KW, G, tiles_per_split, split_k,
                   ELEM: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr, SLAB: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, SWAP: tl.constexpr,
                   HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                   IEEE: tl.constexpr):
    VPW: tl.constexpr = 32 // BITS
    T: tl.constexpr = SLAB * VPW
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _tile_of(pid, M, N, BM, BN, GROUP_M)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    m_mask = offs_m < M
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, KW // SLAB)
    wrow, wst, hop = _wrow(offs_n, N, KW, SLAB, BITS)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    x_ptrs = x_ptr + offs_m[:, None] * K + offs_p[None, :]
    if SWAP:
        acc = tl.zeros([BN, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    w_next = tl.load(w_ptrs + _wslab(t_start, wst, hop, SLAB, BITS), mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    for t in range(t_start, t_end):
        w = w_next
        w_next = tl.load(w_ptrs + _wslab(t + 1, wst, hop, SLAB, BITS), mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
        for j in tl.static_range(VPW):
            k0 = t * T + j * SLAB
            dq = _decode(w >> (j * BITS), ELEM)
            if SCALE != 0:
                g = tl.minimum(t * VPW + j, G - 1)
                sb = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.int32)
                dq = dq * _block_scale(sb, SCALE)[:, None]
            wd = dq.to(DT)
            if EVEN_K:
                xv = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0)
            else:
                xv = tl.load(x_ptrs + k0, mask=m_mask[:, None] & ((k0 + offs_p) < K)[None, :], other=0.0)
            if SWAP:
                if IEEE:
                    acc = tl.dot(wd, tl.trans(xv), acc, input_precision="ieee")
                else:
                    acc = tl.dot(wd, tl.trans(xv), acc)
            else:
                if IEEE:
                    acc = tl.dot(xv, tl.trans(wd), acc, input_precision="ieee")
                else:
                    acc = tl.dot(xv, tl.trans(wd), acc)
    _fp_finish(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, r_ptr, b_ptr, ws_ptr, cnt_ptr, pid, pid_k, split_k, M, N,
               SWAP, HAS_ROWS, HAS_BIAS, USE_SPLIT)


@triton.jit
def _fp_dequant_kernel(w_ptr, s_ptr, r_ptr, out_ptr, N, K, KW, G,
                       ELEM: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr, SLAB: tl.constexpr, BN: tl.constexpr,
                       HAS_ROWS: tl.constexpr):
    """``W[n, k] = (value * row_scale) * block_scale`` (the reference's order), one tile per program."""
    VPW: tl.constexpr = 32 // BITS
    T: tl.constexpr = SLAB * VPW
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    wrow, wst, hop = _wrow(offs_n, N, KW, SLAB, BITS)
    w = tl.load(w_ptr + wrow[:, None] + _wslab(t, wst, hop, SLAB, BITS) + _word_cols(offs_p, hop), mask=n_mask[:, None], other=0)
    if HAS_ROWS:
        r = tl.load(r_ptr + offs_n, mask=n_mask, other=0.0)
    for j in tl.static_range(VPW):
        k0 = t * T + j * SLAB
        dq = _decode(w >> (j * BITS), ELEM)
        if HAS_ROWS:
            dq = dq * r[:, None]
        if SCALE != 0:
            g = tl.minimum(t * VPW + j, G - 1)
            sb = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.int32)
            dq = dq * _block_scale(sb, SCALE)[:, None]
        tl.store(out_ptr + offs_n[:, None] * K + k0 + offs_p[None, :], dq.to(out_ptr.dtype.element_ty),
                 mask=n_mask[:, None] & ((k0 + offs_p) < K)[None, :])


# ---- activation quantization (bit-exact with quantlinear.fpquant) ------------------------------------
@triton.jit
def _exponent(a):
    """(floor(log2(a)), a is a power of two) for finite fp32 ``a > 0``, subnormals included."""
    small = a < 1.1754943508222875e-38  # 2**-126
    bits = tl.where(small, a * 1.8446744073709552e19, a).to(tl.int32, bitcast=True)  # * 2**64: exact
    e = ((bits >> 23) & 0xFF) - 127 - tl.where(small, 64, 0)
    return e, (bits & 0x7FFFFF) == 0


@triton.jit
def _pow2(e):
    """``2.0 ** e`` exactly for int32 ``e`` in [-127, 127] (``2**-127`` is subnormal)."""
    return tl.where(e >= -126, (e + 127) << 23, 0x400000).to(tl.float32, bitcast=True)


@triton.jit
def _rne_int(v):
    """Nearest integer, ties to even, for fp32 ``0 <= v < 2**22``."""
    return (v + 8388608.0) - 8388608.0


@triton.jit
def _round_e4m3(v):
    """fp32 ``|v| <= 448`` -> the nearest E4M3 value (ties to even), as torch's float8_e4m3fn cast rounds."""
    a = tl.abs(v)
    bits = a.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & 0x7FF00000).to(tl.float32, bitcast=True)
    sub = _rne_int(a * 512.0) * 0.001953125  # below 2**-6: multiples of 2**-9
    q = tl.where(a < 0.015625, sub, normal)
    return tl.where(v < 0, -q, q)


@triton.jit
def _recip(d):
    """``where(d == 0, 0, 1 / d)`` with IEEE division (fpquant's ``_recip``)."""
    safe = tl.where(d == 0, 1.0, d)
    return tl.where(d == 0, 0.0, tl.math.div_rn(safe * 0.0 + 1.0, safe))


@triton.jit
def _mx_split(x, EMAX: tl.constexpr, EMIN: tl.constexpr, MAXN: tl.constexpr, UP: tl.constexpr, RCEIL: tl.constexpr):
    """``fpquant.mx_qdq`` on fp32 blocks ``[NB, BLOCK]`` (``quant_mx`` + ``quant_element``, same fp32 operations),
    as (element values ``[NB, BLOCK]``, block scales ``2**se`` ``[NB]``): their product is the qdq value, exactly.

    Element grid: ``emax``, the private exponent's floor ``EMIN``, ``max_norm`` and ``UP = 2**(mbits - 2)``
    (E2M1: 2, 0, 6, 2; E4M3: 8, -6, 448, 8, as ``MXFP_FORMAT_CACHE``).
    """
    amax = tl.max(tl.abs(x), axis=1)
    if RCEIL:
        e, p2 = _exponent(tl.math.div_rn(amax, amax * 0.0 + MAXN))
        se = tl.where(amax == 0, 1, e + tl.where(p2, 0, 1))  # ceil(log2(amax / max_norm))
    else:
        e, p2 = _exponent(amax)
        se = tl.where(amax == 0, 1, e) - EMAX  # floor(log2(amax)) - emax
    se = tl.minimum(tl.maximum(se, -127), 127)
    t = x * _pow2(-se)[:, None]  # == x / 2**se, exactly
    t = tl.minimum(tl.maximum(t, -MAXN), MAXN)
    at = tl.abs(t)
    pe, _ = _exponent(at)
    pe = tl.maximum(pe, EMIN)  # private exponent (t == 0 gives 0 whatever it is)
    sc = at * _pow2(-pe) * UP
    d = sc - 0.5
    r = tl.floor(sc + 0.5) - tl.where(d == 2.0 * tl.floor(d * 0.5), 1.0, 0.0)  # AutoRound's round-half-even
    v = tl.minimum(r * (1.0 / UP) * _pow2(pe), MAXN)
    v = tl.where(t < 0, -v, v)
    return v, _pow2(se)


@triton.jit
def _mx_qdq(x, EMAX: tl.constexpr, EMIN: tl.constexpr, MAXN: tl.constexpr, UP: tl.constexpr, RCEIL: tl.constexpr):
    """``fpquant.mx_qdq`` on fp32 blocks ``[NB, BLOCK]``: :func:`_mx_split`'s values times their scales (exact)."""
    v, sc = _mx_split(x, EMAX, EMIN, MAXN, UP, RCEIL)
    return v * sc[:, None]


@triton.jit
def _nvfp4_split(x, gs):
    """``fpquant.nvfp4_qdq`` as (E2M1 values ``[NB, BLOCK]``, fp32 block scales ``[NB]``): ``q * r`` is the qdq value."""
    amax = tl.max(tl.abs(x), axis=1)
    scale = gs * (amax * 0.1666666716337204)  # fp32(1 / 6), as torch multiplies by the Python scalar
    scale = _round_e4m3(tl.minimum(tl.maximum(scale, -448.0), 448.0))
    out_scale = _recip(scale * _recip(gs))
    s = tl.minimum(tl.maximum(x * out_scale[:, None], -6.0), 6.0)
    a = tl.abs(s)
    q = tl.where(a < 2.0, _rne_int(2.0 * a) * 0.5, tl.where(a < 4.0, _rne_int(a), 2.0 * _rne_int(a * 0.5)))
    q = tl.minimum(q, 6.0)
    q = tl.where(s < 0, -q, tl.where(s > 0, q, 0.0))
    return q, _recip(out_scale)


@triton.jit
def _nvfp4_qdq(x, gs):
    """``fpquant.nvfp4_qdq`` on fp32 blocks ``[NB, BLOCK]`` with the global scale ``gs`` ([NB], all equal)."""
    q, r = _nvfp4_split(x, gs)
    return q * r[:, None]


@triton.jit
def _act_quant_kernel(x_ptr, y_ptr, a_ptr, xs_ptr, K, G, KT, ACT: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
                      DIV: tl.constexpr, SPLIT: tl.constexpr, VPW: tl.constexpr, PDL: tl.constexpr = False,
                      PAIR: tl.constexpr = 0):
    _pdl_enter(PDL)
    _pdl_exit(PDL)  # (one short pass: the GEMV after it may be scheduled at once)
    pid_m = tl.program_id(0)
    offs_b = tl.program_id(1) * NB + tl.arange(0, NB)
    k = offs_b[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = k < K
    x = tl.load(x_ptr + pid_m * K + k, mask=mask, other=0.0).to(tl.float32)
    if SPLIT:  # 4-bit schemes: the fp32 block scales to xs [M, G], the unscaled values as fp16 pairs to y
        if ACT == 3:
            v, sc = _nvfp4_split(x, tl.load(a_ptr + offs_b * 0))
        else:
            v, sc = _mx_split(x, 2, 0, 6.0, 2.0, ACT >= 8)
        tl.store(xs_ptr + pid_m * G + offs_b, sc, mask=offs_b < G)
        # blocks j and j + H of a tile (VPW blocks; the program holds NB // VPW whole tiles) -> one int32
        # [tile, i, p]: fp16 bits of block i in the low, of block i + H in the high half
        H: tl.constexpr = VPW // 2
        TPP: tl.constexpr = NB // VPW
        hb = v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        lo, hi = tl.split(tl.permute(tl.reshape(hb, [TPP, 2, H, BLOCK]), [0, 2, 3, 1]))
        tt = tl.program_id(1) * TPP + tl.arange(0, TPP)
        offs = (tt[:, None, None] * H + tl.arange(0, H)[None, :, None]) * BLOCK + tl.arange(0, BLOCK)[None, None, :]
        tl.store(y_ptr + pid_m * (KT * H * BLOCK) + offs, lo | (hi << 16), mask=(tt < KT)[:, None, None])
    elif PAIR:  # the same values as fp16 pairs in mmv's B-register order (1: MXFP4's, 2: NVFP4's; see _pair_slot)
        yh = y_ptr.to(tl.pointer_type(tl.float16))  # (y is int32 [M, KT * 128]: two fp16 slots a word)
        tl.store(yh + pid_m * (KT * 256) + _pair_slot(k, PAIR), _act_values(x, a_ptr, offs_b, ACT, DIV).to(tl.float16),
                 mask=k < KT * 256)
    else:
        tl.store(y_ptr + pid_m * K + k, _act_values(x, a_ptr, offs_b, ACT, DIV).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pair_slot(k, PAIR: tl.constexpr):
    """The fp16 slot of channel ``k`` in :func:`quantize_activations_pairs`' order: in 256-channel step ``t`` the
    pair of lo channel ``c`` (``kernels_mmv._pair_channel(t, j, b, 4 q + i)``) is word ``128 t + 32 j + 8 q + 2 i +
    b``, its low half ``c``, its high half ``c + d`` (MXFP4 ``c = 32 j + 16 b + 4 q + i``, ``d = 128``; NVFP4
    ``c = 128 b + 16 j + 4 q + i``, ``d = 64``)."""
    t = k // 256
    c = k % 256
    if PAIR == 2:
        b = c // 128
        h = (c // 64) % 2
        r = c % 64
        j = r // 16
    else:
        h = c // 128
        r = c % 128
        j = r // 32
        b = (r // 16) % 2
    q = (r // 4) % 4
    i = r % 4
    return 2 * (t * 128 + j * 32 + q * 8 + i * 2 + b) + h


@triton.jit
def _act_values(x, a_ptr, offs_b, ACT: tl.constexpr, DIV: tl.constexpr):
    """The activation kernel's values of fp32 blocks ``x`` ``[NB, BLOCK]`` for every ACT code but the split 4-bit
    form (:func:`quantize_activations`' docstring says what each is)."""
    if ACT == 3:  # NVFP4, static input_global_scale
        v = _nvfp4_qdq(x, tl.load(a_ptr + offs_b * 0))
    elif ACT == 4:  # FP8 static: the E4M3 values of clamp(x / input_scale); the GEMM multiplies by the scale
        d = tl.math.div_rn(x, tl.load(a_ptr + offs_b * 0).to(tl.float32)[:, None])
        d = tl.minimum(tl.maximum(d, -1024.0), 1024.0)  # no overflow below; anything past 448 ends at 448 anyway
        if DIV == 1:
            d = d.to(tl.float16).to(tl.float32)
        elif DIV == 2:
            d = d.to(tl.bfloat16).to(tl.float32)
        v = _round_e4m3(tl.minimum(tl.maximum(d, -448.0), 448.0))
    elif ACT % 8 == 2:  # MX on the E4M3 grid (+ 8: RCEIL exponents)
        v = _mx_qdq(x, 8, -6, 448.0, 8.0, ACT >= 8)
    else:  # MX on the E2M1 grid
        v = _mx_qdq(x, 2, 0, 6.0, 2.0, ACT >= 8)
    return v


for _k in (_fp_gemv_kernel, _fp_gemv16_kernel, _fp_dot_kernel, _act_quant_kernel):  # each launch writes its whole output
    _fast.replayable(_k)


# ---- launches ---------------------------------------------------------------------------------------
_DIV_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: compile options of the activation kernel: no FMA contraction (its rounding must be fpquant's)
_EXACT = {} if interpreting() else {"enable_fp_fusion": False}
_act_variants: dict[tuple, tuple] = {}


def _act_launch(grid, x, y, a, xs, K, G, KT, act, block, nb, div, split, vpw, pair=0) -> None:
    """One launch of ``_act_quant_kernel`` (through the cached launcher; with PDL where :func:`pdl_ok`)."""
    pdl = pdl_ok(x)
    key = (act, block, nb, div, split, vpw, pdl, pair)
    v = _act_variants.get(key)
    if v is None:
        consts = dict(ACT=act, BLOCK=block, NB=nb, DIV=div, SPLIT=split, VPW=vpw, PDL=pdl, PAIR=pair)
        opts = dict(num_warps=4, **_EXACT, **({"launch_pdl": True} if pdl else {}))
        v = _act_variants[key] = (consts, ("fp_actq", *key), opts)
    _fast.launch(_act_quant_kernel, grid, (x, y, a, xs), (K, G, KT), (), v[0], v[1], v[2], y)


def quantize_activations(x: torch.Tensor, act: int, act_block: int, act_scale: torch.Tensor | None) -> torch.Tensor:
    """The activations as the scheme quantizes them, in ``x.dtype``, one launch.

    MX and NVFP4: the quantize-dequantize values, bit-equal to ``fpquant.mx_qdq`` /
    ``fpquant.nvfp4_qdq``.  FP8 static: the E4M3 values of ``clamp(x / input_scale)`` (exact in any
    dtype), bit-equal to ``fpquant.fp8_static_quantize_input(x, s).to(x.dtype)``; the division
    is done in ``promote_types(x.dtype, input_scale.dtype)`` as torch does.  The GEMM multiplies by
    the input scale (folded into its row scales), so nothing is rounded to a half dtype.
    """
    M, K = x.shape
    y = torch.empty_like(x)
    if M == 0 or act == A_NONE:
        return x if act == A_NONE else y
    block, nb, div = _act_blocks(x, act, act_block, act_scale)
    grid = (M, -(-K // (block * nb)))  # (not triton.cdiv: a constexpr function, 1.5-4 us a call on the host)
    _act_launch(grid, x, y, act_scale if act_scale is not None else x, y, K, 1, 1, act, block, nb, div, False, 1)
    return y


def _act_blocks(x: torch.Tensor, act: int, act_block: int, act_scale: torch.Tensor | None) -> tuple[int, int, int]:
    """(block, blocks a program, division code) of a :func:`quantize_activations` launch: FP8 static in blocks of 64
    channels, dividing in ``promote_types(x.dtype, input_scale.dtype)``; the other schemes in their own blocks; at least
    512 channels a program (a multiple of 256: whole ``mmv`` steps, :func:`quantize_activations_pairs`)."""
    if act == A_FP8:
        return 64, 8, _DIV_CODES[torch.promote_types(x.dtype, act_scale.dtype)]
    return act_block, max(1, 512 // act_block), 0


def quantize_activations_pairs(x: torch.Tensor, act: int, act_block: int, act_scale: torch.Tensor | None,
                               nv: bool) -> torch.Tensor:
    """The activation quantization of fp16 ``x`` for ``mmv`` with the warps splitting K, one launch: the values of
    :func:`quantize_activations` (bit-equal, whatever the scheme quantizes its activations to) as fp16 pairs in the
    order of ``mmv``'s B registers (:func:`_pair_slot`), so that a lane's registers of a code pair are two 16-byte
    loads, each two MMAs' operand pairs as they sit -- instead of four 8-byte loads and eight byte permutes
    (``kernels_mmv._b_direct``).

    int32 ``[M, KT * 128]`` (``KT`` 256-channel steps, zero past K); ``nv``: the weights are NVFP4's (its pairs are
    channels 64 apart), else MXFP4's (128).
    """
    if x.dim() != 2 or x.dtype != torch.float16 or act == A_NONE:
        raise QuantLinearError(f"activation pairs for mmv: need 2-D float16 activations the scheme quantizes, got "
                               f"{x.dtype} {tuple(x.shape)} with activation code {act}")
    M, K = x.shape
    KT = -(-K // 256)
    y = torch.empty((M, KT * 128), dtype=torch.int32, device=x.device)
    if M == 0:
        return y
    block, nb, div = _act_blocks(x, act, act_block, act_scale)
    grid = (M, -(-K // (block * nb)))  # (whole steps a program: every pad slot up to KT * 256 is written, as zero)
    _act_launch(grid, x, y, act_scale if act_scale is not None else x, y, K, 1, KT, act, block, nb, div, False, 1,
                2 if nv else 1)
    return y


def unpack_mmv_pairs(pairs: torch.Tensor, nv: bool, in_features: int) -> torch.Tensor:
    """Inverse of :func:`quantize_activations_pairs`' order: fp16 ``[M, in_features]`` (tests)."""
    M = pairs.shape[0]
    h = pairs.view(torch.float16).view(M, -1, 4, 4, 4, 2, 2)  # [step, j, q, i, b, half]
    if nv:  # channel 128 b + 64 half + 16 j + 4 q + i
        ch = h.permute(0, 1, 5, 6, 2, 3, 4)
    else:  # 128 half + 32 j + 16 b + 4 q + i
        ch = h.permute(0, 1, 6, 2, 5, 3, 4)
    return ch.reshape(M, -1)[:, :in_features]


def fold_fits(elem: int, scale: int, block: int, act: int, act_block: int, dtype: torch.dtype) -> bool:
    """The folded paired-fp16 GEMV applies: fp16 or bf16 layers (the activation values it multiplies are E2M1, exact
    in fp16 either way; a bf16 layer gets its output in bf16), 4-bit weights and E2M1 activations whose blocks are the
    weight's."""
    return (dtype in (torch.float16, torch.bfloat16) and elem in (E2M1, E0M4) and scale != S_NONE and act_block == block
            and (act == A_NVFP4 or act in (A_MX_E2M1, A_MX_E2M1 + A_RCEIL)))


def quantize_activations_split(x: torch.Tensor, act: int, act_block: int, act_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-bit activation quantization (MX E2M1, NVFP4) as (value pairs, block scales), one launch.

    The values are E2M1 grid values (exact in fp16), packed as the folded GEMV reads them: int32
    ``[M, KT * T / 2]`` (``T = 8 * act_block`` channels a tile, ``KT`` tiles, the last zero-padded), word
    ``(t * 4 + i) * act_block + p`` holding channel ``t*T + i*act_block + p`` in its low and
    ``t*T + (i+4)*act_block + p`` in its high fp16 half (the weight layout's planes i, i + 4).  A value
    times its block's scale (fp32 ``[M, K // act_block]``: ``2**e``, NVFP4's ``1 / out_scale``) is, in
    fp32, exactly ``fpquant.mx_qdq`` / ``nvfp4_qdq`` of ``x`` before its rounding to ``x.dtype``.
    """
    M, K = x.shape
    G = K // act_block
    T = 8 * act_block
    KT = -(-K // T)
    y = torch.empty((M, KT * T // 2), dtype=torch.int32, device=x.device)
    xs = torch.empty((M, G), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, xs
    nb = max(8, 512 // act_block)
    grid = (M, -(-(KT * 8) // nb))
    _act_launch(grid, x, y, act_scale if act_scale is not None else x, xs, K, G, KT, act, act_block, nb, 0, True, 8)
    return y, xs


def unpack_pairs(pairs: torch.Tensor, act_block: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`quantize_activations_split`'s packing: fp16 ``[M, in_features]`` (tests)."""
    M = pairs.shape[0]
    h = pairs.view(M, -1, 4, act_block).view(torch.int16).view(M, -1, 4, act_block, 2)  # little endian: low half first
    return h.permute(0, 1, 4, 2, 3).reshape(M, -1).view(torch.float16)[:, :in_features]


_static: dict[tuple, tuple] = {}


def gemv16_fits(elem: int, dtype: torch.dtype) -> bool:
    """The paired-fp16 GEMV applies: fp16 activations, E2M1/E0M4 codes or hardware-decoded E4M3 (sm89+)."""
    return dtype == torch.float16 and elem in (E2M1, E0M4, E4M3_NV)


_OPTION_NAMES = frozenset(("num_warps", "num_stages", "launch_pdl", *BACKEND_OPTIONS))
_skey_ids: dict[tuple, tuple] = {}


def _launch_consts(st: tuple, **extra) -> tuple[dict, tuple]:
    """The constexprs of static arguments ``st`` plus the per-call ones (``USE_SPLIT``, ...), and their static key;
    built once per variant."""
    variants = st[10]
    k = tuple(extra.items())
    v = variants.get(k)
    if v is None:
        v = variants[k] = (dict(st[7], **extra), (st[9], k))
    return v


def _static_args(cfg: dict, elem: int, scale: int, block: int, K: int, has_rows: bool, has_bias: bool, dtype: torch.dtype,
                 pdl: bool = False) -> tuple:
    """The launch arguments that do not depend on M, computed once per (config, layer kind)."""
    key = (id(cfg), elem, scale, block, K, has_rows, has_bias, dtype, pdl)
    st = _static.get(key)
    if st is not None and st[0] is cfg:  # st holds cfg, so its id cannot be reused meanwhile
        return st
    bits = bits_of(elem)
    slab = slab_for(scale, block)
    kind = cfg["kernel"]
    if kind == "gemv16" and not gemv16_fits(elem, dtype):  # bf16/fp32 or a bit-decoded FP8: the general GEMV
        kind = "gemv"
    BM, BN = (1 if kind in ("gemv16", "dqmm") else int(cfg["BM"])), int(cfg.get("BN", 64))
    common = dict(ELEM=elem, BITS=bits, SCALE=scale, SLAB=slab, BN=BN, HAS_ROWS=has_rows, HAS_BIAS=has_bias,
                  EVEN_K=(K % (slab * (32 // bits)) == 0), num_warps=int(cfg.get("warps", 4)), num_stages=int(cfg.get("stages", 2)))
    if kind != "gemv16":
        common["BM"] = BM
    else:  # psum 4 (default): fp16 sums of four products per block before fp32; 1: every product to fp32
        common["PSUM"] = int(cfg.get("psum", 4)) == 4 and slab >= 16
    if kind in ("gemv", "gemv16"):
        common["PDL"] = bool(pdl)
        if pdl:
            common["launch_pdl"] = True
    common.update({k: int(cfg[k]) for k in BACKEND_OPTIONS if k in cfg})
    if kind == "dot":
        common.update(GROUP_M=int(cfg.get("group_m", 8)), SWAP=bool(cfg.get("swap", True)), IEEE=dtype == torch.float32)
    split = 1 if kind == "dqmm" else int(cfg.get("split_k", 1))
    opts = {k: v for k, v in common.items() if k in _OPTION_NAMES}
    consts = {k: v for k, v in common.items() if k not in _OPTION_NAMES}
    # (interned: hashed on every launch; prefixed: other modules' static keys share the launcher cache)
    skey = _skey_ids.setdefault((kind, *sorted(common.items())), ("fp", len(_skey_ids)))
    st = (cfg, kind, BM, BN, split, slab, common, consts, opts, skey, {})
    if len(_static) > 4096:
        _static.clear()
    _static[key] = st
    return st


def launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor | None, row_scales: torch.Tensor | None,
           bias: torch.Tensor | None, elem: int, scale: int, block: int, cfg: dict, out: torch.Tensor | None = None,
           x_scales: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T`` (times the row scales, plus bias) with launch configuration ``cfg``.

    ``cfg["kernel"]``: ``gemv`` (fp32 decode), ``gemv16`` (paired-fp16 decode; fp16 activations, else
    ``gemv``), ``dot`` (tensor cores), ``tc`` (the large-M tensor-core kernel, :mod:`.fp_kernels_tc`) or ``dqmm`` (the weight dequantized into a temporary in ``x.dtype``
    by :func:`dequantize`, then cuBLAS: ``F.linear``; the temporary lives for this call).  ``x_scales``: ``x``
    is :func:`quantize_activations_split`'s values and these its block scales (only ``gemv16`` with ``psum``
    4 on fp16 4-bit weights, :func:`fold_fits`: the folded GEMV).
    """
    if cfg["kernel"] == "tc":  # the large-M tensor-core kernel (its own module)
        if x_scales is not None:
            raise ValueError("split activations (x_scales) need the gemv16 kernel with psum 4")
        from .fp_kernels_tc import launch_tc

        return launch_tc(x, qweight, scales, row_scales, bias, elem, scale, block, cfg, out)
    M, K = x.shape
    N = qweight.shape[0]
    dt = x.dtype
    if x_scales is not None:  # x: the packed fp16 pairs; the output is fp16 (or ``out``'s dtype: a bf16 layer's)
        K, dt = x_scales.shape[1] * block, torch.float16
    KW = row_words(K, bits_of(elem), slab_for(scale, block))  # (not the storage's: 4-bit codes pad to whole units)
    st = _static_args(cfg, elem, scale, block, K, row_scales is not None, bias is not None, dt, pdl_ok(x))
    _, kind, BM, BN, split, slab, common, _, opts = st[:9]
    if x_scales is not None and (kind != "gemv16" or not common["PSUM"]):
        raise ValueError("split activations (x_scales) need the gemv16 kernel with psum 4")
    if kind == "dqmm":
        if M == 0:
            return out if out is not None else x.new_empty((0, N))
        W = dequantize(qweight, scales, row_scales, elem, scale, block, K, dtype=x.dtype, BN=BN)
        if out is None:
            return torch.nn.functional.linear(x, W, bias)
        if bias is not None:
            return torch.addmm(bias, x, W.t(), out=out)
        return torch.mm(x, W.t(), out=out)
    y = out if out is not None else torch.empty((M, N), dtype=dt, device=x.device)
    if M == 0:
        return y
    n_tiles = KW // slab
    n_tiles_out = -(-M // BM) * -(-N // BN)
    if split > 1 and (n_tiles_out > COUNTER_SLOTS or split * M * N >= 2**31):
        split = 1
    if split > 1:
        split = min(split, n_tiles, MAXS)
        tps = -(-n_tiles // split)
        split = -(-n_tiles // tps)  # no empty splits
    else:
        tps = n_tiles
    if split > 1:
        ws, cnt = split_buffers(x, split * M * N)  # the int kernels' persistent buffers: no per-call allocation
    else:
        ws = cnt = y
    G = K // block if scale != S_NONE else 1
    sp = scales if scales is not None else qweight
    rp = row_scales if row_scales is not None else y
    bp = bias if bias is not None else y
    ints = (M, N, K, KW, G, tps, split)
    if kind == "gemv":
        consts, skey = _launch_consts(st, USE_SPLIT=split > 1)
        _fast.launch(_fp_gemv_kernel, (-(-N // BN), -(-M // BM), split), (x, qweight, sp, rp, bp, y, ws, cnt), ints, (),
                     consts, skey, opts, y)
    elif kind == "gemv16":
        consts, skey = _launch_consts(st, USE_SPLIT=split > 1, ASM=_asm_ok(x), FOLD=x_scales is not None, EVEN_N=N % BN == 0)
        _fast.launch(_fp_gemv16_kernel, (-(-N // BN), M, split),
                     (x, qweight, sp, rp, bp, y, ws, cnt, x_scales if x_scales is not None else y), ints, (), consts, skey, opts, y)
    else:
        consts, skey = _launch_consts(st, USE_SPLIT=split > 1)
        _fast.launch(_fp_dot_kernel, (n_tiles_out, split), (x, qweight, sp, rp, bp, y, ws, cnt), ints, (), consts, skey, opts, y)
    return y


def dequantize(qweight: torch.Tensor, scales: torch.Tensor | None, row_scales: torch.Tensor | None, elem: int, scale: int,
               block: int, in_features: int, dtype: torch.dtype = torch.float32, BN: int = 32) -> torch.Tensor:
    """The weight ``[N, K]`` in ``dtype``, decoded by the kernels' own code (one pass)."""
    N = qweight.shape[0]
    bits, slab = bits_of(elem), slab_for(scale, block)
    KW = row_words(in_features, bits, slab)
    W = torch.empty((N, in_features), dtype=dtype, device=qweight.device)
    G = in_features // block if scale != S_NONE else 1
    _fp_dequant_kernel[(-(-N // BN), KW // slab)](qweight, scales if scales is not None else qweight,
                                                  row_scales if row_scales is not None else W, W, N, in_features, KW, G,
                                                  ELEM=elem, BITS=bits, SCALE=scale, SLAB=slab, BN=BN,
                                                  HAS_ROWS=row_scales is not None, num_warps=4)
    return W


__all__ = ["dequantize", "fold_fits", "gemv16_fits", "launch", "quantize_activations", "quantize_activations_split", "reserve",
           "unpack_pairs"]
