"""Triton kernels for ``y = x @ W^T (+ b)`` with W in GGUF's sub-block layout (:mod:`.gguf_packing`).

Imported lazily (first launch); importing it imports Triton.  One body serves every type: the
type only changes constexprs (low/high code bits, the symmetric offset, where the scales live).

* ``_gemv_kernel`` (decode, small M; CUDA cores).  A program owns ``BN = R * RT`` rows and a
  range of K tiles of 8 sub-blocks (256 channels); a thread holds whole sub-blocks of ``R``
  rows (one 16-byte load per row and sub-block), so a sub-block's 32 products are summed in
  registers and its scale is applied once, after the sum.  A code becomes a float with no
  conversion instruction: its bits are OR-ed into the mantissa of 1.0, ``qf = 1 + u / 2**bits``
  exactly, so a weight costs a shift, a mask-or and one FMA.  Per sub-block
  ``sum(x * w) = A * 2**bits * S + (B - A * (OFFSET + 2**bits)) * X`` with ``S = sum(x * qf)``
  and ``X = sum(x)``; X and the activations' conversion depend on the activations only, so a
  thread does them once for its R rows.  The next tile's codes are loaded while this one is
  computed.  Weights are read once, at full width.  (Compiled for sm90 the loop is ~5.8
  instructions per Q4_K weight, ~96 registers at R=4, no shared memory with Triton 3.9; with
  3.6 the codes take one register shuffle through shared memory per tile.)
* ``_gemv16_kernel`` (fp16 activations, small M; the default at M = 1): the same tiles with ``MR``
  rows of x per program, codes decoded two at a time as fp16 pairs.  Fields ``f`` and ``f + FPW/2``
  of a word sit in its two 16-bit halves, so one ``lop3`` (mask | 0x6400) gives the pair
  ``1024 + u`` and one ``fma.f16x2`` the exact ``(u - C) * 2**-k`` (``C``: the symmetric offset, or
  ``2**(bits-1)`` for the types with a min, which keeps the fp16 sums small; ``k``: :func:`gemv16_shift`, so that
  no fp16 product or sum can overflow for any finite fp16 activation); each row of x then
  costs one ``fma.f16x2`` per pair.  4-bit codes skip every other shift (bits 4-7 decode to
  ``16 (u - C)``, taken with x / 16); Q6_K / Q8_0 take all products with x / 16 (fp16 range).  A
  word's pairs are summed in fp16 (4 products; ``hsum``: the sub-block's words too, 16), then in
  fp32, and per sub-block ``sum(x w) = A * sum(x (u - C)) + (B + A C) * sum(x)``.  ~4.0 SASS
  instructions per Q4_K weight at R = 4 (``gemv``: ~5.8).  PTX inline assembly (the helpers of
  :mod:`.kernels` and below); without CUDA (interpreter, other backends) the same schedule runs in
  fp32 (``ASM=False``).
* ``_dot_kernel`` (larger M; tensor cores): one sub-block per step, dequantized in registers
  exactly as llama.cpp does (``A * (u - OFFSET)`` / ``A * u + B`` in fp32, see
  :mod:`.gguf_packing`), cast to the activation dtype and fed to ``tl.dot`` as the left operand
  (``y^T = W x^T``: the weight is the register operand of Hopper's wgmma, M the narrow side).
* ``_dequant_kernel``: the fp32-exact weight in the activation dtype, for dequantize-then-BLAS
  at large M.

Both matmul kernels can split K: partials go to an fp32 workspace and the last program to arrive
at an output tile (a counter per tile, in a persistent zero-initialised buffer) sums them in a
fixed order and resets the counter: one launch, deterministic, no memset, graph-capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch as _fast
from .kernels import _asm_ok, _h2_neg_magic, _h2_pow2_neg, _pack_h2, _tile_of, _unpack_h2, _workspace
from .gguf_packing import CODES, OFFSET, SUB, SUPER, is_kquant

#: Upper bound of split_k.
MAXS = 64
#: sub-blocks per GEMV K tile (one K-quant super-block)
TILE_SUBS = SUPER // SUB
COUNTER_SLOTS = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


def counters(device: torch.device) -> torch.Tensor:
    """The persistent split-K counter buffer of ``device`` (allocate before any graph capture)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _counters.get(device)
    if buf is None:
        buf = _counters[device] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=device)
    return buf


