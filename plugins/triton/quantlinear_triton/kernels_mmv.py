"""``mmv``: the decode kernel (M <= 16) for 4-bit codes and fp16 activations on NVIDIA sm_80+, on the tensor cores.

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
  two 16-byte loads per row) of both its rows;
* the code pair ``j`` (0..3) of word ``p`` -- bits ``4j`` and ``16 + 4j``, channels ``c = 256t + 32j + p`` and
  ``c + 128`` -- is A-register 0 / 1 (row ``g`` / ``g + 8``, word ``b = 0``) or 2 / 3 (``b = 1``) of the MMA
  ``(i, j)``; its logical k columns are ``2q, 2q + 1`` (``+ 8`` for ``b = 1``), so the lane's B registers are the
  activation pairs ``(x[c], x[c + 128])`` of the same channels.  Any one-to-one map of channels to k columns gives
  the same sum, as long as A and B agree; this one makes both sides plain vector loads.
* D register 0 / 1 is row ``g``, tokens ``2q`` / ``2q + 1``; 2 / 3 row ``g + 8``.

The two halves of a pair are 128 channels apart, so with 128-channel groups they have different scales: the weight
is dequantized to ``(q - z) * s`` in fp16 before the MMA (exact ``q - z``, one rounding), as ``dot16`` does.  A
CTA's warps split the K tiles (warp ``w`` takes tiles ``w, w + NW, ...``) and add their accumulators at the end.

Written in Gluon (Triton's explicit-layout dialect): the register layout is part of the program, which the MMA
fragments need.  The interpreter cannot run it: CI cross-compiles it for sm_80 / sm_90 and checks the machine code
(one MMA per word and token tile, 16-byte weight loads, no spills); its numerics are tested on a GPU.  Where it
cannot run (interpreter, ROCm, pre-Ampere, bf16, other code widths) :data:`FALLBACK` runs instead.

Measured on an H100 (``benchmarks/mmv_check.py``): at M = 2..8 it takes 1.14-1.76x less time than the kernels it
replaces (``dot16`` / ``dot``); at M = 16 0.89-1.11x, so it is a tuned-table choice there; at M = 1 it takes
1.00-1.19x the paired GEMV's time, which stays.
"""

from __future__ import annotations

import functools

import torch

from . import launch as _fast

try:  # Gluon ships with Triton >= 3.4
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    HAS_GLUON = True
except ImportError:  # pragma: no cover - old Triton
    HAS_GLUON = False


def fits(bits: int, slab: int, group_size: int, K: int, dtype: torch.dtype, M: int) -> bool:
    """Whether ``mmv`` runs this layer and batch: 4-bit codes, slabs of 32 words, groups of a multiple of 128 (or
    one per row), fp16 activations, M <= 16."""
    return (HAS_GLUON and bits == 4 and slab == 32 and dtype == torch.float16 and 1 <= M <= 16
            and (group_size >= K or group_size % 128 == 0))


