"""Triton kernels for weight-only int matmuls ``y = x @ W^T (+ b)`` with W in the slab layout.

Imported lazily (first launch); importing it imports Triton.  Two kernels share one weight
layout (see :mod:`quantlinear_triton.packing`):

* ``_gemv_kernel`` (decode, small M): CUDA cores only.  A program owns ``BN`` output rows and
  a range of K tiles; per slab it shifts/masks ``SLAB`` words per row, turns the codes into
  fp32 with the exponent trick (``bits(2**23) | q`` is the float ``2**23 + q``, so one
  subtraction of the pre-shifted zero ``2**23 + z`` gives the exact ``q - z``), multiplies by
  the activations and reduces, and applies the scale once per (row, slab).  Weights are read
  exactly once, as 16-byte vectors.
* ``_dot_kernel`` (prefill, larger M): tensor cores.  Each slab is dequantized in registers to
  the activation dtype and fed to ``tl.dot``; ``SWAP`` computes ``y^T = W x^T`` so that the
  dequantized weight is the register operand of Hopper's wgmma (and M, which is small in the
  skinny case, becomes the narrow N side of the instruction).

* ``_gemv16_kernel`` / ``_dot16_kernel``: the same for fp16 activations with 2/4/8-bit codes
  (``_dot16``: 4-bit) whose runs of ``VPW / 2`` slabs share a group.  Codes ``j`` and
  ``j + VPW/2`` of a word sit in its two 16-bit halves, so one mask/or turns both into the fp16
  pair ``1024 + q`` and packed fp16x2 instructions finish the dequantization (PTX inline
  assembly: about half the instructions per code of the fp32 path; the GEMV sums the fp16
  products of a word's ``VPW / 2`` codes in fp16, then in fp32).  ``_gemv16_kernel`` also takes
  bf16 activations with 2/4-bit codes (``BF16``): one mask/or gives the bf16 pair ``128 + q``, one
  bf16x2 FMA the exact pair ``q - z``, and each half becomes an fp32 by a shift or a mask (a bf16
  is the high half of an fp32); the products and sums are fp32.  Without CUDA (interpreter,
  ROCm), or with the configuration key ``pair: False``, the same schedule runs in fp32
  (``ASM=False``: each code decoded in place, one mask/or and one FMA, no shift; on an H100 this
  decode and the bf16x2 one are within ~3% of each other for bf16, so tuning measures both).

Launches go through :mod:`quantlinear_triton.launch` (a cached direct launcher; falls back to
``kernel[grid]``).

Both can split K over ``split_k`` programs.  The split partials go to a persistent fp32
workspace per device (:func:`_workspace`: no allocation per call) and the last program to
arrive at an output tile (a counter per tile, in a persistent, zero-initialised buffer) sums them in a fixed order, writes the output and sets the counter
back to zero: one launch, deterministic, no memset.  (Launches on one stream are ordered,
so a counter is always zero when a launch starts.)

The code is device-neutral: the CUDA plugin and the ROCm plugin launch these same kernels
with their own configurations.  A configuration may carry backend compile options
(:data:`BACKEND_OPTIONS`: AMD's ``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``); they
are passed to the launch only when present, so configurations without them launch exactly
as before.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import launch as _fast
from .device_buffers import GrowingBuffers
from .runtime import env_on
from .packing import GEMV16_BITS, slabs_per_group

try:  # grid dependency control (programmatic dependent launch, sm90+; Triton >= 3.3)
    from triton.language.extra.cuda import gdc_launch_dependents as _gdc_launch_dependents
    from triton.language.extra.cuda import gdc_wait as _gdc_wait

    HAS_GDC = True
except ImportError:  # pragma: no cover - older Triton
    HAS_GDC = False

#: Upper bound of split_k.
MAXS = 64
#: Backend compile options a launch configuration may carry (Triton's AMD backend, ``HIPOptions``).
BACKEND_OPTIONS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")
#: Persistent per-device tile counters for split-K.
COUNTER_SLOTS = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


_cnt_by_index: dict[int, torch.Tensor] = {}  # the same buffers by ``Tensor.get_device()`` (the per-call lookup)


def _capturing(device_index: int) -> bool:
    if device_index < 0:
        return False
    try:
        return torch.cuda.is_current_stream_capturing()
    except Exception:
        return True


#: Persistent split-K workspaces (fp32, 1-D), by ``Tensor.get_device()``: the current one, and every smaller one it
#: replaced (kept alive: a CUDA graph captured earlier may still write into it); sizes are powers of two
WORKSPACE_MIN = 1 << 20
_WS = GrowingBuffers(lambda n, device: torch.empty(n, dtype=torch.float32, device=device),
                     lambda need, old: max(WORKSPACE_MIN, 1 << (need - 1).bit_length()),
                     lambda device_index, device: _capturing(device_index))


def _workspace(x: torch.Tensor, device_index: int, numel: int) -> torch.Tensor:
    """``numel`` fp32 elements of split-K workspace on ``x``'s device, without a per-call allocation.

    One persistent buffer per device, grown (to a power of two) when a launch needs more; the
    split partials are written and read within one launch and launches on a stream are ordered,
    so consecutive launches can share it (as they share the tile counters; split-K launches of
    one device running concurrently on two streams share both).  While a CUDA graph is being
    captured a buffer that is too small is not replaced: that launch gets its own temporary
    (from the graph's pool), as every launch did before.
    """
    buf = _WS.get(device_index, numel, x.device)
    return buf if buf is not None else torch.empty(numel, dtype=torch.float32, device=x.device)


def split_buffers(x: torch.Tensor, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K workspace (``numel`` fp32 elements) and tile counters of ``x``'s device, looked up by device index
    (this runs on every split-K launch)."""
    di = x.get_device()  # an int (-1: CPU), cheaper than x.device
    cnt = _cnt_by_index.get(di)
    if cnt is None:
        cnt = _cnt_by_index[di] = counters(x.device)
    return _workspace(x, di, numel), cnt


def reserve(device: torch.device) -> None:
    """Allocate ``device``'s split-K counters and minimum workspace now (before any graph capture)."""
    counters(device)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    _WS.get(device.index if device.type == "cuda" else -1, WORKSPACE_MIN, device)


def counters(device: torch.device) -> torch.Tensor:
    """The persistent split-K counter buffer of ``device`` (allocate before any graph capture)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _counters.get(device)
    if buf is None:
        buf = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=device)
        _counters[device] = buf
    return buf


@triton.jit
def _tile_of(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """The output tile ``(pid_m, pid_n)`` of GEMM program ``pid``: ``GROUP_M`` token blocks of one weight block run
    one after the other, so a weight tile is read from HBM once and reused from L2 (every tensor-core kernel)."""
    num_pid_m = tl.cdiv(M, BM)
    in_group = GROUP_M * tl.cdiv(N, BN)
    first_m = (pid // in_group) * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % in_group) % gsize, (pid % in_group) // gsize


@triton.jit
def _pdl_enter(PDL: tl.constexpr):
    """First statement of a kernel launched with programmatic dependent launch (``PDL``; see :func:`pdl_ok`): wait
    until the previous kernel of the stream has finished and its writes are visible.  As nothing is read or written
    before the wait, the result is the one of an ordinary launch; the kernel was scheduled while its predecessor
    drained.
    """
    if PDL:
        _gdc_wait()


@triton.jit
def _pdl_exit(PDL: tl.constexpr):
    """Let the next kernel of the stream (if it is launched with PDL) be scheduled: called after the main loop, not
    with the wait at the start.  Released at the start, the next grid's programs took SM slots while this grid's last
    programs still ran: ``mmv`` at M = 16 on 8192 x 28672 took 67.5 us instead of 63.3, at M = 2 on 14336 x 4096
    20.3 instead of 16.7 (H100, ``results/h100-pdl-late-release-2026-11-26.txt``); the GEMVs gained nothing either way.
    """
    if PDL:
        _gdc_launch_dependents()


@triton.jit
def _finish(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
            N_IS_DIM0: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, MAX_SPLIT: tl.constexpr):
    """Store ``acc`` (+ bias) into y, reducing split-K partials through the workspace."""
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
            if HAS_BIAS:
                b = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
                if N_IS_DIM0:
                    total += b[:, None]
                else:
                    total += b[None, :]
            tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")  # ready for the next launch
    else:
        if HAS_BIAS:
            b = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            if N_IS_DIM0:
                acc += b[:, None]
            else:
                acc += b[None, :]
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _word_rows(offs_n, N, KW, UNIT: tl.constexpr):
    """Where rows ``offs_n``' words start, how far apart their ``UNIT``-word tiles lie, and their hop, in the grouped
    word layout (:func:`.packing.word_offsets`): groups of 16 rows (the last ``N % 16``), each tile-major, so the tile
    of a group is one run of words; a full group's 32-word tiles in the decode kernel's load order (word ``w`` of a
    row at ``base + w + hop * (w // 16)``, :func:`_word_cols`)."""
    r = offs_n & 15  # (rows are never negative: bit operations, no signed division)
    g16 = offs_n - r
    h = tl.minimum(N - g16, 16)
    if UNIT == 32:  # (f = 1 for a full group; 32 r - 16 (r % 8) = 256 (r // 8) + 16 (r % 8); no select: the
        f = h >> 4     # loads keep their known alignment and stay 16-byte vectors)
        return g16 * KW + 32 * r - 16 * (r & 7) * f, h * 32, 112 * f
    return g16 * KW + r * UNIT, h * UNIT, offs_n * 0


@triton.jit
def _word_cols(offs_p, hop):
    """``[BN, P]``: where slab words ``offs_p`` of rows with hop ``hop`` (:func:`_word_rows`) lie from the rows'
    base (runs of 16 contiguous words: the loads stay 16-byte vectors)."""
    return offs_p[None, :] + hop[:, None] * (offs_p // 16)[None, :]


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                 M, N, K, KW, group_size, tiles_per_split, split_k, zmagic,
                 BITS: tl.constexpr, VPW: tl.constexpr, SLAB: tl.constexpr, SPG: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr,
                 HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr,
                 EVEN_K: tl.constexpr, MAX_SPLIT: tl.constexpr, PDL: tl.constexpr = False):
    # Everything stays 2-D [BN, SLAB] in the layout of the weight load: x slabs broadcast
    # along rows, products accumulate element-wise (one FMA per weight, no shuffles), the
    # scale multiplies a group's partial sums once, and rows are reduced after the K loop.
    T: tl.constexpr = SLAB * VPW
    QMASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    num_pid_n = tl.num_programs(0)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    n_tiles = KW // SLAB
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    wrow, wst, hop = _word_rows(offs_n, N, KW, SLAB)  # (the grouped word layout: .packing)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    SST = wst[:, None]
    _pdl_enter(PDL)
    w_next = tl.load(w_ptrs + t_start * SST, mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    if BM == 1:
        m = pid_m
        acc = tl.zeros([BN, SLAB], dtype=tl.float32)
        for t in range(t_start, t_end):
            w = w_next
            w_next = tl.load(w_ptrs + (t + 1) * SST, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
            gacc = tl.zeros([BN, SLAB], dtype=tl.float32)
            for j in tl.static_range(VPW):
                k0 = t * T + j * SLAB
                if j % SPG == 0:
                    g = tl.minimum(k0, K - 1) // group_size  # padded slabs: any valid group (x is 0 there)
                    s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
                    if HAS_ZEROS:
                        zm = (tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 8388608.0)[:, None]
                qf = (((w >> (j * BITS)) & QMASK) | 0x4B000000).to(tl.float32, bitcast=True)
                if HAS_ZEROS:
                    dq = qf - zm
                else:
                    dq = qf - zmagic
                if EVEN_K:
                    xv = tl.load(x_ptr + m * K + k0 + offs_p).to(tl.float32)
                else:
                    xv = tl.load(x_ptr + m * K + k0 + offs_p, mask=(k0 + offs_p) < K, other=0.0).to(tl.float32)
                gacc += dq * xv[None, :]
                if (j + 1) % SPG == 0:
                    acc += gacc * s[:, None]
                    gacc = tl.zeros([BN, SLAB], dtype=tl.float32)
        out = tl.sum(acc, axis=1)[None, :]
        offs_m = pid_m + tl.arange(0, 1)
    else:
        # a few rows: [BM, BN] partial dot products per slab (cross-lane sums per slab)
        offs_m = pid_m * BM + tl.arange(0, BM)
        m_mask = offs_m < M
        x_ptrs = x_ptr + offs_m[:, None] * K + offs_p[None, :]
        acc2 = tl.zeros([BM, BN], dtype=tl.float32)
        for t in range(t_start, t_end):
            w = w_next
            w_next = tl.load(w_ptrs + (t + 1) * SST, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
            gacc2 = tl.zeros([BM, BN], dtype=tl.float32)
            for j in tl.static_range(VPW):
                k0 = t * T + j * SLAB
                if j % SPG == 0:
                    g = tl.minimum(k0, K - 1) // group_size
                    s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
                    if HAS_ZEROS:
                        zm = (tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 8388608.0)[:, None]
                qf = (((w >> (j * BITS)) & QMASK) | 0x4B000000).to(tl.float32, bitcast=True)
                if HAS_ZEROS:
                    dq = qf - zm
                else:
                    dq = qf - zmagic
                if EVEN_K:
                    xv = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0).to(tl.float32)
                else:
                    xv = tl.load(x_ptrs + k0, mask=m_mask[:, None] & ((k0 + offs_p) < K)[None, :], other=0.0).to(tl.float32)
                gacc2 += tl.sum(dq[None, :, :] * xv[:, None, :], axis=2)
                if (j + 1) % SPG == 0:
                    acc2 += gacc2 * s[None, :]
                    gacc2 = tl.zeros([BM, BN], dtype=tl.float32)
        out = acc2
    m_mask = offs_m < M
    tile_id = pid_m * num_pid_n + pid_n
    _pdl_exit(PDL)
    _finish(out, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
            False, HAS_BIAS, USE_SPLIT, MAX_SPLIT)


@triton.jit
def _pack_h2(a, b):
    """Two fp16 tensors -> int32 words holding ``a`` in the low and ``b`` in the high half (CUDA)."""
    return tl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [a, b], dtype=tl.int32, is_pure=True, pack=1)


#: log2 of the power of two the paired-fp16 GEMV scales its codes down by: ``H * (2**BITS - 1) * 2**-k <= 1`` (H = the
#: products summed in fp16), so no fp16 product or partial sum can overflow for any finite fp16 activation
H2_SHIFT = {2: 5, 4: 6, 8: 9}


@triton.jit
def _h2_pow2_neg(like, KSH: tl.constexpr):
    """``like``-shaped int32 words holding the fp16 pair ``2**-KSH`` (KSH <= 14: a normal fp16)."""
    return tl.full(like.shape, ((15 - KSH) << 10) * 65537, tl.int32)


@triton.jit
def _dq_fma_h2(w, xp, acc, zn, kc, BITS: tl.constexpr):
    """Per word: ``acc += (q - z) * 2**-k * x`` on two fp16 lanes; q = the low ``BITS`` bits of each 16-bit half of ``w``.

    ``(w & mask) | 0x64006400`` is the pair of halves ``1024 + q`` exactly (q < 1024); one FMA with ``kc`` (the pair
    ``2**-k``, :func:`_h2_pow2_neg`) and ``zn = -(1024 + z) * 2**-k`` gives the exact ``(q - z) * 2**-k`` (``k`` =
    :data:`H2_SHIFT`: the codes scaled down so that a sum of ``VPW / 2`` products of any finite fp16 activations stays
    below 65504; the caller multiplies the sum back by ``2**k``); one fp16x2 FMA multiplies by the activation pair.
    """
    if BITS == 8:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, 0x00FF00FF, 0x64006400, 0xEA; fma.rn.f16x2 t, t, $5, $4; fma.rn.f16x2 $0, t, $2, $3; }",
            "=r,r,r,r,r,r", [w, xp, acc, zn, kc], dtype=tl.int32, is_pure=True, pack=1)
    elif BITS == 2:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, 0x00030003, 0x64006400, 0xEA; fma.rn.f16x2 t, t, $5, $4; fma.rn.f16x2 $0, t, $2, $3; }",
            "=r,r,r,r,r,r", [w, xp, acc, zn, kc], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, 0x000F000F, 0x64006400, 0xEA; fma.rn.f16x2 t, t, $5, $4; fma.rn.f16x2 $0, t, $2, $3; }",
            "=r,r,r,r,r,r", [w, xp, acc, zn, kc], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _dq_bf2(w, zp, BITS: tl.constexpr):
    """Per word: the fp32 pair ``(q - z)`` of the codes in the low ``BITS`` bits of each 16-bit half of ``w`` (CUDA, sm_80+).

    ``(w & mask) | 0x43004300`` is the bf16 pair ``128 + q`` exactly (q < 128); one bf16x2 FMA
    ``t * 1 + zp`` with ``zp`` the bf16 pair ``-(128 + z)`` gives the exact pair ``q - z``; a bf16
    is the high half of an fp32, so a shift (low lane) and a mask (high lane) make the fp32 values.
    """
    if BITS == 2:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t, one; mov.b32 one, 0x3F803F80; lop3.b32 t, $2, 0x00030003, 0x43004300, 0xEA; "
            "fma.rn.bf16x2 t, t, one, $3; shl.b32 $0, t, 16; and.b32 $1, t, 0xFFFF0000; }",
            "=r,=r,r,r", [w, zp], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t, one; mov.b32 one, 0x3F803F80; lop3.b32 t, $2, 0x000F000F, 0x43004300, 0xEA; "
            "fma.rn.bf16x2 t, t, one, $3; shl.b32 $0, t, 16; and.b32 $1, t, 0xFFFF0000; }",
            "=r,=r,r,r", [w, zp], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def _bf16_bits(v):
    """fp32 values -> the int32 holding their bf16 bits in the low half (round to nearest even)."""
    return v.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _zero_pairs_h(z_ptr, ga, gb, N, offs_n, n_mask, zh, HAS_ZEROS: tl.constexpr, BN: tl.constexpr, SLAB: tl.constexpr,
                  MUL: tl.constexpr = 1.0):
    """Per row, the fp16 pair ``(1024 + z(ga), 1024 + z(gb)) * MUL`` as an int32, broadcast over a slab; without zero
    points the layer's constant pair ``zh``.  ``dot16`` subtracts the pair from the ``1024 + q`` pairs (MUL 1); the GEMV
    adds it after scaling them by ``2**-k`` (MUL ``-2**-k``: exact, 1024 + z has at most 11 significant bits)."""
    if HAS_ZEROS:
        za = ((tl.load(z_ptr + ga * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 1024.0) * MUL).to(tl.float16)
        zb = ((tl.load(z_ptr + gb * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 1024.0) * MUL).to(tl.float16)
        zp = tl.broadcast_to(_pack_h2(za, zb)[:, None], [BN, SLAB])
    else:
        zp = tl.full([BN, SLAB], zh, tl.int32)
    return zp


@triton.jit
def _unpack_h2(acc):
    """int32 words holding two fp16 lanes -> (low, high) in fp32."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
        "=r,=r,r", [acc], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def _gemv16_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                   M, N, K, KW, group_size, tiles_per_split, split_k, zh, zmagic,
                   BITS: tl.constexpr, SLAB: tl.constexpr, BN: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   USE_SPLIT: tl.constexpr, EVEN_K: tl.constexpr, MAX_SPLIT: tl.constexpr, ASM: tl.constexpr,
                   BF16: tl.constexpr = False, PDL: tl.constexpr = False, KSH: tl.constexpr = 6):
    # 2/4/8-bit codes, fp16 activations, one row of x per program (grid dim 1).  Word p of a tile
    # holds code j (channel t*T + j*SLAB + p) at bits BITS*j: codes j and j + H (H = VPW / 2)
    # sit in the two 16-bit halves, so one mask/or of (w >> BITS*j) dequantizes both into an
    # fp16 pair (ASM: packed fp16x2 arithmetic; the pair's products are summed in fp16 over
    # j < H only, then in fp32).  Channels j < H and j >= H of a tile lie in one group each
    # (gemv16_fits: runs of H slabs share a group), so each half gets its own scale.  BF16 (2/4-bit
    # codes, bf16 activations; ASM): the pair is dequantized in bf16x2 (exact integers q - z), each
    # half goes to fp32 and the products and sums are fp32 (zh: the bf16 pair -(128 + z)).  Without
    # ASM (interpreter, other backends) the same schedule runs in fp32.
    VPW: tl.constexpr = 32 // BITS
    H: tl.constexpr = VPW // 2
    QMASK: tl.constexpr = (1 << BITS) - 1
    T: tl.constexpr = SLAB * VPW
    KSCALE: tl.constexpr = 1.0 / (1 << KSH)  # the codes' scale in the paired-fp16 sums (H2_SHIFT)
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_k = tl.program_id(2)
    num_pid_n = tl.num_programs(0)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    n_tiles = KW // SLAB
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    wrow, wst, hop = _word_rows(offs_n, N, KW, SLAB)  # (the grouped word layout: .packing)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    SST = wst[:, None]
    acc = tl.zeros([BN, SLAB], dtype=tl.float32)
    _pdl_enter(PDL)
    for t in range(t_start, t_end):
        w = tl.load(w_ptrs + t * SST, mask=n_mask[:, None], other=0, eviction_policy="evict_first")
        ka = t * T
        kb = ka + H * SLAB
        ga = tl.minimum(ka, K - 1) // group_size
        gb = tl.minimum(kb, K - 1) // group_size
        sa = tl.load(s_ptr + ga * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        sb = tl.load(s_ptr + gb * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if ASM:
            if BF16:
                if HAS_ZEROS:
                    za = _bf16_bits(-(tl.load(z_ptr + ga * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 128.0))
                    zb = _bf16_bits(-(tl.load(z_ptr + gb * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 128.0))
                    zp = tl.broadcast_to((za | (zb << 16))[:, None], [BN, SLAB])
                else:
                    zp = tl.full([BN, SLAB], zh, tl.int32)
                lo = tl.zeros([BN, SLAB], dtype=tl.float32)
                hi = tl.zeros([BN, SLAB], dtype=tl.float32)
            else:
                zp = _zero_pairs_h(z_ptr, ga, gb, N, offs_n, n_mask, zh, HAS_ZEROS, BN, SLAB, -KSCALE)  # -(1024 + z) * 2**-k
                a16 = tl.zeros([BN, SLAB], dtype=tl.int32)
        else:
            if HAS_ZEROS:
                zfa = tl.load(z_ptr + ga * N + offs_n, mask=n_mask, other=0).to(tl.float32)[:, None]
                zfb = tl.load(z_ptr + gb * N + offs_n, mask=n_mask, other=0).to(tl.float32)[:, None]
            else:
                zfa = zmagic - 8388608.0
                zfb = zfa
            w_hi = (w.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)  # (a logical shift: one instruction)
            lo = tl.zeros([BN, SLAB], dtype=tl.float32)
            hi = tl.zeros([BN, SLAB], dtype=tl.float32)
        for j in tl.static_range(H):
            if EVEN_K:
                xa = tl.load(x_ptr + m * K + ka + j * SLAB + offs_p)
                xb = tl.load(x_ptr + m * K + kb + j * SLAB + offs_p)
            else:
                xa = tl.load(x_ptr + m * K + ka + j * SLAB + offs_p, mask=(ka + j * SLAB + offs_p) < K, other=0.0)
                xb = tl.load(x_ptr + m * K + kb + j * SLAB + offs_p, mask=(kb + j * SLAB + offs_p) < K, other=0.0)
            if ASM:
                if BF16:
                    da, db = _dq_bf2(w >> (BITS * j), zp, BITS)
                    lo += da * xa.to(tl.float32)[None, :]
                    hi += db * xb.to(tl.float32)[None, :]
                else:
                    xp = tl.broadcast_to(_pack_h2(xa, xb)[None, :], [BN, SLAB])
                    a16 = _dq_fma_h2(w >> (BITS * j), xp, a16, zp, _h2_pow2_neg(zp, KSH), BITS)
            else:
                # codes in place (a code at bits b..b+BITS-1 <= 22, no shift): bits(2**23) | (q << b) is the float
                # 2**23 + q * 2**b, so (that * 2**-b) - (2**(23-b) + z) is the exact q - z (one mask/or, one FMA);
                # codes above bit 22 are taken from w_hi = w >> 16.  (zh is bits(2**23) here, a run-time value:
                # the mask is the instruction's immediate, the magic stays in a register.)
                qa = ((w & (QMASK << (BITS * j))) | zh).to(tl.float32, bitcast=True)
                lo += (qa * (2.0 ** -(BITS * j)) - ((2.0 ** (23 - BITS * j)) + zfa)) * xa.to(tl.float32)[None, :]
                if 16 + BITS * j + BITS <= 23:
                    qb = ((w & (QMASK << (16 + BITS * j))) | zh).to(tl.float32, bitcast=True)
                    hi += (qb * (2.0 ** -(16 + BITS * j)) - ((2.0 ** (7 - BITS * j)) + zfb)) * xb.to(tl.float32)[None, :]
                else:
                    qb = ((w_hi & (QMASK << (BITS * j))) | zh).to(tl.float32, bitcast=True)
                    hi += (qb * (2.0 ** -(BITS * j)) - ((2.0 ** (23 - BITS * j)) + zfb)) * xb.to(tl.float32)[None, :]
        if ASM:
            if not BF16:
                lo, hi = _unpack_h2(a16)
        acc += lo * sa[:, None] + hi * sb[:, None]
    out = tl.sum(acc, axis=1)[None, :]
    if ASM:
        if not BF16:  # the paired-fp16 sums were of (q - z) * 2**-k
            out = out * (1.0 / KSCALE)
    offs_m = m + tl.arange(0, 1)
    m_mask = offs_m < M
    tile_id = m * num_pid_n + pid_n
    _pdl_exit(PDL)
    _finish(out, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
            False, HAS_BIAS, USE_SPLIT, MAX_SPLIT)


@triton.jit
def _dq_pair_h(w, zp, sp):
    """Per word: the fp16 pair ``((q - z) * s)`` of codes at bits 0-3 (low) and 16-19 (high) of ``w`` (CUDA)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; lop3.b32 t, $2, 0x000F000F, 0x64006400, 0xEA; sub.f16x2 t, t, $3; mul.rn.f16x2 t, t, $4; mov.b32 {$0, $1}, t; }",
        "=h,=h,r,r,r", [w, zp, sp], dtype=(tl.float16, tl.float16), is_pure=True, pack=1)