@triton.jit
def _f16(v):
    """fp16 bits in the low 16 bits of an int -> fp32."""
    return v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _small_int(v):
    """An integer in [0, 2**23) -> fp32 without a conversion instruction (exponent trick)."""
    return (v | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _scales(sm, bm, HAS_MIN: tl.constexpr, KQ: tl.constexpr, Q6: tl.constexpr):
    """(A, B, A_hi) of sub-blocks from their meta words (see gguf_packing); B = 0 when symmetric.

    ``A_hi`` is Q6_K's scale of channels 16..31 of the sub-block (``A`` then covers 0..15).
    """
    s = sm.to(tl.int32)
    if KQ:
        d = _f16(bm)
        if Q6:  # two int8 scales: (b ^ 0x80) = b + 128 as an unsigned byte
            A = d * (_small_int((s & 0xFF) ^ 0x80) - 128.0)
            return A, A * 0.0, d * (_small_int(((s >> 8) & 0xFF) ^ 0x80) - 128.0)
        A = d * _small_int(s & 0xFF)
        B = -(_f16(bm >> 16) * _small_int((s >> 8) & 0xFF))
        return A, B, A
    if HAS_MIN:
        A = _f16(s)
        return A, _f16(s >> 16), A
    A = _f16(s)
    return A, A * 0.0, A


@triton.jit
def _code_bits(w, h, f, LB: tl.constexpr, HB: tl.constexpr, POS: tl.constexpr):
    """Code ``u`` of field ``f`` of each word, placed at bit ``POS`` (low bits from ``w``, high from ``h``)."""
    lo = (w.to(tl.uint32, bitcast=True) >> (f * LB)) & ((1 << LB) - 1)  # logical shifts: no sign extension
    if HB > 0:
        hi = (h.to(tl.uint32, bitcast=True) >> (f * HB)) & ((1 << HB) - 1)
        return (lo << POS) | (hi << (POS + LB))
    return lo << POS


@triton.jit
def _finish(acc, offs, nidx, mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
            HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr):
    """Store ``acc`` (+ bias) at ``y + offs``, reducing split-K partials through the workspace.

    ``nidx``: the output channel of each element (the bias index), broadcastable to ``acc``.
    """
    if USE_SPLIT:
        tl.store(ws_ptr + pid_k * M * N + offs, acc, mask=mask)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        if old == split_k - 1:  # every other split of this tile has stored its partial
            total = tl.zeros_like(acc)
            for s in range(0, split_k):
                total += tl.load(ws_ptr + s * M * N + offs, mask=mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + nidx, mask=nidx < N, other=0.0).to(tl.float32)
            tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")  # ready for the next launch
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + nidx, mask=nidx < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["SM_STEP"])
def _gemv_kernel(x_ptr, qs_ptr, qh_ptr, sm_ptr, bm_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                 M, N, K, NSUB, tiles_per_split, split_k, SM_STEP,
                 LB: tl.constexpr, HB: tl.constexpr, OFF: tl.constexpr, HAS_MIN: tl.constexpr, KQ: tl.constexpr,
                 Q6: tl.constexpr, SUBS: tl.constexpr, R: tl.constexpr, RT: tl.constexpr, HAS_BIAS: tl.constexpr,
                 USE_SPLIT: tl.constexpr, EVEN: tl.constexpr):
    # Tensors are [R, RT, SUBS, WPS]: row r * RT + i of the program's BN = R * RT rows, a
    # sub-block, a word.  Every load has that shape with a contiguous last dim, so all get the
    # same layout: a thread holds whole sub-blocks (16-byte loads) of R rows that differ only in
    # dim 0, which lives in its registers.  The activations are loaded as [1, RT, SUBS, WPS]
    # (the same layout, broadcast over dim 0): a thread converts and sums each activation once
    # for its R rows.  No layout conversion in the inner loop.
    WPS: tl.constexpr = LB  # words per sub-block
    FPW: tl.constexpr = 32 // LB  # fields (codes) per word; field f of word p is channel f * WPS + p
    BITS: tl.constexpr = LB + HB
    P: tl.constexpr = 1 << BITS
    BN: tl.constexpr = R * RT
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    n2 = pid_n * BN + tl.arange(0, R)[:, None] * RT + tl.arange(0, RT)[None, :]  # [R, RT]
    n4 = n2[:, :, None, None]
    i4 = tl.arange(0, RT)[None, :, None, None]
    j4 = tl.arange(0, SUBS)[None, None, :, None]
    p4 = tl.arange(0, WPS)[None, None, None, :]
    n_tiles = tl.cdiv(NSUB, SUBS)
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    acc = tl.zeros([R, RT, SUBS, 1], dtype=tl.float32)
    # loop-invariant parts of the addresses; tile t adds t * SUBS sub-blocks
    w_ptrs = qs_ptr + n4 * (NSUB * WPS) + (t_start * SUBS + j4) * WPS + p4
    h_ptrs = qh_ptr + n4 * (NSUB * 4) + (t_start * SUBS + j4) * 4 + p4
    x_ptrs = x_ptr + m * K + i4 * 0 + (t_start * SUBS + j4) * 32 + p4
    # SM_STEP is 1 but not specialized: the compiler cannot see that consecutive sub-blocks' scales
    # are adjacent, so it does not vectorize this load along sub-blocks, and the load gets the layout
    # of the reduced products it is combined with (no conversion through shared memory)
    sm_ptrs = sm_ptr + n4 * NSUB + (t_start * SUBS + j4) * SM_STEP
    bm_ptrs = bm_ptr + n4 * (NSUB // SUBS) + t_start + j4 * 0
    n_ok = n4 < N
    # software pipelining: the next tile's codes are in flight while this one is computed
    wmask = n_ok & (t_start * SUBS + j4 < NSUB) & ((n4 * 0 + t_start) < t_end)
    w_next = tl.load(w_ptrs, mask=wmask, other=0)
    if HB > 0:
        h_next = tl.load(h_ptrs, mask=wmask, other=0).to(tl.int32)
    else:
        h_next = w_next
    for t in range(t_start, t_end):
        s4 = t * SUBS + j4
        w = w_next
        h = h_next
        w_ptrs += SUBS * WPS
        h_ptrs += SUBS * 4
        if EVEN:
            nmask = n_ok & ((n4 * 0 + t + 1) < t_end)
        else:
            nmask = n_ok & (s4 + SUBS < NSUB) & ((n4 * 0 + t + 1) < t_end)
        w_next = tl.load(w_ptrs, mask=nmask, other=0)
        if HB > 0:
            h_next = tl.load(h_ptrs, mask=nmask, other=0).to(tl.int32)
        else:
            h_next = w_next
        S = tl.zeros([R, RT, SUBS, WPS], dtype=tl.float32)
        X = tl.zeros([1, RT, SUBS, WPS], dtype=tl.float32)
        S_hi = S
        X_hi = X
        for f in tl.static_range(FPW):
            if EVEN:
                xv = tl.load(x_ptrs + f * WPS).to(tl.float32)
            else:
                xv = tl.load(x_ptrs + f * WPS, mask=s4 < NSUB, other=0.0).to(tl.float32)
            if f == 0:
                # Ties the codes to the activations' layout: "+ zero" folds away later, but it
                # makes the compiler convert the codes once here (where the activation layout wins,
                # Triton 3.6) instead of every field's floats, or nothing (Triton 3.9: same layout).
                xb = xv.to(tl.int32, bitcast=True)
                zero = (xb & 1) & (xb & 2)  # not folded before layouts are assigned; LLVM folds it
                w = w + zero
                h = h + zero
            qf = (_code_bits(w, h, f, LB, HB, 23 - BITS) | 0x3F800000).to(tl.float32, bitcast=True)  # 1 + u / 2**BITS, exact
            if Q6 and f >= FPW // 2:  # Q6_K: fields 4..7 are channels 16..31, the sub-block's second scale
                S_hi += qf * xv
                X_hi += xv
            else:
                S += qf * xv
                X += xv
        # per (row, sub-block): sum the words first, then apply the scale once
        if EVEN:
            mmask = n_ok
        else:
            mmask = n_ok & (s4 < NSUB)
        smv = tl.load(sm_ptrs, mask=mmask, other=0)  # [R, RT, SUBS, 1]
        if KQ:
            bmv = tl.load(bm_ptrs, mask=mmask, other=0)
        else:
            bmv = smv
        x_ptrs += SUBS * 32
        sm_ptrs += SUBS * SM_STEP
        bm_ptrs += 1
        A, B, A_hi = _scales(smv, bmv, HAS_MIN, KQ, Q6)
        acc += (A * P) * tl.sum(S, axis=3, keep_dims=True) + (B - A * (OFF + P)) * tl.sum(X, axis=3, keep_dims=True)
        if Q6:
            acc += (A_hi * P) * tl.sum(S_hi, axis=3, keep_dims=True) - (A_hi * (OFF + P)) * tl.sum(X_hi, axis=3, keep_dims=True)
    out = tl.sum(tl.sum(acc, axis=3), axis=2)  # [R, RT]
    _finish(out, m * N + n2, n2, n2 < N, y_ptr, b_ptr, ws_ptr, cnt_ptr, m * tl.num_programs(0) + pid_n, pid_k,
            split_k, M, N, HAS_BIAS, USE_SPLIT)


@triton.jit
def _h2_dec(w, zn, kc, MSEL: tl.constexpr):
    """Per word: the fp16 pair ``(q_lo - c, q_hi - c) * 2**-k`` of the codes the mask picks in each 16-bit half of ``w`` (CUDA).

    ``(w & mask) | 0x64006400`` is the pair ``1024 + q`` exactly (q < 1024); one FMA with ``kc`` (the pair ``2**-k``)
    and ``zn`` (``-(1024 + c) * 2**-k`` twice) gives the exact ``(q - c) * 2**-k``: the codes scaled down so that the
    GEMV's fp16 sums cannot overflow (``KSH``).  ``MSEL``: 0 keeps bits 0-3 of each half (a 4-bit code with others above
    it), 1 bits 4-7 (the pair is then ``16 * (q - c) * 2**-k`` for ``zn`` from ``1024 + 16 c``), 2 bits 0-7 (Q8_0, or a
    code already isolated), 3 none (``w`` is the pair ``1024 + q`` already).
    """
    if MSEL == 0:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, 0x000F000F, 0x64006400, 0xEA; fma.rn.f16x2 $0, t, $3, $2; }",
            "=r,r,r,r", [w, zn, kc], dtype=tl.int32, is_pure=True, pack=1)
    elif MSEL == 1:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, 0x00F000F0, 0x64006400, 0xEA; fma.rn.f16x2 $0, t, $3, $2; }",
            "=r,r,r,r", [w, zn, kc], dtype=tl.int32, is_pure=True, pack=1)
    elif MSEL == 2:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, 0x00FF00FF, 0x64006400, 0xEA; fma.rn.f16x2 $0, t, $3, $2; }",
            "=r,r,r,r", [w, zn, kc], dtype=tl.int32, is_pure=True, pack=1)
    else:  # the pair 1024 + q is already there
        return tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $3, $2;", "=r,r,r,r", [w, zn, kc], dtype=tl.int32, is_pure=True,
                                         pack=1)