if HAS_GLUON:

    @gluon.jit
    def _iota(N: gl.constexpr, DIM: gl.constexpr, L: gl.constexpr):
        """0..N-1 along dimension DIM of the rank-4 layout L, size 1 elsewhere."""
        if DIM == 0:
            v = gl.arange(0, N, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, L))))
            r = gl.expand_dims(gl.expand_dims(gl.expand_dims(v, 1), 2), 3)
        elif DIM == 1:
            v = gl.arange(0, N, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, L))))
            r = gl.expand_dims(gl.expand_dims(gl.expand_dims(v, 0), 2), 3)
        elif DIM == 2:
            v = gl.arange(0, N, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, L))))
            r = gl.expand_dims(gl.expand_dims(gl.expand_dims(v, 0), 1), 3)
        else:
            v = gl.arange(0, N, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, L))))
            r = gl.expand_dims(gl.expand_dims(gl.expand_dims(v, 0), 1), 2)
        return r

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
        """Two fp16 tensors -> int32 words holding ``lo`` in the low and ``hi`` in the high half."""
        return gl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [lo, hi], dtype=gl.int32, is_pure=True,
                                         pack=1)

    @gluon.jit
    def _dq(w, zp, sp, ODD: gl.constexpr):
        """The fp16 pair ``(q - z) * s`` of the codes at bits 0-3 / 16-19 (even pair: ``zp`` = 1024 + z) or 4-7 /
        20-23 (odd: ``zp`` = -(64 + z); ``1024 + 16 q`` times 1/16 plus ``zp`` is the exact ``q - z``)."""
        if ODD:
            r = gl.inline_asm_elementwise(
                "{ .reg .b32 t, k; mov.b32 k, 0x2C002C00; lop3.b32 t, $1, 0x00F000F0, 0x64006400, 0xEA; fma.rn.f16x2 t, t, k, $2; "
                "mul.rn.f16x2 $0, t, $3; }", "=r,r,r,r", [w, zp, sp], dtype=gl.int32, is_pure=True, pack=1)
        else:
            r = gl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $1, 0x000F000F, 0x64006400, 0xEA; sub.f16x2 t, t, $2; "
                "mul.rn.f16x2 $0, t, $3; }", "=r,r,r,r", [w, zp, sp], dtype=gl.int32, is_pure=True, pack=1)
        return r

    @gluon.jit
    def _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return gl.inline_asm_elementwise(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, "
            "{$10, $11, $12, $13};",
            "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3],
            dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)

    @gluon.jit
    def _scale_pairs(s_ptr, ga, gb, N, row):
        return _pack(gl.load(s_ptr + ga * N + row), gl.load(s_ptr + gb * N + row))

    @gluon.jit
    def _tile_words(w_ptr, s_ptr, woff0, woff1, srow0, srow1, t, K, N, group_size, L: gl.constexpr):
        """Tile t's words of the lane's two rows (two 16-byte halves each) and the rows' scale pairs."""
        t4 = gl.convert_layout(gl.reshape(t, [t.shape[0], 1, 1, 1]), L, assert_trivial=True) * 32
        ga = gl.minimum(t * 256, K - 1) // group_size
        gb = gl.minimum(t * 256 + 128, K - 1) // group_size
        return (gl.load(w_ptr + woff0 + t4), gl.load(w_ptr + woff0 + t4 + 16), gl.load(w_ptr + woff1 + t4),
                gl.load(w_ptr + woff1 + t4 + 16), _scale_pairs(s_ptr, ga, gb, N, srow0),
                _scale_pairs(s_ptr, ga, gb, N, srow1))

    @gluon.jit
    def _zero_pairs(z_ptr, ga, gb, N, row):
        """(1024 + z) and -(64 + z) pairs of a row's two groups."""
        za = gl.load(z_ptr + ga * N + row).to(gl.float32)
        zb = gl.load(z_ptr + gb * N + row).to(gl.float32)
        return (_pack((za + 1024.0).to(gl.float16), (zb + 1024.0).to(gl.float16)),
                _pack((-64.0 - za).to(gl.float16), (-64.0 - zb).to(gl.float16)))

    @gluon.jit
    def _x_pairs(x_ptr, xoff, xm, kpos, K, J: gl.constexpr, B: gl.constexpr, EVEN_K: gl.constexpr, SX: gl.constexpr,
                 S: gl.constexpr):
        """B registers of pair j, word half b: (x[c], x[c + 128]) for the lane's four words (0 past K)."""
        if EVEN_K:
            lo = gl.load(x_ptr + xoff + (J * 32 + B * 16), mask=xm, other=0.0)
            hi = gl.load(x_ptr + xoff + (J * 32 + B * 16 + 128), mask=xm, other=0.0)
        else:
            lo = gl.load(x_ptr + xoff + (J * 32 + B * 16), mask=xm & (kpos + (J * 32 + B * 16) < K), other=0.0)
            hi = gl.load(x_ptr + xoff + (J * 32 + B * 16 + 128), mask=xm & (kpos + (J * 32 + B * 16 + 128) < K),
                         other=0.0)
        return _into(_quarters(_pack(lo, hi), SX), S)

    @gluon.jit
    def _store(y_ptr, b_ptr, c, tok, row, M, N, HAS_BIAS: gl.constexpr):
        v = gl.sum(c, axis=0)
        if HAS_BIAS:
            v += gl.load(b_ptr + row, mask=row < N, other=0.0).to(gl.float32)
        gl.store(y_ptr + tok * N + row, v.to(gl.float16), mask=(tok < M) & (row < N))

    @gluon.jit
    def _mmv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, KW, group_size, zh, zh16,
                    R: gl.constexpr, NT: gl.constexpr, HAS_ZEROS: gl.constexpr, HAS_BIAS: gl.constexpr,
                    EVEN_K: gl.constexpr, PF: gl.constexpr = True):
        NW: gl.constexpr = gl.num_warps()
        # weights: [warp, lane, row group, word i]; x: [warp, lane, 1, word i]; per-(row group) values: S
        L: gl.constexpr = gl.BlockedLayout([1, 1, R, 4], [1, 32, 1, 1], [NW, 1, 1, 1], [3, 2, 1, 0])
        S: gl.constexpr = gl.SliceLayout(3, L)
        LX: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 32, 1, 1], [NW, 1, 1, 1], [3, 2, 1, 0])
        SX: gl.constexpr = gl.SliceLayout(3, LX)
        pid = gl.program_id(0)
        n_tiles = KW // 32
        # rows (clamped: the loads need no mask; the stores are masked)
        lane = _iota(32, 1, L)
        row0 = gl.minimum(pid * (16 * R) + _iota(R, 2, L) * 16 + lane // 4, N - 1)  # [1, 32, R, 1]
        row1 = gl.minimum(row0 + 8, N - 1)
        woff0 = row0 * KW + (lane % 4) * 4 + _iota(4, 3, L)  # [1, 32, R, 4]
        woff1 = row1 * KW + (lane % 4) * 4 + _iota(4, 3, L)
        srow0 = gl.convert_layout(gl.reshape(row0, [1, 32, R]), S, assert_trivial=True)
        srow1 = gl.convert_layout(gl.reshape(row1, [1, 32, R]), S, assert_trivial=True)
        xl = _iota(32, 1, LX)
        xw = _iota(NW, 0, LX)
        xcol = (xl % 4) * 4 + _iota(4, 3, LX)  # [1, 32, 1, 4]
        xtok = xl // 4
        wid = gl.convert_layout(gl.reshape(_iota(NW, 0, L), [NW, 1, 1]), S, assert_trivial=True)
        acc = gl.zeros([NW, 32, R], gl.float32, S)
        c0 = acc
        c1 = acc
        c2 = acc
        c3 = acc
        d0 = acc
        d1 = acc
        d2 = acc
        d3 = acc
        zpe0 = gl.full([NW, 32, R], zh, gl.int32, S)
        zpo0 = gl.full([NW, 32, R], zh16, gl.int32, S)
        zpe1 = zpe0
        zpo1 = zpo0
        t = gl.minimum(wid, n_tiles - 1)  # [NW, 1, 1]: the warp's first tile
        if PF:  # the first tile's words and scales; each iteration then loads the next one's before its arithmetic
            n00, n01, n10, n11, nsp0, nsp1 = _tile_words(w_ptr, s_ptr, woff0, woff1, srow0, srow1, t, K, N, group_size, L)
        for it in range(gl.cdiv(n_tiles, NW)):
            if PF:
                w00, w01, w10, w11, sp0, sp1 = n00, n01, n10, n11, nsp0, nsp1
                tn = gl.minimum(wid + (it + 1) * NW, n_tiles - 1)
                n00, n01, n10, n11, nsp0, nsp1 = _tile_words(w_ptr, s_ptr, woff0, woff1, srow0, srow1, tn, K, N,
                                                             group_size, L)
            else:
                w00, w01, w10, w11, sp0, sp1 = _tile_words(w_ptr, s_ptr, woff0, woff1, srow0, srow1, t, K, N,
                                                           group_size, L)
            if HAS_ZEROS:
                ga = gl.minimum(t * 256, K - 1) // group_size
                gb = gl.minimum(t * 256 + 128, K - 1) // group_size
                zpe0, zpo0 = _zero_pairs(z_ptr, ga, gb, N, srow0)
                zpe1, zpo1 = _zero_pairs(z_ptr, ga, gb, N, srow1)
            a00 = _quarters(w00, S)
            a01 = _quarters(w01, S)
            a10 = _quarters(w10, S)
            a11 = _quarters(w11, S)
            # the lane's x: tokens g (and g + 8), channels 256 t + 4q + i (+ 32 j + 16 b + 128 h)
            tx = xw + it * NW
            xoff = xtok * K + tx * 256 + xcol
            xm = (tx < n_tiles) & (xtok < M)
            kpos = tx * 256 + xcol
            for j in gl.static_range(4):
                if j % 2 == 1:
                    zq0 = zpo0
                    zq1 = zpo1
                else:
                    zq0 = zpe0
                    zq1 = zpe1
                p0 = _x_pairs(x_ptr, xoff, xm, kpos, K, j, 0, EVEN_K, SX, S)
                p1 = _x_pairs(x_ptr, xoff, xm, kpos, K, j, 1, EVEN_K, SX, S)
                if NT == 2:
                    xm2 = (tx < n_tiles) & (xtok + 8 < M)
                    q0 = _x_pairs(x_ptr, xoff + 8 * K, xm2, kpos, K, j, 0, EVEN_K, SX, S)
                    q1 = _x_pairs(x_ptr, xoff + 8 * K, xm2, kpos, K, j, 1, EVEN_K, SX, S)
                for i in gl.static_range(4):
                    if j >= 2:
                        s00 = a00[i] >> 8
                        s10 = a10[i] >> 8
                        s01 = a01[i] >> 8
                        s11 = a11[i] >> 8
                    else:
                        s00 = a00[i]
                        s10 = a10[i]
                        s01 = a01[i]
                        s11 = a11[i]
                    r0 = _dq(s00, zq0, sp0, j % 2 == 1)
                    r1 = _dq(s10, zq1, sp1, j % 2 == 1)
                    r2 = _dq(s01, zq0, sp0, j % 2 == 1)
                    r3 = _dq(s11, zq1, sp1, j % 2 == 1)
                    c0, c1, c2, c3 = _mma(r0, r1, r2, r3, p0[i], p1[i], c0, c1, c2, c3)
                    if NT == 2:
                        d0, d1, d2, d3 = _mma(r0, r1, r2, r3, q0[i], q1[i], d0, d1, d2, d3)
            t = gl.minimum(wid + (it + 1) * NW, n_tiles - 1)
        Y: gl.constexpr = gl.SliceLayout(0, S)
        ln = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(1, Y)), 1)
        r0 = pid * (16 * R) + gl.expand_dims(gl.arange(0, R, layout=gl.SliceLayout(0, Y)), 0) * 16 + ln // 4
        ta = (ln % 4) * 2
        _store(y_ptr, b_ptr, c0, ta, r0, M, N, HAS_BIAS)
        _store(y_ptr, b_ptr, c1, ta + 1, r0, M, N, HAS_BIAS)
        _store(y_ptr, b_ptr, c2, ta, r0 + 8, M, N, HAS_BIAS)
        _store(y_ptr, b_ptr, c3, ta + 1, r0 + 8, M, N, HAS_BIAS)
        if NT == 2:
            _store(y_ptr, b_ptr, d0, ta + 8, r0, M, N, HAS_BIAS)
            _store(y_ptr, b_ptr, d1, ta + 9, r0, M, N, HAS_BIAS)
            _store(y_ptr, b_ptr, d2, ta + 8, r0 + 8, M, N, HAS_BIAS)
            _store(y_ptr, b_ptr, d3, ta + 9, r0 + 8, M, N, HAS_BIAS)


