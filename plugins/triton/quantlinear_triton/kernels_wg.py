"""``wg``: the prefill kernel (large M) for 4-bit codes on Hopper, written in Gluon around ``wgmma`` with the
dequantized weight as the register A operand and the activations streamed by the tensor-copy engine (TMA).

Why not :mod:`.kernels_tc`: Triton decides there where the dequantization and the MMAs of a k-step wait for each
other; measured on an H100 it reaches about half of the tensor cores' rate at M = 256 (1.34-1.65x cuBLAS fp16).
Here the schedule is explicit:

* ``y^T = W x^T`` per program: ``BN`` = 128 weight rows (8 warps = two warpgroups of 64 rows) by ``BM`` tokens;
* a step is one code plane ``j`` of a 256-channel slab tile (see :mod:`.packing`: word ``p`` holds channel
  ``32 j + p`` at bits ``4 j`` and channel ``128 + 32 j + p`` at bits ``16 + 4 j``): the word's two 16-bit halves
  dequantize as one fp16 (bf16) pair, and the low / high halves are two ``[BN, 32]`` A operands for the
  ``[BM, 32]`` activation boxes at channels ``256 t + 32 j`` and ``256 t + 128 + 32 j``;
* each lane loads the words ``p`` its A fragments need (``2q, 2q + 1, 2q + 8, 2q + 9`` and the same + 16, of rows
  ``g`` and ``g + 8``), so the dequantized halves land directly in the wgmma register layout (:data:`_words_layout`,
  checked by a trivial layout conversion at compile time): no shared-memory round trip for the weights;
* the activation boxes arrive through ``STAGES`` shared-memory buffers filled by TMA ``STAGES - 1`` steps ahead; the
  MMAs are asynchronous, and a step's A registers are dequantized while the previous step's MMAs run (one step in
  flight: ``warpgroup_mma_wait(2)`` after issuing a step's two MMAs);
* the next tile's words, scale pairs and zero pairs are loaded a tile ahead into registers;
* split-K (``split_k > 1``, or the two halves of a small last wave's tiles: :func:`split_schedule`) reduces through
  the workspace and tile counters of :mod:`.kernels` (each split's fp32 partial in its own slot, stored in whole
  32-byte sectors; the last split of a tile sums them in order).

Dequantization: fp16, ``(w >> 4j) & 0x000F000F | 0x64006400`` is the pair ``1024 + q``, minus ``1024 + z``
(exact), times the scale pair (one rounding: bit-identical to the other fp16 paths); bf16 the same with ``128 + q``
(the scale rounded to bf16 first).  Groups: multiples of 128 channels that are powers of two times 128, or one per
row (:func:`.kernels_mmv.group_shift`).

Two planes of MMAs in flight (a second A buffer) made ptxas serialize every wgmma (C7513, "non wgmma instructions
defining input registers"), so one plane stays in flight.  The words' addresses are formed in the loop from int32
offsets (``w_ptr + (woff + t * sst)``): hoisted as eight 64-bit pointers they pushed the 256-token variants to 255
registers and spills.

Measured on an H100 through the layer (``quantlinear bench``, the graph-tuned table; CUDA graphs, W4 g128 fp16;
variants by ``plugins/cuda/benchmarks/wg_variants.py``; ``results/h100-bench-w4-fp16-wg-split-2026-11-26.txt``):
0.91-1.01x cuBLAS fp16's time at M = 256 on five of the six benchmark shapes (1.15x on 4096 x 4096), 0.91-1.04x at
M = 1024 on five (1.12x on 4096 x 14336, with its last wave in halves), 0.45-0.88x at M = 64; the ``tc`` kernel it
replaces took 1.34-1.65x at M = 256.  With neither activation loads nor dequantization the schedule runs at ~740
TFLOP/s (75% of the dense peak): the loads cost 0-6%, the dequantization 3-11%.
"""

from __future__ import annotations

import functools

import torch

