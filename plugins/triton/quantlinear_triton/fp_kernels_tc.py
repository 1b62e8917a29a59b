"""Tensor-core kernel for the float / microscaling schemes at large M (prefill), built like the int ``tc`` kernel.

Same weight layout and arguments as :mod:`quantlinear_triton.fp_kernels` (codes slab-interleaved in int32 words
``[N, KW]`` (4-bit codes in 16-row groups, tile-major: :func:`.fp_packing.pack_slabs`): word ``p`` of tile ``t`` holds, at bits ``BITS*j``, the code of channel ``k = t*T + j*SLAB + p``; block
scale bytes ``[G, N]`` with one scale per (row, plane) -- a plane of a tile is exactly one scale block; fp32 row scales
``[N]`` applied at the end).  ``_fp_tc_kernel`` computes ``y^T = W x^T``, one ``[BN, BM]`` output tile per program,
with the structure of :mod:`quantlinear_triton.kernels_tc` (see there for why each piece is there):

* a k-step decodes ``PL`` of a tile's ``VPW`` planes, the low planes ``s*H + jh`` and the high planes
  ``VPW/2 + s*H + jh`` (``H = PL/2``), each half as ``[BN, H, SLAB]``, multiplied by its block scale in fp32 (exact:
  the element times an E8M0 power of two or an E4M3 scale), rounded once to the activation dtype, and the halves
  joined to the ``[BN, BK]`` A operand (``join -> permute -> reshape``), which Triton keeps in registers in the
  wgmma layout; the ``[BK, BM]`` x^T tile is loaded in the same channel order as the shared-memory B operand;
* one ``tl.dot`` per k-step (nothing else touches the accumulator) and ``tl.assume`` on a non-empty K range (else
  ptxas serializes every wgmma);
* the next step's words and scale bytes are loaded one step ahead into registers;
* split-K reduces through the int kernels' persistent workspace and tile counters; the row scales and the bias are
  applied by the reducing program (:func:`quantlinear_triton.fp_kernels._fp_finish`).

The element decode is :func:`quantlinear_triton.fp_kernels._decode` (bit moves and one power-of-two multiply, or the
hardware's E4M3 conversion), so a tile's operand is, value for value, what the ``dot`` kernel feeds its per-plane
dots; only the fp32 summation order differs.  The whole K range of a tile is one ``tl.dot`` of ``BK = PL*SLAB``
channels instead of ``VPW`` dots of ``SLAB`` channels each.

Launch configuration (``cfg``, :func:`launch_tc`): ``BN`` (weight rows per program: 64 a warpgroup), ``BM`` (tokens:
the wgmma N), ``BK`` (channels per k-step, rounded to a power-of-two number of planes dividing VPW, at least 2),
``warps``, ``stages`` (x^T pipeline depth), ``group_m``, ``prefetch`` (1), ``split_k``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch as _fast
from .kernels import _word_cols
from .fp_kernels import _block_scale, _decode, _fp_finish, _wrow, _wslab
from .fp_packing import S_NONE, bits_of, row_words, slab_for
from .kernels_tc import _load_xt, _mma, _tc_coords, planes_per_step, split_plan

DEFAULT_CFG = {"BN": 128, "BM": 128, "BK": 256, "warps": 8, "stages": 2, "group_m": 8, "prefetch": 1, "split_k": 1}


@triton.jit
def _step_operands(w_ptrs, wst, hop, s_ptr, i, jh, N, G, offs_n, n_mask, SPT: tl.constexpr, VPW: tl.constexpr, SLAB: tl.constexpr,
                   H: tl.constexpr, SCALE: tl.constexpr, EVEN_N: tl.constexpr, BITS: tl.constexpr):
    """Words ``[BN, SLAB]`` of k-step ``i``'s tile and the block scale bytes of its low / high planes (``[BN, H]``)."""
    t = i // SPT
    if EVEN_N:
        words = tl.load(w_ptrs + _wslab(t, wst, hop, SLAB, BITS))
    else:
        words = tl.load(w_ptrs + _wslab(t, wst, hop, SLAB, BITS), mask=n_mask[:, None], other=0)
    if SCALE != 0:
        gl = tl.minimum(t * VPW + (i % SPT) * H + jh, G - 1)
        gh = tl.minimum(t * VPW + VPW // 2 + (i % SPT) * H + jh, G - 1)
        bl = tl.load(s_ptr + gl[None, :] * N + offs_n[:, None], mask=n_mask[:, None], other=0).to(tl.int32)
        bh = tl.load(s_ptr + gh[None, :] * N + offs_n[:, None], mask=n_mask[:, None], other=0).to(tl.int32)
    else:
        bl = tl.zeros([words.shape[0], H], dtype=tl.int32)
        bh = bl
    return words, bl, bh


@triton.jit
def _fp_tc_kernel(x_ptr, w_ptr, s_ptr, r_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, KW, G, steps_per_split, split_k,
                  ELEM: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr, SLAB: tl.constexpr, PL: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, PREFETCH: tl.constexpr,
                  HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                  EVEN_N: tl.constexpr, EVEN_M: tl.constexpr):
    VPW: tl.constexpr = 32 // BITS
    T: tl.constexpr = SLAB * VPW
    BK: tl.constexpr = PL * SLAB
    H: tl.constexpr = PL // 2
    HS: tl.constexpr = H * SLAB
    HALF: tl.constexpr = VPW // 2
    SPT: tl.constexpr = VPW // PL  # k-steps per tile
    DT = x_ptr.dtype.element_ty
    offs_n, offs_m, offs_p, koff, n_mask, m_mask, s_start, s_end = _tc_coords(M, N, KW, steps_per_split, SLAB, SPT, HS, HALF,
                                                                              BK, BM, BN, GROUP_M)
    jh = tl.arange(0, H)
    tl.assume(s_end > s_start)  # never an empty split (launch_tc): no zero-trip path to the final wgmma wait
    wrow, wst, hop = _wrow(offs_n, N, KW, SLAB, BITS)
    w_ptrs = w_ptr + wrow[:, None] + _word_cols(offs_p, hop)
    x_ptrs = x_ptr + offs_m[None, :] * K + koff[:, None]  # [BK, BM]: x^T
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    if PREFETCH:
        words, bl, bh = _step_operands(w_ptrs, wst, hop, s_ptr, s_start, jh, N, G, offs_n, n_mask, SPT, VPW, SLAB, H, SCALE, EVEN_N, BITS)
    for i in range(s_start, s_end):
        t = i // SPT
        klo = t * T + (i % SPT) * HS
        if not PREFETCH:
            words, bl, bh = _step_operands(w_ptrs, wst, hop, s_ptr, i, jh, N, G, offs_n, n_mask, SPT, VPW, SLAB, H, SCALE, EVEN_N, BITS)
        jl = (i % SPT) * H + jh  # low planes; the high planes are jl + HALF
        dl = _decode(words[:, None, :] >> (jl * BITS)[None, :, None], ELEM)  # [BN, H, SLAB], exact fp32
        dh = _decode(words[:, None, :] >> ((HALF + jl) * BITS)[None, :, None], ELEM)
        if SCALE != 0:
            dl = dl * _block_scale(bl, SCALE)[:, :, None]
            dh = dh * _block_scale(bh, SCALE)[:, :, None]
        # [BN, H, SLAB] x 2 -> [BN, 2, H, SLAB] -> [BN, BK]: x^T rows c (channels klo + koff[c])
        wd = tl.reshape(tl.permute(tl.join(dl.to(DT), dh.to(DT)), (0, 3, 1, 2)), [BN, BK])
        xt = _load_xt(x_ptrs, klo, koff, K, m_mask, EVEN_K, EVEN_M)
        if PREFETCH:  # the next step's words and scales (the last iteration reloads its own: harmless)
            words, bl, bh = _step_operands(w_ptrs, wst, hop, s_ptr, tl.minimum(i + 1, s_end - 1), jh, N, G, offs_n, n_mask, SPT, VPW,
                                           SLAB, H, SCALE, EVEN_N, BITS)
        acc = _mma(wd, xt, acc)
    _fp_finish(acc, offs_m, offs_n, m_mask, n_mask, y_ptr, r_ptr, b_ptr, ws_ptr, cnt_ptr, tl.program_id(0), tl.program_id(1),
               split_k, M, N, True, HAS_ROWS, HAS_BIAS, USE_SPLIT)


def launch_tc(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor | None, row_scales: torch.Tensor | None,
              bias: torch.Tensor | None, elem: int, scale: int, block: int, cfg: dict | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T`` (times the row scales, plus bias) by ``_fp_tc_kernel``; arguments as :func:`fp_kernels.launch`.

    x ``[M, K]`` fp16 / bf16 (fp32 works: ieee dots) contiguous.  Returns y ``[M, N]`` in x's dtype.
    """
    c = dict(DEFAULT_CFG)
    c.update(cfg or {})
    M, K = x.shape
    assert x.is_contiguous()
    N = qweight.shape[0]
    bits, slab = bits_of(elem), slab_for(scale, block)
    KW = row_words(K, bits, slab)
    pl = planes_per_step(bits, slab, int(c["BK"]))
    vpw = 32 // bits
    y = out if out is not None else x.new_empty((M, N))
    if M == 0:
        return y
    BM, BN = int(c["BM"]), int(c["BN"])
    n_tiles_out = -(-M // BM) * -(-N // BN)
    split, sps, ws, cnt = split_plan(x, y, (KW // slab) * (vpw // pl), int(c.get("split_k", 1)), n_tiles_out)
    G = K // block if scale != S_NONE else 1
    consts = dict(ELEM=elem, BITS=bits, SCALE=scale, SLAB=slab, PL=pl, BM=BM, BN=BN, GROUP_M=int(c.get("group_m", 8)),
                  PREFETCH=bool(c.get("prefetch", 1)), HAS_ROWS=row_scales is not None, HAS_BIAS=bias is not None,
                  USE_SPLIT=split > 1, EVEN_K=K % (slab * vpw) == 0, EVEN_N=N % BN == 0, EVEN_M=M % BM == 0)
    opts = dict(num_warps=int(c.get("warps", 8)), num_stages=int(c.get("stages", 2)))
    tensors = (x, qweight, scales if scales is not None else qweight, row_scales if row_scales is not None else y,
               bias if bias is not None else y, y, ws, cnt)
    _fast.launch(_fp_tc_kernel, (n_tiles_out, split), tensors, (M, N, K, KW, G, sps, split), (), consts,
                 ("fp_tc", *consts.values(), *opts.values()), opts, y)
    return y


_fast.replayable(_fp_tc_kernel)  # (one launch writes the whole output)


__all__ = ["DEFAULT_CFG", "launch_tc"]