#: what :func:`launch_mmv` callers run instead where ``mmv`` cannot (interpreter, ROCm, other dtypes): ``dot16``
#: (itself falling back to ``dot`` where the paired decode does not fit)
FALLBACK = {"kernel": "dot16", "BM": 16, "BN": 64, "split_k": 1, "warps": 4, "stages": 3, "swap": True, "group_m": 8}

_dev_ok: dict[int, bool] = {}


def runs(x: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether ``mmv`` can run these tensors: compiled CUDA (sm_80+, not the interpreter, not ROCm), fp16
    activations and scales, Gluon present.  (:func:`fits` is the layer-level half of the test.)"""
    if not (HAS_GLUON and x.is_cuda and x.dtype == torch.float16 and scales.dtype == torch.float16):
        return False
    di = x.get_device()
    ok = _dev_ok.get(di)
    if ok is None:
        from .runtime import interpreting

        ok = _dev_ok[di] = (not interpreting() and getattr(torch.version, "hip", None) is None
                            and torch.cuda.get_device_capability(x.device)[0] >= 8)
    return ok


@functools.lru_cache(maxsize=64)
def _pair16(value: float) -> int:
    """The int32 whose two fp16 halves are both ``value``."""
    h = int(torch.tensor(value, dtype=torch.float16).view(torch.int16).item()) & 0xFFFF
    v = h | (h << 16)
    return v - (1 << 32) if v >= (1 << 31) else v


def launch_mmv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               bias: torch.Tensor | None, group_size: int, zero_point: float, cfg: dict,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W^T (+ bias)`` with ``mmv`` (the caller checked :func:`fits` and :func:`runs`).

    cfg: ``R`` (row groups of 16 per program), ``warps`` (they split K), ``pf`` (load the next tile's words before
    the current tile's arithmetic).  Launched through the direct launcher (:mod:`quantlinear_triton.launch`).
    """
    M, K = x.shape
    N, KW = qweight.shape
    R, warps, pf = int(cfg.get("R", 2)), int(cfg.get("warps", 4)), bool(cfg.get("pf", False))
    y = out if out is not None else torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    consts = dict(R=R, NT=1 if M <= 8 else 2, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None,
                  EVEN_K=K % 256 == 0, PF=pf)
    skey = ("mmv", warps, *consts.values())
    tensors = (x, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else x, y)
    ints = (M, N, K, KW, group_size, _pair16(1024.0 + zero_point), _pair16(-64.0 - zero_point))
    _fast.launch(_mmv_kernel, (-(-N // (16 * R)),), tensors, ints, (), consts, skey, {"num_warps": warps}, y)
    return y