from . import launch as _fast
from .kernels import _asm_ok, _h2_magic, _tile_of, split_buffers  # (_tile_of: a scalar Triton function, Gluon calls it)
from .kernels_mmv import group_shift
from .kernels_tc import _bf2_sub_magic, split_count, split_fits

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .kernels_mmv import _group_words  # the grouped word layout (.packing)
    from .kernels_mmv import _pack as _pack2  # two 16-bit halves -> one int32 pair

    HAS_WG = True
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
    #: TMA global -> shared: ``async_copy_global_to_shared`` in Triton 3.4-3.6, ``async_load`` later
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
except ImportError:  # pragma: no cover - Triton without Gluon's Hopper module
    HAS_WG = False

BOX = 32  #: channels per activation box (one code plane of a 32-word slab)

if HAS_WG:

    class _XDesc(TensorDescriptor):
        """The activations' TMA descriptor, keyed by the direct launcher (:mod:`.launch`) like the tensor it describes:
        its dtype, device and 16-byte alignment (its block shape and layout are in the launch's static key).  Triton's
        launcher encodes the ``CUtensorMap`` from ``base`` / ``shape`` / ``strides`` on every launch, as for
        ``kernel[grid]``."""

        @property
        def dtype(self):
            return self.base.dtype

        @property
        def is_cuda(self):
            return self.base.is_cuda

        def data_ptr(self):
            return self.base.data_ptr()

        def get_device(self):
            return self.base.get_device()

    @gluon.constexpr_function
    def _words_layout(NW):
        """The ``[16 NW, 32]`` word tensor of one slab tile held so that each lane's dequantized halves are its wgmma
        A fragments (fp16, ``k_width`` 2, ``NW`` warps of 16 rows): registers word ``p`` + 1, row + 8, ``p`` + 8,
        ``p`` + 16; lanes ``p`` + 2, + 4 and rows + 1, + 2, + 4; warps rows + 16, + 32 (+ 64)."""
        warps = [[16 << i, 0] for i in range(NW.bit_length() - 1)]
        return gl.DistributedLinearLayout(reg_bases=[[0, 1], [8, 0], [0, 8], [0, 16]],
                                          lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]],
                                          warp_bases=warps, block_bases=[], shape=[16 * NW, 32])

    @gluon.constexpr_function
    def _part_layout(NW):
        """The ``[BM, 16 NW]`` fp32 partial in 16-byte runs, a warp covering whole rows: 512 (256) contiguous bytes a
        store instruction."""
        tn = 4 * NW
        return gl.BlockedLayout([1, 4], [32 // tn, tn], [NW, 1], [1, 0])

    @gluon.constexpr_function
    def _chunk_rows(BM, SPLIT):
        """Tokens of a chunk of the last split's in-order sum: the SPLIT partials' loads of a chunk, issued together,
        take 64 registers a thread."""
        return min(BM, max(8, 128 >> (SPLIT - 1).bit_length()))

    @gluon.constexpr_function
    def _out_layout(NW):
        """The ``[BM, 16 NW]`` output tile in 16-byte runs along the weight rows (coalesced stores of y)."""
        tn = 16 * NW // 8
        return gl.BlockedLayout([1, 8], [32 // tn, tn], [NW, 1], [1, 0])

    @gluon.constexpr_function
    def _dq_asm(j, bf16):
        """Plane ``j`` of a word -> the pair ``(q - z) * s`` as two 16-bit halves (``$2`` the word, ``$3`` the pair
        ``magic + z``, ``$4`` the scale pair)."""
        sh = f"shr.u32 t, $2, {4 * j}; " if j else "mov.b32 t, $2; "
        if bf16:
            return ("{ .reg .b32 t; " + sh + "lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; sub.rn.bf16x2 t, t, $3; "
                    "mul.rn.bf16x2 t, t, $4; mov.b32 {$0, $1}, t; }")
        return ("{ .reg .b32 t; " + sh + "lop3.b32 t, t, 0x000F000F, 0x64006400, 0xEA; sub.f16x2 t, t, $3; "
                "mul.rn.f16x2 t, t, $4; mov.b32 {$0, $1}, t; }")

    @gluon.jit
    def _dq(words, zp, sp, J: gl.constexpr, BF16: gl.constexpr):
        if BF16:
            r = gl.inline_asm_elementwise(_dq_asm(J, True), "=h,=h,r,r,r", [words, zp, sp],
                                          dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=1)
        else:
            r = gl.inline_asm_elementwise(_dq_asm(J, False), "=h,=h,r,r,r", [words, zp, sp],
                                          dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
        return r

    @gluon.jit
    def _row_pairs(s_ptr, z_ptr, t, rows, gsh, gmax, N, zh, HAS_ZEROS: gl.constexpr, BF16: gl.constexpr):
        """The rows' scale pairs and ``magic + z`` pairs of tile ``t`` (halves: groups ``2t >> gsh`` and
        ``(2t + 1) >> gsh``)."""
        ga = (2 * t) >> gsh
        gb = gl.minimum((2 * t + 1) >> gsh, gmax)
        sa = gl.load(s_ptr + ga * N + rows)
        sb = gl.load(s_ptr + gb * N + rows)
        if BF16:
            sp = _pack2(sa.to(gl.float32).to(gl.bfloat16), sb.to(gl.float32).to(gl.bfloat16))
        else:
            sp = _pack2(sa, sb)
        if HAS_ZEROS:
            za = gl.load(z_ptr + ga * N + rows).to(gl.float32)
            zb = gl.load(z_ptr + gb * N + rows).to(gl.float32)
            if BF16:
                zp = _pack2((za + 128.0).to(gl.bfloat16), (zb + 128.0).to(gl.bfloat16))
            else:
                zp = _pack2((za + 1024.0).to(gl.float16), (zb + 1024.0).to(gl.float16))
        else:
            zp = gl.full(rows.shape, zh, gl.int32, rows.type.layout)
        return sp, zp

    @gluon.jit
    def _store_tile(out, y_ptr, b_ptr, m0, n0, M, N, LAYOUT: gl.constexpr, HAS_BIAS: gl.constexpr):
        """``out`` (``[R, C]`` fp32 in ``LAYOUT``: tokens from ``m0``, columns from ``n0``; + bias) rounded into y."""
        R: gl.constexpr = out.shape[0]
        C: gl.constexpr = out.shape[1]
        tok = m0 + gl.expand_dims(gl.arange(0, R, layout=gl.SliceLayout(1, LAYOUT)), 1)
        col = n0 + gl.expand_dims(gl.arange(0, C, layout=gl.SliceLayout(0, LAYOUT)), 0)
        if HAS_BIAS:
            out += gl.load(b_ptr + col, mask=col < N, other=0.0).to(gl.float32)
        gl.store(y_ptr + tok * N + col, out.to(y_ptr.dtype.element_ty), mask=(tok < M) & (col < N))

    @gluon.jit
    def _issue(x_desc, xs, ready, s, t0, m0, STAGES: gl.constexpr, P: gl.constexpr):
        """TMA of step ``s`` (tile ``t0 + s // (4 / P)``, planes ``P (s % (4 / P))`` and on): the low and the high box
        into stage ``s % STAGES``."""
        SPT: gl.constexpr = 4 // P
        st = s % STAGES
        c = (t0 + s // SPT) * 256 + (s % SPT) * (32 * P)
        mbarrier.expect(ready.index(st), 2 * x_desc.block_type.nbytes)
        _tma_load(x_desc, [m0, c], ready.index(st), xs.index(2 * st))
        _tma_load(x_desc, [m0, c + 128], ready.index(st), xs.index(2 * st + 1))

    @gluon.jit
    def _wg_kernel(x_desc, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, KW, gsh, gmax, zh,
                   full, rest, tiles_per_split,
                   BM: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr, HAS_ZEROS: gl.constexpr,
                   HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, BF16: gl.constexpr, P: gl.constexpr = 1):
        NW: gl.constexpr = gl.num_warps()
        BN: gl.constexpr = 16 * NW
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BM, 16])
        ADOT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
        WL: gl.constexpr = _words_layout(NW)
        RL: gl.constexpr = gl.SliceLayout(1, WL)
        if BF16:
            dt: gl.constexpr = gl.bfloat16
        else:
            dt: gl.constexpr = gl.float16

        n_tiles = KW // 32
        # programs [0, full) take whole output tiles; the others SPLIT K ranges of each of the last `rest` tiles:
        # range kk of tile full + i is program full + kk * rest + i (see split_schedule)
        tile = gl.program_id(0)
        kk = 0
        t0 = 0
        t1 = n_tiles
        if SPLIT > 1:
            if tile >= full:
                q = tile - full
                tile = full + q % rest
                kk = q // rest
                t0 = kk * tiles_per_split
                t1 = gl.minimum(t0 + tiles_per_split, n_tiles)
        pid_m, pid_n = _tile_of(tile, M, N, BM, BN, GROUP_M)
        SPT: gl.constexpr = 4 // P  # steps per slab tile
        n_steps = (t1 - t0) * SPT
        m0 = pid_m * BM

        xs = gl.allocate_shared_memory(x_desc.dtype, [2 * STAGES, BM, 32 * P], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        for i in gl.static_range(STAGES - 1):
            if i < n_steps:
                _issue(x_desc, xs, ready, i, t0, m0, STAGES, P)

        rows = gl.minimum(pid_n * BN + gl.arange(0, BN, layout=RL), N - 1)
        wrow, sst, hop = _group_words(rows, N, KW)  # (a group's slab is one run of its rows x 32 words, load order)
        cw = gl.arange(0, 32, layout=gl.SliceLayout(0, WL))
        woff = gl.expand_dims(wrow, 1) + gl.expand_dims(cw, 0) + gl.expand_dims(hop, 1) * gl.expand_dims(cw // 16, 0)
        sst = gl.expand_dims(sst, 1)
        words = gl.load(w_ptr + (woff + t0 * sst))
        sp, zp = _row_pairs(s_ptr, z_ptr, t0, rows, gsh, gmax, N, zh, HAS_ZEROS, BF16)
        acc = gl.zeros([BN, BM], gl.float32, MMA)
        plo = gl.zeros([BN, 32], dt, ADOT)
        phi = plo
        for t in range(t0, t1):
            # the next tile's words and scale / zero pairs, a tile ahead (the last tile reloads its own)
            tn = gl.minimum(t + 1, t1 - 1)
            nwords = gl.load(w_ptr + (woff + tn * sst))
            nsp, nzp = _row_pairs(s_ptr, z_ptr, tn, rows, gsh, gmax, N, zh, HAS_ZEROS, BF16)
            sp2 = gl.expand_dims(sp, 1) + gl.zeros([BN, 32], gl.int32, WL)
            zp2 = gl.expand_dims(zp, 1) + gl.zeros([BN, 32], gl.int32, WL)
            for js in gl.static_range(SPT):
                s = (t - t0) * SPT + js
                st = s % STAGES
                for jj in gl.static_range(P):
                    lo, hi = _dq(words, zp2, sp2, js * P + jj, BF16)
                    alo = gl.convert_layout(lo, ADOT, assert_trivial=True)
                    ahi = gl.convert_layout(hi, ADOT, assert_trivial=True)
                    if jj == 0:
                        mbarrier.wait(ready.index(st), (s // STAGES) & 1)
                    if P == 1:
                        blo = xs.index(2 * st)
                        bhi = xs.index(2 * st + 1)
                    else:
                        blo = xs.index(2 * st).slice(32 * jj, 32, dim=1)
                        bhi = xs.index(2 * st + 1).slice(32 * jj, 32, dim=1)
                    acc = warpgroup_mma(alo, blo.permute((1, 0)), acc, is_async=True)
                    acc = warpgroup_mma(ahi, bhi.permute((1, 0)), acc, is_async=True)
                    acc, plo, phi = warpgroup_mma_wait(num_outstanding=2, deps=(acc, plo, phi))
                    plo = alo
                    phi = ahi
                # step s - 1's MMAs are done in this warpgroup; once in both, its stage takes step s + STAGES - 1
                _cta_barrier()
                if s + STAGES - 1 < n_steps:
                    _issue(x_desc, xs, ready, s + STAGES - 1, t0, m0, STAGES, P)
            words = nwords
            sp = nsp
            zp = nzp
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

        OL: gl.constexpr = _out_layout(NW)
        if SPLIT == 1:
            _store_tile(gl.convert_layout(gl.permute(acc, (1, 0)), OL), y_ptr, b_ptr, m0, pid_n * BN, M, N, OL, HAS_BIAS)
        elif gl.program_id(0) < full:
            _store_tile(gl.convert_layout(gl.permute(acc, (1, 0)), OL), y_ptr, b_ptr, m0, pid_n * BN, M, N, OL, HAS_BIAS)
        else:
            # the fp32 partial goes to its own [BM, BN] slot, a warp writing whole rows per instruction (whole 32-byte
            # sectors: in the output layout, 16-byte pieces of sectors, the split epilogue took 9-15 us, not 6), no masks
            # (rows past N repeat row N - 1, tokens past M are TMA's zeros); the last of the tile's splits sums
            # them in order, a chunk of tokens at a time
            PL: gl.constexpr = _part_layout(NW)
            part = gl.convert_layout(gl.permute(acc, (1, 0)), PL)
            loc = gl.expand_dims(gl.arange(0, BM, layout=gl.SliceLayout(1, PL)), 1) * BN \
                + gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, PL)), 0)
            slot0 = ws_ptr + (tile - full) * (BM * BN)  # (split kk's slot: slot0 + kk * rest * BM * BN)
            gl.store(slot0 + kk * (rest * BM * BN) + loc, part)
            _cta_barrier()
            old = gl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if old == SPLIT - 1:
                RB: gl.constexpr = _chunk_rows(BM, SPLIT)
                for c in gl.static_range(BM // RB):
                    lc = c * (RB * BN) + gl.expand_dims(gl.arange(0, RB, layout=gl.SliceLayout(1, PL)), 1) * BN \
                        + gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, PL)), 0)
                    acc_c = gl.load(slot0 + lc, cache_modifier=".cg")
                    for sk in gl.static_range(1, SPLIT):  # (independent loads: issued before the sums wait)
                        acc_c += gl.load(slot0 + sk * (rest * BM * BN) + lc, cache_modifier=".cg")
                    _store_tile(acc_c, y_ptr, b_ptr, m0 + c * RB, pid_n * BN, M, N, PL, HAS_BIAS)
                gl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")

    _fast.replayable(_wg_kernel)  # (one launch writes the whole output)


#: the configuration :func:`launch_wg` uses when none is given
DEFAULT_CFG = {"BM": 256, "warps": 8, "stages": 4, "planes": 1, "group_m": 8, "split_k": 1, "tail": 1}
#: the fewest slab tiles a layer needs for its last wave's tiles to be split in two (:func:`split_schedule`)
TAIL_MIN_TILES = 8
#: shared memory the activation stages may take (bytes; an H100 block gets 227 KB, the epilogue reuses it)
SMEM_BUDGET = 200 * 1024


def fits(bits: int, slab: int, group_size: int, K: int, dtype: torch.dtype) -> bool:
    """Whether ``wg`` computes this layer: 4-bit codes in 32-word slabs, groups of 128 x 2^k channels (or one per row),
    fp16 / bf16 activations, and rows of ``x`` whose byte stride TMA takes (K a multiple of 8)."""
    return (HAS_WG and bits == 4 and slab == 32 and K % 8 == 0 and group_shift(group_size, K) is not None
            and dtype in (torch.float16, torch.bfloat16))


@functools.lru_cache(maxsize=None)
def _hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] == 9


def runs(x: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether ``wg`` can run on these tensors: compiled CUDA on sm_90 (wgmma is Hopper's alone), fp16 activations
    with fp16 scales or bf16 activations with fp16 / bf16 scales, a 16-byte aligned ``x``."""
    if not (HAS_WG and _asm_ok(x)):  # (CUDA, compiled: not the interpreter, not ROCm)
        return False
    if not (scales.dtype == x.dtype == torch.float16
            or (x.dtype == torch.bfloat16 and scales.dtype in (torch.float16, torch.bfloat16))):
        return False
    return x.is_contiguous() and x.data_ptr() % 16 == 0 and _hopper(x.get_device())


@functools.lru_cache(maxsize=16)
def _box_layout(BM: int, P: int, bf16: bool):
    return gl.NVMMASharedLayout.get_default_for([BM, BOX * P], gl.bfloat16 if bf16 else gl.float16)


def config_reason(cfg: dict) -> str | None:
    """Why ``cfg`` is no ``wg`` launch configuration (its tile, step width or warps; the rest defaults), or None: what
    :func:`launch_wg` refuses, and what the CUDA tuner skips in a stored table."""
    BM, P, warps = cfg.get("BM", DEFAULT_CFG["BM"]), cfg.get("planes", 1), cfg.get("warps", 8)
    if BM not in (64, 128, 256) or P not in (1, 2) or warps not in (4, 8):
        return f"kernels_wg: no configuration BM={BM} planes={P} warps={warps}"
    if cfg.get("tail", 1) not in (0, 1):
        return f"kernels_wg: no configuration tail={cfg.get('tail')!r}"
    return None


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def resident(BM: int, P: int, stages: int, warps: int, maxnreg: int) -> int:
    """Programs of one configuration a multiprocessor holds at once: by its activation stages in 227 KB of shared
    memory and by its registers (``maxnreg``, else the 255 a ``wg`` program may take)."""
    smem = stages * 2 * BM * BOX * P * 2 + 1024
    return max(1, min(227 * 1024 // smem, 65536 // ((maxnreg or 255) * 32 * warps)))


def split_schedule(n_tiles_out: int, n_k: int, split_k: int, slots: int, tail: bool) -> tuple[int, int, int, int]:
    """``(full, rest, split, tiles per split)``: programs ``[0, full)`` compute whole output tiles, then ``split``
    programs share each of the last ``rest`` tiles along its ``n_k`` slab tiles.

    * ``split_k > 1``: every tile split as the configuration says (``full`` 0; :func:`.kernels_tc.split_count`).
    * else, with ``tail``, where the tiles fill the ``slots`` (programs resident at once) more than once and the last
      wave is at most half full: that wave's tiles are split in two, so that it takes about half a tile's time (with
      at least :data:`TAIL_MIN_TILES` slab tiles).  4096 x 14336 at M = 1024 (448 tiles of 256 x 128, 132 slots on an
      H100): 396 whole, 52 in halves, 190 -> 180 us (``results/h100-wg-tail-halves-2026-11-26.txt``).  A wave more
      than half full would take two rounds of halves, no faster; splitting in four took longer than it saved.
    * else every tile whole (``rest`` 0).
    """
    if split_k > 1:
        split, tps = split_count(n_k, split_k)
        if split > 1:
            return 0, n_tiles_out, split, tps
    elif tail and 0 < slots < n_tiles_out and 0 < 2 * (n_tiles_out % slots) <= slots and n_k >= TAIL_MIN_TILES:
        rest = n_tiles_out % slots
        return n_tiles_out - rest, rest, 2, -(-n_k // 2)
    return n_tiles_out, 0, 1, n_k


def launch_wg(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              bias: torch.Tensor | None, group_size: int, zero_point: float, cfg: dict | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` with ``wg`` (the caller checked :func:`fits` and :func:`runs`).

    cfg: ``BM`` tokens per program (64, 128, 256), ``warps`` (4 or 8: 64 or 128 weight rows per program),
    ``planes`` (1 or 2 code planes, i.e. 32 or 64 channels of each half-tile, per TMA box and pipeline step),
    ``stages`` (activation buffers; fewer where they would not fit :data:`SMEM_BUDGET`), ``group_m`` (token blocks
    of a weight block in a row), ``split_k`` (programs along K; fp32 partials summed in order by the last),
    ``maxnreg`` (a register cap: 128 lets two 64-token programs share a multiprocessor), ``tail`` (1, the default:
    without ``split_k``, split a small last wave's tiles in two along K, :func:`split_schedule`; 0: never).
    """
    c = dict(DEFAULT_CFG)
    c.update(cfg or {})
    M, K = x.shape
    N, KW = qweight.shape
    y = out if out is not None else x.new_empty((M, N))
    if M == 0:
        return y
    why = config_reason(c)
    if why:
        raise ValueError(why)
    BM, P, warps = int(c["BM"]), int(c.get("planes", 1)), int(c.get("warps", 8))
    bf16 = x.dtype == torch.bfloat16
    stages = max(2, min(int(c["stages"]), SMEM_BUDGET // (128 * BM * P)))  # a stage: two [BM, 32 P] 16-bit boxes
    desc = _XDesc(x, [M, K], [K, 1], [BM, BOX * P], _box_layout(BM, P, bf16))
    BN, maxnreg = 16 * warps, int(c.get("maxnreg", 0))
    n_tiles_out = -(-M // BM) * -(-N // BN)
    di = x.get_device()
    slots = _sm_count(di) * resident(BM, P, stages, warps, maxnreg) if di >= 0 else 0
    full, rest, split, tps = split_schedule(n_tiles_out, KW // 32, int(c.get("split_k", 1)), slots, bool(c.get("tail", 1)))
    ws = cnt = y
    if split > 1 and not split_fits(n_tiles_out, rest * split * BM * BN):
        full, rest, split, tps = n_tiles_out, 0, 1, KW // 32
    if split > 1:
        ws, cnt = split_buffers(x, rest * split * BM * BN)
    zh = _bf2_sub_magic(zero_point) if bf16 else _h2_magic(zero_point)
    consts, skey, opts = _statics(BM, stages, int(c.get("group_m", 8)), zeros is not None, bias is not None, split, bf16,
                                  P, warps, maxnreg)
    tensors = (desc, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else scales, y, ws, cnt)
    _fast.launch(_wg_kernel, (full + rest * split, ), tensors,
                 (M, N, K, KW, group_shift(group_size, K), scales.shape[0] - 1, zh, full, max(rest, 1), tps), (), consts,
                 skey, opts, y)
    return y


@functools.lru_cache(maxsize=256)
def _statics(BM: int, stages: int, group_m: int, has_zeros: bool, has_bias: bool, split: int, bf16: bool, P: int,
             warps: int, maxnreg: int = 0) -> tuple:
    """Every constexpr of ``_wg_kernel``, the direct launcher's static key and the compile options of one launch class
    (made once: an eager prefill call is host-bound on small layers)."""
    consts = dict(BM=BM, STAGES=stages, GROUP_M=group_m, HAS_ZEROS=has_zeros, HAS_BIAS=has_bias, SPLIT=split,
                  BF16=bf16, P=P)
    opts = {"num_warps": warps, "maxnreg": maxnreg} if maxnreg else {"num_warps": warps}
    return consts, ("wg", warps, maxnreg, *sorted(consts.items())), opts
