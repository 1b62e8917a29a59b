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

Both can split K over ``split_k`` programs.  The split partials go to an fp32 workspace and
the last program to arrive at an output tile (a counter per tile, in a persistent,
zero-initialised buffer) sums them in a fixed order, writes the output and sets the counter
back to zero: one launch, deterministic, no memset.  (Launches on one stream are ordered,
so a counter is always zero when a launch starts.)

The code is device-neutral: the CUDA plugin and the ROCm plugin launch these same kernels
with their own configurations.  A configuration may carry backend compile options
(:data:`BACKEND_OPTIONS`: AMD's ``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``); they
are passed to the launch only when present, so configurations without them launch exactly
as before.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .packing import slabs_per_group

#: Upper bound of split_k.
MAXS = 64
#: Backend compile options a launch configuration may carry (Triton's AMD backend, ``HIPOptions``).
BACKEND_OPTIONS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")
#: Persistent per-device tile counters for split-K.
COUNTER_SLOTS = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


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
def _gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                 M, N, K, KW, group_size, tiles_per_split, split_k, zmagic,
                 BITS: tl.constexpr, VPW: tl.constexpr, SLAB: tl.constexpr, SPG: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr,
                 HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr,
                 EVEN_K: tl.constexpr, MAX_SPLIT: tl.constexpr):
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
    w_ptrs = w_ptr + offs_n[:, None] * KW + offs_p[None, :]
    w_next = tl.load(w_ptrs + t_start * SLAB, mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    if BM == 1:
        m = pid_m
        acc = tl.zeros([BN, SLAB], dtype=tl.float32)
        for t in range(t_start, t_end):
            w = w_next
            w_next = tl.load(w_ptrs + (t + 1) * SLAB, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
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
            w_next = tl.load(w_ptrs + (t + 1) * SLAB, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)
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
    _finish(out, offs_m, offs_n, m_mask, n_mask, y_ptr, b_ptr, ws_ptr, cnt_ptr, tile_id, pid_k, split_k, M, N,
            False, HAS_BIAS, USE_SPLIT, MAX_SPLIT)


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
    for t in range(pid_t * TPP, tl.minimum(pid_t * TPP + TPP, n_tiles)):
        w = tl.load(w_ptr + offs_n[:, None] * KW + t * SLAB + offs_p[None, :], mask=n_mask[:, None], other=0)
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
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_pid_n
    group_id = pid // in_group
    first_m = group_id * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % gsize
    pid_n = (pid % in_group) // gsize

    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, SLAB)
    n_mask = offs_n < N
    m_mask = offs_m < M
    n_tiles = KW // SLAB
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    w_ptrs = w_ptr + offs_n[:, None] * KW + offs_p[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * K + offs_p[None, :]
    if SWAP:
        acc = tl.zeros([BN, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    w_next = tl.load(w_ptrs + t_start * SLAB, mask=(n_mask & ((offs_n * 0 + t_start) < t_end))[:, None], other=0)
    for t in range(t_start, t_end):
        w = w_next
        w_next = tl.load(w_ptrs + (t + 1) * SLAB, mask=(n_mask & ((offs_n * 0 + t + 1) < t_end))[:, None], other=0)  # prefetch
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


def _static_args(cfg: dict, bits: int, slab: int, group_size: int, K: int, has_zeros: bool, has_bias: bool, is_fp32: bool) -> tuple:
    """The launch arguments that do not depend on M, computed once per (config, layer kind)."""
    key = (id(cfg), bits, slab, group_size, K, has_zeros, has_bias, is_fp32)
    st = _static.get(key)
    if st is not None and st[0] is cfg:  # st holds cfg, so its id cannot be reused meanwhile
        return st
    kind = cfg["kernel"]
    vpw = 32 // bits
    BM, BN = (1, int(cfg.get("BN", 64))) if kind == "dqmm" else (int(cfg["BM"]), int(cfg["BN"]))
    split = 1 if kind == "dqmm" else int(cfg.get("split_k", 1))
    common = dict(BITS=bits, VPW=vpw, SLAB=slab, SPG=slabs_per_group(bits, slab, group_size, K), BM=BM, BN=BN,
                  HAS_ZEROS=has_zeros, HAS_BIAS=has_bias, EVEN_K=(K % (slab * vpw) == 0), MAX_SPLIT=MAXS,
                  num_warps=int(cfg.get("warps", 4)), num_stages=int(cfg.get("stages", 2)))
    common.update({k: int(cfg[k]) for k in BACKEND_OPTIONS if k in cfg})
    if kind == "dot":
        common.update(GROUP_M=int(cfg.get("group_m", 8)), SWAP=bool(cfg.get("swap", True)), SCALE_W=bool(cfg.get("scale_w", False)),
                      IEEE=is_fp32)
    st = (cfg, kind, BM, BN, split, common)
    if len(_static) > 4096:
        _static.clear()
    _static[key] = st
    return st


def launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
           bias: torch.Tensor | None, bits: int, slab: int, group_size: int, in_features: int,
           zero_point: float, cfg: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run one kernel with launch configuration ``cfg`` (see :mod:`quantlinear_triton.tune`)."""
    M, K = x.shape
    N, KW = qweight.shape
    _, kind, BM, BN, split, common = _static_args(cfg, bits, slab, group_size, K, zeros is not None, bias is not None,
                                                  x.dtype == torch.float32)
    y = out if out is not None else torch.empty((M, N), dtype=x.dtype, device=x.device)
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
        ws = torch.empty((split, M, N), dtype=torch.float32, device=x.device)
        cnt = counters(x.device)
    else:
        ws = cnt = y
    bp = bias if bias is not None else scales
    if kind == "gemv":
        _gemv_kernel[(-(-N // BN), -(-M // BM), split)](x, qweight, scales, zp, bp, y, ws, cnt, M, N, K, KW, group_size, tps, split,
                                                       zmagic, USE_SPLIT=split > 1, **common)
    else:
        _dot_kernel[(n_tiles_out, split)](x, qweight, scales, zp, bp, y, ws, cnt, M, N, K, KW, group_size, tps, split, zmagic,
                                          USE_SPLIT=split > 1, **common)
    return y


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
    grid = (-(-N // BN), -(-n_tiles // tpp))
    _dequant_kernel[grid](qweight, scales, zp, W, N, K, KW, group_size, zmagic, BITS=common["BITS"], VPW=common["VPW"],
                          SLAB=common["SLAB"], SPG=common["SPG"], BN=BN, TPP=tpp, HAS_ZEROS=common["HAS_ZEROS"],
                          EVEN_K=common["EVEN_K"], num_warps=4)
    if out is None:
        return torch.nn.functional.linear(x, W, bias)
    if bias is not None:
        return torch.addmm(bias, x, W.t(), out=out)
    return torch.mm(x, W.t(), out=out)
