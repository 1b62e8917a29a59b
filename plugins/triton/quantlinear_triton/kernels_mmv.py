"""``mmv``: the decode kernel (M <= 16) for 4-bit codes and fp16 / bf16 activations on NVIDIA sm_80+, on the tensor
cores.

Why: the paired-fp16 GEMV (``gemv16``) spends about 4.5 issued instructions per code -- shift, mask, zero point,
product and sum per pair, then fp32 sums -- and so runs issue-bound, well above the memory floor on 30 MB layers, and
its M = 16 sibling (``dot16``) pays Triton's layout conversion into the MMA operand on top.  Here each thread holds
its weight words exactly where ``mma.sync.m16n8k16`` wants them: one word of the slab layout (see
:mod:`quantlinear_triton.packing`) is the A-fragment register pair set of one row for four k16-steps, so a word costs
one mask-or per code pair, one exact zero-point subtraction, one scale multiply (fp16x2), and a quarter of an MMA per
token tile; the K reduction is the tensor core's, in fp32.

Mapping (``W`` is the A operand, rows = output channels, 16 per row group; ``x^T`` is B, 8 tokens per n8 tile):

* lane ``l``: ``g = l // 4`` (A rows ``g`` and ``g + 8`` of the row group, B / D token ``g``), ``q = l % 4``;
* in tile ``t`` (256 channels, 32 words per row) the lane reads words ``b*16 + 4q + i`` (``b`` 0/1, ``i`` 0..3:
  two 16-byte loads per row) of both its rows; a full group's words are stored in that order (:mod:`.packing`'s load
  order), so each of the warp's four loads a step reads one 512-byte block, four whole lines (it read half of eight
  lines before: 14336 x 4096 at M = 1 13.04 -> 12.71 us on an H100, same run);
* the code pair ``j`` (0..3) of word ``p`` -- bits ``4j`` and ``16 + 4j``, channels ``c = 256t + 32j + p`` and
  ``c + 128`` -- is A-register 0 / 1 (row ``g`` / ``g + 8``, word ``b = 0``) or 2 / 3 (``b = 1``) of the MMA
  ``(i, j)``; its logical k columns are ``2q, 2q + 1`` (``+ 8`` for ``b = 1``), so the lane's B registers are the
  activation pairs ``(x[c], x[c + 128])`` of the same channels.  Any one-to-one map of channels to k columns gives
  the same sum, as long as A and B agree; this one makes both sides plain vector loads.
* D register 0 / 1 is row ``g``, tokens ``2q`` / ``2q + 1``; 2 / 3 row ``g + 8``.

The two halves of a pair are 128 channels apart, so with 128-channel groups they have different scales: the weight
is dequantized to ``(q - z) * s`` in the activations' type before the MMA (exact ``q - z``, one rounding), as
``dot16`` does; for bf16 the scale is rounded to bf16 first.

The warps of a program each take their own rows (``R`` groups of 16) and walk the same K tiles; each tile's
activation pairs (``[tokens, 128]`` int32, 8 KB at M = 16) are staged once per program in shared memory (double
buffered, one barrier per tile) and read back with 16-byte loads in the B-fragment order.  When every warp loaded
its own, the activations were as many bytes through L1 as the weights (ncu: L1/TEX 78% busy at M = 16) and 4.7 of
19.7 us at M = 8 on 4096 x 14336 went to them.  K is split over programs (``split_k``) until the GPU is covered; the
fp32 partials meet in the shared split-K workspace and the last program of a row block adds them in order.

Written in Gluon (Triton's explicit-layout dialect): the register layout is part of the program, which the MMA
fragments need.  The interpreter cannot run it: CI cross-compiles it for sm_80 / sm_90 and checks the machine code
(one MMA per word and token tile, 16-byte weight and shared loads, no spills); its numerics are tested on a GPU.
Where it cannot run (interpreter, ROCm, pre-Ampere, other code widths, 8-bit codes with bf16) :data:`FALLBACK` runs
instead.

Measured on an H100 (``benchmarks/mmv_check.py --sweep``, results/h100-mmv-sweep*-2026-11-26.json): at M = 2..16
1.2-2.2x faster than the kernels it replaces (``dot16`` / ``dot``; bf16: 1.3-2.0x over ``dot``) on the four large
benchmark shapes, where M = 16 takes 1.16-1.35x the M = 1 time through the layer.  At M = 1 its default is not faster
than the paired GEMV, which stays the default; without the next tile's prefetch (``pf: False``) it is 0-6% faster in
fp16 on four of the six shapes and 2-9% in bf16 on five (``mmv_check.py --sweep --grid --ms 1``), and the shipped
table takes it there.

Float codes (``FP`` 1: MXFP4, 2: NVFP4; fp16 activations, M = 1..16): the same program with E2M1 codes.  MXFP4's
float slab layout is the int one (plane ``j`` of word ``p`` = channel ``32 j + p``); NVFP4's 16-word slabs are read two
128-channel tiles a step (word half ``b`` = tile ``2t + b``, pairs 64 channels apart, :func:`_x_stage`).  A pair is
decoded to fp16 ``value * 2**-14`` by shifts and masks (:func:`_e2m1_asm`) and multiplied by its block scales as an
fp16 pair: MXFP4's from :func:`.fp_packing.mx_sigma` bytes (``2**(s - smax + 15)``, one byte permute), NVFP4's E4M3
bytes (:func:`.fp_packing.nv_sigma`, in the codes' groups of 16 rows: a warp's scale loads of a step read one line;
``sv``: a row's 16 bytes as one 16-byte load) converted by the hardware (``cvt.rn.f16x2.e4m3x2``, sm_89+); both
products are exact in fp16, and the fp32 sums are multiplied by ``omul`` (and NVFP4's row factor) at the end.  The
activations are the scheme's quantize-dequantize values (their own kernel runs first); with the warps splitting K a
configuration's ``px`` has that kernel write them as this kernel's B-register pairs (:func:`_b_pairs`, two 16-byte
loads a code pair).  On an H100 through the layer (``quantlinear bench``, activation quantization included,
twenty-first session's second stop): M = 1 at 1.06-1.17x the HBM floor on the two 117 MB shapes and 1.27-1.32x on the
30 MB ones; M = 16 1.5-1.8x faster than the ``tc`` kernel (docs/float-schemes.md).

8-bit codes (``W8``, fp16 activations): a step is two 128-channel slabs (64 words a row, four 16-byte loads per row
and lane); pair ``j`` of a word is bytes ``j % 2`` and ``j % 2 + 2`` of slab ``2t + j // 2`` (planes 64 channels apart,
one group), turned into the fp16 pair ``1024 + q`` by one byte permute with the exponent byte 0x64
(:func:`_dq8`), then the exact ``q - z`` and the scale multiply as for 4-bit codes; the activations are staged in
the same order (:func:`_x_stage`).  bf16 activations keep the other kernels (``128 + q`` of a byte is no bf16).
On an H100 (``mmv_check.py --bits 8 --sweep --grid``, results/h100-mmv-w8-grid-2026-11-26.json): M = 1 1.0-3.9%
faster than the paired GEMV (W8 g128 at 1.21-1.25x the HBM floor on the 60 MB shapes through the layer), M = 2 and
16 1.05-1.25x faster than ``dot``.

Warps splitting K (``ks``, 32-word steps, M <= 8): the warps of a program take the same rows and each its own K tiles
(``t0 + w + NW i``), reading their activation pairs straight from global memory (no staging, no barrier in the
loop), and their sums meet once in shared memory at the end, so no split over programs (and none of its workspace
round trip) is needed.  Timing-only ablations at M = 1 (``results/h100-mmv-ks-2026-11-26.txt``) put the split-K
finish at 1.1-1.7 us of the 14.9-15.4 us on the 30 MB shapes.  On an H100 ``ks`` is 3.4-4.9% faster at M = 1 on the
short-K shapes (4096 x 14336: 14.4 vs 14.9 us; 3072 x 12288: 10.4 vs 10.9), 10-15% slower on the long-K ones and
11-32% slower at M = 8, so the table takes it only at M = 1 on 4096 x 14336 and 3072 x 12288.  Float codes take ``ks``
too (NVFP4's activations in its own channel order, :func:`_b_direct`).  ``mmv`` alone at M = 1 against the table's row
split: MXFP4 (``results/h100-mmv-fp-ks-2026-11-26.json``) 3072 x 12288 10.7 vs 12.5 us, 4096 x 14336 15.1 vs 15.7,
4096 x 4096 7.3 vs 7.7 (8 warps); NVFP4 (``results/h100-mmv-nvfp4-ks-2026-11-26.json``) 3072 x 12288 11.5 vs 12.4 (M = 2
11.8 vs 12.3), 4096 x 4096 7.8 vs 8.1; slower on the other shapes (NVFP4 4096 x 14336 too) and at larger M.  The table
takes it on those cells.

Cache hints and registers at M <= 8 (one token tile).  The weight words are read once, the activations once a step
by every program, all through L1: the words are loaded ``evict_first`` (:func:`_stream`) so that the activations stay
there.  On an H100 (CUDA-graph chains, same run, ``results/h100-session14-probes-2026-11-26.txt``) this took ``ks`` at
M = 1 on 4096 x 14336 from 14.4 to 13.5 us, on 8192 x 28672 from 59.4 to 45.7, the table's row split on 28672 x 8192
from 50.1 to 48.1 and bf16 alike; at M = 16 (activations staged in shared memory) it cost up to 2% on the 117 MB
shapes with the then table's configurations, so two token tiles take it only where a configuration asks (``ef``,
below).  ``xh`` (``ks`` only) issues the step's eight activation loads with
its words instead of one pair of them before each code pair's MMAs, at the price of 32 registers a thread; with 8 warps
and a register budget (``maxnreg`` 96 / 128: ptxas then keeps the loads together) it takes 4096 x 4096 at M = 1 from
6.56 us (``gemv16``) to 6.22 (fp16) and from 6.96 to 6.00 (bf16).  Where a wave of programs needs every register
slot (4096 x 14336: 896 programs of 4 warps at <= 72 registers) the budget costs more than the loads save.  Where
every warp's steps are whole and inside its split (:func:`ks_unmasked`) ``ks`` loads without masks: 4096 x 14336 M = 1
13.26 -> 13.10 us, 8192 x 28672 45.5 -> 44.6, M = 2 47.9 -> 46.4 (same run, bit-equal outputs).  ``ks`` takes the next
step's words a step ahead where the configuration asks (``pf``; the last step re-reads a tile of its split instead of
reading past it): with 8 warps it won where one program of 16 rows walks a long K (28672 x 8192 M = 1 46.8 us against
the row split's 48.4; MXFP4 14336 x 4096 14.6 against 15.5) and lost elsewhere.  At two token tiles the words are
loaded ``evict_first`` too where the configuration asks (``ef``): with the activations in shared memory the hint won
or lost by configuration, 3-11% on the shipped M = 16 entries that take it (4096 x 14336 19.8 -> 18.9 us without the
prefetch, 8192 x 28672 64.1 -> 60.6 with two row groups a warp; ``results/h100-session15-probes-2026-11-27.txt``).

With programmatic dependent launch (sm_90) the kernel waits for the previous one (:func:`_gdc_wait`) before it reads
the activations, so its launch overlaps the previous kernel's tail, and lets the next one be scheduled after its
main loop (:func:`_gdc_launch`; released at the start instead, M = 16 on 8192 x 28672 took 67.5 us, not 63.3).  By
default nothing is read before the wait.  A configuration's ``early`` starts on the weights first: 1 loads the first
step's words (and scales) before the wait and each next step's after the step's arithmetic, 2 only prefetches the
first step's weight lines into L2, one lane per line (:func:`_prefetch_step`; no data comes back, so nothing read can
be stale).  Where programs of the previous grid exit early, this grid's programs then stream weights in their slots
while the last ones finish.  The weights are never written by a kernel just before this one: the CUDA layers that run ``mmv``
declare ``reads_weights_early``, and :meth:`quantlinear.QuantLinear.weights_written` synchronizes after every write of their
tensors.  On an H100 (CUDA-graph chains, ``results/h100-session16-probes-2026-11-27.txt``) ``early`` won 2-7% on 25
of 132 table entries and lost on others (1 on ``ks`` without its prefetch, 2 on most float ones), so the tables take
it per entry: W4 M = 16 on 28672 x 8192 61.8 -> 57.2 us, 4096 x 14336 19.0 -> 18.4; M = 1 on 14336 x 4096 14.8 ->
14.0 (``ks`` 8 warps ``xh``); W8 M = 1 / 2 6-7% with 2.  With one prefetching lane per line instead of every lane
(``results/h100-session17-probes-2026-11-27.txt``) 2 took W4 M = 1 on 4096 x 14336 from 13.2 to 12.6 us and won 3-9% at
M = 2..8 on the benchmark shapes (fp16 and bf16), where the tables now take it; prefetching further ahead, before the
wait or in the loop, lost everywhere.

Split-K through a thread-block cluster (``cl``, sm_90+): the splits of a row block are launched as one cluster
(:func:`.launch.launch_cluster`; consecutive programs along x) and sum their partials in rank 0's shared memory
(:func:`_cluster_sum`) instead of the workspace and its counter.  Timing-only, the workspace finish cost 1.5-3.4 us of
18.2 at M = 16 on 4096 x 14336; as a cluster that cell took 16.8 us, and 17 int and float M = 2..16 entries gained
3-13%.  Clusters of many programs wait to be co-scheduled: at M = 1 and on the long-K and 117 MB shapes the cluster
split lost up to 2-4x (``results/h100-session18-probes-2026-11-27.txt``), so it is a configuration's choice and the
tuner's second-round twin.

Registers at two token tiles.  Left to itself, the compile of the row split with the next step's words a step ahead
(``pf``) at M = 9..16 keeps to 96 registers a thread and spills (Triton 3.6 for sm_90; the entry without the prefetch:
103, no spills), and the prefetch lost there (14336 x 4096 M = 16 20.0 us against 18.3 without it).  Given
``maxnreg`` 128 it takes 124 and spills nothing, and the prefetch wins: 17.2 us (H100, same run, bit-equal outputs;
``results/h100-session21-pf16-2026-11-27.json``).  Eleven table entries
of the benchmark shapes at M = 2..16 (int fp16 / bf16, MXFP4) took such a register-budget twin, 2.3-14% faster
(``results/h100-session21-register-budget-{A,B}-2026-11-27.json``), and the tuner's second round measures them
(:func:`.tune.budget_twins`).

Tried at M = 16 on 14336 x 4096 and not taken (``results/h100-session21-probes-2026-11-27.txt``; with the entry of
then, the finish and the decode each cost about 2.5 us of its 18.2): the warps of a program as row warps x K groups,
each group staging its own tile's activations and the groups' sums meeting in the CTA (1.5-2.0% faster on that cell,
slower on every other), and a cp.async ring holding each thread's next steps' words in shared memory (slower, the more
so the deeper).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from quantlinear.errors import QuantLinearError

from . import launch as _fast
from . import tune as _tune
from .kernels import _bf2_magic, _bf2_ok, _h2_magic, _h2_pair, pdl_ok
from .kernels_tc import split_count, split_plan

try:  # Gluon ships with Triton >= 3.4
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    HAS_GLUON = True
    #: the CTA barrier: ``thread_barrier`` in Triton 3.4-3.6, ``barrier`` later
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
except ImportError:  # pragma: no cover - old Triton
    HAS_GLUON = False


def group_shift(group_size: int, K: int) -> int | None:
    """``gsh`` with half-tile ``h`` (128 channels) in group ``h >> gsh``: log2(group_size / 128) for a power-of-two
    multiple of 128, 31 for one group per row (every index 0), else None (``mmv`` does not take the layer)."""
    if group_size >= K:
        return 31
    h = group_size // 128
    if group_size % 128 or h & (h - 1):
        return None
    return h.bit_length() - 1


def fits(bits: int, slab: int, group_size: int, K: int, dtype: torch.dtype, M: int) -> bool:
    """Whether ``mmv`` runs this layer and batch: slabs of 32 words, groups of 128 x 2^k channels (or one per row),
    M <= 16, and 4-bit codes with fp16 or bf16 activations or 8-bit codes with fp16 activations in an even number of
    128-channel slabs (a step takes two; ``1024 + q`` of a byte is an fp16, not a bf16)."""
    if not (HAS_GLUON and slab == 32 and 1 <= M <= 16 and group_shift(group_size, K) is not None):
        return False
    if bits == 8:
        return dtype == torch.float16 and -(-K // 128) % 2 == 0
    return bits == 4 and dtype in (torch.float16, torch.bfloat16)


if HAS_GLUON:

    @gluon.constexpr_function
    def _axis_layout(L, rank, dim):
        """The 1-D layout that :func:`_iota` expands back into ``L`` (every other dimension sliced away)."""
        for d in reversed(range(rank)):
            if d != dim:
                L = gl.SliceLayout(d, L)
        return L

    @gluon.constexpr_function
    def _step_words(w8):
        """A row's weight words in one 256-channel step: one 32-word slab of 4-bit codes, two of 8-bit codes."""
        return 64 if w8 else 32

    @gluon.jit
    def _iota(N: gl.constexpr, DIM: gl.constexpr, L: gl.constexpr, RANK: gl.constexpr = 4):
        """0..N-1 along dimension DIM of the rank-RANK layout L, size 1 elsewhere."""
        v = gl.arange(0, N, layout=_axis_layout(L, RANK, DIM))
        for d in gl.static_range(RANK):
            if d != DIM:
                v = gl.expand_dims(v, d)
        return v

    @gluon.jit
    def _quarters(v, S: gl.constexpr):
        """``[A, B, C, 4]`` with the last dimension in one thread -> its four ``[A, B, C]`` slices (i = 0..3) in S."""
        a, b = gl.split(gl.reshape(v, [v.shape[0], v.shape[1], v.shape[2], 2, 2]))
        v0, v2 = gl.split(a)
        v1, v3 = gl.split(b)
        return (gl.convert_layout(v0, S, assert_trivial=True), gl.convert_layout(v1, S, assert_trivial=True),
                gl.convert_layout(v2, S, assert_trivial=True), gl.convert_layout(v3, S, assert_trivial=True))

    @gluon.jit
    def _into(v, S: gl.constexpr):
        return (gl.convert_layout(v[0], S), gl.convert_layout(v[1], S), gl.convert_layout(v[2], S),
                gl.convert_layout(v[3], S))

    @gluon.jit
    def _pack(lo, hi):
        """Two 16-bit (fp16 / bf16) tensors -> int32 words holding ``lo`` in the low and ``hi`` in the high half."""
        return gl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [lo, hi], dtype=gl.int32, is_pure=True,
                                         pack=1)

    @gluon.jit
    def _dq(w, zp, sp, ODD: gl.constexpr, BF16: gl.constexpr):
        """The pair ``(q - z) * s`` of the codes at bits 0-3 / 16-19, in the activations' type.

        fp16: even pair ``zp`` = 1024 + z; odd pair (bits 4-7 / 20-23, unshifted) ``zp`` = -(64 + z): ``1024 + 16 q``
        times 1/16 plus ``zp`` is the exact ``q - z``.  bf16 (the caller shifts every pair down; bit 7 of a bf16 is
        the exponent's): ``128 + q`` plus ``zp`` = -(128 + z), exact, times the scale rounded to bf16; FMAs, as
        sm_80 has no bf16x2 sub / mul.
        """
        if BF16:
            r = gl.inline_asm_elementwise(
                "{ .reg .b32 t, k; mov.b32 k, 0x3F803F80; lop3.b32 t, $1, 0x000F000F, 0x43004300, 0xEA; "
                "fma.rn.bf16x2 t, t, k, $2; mov.b32 k, 0x80008000; fma.rn.bf16x2 $0, t, $3, k; }",
                "=r,r,r,r", [w, zp, sp], dtype=gl.int32, is_pure=True, pack=1)
        elif ODD:
            r = gl.inline_asm_elementwise(
                "{ .reg .b32 t, k; mov.b32 k, 0x2C002C00; lop3.b32 t, $1, 0x00F000F0, 0x64006400, 0xEA; "
                "fma.rn.f16x2 t, t, k, $2; mul.rn.f16x2 $0, t, $3; }",
                "=r,r,r,r", [w, zp, sp], dtype=gl.int32, is_pure=True, pack=1)
        else:
            r = gl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $1, 0x000F000F, 0x64006400, 0xEA; sub.f16x2 t, t, $2; "
                "mul.rn.f16x2 $0, t, $3; }", "=r,r,r,r", [w, zp, sp], dtype=gl.int32, is_pure=True, pack=1)
        return r

    @gluon.jit
    def _pair_bits(w, J: gl.constexpr, BF16: gl.constexpr):
        """The word shifted for :func:`_dq`'s pair ``j``: bf16 by ``4j``, fp16 by 8 from ``j = 2`` (odd pairs in place)."""
        if BF16:
            if J > 0:
                w = w >> (4 * J)
        elif J >= 2:
            w = w >> 8
        return w

    @gluon.constexpr_function
    def _dq8_asm(h):
        """Bytes ``h`` / ``h + 2`` of a word (8-bit codes) -> the fp16 pair ``1024 + q`` (a byte permute with the
        exponent byte 0x64), minus the pair ``1024 + z`` (exact), times the scale pair (one rounding)."""
        sel = "0x4240" if h == 0 else "0x4341"
        return ("{ .reg .b32 t, k; mov.b32 k, 0x64646464; prmt.b32 t, $1, k, " + sel + "; sub.f16x2 t, t, $2; "
                "mul.rn.f16x2 $0, t, $3; }")

    @gluon.jit
    def _dq8(w, zp, sp, H: gl.constexpr):
        """The fp16 pair ``(q - z) * s`` of the 8-bit codes in bytes ``h`` / ``h + 2`` of ``w`` (planes ``h`` and
        ``h + 2`` of the slab: channels 64 apart, one group)."""
        return gl.inline_asm_elementwise(_dq8_asm(H), "=r,r,r,r", [w, zp, sp], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.constexpr_function
    def _twice_asm(h):
        return "prmt.b32 $0, $1, $1, " + ("0x1010;" if h == 0 else "0x3232;")

    @gluon.jit
    def _twice(v, H: gl.constexpr):
        """The low (``h`` 0) or high half of the 16-bit pair ``v``, twice: a pair of the two groups' values -> one
        group's pair (8-bit codes pair channels of one group)."""
        return gl.inline_asm_elementwise(_twice_asm(H), "=r,r", [v], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.constexpr_function
    def _mma_asm(bf16):
        """``mma.sync.m16n8k16`` with fp32 accumulators and fp16 or bf16 operands."""
        t = "bf16" if bf16 else "f16"
        return (f"mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32 {{$0, $1, $2, $3}}, {{$4, $5, $6, $7}}, {{$8, $9}}, "
                "{$10, $11, $12, $13};")

    @gluon.jit
    def _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, BF16: gl.constexpr):
        return gl.inline_asm_elementwise(
            _mma_asm(BF16), "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3],
            dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)

    @gluon.constexpr_function
    def _e2m1_asm(j):
        """E2M1 code pair ``j`` (bits ``4j`` / ``16 + 4j``: sign on top, ``e1 e0 m`` below) -> the fp16 pair of
        ``value * 2**-14`` (the magnitude bits shifted into fp16's bits 9-11, exact, subnormal 0.5 included; the sign
        into bit 15), times the scale pair ``$2``."""
        xs, ys = 9 - 4 * j, 12 - 4 * j
        xop = f"shl.b32 x, $1, {xs};" if xs >= 0 else f"shr.u32 x, $1, {-xs};"
        yop = f"shl.b32 y, $1, {ys};" if ys > 0 else "mov.b32 y, $1;"
        return ("{ .reg .b32 x, y; " + xop + " " + yop + " and.b32 x, x, 0x0E000E00; and.b32 y, y, 0x80008000; "
                "or.b32 x, x, y; mul.rn.f16x2 $0, x, $2; }")

    @gluon.jit
    def _dq_e2m1(w, sig, J: gl.constexpr):
        """The pair ``value * 2**-14 * sigma`` of E2M1 code pair ``j`` of word ``w`` (``sig``: :func:`_sig`'s pair)."""
        return gl.inline_asm_elementwise(_e2m1_asm(J), "=r,r,r", [w, sig], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.constexpr_function
    def _sig_asm(h):
        """Bytes ``2h`` / ``2h + 1`` of a register of :func:`mx_sigma` bytes (``4 E``) -> the fp16 pair ``2**(E - 15)``."""
        return "{ .reg .b32 z; mov.b32 z, 0; prmt.b32 $0, $1, z, " + ("0x1404;" if h == 0 else "0x3424;") + " }"

    @gluon.jit
    def _sig(v, H: gl.constexpr):
        return gl.inline_asm_elementwise(_sig_asm(H), "=r,r", [v], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.constexpr_function
    def _e4m3_pair_asm(h):
        return ("{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.rn.f16x2.e4m3x2 $0, " + ("l" if h == 0 else "h") + "; }")

    @gluon.jit
    def _e4m3_pair(v, H: gl.constexpr):
        """Bytes ``2h`` / ``2h + 1`` of a register of E4M3 scale bytes -> their fp16 pair (exact; sm_89+)."""
        return gl.inline_asm_elementwise(_e4m3_pair_asm(H), "=r,r", [v], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.jit
    def _scale_pairs(s_ptr, ga, gb, N, row, BF16: gl.constexpr):
        """A row's two group scales as one pair (bf16: rounded to bf16, the MMA's type)."""
        sa = gl.load(s_ptr + ga * N + row)
        sb = gl.load(s_ptr + gb * N + row)
        if BF16:
            sa = sa.to(gl.float32).to(gl.bfloat16)
            sb = sb.to(gl.float32).to(gl.bfloat16)
        return _pack(sa, sb)

    @gluon.jit
    def _zero_pairs(z_ptr, ga, gb, N, row, BF16: gl.constexpr):
        """A row's two groups' zero-point pairs for :func:`_dq`: fp16 (1024 + z, -(64 + z)); bf16 (-(128 + z), the
        same)."""
        za = gl.load(z_ptr + ga * N + row).to(gl.float32)
        zb = gl.load(z_ptr + gb * N + row).to(gl.float32)
        if BF16:
            e = _pack((-128.0 - za).to(gl.bfloat16), (-128.0 - zb).to(gl.bfloat16))
            o = e
        else:
            e = _pack((za + 1024.0).to(gl.float16), (zb + 1024.0).to(gl.float16))
            o = _pack((-64.0 - za).to(gl.float16), (-64.0 - zb).to(gl.float16))
        return e, o

    @gluon.jit
    def _x_stage(x_ptr, t, ok, M, K, NTI: gl.constexpr, LP: gl.constexpr, NV: gl.constexpr = False,
                 W8: gl.constexpr = False):
        """Tile t's activation pairs ``(x[n, c], x[n, c + d])`` of token tile ``nt`` as int32 ``[8, 128]``: token
        ``n = g + 8 nt``; ``col = 32 j + w`` (code pair ``j`` of the tile's word ``w``); 0 where ``ok`` is false, past K
        or past M.  The slab layout's channel ``c = 256 t + col``, ``d = 128``; NVFP4's (16-word slabs, words ``16 b +
        p`` of 128-channel tile ``2t + b``) ``c = 256 t + 128 b + 16 j + p``, ``d = 64``; 8-bit codes (pair ``j`` of
        word ``w``: bytes ``j % 2`` / ``+ 2`` of slab ``2t + j // 2``) ``c = 256 t + 128 (j // 2) + 32 (j % 2) + w``,
        ``d = 64``."""
        n = _iota(8, 0, LP, 2) + 8 * NTI
        col = _iota(128, 1, LP, 2)
        if NV:  # (col = 32 j + 16 b + p)
            c = _pair_channel(t, col // 32, (col // 16) % 2, col % 16, True)
            d: gl.constexpr = 64
        elif W8:
            c = t * 256 + (col // 64) * 128 + col % 64
            d: gl.constexpr = 64
        else:  # (_pair_channel with col = 32 j + 16 b + p, folded)
            c = t * 256 + col
            d: gl.constexpr = 128
        m = (n < M) & ok
        lo = gl.load(x_ptr + n * K + c, mask=m & (c < K), other=0.0)
        hi = gl.load(x_ptr + n * K + c + d, mask=m & (c + d < K), other=0.0)
        return _pack(lo, hi)

    @gluon.jit
    def _pair_channel(t, j, b, p, NV: gl.constexpr):
        """The low channel of code pair ``j`` of word ``16 b + p`` (``p`` 0..15) in 256-channel step ``t``: the slab map
        that :func:`_x_stage` stages and :func:`_b_direct` reads by (4-bit codes; the pair's other channel is 128
        further, NVFP4's 64).  Int / MXFP4 ``256 t + 32 j + 16 b + p``; NVFP4 (word half ``b`` is 128-channel tile
        ``2 t + b``, its 16-word slabs pairing channels 64 apart) ``256 t + 128 b + 16 j + p``."""
        if NV:
            return t * 256 + b * 128 + j * 16 + p
        return t * 256 + (2 * j + b) * 16 + p

    @gluon.jit
    def _b_regs(xs, slot, J: gl.constexpr, B: gl.constexpr, LB: gl.constexpr, LX: gl.constexpr,
                SX: gl.constexpr, S: gl.constexpr):
        """The lane's four B registers of code pair j, word half b from staged slot ``slot`` (buffer, token tile)."""
        v = xs.index(slot).slice((2 * J + B) * 16, 16, dim=1).load(LB)  # [8 (g), 16 (4q + i)]
        v = gl.convert_layout(gl.reshape(v, [1, 32, 1, 4]), LX, assert_trivial=True)
        return _into(_quarters(v, SX), S)

    @gluon.jit
    def _out(ptr, c, tok, row, M, N):
        gl.store(ptr + tok * N + row, c, mask=(tok < M) & (row < N))

    @gluon.jit
    def _mmv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, r_ptr, M, N, K, KW, gsh, gmax, zh, zh16,
                    tiles_per_split, split_k, xoff, omul,
                    R: gl.constexpr, NT: gl.constexpr, HAS_ZEROS: gl.constexpr, HAS_BIAS: gl.constexpr,
                    PF: gl.constexpr, USE_SPLIT: gl.constexpr, BF16: gl.constexpr = False, FP: gl.constexpr = 0,
                    HAS_ROWS: gl.constexpr = False, PDL: gl.constexpr = False, W8: gl.constexpr = False,
                    KS: gl.constexpr = False, XH: gl.constexpr = False, FULL: gl.constexpr = False,
                    EF: gl.constexpr = True, EARLY: gl.constexpr = 0, CL: gl.constexpr = 1,
                    XQ0: gl.constexpr = False, LO: gl.constexpr = False, SV: gl.constexpr = False,
                    PX: gl.constexpr = False):
        NW: gl.constexpr = gl.num_warps()
        L: gl.constexpr = gl.BlockedLayout([1, 1, R, 4], [1, 32, 1, 1], [NW, 1, 1, 1], [3, 2, 1, 0])
        S: gl.constexpr = gl.SliceLayout(3, L)
        LX: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 32, 1, 1], [NW, 1, 1, 1], [3, 2, 1, 0])
        SX: gl.constexpr = gl.SliceLayout(3, LX)
        LP: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [NW, 1], [1, 0])
        LB: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [NW, 1], [1, 0])
        # [buffer * NT + token tile, g, 128 pair words]; odd rows g swap their 16-word chunks b = 0 / 1 (a swizzle
        # of 16-word units by row parity), so the 8 lanes of a 16-byte shared-load phase (g = 2k / 2k + 1,
        # q = 0..3) hit 32 different banks
        xs = gl.allocate_shared_memory(gl.int32, [2 * NT, 8, 128], gl.SwizzledSharedLayout(16, 1, 2, [1, 0]))
        if CL > 1:  # the splits of a row block are one cluster, along x (see _cluster_sum)
            pid_n = gl.program_id(0) // CL
            pid_k = gl.program_id(0) % CL
            _cl_arrive(False)  # (phase 1: this program has started; waited for before the first remote store)
        else:
            pid_n = gl.program_id(0)
            pid_k = gl.program_id(1)
        n_tiles = KW // _step_words(W8)
        if PX:  # (ks) the activations as pairs (.fp_kernels.quantize_activations_pairs): 128 int32 a step and token
            XK = KW * 4
        else:
            XK = K
        t0 = pid_k * tiles_per_split
        t1 = gl.minimum(t0 + tiles_per_split, n_tiles)
        lane = _iota(32, 1, L)
        if KS:  # the warps split K: all take the program's rows (the same in each warp), warp w tiles t0 + w + NW i
            rows = pid_n * (16 * R) + _iota(NW, 0, L) * 0 + _iota(R, 2, L) * 16 + lane // 4
            n_it = gl.cdiv(t1 - t0, NW)
        else:
            rows = pid_n * (16 * R * NW) + _iota(NW, 0, L) * (16 * R) + _iota(R, 2, L) * 16 + lane // 4  # [NW, 32, R, 1]
            n_it = t1 - t0
        row0 = gl.minimum(rows, N - 1)
        row1 = gl.minimum(rows + 8, N - 1)
        wrow0, sst, hop = _group_words(row0, N, KW)  # (row1 lies in row0's group of 16 rows: the same stride and hop)
        wrow1, _, _ = _group_words(row1, N, KW)
        woff0 = wrow0 + (lane % 4) * 4 + _iota(4, 3, L)
        woff1 = wrow1 + (lane % 4) * 4 + _iota(4, 3, L)
        if LO:  # every group full: a row's word half 1 is 128 words after its half 0 (load order, .packing)
            HO: gl.constexpr = 128
        else:
            HO = hop + 16
        srow0 = gl.convert_layout(gl.reshape(row0, [NW, 32, R]), S, assert_trivial=True)
        srow1 = gl.convert_layout(gl.reshape(row1, [NW, 32, R]), S, assert_trivial=True)
        if FP == 2:  # NVFP4: a group of 16 rows' scales of a step are one 256-byte run (.fp_packing.nv_sigma)
            soff0 = (srow0 >> 4) * (KW * 2) + (srow0 & 15) * 4
            soff1 = (srow1 >> 4) * (KW * 2) + (srow1 & 15) * 4
        elif FP == 1:  # MXFP4: its 8 sigma bytes as one int64
            soff0 = srow0 * (KW // 32)
            soff1 = srow1 * (KW // 32)
        else:
            soff0 = srow0
            soff1 = srow1
        acc = gl.zeros([NW, 32, R], gl.float32, S)
        c0, c1, c2, c3, d0, d1, d2, d3 = acc, acc, acc, acc, acc, acc, acc, acc  # D registers, token tiles 0 / 1
        zpe0 = gl.full([NW, 32, R], zh, gl.int32, S)
        zpo0 = gl.full([NW, 32, R], zh16, gl.int32, S)
        zpe1 = zpe0
        zpo1 = zpo0
        if PDL and EARLY == 0:  # before any load
            _gdc_wait()
        if PDL and EARLY == 2:  # the first step's weight lines into L2 (no data returns: nothing can be stale)
            if KS:
                tp = gl.minimum(t0 + _iota(NW, 0, S, 3), t1 - 1)
            else:
                tp = t0
            _prefetch_step(w_ptr, srow0, srow1, _iota(32, 1, S, 3) % 4, tp, N, KW, W8)
            _gdc_wait()
        if (PF or EARLY == 1) and KS:  # the warps' first tiles' words (the scales stay in the loop)
            nws = _ks_words(w_ptr, woff0, woff1, HO, t0 + _iota(NW, 0, L), t1, sst, FULL)
        elif PF or EARLY == 1:
            nws, nsg0, nsg1 = _tile_words(w_ptr, s_ptr, woff0, woff1, HO, soff0, soff1, t0, gsh, gmax, N, sst, BF16, FP, W8,
                                          EF, SV, L, S)
        if PDL and EARLY == 1:  # the first step's weights are on their way while the previous kernel drains
            _gdc_wait()
        if not KS:
            xs.index(0).store(_x_stage(x_ptr, t0, t0 < t1, M, K, 0, LP, FP == 2, W8))
            if NT == 2:
                xs.index(1).store(_x_stage(x_ptr, t0, t0 < t1, M, K, 1, LP, FP == 2, W8))
            _cta_barrier()
        for it in range(n_it):
            if KS:
                t = t0 + it * NW
                tx = t + _iota(NW, 0, LX)  # the warps' tiles, for their activations
                tz = gl.minimum(t + _iota(NW, 0, S, 3), t1 - 1)  # (scales, zeros: any valid group past the end; x is 0)
                if PF:  # this step's words came with the last; the next step's go out now
                    ws = nws
                    nws = _ks_next_words(w_ptr, woff0, woff1, HO, t, t1, sst, L, FULL)
                elif EARLY == 1:  # this step's words were loaded at the end of the last (the first before the wait)
                    ws = nws
                else:
                    ws = _ks_words(w_ptr, woff0, woff1, HO, t + _iota(NW, 0, L), t1, sst, FULL)
                sg0, sg1 = _tile_scales(s_ptr, soff0, soff1, tz, gsh, gmax, N, BF16, FP, SV, L, S)
            else:
                t = t0 + it
                if PF:
                    ws, sg0, sg1 = nws, nsg0, nsg1
                    nws, nsg0, nsg1 = _tile_words(w_ptr, s_ptr, woff0, woff1, HO, soff0, soff1, gl.minimum(t + 1, t1 - 1),
                                                  gsh, gmax, N, sst, BF16, FP, W8, EF, SV, L, S)
                elif EARLY == 1:
                    ws, sg0, sg1 = nws, nsg0, nsg1
                else:
                    ws, sg0, sg1 = _tile_words(w_ptr, s_ptr, woff0, woff1, HO, soff0, soff1, t, gsh, gmax, N, sst, BF16, FP,
                                               W8, EF, SV, L, S)
            sp0 = sg0[0]
            sp1 = sg1[0]
            if not KS:
                tz = t
                xn0 = _x_stage(x_ptr, t + 1, t + 1 < t1, M, K, 0, LP, FP == 2, W8)  # the next tile's pairs, stored after
                if NT == 2:
                    xn1 = _x_stage(x_ptr, t + 1, t + 1 < t1, M, K, 1, LP, FP == 2, W8)
            if HAS_ZEROS:
                ga = (2 * tz) >> gsh
                gb = gl.minimum((2 * tz + 1) >> gsh, gmax)
                zpe0, zpo0 = _zero_pairs(z_ptr, ga, gb, N, srow0, BF16)
                zpe1, zpo1 = _zero_pairs(z_ptr, ga, gb, N, srow1, BF16)
            a00 = _quarters(ws[0], S)
            a01 = _quarters(ws[1], S)
            a10 = _quarters(ws[2], S)
            a11 = _quarters(ws[3], S)
            if W8:  # the second slab's words, and each slab's (scale, scale) and (zero, zero) pairs per row
                e00 = _quarters(ws[4], S)
                e01 = _quarters(ws[5], S)
                e10 = _quarters(ws[6], S)
                e11 = _quarters(ws[7], S)
                sa0 = _twice(sp0, 0)
                sb0 = _twice(sp0, 1)
                sa1 = _twice(sp1, 0)
                sb1 = _twice(sp1, 1)
                za0 = _twice(zpe0, 0)
                zb0 = _twice(zpe0, 1)
                za1 = _twice(zpe1, 0)
                zb1 = _twice(zpe1, 1)
            cur = (it % 2) * NT
            if KS and XH:  # every activation load of the step first, beside the words' (registers for latency)
                xl0, xr0 = _b_pairs(x_ptr, tx, t1, M, XK, 0, LX, SX, S, FP == 2, FULL, PX)
                xl1, xr1 = _b_pairs(x_ptr, tx, t1, M, XK, 1, LX, SX, S, FP == 2, FULL, PX)
                xl2, xr2 = _b_pairs(x_ptr, tx, t1, M, XK, 2, LX, SX, S, FP == 2, FULL, PX)
                xl3, xr3 = _b_pairs(x_ptr, tx, t1, M, XK, 3, LX, SX, S, FP == 2, FULL, PX)
                xb = (xl0, xr0, xl1, xr1, xl2, xr2, xl3, xr3)
            for j in gl.static_range(4):
                if j % 2 == 1:
                    zq0 = zpo0
                    zq1 = zpo1
                else:
                    zq0 = zpe0
                    zq1 = zpe1
                if W8:  # pairs j = 0, 1: the first slab's words, its zero and scale pairs; 2, 3: the second's
                    if j < 2:
                        u00, u01, u10, u11 = a00, a01, a10, a11
                        zq0, zq1, sq0, sq1 = za0, za1, sa0, sa1
                    else:
                        u00, u01, u10, u11 = e00, e01, e10, e11
                        zq0, zq1, sq0, sq1 = zb0, zb1, sb0, sb1
                if FP == 1:  # the rows' sigma pairs of planes j / j + 4 (both word halves: one tile)
                    g0 = _sig(sg0[j // 2], j % 2)
                    g1 = _sig(sg1[j // 2], j % 2)
                    h0 = g0
                    h1 = g1
                elif FP == 2:  # NVFP4: word half b is tile 2t + b, with its own scales
                    g0 = _e4m3_pair(sg0[j // 2], j % 2)
                    g1 = _e4m3_pair(sg1[j // 2], j % 2)
                    h0 = _e4m3_pair(sg0[2 + j // 2], j % 2)
                    h1 = _e4m3_pair(sg1[2 + j // 2], j % 2)
                if KS and XH:
                    p0 = xb[2 * j]
                    p1 = xb[2 * j + 1]
                elif KS:
                    p0, p1 = _b_pairs(x_ptr, tx, t1, M, XK, j, LX, SX, S, FP == 2, FULL, PX)
                else:
                    p0 = _b_regs(xs, cur, j, 0, LB, LX, SX, S)
                    p1 = _b_regs(xs, cur, j, 1, LB, LX, SX, S)
                if NT == 2:
                    q0 = _b_regs(xs, cur + 1, j, 0, LB, LX, SX, S)
                    q1 = _b_regs(xs, cur + 1, j, 1, LB, LX, SX, S)
                for i in gl.static_range(4):
                    if W8:  # (bytes j % 2 and j % 2 + 2 of the slab's words)
                        r0 = _dq8(u00[i], zq0, sq0, j % 2)
                        r1 = _dq8(u10[i], zq1, sq1, j % 2)
                        r2 = _dq8(u01[i], zq0, sq0, j % 2)
                        r3 = _dq8(u11[i], zq1, sq1, j % 2)
                    elif FP:
                        r0 = _dq_e2m1(a00[i], g0, j)
                        r1 = _dq_e2m1(a10[i], g1, j)
                        r2 = _dq_e2m1(a01[i], h0, j)
                        r3 = _dq_e2m1(a11[i], h1, j)
                    else:
                        r0 = _dq(_pair_bits(a00[i], j, BF16), zq0, sp0, j % 2 == 1, BF16)
                        r1 = _dq(_pair_bits(a10[i], j, BF16), zq1, sp1, j % 2 == 1, BF16)
                        r2 = _dq(_pair_bits(a01[i], j, BF16), zq0, sp0, j % 2 == 1, BF16)
                        r3 = _dq(_pair_bits(a11[i], j, BF16), zq1, sp1, j % 2 == 1, BF16)
                    c0, c1, c2, c3 = _mma(r0, r1, r2, r3, p0[i], p1[i], c0, c1, c2, c3, BF16)
                    if NT == 2:
                        d0, d1, d2, d3 = _mma(r0, r1, r2, r3, q0[i], q1[i], d0, d1, d2, d3, BF16)
            if EARLY == 1 and not PF:  # the next step's words, after this step's arithmetic (no more registers live)
                if KS:
                    nws = _ks_next_words(w_ptr, woff0, woff1, HO, t, t1, sst, L, FULL)
                else:
                    nws, nsg0, nsg1 = _tile_words(w_ptr, s_ptr, woff0, woff1, HO, soff0, soff1, gl.minimum(t + 1, t1 - 1),
                                                  gsh, gmax, N, sst, BF16, FP, W8, EF, SV, L, S)
            if not KS:
                xs.index(((it + 1) % 2) * NT).store(xn0)
                if NT == 2:
                    xs.index(((it + 1) % 2) * NT + 1).store(xn1)
                _cta_barrier()
        if PDL:  # after the main loop, not at the start (see .kernels._pdl_exit)
            _gdc_launch()
        ln = _iota(32, 1, S, 3)
        if KS:  # the warps' partial sums of the same rows, summed (every warp then holds the total)
            c0 = gl.expand_dims(gl.sum(c0, axis=0), 0) + acc
            c1 = gl.expand_dims(gl.sum(c1, axis=0), 0) + acc
            c2 = gl.expand_dims(gl.sum(c2, axis=0), 0) + acc
            c3 = gl.expand_dims(gl.sum(c3, axis=0), 0) + acc
            r0 = pid_n * (16 * R) + _iota(NW, 0, S, 3) * 0 + _iota(R, 2, S, 3) * 16 + ln // 4
        else:
            r0 = pid_n * (16 * R * NW) + _iota(NW, 0, S, 3) * (16 * R) + _iota(R, 2, S, 3) * 16 + ln // 4
        ta = (ln % 4) * 2
        if CL > 1:
            if XQ0:  # M <= 2: only the lanes of tokens 0 / 1 (q = 0) hold sums anyone stores
                me = (_iota(NW, 0, S, 3) * 8 + ln // 4) * R + _iota(R, 2, S, 3)
                c0, c1, c2, c3, d0, d1, d2, d3 = _cluster_sum(c0, c1, c2, c3, d0, d1, d2, d3, pid_k, xoff, me,
                                                              NW * 8 * R, NT, CL, (ln % 4 == 0).to(gl.int32))
            else:
                me = (_iota(NW, 0, S, 3) * 32 + ln) * R + _iota(R, 2, S, 3)
                c0, c1, c2, c3, d0, d1, d2, d3 = _cluster_sum(c0, c1, c2, c3, d0, d1, d2, d3, pid_k, xoff, me,
                                                              NW * 32 * R, NT, CL, gl.full_like(me, 1))
            if pid_k == 0:
                _final(y_ptr, b_ptr, r_ptr, omul, c0, c1, c2, c3, d0, d1, d2, d3, ta, r0, M, N, NT, HAS_BIAS, FP,
                       HAS_ROWS)
        elif USE_SPLIT:
            _store8(ws_ptr + pid_k * M * N, c0, c1, c2, c3, d0, d1, d2, d3, ta, r0, M, N, NT)
            _cta_barrier()
            old = gl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if old == split_k - 1:  # every other split of these rows has stored its partial: sum them in order
                c0, c1, c2, c3, d0, d1, d2, d3 = acc, acc, acc, acc, acc, acc, acc, acc
                for sk in range(split_k):
                    part = ws_ptr + sk * M * N
                    c0 += _partial(part, ta, r0, M, N)
                    c1 += _partial(part, ta + 1, r0, M, N)
                    c2 += _partial(part, ta, r0 + 8, M, N)
                    c3 += _partial(part, ta + 1, r0 + 8, M, N)
                    if NT == 2:
                        d0 += _partial(part, ta + 8, r0, M, N)
                        d1 += _partial(part, ta + 9, r0, M, N)
                        d2 += _partial(part, ta + 8, r0 + 8, M, N)
                        d3 += _partial(part, ta + 9, r0 + 8, M, N)
                _final(y_ptr, b_ptr, r_ptr, omul, c0, c1, c2, c3, d0, d1, d2, d3, ta, r0, M, N, NT, HAS_BIAS, FP,
                       HAS_ROWS)
                gl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # ready for the next launch
        else:
            _final(y_ptr, b_ptr, r_ptr, omul, c0, c1, c2, c3, d0, d1, d2, d3, ta, r0, M, N, NT, HAS_BIAS, FP, HAS_ROWS)

    _fast.replayable(_mmv_kernel)  # (one launch writes the whole output)

    @gluon.jit
    def _cl_arrive(RELEASE: gl.constexpr):
        """This thread's arrival at the cluster barrier (release: its remote shared-memory stores before it are
        visible to every thread of the cluster that waits after it; relaxed: no ordering, the start-up phase)."""
        if RELEASE:
            gl.inline_asm_elementwise("barrier.cluster.arrive.release.aligned; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)
        else:
            gl.inline_asm_elementwise("barrier.cluster.arrive.relaxed.aligned; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)

    @gluon.jit
    def _cl_wait():
        """Wait until every thread of the cluster has arrived (acquire: their released stores are visible)."""
        gl.inline_asm_elementwise("barrier.cluster.wait.acquire.aligned; // $0", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)

    @gluon.jit
    def _cl_put(v, off, on):
        """Store the fp32 ``v`` at byte ``off`` of rank 0's dynamic shared memory (the cluster's first program) where
        ``on`` is not 0."""
        gl.inline_asm_elementwise(
            "{ .reg .b32 a; .reg .pred p; setp.ne.b32 p, $3, 0; mov.b32 a, global_smem; add.u32 a, a, $2; "
            "mapa.shared::cluster.u32 a, a, 0; @p st.shared::cluster.f32 [a], $1; } // $0", "=r,f,r,r", [v, off, on],
            dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _cl_get(off):
        """The fp32 at byte ``off`` of this program's dynamic shared memory (after the cluster barrier)."""
        return gl.inline_asm_elementwise("{ .reg .b32 a; mov.b32 a, global_smem; add.u32 a, a, $1; ld.shared.f32 $0, [a]; }",
                                         "=f,r", [off], dtype=gl.float32, is_pure=False, pack=1)

    @gluon.jit
    def _cluster_sum(c0, c1, c2, c3, d0, d1, d2, d3, rank, xoff, me, TH: gl.constexpr, NT: gl.constexpr,
                     CL: gl.constexpr, on):
        """The split-K partials of a cluster's programs (``CL``, one row block), summed in rank order in rank 0.

        Why: the workspace finish (store the partial, an acq_rel counter, the last program reads every partial back
        from L2) cost 1.5-3.4 us of 18.2 at M = 16 on 4096 x 14336 and 2.2 of 14.4 at M = 1 on 14336 x 4096 with
        16 splits (H100, timing-only ablation, ``results/h100-session18-probes-2026-11-27.txt``).  Here ranks 1..CL-1
        store their D registers straight into rank 0's shared memory (distributed shared memory, ``mapa`` +
        ``st.shared::cluster``), one cluster barrier orders them, rank 0 adds them to its own in rank order -- the
        workspace path's order, so the sums are bit-identical -- and no byte goes through L2.  The exchange buffer lies
        past the kernel's own shared memory, at byte ``xoff`` (the launcher sizes it: ``(CL - 1)`` slots of
        ``4 NT`` registers a thread; ``me`` is the thread's and row group's index among the ``TH`` of a register, and
        only threads with ``on`` store: at M <= 2 the lanes of tokens 0 / 1 alone, so the buffer is a quarter as large,
        which keeps a cluster of 14 from taking every program's shared memory down to 5 programs an SM).
        Every program arrived at the barrier's first phase when it started, so waiting for it here guarantees rank 0
        is running before anyone writes into it."""
        NREG: gl.constexpr = 4 * NT
        _cl_wait()  # (phase 1: every program of the cluster has started)
        if rank > 0:
            base = xoff + ((rank - 1) * NREG * TH + me) * 4
            _cl_put(c0, base, on)
            _cl_put(c1, base + TH * 4, on)
            _cl_put(c2, base + TH * 8, on)
            _cl_put(c3, base + TH * 12, on)
            if NT == 2:
                _cl_put(d0, base + TH * 16, on)
                _cl_put(d1, base + TH * 20, on)
                _cl_put(d2, base + TH * 24, on)
                _cl_put(d3, base + TH * 28, on)
        _cl_arrive(True)
        _cl_wait()
        if rank == 0:
            for k in gl.static_range(CL - 1):
                base = xoff + (k * NREG * TH + me) * 4
                c0 += _cl_get(base)
                c1 += _cl_get(base + TH * 4)
                c2 += _cl_get(base + TH * 8)
                c3 += _cl_get(base + TH * 12)
                if NT == 2:
                    d0 += _cl_get(base + TH * 16)
                    d1 += _cl_get(base + TH * 20)
                    d2 += _cl_get(base + TH * 24)
                    d3 += _cl_get(base + TH * 28)
        return c0, c1, c2, c3, d0, d1, d2, d3

    @gluon.jit
    def _gdc_wait():
        """Programmatic dependent launch (``PDL``, :func:`.kernels.pdl_ok`): wait until the previous kernel of the stream
        has finished and its writes are visible.  Called before the kernel reads anything: the launch and block
        scheduling overlap the previous kernel's tail, no load does."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _gdc_launch():
        """Let the next kernel of the stream be scheduled (after the main loop: :func:`.kernels._pdl_exit`)."""
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)

    @gluon.jit
    def _pf_l2_if(ptr, on):
        """``prefetch.global.L2`` of the line holding each address whose ``on`` is not 0 (no register written, nothing
        returned)."""
        gl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; } // $0",
                                  "=r,l,r", [ptr, on], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _prefetch_step(w_ptr, srow0, srow1, q, t, N, KW, W8: gl.constexpr):
        """``early`` 2: step ``t``'s weight lines into L2 before the grid-dependency wait, one lane (``q`` 0) per row
        and 128-byte line (a row's 32 words of a step; 8-bit codes' 64, two lines).  Every lane prefetching its own
        16 bytes, as first written, asked for each line eight times and for the scale lines besides: on an H100 that
        took 4096 x 14336 M = 1 from 12.6 to 13.2 us (the scales come with the first step's loads)."""
        STEP: gl.constexpr = _step_words(W8)
        on = (q == 0).to(gl.int32)
        for h in gl.static_range(STEP // 32):
            _pf_l2_if(w_ptr + _slab_line(srow0, t * (STEP // 32) + h, N, KW), on)
            _pf_l2_if(w_ptr + _slab_line(srow1, t * (STEP // 32) + h, N, KW), on)

    @gluon.jit
    def _group_words(row, N, KW):
        """Where rows ``row``' words start, how far apart their 32-word slabs lie, and their hop, in the grouped word
        layout (:func:`.packing.word_offsets`: groups of 16 rows, the last ``N % 16``, each tile-major; a full
        group's tiles in load order: word ``w`` of a row at ``base + w + hop * (w // 16)``)."""
        r = row & 15  # (rows are never negative: bit operations, no signed division)
        g16 = row - r
        h = gl.minimum(N - g16, 16)
        f = h >> 4  # 1 for a full group (32 r - 16 (r % 8) = 256 (r // 8) + 16 (r % 8); no select: the loads keep
        return g16 * KW + 32 * r - 16 * (r & 7) * f, h * 32, 112 * f  # their known alignment)

    @gluon.jit
    def _slab_line(row, t, N, KW):
        """The ``row % 16``-th 128-byte line of the 32-word slab ``t`` of row ``row``'s group (a group's slab is
        ``h`` lines, one run: :func:`_group_words`), so that a group's rows name each of its lines once."""
        _, sst, _ = _group_words(row, N, KW)
        r = row & 15
        return (row - r) * KW + t * sst + r * 32

    @gluon.jit
    def _partial(part, tok, row, M, N):
        return gl.load(part + tok * N + row, mask=(tok < M) & (row < N), other=0.0, cache_modifier=".cg")

    @gluon.jit
    def _final(y_ptr, b_ptr, r_ptr, omul, c0, c1, c2, c3, d0, d1, d2, d3, ta, r0, M, N, NT: gl.constexpr,
               HAS_BIAS: gl.constexpr, FP: gl.constexpr, HAS_ROWS: gl.constexpr):
        """y (+ bias) from the eight D registers' sums, rounded once to y's dtype (float codes: the sums times
        ``omul``, and times the row factors where the layer has them)."""
        if FP:
            if HAS_ROWS:
                f0 = gl.load(r_ptr + r0, mask=r0 < N, other=0.0) * omul
                f1 = gl.load(r_ptr + r0 + 8, mask=r0 + 8 < N, other=0.0) * omul
            else:
                f0 = omul
                f1 = omul
            c0 *= f0
            c1 *= f0
            c2 *= f1
            c3 *= f1
            d0 *= f0
            d1 *= f0
            d2 *= f1
            d3 *= f1
        if HAS_BIAS:
            b0 = gl.load(b_ptr + r0, mask=r0 < N, other=0.0).to(gl.float32)
            b1 = gl.load(b_ptr + r0 + 8, mask=r0 + 8 < N, other=0.0).to(gl.float32)
            c0 += b0
            c1 += b0
            c2 += b1
            c3 += b1
            d0 += b0
            d1 += b0
            d2 += b1
            d3 += b1
        ty = y_ptr.dtype.element_ty
        _store8(y_ptr, c0.to(ty), c1.to(ty), c2.to(ty), c3.to(ty), d0.to(ty), d1.to(ty), d2.to(ty), d3.to(ty), ta, r0, M,
                N, NT)

    @gluon.jit
    def _store8(ptr, c0, c1, c2, c3, d0, d1, d2, d3, ta, r0, M, N, NT: gl.constexpr):
        """The eight D registers to ``[M, N]`` at ``ptr``: 0 / 1 row g, tokens 2q / 2q + 1; 2 / 3 row g + 8; d: +8
        tokens (NT = 2)."""
        _out(ptr, c0, ta, r0, M, N)
        _out(ptr, c1, ta + 1, r0, M, N)
        _out(ptr, c2, ta, r0 + 8, M, N)
        _out(ptr, c3, ta + 1, r0 + 8, M, N)
        if NT == 2:
            _out(ptr, d0, ta + 8, r0, M, N)
            _out(ptr, d1, ta + 9, r0, M, N)
            _out(ptr, d2, ta + 8, r0 + 8, M, N)
            _out(ptr, d3, ta + 9, r0 + 8, M, N)

    @gluon.jit
    def _tile_words(w_ptr, s_ptr, woff0, woff1, HO, soff0, soff1, t, gsh, gmax, N, sst, BF16: gl.constexpr,
                    FP: gl.constexpr, W8: gl.constexpr = False, EF: gl.constexpr = True, SV: gl.constexpr = False,
                    L: gl.constexpr = None, S: gl.constexpr = None):
        """Tile t's (a scalar: every warp of the program reads the same tile) words of the lane's two rows and the
        rows' scales: int codes, the scale pairs of groups ``2t >> gsh`` and ``(2t + 1) >> gsh`` (see
        :func:`group_shift`; twice); float codes, the two registers of each row's eight sigma bytes
        (:func:`mx_sigma`, ``s_ptr`` int32 ``[N, KW / 16]``).  The words as a tuple: row 0 / 1 x word half 0 / 1 (8-bit
        codes: then the same of the second slab)."""
        STEP: gl.constexpr = _step_words(W8)
        to = t * (STEP // 32) * sst  # (8-bit codes: the step's second slab is the next one, sst further)
        w00 = _stream(w_ptr + woff0 + to, EF)
        w01 = _stream(w_ptr + woff0 + to + HO, EF)
        w10 = _stream(w_ptr + woff1 + to, EF)
        w11 = _stream(w_ptr + woff1 + to + HO, EF)
        if W8:
            words = (w00, w01, w10, w11, _stream(w_ptr + woff0 + to + sst, EF),
                     _stream(w_ptr + woff0 + to + sst + HO, EF), _stream(w_ptr + woff1 + to + sst, EF),
                     _stream(w_ptr + woff1 + to + sst + HO, EF))
        else:
            words = (w00, w01, w10, w11)
        sg0, sg1 = _tile_scales(s_ptr, soff0, soff1, t, gsh, gmax, N, BF16, FP, SV, L, S)
        return words, sg0, sg1

    @gluon.jit
    def _ks_words(w_ptr, woff0, woff1, HO, tw, t1, sst, FULL: gl.constexpr = False):
        """The warps' own tiles' words (``KS``: tile ``tw`` per warp, ``[NW, 1, 1, 1]``), 0 past the split's end
        (``FULL``: every warp's tile is inside it, no mask)."""
        b0 = w_ptr + woff0 + tw * sst
        b1 = w_ptr + woff1 + tw * sst
        if FULL:
            return _stream(b0, True), _stream(b0 + HO, True), _stream(b1, True), _stream(b1 + HO, True)
        ok = tw < t1
        return _stream_masked(b0, ok), _stream_masked(b0 + HO, ok), _stream_masked(b1, ok), _stream_masked(b1 + HO, ok)

    @gluon.jit
    def _ks_next_words(w_ptr, woff0, woff1, HO, t, t1, sst, L: gl.constexpr, FULL: gl.constexpr):
        """The words of each warp's next ``ks`` step (tile ``t + NW + w``), loaded a step ahead (``pf``, or ``early`` 1
        after the step's arithmetic); unmasked (``FULL``) the last step re-reads a tile of the split instead of
        reading past it."""
        NW: gl.constexpr = gl.num_warps()
        tn = t + NW + _iota(NW, 0, L)
        if FULL:
            tn = gl.minimum(tn, t1 - 1)
        return _ks_words(w_ptr, woff0, woff1, HO, tn, t1, sst, FULL)

    @gluon.jit
    def _stream(ptr, EF: gl.constexpr):
        """Weight words, read once: with ``EF`` (one token tile, or a configuration's ``ef``) marked first to leave L1
        (``evict_first``), so the activations every step reads again stay there (the module's "Cache hints";
        ``gemv16`` has had the hint from the start)."""
        if EF:
            return gl.load(ptr, eviction_policy="evict_first")
        return gl.load(ptr)

    @gluon.jit
    def _stream_masked(ptr, ok):
        """:func:`_stream`, 0 where ``ok`` is false."""
        return gl.load(ptr, mask=ok, other=0, eviction_policy="evict_first")

    @gluon.jit
    def _b_direct(x_ptr, tw, t1, M, K, J: gl.constexpr, B: gl.constexpr, LX: gl.constexpr, SX: gl.constexpr,
                  S: gl.constexpr, NV: gl.constexpr = False, FULL: gl.constexpr = False):
        """:func:`_b_regs`' four B registers read straight from the activations (``KS``: each warp its own tile
        ``tw``, ``[NW, 1, 1, 1]`` in ``LX``; tokens 0..7), in :func:`_x_stage`'s channel order: lane ``(g, q)`` takes
        the pairs ``(x[g, c], x[g, c + d])``; int / MXFP4 ``c = 256 tw + 16 (2 j + b) + 4 q + i``, ``d = 128``; NVFP4
        (word half ``b`` = 128-channel tile ``2 tw + b``) ``c = 256 tw + 128 b + 16 j + 4 q + i``, ``d = 64``; 0 past M,
        K or the split's end."""
        ln = _iota(32, 1, LX)
        g = gl.minimum(ln // 4, M - 1)  # (token columns past M read row M - 1: their sums are never stored)
        c = _pair_channel(tw, J, B, (ln % 4) * 4 + _iota(4, 3, LX), NV)
        if NV:
            d: gl.constexpr = 64
        else:
            d: gl.constexpr = 128
        if FULL:
            lo = gl.load(x_ptr + g * K + c)
            hi = gl.load(x_ptr + g * K + c + d)
        else:
            m = tw < t1
            lo = gl.load(x_ptr + g * K + c, mask=m & (c < K), other=0.0)
            hi = gl.load(x_ptr + g * K + c + d, mask=m & (c + d < K), other=0.0)
        return _into(_quarters(_pack(lo, hi), SX), S)

    @gluon.jit
    def _b_pairs(x_ptr, tw, t1, M, K, J: gl.constexpr, LX: gl.constexpr, SX: gl.constexpr, S: gl.constexpr,
                 NV: gl.constexpr = False, FULL: gl.constexpr = False, PX: gl.constexpr = False):
        """Both word halves' B registers of code pair ``J`` (:func:`_b_direct` ``B`` = 0, 1).  ``PX``: ``x_ptr`` holds
        the pairs already, in that order (:func:`.fp_kernels.quantize_activations_pairs`: lane ``(g, q)``'s words
        ``128 tw + 32 j + 8 q + 2 i + b``, ``K`` their row stride), so the lane's eight registers are two 16-byte
        loads, each two MMAs' ``(b = 0, b = 1)`` operand pairs in place."""
        if PX:
            ln = _iota(32, 1, LX)
            g = gl.minimum(ln // 4, M - 1)
            w = x_ptr + g * K + tw * 128 + J * 32 + (ln % 4) * 8 + _iota(4, 3, LX)
            if FULL:
                va = gl.load(w)
                vb = gl.load(w + 4)
            else:
                va = gl.load(w, mask=tw < t1, other=0)
                vb = gl.load(w + 4, mask=tw < t1, other=0)
            a0, a1, a2, a3 = _quarters(va, SX)
            b0, b1, b2, b3 = _quarters(vb, SX)
            return _into((a0, a2, b0, b2), S), _into((a1, a3, b1, b3), S)
        return (_b_direct(x_ptr, tw, t1, M, K, J, 0, LX, SX, S, NV, FULL),
                _b_direct(x_ptr, tw, t1, M, K, J, 1, LX, SX, S, NV, FULL))

    @gluon.jit
    def _tile_scales(s_ptr, soff0, soff1, t, gsh, gmax, N, BF16: gl.constexpr, FP: gl.constexpr, SV: gl.constexpr = False,
                     L: gl.constexpr = None, S: gl.constexpr = None):
        """Tile t's scales of the lane's two rows (see :func:`_tile_words`; ``t`` a scalar or, ``KS``, a tile per
        warp)."""
        if FP == 1:  # two registers a row and tile (``s_ptr`` int64 ``[N, KW / 32]``)
            v0 = gl.load(s_ptr + soff0 + t)
            v1 = gl.load(s_ptr + soff1 + t)
            sg0 = (v0.to(gl.int32), (v0 >> 32).to(gl.int32))
            sg1 = (v1.to(gl.int32), (v1 >> 32).to(gl.int32))
        elif FP == 2 and SV:  # NVFP4, a row's 16 bytes of the step as one 16-byte load (``sv``)
            k4 = _iota(4, 3, L)
            sg0 = _quarters(gl.load(s_ptr + gl.expand_dims(soff0 + 64 * t, 3) + k4), S)
            sg1 = _quarters(gl.load(s_ptr + gl.expand_dims(soff1 + 64 * t, 3) + k4), S)
        elif FP == 2:  # as four 4-byte loads: the two 128-channel tiles' scale bytes (``s_ptr`` int32, grouped)
            sg0 = (gl.load(s_ptr + soff0 + 64 * t), gl.load(s_ptr + soff0 + 64 * t + 1),
                   gl.load(s_ptr + soff0 + 64 * t + 2), gl.load(s_ptr + soff0 + 64 * t + 3))
            sg1 = (gl.load(s_ptr + soff1 + 64 * t), gl.load(s_ptr + soff1 + 64 * t + 1),
                   gl.load(s_ptr + soff1 + 64 * t + 2), gl.load(s_ptr + soff1 + 64 * t + 3))
        else:
            ga = (2 * t) >> gsh
            gb = gl.minimum((2 * t + 1) >> gsh, gmax)  # (the far half of a ragged last tile: code 0, x 0)
            sg0 = (_scale_pairs(s_ptr, ga, gb, N, soff0, BF16), )
            sg1 = (_scale_pairs(s_ptr, ga, gb, N, soff1, BF16), )
        return sg0, sg1

#: what :func:`launch_mmv` callers run instead where ``mmv`` cannot (interpreter, ROCm, other dtypes): ``dot16``
#: (itself falling back to ``dot`` where the paired decode does not fit)
FALLBACK = {"kernel": "dot16", "BM": 16, "BN": 64, "split_k": 1, "warps": 4, "stages": 3, "swap": True, "group_m": 8}

def runs(x: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether ``mmv`` can run these tensors: compiled CUDA (sm_80+, not the interpreter, not ROCm: the test of
    ``gemv16``'s bf16x2 PTX), Gluon present, fp16 activations with fp16 scales or bf16 activations with fp16 / bf16
    scales.  (:func:`fits` is the layer-level half of the test.)"""
    if not (HAS_GLUON and x.is_cuda and (scales.dtype == x.dtype == torch.float16
                                         or (x.dtype == torch.bfloat16 and scales.dtype in (torch.float16, torch.bfloat16)))):
        return False
    return _bf2_ok(x)


def takes(x: torch.Tensor, scales: torch.Tensor, bits: int, slab: int, group_size: int, K: int,
          zero_point: float) -> bool:
    """:func:`fits` and :func:`runs`, and for bf16 a constant zero point exact in bf16 (every 4-bit one is)."""
    if not (runs(x, scales) and fits(bits, slab, group_size, K, x.dtype, x.shape[0])):
        return False
    if x.dtype == torch.bfloat16:
        return _bf2_magic(zero_point) is not None
    return True


@functools.lru_cache(maxsize=64)
def _odd_zero_pair(zero_point: float) -> int:
    """The fp16 pair -(64 + z) of the odd code pairs (:func:`_dq`)."""
    return _h2_pair(-64.0 - zero_point)


def launch_mmv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               bias: torch.Tensor | None, group_size: int, zero_point: float, cfg: dict,
               out: torch.Tensor | None = None, bits: int = 4) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` with ``mmv`` for ``bits``-bit codes (the caller checked :func:`fits` and :func:`runs`).

    cfg: ``R`` (row groups of 16 per warp), ``warps`` (each its own rows; they share the K tiles), ``pf`` (load the
    next tile's words before the current tile's arithmetic; default on, off with ``ks``), ``split_k`` (programs along
    K; their fp32 partials meet in the persistent workspace, summed in order by the last), ``ks`` (the warps split K
    instead, M <= 8) with ``xh`` (a step's activation loads first), ``ef`` (``evict_first`` weight loads at M = 9..16;
    always at M <= 8), ``early`` (with programmatic dependent launch: 1 the first step's weights loaded, 2 prefetched
    into L2, before waiting on the previous kernel; see the module docstring), ``maxnreg`` (registers a thread, 0:
    ptxas' choice), ``sv`` (NVFP4 only, :func:`launch_mmv_fp`: a row's scale bytes of a step as one 16-byte load;
    default at ``R`` 1).  Launched through the direct launcher
    (:mod:`quantlinear_triton.launch`).
    """
    w8 = bits == 8
    y, plan = _plan(x, qweight, cfg, out, 8, 64 if w8 else 32)
    if plan is None:
        return y
    K = x.shape[1]
    bf16 = x.dtype == torch.bfloat16
    if bf16:  # the pair -(128 + z) in bf16 (exact for every 4-bit zero point); one pair for every code pair
        zh = zh16 = _bf2_magic(zero_point)
    else:
        zh, zh16 = _h2_magic(zero_point), _odd_zero_pair(zero_point)
    tensors = (x, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else x, y, scales)
    _launch(plan, tensors, (group_shift(group_size, K), scales.shape[0] - 1, zh, zh16), 1.0, y,
            has_zeros=zeros is not None, has_bias=bias is not None, bf16=bf16, fp=0, has_rows=False, w8=w8)
    return y


class Plan(NamedTuple):
    """One launch of ``_mmv_kernel`` (:func:`_plan`)."""
    R: int  # row groups of 16 a warp
    warps: int
    pf: bool  # the next step's words a step ahead
    ks: bool  # the warps split K (M <= 8)
    blocks: int  # programs along the rows
    split: int  # programs along K (a row block's splits)
    tps: int  # steps a split
    ws: torch.Tensor  # split-K workspace and counters (the output where there is none)
    cnt: torch.Tensor
    xh: bool  # ks: a step's activation loads first
    maxnreg: int
    ef: bool  # evict_first weight loads
    early: int  # 0 / 1 / 2: weights started on before the grid-dependency wait
    cl: int  # the split as one thread-block cluster of this size (1: none; the workspace, where split > 1)
    sv: bool  # NVFP4: a row's scale bytes of a step as one 16-byte load (four 4-byte ones otherwise)


def _plan(x: torch.Tensor, qweight: torch.Tensor, cfg: dict, out: torch.Tensor | None, warps: int, step_words: int = 32):
    """The output and, for M > 0, the launch plan of ``cfg`` (``warps``: its default): R, warps, pf, ks, blocks of
    rows, :func:`.kernels_tc.split_plan`'s split, steps per split, workspace and counters (``step_words``: a row's
    words in one 256-channel step), then xh, maxnreg, ef, early, the cluster size and sv (NVFP4's scale load: one
    16-byte load a row and step, the default at one row group a warp, or four 4-byte ones).  ``ks`` (the warps of a program split K, taking the same
    rows) applies to 32-word steps (4-bit int, MXFP4, NVFP4; not 8-bit codes' 64) and M <= 8, prefetching only where
    ``pf`` says so, and ``xh`` applies with it only; ``ef`` is true at one token tile and where asked; ``early``
    (0 / 1 / 2, taken only where the launch has programmatic dependent launch); last the cluster size: ``cl`` makes
    the splits of a row block one thread-block cluster that sums its partials in shared memory (:func:`_cluster_sum`),
    where :func:`cluster_fits` (else the workspace split, the same sums)."""
    M = x.shape[0]
    N, KW = qweight.shape
    ks = bool(cfg.get("ks")) and step_words == 32 and M <= 8
    R, warps, pf = int(cfg.get("R", 1)), int(cfg.get("warps", warps)), bool(cfg.get("pf", not ks))
    early = int(cfg.get("early", 0))
    if early not in (0, 1, 2):  # (any other value would leave the kernel without its grid-dependency wait)
        raise QuantLinearError(f"mmv configuration {cfg}: early={early} is none of 0, 1, 2")
    y = out if out is not None else torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return y, None
    blocks = -(-N // (16 * R * (1 if ks else warps)))
    n_steps, split_k = KW // step_words, int(cfg.get("split_k", 1))
    split, sps = split_count(n_steps, split_k)
    cl = split if cfg.get("cl") and cluster_fits(x, split, M, R, warps) else 1
    sp = (split, sps, y, y) if cl > 1 else split_plan(x, y, n_steps, split_k, blocks)
    return y, Plan(R, warps, pf, ks, blocks, *sp, ks and bool(cfg.get("xh")), int(cfg.get("maxnreg", 0)),
                   M <= 8 or bool(cfg.get("ef")), early, cl, _tune.scale_load(cfg))


#: the largest cluster (16 is past the portable 8; Hopper runs it, and Triton's launcher opts the kernel in)
MAX_CLUSTER = 16
#: the most exchange-buffer bytes a cluster split takes (rank 0's shared memory; the kernel's own comes on top)
MAX_EXCHANGE = 32 * 1024


def exchange_bytes(cl: int, M: int, R: int, warps: int) -> int:
    """Rank 0's exchange buffer of a cluster split (:func:`_cluster_sum`): ``cl - 1`` slots of every thread's
    ``4 NT`` D registers a row group (at M <= 2 of the lanes that hold tokens 0 / 1 only, a quarter)."""
    return (cl - 1) * 4 * (1 if M <= 8 else 2) * warps * (8 if M <= 2 else 32) * R * 4


def cluster_fits(x: torch.Tensor, split: int, M: int, R: int, warps: int) -> bool:
    """Whether a split of ``split`` programs can be one thread-block cluster: 2..:data:`MAX_CLUSTER` programs, an
    exchange buffer within :data:`MAX_EXCHANGE`, and a launcher that does clusters on this device
    (:func:`.launch.clusters_ok`: sm_90+ compiled CUDA)."""
    return (1 < split <= MAX_CLUSTER and exchange_bytes(split, M, R, warps) <= MAX_EXCHANGE
            and _fast.clusters_ok(x))


def _launch(plan: Plan, tensors: tuple, ints: tuple, omul: float, y: torch.Tensor, has_zeros: bool, has_bias: bool,
            bf16: bool, fp: int, has_rows: bool, w8: bool = False, px: bool = False) -> None:
    """One ``_mmv_kernel`` launch: ``tensors`` = (x, w, s, z, b, y, r), ``ints`` = (gsh, gmax, zh, zh16); ``px``: x
    is the activation pairs of :func:`.fp_kernels.quantize_activations_pairs` (zero to the last whole step)."""
    R, warps, pf, ks, blocks, split, tps, ws, cnt, xh, maxnreg, ef, early, cl, sv = plan
    x, w, s, z, b, _, r = tensors
    (M, K), (N, KW) = x.shape, w.shape
    if px:
        K = KW // 32 * 256
    full = ks and ks_unmasked(K, KW // 32, tps, split, warps)
    consts, skey, opts = _statics(R, warps, pf, M <= 8, split > 1 and cl == 1, pdl_ok(x), has_zeros, has_bias, bf16, fp,
                                  has_rows, w8, ks, xh, maxnreg, full, ef, early, cl, cl > 1 and M <= 2, N % 16 == 0,
                                  sv and fp == 2, px)
    try:
        _fast.launch(_mmv_kernel, (blocks, split) if cl == 1 else (blocks, ), (x, w, s, z, b, y, ws, cnt, r),
                     (M, N, K, KW, *ints, tps, split, 0), (omul,), consts, skey, opts, y, cl, exchange_bytes(cl, M, R, warps))
    except RuntimeError as e:  # a cluster launch this Triton or driver refused: the workspace split from now on
        if cl == 1:
            raise
        _fast.disable_clusters(f"mmv: {e}")
        # (split * tps steps in `split` splits plan to the same split and steps a split, or none where it has no workspace)
        _launch(plan._replace(**dict(zip(("split", "tps", "ws", "cnt"), split_plan(x, y, split * tps, split, blocks))),
                              cl=1), tensors, ints, omul, y, has_zeros, has_bias, bf16, fp, has_rows, w8, px)


def ks_unmasked(K: int, steps: int, per_split: int, split: int, warps: int) -> bool:
    """Whether ``ks`` runs without masks (``FULL``): whole 256-channel steps, and every split's steps (``per_split``,
    the last split the rest) a multiple of the warps, so no warp's step falls past its split's end.  (Token columns past
    M read row M - 1 either way: their sums are never stored.)  Without the masks a step issues 34 fewer instructions
    (317 a warp; predicates and zero fills), and ks at M = 1 took 1-3% less on an H100."""
    return K % 256 == 0 and per_split % warps == 0 and (steps - (split - 1) * per_split) % warps == 0


@functools.lru_cache(maxsize=1024)
def _statics(R: int, warps: int, pf: bool, one_tile: bool, use_split: bool, pdl: bool, has_zeros: bool, has_bias: bool,
             bf16: bool, fp: int, has_rows: bool, w8: bool = False, ks: bool = False, xh: bool = False,
             maxnreg: int = 0, full: bool = False, ef: bool = True, early: int = 0, cl: int = 1,
             xq0: bool = False, lo: bool = False, sv: bool = False, px: bool = False) -> tuple:
    """Every constexpr of ``_mmv_kernel`` (the direct launcher caches only launches that give them all), the static key
    and the compile options of one launch class: made once, not per call (this is the eager decode path)."""
    consts = dict(R=R, NT=1 if one_tile else 2, PF=pf, USE_SPLIT=use_split, PDL=pdl, HAS_ZEROS=has_zeros,
                  HAS_BIAS=has_bias, BF16=bf16, FP=fp, HAS_ROWS=has_rows, W8=w8, KS=ks, XH=xh, FULL=full, EF=ef,
                  EARLY=early if pdl else 0, CL=cl, XQ0=xq0, LO=lo, SV=sv, PX=px)
    options = {"num_warps": warps, "launch_pdl": True} if pdl else {"num_warps": warps}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return consts, ("mmv", warps, maxnreg, *sorted(consts.items())), options


def runs_fp(x: torch.Tensor, M: int, nv: bool = False) -> bool:
    """Whether ``mmv`` can run an MXFP4 (``nv``: NVFP4) layer with ``mmv_sigma`` on these activations: fp16, M <= 16,
    compiled CUDA sm_80+ (the test of :func:`runs`); NVFP4's scale conversion (``cvt.f16x2.e4m3x2``) needs sm_89+."""
    if not (HAS_GLUON and x.is_cuda and x.dtype == torch.float16 and 1 <= M <= 16):
        return False
    return _bf2_ok(x) and (not nv or _sm89(x.get_device()))


@functools.lru_cache(maxsize=None)
def _sm89(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 9)


def reads_pairs(cfg: dict, M: int) -> bool:
    """Whether :func:`launch_mmv_fp` with ``cfg`` at ``M`` rows reads the activations as pairs where the scheme quantizes
    them (``pairs``, :func:`.fp_kernels.quantize_activations_pairs`): a configuration's ``px`` with the warps splitting
    K (``ks``, M <= 8), each lane loading its B registers straight from memory.  (The row split stages its activations
    in shared memory from plain fp16 ones.)

    Why a choice: on an H100 (same runs, ``results/h100-session22-probes-2026-11-27.txt``) the pairs took MXFP4 M = 1
    from 14.06 to 13.48-13.53 us on 14336 x 4096 and from 13.82 to 12.99-13.07 on 4096 x 14336, and NVFP4 4096 x 14336
    with 4-byte scale loads from 14.58 to 14.13-14.18, but cost NVFP4 14336 x 4096's entry 2% and others up to 15%."""
    return bool(cfg.get("ks")) and bool(cfg.get("px")) and M <= 8


def launch_mmv_fp(x: torch.Tensor, qweight: torch.Tensor, sigma: torch.Tensor, row_scales: torch.Tensor | None,
                  bias: torch.Tensor | None, omul: float, cfg: dict, out: torch.Tensor | None = None,
                  nv: bool = False, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W^T (* row_scales) (+ bias)`` for E2M1 codes in the float slab layout (:mod:`.fp_packing`): MXFP4's
    32-word slabs (the int layout's word and plane order) with :func:`.fp_packing.mx_sigma`'s scales, or (``nv``)
    NVFP4's 16-word slabs, two tiles a step, with :func:`.fp_packing.nv_sigma`'s; ``x`` fp16 (the activations as
    the scheme quantizes them), ``cfg`` as :func:`launch_mmv`'s.  ``pairs``: the same activations as
    :func:`.fp_kernels.quantize_activations_pairs` wrote them (pair distance 64 for NVFP4, 128 for MXFP4), read
    instead of ``x`` (which then gives only the shape and type)."""
    y, plan = _plan(x, qweight, cfg, out, 4)
    if plan is None:
        return y
    if pairs is not None and not plan.ks:
        raise QuantLinearError(f"mmv configuration {cfg}: activation pairs are read with ks only (M = {x.shape[0]})")
    sig = sigma if nv or sigma.dtype == torch.int64 else sigma.view(torch.int64)  # (MXFP4: a row's 8 bytes of a tile as one int64)
    xa = x if pairs is None else pairs
    tensors = (xa, qweight, sig, sig, bias if bias is not None else x, y, row_scales if row_scales is not None else y)
    _launch(plan, tensors, (0, 0, 0, 0), float(omul), y, has_zeros=False, has_bias=bias is not None, bf16=False,
            fp=2 if nv else 1, has_rows=row_scales is not None, px=pairs is not None)
    return y