@triton.jit
def _dot16_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                  M, N, K, KW, group_size, tiles_per_split, split_k, zh, zmagic,
                  SLAB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, SWAP: tl.constexpr,
                  HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr,
                  EVEN_K: tl.constexpr, MAX_SPLIT: tl.constexpr, ASM: tl.constexpr):
    # The tensor-core kernel for 4-bit codes and fp16 activations with groups of >= 4 slabs:
    # codes j and j + 4 of a word are dequantized together as one fp16 pair (mask/or, then
    # (pair - (1024 + z)) * s in fp16x2) and both slabs go to the dot; scaled weights, one
    # accumulator.  Without ASM the same schedule runs with fp32 dequantization.
    T: tl.constexpr = SLAB * 8
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _tile_of(pid, M, N, BM, BN, GROUP_M)

    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    m_mask = offs_m < M
    n_tiles = KW // SLAB
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    wrow, wst, hop = _word_rows(offs_n, N, KW, SLAB)  # (the grouped word layout: .packing)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    SST = wst[:, None]
    x_ptrs = x_ptr + offs_m[:, None] * K + offs_p[None, :]
    if SWAP:
        acc = tl.zeros([BN, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    w_next = tl.load(w_ptrs + t_start * SST, mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    # (no split is empty: launch() sizes them; without the assumption the zero-trip path writes the accumulator with
    # plain moves before the last wgmma wait, and ptxas serializes every wgmma of the kernel -- C7515, seen on sm90)
    tl.assume(t_end > t_start)
    for t in range(t_start, t_end):
        w = w_next
        w_next = tl.load(w_ptrs + (t + 1) * SST, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)  # prefetch
        ka = t * T
        kb = ka + 4 * SLAB
        ga = tl.minimum(ka, K - 1) // group_size
        gb = tl.minimum(kb, K - 1) // group_size
        sa = tl.load(s_ptr + ga * N + offs_n, mask=n_mask, other=0.0)
        sb = tl.load(s_ptr + gb * N + offs_n, mask=n_mask, other=0.0)
        if ASM:
            zp = _zero_pairs_h(z_ptr, ga, gb, N, offs_n, n_mask, zh, HAS_ZEROS, BN, SLAB)
            sp = tl.broadcast_to(_pack_h2(sa.to(tl.float16), sb.to(tl.float16))[:, None], [BN, SLAB])
        else:
            if HAS_ZEROS:
                zma = (tl.load(z_ptr + ga * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 8388608.0)[:, None]
                zmb = (tl.load(z_ptr + gb * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 8388608.0)[:, None]
            else:
                zma = zmagic
                zmb = zmagic
        for j in tl.static_range(4):
            if ASM:
                wa, wb = _dq_pair_h(w >> (4 * j), zp, sp)
            else:
                qa = (((w >> (4 * j)) & 15) | 0x4B000000).to(tl.float32, bitcast=True)
                qb = (((w >> (4 * j + 16)) & 15) | 0x4B000000).to(tl.float32, bitcast=True)
                wa = ((qa - zma) * sa.to(tl.float32)[:, None]).to(tl.float16)
                wb = ((qb - zmb) * sb.to(tl.float32)[:, None]).to(tl.float16)
            if EVEN_K:
                xa = tl.load(x_ptrs + ka + j * SLAB, mask=m_mask[:, None], other=0.0)
                xb = tl.load(x_ptrs + kb + j * SLAB, mask=m_mask[:, None], other=0.0)
            else:
                xa = tl.load(x_ptrs + ka + j * SLAB, mask=m_mask[:, None] & ((ka + j * SLAB + offs_p) < K)[None, :], other=0.0)
                xb = tl.load(x_ptrs + kb + j * SLAB, mask=m_mask[:, None] & ((kb + j * SLAB + offs_p) < K)[None, :], other=0.0)
            if SWAP:
                acc = tl.dot(wa, tl.trans(xa), acc)
                acc = tl.dot(wb, tl.trans(xb), acc)
            else:
                acc = tl.dot(xa, tl.trans(wa), acc)
                acc = tl.dot(xb, tl.trans(wb), acc)
    _finish(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, pid, pid_k, split_k, M, N,
            SWAP, HAS_BIAS, USE_SPLIT, MAX_SPLIT)


@triton.jit
def _dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K, KW, group_size, zmagic,
                    BITS: tl.constexpr, VPW: tl.constexpr, SLAB: tl.constexpr, SPG: tl.constexpr,
                    BN: tl.constexpr, TPP: tl.constexpr, HAS_ZEROS: tl.constexpr, EVEN_K: tl.constexpr):
    """W[n, k] = (q - z) * s in the output dtype, row-major [N, K] (for the dequant+cuBLAS path)."""
    T: tl.constexpr = SLAB * VPW
    QMASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    pid_t = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    n_tiles = KW // SLAB
    wrow, wst, hop = _word_rows(offs_n, N, KW, SLAB)
    for t in range(pid_t * TPP, tl.minimum(pid_t * TPP + TPP, n_tiles)):
        w = tl.load(w_ptr + (wrow + t * wst)[:, None] + _word_cols(offs_p, hop), mask=n_mask[:, None], other=0)
        for j in tl.static_range(VPW):
            k0 = t * T + j * SLAB
            if j % SPG == 0:
                g = tl.minimum(k0, K - 1) // group_size
                s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
                if HAS_ZEROS:
                    zm = (tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 8388608.0)[:, None]
            qf = (((w >> (j * BITS)) & QMASK) | 0x4B000000).to(tl.float32, bitcast=True)
            if HAS_ZEROS:
                dq = qf - zm
            else:
                dq = qf - zmagic
            val = (dq * s[:, None]).to(out_ptr.dtype.element_ty)
            o_ptrs = out_ptr + offs_n[:, None] * K + k0 + offs_p[None, :]
            if EVEN_K:
                tl.store(o_ptrs, val, mask=n_mask[:, None])
            else:
                tl.store(o_ptrs, val, mask=n_mask[:, None] & ((k0 + offs_p) < K)[None, :])


@triton.jit
def _dot_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                M, N, K, KW, group_size, tiles_per_split, split_k, zmagic,
                BITS: tl.constexpr, VPW: tl.constexpr, SLAB: tl.constexpr, SPG: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, SWAP: tl.constexpr, SCALE_W: tl.constexpr,
                HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr,
                EVEN_K: tl.constexpr, IEEE: tl.constexpr, MAX_SPLIT: tl.constexpr):
    # SCALE_W: scale each dequantized weight before the dot (one accumulator chain).
    # Otherwise the dot consumes the exact integers q - z (exact in fp16/bf16) and each run of
    # SPG slabs (one group) is accumulated apart, then scaled into the accumulator in fp32.
    T: tl.constexpr = SLAB * VPW
    QMASK: tl.constexpr = (1 << BITS) - 1
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _tile_of(pid, M, N, BM, BN, GROUP_M)

    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    m_mask = offs_m < M
    n_tiles = KW // SLAB
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    wrow, wst, hop = _word_rows(offs_n, N, KW, SLAB)  # (the grouped word layout: .packing)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    SST = wst[:, None]
    x_ptrs = x_ptr + offs_m[:, None] * K + offs_p[None, :]
    if SWAP:
        acc = tl.zeros([BN, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    w_next = tl.load(w_ptrs + t_start * SST, mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    # (no split is empty: launch() sizes them; without the assumption the zero-trip path writes the accumulator with
    # plain moves before the last wgmma wait, and ptxas serializes every wgmma of the kernel -- C7515, seen on sm90)
    tl.assume(t_end > t_start)
    for t in range(t_start, t_end):
        w = w_next
        w_next = tl.load(w_ptrs + (t + 1) * SST, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)  # prefetch
        part = tl.zeros_like(acc)
        for j in tl.static_range(VPW):
            k0 = t * T + j * SLAB
            if j % SPG == 0:
                g = tl.minimum(k0, K - 1) // group_size  # padded slabs: any valid group (x is 0 there)
                s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
                if HAS_ZEROS:
                    zm = (tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32) + 8388608.0)[:, None]
            qf = (((w >> (j * BITS)) & QMASK) | 0x4B000000).to(tl.float32, bitcast=True)
            if HAS_ZEROS:
                dq = qf - zm
            else:
                dq = qf - zmagic
            if EVEN_K:
                xv = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0)
            else:
                xv = tl.load(x_ptrs + k0, mask=m_mask[:, None] & ((k0 + offs_p) < K)[None, :], other=0.0)
            if SCALE_W:
                wd = (dq * s[:, None]).to(DT)
            else:
                wd = dq.to(DT)
            if SWAP:
                if IEEE:
                    part = tl.dot(wd, tl.trans(xv), part, input_precision="ieee")
                else:
                    part = tl.dot(wd, tl.trans(xv), part)
            else:
                if IEEE:
                    part = tl.dot(xv, tl.trans(wd), part, input_precision="ieee")
                else:
                    part = tl.dot(xv, tl.trans(wd), part)
            if not SCALE_W:
                if (j + 1) % SPG == 0:
                    if SWAP:
                        acc += part * s[:, None]
                    else:
                        acc += part * s[None, :]
                    part = tl.zeros_like(acc)
        if SCALE_W:
            acc += part
    _finish(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, pid, pid_k, split_k, M, N,
            SWAP, HAS_BIAS, USE_SPLIT, MAX_SPLIT)


_static: dict[tuple, tuple] = {}
_skey_ids: dict[tuple, int] = {}


def gemv16_fits(bits: int, slab: int, group_size: int, K: int, dtype: torch.dtype) -> bool:
    """Whether the paired GEMV (``gemv16``) computes this layer: 2/4/8-bit fp16 or 2/4-bit bf16, runs of VPW/2 slabs in one group."""
    return bits in GEMV16_BITS.get(dtype, ()) and slabs_per_group(bits, slab, group_size, K) % (16 // bits) == 0


def dot16_fits(bits: int, slab: int, group_size: int, K: int, dtype: torch.dtype) -> bool:
    """Whether the paired-fp16 tensor-core kernel (``dot16``) computes this layer: 4-bit, fp16, groups of >= 4 slabs."""
    return bits == 4 and dtype == torch.float16 and gemv16_fits(bits, slab, group_size, K, dtype)


_NATIVE_ASM = getattr(torch.version, "hip", None) is None and not _fast.interpreting()


def _asm_ok(x: torch.Tensor) -> bool:
    """PTX inline assembly applies: a CUDA tensor, compiled (not interpreted) kernels."""
    return _NATIVE_ASM and x.is_cuda


_bf2_dev: dict[int, bool] = {}


def _bf2_ok(x: torch.Tensor) -> bool:
    """The bf16x2 PTX of ``gemv16`` (``fma.rn.bf16x2``: sm_80+) applies on ``x``'s device."""
    di = x.get_device()
    ok = _bf2_dev.get(di)
    if ok is None:
        ok = _bf2_dev[di] = _asm_ok(x) and torch.cuda.get_device_capability(x.device)[0] >= 8
    return ok


_pdl_dev: dict[int, bool] = {}


def pdl_ok(x: torch.Tensor) -> bool:
    """Whether the decode kernels launch on ``x``'s device with programmatic dependent launch.

    CUDA sm_90+ (``griddepcontrol``), compiled kernels, a Triton that exposes it, and ``QUANTLINEAR_PDL`` not ``0``.
    The GEMVs (and the activation-quantization kernel before the float ones) are then scheduled while the previous
    kernel drains instead of after it: 0.1-0.5 us less per int W4 GEMV and 1.0-1.3 us per MXFP4 / NVFP4 call
    (activation kernel + GEMV) at M = 1 on an H100 (``benchmarks/pdl_probe.py``).
    """
    di = x.get_device()
    ok = _pdl_dev.get(di)
    if ok is None:
        ok = _pdl_dev[di] = (HAS_GDC and _asm_ok(x) and torch.cuda.get_device_capability(x.device)[0] >= 9
                             and env_on("QUANTLINEAR_PDL", "1"))
    return ok


def _static_args(cfg: dict, bits: int, slab: int, group_size: int, K: int, has_zeros: bool, has_bias: bool, is_fp32,
                 dtype: torch.dtype | None = None, pdl: bool = False) -> tuple:
    """The launch arguments that do not depend on M, computed once per (config, layer kind)."""
    key = (id(cfg), bits, slab, group_size, K, has_zeros, has_bias, is_fp32, dtype, pdl)
    st = _static.get(key)
    if st is not None and st[0] is cfg:  # st holds cfg, so its id cannot be reused meanwhile
        return st
    kind = cfg["kernel"]
    vpw = 32 // bits
    BM, BN = (1, int(cfg.get("BN", 64))) if kind == "dqmm" else (int(cfg.get("BM", 1)), int(cfg["BN"]))
    split = 1 if kind == "dqmm" else int(cfg.get("split_k", 1))
    opts = dict(num_warps=int(cfg.get("warps", 4)), num_stages=int(cfg.get("stages", 2)))
    opts.update({k: int(cfg[k]) for k in BACKEND_OPTIONS if k in cfg})
    pdl = pdl and kind in ("gemv", "gemv16")
    if pdl:
        opts["launch_pdl"] = True
    even_k = K % (slab * vpw) == 0
    rows = BM  # gemv16 runs one row of x per program; a configuration with BM > 1 (e.g. an old tuning cache) runs gemv
    if kind == "gemv16":
        common = dict(BITS=bits, SLAB=slab, BN=BN, HAS_ZEROS=has_zeros, HAS_BIAS=has_bias, EVEN_K=even_k, MAX_SPLIT=MAXS,
                      BF16=dtype == torch.bfloat16, PDL=pdl, KSH=H2_SHIFT.get(bits, 0), **opts)  # (every constexpr by name: the direct launcher needs them all)
        BM = 1
    elif kind == "dot16":
        common = dict(SLAB=slab, BM=BM, BN=BN, GROUP_M=int(cfg.get("group_m", 8)), SWAP=bool(cfg.get("swap", True)), HAS_ZEROS=has_zeros,
                      HAS_BIAS=has_bias, EVEN_K=even_k, MAX_SPLIT=MAXS, **opts)
    else:
        common = dict(BITS=bits, VPW=vpw, SLAB=slab, SPG=slabs_per_group(bits, slab, group_size, K), BM=BM, BN=BN,
                      HAS_ZEROS=has_zeros, HAS_BIAS=has_bias, EVEN_K=even_k, MAX_SPLIT=MAXS, **opts)
        if kind == "gemv":
            common["PDL"] = pdl
    if kind == "dot":
        common.update(GROUP_M=int(cfg.get("group_m", 8)), SWAP=bool(cfg.get("swap", True)), SCALE_W=bool(cfg.get("scale_w", False)),
                      IEEE=is_fp32)
    consts = {k: v for k, v in common.items() if k not in opts}
    # a paired-fp16 configuration for a layer it does not fit (or gemv16 with BM > 1): the general kernel with the same tiles
    if kind == "gemv16" and (rows > 1 or not (dtype is not None and gemv16_fits(bits, slab, group_size, K, dtype))):
        fallback = dict(cfg, kernel="gemv", BM=rows)
    elif kind == "dot16" and not (dtype is not None and dot16_fits(bits, slab, group_size, K, dtype)):
        fallback = dict(cfg, kernel="dot", scale_w=True)
    else:
        fallback = None
    # by value: identifies the constexprs and options of a launch (interned to a small int: hashed on every launch)
    # (prefixed: other modules' static keys share launch's cache)
    skey = _skey_ids.setdefault((kind, *sorted(common.items())), ("wna16", len(_skey_ids)))
    st = (cfg, kind, BM, BN, split, consts, opts, skey, {}, fallback, common)  # common last (tests read st[-1])
    if len(_static) > 4096:
        _static.clear()
    _static[key] = st
    return st


def _h2_pair(value: float) -> int:
    """The (signed) int32 whose two fp16 halves are both ``value`` rounded to fp16."""
    h = int(torch.tensor(value, dtype=torch.float16).view(torch.int16).item()) & 0xFFFF
    v = h | (h << 16)
    return v - (1 << 32) if v >= (1 << 31) else v


@functools.lru_cache(maxsize=256)
def _h2_magic(zero_point: float) -> int:
    """The int32 whose two fp16 halves are both ``1024 + zero_point`` (cached: looked up on every paired launch)."""
    return _h2_pair(1024.0 + zero_point)



@functools.lru_cache(maxsize=256)
def _h2_neg_magic(zero_point: float, shift: int) -> int:
    """The int32 whose two fp16 halves are both ``-(1024 + zero_point) * 2**-shift`` (the paired GEMVs' scaled zero pair)."""
    return _h2_pair(-(1024.0 + zero_point) * 2.0 ** -shift)


@functools.lru_cache(maxsize=256)
def _bf2_magic(zero_point: float) -> int | None:
    """The int32 whose two bf16 halves are both ``-(128 + zero_point)``; None where that is not exact in bf16."""
    v = -(128.0 + zero_point)
    b = torch.tensor(v, dtype=torch.float32).to(torch.bfloat16)
    if float(b) != v:
        return None
    h = int(b.view(torch.int16).item()) & 0xFFFF
    w = h | (h << 16)
    return w - (1 << 32) if w >= (1 << 31) else w



for _k in (_gemv_kernel, _gemv16_kernel, _dot16_kernel, _dot_kernel):  # each launch writes the whole output
    _fast.replayable(_k)


def persistent_tensors() -> list[torch.Tensor]:
    """The split-K workspaces and tile counters, which live as long as the process (constants for a
    :class:`.launch.Replay`)."""
    return [*_WS.tensors(), *_counters.values()]


def launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
           bias: torch.Tensor | None, bits: int, slab: int, group_size: int, in_features: int,
           zero_point: float, cfg: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run one kernel with launch configuration ``cfg`` (see :mod:`quantlinear_triton.tune`)."""
    if cfg["kernel"] == "tc":  # the large-M tensor-core kernel (its own module; its cfg keys in kernels_tc)
        from .kernels_tc import launch_tc

        return launch_tc(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features, zero_point, cfg, out)
    if cfg["kernel"] == "wg":  # the Hopper prefill kernel (Gluon; kernels_wg), or the tc kernel where it cannot run
        from . import kernels_wg as _wg
        from .kernels_tc import default_config as _tc_default, launch_tc

        if _wg.fits(bits, slab, group_size, in_features, x.dtype) and _wg.runs(x, scales):
            return _wg.launch_wg(x, qweight, scales, zeros, bias, group_size, zero_point, cfg, out)
        return launch_tc(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features, zero_point,
                         _tc_default(x.shape[0], qweight.shape[0], x.dtype), out)
    if cfg["kernel"] == "mmv":  # the tensor-core decode kernel (Gluon; kernels_mmv), or its fallback where it cannot run
        from . import kernels_mmv as _mmv

        if _mmv.takes(x, scales, bits, slab, group_size, in_features, zero_point):
            return _mmv.launch_mmv(x, qweight, scales, zeros, bias, group_size, zero_point, cfg, out, bits)
        cfg = _mmv.FALLBACK
    M, K = x.shape
    N, KW = qweight.shape
    dt = x.dtype
    st = _static_args(cfg, bits, slab, group_size, K, zeros is not None, bias is not None, dt == torch.float32, dt, pdl_ok(x))
    kind, BM, BN, split, opts, skey, common = st[1], st[2], st[3], st[4], st[6], st[7], st[10]
    if st[9] is not None:  # a paired-fp16 configuration this layer does not fit
        return launch(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features, zero_point, st[9], out)
    y = out if out is not None else x.new_empty((M, N))
    if M == 0:
        return y
    zmagic = 8388608.0 + zero_point
    zp = zeros if zeros is not None else scales
    if kind == "dqmm":
        return _dequant_matmul(x, qweight, scales, zp, bias, out, common, N, K, KW, group_size, zmagic, cfg)
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
        ws, cnt = split_buffers(x, split * M * N)
    else:
        ws = cnt = y
    bp = bias if bias is not None else scales
    tensors = (x, qweight, scales, zp, bp, y, ws, cnt)
    ints = (M, N, K, KW, group_size, tps, split)
    use_split = split > 1
    if kind == "gemv":
        _fast.launch(_gemv_kernel, (-(-N // BN), -(-M // BM), split), tensors, ints, (zmagic,), _with(st, use_split), (skey, use_split), opts, y)
    elif kind == "gemv16":
        if dt == torch.bfloat16:
            zh = _bf2_magic(zero_point)
            # (a zero point that is not exact in bf16: the fp32 schedule; ``pair: False``: the same, to measure)
            asm = zh is not None and _bf2_ok(x) and bool(cfg.get("pair", True))
        else:
            asm = _asm_ok(x) and bool(cfg.get("pair", True))
            zh = _h2_neg_magic(zero_point, common["KSH"])
        if not asm:
            zh = 0x4B000000  # the fp32 schedule's magic, bits(2**23)
        _fast.launch(_gemv16_kernel, (-(-N // BN), M, split), tensors, (*ints, zh), (zmagic,), _with(st, use_split, asm),
                     (skey, use_split, asm), opts, y)
    elif kind == "dot16":
        asm = _asm_ok(x)
        zh = _h2_magic(zero_point)
        _fast.launch(_dot16_kernel, (n_tiles_out, split), tensors, (*ints, zh), (zmagic,), _with(st, use_split, asm),
                     (skey, use_split, asm), opts, y)
    else:
        _fast.launch(_dot_kernel, (n_tiles_out, split), tensors, ints, (zmagic,), _with(st, use_split), (skey, use_split), opts, y)
    return y


def _with(st: tuple, use_split: bool, asm: bool | None = None) -> dict:
    """The constexprs of static arguments ``st`` plus USE_SPLIT (and ASM), built once per variant."""
    variants = st[8]
    c = variants.get((use_split, asm))
    if c is None:
        c = dict(st[5], USE_SPLIT=use_split)
        if asm is not None:
            c["ASM"] = asm
        variants[(use_split, asm)] = c
    return c


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int, slab: int, group_size: int,
               in_features: int, zero_point: float, dtype: torch.dtype, BN: int = 64, tpp: int = 4) -> torch.Tensor:
    """The float weight ``[N, K]`` in ``dtype`` (one pass over the packed weight)."""
    N, KW = qweight.shape
    K = in_features
    vpw = 32 // bits
    W = torch.empty((N, K), dtype=dtype, device=qweight.device)
    n_tiles = KW // slab
    grid = (-(-N // BN), -(-n_tiles // tpp))
    _dequant_kernel[grid](qweight, scales, zeros if zeros is not None else scales, W, N, K, KW, group_size, float(8388608.0 + zero_point),
                          BITS=bits, VPW=vpw, SLAB=slab, SPG=slabs_per_group(bits, slab, group_size, K), BN=BN, TPP=tpp,
                          HAS_ZEROS=zeros is not None, EVEN_K=(K % (slab * vpw) == 0), num_warps=4)
    return W


def _dequant_matmul(x, qweight, scales, zp, bias, out, common, N, K, KW, group_size, zmagic, cfg):
    """Large M: dequantize into a temporary and let cuBLAS multiply (the temporary is freed)."""
    BN, tpp = int(cfg.get("BN", 64)), int(cfg.get("tpp", 4))
    W = torch.empty((N, K), dtype=x.dtype, device=x.device)
    n_tiles = KW // common["SLAB"]
    grid = (-(-N // BN), -(-n_tiles // tpp), 1)
    consts = dict(BITS=common["BITS"], VPW=common["VPW"], SLAB=common["SLAB"], SPG=common["SPG"], BN=BN, TPP=tpp,
                  HAS_ZEROS=common["HAS_ZEROS"], EVEN_K=common["EVEN_K"])
    _fast.launch(_dequant_kernel, grid, (qweight, scales, zp, W), (N, K, KW, group_size), (zmagic,), consts,
                 ("dequant", *consts.values()), {"num_warps": 4}, W)
    if out is None:
        return torch.nn.functional.linear(x, W, bias)
    if bias is not None:
        return torch.addmm(bias, x, W.t(), out=out)
    return torch.mm(x, W.t(), out=out)