@triton.jit
def _h2_sixteenth(p):
    """An fp16 pair (int32 word) times 1/16 (exact but for subnormal results) (CUDA)."""
    return tl.inline_asm_elementwise("{ .reg .b32 s; mov.b32 s, 0x2C002C00; mul.rn.f16x2 $0, $1, s; }", "=r,r", [p],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _h2_add(a, b):
    """``a + b`` on fp16 pairs held in int32 words (CUDA)."""
    return tl.inline_asm_elementwise("add.rn.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _h2_fma(a, b, c):
    """``a * b + c`` on fp16 pairs held in int32 words (CUDA)."""
    return tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _pair_bits(w, h32, f: tl.constexpr, LB: tl.constexpr, HB: tl.constexpr):
    """Word with the codes of fields ``f`` and ``f + FPW/2`` in the low bits of its two 16-bit halves.

    HB = 0: ``w`` shifted (the halves still hold the higher fields above the code: masked later).
    HB > 0: the code's high bits come from ``h32`` (field g's at bit ``HB * g`` of its half, see
    :func:`_h32`) and the result holds nothing but the two codes.
    """
    ws = w >> (LB * f)  # arithmetic shift: the sign bits land above both halves' codes
    if HB > 0:
        if HB * f <= LB:
            hs = h32 << (LB - HB * f)
        else:
            hs = h32 >> (HB * f - LB)
        LOM: tl.constexpr = ((1 << LB) - 1) * 0x10001
        HIM: tl.constexpr = (((1 << HB) - 1) << LB) * 0x10001
        return (ws & LOM) | (hs & HIM)
    return ws


@triton.jit
def _h32(h, HB: tl.constexpr):
    """High bits of a word's 8 fields (``f`` at bit ``HB * f``) -> fields 0..3 in the low half, 4..7 in the high half."""
    LOW: tl.constexpr = (1 << (4 * HB)) - 1
    return (h & LOW) | ((h & (LOW << (4 * HB))) << (16 - 4 * HB))


@triton.jit(do_not_specialize=["SM_STEP"])
def _gemv16_kernel(x_ptr, qs_ptr, qh_ptr, sm_ptr, bm_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                   M, N, K, NSUB, tiles_per_split, split_k, SM_STEP, zh, zh16,
                   LB: tl.constexpr, HB: tl.constexpr, OFF: tl.constexpr, HAS_MIN: tl.constexpr, KQ: tl.constexpr,
                   Q6: tl.constexpr, SUBS: tl.constexpr, R: tl.constexpr, RT: tl.constexpr, MR: tl.constexpr,
                   HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, SR: tl.constexpr,
                   HSUM: tl.constexpr, KSH: tl.constexpr):
    # The GEMV for fp16 activations with paired-fp16 decoding, ``MR`` rows of x per program (the
    # weights are read and decoded once for all of them).  Same tiles as _gemv_kernel, one more
    # leading dim: tensors are [MR, R, RT, SUBS, WPS] (x rows, weight rows, sub-blocks, words).
    # Fields f and f + FPW/2 of a word sit in its two 16-bit halves, so one mask/or (ASM) turns
    # both codes into the fp16 pair 1024 + u and one fma.f16x2 into the exact (u - C) * 2**-KSH (C: the
    # symmetric offset, or 2**(bits-1) for the types with a min, to keep the sums small); each
    # x row then costs one fp16x2 FMA per pair (4-bit odd fields: bits 4-7 unshifted, 16 (u - C)
    # times x / 16; Q6_K / Q8_0: every product with x / 16).  A word's FPW/2 pairs are summed in
    # fp16, then its words in fp32 (HSUM: in fp16 too), and per sub-block
    #   sum(x * w) = A * sum(x * (u - C)) + (B + A * C) * sum(x)
    # (Q6_K: the low / high halves are channels 0..15 / 16..31, scales A / A_hi; symmetric types
    # have no sum(x) term).  Without ASM (interpreter, other backends) the same codes are summed
    # in fp32.
    # SR: the same tensors with their dims in the order [SUBS, RT, MR, R, WPS].  Triton gives a load
    # the blocked layout whose threads fill the dims after the contiguous one in an order that
    # changed between versions (3.6: 0, 1, 2, 3; 3.9: 3, 2, 1, 0); the dims that threads must
    # span (sub-blocks, then row groups) come first in that order, so that a thread holds the R
    # rows x MR x-rows of its sub-block in registers and every load (codes, activations, scales)
    # gets the same layout: no shuffle through shared memory in the loop.
    WPS: tl.constexpr = LB
    FPW: tl.constexpr = 32 // LB
    HF: tl.constexpr = FPW // 2
    BITS: tl.constexpr = LB + HB
    C: tl.constexpr = (1 << (BITS - 1)) if HAS_MIN else OFF
    BN: tl.constexpr = R * RT
    MSEL: tl.constexpr = 3 if HB > 0 else (2 if LB == 8 else 0)
    NIB: tl.constexpr = LB == 4 and HB == 0  # 4-bit codes alone in their word: fields 2k + 1 need no shift
    MASK: tl.constexpr = (1 << BITS) - 1
    # |u - C| up to 32 (Q6_K) / 128 (Q8_0): products with x / 16; the codes also scaled by 2**-KSH (gemv16_shift) so that
    # no fp16 product or sum can overflow for any finite fp16 x
    XS: tl.constexpr = BITS >= 6
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    if SR:  # physical dims [SUBS, RT, MR, R, WPS]
        m5 = pid_m * MR + tl.arange(0, MR)[None, None, :, None, None]
        r5 = tl.arange(0, R)[None, None, None, :, None]
        i5 = tl.arange(0, RT)[None, :, None, None, None]
        j5 = tl.arange(0, SUBS)[:, None, None, None, None]
    else:  # [MR, R, RT, SUBS, WPS]
        m5 = pid_m * MR + tl.arange(0, MR)[:, None, None, None, None]
        r5 = tl.arange(0, R)[None, :, None, None, None]
        i5 = tl.arange(0, RT)[None, None, :, None, None]
        j5 = tl.arange(0, SUBS)[None, None, None, :, None]
    MAX: tl.constexpr = 2 if SR else 0  # the MR axis
    SAX: tl.constexpr = 0 if SR else 3  # the SUBS axis
    n5 = pid_n * BN + r5 * RT + i5
    p5 = tl.arange(0, WPS)[None, None, None, None, :]
    n_tiles = tl.cdiv(NSUB, SUBS)
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    acc = ((m5 + n5 + j5) * 0).to(tl.float32)  # [.., 1]: every dim but the words
    w_ptrs = qs_ptr + n5 * (NSUB * WPS) + (t_start * SUBS + j5) * WPS + p5
    h_ptrs = qh_ptr + n5 * (NSUB * 4) + (t_start * SUBS + j5) * 4 + p5
    x_ptrs = x_ptr + m5 * K + i5 * 0 + (t_start * SUBS + j5) * 32 + p5
    sm_ptrs = sm_ptr + n5 * NSUB + (t_start * SUBS + j5) * SM_STEP
    bm_ptrs = bm_ptr + n5 * (NSUB // SUBS) + t_start + j5 * 0
    n_ok = n5 < N
    m_ok = m5 < M
    wmask = n_ok & (t_start * SUBS + j5 < NSUB) & ((n5 * 0 + t_start) < t_end)
    w_next = tl.load(w_ptrs, mask=wmask, other=0)
    if HB > 0:
        h_next = tl.load(h_ptrs, mask=wmask, other=0).to(tl.int32)
    else:
        h_next = w_next
    for t in range(t_start, t_end):
        s5 = t * SUBS + j5
        w = w_next
        if HB > 0:
            h32 = _h32(h_next, HB)
        else:
            h32 = h_next
        w_ptrs += SUBS * WPS
        h_ptrs += SUBS * 4
        if EVEN:
            nmask = n_ok & ((n5 * 0 + t + 1) < t_end)
        else:
            nmask = n_ok & (s5 + SUBS < NSUB) & ((n5 * 0 + t + 1) < t_end)
        w_next = tl.load(w_ptrs, mask=nmask, other=0)
        if HB > 0:
            h_next = tl.load(h_ptrs, mask=nmask, other=0).to(tl.int32)
        else:
            h_next = w_next
        if EVEN:
            xmask = m_ok
        else:
            xmask = m_ok & (s5 < NSUB)
        if ASM:
            a16 = (m5 + n5 + j5 + p5) * 0
            if HAS_MIN:
                x16 = (m5 + i5 + j5 + p5) * 0
        else:
            lo = ((m5 + n5 + j5 + p5) * 0).to(tl.float32)
            hi = lo
            if HAS_MIN:
                X = ((m5 + i5 + j5 + p5) * 0).to(tl.float32)
        for f in tl.static_range(HF):
            xa = tl.load(x_ptrs + f * WPS, mask=xmask, other=0.0)
            xb = tl.load(x_ptrs + (f + HF) * WPS, mask=xmask, other=0.0)
            if f == 0:
                # ties the codes to the activations' layout (see _gemv_kernel): "+ zero" folds away later
                xbits = xa.to(tl.int16, bitcast=True).to(tl.int32)
                zero = tl.max((xbits & 1) & (xbits & 2), axis=MAX, keep_dims=True)
                w = w + zero
                h32 = h32 + zero
            if NIB and f % 2 == 1:
                # 4-bit codes, odd field: bits 4-7 of the word shifted for field f - 1 decode to 16 * (u - C);
                # the activations are taken / 16 (exact), which saves a shift per word and row
                pw = _pair_bits(w, h32, f - 1, LB, HB)
            else:
                pw = _pair_bits(w, h32, f, LB, HB)
                if ASM and HB > 0:  # the codes are isolated: or in the fp16 exponent with the same instructions
                    pw = pw | 0x64006400
            if ASM:
                xp = _pack_h2(xa, xb)
                if HAS_MIN:  # sum(x) / 4 (at most HF = 4 terms: no overflow)
                    x16 = _h2_fma(xp, tl.full(xp.shape, 0x34003400, tl.int32), x16)
                if NIB and f % 2 == 1:
                    d = _h2_dec(pw, tl.full(pw.shape, zh16, tl.int32), _h2_pow2_neg(pw, KSH), 1)
                    xp = _h2_sixteenth(xp)
                else:
                    d = _h2_dec(pw, tl.full(pw.shape, zh, tl.int32), _h2_pow2_neg(pw, KSH), MSEL)
                    if XS:
                        xp = _h2_sixteenth(xp)
                a16 = _h2_fma(tl.broadcast_to(d, a16.shape), tl.broadcast_to(xp, a16.shape), a16)
            else:
                if NIB and f % 2 == 1:
                    pw = pw >> 4
                qa = ((pw & MASK) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + C)
                qb = (((pw >> 16) & MASK) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + C)
                lo += qa * xa.to(tl.float32)
                hi += qb * xb.to(tl.float32)
                if HAS_MIN:
                    X += xa.to(tl.float32) + xb.to(tl.float32)
        if ASM:
            if HSUM:  # the words' pairs summed in fp16 too (16 products per fp16 sum)
                a16 = tl.reduce(a16, 4, _h2_add, keep_dims=True)
            lo, hi = _unpack_h2(a16)
            if HAS_MIN:
                xl, xh = _unpack_h2(x16)
                X = (xl + xh) * 4.0
        if EVEN:
            mmask = n_ok
        else:
            mmask = n_ok & (s5 < NSUB)
        smv = tl.load(sm_ptrs, mask=mmask, other=0)  # [1, R, RT, SUBS, 1]
        if KQ:
            bmv = tl.load(bm_ptrs, mask=mmask, other=0)
        else:
            bmv = smv
        x_ptrs += SUBS * 32
        sm_ptrs += SUBS * SM_STEP
        bm_ptrs += 1
        A, B, A_hi = _scales(smv, bmv, HAS_MIN, KQ, Q6)
        if ASM:  # the products were of codes * 2**-KSH (and with x / 16 where XS)
            As = A * (2.0 ** KSH * (16.0 if XS else 1.0))
            As_hi = A_hi * (2.0 ** KSH * (16.0 if XS else 1.0))
        else:
            As = A
            As_hi = A_hi
        if Q6:
            acc += As * tl.sum(lo, axis=4, keep_dims=True) + As_hi * tl.sum(hi, axis=4, keep_dims=True)
        else:
            acc += As * tl.sum(lo + hi, axis=4, keep_dims=True)
        if HAS_MIN:
            acc += (B + A * C) * tl.sum(X, axis=4, keep_dims=True)
    out = tl.sum(acc, axis=SAX, keep_dims=True)  # 5-D, SUBS and WPS of size 1
    _finish(out, m5 * N + n5, n5, (m5 < M) & (n5 < N), y_ptr, b_ptr, ws_ptr, cnt_ptr, pid_m * tl.num_programs(0) + pid_n, pid_k,
            split_k, M, N, HAS_BIAS, USE_SPLIT)


@triton.jit
def _dequant_sub(qs_ptr, qh_ptr, sm_ptr, bm_ptr, offs_n, n_mask, s, N, NSUB,
                 LB: tl.constexpr, HB: tl.constexpr, OFF: tl.constexpr, HAS_MIN: tl.constexpr, KQ: tl.constexpr,
                 Q6: tl.constexpr, SUBS_PER_BLOCK: tl.constexpr):
    """fp32 weights ``[BN, 32]`` of sub-block ``s`` of rows ``offs_n``, bit-identical to llama.cpp's."""
    WPS: tl.constexpr = LB
    FPW: tl.constexpr = 32 // LB
    p3 = tl.arange(0, WPS)[None, None, :]
    f3 = tl.arange(0, FPW)[None, :, None]
    n3 = offs_n[:, None, None]
    # [BN, 1, WPS] loads: a thread keeps a row's words and expands all their fields in registers
    w = tl.load(qs_ptr + n3 * (NSUB * WPS) + s * WPS + p3, mask=n3 < N, other=0)
    if HB > 0:
        h = tl.load(qh_ptr + n3 * (NSUB * 4) + s * 4 + p3, mask=n3 < N, other=0).to(tl.int32)
    else:
        h = w
    smv = tl.load(sm_ptr + offs_n * NSUB + s, mask=n_mask, other=0)
    if KQ:
        bmv = tl.load(bm_ptr + offs_n * (NSUB // SUBS_PER_BLOCK) + s // SUBS_PER_BLOCK, mask=n_mask, other=0)
    else:
        bmv = smv
    A, B, A_hi = _scales(smv, bmv, HAS_MIN, KQ, Q6)
    # [BN, field, word]: channel f * WPS + p, so the reshape below is in channel order
    uf = (_code_bits(w, h, f3, LB, HB, 0) | 0x4B000000).to(tl.float32, bitcast=True)  # 2**23 + u
    if HAS_MIN:
        wf = (uf - 8388608.0) * A[:, None, None] + B[:, None, None]  # A * u exact: one rounding
    else:
        if Q6:  # fields 4..7 are channels 16..31: the second scale
            Aw = tl.where(f3 < FPW // 2, A[:, None, None], A_hi[:, None, None])
        else:
            Aw = A[:, None, None]
        wf = (uf - (8388608.0 + OFF)) * Aw  # u - OFFSET exact: one rounding
    return tl.reshape(wf, [wf.shape[0], 32])


@triton.jit
def _dot_kernel(x_ptr, qs_ptr, qh_ptr, sm_ptr, bm_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                M, N, K, NSUB, subs_per_split, split_k,
                LB: tl.constexpr, HB: tl.constexpr, OFF: tl.constexpr, HAS_MIN: tl.constexpr, KQ: tl.constexpr,
                Q6: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr,
                HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, IEEE: tl.constexpr):
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _tile_of(pid, M, N, BM, BN, GROUP_M)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    n_mask = offs_n < N
    m_mask = offs_m < M
    offs_k = tl.arange(0, 32)
    s_start = pid_k * subs_per_split
    s_end = tl.minimum(s_start + subs_per_split, NSUB)
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    for s in range(s_start, s_end):
        wd = _dequant_sub(qs_ptr, qh_ptr, sm_ptr, bm_ptr, offs_n, n_mask, s, N, NSUB, LB, HB, OFF, HAS_MIN, KQ, Q6, 8).to(DT)
        xv = tl.load(x_ptr + offs_m[:, None] * K + s * 32 + offs_k[None, :], mask=m_mask[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(wd, tl.trans(xv), acc, input_precision="ieee")
        else:
            acc = tl.dot(wd, tl.trans(xv), acc)
    _finish(acc, offs_m[None, :] * N + offs_n[:, None], offs_n[:, None], n_mask[:, None] & m_mask[None, :], y_ptr, b_ptr, ws_ptr, cnt_ptr,
            pid, pid_k, split_k, M, N, HAS_BIAS, USE_SPLIT)


@triton.jit
def _dequant_kernel(qs_ptr, qh_ptr, sm_ptr, bm_ptr, out_ptr, N, K, NSUB, SPP,
                    LB: tl.constexpr, HB: tl.constexpr, OFF: tl.constexpr, HAS_MIN: tl.constexpr, KQ: tl.constexpr,
                    Q6: tl.constexpr, BN: tl.constexpr):
    """``W[n, k]`` in the output dtype, row-major ``[N, K]``; a program does ``BN`` rows x ``SPP`` sub-blocks."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_k = tl.arange(0, 32)
    for s in range(pid_s * SPP, tl.minimum(pid_s * SPP + SPP, NSUB)):
        wf = _dequant_sub(qs_ptr, qh_ptr, sm_ptr, bm_ptr, offs_n, n_mask, s, N, NSUB, LB, HB, OFF, HAS_MIN, KQ, Q6, 8)
        tl.store(out_ptr + offs_n[:, None] * K + s * 32 + offs_k[None, :], wf.to(out_ptr.dtype.element_ty), mask=n_mask[:, None])


def type_constants(qtype: str) -> dict:
    """The constexprs that specialize the kernels for one GGUF type."""
    _, LB, HB, _ = CODES[qtype]
    return dict(LB=LB, HB=HB, OFF=OFFSET.get(qtype, 0), HAS_MIN=qtype not in OFFSET, KQ=is_kquant(qtype), Q6=qtype == "Q6_K")


def gemv_rows_per_pass(qtype: str, warps: int) -> int:
    """Rows the GEMV's threads cover side by side (``RT``): a warp spreads 8 sub-blocks x 16-byte word groups."""
    wps = CODES[qtype][1]
    return max(1, 16 // wps) * warps


def _split(split: int, n_tiles: int, n_out_tiles: int, M: int, N: int) -> tuple[int, int]:
    """(split, tiles per split) with no empty split; 1 where the counters or the workspace would not fit."""
    if split > 1 and (n_out_tiles > COUNTER_SLOTS or split * M * N >= 2**31):
        split = 1
    split = max(1, min(split, n_tiles, MAXS))
    per = -(-n_tiles // split)
    return -(-n_tiles // per), per


_static: dict[tuple, tuple] = {}


def _sr_default() -> bool:
    """Whether this Triton orders a load layout's thread dims first-to-last (3.6) rather than last-to-first (3.9)."""
    try:
        major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (3, 9)


#: gemv16's default dim order (configuration key ``sr`` overrides it)
SR_DEFAULT = _sr_default()


def gemv16_fits(dtype: torch.dtype) -> bool:
    """Whether the paired-fp16 GEMV (``gemv16``) computes a layer: fp16 activations (every GGUF type)."""
    return dtype == torch.float16


def _static_args(cfg: dict, qtype: str, K: int, has_bias: bool, dtype: torch.dtype) -> tuple:
    """What a launch needs that does not depend on M, computed once per (configuration, layer kind)."""
    key = (id(cfg), qtype, K, has_bias, dtype)
    st = _static.get(key)
    if st is not None and st[0] is cfg:  # st holds cfg, so its id cannot be reused meanwhile
        return st
    is_fp32 = dtype == torch.float32
    kind = cfg["kernel"]
    if kind == "gemv16" and not gemv16_fits(dtype):  # bf16 / fp32: the general GEMV with the same tiles
        kind = "gemv"
    opts = dict(num_warps=int(cfg.get("warps", 4)), num_stages=int(cfg.get("stages", 2)))
    consts = dict(type_constants(qtype), HAS_BIAS=has_bias)
    NSUB = K // SUB
    if kind in ("gemv", "gemv16"):
        rt = gemv_rows_per_pass(qtype, opts["num_warps"])
        R = max(1, int(cfg["BN"]) // rt)
        BM, BN = (int(cfg.get("MR", 1)) if kind == "gemv16" else 1), R * rt
        consts.update(SUBS=TILE_SUBS, R=R, RT=rt, EVEN=NSUB % TILE_SUBS == 0)
        if kind == "gemv16":
            hsum = bool(cfg.get("hsum", False))
            consts.update(MR=BM, SR=bool(cfg.get("sr", SR_DEFAULT)), HSUM=hsum, KSH=gemv16_shift(qtype, hsum))
    elif kind == "dot":
        BM, BN = int(cfg["BM"]), int(cfg["BN"])
        consts.update(BM=BM, BN=BN, GROUP_M=int(cfg.get("group_m", 8)), IEEE=is_fp32)
    else:
        BM, BN = 0, int(cfg.get("BN", 64))
    skey = (kind, *sorted(consts.items()), *sorted(opts.items()))
    st = (cfg, kind, BM, BN, int(cfg.get("split_k", 1)), consts, opts, skey, {})
    if len(_static) > 4096:
        _static.clear()
    _static[key] = st
    return st


def launch(x: torch.Tensor, qs: torch.Tensor, qh: torch.Tensor | None, sm: torch.Tensor, bm: torch.Tensor | None,
           bias: torch.Tensor | None, qtype: str, cfg: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T (+ bias)`` with launch configuration ``cfg`` (``kernel``: ``gemv``, ``gemv16``, ``dot`` or ``dqmm``).

    ``gemv16`` (fp16 activations; other dtypes run ``gemv`` with the same tiles) takes ``MR`` rows of x
    per program (default 1).
    """
    M, K = x.shape
    N = qs.shape[0]
    NSUB = K // SUB
    y = out if out is not None else torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    _, kind, BM, BN, split, consts, opts, skey, variants = _static_args(cfg, qtype, K, bias is not None, x.dtype)
    if kind == "dqmm":
        W = dequantize(qs, qh, sm, bm, qtype, K, x.dtype, BN=BN, spp=int(cfg.get("spp", 8)))
        if out is None:
            return torch.nn.functional.linear(x, W, bias)
        return torch.addmm(bias, x, W.t(), out=out) if bias is not None else torch.mm(x, W.t(), out=out)
    asm = None
    if kind == "gemv":
        n_out = M * -(-N // BN)
        split, per = _split(split, -(-NSUB // TILE_SUBS), n_out, M, N)
        grid = (-(-N // BN), M, split)
        fn = _gemv_kernel
    elif kind == "gemv16":
        n_out = -(-M // BM) * -(-N // BN)
        split, per = _split(split, -(-NSUB // TILE_SUBS), n_out, M, N)
        grid = (-(-N // BN), -(-M // BM), split)
        fn = _gemv16_kernel
        asm = _asm_ok(x)
    else:
        n_out = -(-M // BM) * -(-N // BN)
        split, per = _split(split, NSUB, n_out, M, N)
        grid = (n_out, split, 1)
        fn = _dot_kernel
    if split > 1:
        ws = _workspace(x, x.get_device(), split * M * N)  # the int kernels' persistent buffer: no per-call allocation
        cnt = counters(x.device)
    else:
        ws = cnt = y
    use_split = split > 1
    c = variants.get((use_split, asm))
    if c is None:
        c = variants[(use_split, asm)] = dict(consts, USE_SPLIT=use_split) if asm is None else dict(consts, USE_SPLIT=use_split, ASM=asm)
    tensors = (x, qs, qh if qh is not None else qs, sm, bm if bm is not None else sm, bias if bias is not None else sm, y, ws, cnt)
    if kind == "gemv":
        ints = (M, N, K, NSUB, per, split, 1)
    elif kind == "gemv16":
        ints = (M, N, K, NSUB, per, split, 1, *_zh(qtype, consts["KSH"]))
    else:
        ints = (M, N, K, NSUB, per, split)
    _fast.launch(fn, grid, tensors, ints, (), c, (skey, use_split, asm), opts, y)
    return y


def gemv16_shift(qtype: str, hsum: bool) -> int:
    """``k`` of the paired-fp16 GEMV: its fp16 sums take ``P`` products (``FPW / 2`` a word; ``hsum``: a sub-block's
    words too) of codes ``|u - C| <= 2**(bits - 1)`` (/ 16 where the activations are taken / 16), so codes scaled by
    ``2**-k`` with ``2**k = P * max |u - C|`` keep every sum of any finite fp16 activations below 65504."""
    _, LB, HB, _ = CODES[qtype]
    bits = LB + HB
    products = (32 // LB) // 2 * (LB if hsum else 1)
    dmax = (1 << (bits - 1)) // (16 if bits >= 6 else 1)
    return (products * dmax).bit_length() - 1


_zhs: dict[tuple[str, int], tuple[int, int]] = {}


def _zh(qtype: str, shift: int) -> tuple[int, int]:
    """The int32 words whose fp16 halves are both ``-(1024 + C) * 2**-shift`` / ``-(1024 + 16 C) * 2**-shift`` (``C``: what
    gemv16 subtracts from a code)."""
    v = _zhs.get((qtype, shift))
    if v is None:
        _, LB, HB, _ = CODES[qtype]
        c = OFFSET.get(qtype, 1 << (LB + HB - 1))
        v = _zhs[(qtype, shift)] = (_h2_neg_magic(float(c), shift), _h2_neg_magic(16.0 * c, shift) if LB + HB == 4 else 0)
    return v


def dequantize(qs: torch.Tensor, qh: torch.Tensor | None, sm: torch.Tensor, bm: torch.Tensor | None, qtype: str, in_features: int,
               dtype: torch.dtype, BN: int = 64, spp: int = 8) -> torch.Tensor:
    """The weight ``[N, K]`` in ``dtype`` (llama.cpp's fp32 values, then rounded to ``dtype``)."""
    N = qs.shape[0]
    NSUB = in_features // SUB
    W = torch.empty((N, in_features), dtype=dtype, device=qs.device)
    _dequant_kernel[(-(-N // BN), -(-NSUB // spp))](qs, qh if qh is not None else qs, sm, bm if bm is not None else sm, W, N, in_features,
                                                     NSUB, spp, BN=BN, **type_constants(qtype), num_warps=4)
    return W
