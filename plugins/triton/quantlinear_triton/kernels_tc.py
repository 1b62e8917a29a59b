"""Tensor-core kernel for weight-only int matmuls at large M (prefill), built for Hopper's wgmma.

Same weight layout and launch arguments as :mod:`quantlinear_triton.kernels` (the slab layout of
:mod:`quantlinear_triton.packing`: int32 ``[N, KW]``; word ``p`` of tile ``t`` holds, at bits
``BITS*j``, the code of input channel ``k = t*T + j*SLAB + p``; scales ``[G, N]``; optional
zeros ``[G, N]``; a symmetric layer passes ``zeros=None`` and its constant ``zero_point``).

``_tc_kernel`` computes ``y^T = W x^T``, one ``[BN, BM]`` output tile per program:

* a k-step dequantizes ``PL`` of a tile's ``VPW`` planes: the low planes ``s*H + jh`` and the
  high planes ``VPW/2 + s*H + jh`` (``H = PL/2``), i.e. two runs of ``H*SLAB`` consecutive input
  channels.  Each half is built as ``[BN, H, SLAB]`` from the tile's ``[BN, SLAB]`` words
  (broadcast shifts) and the halves are joined to the ``[BN, BK]`` A operand
  (``join -> permute -> reshape``); the ``[BK, BM]`` x^T tile is loaded in the same channel
  order (two contiguous runs) as the shared-memory B operand (Triton's cp.async pipeline);
* the weights are dequantized *and scaled* in registers (a scale per (row, slab)), so ``tl.dot``
  is the only op touching the accumulator: one dot per k-step, K = BK;
* Triton keeps a computed MMAv3 A operand in registers and splits such a register-A dot into
  K/2 (Triton 3.9) or K/16 (Triton 3.6) wgmma groups with ``wgmma.wait_group`` N-1 between them
  ("properly async": needs exactly one dot per loop iteration, its result used only by the next
  iteration's dot).  The split is the exact inverse of the join above, so Triton propagates the
  wgmma register layout back through it: the dequantization runs directly in the A-fragment layout
  (no shared-memory round trip, no ``ldmatrix``);
* ``tl.assume(s_end > s_start)``: without it the loop's zero-trip path defines the accumulator with
  plain moves before the final ``wgmma.wait_group 0`` and ptxas serializes *every* wgmma of the
  kernel (C7515, "non wgmma instructions defining accumulator registers").

Dequantization (``ASM``, from ``cfg["dq"]``):

* ``0`` (any bits and dtype, and always off CUDA): fp32: ``bits(2**23) | q`` is the float
  ``2**23 + q``; subtract ``2**23 + z``, multiply by the scale in fp32, round once;
* ``1`` (fp16, 4-bit, CUDA; ``dq`` 1): planes ``j`` and ``j + 4`` of a word sit in its two 16-bit
  halves, so ``(w >> 4j) & 0x000F000F | 0x64006400`` is the fp16 pair ``1024 + q``; ``sub.f16x2``
  the pair ``1024 + z`` and ``mul.f16x2`` the scale pair: exact ``q - z``, one rounding of the
  product, bit-identical to the fp32 path; at any PL (the plane order above pairs j, j + 4);
* ``2`` (bf16, 4-bit, CUDA; ``dq`` 2): the same with bf16 pairs (magic ``0x4300`` = 128): the fp16
  scale is rounded to bf16 first (two roundings per weight instead of one; measured rel. error
  3.4-4.7e-3 vs 3.1-4.0e-3 with the fp32 path on H100).

Words and scales of the next k-step are loaded into registers one step ahead (``prefetch``, the
default), not through Triton's shared-memory pipeline (which reads the unswizzled word tile back
with bank conflicts: 20-30 % slower on H100).  Split-K (``split_k > 1``) reduces through the
persistent workspace and tile counters of :mod:`quantlinear_triton.kernels` (same protocol as its
``_finish``).

Launch configuration (``cfg``) for :func:`launch_tc` (:func:`default_config` picks one):

=============  ====================================================================  =========
key            meaning                                                               default
=============  ====================================================================  =========
``BN``         weight rows (output features) per program (64: 1 warpgroup, 128: 2)   128
``BM``         tokens per program (the wgmma N): 64, 128, 256                        128
``BK``         channels per k-step, ``PL * SLAB`` (PL: power of two dividing VPW,    256
               >= 2; rounded down to one)
``warps``      num_warps (4 per 64 weight rows)                                      8
``stages``     num_stages (x^T tile pipeline depth; shared memory: BK*BM*2 each)     2
``group_m``    token blocks of one weight block that run consecutively (swizzle)     8
``dq``         0: fp32 dequantization; 1: fp16x2 pairs (fp16); 2: also bf16x2 pairs  1
``prefetch``   1: words/scales one step ahead in registers; 0: Triton's pipeline     1
``split_k``    programs along K per output tile                                      1
=============  ====================================================================  =========

On Hopper the CUDA plugin runs :mod:`.kernels_wg` instead from M = 33 (its own schedule in Gluon: 0.92-1.05x cuBLAS
at M = 256 on five of six shapes); this kernel stays the prefill path of Ampere, Ada, Blackwell, ROCm and of the
layers ``wg`` does not take.

Measured on one H100 (Triton 3.6, CUDA graphs over > 150 MB of weight copies, W4 g128 sym;
``plugins/cuda/benchmarks/tc_variants.py``): 1.34-1.6x cuBLAS fp16 at M = 256..4096 (the shipped
``dot16`` kernel: 2.2-2.9x; dequantize + cuBLAS: 1.3-2.2x at M <= 1024, 1.07-1.10x at M = 4096).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import launch as _fast
from .kernels import COUNTER_SLOTS, _asm_ok, _dq_pair_h, _h2_magic, _pack_h2, _tile_of, _word_cols, _word_rows, split_buffers  # (split-K: its persistent buffers)

#: the configuration :func:`launch_tc` uses when none is given (the best single one measured on H100, fp16)
DEFAULT_CFG = {"BN": 128, "BM": 128, "BK": 256, "warps": 8, "stages": 2, "group_m": 8, "dq": 1, "prefetch": 1, "split_k": 1}


def default_config(M: int, N: int, dtype: torch.dtype, sm_count: int = 132, bf16_pairs: bool = True) -> dict:
    """The configuration to ship for a layer (H100 measurements, W4 g128; see the module docstring).

    128 x 128 tiles, a whole 256-channel tile per k-step, 8 warps, 2 stages; split-K 2 when the
    output tiles do not fill the GPU once (e.g. N = 4096 at M = 256: 80.8 us instead of 129 us);
    bf16: bf16x2 pairs (``dq`` 2) unless ``bf16_pairs`` is False (then the fp32 dequantization).
    """
    cfg = dict(DEFAULT_CFG)
    if dtype == torch.bfloat16:
        cfg["dq"] = 2 if bf16_pairs else 0
    tiles = -(-N // cfg["BN"]) * -(-M // cfg["BM"])
    if tiles < sm_count:
        cfg["split_k"] = 2
    return cfg

@triton.jit
def _dq_pair_bf(w, zp, sp):
    """Per word: the bf16 pair ``(q - z) * s`` of the codes at bits 0-3 (low) and 16-19 (high) of ``w`` (CUDA, sm_90).

    ``(w & 0x000F000F) | 0x43004300`` is the bf16 pair ``128 + q`` exactly; ``sub.bf16x2`` the pair
    ``128 + z`` (exact ``q - z``), ``mul.bf16x2`` the scale pair (the scale rounded to bf16 first).
    """
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; lop3.b32 t, $2, 0x000F000F, 0x43004300, 0xEA; sub.rn.bf16x2 t, t, $3; mul.rn.bf16x2 t, t, $4; mov.b32 {$0, $1}, t; }",
        "=h,=h,r,r,r", [w, zp, sp], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1)


@triton.jit
def _pack_bf2(a, b):
    """Two bf16 tensors -> int32 words holding ``a`` in the low and ``b`` in the high half (CUDA)."""
    return tl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [a, b], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _group(k, K, GS: tl.constexpr):
    """Group index of channel(s) ``k`` (padded channels: the last valid channel's group); GS 0: one group per row."""
    if GS == 0:
        return k * 0
    else:
        return tl.minimum(k, K - 1) // GS


@triton.jit
def _step_scales(s_ptr, z_ptr, klo, khi, jh, K, N, offs_n, n_mask,
                 SLAB: tl.constexpr, H: tl.constexpr, GROUPS: tl.constexpr, GS: tl.constexpr, HAS_ZEROS: tl.constexpr):
    """Scales and zeros (fp32) of one k-step's low-half and high-half planes: four ``[BN, H]`` tensors."""
    if GROUPS == 0:
        gl = _group(klo + jh * SLAB, K, GS)
        gh = _group(khi + jh * SLAB, K, GS)
    else:
        gl = _group(klo + jh * 0, K, GS)
        if GROUPS == 1:
            gh = gl
        else:
            gh = _group(khi + jh * 0, K, GS)
    sl = tl.load(s_ptr + gl[None, :] * N + offs_n[:, None], mask=n_mask[:, None], other=0.0).to(tl.float32)
    if GROUPS == 1:
        sh = sl
    else:
        sh = tl.load(s_ptr + gh[None, :] * N + offs_n[:, None], mask=n_mask[:, None], other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zl = tl.load(z_ptr + gl[None, :] * N + offs_n[:, None], mask=n_mask[:, None], other=0).to(tl.float32)
        if GROUPS == 1:
            zhh = zl
        else:
            zhh = tl.load(z_ptr + gh[None, :] * N + offs_n[:, None], mask=n_mask[:, None], other=0).to(tl.float32)
    else:
        zl = sl * 0.0
        zhh = zl
    return sl, sh, zl, zhh


@triton.jit
def _step_operands(w_ptrs, wst, s_ptr, z_ptr, i, jh, K, N, offs_n, n_mask, SPT: tl.constexpr, T: tl.constexpr, HS: tl.constexpr,
                   HALF: tl.constexpr, SLAB: tl.constexpr, H: tl.constexpr, GROUPS: tl.constexpr, GS: tl.constexpr,
                   HAS_ZEROS: tl.constexpr, EVEN_N: tl.constexpr):
    """The weight words and the low/high planes' scales (and zeros) of k-step ``i`` (tile ``i // SPT``)."""
    t = i // SPT
    klo = t * T + (i % SPT) * HS
    if EVEN_N:
        words = tl.load(w_ptrs + t * wst)
    else:
        words = tl.load(w_ptrs + t * wst, mask=n_mask[:, None], other=0)
    sl, sh, zl, zhh = _step_scales(s_ptr, z_ptr, klo, klo + HALF * SLAB, jh, K, N, offs_n, n_mask, SLAB, H, GROUPS, GS, HAS_ZEROS)
    return words, sl, sh, zl, zhh


@triton.jit
def _tc_coords(M, N, KW, steps_per_split, SLAB: tl.constexpr, SPT: tl.constexpr, HS: tl.constexpr, HALF: tl.constexpr,
               BK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """A program's output tile and K range (shared with :mod:`.fp_kernels_tc`): weight rows ``offs_n``, tokens
    ``offs_m``, slab words ``offs_p``, the x^T row -> channel offsets ``koff`` of a k-step (two runs of ``HS`` channels,
    ``HALF * SLAB`` apart), the masks, and the k-steps ``[s_start, s_end)``."""
    pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BM, BN, GROUP_M)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, SLAB)
    offs_c = tl.arange(0, BK)
    koff = (offs_c // HS) * (HALF * SLAB) + offs_c % HS  # x^T row c -> channel offset from klo
    n_steps = (KW // SLAB) * SPT
    s_start = tl.program_id(1) * steps_per_split
    s_end = tl.minimum(s_start + steps_per_split, n_steps)
    return offs_n, offs_m, offs_p, koff, offs_n < N, offs_m < M, s_start, s_end


@triton.jit
def _load_xt(x_ptrs, klo, koff, K, m_mask, EVEN_K: tl.constexpr, EVEN_M: tl.constexpr):
    """The ``[BK, BM]`` x^T tile of the k-step starting at channel ``klo`` (zeros past M and K)."""
    if EVEN_K and EVEN_M:
        xt = tl.load(x_ptrs + klo)
    elif EVEN_K:
        xt = tl.load(x_ptrs + klo, mask=m_mask[None, :], other=0.0)
    else:
        xt = tl.load(x_ptrs + klo, mask=m_mask[None, :] & ((klo + koff) < K)[:, None], other=0.0)
    return xt


@triton.jit
def _mma(wd, xt, acc):
    """``acc += wd @ xt`` (fp32 operands: ieee precision, no tf32)."""
    if xt.dtype == tl.float32:
        acc = tl.dot(wd, xt, acc, input_precision="ieee")
    else:
        acc = tl.dot(wd, xt, acc)
    return acc


@triton.jit
def _tc_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
               M, N, K, KW, steps_per_split, split_k, zh, zmagic,
               BITS: tl.constexpr, SLAB: tl.constexpr, PL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               GROUP_M: tl.constexpr, GROUPS: tl.constexpr, GS: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr,
               HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
               EVEN_N: tl.constexpr, EVEN_M: tl.constexpr):
    # A k-step s of tile t dequantizes PL of the tile's VPW planes: the low planes s*H + jh and the
    # high planes VPW/2 + s*H + jh (H = PL/2, jh < H), i.e. two runs of H*SLAB consecutive channels,
    # klo = t*T + s*H*SLAB and khi = klo + (VPW/2)*SLAB.  Each half is dequantized as [BN, H, SLAB]
    # and the two are joined to [BN, BK] (join -> permute -> reshape); the x^T tile [BK, BM] is
    # loaded in the same channel order (two contiguous runs).  The split Triton makes of a
    # register-A dot into K/2 (or K/16) wgmma groups inverts the join, so the dequantization runs in
    # the wgmma register layout (no shared-memory round trip).  Plane j and j + VPW/2 of a word are
    # its two 16-bit halves for 4-bit codes, so ASM dequantizes them as one fp16x2 (ASM 1) or bf16x2
    # (ASM 2) pair, at any PL.
    # GROUPS: 1: the tile lies in one group (group_size % T == 0, or GS 0: one group per row);
    # 2: each half-run lies in one group (group_size % (H*SLAB) == 0); 0: a scale per (row, plane).
    # PREFETCH: the next step's words and scales are loaded into registers one step ahead (not
    # through Triton's shared-memory pipeline, which reads them back with bank conflicts).
    VPW: tl.constexpr = 32 // BITS
    T: tl.constexpr = SLAB * VPW
    BK: tl.constexpr = PL * SLAB
    H: tl.constexpr = PL // 2
    HS: tl.constexpr = H * SLAB
    HALF: tl.constexpr = VPW // 2
    SPT: tl.constexpr = VPW // PL  # k-steps per tile
    QMASK: tl.constexpr = (1 << BITS) - 1
    DT = x_ptr.dtype.element_ty
    offs_n, offs_m, offs_p, koff, n_mask, m_mask, s_start, s_end = _tc_coords(M, N, KW, steps_per_split, SLAB, SPT, HS, HALF,
                                                                              BK, BM, BN, GROUP_M)
    jh = tl.arange(0, H)
    tl.assume(s_end > s_start)  # never an empty split (launch_tc): no zero-trip path to the final wgmma wait
    wrow, wst, hop = _word_rows(offs_n, N, KW, SLAB)  # (the grouped word layout: .packing)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    wst = wst[:, None]  # words from a row's slab to its next
    x_ptrs = x_ptr + offs_m[None, :] * K + koff[:, None]  # [BK, BM]: x^T
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    if PREFETCH:
        words, sl, sh, zl, zhh = _step_operands(w_ptrs, wst, s_ptr, z_ptr, s_start, jh, K, N, offs_n, n_mask, SPT, T, HS, HALF, SLAB, H, GROUPS, GS, HAS_ZEROS, EVEN_N)
    for i in range(s_start, s_end):
        t = i // SPT
        klo = t * T + (i % SPT) * HS
        if not PREFETCH:
            words, sl, sh, zl, zhh = _step_operands(w_ptrs, wst, s_ptr, z_ptr, i, jh, K, N, offs_n, n_mask, SPT, T, HS, HALF, SLAB, H, GROUPS, GS, HAS_ZEROS, EVEN_N)
        jl = (i % SPT) * H + jh  # low planes
        if ASM == 1 or ASM == 2:
            w3 = words[:, None, :] >> (jl * 4)[None, :, None]  # [BN, H, SLAB]: planes jl (low half), jl + 4 (high half)
            if ASM == 1:
                if HAS_ZEROS:
                    zp = _pack_h2((zl + 1024.0).to(tl.float16), (zhh + 1024.0).to(tl.float16))
                else:
                    zp = tl.full([BN, H], zh, tl.int32)
                sp = _pack_h2(sl.to(tl.float16), sh.to(tl.float16))
                wl, wh = _dq_pair_h(w3, tl.broadcast_to(zp[:, :, None], [BN, H, SLAB]), tl.broadcast_to(sp[:, :, None], [BN, H, SLAB]))
            else:
                if HAS_ZEROS:
                    zp = _pack_bf2((zl + 128.0).to(tl.bfloat16), (zhh + 128.0).to(tl.bfloat16))
                else:
                    zp = tl.full([BN, H], zh, tl.int32)
                sp = _pack_bf2(sl.to(tl.bfloat16), sh.to(tl.bfloat16))
                wl, wh = _dq_pair_bf(w3, tl.broadcast_to(zp[:, :, None], [BN, H, SLAB]), tl.broadcast_to(sp[:, :, None], [BN, H, SLAB]))
        else:
            ql = (((words[:, None, :] >> (jl * BITS)[None, :, None]) & QMASK) | 0x4B000000).to(tl.float32, bitcast=True)
            qh = (((words[:, None, :] >> ((HALF + jl) * BITS)[None, :, None]) & QMASK) | 0x4B000000).to(tl.float32, bitcast=True)
            if HAS_ZEROS:
                wl = ((ql - (zl + 8388608.0)[:, :, None]) * sl[:, :, None]).to(DT)
                wh = ((qh - (zhh + 8388608.0)[:, :, None]) * sh[:, :, None]).to(DT)
            else:
                wl = ((ql - zmagic) * sl[:, :, None]).to(DT)
                wh = ((qh - zmagic) * sh[:, :, None]).to(DT)
        # [BN, H, SLAB] x 2 -> [BN, 2, H, SLAB] -> [BN, BK]: x^T rows c (channels klo + koff[c])
        wd = tl.reshape(tl.permute(tl.join(wl, wh), (0, 3, 1, 2)), [BN, BK])
        xt = _load_xt(x_ptrs, klo, koff, K, m_mask, EVEN_K, EVEN_M)
        if PREFETCH:  # the next step's words and scales (the last iteration reloads its own: harmless)
            words, sl, sh, zl, zhh = _step_operands(w_ptrs, wst, s_ptr, z_ptr, tl.minimum(i + 1, s_end - 1), jh, K, N, offs_n, n_mask, SPT, T, HS, HALF, SLAB, H, GROUPS, GS, HAS_ZEROS, EVEN_N)
        acc = _mma(wd, xt, acc)
    _store(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tl.program_id(0), tl.program_id(1), split_k, M, N,
           HAS_BIAS, USE_SPLIT)


@triton.jit
def _store(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
           HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr):
    """Store the ``[BN, BM]`` tile ``acc`` (+ bias) into y ``[M, N]``; split-K partials reduce through a workspace.

    (The same protocol as :func:`quantlinear_triton.kernels._finish`: the last split program to
    arrive at a tile, by a per-tile counter, sums the partials in a fixed order and resets the counter.)
    """
    offs = offs_m[None, :] * N + offs_n[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    if USE_SPLIT:
        tl.store(ws_ptr + pid_k * M * N + offs, acc, mask=mask)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        if old == split_k - 1:
            total = tl.zeros_like(acc)
            for s in range(0, split_k):
                total += tl.load(ws_ptr + s * M * N + offs, mask=mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
            tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def tc_fits(bits: int) -> bool:
    """Whether ``_tc_kernel`` computes layers of ``bits``-bit codes (a tile splits into k-steps of an even power-of-two
    number of planes: every width but 6 bits)."""
    return (32 // bits) % 2 == 0


def planes_per_step(bits: int, slab: int, BK: int) -> int:
    """``PL``: the largest power of two <= BK / SLAB dividing the VPW planes of a word, at least 2 (the k-step of this
    module's kernel and of :mod:`.fp_kernels_tc`)."""
    vpw = 32 // bits
    pl = max(2, BK // slab)
    while pl > 2 and (vpw % pl or pl & (pl - 1)):
        pl -= 1
    if vpw % pl or pl & (pl - 1):
        raise ValueError(f"kernels_tc: no k-step for {bits}-bit codes (VPW {vpw})")
    return pl


def split_count(n_steps: int, split_k: int) -> tuple[int, int]:
    """``(split, steps per split)``: at most ``split_k`` splits of ``n_steps``, none empty (the kernels assume a
    non-empty K range)."""
    split = max(1, min(split_k, n_steps))
    sps = -(-n_steps // split)
    return -(-n_steps // sps), sps


def split_fits(n_tiles_out: int, numel: int) -> bool:
    """Whether the tile counters cover ``n_tiles_out`` tiles and int32 offsets a workspace of ``numel`` partials."""
    return n_tiles_out <= COUNTER_SLOTS and numel < 2**31


def split_plan(x: torch.Tensor, y: torch.Tensor, n_steps: int, split_k: int, n_tiles_out: int) -> tuple:
    """``(split, steps per split, workspace, counters)`` of a split-K launch (tc, mmv): :func:`split_count`'s split, none
    where :func:`split_fits` says no; partials in the persistent workspace of :mod:`.kernels` (``y`` stands in for
    both when there is no split)."""
    M, N = y.shape
    split, sps = split_count(n_steps, split_k)
    if split > 1 and not split_fits(n_tiles_out, split * M * N):
        split, sps = 1, n_steps
    if split == 1:
        return split, sps, y, y
    return (split, sps, *split_buffers(x, split * M * N))


def _resolve(cfg: dict | None, bits: int, slab: int, group_size: int, K: int, dtype: torch.dtype, asm_ok: bool) -> dict:
    """The effective constexprs/options of ``cfg`` for one layer."""
    c = dict(DEFAULT_CFG)
    c.update(cfg or {})
    vpw = 32 // bits
    pl = planes_per_step(bits, slab, int(c["BK"]))
    T = slab * vpw
    hs = pl // 2 * slab
    per_channel = group_size >= K
    if per_channel or group_size % T == 0:
        groups = 1
    elif group_size % hs == 0:
        groups = 2
    else:
        groups = 0
    dq = int(c.get("dq", 1))
    asm = 0
    if asm_ok and bits == 4 and dq >= 1:
        if dtype == torch.float16:
            asm = 1
        elif dtype == torch.bfloat16 and dq == 2:
            asm = 2
    return dict(PL=pl, GROUPS=groups, GS=0 if per_channel else int(group_size), ASM=asm, PREFETCH=bool(c.get("prefetch", 1)),
                BM=int(c["BM"]), BN=int(c["BN"]), GROUP_M=int(c.get("group_m", 8)), split_k=int(c.get("split_k", 1)),
                num_warps=int(c.get("warps", 8)), num_stages=int(c.get("stages", 3)))


@functools.lru_cache(maxsize=64)
def _bf2_sub_magic(zero_point: float) -> int:
    """The int32 whose two bf16 halves are both ``128 + zero_point`` (what ``sub.bf16x2`` takes off; the int GEMV's
    ``kernels._bf2_magic`` is the negated pair, for its ``fma.bf16x2``)."""
    h = int(torch.tensor(128.0 + zero_point, dtype=torch.bfloat16).view(torch.int16).item()) & 0xFFFF
    v = h | (h << 16)
    return v - (1 << 32) if v >= (1 << 31) else v



def launch_tc(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              bias: torch.Tensor | None, bits: int, slab: int, group_size: int, K: int, zero_point: float,
              cfg: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` with W in the slab layout, by ``_tc_kernel`` (see the module docstring for ``cfg``).

    x ``[M, K]`` fp16/bf16 (fp32 works: fp32 dequantization, ieee dots) contiguous; qweight int32
    ``[N, KW]``; scales ``[G, N]``; zeros ``[G, N]`` or None (then ``zero_point`` is every group's
    zero); bias ``[N]`` or None.  Returns y ``[M, N]`` in x's dtype.
    """
    M, Kx = x.shape
    assert Kx == K and x.is_contiguous()
    N, KW = qweight.shape
    r = _resolve(cfg, bits, slab, group_size, K, x.dtype, _asm_ok(x))
    y = out if out is not None else x.new_empty((M, N))
    if M == 0:
        return y
    vpw = 32 // bits
    n_tiles_out = -(-M // r["BM"]) * -(-N // r["BN"])
    split, sps, ws, cnt = split_plan(x, y, (KW // slab) * (vpw // r["PL"]), r["split_k"], n_tiles_out)
    zp = zeros if zeros is not None else scales
    bp = bias if bias is not None else scales
    zh = _bf2_sub_magic(zero_point) if r["ASM"] == 2 else _h2_magic(zero_point)
    even_k = K % (slab * vpw) == 0
    consts = dict(BITS=bits, SLAB=slab, PL=r["PL"], BM=r["BM"], BN=r["BN"], GROUP_M=r["GROUP_M"], GROUPS=r["GROUPS"],
                  GS=r["GS"], ASM=r["ASM"], PREFETCH=r["PREFETCH"], EVEN_N=N % r["BN"] == 0, EVEN_M=M % r["BM"] == 0,
                  HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None, USE_SPLIT=split > 1, EVEN_K=even_k)
    opts = dict(num_warps=r["num_warps"], num_stages=r["num_stages"])
    _fast.launch(_tc_kernel, (n_tiles_out, split), (x, qweight, scales, zp, bp, y, ws, cnt), (M, N, K, KW, sps, split, zh),
                 (float(8388608.0 + zero_point),), consts, ("tc", *consts.values(), *opts.values()), opts, y)
    return y


_fast.replayable(_tc_kernel)  # (one launch writes the whole output)
